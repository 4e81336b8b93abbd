//! The runbook file format exactly as written in YAML: serde "file structs".
//!
//! These types mirror the text, nothing more: they reject unknown keys and wrong YAML types, and
//! their doc comments become the titles and descriptions of the published JSON Schema
//! (`baton runbook schema`). Every rule that spans fields (defaults that satisfy their own
//! pattern, templates that name declared params, unique step ids...) lives in the validation
//! that turns them into the domain types of [`crate::runbook`].

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::schedule::ScheduleFile;

/// The pattern runbook and schedule names must match.
pub(crate) const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";

/// The pattern step ids must match.
pub(crate) const STEP_ID_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

/// The pattern parameter names must match (they are used as `params.<name>` in templates).
pub(crate) const PARAM_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]{0,62}$";

/// A Baton document: a runbook, or a schedule that triggers one (it has a `schedule` key).
#[derive(JsonSchema)]
#[serde(untagged)]
#[schemars(title = "Baton document")]
#[allow(dead_code)] // Only its schema is used; documents are told apart by their keys.
pub(crate) enum DocumentFile {
    /// A runbook.
    Runbook(RunbookFile),
    /// A schedule.
    Schedule(ScheduleFile),
}

/// A runbook: named, typed parameters and a list of steps that run in order.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Runbook", rename = "Runbook")]
pub(crate) struct RunbookFile {
    /// Unique name of the runbook: lowercase letters, digits and dashes, at most 63 characters.
    #[schemars(pattern(NAME_PATTERN))]
    pub name: String,
    /// What the runbook does, for people choosing one at 3 a.m.
    #[serde(default)]
    pub description: String,
    /// Parameters by name, in the order they are shown to users.
    #[serde(default)]
    #[schemars(with = "BTreeMap<String, ParamFile>")]
    pub params: OrderedMap<ParamFile>,
    /// The steps, run one after the other; at least one.
    #[schemars(length(min = 1))]
    pub steps: Vec<StepFile>,
    /// At most this many runs of this runbook run at once, whatever started them; further
    /// runs wait, oldest first. Default: no limit.
    #[serde(default)]
    #[schemars(range(min = 1, max = 10000))]
    pub concurrency: Option<u32>,
    /// Resource locks the run holds from before its first step until it ends (templates over
    /// `params`, e.g. `redis/{{ params.cluster }}`): two runs never hold the same lock.
    #[serde(default)]
    pub locks: Vec<String>,
    /// What a run does when one of its locks is held by another run: `queue` (the default)
    /// waits, first come first served; `skip` ends the run at once as cancelled.
    #[serde(default)]
    pub lock_wait: Option<LockWaitFile>,
    /// At most `max_runs` runs per `per` window for the same `key` (a template over `params`;
    /// default: one key for the whole runbook); a trigger beyond it is refused.
    #[serde(default)]
    pub budget: Option<BudgetFile>,
    /// Checks made before each step or batch of targets starts (so after each one ends): a
    /// Prometheus query that must return a sample, or an HTTP probe that must answer. One that
    /// fails pauses the run, with the reason; `baton run resume` checks again.
    #[serde(default)]
    pub guards: Vec<GuardFile>,
    /// Steps that run once if the run fails (after its last step failed or it timed out);
    /// they can read `run.failed_step` and `run.error`. Not run after a force-fail.
    #[serde(default)]
    pub on_failure: Vec<StepFile>,
    /// Steps that run once if the run is cancelled. Cancelling again stops them.
    #[serde(default)]
    pub on_cancel: Vec<StepFile>,
    /// Limit on the whole run, counted from the moment it was triggered (waiting included),
    /// e.g. `30m`. When it passes, running steps are stopped and the run fails.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub timeout: Option<String>,
}

/// Declaration of one parameter.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Parameter", rename = "Parameter")]
pub(crate) struct ParamFile {
    /// The value type; given values are coerced to it.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Whether a value must be given. A required parameter cannot have a default.
    #[serde(default)]
    pub required: bool,
    /// Value used when none is given; must satisfy the other rules. For a secret parameter, a
    /// reference (`env:NAME` or `file:/absolute/path`), never the secret itself.
    #[serde(default)]
    pub default: Option<serde_json::Value>,
    /// Regex that string values (each list item, each map value) must match. Not anchored
    /// implicitly: write `^...$` to match the whole value. Not for secret parameters.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Smallest allowed value (int and float parameters only; an integer for int).
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub min: Option<serde_json::Value>,
    /// Largest allowed value (int and float parameters only; an integer for int).
    #[serde(default)]
    #[schemars(with = "Option<f64>")]
    pub max: Option<serde_json::Value>,
    /// The allowed values (enum parameters only, required for them).
    #[serde(default)]
    pub values: Option<Vec<String>>,
    /// What the parameter means.
    #[serde(default)]
    pub description: String,
}

/// Parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ParamType {
    /// Any string.
    String,
    /// A 64-bit signed integer.
    Int,
    /// A boolean.
    Bool,
    /// One of `values`.
    Enum,
    /// A list of strings (a comma-separated string is accepted too).
    List,
    /// A finite floating-point number (NaN and infinities are refused).
    Float,
    /// A mapping of string keys to string values (a JSON object or `k=v,k2=v2` is accepted too).
    Map,
    /// A reference to a secret on the worker: `env:NAME` or `file:/absolute/path`.
    Secret,
}

/// One step of a runbook.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Step", rename = "Step")]
pub(crate) struct StepFile {
    /// Unique id within the runbook; later steps read this step's outputs as
    /// `steps.<id>.outputs.<name>` (or `steps['<id>']` when the id has dashes).
    #[schemars(pattern(STEP_ID_PATTERN))]
    pub id: String,
    /// What the step does (`exec`). A step has exactly one of `action`, `approval` and `sleep`.
    #[serde(default)]
    pub action: Option<ActionType>,
    /// Wait for people to approve before the run goes on:
    /// `{ approvers: ["alice", "group:sre-oncall"], timeout: 15m }`.
    #[serde(default)]
    pub approval: Option<ApprovalFile>,
    /// Wait this long before the run goes on, e.g. `30s` or `5m` (no worker is used).
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub sleep: Option<String>,
    /// Steps that run at the same time; the run goes on when all of them are done. Each is a
    /// full step (with its own id); they can read the steps before the group, not each other.
    #[serde(default)]
    pub parallel: Option<Vec<StepFile>>,
    /// Run an exec step once per target: a list expression such as `params.hosts` (or
    /// `"{{ params.hosts }}"`), or `{ workers: { role: web } }` for every connected worker
    /// with those labels (each target then runs on its worker). Templates read the target as
    /// `target`.
    #[serde(default)]
    pub foreach: Option<ForeachFile>,
    /// With `foreach`: how many targets run at once, a count (`2`) or a share (`"25%"`);
    /// default all. The next batch starts when one is done.
    #[serde(default)]
    #[schemars(with = "Option<CountOrPercentSchema>")]
    pub batch: Option<CountOrPercentFile>,
    /// With `foreach`: how many targets may fail before the step fails, a count or a share
    /// (`"10%"`); default 0. Failed targets within it are tolerated.
    #[serde(default)]
    #[schemars(with = "Option<CountOrPercentSchema>")]
    pub max_failures: Option<CountOrPercentFile>,
    /// With `foreach`: how long to wait after each batch before the next, e.g. `5m`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub bake: Option<String>,
    /// Maximum run time of one attempt, e.g. `250ms`, `10s`, `5m`, `1h30m`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub timeout: Option<String>,
    /// Whether running the step twice has the same effect as running it once, which makes it
    /// safe to retry automatically.
    #[serde(default)]
    pub idempotent: bool,
    /// Run the step only when this expression (minijinja, over `params`, earlier `steps` and
    /// `run`) is true, e.g. `not params.dry_run` or `steps.check.outputs.healthy == "no"`;
    /// otherwise the step is `skipped`.
    #[serde(default)]
    pub when: Option<String>,
    /// Retry a failed or timed-out attempt: `{ attempts: 3, backoff: 2s, max_backoff: 30s }`.
    /// Each retry is a new attempt; the backoff doubles from `backoff` up to `max_backoff`.
    #[serde(default)]
    pub retry: Option<RetryFile>,
    /// What a failure of this step (after its retries) does to the run: `fail` (the default)
    /// ends the run as failed; `continue` records the failure and goes on with the next step.
    #[serde(default)]
    pub on_error: Option<OnErrorFile>,
    /// The action's inputs (with `action` only).
    #[serde(default)]
    pub with: Option<ExecWithFile>,
}

/// The targets of a `foreach`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(untagged)]
pub(crate) enum ForeachFile {
    /// A list expression over `params` and earlier steps, e.g. `params.hosts`.
    List(String),
    /// Every connected worker with these labels.
    Workers(WorkersSelectorFile),
}

/// `{ workers: { label: value, ... } }`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct WorkersSelectorFile {
    /// Labels a worker must have (all of them; values are templates over `params`); `{}`
    /// selects every worker.
    pub workers: BTreeMap<String, String>,
}

/// A count or a percentage, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum CountOrPercentFile {
    /// A number of targets.
    Count(u64),
    /// `"25%"`.
    Text(String),
}

/// The schema of a count or a percentage.
#[derive(JsonSchema)]
#[serde(untagged)]
#[allow(dead_code)] // Only its schema is used.
pub(crate) enum CountOrPercentSchema {
    /// A number of targets.
    Count(u32),
    /// A share of the targets, e.g. `"25%"`.
    Percent(#[schemars(regex(pattern = r"^[0-9]{1,3}%$"))] String),
}

/// An approval step: the run waits until enough approvers approve, one denies, or the
/// timeout passes (which denies).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Approval", rename = "Approval")]
pub(crate) struct ApprovalFile {
    /// Who may decide: principal names (`alice`) and groups (`group:sre-oncall`, members from
    /// the server configuration); at least one.
    #[schemars(length(min = 1))]
    pub approvers: Vec<String>,
    /// How many different approvers must approve (default 1).
    #[serde(default)]
    #[schemars(range(min = 1, max = 100))]
    pub min_approvals: Option<u32>,
    /// How long to wait for the decision before denying, e.g. `15m` (default `1h`).
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub timeout: Option<String>,
    /// What the approvers are asked (a template), shown in the CLI and in chat.
    #[serde(default)]
    pub message: Option<String>,
}

/// A guard as written: exactly one of `prometheus` and `http`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Guard", rename = "Guard")]
pub(crate) struct GuardFile {
    /// A name for messages (default: the query or the URL).
    #[serde(default)]
    pub name: Option<String>,
    /// Passes when the query (Prometheus HTTP API, instant query) returns at least one sample,
    /// as an alerting rule fires: write the healthy condition as a comparison, e.g.
    /// `sum(rate(http_requests_errors_total[5m])) < 1`.
    #[serde(default)]
    pub prometheus: Option<PrometheusGuardFile>,
    /// Passes when a GET of the URL answers with the expected status.
    #[serde(default)]
    pub http: Option<HttpGuardFile>,
}

/// A Prometheus guard.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Prometheus guard", rename = "PrometheusGuard")]
pub(crate) struct PrometheusGuardFile {
    /// The Prometheus server, e.g. `http://prometheus:9090`.
    pub url: String,
    /// The PromQL query (a template over `params`).
    pub query: String,
}

/// An HTTP probe guard.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "HTTP guard", rename = "HttpGuard")]
pub(crate) struct HttpGuardFile {
    /// The URL to GET (a template over `params`).
    pub url: String,
    /// The status that passes (default: any 2xx).
    #[serde(default)]
    pub status: Option<u16>,
}

/// What a run does while a lock it needs is held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum LockWaitFile {
    /// Wait, first come first served.
    Queue,
    /// End the run at once as cancelled.
    Skip,
}

/// A rate budget as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Budget", rename = "Budget")]
pub(crate) struct BudgetFile {
    /// Runs allowed per window (at least 1).
    #[schemars(range(min = 1))]
    pub max_runs: u32,
    /// The window, e.g. `1h`.
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub per: String,
    /// What runs count together (a template over `params`), e.g. `{{ params.cluster }}`.
    #[serde(default)]
    pub key: Option<String>,
}

/// Retry policy of a step.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Retry", rename = "Retry")]
pub(crate) struct RetryFile {
    /// Attempts in all, the first included (2 to 100).
    pub attempts: u32,
    /// Wait before the first retry (default 1s); doubles for each further retry.
    #[serde(default)]
    pub backoff: Option<String>,
    /// Longest wait between attempts (default 5m).
    #[serde(default)]
    pub max_backoff: Option<String>,
    /// Which failures are retried: `[failure, timeout]` (the default), `[failure]` or
    /// `[timeout]`. A lost attempt is never retried here (see `idempotent`).
    #[serde(default)]
    pub on: Option<Vec<RetryOnFile>>,
    /// Retry only failures with one of these exit codes, e.g. `[75, 111]`.
    #[serde(default)]
    pub exit_codes: Option<Vec<i32>>,
}

/// A kind of failure a retry policy retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RetryOnFile {
    /// Non-zero exit, killed by a signal, or could not start.
    Failure,
    /// Ran past its `timeout`.
    Timeout,
}

/// What a step's failure does to its run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum OnErrorFile {
    /// The run fails (default).
    Fail,
    /// The run goes on with the next step.
    Continue,
}

/// Actions a step can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ActionType {
    /// Run a program with an argv list (never through a shell).
    Exec,
}

/// Inputs of the `exec` action.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Exec inputs", rename = "ExecInputs")]
pub(crate) struct ExecWithFile {
    /// Program and arguments as a list; each element is a template that becomes exactly one
    /// argument. Not a shell string: to use a shell, write `["sh", "-c", "..."]` and pass values
    /// through `env`.
    #[schemars(with = "Vec<String>", length(min = 1))]
    pub command: Argv,
    /// Extra environment variables; values are templates.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory (a template); the worker's default when absent.
    #[serde(default)]
    pub workdir: Option<String>,
}

/// `command` as written: the list we want, or a string we refuse with a helpful message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Argv {
    /// `["df", "-h"]`.
    List(Vec<String>),
    /// `df -h`, kept only to explain why it is refused.
    Shell(String),
}

impl<'de> Deserialize<'de> for Argv {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Argv, D::Error> {
        struct ArgvVisitor;

        impl<'de> Visitor<'de> for ArgvVisitor {
            type Value = Argv;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of strings (argv)")
            }

            fn visit_str<E: de::Error>(self, value: &str) -> Result<Argv, E> {
                Ok(Argv::Shell(value.to_string()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Argv, A::Error> {
                let mut items = Vec::new();
                // Elements go straight to the YAML deserializer, so `10` becomes "10".
                while let Some(item) = seq.next_element::<String>()? {
                    items.push(item);
                }
                Ok(Argv::List(items))
            }
        }

        deserializer.deserialize_any(ArgvVisitor)
    }
}

/// A YAML mapping kept in document order (serde's maps sort or hash their keys).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OrderedMap<T>(pub Vec<(String, T)>);

impl<T> Default for OrderedMap<T> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = OrderedMap<T>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<String, T>()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }
        }

        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}
