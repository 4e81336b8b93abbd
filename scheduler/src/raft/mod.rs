//! Raft: the one Ready loop that turns proposals into committed, applied commands.
//!
//! The loop runs on its own OS thread and owns the `RawNode`, so nothing else ever touches
//! Raft state. Async code talks to it through [`NodeHandle`]: proposals go in over a channel
//! and come back as a [`Reply`] once applied; applied state is read through a shared lock that
//! the loop holds only while applying. Persisting is synchronous (the store fsyncs before
//! `persist` returns), and a failed persist stops the node: it is never "log and continue".

mod node;
mod slog_tracing;

pub use node::{NodeConfig, NodeHandle, NodeStatus, ProposeError, Role, start_node};
