//! Crash and restart: state survives kill -9; an attempt whose outcome is unknown is `lost`,
//! never silently re-run; schedules make exactly one run per tick across the restart.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use baton_tests::{Dev, scratch_library};
use serde_json::Value;

const LONG: &str = r#"
name: long
steps:
  - id: work
    action: exec
    with: { command: ["sh", "-c", "echo started; sleep 20"] }
"#;

const RETRYABLE: &str = r#"
name: retryable
steps:
  - id: work
    action: exec
    idempotent: true
    with: { command: ["sh", "-c", "echo attempt; sleep 3"] }
"#;

const QUICK: &str = r#"
name: quick
params:
  who: { type: string, default: "cron" }
steps:
  - id: hi
    action: exec
    with: { command: ["echo", "hi {{ params.who }}"] }
"#;

#[test]
fn kill9_keeps_state_and_marks_a_running_attempt_lost() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("long.yaml", LONG), ("retryable.yaml", RETRYABLE), ("quick.yaml", QUICK)]);
    let mut dev = Dev::start(&tmp.path().join("data"), &lib);

    let done = dev.json(&["run", "start", "quick", "-p", "who=before", "--wait"]);
    assert_eq!(done["state"], "succeeded");
    let long = dev.json(&["run", "start", "long"])["id"].as_str().unwrap().to_string();
    let retry = dev.json(&["run", "start", "retryable"])["id"].as_str().unwrap().to_string();
    for id in [&long, &retry] {
        dev.wait_run(id, Duration::from_secs(30), |r| r["steps"][0]["attempts"][0]["state"] == "running");
    }

    dev.restart();

    // Everything committed before the crash is still there.
    let runbooks: Vec<Value> =
        dev.json(&["runbook", "list"]).as_array().unwrap().iter().map(|r| r["name"].clone()).collect();
    assert_eq!(runbooks.len(), 3, "{runbooks:?}");
    let again = dev.json(&["run", "show", done["id"].as_str().unwrap()]);
    assert_eq!(again["state"], "succeeded");
    assert_eq!(again["steps"][0]["stdout_tail"], "hi before\n");
    let logs = dev.cli(&["run", "logs", done["id"].as_str().unwrap()]);
    assert!(logs.stdout.contains("hi before"), "output kept: {logs}");

    // The non-idempotent attempt is lost and the run waits for an operator: never re-run.
    let run = dev.wait_run(&long, Duration::from_secs(30), |r| r["state"] == "needs_attention");
    let attempts = run["steps"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "not re-run: {run:#}");
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(run["steps"][0]["state"], "lost");

    // The idempotent one is retried by policy as a new attempt, and succeeds.
    let run = dev.wait_run(&retry, Duration::from_secs(60), |r| r["state"] == "succeeded");
    let attempts = run["steps"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run:#}");
    assert_eq!(attempts[0]["state"], "lost");
    assert_eq!(attempts[1]["state"], "succeeded");
    assert_ne!(attempts[0]["id"], attempts[1]["id"]);
}

/// Every tick in [first, last] is a run or inside a missed record; no tick has two runs.
fn check_ticks(runs: &[Value]) -> (usize, u64) {
    let mut fired = BTreeSet::new();
    let mut covered = BTreeSet::new();
    let mut missed = 0;
    for r in runs.iter().filter(|r| r["trigger"]["kind"] == "schedule") {
        let tick = r["trigger"]["tick_ms"].as_i64().unwrap();
        assert_eq!(tick % 1000, 0, "ticks are whole seconds: {r:#}");
        if r["state"] == "missed" {
            let n = r["missed_ticks"].as_u64().unwrap();
            missed += n;
            for i in 0..n as i64 {
                assert!(covered.insert(tick + i * 1000), "tick {} both missed and fired", tick + i * 1000);
            }
        } else {
            assert!(fired.insert(tick), "tick {tick} has two runs");
            assert!(covered.insert(tick), "tick {tick} both missed and fired");
        }
    }
    let (first, last) = (*covered.first().unwrap(), *covered.last().unwrap());
    for t in (first..=last).step_by(1000) {
        assert!(covered.contains(&t), "tick {t} neither fired nor recorded as missed");
    }
    (fired.len(), missed)
}

#[test]
fn a_schedule_makes_exactly_one_run_per_tick_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let every_second = "schedule: every-second\nrunbook: quick\ncron: \"* * * * * *\"\ntimezone: UTC\n";
    let lib = scratch_library(tmp.path(), &[("quick.yaml", QUICK), ("every-second.yaml", every_second)]);
    let mut dev = Dev::start(&tmp.path().join("data"), &lib);

    let wait_for = |dev: &Dev, n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let runs = dev.json(&["run", "list", "--runbook", "quick", "--limit", "1000"]);
            let fired = runs.as_array().unwrap().iter().filter(|r| r["state"] != "missed").count();
            if fired >= n {
                return;
            }
            assert!(Instant::now() < deadline, "only {fired} of {n} scheduled runs appeared");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_for(&dev, 3);
    dev.kill9();
    std::thread::sleep(Duration::from_millis(2500));
    dev.restart();
    let before = dev.json(&["run", "list", "--runbook", "quick", "--limit", "1000"]).as_array().unwrap().len();
    wait_for(&dev, before + 3);

    let runs = dev.json(&["run", "list", "--runbook", "quick", "--limit", "1000"]);
    let (fired, missed) = check_ticks(runs.as_array().unwrap());
    assert!(fired >= 6, "fired {fired}");
    assert!(missed >= 2, "the 2.5 s outage left a visible missed record: {missed}");
    let schedules = dev.json(&["schedule", "list"]);
    let s = &schedules[0];
    assert_eq!(s["name"], "every-second");
    assert_eq!(s["ticks_missed"].as_u64().unwrap(), missed);
    assert!(s["runs_fired"].as_u64().unwrap() >= fired as u64);
}
