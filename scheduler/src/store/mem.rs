//! `MemStore`: the in-memory [`Store`], for unit tests and the deterministic simulation.
//!
//! It keeps exactly the semantics of the sled store (the conformance suite runs against both)
//! minus durability: "flushed" means nothing here, and everything is lost on drop.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use super::{
    LogBounds, OutputChunk, Persist, Store, StoreError, check_run_id, collect_limited, hard_state_after_snapshot,
    is_real_snapshot, new_snapshot,
};

/// An in-memory [`Store`]. One mutex guards all state; it is only ever held for the duration
/// of a single (synchronous) trait call.
#[derive(Debug, Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Snapshot index/term and last index/term of `entries`.
    bounds: LogBounds,
    /// The log: `entries[0].index == bounds.first_index()` when not empty.
    entries: VecDeque<Entry>,
    hard_state: HardState,
    /// Set by `set_conf_state` or a leader snapshot; `None` until either happens.
    conf_state: Option<ConfState>,
    snapshot: Snapshot,
    /// Output chunks keyed by (run id, seq), so a range over one run id yields its chunks in
    /// seq order.
    outputs: BTreeMap<(String, u64), OutputChunk>,
}

impl MemStore {
    /// An empty store: no entries, default hard state, no conf state, no snapshot.
    pub fn new() -> MemStore {
        MemStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every method validates before it mutates, so a panic while the lock was held cannot
        // have left `Inner` half-updated; the state behind a poisoned lock is still sound.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Inner {
    fn term(&self, idx: u64) -> Result<u64, StoreError> {
        match self.bounds.known_term(idx)? {
            Some(term) => Ok(term),
            None => Ok(self.entries[self.offset(idx)].term),
        }
    }

    /// Position of log index `idx` in `entries`; `idx` must be within the log bounds.
    fn offset(&self, idx: u64) -> usize {
        usize::try_from(idx - self.bounds.first_index()).expect("log offset fits in usize")
    }
}

impl Store for MemStore {
    fn initial_state(&self) -> Result<raft::RaftState, StoreError> {
        let inner = self.lock();
        let conf_state =
            inner.conf_state.clone().unwrap_or_else(|| inner.snapshot.get_metadata().get_conf_state().clone());
        Ok(raft::RaftState::new(inner.hard_state.clone(), conf_state))
    }

    fn persist(&self, p: Persist<'_>) -> Result<(), StoreError> {
        let mut inner = self.lock();

        // Work out the result first, so that a rejected request changes nothing.
        let snapshot = p.snapshot.filter(|s| is_real_snapshot(s));
        let mut installed = inner.bounds.clone();
        let mut hard_state = inner.hard_state.clone();
        if let Some(s) = snapshot {
            let meta = s.get_metadata();
            installed = installed.install_snapshot(meta.index, meta.term)?;
            hard_state = hard_state_after_snapshot(&hard_state, meta.index, meta.term);
        }
        let appended = installed.append(p.entries)?;
        if let Some(hs) = p.hard_state {
            hard_state = hs.clone();
        }
        appended.check_commit(hard_state.commit)?;

        if let Some(s) = snapshot {
            inner.entries.clear();
            inner.conf_state = Some(s.get_metadata().get_conf_state().clone());
            inner.snapshot = s.clone();
        }
        if let Some(first) = p.entries.first() {
            // Truncate the conflicting suffix, then append.
            let keep = usize::try_from(first.index - installed.first_index()).expect("log offset fits in usize");
            inner.entries.truncate(keep);
            inner.entries.extend(p.entries.iter().cloned());
        }
        inner.bounds = appended;
        inner.hard_state = hard_state;
        Ok(())
    }

    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        self.lock().conf_state = Some(cs.clone());
        Ok(())
    }

    fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.bounds.check_commit(commit)?;
        inner.hard_state.commit = commit;
        Ok(())
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let inner = self.lock();
        inner.bounds.check_range(low, high)?;
        if low >= high {
            return Ok(Vec::new());
        }
        let range = inner.offset(low)..inner.offset(high);
        collect_limited(inner.entries.range(range).cloned().map(Ok), max_size)
    }

    fn term(&self, idx: u64) -> Result<u64, StoreError> {
        self.lock().term(idx)
    }

    fn first_index(&self) -> Result<u64, StoreError> {
        Ok(self.lock().bounds.first_index())
    }

    fn last_index(&self) -> Result<u64, StoreError> {
        Ok(self.lock().bounds.last_index)
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Ok(self.lock().snapshot.clone())
    }

    fn save_snapshot(&self, data: Vec<u8>, index: u64, conf_state: &ConfState) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.bounds.check_save_snapshot(index)?;
        let term = inner.term(index)?;

        let snapshot = new_snapshot(data, index, term, conf_state);

        let compacted = inner.offset(index + 1);
        inner.entries.drain(..compacted);
        inner.snapshot = snapshot;
        inner.bounds = inner.bounds.compact(index, term);
        Ok(())
    }

    fn append_output(&self, run_id: &str, chunk: &OutputChunk) -> Result<(), StoreError> {
        check_run_id(run_id)?;
        self.lock().outputs.insert((run_id.to_owned(), chunk.seq), chunk.clone());
        Ok(())
    }

    fn read_output(&self, run_id: &str, from_seq: u64, limit: usize) -> Result<Vec<OutputChunk>, StoreError> {
        check_run_id(run_id)?;
        let inner = self.lock();
        let range = (run_id.to_owned(), from_seq)..=(run_id.to_owned(), u64::MAX);
        Ok(inner.outputs.range(range).take(limit).map(|(_, chunk)| chunk.clone()).collect())
    }

    fn flush_outputs(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn approximate_size(&self) -> Result<u64, StoreError> {
        let inner = self.lock();
        let entries: u64 = inner.entries.iter().map(|e| u64::from(e.compute_size())).sum();
        let outputs: u64 = inner
            .outputs
            .iter()
            .map(|((run_id, _), c)| (run_id.len() + c.step_id.len() + c.data.len() + 32) as u64)
            .sum();
        let snapshot = u64::from(inner.snapshot.compute_size());
        Ok(entries + outputs + snapshot)
    }
}
