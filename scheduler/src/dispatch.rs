//! Dispatch: the connected workers and the acting-out of apply's [`Effect`]s.
//!
//! Assignments reach a worker only after they are committed (apply emits `Effect::Dispatch`),
//! and only on the leader. A session registered after an assignment was committed never gets
//! it: the engine reconciled that attempt against what the worker reported on registering.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use baton_core::command::{Command, Op};
use baton_proto::v1 as pb;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::api::now_ms;
use crate::engine::WorkerSlot;
use crate::fsm::{Effect, Observation};
use crate::raft::{NodeHandle, Role};

/// The stream half that carries server messages to one worker.
pub type SessionTx = mpsc::Sender<Result<pb::ServerMessage, Status>>;

struct Session {
    no: u64,
    /// Cancelled to end the session (the worker then reconnects and is reconciled).
    closed: CancellationToken,
    tx: SessionTx,
    capacity: u32,
    prefetch: u32,
    boot: u64,
    labels: BTreeMap<String, String>,
    connected_at_ms: i64,
    /// The applied index when it registered: assignments at or below it are not sent.
    registered_at_index: u64,
    /// The attempts it reported when it registered: held (running or queued) or finished
    /// with a result not yet acknowledged.
    reported: std::collections::HashSet<u64>,
    /// The leader's term when it registered, and whether the worker has said (in a heartbeat)
    /// that it knows it: from then on it refuses assignments of older leaders.
    term: u64,
    confirmed: bool,
    /// Attempts it never received, taken back once it confirmed the term.
    take_back: Vec<u64>,
}

/// What became of an assignment sent to a worker.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// Handed to its session.
    Sent,
    /// No session can take it (not connected, or registered after it was committed).
    NotConnected,
    /// The worker id is connected as another process than the one it was assigned to.
    OtherProcess,
}

/// Workers connected to this node, by id. At most one session per worker id: a newer one
/// replaces the older.
#[derive(Default)]
pub struct Workers {
    sessions: Mutex<HashMap<String, Session>>,
    order: Mutex<Vec<String>>,
    next_no: Mutex<u64>,
    /// Workers that disconnected from this node, and when.
    departed: Mutex<HashMap<String, i64>>,
}

impl Workers {
    /// Registers a session and returns its number (used to unregister only that session).
    pub fn register(
        &self,
        id: &str,
        tx: SessionTx,
        closed: CancellationToken,
        register: &pb::Register,
        now_ms: i64,
        applied_index: u64,
        term: u64,
    ) -> u64 {
        self.departed.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        let no = {
            let mut n = self.next_no.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        let session = Session {
            no,
            closed,
            tx,
            capacity: register.capacity,
            prefetch: register.prefetch,
            boot: register.boot_id,
            labels: register.labels.clone().into_iter().collect(),
            connected_at_ms: now_ms,
            registered_at_index: applied_index,
            reported: register
                .running_attempts
                .iter()
                .copied()
                .chain(register.unacked_results.iter().map(|r| r.attempt_id))
                .collect(),
            term,
            confirmed: false,
            take_back: Vec::new(),
        };
        if let Some(old) = self.sessions.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), session) {
            // A worker has one session: the newer one wins.
            old.closed.cancel();
        }
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        order.retain(|w| w != id);
        order.push(id.to_string());
        no
    }

    /// Removes the session `no` of worker `id` (not a newer one that replaced it).
    pub fn unregister(&self, id: &str, no: u64, now_ms: i64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(id).is_some_and(|s| s.no == no) {
            sessions.remove(id);
            self.order.lock().unwrap_or_else(|e| e.into_inner()).retain(|w| w != id);
            self.departed.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), now_ms);
        }
    }

    /// If worker `worker` has a session that registered before `attempt_id` was applied and
    /// did not report it, the boot id of that session's process: a process that cannot have
    /// received the assignment (it reads one session at a time and reports all it holds).
    pub fn never_received(&self, worker: &str, attempt_id: u64) -> Option<u64> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions
            .get(worker)
            .filter(|s| s.registered_at_index < attempt_id && !s.reported.contains(&attempt_id))
            .map(|s| s.boot)
    }

    /// Takes back attempt `attempt_id` of session `no` of `worker` once the worker confirmed the
    /// leader's term: returns the ids to take back now (this one, if already confirmed).
    pub fn take_back(&self, worker: &str, no: Option<u64>, attempt_id: u64) -> Vec<u64> {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.get_mut(worker) {
            Some(s) if no.is_none_or(|n| n == s.no) => {
                if s.confirmed {
                    vec![attempt_id]
                } else {
                    s.take_back.push(attempt_id);
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }

    /// A heartbeat of session `no` said the worker has seen `term`. Returns the attempts to
    /// take back now, and those to declare lost (a worker that does not say its term).
    pub fn heard_term(&self, worker: &str, no: u64, term: u64) -> (Vec<u64>, Vec<u64>) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(s) = sessions.get_mut(worker).filter(|s| s.no == no) else { return Default::default() };
        if s.confirmed {
            return Default::default();
        }
        if term == 0 {
            // An older worker: it never confirms, so what it did not report stays unknown.
            return (Vec::new(), std::mem::take(&mut s.take_back));
        }
        if term >= s.term {
            s.confirmed = true;
            return (std::mem::take(&mut s.take_back), Vec::new());
        }
        Default::default()
    }

    /// Ends every session (this node stopped leading): the workers reconnect, follow the
    /// leader hint, and are reconciled by the new leader.
    pub fn close_all(&self) {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        for s in sessions.values() {
            s.closed.cancel();
        }
    }

    /// Workers that disconnected, and when (for the engine's grace period).
    pub fn departed(&self) -> HashMap<String, i64> {
        self.departed.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Connected workers for the engine, in registration order.
    pub fn slots(&self) -> Vec<WorkerSlot> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        order
            .iter()
            .filter_map(|id| {
                sessions.get(id).map(|s| WorkerSlot {
                    id: id.clone(),
                    capacity: s.capacity,
                    prefetch: s.prefetch,
                    boot: s.boot,
                    labels: s.labels.clone(),
                })
            })
            .collect()
    }

    /// Connected workers for `ClusterService.Status`.
    pub fn infos(&self, load: &BTreeMap<&str, u32>) -> Vec<pb::WorkerInfo> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<pb::WorkerInfo> = sessions
            .iter()
            .map(|(id, s)| pb::WorkerInfo {
                id: id.clone(),
                labels: s.labels.clone().into_iter().collect(),
                capacity: s.capacity,
                prefetch: s.prefetch,
                running: load.get(id.as_str()).copied().unwrap_or(0),
                connected_at_ms: s.connected_at_ms,
            })
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Sends an assignment committed at `attempt_id` for worker process `boot` (0: any).
    pub fn send_assignment(&self, worker: &str, msg: pb::server_message::Msg, attempt_id: u64, boot: u64) -> Delivery {
        self.deliver(worker, msg, Some(attempt_id), boot)
    }

    /// Sends to a worker; false if it is not connected (or registered after `committed_at`).
    pub fn send(&self, worker: &str, msg: pb::server_message::Msg, committed_at: Option<u64>) -> bool {
        self.deliver(worker, msg, committed_at, 0) == Delivery::Sent
    }

    /// A session that cannot take a message (its buffer is full) is closed: the worker
    /// reconnects and is reconciled, instead of silently missing an assignment or a cancel.
    fn deliver(&self, worker: &str, msg: pb::server_message::Msg, committed_at: Option<u64>, boot: u64) -> Delivery {
        let (tx, closed) = {
            let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            match sessions.get(worker) {
                Some(s) if boot != 0 && s.boot != 0 && s.boot != boot => return Delivery::OtherProcess,
                Some(s) if committed_at.is_none_or(|i| i > s.registered_at_index) => (s.tx.clone(), s.closed.clone()),
                _ => return Delivery::NotConnected,
            }
        };
        if tx.try_send(Ok(pb::ServerMessage { msg: Some(msg) })).is_ok() {
            Delivery::Sent
        } else {
            tracing::warn!(worker, "worker session is not keeping up; closing it");
            closed.cancel();
            Delivery::NotConnected
        }
    }
}

/// Acts out apply's effects until the node stops.
pub async fn run_effects(
    mut rx: mpsc::UnboundedReceiver<Effect>,
    node: NodeHandle,
    workers: std::sync::Arc<Workers>,
    run_changes: broadcast::Sender<String>,
) {
    while let Some(effect) = rx.recv().await {
        let status = node.status();
        let leader = status.role == Role::Leader;
        match effect {
            Effect::RunChanged(id) => {
                let _ = run_changes.send(id);
            }
            // Only assignments this leader made in its own term are sent: one committed under an
            // older leader may already have reached its worker, and is reconciled instead.
            // An assignment of an earlier term, applied here after its worker registered with
            // this leader and not reported then, was never delivered (its leader lost office
            // before sending it) and never will be: it is taken back, or declared lost when the
            // worker process it was meant for is not the one that registered.
            Effect::Dispatch(a) if leader && a.fence.term < status.term => {
                let Some(boot) = workers.never_received(&a.worker, a.attempt_id) else { continue };
                let reason = format!("assigned in term {} and never delivered to worker {}", a.fence.term, a.worker);
                // The process it was assigned to is the one that registered without it: it
                // never ran, and is assigned again. Another process may have run it: lost.
                let ops: Vec<Op> = if boot != 0 && boot == a.worker_boot {
                    // Once the worker confirmed this leader's term (no older leader can still
                    // hand it over).
                    workers
                        .take_back(&a.worker, None, a.attempt_id)
                        .into_iter()
                        .map(|attempt_id| Op::AttemptUndelivered { attempt_id, reason: reason.clone() })
                        .collect()
                } else {
                    vec![Op::AttemptLost { attempt_id: a.attempt_id, reason }]
                };
                for op in ops {
                    let node = node.clone();
                    tokio::spawn(async move {
                        if let Err(e) = node.propose(&Command { at_ms: now_ms(), op }).await {
                            tracing::debug!("resolving an undelivered attempt: {e}");
                        }
                    });
                }
            }
            Effect::Dispatch(a) if leader && a.fence.term == status.term => {
                let id = a.attempt_id;
                let worker = a.worker.clone();
                let msg = pb::server_message::Msg::Assign(pb::Assignment {
                    attempt_id: a.attempt_id,
                    run_id: a.run_id,
                    step_id: a.step_id,
                    fence: Some(pb::Fence { term: a.fence.term, index: a.fence.index }),
                    argv: a.argv,
                    env: a.env.into_iter().collect(),
                    workdir: a.workdir.unwrap_or_default(),
                    timeout_ms: a.timeout_ms.unwrap_or(0),
                });
                match workers.send_assignment(&worker, msg, id, a.worker_boot) {
                    Delivery::Sent => {}
                    // The engine declares it lost once the worker's absence is confirmed.
                    Delivery::NotConnected => {
                        tracing::warn!(attempt = id, worker, "assignment committed but its worker is not connected")
                    }
                    // The worker restarted (or another process uses its id) since it was chosen:
                    // only this leader sends this term's assignments, and it did not, so the
                    // attempt never ran anywhere. Assigned again.
                    Delivery::OtherProcess => {
                        let node = node.clone();
                        let reason = format!("worker {worker} is now another process; it was never sent");
                        let op = Op::AttemptUndelivered { attempt_id: id, reason };
                        tokio::spawn(async move {
                            if let Err(e) = node.propose(&Command { at_ms: now_ms(), op }).await {
                                tracing::debug!("taking back an unsent attempt: {e}");
                            }
                        });
                    }
                }
            }
            Effect::CancelAttempt { worker, attempt_id } if leader => {
                workers.send(&worker, pb::server_message::Msg::Cancel(pb::CancelAttempt { attempt_id }), None);
            }
            Effect::AckResult { worker, attempt_id } if leader => {
                workers.send(&worker, pb::server_message::Msg::Ack(pb::ResultAck { attempt_id }), None);
            }
            Effect::Observe(Observation::Fired { tick_ms }) => {
                crate::metrics::FIRE_SKEW.observe_ms((now_ms() - tick_ms) as f64);
            }
            Effect::Observe(Observation::RunStarted { after_ms }) => {
                crate::metrics::TRIGGER_TO_START.observe_ms(after_ms as f64);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn register(workers: &Workers, boot: u64, term: u64) -> (u64, mpsc::Receiver<Result<pb::ServerMessage, Status>>) {
        let (tx, rx) = mpsc::channel(8);
        let r = pb::Register { worker_id: "w".into(), capacity: 1, boot_id: boot, ..Default::default() };
        (workers.register("w", tx, CancellationToken::new(), &r, 0, 10, term), rx)
    }

    #[test]
    fn attempts_are_taken_back_only_after_the_worker_confirms_the_term() {
        let workers = Workers::default();
        let (no, _rx) = register(&workers, 7, 5);
        // Held: an older leader could still deliver it to a worker that has not seen term 5.
        assert!(workers.take_back("w", Some(no), 11).is_empty());
        assert_eq!(workers.heard_term("w", no, 4), (vec![], vec![]), "an older term confirms nothing");
        assert_eq!(workers.heard_term("w", no + 1, 5), (vec![], vec![]), "another session's heartbeat");
        assert_eq!(workers.heard_term("w", no, 5), (vec![11], vec![]));
        // Confirmed: the next one goes at once.
        assert_eq!(workers.take_back("w", Some(no), 12), vec![12]);
        assert_eq!(workers.heard_term("w", no, 5), (vec![], vec![]), "once");

        // A worker that never says its term: what it did not report stays unknown (lost).
        let (no, _rx) = register(&workers, 8, 6);
        assert!(workers.take_back("w", None, 13).is_empty());
        assert_eq!(workers.heard_term("w", no, 0), (vec![], vec![13]));
    }

    #[test]
    fn an_assignment_for_another_process_of_the_worker_is_not_sent() {
        let workers = Workers::default();
        let (_, mut rx) = register(&workers, 7, 5);
        let msg = || pb::server_message::Msg::Ack(pb::ResultAck { attempt_id: 1 });
        assert_eq!(workers.send_assignment("w", msg(), 11, 8), Delivery::OtherProcess);
        assert!(rx.try_recv().is_err(), "nothing was sent");
        assert_eq!(workers.send_assignment("w", msg(), 11, 7), Delivery::Sent);
        assert_eq!(workers.send_assignment("w", msg(), 12, 0), Delivery::Sent, "boot unknown: any process");
        assert_eq!(workers.send_assignment("w", msg(), 9, 7), Delivery::NotConnected, "committed before it registered");
        assert_eq!(workers.send_assignment("x", msg(), 11, 7), Delivery::NotConnected);
    }
}
