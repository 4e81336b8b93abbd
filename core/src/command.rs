//! The replicated command: every change to Baton's state is one of these, committed to the
//! Raft log before it has any effect outside the cluster.
//!
//! Commands carry everything apply needs, stamped by the leader when it proposes them: the
//! time (`at_ms`), run ids, rendered step inputs. Apply itself never reads a clock, draws a
//! random number or does I/O, so every node that applies the same log reaches the same state.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::run::AttemptState;
use crate::{Runbook, Schedule};

/// Who asked for an operator action, and through what.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The principal (empty when the client did not say).
    pub principal: String,
    /// `api`, `slack`, `mattermost`, `alertmanager`...
    pub via: String,
}

/// One entry's payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    /// Leader wall-clock time when it proposed the command (unix ms).
    pub at_ms: i64,
    /// What to change.
    pub op: Op,
}

/// The changes the state machine knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Store a validated runbook; a changed source becomes a new immutable version.
    ApplyRunbook {
        /// The validated runbook.
        runbook: Runbook,
    },
    /// Create or replace a schedule. Its next tick is computed from `at_ms`.
    ApplySchedule {
        /// The validated schedule.
        schedule: Schedule,
    },
    /// Start a run of the runbook's current version.
    StartRun {
        /// Leader-stamped run id.
        run_id: String,
        /// Runbook name.
        runbook: String,
        /// Params as given; apply resolves them again against the pinned version.
        params: BTreeMap<String, serde_json::Value>,
        /// Deduplicates retried requests: a second start with the same key is ignored.
        idempotency_key: Option<String>,
    },
    /// A schedule's tick fires: exactly one run, with an id derived from (schedule, tick).
    Fire {
        /// Schedule name.
        schedule: String,
        /// The tick being fired; must equal the schedule's replicated `next_fire_at_ms`.
        tick_ms: i64,
    },
    /// Ticks that could not fire in time (the cluster was down): one visible `missed` record.
    RecordMissed {
        /// Schedule name.
        schedule: String,
        /// First missed tick; must equal the schedule's replicated `next_fire_at_ms`.
        first_tick_ms: i64,
        /// Last missed tick.
        last_tick_ms: i64,
        /// How many ticks the record stands for.
        count: u64,
    },
    /// Run a schedule now (`baton schedule trigger`), under its overlap policy.
    TriggerSchedule {
        /// Schedule name.
        schedule: String,
        /// Leader-stamped run id.
        run_id: String,
        /// Who asked.
        by: Actor,
    },
    /// Run a past tick of a schedule after the fact, unless it has a run already. Backfilled
    /// runs of a schedule run one at a time, oldest first.
    Backfill {
        /// Schedule name.
        schedule: String,
        /// The tick; must be one of the schedule's ticks, not in the future.
        tick_ms: i64,
        /// Who asked.
        by: Actor,
    },
    /// Pause (no tick fires) or unpause a schedule; ticks passed while paused are recorded as
    /// missed when it is unpaused.
    PauseSchedule {
        /// Schedule name.
        schedule: String,
        /// True to pause, false to unpause.
        paused: bool,
        /// Why (shown by `schedule list`).
        note: String,
        /// Who asked.
        by: Actor,
    },
    /// Assign the next attempt of a step to a worker. The entry's (term, index) is the
    /// attempt's fencing token and its index is the attempt id.
    Assign {
        /// Run id.
        run_id: String,
        /// Step id.
        step_id: String,
        /// Chosen worker.
        worker: String,
        /// Rendered argv.
        argv: Vec<String>,
        /// Rendered environment.
        env: BTreeMap<String, String>,
        /// Rendered working directory.
        workdir: Option<String>,
        /// Step timeout.
        timeout_ms: Option<u64>,
        /// The attempts the step had when this was decided; a late copy proposed for an
        /// earlier round of the step is ignored.
        #[serde(default)]
        expected_attempts: Option<usize>,
        /// The worker process (its boot id) the leader chose; 0 if unknown.
        #[serde(default)]
        worker_boot: u64,
    },
    /// A step's inputs could not be rendered: the step fails without an attempt.
    RenderFailed {
        /// Run id.
        run_id: String,
        /// Step id.
        step_id: String,
        /// The template error.
        error: String,
    },
    /// The worker reported that the attempt's process started.
    AttemptStarted {
        /// Attempt id.
        attempt_id: u64,
    },
    /// The worker reported the attempt's outcome.
    AttemptFinished {
        /// Attempt id.
        attempt_id: u64,
        /// Terminal state (succeeded, failed, timed_out, cancelled).
        state: AttemptState,
        /// Exit code when the process exited.
        exit_code: Option<i32>,
        /// Bounded stdout tail.
        stdout_tail: String,
        /// Bounded stderr tail.
        stderr_tail: String,
        /// Named outputs.
        outputs: BTreeMap<String, String>,
        /// Failure reason.
        error: Option<String>,
    },
    /// A step's `when` condition was false: it is skipped.
    SkipStep {
        /// Run id.
        run_id: String,
        /// Step id.
        step_id: String,
        /// The condition, for the record.
        reason: String,
    },
    /// The attempt's worker is gone or says it is not running it: the outcome is unknown.
    AttemptLost {
        /// Attempt id.
        attempt_id: u64,
        /// Why it is considered lost.
        reason: String,
    },
    /// The attempt provably never reached its worker: the same worker process registered
    /// since, without it. It did not run, so the step goes back to pending (no attempt is used).
    AttemptUndelivered {
        /// Attempt id.
        attempt_id: u64,
        /// How that is known.
        reason: String,
    },
    /// Cancel a run: pending steps never start; running attempts are asked to stop.
    CancelRun {
        /// Run id.
        run_id: String,
        /// Operator's reason.
        reason: String,
        /// Who asked.
        #[serde(default)]
        by: Actor,
    },
    /// No further step of the run starts until it is resumed.
    PauseRun {
        /// Run id.
        run_id: String,
        /// Why.
        reason: String,
        /// Who asked.
        by: Actor,
    },
    /// A paused run goes on.
    ResumeRun {
        /// Run id.
        run_id: String,
        /// Who asked.
        by: Actor,
    },
    /// A failed, cancelled or needs-attention run goes on again from a step (default: the
    /// first one that did not succeed); that step and every later one start afresh.
    RetryRun {
        /// Run id.
        run_id: String,
        /// The step to start from.
        from_step: Option<String>,
        /// Who asked.
        by: Actor,
    },
    /// A needs-attention run goes on after its lost step, counting it as skipped.
    SkipLost {
        /// Run id.
        run_id: String,
        /// Why it is safe to go on.
        reason: String,
        /// Who asked.
        by: Actor,
    },
    /// An operator ends a run as failed now (running attempts are asked to stop).
    ForceFail {
        /// Run id.
        run_id: String,
        /// Why (required).
        reason: String,
        /// Who asked.
        by: Actor,
    },
    /// The run's next step is an approval or a sleep: it starts waiting, until `at_ms` plus
    /// the sleep's duration or the approval's timeout.
    OpenWait {
        /// Run id.
        run_id: String,
        /// Step id.
        step_id: String,
        /// An approval's rendered question (empty for a sleep).
        #[serde(default)]
        prompt: String,
    },
    /// A waiting step's deadline passed: a sleep succeeds, an approval is denied.
    WaitElapsed {
        /// Run id.
        run_id: String,
        /// Step id.
        step_id: String,
    },
    /// Someone approves or denies a waiting approval step.
    Decide {
        /// Run id.
        run_id: String,
        /// Step id; `None`: the step the run waits on.
        step_id: Option<String>,
        /// Who decides.
        principal: String,
        /// The groups the principal belongs to (resolved by the node that took the request).
        groups: Vec<String>,
        /// Approve (true) or deny.
        approve: bool,
        /// Why.
        reason: String,
        /// Where the decision came from: `api`, `slack`, `mattermost`.
        via: String,
        /// Unique per request, so a re-proposed decision is recognised and not refused.
        #[serde(default)]
        request_id: String,
    },
    /// The run's `timeout` passed: stop it and fail it.
    TimeoutRun {
        /// Run id.
        run_id: String,
    },
    /// A guard failed at a gate: pause the run, unless it has left that gate meanwhile.
    GuardFailed {
        /// Run id.
        run_id: String,
        /// The gate that was checked (see `State::guard_gate`).
        gate: String,
        /// Which guard failed and why.
        reason: String,
    },
    /// The guards passed after the run's last step: it may succeed.
    GuardsPassed {
        /// Run id.
        run_id: String,
    },
    /// A `foreach` step becomes one step per target (in batches); no targets: it is skipped.
    ExpandForeach {
        /// Run id.
        run_id: String,
        /// The foreach step's id.
        step_id: String,
        /// The targets, resolved by the leader (a list expression's items, or worker ids).
        targets: Vec<serde_json::Value>,
        /// For a worker selector, the worker each target runs on.
        workers: Vec<Option<String>>,
    },
    /// A waiting run takes all its locks if they are free (with `lock_wait: skip`, a run whose
    /// locks are held ends at once).
    AcquireLocks {
        /// Run id.
        run_id: String,
    },
    /// Start a run on someone's behalf (a chat command): a `StartRun` whose history says who
    /// started it and through what.
    StartRunAs {
        /// Leader-stamped run id.
        run_id: String,
        /// Runbook name.
        runbook: String,
        /// Params as given; apply resolves them again against the pinned version.
        params: BTreeMap<String, serde_json::Value>,
        /// Deduplicates retried requests, as for `StartRun`.
        idempotency_key: Option<String>,
        /// Who asked, and through what (`slack`, `mattermost`).
        by: Actor,
    },
    /// Alertmanager reported the alerts of one dedupe key: firing ones start at most one run
    /// per key (none while its run goes on or cools down); once every alert of the key is
    /// resolved, a run that has not started working yet is cancelled.
    AlertNotified {
        /// The dedupe key: `RUNBOOK/TARGET` (the target rendered by the rule that matched).
        key: String,
        /// Fingerprints of the key's alerts that fire in this notification.
        firing: Vec<String>,
        /// Fingerprints of the key's alerts that are resolved in this notification.
        resolved: Vec<String>,
        /// The run to start if the key has none going or cooling down (`None` when nothing fires).
        start: Option<AlertStart>,
        /// Who notified (`alertmanager`, via `alertmanager`).
        by: Actor,
        /// The alerts' names, for the run's history.
        summary: String,
    },
}

/// The run an alert starts, rendered by the rule that matched it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertStart {
    /// The rule's name.
    pub rule: String,
    /// Leader-stamped run id, used only if a run starts.
    pub run_id: String,
    /// Runbook name.
    pub runbook: String,
    /// Params rendered from the alert's labels and annotations.
    pub params: BTreeMap<String, serde_json::Value>,
    /// After the run ends, alerts of the key start nothing for this long (ms).
    pub cooldown_ms: u64,
}

impl Op {
    /// Short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            Op::ApplyRunbook { .. } => "apply_runbook",
            Op::ApplySchedule { .. } => "apply_schedule",
            Op::StartRun { .. } => "start_run",
            Op::Fire { .. } => "fire",
            Op::RecordMissed { .. } => "record_missed",
            Op::TriggerSchedule { .. } => "trigger_schedule",
            Op::Backfill { .. } => "backfill",
            Op::PauseSchedule { .. } => "pause_schedule",
            Op::Assign { .. } => "assign",
            Op::RenderFailed { .. } => "render_failed",
            Op::SkipStep { .. } => "skip_step",
            Op::AttemptStarted { .. } => "attempt_started",
            Op::AttemptFinished { .. } => "attempt_finished",
            Op::AttemptLost { .. } => "attempt_lost",
            Op::AttemptUndelivered { .. } => "attempt_undelivered",
            Op::CancelRun { .. } => "cancel_run",
            Op::PauseRun { .. } => "pause_run",
            Op::ResumeRun { .. } => "resume_run",
            Op::RetryRun { .. } => "retry_run",
            Op::SkipLost { .. } => "skip_lost",
            Op::ForceFail { .. } => "force_fail",
            Op::OpenWait { .. } => "open_wait",
            Op::WaitElapsed { .. } => "wait_elapsed",
            Op::Decide { .. } => "decide",
            Op::TimeoutRun { .. } => "timeout_run",
            Op::AcquireLocks { .. } => "acquire_locks",
            Op::ExpandForeach { .. } => "expand_foreach",
            Op::GuardsPassed { .. } => "guards_passed",
            Op::GuardFailed { .. } => "guard_failed",
            Op::StartRunAs { .. } => "start_run_as",
            Op::AlertNotified { .. } => "alert_notified",
        }
    }
}

impl Command {
    /// Encodes the command as an entry payload.
    pub fn encode(&self) -> Vec<u8> {
        // A Command holds only strings, numbers, maps and JSON values: serialization cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes an entry payload.
    pub fn decode(data: &[u8]) -> Result<Command, serde_json::Error> {
        serde_json::from_slice(data)
    }
}
