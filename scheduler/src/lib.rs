//! Baton's scheduler node.
//!
//! - `raft`: the one Ready loop (raft-rs `RawNode`) and its handle.
//! - `store`: the Raft log, hard state, snapshots and run output, behind the `Store` trait (the
//!   only module that names sled).
//! - `fsm`: deterministic apply of committed commands to the replicated `State`.
//! - `engine`: the leader's decisions as plain functions (fire, assign, expire).
//! - `dispatch`: connected workers and the acting-out of apply's effects.
//! - `api`: gRPC services and the HTTP endpoints.
//! - `metrics`: latency histograms and counters for `/metrics`.
//! - `server`: puts a node together.

pub mod api;
pub mod backup;
pub mod dispatch;
pub mod engine;
pub mod fsm;
pub mod guards;
pub mod metrics;
pub mod raft;
pub mod server;
pub mod store;
