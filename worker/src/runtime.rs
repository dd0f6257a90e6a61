//! The worker loop: lease a job, keep its lease alive, run the [`JobRunner`] on a blocking thread,
//! report done, split or failed. A heartbeat that says the pass was cancelled, or that the lease
//! was lost, raises the job's [`CancelFlag`] so the runner stops early and nothing is reported.
//!
//! The coordinator is reached through [`JobSource`]: over gRPC in a cluster
//! (`vidx_core::client::CoordinatorClient`), or in process in the embedded default
//! (`vidx_coordinator::service::Coordinator`, wired in by the `vidx` binary).
//!
//! Every log line of a job, from its lease to its report, is in the job's `job` span (with its
//! `job_id`): the span is entered on the blocking thread that runs the job and on the heartbeat
//! task, not only on the loop's own task.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{Instrument, Span, info, info_span, warn};
use vidx_core::domain::{Completion, FailureKind, LeasedJob, Segment};
use vidx_core::source::JobSource;

/// Errors of the worker loop itself (not of a job).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator refused a call or could not be reached for good.
    #[error("coordinator: {0}")]
    Coordinator(#[from] vidx_core::Error),
}

/// `Result` with the worker loop's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Raised when the job should stop: its pass was cancelled or its lease was lost.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(Arc<AtomicBool>);

impl CancelFlag {
    /// Whether processing should stop.
    pub fn is_raised(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    fn raise(&self) {
        self.0.store(true, Ordering::Relaxed);
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
    /// One line for people.
    pub reason: String,
    /// Whether another attempt could succeed.
    pub retryable: bool,
}

impl JobFailure {
    /// The kind reported to the coordinator, which decides what becomes of the job.
    pub fn kind(&self) -> FailureKind {
        FailureKind::from_retryable(self.retryable)
    }
}

/// The work done for one job. Runs on a blocking thread; should check `cancel` between steps.
pub trait JobRunner: Send + Sync + 'static {
    /// Runs one leased job to its outcome.
    fn run(&self, job: &LeasedJob, cancel: &CancelFlag)
    -> std::result::Result<Outcome, JobFailure>;
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
    /// Stop once no work is found (for the embedded mode and tests), instead of polling forever.
    pub exit_when_idle: bool,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            worker_id: format!("worker-{}", std::process::id()),
            lease: Duration::from_secs(120),
            idle_poll: Duration::from_secs(2),
            exit_when_idle: false,
        }
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
}

/// Runs until `shutdown` is cancelled (finishing the job in hand), or, with `exit_when_idle`,
/// until a lease finds no work. Transient coordinator errors are retried with backoff.
pub async fn run(
    source: Arc<dyn JobSource>,
    runner: Arc<dyn JobRunner>,
    config: WorkerConfig,
    shutdown: CancellationToken,
) -> Result<Tally> {
    let mut tally = Tally::default();
    let mut idle = Duration::from_millis(50);
    let lease_ms = config.lease.as_millis() as u64;
    while !shutdown.is_cancelled() {
        let leased = match source.lease(&config.worker_id, 1, lease_ms).await {
            Ok(leased) => leased,
            Err(error) if error.is_transient() => {
                warn!(%error, "cannot lease, retrying");
                idle = (idle * 2).min(config.idle_poll);
                sleep_or_shutdown(idle, &shutdown).await;
                continue;
            }
            Err(error) => return Err(error.into()),
        };
        if leased.is_empty() {
            if config.exit_when_idle {
                break;
            }
            idle = (idle * 2).min(config.idle_poll);
            sleep_or_shutdown(idle, &shutdown).await;
            continue;
        }
        idle = Duration::from_millis(50);
        for job in leased {
            let span = info_span!("job", job_id = %job.job.job_id, video = %job.job.spec.video_url, attempt = job.job.attempt);
            run_one(&source, &runner, &config, job, &mut tally)
                .instrument(span)
                .await?;
        }
    }
    Ok(tally)
}

async fn sleep_or_shutdown(duration: Duration, shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(duration) => {}
        () = shutdown.cancelled() => {}
    }
}

async fn run_one(
    source: &Arc<dyn JobSource>,
    runner: &Arc<dyn JobRunner>,
    config: &WorkerConfig,
    job: LeasedJob,
    tally: &mut Tally,
) -> Result<()> {
    info!(lease_id = %job.lease_id, deadline_ms = job.deadline_ms, "job leased");
    let cancel = CancelFlag::default();
    let stop_heartbeat = CancellationToken::new();
    let heartbeat = tokio::spawn(
        keep_alive(
            Arc::clone(source),
            job.job.job_id.clone(),
            job.lease_id.clone(),
            config.lease,
            cancel.clone(),
            stop_heartbeat.clone(),
        )
        .instrument(Span::current()),
    );
    let processed = {
        let runner = Arc::clone(runner);
        let job = job.clone();
        let cancel = cancel.clone();
        let span = Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| runner.run(&job, &cancel))).await
    };
    stop_heartbeat.cancel();
    let _ = heartbeat.await;

    let (job_id, lease_id) = (job.job.job_id.as_str(), job.lease_id.as_str());
    if cancel.is_raised() {
        info!("job dropped: pass cancelled or lease lost");
        tally.dropped += 1;
        return Ok(());
    }
    let reported = match processed {
        Ok(Ok(Outcome::Done { result_url })) => {
            tally.done += 1;
            source
                .complete(
                    job_id,
                    lease_id,
                    &Completion {
                        result_url,
                        segments: Vec::new(),
                    },
                )
                .await
        }
        Ok(Ok(Outcome::Split(segments))) => {
            info!(segments = segments.len(), "video split into segments");
            tally.split += 1;
            source
                .complete(
                    job_id,
                    lease_id,
                    &Completion {
                        result_url: None,
                        segments,
                    },
                )
                .await
        }
        Ok(Err(failure)) => {
            warn!(reason = %failure.reason, retryable = failure.retryable, "job failed");
            tally.failed += 1;
            source
                .fail(job_id, lease_id, &failure.reason, failure.kind())
                .await
                .map(|_| ())
        }
        Err(join_error) => {
            // A panic in processing is a bug, but one video must not stop the pass.
            let reason = format!("processing panicked: {join_error}");
            warn!(%reason, "job failed");
            tally.failed += 1;
            source
                .fail(job_id, lease_id, &reason, FailureKind::Panic)
                .await
                .map(|_| ())
        }
    };
    match reported {
        Ok(()) => Ok(()),
        Err(error) if error.is_stale_lease() => {
            warn!(%error, "result rejected: the lease moved on");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Heartbeats every third of the lease until told to stop; raises `cancel` when the pass was
/// cancelled or the lease is no longer ours.
async fn keep_alive(
    source: Arc<dyn JobSource>,
    job_id: String,
    lease_id: String,
    lease: Duration,
    cancel: CancelFlag,
    stop: CancellationToken,
) {
    let every = (lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = stop.cancelled() => return,
        }
        match source
            .heartbeat(&job_id, &lease_id, lease.as_millis() as u64)
            .await
        {
            Ok(beat) if beat.cancelled => {
                cancel.raise();
                return;
            }
            Ok(_) => {}
            Err(error) if error.is_transient() => warn!(%error, "heartbeat failed, will retry"),
            Err(error) => {
                warn!(%error, "lease lost");
                cancel.raise();
                return;
            }
        }
    }
}
