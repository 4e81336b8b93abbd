//! Baton's pure domain: runbooks, schedules, params, templates, cron, runs and the replicated
//! command type. Nothing here does I/O, reads the clock or spawns tasks; every function is a
//! plain computation over values, so the scheduler's state machine stays deterministic.

pub mod command;
pub mod duration;
pub mod run;
pub mod runbook;
pub mod schedule;
pub mod template;

pub use runbook::{Document, Runbook, RunbookError, parse_document};
pub use schedule::Schedule;
