//! baton-worker integration tests: the exec action against real processes.

mod exec;
mod secrets;
