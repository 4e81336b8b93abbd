//! Printing for people: tables, times, durations, and readable gRPC errors.

use tonic_types::StatusExt;

/// Formats unix ms as UTC, `-` for 0.
pub fn time(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
        .unwrap_or_else(|| ms.to_string())
}

/// Formats a span of ms as `850ms`, `12.3s`, `4m05s`.
pub fn span(ms: i64) -> String {
    match ms {
        ..0 => "-".into(),
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000),
    }
}

/// The duration of something that started at `start` and ended at `end` (or is still going).
pub fn elapsed(start: i64, end: i64) -> String {
    if start == 0 {
        "-".into()
    } else if end == 0 {
        "running".into()
    } else {
        span(end - start)
    }
}

/// A plain text table with left-aligned columns.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// An error and its causes; gRPC statuses show their message and field violations.
pub fn error_chain(e: &anyhow::Error) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return status_text(status);
    }
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            out.push_str(&format!(": {}", status_text(status)));
            break;
        }
        out.push_str(&format!(": {cause}"));
    }
    out
}

fn status_text(status: &tonic::Status) -> String {
    let mut out = match status.code() {
        tonic::Code::Unavailable if status.message().contains("transport") || status.message().contains("connect") => {
            format!("cannot reach the server: {}", status.message())
        }
        _ => status.message().to_string(),
    };
    if let Some(bad) = status.get_details_bad_request() {
        // The summary already lists multi-line diagnostics; otherwise list each violation.
        if !out.contains('\n') {
            for v in bad.field_violations {
                if !out.contains(&v.description) {
                    out.push_str(&format!("\n  {}: {}", v.field, v.description));
                }
            }
        }
    }
    out
}

/// A line diff: unchanged lines start with two spaces, removed with `- `, added with `+ `.
pub fn line_diff(old: &str, new: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    // Longest common subsequence table; runbooks are small.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as `diff -u` shows a changed line.
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_diff_marks_removed_and_added_lines() {
        let d = line_diff("a\nb\nc\n", "a\nB\nc\nd\n");
        assert_eq!(d, "  a\n- b\n+ B\n  c\n+ d\n");
        assert_eq!(line_diff("x\n", "x\n"), "  x\n");
    }
}
