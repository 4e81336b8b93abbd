//! Membership and backups on real processes: join a fourth node, remove one, wipe a node and
//! bring it back through a snapshot, back up and restore into a fresh cluster.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::{CliOutput, baton_bin, free_port};
use serde_json::Value;

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `baton server` and waits for its "listening" line.
fn server(dir: &Path, id: u64, addr: &str, peers: &[(u64, &str)], extra: &[&str]) -> Proc {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("n{id}.log"))).unwrap();
    let mut cmd = Command::new(baton_bin());
    cmd.args(["server", "--id", &id.to_string(), "--grpc", addr, "--snapshot-every", "10"])
        .arg("--http")
        .arg(format!("127.0.0.1:{}", free_port()))
        .arg("--data-dir")
        .arg(dir.join(format!("n{id}")))
        .args(extra)
        .env("BATON_LOG", "info,raft=warn,sled=warn,h2=warn,tower=warn")
        .stdout(Stdio::piped())
        .stderr(log);
    for (p, a) in peers {
        cmd.arg("--peer").arg(format!("{p}={a}"));
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    assert!(line.contains("listening"), "node {id} did not start: {line}");
    Proc(child)
}

fn cli(addr: &str, args: &[&str]) -> CliOutput {
    CliOutput::from(Command::new(baton_bin()).args(args).arg("--addr").arg(addr).output().unwrap())
}

fn json(addr: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = cli(addr, &all);
    assert!(out.ok(), "baton {args:?} at {addr}: {out}");
    serde_json::from_str(&out.stdout).unwrap()
}

/// Polls `f` until it returns true.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every node's log, for failure messages.
fn logs(dir: &Path) -> String {
    (1..=4)
        .map(|i| format!("=== n{i}\n{}", std::fs::read_to_string(dir.join(format!("n{i}.log"))).unwrap_or_default()))
        .collect()
}

fn runs(addr: &str) -> Vec<String> {
    let list = json(addr, &["run", "list", "--stale", "--limit", "1000"]);
    let mut ids: Vec<String> = list.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    ids.sort();
    ids
}

const RB: &str = "name: note\nparams:\n  n: { type: int, required: true }\nsteps:\n  - id: one\n    action: exec\n    with: { command: [\"true\"] }\n";
const SCHED: &str = "schedule: nightly\nrunbook: note\ncron: \"0 3 * * *\"\nparams: { n: 1 }\n";

#[test]
fn join_remove_rejoin_by_snapshot_and_restore_from_a_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let addrs: Vec<String> = (0..4).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let a = |i: u64| addrs[(i - 1) as usize].as_str();
    let founders = |me: u64| -> Vec<(u64, &str)> { (1..=3).filter(|p| *p != me).map(|p| (p, a(p))).collect() };
    let mut nodes: Vec<Option<Proc>> = (1..=3).map(|i| Some(server(dir, i, a(i), &founders(i), &[]))).collect();
    nodes.push(None);

    std::fs::write(dir.join("note.yaml"), RB).unwrap();
    std::fs::write(dir.join("nightly.yaml"), SCHED).unwrap();
    let f = |name: &str| dir.join(name).to_str().unwrap().to_string();
    eventually("a leader", || cli(a(1), &["runbook", "apply", "-f", &f("note.yaml")]).ok());
    assert!(cli(a(2), &["runbook", "apply", "-f", &f("nightly.yaml")]).ok());
    for n in 0..25 {
        let out = cli(a(1 + n % 3), &["run", "start", "note", "-p", &format!("n={n}")]);
        assert!(out.ok(), "{out}\n{}", logs(dir));
    }
    let history = runs(a(1));
    assert_eq!(history.len(), 25);

    // Join a fourth node: it starts empty and catches up (the log was compacted: a snapshot).
    let all: Vec<(u64, &str)> = (1..=3).map(|p| (p, a(p))).collect();
    nodes[3] = Some(server(dir, 4, a(4), &all, &["--join"]));
    let out = cli(a(2), &["cluster", "join", "4", a(4)]);
    assert!(out.ok(), "{out}");
    eventually("node 4 to catch up", || runs(a(4)) == history);
    // Its status is published at the end of the Ready that installed the snapshot, a moment
    // after the state it reads from: poll it too.
    let mut status = Value::Null;
    eventually("node 4 to report four members and its snapshot", || {
        status = json(a(4), &["cluster", "status"]);
        status["members"].as_array().unwrap().len() == 4
    });
    assert!(status["snapshot_index"].as_u64().unwrap() > 0, "caught up from a snapshot: {status:#}");

    // A duplicate join and removing a non-member are refused.
    let dup = cli(a(1), &["cluster", "join", "4", a(4)]);
    assert!(!dup.ok() && dup.stderr.contains("already a member"), "{dup}");
    let bad = cli(a(1), &["cluster", "remove", "9"]);
    assert!(!bad.ok() && bad.stderr.contains("not a member"), "{bad}");

    // Remove node 1; the cluster goes on (writes through node 2).
    let out = cli(a(2), &["cluster", "remove", "1"]);
    assert!(out.ok(), "{out}");
    nodes[0] = None;
    eventually("a write without node 1", || cli(a(2), &["run", "start", "note", "-p", "n=100"]).ok());
    let history = runs(a(2));

    // Wipe node 3 and bring it back: remove, start empty with --join, join again.
    assert!(cli(a(2), &["cluster", "remove", "3"]).ok());
    nodes[2] = None;
    std::fs::remove_dir_all(dir.join("n3")).unwrap();
    let others: Vec<(u64, &str)> = vec![(2, a(2)), (4, a(4))];
    nodes[2] = Some(server(dir, 3, a(3), &others, &["--join"]));
    let out = cli(a(4), &["cluster", "join", "3", a(3)]);
    assert!(out.ok(), "{out}\n{}", logs(dir));
    eventually("the wiped node to catch up", || runs(a(3)) == history);

    // Back up, restore into a fresh single-node cluster: same runbooks, schedules, history.
    let backup = dir.join("backup.json");
    let out = cli(a(3), &["cluster", "snapshot", "save", backup.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    let restore = |d: &Path| {
        CliOutput::from(
            Command::new(baton_bin())
                .args(["cluster", "restore", backup.to_str().unwrap(), "--id", "1", "--data-dir"])
                .arg(d)
                .output()
                .unwrap(),
        )
    };
    let out = restore(&fresh.join("n1"));
    assert!(out.ok(), "{out}");
    let again = restore(&fresh.join("n1"));
    assert!(!again.ok() && again.stderr.contains("empty"), "restore refuses a used directory: {again}");
    let fresh_addr = format!("127.0.0.1:{}", free_port());
    let _restored = server(&fresh, 1, &fresh_addr, &[], &[]);
    assert_eq!(runs(&fresh_addr), history);
    let rbs = json(&fresh_addr, &["runbook", "list"]);
    assert_eq!(rbs[0]["name"], "note");
    let scheds = json(&fresh_addr, &["schedule", "list"]);
    assert_eq!(scheds[0]["name"], "nightly");
    // The restored cluster takes writes.
    assert!(cli(&fresh_addr, &["run", "start", "note", "-p", "n=7"]).ok());

    // A corrupt backup is refused and writes nothing.
    std::fs::write(&backup, b"{\"format\":\"baton-backup-v1\"").unwrap();
    let out = restore(&dir.join("other"));
    assert!(!out.ok() && out.stderr.contains("not a usable Baton backup"), "{out}");
    drop(nodes);
}
