//! The published JSON Schema covers both document kinds, with docs from the file structs.

use serde_json::Value;

#[test]
fn schema_accepts_either_a_runbook_or_a_schedule() {
    let schema = baton_core::runbook::json_schema();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
    let choices = schema["anyOf"].as_array().or(schema["oneOf"].as_array()).expect("a choice of kinds");
    let defs = &schema["$defs"];
    let resolve = |choice: &Value| -> Value {
        match choice["$ref"].as_str() {
            Some(reference) => defs[reference.trim_start_matches("#/$defs/")].clone(),
            None => choice.clone(),
        }
    };
    let kinds: Vec<Value> = choices.iter().map(resolve).collect();
    let titles: Vec<&str> = kinds.iter().filter_map(|k| k["title"].as_str()).collect();
    assert_eq!(titles, ["Runbook", "Schedule"]);
    assert!(defs.get("Runbook").is_some() && defs.get("Schedule").is_some(), "{defs}");

    let runbook = &kinds[0];
    assert_eq!(runbook["additionalProperties"], false);
    let required: Vec<&str> = runbook["required"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    assert_eq!(required, ["name", "steps"]);
    assert!(runbook["properties"]["name"]["description"].as_str().unwrap().contains("Unique name"));
    assert_eq!(runbook["properties"]["name"]["pattern"], "^[a-z0-9][a-z0-9-]{0,62}$");

    let schedule = &kinds[1];
    assert_eq!(schedule["additionalProperties"], false);
    assert!(schedule["properties"]["cron"]["description"].as_str().unwrap().contains("5 fields"));

    // The exec inputs are described too, with argv as a non-empty list of strings.
    let text = schema.to_string();
    assert!(text.contains("\"minItems\":1"), "{text}");
    assert!(text.contains("Not a shell string"), "{text}");
    assert!(text.contains("\"exec\""), "{text}");
}
