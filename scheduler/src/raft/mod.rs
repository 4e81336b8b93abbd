//! Raft: the one Ready loop that turns proposals into committed, applied commands, and the
//! transport that carries its messages between nodes.
//!
//! The loop runs on its own OS thread and owns the `RawNode`, so nothing else ever touches
//! Raft state. Async code talks to it through [`NodeHandle`]: proposals, peer messages and
//! read barriers go in over a channel; replies come back once applied; applied state is read
//! through a shared lock that the loop holds only while applying. Persisting is synchronous
//! (the store fsyncs before `persist` returns), and a failed persist stops the process: it is
//! never "log and continue".

mod node;
mod slog_tracing;
pub mod transport;

pub use node::{Applied, NoPeers, NodeConfig, NodeHandle, NodeStatus, ProposeError, Role, Transport, start_node};
