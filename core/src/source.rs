//! [`JobSource`]: the coordinator's worker-facing operations, as the worker sees them.
//!
//! Two implementations behave alike, and the conformance suite
//! (`vidx_coordinator::source_conformance`) holds them to it: [`CoordinatorClient`] over gRPC,
//! as `vidx worker` runs, and the in-process `vidx_coordinator::service::Coordinator`, as the
//! embedded `vidx index` runs. Both return the same [`Error`](crate::Error) variant for the
//! same cause; a fenced-off lease is always [`Error::StaleLease`](crate::Error::StaleLease).

use async_trait::async_trait;

use crate::client::CoordinatorClient;
use crate::domain::{Completion, FailOutcome, FailureKind, Heartbeat, LeasedJob};
use crate::error::Result;

/// The coordinator's worker-facing operations. Every call but `lease` is fenced by the lease id
/// the job was leased under.
#[async_trait]
pub trait JobSource: Send + Sync + 'static {
    /// Leases up to `max_jobs` jobs for `lease_ms` milliseconds (0: the coordinator's default).
    async fn lease(&self, worker_id: &str, max_jobs: u32, lease_ms: u64) -> Result<Vec<LeasedJob>>;
    /// Extends a lease by `extend_ms`; the reply says whether the pass was cancelled.
    async fn heartbeat(&self, job_id: &str, lease_id: &str, extend_ms: u64) -> Result<Heartbeat>;
    /// Reports a job done, or split into the completion's segments.
    async fn complete(&self, job_id: &str, lease_id: &str, completion: &Completion) -> Result<()>;
    /// Reports a job failed. The coordinator classifies by `kind`: a retryable failure comes
    /// back after a backoff while attempts last, a permanent one is dead at once, a panic is
    /// retried once and dead at the second.
    async fn fail(
        &self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        kind: FailureKind,
    ) -> Result<FailOutcome>;
    /// Hands a job back unfinished (the worker is shutting down): it is pending again at once,
    /// due now, and the attempt it was leased under is given back, so its next lease carries the
    /// same attempt number. A job of a cancelled pass becomes cancelled instead.
    async fn release(&self, job_id: &str, lease_id: &str, reason: &str) -> Result<()>;
}

#[async_trait]
impl JobSource for CoordinatorClient {
    async fn lease(&self, worker_id: &str, max_jobs: u32, lease_ms: u64) -> Result<Vec<LeasedJob>> {
        CoordinatorClient::lease(self, worker_id, max_jobs, lease_ms).await
    }
    async fn heartbeat(&self, job_id: &str, lease_id: &str, extend_ms: u64) -> Result<Heartbeat> {
        CoordinatorClient::heartbeat(self, job_id, lease_id, extend_ms).await
    }
    async fn complete(&self, job_id: &str, lease_id: &str, completion: &Completion) -> Result<()> {
        CoordinatorClient::complete(self, job_id, lease_id, completion).await
    }
    async fn fail(
        &self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        kind: FailureKind,
    ) -> Result<FailOutcome> {
        CoordinatorClient::fail(self, job_id, lease_id, reason, kind).await
    }
    async fn release(&self, job_id: &str, lease_id: &str, reason: &str) -> Result<()> {
        CoordinatorClient::release(self, job_id, lease_id, reason).await?;
        Ok(())
    }
}
