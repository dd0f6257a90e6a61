//! Kills a real `vidx coordinator` process mid-pass, starts a new one on the same Redis, and
//! checks the pass finishes with nothing lost: held leases stay valid, every job is done once.
//! Also scrapes `/metrics` from the real process.

use std::path::Path;
use std::time::Duration;

use vidx::bench::{drive, submit_and_plan, write_manifest};
use vidx_core::auth::Token;
use vidx_core::client::{ClientConfig, CoordinatorClient};
use vidx_core::domain::{Completion, PassState};
use vidx_testkit::redis::RedisServer;
use vidx_testkit::vidx::{CoordinatorOptions, VidxCoordinator};

const TOKEN: &str = "restart-token";

/// Starts a coordinator process with `/metrics`, allowing where these tests keep manifests and
/// write and the buckets they plan from; `env` is added to its environment.
fn start_coordinator(redis_url: &str, env: &[(String, String)]) -> VidxCoordinator {
    let options = CoordinatorOptions {
        redis_url: Some(redis_url.to_owned()),
        token: Some(TOKEN.to_owned()),
        allow_prefixes: ["file:///tmp/", "s3://media/", "s3://no-such-bucket/"]
            .map(String::from)
            .to_vec(),
        metrics: true,
        env: env.to_vec(),
        ..CoordinatorOptions::default()
    };
    VidxCoordinator::start(Path::new(env!("CARGO_BIN_EXE_vidx")), &options)
        .unwrap_or_else(|error| panic!("vidx coordinator starts: {error}"))
}

fn config(coordinator: &VidxCoordinator) -> ClientConfig {
    ClientConfig::new(coordinator.url(), Some(Token::new(TOKEN).unwrap()))
}

fn metrics_port(coordinator: &VidxCoordinator) -> u16 {
    coordinator
        .metrics_address()
        .expect("started with metrics")
        .port()
}

async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).await.unwrap();
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_coordinator_loses_nothing() {
    let redis =
        RedisServer::start().expect("redis-server starts (run scripts/install-test-servers.sh)");
    let mut first = start_coordinator(&redis.url(), &[]);
    let mut client = CoordinatorClient::connect(&config(&first)).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let manifest = write_manifest(scratch.path(), 300).unwrap();
    let pass_id = submit_and_plan(&mut client, &manifest, "file:///tmp/vidx-restart-out/")
        .await
        .unwrap();

    // Some work done, some leases held when the coordinator dies.
    let partial = drive(&config(&first), 4, 10, 100, Duration::from_secs(120))
        .await
        .unwrap();
    assert!(partial.completed >= 100);
    let held = client.lease("survivor", 20, 600_000).await.unwrap();
    assert_eq!(held.len(), 20);

    let metrics = scrape(metrics_port(&first)).await;
    assert!(metrics.contains("vidx_queue_depth"), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "vidx_jobs{{pass_id=\"{pass_id}\",state=\"leased\"}} 20"
        )),
        "{metrics}"
    );
    assert!(metrics.contains("vidx_leases_in_flight 20"), "{metrics}");
    // Outstanding jobs (what KEDA scales on) come from the shared store: a second replica
    // reports the same number, so a query takes max over replicas, not sum.
    let outstanding = format!("vidx_outstanding_jobs {}", 300 - partial.completed);
    assert!(metrics.contains(&outstanding), "{outstanding}: {metrics}");
    let replica = start_coordinator(&redis.url(), &[]);
    let replica_metrics = scrape(metrics_port(&replica)).await;
    assert!(
        replica_metrics.contains(&outstanding),
        "{outstanding}: {replica_metrics}"
    );
    drop(replica);

    first.kill();
    let second = start_coordinator(&redis.url(), &[]);
    let client = CoordinatorClient::connect(&config(&second)).await.unwrap();
    let status = client.status(&pass_id).await.unwrap();
    assert_eq!(status.counts.total(), 300, "every job survived the restart");
    assert_eq!(status.counts.leased, 20);
    assert_eq!(status.counts.done, partial.completed);

    for job in &held {
        client
            .complete(&job.job.job_id, &job.lease_id, &Completion::default())
            .await
            .unwrap();
    }
    let rest = 300 - partial.completed - 20;
    let report = drive(&config(&second), 4, 10, rest, Duration::from_secs(120))
        .await
        .unwrap();
    assert_eq!(report.completed, rest);
    let status = client.status(&pass_id).await.unwrap();
    assert_eq!((status.counts.done, status.counts.total()), (300, 300));
    assert_eq!(status.state, PassState::Finished);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_an_s3_prefix_with_credentials_from_the_environment() {
    let redis =
        RedisServer::start().expect("redis-server starts (run scripts/install-test-servers.sh)");
    let s3 = vidx_testkit::s3::S3Server::start()
        .expect("s3s-fs starts (run scripts/install-test-servers.sh)");
    s3.create_bucket("media").unwrap();
    let videos = s3.root().join("media/videos");
    std::fs::create_dir_all(videos.join("2026")).unwrap();
    for (name, size) in [
        ("a.mp4", 11),
        ("2026/b.mkv", 22),
        ("notes.txt", 5),
        ("c.webm", 33),
    ] {
        std::fs::write(videos.join(name), vec![7u8; size]).unwrap();
    }
    std::fs::write(s3.root().join("media/outside.mp4"), b"x").unwrap();
    let env: Vec<(String, String)> = s3
        .config()
        .into_iter()
        .map(|(key, value)| (key.to_uppercase(), value))
        .collect();
    let coordinator = start_coordinator(&redis.url(), &env);
    let mut client = CoordinatorClient::connect(&config(&coordinator))
        .await
        .unwrap();
    let pass_id = submit_and_plan(&mut client, "s3://media/videos/", "s3://media/index/")
        .await
        .unwrap();

    let jobs = client
        .list_jobs(&pass_id, None, 100, None)
        .await
        .unwrap()
        .items;
    let mut listed: Vec<(String, u64)> = jobs
        .iter()
        .map(|job| (job.spec.video_url.clone(), job.spec.size_bytes))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("s3://media/videos/2026/b.mkv".to_owned(), 22),
            ("s3://media/videos/a.mp4".to_owned(), 11),
            ("s3://media/videos/c.webm".to_owned(), 33),
        ]
    );

    let missing = submit_and_plan(
        &mut client,
        "s3://no-such-bucket/videos/",
        "s3://media/index/",
    )
    .await;
    let reason = missing
        .expect_err("planning a missing bucket fails")
        .to_string();
    assert!(reason.contains("planning failed"), "{reason}");
}
