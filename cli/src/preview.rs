//! `baton schedule preview`: when a cron expression would fire, computed here with the code the
//! scheduler fires with ([`Schedule::next_after`]), daylight-saving rules included. No server
//! is contacted.

use std::process::ExitCode;

use anyhow::{Context as _, bail};
use baton_core::Schedule;
use chrono::{DateTime, SecondsFormat};
use clap::Args;

use crate::{ClientOpts, OutputFormat};

/// The most fire times one preview prints.
pub const MAX_COUNT: u32 = 1000;

/// The arguments of `baton schedule preview`.
#[derive(Args, Debug)]
pub struct PreviewArgs {
    /// The cron expression, as in a schedule document; quote it, e.g. "30 2 * * *".
    pub cron: String,
    /// IANA time zone the expression is read in, as a schedule's `timezone` [default: UTC].
    #[arg(long, value_name = "TZ")]
    pub timezone: Option<String>,
    /// Print the fire times strictly after this RFC 3339 time, e.g. 2026-03-28T00:00:00Z
    /// [default: now].
    #[arg(long, value_name = "TIME", value_parser = parse_rfc3339)]
    pub from: Option<i64>,
    /// How many fire times to print, 1 to 1000.
    #[arg(long, value_name = "N", default_value_t = 10, value_parser = count_range())]
    pub count: u32,
    #[command(flatten)]
    pub opts: ClientOpts,
}

/// Accepts `--count` from 1 to [`MAX_COUNT`].
fn count_range() -> clap::builder::RangedI64ValueParser<u32> {
    clap::value_parser!(u32).range(1..=i64::from(MAX_COUNT))
}

/// Reads `--from`: an RFC 3339 time, as unix milliseconds.
fn parse_rfc3339(text: &str) -> Result<i64, String> {
    DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|err| {
        format!("expected an RFC 3339 time such as 2026-03-28T00:00:00Z or 2026-03-28T01:00:00+01:00 ({err})")
    })
}

/// `ms` as RFC 3339 with the offset in force in the schedule's time zone, to the second (cron
/// ticks are whole seconds).
fn rfc3339(schedule: &Schedule, ms: i64) -> anyhow::Result<String> {
    let local = schedule.local_time(ms).with_context(|| format!("{ms} ms is out of the range of dates"))?;
    Ok(local.to_rfc3339_opts(SecondsFormat::Secs, false))
}

/// `baton schedule preview`: prints the next fire times, one RFC 3339 time a line (`-o json`: a
/// JSON array of strings). An invalid expression or zone prints the schedule parser's message
/// for it; an expression that never fires again is an error too.
pub fn preview(args: PreviewArgs) -> anyhow::Result<ExitCode> {
    let schedule = match Schedule::preview(&args.cron, args.timezone.as_deref()) {
        Ok(schedule) => schedule,
        Err(problems) => {
            for problem in problems.lines() {
                eprintln!("error: {problem}");
            }
            return Ok(ExitCode::FAILURE);
        }
    };
    let from = args.from.unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let count = usize::try_from(args.count).context("--count is too large")?;
    let times = schedule
        .fire_times(from, count)
        .into_iter()
        .map(|ms| rfc3339(&schedule, ms))
        .collect::<anyhow::Result<Vec<String>>>()?;
    let Some(last) = times.last() else {
        bail!(
            "the cron expression {:?} never fires after {} (time zone {})",
            schedule.cron,
            rfc3339(&schedule, from)?,
            schedule.timezone
        );
    };
    if args.opts.output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&times)?);
    } else {
        for time in &times {
            println!("{time}");
        }
    }
    if times.len() < count {
        eprintln!(
            "note: the cron expression {:?} never fires after {last}: {} of {count} fire times",
            schedule.cron,
            times.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
