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

#[test]
fn policies_parse_with_defaults_and_bad_values_are_located() {
    let text = "schedule: s\nrunbook: r\ncron: \"0 3 * * *\"\ntimezone: Europe/Berlin\n\
                overlap: buffer_one\ncatch_up: { policy: latest, window: 2h }\njitter: 30s\n\
                blackout:\n  - { cron: \"0 0 * * 6\", duration: 48h }\n  - { cron: \"0 12 24 12 *\", duration: 12h, action: skip }\n";
    let s = Schedule::parse("s.yaml", text).unwrap();
    use baton_core::schedule::{BlackoutAction, CatchUpPolicy, Overlap};
    assert_eq!(s.overlap, Overlap::BufferOne);
    assert_eq!((s.catch_up.policy, s.catch_up.window_ms), (CatchUpPolicy::Latest, 7_200_000));
    assert_eq!(s.jitter_ms, 30_000);
    assert_eq!(s.blackouts.len(), 2);
    assert_eq!(s.blackouts[0].action, BlackoutAction::Hold);
    assert_eq!(s.blackouts[1].action, BlackoutAction::Skip);
    let plain = Schedule::parse("p.yaml", "schedule: p\nrunbook: r\ncron: \"@daily\"\n").unwrap();
    assert_eq!((plain.overlap, plain.catch_up.policy, plain.jitter_ms), (Overlap::AllowAll, CatchUpPolicy::Skip, 0));

    let bad = "schedule: s\nrunbook: r\ncron: \"0 0 30 2 *\"\njitter: 0s\ncatch_up: { policy: some }\n\
               blackout:\n  - { cron: \"0 0 * * 6\", duration: forever }\n";
    let err = Schedule::parse("bad.yaml", bad).unwrap_err();
    let found: Vec<(usize, String, String)> =
        err.diagnostics.iter().map(|d| (d.line, d.field.clone(), d.message.clone())).collect();
    assert!(found[0].1 == "catch_up.policy" && found[0].2.contains("unknown value `some`"), "{found:#?}");
    let bad = bad.replace("policy: some", "policy: all");
    let err = Schedule::parse("bad.yaml", &bad).unwrap_err();
    let found: Vec<(usize, String, String)> =
        err.diagnostics.iter().map(|d| (d.line, d.field.clone(), d.message.clone())).collect();
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!((found[0].0, found[0].1.as_str()), (3, "cron"));
    assert!(found[0].2.contains("never fires"), "{found:#?}");
    assert_eq!((found[1].0, found[1].1.as_str()), (4, "jitter"));
    assert_eq!((found[2].0, found[2].1.as_str()), (7, "blackout[0].duration"));
}

#[test]
fn jitter_is_fixed_per_tick_and_below_the_bound() {
    let text = "schedule: s\nrunbook: r\ncron: \"* * * * *\"\njitter: 30s\n";
    let s = Schedule::parse("s.yaml", text).unwrap();
    let offsets: Vec<i64> = (0..200).map(|i| s.jitter_ms_for(i * 60_000)).collect();
    assert!(offsets.iter().all(|o| (0..30_000).contains(o)), "{offsets:?}");
    assert_eq!(offsets, (0..200).map(|i| s.jitter_ms_for(i * 60_000)).collect::<Vec<_>>(), "deterministic");
    let distinct: std::collections::BTreeSet<i64> = offsets.iter().copied().collect();
    assert!(distinct.len() > 150, "spread, not constant: {} distinct", distinct.len());
    // Another schedule with the same cron spreads differently.
    let other = Schedule::parse("o.yaml", &text.replace("schedule: s", "schedule: o")).unwrap();
    assert_ne!(other.jitter_ms_for(60_000 * 7), s.jitter_ms_for(60_000 * 7));
}

#[test]
fn blackout_windows_start_at_their_cron_ticks_and_last_their_duration() {
    // Saturdays 00:00 Berlin time for 48 hours.
    let text = "schedule: s\nrunbook: r\ncron: \"0 * * * *\"\ntimezone: Europe/Berlin\n\
                blackout:\n  - { cron: \"0 0 * * 6\", duration: 48h }\n";
    let s = Schedule::parse("s.yaml", text).unwrap();
    // Saturday 2026-11-28 00:00 CET = 2026-11-27T23:00Z.
    let start = ms(2026, 11, 27, 23, 0, 0);
    assert_eq!(s.blackout_at(start - 1), None);
    assert_eq!(s.blackout_at(start).map(|(_, until)| until), Some(start + 48 * 3_600_000));
    assert!(s.blackout_at(start + 47 * 3_600_000).is_some());
    assert_eq!(s.blackout_at(start + 48 * 3_600_000), None, "the end is not inside");
}
