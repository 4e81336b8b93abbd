//! The benchmark command at tiny sizes: every workload completes correctly (every run exactly
//! once, nothing lost, duplicated or missed) and prints the JSON it documents. No timing is
//! asserted: benchmarks print numbers, they never pass or fail on time.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `target/<profile>/bench`, next to `baton` (cargo builds the crate's binaries for its tests).
fn bench_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> -> target/<profile>/bench
    let bin = exe.parent().and_then(Path::parent).map(|d| d.join("bench")).expect("target dir");
    assert!(bin.exists(), "{} does not exist: build it with `cargo build -p baton-tests --bin bench`", bin.display());
    bin
}

fn num(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {v}"))
}

#[test]
fn tiny_benchmarks_complete_every_run_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(bench_bin())
        .args(["w1", "w1-lat", "w2", "w5", "w6", "w4"])
        .args(["--runs", "40", "--lat-runs", "40", "--seq", "20", "--clients", "4", "--schedules", "60", "--due", "20"])
        // Prefetch on: queued attempts go through dispatch, results and the failover too.
        .args(["--prefetch", "2"])
        .arg("--baton")
        .arg(baton_tests::baton_bin())
        .arg("--dir")
        .arg(tmp.path())
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{stderr}")))
        .collect();
    let names: Vec<&str> = lines.iter().map(|l| l["workload"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, ["W1", "W1-lat", "W2", "W5", "W6", "W4"], "one line per workload\n{stdout}\n{stderr}");
    for l in &lines {
        assert_eq!(l["ok"], true, "a workload reported a failure: {l}\n{stderr}");
        assert_eq!(l["system"], "baton", "{l}");
    }
    assert!(out.status.success(), "bench exited with {}\n{stderr}", out.status);

    let w1 = &lines[0];
    for key in
        ["runs_per_s", "start_p50_ms", "start_p95_ms", "start_p99_ms", "done_p50_ms", "done_p95_ms", "done_p99_ms"]
    {
        num(w1, key);
    }
    assert_eq!(num(w1, "succeeded"), 40.0, "{w1}");
    for key in ["missing", "duplicate_runs", "duplicate_attempts", "lost_attempts", "errors"] {
        assert_eq!(num(w1, key), 0.0, "{key} in {w1}");
    }

    let lat = &lines[1];
    num(lat, "start_p50_ms");
    num(lat, "start_p99_ms");
    assert_eq!(num(lat, "succeeded"), 40.0, "{lat}");

    let w2 = &lines[2];
    for key in ["seq_p50_ms", "seq_p99_ms", "commits_per_s", "p50_ms", "p99_ms"] {
        num(w2, key);
    }
    // 20 sequential + 40 concurrent starts: 60 distinct runs, all pending (no worker).
    assert_eq!(num(w2, "distinct_runs"), 60.0, "{w2}");
    assert_eq!(num(w2, "pending_runs"), 60.0, "{w2}");

    // Under failover every run ends and no step runs twice; an attempt whose assignment died
    // with the leader may be `lost` (its run needs attention): reported, not a failure here.
    let w5 = &lines[3];
    num(w5, "leader_elected_ms");
    num(w5, "first_commit_ms");
    let lost = num(w5, "lost_attempts");
    assert_eq!(num(w5, "succeeded") + w5["states"]["needs_attention"].as_f64().unwrap_or(0.0), 40.0, "{w5}");
    assert!(w5["states"]["needs_attention"].as_f64().unwrap_or(0.0) <= lost, "{w5}");
    for key in ["duplicate_attempts", "duplicate_runs", "missing", "failed_starts"] {
        assert_eq!(num(w5, key), 0.0, "{key} in {w5}");
    }

    let w6 = &lines[4];
    assert_eq!(w6["idle_rss_mib"].as_array().map(Vec::len), Some(3), "{w6}");
    assert_eq!(w6["startup_ms"].as_array().map(Vec::len), Some(3), "{w6}");
    assert!(num(w6, "live_state_bytes") > 0.0 && num(w6, "disk_per_live_byte") > 0.0, "{w6}");
    assert_eq!(num(w6, "succeeded"), 40.0, "{w6}");

    let w4 = &lines[5];
    assert_eq!(num(w4, "fired"), 20.0, "{w4}");
    assert_eq!(num(w4, "missed"), 0.0, "{w4}");
    assert_eq!(num(w4, "duplicated"), 0.0, "{w4}");
    assert_eq!(num(w4, "schedules_listed"), 60.0, "{w4}");
    num(w4, "fire_skew_p99_ms");
}
