//! The `exec` action executor: runs one argv as a child process and reports how it ended.
//!
//! This is the only place in the worker that starts user processes, so the process-control
//! rules live here and nowhere else:
//!
//! - The program is started directly from `argv` (resolved via `PATH`), never through a shell.
//! - The child leads its own process group. Timeouts and cancellation signal the *group*
//!   (SIGTERM, then SIGKILL after `kill_grace`), so grandchildren such as `sh -c 'x & wait'`
//!   die with it. When `run_exec` returns, no process is left in the step's group (processes
//!   that moved to another group or session on purpose are out of reach by design).
//! - Output is streamed live to the caller as [`OutputChunk`]s while only a bounded tail of
//!   each stream is kept for the [`ExecOutcome`], so memory does not grow with output size.
//! - Step outputs use the `::set-output NAME=VALUE` stdout convention (see
//!   [`parse_set_output`]), bounded to [`MAX_OUTPUTS`] names of at most
//!   [`MAX_OUTPUT_VALUE_BYTES`] each.
//!
//! - Secrets: a `secret` parameter reaches the worker as a marker that carries only its
//!   reference ([`baton_core::template::secret_marker`]). [`resolve_secrets`] replaces the
//!   markers in argv, env values and workdir with the secrets just before the run, and
//!   [`run_exec`] refuses to start anything that still holds a marker. Every resolved value is
//!   replaced by [`REDACTED`] in the output chunks, the tails, the `::set-output` values and the
//!   error, by exact match, also when a value is split across two pipe reads.
//!
//! Every failure is reported in the outcome ([`ExecStatus`] plus a human-readable `error`);
//! `run_exec` itself never fails and never panics.
//!
//! Cancel safety: dropping the `run_exec` future SIGKILLs the process group and stops the
//! output readers; use the cancellation token for a graceful SIGTERM-first stop.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use baton_core::runbook::SecretRef;
use baton_core::template::{SECRET_MARKER_START, Segment, secret_segments};
use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;

/// At most this many distinct `::set-output` names are kept per run; later new names are ignored.
pub const MAX_OUTPUTS: usize = 64;
/// A `::set-output` value longer than this (in bytes) is ignored, not truncated.
pub const MAX_OUTPUT_VALUE_BYTES: usize = 4096;
/// A `::set-output` name longer than this (in bytes) is ignored.
pub const MAX_OUTPUT_NAME_BYTES: usize = 128;
/// Default for [`ExecRequest::kill_grace`] when built with [`ExecRequest::new`].
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);
/// Default for [`ExecRequest::tail_bytes`] when built with [`ExecRequest::new`].
pub const DEFAULT_TAIL_BYTES: usize = 16 * 1024;

/// The `::set-output ` line prefix, including its single separating space.
const SET_OUTPUT_PREFIX: &str = "::set-output ";
/// Longest stdout line the output parser buffers; longer lines cannot be valid outputs and are
/// skipped without buffering, which keeps parser memory bounded on newline-free output.
const MAX_OUTPUT_LINE_BYTES: usize = SET_OUTPUT_PREFIX.len() + MAX_OUTPUT_NAME_BYTES + 1 + MAX_OUTPUT_VALUE_BYTES + 1;
/// Size of one pipe read, and so the largest [`OutputChunk`].
const READ_BUF_BYTES: usize = 8 * 1024;
/// How long to wait for the output pipes to reach EOF once the group is gone (or the leader
/// exited). A process outside the group can hold a pipe open forever; we stop reading then.
const PIPE_DRAIN: Duration = Duration::from_secs(2);
/// How long to wait for the leader to be reaped after SIGKILL (a process stuck in
/// uninterruptible sleep cannot die; we stop waiting rather than hang the worker).
const REAP_AFTER_SIGKILL: Duration = Duration::from_secs(5);
/// Poll interval while waiting for the rest of a signalled group to exit. Non-child processes
/// cannot be awaited without pidfds, so this is the one place that polls.
const GROUP_POLL: Duration = Duration::from_millis(20);

/// What a secret value is replaced with in everything a step reports.
pub const REDACTED: &str = "***";

/// One `exec` action: what to run and how to bound it.
///
/// Its `Debug` output redacts the secrets of [`ExecRequest::redact`].
#[derive(Clone, PartialEq, Eq)]
pub struct ExecRequest {
    /// The program and its arguments; `argv[0]` is resolved via `PATH`, never run through a shell.
    pub argv: Vec<String>,
    /// Variables added to (overriding) the worker's own environment.
    pub env: BTreeMap<String, String>,
    /// Working directory for the child; the worker's own when `None`.
    pub workdir: Option<PathBuf>,
    /// Wall-clock limit measured from spawn; `None` means no limit.
    pub timeout: Option<Duration>,
    /// On timeout or cancel the group gets SIGTERM, then SIGKILL if still alive after this long.
    pub kill_grace: Duration,
    /// How many trailing bytes of each stream to keep for the outcome.
    pub tail_bytes: usize,
    /// Secret values replaced by [`REDACTED`] in the chunks, tails, outputs and error of the
    /// run; filled by [`resolve_secrets`].
    pub redact: SecretValues,
}

impl fmt::Debug for ExecRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let argv: Vec<String> = self.argv.iter().map(|arg| self.redact.redact(arg)).collect();
        let env: BTreeMap<&String, String> = self.env.iter().map(|(k, v)| (k, self.redact.redact(v))).collect();
        let workdir = self.workdir.as_ref().map(|dir| self.redact.redact(&dir.to_string_lossy()));
        f.debug_struct("ExecRequest")
            .field("argv", &argv)
            .field("env", &env)
            .field("workdir", &workdir)
            .field("timeout", &self.timeout)
            .field("kill_grace", &self.kill_grace)
            .field("tail_bytes", &self.tail_bytes)
            .field("redact", &self.redact)
            .finish()
    }
}

/// The secret values of one run. `Debug` shows how many there are, never what they are.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(Vec<String>);

impl SecretValues {
    /// Adds a value to redact; empty values (nothing to hide) and repeats are ignored.
    pub fn add(&mut self, value: &str) {
        if !value.is_empty() && !self.0.iter().any(|v| v == value) {
            self.0.push(value.to_string());
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `text` with every occurrence of every value replaced by [`REDACTED`] (the longest value
    /// first where several start at the same place).
    pub fn redact(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        let mut redactor = Redactor::new(self);
        let mut bytes = redactor.push(text.as_bytes());
        bytes.extend(redactor.finish());
        // Whole UTF-8 values were replaced by ASCII, so the text stays valid.
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretValues({} value(s), not shown)", self.0.len())
    }
}

/// Replaces every secret marker in `req`'s argv, env values and workdir with the secret it
/// refers to, read with `lookup`, and adds each secret to `req.redact`.
///
/// A reference is looked up once however often it appears. The error names the input and the
/// reference (`argv[2]: cannot resolve secret env:DB_PASSWORD: ...`), never a value.
pub fn resolve_secrets_with(
    req: &mut ExecRequest,
    mut lookup: impl FnMut(&SecretRef) -> Result<String, String>,
) -> Result<(), String> {
    let mut resolved: BTreeMap<SecretRef, String> = BTreeMap::new();
    let mut substitute = |field: &str, text: &str| -> Result<Option<String>, String> {
        if !text.contains(SECRET_MARKER_START) {
            return Ok(None);
        }
        let segments = secret_segments(text).map_err(|err| format!("{field}: {err}"))?;
        let mut out = String::with_capacity(text.len());
        for segment in segments {
            match segment {
                Segment::Text(literal) => out.push_str(literal),
                Segment::Secret(reference) => {
                    if !resolved.contains_key(&reference) {
                        let value = lookup(&reference)
                            .map_err(|why| format!("{field}: cannot resolve secret {reference}: {why}"))?;
                        if value.contains('\0') {
                            return Err(format!(
                                "{field}: cannot use secret {reference}: its value contains a NUL byte, which \
                                 cannot be passed to a process"
                            ));
                        }
                        resolved.insert(reference.clone(), value);
                    }
                    out.push_str(&resolved[&reference]);
                }
            }
        }
        Ok(Some(out))
    };
    for (i, arg) in req.argv.iter_mut().enumerate() {
        if let Some(text) = substitute(&format!("argv[{i}]"), arg)? {
            *arg = text;
        }
    }
    for (name, value) in &mut req.env {
        if let Some(text) = substitute(&format!("env.{name}"), value)? {
            *value = text;
        }
    }
    if let Some(dir) = &mut req.workdir
        && let Some(text) = dir.to_str().map(|d| substitute("workdir", d)).transpose()?.flatten()
    {
        *dir = PathBuf::from(text);
    }
    for value in resolved.values() {
        req.redact.add(value);
    }
    Ok(())
}

/// [`resolve_secrets_with`] reading secrets with [`read_secret`]: from this worker's
/// environment and file system.
pub fn resolve_secrets(req: &mut ExecRequest) -> Result<(), String> {
    resolve_secrets_with(req, read_secret)
}

/// Reads a secret on this worker: `env:NAME` is the variable `NAME` of this process, `file:PATH`
/// the file's text with one trailing newline (`\n` or `\r\n`) removed. The error says why it
/// cannot be read without repeating any part of the value.
pub fn read_secret(reference: &SecretRef) -> Result<String, String> {
    match reference {
        SecretRef::Env(name) => match std::env::var(name) {
            Ok(value) => Ok(value),
            Err(std::env::VarError::NotPresent) => {
                Err(format!("the environment variable {name} is not set on this worker"))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("the environment variable {name} is not valid UTF-8"))
            }
        },
        SecretRef::File(path) => {
            let bytes = std::fs::read(path).map_err(|err| format!("cannot read {path}: {err}"))?;
            let mut text = String::from_utf8(bytes).map_err(|_| format!("{path} is not valid UTF-8 text"))?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            Ok(text)
        }
    }
}

/// Where `req` still holds a secret marker, if anywhere: `argv[1]`, `env.NAME` or `workdir`.
fn unresolved_marker(req: &ExecRequest) -> Option<String> {
    let marked = |text: &str| text.contains(SECRET_MARKER_START);
    if let Some(i) = req.argv.iter().position(|arg| marked(arg)) {
        return Some(format!("argv[{i}]"));
    }
    if let Some(name) = req.env.iter().find(|(_, value)| marked(value)).map(|(name, _)| name) {
        return Some(format!("env.{name}"));
    }
    req.workdir.as_ref().filter(|dir| marked(&dir.to_string_lossy())).map(|_| "workdir".to_string())
}

impl ExecRequest {
    /// A request for `argv` with no extra env, no workdir, no timeout and default bounds.
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            env: BTreeMap::new(),
            workdir: None,
            timeout: None,
            kill_grace: DEFAULT_KILL_GRACE,
            tail_bytes: DEFAULT_TAIL_BYTES,
            redact: SecretValues::default(),
        }
    }
}

/// Which of the child's output streams a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// The child's standard output.
    Stdout,
    /// The child's standard error.
    Stderr,
}

/// Bytes the child wrote, forwarded as soon as they are read (one pipe read, not one line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputChunk {
    /// The stream the bytes were read from.
    pub stream: Stream,
    /// The raw bytes, at most one read buffer (8 KiB); not necessarily valid UTF-8 or whole lines.
    pub data: Vec<u8>,
}

/// How an `exec` run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExecStatus {
    /// The process exited with status 0.
    Succeeded,
    /// The process exited non-zero or was killed by a signal it did not get from us.
    Failed,
    /// The timeout elapsed and we killed the process group.
    TimedOut,
    /// The cancellation token fired and we killed the process group.
    Cancelled,
    /// The process never started (empty argv, program not found, bad workdir, a secret that
    /// cannot be resolved, ...).
    SpawnFailed,
}

/// The result of one `exec` run; always produced, whatever happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutcome {
    /// How the run ended.
    pub status: ExecStatus,
    /// The exit code, if the process exited normally (`None` if signalled or never started).
    pub exit_code: Option<i32>,
    /// The signal that terminated the process, if it was killed by one.
    pub signal: Option<i32>,
    /// Lossy UTF-8 of (at most) the last `tail_bytes` bytes of stdout.
    pub stdout_tail: String,
    /// Lossy UTF-8 of (at most) the last `tail_bytes` bytes of stderr.
    pub stderr_tail: String,
    /// Outputs from `::set-output NAME=VALUE` stdout lines; a later line for a name wins.
    pub outputs: BTreeMap<String, String>,
    /// Why the run did not simply exit: spawn failure, timeout, cancellation or a wait error.
    pub error: Option<String>,
}

impl ExecOutcome {
    /// The outcome for a process that never started, for example because one of its secrets
    /// could not be resolved.
    pub fn spawn_failed(error: String) -> Self {
        Self {
            status: ExecStatus::SpawnFailed,
            exit_code: None,
            signal: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            outputs: BTreeMap::new(),
            error: Some(error),
        }
    }
}

/// Parses one stdout line of the form `::set-output NAME=VALUE`.
///
/// NAME must match `[A-Za-z_][A-Za-z0-9_-]*`; VALUE is everything after the first `=` (it may
/// itself contain `=`, and may be empty). One trailing `\n` and then one trailing `\r` are
/// stripped. The prefix must start the line, with exactly one space before NAME. Size limits
/// are not applied here; `run_exec` applies them when collecting.
pub fn parse_set_output(line: &str) -> Option<(String, String)> {
    let line = line.strip_suffix('\n').unwrap_or(line);
    let line = line.strip_suffix('\r').unwrap_or(line);
    let (name, value) = line.strip_prefix(SET_OUTPUT_PREFIX)?.split_once('=')?;
    is_output_name(name).then(|| (name.to_owned(), value.to_owned()))
}

/// Whether `name` matches `[A-Za-z_][A-Za-z0-9_-]*`.
fn is_output_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let Some(first) = bytes.next() else {
        return false;
    };
    (first.is_ascii_alphabetic() || first == b'_') && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Runs `req` to completion, streaming output to `chunks` and honouring `cancel`.
///
/// Chunks are sent as they are read; if the receiver is dropped the run continues and output
/// is still captured. A slow receiver applies backpressure to the child (the pipe fills),
/// which is the same as a slow terminal. The tails and outputs in the outcome never depend on
/// the receiver. All senders are dropped by the time this returns.
pub async fn run_exec(req: ExecRequest, chunks: mpsc::Sender<OutputChunk>, cancel: CancellationToken) -> ExecOutcome {
    if let Some(field) = unresolved_marker(&req) {
        return ExecOutcome::spawn_failed(format!(
            "{field} still holds a secret marker: secrets must be resolved (resolve_secrets) before the run"
        ));
    }
    let redact = req.redact.clone();
    let mut outcome = run_resolved(req, chunks, cancel).await;
    // Spawn errors name the program and the workdir, either of which may hold a secret.
    outcome.error = outcome.error.map(|error| redact.redact(&error));
    outcome
}

/// [`run_exec`] for a request without secret markers.
async fn run_resolved(req: ExecRequest, chunks: mpsc::Sender<OutputChunk>, cancel: CancellationToken) -> ExecOutcome {
    let Some((program, args)) = req.argv.split_first() else {
        return ExecOutcome::spawn_failed("empty argv".to_owned());
    };

    let mut command = Command::new(program);
    command
        .args(args)
        .envs(&req.env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Pgid = child's pid, so one killpg reaches everything it forks.
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &req.workdir {
        command.current_dir(dir);
    }

    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(err) => {
            return ExecOutcome::spawn_failed(describe_spawn_error(program, req.workdir.as_deref(), &err));
        }
    };
    // A pid <= 1 would make killpg signal ourselves or everything; it cannot happen for a
    // freshly spawned child, but we refuse to signal rather than trust that.
    let Some(pgid) = child.id().and_then(|id| i32::try_from(id).ok()).filter(|&id| id > 1).map(Pid::from_raw) else {
        let _ = child.start_kill();
        return ExecOutcome::spawn_failed("spawned child has no usable pid".to_owned());
    };
    tracing::debug!(pid = pgid.as_raw(), request = ?req, "exec child spawned");

    // From here on, dropping this future SIGKILLs the group and stops the readers.
    let mut kill_group_on_drop = KillGroupOnDrop { pgid, armed: true };
    let mut readers = Readers::spawn(&mut child, req.tail_bytes, &req.redact, chunks);

    let deadline = async {
        match req.timeout {
            Some(limit) => sleep(limit).await,
            None => std::future::pending().await,
        }
    };
    // `Child::wait` is cancel safe, so losing this race to the deadline loses nothing.
    let ending = tokio::select! {
        biased;
        waited = child.wait() => match waited {
            Ok(status) => Ending::Exited(status),
            Err(err) => Ending::WaitFailed(err),
        },
        () = deadline => Ending::TimedOut,
        () = cancel.cancelled() => Ending::Cancelled,
    };

    let (status, leader, error) = match ending {
        Ending::Exited(leader) => {
            let status = if leader.success() { ExecStatus::Succeeded } else { ExecStatus::Failed };
            // Give the pipes a moment to reach EOF, then clear out whatever the leader left
            // behind in its group (background jobs it did not wait for).
            readers.wait(PIPE_DRAIN).await;
            if group_alive(pgid) {
                tracing::debug!(pid = pgid.as_raw(), "terminating leftover processes");
                terminate_group(&mut child, pgid, Some(leader), req.kill_grace).await;
            }
            (status, Some(leader), None)
        }
        Ending::WaitFailed(err) => {
            let stop = terminate_group(&mut child, pgid, None, req.kill_grace).await;
            let error = format!("failed to wait for process: {err}");
            (ExecStatus::Failed, stop.leader, Some(error))
        }
        Ending::TimedOut => {
            let stop = terminate_group(&mut child, pgid, None, req.kill_grace).await;
            let limit = req.timeout.unwrap_or_default();
            let error = stop.describe(format!("timed out after {limit:?}"), req.kill_grace);
            (ExecStatus::TimedOut, stop.leader, Some(error))
        }
        Ending::Cancelled => {
            let stop = terminate_group(&mut child, pgid, None, req.kill_grace).await;
            let error = stop.describe("cancelled".to_owned(), req.kill_grace);
            (ExecStatus::Cancelled, stop.leader, Some(error))
        }
    };

    // The group is empty now (or unkillable); only the pipes remain.
    kill_group_on_drop.armed = false;
    let (stdout, stderr) = readers.finish().await;
    ExecOutcome {
        status,
        exit_code: leader.and_then(|s| s.code()),
        signal: leader.and_then(|s| s.signal()),
        stdout_tail: stdout.tail.to_lossy_string(),
        stderr_tail: stderr.tail.to_lossy_string(),
        outputs: stdout.outputs.map(OutputCollector::finish).unwrap_or_default(),
        error,
    }
}

/// What ended the wait for the leader.
enum Ending {
    /// The leader exited on its own.
    Exited(ExitStatus),
    /// Waiting for the leader failed (should not happen; treated as a failure).
    WaitFailed(io::Error),
    /// The request's timeout elapsed first.
    TimedOut,
    /// The cancellation token fired first.
    Cancelled,
}

/// What [`terminate_group`] had to do.
struct GroupStop {
    /// The leader's exit status, if it was reaped.
    leader: Option<ExitStatus>,
    /// Whether SIGTERM was not enough and the group got SIGKILL.
    escalated: bool,
}

impl GroupStop {
    /// `reason`, extended with a note when the group had to be SIGKILLed.
    fn describe(&self, reason: String, grace: Duration) -> String {
        if self.escalated {
            format!("{reason}; still running {grace:?} after SIGTERM, killed with SIGKILL")
        } else {
            reason
        }
    }
}

/// Stops every process in `pgid`: SIGTERM, up to `grace` for the group to empty, then SIGKILL.
///
/// Reaps the leader unless `leader` says it already was. The group counts as empty once the
/// leader is reaped and `killpg(pgid, 0)` reports no such group.
async fn terminate_group(child: &mut Child, pgid: Pid, mut leader: Option<ExitStatus>, grace: Duration) -> GroupStop {
    // ESRCH here only means everyone already left; nothing to report.
    let _ = killpg(pgid, Signal::SIGTERM);
    let give_up = Instant::now() + grace;
    if leader.is_none() {
        leader = timeout_at(give_up, child.wait()).await.ok().and_then(Result::ok);
    }
    while leader.is_some() && group_alive(pgid) && Instant::now() < give_up {
        sleep(GROUP_POLL).await;
    }
    let escalated = leader.is_none() || group_alive(pgid);
    if escalated {
        tracing::warn!(pid = pgid.as_raw(), ?grace, "process group ignored SIGTERM, sending SIGKILL");
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    if leader.is_none() {
        leader = timeout(REAP_AFTER_SIGKILL, child.wait()).await.ok().and_then(Result::ok);
    }
    GroupStop { leader, escalated }
}

/// Whether any process is still in group `pgid`. EPERM means a member exists that we may not
/// signal (e.g. it ran a setuid program), which still counts as alive.
fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// SIGKILLs the child's process group if the `run_exec` future is dropped mid-run.
struct KillGroupOnDrop {
    /// The group to kill.
    pgid: Pid,
    /// Cleared once the group has been dealt with, so a finished run never signals a pgid
    /// that the kernel may since have handed to an unrelated process.
    armed: bool,
}

impl Drop for KillGroupOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = killpg(self.pgid, Signal::SIGKILL);
        }
    }
}

/// Turns a spawn error into a message that names what is wrong.
fn describe_spawn_error(program: &str, workdir: Option<&Path>, err: &io::Error) -> String {
    // `chdir` failures come back as the same error kinds as `execvp` failures, so check the
    // directory first to blame the right thing.
    if let Some(dir) = workdir {
        match std::fs::metadata(dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return format!("working directory not found: {}", dir.display());
            }
            Err(e) => return format!("working directory {} is not accessible: {e}", dir.display()),
            Ok(meta) if !meta.is_dir() => {
                return format!("working directory is not a directory: {}", dir.display());
            }
            Ok(_) => {}
        }
    }
    match err.kind() {
        io::ErrorKind::NotFound if program.contains('/') && program_exists(program, workdir) => {
            // The file is there, so ENOENT came from its `#!` interpreter.
            format!("cannot execute {program}: its interpreter (#! line) was not found")
        }
        io::ErrorKind::NotFound => format!("command not found: {program}"),
        io::ErrorKind::PermissionDenied => match workdir {
            Some(dir) => {
                format!("permission denied: cannot execute {program} or enter working directory {}", dir.display())
            }
            None => format!("permission denied: cannot execute {program}"),
        },
        _ => format!("failed to start {program}: {err}"),
    }
}

/// Whether a path-like `program` exists, resolving relative paths against the child's workdir.
fn program_exists(program: &str, workdir: Option<&Path>) -> bool {
    match workdir {
        Some(dir) => dir.join(program).exists(),
        None => Path::new(program).exists(),
    }
}

/// The two pipe readers, run together on one task so they keep draining while `run_exec`
/// waits for the child.
struct Readers {
    /// Tells the readers to stop early and hand back what they captured.
    stop: CancellationToken,
    /// The task running both readers; `None` once joined.
    task: Option<JoinHandle<(StreamCapture, StreamCapture)>>,
    /// The readers' results, once joined.
    done: Option<(StreamCapture, StreamCapture)>,
    /// Stops the readers if `run_exec` is dropped before joining them.
    _stop_on_drop: tokio_util::sync::DropGuard,
    /// Used for empty captures if the reader task is lost.
    tail_bytes: usize,
}

impl Readers {
    /// Takes the child's stdout and stderr and starts reading them, redacting `secrets`.
    fn spawn(child: &mut Child, tail_bytes: usize, secrets: &SecretValues, chunks: mpsc::Sender<OutputChunk>) -> Self {
        let stop = CancellationToken::new();
        let stdout = read_stream(
            child.stdout.take(),
            Stream::Stdout,
            StreamCapture::new(tail_bytes, true),
            Redactor::new(secrets),
            chunks.clone(),
            stop.clone(),
        );
        let stderr = read_stream(
            child.stderr.take(),
            Stream::Stderr,
            StreamCapture::new(tail_bytes, false),
            Redactor::new(secrets),
            chunks,
            stop.clone(),
        );
        Self {
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
            task: Some(tokio::spawn(async move { futures::join!(stdout, stderr) })),
            done: None,
            tail_bytes,
        }
    }

    /// Waits up to `patience` for both pipes to reach EOF.
    async fn wait(&mut self, patience: Duration) {
        let Some(task) = &mut self.task else {
            return;
        };
        if let Ok(joined) = timeout(patience, task).await {
            self.task = None;
            // A panicked reader loses its capture, not the run.
            self.done = Some(joined.unwrap_or_else(|_| self.empty()));
        }
    }

    /// Waits up to [`PIPE_DRAIN`] for EOF, then stops the readers and returns their captures.
    ///
    /// Bounded because a process outside the group may hold a pipe open indefinitely.
    async fn finish(mut self) -> (StreamCapture, StreamCapture) {
        self.wait(PIPE_DRAIN).await;
        if self.task.is_some() {
            tracing::debug!("output pipes still open after the process group ended; stop reading");
            self.stop.cancel();
            // Every await in the readers races `stop`, so this returns promptly.
            self.wait(PIPE_DRAIN).await;
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.done.take().unwrap_or_else(|| self.empty())
    }

    /// Captures with nothing in them.
    fn empty(&self) -> (StreamCapture, StreamCapture) {
        (StreamCapture::new(self.tail_bytes, true), StreamCapture::new(self.tail_bytes, false))
    }
}

/// Reads one pipe until EOF or `stop`, redacting secrets, capturing into `capture` and
/// forwarding chunks. Only redacted bytes reach the capture (tail and outputs) and the chunks.
async fn read_stream<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    stream: Stream,
    mut capture: StreamCapture,
    mut redactor: Redactor,
    chunks: mpsc::Sender<OutputChunk>,
    stop: CancellationToken,
) -> StreamCapture {
    let Some(mut pipe) = pipe else {
        return capture;
    };
    let mut sink = Some(chunks);
    let mut buf = vec![0; READ_BUF_BYTES];
    loop {
        // Reading a pipe is cancel safe: losing the race to `stop` loses no bytes.
        let read = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            read = pipe.read(&mut buf) => read,
        };
        let n = match read {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => {
                tracing::warn!(?stream, %err, "reading child output failed");
                break;
            }
        };
        let data = redactor.push(&buf[..n]);
        if data.is_empty() {
            // All of it might be the start of a secret; wait for more.
            continue;
        }
        capture.push(&data);
        if let Some(tx) = &sink {
            let chunk = OutputChunk { stream, data };
            let sent = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                sent = tx.send(chunk) => sent.is_ok(),
            };
            if !sent {
                // Nobody is listening any more; keep capturing for the outcome.
                sink = None;
            }
        }
    }
    // Bytes held back as a possible start of a secret turned out not to be one (or the stream
    // ended inside it): they are output too, redacted where they complete a shorter secret.
    let rest = redactor.finish();
    if !rest.is_empty() {
        capture.push(&rest);
        if let Some(tx) = sink.filter(|_| !stop.is_cancelled()) {
            let chunk = OutputChunk { stream, data: rest };
            tokio::select! {
                biased;
                () = stop.cancelled() => {}
                _ = tx.send(chunk) => {}
            }
        }
    }
    capture
}

/// Replaces secret values in a byte stream that arrives in pieces.
///
/// A value may be split across two reads, so the end of each piece that could be the start of
/// a secret is held back until the next piece (or [`Redactor::finish`]) shows whether it is.
/// At most the longest secret's length minus one byte is held back.
struct Redactor {
    /// The secret values, as bytes.
    secrets: Arc<[Vec<u8>]>,
    /// Bytes received but not yet released.
    pending: Vec<u8>,
}

impl Redactor {
    /// A redactor for `secrets`.
    fn new(secrets: &SecretValues) -> Self {
        let secrets: Arc<[Vec<u8>]> = secrets.0.iter().map(|s| s.as_bytes().to_vec()).collect();
        Self { secrets, pending: Vec::new() }
    }

    /// Takes the next bytes of the stream and returns what can be released, redacted.
    fn push(&mut self, data: &[u8]) -> Vec<u8> {
        if self.secrets.is_empty() {
            return data.to_vec();
        }
        self.pending.extend_from_slice(data);
        self.release(false)
    }

    /// Releases everything still held back, redacted: the stream has ended.
    fn finish(&mut self) -> Vec<u8> {
        self.release(true)
    }

    /// Redacts `pending` from the front, stopping (unless `at_end`) where the rest could still
    /// become a secret, and returns the bytes before that point.
    fn release(&mut self, at_end: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.pending.len());
        let mut i = 0;
        while i < self.pending.len() {
            let rest = &self.pending[i..];
            if !at_end && self.secrets.iter().any(|s| s.len() > rest.len() && s.starts_with(rest)) {
                break;
            }
            match self.secrets.iter().filter(|s| rest.starts_with(s)).map(Vec::len).max() {
                Some(len) => {
                    out.extend_from_slice(REDACTED.as_bytes());
                    i += len;
                }
                None => {
                    out.push(rest[0]);
                    i += 1;
                }
            }
        }
        self.pending.drain(..i);
        out
    }
}

/// Everything kept from one stream: its tail and, for stdout, the outputs parsed from it.
struct StreamCapture {
    /// The last bytes written.
    tail: Tail,
    /// The `::set-output` parser; `None` for stderr.
    outputs: Option<OutputCollector>,
}

impl StreamCapture {
    /// An empty capture keeping `tail_bytes` of tail, parsing outputs if `parse_outputs`.
    fn new(tail_bytes: usize, parse_outputs: bool) -> Self {
        Self { tail: Tail::new(tail_bytes), outputs: parse_outputs.then(OutputCollector::default) }
    }

    /// Records bytes just read from the stream.
    fn push(&mut self, data: &[u8]) {
        self.tail.push(data);
        if let Some(outputs) = &mut self.outputs {
            outputs.push(data);
        }
    }
}

/// The last `capacity` bytes of a stream.
struct Tail {
    /// The kept bytes; never longer than `capacity`.
    bytes: VecDeque<u8>,
    /// How many bytes to keep.
    capacity: usize,
}

impl Tail {
    /// An empty tail keeping at most `capacity` bytes.
    fn new(capacity: usize) -> Self {
        Self { bytes: VecDeque::new(), capacity }
    }

    /// Appends `data`, dropping the oldest bytes beyond capacity.
    fn push(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(self.capacity)..];
        let overflow = (self.bytes.len() + data.len()).saturating_sub(self.capacity);
        self.bytes.drain(..overflow);
        self.bytes.extend(data);
    }

    /// Lossy UTF-8 of the kept bytes, minus a character cut in half by the trim at the front.
    fn to_lossy_string(&self) -> String {
        let (front, back) = self.bytes.as_slices();
        let mut bytes = Vec::with_capacity(self.bytes.len());
        bytes.extend_from_slice(front);
        bytes.extend_from_slice(back);
        // At most 3 continuation bytes can precede the first whole character.
        let cut = bytes.iter().take(3).take_while(|&&b| b & 0b1100_0000 == 0b1000_0000).count();
        String::from_utf8_lossy(&bytes[cut..]).into_owned()
    }
}

/// Splits stdout into lines across chunk boundaries and collects `::set-output` lines.
#[derive(Default)]
struct OutputCollector {
    /// The current, not yet terminated line (at most [`MAX_OUTPUT_LINE_BYTES`]).
    line: Vec<u8>,
    /// The current line grew past [`MAX_OUTPUT_LINE_BYTES`]; skip it up to the next newline.
    overlong: bool,
    /// Outputs collected so far.
    outputs: BTreeMap<String, String>,
    /// Valid `::set-output` lines ignored because of a limit (reported once, at the end).
    ignored: usize,
}

impl OutputCollector {
    /// Feeds the next bytes of stdout.
    fn push(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let (segment, ends_line) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => (&data[..i], true),
                None => (data, false),
            };
            data = &data[segment.len() + usize::from(ends_line)..];
            if !self.overlong {
                if self.line.len() + segment.len() > MAX_OUTPUT_LINE_BYTES {
                    self.overlong = true;
                    self.line.clear();
                } else {
                    self.line.extend_from_slice(segment);
                }
            }
            if ends_line {
                self.end_line();
            }
        }
    }

    /// Handles the line buffered so far and starts a new one.
    fn end_line(&mut self) {
        if !self.overlong {
            let line = std::mem::take(&mut self.line);
            if let Some((name, value)) = parse_set_output(&String::from_utf8_lossy(&line)) {
                self.record(name, value);
            }
        }
        self.line.clear();
        self.overlong = false;
    }

    /// Stores one output, subject to the limits.
    fn record(&mut self, name: String, value: String) {
        let fits = value.len() <= MAX_OUTPUT_VALUE_BYTES
            && name.len() <= MAX_OUTPUT_NAME_BYTES
            && (self.outputs.len() < MAX_OUTPUTS || self.outputs.contains_key(&name));
        if fits {
            self.outputs.insert(name, value);
        } else {
            self.ignored += 1;
        }
    }

    /// Handles a final line without a newline and returns the outputs.
    fn finish(mut self) -> BTreeMap<String, String> {
        if !self.line.is_empty() || self.overlong {
            self.end_line();
        }
        if self.ignored > 0 {
            tracing::warn!(
                ignored = self.ignored,
                max_outputs = MAX_OUTPUTS,
                max_value_bytes = MAX_OUTPUT_VALUE_BYTES,
                max_name_bytes = MAX_OUTPUT_NAME_BYTES,
                "ignored ::set-output lines over the limits"
            );
        }
        self.outputs
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: &[&[u8]]) -> (BTreeMap<String, String>, usize) {
        let mut collector = OutputCollector::default();
        for chunk in chunks {
            collector.push(chunk);
        }
        let ignored = collector.ignored;
        (collector.finish(), ignored)
    }

    #[test]
    fn lines_split_across_chunks_are_reassembled() {
        let (outputs, _) = collect(&[b"::set-", b"output a=1", b"\r\n::set-output b=2\nnoise\n::set-output c=3"]);
        let expected: BTreeMap<_, _> =
            [("a", "1"), ("b", "2"), ("c", "3")].into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        assert_eq!(outputs, expected);
    }

    #[test]
    fn every_split_point_gives_the_same_outputs() {
        let text = b"x\n::set-output one=a=b\r\n::set-output two=\n::set-output one=c\n";
        for split in 0..=text.len() {
            let (a, b) = text.split_at(split);
            let (outputs, _) = collect(&[a, b]);
            assert_eq!(outputs.len(), 2, "split at {split}");
            assert_eq!(outputs["one"], "c", "split at {split}");
            assert_eq!(outputs["two"], "", "split at {split}");
        }
    }

    #[test]
    fn overlong_lines_are_skipped_without_buffering() {
        let long = vec![b'x'; MAX_OUTPUT_LINE_BYTES * 3];
        let mut collector = OutputCollector::default();
        collector.push(b"::set-output big=");
        collector.push(&long);
        assert!(collector.line.len() <= MAX_OUTPUT_LINE_BYTES);
        collector.push(b"\n::set-output ok=1\n");
        assert_eq!(collector.finish().into_iter().collect::<Vec<_>>(), [("ok".to_owned(), "1".to_owned())]);
    }

    #[test]
    fn value_at_the_limit_is_kept_and_over_it_ignored() {
        let at = format!("::set-output at={}\n", "v".repeat(MAX_OUTPUT_VALUE_BYTES));
        let over = format!("::set-output over={}\n", "v".repeat(MAX_OUTPUT_VALUE_BYTES + 1));
        let (outputs, ignored) = collect(&[at.as_bytes(), over.as_bytes()]);
        assert_eq!(outputs.keys().collect::<Vec<_>>(), ["at"]);
        assert_eq!(ignored, 1);
    }

    fn secrets(values: &[&str]) -> SecretValues {
        let mut secrets = SecretValues::default();
        for value in values {
            secrets.add(value);
        }
        secrets
    }

    /// Feeds `pieces` to a redactor and returns everything it released.
    fn redact_pieces(secrets: &SecretValues, pieces: &[&[u8]]) -> Vec<u8> {
        let mut redactor = Redactor::new(secrets);
        let mut out = Vec::new();
        for piece in pieces {
            out.extend(redactor.push(piece));
        }
        out.extend(redactor.finish());
        out
    }

    #[test]
    fn a_secret_is_redacted_at_every_split_point() {
        let secrets = secrets(&["hunter2", "s3cr3t-value"]);
        let text = b"user=ada pass=hunter2 token=s3cr3t-value hunter hunter2";
        let expected = b"user=ada pass=*** token=*** hunter ***".to_vec();
        for split in 0..=text.len() {
            let (a, b) = text.split_at(split);
            assert_eq!(redact_pieces(&secrets, &[a, b]), expected, "split at {split}");
            for second in split..=text.len() {
                let (b, c) = text[split..].split_at(second - split);
                assert_eq!(redact_pieces(&secrets, &[a, b, c]), expected, "split at {split} and {second}");
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(redact_pieces(&secrets, &bytes), expected);
    }

    #[test]
    fn redaction_holds_back_only_a_possible_secret_start() {
        let secrets = secrets(&["hunter2"]);
        let mut redactor = Redactor::new(&secrets);
        assert_eq!(redactor.push(b"pass=hun"), b"pass=");
        assert_eq!(redactor.push(b"t"), b"");
        assert_eq!(redactor.push(b"ed\n"), b"hunted\n");
        assert_eq!(redactor.push(b"hunter"), b"");
        assert_eq!(redactor.finish(), b"hunter", "the stream ended before the secret was complete");
    }

    #[test]
    fn overlapping_secrets_prefer_the_longest_and_a_shorter_one_is_still_found() {
        let secrets = secrets(&["ab", "abcd", "", "ab"]);
        assert_eq!(redact_pieces(&secrets, &[b"xabcdy"]), b"x***y");
        assert_eq!(redact_pieces(&secrets, &[b"xab", b"c"]), b"x***c");
        assert_eq!(redact_pieces(&secrets, &[b"abab"]), b"******");
        assert_eq!(secrets.redact("command not found: abcd"), "command not found: ***");
        assert_eq!(format!("{secrets:?}"), "SecretValues(2 value(s), not shown)");
    }

    #[test]
    fn without_secrets_nothing_is_held_back() {
        let mut redactor = Redactor::new(&SecretValues::default());
        assert_eq!(redactor.push(b"abc"), b"abc");
        assert_eq!(redactor.finish(), b"");
    }

    #[test]
    fn tail_keeps_only_the_last_bytes() {
        let mut tail = Tail::new(4);
        tail.push(b"ab");
        tail.push(b"cdef");
        assert_eq!(tail.to_lossy_string(), "cdef");
        tail.push(b"0123456789");
        assert_eq!(tail.to_lossy_string(), "6789");
        let mut empty = Tail::new(0);
        empty.push(b"abc");
        assert_eq!(empty.to_lossy_string(), "");
    }

    #[test]
    fn tail_drops_a_character_cut_at_the_front() {
        let mut tail = Tail::new(4);
        tail.push("é€".as_bytes()); // 2 + 3 bytes; the trim cuts into 'é'
        assert_eq!(tail.to_lossy_string(), "€");
    }
}
