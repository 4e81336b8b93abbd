//! Every document shipped in `runbooks/` parses, validates and lints clean.

use std::collections::BTreeMap;
use std::path::Path;

use baton_core::runbook::Action;
use baton_core::{Document, parse_document};
use serde_json::json;

fn library() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runbooks");
    let mut files: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
        .map(|path| {
            let name = format!("runbooks/{}", path.file_name().unwrap().to_string_lossy());
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect();
    files.sort();
    files
}

fn load(name: &str) -> Document {
    let (file, text) = library()
        .into_iter()
        .find(|(file, _)| file.ends_with(name))
        .unwrap_or_else(|| panic!("{name} is missing from runbooks/"));
    parse_document(&file, &text).unwrap_or_else(|err| panic!("{err}"))
}

#[test]
fn every_document_in_the_library_is_valid_and_lint_free() {
    let files = library();
    assert!(files.len() >= 5, "expected the shipped library, found {files:?}");
    let mut runbooks = BTreeMap::new();
    let mut schedules = Vec::new();
    for (file, text) in &files {
        // Documents go into Raft snapshots: they must survive serialization unchanged.
        if let Ok(document) = parse_document(file, text) {
            let json = serde_json::to_string(&document).unwrap();
            let back: Document = serde_json::from_str(&json).unwrap();
            assert_eq!(back, document, "{file}");
        }
        match parse_document(file, text) {
            Ok(Document::Runbook(runbook)) => {
                assert_eq!(format!("runbooks/{}.yaml", runbook.name), *file, "a runbook's file is named after it");
                assert_eq!(runbook.lint(file), [], "{file}");
                runbooks.insert(runbook.name.clone(), runbook);
            }
            Ok(Document::Schedule(schedule)) => schedules.push(schedule),
            Err(err) => panic!("{file} is invalid:\n{err}"),
        }
    }
    // Schedules name a shipped runbook and their params satisfy it.
    for schedule in schedules {
        let runbook = runbooks
            .get(&schedule.runbook)
            .unwrap_or_else(|| panic!("schedule {} names a missing runbook", schedule.name));
        runbook.resolve_params(&schedule.params).unwrap_or_else(|err| panic!("schedule {}: {err}", schedule.name));
        assert!(schedule.next_after(0).is_some());
    }
}

#[test]
fn hello_world_passes_the_greeting_through_env_and_outputs() {
    let Document::Runbook(runbook) = load("hello-world.yaml") else {
        panic!("hello-world is a runbook");
    };
    assert!(runbook.resolve_params(&BTreeMap::new()).is_err(), "name is required");
    let params = runbook.resolve_params(&BTreeMap::from([("name".to_string(), json!("Ada"))])).unwrap();
    let Action::Exec(greet) = &runbook.step("greet").unwrap().action else { panic!("an exec step") };
    let ctx =
        json!({ "params": params, "steps": {}, "run": { "id": "r1", "runbook": "hello-world", "trigger": "api" } });
    let rendered = baton_core::template::render_exec(greet, &ctx).unwrap();
    assert_eq!(rendered.argv[0], "sh");
    assert!(!rendered.argv[2].contains("Ada"), "the value stays out of the script");
    assert_eq!(rendered.env["NAME"], "Ada");
    let Action::Exec(announce) = &runbook.step("announce").unwrap().action else { panic!("an exec step") };
    let ctx = json!({
        "params": params,
        "steps": { "greet": { "outputs": { "greeting": "Hello, Ada!" }, "status": "succeeded" } },
        "run": { "id": "r1", "runbook": "hello-world", "trigger": "api" },
    });
    let rendered = baton_core::template::render_exec(announce, &ctx).unwrap();
    assert_eq!(rendered.argv, ["echo", "Hello, Ada! (run r1)"]);
}

#[test]
fn disk_cleanup_is_a_dry_run_unless_told_otherwise_and_refuses_root() {
    let Document::Runbook(runbook) = load("disk-cleanup.yaml") else {
        panic!("disk-cleanup is a runbook");
    };
    let Action::Exec(clean) = &runbook.step("clean").unwrap().action else { panic!("an exec step") };
    let render = |given: serde_json::Value| {
        let given: BTreeMap<String, serde_json::Value> = serde_json::from_value(given).unwrap();
        let params = runbook.resolve_params(&given)?;
        let ctx = json!({ "params": params, "steps": {}, "run": {} });
        Ok::<_, baton_core::runbook::ParamError>(baton_core::template::render_exec(clean, &ctx).unwrap().argv)
    };
    let dry = render(json!({ "path": "/var/log/app" })).unwrap();
    assert_eq!(dry.last().map(String::as_str), Some("-true"));
    assert!(dry.contains(&"+7".to_string()));
    let real = render(json!({ "path": "/var/log/app", "dry_run": "false", "older_than_days": "30" })).unwrap();
    assert_eq!(real.last().map(String::as_str), Some("-delete"));
    assert!(real.contains(&"+30".to_string()));
    for dangerous in ["/", "/etc", "/var/log/../../etc", "var/log", "/home/x; rm -rf /"] {
        assert!(render(json!({ "path": dangerous })).is_err(), "{dangerous} must be refused");
    }
}
