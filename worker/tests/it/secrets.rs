//! Secret parameters on the worker: markers replaced just before the run, precise errors for
//! references that cannot be resolved, and redaction of every resolved value from what the run
//! reports (chunks, tails, outputs, errors), also across pipe reads.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use baton_core::runbook::SecretRef;
use baton_core::template::secret_marker;
use baton_worker::exec::{
    ExecOutcome, ExecRequest, ExecStatus, OutputChunk, REDACTED, Stream, read_secret, resolve_secrets,
    resolve_secrets_with, run_exec,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Upper bound for anything in these tests; far above what a healthy run needs.
const BOUND: Duration = Duration::from_secs(20);

async fn bounded<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(BOUND, fut).await.expect("did not finish within the test bound")
}

fn env_marker(name: &str) -> String {
    secret_marker(&SecretRef::Env(name.to_string()))
}

fn file_marker(path: &Path) -> String {
    secret_marker(&SecretRef::File(path.to_str().unwrap().to_string()))
}

/// Writes `text` to `dir/name` and returns the path.
fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs `req` and returns its outcome with every chunk it streamed, in order.
async fn run_collecting(req: ExecRequest) -> (ExecOutcome, Vec<OutputChunk>) {
    let (tx, mut rx) = mpsc::channel(1024);
    let collect = tokio::spawn(async move {
        let mut chunks = Vec::new();
        while let Some(chunk) = rx.recv().await {
            chunks.push(chunk);
        }
        chunks
    });
    let outcome = bounded(run_exec(req, tx, CancellationToken::new())).await;
    (outcome, bounded(collect).await.unwrap())
}

/// Everything streamed on `stream`, concatenated.
fn streamed(chunks: &[OutputChunk], stream: Stream) -> String {
    let bytes: Vec<u8> = chunks.iter().filter(|c| c.stream == stream).flat_map(|c| c.data.clone()).collect();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn markers_in_argv_env_and_workdir_are_replaced_just_before_the_run() {
    let tmp = tempfile::tempdir().unwrap();
    let password = write(tmp.path(), "password", "pa ss'word\n");
    let dir_name = write(tmp.path(), "dir-name", "work\n");
    std::fs::create_dir(tmp.path().join("work")).unwrap();
    let seen = tmp.path().join("seen");
    // The child writes what it received to a file: its output would be redacted.
    let mut req = ExecRequest::new([
        "sh".to_string(),
        "-c".to_string(),
        r#"printf '%s|%s|%s|%s' "$1" "$PW" "$(pwd)" "$2" > "$SEEN""#.to_string(),
        "sh".to_string(),
        format!("--password={}", file_marker(&password)),
        format!("{}-{}", file_marker(&password), file_marker(&password)),
    ]);
    req.env = BTreeMap::from([
        ("PW".to_string(), file_marker(&password)),
        ("SEEN".to_string(), seen.to_str().unwrap().to_string()),
    ]);
    req.workdir = Some(PathBuf::from(format!("{}/{}", tmp.path().display(), file_marker(&dir_name))));
    resolve_secrets(&mut req).unwrap();
    assert_eq!(req.argv[4], "--password=pa ss'word");
    assert!(!format!("{req:?}").contains("pa ss'word"), "Debug shows a secret: {req:?}");
    let (outcome, _) = run_collecting(req).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded, "{outcome:?}");
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        format!("--password=pa ss'word|pa ss'word|{}/work|pa ss'word-pa ss'word", tmp.path().display())
    );
}

#[tokio::test]
async fn each_reference_is_looked_up_once_and_only_markers_are_touched() {
    let mut req = ExecRequest::new(["echo".to_string(), env_marker("A"), env_marker("A"), "env:A".to_string()]);
    req.env = BTreeMap::from([("B".to_string(), format!("x{}y", env_marker("B")))]);
    let mut lookups = Vec::new();
    resolve_secrets_with(&mut req, |reference| {
        lookups.push(reference.to_string());
        Ok(format!("value-of-{reference}"))
    })
    .unwrap();
    assert_eq!(lookups, ["env:A", "env:B"]);
    assert_eq!(req.argv, ["echo", "value-of-env:A", "value-of-env:A", "env:A"]);
    assert_eq!(req.env["B"], "xvalue-of-env:By");
}

#[tokio::test]
async fn a_file_secret_loses_one_trailing_newline() {
    let tmp = tempfile::tempdir().unwrap();
    for (text, value) in
        [("s3cret\n", "s3cret"), ("s3cret\r\n", "s3cret"), ("s3cret\n\n", "s3cret\n"), ("s3cret", "s3cret")]
    {
        let path = write(tmp.path(), "secret", text);
        assert_eq!(read_secret(&SecretRef::File(path.to_str().unwrap().into())).as_deref(), Ok(value), "{text:?}");
    }
    assert_eq!(read_secret(&SecretRef::Env("PATH".into())), Ok(std::env::var("PATH").unwrap()));
}

#[tokio::test]
async fn unresolvable_references_fail_with_the_reference_and_never_a_value() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing");
    let not_utf8 = tmp.path().join("binary");
    std::fs::write(&not_utf8, [0xff, 0xfe, b's', b'e', b'c']).unwrap();
    let with_nul = write(tmp.path(), "nul", "sec\0ret");
    let unset = "BATON_TEST_SECRET_THAT_IS_NEVER_SET";
    assert!(std::env::var_os(unset).is_none());
    let cases = [
        (
            env_marker(unset),
            format!(
                "argv[1]: cannot resolve secret env:{unset}: the environment variable {unset} is not set on this worker"
            ),
        ),
        (
            file_marker(&missing),
            format!(
                "argv[1]: cannot resolve secret file:{0}: cannot read {0}: No such file or directory (os error 2)",
                missing.display()
            ),
        ),
        (
            file_marker(tmp.path()),
            format!(
                "argv[1]: cannot resolve secret file:{0}: cannot read {0}: Is a directory (os error 21)",
                tmp.path().display()
            ),
        ),
        (
            file_marker(&not_utf8),
            format!("argv[1]: cannot resolve secret file:{0}: {0} is not valid UTF-8 text", not_utf8.display()),
        ),
        (
            file_marker(&with_nul),
            format!(
                "argv[1]: cannot use secret file:{}: its value contains a NUL byte, which cannot be passed to a \
                 process",
                with_nul.display()
            ),
        ),
        (
            env_marker("A")[..10].to_string(),
            "argv[1]: a secret marker at byte 0 is damaged: use a secret parameter whole, as {{ params.NAME }}, \
             without filters, slices or escaping"
                .to_string(),
        ),
    ];
    for (arg, expected) in cases {
        let mut req = ExecRequest::new(["echo".to_string(), arg]);
        // Exact messages: they name the input and the reference, and hold no part of a value.
        assert_eq!(resolve_secrets(&mut req), Err(expected));
    }
    // An env value and the workdir name their input too.
    let mut req = ExecRequest::new(["true"]);
    req.env = BTreeMap::from([("PW".to_string(), env_marker(unset))]);
    let err = resolve_secrets(&mut req).unwrap_err();
    assert!(err.starts_with(&format!("env.PW: cannot resolve secret env:{unset}: ")), "{err}");
    let mut req = ExecRequest::new(["true"]);
    req.workdir = Some(PathBuf::from(file_marker(&missing)));
    let err = resolve_secrets(&mut req).unwrap_err();
    assert!(err.starts_with(&format!("workdir: cannot resolve secret file:{}: ", missing.display())), "{err}");
}

#[tokio::test]
async fn run_exec_refuses_to_start_with_an_unresolved_marker() {
    let (outcome, chunks) = run_collecting(ExecRequest::new(["echo".to_string(), env_marker("PATH")])).await;
    assert_eq!(outcome.status, ExecStatus::SpawnFailed);
    assert_eq!(
        outcome.error.as_deref(),
        Some("argv[1] still holds a secret marker: secrets must be resolved (resolve_secrets) before the run")
    );
    assert!(chunks.is_empty());
}

#[tokio::test]
async fn secrets_are_redacted_from_chunks_tails_and_outputs_even_when_split_across_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = "hunter2-Tr0ub4dor";
    let path = write(tmp.path(), "pw", &format!("{secret}\n"));
    // The first half of the secret is written, then after a pause the second half: two pipe
    // reads. The secret is also an output value and goes to stderr and to a long line.
    let script = r#"
        printf 'pass=%s' "${PW%????????}"
        sleep 0.3
        printf '%s\n' "${PW#?????????}"
        echo "::set-output pw=$PW"
        echo "::set-output safe=ok"
        echo "warning: $PW rejected" >&2
        printf "start-%s-end\n" "$PW"
    "#;
    let mut req = ExecRequest::new(["sh", "-c", script]);
    req.env = BTreeMap::from([("PW".to_string(), file_marker(&path))]);
    resolve_secrets(&mut req).unwrap();
    let (outcome, chunks) = run_collecting(req).await;
    assert_eq!(outcome.status, ExecStatus::Succeeded, "{outcome:?}");
    let stdout = streamed(&chunks, Stream::Stdout);
    let expected = format!("pass={REDACTED}\n::set-output pw={REDACTED}\n::set-output safe=ok\nstart-{REDACTED}-end\n");
    assert_eq!(stdout, expected);
    // The first read ended inside the secret: what could be its start was held back.
    let first = chunks.iter().find(|c| c.stream == Stream::Stdout).unwrap();
    assert_eq!(first.data, b"pass=", "{chunks:?}");
    for chunk in &chunks {
        assert!(!String::from_utf8_lossy(&chunk.data).contains("hunter2"), "{chunk:?}");
    }
    assert_eq!(streamed(&chunks, Stream::Stderr), format!("warning: {REDACTED} rejected\n"));
    assert_eq!(outcome.stdout_tail, expected);
    assert_eq!(outcome.stderr_tail, format!("warning: {REDACTED} rejected\n"));
    assert_eq!(outcome.outputs["pw"], REDACTED);
    assert_eq!(outcome.outputs["safe"], "ok");
}

#[tokio::test]
async fn a_secret_in_a_spawn_error_is_redacted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "program", "no-such-program-s3cret\n");
    let mut req = ExecRequest::new([file_marker(&path)]);
    resolve_secrets(&mut req).unwrap();
    let (outcome, _) = run_collecting(req).await;
    assert_eq!(outcome.status, ExecStatus::SpawnFailed);
    assert_eq!(outcome.error.as_deref(), Some("command not found: ***"));
}
