//! Scenarios found in review of the run state machine, kept as regression tests: runs that
//! must neither hang nor run a step twice when cancels, retries, handlers, groups and locks
//! meet. Engine and state machine only, no I/O.

use std::collections::BTreeMap;

use baton_core::command::Op;
use baton_core::run::{AttemptState, RunState, StepState};
use baton_scheduler::fsm::Reply;

use crate::world::{World, by, rejected};

const HANDLED: &str = r#"
name: handled
timeout: 1m
steps:
  - id: work
    action: exec
    with: { command: ["work"] }
  - id: after
    action: exec
    with: { command: ["after"] }
on_failure:
  - id: page
    action: exec
    with: { command: ["page"] }
on_cancel:
  - id: restore
    action: exec
    with: { command: ["restore"] }
"#;

const GROUP: &str = r#"
name: group
locks: ["db"]
steps:
  - id: both
    parallel:
      - { id: a, action: exec, with: { command: ["a"] } }
      - { id: b, action: exec, with: { command: ["b"] } }
on_failure:
  - id: page
    action: exec
    with: { command: ["page"] }
"#;

const ROLL: &str = r#"
name: roll
params:
  hosts: { type: list, required: true }
steps:
  - id: restart
    action: exec
    foreach: params.hosts
    batch: 1
    on_error: continue
    with: { command: ["restart", "{{ target }}"] }
  - id: done
    action: exec
    with: { command: ["done"] }
"#;

fn step_state(w: &World, run: &str, step: &str) -> StepState {
    w.state.runs[run].steps.iter().find(|s| s.id == step).unwrap().state
}

#[test]
fn a_cancel_or_timeout_between_steps_runs_the_handler_and_ends() {
    let mut w = World::new(&[HANDLED]);
    w.start("r1", "handled");
    w.step();
    w.finish(w.active_of("r1", "work"), AttemptState::Succeeded);
    // Between steps, nothing running: the cancel runs on_cancel, then the run ends.
    w.apply(Op::CancelRun { run_id: "r1".into(), reason: "stop".into(), by: by("ops") });
    assert_eq!(step_state(&w, "r1", "after"), StepState::Cancelled);
    assert_eq!(step_state(&w, "r1", "restore"), StepState::Pending, "the handler is not cancelled with the rest");
    w.step();
    w.finish(w.active_of("r1", "restore"), AttemptState::Succeeded);
    assert_eq!(w.run_state("r1"), RunState::Cancelled);
    // The run's own timeout between steps: on_failure runs, then it fails.
    w.start("r2", "handled");
    w.step();
    w.finish(w.active_of("r2", "work"), AttemptState::Succeeded);
    w.apply(Op::TimeoutRun { run_id: "r2".into() });
    w.step();
    w.finish(w.active_of("r2", "page"), AttemptState::Succeeded);
    assert_eq!(w.run_state("r2"), RunState::Failed);
    // A run cancelled before it started has nothing to clean up.
    w.start("r3", "handled");
    w.apply(Op::CancelRun { run_id: "r3".into(), reason: String::new(), by: by("ops") });
    assert_eq!(w.run_state("r3"), RunState::Cancelled);
    assert_eq!(step_state(&w, "r3", "restore"), StepState::Pending);
}

#[test]
fn a_failed_group_keeps_its_lock_until_the_sibling_stopped_and_cannot_be_retried_before() {
    let mut w = World::new(&[GROUP]);
    w.start("r1", "group");
    w.step();
    w.step();
    let b = w.active_of("r1", "b");
    w.finish(w.active_of("r1", "a"), AttemptState::Failed);
    // on_failure runs; b is being stopped; the run still holds its lock.
    assert_eq!(w.run_state("r1"), RunState::Running);
    assert_eq!(w.state.locks["db"].0, "r1");
    let why = rejected(w.apply(Op::RetryRun { run_id: "r1".into(), from_step: None, by: by("ops") }).0);
    assert!(why.contains("is running; only a failed"), "{why}");
    // Cancelled meanwhile: the handler's result comes first, b's last; the run ends.
    w.step();
    let page = w.active_of("r1", "page");
    w.apply(Op::CancelRun { run_id: "r1".into(), reason: "enough".into(), by: by("ops") });
    w.finish(page, AttemptState::Cancelled);
    assert!(!w.state.runs["r1"].state.is_terminal(), "b has not stopped yet");
    assert_eq!(w.state.locks["db"].0, "r1", "the lock is held while b may still run");
    w.finish(b, AttemptState::Cancelled);
    assert_eq!(w.run_state("r1"), RunState::Failed, "it ends as it was going to");
    assert!(w.state.locks.is_empty(), "released once nothing of the run runs");
    assert!(w.state.active_attempts.is_empty());
    // Now it can be retried.
    assert_eq!(w.apply(Op::RetryRun { run_id: "r1".into(), from_step: None, by: by("ops") }).0, Reply::Done);
}

#[test]
fn a_retried_foreach_keeps_its_targets_and_on_error_continue_goes_past_it() {
    let mut w = World::new(&[ROLL]);
    let params: BTreeMap<String, serde_json::Value> = [("hosts".to_string(), serde_json::json!(["a", "b"]))].into();
    w.apply(Op::StartRun { run_id: "r1".into(), runbook: "roll".into(), params, idempotency_key: None });
    w.step();
    w.step();
    // a fails with max_failures 0: b is not started, and with on_error: continue the run
    // goes on to `done` instead of hanging.
    w.finish(w.active_of("r1", "restart[a]"), AttemptState::Failed);
    assert_eq!(step_state(&w, "r1", "restart[b]"), StepState::Cancelled);
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::Assign { step_id, .. }] if step_id == "done"), "{ops:?}");
    w.finish(w.active_of("r1", "done"), AttemptState::Failed);
    assert_eq!(w.run_state("r1"), RunState::Failed);
    // Retried from the first target: it is the same target again, not an unknown step.
    let op = Op::RetryRun { run_id: "r1".into(), from_step: Some("restart[a]".into()), by: by("ops") };
    assert_eq!(w.apply(op).0, Reply::Done);
    let ops = w.step();
    assert!(
        matches!(&ops[..], [Op::Assign { step_id, argv, .. }] if step_id == "restart[a]" && argv == &["restart", "a"]),
        "{ops:?}"
    );
    // Retrying from a step after one that did not succeed is refused.
    let mut w2 = World::new(&[HANDLED]);
    w2.start("r2", "handled");
    w2.step();
    w2.finish(w2.active_of("r2", "work"), AttemptState::Failed);
    w2.step();
    w2.finish(w2.active_of("r2", "page"), AttemptState::Succeeded);
    let op = Op::RetryRun { run_id: "r2".into(), from_step: Some("after".into()), by: by("ops") };
    assert!(rejected(w2.apply(op).0).contains("comes after step work, which did not succeed"));
}

#[test]
fn a_late_assignment_for_an_earlier_round_of_a_step_is_ignored() {
    let mut w = World::new(&[HANDLED]);
    w.start("r1", "handled");
    let ops = w.step();
    let Op::Assign { .. } = &ops[0] else { panic!("{ops:?}") };
    assert_eq!(w.state.runs["r1"].steps[0].attempts.len(), 1);
    // The same decision, committed again later (a re-proposal): it names 0 attempts.
    let mut late = ops[0].clone();
    w.finish(w.active_of("r1", "work"), AttemptState::Failed);
    let op = Op::RetryRun { run_id: "r1".into(), from_step: None, by: by("ops") };
    // The run is finishing (on_failure): let it end first.
    w.step();
    w.finish(w.active_of("r1", "page"), AttemptState::Succeeded);
    assert_eq!(w.apply(op).0, Reply::Done);
    if let Op::Assign { expected_attempts, .. } = &mut late {
        assert_eq!(*expected_attempts, Some(0));
    }
    w.apply(late);
    assert_eq!(w.state.runs["r1"].steps[0].attempts.len(), 1, "the stale copy made no attempt");
    assert_eq!(step_state(&w, "r1", "work"), StepState::Pending);
}
