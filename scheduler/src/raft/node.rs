//! The Ready loop and its handle.

use std::collections::HashMap;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use baton_core::command::Command;
use protobuf::Message as _;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::{oneshot, watch};

use crate::fsm::{Effect, Reply, State};
use crate::store::{Persist, RaftStorage, Store};

/// How the node runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's Raft id.
    pub id: u64,
    /// Interval of one Raft tick.
    pub tick: Duration,
    /// Take a state-machine snapshot (and compact the log) after this many applied entries,
    /// and no sooner than one entry per KiB of the previous snapshot (see `maybe_snapshot`).
    pub snapshot_every: u64,
    /// Ticks without a leader's heartbeat before a follower starts an election.
    pub election_ticks: usize,
    /// Every voter of a new cluster, this node included. Used only on first start.
    pub initial_voters: Vec<u64>,
    /// Start without a configuration and wait to be added to an existing cluster.
    pub join: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            id: 1,
            tick: Duration::from_millis(100),
            snapshot_every: 2_000,
            election_ticks: 10,
            initial_voters: vec![1],
            join: false,
        }
    }
}

/// Hands Raft messages to peers. Sending never blocks the loop; a message that cannot be
/// sent is dropped (Raft retransmits) and the peer is reported unreachable.
pub trait Transport: Send + 'static {
    /// Queues messages for their recipients; returns the peers whose snapshot message it had
    /// to drop (Raft must hear of it, or it waits for that snapshot forever).
    fn send(&mut self, msgs: Vec<Message>) -> Vec<u64>;
    /// A member was added (with its address) or removed (`None`).
    fn set_peer(&mut self, _id: u64, _address: Option<String>) {}
}

/// The transport of a cluster without peers.
pub struct NoPeers;

impl Transport for NoPeers {
    fn send(&mut self, msgs: Vec<Message>) -> Vec<u64> {
        for m in msgs {
            tracing::debug!(to = m.to, "dropping a raft message: no peers configured");
        }
        Vec::new()
    }
}

/// The node's role as last seen by the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Accepts proposals.
    Leader,
    /// Forwards to the leader.
    Follower,
    /// Trying to become leader.
    Candidate,
}

impl Role {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        }
    }
}

/// Raft progress, published by the loop after every Ready.
#[derive(Debug, Clone)]
pub struct NodeStatus {
    /// This node's id.
    pub id: u64,
    /// Current role.
    pub role: Role,
    /// Known leader (0: none).
    pub leader_id: u64,
    /// Current term.
    pub term: u64,
    /// Commit index.
    pub commit: u64,
    /// Applied index.
    pub applied: u64,
    /// Index of the latest state-machine snapshot.
    pub snapshot_index: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Increases every time this node becomes leader.
    pub leader_epoch: u64,
    /// On the leader: (member id, highest index known replicated there).
    pub matched: Vec<(u64, u64)>,
    /// Last index of this node's log.
    pub last_index: u64,
}

/// Why a proposal did not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader.
    #[error("this node is not the leader (leader: {leader_hint})")]
    NotLeader {
        /// The leader's id if known (0: unknown).
        leader_hint: u64,
    },
    /// The node stopped or the entry was dropped (for example by a leader change).
    #[error("the proposal was dropped: {0}")]
    Dropped(String),
}

/// An applied proposal's reply and the index it was applied at.
pub type Applied = (Reply, u64);
type ReplyTx = oneshot::Sender<Result<Applied, ProposeError>>;

enum Msg {
    Propose { data: Vec<u8>, reply: ReplyTx },
    Raft(Box<Message>),
    Unreachable(u64),
    SnapshotSent { to: u64, ok: bool },
    ReadIndex { reply: oneshot::Sender<Result<u64, ProposeError>> },
    ConfChange { cc: ConfChangeV2, reply: ReplyTx },
    TransferLeader(u64),
    Stop,
}

/// The async side's handle on the node.
#[derive(Clone)]
pub struct NodeHandle {
    tx: mpsc::Sender<Msg>,
    state: Arc<RwLock<State>>,
    status: Arc<Mutex<NodeStatus>>,
    /// The applied index, published after every Ready that applied entries or a snapshot.
    applied: watch::Sender<u64>,
}

impl NodeHandle {
    /// Proposes a command (this node must lead) and waits until it is applied here.
    pub async fn propose(&self, cmd: &Command) -> Result<Applied, ProposeError> {
        let started = Instant::now();
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Propose { data: cmd.encode(), reply })
            .map_err(|_| ProposeError::Dropped("the node is stopped".into()))?;
        let applied = rx.await.map_err(|_| ProposeError::Dropped("the node stopped before applying it".into()))?;
        if applied.is_ok() {
            crate::metrics::COMMIT.observe_ms(started.elapsed().as_secs_f64() * 1000.0);
        }
        applied
    }

    /// Proposes a membership change (this node must lead) and waits until it is applied.
    pub async fn propose_conf_change(&self, cc: ConfChangeV2) -> Result<Applied, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::ConfChange { cc, reply }).map_err(|_| ProposeError::Dropped("the node is stopped".into()))?;
        rx.await.map_err(|_| ProposeError::Dropped("the node stopped before applying it".into()))?
    }

    /// Asks Raft to hand leadership to `id` (this node must lead).
    pub fn transfer_leader(&self, id: u64) {
        let _ = self.tx.send(Msg::TransferLeader(id));
    }

    /// Steps a message from a peer into Raft.
    pub fn step(&self, m: Message) {
        let _ = self.tx.send(Msg::Raft(Box::new(m)));
    }

    /// Tells Raft a peer could not be reached.
    pub fn report_unreachable(&self, id: u64) {
        let _ = self.tx.send(Msg::Unreachable(id));
    }

    /// Tells Raft whether a snapshot reached a peer.
    pub fn report_snapshot(&self, to: u64, ok: bool) {
        let _ = self.tx.send(Msg::SnapshotSent { to, ok });
    }

    /// A linearizable read barrier (Raft ReadIndex): resolves once this node has applied
    /// everything committed when the read was issued, confirmed by a quorum.
    pub async fn read_barrier(&self) -> Result<u64, ProposeError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Msg::ReadIndex { reply }).map_err(|_| ProposeError::Dropped("the node is stopped".into()))?;
        rx.await.map_err(|_| ProposeError::Dropped("the node stopped".into()))?
    }

    /// Waits until this node has applied `index` (after a write forwarded to the leader, so
    /// the caller reads its own write here), or `timeout` passes. A watch holds the latest
    /// applied index, so an index applied just before the wait began is seen at once.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.subscribe();
        matches!(tokio::time::timeout(timeout, rx.wait_for(|applied| *applied >= index)).await, Ok(Ok(_)))
    }

    /// Runs `f` over the applied state. Never call it across an `.await`.
    pub fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.state.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The latest published Raft status.
    pub fn status(&self) -> NodeStatus {
        self.status.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The applied index, changed after every Ready that applied entries or a snapshot.
    pub fn subscribe_applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Stops the loop (it finishes the current Ready first).
    pub fn stop(&self) {
        let _ = self.tx.send(Msg::Stop);
    }
}

/// Starts the node's loop on its own thread. `effects` receives every [`Effect`] of apply.
pub fn start_node(
    config: NodeConfig,
    store: Arc<dyn Store>,
    transport: Box<dyn Transport>,
    effects: tokio::sync::mpsc::UnboundedSender<Effect>,
) -> anyhow::Result<(NodeHandle, std::thread::JoinHandle<()>)> {
    let logger = super::slog_tracing::logger();
    let mut initial = store.initial_state()?;
    if initial.conf_state.voters.is_empty() && !config.join {
        // First start: the configured voters form a new cluster.
        let mut voters = config.initial_voters.clone();
        if !voters.contains(&config.id) {
            voters.push(config.id);
        }
        voters.sort_unstable();
        let cs = ConfState { voters, ..Default::default() };
        store.set_conf_state(&cs)?;
        initial = store.initial_state()?;
    }
    // Recover the state machine from its snapshot; the loop re-applies the log after it.
    let snapshot = store.snapshot()?;
    let mut state = State::default();
    if !snapshot.data.is_empty() {
        state = State::from_json(&snapshot.data).map_err(|e| {
            anyhow::anyhow!("state-machine snapshot at index {} is unreadable: {e}", snapshot.get_metadata().index)
        })?;
    }
    let snap_index = snapshot.get_metadata().index;
    let raft_config = raft::Config {
        id: config.id,
        election_tick: config.election_ticks,
        heartbeat_tick: (config.election_ticks / 4).max(1),
        applied: snap_index,
        max_size_per_msg: 1024 * 1024,
        max_inflight_msgs: 256,
        check_quorum: true,
        pre_vote: true,
        ..Default::default()
    };
    raft_config.validate()?;
    let mut raw = RawNode::new(&raft_config, RaftStorage(store.clone()), &logger)?;
    let single_voter = initial.conf_state.voters == [config.id] && initial.conf_state.learners.is_empty();
    if single_voter {
        // A single voter can elect itself at once instead of waiting out an election timeout.
        raw.campaign()?;
    }
    let status = NodeStatus {
        id: config.id,
        role: Role::Follower,
        leader_id: 0,
        term: initial.hard_state.term,
        commit: initial.hard_state.commit,
        applied: snap_index,
        snapshot_index: snap_index,
        voters: initial.conf_state.voters.clone(),
        leader_epoch: 0,
        matched: Vec::new(),
        last_index: 0,
    };
    let (tx, rx) = mpsc::channel();
    let (applied_tx, _) = watch::channel(snap_index);
    let handle = NodeHandle {
        tx,
        state: Arc::new(RwLock::new(state)),
        status: Arc::new(Mutex::new(status)),
        applied: applied_tx,
    };
    let mut lp = Loop {
        config,
        raw,
        store,
        state: handle.state.clone(),
        status: handle.status.clone(),
        applied_tx: handle.applied.clone(),
        effects,
        pending: HashMap::new(),
        next_proposal: 1,
        boot: uuid::Uuid::new_v4().as_u64_pair().0,
        conf_state: initial.conf_state,
        last_snapshot: snap_index,
        last_snapshot_bytes: snapshot.data.len() as u64,
        seen_leader: false,
        role: StateRole::Follower,
        replay_until: initial.hard_state.commit,
        transport,
        force_snapshot: false,
        reads: HashMap::new(),
        ready_reads: Vec::new(),
        next_read: 1,
        replies: Vec::new(),
    };
    // Members added after the cluster was founded are known from the replicated state.
    let joined: Vec<(u64, String)> =
        lp.state.read().unwrap_or_else(|e| e.into_inner()).members.clone().into_iter().collect();
    for (id, addr) in joined {
        if id != lp.config.id {
            lp.transport.set_peer(id, Some(addr));
        }
    }
    let thread = std::thread::Builder::new().name("raft".into()).spawn(move || {
        // A node that cannot persist or apply must not go on serving stale state: stop the
        // process, so a supervisor restarts it and clients fail over.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| lp.run(rx))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!("raft loop stopped: {e:#}");
                std::process::exit(70);
            }
            Err(_) => {
                tracing::error!(
                    "raft loop panicked. If this node's data directory was wiped or replaced while it was a \
                     member, remove it (`baton cluster remove ID`), then start it with --join and add it back \
                     (`baton cluster join ID ADDR`)"
                );
                std::process::exit(70);
            }
        }
    })?;
    Ok((handle, thread))
}

/// A snapshot is taken no sooner than one applied entry per this many bytes of the last one.
const SNAPSHOT_BYTES_PER_ENTRY: u64 = 1024;

struct Loop {
    config: NodeConfig,
    raw: RawNode<RaftStorage>,
    store: Arc<dyn Store>,
    state: Arc<RwLock<State>>,
    status: Arc<Mutex<NodeStatus>>,
    applied_tx: watch::Sender<u64>,
    effects: tokio::sync::mpsc::UnboundedSender<Effect>,
    /// Proposals of this node waiting to be applied, by the id in their entry context.
    pending: HashMap<u64, ReplyTx>,
    next_proposal: u64,
    /// Random per process: an entry proposed before a restart never answers a new caller.
    boot: u64,
    conf_state: ConfState,
    last_snapshot: u64,
    /// Size of the last snapshot this process took or installed, bytes.
    last_snapshot_bytes: u64,
    /// Whether this process has known a leader (for `baton_leader_changes_total`).
    seen_leader: bool,
    role: StateRole,
    /// Entries up to here were committed before this process started. Their assignments may
    /// or may not have reached a worker, so they are never sent again: the engine reconciles
    /// them with what workers report, and an unknown outcome becomes `lost`.
    replay_until: u64,
    transport: Box<dyn Transport>,
    /// Take a snapshot after this Ready regardless of the threshold.
    force_snapshot: bool,
    /// ReadIndex requests by context id, waiting for Raft to confirm a read index.
    reads: HashMap<u64, oneshot::Sender<Result<u64, ProposeError>>>,
    /// Confirmed reads waiting for the applied index to reach their read index.
    ready_reads: Vec<(u64, oneshot::Sender<Result<u64, ProposeError>>)>,
    next_read: u64,
    /// This node's proposals applied in this Ready, with their replies and indexes: answered
    /// once the Ready's status is published.
    replies: Vec<(ReplyTx, Reply, u64)>,
}

impl Loop {
    fn run(&mut self, rx: mpsc::Receiver<Msg>) -> anyhow::Result<()> {
        let mut last_tick = Instant::now();
        // A single voter campaigned before the loop started: act on it at once.
        if self.raw.has_ready() {
            self.on_ready()?;
        }
        loop {
            // 1. Wait for input or the next tick; then take everything queued, so all
            //    proposals that arrived meanwhile share one Ready and one fsync (group commit).
            let wait = self.config.tick.saturating_sub(last_tick.elapsed());
            let first = match rx.recv_timeout(wait) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut proposals = Vec::new();
            for msg in first.into_iter().chain(rx.try_iter()) {
                match msg {
                    Msg::Propose { data, reply } => proposals.push((data, reply)),
                    Msg::Raft(m) => {
                        if let Err(e) = self.raw.step(*m) {
                            tracing::debug!("ignoring a raft message: {e}");
                        }
                    }
                    Msg::Unreachable(id) => self.raw.report_unreachable(id),
                    Msg::SnapshotSent { to, ok } => {
                        let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                        self.raw.report_snapshot(to, status);
                    }
                    Msg::ReadIndex { reply } => {
                        let id = self.next_read;
                        self.next_read += 1;
                        self.reads.insert(id, reply);
                        self.raw.read_index(id.to_be_bytes().to_vec());
                    }
                    Msg::ConfChange { cc, reply } => {
                        self.propose_all(&mut proposals);
                        self.propose_conf_change(cc, reply);
                    }
                    Msg::TransferLeader(id) => {
                        self.propose_all(&mut proposals);
                        self.raw.transfer_leader(id);
                    }
                    Msg::Stop => return Ok(()),
                }
            }
            self.propose_all(&mut proposals);
            // 2. Drive Raft's logical clock.
            if last_tick.elapsed() >= self.config.tick {
                self.raw.tick();
                last_tick = Instant::now();
            }
            // 3. Handle whatever Raft has ready.
            if self.raw.has_ready() {
                self.on_ready()?;
            }
        }
    }

    /// Proposes the queued commands as one Raft message: their entries are appended together
    /// and reach each follower in one append, where one proposal each would cost an append
    /// message (and an in-flight slot, of 256) per command per follower.
    fn propose_all(&mut self, queued: &mut Vec<(Vec<u8>, ReplyTx)>) {
        if queued.is_empty() {
            return;
        }
        if self.raw.raft.state != StateRole::Leader {
            for (_, reply) in queued.drain(..) {
                let _ = reply.send(Err(ProposeError::NotLeader { leader_hint: self.raw.raft.leader_id }));
            }
            return;
        }
        let mut replies = Vec::with_capacity(queued.len());
        let mut entries = Vec::with_capacity(queued.len());
        for (data, reply) in queued.drain(..) {
            let id = self.next_proposal;
            self.next_proposal += 1;
            entries.push(Entry { data: data.into(), context: self.context(id).into(), ..Default::default() });
            replies.push((id, reply));
        }
        let mut m = Message { from: self.raw.raft.id, ..Default::default() };
        m.set_msg_type(MessageType::MsgPropose);
        m.set_entries(entries.into());
        match self.raw.raft.step(m) {
            Ok(()) => self.pending.extend(replies),
            Err(e) => {
                for (_, reply) in replies {
                    let _ = reply.send(Err(ProposeError::Dropped(e.to_string())));
                }
            }
        }
    }

    fn propose_conf_change(&mut self, cc: ConfChangeV2, reply: ReplyTx) {
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(ProposeError::NotLeader { leader_hint: self.raw.raft.leader_id }));
            return;
        }
        let id = self.next_proposal;
        self.next_proposal += 1;
        match self.raw.propose_conf_change(self.context(id), cc) {
            Ok(()) => {
                self.pending.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(ProposeError::Dropped(e.to_string())));
            }
        }
    }

    fn context(&self, id: u64) -> Vec<u8> {
        let mut ctx = Vec::with_capacity(24);
        ctx.extend_from_slice(&self.config.id.to_be_bytes());
        ctx.extend_from_slice(&self.boot.to_be_bytes());
        ctx.extend_from_slice(&id.to_be_bytes());
        ctx
    }

    /// One Ready, in raft-rs's documented order.
    fn on_ready(&mut self) -> anyhow::Result<()> {
        let mut ready = self.raw.ready();

        // a. Messages that need no persistence first (a leader sends appends in parallel
        //    with its own fsync). A single-voter cluster has no peers to send to yet.
        self.send(ready.take_messages());

        // b. A snapshot from the leader replaces the state machine.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(&snap)?;
        }

        // Reads confirmed by a quorum wait for apply to reach their index.
        for rs in ready.take_read_states() {
            let id = rs.request_ctx.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(0);
            if let Some(tx) = self.reads.remove(&id) {
                self.ready_reads.push((rs.index, tx));
            }
        }

        // c. Persist new entries and hard state, fsync'd, before anything depending on them.
        //    Done before applying, so the durable commit index always covers what was applied:
        //    after a crash, assignments applied before it are known as such and never re-sent.
        let hs = ready.hs().cloned();
        if !ready.entries().is_empty() || hs.is_some() {
            self.store.persist(Persist { entries: ready.entries(), hard_state: hs.as_ref(), snapshot: None })?;
        }

        // d. Apply entries committed earlier (durable here and on a quorum).
        let committed = ready.take_committed_entries();
        self.apply(committed)?;

        // e. Messages that must follow persistence (votes, append responses).
        self.send(ready.take_persisted_messages());

        // f. Advance; the light ready carries the new commit index and more committed entries.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        self.send(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed)?;
        self.raw.advance_apply();

        // Waiters wake on the applied index, entries and installed snapshots alike.
        let applied = self.raw.raft.raft_log.applied;
        self.applied_tx.send_if_modified(|a| std::mem::replace(a, applied) != applied);
        for (index, tx) in std::mem::take(&mut self.ready_reads) {
            if index <= applied {
                let _ = tx.send(Ok(index));
            } else {
                self.ready_reads.push((index, tx));
            }
        }
        self.publish_status();
        // Answer proposals last: a caller that hears its command applied finds the status
        // (voters, applied index) and the applied watch saying so too.
        for (tx, reply, index) in self.replies.drain(..) {
            let _ = tx.send(Ok((reply, index)));
        }
        self.maybe_snapshot()?;
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        if !msgs.is_empty() {
            for to in self.transport.send(msgs) {
                self.raw.report_snapshot(to, SnapshotStatus::Failure);
            }
        }
    }

    fn install_snapshot(&mut self, snap: &Snapshot) -> anyhow::Result<()> {
        self.store.persist(Persist { entries: &[], hard_state: None, snapshot: Some(snap) })?;
        let state = State::from_json(&snap.data)?;
        for (id, addr) in &state.members {
            if *id != self.config.id {
                self.transport.set_peer(*id, Some(addr.clone()));
            }
        }
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = state;
        self.conf_state = snap.get_metadata().get_conf_state().clone();
        self.last_snapshot = snap.get_metadata().index;
        self.last_snapshot_bytes = snap.data.len() as u64;
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> anyhow::Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let shared = self.state.clone();
        let mut state = shared.write().unwrap_or_else(|e| e.into_inner());
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    let reply = if entry.data.is_empty() {
                        // The empty entry a new leader appends: nothing to apply.
                        state.applied_index = entry.index;
                        Reply::Done
                    } else {
                        match Command::decode(&entry.data) {
                            Ok(cmd) => {
                                let (reply, fx) = state.apply(entry.index, entry.term, cmd);
                                let replayed = entry.index <= self.replay_until;
                                for e in fx {
                                    if replayed && matches!(e, Effect::Dispatch(_) | Effect::Observe(_)) {
                                        continue;
                                    }
                                    let _ = self.effects.send(e);
                                }
                                reply
                            }
                            Err(e) => {
                                // Every node skips the same undecodable entry: still deterministic.
                                state.applied_index = entry.index;
                                Reply::Rejected(format!("undecodable command at index {}: {e}", entry.index))
                            }
                        }
                    };
                    if let Some(tx) = self.own_proposal(&entry.context) {
                        self.replies.push((tx, reply, entry.index));
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let reply = self.apply_conf_change(&mut state, &entry)?;
                    if let Some(tx) = self.own_proposal(&entry.context) {
                        self.replies.push((tx, reply, entry.index));
                    }
                }
            }
        }
        Ok(())
    }

    /// Applies a membership change: Raft's configuration, the replicated member addresses,
    /// the transport. A snapshot follows at once, so a node that joins later receives the
    /// whole configuration in a snapshot rather than replaying a log that lacks the initial one.
    fn apply_conf_change(&mut self, state: &mut State, entry: &Entry) -> anyhow::Result<Reply> {
        let cc = if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
            ConfChangeV2::parse_from_bytes(&entry.data)?
        } else {
            // A v1 change is one single change; expressed as v2, Raft applies it the same way.
            let v1 = ConfChange::parse_from_bytes(&entry.data)?;
            let single = raft::eraftpb::ConfChangeSingle {
                change_type: v1.change_type,
                node_id: v1.node_id,
                ..Default::default()
            };
            ConfChangeV2 { changes: vec![single].into(), context: v1.context, ..Default::default() }
        };
        state.applied_index = entry.index;
        let cs = match self.raw.apply_conf_change(&cc) {
            Ok(cs) => cs,
            // Raft refused it (for example removing the last voter): every node refuses alike.
            Err(e) => return Ok(Reply::Rejected(format!("membership change refused: {e}"))),
        };
        self.store.set_conf_state(&cs)?;
        let address = String::from_utf8_lossy(&cc.context).into_owned();
        for change in cc.get_changes() {
            let id = change.node_id;
            match change.get_change_type() {
                ConfChangeType::AddNode | ConfChangeType::AddLearnerNode => {
                    if !address.is_empty() {
                        state.members.insert(id, address.clone());
                    }
                    if id != self.config.id {
                        self.transport.set_peer(id, state.members.get(&id).cloned());
                    }
                }
                ConfChangeType::RemoveNode => {
                    state.members.remove(&id);
                    if id == self.config.id {
                        tracing::warn!("this node was removed from the cluster");
                    } else {
                        self.transport.set_peer(id, None);
                    }
                }
            }
        }
        tracing::info!(voters = ?cs.voters, learners = ?cs.learners, "membership changed");
        self.conf_state = cs;
        self.force_snapshot = true;
        Ok(Reply::Done)
    }

    fn own_proposal(&mut self, ctx: &[u8]) -> Option<ReplyTx> {
        if ctx.len() != 24 || ctx[..8] != self.config.id.to_be_bytes() || ctx[8..16] != self.boot.to_be_bytes() {
            return None;
        }
        let id = u64::from_be_bytes(ctx[16..].try_into().ok()?);
        self.pending.remove(&id)
    }

    fn publish_status(&mut self) {
        let raft = &self.raw.raft;
        let role = match raft.state {
            StateRole::Leader => Role::Leader,
            StateRole::Candidate | StateRole::PreCandidate => Role::Candidate,
            StateRole::Follower => Role::Follower,
        };
        let mut s = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if raft.state == StateRole::Leader && self.role != StateRole::Leader {
            s.leader_epoch += 1;
        }
        if raft.leader_id != 0 && raft.leader_id != s.leader_id {
            // The first leader this process learns of is not a change.
            if self.seen_leader {
                crate::metrics::LEADER_CHANGES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            self.seen_leader = true;
        }
        if raft.state != StateRole::Leader && self.role == StateRole::Leader {
            // Proposals still waiting may never commit under another leader.
            for (_, tx) in self.pending.drain() {
                let _ = tx.send(Err(ProposeError::NotLeader { leader_hint: raft.leader_id }));
            }
        }
        if raft.state != self.role {
            // Reads issued under the old role may never be confirmed: callers retry.
            for (_, tx) in self.reads.drain() {
                let _ = tx.send(Err(ProposeError::NotLeader { leader_hint: raft.leader_id }));
            }
        }
        s.matched = if raft.state == StateRole::Leader {
            raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect()
        } else {
            Vec::new()
        };
        s.last_index = raft.raft_log.last_index();
        self.role = raft.state;
        s.role = role;
        s.leader_id = raft.leader_id;
        s.term = raft.term;
        s.commit = raft.raft_log.committed;
        s.applied = raft.raft_log.applied;
        s.snapshot_index = self.last_snapshot;
        s.voters = self.conf_state.voters.clone();
    }

    fn maybe_snapshot(&mut self) -> anyhow::Result<()> {
        let applied = self.raw.raft.raft_log.applied;
        // Serializing the whole state stops the Ready loop while it runs, so its cost is kept
        // proportional to the work applied: at least one entry per KiB of the last snapshot
        // (a 10 MB state snapshots every 10,000 entries, not every 2,000).
        let every = self.config.snapshot_every.max(self.last_snapshot_bytes / SNAPSHOT_BYTES_PER_ENTRY);
        if applied <= self.last_snapshot || (applied < self.last_snapshot + every && !self.force_snapshot) {
            return Ok(());
        }
        self.force_snapshot = false;
        let data = {
            let state = self.state.read().unwrap_or_else(|e| e.into_inner());
            serde_json::to_vec(&*state)?
        };
        let len = data.len() as u64;
        self.store.save_snapshot(data, applied, &self.conf_state)?;
        self.last_snapshot = applied;
        self.last_snapshot_bytes = len;
        tracing::info!(index = applied, "saved state-machine snapshot and compacted the log");
        Ok(())
    }
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<RawNode<RaftStorage>>();
}
