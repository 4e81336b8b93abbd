//! Integration tests for the `exec` executor: real processes, real signals, no mocks.
//!
//! Timing appears only as generous upper bounds that prove a kill happened (a `sleep 600`
//! must be gone well within [`BOUND`]); ordering is established by awaiting output chunks.

use std::collections::BTreeMap;
use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use baton_worker::exec::{
    ExecOutcome, ExecRequest, ExecStatus, MAX_OUTPUT_VALUE_BYTES, MAX_OUTPUTS, OutputChunk, Stream, parse_set_output,
    run_exec,
};
use nix::sys::signal::Signal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything in these tests; far above what a healthy run needs.
const BOUND: Duration = Duration::from_secs(20);

/// A request running `script` with `sh -c`.
fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

/// Awaits `fut`, failing the test if it takes longer than [`BOUND`].
async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(BOUND, fut).await.expect("did not finish within the test bound")
}

/// Runs `req` with nobody listening to chunks and no cancellation.
async fn run(req: ExecRequest) -> ExecOutcome {
    let (tx, rx) = mpsc::channel(1);
    drop(rx);
    bounded(run_exec(req, tx, CancellationToken::new())).await
}

/// Receives chunks until `stream` has produced output containing `needle`.
async fn wait_for_output(rx: &mut mpsc::Receiver<OutputChunk>, stream: Stream, needle: &str) {
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(needle) {
        let chunk = bounded(rx.recv()).await.expect("channel closed before output");
        if chunk.stream == stream {
            seen.extend(chunk.data);
        }
    }
}

/// Whether `pid` is gone (or a zombie nobody has reaped yet: dead either way).
fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state letter follows the parenthesised command name.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits (bounded) for a process that is not our child to die. It cannot be awaited, so poll.
async fn assert_dies(pid: i32) {
    bounded(async {
        while !is_dead(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

fn outputs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

#[tokio::test]
async fn success_collects_outputs_and_tails() {
    let outcome = run(sh(r#"
        echo hello
        echo "::set-output greeting=hi=there"
        echo " ::set-output indented=no"
        echo "::set-output 9bad=no"
        printf '::set-output crlf=yes\r\n'
        echo warning >&2
    "#))
    .await;
    assert_eq!(outcome.status, ExecStatus::Succeeded);
    assert_eq!(outcome.exit_code, Some(0));
    assert_eq!(outcome.signal, None);
    assert_eq!(outcome.error, None);
    assert!(outcome.stdout_tail.starts_with("hello\n"), "{outcome:?}");
    assert_eq!(outcome.stderr_tail, "warning\n");
    assert_eq!(outcome.outputs, outputs(&[("greeting", "hi=there"), ("crlf", "yes")]));
}

#[tokio::test]
async fn argv_is_not_run_through_a_shell() {
    let outcome = run(ExecRequest::new(["echo", "$HOME; exit 3", "*"])).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded);
    assert_eq!(outcome.stdout_tail, "$HOME; exit 3 *\n");
}

#[tokio::test]
async fn nonzero_exit_is_failed_with_code_and_stderr() {
    let outcome = run(sh("echo 'boom: disk full' >&2; exit 7")).await;
    assert_eq!(outcome.status, ExecStatus::Failed);
    assert_eq!(outcome.exit_code, Some(7));
    assert_eq!(outcome.signal, None);
    assert_eq!(outcome.stderr_tail, "boom: disk full\n");
    assert_eq!(outcome.error, None);
}

#[tokio::test]
async fn killed_by_its_own_signal_is_failed() {
    let outcome = run(sh("kill -KILL $$")).await;
    assert_eq!(outcome.status, ExecStatus::Failed);
    assert_eq!(outcome.exit_code, None);
    assert_eq!(outcome.signal, Some(Signal::SIGKILL as i32));
}

#[tokio::test]
async fn env_and_workdir_are_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut req = sh(r#"echo "::set-output dir=$(pwd -P)"; echo "::set-output foo=$BATON_TEST_FOO""#);
    req.env.insert("BATON_TEST_FOO".into(), "bar baz".into());
    req.workdir = Some(dir.path().to_owned());
    let outcome = run(req).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded, "{outcome:?}");
    let expected_dir = dir.path().canonicalize().unwrap();
    assert_eq!(outcome.outputs, outputs(&[("dir", expected_dir.to_str().unwrap()), ("foo", "bar baz")]));
}

#[tokio::test]
async fn timeout_kills_the_whole_process_group() {
    let mut req = sh(r#"sleep 600 & echo "::set-output grandchild=$!"; wait"#);
    req.timeout = Some(Duration::from_secs(1));
    req.kill_grace = Duration::from_secs(5);
    let outcome = run(req).await;
    assert_eq!(outcome.status, ExecStatus::TimedOut, "{outcome:?}");
    assert_eq!(outcome.error.as_deref(), Some("timed out after 1s"));
    assert_eq!(outcome.signal, Some(Signal::SIGTERM as i32));
    let grandchild: i32 = outcome.outputs["grandchild"].parse().unwrap();
    assert_dies(grandchild).await;
}

#[tokio::test]
async fn cancel_stops_the_run_after_output_was_streamed() {
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let run = tokio::spawn(run_exec(sh("echo ready; echo 'also err' >&2; exec sleep 600"), tx, cancel.clone()));
    // The chunk arrives while the process is still running (it never exits on its own).
    wait_for_output(&mut rx, Stream::Stdout, "ready\n").await;
    wait_for_output(&mut rx, Stream::Stderr, "also err\n").await;
    cancel.cancel();
    let outcome = bounded(run).await.unwrap();
    assert_eq!(outcome.status, ExecStatus::Cancelled);
    assert_eq!(outcome.error.as_deref(), Some("cancelled"));
    assert_eq!(outcome.signal, Some(Signal::SIGTERM as i32));
    assert_eq!(outcome.stdout_tail, "ready\n");
    // All senders are gone once run_exec has returned.
    assert!(bounded(rx.recv()).await.is_none());
}

#[tokio::test]
async fn sigterm_ignoring_group_is_sigkilled_after_grace() {
    let (tx, mut rx) = mpsc::channel(16);
    let cancel = CancellationToken::new();
    let mut req = sh(r#"trap '' TERM; sleep 600 & echo "pid $!"; wait"#);
    req.kill_grace = Duration::from_millis(300);
    let run = tokio::spawn(run_exec(req, tx, cancel.clone()));
    // The trap is installed before the echo, so SIGTERM is certainly ignored from here on.
    wait_for_output(&mut rx, Stream::Stdout, "\n").await;
    cancel.cancel();
    let outcome = bounded(run).await.unwrap();
    assert_eq!(outcome.status, ExecStatus::Cancelled);
    assert_eq!(outcome.signal, Some(Signal::SIGKILL as i32));
    let error = outcome.error.as_deref().unwrap();
    assert!(error.starts_with("cancelled; ") && error.contains("SIGKILL"), "{error}");
    let grandchild: i32 = outcome.stdout_tail.trim().strip_prefix("pid ").unwrap().parse().unwrap();
    assert_dies(grandchild).await;
}

#[tokio::test]
async fn dropping_the_run_kills_the_group() {
    let (tx, mut rx) = mpsc::channel(16);
    let run = tokio::spawn(run_exec(sh(r#"sleep 600 & echo "pid $!"; wait"#), tx, CancellationToken::new()));
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        line.extend(bounded(rx.recv()).await.expect("output before exit").data);
    }
    run.abort();
    assert!(bounded(run).await.unwrap_err().is_cancelled());
    let text = String::from_utf8(line).unwrap();
    let grandchild: i32 = text.trim().strip_prefix("pid ").unwrap().parse().unwrap();
    assert_dies(grandchild).await;
}

#[tokio::test]
async fn leftover_background_processes_do_not_outlive_the_run() {
    // The leader exits at once, leaving a job that holds stdout open.
    let mut req = sh(r#"sleep 600 & echo "::set-output leftover=$!""#);
    req.kill_grace = Duration::from_secs(5);
    let outcome = run(req).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.exit_code, Some(0));
    let leftover: i32 = outcome.outputs["leftover"].parse().unwrap();
    assert_dies(leftover).await;
}

#[tokio::test]
async fn tail_stays_bounded_with_large_output() {
    let mut req = sh(r#"head -c 5000000 /dev/zero | tr '\0' a; echo; echo "::set-output after=big"; printf end"#);
    req.tail_bytes = 1024;
    let outcome = run(req).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded);
    assert_eq!(outcome.stdout_tail.len(), 1024);
    assert!(outcome.stdout_tail.ends_with("a\n::set-output after=big\nend"));
    assert!(outcome.stdout_tail.starts_with("aaaa"));
    // The 5 MB line before the output line does not hide it.
    assert_eq!(outcome.outputs, outputs(&[("after", "big")]));
}

#[tokio::test]
async fn output_limits_are_enforced() {
    let outcome = run(sh(&format!(
        r#"
        i=1
        while [ $i -le 70 ]; do echo "::set-output k$i=v$i"; i=$((i+1)); done
        echo "::set-output k1=overwritten"
        printf '::set-output at_limit=%s\n' "$(head -c {max} /dev/zero | tr '\0' x)"
        printf '::set-output k2=%s\n' "$(head -c {over} /dev/zero | tr '\0' x)"
        "#,
        max = MAX_OUTPUT_VALUE_BYTES,
        over = MAX_OUTPUT_VALUE_BYTES + 1,
    )))
    .await;
    assert_eq!(outcome.status, ExecStatus::Succeeded);
    assert_eq!(outcome.outputs.len(), MAX_OUTPUTS);
    // The first 64 names are kept; k65..k70 and the new name at_limit are ignored.
    assert!((1..=64).all(|i| outcome.outputs.contains_key(&format!("k{i}"))));
    assert!(!outcome.outputs.contains_key("k65"));
    assert!(!outcome.outputs.contains_key("at_limit"));
    assert_eq!(outcome.outputs["k1"], "overwritten");
    // An over-long value is ignored, not truncated, and does not overwrite.
    assert_eq!(outcome.outputs["k2"], "v2");
}

#[tokio::test]
async fn value_at_the_size_limit_is_kept() {
    let outcome = run(sh(&format!(
        r#"printf '::set-output big=%s\n' "$(head -c {} /dev/zero | tr '\0' x)""#,
        MAX_OUTPUT_VALUE_BYTES
    )))
    .await;
    assert_eq!(outcome.outputs["big"].len(), MAX_OUTPUT_VALUE_BYTES);
}

#[test]
fn parse_set_output_table() {
    let ok = |name: &str, value: &str| Some((name.to_owned(), value.to_owned()));
    let cases: &[(&str, Option<(String, String)>)] = &[
        ("::set-output name=value", ok("name", "value")),
        ("::set-output url=https://x/?a=1&b=2", ok("url", "https://x/?a=1&b=2")),
        ("::set-output empty=", ok("empty", "")),
        ("::set-output _under-score_9=v", ok("_under-score_9", "v")),
        ("::set-output crlf=v\r", ok("crlf", "v")),
        ("::set-output nl=v\r\n", ok("nl", "v")),
        ("::set-output inner=a\rb", ok("inner", "a\rb")),
        ("::set-output spaced=  keep spaces  ", ok("spaced", "  keep spaces  ")),
        ("::set-output unicode=héllo", ok("unicode", "héllo")),
        ("::set-output 1abc=v", None),
        ("::set-output -abc=v", None),
        ("::set-output a.b=v", None),
        ("::set-output a b=v", None),
        ("::set-output na\u{e9}me=v", None),
        ("::set-output =v", None),
        ("::set-output novalue", None),
        ("::set-output  name=v", None),
        (" ::set-output name=v", None),
        ("::set-outputname=v", None),
        ("::SET-OUTPUT name=v", None),
        ("echo ::set-output name=v", None),
        ("", None),
    ];
    for (line, expected) in cases {
        assert_eq!(&parse_set_output(line), expected, "line {line:?}");
    }
}

#[tokio::test]
async fn missing_program_is_spawn_failed() {
    let outcome = run(ExecRequest::new(["baton-no-such-program-xyz", "arg"])).await;
    assert_eq!(outcome.status, ExecStatus::SpawnFailed);
    assert_eq!(outcome.error.as_deref(), Some("command not found: baton-no-such-program-xyz"));
    assert_eq!((outcome.exit_code, outcome.signal), (None, None));
}

#[tokio::test]
async fn empty_argv_is_spawn_failed() {
    let outcome = run(ExecRequest::new(Vec::<String>::new())).await;
    assert_eq!(outcome.status, ExecStatus::SpawnFailed);
    assert_eq!(outcome.error.as_deref(), Some("empty argv"));
}

#[tokio::test]
async fn missing_workdir_is_spawn_failed() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let mut req = ExecRequest::new(["true"]);
    req.workdir = Some(missing.clone());
    let outcome = run(req).await;
    assert_eq!(outcome.status, ExecStatus::SpawnFailed);
    assert_eq!(outcome.error, Some(format!("working directory not found: {}", missing.display())));
}

#[tokio::test]
async fn non_executable_program_is_spawn_failed() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let outcome = run(ExecRequest::new([script.to_str().unwrap()])).await;
    assert_eq!(outcome.status, ExecStatus::SpawnFailed);
    assert_eq!(outcome.error, Some(format!("permission denied: cannot execute {}", script.display())));
}

#[tokio::test]
async fn missing_interpreter_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("script");
    std::fs::write(&script, "#!/no/such/interpreter\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let outcome = run(ExecRequest::new([script.to_str().unwrap()])).await;
    assert_eq!(outcome.status, ExecStatus::SpawnFailed);
    let error = outcome.error.unwrap();
    assert!(error.contains("interpreter"), "{error}");
}
