//! The coordinator's operations, independent of transport: the gRPC layer calls these, and so
//! does an in-process worker in the embedded local mode. Validation of ids and bounds lives here,
//! once, so every entry point rejects the same bad input the same way.

use std::sync::Arc;

use tokio::sync::{Notify, watch};
use tracing::{info, instrument};

use crate::access::AccessPolicy;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::{JobStore, LeaseRequest};
use vidx_core::domain::{
    Completed, Completion, Created, FailOutcome, FailureKind, FinalizeClaim, Heartbeat, Job,
    JobState, LeasedJob, Page, PassSpec, PassStatus, now_ms,
};
use vidx_core::source::JobSource;

/// Default lease duration.
pub const DEFAULT_LEASE_MS: i64 = 60_000;
/// Shortest and longest lease a worker may ask for.
pub const LEASE_MS_RANGE: (i64, i64) = (1_000, 3_600_000);
/// Most jobs one lease call may take.
pub const MAX_LEASE_BATCH: u32 = 256;
/// Most items one page may hold.
pub const MAX_PAGE_SIZE: u32 = 1_000;
/// Shortest and longest finalization claim.
pub const MIN_FINALIZE_CLAIM_MS: i64 = 1_000;
/// See [`MIN_FINALIZE_CLAIM_MS`].
pub const MAX_FINALIZE_CLAIM_MS: i64 = 3_600_000;

/// The coordinator: a job store, metrics, a way to wake the planner, and a progress signal.
#[derive(Clone)]
pub struct Coordinator {
    store: Arc<dyn JobStore>,
    metrics: Metrics,
    planner_wake: Arc<Notify>,
    progress: Arc<watch::Sender<u64>>,
    access: AccessPolicy,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coordinator").finish_non_exhaustive()
    }
}

fn require_id(what: &str, id: &str) -> Result<()> {
    if id.trim().is_empty() {
        return Err(Error::invalid(format!("{what} is empty")));
    }
    if id.len() > 512 {
        return Err(Error::invalid(format!("{what} is longer than 512 bytes")));
    }
    Ok(())
}

/// Reasons are shown in status and logs; keep them to one bounded line.
fn one_line(reason: &str) -> String {
    reason
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(2_000)
        .collect()
}

fn page_size(requested: u32, default: u32) -> Result<u32> {
    match requested {
        0 => Ok(default),
        n if n > MAX_PAGE_SIZE => Err(Error::invalid(format!(
            "page size {n} is more than {MAX_PAGE_SIZE}"
        ))),
        n => Ok(n),
    }
}

impl Coordinator {
    /// A coordinator over `store` that allows every URL (see [`Coordinator::with_access`]).
    pub fn new(store: Arc<dyn JobStore>, metrics: Metrics) -> Self {
        Coordinator {
            store,
            metrics,
            planner_wake: Arc::new(Notify::new()),
            progress: Arc::new(watch::Sender::new(0)),
            access: AccessPolicy::unrestricted(),
        }
    }

    /// The same coordinator, reading and writing only where `access` allows.
    pub fn with_access(mut self, access: AccessPolicy) -> Self {
        self.access = access;
        self
    }

    /// Where passes may read and write; the planner checks manifest entries against it.
    pub fn access(&self) -> &AccessPolicy {
        &self.access
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.store
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A signal that changes whenever this process moved a pass toward its end: a job done or
    /// failed, a pass cancelled, or planning finished. The embedded default waits on it instead
    /// of polling; other replicas' changes are not seen.
    pub fn progress(&self) -> watch::Receiver<u64> {
        self.progress.subscribe()
    }

    /// Marks progress (see [`Coordinator::progress`]).
    pub fn note_progress(&self) {
        self.progress
            .send_modify(|count| *count = count.wrapping_add(1));
    }

    /// What the planner waits on.
    pub fn planner_wake(&self) -> Arc<Notify> {
        Arc::clone(&self.planner_wake)
    }

    /// Validates and records a pass; planning starts in the background.
    #[instrument(skip_all, fields(source = %spec.source))]
    pub async fn submit(&self, spec: PassSpec) -> Result<Created> {
        spec.validate()?;
        self.access.check_spec(&spec)?;
        let created = self.store.create_pass(&spec, now_ms()).await?;
        if !created.existing {
            info!(pass_id = %created.pass_id, "pass submitted");
            self.planner_wake.notify_one();
        }
        Ok(created)
    }

    /// A pass's status.
    pub async fn status(&self, pass_id: &str) -> Result<PassStatus> {
        require_id("pass id", pass_id)?;
        self.store.pass_status(pass_id, now_ms()).await
    }

    /// Passes, newest first.
    pub async fn list_passes(&self, size: u32, token: Option<&str>) -> Result<Page<PassStatus>> {
        self.store
            .list_passes(page_size(size, 50)?, token, now_ms())
            .await
    }

    /// A pass's jobs.
    pub async fn list_jobs(
        &self,
        pass_id: &str,
        state: Option<JobState>,
        size: u32,
        token: Option<&str>,
    ) -> Result<Page<Job>> {
        require_id("pass id", pass_id)?;
        self.store
            .list_jobs(pass_id, state, page_size(size, 100)?, token)
            .await
    }

    /// Takes (or renews) the right to finalize a pass for `ttl_ms` (1 s to 1 h); `again`
    /// finalizes a finalized pass again (see [`JobStore::claim_finalization`]).
    #[instrument(skip_all, fields(%pass_id, %holder))]
    pub async fn claim_finalization(
        &self,
        pass_id: &str,
        holder: &str,
        again: bool,
        ttl_ms: i64,
    ) -> Result<FinalizeClaim> {
        require_id("pass id", pass_id)?;
        require_id("holder", holder)?;
        if !(MIN_FINALIZE_CLAIM_MS..=MAX_FINALIZE_CLAIM_MS).contains(&ttl_ms) {
            return Err(Error::invalid(format!(
                "finalization claim of {ttl_ms} ms is outside \
                 {MIN_FINALIZE_CLAIM_MS}..={MAX_FINALIZE_CLAIM_MS} ms"
            )));
        }
        self.store
            .claim_finalization(pass_id, holder, again, ttl_ms, now_ms())
            .await
    }

    /// Records a pass finalized.
    #[instrument(skip_all, fields(%pass_id))]
    pub async fn finish_finalization(&self, pass_id: &str) -> Result<()> {
        require_id("pass id", pass_id)?;
        self.store.finish_finalization(pass_id).await?;
        info!("pass finalized");
        Ok(())
    }

    /// Cancels a pass and returns its status.
    #[instrument(skip_all, fields(%pass_id))]
    pub async fn cancel(&self, pass_id: &str) -> Result<PassStatus> {
        require_id("pass id", pass_id)?;
        self.store.cancel_pass(pass_id, now_ms()).await?;
        self.note_progress();
        info!("pass cancelled");
        self.store.pass_status(pass_id, now_ms()).await
    }

    /// Leases jobs to a worker. `lease_ms` 0 and `max_jobs` 0 take the defaults.
    pub async fn lease(
        &self,
        worker_id: &str,
        max_jobs: u32,
        lease_ms: i64,
    ) -> Result<Vec<LeasedJob>> {
        require_id("worker id", worker_id)?;
        let max_jobs = match max_jobs {
            0 => 1,
            n if n > MAX_LEASE_BATCH => {
                return Err(Error::invalid(format!(
                    "max jobs {n} is more than {MAX_LEASE_BATCH}"
                )));
            }
            n => n,
        };
        let lease_ms = match lease_ms {
            0 => DEFAULT_LEASE_MS,
            ms if !(LEASE_MS_RANGE.0..=LEASE_MS_RANGE.1).contains(&ms) => {
                return Err(Error::invalid(format!(
                    "lease duration {ms} ms is outside {}..={} ms",
                    LEASE_MS_RANGE.0, LEASE_MS_RANGE.1
                )));
            }
            ms => ms,
        };
        let request = LeaseRequest {
            worker_id: worker_id.to_owned(),
            max_jobs,
            lease_ms,
        };
        self.store.lease(&request, now_ms()).await
    }

    /// Extends a lease.
    pub async fn heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        extend_ms: i64,
    ) -> Result<Heartbeat> {
        require_id("job id", job_id)?;
        require_id("lease id", lease_id)?;
        let extend = match extend_ms {
            0 => None,
            ms if !(LEASE_MS_RANGE.0..=LEASE_MS_RANGE.1).contains(&ms) => {
                return Err(Error::invalid(format!(
                    "lease extension {ms} ms is outside {}..={} ms",
                    LEASE_MS_RANGE.0, LEASE_MS_RANGE.1
                )));
            }
            ms => Some(ms),
        };
        self.store
            .heartbeat(job_id, lease_id, extend, now_ms())
            .await
    }

    /// Records a job done.
    #[instrument(level = "debug", skip_all, fields(%job_id))]
    pub async fn complete(
        &self,
        job_id: &str,
        lease_id: &str,
        completion: &Completion,
    ) -> Result<Completed> {
        require_id("job id", job_id)?;
        require_id("lease id", lease_id)?;
        let completed = self
            .store
            .complete(job_id, lease_id, completion, now_ms())
            .await?;
        self.note_progress();
        self.metrics.job_outcomes.with_label_values(&["done"]).inc();
        self.metrics
            .job_duration
            .with_label_values(&["done"])
            .observe(completed.lease_held_ms as f64 / 1_000.0);
        Ok(completed)
    }

    /// Counts a segment job's part as written (fenced by its lease) and says whether the job
    /// assembles its video's document.
    #[instrument(level = "debug", skip_all, fields(%job_id))]
    pub async fn count_segment(
        &self,
        job_id: &str,
        lease_id: &str,
        video_key: &str,
        segment_index: u32,
        segment_count: u32,
    ) -> Result<bool> {
        require_id("job id", job_id)?;
        require_id("lease id", lease_id)?;
        // The heartbeat fences the call: a job whose lease moved on counts nothing.
        self.store
            .heartbeat(job_id, lease_id, None, now_ms())
            .await?;
        let job = self.store.job(job_id).await?;
        self.store
            .count_segment(&job.pass_id, video_key, segment_index, segment_count)
            .await
    }

    /// The workers holding a lease now, for autoscalers.
    pub async fn lease_holders(&self) -> Result<Vec<String>> {
        self.store.lease_holders().await
    }

    /// Records a job failed; the store classifies it by `kind`.
    #[instrument(level = "debug", skip_all, fields(%job_id))]
    pub async fn fail(
        &self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        kind: FailureKind,
    ) -> Result<FailOutcome> {
        require_id("job id", job_id)?;
        require_id("lease id", lease_id)?;
        if reason.trim().is_empty() {
            return Err(Error::invalid("failure reason is empty"));
        }
        let reason = one_line(reason);
        let outcome = self
            .store
            .fail(job_id, lease_id, &reason, kind, now_ms())
            .await?;
        self.note_progress();
        self.metrics
            .job_outcomes
            .with_label_values(&[outcome.state.as_str()])
            .inc();
        Ok(outcome)
    }

    /// Takes a job back unfinished: pending again at once without using an attempt, or
    /// cancelled when its pass was. Returns the job's new state.
    #[instrument(skip_all, fields(%job_id))]
    pub async fn release(&self, job_id: &str, lease_id: &str, reason: &str) -> Result<JobState> {
        require_id("job id", job_id)?;
        require_id("lease id", lease_id)?;
        let state = self.store.release(job_id, lease_id, now_ms()).await?;
        if state.is_terminal() {
            self.note_progress();
        }
        self.metrics
            .job_outcomes
            .with_label_values(&["released"])
            .inc();
        info!(reason = %one_line(reason), %state, "job released");
        Ok(state)
    }

    /// Refreshes the gauges that mirror stored state.
    pub async fn refresh_metrics(&self) -> Result<()> {
        let now = now_ms();
        let mut counts = Vec::new();
        for pass_id in self.store.active_passes().await? {
            match self.store.pass_status(&pass_id, now).await {
                Ok(status) => counts.push((pass_id, status.counts)),
                Err(Error::NotFound(_)) => {}
                Err(error) => return Err(error),
            }
        }
        self.metrics.set_pass_counts(&counts);
        self.metrics
            .leases_in_flight
            .set(self.store.leases_in_flight().await? as i64);
        Ok(())
    }
}

/// The coordinator as the embedded default's worker sees it: the same calls a gRPC worker makes,
/// in process, with the same errors (converted to `vidx_core::Error`).
#[async_trait::async_trait]
impl JobSource for Coordinator {
    async fn lease(
        &self,
        worker_id: &str,
        max_jobs: u32,
        lease_ms: u64,
    ) -> vidx_core::Result<Vec<LeasedJob>> {
        let lease_ms = i64::try_from(lease_ms)
            .map_err(|_| Error::invalid(format!("lease {lease_ms} ms is too long")))?;
        Ok(Coordinator::lease(self, worker_id, max_jobs, lease_ms).await?)
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        extend_ms: u64,
    ) -> vidx_core::Result<Heartbeat> {
        let extend_ms = i64::try_from(extend_ms)
            .map_err(|_| Error::invalid(format!("lease extension {extend_ms} ms is too long")))?;
        Ok(Coordinator::heartbeat(self, job_id, lease_id, extend_ms).await?)
    }

    async fn complete(
        &self,
        job_id: &str,
        lease_id: &str,
        completion: &Completion,
    ) -> vidx_core::Result<()> {
        Coordinator::complete(self, job_id, lease_id, completion).await?;
        Ok(())
    }

    async fn fail(
        &self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        kind: FailureKind,
    ) -> vidx_core::Result<FailOutcome> {
        Ok(Coordinator::fail(self, job_id, lease_id, reason, kind).await?)
    }

    async fn release(&self, job_id: &str, lease_id: &str, reason: &str) -> vidx_core::Result<()> {
        Coordinator::release(self, job_id, lease_id, reason).await?;
        Ok(())
    }

    async fn count_segment(
        &self,
        job_id: &str,
        lease_id: &str,
        video_key: &str,
        segment_index: u32,
        segment_count: u32,
    ) -> vidx_core::Result<bool> {
        Ok(Coordinator::count_segment(
            self,
            job_id,
            lease_id,
            video_key,
            segment_index,
            segment_count,
        )
        .await?)
    }
}
