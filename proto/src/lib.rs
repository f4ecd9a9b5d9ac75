//! Rust types, clients and servers generated from `proto/userdata/v1`, shared by
//! user-service and the gateway so both speak exactly the same contract.

/// The `userdata.v1` package.
pub mod v1 {
    #![allow(missing_docs, clippy::doc_markdown, clippy::large_enum_variant)]
    tonic::include_proto!("userdata.v1");
}

/// Encoded `FileDescriptorSet` of the `userdata.v1` package and its imports,
/// for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("userdata_descriptor");
