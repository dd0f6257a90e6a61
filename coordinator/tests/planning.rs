//! Planning real sources into jobs: local directories (nested, mixed files), `.txt` and `.jsonl`
//! manifests, and the clear failures for empty sources, bad manifest lines and manifest entries
//! outside the coordinator's allowed prefixes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vidx_coordinator::access::AccessPolicy;
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{MemoryStore, RetryPolicy};
use vidx_core::domain::{PassSpec, PassState, PassStatus, Sampling, TaskSpec};

fn spec(source: String) -> PassSpec {
    PassSpec {
        source,
        destination: "file:///tmp/vidx-planning-out/".into(),
        task: TaskSpec::default(),
        sampling: Sampling::default(),
        idempotency_key: None,
        max_attempts: 3,
        verify: None,
    }
}

/// Submits and runs the planner until the pass leaves planning.
async fn plan(source: String) -> (Coordinator, PassStatus) {
    plan_under(source, AccessPolicy::unrestricted()).await
}

/// [`plan`] on a coordinator that allows only what `access` allows.
async fn plan_under(source: String, access: AccessPolicy) -> (Coordinator, PassStatus) {
    let coordinator = Coordinator::new(
        Arc::new(MemoryStore::new(RetryPolicy::default())),
        Metrics::new(),
    )
    .with_access(access);
    let stop = tokio_util::sync::CancellationToken::new();
    let planner = tokio::spawn(vidx_coordinator::planner::run(
        coordinator.clone(),
        "test-replica".into(),
        stop.clone(),
    ));
    let pass_id = coordinator.submit(spec(source)).await.unwrap().pass_id;
    let started = Instant::now();
    let status = loop {
        let status = coordinator.status(&pass_id).await.unwrap();
        if status.state != PassState::Planning {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "planning did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    stop.cancel();
    planner.await.unwrap();
    (coordinator, status)
}

#[tokio::test]
async fn a_directory_plans_one_job_per_video() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("nested/deeper")).unwrap();
    for name in [
        "a.mp4",
        "b.MOV",
        "notes.txt",
        "nested/c.mkv",
        "nested/deeper/d.webm",
        ".hidden.mp4",
    ] {
        std::fs::write(dir.path().join(name), b"0123456789").unwrap();
    }
    let (coordinator, status) = plan(format!("file://{}/", dir.path().display())).await;
    assert_eq!(status.state, PassState::Running);
    assert_eq!((status.videos, status.counts.pending), (4, 4));
    let jobs = coordinator
        .list_jobs(&status.pass_id, None, 100, None)
        .await
        .unwrap()
        .items;
    let mut urls: Vec<String> = jobs.iter().map(|job| job.spec.video_url.clone()).collect();
    urls.sort();
    let base = format!("file://{}", dir.path().display());
    assert_eq!(
        urls,
        [
            format!("{base}/a.mp4"),
            format!("{base}/b.MOV"),
            format!("{base}/nested/c.mkv"),
            format!("{base}/nested/deeper/d.webm"),
        ]
    );
    assert!(
        jobs.iter()
            .all(|job| job.spec.probe && job.spec.size_bytes == 10)
    );
}

#[tokio::test]
async fn manifests_plan_their_entries() {
    let dir = tempfile::tempdir().unwrap();
    let text = "# corpus\nclips/one.mp4\n\nfile:///elsewhere/two.mkv\ns3://bucket/three.mp4\n";
    std::fs::write(dir.path().join("list.txt"), text).unwrap();
    let (coordinator, status) = plan(format!("file://{}/list.txt", dir.path().display())).await;
    assert_eq!((status.state, status.videos), (PassState::Running, 3));
    let urls: Vec<String> = coordinator
        .list_jobs(&status.pass_id, None, 10, None)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|job| job.spec.video_url)
        .collect();
    assert_eq!(
        urls,
        [
            format!("file://{}/clips/one.mp4", dir.path().display()),
            "file:///elsewhere/two.mkv".to_owned(),
            "s3://bucket/three.mp4".to_owned(),
        ]
    );

    let jsonl = "{\"url\": \"a.mp4\", \"size\": 42, \"etag\": \"abc\"}\n{\"url\": \"b.mp4\"}";
    std::fs::write(dir.path().join("list.jsonl"), jsonl).unwrap();
    let (coordinator, status) = plan(format!("file://{}/list.jsonl", dir.path().display())).await;
    assert_eq!(status.videos, 2, "a last line without a newline counts");
    let jobs = coordinator
        .list_jobs(&status.pass_id, None, 10, None)
        .await
        .unwrap()
        .items;
    assert_eq!(
        (jobs[0].spec.size_bytes, jobs[0].spec.etag.as_deref()),
        (42, Some("abc"))
    );
}

#[tokio::test]
async fn bad_sources_fail_planning_with_a_reason() {
    let empty = tempfile::tempdir().unwrap();
    std::fs::write(empty.path().join("readme.txt.bak"), b"x").unwrap();
    let (_, status) = plan(format!("file://{}/", empty.path().display())).await;
    assert_eq!(status.state, PassState::Failed);
    assert!(
        status
            .planning_error
            .as_deref()
            .unwrap()
            .contains("no video files found"),
        "{status:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.jsonl"),
        "{\"url\": \"a.mp4\"}\nnot json\n",
    )
    .unwrap();
    let (coordinator, status) = plan(format!("file://{}/bad.jsonl", dir.path().display())).await;
    assert_eq!(status.state, PassState::Failed);
    let reason = status.planning_error.unwrap();
    assert!(reason.contains("line 2"), "{reason}");
    assert_eq!(
        coordinator
            .status(&status.pass_id)
            .await
            .unwrap()
            .counts
            .pending,
        0
    );

    let (_, status) = plan(format!("file://{}/missing.txt", dir.path().display())).await;
    assert_eq!(status.state, PassState::Failed);
    assert!(status.planning_error.is_some());
}

#[tokio::test]
async fn manifest_entries_outside_the_allowed_prefixes_fail_the_pass() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!("file://{}", dir.path().display());
    std::fs::write(
        dir.path().join("list.txt"),
        "clips/one.mp4\nfile:///etc/shadow.mp4\n",
    )
    .unwrap();
    let access =
        AccessPolicy::from_prefixes([format!("{base}/"), "file:///tmp/vidx-planning-out/".into()])
            .unwrap();
    let (coordinator, status) = plan_under(format!("{base}/list.txt"), access).await;
    assert_eq!(status.state, PassState::Failed);
    let reason = status.planning_error.unwrap();
    assert!(reason.contains("line 2"), "{reason}");
    assert!(reason.contains("file:///etc/shadow.mp4"), "{reason}");
    assert!(reason.contains(&format!("{base}/")), "{reason}");
    // Nothing outside the prefixes became a job.
    let jobs = coordinator
        .list_jobs(&status.pass_id, None, 10, None)
        .await
        .unwrap()
        .items;
    assert!(
        jobs.iter().all(|job| job.spec.video_url.starts_with(&base)),
        "{jobs:?}"
    );
}
