//! `baton schedule preview`: fire times computed by the CLI itself, with the scheduler's code
//! and the schedule parser's validation, and no server.

use std::process::Command;

use baton_core::Schedule;
use baton_tests::{CliOutput, baton_bin};

/// Runs `baton schedule preview ARGS...` pointed at an address nothing listens on: the command
/// must not need a server.
fn preview(args: &[&str]) -> CliOutput {
    let out = Command::new(baton_bin())
        .args(["schedule", "preview"])
        .args(args)
        .env("BATON_ADDR", "http://127.0.0.1:1")
        .output()
        .unwrap();
    CliOutput::from(out)
}

/// The messages the schedule document parser gives for this cron expression and time zone.
fn parser_messages(cron: &str, timezone: &str) -> Vec<String> {
    let text = format!("schedule: s\nrunbook: r\ncron: \"{cron}\"\ntimezone: \"{timezone}\"\n");
    let err = Schedule::parse("s.yaml", &text).expect_err("the document is invalid");
    err.diagnostics.into_iter().map(|d| d.message).collect()
}

#[test]
fn prints_the_fire_times_across_a_spring_forward_night() {
    let out = preview(&["30 2 * * *", "--timezone", "Europe/Berlin", "--from", "2026-03-28T00:00:00Z", "--count", "3"]);
    assert!(out.ok(), "{out}");
    // 02:30 does not exist on 2026-03-29: it fires once, at the jump to 03:00 CEST.
    assert_eq!(
        out.stdout, "2026-03-28T02:30:00+01:00\n2026-03-29T03:00:00+02:00\n2026-03-30T02:30:00+02:00\n",
        "{out}"
    );
    assert_eq!(out.stderr, "", "{out}");
}

#[test]
fn json_output_is_an_array_of_strings() {
    let out = preview(&[
        "*/15 * * * *",
        "--timezone",
        "America/New_York",
        "--from",
        "2026-11-01T01:40:00-04:00",
        "--count",
        "3",
        "-o",
        "json",
    ]);
    assert!(out.ok(), "{out}");
    let times: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|err| panic!("{err}: {out}"));
    // 01:00 to 01:59 repeat on 2026-11-01; they fired in the first pass (-04:00).
    assert_eq!(
        times,
        serde_json::json!(["2026-11-01T01:45:00-04:00", "2026-11-01T02:00:00-05:00", "2026-11-01T02:15:00-05:00"])
    );
}

#[test]
fn the_default_zone_is_utc() {
    let out = preview(&["@daily", "--from", "2026-03-28T00:00:00+01:00", "--count", "2"]);
    assert!(out.ok(), "{out}");
    assert_eq!(out.stdout, "2026-03-28T00:00:00+00:00\n2026-03-29T00:00:00+00:00\n", "{out}");
}

#[test]
fn a_bad_expression_fails_with_the_parser_message() {
    let out = preview(&["0 61 * * *", "--timezone", "Europe/Berlin", "--from", "2026-03-28T00:00:00Z"]);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(out.stdout, "", "{out}");
    let messages = parser_messages("0 61 * * *", "Europe/Berlin");
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].starts_with("invalid cron expression \"0 61 * * *\": "), "{messages:?}");
    assert_eq!(out.stderr, format!("error: {}\n", messages[0]), "{out}");
}

#[test]
fn an_unknown_zone_fails_with_the_parser_message() {
    let out = preview(&["30 2 * * *", "--timezone", "Europe/Berlln"]);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(out.stdout, "", "{out}");
    let messages = parser_messages("30 2 * * *", "Europe/Berlln");
    assert_eq!(
        messages,
        ["expected an IANA time zone name such as UTC or Europe/Berlin, found \"Europe/Berlln\""],
        "{out}"
    );
    assert_eq!(out.stderr, format!("error: {}\n", messages[0]), "{out}");
}

#[test]
fn an_expression_that_never_fires_is_an_error() {
    let out = preview(&["0 0 30 2 *", "--from", "2026-03-28T00:00:00Z"]);
    assert_eq!(out.code, 1, "{out}");
    assert_eq!(out.stdout, "", "{out}");
    assert_eq!(out.stderr, "error: the cron expression \"0 0 30 2 *\" never fires (no such date)\n", "{out}");
}

#[test]
fn bad_options_are_usage_errors() {
    for args in
        [&["@daily", "--count", "0"][..], &["@daily", "--count", "1001"], &["@daily", "--from", "2026-03-28 00:00"]]
    {
        let out = preview(args);
        assert_eq!(out.code, 2, "{args:?}: {out}");
        assert_eq!(out.stdout, "", "{args:?}: {out}");
    }
    assert!(preview(&["@daily", "--count", "1000"]).ok());
}
