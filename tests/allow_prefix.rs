//! `vidx coordinator --allow-prefix`: a real coordinator process on a real Redis refuses a
//! source or destination outside its allowed prefixes with PERMISSION_DENIED over gRPC, naming
//! the prefixes, and `vidx submit` says so on one line; `file://` is refused unless a `file://`
//! prefix was given; what lies inside is accepted. `vidx index` runs under its own arguments.

mod common;

use std::process::{Command, Output};

use common::{VIDX, start_coordinator_allowing, temp_prefix};
use vidx_core::Error;
use vidx_core::auth::Token;
use vidx_core::client::{ClientConfig, CoordinatorClient};
use vidx_core::domain::{PassSpec, Sampling, TaskSpec};
use vidx_testkit::redis::RedisServer;

const TOKEN: &str = "prefix-token";

fn spec(source: &str, destination: &str) -> PassSpec {
    PassSpec {
        source: source.into(),
        destination: destination.into(),
        task: TaskSpec::default(),
        sampling: Sampling::default(),
        idempotency_key: None,
        max_attempts: 3,
        verify: None,
    }
}

/// The message a submission refused with PERMISSION_DENIED came back with.
async fn refused(client: &CoordinatorClient, source: &str, destination: &str) -> String {
    match client.submit(&spec(source, destination)).await {
        Err(Error::PermissionDenied(message)) => message,
        other => panic!("{source} -> {destination}: expected permission denied, got {other:?}"),
    }
}

fn submit(url: &str, source: &str, destination: &str) -> Output {
    Command::new(VIDX)
        .args(["submit", source, "--out", destination])
        .env("VIDX_COORDINATOR", url)
        .env("VIDX_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .output()
        .expect("vidx runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_and_destinations_outside_the_prefixes_are_denied() {
    let redis =
        RedisServer::start().expect("redis-server starts (run scripts/install-test-servers.sh)");
    let (_coordinator, url) = start_coordinator_allowing(
        &redis.url(),
        TOKEN,
        &["s3://media/videos/", "s3://media/index"],
    );
    let client = CoordinatorClient::connect(&ClientConfig::new(
        url.clone(),
        Some(Token::new(TOKEN).unwrap()),
    ))
    .await
    .unwrap();

    let status = refused(&client, "s3://media/private/", "s3://media/index/").await;
    assert!(status.contains("source s3://media/private/"), "{status:?}");
    assert!(status.contains("s3://media/videos/"), "{status:?}");

    let status = refused(
        &client,
        "s3://media/videos/",
        "s3://media/indexes-of-others/",
    )
    .await;
    assert!(status.contains("destination"), "{status:?}");
    assert!(status.contains("s3://media/index/"), "{status:?}");

    // Local files are not reachable through a coordinator that was given no file:// prefix.
    refused(&client, "file:///var/run/secrets/", "s3://media/index/").await;
    // Nor by climbing out of an allowed prefix.
    refused(
        &client,
        "s3://media/videos/../private/",
        "s3://media/index/",
    )
    .await;

    // Inside the prefixes the pass is taken (planning it fails later: there is no S3 here).
    client
        .submit(&spec("s3://media/videos/2026/", "s3://media/index/"))
        .await
        .unwrap();

    // `vidx submit`: a non-zero exit and one line that names the prefixes.
    let output = submit(&url, "s3://elsewhere/videos/", "s3://media/index/");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("error: permission denied: source s3://elsewhere/videos/"),
        "{stderr}"
    );
    assert!(
        stderr.contains("(s3://media/videos/, s3://media/index/)"),
        "{stderr}"
    );
}

#[test]
fn local_files_need_a_file_prefix_given_explicitly() {
    let redis =
        RedisServer::start().expect("redis-server starts (run scripts/install-test-servers.sh)");
    let corpus = tempfile::tempdir().unwrap();
    std::fs::write(corpus.path().join("a.mp4"), b"queued").unwrap();
    let out = tempfile::tempdir().unwrap();
    let (corpus_dir, out_dir) = (
        corpus.path().to_str().unwrap(),
        out.path().to_str().unwrap(),
    );

    // No prefixes: any cloud URL, but no local path.
    let (_open, open_url) = start_coordinator_allowing(&redis.url(), TOKEN, &[]);
    let output = submit(&open_url, corpus_dir, out_dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("--allow-prefix"), "{stderr}");
    let output = submit(&open_url, "s3://any/videos/", "s3://any/index/");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Given explicitly, the temporary directory is allowed.
    let (_local, local_url) = start_coordinator_allowing(&redis.url(), TOKEN, &[&temp_prefix()]);
    let output = submit(&local_url, corpus_dir, out_dir);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn a_bad_prefix_stops_the_coordinator_at_start() {
    let output = Command::new(VIDX)
        .args(["coordinator", "--listen", "127.0.0.1:0"])
        .args(["--allow-prefix", "s3://media/a%2Fb/"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-prefix"), "{stderr}");
    assert!(stderr.contains("s3://media/a%2Fb/"), "{stderr}");
}
