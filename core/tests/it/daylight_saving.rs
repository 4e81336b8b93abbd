//! Daylight saving with the Vixie cron rules: a tick in a spring-forward gap fires once, at the
//! end of the gap (all the ticks of one gap together); a tick in a fall-back repeated hour fires
//! once, at its first occurrence. Tables of exact instants around the 2026 transitions:
//!
//! | zone             | spring forward                          | fall back                               |
//! |------------------|-----------------------------------------|-----------------------------------------|
//! | Europe/Berlin    | 2026-03-29 02:00 CET → 03:00 CEST (01Z) | 2026-10-25 03:00 CEST → 02:00 CET (01Z) |
//! | America/New_York | 2026-03-08 02:00 EST → 03:00 EDT (07Z)  | 2026-11-01 02:00 EDT → 01:00 EST (06Z)  |

use baton_core::Schedule;
use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Timelike};
use chrono_tz::Tz;

fn schedule(cron: &str, timezone: &str) -> Schedule {
    let text = format!("schedule: s\nrunbook: r\ncron: \"{cron}\"\ntimezone: {timezone}\n");
    Schedule::parse("s.yaml", &text).unwrap_or_else(|err| panic!("{err}"))
}

/// Unix ms of an RFC 3339 time.
fn at(rfc3339: &str) -> i64 {
    DateTime::parse_from_rfc3339(rfc3339).unwrap_or_else(|err| panic!("{rfc3339}: {err}")).timestamp_millis()
}

/// `ms` as RFC 3339 with the offset in force in the schedule's zone.
fn show(s: &Schedule, ms: i64) -> String {
    s.local_time(ms).unwrap().to_rfc3339_opts(SecondsFormat::Secs, false)
}

/// The first `n` fires after `from`, each found from the one before.
fn fires(s: &Schedule, from: &str, n: usize) -> Vec<String> {
    s.fire_times(at(from), n).into_iter().map(|ms| show(s, ms)).collect()
}

/// One row: these equivalent expressions (5 and 6 fields), in this zone, fire at `expected`
/// (exactly, in order, nothing in between) after `from`.
struct Case {
    crons: &'static [&'static str],
    zone: &'static str,
    from: &'static str,
    expected: &'static [&'static str],
}

const BERLIN: &str = "Europe/Berlin";
const NEW_YORK: &str = "America/New_York";

const CASES: &[Case] = &[
    // Berlin, spring forward: 02:00 to 02:59 do not exist on 2026-03-29.
    Case {
        crons: &["30 2 * * *", "0 30 2 * * *"],
        zone: BERLIN,
        from: "2026-03-27T12:00:00Z",
        expected: &["2026-03-28T02:30:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00"],
    },
    Case {
        crons: &["15 45 2 * * *"],
        zone: BERLIN,
        from: "2026-03-28T12:00:00Z",
        expected: &["2026-03-29T03:00:00+02:00", "2026-03-30T02:45:15+02:00"],
    },
    Case {
        crons: &["0 2 * * *", "0 0 2 * * *"],
        zone: BERLIN,
        from: "2026-03-28T12:00:00Z",
        expected: &["2026-03-29T03:00:00+02:00", "2026-03-30T02:00:00+02:00"],
    },
    // A job at 03:00 is not in the gap: it fires at the jump as usual, once.
    Case {
        crons: &["0 3 * * *", "0 0 3 * * *"],
        zone: BERLIN,
        from: "2026-03-28T12:00:00Z",
        expected: &["2026-03-29T03:00:00+02:00", "2026-03-30T03:00:00+02:00"],
    },
    Case {
        crons: &["*/15 * * * *", "0 */15 * * * *"],
        zone: BERLIN,
        from: "2026-03-29T01:30:00+01:00",
        expected: &[
            "2026-03-29T01:45:00+01:00",
            // 02:00, 02:15, 02:30, 02:45 and 03:00: one fire.
            "2026-03-29T03:00:00+02:00",
            "2026-03-29T03:15:00+02:00",
            "2026-03-29T03:30:00+02:00",
        ],
    },
    Case {
        crons: &["0 * * * *", "0 0 * * * *", "@hourly"],
        zone: BERLIN,
        from: "2026-03-29T00:30:00+01:00",
        expected: &["2026-03-29T01:00:00+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T04:00:00+02:00"],
    },
    // Every 20 seconds: 180 ticks of the gap are one fire.
    Case {
        crons: &["*/20 * * * * *"],
        zone: BERLIN,
        from: "2026-03-29T01:59:30+01:00",
        expected: &["2026-03-29T01:59:40+01:00", "2026-03-29T03:00:00+02:00", "2026-03-29T03:00:20+02:00"],
    },
    // Berlin, fall back: 02:00 to 02:59 happen twice on 2026-10-25 (+02:00, then +01:00).
    Case {
        crons: &["30 2 * * *", "0 30 2 * * *"],
        zone: BERLIN,
        from: "2026-10-23T12:00:00Z",
        expected: &["2026-10-24T02:30:00+02:00", "2026-10-25T02:30:00+02:00", "2026-10-26T02:30:00+01:00"],
    },
    Case {
        crons: &["*/15 * * * *", "0 */15 * * * *"],
        zone: BERLIN,
        from: "2026-10-25T01:50:00+02:00",
        expected: &[
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T02:15:00+02:00",
            "2026-10-25T02:30:00+02:00",
            "2026-10-25T02:45:00+02:00",
            // Not 02:00+01:00 to 02:45+01:00: those ticks fired in the first pass.
            "2026-10-25T03:00:00+01:00",
            "2026-10-25T03:15:00+01:00",
        ],
    },
    Case {
        crons: &["0 * * * *", "0 0 * * * *", "@hourly"],
        zone: BERLIN,
        from: "2026-10-25T00:30:00+02:00",
        expected: &[
            "2026-10-25T01:00:00+02:00",
            "2026-10-25T02:00:00+02:00",
            "2026-10-25T03:00:00+01:00",
            "2026-10-25T04:00:00+01:00",
        ],
    },
    // New York, spring forward: 02:00 to 02:59 do not exist on 2026-03-08.
    Case {
        crons: &["30 2 * * *", "0 30 2 * * *"],
        zone: NEW_YORK,
        from: "2026-03-06T12:00:00Z",
        expected: &["2026-03-07T02:30:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-09T02:30:00-04:00"],
    },
    Case {
        crons: &["*/15 * * * *", "0 */15 * * * *"],
        zone: NEW_YORK,
        from: "2026-03-08T01:40:00-05:00",
        expected: &["2026-03-08T01:45:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T03:15:00-04:00"],
    },
    Case {
        crons: &["0 * * * *", "0 0 * * * *"],
        zone: NEW_YORK,
        from: "2026-03-08T00:30:00-05:00",
        expected: &["2026-03-08T01:00:00-05:00", "2026-03-08T03:00:00-04:00", "2026-03-08T04:00:00-04:00"],
    },
    // New York, fall back: 01:00 to 01:59 happen twice on 2026-11-01 (-04:00, then -05:00).
    Case {
        crons: &["30 1 * * *", "0 30 1 * * *"],
        zone: NEW_YORK,
        from: "2026-10-30T12:00:00Z",
        expected: &["2026-10-31T01:30:00-04:00", "2026-11-01T01:30:00-04:00", "2026-11-02T01:30:00-05:00"],
    },
    // 02:30 is after the repeated hour: once, in EST.
    Case {
        crons: &["30 2 * * *", "0 30 2 * * *"],
        zone: NEW_YORK,
        from: "2026-10-30T12:00:00Z",
        expected: &["2026-10-31T02:30:00-04:00", "2026-11-01T02:30:00-05:00", "2026-11-02T02:30:00-05:00"],
    },
    Case {
        crons: &["*/15 * * * *", "0 */15 * * * *"],
        zone: NEW_YORK,
        from: "2026-11-01T00:50:00-04:00",
        expected: &[
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T01:15:00-04:00",
            "2026-11-01T01:30:00-04:00",
            "2026-11-01T01:45:00-04:00",
            "2026-11-01T02:00:00-05:00",
            "2026-11-01T02:15:00-05:00",
        ],
    },
    Case {
        crons: &["0 * * * *", "0 0 * * * *"],
        zone: NEW_YORK,
        from: "2026-10-31T23:30:00-04:00",
        expected: &[
            "2026-11-01T00:00:00-04:00",
            "2026-11-01T01:00:00-04:00",
            "2026-11-01T02:00:00-05:00",
            "2026-11-01T03:00:00-05:00",
        ],
    },
];

#[test]
fn transitions_fire_at_exact_instants() {
    for case in CASES {
        for cron in case.crons {
            let s = schedule(cron, case.zone);
            let what = format!("{cron:?} in {} after {}", case.zone, case.from);
            assert_eq!(fires(&s, case.from, case.expected.len()), case.expected, "{what}");
            // Whatever instant one starts from, the next fire is the same: from just before
            // each fire, that fire; from the fire itself, the one after it.
            for pair in case.expected.windows(2) {
                assert_eq!(show(&s, s.next_after(at(pair[0]) - 1).unwrap()), pair[0], "{what}: before {}", pair[0]);
                assert_eq!(show(&s, s.next_after(at(pair[0])).unwrap()), pair[1], "{what}: from {}", pair[0]);
            }
        }
    }
}

#[test]
fn starting_inside_a_repeated_hour_never_fires_a_tick_twice() {
    // (cron, zone, from, next): `from` in the first or the second pass of the repeated hour.
    let cases = [
        ("*/15 * * * *", BERLIN, "2026-10-25T02:10:00+02:00", "2026-10-25T02:15:00+02:00"),
        ("*/15 * * * *", BERLIN, "2026-10-25T02:10:00+01:00", "2026-10-25T03:00:00+01:00"),
        ("*/15 * * * *", BERLIN, "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"),
        ("*/15 * * * *", BERLIN, "2026-10-25T02:59:59+01:00", "2026-10-25T03:00:00+01:00"),
        ("0 */15 * * * *", BERLIN, "2026-10-25T02:10:00+01:00", "2026-10-25T03:00:00+01:00"),
        ("* * * * * *", BERLIN, "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"),
        ("* * * * * *", BERLIN, "2026-10-25T02:59:59+02:00", "2026-10-25T03:00:00+01:00"),
        ("0 * * * *", BERLIN, "2026-10-25T02:00:00+01:00", "2026-10-25T03:00:00+01:00"),
        ("30 2 * * *", BERLIN, "2026-10-25T02:10:00+02:00", "2026-10-25T02:30:00+02:00"),
        ("30 2 * * *", BERLIN, "2026-10-25T02:10:00+01:00", "2026-10-26T02:30:00+01:00"),
        ("0 30 2 * * *", BERLIN, "2026-10-25T02:10:00+01:00", "2026-10-26T02:30:00+01:00"),
        ("*/15 * * * *", NEW_YORK, "2026-11-01T01:20:00-05:00", "2026-11-01T02:00:00-05:00"),
        ("*/15 * * * *", NEW_YORK, "2026-11-01T01:20:00-04:00", "2026-11-01T01:30:00-04:00"),
        ("30 1 * * *", NEW_YORK, "2026-11-01T01:10:00-05:00", "2026-11-02T01:30:00-05:00"),
        ("0 30 1 * * *", NEW_YORK, "2026-11-01T01:10:00-05:00", "2026-11-02T01:30:00-05:00"),
    ];
    for (cron, zone, from, next) in cases {
        let s = schedule(cron, zone);
        assert_eq!(
            s.next_after(at(from)).map(|ms| show(&s, ms)).as_deref(),
            Some(next),
            "{cron:?} in {zone} after {from}"
        );
    }
}

#[test]
fn a_gap_fires_once_whatever_the_starting_point() {
    let s = schedule("*/15 * * * *", BERLIN);
    // Just before the jump (01:59:59 CET), at it, and after it.
    assert_eq!(show(&s, s.next_after(at("2026-03-29T01:59:59.999+01:00")).unwrap()), "2026-03-29T03:00:00+02:00");
    assert_eq!(show(&s, s.next_after(at("2026-03-29T03:00:00+02:00")).unwrap()), "2026-03-29T03:15:00+02:00");
    assert_eq!(show(&s, s.next_after(at("2026-03-29T03:10:00+02:00")).unwrap()), "2026-03-29T03:15:00+02:00");
}

#[test]
fn a_daily_job_fires_on_every_day_of_the_year_once() {
    let cases = [
        ("30 2 * * *", BERLIN),
        ("0 30 2 * * *", BERLIN),
        ("0 2 * * *", BERLIN),
        ("0 3 * * *", BERLIN),
        ("59 1 * * *", BERLIN),
        ("30 2 * * *", NEW_YORK),
        ("30 1 * * *", NEW_YORK),
        ("0 1 * * *", NEW_YORK),
        ("0 0 2 * * *", NEW_YORK),
    ];
    for (cron, zone) in cases {
        let s = schedule(cron, zone);
        let from = at("2026-01-01T00:00:00Z") - 86_400_000;
        let days: Vec<NaiveDate> = s
            .fire_times(from, 400)
            .into_iter()
            .map(|ms| s.local_time(ms).unwrap().date_naive())
            .filter(|d| d.year() == 2026)
            .collect();
        assert_eq!(days.len(), 365, "{cron:?} in {zone}");
        for pair in days.windows(2) {
            assert_eq!(pair[1], pair[0] + Duration::days(1), "{cron:?} in {zone}: a day fired twice or not at all");
        }
    }
}

/// What the rules say, computed independently and slowly: each local time from `start` for
/// `minutes` minutes that `matches`, mapped to its instant (the first occurrence; for one that
/// does not exist, the first existing minute after it), without duplicates.
fn expected_by_scanning(
    zone: Tz,
    start: NaiveDateTime,
    minutes: i64,
    matches: impl Fn(&NaiveDateTime) -> bool,
) -> Vec<i64> {
    let mut out: Vec<i64> = Vec::new();
    for i in 0..minutes {
        let local = start + Duration::minutes(i);
        if !matches(&local) {
            continue;
        }
        let mut existing = local;
        let instant = loop {
            if let Some(t) = zone.from_local_datetime(&existing).earliest() {
                break t.timestamp_millis();
            }
            existing += Duration::minutes(1);
        };
        if out.last() != Some(&instant) {
            out.push(instant);
        }
    }
    out
}

#[test]
fn every_wall_clock_tick_fires_exactly_once_across_all_four_transitions() {
    type Matcher = fn(&NaiveDateTime) -> bool;
    let crons: [(&str, Matcher); 5] = [
        ("* * * * *", |_| true),
        ("*/15 * * * *", |t| t.minute() % 15 == 0),
        ("0 * * * *", |t| t.minute() == 0),
        ("30 1,2 * * *", |t| t.minute() == 30 && (t.hour() == 1 || t.hour() == 2)),
        ("0 0 2 * * *", |t| t.minute() == 0 && t.hour() == 2),
    ];
    let nights =
        [(BERLIN, (2026, 3, 28)), (BERLIN, (2026, 10, 24)), (NEW_YORK, (2026, 3, 7)), (NEW_YORK, (2026, 10, 31))];
    for (zone, (y, m, d)) in nights {
        let tz: Tz = zone.parse().unwrap();
        let start = NaiveDate::from_ymd_opt(y, m, d).unwrap().and_hms_opt(0, 0, 0).unwrap();
        let minutes = 3 * 24 * 60;
        for (cron, matches) in crons {
            let s = schedule(cron, zone);
            let expected = expected_by_scanning(tz, start, minutes, matches);
            // From just before the first local minute of the window, as many fires as expected.
            let from = tz.from_local_datetime(&start).earliest().unwrap().timestamp_millis() - 1;
            assert_eq!(s.fire_times(from, expected.len()), expected, "{cron:?} in {zone} from {start}");
        }
    }
}
