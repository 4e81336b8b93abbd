//! Mattermost: slash commands (`POST /hooks/mattermost/commands`) and the Approve/Deny buttons
//! of approval prompts (`POST /hooks/mattermost/actions`, Mattermost's interactive message
//! actions).
//!
//! A slash command carries the command's token (in the form, and as `Authorization: Token`);
//! it is compared with the configured one in constant time. A button click is a JSON post to
//! the action URL with the context Baton put on the button; Mattermost does not sign it, so
//! Baton signs the context itself (HMAC-SHA256 of the action, run and step, keyed with the
//! token) and refuses a click whose context does not carry a valid signature: a forged
//! action cannot approve anything.

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

use super::commands::{self, Caller, ChatCommand};
use super::notify::{Message, ReplyTarget};
use super::{Hook, MattermostConfig, Platform, outbound, parse_form, tokens_match};
use crate::api::Api;

type HmacSha256 = Hmac<Sha256>;

fn keyed(key: &[u8]) -> HmacSha256 {
    super::hmac_sha256(key)
}

fn action_mac(token: &str, action: &str, run: &str, step: &str) -> HmacSha256 {
    let mut mac = keyed(token.as_bytes());
    mac.update(format!("baton-mattermost-action\n{action}\n{run}\n{step}").as_bytes());
    mac
}

/// The signature Baton puts in a button's context: hex HMAC-SHA256 of the action, run and
/// step, keyed with the Mattermost token.
pub fn action_signature(token: &str, action: &str, run: &str, step: &str) -> String {
    hex::encode(action_mac(token, action, run, step).finalize().into_bytes())
}

/// Checks a button context's signature in constant time.
pub fn verify_action(token: &str, action: &str, run: &str, step: &str, signature: &str) -> bool {
    let Ok(digest) = hex::decode(signature) else { return false };
    action_mac(token, action, run, step).verify_slice(&digest).is_ok()
}

/// A message as Mattermost expects it: text, and for an approval (when an action URL is
/// configured) an attachment with Approve and Deny buttons whose context is signed.
pub fn message(config: &MattermostConfig, m: &Message) -> serde_json::Value {
    let mut body = serde_json::json!({ "text": m.text });
    let (Some((run, step)), Some(url), Some(token)) = (&m.approval, &config.action_url, &config.token) else {
        return body;
    };
    let button = |action: &str, name: &str, style: &str| {
        serde_json::json!({
            "id": action,
            "name": name,
            "style": style,
            "integration": {
                "url": url,
                "context": {
                    "action": action, "run": run, "step": step,
                    "sig": action_signature(token.expose(), action, run, step),
                },
            },
        })
    };
    body["attachments"] = serde_json::json!([{
        "fallback": format!("Approve or deny step {step} of run {run}"),
        "actions": [button("approve", "Approve", "primary"), button("deny", "Deny", "danger")],
    }]);
    body
}

/// `POST /hooks/mattermost/commands`: a slash command.
pub(super) async fn commands(State(api): State<Api>, headers: HeaderMap, body: Bytes) -> Response {
    let hooks = &api.hooks;
    let Some(token) = &hooks.config.mattermost.token else { return hooks.not_configured(Hook::Mattermost) };
    let refused = || hooks.refuse("mattermost", StatusCode::UNAUTHORIZED, "wrong or missing slash command token");
    // Mattermost sends the token as `Authorization: Token ...` too: checked before the body is
    // parsed when it is there.
    let header_token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Token ").or_else(|| v.strip_prefix("token ")));
    if header_token.is_some_and(|given| !tokens_match(token.expose(), given.trim())) {
        return refused();
    }
    let form = match parse_form(&body) {
        Ok(f) => f,
        Err(e) => return hooks.refuse("mattermost", StatusCode::BAD_REQUEST, format!("malformed form: {e}")),
    };
    let given = form.get("token").map(String::as_str).or(header_token).unwrap_or_default();
    if !tokens_match(token.expose(), given) {
        return refused();
    }
    let Some(user_id) = form.get("user_id").filter(|u| !u.is_empty()) else {
        return hooks.refuse("mattermost", StatusCode::BAD_REQUEST, "malformed command: no user_id");
    };
    let reply = form
        .get("response_url")
        .filter(|url| outbound::check_url(url).is_ok())
        .map(|url| ReplyTarget { platform: Platform::Mattermost, url: url.clone() });
    let principal = hooks.principal(Platform::Mattermost, user_id).map(str::to_string);
    let caller = Caller { platform: Platform::Mattermost, user_id: user_id.clone(), principal };
    let text = form.get("text").cloned().unwrap_or_default();
    let request_id = form.get("trigger_id").filter(|t| !t.is_empty()).cloned();
    let answer = commands::slash(api.clone(), caller, &text, reply, request_id).await;
    let response_type = if answer.public { "in_channel" } else { "ephemeral" };
    Json(serde_json::json!({ "response_type": response_type, "text": answer.text })).into_response()
}

/// What Mattermost posts when a button is clicked (the parts Baton reads).
#[derive(Debug, Deserialize)]
struct ActionRequest {
    user_id: String,
    #[serde(default)]
    context: ActionContext,
}

/// The context Baton put on the button.
#[derive(Debug, Default, Deserialize)]
struct ActionContext {
    #[serde(default)]
    action: String,
    #[serde(default)]
    run: String,
    #[serde(default)]
    step: String,
    #[serde(default)]
    sig: String,
}

/// `POST /hooks/mattermost/actions`: a click on an Approve or Deny button. Recorded as the
/// principal the clicking user maps to, via `mattermost`; the prompt is replaced by the
/// outcome, or the user alone is told why it was refused.
pub(super) async fn actions(State(api): State<Api>, body: Bytes) -> Response {
    let hooks = &api.hooks;
    let Some(token) = &hooks.config.mattermost.token else { return hooks.not_configured(Hook::Mattermost) };
    let request: ActionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return hooks.refuse("mattermost", StatusCode::BAD_REQUEST, format!("malformed action: {e}")),
    };
    let ActionContext { action, run, step, sig } = request.context;
    if !verify_action(token.expose(), &action, &run, &step, &sig) {
        return hooks.refuse(
            "mattermost",
            StatusCode::UNAUTHORIZED,
            "forged action: its context is not signed by Baton",
        );
    }
    let command = match action.as_str() {
        "approve" => ChatCommand::Approve { run, step: Some(step) },
        "deny" => ChatCommand::Deny { run, step: Some(step), reason: "denied in Mattermost".into() },
        other => return hooks.refuse("mattermost", StatusCode::BAD_REQUEST, format!("unknown action {other:?}")),
    };
    let principal = hooks.principal(Platform::Mattermost, &request.user_id).map(str::to_string);
    let caller = Caller { platform: Platform::Mattermost, user_id: request.user_id, principal };
    let answer =
        match tokio::time::timeout(commands::ANSWER_WITHIN, commands::execute(&api, &caller, command, None)).await {
            Ok(answer) => answer,
            Err(_) => commands::Answer::private("The cluster did not record the decision in time; try again."),
        };
    let body = if answer.public {
        serde_json::json!({ "update": { "message": answer.text, "props": { "attachments": [] } } })
    } else {
        serde_json::json!({ "ephemeral_text": answer.text })
    };
    Json(body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::hooks::Secret;

    #[test]
    fn buttons_are_signed_and_a_forged_context_is_refused() {
        let config = MattermostConfig {
            token: Some(Secret::new("tok")),
            action_url: Some("https://baton.example.com/hooks/mattermost/actions".into()),
            ..Default::default()
        };
        let m = Message { text: "Go?".into(), approval: Some(("r-1".into(), "gate".into())) };
        let body = message(&config, &m);
        let approve = &body["attachments"][0]["actions"][0]["integration"];
        assert_eq!(approve["url"], "https://baton.example.com/hooks/mattermost/actions");
        let ctx = &approve["context"];
        let sig = ctx["sig"].as_str().unwrap();
        assert!(verify_action("tok", "approve", "r-1", "gate", sig));
        // The same signature for another run, step or action, or with another key: refused.
        assert!(!verify_action("tok", "approve", "r-2", "gate", sig));
        assert!(!verify_action("tok", "approve", "r-1", "other", sig));
        assert!(!verify_action("tok", "deny", "r-1", "gate", sig));
        assert!(!verify_action("other", "approve", "r-1", "gate", sig));
        assert!(!verify_action("tok", "approve", "r-1", "gate", "zz"));
        // Without an action URL there are no buttons, only the text.
        let plain = message(&MattermostConfig { token: Some(Secret::new("tok")), ..Default::default() }, &m);
        assert!(plain.get("attachments").is_none());
    }
}
