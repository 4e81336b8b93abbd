//! Runbooks: the validated domain type, its YAML parser and the diagnostics it reports.
//!
//! Parsing has two stages. serde reads the text into the file structs of [`file`] (unknown keys
//! and wrong YAML types stop it there); validation then checks everything that spans fields and
//! builds a [`Runbook`]. Validation collects every problem instead of stopping at the first, so
//! one `baton runbook apply` shows the whole list.
//!
//! Every [`Diagnostic`] names the file, the 1-based line and column and the field path
//! (`steps[1].with.command`). serde-saphyr reports positions but not paths, and validated values
//! have neither, so both are looked up in a [`source_map::SourceMap`] built from the same text.
//!
//! A runbook is immutable once parsed: its `version` is a hash of its source text, and runs are
//! pinned to a version.

mod file;
mod params;
pub(crate) mod source_map;

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::duration::parse_duration;
use crate::schedule::Schedule;
use crate::template::{self, RUN_CONTEXT_FIELDS, STEP_CONTEXT_FIELDS};
pub use params::{ParamError, ParamKind, ParamSpec, SecretRef};

use file::{ActionType, ApprovalFile, Argv, ExecWithFile, ParamFile, ParamType, RunbookFile, StepFile};
use source_map::{Pos, SourceMap, join_key};

/// A validated runbook, as stored in the replicated state and pinned by runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Runbook {
    /// Unique name, `^[a-z0-9][a-z0-9-]{0,62}$`.
    pub name: String,
    /// What the runbook does; may be empty.
    pub description: String,
    /// Declared parameters, in the order they were written.
    pub params: Vec<ParamSpec>,
    /// Steps, in run order; never empty, ids unique.
    pub steps: Vec<Step>,
    /// Content hash: the first 16 hex characters of the SHA-256 of `source`.
    pub version: String,
    /// The YAML text this runbook was parsed from.
    pub source: String,
    /// At most this many runs at once (oldest waiting run first); `None`: no limit.
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Limit on the whole run in ms, counted from its creation; `None`: no limit.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Lock name templates (over `params`).
    #[serde(default)]
    pub locks: Vec<String>,
    /// Whether a run waits for held locks (`false`) or is skipped (`true`).
    #[serde(default)]
    pub skip_if_locked: bool,
    /// The rate budget, if any.
    #[serde(default)]
    pub budget: Option<Budget>,
    /// Checks before each step or batch starts.
    #[serde(default)]
    pub guards: Vec<Guard>,
    /// Steps run once when the run fails.
    #[serde(default)]
    pub on_failure: Vec<Step>,
    /// Steps run once when the run is cancelled.
    #[serde(default)]
    pub on_cancel: Vec<Step>,
}

/// A check made before each step or batch of a run starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guard {
    /// The name used in messages.
    pub name: String,
    /// What is checked.
    pub check: GuardCheck,
}

/// What a guard checks. URLs and queries are templates over `params`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GuardCheck {
    /// An instant query that must return at least one sample, none of them 0.
    Prometheus {
        /// Prometheus server URL.
        url: String,
        /// PromQL.
        query: String,
    },
    /// A GET that must answer `status` (any 2xx when `None`).
    Http {
        /// The URL.
        url: String,
        /// The expected status.
        status: Option<u16>,
    },
}

/// At most `max_runs` runs per `per_ms` for one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Runs allowed per window (>= 1).
    pub max_runs: u32,
    /// The window in ms (> 0).
    pub per_ms: u64,
    /// The key template; `None`: one key for the runbook.
    pub key: Option<String>,
}

/// Longest rendered lock name or budget key.
const MAX_LOCK_NAME: usize = 256;

/// One step of a runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// Unique id within the runbook, `^[a-z0-9][a-z0-9_-]{0,62}$`.
    pub id: String,
    /// What the step does.
    pub action: Action,
    /// Limit on one attempt, in milliseconds; the worker's default when absent.
    pub timeout_ms: Option<u64>,
    /// Whether running the step twice is as safe as running it once.
    pub idempotent: bool,
    /// Condition (a minijinja expression); the step is skipped when it is false.
    #[serde(default)]
    pub when: Option<String>,
    /// Retry policy for failed or timed-out attempts.
    #[serde(default)]
    pub retry: Option<RetryPolicy>,
    /// Whether the run goes on after this step fails.
    #[serde(default)]
    pub continue_on_error: bool,
    /// Run once per target, in batches.
    #[serde(default)]
    pub foreach: Option<Foreach>,
    /// The `parallel` group it belongs to (the group's id): the group's steps run at once.
    #[serde(default)]
    pub group: Option<String>,
}

/// A step run once per target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Foreach {
    /// Where the targets come from.
    pub over: ForeachOver,
    /// How many targets run at once.
    pub batch: Portion,
    /// How many targets may fail before the step fails.
    pub max_failures: Portion,
    /// Wait after each batch before the next, in ms.
    pub bake_ms: u64,
}

/// The targets of a `foreach`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForeachOver {
    /// A list expression (minijinja) over `params`, earlier steps and `run`.
    List(String),
    /// Every connected worker with these labels; each target runs on its worker.
    Workers(BTreeMap<String, String>),
}

/// A count of targets or a share of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Portion {
    /// This many.
    Count(u64),
    /// This percentage (0 to 100).
    Percent(u32),
    /// All of them.
    All,
}

impl Portion {
    /// The batch size for `n` targets: at least 1, rounded up.
    pub fn batch_of(self, n: usize) -> usize {
        match self {
            Portion::All => n.max(1),
            Portion::Count(c) => usize::try_from(c).unwrap_or(usize::MAX).max(1),
            Portion::Percent(p) => (n * p as usize).div_ceil(100).max(1),
        }
    }

    /// The failures tolerated among `n` targets, rounded down.
    pub fn tolerated_of(self, n: usize) -> usize {
        match self {
            Portion::All => n,
            Portion::Count(c) => usize::try_from(c).unwrap_or(usize::MAX),
            Portion::Percent(p) => n * p as usize / 100,
        }
    }
}

/// When and how often a failed step is attempted again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: u32,
    /// Wait before the first retry, in ms; doubles for each further retry.
    pub backoff_ms: u64,
    /// Longest wait between attempts, in ms.
    pub max_backoff_ms: u64,
    /// Which failures are retried: a failure (non-zero exit, signal, could not start)...
    #[serde(default = "yes")]
    pub on_failure: bool,
    /// ...and a timeout.
    #[serde(default = "yes")]
    pub on_timeout: bool,
    /// When not empty, only failures with one of these exit codes are retried.
    #[serde(default)]
    pub exit_codes: Vec<i32>,
}

fn yes() -> bool {
    true
}

impl RetryPolicy {
    /// Whether an attempt that ended so is retried (if attempts are left).
    pub fn retries(&self, timed_out: bool, exit_code: Option<i32>) -> bool {
        if timed_out {
            return self.on_timeout;
        }
        self.on_failure && (self.exit_codes.is_empty() || exit_code.is_some_and(|c| self.exit_codes.contains(&c)))
    }

    /// The wait before attempt `next` (2 for the first retry), in ms.
    pub fn backoff_before(&self, next: u32) -> u64 {
        let doublings = next.saturating_sub(2).min(32);
        self.backoff_ms.saturating_mul(1u64 << doublings).min(self.max_backoff_ms)
    }
}

/// The actions a step can run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", content = "with", rename_all = "snake_case")]
pub enum Action {
    /// Run a program with an argv list.
    Exec(ExecAction),
    /// Wait for people to approve (carried out by the scheduler, not a worker).
    Approval(ApprovalAction),
    /// Wait a fixed time (carried out by the scheduler, not a worker).
    Sleep(SleepAction),
}

impl Action {
    /// `exec`, `approval` or `sleep`.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Exec(_) => "exec",
            Action::Approval(_) => "approval",
            Action::Sleep(_) => "sleep",
        }
    }
}

/// An approval step's rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalAction {
    /// Principals (`alice`) and groups (`group:sre-oncall`) who may decide.
    pub approvers: Vec<String>,
    /// How many different principals must approve.
    pub min_approvals: u32,
    /// How long to wait before the step is denied, in ms.
    pub timeout_ms: u64,
    /// What approvers are asked (a template); `None`: a generic question.
    pub message: Option<String>,
}

/// A sleep step's duration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SleepAction {
    /// How long to wait, in ms.
    pub duration_ms: u64,
}

/// Inputs of the `exec` action, still as templates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExecAction {
    /// Program and arguments; each element is one template that renders to one argument.
    pub command: Vec<String>,
    /// Extra environment variables; values are templates.
    pub env: BTreeMap<String, String>,
    /// Working directory template, if set.
    pub workdir: Option<String>,
    /// Names of the runbook's `secret` parameters: [`crate::template::render_exec`] renders them
    /// as secret markers, which the worker replaces with the secret just before it starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secret_params: Vec<String>,
}

/// A parsed document: runbook files and schedule files share one loader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Document {
    /// A runbook document.
    Runbook(Runbook),
    /// A schedule document (it has a top-level `schedule:` key).
    Schedule(Schedule),
}

/// One problem in a document, located precisely enough to jump to it in an editor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// The file name as given to the parser.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Field path such as `steps[1].with.command`; empty for the document itself.
    pub field: String,
    /// What was expected and what was found.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: ", self.file, self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// A document that could not be loaded: one or more diagnostics, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub struct RunbookError {
    /// The problems found; never empty.
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for RunbookError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

/// Parses a runbook or a schedule; a top-level `schedule:` key makes it a schedule.
pub fn parse_document(file: &str, text: &str) -> Result<Document, RunbookError> {
    let map = index(file, text)?;
    if map.contains("schedule") {
        Schedule::from_source(file, text, &map).map(Document::Schedule)
    } else {
        Runbook::from_source(file, text, &map).map(Document::Runbook)
    }
}

/// The JSON Schema of runbook and schedule documents (either one), for editors and for
/// `baton runbook schema`. Titles and descriptions come from the file structs' doc comments.
pub fn json_schema() -> serde_json::Value {
    let settings = schemars::generate::SchemaSettings::draft2020_12().for_deserialize();
    let schema = settings.into_generator().into_root_schema_for::<file::DocumentFile>();
    let mut value = schema.to_value();
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "description".to_string(),
            "A Baton runbook (name, params, steps) or schedule (schedule, runbook, cron).".into(),
        );
    }
    value
}

impl Step {
    /// An `exec` step with no `foreach`, `when` or `parallel` group: as a run's first step, it
    /// needs a free worker and nothing else to start.
    pub fn is_plain_exec(&self) -> bool {
        matches!(self.action, Action::Exec(_)) && self.foreach.is_none() && self.when.is_none() && self.group.is_none()
    }
}

impl Runbook {
    /// Parses and validates a runbook; `file` is only used in diagnostics.
    pub fn parse(file: &str, text: &str) -> Result<Runbook, RunbookError> {
        let map = index(file, text)?;
        Runbook::from_source(file, text, &map)
    }

    /// Checks and coerces the parameter values for a run (see [`ParamSpec`] for the rules) and
    /// fills in defaults. The result is what templates see as `params`.
    pub fn resolve_params(
        &self,
        given: &BTreeMap<String, serde_json::Value>,
    ) -> Result<BTreeMap<String, serde_json::Value>, ParamError> {
        params::resolve(&self.params, given)
    }

    /// The step with this id, in the main steps or in `on_failure` / `on_cancel`.
    pub fn step(&self, id: &str) -> Option<&Step> {
        self.steps.iter().chain(&self.on_failure).chain(&self.on_cancel).find(|step| step.id == id)
    }

    /// The run's lock names for these (resolved) params: rendered, trimmed, deduplicated, in
    /// order. A lock that renders empty, too long or with control characters is an error.
    pub fn render_locks(&self, params: &BTreeMap<String, serde_json::Value>) -> Result<Vec<String>, String> {
        let mut locks = Vec::new();
        for (i, source) in self.locks.iter().enumerate() {
            let name = render_name(source, params).map_err(|e| format!("locks[{i}]: {e}"))?;
            if !locks.contains(&name) {
                locks.push(name);
            }
        }
        Ok(locks)
    }

    /// The run's budget key for these params (`""` with no key template); `None` without a
    /// budget.
    pub fn budget_key(&self, params: &BTreeMap<String, serde_json::Value>) -> Result<Option<String>, String> {
        let Some(budget) = &self.budget else { return Ok(None) };
        match &budget.key {
            None => Ok(Some(String::new())),
            Some(source) => render_name(source, params).map(Some).map_err(|e| format!("budget.key: {e}")),
        }
    }

    /// Advice that does not make the runbook invalid. Today: a template inside the script text
    /// of `sh -c` (or bash, dash...), where a value could be read as shell code; pass it
    /// through `env` instead. `file` is only used in the diagnostics.
    pub fn lint(&self, file: &str) -> Vec<Diagnostic> {
        let Ok(map) = SourceMap::build(&self.source) else {
            return Vec::new();
        };
        let mut diags = Diagnostics::new(file, &map);
        for (i, step) in self.steps.iter().enumerate() {
            let Action::Exec(exec) = &step.action else { continue };
            let is_shell = exec.command.first().is_some_and(|program| {
                let base = program.rsplit('/').next().unwrap_or(program);
                matches!(base, "sh" | "bash" | "dash" | "zsh" | "ksh" | "ash")
            });
            if !is_shell {
                continue;
            }
            let mut script_follows = false;
            for (j, arg) in exec.command.iter().enumerate().skip(1) {
                if script_follows && (arg.contains("{{") || arg.contains("{%")) {
                    diags.value(
                        &format!("steps[{i}].with.command[{j}]"),
                        "template inside a shell script: a value containing quotes or `;` \
                         would run as code; pass it through `env` and use \"$NAME\" instead",
                    );
                }
                script_follows = arg.starts_with('-') && !arg.starts_with("--") && arg.contains('c');
            }
        }
        diags.finish(()).err().map_or_else(Vec::new, |e| e.diagnostics)
    }

    fn from_source(file: &str, text: &str, map: &SourceMap<'_>) -> Result<Runbook, RunbookError> {
        let parsed: RunbookFile = deserialize(file, text, map)?;
        let mut diags = Diagnostics::new(file, map);
        let runbook = validate(parsed, text, &mut diags);
        diags.finish(runbook)
    }
}

/// Renders a lock name or budget key template over `params`.
fn render_name(source: &str, params: &BTreeMap<String, serde_json::Value>) -> Result<String, String> {
    let ctx = serde_json::json!({ "params": params });
    let name = template::render_text(source, &ctx).map_err(|e| e.message)?.trim().to_string();
    if name.is_empty() {
        return Err(format!("{source:?} renders empty for these params"));
    }
    if name.len() > MAX_LOCK_NAME || name.chars().any(char::is_control) {
        return Err(format!("{source:?} renders to {name:?}: at most {MAX_LOCK_NAME} bytes, no control characters"));
    }
    Ok(name)
}

/// The first 16 hex characters of the SHA-256 of `source`: a runbook's version.
pub(crate) fn content_version(source: &str) -> String {
    let digest = Sha256::digest(source.as_bytes());
    let mut version = hex::encode(digest);
    version.truncate(16);
    version
}

// ---------------------------------------------------------------------------------------------
// Reading YAML and turning errors into diagnostics

/// Indexes the text, turning a YAML syntax error (or an empty document) into a diagnostic.
pub(crate) fn index<'a>(file: &str, text: &'a str) -> Result<SourceMap<'a>, RunbookError> {
    let map = SourceMap::build(text)
        .map_err(|err| single(file, err.pos, err.path, format!("invalid YAML: {}", err.message)))?;
    if !map.contains("") {
        return Err(single(
            file,
            Pos::START,
            String::new(),
            "the document is empty; expected a runbook (name, steps) or a schedule \
             (schedule, runbook, cron)"
                .to_string(),
        ));
    }
    Ok(map)
}

/// Deserializes a file struct, locating serde-saphyr's error by position and path.
pub(crate) fn deserialize<T: serde::de::DeserializeOwned>(
    file: &str,
    text: &str,
    map: &SourceMap<'_>,
) -> Result<T, RunbookError> {
    let mut options = serde_saphyr::Options::default();
    // YAML 1.2 booleans: `yes`, `no`, `on` and `off` are strings, not surprises.
    options.strict_booleans = true;
    options.with_snippet = false;
    serde_saphyr::from_str_with_options::<T>(text, options).map_err(|err| serde_diagnostic(file, map, &err))
}

fn serde_diagnostic(file: &str, map: &SourceMap<'_>, err: &serde_saphyr::Error) -> RunbookError {
    use serde_saphyr::MessageFormatter;
    let pos = err.location().map_or(Pos::START, |loc| Pos {
        line: usize::try_from(loc.line()).unwrap_or(1).max(1),
        column: usize::try_from(loc.column()).unwrap_or(1).max(1),
    });
    let raw = serde_saphyr::UserMessageFormatter.format_message(err).into_owned();
    let found = map.found_at(pos);
    let found_text = found.as_deref().unwrap_or("something else");
    let key_path = || map.path_of_key_at(pos).map(str::to_string);
    let value_path = || map.path_of_value_at(pos).map(str::to_string);
    let (path, message) = if let Some(rest) = raw.strip_prefix("unknown field ") {
        (key_path().or_else(value_path), format!("unknown key {rest}"))
    } else if raw.starts_with("duplicate mapping key") {
        (key_path().or_else(value_path), "duplicate key".to_string())
    } else if let Some(name) = backticked(&raw, "missing field ") {
        // serde-saphyr reports this at the mapping's last key; point at the mapping instead.
        let parent = value_path().unwrap_or_default();
        let field = join_key(&parent, name);
        let message = format!("missing required key `{name}`");
        return single(file, map.value_pos(&parent), field, message);
    } else if let Some(rest) = raw.strip_prefix("unknown variant ") {
        (value_path(), format!("unknown value {rest}"))
    } else {
        let expected = match raw.as_str() {
            "expected sequence start" => Some("a list"),
            "expected mapping start" => Some("a mapping"),
            "expected string scalar" => Some("a string"),
            "null is not allowed here" => Some("a value"),
            m if m.starts_with("invalid boolean") => Some("true or false"),
            m if m.starts_with("invalid i") || m.starts_with("invalid u") => Some("an integer"),
            _ => None,
        };
        let message = match expected {
            Some(expected) => format!("expected {expected}, found {found_text}"),
            None if raw.contains("found") || found.is_none() => raw.clone(),
            None => format!("{raw}, found {found_text}"),
        };
        (value_path().or_else(key_path), message)
    };
    single(file, pos, path.unwrap_or_default(), message)
}

/// `"missing field `steps`"` with prefix `"missing field "` → `steps`.
fn backticked<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.strip_prefix(prefix)?.strip_prefix('`')?.split('`').next()
}

fn single(file: &str, pos: Pos, field: String, message: String) -> RunbookError {
    RunbookError {
        diagnostics: vec![Diagnostic { file: file.to_string(), line: pos.line, column: pos.column, field, message }],
    }
}

/// Collects diagnostics during validation, locating each by field path.
pub(crate) struct Diagnostics<'m, 'a> {
    file: String,
    map: &'m SourceMap<'a>,
    items: Vec<Diagnostic>,
}

impl<'m, 'a> Diagnostics<'m, 'a> {
    pub(crate) fn new(file: &str, map: &'m SourceMap<'a>) -> Self {
        Diagnostics { file: file.to_string(), map, items: Vec::new() }
    }

    fn push(&mut self, pos: Pos, field: &str, message: String) {
        self.items.push(Diagnostic {
            file: self.file.clone(),
            line: pos.line,
            column: pos.column,
            field: field.to_string(),
            message,
        });
    }

    /// A problem with the value at `field`.
    pub(crate) fn value(&mut self, field: &str, message: impl Into<String>) {
        let pos = self.map.value_pos(field);
        self.push(pos, field, message.into());
    }

    /// A key that `parent` lacks: located at the parent mapping, named `parent.key`.
    pub(crate) fn missing(&mut self, parent: &str, key: &str, message: impl Into<String>) {
        let pos = self.map.value_pos(parent);
        self.push(pos, &join_key(parent, key), message.into());
    }

    /// A problem with the key (name) of `field`.
    pub(crate) fn key(&mut self, field: &str, message: impl Into<String>) {
        let pos = self.map.key_pos(field);
        self.push(pos, field, message.into());
    }

    /// A problem with one piece of text inside the (single-line) value at `field`.
    fn within(&mut self, field: &str, needle: &str, message: impl Into<String>) {
        let pos = self.map.text_pos(field, needle);
        self.push(pos, field, message.into());
    }

    /// What is written at `field`, for "found ..." in messages.
    pub(crate) fn found(&self, field: &str) -> String {
        self.map.found(field).unwrap_or_else(|| "nothing".to_string())
    }

    /// `Ok(value)` if nothing was reported, else every diagnostic in document order.
    pub(crate) fn finish<T>(mut self, value: T) -> Result<T, RunbookError> {
        if self.items.is_empty() {
            return Ok(value);
        }
        self.items.sort_by_key(|d| (d.line, d.column));
        Err(RunbookError { diagnostics: self.items })
    }
}

/// Compiles a constant pattern (the file module's name rules).
pub(crate) fn constant_regex(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|_| unreachable!("constant pattern {pattern} is valid"))
}

/// Reports `field` unless `value` matches `pattern`; `what` is e.g. "a runbook name".
pub(crate) fn check_name(diags: &mut Diagnostics<'_, '_>, field: &str, value: &str, pattern: &str, what: &str) -> bool {
    let ok = constant_regex(pattern).is_match(value);
    if !ok {
        diags.value(field, format!("expected {what} matching {pattern}, found {value:?}"));
    }
    ok
}

// ---------------------------------------------------------------------------------------------
// Validation: file structs → domain types

fn validate(parsed: RunbookFile, text: &str, diags: &mut Diagnostics<'_, '_>) -> Runbook {
    check_name(diags, "name", &parsed.name, file::NAME_PATTERN, "a runbook name");
    let params: Vec<ParamSpec> =
        parsed.params.0.into_iter().filter_map(|(name, param)| validate_param(name, param, diags)).collect();
    if parsed.steps.is_empty() {
        diags.value("steps", format!("expected at least one step, found {}", diags.found("steps")));
    }
    // Ids of all steps, valid or not, so one bad step does not make later references to it
    // look wrong too.
    // Every step of every block, parallel groups flattened: (block, path, group, step).
    let mut entries: Vec<(usize, String, Option<String>, StepFile)> = Vec::new();
    for (block, name, steps) in
        [(0, "steps", parsed.steps), (1, "on_failure", parsed.on_failure), (2, "on_cancel", parsed.on_cancel)]
    {
        for (i, mut step) in steps.into_iter().enumerate() {
            let path = format!("{name}[{i}]");
            match step.parallel.take() {
                None => entries.push((block, path, None, step)),
                Some(children) => {
                    check_group(&path, &step, &children, diags);
                    // The group's own id is reserved, so nothing else can take it.
                    let group = step.id.clone();
                    entries.push((block, path.clone(), Some(String::new()), step));
                    for (j, child) in children.into_iter().enumerate() {
                        entries.push((block, format!("{path}.parallel[{j}]"), Some(group.clone()), child));
                    }
                }
            }
        }
    }
    let ids: Vec<String> = entries.iter().map(|(_, _, _, s)| s.id.clone()).collect();
    let entry_blocks: Vec<usize> = entries.iter().map(|(b, _, _, _)| *b).collect();
    let mut blocks: [Vec<Step>; 3] = Default::default();
    for (index, (_, path, _, step)) in entries.iter().enumerate() {
        if let Some(first) = ids[..index].iter().position(|id| *id == step.id) {
            diags.value(
                &format!("{path}.id"),
                format!(
                    "duplicate step id {:?}: {} already uses it; step ids must be unique",
                    step.id, entries[first].1
                ),
            );
        }
    }
    let mut group_start = 0;
    for (index, (block, path, group, step)) in entries.into_iter().enumerate() {
        if group.as_deref() == Some("") {
            // A group header: its steps start after it and cannot read each other.
            group_start = index + 1;
            continue;
        }
        let end = if group.is_some() { group_start } else { index };
        // Handlers may read every main step and earlier steps of their own block; on_cancel
        // steps cannot read on_failure ones.
        let readable: Vec<String> = ids[..end]
            .iter()
            .enumerate()
            .filter(|(i, _)| block != 2 || entry_blocks[*i] != 1)
            .map(|(_, id)| id.clone())
            .collect();
        if ids[..index].contains(&step.id) {
            continue;
        }
        if let Some(mut step) = validate_step(&path, step, &params, &readable, diags) {
            if group.is_some() && step.foreach.is_some() {
                diags.key(&format!("{path}.foreach"), "a step inside a parallel group cannot have `foreach`");
                continue;
            }
            step.group = group;
            blocks[block].push(step);
        }
    }
    let [steps, on_failure, on_cancel] = blocks;
    let scope = TemplateScope { params: &params, earlier: &[], current: "", target: false };
    for (i, source) in parsed.locks.iter().enumerate() {
        let field = format!("locks[{i}]");
        if source.trim().is_empty() {
            diags.value(&field, "expected a lock name (a template over params), found an empty string");
        } else {
            scope.check(&field, source, diags);
        }
    }
    let mut guards = Vec::new();
    for (i, g) in parsed.guards.into_iter().enumerate() {
        let path = format!("guards[{i}]");
        let check = match (g.prometheus, g.http) {
            (Some(p), None) => {
                check_guard_url(&format!("{path}.prometheus.url"), &p.url, &scope, diags);
                if p.query.trim().is_empty() {
                    diags.value(&format!("{path}.prometheus.query"), "expected a PromQL query, found an empty string");
                } else {
                    scope.check(&format!("{path}.prometheus.query"), &p.query, diags);
                }
                GuardCheck::Prometheus { url: p.url, query: p.query }
            }
            (None, Some(h)) => {
                check_guard_url(&format!("{path}.http.url"), &h.url, &scope, diags);
                if let Some(code) = h.status
                    && !(100..=599).contains(&code)
                {
                    diags.value(
                        &format!("{path}.http.status"),
                        format!("expected an HTTP status (100 to 599), found {code}"),
                    );
                }
                GuardCheck::Http { url: h.url, status: h.status }
            }
            (Some(_), Some(_)) => {
                diags.key(
                    &format!("{path}.http"),
                    "a guard checks one thing: it has `prometheus`, so it cannot also have `http`",
                );
                continue;
            }
            (None, None) => {
                diags.missing(
                    &path,
                    "prometheus",
                    "missing `prometheus: { url, query }` or `http: { url }`: what the guard checks",
                );
                continue;
            }
        };
        let name = g.name.unwrap_or_else(|| match &check {
            GuardCheck::Prometheus { query, .. } => query.clone(),
            GuardCheck::Http { url, .. } => url.clone(),
        });
        guards.push(Guard { name, check });
    }
    let budget = parsed.budget.map(|b| {
        if b.max_runs == 0 {
            diags.value("budget.max_runs", "expected at least 1 run per window, found 0 (a budget of zero never runs)");
        }
        let per_ms = match parse_duration(&b.per) {
            Ok(0) => {
                diags.value("budget.per", "expected a duration greater than zero, found 0");
                0
            }
            Ok(ms) => ms,
            Err(message) => {
                diags.value("budget.per", message);
                0
            }
        };
        if let Some(key) = &b.key {
            scope.check("budget.key", key, diags);
        }
        Budget { max_runs: b.max_runs, per_ms, key: b.key }
    });
    if let Some(n) = parsed.concurrency
        && !(1..=10_000).contains(&n)
    {
        diags.value("concurrency", format!("expected 1 to 10000 runs at once, found {n}"));
    }
    let timeout_ms = match parsed.timeout.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(0)) => {
            diags.value("timeout", "expected a duration greater than zero, found 0");
            None
        }
        Some(Ok(ms)) => Some(ms),
        Some(Err(message)) => {
            diags.value("timeout", message);
            None
        }
    };
    Runbook {
        name: parsed.name,
        description: parsed.description,
        params,
        steps,
        version: content_version(text),
        source: text.to_string(),
        concurrency: parsed.concurrency,
        timeout_ms,
        locks: parsed.locks,
        skip_if_locked: parsed.lock_wait == Some(file::LockWaitFile::Skip),
        budget,
        guards,
        on_failure,
        on_cancel,
    }
}

/// A guard URL must be an absolute http(s) URL, or a template (checked when it renders).
fn check_guard_url(field: &str, url: &str, scope: &TemplateScope<'_>, diags: &mut Diagnostics<'_, '_>) {
    if url.contains("{{") || url.contains("{%") {
        scope.check(field, url, diags);
        return;
    }
    let ok = ["http://", "https://"].iter().any(|p| url.starts_with(p) && url.len() > p.len());
    if !ok {
        diags.value(field, format!("expected an http:// or https:// URL, found {url:?}"));
    }
}

fn validate_param(name: String, param: ParamFile, diags: &mut Diagnostics<'_, '_>) -> Option<ParamSpec> {
    let path = join_key("params", &name);
    let field = |key: &str| join_key(&path, key);
    let mut ok = true;
    if !constant_regex(file::PARAM_NAME_PATTERN).is_match(&name) {
        diags.key(
            &path,
            format!(
                "expected a parameter name matching {} (it is used as params.<name> in \
                 templates), found {name:?}",
                file::PARAM_NAME_PATTERN
            ),
        );
        ok = false;
    }
    let kind = match param.kind {
        ParamType::String => ParamKind::String,
        ParamType::Int => ParamKind::Int,
        ParamType::Bool => ParamKind::Bool,
        ParamType::List => ParamKind::List,
        ParamType::Float => ParamKind::Float,
        ParamType::Map => ParamKind::Map,
        ParamType::Secret => ParamKind::Secret,
        ParamType::Enum => match &param.values {
            Some(values) if !values.is_empty() => ParamKind::Enum { values: values.clone() },
            Some(_) => {
                diags.value(&field("values"), "expected a non-empty list of allowed values, found []");
                ok = false;
                ParamKind::Enum { values: Vec::new() }
            }
            None => {
                diags.value(&field("type"), "an enum parameter needs `values: [...]` listing the allowed values");
                ok = false;
                ParamKind::Enum { values: Vec::new() }
            }
        },
    };
    if param.values.is_some() && param.kind != ParamType::Enum {
        diags.key(&field("values"), "only enum parameters take `values`; use `type: enum` or drop `values`");
        ok = false;
    }
    let mut bounds = [None, None];
    for (slot, (key, bound)) in bounds.iter_mut().zip([("min", &param.min), ("max", &param.max)]) {
        let Some(bound) = bound.as_ref().filter(|b| !b.is_null()) else { continue };
        match param.kind {
            ParamType::Secret => {
                diags.key(
                    &field(key),
                    format!(
                        "a secret parameter cannot have `{key}`: its value is a reference \
                         (env:NAME or file:/absolute/path), and the secret is only read on the worker"
                    ),
                );
                ok = false;
            }
            ParamType::Int | ParamType::Float => match numeric_bound(param.kind, bound) {
                Ok(number) => *slot = Some(number),
                Err(expected) => {
                    diags.value(&field(key), format!("expected {expected}, found {}", diags.found(&field(key))));
                    ok = false;
                }
            },
            _ => {
                diags.key(&field(key), format!("`{key}` applies to int and float parameters only, found it on {kind}"));
                ok = false;
            }
        }
    }
    let [min, max] = bounds;
    if let (Some(min), Some(max)) = (&min, &max)
        && params::compare_numbers(min, max).is_gt()
    {
        diags.value(&field("max"), format!("expected max >= min ({min}), found {max}"));
        ok = false;
    }
    if let Some(pattern) = &param.pattern {
        if param.kind == ParamType::Secret {
            diags.key(
                &field("pattern"),
                "a secret parameter cannot have a `pattern`: its value is a reference (env:NAME or \
                 file:/absolute/path), and the secret is only read on the worker",
            );
            ok = false;
        } else if !matches!(param.kind, ParamType::String | ParamType::List | ParamType::Map) {
            diags.key(&field("pattern"), "`pattern` applies to string, list and map parameters only");
            ok = false;
        } else if let Err(err) = Regex::new(pattern) {
            let reason = err.to_string();
            let reason = reason.lines().last().unwrap_or("invalid regex").trim();
            let reason = reason.strip_prefix("error: ").unwrap_or(reason);
            diags
                .value(&field("pattern"), format!("expected a valid regular expression, found {pattern:?} ({reason})"));
            ok = false;
        }
    }
    if param.required && param.default.is_some() {
        diags
            .key(&field("default"), "a required parameter cannot have a default; drop `required: true` or the default");
        ok = false;
    }
    let mut spec = ParamSpec {
        name: name.clone(),
        kind,
        required: param.required,
        default: None,
        pattern: param.pattern,
        min,
        max,
        description: param.description,
    };
    if let Some(default) = param.default.filter(|d| !d.is_null())
        && ok
    {
        match params::coerce(&spec, &default) {
            Ok(value) => spec.default = Some(value),
            Err(err) => {
                diags.value(&field("default"), format!("the default does not satisfy the parameter: {err}"));
                ok = false;
            }
        }
    }
    ok.then_some(spec)
}

/// A declared `min` or `max` as a number of the parameter's kind: an `i64` for `int` (so ranges
/// stay exact), any finite number for `float`. The error says what was expected.
fn numeric_bound(kind: ParamType, bound: &serde_json::Value) -> Result<serde_json::Number, &'static str> {
    match (kind, bound) {
        (ParamType::Int, serde_json::Value::Number(n)) => {
            n.as_i64().map(serde_json::Number::from).ok_or("a 64-bit signed integer (the parameter is an int)")
        }
        (_, serde_json::Value::Number(n)) => Ok(n.clone()),
        (ParamType::Int, _) => Err("an integer"),
        _ => Err("a number"),
    }
}

fn validate_step(
    path: &str,
    step: StepFile,
    params: &[ParamSpec],
    earlier: &[String],
    diags: &mut Diagnostics<'_, '_>,
) -> Option<Step> {
    let field = |key: &str| join_key(path, key);
    let mut ok = check_name(diags, &field("id"), &step.id, file::STEP_ID_PATTERN, "a step id");
    if step.parallel.is_some() {
        diags.key(&field("parallel"), "parallel groups cannot be nested; list these steps in the outer group");
        return None;
    }
    let has_foreach = step.foreach.is_some();
    let foreach = validate_foreach(path, &step, params, earlier, diags);
    ok &= foreach.is_ok();
    let foreach = foreach.ok().flatten();

    let timeout_ms = match step.timeout.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(0)) => {
            diags.value(&field("timeout"), "expected a duration greater than zero, found 0");
            ok = false;
            None
        }
        Some(Ok(ms)) => Some(ms),
        Some(Err(message)) => {
            diags.value(&field("timeout"), message);
            ok = false;
            None
        }
    };
    let scope = TemplateScope { params, earlier, current: &step.id, target: has_foreach };
    if let Some(expr) = &step.when {
        if let Err(e) = crate::template::environment().compile_expression(expr) {
            diags.value(&field("when"), format!("expected a condition expression: {e}"));
            ok = false;
        } else {
            let source = format!("{{{{ {expr} }}}}");
            ok &= scope.check(&field("when"), &source, diags)
                && scope.reject_secrets(
                    &field("when"),
                    &source,
                    "a condition cannot see a secret (only the worker reads it, when the step starts)",
                    diags,
                );
        }
    }
    let retry = match &step.retry {
        None => None,
        Some(r) => {
            let mut duration = |key: &str, value: Option<&str>, default: u64| match value.map(parse_duration) {
                None => default,
                Some(Ok(ms)) => ms,
                Some(Err(message)) => {
                    diags.value(&join_key(&field("retry"), key), message);
                    ok = false;
                    default
                }
            };
            let backoff_ms = duration("backoff", r.backoff.as_deref(), 1_000);
            let max_backoff_ms = duration("max_backoff", r.max_backoff.as_deref(), 300_000);
            if !(2..=100).contains(&r.attempts) {
                let found = r.attempts;
                diags.value(
                    &join_key(&field("retry"), "attempts"),
                    format!("expected 2 to 100 attempts, found {found}"),
                );
                ok = false;
            }
            if max_backoff_ms < backoff_ms {
                diags.value(&join_key(&field("retry"), "max_backoff"), "expected max_backoff to be at least backoff");
                ok = false;
            }
            let (on_failure, on_timeout) = match &r.on {
                None => (true, true),
                Some(kinds) if kinds.is_empty() => {
                    diags.value(&join_key(&field("retry"), "on"), "expected failure and/or timeout, found []");
                    ok = false;
                    (true, true)
                }
                Some(kinds) => {
                    (kinds.contains(&file::RetryOnFile::Failure), kinds.contains(&file::RetryOnFile::Timeout))
                }
            };
            let exit_codes = r.exit_codes.clone().unwrap_or_default();
            if !exit_codes.is_empty() && !on_failure {
                diags.key(
                    &join_key(&field("retry"), "exit_codes"),
                    "`exit_codes` select failures to retry, but `on` leaves failures out",
                );
                ok = false;
            }
            Some(RetryPolicy { attempts: r.attempts, backoff_ms, max_backoff_ms, on_failure, on_timeout, exit_codes })
        }
    };
    let continue_on_error = step.on_error == Some(file::OnErrorFile::Continue);
    let given: Vec<&str> =
        [("action", step.action.is_some()), ("approval", step.approval.is_some()), ("sleep", step.sleep.is_some())]
            .into_iter()
            .filter_map(|(key, present)| present.then_some(key))
            .collect();
    if given.is_empty() {
        diags.missing(path, "action", "missing required key `action` (or `approval`, or `sleep`): what the step does");
        return None;
    }
    if given.len() > 1 {
        let second = given[1];
        diags.key(
            &field(second),
            format!("a step does one thing: it has `{}`, so it cannot also have `{second}`", given[0]),
        );
        return None;
    }
    if step.with.is_some() && step.action.is_none() {
        diags.key(&field("with"), "`with` gives the inputs of an `action`; approval and sleep steps take none");
        return None;
    }
    if step.action.is_none() {
        for (key, present) in
            [("timeout", step.timeout.is_some()), ("retry", retry.is_some()), ("idempotent", step.idempotent)]
        {
            if present {
                let what = given[0];
                diags.key(&field(key), format!("`{key}` applies to `action` steps; a {what} step cannot take it"));
                ok = false;
            }
        }
    }
    let action = match (step.action, step.approval, step.sleep) {
        (Some(ActionType::Exec), _, _) => match step.with {
            Some(with) => validate_exec(&field("with"), with, &scope, diags),
            None => {
                diags.missing(
                    path,
                    "with",
                    "missing required key `with`: an exec step needs `with: { command: [...] }`",
                );
                None
            }
        },
        (_, Some(approval), _) => validate_approval(&field("approval"), approval, &scope, diags),
        (_, _, Some(sleep)) => match parse_duration(&sleep) {
            Ok(0) => {
                diags.value(&field("sleep"), "expected a duration greater than zero, found 0");
                None
            }
            Ok(duration_ms) => Some(Action::Sleep(SleepAction { duration_ms })),
            Err(message) => {
                diags.value(&field("sleep"), message);
                None
            }
        },
        (None, None, None) => None,
    };
    let action = action?;
    ok.then_some(Step {
        id: step.id,
        action,
        timeout_ms,
        idempotent: step.idempotent,
        when: step.when,
        retry,
        continue_on_error,
        foreach,
        group: None,
    })
}

fn validate_exec(
    path: &str,
    with: ExecWithFile,
    scope: &TemplateScope<'_>,
    diags: &mut Diagnostics<'_, '_>,
) -> Option<Action> {
    let field = |key: &str| join_key(path, key);
    let mut ok = true;
    let command = match with.command {
        Argv::List(items) if items.is_empty() => {
            diags.value(&field("command"), "expected a non-empty list of strings (argv), found []");
            ok = false;
            items
        }
        Argv::List(items) => items,
        Argv::Shell(line) => {
            diags.value(
                &field("command"),
                format!(
                    "expected a list of strings (argv), found the string {line:?}; write \
                     [\"program\", \"arg\", ...], and if you need a shell use \
                     [\"sh\", \"-c\", \"...\"] with values passed through env"
                ),
            );
            ok = false;
            Vec::new()
        }
    };
    for (i, source) in command.iter().enumerate() {
        ok &= scope.check(&format!("{}[{i}]", field("command")), source, diags);
    }
    let env_name = constant_regex("^[A-Za-z_][A-Za-z0-9_]*$");
    for (name, source) in &with.env {
        let env_path = join_key(&field("env"), name);
        if !env_name.is_match(name) {
            diags.key(
                &env_path,
                format!("expected an environment variable name ([A-Za-z_][A-Za-z0-9_]*), found {name:?}"),
            );
            ok = false;
        }
        ok &= scope.check(&env_path, source, diags);
    }
    if let Some(source) = &with.workdir {
        ok &= scope.check(&field("workdir"), source, diags);
    }
    let secret_params = scope.params.iter().filter(|p| p.kind == ParamKind::Secret).map(|p| p.name.clone()).collect();
    ok.then_some(Action::Exec(ExecAction { command, env: with.env, workdir: with.workdir, secret_params }))
}

/// Checks `foreach` and the keys that go with it (`batch`, `max_failures`, `bake`); `Err` if
/// something was reported.
fn validate_foreach(
    path: &str,
    step: &StepFile,
    params: &[ParamSpec],
    earlier: &[String],
    diags: &mut Diagnostics<'_, '_>,
) -> Result<Option<Foreach>, ()> {
    let field = |key: &str| join_key(path, key);
    let Some(over) = &step.foreach else {
        let mut ok = true;
        for (key, present) in [
            ("batch", step.batch.is_some()),
            ("max_failures", step.max_failures.is_some()),
            ("bake", step.bake.is_some()),
        ] {
            if present {
                diags.key(&field(key), format!("`{key}` goes with `foreach`; this step has no targets"));
                ok = false;
            }
        }
        return if ok { Ok(None) } else { Err(()) };
    };
    let mut ok = true;
    if step.action.is_none() {
        diags.key(&field("foreach"), "`foreach` applies to `action` steps (it runs the action once per target)");
        ok = false;
    }
    let over = match over {
        file::ForeachFile::List(text) => {
            let expr = list_expression(text);
            if expr.is_empty() {
                diags.value(&field("foreach"), "expected a list expression such as params.hosts, found nothing");
                ok = false;
            } else if let Err(e) = template::environment().compile_expression(expr) {
                diags.value(&field("foreach"), format!("expected a list expression: {e}"));
                ok = false;
            } else {
                let scope = TemplateScope { params, earlier, current: &step.id, target: false };
                ok &= scope.check(&field("foreach"), &format!("{{{{ {expr} }}}}"), diags);
            }
            ForeachOver::List(expr.to_string())
        }
        file::ForeachFile::Workers(selector) => {
            let scope = TemplateScope { params, earlier, current: &step.id, target: false };
            for (key, value) in &selector.workers {
                ok &= scope.check(&join_key(&join_key(&field("foreach"), "workers"), key), value, diags);
            }
            ForeachOver::Workers(selector.workers.clone())
        }
    };
    let mut portion = |key: &str, value: &Option<file::CountOrPercentFile>, default: Portion, min: u64| {
        let parsed = match value {
            None => return default,
            Some(file::CountOrPercentFile::Count(n)) => Ok(Portion::Count(*n)),
            Some(file::CountOrPercentFile::Text(t)) => match t.strip_suffix('%').map(|n| n.trim().parse::<u32>()) {
                Some(Ok(p)) if p <= 100 => Ok(Portion::Percent(p)),
                _ => Err(format!("expected a count or a percentage such as \"25%\", found {t:?}")),
            },
        };
        match parsed {
            Ok(Portion::Count(n)) if n < min => {
                diags.value(&field(key), format!("expected at least {min}, found {n}"));
                ok = false;
                default
            }
            Ok(Portion::Percent(p)) if u64::from(p) < min => {
                diags.value(&field(key), format!("expected at least {min}%, found {p}%"));
                ok = false;
                default
            }
            Ok(p) => p,
            Err(message) => {
                diags.value(&field(key), message);
                ok = false;
                default
            }
        }
    };
    let batch = portion("batch", &step.batch, Portion::All, 1);
    let max_failures = portion("max_failures", &step.max_failures, Portion::Count(0), 0);
    let bake_ms = match step.bake.as_deref().map(parse_duration) {
        None => 0,
        Some(Ok(ms)) => ms,
        Some(Err(message)) => {
            diags.value(&field("bake"), message);
            ok = false;
            0
        }
    };
    if ok { Ok(Some(Foreach { over, batch, max_failures, bake_ms })) } else { Err(()) }
}

/// A `foreach` list as an expression: `"{{ params.hosts }}"` and `params.hosts` alike.
pub fn list_expression(text: &str) -> &str {
    let t = text.trim();
    t.strip_prefix("{{").and_then(|t| t.strip_suffix("}}")).map_or(t, str::trim)
}

/// Checks a `parallel` group's own keys: only `id` and `parallel`, and at least two steps.
fn check_group(path: &str, group: &StepFile, children: &[StepFile], diags: &mut Diagnostics<'_, '_>) {
    let field = |key: &str| join_key(path, key);
    check_name(diags, &field("id"), &group.id, file::STEP_ID_PATTERN, "a step id");
    let extra = [
        ("action", group.action.is_some()),
        ("approval", group.approval.is_some()),
        ("sleep", group.sleep.is_some()),
        ("with", group.with.is_some()),
        ("foreach", group.foreach.is_some()),
        ("when", group.when.is_some()),
        ("retry", group.retry.is_some()),
        ("timeout", group.timeout.is_some()),
        ("on_error", group.on_error.is_some()),
    ];
    for (key, present) in extra {
        if present {
            diags.key(&field(key), format!("a parallel group has only `id` and `parallel`; put `{key}` on its steps"));
        }
    }
    if children.len() < 2 {
        diags
            .value(&field("parallel"), format!("expected at least two steps to run at once, found {}", children.len()));
    }
}

/// The pattern an approver must match: a principal name, or `group:` and a group name.
const APPROVER_PATTERN: &str = "^(group:)?[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$";

fn validate_approval(
    path: &str,
    approval: ApprovalFile,
    scope: &TemplateScope<'_>,
    diags: &mut Diagnostics<'_, '_>,
) -> Option<Action> {
    let field = |key: &str| join_key(path, key);
    let mut ok = true;
    if approval.approvers.is_empty() {
        diags.value(&field("approvers"), "expected at least one approver (a principal or group:<name>), found []");
        ok = false;
    }
    for (i, approver) in approval.approvers.iter().enumerate() {
        ok &= check_name(diags, &format!("{}[{i}]", field("approvers")), approver, APPROVER_PATTERN, "an approver");
    }
    let min_approvals = approval.min_approvals.unwrap_or(1);
    let has_group = approval.approvers.iter().any(|a| a.starts_with("group:"));
    if !(1..=100).contains(&min_approvals) {
        diags.value(&field("min_approvals"), format!("expected 1 to 100 approvals, found {min_approvals}"));
        ok = false;
    } else if !has_group && !approval.approvers.is_empty() && min_approvals as usize > approval.approvers.len() {
        diags.value(
            &field("min_approvals"),
            format!(
                "{min_approvals} approvals can never be reached with {} approver(s) and no group",
                approval.approvers.len()
            ),
        );
        ok = false;
    }
    let timeout_ms = match approval.timeout.as_deref().map(parse_duration) {
        None => 3_600_000,
        Some(Ok(0)) => {
            diags.value(&field("timeout"), "expected a duration greater than zero, found 0");
            ok = false;
            0
        }
        Some(Ok(ms)) => ms,
        Some(Err(message)) => {
            diags.value(&field("timeout"), message);
            ok = false;
            0
        }
    };
    if let Some(message) = &approval.message {
        ok &= scope.check(&field("message"), message, diags)
            && scope.reject_secrets(
                &field("message"),
                message,
                "an approval message is shown to people and cannot contain a secret",
                diags,
            );
    }
    ok.then_some(Action::Approval(ApprovalAction {
        approvers: approval.approvers,
        min_approvals,
        timeout_ms,
        message: approval.message,
    }))
}

/// What a step's templates may read: declared params, earlier steps and the run.
struct TemplateScope<'s> {
    params: &'s [ParamSpec],
    earlier: &'s [String],
    current: &'s str,
    /// Inside a `foreach` step, templates read the current target as `target`.
    target: bool,
}

impl TemplateScope<'_> {
    /// Compiles the template at `field` and checks every context path it reads.
    fn check(&self, field: &str, source: &str, diags: &mut Diagnostics<'_, '_>) -> bool {
        let refs = match template::references(source) {
            Ok(refs) => refs,
            Err(message) => {
                diags.value(field, format!("invalid template: {message}"));
                return false;
            }
        };
        let mut ok = true;
        for reference in refs {
            if let Err(message) = self.check_reference(&reference.segments) {
                let needle = reference.segments[..reference.segments.len().min(2)].join(".");
                diags.within(field, &needle, message);
                ok = false;
            }
        }
        ok
    }

    /// Reports every secret parameter the (already checked) template at `field` reads; `why` says
    /// why this place cannot read secrets.
    fn reject_secrets(&self, field: &str, source: &str, why: &str, diags: &mut Diagnostics<'_, '_>) -> bool {
        let Ok(refs) = template::references(source) else {
            return true;
        };
        let mut ok = true;
        for reference in refs {
            let [root, name, ..] = reference.segments.as_slice() else { continue };
            if root == "params" && self.params.iter().any(|p| &p.name == name && p.kind == ParamKind::Secret) {
                diags.within(field, &format!("params.{name}"), format!("params.{name} is a secret parameter: {why}"));
                ok = false;
            }
        }
        ok
    }

    fn check_reference(&self, segments: &[String]) -> Result<(), String> {
        let root = segments[0].as_str();
        let second = segments.get(1).map(String::as_str);
        let third = segments.get(2).map(String::as_str);
        match (root, second) {
            (_, None) if matches!(root, "params" | "steps" | "run") => Ok(()),
            ("target", _) if self.target => Ok(()),
            ("target", _) => Err("the template reads `target`, which only the steps of a `foreach` have".to_string()),
            ("params", Some(name)) => {
                if self.params.iter().any(|p| p.name == name) {
                    Ok(())
                } else {
                    let declared: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                    Err(format!(
                        "the template reads params.{name}, which is not declared; declared \
                         params: {}",
                        list_or_none(&declared)
                    ))
                }
            }
            ("steps", Some(id)) => self.check_step_reference(id, third),
            ("run", Some(name)) => {
                if RUN_CONTEXT_FIELDS.contains(&name) {
                    Ok(())
                } else {
                    Err(format!("the template reads run.{name}; the run has: {}", RUN_CONTEXT_FIELDS.join(", ")))
                }
            }
            _ => Err(format!(
                "the template reads `{}`, which is not defined; templates can read \
                 params.<name>, steps.<earlier step id>.outputs.<name> and run.<field>",
                segments.join(".")
            )),
        }
    }

    fn check_step_reference(&self, id: &str, field: Option<&str>) -> Result<(), String> {
        let earlier: Vec<&str> = self.earlier.iter().map(String::as_str).collect();
        if !earlier.contains(&id) {
            let why = if id == self.current {
                "a step cannot read its own outputs".to_string()
            } else {
                format!("templates can only read earlier steps: {}", list_or_none(&earlier))
            };
            let hint = if earlier.iter().any(|e| e.starts_with(&format!("{id}-")) || e.starts_with(&format!("{id}_"))) {
                " (write ids with dashes as steps['the-id'])"
            } else {
                ""
            };
            return Err(format!("the template reads steps.{id}; {why}{hint}"));
        }
        match field {
            Some(name) if !STEP_CONTEXT_FIELDS.contains(&name) => {
                Err(format!("the template reads steps.{id}.{name}; a step has: {}", STEP_CONTEXT_FIELDS.join(", ")))
            }
            _ => Ok(()),
        }
    }
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() { "none".to_string() } else { items.join(", ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "name: x\nsteps:\n  - id: a\n    action: exec\n    with: { command: [true] }\n";

    #[test]
    fn minimal_runbook_parses_with_a_stable_version() {
        let runbook = Runbook::parse("x.yaml", MINIMAL).unwrap();
        assert_eq!(runbook.name, "x");
        assert_eq!(runbook.version.len(), 16);
        assert_eq!(runbook.version, content_version(MINIMAL));
        assert_ne!(runbook.version, content_version("name: y"));
        assert_eq!(runbook.step("a").map(|s| s.idempotent), Some(false));
        assert!(runbook.step("b").is_none());
    }

    #[test]
    fn diagnostic_display_has_file_position_field_and_message() {
        let d = Diagnostic {
            file: "runbooks/x.yaml".into(),
            line: 12,
            column: 7,
            field: "steps[1].with.command".into(),
            message: "expected a non-empty list of strings (argv), found []".into(),
        };
        assert_eq!(
            d.to_string(),
            "runbooks/x.yaml:12:7: steps[1].with.command: expected a non-empty list of strings \
             (argv), found []"
        );
    }

    #[test]
    fn backticked_extracts_the_name() {
        assert_eq!(backticked("missing field `steps`", "missing field "), Some("steps"));
        assert_eq!(backticked("other", "missing field "), None);
    }
}
