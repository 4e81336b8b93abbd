//! Baton's worker agent.
//!
//! - `session`: the one long-lived gRPC session to the cluster: register, heartbeats,
//!   assignments, output, results until acknowledged, reconnect with backoff.
//! - `exec`: the `exec` action: an argv in its own process group, bounded output capture,
//!   timeout and cancel by killing the whole group.
//!
//! The worker knows nothing about Raft or the scheduler's storage; what it keeps between
//! reconnects (attempts it saw, results not yet acknowledged) lives in memory only.

pub mod exec;
pub mod session;

pub use session::{WorkerConfig, run_worker};
