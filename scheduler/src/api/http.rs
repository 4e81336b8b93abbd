//! The HTTP listener: `/healthz`, `/readyz`, `/metrics` (Prometheus text format) and the
//! chat-ops and Alertmanager hooks under `/hooks/` (see [`super::hooks`]).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use baton_core::run::RunState;

use super::Api;
use crate::raft::Role;

/// The HTTP routes.
pub fn router(api: Api) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(super::hooks::router())
        .with_state(api)
}

async fn readyz(State(api): State<Api>) -> (StatusCode, String) {
    let st = api.node.status();
    if st.leader_id == 0 {
        (StatusCode::SERVICE_UNAVAILABLE, "no leader\n".into())
    } else {
        (StatusCode::OK, format!("ready: {} (leader {})\n", st.role.as_str(), st.leader_id))
    }
}

async fn metrics(State(api): State<Api>) -> String {
    let st = api.node.status();
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"));
    };
    gauge("baton_raft_term", "Current Raft term.", st.term.to_string());
    gauge("baton_raft_commit_index", "Raft commit index.", st.commit.to_string());
    gauge("baton_raft_applied_index", "Raft applied index.", st.applied.to_string());
    gauge("baton_raft_is_leader", "1 if this node is the leader.", u8::from(st.role == Role::Leader).to_string());
    gauge("baton_workers_connected", "Workers connected to this node.", api.workers.slots().len().to_string());
    let counts = api.node.read(|s| {
        let mut counts = std::collections::BTreeMap::new();
        for r in s.runs.values() {
            *counts.entry(r.state.as_str()).or_insert(0u64) += 1;
        }
        counts
    });
    out.push_str("# HELP baton_runs Runs by state.\n# TYPE baton_runs gauge\n");
    for state in [
        RunState::Pending,
        RunState::Running,
        RunState::Succeeded,
        RunState::Failed,
        RunState::Cancelled,
        RunState::NeedsAttention,
        RunState::Missed,
    ] {
        let n = counts.get(state.as_str()).copied().unwrap_or(0);
        out.push_str(&format!("baton_runs{{state=\"{}\"}} {n}\n", state.as_str()));
    }
    let schedules: Vec<(String, u64, u64, bool)> = api.node.read(|s| {
        s.schedules.iter().map(|(name, st)| (name.clone(), st.runs_fired, st.ticks_missed, st.paused)).collect()
    });
    for (metric, kind, help) in [
        ("baton_schedule_runs_fired_total", "counter", "Runs started by a schedule's ticks."),
        (
            "baton_schedule_ticks_missed_total",
            "counter",
            "Ticks of a schedule that did not run (cluster down, overlap, blackout, paused, catch-up window).",
        ),
        ("baton_schedule_paused", "gauge", "1 while a schedule is paused."),
    ] {
        out.push_str(&format!("# HELP {metric} {help}\n# TYPE {metric} {kind}\n"));
        for (name, fired, missed, paused) in &schedules {
            let value = match metric {
                "baton_schedule_runs_fired_total" => *fired,
                "baton_schedule_ticks_missed_total" => *missed,
                _ => u64::from(*paused),
            };
            out.push_str(&format!("{metric}{{schedule=\"{name}\"}} {value}\n"));
        }
    }
    let alert_keys = api.node.read(|s| s.alert_runs.len());
    crate::metrics::render(&mut out);
    out.push_str("# HELP baton_alert_keys Alert dedupe keys with a run going or cooling down.\n");
    out.push_str(&format!("# TYPE baton_alert_keys gauge\nbaton_alert_keys {alert_keys}\n"));
    out.push_str(&api.hooks.metrics());
    out
}
