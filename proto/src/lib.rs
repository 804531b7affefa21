//! sluice's wire format: the `sluice.v1` protobuf/gRPC API.
//!
//! The `.proto` files under `proto/sluice/v1/` are the public contract (other
//! languages generate clients from them); this crate only runs code
//! generation and re-exports the result, so no other crate does codegen.

/// Generated messages, client and server for `sluice.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sluice.v1");
}

/// The encoded `FileDescriptorSet` of every sluice proto, served by the
/// broker's gRPC reflection so `grpcurl` can list and call it.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));
