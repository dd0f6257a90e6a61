//! `vidx fetch-model`, as the chart's init container runs it: a cache that already holds the
//! revision is linked without the network (the endpoint here is a closed loopback port), the
//! link is relative and replaced on a second run, and an uncached repository with the hub out of
//! reach fails with what it was fetching.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::VIDX;
use vidx_testkit::port::ClosedPort;

fn fetch(cache: &Path, link: &Path, hub_id: &str) -> Output {
    // A hub endpoint that refuses connections.
    let closed = ClosedPort::reserve().unwrap();
    Command::new(VIDX)
        .args(["fetch-model", hub_id, "--revision", "main"])
        .arg("--cache-dir")
        .arg(cache)
        .arg("--link")
        .arg(link)
        .args(["--endpoint", &closed.http_url()])
        .env("RUST_LOG", "warn")
        .env_remove("HF_TOKEN")
        .output()
        .expect("vidx runs")
}

/// A hub cache holding `org/model` at `commit`, in hf-hub's layout.
fn cached_repo(cache: &Path, commit: &str) {
    let repo = cache.join("models--org--model");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for name in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::write(snapshot.join(name), format!("{name} at {commit}")).unwrap();
    }
}

#[test]
fn a_cached_revision_is_linked_without_the_network() {
    let volume = tempfile::tempdir().unwrap();
    let cache = volume.path().join(".hub");
    let link = volume.path().join("Open-o3-Video");
    cached_repo(&cache, "abc123");
    let output = fetch(&cache, &link, "org/model");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        Path::new(".hub/models--org--model/snapshots/abc123")
    );
    assert_eq!(
        std::fs::read_to_string(link.join("config.json")).unwrap(),
        "config.json at abc123"
    );

    // A new revision in the cache: the link moves to it.
    cached_repo(&cache, "def456");
    let output = fetch(&cache, &link, "org/model");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(link.join("config.json")).unwrap(),
        "config.json at def456"
    );
}

#[test]
fn an_uncached_repository_without_the_hub_fails_with_what_it_fetched() {
    let volume = tempfile::tempdir().unwrap();
    let link = volume.path().join("Open-o3-Video");
    let output = fetch(&volume.path().join(".hub"), &link, "org/absent");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("fetching org/absent at main"), "{stderr}");
    assert!(!link.exists());
}
