//! `RunService`: start, get, list, watch, logs, cancel.

use std::pin::Pin;

use baton_core::command::{Actor, Op};
use baton_core::runbook::ParamError;
use baton_proto::run_to_pb;
use baton_proto::v1 as pb;
use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::{Api, ApiError, params_from_wire};
use crate::fsm::Reply;

/// Longest idempotency key accepted.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Chunks read from the store per batch when streaming logs.
const LOG_BATCH: usize = 256;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn param_field(e: &ParamError) -> String {
    let name = match e {
        ParamError::Unknown { name, .. }
        | ParamError::Missing { name }
        | ParamError::WrongType { name, .. }
        | ParamError::Pattern { name, .. }
        | ParamError::OutOfRange { name, .. }
        | ParamError::NotInEnum { name, .. } => name,
    };
    format!("params.{name}")
}

impl Api {
    pub(super) fn get_run(&self, id: &str) -> Result<pb::Run, ApiError> {
        self.node
            .read(|s| s.runs.get(id).map(run_to_pb))
            .ok_or_else(|| ApiError::NotFound(format!("run {id:?} does not exist")))
    }

    async fn start_run(&self, req: pb::StartRunRequest) -> Result<pb::StartRunResponse, ApiError> {
        if req.idempotency_key.len() > MAX_IDEMPOTENCY_KEY {
            return Err(ApiError::invalid(
                "idempotency_key",
                format!("is {} bytes; the limit is {MAX_IDEMPOTENCY_KEY}", req.idempotency_key.len()),
            ));
        }
        let key = (!req.idempotency_key.is_empty()).then_some(req.idempotency_key);
        let params = params_from_wire(req.params);
        // Validate before proposing, so bad input never reaches the log; apply checks again.
        let existing = self.node.read(|s| -> Result<Option<String>, ApiError> {
            if let Some(id) = key.as_ref().and_then(|k| s.idempotency.get(k)) {
                return Ok(Some(id.clone()));
            }
            let entry = s.runbooks.get(&req.runbook).ok_or_else(|| {
                let known: Vec<&str> = s.runbooks.keys().map(String::as_str).collect();
                ApiError::NotFound(format!(
                    "runbook {:?} does not exist (known: {})",
                    req.runbook,
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                ))
            })?;
            let rb = entry.current();
            let resolved = rb.resolve_params(&params).map_err(|e| ApiError::invalid(param_field(&e), e.to_string()))?;
            rb.render_locks(&resolved).map_err(|e| ApiError::invalid("params", format!("the run's locks: {e}")))?;
            rb.budget_key(&resolved).map_err(|e| ApiError::invalid("params", format!("the run's budget: {e}")))?;
            Ok(None)
        })?;
        if let Some(id) = existing {
            return Ok(pb::StartRunResponse { run: Some(self.get_run(&id)?), deduplicated: true });
        }
        let run_id = crate::api::new_run_id();
        let op = if req.principal.is_empty() {
            Op::StartRun { run_id, runbook: req.runbook, params, idempotency_key: key }
        } else {
            let by = actor(&req.principal, "api", false)?;
            Op::StartRunAs { run_id, runbook: req.runbook, params, idempotency_key: key, by }
        };
        match self.propose(op).await? {
            Reply::Run { run_id, deduplicated } => {
                Ok(pb::StartRunResponse { run: Some(self.get_run(&run_id)?), deduplicated })
            }
            other => Err(ApiError::Unavailable(format!("unexpected reply {other:?}"))),
        }
    }
}

impl Api {
    /// What a run would do (`baton plan`): everything `Start` checks, plus the rendered steps.
    pub(crate) fn plan_run(&self, req: pb::StartRunRequest) -> Result<pb::RunPlan, ApiError> {
        let params = params_from_wire(req.params);
        let now = super::now_ms();
        self.node.read(|s| {
            let entry = s
                .runbooks
                .get(&req.runbook)
                .ok_or_else(|| ApiError::NotFound(format!("runbook {:?} does not exist", req.runbook)))?;
            let rb = entry.current();
            let resolved = rb.resolve_params(&params).map_err(|e| ApiError::invalid(param_field(&e), e.to_string()))?;
            let run = crate::fsm::planned_run(rb, resolved, now).map_err(|e| ApiError::invalid("params", e))?;
            let ctx = crate::engine::template_context(&run);
            let workers = self.workers.slots();
            let budget = match (&rb.budget, &run.budget_key) {
                (Some(b), Some(key)) => {
                    let (used, _) = s.budget_use(rb, key, now).unwrap_or((0, now));
                    let for_key = if key.is_empty() { String::new() } else { format!(" for {key:?}") };
                    let per = baton_core::duration::format_duration(b.per_ms);
                    format!("{used} of {} run(s) per {per} used{for_key}", b.max_runs)
                }
                _ => String::new(),
            };
            // Handler steps run after a failure or cancel: what they read of it is shown as such.
            let mut handler_ctx = ctx.clone();
            handler_ctx["run"]["failed_step"] = "<the failed step>".into();
            handler_ctx["run"]["error"] = "<the run's error>".into();
            let steps = run
                .steps
                .iter()
                .filter_map(|step| {
                    let ctx = if step.block == baton_core::run::Block::Main { &ctx } else { &handler_ctx };
                    rb.step(&step.id).map(|spec| plan_step(step.block, spec, ctx, &workers))
                })
                .collect();
            Ok(pb::RunPlan {
                runbook: rb.name.clone(),
                version: rb.version.clone(),
                params_json: serde_json::to_string(&run.params).unwrap_or_default(),
                locks: run
                    .locks
                    .iter()
                    .map(|l| pb::PlannedLock {
                        name: l.clone(),
                        held_by: s.locks.get(l).map(|(h, _)| h.clone()).unwrap_or_default(),
                    })
                    .collect(),
                budget,
                refused: s.budget_refusal(rb, &run, now).unwrap_or_default(),
                active_runs: s
                    .active_runs
                    .iter()
                    .filter(|id| s.runs.get(*id).is_some_and(|r| r.runbook == rb.name))
                    .count() as u32,
                concurrency: rb.concurrency.unwrap_or(0),
                timeout_ms: rb.timeout_ms.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
                steps,
                guards: rb
                    .guards
                    .iter()
                    .map(|g| {
                        let render =
                            |t: &str| baton_core::template::render_text(t, &ctx).unwrap_or_else(|_| t.to_string());
                        match &g.check {
                            baton_core::runbook::GuardCheck::Prometheus { url, query } => {
                                format!("{}: prometheus {} {}", g.name, render(url), render(query))
                            }
                            baton_core::runbook::GuardCheck::Http { url, status } => {
                                let want = status.map_or("2xx".to_string(), |s| s.to_string());
                                format!("{}: GET {} expects {want}", g.name, render(url))
                            }
                        }
                    })
                    .collect(),
            })
        })
    }
}

/// One step of a plan, rendered as far as the params allow.
fn plan_step(
    block: baton_core::run::Block,
    spec: &baton_core::runbook::Step,
    ctx: &serde_json::Value,
    workers: &[crate::engine::WorkerSlot],
) -> pb::PlannedStep {
    use baton_core::runbook::{Action, ForeachOver};
    let mut ctx = ctx.clone();
    let mut targets_note = String::new();
    let mut targets: Vec<serde_json::Value> = Vec::new();
    if let Some(foreach) = &spec.foreach {
        match &foreach.over {
            ForeachOver::List(expr) => match baton_core::template::eval_list(expr, &ctx) {
                Ok(items) => targets = items,
                Err(e) => targets_note = format!("targets resolved at run time: {}", e.message),
            },
            ForeachOver::Workers(selector) => {
                let labels: std::collections::BTreeMap<&String, String> = selector
                    .iter()
                    .map(|(k, v)| (k, baton_core::template::render_text(v, &ctx).unwrap_or_else(|_| v.clone())))
                    .collect();
                targets = workers
                    .iter()
                    .filter(|w| labels.iter().all(|(k, v)| w.labels.get(*k) == Some(v)))
                    .map(|w| serde_json::Value::String(w.id.clone()))
                    .collect();
                targets_note = "the workers connected now; resolved again when the step starts".into();
            }
        }
        ctx["target"] = targets.first().cloned().unwrap_or_else(|| "<target>".into());
    }
    let ctx = &ctx;
    let mut step = pb::PlannedStep {
        targets: targets.iter().map(|t| t.to_string()).collect(),
        batch_size: spec.foreach.as_ref().map_or(0, |f| f.batch.batch_of(targets.len()) as u32),
        max_failures: spec.foreach.as_ref().map_or(0, |f| f.max_failures.tolerated_of(targets.len()) as u32),
        bake_ms: spec.foreach.as_ref().map_or(0, |f| i64::try_from(f.bake_ms).unwrap_or(i64::MAX)),
        targets_note,
        group: spec.group.clone().unwrap_or_default(),
        id: spec.id.clone(),
        block: block.as_str().to_string(),
        kind: spec.action.kind().to_string(),
        when: spec.when.clone().unwrap_or_default(),
        timeout_ms: spec.timeout_ms.map_or(0, |t| i64::try_from(t).unwrap_or(i64::MAX)),
        retry_attempts: spec.retry.as_ref().map_or(1, |r| r.attempts),
        idempotent: spec.idempotent,
        ..Default::default()
    };
    if let Some(expr) = &spec.when {
        step.when_result = match baton_core::template::eval_condition(expr, ctx) {
            Ok(v) => v.to_string(),
            Err(e) => format!("decided at run time ({})", e.message),
        };
    }
    match &spec.action {
        Action::Exec(exec) => match baton_core::template::render_exec(exec, ctx) {
            Ok(r) => {
                step.argv = r.argv.iter().map(|a| show_secrets(a)).collect();
                step.env = r.env.iter().map(|(k, v)| (k.clone(), show_secrets(v))).collect();
                step.workdir = r.workdir.as_deref().map(show_secrets).unwrap_or_default();
            }
            Err(e) => {
                step.argv = exec.command.clone();
                step.render_note = format!("rendered at run time: {}", e.message);
            }
        },
        Action::Approval(a) => {
            step.approval_prompt = match &a.message {
                None => format!("Approve step {}?", spec.id),
                Some(m) => baton_core::template::render_text(m, ctx).unwrap_or_else(|_| m.clone()),
            };
            step.approvers = a.approvers.clone();
            step.min_approvals = a.min_approvals;
            step.wait_ms = i64::try_from(a.timeout_ms).unwrap_or(i64::MAX);
        }
        Action::Sleep(sl) => step.wait_ms = i64::try_from(sl.duration_ms).unwrap_or(i64::MAX),
    }
    step
}

/// A rendered input with each secret marker shown as `<secret REFERENCE>`: a plan names
/// secrets, it never holds them.
fn show_secrets(text: &str) -> String {
    use baton_core::template::{Segment, secret_segments};
    match secret_segments(text) {
        Ok(segments) => segments
            .into_iter()
            .map(|s| match s {
                Segment::Text(t) => t.to_string(),
                Segment::Secret(r) => format!("<secret {r}>"),
            })
            .collect(),
        Err(_) => "<a damaged secret marker>".to_string(),
    }
}

/// Longest principal name and decision reason accepted.
const MAX_PRINCIPAL: usize = 128;
const MAX_REASON: usize = 1_024;

impl Api {
    /// Records `principal`'s decision on the approval step `req.run_id` waits on; `via` says
    /// where it came from (`api`, `slack`...). The state machine checks that the principal (or
    /// one of its groups) is an approver and has not decided yet.
    pub(crate) async fn decide(&self, req: pb::DecideRequest, approve: bool, via: &str) -> Result<pb::Run, ApiError> {
        actor(&req.principal, via, true)?;
        check_reason(&req.reason)?;
        self.get_run(&req.run_id)?;
        let groups: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, members)| members.contains(&req.principal))
            .map(|(g, _)| g.clone())
            .collect();
        let op = Op::Decide {
            run_id: req.run_id.clone(),
            step_id: (!req.step_id.is_empty()).then_some(req.step_id),
            principal: req.principal,
            groups,
            approve,
            reason: req.reason,
            via: via.to_string(),
            request_id: uuid::Uuid::new_v4().simple().to_string(),
        };
        self.propose(op).await?;
        self.get_run(&req.run_id)
    }

    /// Checks an operator action's request, proposes the command `op` builds and returns the
    /// run as it is afterwards.
    async fn run_action(
        &self,
        req: &pb::RunActionRequest,
        principal_required: bool,
        op: impl FnOnce(Actor) -> Op,
    ) -> Result<pb::Run, ApiError> {
        check_reason(&req.reason)?;
        let by = actor(&req.principal, "api", principal_required)?;
        self.get_run(&req.run_id)?;
        self.propose(op(by)).await?;
        self.get_run(&req.run_id)
    }
}

/// The principal of a request, checked; `via` is where it came from.
pub(crate) fn actor(principal: &str, via: &str, required: bool) -> Result<Actor, ApiError> {
    if required && principal.trim().is_empty() {
        return Err(ApiError::invalid("principal", "is empty; say who decides"));
    }
    if principal.len() > MAX_PRINCIPAL {
        return Err(ApiError::invalid("principal", format!("is longer than {MAX_PRINCIPAL} bytes")));
    }
    if principal.chars().any(char::is_control) {
        return Err(ApiError::invalid("principal", "contains control characters"));
    }
    Ok(Actor { principal: principal.to_string(), via: via.to_string() })
}

fn check_reason(reason: &str) -> Result<(), ApiError> {
    if reason.len() > MAX_REASON {
        return Err(ApiError::invalid("reason", format!("is longer than {MAX_REASON} bytes")));
    }
    Ok(())
}

#[tonic::async_trait]
impl pb::run_service_server::RunService for Api {
    async fn start(&self, req: Request<pb::StartRunRequest>) -> Result<Response<pb::StartRunResponse>, Status> {
        Ok(Response::new(self.start_run(req.into_inner()).await?))
    }

    async fn get(&self, req: Request<pb::GetRunRequest>) -> Result<Response<pb::Run>, Status> {
        self.read_barrier(&req).await?;
        Ok(Response::new(self.get_run(&req.into_inner().id)?))
    }

    async fn list(&self, req: Request<pb::ListRunsRequest>) -> Result<Response<pb::ListRunsResponse>, Status> {
        self.read_barrier(&req).await?;
        let req = req.into_inner();
        let limit = if req.limit == 0 { 100 } else { req.limit.min(10_000) } as usize;
        let runs = self.node.read(|s| s.runs_newest_first(&req.runbook).take(limit).map(run_to_pb).collect());
        Ok(Response::new(pb::ListRunsResponse { runs }))
    }

    type WatchStream = BoxStream<pb::Run>;

    async fn watch(&self, req: Request<pb::WatchRunRequest>) -> Result<Response<Self::WatchStream>, Status> {
        self.read_barrier(&req).await?;
        let id = req.into_inner().id;
        // Subscribe before reading, so no change between the read and the subscription is lost.
        let mut changes = self.run_changes.subscribe();
        let first = self.get_run(&id)?;
        let (tx, rx) = mpsc::channel(16);
        let api = self.clone();
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            while !is_terminal(&last) {
                let changed = tokio::select! {
                    c = changes.recv() => c,
                    _ = tx.closed() => return,
                };
                match changed {
                    Ok(changed) if changed != id => continue,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return,
                }
                let Ok(now) = api.get_run(&id) else { return };
                if now != last {
                    last = now;
                    if tx.send(Ok(last.clone())).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type LogsStream = BoxStream<pb::LogChunk>;

    async fn logs(&self, req: Request<pb::LogsRequest>) -> Result<Response<Self::LogsStream>, Status> {
        // Output is stored by the node the worker streams it to: the leader. A follower
        // relays the leader's stream.
        if let Some((leader, _)) = self.leader_address()
            && let Some(channel) = self.channel(leader)
        {
            let mut client = pb::run_service_client::RunServiceClient::new(channel);
            let stream = client.logs(req.into_inner()).await?.into_inner();
            return Ok(Response::new(Box::pin(stream)));
        }
        let req = req.into_inner();
        let mut outputs = self.output_changes.subscribe();
        let mut changes = self.run_changes.subscribe();
        self.get_run(&req.run_id)?;
        let (tx, rx) = mpsc::channel(64);
        let api = self.clone();
        tokio::spawn(async move {
            let mut next = req.after_seq.saturating_add(if req.after_seq == 0 { 0 } else { 1 });
            loop {
                // Read whether the run is over *before* draining, so output stored before the
                // run ended is always sent.
                let ended = api.get_run(&req.run_id).map(|r| is_terminal(&r)).unwrap_or(true);
                loop {
                    let chunks = match api.store.read_output(&req.run_id, next, LOG_BATCH) {
                        Ok(c) => c,
                        Err(e) => {
                            let _ = tx.send(Err(Status::internal(format!("reading output: {e}")))).await;
                            return;
                        }
                    };
                    let Some(last) = chunks.last().map(|c| c.seq) else { break };
                    for c in chunks {
                        let chunk = pb::LogChunk {
                            seq: c.seq,
                            step_id: c.step_id,
                            attempt_id: c.attempt,
                            stream: i32::from(c.stream),
                            data: c.data,
                            at_ms: c.at_ms,
                        };
                        if tx.send(Ok(chunk)).await.is_err() {
                            return;
                        }
                    }
                    next = last + 1;
                }
                if !req.follow || ended {
                    return;
                }
                tokio::select! {
                    r = outputs.recv() => if let Err(broadcast::error::RecvError::Closed) = r { return },
                    r = changes.recv() => if let Err(broadcast::error::RecvError::Closed) = r { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn plan(&self, req: Request<pb::StartRunRequest>) -> Result<Response<pb::RunPlan>, Status> {
        self.read_barrier(&req).await?;
        Ok(Response::new(self.plan_run(req.into_inner())?))
    }

    async fn approve(&self, req: Request<pb::DecideRequest>) -> Result<Response<pb::Run>, Status> {
        Ok(Response::new(self.decide(req.into_inner(), true, "api").await?))
    }

    async fn deny(&self, req: Request<pb::DecideRequest>) -> Result<Response<pb::Run>, Status> {
        Ok(Response::new(self.decide(req.into_inner(), false, "api").await?))
    }

    async fn pause(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::Run>, Status> {
        let req = req.into_inner();
        let op = |by| Op::PauseRun { run_id: req.run_id.clone(), reason: req.reason.clone(), by };
        Ok(Response::new(self.run_action(&req, false, op).await?))
    }

    async fn resume(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::Run>, Status> {
        let req = req.into_inner();
        let op = |by| Op::ResumeRun { run_id: req.run_id.clone(), by };
        Ok(Response::new(self.run_action(&req, false, op).await?))
    }

    async fn retry(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::Run>, Status> {
        let req = req.into_inner();
        let from_step = (!req.step_id.is_empty()).then(|| req.step_id.clone());
        let op = |by| Op::RetryRun { run_id: req.run_id.clone(), from_step, by };
        Ok(Response::new(self.run_action(&req, false, op).await?))
    }

    async fn skip(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::Run>, Status> {
        let req = req.into_inner();
        let op = |by| Op::SkipLost { run_id: req.run_id.clone(), reason: req.reason.clone(), by };
        Ok(Response::new(self.run_action(&req, false, op).await?))
    }

    async fn force_fail(&self, req: Request<pb::RunActionRequest>) -> Result<Response<pb::Run>, Status> {
        let req = req.into_inner();
        if req.reason.trim().is_empty() {
            return Err(ApiError::invalid("reason", "is required: say why the run is failed by hand").into());
        }
        let op = |by| Op::ForceFail { run_id: req.run_id.clone(), reason: req.reason.clone(), by };
        Ok(Response::new(self.run_action(&req, false, op).await?))
    }

    async fn cancel(&self, req: Request<pb::CancelRunRequest>) -> Result<Response<pb::Run>, Status> {
        let req = req.into_inner();
        self.get_run(&req.id)?;
        check_reason(&req.reason)?;
        let by = actor(&req.principal, "api", false)?;
        self.propose(Op::CancelRun { run_id: req.id.clone(), reason: req.reason, by }).await?;
        Ok(Response::new(self.get_run(&req.id)?))
    }
}

fn is_terminal(run: &pb::Run) -> bool {
    matches!(
        pb::RunState::try_from(run.state),
        Ok(pb::RunState::Succeeded
            | pb::RunState::Failed
            | pb::RunState::Cancelled
            | pb::RunState::Missed
            | pb::RunState::NeedsAttention)
    )
}
