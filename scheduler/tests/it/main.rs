//! baton-scheduler's integration tests: the store conformance suite and whole nodes in-process.

mod node;
mod sim;
mod store;
mod waits;
