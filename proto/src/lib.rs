//! Baton's gRPC API (package `baton.v1`), generated from `proto/baton/v1/baton.proto` with a
//! vendored protoc, and the one place where wire types and domain types meet.
//!
//! Conversions into the domain validate what they receive (`TryFrom`), so handlers never see a
//! half-valid message; conversions out of the domain are total (`From`).

#![allow(missing_docs)]

/// Generated types and service stubs.
pub mod v1 {
    tonic::include_proto!("baton.v1");

    /// The encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("baton_descriptor");
}

mod convert;

pub use convert::{ConvertError, attempt_state_from_pb, attempt_state_to_pb, run_from_pb, run_to_pb};
