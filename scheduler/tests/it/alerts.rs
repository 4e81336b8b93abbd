//! Alert dedupe, cooldown and resolution, applied by the state machine without I/O: the
//! decisions live in the replicated state, so a new leader (a copy of the state, or one
//! restored from a snapshot) makes the same ones.

use std::collections::BTreeMap;

use baton_core::command::{Actor, AlertStart, Op};
use baton_core::run::{AttemptState, RunState, StepState};
use baton_scheduler::fsm::{Reply, State};

use crate::world::{World, rejected};

const FIX_DISK: &str = r#"
name: fix-disk
params:
  host: { type: string, required: true, pattern: "^[a-z0-9-]+$" }
steps:
  - id: gate
    approval: { approvers: [alice], timeout: 1h }
  - id: clean
    action: exec
    with: { command: ["echo", "{{ params.host }}"] }
"#;

const SERIAL: &str = r#"
name: serial
concurrency: 1
params:
  host: { type: string, required: true }
steps:
  - id: work
    action: exec
    with: { command: ["echo", "{{ params.host }}"] }
"#;

const COOLDOWN_MS: u64 = 60_000;

fn alertmanager() -> Actor {
    Actor { principal: "alertmanager".into(), via: "alertmanager".into() }
}

fn start(run_id: &str, runbook: &str, host: &str) -> AlertStart {
    AlertStart {
        rule: format!("{runbook}-rule"),
        run_id: run_id.into(),
        runbook: runbook.into(),
        params: [("host".to_string(), serde_json::json!(host))].into(),
        cooldown_ms: COOLDOWN_MS,
    }
}

fn firing(key: &str, fingerprints: &[&str], run_id: &str, runbook: &str, host: &str) -> Op {
    Op::AlertNotified {
        key: key.into(),
        firing: fingerprints.iter().map(|f| f.to_string()).collect(),
        resolved: vec![],
        start: Some(start(run_id, runbook, host)),
        by: alertmanager(),
        summary: "DiskFull".into(),
    }
}

fn resolved(key: &str, fingerprints: &[&str]) -> Op {
    Op::AlertNotified {
        key: key.into(),
        firing: vec![],
        resolved: fingerprints.iter().map(|f| f.to_string()).collect(),
        start: None,
        by: alertmanager(),
        summary: "DiskFull".into(),
    }
}

fn run_of(reply: &Reply) -> (&str, bool) {
    match reply {
        Reply::Run { run_id, deduplicated } => (run_id, *deduplicated),
        other => panic!("expected a run, got {other:?}"),
    }
}

#[test]
fn many_alerts_for_one_target_make_one_run_and_another_target_its_own() {
    let mut w = World::new(&[FIX_DISK]);
    let (reply, _) = w.apply(firing("fix-disk/web-1", &["fp-a", "fp-b"], "r-1", "fix-disk", "web-1"));
    assert_eq!(run_of(&reply), ("r-1", false));
    // The same alerts again (Alertmanager repeats), and another alert for the same target.
    for (i, fp) in ["fp-a", "fp-b", "fp-c"].iter().enumerate() {
        let (reply, _) = w.apply(firing("fix-disk/web-1", &[fp], &format!("r-x{i}"), "fix-disk", "web-1"));
        assert_eq!(run_of(&reply), ("r-1", true));
    }
    let (reply, _) = w.apply(firing("fix-disk/web-2", &["fp-d"], "r-2", "fix-disk", "web-2"));
    assert_eq!(run_of(&reply), ("r-2", false));
    assert_eq!(w.state.runs.len(), 2);
    let entry = &w.state.alert_runs["fix-disk/web-1"];
    assert_eq!(entry.firing.iter().map(String::as_str).collect::<Vec<_>>(), ["fp-a", "fp-b", "fp-c"]);
    // The run's history says an alert started it.
    let run = &w.state.runs["r-1"];
    assert_eq!(run.principal, "alertmanager");
    let event = &run.events[0];
    assert_eq!((event.action.as_str(), event.via.as_str()), ("start", "alertmanager"));
    assert!(event.detail.contains("DiskFull") && event.detail.contains("fix-disk/web-1"), "{}", event.detail);
    assert_eq!(run.params["host"], "web-1");
}

#[test]
fn a_key_starts_nothing_while_its_run_goes_or_cools_down() {
    let mut w = World::new(&[FIX_DISK]);
    w.apply(firing("k", &["fp"], "r-1", "fix-disk", "web-1"));
    w.step();
    assert_eq!(w.decide("r-1", "alice", &[], true, ""), Reply::Done);
    w.step();
    let attempt = w.active("r-1");
    w.advance(1_000);
    w.finish(attempt, AttemptState::Succeeded);
    assert_eq!(w.run_state("r-1"), RunState::Succeeded);
    let ended = w.now;
    assert_eq!(w.state.alert_runs["k"].cooldown_until(&w.state), Some(ended + COOLDOWN_MS as i64));
    // Within the cooldown: joins the ended run.
    w.now = ended + COOLDOWN_MS as i64 - 1;
    let (reply, _) = w.apply(firing("k", &["fp"], "r-2", "fix-disk", "web-1"));
    assert_eq!(run_of(&reply), ("r-1", true));
    assert!(!w.state.runs.contains_key("r-2"));
    // After it: a new run, and the key now points at it.
    w.now = ended + COOLDOWN_MS as i64;
    let (reply, _) = w.apply(firing("k", &["fp"], "r-3", "fix-disk", "web-1"));
    assert_eq!(run_of(&reply), ("r-3", false));
    assert_eq!(w.state.alert_runs["k"].run_id, "r-3");
}

#[test]
fn resolving_every_alert_of_a_key_cancels_a_run_still_waiting_for_approval() {
    let mut w = World::new(&[FIX_DISK]);
    w.apply(firing("k", &["fp-a", "fp-b"], "r-1", "fix-disk", "web-1"));
    w.step();
    assert_eq!(w.step_state("r-1", 0), StepState::Waiting);
    // One of two alerts resolves: the other still fires, the run waits on.
    w.apply(resolved("k", &["fp-a"]));
    assert_eq!(w.run_state("r-1"), RunState::Running);
    // Both resolved (a notification may also carry an alert we never saw): cancelled.
    w.apply(resolved("k", &["fp-b", "fp-z"]));
    let run = &w.state.runs["r-1"];
    assert_eq!(run.state, RunState::Cancelled);
    assert_eq!(run.steps[0].state, StepState::Cancelled);
    assert!(run.error.as_deref().unwrap_or_default().contains("resolved"), "{:?}", run.error);
    let cancel = run.events.iter().find(|e| e.action == "cancel").unwrap();
    assert_eq!((cancel.principal.as_str(), cancel.via.as_str()), ("alertmanager", "alertmanager"));
    // Resolving again changes nothing; firing again within the cooldown starts nothing.
    let before = w.state.clone();
    w.apply(resolved("k", &["fp-b"]));
    assert_eq!(w.state.runs, before.runs);
    let (reply, _) = w.apply(firing("k", &["fp-a"], "r-2", "fix-disk", "web-1"));
    assert_eq!(run_of(&reply), ("r-1", true));
}

#[test]
fn a_run_that_is_working_is_not_cancelled_by_a_resolution() {
    let mut w = World::new(&[FIX_DISK]);
    w.apply(firing("k", &["fp"], "r-1", "fix-disk", "web-1"));
    w.step();
    w.decide("r-1", "alice", &[], true, "");
    w.step();
    assert_eq!(w.step_state("r-1", 1), StepState::Running);
    w.apply(resolved("k", &["fp"]));
    assert_eq!(w.run_state("r-1"), RunState::Running);
    assert!(!w.state.runs["r-1"].cancel_requested);
}

#[test]
fn a_run_held_by_its_runbooks_concurrency_is_cancelled_when_resolved() {
    let mut w = World::new(&[SERIAL]);
    w.apply(firing("serial/a", &["fp-a"], "r-a", "serial", "a"));
    w.step();
    assert_eq!(w.step_state("r-a", 0), StepState::Running);
    // A second target: its run waits for the first (concurrency: 1).
    w.apply(firing("serial/b", &["fp-b"], "r-b", "serial", "b"));
    w.step();
    assert_eq!(w.run_state("r-b"), RunState::Pending);
    w.apply(resolved("serial/b", &["fp-b"]));
    assert_eq!(w.run_state("r-b"), RunState::Cancelled);
    assert_eq!(w.run_state("r-a"), RunState::Running);
}

#[test]
fn a_repeated_command_is_applied_once_and_a_new_leader_decides_the_same() {
    let mut w = World::new(&[FIX_DISK]);
    let op = firing("k", &["fp"], "r-1", "fix-disk", "web-1");
    w.apply(op.clone());
    // Re-proposed after a leader change: the same command again.
    let (reply, _) = w.apply(op);
    assert_eq!(run_of(&reply), ("r-1", true));
    assert_eq!(w.state.runs.len(), 1);
    // A node restored from a snapshot has the dedupe map, and decides like the old leader.
    let restored = State::from_json(&serde_json::to_vec(&w.state).unwrap()).unwrap();
    assert_eq!(restored, w.state);
    w.state = restored;
    let (reply, _) = w.apply(firing("k", &["fp"], "r-2", "fix-disk", "web-1"));
    assert_eq!(run_of(&reply), ("r-1", true));
    // A state from before alerts existed still loads.
    let mut old = serde_json::to_value(&w.state).unwrap();
    old.as_object_mut().unwrap().remove("alert_runs");
    let old: State = serde_json::from_value(old).unwrap();
    assert!(old.alert_runs.is_empty());
}

#[test]
fn bad_params_start_nothing_and_leave_no_key() {
    let mut w = World::new(&[FIX_DISK]);
    let why = rejected(w.apply(firing("k", &["fp"], "r-1", "fix-disk", "Not A Host!")).0);
    assert!(why.contains("host"), "{why}");
    assert!(w.state.runs.is_empty() && w.state.alert_runs.is_empty());
    let why = rejected(w.apply(firing("k", &["fp"], "r-1", "nope", "web-1")).0);
    assert!(why.contains("does not exist"), "{why}");
    // A resolution for a key that never had a run: nothing happens.
    assert_eq!(w.apply(resolved("k", &["fp"])).0, Reply::Done);
}

#[test]
fn a_chat_start_records_who_started_the_run() {
    let mut w = World::new(&[FIX_DISK]);
    let by = Actor { principal: "alice".into(), via: "slack".into() };
    let op = Op::StartRunAs {
        run_id: "r-1".into(),
        runbook: "fix-disk".into(),
        params: BTreeMap::from([("host".to_string(), serde_json::json!("web-1"))]),
        idempotency_key: Some("slack:trigger-1".into()),
        by: by.clone(),
    };
    assert_eq!(run_of(&w.apply(op.clone()).0), ("r-1", false));
    // The same request again (a retry, or a re-proposal): one run, one history entry.
    assert_eq!(run_of(&w.apply(op).0), ("r-1", true));
    let run = &w.state.runs["r-1"];
    assert_eq!(run.principal, "alice");
    assert_eq!(run.events.len(), 1);
    assert_eq!((run.events[0].action.as_str(), run.events[0].via.as_str()), ("start", "slack"));
}
