//! Parameter coercion and every `ParamError`, through `Runbook::resolve_params`.

use std::collections::BTreeMap;

use baton_core::Runbook;
use baton_core::runbook::ParamError;
use serde_json::{Value, json};

const RUNBOOK: &str = r#"
name: params-demo
params:
  path: { type: string, required: true, pattern: "^/" }
  days: { type: int, default: 7, min: 1, max: 3650 }
  dry_run: { type: bool, default: true }
  mode: { type: enum, values: [fast, slow], default: fast }
  hosts: { type: list, default: [a, b], pattern: "^[a-z]+$" }
  label: { type: string }
steps:
  - id: s
    action: exec
    with: { command: [echo, "{{ params.path }}"] }
"#;

fn runbook() -> Runbook {
    Runbook::parse("params-demo.yaml", RUNBOOK).unwrap()
}

fn given(pairs: &[(&str, Value)]) -> BTreeMap<String, Value> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

#[test]
fn defaults_fill_in_and_optional_params_without_default_stay_absent() {
    let resolved = runbook().resolve_params(&given(&[("path", json!("/var"))])).unwrap();
    assert_eq!(
        Value::from(serde_json::Map::from_iter(resolved)),
        json!({ "path": "/var", "days": 7, "dry_run": true, "mode": "fast", "hosts": ["a", "b"] })
    );
}

#[test]
fn coercion_table() {
    // (param, given value, coerced value)
    let cases: Vec<(&str, Value, Value)> = vec![
        ("days", json!("7"), json!(7)),
        ("days", json!(7), json!(7)),
        ("days", json!("+12"), json!(12)),
        ("dry_run", json!(true), json!(true)),
        ("dry_run", json!("false"), json!(false)),
        ("dry_run", json!("yes"), json!(true)),
        ("dry_run", json!("No"), json!(false)),
        ("dry_run", json!("1"), json!(true)),
        ("dry_run", json!("0"), json!(false)),
        ("dry_run", json!(0), json!(false)),
        ("hosts", json!(["x", "y"]), json!(["x", "y"])),
        ("hosts", json!("x, y,z"), json!(["x", "y", "z"])),
        ("hosts", json!(""), json!([])),
        ("mode", json!("slow"), json!("slow")),
        ("label", json!("v1"), json!("v1")),
        ("label", json!(42), json!("42")),
        ("path", json!("/tmp"), json!("/tmp")),
    ];
    let runbook = runbook();
    for (name, value, expected) in cases {
        let mut input = given(&[("path", json!("/x"))]);
        input.insert(name.to_string(), value.clone());
        let resolved = runbook.resolve_params(&input).unwrap_or_else(|err| panic!("{name}={value}: {err}"));
        assert_eq!(resolved[name], expected, "{name}={value}");
    }
}

#[test]
fn every_param_error() {
    let runbook = runbook();
    let s = |v: &str| v.to_string();
    // (given values, expected error, its Display)
    type Case = (Vec<(&'static str, Value)>, ParamError, &'static str);
    let cases: Vec<Case> = vec![
        (
            vec![("path", json!("/x")), ("pth", json!("/y"))],
            ParamError::Unknown {
                name: s("pth"),
                known: ["days", "dry_run", "hosts", "label", "mode", "path"].map(s).to_vec(),
            },
            "unknown parameter `pth`; known parameters: days, dry_run, hosts, label, mode, path",
        ),
        (vec![], ParamError::Missing { name: s("path") }, "missing required parameter `path`"),
        (
            vec![("path", json!("/x")), ("days", json!("seven"))],
            ParamError::WrongType { name: s("days"), expected: s("an integer"), found: s("the string \"seven\"") },
            "parameter `days`: expected an integer, found the string \"seven\"",
        ),
        (
            vec![("path", json!("/x")), ("days", json!(1.5))],
            ParamError::WrongType { name: s("days"), expected: s("an integer"), found: s("the number 1.5") },
            "parameter `days`: expected an integer, found the number 1.5",
        ),
        (
            vec![("path", json!("/x")), ("dry_run", json!("maybe"))],
            ParamError::WrongType {
                name: s("dry_run"),
                expected: s("a boolean (true/false/yes/no/1/0)"),
                found: s("the string \"maybe\""),
            },
            "parameter `dry_run`: expected a boolean (true/false/yes/no/1/0), found the string \"maybe\"",
        ),
        (
            vec![("path", json!("/x")), ("hosts", json!({ "a": 1 }))],
            ParamError::WrongType {
                name: s("hosts"),
                expected: s("a list of strings or a comma-separated string"),
                found: s("a mapping"),
            },
            "parameter `hosts`: expected a list of strings or a comma-separated string, found a mapping",
        ),
        (
            vec![("path", json!("relative"))],
            ParamError::Pattern { name: s("path"), pattern: s("^/"), value: s("relative") },
            "parameter `path`: \"relative\" does not match the pattern `^/`",
        ),
        (
            vec![("path", json!("/x")), ("hosts", json!("ok,NOT-OK"))],
            ParamError::Pattern { name: s("hosts"), pattern: s("^[a-z]+$"), value: s("NOT-OK") },
            "parameter `hosts`: \"NOT-OK\" does not match the pattern `^[a-z]+$`",
        ),
        (
            vec![("path", json!("/x")), ("days", json!("0"))],
            ParamError::OutOfRange { name: s("days"), value: 0, min: Some(1), max: Some(3650) },
            "parameter `days`: 0 is out of range (expected 1 to 3650)",
        ),
        (
            vec![("path", json!("/x")), ("days", json!(4000))],
            ParamError::OutOfRange { name: s("days"), value: 4000, min: Some(1), max: Some(3650) },
            "parameter `days`: 4000 is out of range (expected 1 to 3650)",
        ),
        (
            vec![("path", json!("/x")), ("mode", json!("medium"))],
            ParamError::NotInEnum { name: s("mode"), value: s("medium"), allowed: ["fast", "slow"].map(s).to_vec() },
            "parameter `mode`: \"medium\" is not one of: fast, slow",
        ),
    ];
    for (input, expected, message) in cases {
        let err = runbook.resolve_params(&given(&input)).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(err.to_string(), message);
    }
}

#[test]
fn param_errors_survive_a_serde_round_trip() {
    let err = ParamError::NotInEnum { name: "mode".into(), value: "x".into(), allowed: vec!["a".into()] };
    let back: ParamError = serde_json::from_str(&serde_json::to_string(&err).unwrap()).unwrap();
    assert_eq!(back, err);
}
