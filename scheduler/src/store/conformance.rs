//! The behaviour every [`Store`] must have, as test cases shared by all implementations.
//!
//! Each case takes a fresh, empty store and panics with a message naming what went wrong.
//! `scheduler/tests/store.rs` runs every case in [`CASES`] against `MemStore` and `SledStore`;
//! a new implementation gets the same treatment by running them against it. Durable stores
//! also run [`survives_reopen`].

use protobuf::Message as _;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use super::{OutputChunk, Persist, Store, StoreError, new_snapshot};

/// A conformance case: runs against a fresh, empty store and panics on a violation.
pub type Case = fn(&dyn Store);

/// Every case that applies to all stores, by name.
pub const CASES: &[(&str, Case)] = &[
    ("empty_store", empty_store),
    ("append_and_read_back", append_and_read_back),
    ("conflicting_suffix_is_truncated", conflicting_suffix_is_truncated),
    ("rejected_append_changes_nothing", rejected_append_changes_nothing),
    ("hard_state_and_commit", hard_state_and_commit),
    ("conf_state", conf_state),
    ("entries_bounds", entries_bounds),
    ("entries_max_size", entries_max_size),
    ("save_snapshot_compacts", save_snapshot_compacts),
    ("leader_snapshot_replaces_log", leader_snapshot_replaces_log),
    ("empty_snapshot_is_ignored", empty_snapshot_is_ignored),
    ("outputs_ordered_and_isolated", outputs_ordered_and_isolated),
    ("approximate_size", approximate_size),
];

/// An entry with `index`, `term` and `data`.
pub fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry { index, term, data: data.to_vec().into(), ..Default::default() }
}

/// Entries `from..=to`, all in `term`, each with a payload naming its index.
pub fn entries(from: u64, to: u64, term: u64) -> Vec<Entry> {
    (from..=to).map(|i| entry(i, term, format!("entry {i} term {term}").as_bytes())).collect()
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit, ..Default::default() }
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState { voters: ids.to_vec(), ..Default::default() }
}

fn chunk(seq: u64, data: &str) -> OutputChunk {
    OutputChunk {
        seq,
        step_id: "step".to_owned(),
        attempt: 1,
        stream: 1,
        data: data.as_bytes().to_vec(),
        at_ms: 1_700_000_000_000 + seq as i64,
    }
}

fn append(store: &dyn Store, entries: &[Entry]) {
    store
        .persist(Persist { entries, ..Persist::default() })
        .unwrap_or_else(|e| panic!("appending {} entries failed: {e}", entries.len()));
}

/// Asserts the log is exactly `expected`, through every read method.
fn assert_log(store: &dyn Store, expected: &[Entry], context: &str) {
    let first = store.first_index().unwrap();
    let last = store.last_index().unwrap();
    let got = store.entries(first, last + 1, None).unwrap();
    assert_eq!(got, expected, "{context}: log contents");
    if let (Some(f), Some(l)) = (expected.first(), expected.last()) {
        assert_eq!((first, last), (f.index, l.index), "{context}: first/last index");
    }
    for e in expected {
        assert_eq!(store.term(e.index).unwrap(), e.term, "{context}: term of {}", e.index);
    }
}

fn assert_err(result: Result<impl std::fmt::Debug, StoreError>, want: &str, context: &str) {
    match result {
        Err(e) if format!("{e:?}").starts_with(want) => {}
        other => panic!("{context}: expected {want}, got {other:?}"),
    }
}

/// A new store is empty: no entries, default hard and conf state, no snapshot, no outputs.
pub fn empty_store(store: &dyn Store) {
    let state = store.initial_state().unwrap();
    assert_eq!(state.hard_state, HardState::default(), "empty hard state");
    assert_eq!(state.conf_state, ConfState::default(), "empty conf state");
    assert!(!state.initialized(), "a new store is not initialized");
    assert_eq!(store.first_index().unwrap(), 1, "first index of empty store");
    assert_eq!(store.last_index().unwrap(), 0, "last index of empty store");
    assert_eq!(store.term(0).unwrap(), 0, "term(0) of empty store");
    assert_err(store.term(1), "Unavailable", "term(1) of empty store");
    assert!(store.entries(1, 1, None).unwrap().is_empty(), "empty range");
    assert_err(store.entries(1, 2, None), "Unavailable", "entries(1, 2)");
    assert_err(store.entries(0, 1, None), "Compacted", "entries(0, 1)");
    assert_eq!(store.snapshot().unwrap(), Snapshot::default(), "no snapshot");
    assert!(store.read_output("run", 0, 10).unwrap().is_empty(), "no output");
    store.persist(Persist::default()).expect("an empty persist is a no-op");
    assert_eq!(store.last_index().unwrap(), 0, "after empty persist");
}

/// Appended entries read back intact, and later appends extend the log.
pub fn append_and_read_back(store: &dyn Store) {
    let mut log = entries(1, 5, 1);
    append(store, &log);
    assert_log(store, &log, "after appending 1..=5");
    assert_eq!(store.entries(2, 4, None).unwrap(), log[1..3], "entries(2, 4)");

    let more = entries(6, 7, 2);
    append(store, &more);
    log.extend(more);
    assert_log(store, &log, "after appending 6..=7");
    assert_eq!(store.first_index().unwrap(), 1);
}

/// Appending at an index inside the log deletes everything from there on first.
pub fn conflicting_suffix_is_truncated(store: &dyn Store) {
    append(store, &entries(1, 10, 1));
    append(store, &entries(5, 7, 2));
    let mut expected = entries(1, 4, 1);
    expected.extend(entries(5, 7, 2));
    assert_log(store, &expected, "after overwriting 5..=7");
    assert_eq!(store.last_index().unwrap(), 7, "entries 8..=10 are gone");
    assert_err(store.term(8), "Unavailable", "term(8) after truncation");
    assert_err(store.entries(1, 9, None), "Unavailable", "entries(1, 9)");

    // Overwriting the very first entry and appending at last + 1 both work.
    append(store, &entries(1, 1, 3));
    assert_log(store, &entries(1, 1, 3), "after overwriting from 1");
    append(store, &entries(2, 2, 3));
    assert_eq!(store.last_index().unwrap(), 2);
}

/// A rejected persist leaves the store exactly as it was.
pub fn rejected_append_changes_nothing(store: &dyn Store) {
    let log = entries(1, 5, 1);
    let hs = hard_state(1, 1, 5);
    store.persist(Persist { entries: &log, hard_state: Some(&hs), snapshot: None }).unwrap();

    let gap = entries(7, 8, 2);
    assert_err(
        store.persist(Persist { entries: &gap, hard_state: Some(&hard_state(2, 1, 5)), snapshot: None }),
        "Gap",
        "appending 7..=8 after 5",
    );
    let mut holey = entries(3, 4, 2);
    holey.push(entry(6, 2, b"x"));
    assert_err(store.persist(Persist { entries: &holey, ..Persist::default() }), "Gap", "appending 3, 4, 6");
    assert_err(
        store.persist(Persist { entries: &entries(6, 6, 2), hard_state: Some(&hard_state(2, 1, 7)), snapshot: None }),
        "CommitBeyondLog",
        "commit 7 with last index 6",
    );
    assert_log(store, &log, "after rejected appends");
    assert_eq!(store.initial_state().unwrap().hard_state, hs, "hard state after rejected appends");
}

/// The hard state is stored as given; `set_commit` changes only the commit.
pub fn hard_state_and_commit(store: &dyn Store) {
    let hs = hard_state(3, 2, 0);
    store.persist(Persist { entries: &entries(1, 4, 3), hard_state: Some(&hs), snapshot: None }).unwrap();
    assert_eq!(store.initial_state().unwrap().hard_state, hs);

    store.set_commit(4).unwrap();
    assert_eq!(store.initial_state().unwrap().hard_state, hard_state(3, 2, 4), "set_commit changes only the commit");
    assert_err(store.set_commit(5), "CommitBeyondLog", "set_commit(5)");
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 4);

    // A hard state alone (a vote in a new term) needs no entries.
    let voted = hard_state(4, 1, 4);
    store.persist(Persist { hard_state: Some(&voted), ..Persist::default() }).unwrap();
    assert_eq!(store.initial_state().unwrap().hard_state, voted);
}

/// `set_conf_state` is what `initial_state` returns, all fields included.
pub fn conf_state(store: &dyn Store) {
    let mut cs = voters(&[1, 2, 3]);
    cs.learners = vec![4];
    cs.voters_outgoing = vec![1, 2];
    cs.auto_leave = true;
    store.set_conf_state(&cs).unwrap();
    let state = store.initial_state().unwrap();
    assert_eq!(state.conf_state, cs);
    assert!(state.initialized(), "a store with voters is initialized");

    let later = voters(&[1, 2]);
    store.set_conf_state(&later).unwrap();
    assert_eq!(store.initial_state().unwrap().conf_state, later, "last wins");
}

/// Reads below the first index are `Compacted`, past the last are `Unavailable`.
pub fn entries_bounds(store: &dyn Store) {
    append(store, &entries(1, 10, 1));
    store.save_snapshot(b"s".to_vec(), 3, &voters(&[1])).unwrap();
    assert_err(store.entries(3, 5, None), "Compacted", "entries(3, 5)");
    assert_err(store.entries(1, 2, None), "Compacted", "entries(1, 2)");
    assert_err(store.entries(4, 12, None), "Unavailable", "entries(4, 12)");
    assert_eq!(store.entries(4, 11, None).unwrap(), entries(4, 10, 1));
    assert!(store.entries(11, 11, None).unwrap().is_empty(), "entries(11, 11)");
    assert_err(store.term(2), "Compacted", "term(2)");
    assert_eq!(store.term(3).unwrap(), 1, "term(snapshot index)");
    assert_err(store.term(11), "Unavailable", "term(11)");
}

/// `max_size` follows raft-rs `limit_size`: at least one entry, then while the total fits.
pub fn entries_max_size(store: &dyn Store) {
    let log: Vec<Entry> = (1..=8).map(|i| entry(i, 1, &vec![b'x'; 10 * i as usize])).collect();
    append(store, &log);
    let mut limits = vec![None, Some(0), Some(1), Some(u64::MAX)];
    let mut total = 0;
    for e in &log[2..] {
        total += u64::from(e.compute_size());
        limits.extend([Some(total - 1), Some(total), Some(total + 1)]);
    }
    for max in limits {
        let mut expected = log[2..].to_vec();
        raft::util::limit_size(&mut expected, max);
        assert_eq!(store.entries(3, 9, max).unwrap(), expected, "entries(3, 9, {max:?})");
    }
}

/// `save_snapshot` stores the snapshot, compacts the log through its index, and keeps the
/// snapshot's term answerable.
pub fn save_snapshot_compacts(store: &dyn Store) {
    let mut log = entries(1, 5, 1);
    log.extend(entries(6, 10, 2));
    append(store, &log);
    store.set_commit(10).unwrap();

    let cs = voters(&[1, 2, 3]);
    store.save_snapshot(b"state at 6".to_vec(), 6, &cs).unwrap();
    assert_eq!(store.first_index().unwrap(), 7);
    assert_eq!(store.last_index().unwrap(), 10);
    assert_eq!(store.term(6).unwrap(), 2, "term(snapshot index)");
    assert_err(store.term(5), "Compacted", "term(5)");
    assert_log(store, &log[6..], "after compacting through 6");
    let snap = store.snapshot().unwrap();
    assert_eq!(&snap.data[..], b"state at 6");
    assert_eq!((snap.get_metadata().index, snap.get_metadata().term), (6, 2));
    assert_eq!(snap.get_metadata().get_conf_state(), &cs);
    assert_eq!(
        store.initial_state().unwrap().conf_state,
        cs,
        "with no conf state set, the snapshot's is the initial one"
    );

    assert_err(store.save_snapshot(vec![], 5, &cs), "SnapshotOutOfDate", "snapshot at 5 after 6");
    assert_err(store.save_snapshot(vec![], 11, &cs), "Unavailable", "snapshot past the log");

    // A conf state set by the state machine is not overwritten by a later snapshot.
    let current = voters(&[1, 2]);
    store.set_conf_state(&current).unwrap();
    store.save_snapshot(b"state at 10".to_vec(), 10, &cs).unwrap();
    assert_eq!(store.initial_state().unwrap().conf_state, current);
    assert_eq!(
        (store.first_index().unwrap(), store.last_index().unwrap()),
        (11, 10),
        "compacting everything leaves an empty log after the snapshot"
    );
    assert_eq!(store.term(10).unwrap(), 2);
    assert_eq!(store.initial_state().unwrap().hard_state.commit, 10);
    assert_err(
        store.persist(Persist { entries: &entries(10, 10, 3), ..Persist::default() }),
        "Compacted",
        "appending over the snapshot",
    );
    append(store, &entries(11, 11, 3));
    assert_log(store, &entries(11, 11, 3), "after appending past the snapshot");
}

/// A snapshot from the leader replaces the whole log, its conf state and the commit.
pub fn leader_snapshot_replaces_log(store: &dyn Store) {
    append(store, &entries(1, 10, 1));
    store.set_commit(3).unwrap();
    store.set_conf_state(&voters(&[1])).unwrap();

    let cs = voters(&[1, 2, 3]);
    let snap = new_snapshot(b"leader state at 8".to_vec(), 8, 3, &cs);
    let after = entries(9, 10, 3);
    store.persist(Persist { entries: &after, hard_state: None, snapshot: Some(&snap) }).unwrap();

    assert_eq!(store.first_index().unwrap(), 9);
    assert_eq!(store.term(8).unwrap(), 3, "term(snapshot index)");
    assert_err(store.term(7), "Compacted", "term(7)");
    assert_log(store, &after, "after installing the snapshot");
    assert_eq!(store.snapshot().unwrap(), snap);
    let state = store.initial_state().unwrap();
    assert_eq!(state.conf_state, cs, "conf state comes from the snapshot");
    assert_eq!((state.hard_state.term, state.hard_state.commit), (3, 8), "hard state raised to the snapshot");

    let old = new_snapshot(vec![], 5, 1, &cs);
    assert_err(
        store.persist(Persist { snapshot: Some(&old), ..Persist::default() }),
        "SnapshotOutOfDate",
        "installing an older snapshot",
    );

    // A snapshot inside the stored log still replaces all of it.
    let inside = new_snapshot(vec![], 9, 4, &cs);
    store.persist(Persist { snapshot: Some(&inside), ..Persist::default() }).unwrap();
    assert_eq!((store.first_index().unwrap(), store.last_index().unwrap()), (10, 9));
    assert_eq!(store.term(9).unwrap(), 4);
}

/// The empty snapshot raft-rs puts in every `Ready` is not an install.
pub fn empty_snapshot_is_ignored(store: &dyn Store) {
    let log = entries(1, 3, 1);
    append(store, &log);
    let more = entries(4, 4, 1);
    store.persist(Persist { entries: &more, hard_state: None, snapshot: Some(&Snapshot::default()) }).unwrap();
    assert_log(store, &entries(1, 4, 1), "after a persist with an empty snapshot");
}

/// Output chunks come back in seq order from a given seq, per run id, and run ids that are
/// prefixes of each other do not mix.
pub fn outputs_ordered_and_isolated(store: &dyn Store) {
    for seq in [3, 1, 2, u64::MAX] {
        store.append_output("a", &chunk(seq, &format!("a{seq}"))).unwrap();
    }
    for seq in [1, 2] {
        store.append_output("ab", &chunk(seq, &format!("ab{seq}"))).unwrap();
    }
    let mut odd = chunk(0, "");
    odd.step_id = "ünïcode step".to_owned();
    odd.stream = 2;
    odd.attempt = 7;
    odd.at_ms = -1;
    odd.data = vec![0, 255, b'\n'];
    store.append_output("a\u{1}", &odd).unwrap();
    store.flush_outputs().unwrap();

    let seqs = |run: &str, from: u64, limit: usize| -> Vec<u64> {
        let chunks = store.read_output(run, from, limit).unwrap();
        chunks.iter().map(|c| c.seq).collect()
    };
    assert_eq!(seqs("a", 0, 10), [1, 2, 3, u64::MAX], "run a from 0");
    assert_eq!(seqs("a", 2, 10), [2, 3, u64::MAX], "run a from 2");
    assert_eq!(seqs("a", 1, 2), [1, 2], "run a, limit 2");
    assert!(seqs("a", 0, 0).is_empty(), "limit 0");
    assert_eq!(seqs("ab", 0, 10), [1, 2], "run ab is separate from run a");
    assert!(seqs("b", 0, 10).is_empty(), "unknown run");
    assert!(seqs("", 0, 10).is_empty(), "empty run id");
    assert_eq!(store.read_output("a", 1, 1).unwrap(), [chunk(1, "a1")]);
    assert_eq!(store.read_output("a\u{1}", 0, 10).unwrap(), [odd]);

    store.append_output("a", &chunk(2, "again")).unwrap();
    assert_eq!(store.read_output("a", 2, 1).unwrap(), [chunk(2, "again")], "same seq replaces");
    assert_err(store.append_output("a\0b", &chunk(1, "x")), "InvalidRunId", "run id with NUL");
}

/// The size estimate grows with what is stored.
pub fn approximate_size(store: &dyn Store) {
    let data = "x".repeat(64 * 1024);
    for seq in 0..16 {
        store.append_output("big", &chunk(seq, &data)).unwrap();
    }
    store.flush_outputs().unwrap();
    let size = store.approximate_size().unwrap();
    assert!(size >= 1024 * 1024, "1 MiB of output, estimated {size} bytes");
}

/// Everything a durable store holds survives closing and reopening it. `reopen` opens the same
/// store afresh; the previous handle is dropped before each call.
pub fn survives_reopen(reopen: &mut dyn FnMut() -> Box<dyn Store>) {
    let mut log = entries(1, 4, 1);
    log.extend(entries(5, 8, 2));
    let hs = hard_state(2, 1, 6);
    let cs = voters(&[1, 2, 3]);
    let out = chunk(1, "hello");
    {
        let store = reopen();
        store.persist(Persist { entries: &log, hard_state: Some(&hs), snapshot: None }).unwrap();
        store.set_conf_state(&cs).unwrap();
        store.save_snapshot(b"state at 3".to_vec(), 3, &cs).unwrap();
        store.append_output("run-1", &out).unwrap();
        store.flush_outputs().unwrap();
    }
    let expected_snapshot = {
        let store = reopen();
        let state = store.initial_state().unwrap();
        assert_eq!(state.hard_state, hs, "hard state after reopen");
        assert_eq!(state.conf_state, cs, "conf state after reopen");
        assert_eq!(store.first_index().unwrap(), 4, "first index after reopen");
        assert_log(store.as_ref(), &log[3..], "log after reopen");
        assert_eq!(store.term(3).unwrap(), 1, "snapshot term after reopen");
        let snap = store.snapshot().unwrap();
        assert_eq!(&snap.data[..], b"state at 3", "snapshot after reopen");
        assert_eq!(store.read_output("run-1", 0, 10).unwrap(), [out]);

        // Truncate the uncommitted suffix and install a leader snapshot, then check again.
        append(store.as_ref(), &entries(7, 7, 3));
        let leader = new_snapshot(b"leader".to_vec(), 6, 2, &voters(&[1]));
        let after = entries(7, 9, 3);
        store.persist(Persist { entries: &after, hard_state: None, snapshot: Some(&leader) }).unwrap();
        leader
    };
    let store = reopen();
    assert_eq!(store.snapshot().unwrap(), expected_snapshot);
    assert_log(store.as_ref(), &entries(7, 9, 3), "log after second reopen");
    assert_eq!(store.term(6).unwrap(), 2);
    assert_eq!(store.initial_state().unwrap().conf_state, voters(&[1]));
    assert_eq!(store.initial_state().unwrap().hard_state, hs);
}
