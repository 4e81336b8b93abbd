//! Durable storage for one scheduler node: the Raft log, the hard state, the conf state, the
//! latest state-machine snapshot, and the per-node step-output log.
//!
//! Everything goes through the [`Store`] trait so the rest of the scheduler never names the
//! embedded database. [`SledStore`] is the production implementation (sled, as the design
//! specifies; `store/sled.rs` is the only file that names it) and [`MemStore`] is its in-memory twin
//! for tests and simulation. Both are held to the same behaviour by the shared [`conformance`]
//! suite, so swapping sled for another embedded store (redb) is a local change.
//!
//! [`RaftStorage`] adapts any `Store` to raft-rs's `raft::Storage`, which RawNode reads from;
//! the Ready loop writes through [`Store::persist`] directly.
//!
//! Invariants both implementations keep (and the conformance suite checks):
//! - The log holds the contiguous entries `first_index()..=last_index()`, where
//!   `first_index() == snapshot index + 1`; everything at or below the snapshot index has been
//!   compacted into the snapshot.
//! - `hard_state.commit <= last_index()`.
//! - A write method returns only after its change is durable (flushed), except
//!   [`Store::append_output`], which is durable after the next [`Store::flush_outputs`].
//!
//! The output log is deliberately not part of Raft: Raft carries step metadata and a bounded
//! tail, and the full stdout/stderr stream of a run lives only on the node that received it.

pub mod conformance;
mod mem;
mod raft_storage;
mod sled;

pub use mem::MemStore;
pub use raft_storage::RaftStorage;
pub use sled::SledStore;

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

/// Why a store operation failed.
///
/// `Compacted` and `Unavailable` are the two conditions raft-rs expects from a log and reacts
/// to; every other variant means the caller or the disk broke an invariant, and a node that
/// sees one while persisting Raft state must stop rather than continue.
#[derive(thiserror::Error, Debug)]
pub enum StoreError {
    /// The requested index is at or below the snapshot index: that part of the log has been
    /// compacted away and only the snapshot can stand in for it.
    #[error("log index is compacted: it is at or below the snapshot index")]
    Compacted,
    /// The requested index is beyond the last stored entry.
    #[error("log index is unavailable: it is beyond the last stored entry")]
    Unavailable,
    /// Appended entries would leave a hole in the log, or are not contiguous among themselves.
    #[error("log entries must be contiguous: expected index {expected}, got {found}")]
    Gap {
        /// The index the next entry had to have.
        expected: u64,
        /// The index it had.
        found: u64,
    },
    /// A snapshot older than the one already stored was offered.
    #[error("snapshot at index {index} is older than the stored snapshot at index {current}")]
    SnapshotOutOfDate {
        /// Index of the offered snapshot.
        index: u64,
        /// Index of the snapshot already stored.
        current: u64,
    },
    /// A commit index beyond the stored log was offered; raft-rs would refuse to restart from it.
    #[error("commit index {commit} is beyond the last stored entry {last_index}")]
    CommitBeyondLog {
        /// The offered commit index.
        commit: u64,
        /// The last index in the log.
        last_index: u64,
    },
    /// A run id contains a NUL byte, which the output log uses as the key separator.
    #[error("run id {run_id:?} contains a NUL byte; run ids must not")]
    InvalidRunId {
        /// The offending run id.
        run_id: String,
    },
    /// The underlying storage failed to read or write.
    #[error("store I/O failed: {0}")]
    Io(String),
    /// Stored data does not decode or breaks a log invariant; the message says which.
    #[error("store is corrupt: {0}")]
    Corrupt(String),
}

/// Everything one Raft `Ready` needs made durable, written as one atomic batch and flushed
/// (fsync) before [`Store::persist`] returns.
///
/// Applied in this order: the snapshot (if any), then the entries, then the hard state.
#[derive(Debug, Default, Clone, Copy)]
pub struct Persist<'a> {
    /// New log entries; any stored entries with an index at or above `entries[0].index` are
    /// deleted first (the Raft rule: a conflicting suffix is truncated).
    pub entries: &'a [Entry],
    /// The hard state to store, if it changed.
    pub hard_state: Option<&'a HardState>,
    /// A snapshot received from the leader. It replaces the whole log: every stored entry is
    /// deleted, the conf state becomes the snapshot's, and the hard state's commit and term are
    /// raised to at least the snapshot's index and term. An empty snapshot (index 0, as
    /// `raft::is_empty_snap` sees it) counts as none.
    pub snapshot: Option<&'a Snapshot>,
}

/// One piece of a step's stdout or stderr, as kept in the per-node output log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutputChunk {
    /// Position of this chunk within its run; chunks are read back in `seq` order.
    pub seq: u64,
    /// The runbook step that produced it.
    pub step_id: String,
    /// Which attempt of the step produced it (attempts start at 1).
    pub attempt: u64,
    /// 1 for stdout, 2 for stderr.
    pub stream: u8,
    /// The raw bytes, not necessarily valid UTF-8 nor ending at a line break.
    pub data: Vec<u8>,
    /// When the worker captured it, in milliseconds since the Unix epoch.
    pub at_ms: i64,
}

/// Durable storage for one node. See the module documentation for the invariants.
///
/// The trait is synchronous: callers on an async runtime run it on a blocking thread.
/// Implementations serialize writes internally, so a `&dyn Store` may be shared freely.
pub trait Store: Send + Sync + 'static {
    /// The hard state and conf state raft-rs starts from. The conf state is the last one given
    /// to [`Store::set_conf_state`] or installed with a leader snapshot, falling back to the
    /// stored snapshot's conf state if neither ever happened.
    fn initial_state(&self) -> Result<raft::RaftState, StoreError>;

    /// Makes one Ready's worth of state durable in a single atomic batch, then flushes.
    fn persist(&self, p: Persist<'_>) -> Result<(), StoreError>;

    /// Records the conf state the state machine reached by applying a conf change. Durable.
    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError>;

    /// Updates only `hard_state.commit` (from a `LightReady`). Durable.
    fn set_commit(&self, commit: u64) -> Result<(), StoreError>;

    /// Entries in `[low, high)`. `Compacted` if `low` is at or below the snapshot index,
    /// `Unavailable` if `high > last_index() + 1`. With `max_size`, stops before the entry that
    /// would take the total encoded size past it, but always returns at least one entry when the
    /// range is not empty (raft-rs `limit_size`).
    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError>;

    /// The term of entry `idx`. The snapshot index answers with the snapshot's term; below it is
    /// `Compacted`, above `last_index()` is `Unavailable`.
    fn term(&self, idx: u64) -> Result<u64, StoreError>;

    /// The first index still in the log: snapshot index + 1 (1 for an empty store).
    fn first_index(&self) -> Result<u64, StoreError>;

    /// The last index in the log, or the snapshot index if the log holds no entries.
    fn last_index(&self) -> Result<u64, StoreError>;

    /// The latest state-machine snapshot, or a default (empty) `Snapshot` if there is none.
    fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// Stores a snapshot the local state machine made at applied `index` and compacts the log
    /// up to and including `index`, in one durable batch. `index` must lie in
    /// `[snapshot index, last_index()]` (`SnapshotOutOfDate` below, `Unavailable` above); the
    /// term is looked up from the log. The current conf state is left alone: the state machine
    /// reported every applied conf change through [`Store::set_conf_state`] already, so the
    /// snapshot's conf state is never newer than it.
    fn save_snapshot(&self, data: Vec<u8>, index: u64, conf_state: &ConfState) -> Result<(), StoreError>;

    /// Adds a chunk to the output log of `run_id` (not replicated). A chunk with a `seq` already
    /// stored for that run replaces it, so a retried append is harmless. Durable only after the
    /// next [`Store::flush_outputs`].
    fn append_output(&self, run_id: &str, chunk: &OutputChunk) -> Result<(), StoreError>;

    /// Up to `limit` chunks of `run_id` with `seq >= from_seq`, in `seq` order.
    fn read_output(&self, run_id: &str, from_seq: u64, limit: usize) -> Result<Vec<OutputChunk>, StoreError>;

    /// Makes every appended output chunk durable.
    fn flush_outputs(&self) -> Result<(), StoreError>;

    /// Approximate bytes used: on disk for sled, in memory for `MemStore`.
    fn approximate_size(&self) -> Result<u64, StoreError>;
}

/// The shape of the log, kept in memory by both implementations so that bounds checks,
/// `first_index`, `last_index` and the common `term` lookups never touch storage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct LogBounds {
    /// Index of the latest snapshot (0 if none): the entry just before the first in the log.
    snapshot_index: u64,
    /// Term of the entry at `snapshot_index` (0 if none).
    snapshot_term: u64,
    /// Index of the last entry, or `snapshot_index` if the log is empty.
    last_index: u64,
    /// Term of the entry at `last_index`.
    last_term: u64,
}

impl LogBounds {
    fn first_index(&self) -> u64 {
        self.snapshot_index + 1
    }

    /// Checks a `[low, high)` read against the log bounds.
    fn check_range(&self, low: u64, high: u64) -> Result<(), StoreError> {
        if low <= self.snapshot_index {
            return Err(StoreError::Compacted);
        }
        if high > self.last_index + 1 {
            return Err(StoreError::Unavailable);
        }
        Ok(())
    }

    /// Answers `term(idx)` from the bounds alone when possible: `Ok(Some(term))` for the
    /// snapshot and last index, `Ok(None)` when the entry itself has to be read.
    fn known_term(&self, idx: u64) -> Result<Option<u64>, StoreError> {
        if idx == self.snapshot_index {
            Ok(Some(self.snapshot_term))
        } else if idx < self.snapshot_index {
            Err(StoreError::Compacted)
        } else if idx > self.last_index {
            Err(StoreError::Unavailable)
        } else if idx == self.last_index {
            Ok(Some(self.last_term))
        } else {
            Ok(None)
        }
    }

    /// The bounds after installing a leader snapshot with this metadata, which replaces the log.
    fn install_snapshot(&self, index: u64, term: u64) -> Result<LogBounds, StoreError> {
        if index < self.snapshot_index {
            return Err(StoreError::SnapshotOutOfDate { index, current: self.snapshot_index });
        }
        Ok(LogBounds { snapshot_index: index, snapshot_term: term, last_index: index, last_term: term })
    }

    /// The bounds after appending `entries` (first truncating any conflicting suffix), or why
    /// they cannot be appended.
    fn append(&self, entries: &[Entry]) -> Result<LogBounds, StoreError> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(self.clone());
        };
        if first.index <= self.snapshot_index {
            return Err(StoreError::Compacted);
        }
        if first.index > self.last_index + 1 {
            return Err(StoreError::Gap { expected: self.last_index + 1, found: first.index });
        }
        for (expected, e) in (first.index..).zip(entries) {
            if e.index != expected {
                return Err(StoreError::Gap { expected, found: e.index });
            }
        }
        Ok(LogBounds { last_index: last.index, last_term: last.term, ..self.clone() })
    }

    /// Checks that a local snapshot may be taken at `index`.
    fn check_save_snapshot(&self, index: u64) -> Result<(), StoreError> {
        if index < self.snapshot_index {
            return Err(StoreError::SnapshotOutOfDate { index, current: self.snapshot_index });
        }
        if index > self.last_index {
            return Err(StoreError::Unavailable);
        }
        Ok(())
    }

    /// The bounds after compacting the log up to and including `index`, whose term is `term`.
    fn compact(&self, index: u64, term: u64) -> LogBounds {
        LogBounds { snapshot_index: index, snapshot_term: term, ..self.clone() }
    }

    fn check_commit(&self, commit: u64) -> Result<(), StoreError> {
        if commit > self.last_index {
            return Err(StoreError::CommitBeyondLog { commit, last_index: self.last_index });
        }
        Ok(())
    }
}

/// Rejects run ids the output log cannot key unambiguously.
fn check_run_id(run_id: &str) -> Result<(), StoreError> {
    if run_id.as_bytes().contains(&0) {
        return Err(StoreError::InvalidRunId { run_id: run_id.to_owned() });
    }
    Ok(())
}

/// Whether `snapshot` is a real snapshot rather than the empty placeholder raft-rs hands out.
fn is_real_snapshot(snapshot: &Snapshot) -> bool {
    snapshot.get_metadata().index != 0
}

/// A snapshot of `data` taken at log `index` (of `term`) with the given conf state.
fn new_snapshot(data: Vec<u8>, index: u64, term: u64, conf_state: &ConfState) -> Snapshot {
    let mut snapshot = Snapshot { data: data.into(), ..Default::default() };
    let meta = snapshot.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(conf_state.clone());
    snapshot
}

/// The hard state after installing a snapshot: never behind the snapshot in term or commit.
fn hard_state_after_snapshot(hs: &HardState, index: u64, term: u64) -> HardState {
    let mut hs = hs.clone();
    hs.term = hs.term.max(term);
    hs.commit = hs.commit.max(index);
    hs
}

/// Collects entries from an in-order iterator with raft-rs `limit_size` semantics: the first
/// entry always, then each next one while the running total stays within `max_size`. Reading
/// stops as soon as the limit is reached, so a small limit does not read the whole range.
fn collect_limited(
    iter: impl Iterator<Item = Result<Entry, StoreError>>,
    max_size: Option<u64>,
) -> Result<Vec<Entry>, StoreError> {
    let max = max_size.unwrap_or(u64::MAX);
    let mut total: u64 = 0;
    let mut out = Vec::new();
    for entry in iter {
        let entry = entry?;
        total = total.saturating_add(u64::from(entry.compute_size()));
        if !out.is_empty() && total > max {
            break;
        }
        out.push(entry);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, len: usize) -> Entry {
        Entry { index, term, data: vec![7u8; len].into(), ..Default::default() }
    }

    #[test]
    fn collect_limited_matches_raft_limit_size() {
        let entries: Vec<Entry> = (1..=6).map(|i| entry(i, 1, i as usize * 3)).collect();
        let sizes: Vec<u64> = entries.iter().map(|e| u64::from(e.compute_size())).collect();
        let mut limits = vec![None, Some(0), Some(1), Some(raft::NO_LIMIT)];
        let mut running = 0;
        for s in &sizes {
            running += s;
            limits.extend([Some(running - 1), Some(running), Some(running + 1)]);
        }
        for max in limits {
            let mut expected = entries.clone();
            raft::util::limit_size(&mut expected, max);
            let got = collect_limited(entries.iter().cloned().map(Ok), max).unwrap();
            assert_eq!(got, expected, "max_size {max:?}");
        }
    }

    #[test]
    fn append_rejects_holes_and_compacted_indexes() {
        let b = LogBounds { snapshot_index: 4, snapshot_term: 1, last_index: 6, last_term: 1 };
        assert!(matches!(b.append(&[entry(4, 2, 0)]), Err(StoreError::Compacted)));
        assert!(matches!(b.append(&[entry(8, 2, 0)]), Err(StoreError::Gap { expected: 7, found: 8 })));
        assert!(matches!(b.append(&[entry(6, 2, 0), entry(8, 2, 0)]), Err(StoreError::Gap { expected: 7, found: 8 })));
        let after = b.append(&[entry(5, 2, 0)]).unwrap();
        assert_eq!((after.last_index, after.last_term), (5, 2));
    }
}
