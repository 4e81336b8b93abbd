//! Schedule policies in the engine and the state machine, without I/O: overlap (all six),
//! catch-up, jitter, blackout windows, pause, manual triggers and backfills.

use baton_core::command::Op;
use baton_core::run::{AttemptState, RunState, Trigger};
use baton_scheduler::fsm::{Effect, Reply};

use crate::world::{World, by, rejected};

const LONG: &str = r#"
name: long
steps:
  - id: work
    action: exec
    with: { command: ["sleep", "3600"] }
"#;

/// Every minute, with `extra` lines (overlap, catch_up...).
fn every_minute(extra: &str) -> String {
    format!("schedule: m\nrunbook: long\ncron: \"* * * * *\"\n{extra}")
}

const MIN: i64 = 60_000;

/// A world at 00:00:30 (unix time) with the `long` runbook and schedule `m`.
fn world(extra: &str) -> World {
    let mut w = World::new(&[LONG]);
    w.workers[0].capacity = 100;
    w.now = 30_000;
    w.schedule(&every_minute(extra));
    w
}

/// Moves to just after tick `k` (k minutes) and lets the engine act.
fn tick(w: &mut World, k: i64) {
    w.now = k * MIN + 1;
    w.step();
    w.step();
}

fn states(w: &World) -> Vec<RunState> {
    w.runs_of("m").into_iter().map(|(_, s)| s).collect()
}

#[test]
fn overlap_allow_all_and_skip() {
    let mut w = world("");
    tick(&mut w, 1);
    tick(&mut w, 2);
    assert_eq!(states(&w), [RunState::Running, RunState::Running], "allow_all: both run");

    let mut w = world("overlap: skip\n");
    tick(&mut w, 1);
    tick(&mut w, 2);
    let runs = w.runs_of("m");
    assert_eq!(states(&w), [RunState::Running, RunState::Missed]);
    let record = &w.state.runs[&runs[1].0];
    assert!(record.error.as_deref().unwrap().contains("is still going (overlap: skip)"), "{record:?}");
    assert_eq!(w.state.schedules["m"].ticks_missed, 1);
    assert_eq!(w.state.schedules["m"].runs_fired, 1);
}

#[test]
fn overlap_buffer_one_keeps_one_waiting_and_skips_the_rest() {
    let mut w = world("overlap: buffer_one\n");
    tick(&mut w, 1);
    tick(&mut w, 2);
    tick(&mut w, 3);
    assert_eq!(states(&w), [RunState::Running, RunState::Pending, RunState::Missed]);
    let first = w.active(&w.runs_of("m")[0].0);
    w.finish(first, AttemptState::Succeeded);
    w.step();
    assert_eq!(states(&w), [RunState::Succeeded, RunState::Running, RunState::Missed], "the buffered run starts");
}

#[test]
fn overlap_buffer_all_runs_one_at_a_time_oldest_first() {
    let mut w = world("overlap: buffer_all\n");
    for k in 1..=3 {
        tick(&mut w, k);
    }
    assert_eq!(states(&w), [RunState::Running, RunState::Pending, RunState::Pending]);
    for done in 0..2 {
        let id = w.runs_of("m")[done].0.clone();
        let attempt = w.active(&id);
        w.finish(attempt, AttemptState::Succeeded);
        w.step();
    }
    assert_eq!(states(&w), [RunState::Succeeded, RunState::Succeeded, RunState::Running]);
}

#[test]
fn overlap_cancel_other_stops_the_old_run_and_starts_once_it_ended() {
    let mut w = world("overlap: cancel_other\n");
    tick(&mut w, 1);
    let old = w.runs_of("m")[0].0.clone();
    let attempt = w.active(&old);
    w.now = 2 * MIN + 1;
    let ops = w.engine.decide(&w.state, &view(&w));
    assert!(matches!(&ops[..], [Op::Fire { .. }]), "{ops:?}");
    let (_, fx) = w.apply(ops[0].clone());
    assert!(fx.iter().any(|e| matches!(e, Effect::CancelAttempt { attempt_id, .. } if *attempt_id == attempt)));
    w.step();
    assert_eq!(states(&w), [RunState::Running, RunState::Pending], "the new run waits for the old one to stop");
    w.finish(attempt, AttemptState::Cancelled);
    w.step();
    assert_eq!(states(&w), [RunState::Cancelled, RunState::Running]);
    let new = &w.runs_of("m")[1].0;
    assert!(w.state.runs[&old].error.as_deref().unwrap().contains(&format!("superseded by run {new}")));
}

#[test]
fn overlap_terminate_other_ends_the_old_run_at_once() {
    let mut w = world("overlap: terminate_other\n");
    tick(&mut w, 1);
    let old = w.runs_of("m")[0].0.clone();
    let attempt = w.active(&old);
    tick(&mut w, 2);
    assert_eq!(states(&w), [RunState::Cancelled, RunState::Running], "no waiting for the old run");
    assert!(w.state.runs[&old].error.as_deref().unwrap().starts_with("terminated: superseded by run"));
    // The old attempt's late result is recorded without reopening its run.
    w.finish(attempt, AttemptState::Cancelled);
    assert_eq!(w.state.runs[&old].state, RunState::Cancelled);
}

fn view(w: &World) -> baton_scheduler::engine::View {
    baton_scheduler::engine::View {
        now_ms: w.now,
        leader_since_ms: w.leader_since,
        workers: w.workers.clone(),
        departed: Default::default(),
        worker_grace_ms: 1_000,
        guards_passed: Default::default(),
    }
}

#[test]
fn manual_triggers_obey_the_overlap_policy() {
    let mut w = world("overlap: skip\n");
    let trigger = |w: &mut World, id: &str| {
        w.apply(Op::TriggerSchedule { schedule: "m".into(), run_id: id.into(), by: by("alice") }).0
    };
    assert_eq!(trigger(&mut w, "r-1"), Reply::Run { run_id: "r-1".into(), deduplicated: false });
    assert_eq!(w.state.runs["r-1"].trigger, Trigger::Manual { schedule: "m".into() });
    assert_eq!(w.state.runs["r-1"].events[0].action, "trigger");
    w.step();
    let why = rejected(trigger(&mut w, "r-2"));
    assert!(why.contains("schedule m: nothing started; skipped: run r-1 of this schedule is still going"), "{why}");
    assert!(!w.state.runs.contains_key("r-2"));
    // The tick is refused too, since the manual run is going.
    tick(&mut w, 1);
    assert_eq!(states(&w), [RunState::Running, RunState::Missed]);
    let why = rejected(w.apply(Op::TriggerSchedule { schedule: "nope".into(), run_id: "r-3".into(), by: by("a") }).0);
    assert!(why.contains("schedule \"nope\" does not exist"));
}

#[test]
fn catch_up_skip_latest_and_all_within_the_window() {
    // The cluster was down from 00:00:30 to 00:10:30: ticks 1..=10 minutes were due then.
    let run = |extra: &str| {
        let mut w = world(extra);
        w.leader_since = 10 * MIN + 30_000;
        w.now = w.leader_since;
        for _ in 0..20 {
            w.step();
        }
        w
    };
    let w = run("");
    assert_eq!(states(&w), [RunState::Missed]);
    assert_eq!(w.state.runs[&w.runs_of("m")[0].0].missed_ticks, 10);

    let w = run("catch_up: { policy: latest, window: 5m }\n");
    assert_eq!(states(&w), [RunState::Missed, RunState::Running], "the latest tick runs");
    assert_eq!(w.state.runs[&w.runs_of("m")[0].0].missed_ticks, 9);
    assert_eq!(w.runs_of("m")[1].0, "s-m-600000");

    let w = run("catch_up: { policy: latest, window: 10s }\n");
    assert_eq!(states(&w), [RunState::Missed], "the latest tick is outside the window");

    let w = run("catch_up: { policy: all, window: 5m }\n");
    let runs = w.runs_of("m");
    assert_eq!(runs[0].1, RunState::Missed);
    assert_eq!(w.state.runs[&runs[0].0].missed_ticks, 5, "ticks older than 5m: 1..=5");
    let caught: Vec<&str> = runs[1..].iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(caught, ["s-m-360000", "s-m-420000", "s-m-480000", "s-m-540000", "s-m-600000"]);
    assert_eq!(w.state.schedules["m"].next_fire_at_ms, Some(11 * MIN));
}

#[test]
fn jitter_delays_each_tick_by_its_fixed_offset() {
    let mut w = world("jitter: 40s\n");
    let offset = w.state.schedules["m"].schedule.jitter_ms_for(MIN);
    w.now = MIN + offset - 1;
    assert!(w.step().is_empty(), "not before tick + jitter");
    w.now = MIN + offset;
    let ops = w.step();
    assert_eq!(ops.first(), Some(&Op::Fire { schedule: "m".into(), tick_ms: MIN }), "{ops:?}");
}

#[test]
fn blackout_windows_hold_runs_or_skip_ticks() {
    // A window at minute 5 of every hour, lasting 2 minutes: 00:05 to 00:07.
    let mut w = world("blackout:\n  - { cron: \"5 * * * *\", duration: 2m }\n");
    for k in 1..=4 {
        tick(&mut w, k);
    }
    assert_eq!(states(&w), [RunState::Running; 4]);
    tick(&mut w, 5);
    tick(&mut w, 6);
    assert_eq!(states(&w)[4..], [RunState::Pending, RunState::Pending], "held during the window");
    tick(&mut w, 7);
    assert_eq!(states(&w)[4..], [RunState::Running; 3], "released when it ends");

    let mut w = world("blackout:\n  - { cron: \"5 * * * *\", duration: 2m, action: skip }\n");
    for k in 1..=7 {
        tick(&mut w, k);
    }
    let runs = w.runs_of("m");
    let skipped: Vec<RunState> = states(&w)[4..].to_vec();
    assert_eq!(skipped, [RunState::Missed, RunState::Missed, RunState::Running]);
    assert!(w.state.runs[&runs[4].0].error.as_deref().unwrap().contains("blackout window"));
}

#[test]
fn a_paused_schedule_fires_nothing_and_records_what_it_skipped_when_unpaused() {
    let mut w = world("");
    let pause = |w: &mut World, paused: bool| {
        let op = Op::PauseSchedule { schedule: "m".into(), paused, note: "db migration".into(), by: by("bob") };
        w.apply(op).0
    };
    assert_eq!(pause(&mut w, true), Reply::Done);
    assert!(rejected(pause(&mut w, true)).contains("is already paused"));
    assert_eq!(w.state.schedules["m"].pause_note, "paused by bob: db migration");
    for k in 1..=4 {
        tick(&mut w, k);
    }
    assert!(w.runs_of("m").is_empty());
    w.now = 4 * MIN + 30_000;
    assert_eq!(pause(&mut w, false), Reply::Done);
    let runs = w.runs_of("m");
    assert_eq!(states(&w), [RunState::Missed]);
    let record = &w.state.runs[&runs[0].0];
    assert_eq!(record.missed_ticks, 4);
    assert!(record.error.as_deref().unwrap().contains("the schedule was paused"));
    assert_eq!(w.state.schedules["m"].next_fire_at_ms, Some(5 * MIN));
    tick(&mut w, 5);
    assert_eq!(states(&w), [RunState::Missed, RunState::Running]);
}

#[test]
fn backfill_runs_past_ticks_without_a_run_one_at_a_time() {
    let mut w = world("");
    tick(&mut w, 1);
    tick(&mut w, 2);
    let ran = w.active("s-m-120000");
    w.finish(ran, AttemptState::Succeeded);
    let ran = w.active("s-m-60000");
    w.finish(ran, AttemptState::Succeeded);
    w.now = 10 * MIN;
    let backfill =
        |w: &mut World, tick: i64| w.apply(Op::Backfill { schedule: "m".into(), tick_ms: tick, by: by("carol") }).0;
    // Tick 2 already ran: its backfill creates nothing and says so.
    assert_eq!(backfill(&mut w, 2 * MIN), Reply::Run { run_id: "s-m-120000".into(), deduplicated: true });
    for k in [3, 4] {
        let id = format!("s-m-{}", k * MIN);
        assert_eq!(backfill(&mut w, k * MIN), Reply::Run { run_id: id, deduplicated: false });
    }
    assert_eq!(w.state.runs["s-m-180000"].trigger, Trigger::Backfill { schedule: "m".into(), tick_ms: 3 * MIN });
    w.step();
    assert_eq!(w.state.runs["s-m-180000"].state, RunState::Running);
    assert_eq!(w.state.runs["s-m-240000"].state, RunState::Pending, "one at a time");
    // Not a tick of the schedule, or in the future: refused.
    assert!(rejected(backfill(&mut w, 3 * MIN + 1)).contains("is not a tick of schedule m"));
    assert!(rejected(backfill(&mut w, 20 * MIN)).contains("is in the future"));
    // The schedule's own tick 3 makes no second run: its backfilled run stands for it.
    assert_eq!(w.state.schedules["m"].next_fire_at_ms, Some(4 * MIN));
    let for_tick_3 =
        w.state.runs.values().filter(|r| r.trigger.schedule() == Some("m") && r.trigger.tick_ms() == 3 * MIN).count();
    assert_eq!(for_tick_3, 1);
}
