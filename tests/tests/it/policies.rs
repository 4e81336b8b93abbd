//! Run and schedule policies through the CLI against a running `baton dev`: which failures
//! are retried, `on_cancel`, overlap `terminate_other`, blackout windows that hold runs, and
//! catch-up of ticks missed while the server was down.

use std::time::{Duration, Instant};

use baton_tests::{Dev, scratch_library};

const CAREFUL: &str = r#"
name: careful
params:
  marker: { type: string, required: true }
steps:
  - id: flaky
    action: exec
    retry: { attempts: 3, backoff: 100ms, exit_codes: [75] }
    with:
      command: ["sh", "-c", "if [ -f \"$M\" ]; then exit 0; fi; touch \"$M\"; exit 75"]
      env: { M: "{{ params.marker }}" }
  - id: wait
    action: exec
    with: { command: ["sleep", "600"] }
on_cancel:
  - id: tidy
    action: exec
    with: { command: ["echo", "tidied after: {{ run.error }}"] }
"#;

#[test]
fn retry_on_exit_codes_and_on_cancel_steps() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("careful.yaml", CAREFUL)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let marker = format!("marker={}", tmp.path().join("m").display());
    let id = dev.json(&["run", "start", "careful", "-p", &marker])["id"].as_str().unwrap().to_string();
    let run = dev.wait_run(&id, Duration::from_secs(30), |r| r["steps"][1]["state"] == "running");
    let attempts = run["steps"][0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "exit 75 was retried: {run:#}");
    assert_eq!(attempts[0]["exit_code"], 75);
    assert!(dev.cli(&["run", "cancel", &id, "--reason", "maintenance over"]).ok());
    let run = dev.wait_run(&id, Duration::from_secs(30), |r| r["state"] == "cancelled");
    assert_eq!(run["steps"][1]["state"], "cancelled");
    assert_eq!(run["steps"][2]["id"], "tidy");
    assert_eq!(run["steps"][2]["state"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][2]["stdout_tail"], "tidied after: maintenance over\n");
}

const SLEEPY: &str =
    "name: sleepy\nsteps:\n  - id: nap\n    action: exec\n    with: { command: [\"sleep\", \"600\"] }\n";
const QUICK: &str = "name: quick\nsteps:\n  - id: work\n    action: exec\n    with: { command: [\"true\"] }\n";

fn runs(dev: &Dev, runbook: &str) -> Vec<serde_json::Value> {
    dev.json(&["run", "list", "--runbook", runbook, "--limit", "1000"]).as_array().unwrap().clone()
}

fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what} did not happen within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn terminate_other_and_blackout_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let terminate = "schedule: replace\nrunbook: sleepy\ncron: \"* * * * * *\"\noverlap: terminate_other\n";
    let held = "schedule: held\nrunbook: quick\ncron: \"* * * * * *\"\nblackout:\n  - { cron: \"* * * * * *\", duration: 1h }\n";
    let lib = scratch_library(
        tmp.path(),
        &[("sleepy.yaml", SLEEPY), ("quick.yaml", QUICK), ("replace.yaml", terminate), ("held.yaml", held)],
    );
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    // Each tick ends the run before it at once: never two running, the others terminated.
    wait_until("three ticks of `replace`", Duration::from_secs(30), || runs(&dev, "sleepy").len() >= 3);
    assert!(dev.cli(&["schedule", "pause", "replace"]).ok());
    let list = runs(&dev, "sleepy");
    let running = list.iter().filter(|r| r["state"] == "running" || r["state"] == "pending").count();
    assert!(running <= 1, "{list:#?}");
    let terminated: Vec<&serde_json::Value> = list.iter().filter(|r| r["state"] == "cancelled").collect();
    assert!(!terminated.is_empty(), "{list:#?}");
    for r in terminated {
        assert!(r["error"].as_str().unwrap().starts_with("terminated: superseded by run s-replace-"), "{r:#}");
    }
    // Inside a blackout window (`hold`), fired runs wait.
    wait_until("two ticks of `held`", Duration::from_secs(30), || runs(&dev, "quick").len() >= 2);
    for r in runs(&dev, "quick") {
        assert_eq!(r["state"], "pending", "held by the blackout: {r:#}");
    }
    let schedules = dev.json(&["schedule", "list"]);
    let held = schedules.as_array().unwrap().iter().find(|s| s["name"] == "held").unwrap();
    assert!(held["blackout_until_ms"].as_i64().unwrap() > 0, "{held:#}");
}

#[test]
fn catch_up_latest_runs_the_last_tick_missed_while_down() {
    let tmp = tempfile::tempdir().unwrap();
    let every = "schedule: every\nrunbook: quick\ncron: \"* * * * * *\"\ncatch_up: { policy: latest, window: 1h }\n";
    let lib = scratch_library(tmp.path(), &[("quick.yaml", QUICK), ("every.yaml", every)]);
    let mut dev = Dev::start(&tmp.path().join("data"), &lib);
    wait_until("a first tick", Duration::from_secs(30), || !runs(&dev, "quick").is_empty());
    dev.kill9();
    std::thread::sleep(Duration::from_millis(3_500));
    let restarted_ms = chrono::Utc::now().timestamp_millis();
    dev.restart();
    // Ticks of the 3.5 s down: the latest runs, the others are one missed record.
    wait_until("the catch-up", Duration::from_secs(60), || {
        let list = runs(&dev, "quick");
        let missed = list.iter().any(|r| r["state"] == "missed");
        let caught = list.iter().any(|r| {
            r["state"] != "missed"
                && r["created_at_ms"].as_i64().unwrap() >= restarted_ms
                && r["trigger"]["tick_ms"].as_i64().unwrap() < restarted_ms
        });
        missed && caught
    });
}

#[test]
fn buffer_one_and_cancel_other() {
    let tmp = tempfile::tempdir().unwrap();
    let sleepy2 = SLEEPY.replace("name: sleepy", "name: sleepy2");
    let buffered = "schedule: buffered\nrunbook: sleepy\ncron: \"* * * * * *\"\noverlap: buffer_one\n";
    let cancel = "schedule: cancelling\nrunbook: sleepy2\ncron: \"* * * * * *\"\noverlap: cancel_other\n";
    let lib = scratch_library(
        tmp.path(),
        &[("sleepy.yaml", SLEEPY), ("sleepy2.yaml", &sleepy2), ("buffered.yaml", buffered), ("cancel.yaml", cancel)],
    );
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    wait_until("four ticks of `buffered`", Duration::from_secs(30), || runs(&dev, "sleepy").len() >= 4);
    wait_until("three ticks of `cancelling`", Duration::from_secs(30), || runs(&dev, "sleepy2").len() >= 3);
    assert!(dev.cli(&["schedule", "pause", "buffered"]).ok());
    assert!(dev.cli(&["schedule", "pause", "cancelling"]).ok());
    // buffer_one: one running, one waiting for it, every other tick skipped with the reason.
    let list = runs(&dev, "sleepy");
    let count = |state: &str| list.iter().filter(|r| r["state"] == state).count();
    assert_eq!((count("running"), count("pending")), (1, 1), "{list:#?}");
    let skipped: Vec<&serde_json::Value> = list.iter().filter(|r| r["state"] == "missed").collect();
    assert!(!skipped.is_empty(), "{list:#?}");
    for r in skipped {
        assert!(r["error"].as_str().unwrap().contains("(overlap: buffer_one)"), "{r:#}");
    }
    // cancel_other: each tick stops the one before (cooperatively) and starts after it ended.
    wait_until("the superseded runs to stop", Duration::from_secs(30), || {
        let list = runs(&dev, "sleepy2");
        list.iter().filter(|r| r["state"] == "cancelled").count() >= 2
    });
    for r in runs(&dev, "sleepy2").iter().filter(|r| r["state"] == "cancelled") {
        assert!(r["error"].as_str().unwrap().contains("(overlap: cancel_other)"), "{r:#}");
    }
}
