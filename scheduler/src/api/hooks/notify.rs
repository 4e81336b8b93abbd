//! Run changes posted to chat.
//!
//! Two kinds of posts, both built from the applied state:
//!
//! * **Replies** follow a run started by a chat command, on the node that took the command:
//!   each approval it waits for (with Approve and Deny buttons) and its end go to the command's
//!   `response_url`, for as long as the chat accepts posts there (Slack: 30 minutes).
//! * **Notifications** go to the configured incoming webhooks (Slack and Mattermost), for
//!   every run (or the runbooks listed): `started`, `waiting` (an approval, with buttons),
//!   `succeeded`, `failed`, `cancelled`, `needs_attention`. Only the leader sends them, each
//!   once per transition: a node that becomes leader first takes what is already true of every
//!   run as said, so a transition during a leader change may go unannounced but none is
//!   announced twice by one leader.
//!
//! Buttons carry the run and step; Slack's are verified by the request signature of the click
//! ([`super::slack`]), Mattermost's by an HMAC in their context ([`super::mattermost`]).

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use baton_core::run::{Run, RunState, StepState};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::commands::{state_text, status_text};
use super::{Platform, mattermost, slack};
use crate::api::{Api, now_ms};
use crate::fsm::next_step;
use crate::raft::Role;

/// How long a chat command's run is followed (Slack accepts posts to a `response_url` for 30
/// minutes); notifications through the webhooks cover what comes later.
pub const FOLLOW_FOR: Duration = Duration::from_secs(30 * 60);
/// Runs remembered as announced-ended by the notifier, so a late change does not announce
/// their end again.
const ENDED_MEMORY: usize = 10_000;
/// A run that ended longer ago than this (ms) is not announced by a new leader.
const RECENT_MS: i64 = 10 * 60_000;
/// Posts waiting to be sent by the notifier; more are dropped (and logged).
const QUEUE: usize = 1_024;

/// A run change that can be announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NotifyEvent {
    /// The run's first step started.
    Started,
    /// The run waits for an approval.
    Waiting,
    /// The run succeeded.
    Succeeded,
    /// The run failed.
    Failed,
    /// The run was cancelled.
    Cancelled,
    /// The run needs an operator (an attempt's outcome is unknown).
    NeedsAttention,
}

impl NotifyEvent {
    /// Every event, the default set.
    pub const ALL: [NotifyEvent; 6] = [
        NotifyEvent::Started,
        NotifyEvent::Waiting,
        NotifyEvent::Succeeded,
        NotifyEvent::Failed,
        NotifyEvent::Cancelled,
        NotifyEvent::NeedsAttention,
    ];

    /// The name used in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Started => "started",
            NotifyEvent::Waiting => "waiting",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::Failed => "failed",
            NotifyEvent::Cancelled => "cancelled",
            NotifyEvent::NeedsAttention => "needs_attention",
        }
    }

    /// Parses a name from the configuration.
    pub fn parse(name: &str) -> Result<NotifyEvent, String> {
        NotifyEvent::ALL.into_iter().find(|e| e.as_str() == name.trim()).ok_or_else(|| {
            let names: Vec<&str> = NotifyEvent::ALL.iter().map(|e| e.as_str()).collect();
            format!("notify event {name:?} is not one of {}", names.join(", "))
        })
    }

    /// The event of a run that ended in `state` (or needs an operator).
    fn of_end(state: RunState) -> Option<NotifyEvent> {
        match state {
            RunState::Succeeded => Some(NotifyEvent::Succeeded),
            RunState::Failed => Some(NotifyEvent::Failed),
            RunState::Cancelled => Some(NotifyEvent::Cancelled),
            RunState::NeedsAttention => Some(NotifyEvent::NeedsAttention),
            _ => None,
        }
    }
}

/// A chat message, before it is shaped for a platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The text (chat markdown: `code`, ```blocks```).
    pub text: String,
    /// Approve and Deny buttons for (run id, step id).
    pub approval: Option<(String, String)>,
}

impl Message {
    /// A message without buttons.
    pub fn text(text: impl Into<String>) -> Message {
        Message { text: text.into(), approval: None }
    }
}

/// Where a chat command's replies go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTarget {
    /// The chat.
    pub platform: Platform,
    /// The command's `response_url`.
    pub url: String,
}

/// What has been said about one run.
#[derive(Debug, Default, Clone)]
struct Said {
    started: bool,
    waiting: BTreeSet<String>,
    ended: bool,
}

impl Said {
    /// Everything already true of `run`, taken as said.
    fn everything(run: &Run) -> Said {
        let ended = run.state.is_terminal() || run.state == RunState::NeedsAttention;
        let mut said = Said { started: run.state != RunState::Pending, ended, ..Said::default() };
        said.waiting.extend(waiting_on(run).map(|(step, _)| step));
        said
    }

    /// The changes of `run` not said yet (marking them said).
    fn news(&mut self, run: &Run) -> Vec<(NotifyEvent, Option<String>)> {
        let mut news = Vec::new();
        if run.state.is_terminal() || run.state == RunState::NeedsAttention {
            if !self.ended {
                self.ended = true;
                news.extend(NotifyEvent::of_end(run.state).map(|e| (e, None)));
            }
            return news;
        }
        // A run an operator retried or resumed after it needed attention is news again.
        self.ended = false;
        if run.state != RunState::Pending && !self.started {
            self.started = true;
            news.push((NotifyEvent::Started, None));
        }
        if let Some((step, _)) = waiting_on(run)
            && self.waiting.insert(step.clone())
        {
            news.push((NotifyEvent::Waiting, Some(step)));
        }
        news
    }
}

/// The approval step the run waits on, with its prompt.
fn waiting_on(run: &Run) -> Option<(String, String)> {
    if run.cancel_requested {
        return None;
    }
    let si = next_step(run)?;
    let step = &run.steps[si];
    let request = step.approval.as_ref().filter(|_| step.state == StepState::Waiting)?;
    Some((step.id.clone(), request.prompt.clone()))
}

/// The message announcing `event` of `run`.
pub fn message_for(run: &Run, event: NotifyEvent, step: Option<&str>) -> Message {
    let name = format!("run `{}` of `{}`", run.id, run.runbook);
    match event {
        NotifyEvent::Started => {
            let by = if run.principal.is_empty() { String::new() } else { format!(" (started by {})", run.principal) };
            Message::text(format!("▶️ {name} started{by}."))
        }
        NotifyEvent::Waiting => {
            let step_id = step.map(str::to_string).or_else(|| waiting_on(run).map(|(s, _)| s)).unwrap_or_default();
            let request = run.step(&step_id).and_then(|s| s.approval.as_ref());
            let (prompt, approvers, needed) =
                request.map(|r| (r.prompt.clone(), r.approvers.join(", "), r.min_approvals)).unwrap_or_default();
            let text = format!(
                "✋ {name} waits for approval of step `{step_id}`: {prompt}\nApprovers: {approvers} ({needed} needed). \
                 Or: `approve {id}` / `deny {id} REASON`",
                id = run.id
            );
            Message { text, approval: Some((run.id.clone(), step_id)) }
        }
        NotifyEvent::Succeeded => Message::text(format!("✅ {name} succeeded{}.", took(run))),
        NotifyEvent::Failed | NotifyEvent::Cancelled | NotifyEvent::NeedsAttention => {
            let icon = if event == NotifyEvent::Cancelled { "🛑" } else { "❌" };
            let status = status_text(run);
            let details = status.split_once('\n').map(|(_, rest)| format!("\n{rest}")).unwrap_or_default();
            Message::text(format!("{icon} {name} {}{}.{details}", state_text(run), took(run)))
        }
    }
}

fn took(run: &Run) -> String {
    if run.finished_at_ms > 0 && run.created_at_ms > 0 && run.finished_at_ms >= run.created_at_ms {
        let ms = u64::try_from(run.finished_at_ms - run.created_at_ms).unwrap_or(0);
        format!(" after {}", baton_core::duration::format_duration(ms / 1000 * 1000))
    } else {
        String::new()
    }
}

/// `message` shaped for `platform`; `reply` for a command's `response_url` (shown to the
/// channel when `public`), otherwise for an incoming webhook.
pub fn payload(api: &Api, platform: Platform, message: &Message, reply: bool, public: bool) -> serde_json::Value {
    let mut body = match platform {
        Platform::Slack => slack::message(message),
        Platform::Mattermost => mattermost::message(&api.hooks.config.mattermost, message),
    };
    if reply && let Some(object) = body.as_object_mut() {
        let kind = if public { "in_channel" } else { "ephemeral" };
        object.insert("response_type".into(), kind.into());
        if platform == Platform::Slack {
            object.insert("replace_original".into(), false.into());
        }
    }
    body
}

/// Posts `message` to a command's `response_url`; a failure is logged and counted.
pub async fn post_reply(api: &Api, target: &ReplyTarget, message: &Message, public: bool) {
    let body = payload(api, target.platform, message, true, public);
    post(api, &target.url, &body).await;
}

/// Posts `body` to `url`; a failure is logged and counted.
pub(crate) async fn post(api: &Api, url: &str, body: &serde_json::Value) -> bool {
    match api.hooks.outbound.post_json(url, body).await {
        Ok(()) => {
            api.hooks.counters.posted.fetch_add(1, Ordering::Relaxed);
            true
        }
        Err(e) => {
            api.hooks.counters.post_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("a chat post failed: {e}");
            false
        }
    }
}

/// Follows a run started by a chat command and posts the approvals it waits for and its end
/// to the command's `response_url`, for [`FOLLOW_FOR`] at most (or until the server stops).
pub fn spawn_follow(api: Api, run_id: String, target: ReplyTarget) {
    tokio::spawn(async move {
        // Subscribe before the first read, so no change between the two is missed.
        let mut changes = api.run_changes.subscribe();
        let deadline = tokio::time::Instant::now() + FOLLOW_FOR;
        // The command's answer said it started: only what comes next is news.
        let mut said = Said { started: true, ..Said::default() };
        loop {
            let Some(run) = api.node.read(|s| s.runs.get(&run_id).cloned()) else { return };
            for (event, step) in said.news(&run) {
                if event == NotifyEvent::Started {
                    continue;
                }
                let message = message_for(&run, event, step.as_deref());
                post_reply(&api, &target, &message, true).await;
            }
            if said.ended {
                return;
            }
            loop {
                let changed = tokio::select! {
                    _ = api.hooks.shutdown.cancelled() => return,
                    c = tokio::time::timeout_at(deadline, changes.recv()) => c,
                };
                match changed {
                    Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return,
                    Ok(Ok(changed)) if changed != run_id => continue,
                    Ok(_) => break,
                }
            }
        }
    });
}

/// The leader's notifier: posts run changes to the configured incoming webhooks until
/// `shutdown`. Returns at once when no webhook is configured.
pub async fn run_notifier(api: Api, shutdown: CancellationToken) {
    let config = &api.hooks.config;
    let mut webhooks = Vec::new();
    if let Some(url) = &config.slack.webhook {
        webhooks.push((Platform::Slack, url.clone()));
    }
    if let Some(url) = &config.mattermost.webhook {
        webhooks.push((Platform::Mattermost, url.clone()));
    }
    if webhooks.is_empty() {
        return;
    }
    let events: HashSet<NotifyEvent> = config.notify.events.iter().copied().collect();
    let runbooks: HashSet<String> = config.notify.runbooks.iter().cloned().collect();
    // One sender posts in order, so a run's `started` never arrives after its end.
    let (queue, mut outbox) = mpsc::channel::<(Platform, String, Message)>(QUEUE);
    let sender_api = api.clone();
    let sender = tokio::spawn(async move {
        while let Some((platform, url, message)) = outbox.recv().await {
            let body = payload(&sender_api, platform, &message, false, true);
            post(&sender_api, &url, &body).await;
        }
    });
    let mut changes = api.run_changes.subscribe();
    let mut notifier = Notifier::default();
    loop {
        let changed: Vec<String> = tokio::select! {
            _ = shutdown.cancelled() => break,
            c = changes.recv() => match c {
                Ok(id) => vec![id],
                // Missed some: look at every run that has not ended, and the recently ended.
                Err(broadcast::error::RecvError::Lagged(_)) => api.node.read(|s| {
                    let since = now_ms() - RECENT_MS;
                    s.runs.values()
                        .filter(|r| !r.state.is_terminal() || r.finished_at_ms >= since)
                        .map(|r| r.id.clone())
                        .collect()
                }),
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        let status = api.node.status();
        if status.role != Role::Leader {
            notifier.epoch = None;
            continue;
        }
        if notifier.epoch != Some(status.leader_epoch) {
            // Newly leader: what is true already was said (or was the old leader's to say).
            notifier.epoch = Some(status.leader_epoch);
            api.node.read(|s| notifier.take_as_said(s.runs.values()));
            continue;
        }
        for id in changed {
            let Some(run) = api.node.read(|s| s.runs.get(&id).cloned()) else { continue };
            if !runbooks.is_empty() && !runbooks.contains(&run.runbook) {
                continue;
            }
            for (event, step) in notifier.news(&run) {
                if !events.contains(&event) {
                    continue;
                }
                let message = message_for(&run, event, step.as_deref());
                for (platform, url) in &webhooks {
                    if queue.try_send((*platform, url.clone(), message.clone())).is_err() {
                        tracing::warn!(run = run.id, event = event.as_str(), "the chat notification queue is full");
                    }
                }
            }
        }
    }
    drop(queue);
    let _ = sender.await;
}

/// What the leader has announced.
#[derive(Debug, Default)]
struct Notifier {
    /// The leadership it announces for.
    epoch: Option<u64>,
    /// Runs that have not ended, with what was said.
    said: HashMap<String, Said>,
    /// Runs whose end was said (or was true when this node took over), newest last.
    ended: VecDeque<String>,
    ended_set: HashSet<String>,
}

impl Notifier {
    fn take_as_said<'a>(&mut self, runs: impl Iterator<Item = &'a Run>) {
        self.said.clear();
        self.ended.clear();
        self.ended_set.clear();
        let recent = now_ms() - RECENT_MS;
        for run in runs {
            if run.state.is_terminal() {
                if run.finished_at_ms >= recent {
                    self.remember_ended(&run.id);
                }
            } else {
                self.said.insert(run.id.clone(), Said::everything(run));
            }
        }
    }

    fn news(&mut self, run: &Run) -> Vec<(NotifyEvent, Option<String>)> {
        if self.ended_set.contains(&run.id) {
            if run.state.is_terminal() {
                return Vec::new();
            }
            // An operator retried it: it is news again.
            self.ended_set.remove(&run.id);
        }
        if run.state.is_terminal() && !self.said.contains_key(&run.id) && run.finished_at_ms < now_ms() - RECENT_MS {
            // Ended long ago (a late change to an old run): nothing to announce.
            return Vec::new();
        }
        let said = self.said.entry(run.id.clone()).or_default();
        let news = said.news(run);
        if run.state.is_terminal() {
            self.said.remove(&run.id);
            self.remember_ended(&run.id);
        }
        news
    }

    fn remember_ended(&mut self, id: &str) {
        if self.ended_set.insert(id.to_string()) {
            self.ended.push_back(id.to_string());
            if self.ended.len() > ENDED_MEMORY
                && let Some(old) = self.ended.pop_front()
            {
                self.ended_set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use baton_core::run::{ApprovalRequest, StepRun};

    use super::*;

    fn run(state: RunState) -> Run {
        let mut gate = StepRun::pending("gate");
        gate.state = StepState::Waiting;
        gate.approval =
            Some(ApprovalRequest { prompt: "Go?".into(), approvers: vec!["alice".into()], min_approvals: 1 });
        let mut run: Run = serde_json::from_value(serde_json::json!({
            "id": "r-1", "runbook": "rb", "version": "v", "params": {}, "trigger": {"kind": "api"},
            "state": "pending", "steps": [], "created_at_ms": 1000, "started_at_ms": 0, "finished_at_ms": 0,
            "error": null, "idempotency_key": null, "missed_ticks": 0, "cancel_requested": false,
        }))
        .unwrap();
        run.state = state;
        run.steps = vec![gate];
        run
    }

    #[test]
    fn each_change_is_news_once() {
        let mut said = Said::default();
        let mut running = run(RunState::Running);
        let news = said.news(&running);
        assert_eq!(news, vec![(NotifyEvent::Started, None), (NotifyEvent::Waiting, Some("gate".into()))]);
        assert!(said.news(&running).is_empty(), "nothing new");
        running.steps[0].state = StepState::Succeeded;
        assert!(said.news(&running).is_empty());
        running.state = RunState::Succeeded;
        running.finished_at_ms = 61_500;
        assert_eq!(said.news(&running), vec![(NotifyEvent::Succeeded, None)]);
        assert!(said.news(&running).is_empty());
        let message = message_for(&running, NotifyEvent::Succeeded, None);
        assert_eq!(message.text, "✅ run `r-1` of `rb` succeeded after 1m.");
    }

    #[test]
    fn a_new_leader_takes_what_is_true_as_said() {
        let mut notifier = Notifier::default();
        let waiting = run(RunState::Running);
        notifier.take_as_said([&waiting].into_iter());
        assert!(notifier.news(&waiting).is_empty());
        let mut failed = waiting.clone();
        failed.state = RunState::Failed;
        failed.finished_at_ms = now_ms();
        assert_eq!(notifier.news(&failed), vec![(NotifyEvent::Failed, None)]);
        assert!(notifier.news(&failed).is_empty(), "an end is said once");
        // Retried by an operator: its changes are news again.
        let mut retried = failed.clone();
        retried.state = RunState::Running;
        retried.steps[0].state = StepState::Succeeded;
        assert_eq!(notifier.news(&retried), vec![(NotifyEvent::Started, None)]);
    }

    #[test]
    fn an_approval_message_carries_its_buttons() {
        let message = message_for(&run(RunState::Running), NotifyEvent::Waiting, Some("gate"));
        assert_eq!(message.approval, Some(("r-1".into(), "gate".into())));
        assert!(message.text.contains("step `gate`: Go?"), "{}", message.text);
        assert!(message.text.contains("Approvers: alice (1 needed)"), "{}", message.text);
    }

    #[test]
    fn events_parse_by_name() {
        assert_eq!(NotifyEvent::parse("needs_attention"), Ok(NotifyEvent::NeedsAttention));
        assert!(NotifyEvent::parse("boom").unwrap_err().contains("started, waiting"));
    }
}
