//! A seeded, deterministic simulation of a Baton cluster (design §9, layer 2).
//!
//! One thread, no tokio, no I/O, no wall clock. A cluster of 3 or 5 nodes, each a raft-rs
//! `RawNode` over its own `MemStore` with its own `fsm::State` and (while it leads) an `Engine`,
//! driven by the steps of `raft/node.rs` (`Loop::on_ready`, `apply`, `publish_status`,
//! `maybe_snapshot`), `server::drive_engine`, `dispatch::run_effects` and the API's
//! `propose` (a follower forwards to the leader; a proposal lost to a leader change is proposed
//! again until the request's deadline). Around it:
//! - a network that delivers raft messages after a seeded delay and drops, duplicates and
//!   reorders them; it reports unreachable peers and snapshots the way `raft/transport.rs`
//!   does;
//! - a nemesis: isolate the leader, split minority/majority, cut the leader's links one way,
//!   crash nodes (restarted from their store exactly like `start_node`: state from the
//!   snapshot, `Config.applied` = snapshot index, committed entries re-applied, their
//!   assignments never re-sent), crash the leader just after it sends an assignment (losing
//!   what it had not sent to its peers yet), stall a node's Ready loop for a few ticks (a slow
//!   disk: Raft still steps messages), crash or isolate workers, then heal;
//! - clients that start runs with idempotency keys through any node and retry; a schedule
//!   firing every second; workers that register with the leader (following leader hints),
//!   reconcile, refuse attempt ids they have seen or fenced by an older term (as
//!   `baton worker` does), "run" attempts for a few ticks, report results until acknowledged,
//!   and append every attempt they start to an effect ledger.
//!
//! Time is logical: one tick is 100 ms (the real node's Raft tick); every `Command.at_ms` comes
//! from the simulated clock of the node that stamps it. Everything random, raft-rs's election
//! timeouts included, derives from the seed, so a seed replays exactly:
//! `BATON_SIM_SEED=N cargo test -p baton-scheduler --test it sim::replay -- --nocapture`
//! (add `BATON_SIM_TRACE=1` for a log of faults, elections, sessions and attempts;
//! `BATON_SIM_SEEDS=N` runs `seeds` over N seeds for a longer soak).
//!
//! The checker holds the contract of design §3 over the whole history: no two nodes apply
//! different entries at one index, at most one leader per term, every acknowledged `StartRun`
//! key maps to exactly one run, every schedule tick has exactly one run or lies in a `missed`
//! record, no attempt id is started twice, no step has two succeeded attempts (and a step that
//! is not idempotent is never started twice), and after healing the cluster makes progress and
//! every node ends with the same state. A broken invariant fails the seed.
//!
//! After healing it also checks liveness: every worker is connected to the leader, and every
//! active attempt is known to its worker or will be declared lost. Those findings are printed
//! (`sim: liveness: ...`) and fail the run (`BATON_SIM_STRICT=0` only prints them).
//!
//! Not modelled: membership changes, ReadIndex reads, output streams, attempt timeouts, and the
//! seconds a real session takes to notice a cut network (here both ends notice at once).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use baton_core::command::{Command, Op};
use baton_core::run::{AttemptState, RunState, StepState, Trigger};
use baton_core::{Runbook, Schedule};
use baton_scheduler::engine::{Engine, ResultRoute, View, WorkerSlot, holds, reconcile, route_result, to_stop};
use baton_scheduler::fsm::{Assignment, Effect, Reply, State};
use baton_scheduler::store::{MemStore, Persist, RaftStorage, Store};
use raft::StateRole;
use raft::prelude::*;

/// Seeds per suite run (`BATON_SIM_SEEDS` overrides it, for a longer soak).
const SEEDS: u64 = 64;
/// The seed `replay` runs when `BATON_SIM_SEED` is not set.
const DEFAULT_SEED: u64 = 7;

/// One tick of logical time (the real node's Raft tick).
const TICK_MS: i64 = 100;
/// The simulated clock starts here (unix ms), on a whole second.
const EPOCH_MS: i64 = 1_700_000_000_000;
/// Ticks of workload under faults, then of workload after healing.
const CHAOS_TICKS: i64 = 320;
const SETTLE_TICKS: i64 = 80;
/// Upper bound on each wait of the final phase (progress, acknowledgements, convergence).
const BOUND_TICKS: i64 = 400;
/// `NodeConfig::election_ticks`; the heartbeat is a quarter of it, as `start_node` sets it.
const ELECTION_TICKS: usize = 10;
/// A small `snapshot_every`, so logs are compacted and snapshots are sent to lagging nodes.
const SNAPSHOT_EVERY: u64 = 40;
/// `api::REQUEST_TIMEOUT`: how long the API retries a proposal.
const REQUEST_TICKS: i64 = 100;
const WORKERS: usize = 2;
const WORKER_CAPACITY: u32 = 2;
/// How long a worker may stay away before its attempts are lost (the server's `worker_grace`).
const WORKER_GRACE_MS: i64 = 3_000;
/// The worker re-sends an unacknowledged result after this long (`RESEND_AFTER`).
const RESEND_AFTER_TICKS: i64 = 50;
/// The worker's reconnect backoff: 100 ms doubling to 5 s.
const MAX_BACKOFF_TICKS: i64 = 50;
const CLIENTS: usize = 3;
const SCHEDULE: &str = "every-second";

const RUNBOOK_YAML: &str = r#"
name: sim
params:
  n: { type: int, default: 0 }
steps:
  - id: one
    action: exec
    with: { command: ["echo", "one", "{{ params.n }}"] }
  - id: two
    action: exec
    idempotent: true
    with: { command: ["echo", "two"] }
"#;

const SCHEDULE_YAML: &str = "schedule: every-second\nrunbook: sim\ncron: \"* * * * * *\"\nparams: { n: -1 }\n";

// ---------------------------------------------------------------------------------------------
// Tests

/// Runs the seed range (split over the available cores) and prints one line of figures.
#[test]
fn seeds() {
    let started = Instant::now();
    let seeds = std::env::var("BATON_SIM_SEEDS").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(SEEDS);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 4) as u64;
    let results: Vec<(u64, Result<Outcome, String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    (0..seeds).filter(|seed| seed % threads == t).map(|seed| (seed, run_seed(seed))).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = handles.into_iter().flat_map(|h| h.join().expect("a seed thread panicked")).collect();
        all.sort_by_key(|(seed, _)| *seed);
        all
    });
    let mut total = Stats::default();
    let mut failures = Vec::new();
    let mut liveness = Vec::new();
    let mut five = 0;
    for (seed, result) in &results {
        match result {
            Ok(o) => {
                total.add(&o.stats);
                five += u64::from(o.nodes == 5);
                liveness.extend(o.liveness.iter().map(|l| format!("seed {seed}: {l}")));
            }
            Err(e) => failures.push(format!("seed {seed}: {e}")),
        }
    }
    println!(
        "sim: seeds={seeds} (5 nodes: {five}) {} failed_seeds={} in {:.1}s",
        total.summary(),
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    for l in liveness.iter().take(10) {
        println!("sim: liveness: {l}");
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed; replay one with BATON_SIM_SEED=<seed> cargo test -p baton-scheduler --test it \
         sim::replay -- --nocapture\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Replays `BATON_SIM_SEED` (or a fixed seed) twice and checks that the runs are identical.
#[test]
fn replay() {
    let seed = match std::env::var("BATON_SIM_SEED") {
        Ok(s) => s.trim().parse().unwrap_or_else(|_| panic!("BATON_SIM_SEED={s:?} is not a number")),
        Err(_) => DEFAULT_SEED,
    };
    let first = run_seed(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
    println!("sim: seed={seed} nodes={} {}", first.nodes, first.stats.summary());
    for l in &first.liveness {
        println!("sim: liveness: {l}");
    }
    let second = run_seed(seed).unwrap_or_else(|e| panic!("seed {seed} (second run): {e}"));
    assert_eq!(first.fingerprint, second.fingerprint, "seed {seed}: two runs of one seed differ: not deterministic");
}

/// Runs one seed; a panic anywhere inside (raft-rs, the store, apply) becomes an error too.
fn run_seed(seed: u64) -> Result<Outcome, String> {
    match catch_unwind(AssertUnwindSafe(|| Sim::new(seed).run())) {
        Ok(result) => result,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(format!("panicked: {msg}"))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Randomness

/// SplitMix64: small, fast, and the same on every platform.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// In `[lo, hi)`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo) as u64) as i64
    }

    fn chance(&mut self, per_mille: u64) -> bool {
        self.below(1000) < per_mille
    }

    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

// ---------------------------------------------------------------------------------------------
// Figures and the checker's record

/// Counters, summed over seeds and printed as `name=value`.
macro_rules! stats {
    ($($field:ident),* $(,)?) => {
        #[derive(Debug, Default, Clone)]
        struct Stats {
            $($field: u64),*
        }

        impl Stats {
            fn add(&mut self, o: &Stats) {
                $(self.$field += o.$field;)*
            }

            fn summary(&self) -> String {
                let mut s = String::new();
                $(let _ = write!(s, "{}={} ", stringify!($field), self.$field);)*
                s.trim_end().to_string()
            }
        }
    };
}

stats!(
    ticks,
    events,
    msgs_sent,
    msgs_dropped,
    msgs_duplicated,
    snapshots_sent,
    snapshots_dropped_unreported,
    proposals,
    forwarded,
    reproposed,
    requests_failed,
    commits,
    elections,
    crashes,
    partitions,
    worker_faults,
    acked_keys,
    runs,
    runs_succeeded,
    runs_needing_attention,
    runs_cancelled,
    ticks_fired,
    ticks_missed,
    dispatched,
    dispatch_suppressed,
    attempts_started,
    refused_seen,
    refused_fence,
    attempts_lost,
    taken_back,
    results_behind,
    lost_after_finishing,
    worker_ticks_off_leader,
    liveness_findings,
    anomalies,
);

/// One attempt a worker started (the effect ledger).
#[derive(Debug, Clone)]
struct LedgerEntry {
    attempt_id: u64,
    worker: String,
    run_id: String,
    step_id: String,
    tick: i64,
}

#[derive(Default)]
struct Checker {
    anomalies: Vec<String>,
    /// Every applied index: (term, hash of the data, first node that applied it).
    log: BTreeMap<u64, (u64, u64, u64)>,
    /// The leader of each term.
    leaders: BTreeMap<u64, u64>,
    /// Idempotency key -> the run id the client was answered with.
    acks: BTreeMap<String, String>,
    /// Every key a client ever sent.
    keys: BTreeSet<String>,
    ledger: Vec<LedgerEntry>,
    /// Attempts whose worker finished them (and reported a result).
    finished: BTreeSet<u64>,
    /// `at_ms` of the `ApplySchedule` that created the schedule.
    schedule_applied_at: Option<i64>,
}

impl Checker {
    fn anomaly(&mut self, what: String) {
        if self.anomalies.len() < 20 {
            self.anomalies.push(what);
        }
    }

    fn applied(&mut self, node: u64, prev: u64, e: &Entry) {
        if e.index != prev + 1 {
            self.anomaly(format!("node {node} applied index {} right after {prev}", e.index));
        }
        let hash = fnv(&e.data);
        match self.log.get(&e.index) {
            Some(&(term, h, first)) if (term, h) != (e.term, hash) => self.anomaly(format!(
                "raft safety: node {node} applied (term {}, hash {hash:x}) at index {} but node {first} applied \
                 (term {term}, hash {h:x})",
                e.term, e.index
            )),
            Some(_) => {}
            None => {
                self.log.insert(e.index, (e.term, hash, node));
            }
        }
    }

    fn leader(&mut self, term: u64, node: u64) {
        match self.leaders.insert(term, node) {
            Some(other) if other != node => {
                self.anomaly(format!("raft safety: nodes {other} and {node} both led term {term}"))
            }
            _ => {}
        }
    }

    fn ack(&mut self, key: &str, run_id: &str) {
        match self.acks.get(key) {
            Some(earlier) if earlier != run_id => self.anomaly(format!(
                "key {key}: acknowledged with run {run_id} after it was acknowledged with run {earlier}"
            )),
            Some(_) => {}
            None => {
                self.acks.insert(key.to_string(), run_id.to_string());
            }
        }
    }
}

struct Outcome {
    nodes: usize,
    stats: Stats,
    liveness: Vec<String>,
    fingerprint: u64,
}

// ---------------------------------------------------------------------------------------------
// A node: the Ready loop of `raft/node.rs`, synchronous

/// Who waits for a proposal's reply.
#[derive(Debug, Clone, Copy)]
enum Waiter {
    /// An API request (`Api::propose`), by id.
    Call(u64),
    /// Engine decisions: nobody answers them.
    Background,
}

/// A proposal's outcome: the reply and the index it was applied at, or why it was dropped.
type Applied = Result<(Reply, u64), String>;

/// What one `on_ready` produced, routed by the simulation afterwards.
#[derive(Default)]
struct Out {
    msgs: Vec<Message>,
    effects: Vec<Effect>,
    replies: Vec<(Waiter, Applied)>,
    dispatch_suppressed: u64,
    became_leader: bool,
}

/// A node's worker sessions, as `dispatch::Workers` keeps them.
#[derive(Default)]
struct Registry {
    /// Worker id -> (session number, capacity, applied index when it registered, boot id).
    sessions: BTreeMap<String, (u64, u32, u64, u64)>,
    /// Worker id -> attempts it reported (running or with a result) when it registered.
    reported: BTreeMap<String, Vec<u64>>,
    order: Vec<String>,
    next_no: u64,
    departed: HashMap<String, i64>,
}

impl Registry {
    fn register(&mut self, id: &str, boot: u64, capacity: u32, applied_index: u64, reported: Vec<u64>) -> u64 {
        self.departed.remove(id);
        self.reported.insert(id.to_string(), reported);
        self.next_no += 1;
        self.sessions.insert(id.to_string(), (self.next_no, capacity, applied_index, boot));
        self.order.retain(|w| w != id);
        self.order.push(id.to_string());
        self.next_no
    }

    fn unregister(&mut self, id: &str, no: u64, now_ms: i64) {
        if self.sessions.get(id).is_some_and(|s| s.0 == no) {
            self.sessions.remove(id);
            self.order.retain(|w| w != id);
            self.departed.insert(id.to_string(), now_ms);
        }
    }

    fn slots(&self) -> Vec<WorkerSlot> {
        self.order
            .iter()
            .filter_map(|id| {
                self.sessions.get(id).map(|s| WorkerSlot {
                    id: id.clone(),
                    capacity: s.1,
                    boot: s.3,
                    ..Default::default()
                })
            })
            .collect()
    }
}

/// A running node: everything a crash loses.
struct Live {
    id: u64,
    raw: RawNode<RaftStorage>,
    store: Arc<dyn Store>,
    state: State,
    boot: u64,
    next_proposal: u64,
    pending: BTreeMap<u64, Waiter>,
    /// Entries up to here were committed before this start: their assignments are not sent.
    replay_until: u64,
    conf_state: ConfState,
    last_snapshot: u64,
    /// The checker's view: the last index applied (or installed by a snapshot).
    last_applied: u64,
    role: StateRole,
    leader_epoch: u64,
    engine: Engine,
    engine_epoch: u64,
    leader_since_ms: i64,
    registry: Registry,
}

impl Live {
    /// As `start_node`: state from the store's snapshot, `applied` = snapshot index; raft-rs
    /// hands the committed entries after it back to be applied again.
    fn start(id: u64, store: Arc<dyn Store>, voters: &[u64], election: usize, boot: u64, log: &slog::Logger) -> Live {
        let mut initial = store.initial_state().expect("initial state");
        if initial.conf_state.voters.is_empty() {
            // First start: the configured voters form a new cluster.
            store.set_conf_state(&ConfState { voters: voters.to_vec(), ..Default::default() }).expect("conf state");
            initial = store.initial_state().expect("initial state");
        }
        let snapshot = store.snapshot().expect("snapshot");
        let state = if snapshot.data.is_empty() {
            State::default()
        } else {
            State::from_json(&snapshot.data).expect("the state-machine snapshot decodes")
        };
        let snap_index = snapshot.get_metadata().index;
        let config = Config {
            id,
            election_tick: ELECTION_TICKS,
            heartbeat_tick: (ELECTION_TICKS / 4).max(1),
            // raft-rs draws each election timeout from thread_rng() in [min, max): a range of
            // one value, drawn from the seed, keeps the run deterministic.
            min_election_tick: election,
            max_election_tick: election + 1,
            applied: snap_index,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        config.validate().expect("valid raft config");
        let raw = RawNode::new(&config, RaftStorage(store.clone()), log).expect("raw node");
        Live {
            id,
            raw,
            store,
            state,
            boot,
            next_proposal: 1,
            pending: BTreeMap::new(),
            replay_until: initial.hard_state.commit,
            conf_state: initial.conf_state,
            last_snapshot: snap_index,
            last_applied: snap_index,
            role: StateRole::Follower,
            leader_epoch: 0,
            engine: Engine::new(),
            engine_epoch: 0,
            leader_since_ms: 0,
            registry: Registry::default(),
        }
    }

    fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// `Loop::propose`.
    fn propose(&mut self, cmd: &Command, waiter: Waiter) -> Result<(), String> {
        if !self.is_leader() {
            return Err(format!("not the leader (leader: {})", self.raw.raft.leader_id));
        }
        let id = self.next_proposal;
        self.next_proposal += 1;
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.id.to_be_bytes());
        ctx.extend_from_slice(&self.boot.to_be_bytes());
        ctx.extend_from_slice(&id.to_be_bytes());
        self.raw.propose(ctx, cmd.encode()).map_err(|e| e.to_string())?;
        self.pending.insert(id, waiter);
        Ok(())
    }

    /// One Ready, in the order of `Loop::on_ready`.
    fn on_ready(&mut self, out: &mut Out, check: &mut Checker) {
        let mut ready = self.raw.ready();
        // a. Messages that need no persistence.
        out.msgs.extend(ready.take_messages());
        // b. A snapshot from the leader replaces the state machine.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(&snap);
        }
        // c. Persist entries and hard state before anything depends on them.
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            self.store
                .persist(Persist { entries: ready.entries(), hard_state: hs.as_ref(), snapshot: None })
                .unwrap_or_else(|e| panic!("node {}: persist failed: {e}", self.id));
        }
        // d. Apply committed entries.
        let committed = ready.take_committed_entries();
        self.apply(committed, out, check);
        // e. Messages that must follow persistence.
        out.msgs.extend(ready.take_persisted_messages());
        // f. Advance; the light ready.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit).unwrap_or_else(|e| panic!("node {}: set_commit failed: {e}", self.id));
        }
        out.msgs.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed, out, check);
        self.raw.advance_apply();
        self.publish_status(out, check);
        self.maybe_snapshot();
    }

    fn install_snapshot(&mut self, snap: &Snapshot) {
        self.store
            .persist(Persist { entries: &[], hard_state: None, snapshot: Some(snap) })
            .unwrap_or_else(|e| panic!("node {}: installing a snapshot failed: {e}", self.id));
        self.state = State::from_json(&snap.data).expect("a leader snapshot decodes");
        self.conf_state = snap.get_metadata().get_conf_state().clone();
        self.last_snapshot = snap.get_metadata().index;
        self.last_applied = snap.get_metadata().index;
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Out, check: &mut Checker) {
        for entry in entries {
            check.applied(self.id, self.last_applied, &entry);
            self.last_applied = entry.index;
            if entry.get_entry_type() != EntryType::EntryNormal {
                panic!("node {}: unexpected membership change at index {}", self.id, entry.index);
            }
            let reply = if entry.data.is_empty() {
                self.state.applied_index = entry.index;
                Reply::Done
            } else {
                match Command::decode(&entry.data) {
                    Ok(cmd) => {
                        let at_ms = cmd.at_ms;
                        let is_schedule = matches!(cmd.op, Op::ApplySchedule { .. });
                        let (reply, fx) = self.state.apply(entry.index, entry.term, cmd);
                        if is_schedule
                            && matches!(reply, Reply::Applied { changed: true, .. })
                            && check.schedule_applied_at.is_none()
                        {
                            check.schedule_applied_at = Some(at_ms);
                        }
                        let replayed = entry.index <= self.replay_until;
                        for e in fx {
                            if replayed && matches!(e, Effect::Dispatch(_)) {
                                out.dispatch_suppressed += 1;
                                continue;
                            }
                            out.effects.push(e);
                        }
                        reply
                    }
                    Err(e) => {
                        self.state.applied_index = entry.index;
                        Reply::Rejected(format!("undecodable command at index {}: {e}", entry.index))
                    }
                }
            };
            if let Some(waiter) = self.own_proposal(&entry.context) {
                out.replies.push((waiter, Ok((reply, entry.index))));
            }
        }
    }

    fn own_proposal(&mut self, ctx: &[u8]) -> Option<Waiter> {
        if ctx.len() != 24 || ctx[..8] != self.id.to_be_bytes() || ctx[8..16] != self.boot.to_be_bytes() {
            return None;
        }
        let id = u64::from_be_bytes(ctx[16..].try_into().ok()?);
        self.pending.remove(&id)
    }

    fn publish_status(&mut self, out: &mut Out, check: &mut Checker) {
        let now = self.raw.raft.state;
        if now == StateRole::Leader {
            check.leader(self.raw.raft.term, self.id);
            if self.role != StateRole::Leader {
                self.leader_epoch += 1;
                out.became_leader = true;
            }
        }
        if now != StateRole::Leader && self.role == StateRole::Leader {
            // Proposals still waiting may never commit under another leader.
            let hint = self.raw.raft.leader_id;
            for (_, w) in std::mem::take(&mut self.pending) {
                out.replies.push((w, Err(format!("not the leader any more (leader: {hint})"))));
            }
        }
        self.role = now;
    }

    fn maybe_snapshot(&mut self) {
        let applied = self.raw.raft.raft_log.applied;
        if applied <= self.last_snapshot || applied < self.last_snapshot + SNAPSHOT_EVERY {
            return;
        }
        let data = serde_json::to_vec(&self.state).expect("the state serializes");
        self.store
            .save_snapshot(data, applied, &self.conf_state)
            .unwrap_or_else(|e| panic!("node {}: save_snapshot at {applied} failed: {e}", self.id));
        self.last_snapshot = applied;
    }
}

/// A node's durable part (its store) and, while it runs, its volatile part.
struct SimNode {
    id: u64,
    store: Arc<MemStore>,
    /// Its clock's offset from simulated time.
    skew_ms: i64,
    incarnation: u64,
    live: Option<Live>,
    /// Its Ready loop handles nothing before this tick (a slow disk, a starved CPU): Raft
    /// still steps messages, so it can become leader and take workers while its own entries
    /// wait, and its state lags what the cluster committed.
    stalled_until: i64,
}

// ---------------------------------------------------------------------------------------------
// API requests, workers and clients

/// `Api::propose` in flight: proposed on the node (or forwarded to the leader), re-proposed
/// after a loss until the deadline; a forwarded write answers once the node applied it too.
struct Call {
    origin: usize,
    origin_incarnation: u64,
    cmd: Command,
    deadline: i64,
    caller: Caller,
    stage: Stage,
}

#[derive(Debug, Clone)]
enum Caller {
    Client {
        client: usize,
        kind: ReqKind,
    },
    /// `propose_report`: nobody waits for the answer.
    Worker,
}

#[derive(Debug, Clone)]
enum Stage {
    Idle { retry_at: i64 },
    Proposed { node: usize },
    Applying { reply: Reply, index: u64, until: i64 },
}

#[derive(Debug, Clone)]
enum ToWorker {
    Assign(Assignment),
    Cancel(u64),
    Ack(u64),
}

struct Running {
    started_tick: i64,
    finish_tick: i64,
    reported_start: bool,
    succeeds: bool,
}

/// `baton worker`'s session logic, without processes: an attempt "runs" for a few ticks.
struct SimWorker {
    id: String,
    /// Random per (re)start, as `baton worker`'s boot id.
    boot: u64,
    up: bool,
    isolated: bool,
    seen: BTreeSet<u64>,
    max_term: u64,
    running: BTreeMap<u64, Running>,
    /// Results until acknowledged, with the tick they were last sent.
    unacked: BTreeMap<u64, (Op, i64)>,
    /// (node index, session number).
    session: Option<(usize, u64)>,
    next_server: usize,
    backoff: i64,
    reconnect_at: i64,
    inbox: Vec<(usize, u64, ToWorker)>,
}

impl SimWorker {
    fn new(id: String, boot: u64, first_server: usize) -> SimWorker {
        SimWorker {
            id,
            boot,
            up: true,
            isolated: false,
            seen: BTreeSet::new(),
            max_term: 0,
            running: BTreeMap::new(),
            unacked: BTreeMap::new(),
            session: None,
            next_server: first_server,
            backoff: 1,
            reconnect_at: 0,
            inbox: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum ReqKind {
    Runbook,
    Schedule,
    Start { key: String },
}

struct Req {
    kind: ReqKind,
    in_flight: bool,
    retry_at: i64,
}

struct Client {
    /// The node it sends to.
    target: usize,
    next_key: u64,
    cur: Option<Req>,
    /// Client 0 applies the runbook and the schedule before any run starts.
    setup: Vec<ReqKind>,
}

// ---------------------------------------------------------------------------------------------
// The simulation

struct Envelope {
    from: usize,
    dropped: bool,
    msg: Message,
}

#[derive(Debug, Clone)]
enum FaultKind {
    Cut(Vec<(usize, usize)>),
    NodeDown(usize),
    WorkerDown(usize),
    WorkerIsolated(usize),
}

struct Fault {
    kind: FaultKind,
    until: i64,
}

/// Per-seed network behaviour, in per mille.
struct NetCfg {
    drop: u64,
    duplicate: u64,
    slow: u64,
    tick_skip: u64,
    stall: u64,
}

struct Sim {
    rng: Rng,
    logger: slog::Logger,
    trace: bool,
    runbook: Runbook,
    schedule: Schedule,
    /// Simulated time since the start (ms) and the current tick.
    now: i64,
    tick: i64,
    nodes: Vec<SimNode>,
    voters: Vec<u64>,
    net: BTreeMap<(i64, u64), Envelope>,
    net_seq: u64,
    net_cfg: NetCfg,
    cut: BTreeSet<(usize, usize)>,
    faults: Vec<Fault>,
    /// Armed by the nemesis: crash the leader just after it sends its next assignment (its
    /// followers may not know the commit yet, and the worker runs the step meanwhile).
    crash_after_dispatch: bool,
    /// The node to crash, and the tick to crash it at (once the worker has taken the
    /// assignment). Until then nothing it sends leaves, and what it sent that is still in
    /// flight is lost: a process killed right after an apply loses its peer queues, so its
    /// followers may never hear of that commit.
    crash_after: Option<(usize, i64)>,
    workers: Vec<SimWorker>,
    clients: Vec<Client>,
    calls: BTreeMap<u64, Call>,
    next_call: u64,
    workload_open: bool,
    frozen: bool,
    run_seq: u64,
    check: Checker,
    liveness: Vec<String>,
    stats: Stats,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = Rng(seed ^ 0x5EED_BA70_0000_0000);
        let n = if rng.chance(500) { 5 } else { 3 };
        let net_cfg = NetCfg {
            drop: rng.below(80),
            duplicate: rng.below(50),
            slow: rng.below(100),
            tick_skip: rng.below(60),
            stall: rng.below(15),
        };
        let nodes = (1..=n as u64)
            .map(|id| SimNode {
                id,
                store: Arc::new(MemStore::new()),
                skew_ms: rng.range(-150, 151),
                incarnation: 0,
                live: None,
                stalled_until: 0,
            })
            .collect();
        let workers =
            (0..WORKERS).map(|i| SimWorker::new(format!("w{}", i + 1), rng.next().max(1), rng.index(n))).collect();
        let clients = (0..CLIENTS)
            .map(|c| Client {
                target: rng.index(n),
                next_key: 0,
                cur: None,
                setup: if c == 0 { vec![ReqKind::Schedule, ReqKind::Runbook] } else { Vec::new() },
            })
            .collect();
        let mut sim = Sim {
            rng,
            logger: slog::Logger::root(slog::Discard, slog::o!()),
            trace: std::env::var_os("BATON_SIM_TRACE").is_some(),
            runbook: Runbook::parse("sim.yaml", RUNBOOK_YAML).expect("the runbook parses"),
            schedule: Schedule::parse("every-second.yaml", SCHEDULE_YAML).expect("the schedule parses"),
            now: 0,
            tick: 0,
            nodes,
            voters: (1..=n as u64).collect(),
            net: BTreeMap::new(),
            net_seq: 0,
            net_cfg,
            cut: BTreeSet::new(),
            faults: Vec::new(),
            crash_after_dispatch: false,
            crash_after: None,
            workers,
            clients,
            calls: BTreeMap::new(),
            next_call: 0,
            workload_open: false,
            frozen: false,
            run_seq: 0,
            check: Checker::default(),
            liveness: Vec::new(),
            stats: Stats::default(),
        };
        for i in 0..n {
            sim.start_node(i);
        }
        sim
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("t{:04} {}", self.tick, what());
        }
    }

    /// The whole scenario: setup and workload under faults, heal, progress, quiesce, check.
    fn run(mut self) -> Result<Outcome, String> {
        while self.tick < CHAOS_TICKS {
            self.step();
        }
        self.trace(|| "heal everything".into());
        self.heal_all();
        for _ in 0..SETTLE_TICKS {
            self.step();
        }
        // Progress after healing: a last trigger commits.
        self.workload_open = false;
        self.wait_for_client(0);
        let key = "final".to_string();
        self.check.keys.insert(key.clone());
        self.clients[0].cur = Some(Req { kind: ReqKind::Start { key: key.clone() }, in_flight: false, retry_at: 0 });
        let start = self.tick;
        while !self.check.acks.contains_key(&key) && self.tick - start < BOUND_TICKS {
            self.step();
        }
        if !self.check.acks.contains_key(&key) {
            self.check
                .anomaly(format!("no progress after healing: the final trigger did not commit in {BOUND_TICKS} ticks"));
        }
        for c in 1..CLIENTS {
            self.wait_for_client(c);
        }
        self.check_liveness();
        // Quiesce: nothing new is proposed; wait until every node applied the leader's log.
        self.frozen = true;
        let start = self.tick;
        while !self.converged() && self.tick - start < BOUND_TICKS {
            self.step();
        }
        self.check_final();
        if std::env::var("BATON_SIM_STRICT").map_or(true, |v| v != "0") {
            for l in self.liveness.clone() {
                self.check.anomaly(format!("liveness: {l}"));
            }
        }
        self.stats.anomalies = self.check.anomalies.len() as u64;
        self.stats.liveness_findings = self.liveness.len() as u64;
        let fingerprint = self.fingerprint();
        if self.check.anomalies.is_empty() {
            Ok(Outcome { nodes: self.nodes.len(), stats: self.stats, liveness: self.liveness, fingerprint })
        } else {
            Err(format!(
                "{} nodes, net {{drop {}, dup {}, slow {}}}‰:\n  {}",
                self.nodes.len(),
                self.net_cfg.drop,
                self.net_cfg.duplicate,
                self.net_cfg.slow,
                self.check.anomalies.join("\n  ")
            ))
        }
    }

    fn wait_for_client(&mut self, c: usize) {
        let start = self.tick;
        while self.clients[c].cur.is_some() && self.tick - start < BOUND_TICKS {
            self.step();
        }
        if let Some(req) = &self.clients[c].cur {
            let what = format!("client {c}: {:?} not acknowledged {BOUND_TICKS} ticks after healing", req.kind);
            self.check.anomaly(what);
        }
    }

    /// One tick: faults, Raft clocks, engines, workers, clients, requests, then the network.
    fn step(&mut self) {
        self.now = self.tick * TICK_MS;
        self.nemesis();
        for n in 0..self.nodes.len() {
            let skip = self.rng.chance(self.net_cfg.tick_skip);
            if self.rng.chance(self.net_cfg.stall) {
                self.nodes[n].stalled_until = self.tick + self.rng.range(2, 12);
            }
            if let Some(live) = self.nodes[n].live.as_mut() {
                if !skip {
                    live.raw.tick();
                }
                self.drive(n);
            }
        }
        if !self.frozen {
            self.engines();
            self.workers_step();
            self.clients_step();
            self.calls_step();
        }
        self.deliver_until((self.tick + 1) * TICK_MS);
        self.tick += 1;
        self.stats.ticks += 1;
    }

    /// A node's wall clock (unix ms).
    fn clock(&self, n: usize) -> i64 {
        EPOCH_MS + self.now + self.nodes[n].skew_ms
    }

    fn start_node(&mut self, n: usize) {
        let election = ELECTION_TICKS + self.rng.below(ELECTION_TICKS as u64) as usize;
        let boot = self.rng.next();
        let node = &mut self.nodes[n];
        node.incarnation += 1;
        let store: Arc<dyn Store> = node.store.clone();
        node.live = Some(Live::start(node.id, store, &self.voters, election, boot, &self.logger));
    }

    fn crash_node(&mut self, n: usize) {
        let Some(live) = self.nodes[n].live.take() else { return };
        self.stats.crashes += 1;
        self.trace(|| format!("crash node {}", n + 1));
        for (_, w) in live.pending {
            self.on_reply(w, n, Err("the node went away".into()));
        }
        for w in 0..self.workers.len() {
            if self.workers[w].session.is_some_and(|(node, _)| node == n) {
                self.workers[w].session = None;
                self.workers[w].reconnect_at = self.tick + self.workers[w].backoff;
            }
        }
    }

    /// Handles everything node `n` has ready, and routes what it produced.
    fn drive(&mut self, n: usize) {
        loop {
            if self.nodes[n].stalled_until > self.tick {
                return;
            }
            let mut out = Out::default();
            {
                let Some(live) = self.nodes[n].live.as_mut() else { return };
                if !live.raw.has_ready() {
                    return;
                }
                live.on_ready(&mut out, &mut self.check);
            }
            self.route(n, out);
        }
    }

    fn route(&mut self, n: usize, out: Out) {
        // `Workers::close_all`: a node that does not lead keeps no worker sessions.
        if self.nodes[n].live.as_ref().is_some_and(|l| !l.is_leader()) {
            for w in 0..self.workers.len() {
                if self.workers[w].session.is_some_and(|(node, _)| node == n) {
                    self.trace(|| format!("node {} no longer leads: closing the session of worker {}", n + 1, w));
                    self.close_session(w);
                }
            }
        }
        self.stats.dispatch_suppressed += out.dispatch_suppressed;
        if out.became_leader {
            let term = self.nodes[n].live.as_ref().map_or(0, |l| l.raw.raft.term);
            self.trace(|| format!("node {} leads term {term}", n + 1));
            // A new leader whose next Ready is slow (a slow disk at that moment): it leads, and
            // takes workers, before it has applied what the previous term committed.
            if self.rng.chance(self.net_cfg.stall * 20) {
                self.nodes[n].stalled_until = self.tick + self.rng.range(1, 6);
            }
        }
        self.send(n, out.msgs);
        let status = self.nodes[n].live.as_ref().map(|l| (l.is_leader(), l.raw.raft.term));
        for effect in out.effects {
            self.effect(n, status, effect);
        }
        for (waiter, result) in out.replies {
            self.on_reply(waiter, n, result);
        }
    }

    /// `dispatch::run_effects` on node `n`, whose (leader?, term) is `status`.
    fn effect(&mut self, n: usize, status: Option<(bool, u64)>, effect: Effect) {
        let Some((true, term)) = status else { return };
        let (worker, msg, committed_at) = match effect {
            Effect::RunChanged(_) | Effect::Observe(_) => return,
            // Only assignments this leader made in its own term.
            Effect::Dispatch(a) if a.fence.term == term => {
                (a.worker.clone(), ToWorker::Assign(a.clone()), Some(a.attempt_id))
            }
            Effect::Dispatch(a) => {
                self.trace(|| {
                    format!("node {} does not send attempt {} of term {}", n + 1, a.attempt_id, a.fence.term)
                });
                // `Workers::never_received`: its worker registered here before it was applied
                // and did not report it: taken back if that is the process it was assigned to,
                // declared lost otherwise (as `run_effects` does).
                let never = self.nodes[n].live.as_ref().and_then(|live| {
                    live.registry
                        .sessions
                        .get(&a.worker)
                        .filter(|s| {
                            s.2 < a.attempt_id
                                && !live.registry.reported.get(&a.worker).is_some_and(|r| r.contains(&a.attempt_id))
                        })
                        .map(|s| s.3)
                });
                if let Some(boot) = never.filter(|_| a.fence.term < term) {
                    let reason = format!("assigned in term {} and never delivered", a.fence.term);
                    let op = if boot == a.worker_boot {
                        self.stats.taken_back += 1;
                        Op::AttemptUndelivered { attempt_id: a.attempt_id, reason }
                    } else {
                        Op::AttemptLost { attempt_id: a.attempt_id, reason }
                    };
                    self.call(n, op, Caller::Worker);
                }
                return;
            }
            Effect::CancelAttempt { worker, attempt_id } => (worker, ToWorker::Cancel(attempt_id), None),
            Effect::AckResult { worker, attempt_id } => (worker, ToWorker::Ack(attempt_id), None),
        };
        let Some(live) = self.nodes[n].live.as_ref() else { return };
        // `Workers::send`: a session registered after the assignment was committed never gets it.
        let Some(&(no, _, registered_at, _)) = live.registry.sessions.get(&worker) else { return };
        if committed_at.is_some_and(|i| i <= registered_at) {
            return;
        }
        if let Some(id) = committed_at {
            self.stats.dispatched += 1;
            self.trace(|| format!("node {} sends attempt {id} to {worker}", n + 1));
        }
        if let Some(w) = self.workers.iter_mut().find(|w| w.id == worker) {
            w.inbox.push((n, no, msg));
            if committed_at.is_some() && std::mem::take(&mut self.crash_after_dispatch) {
                self.crash_after = Some((n, self.tick + 3));
                self.net.retain(|_, e| e.from != n);
            }
        }
    }

    // -- network ---------------------------------------------------------------------------

    /// `PeerTransport::send`: a peer it cannot reach is reported unreachable and what was queued
    /// for it is dropped (a snapshot without a report); a snapshot handed to a live stream is
    /// reported sent, whether or not it arrives.
    fn send(&mut self, from: usize, msgs: Vec<Message>) {
        for msg in msgs {
            self.stats.msgs_sent += 1;
            let to = msg.to as usize - 1;
            let is_snapshot = msg.get_msg_type() == MessageType::MsgSnapshot;
            self.stats.snapshots_sent += u64::from(is_snapshot);
            let reachable = self.nodes[to].live.is_some()
                && !self.cut.contains(&(from, to))
                && self.crash_after.is_none_or(|(c, _)| c != from);
            if !reachable {
                self.stats.msgs_dropped += 1;
                if let Some(live) = self.nodes[from].live.as_mut() {
                    live.raw.report_unreachable(msg.to);
                    if is_snapshot {
                        // The sender task drains its queue after a failed connect and reports a
                        // dropped snapshot as failed, so raft-rs sends another.
                        live.raw.report_snapshot(msg.to, raft::SnapshotStatus::Failure);
                        self.trace(|| format!("snapshot {}->{} dropped and reported", from + 1, to + 1));
                    }
                }
                continue;
            }
            if is_snapshot && let Some(live) = self.nodes[from].live.as_mut() {
                live.raw.report_snapshot(msg.to, SnapshotStatus::Finish);
            }
            let copies = if self.rng.chance(self.net_cfg.duplicate) { 2 } else { 1 };
            self.stats.msgs_duplicated += copies - 1;
            for _ in 0..copies {
                let dropped = self.rng.chance(self.net_cfg.drop);
                let delay =
                    if self.rng.chance(self.net_cfg.slow) { self.rng.range(20, 400) } else { self.rng.range(1, 12) };
                self.net_seq += 1;
                self.net.insert((self.now + delay, self.net_seq), Envelope { from, dropped, msg: msg.clone() });
            }
        }
    }

    fn deliver_until(&mut self, end: i64) {
        while let Some(entry) = self.net.first_entry() {
            if entry.key().0 >= end {
                break;
            }
            let ((at, _), env) = entry.remove_entry();
            self.now = at;
            self.stats.events += 1;
            let to = env.msg.to as usize - 1;
            if env.dropped || self.nodes[to].live.is_none() || self.cut.contains(&(env.from, to)) {
                self.stats.msgs_dropped += 1;
                continue;
            }
            if let Some(live) = self.nodes[to].live.as_mut() {
                // Stale or unknown-peer messages are refused by raft-rs; the real loop logs them.
                let _ = live.raw.step(env.msg);
            }
            self.drive(to);
        }
        self.now = end;
    }

    // -- nemesis ---------------------------------------------------------------------------

    fn nemesis(&mut self) {
        let tick = self.tick;
        if let Some((n, at)) = self.crash_after
            && at <= tick
        {
            self.crash_after = None;
            if self.nodes[n].live.as_ref().is_some_and(Live::is_leader) {
                self.crash_node(n);
                let until = tick + self.rng.range(10, 80);
                self.trace(|| format!("fault until t{until}: crash node {} just after it sent an assignment", n + 1));
                self.faults.push(Fault { kind: FaultKind::NodeDown(n), until });
            }
        }
        let (expired, active): (Vec<Fault>, Vec<Fault>) =
            std::mem::take(&mut self.faults).into_iter().partition(|f| f.until <= tick);
        self.faults = active;
        for f in expired {
            self.heal(f.kind);
        }
        let setup_done = self.clients[0].setup.is_empty() && self.clients[0].cur.is_none();
        if tick < CHAOS_TICKS && setup_done && self.faults.len() < 2 && self.rng.chance(45) {
            self.new_fault();
        }
        self.cut = self
            .faults
            .iter()
            .filter_map(|f| match &f.kind {
                FaultKind::Cut(links) => Some(links.iter().copied()),
                _ => None,
            })
            .flatten()
            .collect();
    }

    fn leader_index(&self) -> Option<usize> {
        self.nodes.iter().position(|n| n.live.as_ref().is_some_and(Live::is_leader))
    }

    fn new_fault(&mut self) {
        let n = self.nodes.len();
        let until = self.tick + self.rng.range(10, 80);
        let leader = self.leader_index().unwrap_or_else(|| self.rng.index(n));
        let kind = match self.rng.below(100) {
            // Isolate the leader, both ways.
            0..20 => FaultKind::Cut((0..n).filter(|&o| o != leader).flat_map(|o| [(leader, o), (o, leader)]).collect()),
            // Split into a minority and a majority.
            20..40 => {
                let mut order: Vec<usize> = (0..n).collect();
                for i in (1..n).rev() {
                    order.swap(i, self.rng.index(i + 1));
                }
                let minority = 1 + self.rng.index((n - 1) / 2);
                let (a, b) = order.split_at(minority);
                FaultKind::Cut(a.iter().flat_map(|&x| b.iter().flat_map(move |&y| [(x, y), (y, x)])).collect())
            }
            // One way: the leader cannot send, or cannot hear.
            40..55 => {
                let outbound = self.rng.chance(500);
                FaultKind::Cut(
                    (0..n).filter(|&o| o != leader).map(|o| if outbound { (leader, o) } else { (o, leader) }).collect(),
                )
            }
            // Crash the leader just after it sends an assignment.
            55..62 => {
                self.crash_after_dispatch = true;
                return;
            }
            // Crash a node (the leader half of the time), at most a bare majority down.
            62..80 => {
                let down = self.nodes.iter().filter(|x| x.live.is_none()).count();
                let target = if self.rng.chance(500) { leader } else { self.rng.index(n) };
                if down > n / 2 || self.nodes[target].live.is_none() {
                    return;
                }
                self.crash_node(target);
                FaultKind::NodeDown(target)
            }
            80..90 => {
                let w = self.rng.index(self.workers.len());
                if !self.workers[w].up {
                    return;
                }
                self.crash_worker(w);
                FaultKind::WorkerDown(w)
            }
            _ => {
                let w = self.rng.index(self.workers.len());
                self.workers[w].isolated = true;
                self.close_session(w);
                self.stats.worker_faults += 1;
                FaultKind::WorkerIsolated(w)
            }
        };
        if matches!(kind, FaultKind::Cut(_)) {
            self.stats.partitions += 1;
        }
        self.trace(|| format!("fault until t{until}: {}", describe_fault(&kind)));
        self.faults.push(Fault { kind, until });
    }

    fn heal(&mut self, kind: FaultKind) {
        self.trace(|| format!("heal: {}", describe_fault(&kind)));
        match kind {
            FaultKind::Cut(_) => {}
            FaultKind::NodeDown(n) => {
                if self.nodes[n].live.is_none() {
                    self.start_node(n);
                }
            }
            FaultKind::WorkerDown(w) => {
                self.workers[w].up = true;
                self.workers[w].boot = self.rng.next().max(1);
                self.workers[w].reconnect_at = self.tick;
            }
            FaultKind::WorkerIsolated(w) => self.workers[w].isolated = false,
        }
    }

    fn heal_all(&mut self) {
        for f in std::mem::take(&mut self.faults) {
            self.heal(f.kind);
        }
        self.cut.clear();
        for n in 0..self.nodes.len() {
            if self.nodes[n].live.is_none() {
                self.start_node(n);
            }
        }
    }

    // -- engines ---------------------------------------------------------------------------

    /// `drive_engine` on every node: decide while leading, propose what it says.
    fn engines(&mut self) {
        for n in 0..self.nodes.len() {
            let clock = self.clock(n);
            let Some(live) = self.nodes[n].live.as_mut() else { continue };
            if !live.is_leader() {
                live.engine.reset();
                continue;
            }
            if live.leader_epoch != live.engine_epoch {
                live.engine_epoch = live.leader_epoch;
                live.leader_since_ms = clock;
                live.engine.reset();
            }
            let view = View {
                now_ms: clock,
                leader_since_ms: live.leader_since_ms,
                workers: live.registry.slots(),
                departed: live.registry.departed.clone(),
                worker_grace_ms: WORKER_GRACE_MS,
                guards_passed: Default::default(),
            };
            let ops = live.engine.decide(&live.state, &view);
            for op in ops {
                self.stats.proposals += 1;
                let _ = live.propose(&Command { at_ms: clock, op }, Waiter::Background);
            }
            self.drive(n);
        }
    }

    // -- API requests ----------------------------------------------------------------------

    /// Starts `Api::propose` of `op` on node `origin`, which stamps the time.
    fn call(&mut self, origin: usize, op: Op, caller: Caller) {
        let cmd = Command { at_ms: self.clock(origin), op };
        let id = self.next_call;
        self.next_call += 1;
        let call = Call {
            origin,
            origin_incarnation: self.nodes[origin].incarnation,
            cmd,
            deadline: self.tick + REQUEST_TICKS,
            caller,
            stage: Stage::Idle { retry_at: self.tick },
        };
        self.calls.insert(id, call);
        self.advance_call(id);
    }

    fn calls_step(&mut self) {
        let ids: Vec<u64> = self.calls.keys().copied().collect();
        for id in ids {
            self.advance_call(id);
        }
    }

    fn advance_call(&mut self, id: u64) {
        let Some(call) = self.calls.get(&id) else { return };
        let origin = call.origin;
        let alive = self.nodes[origin].incarnation == call.origin_incarnation && self.nodes[origin].live.is_some();
        if !alive {
            return self.finish_call(id, Err("the node went away".into()));
        }
        if self.tick >= call.deadline {
            return self.finish_call(id, Err("the cluster did not commit the request in time".into()));
        }
        match call.stage.clone() {
            Stage::Idle { retry_at } if self.tick >= retry_at => self.propose_call(id),
            Stage::Applying { reply, index, until } => {
                let applied = self.nodes[origin].live.as_ref().map_or(0, |l| l.raw.raft.raft_log.applied);
                if applied >= index || self.tick >= until {
                    self.finish_call(id, Ok(reply));
                }
            }
            _ => {}
        }
    }

    /// `propose_anywhere`: on the leader itself, or forwarded to the leader it knows.
    fn propose_call(&mut self, id: u64) {
        let call = self.calls.get(&id).expect("a call");
        let origin = call.origin;
        let leader = self.nodes[origin].live.as_ref().map_or(0, |l| l.raw.raft.leader_id);
        if leader == 0 {
            return self.idle(id);
        }
        let target = leader as usize - 1;
        let mut cmd = call.cmd.clone();
        if target != origin {
            // Forwarded over the network: the leader stamps its own time.
            if self.nodes[target].live.is_none() || self.cut.contains(&(origin, target)) {
                return self.idle(id);
            }
            cmd.at_ms = self.clock(target);
            self.stats.forwarded += 1;
        }
        let Some(live) = self.nodes[target].live.as_mut() else { return self.idle(id) };
        self.stats.proposals += 1;
        match live.propose(&cmd, Waiter::Call(id)) {
            Ok(()) => {
                self.calls.get_mut(&id).expect("a call").stage = Stage::Proposed { node: target };
                self.drive(target);
            }
            Err(_) => self.idle(id),
        }
    }

    /// Waits and proposes again (the API sleeps 50 ms; the simulation a tick).
    fn idle(&mut self, id: u64) {
        if let Some(call) = self.calls.get_mut(&id) {
            call.stage = Stage::Idle { retry_at: self.tick + 1 };
        }
    }

    fn finish_call(&mut self, id: u64, result: Result<Reply, String>) {
        let Some(call) = self.calls.remove(&id) else { return };
        if result.is_err() {
            self.stats.requests_failed += 1;
        }
        if let Caller::Client { client, kind } = call.caller {
            self.client_done(client, kind, result);
        }
    }

    fn on_reply(&mut self, waiter: Waiter, node: usize, result: Applied) {
        let Waiter::Call(id) = waiter else { return };
        let Some(call) = self.calls.get(&id) else { return };
        let origin = call.origin;
        match result {
            Ok((reply, _)) if node == origin => self.finish_call(id, Ok(reply)),
            Ok((reply, index)) => {
                // The forwarded RPC answers; the origin then waits until it applied the entry.
                if self.cut.contains(&(node, origin)) {
                    self.stats.reproposed += 1;
                    return self.idle(id);
                }
                let until = self.tick + REQUEST_TICKS;
                self.calls.get_mut(&id).expect("a call").stage = Stage::Applying { reply, index, until };
            }
            Err(_) => {
                if matches!(call.stage, Stage::Proposed { node: n } if n == node) {
                    self.stats.reproposed += 1;
                    self.idle(id);
                }
            }
        }
    }

    // -- workers ---------------------------------------------------------------------------

    fn crash_worker(&mut self, w: usize) {
        self.stats.worker_faults += 1;
        self.close_session(w);
        let worker = &mut self.workers[w];
        // Its memory goes with it: seen ids, running attempts, unacknowledged results.
        worker.up = false;
        worker.seen.clear();
        worker.max_term = 0;
        worker.running.clear();
        worker.unacked.clear();
        worker.inbox.clear();
        worker.backoff = 1;
        self.trace(|| format!("crash worker w{}", w + 1));
    }

    fn close_session(&mut self, w: usize) {
        let Some((n, no)) = self.workers[w].session.take() else { return };
        let clock = self.clock(n);
        if let Some(live) = self.nodes[n].live.as_mut() {
            live.registry.unregister(&self.workers[w].id, no, clock);
        }
        self.workers[w].reconnect_at = self.tick + self.workers[w].backoff;
    }

    /// `propose_report` through the worker's session node, which keeps only reports about
    /// attempts the worker holds (or that are already resolved, for results).
    fn report(&mut self, w: usize, op: Op) {
        let Some((n, no)) = self.workers[w].session else { return };
        let Some(live) = self.nodes[n].live.as_ref() else { return };
        let worker = &self.workers[w].id;
        let route = match &op {
            Op::AttemptStarted { attempt_id } if holds(&live.state, worker, *attempt_id) => ResultRoute::Propose,
            Op::AttemptStarted { .. } => ResultRoute::Ignore,
            Op::AttemptFinished { attempt_id, .. } => route_result(&live.state, worker, *attempt_id),
            _ => ResultRoute::Propose,
        };
        match route {
            ResultRoute::Propose => self.call(n, op, Caller::Worker),
            ResultRoute::Ack => {
                if let Op::AttemptFinished { attempt_id, .. } = op {
                    self.workers[w].inbox.push((n, no, ToWorker::Ack(attempt_id)));
                }
            }
            ResultRoute::Ignore => {}
        }
    }

    fn workers_step(&mut self) {
        let leader = self.leader_index();
        for w in 0..self.workers.len() {
            if !self.workers[w].up {
                continue;
            }
            if let (Some((n, _)), Some(l)) = (self.workers[w].session, leader)
                && n != l
            {
                self.stats.worker_ticks_off_leader += 1;
            }
            if self.workers[w].session.is_none() && self.tick >= self.workers[w].reconnect_at {
                self.connect(w);
            }
            for (n, no, msg) in std::mem::take(&mut self.workers[w].inbox) {
                if self.workers[w].session == Some((n, no)) {
                    self.worker_receive(w, msg);
                }
            }
            let tick = self.tick;
            let mut reports = Vec::new();
            let worker = &mut self.workers[w];
            let ids: Vec<u64> = worker.running.keys().copied().collect();
            for id in ids {
                let r = worker.running.get_mut(&id).expect("listed above");
                if !r.reported_start && tick > r.started_tick {
                    r.reported_start = true;
                    reports.push(Op::AttemptStarted { attempt_id: id });
                }
                if tick >= r.finish_tick {
                    let ok = r.succeeds;
                    worker.running.remove(&id);
                    self.check.finished.insert(id);
                    let result = finished(id, if ok { AttemptState::Succeeded } else { AttemptState::Failed }, None);
                    worker.unacked.insert(id, (result.clone(), tick));
                    reports.push(result);
                }
            }
            for (op, sent) in worker.unacked.values_mut() {
                if tick - *sent >= RESEND_AFTER_TICKS {
                    *sent = tick;
                    reports.push(op.clone());
                }
            }
            for op in reports {
                self.report(w, op);
            }
        }
    }

    /// `run_worker` + `handle_session`: try the next server (or the leader a follower named);
    /// a leader registers the worker, reconciles what it reports, stops what it should not run,
    /// and takes its unacknowledged results.
    fn connect(&mut self, w: usize) {
        let mut hint = None;
        let mut tries = 0;
        let n = loop {
            tries += 1;
            let n = hint.take().unwrap_or_else(|| {
                let worker = &mut self.workers[w];
                worker.next_server += 1;
                (worker.next_server - 1) % self.nodes.len()
            });
            let reachable = !self.workers[w].isolated && self.nodes[n].live.is_some();
            let (leading, leader) =
                self.nodes[n].live.as_ref().map_or((false, 0), |l| (l.is_leader(), l.raw.raft.leader_id));
            if reachable && leading {
                break n;
            }
            if reachable && leader != 0 && tries <= self.nodes.len() {
                // A follower names the leader: go there at once.
                hint = Some(leader as usize - 1);
                continue;
            }
            let worker = &mut self.workers[w];
            worker.reconnect_at = self.tick + worker.backoff;
            worker.backoff = (worker.backoff * 2).min(MAX_BACKOFF_TICKS);
            return;
        };
        let worker = &mut self.workers[w];
        let running: Vec<u64> = worker.running.keys().copied().collect();
        let reported: Vec<u64> = worker.unacked.keys().copied().collect();
        let live = self.nodes[n].live.as_mut().expect("checked above");
        let held = running.iter().chain(&reported).copied().collect();
        let no = live.registry.register(&worker.id, worker.boot, WORKER_CAPACITY, live.state.applied_index, held);
        let lost = reconcile(&live.state, &worker.id, worker.boot, &running, &reported);
        self.stats.taken_back += lost.iter().filter(|op| matches!(op, Op::AttemptUndelivered { .. })).count() as u64;
        let stop = to_stop(&live.state, &worker.id, &running);
        let mut results = Vec::new();
        let mut acks = Vec::new();
        for (id, (op, _)) in &worker.unacked {
            // A result for an attempt whose assignment this node has not applied yet.
            self.stats.results_behind += u64::from(*id > live.state.applied_index);
            match route_result(&live.state, &worker.id, *id) {
                ResultRoute::Propose => results.push(op.clone()),
                ResultRoute::Ack => acks.push(*id),
                ResultRoute::Ignore => {}
            }
        }
        worker.session = Some((n, no));
        for id in stop {
            worker.inbox.push((n, no, ToWorker::Cancel(id)));
        }
        for id in acks {
            worker.inbox.push((n, no, ToWorker::Ack(id)));
        }
        let tick = self.tick;
        for (_, sent) in worker.unacked.values_mut() {
            *sent = tick;
        }
        self.trace(|| {
            format!("w{} registers with node {} (lost {}, results {})", w + 1, n + 1, lost.len(), results.len())
        });
        for op in lost.into_iter().chain(results) {
            self.call(n, op, Caller::Worker);
        }
    }

    fn worker_receive(&mut self, w: usize, msg: ToWorker) {
        let tick = self.tick;
        match msg {
            ToWorker::Assign(a) => {
                let worker = &mut self.workers[w];
                if worker.seen.contains(&a.attempt_id) {
                    self.stats.refused_seen += 1;
                    return;
                }
                if a.fence.term < worker.max_term {
                    // Refused, and said so: it did not run.
                    self.stats.refused_fence += 1;
                    let error = format!("refused: fenced by term {}, older than {}", a.fence.term, worker.max_term);
                    let result = finished(a.attempt_id, AttemptState::Failed, Some(error));
                    worker.unacked.insert(a.attempt_id, (result.clone(), tick));
                    self.report(w, result);
                    return;
                }
                worker.max_term = a.fence.term;
                worker.seen.insert(a.attempt_id);
                let duration = self.rng.range(2, 7);
                let succeeds = !self.rng.chance(100);
                worker.running.insert(
                    a.attempt_id,
                    Running { started_tick: tick, finish_tick: tick + duration, reported_start: false, succeeds },
                );
                self.stats.attempts_started += 1;
                self.check.ledger.push(LedgerEntry {
                    attempt_id: a.attempt_id,
                    worker: worker.id.clone(),
                    run_id: a.run_id,
                    step_id: a.step_id,
                    tick,
                });
                self.trace(|| format!("w{} starts attempt {}", w + 1, a.attempt_id));
            }
            ToWorker::Cancel(id) => {
                let worker = &mut self.workers[w];
                if worker.running.remove(&id).is_some() {
                    let result = finished(id, AttemptState::Cancelled, Some("cancelled".into()));
                    worker.unacked.insert(id, (result.clone(), tick));
                    self.report(w, result);
                }
            }
            ToWorker::Ack(id) => {
                self.workers[w].unacked.remove(&id);
            }
        }
    }

    // -- clients ---------------------------------------------------------------------------

    fn clients_step(&mut self) {
        for c in 0..self.clients.len() {
            let client = &mut self.clients[c];
            if client.cur.is_none() {
                if let Some(kind) = client.setup.pop() {
                    client.cur = Some(Req { kind, in_flight: false, retry_at: 0 });
                } else if c == 0 && !self.workload_open && self.tick < CHAOS_TICKS {
                    // Setup is done: the workload starts.
                    self.workload_open = true;
                }
            }
            let client = &mut self.clients[c];
            if client.cur.is_none() && self.workload_open && self.rng.chance(30) {
                client.next_key += 1;
                let key = format!("c{c}-{}", client.next_key);
                self.check.keys.insert(key.clone());
                client.cur = Some(Req { kind: ReqKind::Start { key }, in_flight: false, retry_at: 0 });
            }
            if self.clients[c].cur.as_ref().is_some_and(|r| !r.in_flight && self.tick >= r.retry_at) {
                self.request(c);
            }
        }
    }

    /// The API handler on the client's node: `start_run` answers a known key from the applied
    /// state; otherwise it stamps a run id and proposes.
    fn request(&mut self, c: usize) {
        let n = self.clients[c].target;
        let kind = self.clients[c].cur.as_ref().expect("a request").kind.clone();
        let Some(live) = self.nodes[n].live.as_ref() else {
            return self.client_done(c, kind, Err("connection refused".into()));
        };
        if let ReqKind::Start { key } = &kind
            && let Some(id) = live.state.idempotency.get(key)
        {
            let reply = Reply::Run { run_id: id.clone(), deduplicated: true };
            return self.client_done(c, kind, Ok(reply));
        }
        let op = match &kind {
            ReqKind::Runbook => Op::ApplyRunbook { runbook: self.runbook.clone() },
            ReqKind::Schedule => Op::ApplySchedule { schedule: self.schedule.clone() },
            ReqKind::Start { key } => {
                self.run_seq += 1;
                Op::StartRun {
                    run_id: format!("r-{}-{}", n + 1, self.run_seq),
                    runbook: "sim".into(),
                    params: [("n".to_string(), serde_json::json!(self.run_seq))].into(),
                    idempotency_key: Some(key.clone()),
                }
            }
        };
        if let Some(req) = self.clients[c].cur.as_mut() {
            req.in_flight = true;
        }
        self.call(n, op, Caller::Client { client: c, kind });
    }

    /// The client's answer; after an error it tries again (same key) through some node.
    fn client_done(&mut self, c: usize, kind: ReqKind, result: Result<Reply, String>) {
        match (&kind, &result) {
            (ReqKind::Start { key }, Ok(Reply::Run { run_id, .. })) => self.check.ack(key, run_id),
            (ReqKind::Runbook | ReqKind::Schedule, Ok(Reply::Applied { .. })) => {}
            (_, Ok(other)) => self.check.anomaly(format!("unexpected reply {other:?} to {kind:?}")),
            (_, Err(_)) => {}
        }
        let target = self.rng.index(self.nodes.len());
        let tick = self.tick;
        let client = &mut self.clients[c];
        if client.cur.as_ref().is_some_and(|r| r.kind == kind) {
            if result.is_ok() {
                client.cur = None;
            } else {
                client.target = target;
                client.cur = Some(Req { kind, in_flight: false, retry_at: tick + 1 });
            }
        }
    }

    // -- the end ---------------------------------------------------------------------------

    /// After healing, work must be able to flow: every worker is connected to the leader, and
    /// every attempt is known to its worker or will be declared lost.
    fn check_liveness(&mut self) {
        let Some(l) = self.leader_index() else { return };
        let live = self.nodes[l].live.as_ref().expect("leader is live");
        let clock = self.clock(l);
        let mut found = Vec::new();
        for w in &self.workers {
            match w.session {
                Some((n, _)) if n != l => found.push(format!(
                    "worker {} stays connected to node {}, not the leader node {}: it gets no attempts, and its \
                     running ones are declared lost after the grace period",
                    w.id,
                    n + 1,
                    l + 1
                )),
                _ => {}
            }
        }
        for (id, (run_id, si)) in &live.state.active_attempts {
            let Some(a) = live.state.runs.get(run_id).and_then(|r| r.steps[*si].active_attempt()) else { continue };
            let Some(w) = self.workers.iter().find(|w| w.id == a.worker) else { continue };
            let connected = live.registry.sessions.contains_key(&a.worker);
            let known = w.running.contains_key(id) || w.unacked.contains_key(id);
            if connected && !known && a.assigned_at_ms < clock - WORKER_GRACE_MS {
                found.push(format!(
                    "attempt {id} (run {run_id}, fence term {}) is {} on connected worker {}, which does not have it: \
                     nothing will resolve it",
                    a.fence.term,
                    a.state.as_str(),
                    a.worker
                ));
            }
        }
        for f in found {
            self.trace(|| format!("liveness: {f}"));
            self.liveness.push(f);
        }
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader_index() else { return false };
        let last = self.nodes[l].live.as_ref().expect("leader is live").raw.raft.raft_log.last_index();
        self.nodes.iter().all(|n| {
            n.live.as_ref().is_some_and(|live| {
                let log = &live.raw.raft.raft_log;
                log.committed == last && log.applied == last && live.state.applied_index == last
            })
        })
    }

    fn check_final(&mut self) {
        if !self.converged() {
            let applied: Vec<String> = self
                .nodes
                .iter()
                .map(|n| {
                    n.live.as_ref().map_or("down".into(), |l| {
                        let log = &l.raw.raft.raft_log;
                        format!("{} (commit {}, last {})", log.applied, log.committed, log.last_index())
                    })
                })
                .collect();
            self.check.anomaly(format!(
                "nodes did not converge {BOUND_TICKS} ticks after healing: applied [{}], leader {:?}",
                applied.join(", "),
                self.leader_index().map(|l| l + 1)
            ));
            return;
        }
        let state = self.nodes[0].live.as_ref().expect("converged").state.clone();
        // The engine's derived indexes, kept up to date by apply, are what a fresh build says.
        let fresh = State::from_json(&serde_json::to_vec(&state).expect("state encodes")).expect("state decodes");
        if (&fresh.active_order, &fresh.queued_plain) != (&state.active_order, &state.queued_plain) {
            self.check.anomaly("the engine's index of active runs drifted from the runs".to_string());
        }
        if (&fresh.fire_order, &fresh.active_by_schedule) != (&state.fire_order, &state.active_by_schedule) {
            self.check.anomaly("the engine's index of schedules drifted from the schedules".to_string());
        }
        for node in &self.nodes[1..] {
            let other = &node.live.as_ref().expect("converged").state;
            if *other != state {
                let what = describe_difference(&state, other);
                self.check.anomaly(format!("node {} ended with a different state than node 1: {what}", node.id));
            }
        }
        let mut found = Vec::new();
        check_keys(&state, &self.check, &mut found);
        check_ticks(&state, self.check.schedule_applied_at, &mut found, &mut self.stats);
        check_attempts(&state, &self.runbook, &self.check.ledger, &mut found);
        for f in found {
            self.check.anomaly(f);
        }
        let s = &mut self.stats;
        s.commits = self.check.log.len() as u64;
        s.elections = self.check.leaders.len() as u64;
        s.acked_keys = self.check.acks.len() as u64;
        s.runs = state.runs.len() as u64;
        for run in state.runs.values() {
            match run.state {
                RunState::Succeeded => s.runs_succeeded += 1,
                RunState::NeedsAttention => s.runs_needing_attention += 1,
                RunState::Cancelled => s.runs_cancelled += 1,
                _ => {}
            }
            for a in run.steps.iter().flat_map(|st| &st.attempts).filter(|a| a.state == AttemptState::Lost) {
                s.attempts_lost += 1;
                s.lost_after_finishing += u64::from(self.check.finished.contains(&a.id));
            }
        }
    }

    fn fingerprint(&self) -> u64 {
        let mut text = String::new();
        for (i, (term, hash, _)) in &self.check.log {
            let _ = write!(text, "{i}:{term}:{hash:x};");
        }
        let _ = write!(text, "{:?}{:?}", self.stats, self.liveness);
        fnv(text.as_bytes())
    }
}

/// A fault, with node ids (1-based) and worker names.
fn describe_fault(kind: &FaultKind) -> String {
    match kind {
        FaultKind::Cut(links) => {
            let links: Vec<String> = links.iter().map(|(a, b)| format!("{}->{}", a + 1, b + 1)).collect();
            format!("cut {}", links.join(" "))
        }
        FaultKind::NodeDown(n) => format!("node {} down", n + 1),
        FaultKind::WorkerDown(w) => format!("worker w{} down", w + 1),
        FaultKind::WorkerIsolated(w) => format!("worker w{} isolated", w + 1),
    }
}

fn finished(attempt_id: u64, state: AttemptState, error: Option<String>) -> Op {
    Op::AttemptFinished {
        attempt_id,
        state,
        exit_code: match state {
            AttemptState::Succeeded => Some(0),
            AttemptState::Failed if error.is_none() => Some(1),
            _ => None,
        },
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        outputs: BTreeMap::new(),
        error,
    }
}

fn describe_difference(a: &State, b: &State) -> String {
    if a.applied_index != b.applied_index {
        return format!("applied_index {} vs {}", a.applied_index, b.applied_index);
    }
    for (id, run) in &a.runs {
        match b.runs.get(id) {
            None => return format!("run {id} is missing"),
            Some(other) if other != run => return format!("run {id} differs: {run:?} vs {other:?}"),
            Some(_) => {}
        }
    }
    if a.runs.len() != b.runs.len() {
        return format!("{} runs vs {}", a.runs.len(), b.runs.len());
    }
    if a.schedules != b.schedules {
        return format!("schedules differ: {:?} vs {:?}", a.schedules, b.schedules);
    }
    "runbooks, idempotency keys, run order or active sets differ".into()
}

/// Every acknowledged key maps to exactly one run, the one it was answered with; no key made two.
fn check_keys(state: &State, check: &Checker, found: &mut Vec<String>) {
    let mut runs_by_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for run in state.runs.values() {
        if let Some(k) = &run.idempotency_key {
            runs_by_key.entry(k).or_default().push(&run.id);
        }
    }
    for (key, runs) in &runs_by_key {
        if runs.len() != 1 {
            found.push(format!("key {key} made {} runs: {runs:?}", runs.len()));
        }
    }
    for (key, run_id) in &check.acks {
        if state.idempotency.get(key) != Some(run_id) {
            let mapped = state.idempotency.get(key);
            found.push(format!("key {key} was acknowledged with {run_id}, state maps it to {mapped:?}"));
        }
        if runs_by_key.get(key.as_str()).is_none_or(|r| r != &[run_id.as_str()]) {
            found.push(format!("acknowledged key {key} (run {run_id}) has runs {:?}", runs_by_key.get(key.as_str())));
        }
    }
    for key in &check.keys {
        if !check.acks.contains_key(key) {
            found.push(format!("key {key} was never acknowledged"));
        }
    }
}

/// Every tick from the schedule's first to its next has exactly one run or lies in a missed record.
fn check_ticks(state: &State, applied_at: Option<i64>, found: &mut Vec<String>, stats: &mut Stats) {
    let (Some(applied_at), Some(s)) = (applied_at, state.schedules.get(SCHEDULE)) else {
        found.push("the schedule was never applied".into());
        return;
    };
    let mut covered: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for run in state.runs.values() {
        let Trigger::Schedule { name, tick_ms } = &run.trigger else { continue };
        if name != SCHEDULE {
            continue;
        }
        if run.state == RunState::Missed {
            let mut t = *tick_ms;
            for i in 0..run.missed_ticks {
                covered.entry(t).or_default().push(run.id.clone());
                if i + 1 < run.missed_ticks {
                    t = s.schedule.next_after(t).expect("every second has a next tick");
                }
            }
        } else {
            covered.entry(*tick_ms).or_default().push(run.id.clone());
            stats.ticks_fired += 1;
        }
    }
    stats.ticks_missed += s.ticks_missed;
    let end = s.next_fire_at_ms.unwrap_or(i64::MAX);
    let mut expected = BTreeSet::new();
    let mut t = s.schedule.next_after(applied_at);
    while let Some(tick) = t.filter(|t| *t < end) {
        expected.insert(tick);
        t = s.schedule.next_after(tick);
    }
    for tick in &expected {
        match covered.get(tick).map(Vec::len) {
            Some(1) => {}
            None => found.push(format!("tick {tick} has neither a run nor a missed record")),
            Some(_) => found.push(format!("tick {tick} is covered more than once: {:?}", covered[tick])),
        }
    }
    for (tick, runs) in &covered {
        if !expected.contains(tick) {
            found.push(format!("tick {tick} ({runs:?}) is outside the schedule's history"));
        }
    }
    if s.runs_fired + s.ticks_missed != expected.len() as u64 {
        found.push(format!(
            "schedule counts {} fired + {} missed, but {} ticks passed",
            s.runs_fired,
            s.ticks_missed,
            expected.len()
        ));
    }
}

/// No attempt id started twice; every started attempt is the state's; no step has two succeeded
/// attempts; a step that is not idempotent has at most one attempt, started at most once.
fn check_attempts(state: &State, runbook: &Runbook, ledger: &[LedgerEntry], found: &mut Vec<String>) {
    let mut by_id: BTreeMap<u64, &LedgerEntry> = BTreeMap::new();
    let mut starts: BTreeMap<(&str, &str), u32> = BTreeMap::new();
    for e in ledger {
        if let Some(first) = by_id.insert(e.attempt_id, e) {
            found.push(format!(
                "attempt {} started twice: on {} at tick {} and on {} at tick {} (run {}, step {})",
                e.attempt_id, first.worker, first.tick, e.worker, e.tick, e.run_id, e.step_id
            ));
        }
        *starts.entry((&e.run_id, &e.step_id)).or_default() += 1;
        let known = state
            .runs
            .get(&e.run_id)
            .and_then(|r| r.step(&e.step_id))
            .is_some_and(|s| s.attempts.iter().any(|a| a.id == e.attempt_id && a.worker == e.worker));
        if !known {
            found.push(format!("started attempt {e:?} is not in the replicated state"));
        }
    }
    for ((run_id, step_id), n) in &starts {
        let idempotent = runbook.step(step_id).is_some_and(|s| s.idempotent);
        if *n > 1 && !idempotent {
            found.push(format!("step {step_id} of run {run_id} is not idempotent but was started {n} times"));
        }
    }
    for run in state.runs.values() {
        for step in &run.steps {
            let succeeded = step.attempts.iter().filter(|a| a.state == AttemptState::Succeeded).count();
            if succeeded > 1 {
                found.push(format!("step {} of run {} has {succeeded} succeeded attempts", step.id, run.id));
            }
            let idempotent = runbook.step(&step.id).is_some_and(|s| s.idempotent);
            if !idempotent && step.attempts.len() > 1 {
                let n = step.attempts.len();
                found.push(format!("step {} of run {} is not idempotent but has {n} attempts", step.id, run.id));
            }
            if step.state == StepState::Succeeded && succeeded != 1 {
                found.push(format!("step {} of run {} succeeded without a succeeded attempt", step.id, run.id));
            }
        }
    }
    for (id, (run_id, si)) in &state.active_attempts {
        let active = state.runs.get(run_id).and_then(|r| r.steps.get(*si)).and_then(|s| s.active_attempt());
        if active.is_none_or(|a| a.id != *id) {
            found.push(format!("active attempt {id} is not the active attempt of run {run_id} step {si}"));
        }
    }
}
