//! The `inferenceguard.v1` protobuf API: messages, tonic clients and servers,
//! and the encoded descriptor set that servers expose through gRPC reflection.
//!
//! The `.proto` sources in `proto/inferenceguard/v1/` are the contract; this
//! crate only compiles them. See `proto/README.md` for the conventions.

#![allow(missing_docs, clippy::all)] // generated code; the .proto files carry the docs

/// Version 1 of the API (`package inferenceguard.v1`).
pub mod v1 {
    tonic::include_proto!("inferenceguard.v1");
}

/// Encoded `FileDescriptorSet` of every `inferenceguard.v1` file, for
/// `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    tonic::include_file_descriptor_set!("inferenceguard_v1_descriptor");
