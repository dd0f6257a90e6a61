//! The vidx worker: leases jobs from a coordinator, runs each on a blocking thread (read, probe,
//! sample, reason, write evidence), keeps its lease alive with heartbeats, and reports the
//! outcome.
//!
//! - [`runtime`]: the loop, over any `vidx_core::source::JobSource`; the work of a job sits
//!   behind [`runtime::JobRunner`].
//! - [`video_job`]: [`video_job::VideoJobRunner`], the runner for video jobs, with the model.
//! - [`media`]: probing and frame sampling with FFmpeg. **Where a video's byte stream comes
//!   from**: `vidx_core::objects::store_for_url` opens the store a URL names,
//!   [`media::VideoSource`] names the object, and [`media::ObjectReader`] serves FFmpeg's
//!   read and seek callbacks with ranged reads from it.
//! - [`evidence`]: parsing answers into claims, the per-video document and the index.
//! - [`bridge`]: the one way this crate's blocking code waits for async I/O, and why.
//!
//! The worker does not depend on the coordinator: it reaches it through `vidx-core`.

#![warn(missing_docs)]

pub mod bridge;
pub mod evidence;
pub mod media;
pub mod metrics;
pub mod model_thread;
pub mod runtime;
pub mod video_job;
