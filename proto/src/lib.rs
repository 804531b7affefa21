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

/// Generated messages, client and server for `sluice.cluster.v1`: Raft
/// between the members of a cluster.
pub mod cluster {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("sluice.cluster.v1");
}

/// The encoded `FileDescriptorSet` of the `sluice.v1` API, served by the
/// broker's gRPC reflection so `grpcurl` can list and call it.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/sluice_descriptor.bin"));

/// The encoded `FileDescriptorSet` of `sluice.cluster.v1`, served by
/// reflection on brokers that are members of a cluster.
pub const CLUSTER_FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/cluster_descriptor.bin"));
