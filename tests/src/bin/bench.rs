//! Baton's benchmark command (design §10, issue 4).
//!
//! ```text
//! cargo build --release -p baton -p baton-tests --bin baton --bin bench
//! target/release/bench all                     # every Baton workload, one JSON line each
//! target/release/bench w1 --runs 1000          # one workload, smaller
//! target/release/bench etcd-w2 etcd-w5         # the etcd peer (needs `etcd` on PATH or --etcd)
//! ```
//!
//! Each workload starts what it needs on loopback (three `baton server` processes with their
//! stores fsyncing, one `baton worker`, the gRPC load clients, all on this machine), runs a
//! bounded load, prints ONE JSON line on stdout and stops every process it started (on drop,
//! on a panic, and on SIGINT/SIGTERM). Progress goes to stderr. Benchmarks never pass or fail
//! on time: the exit code is non-zero only when a workload could not run or a correctness
//! check failed (a run that did not complete exactly once), and the JSON says which.
//!
//! Workloads: `w1` (dispatch throughput), `w1-lat` (steady-rate latency), `w2` (commit latency
//! and throughput, no worker), `w4` (cron scale), `w5` (leader SIGKILL under load), `w6`
//! (footprint), `all` (all of them), and the etcd peer's `etcd-w2`, `etcd-w5` (`etcd`: both),
//! driven by the same Rust gRPC client code so the client side costs the same.
//! `docs/BENCHMARKS.md` explains every number.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use baton_proto::v1 as pb;
use serde_json::{Value, json};
use tonic::transport::{Channel, Endpoint};

const USAGE: &str = "usage: bench WORKLOAD... [options]
workloads: w1 w1-lat w2 w4 w5 w6 all | etcd-w2 etcd-w5 etcd
options:
  --runs N        runs (or etcd puts) of the main phase: W1 5000, W2 5000 (16 clients), W5 3000,
                  W6 5000, etcd-w2 5000, etcd-w5 10000
  --lat-runs N    W1-lat runs (default 200)
  --seq N         W2 / etcd-w2 sequential requests from one client (default 1000)
  --rate R        W1-lat triggers per second (default 50)
  --clients N     concurrent clients (default 16)
  --capacity N    worker capacity (default 2)
  --prefetch N    assignments the worker queues beyond its capacity (default 0)
  --schedules N   W4 schedules (default 100000); --due N of them in the same second (default 1000)
  --spread        clients spread over all nodes instead of all at the leader
  --baton PATH    the baton binary (default: next to this one, or $BATON_BIN)
  --etcd PATH     the etcd binary (default: etcd on PATH)
  --dir PATH      keep data directories and logs there (default: a temp dir, removed)
  --timeline PATH write W1's run timelines there (CSV: created, assigned, started, finished, done)";

// ------------------------------------------------------------------------------------------
// Processes: every child is registered so a signal or a panic cannot leave one behind.

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Client errors printed so far (the first few are shown, the rest only counted).
static ERRORS_SHOWN: AtomicUsize = AtomicUsize::new(0);

fn show_error(msg: impl std::fmt::Display) {
    if ERRORS_SHOWN.fetch_add(1, Ordering::Relaxed) < 5 {
        progress(msg);
    }
}

fn pids() -> std::sync::MutexGuard<'static, Vec<u32>> {
    PIDS.lock().unwrap_or_else(|e| e.into_inner())
}

fn kill_all_registered() {
    let all: Vec<u32> = pids().drain(..).collect();
    for pid in all {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).stderr(Stdio::null()).status();
    }
}

/// A child process, SIGKILLed when dropped.
struct Proc {
    child: Option<Child>,
    pid: u32,
}

impl Proc {
    fn spawn(cmd: &mut Command) -> Result<Proc> {
        let child = cmd.spawn().with_context(|| format!("spawning {cmd:?}"))?;
        let pid = child.id();
        pids().push(pid);
        Ok(Proc { child: Some(child), pid })
    }

    fn stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.as_mut().and_then(|c| c.stdout.take())
    }

    /// SIGKILL and reap.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            pids().retain(|p| *p != self.pid);
        }
    }

    fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(|c| c.try_wait()) {
            Some(Ok(Some(status))) => Some(status.to_string()),
            _ => None,
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The lines a child prints on stdout, read by a thread so the pipe never fills.
fn line_reader(out: std::process::ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                // Nobody listens any more: keep draining.
                continue;
            }
        }
    });
    rx
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// (apparent bytes, allocated bytes) of every file under `dir`.
fn dir_bytes(dir: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let mut total = (0, 0);
    let Ok(entries) = std::fs::read_dir(dir) else { return total };
    for e in entries.flatten() {
        let Ok(md) = e.metadata() else { continue };
        if md.is_dir() {
            let (a, b) = dir_bytes(&e.path());
            total = (total.0 + a, total.1 + b);
        } else {
            total = (total.0 + md.len(), total.1 + md.blocks() * 512);
        }
    }
    total
}

fn unix_ms() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    r2(d.as_secs_f64() * 1000.0)
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Nearest-rank percentile (`p` in 0..=100) of unsorted values; null when empty.
fn pct(values: &[f64], p: f64) -> Value {
    if values.is_empty() {
        return Value::Null;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    json!(r2(v[rank.min(v.len()) - 1]))
}

fn progress(msg: impl std::fmt::Display) {
    eprintln!("bench: {msg}");
}

// ------------------------------------------------------------------------------------------
// gRPC helpers

async fn channel(addr: &str) -> Result<Channel> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true);
    Ok(ep.connect_lazy())
}

fn runs_client(ch: Channel) -> pb::run_service_client::RunServiceClient<Channel> {
    pb::run_service_client::RunServiceClient::new(ch).max_decoding_message_size(1 << 30)
}

async fn status(addr: &str) -> Result<pb::ClusterStatus> {
    let mut c = pb::cluster_service_client::ClusterServiceClient::new(channel(addr).await?);
    let req = tonic::Request::new(pb::ClusterStatusRequest {});
    Ok(tokio::time::timeout(Duration::from_secs(2), c.status(req)).await??.into_inner())
}

/// `GET path` over HTTP/1.0 (no chunking), the body.
async fn http_get(addr: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
        anyhow::Ok(body)
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await?
}

/// Runs by state from a node's `/metrics` (its applied state).
async fn run_counts(http: &str) -> Result<BTreeMap<String, u64>> {
    let body = http_get(http, "/metrics").await?;
    let mut out = BTreeMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("baton_runs{state=\"")
            && let Some((state, n)) = rest.split_once("\"} ")
        {
            out.insert(state.to_string(), n.trim().parse().unwrap_or(0));
        }
    }
    Ok(out)
}

const TERMINAL: [&str; 5] = ["succeeded", "failed", "cancelled", "needs_attention", "missed"];

fn terminal(counts: &BTreeMap<String, u64>) -> u64 {
    TERMINAL.iter().map(|s| counts.get(*s).copied().unwrap_or(0)).sum()
}

// ------------------------------------------------------------------------------------------
// A Baton cluster: three `baton server` processes and at most one worker.

const RUNBOOK: &str = "bench-noop";
/// The same no-op runbook under another name, for W5's probe writes (kept out of the W5 runs).
const PROBE_RUNBOOK: &str = "bench-probe";
const RUNBOOK_YAML: &str = "name: bench-noop
description: One no-op step, for the benchmarks.
steps:
  - id: noop
    action: exec
    timeout: 30s
    with:
      command: [\"true\"]
";

struct BatonNode {
    id: u64,
    addr: String,
    http: String,
    dir: PathBuf,
    proc: Option<Proc>,
    /// Spawn to "listening".
    startup: Duration,
}

struct Baton {
    bin: PathBuf,
    nodes: Vec<BatonNode>,
    worker: Option<Proc>,
    dir: PathBuf,
    /// Spawn of the first node to a leader known by a majority.
    leader_after: Duration,
}

impl Baton {
    /// Starts three nodes at once (each in `dir/nN`) and waits for a leader.
    async fn start(bin: &Path, dir: &Path) -> Result<Baton> {
        std::fs::create_dir_all(dir)?;
        let addrs: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let t0 = Instant::now();
        let mut nodes = Vec::new();
        let mut readers = Vec::new();
        for id in 1..=3u64 {
            let data_dir = dir.join(format!("n{id}"));
            let http = format!("127.0.0.1:{}", free_port());
            let addr = addrs[(id - 1) as usize].clone();
            let log = std::fs::File::create(dir.join(format!("n{id}.log")))?;
            let mut cmd = Command::new(bin);
            cmd.args(["server", "--id", &id.to_string(), "--data-dir"])
                .arg(&data_dir)
                .args(["--grpc", &addr, "--http", &http]);
            for p in (1..=3u64).filter(|p| *p != id) {
                cmd.args(["--peer", &format!("{p}={}", addrs[(p - 1) as usize])]);
            }
            cmd.stdout(Stdio::piped()).stderr(log).stdin(Stdio::null());
            let mut proc = Proc::spawn(&mut cmd)?;
            readers.push(line_reader(proc.stdout().context("stdout")?));
            nodes.push(BatonNode { id, addr, http, dir: data_dir, proc: Some(proc), startup: Duration::ZERO });
        }
        for (node, rx) in nodes.iter_mut().zip(readers) {
            wait_listening(node, &rx, t0, dir)?;
        }
        let mut b =
            Baton { bin: bin.to_path_buf(), nodes, worker: None, dir: dir.to_path_buf(), leader_after: Duration::ZERO };
        b.leader(None, Duration::from_secs(30)).await?;
        b.leader_after = t0.elapsed();
        Ok(b)
    }

    fn addrs(&self) -> String {
        self.nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// Index of the leader a majority of live nodes agree on (other than `not`), waiting.
    async fn leader(&self, not: Option<usize>, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut votes: HashMap<u64, usize> = HashMap::new();
            for n in self.nodes.iter().filter(|n| n.proc.is_some()) {
                if let Ok(s) = status(&n.addr).await
                    && s.leader_id != 0
                    && s.role != "candidate"
                {
                    *votes.entry(s.leader_id).or_default() += 1;
                }
            }
            if let Some((id, _)) = votes.into_iter().find(|(_, v)| *v >= 2) {
                let idx = (id - 1) as usize;
                if Some(idx) != not && self.nodes[idx].proc.is_some() {
                    return Ok(idx);
                }
            }
            if Instant::now() > deadline {
                bail!("no leader within {timeout:?}; logs in {}", self.dir.display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn apply(&self, idx: usize, file: &str, source: &str) -> Result<pb::ApplyResponse> {
        let mut c = pb::runbook_service_client::RunbookServiceClient::new(channel(&self.nodes[idx].addr).await?);
        let req = pb::ApplyRequest { file_name: file.into(), source: source.into() };
        Ok(c.apply(req).await.with_context(|| format!("applying {file}"))?.into_inner())
    }

    /// Starts the worker (connected to every node) and waits until the leader has it.
    async fn start_worker(&mut self, (capacity, prefetch): (u32, u32)) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("worker.log"))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["worker", "--id", "bench-worker", "--server", &self.addrs()])
            .args(["--capacity", &capacity.to_string(), "--prefetch", &prefetch.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .stdin(Stdio::null());
        self.worker = Some(Proc::spawn(&mut cmd)?);
        let leader = self.leader(None, Duration::from_secs(30)).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = status(&self.nodes[leader].addr).await
                && s.workers.iter().any(|w| w.id == "bench-worker")
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the worker did not register; see {}", self.dir.join("worker.log").display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A cluster with the no-op runbook applied and, if (capacity, prefetch) is given, a worker.
    async fn ready(bin: &Path, dir: &Path, worker: Option<(u32, u32)>) -> Result<(Baton, usize)> {
        let mut b = Baton::start(bin, dir).await?;
        let leader = b.leader(None, Duration::from_secs(30)).await?;
        b.apply(leader, "bench-noop.yaml", RUNBOOK_YAML).await?;
        if let Some(slots) = worker {
            b.start_worker(slots).await?;
        }
        let leader = b.leader(None, Duration::from_secs(30)).await?;
        Ok((b, leader))
    }

    /// Polls `/metrics` on node `idx` until at least `want` runs are terminal and none is pending
    /// or running (or `timeout`); returns the counts last seen.
    async fn wait_terminal(&self, idx: usize, want: u64, timeout: Duration) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + timeout;
        let mut last = BTreeMap::new();
        loop {
            if let Ok(c) = run_counts(&self.nodes[idx].http).await {
                last = c;
                let active = last.get("pending").copied().unwrap_or(0) + last.get("running").copied().unwrap_or(0);
                if terminal(&last) >= want && active == 0 {
                    return last;
                }
            }
            if Instant::now() > deadline {
                progress(format!("gave up waiting for {want} terminal runs after {timeout:?}: {last:?}"));
                return last;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self, idx: usize) -> Option<u32> {
        self.nodes[idx].proc.as_ref().map(|p| p.pid)
    }

    fn rss(&self) -> Vec<Value> {
        (0..self.nodes.len()).map(|i| json!(self.pid(i).and_then(rss_kib).map(|k| k / 1024))).collect()
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.kill();
        }
        for n in &mut self.nodes {
            if let Some(mut p) = n.proc.take() {
                p.kill();
            }
        }
    }
}

fn wait_listening(node: &mut BatonNode, rx: &mpsc::Receiver<String>, t0: Instant, dir: &Path) -> Result<()> {
    let deadline = t0 + Duration::from_secs(60);
    loop {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("listening") => {
                node.startup = t0.elapsed();
                return Ok(());
            }
            Ok(_) => {}
            Err(_) => {
                let why = node.proc.as_mut().and_then(Proc::exited).unwrap_or_else(|| "no \"listening\" line".into());
                bail!(
                    "node {} did not start ({why}); see {}",
                    node.id,
                    dir.join(format!("n{}.log", node.id)).display()
                );
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Load: StartRun from concurrent clients.

#[derive(Debug, Clone)]
struct Started {
    run_id: String,
    /// Unix ms when the request that succeeded was sent.
    sent_unix: f64,
    sent: Instant,
    latency: Duration,
    /// The idempotency key matched an earlier, committed start (a retry): nothing new committed.
    deduplicated: bool,
}

#[derive(Default)]
struct LoadResult {
    started: Vec<Started>,
    errors: usize,
    /// Runs given up on (no success before the deadline).
    failed: usize,
    first_sent: Option<Instant>,
    last_done: Option<Instant>,
}

/// `clients` concurrent clients start `n` runs in total. Client `c` talks to
/// `addrs[(first + c * spread) % len]`; with `keys`, every run has an idempotency key and a
/// failed request is retried (on the next node) until it succeeds or 60 s pass; without, a
/// failed request is counted and not retried. `done` counts successes as they happen.
async fn start_runs(
    addrs: &[String],
    first: usize,
    spread: bool,
    clients: usize,
    n: usize,
    keys: bool,
    done: Arc<AtomicUsize>,
) -> Result<LoadResult> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    let t0 = Instant::now();
    for c in 0..clients {
        let mut chans = Vec::new();
        for a in addrs {
            // One connection per client and node, like separate processes.
            chans.push(runs_client(channel(a).await?));
        }
        let next = next.clone();
        let done = done.clone();
        let mut at = (first + if spread { c } else { 0 }) % addrs.len();
        tasks.push(tokio::spawn(async move {
            let mut out = LoadResult::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let key = if keys { format!("bench-{i}") } else { String::new() };
                let give_up = Instant::now() + Duration::from_secs(60);
                loop {
                    let req = pb::StartRunRequest {
                        runbook: RUNBOOK.into(),
                        params: Default::default(),
                        idempotency_key: key.clone(),
                        principal: String::new(),
                    };
                    let sent_unix = unix_ms();
                    let sent = Instant::now();
                    out.first_sent.get_or_insert(sent);
                    match chans[at].start(req).await {
                        Ok(resp) => {
                            let latency = sent.elapsed();
                            let resp = resp.into_inner();
                            let deduplicated = resp.deduplicated;
                            let run_id = resp.run.map(|r| r.id).unwrap_or_default();
                            out.started.push(Started { run_id, sent_unix, sent, latency, deduplicated });
                            out.last_done = Some(Instant::now());
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            out.errors += 1;
                            show_error(format!("start on node {}: {}: {}", at + 1, e.code(), e.message()));
                            if !keys || Instant::now() > give_up {
                                out.failed += 1;
                                break;
                            }
                            at = (at + 1) % chans.len();
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            out
        }));
    }
    let mut all = LoadResult::default();
    for t in tasks {
        let r = t.await?;
        all.started.extend(r.started);
        all.errors += r.errors;
        all.failed += r.failed;
        all.first_sent = match (all.first_sent, r.first_sent) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        all.last_done = all.last_done.max(r.last_done);
    }
    let _ = t0;
    Ok(all)
}

/// The runs of the no-op runbook, read (linearizably) from node `addr`.
async fn fetch_runs(addr: &str, ids: &[String]) -> Result<Vec<pb::Run>> {
    let mut c = runs_client(channel(addr).await?);
    if ids.len() <= 10_000 {
        let req = pb::ListRunsRequest { runbook: RUNBOOK.into(), limit: 10_000 };
        return Ok(c.list(req).await?.into_inner().runs);
    }
    let mut out = Vec::new();
    for chunk in ids.chunks(64) {
        let futs = chunk.iter().map(|id| {
            let mut c = c.clone();
            async move { c.get(pb::GetRunRequest { id: id.clone() }).await.map(|r| r.into_inner()) }
        });
        for r in futures::future::join_all(futs).await {
            out.push(r?);
        }
    }
    Ok(out)
}

/// What the final run records say.
#[derive(Default, Debug)]
struct RunStats {
    runs: usize,
    by_state: BTreeMap<String, u64>,
    /// Trigger (run created) -> attempt start, ms.
    start: Vec<f64>,
    /// Trigger -> run finished, ms.
    done: Vec<f64>,
    /// Attempts whose start report was not committed before their result (the result's time
    /// stands in for the start).
    start_from_result: usize,
    lost_attempts: usize,
    /// Attempts taken back because their worker provably never received them (assigned again).
    taken_back: usize,
    /// Steps with more than one attempt that was not lost (a step run twice).
    duplicate_attempts: usize,
    /// Started runs (by the clients) missing from the records.
    missing: usize,
    /// Run ids the records hold more than once, or idempotency keys with more than one run.
    duplicate_runs: usize,
    first_created: i64,
    last_finished: i64,
}

fn attempt_state(a: &pb::Attempt) -> pb::AttemptState {
    pb::AttemptState::try_from(a.state).unwrap_or(pb::AttemptState::Unspecified)
}

fn run_state_name(r: &pb::Run) -> String {
    pb::RunState::try_from(r.state)
        .map(|s| s.as_str_name().trim_start_matches("RUN_STATE_").to_ascii_lowercase())
        .unwrap_or_else(|_| "unknown".into())
}

fn analyze(runs: &[pb::Run], started: &[Started]) -> RunStats {
    let mut st = RunStats { runs: runs.len(), first_created: i64::MAX, ..Default::default() };
    let mut ids = HashSet::new();
    let mut keys: HashMap<&str, usize> = HashMap::new();
    for r in runs {
        if !ids.insert(r.id.as_str()) {
            st.duplicate_runs += 1;
        }
        if !r.idempotency_key.is_empty() {
            *keys.entry(r.idempotency_key.as_str()).or_default() += 1;
        }
        *st.by_state.entry(run_state_name(r)).or_default() += 1;
        st.first_created = st.first_created.min(r.created_at_ms);
        st.taken_back += r.events.iter().filter(|e| e.action == "reassign").count();
        st.last_finished = st.last_finished.max(r.finished_at_ms);
        for s in &r.steps {
            let live: Vec<&pb::Attempt> =
                s.attempts.iter().filter(|a| attempt_state(a) != pb::AttemptState::Lost).collect();
            st.lost_attempts += s.attempts.len() - live.len();
            st.duplicate_attempts += live.len().saturating_sub(1);
        }
        let first =
            r.steps.first().and_then(|s| s.attempts.iter().find(|a| attempt_state(a) != pb::AttemptState::Lost));
        if let Some(a) = first {
            let at = if a.started_at_ms > 0 {
                a.started_at_ms
            } else if a.finished_at_ms > 0 {
                st.start_from_result += 1;
                a.finished_at_ms
            } else {
                0
            };
            if at > 0 {
                st.start.push((at - r.created_at_ms) as f64);
            }
        }
        if r.finished_at_ms > 0 {
            st.done.push((r.finished_at_ms - r.created_at_ms) as f64);
        }
    }
    st.duplicate_runs += keys.values().filter(|n| **n > 1).map(|n| n - 1).sum::<usize>();
    st.missing = started.iter().filter(|s| !ids.contains(s.run_id.as_str())).count();
    if st.first_created == i64::MAX {
        st.first_created = 0;
    }
    st
}

/// One CSV line per run, oldest first: when it was created, assigned, started, finished (its
/// first attempt) and done (the run), in unix ms as the leader stamped them.
fn write_timeline(path: &Path, runs: &[pb::Run]) -> Result<()> {
    let mut rows: Vec<String> = runs
        .iter()
        .map(|r| {
            let a = r.steps.first().and_then(|s| s.attempts.first());
            let f = |g: fn(&pb::Attempt) -> i64| a.map(g).unwrap_or(0);
            format!(
                "{},{},{},{},{},{},{}",
                r.id,
                r.created_at_ms,
                f(|a| a.assigned_at_ms),
                f(|a| a.started_at_ms),
                f(|a| a.finished_at_ms),
                r.finished_at_ms,
                a.map(|a| a.fence.as_ref().map_or(0, |f| f.index)).unwrap_or(0)
            )
        })
        .collect();
    rows.sort_by_key(|l| l.split(',').nth(1).and_then(|c| c.parse::<i64>().ok()).unwrap_or(0));
    let text = format!("run,created,assigned,started,finished,done,fence_index\n{}\n", rows.join("\n"));
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Correctness of a run set in which every run should have succeeded exactly once.
fn exactly_once(st: &RunStats, want: usize) -> bool {
    st.runs == want
        && st.by_state.get("succeeded").copied().unwrap_or(0) as usize == want
        && st.duplicate_attempts == 0
        && st.duplicate_runs == 0
        && st.lost_attempts == 0
        && st.missing == 0
}

// ------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone)]
struct Opts {
    workloads: Vec<String>,
    runs: Option<usize>,
    lat_runs: usize,
    seq: usize,
    rate: f64,
    clients: usize,
    capacity: u32,
    prefetch: u32,
    schedules: usize,
    due: usize,
    spread: bool,
    baton: PathBuf,
    etcd: PathBuf,
    dir: Option<PathBuf>,
    /// Write each run's timeline (CSV) here.
    timeline: Option<PathBuf>,
}

fn parse_args() -> Result<Opts> {
    let exe = std::env::current_exe()?;
    let next_to_me = exe.parent().map(|d| d.join("baton")).unwrap_or_default();
    let mut o = Opts {
        workloads: Vec::new(),
        runs: None,
        lat_runs: 200,
        seq: 1000,
        rate: 50.0,
        clients: 16,
        capacity: 2,
        prefetch: 0,
        schedules: 100_000,
        due: 1_000,
        spread: false,
        baton: std::env::var_os("BATON_BIN").map(PathBuf::from).unwrap_or(next_to_me),
        etcd: PathBuf::from("etcd"),
        dir: None,
        timeline: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match a.as_str() {
            "--runs" => o.runs = Some(value("--runs")?.parse()?),
            "--lat-runs" => o.lat_runs = value("--lat-runs")?.parse()?,
            "--seq" => o.seq = value("--seq")?.parse()?,
            "--rate" => o.rate = value("--rate")?.parse()?,
            "--clients" => o.clients = value("--clients")?.parse()?,
            "--capacity" => o.capacity = value("--capacity")?.parse()?,
            "--prefetch" => o.prefetch = value("--prefetch")?.parse()?,
            "--schedules" => o.schedules = value("--schedules")?.parse()?,
            "--due" => o.due = value("--due")?.parse()?,
            "--spread" => o.spread = true,
            "--baton" => o.baton = value("--baton")?.into(),
            "--etcd" => o.etcd = value("--etcd")?.into(),
            "--dir" => o.dir = Some(value("--dir")?.into()),
            "--timeline" => o.timeline = Some(value("--timeline")?.into()),
            "-h" | "--help" => bail!("help"),
            w if !w.starts_with('-') => {
                let w = w.to_ascii_lowercase();
                match w.as_str() {
                    "all" => o.workloads.extend(["w1", "w1-lat", "w2", "w5", "w6", "w4"].map(String::from)),
                    "etcd" => o.workloads.extend(["etcd-w2", "etcd-w5"].map(String::from)),
                    "w1" | "w1-lat" | "w2" | "w4" | "w5" | "w6" | "etcd-w2" | "etcd-w5" => o.workloads.push(w),
                    _ => bail!("unknown workload {a:?}"),
                }
            }
            _ => bail!("unknown option {a:?}"),
        }
    }
    if o.workloads.is_empty() {
        bail!("name a workload");
    }
    if o.clients == 0 || o.capacity == 0 || o.rate <= 0.0 || o.due > o.schedules {
        bail!("--clients and --capacity must be positive, --rate > 0, --due <= --schedules");
    }
    Ok(o)
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if e.to_string() != "help" {
                eprintln!("error: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let ok = rt.block_on(async move {
        // SIGINT/SIGTERM: stop every child first, then exit.
        tokio::spawn(async {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
                return;
            };
            tokio::select! { _ = int.recv() => {}, _ = term.recv() => {} }
            kill_all_registered();
            std::process::exit(130);
        });
        run_all(opts).await
    });
    kill_all_registered();
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

async fn run_all(opts: Opts) -> bool {
    let needs_baton = opts.workloads.iter().any(|w| !w.starts_with("etcd"));
    if needs_baton && !opts.baton.exists() {
        eprintln!(
            "error: {} does not exist: build it (cargo build --release -p baton) or pass --baton",
            opts.baton.display()
        );
        return false;
    }
    let tmp = match &opts.dir {
        Some(d) => {
            if let Err(e) = std::fs::create_dir_all(d) {
                eprintln!("error: {}: {e}", d.display());
                return false;
            }
            None
        }
        None => match tempfile::Builder::new().prefix("baton-bench-").tempdir() {
            Ok(t) => Some(t),
            Err(e) => {
                eprintln!("error: temp dir: {e}");
                return false;
            }
        },
    };
    let root = opts.dir.clone().unwrap_or_else(|| tmp.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_default());
    let mut all_ok = true;
    for (i, w) in opts.workloads.iter().enumerate() {
        let dir = root.join(format!("{i}-{w}"));
        progress(format!("{w}: starting (data in {})", dir.display()));
        let t = Instant::now();
        // Other processes on the machine skew every number: say how busy it was.
        let load = std::fs::read_to_string("/proc/loadavg").ok().and_then(|l| l.split(' ').next()?.parse::<f64>().ok());
        let result = match w.as_str() {
            "w1" => w1(&opts, &dir).await,
            "w1-lat" => w1_lat(&opts, &dir).await,
            "w2" => w2(&opts, &dir).await,
            "w4" => w4(&opts, &dir).await,
            "w5" => w5(&opts, &dir).await,
            "w6" => w6(&opts, &dir).await,
            "etcd-w2" => etcd_w2(&opts, &dir).await,
            "etcd-w5" => etcd_w5(&opts, &dir).await,
            _ => Err(anyhow!("unknown workload")),
        };
        let line = match result {
            Ok(mut v) => {
                if v.get("ok") == Some(&Value::Bool(false)) {
                    all_ok = false;
                }
                v["elapsed_s"] = json!(r2(t.elapsed().as_secs_f64()));
                v["loadavg_1m_before"] = json!(load);
                v
            }
            Err(e) => {
                all_ok = false;
                json!({"workload": w.to_uppercase(), "ok": false, "error": format!("{e:#}")})
            }
        };
        println!("{line}");
        let _ = std::io::stdout().flush();
        progress(format!("{w}: done in {:.1} s", t.elapsed().as_secs_f64()));
    }
    drop(tmp);
    all_ok
}

// ------------------------------------------------------------------------------------------
// W1: dispatch throughput

async fn w1(o: &Opts, dir: &Path) -> Result<Value> {
    let n = o.runs.unwrap_or(5_000);
    let (b, leader) = Baton::ready(&o.baton, dir, Some((o.capacity, o.prefetch))).await?;
    let addrs: Vec<String> = b.nodes.iter().map(|n| n.addr.clone()).collect();
    progress(format!("w1: {n} runs from {} clients to node {}", o.clients, leader + 1));
    let t0 = Instant::now();
    let load = start_runs(&addrs, leader, o.spread, o.clients, n, false, Arc::default()).await?;
    let triggered = t0.elapsed();
    progress(format!(
        "w1: triggered in {:.1} s ({} errors); waiting for results",
        triggered.as_secs_f64(),
        load.errors
    ));
    let counts = b.wait_terminal(leader, load.started.len() as u64, Duration::from_secs(120 + n as u64 / 20)).await;
    let wall = t0.elapsed();
    let ids: Vec<String> = load.started.iter().map(|s| s.run_id.clone()).collect();
    let runs = fetch_runs(&b.nodes[leader].addr, &ids).await?;
    let st = analyze(&runs, &load.started);
    if let Some(path) = &o.timeline {
        write_timeline(path, &runs)?;
    }
    let span_ms = (st.last_finished - st.first_created).max(1) as f64;
    let trig: Vec<f64> = load.started.iter().map(|s| s.latency.as_secs_f64() * 1000.0).collect();
    let ok = exactly_once(&st, n) && load.failed == 0;
    Ok(json!({
        "workload": "W1", "system": "baton", "ok": ok,
        "runs": n, "clients": o.clients, "capacity": o.capacity, "prefetch": o.prefetch, "spread": o.spread,
        "runs_per_s": r2(st.runs as f64 * 1000.0 / span_ms),
        "trigger_rate_per_s": r2(load.started.len() as f64 / triggered.as_secs_f64()),
        "start_p50_ms": pct(&st.start, 50.0), "start_p95_ms": pct(&st.start, 95.0), "start_p99_ms": pct(&st.start, 99.0),
        "done_p50_ms": pct(&st.done, 50.0), "done_p95_ms": pct(&st.done, 95.0), "done_p99_ms": pct(&st.done, 99.0),
        "trigger_rpc_p50_ms": pct(&trig, 50.0), "trigger_rpc_p99_ms": pct(&trig, 99.0),
        "wall_s": r2(wall.as_secs_f64()),
        "succeeded": st.by_state.get("succeeded").copied().unwrap_or(0), "states": st.by_state,
        "errors": load.errors, "missing": st.missing, "duplicate_runs": st.duplicate_runs,
        "duplicate_attempts": st.duplicate_attempts, "lost_attempts": st.lost_attempts,
        "start_from_result": st.start_from_result, "terminal_seen": terminal(&counts),
        "leader_rss_mib": b.pid(leader).and_then(rss_kib).map(|k| k / 1024),
    }))
}

// ------------------------------------------------------------------------------------------
// W1-lat: a steady trigger rate from one client (open loop: a trigger is sent on time even if
// an earlier one has not been answered, over one connection).

async fn w1_lat(o: &Opts, dir: &Path) -> Result<Value> {
    let n = o.lat_runs;
    let (b, leader) = Baton::ready(&o.baton, dir, Some((o.capacity, o.prefetch))).await?;
    let client = runs_client(channel(&b.nodes[leader].addr).await?);
    progress(format!("w1-lat: {n} runs at {}/s", o.rate));
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    let mut tasks = Vec::new();
    for i in 0..n {
        tokio::time::sleep_until(t0 + Duration::from_secs_f64(i as f64 / o.rate)).await;
        let mut c = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = pb::StartRunRequest { runbook: RUNBOOK.into(), ..Default::default() };
            let sent_unix = unix_ms();
            let sent = Instant::now();
            c.start(req).await.map(|r| {
                let r = r.into_inner();
                Started {
                    run_id: r.run.map(|r| r.id).unwrap_or_default(),
                    sent_unix,
                    sent,
                    latency: sent.elapsed(),
                    deduplicated: r.deduplicated,
                }
            })
        }));
    }
    let mut started = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await? {
            Ok(s) => started.push(s),
            Err(e) => {
                errors += 1;
                progress(format!("w1-lat: start: {e}"));
            }
        }
    }
    b.wait_terminal(leader, started.len() as u64, Duration::from_secs(60)).await;
    let ids: Vec<String> = started.iter().map(|s| s.run_id.clone()).collect();
    let runs = fetch_runs(&b.nodes[leader].addr, &ids).await?;
    let st = analyze(&runs, &started);
    // The client's own clock: send -> start stamp (same machine, same clock).
    let by_id: HashMap<&str, &Started> = started.iter().map(|s| (s.run_id.as_str(), s)).collect();
    let mut client_start = Vec::new();
    for r in &runs {
        let a = r.steps.first().and_then(|s| s.attempts.first());
        if let (Some(s), Some(a)) = (by_id.get(r.id.as_str()), a)
            && a.started_at_ms > 0
        {
            client_start.push(a.started_at_ms as f64 - s.sent_unix);
        }
    }
    let trig: Vec<f64> = started.iter().map(|s| s.latency.as_secs_f64() * 1000.0).collect();
    Ok(json!({
        "workload": "W1-lat", "system": "baton", "ok": exactly_once(&st, n) && errors == 0,
        "runs": n, "rate_per_s": o.rate, "capacity": o.capacity, "prefetch": o.prefetch,
        "start_p50_ms": pct(&st.start, 50.0), "start_p95_ms": pct(&st.start, 95.0), "start_p99_ms": pct(&st.start, 99.0),
        "start_max_ms": pct(&st.start, 100.0),
        "client_start_p50_ms": pct(&client_start, 50.0), "client_start_p99_ms": pct(&client_start, 99.0),
        "done_p50_ms": pct(&st.done, 50.0), "done_p99_ms": pct(&st.done, 99.0),
        "trigger_rpc_p50_ms": pct(&trig, 50.0), "trigger_rpc_p99_ms": pct(&trig, 99.0),
        "succeeded": st.by_state.get("succeeded").copied().unwrap_or(0), "errors": errors,
        "duplicate_attempts": st.duplicate_attempts, "start_from_result": st.start_from_result,
    }))
}

// ------------------------------------------------------------------------------------------
// W2: commit latency and throughput of StartRun, no worker (runs stay pending).

async fn w2(o: &Opts, dir: &Path) -> Result<Value> {
    let n = o.runs.unwrap_or(5_000);
    let (b, leader) = Baton::ready(&o.baton, dir, None).await?;
    let addr = b.nodes[leader].addr.clone();
    progress(format!("w2: {} sequential starts, then {n} from {} clients", o.seq, o.clients));
    let mut c = runs_client(channel(&addr).await?);
    let mut seq = Vec::with_capacity(o.seq);
    let mut seq_ids = Vec::new();
    let t_seq = Instant::now();
    for _ in 0..o.seq {
        let req = pb::StartRunRequest { runbook: RUNBOOK.into(), ..Default::default() };
        let t = Instant::now();
        let r = c.start(req).await?;
        seq.push(t.elapsed().as_secs_f64() * 1000.0);
        seq_ids.push(r.into_inner().run.map(|r| r.id).unwrap_or_default());
    }
    let seq_wall = t_seq.elapsed();
    let addrs: Vec<String> = b.nodes.iter().map(|n| n.addr.clone()).collect();
    let t0 = Instant::now();
    let load = start_runs(&addrs, leader, o.spread, o.clients, n, false, Arc::default()).await?;
    let wall = t0.elapsed();
    let lat: Vec<f64> = load.started.iter().map(|s| s.latency.as_secs_f64() * 1000.0).collect();
    // Correctness: every acknowledged start is a distinct, pending run.
    let mut ids: Vec<String> = load.started.iter().map(|s| s.run_id.clone()).collect();
    ids.extend(seq_ids);
    let total = ids.len();
    let counts = run_counts(&b.nodes[leader].http).await.unwrap_or_default();
    let distinct = ids.iter().collect::<HashSet<_>>().len();
    let pending = counts.get("pending").copied().unwrap_or(0) as usize;
    Ok(json!({
        "workload": "W2", "system": "baton", "ok": distinct == total && pending == total && load.failed == 0,
        "seq": o.seq, "seq_p50_ms": pct(&seq, 50.0), "seq_p99_ms": pct(&seq, 99.0),
        "seq_mean_ms": r2(seq.iter().sum::<f64>() / seq.len().max(1) as f64),
        "seq_per_s": r2(o.seq as f64 / seq_wall.as_secs_f64()),
        "runs": n, "clients": o.clients, "spread": o.spread,
        "commits_per_s": r2(load.started.len() as f64 / wall.as_secs_f64()),
        "p50_ms": pct(&lat, 50.0), "p99_ms": pct(&lat, 99.0),
        "errors": load.errors, "distinct_runs": distinct, "pending_runs": pending,
        "leader_rss_mib": b.pid(leader).and_then(rss_kib).map(|k| k / 1024),
    }))
}

// ------------------------------------------------------------------------------------------
// W5: SIGKILL of the leader under W1 load.

async fn w5(o: &Opts, dir: &Path) -> Result<Value> {
    let n = o.runs.unwrap_or(3_000);
    let (mut b, leader) = Baton::ready(&o.baton, dir, Some((o.capacity, o.prefetch))).await?;
    b.apply(leader, "bench-probe.yaml", &RUNBOOK_YAML.replace(RUNBOOK, PROBE_RUNBOOK)).await?;
    let old_term = status(&b.nodes[leader].addr).await?.term;
    let addrs: Vec<String> = b.nodes.iter().map(|n| n.addr.clone()).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let pid = b.pid(leader).context("leader pid")?;
    progress(format!("w5: {n} runs (idempotency keys), SIGKILL of leader {} after {}", leader + 1, n / 3));
    // The killer: SIGKILL (std's Child::kill is SIGKILL) once a third of the runs are started.
    let kill_at: Arc<Mutex<Option<(Instant, f64)>>> = Arc::default();
    let kill_instant: Arc<Mutex<Option<Instant>>> = Arc::default();
    let finished = Arc::new(AtomicBool::new(false));
    let killer = {
        let (done, killed, kill_at, finished) = (done.clone(), killed.clone(), kill_at.clone(), finished.clone());
        let kill_instant = kill_instant.clone();
        tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < n / 3 {
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            let now = Instant::now();
            *kill_at.lock().unwrap_or_else(|e| e.into_inner()) = Some((now, unix_ms()));
            *kill_instant.lock().unwrap_or_else(|e| e.into_inner()) = Some(now);
            killed.store(true, Ordering::SeqCst);
        })
    };
    // The watcher: when do the survivors agree on a new leader?
    let survivors: Vec<String> =
        addrs.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, a)| a.clone()).collect();
    let watcher = {
        let (killed, finished) = (killed.clone(), finished.clone());
        tokio::spawn(async move {
            while !killed.load(Ordering::SeqCst) {
                if finished.load(Ordering::SeqCst) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                for a in &survivors {
                    if let Ok(s) = status(a).await
                        && s.role == "leader"
                        && s.term > old_term
                    {
                        return Some((Instant::now(), s.node_id));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        })
    };
    let probe = tokio::spawn(probe_after_kill(
        addrs.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, a)| a.clone()).collect(),
        kill_instant,
        finished.clone(),
        baton_probe_write,
    ));
    let load = start_runs(&addrs, leader, o.spread, o.clients, n, true, done).await;
    finished.store(true, Ordering::SeqCst);
    let load = load?;
    killer.await?;
    let elected = watcher.await?;
    let probe = probe.await?;
    // The old leader is dead: reap it.
    if let Some(mut p) = b.nodes[leader].proc.take() {
        p.kill();
    }
    let (kill_i, kill_unix) = kill_at.lock().unwrap_or_else(|e| e.into_inner()).context("never killed")?;
    let new_leader = b.leader(Some(leader), Duration::from_secs(30)).await?;
    progress(format!("w5: triggers done ({} errors); new leader {}; waiting for results", load.errors, new_leader + 1));
    let counts = b.wait_terminal(new_leader, load.started.len() as u64, Duration::from_secs(120)).await;
    let ids: Vec<String> = load.started.iter().map(|s| s.run_id.clone()).collect();
    let runs = fetch_runs(&b.nodes[new_leader].addr, &ids).await?;
    let st = analyze(&runs, &load.started);
    // The first start acknowledged for a request sent after the kill: by the load clients
    // (which retry on the next node), and by the probe (a fresh write every 20 ms).
    // A retry answered from an earlier commit (its key deduplicated) commits nothing new.
    let load_first =
        load.started.iter().filter(|s| s.sent >= kill_i && !s.deduplicated).map(|s| s.sent + s.latency - kill_i).min();
    let first_commit = [load_first, probe.map(|p| p - kill_i)].into_iter().flatten().min();
    // Resumed dispatch: the first attempt assigned by a later term, started on the worker.
    let mut resumed: Option<i64> = None;
    let mut first_assign: Option<i64> = None;
    for r in &runs {
        for a in r.steps.iter().flat_map(|s| &s.attempts) {
            if a.fence.as_ref().is_some_and(|f| f.term > old_term) {
                let started = if a.started_at_ms > 0 { a.started_at_ms } else { a.finished_at_ms };
                if started > 0 {
                    resumed = Some(resumed.map_or(started, |m| m.min(started)));
                }
                first_assign = Some(first_assign.map_or(a.assigned_at_ms, |m| m.min(a.assigned_at_ms)));
            }
        }
    }
    // The contract under failover: every run ends, none runs a step twice, none is doubled or
    // missing. A lost attempt (its outcome unknown, its run `needs_attention`) keeps the
    // contract but misses the issue's target of zero, so it is reported apart (`target_met`).
    let succeeded = st.by_state.get("succeeded").copied().unwrap_or(0) as usize;
    let attention = st.by_state.get("needs_attention").copied().unwrap_or(0) as usize;
    let ok = st.runs == n
        && succeeded + attention == n
        && attention <= st.lost_attempts
        && st.duplicate_attempts == 0
        && st.duplicate_runs == 0
        && st.missing == 0
        && load.failed == 0;
    let target_met = ok && st.lost_attempts == 0;
    Ok(json!({
        "workload": "W5", "system": "baton", "ok": ok, "target_met": target_met,
        "runs": n, "clients": o.clients, "capacity": o.capacity, "prefetch": o.prefetch,
        "leader_elected_ms": elected.map(|(t, _)| ms(t - kill_i)),
        "first_commit_ms": first_commit.map(ms), "load_first_commit_ms": load_first.map(ms),
        "first_assign_ms": first_assign.map(|t| r2(t as f64 - kill_unix)),
        "resumed_dispatch_ms": resumed.map(|t| r2(t as f64 - kill_unix)),
        "lost_attempts": st.lost_attempts, "taken_back": st.taken_back, "duplicate_attempts": st.duplicate_attempts,
        "duplicate_runs": st.duplicate_runs, "missing": st.missing,
        "succeeded": st.by_state.get("succeeded").copied().unwrap_or(0), "states": st.by_state,
        "client_errors": load.errors, "failed_starts": load.failed, "terminal_seen": terminal(&counts),
        "retries_deduplicated": load.started.iter().filter(|s| s.deduplicated).count(),
        "old_leader": leader + 1, "new_leader": new_leader + 1,
    }))
}

/// After `kill` is set, sends a fresh write every 20 ms (each abandoned after 1 s) to the
/// survivors, round robin, until one is acknowledged: the first moment the cluster commits a
/// new write, whatever the load clients are stuck on. `write(addr, i)` performs one write.
async fn probe_after_kill<F, Fut>(
    survivors: Vec<String>,
    kill: Arc<Mutex<Option<Instant>>>,
    finished: Arc<AtomicBool>,
    write: F,
) -> Option<Instant>
where
    F: Fn(String, usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let kill_i = loop {
        if let Some(k) = *kill.lock().unwrap_or_else(|e| e.into_inner()) {
            break k;
        }
        if finished.load(Ordering::SeqCst) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut i = 0;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while kill_i.elapsed() < Duration::from_secs(30) {
        tokio::select! {
            t = rx.recv() => return t,
            _ = tick.tick() => {
                let fut = write(survivors[i % survivors.len()].clone(), i);
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(true) = tokio::time::timeout(Duration::from_secs(1), fut).await {
                        let _ = tx.send(Instant::now());
                    }
                });
                i += 1;
            }
        }
    }
    None
}

async fn baton_probe_write(addr: String, i: usize) -> bool {
    let Ok(ch) = channel(&addr).await else { return false };
    let req = pb::StartRunRequest {
        runbook: PROBE_RUNBOOK.into(),
        params: Default::default(),
        idempotency_key: format!("probe-{i}"),
        principal: String::new(),
    };
    runs_client(ch).start(req).await.is_ok()
}

async fn etcd_probe_write(addr: String, i: usize) -> bool {
    let Ok(ch) = channel(&addr).await else { return false };
    etcd_put(ch, format!("probe/{i:08}").into_bytes(), vec![b'x'; 256]).await.is_ok()
}

// ------------------------------------------------------------------------------------------
// W6: footprint.

async fn w6(o: &Opts, dir: &Path) -> Result<Value> {
    let n = o.runs.unwrap_or(5_000);
    let (mut b, leader) = Baton::ready(&o.baton, dir, Some((o.capacity, o.prefetch))).await?;
    let startup: Vec<f64> = b.nodes.iter().map(|n| ms(n.startup)).collect();
    let leader_after = ms(b.leader_after);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rss = b.rss();
    let worker_rss = b.worker.as_ref().and_then(|w| rss_kib(w.pid)).map(|k| k / 1024);
    let idle_disk: Vec<u64> = b.nodes.iter().map(|n| dir_bytes(&n.dir).0).collect();
    progress(format!("w6: churning {n} runs"));
    let addrs: Vec<String> = b.nodes.iter().map(|n| n.addr.clone()).collect();
    let load = start_runs(&addrs, leader, o.spread, o.clients, n, false, Arc::default()).await?;
    let counts = b.wait_terminal(leader, load.started.len() as u64, Duration::from_secs(120 + n as u64 / 20)).await;
    // Let the followers apply and every node snapshot/compact what it will.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut cc = pb::cluster_service_client::ClusterServiceClient::new(channel(&b.nodes[leader].addr).await?)
        .max_decoding_message_size(1 << 30);
    let live = cc.snapshot_save(pb::SnapshotSaveRequest {}).await?.into_inner().data.len() as u64;
    let disk: Vec<(u64, u64)> = b.nodes.iter().map(|n| dir_bytes(&n.dir)).collect();
    let busy_rss = b.rss();
    let max_disk = disk.iter().map(|d| d.0).max().unwrap_or(0);
    // Restart one follower on its data: time to "listening" with this much state.
    let f = (leader + 1) % 3;
    let restart_ms = {
        let node = &mut b.nodes[f];
        if let Some(mut p) = node.proc.take() {
            p.kill();
        }
        let log = std::fs::OpenOptions::new().append(true).open(dir.join(format!("n{}.log", node.id)))?;
        let mut cmd = Command::new(&o.baton);
        cmd.args(["server", "--id", &node.id.to_string(), "--data-dir"])
            .arg(&node.dir)
            .args(["--grpc", &node.addr, "--http", &node.http]);
        for p in (1..=3u64).filter(|p| *p != node.id) {
            cmd.args(["--peer", &format!("{p}={}", addrs[(p - 1) as usize])]);
        }
        cmd.stdout(Stdio::piped()).stderr(log).stdin(Stdio::null());
        let t0 = Instant::now();
        let mut proc = Proc::spawn(&mut cmd)?;
        let rx = line_reader(proc.stdout().context("stdout")?);
        node.proc = Some(proc);
        wait_listening(node, &rx, t0, dir)?;
        ms(node.startup)
    };
    let succeeded = counts.get("succeeded").copied().unwrap_or(0);
    Ok(json!({
        "workload": "W6", "system": "baton", "ok": succeeded as usize == n,
        "startup_ms": startup, "leader_elected_ms": leader_after,
        "idle_rss_mib": idle_rss, "worker_idle_rss_mib": worker_rss, "idle_disk_bytes": idle_disk,
        "runs": n, "succeeded": succeeded,
        "disk_bytes": disk.iter().map(|d| d.0).collect::<Vec<_>>(),
        "disk_allocated_bytes": disk.iter().map(|d| d.1).collect::<Vec<_>>(),
        "live_state_bytes": live, "disk_per_live_byte": r2(max_disk as f64 / live.max(1) as f64),
        "rss_after_mib": busy_rss, "restart_ms": restart_ms,
    }))
}

// ------------------------------------------------------------------------------------------
// W4: cron scale. N schedules; `due` of them fire in the same second; no worker (the runs stay
// pending: this measures firing, tick -> run committed).

fn schedule_doc(i: usize, sec: u64) -> String {
    let (h, m, s) = ((sec / 3600) % 24, (sec / 60) % 60, sec % 60);
    format!("schedule: bench-s{i}\nrunbook: {RUNBOOK}\ncron: \"{s} {m} {h} * * *\"\ntimezone: UTC\n")
}

async fn apply_docs(addr: &str, clients: usize, docs: Vec<String>) -> Result<usize> {
    let docs = Arc::new(docs);
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut c = pb::runbook_service_client::RunbookServiceClient::new(channel(addr).await?);
        let (docs, next) = (docs.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(d) = docs.get(i) else { break };
                let req = pb::ApplyRequest { file_name: format!("s{i}.yaml"), source: d.clone() };
                if let Err(e) = c.apply(req).await {
                    errors += 1;
                    show_error(format!("w4: apply: {e}"));
                }
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await?;
    }
    Ok(errors)
}

async fn w4(o: &Opts, dir: &Path) -> Result<Value> {
    let (n, due) = (o.schedules, o.due);
    let (b, leader) = Baton::ready(&o.baton, dir, None).await?;
    let addr = b.nodes[leader].addr.clone();
    let now_s = (unix_ms() / 1000.0) as u64;
    // Not due during the run: daily, twelve hours away, spread over the seconds of an hour.
    let idle: Vec<String> = (due..n).map(|i| schedule_doc(i, now_s + 12 * 3600 + (i as u64 % 3600))).collect();
    progress(format!("w4: applying {} idle schedules", idle.len()));
    let t = Instant::now();
    let mut errors = apply_docs(&addr, o.clients, idle).await?;
    let apply_rate = (n - due) as f64 / t.elapsed().as_secs_f64().max(0.001);
    // The due ones: all at one second, far enough ahead for them to be applied first.
    let lead = (due as f64 / apply_rate.max(1.0) * 2.0 + 5.0).ceil() as u64;
    let tick_s = (unix_ms() / 1000.0) as u64 + lead;
    progress(format!("w4: applying {due} schedules due at +{lead} s"));
    let t_due = Instant::now();
    errors += apply_docs(&addr, o.clients, (0..due).map(|i| schedule_doc(i, tick_s)).collect()).await?;
    let applied_due_s = t_due.elapsed().as_secs_f64();
    let armed_before = unix_ms() < (tick_s * 1000) as f64;
    let rss_before = b.pid(leader).and_then(rss_kib).map(|k| k / 1024);
    // Wait for the tick, then for every due run to be committed (as the leader's state shows).
    // Polled with a small read (the newest runs, at most `due` of them): /metrics lists every
    // schedule, megabytes at 100,000, and would make the polling the measurement.
    let tick_ms = (tick_s * 1000) as f64;
    let mut poll = runs_client(channel(&b.nodes[leader].addr).await?);
    let mut all_committed_ms = None;
    // (ms after the tick, runs committed by then): an upper bound on each run's commit time,
    // to the 20 ms of the polling.
    let mut committed_by: Vec<(f64, u64)> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(lead + 60);
    while Instant::now() < deadline {
        let req = pb::ListRunsRequest { runbook: RUNBOOK.into(), limit: due as u32 };
        if let Ok(r) = poll.list(req).await {
            let total = r.into_inner().runs.len() as u64;
            committed_by.push((unix_ms() - tick_ms, total));
            if total >= due as u64 {
                all_committed_ms = Some(r2(unix_ms() - tick_ms));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let runs = fetch_runs(&addr, &[]).await?;
    let mut skew = Vec::new();
    let mut per_tick: HashMap<(String, i64), usize> = HashMap::new();
    let mut missed_runs = 0;
    for r in &runs {
        if r.trigger != "schedule" {
            continue;
        }
        if run_state_name(r) == "missed" {
            missed_runs += 1;
            continue;
        }
        *per_tick.entry((r.schedule.clone(), r.tick_ms)).or_default() += 1;
        skew.push((r.created_at_ms - r.tick_ms) as f64);
    }
    let duplicated: usize = per_tick.values().map(|c| c - 1).sum();
    // Tick -> committed, nearest rank: the first poll that saw that many runs committed.
    let committed_pct = |p: f64| {
        let rank = ((p / 100.0) * due as f64).ceil().max(1.0) as u64;
        committed_by.iter().find(|(_, n)| *n >= rank).map(|(t, _)| r2(t.max(0.0)))
    };
    let mut sc = pb::schedule_service_client::ScheduleServiceClient::new(channel(&addr).await?)
        .max_decoding_message_size(1 << 30);
    let schedules = sc.list(pb::ListSchedulesRequest {}).await?.into_inner().schedules;
    let ticks_missed: u64 = schedules.iter().map(|s| s.ticks_missed).sum();
    let fired = per_tick.len();
    let ok = fired == due && duplicated == 0 && ticks_missed == 0 && missed_runs == 0 && errors == 0;
    Ok(json!({
        "workload": "W4", "system": "baton", "ok": ok,
        "schedules": n, "due": due, "schedules_listed": schedules.len(),
        "apply_per_s": r2(apply_rate), "due_applied_s": r2(applied_due_s), "armed_in_time": armed_before,
        "fired": fired, "fire_skew_p50_ms": pct(&skew, 50.0), "fire_skew_p99_ms": pct(&skew, 99.0),
        "fire_skew_max_ms": pct(&skew, 100.0), "all_committed_ms": all_committed_ms,
        "committed_p50_ms": committed_pct(50.0), "committed_p99_ms": committed_pct(99.0),
        "missed": ticks_missed + missed_runs as u64, "duplicated": duplicated, "apply_errors": errors,
        "leader_rss_mib": b.pid(leader).and_then(rss_kib).map(|k| k / 1024), "leader_rss_before_fire_mib": rss_before,
    }))
}

// ------------------------------------------------------------------------------------------
// The etcd peer: three `etcd` members (Debian's etcd-server, defaults: fsync on, heartbeat
// 100 ms, election 1000 ms) and a Rust gRPC client built like Baton's load clients.

mod etcdpb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ResponseHeader {
        #[prost(uint64, tag = "1")]
        pub cluster_id: u64,
        #[prost(uint64, tag = "2")]
        pub member_id: u64,
        #[prost(int64, tag = "3")]
        pub revision: i64,
        #[prost(uint64, tag = "4")]
        pub raft_term: u64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRequest {
        #[prost(bytes = "vec", tag = "1")]
        pub key: Vec<u8>,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusRequest {}
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct StatusResponse {
        #[prost(message, optional, tag = "1")]
        pub header: Option<ResponseHeader>,
        #[prost(uint64, tag = "4")]
        pub leader: u64,
        #[prost(uint64, tag = "6")]
        pub raft_term: u64,
    }
}

async fn unary<Req, Resp>(ch: Channel, path: &'static str, req: Req) -> Result<Resp, tonic::Status>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
    grpc.unary(tonic::Request::new(req), path, codec).await.map(tonic::Response::into_inner)
}

async fn etcd_put(ch: Channel, key: Vec<u8>, value: Vec<u8>) -> Result<etcdpb::PutResponse, tonic::Status> {
    unary(ch, "/etcdserverpb.KV/Put", etcdpb::PutRequest { key, value }).await
}

async fn etcd_status(addr: &str) -> Result<etcdpb::StatusResponse> {
    let ch = channel(addr).await?;
    let fut = unary::<_, etcdpb::StatusResponse>(ch, "/etcdserverpb.Maintenance/Status", etcdpb::StatusRequest {});
    Ok(tokio::time::timeout(Duration::from_secs(2), fut).await??)
}

struct Etcd {
    /// Client address and process of each member.
    members: Vec<(String, Option<Proc>)>,
}

impl Etcd {
    async fn start(bin: &Path, dir: &Path) -> Result<Etcd> {
        std::fs::create_dir_all(dir)?;
        let clients: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let peers: Vec<String> = (0..3).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let initial = (0..3).map(|i| format!("e{}=http://{}", i + 1, peers[i])).collect::<Vec<_>>().join(",");
        let mut members = Vec::new();
        for i in 0..3 {
            let log = std::fs::File::create(dir.join(format!("e{}.log", i + 1)))?;
            let mut cmd = Command::new(bin);
            cmd.arg(format!("--name=e{}", i + 1))
                .arg(format!("--data-dir={}", dir.join(format!("e{}", i + 1)).display()))
                .arg(format!("--listen-client-urls=http://{}", clients[i]))
                .arg(format!("--advertise-client-urls=http://{}", clients[i]))
                .arg(format!("--listen-peer-urls=http://{}", peers[i]))
                .arg(format!("--initial-advertise-peer-urls=http://{}", peers[i]))
                .arg(format!("--initial-cluster={initial}"))
                .arg("--initial-cluster-state=new")
                .arg("--initial-cluster-token=baton-bench")
                .stdout(Stdio::null())
                .stderr(log)
                .stdin(Stdio::null());
            members.push((clients[i].clone(), Some(Proc::spawn(&mut cmd)?)));
        }
        let e = Etcd { members };
        e.leader(None, Duration::from_secs(30))
            .await
            .with_context(|| format!("etcd did not start; logs in {}", dir.display()))?;
        Ok(e)
    }

    /// Index of the member that leads (and says so), other than `not`.
    async fn leader(&self, not: Option<usize>, timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, (addr, p)) in self.members.iter().enumerate() {
                if p.is_none() || Some(i) == not {
                    continue;
                }
                if let Ok(s) = etcd_status(addr).await
                    && s.leader != 0
                    && s.header.as_ref().is_some_and(|h| h.member_id == s.leader)
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no etcd leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

struct PutLoad {
    lat: Vec<f64>,
    /// (sent, acknowledged) of each put.
    acks: Vec<(Instant, Instant)>,
    errors: usize,
    failed: usize,
}

/// `clients` clients put `n` distinct keys (256-byte values); a failed put is retried on the
/// next member (a put of the same key and value is idempotent) for up to 60 s.
async fn etcd_load(
    addrs: &[String],
    first: usize,
    spread: bool,
    clients: usize,
    n: usize,
    done: Arc<AtomicUsize>,
) -> Result<PutLoad> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut chans = Vec::new();
        for a in addrs {
            chans.push(channel(a).await?);
        }
        let (next, done) = (next.clone(), done.clone());
        let mut at = (first + if spread { c } else { 0 }) % addrs.len();
        tasks.push(tokio::spawn(async move {
            let mut out = PutLoad { lat: Vec::new(), acks: Vec::new(), errors: 0, failed: 0 };
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let key = format!("bench/{i:08}").into_bytes();
                let give_up = Instant::now() + Duration::from_secs(60);
                loop {
                    let sent = Instant::now();
                    match etcd_put(chans[at].clone(), key.clone(), vec![b'x'; 256]).await {
                        Ok(_) => {
                            out.lat.push(sent.elapsed().as_secs_f64() * 1000.0);
                            out.acks.push((sent, Instant::now()));
                            done.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        Err(e) => {
                            out.errors += 1;
                            show_error(format!("etcd put on member {}: {}: {}", at + 1, e.code(), e.message()));
                            if Instant::now() > give_up {
                                out.failed += 1;
                                break;
                            }
                            at = (at + 1) % chans.len();
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            out
        }));
    }
    let mut all = PutLoad { lat: Vec::new(), acks: Vec::new(), errors: 0, failed: 0 };
    for t in tasks {
        let r = t.await?;
        all.lat.extend(r.lat);
        all.acks.extend(r.acks);
        all.errors += r.errors;
        all.failed += r.failed;
    }
    Ok(all)
}

async fn etcd_w2(o: &Opts, dir: &Path) -> Result<Value> {
    let n = o.runs.unwrap_or(5_000);
    let e = Etcd::start(&o.etcd, dir).await?;
    let leader = e.leader(None, Duration::from_secs(30)).await?;
    let addrs: Vec<String> = e.members.iter().map(|m| m.0.clone()).collect();
    progress(format!("etcd-w2: {} sequential puts, then {n} from {} clients", o.seq, o.clients));
    let ch = channel(&addrs[leader]).await?;
    let mut seq = Vec::with_capacity(o.seq);
    let t_seq = Instant::now();
    for i in 0..o.seq {
        let t = Instant::now();
        etcd_put(ch.clone(), format!("seq/{i:08}").into_bytes(), vec![b'x'; 256]).await?;
        seq.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let seq_wall = t_seq.elapsed();
    let t0 = Instant::now();
    let load = etcd_load(&addrs, leader, o.spread, o.clients, n, Arc::default()).await?;
    let wall = t0.elapsed();
    let pid = e.members[leader].1.as_ref().map(|p| p.pid);
    Ok(json!({
        "workload": "W2", "system": "etcd", "ok": load.failed == 0 && load.lat.len() == n,
        "seq": o.seq, "seq_p50_ms": pct(&seq, 50.0), "seq_p99_ms": pct(&seq, 99.0),
        "seq_mean_ms": r2(seq.iter().sum::<f64>() / seq.len().max(1) as f64),
        "seq_per_s": r2(o.seq as f64 / seq_wall.as_secs_f64()),
        "runs": n, "clients": o.clients, "spread": o.spread,
        "commits_per_s": r2(load.lat.len() as f64 / wall.as_secs_f64()),
        "p50_ms": pct(&load.lat, 50.0), "p99_ms": pct(&load.lat, 99.0), "errors": load.errors,
        "value_bytes": 256, "leader_rss_mib": pid.and_then(rss_kib).map(|k| k / 1024),
    }))
}

async fn etcd_w5(o: &Opts, dir: &Path) -> Result<Value> {
    let n = o.runs.unwrap_or(10_000);
    let mut e = Etcd::start(&o.etcd, dir).await?;
    let leader = e.leader(None, Duration::from_secs(30)).await?;
    let old_term = etcd_status(&e.members[leader].0).await?.raft_term;
    let addrs: Vec<String> = e.members.iter().map(|m| m.0.clone()).collect();
    let pid = e.members[leader].1.as_ref().map(|p| p.pid).context("leader pid")?;
    progress(format!("etcd-w5: {n} puts, SIGKILL of leader e{} after {}", leader + 1, n / 3));
    let done = Arc::new(AtomicUsize::new(0));
    let kill_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let finished = Arc::new(AtomicBool::new(false));
    let killer = {
        let (done, kill_at, finished) = (done.clone(), kill_at.clone(), finished.clone());
        tokio::spawn(async move {
            while done.load(Ordering::Relaxed) < n / 3 {
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            *kill_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        })
    };
    let survivors: Vec<String> =
        addrs.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, a)| a.clone()).collect();
    let watcher = {
        let (kill_at, finished) = (kill_at.clone(), finished.clone());
        tokio::spawn(async move {
            while kill_at.lock().unwrap_or_else(|e| e.into_inner()).is_none() {
                if finished.load(Ordering::SeqCst) {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                for a in &survivors {
                    if let Ok(s) = etcd_status(a).await
                        && s.raft_term > old_term
                        && s.header.as_ref().is_some_and(|h| h.member_id == s.leader)
                    {
                        return Some(Instant::now());
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            None
        })
    };
    let probe = tokio::spawn(probe_after_kill(
        addrs.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, a)| a.clone()).collect(),
        kill_at.clone(),
        finished.clone(),
        etcd_probe_write,
    ));
    let load = etcd_load(&addrs, leader, o.spread, o.clients, n, done).await;
    finished.store(true, Ordering::SeqCst);
    let load = load?;
    killer.await?;
    let elected = watcher.await?;
    let probe = probe.await?;
    if let Some(mut p) = e.members[leader].1.take() {
        p.kill();
    }
    let kill_i = kill_at.lock().unwrap_or_else(|e| e.into_inner()).context("never killed")?;
    let load_first = load.acks.iter().filter(|(s, _)| *s >= kill_i).map(|(_, a)| *a - kill_i).min();
    let first_commit = [load_first, probe.map(|p| p - kill_i)].into_iter().flatten().min();
    Ok(json!({
        "workload": "W5", "system": "etcd", "ok": load.failed == 0 && load.lat.len() == n,
        "runs": n, "clients": o.clients,
        "leader_elected_ms": elected.map(|t| ms(t - kill_i)),
        "first_commit_ms": first_commit.map(ms), "load_first_commit_ms": load_first.map(ms),
        "client_errors": load.errors, "failed_puts": load.failed,
    }))
}
