//! The `Store` conformance suite against every implementation, sled's durability across
//! reopen, and `RaftStorage` under a real raft-rs `RawNode`.

use std::path::Path;
use std::sync::Arc;

use baton_scheduler::store::{MemStore, Persist, RaftStorage, SledStore, Store, conformance};
use raft::eraftpb::{ConfState, Entry, EntryType};
use raft::{GetEntriesContext, RawNode, StateRole};

/// One test per conformance case per store, so a failure names both.
macro_rules! conformance_tests {
    ($($case:ident),* $(,)?) => {
        const WIRED: &[&str] = &[$(stringify!($case)),*];

        mod mem {
            use super::*;
            $(#[test] fn $case() { conformance::$case(&MemStore::new()); })*
        }

        mod sled {
            use super::*;
            $(#[test] fn $case() {
                let dir = tempfile::tempdir().unwrap();
                conformance::$case(&SledStore::open(dir.path()).unwrap());
            })*
        }
    };
}

conformance_tests!(
    empty_store,
    append_and_read_back,
    conflicting_suffix_is_truncated,
    rejected_append_changes_nothing,
    hard_state_and_commit,
    conf_state,
    entries_bounds,
    entries_max_size,
    save_snapshot_compacts,
    leader_snapshot_replaces_log,
    empty_snapshot_is_ignored,
    outputs_ordered_and_isolated,
    approximate_size,
);

#[test]
fn every_conformance_case_is_wired() {
    let cases: Vec<&str> = conformance::CASES.iter().map(|(name, _)| *name).collect();
    assert_eq!(cases, WIRED, "conformance::CASES and the test list differ");
}

#[test]
fn sled_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    conformance::survives_reopen(&mut || Box::new(SledStore::open(dir.path()).unwrap()));
}

#[test]
fn sled_directory_is_locked_while_open() {
    let dir = tempfile::tempdir().unwrap();
    let _open = SledStore::open(dir.path()).unwrap();
    let second = SledStore::open(dir.path());
    assert!(second.is_err(), "a second open of a live store must fail");
}

fn logger() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn single_voter() -> ConfState {
    ConfState { voters: vec![1], ..Default::default() }
}

fn raw_node(store: &Arc<dyn Store>) -> RawNode<RaftStorage> {
    let config = raft::Config { id: 1, election_tick: 10, heartbeat_tick: 3, ..Default::default() };
    RawNode::new(&config, RaftStorage(Arc::clone(store)), &logger()).unwrap()
}

/// Runs Ready rounds until there are none, in raft-rs's documented order, and returns the
/// committed entries handed to the application.
fn run_ready(node: &mut RawNode<RaftStorage>, store: &dyn Store) -> Vec<Entry> {
    let mut applied = Vec::new();
    while node.has_ready() {
        let mut rd = node.ready();
        // A single voter has no one to send messages to.
        assert!(rd.messages().is_empty() && rd.persisted_messages().is_empty());
        // Apply what is committed.
        applied.extend(rd.take_committed_entries());
        // Persist entries, hard state and snapshot (the empty snapshot of every Ready is a
        // no-op for the store) in one durable batch.
        store.persist(Persist { entries: rd.entries(), hard_state: rd.hs(), snapshot: Some(rd.snapshot()) }).unwrap();
        // Advance, then persist the new commit index and apply what it committed.
        let mut light = node.advance(rd);
        if let Some(commit) = light.commit_index() {
            store.set_commit(commit).unwrap();
        }
        applied.extend(light.take_committed_entries());
        node.advance_apply();
    }
    applied
}

fn data(entries: &[Entry]) -> Vec<(u64, &[u8])> {
    entries.iter().filter(|e| e.get_entry_type() == EntryType::EntryNormal).map(|e| (e.index, &e.data[..])).collect()
}

/// Elects the single voter and commits one proposal; returns the applied entries.
fn elect_and_commit(store: &Arc<dyn Store>, payload: &[u8]) -> Vec<Entry> {
    let mut node = raw_node(store);
    node.campaign().unwrap();
    let mut applied = run_ready(&mut node, store.as_ref());
    assert_eq!(node.raft.state, StateRole::Leader);
    node.propose(vec![], payload.to_vec()).unwrap();
    applied.extend(run_ready(&mut node, store.as_ref()));
    assert_eq!(
        store.initial_state().unwrap().hard_state,
        node.raft.hard_state(),
        "the store holds the node's hard state"
    );
    applied
}

#[test]
fn raw_node_commits_through_mem_store() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    store.set_conf_state(&single_voter()).unwrap();
    let applied = elect_and_commit(&store, b"hello");
    // Index 1 is the empty entry a new leader appends; the proposal is index 2.
    assert_eq!(data(&applied), [(1, &b""[..]), (2, &b"hello"[..])]);
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 2);
}

fn open(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SledStore::open(dir).unwrap())
}

#[test]
fn raw_node_restarts_from_sled_store() {
    let dir = tempfile::tempdir().unwrap();
    let hard_state = {
        let store = open(dir.path());
        store.set_conf_state(&single_voter()).unwrap();
        let applied = elect_and_commit(&store, b"hello");
        assert_eq!(data(&applied), [(1, &b""[..]), (2, &b"hello"[..])]);
        store.initial_state().unwrap().hard_state
    };
    assert_eq!((hard_state.term, hard_state.vote, hard_state.commit), (1, 1, 2));

    // Restart: same hard state, the log is readable, and the committed entries are handed
    // out again because this node says it applied nothing (`Config::applied` is 0).
    let store = open(dir.path());
    let mut node = raw_node(&store);
    assert_eq!(node.raft.hard_state(), hard_state);
    assert_eq!(node.raft.raft_log.last_index(), 2);
    let log = node.raft.raft_log.entries(1, raft::NO_LIMIT, GetEntriesContext::empty(false)).unwrap();
    assert_eq!(data(&log), [(1, &b""[..]), (2, &b"hello"[..])]);
    let replayed = run_ready(&mut node, store.as_ref());
    assert_eq!(data(&replayed), [(1, &b""[..]), (2, &b"hello"[..])]);

    // And it keeps working: a new election and a new commit.
    node.campaign().unwrap();
    let mut applied = run_ready(&mut node, store.as_ref());
    node.propose(vec![], b"again".to_vec()).unwrap();
    applied.extend(run_ready(&mut node, store.as_ref()));
    assert_eq!(data(&applied), [(3, &b""[..]), (4, &b"again"[..])]);
    assert_eq!(node.raft.hard_state().term, 2);
}

#[test]
fn raw_node_serves_a_saved_snapshot() {
    let store: Arc<dyn Store> = Arc::new(MemStore::new());
    store.set_conf_state(&single_voter()).unwrap();
    elect_and_commit(&store, b"hello");
    store.save_snapshot(b"state".to_vec(), 2, &single_voter()).unwrap();
    let storage = RaftStorage(Arc::clone(&store));
    let snap = raft::Storage::snapshot(&storage, 0, 2).unwrap();
    assert_eq!((snap.get_metadata().index, &snap.data[..]), (2, &b"state"[..]));
    assert!(matches!(
        raft::Storage::snapshot(&storage, 3, 2),
        Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))
    ));
    assert!(matches!(raft::Storage::term(&storage, 1), Err(raft::Error::Store(raft::StorageError::Compacted))));

    // A node restarted on the compacted store starts from the snapshot.
    let node = raw_node(&store);
    assert_eq!(node.raft.raft_log.first_index(), 3);
    assert_eq!(node.raft.raft_log.committed, 2);
}
