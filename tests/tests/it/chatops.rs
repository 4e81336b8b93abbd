//! Chat-ops and alert hooks over a real `baton dev`: Slack signatures cross-checked against
//! slack_sdk's `SignatureVerifier` (PyPI), bad requests that start nothing, a whole slash
//! command flow through an approval with a local receiver standing in for `response_url`,
//! Mattermost's token and signed buttons, and a real Prometheus Alertmanager whose webhook
//! points at Baton.
//!
//! They need what `scripts/test-deps` installs (`prometheus-alertmanager`, and a venv with
//! slack_sdk in `target/test-venv`); without it they fail, saying so.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_scheduler::api::hooks::slack;
use baton_tests::http::{self, HttpResponse, Receiver};
use baton_tests::{Dev, free_port, scratch_library};

const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
const WAIT: Duration = Duration::from_secs(60);

const HELLO: &str = r#"
name: hello
params:
  name: { type: string, required: true, pattern: "^[A-Za-z ]+$" }
steps:
  - id: greet
    action: exec
    with: { command: ["echo", "hello {{ params.name }}"] }
"#;

const GATED: &str = r#"
name: gated
params:
  service: { type: string, required: true }
steps:
  - id: gate
    approval:
      approvers: ["group:sre"]
      message: "Restart {{ params.service }}?"
      timeout: 10m
  - id: restart
    action: exec
    with: { command: ["echo", "restarted {{ params.service }} for {{ steps.gate.outputs.approved_by }}"] }
"#;

fn now_secs() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

/// The venv Python with slack_sdk (scripts/test-deps makes it).
fn venv_python() -> PathBuf {
    let venv = std::env::var_os("BATON_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-venv"));
    let python = venv.join("bin/python");
    let ok = Command::new(&python).args(["-c", "import slack_sdk"]).output().is_ok_and(|o| o.status.success());
    assert!(ok, "{} with slack_sdk is missing: run scripts/test-deps (or set BATON_TEST_VENV)", python.display());
    python
}

/// slack_sdk's SignatureVerifier behind a pipe (tests/chatops/slack_sign.py).
struct SlackSdk {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl SlackSdk {
    fn start() -> SlackSdk {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("chatops/slack_sign.py");
        let mut child = Command::new(venv_python())
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start slack_sign.py");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        SlackSdk { child, out }
    }

    fn ask(&mut self, request: serde_json::Value) -> serde_json::Value {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{request}").expect("write to slack_sign.py");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read from slack_sign.py");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("slack_sign.py said {line:?}: {e}"))
    }

    fn sign(&mut self, secret: &str, timestamp: &str, body: &str) -> String {
        let answer =
            self.ask(serde_json::json!({ "op": "sign", "secret": secret, "timestamp": timestamp, "body": body }));
        answer["signature"].as_str().expect("signature").to_string()
    }

    fn valid(&mut self, secret: &str, timestamp: &str, body: &str, signature: &str, now: i64) -> bool {
        let request = serde_json::json!({
            "op": "verify", "secret": secret, "timestamp": timestamp, "body": body, "signature": signature, "now": now,
        });
        self.ask(request)["valid"].as_bool().expect("valid")
    }
}

impl Drop for SlackSdk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `application/x-www-form-urlencoded` of `fields`.
fn form(fields: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                b' ' => "+".to_string(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    fields.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// POSTs `body` to a Slack hook signed by slack_sdk with `secret` at `timestamp`.
fn post_signed(sdk: &mut SlackSdk, dev: &Dev, path: &str, secret: &str, timestamp: i64, body: &str) -> HttpResponse {
    let ts = timestamp.to_string();
    let signature = sdk.sign(secret, &ts, body);
    post_with_signature(dev, path, &ts, &signature, body)
}

fn post_with_signature(dev: &Dev, path: &str, ts: &str, signature: &str, body: &str) -> HttpResponse {
    let headers = [
        ("Content-Type", "application/x-www-form-urlencoded"),
        ("X-Slack-Request-Timestamp", ts),
        ("X-Slack-Signature", signature),
    ];
    http::post(&dev.http, path, &headers, body.as_bytes())
}

fn slash(user: &str, text: &str, response_url: &str, trigger: &str) -> String {
    form(&[
        ("token", "legacy-ignored"),
        ("team_id", "T0001"),
        ("channel_id", "C0001"),
        ("user_id", user),
        ("user_name", "someone"),
        ("command", "/baton"),
        ("text", text),
        ("response_url", response_url),
        ("trigger_id", trigger),
    ])
}

fn runs_of(dev: &Dev, runbook: &str) -> Vec<serde_json::Value> {
    dev.json(&["run", "list", "--runbook", runbook]).as_array().cloned().unwrap_or_default()
}

#[test]
fn slack_signatures_agree_with_slack_sdk_and_bad_requests_start_nothing() {
    // Both implementations sign alike, and each accepts the other's signatures, over bodies
    // with spaces, quotes, non-ASCII text and form escapes.
    let mut sdk = SlackSdk::start();
    let bodies = [
        String::new(),
        "text=run+hello+name%3D%22Ada+L%22&user_id=U1".to_string(),
        form(&[("text", "run x note=\"naïve café ✅\""), ("user_id", "U2")]),
        "payload=%7B%22type%22%3A%22block_actions%22%7D".to_string(),
        "x".repeat(5_000),
    ];
    for (i, body) in bodies.iter().enumerate() {
        for secret in [SECRET, "another secret with spaces", "s"] {
            let ts = (1_700_000_000 + i as i64 * 977).to_string();
            let ours = slack::signature(secret, &ts, body.as_bytes());
            assert_eq!(ours, sdk.sign(secret, &ts, body), "body {i}, secret {secret:?}");
            let now: i64 = ts.parse().unwrap();
            assert!(sdk.valid(secret, &ts, body, &ours, now + 299), "slack_sdk accepts Baton's signature");
            assert!(slack::verify(secret, Some(&ts), Some(&ours), body.as_bytes(), now + 299).is_ok());
            // Both refuse a stale timestamp and another secret's signature.
            assert!(!sdk.valid(secret, &ts, body, &ours, now + 301));
            assert!(slack::verify(secret, Some(&ts), Some(&ours), body.as_bytes(), now + 301).is_err());
            let other = slack::signature("wrong", &ts, body.as_bytes());
            assert!(!sdk.valid(secret, &ts, body, &other, now));
            assert!(slack::verify(secret, Some(&ts), Some(&other), body.as_bytes(), now).is_err());
        }
    }

    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("hello.yaml", HELLO)]);
    let dev = Dev::start_with_env(
        &tmp.path().join("data"),
        &lib,
        &["--chat-user", "slack:U_ALICE=alice"],
        &[("BATON_SLACK_SIGNING_SECRET", SECRET)],
    );
    let receiver = Receiver::start();
    let reply_to = format!("{}/reply", receiver.url);
    let path = "/hooks/slack/commands";

    // A genuine request, signed by slack_sdk: the run starts and Baton answers in time.
    let body = slash("U_ALICE", "run hello name=\"Ada L\"", &reply_to, "trig-1");
    let ok = post_signed(&mut sdk, &dev, path, SECRET, now_secs(), &body);
    assert_eq!(ok.status, 200, "{}", ok.body);
    let answer = ok.json();
    assert_eq!(answer["response_type"], "in_channel", "{answer}");
    assert!(answer["text"].as_str().unwrap().contains("Started run"), "{answer}");
    let finished = receiver
        .wait_for("with the run's result", WAIT, |r| r.body["text"].as_str().is_some_and(|t| t.contains("succeeded")));
    assert_eq!(finished.path, "/reply");

    // Replayed: the very same request again.
    let ts = now_secs().to_string();
    let replayed_body = slash("U_ALICE", "run hello name=Bob", &reply_to, "trig-2");
    let signature = sdk.sign(SECRET, &ts, &replayed_body);
    assert_eq!(post_with_signature(&dev, path, &ts, &signature, &replayed_body).status, 200);
    let replay = post_with_signature(&dev, path, &ts, &signature, &replayed_body);
    assert_eq!((replay.status, replay.body.trim()), (409, "replayed request: this signature was seen already"));
    let shouted = format!("v0={}", signature[3..].to_ascii_uppercase());
    assert_eq!(post_with_signature(&dev, path, &ts, &shouted, &replayed_body).status, 409, "the same signature");

    // Forged (another secret), tampered (body changed after signing), stale, from the future,
    // unsigned, oversized, malformed: each a 4xx with a short reason, and nothing starts.
    let evil = slash("U_ALICE", "run hello name=Eve", &reply_to, "trig-3");
    let forged = post_signed(&mut sdk, &dev, path, "not the secret", now_secs(), &evil);
    assert_eq!((forged.status, forged.body.trim()), (401, "signature mismatch"));
    let ts = now_secs().to_string();
    let signature = sdk.sign(SECRET, &ts, &evil);
    let tampered = post_with_signature(&dev, path, &ts, &signature, &evil.replace("Eve", "Mallory"));
    assert_eq!((tampered.status, tampered.body.trim()), (401, "signature mismatch"));
    let stale = post_signed(&mut sdk, &dev, path, SECRET, now_secs() - 600, &evil);
    assert_eq!(stale.status, 401);
    assert!(stale.body.starts_with("stale request"), "{}", stale.body);
    let future = post_signed(&mut sdk, &dev, path, SECRET, now_secs() + 600, &evil);
    assert!(future.status == 401 && future.body.starts_with("stale request"), "{}", future.body);
    let unsigned = http::post(&dev.http, path, &[("X-Slack-Request-Timestamp", &ts)], evil.as_bytes());
    assert_eq!((unsigned.status, unsigned.body.trim()), (401, "missing X-Slack-Signature header"));
    let huge = format!("{evil}&pad={}", "x".repeat(64 * 1024));
    let oversized = post_signed(&mut sdk, &dev, path, SECRET, now_secs(), &huge);
    assert_eq!(oversized.status, 413, "{}", oversized.body);
    let malformed = post_signed(&mut sdk, &dev, path, SECRET, now_secs(), "text=%ZZ&user_id=U_ALICE");
    assert!(malformed.status == 400 && malformed.body.starts_with("malformed form"), "{}", malformed.body);
    let anonymous = post_signed(&mut sdk, &dev, path, SECRET, now_secs(), &form(&[("text", "run hello name=X")]));
    assert_eq!((anonymous.status, anonymous.body.trim()), (400, "malformed command: no user_id"));
    let bad_payload = post_signed(&mut sdk, &dev, "/hooks/slack/interactive", SECRET, now_secs(), "payload=%7Bnope");
    assert!(bad_payload.status == 400 && bad_payload.body.contains("malformed interaction"), "{}", bad_payload.body);

    // Valid requests that may not or cannot start anything answer why, with usage.
    let say = |sdk: &mut SlackSdk, user: &str, text: &str| -> String {
        let response = post_signed(sdk, &dev, path, SECRET, now_secs(), &slash(user, text, &reply_to, ""));
        assert_eq!(response.status, 200, "{}", response.body);
        let answer = response.json();
        answer["text"].as_str().unwrap().to_string()
    };
    let stranger = say(&mut sdk, "U_NOBODY", "run hello name=Zed");
    assert!(
        stranger.contains("not mapped to a Baton principal") && stranger.contains("slack:U_NOBODY=NAME"),
        "{stranger}"
    );
    let unknown = say(&mut sdk, "U_ALICE", "run nope");
    assert!(unknown.contains("Runbook `nope` does not exist (known: hello)"), "{unknown}");
    let bad_param = say(&mut sdk, "U_ALICE", "run hello name=R2D2");
    assert!(bad_param.contains("name") && bad_param.contains("Usage: run hello name=..."), "{bad_param}");
    let missing = say(&mut sdk, "U_ALICE", "run hello");
    assert!(missing.contains("Usage: run hello name=..."), "{missing}");
    let garbled = say(&mut sdk, "U_ALICE", "run hello name='open");
    assert!(garbled.contains("not closed") && garbled.contains("Usage:"), "{garbled}");
    assert!(say(&mut sdk, "U_NOBODY", "help").contains("approve RUN [STEP]"));
    let plan = say(&mut sdk, "U_ALICE", "plan hello name=\"Ada L\"");
    assert!(plan.contains("nothing is started") && plan.contains("`echo hello Ada L`"), "{plan}");

    // Exactly the two genuine runs exist (the first and the one whose replay was refused).
    let runs = runs_of(&dev, "hello");
    assert_eq!(runs.len(), 2, "{runs:#?}");
    for run in &runs {
        assert_eq!(run["principal"], "alice");
        assert_eq!(run["events"][0]["via"], "slack");
    }
    let listed = say(&mut sdk, "U_ALICE", "list hello");
    assert!(listed.contains(runs[0]["id"].as_str().unwrap()), "{listed}");
    // A stranger may ask for the status of a run.
    let status = say(&mut sdk, "U_NOBODY", &format!("status {}", runs[1]["id"].as_str().unwrap()));
    assert!(status.contains("succeeded"), "{status}");

    // The Slack app manifest in deploy/ points at these very endpoints.
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/slack-app-manifest.yaml"))
            .expect("deploy/slack-app-manifest.yaml");
    let urls: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.trim().strip_prefix("url: ").or_else(|| l.trim().strip_prefix("request_url: ")))
        .collect();
    assert_eq!(urls.len(), 2, "{manifest}");
    for url in urls {
        let path = url.strip_prefix("https://baton.example.com").expect("the placeholder host");
        let response = http::post(&dev.http, path, &[], b"x=1");
        assert_eq!(
            (response.status, response.body.trim()),
            (401, "missing X-Slack-Request-Timestamp header"),
            "{path}"
        );
    }

    // Hooks without their secret answer 404.
    let mm = http::post(&dev.http, "/hooks/mattermost/commands", &[], b"token=x&text=help&user_id=u");
    assert_eq!((mm.status, mm.body.trim()), (404, "the mattermost hook is not configured on this server"));
    let am = http::post(&dev.http, "/hooks/alertmanager", &[], b"{}");
    assert_eq!(am.status, 404);
    // Every refusal above that reached a configured hook was counted.
    assert!(metric(&dev, "baton_hook_requests_refused_total") > 0);
}

#[test]
fn a_slash_command_runs_a_runbook_through_an_approval_given_in_slack() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("gated.yaml", GATED)]);
    // The receiver is the command's response_url and, for notifications, the incoming webhook.
    let receiver = Receiver::start();
    let command_url = format!("{}/command", receiver.url);
    let webhook = format!("{}/webhook", receiver.url);
    let dev = Dev::start_with_env(
        &tmp.path().join("data"),
        &lib,
        &[
            "--chat-user",
            "slack:U_ALICE=alice",
            "--chat-user",
            "slack:U_BOB=bob",
            "--group",
            "sre=alice",
            "--slack-webhook",
            &webhook,
        ],
        &[("BATON_SLACK_SIGNING_SECRET", SECRET)],
    );
    let mut sdk = SlackSdk::start();

    let body = slash("U_BOB", "run gated service=\"web 1\"", &command_url, "trigger-1");
    let response = post_signed(&mut sdk, &dev, "/hooks/slack/commands", SECRET, now_secs(), &body);
    assert_eq!(response.status, 200, "{}", response.body);
    let answer = response.json();
    let text = answer["text"].as_str().unwrap();
    assert!(text.starts_with("Started run `r-") && text.contains("as bob"), "{text}");
    let run_id = text.split('`').nth(1).unwrap().to_string();

    // The approval prompt, with its buttons, arrives at the command's response_url.
    let prompt = receiver.wait_for("with the approval prompt", WAIT, |r| {
        r.path == "/command" && r.body["blocks"][1]["type"] == "actions"
    });
    assert!(prompt.body["text"].as_str().unwrap().contains("Restart web 1?"), "{:#}", prompt.body);
    assert_eq!(prompt.body["response_type"], "in_channel");
    let approve = prompt.body["blocks"][1]["elements"][0].clone();
    assert_eq!(approve["action_id"], "baton_approve");
    let click = |user: &str, reply: &str| {
        let payload = serde_json::json!({
            "type": "block_actions",
            "user": { "id": user, "username": user },
            "actions": [{ "action_id": approve["action_id"], "value": approve["value"], "type": "button" }],
            "response_url": format!("{}/{reply}", receiver.url),
        });
        form(&[("payload", &payload.to_string())])
    };

    // Bob is mapped but not an approver: refused, told privately, nothing recorded.
    let response = post_signed(&mut sdk, &dev, "/hooks/slack/interactive", SECRET, now_secs(), &click("U_BOB", "bob"));
    assert_eq!(response.status, 200);
    let refused = receiver.wait_for("with bob's refusal", WAIT, |r| r.path == "/bob");
    assert_eq!(refused.body["response_type"], "ephemeral", "{:#}", refused.body);
    assert!(refused.body["text"].as_str().unwrap().contains("bob may not decide"), "{:#}", refused.body);
    // A click signed with another secret is refused before anything is read.
    let forged = post_signed(&mut sdk, &dev, "/hooks/slack/interactive", "guess", now_secs(), &click("U_ALICE", "x"));
    assert_eq!(forged.status, 401);
    assert_eq!(dev.json(&["run", "show", &run_id])["steps"][0]["state"], "waiting");

    // Alice (group sre) approves: the prompt is replaced by the decision, and the result follows.
    let response =
        post_signed(&mut sdk, &dev, "/hooks/slack/interactive", SECRET, now_secs(), &click("U_ALICE", "alice"));
    assert_eq!(response.status, 200);
    let decided = receiver.wait_for("with alice's decision", WAIT, |r| r.path == "/alice");
    assert_eq!(decided.body["replace_original"], true, "{:#}", decided.body);
    assert!(decided.body["text"].as_str().unwrap().contains("alice approved step `gate`"), "{:#}", decided.body);
    let result = receiver.wait_for("with the run's result", WAIT, |r| {
        r.path == "/command" && r.body["text"].as_str().is_some_and(|t| t.contains("succeeded"))
    });
    assert!(result.body["text"].as_str().unwrap().contains(&run_id), "{:#}", result.body);

    let run = dev.json(&["run", "show", &run_id]);
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["steps"][1]["stdout_tail"], "restarted web 1 for alice\n");
    // The leader notified the webhook of each change, once: started, waiting (with buttons), succeeded.
    let notified = |what: &'static str| {
        let id = run_id.clone();
        move |r: &http::Received| {
            r.path == "/webhook" && r.body["text"].as_str().is_some_and(|t| t.contains(&id) && t.contains(what))
        }
    };
    receiver.wait_for("notifying the start", WAIT, notified("started (started by bob)"));
    let waiting = receiver.wait_for("notifying the approval", WAIT, notified("waits for approval of step `gate`"));
    assert_eq!(waiting.body["blocks"][1]["elements"][0]["action_id"], "baton_approve");
    receiver.wait_for("notifying the end", WAIT, notified("succeeded"));
    let more: Vec<_> = receiver.drain().into_iter().filter(|r| r.path == "/webhook").collect();
    assert!(more.is_empty(), "each change is notified once: {more:#?}");
    let decision = &run["steps"][0]["decisions"][0];
    assert_eq!((decision["principal"].as_str(), decision["via"].as_str()), (Some("alice"), Some("slack")));
    let actions: Vec<(String, String, String)> = run["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().into(),
                e["principal"].as_str().unwrap().into(),
                e["via"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [("start".into(), "bob".into(), "slack".into()), ("approve".into(), "alice".into(), "slack".into())],
        "{run:#}"
    );
}

#[test]
fn mattermost_commands_check_the_token_and_buttons_carry_a_signature() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("gated.yaml", GATED)]);
    let token = "mm-slash-token";
    let dev = Dev::start_with_env(
        &tmp.path().join("data"),
        &lib,
        &[
            "--chat-user",
            "mattermost:mmalice=alice",
            "--group",
            "sre=alice",
            "--mattermost-action-url",
            "https://baton.example.com/hooks/mattermost/actions",
        ],
        &[("BATON_MATTERMOST_TOKEN", token)],
    );
    let receiver = Receiver::start();
    let path = "/hooks/mattermost/commands";
    let command = |token: &str, text: &str| {
        let body = form(&[
            ("token", token),
            ("user_id", "mmalice"),
            ("user_name", "alice"),
            ("command", "/baton"),
            ("text", text),
            ("response_url", &format!("{}/mm", receiver.url)),
        ]);
        http::post(&dev.http, path, &[("Content-Type", "application/x-www-form-urlencoded")], body.as_bytes())
    };
    let wrong = command("guess", "run gated service=db");
    assert_eq!((wrong.status, wrong.body.trim()), (401, "wrong or missing slash command token"));
    let body = form(&[("token", token), ("user_id", "mmalice"), ("text", "run gated service=db")]);
    let wrong_header = http::post(&dev.http, path, &[("Authorization", "Token guess")], body.as_bytes());
    assert_eq!(wrong_header.status, 401, "a wrong header token is refused whatever the form says");
    assert!(runs_of(&dev, "gated").is_empty());

    let response = command(token, "run gated service=db");
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["response_type"], "in_channel");
    let prompt = receiver.wait_for("with the approval prompt", WAIT, |r| r.body.get("attachments").is_some());
    let integration = prompt.body["attachments"][0]["actions"][0]["integration"].clone();
    assert_eq!(integration["url"], "https://baton.example.com/hooks/mattermost/actions");
    let context = integration["context"].clone();
    assert_eq!(context["action"], "approve");

    let actions = |user: &str, context: &serde_json::Value| {
        let body = serde_json::json!({ "user_id": user, "user_name": user, "post_id": "p1", "context": context });
        http::post(
            &dev.http,
            "/hooks/mattermost/actions",
            &[("Content-Type", "application/json")],
            body.to_string().as_bytes(),
        )
    };
    // A forged click: the same signature on another action, or no signature.
    let mut deny = context.clone();
    deny["action"] = "deny".into();
    let forged = actions("mmalice", &deny);
    assert_eq!(forged.status, 401, "{}", forged.body);
    let mut unsigned = context.clone();
    unsigned.as_object_mut().unwrap().remove("sig");
    assert_eq!(actions("mmalice", &unsigned).status, 401);
    // A stranger's click is answered privately; alice's replaces the prompt.
    let stranger = actions("mmnobody", &context);
    assert_eq!(stranger.status, 200);
    assert!(stranger.json()["ephemeral_text"].as_str().unwrap().contains("not mapped"), "{}", stranger.body);
    let approved = actions("mmalice", &context);
    assert_eq!(approved.status, 200, "{}", approved.body);
    let update = approved.json();
    assert!(update["update"]["message"].as_str().unwrap().contains("alice approved step `gate`"), "{update}");
    receiver.wait_for("with the run's result", WAIT, |r| {
        r.path == "/mm" && r.body["text"].as_str().is_some_and(|t| t.contains("succeeded"))
    });
    let run = &runs_of(&dev, "gated")[0];
    assert_eq!(run["steps"][0]["decisions"][0]["via"], "mattermost");
    assert_eq!(run["events"][0]["principal"], "alice");
}

const FIX_DISK: &str = r#"
name: fix-disk
params:
  host: { type: string, required: true }
  mount: { type: string, default: "/" }
steps:
  - id: confirm
    approval:
      approvers: [alice]
      message: "Clean {{ params.mount }} on {{ params.host }}?"
  - id: clean
    action: exec
    with: { command: ["echo", "cleaning {{ params.host }}"] }
"#;

const RULES: &str = r#"
rules:
  - name: disk-full
    matchers: ['alertname = "DiskFull"', 'severity =~ "critical|page"']
    runbook: fix-disk
    target: "{{ labels.instance }}"
    params:
      host: "{{ labels.instance }}"
      mount: "{{ labels.mount | default('/') }}"
    cooldown: 10m
"#;

/// A real Prometheus Alertmanager on loopback, stopped when dropped.
struct Alertmanager {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Alertmanager {
    fn start(dir: &Path, webhook: &str, token: &str) -> Alertmanager {
        let bin = std::env::var_os("BATON_ALERTMANAGER_BIN").map(PathBuf::from).unwrap_or_else(|| {
            ["prometheus-alertmanager", "alertmanager"]
                .iter()
                .find_map(|name| {
                    let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
                    out.status.success().then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
                })
                .unwrap_or_else(|| {
                    panic!(
                        "Alertmanager is not installed: run scripts/test-deps (Debian package prometheus-alertmanager)"
                    )
                })
        });
        let config = dir.join("alertmanager.yml");
        std::fs::write(
            &config,
            format!(
                "route:\n  receiver: baton\n  group_by: [alertname, instance]\n  group_wait: 1s\n  group_interval: 1s\n  repeat_interval: 2s\n\
                 receivers:\n  - name: baton\n    webhook_configs:\n      - url: {webhook}\n        send_resolved: true\n\
                 \x20       http_config:\n          authorization:\n            credentials: {token}\n"
            ),
        )
        .unwrap();
        let addr = format!("127.0.0.1:{}", free_port());
        let log = dir.join("alertmanager.log");
        let child = Command::new(&bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let am = Alertmanager { child, addr, log };
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = std::net::TcpStream::connect(&am.addr).is_ok() && http::get(&am.addr, "/-/ready").status == 200;
            if ready {
                return am;
            }
            assert!(Instant::now() < deadline, "Alertmanager did not get ready; its log:\n{}", am.log_text());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `POST /api/v2/alerts`: fires (or, with `ends_at` in the past, resolves) alerts.
    fn post_alerts(&self, alerts: serde_json::Value) {
        let response = http::post(
            &self.addr,
            "/api/v2/alerts",
            &[("Content-Type", "application/json")],
            alerts.to_string().as_bytes(),
        );
        assert_eq!(response.status, 200, "Alertmanager refused the alerts: {}", response.body);
    }
}

impl Drop for Alertmanager {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rfc3339(offset_secs: i64) -> String {
    chrono::DateTime::from_timestamp(now_secs() + offset_secs, 0).unwrap().to_rfc3339()
}

fn disk_full(mount: &str, ends_at: Option<String>) -> serde_json::Value {
    let mut alert = serde_json::json!({
        "labels": { "alertname": "DiskFull", "instance": "web-1", "severity": "critical", "mount": mount },
        "annotations": { "summary": format!("{mount} is full on web-1") },
        "startsAt": rfc3339(-60),
    });
    if let Some(ends_at) = ends_at {
        alert["endsAt"] = ends_at.into();
    }
    alert
}

/// A counter from `/metrics`.
fn metric(dev: &Dev, name: &str) -> u64 {
    let text = http::get(&dev.http, "/metrics").body;
    text.lines().find_map(|l| l.strip_prefix(&format!("{name} "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn wait_until(what: &str, am: &Alertmanager, dev: &Dev, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {WAIT:?}\n--- alertmanager log:\n{}\n--- baton log:\n{}",
            am.log_text(),
            std::fs::read_to_string(dev.data_dir.with_extension("log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_bad_rules_file_stops_the_server_with_its_location() {
    let tmp = tempfile::tempdir().unwrap();
    let rules = tmp.path().join("bad-rules.yaml");
    std::fs::write(&rules, RULES.replace("severity =~ \"critical|page\"", "severity =~ \"(\"")).unwrap();
    let mut child = Command::new(baton_tests::baton_bin())
        .args(["dev", "--grpc", "127.0.0.1:0", "--http", "127.0.0.1:0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .arg("--runbooks")
        .arg(tmp.path())
        .arg("--alert-rules")
        .arg(&rules)
        .env("BATON_ALERTMANAGER_TOKEN", "t")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("baton dev started with a bad rules file");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    let at = format!("{}:4:", rules.display());
    assert!(stderr.contains(&at) && stderr.contains("rules[0].matchers[1]"), "{stderr}");
}

#[test]
fn alertmanager_alerts_start_one_run_per_target_and_resolving_cancels_the_waiting_run() {
    let tmp = tempfile::tempdir().unwrap();
    let lib = scratch_library(tmp.path(), &[("fix-disk.yaml", FIX_DISK)]);
    let rules = tmp.path().join("alert-rules.yaml");
    std::fs::write(&rules, RULES).unwrap();
    let token = "am-token-123";
    let dev = Dev::start_with_env(
        &tmp.path().join("data"),
        &lib,
        &["--alert-rules", rules.to_str().unwrap()],
        &[("BATON_ALERTMANAGER_TOKEN", token)],
    );

    // The hook itself: credentials and payload version are checked.
    let hook = "/hooks/alertmanager";
    let payload = serde_json::json!({ "version": "4", "status": "firing", "receiver": "x", "alerts": [] }).to_string();
    assert_eq!(http::post(&dev.http, hook, &[], payload.as_bytes()).status, 401);
    let wrong = http::post(&dev.http, hook, &[("Authorization", "Bearer nope")], payload.as_bytes());
    assert_eq!(wrong.status, 401);
    let v3 = payload.replace("\"4\"", "\"3\"");
    let old = http::post(&dev.http, hook, &[("Authorization", &format!("Bearer {token}"))], v3.as_bytes());
    assert!(old.status == 400 && old.body.contains("version \"3\""), "{}", old.body);
    let junk = http::post(&dev.http, hook, &[("Authorization", &format!("Bearer {token}"))], b"{\"alerts\": 5}");
    assert!(junk.status == 400 && junk.body.starts_with("malformed notification"), "{}", junk.body);

    let am = Alertmanager::start(tmp.path(), &format!("http://{}{hook}", dev.http), token);
    am.post_alerts(serde_json::json!([disk_full("/var", None)]));
    wait_until("a run of fix-disk waiting for approval", &am, &dev, || {
        runs_of(&dev, "fix-disk").first().is_some_and(|r| r["steps"][0]["state"] == "waiting")
    });
    let run = runs_of(&dev, "fix-disk")[0].clone();
    let run_id = run["id"].as_str().unwrap().to_string();
    assert_eq!(run["params"]["host"], "web-1");
    assert_eq!(run["events"][0]["via"], "alertmanager", "{run:#}");

    // A second alert for the same target, and Alertmanager's repeated notifications: they join
    // the run; none starts another.
    am.post_alerts(serde_json::json!([disk_full("/data", None)]));
    let joined_before = metric(&dev, "baton_alerts_joined_total");
    wait_until("repeated notifications joining the run", &am, &dev, || {
        metric(&dev, "baton_alerts_joined_total") >= joined_before + 4
    });
    assert_eq!(runs_of(&dev, "fix-disk").len(), 1, "exactly one run for the target");
    assert_eq!(metric(&dev, "baton_alert_runs_started_total"), 1);

    // Resolving both alerts (endsAt in the past) cancels the run still waiting for approval.
    am.post_alerts(serde_json::json!([disk_full("/var", Some(rfc3339(-1))), disk_full("/data", Some(rfc3339(-1)))]));
    wait_until("the waiting run cancelled", &am, &dev, || dev.json(&["run", "show", &run_id])["state"] == "cancelled");
    let run = dev.json(&["run", "show", &run_id]);
    let cancel = run["events"].as_array().unwrap().iter().find(|e| e["action"] == "cancel").cloned().unwrap();
    assert_eq!((cancel["principal"].as_str(), cancel["via"].as_str()), (Some("alertmanager"), Some("alertmanager")));
    assert!(run["error"].as_str().unwrap().contains("resolved"), "{run:#}");

    // Firing again inside the cooldown starts nothing.
    let joined_before = metric(&dev, "baton_alerts_joined_total");
    am.post_alerts(serde_json::json!([disk_full("/var", None)]));
    wait_until("the new alert joining the cooled-down run", &am, &dev, || {
        metric(&dev, "baton_alerts_joined_total") > joined_before
    });
    assert_eq!(runs_of(&dev, "fix-disk").len(), 1, "no second run inside the cooldown");
    assert_eq!(metric(&dev, "baton_alert_runs_started_total"), 1);
}
