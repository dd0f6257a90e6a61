//! The vidx coordinator: takes passes (a corpus of videos plus what to ask of each), plans them
//! into jobs, keeps every job's state durably in a [`store::JobStore`], leases jobs to workers
//! with fencing, retries failures with backoff, and reports progress.
//!
//! The binary drives it through [`server::run`], which serves gRPC on a listener it is given and
//! stops when the given shutdown future resolves; it never binds ports or installs signal handlers
//! of its own. [`client::CoordinatorClient`] is the one client for both services.

pub mod access;
pub mod auth;
pub mod client;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod metrics;
pub mod objects;
pub mod planner;
pub mod server;
pub mod service;
pub mod store;

pub use error::{Error, Result};
