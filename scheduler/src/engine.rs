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
use baton_core::run::{Run, StepState};
use baton_core::runbook::Action;
use baton_core::template::render_exec;

use crate::fsm::{State, next_step};

/// How long a proposal is remembered before the engine may propose it again.
const INFLIGHT_TTL_MS: i64 = 5_000;
/// At most this many ticks are counted one by one in a missed record.
const MAX_MISSED_COUNT: u64 = 100_000;

/// A connected worker, as the leader sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerSlot {
    /// Worker id.
    pub id: String,
    /// How many attempts it runs at once.
    pub capacity: u32,
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
    /// How long a worker may stay away after a leader change before its attempts are lost.
    pub worker_grace_ms: i64,
}

/// The engine's volatile memory: proposals not yet seen applied.
#[derive(Debug, Default)]
pub struct Engine {
    inflight: HashMap<String, i64>,
}

impl Engine {
    /// A fresh engine (after a leader change nothing is in flight).
    pub fn new() -> Engine {
        Engine::default()
    }

    /// Forgets every in-flight proposal (the node lost leadership).
    pub fn reset(&mut self) {
        self.inflight.clear();
    }

    /// The commands to propose now.
    pub fn decide(&mut self, state: &State, view: &View) -> Vec<Op> {
        self.inflight.retain(|_, deadline| *deadline > view.now_ms);
        let mut ops = Vec::new();
        self.fire_schedules(state, view, &mut ops);
        self.expire_attempts(state, view, &mut ops);
        self.assign_steps(state, view, &mut ops);
        ops
    }

    /// The earliest replicated tick, so the caller can sleep until it.
    pub fn next_due_ms(state: &State) -> Option<i64> {
        state.schedules.values().filter_map(|s| s.next_fire_at_ms).min()
    }

    fn claim(&mut self, key: String, now: i64) -> bool {
        if self.inflight.contains_key(&key) {
            return false;
        }
        self.inflight.insert(key, now + INFLIGHT_TTL_MS);
        true
    }

    fn fire_schedules(&mut self, state: &State, view: &View, ops: &mut Vec<Op>) {
        for (name, s) in &state.schedules {
            let Some(tick) = s.next_fire_at_ms else { continue };
            if tick > view.now_ms {
                continue;
            }
            if !self.claim(format!("tick:{name}:{tick}"), view.now_ms) {
                continue;
            }
            if tick >= view.leader_since_ms {
                ops.push(Op::Fire { schedule: name.clone(), tick_ms: tick });
                continue;
            }
            // Ticks from before this leader took over could not fire in time: one record for
            // all of them, then the schedule continues from the first tick at or after now.
            let mut last = tick;
            let mut count = 1;
            while let Some(next) = s.schedule.next_after(last) {
                if next >= view.leader_since_ms || count >= MAX_MISSED_COUNT {
                    break;
                }
                last = next;
                count += 1;
            }
            ops.push(Op::RecordMissed { schedule: name.clone(), first_tick_ms: tick, last_tick_ms: last, count });
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
            if self.claim(format!("lost:{attempt_id}"), view.now_ms) {
                ops.push(Op::AttemptLost {
                    attempt_id: *attempt_id,
                    reason: format!("worker {} is not connected", attempt.worker),
                });
            }
        }
    }

    fn assign_steps(&mut self, state: &State, view: &View, ops: &mut Vec<Op>) {
        let mut load: BTreeMap<String, u32> =
            state.load_by_worker().into_iter().map(|(w, n)| (w.to_string(), n)).collect();
        for run_id in &state.active_runs {
            let Some(run) = state.runs.get(run_id) else { continue };
            if run.cancel_requested {
                continue;
            }
            let Some(si) = next_step(run) else { continue };
            let step = &run.steps[si];
            if step.state != StepState::Pending {
                continue;
            }
            let key = format!("step:{run_id}:{}:{}", step.id, step.attempts.len());
            if self.inflight.contains_key(&key) {
                continue;
            }
            let Some(op) = plan_step(state, run, si, view, &mut load) else { continue };
            self.inflight.insert(key, view.now_ms + INFLIGHT_TTL_MS);
            ops.push(op);
        }
    }
}

/// Renders step `si` of `run` and picks a worker with room, or says why it cannot run.
fn plan_step(state: &State, run: &Run, si: usize, view: &View, load: &mut BTreeMap<String, u32>) -> Option<Op> {
    let step_id = run.steps[si].id.clone();
    let Some(spec) = state.runbook_of(run).and_then(|rb| rb.step(&step_id)) else {
        return Some(Op::RenderFailed {
            run_id: run.id.clone(),
            step_id,
            error: format!("runbook {} version {} has no such step", run.runbook, run.version),
        });
    };
    let Action::Exec(exec) = &spec.action;
    let rendered = match render_exec(exec, &template_context(run)) {
        Ok(r) => r,
        Err(e) => return Some(Op::RenderFailed { run_id: run.id.clone(), step_id, error: e.to_string() }),
    };
    // Least-loaded worker with free capacity; ties go to the earliest registered.
    let worker = view
        .workers
        .iter()
        .filter(|w| load.get(&w.id).copied().unwrap_or(0) < w.capacity)
        .min_by_key(|w| load.get(&w.id).copied().unwrap_or(0))?;
    *load.entry(worker.id.clone()).or_insert(0) += 1;
    Some(Op::Assign {
        run_id: run.id.clone(),
        step_id,
        worker: worker.id.clone(),
        argv: rendered.argv,
        env: rendered.env,
        workdir: rendered.workdir,
        timeout_ms: spec.timeout_ms,
    })
}

/// The template context of a run: `params`, `steps.<id>.outputs|status`, `run`.
pub fn template_context(run: &Run) -> serde_json::Value {
    let steps: serde_json::Map<String, serde_json::Value> = run
        .steps
        .iter()
        .filter(|s| s.state != StepState::Pending)
        .map(|s| {
            (s.id.clone(), serde_json::json!({ "outputs": s.outputs, "status": s.state.as_str() }))
        })
        .collect();
    serde_json::json!({
        "params": run.params,
        "steps": steps,
        "run": { "id": run.id, "runbook": run.runbook, "version": run.version, "trigger": run.trigger.kind() },
    })
}

/// Reconciles what a (re)connecting worker reports with the replicated state: attempts the
/// state says it holds but that it neither runs nor has a result for are lost.
pub fn reconcile(state: &State, worker: &str, running: &[u64], reported: &[u64]) -> Vec<Op> {
    state
        .active_attempts
        .iter()
        .filter_map(|(id, (run_id, si))| {
            let a = state.runs.get(run_id)?.steps[*si].active_attempt()?;
            (a.worker == worker && !running.contains(id) && !reported.contains(id)).then(|| Op::AttemptLost {
                attempt_id: *id,
                reason: format!("worker {worker} reconnected without it (it restarted or never received it)"),
            })
        })
        .collect()
}
