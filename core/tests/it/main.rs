//! Integration tests of baton-core's public API, one binary with a module per concern.

mod daylight_saving;
mod diagnostics;
mod library;
mod params;
mod schedules;
mod schema;
mod templates;
