//! What a user does on day one: run a runbook, see it fail, retry safely, feed bad input.

use std::time::Duration;

use baton_tests::{Dev, library, scratch_library};
use serde_json::Value;

fn steps(run: &Value) -> &Vec<Value> {
    run["steps"].as_array().expect("steps")
}

#[test]
fn hello_world_runs_end_to_end_through_a_real_worker() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("data"), &library());

    // Table output: progress per step, then the output, exit 0.
    let out = dev.cli(&["run", "start", "hello-world", "-p", "name=Ada", "--wait"]);
    assert!(out.ok(), "{out}");
    assert!(out.stdout.contains("✓ greet"), "{out}");
    assert!(out.stdout.contains("Hello, Ada"), "{out}");
    assert!(out.stdout.contains("succeeded"), "{out}");

    // JSON output: the whole run, with exit codes and outputs.
    let run = dev.json(&["run", "start", "hello-world", "-p", "name=Grace", "--wait"]);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    let greet = &steps(&run)[0];
    assert_eq!(greet["exit_code"], 0);
    assert_eq!(greet["outputs"]["greeting"], "Hello, Grace!", "{run:#}");
    let attempt = &greet["attempts"][0];
    assert_eq!(attempt["worker"], "dev");
    assert_eq!(attempt["state"], "succeeded");
    assert!(attempt["fence"]["index"].as_u64().unwrap() > 0);
    // The second step saw the first one's output and the run id through templates.
    let announce = steps(&run).last().unwrap();
    let tail = announce["stdout_tail"].as_str().unwrap();
    assert!(tail.contains("Hello, Grace"), "{run:#}");
    assert!(tail.contains(run["id"].as_str().unwrap()), "{run:#}");

    // The run is listed and its full output is kept and streamable.
    let id = run["id"].as_str().unwrap();
    let list = dev.json(&["run", "list"]);
    assert!(list.as_array().unwrap().iter().any(|r| r["id"] == id));
    let logs = dev.cli(&["run", "logs", id]);
    assert!(logs.ok(), "{logs}");
    assert!(logs.stdout.contains("Hello, Grace"), "{logs}");
}

const FAILING: &str = r#"
name: failing
steps:
  - id: ok
    action: exec
    with: { command: ["echo", "fine"] }
  - id: breaks
    action: exec
    with: { command: ["sh", "-c", "echo 'disk is on fire' >&2; exit 3"] }
  - id: never
    action: exec
    with: { command: ["echo", "unreachable"] }
"#;

#[test]
fn a_failing_step_fails_the_run_and_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("failing.yaml", FAILING)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);

    let out = dev.cli(&["run", "start", "failing", "--wait"]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stdout.contains("disk is on fire"), "the failed step's stderr tail is shown: {out}");

    let id = dev.json(&["run", "list"])[0]["id"].as_str().unwrap().to_string();
    let run = dev.json(&["run", "show", &id]);
    assert_eq!(run["state"], "failed");
    let s = steps(&run);
    assert_eq!(s[0]["state"], "succeeded");
    assert_eq!(s[1]["state"], "failed");
    assert_eq!(s[1]["exit_code"], 3);
    assert_eq!(s[2]["state"], "pending", "a step after a failure never starts");
    assert!(s[2]["attempts"].as_array().unwrap().is_empty());
}

#[test]
fn the_same_idempotency_key_gives_one_run() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("data"), &library());
    let a = dev.json(&["run", "start", "hello-world", "-p", "name=Ada", "--idempotency-key", "ticket-42"]);
    let b = dev.json(&["run", "start", "hello-world", "-p", "name=Ada", "--idempotency-key", "ticket-42"]);
    assert_eq!(a["id"], b["id"]);
    let c = dev.json(&["run", "start", "hello-world", "-p", "name=Ada", "--idempotency-key", "ticket-43"]);
    assert_ne!(a["id"], c["id"]);
    let runs = dev.json(&["run", "list", "--runbook", "hello-world"]);
    assert_eq!(runs.as_array().unwrap().len(), 2, "{runs:#}");
}

const INVALID: &str = "name: broken
steps:
  - id: first
    action: exec
    with:
      command: []
";

#[test]
fn bad_input_gets_a_precise_error_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("data"), &library());
    let before = dev.json(&["cluster", "status"])["applied_index"].as_u64().unwrap();

    // An invalid runbook: file, line, column and field path.
    let file = tmp.path().join("broken.yaml");
    std::fs::write(&file, INVALID).unwrap();
    let out = dev.cli(&["runbook", "apply", "-f", file.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("broken.yaml:6:"), "location: {out}");
    assert!(out.stderr.contains("steps[0].with.command"), "field path: {out}");
    let names: Vec<Value> =
        dev.json(&["runbook", "list"]).as_array().unwrap().iter().map(|r| r["name"].clone()).collect();
    assert!(!names.contains(&Value::from("broken")), "nothing applied: {names:?}");

    // The linter says the same without a server.
    let lint = dev.cli(&["runbook", "lint", file.to_str().unwrap()]);
    assert_ne!(lint.code, 0);
    assert!(lint.stderr.contains("steps[0].with.command"), "{lint}");

    // An oversized document.
    let big = tmp.path().join("big.yaml");
    std::fs::write(&big, format!("name: big\ndescription: {}\n", "x".repeat(300 * 1024))).unwrap();
    let out = dev.cli(&["runbook", "apply", "-f", big.to_str().unwrap()]);
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("limit"), "{out}");

    // Unknown runbook, unknown param, missing param, param failing its pattern.
    let cases: [(&[&str], &str); 4] = [
        (&["run", "start", "no-such-runbook"], "no-such-runbook"),
        (&["run", "start", "hello-world", "-p", "name=Ada", "-p", "colour=red"], "colour"),
        (&["run", "start", "hello-world"], "name"),
        (&["run", "start", "hello-world", "-p", "name=x;rm -rf /"], "name"),
    ];
    for (args, mention) in cases {
        let out = dev.cli(args);
        assert_ne!(out.code, 0, "{args:?} must fail: {out}");
        assert!(out.stderr.contains(mention), "{args:?}: the error names {mention:?}: {out}");
    }

    // A bad parameter to a typed param.
    let out = dev.cli(&["run", "start", "disk-cleanup", "-p", "path=/tmp", "-p", "older_than_days=soon"]);
    assert_ne!(out.code, 0, "{out}");
    assert!(out.stderr.contains("older_than_days"), "{out}");

    // None of it reached the log.
    let after = dev.json(&["cluster", "status"])["applied_index"].as_u64().unwrap();
    assert_eq!(before, after, "rejected requests must not change the state");
    assert!(dev.json(&["run", "list"]).as_array().unwrap().is_empty());
}

const SLOW: &str = r#"
name: slow
steps:
  - id: tick
    action: exec
    with: { command: ["sh", "-c", "for i in 1 2 3; do echo tick-$i; sleep 0.3; done"] }
  - id: wait
    action: exec
    with: { command: ["sleep", "30"] }
"#;

#[test]
fn logs_follow_a_run_live_and_cancel_stops_it() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("slow.yaml", SLOW)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let run = dev.json(&["run", "start", "slow"]);
    let id = run["id"].as_str().unwrap().to_string();

    // Follow in the background; it ends by itself when the run ends.
    let follower = {
        let (bin, addr, id) = (baton_tests::baton_bin(), dev.addr.clone(), id.clone());
        std::thread::spawn(move || {
            std::process::Command::new(bin).args(["run", "logs", &id, "-f", "--addr", &addr]).output().unwrap()
        })
    };
    dev.wait_run(&id, Duration::from_secs(30), |r| r["steps"][1]["state"] == "running");
    let out = dev.cli(&["run", "cancel", &id, "--reason", "test is done"]);
    assert!(out.ok(), "{out}");
    let run = dev.wait_run(&id, Duration::from_secs(30), |r| r["state"] == "cancelled");
    assert_eq!(run["steps"][1]["state"], "cancelled");
    assert_eq!(run["error"], "test is done", "the operator's reason is the run's error");
    let logs = follower.join().unwrap();
    let text = String::from_utf8_lossy(&logs.stdout);
    for i in 1..=3 {
        assert!(text.contains(&format!("tick-{i}")), "followed logs: {text}");
    }
}

#[test]
fn a_reflection_client_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let tmp = tempfile::tempdir().unwrap();
    let dev = Dev::start(&tmp.path().join("data"), &library());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let names = rt.block_on(async {
        let channel = tonic::transport::Channel::from_shared(dev.endpoint()).unwrap().connect().await.unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
        let resp = stream.message().await.unwrap().unwrap();
        match resp.message_response {
            Some(MessageResponse::ListServicesResponse(l)) => l.service.into_iter().map(|s| s.name).collect::<Vec<_>>(),
            other => panic!("unexpected reflection answer {other:?}"),
        }
    });
    for s in [
        "baton.v1.RunService",
        "baton.v1.RunbookService",
        "baton.v1.ScheduleService",
        "baton.v1.WorkerService",
        "baton.v1.ClusterService",
        "baton.v1.LockService",
        "grpc.health.v1.Health",
    ] {
        assert!(names.iter().any(|n| n == s), "{s} missing from {names:?}");
    }
}
