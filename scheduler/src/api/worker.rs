//! `WorkerService.Session`: one bidirectional stream per worker.
//!
//! The worker registers (id, labels, capacity, the attempts it runs and the results not yet
//! acknowledged); the leader reconciles that report with the replicated state, then streams
//! assignments and cancellations to it. Results become `AttemptFinished` commands; the
//! acknowledgement is sent only after the result is committed.

use std::pin::Pin;
use std::time::Duration;

use baton_core::command::Op;
use baton_proto::attempt_state_from_pb;
use baton_proto::v1 as pb;
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::{Api, ApiError, now_ms};
use crate::engine::{ResultRoute, holds, reconcile, route_result, to_stop};
use crate::raft::Role;
use crate::store::OutputChunk;

/// Largest capacity a worker may declare.
const MAX_CAPACITY: u32 = 1024;
/// How often a worker should send a heartbeat.
pub const HEARTBEAT_INTERVAL_MS: u32 = 2_000;
/// Largest output chunk accepted from a worker.
const MAX_CHUNK_BYTES: usize = 256 * 1024;

fn result_op(r: pb::AttemptResult) -> Result<Op, ApiError> {
    let state = attempt_state_from_pb(r.state).map_err(|e| ApiError::invalid("result.state", e.to_string()))?;
    if !state.is_terminal() || state == baton_core::run::AttemptState::Lost {
        return Err(ApiError::invalid("result.state", format!("{} is not a result", state.as_str())));
    }
    Ok(Op::AttemptFinished {
        attempt_id: r.attempt_id,
        state,
        exit_code: r.exit_code,
        stdout_tail: r.stdout_tail,
        stderr_tail: r.stderr_tail,
        outputs: r.outputs.into_iter().collect(),
        error: (!r.error.is_empty()).then_some(r.error),
    })
}

fn validate_register(r: &pb::Register) -> Result<(), ApiError> {
    let id_ok = !r.worker_id.is_empty()
        && r.worker_id.len() <= 128
        && r.worker_id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c));
    if !id_ok {
        return Err(ApiError::invalid(
            "register.worker_id",
            "must be 1-128 characters of letters, digits, '-', '_', '.', ':'",
        ));
    }
    if r.capacity == 0 || r.capacity > MAX_CAPACITY {
        return Err(ApiError::invalid("register.capacity", format!("must be between 1 and {MAX_CAPACITY}")));
    }
    if r.prefetch > MAX_CAPACITY {
        return Err(ApiError::invalid("register.prefetch", format!("must be at most {MAX_CAPACITY}")));
    }
    Ok(())
}

impl Api {
    /// Proposes and logs failures; used for worker reports, which have no caller to answer.
    async fn propose_report(&self, op: Op) {
        let name = op.name();
        if let Err(e) = self.propose(op).await {
            tracing::warn!(op = name, "worker report not committed: {e}");
        }
    }

    async fn handle_session(&self, mut inbound: Streaming<pb::WorkerMessage>, tx: crate::dispatch::SessionTx) {
        let register = match inbound.next().await {
            Some(Ok(pb::WorkerMessage { msg: Some(pb::worker_message::Msg::Register(r)) })) => r,
            Some(Ok(_)) => {
                let _ = tx.send(Err(ApiError::invalid("msg", "the first message must be `register`").into())).await;
                return;
            }
            _ => return,
        };
        if let Err(e) = validate_register(&register) {
            let _ = tx.send(Err(e.into())).await;
            return;
        }
        let status = self.node.status();
        if status.role != Role::Leader {
            // Workers keep their session with the leader; the hint tells them where it is.
            let mut err: Status = ApiError::NotLeader { leader_hint: status.leader_id }.into();
            if let Some(addr) = self.address_of(status.leader_id)
                && let Ok(v) = addr.parse()
            {
                err.metadata_mut().insert("baton-leader-addr", v);
            }
            let _ = tx.send(Err(err)).await;
            return;
        }
        let worker = register.worker_id.clone();
        let reported: Vec<u64> = register.unacked_results.iter().map(|r| r.attempt_id).collect();
        // Register and reconcile under one read of the state: apply cannot interleave, so every
        // assignment is either in the reconciled state or committed after the registration.
        let closed = CancellationToken::new();
        let (no, lost, stop) = self.node.read(|s| {
            let no = self.workers.register(
                &worker,
                tx.clone(),
                closed.clone(),
                &register,
                now_ms(),
                s.applied_index,
                status.term,
            );
            (
                no,
                reconcile(s, &worker, register.boot_id, &register.running_attempts, &reported),
                to_stop(s, &worker, &register.running_attempts),
            )
        });
        tracing::info!(
            worker,
            capacity = register.capacity,
            prefetch = register.prefetch,
            running = register.running_attempts.len(),
            "worker registered"
        );
        let registered = pb::Registered {
            worker_id: worker.clone(),
            heartbeat_interval_ms: HEARTBEAT_INTERVAL_MS,
            term: status.term,
        };
        if tx.send(Ok(pb::ServerMessage { msg: Some(pb::server_message::Msg::Registered(registered)) })).await.is_err()
        {
            self.workers.unregister(&worker, no, now_ms());
            return;
        }
        for attempt_id in stop {
            // Running, but already resolved (lost) or its run is being cancelled: stop it.
            let msg = pb::server_message::Msg::Cancel(pb::CancelAttempt { attempt_id });
            let _ = tx.send(Ok(pb::ServerMessage { msg: Some(msg) })).await;
        }
        for op in lost {
            match op {
                // Taken back once the worker confirms this leader's term (its next heartbeat).
                Op::AttemptUndelivered { attempt_id, .. } => {
                    self.workers.take_back(&worker, Some(no), attempt_id);
                }
                op => self.propose_report(op).await,
            }
        }
        for r in register.unacked_results {
            if let Some(op) = self.take_result(&worker, r, &tx).await {
                self.propose_report(op).await;
            }
        }
        // A worker that sends nothing (not even a heartbeat) for this long is gone.
        let silence = Duration::from_millis(u64::from(HEARTBEAT_INTERVAL_MS) * 3);
        loop {
            let next = tokio::select! {
                _ = closed.cancelled() => {
                    tracing::warn!(worker, "closing the worker session");
                    break;
                }
                next = tokio::time::timeout(silence, inbound.next()) => next,
            };
            let msg = match next {
                Err(_) => {
                    tracing::warn!(worker, "no message from the worker for {silence:?}; dropping its session");
                    break;
                }
                Ok(None) => break,
                Ok(Some(Ok(pb::WorkerMessage { msg: Some(m) }))) => m,
                Ok(Some(Ok(_))) => continue,
                Ok(Some(Err(e))) => {
                    tracing::info!(worker, "worker stream ended: {e}");
                    break;
                }
            };
            match msg {
                pb::worker_message::Msg::Heartbeat(h) => {
                    let (back, lost) = self.workers.heard_term(&worker, no, h.term);
                    for attempt_id in back {
                        let reason = format!("worker {worker} registered again without it: it never received it");
                        self.propose_report(Op::AttemptUndelivered { attempt_id, reason }).await;
                    }
                    for attempt_id in lost {
                        let reason =
                            format!("worker {worker} reconnected without it (it restarted or never received it)");
                        self.propose_report(Op::AttemptLost { attempt_id, reason }).await;
                    }
                }
                pb::worker_message::Msg::Register(_) => {
                    tracing::warn!(worker, "ignoring a second register on one session");
                }
                pb::worker_message::Msg::Started(s) if !self.holds(&worker, s.attempt_id) => {
                    tracing::warn!(
                        worker,
                        attempt = s.attempt_id,
                        "ignoring a start report for an attempt this worker does not hold"
                    );
                }
                pb::worker_message::Msg::Started(s) => {
                    let api = self.clone();
                    tokio::spawn(
                        async move { api.propose_report(Op::AttemptStarted { attempt_id: s.attempt_id }).await },
                    );
                }
                pb::worker_message::Msg::Output(o) => self.store_output(&worker, o),
                pb::worker_message::Msg::Result(r) => {
                    if let Some(op) = self.take_result(&worker, r, &tx).await {
                        // Output sent before the result must be durable before the result commits.
                        if let Err(e) = self.store.flush_outputs() {
                            tracing::error!("flushing output: {e}");
                        }
                        let api = self.clone();
                        tokio::spawn(async move { api.propose_report(op).await });
                    }
                }
            }
        }
        self.workers.unregister(&worker, no, now_ms());
        tracing::info!(worker, "worker disconnected");
    }

    /// Acts on a result `worker` reported, as [`crate::engine::route_result`] says:
    /// acknowledges it at once, or ignores it, or returns the command that commits it.
    async fn take_result(&self, worker: &str, r: pb::AttemptResult, tx: &crate::dispatch::SessionTx) -> Option<Op> {
        let attempt_id = r.attempt_id;
        match self.node.read(|s| route_result(s, worker, attempt_id)) {
            ResultRoute::Ack => {
                // Resolved or taken back: nothing to record; the worker stops sending it.
                let ack = pb::server_message::Msg::Ack(pb::ResultAck { attempt_id });
                let _ = tx.send(Ok(pb::ServerMessage { msg: Some(ack) })).await;
                None
            }
            ResultRoute::Ignore => {
                tracing::warn!(
                    worker,
                    attempt = attempt_id,
                    "ignoring a result for an attempt assigned to another worker"
                );
                None
            }
            ResultRoute::Propose => {
                result_op(r).map_err(|e| tracing::warn!(worker, attempt = attempt_id, "bad result: {e}")).ok()
            }
        }
    }

    /// The attempt is active and assigned to `worker`.
    fn holds(&self, worker: &str, attempt_id: u64) -> bool {
        self.node.read(|s| holds(s, worker, attempt_id))
    }

    fn store_output(&self, worker: &str, o: pb::OutputChunk) {
        if o.data.len() > MAX_CHUNK_BYTES {
            tracing::warn!(worker, attempt = o.attempt_id, "dropping an oversized output chunk");
            return;
        }
        let stream = match pb::Stream::try_from(o.stream) {
            Ok(pb::Stream::Stdout) => 1,
            Ok(pb::Stream::Stderr) => 2,
            _ => return,
        };
        // Only output of an attempt this worker holds is kept.
        let known = self.node.read(|s| {
            s.active_attempts.get(&o.attempt_id).is_some_and(|(run_id, si)| {
                run_id == &o.run_id
                    && s.runs[run_id].steps[*si].id == o.step_id
                    && s.runs[run_id].steps[*si].active_attempt().is_some_and(|a| a.worker == worker)
            })
        });
        if !known {
            return;
        }
        // Attempt ids grow with every assignment, so (attempt, chunk) orders a run's output.
        let chunk = OutputChunk {
            seq: (o.attempt_id << 32) | u64::from(o.chunk_no),
            step_id: o.step_id,
            attempt: o.attempt_id,
            stream,
            data: o.data,
            at_ms: o.at_ms,
        };
        match self.store.append_output(&o.run_id, &chunk) {
            Ok(()) => {
                let _ = self.output_changes.send(o.run_id);
            }
            Err(e) => tracing::error!("storing output: {e}"),
        }
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for Api {
    type SessionStream = BoxStream<pb::ServerMessage>;

    async fn session(
        &self,
        req: Request<Streaming<pb::WorkerMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let api = self.clone();
        tokio::spawn(async move { api.handle_session(inbound, tx).await });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
