//! Prometheus metrics: queue depth per pass and state, outstanding jobs (what KEDA scales workers
//! on), leases in flight, job durations and failures. Served as text on `/metrics`.
//!
//! The gauges are read from the shared store at each scrape, so every coordinator replica
//! reports the same values: sum them over replicas and you count each job once per replica.
//! Aggregate with `max`. The counters and the histogram are per replica (sum those).

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use vidx_core::domain::JobState;

/// Every metric the coordinator exports, in its own registry.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Jobs per pass and state.
    pub jobs: IntGaugeVec,
    /// Pending jobs over all active passes.
    pub queue_depth: IntGauge,
    /// Pending, leased and retrying jobs over all active passes: the autoscaling signal, the
    /// same on every replica.
    pub outstanding_jobs: IntGauge,
    /// Leases held.
    pub leases_in_flight: IntGauge,
    /// Time from lease to completion.
    pub job_duration: HistogramVec,
    /// Job outcomes reported by workers, by outcome.
    pub job_outcomes: IntCounterVec,
    /// Failed gRPC requests, by method and error label.
    pub request_errors: IntCounterVec,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some("vidx".into()), None)
            .expect("static registry prefix is valid");
        let jobs = IntGaugeVec::new(
            Opts::new("jobs", "jobs per pass and state"),
            &["pass_id", "state"],
        )
        .expect("static metric definition is valid");
        let queue_depth =
            IntGauge::new("queue_depth", "pending jobs over all active passes").expect("valid");
        let outstanding_jobs = IntGauge::new(
            "outstanding_jobs",
            "pending, leased and retrying jobs over all active passes",
        )
        .expect("valid");
        let leases_in_flight =
            IntGauge::new("leases_in_flight", "job leases currently held").expect("valid");
        let job_duration = HistogramVec::new(
            HistogramOpts::new("job_duration_seconds", "time from lease to completion")
                .buckets(prometheus::exponential_buckets(0.5, 2.0, 14).expect("valid buckets")),
            &["outcome"],
        )
        .expect("valid");
        let job_outcomes = IntCounterVec::new(
            Opts::new("job_outcomes_total", "job results reported by workers"),
            &["outcome"],
        )
        .expect("valid");
        let request_errors = IntCounterVec::new(
            Opts::new(
                "request_errors_total",
                "failed gRPC requests by method and error kind",
            ),
            &["method", "kind"],
        )
        .expect("valid");
        for collector in [
            Box::new(jobs.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queue_depth.clone()),
            Box::new(outstanding_jobs.clone()),
            Box::new(leases_in_flight.clone()),
            Box::new(job_duration.clone()),
            Box::new(job_outcomes.clone()),
            Box::new(request_errors.clone()),
        ] {
            registry
                .register(collector)
                .expect("each metric is registered once");
        }
        Metrics {
            registry,
            jobs,
            queue_depth,
            outstanding_jobs,
            leases_in_flight,
            job_duration,
            job_outcomes,
            request_errors,
        }
    }

    /// Sets the per-pass gauges from fresh counts, dropping passes no longer active.
    pub fn set_pass_counts(&self, passes: &[(String, vidx_core::domain::JobCounts)]) {
        self.jobs.reset();
        let mut depth = 0;
        let mut outstanding = 0;
        for (pass_id, counts) in passes {
            for state in JobState::ALL {
                self.jobs
                    .with_label_values(&[pass_id.as_str(), state.as_str()])
                    .set(counts.get(state) as i64);
            }
            depth += counts.pending;
            outstanding += counts.pending + counts.leased + counts.failed;
        }
        self.queue_depth.set(depth as i64);
        self.outstanding_jobs.set(outstanding as i64);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(error) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vidx_core::domain::JobCounts;

    #[test]
    fn outstanding_jobs_count_pending_leased_and_retrying() {
        let metrics = Metrics::new();
        let counts = |pending, leased, failed, done| JobCounts {
            pending,
            leased,
            failed,
            done,
            ..JobCounts::default()
        };
        metrics.set_pass_counts(&[
            ("a".into(), counts(3, 2, 1, 40)),
            ("b".into(), counts(0, 4, 0, 0)),
        ]);
        assert_eq!(metrics.outstanding_jobs.get(), 10);
        assert_eq!(metrics.queue_depth.get(), 3);
        let text = metrics.encode();
        assert!(text.contains("vidx_outstanding_jobs 10"), "{text}");
        // A pass that is no longer active leaves the gauge.
        metrics.set_pass_counts(&[]);
        assert_eq!(metrics.outstanding_jobs.get(), 0);
    }
}
