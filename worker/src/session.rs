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
use tonic::transport::Endpoint;

use crate::exec::{ExecOutcome, ExecRequest, ExecStatus, OutputChunk, SecretValues, Stream, resolve_secrets, run_exec};

/// How many attempt ids the worker remembers to refuse duplicates.
const SEEN_MEMORY: usize = 100_000;
/// A result not acknowledged after this long is sent again.
const RESEND_AFTER: Duration = Duration::from_secs(5);

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
    /// Assignments accepted beyond `capacity`, queued here (first come, first run) until a
    /// slot frees, so a slot never waits for a round trip to the cluster. A queued attempt
    /// is not started: its step timeout starts when it runs, and a cancel drops it.
    pub prefetch: u32,
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
            prefetch: 0,
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
    /// Results not yet acknowledged, with when they were last sent.
    unacked: BTreeMap<u64, (pb::AttemptResult, std::time::Instant)>,
    /// The current session's outbound stream, if connected.
    out: Option<mpsc::Sender<pb::WorkerMessage>>,
    /// Slots free to start an attempt (`None`: no limit). An attempt accepted while none is
    /// free waits in `queue`; the attempt that frees a slot starts the oldest queued one.
    free_slots: Option<u32>,
    /// Accepted, not started: first come, first run. Their tokens are in `running`.
    queue: VecDeque<pb::Assignment>,
    /// Random per process: lets the cluster tell "never received" from "ran in a process
    /// that is gone".
    boot: u64,
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
    anyhow::ensure!(config.capacity > 0, "capacity must be at least 1");
    let memory: Shared = Arc::default();
    {
        let mut m = lock(&memory);
        m.free_slots = Some(config.capacity);
        m.boot = boot_id();
    }
    // Every server is tried in turn, 50 ms apart; only after a whole round failed does the
    // worker back off (100 ms doubling to 1 s). A failover therefore costs the worker about
    // one election, not a long backoff: its running attempts must be reported to the new
    // leader within the leader's grace period.
    let mut backoff = Duration::from_millis(100);
    let mut next_server = 0;
    let mut failed_in_round = 0;
    let mut hint: Option<String> = None;
    loop {
        let server = hint.take().unwrap_or_else(|| {
            next_server += 1;
            config.servers[(next_server - 1) % config.servers.len()].clone()
        });
        let mut registered = false;
        let result = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = session(&config, &server, &memory, &mut registered) => r,
        };
        lock(&memory).out = None;
        if registered {
            backoff = Duration::from_millis(100);
            failed_in_round = 0;
        }
        let wait = match result {
            Ok(()) => {
                tracing::info!(server, "session ended; reconnecting");
                Duration::from_millis(50)
            }
            Err(e) => {
                // A follower names the leader: go there at once.
                if let Some(addr) = leader_hint(&e) {
                    tracing::info!(server, leader = addr, "not the leader; following the hint");
                    hint = Some(if addr.contains("://") { addr } else { format!("http://{addr}") });
                    continue;
                }
                failed_in_round += 1;
                if failed_in_round < config.servers.len() {
                    tracing::debug!(server, "session failed: {e:#}; trying the next server");
                    Duration::from_millis(50)
                } else {
                    tracing::warn!(server, "session failed: {e:#}; retrying in {backoff:?}");
                    failed_in_round = 0;
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    wait
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    for token in lock(&memory).running.values() {
        token.cancel();
    }
    Ok(())
}

/// The leader address a follower put in its refusal, if any.
fn leader_hint(e: &anyhow::Error) -> Option<String> {
    let status = e.chain().find_map(|c| c.downcast_ref::<tonic::Status>())?;
    let addr = status.metadata().get("baton-leader-addr")?.to_str().ok()?;
    (!addr.is_empty()).then(|| addr.to_string())
}

/// One session: returns when the stream ends or fails.
async fn session(config: &WorkerConfig, server: &str, memory: &Shared, registered: &mut bool) -> anyhow::Result<()> {
    // HTTP/2 keepalives notice a dead server or a cut network even while nothing is sent.
    let channel = Endpoint::from_shared(server.to_string())?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .connect()
        .await?;
    let mut client = WorkerServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::WorkerMessage>(1024);
    {
        // Under one lock: the report of running attempts and pending results, and the switch
        // to this session, so a result finishing meanwhile is either reported or sent here.
        let mut m = lock(memory);
        let register = pb::Register {
            worker_id: config.id.clone(),
            labels: config.labels.clone().into_iter().collect(),
            capacity: config.capacity,
            prefetch: config.prefetch,
            boot_id: m.boot,
            running_attempts: m.running.keys().copied().collect(),
            unacked_results: m.unacked.values().map(|(r, _)| r.clone()).collect(),
        };
        let now = std::time::Instant::now();
        for (_, sent) in m.unacked.values_mut() {
            *sent = now;
        }
        tx.try_send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Register(register)) })?;
        m.out = Some(tx.clone());
    }
    let mut inbound = client.session(ReceiverStream::new(rx)).await?.into_inner();
    let heartbeat = tx;
    let mut interval = Duration::from_secs(2);
    let mut ticker = tokio::time::interval(interval);
    loop {
        tokio::select! {
            msg = inbound.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let msg = msg?;
                match msg.msg {
                    Some(pb::server_message::Msg::Registered(r)) => {
                        *registered = true;
                        tracing::info!(server, term = r.term, "registered with the cluster");
                        let mut m = lock(memory);
                        m.max_term = m.max_term.max(r.term);
                        let term = m.max_term;
                        drop(m);
                        // Says at once that this worker now refuses assignments of older terms.
                        let hb = pb::Heartbeat { term };
                        let _ = heartbeat.try_send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(hb)) });
                        let ms = u64::from(r.heartbeat_interval_ms.max(100));
                        if Duration::from_millis(ms) != interval {
                            interval = Duration::from_millis(ms);
                            ticker = tokio::time::interval(interval);
                        }
                    }
                    Some(pb::server_message::Msg::Assign(a)) => {
                        accept(config, memory, a);
                    }
                    Some(pb::server_message::Msg::Cancel(c)) => cancel(memory, c.attempt_id),
                    Some(pb::server_message::Msg::Ack(a)) => {
                        lock(memory).unacked.remove(&a.attempt_id);
                    }
                    None => {}
                }
            }
            _ = ticker.tick() => {
                let term = lock(memory).max_term;
                let hb = pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Heartbeat(pb::Heartbeat { term })) };
                if heartbeat.try_send(hb).is_err() {
                    anyhow::bail!("the session is not draining (server unresponsive)");
                }
                // A result whose acknowledgement has not come is sent again; the cluster
                // ignores duplicates and acknowledges again.
                let stale: Vec<pb::AttemptResult> = {
                    let mut m = lock(memory);
                    let now = std::time::Instant::now();
                    m.unacked
                        .values_mut()
                        .filter(|(_, sent)| now.duration_since(*sent) >= RESEND_AFTER)
                        .map(|(r, sent)| {
                            *sent = now;
                            r.clone()
                        })
                        .collect()
                };
                for r in stale {
                    let _ = heartbeat.try_send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Result(r)) });
                }
            }
        }
    }
}

/// Accepts an assignment unless it was seen before or is fenced below a newer term; says which.
fn accept(config: &WorkerConfig, memory: &Shared, a: pb::Assignment) -> bool {
    let fence_term = a.fence.map(|f| f.term).unwrap_or(0);
    let token = CancellationToken::new();
    {
        let mut m = lock(memory);
        if m.seen.contains(&a.attempt_id) {
            tracing::warn!(attempt = a.attempt_id, "refusing an attempt this worker has already seen");
            return false;
        }
        if fence_term < m.max_term {
            // Say so, so the attempt does not wait forever: it did not run.
            tracing::warn!(attempt = a.attempt_id, fence_term, max_term = m.max_term, "refusing a stale assignment");
            let refusal = pb::AttemptResult {
                attempt_id: a.attempt_id,
                run_id: a.run_id.clone(),
                step_id: a.step_id.clone(),
                state: pb::AttemptState::Failed as i32,
                error: format!(
                    "refused by worker {}: fenced by term {fence_term}, older than term {}",
                    config.id, m.max_term
                ),
                finished_at_ms: now_ms(),
                ..Default::default()
            };
            m.unacked.insert(a.attempt_id, (refusal.clone(), std::time::Instant::now()));
            if let Some(out) = &m.out {
                let _ = out.try_send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Result(refusal)) });
            }
            return false;
        }
        m.max_term = fence_term;
        m.remember(a.attempt_id);
        m.running.insert(a.attempt_id, token.clone());
        // Under the same lock as a finishing attempt's look at the queue: no slot is missed.
        match &mut m.free_slots {
            Some(0) => {
                tracing::info!(attempt = a.attempt_id, queued = m.queue.len() + 1, "queued until a slot frees");
                m.queue.push_back(a);
                return true;
            }
            Some(n) => *n -= 1,
            None => {}
        }
    }
    let config = config.clone();
    let memory = memory.clone();
    tokio::spawn(async move { execute(config, memory, a, token).await });
    true
}

/// Stops an attempt: a queued one is dropped unstarted (and reported cancelled), a running one
/// is asked to stop.
fn cancel(memory: &Shared, attempt_id: u64) {
    let mut m = lock(memory);
    if let Some(pos) = m.queue.iter().position(|a| a.attempt_id == attempt_id) {
        let a = m.queue.remove(pos).expect("found above");
        m.running.remove(&attempt_id);
        tracing::info!(attempt = attempt_id, "cancelled before it started");
        let result = pb::AttemptResult {
            attempt_id,
            run_id: a.run_id,
            step_id: a.step_id,
            state: pb::AttemptState::Cancelled as i32,
            error: "cancelled before it started".into(),
            finished_at_ms: now_ms(),
            ..Default::default()
        };
        m.unacked.insert(attempt_id, (result.clone(), std::time::Instant::now()));
        // If the session cannot take it now, the heartbeat re-sends it.
        if let Some(out) = &m.out {
            let _ = out.try_send(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Result(result)) });
        }
    } else if let Some(token) = m.running.get(&attempt_id) {
        tracing::info!(attempt = attempt_id, "cancel requested");
        token.cancel();
    }
}

/// Runs an attempt, then the queued ones its slot serves, oldest first.
async fn execute(config: WorkerConfig, memory: Shared, mut a: pb::Assignment, mut token: CancellationToken) {
    loop {
        run_one(&config, &memory, a, token).await;
        let next = {
            let mut m = lock(&memory);
            match m.queue.pop_front() {
                Some(next) => {
                    let token = m.running.get(&next.attempt_id).cloned().unwrap_or_default();
                    Some((next, token))
                }
                None => {
                    if let Some(n) = &mut m.free_slots {
                        *n += 1;
                    }
                    None
                }
            }
        };
        match next {
            Some((next, next_token)) => (a, token) = (next, next_token),
            None => return,
        }
    }
}

async fn run_one(config: &WorkerConfig, memory: &Shared, a: pb::Assignment, token: CancellationToken) {
    let attempt_id = a.attempt_id;
    tracing::info!(attempt = attempt_id, run = a.run_id, step = a.step_id, argv = ?a.argv, "starting attempt");
    send(memory, pb::worker_message::Msg::Started(pb::AttemptStarted { attempt_id, at_ms: now_ms() })).await;
    let mut req = ExecRequest {
        argv: a.argv.clone(),
        env: a.env.clone().into_iter().collect(),
        workdir: (!a.workdir.is_empty()).then(|| PathBuf::from(&a.workdir)),
        timeout: (a.timeout_ms > 0).then(|| Duration::from_millis(a.timeout_ms)),
        kill_grace: config.kill_grace,
        tail_bytes: config.tail_bytes,
        redact: SecretValues::default(),
    };
    // Secrets are read here, on this worker, just before the run; the assignment (and so the
    // Raft log and the run record) only ever holds their references.
    let resolved = resolve_secrets(&mut req);
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
    let outcome = match resolved {
        Ok(()) => run_exec(req, chunk_tx, token).await,
        Err(error) => {
            tracing::warn!(attempt = attempt_id, %error, "cannot resolve the step's secrets");
            drop(chunk_tx);
            ExecOutcome::spawn_failed(error)
        }
    };
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
    finish(memory, result).await;
}

/// Keeps a result until it is acknowledged, and reports it.
async fn finish(memory: &Shared, result: pb::AttemptResult) {
    {
        let mut m = lock(memory);
        m.running.remove(&result.attempt_id);
        m.unacked.insert(result.attempt_id, (result.clone(), std::time::Instant::now()));
    }
    send(memory, pb::worker_message::Msg::Result(result)).await;
}

/// A random, non-zero id for this process.
fn boot_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_i64(now_ms());
    h.finish().max(1)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(attempt_id: u64, term: u64) -> pb::Assignment {
        pb::Assignment {
            attempt_id,
            run_id: "r".into(),
            step_id: "s".into(),
            fence: Some(pb::Fence { term, index: attempt_id }),
            argv: vec!["true".into()],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_attempt_runs_at_most_once_and_stale_fences_are_refused() {
        let config = WorkerConfig::new("w", vec!["http://127.0.0.1:1".into()]);
        let memory: Shared = Arc::default();
        assert!(accept(&config, &memory, assignment(7, 2)));
        assert!(!accept(&config, &memory, assignment(7, 2)), "the same attempt id twice");
        assert!(!accept(&config, &memory, assignment(8, 1)), "fenced by an older term");
        assert!(accept(&config, &memory, assignment(9, 3)));
        assert!(!accept(&config, &memory, assignment(10, 2)), "a newer term was seen");
        // Results wait for an acknowledgement.
        for _ in 0..200 {
            if lock(&memory).unacked.len() == 4 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let m = lock(&memory);
        // 7 and 9 ran; 8 and 10 were refused and reported as failed without running.
        assert_eq!(m.unacked.keys().copied().collect::<Vec<_>>(), vec![7, 8, 9, 10]);
        assert!(m.unacked[&8].0.error.contains("refused"));
        assert_eq!(m.unacked[&7].0.state, pb::AttemptState::Succeeded as i32);
        assert!(m.running.is_empty());
    }

    #[tokio::test]
    async fn prefetched_attempts_wait_for_a_slot_and_a_cancel_drops_them_unstarted() {
        let config = WorkerConfig::new("w", vec!["http://127.0.0.1:1".into()]);
        let memory: Shared = Arc::default();
        lock(&memory).free_slots = Some(1);
        let (out, mut sent) = mpsc::channel(64);
        lock(&memory).out = Some(out);
        let mut long = assignment(1, 1);
        long.argv = vec!["sleep".into(), "30".into()];
        assert!(accept(&config, &memory, long));
        for id in [2, 3, 4] {
            assert!(accept(&config, &memory, assignment(id, 1)));
        }
        // 1 starts; 2, 3 and 4 wait for the only slot and are held, not started.
        let first = sent.recv().await.unwrap();
        assert!(matches!(first.msg, Some(pb::worker_message::Msg::Started(s)) if s.attempt_id == 1));
        assert_eq!(lock(&memory).running.len(), 4, "queued attempts are held (reported on registering)");
        cancel(&memory, 3);
        let next = sent.recv().await.unwrap();
        let Some(pb::worker_message::Msg::Result(r)) = next.msg else { panic!("expected a result, got {next:?}") };
        assert_eq!((r.attempt_id, r.state), (3, pb::AttemptState::Cancelled as i32));
        assert!(r.error.contains("before it started"), "{}", r.error);
        // Cancelling 1 frees the slot: 2 then 4 run, in the order they came.
        cancel(&memory, 1);
        let mut started = Vec::new();
        while started.len() < 2 {
            if let Some(pb::worker_message::Msg::Started(s)) = sent.recv().await.unwrap().msg {
                started.push(s.attempt_id);
            }
        }
        assert_eq!(started, [2, 4]);
    }
}
