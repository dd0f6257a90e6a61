//! The vidx wire contract, generated from `proto/vidx/v1/vidx.proto`.
//!
//! This is the only crate that runs the gRPC code generator. Generated types stay at the edge: the
//! coordinator's gRPC module and the worker's client convert them into domain types.

#![allow(clippy::all, missing_docs)]

/// `package vidx.v1`.
pub mod v1 {
    tonic::include_proto!("vidx.v1");
}
