//! `SledStore`: the [`Store`] on disk, in sled. The only file in Baton that names sled.
//!
//! Layout, in two sled trees of one database:
//! - `raft`: `e` + index (8 bytes, big-endian, so key order is log order) -> `Entry`;
//!   `m/hard_state` -> `HardState`; `m/conf_state` -> `ConfState`; `m/snapshot` -> `Snapshot`
//!   (metadata and data); `m/format` -> the layout version. All protobuf-encoded (rust-protobuf
//!   2, the codec raft-rs uses). Every Raft write is one `apply_batch` on this tree, so it is
//!   atomic, followed by a flush (fsync) before the method returns.
//! - `outputs`: run id + `0x00` + seq (8 bytes, big-endian) -> an `OutputChunk` in a compact
//!   binary encoding (see [`encode_chunk`]). The separator keeps run `a` from reading run `ab`,
//!   which is why run ids must not contain NUL.
//!
//! The log bounds, hard state, conf state and snapshot metadata are cached in memory (loaded
//! and checked on open), so `first_index`, `last_index`, `initial_state` and the common `term`
//! lookups never touch sled. The cache lock is held across each whole write, so readers never
//! see the cache and the tree disagree.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};

use super::{
    LogBounds, OutputChunk, Persist, Store, StoreError, check_run_id, collect_limited, hard_state_after_snapshot,
    is_real_snapshot, new_snapshot,
};

/// Version of the on-disk layout described in the module documentation.
const FORMAT_VERSION: u32 = 1;

const ENTRY_PREFIX: u8 = b'e';
const HARD_STATE_KEY: &[u8] = b"m/hard_state";
const CONF_STATE_KEY: &[u8] = b"m/conf_state";
const SNAPSHOT_KEY: &[u8] = b"m/snapshot";
const FORMAT_KEY: &[u8] = b"m/format";

/// The [`Store`] backed by a sled database in one directory.
pub struct SledStore {
    path: PathBuf,
    db: ::sled::Db,
    /// The Raft log and its metadata.
    raft: ::sled::Tree,
    /// The per-node step output log.
    outputs: ::sled::Tree,
    /// The state-machine snapshot, alone in its tree: kept with the constantly rewritten hard
    /// state, sled copied the whole blob on every commit and never reclaimed the copies.
    snapshots: ::sled::Tree,
    /// In-memory copy of everything small that the hot path reads.
    cache: RwLock<Cache>,
}

/// What `SledStore` keeps in memory; always equal to what the `raft` tree holds.
#[derive(Debug, Clone, Default)]
struct Cache {
    bounds: LogBounds,
    hard_state: HardState,
    /// `None` until `set_conf_state` or a leader snapshot stores one.
    conf_state: Option<ConfState>,
    snapshot_meta: SnapshotMetadata,
}

impl fmt::Debug for SledStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // sled's own Debug walks every tree; show only what identifies the store.
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("bounds", &self.read().bounds)
            .finish_non_exhaustive()
    }
}

/// Opens the sled database. sled holds its directory's file lock until its background
/// flusher has stopped, a moment after the last handle is dropped, so a reopen in the same
/// process (a restart in tests, a restore followed by a start) may find it still held: the
/// lock is waited for, up to 2 s. Another process holding it gets the error after that.
fn open_db(dir: &Path) -> ::sled::Result<::sled::Db> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match ::sled::Config::new().path(dir).open() {
            // sled reports it as an `Other` I/O error with this text.
            Err(::sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`, and checks that what it finds is a
    /// consistent log: `Corrupt` says which invariant is broken.
    pub fn open(dir: &Path) -> Result<SledStore, StoreError> {
        let db = open_db(dir).map_err(sled_error(&format!("opening {}", dir.display())))?;
        let raft = db.open_tree("raft").map_err(sled_error("opening the raft tree"))?;
        let outputs = db.open_tree("outputs").map_err(sled_error("opening the outputs tree"))?;
        let snapshots = db.open_tree("snapshots").map_err(sled_error("opening the snapshots tree"))?;
        let store =
            SledStore { path: dir.to_owned(), cache: RwLock::new(Cache::default()), db, raft, outputs, snapshots };
        let cache = store.load()?;
        tracing::info!(
            path = %dir.display(),
            snapshot_index = cache.bounds.snapshot_index,
            last_index = cache.bounds.last_index,
            commit = cache.hard_state.commit,
            "opened the sled store"
        );
        *store.write() = cache;
        Ok(store)
    }

    /// Reads the metadata and the ends of the log, checking them against each other.
    fn load(&self) -> Result<Cache, StoreError> {
        self.check_format()?;
        let hard_state: HardState = self.get_decoded(HARD_STATE_KEY, "hard state")?;
        let conf_state: Option<ConfState> = self.get(CONF_STATE_KEY)?.map(|v| decode(&v, "conf state")).transpose()?;
        let snapshot: Snapshot = self.read_snapshot()?;
        let snapshot_meta = snapshot.get_metadata().clone();

        let mut log = self.raft.scan_prefix([ENTRY_PREFIX]);
        let first = log.next().map(decode_entry_pair).transpose()?;
        let last = log.next_back().map(decode_entry_pair).transpose()?;
        let last = last.or_else(|| first.clone());

        let mut bounds = LogBounds {
            snapshot_index: snapshot_meta.index,
            snapshot_term: snapshot_meta.term,
            last_index: snapshot_meta.index,
            last_term: snapshot_meta.term,
        };
        if let (Some(first), Some(last)) = (first, last) {
            if first.index != bounds.first_index() {
                return Err(StoreError::Corrupt(format!(
                    "the log starts at index {} but the snapshot ends at index {}; \
                     the log must start right after the snapshot",
                    first.index, bounds.snapshot_index
                )));
            }
            bounds.last_index = last.index;
            bounds.last_term = last.term;
        }
        if hard_state.commit > bounds.last_index {
            return Err(StoreError::Corrupt(format!(
                "hard state commit {} is beyond the last log index {}",
                hard_state.commit, bounds.last_index
            )));
        }
        Ok(Cache { bounds, hard_state, conf_state, snapshot_meta })
    }

    /// Stamps a new store with the layout version, or checks an existing one's.
    fn check_format(&self) -> Result<(), StoreError> {
        match self.get(FORMAT_KEY)? {
            Some(v) => {
                let version = <[u8; 4]>::try_from(v.as_ref())
                    .map(u32::from_be_bytes)
                    .map_err(|_| StoreError::Corrupt(format!("format version {v:?} is not 4 bytes")))?;
                if version != FORMAT_VERSION {
                    return Err(StoreError::Corrupt(format!(
                        "on-disk format version {version} is not the version {FORMAT_VERSION} \
                         this build reads"
                    )));
                }
                Ok(())
            }
            None if self.raft.is_empty() => {
                self.raft
                    .insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                    .map_err(sled_error("writing the format version"))?;
                self.flush()
            }
            None => Err(StoreError::Corrupt("the raft tree holds data but no format version".to_owned())),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, Cache> {
        // A panic while writing may have left the cache and the tree apart: stop using it.
        self.cache.read().expect("a write to the store panicked; the store must be reopened")
    }

    fn write(&self) -> RwLockWriteGuard<'_, Cache> {
        self.cache.write().expect("a write to the store panicked; the store must be reopened")
    }

    fn get(&self, key: &[u8]) -> Result<Option<::sled::IVec>, StoreError> {
        self.raft.get(key).map_err(sled_error("reading the raft tree"))
    }

    /// Reads and decodes `key`, or the default value if it is absent.
    fn get_decoded<M: Message + Default>(&self, key: &[u8], what: &str) -> Result<M, StoreError> {
        match self.get(key)? {
            Some(v) => decode(&v, what),
            None => Ok(M::default()),
        }
    }

    /// Reads entry `idx`, which the bounds say is in the log.
    fn read_entry(&self, idx: u64) -> Result<Entry, StoreError> {
        let value = self
            .get(&entry_key(idx))?
            .ok_or_else(|| StoreError::Corrupt(format!("log entry {idx} is missing from the middle of the log")))?;
        let entry: Entry = decode(&value, "log entry")?;
        check_entry_index(idx, &entry)?;
        Ok(entry)
    }

    fn term_in(&self, cache: &Cache, idx: u64) -> Result<u64, StoreError> {
        match cache.bounds.known_term(idx)? {
            Some(term) => Ok(term),
            None => Ok(self.read_entry(idx)?.term),
        }
    }

    fn apply(&self, batch: ::sled::Batch) -> Result<(), StoreError> {
        self.raft.apply_batch(batch).map_err(sled_error("writing a batch to the raft tree"))
    }

    /// Writes a raft-tree batch and a new snapshot in one transaction.
    fn apply_with_snapshot(&self, batch: ::sled::Batch, snapshot: Vec<u8>) -> Result<(), StoreError> {
        use ::sled::Transactional;
        (&self.raft, &self.snapshots)
            .transaction(|(raft, snapshots)| {
                raft.apply_batch(&batch)?;
                snapshots.insert(SNAPSHOT_KEY, snapshot.as_slice())?;
                Ok::<(), ::sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| StoreError::Io(format!("writing a snapshot: {e:?}")))
    }

    /// The stored snapshot (stores written before the snapshot had its own tree keep it in
    /// the raft tree).
    fn read_snapshot(&self) -> Result<Snapshot, StoreError> {
        match self.snapshots.get(SNAPSHOT_KEY).map_err(sled_error("reading the snapshot"))? {
            Some(v) => decode(&v, "snapshot"),
            None => self.get_decoded(SNAPSHOT_KEY, "snapshot"),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(drop).map_err(sled_error("flushing to disk"))
    }
}

impl Store for SledStore {
    fn initial_state(&self) -> Result<raft::RaftState, StoreError> {
        let cache = self.read();
        let conf_state = cache.conf_state.clone().unwrap_or_else(|| cache.snapshot_meta.get_conf_state().clone());
        Ok(raft::RaftState::new(cache.hard_state.clone(), conf_state))
    }

    fn persist(&self, p: Persist<'_>) -> Result<(), StoreError> {
        let mut cache = self.write();

        // Work out and check the result before writing anything.
        let snapshot = p.snapshot.filter(|s| is_real_snapshot(s));
        let mut installed = cache.bounds.clone();
        let mut hard_state = cache.hard_state.clone();
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

        let mut batch = ::sled::Batch::default();
        if let Some(s) = snapshot {
            // The snapshot replaces the whole log.
            for idx in cache.bounds.first_index()..=cache.bounds.last_index {
                batch.remove(&entry_key(idx));
            }
            batch.remove(SNAPSHOT_KEY);
            batch.insert(CONF_STATE_KEY, encode(s.get_metadata().get_conf_state(), "conf state")?);
        }
        // Truncate the conflicting suffix: stored entries past the new last index go; those up
        // to it are overwritten by the inserts below (a batch keeps the last write per key).
        if !p.entries.is_empty() {
            for idx in appended.last_index + 1..=cache.bounds.last_index {
                batch.remove(&entry_key(idx));
            }
        }
        for e in p.entries {
            batch.insert(&entry_key(e.index), encode(e, "log entry")?);
        }
        let hard_state_changed = hard_state != cache.hard_state;
        if hard_state_changed {
            batch.insert(HARD_STATE_KEY, encode(&hard_state, "hard state")?);
        }
        if snapshot.is_none() && p.entries.is_empty() && !hard_state_changed {
            return Ok(());
        }

        match snapshot {
            Some(s) => self.apply_with_snapshot(batch, encode(s, "snapshot")?)?,
            None => self.apply(batch)?,
        }
        // The tree now holds the new state; the cache must say the same even if the flush
        // fails (after which the caller stops the node anyway).
        if let Some(s) = snapshot {
            cache.snapshot_meta = s.get_metadata().clone();
            cache.conf_state = Some(s.get_metadata().get_conf_state().clone());
        }
        cache.bounds = appended;
        cache.hard_state = hard_state;
        self.flush()
    }

    fn set_conf_state(&self, cs: &ConfState) -> Result<(), StoreError> {
        let mut cache = self.write();
        self.raft.insert(CONF_STATE_KEY, encode(cs, "conf state")?).map_err(sled_error("writing the conf state"))?;
        cache.conf_state = Some(cs.clone());
        self.flush()
    }

    fn set_commit(&self, commit: u64) -> Result<(), StoreError> {
        let mut cache = self.write();
        cache.bounds.check_commit(commit)?;
        if commit == cache.hard_state.commit {
            return Ok(());
        }
        let mut hard_state = cache.hard_state.clone();
        hard_state.commit = commit;
        self.raft
            .insert(HARD_STATE_KEY, encode(&hard_state, "hard state")?)
            .map_err(sled_error("writing the hard state"))?;
        cache.hard_state = hard_state;
        self.flush()
    }

    fn entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>, StoreError> {
        let cache = self.read();
        cache.bounds.check_range(low, high)?;
        if low >= high {
            return Ok(Vec::new());
        }
        let mut stored = self.raft.range(entry_key(low)..entry_key(high));
        // Pair each wanted index with the next stored entry, so a hole is reported rather than
        // silently returning a short or shifted slice.
        let wanted = (low..high).map(|idx| {
            let (key, value) = stored
                .next()
                .transpose()
                .map_err(sled_error("reading log entries"))?
                .ok_or_else(|| StoreError::Corrupt(format!("log entry {idx} is missing from the log")))?;
            let entry = decode_entry_pair(Ok((key, value)))?;
            if entry.index != idx {
                return Err(StoreError::Corrupt(format!(
                    "log entry {idx} is missing: the next stored entry is {}",
                    entry.index
                )));
            }
            Ok(entry)
        });
        collect_limited(wanted, max_size)
    }

    fn term(&self, idx: u64) -> Result<u64, StoreError> {
        let cache = self.read();
        self.term_in(&cache, idx)
    }

    fn first_index(&self) -> Result<u64, StoreError> {
        Ok(self.read().bounds.first_index())
    }

    fn last_index(&self) -> Result<u64, StoreError> {
        Ok(self.read().bounds.last_index)
    }

    fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let _cache = self.read();
        self.read_snapshot()
    }

    fn save_snapshot(&self, data: Vec<u8>, index: u64, conf_state: &ConfState) -> Result<(), StoreError> {
        let mut cache = self.write();
        cache.bounds.check_save_snapshot(index)?;
        let term = self.term_in(&cache, index)?;

        let mut snapshot = new_snapshot(data, index, term, conf_state);

        let mut batch = ::sled::Batch::default();
        batch.remove(SNAPSHOT_KEY);
        for idx in cache.bounds.first_index()..=index {
            batch.remove(&entry_key(idx));
        }
        self.apply_with_snapshot(batch, encode(&snapshot, "snapshot")?)?;
        cache.snapshot_meta = snapshot.take_metadata();
        cache.bounds = cache.bounds.compact(index, term);
        self.flush()
    }

    fn append_output(&self, run_id: &str, chunk: &OutputChunk) -> Result<(), StoreError> {
        check_run_id(run_id)?;
        self.outputs
            .insert(output_key(run_id, chunk.seq), encode_chunk(chunk))
            .map_err(sled_error("appending to the output log"))?;
        Ok(())
    }

    fn read_output(&self, run_id: &str, from_seq: u64, limit: usize) -> Result<Vec<OutputChunk>, StoreError> {
        check_run_id(run_id)?;
        self.outputs
            .range(output_key(run_id, from_seq)..=output_key(run_id, u64::MAX))
            .take(limit)
            .map(|pair| {
                let (key, value) = pair.map_err(sled_error("reading the output log"))?;
                let seq_bytes = key.len().checked_sub(8).map(|at| &key[at..]);
                let seq = seq_bytes
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| StoreError::Corrupt(format!("output key {key:?} has no sequence number")))?;
                decode_chunk(seq, &value)
            })
            .collect()
    }

    fn flush_outputs(&self) -> Result<(), StoreError> {
        self.flush()
    }

    fn approximate_size(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(sled_error("measuring the size on disk"))
    }
}

/// Turns a sled error into a `StoreError` that says what was being done.
fn sled_error(doing: &str) -> impl FnOnce(::sled::Error) -> StoreError + '_ {
    move |e| match e {
        ::sled::Error::Corruption { .. } => StoreError::Corrupt(format!("{doing}: {e}")),
        _ => StoreError::Io(format!("{doing}: {e}")),
    }
}

fn encode(m: &impl Message, what: &str) -> Result<Vec<u8>, StoreError> {
    m.write_to_bytes().map_err(|e| StoreError::Io(format!("encoding the {what}: {e}")))
}

fn decode<M: Message>(bytes: &[u8], what: &str) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|e| StoreError::Corrupt(format!("the stored {what} does not decode: {e}")))
}

fn entry_key(idx: u64) -> [u8; 9] {
    let mut key = [ENTRY_PREFIX; 9];
    key[1..].copy_from_slice(&idx.to_be_bytes());
    key
}

/// Decodes one `(key, value)` pair of the log and checks that the key and entry agree.
fn decode_entry_pair(pair: Result<(::sled::IVec, ::sled::IVec), ::sled::Error>) -> Result<Entry, StoreError> {
    let (key, value) = pair.map_err(sled_error("reading the log"))?;
    let idx = match key.split_first() {
        Some((&ENTRY_PREFIX, rest)) => <[u8; 8]>::try_from(rest).ok().map(u64::from_be_bytes),
        _ => None,
    }
    .ok_or_else(|| StoreError::Corrupt(format!("log key {key:?} is not a log entry key")))?;
    let entry: Entry = decode(&value, "log entry")?;
    check_entry_index(idx, &entry)?;
    Ok(entry)
}

fn check_entry_index(idx: u64, entry: &Entry) -> Result<(), StoreError> {
    if entry.index != idx {
        return Err(StoreError::Corrupt(format!("the entry stored at index {idx} says it has index {}", entry.index)));
    }
    Ok(())
}

fn output_key(run_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(run_id.len() + 9);
    key.extend_from_slice(run_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Length of the fixed part of an encoded chunk: attempt, stream, at_ms, step id length.
const CHUNK_HEADER: usize = 8 + 1 + 8 + 4;

/// Encodes a chunk without its seq (which is in the key): attempt (u64 BE), stream (u8),
/// at_ms (i64 BE), step id length (u32 BE), step id, then the data to the end. Logs are bulky
/// and mostly bytes, so this beats JSON's array-of-numbers by several times.
fn encode_chunk(c: &OutputChunk) -> Vec<u8> {
    let step_len = u32::try_from(c.step_id.len()).expect("step id shorter than 4 GiB");
    let mut out = Vec::with_capacity(CHUNK_HEADER + c.step_id.len() + c.data.len());
    out.extend_from_slice(&c.attempt.to_be_bytes());
    out.push(c.stream);
    out.extend_from_slice(&c.at_ms.to_be_bytes());
    out.extend_from_slice(&step_len.to_be_bytes());
    out.extend_from_slice(c.step_id.as_bytes());
    out.extend_from_slice(&c.data);
    out
}

fn decode_chunk(seq: u64, bytes: &[u8]) -> Result<OutputChunk, StoreError> {
    let corrupt = |why: &str| StoreError::Corrupt(format!("output chunk {seq}: {why}"));
    let (header, rest) = bytes.split_at_checked(CHUNK_HEADER).ok_or_else(|| corrupt("shorter than its header"))?;
    let (attempt, header) = header.split_at(8);
    let (stream, header) = header.split_at(1);
    let (at_ms, step_len) = header.split_at(8);
    let be8 = |b: &[u8]| <[u8; 8]>::try_from(b).expect("8-byte slice");
    let step_len = u32::from_be_bytes(<[u8; 4]>::try_from(step_len).expect("4-byte slice"));
    let (step_id, data) = usize::try_from(step_len)
        .ok()
        .and_then(|n| rest.split_at_checked(n))
        .ok_or_else(|| corrupt("step id runs past the end"))?;
    let step_id = String::from_utf8(step_id.to_vec()).map_err(|_| corrupt("step id is not UTF-8"))?;
    Ok(OutputChunk {
        seq,
        step_id,
        attempt: u64::from_be_bytes(be8(attempt)),
        stream: stream[0],
        data: data.to_vec(),
        at_ms: i64::from_be_bytes(be8(at_ms)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, ..Default::default() }
    }

    fn store_with_log(dir: &Path) -> SledStore {
        let store = SledStore::open(dir).unwrap();
        let entries: Vec<Entry> = (1..=5).map(|i| entry(i, 1)).collect();
        store.persist(Persist { entries: &entries, ..Persist::default() }).unwrap();
        store
    }

    fn corrupt_message(dir: &Path) -> String {
        match SledStore::open(dir) {
            Err(StoreError::Corrupt(msg)) => msg,
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn chunk_encoding_round_trips() {
        let chunk = OutputChunk {
            seq: 9,
            step_id: "drain-ü".to_owned(),
            attempt: 3,
            stream: 2,
            data: vec![0, 255, 10, 13],
            at_ms: -5,
        };
        assert_eq!(decode_chunk(9, &encode_chunk(&chunk)).unwrap(), chunk);
        assert!(decode_chunk(9, &encode_chunk(&chunk)[..CHUNK_HEADER - 1]).is_err());
    }

    #[test]
    fn open_rejects_a_hole_at_the_start_of_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_log(dir.path());
        store.raft.remove(entry_key(1)).unwrap();
        store.db.flush().unwrap();
        drop(store);
        let msg = corrupt_message(dir.path());
        assert!(msg.contains("starts at index 2"), "{msg}");
    }

    #[test]
    fn open_rejects_a_commit_beyond_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_log(dir.path());
        let hs = HardState { commit: 9, ..Default::default() };
        store.raft.insert(HARD_STATE_KEY, hs.write_to_bytes().unwrap()).unwrap();
        store.db.flush().unwrap();
        drop(store);
        let msg = corrupt_message(dir.path());
        assert!(msg.contains("commit 9 is beyond the last log index 5"), "{msg}");
    }

    #[test]
    fn open_rejects_an_entry_under_the_wrong_key() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_log(dir.path());
        store.raft.insert(entry_key(5), entry(4, 1).write_to_bytes().unwrap()).unwrap();
        store.db.flush().unwrap();
        drop(store);
        let msg = corrupt_message(dir.path());
        assert!(msg.contains("stored at index 5 says it has index 4"), "{msg}");
    }

    #[test]
    fn reading_across_a_hole_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_with_log(dir.path());
        store.raft.remove(entry_key(3)).unwrap();
        assert!(matches!(
            store.entries(1, 6, None),
            Err(StoreError::Corrupt(msg)) if msg.contains("entry 3")
        ));
        assert!(matches!(store.term(3), Err(StoreError::Corrupt(_))));
    }

    #[test]
    fn open_rejects_an_unknown_format_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        store.raft.insert(FORMAT_KEY, &7u32.to_be_bytes()).unwrap();
        store.db.flush().unwrap();
        drop(store);
        let msg = corrupt_message(dir.path());
        assert!(msg.contains("format version 7"), "{msg}");
    }
}
