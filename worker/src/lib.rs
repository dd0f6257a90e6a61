//! The vidx worker: leases jobs from a coordinator, runs each on a blocking thread of its own
//! (read, probe, sample, then the shared model, then write evidence), keeps every lease alive
//! with heartbeats, and reports the outcomes.
//!
//! - [`runtime`]: the loop, over any `vidx_core::source::JobSource`; the work of a job sits
//!   behind [`runtime::JobRunner`]. Shutdown is one `tokio_util::sync::CancellationToken`.
//! - [`video_job`]: [`video_job::VideoJobRunner`], the runner for video jobs, with the model.
//! - [`model_thread`]: the one thread that runs the model, batching the questions of several
//!   jobs together.
//! - [`metrics`]: the worker's Prometheus metrics, health, and the server for both.
//! - [`media`]: probing and frame sampling with FFmpeg. **Where a video's byte stream comes
//!   from**: `vidx_core::objects::store_for_url` opens the store a URL names,
//!   [`media::VideoSource`] names the object, and [`media::ObjectReader`] serves FFmpeg's
//!   read and seek callbacks with ranged reads from it.
//! - [`evidence`]: parsing answers into claims, the per-video document and the index.
//! - [`claim_verification`]: claim confidence by self-verification (crop, ask, P(yes)).
//! - [`bridge`]: the one way this crate's blocking code waits for async I/O, and why.
//!
//! The worker does not depend on the coordinator: it reaches it through `vidx-core`.

#![warn(missing_docs)]

pub mod bridge;
pub mod claim_verification;
pub mod evidence;
pub mod media;
pub mod metrics;
pub mod model_thread;
pub mod runtime;
pub mod video_job;
