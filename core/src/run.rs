//! Runs, steps and attempts: the records the state machine keeps and the API shows.
//!
//! A run executes the steps of one pinned runbook version in order. Each step is carried out
//! by one or more attempts; an attempt is committed (with its fencing token) before any worker
//! hears of it, so an attempt starts at most once. Retries are new attempts.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a run is in its life. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, no step started yet.
    Pending,
    /// At least one step started and the run has not ended.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed (or could not be rendered); later steps did not run.
    Failed,
    /// Cancelled by an operator.
    Cancelled,
    /// An attempt's outcome is unknown (its worker was lost) and the step is not idempotent:
    /// an operator decides.
    NeedsAttention,
    /// A record of schedule ticks that could not fire in time; nothing ran.
    Missed,
}

impl RunState {
    /// True for states that never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, RunState::Succeeded | RunState::Failed | RunState::Cancelled | RunState::Missed)
    }

    /// The lowercase name used by the CLI and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Pending => "pending",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
            RunState::NeedsAttention => "needs_attention",
            RunState::Missed => "missed",
        }
    }
}

/// Where a step is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// An attempt is assigned or running.
    Running,
    /// The last attempt exited 0.
    Succeeded,
    /// The last attempt failed, timed out, or the step's inputs could not be rendered.
    Failed,
    /// Cancelled before or while running.
    Cancelled,
    /// The worker running the last attempt was lost; its outcome is unknown.
    Lost,
    /// Its `when` condition was false: it did not run.
    Skipped,
    /// An approval or sleep step the scheduler is waiting on (no worker is involved).
    Waiting,
}

impl StepState {
    /// True for a step the run is done with and may go on after: succeeded or skipped.
    pub fn is_done(self) -> bool {
        matches!(self, StepState::Succeeded | StepState::Skipped)
    }

    /// The lowercase name used by the CLI, the docs and templates (`steps.<id>.status`).
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Pending => "pending",
            StepState::Running => "running",
            StepState::Succeeded => "succeeded",
            StepState::Failed => "failed",
            StepState::Cancelled => "cancelled",
            StepState::Lost => "lost",
            StepState::Skipped => "skipped",
            StepState::Waiting => "waiting",
        }
    }
}

/// Where an attempt is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Committed and sent (or about to be sent) to its worker.
    Assigned,
    /// The worker reported that the process started.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed by a signal, or could not be spawned.
    Failed,
    /// Killed after its timeout.
    TimedOut,
    /// Killed because the run was cancelled.
    Cancelled,
    /// Its worker was lost while it was assigned or running; the outcome is unknown.
    Lost,
}

impl AttemptState {
    /// True once the attempt has an outcome (or is known to have none).
    pub fn is_terminal(self) -> bool {
        !matches!(self, AttemptState::Assigned | AttemptState::Running)
    }

    /// The lowercase name used by the CLI and the docs.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Assigned => "assigned",
            AttemptState::Running => "running",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::TimedOut => "timed_out",
            AttemptState::Cancelled => "cancelled",
            AttemptState::Lost => "lost",
        }
    }
}

/// Fencing token of an attempt: the Raft term and log index of the entry that assigned it.
/// Tokens order assignments; a worker refuses one fenced below what it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fence {
    /// Raft term of the assigning entry.
    pub term: u64,
    /// Raft log index of the assigning entry.
    pub index: u64,
}

/// What started a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// `RunService.Start` (the CLI, scripts).
    Api,
    /// A schedule's tick.
    Schedule {
        /// Schedule name.
        name: String,
        /// The tick (unix ms) this run was fired for.
        tick_ms: i64,
    },
    /// `baton schedule trigger`: a run of a schedule now, outside its ticks.
    Manual {
        /// Schedule name.
        schedule: String,
    },
    /// `baton schedule backfill`: a past tick run after the fact.
    Backfill {
        /// Schedule name.
        schedule: String,
        /// The tick (unix ms) the run stands for.
        tick_ms: i64,
    },
}

impl Trigger {
    /// "api", "schedule", "manual" or "backfill".
    pub fn kind(&self) -> &'static str {
        match self {
            Trigger::Api => "api",
            Trigger::Schedule { .. } => "schedule",
            Trigger::Manual { .. } => "manual",
            Trigger::Backfill { .. } => "backfill",
        }
    }

    /// The schedule behind the run, if any (its overlap policy applies).
    pub fn schedule(&self) -> Option<&str> {
        match self {
            Trigger::Api => None,
            Trigger::Schedule { name, .. } => Some(name),
            Trigger::Manual { schedule } | Trigger::Backfill { schedule, .. } => Some(schedule),
        }
    }

    /// The tick the run stands for (0 for API and manual runs).
    pub fn tick_ms(&self) -> i64 {
        match self {
            Trigger::Schedule { tick_ms, .. } | Trigger::Backfill { tick_ms, .. } => *tick_ms,
            Trigger::Api | Trigger::Manual { .. } => 0,
        }
    }
}

/// One attempt at a step on one worker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// Cluster-wide attempt id, increasing with every assignment.
    pub id: u64,
    /// 1 for the first attempt of a step, 2 for its first retry, ...
    pub number: u32,
    /// Worker the attempt was assigned to.
    pub worker: String,
    /// Fencing token of the assignment.
    pub fence: Fence,
    /// Current state.
    pub state: AttemptState,
    /// When the assignment was committed (leader time).
    pub assigned_at_ms: i64,
    /// When the worker reported the process started (0 if not yet).
    pub started_at_ms: i64,
    /// When the outcome was committed (0 if not yet).
    pub finished_at_ms: i64,
    /// Process exit code, when it exited.
    pub exit_code: Option<i32>,
    /// Why it failed, timed out, was cancelled or lost.
    pub error: Option<String>,
    /// The rendered argv it ran.
    pub argv: Vec<String>,
    /// The boot id of the worker process it was assigned to (0: unknown).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub worker_boot: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A step within a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRun {
    /// Step id from the runbook.
    pub id: String,
    /// Current state.
    pub state: StepState,
    /// Every attempt, oldest first.
    pub attempts: Vec<Attempt>,
    /// Named outputs of the successful attempt (`::set-output NAME=VALUE`).
    pub outputs: BTreeMap<String, String>,
    /// Exit code of the last finished attempt.
    pub exit_code: Option<i32>,
    /// Bounded tail of the last attempt's stdout.
    pub stdout_tail: String,
    /// Bounded tail of the last attempt's stderr.
    pub stderr_tail: String,
    /// Why the step failed.
    pub error: Option<String>,
    /// When the first attempt was assigned (0 if not yet).
    pub started_at_ms: i64,
    /// When the step reached its final state (0 if not yet).
    pub finished_at_ms: i64,
    /// A retry waits until then (unix ms; 0: no wait).
    #[serde(default)]
    pub not_before_ms: i64,
    /// It failed, and its runbook says the run goes on (`on_error: continue`).
    #[serde(default)]
    pub failure_tolerated: bool,
    /// A waiting step ends then (unix ms; 0: not waiting): a sleep is over, an approval is
    /// denied for lack of decisions.
    #[serde(default)]
    pub deadline_ms: i64,
    /// Decisions on an approval step, in the order they were committed.
    #[serde(default)]
    pub decisions: Vec<Decision>,
    /// An approval step's rendered question and who may answer it (set when it opens).
    #[serde(default)]
    pub approval: Option<ApprovalRequest>,
    /// Attempts made before an operator retried the step; its `retry` policy counts the
    /// attempts after them.
    #[serde(default)]
    pub retry_base: u32,
    /// The part of the runbook it belongs to.
    #[serde(default)]
    pub block: Block,
    /// The runbook step it carries out, when that differs from `id` (a `foreach` target's
    /// step is `restart[web-1]`, carrying out step `restart`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub spec: String,
    /// Steps of one group run at the same time, batch by batch: a `parallel` group (its id),
    /// or the targets of a `foreach` step (the step's id).
    #[serde(default)]
    pub group: Option<String>,
    /// The batch within its group (foreach targets; 0 otherwise).
    #[serde(default)]
    pub batch: u32,
    /// The `foreach` target this step runs for (templates read it as `target`).
    #[serde(default)]
    pub target: Option<serde_json::Value>,
    /// The worker a `foreach: { workers: ... }` target runs on.
    #[serde(default)]
    pub target_worker: Option<String>,
}

/// What an open approval step asks, and of whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// The rendered question.
    pub prompt: String,
    /// Principals and `group:` names who may decide.
    pub approvers: Vec<String>,
    /// How many approvals it needs.
    pub min_approvals: u32,
}

/// One person's decision on an approval step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// Who decided (the principal the request was made as).
    pub principal: String,
    /// Approved (true) or denied.
    pub approve: bool,
    /// Why, as given.
    pub reason: String,
    /// When the decision was committed (leader time).
    pub at_ms: i64,
    /// Where it came from: `api`, `slack`, `mattermost`...
    pub via: String,
    /// The request that made it (re-proposals of one request are applied once).
    #[serde(default)]
    pub request_id: String,
}

impl StepRun {
    /// A step that has not started.
    pub fn pending(id: &str) -> StepRun {
        StepRun {
            id: id.to_string(),
            state: StepState::Pending,
            attempts: Vec::new(),
            outputs: BTreeMap::new(),
            exit_code: None,
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            error: None,
            started_at_ms: 0,
            finished_at_ms: 0,
            not_before_ms: 0,
            failure_tolerated: false,
            deadline_ms: 0,
            decisions: Vec::new(),
            approval: None,
            retry_base: 0,
            block: Block::Main,
            spec: String::new(),
            group: None,
            batch: 0,
            target: None,
            target_worker: None,
        }
    }

    /// The id of the runbook step it carries out.
    pub fn spec_id(&self) -> &str {
        if self.spec.is_empty() { &self.id } else { &self.spec }
    }

    /// The attempt that is assigned or running, if any.
    pub fn active_attempt(&self) -> Option<&Attempt> {
        self.attempts.iter().rev().find(|a| !a.state.is_terminal())
    }
}

/// A run of one runbook version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// Run id. API runs: `r-<hex>` stamped by the leader; scheduled runs: derived from
    /// (schedule, tick) so a tick can never make two runs.
    pub id: String,
    /// Runbook name.
    pub runbook: String,
    /// The runbook version this run is pinned to.
    pub version: String,
    /// Resolved, typed params.
    pub params: BTreeMap<String, serde_json::Value>,
    /// What started it.
    pub trigger: Trigger,
    /// Current state.
    pub state: RunState,
    /// The steps, in runbook order.
    pub steps: Vec<StepRun>,
    /// When the run was committed (leader time).
    pub created_at_ms: i64,
    /// When its first step was assigned (0 if not yet).
    pub started_at_ms: i64,
    /// When it reached a terminal state (0 if not yet).
    pub finished_at_ms: i64,
    /// Why it failed, was cancelled or needs attention.
    pub error: Option<String>,
    /// The idempotency key it was started with.
    pub idempotency_key: Option<String>,
    /// For a `missed` record: how many ticks it stands for.
    pub missed_ticks: u64,
    /// An operator asked to cancel (or the run's timeout passed); running attempts are being
    /// stopped.
    pub cancel_requested: bool,
    /// The run's own `timeout` passed: once stopped, it ends `failed`, not `cancelled`.
    #[serde(default)]
    pub timed_out: bool,
    /// An operator paused it: no further step starts until it is resumed (running attempts
    /// go on).
    #[serde(default)]
    pub paused: bool,
    /// Why it is paused (an operator's reason, or the guard that failed).
    #[serde(default)]
    pub pause_reason: String,
    /// The run's `timeout` counts from here: its creation, or the last operator retry.
    #[serde(default)]
    pub timer_start_ms: i64,
    /// What people did to the run (cancel, pause, resume, retry, skip, force-fail, approve,
    /// deny), oldest first.
    #[serde(default)]
    pub events: Vec<RunEvent>,
    /// Who started it (empty when the client did not say, and for schedule ticks).
    #[serde(default)]
    pub principal: String,
    /// Its rendered lock names (from the runbook's `locks`).
    #[serde(default)]
    pub locks: Vec<String>,
    /// It holds its locks (taken before its first step, released when it ends).
    #[serde(default)]
    pub locks_held: bool,
    /// Its rendered budget key, when the runbook has a budget.
    #[serde(default)]
    pub budget_key: Option<String>,
    /// Running its `on_failure` or `on_cancel` steps before it ends as it was going to.
    #[serde(default)]
    pub finishing: Option<Finishing>,
    /// Its handler steps ran already (they run at most once).
    #[serde(default)]
    pub handlers_ran: bool,
    /// Its guards passed after its last step (a run with guards succeeds only then).
    #[serde(default)]
    pub guards_after_passed: bool,
}

/// A run ending through its `on_failure` / `on_cancel` steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finishing {
    /// Which handler steps run.
    pub block: Block,
    /// The state the run ends in once they are done.
    pub state: RunState,
    /// Why the run failed or was cancelled.
    pub error: Option<String>,
    /// The step whose failure ended the main steps, if one did.
    pub failed_step: Option<String>,
}

/// Which part of a runbook a step belongs to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Block {
    /// The main `steps`.
    #[default]
    Main,
    /// `on_failure`.
    OnFailure,
    /// `on_cancel`.
    OnCancel,
}

impl Block {
    /// `steps`, `on_failure` or `on_cancel`.
    pub fn as_str(self) -> &'static str {
        match self {
            Block::Main => "steps",
            Block::OnFailure => "on_failure",
            Block::OnCancel => "on_cancel",
        }
    }
}

/// One operator action on a run, for its history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    /// When it was committed (leader time).
    pub at_ms: i64,
    /// Who did it (empty when the client did not say).
    pub principal: String,
    /// Where it came from: `api`, `slack`, `mattermost`, `alertmanager`...
    pub via: String,
    /// `cancel`, `pause`, `resume`, `retry`, `skip`, `force_fail`, `approve`, `deny`.
    pub action: String,
    /// The reason given, or what the action did (`from step restart`).
    pub detail: String,
}

impl Run {
    /// The block of steps the run is on: its main steps, or the handlers it runs before it ends.
    pub fn phase(&self) -> Block {
        self.finishing.as_ref().map_or(Block::Main, |f| f.block)
    }

    /// Whether any attempt of the run has been reported started.
    pub fn any_attempt_started(&self) -> bool {
        self.steps.iter().any(|s| s.attempts.iter().any(|a| a.started_at_ms > 0))
    }

    /// The run id of a schedule's tick. Deterministic, so a tick fired twice maps to one run.
    pub fn scheduled_id(schedule: &str, tick_ms: i64) -> String {
        format!("s-{schedule}-{tick_ms}")
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&StepRun> {
        self.steps.iter().find(|s| s.id == id)
    }
}
