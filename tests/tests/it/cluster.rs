//! A three-node cluster of real processes: the CLI against a follower, and a leader killed
//! while a run's middle step is running.

use std::time::{Duration, Instant};

use baton_tests::cluster::Cluster;

fn ledger_runbook(dir: &std::path::Path) -> std::path::PathBuf {
    let step = |id: &str, pre: &str| {
        format!(
            "  - id: {id}\n    action: exec\n    with:\n      command: [\"sh\", \"-c\", \"{pre}echo \\\"$RUN {id} $$\\\" >> \\\"$LEDGER\\\"\"]\n      env: {{ RUN: \"{{{{ run.id }}}}\", LEDGER: \"{{{{ params.ledger }}}}\" }}\n"
        )
    };
    let text = format!(
        "name: ledger\nparams:\n  ledger: {{ type: string, required: true }}\nsteps:\n{}{}{}",
        step("a", ""),
        step("b", "sleep 3; "),
        step("c", "")
    );
    let path = dir.join("ledger.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn killing_the_leader_mid_run_keeps_every_step_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(tmp.path(), 3);
    cluster.add_worker("w1", 2);
    let (leader, _) = cluster.wait_leader(None, Duration::from_secs(30));
    let follower = (1..=3).find(|id| *id != leader).unwrap();

    // Every client command works against a follower.
    let rb = ledger_runbook(tmp.path());
    let out = cluster.cli(follower, &["runbook", "apply", "-f", rb.to_str().unwrap()]);
    assert!(out.ok(), "{out}");
    let ledger = tmp.path().join("ledger.txt");
    let param = format!("ledger={}", ledger.display());
    let run = cluster.json(follower, &["run", "start", "ledger", "-p", &param]).expect("start via a follower");
    let id = run["id"].as_str().unwrap().to_string();

    // Wait until step b runs, then kill the leader.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = cluster.json(follower, &["run", "show", &id]).expect("show via a follower");
        if r["steps"][1]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "step b never ran: {r:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.kill9(leader);
    let (new_leader, took) = cluster.wait_leader(Some(leader), Duration::from_secs(30));
    println!(
        r#"{{"test":"leader_kill_mid_run","old_leader":{leader},"new_leader":{new_leader},"new_leader_ms":{}}}"#,
        took.as_millis()
    );

    // The run completes under the new leader.
    let deadline = Instant::now() + Duration::from_secs(60);
    let run = loop {
        let r = cluster.json(new_leader, &["run", "show", &id]);
        if let Ok(r) = &r
            && r["state"] == "succeeded"
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "run did not finish after failover: {r:?}\n{}", cluster.logs());
        std::thread::sleep(Duration::from_millis(100));
    };
    for step in run["steps"].as_array().unwrap() {
        assert_eq!(step["attempts"].as_array().unwrap().len(), 1, "no step was re-run: {run:#}");
    }
    // The new leader's /metrics counts the change it saw.
    let metrics = baton_tests::http::get(&cluster.nodes[(new_leader - 1) as usize].http, "/metrics").body;
    let changes = metrics.lines().find_map(|l| l.strip_prefix("baton_leader_changes_total ")).map(str::trim);
    assert!(changes.and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n >= 1), "{metrics}");
    // Each step's effect appears exactly once.
    let text = std::fs::read_to_string(&ledger).unwrap();
    for step in ["a", "b", "c"] {
        let n = text.lines().filter(|l| l.starts_with(&format!("{id} {step} "))).count();
        assert_eq!(n, 1, "step {step} has {n} effects in the ledger:\n{text}");
    }

    // The killed node comes back and catches up; all nodes agree on the run.
    cluster.restart(leader);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let views: Vec<_> = (1..=3).map(|n| cluster.json(n, &["run", "show", &id, "--stale"]).ok()).collect();
        if views.iter().all(|v| v.as_ref() == Some(&run)) {
            break;
        }
        assert!(Instant::now() < deadline, "nodes disagree about {id}: {views:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}
