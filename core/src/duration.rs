//! Human-written durations (`250ms`, `10s`, `1h30m`) as they appear in runbooks and schedules.
//!
//! Durations are plain millisecond counts (`u64`) everywhere inside Baton; this module is the
//! single place that turns the text form into milliseconds and back, so every file format and
//! every CLI flag accepts and prints the same spelling.
//!
//! Grammar: one or more `<digits><unit>` terms, units in strictly decreasing order
//! (`d`, `h`, `m`, `s`, `ms`), no spaces, no signs, no fractions. `format_duration` produces the
//! shortest text of that grammar, so `parse_duration(&format_duration(x)) == Ok(x)`.

/// The units we accept, largest first, with their size in milliseconds.
const UNITS: [(&str, u64); 5] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000), ("ms", 1)];

/// Parses a duration such as `"250ms"`, `"10s"`, `"5m"`, `"1h30m"` or `"2d"` into milliseconds.
///
/// The error is a complete sentence fragment meant to follow a field name, e.g.
/// `expected a duration like "10s" or "1h30m", found "10"`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let expected =
        |why: &str| format!("expected a duration like \"250ms\", \"10s\", \"5m\" or \"1h30m\", found {s:?}{why}");
    if s.is_empty() {
        return Err(expected(""));
    }
    let mut rest = s;
    let mut total: u64 = 0;
    // Index into UNITS of the last unit seen; the next unit must come strictly after it.
    let mut last_unit: Option<usize> = None;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(expected(""));
        }
        let (number, after) = rest.split_at(digits);
        let letters = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(letters);
        if unit.is_empty() {
            return Err(expected(" (missing unit: ms, s, m, h or d)"));
        }
        let Some(index) = UNITS.iter().position(|(name, _)| *name == unit) else {
            return Err(expected(&format!(" (unknown unit {unit:?}; use ms, s, m, h or d)")));
        };
        if last_unit.is_some_and(|last| index <= last) {
            return Err(expected(" (units must go from largest to smallest, each once)"));
        }
        last_unit = Some(index);
        let value: u64 = number.parse().map_err(|_| expected(" (number too large)"))?;
        total = value
            .checked_mul(UNITS[index].1)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| expected(" (duration too large)"))?;
        rest = after;
    }
    Ok(total)
}

/// Formats milliseconds in the shortest form `parse_duration` accepts (`0s`, `250ms`, `1h30m`);
/// zero terms are left out, so 60 500 ms is `1m500ms`.
pub fn format_duration(ms: u64) -> String {
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    let mut rest = ms;
    for (name, size) in UNITS {
        let count = rest / size;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(name);
            rest -= count * size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_combinations() {
        let cases = [
            ("250ms", 250),
            ("10s", 10_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1m30s500ms", 90_500),
            ("0s", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_duration(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn rejects_malformed_durations_with_reason() {
        let cases = [
            ("", "found \"\""),
            ("10", "missing unit"),
            ("10x", "unknown unit \"x\""),
            ("1.5s", "missing unit"),
            ("-1s", "found \"-1s\""),
            ("30m1h", "largest to smallest"),
            ("1s1s", "largest to smallest"),
            ("10 s", "missing unit"),
            ("99999999999999999999s", "number too large"),
            ("999999999999999d", "duration too large"),
        ];
        for (text, needle) in cases {
            let err = parse_duration(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn format_is_shortest_and_round_trips() {
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(250), "250ms");
        assert_eq!(format_duration(60_500), "1m500ms");
        assert_eq!(format_duration(5_400_000), "1h30m");
        assert_eq!(format_duration(86_400_000 + 1), "1d1ms");
        for ms in [1, 999, 1_000, 61_001, 3_600_000, 90_061_001, u64::MAX] {
            assert_eq!(parse_duration(&format_duration(ms)), Ok(ms), "{ms}");
        }
    }
}
