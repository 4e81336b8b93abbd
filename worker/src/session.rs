//! The worker's session with the cluster.
//!
//! Invariants kept here:
//! - an attempt id is run at most once by this process: a second assignment with an id it has
//!   already seen, or one fenced by an older Raft term than it has seen, is refused;
//! - a result is kept until the cluster acknowledges it (after committing it), and re-sent on
//!   every reconnect;
//! - on every (re)connect the worker tells the cluster which attempts it is running, so the
//!   cluster can declare the others lost instead of guessing.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_proto::v1 as pb;
use baton_proto::v1::worker_service_client::WorkerServiceClient;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::exec::{ExecRequest, ExecStatus, OutputChunk, Stream, run_exec};

/// How many attempt ids the worker remembers to refuse duplicates.
const SEEN_MEMORY: usize = 100_000;

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Scheduler addresses (`http://host:port`), tried in turn.
    pub servers: Vec<String>,
    /// Worker id, unique in the cluster and stable across restarts.
    pub id: String,
    /// Labels steps select workers by.
    pub labels: BTreeMap<String, String>,
    /// Attempts run at once.
    pub capacity: u32,
    /// Bytes of each stream's tail kept in a result.
    pub tail_bytes: usize,
    /// Between SIGTERM and SIGKILL when an attempt is timed out or cancelled.
    pub kill_grace: Duration,
}

impl WorkerConfig {
    /// Defaults for a worker called `id` talking to `servers`.
    pub fn new(id: impl Into<String>, servers: Vec<String>) -> WorkerConfig {
        WorkerConfig {
            servers,
            id: id.into(),
            labels: BTreeMap::new(),
            capacity: 4,
            tail_bytes: 16 * 1024,
            kill_grace: Duration::from_secs(5),
        }
    }
}

#[derive(Default)]
struct Memory {
    seen: HashSet<u64>,
    seen_order: VecDeque<u64>,
    max_term: u64,
    running: HashMap<u64, CancellationToken>,
    unacked: BTreeMap<u64, pb::AttemptResult>,
    /// The current session's outbound stream, if connected.
    out: Option<mpsc::Sender<pb::WorkerMessage>>,
}

impl Memory {
    fn remember(&mut self, id: u64) {
        self.seen.insert(id);
        self.seen_order.push_back(id);
        while self.seen_order.len() > SEEN_MEMORY {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }
}

type Shared = Arc<Mutex<Memory>>;

fn lock(m: &Shared) -> std::sync::MutexGuard<'_, Memory> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends on the current session if there is one (waiting for room: backpressure reaches the
/// process's pipes). While disconnected, output is dropped (the result keeps the tails) and
/// results wait in `unacked` for the next registration.
async fn send(m: &Shared, msg: pb::worker_message::Msg) {
    let out = lock(m).out.clone();
    if let Some(out) = out {
        let _ = out.send(pb::WorkerMessage { msg: Some(msg) }).await;
    }
}

/// Runs the worker until `shutdown`: connect, serve, reconnect with backoff.
pub async fn run_worker(config: WorkerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    anyhow::ensure!(!config.servers.is_empty(), "no scheduler address given");
    let memory: Shared = Arc::default();
    let mut backoff = Duration::from_millis(100);
    let mut next_server = 0;
    loop {
        let server = config.servers[next_server % config.servers.len()].clone();
        next_server += 1;
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = session(&config, &server, &memory) => r,
        };
        lock(&memory).out = None;
        match result {
            Ok(()) => {
                tracing::info!(server, "session ended; reconnecting");
                backoff = Duration::from_millis(100);
            }
            Err(e) => tracing::warn!(server, "session failed: {e:#}; retrying in {backoff:?}"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    for token in lock(&memory).running.values() {
        token.cancel();
    }
    Ok(())
}

/// One session: returns when the stream ends or fails.
async fn session(config: &WorkerConfig, server: &str, memory: &Shared) -> anyhow::Result<()> {
    let mut client = WorkerServiceClient::connect(server.to_string()).await?;
    let (tx, rx) = mpsc::channel::<pb::WorkerMessage>(1024);
    let register = {
        let m = lock(memory);
        pb::Register {
            worker_id: config.id.clone(),
            labels: config.labels.clone().into_iter().collect(),
            capacity: config.capacity,
            running_attempts: m.running.keys().copied().collect(),
            unacked_results: m.unacked.values().cloned().collect(),
        }
    };
    tx.send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Register(register)) }).await?;
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let heartbeat = tx.clone();
    lock(memory).out = Some(tx);
    let mut interval = Duration::from_secs(2);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let msg = msg?;
                match msg.msg {
                    Some(pb::server_message::Msg::Registered(r)) => {
                        tracing::info!(server, term = r.term, "registered with the cluster");
                        let mut m = lock(memory);
                        m.max_term = m.max_term.max(r.term);
                        drop(m);
                        let ms = u64::from(r.heartbeat_interval_ms.max(100));
                        if Duration::from_millis(ms) != interval {
                            interval = Duration::from_millis(ms);
                            ticker = tokio::time::interval(interval);
                        }
                    }
                    Some(pb::server_message::Msg::Assign(a)) => accept(config, memory, a),
                    Some(pb::server_message::Msg::Cancel(c)) => {
                        if let Some(token) = lock(memory).running.get(&c.attempt_id) {
                            tracing::info!(attempt = c.attempt_id, "cancel requested");
                            token.cancel();
                        }
                    }
                    Some(pb::server_message::Msg::Ack(a)) => {
                        lock(memory).unacked.remove(&a.attempt_id);
                    }
                    None => {}
                }
            }
            _ = ticker.tick() => {
                let hb = pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat {})) };
                if heartbeat.send(hb).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Accepts an assignment unless it was seen before or is fenced below a newer term.
fn accept(config: &WorkerConfig, memory: &Shared, a: pb::Assignment) {
    let fence_term = a.fence.map(|f| f.term).unwrap_or(0);
    let token = CancellationToken::new();
    {
        let mut m = lock(memory);
        if m.seen.contains(&a.attempt_id) {
            tracing::warn!(attempt = a.attempt_id, "refusing an attempt this worker has already seen");
            return;
        }
        if fence_term < m.max_term {
            tracing::warn!(attempt = a.attempt_id, fence_term, max_term = m.max_term, "refusing a stale assignment");
            return;
        }
        m.max_term = fence_term;
        m.remember(a.attempt_id);
        m.running.insert(a.attempt_id, token.clone());
    }
    let config = config.clone();
    let memory = memory.clone();
    tokio::spawn(async move { execute(config, memory, a, token).await });
}

async fn execute(config: WorkerConfig, memory: Shared, a: pb::Assignment, token: CancellationToken) {
    let attempt_id = a.attempt_id;
    tracing::info!(attempt = attempt_id, run = a.run_id, step = a.step_id, argv = ?a.argv, "starting attempt");
    send(&memory, pb::worker_message::Msg::Started(pb::AttemptStarted { attempt_id, at_ms: now_ms() })).await;
    let req = ExecRequest {
        argv: a.argv.clone(),
        env: a.env.clone().into_iter().collect(),
        workdir: (!a.workdir.is_empty()).then(|| PathBuf::from(&a.workdir)),
        timeout: (a.timeout_ms > 0).then(|| Duration::from_millis(a.timeout_ms)),
        kill_grace: config.kill_grace,
        tail_bytes: config.tail_bytes,
    };
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<OutputChunk>(64);
    let forward = {
        let memory = memory.clone();
        let (run_id, step_id) = (a.run_id.clone(), a.step_id.clone());
        tokio::spawn(async move {
            let mut chunk_no = 0u32;
            while let Some(c) = chunk_rx.recv().await {
                let stream = match c.stream {
                    Stream::Stdout => pb::Stream::Stdout,
                    Stream::Stderr => pb::Stream::Stderr,
                };
                send(
                    &memory,
                    pb::worker_message::Msg::Output(pb::OutputChunk {
                        attempt_id,
                        run_id: run_id.clone(),
                        step_id: step_id.clone(),
                        chunk_no,
                        stream: stream as i32,
                        data: c.data,
                        at_ms: now_ms(),
                    }),
                )
                .await;
                chunk_no = chunk_no.wrapping_add(1);
            }
        })
    };
    let outcome = run_exec(req, chunk_tx, token).await;
    let _ = forward.await;
    let state = match outcome.status {
        ExecStatus::Succeeded => pb::AttemptState::Succeeded,
        ExecStatus::Failed | ExecStatus::SpawnFailed => pb::AttemptState::Failed,
        ExecStatus::TimedOut => pb::AttemptState::TimedOut,
        ExecStatus::Cancelled => pb::AttemptState::Cancelled,
    };
    tracing::info!(attempt = attempt_id, state = state.as_str_name(), exit_code = ?outcome.exit_code, "attempt finished");
    let result = pb::AttemptResult {
        attempt_id,
        run_id: a.run_id,
        step_id: a.step_id,
        state: state as i32,
        exit_code: outcome.exit_code,
        stdout_tail: outcome.stdout_tail,
        stderr_tail: outcome.stderr_tail,
        outputs: outcome.outputs.into_iter().collect(),
        error: outcome.error.unwrap_or_default(),
        finished_at_ms: now_ms(),
    };
    {
        let mut m = lock(&memory);
        m.running.remove(&attempt_id);
        m.unacked.insert(attempt_id, result.clone());
    }
    send(&memory, pb::worker_message::Msg::Result(result)).await;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
