//! The worker's Prometheus metrics, its health, and the HTTP server that serves both.
//!
//! [`WorkerMetrics`] is shared by the worker loop (jobs by outcome, jobs in flight, the per-job
//! stage timings) and the model thread (busy time, tokens). The model busy ratio is the model
//! thread's compute time over wall time since the thread started; it is computed when read,
//! so an idle model's ratio falls between jobs. [`Health`] answers `/healthz` and `/readyz`.
//!
//! [`serve`] runs `/metrics`, `/healthz` and `/readyz` on a listener the caller bound: the
//! library never binds a port itself, so tests bind `127.0.0.1:0`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{
    Counter, Encoder, Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    Opts, Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// A stage of a job, as timed in `vidx_worker_stage_seconds{stage}` and the job's log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Waiting on the object store for the video's bytes while sampling.
    Fetch,
    /// Reading the container's header and index.
    Probe,
    /// Demuxing, decoding and resizing sampled frames (store waits excluded).
    Decode,
    /// The vision tower over the job's frames.
    Vision,
    /// The shared prefix and every question's prompt.
    Prefill,
    /// Generating answer tokens (wall time of the batch steps the job took part in).
    DecodeTokens,
    /// Thumbnails, the document and the index.
    Write,
}

impl Stage {
    /// Every stage, in pipeline order.
    pub const ALL: [Stage; 7] = [
        Stage::Fetch,
        Stage::Probe,
        Stage::Decode,
        Stage::Vision,
        Stage::Prefill,
        Stage::DecodeTokens,
        Stage::Write,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Fetch => "fetch",
            Stage::Probe => "probe",
            Stage::Decode => "decode",
            Stage::Vision => "vision",
            Stage::Prefill => "prefill",
            Stage::DecodeTokens => "decode_tokens",
            Stage::Write => "write",
        }
    }
}

/// What one job took, filled in by the runner as it goes and recorded once the job ends.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobTimings {
    /// Seconds per stage.
    pub stages: BTreeMap<Stage, f64>,
    /// Answer tokens generated.
    pub tokens: u64,
    /// Frames the decoder produced.
    pub frames_decoded: u64,
    /// Frames kept for the model.
    pub frames_kept: u64,
    /// The job's document already existed, so nothing was computed.
    pub skipped: bool,
}

impl JobTimings {
    /// Adds `seconds` to `stage`.
    pub fn add(&mut self, stage: Stage, seconds: f64) {
        *self.stages.entry(stage).or_insert(0.0) += seconds;
    }

    /// Adds the time since `started` to `stage`.
    pub fn add_since(&mut self, stage: Stage, started: Instant) {
        self.add(stage, started.elapsed().as_secs_f64());
    }

    /// Seconds spent in `stage` (0 when it did not run).
    pub fn seconds(&self, stage: Stage) -> f64 {
        self.stages.get(&stage).copied().unwrap_or(0.0)
    }
}

/// Totals since the metrics were created, for `vidx bench pipeline` and tests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Seconds per stage summed over jobs.
    pub stage_seconds: BTreeMap<Stage, f64>,
    /// Jobs that ended, by `(outcome, reason)`.
    pub jobs: BTreeMap<(String, String), u64>,
    /// Seconds the model thread spent computing.
    pub model_busy_seconds: f64,
    /// [`Self::model_busy_seconds`] over wall time since the model thread started.
    pub model_busy_ratio: f64,
    /// Answer tokens generated.
    pub generated_tokens: u64,
    /// Frames decoded.
    pub frames_decoded: u64,
    /// Frames kept.
    pub frames_kept: u64,
}

/// Every metric the worker exports, in its own registry (names in the crate's contract).
pub struct WorkerMetrics {
    registry: Registry,
    jobs_total: IntCounterVec,
    stage_seconds: HistogramVec,
    generated_tokens: IntCounter,
    tokens_per_second: Gauge,
    frames_decoded: IntCounter,
    frames_kept: IntCounter,
    jobs_in_flight: IntGauge,
    model_busy_seconds: Counter,
    model_busy_ratio: Gauge,
    /// Plain totals behind [`WorkerMetrics::snapshot`] (a histogram's sums are not per label).
    totals: Mutex<Totals>,
}

#[derive(Default)]
struct Totals {
    stage_seconds: BTreeMap<Stage, f64>,
    jobs: BTreeMap<(String, String), u64>,
    model_started: Option<Instant>,
    model_busy: Duration,
    /// Tokens and decode seconds of the last finished job, for the tokens/s gauge.
    generated_tokens: u64,
}

impl std::fmt::Debug for WorkerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerMetrics").finish_non_exhaustive()
    }
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn valid<T>(metric: prometheus::Result<T>) -> T {
    metric.expect("static metric definitions are valid")
}

impl WorkerMetrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = valid(Registry::new_custom(Some("vidx_worker".into()), None));
        let jobs_total = valid(IntCounterVec::new(
            Opts::new("jobs_total", "jobs that ended, by outcome and reason"),
            &["outcome", "reason"],
        ));
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
        ];
        let stage_seconds = valid(HistogramVec::new(
            HistogramOpts::new("stage_seconds", "seconds a job spent per stage").buckets(buckets),
            &["stage"],
        ));
        let generated_tokens = valid(IntCounter::new(
            "generated_tokens_total",
            "answer tokens generated",
        ));
        let tokens_per_second = valid(Gauge::new(
            "tokens_per_second",
            "answer tokens per second of token decoding, over the last finished job",
        ));
        let frames_decoded = valid(IntCounter::new(
            "frames_decoded_total",
            "frames the decoder produced",
        ));
        let frames_kept = valid(IntCounter::new(
            "frames_kept_total",
            "sampled frames kept for the model",
        ));
        let jobs_in_flight = valid(IntGauge::new(
            "jobs_in_flight",
            "jobs leased and not yet reported",
        ));
        let model_busy_seconds = valid(Counter::new(
            "model_busy_seconds_total",
            "seconds the model thread spent computing",
        ));
        let model_busy_ratio = valid(Gauge::new(
            "model_busy_ratio",
            "model compute time over wall time since the model thread started",
        ));
        for collector in [
            Box::new(jobs_total.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(stage_seconds.clone()),
            Box::new(generated_tokens.clone()),
            Box::new(tokens_per_second.clone()),
            Box::new(frames_decoded.clone()),
            Box::new(frames_kept.clone()),
            Box::new(jobs_in_flight.clone()),
            Box::new(model_busy_seconds.clone()),
            Box::new(model_busy_ratio.clone()),
        ] {
            valid(registry.register(collector));
        }
        // Every stage appears from the first scrape, at zero.
        for stage in Stage::ALL {
            stage_seconds.with_label_values(&[stage.as_str()]);
        }
        WorkerMetrics {
            registry,
            jobs_total,
            stage_seconds,
            generated_tokens,
            tokens_per_second,
            frames_decoded,
            frames_kept,
            jobs_in_flight,
            model_busy_seconds,
            model_busy_ratio,
            totals: Mutex::new(Totals::default()),
        }
    }

    fn totals(&self) -> std::sync::MutexGuard<'_, Totals> {
        self.totals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A job was leased (`+1`) or ended (`-1`).
    pub fn add_in_flight(&self, delta: i64) {
        self.jobs_in_flight.add(delta);
    }

    /// Records a job that ended: its outcome, and its stage timings when it ran.
    pub fn job_ended(&self, outcome: &str, reason: &str, timings: &JobTimings) {
        self.jobs_total.with_label_values(&[outcome, reason]).inc();
        for (stage, seconds) in &timings.stages {
            self.stage_seconds
                .with_label_values(&[stage.as_str()])
                .observe(*seconds);
        }
        self.generated_tokens.inc_by(timings.tokens);
        self.frames_decoded.inc_by(timings.frames_decoded);
        self.frames_kept.inc_by(timings.frames_kept);
        let decode_s = timings.seconds(Stage::DecodeTokens);
        if timings.tokens > 0 && decode_s > 0.0 {
            self.tokens_per_second.set(timings.tokens as f64 / decode_s);
        }
        let mut totals = self.totals();
        for (stage, seconds) in &timings.stages {
            *totals.stage_seconds.entry(*stage).or_insert(0.0) += seconds;
        }
        *totals
            .jobs
            .entry((outcome.to_owned(), reason.to_owned()))
            .or_insert(0) += 1;
        totals.generated_tokens += timings.tokens;
    }

    /// The model thread started: the busy ratio's wall clock starts here.
    pub fn model_started(&self) {
        self.totals().model_started.get_or_insert_with(Instant::now);
    }

    /// The model thread computed for `busy`.
    pub fn model_busy(&self, busy: Duration) {
        self.model_busy_seconds.inc_by(busy.as_secs_f64());
        self.totals().model_busy += busy;
        self.refresh();
    }

    /// Recomputes the busy ratio for the time now (called before every scrape).
    pub fn refresh(&self) {
        let ratio = self.busy_ratio();
        self.model_busy_ratio.set(ratio);
    }

    fn busy_ratio(&self) -> f64 {
        let totals = self.totals();
        let Some(started) = totals.model_started else {
            return 0.0;
        };
        let wall = started.elapsed().as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (totals.model_busy.as_secs_f64() / wall).min(1.0)
    }

    /// Totals so far.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let model_busy_ratio = self.busy_ratio();
        let totals = self.totals();
        MetricsSnapshot {
            stage_seconds: totals.stage_seconds.clone(),
            jobs: totals.jobs.clone(),
            model_busy_seconds: totals.model_busy.as_secs_f64(),
            model_busy_ratio,
            generated_tokens: totals.generated_tokens,
            frames_decoded: self.frames_decoded.get(),
            frames_kept: self.frames_kept.get(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.refresh();
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            warn!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// What `/healthz` and `/readyz` answer.
#[derive(Debug, Default)]
pub struct Health {
    model_loaded: AtomicBool,
    /// `None` while the coordinator answered the last call; else why it did not.
    coordinator_error: Mutex<Option<String>>,
    /// Whether any call reached the coordinator yet.
    coordinator_seen: AtomicBool,
}

impl Health {
    /// The model is loaded.
    pub fn set_model_loaded(&self) {
        self.model_loaded.store(true, Ordering::Relaxed);
    }

    /// Records whether the last coordinator call got an answer.
    pub fn coordinator_call(&self, result: Result<(), String>) {
        let mut error = self
            .coordinator_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if result.is_ok() {
            self.coordinator_seen.store(true, Ordering::Relaxed);
        }
        *error = result.err();
    }

    /// `Ok` when ready to work, else the reason in one line.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.model_loaded.load(Ordering::Relaxed) {
            return Err("model not loaded".into());
        }
        let error = self
            .coordinator_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(error) = error.as_ref() {
            return Err(format!("coordinator unreachable: {error}"));
        }
        if !self.coordinator_seen.load(Ordering::Relaxed) {
            return Err("coordinator not reached yet".into());
        }
        Ok(())
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<WorkerMetrics>,
    health: Arc<Health>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let health = Arc::clone(&health);
                async move {
                    match health.readiness() {
                        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
                        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
                    }
                }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_job_shows_in_every_metric_it_touches() {
        let metrics = WorkerMetrics::new();
        let mut timings = JobTimings::default();
        timings.add(Stage::Decode, 0.5);
        timings.add(Stage::DecodeTokens, 2.0);
        timings.tokens = 10;
        timings.frames_decoded = 30;
        timings.frames_kept = 4;
        metrics.job_ended("done", "ok", &timings);
        let text = metrics.encode();
        assert!(text.contains(r#"vidx_worker_jobs_total{outcome="done",reason="ok"} 1"#));
        assert!(text.contains(r#"vidx_worker_stage_seconds_count{stage="decode"} 1"#));
        assert!(text.contains(r#"vidx_worker_stage_seconds_count{stage="write"} 0"#));
        assert!(text.contains("vidx_worker_tokens_per_second 5"));
        assert!(text.contains("vidx_worker_frames_decoded_total 30"));
        let snapshot = metrics.snapshot();
        assert_eq!(snapshot.stage_seconds[&Stage::Decode], 0.5);
        assert_eq!(snapshot.jobs[&("done".into(), "ok".into())], 1);
    }

    #[test]
    fn readiness_needs_the_model_and_the_coordinator() {
        let health = Health::default();
        assert_eq!(health.readiness(), Err("model not loaded".into()));
        health.set_model_loaded();
        assert!(health.readiness().is_err());
        health.coordinator_call(Ok(()));
        assert_eq!(health.readiness(), Ok(()));
        health.coordinator_call(Err("connection refused".into()));
        assert_eq!(
            health.readiness(),
            Err("coordinator unreachable: connection refused".into())
        );
    }
}
