//! Safety rails in the engine and the state machine, without I/O: resource locks (mutual
//! exclusion, first come first served, skip, release on every end), rate budgets, and the
//! `on_failure` / `on_cancel` steps that run at most once.

use baton_core::command::Op;
use baton_core::run::{AttemptState, Block, RunState, StepState};
use baton_scheduler::fsm::Reply;

use crate::world::{World, by, rejected};

const FAILOVER: &str = r#"
name: failover
params:
  cluster: { type: string, required: true }
locks: ["redis/{{ params.cluster }}", "global"]
steps:
  - id: promote
    action: exec
    with: { command: ["promote", "{{ params.cluster }}"] }
"#;

const CLEAN: &str = r#"
name: clean
params:
  cluster: { type: string, required: true }
locks: ["redis/{{ params.cluster }}"]
lock_wait: skip
steps:
  - id: clean
    action: exec
    with: { command: ["clean"] }
"#;

const BUDGETED: &str = r#"
name: budgeted
params:
  cluster: { type: string, required: true }
budget: { max_runs: 2, per: 1h, key: "{{ params.cluster }}" }
steps:
  - id: work
    action: exec
    with: { command: ["true"] }
"#;

const HANDLED: &str = r#"
name: handled
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
    with: { command: ["page", "{{ run.failed_step }}", "{{ run.error }}"] }
on_cancel:
  - id: restore
    action: exec
    with: { command: ["restore"] }
"#;

fn start(w: &mut World, id: &str, runbook: &str, cluster: &str) -> Reply {
    let params = [("cluster".to_string(), serde_json::json!(cluster))].into();
    w.apply(Op::StartRun { run_id: id.into(), runbook: runbook.into(), params, idempotency_key: None }).0
}

fn assigned(ops: &[Op]) -> Vec<&str> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Assign { run_id, .. } => Some(run_id.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn two_runs_never_hold_the_same_lock_and_waiters_go_first_come_first_served() {
    let mut w = World::new(&[FAILOVER, CLEAN]);
    start(&mut w, "a", "failover", "east");
    w.now += 1;
    start(&mut w, "b", "failover", "west");
    w.now += 1;
    start(&mut w, "c", "failover", "east");
    // a takes redis/east and global; b and c wait (global is held), in order.
    w.step();
    let ops = w.step();
    assert_eq!(assigned(&ops), ["a"], "{ops:?}");
    assert!(w.state.runs["a"].locks_held);
    assert_eq!(w.state.runs["a"].locks, ["redis/east", "global"]);
    assert!(!w.state.runs["b"].locks_held && !w.state.runs["c"].locks_held);
    assert_eq!(w.state.locks["global"].0, "a");
    // A skip-policy run whose lock is held ends at once, without running.
    start(&mut w, "d", "clean", "east");
    w.step();
    assert_eq!(w.run_state("d"), RunState::Cancelled);
    assert!(
        w.state.runs["d"].error.as_deref().unwrap().contains("lock \"redis/east\" is held by run a (lock_wait: skip)")
    );
    // a fails: its locks are released on that end too, and b (the oldest waiter) takes them.
    let attempt = w.active("a");
    w.finish(attempt, AttemptState::Failed);
    assert!(!w.state.locks.values().any(|(holder, _)| holder == "a"));
    w.step();
    let ops = w.step();
    assert_eq!(assigned(&ops), ["b"], "b was first in line: {ops:?}");
    assert!(!w.state.runs["c"].locks_held);
    // Force-failing b ends it at once, but its locks stay taken until its attempt has
    // stopped (the resource is not idle before); then c runs.
    let b_attempt = w.active("b");
    w.apply(Op::ForceFail { run_id: "b".into(), reason: "wrong region".into(), by: by("ops") });
    assert_eq!(w.run_state("b"), RunState::Failed);
    w.step();
    assert!(assigned(&w.step()).is_empty(), "b's attempt may still run");
    w.finish(b_attempt, AttemptState::Cancelled);
    w.step();
    let ops = w.step();
    assert_eq!(assigned(&ops), ["c"], "{ops:?}");
    // Cancelling c (no attempt started yet counts too) releases its locks.
    let c_attempt = w.active("c");
    w.apply(Op::CancelRun { run_id: "c".into(), reason: String::new(), by: by("ops") });
    w.finish(c_attempt, AttemptState::Cancelled);
    assert!(w.state.locks.is_empty(), "{:?}", w.state.locks);
}

#[test]
fn a_lock_that_renders_empty_is_refused_at_trigger() {
    let text = FAILOVER.replace("\"redis/{{ params.cluster }}\", \"global\"", "\"{{ params.cluster }}\"");
    let mut w = World::new(&[&text]);
    let why = rejected(start(&mut w, "a", "failover", "  "));
    assert!(why.contains("renders empty"), "{why}");
    assert!(w.state.runs.is_empty());
}

#[test]
fn a_budget_refuses_runs_beyond_it_per_key_and_window() {
    let mut w = World::new(&[BUDGETED]);
    assert!(matches!(start(&mut w, "a1", "budgeted", "east"), Reply::Run { .. }));
    w.now += 1_000;
    assert!(matches!(start(&mut w, "a2", "budgeted", "east"), Reply::Run { .. }));
    let why = rejected(start(&mut w, "a3", "budgeted", "east"));
    assert!(why.contains("budget exhausted: at most 2 run(s) of budgeted per 1h for \"east\""), "{why}");
    assert!(!w.state.runs.contains_key("a3"));
    // Another key has its own budget; the window slides.
    assert!(matches!(start(&mut w, "b1", "budgeted", "west"), Reply::Run { .. }));
    // a1 was created at 1 s: it counts until 1 h later, not a millisecond longer.
    w.now += 3_600_000 - 1_001;
    assert!(rejected(start(&mut w, "a4", "budgeted", "east")).contains("budget exhausted"));
    w.now += 1;
    assert!(matches!(start(&mut w, "a5", "budgeted", "east"), Reply::Run { .. }), "a1 left the window");
}

#[test]
fn on_failure_runs_once_with_the_failed_step_and_the_run_still_fails() {
    let mut w = World::new(&[HANDLED]);
    w.start("r1", "handled");
    w.step();
    let a = w.active("r1");
    w.finish(a, AttemptState::Failed);
    // Not failed yet: the on_failure step runs first, reading why.
    assert_eq!(w.run_state("r1"), RunState::Running);
    let ops = w.step();
    assert!(
        matches!(&ops[..], [Op::Assign { step_id, argv, .. }] if step_id == "page" && argv == &["page", "work", "step work exited with code 1"]),
        "{ops:?}"
    );
    let a = w.active("r1");
    w.finish(a, AttemptState::Succeeded);
    assert_eq!(w.run_state("r1"), RunState::Failed);
    assert_eq!(w.state.runs["r1"].error.as_deref(), Some("step work exited with code 1"));
    assert_eq!(w.step_state("r1", 1), StepState::Pending, "the main step after the failure never ran");
    assert_eq!(w.state.runs["r1"].steps[2].block, Block::OnFailure);
    assert_eq!(w.step_state("r1", 3), StepState::Pending, "on_cancel did not run");

    // A failing handler is reported, and does not run twice.
    w.start("r2", "handled");
    w.step();
    let a = w.active("r2");
    w.finish(a, AttemptState::Failed);
    w.step();
    let a = w.active("r2");
    w.finish(a, AttemptState::Failed);
    assert_eq!(w.run_state("r2"), RunState::Failed);
    let error = w.state.runs["r2"].error.clone().unwrap();
    assert_eq!(error, "step work exited with code 1; on_failure did not complete: step page exited with code 1");
    assert!(w.step().is_empty());
}

#[test]
fn on_cancel_runs_once_and_a_second_cancel_stops_it() {
    let mut w = World::new(&[HANDLED]);
    w.start("r1", "handled");
    w.step();
    let a = w.active("r1");
    w.apply(Op::CancelRun { run_id: "r1".into(), reason: "not today".into(), by: by("ops") });
    w.finish(a, AttemptState::Cancelled);
    assert_eq!(w.run_state("r1"), RunState::Running, "on_cancel runs first");
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::Assign { step_id, .. }] if step_id == "restore"), "{ops:?}");
    // Cancelling again stops the handler too; the run ends cancelled.
    let a = w.active("r1");
    w.apply(Op::CancelRun { run_id: "r1".into(), reason: "really".into(), by: by("ops") });
    w.finish(a, AttemptState::Cancelled);
    assert_eq!(w.run_state("r1"), RunState::Cancelled);
    assert!(w.state.runs["r1"].error.as_deref().unwrap().starts_with("not today"), "{:?}", w.state.runs["r1"].error);
    assert!(w.step().is_empty());

    // Force-fail skips the handlers.
    w.start("r2", "handled");
    w.step();
    w.apply(Op::ForceFail { run_id: "r2".into(), reason: "stop".into(), by: by("ops") });
    assert_eq!(w.run_state("r2"), RunState::Failed);
    assert!(w.step().is_empty());
}

const GUARDED: &str = r#"
name: guarded
steps:
  - id: one
    action: exec
    with: { command: ["one"] }
  - id: two
    action: exec
    with: { command: ["two"] }
guards:
  - name: error rate
    prometheus: { url: "http://prometheus:9090", query: "rate(errors[5m]) < 1" }
"#;

#[test]
fn a_run_with_guards_waits_at_each_gate_until_they_pass() {
    use baton_scheduler::engine::guard_gates;
    let mut w = World::new(&[GUARDED]);
    w.start("r1", "guarded");
    // At the first gate: nothing starts until the guards passed for it.
    assert_eq!(w.state.guard_gate("r1", w.now).map(|(g, _)| g), Some("one#0".to_string()));
    assert_eq!(guard_gates(&w.state, w.now)[0].2[0].name, "error rate");
    assert!(assigned(&w.step()).is_empty());
    w.guards_passed.insert("r1".into(), "one#0".into());
    assert_eq!(assigned(&w.step()), ["r1"]);
    // While a step runs there is no gate; when it ends, the next one is a new gate.
    assert!(w.state.guard_gate("r1", w.now).is_none());
    let a = w.active("r1");
    w.finish(a, AttemptState::Succeeded);
    assert_eq!(w.state.guard_gate("r1", w.now).map(|(g, _)| g), Some("two#0".to_string()));
    assert!(assigned(&w.step()).is_empty(), "the pass was for the first gate only");
    // A failed guard pauses the run (the leader proposes it, with the reason); resuming
    // brings the run back to the same gate, to be checked again.
    let reason = "guard \"error rate\" failed before step two: the query returned no sample";
    // A failure reported for a gate the run has left is ignored; for its gate, it pauses.
    w.apply(Op::GuardFailed { run_id: "r1".into(), gate: "one#0".into(), reason: "stale".into() });
    assert!(!w.state.runs["r1"].paused);
    w.apply(Op::GuardFailed { run_id: "r1".into(), gate: "two#0".into(), reason: reason.into() });
    assert!(w.state.runs["r1"].paused);
    assert_eq!(w.state.runs["r1"].pause_reason, reason);
    assert!(w.state.guard_gate("r1", w.now).is_none(), "a paused run is not checked");
    w.apply(Op::ResumeRun { run_id: "r1".into(), by: by("ops") });
    assert_eq!(w.state.guard_gate("r1", w.now).map(|(g, _)| g), Some("two#0".to_string()));
    w.guards_passed.insert("r1".into(), "two#0".into());
    assert_eq!(assigned(&w.step()), ["r1"]);
    // After the last step the guards are checked once more before the run succeeds.
    let a = w.active("r1");
    w.finish(a, AttemptState::Succeeded);
    assert_eq!(w.run_state("r1"), RunState::Running);
    assert_eq!(w.state.guard_gate("r1", w.now).map(|(g, _)| g), Some("end".to_string()));
    assert!(w.step().is_empty());
    w.guards_passed.insert("r1".into(), "end".into());
    assert_eq!(w.step(), [Op::GuardsPassed { run_id: "r1".into() }]);
    assert_eq!(w.run_state("r1"), RunState::Succeeded);
}
