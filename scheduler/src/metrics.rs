//! Latency histograms and counters for `/metrics`, in the Prometheus text format: what
//! docs/BENCHMARKS.md measures, watchable in production.
//!
//! The state machine stays pure: apply emits [`crate::fsm::Observation`]s as effects, and the
//! node records them here when it acts on its effects (entries replayed after a restart are
//! not observed again).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds of the buckets, in seconds (`+Inf` is added).
const BOUNDS: [f64; 16] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A fixed-bucket histogram of durations.
pub struct Histogram {
    name: &'static str,
    help: &'static str,
    /// One per bound, and one more for what is above the last (`+Inf`).
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new(name: &'static str, help: &'static str) -> Histogram {
        Histogram {
            name,
            help,
            buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one duration in milliseconds (negative values count as 0).
    pub fn observe_ms(&self, ms: f64) {
        let secs = ms.max(0.0) / 1000.0;
        let i = BOUNDS.iter().position(|b| secs <= *b).unwrap_or(BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((secs * 1e6) as u64, Ordering::Relaxed);
    }

    /// Appends the histogram in the text format.
    pub fn render(&self, out: &mut String) {
        let name = self.name;
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", self.help);
        // One read of each bucket: `+Inf` and `_count` are their total, so a scrape during an
        // observation stays consistent.
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let mut cumulative = 0;
        for (bound, n) in BOUNDS.iter().zip(&counts) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = cumulative + counts[BOUNDS.len()];
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// From proposing a command on this node to its being applied here (a committed write).
pub static COMMIT: Histogram = Histogram::new(
    "baton_commit_seconds",
    "From proposing a command on this node to its being committed and applied here.",
);

/// From a schedule's tick to its run being committed.
pub static FIRE_SKEW: Histogram = Histogram::new(
    "baton_schedule_fire_skew_seconds",
    "From a schedule tick (its nominal time; jitter included) to its run being committed, as applied on this node.",
);

/// From a run's trigger to its first attempt's start.
pub static TRIGGER_TO_START: Histogram = Histogram::new(
    "baton_run_start_seconds",
    "From a run's trigger to the start of its first attempt (both as stamped by the leader).",
);

/// Leaders this node has seen take office after the first one it learned of.
pub static LEADER_CHANGES: AtomicU64 = AtomicU64::new(0);

/// Every histogram and counter of this module, in the text format.
pub fn render(out: &mut String) {
    for h in [&COMMIT, &FIRE_SKEW, &TRIGGER_TO_START] {
        h.render(out);
    }
    let _ = writeln!(
        out,
        "# HELP baton_leader_changes_total Leader changes this node has seen since it started.\n\
         # TYPE baton_leader_changes_total counter\nbaton_leader_changes_total {}",
        LEADER_CHANGES.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_sum_in_seconds() {
        let h = Histogram::new("t_seconds", "test");
        h.observe_ms(0.5);
        h.observe_ms(7.0);
        h.observe_ms(400_000.0);
        let mut out = String::new();
        h.render(&mut out);
        assert!(out.contains("# TYPE t_seconds histogram"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"0.01\"} 2\n"), "{out}");
        assert!(out.contains("t_seconds_bucket{le=\"300\"} 2\n"), "beyond the last bound: {out}");
        assert!(out.contains("t_seconds_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("t_seconds_count 3\n"), "{out}");
        assert!(out.contains("t_seconds_sum 400.0075\n"), "{out}");
    }
}
