//! Typed runbook parameters: their declaration (`ParamSpec`) and how given values are checked.
//!
//! Values reach a run from two places with different shapes: the CLI (`-p k=v`, always a JSON
//! string) and schedule documents (typed YAML, so numbers, booleans and lists). Both go through
//! [`resolve`], which coerces each value to its declared kind, applies defaults and enforces
//! pattern, range and enum rules. The same coercion checks defaults when a runbook is parsed, so
//! a runbook whose defaults break its own rules never gets applied.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

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
    /// Regex every string (or every list item) must match; not implicitly anchored.
    pub pattern: Option<String>,
    /// Smallest allowed value (`int` only).
    pub min: Option<i64>,
    /// Largest allowed value (`int` only).
    pub max: Option<i64>,
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
}

impl fmt::Display for ParamKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParamKind::String => f.write_str("a string"),
            ParamKind::Int => f.write_str("an integer"),
            ParamKind::Bool => f.write_str("a boolean (true/false/yes/no/1/0)"),
            ParamKind::Enum { values } => write!(f, "one of: {}", values.join(", ")),
            ParamKind::List => f.write_str("a list of strings or a comma-separated string"),
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
    /// A string (or list item) does not match the declared pattern.
    #[error("parameter `{name}`: {value:?} does not match the pattern `{pattern}`")]
    Pattern {
        /// The parameter's name.
        name: String,
        /// The declared regex.
        pattern: String,
        /// The value (or list item) that failed.
        value: String,
    },
    /// An integer lies outside `min..=max`.
    #[error("parameter `{name}`: {value} is out of range (expected {})", range_text(*min, *max))]
    OutOfRange {
        /// The parameter's name.
        name: String,
        /// The value given.
        value: i64,
        /// The declared minimum, if any.
        min: Option<i64>,
        /// The declared maximum, if any.
        max: Option<i64>,
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

fn range_text(min: Option<i64>, max: Option<i64>) -> String {
    match (min, max) {
        (Some(min), Some(max)) => format!("{min} to {max}"),
        (Some(min), None) => format!("at least {min}"),
        (None, Some(max)) => format!("at most {max}"),
        (None, None) => "any integer".to_string(),
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
            if spec.min.is_some_and(|min| number < min) || spec.max.is_some_and(|max| number > max) {
                return Err(ParamError::OutOfRange {
                    name: spec.name.clone(),
                    value: number,
                    min: spec.min,
                    max: spec.max,
                });
            }
            Ok(Value::from(number))
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
        let range = ParamError::OutOfRange { name: "days".into(), value: 0, min: Some(1), max: None };
        assert_eq!(range.to_string(), "parameter `days`: 0 is out of range (expected at least 1)");
        let kind = ParamError::WrongType {
            name: "n".into(),
            expected: ParamKind::Int.to_string(),
            found: describe_value(&json!("x")),
        };
        assert_eq!(kind.to_string(), "parameter `n`: expected an integer, found the string \"x\"");
    }
}
