//! A `baton server` process: one node on fixed loopback ports and one data directory, started,
//! SIGKILLed and started again, with the stderr of every start appended to one log file.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{baton_bin, free_port};

/// A `baton server` node that is started explicitly (see [`Server::start`]).
pub struct Server {
    child: Option<Child>,
    /// Raft node id.
    pub id: u64,
    /// Its data directory (kept across starts).
    pub data_dir: PathBuf,
    /// `127.0.0.1:port` of its gRPC listener (kept across starts).
    pub addr: String,
    /// `127.0.0.1:port` of its HTTP listener (kept across starts).
    pub http: String,
    /// The file every start appends its stderr to.
    pub log: PathBuf,
    /// Offset in `log` where the output of the latest start begins.
    log_start: u64,
    /// How many processes have been spawned (including retries after a busy port).
    pub spawns: u32,
    /// More `baton server` arguments, passed to every start.
    pub extra_args: Vec<String>,
}

/// Why a start failed.
#[derive(Debug)]
pub struct StartError {
    /// What went wrong.
    pub reason: String,
    /// The stderr of the failed start.
    pub log: String,
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}\n--- node log of this start\n{}", self.reason, self.log)
    }
}

impl Server {
    /// A node on free loopback ports with its data in `data_dir`; not started yet.
    pub fn new(id: u64, data_dir: &Path) -> Server {
        Server {
            child: None,
            id,
            data_dir: data_dir.to_path_buf(),
            addr: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            log: data_dir.with_extension("log"),
            log_start: 0,
            spawns: 0,
            extra_args: Vec::new(),
        }
    }

    /// The `http://` endpoint for gRPC clients.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts the node and waits until it prints `baton server <id> listening` (it does once it
    /// has elected a leader). A start that loses a port race is retried for a few seconds;
    /// anything else that keeps the node from becoming ready within `timeout` is an error.
    /// Returns how long the successful start took.
    pub fn start(&mut self, timeout: Duration) -> Result<Duration, StartError> {
        assert!(self.child.is_none(), "the node is already running");
        let deadline = Instant::now() + timeout;
        loop {
            let began = Instant::now();
            match self.spawn_once(deadline) {
                Ok(()) => return Ok(began.elapsed()),
                Err(e) if e.log.contains("Address already in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn_once(&mut self, deadline: Instant) -> Result<(), StartError> {
        let mut log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        self.spawns += 1;
        writeln!(log, "=== baton-tests: spawn {} of node {}", self.spawns, self.id).expect("write log");
        self.log_start = log.seek(SeekFrom::End(0)).expect("log offset");
        let mut child = Command::new(baton_bin())
            .args(["server", "--id", &self.id.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .args(["--grpc", &self.addr, "--http", &self.http])
            .args(&self.extra_args)
            .env("BATON_LOG", "info,raft=warn,sled=warn,h2=warn,tower=warn")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn baton server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = format!("baton server {} listening", self.id);
        let reason = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if line.starts_with(&ready) => {
                    // Keep draining stdout so the process never blocks on a full pipe.
                    std::thread::spawn(move || while rx.recv().is_ok() {});
                    self.child = Some(child);
                    return Ok(());
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => break "did not become ready in time".to_string(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    break format!("exited before it was ready ({status})");
                }
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        Err(StartError { reason: format!("node {} {reason}", self.id), log: self.current_log() })
    }

    /// Whether the node is running (started and not yet killed).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The exit status, if the running node has exited by itself.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGKILL, no shutdown of any kind; returns once the process is gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The stderr of the latest start.
    pub fn current_log(&self) -> String {
        let all = std::fs::read(&self.log).unwrap_or_default();
        let from = (self.log_start as usize).min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }

    /// The stderr of every start.
    pub fn full_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}
