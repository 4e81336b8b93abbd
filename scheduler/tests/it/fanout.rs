//! Steps that run at the same time: `parallel` groups and `foreach` targets in batches, with
//! `max_failures`, `bake` and worker selectors. Engine and state machine only, no I/O.

use std::collections::BTreeMap;

use baton_core::command::Op;
use baton_core::run::{AttemptState, RunState, StepState};
use baton_scheduler::engine::WorkerSlot;
use baton_scheduler::fsm::Effect;

use crate::world::World;

const CHECKS: &str = r#"
name: checks
steps:
  - id: both
    parallel:
      - id: disk
        action: exec
        with: { command: ["df"] }
      - id: mem
        action: exec
        with: { command: ["free"] }
  - id: report
    action: exec
    with: { command: ["echo", "{{ steps.disk.status }} {{ steps.mem.status }}"] }
"#;

const ROLLING: &str = r#"
name: rolling
params:
  hosts: { type: list, required: true }
steps:
  - id: restart
    action: exec
    foreach: params.hosts
    batch: 2
    max_failures: 1
    bake: 30s
    with: { command: ["restart", "{{ target }}"] }
  - id: done
    action: exec
    when: "steps.restart.status == 'succeeded'"
    with: { command: ["echo", "all restarted"] }
"#;

const ON_WORKERS: &str = r#"
name: on-workers
steps:
  - id: clean
    action: exec
    foreach: { workers: { role: web } }
    batch: "50%"
    with: { command: ["clean", "{{ target }}"] }
"#;

fn start(w: &mut World, id: &str, runbook: &str, hosts: &[&str]) {
    let params: BTreeMap<String, serde_json::Value> = if hosts.is_empty() && runbook != "rolling" {
        BTreeMap::new()
    } else {
        [("hosts".to_string(), serde_json::json!(hosts))].into()
    };
    w.apply(Op::StartRun { run_id: id.into(), runbook: runbook.into(), params, idempotency_key: None });
}

/// (step id, argv[1], worker) of every assignment in `ops`.
fn assignments(ops: &[Op]) -> Vec<(String, String, String)> {
    ops.iter()
        .filter_map(|op| match op {
            Op::Assign { step_id, argv, worker, .. } => {
                Some((step_id.clone(), argv.get(1).cloned().unwrap_or_default(), worker.clone()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn a_parallel_group_runs_at_once_and_the_next_step_waits_for_all() {
    let mut w = World::new(&[CHECKS]);
    w.start("r1", "checks");
    let ops = w.step();
    let started: Vec<String> = assignments(&ops).into_iter().map(|(s, _, _)| s).collect();
    assert_eq!(started, ["disk", "mem"], "{ops:?}");
    w.finish(w.active_of("r1", "disk"), AttemptState::Succeeded);
    assert!(assignments(&w.step()).is_empty(), "report waits for mem");
    w.finish(w.active_of("r1", "mem"), AttemptState::Succeeded);
    let ops = w.step();
    assert_eq!(assignments(&ops), [("report".into(), "succeeded succeeded".into(), "w1".into())]);

    // One step of the group fails: the run fails and the other is asked to stop.
    w.start("r2", "checks");
    w.step();
    let mem = w.active_of("r2", "mem");
    let (_, fx) = w.finish(w.active_of("r2", "disk"), AttemptState::Failed);
    assert_eq!(w.run_state("r2"), RunState::Failed);
    assert!(fx.iter().any(|e| matches!(e, Effect::CancelAttempt { attempt_id, .. } if *attempt_id == mem)), "{fx:?}");
    w.finish(mem, AttemptState::Cancelled);
    assert_eq!(w.run_state("r2"), RunState::Failed);
    assert_eq!(w.state.runs["r2"].error.as_deref(), Some("step disk exited with code 1"));
}

#[test]
fn foreach_runs_targets_in_batches_with_bake_and_tolerates_max_failures() {
    let mut w = World::new(&[ROLLING]);
    start(&mut w, "r1", "rolling", &["a", "b", "c", "d", "e"]);
    let ops = w.step();
    assert!(matches!(&ops[..], [Op::ExpandForeach { targets, .. }] if targets.len() == 5), "{ops:?}");
    let ids: Vec<&str> = w.state.runs["r1"].steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["restart[a]", "restart[b]", "restart[c]", "restart[d]", "restart[e]", "done"]);
    let batches: Vec<u32> = w.state.runs["r1"].steps[..5].iter().map(|s| s.batch).collect();
    assert_eq!(batches, [0, 0, 1, 1, 2]);
    // Batch 0: two targets at once, each with its own argv.
    let ops = w.step();
    let argv: Vec<String> = assignments(&ops).into_iter().map(|(_, a, _)| a).collect();
    assert_eq!(argv, ["a", "b"]);
    // a fails (1 failure is allowed), b succeeds: the batch is done, the next waits 30 s.
    w.finish(w.active_of("r1", "restart[a]"), AttemptState::Failed);
    assert!(w.state.runs["r1"].steps[0].failure_tolerated);
    assert_eq!(w.run_state("r1"), RunState::Running);
    w.finish(w.active_of("r1", "restart[b]"), AttemptState::Succeeded);
    assert!(assignments(&w.step()).is_empty(), "baking");
    assert!(assignments(&w.advance(29_999)).is_empty(), "still baking");
    let ops = w.advance(1);
    let argv: Vec<String> = assignments(&ops).into_iter().map(|(_, a, _)| a).collect();
    assert_eq!(argv, ["c", "d"]);
    // A second failure is one too many: the step fails, target e never starts.
    w.finish(w.active_of("r1", "restart[c]"), AttemptState::Succeeded);
    let (_, _) = w.finish(w.active_of("r1", "restart[d]"), AttemptState::Failed);
    assert_eq!(w.run_state("r1"), RunState::Failed);
    assert_eq!(
        w.state.runs["r1"].error.as_deref(),
        Some("step restart failed on 2 of 5 targets (max_failures allows 1)")
    );
    assert_eq!(w.step_state("r1", 4), StepState::Cancelled);
    assert_eq!(w.step_state("r1", 5), StepState::Pending);
}

#[test]
fn a_foreach_step_is_seen_whole_by_later_steps_and_an_empty_list_skips_it() {
    let mut w = World::new(&[ROLLING]);
    start(&mut w, "r1", "rolling", &["a"]);
    w.step();
    w.step();
    w.finish(w.active_of("r1", "restart[a]"), AttemptState::Succeeded);
    let ops = w.step();
    assert_eq!(assignments(&ops), [("done".into(), "all restarted".into(), "w1".into())], "{ops:?}");

    start(&mut w, "r2", "rolling", &[]);
    w.step();
    assert_eq!(w.step_state("r2", 0), StepState::Skipped);
    assert_eq!(w.state.runs["r2"].steps[0].error.as_deref(), Some("skipped: foreach has no targets"));
    // An empty foreach is not `succeeded`: the condition on it is false.
    w.step();
    assert_eq!(w.step_state("r2", 1), StepState::Skipped);
}

#[test]
fn a_worker_selector_runs_each_target_on_its_worker() {
    let mut w = World::new(&[ON_WORKERS]);
    let worker = |id: &str, role: &str| WorkerSlot {
        id: id.into(),
        capacity: 2,
        labels: [("role".to_string(), role.to_string())].into(),
        ..Default::default()
    };
    w.workers = vec![worker("web-1", "web"), worker("db-1", "db"), worker("web-2", "web")];
    w.start("r1", "on-workers");
    let ops = w.step();
    assert!(
        matches!(&ops[..], [Op::ExpandForeach { workers, .. }] if workers == &[Some("web-1".to_string()), Some("web-2".to_string())]),
        "{ops:?}"
    );
    // 50% of 2 targets: one at a time, each on its own worker even when another has room.
    let ops = w.step();
    assert_eq!(assignments(&ops), [("clean[web-1]".into(), "web-1".into(), "web-1".into())]);
    w.finish(w.active_of("r1", "clean[web-1]"), AttemptState::Succeeded);
    w.workers.retain(|s| s.id != "web-2");
    assert!(assignments(&w.step()).is_empty(), "waits for its worker");
    w.workers.push(worker("web-2", "web"));
    let ops = w.step();
    assert_eq!(assignments(&ops), [("clean[web-2]".into(), "web-2".into(), "web-2".into())]);
}
