//! Wire <-> domain conversions for runs, steps and attempts.

use std::collections::BTreeMap;

use baton_core::run::{
    ApprovalRequest, Attempt, AttemptState, Block, Decision, Fence, Finishing, Run, RunEvent, RunState, StepRun,
    StepState, Trigger,
};

use crate::v1 as pb;

/// A wire message that does not describe a valid domain value.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("invalid {field}: {message}")]
pub struct ConvertError {
    /// The offending field.
    pub field: String,
    /// What was wrong.
    pub message: String,
}

fn bad(field: &str, message: impl Into<String>) -> ConvertError {
    ConvertError { field: field.into(), message: message.into() }
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_default()
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Attempt state to wire.
pub fn attempt_state_to_pb(s: AttemptState) -> pb::AttemptState {
    match s {
        AttemptState::Assigned => pb::AttemptState::Assigned,
        AttemptState::Running => pb::AttemptState::Running,
        AttemptState::Succeeded => pb::AttemptState::Succeeded,
        AttemptState::Failed => pb::AttemptState::Failed,
        AttemptState::TimedOut => pb::AttemptState::TimedOut,
        AttemptState::Cancelled => pb::AttemptState::Cancelled,
        AttemptState::Lost => pb::AttemptState::Lost,
    }
}

/// Attempt state from wire; `UNSPECIFIED` and unknown numbers are errors.
pub fn attempt_state_from_pb(v: i32) -> Result<AttemptState, ConvertError> {
    Ok(match pb::AttemptState::try_from(v).map_err(|_| bad("state", format!("unknown attempt state {v}")))? {
        pb::AttemptState::Unspecified => return Err(bad("state", "attempt state is unspecified")),
        pb::AttemptState::Assigned => AttemptState::Assigned,
        pb::AttemptState::Running => AttemptState::Running,
        pb::AttemptState::Succeeded => AttemptState::Succeeded,
        pb::AttemptState::Failed => AttemptState::Failed,
        pb::AttemptState::TimedOut => AttemptState::TimedOut,
        pb::AttemptState::Cancelled => AttemptState::Cancelled,
        pb::AttemptState::Lost => AttemptState::Lost,
    })
}

fn run_state_to_pb(s: RunState) -> pb::RunState {
    match s {
        RunState::Pending => pb::RunState::Pending,
        RunState::Running => pb::RunState::Running,
        RunState::Succeeded => pb::RunState::Succeeded,
        RunState::Failed => pb::RunState::Failed,
        RunState::Cancelled => pb::RunState::Cancelled,
        RunState::NeedsAttention => pb::RunState::NeedsAttention,
        RunState::Missed => pb::RunState::Missed,
    }
}

fn run_state_from_pb(v: i32) -> Result<RunState, ConvertError> {
    Ok(match pb::RunState::try_from(v).map_err(|_| bad("state", format!("unknown run state {v}")))? {
        pb::RunState::Unspecified => return Err(bad("state", "run state is unspecified")),
        pb::RunState::Pending => RunState::Pending,
        pb::RunState::Running => RunState::Running,
        pb::RunState::Succeeded => RunState::Succeeded,
        pb::RunState::Failed => RunState::Failed,
        pb::RunState::Cancelled => RunState::Cancelled,
        pb::RunState::NeedsAttention => RunState::NeedsAttention,
        pb::RunState::Missed => RunState::Missed,
    })
}

fn step_state_to_pb(s: StepState) -> pb::StepState {
    match s {
        StepState::Pending => pb::StepState::Pending,
        StepState::Running => pb::StepState::Running,
        StepState::Succeeded => pb::StepState::Succeeded,
        StepState::Failed => pb::StepState::Failed,
        StepState::Cancelled => pb::StepState::Cancelled,
        StepState::Lost => pb::StepState::Lost,
        StepState::Skipped => pb::StepState::Skipped,
        StepState::Waiting => pb::StepState::Waiting,
    }
}

fn step_state_from_pb(v: i32) -> Result<StepState, ConvertError> {
    Ok(match pb::StepState::try_from(v).map_err(|_| bad("state", format!("unknown step state {v}")))? {
        pb::StepState::Unspecified => return Err(bad("state", "step state is unspecified")),
        pb::StepState::Pending => StepState::Pending,
        pb::StepState::Running => StepState::Running,
        pb::StepState::Succeeded => StepState::Succeeded,
        pb::StepState::Failed => StepState::Failed,
        pb::StepState::Cancelled => StepState::Cancelled,
        pb::StepState::Lost => StepState::Lost,
        pb::StepState::Skipped => StepState::Skipped,
        pb::StepState::Waiting => StepState::Waiting,
    })
}

fn block_from_str(s: &str) -> Result<Block, ConvertError> {
    Ok(match s {
        "" | "steps" => Block::Main,
        "on_failure" => Block::OnFailure,
        "on_cancel" => Block::OnCancel,
        other => return Err(bad("block", format!("unknown block {other:?}"))),
    })
}

/// A run on the wire.
pub fn run_to_pb(r: &Run) -> pb::Run {
    let (schedule, tick_ms) = (r.trigger.schedule().unwrap_or_default().to_string(), r.trigger.tick_ms());
    pb::Run {
        id: r.id.clone(),
        runbook: r.runbook.clone(),
        runbook_version: r.version.clone(),
        state: run_state_to_pb(r.state) as i32,
        trigger: r.trigger.kind().to_string(),
        schedule,
        tick_ms,
        params_json: serde_json::to_string(&r.params).unwrap_or_default(),
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        steps: r.steps.iter().map(step_to_pb).collect(),
        error: opt(&r.error),
        idempotency_key: opt(&r.idempotency_key),
        missed_ticks: r.missed_ticks,
        cancel_requested: r.cancel_requested,
        timed_out: r.timed_out,
        paused: r.paused,
        events: r
            .events
            .iter()
            .map(|e| pb::RunEvent {
                at_ms: e.at_ms,
                principal: e.principal.clone(),
                via: e.via.clone(),
                action: e.action.clone(),
                detail: e.detail.clone(),
            })
            .collect(),
        timer_start_ms: r.timer_start_ms,
        principal: r.principal.clone(),
        locks: r.locks.clone(),
        locks_held: r.locks_held,
        budget_key: r.budget_key.clone(),
        finishing: r.finishing.as_ref().map(|f| pb::Finishing {
            block: f.block.as_str().to_string(),
            state: run_state_to_pb(f.state) as i32,
            error: opt(&f.error),
            failed_step: opt(&f.failed_step),
        }),
        handlers_ran: r.handlers_ran,
        pause_reason: r.pause_reason.clone(),
        guards_after_passed: r.guards_after_passed,
    }
}

fn step_to_pb(s: &StepRun) -> pb::StepRun {
    pb::StepRun {
        id: s.id.clone(),
        state: step_state_to_pb(s.state) as i32,
        attempts: s.attempts.iter().map(attempt_to_pb).collect(),
        outputs: s.outputs.clone().into_iter().collect(),
        exit_code: s.exit_code,
        stdout_tail: s.stdout_tail.clone(),
        stderr_tail: s.stderr_tail.clone(),
        error: opt(&s.error),
        started_at_ms: s.started_at_ms,
        finished_at_ms: s.finished_at_ms,
        not_before_ms: s.not_before_ms,
        failure_tolerated: s.failure_tolerated,
        deadline_ms: s.deadline_ms,
        decisions: s
            .decisions
            .iter()
            .map(|d| pb::Decision {
                principal: d.principal.clone(),
                approve: d.approve,
                reason: d.reason.clone(),
                at_ms: d.at_ms,
                via: d.via.clone(),
            })
            .collect(),
        approval: s.approval.as_ref().map(|a| pb::ApprovalRequest {
            prompt: a.prompt.clone(),
            approvers: a.approvers.clone(),
            min_approvals: a.min_approvals,
        }),
        retry_base: s.retry_base,
        block: s.block.as_str().to_string(),
        spec: s.spec.clone(),
        group: opt(&s.group),
        batch: s.batch,
        target_json: s.target.as_ref().map(|t| t.to_string()).unwrap_or_default(),
        target_worker: opt(&s.target_worker),
    }
}

fn attempt_to_pb(a: &Attempt) -> pb::Attempt {
    pb::Attempt {
        id: a.id,
        number: a.number,
        worker: a.worker.clone(),
        fence: Some(pb::Fence { term: a.fence.term, index: a.fence.index }),
        state: attempt_state_to_pb(a.state) as i32,
        assigned_at_ms: a.assigned_at_ms,
        started_at_ms: a.started_at_ms,
        finished_at_ms: a.finished_at_ms,
        exit_code: a.exit_code,
        error: opt(&a.error),
        argv: a.argv.clone(),
    }
}

/// A run from the wire, validated.
pub fn run_from_pb(r: pb::Run) -> Result<Run, ConvertError> {
    let params: BTreeMap<String, serde_json::Value> = if r.params_json.is_empty() {
        BTreeMap::new()
    } else {
        serde_json::from_str(&r.params_json).map_err(|e| bad("params_json", e.to_string()))?
    };
    let trigger = match r.trigger.as_str() {
        "api" => Trigger::Api,
        "schedule" => Trigger::Schedule { name: r.schedule.clone(), tick_ms: r.tick_ms },
        "manual" => Trigger::Manual { schedule: r.schedule.clone() },
        "backfill" => Trigger::Backfill { schedule: r.schedule.clone(), tick_ms: r.tick_ms },
        other => return Err(bad("trigger", format!("unknown trigger {other:?}"))),
    };
    let steps = r.steps.into_iter().map(step_from_pb).collect::<Result<Vec<_>, _>>()?;
    Ok(Run {
        id: r.id,
        runbook: r.runbook,
        version: r.runbook_version,
        params,
        trigger,
        state: run_state_from_pb(r.state)?,
        steps,
        created_at_ms: r.created_at_ms,
        started_at_ms: r.started_at_ms,
        finished_at_ms: r.finished_at_ms,
        error: non_empty(r.error),
        idempotency_key: non_empty(r.idempotency_key),
        missed_ticks: r.missed_ticks,
        cancel_requested: r.cancel_requested,
        timed_out: r.timed_out,
        paused: r.paused,
        events: r
            .events
            .into_iter()
            .map(|e| RunEvent {
                at_ms: e.at_ms,
                principal: e.principal,
                via: e.via,
                action: e.action,
                detail: e.detail,
            })
            .collect(),
        timer_start_ms: r.timer_start_ms,
        principal: r.principal,
        locks: r.locks,
        locks_held: r.locks_held,
        budget_key: r.budget_key,
        finishing: r
            .finishing
            .map(|f| -> Result<Finishing, ConvertError> {
                Ok(Finishing {
                    block: block_from_str(&f.block)?,
                    state: run_state_from_pb(f.state)?,
                    error: non_empty(f.error),
                    failed_step: non_empty(f.failed_step),
                })
            })
            .transpose()?,
        handlers_ran: r.handlers_ran,
        pause_reason: r.pause_reason,
        guards_after_passed: r.guards_after_passed,
    })
}

fn step_from_pb(s: pb::StepRun) -> Result<StepRun, ConvertError> {
    Ok(StepRun {
        id: s.id,
        state: step_state_from_pb(s.state)?,
        attempts: s.attempts.into_iter().map(attempt_from_pb).collect::<Result<Vec<_>, _>>()?,
        outputs: s.outputs.into_iter().collect(),
        exit_code: s.exit_code,
        stdout_tail: s.stdout_tail,
        stderr_tail: s.stderr_tail,
        error: non_empty(s.error),
        started_at_ms: s.started_at_ms,
        finished_at_ms: s.finished_at_ms,
        not_before_ms: s.not_before_ms,
        failure_tolerated: s.failure_tolerated,
        deadline_ms: s.deadline_ms,
        decisions: s
            .decisions
            .into_iter()
            .map(|d| Decision {
                principal: d.principal,
                approve: d.approve,
                reason: d.reason,
                at_ms: d.at_ms,
                via: d.via,
                request_id: String::new(),
            })
            .collect(),
        approval: s.approval.map(|a| ApprovalRequest {
            prompt: a.prompt,
            approvers: a.approvers,
            min_approvals: a.min_approvals,
        }),
        retry_base: s.retry_base,
        block: block_from_str(&s.block)?,
        spec: s.spec,
        group: non_empty(s.group),
        batch: s.batch,
        target: if s.target_json.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&s.target_json).map_err(|e| bad("target_json", e.to_string()))?)
        },
        target_worker: non_empty(s.target_worker),
    })
}

fn attempt_from_pb(a: pb::Attempt) -> Result<Attempt, ConvertError> {
    let fence = a.fence.ok_or_else(|| bad("fence", "an attempt needs a fence"))?;
    Ok(Attempt {
        id: a.id,
        number: a.number,
        worker: a.worker,
        fence: Fence { term: fence.term, index: fence.index },
        state: attempt_state_from_pb(a.state)?,
        assigned_at_ms: a.assigned_at_ms,
        started_at_ms: a.started_at_ms,
        finished_at_ms: a.finished_at_ms,
        exit_code: a.exit_code,
        error: non_empty(a.error),
        argv: a.argv,
        // Internal to the cluster (which process an attempt went to); not in the API.
        worker_boot: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_states_are_rejected() {
        assert!(attempt_state_from_pb(0).is_err());
        assert!(attempt_state_from_pb(99).is_err());
        assert_eq!(attempt_state_from_pb(3), Ok(AttemptState::Succeeded));
    }

    #[test]
    fn run_round_trips() {
        let run = Run {
            id: "r-1".into(),
            runbook: "hello".into(),
            version: "abc".into(),
            params: [("name".to_string(), serde_json::json!("Ada"))].into(),
            trigger: Trigger::Schedule { name: "s".into(), tick_ms: 5 },
            state: RunState::Running,
            steps: vec![
                StepRun {
                    attempts: vec![Attempt {
                        id: 7,
                        number: 1,
                        worker: "w".into(),
                        fence: Fence { term: 2, index: 7 },
                        state: AttemptState::Running,
                        assigned_at_ms: 1,
                        started_at_ms: 2,
                        finished_at_ms: 0,
                        exit_code: None,
                        error: None,
                        argv: vec!["echo".into()],
                        worker_boot: 0,
                    }],
                    ..StepRun::pending("greet")
                },
                StepRun {
                    state: StepState::Waiting,
                    deadline_ms: 99,
                    decisions: vec![Decision {
                        principal: "alice".into(),
                        approve: true,
                        reason: "ok".into(),
                        at_ms: 3,
                        via: "api".into(),
                        request_id: String::new(),
                    }],
                    approval: Some(ApprovalRequest {
                        prompt: "Go?".into(),
                        approvers: vec!["alice".into(), "group:sre".into()],
                        min_approvals: 2,
                    }),
                    retry_base: 1,
                    ..StepRun::pending("approve")
                },
            ],
            created_at_ms: 1,
            started_at_ms: 1,
            finished_at_ms: 0,
            error: None,
            idempotency_key: Some("k".into()),
            missed_ticks: 0,
            cancel_requested: false,
            timed_out: true,
            paused: true,
            pause_reason: "guard x failed".into(),
            timer_start_ms: 4,
            principal: "alice".into(),
            locks: vec!["redis/a".into()],
            locks_held: true,
            budget_key: Some(String::new()),
            finishing: Some(Finishing {
                block: Block::OnFailure,
                state: RunState::Failed,
                error: Some("step x failed".into()),
                failed_step: Some("x".into()),
            }),
            handlers_ran: true,
            guards_after_passed: true,
            events: vec![RunEvent {
                at_ms: 4,
                principal: "bob".into(),
                via: "slack".into(),
                action: "pause".into(),
                detail: "wait for the sale".into(),
            }],
        };
        assert_eq!(run_from_pb(run_to_pb(&run)), Ok(run));
    }
}
