//! `RaftStorage`: raft-rs's read-side `raft::Storage` over any [`Store`].
//!
//! RawNode only reads through this adapter; the Ready loop writes through
//! [`Store::persist`] on the same `Arc`, so both see one store.

use std::sync::Arc;

use raft::eraftpb::{Entry, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::{Store, StoreError};

/// Implements `raft::Storage` by delegating to a shared [`Store`].
#[derive(Clone)]
pub struct RaftStorage(pub Arc<dyn Store>);

impl std::fmt::Debug for RaftStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RaftStorage")
    }
}

impl From<StoreError> for raft::Error {
    /// raft-rs reacts to `Compacted`, `Unavailable` and `SnapshotOutOfDate`; anything else is
    /// opaque to it and makes the node stop.
    fn from(e: StoreError) -> raft::Error {
        let storage = match e {
            StoreError::Compacted => StorageError::Compacted,
            StoreError::Unavailable => StorageError::Unavailable,
            StoreError::SnapshotOutOfDate { .. } => StorageError::SnapshotOutOfDate,
            other => StorageError::Other(Box::new(other)),
        };
        raft::Error::Store(storage)
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.0.initial_state()?)
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        // Reads are synchronous, so the async-fetch context is never needed.
        Ok(self.0.entries(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.0.term(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.0.first_index()?)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.0.last_index()?)
    }

    /// The stored snapshot, for a follower too far behind to catch up from the log. raft-rs
    /// requires its index to be at least `request_index` (non-zero only when a follower asked
    /// for a fresh snapshot); an older one is reported as temporarily unavailable, so raft-rs
    /// retries once the state machine has saved a newer one.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snapshot = self.0.snapshot()?;
        if snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable));
        }
        Ok(snapshot)
    }
}
