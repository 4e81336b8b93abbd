//! End-to-end tests over real `baton dev` processes, driven through the CLI and gRPC.

mod bench;
mod campaign;
mod chatops;
mod cluster;
mod crash;
mod deploy;
mod e2e;
mod guards;
mod language;
mod membership;
mod policies;
mod preview;
mod restart;
mod schedule_ops;
mod secrets;
