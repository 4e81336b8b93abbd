//! `baton dev`, `baton server` and `baton worker`: the long-running processes.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use baton_core::{Document, parse_document};
use baton_scheduler::api::hooks::notify::NotifyEvent;
use baton_scheduler::api::hooks::{AlertmanagerFile, HooksConfig, MattermostFile, NotifyFile, Platform, SlackFile};
use baton_scheduler::server::{ServerConfig, start};
use baton_worker::{WorkerConfig, run_worker};
use clap::Args;
use tokio_util::sync::CancellationToken;

/// `baton dev` options.
#[derive(Args, Debug)]
pub struct DevArgs {
    /// Where the node keeps its data (created if missing; reused on restart).
    #[arg(long, default_value_os_t = crate::default_dev_dir())]
    pub data_dir: PathBuf,
    /// gRPC listen address (API and workers).
    #[arg(long, default_value = "127.0.0.1:7400")]
    pub grpc: SocketAddr,
    /// HTTP listen address (/healthz, /readyz, /metrics).
    #[arg(long, default_value = "127.0.0.1:7401")]
    pub http: SocketAddr,
    /// Runbook library applied at start (every *.yaml / *.yml file).
    #[arg(long, default_value = "runbooks")]
    pub runbooks: PathBuf,
    /// Capacity of the embedded worker.
    #[arg(long, default_value_t = 4)]
    pub capacity: u32,
    /// Seconds a worker has to reconnect after a (re)start before its attempts are lost.
    #[arg(long, default_value_t = 5)]
    pub worker_grace_secs: u64,
    /// An approver group, NAME=PRINCIPAL,PRINCIPAL... (repeatable); approval steps name it as
    /// `group:NAME`.
    #[arg(long = "group", value_parser = parse_group)]
    pub groups: Vec<(String, Vec<String>)>,
    /// Chat-ops and Alertmanager hooks.
    #[command(flatten)]
    pub hooks: HookArgs,
}

/// Chat-ops and Alertmanager options of `baton dev` and `baton server` (docs/chatops.md).
/// Secrets never come from flags: set `BATON_SLACK_SIGNING_SECRET`, `BATON_MATTERMOST_TOKEN`
/// and `BATON_ALERTMANAGER_TOKEN` in the environment (or, for `baton server`, in `--config`);
/// a hook without its secret answers 404.
#[derive(Args, Debug, Default)]
pub struct HookArgs {
    /// A chat user and the principal they act as, PLATFORM:USER_ID=PRINCIPAL, PLATFORM being
    /// slack or mattermost (repeatable; in the file: `[slack.users]` with `USER_ID = "NAME"`).
    #[arg(long = "chat-user", value_parser = parse_chat_user)]
    pub chat_users: Vec<(Platform, String, String)>,
    /// Alertmanager rules (YAML), validated at start (in the file: `[alertmanager] rules`).
    #[arg(long)]
    pub alert_rules: Option<PathBuf>,
    /// A Slack incoming webhook URL for run notifications and approval prompts.
    #[arg(long)]
    pub slack_webhook: Option<String>,
    /// A Mattermost incoming webhook URL for run notifications and approval prompts.
    #[arg(long)]
    pub mattermost_webhook: Option<String>,
    /// The URL Mattermost posts Approve/Deny clicks to: this server's
    /// /hooks/mattermost/actions, as the Mattermost server reaches it.
    #[arg(long)]
    pub mattermost_action_url: Option<String>,
    /// Run changes posted to the webhooks, comma-separated: started, waiting, succeeded,
    /// failed, cancelled, needs_attention [default: all].
    #[arg(long, value_delimiter = ',')]
    pub notify: Vec<String>,
}

impl HookArgs {
    /// Flags over `config` (from the file, or the defaults), then secrets from the
    /// environment; validated.
    fn apply(self, config: &mut HooksConfig) -> anyhow::Result<()> {
        for (platform, user, principal) in self.chat_users {
            config.add_user(platform, user, principal);
        }
        if self.alert_rules.is_some() {
            config.alertmanager.rules = self.alert_rules;
        }
        if self.slack_webhook.is_some() {
            config.slack.webhook = self.slack_webhook;
        }
        if self.mattermost_webhook.is_some() {
            config.mattermost.webhook = self.mattermost_webhook;
        }
        if self.mattermost_action_url.is_some() {
            config.mattermost.action_url = self.mattermost_action_url;
        }
        if !self.notify.is_empty() {
            config.notify.events = self
                .notify
                .iter()
                .map(|n| NotifyEvent::parse(n))
                .collect::<Result<_, _>>()
                .map_err(anyhow::Error::msg)?;
        }
        config.secrets_from_env(|name| std::env::var(name).ok());
        config.validate().map_err(|e| anyhow::anyhow!("hooks: {e}"))
    }
}

/// Parses `PLATFORM:USER_ID=PRINCIPAL`.
pub fn parse_chat_user(s: &str) -> Result<(Platform, String, String), String> {
    let usage = || format!("expected PLATFORM:USER_ID=PRINCIPAL (slack:U024BE7LH=alice), got {s:?}");
    let (platform, rest) = s.split_once(':').ok_or_else(usage)?;
    let platform = Platform::parse(platform).ok_or_else(|| format!("{s:?}: the platform is slack or mattermost"))?;
    let (user, principal) = rest.split_once('=').ok_or_else(usage)?;
    if user.is_empty() || principal.is_empty() {
        return Err(usage());
    }
    Ok((platform, user.to_string(), principal.to_string()))
}

/// `baton server` options. Every one can also come from `--config FILE` (TOML, same names
/// with `_` for `-`, and `[peers]` as `ID = "HOST:PORT"`); a flag overrides the file.
#[derive(Args, Debug)]
pub struct ServerArgs {
    /// A TOML file with any of these options.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Raft node id (positive) [default: 1].
    #[arg(long)]
    pub id: Option<u64>,
    /// Where the node keeps its data (required, here or in the file).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:7400].
    #[arg(long)]
    pub grpc: Option<SocketAddr>,
    /// HTTP listen address [default: 127.0.0.1:7401].
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// Snapshot the state machine after this many applied entries [default: 2000].
    #[arg(long)]
    pub snapshot_every: Option<u64>,
    /// Seconds a worker may be away (after a leader change or a disconnect) before its
    /// attempts are lost [default: 10].
    #[arg(long)]
    pub worker_grace_secs: Option<u64>,
    /// Another member, ID=HOST:PORT of its gRPC listener (repeatable). All founding members
    /// of a new cluster must be started with the same set.
    #[arg(long = "peer", value_parser = parse_peer)]
    pub peers: Vec<(u64, String)>,
    /// Address the other members and workers reach this node at [default: --grpc].
    #[arg(long)]
    pub advertise: Option<String>,
    /// Milliseconds of one Raft tick; the election timeout is 10 ticks [default: 100].
    #[arg(long)]
    pub tick_ms: Option<u64>,
    /// Join an existing cluster instead of founding one: start without a configuration and
    /// wait to be added with `baton cluster join ID ADDR` (give the members as --peer).
    #[arg(long)]
    pub join: bool,
    /// An approver group, NAME=PRINCIPAL,PRINCIPAL... (repeatable; in the file: `[groups]`
    /// with `NAME = ["alice", "bob"]`). Approval steps name it as `group:NAME`.
    #[arg(long = "group", value_parser = parse_group)]
    pub groups: Vec<(String, Vec<String>)>,
    /// Chat-ops and Alertmanager hooks (in the file: `[slack]`, `[mattermost]`,
    /// `[alertmanager]`, `[notify]`).
    #[command(flatten)]
    pub hooks: HookArgs,
}

/// The `--config` file of `baton server`.
#[derive(serde::Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
struct ServerFile {
    /// Raft node id.
    id: Option<u64>,
    /// Data directory.
    data_dir: Option<PathBuf>,
    /// gRPC listen address.
    grpc: Option<SocketAddr>,
    /// HTTP listen address.
    http: Option<SocketAddr>,
    /// Entries between snapshots.
    snapshot_every: Option<u64>,
    /// Worker grace period in seconds.
    worker_grace_secs: Option<u64>,
    /// Address others reach this node at.
    advertise: Option<String>,
    /// Raft tick in milliseconds.
    tick_ms: Option<u64>,
    /// Join an existing cluster.
    join: Option<bool>,
    /// Other members: "ID" = "HOST:PORT".
    #[serde(default)]
    peers: BTreeMap<String, String>,
    /// Approver groups: NAME = ["principal", ...].
    #[serde(default)]
    groups: BTreeMap<String, Vec<String>>,
    /// The Slack app: signing secret, user mapping, incoming webhook.
    slack: Option<SlackFile>,
    /// The Mattermost integration: token, user mapping, incoming webhook, action URL.
    mattermost: Option<MattermostFile>,
    /// The Alertmanager receiver: token and rules file.
    alertmanager: Option<AlertmanagerFile>,
    /// Which run changes are posted to the webhooks.
    notify: Option<NotifyFile>,
}

impl ServerArgs {
    /// Flags over the file over defaults, validated.
    fn resolve(self) -> anyhow::Result<ServerConfig> {
        let file = match &self.config {
            None => ServerFile::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?
            }
        };
        let data_dir = self
            .data_dir
            .or(file.data_dir)
            .ok_or_else(|| anyhow::anyhow!("--data-dir is required (or data_dir in --config)"))?;
        let id = self.id.or(file.id).unwrap_or(1);
        if id == 0 {
            bail!("the node id must be positive");
        }
        let mut config = ServerConfig::new(data_dir);
        config.id = id;
        config.grpc_addr = self.grpc.or(file.grpc).unwrap_or(config.grpc_addr);
        config.http_addr = self.http.or(file.http).unwrap_or(config.http_addr);
        config.snapshot_every = self.snapshot_every.or(file.snapshot_every).unwrap_or(2000).max(1);
        config.worker_grace =
            std::time::Duration::from_secs(self.worker_grace_secs.or(file.worker_grace_secs).unwrap_or(10));
        config.advertise = self.advertise.or(file.advertise);
        config.join = self.join || file.join.unwrap_or(false);
        config.tick = std::time::Duration::from_millis(self.tick_ms.or(file.tick_ms).unwrap_or(100).max(10));
        config.groups = file.groups;
        for (name, members) in self.groups {
            config.groups.insert(name, members);
        }
        for (name, members) in &config.groups {
            check_group(name, members).map_err(|e| anyhow::anyhow!("group {name:?}: {e}"))?;
        }
        let mut alertmanager = file.alertmanager;
        if let (Some(am), Some(dir)) = (alertmanager.as_mut(), self.config.as_deref().and_then(Path::parent)) {
            // A relative rules path in the file is relative to the file.
            am.rules = am.rules.take().map(|rules| dir.join(rules));
        }
        let mut hooks = HooksConfig::from_file(file.slack, file.mattermost, alertmanager, file.notify)
            .map_err(|e| anyhow::anyhow!("hooks in the config file: {e}"))?;
        self.hooks.apply(&mut hooks)?;
        config.hooks = hooks;
        let mut peers = Vec::new();
        for (k, v) in file.peers {
            peers
                .push(parse_peer(&format!("{k}={v}")).map_err(|e| anyhow::anyhow!("[peers] in the config file: {e}"))?);
        }
        if !self.peers.is_empty() {
            peers = self.peers;
        }
        for (peer, addr) in peers {
            if peer == id {
                bail!("peer {peer}={addr}: that is this node's own id");
            }
            if config.peers.insert(peer, addr).is_some() {
                bail!("peer {peer} is given twice");
            }
        }
        Ok(config)
    }
}

/// Parses `NAME=PRINCIPAL,PRINCIPAL...`.
pub fn parse_group(s: &str) -> Result<(String, Vec<String>), String> {
    let (name, members) = s.split_once('=').ok_or_else(|| format!("expected NAME=PRINCIPAL,..., got {s:?}"))?;
    let members: Vec<String> = members.split(',').map(str::trim).filter(|m| !m.is_empty()).map(String::from).collect();
    check_group(name, &members)?;
    Ok((name.to_string(), members))
}

fn check_group(name: &str, members: &[String]) -> Result<(), String> {
    let valid =
        |s: &str| !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    if !valid(name) {
        return Err(format!("group name {name:?} must be letters, digits, '.', '_', '@' or '-'"));
    }
    if members.is_empty() {
        return Err(format!("group {name:?} has no members"));
    }
    if let Some(bad) = members.iter().find(|m| !valid(m)) {
        return Err(format!("member {bad:?} of group {name:?} must be letters, digits, '.', '_', '@' or '-'"));
    }
    Ok(())
}

/// Parses `ID=ADDR`.
pub fn parse_peer(s: &str) -> Result<(u64, String), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| format!("expected ID=HOST:PORT, got {s:?}"))?;
    let id: u64 = id.parse().map_err(|_| format!("peer id {id:?} is not a positive number"))?;
    if id == 0 || addr.is_empty() {
        return Err(format!("expected ID=HOST:PORT with a positive ID, got {s:?}"));
    }
    Ok((id, addr.to_string()))
}

/// `baton worker` options.
#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Scheduler addresses, comma-separated.
    #[arg(long, env = "BATON_ADDR", value_delimiter = ',', default_value = "127.0.0.1:7400")]
    pub server: Vec<String>,
    /// Worker id (default: the host name). Keep it stable across restarts.
    #[arg(long)]
    pub id: Option<String>,
    /// A label, KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_kv)]
    pub labels: Vec<(String, String)>,
    /// Attempts run at once.
    #[arg(long, default_value_t = 4)]
    pub capacity: u32,
    /// Assignments accepted beyond --capacity and queued on this worker, so a slot that frees
    /// starts the next step without a round trip to the cluster. Worth it for many short
    /// steps; a queued step waits for this worker even if another one has room.
    #[arg(long, default_value_t = 0)]
    pub prefetch: u32,
}

/// Parses `KEY=VALUE`.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Adds `http://` when an address has no scheme.
pub fn endpoint(addr: &str) -> String {
    if addr.contains("://") { addr.to_string() } else { format!("http://{addr}") }
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// Applies every document of the runbook library: runbooks first, then schedules.
async fn apply_library(api: &baton_scheduler::api::Api, dir: &Path) -> anyhow::Result<usize> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the runbook library {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    let mut docs = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let name = path.display().to_string();
        let is_schedule = matches!(parse_document(&name, &text), Ok(Document::Schedule(_)));
        docs.push((is_schedule, name, text));
    }
    docs.sort_by_key(|(is_schedule, _, _)| *is_schedule);
    for (_, name, text) in &docs {
        let r = api.apply_document(name, text).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        tracing::info!(kind = r.kind, name = r.name, changed = r.changed, "applied {name}");
    }
    Ok(docs.len())
}

/// `baton dev`.
pub async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let mut config = ServerConfig::new(args.data_dir.clone());
    config.grpc_addr = args.grpc;
    config.http_addr = args.http;
    config.worker_grace = std::time::Duration::from_secs(args.worker_grace_secs);
    config.groups = args.groups.iter().cloned().collect();
    let mut hooks = HooksConfig::default();
    args.hooks.apply(&mut hooks)?;
    let hooks_on = hooks_summary(&hooks);
    config.hooks = hooks;
    let server = start(config).await?;
    let applied = if args.runbooks.is_dir() {
        apply_library(&server.api, &args.runbooks).await?
    } else {
        tracing::warn!("runbook library {} not found; starting without it", args.runbooks.display());
        0
    };
    let shutdown = CancellationToken::new();
    let mut worker_config = WorkerConfig::new("dev", vec![format!("http://{}", server.grpc_addr)]);
    worker_config.capacity = args.capacity;
    worker_config.labels = BTreeMap::from([("mode".to_string(), "dev".to_string())]);
    let worker = tokio::spawn(run_worker(worker_config, shutdown.clone()));
    let addr = server.grpc_addr;
    println!("Baton dev is running: a single-node cluster, an embedded worker and {applied} runbook file(s).");
    println!("  data:    {}", args.data_dir.display());
    println!("  gRPC:    {addr}   (API, workers)");
    println!("  HTTP:    http://{}   (/healthz /readyz /metrics)", server.http_addr);
    if !hooks_on.is_empty() {
        println!("  hooks:   {}", hooks_on.join(", "));
    }
    println!();
    println!("Try, in another shell:");
    let flag = if addr.port() == 7400 { String::new() } else { format!(" --addr {addr}") };
    let baton = command_name();
    println!("  {baton} runbook list{flag}");
    println!("  {baton} run start hello-world -p name=Ada --wait{flag}");
    println!("  {baton} run list{flag}");
    println!();
    println!("Stop with Ctrl-C; state survives restarts in {}.", args.data_dir.display());
    wait_for_signal().await?;
    println!("stopping");
    shutdown.cancel();
    let _ = worker.await;
    server.stop().await;
    Ok(())
}

/// The hooks that are on, for the banner: `/hooks/slack/* (2 users)`...
fn hooks_summary(hooks: &HooksConfig) -> Vec<String> {
    let mut on = Vec::new();
    if hooks.slack.signing_secret.is_some() {
        on.push(format!("/hooks/slack/* ({} user(s))", hooks.slack.users.len()));
    }
    if hooks.mattermost.token.is_some() {
        on.push(format!("/hooks/mattermost/* ({} user(s))", hooks.mattermost.users.len()));
    }
    if hooks.alertmanager.token.is_some() {
        let rules = hooks.alertmanager.rules.as_ref().map_or("no rules".to_string(), |r| r.display().to_string());
        on.push(format!("/hooks/alertmanager ({rules})"));
    }
    on
}

/// How to call this binary from a shell: `baton` when that name on PATH is this binary (as
/// after `cargo install`), else its path (as under `cargo run`).
fn command_name() -> String {
    let Ok(me) = std::env::current_exe().and_then(|p| p.canonicalize()) else { return "baton".into() };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|d| d.join("baton").canonicalize().is_ok_and(|p| p == me))
    });
    if on_path {
        return "baton".into();
    }
    let cwd = std::env::current_dir().ok();
    match cwd.and_then(|c| me.strip_prefix(&c).ok().map(Path::to_path_buf)) {
        Some(rel) => format!("./{}", rel.display()),
        None => me.display().to_string(),
    }
}

/// `baton server`.
pub async fn server(args: ServerArgs) -> anyhow::Result<()> {
    let config = args.resolve()?;
    let id = config.id;
    let server = start(config).await?;
    println!("baton server {id} listening: gRPC {} HTTP http://{}", server.grpc_addr, server.http_addr);
    wait_for_signal().await?;
    server.stop().await;
    Ok(())
}

/// `baton worker`.
pub async fn worker(args: WorkerArgs) -> anyhow::Result<()> {
    let id = match args.id {
        Some(id) => id,
        None => std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "worker".into()),
    };
    if args.capacity == 0 || args.capacity > 1024 {
        bail!("--capacity must be between 1 and 1024");
    }
    if args.prefetch > 1024 {
        bail!("--prefetch must be at most 1024");
    }
    let mut config = WorkerConfig::new(id, args.server.iter().map(|s| endpoint(s)).collect());
    config.capacity = args.capacity;
    config.prefetch = args.prefetch;
    config.labels = args.labels.into_iter().collect();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run_worker(config, shutdown.clone()));
    wait_for_signal().await?;
    shutdown.cancel();
    task.await??;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn resolve(args: &[&str]) -> anyhow::Result<ServerConfig> {
        Wrap::try_parse_from(std::iter::once("server").chain(args.iter().copied()))?.args.resolve()
    }

    #[test]
    fn the_config_file_fills_what_flags_leave_out() {
        let dir = tempfile_dir();
        let file = dir.join("node.toml");
        std::fs::write(&file, "id = 2\ndata_dir = \"/d\"\ngrpc = \"127.0.0.1:7102\"\n[peers]\n1 = \"127.0.0.1:7101\"\n3 = \"127.0.0.1:7103\"\n").unwrap();
        let c = resolve(&["--config", file.to_str().unwrap(), "--tick-ms", "50"]).unwrap();
        assert_eq!((c.id, c.grpc_addr.port(), c.tick.as_millis()), (2, 7102, 50));
        assert_eq!(c.peers.keys().copied().collect::<Vec<_>>(), vec![1, 3]);
        // Flags win over the file.
        let c = resolve(&["--config", file.to_str().unwrap(), "--id", "5", "--peer", "9=h:1"]).unwrap();
        assert_eq!((c.id, c.peers.len()), (5, 1));
        std::fs::write(&file, "id = 1\nbogus = true\n").unwrap();
        let err = resolve(&["--config", file.to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(resolve(&["--id", "1"]).unwrap_err().to_string().contains("--data-dir"));
        assert!(resolve(&["--data-dir", "/d", "--id", "1", "--peer", "1=h:1"]).is_err(), "own id as a peer");
        assert!(resolve(&["--data-dir", "/d", "--peer", "2=h:1", "--peer", "2=h:2"]).is_err(), "duplicate peer");
    }

    #[test]
    fn hooks_come_from_the_file_and_flags() {
        let dir = tempfile_dir();
        let file = dir.join("hooks.toml");
        let text = "data_dir = \"/d\"\n[slack]\nsigning_secret = \"s3cret\"\n[slack.users]\nU1 = \"alice\"\n\
                    [alertmanager]\nrules = \"alerts.yaml\"\n[notify]\nevents = [\"failed\"]\n";
        std::fs::write(&file, text).unwrap();
        let c = resolve(&["--config", file.to_str().unwrap(), "--chat-user", "mattermost:abc=bob"]).unwrap();
        assert_eq!(c.hooks.slack.users["U1"], "alice");
        assert_eq!(c.hooks.mattermost.users["abc"], "bob");
        assert_eq!(c.hooks.alertmanager.rules, Some(dir.join("alerts.yaml")), "relative to the file");
        assert_eq!(c.hooks.notify.events, vec![NotifyEvent::Failed]);
        assert!(c.hooks.slack.signing_secret.is_some());
        assert!(!format!("{:?}", c.hooks).contains("s3cret"), "secrets never show in Debug");
        let err = resolve(&["--data-dir", "/d", "--chat-user", "irc:x=y"]).unwrap_err().to_string();
        assert!(err.contains("slack or mattermost"), "{err}");
        let err = resolve(&["--data-dir", "/d", "--slack-webhook", "not a url"]).unwrap_err().to_string();
        assert!(err.contains("slack.webhook"), "{err}");
        std::fs::write(&file, "data_dir = \"/d\"\n[slack]\nsecret = \"x\"\n").unwrap();
        let err = resolve(&["--config", file.to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains("secret") && err.contains("signing_secret"), "{err}");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("baton-cli-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
