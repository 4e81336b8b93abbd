//! Runs started by the hooks: chat commands (on someone's behalf) and alerts.
//!
//! Alerts are deduplicated here, in apply, so that the decision survives a failover and a
//! re-proposed notification is applied once. Every alert maps (through the rule that matched
//! it, at the edge) to a dedupe key, `RUNBOOK/TARGET`. The key has at most one run going:
//!
//! * a firing alert starts a run only if the key has none that is going or cooling down (the
//!   rule's cooldown counts from the run's end); otherwise it joins the key's run;
//! * the key remembers which alerts (fingerprints) fire for it; once every one of them is
//!   resolved, a run that has not started working yet (pending: held by concurrency, a lock,
//!   a blackout or the lack of a worker; or waiting on an approval) is cancelled, and a run
//!   that is working is left alone;
//! * a key whose run ended and whose cooldown passed is forgotten, so the map stays as small
//!   as the set of keys with recent runs.
//!
//! The run itself is an ordinary run (`start_run`): runbook params, `concurrency`, locks and
//! budgets apply as to any other, and its history says that an alert started it.

use std::collections::{BTreeMap, BTreeSet};

use baton_core::command::{Actor, AlertStart};
use baton_core::run::{Run, RunState, StepState};
use serde::{Deserialize, Serialize};

use super::{Effect, Reply, State, next_step};

/// The run of one alert dedupe key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertRun {
    /// The run the key's alerts started.
    pub run_id: String,
    /// The rule that started it.
    pub rule: String,
    /// After the run ends, the key's alerts start nothing for this long (ms).
    pub cooldown_ms: u64,
    /// Fingerprints of the key's alerts that fire (added when reported firing, removed when
    /// reported resolved).
    pub firing: BTreeSet<String>,
    /// When the run was started (leader time).
    pub started_at_ms: i64,
}

impl AlertRun {
    /// Until when the key's alerts start nothing: `None` while its run has not ended, else the
    /// run's end plus the cooldown.
    pub fn cooldown_until(&self, state: &State) -> Option<i64> {
        let run = state.runs.get(&self.run_id)?;
        run.state
            .is_terminal()
            .then(|| run.finished_at_ms.saturating_add(i64::try_from(self.cooldown_ms).unwrap_or(i64::MAX)))
    }
}

/// One `AlertNotified` command, unpacked.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct AlertNotice {
    pub key: String,
    pub firing: Vec<String>,
    pub resolved: Vec<String>,
    pub start: Option<AlertStart>,
    pub by: Actor,
    pub summary: String,
}

/// True for a run that has not started working: nothing started yet (held by the runbook's
/// concurrency, a lock, a blackout, or waiting for a worker), or its current step waits on an
/// approval. A run being cancelled or ended does not wait.
pub fn waits_to_start(run: &Run) -> bool {
    if run.state.is_terminal() || run.cancel_requested {
        return false;
    }
    if run.state == RunState::Pending || (!run.locks.is_empty() && !run.locks_held) {
        return true;
    }
    next_step(run).is_some_and(|si| run.steps[si].state == StepState::Waiting && run.steps[si].approval.is_some())
}

impl State {
    /// `StartRunAs`: a `StartRun` whose history says who started it and through what.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn start_run_as(
        &mut self,
        index: u64,
        now: i64,
        run_id: String,
        runbook: &str,
        params: BTreeMap<String, serde_json::Value>,
        idempotency_key: Option<String>,
        by: &Actor,
        fx: &mut Vec<Effect>,
    ) -> Reply {
        let existed = self.runs.contains_key(&run_id);
        let reply = self.start_run(index, now, run_id.clone(), runbook, params, idempotency_key, fx);
        if let Reply::Run { run_id: started, deduplicated: false } = &reply
            && *started == run_id
            && !existed
        {
            self.started_by(&run_id, now, by, "");
        }
        reply
    }

    /// `AlertNotified`: see the module documentation.
    pub(super) fn alert_notified(&mut self, index: u64, now: i64, n: AlertNotice, fx: &mut Vec<Effect>) -> Reply {
        self.forget_cooled_down_alerts(now);
        let AlertNotice { key, firing, resolved, start, by, summary } = n;
        if let Some(entry) = self.alert_runs.get_mut(&key) {
            for fingerprint in &resolved {
                entry.firing.remove(fingerprint);
            }
            entry.firing.extend(firing.iter().cloned());
        }
        let mut reply = Reply::Done;
        if !firing.is_empty() {
            if let Some(entry) = self.alert_runs.get(&key) {
                // The key's run is going or cooling down: the alerts join it.
                reply = Reply::Run { run_id: entry.run_id.clone(), deduplicated: true };
            } else if let Some(start) = start {
                reply = self.start_alert_run(index, now, &key, firing, start, &by, &summary, fx);
            }
        }
        if !resolved.is_empty()
            && let Some(entry) = self.alert_runs.get(&key)
            && entry.firing.is_empty()
        {
            let run_id = entry.run_id.clone();
            if self.runs.get(&run_id).is_some_and(waits_to_start) {
                let reason = format!("every alert of {key} was resolved ({summary}) before the run started working");
                self.record(&run_id, now, &by, "cancel", &reason);
                self.cancel_run(now, &run_id, reason, fx);
            }
        }
        reply
    }

    #[allow(clippy::too_many_arguments)]
    fn start_alert_run(
        &mut self,
        index: u64,
        now: i64,
        key: &str,
        firing: Vec<String>,
        start: AlertStart,
        by: &Actor,
        summary: &str,
        fx: &mut Vec<Effect>,
    ) -> Reply {
        let AlertStart { rule, run_id, runbook, params, cooldown_ms } = start;
        if self.runs.contains_key(&run_id) {
            // A run id is never reused; this one belongs to another start.
            return Reply::Rejected(format!("run {run_id} exists already"));
        }
        let reply = self.start_run(index, now, run_id.clone(), &runbook, params, None, fx);
        if !matches!(&reply, Reply::Run { run_id: started, deduplicated: false } if *started == run_id) {
            return reply;
        }
        self.started_by(&run_id, now, by, &format!("alert {summary} (rule {rule}, key {key})"));
        let entry = AlertRun {
            run_id: run_id.clone(),
            rule,
            cooldown_ms,
            firing: firing.into_iter().collect(),
            started_at_ms: now,
        };
        self.alert_runs.insert(key.to_string(), entry);
        reply
    }

    /// Says in a new run's history (and as its principal) who started it.
    fn started_by(&mut self, run_id: &str, now: i64, by: &Actor, detail: &str) {
        if let Some(run) = self.runs.get_mut(run_id) {
            run.principal = by.principal.clone();
        }
        self.record(run_id, now, by, "start", detail);
    }

    /// Forgets keys whose run ended more than its cooldown ago (or no longer exists).
    fn forget_cooled_down_alerts(&mut self, now: i64) {
        let runs = &self.runs;
        self.alert_runs.retain(|_, entry| match runs.get(&entry.run_id) {
            None => false,
            Some(run) if run.state.is_terminal() => {
                now < run.finished_at_ms.saturating_add(i64::try_from(entry.cooldown_ms).unwrap_or(i64::MAX))
            }
            Some(_) => true,
        });
    }
}
