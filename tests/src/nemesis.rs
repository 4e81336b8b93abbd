//! The fault campaign: a seeded nemesis over a real cluster, a workload that records its own
//! history, and a checker of Baton's contract (design §3) over that history.
//!
//! - **Nemesis.** SIGKILL + restart of a node (the leader or a random one), SIGSTOP for longer
//!   than the election timeout then SIGCONT, and network partitions (isolated leader, minority /
//!   majority split, one-way links, a leader that can only send or only receive). Partitions
//!   are made by [`Net`]: one TCP proxy per directed link `i->j` (the connection node `i` opens
//!   to node `j`, which carries `i`'s Raft messages and `i`'s forwarded writes to `j`), each of
//!   which can refuse (close) connections or blackhole them (hold every byte until healed).
//!   Every fault heals after a bounded time; every fault is recorded with its timestamps.
//! - **Workload.** API triggers of a 3-step runbook through random nodes, each with a unique
//!   idempotency key retried (same key) until acknowledged; a schedule firing every second;
//!   every step appends `RUN STEP PID WORKER` to an effect ledger (step `b` sleeps 1 s first,
//!   step `c` is `idempotent: true`); two workers of capacity 2 connected to every node.
//! - **Checker** ([`check`]): every acknowledged trigger has exactly one run and its key
//!   deduplicates to it; every tick between the first and the last has exactly one run or is
//!   inside one `missed` record; no step has more effects than attempts, a non-idempotent step
//!   never has two attempts, an idempotent one is retried only after a lost attempt; attempt ids
//!   are unique; every run is terminal, or `needs_attention` with a recorded lost attempt; all
//!   nodes hold identical state at the same applied index; the healed cluster makes progress.
//!
//! The seed (printed first; `BATON_CAMPAIGN_SEED` replays it) fixes the fault plan: kinds,
//! targets ("the leader" is resolved at the time), durations, gaps and the workload's choices.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_core::run::{AttemptState, Run, RunState, StepState, Trigger};
use baton_proto::v1 as pb;
use baton_proto::v1::cluster_service_client::ClusterServiceClient;
use baton_proto::v1::run_service_client::RunServiceClient;
use baton_proto::v1::runbook_service_client::RunbookServiceClient;
use baton_proto::v1::schedule_service_client::ScheduleServiceClient;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use crate::cluster::{Cluster, ClusterOptions};
use crate::free_port;

/// The runbook every trigger and tick runs.
pub const RUNBOOK: &str = "campaign";
/// The schedule firing every second.
pub const SCHEDULE: &str = "campaign-tick";
/// Steps declared `idempotent: true` (retried as a new attempt when an attempt is lost).
pub const IDEMPOTENT_STEPS: [&str; 1] = ["c"];

// ---------------------------------------------------------------------------------------------
// Seeded randomness

/// splitmix64: small, seeded, good enough for fault plans.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo { lo } else { lo + self.next_u64() % (hi - lo + 1) }
    }

    /// True with probability `pct`%.
    pub fn chance(&mut self, pct: u64) -> bool {
        self.next_u64() % 100 < pct
    }

    /// One of `xs` (which must not be empty).
    pub fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
        xs[(self.next_u64() % xs.len() as u64) as usize]
    }

    /// An independent generator derived from this one.
    pub fn fork(&mut self) -> Rng {
        Rng::new(self.next_u64())
    }
}

/// `BATON_CAMPAIGN_SEED` if set, else a fresh seed from the clock.
pub fn seed_from_env() -> u64 {
    if let Some(s) = std::env::var("BATON_CAMPAIGN_SEED").ok().and_then(|s| s.trim().parse().ok()) {
        return s;
    }
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1);
    (nanos as u64) ^ ((std::process::id() as u64) << 32)
}

// ---------------------------------------------------------------------------------------------
// The fault-injecting network: one TCP proxy per directed link

/// What a directed link does with its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Forwards bytes both ways.
    Up,
    /// Closes every connection, new and existing.
    Refuse,
    /// Accepts and keeps connections but forwards nothing until healed (then everything held
    /// is delivered late, in order, unless a side gave up on the connection meanwhile).
    Blackhole,
}

impl LinkMode {
    /// Lowercase name for the history.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkMode::Up => "up",
            LinkMode::Refuse => "refuse",
            LinkMode::Blackhole => "blackhole",
        }
    }
}

/// A proxy per directed link between nodes; `set` changes one link, `heal` restores all.
pub struct Net {
    links: BTreeMap<(u64, u64), Link>,
}

/// One directed link: the proxy's address, its mode, its traffic.
type Link = (String, watch::Sender<LinkMode>, Arc<LinkStats>);

/// Traffic through one link's proxy.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections open now.
    pub open: AtomicU64,
    /// Bytes from the dialing node to the dialed one.
    pub sent: AtomicU64,
    /// Bytes back.
    pub received: AtomicU64,
}

impl Net {
    /// Binds one proxy per ordered pair of the nodes in `targets` (id -> real gRPC address)
    /// and starts forwarding on the current tokio runtime.
    pub async fn start(targets: &BTreeMap<u64, String>) -> std::io::Result<Net> {
        let mut links = BTreeMap::new();
        for from in targets.keys() {
            for (to, target) in targets {
                if from == to {
                    continue;
                }
                let listener = TcpListener::bind("127.0.0.1:0").await?;
                let addr = listener.local_addr()?.to_string();
                let (tx, rx) = watch::channel(LinkMode::Up);
                let stats = Arc::new(LinkStats::default());
                tokio::spawn(accept_loop(listener, target.clone(), rx, stats.clone()));
                links.insert((*from, *to), (addr, tx, stats));
            }
        }
        Ok(Net { links })
    }

    /// The address node `from` must dial to reach node `to` through its proxy.
    pub fn peer_addrs(&self) -> BTreeMap<(u64, u64), String> {
        self.links.iter().map(|(k, (addr, _, _))| (*k, addr.clone())).collect()
    }

    /// Sets the mode of link `from->to`.
    pub fn set(&self, from: u64, to: u64, mode: LinkMode) {
        if let Some((_, tx, _)) = self.links.get(&(from, to)) {
            tx.send_replace(mode);
        }
    }

    /// The mode of link `from->to`.
    pub fn mode(&self, from: u64, to: u64) -> LinkMode {
        self.links.get(&(from, to)).map(|(_, tx, _)| *tx.borrow()).unwrap_or(LinkMode::Up)
    }

    /// One line per link: mode, connections accepted and open, bytes each way.
    pub fn stats(&self) -> Vec<String> {
        self.links
            .iter()
            .map(|((a, b), (_, tx, st))| {
                format!(
                    "{a}->{b} {} accepted {} open {} sent {} received {}",
                    tx.borrow().as_str(),
                    st.accepted.load(Ordering::Relaxed),
                    st.open.load(Ordering::Relaxed),
                    st.sent.load(Ordering::Relaxed),
                    st.received.load(Ordering::Relaxed)
                )
            })
            .collect()
    }

    /// Every link forwards again.
    pub fn heal(&self) {
        for (_, tx, _) in self.links.values() {
            tx.send_replace(LinkMode::Up);
        }
    }
}

async fn accept_loop(listener: TcpListener, target: String, mode: watch::Receiver<LinkMode>, stats: Arc<LinkStats>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let (target, mode, stats) = (target.clone(), mode.clone(), stats.clone());
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = serve(sock, target, mode, &stats).await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Waits until the link forwards; an error if it refuses meanwhile.
async fn until_up(mode: &mut watch::Receiver<LinkMode>) -> std::io::Result<()> {
    let m = *mode.wait_for(|m| *m != LinkMode::Blackhole).await.map_err(std::io::Error::other)?;
    if m == LinkMode::Refuse { Err(std::io::Error::other("link refuses")) } else { Ok(()) }
}

async fn serve(
    client: TcpStream,
    target: String,
    mut mode: watch::Receiver<LinkMode>,
    stats: &LinkStats,
) -> std::io::Result<()> {
    // A connection made during a blackhole waits (its bytes held by the kernel) for the heal.
    until_up(&mut mode).await?;
    let server = TcpStream::connect(&target).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    tokio::select! {
        r = pump(cr, sw, mode.clone(), &stats.sent) => r,
        r = pump(sr, cw, mode, &stats.received) => r,
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<LinkMode>,
    count: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        until_up(&mut mode).await?;
        let n = tokio::select! {
            n = from.read(&mut buf) => n?,
            _ = mode.wait_for(|m| *m != LinkMode::Up) => continue,
        };
        if n == 0 {
            return Ok(());
        }
        until_up(&mut mode).await?;
        to.write_all(&buf[..n]).await?;
        count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------
// gRPC clients, one lazily connected channel per node

/// Clients for every node, by id.
#[derive(Clone)]
pub struct Api {
    channels: Vec<Channel>,
}

fn stale<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert("baton-read", tonic::metadata::MetadataValue::from_static("stale"));
    r
}

fn status_text(s: &tonic::Status) -> String {
    let m: String = s.message().chars().take(160).collect();
    format!("{:?}: {m}", s.code())
}

impl Api {
    /// Channels to `addrs` (node id = index + 1); nothing connects until used.
    pub fn new(addrs: &[String]) -> Api {
        let channels = addrs
            .iter()
            .map(|a| {
                Endpoint::from_shared(format!("http://{a}"))
                    .expect("endpoint")
                    .connect_timeout(Duration::from_millis(500))
                    .timeout(Duration::from_secs(15))
                    .connect_lazy()
            })
            .collect();
        Api { channels }
    }

    fn ch(&self, id: u64) -> Channel {
        self.channels[(id - 1) as usize].clone()
    }

    /// Node `id`'s Raft status, or None if it does not answer within `t`.
    pub async fn status(&self, id: u64, t: Duration) -> Option<pb::ClusterStatus> {
        let mut c = ClusterServiceClient::new(self.ch(id));
        tokio::time::timeout(t, c.status(pb::ClusterStatusRequest {})).await.ok()?.ok().map(|r| r.into_inner())
    }

    /// The node among `ids` that says it leads with the highest term.
    pub async fn leader(&self, ids: &[u64]) -> Option<u64> {
        let answers = futures::future::join_all(
            ids.iter().map(|id| async move { (*id, self.status(*id, Duration::from_millis(700)).await) }),
        )
        .await;
        answers
            .into_iter()
            .filter_map(|(id, s)| s.filter(|s| s.role == "leader").map(|s| (s.term, id)))
            .max()
            .map(|(_, id)| id)
    }

    /// `RunService.Start` on node `id`: (run id, deduplicated).
    pub async fn start(&self, id: u64, key: &str, ledger: &str, t: Duration) -> Result<(String, bool), String> {
        let mut c = RunServiceClient::new(self.ch(id));
        let req = pb::StartRunRequest {
            runbook: RUNBOOK.into(),
            params: [("ledger".to_string(), ledger.to_string())].into_iter().collect(),
            idempotency_key: key.into(),
            principal: String::new(),
        };
        match tokio::time::timeout(t, c.start(req)).await {
            Err(_) => Err("client timeout".into()),
            Ok(Err(s)) => Err(status_text(&s)),
            Ok(Ok(r)) => {
                let r = r.into_inner();
                let run = r.run.ok_or("the server returned no run")?;
                Ok((run.id, r.deduplicated))
            }
        }
    }

    /// Applies one document on node `id`.
    pub async fn apply(&self, id: u64, name: &str, source: &str) -> Result<(), String> {
        let mut c = RunbookServiceClient::new(self.ch(id));
        let req = pb::ApplyRequest { file_name: name.into(), source: source.into() };
        match tokio::time::timeout(Duration::from_secs(12), c.apply(req)).await {
            Err(_) => Err("client timeout".into()),
            Ok(Err(s)) => Err(status_text(&s)),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Every run node `id` holds (`stale`: from its applied state, else linearizable).
    pub async fn runs(&self, id: u64, stale_read: bool) -> Result<Vec<pb::Run>, String> {
        let mut c = RunServiceClient::new(self.ch(id)).max_decoding_message_size(256 * 1024 * 1024);
        let msg = pb::ListRunsRequest { runbook: String::new(), limit: 10_000 };
        let req = if stale_read { stale(msg) } else { tonic::Request::new(msg) };
        match tokio::time::timeout(Duration::from_secs(15), c.list(req)).await {
            Err(_) => Err("client timeout".into()),
            Ok(Err(s)) => Err(status_text(&s)),
            Ok(Ok(r)) => Ok(r.into_inner().runs),
        }
    }

    /// Node `id`'s schedules.
    pub async fn schedules(&self, id: u64, stale_read: bool) -> Result<Vec<pb::Schedule>, String> {
        let mut c = ScheduleServiceClient::new(self.ch(id));
        let msg = pb::ListSchedulesRequest {};
        let req = if stale_read { stale(msg) } else { tonic::Request::new(msg) };
        match tokio::time::timeout(Duration::from_secs(10), c.list(req)).await {
            Err(_) => Err("client timeout".into()),
            Ok(Err(s)) => Err(status_text(&s)),
            Ok(Ok(r)) => Ok(r.into_inner().schedules),
        }
    }

    /// Node `id`'s runbooks.
    pub async fn runbooks(&self, id: u64, stale_read: bool) -> Result<Vec<pb::Runbook>, String> {
        let mut c = RunbookServiceClient::new(self.ch(id));
        let msg = pb::ListRunbooksRequest {};
        let req = if stale_read { stale(msg) } else { tonic::Request::new(msg) };
        match tokio::time::timeout(Duration::from_secs(10), c.list(req)).await {
            Err(_) => Err("client timeout".into()),
            Ok(Err(s)) => Err(status_text(&s)),
            Ok(Ok(r)) => Ok(r.into_inner().runbooks),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// History

/// Everything the campaign did and saw, in order, with milliseconds since its start.
pub struct History {
    start: Instant,
    events: Mutex<Vec<Value>>,
}

impl History {
    fn new() -> History {
        History { start: Instant::now(), events: Mutex::new(Vec::new()) }
    }

    /// Milliseconds since the campaign started.
    pub fn ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn record(&self, kind: &str, mut v: Value) {
        v["t_ms"] = json!(self.ms());
        v["type"] = json!(kind);
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push(v);
    }

    fn snapshot(&self) -> Vec<Value> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration and report

/// What a campaign does.
#[derive(Debug, Clone)]
pub struct CampaignConfig {
    /// Name printed in the report.
    pub name: String,
    /// Seed of the fault plan and the workload's choices.
    pub seed: u64,
    /// Cluster size (3 or 5).
    pub nodes: u64,
    /// Faults to inject.
    pub events: usize,
    /// How long a fault holds, ms (a pause holds at least 1.2 s, longer than an election).
    pub fault_ms: (u64, u64),
    /// Pause between one fault's start and the next decision, ms.
    pub gap_ms: (u64, u64),
    /// Chance (%) that a fault starts while another one holds (at most two at once).
    pub overlap_pct: u64,
    /// A new API trigger about this often, ms.
    pub trigger_every_ms: u64,
    /// `--snapshot-every` of the nodes (small values put faults inside snapshots).
    pub snapshot_every: u64,
    /// Keep the data, logs and history here (default: `BATON_CAMPAIGN_DIR`, else a temp
    /// directory that is kept only when the checker finds an anomaly).
    pub dir: Option<PathBuf>,
    /// Print every trigger attempt and heal, not just faults.
    pub verbose: bool,
}

impl CampaignConfig {
    /// Defaults for a campaign of `events` faults on 3 nodes, seeded from the environment.
    pub fn new(name: &str, events: usize) -> CampaignConfig {
        CampaignConfig {
            name: name.into(),
            seed: seed_from_env(),
            nodes: 3,
            events,
            fault_ms: (500, 2_500),
            gap_ms: (200, 900),
            overlap_pct: 25,
            trigger_every_ms: 1_000,
            snapshot_every: 500,
            dir: std::env::var_os("BATON_CAMPAIGN_DIR").map(PathBuf::from),
            verbose: std::env::var_os("BATON_CAMPAIGN_VERBOSE").is_some(),
        }
    }
}

/// What a campaign did and found. `anomalies` must be 0.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Campaign name.
    pub campaign: String,
    /// Seed (replay with `BATON_CAMPAIGN_SEED`).
    pub seed: u64,
    /// Faults injected.
    pub fault_events: usize,
    /// SIGKILL + restart faults.
    pub kills: usize,
    /// SIGSTOP + SIGCONT faults.
    pub pauses: usize,
    /// Network partition faults.
    pub partitions: usize,
    /// API triggers acknowledged.
    pub triggers_acked: usize,
    /// Schedule ticks between the first and the last (fired or missed).
    pub ticks: u64,
    /// Ticks covered by `missed` records.
    pub missed_ticks: u64,
    /// Attempts in the final state.
    pub attempts: u64,
    /// Attempts marked lost.
    pub lost_attempts: u64,
    /// Contract violations found (each listed in `anomaly_list`).
    pub anomalies: usize,
    /// Wall time of the whole campaign.
    pub elapsed_s: f64,
    /// Nodes in the cluster.
    pub nodes: u64,
    /// API triggers sent (distinct keys).
    pub triggers_sent: usize,
    /// Start requests that failed or timed out and were retried.
    pub trigger_retries: u64,
    /// Ticks that fired a run.
    pub fired_ticks: u64,
    /// Runs in the final state.
    pub runs: u64,
    /// Runs in `needs_attention` (each after a lost attempt).
    pub needs_attention: u64,
    /// Idempotent steps retried after a lost attempt.
    pub retried_steps: u64,
    /// Runs that failed (a worker refusing a stale assignment reports it failed).
    pub failed_runs: u64,
    /// Lines in the effect ledger.
    pub effects: u64,
    /// Final applied index all nodes agreed on.
    pub applied_index: u64,
    /// The anomalies, each with its evidence.
    #[serde(skip)]
    pub anomaly_list: Vec<String>,
    /// Where the data, logs and `history.jsonl` are (removed after a clean temp-dir run).
    #[serde(skip)]
    pub dir: PathBuf,
}

impl Report {
    /// The one JSON line.
    pub fn json_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// The checker

/// What the checker reads: the final state and the history the campaign recorded.
#[derive(Debug)]
pub struct CheckInput<'a> {
    /// Every run of the final state.
    pub runs: &'a [Run],
    /// The schedule whose ticks are checked.
    pub schedule: &'a str,
    /// Its replicated counters (runs_fired, ticks_missed), if read.
    pub schedule_counters: Option<(u64, u64)>,
    /// Steps declared idempotent.
    pub idempotent_steps: &'a [&'a str],
    /// Every idempotency key the workload sent.
    pub sent_keys: &'a BTreeSet<String>,
    /// Acknowledged key -> run id.
    pub acks: &'a BTreeMap<String, String>,
    /// The effect ledger: `RUN STEP PID WORKER` lines.
    pub ledger: &'a str,
}

/// Counts the checker gathered.
#[derive(Debug, Clone, Default)]
pub struct CheckStats {
    /// Runs.
    pub runs: u64,
    /// Ticks from the first to the last.
    pub ticks: u64,
    /// Ticks that fired.
    pub fired_ticks: u64,
    /// Ticks inside missed records.
    pub missed_ticks: u64,
    /// Attempts.
    pub attempts: u64,
    /// Lost attempts.
    pub lost_attempts: u64,
    /// Idempotent steps with more than one attempt.
    pub retried_steps: u64,
    /// Runs in needs_attention.
    pub needs_attention: u64,
    /// Failed runs (explained ones; others are anomalies).
    pub failed_runs: u64,
    /// Ledger lines.
    pub effects: u64,
}

/// The checker's verdict.
#[derive(Debug, Clone, Default)]
pub struct CheckOutcome {
    /// One line of evidence per violation.
    pub anomalies: Vec<String>,
    /// Counts.
    pub stats: CheckStats,
}

fn short(run: &Run) -> String {
    let steps: Vec<String> = run
        .steps
        .iter()
        .map(|s| {
            let atts: Vec<String> = s
                .attempts
                .iter()
                .map(|a| {
                    format!(
                        "#{} id {} {} on {} fence {}/{}",
                        a.number,
                        a.id,
                        a.state.as_str(),
                        a.worker,
                        a.fence.term,
                        a.fence.index
                    )
                })
                .collect();
            format!("{}={} [{}]", s.id, s.state.as_str(), atts.join("; "))
        })
        .collect();
    format!("run {} {} ({})", run.id, run.state.as_str(), steps.join(", "))
}

/// Checks the final state against the history; every violation is one line of evidence.
pub fn check(input: &CheckInput) -> CheckOutcome {
    let mut out = CheckOutcome::default();
    let an = &mut out.anomalies;
    let st = &mut out.stats;
    st.runs = input.runs.len() as u64;
    let by_id: BTreeMap<&str, &Run> = input.runs.iter().map(|r| (r.id.as_str(), r)).collect();
    if by_id.len() != input.runs.len() {
        an.push("the run list holds the same run id twice".into());
    }

    // Attempt ids are unique cluster-wide.
    let mut attempt_of: HashMap<u64, String> = HashMap::new();
    for run in input.runs {
        for step in &run.steps {
            for a in &step.attempts {
                st.attempts += 1;
                if a.state == AttemptState::Lost {
                    st.lost_attempts += 1;
                }
                let here = format!("{}/{}", run.id, step.id);
                if let Some(other) = attempt_of.insert(a.id, here.clone()) {
                    an.push(format!("attempt id {} appears twice: {other} and {here}", a.id));
                }
            }
        }
    }

    // API triggers: one run per key, and the acknowledged one.
    let mut runs_of_key: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for run in input.runs {
        if let Some(k) = &run.idempotency_key {
            runs_of_key.entry(k.as_str()).or_default().push(run.id.as_str());
            if !input.sent_keys.contains(k) {
                an.push(format!("run {} has idempotency key {k:?}, which the workload never sent", run.id));
            }
        } else if run.trigger == Trigger::Api {
            an.push(format!("API run {} has no idempotency key, but every trigger sent one", run.id));
        }
    }
    for (k, ids) in &runs_of_key {
        if ids.len() > 1 {
            an.push(format!("idempotency key {k:?} made {} runs: {ids:?}", ids.len()));
        }
    }
    for (k, id) in input.acks {
        match runs_of_key.get(k.as_str()) {
            None => an.push(format!("acknowledged trigger {k:?} (run {id}) has no run in the final state")),
            Some(ids) if !ids.contains(&id.as_str()) => {
                an.push(format!("acknowledged trigger {k:?} answered run {id}, but the state has {ids:?}"))
            }
            Some(_) => {}
        }
    }

    // Schedule ticks: each exactly once, fired or inside one missed record; no gaps.
    let mut covered: BTreeMap<i64, String> = BTreeMap::new();
    let (mut fired, mut missed) = (0u64, 0u64);
    for run in input.runs {
        let Trigger::Schedule { name, tick_ms } = &run.trigger else { continue };
        if name != input.schedule {
            continue;
        }
        let ticks: Vec<i64> = if run.state == RunState::Missed {
            missed += run.missed_ticks;
            if run.missed_ticks == 0 {
                an.push(format!("missed record {} covers no tick", run.id));
            }
            (0..run.missed_ticks as i64).map(|i| tick_ms + i * 1000).collect()
        } else {
            fired += 1;
            if run.id != Run::scheduled_id(name, *tick_ms) {
                an.push(format!("scheduled run {} is not named after its tick {tick_ms}", run.id));
            }
            vec![*tick_ms]
        };
        for t in ticks {
            if t % 1000 != 0 {
                an.push(format!("{} covers tick {t}, which is not a whole second", run.id));
            }
            if let Some(other) = covered.insert(t, run.id.clone()) {
                an.push(format!("tick {t} is covered twice: by {other} and by {}", run.id));
            }
        }
    }
    if let (Some(first), Some(last)) = (covered.keys().next().copied(), covered.keys().last().copied()) {
        st.ticks = ((last - first) / 1000 + 1) as u64;
        let mut t = first;
        let mut gaps = Vec::new();
        while t <= last {
            if !covered.contains_key(&t) {
                gaps.push(t);
            }
            t += 1000;
        }
        if !gaps.is_empty() {
            an.push(format!(
                "{} tick(s) between {first} and {last} have neither a run nor a missed record (silent miss): {:?}",
                gaps.len(),
                &gaps[..gaps.len().min(20)]
            ));
        }
    }
    st.fired_ticks = fired;
    st.missed_ticks = missed;
    if let Some((runs_fired, ticks_missed)) = input.schedule_counters
        && (runs_fired, ticks_missed) != (fired, missed)
    {
        an.push(format!(
            "schedule {} counts {runs_fired} fired and {ticks_missed} missed ticks, its records {fired} and {missed}",
            input.schedule
        ));
    }

    // Effects against attempts.
    let mut effects: BTreeMap<(String, String), Vec<(String, String)>> = BTreeMap::new();
    for line in input.ledger.lines() {
        st.effects += 1;
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() != 4 {
            an.push(format!("malformed ledger line {line:?}"));
            continue;
        }
        effects.entry((f[0].into(), f[1].into())).or_default().push((f[2].into(), f[3].into()));
    }
    for ((run_id, step_id), list) in &effects {
        match by_id.get(run_id.as_str()) {
            None => {
                an.push(format!("{} effect(s) of step {step_id} of run {run_id}, which does not exist", list.len()))
            }
            Some(r) if r.step(step_id).is_none() => {
                an.push(format!("effect of step {step_id}, which run {run_id} does not have"))
            }
            Some(_) => {}
        }
    }
    for run in input.runs {
        for step in &run.steps {
            let list = effects.get(&(run.id.clone(), step.id.clone())).cloned().unwrap_or_default();
            let n_att = step.attempts.len();
            let idempotent = input.idempotent_steps.contains(&step.id.as_str());
            let pids: Vec<String> = list.iter().map(|(p, w)| format!("pid {p} on {w}")).collect();
            if n_att > 1 {
                if !idempotent {
                    an.push(format!("non-idempotent step retried: {}", short(run)));
                } else if step.attempts[..n_att - 1].iter().any(|a| a.state != AttemptState::Lost) {
                    an.push(format!("step retried although no earlier attempt was lost: {}", short(run)));
                } else {
                    st.retried_steps += 1;
                }
            }
            if list.len() > n_att {
                an.push(format!(
                    "duplicate effect: step {} has {} effects ({}) but {n_att} attempt(s): {}",
                    step.id,
                    list.len(),
                    pids.join(", "),
                    short(run)
                ));
            }
            let succeeded = step.attempts.iter().filter(|a| a.state == AttemptState::Succeeded).count();
            if list.len() < succeeded {
                an.push(format!("step {} succeeded without its effect in the ledger: {}", step.id, short(run)));
            }
            let mut per_worker: BTreeMap<&str, usize> = BTreeMap::new();
            for (_, w) in &list {
                *per_worker.entry(w.as_str()).or_default() += 1;
            }
            for (w, n) in per_worker {
                let on_w = step.attempts.iter().filter(|a| a.worker == w).count();
                if n > on_w {
                    an.push(format!(
                        "worker {w} ran step {} {n} time(s) but holds {on_w} of its attempts: {}",
                        step.id,
                        short(run)
                    ));
                }
            }
        }
    }

    // Every run ends: terminal, or needs_attention after a lost attempt.
    for run in input.runs {
        match run.state {
            RunState::Succeeded => {
                if run.steps.iter().any(|s| s.state != StepState::Succeeded) {
                    an.push(format!("succeeded run with a step that did not succeed: {}", short(run)));
                }
            }
            RunState::Missed | RunState::Cancelled => {}
            RunState::Failed => {
                // A worker refuses an assignment fenced by an older term and reports it failed
                // without running it: safe, and explained. Nothing else in this workload fails.
                let refused = run.steps.iter().flat_map(|s| &s.attempts).any(|a| {
                    a.state == AttemptState::Failed && a.error.as_deref().is_some_and(|e| e.contains("refused"))
                });
                if refused {
                    st.failed_runs += 1;
                } else {
                    an.push(format!(
                        "run failed without a refused attempt (error {:?}): {}",
                        run.error.as_deref().unwrap_or(""),
                        short(run)
                    ));
                }
            }
            RunState::NeedsAttention => {
                let lost = run.steps.iter().any(|s| {
                    s.state == StepState::Lost
                        && !input.idempotent_steps.contains(&s.id.as_str())
                        && s.attempts.last().is_some_and(|a| a.state == AttemptState::Lost)
                });
                if lost {
                    st.needs_attention += 1;
                } else {
                    an.push(format!("needs_attention without a lost attempt of a non-idempotent step: {}", short(run)));
                }
            }
            RunState::Pending | RunState::Running => {
                an.push(format!("run never finished after the cluster settled: {}", short(run)))
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The campaign

/// The runbook: three exec steps appending to the effect ledger; `b` sleeps 1 s first, `c` is
/// idempotent.
pub fn runbook_yaml() -> String {
    let step = |id: &str, pre: &str, idem: bool| {
        format!(
            "  - id: {id}\n    action: exec\n{}    with:\n      command: [\"sh\", \"-c\", '{pre}echo \"$RUN {id} $$ ${{BATON_CAMPAIGN_WORKER:-unknown}}\" >> \"$LEDGER\"']\n      env: {{ RUN: \"{{{{ run.id }}}}\", LEDGER: \"{{{{ params.ledger }}}}\" }}\n",
            if idem { "    idempotent: true\n" } else { "" }
        )
    };
    format!(
        "name: {RUNBOOK}\ndescription: Fault campaign workload; every step appends one line to an effect ledger.\nparams:\n  ledger: {{ type: string, required: true }}\nsteps:\n{}{}{}",
        step("a", "", false),
        step("b", "sleep 1; ", false),
        step("c", "", true)
    )
}

fn schedule_yaml(cron: &str, ledger: &str) -> String {
    format!("schedule: {SCHEDULE}\nrunbook: {RUNBOOK}\ncron: \"{cron}\"\nparams: {{ ledger: '{ledger}' }}\n")
}

#[derive(Default)]
struct Triggers {
    sent: BTreeSet<String>,
    acks: BTreeMap<String, String>,
    retries: u64,
}

struct Shared {
    api: Api,
    history: History,
    triggers: Mutex<Triggers>,
    ledger: String,
    n: u64,
    stop_new: AtomicBool,
    give_up: AtomicBool,
    verbose: bool,
}

impl Shared {
    fn say(&self, what: &str) {
        println!("[{:>7.1}s] {what}", self.history.ms() as f64 / 1000.0);
    }
}

/// Runs a campaign on its own tokio runtime and returns its report.
pub fn run_campaign(cfg: CampaignConfig) -> Report {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    rt.block_on(campaign(cfg))
}

async fn with_cluster<T: Send + 'static>(
    cluster: &Arc<Mutex<Cluster>>,
    f: impl FnOnce(&mut Cluster) -> T + Send + 'static,
) -> T {
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || f(&mut c.lock().unwrap_or_else(|e| e.into_inner())))
        .await
        .expect("cluster operation panicked")
}

async fn campaign(cfg: CampaignConfig) -> Report {
    println!(
        "campaign {}: seed {} (replay with BATON_CAMPAIGN_SEED={}), {} nodes, {} faults",
        cfg.name, cfg.seed, cfg.seed, cfg.nodes, cfg.events
    );
    let temp = match &cfg.dir {
        Some(_) => None,
        None => Some(tempfile::Builder::new().prefix("baton-campaign-").tempdir().expect("temp dir")),
    };
    let dir = cfg.dir.clone().unwrap_or_else(|| temp.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_default());
    std::fs::create_dir_all(&dir).expect("campaign dir");
    let ledger_path = dir.join("ledger.txt");
    std::fs::write(&ledger_path, "").expect("ledger");
    let ledger = ledger_path.display().to_string();
    let mut rng = Rng::new(cfg.seed);

    // The cluster, with a proxy on every directed link.
    let addrs: Vec<String> = (0..cfg.nodes).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let targets: BTreeMap<u64, String> = addrs.iter().enumerate().map(|(i, a)| (i as u64 + 1, a.clone())).collect();
    let net = Arc::new(Net::start(&targets).await.expect("proxies"));
    let mut opts = ClusterOptions::new(cfg.nodes);
    opts.addrs = Some(addrs.clone());
    opts.peer_addrs = net.peer_addrs();
    opts.server_args = vec!["--snapshot-every".into(), cfg.snapshot_every.to_string()];
    opts.log_filter =
        std::env::var("BATON_CAMPAIGN_LOG").unwrap_or_else(|_| "info,raft=info,sled=warn,h2=warn,tower=warn".into());
    let cluster_dir = dir.clone();
    let cluster = Arc::new(Mutex::new(
        tokio::task::spawn_blocking(move || {
            let mut c = Cluster::start_with(&cluster_dir, &opts);
            for w in ["w1", "w2"] {
                c.add_worker_with_env(w, 2, &[("BATON_CAMPAIGN_WORKER", w)]);
            }
            c
        })
        .await
        .expect("cluster start"),
    ));
    let shared = Arc::new(Shared {
        api: Api::new(&addrs),
        history: History::new(),
        triggers: Mutex::new(Triggers::default()),
        ledger: ledger.clone(),
        n: cfg.nodes,
        stop_new: AtomicBool::new(false),
        give_up: AtomicBool::new(false),
        verbose: cfg.verbose,
    });
    let all: Vec<u64> = (1..=cfg.nodes).collect();
    let mut anomalies: Vec<String> = Vec::new();

    // Setup: a leader, the runbook, the schedule, and one run end to end.
    let deadline = Instant::now() + Duration::from_secs(60);
    while shared.api.leader(&all).await.is_none() {
        assert!(Instant::now() < deadline, "no leader within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    must_apply(&shared, "campaign.yaml", &runbook_yaml()).await;
    must_apply(&shared, "tick.yaml", &schedule_yaml("* * * * * *", &ledger)).await;
    shared.triggers.lock().unwrap_or_else(|e| e.into_inner()).sent.insert("warmup".into());
    if let Err(e) = trigger_and_wait(&shared, "warmup", Duration::from_secs(60)).await {
        panic!("the healthy cluster does not run a trigger: {e}");
    }
    shared.history.record("setup", json!({"dir": dir.display().to_string()}));
    shared.say("cluster up, warm-up run succeeded; faults begin");

    // Workload and nemesis.
    let workload = tokio::spawn(trigger_loop(shared.clone(), rng.fork(), cfg.trigger_every_ms));
    let mut nemesis = Nemesis {
        shared: shared.clone(),
        cluster: cluster.clone(),
        net: net.clone(),
        rng: rng.fork(),
        cfg: cfg.clone(),
        active: Vec::new(),
        down: BTreeSet::new(),
        counts: (0, 0, 0),
        anomalies: Vec::new(),
    };
    nemesis.run().await;
    let (kills, pauses, partitions) = nemesis.counts;
    anomalies.append(&mut nemesis.anomalies);
    let healed_ms = shared.history.ms();
    shared.history.record("healed", json!({}));
    shared.say("every fault healed; settling");

    // After the heal the cluster must be available again, through every node.
    shared.stop_new.store(true, Ordering::SeqCst);
    let all_nodes: Vec<u64> = (1..=cfg.nodes).collect();
    let healthy = match wait_healthy(&shared, &all_nodes, Duration::from_secs(30)).await {
        Ok(()) => true,
        Err(e) => {
            shared.say(&format!("NOT every node serves 30 s after the heal: {e}"));
            let first = net.stats();
            tokio::time::sleep(Duration::from_secs(3)).await;
            let second = net.stats();
            let links: Vec<String> = first.iter().zip(&second).map(|(a, b)| format!("{a}  |3 s later|  {b}")).collect();
            println!("proxy links (mode, connections, bytes):\n{}", links.join("\n"));
            shared.history.record("unhealthy", json!({"status": e, "links": links}));
            anomalies.push(format!("not every node serves linearizable reads 30 s after every fault healed: {e}"));
            // Go on if a quorum serves, to check the rest.
            let quorum = futures::future::join_all(all_nodes.iter().map(|id| {
                let s = shared.clone();
                let id = *id;
                async move { wait_healthy(&s, &[id], Duration::from_secs(5)).await.is_ok() }
            }))
            .await;
            let serving = quorum.iter().filter(|ok| **ok).count() as u64;
            let quorum = serving > cfg.nodes / 2;
            if !quorum {
                shared.give_up.store(true, Ordering::SeqCst);
            }
            quorum
        }
    };
    // The schedule fires under the healed cluster, then is frozen so the state can settle.
    tokio::time::sleep(Duration::from_secs(5)).await;
    if healthy && let Err(e) = try_apply(&shared, "tick-frozen.yaml", &schedule_yaml("0 0 0 1 1 *", &ledger)).await {
        anomalies.push(format!("the healed cluster does not apply a schedule: {e}"));
    }
    // Triggers still unacknowledged keep retrying on the healed cluster, for a while.
    let s = shared.clone();
    let give_up = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(45)).await;
        s.give_up.store(true, Ordering::SeqCst);
    });
    for t in workload.await.expect("workload") {
        let _ = t.await;
    }
    give_up.abort();
    shared.give_up.store(true, Ordering::SeqCst);

    let mut applied_index = 0;
    if healthy {
        // Everything in flight finishes (the backlog built up under faults drains).
        if let Err(e) = settle(&shared, Duration::from_secs(60)).await {
            anomalies.push(e);
        }
        // The healed, idle cluster makes progress: a fresh trigger completes.
        let probe_key = format!("probe-{}", cfg.seed);
        shared.triggers.lock().unwrap_or_else(|e| e.into_inner()).sent.insert(probe_key.clone());
        if let Err(e) = trigger_and_wait(&shared, &probe_key, Duration::from_secs(60)).await {
            anomalies.push(format!("no progress after the heal: a fresh trigger did not succeed: {e}"));
        }
        // Every acknowledged key deduplicates to its run.
        let acks = shared.triggers.lock().unwrap_or_else(|e| e.into_inner()).acks.clone();
        let mut failures = 0;
        for (key, run_id) in &acks {
            let node = rng.range(1, cfg.nodes);
            let mut answer = Err(String::new());
            for _ in 0..3 {
                answer = shared.api.start(node, key, &ledger, Duration::from_secs(5)).await;
                if answer.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            match answer {
                Ok((id, true)) if &id == run_id => {}
                other => {
                    anomalies.push(format!("retrying acknowledged key {key:?} (run {run_id}) answered {other:?}"));
                    failures += 1;
                    if failures >= 3 {
                        break;
                    }
                }
            }
        }
        // All nodes hold the same state at the same applied index.
        match converge(&shared, Duration::from_secs(60)).await {
            Ok(i) => applied_index = i,
            Err(e) => anomalies.push(e),
        }
    }
    let statuses = statuses(&shared).await;
    shared.history.record("final-status", json!({"nodes": statuses}));
    if !healthy {
        println!("node status at the end:\n{}", statuses.join("\n"));
    }

    // The final state, the ledger, the history: check.
    let (runs, schedules) = match read_final_state(&shared, healthy).await {
        Ok(r) => r,
        Err(e) => {
            anomalies.push(e);
            (Vec::new(), Vec::new())
        }
    };
    let counters = schedules.iter().find(|s| s.name == SCHEDULE).map(|s| (s.runs_fired, s.ticks_missed));
    let ledger_text = std::fs::read_to_string(&ledger_path).unwrap_or_default();
    let triggers = shared.triggers.lock().unwrap_or_else(|e| e.into_inner());
    let outcome = check(&CheckInput {
        runs: &runs,
        schedule: SCHEDULE,
        schedule_counters: counters,
        idempotent_steps: &IDEMPOTENT_STEPS,
        sent_keys: &triggers.sent,
        acks: &triggers.acks,
        ledger: &ledger_text,
    });
    anomalies.extend(outcome.anomalies);
    let healed_tick_fired = runs.iter().any(|r| {
        matches!(&r.trigger, Trigger::Schedule { tick_ms, .. } if r.state != RunState::Missed
            && *tick_ms > (shared.history.start_unix_ms() + healed_ms as i64))
    });
    if !healed_tick_fired {
        anomalies.push("no schedule tick fired in the seconds after the heal".into());
    }
    let s = outcome.stats;
    let report = Report {
        campaign: cfg.name.clone(),
        seed: cfg.seed,
        fault_events: kills + pauses + partitions,
        kills,
        pauses,
        partitions,
        triggers_acked: triggers.acks.len(),
        ticks: s.ticks,
        missed_ticks: s.missed_ticks,
        attempts: s.attempts,
        lost_attempts: s.lost_attempts,
        anomalies: anomalies.len(),
        elapsed_s: (shared.history.ms() as f64 / 100.0).round() / 10.0,
        nodes: cfg.nodes,
        triggers_sent: triggers.sent.len(),
        trigger_retries: triggers.retries,
        fired_ticks: s.fired_ticks,
        runs: s.runs,
        needs_attention: s.needs_attention,
        retried_steps: s.retried_steps,
        failed_runs: s.failed_runs,
        effects: s.effects,
        applied_index,
        anomaly_list: anomalies,
        dir: dir.clone(),
    };
    drop(triggers);

    // Evidence on disk: the history, the anomalies; the data directory stays on anomalies.
    let history: String = shared.history.snapshot().iter().map(|v| format!("{v}\n")).collect();
    let _ = std::fs::write(dir.join("history.jsonl"), history);
    let _ = std::fs::write(dir.join("anomalies.txt"), report.anomaly_list.join("\n"));
    let final_state: String =
        runs.iter().map(|r| format!("{}\n", serde_json::to_string(r).unwrap_or_default())).collect();
    let _ = std::fs::write(dir.join("final-runs.jsonl"), final_state);
    drop(nemesis);
    if let Ok(c) = Arc::try_unwrap(cluster) {
        drop(c.into_inner().unwrap_or_else(|e| e.into_inner()));
    }
    if let Some(t) = temp {
        if report.anomalies > 0 {
            let kept = t.keep();
            println!("anomalies found: the data, node logs and history are kept in {}", kept.display());
        } else {
            drop(t);
        }
    }
    report
}

impl History {
    fn start_unix_ms(&self) -> i64 {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64);
        now.unwrap_or(0) - self.ms() as i64
    }
}

async fn must_apply(shared: &Shared, name: &str, source: &str) {
    if let Err(e) = try_apply(shared, name, source).await {
        panic!("{e}");
    }
}

async fn try_apply(shared: &Shared, name: &str, source: &str) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut node = 1;
    loop {
        match shared.api.apply(node, name, source).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(format!("applying {name} failed for 60 s: {e}")),
            Err(_) => {
                node = node % shared.n + 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

/// Starts a run with `key` (retrying) and waits until it succeeds.
async fn trigger_and_wait(shared: &Shared, key: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut node = 1;
    let run_id = loop {
        match shared.api.start(node, key, &shared.ledger, Duration::from_secs(5)).await {
            Ok((id, _)) => break id,
            Err(e) if Instant::now() > deadline => return Err(format!("not acknowledged: {e}")),
            Err(_) => {
                node = node % shared.n + 1;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    shared.triggers.lock().unwrap_or_else(|e| e.into_inner()).acks.insert(key.into(), run_id.clone());
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut c = RunServiceClient::new(shared.api.ch(node));
        match tokio::time::timeout(Duration::from_secs(5), c.get(pb::GetRunRequest { id: run_id.clone() })).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if r.state == pb::RunState::Succeeded as i32 {
                    return Ok(());
                }
                last = format!("run {run_id} state {:?}", pb::RunState::try_from(r.state));
                if matches!(
                    pb::RunState::try_from(r.state),
                    Ok(pb::RunState::Failed | pb::RunState::Cancelled | pb::RunState::NeedsAttention)
                ) {
                    return Err(last);
                }
            }
            Ok(Err(s)) => last = status_text(&s),
            Err(_) => last = "client timeout".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("run {run_id} did not succeed in {timeout:?}: {last}"))
}

/// Spawns a trigger every `every_ms` (± 50%) until told to stop; returns their tasks.
async fn trigger_loop(shared: Arc<Shared>, mut rng: Rng, every_ms: u64) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let mut k = 0u64;
    let inflight = Arc::new(tokio::sync::Semaphore::new(6));
    while !shared.stop_new.load(Ordering::SeqCst) {
        let Ok(permit) = inflight.clone().acquire_owned().await else { break };
        let key = format!("t-{k}");
        k += 1;
        shared.triggers.lock().unwrap_or_else(|e| e.into_inner()).sent.insert(key.clone());
        let (s, r) = (shared.clone(), rng.fork());
        tasks.push(tokio::spawn(async move {
            trigger_one(s, key, r).await;
            drop(permit);
        }));
        tokio::time::sleep(Duration::from_millis(rng.range(every_ms / 2, every_ms * 3 / 2))).await;
    }
    tasks
}

/// One API trigger: the same key, through random nodes, until acknowledged or given up.
async fn trigger_one(shared: Arc<Shared>, key: String, mut rng: Rng) {
    let mut tries = 0u32;
    loop {
        if shared.give_up.load(Ordering::SeqCst) {
            shared.history.record("trigger-unacked", json!({"key": key, "tries": tries}));
            return;
        }
        let node = rng.range(1, shared.n);
        let began = Instant::now();
        let answer = shared.api.start(node, &key, &shared.ledger, Duration::from_secs(4)).await;
        tries += 1;
        let ms = began.elapsed().as_millis() as u64;
        match answer {
            Ok((run_id, dedup)) => {
                shared.history.record(
                    "trigger-ack",
                    json!({"key": key, "node": node, "run": run_id, "deduplicated": dedup, "tries": tries, "ms": ms}),
                );
                if shared.verbose {
                    shared.say(&format!("trigger {key} -> {run_id} via node {node} (try {tries}, dedup {dedup})"));
                }
                shared.triggers.lock().unwrap_or_else(|e| e.into_inner()).acks.insert(key, run_id);
                return;
            }
            Err(e) => {
                shared.history.record("trigger-error", json!({"key": key, "node": node, "error": e, "ms": ms}));
                shared.triggers.lock().unwrap_or_else(|e| e.into_inner()).retries += 1;
                tokio::time::sleep(Duration::from_millis(rng.range(100, 400))).await;
            }
        }
    }
}

/// Waits until no run is pending or running (linearizable reads through any node).
/// Waits until no run is pending or running (linearizable reads through any node), as long
/// as runs keep finishing: a backlog built up under faults may take minutes to drain, but
/// `stall` without a single run finishing is a failure.
async fn settle(shared: &Shared, stall: Duration) -> Result<(), String> {
    let mut node = 1;
    let mut last = String::new();
    let mut fewest = usize::MAX;
    let mut progress_at = Instant::now();
    let began = Instant::now();
    while progress_at.elapsed() < stall {
        match shared.api.runs(node, false).await {
            Ok(runs) => {
                let open: Vec<&str> = runs
                    .iter()
                    .filter(|r| r.state == pb::RunState::Pending as i32 || r.state == pb::RunState::Running as i32)
                    .map(|r| r.id.as_str())
                    .collect();
                if open.is_empty() {
                    shared.say(&format!("every run settled in {:.0} s", began.elapsed().as_secs_f64()));
                    return Ok(());
                }
                if open.len() < fewest {
                    fewest = open.len();
                    progress_at = Instant::now();
                }
                last = format!("{} run(s) still open: {:?}", open.len(), &open[..open.len().min(10)]);
            }
            Err(e) => {
                last = e;
                node = node % shared.n + 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(format!("runs stopped finishing after the heal (none finished for {stall:?}): {last}"))
}

struct NodeView {
    applied: u64,
    runs: Vec<pb::Run>,
    schedules: Vec<pb::Schedule>,
    runbooks: Vec<pb::Runbook>,
}

async fn node_view(shared: &Shared, id: u64) -> Option<NodeView> {
    let t = Duration::from_secs(3);
    let before = shared.api.status(id, t).await?.applied_index;
    let mut runs = shared.api.runs(id, true).await.ok()?;
    let schedules = shared.api.schedules(id, true).await.ok()?;
    let mut runbooks = shared.api.runbooks(id, true).await.ok()?;
    let after = shared.api.status(id, t).await?.applied_index;
    if before != after {
        return None;
    }
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    runbooks.sort_by(|a, b| a.name.cmp(&b.name));
    Some(NodeView { applied: before, runs, schedules, runbooks })
}

/// Waits until every node has applied the same index, then compares their states.
async fn converge(shared: &Shared, timeout: Duration) -> Result<u64, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        let mut views = Vec::new();
        for id in 1..=shared.n {
            views.push(node_view(shared, id).await);
        }
        let applied: Vec<Option<u64>> = views.iter().map(|v| v.as_ref().map(|v| v.applied)).collect();
        if let Some(views) = views.into_iter().collect::<Option<Vec<_>>>()
            && views.iter().all(|v| v.applied == views[0].applied)
        {
            let base = &views[0];
            let mut diffs = Vec::new();
            for (i, v) in views.iter().enumerate().skip(1) {
                let node = i + 1;
                if v.schedules != base.schedules {
                    diffs.push(format!("node {node} schedules {:?} != node 1 {:?}", v.schedules, base.schedules));
                }
                if v.runbooks != base.runbooks {
                    diffs.push(format!("node {node} runbooks differ from node 1's"));
                }
                if v.runs != base.runs {
                    let a: BTreeMap<&str, &pb::Run> = base.runs.iter().map(|r| (r.id.as_str(), r)).collect();
                    let b: BTreeMap<&str, &pb::Run> = v.runs.iter().map(|r| (r.id.as_str(), r)).collect();
                    for id in a.keys().chain(b.keys()).collect::<BTreeSet<_>>() {
                        match (a.get(id), b.get(id)) {
                            (Some(x), Some(y)) if x == y => {}
                            (x, y) => diffs.push(format!("run {id}: node 1 {x:?}\n  node {node} {y:?}")),
                        }
                    }
                }
            }
            if diffs.is_empty() {
                return Ok(base.applied);
            }
            return Err(format!(
                "nodes diverge at applied index {}: {}",
                base.applied,
                diffs[..diffs.len().min(5)].join("\n")
            ));
        }
        last = format!("applied indexes {applied:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(format!("nodes never reached the same applied index within {timeout:?}: {last}"))
}

/// The final runs and schedules, from one node: a linearizable read if a quorum serves, else
/// the stale state of the node that applied the most.
async fn read_final_state(shared: &Shared, healthy: bool) -> Result<(Vec<Run>, Vec<pb::Schedule>), String> {
    let mut found = None;
    if healthy {
        for attempt in 0..10 {
            let id = attempt % shared.n + 1;
            if let (Ok(runs), Ok(schedules)) = (shared.api.runs(id, false).await, shared.api.schedules(id, false).await)
            {
                found = Some((runs, schedules));
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    if found.is_none() {
        let mut best: Option<(u64, Vec<pb::Run>, Vec<pb::Schedule>)> = None;
        for id in 1..=shared.n {
            let applied = shared.api.status(id, Duration::from_secs(2)).await.map(|s| s.applied_index).unwrap_or(0);
            if let (Ok(runs), Ok(schedules)) = (shared.api.runs(id, true).await, shared.api.schedules(id, true).await)
                && best.as_ref().is_none_or(|(a, _, _)| applied > *a)
            {
                best = Some((applied, runs, schedules));
            }
        }
        found = best.map(|(_, r, s)| (r, s));
    }
    let (runs, schedules) = found.ok_or("cannot read the final state from any node, even stale")?;
    let runs = runs
        .into_iter()
        .map(|r| baton_proto::run_from_pb(r).map_err(|e| format!("a run does not convert: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((runs, schedules))
}

/// One line per node: role, leader, term, commit and applied index (or why it did not answer).
async fn statuses(shared: &Shared) -> Vec<String> {
    let mut out = Vec::new();
    for id in 1..=shared.n {
        out.push(match shared.api.status(id, Duration::from_secs(2)).await {
            Some(s) => format!(
                "node {id}: {} leader {} term {} commit {} applied {} snapshot {} workers {:?} members {:?}",
                s.role,
                s.leader_id,
                s.term,
                s.commit_index,
                s.applied_index,
                s.snapshot_index,
                s.workers.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
                s.members
                    .iter()
                    .map(|m| format!("{} matched {} lag {}", m.id, m.matched_index, m.lag))
                    .collect::<Vec<_>>()
            ),
            None => format!("node {id}: no answer"),
        });
    }
    out
}

/// Waits for a leader and a linearizable read through each of `ids`.
async fn wait_healthy(shared: &Shared, ids: &[u64], timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let all: Vec<u64> = (1..=shared.n).collect();
    loop {
        let mut ok = shared.api.leader(&all).await.is_some();
        for id in ids {
            ok = ok && shared.api.schedules(*id, false).await.is_ok() && shared.api.runs(*id, false).await.is_ok();
        }
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(statuses(shared).await.join("; "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The nemesis

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Kill,
    Pause,
    Partition,
}

#[derive(Debug)]
struct Active {
    seq: usize,
    kind: Kind,
    node: u64,
    heal_at: Instant,
}

struct Nemesis {
    shared: Arc<Shared>,
    cluster: Arc<Mutex<Cluster>>,
    net: Arc<Net>,
    rng: Rng,
    cfg: CampaignConfig,
    active: Vec<Active>,
    /// Nodes killed or paused now.
    down: BTreeSet<u64>,
    /// (kills, pauses, partitions) injected.
    counts: (usize, usize, usize),
    anomalies: Vec<String>,
}

impl Nemesis {
    async fn run(&mut self) {
        let mut injected = 0;
        while injected < self.cfg.events {
            let overlap = self.active.len() < 2 && self.rng.chance(self.cfg.overlap_pct);
            if !self.active.is_empty() && !overlap {
                self.heal_next().await;
                let gap = self.rng.range(self.cfg.gap_ms.0, self.cfg.gap_ms.1);
                self.sleep(Duration::from_millis(gap)).await;
                continue;
            }
            if self.inject(injected).await {
                injected += 1;
            } else {
                self.heal_next().await;
            }
            let gap = self.rng.range(self.cfg.gap_ms.0, self.cfg.gap_ms.1);
            self.sleep(Duration::from_millis(gap)).await;
        }
        while !self.active.is_empty() {
            self.heal_next().await;
        }
        self.net.heal();
    }

    /// Sleeps `d`, healing whatever falls due meanwhile.
    async fn sleep(&mut self, d: Duration) {
        let until = Instant::now() + d;
        loop {
            let next = self.active.iter().map(|a| a.heal_at).min();
            match next {
                Some(h) if h <= until => {
                    tokio::time::sleep_until(h.into()).await;
                    self.heal_due().await;
                }
                _ => {
                    tokio::time::sleep_until(until.into()).await;
                    return;
                }
            }
        }
    }

    async fn heal_next(&mut self) {
        if let Some(h) = self.active.iter().map(|a| a.heal_at).min() {
            tokio::time::sleep_until(h.into()).await;
            self.heal_due().await;
        }
    }

    async fn heal_due(&mut self) {
        let now = Instant::now();
        let (due, keep): (Vec<Active>, Vec<Active>) = self.active.drain(..).partition(|a| a.heal_at <= now);
        self.active = keep;
        for a in due {
            self.heal(a).await;
        }
    }

    async fn heal(&mut self, a: Active) {
        match a.kind {
            Kind::Partition => self.net.heal(),
            Kind::Pause => {
                let node = a.node;
                with_cluster(&self.cluster, move |c| c.cont(node)).await;
            }
            Kind::Kill => {
                let node = a.node;
                let mut result = Err(String::new());
                for _ in 0..3 {
                    result = with_cluster(&self.cluster, move |c| c.try_restart(node)).await;
                    if result.is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                if let Err(e) = &result {
                    self.anomalies.push(format!("node {node} did not restart after fault {}: {e}", a.seq));
                    self.shared.say(&format!("node {node} does not restart: {e}"));
                    // Stays down: no more faults on it.
                    self.shared.history.record("heal-failed", json!({"seq": a.seq, "node": node, "error": e}));
                    return;
                }
            }
        }
        if a.kind != Kind::Partition {
            self.down.remove(&a.node);
        }
        self.shared.history.record("heal", json!({"seq": a.seq}));
        if self.shared.verbose {
            self.shared.say(&format!("fault {} healed", a.seq));
        }
    }

    /// Injects one fault; false if none fits right now (everything it could touch is taken).
    async fn inject(&mut self, seq: usize) -> bool {
        let up: Vec<u64> = (1..=self.cfg.nodes).filter(|n| !self.down.contains(n)).collect();
        let partition_free = !self.active.iter().any(|a| a.kind == Kind::Partition);
        let mut kinds = Vec::new();
        if !up.is_empty() {
            kinds.extend([Kind::Kill, Kind::Kill, Kind::Kill, Kind::Pause, Kind::Pause, Kind::Pause]);
        }
        if partition_free {
            kinds.extend([Kind::Partition; 4]);
        }
        if kinds.is_empty() {
            return false;
        }
        let kind = self.rng.pick(&kinds);
        let mut hold = self.rng.range(self.cfg.fault_ms.0, self.cfg.fault_ms.1);
        let aim_leader = self.rng.chance(60);
        let leader = self.shared.api.leader(&up).await;
        let (node, detail) = match kind {
            Kind::Kill | Kind::Pause => {
                let node = match leader {
                    Some(l) if aim_leader => l,
                    _ => self.rng.pick(&up),
                };
                let role = if Some(node) == leader { "leader" } else { "random" };
                if kind == Kind::Pause {
                    hold = hold.max(1_200);
                    with_cluster(&self.cluster, move |c| c.stop(node)).await;
                    self.counts.1 += 1;
                    (node, json!({"fault": "pause", "node": node, "target": role}))
                } else {
                    with_cluster(&self.cluster, move |c| c.kill9(node)).await;
                    self.counts.0 += 1;
                    (node, json!({"fault": "kill", "node": node, "target": role}))
                }
            }
            Kind::Partition => {
                let mode = if self.rng.chance(50) { LinkMode::Refuse } else { LinkMode::Blackhole };
                let n = self.cfg.nodes;
                let nodes: Vec<u64> = (1..=n).collect();
                let variants: &[&str] = if leader.is_some() {
                    &["isolate-leader", "split", "one-way-link", "leader-mute", "leader-deaf"]
                } else {
                    &["split", "one-way-link"]
                };
                let variant = self.rng.pick(variants);
                let mut links: Vec<(u64, u64)> = Vec::new();
                let cut = |a: &[u64], b: &[u64], links: &mut Vec<(u64, u64)>| {
                    for x in a {
                        for y in b {
                            links.push((*x, *y));
                            links.push((*y, *x));
                        }
                    }
                };
                let l = leader.unwrap_or(1);
                let mut groups = Vec::new();
                match variant {
                    "isolate-leader" => {
                        let rest: Vec<u64> = nodes.iter().copied().filter(|x| *x != l).collect();
                        cut(&[l], &rest, &mut links);
                        groups = vec![vec![l], rest];
                    }
                    "split" => {
                        let mut shuffled = nodes.clone();
                        for i in (1..shuffled.len()).rev() {
                            let j = self.rng.range(0, i as u64) as usize;
                            shuffled.swap(i, j);
                        }
                        let minority = self.rng.range(1, (n - 1) / 2) as usize;
                        let (a, b) = shuffled.split_at(minority);
                        cut(a, b, &mut links);
                        groups = vec![a.to_vec(), b.to_vec()];
                    }
                    "one-way-link" => {
                        // i can reach j; j cannot reach i.
                        let i = self.rng.pick(&nodes);
                        let others: Vec<u64> = nodes.iter().copied().filter(|x| *x != i).collect();
                        let j = self.rng.pick(&others);
                        links.push((j, i));
                    }
                    "leader-mute" => links.extend(nodes.iter().filter(|x| **x != l).map(|x| (l, *x))),
                    _ => links.extend(nodes.iter().filter(|x| **x != l).map(|x| (*x, l))),
                }
                for (a, b) in &links {
                    self.net.set(*a, *b, mode);
                }
                self.counts.2 += 1;
                let blocked: Vec<String> = links.iter().map(|(a, b)| format!("{a}->{b}")).collect();
                (
                    0,
                    json!({"fault": "partition", "variant": variant, "mode": mode.as_str(), "leader": leader,
                           "groups": groups, "blocked": blocked}),
                )
            }
        };
        if kind != Kind::Partition {
            self.down.insert(node);
        }
        let mut event = detail;
        event["seq"] = json!(seq);
        event["hold_ms"] = json!(hold);
        event["leader_before"] = json!(leader);
        self.shared.say(&format!("fault {seq}: {event}"));
        self.shared.history.record("fault", event);
        self.active.push(Active { seq, kind, node, heal_at: Instant::now() + Duration::from_millis(hold) });
        true
    }
}
