//! Schedules: "run this runbook with these params whenever this cron expression fires".
//!
//! A schedule document is parsed like a runbook (file struct, then validation, diagnostics with
//! positions). Its cron expression uses the classic Unix meaning, which differs from the `cron`
//! crate that evaluates it in two ways we correct for here, because a mismatch means a
//! maintenance job on the wrong day:
//!
//! * day of week: Unix has 0 or 7 = Sunday, 1 = Monday; the crate has 1 = Sunday. We rewrite the
//!   field to day names before handing it over.
//! * day of month *and* day of week both restricted: Unix fires when *either* matches; the crate
//!   requires both. We evaluate the two halves separately and take the earlier tick.
//!
//! Times are evaluated on the wall clock of the schedule's time zone, with the daylight-saving
//! rules of Vixie cron; no tick is ever skipped and none fires twice:
//!
//! * A tick at a local time that does not exist (inside the gap of a spring-forward night) fires
//!   once, at the first valid instant after the gap, i.e. the instant of the jump. `30 2 * * *`
//!   in Europe/Berlin fires at 03:00 CEST on 2026-03-29. All the ticks inside one gap make that
//!   single fire, and a tick at the first local time after the gap coincides with it:
//!   `*/15 * * * *` fires at 01:45 CET, once at 03:00 CEST for 02:00 to 03:00, then at 03:15.
//! * A tick at a local time that occurs twice (the repeated hour of a fall-back night) fires
//!   once, at its first occurrence; the second pass through the repeated hour fires nothing.
//!   `*/15 * * * *` in Berlin on 2026-10-25 fires at 02:45 CEST, then at 03:00 CET, 75 minutes
//!   later.
//!
//! The fire instants of a schedule are thus one fixed set, and [`Schedule::next_after`] returns
//! the first of them after any instant at all, even one inside the repeated hour. It is pure:
//! the caller passes the time, nothing here reads a clock.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::str::FromStr;

use chrono::offset::LocalResult;
use chrono::{DateTime, FixedOffset, NaiveDateTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::runbook::source_map::SourceMap;
use crate::runbook::{self, Diagnostics, RunbookError};

/// A schedule document as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Schedule", rename = "Schedule")]
pub(crate) struct ScheduleFile {
    /// Unique name of the schedule: lowercase letters, digits and dashes, at most 63 characters.
    #[schemars(pattern("^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub schedule: String,
    /// Name of the runbook to run.
    #[schemars(pattern("^[a-z0-9][a-z0-9-]{0,62}$"))]
    pub runbook: String,
    /// When to run: 5 fields (`minute hour day-of-month month day-of-week`, Unix meaning) or 6
    /// fields (seconds first), or `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`.
    pub cron: String,
    /// IANA time zone the cron expression is read in, e.g. `Europe/Berlin`; default `UTC`.
    #[serde(default)]
    pub timezone: Option<String>,
    /// Parameter values for each run, typed as in YAML; checked and coerced against the
    /// runbook's parameters like values given on the command line.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// What the schedule is for.
    #[serde(default)]
    pub description: String,
    /// What a tick (or `baton schedule trigger`) does while an earlier run of this schedule is
    /// still going: `allow_all` (the default), `skip`, `buffer_one`, `buffer_all`,
    /// `cancel_other` or `terminate_other`.
    #[serde(default)]
    pub overlap: Option<Overlap>,
    /// What happens to ticks that could not fire in time because no leader could fire them
    /// (the cluster was down): `{ policy: skip | latest | all, window: 1h }`. Default: `skip`
    /// (every such tick is recorded as missed).
    #[serde(default)]
    pub catch_up: Option<CatchUpFile>,
    /// Fire each tick up to this much later, by a fixed pseudo-random amount per tick (the same
    /// on every node), to spread load, e.g. `30s`.
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub jitter: Option<String>,
    /// Freeze windows, each starting at the ticks of its own cron expression (read in the
    /// schedule's time zone) and lasting `duration`: runs of this schedule are held until the
    /// window ends (`action: hold`, the default) or their ticks are skipped (`action: skip`).
    #[serde(default)]
    pub blackout: Vec<BlackoutFile>,
}

/// A catch-up policy as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Catch-up", rename = "CatchUp")]
pub(crate) struct CatchUpFile {
    /// `skip`: record every late tick as missed; `latest`: run the most recent one (if it is
    /// within `window`); `all`: run every one within `window`, oldest first.
    pub policy: CatchUpPolicy,
    /// How late a tick may be and still run (default `1h`).
    #[serde(default)]
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub window: Option<String>,
}

/// A blackout window as written.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Blackout", rename = "Blackout")]
pub(crate) struct BlackoutFile {
    /// When a window starts (5 or 6 cron fields, Unix meaning), in the schedule's time zone.
    pub cron: String,
    /// How long each window lasts, e.g. `8h`.
    #[schemars(regex(pattern = r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?$"))]
    pub duration: String,
    /// `hold` (default): runs wait until the window ends; `skip`: ticks inside it start no run
    /// and are recorded as missed.
    #[serde(default)]
    pub action: Option<BlackoutAction>,
}

/// A catch-up policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpPolicy {
    /// Late ticks are recorded as missed.
    #[default]
    Skip,
    /// The most recent late tick within the window runs; the others are recorded as missed.
    Latest,
    /// Every late tick within the window runs, oldest first; older ones are recorded as missed.
    All,
}

/// What a blackout window does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BlackoutAction {
    /// Runs of the schedule wait until the window ends.
    #[default]
    Hold,
    /// Ticks inside the window start no run; each is recorded as missed.
    Skip,
}

impl CatchUpPolicy {
    /// The name as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            CatchUpPolicy::Skip => "skip",
            CatchUpPolicy::Latest => "latest",
            CatchUpPolicy::All => "all",
        }
    }
}

impl BlackoutAction {
    /// The name as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            BlackoutAction::Hold => "hold",
            BlackoutAction::Skip => "skip",
        }
    }
}

/// How late ticks are caught up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatchUp {
    /// The policy.
    pub policy: CatchUpPolicy,
    /// How late (ms) a tick may be and still run.
    pub window_ms: u64,
}

impl Default for CatchUp {
    fn default() -> Self {
        CatchUp { policy: CatchUpPolicy::Skip, window_ms: 3_600_000 }
    }
}

/// A validated blackout window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blackout {
    /// When windows start (known to compile).
    pub cron: String,
    /// How long each lasts, in ms (> 0).
    pub duration_ms: u64,
    /// Hold or skip.
    pub action: BlackoutAction,
}

/// A schedule's overlap policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Every tick starts a run, however many are still going.
    #[default]
    AllowAll,
    /// A tick while a run of this schedule is still going starts nothing; it is recorded as
    /// a missed tick.
    Skip,
    /// A tick while a run is going makes one run that waits for it; a further tick while one
    /// already waits is skipped (recorded as missed).
    BufferOne,
    /// Every tick makes a run; they run one at a time, oldest first.
    BufferAll,
    /// A tick asks the running one to stop (as `baton run cancel`) and its run starts once
    /// the other has ended.
    CancelOther,
    /// A tick ends the running one at once (its attempts are killed, it ends `cancelled`) and
    /// its run starts immediately.
    TerminateOther,
}

impl Overlap {
    /// The name as written in documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::AllowAll => "allow_all",
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::BufferAll => "buffer_all",
            Overlap::CancelOther => "cancel_other",
            Overlap::TerminateOther => "terminate_other",
        }
    }

    /// Runs of the schedule run one at a time (later ones wait for earlier ones).
    pub fn one_at_a_time(self) -> bool {
        matches!(self, Overlap::BufferOne | Overlap::BufferAll | Overlap::CancelOther)
    }
}

/// A validated schedule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Unique name, `^[a-z0-9][a-z0-9-]{0,62}$`.
    pub name: String,
    /// Name of the runbook it triggers.
    pub runbook: String,
    /// The cron expression as written (trimmed); known to compile.
    pub cron: String,
    /// IANA time zone name; known to exist.
    pub timezone: String,
    /// Parameter values passed to each run.
    pub params: BTreeMap<String, serde_json::Value>,
    /// What the schedule is for; may be empty.
    pub description: String,
    /// The YAML text this schedule was parsed from.
    pub source: String,
    /// What a tick does while a previous run of this schedule is still going.
    #[serde(default)]
    pub overlap: Overlap,
    /// How ticks missed while no leader could fire them are caught up.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Each tick fires up to this many ms late (a fixed amount per tick, see
    /// [`Schedule::jitter_ms_for`]); 0: on time.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Freeze windows.
    #[serde(default)]
    pub blackouts: Vec<Blackout>,
}

impl Schedule {
    /// Parses and validates a schedule document; `file` is only used in diagnostics.
    pub fn parse(file: &str, text: &str) -> Result<Schedule, RunbookError> {
        let map = runbook::index(file, text)?;
        Schedule::from_source(file, text, &map)
    }

    pub(crate) fn from_source(file: &str, text: &str, map: &SourceMap<'_>) -> Result<Schedule, RunbookError> {
        let parsed: ScheduleFile = runbook::deserialize(file, text, map)?;
        let mut diags = Diagnostics::new(file, map);
        let pattern = "^[a-z0-9][a-z0-9-]{0,62}$";
        runbook::check_name(&mut diags, "schedule", &parsed.schedule, pattern, "a schedule name");
        runbook::check_name(&mut diags, "runbook", &parsed.runbook, pattern, "a runbook name");
        let cron = parsed.cron.trim().to_string();
        if let Err(message) = check_cron(&cron) {
            diags.value("cron", message);
        }
        let timezone = parsed.timezone.unwrap_or_else(|| DEFAULT_TIMEZONE.to_string());
        if let Err(message) = check_timezone(&timezone) {
            diags.value("timezone", message);
        }
        let mut duration = |field: &str, value: &str| match crate::duration::parse_duration(value) {
            Ok(0) => {
                diags.value(field, "expected a duration greater than zero, found 0");
                0
            }
            Ok(ms) => ms,
            Err(message) => {
                diags.value(field, message);
                0
            }
        };
        let catch_up = match parsed.catch_up {
            None => CatchUp::default(),
            Some(c) => CatchUp {
                policy: c.policy,
                window_ms: c.window.map_or(CatchUp::default().window_ms, |w| duration("catch_up.window", &w)),
            },
        };
        let jitter_ms = parsed.jitter.map_or(0, |j| duration("jitter", &j));
        let mut blackouts = Vec::new();
        for (i, b) in parsed.blackout.into_iter().enumerate() {
            let duration_ms = duration(&format!("blackout[{i}].duration"), &b.duration);
            let cron = b.cron.trim().to_string();
            blackouts.push(Blackout { cron, duration_ms, action: b.action.unwrap_or_default() });
        }
        for (i, b) in blackouts.iter().enumerate() {
            if let Err(message) = check_cron(&b.cron) {
                diags.value(&format!("blackout[{i}].cron"), message);
            }
        }
        diags.finish(Schedule {
            name: parsed.schedule,
            runbook: parsed.runbook,
            cron,
            timezone,
            params: parsed.params,
            description: parsed.description,
            source: text.to_string(),
            overlap: parsed.overlap.unwrap_or_default(),
            catch_up,
            jitter_ms,
            blackouts,
        })
    }

    /// The first tick strictly after `after_ms` (unix milliseconds), read on the wall clock of
    /// the schedule's time zone with the daylight-saving rules of the [module](self)
    /// documentation. `None` if the expression never fires again (or, for a value not built by
    /// [`Schedule::parse`] or [`Schedule::preview`], if its cron or zone is invalid).
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        let tz = Tz::from_str(&self.timezone).ok()?;
        CronExpr::cached(&self.cron)?.next_after(tz, after_ms)
    }

    /// A schedule with just a cron expression and a time zone (`None`: UTC), validated exactly
    /// like the `cron` and `timezone` of a schedule document, for asking when it would fire
    /// (`baton schedule preview`). Its name and runbook are `preview`; it has no params.
    ///
    /// The error has one line per problem (the cron expression's first), each worded as the
    /// document parser words it.
    pub fn preview(cron: &str, timezone: Option<&str>) -> Result<Schedule, String> {
        let cron = cron.trim().to_string();
        let timezone = timezone.unwrap_or(DEFAULT_TIMEZONE).to_string();
        let problems: Vec<String> =
            [check_cron(&cron).err(), check_timezone(&timezone).err()].into_iter().flatten().collect();
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(Schedule {
            name: "preview".to_string(),
            runbook: "preview".to_string(),
            cron,
            timezone,
            params: BTreeMap::new(),
            description: String::new(),
            source: String::new(),
            overlap: Overlap::default(),
            catch_up: CatchUp::default(),
            jitter_ms: 0,
            blackouts: Vec::new(),
        })
    }

    /// How late tick `tick_ms` fires: a pseudo-random amount below `jitter_ms`, fixed by the
    /// schedule's name and the tick (FNV-1a), so every node and every restart agrees.
    pub fn jitter_ms_for(&self, tick_ms: i64) -> i64 {
        if self.jitter_ms == 0 {
            return 0;
        }
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.name.bytes().chain(tick_ms.to_le_bytes()) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        i64::try_from(hash % self.jitter_ms).unwrap_or(0)
    }

    /// The blackout window `at_ms` falls in, if any: (its action, when it ends). Windows start
    /// at the ticks of their cron expression on the schedule's wall clock.
    pub fn blackout_at(&self, at_ms: i64) -> Option<(BlackoutAction, i64)> {
        if self.blackouts.is_empty() {
            return None;
        }
        let tz = Tz::from_str(&self.timezone).ok()?;
        self.blackouts.iter().find_map(|b| {
            let duration = i64::try_from(b.duration_ms).ok()?;
            let start = CronExpr::cached(&b.cron)?.next_after(tz, at_ms.saturating_sub(duration))?;
            (start <= at_ms).then(|| (b.action, start.saturating_add(duration)))
        })
    }

    /// The first `count` ticks strictly after `after_ms`, in order, each found by
    /// [`Schedule::next_after`] from the one before; fewer if the expression stops firing.
    pub fn fire_times(&self, after_ms: i64, count: usize) -> Vec<i64> {
        let mut ticks = Vec::with_capacity(count.min(1024));
        let mut after = after_ms;
        while ticks.len() < count {
            let Some(tick) = self.next_after(after) else { break };
            ticks.push(tick);
            after = tick;
        }
        ticks
    }

    /// The instant `ms` (unix milliseconds) on the schedule's wall clock, with the offset in
    /// force there; `None` if `ms` is out of range (or the zone invalid, for a value not built
    /// by [`Schedule::parse`] or [`Schedule::preview`]).
    pub fn local_time(&self, ms: i64) -> Option<DateTime<FixedOffset>> {
        let tz = Tz::from_str(&self.timezone).ok()?;
        let instant = DateTime::<Utc>::from_timestamp_millis(ms)?.with_timezone(&tz);
        Some(instant.with_timezone(&instant.offset().fix()))
    }
}

/// The time zone of a schedule that names none.
const DEFAULT_TIMEZONE: &str = "UTC";

/// Checks a (trimmed) cron expression; the error is the diagnostic message for `cron`.
fn check_cron(cron: &str) -> Result<(), String> {
    let expr = CronExpr::parse(cron)?;
    // Without a year field an expression that fires once fires forever; one that has no tick
    // after 1970 names a date that does not exist (30 February).
    if expr.next_after(Tz::UTC, 0).is_none() {
        return Err(format!("the cron expression {cron:?} never fires (no such date)"));
    }
    Ok(())
}

/// Checks a time zone name; the error is the diagnostic message for `timezone`.
fn check_timezone(timezone: &str) -> Result<Tz, String> {
    Tz::from_str(timezone)
        .map_err(|_| format!("expected an IANA time zone name such as UTC or Europe/Berlin, found {timezone:?}"))
}

/// A cron expression compiled to one or two `cron` crate schedules (two when day of month and
/// day of week are both restricted: Unix fires when either matches).
struct CronExpr {
    alternatives: Vec<cron::Schedule>,
}

thread_local! {
    /// Compiled expressions by text. Callers walk schedules tick by tick (catching up on missed
    /// ticks calls `next_after` thousands of times), and compiling dominates a single step.
    /// Pure memoization: results never depend on what is cached.
    static COMPILED: RefCell<HashMap<String, Rc<CronExpr>>> = RefCell::new(HashMap::new());
}

/// How many compiled expressions each thread keeps before starting over.
const CACHE_LIMIT: usize = 1024;

impl CronExpr {
    /// The compiled form of `expr`, from the per-thread cache when possible.
    fn cached(expr: &str) -> Option<Rc<CronExpr>> {
        if let Some(hit) = COMPILED.with(|cache| cache.borrow().get(expr).cloned()) {
            return Some(hit);
        }
        let compiled = Rc::new(CronExpr::parse(expr).ok()?);
        COMPILED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= CACHE_LIMIT {
                cache.clear();
            }
            cache.insert(expr.to_string(), Rc::clone(&compiled));
        });
        Some(compiled)
    }

    fn parse(expr: &str) -> Result<CronExpr, String> {
        let expanded = match expr {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other if other.starts_with('@') => {
                return Err(format!(
                    "unknown cron shorthand {other:?}; use @hourly, @daily, @weekly, @monthly \
                     or @yearly"
                ));
            }
            other => other,
        };
        let mut fields: Vec<&str> = expanded.split_whitespace().collect();
        match fields.len() {
            5 => fields.insert(0, "0"),
            6 => {}
            n => {
                return Err(format!(
                    "expected a cron expression with 5 fields (minute hour day-of-month month \
                     day-of-week) or 6 (seconds first), found {n} in {expr:?}"
                ));
            }
        }
        let day_of_week =
            unix_day_of_week(fields[5]).map_err(|why| format!("invalid cron expression {expr:?}: {why}"))?;
        let restricted = |field: &str| !field.starts_with(['*', '?']);
        let variants: Vec<[&str; 2]> = if restricted(fields[3]) && restricted(fields[5]) {
            vec![[fields[3], "*"], ["*", day_of_week.as_str()]]
        } else {
            vec![[fields[3], day_of_week.as_str()]]
        };
        let alternatives = variants
            .into_iter()
            .map(|[dom, dow]| {
                let text = [fields[0], fields[1], fields[2], dom, fields[4], dow].join(" ");
                cron::Schedule::from_str(&text).map_err(|err| cron_message(expr, &text, &err))
            })
            .collect::<Result<_, _>>()?;
        Ok(CronExpr { alternatives })
    }

    /// The next wall-clock tick strictly after `naive` (a local time, represented in UTC).
    fn next_local(&self, naive: NaiveDateTime) -> Option<NaiveDateTime> {
        self.alternatives
            .iter()
            .filter_map(|schedule| schedule.after(&naive.and_utc()).next())
            .min()
            .map(|tick| tick.naive_utc())
    }

    /// The first fire instant strictly after `after_ms`, with the daylight-saving rules of the
    /// module documentation.
    ///
    /// Each wall-clock tick has one fire instant: its only one, the first of two in a repeated
    /// hour, or the end of the gap for one that does not exist. That mapping never goes back in
    /// time as ticks go forward, so the answer is the first tick after the wall-clock reading
    /// of `after_ms` whose instant is after `after_ms`. Only ticks of a repeated hour can fail
    /// that (when `after_ms` is in its second pass); they are skipped together.
    fn next_after(&self, tz: Tz, after_ms: i64) -> Option<i64> {
        let after = DateTime::<Utc>::from_timestamp_millis(after_ms)?;
        let mut local = after.with_timezone(&tz).naive_local();
        // Each round moves `local` forward; a second round happens only after skipping a
        // repeated hour, and more would need several transitions close together.
        for _ in 0..4 {
            let tick = self.next_local(local)?;
            match tz.from_local_datetime(&tick) {
                LocalResult::Single(t) => return Some(t.timestamp_millis()),
                LocalResult::Ambiguous(first, _) if first.timestamp_millis() > after_ms => {
                    return Some(first.timestamp_millis());
                }
                LocalResult::Ambiguous(..) => {
                    // `after_ms` is in the second pass: every tick of this repeated hour fired
                    // in the first. Go on from the last second of the repeated hour.
                    local = anomaly_end(tz, tick)?.checked_sub_signed(TimeDelta::seconds(1))?;
                }
                LocalResult::None => {
                    // In a gap, which starts after `local` (a real reading): fire at its end.
                    let end = anomaly_end(tz, tick)?;
                    return tz.from_local_datetime(&end).earliest().map(|t| t.timestamp_millis());
                }
            }
        }
        None
    }
}

/// The first whole second after `local` (at most a day after it) whose wall-clock reading in
/// `tz` is of another kind than `local`'s: the end of the daylight-saving gap or repeated hour
/// `local` is in. `None` if the day after `local` is all of the same kind (no real zone).
fn anomaly_end(tz: Tz, local: NaiveDateTime) -> Option<NaiveDateTime> {
    let kind = |t: &NaiveDateTime| match tz.from_local_datetime(t) {
        LocalResult::None => 0,
        LocalResult::Single(_) => 1,
        LocalResult::Ambiguous(..) => 2,
    };
    let anomaly = kind(&local);
    let mut inside = local.with_nanosecond(0)?;
    let mut outside = inside.checked_add_signed(TimeDelta::days(1))?;
    if kind(&outside) == anomaly {
        return None;
    }
    // Transitions happen on whole seconds: halve the interval down to one second.
    while (outside - inside).num_seconds() > 1 {
        let middle = inside.checked_add_signed(TimeDelta::seconds((outside - inside).num_seconds() / 2))?;
        if kind(&middle) == anomaly {
            inside = middle;
        } else {
            outside = middle;
        }
    }
    Some(outside)
}

const DAY_NAMES: [&str; 7] = ["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"];
const FULL_DAY_NAMES: [&str; 7] = ["SUNDAY", "MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY"];

/// Rewrites a Unix day-of-week field (0-7, 0 and 7 = Sunday, names, ranges, steps, lists) as a
/// list of day names, which the `cron` crate reads unambiguously. `*` and `?` stay as they are.
fn unix_day_of_week(field: &str) -> Result<String, String> {
    if field == "*" || field == "?" {
        return Ok(field.to_string());
    }
    let invalid = |why: &str| format!("day of week {field:?}: {why}");
    let day = |text: &str| -> Result<u32, String> {
        if let Ok(n) = text.parse::<u32>() {
            return if n <= 7 { Ok(n) } else { Err(invalid(&format!("{n} is not a day (0-7, 0 and 7 are Sunday)"))) };
        }
        (0..7)
            .find(|&i| DAY_NAMES[i].eq_ignore_ascii_case(text) || FULL_DAY_NAMES[i].eq_ignore_ascii_case(text))
            .map(|i| i as u32)
            .ok_or_else(|| invalid(&format!("{text:?} is not a day")))
    };
    let mut days = [false; 7];
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => {
                let step = step
                    .parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| invalid(&format!("bad step in {item:?}")))?;
                (base, step)
            }
            None => (item, 1),
        };
        let (from, to) = match base {
            "*" | "?" => (0, 6),
            _ => match base.split_once('-') {
                Some((a, b)) => (day(a)?, day(b)?),
                None if item.contains('/') => (day(base)?, 6),
                None => (day(base)?, day(base)?),
            },
        };
        if from > to {
            return Err(invalid(&format!("range {base:?} goes backwards")));
        }
        for d in (from..=to).step_by(step as usize) {
            days[(d % 7) as usize] = true;
        }
    }
    let names: Vec<&str> = (0..7).filter(|&d| days[d]).map(|d| DAY_NAMES[d]).collect();
    Ok(names.join(","))
}

/// The `cron` crate's multi-line error (its input, a caret line, the reason) as one line.
fn cron_message(expr: &str, input: &str, err: &cron::error::Error) -> String {
    let text = err.to_string();
    let reason =
        text.lines().map(str::trim).rfind(|line| !line.is_empty() && *line != input && !line.chars().all(|c| c == '^'));
    match reason {
        Some(reason) => format!("invalid cron expression {expr:?}: {reason}"),
        None => format!("invalid cron expression {expr:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_days_of_week_become_names() {
        let cases = [
            ("0", "SUN"),
            ("7", "SUN"),
            ("1", "MON"),
            ("1-5", "MON,TUE,WED,THU,FRI"),
            ("5-7", "SUN,FRI,SAT"),
            ("*/2", "SUN,TUE,THU,SAT"),
            ("1-5/2", "MON,WED,FRI"),
            ("mon,Fri", "MON,FRI"),
            ("Monday-friday", "MON,TUE,WED,THU,FRI"),
            ("monx", ""),
            ("sat-sun", ""),
            ("*", "*"),
        ];
        for (field, expected) in cases {
            match unix_day_of_week(field) {
                Ok(names) => assert_eq!(names, expected, "{field}"),
                Err(err) => assert!(expected.is_empty(), "{field}: {err}"),
            }
        }
        assert!(unix_day_of_week("8").unwrap_err().contains("not a day"));
        assert!(unix_day_of_week("xyz").unwrap_err().contains("not a day"));
    }

    #[test]
    fn cron_errors_are_one_line() {
        for bad in ["0 61 * * *", "a b c d e", "* * * *", "@sometimes", "0 0 3 * * * * *"] {
            let err = CronExpr::parse(bad).err().unwrap_or_default();
            assert!(err.contains(bad), "{bad}: {err}");
            assert!(!err.contains('\n'), "{bad}: {err}");
        }
    }
}
