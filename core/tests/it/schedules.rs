//! Schedules: parsing and `next_after` with Unix cron semantics, time zones and DST.

use baton_core::{Document, Schedule, parse_document};
use chrono::{TimeZone, Utc};

fn ms(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap().timestamp_millis()
}

fn schedule(cron: &str, timezone: &str) -> Schedule {
    let text = format!("schedule: s\nrunbook: r\ncron: \"{cron}\"\ntimezone: {timezone}\n");
    Schedule::parse("s.yaml", &text).unwrap_or_else(|err| panic!("{err}"))
}

#[test]
fn parses_a_schedule_document_with_typed_params() {
    let text = "\
schedule: nightly
runbook: disk-cleanup
cron: \"30 2 * * *\"
params: { path: /var/log/app, older_than_days: 7, dry_run: false, hosts: [a, yes] }
description: Nightly cleanup.
";
    let Document::Schedule(s) = parse_document("n.yaml", text).unwrap() else {
        panic!("a schedule key makes a schedule");
    };
    assert_eq!((s.name.as_str(), s.runbook.as_str()), ("nightly", "disk-cleanup"));
    assert_eq!(s.timezone, "UTC", "UTC is the default");
    assert_eq!(s.params["older_than_days"], serde_json::json!(7));
    assert_eq!(s.params["dry_run"], serde_json::json!(false));
    // YAML 1.2: `yes` stays a string.
    assert_eq!(s.params["hosts"], serde_json::json!(["a", "yes"]));
    assert_eq!(s.source, text);
}

#[test]
fn five_field_expressions_fire_strictly_after() {
    let s = schedule("0 3 * * *", "UTC");
    assert_eq!(s.next_after(ms(2024, 1, 1, 0, 0, 0)), Some(ms(2024, 1, 1, 3, 0, 0)));
    assert_eq!(s.next_after(ms(2024, 1, 1, 3, 0, 0)), Some(ms(2024, 1, 2, 3, 0, 0)));
    assert_eq!(s.next_after(ms(2024, 1, 1, 3, 0, 0) - 1), Some(ms(2024, 1, 1, 3, 0, 0)));
    assert_eq!(s.next_after(ms(2024, 1, 1, 3, 0, 0) + 1), Some(ms(2024, 1, 2, 3, 0, 0)));
}

#[test]
fn six_field_expressions_have_seconds_first() {
    let s = schedule("30 */15 * * * *", "UTC");
    assert_eq!(s.next_after(ms(2024, 1, 1, 10, 0, 0)), Some(ms(2024, 1, 1, 10, 0, 30)));
    assert_eq!(s.next_after(ms(2024, 1, 1, 10, 0, 30)), Some(ms(2024, 1, 1, 10, 15, 30)));
}

#[test]
fn non_utc_zone_follows_the_local_wall_clock() {
    let s = schedule("0 3 * * *", "Europe/Berlin");
    // Winter: CET is UTC+1.
    assert_eq!(s.next_after(ms(2024, 1, 15, 0, 0, 0)), Some(ms(2024, 1, 15, 2, 0, 0)));
    // Summer: CEST is UTC+2.
    assert_eq!(s.next_after(ms(2024, 7, 15, 0, 0, 0)), Some(ms(2024, 7, 15, 1, 0, 0)));
    let s = schedule("0 9 * * *", "America/New_York");
    assert_eq!(s.next_after(ms(2024, 1, 15, 0, 0, 0)), Some(ms(2024, 1, 15, 14, 0, 0)));
}

#[test]
fn day_of_week_has_the_unix_meaning() {
    // 2024-01-01 is a Monday.
    let monday = schedule("0 9 * * 1", "UTC");
    assert_eq!(monday.next_after(ms(2024, 1, 1, 10, 0, 0)), Some(ms(2024, 1, 8, 9, 0, 0)));
    for sunday in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN"] {
        let s = schedule(sunday, "UTC");
        assert_eq!(s.next_after(ms(2024, 1, 1, 0, 0, 0)), Some(ms(2024, 1, 7, 9, 0, 0)), "{sunday}");
    }
    let weekdays = schedule("0 9 * * 1-5", "UTC");
    // Friday 2024-01-05 10:00 → Monday 2024-01-08 09:00.
    assert_eq!(weekdays.next_after(ms(2024, 1, 5, 10, 0, 0)), Some(ms(2024, 1, 8, 9, 0, 0)));
}

#[test]
fn day_of_month_or_day_of_week_fires_on_either() {
    // The 13th, or any Friday. 2024-08-13 is a Tuesday, 2024-08-16 a Friday.
    let s = schedule("0 0 13 * 5", "UTC");
    assert_eq!(s.next_after(ms(2024, 8, 10, 0, 0, 0)), Some(ms(2024, 8, 13, 0, 0, 0)));
    assert_eq!(s.next_after(ms(2024, 8, 13, 0, 0, 0)), Some(ms(2024, 8, 16, 0, 0, 0)));
}

#[test]
fn shorthands() {
    let s = schedule("@daily", "UTC");
    assert_eq!(s.next_after(ms(2024, 1, 1, 0, 0, 0)), Some(ms(2024, 1, 2, 0, 0, 0)));
    let s = schedule("@weekly", "UTC");
    assert_eq!(s.next_after(ms(2024, 1, 1, 0, 0, 0)), Some(ms(2024, 1, 7, 0, 0, 0)));
}
