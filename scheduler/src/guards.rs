//! Guards: the checks a runbook makes before each step or batch of a run starts.
//!
//! The engine stays sans-IO: it holds a run at its guard gate ([`State::guard_gate`]) until
//! the leader's [`Guards`] has seen every guard pass for that gate. Checks run here, on the
//! leader, outside the Ready loop: a Prometheus instant query that must return at least one
//! sample, as an alerting rule fires (`up == 1`, `rate(errors[5m]) < 1`), or an HTTP GET that must answer
//! the expected status. A guard that fails pauses the run through the log, with the reason
//! (`guard "error rate" failed before step restart[web-2]: ...`); `baton run resume` makes
//! the run check again at the same gate.
//!
//! [`State::guard_gate`]: crate::fsm::State::guard_gate

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use baton_core::runbook::{Guard, GuardCheck};

use crate::api::hooks::outbound::Outbound;

/// How long one guard check may take.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// The most of an answer that is read.
const MAX_ANSWER: usize = 1024 * 1024;

/// The leader's guard state: which gates passed, which are being checked.
#[derive(Default)]
pub struct Guards {
    inner: Mutex<GuardsInner>,
}

#[derive(Default)]
struct GuardsInner {
    /// Run id -> the gate its guards passed at.
    passed: HashMap<String, String>,
    /// (run id, gate) being checked now.
    checking: HashSet<(String, String)>,
}

/// The outcome of checking a gate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every guard passed.
    Pass,
    /// This guard failed, for this reason.
    Fail {
        /// The guard's name.
        guard: String,
        /// What it saw.
        reason: String,
    },
}

impl Guards {
    /// Gates that passed, for the engine's view.
    pub fn passed(&self) -> HashMap<String, String> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).passed.clone()
    }

    /// Marks a gate as being checked; false if it is already (or has passed).
    pub fn begin(&self, run_id: &str, gate: &str) -> bool {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.passed.get(run_id).is_some_and(|g| g == gate) {
            return false;
        }
        inner.checking.insert((run_id.to_string(), gate.to_string()))
    }

    /// Records a check's end; a pass opens the gate.
    pub fn end(&self, run_id: &str, gate: &str, passed: bool) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.checking.remove(&(run_id.to_string(), gate.to_string()));
        if passed {
            inner.passed.insert(run_id.to_string(), gate.to_string());
        }
    }

    /// Forgets runs that no longer wait at a gate (ended, or went past it), and everything
    /// on a leadership change.
    pub fn retain(&self, waiting: &HashSet<String>) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.passed.retain(|run, _| waiting.contains(run));
    }
}

/// Checks guards over HTTP(S), with the hooks' outgoing client.
#[derive(Default)]
pub struct Checker {
    http: Outbound,
}

impl Checker {
    /// A checker with Mozilla's root certificates for https URLs.
    pub fn new() -> Checker {
        Checker::default()
    }

    /// Checks every guard in order (their templates rendered with `ctx`); the first failure
    /// decides.
    pub async fn check_all(&self, guards: &[Guard], ctx: &serde_json::Value) -> Verdict {
        for guard in guards {
            let result = tokio::time::timeout(CHECK_TIMEOUT, self.check(guard, ctx))
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {CHECK_TIMEOUT:?}")));
            if let Err(reason) = result {
                return Verdict::Fail { guard: guard.name.clone(), reason };
            }
        }
        Verdict::Pass
    }

    async fn check(&self, guard: &Guard, ctx: &serde_json::Value) -> Result<(), String> {
        let render = |t: &str| baton_core::template::render_text(t, ctx).map_err(|e| e.message);
        match &guard.check {
            GuardCheck::Prometheus { url, query } => {
                let base = render(url)?;
                let query = render(query)?;
                let url = format!("{}/api/v1/query?query={}", base.trim_end_matches('/'), encode_query(&query));
                let (status, body) = self.get(&url).await?;
                prometheus_verdict(status, &body)
            }
            GuardCheck::Http { url, status } => {
                let url = render(url)?;
                let (got, _) = self.get(&url).await?;
                let ok = match status {
                    Some(want) => got == *want,
                    None => (200..300).contains(&got),
                };
                if ok {
                    Ok(())
                } else {
                    let want = status.map_or("a 2xx status".to_string(), |s| s.to_string());
                    Err(format!(
                        "GET {} answered {got}, expected {want}",
                        crate::api::hooks::outbound::without_query(&url)
                    ))
                }
            }
        }
    }

    async fn get(&self, url: &str) -> Result<(u16, Vec<u8>), String> {
        self.http.get(url, MAX_ANSWER).await
    }
}

/// A Prometheus query answer as a verdict. Like an alerting rule, a vector result passes when
/// it has at least one sample (a comparison such as `rate(errors[5m]) < 1` keeps only the
/// samples for which it holds, whatever their value); a scalar passes when it is not 0
/// (`1 < bool 2`).
pub fn prometheus_verdict(status: u16, body: &[u8]) -> Result<(), String> {
    let answer: serde_json::Value = serde_json::from_slice(body)
        .map_err(|_| format!("Prometheus answered {status} with something that is not JSON"))?;
    if answer["status"] != "success" {
        let why = answer["error"].as_str().unwrap_or("no reason given");
        return Err(format!("Prometheus refused the query ({status}): {why}"));
    }
    let data = &answer["data"];
    match data["resultType"].as_str() {
        Some("vector") => {
            if data["result"].as_array().is_some_and(|r| !r.is_empty()) {
                Ok(())
            } else {
                Err("the query returned no sample".to_string())
            }
        }
        Some("scalar") => match data["result"][1].as_str() {
            Some(v) if v.parse::<f64>().is_ok_and(|x| x != 0.0) => Ok(()),
            Some(v) => Err(format!("the query returned {v}")),
            None => Err("the query returned no value".to_string()),
        },
        other => Err(format!("the query gives a {}, expected a vector or scalar", other.unwrap_or("nothing"))),
    }
}

/// Percent-encodes a query string value.
fn encode_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `scheme://host/path` without the query string (it may carry a token).
/// Checks the guards of every run waiting at a gate, a few at a time, on the leader: a pass
/// opens the gate for the engine, a failure pauses the run through `pause`.
pub async fn check_gates<F, Fut>(
    guards: Arc<Guards>,
    checker: Arc<Checker>,
    gates: Vec<(String, String, Vec<Guard>, serde_json::Value)>,
    pause: F,
) where
    F: Fn(String, String, String) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    for (run_id, gate, list, ctx) in gates {
        if !guards.begin(&run_id, &gate) {
            continue;
        }
        let (guards, checker, pause) = (guards.clone(), checker.clone(), pause.clone());
        tokio::spawn(async move {
            let verdict = checker.check_all(&list, &ctx).await;
            let passed = verdict == Verdict::Pass;
            if let Verdict::Fail { guard, reason } = verdict {
                let when = match gate.split('#').next().unwrap_or(&gate) {
                    crate::fsm::GUARD_GATE_END => "after the last step".to_string(),
                    step => format!("before step {step}"),
                };
                pause(run_id.clone(), gate.clone(), format!("guard {guard:?} failed {when}: {reason}")).await;
            }
            guards.end(&run_id, &gate, passed);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_answers_become_verdicts() {
        let vector = |values: &[&str]| {
            let result: Vec<serde_json::Value> =
                values.iter().map(|v| serde_json::json!({"metric": {}, "value": [1.0, v]})).collect();
            serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}}).to_string()
        };
        assert_eq!(prometheus_verdict(200, vector(&["1"]).as_bytes()), Ok(()));
        assert_eq!(prometheus_verdict(200, vector(&["0.5", "3"]).as_bytes()), Ok(()));
        // `rate(errors[5m]) < 1` with no errors: a sample whose value is 0 — it holds.
        assert_eq!(prometheus_verdict(200, vector(&["0"]).as_bytes()), Ok(()));
        assert_eq!(prometheus_verdict(200, vector(&[]).as_bytes()), Err("the query returned no sample".into()));
        let scalar = r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"2"]}}"#;
        assert_eq!(prometheus_verdict(200, scalar.as_bytes()), Ok(()));
        let zero = r#"{"status":"success","data":{"resultType":"scalar","result":[1.0,"0"]}}"#;
        assert_eq!(prometheus_verdict(200, zero.as_bytes()), Err("the query returned 0".into()));
        let bad = r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#;
        let err = prometheus_verdict(400, bad.as_bytes()).unwrap_err();
        assert_eq!(err, "Prometheus refused the query (400): parse error at char 3");
        assert!(prometheus_verdict(502, b"<html>bad gateway</html>").unwrap_err().contains("not JSON"));
    }

    #[test]
    fn queries_are_encoded_and_gates_open_once() {
        assert_eq!(encode_query("up{job=\"x\"} == 1"), "up%7Bjob%3D%22x%22%7D%20%3D%3D%201");
        let g = Guards::default();
        assert!(g.begin("r", "a#0"));
        assert!(!g.begin("r", "a#0"), "already being checked");
        g.end("r", "a#0", false);
        assert!(g.passed().is_empty());
        assert!(g.begin("r", "a#0"), "checked again after a failure");
        g.end("r", "a#0", true);
        assert_eq!(g.passed()["r"], "a#0");
        assert!(!g.begin("r", "a#0"), "passed");
        assert!(g.begin("r", "b#0"), "the next gate");
        g.retain(&HashSet::new());
        assert!(g.passed().is_empty());
    }
}
