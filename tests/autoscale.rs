//! `vidx autoscale` as a real process against a real coordinator process on a real Redis.
//! With `--dry-run` (a count kept in memory) a pass of nine pending jobs asks for
//! ceil(9 / 4) = 3 workers at once, and cancelling the pass brings the count back to the minimum
//! only after the scale-down delay. With a real Kubernetes client whose API server is absent,
//! rounds fail with what they were doing while the loop keeps going. No Kubernetes API server can
//! run on this machine; `tests/autoscale_api.rs` checks the requests themselves against kube's
//! mock API service.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{VIDX, start_coordinator};
use vidx_testkit::ChildGuard;
use vidx_testkit::port::ClosedPort;
use vidx_testkit::redis::RedisServer;

const TOKEN: &str = "autoscale-token";

fn vidx(url: &str, args: &[&str]) -> String {
    let output = Command::new(VIDX)
        .args(args)
        .env("VIDX_COORDINATOR", url)
        .env("VIDX_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .output()
        .expect("vidx runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// A log event of the autoscaler (its JSON lines; anything else as a bare message).
fn event(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|_| serde_json::json!({ "message": text }))
}

/// Waits (at most 30 s) for the autoscaler to log a scaling to `to`; returns when it was seen
/// and the `from` it logged.
fn wait_for_scaling(autoscaler: &mut ChildGuard, to: u64) -> (Instant, u64) {
    autoscaler
        .wait_for_line("log a scaling", Duration::from_secs(30), |line| {
            let event = event(&line.text);
            (event["message"] == "workers scaled" && event["to"] == to)
                .then(|| (Instant::now(), event["from"].as_u64().unwrap()))
        })
        .unwrap_or_else(|error| panic!("no scaling to {to}: {error}"))
}

/// Starts `vidx autoscale ARGS` with JSON logs (on stderr, read through the guard).
fn autoscaler(url: &str, args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    ChildGuard::spawn(
        "vidx autoscale",
        Command::new(VIDX)
            .args(["--log-format", "json", "autoscale"])
            .args(args)
            .env("VIDX_COORDINATOR", url)
            .env("VIDX_TOKEN", TOKEN)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied()),
    )
    .expect("vidx autoscale starts")
}

#[test]
fn dry_run_scales_with_the_queue_and_holds_before_scaling_down() {
    let redis = RedisServer::start().unwrap();
    let (_coordinator, url) = start_coordinator(&redis.url(), TOKEN);
    let corpus = tempfile::tempdir().unwrap();
    for index in 0..9 {
        std::fs::write(corpus.path().join(format!("v{index}.mp4")), b"queued").unwrap();
    }
    let out = tempfile::tempdir().unwrap();

    let mut autoscaler = autoscaler(
        &url,
        &[
            "--dry-run",
            "--min-workers",
            "0",
            "--max-workers",
            "8",
            "--jobs-per-worker",
            "4",
            "--interval-secs",
            "1",
            "--scale-down-delay-secs",
            "3",
        ],
        &[],
    );

    let pass_id = vidx(
        &url,
        &[
            "submit",
            corpus.path().to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
        ],
    );
    let (_, from) = wait_for_scaling(&mut autoscaler, 3);
    assert_eq!(from, 0);

    let cancelled_at = Instant::now();
    vidx(&url, &["cancel", pass_id.trim()]);
    let (scaled_down_at, from) = wait_for_scaling(&mut autoscaler, 0);
    assert_eq!(from, 3);
    // The last reading that saw work may precede the cancel by up to one interval (1 s), so
    // the 3 s delay shows as at least 2 s here; without it the drop would come within a round.
    assert!(
        scaled_down_at.duration_since(cancelled_at) >= Duration::from_secs(2),
        "scaled down {:?} after the queue emptied, inside the 3 s delay",
        scaled_down_at.duration_since(cancelled_at)
    );
}

/// With a real Kubernetes client configured from a kubeconfig whose API server is not there,
/// each round fails with what it was doing, and the loop keeps going (no panic, no scaling).
#[test]
fn an_unreachable_kubernetes_api_fails_rounds_not_the_autoscaler() {
    let redis = RedisServer::start().unwrap();
    let (_coordinator, url) = start_coordinator(&redis.url(), TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    // An API server address that refuses connections for as long as the test runs.
    let api_server = ClosedPort::reserve().unwrap();
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1
kind: Config
clusters:
- cluster: {{server: 'https://{}', insecure-skip-tls-verify: true}}
  name: local
contexts:
- context: {{cluster: local, namespace: media, user: robot}}
  name: local
current-context: local
users:
- name: robot
  user: {{token: test-token}}
",
            api_server.address()
        ),
    )
    .unwrap();
    let mut autoscaler = autoscaler(
        &url,
        &["--deployment", "workers", "--interval-secs", "1"],
        &[("KUBECONFIG", kubeconfig.to_str().unwrap())],
    );
    for _ in 0..2 {
        autoscaler
            .wait_for_line("fail a round", Duration::from_secs(30), |line| {
                let text = line.text.as_str();
                assert!(!text.contains("panicked"), "{text}");
                (event(text)["message"] == "autoscaling round failed").then(|| {
                    assert!(
                        text.contains("reading the scale of deployment workers"),
                        "{text}"
                    );
                })
            })
            .expect("two failed rounds within 30 s each");
    }
    assert!(
        autoscaler.try_status().unwrap().is_none(),
        "the autoscaler keeps running"
    );
}
