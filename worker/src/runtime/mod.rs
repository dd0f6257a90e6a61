//! The worker loop: lease jobs, keep their leases alive, run each on its own blocking thread
//! through the [`JobRunner`], report done, split or failed.
//!
//! **Overlap.** Up to `max_in_flight + prefetch` jobs are leased at once. Each runs on a
//! blocking thread of its own (never on the async runtime's workers): fetch, probe and decode
//! there, then the model, then the writes. A runner with a model ([`crate::video_job`]) sends
//! the model work to the one model thread ([`crate::model_thread`]), which decodes up to
//! `max_in_flight` jobs together; the others wait prepared, so the next videos are decoded while
//! the model works, and frames in memory stay bounded by the prefetch.
//!
//! **Leases.** Every job has its own heartbeat task ([`lease::LeaseKeeper`]). A heartbeat that
//! says the pass was cancelled, or that the lease was lost, raises the job's [`CancelFlag`] so
//! the runner stops early and nothing is reported. Coordinator calls that fail for a transient
//! reason are retried with backoff and jitter, those of a job for as long as its lease lasts; the
//! loop never ends on them.
//!
//! **Shutdown** is one `CancellationToken`: once it is cancelled no more jobs are leased, the
//! jobs in hand have until the grace (`WorkerConfig::grace`, less a margin to hand back) to
//! finish, and the rest are handed back to the coordinator (released) for another worker.
//!
//! The coordinator is reached through [`JobSource`]: over gRPC in a cluster
//! (`vidx_core::client::CoordinatorClient`), or in process in the embedded default
//! (`vidx_coordinator::service::Coordinator`, wired in by the `vidx` binary).
//!
//! Every log line of a job, from its lease to its report, is in the job's `job` span (with its
//! `job_id`): the span is entered on the job's blocking thread, on its heartbeat task, on the
//! model thread while it works for the job, and on the bridge's I/O tasks.

pub mod lease;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, error, info, info_span, warn};
use vidx_core::domain::{Completion, FailureKind, LeasedJob, Segment};
use vidx_core::source::JobSource;

use self::lease::{Backoff, LeaseClock, LeaseKeeper, call_with_retry};
use crate::metrics::{Health, JobTimings, Stage, WorkerMetrics};

/// Errors of the worker loop itself (not of a job).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator refused a call for a reason retrying cannot fix.
    #[error("coordinator: {0}")]
    Coordinator(#[from] vidx_core::Error),
}

/// `Result` with the worker loop's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a job was told to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// Its pass was cancelled.
    Cancelled,
    /// Its lease is no longer this worker's.
    LeaseLost,
    /// The worker is shutting down and hands the job back.
    Shutdown,
}

impl StopReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StopReason::Cancelled => "cancelled",
            StopReason::LeaseLost => "lease_lost",
            StopReason::Shutdown => "shutdown",
        }
    }
}

/// Raised when the job should stop: its pass was cancelled, its lease was lost, or the worker
/// hands it back.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicU8>);

impl CancelFlag {
    /// Whether processing should stop.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed) != 0
    }

    /// Why processing should stop, once it should.
    pub fn reason(&self) -> Option<StopReason> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(StopReason::Cancelled),
            2 => Some(StopReason::LeaseLost),
            3 => Some(StopReason::Shutdown),
            _ => None,
        }
    }

    /// Tells the job to stop; the first reason given stays.
    pub fn raise(&self, reason: StopReason) {
        let code = match reason {
            StopReason::Cancelled => 1,
            StopReason::LeaseLost => 2,
            StopReason::Shutdown => 3,
        };
        let _ = self
            .0
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// What processing a job produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Finished; the result is at this URL.
    Done {
        /// Where the evidence was written.
        result_url: Option<String>,
    },
    /// A probe job whose video is longer than a segment: create these segment jobs instead.
    Split(Vec<Segment>),
}

/// Why a job failed.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    /// One line for people, `stage: detail`.
    pub reason: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
}

impl JobFailure {
    /// The kind reported to the coordinator, which decides what becomes of the job.
    pub fn kind(&self) -> FailureKind {
        FailureKind::from_retryable(self.retryable)
    }

    /// A short label of the stage that failed, for metrics (from the reason's `stage:` prefix).
    pub fn label(&self) -> &'static str {
        let stage = self.reason.split(':').next().unwrap_or_default();
        match stage {
            "open" | "probe" | "sample" | "rotation" | "geometry" | "segment" => "decode",
            "model" => "model",
            "index" | "index i/o" | "thumbnail" | "write" | "destination" => "write",
            "task" => "task",
            "evidence" => "evidence",
            "cancelled" => "cancelled",
            _ => "other",
        }
    }
}

/// The work done for one job. Runs on the job's blocking thread; should check `cancel` between
/// steps.
pub trait JobRunner: Send + Sync + 'static {
    /// Runs one leased job to its outcome.
    fn run(&self, job: &LeasedJob, cancel: &CancelFlag)
    -> std::result::Result<Outcome, JobFailure>;

    /// [`Self::run`], noting what each stage took in `timings` (the loop logs and exports them).
    /// By default the stages are not told apart.
    fn run_timed(
        &self,
        job: &LeasedJob,
        cancel: &CancelFlag,
        timings: &mut JobTimings,
    ) -> std::result::Result<Outcome, JobFailure> {
        let _ = timings;
        self.run(job, cancel)
    }
}

/// Decoded frames the default prefetch lets wait in memory: jobs prepared ahead of the model
/// times the sampler's default frame budget per job stays within it.
pub const PREFETCH_FRAME_BUDGET: usize = 32;

/// The default prefetch: as many prepared jobs as [`PREFETCH_FRAME_BUDGET`] holds at the
/// sampler's default `max_frames` (2 at 16 frames a job), at least one.
pub fn default_prefetch() -> usize {
    (PREFETCH_FRAME_BUDGET / vidx_core::domain::DEFAULT_MAX_FRAMES as usize).max(1)
}

/// How the loop runs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// This worker's name.
    pub worker_id: String,
    /// Lease duration asked for; heartbeats come every third of it.
    pub lease: Duration,
    /// Longest wait between lease attempts when there is no work.
    pub idle_poll: Duration,
    /// Stop once no work is found and none is in hand (for the embedded mode and tests),
    /// instead of polling forever.
    pub exit_when_idle: bool,
    /// Jobs the model works on together.
    pub max_in_flight: usize,
    /// Jobs leased and prepared ahead of the model, beyond `max_in_flight` (0: none, one job at
    /// a time from lease to report when `max_in_flight` is 1).
    pub prefetch: usize,
    /// How long, after shutdown, jobs in hand have to finish before they are handed back.
    pub grace: Duration,
    /// Test hook: abort the process when a job's video URL contains this.
    pub abort_on_url: Option<String>,
    /// Where job outcomes and timings are counted.
    pub metrics: Arc<WorkerMetrics>,
    /// Told whether the coordinator answers.
    pub health: Arc<Health>,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_id: format!("worker-{}", std::process::id()),
            lease: Duration::from_secs(120),
            idle_poll: Duration::from_secs(2),
            exit_when_idle: false,
            max_in_flight: 1,
            prefetch: default_prefetch(),
            grace: Duration::from_secs(60),
            abort_on_url: None,
            metrics: Arc::default(),
            health: Arc::default(),
        }
    }
}

impl WorkerConfig {
    /// Jobs held at once.
    pub fn capacity(&self) -> usize {
        self.max_in_flight.max(1) + self.prefetch
    }

    /// When, after shutdown, unfinished jobs are handed back: the grace less a margin for the
    /// release calls (a quarter of the grace, at most 5 s).
    pub fn hand_back_after(&self) -> Duration {
        self.grace - (self.grace / 4).min(Duration::from_secs(5))
    }
}

/// What a worker loop did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Jobs reported done.
    pub done: u64,
    /// Probe jobs split into segments.
    pub split: u64,
    /// Jobs reported failed.
    pub failed: u64,
    /// Jobs dropped because the pass was cancelled or the lease was lost.
    pub dropped: u64,
    /// Jobs handed back at shutdown.
    pub released: u64,
}

/// How one job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobEnd {
    Done,
    Split,
    Failed,
    Dropped,
    Released,
}

impl Tally {
    fn add(&mut self, end: JobEnd) {
        match end {
            JobEnd::Done => self.done += 1,
            JobEnd::Split => self.split += 1,
            JobEnd::Failed => self.failed += 1,
            JobEnd::Dropped => self.dropped += 1,
            JobEnd::Released => self.released += 1,
        }
    }
}

/// What every job task shares.
struct Shared {
    source: Arc<dyn JobSource>,
    runner: Arc<dyn JobRunner>,
    config: WorkerConfig,
    /// Cancelled when the grace is over: unfinished jobs are handed back.
    hand_back: CancellationToken,
}

/// Runs until `shutdown` is cancelled (finishing or handing back the jobs in hand), or, with
/// `exit_when_idle`, until a lease finds no work and no job is in hand. Transient coordinator
/// errors are retried with backoff; a refusal of a lease call ends the loop with an error.
pub async fn run(
    source: Arc<dyn JobSource>,
    runner: Arc<dyn JobRunner>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<Tally> {
    let shared = Arc::new(Shared {
        source,
        runner,
        config,
        hand_back: CancellationToken::new(),
    });
    let config = &shared.config;
    let capacity = config.capacity();
    let lease_ms = config.lease.as_millis() as u64;
    let mut jobs: JoinSet<JobEnd> = JoinSet::new();
    let mut tally = Tally::default();
    let mut idle = Backoff::new(Duration::from_millis(50), config.idle_poll);
    let mut unreachable = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut refused = None;
    while !shutdown.is_cancelled() {
        let room = capacity.saturating_sub(jobs.len());
        let mut pause = None;
        if room > 0 {
            match shared
                .source
                .lease(&config.worker_id, room as u32, lease_ms)
                .await
            {
                Ok(leased) => {
                    config.health.coordinator_call(Ok(()));
                    unreachable.reset();
                    if leased.is_empty() && jobs.is_empty() && config.exit_when_idle {
                        break;
                    }
                    if leased.is_empty() {
                        pause = Some(idle.next_pause());
                    } else {
                        idle.reset();
                        if leased.len() < room {
                            pause = Some(idle.next_pause());
                        }
                    }
                    for job in leased {
                        spawn_job(&mut jobs, &shared, job);
                    }
                }
                Err(error) if error.is_transient() => {
                    config.health.coordinator_call(Err(error.to_string()));
                    let wait = unreachable.next_pause();
                    warn!(%error, retry_in_ms = wait.as_millis() as u64, "cannot lease, retrying");
                    pause = Some(wait);
                }
                Err(error) => {
                    config.health.coordinator_call(Ok(()));
                    refused = Some(error);
                    break;
                }
            }
            if pause.is_none() && jobs.len() < capacity {
                continue;
            }
        }
        // Wait for a job to end (room to lease again), the pause, or shutdown.
        let sleep = tokio::time::sleep(pause.unwrap_or(Duration::from_secs(3_600)));
        tokio::select! {
            Some(ended) = jobs.join_next(), if !jobs.is_empty() => tally.add(joined(ended)),
            () = sleep, if pause.is_some() => {}
            () = shutdown.cancelled() => {}
        }
    }
    if shutdown.is_cancelled() && !jobs.is_empty() {
        let after = config.hand_back_after();
        info!(
            jobs = jobs.len(),
            grace_s = config.grace.as_secs_f64(),
            "shutting down: finishing the jobs in hand"
        );
        let hand_back = shared.hand_back.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            hand_back.cancel();
        });
    }
    while let Some(ended) = jobs.join_next().await {
        tally.add(joined(ended));
    }
    match refused {
        Some(error) => Err(error.into()),
        None => Ok(tally),
    }
}

fn joined(ended: std::result::Result<JobEnd, tokio::task::JoinError>) -> JobEnd {
    ended.unwrap_or_else(|error| {
        // The job's task itself (not its processing, which is caught) went away.
        error!(%error, "job task ended without an outcome");
        JobEnd::Dropped
    })
}

fn spawn_job(jobs: &mut JoinSet<JobEnd>, shared: &Arc<Shared>, job: LeasedJob) {
    let span = info_span!(
        "job",
        job_id = %job.job.job_id,
        video = %job.job.spec.video_url,
        attempt = job.job.attempt
    );
    let shared = Arc::clone(shared);
    jobs.spawn(async move { drive(&shared, job).await }.instrument(span));
}

/// What the job's thread returns.
enum Processed {
    Finished(Outcome),
    Failed(JobFailure),
    Panicked(String),
}

/// Runs one job from its lease to its report.
async fn drive(shared: &Shared, job: LeasedJob) -> JobEnd {
    let config = &shared.config;
    info!(lease_id = %job.lease_id, deadline_ms = job.deadline_ms, "job leased");
    config.metrics.add_in_flight(1);
    let cancel = CancelFlag::default();
    let clock = LeaseClock::new(config.lease);
    let stop_heartbeat = CancellationToken::new();
    let keeper = LeaseKeeper {
        source: Arc::clone(&shared.source),
        job_id: job.job.job_id.clone(),
        lease_id: job.lease_id.clone(),
        lease: config.lease,
        clock: clock.clone(),
        health: Arc::clone(&config.health),
        cancel: cancel.clone(),
    };
    let heartbeat = tokio::spawn(
        keeper
            .keep_alive(stop_heartbeat.clone())
            .instrument(Span::current()),
    );
    let work = {
        let runner = Arc::clone(&shared.runner);
        let job = job.clone();
        let cancel = cancel.clone();
        let abort_on_url = config.abort_on_url.clone();
        let span = Span::current();
        tokio::task::spawn_blocking(move || {
            span.in_scope(|| process(&*runner, &job, &cancel, abort_on_url.as_deref()))
        })
    };
    let ended = tokio::select! {
        processed = work => Some(processed),
        () = shared.hand_back.cancelled() => None,
    };
    let end = match ended {
        Some(processed) => {
            stop_heartbeat.cancel();
            let _ = heartbeat.await;
            let (processed, timings) = processed.unwrap_or_else(|join_error| {
                (
                    Processed::Panicked(join_error.to_string()),
                    JobTimings::default(),
                )
            });
            finish(shared, &job, &cancel, &clock, processed, timings).await
        }
        None => {
            cancel.raise(StopReason::Shutdown);
            stop_heartbeat.cancel();
            let _ = heartbeat.await;
            hand_back(shared, &job, &clock).await
        }
    };
    config.metrics.add_in_flight(-1);
    end
}

/// The job's blocking thread: the test hook, then the runner, its panics caught.
fn process(
    runner: &dyn JobRunner,
    job: &LeasedJob,
    cancel: &CancelFlag,
    abort_on_url: Option<&str>,
) -> (Processed, JobTimings) {
    if let Some(needle) = abort_on_url
        && !needle.is_empty()
        && job.job.spec.video_url.contains(needle)
    {
        error!(
            hook = "VIDX_TEST_ABORT_ON_URL",
            "test hook: aborting the worker process on this video"
        );
        std::process::abort();
    }
    let mut timings = JobTimings::default();
    let ran = catch_unwind(AssertUnwindSafe(|| {
        runner.run_timed(job, cancel, &mut timings)
    }));
    let processed = match ran {
        Ok(Ok(outcome)) => Processed::Finished(outcome),
        Ok(Err(failure)) => Processed::Failed(failure),
        Err(payload) => Processed::Panicked(crate::model_thread::panic_message(&*payload)),
    };
    (processed, timings)
}

/// Reports what processing produced, retrying transient errors while the lease lasts.
async fn finish(
    shared: &Shared,
    job: &LeasedJob,
    cancel: &CancelFlag,
    clock: &LeaseClock,
    processed: Processed,
    timings: JobTimings,
) -> JobEnd {
    let config = &shared.config;
    let source = &shared.source;
    let (job_id, lease_id) = (job.job.job_id.as_str(), job.lease_id.as_str());
    if let Some(reason) = cancel.reason() {
        info!(
            reason = reason.as_str(),
            "job dropped: pass cancelled or lease lost"
        );
        job_finished(config, "released", reason.as_str(), &timings);
        return JobEnd::Dropped;
    }
    let health = &config.health;
    let (end, outcome, label, reported) = match processed {
        Processed::Finished(Outcome::Done { result_url }) => {
            let completion = Completion {
                result_url,
                segments: Vec::new(),
                skipped: timings.skipped,
            };
            let reported = call_with_retry("complete", clock.expires(), health, || {
                source.complete(job_id, lease_id, &completion)
            })
            .await;
            let (outcome, label) = if timings.skipped {
                ("skipped", "already_indexed")
            } else {
                ("done", "ok")
            };
            (JobEnd::Done, outcome, label, reported)
        }
        Processed::Finished(Outcome::Split(segments)) => {
            info!(segments = segments.len(), "video split into segments");
            let completion = Completion {
                result_url: None,
                segments,
                skipped: false,
            };
            let reported = call_with_retry("complete", clock.expires(), health, || {
                source.complete(job_id, lease_id, &completion)
            })
            .await;
            (JobEnd::Split, "split", "ok", reported)
        }
        Processed::Failed(failure) => {
            warn!(reason = %failure.reason, retryable = failure.retryable, "job failed");
            let reported = call_with_retry("fail", clock.expires(), health, || {
                source.fail(job_id, lease_id, &failure.reason, failure.kind())
            })
            .await
            .map(|_| ());
            (JobEnd::Failed, "failed", failure.label(), reported)
        }
        Processed::Panicked(message) => {
            // A panic in processing is a bug, but one video must not stop the pass.
            let reason = format!("processing panicked: {message}");
            warn!(%reason, "job failed");
            let reported = call_with_retry("fail", clock.expires(), health, || {
                source.fail(job_id, lease_id, &reason, FailureKind::Panic)
            })
            .await
            .map(|_| ());
            (JobEnd::Failed, "failed", "panic", reported)
        }
    };
    match reported {
        Ok(()) => {
            job_finished(config, outcome, label, &timings);
            end
        }
        Err(error) if error.is_stale_lease() => {
            warn!(%error, "result rejected: the lease moved on");
            job_finished(config, "released", "lease_lost", &timings);
            JobEnd::Dropped
        }
        Err(error) => {
            warn!(%error, "cannot report the job; its lease will run out and it will run again");
            job_finished(config, "released", "unreported", &timings);
            JobEnd::Dropped
        }
    }
}

/// Shutdown's grace is over and the job has not finished: give it back to the coordinator, so
/// that another worker takes it at once with its attempt unchanged. The release is retried
/// through transient errors until the grace ends (or the lease, if sooner).
async fn hand_back(shared: &Shared, job: &LeasedJob, clock: &LeaseClock) -> JobEnd {
    let config = &shared.config;
    let margin = config.grace.saturating_sub(config.hand_back_after());
    let until = clock.expires().min(Instant::now() + margin);
    let (job_id, lease_id) = (job.job.job_id.as_str(), job.lease_id.as_str());
    let released = call_with_retry("release", until, &config.health, || {
        shared
            .source
            .release(job_id, lease_id, "worker shutting down")
    })
    .await;
    match released {
        Ok(()) => info!("grace over: job handed back unfinished"),
        Err(error) if error.is_stale_lease() => {
            warn!(%error, "grace over: the lease had already moved on");
        }
        Err(error) => {
            warn!(%error, "cannot hand the job back; it runs again once its lease runs out");
        }
    }
    job_finished(config, "released", "shutdown", &JobTimings::default());
    JobEnd::Released
}

/// The job's one line with its outcome and what each stage took, and its metrics.
fn job_finished(config: &WorkerConfig, outcome: &str, reason: &str, timings: &JobTimings) {
    info!(
        outcome,
        reason,
        fetch_s = timings.seconds(Stage::Fetch),
        probe_s = timings.seconds(Stage::Probe),
        decode_s = timings.seconds(Stage::Decode),
        vision_s = timings.seconds(Stage::Vision),
        prefill_s = timings.seconds(Stage::Prefill),
        decode_tokens_s = timings.seconds(Stage::DecodeTokens),
        write_s = timings.seconds(Stage::Write),
        tokens = timings.tokens,
        frames_decoded = timings.frames_decoded,
        frames_kept = timings.frames_kept,
        "job finished"
    );
    config.metrics.job_ended(outcome, reason, timings);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_reason_stays() {
        let flag = CancelFlag::default();
        assert!(!flag.is_raised());
        flag.raise(StopReason::LeaseLost);
        flag.raise(StopReason::Shutdown);
        assert_eq!(flag.reason(), Some(StopReason::LeaseLost));
    }

    #[test]
    fn failures_are_labelled_by_stage() {
        let failure = |reason: &str| JobFailure {
            reason: reason.into(),
            retryable: false,
        };
        assert_eq!(failure("probe: not a video").label(), "decode");
        assert_eq!(failure("model: shape mismatch").label(), "model");
        assert_eq!(failure("index i/o: timed out").label(), "write");
        assert_eq!(failure("something else").label(), "other");
    }

    #[test]
    fn the_hand_back_leaves_time_to_release() {
        let config = WorkerConfig {
            grace: Duration::from_secs(60),
            ..WorkerConfig::default()
        };
        assert_eq!(config.hand_back_after(), Duration::from_secs(55));
        let short = WorkerConfig {
            grace: Duration::from_secs(2),
            ..WorkerConfig::default()
        };
        assert_eq!(short.hand_back_after(), Duration::from_millis(1_500));
        assert_eq!(default_prefetch(), 2);
    }
}
