//! Step inputs are minijinja templates; this module renders them and checks them statically.
//!
//! There is exactly one template environment ([`environment`]): strict about undefined values
//! (a typo fails the step instead of running `rm -rf /`), no HTML auto-escaping (we render
//! argv, not web pages), trailing newlines kept. Each argv element is its own template and
//! renders to exactly one argv element, so a value containing spaces or quotes can never split
//! into several arguments or reach a shell as code.
//!
//! The render context has three roots, fixed here because runbooks are validated against it:
//!
//! ```json
//! { "params": { "<name>": <value> },
//!   "steps":  { "<step id>": { "outputs": { "<name>": "<text>" }, "status": "succeeded" } },
//!   "run":    { "id": "...", "runbook": "...", "trigger": "api" } }
//! ```
//!
//! A `secret` parameter holds a reference (`env:NAME`, `file:/path`), and [`render_exec`]
//! renders it as a *secret marker* ([`secret_marker`]) that the worker replaces with the secret
//! just before it starts the process. The secret itself is therefore never in a template's
//! output, a command, the Raft log or a run record.

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::{AutoEscape, Environment, UndefinedBehavior};
use serde::{Deserialize, Serialize};

use crate::runbook::{ExecAction, SecretRef};

/// The fields each `steps.<id>` entry of the context has.
pub const STEP_CONTEXT_FIELDS: [&str; 2] = ["outputs", "status"];

/// The fields of the `run` entry of the context.
pub const RUN_CONTEXT_FIELDS: [&str; 8] =
    ["id", "runbook", "version", "trigger", "principal", "started_at", "failed_step", "error"];

/// An exec action with every template rendered: ready to hand to a process spawner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderedExec {
    /// Program and arguments, one rendered template each; never run through a shell.
    pub argv: Vec<String>,
    /// Extra environment variables for the process.
    pub env: BTreeMap<String, String>,
    /// Working directory, if the step sets one.
    pub workdir: Option<String>,
}

/// A template that failed to render.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct TemplateError {
    /// Which input failed, relative to the action's `with`: `command[2]`, `env.LC_ALL`, `workdir`.
    pub field: String,
    /// What went wrong, including the template text.
    pub message: String,
}

/// The one template environment Baton uses, for validation and rendering alike.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // The default syntax with trailing newlines kept: a template renders to exactly its text.
    if let Ok(syntax) = SyntaxConfig::builder().keep_trailing_newline(true).build() {
        env.set_syntax(syntax);
    }
    env
}

/// Renders every template of an exec action against `ctx` (see the module docs for its shape).
///
/// The action's secret parameters (`action.secret_params`) render as secret markers; any other
/// text of the context that contains [`SECRET_MARKER_START`] has it replaced by U+FFFD first, so
/// a parameter value or a step output can never forge a marker (and make the worker read one of
/// its secrets). A rendered input with a damaged marker, for example after `| upper` or a slice,
/// is an error: a secret can only be used whole.
pub fn render_exec(action: &ExecAction, ctx: &serde_json::Value) -> Result<RenderedExec, TemplateError> {
    let env = environment();
    let ctx = secret_context(ctx, &action.secret_params)?;
    let ctx = minijinja::Value::from(minijinja::value::Serde(&ctx));
    let render = |field: String, source: &str| -> Result<String, TemplateError> {
        let text = env.render_str(source, &ctx).map_err(|err| TemplateError {
            field: field.clone(),
            message: format!("{} in template {source:?}", describe_error(&err)),
        })?;
        match secret_segments(&text) {
            Ok(_) => Ok(text),
            Err(err) => Err(TemplateError { field, message: format!("{err} (template {source:?})") }),
        }
    };
    let argv = action
        .command
        .iter()
        .enumerate()
        .map(|(i, source)| render(format!("command[{i}]"), source))
        .collect::<Result<_, _>>()?;
    let env_vars = action
        .env
        .iter()
        .map(|(name, source)| Ok((name.clone(), render(format!("env.{name}"), source)?)))
        .collect::<Result<_, _>>()?;
    let workdir = action.workdir.as_deref().map(|source| render("workdir".to_string(), source)).transpose()?;
    Ok(RenderedExec { argv, env: env_vars, workdir })
}

/// The first character of a secret marker: U+0001 (START OF HEADING).
pub const SECRET_MARKER_START: char = '\u{1}';
/// The last character of a secret marker: U+0002 (START OF TEXT).
pub const SECRET_MARKER_END: char = '\u{2}';
/// What follows [`SECRET_MARKER_START`] in a marker, before the reference.
const SECRET_MARKER_TAG: &str = "baton-secret:";

/// The marker a secret parameter renders to: `U+0001 "baton-secret:" <reference> U+0002`, e.g.
/// `"\u{1}baton-secret:env:DB_PASSWORD\u{2}"`.
///
/// It carries only the reference, so it may travel in the Raft log and an assignment. The two
/// control characters do not occur in ordinary text, cannot be typed in YAML without an escape,
/// and a reference never contains a control character, so a marker is found exactly and ends
/// unambiguously; [`render_exec`] also removes U+0001 from every other value it renders, so only
/// a secret parameter can produce a marker. The worker replaces each marker in argv, env values
/// and workdir with the secret ([`secret_segments`]) just before it starts the process, and
/// refuses to start one that still contains a marker.
pub fn secret_marker(reference: &SecretRef) -> String {
    format!("{SECRET_MARKER_START}{SECRET_MARKER_TAG}{reference}{SECRET_MARKER_END}")
}

/// A piece of rendered text: literal text, or a secret marker's reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment<'a> {
    /// Text to use as it is.
    Text(&'a str),
    /// A secret marker, to be replaced by the secret it refers to.
    Secret(SecretRef),
}

/// A secret marker that cannot be read back: changed by a filter, cut by a slice, or otherwise
/// not produced by [`secret_marker`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a secret marker at byte {offset} is damaged: use a secret parameter whole, as \
     {{{{ params.NAME }}}}, without filters, slices or escaping"
)]
pub struct DamagedSecretMarker {
    /// Byte offset of the marker's first character in the text.
    pub offset: usize,
}

/// Splits `text` at its secret markers. Text without [`SECRET_MARKER_START`] is one `Text`.
pub fn secret_segments(text: &str) -> Result<Vec<Segment<'_>>, DamagedSecretMarker> {
    let mut segments = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(SECRET_MARKER_START) {
        let offset = text.len() - rest.len() + start;
        if start > 0 {
            segments.push(Segment::Text(&rest[..start]));
        }
        let after = &rest[start + SECRET_MARKER_START.len_utf8()..];
        let body = after.strip_prefix(SECRET_MARKER_TAG).ok_or(DamagedSecretMarker { offset })?;
        let end = body.find(SECRET_MARKER_END).ok_or(DamagedSecretMarker { offset })?;
        let reference = SecretRef::parse(&body[..end]).map_err(|_| DamagedSecretMarker { offset })?;
        segments.push(Segment::Secret(reference));
        rest = &body[end + SECRET_MARKER_END.len_utf8()..];
    }
    if !rest.is_empty() {
        segments.push(Segment::Text(rest));
    }
    Ok(segments)
}

/// The render context with secret parameters as markers and [`SECRET_MARKER_START`] removed
/// from every other string (keys included).
fn secret_context(ctx: &serde_json::Value, secret_params: &[String]) -> Result<serde_json::Value, TemplateError> {
    let mut ctx = defuse_markers(ctx);
    for name in secret_params {
        let Some(value) = ctx.get_mut("params").and_then(|params| params.get_mut(name.as_str())) else {
            continue;
        };
        let reference = value.as_str().map(SecretRef::parse);
        match reference {
            Some(Ok(reference)) => *value = serde_json::Value::String(secret_marker(&reference)),
            Some(Err(why)) => {
                let message = format!("the secret parameter holds an invalid reference: {why}");
                return Err(TemplateError { field: format!("params.{name}"), message });
            }
            None => {
                let message = "the secret parameter holds something other than a reference string".to_string();
                return Err(TemplateError { field: format!("params.{name}"), message });
            }
        }
    }
    Ok(ctx)
}

/// A copy of `value` with every [`SECRET_MARKER_START`] replaced by U+FFFD.
fn defuse_markers(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    let defuse = |text: &str| {
        if text.contains(SECRET_MARKER_START) {
            text.replace(SECRET_MARKER_START, "\u{fffd}")
        } else {
            text.to_string()
        }
    };
    match value {
        Value::String(text) => Value::String(defuse(text)),
        Value::Array(items) => Value::Array(items.iter().map(defuse_markers).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (defuse(k), defuse_markers(v))).collect()),
        other => other.clone(),
    }
}

/// Renders one text template (an approval's message, a notification) against `ctx`.
pub fn render_text(source: &str, ctx: &serde_json::Value) -> Result<String, TemplateError> {
    let env = environment();
    env.render_str(source, minijinja::Value::from(minijinja::value::Serde(ctx))).map_err(|err| TemplateError {
        field: "message".to_string(),
        message: format!("{} in template {source:?}", describe_error(&err)),
    })
}

/// A minijinja error as one line without the `(in <string>:1)` suffix.
fn describe_error(err: &minijinja::Error) -> String {
    match err.detail() {
        Some(detail) => format!("{}: {detail}", err.kind()),
        None => err.kind().to_string(),
    }
}

/// A variable a template reads from its context, as a dotted path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Reference {
    /// The path segments: `["steps", "greet", "outputs", "greeting"]`.
    pub segments: Vec<String>,
}

/// Compiles `source` and lists the context paths it reads (`params.path`, `steps.greet...`).
///
/// Uses minijinja's static analysis for dotted lookups and a textual scan for the
/// `steps['id-with-dashes']` form, which the analysis cannot follow. Globals such as `range`
/// are not references. Fails with a one-line message if the template does not compile.
pub(crate) fn references(source: &str) -> Result<Vec<Reference>, String> {
    let env = environment();
    let template = env.template_from_str(source).map_err(|err| describe_error(&err))?;
    let globals: Vec<String> = env.globals().map(|(name, _)| name.to_string()).collect();
    let mut refs: Vec<Reference> = template
        .undeclared_variables(true)
        .into_iter()
        .filter(|path| !globals.iter().any(|g| g == path))
        .map(|path| Reference { segments: path.split('.').map(str::to_string).collect() })
        .collect();
    for captures in subscript_step_regex().captures_iter(source) {
        if let Some(id) = captures.get(1).or_else(|| captures.get(2)) {
            refs.push(Reference { segments: vec!["steps".to_string(), id.as_str().to_string()] });
        }
    }
    refs.sort();
    refs.dedup();
    Ok(refs)
}

fn subscript_step_regex() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| {
        regex::Regex::new(r#"\bsteps\s*\[\s*(?:'([^']*)'|"([^"]*)")\s*\]"#)
            .unwrap_or_else(|_| unreachable!("the pattern is a valid constant"))
    })
}

/// Evaluates a `foreach` list expression over the run's context: the targets, in order.
pub fn eval_list(expr: &str, ctx: &serde_json::Value) -> Result<Vec<serde_json::Value>, TemplateError> {
    let fail = |message: String| TemplateError { field: "foreach".into(), message };
    let env = environment();
    let compiled = env.compile_expression(expr).map_err(|e| fail(e.to_string()))?;
    let value = compiled.eval(minijinja::Value::from(minijinja::value::Serde(ctx))).map_err(|e| fail(e.to_string()))?;
    let json = serde_json::to_value(&value).map_err(|e| fail(e.to_string()))?;
    match json {
        serde_json::Value::Array(items) => Ok(items),
        other => Err(fail(format!("`{expr}` gives {other}, not a list of targets"))),
    }
}

/// Evaluates a step's `when` condition over the run's context.
pub fn eval_condition(expr: &str, ctx: &serde_json::Value) -> Result<bool, TemplateError> {
    let env = environment();
    let compiled =
        env.compile_expression(expr).map_err(|e| TemplateError { field: "when".into(), message: e.to_string() })?;
    let value = compiled
        .eval(minijinja::Value::from(minijinja::value::Serde(ctx)))
        .map_err(|e| TemplateError { field: "when".into(), message: e.to_string() })?;
    Ok(value.is_true())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exec(command: &[&str]) -> ExecAction {
        ExecAction {
            command: command.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            workdir: None,
            secret_params: Vec::new(),
        }
    }

    fn names(source: &str) -> Vec<String> {
        references(source).unwrap().into_iter().map(|r| r.segments.join(".")).collect()
    }

    #[test]
    fn references_cover_dotted_subscript_and_skip_locals_and_globals() {
        assert_eq!(
            names(
                "{% for h in params.hosts %}{{ h }}{{ loop.index }}{% endfor %}\
                 {{ range(2) }}{{ steps.a.outputs.x }}{{ steps['b-c'].status }}{{ run.id }}"
            ),
            ["params.hosts", "run.id", "steps", "steps.a.outputs.x", "steps.b-c"]
        );
    }

    #[test]
    fn compile_errors_are_one_line() {
        let err = references("{{ params.x ").unwrap_err();
        assert!(err.starts_with("syntax error"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn keeps_trailing_newline_and_does_not_escape() {
        let out = render_exec(&exec(&["{{ params.a }}\n"]), &json!({"params": {"a": "<&>"}})).unwrap();
        assert_eq!(out.argv, ["<&>\n"]);
    }
}
