//! A scheduler node put together: store, Raft loop, engine driver, dispatch, gRPC and HTTP.
//!
//! Every task it spawns watches one shutdown token; [`RunningServer::stop`] cancels it and
//! waits for the listeners to close and the Raft thread to finish its current Ready.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use baton_core::command::{Command, Op};
use baton_proto::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::hooks::{self, Hooks, HooksConfig};
use crate::api::{Api, http, now_ms};
use crate::dispatch::{Workers, run_effects};
use crate::engine::{Engine, View};
use crate::raft::transport::{MAX_FRAME_BYTES, PeerTransport};
use crate::raft::{NodeConfig, NodeHandle, Role, start_node};
use crate::store::{SledStore, Store};

/// How a node is started.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Raft node id.
    pub id: u64,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// gRPC listen address (port 0 picks a free port).
    pub grpc_addr: SocketAddr,
    /// HTTP listen address (port 0 picks a free port).
    pub http_addr: SocketAddr,
    /// Snapshot the state machine after this many applied entries.
    pub snapshot_every: u64,
    /// After a leader change, how long workers have to reconnect before their attempts are lost.
    pub worker_grace: Duration,
    /// The other members: node id -> gRPC address. Empty for a single-node cluster.
    pub peers: BTreeMap<u64, String>,
    /// The address other members and workers use to reach this node (default: `grpc_addr`).
    pub advertise: Option<String>,
    /// Interval of one Raft tick.
    pub tick: Duration,
    /// Ticks without a leader before a follower starts an election.
    pub election_ticks: usize,
    /// Start without a configuration, to be added to an existing cluster (`cluster join`).
    pub join: bool,
    /// Approver groups: group name -> member principals (`group:<name>` in approval steps).
    pub groups: BTreeMap<String, Vec<String>>,
    /// The chat-ops and Alertmanager hooks (secrets, user mapping, alert rules, webhooks).
    pub hooks: HooksConfig,
}

impl ServerConfig {
    /// Defaults for a node with its data under `data_dir`.
    pub fn new(data_dir: PathBuf) -> ServerConfig {
        ServerConfig {
            id: 1,
            data_dir,
            grpc_addr: ([127, 0, 0, 1], 7400).into(),
            http_addr: ([127, 0, 0, 1], 7401).into(),
            snapshot_every: 2_000,
            worker_grace: Duration::from_secs(10),
            peers: BTreeMap::new(),
            advertise: None,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            join: false,
            groups: BTreeMap::new(),
            hooks: HooksConfig::default(),
        }
    }
}

/// A started node.
pub struct RunningServer {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address.
    pub http_addr: SocketAddr,
    /// The API, for in-process callers (`baton dev` applies the runbook library through it).
    pub api: Api,
    node: NodeHandle,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    raft_thread: Option<std::thread::JoinHandle<()>>,
}

/// Opens the store, starts the Raft loop and every service.
pub async fn start(config: ServerConfig) -> anyhow::Result<RunningServer> {
    // The hooks' configuration (alert rules included) is checked before anything starts.
    let hooks =
        Arc::new(Hooks::new(config.hooks.clone()).map_err(|e| anyhow::anyhow!("chat-ops and alert hooks: {e}"))?);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    let store: Arc<dyn Store> = Arc::new(
        SledStore::open(&config.data_dir.join("store"))
            .with_context(|| format!("opening the store in {}", config.data_dir.display()))?,
    );
    anyhow::ensure!(config.id > 0, "the node id must be positive");
    anyhow::ensure!(!config.peers.contains_key(&config.id), "node {} is listed as its own peer", config.id);
    let (effects_tx, effects_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut initial_voters: Vec<u64> = config.peers.keys().copied().collect();
    initial_voters.push(config.id);
    let node_config = NodeConfig {
        id: config.id,
        snapshot_every: config.snapshot_every,
        tick: config.tick,
        election_ticks: config.election_ticks,
        initial_voters,
        join: config.join,
    };
    let (transport, links) = PeerTransport::new(&config.peers);
    let (node, raft_thread) =
        start_node(node_config, store.clone(), Box::new(transport), effects_tx).context("starting the Raft node")?;
    links.start(config.id, node.clone());
    let mut addresses = config.peers.clone();
    addresses.insert(config.id, config.advertise.clone().unwrap_or_else(|| config.grpc_addr.to_string()));
    for (id, addr) in &config.peers {
        let url = if addr.contains("://") { addr.clone() } else { format!("http://{addr}") };
        tonic::transport::Endpoint::from_shared(url).with_context(|| format!("peer {id} address {addr:?}"))?;
    }
    let workers = Arc::new(Workers::default());
    let (run_changes, _) = broadcast::channel(1024);
    let (output_changes, _) = broadcast::channel(1024);
    let api = Api {
        node: node.clone(),
        store,
        workers: workers.clone(),
        run_changes: run_changes.clone(),
        output_changes,
        addresses: Arc::new(addresses),
        channels: Arc::default(),
        groups: Arc::new(config.groups.clone()),
        hooks,
    };
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();

    tasks.push(tokio::spawn(run_effects(effects_rx, node.clone(), workers.clone(), run_changes)));
    tasks.push(tokio::spawn(hooks::run(api.clone(), shutdown.clone())));
    tasks.push(tokio::spawn(drive_engine(node.clone(), workers, config.worker_grace, shutdown.clone())));

    let grpc =
        TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding gRPC to {}", config.grpc_addr))?;
    let grpc_addr = grpc.local_addr()?;
    let http_listener =
        TcpListener::bind(config.http_addr).await.with_context(|| format!("binding HTTP to {}", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;

    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<pb::run_service_server::RunServiceServer<Api>>().await;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    const MAX_MESSAGE: usize = 4 * 1024 * 1024;
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            pb::runbook_service_server::RunbookServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            pb::schedule_service_server::ScheduleServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(pb::run_service_server::RunServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE))
        .add_service(
            pb::lock_service_server::LockServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            pb::worker_service_server::WorkerServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            pb::cluster_service_server::ClusterServiceServer::new(api.clone()).max_decoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            pb::peer_service_server::PeerServiceServer::new(api.clone())
                .max_decoding_message_size(MAX_FRAME_BYTES + 1024),
        );
    let token = shutdown.clone();
    tasks.push(tokio::spawn(async move {
        if let Err(e) = router.serve_with_incoming_shutdown(nodelay_incoming(grpc), token.cancelled()).await {
            tracing::error!("gRPC server stopped: {e}");
        }
    }));
    let token = shutdown.clone();
    let app = http::router(api.clone());
    tasks.push(tokio::spawn(async move {
        let serve = axum::serve(http_listener, app).with_graceful_shutdown(async move { token.cancelled().await });
        if let Err(e) = serve.await {
            tracing::error!("HTTP server stopped: {e}");
        }
    }));

    // A single-node cluster elects itself at once: wait for that, so callers can use it
    // immediately. Members of a larger cluster serve (and answer "no leader yet") until a
    // quorum is up. The status is published after every Ready; polling cannot miss it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while config.peers.is_empty() && node.status().leader_id == 0 {
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("no leader was elected within 30 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tracing::info!(%grpc_addr, %http_addr, "node {} serving", config.id);
    Ok(RunningServer { grpc_addr, http_addr, api, node, shutdown, tasks, raft_thread: Some(raft_thread) })
}

impl RunningServer {
    /// The node handle.
    pub fn node(&self) -> &NodeHandle {
        &self.node
    }

    /// Stops every task and the Raft thread.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        self.node.stop();
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
        if let Some(t) = self.raft_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

/// Runs the engine while this node leads: after every applied batch, at the next schedule tick,
/// and at least every 200 ms (worker loss, capacity freed by a disconnect).
async fn drive_engine(node: NodeHandle, workers: Arc<Workers>, grace: Duration, shutdown: CancellationToken) {
    let mut engine = Engine::new();
    let guards = Arc::new(crate::guards::Guards::default());
    let checker = Arc::new(crate::guards::Checker::new());
    let mut applied = node.subscribe_applied();
    let mut epoch = 0;
    let mut leader_since_ms = 0;
    let mut was_leader = false;
    loop {
        let status = node.status();
        if status.role != Role::Leader {
            engine.reset();
            guards.retain(&Default::default());
            if was_leader {
                // Workers must report to the new leader, not to a node that can no longer commit.
                workers.close_all();
                was_leader = false;
            }
        } else {
            was_leader = true;
            if status.leader_epoch != epoch {
                epoch = status.leader_epoch;
                leader_since_ms = now_ms();
                engine.reset();
            }
            let view = View {
                now_ms: now_ms(),
                leader_since_ms,
                workers: workers.slots(),
                departed: workers.departed(),
                worker_grace_ms: grace.as_millis() as i64,
                guards_passed: guards.passed(),
            };
            let ops = node.read(|s| engine.decide(s, &view));
            // Runs waiting at a guard gate: check their guards (a failure pauses the run).
            let gates = node.read(|s| {
                crate::engine::guard_gates(s, now_ms())
                    .into_iter()
                    .map(|(id, gate, list)| {
                        let ctx = crate::engine::template_context(&s.runs[&id]);
                        (id, gate, list, ctx)
                    })
                    .collect::<Vec<_>>()
            });
            guards.retain(&gates.iter().map(|(id, ..)| id.clone()).collect());
            let proposer = node.clone();
            let pause = move |run_id: String, gate: String, reason: String| {
                let node = proposer.clone();
                async move {
                    tracing::warn!(run = %run_id, "{reason}");
                    let op = Op::GuardFailed { run_id, gate, reason };
                    if let Err(e) = node.propose(&Command { at_ms: now_ms(), op }).await {
                        tracing::debug!("pausing a run for its guard was not applied: {e}");
                    }
                }
            };
            crate::guards::check_gates(guards.clone(), checker.clone(), gates, pause).await;
            for op in ops {
                let node = node.clone();
                tokio::spawn(async move {
                    let name = op.name();
                    if let Err(e) = node.propose(&Command { at_ms: now_ms(), op }).await {
                        tracing::debug!(op = name, "engine proposal not applied: {e}");
                    }
                });
            }
        }
        let mut wait = Duration::from_millis(200);
        // Only the leader fires ticks: a follower waking for an overdue one would spin.
        if status.role == Role::Leader
            && let Some(due) = node.read(|s| engine.next_due_ms(s))
        {
            let until = (due - now_ms()).max(0) as u64;
            wait = wait.min(Duration::from_millis(until));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            // One decision covers every batch applied meanwhile (the watch keeps only the
            // latest index): under load, batches arrive faster than decisions are made. The
            // node handle holds the sender, so this never fails.
            _ = applied.changed() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Accepted gRPC connections with Nagle's algorithm off: tonic does not apply its own
/// `tcp_nodelay` to a caller-supplied listener, and with Nagle on every small server-to-worker
/// message (an assignment, an acknowledgement) waited for the worker's delayed ACK, about
/// 40 ms (docs/BENCHMARKS.md: W1 went from 41 to 161 runs/s with this).
fn nodelay_incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}
