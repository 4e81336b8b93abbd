//! A cluster of real `baton server` processes on loopback, and `baton worker` processes.
//!
//! Nodes keep their ports and data directories across kill -9 and restart, so a test can
//! crash any node and bring it back; `stop`/`cont` send SIGSTOP/SIGCONT.
//!
//! [`Cluster::start_with`] takes [`ClusterOptions`]: fixed gRPC addresses, the address each node
//! dials for each peer (so a fault-injecting proxy can sit on every directed link, see
//! `crate::nemesis`), extra `baton server` arguments and the worker grace period.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::{CliOutput, baton_bin, free_port};

/// One node.
pub struct Node {
    /// Raft id.
    pub id: u64,
    /// gRPC address.
    pub addr: String,
    /// HTTP address.
    pub http: String,
    /// Data directory.
    pub data_dir: PathBuf,
    peers: Vec<String>,
    /// More `baton server` arguments, passed to every start.
    extra: Vec<String>,
    log_filter: String,
    child: Option<Child>,
    spawns: u32,
}

impl Node {
    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    /// Starts the process and waits until it says it is listening. A start that loses a port
    /// race (the killed process's port not yet free) is retried for a few seconds.
    fn try_spawn(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.spawn_once(deadline) {
                Ok(()) => return Ok(()),
                Err((_, log)) if log.contains("Address already in use") && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err((why, log)) => {
                    let tail: String = {
                        let lines: Vec<&str> = log.lines().collect();
                        lines[lines.len().saturating_sub(40)..].join("\n")
                    };
                    return Err(format!("node {} did not start ({why}); the end of its log:\n{tail}", self.id));
                }
            }
        }
    }

    fn spawn_once(&mut self, deadline: Instant) -> Result<(), (String, String)> {
        use std::io::{Seek, SeekFrom, Write};
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log file");
        self.spawns += 1;
        let _ = writeln!(log, "=== baton-tests: start {} of node {}", self.spawns, self.id);
        let log_start = log.seek(SeekFrom::End(0)).unwrap_or(0) as usize;
        let mut cmd = Command::new(baton_bin());
        cmd.args(["server", "--id", &self.id.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .args(["--grpc", &self.addr, "--http", &self.http])
            .args(&self.peers)
            .args(&self.extra)
            .env("BATON_LOG", &self.log_filter)
            .stdout(Stdio::piped())
            .stderr(log);
        let mut child = cmd.spawn().expect("spawn baton server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let why = loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.contains("listening") => {
                    self.child = Some(child);
                    return Ok(());
                }
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => break "not listening in time".to_string(),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    break format!("exited before it was listening ({status})");
                }
            }
        };
        let _ = child.kill();
        let _ = child.wait();
        let all = std::fs::read(self.data_dir.with_extension("log")).unwrap_or_default();
        let log = String::from_utf8_lossy(&all[log_start.min(all.len())..]).into_owned();
        Err((why, log))
    }

    /// Whether the process is running (not killed).
    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    /// SIGKILL.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the running process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY-free: libc::kill on a pid we own.
            let _ = Command::new("kill").arg(format!("-{sig}")).arg(c.id().to_string()).status();
        }
    }

    /// The log of every start of this node.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default()
    }
}

/// How [`Cluster::start_with`] sets up the nodes.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of nodes (ids 1..=n).
    pub nodes: u64,
    /// gRPC listen address of each node, by index (default: free loopback ports).
    pub addrs: Option<Vec<String>>,
    /// The address node `from` dials to reach node `to`, keyed `(from, to)` (default: `to`'s
    /// gRPC address). Pointing it at a proxy puts the proxy on that directed link.
    pub peer_addrs: BTreeMap<(u64, u64), String>,
    /// `--worker-grace-secs` of every node.
    pub worker_grace_secs: u64,
    /// More `baton server` arguments for every node (e.g. `--snapshot-every 500`).
    pub server_args: Vec<String>,
    /// `BATON_LOG` of every node.
    pub log_filter: String,
}

impl ClusterOptions {
    /// `n` nodes on free ports, dialing each other directly, worker grace 3 s.
    pub fn new(n: u64) -> ClusterOptions {
        ClusterOptions {
            nodes: n,
            addrs: None,
            peer_addrs: BTreeMap::new(),
            worker_grace_secs: 3,
            server_args: Vec::new(),
            log_filter: "info,raft=warn,sled=warn,h2=warn,tower=warn".into(),
        }
    }
}

/// A cluster of nodes and workers.
pub struct Cluster {
    /// The nodes, by index (node id = index + 1).
    pub nodes: Vec<Node>,
    workers: Vec<Child>,
    dir: PathBuf,
}

impl Cluster {
    /// Starts `n` nodes that know each other, each in `dir/nN`.
    pub fn start(dir: &Path, n: u64) -> Cluster {
        Cluster::start_with(dir, &ClusterOptions::new(n))
    }

    /// Starts the nodes `opts` describes, each in `dir/nN`.
    pub fn start_with(dir: &Path, opts: &ClusterOptions) -> Cluster {
        let n = opts.nodes;
        let addrs: Vec<String> = match &opts.addrs {
            Some(a) => {
                assert_eq!(a.len() as u64, n, "one address per node");
                a.clone()
            }
            None => (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect(),
        };
        let mut nodes = Vec::new();
        for id in 1..=n {
            let peers = (1..=n)
                .filter(|p| *p != id)
                .flat_map(|p| {
                    let addr = opts.peer_addrs.get(&(id, p)).unwrap_or(&addrs[(p - 1) as usize]);
                    ["--peer".to_string(), format!("{p}={addr}")]
                })
                .collect();
            let mut extra = vec!["--worker-grace-secs".to_string(), opts.worker_grace_secs.to_string()];
            extra.extend(opts.server_args.iter().cloned());
            nodes.push(Node {
                id,
                addr: addrs[(id - 1) as usize].clone(),
                http: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.join(format!("n{id}")),
                peers,
                extra,
                log_filter: opts.log_filter.clone(),
                child: None,
                spawns: 0,
            });
        }
        for node in &mut nodes {
            node.spawn();
        }
        Cluster { nodes, workers: Vec::new(), dir: dir.to_path_buf() }
    }

    /// The directory the nodes and workers keep their data and logs in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// All gRPC addresses, comma-separated (for `baton worker --server`).
    pub fn addrs(&self) -> String {
        self.nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// Starts a worker connected to the cluster.
    pub fn add_worker(&mut self, id: &str, capacity: u32) {
        self.add_worker_with_env(id, capacity, &[]);
    }

    /// Starts a worker connected to the cluster, with more environment variables (its steps
    /// inherit them).
    pub fn add_worker_with_env(&mut self, id: &str, capacity: u32, env: &[(&str, &str)]) {
        let log = std::fs::File::create(self.dir.join(format!("{id}.log"))).expect("worker log");
        let child = Command::new(baton_bin())
            .args(["worker", "--id", id, "--capacity", &capacity.to_string(), "--server", &self.addrs()])
            .envs(env.iter().copied())
            .env("BATON_LOG", "info,h2=warn,tower=warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn worker");
        self.workers.push(child);
    }

    /// Restarts node `id` (1-based) on its data directory.
    pub fn restart(&mut self, id: u64) {
        let node = &mut self.nodes[(id - 1) as usize];
        node.kill9();
        node.spawn();
    }

    /// Restarts node `id` (1-based), reporting a failed start (with the end of its log)
    /// instead of panicking.
    pub fn try_restart(&mut self, id: u64) -> Result<(), String> {
        let node = &mut self.nodes[(id - 1) as usize];
        node.kill9();
        node.try_spawn()
    }

    /// SIGSTOP to node `id`: it stays in the process table but does nothing.
    pub fn stop(&self, id: u64) {
        self.nodes[(id - 1) as usize].signal(libc::SIGSTOP);
    }

    /// SIGCONT to node `id`.
    pub fn cont(&self, id: u64) {
        self.nodes[(id - 1) as usize].signal(libc::SIGCONT);
    }

    /// Runs a client command against node `id`.
    pub fn cli(&self, id: u64, args: &[&str]) -> CliOutput {
        let out = Command::new(baton_bin())
            .args(args)
            .env("BATON_ADDR", &self.nodes[(id - 1) as usize].addr)
            .env_remove("BATON_LOG")
            .output()
            .expect("run baton");
        CliOutput::from(out)
    }

    /// Runs a client command with `--output json` against node `id` and parses it.
    pub fn json(&self, id: u64, args: &[&str]) -> Result<serde_json::Value, CliOutput> {
        let mut all = args.to_vec();
        all.extend(["--output", "json"]);
        let out = self.cli(id, &all);
        if !out.ok() {
            return Err(out);
        }
        serde_json::from_str(&out.stdout).map_err(|_| out)
    }

    /// The leader as seen by live nodes, once a majority of them agree, or None.
    pub fn leader(&self) -> Option<u64> {
        let mut seen = std::collections::BTreeMap::new();
        for n in self.nodes.iter().filter(|n| n.is_up()) {
            if let Ok(s) = self.json(n.id, &["cluster", "status"]) {
                let l = s["leader_id"].as_u64().unwrap_or(0);
                if l != 0 && s["role"] != "candidate" {
                    *seen.entry(l).or_insert(0) += 1;
                }
            }
        }
        let quorum = self.nodes.len() / 2 + 1;
        seen.into_iter().find(|(_, c)| *c >= quorum).map(|(l, _)| l)
    }

    /// Waits for a leader (other than `not`) and returns it with how long it took.
    pub fn wait_leader(&self, not: Option<u64>, timeout: Duration) -> (u64, Duration) {
        let start = Instant::now();
        loop {
            if let Some(l) = self.leader().filter(|l| Some(*l) != not) {
                return (l, start.elapsed());
            }
            assert!(start.elapsed() < timeout, "no leader within {timeout:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills node `id` with SIGKILL.
    pub fn kill9(&mut self, id: u64) {
        self.nodes[(id - 1) as usize].kill9();
    }

    /// Every node's log, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("=== node {}\n{}", n.id, n.log())).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            let _ = w.kill();
            let _ = w.wait();
        }
        for n in &mut self.nodes {
            n.signal(18);
            n.kill9();
        }
    }
}
