//! Parameter coercion and every `ParamError`, through `Runbook::resolve_params`; diagnostics
//! for bad declarations; float, map and secret parameters in templates.

use std::collections::BTreeMap;

use baton_core::Runbook;
use baton_core::runbook::{Action, ExecAction, ParamError, ParamKind, SecretRef};
use baton_core::template::{
    DamagedSecretMarker, SECRET_MARKER_END, SECRET_MARKER_START, Segment, render_exec, secret_marker, secret_segments,
};
use serde_json::{Number, Value, json};

const RUNBOOK: &str = r#"
name: params-demo
params:
  path: { type: string, required: true, pattern: "^/" }
  days: { type: int, default: 7, min: 1, max: 3650 }
  dry_run: { type: bool, default: true }
  mode: { type: enum, values: [fast, slow], default: fast }
  hosts: { type: list, default: [a, b], pattern: "^[a-z]+$" }
  label: { type: string }
  ratio: { type: float, default: 0.5, min: 0, max: 1 }
  labels: { type: map, pattern: "^[a-z0-9-]+$" }
  db_password: { type: secret, default: "env:DB_PASSWORD" }
  cert: { type: secret }
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
        json!({
            "path": "/var", "days": 7, "dry_run": true, "mode": "fast", "hosts": ["a", "b"], "ratio": 0.5,
            "db_password": "env:DB_PASSWORD",
        })
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
        ("ratio", json!("0.25"), json!(0.25)),
        ("ratio", json!(0.25), json!(0.25)),
        ("ratio", json!("+.5"), json!(0.5)),
        ("ratio", json!("1e-1"), json!(0.1)),
        ("ratio", json!(1), json!(1.0)),
        ("ratio", json!("0"), json!(0.0)),
        ("labels", json!({ "app": "web", "tier": "front" }), json!({ "app": "web", "tier": "front" })),
        ("labels", json!({ "replicas": 3 }), json!({ "replicas": "3" })),
        ("labels", json!(r#"{"app":"web","tier":"front"}"#), json!({ "app": "web", "tier": "front" })),
        ("labels", json!(r#"  { "app": "web" } "#), json!({ "app": "web" })),
        ("labels", json!("app=web, tier = front"), json!({ "app": "web", "tier": "front" })),
        ("labels", json!("app=web"), json!({ "app": "web" })),
        ("labels", json!(""), json!({})),
        ("labels", json!({}), json!({})),
        ("db_password", json!("env:PGPASSWORD"), json!("env:PGPASSWORD")),
        ("db_password", json!("env:_x1"), json!("env:_x1")),
        ("db_password", json!("file:/run/secrets/db password"), json!("file:/run/secrets/db password")),
        ("cert", json!("file:/etc/ssl/key.pem"), json!("file:/etc/ssl/key.pem")),
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
                known: ["cert", "days", "db_password", "dry_run", "hosts", "label", "labels", "mode", "path", "ratio"]
                    .map(s)
                    .to_vec(),
            },
            "unknown parameter `pth`; known parameters: cert, days, db_password, dry_run, hosts, label, labels, \
             mode, path, ratio",
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
            ParamError::OutOfRange { name: s("days"), value: 0.into(), min: Some(1.into()), max: Some(3650.into()) },
            "parameter `days`: 0 is out of range (expected 1 to 3650)",
        ),
        (
            vec![("path", json!("/x")), ("days", json!(4000))],
            ParamError::OutOfRange { name: s("days"), value: 4000.into(), min: Some(1.into()), max: Some(3650.into()) },
            "parameter `days`: 4000 is out of range (expected 1 to 3650)",
        ),
        (
            vec![("path", json!("/x")), ("mode", json!("medium"))],
            ParamError::NotInEnum { name: s("mode"), value: s("medium"), allowed: ["fast", "slow"].map(s).to_vec() },
            "parameter `mode`: \"medium\" is not one of: fast, slow",
        ),
        // float
        (
            vec![("path", json!("/x")), ("ratio", json!("half"))],
            wrong_type("ratio", "a finite number", "the string \"half\""),
            "parameter `ratio`: expected a finite number, found the string \"half\"",
        ),
        (
            vec![("path", json!("/x")), ("ratio", json!("NaN"))],
            wrong_type("ratio", "a finite number", "the string \"NaN\""),
            "parameter `ratio`: expected a finite number, found the string \"NaN\"",
        ),
        (
            vec![("path", json!("/x")), ("ratio", json!("inf"))],
            wrong_type("ratio", "a finite number", "the string \"inf\""),
            "parameter `ratio`: expected a finite number, found the string \"inf\"",
        ),
        (
            vec![("path", json!("/x")), ("ratio", json!("-infinity"))],
            wrong_type("ratio", "a finite number", "the string \"-infinity\""),
            "parameter `ratio`: expected a finite number, found the string \"-infinity\"",
        ),
        (
            vec![("path", json!("/x")), ("ratio", json!("1e999"))],
            wrong_type("ratio", "a finite number", "the string \"1e999\""),
            "parameter `ratio`: expected a finite number, found the string \"1e999\"",
        ),
        (
            vec![("path", json!("/x")), ("ratio", json!(true))],
            wrong_type("ratio", "a finite number", "the boolean true"),
            "parameter `ratio`: expected a finite number, found the boolean true",
        ),
        (
            vec![("path", json!("/x")), ("ratio", json!(1.5))],
            ParamError::OutOfRange { name: s("ratio"), value: float(1.5), min: Some(0.into()), max: Some(1.into()) },
            "parameter `ratio`: 1.5 is out of range (expected 0 to 1)",
        ),
        (
            vec![("path", json!("/x")), ("ratio", json!("-0.001"))],
            ParamError::OutOfRange { name: s("ratio"), value: float(-0.001), min: Some(0.into()), max: Some(1.into()) },
            "parameter `ratio`: -0.001 is out of range (expected 0 to 1)",
        ),
        // map
        (
            vec![("path", json!("/x")), ("labels", json!(["app"]))],
            wrong_type("labels", MAP, "a list of 1 item(s)"),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found a list of 1 item(s)",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!({ "app": true }))],
            wrong_type("labels", MAP, "a mapping whose value for \"app\" is the boolean true, not a string or number"),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found a mapping whose value for \"app\" is the boolean true, not a string or \
             number",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!({ "": "x" }))],
            wrong_type("labels", MAP, "a mapping whose key is empty"),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found a mapping whose key is empty",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!("app"))],
            wrong_type("labels", MAP, "the string \"app\" (\"app\" is not key=value)"),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found the string \"app\" (\"app\" is not key=value)",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!("a=1,,b=2"))],
            wrong_type("labels", MAP, "the string \"a=1,,b=2\" (\"\" is not key=value)"),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found the string \"a=1,,b=2\" (\"\" is not key=value)",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!(" =web"))],
            wrong_type("labels", MAP, "the string \" =web\" (\"=web\" has an empty key)"),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found the string \" =web\" (\"=web\" has an empty key)",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!("a=1, a=2"))],
            wrong_type("labels", MAP, "the string \"a=1, a=2\" (the key \"a\" is given twice)"),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found the string \"a=1, a=2\" (the key \"a\" is given twice)",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!(r#"{"app": web}"#))],
            wrong_type(
                "labels",
                MAP,
                "the string \"{\\\"app\\\": web}\" (not a valid JSON object: expected value at line 1 column 9)",
            ),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found the string \"{\\\"app\\\": web}\" (not a valid JSON object: expected \
             value at line 1 column 9)",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!(r#"{"app": ["web"]}"#))],
            wrong_type(
                "labels",
                MAP,
                "the string \"{\\\"app\\\": [\\\"web\\\"]}\" (a JSON object whose value for \"app\" is a list \
                 of 1 item(s), not a string or number)",
            ),
            "parameter `labels`: expected a mapping of strings to strings (or a JSON object, or key=value pairs \
             separated by commas), found the string \"{\\\"app\\\": [\\\"web\\\"]}\" (a JSON object whose \
             value for \"app\" is a list of 1 item(s), not a string or number)",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!({ "app": "web", "tier": "Front End" }))],
            ParamError::Pattern { name: s("labels"), pattern: s("^[a-z0-9-]+$"), value: s("Front End") },
            "parameter `labels`: \"Front End\" does not match the pattern `^[a-z0-9-]+$`",
        ),
        (
            vec![("path", json!("/x")), ("labels", json!("app=WEB"))],
            ParamError::Pattern { name: s("labels"), pattern: s("^[a-z0-9-]+$"), value: s("WEB") },
            "parameter `labels`: \"WEB\" does not match the pattern `^[a-z0-9-]+$`",
        ),
        // secret: only references; a value that does not look like one is not repeated
        (
            vec![("path", json!("/x")), ("db_password", json!("hunter2"))],
            wrong_type(
                "db_password",
                SECRET,
                "a string that is not a reference (not shown, in case it is the secret itself)",
            ),
            "parameter `db_password`: expected a secret reference (env:NAME or file:/absolute/path), found a string \
             that is not a reference (not shown, in case it is the secret itself)",
        ),
        (
            vec![("path", json!("/x")), ("db_password", json!("env:"))],
            wrong_type(
                "db_password",
                SECRET,
                "the string \"env:\" (the environment variable name after `env:` is empty)",
            ),
            "parameter `db_password`: expected a secret reference (env:NAME or file:/absolute/path), found the string \
             \"env:\" (the environment variable name after `env:` is empty)",
        ),
        (
            vec![("path", json!("/x")), ("db_password", json!("env:DB-PASSWORD"))],
            wrong_type(
                "db_password",
                SECRET,
                "the string \"env:DB-PASSWORD\" (\"DB-PASSWORD\" is not an environment variable name \
                 ([A-Za-z_][A-Za-z0-9_]*))",
            ),
            "parameter `db_password`: expected a secret reference (env:NAME or file:/absolute/path), found the string \
             \"env:DB-PASSWORD\" (\"DB-PASSWORD\" is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*))",
        ),
        (
            vec![("path", json!("/x")), ("db_password", json!("env:1PASS"))],
            wrong_type(
                "db_password",
                SECRET,
                "the string \"env:1PASS\" (\"1PASS\" is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*))",
            ),
            "parameter `db_password`: expected a secret reference (env:NAME or file:/absolute/path), found the string \
             \"env:1PASS\" (\"1PASS\" is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*))",
        ),
        (
            vec![("path", json!("/x")), ("db_password", json!("file:run/secrets/db"))],
            wrong_type(
                "db_password",
                SECRET,
                "the string \"file:run/secrets/db\" (the path after `file:` must be absolute (start with /), found \
                 \"run/secrets/db\")",
            ),
            "parameter `db_password`: expected a secret reference (env:NAME or file:/absolute/path), found the string \
             \"file:run/secrets/db\" (the path after `file:` must be absolute (start with /), found \"run/secrets/db\")",
        ),
        (
            vec![("path", json!("/x")), ("db_password", json!("file:"))],
            wrong_type("db_password", SECRET, "the string \"file:\" (the path after `file:` is empty)"),
            "parameter `db_password`: expected a secret reference (env:NAME or file:/absolute/path), found the string \
             \"file:\" (the path after `file:` is empty)",
        ),
        (
            vec![("path", json!("/x")), ("db_password", json!("file:/a\nb"))],
            wrong_type(
                "db_password",
                SECRET,
                "the string \"file:/a\\nb\" (the path after `file:` contains a control character)",
            ),
            "parameter `db_password`: expected a secret reference (env:NAME or file:/absolute/path), found the string \
             \"file:/a\\nb\" (the path after `file:` contains a control character)",
        ),
        (
            vec![("path", json!("/x")), ("cert", json!(42))],
            wrong_type("cert", SECRET, "the number 42"),
            "parameter `cert`: expected a secret reference (env:NAME or file:/absolute/path), found the number 42",
        ),
    ];
    for (input, expected, message) in cases {
        let err = runbook.resolve_params(&given(&input)).unwrap_err();
        assert_eq!(err, expected);
        assert_eq!(err.to_string(), message);
    }
}

const MAP: &str = "a mapping of strings to strings (or a JSON object, or key=value pairs separated by commas)";
const SECRET: &str = "a secret reference (env:NAME or file:/absolute/path)";

fn wrong_type(name: &str, expected: &str, found: &str) -> ParamError {
    ParamError::WrongType { name: name.to_string(), expected: expected.to_string(), found: found.to_string() }
}

fn float(value: f64) -> Number {
    Number::from_f64(value).unwrap()
}

#[test]
fn param_errors_survive_a_serde_round_trip() {
    let err = ParamError::NotInEnum { name: "mode".into(), value: "x".into(), allowed: vec!["a".into()] };
    let back: ParamError = serde_json::from_str(&serde_json::to_string(&err).unwrap()).unwrap();
    assert_eq!(back, err);
}

#[test]
fn float_bounds_are_numbers_and_int_bounds_stay_exact() {
    let text = "\
name: bounds
params:
  ratio: { type: float, min: -0.5, max: 2 }
  big: { type: int, min: 9007199254740993, max: 9223372036854775807 }
steps:
  - id: s
    action: exec
    with: { command: [echo, \"{{ params.ratio }}\"] }
";
    let runbook = Runbook::parse("bounds.yaml", text).unwrap();
    assert_eq!(runbook.params[0].kind, ParamKind::Float);
    assert_eq!(runbook.params[0].min, Some(float(-0.5)));
    assert_eq!(runbook.params[0].max, Some(2.into()));
    // 2^53 + 1 is not representable as f64: an int range must not go through floats.
    let at = |v: Value| runbook.resolve_params(&BTreeMap::from([("big".to_string(), v)]));
    assert_eq!(at(json!("9007199254740993")).unwrap()["big"], json!(9007199254740993_i64));
    let below = at(json!("9007199254740992")).unwrap_err();
    assert_eq!(
        below.to_string(),
        "parameter `big`: 9007199254740992 is out of range (expected 9007199254740993 to 9223372036854775807)"
    );
    let ratio = |v: Value| runbook.resolve_params(&BTreeMap::from([("ratio".to_string(), v)]));
    assert_eq!(ratio(json!("-0.5")).unwrap()["ratio"], json!(-0.5));
    assert_eq!(ratio(json!(2)).unwrap()["ratio"], json!(2.0));
    assert_eq!(
        ratio(json!("2.0000001")).unwrap_err().to_string(),
        "parameter `ratio`: 2.0000001 is out of range (expected -0.5 to 2)"
    );
}

/// (line, column, field, message) of every diagnostic of `text`, which must not parse.
fn diagnostics(text: &str) -> Vec<(usize, usize, String, String)> {
    match Runbook::parse("bad.yaml", text) {
        Ok(runbook) => panic!("expected an error, parsed {runbook:?}"),
        Err(err) => err.diagnostics.into_iter().map(|d| (d.line, d.column, d.field, d.message)).collect(),
    }
}

#[test]
fn bad_declarations_of_the_new_types_point_at_the_field() {
    let text = "\
name: x
params:
  a: { type: float, min: 2.5, max: 1 }
  b: { type: int, min: 1.5 }
  c: { type: string, max: 3 }
  d: { type: float, min: \"low\" }
  e: { type: secret, pattern: \"^env:\" }
  f: { type: secret, min: 1 }
  g: { type: secret, default: hunter2 }
  h: { type: map, default: { a: [1] } }
  i: { type: float, default: 2, max: 1 }
  j: { type: map, pattern: \"(\" }
  k: { type: bool, pattern: x }
  l: { type: int, max: 9223372036854775808 }
  m: { type: secret, default: \"file:relative\" }
  pw: { type: secret, default: \"env:PW\" }
steps:
  - id: s
    when: \"params.pw != ''\"
    action: exec
    with: { command: [echo] }
  - id: ok
    approval: { approvers: [alice], message: \"Use {{ params.pw }}?\" }
";
    let found = diagnostics(text);
    let expected: Vec<(usize, usize, &str, &str)> = vec![
        (3, 36, "params.a.max", "expected max >= min (2.5), found 1"),
        (4, 24, "params.b.min", "expected a 64-bit signed integer (the parameter is an int), found 1.5"),
        (5, 22, "params.c.max", "`max` applies to int and float parameters only, found it on a string"),
        (6, 26, "params.d.min", "expected a number, found \"low\""),
        (
            7,
            22,
            "params.e.pattern",
            "a secret parameter cannot have a `pattern`: its value is a reference (env:NAME or file:/absolute/path), \
             and the secret is only read on the worker",
        ),
        (
            8,
            22,
            "params.f.min",
            "a secret parameter cannot have `min`: its value is a reference (env:NAME or file:/absolute/path), and \
             the secret is only read on the worker",
        ),
        (
            9,
            31,
            "params.g.default",
            "the default does not satisfy the parameter: parameter `g`: expected a secret reference (env:NAME or \
             file:/absolute/path), found a string that is not a reference (not shown, in case it is the secret \
             itself)",
        ),
        (
            10,
            28,
            "params.h.default",
            "the default does not satisfy the parameter: parameter `h`: expected a mapping of strings to strings (or \
             a JSON object, or key=value pairs separated by commas), found a mapping whose value for \"a\" is a list \
             of 1 item(s), not a string or number",
        ),
        (
            11,
            30,
            "params.i.default",
            "the default does not satisfy the parameter: parameter `i`: 2.0 is out of range (expected at most 1)",
        ),
        (12, 28, "params.j.pattern", "expected a valid regular expression, found \"(\""),
        (13, 20, "params.k.pattern", "`pattern` applies to string, list and map parameters only"),
        (
            14,
            24,
            "params.l.max",
            "expected a 64-bit signed integer (the parameter is an int), found 9223372036854775808",
        ),
        (
            15,
            31,
            "params.m.default",
            "the default does not satisfy the parameter: parameter `m`: expected a secret reference (env:NAME or \
             file:/absolute/path), found the string \"file:relative\" (the path after `file:` must be absolute \
             (start with /), found \"relative\")",
        ),
        (
            19,
            12,
            "steps[0].when",
            "params.pw is a secret parameter: a condition cannot see a secret (only the worker reads it, when the \
             step starts)",
        ),
        (
            23,
            54,
            "steps[1].approval.message",
            "params.pw is a secret parameter: an approval message is shown to people and cannot contain a secret",
        ),
    ];
    let summary: Vec<(usize, usize, &str)> = found.iter().map(|(l, c, f, _)| (*l, *c, f.as_str())).collect();
    let wanted: Vec<(usize, usize, &str)> = expected.iter().map(|(l, c, f, _)| (*l, *c, *f)).collect();
    assert_eq!(summary, wanted, "{found:#?}");
    for ((_, _, field, message), (_, _, _, needle)) in found.iter().zip(&expected) {
        assert!(message.starts_with(needle), "{field}: {message:?} does not start with {needle:?}");
    }
}

#[test]
fn nan_and_infinities_are_refused_where_they_are_written() {
    for (decl, column, field) in [
        ("{ type: float, default: .nan }", 30, "params.r.default"),
        ("{ type: float, default: -.inf }", 30, "params.r.default"),
        ("{ type: float, min: .inf }", 26, "params.r.min"),
        ("{ type: float, max: .NaN }", 26, "params.r.max"),
    ] {
        let text = format!(
            "name: x\nparams:\n  r: {decl}\nsteps:\n  - id: s\n    action: exec\n    with: {{ command: [echo] }}\n"
        );
        let found = diagnostics(&text);
        assert_eq!(found.len(), 1, "{decl}: {found:#?}");
        let (line, col, f, message) = &found[0];
        assert_eq!((*line, *col, f.as_str()), (3, column, field), "{decl}: {message}");
        assert!(message.contains("is not a finite number"), "{decl}: {message}");
    }
}

const TYPED: &str = r#"
name: typed
params:
  ratio: { type: float, default: 0.75 }
  labels: { type: map, default: { app: web, tier: front } }
  db_password: { type: secret, default: "env:DB_PASSWORD" }
  note: { type: string, default: "" }
steps:
  - id: deploy
    action: exec
    with:
      command:
        - deploy
        - "--ratio={{ params.ratio }}"
        - "--app={{ params.labels.app }}"
        - "{% for k, v in params.labels | dictsort %}{{ k }}={{ v }};{% endfor %}"
        - "--password={{ params.db_password }}"
        - "{{ params.note }}"
        - "--labels={% for k, v in params.labels | dictsort %}{{ k }}={{ v }}{{ '' if loop.last else ',' }}{% endfor %}"
      env: { PGPASSWORD: "{{ params.db_password }}" }
      workdir: "/srv/{{ params.labels.app }}"
"#;

fn typed_exec(runbook: &Runbook) -> &ExecAction {
    match &runbook.steps[0].action {
        Action::Exec(exec) => exec,
        other => panic!("not an exec step: {other:?}"),
    }
}

fn context(params: BTreeMap<String, Value>) -> Value {
    json!({ "params": params, "steps": {}, "run": { "id": "r", "runbook": "typed", "trigger": "api" } })
}

#[test]
fn float_map_and_secret_params_render_into_argv_env_and_workdir() {
    let runbook = Runbook::parse("typed.yaml", TYPED).unwrap();
    let exec = typed_exec(&runbook);
    assert_eq!(exec.secret_params, ["db_password"]);
    let given = BTreeMap::from([
        ("labels".to_string(), json!("app=api, tier=back")),
        ("db_password".to_string(), json!("file:/run/secrets/db")),
    ]);
    let params = runbook.resolve_params(&given).unwrap();
    // Only the reference is stored in the run.
    assert_eq!(params["db_password"], json!("file:/run/secrets/db"));
    let rendered = render_exec(exec, &context(params)).unwrap();
    let marker = format!("{SECRET_MARKER_START}baton-secret:file:/run/secrets/db{SECRET_MARKER_END}");
    assert_eq!(
        rendered.argv,
        [
            "deploy".to_string(),
            "--ratio=0.75".to_string(),
            "--app=api".to_string(),
            "app=api;tier=back;".to_string(),
            format!("--password={marker}"),
            String::new(),
            "--labels=app=api,tier=back".to_string(),
        ]
    );
    assert_eq!(rendered.env["PGPASSWORD"], marker);
    assert_eq!(rendered.workdir.as_deref(), Some("/srv/api"));
    assert_eq!(secret_marker(&SecretRef::File("/run/secrets/db".into())), marker);
    assert_eq!(
        secret_segments(&rendered.argv[4]).unwrap(),
        [Segment::Text("--password="), Segment::Secret(SecretRef::File("/run/secrets/db".into()))]
    );
}

#[test]
fn other_values_cannot_forge_a_secret_marker() {
    let runbook = Runbook::parse("typed.yaml", TYPED).unwrap();
    let forged = format!("{SECRET_MARKER_START}baton-secret:file:/etc/shadow{SECRET_MARKER_END}");
    let params = runbook.resolve_params(&BTreeMap::from([("note".to_string(), json!(forged))])).unwrap();
    let rendered = render_exec(typed_exec(&runbook), &context(params)).unwrap();
    // The forged marker lost its first character; only the real one is left.
    assert_eq!(rendered.argv[5], "\u{fffd}baton-secret:file:/etc/shadow\u{2}");
    let secrets: Vec<SecretRef> = rendered
        .argv
        .iter()
        .flat_map(|arg| secret_segments(arg).unwrap())
        .filter_map(|segment| match segment {
            Segment::Secret(reference) => Some(reference),
            Segment::Text(_) => None,
        })
        .collect();
    assert_eq!(secrets, [SecretRef::Env("DB_PASSWORD".into())]);
}

#[test]
fn a_secret_changed_by_a_filter_is_a_render_error() {
    let text = TYPED.replace("\"--password={{ params.db_password }}\"", "\"{{ params.db_password | upper }}\"");
    let runbook = Runbook::parse("typed.yaml", &text).unwrap();
    let params = runbook.resolve_params(&BTreeMap::new()).unwrap();
    let err = render_exec(typed_exec(&runbook), &context(params)).unwrap_err();
    assert_eq!(err.field, "command[4]");
    assert!(
        err.message.starts_with(
            "a secret marker at byte 0 is damaged: use a secret parameter whole, as {{ params.NAME }}, without \
             filters, slices or escaping"
        ),
        "{err}"
    );
    let sliced = format!("x{}", &secret_marker(&SecretRef::Env("A".into()))[..8]);
    assert_eq!(secret_segments(&sliced), Err(DamagedSecretMarker { offset: 1 }));
}

#[test]
fn secret_references_parse_and_print_back() {
    for text in ["env:A", "env:_db_1", "file:/x", "file:/run/secrets/db password"] {
        let reference = SecretRef::parse(text).unwrap();
        assert_eq!(reference.to_string(), text);
        assert_eq!(text.parse::<SecretRef>(), Ok(reference));
    }
    assert_eq!(SecretRef::parse("vault:x").unwrap_err(), "a secret reference starts with `env:` or `file:`");
}
