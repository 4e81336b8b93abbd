//! Chat-ops and alert hooks on the HTTP listener: Slack and Mattermost slash commands with
//! in-chat approvals, Alertmanager's webhook, and chat notifications of run changes.
//!
//! Every request is authenticated before its body is parsed: a Slack request by its signature
//! over the raw body ([`slack`]), a Mattermost one by its token ([`mattermost`]), an
//! Alertmanager one by its bearer token or basic auth ([`alertmanager`]). A forged, stale,
//! replayed, oversized or malformed request gets a 4xx with a short reason and starts nothing.
//! A hook whose secret is not configured answers 404 (and says so in the log once).
//!
//! What a request asks for then goes through the same paths as the gRPC API: handlers
//! validate, propose a command and answer from the applied state. Commands are parsed and
//! carried out platform-neutrally in [`commands`]; [`notify`] follows runs and posts their
//! changes back to chat (to a command's `response_url`, and from the leader to the configured
//! incoming webhooks); [`outbound`] is the one HTTP(S) client for those posts.

pub mod alertmanager;
pub mod commands;
pub mod mattermost;
pub mod notify;
pub mod outbound;
pub mod slack;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::Api;

/// Largest chat request body accepted (Slack and Mattermost send a few KiB at most).
pub const MAX_CHAT_BODY: usize = 64 * 1024;
/// Largest Alertmanager notification accepted (a group of many alerts with annotations).
pub const MAX_ALERT_BODY: usize = 4 * 1024 * 1024;

/// The routes of every hook, each with its body limit (an oversized body is answered 413).
pub fn router() -> Router<Api> {
    let chat = Router::new()
        .route("/hooks/slack/commands", post(slack::commands))
        .route("/hooks/slack/interactive", post(slack::interactive))
        .route("/hooks/mattermost/commands", post(mattermost::commands))
        .route("/hooks/mattermost/actions", post(mattermost::actions))
        .layer(DefaultBodyLimit::max(MAX_CHAT_BODY));
    let alerts = Router::new()
        .route("/hooks/alertmanager", post(alertmanager::receive))
        .layer(DefaultBodyLimit::max(MAX_ALERT_BODY));
    chat.merge(alerts)
}

/// A secret from the configuration; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for computing or comparing a signature.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The chat a request came from or a message goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Platform {
    /// Slack.
    Slack,
    /// Mattermost.
    Mattermost,
}

impl Platform {
    /// `slack` or `mattermost`: the `via` of what its users do.
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Slack => "slack",
            Platform::Mattermost => "mattermost",
        }
    }

    /// Parses `slack` or `mattermost`.
    pub fn parse(text: &str) -> Option<Platform> {
        match text {
            "slack" => Some(Platform::Slack),
            "mattermost" => Some(Platform::Mattermost),
            _ => None,
        }
    }
}

/// The hooks' configuration, validated.
#[derive(Debug, Clone, Default)]
pub struct HooksConfig {
    /// The Slack app.
    pub slack: SlackConfig,
    /// The Mattermost integration.
    pub mattermost: MattermostConfig,
    /// The Alertmanager receiver.
    pub alertmanager: AlertmanagerConfig,
    /// Which run changes are posted to the incoming webhooks.
    pub notify: NotifyConfig,
}

/// The Slack app's settings.
#[derive(Debug, Clone, Default)]
pub struct SlackConfig {
    /// The app's signing secret (`BATON_SLACK_SIGNING_SECRET`); without it the Slack hooks
    /// answer 404.
    pub signing_secret: Option<Secret>,
    /// Slack user id (`U024BE7LH`) -> the principal that user acts as.
    pub users: BTreeMap<String, String>,
    /// An incoming webhook URL for notifications and approval prompts.
    pub webhook: Option<String>,
}

/// The Mattermost integration's settings.
#[derive(Debug, Clone, Default)]
pub struct MattermostConfig {
    /// The slash command's token (`BATON_MATTERMOST_TOKEN`); without it the Mattermost hooks
    /// answer 404. It also keys the signatures of Approve/Deny buttons.
    pub token: Option<Secret>,
    /// Mattermost user id -> the principal that user acts as.
    pub users: BTreeMap<String, String>,
    /// An incoming webhook URL for notifications and approval prompts.
    pub webhook: Option<String>,
    /// The URL Mattermost posts button clicks to (Baton's `/hooks/mattermost/actions` as the
    /// Mattermost server reaches it); without it, approval prompts have no buttons.
    pub action_url: Option<String>,
}

/// The Alertmanager receiver's settings.
#[derive(Debug, Clone, Default)]
pub struct AlertmanagerConfig {
    /// The bearer token (or basic-auth password) Alertmanager sends
    /// (`BATON_ALERTMANAGER_TOKEN`); without it the hook answers 404.
    pub token: Option<Secret>,
    /// The rules file (YAML), loaded and validated at start.
    pub rules: Option<PathBuf>,
}

/// Which run changes are posted to the incoming webhooks.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// The changes posted.
    pub events: Vec<notify::NotifyEvent>,
    /// Only runs of these runbooks (empty: every runbook).
    pub runbooks: Vec<String>,
}

impl Default for NotifyConfig {
    fn default() -> NotifyConfig {
        NotifyConfig { events: notify::NotifyEvent::ALL.to_vec(), runbooks: Vec::new() }
    }
}

/// `[slack]` in the server's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackFile {
    /// The app's signing secret (`BATON_SLACK_SIGNING_SECRET` overrides it).
    pub signing_secret: Option<String>,
    /// An incoming webhook URL for notifications and approval prompts.
    pub webhook: Option<String>,
    /// Slack user id -> principal.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

/// `[mattermost]` in the server's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MattermostFile {
    /// The slash command's token (`BATON_MATTERMOST_TOKEN` overrides it).
    pub token: Option<String>,
    /// An incoming webhook URL for notifications and approval prompts.
    pub webhook: Option<String>,
    /// The URL Mattermost posts button clicks to.
    pub action_url: Option<String>,
    /// Mattermost user id -> principal.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
}

/// `[alertmanager]` in the server's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertmanagerFile {
    /// Bearer token or basic-auth password (`BATON_ALERTMANAGER_TOKEN` overrides it).
    pub token: Option<String>,
    /// The rules file (YAML).
    pub rules: Option<PathBuf>,
}

/// `[notify]` in the server's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyFile {
    /// The changes posted: `started`, `waiting`, `succeeded`, `failed`, `cancelled`,
    /// `needs_attention` (default: all).
    pub events: Option<Vec<String>>,
    /// Only runs of these runbooks (default: every runbook).
    #[serde(default)]
    pub runbooks: Vec<String>,
}

/// The environment variables secrets are read from.
pub const SECRET_ENV: [&str; 3] = ["BATON_SLACK_SIGNING_SECRET", "BATON_MATTERMOST_TOKEN", "BATON_ALERTMANAGER_TOKEN"];

impl HooksConfig {
    /// The configuration from the config file's sections (any may be absent).
    pub fn from_file(
        slack: Option<SlackFile>,
        mattermost: Option<MattermostFile>,
        alertmanager: Option<AlertmanagerFile>,
        notify: Option<NotifyFile>,
    ) -> Result<HooksConfig, String> {
        let (slack, mattermost) = (slack.unwrap_or_default(), mattermost.unwrap_or_default());
        let (alertmanager, notify) = (alertmanager.unwrap_or_default(), notify.unwrap_or_default());
        let events = match notify.events {
            None => notify::NotifyEvent::ALL.to_vec(),
            Some(names) => names.iter().map(|n| notify::NotifyEvent::parse(n)).collect::<Result<_, _>>()?,
        };
        Ok(HooksConfig {
            slack: SlackConfig {
                signing_secret: non_empty(slack.signing_secret).map(Secret),
                users: slack.users,
                webhook: non_empty(slack.webhook),
            },
            mattermost: MattermostConfig {
                token: non_empty(mattermost.token).map(Secret),
                users: mattermost.users,
                webhook: non_empty(mattermost.webhook),
                action_url: non_empty(mattermost.action_url),
            },
            alertmanager: AlertmanagerConfig {
                token: non_empty(alertmanager.token).map(Secret),
                rules: alertmanager.rules,
            },
            notify: NotifyConfig { events, runbooks: notify.runbooks },
        })
    }

    /// Takes the secrets set in the environment ([`SECRET_ENV`]; an empty value counts as
    /// unset) over those of the file. `get` reads one variable (`std::env::var(..).ok()`).
    pub fn secrets_from_env(&mut self, get: impl Fn(&str) -> Option<String>) {
        let [slack, mattermost, alertmanager] = SECRET_ENV.map(|name| non_empty(get(name)).map(Secret));
        self.slack.signing_secret = slack.or(self.slack.signing_secret.take());
        self.mattermost.token = mattermost.or(self.mattermost.token.take());
        self.alertmanager.token = alertmanager.or(self.alertmanager.token.take());
    }

    /// Maps a chat user to a principal (`--chat-user PLATFORM:USER=PRINCIPAL`).
    pub fn add_user(&mut self, platform: Platform, user_id: String, principal: String) {
        let users = match platform {
            Platform::Slack => &mut self.slack.users,
            Platform::Mattermost => &mut self.mattermost.users,
        };
        users.insert(user_id, principal);
    }

    /// Checks what can be checked without I/O: URLs, principals, user ids.
    pub fn validate(&self) -> Result<(), String> {
        let urls = [
            ("slack.webhook", &self.slack.webhook),
            ("mattermost.webhook", &self.mattermost.webhook),
            ("mattermost.action_url", &self.mattermost.action_url),
        ];
        for (field, url) in urls {
            if let Some(url) = url {
                outbound::check_url(url).map_err(|e| format!("{field}: {e}"))?;
            }
        }
        for (platform, users) in [("slack", &self.slack.users), ("mattermost", &self.mattermost.users)] {
            for (user, principal) in users {
                if user.is_empty() || user.len() > 64 || !user.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!("{platform}.users: {user:?} is not a {platform} user id (letters and digits)"));
                }
                super::runs::actor(principal, platform, true)
                    .map_err(|e| format!("{platform}.users.{user}: the principal {e}"))?;
            }
        }
        Ok(())
    }
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.trim().is_empty())
}

/// The hooks at run time: configuration, alert rules, what has been seen, counters.
pub struct Hooks {
    /// The configuration.
    pub config: HooksConfig,
    /// The Alertmanager rules (empty without a rules file).
    pub rules: alertmanager::AlertRules,
    /// Slack signatures seen within the replay window.
    pub(crate) replay: slack::ReplayCache,
    /// The outgoing HTTP(S) client.
    pub(crate) outbound: outbound::Outbound,
    /// Counters for `/metrics`.
    pub(crate) counters: Counters,
    /// Which unconfigured hooks have been reported in the log.
    warned: [AtomicBool; 3],
    /// Cancelled when the server stops: tasks following runs for chat end with it.
    pub(crate) shutdown: CancellationToken,
}

impl fmt::Debug for Hooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hooks").field("config", &self.config).field("rules", &self.rules.rules.len()).finish()
    }
}

/// What the hooks did, counted on this node since it started.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests refused (bad signature or token, stale, replayed, malformed).
    pub refused: AtomicU64,
    /// Chat commands carried out.
    pub commands: AtomicU64,
    /// Alerts received (each alert of each notification).
    pub alerts: AtomicU64,
    /// Alerts no rule matched.
    pub alerts_unmatched: AtomicU64,
    /// Runs started by alerts.
    pub alert_runs: AtomicU64,
    /// Firing alerts that joined a run going or cooling down instead of starting one.
    pub alerts_joined: AtomicU64,
    /// Alerts a rule matched but that could not be turned into a run (render or params).
    pub alert_errors: AtomicU64,
    /// Chat messages posted.
    pub posted: AtomicU64,
    /// Chat posts that failed.
    pub post_failures: AtomicU64,
}

/// A hook, for "not configured" answers.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Hook {
    Slack = 0,
    Mattermost = 1,
    Alertmanager = 2,
}

impl Hooks {
    /// The hooks of `config`: loads and validates the alert rules file.
    pub fn new(config: HooksConfig) -> Result<Hooks, String> {
        config.validate()?;
        let rules = match &config.alertmanager.rules {
            None => alertmanager::AlertRules::default(),
            Some(path) => alertmanager::AlertRules::load(path)?,
        };
        if config.alertmanager.token.is_none() && !rules.rules.is_empty() {
            tracing::warn!(
                "alert rules are loaded but no Alertmanager token is set (BATON_ALERTMANAGER_TOKEN): /hooks/alertmanager answers 404"
            );
        }
        Ok(Hooks {
            config,
            rules,
            replay: slack::ReplayCache::new(slack::REPLAY_CAPACITY),
            outbound: outbound::Outbound::new(),
            counters: Counters::default(),
            warned: Default::default(),
            shutdown: CancellationToken::new(),
        })
    }

    /// The principal a chat user acts as, if the configuration maps them.
    pub fn principal(&self, platform: Platform, user_id: &str) -> Option<&str> {
        let users = match platform {
            Platform::Slack => &self.config.slack.users,
            Platform::Mattermost => &self.config.mattermost.users,
        };
        users.get(user_id).map(String::as_str)
    }

    /// The 404 of a hook whose secret is not configured; logged once per hook.
    pub(crate) fn not_configured(&self, hook: Hook) -> Response {
        let (name, what) = match hook {
            Hook::Slack => ("slack", "the Slack signing secret (BATON_SLACK_SIGNING_SECRET or [slack] signing_secret)"),
            Hook::Mattermost => ("mattermost", "the Mattermost token (BATON_MATTERMOST_TOKEN or [mattermost] token)"),
            Hook::Alertmanager => {
                ("alertmanager", "the Alertmanager token (BATON_ALERTMANAGER_TOKEN or [alertmanager] token)")
            }
        };
        if !self.warned[hook as usize].swap(true, Ordering::Relaxed) {
            tracing::warn!("a request came for the {name} hook, which is off: {what} is not configured");
        }
        (StatusCode::NOT_FOUND, format!("the {name} hook is not configured on this server\n")).into_response()
    }

    /// A refusal: a 4xx with a short reason, counted and logged.
    pub(crate) fn refuse(&self, hook: &str, status: StatusCode, reason: impl fmt::Display) -> Response {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        tracing::info!(hook, status = status.as_u16(), "refused a request: {reason}");
        (status, format!("{reason}\n")).into_response()
    }

    /// The hooks' counters in Prometheus text format.
    pub fn metrics(&self) -> String {
        let c = &self.counters;
        let mut out = String::new();
        for (name, help, value) in [
            (
                "baton_hook_requests_refused_total",
                "Hook requests refused (signature, token, stale, replayed, malformed).",
                &c.refused,
            ),
            ("baton_chat_commands_total", "Chat commands carried out.", &c.commands),
            ("baton_alerts_received_total", "Alerts received from Alertmanager.", &c.alerts),
            ("baton_alerts_unmatched_total", "Alerts no rule matched.", &c.alerts_unmatched),
            ("baton_alert_runs_started_total", "Runs started by alerts.", &c.alert_runs),
            ("baton_alerts_joined_total", "Firing alerts that joined a run going or cooling down.", &c.alerts_joined),
            (
                "baton_alert_errors_total",
                "Matched alerts that could not start a run (render or params).",
                &c.alert_errors,
            ),
            ("baton_chat_posts_total", "Messages posted to chat.", &c.posted),
            ("baton_chat_post_failures_total", "Chat posts that failed.", &c.post_failures),
        ] {
            let value = value.load(Ordering::Relaxed);
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}\n"));
        }
        out
    }
}

/// The hooks' background work until `shutdown`: the leader's notifier; then the tasks that
/// follow runs for chat are stopped too.
pub async fn run(api: Api, shutdown: CancellationToken) {
    // Cancels the hooks' token when this task ends, or is aborted by the server's stop.
    let _stop = api.hooks.shutdown.clone().drop_guard();
    notify::run_notifier(api, shutdown.clone()).await;
    shutdown.cancelled().await;
}

/// An HMAC-SHA256 keyed with `key`.
pub fn hmac_sha256(key: &[u8]) -> Hmac<sha2::Sha256> {
    // HMAC takes a key of any length: new_from_slice cannot fail.
    Hmac::<sha2::Sha256>::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key"))
}

/// True when `given` equals `expected`, compared in constant time (both are first reduced to
/// an HMAC, so neither their contents nor their lengths leak through timing).
pub fn tokens_match(expected: &str, given: &str) -> bool {
    let digest = |text: &str| {
        let mut mac = hmac_sha256(b"baton-token-compare");
        mac.update(text.as_bytes());
        mac
    };
    digest(given).verify_slice(&digest(expected).finalize().into_bytes()).is_ok()
}

/// Decodes an `application/x-www-form-urlencoded` body into its fields (a repeated field keeps
/// its last value). `+` is a space; `%XX` a byte; the result must be UTF-8.
pub fn parse_form(body: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the form is not UTF-8".to_string())?;
    let mut fields = BTreeMap::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        fields.insert(decode_component(key)?, decode_component(value)?);
    }
    Ok(fields)
}

fn decode_component(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(byte) = byte else {
                    return Err(format!("bad percent-escape at byte {i} of a form field"));
                };
                out.push(byte);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| "a form field is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_exactly() {
        assert!(tokens_match("abc123", "abc123"));
        assert!(!tokens_match("abc123", "abc124"));
        assert!(!tokens_match("abc123", "abc12"));
        assert!(!tokens_match("abc123", ""));
    }

    #[test]
    fn forms_decode_like_browsers_encode_them() {
        let form = parse_form(b"text=run+web+%22a+b%22&user_id=U1&empty=&flag").unwrap();
        assert_eq!(form["text"], "run web \"a b\"");
        assert_eq!(form["user_id"], "U1");
        assert_eq!(form["empty"], "");
        assert_eq!(form["flag"], "");
        assert_eq!(parse_form(b"t=%E2%9C%85").unwrap()["t"], "\u{2705}");
        assert!(parse_form(b"t=%ZZ").is_err());
        assert!(parse_form(b"t=%4").is_err());
        assert!(parse_form(b"t=%FF").is_err(), "not UTF-8");
    }

    #[test]
    fn secrets_from_the_environment_override_the_file() {
        let file = SlackFile { signing_secret: Some("from-file".into()), ..Default::default() };
        let mut config = HooksConfig::from_file(Some(file), None, None, None).unwrap();
        config.secrets_from_env(|name| (name == "BATON_MATTERMOST_TOKEN").then(|| "mm".to_string()));
        assert_eq!(config.slack.signing_secret.as_ref().map(Secret::expose), Some("from-file"));
        assert_eq!(config.mattermost.token.as_ref().map(Secret::expose), Some("mm"));
        config.secrets_from_env(|name| (name == "BATON_SLACK_SIGNING_SECRET").then(|| "env".to_string()));
        assert_eq!(config.slack.signing_secret.as_ref().map(Secret::expose), Some("env"));
        assert!(!format!("{config:?}").contains("env\""), "secrets never show in Debug");
        config.secrets_from_env(|_| Some("  ".to_string()));
        assert_eq!(config.slack.signing_secret.as_ref().map(Secret::expose), Some("env"), "empty is unset");
    }

    #[test]
    fn bad_configuration_is_refused_with_the_field() {
        let mut config = HooksConfig::default();
        config.slack.webhook = Some("ftp://x".into());
        assert!(config.validate().unwrap_err().starts_with("slack.webhook"));
        let mut config = HooksConfig::default();
        config.add_user(Platform::Slack, "U1".into(), "al ice\u{7}".into());
        assert!(config.validate().unwrap_err().contains("slack.users.U1"));
        let notify = NotifyFile { events: Some(vec!["exploded".into()]), runbooks: vec![] };
        assert!(HooksConfig::from_file(None, None, None, Some(notify)).unwrap_err().contains("exploded"));
    }
}
