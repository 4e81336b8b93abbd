//! The API: gRPC services (runbooks, schedules, runs, workers, cluster) and the HTTP endpoints.
//!
//! Handlers validate input, turn it into a [`Command`], propose it, and answer from the applied
//! state. They never change state any other way. Wire types stop here: handlers convert to and
//! from domain types through `baton_proto`.

mod error;
pub mod hooks;
pub mod http;
mod peer;
mod runs;
mod worker;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use baton_core::command::{Command, Op};
use baton_core::runbook::ParamKind;
use baton_core::{Document, parse_document};
use baton_proto::v1 as pb;
use tokio::sync::broadcast;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

pub use error::ApiError;

use crate::dispatch::Workers;
use crate::fsm::Reply;
use crate::raft::{NodeHandle, ProposeError, Role};
use crate::store::Store;

/// Largest runbook or schedule document accepted.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// Shared by every service: the node, the store and the connected workers.
#[derive(Clone)]
pub struct Api {
    pub(crate) node: NodeHandle,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) workers: Arc<Workers>,
    /// Run ids, sent after every change to that run.
    pub(crate) run_changes: broadcast::Sender<String>,
    /// Run ids, sent after new output of that run was stored.
    pub(crate) output_changes: broadcast::Sender<String>,
    /// gRPC address of every member, this node included.
    pub(crate) addresses: Arc<BTreeMap<u64, String>>,
    /// Lazily connected channels to the other members, made on first use.
    pub(crate) channels: Arc<std::sync::Mutex<BTreeMap<u64, Channel>>>,
    /// Approver groups from the configuration: group -> principals.
    pub(crate) groups: Arc<BTreeMap<String, Vec<String>>>,
    /// The chat-ops and Alertmanager hooks: their configuration and what they remember.
    pub(crate) hooks: Arc<hooks::Hooks>,
}

/// How long a request waits for the cluster (a leader, a commit, a read barrier).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A new run id: `r-` and 16 random hex digits.
pub fn new_run_id() -> String {
    format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..16])
}

/// Wall-clock time in unix ms: read here, at the edge, and stamped into commands.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Api {
    /// Proposes `op` and waits until it is applied here. On a follower the command goes to
    /// the leader (which stamps its time), and the answer waits until this node has applied
    /// it too, so the caller reads its own write from the node it asked.
    ///
    /// A proposal lost to a leader change is proposed again (to the new leader) until the
    /// request's deadline: apply ignores a command it has already applied (a start carries its
    /// run id, fires their tick, results their attempt), so a repeat cannot double anything.
    pub async fn propose(&self, op: Op) -> Result<Reply, ApiError> {
        let cmd = Command { at_ms: now_ms(), op };
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        let reply = loop {
            match tokio::time::timeout_at(deadline, self.propose_anywhere(&cmd)).await {
                Ok(Ok(reply)) => break reply,
                Ok(Err(e @ (ApiError::NotLeader { .. } | ApiError::Unavailable(_))))
                    if tokio::time::Instant::now() < deadline =>
                {
                    tracing::info!(op = cmd.op.name(), "proposing again: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(ApiError::Unavailable("the cluster did not commit the request in time".into())),
            }
        };
        match reply {
            Reply::Rejected(why) => Err(ApiError::Rejected(why)),
            other => Ok(other),
        }
    }

    /// Waits (bounded) until some node is known to lead, e.g. during an election.
    pub async fn wait_for_leader(&self) -> Result<u64, ApiError> {
        let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
        loop {
            let leader = self.node.status().leader_id;
            if leader != 0 {
                return Ok(leader);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Unavailable("no leader was elected in time; is a quorum of members up?".into()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn propose_anywhere(&self, cmd: &Command) -> Result<Reply, ApiError> {
        self.wait_for_leader().await?;
        let status = self.node.status();
        if status.role == Role::Leader {
            match self.node.propose(cmd).await {
                Ok((reply, _)) => return Ok(reply),
                Err(ProposeError::NotLeader { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let leader = self.node.status().leader_id;
        let Some(channel) = self.channel(leader) else {
            return Err(ApiError::Unavailable("no leader is known yet; retry shortly".into()));
        };
        let mut client = pb::peer_service_client::PeerServiceClient::new(channel);
        let resp = client
            .propose(pb::ProposeRequest { command: cmd.encode(), from: status.id })
            .await
            .map_err(|s| ApiError::Unavailable(format!("forwarding to leader {leader}: {}", s.message())))?
            .into_inner();
        let reply: Reply = serde_json::from_slice(&resp.reply)
            .map_err(|e| ApiError::Unavailable(format!("leader {leader} sent an unreadable reply: {e}")))?;
        self.node.wait_applied(resp.index, REQUEST_TIMEOUT).await;
        Ok(reply)
    }

    /// Makes the next read linearizable (ReadIndex through the leader), unless the request
    /// asks for a stale read with metadata `baton-read: stale`.
    pub async fn read_barrier<T>(&self, req: &Request<T>) -> Result<(), ApiError> {
        if req.metadata().get("baton-read").is_some_and(|v| v == "stale") {
            return Ok(());
        }
        match tokio::time::timeout(REQUEST_TIMEOUT, self.node.read_barrier()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(ApiError::Unavailable(format!("cannot confirm a linearizable read: {e}"))),
            Err(_) => {
                Err(ApiError::Unavailable("no quorum confirmed the read in time; retry, or read with --stale".into()))
            }
        }
    }

    /// The leader's address, when this node is not the leader and knows it.
    pub fn leader_address(&self) -> Option<(u64, String)> {
        let st = self.node.status();
        if st.role == Role::Leader || st.leader_id == 0 {
            return None;
        }
        self.address_of(st.leader_id).map(|a| (st.leader_id, a))
    }

    /// A member's gRPC address: from this node's configuration, or replicated when it joined.
    pub fn address_of(&self, id: u64) -> Option<String> {
        self.addresses.get(&id).cloned().or_else(|| self.node.read(|s| s.members.get(&id).cloned()))
    }

    /// A (lazily connected) channel to another member.
    pub fn channel(&self, id: u64) -> Option<Channel> {
        if id == self.node.status().id {
            return None;
        }
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = channels.get(&id) {
            return Some(c.clone());
        }
        let addr = self.address_of(id)?;
        let url = if addr.contains("://") { addr } else { format!("http://{addr}") };
        let channel =
            tonic::transport::Endpoint::from_shared(url).ok()?.connect_timeout(Duration::from_secs(2)).connect_lazy();
        channels.insert(id, channel.clone());
        Some(channel)
    }

    /// Validates and applies one YAML document (runbook or schedule).
    pub async fn apply_document(&self, file_name: &str, source: &str) -> Result<pb::ApplyResponse, ApiError> {
        if source.len() > MAX_DOCUMENT_BYTES {
            return Err(ApiError::invalid(
                "source",
                format!("document is {} bytes; the limit is {MAX_DOCUMENT_BYTES} bytes", source.len()),
            ));
        }
        let file = if file_name.is_empty() { "<request>" } else { file_name };
        let doc = parse_document(file, source).map_err(|e| ApiError::Invalid {
            message: format!("{file} is not a valid document:\n{e}"),
            violations: e
                .diagnostics
                .iter()
                .map(|d| (d.field.clone(), format!("{}:{}:{}: {}", d.file, d.line, d.column, d.message)))
                .collect(),
        })?;
        let (kind, name, op) = match doc {
            Document::Runbook(rb) => ("runbook", rb.name.clone(), Op::ApplyRunbook { runbook: rb }),
            Document::Schedule(s) => ("schedule", s.name.clone(), Op::ApplySchedule { schedule: s }),
        };
        match self.propose(op).await? {
            Reply::Applied { version, changed } => Ok(pb::ApplyResponse { kind: kind.into(), name, version, changed }),
            other => Err(ApiError::Unavailable(format!("unexpected reply {other:?}"))),
        }
    }
}

fn runbook_to_pb(entry: &crate::fsm::RunbookEntry) -> pb::Runbook {
    version_to_pb(entry, entry.current())
}

/// A version of a runbook, found by its hash or a unique prefix.
fn find_version<'a>(entry: &'a crate::fsm::RunbookEntry, version: &str) -> Result<&'a baton_core::Runbook, ApiError> {
    if let Some(rb) = entry.versions.get(version) {
        return Ok(rb);
    }
    let matches: Vec<&baton_core::Runbook> =
        entry.versions.iter().filter(|(v, _)| v.starts_with(version)).map(|(_, rb)| rb).collect();
    match matches[..] {
        [one] => Ok(one),
        [] => Err(ApiError::NotFound(format!("runbook {} has no version {version:?}", entry.current().name))),
        _ => Err(ApiError::invalid("version", format!("{version:?} matches several versions; give more of the hash"))),
    }
}

fn version_to_pb(entry: &crate::fsm::RunbookEntry, rb: &baton_core::Runbook) -> pb::Runbook {
    let applied_at_ms =
        entry.history.iter().rev().find(|(v, _)| *v == rb.version).map_or(entry.applied_at_ms, |(_, t)| *t);
    pb::Runbook {
        name: rb.name.clone(),
        description: rb.description.clone(),
        version: rb.version.clone(),
        source: rb.source.clone(),
        step_ids: rb.steps.iter().map(|s| s.id.clone()).collect(),
        params: rb
            .params
            .iter()
            .map(|p| pb::ParamInfo {
                name: p.name.clone(),
                kind: match &p.kind {
                    ParamKind::String => "string".into(),
                    ParamKind::Int => "int".into(),
                    ParamKind::Bool => "bool".into(),
                    ParamKind::Enum { values } => format!("enum({})", values.join("|")),
                    ParamKind::List => "list".into(),
                    ParamKind::Float => "float".into(),
                    ParamKind::Map => "map".into(),
                    ParamKind::Secret => "secret".into(),
                },
                required: p.required,
                default_json: p.default.as_ref().map(|d| d.to_string()).unwrap_or_default(),
                description: p.description.clone(),
            })
            .collect(),
        applied_at_ms,
    }
}

#[tonic::async_trait]
impl pb::runbook_service_server::RunbookService for Api {
    async fn apply(&self, req: Request<pb::ApplyRequest>) -> Result<Response<pb::ApplyResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(self.apply_document(&req.file_name, &req.source).await?))
    }

    async fn get(&self, req: Request<pb::GetRunbookRequest>) -> Result<Response<pb::Runbook>, Status> {
        self.read_barrier(&req).await?;
        let req = req.into_inner();
        let found = self.node.read(|s| {
            let entry = s
                .runbooks
                .get(&req.name)
                .ok_or_else(|| ApiError::NotFound(format!("runbook {:?} does not exist", req.name)))?;
            if req.version.is_empty() {
                return Ok(runbook_to_pb(entry));
            }
            find_version(entry, &req.version).map(|rb| version_to_pb(entry, rb))
        });
        Ok(Response::new(found?))
    }

    async fn versions(
        &self,
        req: Request<pb::RunbookVersionsRequest>,
    ) -> Result<Response<pb::RunbookVersionsResponse>, Status> {
        self.read_barrier(&req).await?;
        let name = req.into_inner().name;
        let versions = self.node.read(|s| {
            let entry =
                s.runbooks.get(&name).ok_or_else(|| ApiError::NotFound(format!("runbook {name:?} does not exist")))?;
            Ok::<_, ApiError>(
                entry
                    .history
                    .iter()
                    .map(|(v, at)| pb::RunbookVersion {
                        version: v.clone(),
                        applied_at_ms: *at,
                        current: *v == entry.current,
                    })
                    .collect(),
            )
        })?;
        Ok(Response::new(pb::RunbookVersionsResponse { versions }))
    }

    async fn list(&self, req: Request<pb::ListRunbooksRequest>) -> Result<Response<pb::ListRunbooksResponse>, Status> {
        self.read_barrier(&req).await?;
        let runbooks = self.node.read(|s| s.runbooks.values().map(runbook_to_pb).collect());
        Ok(Response::new(pb::ListRunbooksResponse { runbooks }))
    }
}

#[tonic::async_trait]
impl pb::schedule_service_server::ScheduleService for Api {
    async fn list(
        &self,
        req: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        self.read_barrier(&req).await?;
        let now = now_ms();
        let schedules = self.node.read(|s| s.schedules.values().map(|st| schedule_to_pb(st, now)).collect());
        Ok(Response::new(pb::ListSchedulesResponse { schedules }))
    }

    async fn trigger(&self, req: Request<pb::TriggerScheduleRequest>) -> Result<Response<pb::Run>, Status> {
        let req = req.into_inner();
        let by = runs::actor(&req.principal, "api", false)?;
        self.schedule_exists(&req.name)?;
        let run_id = crate::api::new_run_id();
        let op = Op::TriggerSchedule { schedule: req.name, run_id, by };
        match self.propose(op).await? {
            Reply::Run { run_id, .. } => Ok(Response::new(self.get_run(&run_id)?)),
            other => Err(ApiError::Unavailable(format!("unexpected reply {other:?}")).into()),
        }
    }

    async fn backfill(&self, req: Request<pb::BackfillRequest>) -> Result<Response<pb::BackfillResponse>, Status> {
        let req = req.into_inner();
        let by = runs::actor(&req.principal, "api", false)?;
        self.schedule_exists(&req.name)?;
        if req.from_ms > req.to_ms {
            return Err(ApiError::invalid("from_ms", "is after to_ms").into());
        }
        if req.to_ms > now_ms() {
            return Err(ApiError::invalid("to_ms", "is in the future; a backfill runs past ticks only").into());
        }
        let ticks: Vec<i64> = self.node.read(|s| {
            s.schedules[&req.name]
                .schedule
                .fire_times(req.from_ms.saturating_sub(1), crate::fsm::MAX_BACKFILL + 1)
                .into_iter()
                .take_while(|t| *t <= req.to_ms)
                .collect()
        });
        if ticks.len() > crate::fsm::MAX_BACKFILL {
            let limit = crate::fsm::MAX_BACKFILL;
            return Err(
                ApiError::invalid("to_ms", format!("the range has more than {limit} ticks; backfill less")).into()
            );
        }
        // One command per tick, oldest first: each is checked and deduplicated on its own, and a
        // backfill that is interrupted can simply be asked for again.
        let mut run_ids = Vec::new();
        let mut existing = 0;
        for tick_ms in ticks {
            let op = Op::Backfill { schedule: req.name.clone(), tick_ms, by: by.clone() };
            match self.propose(op).await? {
                Reply::Run { deduplicated: true, .. } => existing += 1,
                Reply::Run { run_id, .. } => run_ids.push(run_id),
                other => return Err(ApiError::Unavailable(format!("unexpected reply {other:?}")).into()),
            }
        }
        Ok(Response::new(pb::BackfillResponse { run_ids, existing }))
    }

    async fn pause(&self, req: Request<pb::PauseScheduleRequest>) -> Result<Response<pb::Schedule>, Status> {
        Ok(Response::new(self.pause_schedule(req.into_inner(), true).await?))
    }

    async fn unpause(&self, req: Request<pb::PauseScheduleRequest>) -> Result<Response<pb::Schedule>, Status> {
        Ok(Response::new(self.pause_schedule(req.into_inner(), false).await?))
    }
}

impl Api {
    fn schedule_exists(&self, name: &str) -> Result<(), ApiError> {
        self.node.read(|s| {
            if s.schedules.contains_key(name) {
                return Ok(());
            }
            let known: Vec<&str> = s.schedules.keys().map(String::as_str).collect();
            Err(ApiError::NotFound(format!(
                "schedule {name:?} does not exist (known: {})",
                if known.is_empty() { "none".to_string() } else { known.join(", ") }
            )))
        })
    }

    async fn pause_schedule(&self, req: pb::PauseScheduleRequest, paused: bool) -> Result<pb::Schedule, ApiError> {
        let by = runs::actor(&req.principal, "api", false)?;
        if req.note.len() > 1_024 {
            return Err(ApiError::invalid("note", "is longer than 1024 bytes"));
        }
        self.schedule_exists(&req.name)?;
        let op = Op::PauseSchedule { schedule: req.name.clone(), paused, note: req.note, by };
        self.propose(op).await?;
        let now = now_ms();
        Ok(self.node.read(|s| schedule_to_pb(&s.schedules[&req.name], now)))
    }
}

fn schedule_to_pb(st: &crate::fsm::ScheduleState, now: i64) -> pb::Schedule {
    let s = &st.schedule;
    pb::Schedule {
        name: s.name.clone(),
        runbook: s.runbook.clone(),
        cron: s.cron.clone(),
        timezone: s.timezone.clone(),
        params_json: serde_json::to_string(&s.params).unwrap_or_default(),
        next_fire_at_ms: st.next_fire_at_ms.unwrap_or(0),
        last_tick_ms: st.last_tick_ms.unwrap_or(0),
        runs_fired: st.runs_fired,
        ticks_missed: st.ticks_missed,
        description: s.description.clone(),
        overlap: s.overlap.as_str().to_string(),
        catch_up: s.catch_up.policy.as_str().to_string(),
        catch_up_window_ms: i64::try_from(s.catch_up.window_ms).unwrap_or(i64::MAX),
        jitter_ms: i64::try_from(s.jitter_ms).unwrap_or(i64::MAX),
        paused: st.paused,
        pause_note: st.pause_note.clone(),
        blackouts: s
            .blackouts
            .iter()
            .map(|b| {
                let duration = baton_core::duration::format_duration(b.duration_ms);
                format!("{} for {duration} ({})", b.cron, b.action.as_str())
            })
            .collect(),
        blackout_until_ms: s.blackout_at(now).map_or(0, |(_, until)| until),
    }
}

#[tonic::async_trait]
impl pb::lock_service_server::LockService for Api {
    async fn list(&self, req: Request<pb::ListLocksRequest>) -> Result<Response<pb::ListLocksResponse>, Status> {
        self.read_barrier(&req).await?;
        let locks = self.node.read(|s| {
            let mut locks: BTreeMap<String, pb::LockInfo> = s
                .locks
                .iter()
                .map(|(name, (holder, since))| {
                    let info =
                        pb::LockInfo { name: name.clone(), holder: holder.clone(), since_ms: *since, waiting: vec![] };
                    (name.clone(), info)
                })
                .collect();
            let mut waiting: Vec<&baton_core::run::Run> = s
                .active_runs
                .iter()
                .filter_map(|id| s.runs.get(id))
                .filter(|r| !r.locks.is_empty() && !r.locks_held)
                .collect();
            waiting.sort_by_key(|r| r.created_at_ms);
            for run in waiting {
                for name in &run.locks {
                    let info = locks.entry(name.clone()).or_insert_with(|| pb::LockInfo {
                        name: name.clone(),
                        holder: String::new(),
                        since_ms: 0,
                        waiting: vec![],
                    });
                    info.waiting.push(run.id.clone());
                }
            }
            locks.into_values().collect()
        });
        Ok(Response::new(pb::ListLocksResponse { locks }))
    }
}

#[tonic::async_trait]
impl pb::cluster_service_server::ClusterService for Api {
    async fn status(&self, _req: Request<pb::ClusterStatusRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        Ok(Response::new(self.cluster_status()))
    }

    async fn join(&self, req: Request<pb::JoinRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        self.wait_for_leader().await?;
        if let Some(mut client) = self.leader_cluster_client() {
            return client.join(req.into_inner()).await;
        }
        let req = req.into_inner();
        Ok(Response::new(self.change_membership(req.id, Some(req.address)).await?))
    }

    async fn remove(&self, req: Request<pb::RemoveRequest>) -> Result<Response<pb::ClusterStatus>, Status> {
        self.wait_for_leader().await?;
        if let Some(mut client) = self.leader_cluster_client() {
            return client.remove(req.into_inner()).await;
        }
        let st = self.node.status();
        if req.get_ref().id == st.id && st.voters.len() > 1 {
            // The leader leaves: hand over leadership first (to the most caught-up voter), so
            // the rest of the cluster does not have to wait out an election.
            let heir = st.matched.iter().filter(|(id, _)| *id != st.id).max_by_key(|(_, m)| *m).map(|(id, _)| *id);
            if let Some(heir) = heir {
                self.node.transfer_leader(heir);
                let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
                while self.node.status().leader_id == st.id && tokio::time::Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                self.wait_for_leader().await?;
                if let Some(mut client) = self.leader_cluster_client() {
                    return client.remove(req.into_inner()).await;
                }
            }
        }
        Ok(Response::new(self.change_membership(req.into_inner().id, None).await?))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        self.wait_for_leader().await?;
        if let Some(mut client) = self.leader_cluster_client() {
            return client.transfer_leader(req.into_inner()).await;
        }
        let id = req.into_inner().id;
        let st = self.node.status();
        if st.role != Role::Leader {
            return Err(ApiError::Unavailable("no leader is known yet; retry shortly".into()).into());
        }
        if !st.voters.contains(&id) {
            return Err(ApiError::invalid("id", format!("node {id} is not a voter (voters: {:?})", st.voters)).into());
        }
        if id != st.id {
            self.node.transfer_leader(id);
            let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
            while self.node.status().leader_id != id {
                if tokio::time::Instant::now() >= deadline {
                    return Err(ApiError::Unavailable(format!("node {id} did not take over in time")).into());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(Response::new(self.cluster_status()))
    }

    async fn snapshot_save(&self, req: Request<pb::SnapshotSaveRequest>) -> Result<Response<pb::SnapshotFile>, Status> {
        self.read_barrier(&req).await?;
        let (data, applied_index) = self.node.read(|s| (crate::backup::encode(s), s.applied_index));
        Ok(Response::new(pb::SnapshotFile { data, applied_index }))
    }
}

impl Api {
    /// A client of the leader's `ClusterService`, when this node is a follower.
    fn leader_cluster_client(&self) -> Option<pb::cluster_service_client::ClusterServiceClient<Channel>> {
        let (leader, _) = self.leader_address()?;
        self.channel(leader).map(pb::cluster_service_client::ClusterServiceClient::new)
    }

    /// Adds (`address` given) or removes member `id` through a committed configuration change.
    async fn change_membership(&self, id: u64, address: Option<String>) -> Result<pb::ClusterStatus, ApiError> {
        use raft::eraftpb::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
        let st = self.node.status();
        if st.role != Role::Leader {
            return Err(ApiError::Unavailable("no leader is known yet; retry shortly".into()));
        }
        if id == 0 {
            return Err(ApiError::invalid("id", "node ids are positive"));
        }
        let (change_type, context) = match address {
            Some(addr) => {
                if st.voters.contains(&id) {
                    return Err(ApiError::invalid("id", format!("node {id} is already a member")));
                }
                let url = if addr.contains("://") { addr.clone() } else { format!("http://{addr}") };
                if addr.is_empty() || tonic::transport::Endpoint::from_shared(url).is_err() {
                    return Err(ApiError::invalid("address", format!("{addr:?} is not a HOST:PORT address")));
                }
                (ConfChangeType::AddNode, addr.into_bytes())
            }
            None => {
                if !st.voters.contains(&id) {
                    return Err(ApiError::invalid(
                        "id",
                        format!("node {id} is not a member (voters: {:?})", st.voters),
                    ));
                }
                if st.voters.len() == 1 {
                    return Err(ApiError::invalid("id", "cannot remove the last voter"));
                }
                (ConfChangeType::RemoveNode, Vec::new())
            }
        };
        let cc = ConfChangeV2 {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle { change_type, node_id: id, ..Default::default() }].into(),
            context: context.into(),
            ..Default::default()
        };
        let (reply, _) = tokio::time::timeout(REQUEST_TIMEOUT, self.node.propose_conf_change(cc))
            .await
            .map_err(|_| ApiError::Unavailable("the membership change was not committed in time".into()))??;
        if let Reply::Rejected(why) = reply {
            return Err(ApiError::Rejected(why));
        }
        Ok(self.cluster_status())
    }

    fn cluster_status(&self) -> pb::ClusterStatus {
        let st = self.node.status();
        let workers = self.node.read(|s| self.workers.infos(&s.load_by_worker()));
        pb::ClusterStatus {
            node_id: st.id,
            leader_id: st.leader_id,
            term: st.term,
            commit_index: st.commit,
            applied_index: st.applied,
            snapshot_index: st.snapshot_index,
            members: st
                .voters
                .iter()
                .map(|id| {
                    let matched = st.matched.iter().find(|(m, _)| m == id).map(|(_, i)| *i).unwrap_or(0);
                    pb::Member {
                        id: *id,
                        address: self.address_of(*id).unwrap_or_default(),
                        voter: true,
                        matched_index: matched,
                        lag: if st.role == Role::Leader { st.last_index.saturating_sub(matched) } else { 0 },
                    }
                })
                .collect(),
            workers,
            role: st.role.as_str().into(),
        }
    }
}

/// Params as sent on the wire (text) to the JSON strings the domain coerces.
fn params_from_wire(params: std::collections::HashMap<String, String>) -> BTreeMap<String, serde_json::Value> {
    params.into_iter().map(|(k, v)| (k, serde_json::Value::String(v))).collect()
}
