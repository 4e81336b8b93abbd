//! Invalid documents: every diagnostic names file, line, column and field, and says what was
//! expected and what was found.

use baton_core::{Runbook, RunbookError, Schedule, parse_document};

/// (line, column, field, message) of every diagnostic.
fn diagnostics(err: RunbookError) -> Vec<(usize, usize, String, String)> {
    for d in &err.diagnostics {
        assert_eq!(d.file, "bad.yaml");
    }
    err.diagnostics.into_iter().map(|d| (d.line, d.column, d.field, d.message)).collect()
}

fn runbook_errors(text: &str) -> Vec<(usize, usize, String, String)> {
    match Runbook::parse("bad.yaml", text) {
        Ok(runbook) => panic!("expected an error, parsed {runbook:?}"),
        Err(err) => diagnostics(err),
    }
}

fn schedule_errors(text: &str) -> Vec<(usize, usize, String, String)> {
    match Schedule::parse("bad.yaml", text) {
        Ok(schedule) => panic!("expected an error, parsed {schedule:?}"),
        Err(err) => diagnostics(err),
    }
}

/// Asserts exactly one diagnostic at `line:column` on `field` whose message contains `needle`.
#[track_caller]
fn assert_one(found: Vec<(usize, usize, String, String)>, line: usize, column: usize, field: &str, needle: &str) {
    assert_eq!(found.len(), 1, "{found:#?}");
    let (l, c, f, m) = &found[0];
    assert_eq!((*l, *c, f.as_str()), (line, column, field), "{m}");
    assert!(m.contains(needle), "message {m:?} lacks {needle:?}");
}

/// A valid step, to pad documents whose error is elsewhere.
const STEP: &str = "  - id: a\n    action: exec\n    with: { command: [echo] }\n";

#[test]
fn unknown_key_points_at_the_key_and_lists_allowed_keys() {
    let text = "name: x\nsteps:\n  - id: a\n    action: exec\n    bogus: 1\n    with: { command: [echo] }\n";
    assert_one(
        runbook_errors(text),
        5,
        5,
        "steps[0].bogus",
        "unknown key `bogus`, expected one of id, action, approval, sleep, parallel, foreach, batch, max_failures, \
         bake, timeout, idempotent, when, retry, on_error, with",
    );
}

#[test]
fn wrong_type_says_expected_and_found() {
    let text = "name: x\nsteps:\n  - id: a\n    action: exec\n    idempotent: maybe\n    with: { command: [echo] }\n";
    assert_one(runbook_errors(text), 5, 17, "steps[0].idempotent", "expected true or false, found maybe");
    // YAML 1.1 booleans are not booleans here: `yes` is refused rather than guessed.
    let text = text.replace("maybe", "yes");
    assert_one(runbook_errors(&text), 5, 17, "steps[0].idempotent", "found yes");
    let text = "name: x\nsteps:\n  id: a\n";
    assert_one(runbook_errors(text), 3, 3, "steps", "expected a list, found a mapping");
}

#[test]
fn empty_argv_and_shell_string_are_refused() {
    let text = "name: x\nsteps:\n  - id: a\n    action: exec\n    with:\n      command: []\n";
    let found = runbook_errors(text);
    assert_eq!(
        found,
        [(
            6,
            16,
            "steps[0].with.command".to_string(),
            "expected a non-empty list of strings (argv), found []".to_string()
        )]
    );
    let text = "name: x\nsteps:\n  - id: a\n    action: exec\n    with:\n      command: df -h\n";
    assert_one(
        runbook_errors(text),
        6,
        16,
        "steps[0].with.command",
        "expected a list of strings (argv), found the string \"df -h\"",
    );
}

#[test]
fn display_is_one_line_per_diagnostic() {
    let text = "name: Bad_Name\nsteps: []\n";
    let err = Runbook::parse("runbooks/x.yaml", text).unwrap_err();
    assert_eq!(
        err.to_string(),
        "runbooks/x.yaml:1:7: name: expected a runbook name matching ^[a-z0-9][a-z0-9-]{0,62}$, \
         found \"Bad_Name\"\n\
         runbooks/x.yaml:2:8: steps: expected at least one step, found []"
    );
}

#[test]
fn duplicate_step_id_points_at_the_second_id() {
    let text = format!("name: x\nsteps:\n{STEP}{STEP}");
    assert_one(runbook_errors(&text), 6, 9, "steps[1].id", "duplicate step id \"a\": steps[0] already uses it");
}

#[test]
fn bad_pattern_points_at_the_pattern() {
    let text = format!("name: x\nparams:\n  p: {{ type: string, pattern: \"([a-z\" }}\nsteps:\n{STEP}");
    assert_one(
        runbook_errors(&text),
        3,
        31,
        "params.p.pattern",
        "expected a valid regular expression, found \"([a-z\"",
    );
}

#[test]
fn undeclared_param_in_template_points_inside_the_string() {
    let text = "name: x\nparams:\n  path: { type: string }\nsteps:\n  - id: a\n    action: exec\n    with:\n      command: [ls, \"--dir={{ params.pth }}\"]\n";
    assert_one(
        runbook_errors(text),
        8,
        31,
        "steps[0].with.command[1]",
        "the template reads params.pth, which is not declared; declared params: path",
    );
}

#[test]
fn templates_may_only_read_earlier_steps_known_fields_and_the_run() {
    let text = "\
name: x
steps:
  - id: first
    action: exec
    with:
      command: [echo, \"{{ steps.second.outputs.x }}\"]
      env: { SELF: \"{{ steps.first.status }}\" }
  - id: second
    action: exec
    with:
      command: [echo, \"{{ steps.first.output.x }}\", \"{{ run.idd }}\", \"{{ secret }}\"]
      workdir: \"{{ params.dir\"
";
    let found = runbook_errors(text);
    let summary: Vec<(usize, usize, &str, &str)> =
        found.iter().map(|(l, c, f, m)| (*l, *c, f.as_str(), m.as_str())).collect();
    assert_eq!(
        summary,
        [
            (
                6,
                27,
                "steps[0].with.command[1]",
                "the template reads steps.second; templates can only read earlier steps: none"
            ),
            (7, 24, "steps[0].with.env.SELF", "the template reads steps.first; a step cannot read its own outputs"),
            (11, 27, "steps[1].with.command[1]", "the template reads steps.first.output; a step has: outputs, status"),
            (
                11,
                57,
                "steps[1].with.command[2]",
                "the template reads run.idd; the run has: id, runbook, version, trigger, principal, started_at, failed_step, \
             error"
            ),
            (
                11,
                74,
                "steps[1].with.command[3]",
                "the template reads `secret`, which is not defined; templates can read params.<name>, steps.<earlier step id>.outputs.<name> and run.<field>"
            ),
            (
                12,
                16,
                "steps[1].with.workdir",
                "invalid template: syntax error: unexpected end of input, expected end of variable block"
            ),
        ]
    );
}

#[test]
fn bad_duration_points_at_the_value() {
    let text = "name: x\nsteps:\n  - id: a\n    action: exec\n    timeout: 10\n    with: { command: [echo] }\n";
    assert_one(runbook_errors(text), 5, 14, "steps[0].timeout", "found \"10\" (missing unit: ms, s, m, h or d)");
    let text = text.replace("timeout: 10", "timeout: 0s");
    assert_one(runbook_errors(&text), 5, 14, "steps[0].timeout", "expected a duration greater than zero");
}

#[test]
fn unknown_action_lists_known_ones() {
    let text = "name: x\nsteps:\n  - id: a\n    action: redis.ping\n    with: { command: [echo] }\n";
    assert_one(runbook_errors(text), 4, 13, "steps[0].action", "unknown value `redis.ping`, expected one of exec");
}

#[test]
fn missing_key_syntax_error_and_empty_document() {
    assert_one(runbook_errors("name: x\n"), 1, 1, "steps", "missing required key `steps`");
    let text = "name: x\nsteps:\n  - id: a\n    with: { command: [echo] }\n";
    assert_one(
        runbook_errors(text),
        3,
        5,
        "steps[0].action",
        "missing required key `action` (or `approval`, or `sleep`)",
    );
    let text = "name: x\nsteps:\n  - id: a\n    action: exec\n";
    assert_one(runbook_errors(text), 3, 5, "steps[0].with", "missing required key `with`");
    assert_one(runbook_errors("name: x\nsteps: [\n"), 2, 8, "steps", "invalid YAML: unclosed bracket");
    assert_one(runbook_errors("# nothing\n"), 1, 1, "", "the document is empty");
}

#[test]
fn approval_sleep_and_run_timeout_are_checked() {
    let step = |body: &str| format!("name: x\nsteps:\n  - id: a\n{body}");
    // One thing per step.
    let text = step("    sleep: 5s\n    action: exec\n    with: { command: [echo] }\n");
    assert_one(runbook_errors(&text), 4, 5, "steps[0].sleep", "it has `action`, so it cannot also have `sleep`");
    let text = step("    sleep: 5s\n    with: { command: [echo] }\n");
    assert_one(runbook_errors(&text), 5, 5, "steps[0].with", "approval and sleep steps take none");
    let text = step("    sleep: 5s\n    retry: { attempts: 2 }\n");
    assert_one(runbook_errors(&text), 5, 5, "steps[0].retry", "a sleep step cannot take it");
    let text = step("    sleep: soon\n");
    assert_one(runbook_errors(&text), 4, 12, "steps[0].sleep", "found \"soon\"");
    let text = step("    sleep: 0s\n");
    assert_one(runbook_errors(&text), 4, 12, "steps[0].sleep", "expected a duration greater than zero");
    // Approvals: someone must be able to approve, and enough of them.
    let text = step("    approval: { approvers: [] }\n");
    assert_one(runbook_errors(&text), 4, 28, "steps[0].approval.approvers", "expected at least one approver");
    let text = step("    approval: { approvers: [alice, \"bob smith\"] }\n");
    assert_one(runbook_errors(&text), 4, 36, "steps[0].approval.approvers[1]", "expected an approver matching");
    let text = step("    approval: { approvers: [alice, bob], min_approvals: 3 }\n");
    assert_one(runbook_errors(&text), 4, 57, "steps[0].approval.min_approvals", "3 approvals can never be reached");
    let ok = step("    approval: { approvers: [alice, \"group:sre\"], min_approvals: 3 }\n");
    assert!(Runbook::parse("ok.yaml", &ok).is_ok(), "a group may hold enough approvers");
    let text = step("    approval: { approvers: [alice], timeout: 0s }\n");
    assert_one(runbook_errors(&text), 4, 46, "steps[0].approval.timeout", "greater than zero");
    let text = step("    approval: { approvers: [alice], message: \"{{ params.nope }}\" }\n");
    assert_one(runbook_errors(&text), 4, 50, "steps[0].approval.message", "params.nope, which is not declared");
    let text = step("    approval: { approvers: [alice], who: me }\n");
    assert_one(runbook_errors(&text), 4, 37, "steps[0].approval.who", "unknown key `who`");
    // The run's own timeout.
    let text = format!("name: x\ntimeout: 1x\nsteps:\n{STEP}");
    assert_one(runbook_errors(&text), 2, 10, "timeout", "found \"1x\"");
}

#[test]
fn param_declarations_are_checked() {
    let text = format!(
        "\
name: x
params:
  a: {{ type: string, required: true, default: x }}
  b: {{ type: int, default: 0, min: 1 }}
  c: {{ type: string, min: 1 }}
  d: {{ type: enum }}
  e: {{ type: int, min: 5, max: 1 }}
  f: {{ type: bool, default: perhaps }}
  g-h: {{ type: string }}
  i: {{ type: decimal }}
steps:
{STEP}"
    );
    // serde stops at the unknown type first.
    assert_one(runbook_errors(&text), 10, 14, "params.i.type", "unknown value `decimal`");
    let text = text.replace("  i: { type: decimal }\n", "");
    let found = runbook_errors(&text);
    let summary: Vec<(usize, usize, &str)> = found.iter().map(|(l, c, f, _)| (*l, *c, f.as_str())).collect();
    assert_eq!(
        summary,
        [
            (3, 38, "params.a.default"),
            (4, 28, "params.b.default"),
            (5, 22, "params.c.min"),
            (6, 14, "params.d.type"),
            (7, 32, "params.e.max"),
            (8, 29, "params.f.default"),
            (9, 3, "params.g-h"),
        ],
        "{found:#?}"
    );
    assert!(found[0].3.contains("a required parameter cannot have a default"));
    assert!(found[1].3.contains("the default does not satisfy the parameter: parameter `b`: 0 is out of range"));
    assert!(found[2].3.contains("`min` applies to int and float parameters only"));
    assert!(found[3].3.contains("needs `values: [...]`"));
    assert!(found[4].3.contains("expected max >= min (5), found 1"));
    assert!(found[5].3.contains("expected a boolean"));
    assert!(found[6].3.contains("expected a parameter name"));
}

#[test]
fn bad_cron_and_timezone_point_at_their_values() {
    let text = "schedule: s\nrunbook: r\ncron: \"0 61 * * *\"\n";
    assert_one(schedule_errors(text), 3, 7, "cron", "invalid cron expression \"0 61 * * *\": Hours must be less than");
    let text = "schedule: s\nrunbook: r\ncron: \"0 3 * *\"\n";
    assert_one(schedule_errors(text), 3, 7, "cron", "expected a cron expression with 5 fields");
    let text = "schedule: s\nrunbook: r\ncron: \"0 3 * * 8\"\n";
    assert_one(schedule_errors(text), 3, 7, "cron", "day of week \"8\": 8 is not a day");
    let text = "schedule: s\nrunbook: r\ncron: \"0 3 * * *\"\ntimezone: Europe/Berln\n";
    assert_one(
        schedule_errors(text),
        4,
        11,
        "timezone",
        "expected an IANA time zone name such as UTC or Europe/Berlin, found \"Europe/Berln\"",
    );
    let text = "schedule: s\nrunbook: r\ncron: \"0 3 * * *\"\nrunbok: x\n";
    assert_one(schedule_errors(text), 4, 1, "runbok", "unknown key `runbok`");
}

#[test]
fn documents_are_told_apart_by_the_schedule_key() {
    let err = parse_document("bad.yaml", "schedule: s\ncron: \"@daily\"\n").unwrap_err();
    assert_one(diagnostics(err), 1, 1, "runbook", "missing required key `runbook`");
    let err = parse_document("bad.yaml", "name: x\ncron: \"@daily\"\n").unwrap_err();
    assert_one(diagnostics(err), 2, 1, "cron", "unknown key `cron`");
}

#[test]
fn shell_templates_are_linted_not_refused() {
    let text = "name: x\nsteps:\n  - id: a\n    action: exec\n    with:\n      command: [sh, -c, \"rm {{ params.p }}\"]\nparams:\n  p: { type: string }\n";
    let runbook = Runbook::parse("bad.yaml", text).unwrap();
    let lint = runbook.lint("bad.yaml");
    assert_eq!(lint.len(), 1, "{lint:?}");
    assert_eq!((lint[0].line, lint[0].column, lint[0].field.as_str()), (6, 25, "steps[0].with.command[2]"));
    assert!(lint[0].message.contains("pass it through `env`"));
}

#[test]
fn locks_budgets_and_handlers_are_checked() {
    let text = format!("name: x\nlocks: [\"\"]\nsteps:\n{STEP}");
    assert_one(runbook_errors(&text), 2, 9, "locks[0]", "expected a lock name");
    let text = format!("name: x\nlocks: [\"db/{{{{ steps.a.outputs.x }}}}\"]\nsteps:\n{STEP}");
    assert_one(runbook_errors(&text), 2, 16, "locks[0]", "the template reads steps.a");
    let text = format!("name: x\nbudget: {{ max_runs: 0, per: 1h }}\nsteps:\n{STEP}");
    assert_one(runbook_errors(&text), 2, 21, "budget.max_runs", "a budget of zero never runs");
    let text = format!("name: x\nbudget: {{ max_runs: 1, per: soon }}\nsteps:\n{STEP}");
    assert_one(runbook_errors(&text), 2, 29, "budget.per", "found \"soon\"");
    let text = format!("name: x\nsteps:\n{STEP}on_failure:\n  - id: a\n    sleep: 1s\n");
    assert_one(runbook_errors(&text), 7, 9, "on_failure[0].id", "duplicate step id \"a\": steps[0] already uses it");
    // on_cancel steps may read main steps, not on_failure ones.
    let text = format!(
        "name: x\nsteps:\n{STEP}on_failure:\n  - id: f\n    sleep: 1s\non_cancel:\n  - id: c\n    action: exec\n    \
         with: {{ command: [\"echo\", \"{{{{ steps.a.status }}}} {{{{ steps.f.status }}}}\"] }}\n"
    );
    let found = runbook_errors(&text);
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].2, "on_cancel[0].with.command[1]");
    assert!(found[0].3.contains("the template reads steps.f"), "{found:#?}");
}

#[test]
fn parallel_and_foreach_are_checked() {
    let step = |body: &str| format!("name: x\nsteps:\n  - id: a\n{body}");
    let text = step("    action: exec\n    batch: 2\n    with: { command: [echo] }\n");
    assert_one(runbook_errors(&text), 5, 5, "steps[0].batch", "`batch` goes with `foreach`");
    let text = step("    sleep: 1s\n    foreach: params.hosts\n");
    let found = runbook_errors(&text);
    assert!(found.iter().any(|f| f.2 == "steps[0].foreach" && f.3.contains("applies to `action` steps")), "{found:#?}");
    let text = step("    action: exec\n    foreach: params.nope\n    with: { command: [echo, \"{{ target }}\"] }\n");
    assert_one(runbook_errors(&text), 5, 14, "steps[0].foreach", "params.nope, which is not declared");
    let text =
        step("    action: exec\n    foreach: \"{{ [1, 2] }}\"\n    batch: \"150%\"\n    with: { command: [echo] }\n");
    assert_one(runbook_errors(&text), 6, 12, "steps[0].batch", "expected a count or a percentage");
    let text = step("    action: exec\n    foreach: \"{{ [1, 2] }}\"\n    batch: 0\n    with: { command: [echo] }\n");
    assert_one(runbook_errors(&text), 6, 12, "steps[0].batch", "expected at least 1, found 0");
    // `target` exists only inside a foreach.
    let text = step("    action: exec\n    with: { command: [echo, \"{{ target }}\"] }\n");
    assert_one(runbook_errors(&text), 5, 33, "steps[0].with.command[1]", "which only the steps of a `foreach` have");
    // Parallel groups: two steps or more, nothing else on the group, no nesting, no reading
    // a sibling.
    let text = step("    parallel:\n      - id: b\n        sleep: 1s\n");
    assert_one(runbook_errors(&text), 5, 7, "steps[0].parallel", "expected at least two steps");
    let text = step(
        "    when: \"true\"\n    parallel:\n      - id: b\n        sleep: 1s\n      - id: c\n        action: exec\n        \
         with: { command: [echo, \"{{ steps.b.status }}\"] }\n",
    );
    let found = runbook_errors(&text);
    assert_eq!(found.len(), 2, "{found:#?}");
    assert_eq!(found[0].2, "steps[0].when");
    assert!(found[0].3.contains("a parallel group has only `id` and `parallel`"), "{found:#?}");
    assert_eq!(found[1].2, "steps[0].parallel[1].with.command[1]");
    assert!(found[1].3.contains("the template reads steps.b"), "{found:#?}");
    let ok = "name: x\nsteps:\n  - id: g\n    parallel:\n      - { id: b, sleep: 1s }\n      - { id: c, sleep: 1s }\n  \
              - id: d\n    action: exec\n    with: { command: [echo, \"{{ steps.b.status }} {{ steps.c.status }}\"] }\n";
    let rb = Runbook::parse("ok.yaml", ok).unwrap();
    assert_eq!(
        rb.steps.iter().map(|s| (s.id.as_str(), s.group.as_deref())).collect::<Vec<_>>(),
        [("b", Some("g")), ("c", Some("g")), ("d", None)]
    );
}

#[test]
fn guards_are_checked() {
    let text = format!("name: x\nsteps:\n{STEP}guards:\n  - http: {{ url: \"ftp://x\" }}\n");
    assert_one(runbook_errors(&text), 7, 18, "guards[0].http.url", "expected an http:// or https:// URL");
    let text = format!("name: x\nsteps:\n{STEP}guards:\n  - name: nothing\n");
    assert_one(runbook_errors(&text), 7, 5, "guards[0].prometheus", "what the guard checks");
    let text = format!("name: x\nsteps:\n{STEP}guards:\n  - prometheus: {{ url: \"http://p:9090\", query: \" \" }}\n");
    assert_one(runbook_errors(&text), 7, 48, "guards[0].prometheus.query", "expected a PromQL query");
    let text = format!("name: x\nsteps:\n{STEP}guards:\n  - http: {{ url: \"http://h/\", status: 999 }}\n");
    assert_one(runbook_errors(&text), 7, 39, "guards[0].http.status", "expected an HTTP status");
    let text = format!("name: x\nsteps:\n{STEP}guards:\n  - http: {{ url: \"{{{{ params.nope }}}}\" }}\n");
    assert_one(runbook_errors(&text), 7, 22, "guards[0].http.url", "params.nope, which is not declared");
}
