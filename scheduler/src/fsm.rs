//! The replicated state machine: what `apply` does with each committed [`Command`].
//!
//! `apply` is deterministic. It reads nothing but its arguments (the entry's index and term and
//! the leader-stamped command) and the current [`State`]; it never reads a clock, draws a random
//! number or does I/O. A command that is stale or duplicated (a second fire of one tick, a
//! result for an attempt that already ended) is ignored, so re-proposals are harmless. What the
//! node must do outside the state machine afterwards (send an assignment, wake watchers) comes
//! back as [`Effect`]s, and the outcome for the proposer as a [`Reply`].

pub mod alerts;

use std::collections::{BTreeMap, BTreeSet};

use baton_core::command::{Actor, Command, Op};
use baton_core::run::{
    ApprovalRequest, Attempt, AttemptState, Block, Decision, Fence, Finishing, Run, RunEvent, RunState, StepRun,
    StepState, Trigger,
};
use baton_core::runbook::Action;
use baton_core::schedule::{BlackoutAction, Overlap};
use baton_core::{Runbook, Schedule};

/// The guard gate after a run's last step.
pub const GUARD_GATE_END: &str = "end";

/// At most this many ticks are run by one backfill.
pub const MAX_BACKFILL: usize = 1_000;
/// At most this many ticks are counted one by one in a missed record.
pub(crate) const MAX_MISSED_COUNT: u64 = 100_000;
use serde::{Deserialize, Serialize};

/// All replicated state. Serialized whole into snapshots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    /// Runbooks by name.
    pub runbooks: BTreeMap<String, RunbookEntry>,
    /// Schedules by name.
    pub schedules: BTreeMap<String, ScheduleState>,
    /// Runs by id.
    pub runs: BTreeMap<String, Run>,
    /// Run ids in the order they were created (key: log index of the creating entry).
    pub run_order: BTreeMap<u64, String>,
    /// Runs that are neither terminal nor waiting for an operator: the engine's work list.
    /// Changed only through [`State::activate`] and [`State::deactivate`].
    pub active_runs: BTreeSet<String>,
    /// The same runs by (creation time, id), the order the engine serves them in, in two
    /// disjoint parts: `queued_plain` holds the runs that wait for a worker and for nothing
    /// else (pending, no locks, no run timeout, not from a schedule, a first step that is a
    /// plain exec); `active_order` holds the rest. With every worker busy the engine skips the
    /// first part without reading a run. Derived: not serialized, rebuilt by
    /// [`State::from_json`] and kept up to date by [`State::apply`].
    #[serde(skip)]
    pub active_order: BTreeSet<(i64, String)>,
    /// See `active_order`.
    #[serde(skip)]
    pub queued_plain: BTreeSet<(i64, String)>,
    /// Active runs of each schedule (ticks, manual runs, backfills) by (creation time, id):
    /// a tick's overlap policy reads them. Derived like `active_order`.
    #[serde(skip)]
    pub active_by_schedule: BTreeMap<String, BTreeSet<(i64, String)>>,
    /// Unpaused schedules with a next tick, by (due time: the tick plus its jitter, name), so
    /// the engine reads only the due ones from the front. Derived like `active_order`.
    #[serde(skip)]
    pub fire_order: BTreeSet<(i64, String)>,
    /// Idempotency key -> run id.
    pub idempotency: BTreeMap<String, String>,
    /// Attempts that are assigned or running -> (run id, step index).
    pub active_attempts: BTreeMap<u64, (String, usize)>,
    /// Index of the last applied entry.
    pub applied_index: u64,
    /// Members added through membership changes: node id -> gRPC address. (The founding
    /// members' addresses come from each node's configuration.)
    #[serde(default)]
    pub members: BTreeMap<u64, String>,
    /// Held resource locks: lock name -> (run id, since when).
    #[serde(default)]
    pub locks: BTreeMap<String, (String, i64)>,
    /// Runs started by alerts: dedupe key (`RUNBOOK/TARGET`) -> the key's run, its firing
    /// alerts and its cooldown (see [`alerts`]).
    #[serde(default)]
    pub alert_runs: BTreeMap<String, alerts::AlertRun>,
}

/// A runbook and every version ever applied (runs are pinned to one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunbookEntry {
    /// The version new runs use.
    pub current: String,
    /// Every version by content hash.
    pub versions: BTreeMap<String, Runbook>,
    /// When the current version was applied.
    pub applied_at_ms: i64,
    /// Every apply that changed the runbook, oldest first: (version, when).
    #[serde(default)]
    pub history: Vec<(String, i64)>,
}

impl RunbookEntry {
    /// The current version.
    pub fn current(&self) -> &Runbook {
        &self.versions[&self.current]
    }
}

/// A schedule and its replicated firing position.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The definition.
    pub schedule: Schedule,
    /// The next tick to fire or record as missed; `None` if the expression has no future tick.
    pub next_fire_at_ms: Option<i64>,
    /// The last tick fired or recorded as missed.
    pub last_tick_ms: Option<i64>,
    /// Runs fired so far.
    pub runs_fired: u64,
    /// Ticks recorded as missed so far.
    pub ticks_missed: u64,
    /// Paused: no tick fires until it is unpaused.
    #[serde(default)]
    pub paused: bool,
    /// Why it was paused, by whom and when (shown by `schedule list`).
    #[serde(default)]
    pub pause_note: String,
    /// When it was paused (leader time).
    #[serde(default)]
    pub paused_at_ms: i64,
}

/// What the proposer of a command learns once it is applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Reply {
    /// Applied; nothing more to say.
    Done,
    /// A runbook or schedule was stored (`changed` is false for an identical re-apply).
    Applied {
        /// Content hash for runbooks, empty for schedules.
        version: String,
        /// False when the same definition was already there.
        changed: bool,
    },
    /// A run exists for the request (`deduplicated`: it was created by an earlier request).
    Run {
        /// The run id.
        run_id: String,
        /// True when an idempotency key matched an earlier run.
        deduplicated: bool,
    },
    /// The command was refused; state did not change.
    Rejected(String),
}

/// Work for the node after apply, outside the state machine.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A run changed: wake watchers.
    RunChanged(String),
    /// An attempt was committed: send it to its worker (leader only).
    Dispatch(Assignment),
    /// Ask a worker to stop an attempt.
    CancelAttempt {
        /// Worker id.
        worker: String,
        /// Attempt id.
        attempt_id: u64,
    },
    /// An attempt's outcome is committed: the worker may forget it.
    AckResult {
        /// Worker id.
        worker: String,
        /// Attempt id.
        attempt_id: u64,
    },
    /// Something `/metrics` records (see [`crate::metrics`]).
    Observe(Observation),
}

/// A measurement apply makes as it commits something (recorded by the node, not the state).
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A schedule's tick made its run (tick time, unix ms).
    Fired {
        /// The nominal tick.
        tick_ms: i64,
    },
    /// A run's first attempt started, this long after the run was triggered.
    RunStarted {
        /// Trigger to start, ms (leader stamps).
        after_ms: i64,
    },
}

/// A committed assignment, as sent to the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// Attempt id (the log index of the assigning entry).
    pub attempt_id: u64,
    /// Run id.
    pub run_id: String,
    /// Step id.
    pub step_id: String,
    /// Worker id.
    pub worker: String,
    /// Fencing token.
    pub fence: Fence,
    /// Rendered argv.
    pub argv: Vec<String>,
    /// Rendered environment.
    pub env: BTreeMap<String, String>,
    /// Rendered working directory.
    pub workdir: Option<String>,
    /// Step timeout.
    pub timeout_ms: Option<u64>,
    /// The worker process chosen (0: unknown).
    pub worker_boot: u64,
}

impl State {
    /// A state read from its JSON form (a snapshot, a backup), with its derived indexes built.
    pub fn from_json(bytes: &[u8]) -> serde_json::Result<State> {
        let mut state: State = serde_json::from_slice(bytes)?;
        for id in state.active_runs.clone() {
            state.reindex(&id);
        }
        state.fire_order = state.schedules.keys().filter_map(|name| state.fire_key(name)).collect();
        Ok(state)
    }

    /// Schedule `name`'s key in `fire_order`, if it belongs there.
    fn fire_key(&self, name: &str) -> Option<(i64, String)> {
        let s = self.schedules.get(name).filter(|s| !s.paused)?;
        let tick = s.next_fire_at_ms?;
        Some((tick.saturating_add(s.schedule.jitter_ms_for(tick)), name.to_string()))
    }

    /// Puts a run on the engine's work list.
    fn activate(&mut self, run_id: &str) {
        if self.runs.contains_key(run_id) && self.active_runs.insert(run_id.to_string()) {
            self.reindex(run_id);
        }
    }

    /// Takes a run off the engine's work list.
    fn deactivate(&mut self, run_id: &str) {
        if self.active_runs.remove(run_id) {
            self.reindex(run_id);
        }
    }

    /// Files run `run_id` in the right part of the engine's ordered index (or none), and
    /// among its schedule's active runs.
    fn reindex(&mut self, run_id: &str) {
        let Some(run) = self.runs.get(run_id) else { return };
        let key = (run.created_at_ms, run_id.to_string());
        let active = self.active_runs.contains(run_id);
        if let Some(name) = run.trigger.schedule() {
            if active {
                self.active_by_schedule.entry(name.to_string()).or_default().insert(key.clone());
            } else if let Some(runs) = self.active_by_schedule.get_mut(name) {
                runs.remove(&key);
                if runs.is_empty() {
                    self.active_by_schedule.remove(name);
                }
            }
        }
        let (add, remove) = if !active {
            self.active_order.remove(&key);
            self.queued_plain.remove(&key);
            return;
        } else if self.waits_only_for_a_worker(run) {
            (&mut self.queued_plain, &mut self.active_order)
        } else {
            (&mut self.active_order, &mut self.queued_plain)
        };
        remove.remove(&key);
        add.insert(key);
    }

    /// A pending run that needs a free worker and nothing else to start (see `active_order`).
    fn waits_only_for_a_worker(&self, run: &Run) -> bool {
        run.state == RunState::Pending
            && run.locks.is_empty()
            && run.trigger.schedule().is_none()
            && !run.paused
            && !run.cancel_requested
            && run.steps.first().is_some_and(|s| s.attempts.is_empty() && s.state == StepState::Pending)
            && self
                .runbook_of(run)
                .is_some_and(|rb| rb.timeout_ms.is_none() && rb.steps.first().is_some_and(|s| s.is_plain_exec()))
    }

    /// Applies one committed command at (`index`, `term`).
    pub fn apply(&mut self, index: u64, term: u64, cmd: Command) -> (Reply, Vec<Effect>) {
        // The commands that change a schedule's firing position or pause it.
        let schedule = match &cmd.op {
            Op::ApplySchedule { schedule } => Some(schedule.name.clone()),
            Op::Fire { schedule, .. } | Op::RecordMissed { schedule, .. } | Op::PauseSchedule { schedule, .. } => {
                Some(schedule.clone())
            }
            _ => None,
        };
        let filed = schedule.as_deref().and_then(|name| self.fire_key(name));
        let (reply, fx) = self.apply_op(index, term, cmd);
        // Every change to a run says so (`RunChanged`): refile those runs in the index.
        for e in &fx {
            if let Effect::RunChanged(id) = e {
                self.reindex(id);
            }
        }
        if let Some(name) = schedule {
            let key = self.fire_key(&name);
            if key != filed {
                if let Some(old) = filed {
                    self.fire_order.remove(&old);
                }
                if let Some(new) = key {
                    self.fire_order.insert(new);
                }
            }
        }
        (reply, fx)
    }

    fn apply_op(&mut self, index: u64, term: u64, cmd: Command) -> (Reply, Vec<Effect>) {
        self.applied_index = index;
        let mut fx = Vec::new();
        let now = cmd.at_ms;
        let reply = match cmd.op {
            Op::ApplyRunbook { runbook } => self.apply_runbook(runbook, now),
            Op::ApplySchedule { schedule } => self.apply_schedule(index, schedule, now, &mut fx),
            Op::StartRun { run_id, runbook, params, idempotency_key } => {
                self.start_run(index, now, run_id, &runbook, params, idempotency_key, &mut fx)
            }
            Op::Fire { schedule, tick_ms } => self.fire(index, now, &schedule, tick_ms, &mut fx),
            Op::TriggerSchedule { schedule, run_id, by } => {
                self.trigger_schedule(index, now, &schedule, run_id, &by, &mut fx)
            }
            Op::Backfill { schedule, tick_ms, by } => self.backfill(index, now, &schedule, tick_ms, &by, &mut fx),
            Op::PauseSchedule { schedule, paused, note, by } => {
                self.pause_schedule(index, now, &schedule, paused, note, &by, &mut fx)
            }
            Op::RecordMissed { schedule, first_tick_ms, last_tick_ms, count } => {
                self.record_missed(index, now, &schedule, first_tick_ms, last_tick_ms, count, &mut fx)
            }
            Op::Assign { run_id, step_id, worker, argv, env, workdir, timeout_ms, expected_attempts, worker_boot } => {
                if let Some(n) = expected_attempts
                    && self.runs.get(&run_id).and_then(|r| r.step(&step_id)).is_some_and(|s| s.attempts.len() != n)
                {
                    // Proposed for an earlier round of the step (a re-proposal that came late).
                    return (Reply::Done, fx);
                }
                let a = Assignment {
                    attempt_id: index,
                    run_id,
                    step_id,
                    worker,
                    fence: Fence { term, index },
                    argv,
                    env,
                    workdir,
                    timeout_ms,
                    worker_boot,
                };
                self.assign(now, a, &mut fx)
            }
            Op::RenderFailed { run_id, step_id, error } => self.render_failed(now, &run_id, &step_id, error, &mut fx),
            Op::AttemptStarted { attempt_id } => self.attempt_started(now, attempt_id, &mut fx),
            Op::AttemptFinished { attempt_id, state, exit_code, stdout_tail, stderr_tail, outputs, error } => {
                let result = AttemptResult { state, exit_code, stdout_tail, stderr_tail, outputs, error };
                self.attempt_finished(now, attempt_id, result, &mut fx)
            }
            Op::AttemptLost { attempt_id, reason } => {
                let result = AttemptResult {
                    state: AttemptState::Lost,
                    exit_code: None,
                    stdout_tail: String::new(),
                    stderr_tail: String::new(),
                    outputs: BTreeMap::new(),
                    error: Some(reason),
                };
                self.attempt_finished(now, attempt_id, result, &mut fx)
            }
            Op::AttemptUndelivered { attempt_id, reason } => self.attempt_undelivered(now, attempt_id, reason, &mut fx),
            Op::CancelRun { run_id, reason, by } => {
                if self.runs.get(&run_id).is_some_and(|r| !r.state.is_terminal()) {
                    self.record(&run_id, now, &by, "cancel", &reason);
                }
                self.cancel_run(now, &run_id, reason, &mut fx)
            }
            Op::PauseRun { run_id, reason, by } => self.pause_run(now, &run_id, reason, by, true, &mut fx),
            Op::ResumeRun { run_id, by } => self.pause_run(now, &run_id, String::new(), by, false, &mut fx),
            Op::RetryRun { run_id, from_step, by } => self.retry_run(now, &run_id, from_step.as_deref(), by, &mut fx),
            Op::SkipLost { run_id, reason, by } => self.skip_lost(now, &run_id, reason, by, &mut fx),
            Op::ForceFail { run_id, reason, by } => self.force_fail(now, &run_id, reason, by, &mut fx),
            Op::SkipStep { run_id, step_id, reason } => self.skip_step(now, &run_id, &step_id, reason, &mut fx),
            Op::OpenWait { run_id, step_id, prompt } => self.open_wait(now, &run_id, &step_id, prompt, &mut fx),
            Op::WaitElapsed { run_id, step_id } => self.wait_elapsed(now, &run_id, &step_id, &mut fx),
            Op::Decide { run_id, step_id, principal, groups, approve, reason, via, request_id } => {
                let decision = Decision { principal, approve, reason, at_ms: now, via, request_id };
                self.decide(&run_id, step_id.as_deref(), decision, &groups, &mut fx)
            }
            Op::TimeoutRun { run_id } => self.timeout_run(now, &run_id, &mut fx),
            Op::AcquireLocks { run_id } => self.acquire_locks(now, &run_id, &mut fx),
            Op::GuardFailed { run_id, gate, reason } => {
                // Only if the run still waits at the gate that was checked.
                if self.guard_gate(&run_id, now).is_some_and(|(g, _)| g == gate) {
                    let by = Actor { principal: "baton".into(), via: "guard".into() };
                    self.pause_run(now, &run_id, reason, by, true, &mut fx)
                } else {
                    Reply::Done
                }
            }
            Op::GuardsPassed { run_id } => {
                let waiting = self.runs.get(&run_id).is_some_and(|r| {
                    self.active_runs.contains(&run_id)
                        && r.finishing.is_none()
                        && !r.paused
                        && !r.cancel_requested
                        && next_step(r).is_none()
                });
                if waiting {
                    self.runs.get_mut(&run_id).expect("checked above").guards_after_passed = true;
                    self.settle(&run_id, now);
                    fx.push(Effect::RunChanged(run_id));
                }
                Reply::Done
            }
            Op::ExpandForeach { run_id, step_id, targets, workers } => {
                self.expand_foreach(&run_id, &step_id, targets, workers, now, &mut fx)
            }
            Op::StartRunAs { run_id, runbook, params, idempotency_key, by } => {
                self.start_run_as(index, now, run_id, &runbook, params, idempotency_key, &by, &mut fx)
            }
            Op::AlertNotified { key, firing, resolved, start, by, summary } => {
                let notice = alerts::AlertNotice { key, firing, resolved, start, by, summary };
                self.alert_notified(index, now, notice, &mut fx)
            }
        };
        (reply, fx)
    }

    /// Where a run with guards stands before its next step or batch: `(gate, guards)` when
    /// every current step is still pending and could start now (no retry backoff or bake to
    /// wait out, its locks held), or `("end", guards)` once every step is done and the run has
    /// not succeeded yet. The gate names the boundary (`step#attempts`); the guards must pass
    /// for it before the engine starts anything (or lets the run succeed). Handler steps
    /// (`on_failure`, `on_cancel`) are not guarded.
    pub fn guard_gate(&self, run_id: &str, now_ms: i64) -> Option<(String, &[baton_core::runbook::Guard])> {
        let run = self.runs.get(run_id)?;
        let guards = &self.runbook_of(run)?.guards;
        if guards.is_empty() || run.finishing.is_some() || run.paused || run.cancel_requested {
            return None;
        }
        if !self.active_runs.contains(run_id) || (!run.locks.is_empty() && !run.locks_held) {
            return None;
        }
        let current = current_steps(run);
        let Some(&first) = current.first() else {
            return (!run.guards_after_passed).then(|| (GUARD_GATE_END.to_string(), &guards[..]));
        };
        let ready = |si: &usize| run.steps[*si].state == StepState::Pending && run.steps[*si].not_before_ms <= now_ms;
        if !current.iter().all(ready) {
            return None;
        }
        let step = &run.steps[first];
        Some((format!("{}#{}", step.id, step.attempts.len()), guards))
    }

    /// The runbook version a run is pinned to.
    pub fn runbook_of(&self, run: &Run) -> Option<&Runbook> {
        self.runbooks.get(&run.runbook)?.versions.get(&run.version)
    }

    /// Runs, newest first, optionally of one runbook.
    pub fn runs_newest_first<'a>(&'a self, runbook: &'a str) -> impl Iterator<Item = &'a Run> + 'a {
        self.run_order
            .values()
            .rev()
            .filter_map(|id| self.runs.get(id))
            .filter(move |r| runbook.is_empty() || r.runbook == runbook)
    }

    /// How many attempts each worker has assigned or running.
    pub fn load_by_worker(&self) -> BTreeMap<&str, u32> {
        let mut load = BTreeMap::new();
        for (run_id, step) in self.active_attempts.values() {
            if let Some(a) = self.runs.get(run_id).and_then(|r| r.steps[*step].active_attempt()) {
                *load.entry(a.worker.as_str()).or_insert(0) += 1;
            }
        }
        load
    }

    fn apply_runbook(&mut self, runbook: Runbook, now: i64) -> Reply {
        let version = runbook.version.clone();
        let entry = self.runbooks.entry(runbook.name.clone()).or_insert_with(|| RunbookEntry {
            current: version.clone(),
            versions: BTreeMap::new(),
            applied_at_ms: now,
            history: Vec::new(),
        });
        let changed = entry.current != version || entry.versions.is_empty();
        if changed {
            entry.applied_at_ms = now;
            entry.history.push((version.clone(), now));
        }
        entry.current = version.clone();
        entry.versions.entry(version.clone()).or_insert(runbook);
        Reply::Applied { version, changed }
    }

    fn apply_schedule(&mut self, index: u64, schedule: Schedule, now: i64, fx: &mut Vec<Effect>) -> Reply {
        if !self.runbooks.contains_key(&schedule.runbook) {
            return Reply::Rejected(format!(
                "schedule {}: runbook {:?} does not exist; apply it first",
                schedule.name, schedule.runbook
            ));
        }
        let rb = self.runbooks[&schedule.runbook].current();
        if let Err(e) = rb.resolve_params(&schedule.params) {
            return Reply::Rejected(format!("schedule {}: {e}", schedule.name));
        }
        if let Some(old) = self.schedules.get(&schedule.name)
            && old.schedule == schedule
        {
            return Reply::Applied { version: String::new(), changed: false };
        }
        let (fired, mut missed, mut last, overdue) = match self.schedules.get(&schedule.name) {
            Some(old) => {
                (old.runs_fired, old.ticks_missed, old.last_tick_ms, old.next_fire_at_ms.filter(|t| *t <= now))
            }
            None => (0, 0, None, None),
        };
        let (paused, pause_note, paused_at_ms) = self
            .schedules
            .get(&schedule.name)
            .map(|old| (old.paused, old.pause_note.clone(), old.paused_at_ms))
            .unwrap_or_default();
        // A changed definition continues after the last tick handled, never before it (a
        // leader's clock may be behind the tick that fired): a tick never fires twice.
        let base = last.map_or(now, |l| l.max(now));
        let next = schedule.next_after(base);
        if let Some(tick) = overdue {
            // The tick that was due under the old definition is not run, but not silently.
            self.insert_run(index, missed_record(&schedule.name, &schedule.runbook, tick, tick, 1, now), fx);
            missed += 1;
            last = Some(tick.max(last.unwrap_or(tick)));
        }
        self.schedules.insert(
            schedule.name.clone(),
            ScheduleState {
                schedule,
                next_fire_at_ms: next,
                last_tick_ms: last,
                runs_fired: fired,
                ticks_missed: missed,
                paused,
                pause_note,
                paused_at_ms,
            },
        );
        Reply::Applied { version: String::new(), changed: true }
    }

    #[allow(clippy::too_many_arguments)]
    fn start_run(
        &mut self,
        index: u64,
        now: i64,
        run_id: String,
        runbook: &str,
        params: BTreeMap<String, serde_json::Value>,
        idempotency_key: Option<String>,
        fx: &mut Vec<Effect>,
    ) -> Reply {
        if let Some(key) = &idempotency_key
            && let Some(existing) = self.idempotency.get(key)
        {
            return Reply::Run { run_id: existing.clone(), deduplicated: true };
        }
        if self.runs.contains_key(&run_id) {
            // The same request proposed again (after a leader change): not a duplicate trigger.
            return Reply::Run { run_id, deduplicated: false };
        }
        let Some(entry) = self.runbooks.get(runbook) else {
            return Reply::Rejected(format!("runbook {runbook:?} does not exist"));
        };
        let rb = entry.current();
        let params = match rb.resolve_params(&params) {
            Ok(p) => p,
            Err(e) => return Reply::Rejected(e.to_string()),
        };
        let run = match new_run(rb, run_id.clone(), params, Trigger::Api, now, idempotency_key.clone()) {
            Ok(run) => run,
            Err(e) => return Reply::Rejected(e),
        };
        if let Some(why) = self.budget_refusal(rb, &run, now) {
            return Reply::Rejected(why);
        }
        if let Some(key) = idempotency_key {
            self.idempotency.insert(key, run_id.clone());
        }
        self.insert_run(index, run, fx);
        Reply::Run { run_id, deduplicated: false }
    }

    fn fire(&mut self, index: u64, now: i64, name: &str, tick_ms: i64, fx: &mut Vec<Effect>) -> Reply {
        let Some(s) = self.schedules.get(name) else {
            return Reply::Rejected(format!("schedule {name:?} does not exist"));
        };
        if s.next_fire_at_ms != Some(tick_ms) {
            // Already fired (or recorded as missed): a tick makes at most one run.
            return Reply::Done;
        }
        let schedule = s.schedule.clone();
        let run_id = Run::scheduled_id(name, tick_ms);
        let advance = |state: &mut State, fired: bool| {
            let s = state.schedules.get_mut(name).expect("checked above");
            s.last_tick_ms = Some(tick_ms);
            s.next_fire_at_ms = schedule.next_after(tick_ms);
            if fired {
                s.runs_fired += 1;
            } else {
                s.ticks_missed += 1;
            }
        };
        if self.runs.contains_key(&run_id) {
            // This tick already made its run (under an earlier definition, or a backfill).
            let s = self.schedules.get_mut(name).expect("checked above");
            s.last_tick_ms = Some(tick_ms);
            s.next_fire_at_ms = schedule.next_after(tick_ms);
            return Reply::Done;
        }
        let refusal = match schedule.blackout_at(tick_ms) {
            Some((BlackoutAction::Skip, until)) => {
                Some(format!("skipped: the tick falls in a blackout window (until {until}, action: skip)"))
            }
            _ => self.overlap_refusal(name, schedule.overlap),
        };
        if let Some(why) = refusal {
            // The tick starts nothing, and says so.
            let mut record = missed_record(name, &schedule.runbook, tick_ms, tick_ms, 1, now);
            record.error = Some(why);
            advance(self, false);
            let id = record.id.clone();
            self.insert_run(index, record, fx);
            return Reply::Run { run_id: id, deduplicated: false };
        }
        let trigger = Trigger::Schedule { name: name.to_string(), tick_ms };
        self.start_scheduled(index, now, &schedule, run_id.clone(), trigger, fx);
        advance(self, true);
        fx.push(Effect::Observe(Observation::Fired { tick_ms }));
        Reply::Run { run_id, deduplicated: false }
    }

    /// Why a new run of schedule `name` may not start under `overlap` now, if it may not.
    fn overlap_refusal(&self, name: &str, overlap: Overlap) -> Option<String> {
        let others = self.active_runs_of(name);
        match overlap {
            Overlap::Skip if !others.is_empty() => {
                Some(format!("skipped: run {} of this schedule is still going (overlap: skip)", others[0]))
            }
            Overlap::BufferOne if others.len() >= 2 => Some(format!(
                "skipped: run {} of this schedule is still going and run {} already waits for it (overlap: buffer_one)",
                others[0], others[1]
            )),
            _ => None,
        }
    }

    /// Active runs of a schedule (ticks, manual runs and backfills), oldest first.
    pub fn active_runs_of(&self, name: &str) -> Vec<String> {
        self.active_by_schedule.get(name).map_or_else(Vec::new, |runs| runs.iter().map(|(_, id)| id.clone()).collect())
    }

    /// Creates a run of a schedule (its overlap policy already allows it): runs it supersedes
    /// are asked to stop (`cancel_other`) or ended at once (`terminate_other`). A run whose
    /// params no longer fit the runbook still leaves a visible, failed record.
    fn start_scheduled(
        &mut self,
        index: u64,
        now: i64,
        schedule: &Schedule,
        run_id: String,
        trigger: Trigger,
        fx: &mut Vec<Effect>,
    ) {
        let others = self.active_runs_of(&schedule.name);
        let created = match self.runbooks.get(&schedule.runbook) {
            None => Err(format!("runbook {:?} does not exist", schedule.runbook)),
            Some(entry) => {
                let rb = entry.current();
                rb.resolve_params(&schedule.params)
                    .map_err(|e| e.to_string())
                    .and_then(|p| new_run(rb, run_id.clone(), p, trigger.clone(), now, None))
                    .and_then(|run| match self.budget_refusal(rb, &run, now) {
                        Some(why) => Err(why),
                        None => Ok(run),
                    })
            }
        };
        let supersede = created.is_ok() && !matches!(trigger, Trigger::Backfill { .. });
        let run = created.unwrap_or_else(|error| {
            let mut run = missed_record(&schedule.name, &schedule.runbook, 0, 0, 0, now);
            run.id = run_id.clone();
            run.trigger = trigger;
            run.state = RunState::Failed;
            run.error = Some(error);
            run
        });
        self.insert_run(index, run, fx);
        if supersede {
            // Only a run that exists supersedes the others.
            let reason = format!("superseded by run {run_id} (overlap: {})", schedule.overlap.as_str());
            for other in others {
                match schedule.overlap {
                    Overlap::CancelOther => {
                        self.cancel_run(now, &other, reason.clone(), fx);
                    }
                    Overlap::TerminateOther => {
                        self.end_now(now, &other, RunState::Cancelled, format!("terminated: {reason}"), fx);
                    }
                    _ => {}
                }
            }
        }
    }

    fn trigger_schedule(
        &mut self,
        index: u64,
        now: i64,
        name: &str,
        run_id: String,
        by: &Actor,
        fx: &mut Vec<Effect>,
    ) -> Reply {
        let Some(s) = self.schedules.get(name) else {
            return Reply::Rejected(format!("schedule {name:?} does not exist"));
        };
        if self.runs.contains_key(&run_id) {
            return Reply::Run { run_id, deduplicated: false };
        }
        let schedule = s.schedule.clone();
        if let Some(why) = self.overlap_refusal(name, schedule.overlap) {
            return Reply::Rejected(format!("schedule {name}: nothing started; {why}"));
        }
        self.start_scheduled(index, now, &schedule, run_id.clone(), Trigger::Manual { schedule: name.into() }, fx);
        self.record(&run_id, now, by, "trigger", "");
        Reply::Run { run_id, deduplicated: false }
    }

    fn backfill(&mut self, index: u64, now: i64, name: &str, tick_ms: i64, by: &Actor, fx: &mut Vec<Effect>) -> Reply {
        let Some(s) = self.schedules.get(name) else {
            return Reply::Rejected(format!("schedule {name:?} does not exist"));
        };
        if tick_ms > now {
            return Reply::Rejected(format!("backfill {name}: tick {tick_ms} is in the future (now {now})"));
        }
        let schedule = s.schedule.clone();
        if schedule.next_after(tick_ms.saturating_sub(1)) != Some(tick_ms) {
            return Reply::Rejected(format!("backfill {name}: {tick_ms} is not a tick of schedule {name}"));
        }
        // A tick that made its run (fired or backfilled earlier) is not run again.
        let run_id = Run::scheduled_id(name, tick_ms);
        if self.runs.contains_key(&run_id) {
            return Reply::Run { run_id, deduplicated: true };
        }
        let trigger = Trigger::Backfill { schedule: name.into(), tick_ms };
        self.start_scheduled(index, now, &schedule, run_id.clone(), trigger, fx);
        self.record(&run_id, now, by, "backfill", "");
        Reply::Run { run_id, deduplicated: false }
    }

    #[allow(clippy::too_many_arguments)]
    fn pause_schedule(
        &mut self,
        index: u64,
        now: i64,
        name: &str,
        paused: bool,
        note: String,
        by: &Actor,
        fx: &mut Vec<Effect>,
    ) -> Reply {
        let Some(s) = self.schedules.get_mut(name) else {
            return Reply::Rejected(format!("schedule {name:?} does not exist"));
        };
        if s.paused == paused {
            let already = if paused { "is already paused" } else { "is not paused" };
            return Reply::Rejected(format!("schedule {name} {already}"));
        }
        s.paused = paused;
        if paused {
            let who = if by.principal.is_empty() { "someone" } else { by.principal.as_str() };
            s.pause_note =
                if note.is_empty() { format!("paused by {who}") } else { format!("paused by {who}: {note}") };
            s.paused_at_ms = now;
            return Reply::Done;
        }
        s.pause_note.clear();
        // Ticks that passed while paused did not run: one visible record for all of them.
        let (Some(first), schedule) = (s.next_fire_at_ms.filter(|t| *t <= now), s.schedule.clone()) else {
            s.next_fire_at_ms = s.next_fire_at_ms.or_else(|| s.schedule.next_after(now));
            return Reply::Done;
        };
        let mut last = first;
        let mut count = 1;
        while let Some(next) = schedule.next_after(last) {
            if next > now || count >= MAX_MISSED_COUNT {
                break;
            }
            last = next;
            count += 1;
        }
        s.last_tick_ms = Some(last);
        s.next_fire_at_ms = schedule.next_after(now.max(last));
        s.ticks_missed += count;
        let mut record = missed_record(name, &schedule.runbook, first, last, count, now);
        record.error = Some(format!("{count} tick(s) from {first} to {last} did not run: the schedule was paused"));
        self.insert_run(index, record, fx);
        Reply::Done
    }

    #[allow(clippy::too_many_arguments)]
    fn record_missed(
        &mut self,
        index: u64,
        now: i64,
        name: &str,
        first_tick_ms: i64,
        last_tick_ms: i64,
        count: u64,
        fx: &mut Vec<Effect>,
    ) -> Reply {
        let Some(s) = self.schedules.get_mut(name) else {
            return Reply::Rejected(format!("schedule {name:?} does not exist"));
        };
        if s.next_fire_at_ms != Some(first_tick_ms) || last_tick_ms < first_tick_ms || count == 0 {
            return Reply::Done;
        }
        s.last_tick_ms = Some(last_tick_ms);
        s.next_fire_at_ms = s.schedule.next_after(last_tick_ms);
        s.ticks_missed += count;
        let run = missed_record(name, &s.schedule.runbook.clone(), first_tick_ms, last_tick_ms, count, now);
        let id = run.id.clone();
        self.insert_run(index, run, fx);
        Reply::Run { run_id: id, deduplicated: false }
    }

    fn assign(&mut self, now: i64, a: Assignment, fx: &mut Vec<Effect>) -> Reply {
        if !self.active_runs.contains(&a.run_id) {
            // Ended, or waiting for an operator: nothing more is assigned.
            return Reply::Done;
        }
        let Some(run) = self.runs.get_mut(&a.run_id) else {
            return Reply::Rejected(format!("run {:?} does not exist", a.run_id));
        };
        let Some(si) = current_index(run, &a.step_id) else { return Reply::Done };
        let step = &mut run.steps[si];
        // Only a current pending step may be assigned, and only once at a time.
        if step.id != a.step_id
            || step.state != StepState::Pending
            || run.cancel_requested
            || run.paused
            || (!run.locks.is_empty() && !run.locks_held)
        {
            return Reply::Done;
        }
        let number = step.attempts.len() as u32 + 1;
        step.attempts.push(Attempt {
            id: a.attempt_id,
            number,
            worker: a.worker.clone(),
            fence: a.fence,
            state: AttemptState::Assigned,
            assigned_at_ms: now,
            started_at_ms: 0,
            finished_at_ms: 0,
            exit_code: None,
            error: None,
            argv: a.argv.clone(),
            worker_boot: a.worker_boot,
        });
        step.state = StepState::Running;
        if step.started_at_ms == 0 {
            step.started_at_ms = now;
        }
        if run.state == RunState::Pending {
            run.state = RunState::Running;
            run.started_at_ms = now;
        }
        self.active_attempts.insert(a.attempt_id, (a.run_id.clone(), si));
        fx.push(Effect::RunChanged(a.run_id.clone()));
        fx.push(Effect::Dispatch(a));
        Reply::Done
    }

    /// An attempt that never reached its worker: it did not run, so it is taken back and the
    /// step waits for a new assignment. One that was reported started did reach it, and one of
    /// a run that is being stopped ends as cancelled; both go the usual way.
    fn attempt_undelivered(&mut self, now: i64, attempt_id: u64, reason: String, fx: &mut Vec<Effect>) -> Reply {
        let Some((run_id, si)) = self.active_attempts.get(&attempt_id).cloned() else { return Reply::Done };
        let run = self.runs.get_mut(&run_id).expect("active attempt has a run");
        let phase = run.phase();
        let step = &mut run.steps[si];
        let Some(pos) = step.attempts.iter().position(|a| a.id == attempt_id) else { return Reply::Done };
        // Only a step the run is still on is assigned again; one of a run being stopped, or
        // left behind when the run went on to its handlers, ends as cancelled.
        if step.attempts[pos].state != AttemptState::Assigned
            || run.cancel_requested
            || run.state.is_terminal()
            || step.block != phase
        {
            let state = if step.attempts[pos].state == AttemptState::Assigned {
                AttemptState::Cancelled
            } else {
                AttemptState::Lost
            };
            let result = AttemptResult {
                state,
                exit_code: None,
                stdout_tail: String::new(),
                stderr_tail: String::new(),
                outputs: BTreeMap::new(),
                error: Some(reason),
            };
            return self.attempt_finished(now, attempt_id, result, fx);
        }
        let attempt = step.attempts.remove(pos);
        step.state = StepState::Pending;
        let step_id = step.id.clone();
        if run.steps.iter().all(|s| s.attempts.is_empty() && s.state == StepState::Pending) {
            // Nothing of the run has happened after all: it is pending again, as before.
            run.state = RunState::Pending;
            run.started_at_ms = 0;
            run.steps[si].started_at_ms = 0;
        }
        self.active_attempts.remove(&attempt_id);
        let by = Actor { principal: "baton".into(), via: "dispatch".into() };
        let detail =
            format!("attempt {attempt_id} of step {step_id} on worker {} taken back: {reason}", attempt.worker);
        self.record(&run_id, now, &by, "reassign", &detail);
        fx.push(Effect::RunChanged(run_id));
        Reply::Done
    }

    fn render_failed(&mut self, now: i64, run_id: &str, step_id: &str, error: String, fx: &mut Vec<Effect>) -> Reply {
        if !self.active_runs.contains(run_id) {
            return Reply::Done;
        }
        let Some(run) = self.runs.get_mut(run_id) else { return Reply::Done };
        let Some(si) = current_index(run, step_id) else { return Reply::Done };
        let step = &mut run.steps[si];
        if step.id != step_id || step.state != StepState::Pending {
            return Reply::Done;
        }
        self.fail_step(run_id, si, format!("could not render inputs: {error}"), now, fx);
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    fn skip_step(&mut self, now: i64, run_id: &str, step_id: &str, reason: String, fx: &mut Vec<Effect>) -> Reply {
        if !self.active_runs.contains(run_id) {
            return Reply::Done;
        }
        let Some(run) = self.runs.get_mut(run_id) else { return Reply::Done };
        let Some(si) = current_index(run, step_id) else { return Reply::Done };
        let step = &mut run.steps[si];
        if step.id != step_id || step.state != StepState::Pending || !step.attempts.is_empty() {
            return Reply::Done;
        }
        step.state = StepState::Skipped;
        step.error = Some(reason);
        step.started_at_ms = now;
        step.finished_at_ms = now;
        if run.state == RunState::Pending {
            run.state = RunState::Running;
            run.started_at_ms = now;
        }
        self.group_progress(run_id, si, now);
        self.settle(run_id, now);
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    /// Adds an operator action to the run's history.
    fn record(&mut self, run_id: &str, now: i64, by: &Actor, action: &str, detail: &str) {
        if let Some(run) = self.runs.get_mut(run_id) {
            run.events.push(RunEvent {
                at_ms: now,
                principal: by.principal.clone(),
                via: by.via.clone(),
                action: action.to_string(),
                detail: detail.to_string(),
            });
        }
    }

    fn pause_run(
        &mut self,
        now: i64,
        run_id: &str,
        reason: String,
        by: Actor,
        pause: bool,
        fx: &mut Vec<Effect>,
    ) -> Reply {
        let Some(run) = self.runs.get_mut(run_id) else {
            return Reply::Rejected(format!("run {run_id:?} does not exist"));
        };
        let verb = if pause { "paused" } else { "resumed" };
        if run.state.is_terminal() || run.cancel_requested {
            return Reply::Rejected(format!(
                "run {run_id} is {}; only a run that has not ended can be {verb}",
                run_state_text(run)
            ));
        }
        if run.paused == pause {
            let already = if pause { "is already paused" } else { "is not paused" };
            return Reply::Rejected(format!("run {run_id} {already}"));
        }
        run.paused = pause;
        run.pause_reason = if pause { reason.clone() } else { String::new() };
        self.record(run_id, now, &by, if pause { "pause" } else { "resume" }, &reason);
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    fn retry_run(&mut self, now: i64, run_id: &str, from: Option<&str>, by: Actor, fx: &mut Vec<Effect>) -> Reply {
        let Some(run) = self.runs.get(run_id) else {
            return Reply::Rejected(format!("run {run_id:?} does not exist"));
        };
        if !matches!(run.state, RunState::Failed | RunState::Cancelled | RunState::NeedsAttention) {
            return Reply::Rejected(format!(
                "run {run_id} is {}; only a failed, cancelled or needs_attention run can be retried",
                run_state_text(run)
            ));
        }
        if self.runbook_of(run).is_none() {
            return Reply::Rejected(format!("run {run_id} has no runbook version to run again; start a new run"));
        }
        let running: Vec<String> = running_attempts(run).map(|id| id.to_string()).collect();
        if !running.is_empty() {
            return Reply::Rejected(format!(
                "run {run_id} still has attempt(s) {} being stopped; retry once they have ended",
                running.join(", ")
            ));
        }
        let first_open =
            run.steps.iter().position(|s| s.block == Block::Main && !(s.state.is_done() || s.failure_tolerated));
        let index = match from {
            Some(id) => match run.steps.iter().position(|s| s.id == id) {
                Some(i) => i,
                None => {
                    let ids: Vec<&str> = run.steps.iter().map(|s| s.id.as_str()).collect();
                    return Reply::Rejected(format!(
                        "run {run_id} has no step {id:?}; its steps are {}",
                        if ids.is_empty() { "none".to_string() } else { ids.join(", ") }
                    ));
                }
            },
            None => match first_open {
                Some(i) => i,
                None => return Reply::Rejected(format!("run {run_id} has no step left to retry")),
            },
        };
        if let Some(open) = first_open
            && index > open
        {
            let (from, open) = (&run.steps[index].id, &run.steps[open].id);
            return Reply::Rejected(format!(
                "step {from} comes after step {open}, which did not succeed; retry from {open} or an earlier step"
            ));
        }
        if run.steps[index].block != Block::Main {
            let id = &run.steps[index].id;
            return Reply::Rejected(format!("step {id} is an on_failure/on_cancel step; retry from a main step"));
        }
        let from_id = run.steps[index].id.clone();
        let run = self.runs.get_mut(run_id).expect("checked above");
        run.finishing = None;
        run.handlers_ran = false;
        run.guards_after_passed = false;
        for step in &mut run.steps[index..] {
            let attempts = step.attempts.len() as u32;
            let kept = std::mem::take(&mut step.attempts);
            *step = StepRun {
                attempts: kept,
                retry_base: attempts,
                block: step.block,
                spec: std::mem::take(&mut step.spec),
                group: step.group.take(),
                batch: step.batch,
                target: step.target.take(),
                target_worker: step.target_worker.take(),
                ..StepRun::pending(&step.id)
            };
        }
        let started = run.steps[..index].iter().any(|s| s.started_at_ms > 0);
        run.state = if started { RunState::Running } else { RunState::Pending };
        run.finished_at_ms = 0;
        run.error = None;
        run.cancel_requested = false;
        run.timed_out = false;
        run.paused = false;
        run.pause_reason.clear();
        run.timer_start_ms = now;
        self.activate(run_id);
        self.record(run_id, now, &by, "retry", &format!("from step {from_id}"));
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    fn skip_lost(&mut self, now: i64, run_id: &str, reason: String, by: Actor, fx: &mut Vec<Effect>) -> Reply {
        let Some(run) = self.runs.get_mut(run_id) else {
            return Reply::Rejected(format!("run {run_id:?} does not exist"));
        };
        let lost = run.steps.iter().position(|s| s.state == StepState::Lost);
        let (RunState::NeedsAttention, Some(si)) = (run.state, lost) else {
            return Reply::Rejected(format!(
                "run {run_id} is {}; only a needs_attention run can skip its lost step",
                run_state_text(run)
            ));
        };
        let step = &mut run.steps[si];
        let who = if by.principal.is_empty() { "an operator".to_string() } else { by.principal.clone() };
        step.state = StepState::Skipped;
        step.error = Some(format!("outcome unknown; skipped by {who}{}", reason_suffix(&reason)));
        step.finished_at_ms = now;
        let skipped = step.id.clone();
        self.record(run_id, now, &by, "skip", &format!("step {skipped}{}", reason_suffix(&reason)));
        let run = self.runs.get_mut(run_id).expect("checked above");
        if let Some(other) = run.steps.iter().find(|s| s.state == StepState::Lost) {
            // Another step's outcome is unknown too: the run still needs an operator.
            run.error = Some(format!("step {skipped} skipped; step {} was lost too and needs a decision", other.id));
            fx.push(Effect::RunChanged(run_id.to_string()));
            return Reply::Done;
        }
        run.state = RunState::Running;
        run.error = None;
        self.activate(run_id);
        self.group_progress(run_id, si, now);
        self.settle(run_id, now);
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    fn force_fail(&mut self, now: i64, run_id: &str, reason: String, by: Actor, fx: &mut Vec<Effect>) -> Reply {
        let Some(run) = self.runs.get(run_id) else {
            return Reply::Rejected(format!("run {run_id:?} does not exist"));
        };
        if run.state.is_terminal() {
            return Reply::Rejected(format!("run {run_id} is {} already", run.state.as_str()));
        }
        let who = if by.principal.is_empty() { "an operator".to_string() } else { by.principal.clone() };
        let error = format!("force-failed by {who}{}", reason_suffix(&reason));
        self.end_now(now, run_id, RunState::Failed, error, fx);
        self.record(run_id, now, &by, "force_fail", &reason);
        Reply::Done
    }

    /// Ends a run that has not ended in `state` at once: waiting steps are cancelled, running
    /// attempts are asked to stop (their results are still recorded when they come, without
    /// changing the run).
    fn end_now(&mut self, now: i64, run_id: &str, state: RunState, error: String, fx: &mut Vec<Effect>) {
        let Some(run) = self.runs.get_mut(run_id).filter(|r| !r.state.is_terminal()) else { return };
        for step in run.steps.iter_mut().filter(|s| s.state == StepState::Waiting) {
            step.state = StepState::Cancelled;
            step.finished_at_ms = now;
        }
        for a in run.steps.iter().filter_map(|s| s.active_attempt()) {
            fx.push(Effect::CancelAttempt { worker: a.worker.clone(), attempt_id: a.id });
        }
        run.cancel_requested = true;
        // Ended by hand or superseded: its on_failure / on_cancel steps do not run.
        run.handlers_ran = true;
        if let Some(f) = run.finishing.take() {
            run.error = f.error;
        }
        self.finish_run(run_id, state, Some(error), now);
        fx.push(Effect::RunChanged(run_id.to_string()));
    }

    /// The run's current step if it is `step_id` in `state`, with the step's action.
    fn current_step(&self, run_id: &str, step_id: &str, state: StepState) -> Option<(usize, Action)> {
        if !self.active_runs.contains(run_id) {
            return None;
        }
        let run = self.runs.get(run_id)?;
        let si = current_index(run, step_id)?;
        let step = &run.steps[si];
        let blocked = state == StepState::Pending && (run.paused || (!run.locks.is_empty() && !run.locks_held));
        if step.id != step_id || step.state != state || run.cancel_requested || blocked {
            return None;
        }
        Some((si, self.spec_of(run_id, si)?.action.clone()))
    }

    fn open_wait(&mut self, now: i64, run_id: &str, step_id: &str, prompt: String, fx: &mut Vec<Effect>) -> Reply {
        let Some((si, action)) = self.current_step(run_id, step_id, StepState::Pending) else { return Reply::Done };
        let (wait_ms, approval) = match action {
            Action::Sleep(s) => (s.duration_ms, None),
            Action::Approval(a) => {
                let request = ApprovalRequest { prompt, approvers: a.approvers, min_approvals: a.min_approvals };
                (a.timeout_ms, Some(request))
            }
            Action::Exec(_) => return Reply::Rejected(format!("step {step_id} runs on a worker; it cannot wait")),
        };
        let run = self.runs.get_mut(run_id).expect("checked by current_step");
        let step = &mut run.steps[si];
        step.approval = approval;
        step.state = StepState::Waiting;
        step.started_at_ms = now;
        step.deadline_ms = now.saturating_add(i64::try_from(wait_ms).unwrap_or(i64::MAX));
        if run.state == RunState::Pending {
            run.state = RunState::Running;
            run.started_at_ms = now;
        }
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    fn wait_elapsed(&mut self, now: i64, run_id: &str, step_id: &str, fx: &mut Vec<Effect>) -> Reply {
        let Some((si, action)) = self.current_step(run_id, step_id, StepState::Waiting) else { return Reply::Done };
        let run = self.runs.get_mut(run_id).expect("checked by current_step");
        if now < run.steps[si].deadline_ms {
            // Proposed early (a leader's clock ahead of the one that opened the wait): not yet.
            return Reply::Done;
        }
        match action {
            Action::Approval(a) => {
                let approvals = run.steps[si].decisions.iter().filter(|d| d.approve).count();
                let error = format!(
                    "denied: no decision within {} ({approvals} of {} approval(s))",
                    baton_core::duration::format_duration(a.timeout_ms),
                    a.min_approvals
                );
                self.fail_step(run_id, si, error, now, fx);
            }
            _ => self.wait_succeeded(run_id, si, now),
        }
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    fn decide(
        &mut self,
        run_id: &str,
        step_id: Option<&str>,
        d: Decision,
        groups: &[String],
        fx: &mut Vec<Effect>,
    ) -> Reply {
        let Some(run) = self.runs.get(run_id) else {
            return Reply::Rejected(format!("run {run_id:?} does not exist"));
        };
        let seen = |p: &Decision| !d.request_id.is_empty() && p.request_id == d.request_id;
        if run.steps.iter().any(|s| s.decisions.iter().any(seen)) {
            // This request was applied already (it was proposed again after a leader change).
            return Reply::Done;
        }
        // The approval asked for, or the first one the run waits on (several can wait at once in
        // a parallel group).
        let approval = current_steps(run)
            .into_iter()
            .filter(|si| run.steps[*si].state == StepState::Waiting)
            .filter(|si| step_id.is_none_or(|wanted| run.steps[*si].id == wanted))
            .find_map(|si| match &self.spec_of(run_id, si)?.action {
                Action::Approval(a) => Some((si, a.clone())),
                _ => None,
            })
            .or_else(|| {
                // Not the one asked for: answer about the one that waits.
                current_steps(run).into_iter().filter(|si| run.steps[*si].state == StepState::Waiting).find_map(|si| {
                    match &self.spec_of(run_id, si)?.action {
                        Action::Approval(a) => Some((si, a.clone())),
                        _ => None,
                    }
                })
            });
        let Some((si, rules)) = approval.filter(|_| self.active_runs.contains(run_id) && !run.cancel_requested) else {
            return Reply::Rejected(format!("run {run_id} is {} and waits for no approval", run_state_text(run)));
        };
        let id = run.steps[si].id.clone();
        if let Some(wanted) = step_id
            && wanted != id
        {
            return Reply::Rejected(format!("run {run_id} waits for approval of step {id}, not {wanted}"));
        }
        let allowed = rules.approvers.iter().any(|a| match a.strip_prefix("group:") {
            Some(group) => groups.iter().any(|g| g == group),
            None => *a == d.principal,
        });
        if !allowed {
            return Reply::Rejected(format!(
                "{} may not decide on step {id} of run {run_id}; its approvers are {}",
                d.principal,
                rules.approvers.join(", ")
            ));
        }
        if run.steps[si].decisions.iter().any(|p| p.principal == d.principal) {
            return Reply::Rejected(format!("{} already decided on step {id} of run {run_id}", d.principal));
        }
        let now = d.at_ms;
        let (approve, who, reason) = (d.approve, d.principal.clone(), d.reason.clone());
        let by = Actor { principal: d.principal.clone(), via: d.via.clone() };
        let action = if approve { "approve" } else { "deny" };
        self.record(run_id, now, &by, action, &format!("step {id}{}", reason_suffix(&reason)));
        let run = self.runs.get_mut(run_id).expect("checked above");
        let step = &mut run.steps[si];
        step.decisions.push(d);
        if !approve {
            let why = if reason.is_empty() { String::new() } else { format!(": {reason}") };
            self.fail_step(run_id, si, format!("denied by {who}{why}"), now, fx);
        } else {
            let approved: Vec<&str> =
                step.decisions.iter().filter(|d| d.approve).map(|d| d.principal.as_str()).collect();
            if approved.len() >= rules.min_approvals as usize {
                step.outputs.insert("approved_by".into(), approved.join(","));
                self.wait_succeeded(run_id, si, now);
            }
        }
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    /// A waiting step (a sleep that is over, an approval with enough approvals) succeeded.
    fn wait_succeeded(&mut self, run_id: &str, si: usize, now: i64) {
        let step = &mut self.runs.get_mut(run_id).expect("a current step's run").steps[si];
        step.state = StepState::Succeeded;
        step.finished_at_ms = now;
        step.deadline_ms = 0;
        self.group_progress(run_id, si, now);
        self.settle(run_id, now);
    }

    fn timeout_run(&mut self, now: i64, run_id: &str, fx: &mut Vec<Effect>) -> Reply {
        let Some(run) = self.runs.get_mut(run_id) else { return Reply::Done };
        if run.state.is_terminal() || run.cancel_requested {
            return Reply::Done;
        }
        run.timed_out = true;
        let limit = self.runbook_of(&self.runs[run_id]).and_then(|rb| rb.timeout_ms).unwrap_or(0);
        let reason = format!("the run's timeout ({}) passed", baton_core::duration::format_duration(limit));
        self.cancel_run(now, run_id, reason, fx)
    }

    /// Step `si` (the current one) failed without an attempt outcome: the run fails, unless
    /// the step tolerates failure and the run goes on.
    fn fail_step(&mut self, run_id: &str, si: usize, error: String, now: i64, fx: &mut Vec<Effect>) {
        let tolerated = self.spec_of(run_id, si).is_some_and(|s| s.continue_on_error);
        let run = self.runs.get_mut(run_id).expect("fail_step on an existing run");
        let step = &mut run.steps[si];
        step.state = StepState::Failed;
        step.error = Some(error.clone());
        step.finished_at_ms = now;
        step.deadline_ms = 0;
        let step_id = step.id.clone();
        let group_failure = self.target_failed(run_id, si, now);
        let run = self.runs.get_mut(run_id).expect("checked above");
        match group_failure {
            Some(why) if !tolerated => {
                let message = why.unwrap_or_else(|| format!("step {step_id} failed: {error}"));
                self.finish_run(run_id, RunState::Failed, Some(message), now);
                self.stop_others(run_id, fx);
            }
            _ => {
                run.steps[si].failure_tolerated = true;
                self.group_progress(run_id, si, now);
                self.settle(run_id, now);
            }
        }
    }

    /// A foreach target (step `si`) failed: `None` if `max_failures` tolerates it; otherwise
    /// `Some(why)` (with the group's reason for a target, `None` inside for any other step).
    /// When the group fails, its targets that did not start are cancelled.
    fn target_failed(&mut self, run_id: &str, si: usize, now: i64) -> Option<Option<String>> {
        let Some(run) = self.runs.get(run_id) else { return Some(None) };
        let step = &run.steps[si];
        let (Some(group), true) = (step.group.clone(), step.target.is_some()) else { return Some(None) };
        let Some(spec) = self.spec_of(run_id, si).cloned() else { return Some(None) };
        let Some(foreach) = spec.foreach.clone() else { return Some(None) };
        let items: Vec<usize> =
            run.steps.iter().enumerate().filter(|(_, s)| s.group.as_ref() == Some(&group)).map(|(i, _)| i).collect();
        let failed =
            items.iter().filter(|i| matches!(run.steps[**i].state, StepState::Failed | StepState::Lost)).count();
        let allowed = foreach.max_failures.tolerated_of(items.len());
        if failed <= allowed {
            return None;
        }
        let run = self.runs.get_mut(run_id)?;
        for i in items {
            let s = &mut run.steps[i];
            if s.state == StepState::Pending {
                s.state = StepState::Cancelled;
                s.error = Some(format!("not started: step {group} failed on too many targets"));
                s.finished_at_ms = now;
                // With `on_error: continue` the run goes on past the whole step.
                s.failure_tolerated = spec.continue_on_error;
            }
        }
        Some(Some(format!(
            "step {group} failed on {failed} of {} targets (max_failures allows {allowed})",
            run.steps.iter().filter(|s| s.group.as_ref() == Some(&group)).count()
        )))
    }

    /// After a step of a foreach ended: when its batch is done, the next batch waits `bake`.
    fn group_progress(&mut self, run_id: &str, si: usize, now: i64) {
        let Some(run) = self.runs.get(run_id) else { return };
        let step = &run.steps[si];
        let (Some(group), true) = (step.group.clone(), step.target.is_some()) else { return };
        let batch = step.batch;
        let bake = self.spec_of(run_id, si).and_then(|s| s.foreach.as_ref()).map_or(0, |f| f.bake_ms);
        let unfinished = |s: &StepRun| matches!(s.state, StepState::Pending | StepState::Running | StepState::Waiting);
        let in_batch = |s: &StepRun| s.group.as_ref() == Some(&group) && s.batch == batch;
        if bake == 0 || run.steps.iter().any(|s| in_batch(s) && unfinished(s)) {
            return;
        }
        let until = now.saturating_add(i64::try_from(bake).unwrap_or(i64::MAX));
        let run = self.runs.get_mut(run_id).expect("checked above");
        for s in run.steps.iter_mut().filter(|s| s.group.as_ref() == Some(&group) && s.batch == batch + 1) {
            s.not_before_ms = s.not_before_ms.max(until);
        }
    }

    /// The run ended (or is running its handlers) while other attempts of it still run: ask
    /// their workers to stop them.
    fn stop_others(&self, run_id: &str, fx: &mut Vec<Effect>) {
        let Some(run) = self.runs.get(run_id) else { return };
        let phase = run.phase();
        for s in run.steps.iter().filter(|s| run.state.is_terminal() || s.block != phase) {
            if let Some(a) = s.active_attempt() {
                fx.push(Effect::CancelAttempt { worker: a.worker.clone(), attempt_id: a.id });
            }
        }
    }

    fn expand_foreach(
        &mut self,
        run_id: &str,
        step_id: &str,
        targets: Vec<serde_json::Value>,
        workers: Vec<Option<String>>,
        now: i64,
        fx: &mut Vec<Effect>,
    ) -> Reply {
        let Some((si, _)) = self.current_step(run_id, step_id, StepState::Pending) else { return Reply::Done };
        let Some(foreach) = self.spec_of(run_id, si).and_then(|s| s.foreach.clone()) else {
            return Reply::Rejected(format!("step {step_id} has no foreach"));
        };
        let run = self.runs.get_mut(run_id).expect("checked by current_step");
        if run.steps[si].target.is_some() || run.steps[si].group.is_some() {
            return Reply::Done;
        }
        if run.state == RunState::Pending {
            run.state = RunState::Running;
            run.started_at_ms = now;
        }
        if targets.is_empty() {
            let step = &mut run.steps[si];
            step.state = StepState::Skipped;
            step.error = Some("skipped: foreach has no targets".into());
            step.started_at_ms = now;
            step.finished_at_ms = now;
            self.settle(run_id, now);
            fx.push(Effect::RunChanged(run_id.to_string()));
            return Reply::Done;
        }
        let size = foreach.batch.batch_of(targets.len());
        let block = run.steps[si].block;
        let mut ids: BTreeSet<String> = run.steps.iter().map(|s| s.id.clone()).collect();
        let items: Vec<StepRun> = targets
            .into_iter()
            .enumerate()
            .map(|(i, target)| {
                let label = match &target {
                    serde_json::Value::String(t)
                        if !t.is_empty() && t.len() <= 64 && !t.chars().any(char::is_control) =>
                    {
                        t.clone()
                    }
                    _ => i.to_string(),
                };
                let mut id = format!("{step_id}[{label}]");
                let mut n = 0;
                while ids.contains(&id) {
                    n += 1;
                    id = format!("{step_id}[{i}:{label}]") + &"'".repeat(n - 1);
                }
                ids.insert(id.clone());
                StepRun {
                    block,
                    spec: step_id.to_string(),
                    group: Some(step_id.to_string()),
                    batch: u32::try_from(i / size).unwrap_or(u32::MAX),
                    target: Some(target),
                    target_worker: workers.get(i).cloned().flatten(),
                    ..StepRun::pending(&id)
                }
            })
            .collect();
        let added = items.len() - 1;
        run.steps.splice(si..=si, items);
        // Later steps moved: keep the attempt index pointing at them (none is active in
        // practice, since the run's later steps have not started).
        for (rid, idx) in self.active_attempts.values_mut() {
            if rid == run_id && *idx > si {
                *idx += added;
            }
        }
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    /// The runbook step behind step `si` of a run (from the version the run is pinned to).
    fn spec_of(&self, run_id: &str, si: usize) -> Option<&baton_core::runbook::Step> {
        let run = self.runs.get(run_id)?;
        self.runbook_of(run)?.step(run.steps.get(si)?.spec_id())
    }

    /// Ends a run whose steps are all done (succeeded, skipped, or failed with the failure
    /// tolerated) as succeeded; otherwise leaves it be.
    fn settle(&mut self, run_id: &str, now: i64) {
        let done = self.runs.get(run_id).is_some_and(|r| {
            let block = r.phase();
            // A run with guards succeeds only once they passed after its last step.
            let guarded = block == Block::Main
                && !r.guards_after_passed
                && self.runbook_of(r).is_some_and(|rb| !rb.guards.is_empty());
            !r.state.is_terminal()
                && !guarded
                && r.steps.iter().filter(|s| s.block == block).all(|s| s.state.is_done() || s.failure_tolerated)
        });
        if done {
            self.finish_run(run_id, RunState::Succeeded, None, now);
        }
    }

    fn attempt_started(&mut self, now: i64, attempt_id: u64, fx: &mut Vec<Effect>) -> Reply {
        let Some((run_id, si)) = self.active_attempts.get(&attempt_id).cloned() else {
            return Reply::Done;
        };
        let run = self.runs.get_mut(&run_id).expect("active attempt has a run");
        let first = !run.any_attempt_started();
        let created = run.created_at_ms;
        if let Some(a) = run.steps[si].attempts.iter_mut().find(|a| a.id == attempt_id)
            && a.state == AttemptState::Assigned
        {
            a.state = AttemptState::Running;
            a.started_at_ms = now;
            fx.push(Effect::RunChanged(run_id));
            if first {
                fx.push(Effect::Observe(Observation::RunStarted { after_ms: now - created }));
            }
        }
        Reply::Done
    }

    fn attempt_finished(&mut self, now: i64, attempt_id: u64, r: AttemptResult, fx: &mut Vec<Effect>) -> Reply {
        let Some((run_id, si)) = self.active_attempts.remove(&attempt_id) else {
            // Already resolved: a re-sent result. Acknowledge again so the worker forgets it.
            if let Some(worker) = self.worker_of(attempt_id) {
                fx.push(Effect::AckResult { worker, attempt_id });
            }
            return Reply::Done;
        };
        let spec = self.spec_of(&run_id, si).cloned();
        let idempotent = spec.as_ref().is_some_and(|s| s.idempotent);
        let retry = spec.as_ref().and_then(|s| s.retry.clone());
        let tolerated = spec.as_ref().is_some_and(|s| s.continue_on_error);
        let run = self.runs.get_mut(&run_id).expect("active attempt has a run");
        if matches!(r.state, AttemptState::Succeeded | AttemptState::Failed | AttemptState::TimedOut)
            && !run.any_attempt_started()
        {
            // It ran, and its start report has not committed yet (a step that fast): the run
            // started no later than now.
            fx.push(Effect::Observe(Observation::RunStarted { after_ms: now - run.created_at_ms }));
        }
        let cancel_requested = run.cancel_requested;
        // A run stopped by its own timeout ends failed; one stopped by an operator, cancelled.
        let stopped = if run.timed_out { RunState::Failed } else { RunState::Cancelled };
        let phase = run.phase();
        let step = &mut run.steps[si];
        let attempt = step.attempts.iter_mut().find(|a| a.id == attempt_id).expect("attempt exists");
        attempt.state = if r.state.is_terminal() { r.state } else { AttemptState::Failed };
        attempt.finished_at_ms = now;
        attempt.exit_code = r.exit_code;
        attempt.error = r.error.clone();
        let worker = attempt.worker.clone();
        let attempt_state = attempt.state;
        if attempt_state != AttemptState::Lost {
            step.exit_code = r.exit_code;
            step.stdout_tail = r.stdout_tail;
            step.stderr_tail = r.stderr_tail;
        }
        if run.state.is_terminal() || step.block != phase {
            // The run ended (force-failed, a sibling failed) or went on to its handlers while
            // this ran: the outcome is recorded, the run's course stays as it is.
            step.state = match attempt_state {
                AttemptState::Succeeded => StepState::Succeeded,
                AttemptState::Lost => StepState::Lost,
                AttemptState::Cancelled => StepState::Cancelled,
                _ => StepState::Failed,
            };
            step.finished_at_ms = now;
            if attempt_state == AttemptState::Succeeded {
                step.outputs = r.outputs;
            }
            let others_active = running_attempts(&self.runs[&run_id]).next().is_some();
            let run = self.runs.get(&run_id).expect("checked above");
            if !run.state.is_terminal() && run.cancel_requested && !others_active {
                // The last attempt of a run being cancelled has stopped: it ends now.
                // The operator's reason (set when the cancel was asked) stays the run's error.
                let error = (stopped == RunState::Cancelled && run.error.is_none()).then(|| "cancelled".to_string());
                self.finish_run(&run_id, stopped, error, now);
            }
            self.release_locks_when_idle(&run_id);
            fx.push(Effect::RunChanged(run_id));
            fx.push(Effect::AckResult { worker, attempt_id });
            return Reply::Done;
        }
        let step_id = step.id.clone();
        let (step_state, run_end): (StepState, Option<(RunState, Option<String>)>) = match attempt_state {
            AttemptState::Succeeded => {
                step.outputs = r.outputs;
                (StepState::Succeeded, None)
            }
            AttemptState::Cancelled => (StepState::Cancelled, Some((stopped, None))),
            AttemptState::Lost if idempotent && !cancel_requested => (StepState::Pending, None),
            AttemptState::Lost if cancel_requested => {
                let msg = format!(
                    "cancelled; the outcome of step {step_id} (attempt {attempt_id}) is unknown: its worker was lost"
                );
                (StepState::Lost, Some((stopped, Some(msg))))
            }
            AttemptState::Lost => {
                let why = r.error.unwrap_or_default();
                let msg = format!(
                    "step {step_id}: attempt {attempt_id} on worker {worker} was lost ({why}); its outcome is unknown and the step is not idempotent, so it was not retried"
                );
                (StepState::Lost, Some((RunState::NeedsAttention, Some(msg))))
            }
            _ => {
                let what = match (attempt_state, r.exit_code) {
                    (AttemptState::TimedOut, _) => "timed out".to_string(),
                    (_, Some(code)) => format!("exited with code {code}"),
                    _ => r.error.clone().unwrap_or_else(|| "failed".into()),
                };
                step.error = r.error.or_else(|| Some(what.clone()));
                let made = (step.attempts.len() as u32).saturating_sub(step.retry_base);
                let timed_out = attempt_state == AttemptState::TimedOut;
                match retry {
                    // Retried by policy: a new attempt after the backoff.
                    Some(policy)
                        if made < policy.attempts && !cancel_requested && policy.retries(timed_out, r.exit_code) =>
                    {
                        step.not_before_ms = now.saturating_add(policy.backoff_before(made + 1) as i64);
                        (StepState::Pending, None)
                    }
                    _ if tolerated => {
                        step.failure_tolerated = true;
                        (StepState::Failed, None)
                    }
                    _ => (StepState::Failed, Some((RunState::Failed, Some(format!("step {step_id} {what}"))))),
                }
            }
        };
        step.state = step_state;
        if step_state != StepState::Pending {
            step.finished_at_ms = now;
        }
        let mut run_end = run_end;
        if step_state == StepState::Failed {
            // A foreach target: within max_failures the failure is tolerated; beyond it the
            // step fails as a whole (and its targets that did not start are cancelled).
            match self.target_failed(&run_id, si, now) {
                None => {
                    self.runs.get_mut(&run_id).expect("checked above").steps[si].failure_tolerated = true;
                    run_end = None;
                }
                Some(Some(why)) if run_end.is_some() => run_end = Some((RunState::Failed, Some(why))),
                Some(_) => {}
            }
        }
        if matches!(step_state, StepState::Succeeded | StepState::Failed) && run_end.is_none() {
            self.group_progress(&run_id, si, now);
        }
        let others_active = running_attempts(&self.runs[&run_id]).next().is_some();
        match run_end {
            // Being stopped: the run ends when its last attempt has stopped.
            Some((state, _)) if state == stopped && cancel_requested && others_active => {}
            Some((state, error)) => {
                self.finish_run(&run_id, state, error, now);
                self.stop_others(&run_id, fx);
            }
            None if cancel_requested => {
                if !others_active {
                    let keep = self.runs.get(&run_id).is_some_and(|r| r.error.is_some());
                    let error = (stopped == RunState::Cancelled && !keep).then(|| "cancelled".to_string());
                    self.finish_run(&run_id, stopped, error, now);
                }
            }
            None => self.settle(&run_id, now),
        }
        fx.push(Effect::RunChanged(run_id));
        fx.push(Effect::AckResult { worker, attempt_id });
        Reply::Done
    }

    fn cancel_run(&mut self, now: i64, run_id: &str, reason: String, fx: &mut Vec<Effect>) -> Reply {
        let Some(run) = self.runs.get_mut(run_id) else {
            return Reply::Rejected(format!("run {run_id:?} does not exist"));
        };
        if run.state.is_terminal() {
            return Reply::Done;
        }
        run.cancel_requested = true;
        let reason = if reason.is_empty() { "cancelled by an operator".to_string() } else { reason };
        let active: Vec<(String, u64)> =
            run.steps.iter().filter_map(|s| s.active_attempt()).map(|a| (a.worker.clone(), a.id)).collect();
        if active.is_empty() {
            // The steps of the current block end here; on_failure / on_cancel steps are left
            // for finish_run to run (or not).
            let phase = run.phase();
            for s in run
                .steps
                .iter_mut()
                .filter(|s| s.block == phase && matches!(s.state, StepState::Pending | StepState::Waiting))
            {
                s.state = StepState::Cancelled;
            }
            let end = if run.timed_out { RunState::Failed } else { RunState::Cancelled };
            self.finish_run(run_id, end, Some(reason), now);
        } else {
            run.error = Some(reason);
            for (worker, attempt_id) in active {
                fx.push(Effect::CancelAttempt { worker, attempt_id });
            }
        }
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    fn insert_run(&mut self, index: u64, run: Run, fx: &mut Vec<Effect>) {
        let id = run.id.clone();
        if self.runs.contains_key(&id) {
            // Run ids are never reused; callers check first, this keeps it true regardless.
            return;
        }
        let active = !run.state.is_terminal();
        self.run_order.insert(index, id.clone());
        self.runs.insert(id.clone(), run);
        if active {
            self.activate(&id);
        }
        fx.push(Effect::RunChanged(id));
    }

    /// Ends a run (or, for `needs_attention`, stops it for an operator). A run that fails or
    /// is cancelled first runs its `on_failure` / `on_cancel` steps, once; when those end, the
    /// run ends as it was going to. Locks are released when the run ends.
    fn finish_run(&mut self, run_id: &str, state: RunState, error: Option<String>, now: i64) {
        let handlers = self.runs.get(run_id).and_then(|run| {
            let block = match state {
                RunState::Failed => Block::OnFailure,
                RunState::Cancelled => Block::OnCancel,
                _ => return None,
            };
            // Handlers clean up after steps that ran: a run that never started has nothing to
            // clean up.
            let has = run.steps.iter().any(|s| s.block == block && s.state == StepState::Pending);
            let ran = run.started_at_ms > 0 || state == RunState::Failed;
            (has && ran && !run.handlers_ran && run.finishing.is_none()).then_some(block)
        });
        let run = self.runs.get_mut(run_id).expect("finish_run on an existing run");
        if let Some(block) = handlers {
            let failed_step = run
                .steps
                .iter()
                .find(|s| {
                    s.block == Block::Main
                        && matches!(s.state, StepState::Failed | StepState::Lost)
                        && !s.failure_tolerated
                })
                .map(|s| s.id.clone());
            for s in run.steps.iter_mut().filter(|s| s.block == Block::Main) {
                if matches!(s.state, StepState::Pending | StepState::Waiting) && state == RunState::Cancelled {
                    s.state = StepState::Cancelled;
                }
            }
            let error = error.or_else(|| run.error.clone());
            run.finishing = Some(Finishing { block, state, error: error.clone(), failed_step });
            run.handlers_ran = true;
            run.cancel_requested = false;
            run.state = RunState::Running;
            run.error = error;
            // Back on the engine's work list (a needs_attention run had left it).
            self.activate(run_id);
            return;
        }
        let (state, error) = match run.finishing.take() {
            // The handler steps ended: the run ends as it was going to, saying if they failed.
            Some(f) => {
                let handler_error = (state != RunState::Succeeded).then(|| {
                    let why = error.or_else(|| run.error.clone()).unwrap_or_else(|| state.as_str().to_string());
                    format!("; {} did not complete: {why}", f.block.as_str())
                });
                let message = format!("{}{}", f.error.unwrap_or_default(), handler_error.unwrap_or_default());
                (f.state, Some(message).filter(|e| !e.is_empty()))
            }
            None => (state, error),
        };
        run.state = state;
        let mut released = false;
        if state.is_terminal() {
            run.finished_at_ms = now;
            for s in run.steps.iter_mut().filter(|s| s.state == StepState::Pending && s.block == Block::Main) {
                if state == RunState::Cancelled {
                    s.state = StepState::Cancelled;
                }
            }
            released = run.locks_held;
        }
        if error.is_some() {
            run.error = error;
        }
        self.deactivate(run_id);
        if released {
            self.release_locks_when_idle(run_id);
        }
    }

    /// Releases an ended run's locks once none of its attempts still runs (a sibling being
    /// stopped, a force-failed step): the resource stays protected until it is really idle.
    fn release_locks_when_idle(&mut self, run_id: &str) {
        let Some(run) = self.runs.get_mut(run_id) else { return };
        if !run.state.is_terminal() || !run.locks_held || running_attempts(run).next().is_some() {
            return;
        }
        run.locks_held = false;
        for lock in run.locks.clone() {
            if self.locks.get(&lock).is_some_and(|(holder, _)| holder == run_id) {
                self.locks.remove(&lock);
            }
        }
    }

    /// Why `run` may not start under its runbook's budget, if it may not: the runs of the
    /// runbook with the same key created within the window.
    pub fn budget_refusal(&self, rb: &Runbook, run: &Run, now: i64) -> Option<String> {
        let budget = rb.budget.as_ref()?;
        let key = run.budget_key.as_ref()?;
        let (used, next) = self.budget_use(rb, key, now)?;
        if used < budget.max_runs as usize {
            return None;
        }
        let for_key = if key.is_empty() { String::new() } else { format!(" for {key:?}") };
        Some(format!(
            "budget exhausted: at most {} run(s) of {} per {}{for_key}; the next is allowed from {next} (unix ms)",
            budget.max_runs,
            rb.name,
            baton_core::duration::format_duration(budget.per_ms),
        ))
    }

    /// How much of `rb`'s budget runs with `key` have used at `now`: (runs in the window, when
    /// the oldest of them leaves it). `None` without a budget.
    pub fn budget_use(&self, rb: &Runbook, key: &str, now: i64) -> Option<(usize, i64)> {
        let per = i64::try_from(rb.budget.as_ref()?.per_ms).unwrap_or(i64::MAX);
        let since = now.saturating_sub(per);
        let used: Vec<&Run> = self
            .runs_newest_first(&rb.name)
            .take_while(|r| r.created_at_ms > since)
            .filter(|r| r.budget_key.as_deref() == Some(key) && r.state != RunState::Missed)
            .collect();
        Some((used.len(), used.last().map_or(now, |r| r.created_at_ms).saturating_add(per)))
    }

    /// Takes every lock of a waiting run if all are free; with `lock_wait: skip` a run that
    /// cannot have them ends at once, cancelled.
    fn acquire_locks(&mut self, now: i64, run_id: &str, fx: &mut Vec<Effect>) -> Reply {
        let Some(run) = self.runs.get(run_id).filter(|r| self.active_runs.contains(run_id) && !r.locks_held) else {
            return Reply::Done;
        };
        let busy = run.locks.iter().find_map(|l| self.locks.get(l).filter(|(h, _)| h != run_id).map(|(h, _)| (l, h)));
        if let Some((lock, holder)) = busy {
            if self.runbook_of(run).is_some_and(|rb| rb.skip_if_locked) {
                let why = format!("skipped: lock {lock:?} is held by run {holder} (lock_wait: skip)");
                let run = self.runs.get_mut(run_id).expect("checked above");
                run.handlers_ran = true;
                self.finish_run(run_id, RunState::Cancelled, Some(why), now);
                fx.push(Effect::RunChanged(run_id.to_string()));
            }
            return Reply::Done;
        }
        for lock in run.locks.clone() {
            self.locks.insert(lock, (run_id.to_string(), now));
        }
        self.runs.get_mut(run_id).expect("checked above").locks_held = true;
        fx.push(Effect::RunChanged(run_id.to_string()));
        Reply::Done
    }

    fn worker_of(&self, attempt_id: u64) -> Option<String> {
        // Resolved attempts are rare to look up (re-sent results only), so a scan is fine.
        self.runs
            .values()
            .rev()
            .flat_map(|r| r.steps.iter())
            .flat_map(|s| s.attempts.iter())
            .find(|a| a.id == attempt_id)
            .map(|a| a.worker.clone())
    }
}

/// A finished attempt's report.
struct AttemptResult {
    state: AttemptState,
    exit_code: Option<i32>,
    stdout_tail: String,
    stderr_tail: String,
    outputs: BTreeMap<String, String>,
    error: Option<String>,
}

/// The visible record of ticks that could not fire.
fn missed_record(schedule: &str, runbook: &str, first_tick_ms: i64, last_tick_ms: i64, count: u64, now: i64) -> Run {
    Run {
        id: format!("{}-missed", Run::scheduled_id(schedule, first_tick_ms)),
        runbook: runbook.to_string(),
        version: String::new(),
        params: BTreeMap::new(),
        trigger: Trigger::Schedule { name: schedule.to_string(), tick_ms: first_tick_ms },
        state: RunState::Missed,
        steps: Vec::new(),
        created_at_ms: now,
        started_at_ms: 0,
        finished_at_ms: now,
        error: Some(format!(
            "{count} tick(s) from {first_tick_ms} to {last_tick_ms} were missed: no leader could fire them in time"
        )),
        idempotency_key: None,
        missed_ticks: count,
        cancel_requested: false,
        timed_out: false,
        paused: false,
        pause_reason: String::new(),
        timer_start_ms: 0,
        events: Vec::new(),
        principal: String::new(),
        locks: Vec::new(),
        locks_held: false,
        budget_key: None,
        finishing: None,
        handlers_ran: false,
        guards_after_passed: false,
    }
}

/// The ids of the run's attempts that are assigned or running (a look at the run's own steps,
/// not at every active attempt of the cluster).
fn running_attempts(run: &Run) -> impl Iterator<Item = u64> + '_ {
    run.steps.iter().filter_map(|s| s.active_attempt()).map(|a| a.id)
}

/// ": REASON", or nothing for an empty reason.
fn reason_suffix(reason: &str) -> String {
    if reason.is_empty() { String::new() } else { format!(": {reason}") }
}

/// The steps the run is at: its first unfinished step in the current block and, when that
/// step belongs to a group, every unfinished step of the same group and batch (the steps of
/// a `parallel` group, or one batch of `foreach` targets).
pub fn current_steps(run: &Run) -> Vec<usize> {
    let Some(first) = next_step(run) else { return Vec::new() };
    let head = &run.steps[first];
    let Some(group) = &head.group else { return vec![first] };
    run.steps
        .iter()
        .enumerate()
        .filter(|(_, s)| {
            s.block == head.block
                && s.group.as_ref() == Some(group)
                && s.batch == head.batch
                && matches!(s.state, StepState::Pending | StepState::Running | StepState::Waiting)
        })
        .map(|(i, _)| i)
        .collect()
}

/// The index of step `id` if the run is at it.
pub fn current_index(run: &Run, id: &str) -> Option<usize> {
    current_steps(run).into_iter().find(|i| run.steps[*i].id == id)
}

/// "failed", "needs_attention"... for messages about a run's state.
fn run_state_text(run: &Run) -> &'static str {
    if run.cancel_requested && !run.state.is_terminal() { "being cancelled" } else { run.state.as_str() }
}

/// The run's current step: the first one of the current block (the main steps, or the
/// handler steps while it is finishing) that is pending, running or waiting (steps run in order;
/// done, skipped and tolerated-failed steps are behind it).
pub fn next_step(run: &Run) -> Option<usize> {
    let block = run.phase();
    run.steps.iter().position(|s| {
        s.block == block && matches!(s.state, StepState::Pending | StepState::Running | StepState::Waiting)
    })
}

/// The run a trigger with these (resolved) params would create, for `baton plan`.
pub fn planned_run(rb: &Runbook, params: BTreeMap<String, serde_json::Value>, now: i64) -> Result<Run, String> {
    new_run(rb, "r-plan".into(), params, Trigger::Api, now, None)
}

fn new_run(
    rb: &Runbook,
    id: String,
    params: BTreeMap<String, serde_json::Value>,
    trigger: Trigger,
    now: i64,
    idempotency_key: Option<String>,
) -> Result<Run, String> {
    let locks = rb.render_locks(&params)?;
    let budget_key = rb.budget_key(&params)?;
    let block = |steps: &[baton_core::runbook::Step], block: Block| {
        steps
            .iter()
            .map(move |s| StepRun { block, group: s.group.clone(), ..StepRun::pending(&s.id) })
            .collect::<Vec<_>>()
    };
    let mut steps = block(&rb.steps, Block::Main);
    steps.extend(block(&rb.on_failure, Block::OnFailure));
    steps.extend(block(&rb.on_cancel, Block::OnCancel));
    Ok(Run {
        id,
        runbook: rb.name.clone(),
        version: rb.version.clone(),
        params,
        trigger,
        state: RunState::Pending,
        steps,
        created_at_ms: now,
        started_at_ms: 0,
        finished_at_ms: 0,
        error: None,
        idempotency_key,
        missed_ticks: 0,
        cancel_requested: false,
        timed_out: false,
        paused: false,
        pause_reason: String::new(),
        timer_start_ms: 0,
        events: Vec::new(),
        principal: String::new(),
        locks,
        locks_held: false,
        budget_key,
        finishing: None,
        handlers_ran: false,
        guards_after_passed: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const RB: &str = r#"
name: demo
params:
  who: { type: string, required: true }
steps:
  - id: one
    action: exec
    with: { command: ["echo", "{{ params.who }}"] }
  - id: two
    action: exec
    idempotent: true
    with: { command: ["echo", "two"] }
"#;

    fn cmd(at_ms: i64, op: Op) -> Command {
        Command { at_ms, op }
    }

    fn state_with_runbook() -> State {
        let mut s = State::default();
        let rb = Runbook::parse("demo.yaml", RB).unwrap();
        let (reply, _) = s.apply(1, 1, cmd(10, Op::ApplyRunbook { runbook: rb }));
        assert!(matches!(reply, Reply::Applied { changed: true, .. }));
        s
    }

    fn start(s: &mut State, index: u64, id: &str, key: Option<&str>) -> Reply {
        let params = [("who".to_string(), serde_json::json!("Ada"))].into();
        let op = Op::StartRun {
            run_id: id.into(),
            runbook: "demo".into(),
            params,
            idempotency_key: key.map(str::to_string),
        };
        s.apply(index, 1, cmd(20, op)).0
    }

    fn assign(s: &mut State, index: u64, run: &str, step: &str) -> Vec<Effect> {
        let op = Op::Assign {
            run_id: run.into(),
            step_id: step.into(),
            worker: "w1".into(),
            argv: vec!["echo".into()],
            env: BTreeMap::new(),
            workdir: None,
            timeout_ms: None,
            expected_attempts: None,
            worker_boot: 0,
        };
        s.apply(index, 1, cmd(30, op)).1
    }

    fn finish(s: &mut State, index: u64, attempt_id: u64, state: AttemptState) -> Vec<Effect> {
        let op = Op::AttemptFinished {
            attempt_id,
            state,
            exit_code: Some(if state == AttemptState::Succeeded { 0 } else { 1 }),
            stdout_tail: "out".into(),
            stderr_tail: String::new(),
            outputs: [("k".to_string(), "v".to_string())].into(),
            error: None,
        };
        s.apply(index, 1, cmd(40, op)).1
    }

    #[test]
    fn a_run_goes_through_its_steps_in_order() {
        let mut s = state_with_runbook();
        assert_eq!(start(&mut s, 2, "r1", None), Reply::Run { run_id: "r1".into(), deduplicated: false });
        let fx = assign(&mut s, 3, "r1", "one");
        assert!(
            fx.iter().any(
                |e| matches!(e, Effect::Dispatch(a) if a.attempt_id == 3 && a.fence == Fence { term: 1, index: 3 })
            )
        );
        // The second step cannot be assigned while the first is running.
        assert!(!assign(&mut s, 4, "r1", "two").iter().any(|e| matches!(e, Effect::Dispatch(_))));
        finish(&mut s, 5, 3, AttemptState::Succeeded);
        assert_eq!(s.runs["r1"].steps[0].outputs["k"], "v");
        assign(&mut s, 6, "r1", "two");
        finish(&mut s, 7, 6, AttemptState::Succeeded);
        let run = &s.runs["r1"];
        assert_eq!(run.state, RunState::Succeeded);
        assert_eq!(run.finished_at_ms, 40);
        assert!(s.active_runs.is_empty() && s.active_attempts.is_empty());
    }

    #[test]
    fn duplicates_are_ignored() {
        let mut s = state_with_runbook();
        start(&mut s, 2, "r1", Some("key"));
        // Same key, different leader-stamped id: the first run is returned.
        assert_eq!(start(&mut s, 3, "r2", Some("key")), Reply::Run { run_id: "r1".into(), deduplicated: true });
        assert_eq!(s.runs.len(), 1);
        assign(&mut s, 4, "r1", "one");
        // A second assignment of a running step makes no attempt.
        assert!(assign(&mut s, 5, "r1", "one").is_empty());
        assert_eq!(s.runs["r1"].steps[0].attempts.len(), 1);
        finish(&mut s, 6, 4, AttemptState::Failed);
        let snapshot = s.clone();
        // A re-sent result changes nothing but is acknowledged again.
        let fx = finish(&mut s, 7, 4, AttemptState::Succeeded);
        assert_eq!(fx, vec![Effect::AckResult { worker: "w1".into(), attempt_id: 4 }]);
        assert_eq!(s.runs, snapshot.runs);
        assert_eq!(s.runs["r1"].state, RunState::Failed);
    }

    #[test]
    fn a_lost_attempt_needs_attention_unless_the_step_is_idempotent() {
        let mut s = state_with_runbook();
        start(&mut s, 2, "r1", None);
        assign(&mut s, 3, "r1", "one");
        s.apply(4, 1, cmd(50, Op::AttemptLost { attempt_id: 3, reason: "gone".into() }));
        let run = &s.runs["r1"];
        assert_eq!(run.state, RunState::NeedsAttention);
        assert_eq!(run.steps[0].state, StepState::Lost);
        assert!(!s.active_runs.contains("r1"), "the engine leaves it to an operator");

        start(&mut s, 5, "r2", None);
        assign(&mut s, 6, "r2", "one");
        finish(&mut s, 7, 6, AttemptState::Succeeded);
        assign(&mut s, 8, "r2", "two");
        s.apply(9, 1, cmd(50, Op::AttemptLost { attempt_id: 8, reason: "gone".into() }));
        let run = &s.runs["r2"];
        assert_eq!(run.state, RunState::Running);
        assert_eq!(run.steps[1].state, StepState::Pending, "idempotent: ready for a new attempt");
        assign(&mut s, 10, "r2", "two");
        assert_eq!(s.runs["r2"].steps[1].attempts.len(), 2);
        assert_eq!(s.runs["r2"].steps[1].attempts[1].number, 2);
    }

    #[test]
    fn a_tick_fires_once_and_missed_ticks_leave_a_record() {
        let mut s = state_with_runbook();
        let text = "schedule: every-second\nrunbook: demo\ncron: \"* * * * * *\"\nparams: { who: cron }\n";
        let sched = Schedule::parse("s.yaml", text).unwrap();
        s.apply(2, 1, cmd(1_000, Op::ApplySchedule { schedule: sched }));
        assert_eq!(s.schedules["every-second"].next_fire_at_ms, Some(2_000));
        let fire =
            |s: &mut State, i, t| s.apply(i, 1, cmd(t, Op::Fire { schedule: "every-second".into(), tick_ms: t })).0;
        assert!(matches!(fire(&mut s, 3, 2_000), Reply::Run { .. }));
        assert_eq!(fire(&mut s, 4, 2_000), Reply::Done, "a tick fires once");
        assert_eq!(s.runs.len(), 1);
        assert!(s.runs.contains_key(&Run::scheduled_id("every-second", 2_000)));
        let op =
            Op::RecordMissed { schedule: "every-second".into(), first_tick_ms: 3_000, last_tick_ms: 5_000, count: 3 };
        s.apply(5, 1, cmd(6_000, op));
        let st = &s.schedules["every-second"];
        assert_eq!((st.next_fire_at_ms, st.ticks_missed, st.runs_fired), (Some(6_000), 3, 1));
        assert_eq!(s.runs_newest_first("").next().unwrap().state, RunState::Missed);
    }

    #[test]
    fn changing_a_schedule_never_refires_a_tick_nor_drops_one_silently() {
        let mut s = state_with_runbook();
        let every = |who: &str| {
            let text = format!("schedule: s\nrunbook: demo\ncron: \"* * * * * *\"\nparams: {{ who: {who} }}\n");
            Schedule::parse("s.yaml", &text).unwrap()
        };
        s.apply(2, 1, cmd(1_000, Op::ApplySchedule { schedule: every("a") }));
        s.apply(3, 1, cmd(2_000, Op::Fire { schedule: "s".into(), tick_ms: 2_000 }));
        // Re-applied with a leader clock behind the tick that already fired.
        s.apply(4, 1, cmd(1_500, Op::ApplySchedule { schedule: every("b") }));
        assert_eq!(s.schedules["s"].next_fire_at_ms, Some(3_000));
        assert_eq!(s.apply(5, 1, cmd(2_000, Op::Fire { schedule: "s".into(), tick_ms: 2_000 })).0, Reply::Done);
        // Re-applied while the 3 s tick is overdue: it is recorded as missed, not dropped.
        s.apply(6, 1, cmd(3_500, Op::ApplySchedule { schedule: every("c") }));
        let st = &s.schedules["s"];
        assert_eq!((st.next_fire_at_ms, st.ticks_missed, st.last_tick_ms), (Some(4_000), 1, Some(3_000)));
        assert_eq!(s.runs_newest_first("").next().unwrap().state, RunState::Missed);
        assert_eq!(s.runs.len(), 2);
    }

    #[test]
    fn a_lost_attempt_of_a_cancelled_run_ends_it_cancelled() {
        let mut s = state_with_runbook();
        start(&mut s, 2, "r1", None);
        assign(&mut s, 3, "r1", "one");
        finish(&mut s, 4, 3, AttemptState::Succeeded);
        assign(&mut s, 5, "r1", "two");
        s.apply(6, 1, cmd(5, Op::CancelRun { run_id: "r1".into(), reason: String::new(), by: Default::default() }));
        s.apply(7, 1, cmd(6, Op::AttemptLost { attempt_id: 5, reason: "gone".into() }));
        assert_eq!(s.runs["r1"].state, RunState::Cancelled);
        assert_eq!(s.runs["r1"].steps[1].state, StepState::Lost);
    }

    #[test]
    fn retries_follow_the_policy_then_the_failure_counts() {
        let mut s = State::default();
        let text = "name: r\nsteps:\n  - id: one\n    action: exec\n    retry: { attempts: 2, backoff: 1s }\n    with: { command: [\"false\"] }\n  - id: two\n    action: exec\n    on_error: continue\n    with: { command: [\"false\"] }\n";
        s.apply(1, 1, cmd(0, Op::ApplyRunbook { runbook: Runbook::parse("r.yaml", text).unwrap() }));
        let op =
            Op::StartRun { run_id: "r1".into(), runbook: "r".into(), params: BTreeMap::new(), idempotency_key: None };
        s.apply(2, 1, cmd(0, op));
        let assign_at = |s: &mut State, index: u64, step: &str, at: i64| {
            let op = Op::Assign {
                run_id: "r1".into(),
                step_id: step.into(),
                worker: "w1".into(),
                argv: vec!["false".into()],
                env: BTreeMap::new(),
                workdir: None,
                timeout_ms: None,
                expected_attempts: None,
                worker_boot: 0,
            };
            s.apply(index, 1, cmd(at, op));
        };
        let fail = |s: &mut State, index: u64, attempt_id: u64, at: i64| {
            let op = Op::AttemptFinished {
                attempt_id,
                state: AttemptState::Failed,
                exit_code: Some(1),
                stdout_tail: String::new(),
                stderr_tail: String::new(),
                outputs: BTreeMap::new(),
                error: None,
            };
            s.apply(index, 1, cmd(at, op));
        };
        assign_at(&mut s, 3, "one", 10);
        fail(&mut s, 4, 3, 20);
        let step = &s.runs["r1"].steps[0];
        assert_eq!((step.state, step.not_before_ms), (StepState::Pending, 1_020), "retry after the backoff");
        assign_at(&mut s, 5, "one", 1_100);
        fail(&mut s, 6, 5, 1_200);
        // Out of attempts: the run fails; step two never starts.
        assert_eq!(s.runs["r1"].state, RunState::Failed);
        assert_eq!(s.runs["r1"].steps[0].attempts.len(), 2);
        assert_eq!(s.runs["r1"].steps[1].state, StepState::Pending);
        // A second run whose first step succeeds: step two fails but the run succeeds.
        let op =
            Op::StartRun { run_id: "r2".into(), runbook: "r".into(), params: BTreeMap::new(), idempotency_key: None };
        s.apply(7, 1, cmd(0, op));
        let assign2 = Op::Assign {
            run_id: "r2".into(),
            step_id: "one".into(),
            worker: "w1".into(),
            argv: vec![],
            env: BTreeMap::new(),
            workdir: None,
            timeout_ms: None,
            expected_attempts: None,
            worker_boot: 0,
        };
        s.apply(8, 1, cmd(0, assign2));
        s.apply(
            9,
            1,
            cmd(
                0,
                Op::AttemptFinished {
                    attempt_id: 8,
                    state: AttemptState::Succeeded,
                    exit_code: Some(0),
                    stdout_tail: String::new(),
                    stderr_tail: String::new(),
                    outputs: BTreeMap::new(),
                    error: None,
                },
            ),
        );
        let assign3 = Op::Assign {
            run_id: "r2".into(),
            step_id: "two".into(),
            worker: "w1".into(),
            argv: vec![],
            env: BTreeMap::new(),
            workdir: None,
            timeout_ms: None,
            expected_attempts: None,
            worker_boot: 0,
        };
        s.apply(10, 1, cmd(0, assign3));
        fail(&mut s, 11, 10, 30);
        assert_eq!(s.runs["r2"].state, RunState::Succeeded);
        assert!(s.runs["r2"].steps[1].failure_tolerated);
    }

    #[test]
    fn cancel_stops_pending_steps_and_asks_the_worker() {
        let mut s = state_with_runbook();
        start(&mut s, 2, "r1", None);
        s.apply(3, 1, cmd(5, Op::CancelRun { run_id: "r1".into(), reason: String::new(), by: Default::default() }));
        assert_eq!(s.runs["r1"].state, RunState::Cancelled);
        start(&mut s, 4, "r2", None);
        assign(&mut s, 5, "r2", "one");
        let (_, fx) =
            s.apply(6, 1, cmd(5, Op::CancelRun { run_id: "r2".into(), reason: "stop".into(), by: Default::default() }));
        assert!(fx.contains(&Effect::CancelAttempt { worker: "w1".into(), attempt_id: 5 }));
        assert_eq!(s.runs["r2"].state, RunState::Running);
        finish(&mut s, 7, 5, AttemptState::Cancelled);
        assert_eq!(s.runs["r2"].state, RunState::Cancelled);
        assert_eq!(s.runs["r2"].steps[1].state, StepState::Cancelled);
    }

    #[test]
    fn apply_is_deterministic_and_snapshots_round_trip() {
        let run = |s: &mut State| {
            start(s, 2, "r1", Some("k"));
            assign(s, 3, "r1", "one");
            finish(s, 4, 3, AttemptState::Succeeded);
        };
        let (mut a, mut b) = (state_with_runbook(), state_with_runbook());
        run(&mut a);
        run(&mut b);
        assert_eq!(a, b);
        let restored = State::from_json(&serde_json::to_vec(&a).unwrap()).unwrap();
        assert_eq!(restored, a);
    }

    #[test]
    fn bad_params_are_rejected_at_apply() {
        let mut s = state_with_runbook();
        let op = Op::StartRun {
            run_id: "r1".into(),
            runbook: "demo".into(),
            params: BTreeMap::new(),
            idempotency_key: None,
        };
        assert!(matches!(s.apply(2, 1, cmd(1, op)).0, Reply::Rejected(_)));
        assert!(s.runs.is_empty());
    }
}
