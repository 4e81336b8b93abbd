//! The client subcommands: runs, runbooks, schedules, cluster.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use baton_core::run::{Run, StepState};
use baton_core::{Document, parse_document};
use baton_proto::run_from_pb;
use baton_proto::v1 as pb;
use clap::Subcommand;
use futures::StreamExt;
use tonic::transport::Channel;

use crate::daemon::{endpoint, parse_kv};
use crate::render::{elapsed, span, table, time};
use crate::{ClientOpts, EXIT_RUN_FAILED, OutputFormat};

/// `baton run ...`
#[derive(Subcommand, Debug)]
pub enum RunCommand {
    /// Start a run of a runbook.
    Start {
        /// Runbook name.
        runbook: String,
        /// A param, KEY=VALUE (repeatable).
        #[arg(short = 'p', long = "param", value_parser = parse_kv)]
        params: Vec<(String, String)>,
        /// A retried request with the same key returns the first run instead of starting another.
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Follow the run to its end; exit non-zero unless it succeeds.
        #[arg(long)]
        wait: bool,
        /// Who starts it [default: $BATON_PRINCIPAL, else $USER].
        #[arg(long = "as", env = "BATON_PRINCIPAL")]
        principal: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List runs, newest first.
    List {
        /// Only runs of this runbook.
        #[arg(long)]
        runbook: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show one run: state, steps, attempts, outputs.
    Show {
        /// Run id.
        id: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Print a run's output; with -f, follow it until the run ends.
    Logs {
        /// Run id.
        id: String,
        /// Follow new output until the run ends.
        #[arg(short = 'f', long)]
        follow: bool,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Approve the approval step a run waits on.
    Approve(DecideArgs),
    /// Deny the approval step a run waits on: the step fails (and with it the run, unless the
    /// step has `on_error: continue`).
    Deny(DecideArgs),
    /// Cancel a run: pending steps never start, running ones are stopped.
    Cancel {
        /// Run id.
        id: String,
        /// Why (recorded with the run).
        #[arg(long, default_value = "")]
        reason: String,
        /// Who asks [default: $BATON_PRINCIPAL, else $USER].
        #[arg(long = "as", env = "BATON_PRINCIPAL")]
        principal: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Pause a run: no further step starts until it is resumed (running steps go on).
    Pause(ActionArgs),
    /// Resume a paused run.
    Resume(ActionArgs),
    /// Run a failed, cancelled or needs_attention run again from a step (default: the first
    /// step that did not succeed); that step and every later one start afresh.
    Retry {
        #[command(flatten)]
        action: ActionArgs,
        /// The step to start from.
        #[arg(long = "from")]
        from_step: Option<String>,
        /// Follow the run to its end; exit non-zero unless it succeeds.
        #[arg(long)]
        wait: bool,
    },
    /// Go on with a needs_attention run after its lost step, counting that step as skipped.
    Skip(ActionArgs),
    /// End a run as failed now (running steps are stopped); --reason is required.
    ForceFail(ActionArgs),
}

/// Options of the operator actions on a run.
#[derive(clap::Args, Debug)]
pub struct ActionArgs {
    /// Run id.
    pub id: String,
    /// Why (recorded in the run's history).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Who asks [default: $BATON_PRINCIPAL, else $USER].
    #[arg(long = "as", env = "BATON_PRINCIPAL")]
    pub principal: Option<String>,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// Options of `baton run approve` and `baton run deny`.
#[derive(clap::Args, Debug)]
pub struct DecideArgs {
    /// Run id.
    pub id: String,
    /// The approval step (default: the one the run waits on).
    #[arg(long)]
    pub step: Option<String>,
    /// Why (recorded with the decision).
    #[arg(long, default_value = "")]
    pub reason: String,
    /// Who decides [default: $BATON_PRINCIPAL, else $USER].
    #[arg(long = "as", env = "BATON_PRINCIPAL")]
    pub principal: Option<String>,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// `baton runbook ...`
#[derive(Subcommand, Debug)]
pub enum RunbookCommand {
    /// List runbooks.
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show a runbook: params, steps and source.
    Show {
        /// Runbook name.
        name: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Apply runbook or schedule documents (YAML).
    Apply {
        /// Files to apply (repeatable).
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// List every version of a runbook (each apply that changed it), oldest first.
    Versions {
        /// Runbook name.
        name: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Show what changed between two versions of a runbook (hashes or unique prefixes).
    Diff {
        /// Runbook name.
        name: String,
        /// The older version.
        from: String,
        /// The newer version (default: the current one).
        to: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Check documents locally, without a server.
    Lint {
        /// Files to check.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Print the JSON Schema of the runbook and schedule formats.
    Schema,
}

/// `baton schedule ...`
#[derive(Subcommand, Debug)]
pub enum ScheduleCommand {
    /// List schedules with their next and last ticks.
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Print when a cron expression would fire, as the scheduler fires it (no server needed).
    Preview(crate::preview::PreviewArgs),
    /// Run a schedule now, under its overlap policy.
    Trigger {
        /// Schedule name.
        name: String,
        /// Follow the run to its end; exit non-zero unless it succeeds.
        #[arg(long)]
        wait: bool,
        /// Who asks [default: $BATON_PRINCIPAL, else $USER].
        #[arg(long = "as", env = "BATON_PRINCIPAL")]
        principal: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Run the past ticks in [FROM, TO] that have no run yet, one at a time, oldest first.
    Backfill {
        /// Schedule name.
        name: String,
        /// First instant, RFC 3339 (e.g. 2026-11-01T00:00:00Z).
        #[arg(long, value_parser = parse_rfc3339)]
        from: i64,
        /// Last instant, RFC 3339 (default: now).
        #[arg(long, value_parser = parse_rfc3339)]
        to: Option<i64>,
        /// Who asks [default: $BATON_PRINCIPAL, else $USER].
        #[arg(long = "as", env = "BATON_PRINCIPAL")]
        principal: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Stop a schedule's ticks from firing until it is unpaused.
    Pause {
        /// Schedule name.
        name: String,
        /// Why (shown by `schedule list`).
        #[arg(long, default_value = "")]
        note: String,
        /// Who asks [default: $BATON_PRINCIPAL, else $USER].
        #[arg(long = "as", env = "BATON_PRINCIPAL")]
        principal: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Let a paused schedule fire again; the ticks it skipped are recorded as missed.
    Unpause {
        /// Schedule name.
        name: String,
        /// Who asks [default: $BATON_PRINCIPAL, else $USER].
        #[arg(long = "as", env = "BATON_PRINCIPAL")]
        principal: Option<String>,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// Parses an RFC 3339 time to unix milliseconds.
fn parse_rfc3339(s: &str) -> Result<i64, String> {
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|t| t.timestamp_millis())
        .map_err(|e| format!("expected an RFC 3339 time such as 2026-11-01T00:00:00Z, found {s:?} ({e})"))
}

/// `baton plan RUNBOOK -p ...`
#[derive(clap::Args, Debug)]
pub struct PlanArgs {
    /// Runbook name.
    pub runbook: String,
    /// A param, KEY=VALUE (repeatable).
    #[arg(short = 'p', long = "param", value_parser = parse_kv)]
    pub params: Vec<(String, String)>,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// `baton plan`: what a run would do, rendered by the server from the current runbook version.
pub async fn plan(args: PlanArgs) -> anyhow::Result<ExitCode> {
    let PlanArgs { runbook, params, opts } = args;
    let mut client = pb::run_service_client::RunServiceClient::new(channel(&opts).await?);
    let request = pb::StartRunRequest {
        runbook,
        params: params.into_iter().collect(),
        idempotency_key: String::new(),
        principal: String::new(),
    };
    let plan = client.plan(req(&opts, request)).await?.into_inner();
    if opts.output == OutputFormat::Json {
        let steps: Vec<serde_json::Value> = plan
            .steps
            .iter()
            .map(|s| {
                serde_json::json!({
                    "id": s.id, "block": s.block, "kind": s.kind, "when": s.when, "when_result": s.when_result,
                    "argv": s.argv, "env": s.env, "workdir": s.workdir, "render_note": s.render_note,
                    "timeout_ms": s.timeout_ms, "retry_attempts": s.retry_attempts, "idempotent": s.idempotent,
                    "approval_prompt": s.approval_prompt, "approvers": s.approvers,
                    "min_approvals": s.min_approvals, "wait_ms": s.wait_ms,
                    "targets": s.targets.iter().map(|t| serde_json::from_str::<serde_json::Value>(t).unwrap_or_default()).collect::<Vec<_>>(),
                    "batch_size": s.batch_size, "max_failures": s.max_failures, "bake_ms": s.bake_ms,
                    "targets_note": s.targets_note, "group": s.group,
                })
            })
            .collect();
        let locks: Vec<serde_json::Value> =
            plan.locks.iter().map(|l| serde_json::json!({ "name": l.name, "held_by": l.held_by })).collect();
        print_json(&serde_json::json!({
            "runbook": plan.runbook, "version": plan.version,
            "params": serde_json::from_str::<serde_json::Value>(&plan.params_json).ok(),
            "locks": locks, "budget": plan.budget, "refused": plan.refused,
            "active_runs": plan.active_runs, "concurrency": plan.concurrency, "timeout_ms": plan.timeout_ms,
            "guards": plan.guards,
            "steps": steps,
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("plan for {} (version {}), nothing is started", plan.runbook, plan.version);
    println!("params:      {}", plan.params_json);
    for l in &plan.locks {
        let state = if l.held_by.is_empty() {
            "free".to_string()
        } else {
            format!("held by run {}: this run would wait", l.held_by)
        };
        println!("lock:        {} ({state})", l.name);
    }
    if !plan.budget.is_empty() {
        println!("budget:      {}", plan.budget);
    }
    if plan.concurrency > 0 {
        println!("concurrency: {} of {} runs active", plan.active_runs, plan.concurrency);
    }
    if plan.timeout_ms > 0 {
        println!("timeout:     {}", span(plan.timeout_ms));
    }
    for g in &plan.guards {
        println!("guard:       {g} (before each step or batch)");
    }
    if !plan.refused.is_empty() {
        println!("REFUSED NOW: {}", plan.refused);
    }
    for (i, s) in plan.steps.iter().enumerate() {
        let block = if s.block == "steps" { String::new() } else { format!(" [{}]", s.block) };
        println!("\n{}. {}{block} ({})", i + 1, s.id, s.kind);
        if !s.when.is_empty() {
            println!("   when {}: {}", s.when, s.when_result);
        }
        if !s.group.is_empty() {
            println!("   runs at the same time as the other steps of group {}", s.group);
        }
        if !s.targets.is_empty() || !s.targets_note.is_empty() {
            println!(
                "   foreach {} target(s): {}; {} at a time, {} may fail, {} between batches",
                s.targets.len(),
                s.targets.join(", "),
                s.batch_size,
                s.max_failures,
                span(s.bake_ms)
            );
            if !s.targets_note.is_empty() {
                println!("   ({})", s.targets_note);
            }
        }
        match s.kind.as_str() {
            "exec" => {
                println!("   argv: {}", serde_json::to_string(&s.argv).unwrap_or_default());
                for (k, v) in &s.env {
                    println!("   env {k}={v}");
                }
                if !s.workdir.is_empty() {
                    println!("   workdir: {}", s.workdir);
                }
                if !s.render_note.is_empty() {
                    println!("   {}", s.render_note);
                }
                let mut notes = Vec::new();
                if s.timeout_ms > 0 {
                    notes.push(format!("timeout {}", span(s.timeout_ms)));
                }
                if s.retry_attempts > 1 {
                    notes.push(format!("up to {} attempts", s.retry_attempts));
                }
                notes.push(if s.idempotent { "idempotent".into() } else { "not idempotent".into() });
                println!("   {}", notes.join(", "));
            }
            "approval" => {
                println!("   APPROVAL: {}", s.approval_prompt);
                println!(
                    "   {} of {} must approve within {}",
                    s.min_approvals,
                    s.approvers.join(", "),
                    span(s.wait_ms)
                );
            }
            _ => println!("   waits {}", span(s.wait_ms)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton lock ...`
#[derive(Subcommand, Debug)]
pub enum LockCommand {
    /// Held locks, their holders, and the runs waiting for each.
    List {
        #[command(flatten)]
        opts: ClientOpts,
    },
}

/// `baton lock ...`
pub async fn lock(cmd: LockCommand) -> anyhow::Result<ExitCode> {
    let LockCommand::List { opts } = cmd;
    let mut client = pb::lock_service_client::LockServiceClient::new(channel(&opts).await?);
    let locks = client.list(req(&opts, pb::ListLocksRequest {})).await?.into_inner().locks;
    if opts.output == OutputFormat::Json {
        let v: Vec<_> = locks
            .iter()
            .map(|l| serde_json::json!({ "name": l.name, "holder": l.holder, "since_ms": l.since_ms, "waiting": l.waiting }))
            .collect();
        print_json(&v)?;
    } else {
        let rows: Vec<Vec<String>> = locks
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    if l.holder.is_empty() { "-".into() } else { l.holder.clone() },
                    if l.since_ms == 0 { "-".into() } else { time(l.since_ms) },
                    if l.waiting.is_empty() { "-".into() } else { l.waiting.join(", ") },
                ]
            })
            .collect();
        print!("{}", table(&["LOCK", "HELD BY", "SINCE", "WAITING"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton cluster ...`
#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show the node's Raft status, the members and connected workers.
    Status {
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Add a node (started with `baton server --join`) as a voter.
    Join {
        /// The new node's id.
        id: u64,
        /// The new node's gRPC address, HOST:PORT.
        address: String,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Remove a member.
    Remove {
        /// The member's id.
        id: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Hand leadership to another voter.
    TransferLeader {
        /// The voter to lead.
        id: u64,
        #[command(flatten)]
        opts: ClientOpts,
    },
    /// Back up the replicated state.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Start a member of a new cluster from a backup (offline: writes the data directory).
    Restore {
        /// The backup file (`cluster snapshot save`).
        file: PathBuf,
        /// The new node's data directory (must be empty).
        #[arg(long)]
        data_dir: PathBuf,
        /// The new node's id.
        #[arg(long, default_value_t = 1)]
        id: u64,
        /// The other members of the new cluster, ID=HOST:PORT (repeatable; same as for `server`).
        #[arg(long = "peer", value_parser = crate::daemon::parse_peer)]
        peers: Vec<(u64, String)>,
    },
}

/// `baton cluster snapshot ...`
#[derive(Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Write the replicated state, as of now, to FILE.
    Save {
        /// Where to write the backup.
        file: PathBuf,
        #[command(flatten)]
        opts: ClientOpts,
    },
}

async fn channel(opts: &ClientOpts) -> anyhow::Result<Channel> {
    let addr = endpoint(&opts.addr);
    Channel::from_shared(addr.clone())
        .with_context(|| format!("invalid address {addr:?}"))?
        .connect()
        .await
        .with_context(|| {
            format!("cannot reach the server at {addr} (is `baton dev` running? set --addr or BATON_ADDR)")
        })
}

/// A request carrying the read mode the user asked for.
fn req<T>(opts: &ClientOpts, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if opts.stale {
        r.metadata_mut().insert("baton-read", tonic::metadata::MetadataValue::from_static("stale"));
    }
    r
}

fn print_json(v: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `baton run ...`
pub async fn run(cmd: RunCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RunCommand::Start { runbook, params, idempotency_key, wait, principal, opts } => {
            let ch = channel(&opts).await?;
            let mut client = pb::run_service_client::RunServiceClient::new(ch.clone());
            let resp = client
                .start(pb::StartRunRequest {
                    runbook,
                    params: params.into_iter().collect(),
                    idempotency_key: idempotency_key.unwrap_or_default(),
                    principal: principal_or_user(principal).unwrap_or_default(),
                })
                .await?
                .into_inner();
            let run = run_from_pb(resp.run.context("the server returned no run")?)?;
            if !wait {
                if opts.output == OutputFormat::Json {
                    print_json(&run)?;
                } else {
                    let note = if resp.deduplicated { " (existing run for this idempotency key)" } else { "" };
                    println!("{}{note}", run.id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            if opts.output == OutputFormat::Table {
                let note = if resp.deduplicated { ", existing run for this idempotency key" } else { "" };
                println!("run {} of {} (version {}{note})", run.id, run.runbook, run.version);
            }
            let run = follow(&mut client, run, opts.output).await?;
            finish(&run, opts.output)
        }
        RunCommand::List { runbook, limit, opts } => {
            let mut client = pb::run_service_client::RunServiceClient::new(channel(&opts).await?);
            let resp = client
                .list(req(&opts, pb::ListRunsRequest { runbook: runbook.unwrap_or_default(), limit }))
                .await?
                .into_inner();
            let runs = resp.runs.into_iter().map(run_from_pb).collect::<Result<Vec<_>, _>>()?;
            if opts.output == OutputFormat::Json {
                print_json(&runs)?;
            } else {
                let rows: Vec<Vec<String>> = runs
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.clone(),
                            r.runbook.clone(),
                            if r.paused && !r.state.is_terminal() {
                                format!("{} (paused)", r.state.as_str())
                            } else {
                                r.state.as_str().into()
                            },
                            trigger_text(r),
                            time(r.created_at_ms),
                            elapsed(r.started_at_ms, r.finished_at_ms),
                        ]
                    })
                    .collect();
                print!("{}", table(&["ID", "RUNBOOK", "STATE", "TRIGGER", "CREATED", "DURATION"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Show { id, opts } => {
            let mut client = pb::run_service_client::RunServiceClient::new(channel(&opts).await?);
            let run = run_from_pb(client.get(req(&opts, pb::GetRunRequest { id })).await?.into_inner())?;
            if opts.output == OutputFormat::Json {
                print_json(&run)?;
            } else {
                print!("{}", describe(&run));
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Logs { id, follow, opts } => {
            let mut client = pb::run_service_client::RunServiceClient::new(channel(&opts).await?);
            let mut stream = client.logs(pb::LogsRequest { run_id: id, follow, after_seq: 0 }).await?.into_inner();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                if opts.output == OutputFormat::Json {
                    let line = serde_json::json!({
                        "seq": chunk.seq,
                        "step": chunk.step_id,
                        "attempt": chunk.attempt_id,
                        "stream": if chunk.stream == pb::Stream::Stderr as i32 { "stderr" } else { "stdout" },
                        "data": String::from_utf8_lossy(&chunk.data),
                        "at_ms": chunk.at_ms,
                    });
                    println!("{line}");
                } else if chunk.stream == pb::Stream::Stderr as i32 {
                    std::io::stderr().write_all(&chunk.data)?;
                } else {
                    std::io::stdout().write_all(&chunk.data)?;
                    std::io::stdout().flush()?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        RunCommand::Approve(args) => decide(args, true).await,
        RunCommand::Deny(args) => decide(args, false).await,
        RunCommand::Pause(a) => run_action(a, None, "pause").await,
        RunCommand::Resume(a) => run_action(a, None, "resume").await,
        RunCommand::Skip(a) => run_action(a, None, "skip").await,
        RunCommand::ForceFail(a) => run_action(a, None, "force-fail").await,
        RunCommand::Retry { action, from_step, wait } => {
            let opts = action.opts.clone();
            if !wait {
                return run_action(action, from_step, "retry").await;
            }
            let mut client = pb::run_service_client::RunServiceClient::new(channel(&opts).await?);
            let request = action_request(&action, from_step);
            let run = run_from_pb(client.retry(request).await?.into_inner())?;
            if opts.output == OutputFormat::Table {
                println!("run {} of {} goes on (version {})", run.id, run.runbook, run.version);
            }
            let run = follow(&mut client, run, opts.output).await?;
            finish(&run, opts.output)
        }
        RunCommand::Cancel { id, reason, principal, opts } => {
            let mut client = pb::run_service_client::RunServiceClient::new(channel(&opts).await?);
            let principal = principal_or_user(principal).unwrap_or_default();
            let run = run_from_pb(client.cancel(pb::CancelRunRequest { id, reason, principal }).await?.into_inner())?;
            if opts.output == OutputFormat::Json {
                print_json(&run)?;
            } else if run.state.is_terminal() {
                println!("run {} is {}", run.id, run.state.as_str());
            } else {
                println!("run {}: cancel requested; running steps are being stopped", run.id);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `--as`, else `$USER`.
fn principal_or_user(given: Option<String>) -> Option<String> {
    given.or_else(|| std::env::var("USER").ok()).filter(|p| !p.is_empty())
}

fn action_request(a: &ActionArgs, from_step: Option<String>) -> pb::RunActionRequest {
    pb::RunActionRequest {
        run_id: a.id.clone(),
        principal: principal_or_user(a.principal.clone()).unwrap_or_default(),
        reason: a.reason.clone(),
        step_id: from_step.unwrap_or_default(),
    }
}

/// `baton run pause|resume|retry|skip|force-fail`.
async fn run_action(a: ActionArgs, from_step: Option<String>, verb: &str) -> anyhow::Result<ExitCode> {
    if verb == "force-fail" && a.reason.trim().is_empty() {
        bail!("say why with --reason TEXT: a forced failure is recorded with its reason");
    }
    let mut client = pb::run_service_client::RunServiceClient::new(channel(&a.opts).await?);
    let request = action_request(&a, from_step);
    let run = match verb {
        "pause" => client.pause(request).await,
        "resume" => client.resume(request).await,
        "retry" => client.retry(request).await,
        "skip" => client.skip(request).await,
        _ => client.force_fail(request).await,
    }?;
    let run = run_from_pb(run.into_inner())?;
    if a.opts.output == OutputFormat::Json {
        print_json(&run)?;
    } else {
        let paused = if run.paused { " (paused)" } else { "" };
        println!("run {} is {}{paused}", run.id, run.state.as_str());
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton run approve|deny`.
async fn decide(args: DecideArgs, approve: bool) -> anyhow::Result<ExitCode> {
    let DecideArgs { id, step, reason, principal, opts } = args;
    let principal = principal_or_user(principal).context("say who decides: --as NAME (or set BATON_PRINCIPAL)")?;
    let mut client = pb::run_service_client::RunServiceClient::new(channel(&opts).await?);
    let request = pb::DecideRequest { run_id: id, step_id: step.unwrap_or_default(), principal, reason };
    let run = if approve { client.approve(request).await } else { client.deny(request).await }?.into_inner();
    let run = run_from_pb(run)?;
    if opts.output == OutputFormat::Json {
        print_json(&run)?;
    } else {
        let decided = run
            .steps
            .iter()
            .filter(|s| !s.decisions.is_empty())
            .max_by_key(|s| s.decisions.iter().map(|d| d.at_ms).max().unwrap_or(0));
        match decided {
            Some(s) if s.state == StepState::Waiting => {
                let approvals = s.decisions.iter().filter(|d| d.approve).count();
                let needed = s.approval.as_ref().map_or(1, |a| a.min_approvals);
                println!("run {}: step {} has {approvals} of {needed} approvals; still waiting", run.id, s.id);
            }
            Some(s) => {
                println!("run {}: step {} {}; the run is {}", run.id, s.id, s.state.as_str(), run.state.as_str())
            }
            None => println!("run {} is {}", run.id, run.state.as_str()),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// What a waiting step waits for, in one line: the approval question or the sleep's end.
fn waiting_text(step: &baton_core::run::StepRun) -> String {
    let until = time(step.deadline_ms);
    match &step.approval {
        Some(a) => {
            let approvals = step.decisions.iter().filter(|d| d.approve).count();
            format!(
                "waiting for approval ({approvals}/{} from {}; denied at {until}): {}",
                a.min_approvals,
                a.approvers.join(", "),
                a.prompt
            )
        }
        None => format!("sleeping until {until}"),
    }
}

/// Watches a run to its end, printing each step's progress (tables only).
async fn follow(
    client: &mut pb::run_service_client::RunServiceClient<Channel>,
    mut run: Run,
    format: OutputFormat,
) -> anyhow::Result<Run> {
    let mut stream = client.watch(pb::WatchRunRequest { id: run.id.clone() }).await?.into_inner();
    let mut shown: Vec<(StepState, usize)> = Vec::new();
    while let Some(update) = stream.next().await {
        run = run_from_pb(update?)?;
        if format != OutputFormat::Table {
            continue;
        }
        shown.resize(run.steps.len(), (StepState::Pending, 0));
        for (i, step) in run.steps.iter().enumerate() {
            let key = (step.state, step.attempts.len());
            if shown[i] == key {
                continue;
            }
            shown[i] = key;
            let attempt = step.attempts.last();
            match step.state {
                StepState::Pending => {}
                StepState::Running => {
                    if let Some(a) = attempt {
                        println!("  ▸ {:<20} running   attempt {} on worker {}", step.id, a.number, a.worker);
                    }
                }
                StepState::Waiting => println!("  … {:<20} {}", step.id, waiting_text(step)),
                state => {
                    let mark = if state == StepState::Succeeded { "✓" } else { "✗" };
                    let code = step.exit_code.map(|c| format!("exit {c}")).unwrap_or_default();
                    let took = span(step.finished_at_ms - step.started_at_ms);
                    println!("  {mark} {:<20} {:<9} {took:<8} {code}", step.id, state.as_str());
                }
            }
        }
    }
    Ok(run)
}

/// Prints a finished run and picks the exit code.
fn finish(run: &Run, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let ok = run.state == baton_core::run::RunState::Succeeded;
    if format == OutputFormat::Json {
        print_json(run)?;
    } else {
        println!();
        for step in &run.steps {
            if step.stdout_tail.is_empty() && step.outputs.is_empty() {
                continue;
            }
            println!("── {} ──", step.id);
            print!("{}", visible_output(&step.stdout_tail));
            for (k, v) in &step.outputs {
                println!("  output {k} = {v}");
            }
        }
        let took = elapsed(run.created_at_ms, run.finished_at_ms);
        println!("run {} {} in {took}", run.id, run.state.as_str());
        if !ok {
            if let Some(e) = &run.error {
                println!("  {e}");
            }
            if let Some(step) = run.steps.iter().find(|s| !matches!(s.state, StepState::Succeeded | StepState::Pending))
                && !step.stderr_tail.is_empty()
            {
                println!("── {} stderr (tail) ──", step.id);
                print!("{}", with_newline(&step.stderr_tail));
            }
        }
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(EXIT_RUN_FAILED) })
}

/// Stdout without the `::set-output` lines (they are shown as outputs).
fn visible_output(s: &str) -> String {
    let text: Vec<&str> = s.lines().filter(|l| !l.starts_with("::set-output ")).collect();
    if text.is_empty() { String::new() } else { format!("{}\n", text.join("\n")) }
}

fn with_newline(s: &str) -> String {
    if s.ends_with('\n') { s.to_string() } else { format!("{s}\n") }
}

fn trigger_text(r: &Run) -> String {
    match &r.trigger {
        baton_core::run::Trigger::Api => "api".into(),
        baton_core::run::Trigger::Schedule { name, tick_ms } => format!("schedule {name} @{}", time(*tick_ms)),
        baton_core::run::Trigger::Manual { schedule } => format!("schedule {schedule} (manual)"),
        baton_core::run::Trigger::Backfill { schedule, tick_ms } => {
            format!("schedule {schedule} @{} (backfill)", time(*tick_ms))
        }
    }
}

fn describe(run: &Run) -> String {
    let mut out = String::new();
    out.push_str(&format!("run:       {}\n", run.id));
    out.push_str(&format!("runbook:   {} (version {})\n", run.runbook, run.version));
    out.push_str(&format!("state:     {}\n", run.state.as_str()));
    out.push_str(&format!("trigger:   {}\n", trigger_text(run)));
    out.push_str(&format!("params:    {}\n", serde_json::to_string(&run.params).unwrap_or_default()));
    out.push_str(&format!("created:   {}\n", time(run.created_at_ms)));
    out.push_str(&format!("duration:  {}\n", elapsed(run.started_at_ms, run.finished_at_ms)));
    if let Some(k) = &run.idempotency_key {
        out.push_str(&format!("idempotency key: {k}\n"));
    }
    if run.missed_ticks > 0 {
        out.push_str(&format!("missed ticks: {}\n", run.missed_ticks));
    }
    if run.paused {
        let why = if run.pause_reason.is_empty() { String::new() } else { format!(": {}", run.pause_reason) };
        out.push_str(&format!("paused:    yes{why} (no further step starts until `baton run resume`)\n"));
    }
    if !run.locks.is_empty() {
        let held = if run.locks_held {
            "held"
        } else if run.state.is_terminal() {
            "released"
        } else {
            "waiting"
        };
        out.push_str(&format!("locks:     {} ({held})\n", run.locks.join(", ")));
    }
    if let Some(f) = &run.finishing {
        out.push_str(&format!("finishing: running {} steps, then {}\n", f.block.as_str(), f.state.as_str()));
    }
    if let Some(e) = &run.error {
        out.push_str(&format!("error:     {e}\n"));
    }
    let rows: Vec<Vec<String>> = run
        .steps
        .iter()
        .map(|s| {
            let a = s.attempts.last();
            let id = match s.block {
                baton_core::run::Block::Main => s.id.clone(),
                block => format!("{} ({})", s.id, block.as_str()),
            };
            vec![
                id,
                s.state.as_str().into(),
                s.attempts.len().to_string(),
                a.map(|a| a.worker.clone()).unwrap_or_else(|| "-".into()),
                s.exit_code.map(|c| c.to_string()).unwrap_or_else(|| "-".into()),
                elapsed(s.started_at_ms, s.finished_at_ms),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&["STEP", "STATE", "ATTEMPTS", "WORKER", "EXIT", "DURATION"], &rows));
    for s in &run.steps {
        for a in &s.attempts {
            out.push_str(&format!(
                "\n{} attempt {} (id {}, fence {}/{}): {} on {}{}",
                s.id,
                a.number,
                a.id,
                a.fence.term,
                a.fence.index,
                a.state.as_str(),
                a.worker,
                a.error.as_ref().map(|e| format!(" — {e}")).unwrap_or_default()
            ));
        }
        if s.state == StepState::Waiting {
            out.push_str(&format!("\n{} {}", s.id, waiting_text(s)));
        }
        for d in &s.decisions {
            let what = if d.approve { "approved" } else { "denied" };
            let why = if d.reason.is_empty() { String::new() } else { format!(": {}", d.reason) };
            out.push_str(&format!("\n{} {what} by {} via {} at {}{why}", s.id, d.principal, d.via, time(d.at_ms)));
        }
        if let Some(e) = s.error.as_ref().filter(|_| s.attempts.is_empty()) {
            out.push_str(&format!("\n{} {e}", s.id));
        }
        for (k, v) in &s.outputs {
            out.push_str(&format!("\n{} output {k} = {v}", s.id));
        }
        if !s.stderr_tail.is_empty() && s.state != StepState::Succeeded {
            out.push_str(&format!("\n{} stderr (tail):\n{}", s.id, with_newline(&s.stderr_tail)));
        }
    }
    if !run.events.is_empty() {
        out.push_str("\nhistory:");
        for e in &run.events {
            let who = if e.principal.is_empty() { "someone" } else { e.principal.as_str() };
            let detail = if e.detail.is_empty() { String::new() } else { format!(": {}", e.detail) };
            out.push_str(&format!("\n  {} {} by {who} via {}{detail}", time(e.at_ms), e.action, e.via));
        }
    }
    out.push('\n');
    out
}

/// `baton runbook ...`
pub async fn runbook(cmd: RunbookCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        RunbookCommand::List { opts } => {
            let mut client = pb::runbook_service_client::RunbookServiceClient::new(channel(&opts).await?);
            let list = client.list(req(&opts, pb::ListRunbooksRequest {})).await?.into_inner().runbooks;
            if opts.output == OutputFormat::Json {
                let v: Vec<_> = list.iter().map(runbook_json).collect();
                print_json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![r.name.clone(), r.version.clone(), r.step_ids.len().to_string(), r.description.clone()]
                    })
                    .collect();
                print!("{}", table(&["NAME", "VERSION", "STEPS", "DESCRIPTION"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        RunbookCommand::Show { name, opts } => {
            let mut client = pb::runbook_service_client::RunbookServiceClient::new(channel(&opts).await?);
            let r = client.get(req(&opts, pb::GetRunbookRequest { name, version: String::new() })).await?.into_inner();
            if opts.output == OutputFormat::Json {
                print_json(&runbook_json(&r))?;
            } else {
                println!("name:        {}", r.name);
                println!("version:     {}", r.version);
                println!("applied:     {}", time(r.applied_at_ms));
                println!("description: {}", r.description);
                println!("steps:       {}", r.step_ids.join(", "));
                println!();
                let rows: Vec<Vec<String>> = r
                    .params
                    .iter()
                    .map(|p| {
                        vec![
                            p.name.clone(),
                            p.kind.clone(),
                            if p.required { "yes".into() } else { "no".into() },
                            if p.default_json.is_empty() { "-".into() } else { p.default_json.clone() },
                            p.description.clone(),
                        ]
                    })
                    .collect();
                print!("{}", table(&["PARAM", "TYPE", "REQUIRED", "DEFAULT", "DESCRIPTION"], &rows));
                println!();
                print!("{}", with_newline(&r.source));
            }
            Ok(ExitCode::SUCCESS)
        }
        RunbookCommand::Apply { files, opts } => {
            let mut client = pb::runbook_service_client::RunbookServiceClient::new(channel(&opts).await?);
            let mut results = Vec::new();
            for file in files {
                let source = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
                let resp = client
                    .apply(pb::ApplyRequest { file_name: file.display().to_string(), source })
                    .await
                    .with_context(|| format!("applying {}", file.display()))?
                    .into_inner();
                if opts.output == OutputFormat::Table {
                    let what = if resp.changed { "applied" } else { "unchanged" };
                    let version =
                        if resp.version.is_empty() { String::new() } else { format!(" version {}", resp.version) };
                    println!("{} {} {what}{version}", resp.kind, resp.name);
                }
                results.push(serde_json::json!({
                    "file": file.display().to_string(), "kind": resp.kind, "name": resp.name,
                    "version": resp.version, "changed": resp.changed,
                }));
            }
            if opts.output == OutputFormat::Json {
                print_json(&results)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        RunbookCommand::Versions { name, opts } => {
            let mut client = pb::runbook_service_client::RunbookServiceClient::new(channel(&opts).await?);
            let list = client.versions(req(&opts, pb::RunbookVersionsRequest { name })).await?.into_inner().versions;
            if opts.output == OutputFormat::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|v| serde_json::json!({"version": v.version, "applied_at_ms": v.applied_at_ms, "current": v.current}))
                    .collect();
                print_json(&v)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|v| {
                        vec![
                            v.version.clone(),
                            time(v.applied_at_ms),
                            if v.current { "*".into() } else { String::new() },
                        ]
                    })
                    .collect();
                print!("{}", table(&["VERSION", "APPLIED", "CURRENT"], &rows));
            }
            Ok(ExitCode::SUCCESS)
        }
        RunbookCommand::Diff { name, from, to, opts } => {
            let mut client = pb::runbook_service_client::RunbookServiceClient::new(channel(&opts).await?);
            let old =
                client.get(req(&opts, pb::GetRunbookRequest { name: name.clone(), version: from })).await?.into_inner();
            let new = client
                .get(req(&opts, pb::GetRunbookRequest { name, version: to.unwrap_or_default() }))
                .await?
                .into_inner();
            let diff = crate::render::line_diff(&old.source, &new.source);
            if opts.output == OutputFormat::Json {
                print_json(&serde_json::json!({"from": old.version, "to": new.version, "diff": diff}))?;
            } else {
                println!("--- {} {}", old.name, old.version);
                println!("+++ {} {}", new.name, new.version);
                print!("{diff}");
            }
            Ok(ExitCode::SUCCESS)
        }
        RunbookCommand::Lint { paths } => {
            let mut failed = 0;
            for path in &paths {
                let name = path.display().to_string();
                let text = match std::fs::read_to_string(path) {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!("{name}: cannot read: {e}");
                        failed += 1;
                        continue;
                    }
                };
                match parse_document(&name, &text) {
                    Ok(Document::Runbook(r)) => {
                        println!("ok  {name}: runbook {} ({} steps)", r.name, r.steps.len());
                        for warning in r.lint(&name) {
                            eprintln!("warning: {warning}");
                        }
                    }
                    Ok(Document::Schedule(s)) => {
                        println!("ok  {name}: schedule {} ({} -> {})", s.name, s.cron, s.runbook)
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed += 1;
                    }
                }
            }
            if failed > 0 {
                bail!("{failed} of {} file(s) are invalid", paths.len());
            }
            Ok(ExitCode::SUCCESS)
        }
        RunbookCommand::Schema => {
            print_json(&baton_core::runbook::json_schema())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn runbook_json(r: &pb::Runbook) -> serde_json::Value {
    serde_json::json!({
        "name": r.name, "version": r.version, "description": r.description,
        "steps": r.step_ids, "applied_at_ms": r.applied_at_ms, "source": r.source,
        "params": r.params.iter().map(|p| serde_json::json!({
            "name": p.name, "type": p.kind, "required": p.required,
            "default": serde_json::from_str::<serde_json::Value>(&p.default_json).ok(),
            "description": p.description,
        })).collect::<Vec<_>>(),
    })
}

/// `baton schedule ...`
pub async fn schedule(cmd: ScheduleCommand) -> anyhow::Result<ExitCode> {
    type Client = pb::schedule_service_client::ScheduleServiceClient<Channel>;
    let opts = match cmd {
        ScheduleCommand::List { opts } => opts,
        ScheduleCommand::Preview(args) => return crate::preview::preview(args),
        ScheduleCommand::Trigger { name, wait, principal, opts } => {
            let ch = channel(&opts).await?;
            let principal = principal_or_user(principal).unwrap_or_default();
            let run = Client::new(ch.clone()).trigger(pb::TriggerScheduleRequest { name, principal }).await?;
            let run = run_from_pb(run.into_inner())?;
            if !wait {
                if opts.output == OutputFormat::Json {
                    print_json(&run)?;
                } else {
                    println!("{}", run.id);
                }
                return Ok(ExitCode::SUCCESS);
            }
            if opts.output == OutputFormat::Table {
                println!("run {} of {} (version {})", run.id, run.runbook, run.version);
            }
            let mut client = pb::run_service_client::RunServiceClient::new(ch);
            let run = follow(&mut client, run, opts.output).await?;
            return finish(&run, opts.output);
        }
        ScheduleCommand::Backfill { name, from, to, principal, opts } => {
            let principal = principal_or_user(principal).unwrap_or_default();
            let to_ms = to.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
            let request = pb::BackfillRequest { name, from_ms: from, to_ms, principal };
            let resp = Client::new(channel(&opts).await?).backfill(request).await?.into_inner();
            if opts.output == OutputFormat::Json {
                print_json(&serde_json::json!({ "run_ids": resp.run_ids, "existing": resp.existing }))?;
            } else {
                for id in &resp.run_ids {
                    println!("{id}");
                }
                eprintln!(
                    "{} run(s) created (they run one at a time, oldest first); {} tick(s) in the range already had a run",
                    resp.run_ids.len(),
                    resp.existing
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCommand::Pause { name, note, principal, opts } => {
            let principal = principal_or_user(principal).unwrap_or_default();
            let request = pb::PauseScheduleRequest { name, note, principal };
            let s = Client::new(channel(&opts).await?).pause(request).await?.into_inner();
            println!("schedule {} is paused ({})", s.name, s.pause_note);
            return Ok(ExitCode::SUCCESS);
        }
        ScheduleCommand::Unpause { name, principal, opts } => {
            let principal = principal_or_user(principal).unwrap_or_default();
            let request = pb::PauseScheduleRequest { name, note: String::new(), principal };
            let s = Client::new(channel(&opts).await?).unpause(request).await?.into_inner();
            println!("schedule {} fires again; next tick {}", s.name, time(s.next_fire_at_ms));
            return Ok(ExitCode::SUCCESS);
        }
    };
    let mut client = pb::schedule_service_client::ScheduleServiceClient::new(channel(&opts).await?);
    let list = client.list(req(&opts, pb::ListSchedulesRequest {})).await?.into_inner().schedules;
    if opts.output == OutputFormat::Json {
        let v: Vec<_> = list
            .iter()
            .map(|s| {
                serde_json::json!({
                    "name": s.name, "runbook": s.runbook, "cron": s.cron, "timezone": s.timezone,
                    "params": serde_json::from_str::<serde_json::Value>(&s.params_json).ok(),
                    "next_fire_at_ms": s.next_fire_at_ms, "last_tick_ms": s.last_tick_ms,
                    "runs_fired": s.runs_fired, "ticks_missed": s.ticks_missed, "description": s.description,
                    "overlap": s.overlap, "catch_up": s.catch_up, "catch_up_window_ms": s.catch_up_window_ms,
                    "jitter_ms": s.jitter_ms, "paused": s.paused, "pause_note": s.pause_note,
                    "blackouts": s.blackouts, "blackout_until_ms": s.blackout_until_ms,
                })
            })
            .collect();
        print_json(&v)?;
    } else {
        let rows: Vec<Vec<String>> = list
            .iter()
            .map(|s| {
                vec![
                    s.name.clone(),
                    s.runbook.clone(),
                    s.cron.clone(),
                    s.timezone.clone(),
                    time(s.next_fire_at_ms),
                    time(s.last_tick_ms),
                    s.runs_fired.to_string(),
                    s.ticks_missed.to_string(),
                    s.overlap.clone(),
                    if s.paused {
                        s.pause_note.clone()
                    } else if s.blackout_until_ms > 0 {
                        format!("blackout until {}", time(s.blackout_until_ms))
                    } else {
                        "active".into()
                    },
                ]
            })
            .collect();
        let header = ["NAME", "RUNBOOK", "CRON", "TZ", "NEXT", "LAST", "FIRED", "MISSED", "OVERLAP", "STATUS"];
        print!("{}", table(&header, &rows));
    }
    Ok(ExitCode::SUCCESS)
}

/// `baton cluster ...`
pub async fn cluster(cmd: ClusterCommand) -> anyhow::Result<ExitCode> {
    type Client = pb::cluster_service_client::ClusterServiceClient<Channel>;
    let (opts, s) = match cmd {
        ClusterCommand::Status { opts } => {
            let s = Client::new(channel(&opts).await?).status(pb::ClusterStatusRequest {}).await?.into_inner();
            (opts, s)
        }
        ClusterCommand::Join { id, address, opts } => {
            let s = Client::new(channel(&opts).await?).join(pb::JoinRequest { id, address }).await?.into_inner();
            (opts, s)
        }
        ClusterCommand::Remove { id, opts } => {
            let s = Client::new(channel(&opts).await?).remove(pb::RemoveRequest { id }).await?.into_inner();
            (opts, s)
        }
        ClusterCommand::TransferLeader { id, opts } => {
            let mut client = Client::new(channel(&opts).await?);
            let s = client.transfer_leader(pb::TransferLeaderRequest { id }).await?.into_inner();
            (opts, s)
        }
        ClusterCommand::Snapshot(SnapshotCommand::Save { file, opts }) => {
            let mut client = Client::new(channel(&opts).await?);
            let snap = client.snapshot_save(req(&opts, pb::SnapshotSaveRequest {})).await?.into_inner();
            let tmp = file.with_extension("partial");
            std::fs::write(&tmp, &snap.data).with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &file).with_context(|| format!("writing {}", file.display()))?;
            println!(
                "saved the state at index {} to {} ({} bytes)",
                snap.applied_index,
                file.display(),
                snap.data.len()
            );
            return Ok(ExitCode::SUCCESS);
        }
        ClusterCommand::Restore { file, data_dir, id, peers } => {
            let bytes = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            let mut voters: Vec<u64> = peers.iter().map(|(p, _)| *p).collect();
            voters.push(id);
            let index = baton_scheduler::backup::restore(&bytes, &data_dir, &voters)?;
            println!(
                "restored {} into {} at index {index}; start this node with the same --id and --peer flags",
                file.display(),
                data_dir.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
    };
    if opts.output == OutputFormat::Json {
        print_json(&serde_json::json!({
            "node_id": s.node_id, "role": s.role, "leader_id": s.leader_id, "term": s.term,
            "commit_index": s.commit_index, "applied_index": s.applied_index, "snapshot_index": s.snapshot_index,
            "members": s.members.iter().map(|m| serde_json::json!({"id": m.id, "address": m.address, "voter": m.voter, "matched_index": m.matched_index, "lag": m.lag})).collect::<Vec<_>>(),
            "workers": s.workers.iter().map(|w| serde_json::json!({"id": w.id, "capacity": w.capacity, "running": w.running, "labels": w.labels})).collect::<Vec<_>>(),
        }))?;
    } else {
        println!("node {} ({}), leader {}, term {}", s.node_id, s.role, s.leader_id, s.term);
        println!("commit {}, applied {}, snapshot {}", s.commit_index, s.applied_index, s.snapshot_index);
        println!();
        let leader = s.role == "leader";
        let members: Vec<Vec<String>> = s
            .members
            .iter()
            .map(|m| {
                let role = if m.id == s.leader_id { "leader" } else { "follower" };
                let (matched, lag) =
                    if leader { (m.matched_index.to_string(), m.lag.to_string()) } else { ("-".into(), "-".into()) };
                vec![m.id.to_string(), m.address.clone(), role.into(), matched, lag]
            })
            .collect();
        print!("{}", table(&["MEMBER", "ADDRESS", "ROLE", "MATCHED", "LAG"], &members));
        println!();
        let rows: Vec<Vec<String>> = s
            .workers
            .iter()
            .map(|w| {
                let mut labels: Vec<String> = w.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                labels.sort();
                vec![w.id.clone(), format!("{}/{}", w.running, w.capacity), labels.join(","), time(w.connected_at_ms)]
            })
            .collect();
        print!("{}", table(&["WORKER", "RUNNING", "LABELS", "CONNECTED"], &rows));
    }
    Ok(ExitCode::SUCCESS)
}
