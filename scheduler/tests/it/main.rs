//! baton-scheduler's integration tests: the store conformance suite and whole nodes in-process.

mod alerts;
mod fanout;
mod node;
mod operations;
mod regressions;
mod safety;
mod schedules;
mod sim;
mod store;
mod waits;
mod world;
