//! The vidx coordinator: takes passes (a corpus of videos plus what to ask of each), plans them
//! into jobs, keeps every job's state durably in a [`store::JobStore`], leases jobs to workers
//! with fencing, retries failures with backoff, and reports progress.
//!
//! The binary drives it through [`server::run`], which serves gRPC on a listener it is given and
//! stops when the given shutdown future resolves; it never binds ports or installs signal handlers
//! of its own. The domain types, the client and the URL-to-store opener it shares with workers
//! live in `vidx_core`.
//!
//! **Where a job's state changes**: only in a [`store::JobStore`] (Redis in production, memory in
//! the embedded default), called by [`service::Coordinator`], which the gRPC edge ([`grpc`]) and
//! the in-process worker source (`impl JobSource for Coordinator`, in [`service`]) both go
//! through.

#![warn(missing_docs)]

pub mod access;
pub mod auth;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod planner;
pub mod server;
pub mod service;
#[cfg(feature = "testsuite")]
pub mod source_conformance;
pub mod store;

pub use error::{Error, Result};
