//! The long fault campaign: the suite's campaign (`tests/tests/it/campaign.rs`) with more faults.
//!
//! ```text
//! cargo build -p baton
//! cargo run -p baton-tests --bin campaign -- --events 500 [--nodes 5] [--seed S] [--dir PATH]
//!     [--trigger-every-ms MS] [--verbose]
//! ```
//!
//! Prints the seed first (`BATON_CAMPAIGN_SEED=S` or `--seed S` replays its fault plan), one
//! line per fault, then one JSON line; exits 1 if the checker found an anomaly (each is listed
//! with its evidence; the node logs, `history.jsonl` and `final-runs.jsonl` are kept).

use std::process::ExitCode;

use baton_tests::nemesis::{CampaignConfig, run_campaign};

fn usage() -> ExitCode {
    eprintln!(
        "usage: campaign [--events N] [--nodes 3|5] [--seed S] [--dir PATH] [--trigger-every-ms MS] [--verbose]\n\
         Runs a fault campaign against target/<profile>/baton (or $BATON_BIN); build it first."
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // The harness looks for `baton` next to a test executable (target/<profile>/deps/..); this
    // binary lives in target/<profile>/, so point it there through the environment of a child.
    if std::env::var_os("BATON_BIN").is_none() {
        let exe = std::env::current_exe().expect("current_exe");
        let bin = exe.parent().map(|d| d.join("baton")).expect("target dir");
        if !bin.exists() {
            eprintln!("{} does not exist: run `cargo build -p baton` first", bin.display());
            return ExitCode::from(2);
        }
        let status = std::process::Command::new(exe).args(std::env::args_os().skip(1)).env("BATON_BIN", bin).status();
        return match status.map(|s| s.code()) {
            Ok(Some(0)) => ExitCode::SUCCESS,
            Ok(Some(c)) => ExitCode::from(c.clamp(1, 255) as u8),
            _ => ExitCode::FAILURE,
        };
    }
    let mut cfg = CampaignConfig::new("long", 500);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let parsed: Result<(), String> = match a.as_str() {
            "--events" => value("--events").and_then(|v| v.parse().map(|n| cfg.events = n).map_err(|e| e.to_string())),
            "--nodes" => value("--nodes").and_then(|v| v.parse().map(|n| cfg.nodes = n).map_err(|e| e.to_string())),
            "--trigger-every-ms" => value("--trigger-every-ms")
                .and_then(|v| v.parse().map(|n| cfg.trigger_every_ms = n).map_err(|e| e.to_string())),
            "--seed" => value("--seed").and_then(|v| v.parse().map(|n| cfg.seed = n).map_err(|e| e.to_string())),
            "--dir" => value("--dir").map(|v| cfg.dir = Some(v.into())),
            "--verbose" => {
                cfg.verbose = true;
                Ok(())
            }
            "-h" | "--help" => return usage(),
            other => Err(format!("unknown argument {other:?}")),
        };
        if let Err(e) = parsed {
            eprintln!("error: {e}");
            return usage();
        }
    }
    if !(3..=9).contains(&cfg.nodes) {
        eprintln!("error: --nodes must be between 3 and 9");
        return usage();
    }
    let report = run_campaign(cfg);
    for a in &report.anomaly_list {
        println!("ANOMALY: {a}");
    }
    println!("{}", report.json_line());
    if report.anomalies > 0 {
        println!("evidence kept in {}", report.dir.display());
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
