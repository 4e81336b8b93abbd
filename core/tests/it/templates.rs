//! Rendering exec actions: one template per argv element, strict about undefined values.

use std::collections::BTreeMap;

use baton_core::Runbook;
use baton_core::runbook::{Action, ExecAction};
use baton_core::template::{TemplateError, render_exec};
use serde_json::{Value, json};

fn exec(command: &[&str]) -> ExecAction {
    ExecAction {
        command: command.iter().map(|s| s.to_string()).collect(),
        env: BTreeMap::new(),
        workdir: None,
        secret_params: Vec::new(),
    }
}

fn ctx(params: Value) -> Value {
    json!({
        "params": params,
        "steps": { "greet": { "outputs": { "greeting": "Hello, Ada!" }, "status": "succeeded" } },
        "run": { "id": "run-42", "runbook": "demo", "trigger": "api" },
    })
}

#[test]
fn each_element_renders_to_exactly_one_argument() {
    let action = exec(&["rm", "--", "{{ params.path }}", "{{ params.hosts | join(',') }}"]);
    let hostile = "/tmp/a b; rm -rf / \"$(reboot)\"\n";
    let out = render_exec(&action, &ctx(json!({ "path": hostile, "hosts": ["a", "b"] }))).unwrap();
    assert_eq!(out.argv, ["rm", "--", hostile, "a,b"]);
}

#[test]
fn conditionals_outputs_and_run_fields() {
    let action = ExecAction {
        command: vec![
            "find".into(),
            "{{ '-print' if params.dry_run else '-delete' }}".into(),
            "{{ steps.greet.outputs.greeting }} ({{ run.id }}, {{ steps['greet'].status }})".into(),
        ],
        env: BTreeMap::from([("DAYS".to_string(), "{{ params.days }}".to_string())]),
        workdir: Some("/srv/{{ run.runbook }}".into()),
        secret_params: Vec::new(),
    };
    let out = render_exec(&action, &ctx(json!({ "dry_run": true, "days": 7 }))).unwrap();
    assert_eq!(out.argv, ["find", "-print", "Hello, Ada! (run-42, succeeded)"]);
    assert_eq!(out.env["DAYS"], "7");
    assert_eq!(out.workdir.as_deref(), Some("/srv/demo"));
    let out = render_exec(&action, &ctx(json!({ "dry_run": false, "days": 7 }))).unwrap();
    assert_eq!(out.argv[1], "-delete");
}

#[test]
fn undefined_values_are_errors_not_empty_strings() {
    let action = exec(&["echo", "{{ params.missing }}"]);
    let err: TemplateError = render_exec(&action, &ctx(json!({}))).unwrap_err();
    assert_eq!(err.field, "command[1]");
    assert!(err.message.contains("undefined value"), "{err}");
    assert!(err.message.contains("{{ params.missing }}"), "{err}");
    assert!(err.to_string().starts_with("command[1]: "), "{err}");

    let mut action = exec(&["true"]);
    action.env.insert("OUT".into(), "{{ steps.greet.outputs.nope }}".into());
    let err = render_exec(&action, &ctx(json!({}))).unwrap_err();
    assert_eq!(err.field, "env.OUT");

    let mut action = exec(&["true"]);
    action.workdir = Some("{{ run.nope }}".into());
    let err = render_exec(&action, &ctx(json!({}))).unwrap_err();
    assert_eq!(err.field, "workdir");
}

#[test]
fn optional_params_can_be_tested_with_is_defined() {
    let text = "\
name: opt
params:
  label: { type: string }
steps:
  - id: a
    action: exec
    with:
      command: [echo, \"{{ params.label if params.label is defined else 'none' }}\"]
";
    let runbook = Runbook::parse("opt.yaml", text).unwrap();
    let Action::Exec(action) = &runbook.steps[0].action else { panic!("an exec step") };
    let params = runbook.resolve_params(&BTreeMap::new()).unwrap();
    let out = render_exec(action, &ctx(json!(params))).unwrap();
    assert_eq!(out.argv, ["echo", "none"]);
    let params = runbook.resolve_params(&BTreeMap::from([("label".to_string(), json!("x"))])).unwrap();
    let out = render_exec(action, &ctx(json!(params))).unwrap();
    assert_eq!(out.argv, ["echo", "x"]);
}
