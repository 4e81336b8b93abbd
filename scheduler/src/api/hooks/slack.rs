//! Slack: signed slash commands (`POST /hooks/slack/commands`) and the Approve/Deny buttons
//! of approval prompts (`POST /hooks/slack/interactive`).
//!
//! Slack signs every request with the app's signing secret: `X-Slack-Signature` is `v0=` and
//! the hex HMAC-SHA256 of `v0:{X-Slack-Request-Timestamp}:{raw body}`. A request is checked on
//! its raw bytes before anything parses them: the timestamp must be within 5 minutes of now,
//! the signature must match (compared in constant time), and a signature seen before within
//! that window is a replay. Only then is the form read. The replay memory is per node and
//! bounded; while it is full, new requests are refused (429) rather than let a replay through.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::commands::{self, Answer, Caller, ChatCommand};
use super::notify::{Message, ReplyTarget};
use super::{Hook, Platform, outbound, parse_form};
use crate::api::{Api, now_ms};

type HmacSha256 = Hmac<Sha256>;

/// How far a request's timestamp may be from now, in seconds (either way).
pub const MAX_SKEW_SECS: i64 = 5 * 60;
/// Signatures remembered for replay detection (at most; a full memory refuses requests).
pub const REPLAY_CAPACITY: usize = 10_000;
/// The `action_id` of the Approve button.
pub const APPROVE_ACTION: &str = "baton_approve";
/// The `action_id` of the Deny button.
pub const DENY_ACTION: &str = "baton_deny";
/// Longest text of one Block Kit section.
const MAX_SECTION: usize = 2_900;

/// `v0=` + the hex HMAC-SHA256 of `v0:{timestamp}:{body}` keyed with the signing secret.
pub fn signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    format!("v0={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

fn mac(secret: &str, timestamp: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = super::hmac_sha256(secret.as_bytes());
    mac.update(b"v0:");
    mac.update(timestamp.as_bytes());
    mac.update(b":");
    mac.update(body);
    mac
}

/// Why a request's signature is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `X-Slack-Request-Timestamp`.
    #[error("missing X-Slack-Request-Timestamp header")]
    MissingTimestamp,
    /// The timestamp is not a number.
    #[error("X-Slack-Request-Timestamp is not a unix time in seconds")]
    BadTimestamp,
    /// The timestamp is too far from now.
    #[error("stale request: its timestamp is {0} s from now (the limit is {MAX_SKEW_SECS} s)")]
    Stale(i64),
    /// No `X-Slack-Signature`.
    #[error("missing X-Slack-Signature header")]
    MissingSignature,
    /// Not `v0=` and 64 hex digits.
    #[error("X-Slack-Signature is not v0= and 64 hex digits")]
    BadSignature,
    /// The signature does not match the body and timestamp.
    #[error("signature mismatch")]
    Mismatch,
}

/// Checks a request's signature headers against its raw `body` at `now_secs`; returns the
/// request's timestamp. The comparison is constant-time.
pub fn verify(
    secret: &str,
    timestamp: Option<&str>,
    signature: Option<&str>,
    body: &[u8],
    now_secs: i64,
) -> Result<i64, SignatureError> {
    let ts_text = timestamp.ok_or(SignatureError::MissingTimestamp)?.trim();
    let ts: i64 = ts_text.parse().map_err(|_| SignatureError::BadTimestamp)?;
    let given = signature.ok_or(SignatureError::MissingSignature)?.trim();
    let digest = given
        .strip_prefix("v0=")
        .filter(|h| h.len() == 64)
        .and_then(|h| hex::decode(h).ok())
        .ok_or(SignatureError::BadSignature)?;
    let skew = now_secs.saturating_sub(ts);
    if skew.abs() > MAX_SKEW_SECS {
        return Err(SignatureError::Stale(skew));
    }
    mac(secret, ts_text, body).verify_slice(&digest).map_err(|_| SignatureError::Mismatch)?;
    Ok(ts)
}

/// Signatures seen recently: a request signed with one of them is a replay.
#[derive(Debug)]
pub struct ReplayCache {
    /// Signature -> until when it matters (unix seconds: its timestamp plus the skew).
    seen: Mutex<HashMap<String, i64>>,
    capacity: usize,
}

/// What [`ReplayCache::remember`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen before; now remembered.
    First,
    /// Seen before: a replay.
    Again,
    /// The memory is full of signatures that still matter; the request cannot be checked.
    Full,
}

impl ReplayCache {
    /// A memory of at most `capacity` signatures.
    pub fn new(capacity: usize) -> ReplayCache {
        ReplayCache { seen: Mutex::new(HashMap::new()), capacity }
    }

    /// Remembers `signature` until `until_secs` unless it was seen already.
    pub fn remember(&self, signature: &str, until_secs: i64, now_secs: i64) -> Seen {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if seen.get(signature).is_some_and(|until| *until >= now_secs) {
            return Seen::Again;
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, until| *until >= now_secs);
            if seen.len() >= self.capacity {
                return Seen::Full;
            }
        }
        seen.insert(signature.to_string(), until_secs);
        Seen::First
    }
}

/// Checks a Slack request (configured, signed, fresh, not replayed) and reads its form; the
/// error is the answer to send instead.
fn authenticate(api: &Api, headers: &HeaderMap, body: &[u8]) -> Result<BTreeMap<String, String>, Box<Response>> {
    let hooks = &api.hooks;
    let Some(secret) = &hooks.config.slack.signing_secret else {
        return Err(Box::new(hooks.not_configured(Hook::Slack)));
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = now_ms() / 1000;
    let signature = header("x-slack-signature");
    let ts = verify(secret.expose(), header("x-slack-request-timestamp"), signature, body, now)
        .map_err(|e| Box::new(hooks.refuse("slack", StatusCode::UNAUTHORIZED, e)))?;
    // The same signature in upper-case hex is the same request.
    let seen_as = signature.unwrap_or_default().trim().to_ascii_lowercase();
    match hooks.replay.remember(&seen_as, ts.saturating_add(MAX_SKEW_SECS), now) {
        Seen::First => {}
        Seen::Again => {
            let why = "replayed request: this signature was seen already";
            return Err(Box::new(hooks.refuse("slack", StatusCode::CONFLICT, why)));
        }
        Seen::Full => {
            let why = "too many requests to check for replays; retry in a few minutes";
            return Err(Box::new(hooks.refuse("slack", StatusCode::TOO_MANY_REQUESTS, why)));
        }
    }
    parse_form(body)
        .map_err(|e| Box::new(hooks.refuse("slack", StatusCode::BAD_REQUEST, format!("malformed form: {e}"))))
}

/// Slack escapes `&`, `<` and `>` in a command's text.
fn unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")
}

/// `POST /hooks/slack/commands`: a slash command.
pub(super) async fn commands(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match authenticate(&api, &headers, &body) {
        Ok(form) => form,
        Err(refusal) => return *refusal,
    };
    if form.contains_key("ssl_check") {
        return StatusCode::OK.into_response();
    }
    let Some(user_id) = form.get("user_id").filter(|u| !u.is_empty()) else {
        return api.hooks.refuse("slack", StatusCode::BAD_REQUEST, "malformed command: no user_id");
    };
    let reply = form
        .get("response_url")
        .filter(|url| outbound::check_url(url).is_ok())
        .map(|url| ReplyTarget { platform: Platform::Slack, url: url.clone() });
    let principal = api.hooks.principal(Platform::Slack, user_id).map(str::to_string);
    let caller = Caller { platform: Platform::Slack, user_id: user_id.clone(), principal };
    let text = unescape(form.get("text").map(String::as_str).unwrap_or_default());
    let request_id = form.get("trigger_id").filter(|t| !t.is_empty()).cloned();
    let answer = commands::slash(api, caller, &text, reply, request_id).await;
    Json(answer_body(&answer)).into_response()
}

/// The immediate answer to a slash command.
fn answer_body(answer: &Answer) -> serde_json::Value {
    let mut body = message(&Message::text(answer.text.clone()));
    if let Some(object) = body.as_object_mut() {
        object.insert("response_type".into(), if answer.public { "in_channel" } else { "ephemeral" }.into());
    }
    body
}

/// A message as Slack's Block Kit: the text, and Approve/Deny buttons for an approval.
pub fn message(m: &Message) -> serde_json::Value {
    let mut section = m.text.clone();
    if section.len() > MAX_SECTION {
        let mut cut = MAX_SECTION;
        while !section.is_char_boundary(cut) {
            cut -= 1;
        }
        section.truncate(cut);
        section.push('…');
    }
    let mut blocks = vec![serde_json::json!({ "type": "section", "text": { "type": "mrkdwn", "text": section } })];
    if let Some((run, step)) = &m.approval {
        let value = serde_json::json!({ "run": run, "step": step }).to_string();
        blocks.push(serde_json::json!({
            "type": "actions",
            "block_id": "baton_approval",
            "elements": [
                { "type": "button", "action_id": APPROVE_ACTION, "style": "primary",
                  "text": { "type": "plain_text", "text": "Approve" }, "value": value },
                { "type": "button", "action_id": DENY_ACTION, "style": "danger",
                  "text": { "type": "plain_text", "text": "Deny" }, "value": value },
            ],
        }));
    }
    serde_json::json!({ "text": m.text, "blocks": blocks })
}

/// The parts of an interaction payload Baton reads.
#[derive(Debug, Deserialize)]
struct Interaction {
    #[serde(rename = "type")]
    kind: String,
    user: InteractionUser,
    #[serde(default)]
    actions: Vec<InteractionAction>,
    #[serde(default)]
    response_url: Option<String>,
}

#[derive(Debug, Deserialize)]
struct InteractionUser {
    id: String,
}

#[derive(Debug, Deserialize)]
struct InteractionAction {
    action_id: String,
    #[serde(default)]
    value: String,
}

/// What an Approve/Deny button carries.
#[derive(Debug, Deserialize)]
struct ButtonValue {
    run: String,
    step: String,
}

/// `POST /hooks/slack/interactive`: a click on an Approve or Deny button. The decision is
/// recorded as the principal the clicking user maps to, via `slack`; the outcome replaces the
/// prompt (through the payload's `response_url`), or is shown only to that user if refused.
pub(super) async fn interactive(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let form = match authenticate(&api, &headers, &body) {
        Ok(form) => form,
        Err(refusal) => return *refusal,
    };
    let refuse = |why: String| api.hooks.refuse("slack", StatusCode::BAD_REQUEST, why);
    let Some(payload) = form.get("payload") else { return refuse("malformed interaction: no payload".into()) };
    let interaction: Interaction = match serde_json::from_str(payload) {
        Ok(i) => i,
        Err(e) => return refuse(format!("malformed interaction payload: {e}")),
    };
    if interaction.kind != "block_actions" {
        // Other interactions (shortcuts, view submissions) are not Baton's.
        return StatusCode::OK.into_response();
    }
    let Some(action) = interaction.actions.first() else { return refuse("malformed interaction: no action".into()) };
    let approve = match action.action_id.as_str() {
        APPROVE_ACTION => true,
        DENY_ACTION => false,
        other => return refuse(format!("unknown action {other:?}")),
    };
    let target: ButtonValue = match serde_json::from_str(&action.value) {
        Ok(v) => v,
        Err(e) => return refuse(format!("malformed button value: {e}")),
    };
    let principal = api.hooks.principal(Platform::Slack, &interaction.user.id).map(str::to_string);
    let caller = Caller { platform: Platform::Slack, user_id: interaction.user.id.clone(), principal };
    let command = if approve {
        ChatCommand::Approve { run: target.run, step: Some(target.step) }
    } else {
        ChatCommand::Deny { run: target.run, step: Some(target.step), reason: "denied in Slack".into() }
    };
    let reply = interaction
        .response_url
        .filter(|url| outbound::check_url(url).is_ok())
        .map(|url| ReplyTarget { platform: Platform::Slack, url });
    // Slack wants its answer within 3 s; the outcome follows through the response_url.
    tokio::spawn(async move {
        let answer = commands::execute(&api, &caller, command, None).await;
        let Some(reply) = reply else { return };
        let mut body = message(&Message::text(answer.text.clone()));
        if let Some(object) = body.as_object_mut() {
            // Recorded: the prompt is replaced by the outcome (its buttons go away); refused:
            // only the clicking user is told why.
            object.insert("replace_original".into(), answer.public.into());
            object.insert("response_type".into(), if answer.public { "in_channel" } else { "ephemeral" }.into());
        }
        super::notify::post(&api, &reply.url, &body).await;
    });
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

    #[test]
    fn slacks_documented_example_verifies() {
        // The example from Slack's "Verifying requests from Slack" guide.
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(signature(SECRET, "1531420618", body), expected);
        assert_eq!(verify(SECRET, Some("1531420618"), Some(expected), body, 1_531_420_618 + 10), Ok(1_531_420_618));
    }

    #[test]
    fn forged_stale_and_malformed_signatures_are_refused() {
        let body = b"text=run+x";
        let now = 1_700_000_000;
        let ts = now.to_string();
        let good = signature("s3cret", &ts, body);
        assert_eq!(verify("s3cret", Some(&ts), Some(&good), body, now), Ok(now));
        // Forged: another secret, another body, another timestamp, one digit changed.
        let forged = signature("guess", &ts, body);
        assert_eq!(verify("s3cret", Some(&ts), Some(&forged), body, now), Err(SignatureError::Mismatch));
        assert_eq!(verify("s3cret", Some(&ts), Some(&good), b"text=run+y", now), Err(SignatureError::Mismatch));
        let later = (now + 1).to_string();
        assert_eq!(verify("s3cret", Some(&later), Some(&good), body, now), Err(SignatureError::Mismatch));
        let mut flipped = good.clone().into_bytes();
        flipped[10] = if flipped[10] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(verify("s3cret", Some(&ts), Some(&flipped), body, now), Err(SignatureError::Mismatch));
        // Stale, either way; exactly 5 minutes is still fine.
        assert_eq!(verify("s3cret", Some(&ts), Some(&good), body, now + 301), Err(SignatureError::Stale(301)));
        assert_eq!(verify("s3cret", Some(&ts), Some(&good), body, now - 301), Err(SignatureError::Stale(-301)));
        assert!(verify("s3cret", Some(&ts), Some(&good), body, now + 300).is_ok());
        // Missing or malformed headers.
        assert_eq!(verify("s3cret", None, Some(&good), body, now), Err(SignatureError::MissingTimestamp));
        assert_eq!(verify("s3cret", Some("soon"), Some(&good), body, now), Err(SignatureError::BadTimestamp));
        assert_eq!(verify("s3cret", Some(&ts), None, body, now), Err(SignatureError::MissingSignature));
        let zz = format!("v0=zz{}", &good[5..]);
        for bad in ["v1=abcd", "v0=xyz", &good[3..], &format!("{good}00"), &zz] {
            assert_eq!(verify("s3cret", Some(&ts), Some(bad), body, now), Err(SignatureError::BadSignature), "{bad}");
        }
    }

    #[test]
    fn a_signature_is_accepted_once_within_its_window() {
        let cache = ReplayCache::new(2);
        assert_eq!(cache.remember("a", 1_300, 1_000), Seen::First);
        assert_eq!(cache.remember("a", 1_300, 1_100), Seen::Again);
        assert_eq!(cache.remember("b", 1_300, 1_100), Seen::First);
        // Full of signatures that still matter: refused rather than forgotten.
        assert_eq!(cache.remember("c", 1_300, 1_200), Seen::Full);
        // Once they no longer matter (a replay would be stale anyway), there is room again.
        assert_eq!(cache.remember("c", 1_700, 1_400), Seen::First);
        assert_eq!(cache.remember("a", 1_700, 1_400), Seen::First);
    }

    #[test]
    fn approval_prompts_carry_buttons_with_the_run_and_step() {
        let m = Message { text: "Go?".into(), approval: Some(("r-1".into(), "gate".into())) };
        let body = message(&m);
        let elements = &body["blocks"][1]["elements"];
        assert_eq!(elements[0]["action_id"], APPROVE_ACTION);
        assert_eq!(elements[1]["action_id"], DENY_ACTION);
        let value: serde_json::Value = serde_json::from_str(elements[0]["value"].as_str().unwrap()).unwrap();
        assert_eq!(value, serde_json::json!({ "run": "r-1", "step": "gate" }));
        let long = message(&Message::text("é".repeat(3_000)));
        assert!(long["blocks"][0]["text"]["text"].as_str().unwrap().len() <= MAX_SECTION + 3);
        assert_eq!(unescape("a &lt;b&gt; &amp;amp;"), "a <b> &amp;");
    }
}
