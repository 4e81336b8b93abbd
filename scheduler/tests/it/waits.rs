//! Approval steps, sleep steps and run timeouts, decided by the engine and applied by the
//! state machine, without I/O: a tiny world that proposes what the engine decides and applies
//! it, with the clock in the test's hands.

use std::collections::{BTreeMap, HashMap};

use baton_core::command::Op;
use baton_core::run::{AttemptState, RunState, StepState};
use baton_scheduler::engine::{View, WorkerSlot};
use baton_scheduler::fsm::{Effect, Reply};

use crate::world::{World, rejected};

const GATED: &str = r#"
name: gated
params:
  service: { type: string, default: web }
steps:
  - id: pause
    sleep: 2s
  - id: approve
    approval:
      approvers: [alice, "group:sre"]
      min_approvals: 2
      timeout: 10m
      message: "Restart {{ params.service }}?"
  - id: restart
    action: exec
    with: { command: ["echo", "{{ steps.approve.outputs.approved_by }}"] }
"#;

const TIMED: &str = r#"
name: timed
timeout: 1m
steps:
  - id: slow
    action: exec
    with: { command: ["sleep", "3600"] }
  - id: after
    action: exec
    with: { command: ["true"] }
"#;

const TOLERANT: &str = r#"
name: tolerant
steps:
  - id: ask
    approval: { approvers: [alice], timeout: 5s }
    on_error: continue
  - id: anyway
    sleep: 1s
"#;

#[test]
fn a_sleep_ends_at_its_deadline_and_an_approval_needs_enough_approvers() {
    let mut w = World::new(&[GATED]);
    w.start("r1", "gated");
    // The sleep opens at once (no worker needed) and ends 2 s later, not before.
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::OpenWait { step_id, .. }] if step_id == "pause"), "{ops:?}");
    assert_eq!(w.step_state("r1", 0), StepState::Waiting);
    assert_eq!(w.run_state("r1"), RunState::Running);
    assert_eq!(w.state.runs["r1"].steps[0].deadline_ms, 3_000);
    assert!(w.advance(1_999).is_empty());
    w.advance(1);
    assert_eq!(w.step_state("r1", 0), StepState::Succeeded);
    // The approval opens with its rendered question and who may answer.
    w.step();
    let step = &w.state.runs["r1"].steps[1];
    assert_eq!(step.state, StepState::Waiting);
    let request = step.approval.as_ref().unwrap();
    assert_eq!(request.prompt, "Restart web?");
    assert_eq!(request.approvers, ["alice", "group:sre"]);
    assert_eq!(step.deadline_ms, w.now + 600_000);

    // Not an approver, then the wrong step: refused, nothing recorded.
    let why = rejected(w.decide("r1", "mallory", &["dev"], true, ""));
    assert!(why.contains("mallory may not decide on step approve"), "{why}");
    let op = Op::Decide {
        run_id: "r1".into(),
        step_id: Some("restart".into()),
        principal: "alice".into(),
        groups: vec![],
        approve: true,
        reason: String::new(),
        via: "api".into(),
        request_id: "x".into(),
    };
    assert!(rejected(w.apply(op).0).contains("waits for approval of step approve, not restart"));
    assert!(w.state.runs["r1"].steps[1].decisions.is_empty());

    // One approval of two: still waiting; the same person twice is refused.
    assert_eq!(w.decide("r1", "alice", &[], true, "ok"), Reply::Done);
    assert_eq!(w.step_state("r1", 1), StepState::Waiting);
    assert!(rejected(w.decide("r1", "alice", &[], true, "again")).contains("alice already decided"));
    // A member of group:sre makes two; the step succeeds and the next one reads who approved.
    assert_eq!(w.decide("r1", "bob", &["sre"], true, "lgtm"), Reply::Done);
    assert_eq!(w.step_state("r1", 1), StepState::Succeeded);
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::Assign { argv, .. }] if argv == &["echo", "alice,bob"]), "{ops:?}");
    let decisions = &w.state.runs["r1"].steps[1].decisions;
    assert_eq!(
        decisions.iter().map(|d| (d.principal.as_str(), d.approve)).collect::<Vec<_>>(),
        [("alice", true), ("bob", true)]
    );
    // Deciding on a run that waits for nothing is refused with its state.
    assert!(rejected(w.decide("r1", "carol", &["sre"], true, "")).contains("waits for no approval"));
}

#[test]
fn a_denial_or_a_timeout_fails_the_step_and_a_repeated_request_counts_once() {
    let mut w = World::new(&[GATED]);
    w.start("r1", "gated");
    w.step();
    w.advance(2_000);
    w.step();
    assert_eq!(w.step_state("r1", 1), StepState::Waiting);
    // The same request proposed twice (after a leader change) is applied once, not refused.
    let op = Op::Decide {
        run_id: "r1".into(),
        step_id: None,
        principal: "alice".into(),
        groups: vec![],
        approve: true,
        reason: String::new(),
        via: "slack".into(),
        request_id: "req-1".into(),
    };
    assert_eq!(w.apply(op.clone()).0, Reply::Done);
    assert_eq!(w.apply(op).0, Reply::Done);
    assert_eq!(w.state.runs["r1"].steps[1].decisions.len(), 1);
    assert_eq!(w.state.runs["r1"].steps[1].decisions[0].via, "slack");
    // One denial is enough to fail it, whatever was approved before.
    assert_eq!(w.decide("r1", "carol", &["sre"], false, "not during the sale"), Reply::Done);
    assert_eq!(w.step_state("r1", 1), StepState::Failed);
    assert_eq!(w.run_state("r1"), RunState::Failed);
    let error = w.state.runs["r1"].error.clone().unwrap();
    assert_eq!(error, "step approve failed: denied by carol: not during the sale");
    assert_eq!(w.step_state("r1", 2), StepState::Pending, "later steps never run");

    // Nobody decides: denied at the deadline, not a millisecond earlier.
    w.start("r2", "gated");
    w.step();
    w.advance(2_000);
    w.step();
    assert!(w.advance(599_999).is_empty());
    w.advance(1);
    assert_eq!(w.step_state("r2", 1), StepState::Failed);
    let error = w.state.runs["r2"].error.clone().unwrap();
    assert_eq!(error, "step approve failed: denied: no decision within 10m (0 of 2 approval(s))");
}

#[test]
fn a_denied_approval_with_on_error_continue_lets_the_run_go_on() {
    let mut w = World::new(&[TOLERANT]);
    w.start("r1", "tolerant");
    w.step();
    w.advance(5_000);
    assert_eq!(w.step_state("r1", 0), StepState::Failed);
    assert!(w.state.runs["r1"].steps[0].failure_tolerated);
    w.step();
    w.advance(1_000);
    assert_eq!(w.run_state("r1"), RunState::Succeeded);
}

#[test]
fn a_run_past_its_timeout_is_stopped_and_fails() {
    let mut w = World::new(&[TIMED, GATED]);
    w.start("r1", "timed");
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::Assign { .. }]), "{ops:?}");
    let attempt = *w.state.active_attempts.keys().next().unwrap();
    assert!(w.advance(59_999).is_empty());
    // At the limit: the engine asks to stop it; the worker is told to cancel the attempt.
    w.now += 1;
    let view = View {
        now_ms: w.now,
        leader_since_ms: 0,
        workers: w.workers.clone(),
        departed: HashMap::new(),
        worker_grace_ms: 1_000,
        guards_passed: Default::default(),
    };
    let ops = w.engine.decide(&w.state, &view);
    assert_eq!(ops, vec![Op::TimeoutRun { run_id: "r1".into() }]);
    let (_, fx) = w.apply(ops[0].clone());
    assert!(fx.iter().any(|e| matches!(e, Effect::CancelAttempt { attempt_id, .. } if *attempt_id == attempt)));
    assert_eq!(w.run_state("r1"), RunState::Running, "ends when the worker confirms");
    assert!(w.step().is_empty(), "no second timeout, no new assignment");
    let op = Op::AttemptFinished {
        attempt_id: attempt,
        state: AttemptState::Cancelled,
        exit_code: None,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        outputs: BTreeMap::new(),
        error: Some("cancelled".into()),
    };
    w.apply(op);
    assert_eq!(w.run_state("r1"), RunState::Failed, "a timeout fails the run, it is not a cancel");
    assert!(w.state.runs["r1"].error.as_deref().unwrap().contains("the run's timeout (1m) passed"));
    assert_eq!(w.step_state("r1", 1), StepState::Pending);

    // A cancel while waiting for an approval ends the run at once, the waiting step cancelled.
    w.start("r2", "gated");
    w.step();
    w.apply(Op::CancelRun { run_id: "r2".into(), reason: "no longer needed".into(), by: Default::default() });
    assert_eq!(w.run_state("r2"), RunState::Cancelled);
    assert_eq!(w.step_state("r2", 0), StepState::Cancelled);
    assert!(w.step().is_empty());
}

#[test]
fn waits_need_no_worker_and_are_not_held_up_by_busy_ones() {
    let mut w = World::new(&[GATED, TIMED]);
    w.workers = vec![WorkerSlot { id: "w1".into(), capacity: 1, ..Default::default() }];
    w.start("busy", "timed");
    w.step();
    // The only worker slot is taken; a run whose next step is a sleep still goes on.
    w.start("r1", "gated");
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::OpenWait { .. }]), "{ops:?}");
    w.workers.clear();
    w.advance(2_000);
    assert_eq!(w.step_state("r1", 0), StepState::Succeeded);
}
