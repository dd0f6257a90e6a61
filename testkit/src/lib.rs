//! vidx's process harnesses: every real program the tests (and `vidx bench`) start, on loopback
//! only, never a mock. Each runs behind the one kill-on-drop guard, [`ChildGuard`]: it kills by
//! the process's own pid and reaps it, keeps the last lines of its stdout and stderr for failure
//! messages, and has the only two bounded waits ([`ChildGuard::wait_for_line`] for readiness,
//! [`ChildGuard::wait_finished`] for a run to end). Every failure is an [`Error`] naming the
//! process and quoting its output.
//!
//! | process | harness | readiness |
//! | --- | --- | --- |
//! | `redis-server` | [`redis::RedisServer`] | port picked by the test kit and retried when taken ([`port::on_free_port`]): redis cannot report a port it chose (`--port 0` turns TCP off); ready at its log line `Ready to accept connections`, which comes after it bound and loaded its data |
//! | `s3s-fs` (S3) | [`s3::S3Server`] | port 0; ready at the address it logs, `server is running at …` |
//! | Azurite (Azure Blob) | [`azurite::Azurite`] | port 0; ready at the address it logs, `successfully listens on …` |
//! | fake-gcs-server (GCS) | [`gcs::FakeGcs`] | port picked and retried ([`port::on_free_port`]): it logs `:0` for port 0 and needs its public host up front; ready at its log line `server started at`, written once bound |
//! | `vidx coordinator` | [`vidx::VidxCoordinator`] | port 0 for gRPC and `/metrics`; ready at the addresses it prints on stdout (`metrics listening on …`, `grpc listening on …`) after binding |
//! | `vidx worker` | [`vidx::start_worker`] | binds nothing: started after its coordinator is ready |
//! | headless Chromium | [`chromium::Chromium`] | binds nothing: one screenshot run, bounded by a deadline |
//!
//! Any other program a test runs to its end under a deadline goes through [`ChildGuard::spawn`]
//! and [`ChildGuard::wait_finished`]. [`port::ClosedPort`] holds a loopback port bound but not
//! listening, for endpoints that must refuse (a cloud never to be reached, an absent API server).
//! No harness picks a port and hands it to a process that could choose its own.
//!
//! The crate has no test-only switches: `vidx bench` uses [`redis::RedisServer`] too.

#![warn(missing_docs)]

pub mod azurite;
pub mod chromium;
mod error;
pub mod gcs;
pub mod port;
mod process;
pub mod redis;
pub mod s3;
pub mod vidx;

pub use error::{Error, Result};
pub use process::{ChildGuard, Finished, Line, Stream, find_program, tool, workspace_tools};
