//! Guards against a real Prometheus (Debian's `prometheus`, installed by scripts/test) that
//! scrapes a real endpoint: `baton dev`'s own /metrics. A passing guard lets every batch of a
//! run go; a failing one pauses the run with the reason, and a resume checks again.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_tests::http::get;
use baton_tests::{Dev, free_port, scratch_library};

/// A Prometheus process scraping `target` every second; killed on drop.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus_bin() -> PathBuf {
    let bin =
        std::env::var_os("BATON_PROMETHEUS_BIN").map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from);
    assert!(bin.exists(), "{} is missing: scripts/test installs Debian's prometheus package", bin.display());
    bin
}

impl Prometheus {
    fn start(dir: &std::path::Path, target: &str) -> Prometheus {
        let config = dir.join("prometheus.yml");
        let text = format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\nscrape_configs:\n  - job_name: baton\n    \
             static_configs: [ {{ targets: [\"{target}\"] }} ]\n"
        );
        std::fs::write(&config, text).unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("tsdb").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start prometheus");
        let prometheus = Prometheus { child, addr };
        // Ready once it has scraped Baton at least once.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let up = std::panic::catch_unwind(|| {
                get(&prometheus.addr, "/api/v1/query?query=up%7Bjob%3D%22baton%22%7D%3D%3D1")
            });
            if let Ok(r) = up
                && r.status == 200
                && r.json()["data"]["result"].as_array().is_some_and(|a| !a.is_empty())
            {
                return prometheus;
            }
            let log = std::fs::read_to_string(dir.join("prometheus.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "Prometheus did not scrape Baton within 90 s; its log:\n{log}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

const GUARDED: &str = r#"
name: guarded
params:
  prometheus: { type: string, required: true }
  query: { type: string, required: true }
  probe: { type: string, required: true }
steps:
  - id: roll
    action: exec
    foreach: '["a", "b"]'
    batch: 1
    with: { command: ["echo", "{{ target }}"] }
guards:
  - name: baton is scraped
    prometheus: { url: "{{ params.prometheus }}", query: "{{ params.query }}" }
  - name: health
    http: { url: "{{ params.probe }}" }
"#;

#[test]
fn guards_let_healthy_runs_go_and_pause_the_others_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("guarded.yaml", GUARDED)]);
    let dev = Dev::start(&tmp.path().join("data"), &lib);
    let prom = Prometheus::start(tmp.path(), &dev.http);
    let prom_url = format!("prometheus=http://{}", prom.addr);
    let healthy = format!("probe=http://{}/healthz", dev.http);

    let plan = dev.json(&["plan", "guarded", "-p", &prom_url, "-p", "query=up == 1", "-p", &healthy]);
    let shown = plan["guards"][0].as_str().unwrap();
    assert_eq!(shown, format!("baton is scraped: prometheus http://{} up == 1", prom.addr));

    // Both guards hold: every batch goes.
    let run = dev.json(&[
        "run",
        "start",
        "guarded",
        "-p",
        &prom_url,
        "-p",
        "query=up{job=\"baton\"} == 1",
        "-p",
        &healthy,
        "--wait",
    ]);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["steps"].as_array().unwrap().len(), 2);

    // A query that returns nothing: the run pauses before its first batch, saying why.
    let id = dev.json(&[
        "run",
        "start",
        "guarded",
        "-p",
        &prom_url,
        "-p",
        "query=baton_workers_connected > 100",
        "-p",
        &healthy,
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = dev.wait_run(&id, Duration::from_secs(60), |r| r["paused"] == true);
    let reason = run["pause_reason"].as_str().unwrap();
    assert_eq!(reason, "guard \"baton is scraped\" failed before step roll: the query returned no sample", "{run:#}");
    assert_eq!(run["events"][0]["principal"], "baton");
    assert_eq!(run["events"][0]["via"], "guard");
    assert!(run["steps"][0]["attempts"].as_array().unwrap().is_empty(), "nothing ran: {run:#}");
    assert!(dev.cli(&["run", "show", &id]).stdout.contains("paused:    yes: guard"));
    // Resuming checks again: still failing, so it pauses again.
    assert!(dev.cli(&["run", "resume", &id]).ok());
    let run = dev.wait_run(&id, Duration::from_secs(60), |r| {
        r["paused"] == true && r["events"].as_array().is_some_and(|e| e.len() >= 3)
    });
    assert_eq!(run["state"], "pending");

    // A probe that answers 404.
    let broken = format!("probe=http://{}/nope", dev.http);
    let id = dev.json(&[
        "run",
        "start",
        "guarded",
        "-p",
        &prom_url,
        "-p",
        "query=up{job=\"baton\"} == 1",
        "-p",
        &broken,
    ])["id"]
        .as_str()
        .unwrap()
        .to_string();
    let run = dev.wait_run(&id, Duration::from_secs(60), |r| r["paused"] == true);
    let reason = run["pause_reason"].as_str().unwrap();
    assert!(reason.starts_with("guard \"health\" failed before step roll: GET http://"), "{reason}");
    assert!(reason.ends_with("/nope answered 404, expected a 2xx status"), "{reason}");
}
