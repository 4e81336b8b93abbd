//! Typed parameters in real runs: a `secret` read from the worker's environment never reaches
//! the run record, the logs, the CLI or the data directory; `float` and `map` values flow into
//! argv.

use std::path::Path;

use baton_tests::{Dev, scratch_library};
use serde_json::Value;

/// The secret, set only in the environment of the `baton dev` process (and so of its worker).
const SECRET: &str = "e2e-S3cret-value-7f3a";
const SECRET_VAR: &str = "BATON_E2E_DB_PASSWORD";

const SECRETS: &str = r#"
name: secret-demo
params:
  db_password: { type: secret, default: "env:BATON_E2E_DB_PASSWORD" }
  seen: { type: string, required: true }
steps:
  - id: use
    action: exec
    with:
      command:
        - sh
        - -c
        - |
          echo "connecting with password=$PW"
          echo "::set-output pw=$PW"
          echo "::set-output user=ada"
          echo "auth failed for $PW" >&2
          printf '%s' "$PW" > "$SEEN"
      env: { PW: "{{ params.db_password }}", SEEN: "{{ params.seen }}" }
  - id: argv
    action: exec
    with: { command: ["echo", "--password={{ params.db_password }}"] }
"#;

const TYPED: &str = r#"
name: typed-demo
params:
  ratio: { type: float, min: 0, max: 1, default: 0.5 }
  labels: { type: map, pattern: "^[a-z]+$", default: { app: web } }
steps:
  - id: show
    action: exec
    with:
      command:
        - echo
        - "ratio={{ params.ratio }}"
        - "app={{ params.labels.app }}"
        - "{% for k, v in params.labels | dictsort %}{{ k }}:{{ v }};{% endfor %}"
"#;

/// Whether any file under `dir` contains `needle`.
fn any_file_contains(dir: &Path, needle: &[u8]) -> Option<String> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = any_file_contains(&path, needle) {
                return Some(found);
            }
        } else if std::fs::read(&path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle)) {
            return Some(path.display().to_string());
        }
    }
    None
}

#[test]
fn a_secret_from_the_worker_environment_is_used_but_never_shown_or_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("secret-demo.yaml", SECRETS)]);
    let data = tmp.path().join("data");
    let dev = Dev::start_with_env(&data, &lib, &[], &[(SECRET_VAR, SECRET)]);
    let seen = tmp.path().join("seen");
    let seen_param = format!("seen={}", seen.display());

    let out = dev.cli(&["run", "start", "secret-demo", "-p", &seen_param, "--wait", "--output", "json"]);
    assert!(out.ok(), "{out}");
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET), "{out}");
    let run: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(run["state"], "succeeded", "{run:#}");
    // The step's process got the secret itself...
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), SECRET);
    // ...while the run record holds the reference and redacted output.
    assert_eq!(run["params"]["db_password"], "env:BATON_E2E_DB_PASSWORD", "{run:#}");
    let use_step = &run["steps"][0];
    assert_eq!(use_step["stdout_tail"], "connecting with password=***\n::set-output pw=***\n::set-output user=ada\n");
    assert_eq!(use_step["stderr_tail"], "auth failed for ***\n");
    assert_eq!(use_step["outputs"]["pw"], "***");
    assert_eq!(use_step["outputs"]["user"], "ada");
    assert_eq!(run["steps"][1]["stdout_tail"], "--password=***\n", "{run:#}");

    // Every way of looking at the run shows the reference or `***`, never the secret.
    let id = run["id"].as_str().unwrap();
    for args in [
        vec!["run", "show", id],
        vec!["run", "show", id, "--output", "json"],
        vec!["run", "list"],
        vec!["run", "list", "--output", "json"],
        vec!["run", "logs", id],
        vec!["run", "logs", id, "--output", "json"],
    ] {
        let out = dev.cli(&args);
        assert!(out.ok(), "{args:?}: {out}");
        assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET), "{args:?} shows the secret: {out}");
    }
    let show = dev.cli(&["run", "show", id]);
    assert!(show.stdout.contains("env:BATON_E2E_DB_PASSWORD"), "{show}");
    let logs = dev.cli(&["run", "logs", id]);
    assert!(logs.stdout.contains("connecting with password=***"), "{logs}");
    assert!(logs.stdout.contains("--password=***"), "{logs}");
    assert!(logs.stderr.contains("auth failed for ***"), "{logs}");

    // Nor is it anywhere in the data directory (Raft log, snapshots, stored output) or the
    // process's log.
    drop(dev);
    assert_eq!(any_file_contains(&data, SECRET.as_bytes()), None, "the secret was written to disk");
    // (The search does find what is stored there: the reference and the redacted output.)
    assert!(any_file_contains(&data, b"env:BATON_E2E_DB_PASSWORD").is_some());
    assert!(any_file_contains(&data, b"connecting with password=***").is_some());
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap();
    assert!(!log.contains(SECRET), "the secret is in the process log");
}

#[test]
fn bad_and_unresolvable_secret_references_fail_precisely() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("secret-demo.yaml", SECRETS)]);
    let dev = Dev::start_with_env(&tmp.path().join("data"), &lib, &[], &[(SECRET_VAR, SECRET)]);
    let seen_param = format!("seen={}", tmp.path().join("seen").display());

    // Not a reference: refused at trigger, without repeating the value.
    let out = dev.cli(&["run", "start", "secret-demo", "-p", &seen_param, "-p", "db_password=hunter2"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("expected a secret reference (env:NAME or file:/absolute/path)"), "{out}");
    assert!(!out.stderr.contains("hunter2"), "{out}");
    let out = dev.cli(&["run", "start", "secret-demo", "-p", &seen_param, "-p", "db_password=file:relative"]);
    assert_eq!(out.code, 1, "{out}");
    assert!(out.stderr.contains("the path after `file:` must be absolute"), "{out}");

    // A valid reference the worker cannot resolve: the attempt fails and names it.
    let out = dev.cli(&[
        "run",
        "start",
        "secret-demo",
        "-p",
        &seen_param,
        "-p",
        "db_password=env:BATON_E2E_NOT_SET",
        "--wait",
        "--output",
        "json",
    ]);
    assert_eq!(out.code, 3, "{out}");
    let run: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(run["state"], "failed", "{run:#}");
    let attempt = &run["steps"][0]["attempts"][0];
    assert_eq!(attempt["state"], "failed", "{run:#}");
    assert_eq!(
        attempt["error"],
        "env.PW: cannot resolve secret env:BATON_E2E_NOT_SET: the environment variable BATON_E2E_NOT_SET is not set \
         on this worker",
        "{run:#}"
    );

    // A condition cannot read a secret: refused when the runbook is applied.
    let bad = tmp.path().join("bad.yaml");
    let text = SECRETS.replace("  - id: argv\n", "  - id: argv\n    when: \"params.db_password != ''\"\n");
    std::fs::write(&bad, text).unwrap();
    let out = dev.cli(&["runbook", "apply", "-f", bad.to_str().unwrap()]);
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains("steps[1].when"), "{out}");
    assert!(out.stderr.contains("params.db_password is a secret parameter: a condition cannot see a secret"), "{out}");
}

#[test]
fn float_and_map_params_flow_into_argv() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("typed-demo.yaml", TYPED)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let stdout = |params: &[&str]| -> String {
        let mut args = vec!["run", "start", "typed-demo", "--wait"];
        for p in params {
            args.extend(["-p", p]);
        }
        let run = dev.json(&args);
        assert_eq!(run["state"], "succeeded", "{run:#}");
        run["steps"][0]["stdout_tail"].as_str().unwrap().to_string()
    };
    assert_eq!(stdout(&[]), "ratio=0.5 app=web app:web;\n");
    assert_eq!(
        stdout(&["ratio=0.25", r#"labels={"app":"api","tier":"back"}"#]),
        "ratio=0.25 app=api app:api;tier:back;\n"
    );
    assert_eq!(stdout(&["ratio=1", "labels=tier=front, app=shop"]), "ratio=1.0 app=shop app:shop;tier:front;\n");

    // Bad values are refused before anything runs, naming the parameter.
    for (param, message) in [
        ("ratio=1.5", "parameter `ratio`: 1.5 is out of range (expected 0 to 1)"),
        ("ratio=NaN", "parameter `ratio`: expected a finite number, found the string \"NaN\""),
        ("labels=app", "parameter `labels`: expected a mapping of strings to strings"),
        ("labels=app=Web", "parameter `labels`: \"Web\" does not match the pattern `^[a-z]+$`"),
    ] {
        let out = dev.cli(&["run", "start", "typed-demo", "-p", param]);
        assert_eq!(out.code, 1, "{param}: {out}");
        assert!(out.stderr.contains(message), "{param}: {out}");
    }
}
