//! `baton`: the one binary. `server`, `worker` and `dev` run Baton's processes; every other
//! subcommand is a client of the gRPC API.

mod client;
mod daemon;
mod preview;
mod render;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Baton: a Raft-replicated scheduler for automation runbooks.
#[derive(Parser, Debug)]
#[command(name = "baton", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run everything in one process: a single-node cluster, a worker and the runbook library.
    Dev(daemon::DevArgs),
    /// Run one scheduler node.
    Server(daemon::ServerArgs),
    /// Run a worker that executes steps for the cluster.
    Worker(daemon::WorkerArgs),
    /// Start, inspect, follow and cancel runs.
    #[command(subcommand)]
    Run(client::RunCommand),
    /// Show what a run would do, without starting it.
    Plan(client::PlanArgs),
    /// Apply, inspect and lint runbooks.
    #[command(subcommand)]
    Runbook(client::RunbookCommand),
    /// Inspect schedules.
    #[command(subcommand)]
    Schedule(client::ScheduleCommand),
    /// Inspect the cluster.
    #[command(subcommand)]
    Cluster(client::ClusterCommand),
    /// Inspect resource locks.
    #[command(subcommand)]
    Lock(client::LockCommand),
}

/// Options every client command takes.
#[derive(Args, Debug, Clone)]
pub struct ClientOpts {
    /// Address of any scheduler node.
    #[arg(long, global = true, env = "BATON_ADDR", default_value = "http://127.0.0.1:7400")]
    pub addr: String,
    /// Output format.
    #[arg(long, short = 'o', global = true, value_enum, default_value = "table")]
    pub output: OutputFormat,
    /// Answer reads from the node's applied state without confirming with the leader (faster,
    /// works without a quorum, may be behind).
    #[arg(long, global = true)]
    pub stale: bool,
}

/// How client commands print results.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Tables and text for people.
    Table,
    /// JSON for scripts.
    Json,
}

/// Exit code when a waited-for run did not succeed.
pub const EXIT_RUN_FAILED: u8 = 3;

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BATON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let daemon = matches!(cli.command, Command::Dev(_) | Command::Server(_) | Command::Worker(_));
    init_tracing(if daemon { "info,raft=warn,sled=warn,h2=warn,tower=warn" } else { "warn" });
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Dev(args) => daemon::dev(args).await.map(|()| ExitCode::SUCCESS),
            Command::Server(args) => daemon::server(args).await.map(|()| ExitCode::SUCCESS),
            Command::Worker(args) => daemon::worker(args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(cmd) => client::run(cmd).await,
            Command::Plan(args) => client::plan(args).await,
            Command::Runbook(cmd) => client::runbook(cmd).await,
            Command::Schedule(cmd) => client::schedule(cmd).await,
            Command::Cluster(cmd) => client::cluster(cmd).await,
            Command::Lock(cmd) => client::lock(cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", render::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Default data directory of `baton dev`.
pub fn default_dev_dir() -> PathBuf {
    PathBuf::from(".baton/dev")
}
