//! The engine: the leader's decisions, without I/O.
//!
//! Given the replicated [`State`] and a [`View`] of what only the leader knows (the time, which
//! workers are connected and with what capacity, when it became leader), [`Engine::decide`]
//! returns the commands to propose: fire due ticks, record missed ones, assign the next step of
//! each run, fail steps whose inputs do not render, declare attempts of vanished workers lost.
//! Nothing here sends anything; `dispatch` acts on what apply emits after the commands commit.
//! The engine remembers what it proposed until it is applied (or a deadline passes), so it does
//! not flood the log; apply ignores any duplicate that slips through.

use std::collections::{BTreeMap, HashMap};

use baton_core::command::Op;
use baton_core::run::{Run, RunState, StepState};
use baton_core::runbook::{Action, ForeachOver};
use baton_core::schedule::{BlackoutAction, CatchUpPolicy};
use baton_core::template::{eval_condition, eval_list, render_exec, render_text};

use crate::fsm::{GUARD_GATE_END, MAX_MISSED_COUNT, State, current_steps};

/// How long a proposal is remembered before the engine may propose it again.
const INFLIGHT_TTL_MS: i64 = 5_000;

/// The in-flight key of a schedule's tick.
fn tick_key(schedule: &str, tick_ms: i64) -> String {
    format!("tick:{schedule}:{tick_ms}")
}

/// A connected worker, as the leader sees it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkerSlot {
    /// Worker id.
    pub id: String,
    /// How many attempts it runs at once.
    pub capacity: u32,
    /// How many more it accepts and queues until a slot frees (`baton worker --prefetch`).
    pub prefetch: u32,
    /// Random per worker process (0: unknown): an attempt assigned to this process and not
    /// reported by it when it registers again provably never reached it.
    pub boot: u64,
    /// Its labels (`foreach: { workers: ... }` selects by them).
    pub labels: BTreeMap<String, String>,
}

/// What the leader knows that is not replicated.
#[derive(Debug, Clone)]
pub struct View {
    /// Leader wall-clock time (unix ms).
    pub now_ms: i64,
    /// When this node became leader: ticks before it are missed, and workers get a grace
    /// period from it to reconnect before their attempts are declared lost.
    pub leader_since_ms: i64,
    /// Connected workers, in registration order.
    pub workers: Vec<WorkerSlot>,
    /// Workers that were connected to this leader and left: id -> when it disconnected.
    pub departed: HashMap<String, i64>,
    /// How long a worker may stay away (after a leader change, or after it disconnected)
    /// before its attempts are lost.
    pub worker_grace_ms: i64,
    /// Runs whose guards passed at their current gate: run id -> gate (see [`guard_gates`]).
    pub guards_passed: HashMap<String, String>,
}

/// The engine's volatile memory: proposals not yet seen applied.
#[derive(Debug, Default)]
pub struct Engine {
    /// Fire, miss and loss proposals by key, with the time after which they may be repeated.
    inflight: HashMap<String, i64>,
    /// Assignments proposed but not applied: (run id, step index, attempts so far) ->
    /// (deadline, worker). The worker's slot stays taken until it is applied or expires.
    assigning: HashMap<(String, usize, usize), (i64, String)>,
}

impl WorkerSlot {
    /// How many attempts it may hold (running or queued): the engine assigns up to this.
    pub fn holds(&self) -> u32 {
        self.capacity.saturating_add(self.prefetch)
    }
}

impl Engine {
    /// A fresh engine (after a leader change nothing is in flight).
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Forgets every in-flight proposal (the node lost leadership).
    pub fn reset(&mut self) {
        self.inflight.clear();
        self.assigning.clear();
    }

    /// The commands to propose now.
    pub fn decide(&mut self, state: &State, view: &View) -> Vec<Op> {
        self.inflight.retain(|_, deadline| *deadline > view.now_ms);
        let mut ops = Vec::new();
        self.fire_schedules(state, view, &mut ops);
        self.expire_attempts(state, view, &mut ops);
        // Oldest run first, so waiting runs are served in the order they were triggered. Runs
        // that wait only for a worker (`State::queued_plain`) are read only while one is free;
        // every other run is looked up once per decision.
        let order: Vec<(i64, &String, &Run)> =
            state.active_order.iter().filter_map(|(at, id)| state.runs.get(id).map(|r| (*at, id, r))).collect();
        self.end_waits(state, &order, view, &mut ops);
        self.assign_steps(state, &order, view, &mut ops);
        ops
    }

    /// When the earliest tick not yet proposed is due, so the caller can sleep until then. A
    /// tick already proposed waits for its commit (which wakes the engine), not for time.
    pub fn next_due_ms(&self, state: &State) -> Option<i64> {
        let proposed = |name: &String| {
            let tick = state.schedules.get(name).and_then(|s| s.next_fire_at_ms);
            tick.is_some_and(|t| self.inflight.contains_key(&tick_key(name, t)))
        };
        state.fire_order.iter().find(|(_, name)| !proposed(name)).map(|(due, _)| *due)
    }

    fn claim(&mut self, key: String, now: i64) -> bool {
        if self.inflight.contains_key(&key) {
            return false;
        }
        self.inflight.insert(key, now + INFLIGHT_TTL_MS);
        true
    }

    fn fire_schedules(&mut self, state: &State, view: &View, ops: &mut Vec<Op>) {
        // Only the due schedules, from the front of the index (unpaused, by due time).
        for (_, name) in state.fire_order.iter().take_while(|(due, _)| *due <= view.now_ms) {
            let Some(s) = state.schedules.get(name) else { continue };
            let Some(tick) = s.next_fire_at_ms else { continue };
            let schedule = &s.schedule;
            let due = |t: i64| t.saturating_add(schedule.jitter_ms_for(t));
            if !self.claim(tick_key(name, tick), view.now_ms) {
                continue;
            }
            if due(tick) >= view.leader_since_ms {
                ops.push(Op::Fire { schedule: name.clone(), tick_ms: tick });
                continue;
            }
            // Ticks that were due before this leader took over could not fire in time: the
            // catch-up policy says which of them still run; the others leave one record.
            let mut late = vec![tick];
            while let Some(next) = schedule.next_after(late[late.len() - 1]) {
                if due(next) >= view.leader_since_ms || late.len() as u64 >= MAX_MISSED_COUNT {
                    break;
                }
                late.push(next);
            }
            let window = i64::try_from(schedule.catch_up.window_ms).unwrap_or(i64::MAX);
            let in_window = |t: i64| view.now_ms.saturating_sub(t) <= window;
            let last = late[late.len() - 1];
            let missed = match schedule.catch_up.policy {
                CatchUpPolicy::Skip => &late[..],
                CatchUpPolicy::Latest if in_window(last) => &late[..late.len() - 1],
                CatchUpPolicy::Latest => &late[..],
                CatchUpPolicy::All => {
                    let stale = late.iter().take_while(|t| !in_window(**t)).count();
                    &late[..stale]
                }
            };
            match missed {
                [] => ops.push(Op::Fire { schedule: name.clone(), tick_ms: tick }),
                [first, .., last] | [first @ last] => ops.push(Op::RecordMissed {
                    schedule: name.clone(),
                    first_tick_ms: *first,
                    last_tick_ms: *last,
                    count: missed.len() as u64,
                }),
            }
        }
    }

    fn expire_attempts(&mut self, state: &State, view: &View, ops: &mut Vec<Op>) {
        if view.now_ms < view.leader_since_ms + view.worker_grace_ms {
            return;
        }
        for (attempt_id, (run_id, si)) in &state.active_attempts {
            let Some(attempt) = state.runs.get(run_id).and_then(|r| r.steps[*si].active_attempt()) else {
                continue;
            };
            if view.workers.iter().any(|w| w.id == attempt.worker) {
                continue;
            }
            // A worker that just dropped its connection gets the same grace to come back.
            let away_since = view.departed.get(&attempt.worker).copied().unwrap_or(0).max(view.leader_since_ms);
            if view.now_ms < away_since + view.worker_grace_ms {
                continue;
            }
            if self.claim(format!("lost:{attempt_id}"), view.now_ms) {
                ops.push(Op::AttemptLost {
                    attempt_id: *attempt_id,
                    reason: format!("worker {} is not connected", attempt.worker),
                });
            }
        }
    }

    /// Sleeps that are over, approvals nobody decided in time, runs past their own timeout.
    fn end_waits<'s>(&mut self, state: &'s State, order: &[(i64, &String, &'s Run)], view: &View, ops: &mut Vec<Op>) {
        let mut timeouts = PerVersion::default();
        for &(_, run_id, run) in order {
            if run.cancel_requested {
                continue;
            }
            let timeout = timeouts.get(run, || state.runbook_of(run).and_then(|rb| rb.timeout_ms));
            if run.state == RunState::Pending && timeout.is_none() && run.locks.is_empty() {
                // Not started: nothing waits, and nothing can time out.
                continue;
            }
            // A run's timeout is checked once; its on_failure/on_cancel steps are not timed.
            let limit = timeout.filter(|_| !run.timed_out && run.finishing.is_none());
            if let Some(limit) = limit
                && view.now_ms
                    >= run
                        .created_at_ms
                        .max(run.timer_start_ms)
                        .saturating_add(i64::try_from(limit).unwrap_or(i64::MAX))
            {
                if self.claim(format!("timeout:{run_id}"), view.now_ms) {
                    ops.push(Op::TimeoutRun { run_id: run_id.clone() });
                }
                continue;
            }
            // Only a run whose end gate was checked and passed can be waiting there.
            if view.guards_passed.get(run_id.as_str()).is_some_and(|g| g == GUARD_GATE_END)
                && state.guard_gate(run_id, view.now_ms).is_some_and(|(gate, _)| gate == GUARD_GATE_END)
                && self.claim(format!("guards:{run_id}"), view.now_ms)
            {
                ops.push(Op::GuardsPassed { run_id: run_id.clone() });
            }
            for si in current_steps(run) {
                let step = &run.steps[si];
                if step.state == StepState::Waiting
                    && step.deadline_ms <= view.now_ms
                    && self.claim(format!("wait:{run_id}:{si}"), view.now_ms)
                {
                    ops.push(Op::WaitElapsed { run_id: run_id.clone(), step_id: step.id.clone() });
                }
            }
        }
    }

    fn assign_steps<'s>(
        &mut self,
        state: &'s State,
        order: &[(i64, &'s String, &'s Run)],
        view: &View,
        ops: &mut Vec<Op>,
    ) {
        // An assignment stops being in flight once applied (the step is no longer pending with
        // that many attempts) or when it expires; until then its worker's slot stays taken.
        self.assigning.retain(|(run_id, si, attempts), (deadline, _)| {
            *deadline > view.now_ms && pending_steps(state, run_id).contains(&(*si, *attempts))
        });
        let mut load: BTreeMap<String, u32> =
            state.load_by_worker().into_iter().map(|(w, n)| (w.to_string(), n)).collect();
        for (_, worker) in self.assigning.values() {
            *load.entry(worker.clone()).or_insert(0) += 1;
        }
        let free = |load: &BTreeMap<String, u32>| {
            view.workers.iter().any(|w| load.get(&w.id).copied().unwrap_or(0) < w.holds())
        };
        let assigning_runs: std::collections::HashSet<String> =
            self.assigning.keys().map(|(r, _, _)| r.clone()).collect();
        // Runs started per runbook (for `concurrency`), counting starts in flight; counted only
        // when some runbook has a limit.
        let mut started: HashMap<&str, u32> = HashMap::new();
        if state.runbooks.values().any(|e| e.versions.values().any(|rb| rb.concurrency.is_some())) {
            for (_, id, run) in order {
                if run.state != RunState::Pending || assigning_runs.contains(id.as_str()) {
                    *started.entry(run.runbook.as_str()).or_insert(0) += 1;
                }
            }
            // Plain queued runs are pending: they count only while their start is in flight.
            for id in &assigning_runs {
                if let Some(run) = state.runs.get(id)
                    && state.queued_plain.contains(&(run.created_at_ms, id.clone()))
                {
                    *started.entry(run.runbook.as_str()).or_insert(0) += 1;
                }
            }
        }
        // The oldest active run of each schedule: runs of one-at-a-time schedules wait for it.
        // (Runs of schedules are never plain.)
        let mut oldest_of_schedule: HashMap<&str, &str> = HashMap::new();
        for (_, id, run) in order {
            if let Some(name) = run.trigger.schedule() {
                oldest_of_schedule.entry(name).or_insert(id.as_str());
            }
        }
        let mut workers_free = free(&load);
        let mut lock_queue: std::collections::HashSet<&str> = std::collections::HashSet::new();
        // Whether a runbook version's first step needs a worker (per decision): with every
        // worker busy, the runs queued behind them cost one lookup each, not a full look.
        let mut first_needs_worker = PerVersion::default();
        // The two parts of the index, merged by (created, id).
        let mut plain = state.queued_plain.iter().peekable();
        let mut others = order.iter().peekable();
        let mut plain_skipped = false;
        loop {
            let next_plain = if plain_skipped { None } else { plain.peek() };
            let take_plain = match (next_plain, others.peek()) {
                (Some((pa, pid)), Some((oa, oid, _))) => (*pa, pid) < (*oa, *oid),
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let (run_id, run) = if take_plain {
                let (_, id) = plain.next().expect("peeked");
                if !workers_free {
                    // No worker has room, and none will in this decision: skip the rest of
                    // the plain queue without reading it.
                    plain_skipped = true;
                    continue;
                }
                let Some(run) = state.runs.get(id) else { continue };
                (id, run)
            } else {
                let &(_, id, run) = others.next().expect("peeked");
                (id, run)
            };
            if !workers_free && run.state == RunState::Pending && run.locks.is_empty() {
                let needs = first_needs_worker.get(run, || {
                    state.runbook_of(run).and_then(|rb| rb.steps.first()).is_none_or(|s| s.is_plain_exec())
                });
                if needs {
                    continue;
                }
            }
            let pending = pending_steps(state, run_id);
            if pending.is_empty() {
                continue;
            }
            let runbook = state.runbook_of(run);
            let needs_worker = |si: usize| {
                runbook
                    .and_then(|rb| rb.step(run.steps[si].spec_id()))
                    .is_none_or(|spec| matches!(spec.action, Action::Exec(_)))
            };
            // Approval and sleep steps need no worker; everything else waits for a free one.
            if !workers_free && pending.iter().all(|(si, _)| needs_worker(*si)) {
                continue;
            }
            if run.state == RunState::Pending && !assigning_runs.contains(run_id.as_str()) {
                if held_by_schedule(state, run, view.now_ms, &oldest_of_schedule) {
                    continue;
                }
                let limit = runbook.and_then(|rb| rb.concurrency);
                let n = started.get(run.runbook.as_str()).copied().unwrap_or(0);
                if limit.is_some_and(|l| n >= l) {
                    // At its runbook's concurrency limit: waits for a run to end.
                    continue;
                }
            }
            if !run.locks.is_empty() && !run.locks_held {
                // Locks are taken first come, first served: a lock an older run waits for is
                // not free for a younger one.
                let blocked = run.locks.iter().any(|l| {
                    lock_queue.contains(l.as_str()) || state.locks.get(l).is_some_and(|(holder, _)| holder != run_id)
                });
                let skip = runbook.is_some_and(|rb| rb.skip_if_locked);
                if (!blocked || skip) && self.claim(format!("locks:{run_id}"), view.now_ms) {
                    ops.push(Op::AcquireLocks { run_id: run_id.clone() });
                }
                lock_queue.extend(run.locks.iter().map(String::as_str));
                continue;
            }
            // Guards are checked (outside the engine) before each step or batch starts.
            if let Some((gate, _)) = state.guard_gate(run_id, view.now_ms)
                && view.guards_passed.get(run_id.as_str()) != Some(&gate)
            {
                continue;
            }
            let was_pending = run.state == RunState::Pending;
            for (si, attempts) in pending {
                if needs_worker(si) && !workers_free {
                    continue;
                }
                let key = (run_id.clone(), si, attempts);
                // By step id, not index: a foreach step's first target takes its index.
                let render_key = format!("render:{run_id}:{}:{attempts}", run.steps[si].id);
                if self.assigning.contains_key(&key) || self.inflight.contains_key(&render_key) {
                    continue;
                }
                let Some(op) = plan_step(state, run, si, view, &mut load) else { continue };
                if was_pending && !matches!(op, Op::RenderFailed { .. }) {
                    *started.entry(run.runbook.as_str()).or_insert(0) += 1;
                }
                if let Op::Assign { worker, .. } = &op {
                    self.assigning.insert(key, (view.now_ms + INFLIGHT_TTL_MS, worker.clone()));
                    workers_free = free(&load);
                } else {
                    // A skip, a wait, an expansion or a render failure takes no worker slot;
                    // remember it so it is not proposed again while in flight.
                    self.inflight.insert(render_key, view.now_ms + INFLIGHT_TTL_MS);
                }
                ops.push(op);
                // A foreach expands first; its targets are planned once that is applied.
                if matches!(ops.last(), Some(Op::ExpandForeach { .. })) {
                    break;
                }
            }
        }
    }
}

/// Something derived from a runbook version, remembered for one decision: thousands of queued
/// runs share a handful of versions, and comparing a few short keys is cheaper than hashing.
struct PerVersion<'s, T> {
    entries: Vec<(&'s str, &'s str, T)>,
}

impl<T> Default for PerVersion<'_, T> {
    fn default() -> Self {
        PerVersion { entries: Vec::new() }
    }
}

impl<'s, T: Copy> PerVersion<'s, T> {
    fn get(&mut self, run: &'s Run, derive: impl FnOnce() -> T) -> T {
        if let Some((_, _, value)) = self.entries.iter().find(|(rb, v, _)| *v == run.version && *rb == run.runbook) {
            return *value;
        }
        let value = derive();
        self.entries.push((&run.runbook, &run.version, value));
        value
    }
}

/// Every run that waits at a guard gate: (run id, gate, guards).
pub fn guard_gates(state: &State, now_ms: i64) -> Vec<(String, String, Vec<baton_core::runbook::Guard>)> {
    if !state.runbooks.values().any(|e| e.versions.values().any(|rb| !rb.guards.is_empty())) {
        return Vec::new();
    }
    state
        .active_runs
        .iter()
        .filter_map(|id| state.guard_gate(id, now_ms).map(|(gate, guards)| (id.clone(), gate, guards.to_vec())))
        .collect()
}

/// A run of a schedule that may not start yet: the schedule is in a `hold` blackout window,
/// or its runs go one at a time (`buffer_one`, `buffer_all`, `cancel_other`, and backfills)
/// and an older one has not ended.
fn held_by_schedule(state: &State, run: &Run, now_ms: i64, oldest: &HashMap<&str, &str>) -> bool {
    let Some(name) = run.trigger.schedule() else { return false };
    let Some(s) = state.schedules.get(name) else { return false };
    if matches!(s.schedule.blackout_at(now_ms), Some((BlackoutAction::Hold, _))) {
        return true;
    }
    let serial = s.schedule.overlap.one_at_a_time() || matches!(run.trigger, baton_core::run::Trigger::Backfill { .. });
    serial && oldest.get(name).is_some_and(|first| *first != run.id)
}

/// The run's current steps that wait for an attempt: (step index, attempts made so far).
fn pending_steps(state: &State, run_id: &str) -> Vec<(usize, usize)> {
    let Some(run) = state.runs.get(run_id) else { return Vec::new() };
    if run.cancel_requested || run.paused || !state.active_runs.contains(run_id) {
        return Vec::new();
    }
    current_steps(run)
        .into_iter()
        .filter(|si| run.steps[*si].state == StepState::Pending)
        .map(|si| (si, run.steps[si].attempts.len()))
        .collect()
}

/// Renders step `si` of `run` and picks a worker with room, or says why it cannot run.
fn plan_step(state: &State, run: &Run, si: usize, view: &View, load: &mut BTreeMap<String, u32>) -> Option<Op> {
    let step_id = run.steps[si].id.clone();
    let Some(spec) = state.runbook_of(run).and_then(|rb| rb.step(run.steps[si].spec_id())) else {
        return Some(Op::RenderFailed {
            run_id: run.id.clone(),
            step_id,
            error: format!("runbook {} version {} has no such step", run.runbook, run.version),
        });
    };
    if run.steps[si].not_before_ms > view.now_ms {
        // A retry waiting out its backoff.
        return None;
    }
    let ctx = step_context(run, si);
    // A foreach step's `when` is decided per target (it may read `target`).
    let unexpanded = spec.foreach.is_some() && run.steps[si].target.is_none();
    if let Some(expr) = spec.when.as_ref().filter(|_| !unexpanded) {
        match eval_condition(expr, &ctx) {
            Ok(true) => {}
            Ok(false) => {
                let reason = format!("skipped: `when: {expr}` is false");
                return Some(Op::SkipStep { run_id: run.id.clone(), step_id, reason });
            }
            Err(e) => return Some(Op::RenderFailed { run_id: run.id.clone(), step_id, error: e.to_string() }),
        }
    }
    if let (Some(foreach), None) = (&spec.foreach, &run.steps[si].target) {
        // The foreach step itself: resolve its targets, once, into one step per target.
        let (targets, workers) = match &foreach.over {
            ForeachOver::List(expr) => match eval_list(expr, &ctx) {
                Ok(items) => {
                    let n = items.len();
                    (items, vec![None; n])
                }
                Err(e) => return Some(Op::RenderFailed { run_id: run.id.clone(), step_id, error: e.to_string() }),
            },
            ForeachOver::Workers(selector) => {
                // Label values are templates (`role: "{{ params.role }}"`).
                let mut labels = BTreeMap::new();
                for (k, v) in selector {
                    match render_text(v, &ctx) {
                        Ok(value) => labels.insert(k.clone(), value),
                        Err(e) => {
                            return Some(Op::RenderFailed { run_id: run.id.clone(), step_id, error: e.to_string() });
                        }
                    };
                }
                let ids: Vec<String> = view
                    .workers
                    .iter()
                    .filter(|w| labels.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
                    .map(|w| w.id.clone())
                    .collect();
                (
                    ids.iter().map(|id| serde_json::Value::String(id.clone())).collect(),
                    ids.into_iter().map(Some).collect(),
                )
            }
        };
        return Some(Op::ExpandForeach { run_id: run.id.clone(), step_id, targets, workers });
    }
    let exec = match &spec.action {
        Action::Exec(exec) => exec,
        Action::Sleep(_) => {
            return Some(Op::OpenWait { run_id: run.id.clone(), step_id, prompt: String::new() });
        }
        Action::Approval(approval) => {
            let prompt = match &approval.message {
                None => format!("Approve step {step_id} of run {} ({})?", run.id, run.runbook),
                Some(template) => match render_text(template, &ctx) {
                    Ok(text) => text,
                    Err(e) => return Some(Op::RenderFailed { run_id: run.id.clone(), step_id, error: e.to_string() }),
                },
            };
            return Some(Op::OpenWait { run_id: run.id.clone(), step_id, prompt });
        }
    };
    // A worker with a free slot before one with only a prefetch place, then the least loaded;
    // ties go to the earliest registered. Chosen before rendering: with every worker busy,
    // waiting runs cost nothing per decision.
    // A target of `foreach: { workers: ... }` runs on its own worker, and waits for it.
    let pinned = run.steps[si].target_worker.as_deref();
    let worker = view
        .workers
        .iter()
        .filter(|w| pinned.is_none_or(|p| p == w.id))
        .filter(|w| load.get(&w.id).copied().unwrap_or(0) < w.holds())
        .min_by_key(|w| {
            let n = load.get(&w.id).copied().unwrap_or(0);
            (n >= w.capacity, n)
        })?;
    let rendered = match render_exec(exec, &ctx) {
        Ok(r) => r,
        Err(e) => return Some(Op::RenderFailed { run_id: run.id.clone(), step_id, error: e.to_string() }),
    };
    *load.entry(worker.id.clone()).or_insert(0) += 1;
    Some(Op::Assign {
        run_id: run.id.clone(),
        step_id,
        worker: worker.id.clone(),
        argv: rendered.argv,
        env: rendered.env,
        workdir: rendered.workdir,
        timeout_ms: spec.timeout_ms,
        expected_attempts: Some(run.steps[si].attempts.len()),
        worker_boot: worker.boot,
    })
}

/// The context step `si` renders in: the run's, plus `target` for a foreach target.
pub fn step_context(run: &Run, si: usize) -> serde_json::Value {
    let mut ctx = template_context(run);
    if let Some(target) = &run.steps[si].target {
        ctx["target"] = target.clone();
    }
    ctx
}

/// The template context of a run: `params`, `steps.<id>.outputs|status`, `run`. A foreach
/// step is there under its own id too: `status` for all its targets (`succeeded` when every
/// one is done, `failed` if one failed, else `running`), `outputs` by target step id.
pub fn template_context(run: &Run) -> serde_json::Value {
    let mut steps: serde_json::Map<String, serde_json::Value> = run
        .steps
        .iter()
        .map(|s| (s.id.clone(), serde_json::json!({ "outputs": s.outputs, "status": s.state.as_str() })))
        .collect();
    let mut groups: BTreeMap<&str, Vec<&baton_core::run::StepRun>> = BTreeMap::new();
    for s in run.steps.iter().filter(|s| s.target.is_some()) {
        groups.entry(s.spec_id()).or_default().push(s);
    }
    for (id, items) in groups {
        let status = if items.iter().any(|s| matches!(s.state, StepState::Failed | StepState::Lost)) {
            "failed"
        } else if items.iter().all(|s| s.state.is_done()) {
            "succeeded"
        } else {
            "running"
        };
        let outputs: serde_json::Map<String, serde_json::Value> =
            items.iter().map(|s| (s.id.clone(), serde_json::json!(s.outputs))).collect();
        steps.insert(id.to_string(), serde_json::json!({ "outputs": outputs, "status": status }));
    }
    let finishing = run.finishing.as_ref();
    serde_json::json!({
        "params": run.params,
        "steps": steps,
        "run": {
            "id": run.id,
            "runbook": run.runbook,
            "version": run.version,
            "trigger": run.trigger.kind(),
            "principal": run.principal,
            "started_at": run.started_at_ms,
            "failed_step": finishing.and_then(|f| f.failed_step.clone()).unwrap_or_default(),
            "error": finishing.and_then(|f| f.error.clone()).unwrap_or_default(),
        },
    })
}

/// The attempt is active and assigned to `worker`: reports about it from that worker count.
pub fn holds(state: &State, worker: &str, attempt_id: u64) -> bool {
    state.active_attempts.get(&attempt_id).is_some_and(|(run_id, si)| {
        state.runs[run_id].steps[*si].active_attempt().is_some_and(|a| a.id == attempt_id && a.worker == worker)
    })
}

/// What the leader does with a result a worker reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultRoute {
    /// Commit it (`AttemptFinished`); the worker's acknowledgement follows the commit.
    Propose,
    /// Acknowledge it at once: there is nothing to record (see [`route_result`]).
    Ack,
    /// Ignore it: the attempt is active on another worker.
    Ignore,
}

/// Routes a result for `attempt_id` reported by `worker`. A result is acknowledged without a
/// commit only when this node has applied the attempt's `Assign` (an attempt id is the index
/// of that entry) and the attempt is not active: it was resolved (a re-sent result, which
/// apply would ignore) or taken back. A node that has not applied that far (a new leader
/// catching up) must not decide so: the worker would forget a result of an attempt it ran,
/// and a later registration without it would take it back and run the step again.
pub fn route_result(state: &State, worker: &str, attempt_id: u64) -> ResultRoute {
    if !state.active_attempts.contains_key(&attempt_id) {
        if attempt_id <= state.applied_index { ResultRoute::Ack } else { ResultRoute::Propose }
    } else if holds(state, worker, attempt_id) {
        ResultRoute::Propose
    } else {
        ResultRoute::Ignore
    }
}

/// Attempts a (re)registering worker runs that it should stop: already resolved (for example
/// declared lost), assigned to another worker, or of a run being cancelled. An id this node
/// has not applied yet is left alone: it may be a valid assignment this node is behind on.
pub fn to_stop(state: &State, worker: &str, running: &[u64]) -> Vec<u64> {
    running
        .iter()
        .copied()
        .filter(|id| match state.active_attempts.get(id) {
            None => *id <= state.applied_index,
            Some((run_id, si)) => {
                let run = &state.runs[run_id];
                run.cancel_requested || run.steps[*si].active_attempt().is_none_or(|a| a.worker != worker)
            }
        })
        .collect()
}

/// Reconciles what a (re)connecting worker reports with the replicated state: attempts the
/// state says it holds but that it neither runs nor has a result for are lost.
pub fn reconcile(state: &State, worker: &str, boot: u64, running: &[u64], reported: &[u64]) -> Vec<Op> {
    state
        .active_attempts
        .iter()
        .filter_map(|(id, (run_id, si))| {
            let a = state.runs.get(run_id)?.steps[*si].active_attempt()?;
            if a.worker != worker || running.contains(id) || reported.contains(id) {
                return None;
            }
            Some(match undelivered(a, boot) {
                true => Op::AttemptUndelivered {
                    attempt_id: *id,
                    reason: format!("worker {worker} registered again without it: it never received it"),
                },
                false => Op::AttemptLost {
                    attempt_id: *id,
                    reason: format!("worker {worker} reconnected without it (it restarted or never received it)"),
                },
            })
        })
        .collect()
}

/// Whether an active attempt that worker process `boot` did not report when it registered
/// provably never reached it: it was assigned to that same process (a worker reports every
/// attempt it holds on each registration, and reads from one session at a time) and no start
/// was ever reported. Otherwise its outcome is unknown.
pub fn undelivered(a: &baton_core::run::Attempt, boot: u64) -> bool {
    boot != 0 && a.worker_boot == boot && a.state == baton_core::run::AttemptState::Assigned
}

#[cfg(test)]
mod tests {
    use baton_core::command::Command;
    use baton_core::run::AttemptState;
    use baton_core::{Runbook, Schedule};

    use super::*;

    const RB: &str = r#"
name: demo
params:
  who: { type: string, default: "x" }
steps:
  - id: one
    action: exec
    with: { command: ["echo", "{{ params.who }}"] }
  - id: two
    action: exec
    with: { command: ["echo", "{{ steps.one.outputs.name }}"] }
"#;

    struct World {
        state: State,
        index: u64,
    }

    impl World {
        fn new() -> World {
            let mut w = World { state: State::default(), index: 0 };
            w.apply(0, Op::ApplyRunbook { runbook: Runbook::parse("demo.yaml", RB).unwrap() });
            w
        }
        fn apply(&mut self, at_ms: i64, op: Op) {
            self.index += 1;
            self.state.apply(self.index, 1, Command { at_ms, op });
        }
        fn start(&mut self, id: &str) {
            let op = Op::StartRun {
                run_id: id.into(),
                runbook: "demo".into(),
                params: BTreeMap::new(),
                idempotency_key: None,
            };
            self.apply(0, op);
        }
    }

    fn view(now_ms: i64, workers: &[(&str, u32)]) -> View {
        View {
            now_ms,
            leader_since_ms: 0,
            workers: workers
                .iter()
                .map(|(id, c)| WorkerSlot { id: id.to_string(), capacity: *c, ..Default::default() })
                .collect(),
            departed: HashMap::new(),
            worker_grace_ms: 1_000,
            guards_passed: HashMap::new(),
        }
    }

    #[test]
    fn assigns_within_capacity_and_not_twice_while_in_flight() {
        let mut w = World::new();
        for i in 0..3 {
            w.start(&format!("r{i}"));
        }
        let mut e = Engine::new();
        let ops = e.decide(&w.state, &view(10, &[("a", 1), ("b", 1)]));
        let assigned: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Assign { worker, .. } => Some(worker.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(assigned.len(), 2, "two workers with capacity 1: {ops:?}");
        assert!(assigned.contains(&"a") && assigned.contains(&"b"));
        // Nothing applied yet: deciding again must not assign the same steps again.
        let again = e.decide(&w.state, &view(20, &[("a", 1), ("b", 1)]));
        assert!(again.is_empty(), "{again:?}");
        // Rendered from the run's params.
        assert!(matches!(&ops[0], Op::Assign { argv, .. } if argv == &["echo", "x"]));
    }

    #[test]
    fn prefetch_places_are_filled_after_free_slots_everywhere() {
        let mut w = World::new();
        for i in 0..6 {
            w.start(&format!("r{i}"));
        }
        let mut v = view(10, &[("a", 1), ("b", 1)]);
        v.workers[0].prefetch = 2;
        let ops = Engine::new().decide(&w.state, &v);
        let assigned: Vec<(&str, &str)> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Assign { run_id, worker, .. } => Some((run_id.as_str(), worker.as_str())),
                _ => None,
            })
            .collect();
        // b's free slot is used before a's queue: a holds 1 running + 2 queued, b 1; the
        // oldest runs go first and r4, r5 wait in the cluster.
        assert_eq!(assigned, [("r0", "a"), ("r1", "b"), ("r2", "a"), ("r3", "a")], "{ops:?}");
        // A free slot anywhere wins over a queue place on a less loaded worker.
        let mut v = view(10, &[("a", 1), ("b", 3)]);
        v.workers[0].prefetch = 4;
        let ops = Engine::new().decide(&w.state, &v);
        let on: Vec<&str> = ops
            .iter()
            .filter_map(|op| match op {
                Op::Assign { worker, .. } => Some(worker.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(on, ["a", "b", "b", "b", "a", "a"], "{ops:?}");
    }

    #[test]
    fn no_worker_no_assignment() {
        let mut w = World::new();
        w.start("r1");
        assert!(Engine::new().decide(&w.state, &view(10, &[])).is_empty());
    }

    #[test]
    fn a_template_error_fails_the_step_instead_of_running_it() {
        let mut w = World::new();
        w.start("r1");
        let mut e = Engine::new();
        let ops = e.decide(&w.state, &view(10, &[("a", 2)]));
        for op in ops {
            w.apply(10, op);
        }
        let attempt = w.state.runs["r1"].steps[0].attempts[0].id;
        // Step one succeeds without the output step two needs.
        let op = Op::AttemptFinished {
            attempt_id: attempt,
            state: AttemptState::Succeeded,
            exit_code: Some(0),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            outputs: BTreeMap::new(),
            error: None,
        };
        w.apply(20, op);
        let ops = e.decide(&w.state, &view(30, &[("a", 2)]));
        assert!(matches!(&ops[..], [Op::RenderFailed { step_id, .. }] if step_id == "two"), "{ops:?}");
    }

    #[test]
    fn due_ticks_fire_and_ticks_before_the_leader_are_missed() {
        let mut w = World::new();
        let text = "schedule: s\nrunbook: demo\ncron: \"* * * * * *\"\n";
        w.apply(500, Op::ApplySchedule { schedule: Schedule::parse("s.yaml", text).unwrap() });
        let mut e = Engine::new();
        // A leader since 4.5 s: ticks 1..=4 s were missed; the one at 5 s fires.
        let mut v = view(4_600, &[]);
        v.leader_since_ms = 4_500;
        let ops = e.decide(&w.state, &v);
        assert_eq!(
            ops,
            vec![Op::RecordMissed { schedule: "s".into(), first_tick_ms: 1_000, last_tick_ms: 4_000, count: 4 }]
        );
        for op in ops {
            w.apply(4_600, op);
        }
        assert!(e.decide(&w.state, &v).is_empty(), "5 s is not due yet");
        v.now_ms = 5_001;
        assert_eq!(e.decide(&w.state, &v), vec![Op::Fire { schedule: "s".into(), tick_ms: 5_000 }]);
        assert_eq!(Engine::new().next_due_ms(&w.state), Some(5_000));
    }

    #[test]
    fn attempts_of_absent_workers_are_lost_after_the_grace_period() {
        let mut w = World::new();
        w.start("r1");
        let mut e = Engine::new();
        for op in e.decide(&w.state, &view(10, &[("a", 1)])) {
            w.apply(10, op);
        }
        // Worker gone, but still inside the grace period after the leader change.
        assert!(e.decide(&w.state, &view(500, &[])).is_empty());
        // A worker that disconnected at 1.2 s has its own grace period.
        let mut v = view(1_500, &[]);
        v.departed.insert("a".into(), 1_200);
        assert!(e.decide(&w.state, &v).is_empty());
        v.now_ms = 2_300;
        let ops = e.decide(&w.state, &v);
        assert!(matches!(&ops[..], [Op::AttemptLost { .. }]), "{ops:?}");
        // Reconcile: a worker that comes back without the attempt loses it at once.
        let id = *w.state.active_attempts.keys().next().unwrap();
        assert_eq!(reconcile(&w.state, "a", 0, &[id], &[]), vec![]);
        assert_eq!(reconcile(&w.state, "a", 0, &[], &[id]), vec![]);
        assert!(
            matches!(&reconcile(&w.state, "a", 0, &[], &[])[..], [Op::AttemptLost { attempt_id, .. }] if *attempt_id == id)
        );
        assert_eq!(reconcile(&w.state, "other", 0, &[], &[]), vec![]);
    }

    #[test]
    fn an_attempt_the_same_worker_process_never_received_is_taken_back_not_lost() {
        let mut w = World::new();
        w.start("r1");
        let mut e = Engine::new();
        let mut v = view(10, &[("a", 1)]);
        v.workers[0].boot = 7;
        let ops = e.decide(&w.state, &v);
        assert!(matches!(&ops[..], [Op::Assign { worker_boot: 7, .. }]), "{ops:?}");
        for op in ops {
            w.apply(10, op);
        }
        let id = *w.state.active_attempts.keys().next().unwrap();
        // Another process (the worker restarted): it may have run it, so it is lost.
        assert!(matches!(&reconcile(&w.state, "a", 8, &[], &[])[..], [Op::AttemptLost { .. }]));
        // The same process, without it: it never arrived. Taken back, the step is pending
        // again with no attempt used, and the next decision assigns it anew.
        let ops = reconcile(&w.state, "a", 7, &[], &[]);
        assert!(matches!(&ops[..], [Op::AttemptUndelivered { attempt_id, .. }] if *attempt_id == id), "{ops:?}");
        for op in ops {
            w.apply(20, op);
        }
        let step = &w.state.runs["r1"].steps[0];
        assert_eq!((step.state, step.attempts.len()), (StepState::Pending, 0));
        assert!(w.state.active_attempts.is_empty());
        assert!(w.state.runs["r1"].events.iter().any(|e| e.action == "reassign"), "the history says so");
        v.now_ms = 30;
        let ops = Engine::new().decide(&w.state, &v);
        assert!(matches!(&ops[..], [Op::Assign { expected_attempts: Some(0), .. }]), "{ops:?}");

        // Once its start was reported it did arrive: the same process not reporting it means
        // it ended without a result, and that outcome is unknown.
        for op in ops {
            w.apply(30, op);
        }
        let id = *w.state.active_attempts.keys().next().unwrap();
        w.apply(40, Op::AttemptStarted { attempt_id: id });
        assert!(matches!(&reconcile(&w.state, "a", 7, &[], &[])[..], [Op::AttemptLost { .. }]));
        w.apply(50, Op::AttemptUndelivered { attempt_id: id, reason: "test".into() });
        assert_eq!(w.state.runs["r1"].steps[0].attempts[0].state, AttemptState::Lost);
    }

    #[test]
    fn a_result_is_acknowledged_without_a_commit_only_where_its_assignment_was_applied() {
        let mut w = World::new();
        w.start("r1");
        let behind = w.state.clone();
        let ops = Engine::new().decide(&w.state, &view(10, &[("a", 1)]));
        for op in ops {
            w.apply(10, op);
        }
        let id = *w.state.active_attempts.keys().next().unwrap();
        assert_eq!(route_result(&w.state, "a", id), ResultRoute::Propose);
        assert_eq!(route_result(&w.state, "b", id), ResultRoute::Ignore, "another worker's attempt");
        // A new leader that has not applied the assignment yet knows no such attempt. It must
        // not acknowledge the result (the worker would forget an attempt it ran): it commits
        // it, and apply sees the assignment first.
        assert!(!behind.active_attempts.contains_key(&id) && behind.applied_index < id);
        assert_eq!(route_result(&behind, "a", id), ResultRoute::Propose);
        // Taken back: nothing to record, so it is acknowledged at once.
        w.apply(20, Op::AttemptUndelivered { attempt_id: id, reason: "test".into() });
        assert_eq!(route_result(&w.state, "a", id), ResultRoute::Ack);
        // A resolved attempt's re-sent result changes nothing either: acknowledged at once, to
        // whichever worker sends it (it would resend forever otherwise).
        let ops = Engine::new().decide(&w.state, &view(30, &[("a", 1)]));
        for op in ops {
            w.apply(30, op);
        }
        let id = *w.state.active_attempts.keys().next().unwrap();
        w.apply(40, Op::AttemptLost { attempt_id: id, reason: "test".into() });
        assert_eq!(route_result(&w.state, "a", id), ResultRoute::Ack);
        assert_eq!(route_result(&w.state, "b", id), ResultRoute::Ack);
    }
}
