//! Crash loop: clients write to a single `baton server` while it is SIGKILLed at a random
//! moment, again and again on the same data directory. Every write a client saw acknowledged
//! must survive (the store fsyncs before acknowledging), and every restart must be clean.
//!
//! `BATON_CRASH_ITERATIONS` (default 200) sets the number of kills, `BATON_CRASH_SEED` repeats
//! a run's kill delays and samples (the seed is printed at the start), `BATON_CRASH_SNAPSHOT_EVERY`
//! passes `--snapshot-every` to the node (its default, 2000 entries, is about what 200 iterations
//! write, so a small value is what puts crashes inside snapshots and log compaction), and
//! `BATON_CRASH_VERBOSE` prints one line per iteration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use baton_proto::v1 as pb;
use baton_proto::v1::run_service_client::RunServiceClient;
use baton_proto::v1::runbook_service_client::RunbookServiceClient;
use baton_tests::server::Server;
use futures::StreamExt as _;
use tokio::runtime::Runtime;
use tonic::transport::Channel;

const RUNBOOK: &str = "name: crash\nsteps:\n  - id: noop\n    action: exec\n    with: { command: [\"true\"] }\n";
const WRITERS: usize = 4;
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Older acknowledged runs read back after every restart (besides all of the last iteration's).
const SAMPLE: usize = 32;
/// Acknowledged keys retried after every restart, expecting `deduplicated`.
const DEDUP_SAMPLE: usize = 4;
/// Every this many iterations, and at the end, every acknowledged run is read back.
const FULL_CHECK_EVERY: usize = 50;

/// xorshift64: small, seeded, good enough for delays and samples.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A write the client saw acknowledged.
#[derive(Debug, Clone)]
struct Ack {
    key: String,
    run_id: String,
    iteration: usize,
}

#[derive(Default)]
struct WriterOutcome {
    acked: Vec<Ack>,
    unacked: Vec<String>,
    /// Errors or odd answers while the node was up: not losses, but not expected either.
    unexpected: Vec<String>,
}

/// Keeps the data directory and log when the test fails, and says where they are.
struct KeepOnFailure(Option<tempfile::TempDir>);

impl Drop for KeepOnFailure {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(dir) = self.0.take()
        {
            eprintln!("crash loop: data directory and node log kept in {}", dir.keep().display());
        }
    }
}

fn env_number(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    Some(v.trim().parse().unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

async fn connect(endpoint: &str) -> Result<RunServiceClient<Channel>, String> {
    match RunServiceClient::connect(endpoint.to_string()).await {
        Ok(c) => Ok(c.max_decoding_message_size(256 << 20)),
        Err(e) => Err(format!("connecting to {endpoint}: {e:?}")),
    }
}

/// `n` clients of a node that said it is ready; failing to reach it is an unclean restart.
fn clients(rt: &Runtime, node: &mut Server, n: usize, iteration: usize) -> Vec<RunServiceClient<Channel>> {
    let endpoint = node.endpoint();
    let got: Result<Vec<_>, _> =
        rt.block_on(futures::future::join_all((0..n).map(|_| connect(&endpoint)))).into_iter().collect();
    got.unwrap_or_else(|e| {
        std::thread::sleep(Duration::from_millis(200));
        let status = node.exited().map_or("still running".to_string(), |s| format!("gone: {s}"));
        panic!("iteration {iteration}: {e}; the node is {status}; its log:\n{}", node.current_log())
    })
}

async fn writer(
    mut client: RunServiceClient<Channel>,
    iteration: usize,
    w: usize,
    killing: Arc<AtomicBool>,
) -> WriterOutcome {
    let mut out = WriterOutcome::default();
    for n in 0.. {
        if killing.load(Ordering::SeqCst) {
            break;
        }
        let key = format!("crash-{iteration}-{w}-{n}");
        let req = pb::StartRunRequest { runbook: "crash".into(), idempotency_key: key.clone(), ..Default::default() };
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, client.start(req)).await;
        let killed = killing.load(Ordering::SeqCst);
        match answer {
            Ok(Ok(resp)) => {
                let resp = resp.into_inner();
                let run_id = resp.run.map(|r| r.id).unwrap_or_default();
                if resp.deduplicated || run_id.is_empty() {
                    out.unexpected.push(format!(
                        "iteration {iteration}: a fresh key {key} was answered deduplicated={} run {run_id:?}",
                        resp.deduplicated
                    ));
                }
                out.acked.push(Ack { key, run_id, iteration });
            }
            Ok(Err(status)) => {
                out.unacked.push(key.clone());
                if killed {
                    break;
                }
                out.unexpected.push(format!("iteration {iteration}: {key} failed while the node was up: {status}"));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(_) => {
                out.unacked.push(key.clone());
                if killed {
                    break;
                }
                out.unexpected.push(format!("iteration {iteration}: {key} got no answer in {REQUEST_TIMEOUT:?}"));
            }
        }
    }
    out
}

/// What a check after a restart found.
#[derive(Default)]
struct Findings {
    /// Acknowledged keys whose run is gone or whose idempotency record is wrong, with evidence.
    lost: BTreeMap<String, String>,
    /// Anything else that should not happen.
    anomalies: Vec<String>,
}

/// Reads back each acknowledged run; a missing one is a lost write.
async fn check_runs(client: &RunServiceClient<Channel>, acks: &[Ack], iteration: usize, found: &mut Findings) {
    let results: Vec<_> = futures::stream::iter(acks.iter().cloned())
        .map(|ack| {
            let mut client = client.clone();
            async move {
                let got = client.get(pb::GetRunRequest { id: ack.run_id.clone() }).await;
                (ack, got)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (ack, got) in results {
        match got {
            Ok(run) => {
                let run = run.into_inner();
                if run.idempotency_key != ack.key {
                    found.lost.entry(ack.key.clone()).or_insert(format!(
                        "checked after restart {iteration}: run {} (acknowledged in iteration {}) carries key {:?}",
                        ack.run_id, ack.iteration, run.idempotency_key
                    ));
                }
            }
            Err(s) if s.code() == tonic::Code::NotFound => {
                found.lost.entry(ack.key.clone()).or_insert(format!(
                    "checked after restart {iteration}: run {} of key {} (acknowledged in iteration {}) is gone: {}",
                    ack.run_id,
                    ack.key,
                    ack.iteration,
                    s.message()
                ));
            }
            Err(s) => found.anomalies.push(format!("after restart {iteration}: Get {} failed: {s}", ack.run_id)),
        }
    }
}

/// Retries acknowledged keys: each must answer `deduplicated` with the run it first got.
async fn check_dedup(client: &RunServiceClient<Channel>, acks: &[Ack], iteration: usize, found: &mut Findings) {
    let results: Vec<_> = futures::stream::iter(acks.iter().cloned())
        .map(|ack| {
            let mut client = client.clone();
            async move {
                let req = pb::StartRunRequest {
                    runbook: "crash".into(),
                    idempotency_key: ack.key.clone(),
                    ..Default::default()
                };
                let got = client.start(req).await;
                (ack, got)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (ack, got) in results {
        match got {
            Ok(resp) => {
                let resp = resp.into_inner();
                let id = resp.run.map(|r| r.id).unwrap_or_default();
                if !resp.deduplicated || id != ack.run_id {
                    found.lost.entry(ack.key.clone()).or_insert(format!(
                        "retried after restart {iteration}: key {} (acknowledged in iteration {} as run {}) \
                         answered deduplicated={} run {id}",
                        ack.key, ack.iteration, ack.run_id, resp.deduplicated
                    ));
                }
            }
            Err(s) => found.anomalies.push(format!("after restart {iteration}: retrying {} failed: {s}", ack.key)),
        }
    }
}

fn sample(rng: &mut Rng, from: &[Ack], n: usize) -> Vec<Ack> {
    if from.is_empty() {
        return Vec::new();
    }
    (0..n).map(|_| from[rng.below(from.len())].clone()).collect()
}

/// Starts the node; a start that does not become ready is a failed (unclean) restart.
fn start(node: &mut Server, iteration: usize) -> Duration {
    node.start(READY_TIMEOUT).unwrap_or_else(|e| panic!("restart {iteration} was not clean: {e}"))
}

fn percentile(sorted: &[Duration], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_millis()
}

#[test]
fn sigkill_during_writes_loses_no_acknowledged_write() {
    let iterations = env_number("BATON_CRASH_ITERATIONS").unwrap_or(200) as usize;
    let snapshot_every = env_number("BATON_CRASH_SNAPSHOT_EVERY");
    let seed = env_number("BATON_CRASH_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        (t.as_nanos() as u64) ^ u64::from(std::process::id()).rotate_left(32)
    });
    println!("crash loop: seed {seed} (BATON_CRASH_SEED={seed} repeats it), {iterations} iterations");
    let mut rng = Rng::new(seed);
    let verbose = std::env::var_os("BATON_CRASH_VERBOSE").is_some();

    let began = Instant::now();
    let tmp = KeepOnFailure(Some(tempfile::tempdir().unwrap()));
    let data_dir: PathBuf = tmp.0.as_ref().unwrap().path().join("node1");
    let mut node = Server::new(1, &data_dir);
    if let Some(n) = snapshot_every {
        node.extra_args = vec!["--snapshot-every".into(), n.to_string()];
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();

    let mut startups = vec![start(&mut node, 0)];
    rt.block_on(async {
        let mut runbooks = RunbookServiceClient::connect(node.endpoint()).await.unwrap();
        let req = pb::ApplyRequest { file_name: "crash.yaml".into(), source: RUNBOOK.into() };
        runbooks.apply(req).await.unwrap_or_else(|s| panic!("applying the runbook: {s}"));
    });

    let mut acked: Vec<Ack> = Vec::new();
    let mut unacked: BTreeSet<String> = BTreeSet::new();
    let mut found = Findings::default();
    let mut last_iteration_acks = 0;
    let (mut write_time, mut check_time) = (Duration::ZERO, Duration::ZERO);

    for iteration in 0..iterations {
        if iteration > 0 {
            startups.push(start(&mut node, iteration));
        }

        // 1. Everything acknowledged so far is still there.
        let checking = Instant::now();
        let newest = &acked[acked.len() - last_iteration_acks..];
        let mut reads = newest.to_vec();
        reads.extend(sample(&mut rng, &acked, SAMPLE));
        if iteration > 0 && iteration % FULL_CHECK_EVERY == 0 {
            reads = acked.clone();
        }
        let mut retries = sample(&mut rng, newest, DEDUP_SAMPLE / 2);
        retries.extend(sample(&mut rng, &acked, DEDUP_SAMPLE - retries.len()));
        let client = clients(&rt, &mut node, 1, iteration).pop().unwrap();
        rt.block_on(async {
            check_runs(&client, &reads, iteration, &mut found).await;
            check_dedup(&client, &retries, iteration, &mut found).await;
        });
        let check_elapsed = checking.elapsed();
        check_time += check_elapsed;

        // 2. Writers, and a SIGKILL while their writes are in flight.
        let writing = Instant::now();
        let killing = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = clients(&rt, &mut node, WRITERS, iteration)
            .into_iter()
            .enumerate()
            .map(|(w, client)| rt.spawn(writer(client, iteration, w, killing.clone())))
            .collect();
        std::thread::sleep(Duration::from_millis(20 + rng.below(131) as u64));
        if let Some(status) = node.exited() {
            found.anomalies.push(format!(
                "iteration {iteration}: the node exited by itself ({status}); its log:\n{}",
                node.current_log()
            ));
        }
        killing.store(true, Ordering::SeqCst);
        node.kill9();
        let outcomes = rt.block_on(futures::future::join_all(tasks));
        write_time += writing.elapsed();

        let unacked_before = unacked.len();
        last_iteration_acks = 0;
        for outcome in outcomes {
            let outcome = outcome.expect("writer task");
            last_iteration_acks += outcome.acked.len();
            acked.extend(outcome.acked);
            unacked.extend(outcome.unacked);
            found.anomalies.extend(outcome.unexpected);
        }
        if verbose {
            println!(
                "iteration {iteration}: startup {} ms, check {} ms ({} reads), writes {} ms: {last_iteration_acks} acknowledged, {} not",
                startups.last().unwrap().as_millis(),
                check_elapsed.as_millis(),
                reads.len(),
                writing.elapsed().as_millis(),
                unacked.len() - unacked_before
            );
        }
    }

    // 3. One more restart, then every acknowledged write, read back and retried.
    startups.push(start(&mut node, iterations));
    let checking = Instant::now();
    let mut client = clients(&rt, &mut node, 1, iterations).pop().unwrap();
    let (listed, phantoms, unacked_applied) = rt.block_on(async {
        check_runs(&client, &acked, iterations, &mut found).await;
        check_dedup(&client, &acked, iterations, &mut found).await;
        // No run the clients did not ask for; count how many unacknowledged writes did land.
        let req = pb::ListRunsRequest { runbook: "crash".into(), limit: 10_000 };
        let runs = client.list(req).await.unwrap_or_else(|s| panic!("listing runs: {s}")).into_inner().runs;
        let keys: BTreeSet<&str> = acked.iter().map(|a| a.key.as_str()).collect();
        let phantoms: Vec<String> = runs
            .iter()
            .filter(|r| !keys.contains(r.idempotency_key.as_str()) && !unacked.contains(&r.idempotency_key))
            .map(|r| format!("{} key {:?}", r.id, r.idempotency_key))
            .collect();
        let landed = runs.iter().filter(|r| unacked.contains(&r.idempotency_key)).count();
        (runs.len(), phantoms, landed)
    });
    check_time += checking.elapsed();
    node.kill9();
    if !phantoms.is_empty() {
        found.anomalies.push(format!("runs nobody started: {phantoms:?}"));
    }

    let log = node.full_log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    let warnings = log.lines().filter(|l| l.contains(" WARN ")).count();
    let snapshots = log.lines().filter(|l| l.contains("saved state-machine snapshot")).count();
    if !errors.is_empty() {
        found.anomalies.push(format!(
            "the node logged {} error(s), first ones: {:#?}",
            errors.len(),
            &errors[..errors.len().min(10)]
        ));
    }

    let elapsed = began.elapsed().as_secs_f64();
    let mut sorted = startups.clone();
    sorted.sort();
    let startup_total: Duration = startups.iter().sum();
    println!(
        "{{\"test\":\"crash_loop_timing\",\"starts\":{},\"spawns\":{},\"startup_ms_p50\":{},\"startup_ms_p90\":{},\
         \"startup_ms_max\":{},\"startup_first_ms\":{},\"startup_last_ms\":{},\"startup_s\":{:.1},\"write_s\":{:.1},\
         \"check_s\":{:.1},\"runs_listed\":{listed},\"unacknowledged_applied\":{unacked_applied},\
         \"snapshots\":{snapshots},\"log_warnings\":{warnings}}}",
        startups.len(),
        node.spawns,
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.9),
        percentile(&sorted, 1.0),
        startups[1.min(startups.len() - 1)].as_millis(),
        startups.last().unwrap().as_millis(),
        startup_total.as_secs_f64(),
        write_time.as_secs_f64(),
        check_time.as_secs_f64(),
    );
    println!(
        "{{\"test\":\"crash_loop\",\"iterations\":{iterations},\"acknowledged\":{},\"unacknowledged\":{},\"lost\":{},\
         \"seed\":{seed},\"elapsed_s\":{elapsed:.1}}}",
        acked.len(),
        unacked.len(),
        found.lost.len()
    );
    for (key, evidence) in &found.lost {
        println!("LOST {key}: {evidence}");
    }
    for a in &found.anomalies {
        println!("ANOMALY {a}");
    }
    assert!(
        found.lost.is_empty(),
        "{} acknowledged write(s) lost after SIGKILL (seed {seed}); first: {:?}",
        found.lost.len(),
        found.lost.iter().next()
    );
    assert!(found.anomalies.is_empty(), "{} anomalies (seed {seed}), see above", found.anomalies.len());
    drop(tmp);
}
