//! Typed runbook parameters: their declaration (`ParamSpec`) and how given values are checked.
//!
//! Values reach a run from two places with different shapes: the CLI (`-p k=v`, always a JSON
//! string) and schedule documents (typed YAML, so numbers, booleans, lists and mappings). Both go
//! through [`resolve`], which coerces each value to its declared kind, applies defaults and
//! enforces pattern, range and enum rules. The same coercion checks defaults when a runbook is
//! parsed, so a runbook whose defaults break its own rules never gets applied.
//!
//! A `secret` parameter's value is a [`SecretRef`] (`env:NAME` or `file:/absolute/path`), never
//! the secret: only the reference is checked here, stored in the run and shown to people. The
//! worker reads the secret itself just before it starts the step (see
//! [`crate::template::secret_marker`]).

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// One declared parameter of a runbook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamSpec {
    /// Name used in templates as `params.<name>`; `^[a-z_][a-z0-9_]*$`.
    pub name: String,
    /// The type values are coerced to.
    pub kind: ParamKind,
    /// Whether a value must be given (required parameters never have a default).
    pub required: bool,
    /// Value used when none is given, already coerced to `kind`.
    pub default: Option<Value>,
    /// Regex every string (or every list item, or every map value) must match; not implicitly
    /// anchored.
    pub pattern: Option<String>,
    /// Smallest allowed value (`int` and `float` only; an integer for `int`).
    pub min: Option<Number>,
    /// Largest allowed value (`int` and `float` only; an integer for `int`).
    pub max: Option<Number>,
    /// Free text shown by `baton runbook show` and in errors; may be empty.
    pub description: String,
}

/// The type of a parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ParamKind {
    /// Any string.
    String,
    /// A signed 64-bit integer.
    Int,
    /// `true` or `false`.
    Bool,
    /// One string out of a fixed list.
    Enum {
        /// The allowed values, in declaration order; never empty.
        values: Vec<String>,
    },
    /// A list of strings.
    List,
    /// A finite 64-bit floating-point number (never NaN or an infinity).
    Float,
    /// A mapping of string keys to string values (templates read `params.<name>.<key>`).
    Map,
    /// A reference to a secret on the worker ([`SecretRef`]); the value is the reference.
    Secret,
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::String => f.write_str("a string"),
            ParamKind::Int => f.write_str("an integer"),
            ParamKind::Bool => f.write_str("a boolean (true/false/yes/no/1/0)"),
            ParamKind::Enum { values } => write!(f, "one of: {}", values.join(", ")),
            ParamKind::List => f.write_str("a list of strings or a comma-separated string"),
            ParamKind::Float => f.write_str("a finite number"),
            ParamKind::Map => f.write_str(
                "a mapping of strings to strings (or a JSON object, or key=value pairs separated by commas)",
            ),
            ParamKind::Secret => f.write_str("a secret reference (env:NAME or file:/absolute/path)"),
        }
    }
}

/// Why a set of given parameter values was refused. Each names the parameter and the fix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ParamError {
    /// A value was given for a parameter the runbook does not declare.
    #[error("unknown parameter `{name}`; {}", known_list(known))]
    Unknown {
        /// The name that was given.
        name: String,
        /// Every declared parameter name, sorted.
        known: Vec<String>,
    },
    /// A required parameter has no value.
    #[error("missing required parameter `{name}`")]
    Missing {
        /// The parameter's name.
        name: String,
    },
    /// The value cannot be read as the declared type.
    #[error("parameter `{name}`: expected {expected}, found {found}")]
    WrongType {
        /// The parameter's name.
        name: String,
        /// What the parameter's kind accepts.
        expected: String,
        /// The offending value, described.
        found: String,
    },
    /// A string (or list item, or map value) does not match the declared pattern.
    #[error("parameter `{name}`: {value:?} does not match the pattern `{pattern}`")]
    Pattern {
        /// The parameter's name.
        name: String,
        /// The declared regex.
        pattern: String,
        /// The value (or list item) that failed.
        value: String,
    },
    /// A number lies outside `min..=max`.
    #[error("parameter `{name}`: {value} is out of range (expected {})", range_text(min.as_ref(), max.as_ref()))]
    OutOfRange {
        /// The parameter's name.
        name: String,
        /// The value given (after coercion).
        value: Number,
        /// The declared minimum, if any.
        min: Option<Number>,
        /// The declared maximum, if any.
        max: Option<Number>,
    },
    /// An enum value is not one of the declared values.
    #[error("parameter `{name}`: {value:?} is not one of: {}", allowed.join(", "))]
    NotInEnum {
        /// The parameter's name.
        name: String,
        /// The value given.
        value: String,
        /// The declared values.
        allowed: Vec<String>,
    },
}

fn known_list(known: &[String]) -> String {
    if known.is_empty() {
        "this runbook takes no parameters".to_string()
    } else {
        format!("known parameters: {}", known.join(", "))
    }
}

fn range_text(min: Option<&Number>, max: Option<&Number>) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("{min} to {max}"),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (None, None) => "any number".to_string(),
    }
}

/// Orders two JSON numbers: exactly when both are integers, as `f64` otherwise.
pub(crate) fn compare_numbers(a: &Number, b: &Number) -> Ordering {
    if let (Some(a), Some(b)) = (a.as_i64(), b.as_i64()) {
        return a.cmp(&b);
    }
    if let (Some(a), Some(b)) = (a.as_u64(), b.as_u64()) {
        return a.cmp(&b);
    }
    // JSON numbers are never NaN, so the comparison is always defined.
    a.as_f64().partial_cmp(&b.as_f64()).unwrap_or(Ordering::Equal)
}

/// Where a secret lives on the worker: the value of a `secret` parameter.
///
/// The text form is `env:NAME` (an environment variable of the worker process, `NAME` matching
/// `[A-Za-z_][A-Za-z0-9_]*`) or `file:/absolute/path` (a file on the worker, read as UTF-8 with
/// one trailing newline stripped; the path has no control characters). Only this reference is
/// ever stored, replicated or shown; the worker resolves it just before starting a step.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SecretRef {
    /// `env:NAME`: the worker's environment variable `NAME`.
    Env(String),
    /// `file:/absolute/path`: the contents of a file on the worker.
    File(String),
}

impl SecretRef {
    /// Parses `env:NAME` or `file:/absolute/path`; the error says what is wrong with `text`
    /// (without repeating it).
    pub fn parse(text: &str) -> Result<SecretRef, String> {
        if let Some(name) = text.strip_prefix("env:") {
            let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if name.is_empty() {
                Err("the environment variable name after `env:` is empty".to_string())
            } else if valid {
                Ok(SecretRef::Env(name.to_string()))
            } else {
                Err(format!("{name:?} is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)"))
            }
        } else if let Some(path) = text.strip_prefix("file:") {
            if path.is_empty() {
                Err("the path after `file:` is empty".to_string())
            } else if !path.starts_with('/') {
                Err(format!("the path after `file:` must be absolute (start with /), found {path:?}"))
            } else if path.chars().any(char::is_control) {
                Err("the path after `file:` contains a control character".to_string())
            } else {
                Ok(SecretRef::File(path.to_string()))
            }
        } else {
            Err("a secret reference starts with `env:` or `file:`".to_string())
        }
    }
}

impl FromStr for SecretRef {
    type Err = String;

    fn from_str(text: &str) -> Result<SecretRef, String> {
        SecretRef::parse(text)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "env:{name}"),
            SecretRef::File(path) => write!(f, "file:{path}"),
        }
    }
}

/// Describes a JSON value for "found ..." in error messages.
pub(crate) fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(items) => format!("a list of {} item(s)", items.len()),
        Value::Object(_) => "a mapping".to_string(),
    }
}

/// Checks `given` against `specs`: rejects unknown names, coerces every value, fills in defaults
/// and reports missing required parameters. Optional parameters without a value or default are
/// left out of the result (templates can test them with `params.x is defined`).
///
/// Unknown names are reported first (in name order), then the specs are checked in declaration
/// order; the first problem wins.
pub(crate) fn resolve(
    specs: &[ParamSpec],
    given: &BTreeMap<String, Value>,
) -> Result<BTreeMap<String, Value>, ParamError> {
    if let Some(name) = given.keys().find(|name| !specs.iter().any(|s| &s.name == *name)) {
        let mut known: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        known.sort();
        return Err(ParamError::Unknown { name: name.clone(), known });
    }
    let mut resolved = BTreeMap::new();
    for spec in specs {
        // An explicit null means "not given", so a schedule can leave a value to the default.
        match given.get(&spec.name).filter(|v| !v.is_null()) {
            Some(value) => {
                resolved.insert(spec.name.clone(), coerce(spec, value)?);
            }
            None => match &spec.default {
                Some(default) => {
                    resolved.insert(spec.name.clone(), default.clone());
                }
                None if spec.required => {
                    return Err(ParamError::Missing { name: spec.name.clone() });
                }
                None => {}
            },
        }
    }
    Ok(resolved)
}

/// Coerces one value to the spec's kind and checks the spec's rules.
pub(crate) fn coerce(spec: &ParamSpec, value: &Value) -> Result<Value, ParamError> {
    let wrong_type = || ParamError::WrongType {
        name: spec.name.clone(),
        expected: spec.kind.to_string(),
        found: describe_value(value),
    };
    match &spec.kind {
        ParamKind::String => {
            let text = scalar_text(value).ok_or_else(wrong_type)?;
            check_pattern(spec, &text)?;
            Ok(Value::String(text))
        }
        ParamKind::Int => {
            let number = match value {
                Value::Number(n) => n.as_i64(),
                Value::String(s) => s.parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(wrong_type)?;
            let number = Number::from(number);
            check_range(spec, &number)?;
            Ok(Value::Number(number))
        }
        ParamKind::Float => {
            let number = match value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.parse::<f64>().ok(),
                _ => None,
            }
            // `Number::from_f64` refuses NaN and the infinities.
            .and_then(Number::from_f64)
            .ok_or_else(wrong_type)?;
            check_range(spec, &number)?;
            Ok(Value::Number(number))
        }
        ParamKind::Map => {
            let entries = match value {
                Value::Object(map) => map_entries(map).map_err(|why| ParamError::WrongType {
                    name: spec.name.clone(),
                    expected: spec.kind.to_string(),
                    found: format!("a mapping whose {why}"),
                })?,
                Value::String(s) => parse_map_text(s).map_err(|why| ParamError::WrongType {
                    name: spec.name.clone(),
                    expected: spec.kind.to_string(),
                    found: format!("{} ({why})", describe_value(value)),
                })?,
                _ => return Err(wrong_type()),
            };
            for item in entries.values() {
                check_pattern(spec, item)?;
            }
            Ok(Value::Object(entries.into_iter().map(|(k, v)| (k, Value::String(v))).collect()))
        }
        ParamKind::Secret => {
            let Value::String(text) = value else {
                return Err(wrong_type());
            };
            match SecretRef::parse(text) {
                Ok(reference) => Ok(Value::String(reference.to_string())),
                Err(why) => Err(ParamError::WrongType {
                    name: spec.name.clone(),
                    expected: spec.kind.to_string(),
                    found: describe_secret_attempt(text, &why),
                }),
            }
        }
        ParamKind::Bool => {
            let flag = match value {
                Value::Bool(b) => Some(*b),
                Value::Number(n) => match n.as_i64() {
                    Some(1) => Some(true),
                    Some(0) => Some(false),
                    _ => None,
                },
                Value::String(s) => match s.to_ascii_lowercase().as_str() {
                    "true" | "yes" | "1" => Some(true),
                    "false" | "no" | "0" => Some(false),
                    _ => None,
                },
                _ => None,
            }
            .ok_or_else(wrong_type)?;
            Ok(Value::Bool(flag))
        }
        ParamKind::Enum { values } => {
            let text = scalar_text(value).ok_or_else(wrong_type)?;
            if !values.contains(&text) {
                return Err(ParamError::NotInEnum { name: spec.name.clone(), value: text, allowed: values.clone() });
            }
            Ok(Value::String(text))
        }
        ParamKind::List => {
            let items: Vec<String> = match value {
                Value::Array(items) => items.iter().map(scalar_text).collect::<Option<_>>().ok_or_else(wrong_type)?,
                Value::String(s) if s.trim().is_empty() => Vec::new(),
                Value::String(s) => s.split(',').map(|item| item.trim().to_string()).collect(),
                _ => return Err(wrong_type()),
            };
            for item in &items {
                check_pattern(spec, item)?;
            }
            Ok(Value::from(items))
        }
    }
}

/// Checks a coerced number against the spec's `min` and `max`.
fn check_range(spec: &ParamSpec, number: &Number) -> Result<(), ParamError> {
    let below = spec.min.as_ref().is_some_and(|min| compare_numbers(number, min) == Ordering::Less);
    let above = spec.max.as_ref().is_some_and(|max| compare_numbers(number, max) == Ordering::Greater);
    if below || above {
        return Err(ParamError::OutOfRange {
            name: spec.name.clone(),
            value: number.clone(),
            min: spec.min.clone(),
            max: spec.max.clone(),
        });
    }
    Ok(())
}

/// The entries of a mapping given for a `map` parameter; values are scalars as text. The error
/// completes "a mapping whose ...".
fn map_entries(map: &serde_json::Map<String, Value>) -> Result<BTreeMap<String, String>, String> {
    let mut entries = BTreeMap::new();
    for (key, value) in map {
        if key.is_empty() {
            return Err("key is empty".to_string());
        }
        let text = scalar_text(value)
            .ok_or_else(|| format!("value for {key:?} is {}, not a string or number", describe_value(value)))?;
        entries.insert(key.clone(), text);
    }
    Ok(entries)
}

/// A `map` parameter given as text: a JSON object (`{"app":"web"}`), `key=value` pairs separated
/// by commas (`app=web, tier=front`; blanks around keys and values are trimmed), or blank for an
/// empty mapping. The error says what is wrong, for "found the string ... (why)".
fn parse_map_text(text: &str) -> Result<BTreeMap<String, String>, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(BTreeMap::new());
    }
    if trimmed.starts_with('{') {
        let object: serde_json::Map<String, Value> =
            serde_json::from_str(trimmed).map_err(|err| format!("not a valid JSON object: {err}"))?;
        return map_entries(&object).map_err(|why| format!("a JSON object whose {why}"));
    }
    let mut entries = BTreeMap::new();
    for item in trimmed.split(',') {
        let Some((key, value)) = item.split_once('=') else {
            return Err(format!("{:?} is not key=value", item.trim()));
        };
        let key = key.trim();
        if key.is_empty() {
            return Err(format!("{:?} has an empty key", item.trim()));
        }
        if entries.insert(key.to_string(), value.trim().to_string()).is_some() {
            return Err(format!("the key {key:?} is given twice"));
        }
    }
    Ok(entries)
}

/// Describes a value given for a secret parameter that is not a valid reference. A string that
/// does not even start like a reference is not repeated: it may be the secret itself, pasted in
/// by mistake, and error messages travel to logs and terminals.
fn describe_secret_attempt(text: &str, why: &str) -> String {
    if text.starts_with("env:") || text.starts_with("file:") {
        format!("the string {text:?} ({why})")
    } else {
        "a string that is not a reference (not shown, in case it is the secret itself)".to_string()
    }
}

/// Strings as themselves, numbers stringified (`7` given to a string parameter is `"7"`).
fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn check_pattern(spec: &ParamSpec, text: &str) -> Result<(), ParamError> {
    let Some(pattern) = &spec.pattern else {
        return Ok(());
    };
    // Patterns are compiled when the runbook is parsed; one that fails here can only come
    // from a hand-built spec, and then it cannot be satisfied.
    let matches = Regex::new(pattern).is_ok_and(|re| re.is_match(text));
    if matches {
        Ok(())
    } else {
        Err(ParamError::Pattern { name: spec.name.clone(), pattern: pattern.clone(), value: text.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(name: &str, kind: ParamKind) -> ParamSpec {
        ParamSpec {
            name: name.to_string(),
            kind,
            required: false,
            default: None,
            pattern: None,
            min: None,
            max: None,
            description: String::new(),
        }
    }

    #[test]
    fn optional_without_default_is_left_out_and_null_means_not_given() {
        let specs = [spec("a", ParamKind::String)];
        let given = BTreeMap::from([("a".to_string(), Value::Null)]);
        assert_eq!(resolve(&specs, &given), Ok(BTreeMap::new()));
    }

    #[test]
    fn error_messages_name_the_parameter_and_the_fix() {
        let unknown = ParamError::Unknown { name: "pth".into(), known: vec!["path".into()] };
        assert_eq!(unknown.to_string(), "unknown parameter `pth`; known parameters: path");
        let range = ParamError::OutOfRange { name: "days".into(), value: 0.into(), min: Some(1.into()), max: None };
        assert_eq!(range.to_string(), "parameter `days`: 0 is out of range (expected at least 1)");
        let kind = ParamError::WrongType {
            name: "n".into(),
            expected: ParamKind::Int.to_string(),
            found: describe_value(&json!("x")),
        };
        assert_eq!(kind.to_string(), "parameter `n`: expected an integer, found the string \"x\"");
    }
}
