//! baton-scheduler's integration tests: the store conformance suite and whole nodes in-process.

mod node;
mod operations;
mod schedules;
mod sim;
mod store;
mod waits;
mod world;
