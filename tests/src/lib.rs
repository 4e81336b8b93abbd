//! Baton's test harness: real `baton` processes on loopback, driven through the CLI and gRPC.
//!
//! Tests find the binary next to their own executable (`target/<profile>/baton`) or at
//! `$BATON_BIN`; build it first with `cargo build -p baton` (the test script does).

pub mod cluster;
pub mod http;
pub mod nemesis;
pub mod server;

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The `baton` binary under test.
pub fn baton_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BATON_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/baton
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("baton")).expect("target dir");
    assert!(bin.exists(), "{} does not exist: run `cargo build -p baton` first", bin.display());
    bin
}

/// The repository's runbook library.
pub fn library() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks")
}

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// A `baton dev` process.
pub struct Dev {
    child: Option<Child>,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Its runbook library directory.
    pub runbooks: PathBuf,
    /// `127.0.0.1:port` of its gRPC listener.
    pub addr: String,
    /// `127.0.0.1:port` of its HTTP listener.
    pub http: String,
    /// Lines it printed to stdout so far (filled while starting).
    pub banner: Vec<String>,
    /// Extra `baton dev` arguments (see [`Dev::start_with`]).
    extra: Vec<String>,
    /// Extra environment variables of the `baton dev` process (see [`Dev::start_with_env`]).
    env: Vec<(String, String)>,
}

impl Dev {
    /// Starts `baton dev` on free ports and waits until it says it is running.
    pub fn start(data_dir: &Path, runbooks: &Path) -> Dev {
        Dev::start_with(data_dir, runbooks, &[])
    }

    /// Like [`Dev::start`], with extra `baton dev` arguments (for example `--group`).
    pub fn start_with(data_dir: &Path, runbooks: &Path, extra: &[&str]) -> Dev {
        Dev::start_with_env(data_dir, runbooks, extra, &[])
    }

    /// Like [`Dev::start_with`], with extra environment variables for the `baton dev` process
    /// (and so for its worker, which resolves `env:` secrets from them). Kept across restarts.
    pub fn start_with_env(data_dir: &Path, runbooks: &Path, extra: &[&str], env: &[(&str, &str)]) -> Dev {
        let addr = format!("127.0.0.1:{}", free_port());
        let http = format!("127.0.0.1:{}", free_port());
        let mut dev = Dev {
            child: None,
            data_dir: data_dir.to_path_buf(),
            runbooks: runbooks.to_path_buf(),
            addr,
            http,
            banner: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        dev.spawn();
        dev
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log file");
        let mut child = Command::new(baton_bin())
            .args(["dev", "--worker-grace-secs", "2", "--data-dir"])
            .arg(&self.data_dir)
            .args(["--grpc", &self.addr, "--http", &self.http, "--runbooks"])
            .arg(&self.runbooks)
            .args(&self.extra)
            .env("BATON_LOG", "info,raft=warn,sled=warn,h2=warn,tower=warn")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn baton dev");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let ready = line.starts_with("Baton dev is running");
                    self.banner.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let log = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
                    panic!("baton dev did not start; its log:\n{log}");
                }
            }
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.child = Some(child);
    }

    /// SIGKILL, no shutdown of any kind.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same data directory and ports.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// Runs a client command against this node.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        let out = Command::new(baton_bin())
            .args(args)
            .env("BATON_ADDR", &self.addr)
            .env_remove("BATON_LOG")
            .output()
            .expect("run baton");
        CliOutput::from(out)
    }

    /// Runs a client command and parses its `--output json` stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(&all);
        assert!(out.ok(), "baton {args:?} failed: {out}");
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("baton {args:?}: not JSON ({e}): {}", out.stdout))
    }

    /// The `http://` endpoint for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Polls `baton run show` until `pred` holds, or panics after `timeout`.
    pub fn wait_run(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let run = self.json(&["run", "show", id]);
            if pred(&run) {
                return run;
            }
            assert!(Instant::now() < deadline, "run {id} did not reach the expected state in {timeout:?}: {run:#}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A finished CLI invocation.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code (-1 if killed by a signal).
    pub code: i32,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Exited 0.
    pub fn ok(&self) -> bool {
        self.code == 0
    }
}

impl From<Output> for CliOutput {
    fn from(o: Output) -> CliOutput {
        CliOutput {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// A scratch runbook library: the given files, written to a temp directory.
pub fn scratch_library(dir: &Path, files: &[(&str, &str)]) -> PathBuf {
    let lib = dir.join("runbooks");
    std::fs::create_dir_all(&lib).expect("mkdir");
    for (name, text) in files {
        std::fs::write(lib.join(name), text).expect("write runbook");
    }
    lib
}
