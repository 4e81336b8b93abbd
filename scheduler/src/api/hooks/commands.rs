//! The chat commands, the same for Slack and Mattermost: parsing (with shell-like quoting),
//! who may do what, and carrying them out through the paths the gRPC API uses.
//!
//! ```text
//! run RUNBOOK [key=value]...     start a run (progress and the result follow in the channel)
//! plan RUNBOOK [key=value]...    what a run would do, without starting it
//! status RUN                     a run's state, steps and what it waits for
//! list [RUNBOOK]                 the latest runs
//! approve RUN [STEP]             approve the approval step the run waits on
//! deny RUN [REASON...]           deny it
//! cancel RUN [REASON...]         cancel a run
//! help                           this text
//! ```
//!
//! A chat user acts as the principal the configuration maps them to; the run's history
//! records every start, decision and cancel with that principal and `via` the chat. A user the
//! configuration does not map may only use `help` and `status`.

use std::collections::BTreeMap;
use std::time::Duration;

use baton_core::command::{Actor, Op};
use baton_core::run::{Run, RunState, StepState};
use baton_core::runbook::ParamKind;
use baton_proto::v1 as pb;

use super::Platform;
use super::notify::{self, ReplyTarget};
use crate::api::Api;
use crate::fsm::{Reply, State, next_step};

/// What `help` (and every usage error) shows.
pub const USAGE: &str = "\
Usage:
  run RUNBOOK [key=value]...    start a run; its progress and result follow here
  plan RUNBOOK [key=value]...   what a run would do, without starting it
  status RUN                    a run's state, steps and what it waits for
  list [RUNBOOK]                the latest runs
  approve RUN [STEP]            approve the approval step a run waits on
  deny RUN [REASON...]          deny it
  cancel RUN [REASON...]        cancel a run
  help                          this text
Quote values with spaces: run restart-web reason=\"disk full on web-1\"";

/// How long a slash command may work before the hook answers with an acknowledgement (Slack
/// wants an answer within 3 s); what it has to say then follows through the `response_url`.
pub const ANSWER_WITHIN: Duration = Duration::from_millis(2_500);
/// Runs `list` shows.
const LIST_LIMIT: usize = 10;
/// Longest command text accepted.
const MAX_TEXT: usize = 4_000;

/// A parsed chat command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatCommand {
    /// Start a run.
    Run {
        /// Runbook name.
        runbook: String,
        /// Params as text.
        params: BTreeMap<String, String>,
    },
    /// Show what a run would do.
    Plan {
        /// Runbook name.
        runbook: String,
        /// Params as text.
        params: BTreeMap<String, String>,
    },
    /// Show a run.
    Status {
        /// Run id.
        run: String,
    },
    /// The latest runs.
    List {
        /// Only runs of this runbook.
        runbook: Option<String>,
    },
    /// Approve the approval step a run waits on.
    Approve {
        /// Run id.
        run: String,
        /// The step (default: the one the run waits on).
        step: Option<String>,
    },
    /// Deny it.
    Deny {
        /// Run id.
        run: String,
        /// The step (a button names the step its prompt was for; the text command: the one
        /// the run waits on).
        step: Option<String>,
        /// Why.
        reason: String,
    },
    /// Cancel a run.
    Cancel {
        /// Run id.
        run: String,
        /// Why.
        reason: String,
    },
    /// The usage text.
    Help,
}

impl ChatCommand {
    /// Whether a user the configuration does not map may use it.
    pub fn open_to_anyone(&self) -> bool {
        matches!(self, ChatCommand::Help | ChatCommand::Status { .. })
    }
}

/// Splits a command's text into words like a POSIX shell does, without expanding anything:
/// whitespace separates words; `'...'` keeps everything literally; `"..."` keeps everything
/// but `\"` and `\\`; a backslash outside quotes takes the next character literally. Typographic
/// quotes (“...” and ‘...’), which chat clients like to put in, count as plain ones.
pub fn split_words(text: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\'' | '‘' | '’' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'' | '‘' | '’') => break,
                        Some(c) => w.push(c),
                        None => return Err("a single quote (') is not closed".into()),
                    }
                }
            }
            '"' | '“' | '”' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"' | '“' | '”') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err("a double quote (\") is not closed".into()),
                        },
                        Some(c) => w.push(c),
                        None => return Err("a double quote (\") is not closed".into()),
                    }
                }
            }
            '\\' => match chars.next() {
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("the text ends with a lone backslash".into()),
            },
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Parses a command's text. The error says what is wrong; callers add [`USAGE`].
pub fn parse(text: &str) -> Result<ChatCommand, String> {
    if text.len() > MAX_TEXT {
        return Err(format!("the command is {} bytes long; the limit is {MAX_TEXT}", text.len()));
    }
    let words = split_words(text)?;
    let Some((verb, args)) = words.split_first() else { return Ok(ChatCommand::Help) };
    let one = |what: &str| -> Result<String, String> {
        match args {
            [one] => Ok(one.clone()),
            [] => Err(format!("`{verb}` needs {what}")),
            _ => Err(format!("`{verb}` takes only {what}; got {} words", args.len())),
        }
    };
    let run_and_rest = |what: &str| -> Result<(String, Vec<String>), String> {
        let (run, rest) = args.split_first().ok_or_else(|| format!("`{verb}` needs {what}"))?;
        Ok((run.clone(), rest.to_vec()))
    };
    match verb.to_ascii_lowercase().as_str() {
        "help" | "usage" | "-h" | "--help" => Ok(ChatCommand::Help),
        "run" | "plan" => {
            let (runbook, rest) = run_and_rest("a runbook name: `run RUNBOOK key=value...`")?;
            let params = parse_params(&rest)?;
            if verb.eq_ignore_ascii_case("run") {
                Ok(ChatCommand::Run { runbook, params })
            } else {
                Ok(ChatCommand::Plan { runbook, params })
            }
        }
        "status" | "show" => Ok(ChatCommand::Status { run: one("a run id")? }),
        "list" | "ls" => match args {
            [] => Ok(ChatCommand::List { runbook: None }),
            [runbook] => Ok(ChatCommand::List { runbook: Some(runbook.clone()) }),
            _ => Err("`list` takes at most a runbook name".into()),
        },
        "approve" => match args {
            [run] => Ok(ChatCommand::Approve { run: run.clone(), step: None }),
            [run, step] => Ok(ChatCommand::Approve { run: run.clone(), step: Some(step.clone()) }),
            [] => Err("`approve` needs a run id: `approve RUN [STEP]`".into()),
            _ => Err("`approve` takes a run id and at most a step id".into()),
        },
        "deny" => {
            let (run, rest) = run_and_rest("a run id: `deny RUN [REASON...]`")?;
            Ok(ChatCommand::Deny { run, step: None, reason: rest.join(" ") })
        }
        "cancel" => {
            let (run, rest) = run_and_rest("a run id: `cancel RUN [REASON...]`")?;
            Ok(ChatCommand::Cancel { run, reason: rest.join(" ") })
        }
        other => Err(format!("unknown command `{other}`")),
    }
}

fn parse_params(words: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    for word in words {
        let Some((key, value)) = word.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(format!("expected a param as key=value, got `{word}`"));
        };
        if params.insert(key.to_string(), value.to_string()).is_some() {
            return Err(format!("param `{key}` is given twice"));
        }
    }
    Ok(params)
}

/// Who sent a command.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The chat.
    pub platform: Platform,
    /// The chat's user id.
    pub user_id: String,
    /// The principal the configuration maps the user to, if any.
    pub principal: Option<String>,
}

impl Caller {
    fn actor(&self) -> Actor {
        Actor { principal: self.principal.clone().unwrap_or_default(), via: self.platform.as_str().to_string() }
    }
}

/// The answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// What to say (chat markdown: `code`, ```blocks```).
    pub text: String,
    /// Shown to the channel (a run started, a decision) or only to the caller (help, errors).
    pub public: bool,
    /// A run whose progress should follow in the channel.
    pub follow: Option<String>,
}

impl Answer {
    /// Only the caller sees it.
    pub fn private(text: impl Into<String>) -> Answer {
        Answer { text: text.into(), public: false, follow: None }
    }

    /// The channel sees it.
    pub fn public(text: impl Into<String>) -> Answer {
        Answer { text: text.into(), public: true, follow: None }
    }
}

/// Carries out a slash command's text for `caller` and answers within [`ANSWER_WITHIN`]: what
/// is not done by then is answered with an acknowledgement and posted to `reply` when done.
/// A started run's progress follows through `reply` too. `request_id` (the chat's trigger id)
/// makes a retried `run` start one run.
pub async fn slash(
    api: Api,
    caller: Caller,
    text: &str,
    reply: Option<ReplyTarget>,
    request_id: Option<String>,
) -> Answer {
    let command = match parse(text) {
        Ok(c) => c,
        Err(e) => return Answer::private(format!("{e}\n\n{USAGE}")),
    };
    api.hooks.counters.commands.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let worker = api.clone();
    let mut task = tokio::spawn(async move { execute(&worker, &caller, command, request_id.as_deref()).await });
    match tokio::time::timeout(ANSWER_WITHIN, &mut task).await {
        Ok(Ok(answer)) => {
            if let (Some(run), Some(reply)) = (&answer.follow, reply) {
                notify::spawn_follow(api, run.clone(), reply);
            }
            answer
        }
        Ok(Err(e)) => {
            tracing::error!("a chat command's task failed: {e}");
            Answer::private("Baton could not carry out the command (an internal error); see the server's log.")
        }
        Err(_) => {
            let Some(reply) = reply else {
                return Answer::private("Still working on it; check with `status` in a moment.");
            };
            tokio::spawn(async move {
                let answer = match task.await {
                    Ok(answer) => answer,
                    Err(e) => {
                        tracing::error!("a chat command's task failed: {e}");
                        return;
                    }
                };
                let message = notify::Message::text(answer.text.clone());
                notify::post_reply(&api, &reply, &message, answer.public).await;
                if let Some(run) = answer.follow {
                    notify::spawn_follow(api, run, reply);
                }
            });
            Answer::private("Working on it; the answer follows here.")
        }
    }
}

/// Carries out one command for `caller`.
pub async fn execute(api: &Api, caller: &Caller, command: ChatCommand, request_id: Option<&str>) -> Answer {
    if caller.principal.is_none() && !command.open_to_anyone() {
        let (p, id) = (caller.platform.as_str(), &caller.user_id);
        return Answer::private(format!(
            "You ({p} user `{id}`) are not mapped to a Baton principal, so you may only use `help` and `status`. \
             An operator can map you with `--chat-user {p}:{id}=NAME`, or `{id} = \"NAME\"` under `[{p}.users]` \
             in the server's config file."
        ));
    }
    match command {
        ChatCommand::Help => Answer::private(USAGE),
        ChatCommand::Run { runbook, params } => start(api, caller, &runbook, params, request_id).await,
        ChatCommand::Plan { runbook, params } => Answer::private(plan(api, &runbook, params)),
        ChatCommand::Status { run } => {
            Answer::private(api.node.read(|s| s.runs.get(&run).map(status_text)).unwrap_or_else(|| no_such_run(&run)))
        }
        ChatCommand::List { runbook } => Answer::private(api.node.read(|s| list(s, runbook.as_deref()))),
        ChatCommand::Approve { run, step } => decide(api, caller, &run, step, true, String::new()).await,
        ChatCommand::Deny { run, step, reason } => decide(api, caller, &run, step, false, reason).await,
        ChatCommand::Cancel { run, reason } => cancel(api, caller, &run, reason).await,
    }
}

fn no_such_run(run: &str) -> String {
    format!("Run `{run}` does not exist; `list` shows the latest runs.")
}

/// Params as text, validated against the runbook's current version; the error lists the
/// runbook's params.
fn resolve(
    state: &State,
    runbook: &str,
    params: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, serde_json::Value>, String> {
    let Some(entry) = state.runbooks.get(runbook) else {
        let known: Vec<&str> = state.runbooks.keys().map(String::as_str).collect();
        let known = if known.is_empty() { "none".to_string() } else { known.join(", ") };
        return Err(format!("Runbook `{runbook}` does not exist (known: {known}).\nUsage: run RUNBOOK [key=value]..."));
    };
    let rb = entry.current();
    let given = params.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone()))).collect();
    rb.resolve_params(&given).map_err(|e| format!("{e}\n\n{}", param_usage(rb)))
}

/// `run NAME` with the runbook's params, one per line.
fn param_usage(rb: &baton_core::Runbook) -> String {
    let mut out = format!("Usage: run {}", rb.name);
    for p in &rb.params {
        if p.required {
            out.push_str(&format!(" {}=...", p.name));
        }
    }
    if rb.params.iter().any(|p| !p.required) {
        out.push_str(" [key=value]...");
    }
    for p in &rb.params {
        let kind = match &p.kind {
            ParamKind::Enum { values } => format!("one of {}", values.join(", ")),
            other => format!("{other:?}").to_lowercase(),
        };
        let rule = match (&p.default, p.required) {
            (_, true) => "required".to_string(),
            (Some(d), _) => format!("default {d}"),
            (None, _) => "optional".to_string(),
        };
        let about = if p.description.is_empty() { String::new() } else { format!(" — {}", p.description) };
        out.push_str(&format!("\n  {}: {kind}, {rule}{about}", p.name));
    }
    out
}

async fn start(
    api: &Api,
    caller: &Caller,
    runbook: &str,
    params: BTreeMap<String, String>,
    request_id: Option<&str>,
) -> Answer {
    let resolved = api.node.read(|s| resolve(s, runbook, &params));
    if let Err(e) = resolved {
        return Answer::private(e);
    }
    let run_id = crate::api::new_run_id();
    let params = params.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect();
    let op = Op::StartRunAs {
        run_id,
        runbook: runbook.to_string(),
        params,
        idempotency_key: request_id.map(|id| format!("{}:{id}", caller.platform.as_str())),
        by: caller.actor(),
    };
    match api.propose(op).await {
        Ok(Reply::Run { run_id, deduplicated }) => {
            let who = caller.principal.as_deref().unwrap_or_default();
            let text = if deduplicated {
                format!("Run `{run_id}` of `{runbook}` was already started by this request.")
            } else {
                format!("Started run `{run_id}` of `{runbook}` as {who}; its progress follows here.")
            };
            Answer { text, public: true, follow: Some(run_id) }
        }
        Ok(other) => Answer::private(format!("Unexpected answer from the cluster: {other:?}")),
        Err(e) => Answer::private(format!("Could not start `{runbook}`: {e}")),
    }
}

async fn decide(api: &Api, caller: &Caller, run: &str, step: Option<String>, approve: bool, reason: String) -> Answer {
    if !api.node.read(|s| s.runs.contains_key(run)) {
        return Answer::private(no_such_run(run));
    }
    let req = pb::DecideRequest {
        run_id: run.to_string(),
        step_id: step.unwrap_or_default(),
        principal: caller.principal.clone().unwrap_or_default(),
        reason,
    };
    match api.decide(req, approve, caller.platform.as_str()).await {
        Ok(_) => Answer::public(api.node.read(|s| decision_text(s, run, caller, approve))),
        Err(e) => Answer::private(format!("Not recorded: {e}")),
    }
}

/// "alice approved step `approve` of run `r-1` (1 of 2 approvals...); the run is ...".
pub(crate) fn decision_text(state: &State, run_id: &str, caller: &Caller, approve: bool) -> String {
    let who = caller.principal.as_deref().unwrap_or_default();
    let Some(run) = state.runs.get(run_id) else { return format!("{who} decided on run `{run_id}`.") };
    let decided = run.steps.iter().rev().find(|s| s.decisions.iter().any(|d| d.principal == who));
    let Some(step) = decided else { return format!("{who} decided on run `{run_id}`.") };
    if !approve {
        return format!("{who} denied step `{}` of run `{run_id}`; the run is {}.", step.id, state_text(run));
    }
    let approvals = step.decisions.iter().filter(|d| d.approve).count();
    let needed = step.approval.as_ref().map_or(1, |a| a.min_approvals as usize);
    let progress = if step.state == StepState::Waiting {
        format!(" ({approvals} of {needed} approvals; waiting for more)")
    } else {
        String::new()
    };
    format!("{who} approved step `{}` of run `{run_id}`{progress}; the run is {}.", step.id, state_text(run))
}

async fn cancel(api: &Api, caller: &Caller, run: &str, reason: String) -> Answer {
    let ended = api.node.read(|s| s.runs.get(run).map(|r| r.state.is_terminal()));
    match ended {
        None => return Answer::private(no_such_run(run)),
        Some(true) => {
            let state = api.node.read(|s| s.runs.get(run).map(state_text)).unwrap_or_default();
            return Answer::private(format!("Run `{run}` is {state} already."));
        }
        Some(false) => {}
    }
    let reason = if reason.is_empty() {
        format!("cancelled in {} by {}", caller.platform.as_str(), caller.principal.as_deref().unwrap_or_default())
    } else {
        reason
    };
    match api.propose(Op::CancelRun { run_id: run.to_string(), reason, by: caller.actor() }).await {
        Ok(_) => {
            let who = caller.principal.as_deref().unwrap_or_default();
            let state = api.node.read(|s| s.runs.get(run).map(state_text)).unwrap_or_default();
            Answer::public(format!("{who} cancelled run `{run}`; it is {state}."))
        }
        Err(e) => Answer::private(format!("Not cancelled: {e}")),
    }
}

/// "succeeded", "waiting for approval of step `x`", "being cancelled"...
pub(crate) fn state_text(run: &Run) -> String {
    if run.cancel_requested && !run.state.is_terminal() {
        return "being cancelled".into();
    }
    if run.state == RunState::Running
        && let Some(si) = next_step(run)
        && run.steps[si].state == StepState::Waiting
    {
        let what = if run.steps[si].approval.is_some() { "approval of" } else { "the end of" };
        return format!("waiting for {what} step `{}`", run.steps[si].id);
    }
    run.state.as_str().replace('_', " ")
}

/// A run in a few lines: state, steps, what it waits for, its error.
pub(crate) fn status_text(run: &Run) -> String {
    let mut out = format!("Run `{}` of `{}`: {}", run.id, run.runbook, state_text(run));
    if !run.principal.is_empty() {
        out.push_str(&format!(" (started by {})", run.principal));
    }
    let steps: Vec<String> = run.steps.iter().map(|s| format!("{} {}", s.id, s.state.as_str())).collect();
    if !steps.is_empty() {
        out.push_str(&format!("\nSteps: {}", steps.join(" · ")));
    }
    if let Some(si) = next_step(run)
        && let Some(request) = run.steps[si].approval.as_ref().filter(|_| run.steps[si].state == StepState::Waiting)
    {
        let approvals = run.steps[si].decisions.iter().filter(|d| d.approve).count();
        out.push_str(&format!(
            "\nWaiting for approval of `{}`: {}\nApprovers: {} ({approvals} of {} approvals)",
            run.steps[si].id,
            request.prompt,
            request.approvers.join(", "),
            request.min_approvals
        ));
    }
    if let Some(error) = &run.error {
        out.push_str(&format!("\nError: {error}"));
    }
    if let Some(failed) = run.steps.iter().find(|s| s.state == StepState::Failed && !s.stderr_tail.is_empty()) {
        let tail = last_lines(&failed.stderr_tail, 10);
        out.push_str(&format!("\nstderr of `{}`:\n```\n{}\n```", failed.id, tail.trim_end()));
    }
    out
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn list(state: &State, runbook: Option<&str>) -> String {
    let runs: Vec<String> = state
        .runs_newest_first(runbook.unwrap_or(""))
        .take(LIST_LIMIT)
        .map(|r| format!("`{}` {} — {} — {}", r.id, r.runbook, state_text(r), time_text(r.created_at_ms)))
        .collect();
    match (runs.is_empty(), runbook) {
        (true, Some(rb)) => format!("No runs of `{rb}` yet."),
        (true, None) => "No runs yet.".into(),
        (false, _) => format!("Latest runs:\n{}", runs.join("\n")),
    }
}

/// A unix-ms time as `2024-05-01 12:00:00 UTC`.
pub(crate) fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// What a run of `runbook` with `params` would go through, as `baton plan` shows it (the
/// server's plan: resolved params, locks, budget, each step rendered as far as the params
/// allow, approval points, handler steps). Nothing is started. An unknown runbook or a bad
/// param answers with the runbook's usage.
fn plan(api: &Api, runbook: &str, params: BTreeMap<String, String>) -> String {
    if let Err(e) = api.node.read(|s| resolve(s, runbook, &params)) {
        return e;
    }
    let request = pb::StartRunRequest {
        runbook: runbook.to_string(),
        params: params.into_iter().collect(),
        ..Default::default()
    };
    match api.plan_run(request) {
        Ok(plan) => plan_text(&plan),
        Err(e) => format!("No plan: {e}"),
    }
}

/// A plan as chat text.
pub fn plan_text(plan: &pb::RunPlan) -> String {
    let version = &plan.version[..plan.version.len().min(8)];
    let mut out = format!("Plan of `{}` (version {version}); nothing is started.", plan.runbook);
    let params: BTreeMap<String, serde_json::Value> = serde_json::from_str(&plan.params_json).unwrap_or_default();
    let shown: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect();
    out.push_str(&format!("\nParams: {}", if shown.is_empty() { "none".to_string() } else { shown.join(", ") }));
    if !plan.locks.is_empty() {
        let locks: Vec<String> = plan
            .locks
            .iter()
            .map(
                |l| if l.held_by.is_empty() { l.name.clone() } else { format!("{} (held by `{}`)", l.name, l.held_by) },
            )
            .collect();
        out.push_str(&format!("\nLocks: {}", locks.join(", ")));
    }
    if !plan.budget.is_empty() {
        out.push_str(&format!("\nBudget: {}", plan.budget));
    }
    if !plan.refused.is_empty() {
        out.push_str(&format!("\nA run started now would be refused: {}", plan.refused));
    }
    let mut block = "steps";
    for (i, step) in plan.steps.iter().enumerate() {
        if step.block != block && !step.block.is_empty() {
            block = &step.block;
            out.push_str(&format!("\nThen, {}:", step.block.replace('_', " ")));
        }
        let mut line = format!("\n{}. `{}` ({})", i + 1, step.id, step.kind);
        match step.kind.as_str() {
            "exec" => line.push_str(&format!(": `{}`", step.argv.join(" "))),
            "approval" => {
                let wait = baton_core::duration::format_duration(u64::try_from(step.wait_ms).unwrap_or(0));
                let who = step.approvers.join(", ");
                line.push_str(&format!(": waits for {} approval(s) by {who} (timeout {wait})", step.min_approvals));
                if !step.approval_prompt.is_empty() {
                    line.push_str(&format!(" — \"{}\"", step.approval_prompt));
                }
            }
            "sleep" => {
                let wait = baton_core::duration::format_duration(u64::try_from(step.wait_ms).unwrap_or(0));
                line.push_str(&format!(": waits {wait}"));
            }
            _ => {}
        }
        if !step.targets.is_empty() {
            line.push_str(&format!(" — for each of {}", step.targets.join(", ")));
        }
        if !step.when.is_empty() {
            line.push_str(&format!(" — only when `{}` ({})", step.when, step.when_result));
        }
        if !step.render_note.is_empty() {
            line.push_str(&format!(" — {}", step.render_note));
        }
        out.push_str(&line);
    }
    if plan.concurrency > 0 {
        out.push_str(&format!(
            "\nAt most {} run(s) at a time ({} active now); a further run waits.",
            plan.concurrency, plan.active_runs
        ));
    }
    if plan.timeout_ms > 0 {
        let limit = baton_core::duration::format_duration(u64::try_from(plan.timeout_ms).unwrap_or(0));
        out.push_str(&format!("\nThe run fails if it takes longer than {limit}."));
    }
    out
}

fn value_text(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        split_words(text).unwrap()
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(words("  run  web  "), ["run", "web"]);
        assert_eq!(
            words(r#"run web reason="disk full" note='it''s fine'"#),
            ["run", "web", "reason=disk full", "note=its fine"]
        );
        assert_eq!(words(r#"a "say \"hi\" \\ \n" b"#), ["a", "say \"hi\" \\ \\n", "b"]);
        assert_eq!(words(r"a\ b c"), ["a b", "c"]);
        assert_eq!(words(r#"x="" y=''"#), ["x=", "y="]);
        assert_eq!(words("“quoted words” ‘and these’"), ["quoted words", "and these"]);
        assert_eq!(words("'$(rm -rf /)' `x`"), ["$(rm -rf /)", "`x`"], "nothing is expanded");
        assert!(words("").is_empty());
        assert!(split_words("run 'open").unwrap_err().contains("single quote"));
        assert!(split_words("run \"open").unwrap_err().contains("double quote"));
        assert!(split_words("run \\").unwrap_err().contains("backslash"));
    }

    #[test]
    fn commands_parse_with_their_arguments() {
        let params = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(
            parse("run restart-web service=web reason=\"disk full\"").unwrap(),
            ChatCommand::Run {
                runbook: "restart-web".into(),
                params: params(&[("service", "web"), ("reason", "disk full")])
            }
        );
        assert_eq!(
            parse("plan x a=1").unwrap(),
            ChatCommand::Plan { runbook: "x".into(), params: params(&[("a", "1")]) }
        );
        assert_eq!(parse("RUN x").unwrap(), ChatCommand::Run { runbook: "x".into(), params: params(&[]) });
        assert_eq!(parse("status r-1").unwrap(), ChatCommand::Status { run: "r-1".into() });
        assert_eq!(parse("list").unwrap(), ChatCommand::List { runbook: None });
        assert_eq!(parse("list web").unwrap(), ChatCommand::List { runbook: Some("web".into()) });
        assert_eq!(parse("approve r-1").unwrap(), ChatCommand::Approve { run: "r-1".into(), step: None });
        assert_eq!(
            parse("approve r-1 gate").unwrap(),
            ChatCommand::Approve { run: "r-1".into(), step: Some("gate".into()) }
        );
        assert_eq!(
            parse("deny r-1 not during the sale").unwrap(),
            ChatCommand::Deny { run: "r-1".into(), step: None, reason: "not during the sale".into() }
        );
        assert_eq!(parse("cancel r-1").unwrap(), ChatCommand::Cancel { run: "r-1".into(), reason: String::new() });
        assert_eq!(parse("").unwrap(), ChatCommand::Help);
        assert_eq!(parse("help").unwrap(), ChatCommand::Help);
        for (text, expected) in [
            ("run", "needs a runbook name"),
            ("run x novalue", "expected a param as key=value, got `novalue`"),
            ("run x =v", "expected a param as key=value"),
            ("run x a=1 a=2", "param `a` is given twice"),
            ("status", "needs a run id"),
            ("status a b", "takes only a run id"),
            ("approve r-1 a b", "at most a step id"),
            ("list a b", "at most a runbook"),
            ("explode now", "unknown command `explode`"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
        }
        assert!(parse(&"x".repeat(MAX_TEXT + 1)).unwrap_err().contains("limit"));
    }

    #[test]
    fn only_help_and_status_are_open_to_unmapped_users() {
        assert!(ChatCommand::Help.open_to_anyone());
        assert!(ChatCommand::Status { run: "r".into() }.open_to_anyone());
        assert!(!ChatCommand::List { runbook: None }.open_to_anyone());
        assert!(!ChatCommand::Run { runbook: "x".into(), params: BTreeMap::new() }.open_to_anyone());
        assert!(!ChatCommand::Approve { run: "r".into(), step: None }.open_to_anyone());
    }

    #[test]
    fn a_plan_reads_as_steps_with_their_approval_points() {
        let step = |id: &str, block: &str, kind: &str| pb::PlannedStep {
            id: id.into(),
            block: block.into(),
            kind: kind.into(),
            ..Default::default()
        };
        let plan = pb::RunPlan {
            runbook: "restart".into(),
            version: "0123456789abcdef".into(),
            params_json: r#"{"service":"web","dry_run":false}"#.into(),
            locks: vec![pb::PlannedLock { name: "db".into(), held_by: "r-9".into() }],
            concurrency: 1,
            active_runs: 1,
            steps: vec![
                pb::PlannedStep {
                    argv: vec!["curl".into(), "<secret env:T>".into()],
                    ..step("check", "steps", "exec")
                },
                pb::PlannedStep {
                    approvers: vec!["alice".into(), "group:sre".into()],
                    min_approvals: 2,
                    wait_ms: 900_000,
                    approval_prompt: "Restart web?".into(),
                    ..step("gate", "steps", "approval")
                },
                pb::PlannedStep {
                    when: "not params.dry_run".into(),
                    when_result: "true".into(),
                    argv: vec!["systemctl".into(), "restart".into(), "web".into()],
                    ..step("restart", "steps", "exec")
                },
                pb::PlannedStep { argv: vec!["page".into()], ..step("page", "on_failure", "exec") },
            ],
            ..Default::default()
        };
        let text = plan_text(&plan);
        assert!(text.starts_with("Plan of `restart` (version 01234567); nothing is started."), "{text}");
        assert!(text.contains("Params: dry_run=false, service=web"), "{text}");
        assert!(text.contains("Locks: db (held by `r-9`)"), "{text}");
        assert!(text.contains("1. `check` (exec): `curl <secret env:T>`"), "{text}");
        assert!(
            text.contains(
                "2. `gate` (approval): waits for 2 approval(s) by alice, group:sre (timeout 15m) — \"Restart web?\""
            ),
            "{text}"
        );
        assert!(text.contains("3. `restart` (exec): `systemctl restart web` — only when `not params.dry_run` (true)"));
        assert!(text.contains("Then, on failure:\n4. `page` (exec): `page`"), "{text}");
        assert!(text.contains("At most 1 run(s) at a time (1 active now)"), "{text}");
    }
}
