//! The worker loop's overlap and lifecycle against a real coordinator (memory store), in
//! process and over gRPC: the prefetch bounds the jobs in hand, shutdown hands back what cannot
//! finish within the grace, and a coordinator that goes away mid-job and comes back is waited
//! out, not fatal.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::server::{self, ServerConfig};
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{MemoryStore, RetryPolicy};
use vidx_core::client::{ClientConfig, CoordinatorClient};
use vidx_core::domain::{JobState, LeasedJob, PassState};
use vidx_worker::runtime::{CancelFlag, JobFailure, JobRunner, Outcome, WorkerConfig, run};

/// Counts how many jobs run at once; each takes `hold` (or until cancelled, when `until_cancelled`).
struct Holding {
    running: AtomicUsize,
    most: AtomicUsize,
    /// The attempt number of the last job started.
    attempt: AtomicUsize,
    hold: Duration,
    until_cancelled: bool,
}

impl Holding {
    fn new(hold: Duration, until_cancelled: bool) -> Self {
        Holding {
            running: AtomicUsize::new(0),
            most: AtomicUsize::new(0),
            attempt: AtomicUsize::new(0),
            hold,
            until_cancelled,
        }
    }
}

impl JobRunner for Holding {
    fn run(&self, job: &LeasedJob, cancel: &CancelFlag) -> Result<Outcome, JobFailure> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most.fetch_max(now, Ordering::SeqCst);
        self.attempt
            .store(job.job.attempt as usize, Ordering::SeqCst);
        let started = Instant::now();
        while started.elapsed() < self.hold && !(self.until_cancelled && cancel.is_raised()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.running.fetch_sub(1, Ordering::SeqCst);
        Ok(Outcome::Done {
            result_url: Some(format!("{}.json", job.job.spec.video_url)),
        })
    }
}

fn coordinator() -> Coordinator {
    let retry = RetryPolicy {
        base_backoff_ms: 1,
        max_backoff_ms: 1,
        ..RetryPolicy::default()
    };
    Coordinator::new(Arc::new(MemoryStore::new(retry)), Metrics::new())
}

async fn pass(coordinator: &Coordinator, count: usize) -> String {
    let names: Vec<String> = (0..count).map(|i| format!("video-{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    vidx_coordinator::source_conformance::pass_of(coordinator, &names).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_prefetch_bounds_the_jobs_in_hand() {
    for (max_in_flight, prefetch) in [(1, 0), (1, 2), (2, 1)] {
        let coordinator = coordinator();
        let pass_id = pass(&coordinator, 8).await;
        let runner = Arc::new(Holding::new(Duration::from_millis(40), false));
        let config = WorkerConfig {
            exit_when_idle: true,
            idle_poll: Duration::from_millis(5),
            max_in_flight,
            prefetch,
            ..WorkerConfig::default()
        };
        let capacity = config.capacity();
        let tally = run(
            Arc::new(coordinator.clone()),
            runner.clone(),
            config,
            CancellationToken::new(),
        )
        .await
        .unwrap();
        assert_eq!(tally.done, 8, "{tally:?}");
        let status = coordinator.status(&pass_id).await.unwrap();
        assert_eq!(status.state, PassState::Finished, "{status:?}");
        let most = runner.most.load(Ordering::SeqCst);
        assert!(
            most <= capacity,
            "{most} jobs ran at once, over {max_in_flight} + {prefetch}"
        );
        if prefetch == 0 {
            assert_eq!(most, 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_hands_back_what_cannot_finish_within_the_grace() {
    let coordinator = coordinator();
    let pass_id = pass(&coordinator, 1).await;
    // The job would take a minute; the grace is a second.
    let runner = Arc::new(Holding::new(Duration::from_secs(60), true));
    let config = WorkerConfig {
        grace: Duration::from_secs(1),
        lease: Duration::from_secs(30),
        ..WorkerConfig::default()
    };
    let shutdown = CancellationToken::new();
    let worker = tokio::spawn(run(
        Arc::new(coordinator.clone()),
        runner.clone(),
        config,
        shutdown.clone(),
    ));
    for _ in 0..200 {
        if runner.running.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(runner.running.load(Ordering::SeqCst), 1, "the job started");
    shutdown.cancel();
    let tally = tokio::time::timeout(Duration::from_secs(20), worker)
        .await
        .expect("the worker stops once the grace is over")
        .unwrap()
        .unwrap();
    assert_eq!((tally.released, tally.done), (1, 0), "{tally:?}");
    let jobs = coordinator
        .list_jobs(&pass_id, None, 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(jobs.len(), 1);
    // Handed back: another worker may take it at once, and no attempt was used.
    assert_eq!(jobs[0].state, JobState::Pending, "{:?}", jobs[0]);
    let leased_as = runner.attempt.load(Ordering::SeqCst) as u32;
    let again = coordinator.lease("next", 1, 10_000).await.unwrap();
    assert_eq!(again.len(), 1, "pending and due at once");
    assert_eq!(again[0].job.attempt, leased_as, "{:?}", again[0]);
}

/// Serves `coordinator` on `listener` until the returned sender fires.
fn serve(
    coordinator: &Coordinator,
    listener: tokio::net::TcpListener,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), vidx_coordinator::error::Error>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(
        coordinator.clone(),
        ServerConfig::default(),
        listener,
        None,
        async {
            let _ = stopped.await;
        },
    ));
    (stop, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_gone_mid_job_is_waited_out() {
    let coordinator = coordinator();
    let pass_id = pass(&coordinator, 2).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, server) = serve(&coordinator, listener);
    let client = CoordinatorClient::connect(&ClientConfig::new(format!("http://{address}"), None))
        .await
        .unwrap();
    // Each job takes 1.5 s; the coordinator is away for 2 s from the first job's start.
    let runner = Arc::new(Holding::new(Duration::from_millis(1_500), false));
    let config = WorkerConfig {
        exit_when_idle: true,
        idle_poll: Duration::from_millis(20),
        lease: Duration::from_secs(30),
        max_in_flight: 1,
        prefetch: 0,
        ..WorkerConfig::default()
    };
    let health = Arc::clone(&config.health);
    health.set_model_loaded();
    let worker = tokio::spawn(run(
        Arc::new(client),
        runner.clone(),
        config,
        CancellationToken::new(),
    ));
    for _ in 0..200 {
        if runner.running.load(Ordering::SeqCst) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    // The job's report is the first call to find no coordinator; wait (bounded) for it.
    for _ in 0..200 {
        if health.readiness().is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        health.readiness().is_err(),
        "the worker noticed the coordinator was gone"
    );
    let listener = tokio::net::TcpListener::bind(address).await.unwrap();
    let (stop, server) = serve(&coordinator, listener);
    let tally = tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker finishes once the coordinator is back")
        .unwrap()
        .expect("transient errors never end the loop");
    assert_eq!(tally.done, 2, "{tally:?}");
    assert_eq!(health.readiness(), Ok(()), "the coordinator answered again");
    let status = coordinator.status(&pass_id).await.unwrap();
    assert_eq!(
        (status.state, status.counts.done),
        (PassState::Finished, 2),
        "{status:?}"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

/// `GET path` over plain HTTP/1.0; the status line and the body.
async fn http_get(address: std::net::SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .unwrap()
    .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served_after_a_pass() {
    let coordinator = coordinator();
    pass(&coordinator, 3).await;
    let config = WorkerConfig {
        exit_when_idle: true,
        idle_poll: Duration::from_millis(5),
        ..WorkerConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(vidx_worker::metrics::serve(
        listener,
        Arc::clone(&config.metrics),
        Arc::clone(&config.health),
        stop.clone(),
    ));
    let (status, _) = http_get(address, "/healthz").await;
    assert!(status.contains("200"), "{status}");
    let (status, body) = http_get(address, "/readyz").await;
    assert!(status.contains("503"), "{status}");
    assert_eq!(body.trim(), "model not loaded");
    config.health.set_model_loaded();
    let runner = Arc::new(Holding::new(Duration::from_millis(5), false));
    let tally = run(
        Arc::new(coordinator.clone()),
        runner,
        config,
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(tally.done, 3);
    let (status, _) = http_get(address, "/readyz").await;
    assert!(status.contains("200"), "{status}");
    let (status, text) = http_get(address, "/metrics").await;
    assert!(status.contains("200"), "{status}");
    assert!(
        text.contains(r#"vidx_worker_jobs_total{outcome="done",reason="ok"} 3"#),
        "{text}"
    );
    assert!(text.contains("vidx_worker_jobs_in_flight 0"), "{text}");
    for name in [
        "vidx_worker_stage_seconds_bucket",
        "vidx_worker_generated_tokens_total",
        "vidx_worker_tokens_per_second",
        "vidx_worker_frames_decoded_total",
        "vidx_worker_frames_kept_total",
        "vidx_worker_model_busy_seconds_total",
        "vidx_worker_model_busy_ratio",
    ] {
        assert!(text.contains(name), "{name} missing from:\n{text}");
    }
    for stage in [
        "fetch",
        "probe",
        "decode",
        "vision",
        "prefill",
        "decode_tokens",
        "write",
    ] {
        assert!(
            text.contains(&format!(
                r#"vidx_worker_stage_seconds_count{{stage="{stage}"}}"#
            )),
            "{stage} missing from:\n{text}"
        );
    }
    stop.cancel();
    server.await.unwrap().unwrap();
}
