//! The fault campaign (design §9, layer 3): a seeded nemesis — SIGKILL + restart, SIGSTOP
//! past the election timeout, partitions through a fault-injecting proxy on every directed
//! link — over a real 3-node cluster with two workers, while a workload triggers runs through
//! random nodes and a schedule fires every second; then a checker of the contract (design §3)
//! over the history the test recorded. See `baton_tests::nemesis` for what is checked.
//!
//! The suite runs a short campaign (50 faults, about 2–3 minutes). The long campaign is the
//! same code with more faults:
//!
//! ```text
//! cargo build -p baton
//! cargo run -p baton-tests --bin campaign -- --events 500            # 3 nodes, ~20 minutes
//! cargo run -p baton-tests --bin campaign -- --events 500 --nodes 5
//! BATON_CAMPAIGN_SEED=1234 cargo run -p baton-tests --bin campaign -- --events 500   # replay
//! ```
//!
//! Options of the command: `--events N`, `--nodes 3|5`, `--seed S` (or `BATON_CAMPAIGN_SEED`),
//! `--dir PATH` (keep data, node logs and `history.jsonl` there), `--verbose`. It prints one
//! JSON line (`{"campaign":...,"anomalies":0,...}`) and exits 1 when the checker finds an
//! anomaly, listing each with its evidence and keeping the node logs and the history.
//!
//! In the suite, `BATON_CAMPAIGN_SEED` replays a seed (printed first), `BATON_CAMPAIGN_EVENTS`
//! changes the number of faults, `BATON_CAMPAIGN_DIR` keeps the data, node logs and history in
//! a directory of your choice and `BATON_CAMPAIGN_VERBOSE` prints every trigger and heal.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::run::Run;
use baton_tests::nemesis::{CampaignConfig, CheckInput, IDEMPOTENT_STEPS, check, run_campaign};
use serde_json::json;

#[test]
fn fault_campaign_keeps_the_contract() {
    let events = std::env::var("BATON_CAMPAIGN_EVENTS").ok().and_then(|s| s.parse().ok()).unwrap_or(50);
    let report = run_campaign(CampaignConfig::new("short", events));
    println!("{}", report.json_line());
    assert!(
        report.anomaly_list.is_empty(),
        "the campaign with seed {} found {} anomalies (replay with BATON_CAMPAIGN_SEED={}; evidence in {}):\n{}",
        report.seed,
        report.anomalies,
        report.seed,
        report.dir.display(),
        report.anomaly_list.iter().take(40).cloned().collect::<Vec<_>>().join("\n")
    );
    assert!(report.fault_events >= events, "{} faults injected, {events} planned", report.fault_events);
    assert!(report.triggers_acked > 0 && report.ticks > 0, "the workload ran: {}", report.json_line());
}

fn attempt(id: u64, worker: &str, state: &str) -> serde_json::Value {
    json!({"id": id, "number": 1, "worker": worker, "fence": {"term": 2, "index": id}, "state": state,
           "assigned_at_ms": 1, "started_at_ms": 1, "finished_at_ms": 2, "exit_code": null, "error": null,
           "argv": []})
}

fn step(id: &str, state: &str, attempts: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"id": id, "state": state, "attempts": attempts, "outputs": {}, "exit_code": null, "stdout_tail": "",
           "stderr_tail": "", "error": null, "started_at_ms": 1, "finished_at_ms": 2})
}

fn run(id: &str, trigger: serde_json::Value, state: &str, key: Option<&str>, steps: Vec<serde_json::Value>) -> Run {
    let missed = if state == "missed" { 2 } else { 0 };
    serde_json::from_value(json!({
        "id": id, "runbook": "campaign", "version": "v", "params": {}, "trigger": trigger, "state": state,
        "steps": steps, "created_at_ms": 1, "started_at_ms": 1, "finished_at_ms": 2, "error": null,
        "idempotency_key": key, "missed_ticks": missed, "cancel_requested": false
    }))
    .expect("a run")
}

fn ok_steps(base: u64) -> Vec<serde_json::Value> {
    ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, s)| step(s, "succeeded", vec![attempt(base + i as u64, "w1", "succeeded")]))
        .collect()
}

/// The checker itself is checked: a clean history passes, and each kind of violation is found.
#[test]
fn the_campaign_checker_finds_each_kind_of_violation() {
    let tick = |t: i64| json!({"kind": "schedule", "name": "campaign-tick", "tick_ms": t});
    let api = json!({"kind": "api"});
    let clean = vec![
        run("r-1", api.clone(), "succeeded", Some("k1"), ok_steps(10)),
        run("s-campaign-tick-1000", tick(1000), "succeeded", None, ok_steps(20)),
        run("s-campaign-tick-2000-missed", tick(2000), "missed", None, vec![]),
        run("s-campaign-tick-4000", tick(4000), "succeeded", None, ok_steps(30)),
    ];
    let ledger: String = ["r-1", "s-campaign-tick-1000", "s-campaign-tick-4000"]
        .iter()
        .flat_map(|r| ["a", "b", "c"].map(|s| format!("{r} {s} 100 w1\n")))
        .collect();
    let sent: BTreeSet<String> = ["k1".to_string(), "k2".to_string()].into();
    let acks: BTreeMap<String, String> = [("k1".to_string(), "r-1".to_string())].into();
    let input = |runs: &[Run], ledger: &str, acks: &BTreeMap<String, String>| {
        check(&CheckInput {
            runs,
            schedule: "campaign-tick",
            schedule_counters: None,
            idempotent_steps: &IDEMPOTENT_STEPS,
            sent_keys: &sent,
            acks,
            ledger,
        })
        .anomalies
    };
    assert_eq!(input(&clean, &ledger, &acks), Vec::<String>::new());

    let found = |runs: &[Run], ledger: &str, acks: &BTreeMap<String, String>, what: &str| {
        let a = input(runs, ledger, acks);
        assert!(a.iter().any(|l| l.contains(what)), "expected {what:?} among {a:#?}");
    };
    // A duplicate effect of a non-idempotent step.
    found(&clean, &format!("{ledger}r-1 b 101 w2\n"), &acks, "duplicate effect");
    // An acknowledged trigger without its run.
    let lost_ack: BTreeMap<String, String> = [("k2".to_string(), "r-9".to_string())].into();
    found(&clean, &ledger, &lost_ack, "has no run");
    // A key that made two runs.
    let mut twice = clean.clone();
    twice.push(run("r-2", api.clone(), "succeeded", Some("k1"), ok_steps(40)));
    found(
        &twice,
        &format!("{ledger}{}", ["a", "b", "c"].map(|s| format!("r-2 {s} 1 w1\n")).concat()),
        &acks,
        "made 2 runs",
    );
    // A tick fired inside a missed record, and a silent gap.
    let mut dup_tick = clean.clone();
    dup_tick.push(run("s-campaign-tick-3000", tick(3000), "succeeded", None, ok_steps(50)));
    found(&dup_tick, &ledger, &acks, "covered twice");
    let mut gap = clean.clone();
    gap.push(run("s-campaign-tick-7000", tick(7000), "missed", None, vec![]));
    found(&gap, &ledger, &acks, "silent miss");
    // The same attempt id twice.
    let mut same_attempt = clean.clone();
    same_attempt[0].steps[2].attempts[0].id = 20;
    found(&same_attempt, &ledger, &acks, "appears twice");
    // needs_attention without a lost attempt, and a run that never ends.
    let mut silent = clean.clone();
    silent[0].state = baton_core::run::RunState::NeedsAttention;
    found(&silent, &ledger, &acks, "needs_attention without a lost attempt");
    let mut stuck = clean.clone();
    stuck[0].state = baton_core::run::RunState::Running;
    found(&stuck, &ledger, &acks, "never finished");
    // A retry of a non-idempotent step, and an effect of a run that does not exist.
    let mut retried = clean.clone();
    let mut second = retried[0].steps[1].attempts[0].clone();
    second.id = 99;
    retried[0].steps[1].attempts[0].state = baton_core::run::AttemptState::Lost;
    retried[0].steps[1].attempts.push(second);
    found(&retried, &ledger, &acks, "non-idempotent step retried");
    found(&clean, &format!("{ledger}r-404 a 1 w1\n"), &acks, "does not exist");
}
