//! The worker loop against a real coordinator (memory store), in process and over gRPC as
//! `vidx worker` runs it: outcomes are reported,
//! failures retried, a panicking job fails without stopping the worker, probe jobs split, and a
//! cancelled pass stops the job in hand.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::server::{self, ServerConfig};
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{MemoryStore, RetryPolicy};
use vidx_core::auth::Token;
use vidx_core::client::{ClientConfig, CoordinatorClient};
use vidx_core::domain::{LeasedJob, PassState, Segment};
use vidx_core::source::JobSource;
use vidx_worker::runtime::{CancelFlag, JobFailure, JobRunner, Outcome, WorkerConfig, run};

/// Decides each job's outcome from its video name, the way real inputs differ.
struct ByName {
    calls: AtomicU32,
}

impl JobRunner for ByName {
    fn run(&self, job: &LeasedJob, cancel: &CancelFlag) -> Result<Outcome, JobFailure> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let url = &job.job.spec.video_url;
        if url.contains("long") && job.job.spec.probe {
            return Ok(Outcome::Split(vec![
                Segment {
                    start_s: 0.0,
                    end_s: 10.0,
                },
                Segment {
                    start_s: 10.0,
                    end_s: 15.0,
                },
            ]));
        }
        if url.contains("corrupt") {
            return Err(JobFailure {
                reason: "not a video: invalid data".into(),
                retryable: false,
            });
        }
        if url.contains("flaky") && job.job.attempt < 2 {
            return Err(JobFailure {
                reason: "store timed out".into(),
                retryable: true,
            });
        }
        if url.contains("panic") {
            panic!("decoder bug");
        }
        if url.contains("slow") {
            let started = Instant::now();
            while !cancel.is_raised() && started.elapsed() < Duration::from_secs(20) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(Outcome::Done {
            result_url: Some(format!("{url}.json")),
        })
    }
}

/// A running pass of one probe job per name (the conformance suites' set-up).
async fn pass(coordinator: &Coordinator, names: &[&str]) -> String {
    vidx_coordinator::source_conformance::pass_of(coordinator, names).await
}

fn coordinator() -> Coordinator {
    let retry = RetryPolicy {
        base_backoff_ms: 1,
        max_backoff_ms: 1,
        ..RetryPolicy::default()
    };
    Coordinator::new(Arc::new(MemoryStore::new(retry)), Metrics::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_is_reported_and_one_bad_video_never_stops_the_pass() {
    let coordinator = coordinator();
    every_outcome_through(Arc::new(coordinator.clone()), &coordinator).await;
}

/// The same pass through the gRPC client against a served coordinator, as `vidx worker` runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_grpc_reports_every_outcome() {
    let coordinator = coordinator();
    let token = Token::new("runtime-token").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        coordinator.clone(),
        ServerConfig {
            auth_token: Some(token.clone()),
            ..ServerConfig::default()
        },
        listener,
        None,
        async {
            let _ = server_stopped.await;
        },
    ));
    let client = CoordinatorClient::connect(&ClientConfig::new(url, Some(token)))
        .await
        .unwrap();
    every_outcome_through(Arc::new(client), &coordinator).await;
    let _ = stop_server.send(());
    server.await.unwrap().unwrap();
}

/// Runs a worker over `source` until the pass of five telling videos on `coordinator` ends, and
/// checks each outcome was recorded.
async fn every_outcome_through(source: Arc<dyn JobSource>, coordinator: &Coordinator) {
    let pass_id = pass(coordinator, &["good", "corrupt", "flaky", "panic", "long"]).await;
    let runner = Arc::new(ByName {
        calls: AtomicU32::new(0),
    });
    let config = WorkerConfig {
        exit_when_idle: true,
        idle_poll: Duration::from_millis(5),
        ..WorkerConfig::default()
    };
    let stopped = CancellationToken::new();
    let mut total = vidx_worker::runtime::Tally::default();
    // Retries are due after 1 ms; a few idle rounds pick them up.
    for _ in 0..50 {
        let tally = run(
            source.clone(),
            runner.clone(),
            config.clone(),
            stopped.clone(),
        )
        .await
        .unwrap();
        total.done += tally.done;
        total.failed += tally.failed;
        total.split += tally.split;
        let status = coordinator.status(&pass_id).await.unwrap();
        if status.state == PassState::Finished {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = coordinator.status(&pass_id).await.unwrap();
    assert_eq!(status.state, PassState::Finished, "{status:?}");
    // good, flaky (2nd try), the long video's split + its 2 segments are done; corrupt is dead at
    // once; the panicking job is retried until its attempts run out.
    assert_eq!(
        (status.counts.done, status.counts.dead),
        (5, 2),
        "{status:?}"
    );
    assert_eq!(total.split, 1);
    let reasons: Vec<&str> = status
        .recent_errors
        .iter()
        .map(|error| error.reason.as_str())
        .collect();
    assert!(
        reasons.contains(&"not a video: invalid data"),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|reason| reason.contains("processing panicked")),
        "{reasons:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_pass_stops_the_job_in_hand() {
    let coordinator = coordinator();
    let pass_id = pass(&coordinator, &["slow"]).await;
    let runner = Arc::new(ByName {
        calls: AtomicU32::new(0),
    });
    let config = WorkerConfig {
        exit_when_idle: true,
        lease: Duration::from_millis(1_200),
        ..WorkerConfig::default()
    };
    let stopped = CancellationToken::new();
    let worker = tokio::spawn(run(
        Arc::new(coordinator.clone()),
        runner.clone(),
        config,
        stopped,
    ));
    // Cancelled once the job is in hand (bounded wait), so there is a job to drop.
    for _ in 0..500 {
        if runner.calls.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    coordinator.cancel(&pass_id).await.unwrap();
    let tally = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(tally.dropped, 1);
    let status = coordinator.status(&pass_id).await.unwrap();
    assert_eq!(
        (status.state, status.counts.leased),
        (PassState::Cancelled, 1)
    );
}
