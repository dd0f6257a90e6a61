//! vidx core: what the coordinator and the worker share, and nothing either keeps to itself.
//!
//! - [`domain`]: passes, jobs, leases, pages, and their validation.
//! - [`wire`]: `From`/`TryFrom` conversions between those and the `vidx.v1` messages.
//! - [`error`]: the API's error vocabulary and its one mapping to and from gRPC status codes.
//! - [`client`]: [`CoordinatorClient`](client::CoordinatorClient), the one client for both
//!   coordinator services, and [`auth`], the token it sends.
//! - [`policy`]: moderation policies and the one check of them, shared by the coordinator,
//!   `vidx submit` and the worker.
//! - [`source`]: [`JobSource`](source::JobSource), the coordinator as a worker sees it.
//! - [`objects`]: the one place a URL (`s3://`, `gs://`, `az://`, `file://`, `memory://`) becomes
//!   an object store: where every byte of a video, a manifest or an evidence document comes from.
//!
//! **Where a job's state changes**: only in the coordinator's job store
//! (`vidx_coordinator::store`), reached through `vidx_coordinator::service::Coordinator`; workers
//! ask for changes through [`JobSource`](source::JobSource), fenced by their lease id.
//!
//! This crate has no Redis, HTTP server or metrics dependency, so the worker stays free of them.

#![warn(missing_docs)]

pub mod auth;
pub mod client;
pub mod domain;
pub mod error;
pub mod objects;
pub mod policy;
pub mod source;
pub mod wire;

pub use error::{Error, Result};
