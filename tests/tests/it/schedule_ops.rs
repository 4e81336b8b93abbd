//! Schedule operations through the CLI against a running server: trigger, pause and unpause,
//! backfill, and what `schedule list` shows.

use std::time::{Duration, Instant};

use baton_tests::{Dev, scratch_library};

const QUICK: &str = "name: quick\nsteps:\n  - id: work\n    action: exec\n    with: { command: [\"true\"] }\n";
const EVERY_SECOND: &str =
    "schedule: tick\nrunbook: quick\ncron: \"* * * * * *\"\noverlap: buffer_all\njitter: 200ms\n";

fn runs_of_tick(dev: &Dev) -> Vec<serde_json::Value> {
    let list = dev.json(&["run", "list", "--runbook", "quick", "--limit", "1000"]);
    list.as_array().unwrap().clone()
}

#[test]
fn trigger_pause_unpause_and_backfill_a_schedule() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("quick.yaml", QUICK), ("tick.yaml", EVERY_SECOND)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);

    // Pause: no tick fires; list says who paused it and why.
    let out = dev.cli(&["schedule", "pause", "tick", "--as", "alice", "--note", "db migration"]);
    assert!(out.ok() && out.stdout.contains("paused by alice: db migration"), "{out}");
    let paused_at = Instant::now();
    let before = runs_of_tick(&dev).iter().filter(|r| r["trigger"]["kind"] == "schedule").count();
    let list = dev.cli(&["schedule", "list"]);
    assert!(list.stdout.contains("paused by alice: db migration") && list.stdout.contains("buffer_all"), "{list}");
    let shown = &dev.json(&["schedule", "list"])[0];
    assert_eq!((shown["paused"].as_bool(), shown["jitter_ms"].as_i64()), (Some(true), Some(200)));

    // A manual run while paused.
    let out = dev.cli(&["schedule", "trigger", "tick", "--as", "bob", "--wait"]);
    assert!(out.ok(), "{out}");
    let manual: Vec<serde_json::Value> =
        runs_of_tick(&dev).into_iter().filter(|r| r["trigger"]["kind"] == "manual").collect();
    assert_eq!(manual.len(), 1);
    assert_eq!(manual[0]["events"][0]["principal"], "bob");

    // Wait out a few ticks; still nothing fired by the schedule itself.
    std::thread::sleep(Duration::from_millis(2_500).saturating_sub(paused_at.elapsed()));
    let fired =
        runs_of_tick(&dev).iter().filter(|r| r["trigger"]["kind"] == "schedule" && r["state"] != "missed").count();
    assert!(fired <= before + 1, "a paused schedule fired: {fired} runs, {before} before the pause");

    // Unpause: the ticks it skipped are one visible record, and it fires again.
    let out = dev.cli(&["schedule", "unpause", "tick", "--as", "alice"]);
    assert!(out.ok() && out.stdout.contains("fires again"), "{out}");
    let missed: Vec<serde_json::Value> = runs_of_tick(&dev)
        .into_iter()
        .filter(|r| r["state"] == "missed" && r["error"].as_str().unwrap_or("").contains("paused"))
        .collect();
    assert_eq!(missed.len(), 1, "{missed:#?}");
    assert!(missed[0]["missed_ticks"].as_u64().unwrap() >= 2, "{missed:#?}");
    let first_missed = missed[0]["trigger"]["tick_ms"].as_i64().unwrap();

    // Backfill the paused ticks: each gets a run, once; asking again creates nothing.
    let from = chrono::DateTime::from_timestamp_millis(first_missed).unwrap().to_rfc3339();
    let to = chrono::DateTime::from_timestamp_millis(first_missed + 1_000).unwrap().to_rfc3339();
    let out = dev.json(&["schedule", "backfill", "tick", "--from", &from, "--to", &to, "--as", "carol"]);
    let ids: Vec<String> = out["run_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect();
    assert_eq!(ids, [format!("s-tick-{first_missed}"), format!("s-tick-{}", first_missed + 1_000)]);
    let again = dev.json(&["schedule", "backfill", "tick", "--from", &from, "--to", &to]);
    assert_eq!(again["run_ids"].as_array().unwrap().len(), 0);
    assert_eq!(again["existing"], 2);
    for id in &ids {
        let run = dev.wait_run(id, Duration::from_secs(30), |r| r["state"] == "succeeded");
        assert_eq!(run["trigger"]["kind"], "backfill");
    }
    // Bad input: a range in the future, an unknown schedule, a time that is not RFC 3339.
    let future = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let out = dev.cli(&["schedule", "backfill", "tick", "--from", &from, "--to", &future]);
    assert!(!out.ok() && out.stderr.contains("is in the future"), "{out}");
    let out = dev.cli(&["schedule", "trigger", "nope"]);
    assert!(!out.ok() && out.stderr.contains("schedule \"nope\" does not exist (known: tick)"), "{out}");
    let out = dev.cli(&["schedule", "backfill", "tick", "--from", "yesterday"]);
    assert!(!out.ok() && out.stderr.contains("expected an RFC 3339 time"), "{out}");
}

/// A metric's value in the text format (first sample of that exact series name).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} is not in /metrics:\n{metrics}"))
}

#[test]
fn metrics_show_commit_latency_fire_skew_run_starts_and_leader_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("quick.yaml", QUICK), ("tick.yaml", EVERY_SECOND)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let out = dev.cli(&["run", "start", "quick", "--wait"]);
    assert!(out.ok(), "{out}");
    // Wait for a tick's run to start (ticks every second).
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let m = baton_tests::http::get(&dev.http, "/metrics").body;
        if sample(&m, "baton_schedule_fire_skew_seconds_count") >= 1.0
            && sample(&m, "baton_run_start_seconds_count") >= 2.0
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no tick fired and started in 20 s:\n{m}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(metrics.contains("# TYPE baton_commit_seconds histogram"), "{metrics}");
    // Every write (the runbook and schedule applied at start, the runs) was timed.
    assert!(sample(&metrics, "baton_commit_seconds_count") >= 4.0, "{metrics}");
    assert_eq!(
        sample(&metrics, "baton_commit_seconds_bucket{le=\"+Inf\"}"),
        sample(&metrics, "baton_commit_seconds_count"),
        "{metrics}"
    );
    // A skew is at least the jitter's 0 ms and well under the test's patience.
    let skew = sample(&metrics, "baton_schedule_fire_skew_seconds_sum")
        / sample(&metrics, "baton_schedule_fire_skew_seconds_count");
    assert!((0.0..20.0).contains(&skew), "mean fire skew {skew} s");
    // One node, one leader since it started: no change.
    assert_eq!(sample(&metrics, "baton_leader_changes_total"), 0.0, "{metrics}");
    // Queue depth is the pending runs.
    sample(&metrics, "baton_runs{state=\"pending\"}");
}
