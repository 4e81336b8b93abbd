//! A tiny sans-IO world for engine and state machine tests: it applies what the engine decides,
//! with the clock in the test's hands.

use std::collections::{BTreeMap, HashMap};

use baton_core::Runbook;
use baton_core::command::{Command, Op};
use baton_core::run::{RunState, StepState};
use baton_scheduler::engine::{Engine, View, WorkerSlot};
use baton_scheduler::fsm::{Effect, Reply, State};

pub struct World {
    pub state: State,
    pub engine: Engine,
    pub index: u64,
    pub now: i64,
    pub workers: Vec<WorkerSlot>,
    /// When the simulated leader took over (ticks due before it were missed).
    pub leader_since: i64,
    /// Guard gates that passed (the leader's checks, outside the engine).
    pub guards_passed: std::collections::HashMap<String, String>,
}

impl World {
    pub fn new(runbooks: &[&str]) -> World {
        let mut w = World {
            state: State::default(),
            engine: Engine::new(),
            index: 0,
            now: 1_000,
            workers: vec![WorkerSlot { id: "w1".into(), capacity: 4, ..Default::default() }],
            leader_since: 0,
            guards_passed: Default::default(),
        };
        for text in runbooks {
            w.apply(Op::ApplyRunbook { runbook: Runbook::parse("rb.yaml", text).unwrap() });
        }
        w
    }

    pub fn apply(&mut self, op: Op) -> (Reply, Vec<Effect>) {
        self.index += 1;
        let out = self.state.apply(self.index, 1, Command { at_ms: self.now, op });
        // The engine's ordered indexes are what a fresh build of them says, after every command.
        let fresh = State::from_json(&serde_json::to_vec(&self.state).unwrap()).unwrap();
        assert_eq!(self.state.active_order, fresh.active_order, "the active run index drifted");
        assert_eq!(self.state.queued_plain, fresh.queued_plain, "the plain queue drifted");
        assert_eq!(self.state.fire_order, fresh.fire_order, "the schedule index drifted");
        assert_eq!(self.state.active_by_schedule, fresh.active_by_schedule, "the runs-by-schedule index drifted");
        out
    }

    pub fn start(&mut self, id: &str, runbook: &str) {
        let op =
            Op::StartRun { run_id: id.into(), runbook: runbook.into(), params: BTreeMap::new(), idempotency_key: None };
        assert!(matches!(self.apply(op).0, Reply::Run { .. }));
    }

    /// Lets the engine decide at the current time and applies everything it proposes.
    pub fn step(&mut self) -> Vec<Op> {
        let view = View {
            now_ms: self.now,
            leader_since_ms: self.leader_since,
            workers: self.workers.clone(),
            departed: HashMap::new(),
            worker_grace_ms: 1_000,
            guards_passed: self.guards_passed.clone(),
        };
        let ops = self.engine.decide(&self.state, &view);
        for op in ops.clone() {
            self.apply(op);
        }
        ops
    }

    pub fn advance(&mut self, ms: i64) -> Vec<Op> {
        self.now += ms;
        self.step()
    }

    pub fn decide(&mut self, run: &str, who: &str, groups: &[&str], approve: bool, reason: &str) -> Reply {
        let op = Op::Decide {
            run_id: run.into(),
            step_id: None,
            principal: who.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            approve,
            reason: reason.into(),
            via: "api".into(),
            request_id: format!("{who}-{approve}-{}", self.index),
        };
        self.apply(op).0
    }

    pub fn step_state(&self, run: &str, step: usize) -> StepState {
        self.state.runs[run].steps[step].state
    }

    pub fn run_state(&self, run: &str) -> RunState {
        self.state.runs[run].state
    }
}

/// The reason of a rejection; panics on anything else.
pub fn rejected(reply: Reply) -> String {
    match reply {
        Reply::Rejected(why) => why,
        other => panic!("expected a rejection, got {other:?}"),
    }
}

impl World {
    /// The run's active attempt id.
    pub fn active(&self, run: &str) -> u64 {
        self.state.runs[run]
            .steps
            .iter()
            .find_map(|s| s.active_attempt())
            .map(|a| a.id)
            .unwrap_or_else(|| panic!("run {run} has no active attempt: {:#?}", self.state.runs[run]))
    }

    /// The active attempt of step `step` of run `run`.
    pub fn active_of(&self, run: &str, step: &str) -> u64 {
        let s = self.state.runs[run].steps.iter().find(|s| s.id == step);
        s.and_then(|s| s.active_attempt()).map(|a| a.id).unwrap_or_else(|| panic!("{run}/{step} has no active attempt"))
    }

    /// The worker reports the attempt's outcome.
    pub fn finish(&mut self, attempt_id: u64, state: baton_core::run::AttemptState) -> (Reply, Vec<Effect>) {
        let ok = state == baton_core::run::AttemptState::Succeeded;
        self.apply(Op::AttemptFinished {
            attempt_id,
            state,
            exit_code: Some(if ok { 0 } else { 1 }),
            stdout_tail: String::new(),
            stderr_tail: String::new(),
            outputs: BTreeMap::new(),
            error: None,
        })
    }
}

impl World {
    /// Applies a schedule document.
    pub fn schedule(&mut self, text: &str) {
        let schedule = baton_core::Schedule::parse("s.yaml", text).unwrap();
        let reply = self.apply(Op::ApplySchedule { schedule }).0;
        assert!(matches!(reply, Reply::Applied { .. }), "{reply:?}");
    }

    /// Ids of the runs of schedule `name`, oldest first, with their states.
    pub fn runs_of(&self, name: &str) -> Vec<(String, RunState)> {
        self.state
            .runs_newest_first("")
            .filter(|r| r.trigger.schedule() == Some(name))
            .map(|r| (r.id.clone(), r.state))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    }
}

/// An operator acting through the API.
pub fn by(principal: &str) -> baton_core::command::Actor {
    baton_core::command::Actor { principal: principal.into(), via: "api".into() }
}
