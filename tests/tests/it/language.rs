//! Step control in real runs: `when`, `retry` with backoff, `on_error: continue`, approvals,
//! sleeps and run timeouts.

use std::time::Duration;

use baton_tests::{Dev, scratch_library};

const FLAKY: &str = r#"
name: flaky
params:
  marker: { type: string, required: true }
  dry_run: { type: bool, default: true }
steps:
  - id: flaky
    action: exec
    retry: { attempts: 3, backoff: 200ms }
    with:
      command: ["sh", "-c", "if [ -f \"$M\" ]; then echo second-time; exit 0; fi; touch \"$M\"; echo first-time >&2; exit 1"]
      env: { M: "{{ params.marker }}" }
  - id: optional
    action: exec
    on_error: continue
    with: { command: ["sh", "-c", "echo optional broke >&2; exit 4"] }
  - id: destructive
    action: exec
    when: "not params.dry_run"
    with: { command: ["echo", "deleting things"] }
  - id: report
    action: exec
    with:
      command: ["echo", "optional={{ steps.optional.status }} destructive={{ steps.destructive.status }}"]
"#;

#[test]
fn when_retry_and_on_error_continue_in_a_real_run() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("flaky.yaml", FLAKY)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let marker = format!("marker={}", tmp.path().join("marker").display());
    let run = dev.json(&["run", "start", "flaky", "-p", &marker, "--wait"]);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let steps = run["steps"].as_array().unwrap();
    // Retried by policy: two attempts, the first failed.
    let attempts = steps[0]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{run:#}");
    assert_eq!(attempts[0]["state"], "failed");
    assert_eq!(attempts[1]["state"], "succeeded");
    assert!(attempts[1]["assigned_at_ms"].as_i64().unwrap() >= attempts[0]["finished_at_ms"].as_i64().unwrap() + 200);
    // A tolerated failure, a skipped step, and a later step that saw both.
    assert_eq!(steps[1]["state"], "failed");
    assert_eq!(steps[1]["failure_tolerated"], true);
    assert_eq!(steps[2]["state"], "skipped");
    assert!(steps[2]["attempts"].as_array().unwrap().is_empty());
    assert_eq!(steps[3]["stdout_tail"], "optional=failed destructive=skipped\n", "{run:#}");

    // Not a dry run: the condition holds and the step runs.
    std::fs::remove_file(tmp.path().join("marker")).unwrap();
    let run = dev.json(&["run", "start", "flaky", "-p", &marker, "-p", "dry_run=false", "--wait"]);
    assert_eq!(run["steps"][2]["state"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][2]["stdout_tail"], "deleting things\n");

    // Bad control fields are rejected with their location.
    let bad = tmp.path().join("bad.yaml");
    let text = FLAKY.replace("attempts: 3", "attempts: 1").replace("not params.dry_run", "params.nope");
    std::fs::write(&bad, text).unwrap();
    let out = dev.cli(&["runbook", "lint", bad.to_str().unwrap()]);
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains("steps[0].retry.attempts"), "{out}");
    assert!(out.stderr.contains("steps[2].when"), "{out}");
}

#[test]
fn every_changed_apply_is_a_version_and_runs_stay_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = "name: pinned\nsteps:\n  - id: one\n    action: exec\n    with: { command: [\"sleep\", \"1\"] }\n";
    let lib = scratch_library(tmp.path(), &[("pinned.yaml", v1)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let first = dev.json(&["run", "start", "pinned"]);
    let file = tmp.path().join("v2.yaml");
    std::fs::write(&file, v1.replace("[\"sleep\", \"1\"]", "[\"echo\", \"two\"]")).unwrap();
    assert!(dev.cli(&["runbook", "apply", "-f", file.to_str().unwrap()]).ok());
    // Applying the same text again is not a new version.
    assert!(dev.cli(&["runbook", "apply", "-f", file.to_str().unwrap()]).stdout.contains("unchanged"));
    let versions = dev.json(&["runbook", "versions", "pinned"]);
    let versions = versions.as_array().unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert_eq!(versions[1]["current"], true);
    let (old, new) = (versions[0]["version"].as_str().unwrap(), versions[1]["version"].as_str().unwrap());
    // The run started before the change finishes on the version it started with.
    let done =
        dev.wait_run(first["id"].as_str().unwrap(), std::time::Duration::from_secs(30), |r| r["state"] == "succeeded");
    assert_eq!(done["version"], old);
    assert_eq!(done["steps"][0]["attempts"][0]["argv"][0], "sleep");
    let second = dev.json(&["run", "start", "pinned", "--wait"]);
    assert_eq!(second["version"], new);
    let diff = dev.cli(&["runbook", "diff", "pinned", &old[..8], new]);
    assert!(diff.ok(), "{diff}");
    assert!(diff.stdout.contains("- ") && diff.stdout.contains("sleep"), "{diff}");
    assert!(diff.stdout.contains("+ ") && diff.stdout.contains("echo"), "{diff}");
    let missing = dev.cli(&["runbook", "diff", "pinned", "ffffffff"]);
    assert!(!missing.ok() && missing.stderr.contains("no version"), "{missing}");
}

#[test]
fn concurrency_limits_runs_and_overlap_skip_records_skipped_ticks() {
    let tmp = tempfile::tempdir().unwrap();
    let one_at_a_time = "name: serial\nconcurrency: 1\nsteps:\n  - id: work\n    action: exec\n    with: { command: [\"sleep\", \"0.5\"] }\n";
    let slow = "name: slow\nsteps:\n  - id: work\n    action: exec\n    with: { command: [\"sleep\", \"2.5\"] }\n";
    let every_second = "schedule: busy\nrunbook: slow\ncron: \"* * * * * *\"\noverlap: skip\n";
    let lib = scratch_library(
        tmp.path(),
        &[("serial.yaml", one_at_a_time), ("slow.yaml", slow), ("busy.yaml", every_second)],
    );
    let dev = Dev::start(&tmp.path().join("data"), &lib);

    // Three runs triggered at once run one after the other, in trigger order.
    let ids: Vec<String> =
        (0..3).map(|_| dev.json(&["run", "start", "serial"])["id"].as_str().unwrap().to_string()).collect();
    let runs: Vec<serde_json::Value> = ids
        .iter()
        .map(|id| dev.wait_run(id, std::time::Duration::from_secs(60), |r| r["state"] == "succeeded"))
        .collect();
    for pair in runs.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        assert!(
            b["started_at_ms"].as_i64().unwrap() >= a["finished_at_ms"].as_i64().unwrap(),
            "runs overlapped despite concurrency 1: {a:#} {b:#}"
        );
    }

    // A schedule whose run outlasts its interval: ticks in between are skipped and recorded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let list = dev.json(&["run", "list", "--runbook", "slow", "--limit", "100"]);
        let list = list.as_array().unwrap();
        let skipped = list.iter().filter(|r| r["state"] == "missed").count();
        let fired: Vec<&serde_json::Value> = list.iter().filter(|r| r["state"] != "missed").collect();
        if skipped >= 2 && fired.len() >= 2 {
            for r in list.iter().filter(|r| r["state"] == "missed") {
                assert!(r["error"].as_str().unwrap().contains("overlap: skip"), "{r:#}");
            }
            // Never two runs of the schedule at once.
            let mut spans: Vec<(i64, i64)> = fired
                .iter()
                .map(|r| (r["created_at_ms"].as_i64().unwrap(), r["finished_at_ms"].as_i64().unwrap()))
                .collect();
            spans.sort();
            for w in spans.windows(2) {
                assert!(w[0].1 != 0 && w[1].0 >= w[0].1, "overlapping scheduled runs: {spans:?}");
            }
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no skipped ticks yet: {list:#?}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

const GATED: &str = r#"
name: gated
params:
  service: { type: string, default: web }
steps:
  - id: pause
    sleep: 300ms
  - id: approve
    approval:
      approvers: [alice, "group:sre"]
      min_approvals: 2
      timeout: 1h
      message: "Restart {{ params.service }}?"
  - id: restart
    action: exec
    with: { command: ["echo", "restarting {{ params.service }}, approved by {{ steps.approve.outputs.approved_by }}"] }
"#;

const IMPATIENT: &str = r#"
name: impatient
timeout: 1s
steps:
  - id: ask
    approval: { approvers: [alice], timeout: 300ms }
    on_error: continue
  - id: slow
    action: exec
    with: { command: ["sleep", "600"] }
"#;

#[test]
fn approvals_sleeps_and_run_timeouts_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("gated.yaml", GATED), ("impatient.yaml", IMPATIENT)]);
    let dev = Dev::start_with(&tmp.path().join("data"), &lib, &["--group", "sre=bob,carol"]);
    let id = dev.json(&["run", "start", "gated", "-p", "service=api"])["id"].as_str().unwrap().to_string();
    let waiting = |r: &serde_json::Value| r["steps"][1]["state"] == "waiting";
    let run = dev.wait_run(&id, Duration::from_secs(30), waiting);
    let pause = &run["steps"][0];
    assert_eq!(pause["state"], "succeeded");
    assert!(pause["finished_at_ms"].as_i64().unwrap() - pause["started_at_ms"].as_i64().unwrap() >= 300);
    assert!(pause["attempts"].as_array().unwrap().is_empty(), "a sleep needs no worker: {run:#}");
    assert_eq!(run["steps"][1]["approval"]["prompt"], "Restart api?");
    let shown = dev.cli(&["run", "show", &id]);
    assert!(shown.stdout.contains("waiting for approval (0/2 from alice, group:sre"), "{shown}");

    // Someone who is not an approver is refused, and nothing is recorded.
    let out = dev.cli(&["run", "approve", &id, "--as", "mallory"]);
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains("mallory may not decide on step approve"), "{out}");
    // One of two approvals; the same person again is refused.
    let out = dev.cli(&["run", "approve", &id, "--as", "alice", "--reason", "checked the dashboards"]);
    assert!(out.ok() && out.stdout.contains("1 of 2 approvals; still waiting"), "{out}");
    let out = dev.cli(&["run", "approve", &id, "--as", "alice"]);
    assert!(!out.ok() && out.stderr.contains("alice already decided"), "{out}");
    // bob is in group sre (from --group): the second approval; the run goes on and finishes.
    let out = dev.cli(&["run", "approve", &id, "--step", "approve", "--as", "bob"]);
    assert!(out.ok(), "{out}");
    let run = dev.wait_run(&id, Duration::from_secs(30), |r| r["state"] != "running");
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][2]["stdout_tail"], "restarting api, approved by alice,bob\n");
    let decisions = run["steps"][1]["decisions"].as_array().unwrap();
    assert_eq!(decisions.len(), 2);
    assert_eq!(decisions[0]["principal"], "alice");
    assert_eq!(decisions[0]["reason"], "checked the dashboards");
    assert_eq!(decisions[0]["via"], "api");
    assert!(dev.cli(&["run", "show", &id]).stdout.contains("approve approved by bob via api"));
    let out = dev.cli(&["run", "deny", &id, "--as", "carol"]);
    assert!(!out.ok() && out.stderr.contains("waits for no approval"), "{out}");

    // A denial fails the run (exit 3 for a waited run) with who denied and why.
    let id = dev.json(&["run", "start", "gated"])["id"].as_str().unwrap().to_string();
    dev.wait_run(&id, Duration::from_secs(30), waiting);
    let out = dev.cli(&["run", "deny", &id, "--as", "carol", "--reason", "not during the sale"]);
    assert!(out.ok(), "{out}");
    let run = dev.json(&["run", "show", &id]);
    assert_eq!(run["state"], "failed");
    assert_eq!(run["error"], "step approve failed: denied by carol: not during the sale");
    assert_eq!(run["steps"][2]["state"], "pending", "the restart never ran: {run:#}");

    // Nobody answers: the approval is denied at its timeout (tolerated here), then the run's
    // own timeout stops the slow step and fails the run.
    let out = dev.cli(&["run", "start", "impatient", "--wait"]);
    assert_eq!(out.code, 3, "{out}");
    let id = out.stdout.split_whitespace().nth(1).unwrap().to_string();
    let run = dev.json(&["run", "show", &id]);
    assert_eq!(run["state"], "failed", "{run:#}");
    assert!(run["error"].as_str().unwrap().contains("the run's timeout (1s) passed"), "{run:#}");
    assert_eq!(run["steps"][0]["state"], "failed");
    assert_eq!(run["steps"][0]["error"], "denied: no decision within 300ms (0 of 1 approval(s))");
    assert_eq!(run["steps"][1]["state"], "cancelled");
    assert_eq!(run["steps"][1]["attempts"][0]["state"], "cancelled", "{run:#}");
}

const OPS: &str = r#"
name: ops
params:
  marker: { type: string, required: true }
  nap: { type: string, default: "0" }
steps:
  - id: first
    action: exec
    with: { command: ["sleep", "{{ params.nap }}"] }
  - id: check
    action: exec
    with:
      command: ["sh", "-c", "test -f \"$M\" || { echo \"no $M\" >&2; exit 1; }"]
      env: { M: "{{ params.marker }}" }
  - id: last
    action: exec
    with: { command: ["echo", "done"] }
"#;

#[test]
fn pause_resume_retry_and_force_fail_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("ops.yaml", OPS)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let marker = tmp.path().join("marker");
    let marker_param = format!("marker={}", marker.display());

    // Fails at `check`; once the cause is fixed, retry goes on from there and succeeds.
    let out = dev.cli(&["run", "start", "ops", "-p", &marker_param, "--wait"]);
    assert_eq!(out.code, 3, "{out}");
    let id = out.stdout.split_whitespace().nth(1).unwrap().to_string();
    std::fs::write(&marker, "").unwrap();
    let out = dev.cli(&["run", "retry", &id, "--as", "alice", "--wait"]);
    assert!(out.ok(), "{out}");
    let run = dev.json(&["run", "show", &id]);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][0]["attempts"].as_array().unwrap().len(), 1, "first is not run again");
    assert_eq!(run["steps"][1]["attempts"].as_array().unwrap().len(), 2);
    assert_eq!(run["events"][0]["action"], "retry");
    assert_eq!(run["events"][0]["principal"], "alice");
    assert!(dev.cli(&["run", "show", &id]).stdout.contains("retry by alice via api: from step check"));
    let out = dev.cli(&["run", "retry", &id, "--from", "nope"]);
    assert!(!out.ok() && out.stderr.contains("is succeeded; only a failed"), "{out}");

    // Paused while `first` runs: it finishes, `check` does not start until resumed.
    let id = dev.json(&["run", "start", "ops", "-p", &marker_param, "-p", "nap=1"])["id"].as_str().unwrap().to_string();
    dev.wait_run(&id, Duration::from_secs(30), |r| r["steps"][0]["state"] == "running");
    let out = dev.cli(&["run", "pause", &id, "--as", "bob", "--reason", "change freeze"]);
    assert!(out.ok() && out.stdout.contains("(paused)"), "{out}");
    dev.wait_run(&id, Duration::from_secs(30), |r| r["steps"][0]["state"] == "succeeded");
    let list = dev.cli(&["run", "list"]);
    assert!(list.stdout.contains("running (paused)"), "{list}");
    assert_eq!(dev.json(&["run", "show", &id])["steps"][1]["state"], "pending");
    let out = dev.cli(&["run", "resume", &id, "--as", "bob"]);
    assert!(out.ok(), "{out}");
    let run = dev.wait_run(&id, Duration::from_secs(30), |r| r["state"] != "running");
    assert_eq!(run["state"], "succeeded", "{run:#}");

    // Force-fail needs a reason; it ends the run at once and the worker stops the step.
    let id =
        dev.json(&["run", "start", "ops", "-p", &marker_param, "-p", "nap=600"])["id"].as_str().unwrap().to_string();
    dev.wait_run(&id, Duration::from_secs(30), |r| r["steps"][0]["state"] == "running");
    let out = dev.cli(&["run", "force-fail", &id]);
    assert!(!out.ok() && out.stderr.contains("--reason"), "{out}");
    let out = dev.cli(&["run", "force-fail", &id, "--as", "carol", "--reason", "wrong cluster"]);
    assert!(out.ok(), "{out}");
    let run = dev.json(&["run", "show", &id]);
    assert_eq!(run["state"], "failed");
    assert_eq!(run["error"], "force-failed by carol: wrong cluster");
    let run = dev.wait_run(&id, Duration::from_secs(30), |r| r["steps"][0]["state"] == "cancelled");
    assert_eq!(run["steps"][0]["attempts"][0]["state"], "cancelled", "{run:#}");
    assert_eq!(run["state"], "failed");
}

const LOCKED: &str = r#"
name: locked
params:
  cluster: { type: string, required: true }
  nap: { type: string, default: "0" }
locks: ["redis/{{ params.cluster }}"]
budget: { max_runs: 3, per: 1h, key: "{{ params.cluster }}" }
steps:
  - id: work
    action: exec
    with: { command: ["sleep", "{{ params.nap }}"] }
  - id: check
    action: exec
    with: { command: ["sh", "-c", "test \"$C\" != broken", "check"], env: { C: "{{ params.cluster }}" } }
on_failure:
  - id: page
    action: exec
    with: { command: ["echo", "paging: {{ run.failed_step }} failed ({{ run.error }})"] }
"#;

#[test]
fn locks_budgets_and_on_failure_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("locked.yaml", LOCKED)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    // The first run holds redis/east while it sleeps; the second waits for it.
    let first =
        dev.json(&["run", "start", "locked", "-p", "cluster=east", "-p", "nap=2"])["id"].as_str().unwrap().to_string();
    dev.wait_run(&first, Duration::from_secs(30), |r| r["locks_held"] == true);
    let second = dev.json(&["run", "start", "locked", "-p", "cluster=east"])["id"].as_str().unwrap().to_string();
    let locks = dev.json(&["lock", "list"]);
    assert_eq!(locks[0]["name"], "redis/east", "{locks:#}");
    assert_eq!(locks[0]["holder"], first.as_str());
    assert_eq!(locks[0]["waiting"][0], second.as_str(), "{locks:#}");
    assert!(dev.cli(&["lock", "list"]).stdout.contains("redis/east"));
    let a = dev.wait_run(&first, Duration::from_secs(30), |r| r["state"] == "succeeded");
    let b = dev.wait_run(&second, Duration::from_secs(30), |r| r["state"] == "succeeded");
    assert!(
        b["started_at_ms"].as_i64().unwrap() >= a["finished_at_ms"].as_i64().unwrap(),
        "the second run started before the first released the lock: {a:#} {b:#}"
    );
    assert_eq!(dev.json(&["lock", "list"]).as_array().unwrap().len(), 0, "released at the end");

    // The budget: a third run for east in the hour is fine, a fourth is refused.
    let out = dev.cli(&["run", "start", "locked", "-p", "cluster=east", "--wait"]);
    assert!(out.ok(), "{out}");
    let out = dev.cli(&["run", "start", "locked", "-p", "cluster=east"]);
    assert!(
        !out.ok() && out.stderr.contains("budget exhausted: at most 3 run(s) of locked per 1h for \"east\""),
        "{out}"
    );

    // A failing run pages through on_failure, then ends failed.
    let out = dev.cli(&["run", "start", "locked", "-p", "cluster=broken", "--wait"]);
    assert_eq!(out.code, 3, "{out}");
    let id = out.stdout.split_whitespace().nth(1).unwrap().to_string();
    let run = dev.json(&["run", "show", &id]);
    assert_eq!(run["state"], "failed");
    assert_eq!(run["steps"][2]["id"], "page");
    assert_eq!(run["steps"][2]["block"], "on_failure");
    assert_eq!(run["steps"][2]["stdout_tail"], "paging: check failed (step check exited with code 1)\n", "{run:#}");
    assert!(dev.cli(&["run", "show", &id]).stdout.contains("page (on_failure)"));
    // A lock that renders empty is refused before anything is stored.
    let out = dev.cli(&["run", "start", "locked", "-p", "cluster= "]);
    assert!(!out.ok() && out.stderr.contains("renders empty"), "{out}");
}

#[test]
fn plan_shows_what_a_run_would_do_without_starting_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("locked.yaml", LOCKED), ("gated.yaml", GATED)]);
    let dev = Dev::start_with(&tmp.path().join("data"), &lib, &["--group", "sre=bob"]);
    let plan = dev.json(&["plan", "locked", "-p", "cluster=east"]);
    assert_eq!(plan["locks"][0]["name"], "redis/east");
    assert_eq!(plan["locks"][0]["held_by"], "");
    assert_eq!(plan["budget"], "0 of 3 run(s) per 1h used for \"east\"");
    assert_eq!(plan["steps"][0]["argv"], serde_json::json!(["sleep", "0"]));
    assert_eq!(plan["steps"][1]["env"]["C"], "east");
    assert_eq!(plan["steps"][2]["block"], "on_failure");
    let page = plan["steps"][2]["argv"][1].as_str().unwrap();
    assert_eq!(page, "paging: <the failed step> failed (<the run's error>)", "{plan:#}");
    let plan = dev.json(&["plan", "gated", "-p", "service=api"]);
    assert_eq!(plan["steps"][0]["kind"], "sleep");
    assert_eq!(plan["steps"][1]["approval_prompt"], "Restart api?");
    assert_eq!(plan["steps"][1]["min_approvals"], 2);
    let text = dev.cli(&["plan", "gated"]);
    assert!(text.ok() && text.stdout.contains("APPROVAL: Restart web?"), "{text}");
    assert!(dev.json(&["run", "list"]).as_array().unwrap().is_empty(), "a plan starts nothing");
    // The same validation as a start.
    let out = dev.cli(&["plan", "locked"]);
    assert!(!out.ok() && out.stderr.contains("missing required parameter `cluster`"), "{out}");
    let out = dev.cli(&["plan", "nope"]);
    assert!(!out.ok() && out.stderr.contains("runbook \"nope\" does not exist"), "{out}");
}

const FLEET: &str = r#"
name: fleet
params:
  hosts: { type: list, default: [a, b, c] }
  bad: { type: string, default: "none" }
steps:
  - id: prep
    parallel:
      - id: one
        action: exec
        with: { command: ["echo", "one"] }
      - id: two
        action: exec
        with: { command: ["echo", "two"] }
  - id: roll
    action: exec
    foreach: params.hosts
    batch: 2
    max_failures: 1
    with:
      command: ["sh", "-c", "test \"$T\" != \"$BAD\" && echo rolled $T", "roll"]
      env: { T: "{{ target }}", BAD: "{{ params.bad }}" }
  - id: after
    action: exec
    with: { command: ["echo", "roll {{ steps.roll.status }}"] }
"#;

#[test]
fn parallel_groups_and_foreach_targets_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("fleet.yaml", FLEET)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let run = dev.json(&["run", "start", "fleet", "--as", "zoe", "--wait"]);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["principal"], "zoe");
    assert_eq!(run["events"][0]["action"], "start");
    let ids: Vec<&str> = run["steps"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["one", "two", "roll[a]", "roll[b]", "roll[c]", "after"]);
    assert_eq!(run["steps"][3]["stdout_tail"], "rolled b\n");
    assert_eq!(run["steps"][4]["batch"], 1, "batch: 2 puts c in the second batch");
    assert_eq!(run["steps"][5]["stdout_tail"], "roll succeeded\n");
    // One target fails: within max_failures the run goes on, and later steps see it.
    let run = dev.json(&["run", "start", "fleet", "-p", "bad=b", "--wait"]);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][3]["state"], "failed");
    assert_eq!(run["steps"][3]["failure_tolerated"], true);
    assert_eq!(run["steps"][5]["stdout_tail"], "roll failed\n");
    // The plan lists the targets and batches.
    let plan = dev.json(&["plan", "fleet", "-p", "hosts=x,y,z,w"]);
    assert_eq!(plan["steps"][2]["targets"], serde_json::json!(["x", "y", "z", "w"]));
    assert_eq!(plan["steps"][2]["batch_size"], 2);
    assert_eq!(plan["steps"][2]["env"]["T"], "x");
    assert_eq!(plan["steps"][0]["group"], "prep");
}
