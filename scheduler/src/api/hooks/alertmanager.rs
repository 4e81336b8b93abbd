//! Alertmanager's webhook receiver (`POST /hooks/alertmanager`, payload version 4) and the
//! rules that map alerts to runbooks.
//!
//! A rules file (YAML, loaded and validated when the server starts) lists rules; the first
//! whose matchers all hold for an alert's labels maps it:
//!
//! ```yaml
//! rules:
//!   - name: disk-full
//!     matchers: ['alertname = "DiskFull"', 'severity =~ "critical|page"']
//!     runbook: clean-disk
//!     target: "{{ labels.instance }}"        # one run per (runbook, target); default: the alert
//!     params:
//!       host: "{{ labels.instance }}"
//!       path: "{{ annotations.mountpoint }}"
//!     cooldown: 30m                         # after the run ends, the target starts nothing for 30m
//! ```
//!
//! Params and target are minijinja templates (strict: a missing label is an error, not an
//! empty string) over `labels`, `annotations`, `alert` (`status`, `fingerprint`, `starts_at`,
//! `ends_at`, `generator_url`), `common_labels`, `common_annotations`, `group_labels`,
//! `receiver` and `external_url`.
//!
//! The handler renders each alert at the edge and groups the notification's alerts by dedupe
//! key, `RUNBOOK/TARGET`; one `AlertNotified` command per key carries the firing and resolved
//! fingerprints and the run to start. Whether a run starts, joins the key's run or cancels it
//! is decided in apply (`fsm::alerts`), in the replicated state, so it holds across a failover.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use baton_core::command::{Actor, AlertStart, Op};
use baton_core::template::render_text;
use regex::Regex;
use serde::Deserialize;
use serde_saphyr::Spanned;
use sha2::{Digest, Sha256};

use super::{Hook, tokens_match};
use crate::api::{Api, ApiError};
use crate::fsm::Reply;

/// The cooldown of a rule that does not set one.
pub const DEFAULT_COOLDOWN_MS: u64 = 10 * 60 * 1000;
/// Longest rendered target.
const MAX_TARGET: usize = 256;
/// The roots of a rule template's context.
pub const CONTEXT_ROOTS: [&str; 8] = [
    "labels",
    "annotations",
    "alert",
    "common_labels",
    "common_annotations",
    "group_labels",
    "receiver",
    "external_url",
];

/// The rules, in file order.
#[derive(Debug, Clone, Default)]
pub struct AlertRules {
    /// The rules; the first that matches an alert maps it.
    pub rules: Vec<AlertRule>,
}

/// One rule, validated.
#[derive(Debug, Clone)]
pub struct AlertRule {
    /// Unique name, shown in logs and in the run's history.
    pub name: String,
    /// All must hold for the alert's labels.
    pub matchers: Vec<Matcher>,
    /// The runbook to run.
    pub runbook: String,
    /// What one run is for (template); `None`: each alert (fingerprint) is its own target.
    pub target: Option<String>,
    /// Param name -> template.
    pub params: BTreeMap<String, String>,
    /// After a run ends, the target's alerts start nothing for this long (ms).
    pub cooldown_ms: u64,
}

/// A label matcher, in Alertmanager's syntax: `name = "v"`, `!=`, `=~` (a regex that must
/// match the whole value), `!~`. A missing label has the value "".
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Label name.
    pub label: String,
    /// How the value is compared.
    pub op: MatchOp,
    /// The value or regex as written.
    pub value: String,
    regex: Option<Regex>,
}

/// A matcher's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    /// `=`
    Equal,
    /// `!=`
    NotEqual,
    /// `=~`
    Regex,
    /// `!~`
    NotRegex,
}

impl Matcher {
    /// Parses `label OP value`, the value bare or in double quotes (with `\"` and `\\`).
    pub fn parse(text: &str) -> Result<Matcher, String> {
        let text = text.trim();
        let name_len = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
        let label = &text[..name_len];
        if label.is_empty() || label.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("{text:?} does not start with a label name (letters, digits, _)"));
        }
        let rest = text[name_len..].trim_start();
        let (op, rest) =
            [("=~", MatchOp::Regex), ("!~", MatchOp::NotRegex), ("!=", MatchOp::NotEqual), ("=", MatchOp::Equal)]
                .into_iter()
                .find_map(|(token, op)| rest.strip_prefix(token).map(|r| (op, r.trim())))
                .ok_or_else(|| format!("{text:?}: expected =, !=, =~ or !~ after the label name {label}"))?;
        let value = match rest.strip_prefix('"') {
            Some(quoted) => unquote(quoted).map_err(|e| format!("{text:?}: {e}"))?,
            None => rest.to_string(),
        };
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => {
                let regex = Regex::new(&format!("^(?:{value})$")).map_err(|e| {
                    // The regex crate explains on several lines; its last line says what is wrong.
                    let why = e.to_string();
                    let why = why.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string();
                    format!("{text:?}: not a valid regex ({})", why.trim_start_matches("error: "))
                })?;
                Some(regex)
            }
            _ => None,
        };
        Ok(Matcher { label: label.to_string(), op, value, regex })
    }

    /// Whether the labels satisfy the matcher.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.label).map(String::as_str).unwrap_or_default();
        let regex_matches = || self.regex.as_ref().is_some_and(|r| r.is_match(value));
        match self.op {
            MatchOp::Equal => value == self.value,
            MatchOp::NotEqual => value != self.value,
            MatchOp::Regex => regex_matches(),
            MatchOp::NotRegex => !regex_matches(),
        }
    }
}

/// The text inside double quotes (the opening one already taken): `\"` and `\\` escaped,
/// nothing after the closing quote.
fn unquote(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                return if chars.as_str().trim().is_empty() {
                    Ok(out)
                } else {
                    Err(format!("unexpected {:?} after the closing quote", chars.as_str().trim()))
                };
            }
            '\\' => match chars.next() {
                Some('n') => out.push('\n'),
                Some(c) => out.push(c),
                None => break,
            },
            c => out.push(c),
        }
    }
    Err("the quoted value is not closed".into())
}

/// The rules file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    rules: Vec<RuleFile>,
}

/// One rule, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: Spanned<String>,
    #[serde(default)]
    #[allow(dead_code, reason = "documentation for people; read by nothing")]
    description: Option<String>,
    #[serde(default)]
    matchers: Vec<Spanned<String>>,
    runbook: Spanned<String>,
    #[serde(default)]
    target: Option<Spanned<String>>,
    #[serde(default)]
    params: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    cooldown: Option<Spanned<String>>,
}

impl AlertRules {
    /// Reads and validates a rules file.
    pub fn load(path: &std::path::Path) -> Result<AlertRules, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("reading the alert rules {}: {e}", path.display()))?;
        AlertRules::parse(&path.display().to_string(), &text)
    }

    /// Parses and validates a rules file; every problem is reported as `file:line:column:
    /// field: message`, one per line.
    pub fn parse(file: &str, text: &str) -> Result<AlertRules, String> {
        let mut options = serde_saphyr::Options::default();
        // YAML 1.2 booleans, and one-line errors, as for runbooks.
        options.strict_booleans = true;
        options.with_snippet = false;
        let parsed: RulesFile = serde_saphyr::from_str_with_options(text, options).map_err(|e| {
            use serde_saphyr::MessageFormatter;
            let message = serde_saphyr::UserMessageFormatter.format_message(&e).into_owned();
            match e.location() {
                Some(at) => format!("{file}:{}:{}: {message}", at.line(), at.column()),
                None => format!("{file}: {message}"),
            }
        })?;
        let mut problems = Vec::new();
        let mut rules = Vec::new();
        let mut names = BTreeSet::new();
        let env = baton_core::template::environment();
        for (i, rule) in parsed.rules.into_iter().enumerate() {
            let at = |s: &serde_saphyr::Location| format!("{file}:{}:{}", s.line(), s.column());
            let mut problem = |loc: &serde_saphyr::Location, field: String, message: String| {
                problems.push(format!("{}: rules[{i}].{field}: {message}", at(loc)));
            };
            let name = rule.name.value.clone();
            if !valid_name(&name) {
                problem(
                    &rule.name.referenced,
                    "name".into(),
                    format!("{name:?} must be lowercase letters, digits and '-'"),
                );
            } else if !names.insert(name.clone()) {
                problem(&rule.name.referenced, "name".into(), format!("{name:?} is used by an earlier rule"));
            }
            if !valid_name(&rule.runbook.value) {
                let rb = &rule.runbook.value;
                problem(&rule.runbook.referenced, "runbook".into(), format!("{rb:?} is not a runbook name"));
            }
            if rule.matchers.is_empty() {
                let message =
                    "a rule needs at least one matcher (a rule for every alert is too easy to write by mistake)";
                problem(&rule.name.referenced, "matchers".into(), message.into());
            }
            let mut matchers = Vec::new();
            for (j, m) in rule.matchers.iter().enumerate() {
                match Matcher::parse(&m.value) {
                    Ok(m) => matchers.push(m),
                    Err(e) => problem(&m.referenced, format!("matchers[{j}]"), e),
                }
            }
            let mut check_template = |field: String, source: &Spanned<String>| {
                let checked = env.template_from_str(&source.value).map_err(|e| e.to_string()).and_then(|t| {
                    let unknown: Vec<String> = t
                        .undeclared_variables(false)
                        .into_iter()
                        .filter(|v| !CONTEXT_ROOTS.contains(&v.as_str()))
                        .collect();
                    if unknown.is_empty() {
                        Ok(())
                    } else {
                        Err(format!(
                            "reads {}, which alerts do not have (they have {})",
                            unknown.join(", "),
                            CONTEXT_ROOTS.join(", ")
                        ))
                    }
                });
                if let Err(e) = checked {
                    problem(&source.referenced, field, e);
                }
            };
            if let Some(target) = &rule.target {
                check_template("target".into(), target);
            }
            for (name, source) in &rule.params {
                check_template(format!("params.{name}"), source);
            }
            let cooldown_ms = match &rule.cooldown {
                None => DEFAULT_COOLDOWN_MS,
                Some(c) => match baton_core::duration::parse_duration(&c.value) {
                    Ok(ms) => ms,
                    Err(e) => {
                        problem(&c.referenced, "cooldown".into(), e.to_string());
                        0
                    }
                },
            };
            rules.push(AlertRule {
                name,
                matchers,
                runbook: rule.runbook.value,
                target: rule.target.map(|t| t.value),
                params: rule.params.into_iter().map(|(k, v)| (k, v.value)).collect(),
                cooldown_ms,
            });
        }
        if problems.is_empty() { Ok(AlertRules { rules }) } else { Err(problems.join("\n")) }
    }

    /// The first rule whose matchers all hold for `labels`.
    pub fn find(&self, labels: &BTreeMap<String, String>) -> Option<&AlertRule> {
        self.rules.iter().find(|r| r.matchers.iter().all(|m| m.matches(labels)))
    }
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// What a rule makes of one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    /// The dedupe key: `RUNBOOK/TARGET`.
    pub key: String,
    /// The rendered params.
    pub params: BTreeMap<String, serde_json::Value>,
}

impl AlertRule {
    /// Renders the rule's target and params for an alert with context `ctx` (see
    /// [`alert_context`]) and fingerprint `fingerprint`.
    pub fn render(&self, ctx: &serde_json::Value, fingerprint: &str) -> Result<Rendered, String> {
        let render =
            |field: &str, source: &str| render_text(source, ctx).map_err(|e| format!("{field}: {}", e.message));
        let target = match &self.target {
            Some(t) => render("target", t)?.trim().to_string(),
            None => fingerprint.to_string(),
        };
        if target.is_empty() {
            return Err("target: rendered empty".into());
        }
        if target.len() > MAX_TARGET || target.chars().any(char::is_control) {
            return Err(format!("target: must be at most {MAX_TARGET} bytes without control characters"));
        }
        let params = self
            .params
            .iter()
            .map(|(name, source)| {
                Ok((name.clone(), serde_json::Value::String(render(&format!("params.{name}"), source)?)))
            })
            .collect::<Result<_, String>>()?;
        Ok(Rendered { key: format!("{}/{target}", self.runbook), params })
    }
}

/// Alertmanager's webhook payload, version 4 (the parts Baton reads).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `"4"`.
    pub version: String,
    /// The receiver's name.
    #[serde(default)]
    pub receiver: String,
    /// The alerts of the group.
    pub alerts: Vec<Alert>,
    /// Labels the group is keyed by.
    #[serde(default)]
    pub group_labels: BTreeMap<String, String>,
    /// Labels every alert has.
    #[serde(default)]
    pub common_labels: BTreeMap<String, String>,
    /// Annotations every alert has.
    #[serde(default)]
    pub common_annotations: BTreeMap<String, String>,
    /// Alertmanager's URL.
    #[serde(default, rename = "externalURL")]
    pub external_url: String,
}

/// One alert of a notification.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    /// `firing` or `resolved`.
    pub status: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its annotations.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// When it started (RFC 3339).
    #[serde(default)]
    pub starts_at: String,
    /// When it ended (RFC 3339; zero time while firing).
    #[serde(default)]
    pub ends_at: String,
    /// The alerting rule's URL.
    #[serde(default, rename = "generatorURL")]
    pub generator_url: String,
    /// Alertmanager's fingerprint of its labels.
    #[serde(default)]
    pub fingerprint: String,
}

impl Alert {
    /// The alert's fingerprint: Alertmanager's, or (for senders without one) a hash of its labels.
    pub fn fingerprint(&self) -> String {
        if !self.fingerprint.is_empty() {
            return self.fingerprint.clone();
        }
        let mut hash = Sha256::new();
        for (k, v) in &self.labels {
            hash.update(k.as_bytes());
            hash.update([0xff]);
            hash.update(v.as_bytes());
            hash.update([0xff]);
        }
        hex::encode(&hash.finalize()[..8])
    }

    fn name(&self) -> &str {
        self.labels.get("alertname").map(String::as_str).unwrap_or("(unnamed)")
    }
}

/// The template context of one alert of a notification.
pub fn alert_context(n: &Notification, alert: &Alert) -> serde_json::Value {
    serde_json::json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "alert": {
            "status": alert.status,
            "fingerprint": alert.fingerprint(),
            "starts_at": alert.starts_at,
            "ends_at": alert.ends_at,
            "generator_url": alert.generator_url,
        },
        "common_labels": n.common_labels,
        "common_annotations": n.common_annotations,
        "group_labels": n.group_labels,
        "receiver": n.receiver,
        "external_url": n.external_url,
    })
}

/// Whether an `Authorization` header carries the token: `Bearer TOKEN`, or basic auth with the
/// token as the password (any user name).
pub fn authorized(token: &str, authorization: Option<&str>) -> bool {
    let Some(value) = authorization.map(str::trim) else { return false };
    let (scheme, credentials) = value.split_once(' ').unwrap_or((value, ""));
    let credentials = credentials.trim();
    if scheme.eq_ignore_ascii_case("bearer") {
        return tokens_match(token, credentials);
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD.decode(credentials).ok();
        let password = decoded.as_deref().and_then(|d| std::str::from_utf8(d).ok()).and_then(|d| d.split_once(':'));
        return password.is_some_and(|(_, password)| tokens_match(token, password));
    }
    false
}

/// The alerts of one dedupe key in a notification.
#[derive(Debug, Default)]
struct KeyAlerts {
    firing: Vec<String>,
    resolved: Vec<String>,
    start: Option<AlertStart>,
    names: BTreeSet<String>,
}

/// `POST /hooks/alertmanager`: one notification. Answers 200 with what happened to each key
/// (Alertmanager ignores the body; people reading logs do not), 4xx for a request that is not
/// an authentic version-4 notification, 503 when the cluster cannot record it (Alertmanager
/// then retries, and the retry is deduplicated like any repeated alert).
pub(super) async fn receive(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let hooks = &api.hooks;
    let Some(token) = &hooks.config.alertmanager.token else { return hooks.not_configured(Hook::Alertmanager) };
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    if !authorized(token.expose(), authorization) {
        let why = "missing or wrong credentials: send the token as a bearer token or as the basic-auth password";
        return hooks.refuse("alertmanager", StatusCode::UNAUTHORIZED, why);
    }
    let notification: Notification = match serde_json::from_slice(&body) {
        Ok(n) => n,
        Err(e) => return hooks.refuse("alertmanager", StatusCode::BAD_REQUEST, format!("malformed notification: {e}")),
    };
    if notification.version != "4" {
        let why = format!("webhook payload version {:?} is not supported; Baton reads version 4", notification.version);
        return hooks.refuse("alertmanager", StatusCode::BAD_REQUEST, why);
    }
    let mut keys: BTreeMap<String, KeyAlerts> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut unmatched = 0u64;
    for alert in &notification.alerts {
        hooks.counters.alerts.fetch_add(1, Ordering::Relaxed);
        let fingerprint = alert.fingerprint();
        let firing = match alert.status.as_str() {
            "firing" => true,
            "resolved" => false,
            other => {
                errors.push(format!("alert {} ({fingerprint}): unknown status {other:?}", alert.name()));
                continue;
            }
        };
        let Some(rule) = hooks.rules.find(&alert.labels) else {
            unmatched += 1;
            continue;
        };
        let rendered = match rule.render(&alert_context(&notification, alert), &fingerprint) {
            Ok(r) => r,
            Err(e) => {
                errors.push(format!("alert {} ({fingerprint}): rule {}: {e}", alert.name(), rule.name));
                continue;
            }
        };
        let entry = keys.entry(rendered.key.clone()).or_default();
        entry.names.insert(alert.name().to_string());
        if !firing {
            entry.resolved.push(fingerprint);
            continue;
        }
        entry.firing.push(fingerprint.clone());
        if entry.start.is_some() {
            continue;
        }
        // Checked here so a bad rule is reported with the alert; apply checks again.
        let valid = api.node.read(|s| match s.runbooks.get(&rule.runbook) {
            None => Err(format!("runbook {:?} does not exist", rule.runbook)),
            Some(entry) => entry.current().resolve_params(&rendered.params).map(|_| ()).map_err(|e| e.to_string()),
        });
        match valid {
            Ok(()) => {
                entry.start = Some(AlertStart {
                    rule: rule.name.clone(),
                    run_id: crate::api::new_run_id(),
                    runbook: rule.runbook.clone(),
                    params: rendered.params,
                    cooldown_ms: rule.cooldown_ms,
                })
            }
            Err(e) => errors.push(format!("alert {} ({fingerprint}): rule {}: {e}", alert.name(), rule.name)),
        }
    }
    hooks.counters.alerts_unmatched.fetch_add(unmatched, Ordering::Relaxed);
    let by = Actor { principal: "alertmanager".into(), via: "alertmanager".into() };
    let (mut started, mut joined, mut resolved) = (Vec::new(), Vec::new(), Vec::new());
    for (key, alerts) in keys {
        let firing = alerts.firing.len() as u64;
        let has_resolved = !alerts.resolved.is_empty();
        let summary = alerts.names.into_iter().collect::<Vec<_>>().join(", ");
        let op = Op::AlertNotified {
            key: key.clone(),
            firing: alerts.firing,
            resolved: alerts.resolved,
            start: alerts.start,
            by: by.clone(),
            summary,
        };
        match api.propose(op).await {
            Ok(Reply::Run { run_id, deduplicated: false }) => {
                hooks.counters.alert_runs.fetch_add(1, Ordering::Relaxed);
                tracing::info!(key, run = run_id, "an alert started a run");
                started.push(serde_json::json!({ "key": key, "run_id": run_id }));
            }
            Ok(Reply::Run { run_id, deduplicated: true }) => {
                hooks.counters.alerts_joined.fetch_add(firing, Ordering::Relaxed);
                joined.push(serde_json::json!({ "key": key, "run_id": run_id }));
            }
            Ok(_) => {}
            Err(ApiError::Rejected(why)) => errors.push(format!("{key}: {why}")),
            Err(e) => {
                tracing::warn!(key, "could not record an alert notification: {e}");
                return (StatusCode::SERVICE_UNAVAILABLE, format!("the cluster could not record the alerts: {e}\n"))
                    .into_response();
            }
        }
        if has_resolved {
            let run = api.node.read(|s| {
                let run_id = s.alert_runs.get(&key).map(|e| e.run_id.clone())?;
                s.runs.get(&run_id).map(|r| (run_id, r.state.as_str()))
            });
            if let Some((run_id, state)) = run {
                resolved.push(serde_json::json!({ "key": key, "run_id": run_id, "run_state": state }));
            }
        }
    }
    hooks.counters.alert_errors.fetch_add(errors.len() as u64, Ordering::Relaxed);
    for e in &errors {
        tracing::warn!("alert not turned into a run: {e}");
    }
    Json(serde_json::json!({
        "started": started,
        "joined": joined,
        "resolved": resolved,
        "unmatched": unmatched,
        "errors": errors,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULES: &str = r#"
rules:
  - name: disk-full
    description: Clean the disk of the host that is full.
    matchers: ['alertname = "DiskFull"', 'severity =~ "critical|page"', "team != db"]
    runbook: clean-disk
    target: "{{ labels.instance }}"
    params:
      host: "{{ labels.instance }}"
      path: "{{ annotations.mountpoint | default('/var') }}"
    cooldown: 30m
  - name: anything-else-down
    matchers: ['alertname =~ ".*Down"']
    runbook: restart
    params: { service: "{{ labels.job }}" }
"#;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn matchers_follow_alertmanagers_syntax() {
        let m = Matcher::parse(r#"alertname="DiskFull""#).unwrap();
        assert_eq!((m.label.as_str(), m.op, m.value.as_str()), ("alertname", MatchOp::Equal, "DiskFull"));
        assert!(m.matches(&labels(&[("alertname", "DiskFull")])));
        assert!(!m.matches(&labels(&[("alertname", "DiskFullish")])));
        let re = Matcher::parse("severity =~ critical|page").unwrap();
        assert!(re.matches(&labels(&[("severity", "page")])));
        assert!(!re.matches(&labels(&[("severity", "paged")])), "anchored like Alertmanager's");
        let not_re = Matcher::parse(r#"env !~ "dev|staging""#).unwrap();
        assert!(not_re.matches(&labels(&[("env", "prod")])) && not_re.matches(&labels(&[])));
        let ne = Matcher::parse(r#"team != "db""#).unwrap();
        assert!(ne.matches(&labels(&[])) && !ne.matches(&labels(&[("team", "db")])));
        let empty = Matcher::parse(r#"team="""#).unwrap();
        assert!(empty.matches(&labels(&[])), "a missing label is the empty string");
        let escaped = Matcher::parse(r#"msg = "say \"hi\"""#).unwrap();
        assert_eq!(escaped.value, "say \"hi\"");
        for bad in ["= x", "9x = y", "x ~ y", r#"x = "open"#, r#"x = "a" b"#, "x =~ ("] {
            assert!(Matcher::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_first_matching_rule_renders_the_key_and_params() {
        let rules = AlertRules::parse("rules.yaml", RULES).unwrap();
        assert_eq!(rules.rules.len(), 2);
        assert_eq!(rules.rules[0].cooldown_ms, 30 * 60 * 1000);
        assert_eq!(rules.rules[1].cooldown_ms, DEFAULT_COOLDOWN_MS);
        let disk = labels(&[("alertname", "DiskFull"), ("severity", "critical"), ("instance", "web-1")]);
        let rule = rules.find(&disk).unwrap();
        assert_eq!(rule.name, "disk-full");
        let notification: Notification = serde_json::from_value(serde_json::json!({
            "version": "4", "receiver": "baton", "status": "firing", "externalURL": "http://am",
            "alerts": [{ "status": "firing", "labels": disk, "annotations": { "mountpoint": "/data" }, "fingerprint": "f1" }],
        }))
        .unwrap();
        let alert = &notification.alerts[0];
        let ctx = alert_context(&notification, alert);
        let rendered = rule.render(&ctx, &alert.fingerprint()).unwrap();
        assert_eq!(rendered.key, "clean-disk/web-1");
        assert_eq!(rendered.params["host"], "web-1");
        assert_eq!(rendered.params["path"], "/data");
        // Not for the db team, and not for other severities: the next rule, or none.
        let db = labels(&[("alertname", "DiskFull"), ("severity", "critical"), ("team", "db")]);
        assert!(rules.find(&db).is_none());
        let down = labels(&[("alertname", "NodeDown"), ("job", "api")]);
        let rule = rules.find(&down).unwrap();
        assert_eq!(rule.name, "anything-else-down");
        // Without a target, each alert is its own target; a missing label is an error.
        let rendered = rule.render(&serde_json::json!({ "labels": down }), "fp9").unwrap();
        assert_eq!(rendered.key, "restart/fp9");
        let err = rule.render(&serde_json::json!({ "labels": {} }), "fp9").unwrap_err();
        assert!(err.starts_with("params.service: undefined value"), "{err}");
    }

    #[test]
    fn bad_rules_are_reported_with_their_location() {
        let text = r#"rules:
  - name: Bad_Name
    matchers: ['alertname = "X"', 'oops']
    runbook: ok
    params: { a: "{{ params.a }}", b: "{{ labels.x " }
    cooldown: soon
  - name: ok
    runbook: ok
    matchers: ['a = "b"']
  - name: ok
    runbook: ok
    matchers: []
"#;
        let err = AlertRules::parse("rules.yaml", text).unwrap_err();
        let lines: Vec<&str> = err.lines().collect();
        assert!(lines.iter().any(|l| l.starts_with("rules.yaml:2:") && l.contains("rules[0].name")), "{err}");
        assert!(lines.iter().any(|l| l.starts_with("rules.yaml:3:") && l.contains("rules[0].matchers[1]")), "{err}");
        assert!(lines.iter().any(|l| l.starts_with("rules.yaml:5:") && l.contains("params.a: reads params")), "{err}");
        assert!(lines.iter().any(|l| l.starts_with("rules.yaml:5:") && l.contains("rules[0].params.b")), "{err}");
        assert!(lines.iter().any(|l| l.starts_with("rules.yaml:6:") && l.contains("rules[0].cooldown")), "{err}");
        assert!(
            lines.iter().any(|l| l.starts_with("rules.yaml:10:") && l.contains("used by an earlier rule")),
            "{err}"
        );
        assert!(lines.iter().any(|l| l.contains("rules[2].matchers: a rule needs at least one matcher")), "{err}");
        let unknown = AlertRules::parse("r.yaml", "rules:\n  - name: a\n    runbok: x\n").unwrap_err();
        assert!(unknown.starts_with("r.yaml:") && unknown.contains("runbok"), "{unknown}");
    }

    #[test]
    fn credentials_are_a_bearer_token_or_the_basic_auth_password() {
        assert!(authorized("t0k", Some("Bearer t0k")));
        assert!(authorized("t0k", Some("bearer  t0k ")));
        assert!(!authorized("t0k", Some("Bearer t0kk")));
        let basic = base64::engine::general_purpose::STANDARD.encode("alertmanager:t0k");
        assert!(authorized("t0k", Some(&format!("Basic {basic}"))));
        let wrong = base64::engine::general_purpose::STANDARD.encode("t0k:nope");
        assert!(!authorized("t0k", Some(&format!("Basic {wrong}"))));
        assert!(!authorized("t0k", Some("Basic !!!")));
        assert!(!authorized("t0k", Some("t0k")));
        assert!(!authorized("t0k", None));
    }

    #[test]
    fn alerts_without_a_fingerprint_get_one_from_their_labels() {
        let alert = |labels: serde_json::Value| -> Alert {
            serde_json::from_value(serde_json::json!({ "status": "firing", "labels": labels })).unwrap()
        };
        let a = alert(serde_json::json!({ "alertname": "X", "instance": "a" }));
        let b = alert(serde_json::json!({ "instance": "a", "alertname": "X" }));
        let c = alert(serde_json::json!({ "alertname": "X", "instance": "b" }));
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
    }
}
