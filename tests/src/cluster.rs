//! A cluster of real `baton server` processes on loopback, and `baton worker` processes.
//!
//! Nodes keep their ports and data directories across kill -9 and restart, so a test can
//! crash any node and bring it back; `stop`/`cont` send SIGSTOP/SIGCONT.

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
    child: Option<Child>,
}

impl Node {
    fn spawn(&mut self, extra: &[String]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.with_extension("log"))
            .expect("log file");
        let mut cmd = Command::new(baton_bin());
        cmd.args(["server", "--id", &self.id.to_string(), "--data-dir"])
            .arg(&self.data_dir)
            .args(["--grpc", &self.addr, "--http", &self.http, "--worker-grace-secs", "3"])
            .args(&self.peers)
            .args(extra)
            .env("BATON_LOG", "info,raft=warn,sled=warn,h2=warn,tower=warn")
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
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("listening") => {}
            other => {
                let _ = child.kill();
                let log = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
                panic!("node {} did not start ({other:?}); its log:\n{log}", self.id);
            }
        }
        self.child = Some(child);
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
        let addrs: Vec<String> = (0..n).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let peers = (1..=n)
                .filter(|p| *p != id)
                .flat_map(|p| ["--peer".to_string(), format!("{p}={}", addrs[(p - 1) as usize])])
                .collect();
            nodes.push(Node {
                id,
                addr: addrs[(id - 1) as usize].clone(),
                http: format!("127.0.0.1:{}", free_port()),
                data_dir: dir.join(format!("n{id}")),
                peers,
                child: None,
            });
        }
        for node in &mut nodes {
            node.spawn(&[]);
        }
        Cluster { nodes, workers: Vec::new(), dir: dir.to_path_buf() }
    }

    /// All gRPC addresses, comma-separated (for `baton worker --server`).
    pub fn addrs(&self) -> String {
        self.nodes.iter().map(|n| n.addr.clone()).collect::<Vec<_>>().join(",")
    }

    /// Starts a worker connected to the cluster.
    pub fn add_worker(&mut self, id: &str, capacity: u32) {
        let log = std::fs::File::create(self.dir.join(format!("{id}.log"))).expect("worker log");
        let child = Command::new(baton_bin())
            .args(["worker", "--id", id, "--capacity", &capacity.to_string(), "--server", &self.addrs()])
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
        node.spawn(&[]);
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
