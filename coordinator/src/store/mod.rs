//! The durable job store: the one boundary behind which all pass and job state lives.
//!
//! Two implementations share one behaviour, checked by one conformance suite
//! ([`conformance`]): [`RedisStore`] for clusters (every transition one atomic Lua script, so any
//! number of coordinator replicas can serve the same Redis) and [`MemoryStore`] for local runs.
//! Every method takes `now_ms` from the caller so tests can drive time.

#[cfg(feature = "testsuite")]
pub mod conformance;
mod memory;
mod redis;

use async_trait::async_trait;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
use crate::error::Result;
use vidx_core::domain::{
    Completed, Completion, Created, FailOutcome, FailureKind, Heartbeat, Job, JobState, LeasedJob,
    NewJob, Page, PassSpec, PassStatus,
};

/// Default number of presumed worker crashes after which a job is dead.
pub const DEFAULT_MAX_CRASHES: u32 = 2;

/// How failed jobs are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Backoff before the first retry, in milliseconds; doubles with every attempt.
    pub base_backoff_ms: i64,
    /// Upper bound of the backoff.
    pub max_backoff_ms: i64,
    /// A job whose lease expired with no word from its worker this many times (the worker
    /// presumed crashed on it: a segfault, an OOM kill) is dead, so a poison video cannot take
    /// down worker after worker. At least 1.
    pub max_crashes: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_backoff_ms: 2_000,
            max_backoff_ms: 300_000,
            max_crashes: DEFAULT_MAX_CRASHES,
        }
    }
}

/// The reason a job dead of crashes is given.
pub fn crash_reason(crashes: u32) -> String {
    format!("worker crashed {crashes} times on this video")
}

impl RetryPolicy {
    /// Backoff after the given (1-based) failed attempt.
    pub fn backoff_ms(&self, attempt: u32) -> i64 {
        let exponent = attempt.saturating_sub(1).min(30);
        self.base_backoff_ms
            .saturating_mul(1_i64 << exponent)
            .min(self.max_backoff_ms)
    }
}

/// A request for leases.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    /// Who asks (for logs and status).
    pub worker_id: String,
    /// At most this many jobs.
    pub max_jobs: u32,
    /// Lease duration.
    pub lease_ms: i64,
}

/// A pass whose planning is not finished, with where planning got to.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanningPass {
    /// The pass id.
    pub pass_id: String,
    /// Its spec.
    pub spec: PassSpec,
    /// The last source location already turned into jobs (object key or manifest line number).
    pub cursor: Option<String>,
}

/// Durable pass and job state. Every method is atomic on its own.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Creates a pass in the planning state, or returns the pass that already has the spec's
    /// idempotency key.
    async fn create_pass(&self, spec: &PassSpec, now_ms: i64) -> Result<Created>;

    /// Adds jobs to a pass and records the planning cursor after them. Adding a job that exists
    /// (same pass, video and segment) is a no-op, so a planner that resumes after a crash cannot
    /// create duplicates. Returns the number of jobs actually created.
    async fn add_jobs(
        &self,
        pass_id: &str,
        jobs: &[NewJob],
        cursor: Option<&str>,
        now_ms: i64,
    ) -> Result<u64>;

    /// Ends planning: the pass becomes running (or failed with the given reason).
    async fn finish_planning(&self, pass_id: &str, error: Option<&str>) -> Result<()>;

    /// Takes (or renews) the exclusive right to plan a pass for `ttl_ms`, so two replicas never
    /// plan the same pass at once. Returns false when another holder has it.
    async fn claim_planning(
        &self,
        pass_id: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool>;

    /// Passes still in the planning state, with their cursors.
    async fn planning_passes(&self) -> Result<Vec<PlanningPass>>;

    /// The spec of a pass.
    async fn pass_spec(&self, pass_id: &str) -> Result<PassSpec>;

    /// A pass's status.
    async fn pass_status(&self, pass_id: &str, now_ms: i64) -> Result<PassStatus>;

    /// Passes, newest first.
    async fn list_passes(
        &self,
        page_size: u32,
        cursor: Option<&str>,
        now_ms: i64,
    ) -> Result<Page<PassStatus>>;

    /// A pass's jobs in creation order, optionally only those in one state.
    async fn list_jobs(
        &self,
        pass_id: &str,
        state: Option<JobState>,
        page_size: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Job>>;

    /// One job.
    async fn job(&self, job_id: &str) -> Result<Job>;

    /// Cancels a pass: pending and failed jobs become cancelled now, leased jobs when their
    /// worker next reports. Cancelling a cancelled or finished pass is a no-op.
    async fn cancel_pass(&self, pass_id: &str, now_ms: i64) -> Result<()>;

    /// Leases up to `max_jobs` jobs, oldest first, after returning due retries to pending.
    async fn lease(&self, request: &LeaseRequest, now_ms: i64) -> Result<Vec<LeasedJob>>;

    /// Extends a lease. Fails with `StaleLease` when the lease is not the job's current one.
    async fn heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        extend_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Heartbeat>;

    /// Marks a job done. A probe job completed with segments is split: it becomes done and one
    /// new pending job per segment is created. Fails with `StaleLease` on a stale lease.
    async fn complete(
        &self,
        job_id: &str,
        lease_id: &str,
        completion: &Completion,
        now_ms: i64,
    ) -> Result<Completed>;

    /// Records a failure and classifies it, here and nowhere else: a retryable one schedules a
    /// retry with backoff while attempts remain; a permanent one makes the job dead; a panic is
    /// retried like a retryable failure the first time and makes the job dead the second time.
    /// A job of a stopped pass becomes cancelled. Fails with `StaleLease` on a stale lease.
    async fn fail(
        &self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        kind: FailureKind,
        now_ms: i64,
    ) -> Result<FailOutcome>;

    /// Hands a leased job back unfinished: it is pending at once (leasable by the next call),
    /// and the attempt its lease counted is given back, so the next lease carries the same
    /// attempt number. A job of a stopped pass becomes cancelled. Counted in the pass's
    /// `released`. Fails with `StaleLease` on a stale lease. Returns the job's new state.
    async fn release(&self, job_id: &str, lease_id: &str, now_ms: i64) -> Result<JobState>;

    /// Returns up to `limit` jobs whose lease deadline passed to pending, counting a crash on
    /// each; a job is dead when out of attempts, or at the policy's `max_crashes` with
    /// [`crash_reason`]. Safe to run from several replicas at once. Returns how many were reaped.
    async fn reap_expired(&self, now_ms: i64, limit: u32) -> Result<u64>;

    /// Number of leases currently held, over all passes.
    async fn leases_in_flight(&self) -> Result<u64>;

    /// The workers holding at least one lease now, sorted, each once. O(leases in flight).
    async fn lease_holders(&self) -> Result<Vec<String>>;

    /// Ids of passes that are planning or running, for metrics.
    async fn active_passes(&self) -> Result<Vec<String>>;

    /// Deletes passes that ended (finished, cancelled or failed, with no lease outstanding) and
    /// were created before `created_before_ms`, with every job and index of theirs, looking at
    /// the `limit` oldest passes at most. Returns the ids of the passes deleted. Passes that are
    /// still planning or have work left are kept, whatever their age.
    async fn expire_passes(&self, created_before_ms: i64, limit: u32) -> Result<Vec<String>>;

    /// Records that segment `segment_index` of the `segment_count` segments of one video of a
    /// pass has its part written, and says whether the caller assembles the video's document.
    /// Exactly one segment per video is ever designated: the one whose report made the set
    /// complete. It is designated again each time it reports again (its job retried after a crash
    /// mid-assembly), so the assembly is retried with the job; every other report answers false.
    /// `video_key` names the video within the pass (the worker's video id).
    async fn count_segment(
        &self,
        pass_id: &str,
        video_key: &str,
        segment_index: u32,
        segment_count: u32,
    ) -> Result<bool>;

    /// Takes (or renews) the right to finalize a pass (write its manifest, table parts and search
    /// index) for `ttl_ms`. A holder that crashes loses it when the time runs out, so another
    /// replica finalizes instead; once [`JobStore::finish_finalization`] ran, every claim
    /// answers [`FinalizeClaim::Done`], unless `again` asks to finalize a finalized pass again
    /// (`vidx finalize`): that claim is taken like any other, and is busy while another holds it.
    async fn claim_finalization(
        &self,
        pass_id: &str,
        holder: &str,
        again: bool,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<FinalizeClaim>;

    /// Records that a pass was finalized: later claims answer [`FinalizeClaim::Done`].
    async fn finish_finalization(&self, pass_id: &str) -> Result<()>;
}

/// The answer to [`JobStore::claim_finalization`].
pub use vidx_core::domain::FinalizeClaim;

/// Checks the arguments of [`JobStore::count_segment`] before any state changes.
pub(crate) fn validate_segment_count(
    video_key: &str,
    segment_index: u32,
    segment_count: u32,
) -> Result<()> {
    if video_key.is_empty() || video_key.len() > 128 || video_key.contains('|') {
        return Err(crate::error::Error::invalid(
            "video key must be 1 to 128 bytes without '|'",
        ));
    }
    if segment_count == 0 || segment_count > 10_000 || segment_index >= segment_count {
        return Err(crate::error::Error::invalid(format!(
            "segment {segment_index} of {segment_count} is not a valid segment"
        )));
    }
    Ok(())
}

/// A digest of what makes two jobs of a pass the same work: URL, time range and whether it is a
/// probe job. Both stores de-duplicate by it.
pub(crate) fn identity_digest(job: &NewJob) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(job.video_url.as_bytes());
    hasher.update([0]);
    hasher.update(job.start_s.to_bits().to_le_bytes());
    hasher.update(job.end_s.to_bits().to_le_bytes());
    hasher.update([u8::from(job.probe)]);
    hasher.finalize().into()
}

/// The in-memory store's job id of a video segment: a pure function of pass and identity, so
/// re-planning the same source never creates a second job for the same work.
pub fn job_id_for(pass_id: &str, job: &NewJob) -> String {
    let hex: String = identity_digest(job)
        .iter()
        .take(10)
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("{pass_id}.{hex}")
}

/// Turns the segments a worker reported into the jobs that replace a probe job.
pub fn segment_jobs(parent: &NewJob, segments: &[vidx_core::domain::Segment]) -> Vec<NewJob> {
    segments
        .iter()
        .map(|segment| NewJob {
            video_url: parent.video_url.clone(),
            start_s: segment.start_s,
            end_s: segment.end_s,
            size_bytes: parent.size_bytes,
            etag: parent.etag.clone(),
            probe: false,
        })
        .collect()
}

/// Checks segments reported by a worker before any state changes.
pub fn validate_segments(segments: &[vidx_core::domain::Segment]) -> Result<()> {
    if segments.len() > 10_000 {
        return Err(crate::error::Error::invalid(format!(
            "{} segments is more than 10000",
            segments.len()
        )));
    }
    for segment in segments {
        if !(segment.start_s.is_finite() && segment.end_s.is_finite())
            || segment.start_s < 0.0
            || segment.end_s <= segment.start_s
        {
            return Err(crate::error::Error::invalid(format!(
                "segment [{}, {}) is not a valid time range",
                segment.start_s, segment.end_s
            )));
        }
    }
    Ok(())
}

/// Opaque, checked page tokens: a token is only accepted by the listing that issued it.
pub(crate) mod page_token {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    use crate::error::{Error, Result};

    /// Encodes a cursor bound to `scope` (a description of the listing).
    pub fn encode(scope: &str, position: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("v1\n{scope}\n{position}"))
    }

    /// Decodes a token, rejecting one from another listing.
    pub fn decode(scope: &str, token: &str) -> Result<String> {
        let invalid = || Error::invalid("page token was not issued for this listing");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = text.splitn(3, '\n');
        match (parts.next(), parts.next(), parts.next()) {
            (Some("v1"), Some(token_scope), Some(position)) if token_scope == scope => {
                Ok(position.to_owned())
            }
            _ => Err(invalid()),
        }
    }
}

/// Sum of recent per-10-second completion buckets into a rate, and an ETA from it.
pub(crate) fn throughput(
    buckets: &[(i64, u64)],
    created_at_ms: i64,
    remaining: u64,
    now_ms: i64,
) -> (f64, Option<f64>) {
    const WINDOW_MS: i64 = 120_000;
    let window_start = now_ms - WINDOW_MS;
    let finished: u64 = buckets
        .iter()
        .filter(|(bucket, _)| bucket * BUCKET_MS >= window_start - BUCKET_MS)
        .map(|(_, count)| count)
        .sum();
    let span_ms = (now_ms - created_at_ms.max(window_start - BUCKET_MS)).max(1_000);
    let rate = finished as f64 * 1_000.0 / span_ms as f64;
    let eta = match (remaining, rate > 0.0) {
        (0, _) => Some(0.0),
        (_, true) => Some(remaining as f64 / rate),
        (_, false) => None,
    };
    (rate, eta)
}

/// Width of one throughput bucket.
pub(crate) const BUCKET_MS: i64 = 10_000;

/// The pass state shown to users: running with every job terminal reads as finished.
pub(crate) fn effective_state(
    stored: vidx_core::domain::PassState,
    counts: &vidx_core::domain::JobCounts,
) -> vidx_core::domain::PassState {
    use vidx_core::domain::PassState;
    if stored == PassState::Running && counts.finished() == counts.total() {
        PassState::Finished
    } else {
        stored
    }
}
