//! Operator actions on runs: pause and resume, retry from a step, skipping a lost step and
//! force-failing, with their history. Engine and state machine only, no I/O.

use baton_core::command::Op;
use baton_core::run::{AttemptState, RunState, StepState};
use baton_scheduler::fsm::{Effect, Reply};

use crate::world::{World, by, rejected};

const THREE: &str = r#"
name: three
timeout: 1m
steps:
  - id: one
    action: exec
    with: { command: ["true"] }
  - id: two
    action: exec
    retry: { attempts: 2, backoff: 1s }
    with: { command: ["false"] }
  - id: three
    action: exec
    with: { command: ["true"] }
"#;

fn pause(w: &mut World, run: &str) -> Reply {
    w.apply(Op::PauseRun { run_id: run.into(), reason: "freeze".into(), by: by("alice") }).0
}

fn resume(w: &mut World, run: &str) -> Reply {
    w.apply(Op::ResumeRun { run_id: run.into(), by: by("bob") }).0
}

fn retry(w: &mut World, run: &str, from: Option<&str>) -> Reply {
    w.apply(Op::RetryRun { run_id: run.into(), from_step: from.map(str::to_string), by: by("carol") }).0
}

#[test]
fn a_paused_run_starts_no_step_until_resumed_and_its_running_step_goes_on() {
    let mut w = World::new(&[THREE]);
    w.start("r1", "three");
    w.step();
    let first = w.active("r1");
    assert_eq!(pause(&mut w, "r1"), Reply::Done);
    assert!(rejected(pause(&mut w, "r1")).contains("is already paused"));
    // The running attempt finishes normally; the next step does not start.
    w.finish(first, AttemptState::Succeeded);
    assert_eq!(w.step_state("r1", 0), StepState::Succeeded);
    assert!(w.advance(10_000).is_empty(), "paused: nothing is assigned");
    assert_eq!(w.step_state("r1", 1), StepState::Pending);
    // An assignment proposed before the pause committed after it is ignored.
    let late = Op::Assign {
        run_id: "r1".into(),
        step_id: "two".into(),
        worker: "w1".into(),
        argv: vec!["false".into()],
        env: Default::default(),
        workdir: None,
        timeout_ms: None,
        expected_attempts: None,
        worker_boot: 0,
    };
    w.apply(late);
    assert_eq!(w.step_state("r1", 1), StepState::Pending);
    assert_eq!(resume(&mut w, "r1"), Reply::Done);
    assert!(rejected(resume(&mut w, "r1")).contains("is not paused"));
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::Assign { step_id, .. }] if step_id == "two"), "{ops:?}");
    let events: Vec<(&str, &str)> =
        w.state.runs["r1"].events.iter().map(|e| (e.action.as_str(), e.principal.as_str())).collect();
    assert_eq!(events, [("pause", "alice"), ("resume", "bob")]);
}

#[test]
fn retry_from_a_step_starts_it_and_the_later_ones_afresh_and_keeps_the_history() {
    let mut w = World::new(&[THREE]);
    w.start("r1", "three");
    w.step();
    let a = w.active("r1");
    w.finish(a, AttemptState::Succeeded);
    // Step two fails twice (its retry policy allows two attempts): the run fails.
    for _ in 0..2 {
        w.advance(1_000);
        let a = w.active("r1");
        w.finish(a, AttemptState::Failed);
    }
    assert_eq!(w.run_state("r1"), RunState::Failed);
    assert!(
        rejected(retry(&mut w, "r1", Some("nope"))).contains("has no step \"nope\"; its steps are one, two, three")
    );
    // Default: from the first step that did not succeed. Its attempts stay in the record, and
    // its retry policy counts afresh.
    w.advance(120_000);
    assert_eq!(retry(&mut w, "r1", None), Reply::Done);
    assert_eq!(w.run_state("r1"), RunState::Running);
    assert_eq!(w.step_state("r1", 0), StepState::Succeeded);
    assert_eq!(w.step_state("r1", 1), StepState::Pending);
    assert_eq!(w.state.runs["r1"].steps[1].attempts.len(), 2);
    assert!(w.state.runs["r1"].error.is_none());
    // The run's timeout counts from the retry: 2 minutes after creation it is not timed out.
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::Assign { step_id, .. }] if step_id == "two"), "{ops:?}");
    let a = w.active("r1");
    w.finish(a, AttemptState::Failed);
    assert_eq!(w.step_state("r1", 1), StepState::Pending, "one more attempt under the policy");
    w.advance(1_000);
    let a = w.active("r1");
    w.finish(a, AttemptState::Succeeded);
    w.step();
    let a = w.active("r1");
    w.finish(a, AttemptState::Succeeded);
    assert_eq!(w.run_state("r1"), RunState::Succeeded);
    assert_eq!(w.state.runs["r1"].steps[1].attempts.len(), 4);
    assert!(rejected(retry(&mut w, "r1", Some("one"))).contains("is succeeded; only a failed"));
    // From an explicit earlier step.
    w.start("r2", "three");
    w.apply(Op::CancelRun { run_id: "r2".into(), reason: "oops".into(), by: by("dave") });
    assert_eq!(w.run_state("r2"), RunState::Cancelled);
    assert_eq!(retry(&mut w, "r2", Some("one")), Reply::Done);
    assert_eq!(w.run_state("r2"), RunState::Pending);
    let actions: Vec<&str> = w.state.runs["r2"].events.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["cancel", "retry"]);
    assert_eq!(w.state.runs["r2"].events[1].detail, "from step one");
}

#[test]
fn needs_attention_is_resolved_by_skip_retry_or_force_fail() {
    let mut w = World::new(&[THREE]);
    for id in ["skip", "retry", "fail"] {
        w.start(id, "three");
        w.step();
        let a = w.active(id);
        w.apply(Op::AttemptLost { attempt_id: a, reason: "worker gone".into() });
        assert_eq!(w.run_state(id), RunState::NeedsAttention);
    }
    // Skip: the lost step counts as skipped, with who and why, and the run goes on.
    let op = Op::SkipLost { run_id: "skip".into(), reason: "checked by hand".into(), by: by("erin") };
    assert_eq!(w.apply(op).0, Reply::Done);
    assert_eq!(w.step_state("skip", 0), StepState::Skipped);
    let error = w.state.runs["skip"].steps[0].error.clone().unwrap();
    assert_eq!(error, "outcome unknown; skipped by erin: checked by hand");
    assert_eq!(w.run_state("skip"), RunState::Running);
    // Retry: a new attempt of the lost step.
    assert_eq!(retry(&mut w, "retry", None), Reply::Done);
    let ops = w.step();
    let assigned: Vec<(&str, &str)> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Assign { run_id, step_id, .. } => Some((run_id.as_str(), step_id.as_str())),
            _ => None,
        })
        .collect();
    assert!(assigned.contains(&("retry", "one")) && assigned.contains(&("skip", "two")), "{ops:?}");
    // Force-fail.
    let op = Op::ForceFail { run_id: "fail".into(), reason: "done by hand".into(), by: by("frank") };
    assert_eq!(w.apply(op).0, Reply::Done);
    assert_eq!(w.run_state("fail"), RunState::Failed);
    assert_eq!(w.state.runs["fail"].error.as_deref(), Some("force-failed by frank: done by hand"));
    // Skip is only for needs_attention runs.
    let op = Op::SkipLost { run_id: "fail".into(), reason: String::new(), by: by("erin") };
    assert!(rejected(w.apply(op).0).contains("only a needs_attention run"));
}

#[test]
fn force_fail_ends_a_running_run_at_once_and_records_the_late_result() {
    let mut w = World::new(&[THREE]);
    w.start("r1", "three");
    w.step();
    let a = w.active("r1");
    let op = Op::ForceFail { run_id: "r1".into(), reason: "wrong cluster".into(), by: by("gina") };
    let (reply, fx) = w.apply(op);
    assert_eq!(reply, Reply::Done);
    assert!(fx.iter().any(|e| matches!(e, Effect::CancelAttempt { attempt_id, .. } if *attempt_id == a)));
    assert_eq!(w.run_state("r1"), RunState::Failed);
    assert!(w.step().is_empty(), "nothing more is assigned");
    // The worker's late report is recorded (and acknowledged); the run stays as it was ended.
    let (_, fx) = w.finish(a, AttemptState::Cancelled);
    assert!(fx.iter().any(|e| matches!(e, Effect::AckResult { attempt_id, .. } if *attempt_id == a)));
    assert_eq!(w.step_state("r1", 0), StepState::Cancelled);
    assert_eq!(w.run_state("r1"), RunState::Failed);
    assert_eq!(w.state.runs["r1"].error.as_deref(), Some("force-failed by gina: wrong cluster"));
    assert!(w.state.active_attempts.is_empty());
    let op = Op::ForceFail { run_id: "r1".into(), reason: "again".into(), by: by("gina") };
    assert!(rejected(w.apply(op).0).contains("is failed already"));
    let op = Op::PauseRun { run_id: "r1".into(), reason: String::new(), by: by("gina") };
    assert!(rejected(w.apply(op).0).contains("only a run that has not ended can be paused"));
}

const PICKY: &str = r#"
name: picky
steps:
  - id: slow
    action: exec
    retry: { attempts: 3, backoff: 1s, on: [timeout] }
    with: { command: ["slow"] }
  - id: flaky
    action: exec
    retry: { attempts: 3, backoff: 1s, exit_codes: [75] }
    with: { command: ["flaky"] }
"#;

fn report(w: &mut World, attempt_id: u64, state: AttemptState, exit_code: Option<i32>) {
    w.apply(Op::AttemptFinished {
        attempt_id,
        state,
        exit_code,
        stdout_tail: String::new(),
        stderr_tail: String::new(),
        outputs: Default::default(),
        error: None,
    });
}

#[test]
fn retry_policies_say_which_failures_are_retried() {
    let mut w = World::new(&[PICKY]);
    // `on: [timeout]`: a timeout is retried, a plain failure is not.
    w.start("r1", "picky");
    w.step();
    let a = w.active("r1");
    report(&mut w, a, AttemptState::TimedOut, None);
    assert_eq!(w.step_state("r1", 0), StepState::Pending, "retried after a timeout");
    w.advance(1_000);
    let a = w.active("r1");
    report(&mut w, a, AttemptState::Failed, Some(1));
    assert_eq!(w.run_state("r1"), RunState::Failed, "a failure is not retried under on: [timeout]");
    // `exit_codes: [75]`: exit 75 is retried, exit 1 is not.
    w.start("r2", "picky");
    w.step();
    let a = w.active("r2");
    report(&mut w, a, AttemptState::Succeeded, Some(0));
    w.step();
    let a = w.active("r2");
    report(&mut w, a, AttemptState::Failed, Some(75));
    assert_eq!(w.step_state("r2", 1), StepState::Pending, "exit 75 is retried");
    w.advance(1_000);
    let a = w.active("r2");
    report(&mut w, a, AttemptState::Failed, Some(1));
    assert_eq!(w.run_state("r2"), RunState::Failed);
    assert_eq!(w.state.runs["r2"].steps[1].attempts.len(), 2);
}
