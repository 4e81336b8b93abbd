//! Backups: the replicated state as a self-checking file, and restoring one into the store of
//! a new cluster's member.
//!
//! A backup is JSON: a format tag, the applied index it was taken at, the state, and the
//! SHA-256 of the state's encoding. Restoring writes it as the store's state-machine snapshot
//! (with the new cluster's voters), so the node starts from it like from any snapshot.

use std::path::Path;

use raft::eraftpb::{ConfState, Snapshot, SnapshotMetadata};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fsm::State;
use crate::store::{Persist, SledStore, Store};

const FORMAT: &str = "baton-backup-v1";

#[derive(Serialize, Deserialize)]
struct File {
    format: String,
    applied_index: u64,
    sha256: String,
    state: String,
}

/// Why a backup cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// Not a backup, damaged, or of another format.
    #[error("not a usable Baton backup: {0}")]
    Corrupt(String),
    /// The target store is unusable or not empty.
    #[error("{0}")]
    Target(String),
}

/// Encodes the state as a backup file.
pub fn encode(state: &State) -> Vec<u8> {
    let state_json = serde_json::to_string(state).unwrap_or_default();
    let file = File {
        format: FORMAT.into(),
        applied_index: state.applied_index,
        sha256: hex::encode(Sha256::digest(state_json.as_bytes())),
        state: state_json,
    };
    serde_json::to_vec_pretty(&file).unwrap_or_default()
}

/// Decodes and verifies a backup file.
pub fn decode(bytes: &[u8]) -> Result<State, BackupError> {
    let file: File = serde_json::from_slice(bytes).map_err(|e| BackupError::Corrupt(format!("unreadable: {e}")))?;
    if file.format != FORMAT {
        return Err(BackupError::Corrupt(format!("format {:?}, expected {FORMAT:?}", file.format)));
    }
    let sum = hex::encode(Sha256::digest(file.state.as_bytes()));
    if sum != file.sha256 {
        return Err(BackupError::Corrupt(format!("checksum mismatch (file says {}, content is {sum})", file.sha256)));
    }
    let state =
        State::from_json(file.state.as_bytes()).map_err(|e| BackupError::Corrupt(format!("state unreadable: {e}")))?;
    if state.applied_index != file.applied_index {
        return Err(BackupError::Corrupt("applied index does not match the state".into()));
    }
    Ok(state)
}

/// Writes a backup into an empty data directory as the first state of a member of a new
/// cluster whose voters are `voters`. Returns the index the node will start from.
pub fn restore(bytes: &[u8], data_dir: &Path, voters: &[u64]) -> Result<u64, BackupError> {
    let mut state = decode(bytes)?;
    // Addresses of the old cluster's joined members mean nothing to the new one.
    state.members.clear();
    let index = state.applied_index.max(1);
    state.applied_index = index;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| BackupError::Target(format!("creating {}: {e}", data_dir.display())))?;
    let store = SledStore::open(&data_dir.join("store"))
        .map_err(|e| BackupError::Target(format!("opening the store in {}: {e}", data_dir.display())))?;
    let last = store.last_index().map_err(|e| BackupError::Target(e.to_string()))?;
    let hs = store.initial_state().map_err(|e| BackupError::Target(e.to_string()))?;
    if last > 0 || hs.hard_state.term > 0 {
        return Err(BackupError::Target(format!(
            "{} already holds a node's data; restore into an empty directory",
            data_dir.display()
        )));
    }
    let mut voters = voters.to_vec();
    voters.sort_unstable();
    voters.dedup();
    let meta = SnapshotMetadata {
        conf_state: Some(ConfState { voters, ..Default::default() }).into(),
        index,
        term: 1,
        ..Default::default()
    };
    let snapshot = Snapshot {
        data: serde_json::to_vec(&state).unwrap_or_default().into(),
        metadata: Some(meta).into(),
        ..Default::default()
    };
    store
        .persist(Persist { entries: &[], hard_state: None, snapshot: Some(&snapshot) })
        .map_err(|e| BackupError::Target(format!("writing the snapshot: {e}")))?;
    Ok(index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backup_round_trips_and_damage_is_detected() {
        let mut state = State { applied_index: 42, ..Default::default() };
        state.idempotency.insert("k".into(), "r-1".into());
        let bytes = encode(&state);
        assert_eq!(decode(&bytes).unwrap(), state);
        let tampered = String::from_utf8(bytes.clone()).unwrap().replace("r-1", "r-2");
        assert!(decode(tampered.as_bytes()).unwrap_err().to_string().contains("checksum"));
        assert!(decode(b"{}").is_err());
        assert!(decode(b"\x00garbage").is_err());
    }

    #[test]
    fn restore_writes_a_snapshot_into_an_empty_store_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = State { applied_index: 7, ..Default::default() };
        assert_eq!(restore(&encode(&state), dir.path(), &[1, 2, 3]).unwrap(), 7);
        // SledStore::open waits for the restoring handle's file lock to be released.
        let store = SledStore::open(&dir.path().join("store")).unwrap();
        let snap = store.snapshot().unwrap();
        assert_eq!(snap.get_metadata().index, 7);
        assert_eq!(snap.get_metadata().get_conf_state().voters, vec![1, 2, 3]);
        drop(store);
        let again = restore(&encode(&state), dir.path(), &[1]);
        assert!(matches!(again, Err(BackupError::Target(_))), "{again:?}");
    }
}
