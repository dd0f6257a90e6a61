//! The vidx wire contract, generated from `proto/vidx/v1/vidx.proto`.
//!
//! This is the only crate that runs the gRPC code generator. Generated types stay at the edge:
//! `vidx_core::wire` converts them to and from the domain types, for the coordinator's gRPC
//! services (`vidx_coordinator::grpc`) and the one client (`vidx_core::client`) alike.
//!
//! Generated code carries the `.proto` file's comments as its docs; lints are off for it.

#![allow(clippy::all, missing_docs)]

/// `package vidx.v1`.
pub mod v1 {
    tonic::include_proto!("vidx.v1");
}
