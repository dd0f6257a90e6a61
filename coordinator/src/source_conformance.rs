//! The `JobSource` conformance suite: one set of cases that every implementation of
//! `vidx_core::source::JobSource` must pass, so a worker behaves the same in process (the
//! embedded `vidx index`) and over gRPC (`vidx worker`). Each case checks results and the exact
//! error variant, since the worker decides what to do from the variant.
//!
//! A case gets a [`SourceFixture`]: the source under test and the [`Coordinator`] behind it,
//! through which the case sets up passes and reads their state. Use
//! [`job_source_conformance!`](crate::job_source_conformance) to generate one test per case:
//!
//! ```text
//! async fn make() -> (SourceFixture, Guard) { ... }
//! vidx_coordinator::job_source_conformance!(make());
//! ```

use std::sync::Arc;
use std::time::Duration;

use vidx_core::Error;
use vidx_core::domain::{
    Completion, FailureKind, JobState, LeasedJob, NewJob, PassSpec, PassState, Sampling, Segment,
    TaskSpec, now_ms,
};
use vidx_core::source::JobSource;

use crate::service::Coordinator;

/// The source under test and the coordinator that backs it.
pub struct SourceFixture {
    /// The implementation under test.
    pub source: Arc<dyn JobSource>,
    /// The coordinator behind it, for setting up passes and reading their state.
    pub coordinator: Coordinator,
}

/// Creates a running pass of one whole-video job per name (`probe` jobs, as planning makes).
pub async fn pass_of(coordinator: &Coordinator, names: &[&str]) -> String {
    let spec = PassSpec {
        source: "file:///corpus/".into(),
        destination: "file:///index/".into(),
        task: TaskSpec::Questions {
            questions: vec!["Where is the red car?".into()],
        },
        sampling: Sampling {
            fps: 2.0,
            max_frames: 8,
            segment_secs: 10.0,
        },
        idempotency_key: None,
        max_attempts: 3,
        verify: None,
    };
    let store = coordinator.store();
    let pass_id = store.create_pass(&spec, now_ms()).await.unwrap().pass_id;
    let jobs: Vec<NewJob> = names
        .iter()
        .map(|name| NewJob {
            video_url: format!("file:///corpus/{name}.mp4"),
            start_s: 0.0,
            end_s: 0.0,
            size_bytes: 1_000,
            etag: Some(format!("\"{name}\"")),
            probe: true,
        })
        .collect();
    store
        .add_jobs(&pass_id, &jobs, None, now_ms())
        .await
        .unwrap();
    store.finish_planning(&pass_id, None).await.unwrap();
    pass_id
}

async fn job_state(coordinator: &Coordinator, pass_id: &str, job_id: &str) -> (JobState, u32) {
    let page = coordinator
        .list_jobs(pass_id, None, 1_000, None)
        .await
        .unwrap();
    let job = page
        .items
        .iter()
        .find(|job| job.job_id == job_id)
        .unwrap_or_else(|| panic!("job {job_id} is listed"));
    (job.state, job.attempt)
}

fn leased_one(mut leased: Vec<LeasedJob>) -> LeasedJob {
    assert_eq!(leased.len(), 1, "{leased:?}");
    leased.remove(0)
}

/// Every job is leased once, with what a worker needs to run it.
pub async fn lease(fixture: SourceFixture) {
    let pass_id = pass_of(&fixture.coordinator, &["a", "b", "c"]).await;
    let first = fixture.source.lease("w1", 2, 30_000).await.unwrap();
    let second = fixture.source.lease("w2", 2, 30_000).await.unwrap();
    let third = fixture.source.lease("w3", 2, 30_000).await.unwrap();
    assert_eq!((first.len(), second.len(), third.len()), (2, 1, 0));
    let mut urls: Vec<&str> = first
        .iter()
        .chain(&second)
        .map(|leased| leased.job.spec.video_url.as_str())
        .collect();
    urls.sort_unstable();
    assert_eq!(
        urls,
        [
            "file:///corpus/a.mp4",
            "file:///corpus/b.mp4",
            "file:///corpus/c.mp4"
        ]
    );
    let job = &first[0];
    assert_eq!(job.job.pass_id, pass_id);
    assert_eq!(job.job.state, JobState::Leased);
    assert_eq!(job.job.attempt, 1);
    assert!(!job.lease_id.is_empty());
    assert!(job.deadline_ms > now_ms() + 20_000, "{job:?}");
    assert!(job.job.spec.probe);
    assert_eq!(job.pass.destination, "file:///index/");
    assert_eq!(
        job.pass.task,
        TaskSpec::Questions {
            questions: vec!["Where is the red car?".into()]
        }
    );
    assert_eq!(job.pass.sampling.max_frames, 8);
    let holders = fixture.coordinator.lease_holders().await.unwrap();
    assert_eq!(holders, ["w1", "w2"]);
}

/// A heartbeat moves the deadline on and says whether the pass goes on.
pub async fn heartbeat(fixture: SourceFixture) {
    pass_of(&fixture.coordinator, &["a"]).await;
    let job = leased_one(fixture.source.lease("w1", 1, 5_000).await.unwrap());
    let beat = fixture
        .source
        .heartbeat(&job.job.job_id, &job.lease_id, 60_000)
        .await
        .unwrap();
    assert!(!beat.cancelled);
    assert!(
        beat.deadline_ms > job.deadline_ms + 30_000,
        "{beat:?} vs {job:?}"
    );
}

/// A cancelled pass is seen at the next heartbeat, as a flag rather than an error.
pub async fn cancel_seen_at_heartbeat(fixture: SourceFixture) {
    let pass_id = pass_of(&fixture.coordinator, &["a", "b"]).await;
    let job = leased_one(fixture.source.lease("w1", 1, 30_000).await.unwrap());
    fixture.coordinator.cancel(&pass_id).await.unwrap();
    let beat = fixture
        .source
        .heartbeat(&job.job.job_id, &job.lease_id, 30_000)
        .await
        .unwrap();
    assert!(beat.cancelled);
    // Nothing more is leased from a cancelled pass.
    assert!(
        fixture
            .source
            .lease("w2", 5, 30_000)
            .await
            .unwrap()
            .is_empty()
    );
    let status = fixture.coordinator.status(&pass_id).await.unwrap();
    assert_eq!(status.state, PassState::Cancelled);
}

/// A completed job is done with its result, once; one done as skipped (its video indexed
/// already) is counted as such in the pass.
pub async fn complete(fixture: SourceFixture) {
    let pass_id = pass_of(&fixture.coordinator, &["a"]).await;
    let job = leased_one(fixture.source.lease("w1", 1, 30_000).await.unwrap());
    let completion = Completion {
        result_url: Some("file:///index/documents/a.json".into()),
        segments: Vec::new(),
        skipped: true,
    };
    fixture
        .source
        .complete(&job.job.job_id, &job.lease_id, &completion)
        .await
        .unwrap();
    assert_eq!(
        job_state(&fixture.coordinator, &pass_id, &job.job.job_id).await,
        (JobState::Done, 1)
    );
    let listed = fixture
        .coordinator
        .list_jobs(&pass_id, Some(JobState::Done), 10, None)
        .await
        .unwrap();
    assert_eq!(
        listed.items[0].result_url.as_deref(),
        Some("file:///index/documents/a.json")
    );
    let status = fixture.coordinator.status(&pass_id).await.unwrap();
    assert_eq!(status.state, PassState::Finished);
    assert_eq!((status.counts.done, status.skipped), (1, 1));
    // Completing again under the same lease is fenced: the lease ended with the job.
    let again = fixture
        .source
        .complete(&job.job.job_id, &job.lease_id, &completion)
        .await;
    assert!(
        matches!(
            &again,
            Err(Error::StaleLease {
                state: JobState::Done,
                ..
            })
        ),
        "{again:?}"
    );
}

/// A retryable failure comes back after its backoff with the next attempt; a permanent one
/// is dead at once with its reason.
pub async fn fail(fixture: SourceFixture) {
    let pass_id = pass_of(&fixture.coordinator, &["flaky", "broken"]).await;
    let leased = fixture.source.lease("w1", 2, 30_000).await.unwrap();
    let (flaky, broken) = match leased[0].job.spec.video_url.contains("flaky") {
        true => (&leased[0], &leased[1]),
        false => (&leased[1], &leased[0]),
    };
    let retried = fixture
        .source
        .fail(
            &flaky.job.job_id,
            &flaky.lease_id,
            "store timed out",
            FailureKind::Retryable,
        )
        .await
        .unwrap();
    assert_eq!(retried.state, JobState::Failed);
    assert!(retried.retry_at_ms >= now_ms() - 1_000, "{retried:?}");
    let dead = fixture
        .source
        .fail(
            &broken.job.job_id,
            &broken.lease_id,
            "not a video: invalid data",
            FailureKind::Permanent,
        )
        .await
        .unwrap();
    assert_eq!(dead.state, JobState::Dead);
    assert_eq!(
        job_state(&fixture.coordinator, &pass_id, &broken.job.job_id).await,
        (JobState::Dead, 1)
    );
    // The retry's backoff is a few milliseconds in the suite's retry policy.
    let mut again = Vec::new();
    for _ in 0..200 {
        again = fixture.source.lease("w2", 1, 30_000).await.unwrap();
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = leased_one(again);
    assert_eq!(again.job.job_id, flaky.job.job_id);
    assert_eq!(again.job.attempt, 2);
    assert_eq!(again.job.last_error.as_deref(), Some("store timed out"));
    let status = fixture.coordinator.status(&pass_id).await.unwrap();
    assert!(
        status
            .recent_errors
            .iter()
            .any(|error| error.reason == "not a video: invalid data"),
        "{status:?}"
    );
}

/// A released job is leasable again at once, by another worker, on the same attempt; the pass
/// counts the release. A job released after its pass was cancelled is cancelled.
pub async fn release(fixture: SourceFixture) {
    let pass_id = pass_of(&fixture.coordinator, &["a"]).await;
    let held = leased_one(fixture.source.lease("w1", 1, 30_000).await.unwrap());
    fixture
        .source
        .release(&held.job.job_id, &held.lease_id, "shutdown")
        .await
        .unwrap();
    assert_eq!(
        job_state(&fixture.coordinator, &pass_id, &held.job.job_id).await,
        (JobState::Pending, 0)
    );
    let again = leased_one(fixture.source.lease("w2", 1, 30_000).await.unwrap());
    assert_eq!(again.job.job_id, held.job.job_id);
    assert_eq!(again.job.attempt, 1, "the release used no attempt");
    let status = fixture.coordinator.status(&pass_id).await.unwrap();
    assert_eq!(status.released, 1);
    assert!(status.recent_errors.is_empty(), "{status:?}");

    fixture.coordinator.cancel(&pass_id).await.unwrap();
    fixture
        .source
        .release(&again.job.job_id, &again.lease_id, "shutdown")
        .await
        .unwrap();
    assert_eq!(
        job_state(&fixture.coordinator, &pass_id, &again.job.job_id).await,
        (JobState::Cancelled, 1)
    );
}

/// A panic travels as its own kind: the first is retried, the second is dead with its message.
pub async fn panic_retried_once(fixture: SourceFixture) {
    let pass_id = pass_of(&fixture.coordinator, &["crashy"]).await;
    let mut held = leased_one(fixture.source.lease("w1", 1, 30_000).await.unwrap());
    let first = fixture
        .source
        .fail(
            &held.job.job_id,
            &held.lease_id,
            "processing panicked: boom",
            FailureKind::Panic,
        )
        .await
        .unwrap();
    assert_eq!(first.state, JobState::Failed);
    // The retry's backoff is a few milliseconds in the suite's retry policy.
    let mut again = Vec::new();
    for _ in 0..200 {
        again = fixture.source.lease("w2", 1, 30_000).await.unwrap();
        if !again.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held = leased_one(again);
    assert_eq!(held.job.attempt, 2);
    let second = fixture
        .source
        .fail(
            &held.job.job_id,
            &held.lease_id,
            "processing panicked: boom again",
            FailureKind::Panic,
        )
        .await
        .unwrap();
    assert_eq!(second.state, JobState::Dead, "with an attempt to spare");
    let status = fixture.coordinator.status(&pass_id).await.unwrap();
    assert_eq!(status.counts.dead, 1);
    assert_eq!(
        status.recent_errors[0].reason,
        "processing panicked: boom again"
    );
}

/// Once a lease has expired and the job was leased again, every call under the old lease is
/// refused with `StaleLease`, naming the job and its state, and changes nothing.
pub async fn stale_lease_fenced(fixture: SourceFixture) {
    let pass_id = pass_of(&fixture.coordinator, &["a"]).await;
    let old = leased_one(fixture.source.lease("w1", 1, 1_000).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let reaped = fixture
        .coordinator
        .store()
        .reap_expired(now_ms(), 100)
        .await
        .unwrap();
    assert_eq!(reaped, 1);
    let new = leased_one(fixture.source.lease("w2", 1, 30_000).await.unwrap());
    assert_eq!(new.job.job_id, old.job.job_id);
    assert_ne!(new.lease_id, old.lease_id);

    let job_id = old.job.job_id.as_str();
    let fenced = |result: Result<(), Error>, call: &str| match result {
        Err(Error::StaleLease {
            job_id: named,
            state: JobState::Leased,
        }) if named == job_id => {}
        other => panic!("{call} under a stale lease: {other:?}"),
    };
    fenced(
        fixture
            .source
            .heartbeat(job_id, &old.lease_id, 30_000)
            .await
            .map(|_| ()),
        "heartbeat",
    );
    fenced(
        fixture
            .source
            .complete(job_id, &old.lease_id, &Completion::default())
            .await,
        "complete",
    );
    fenced(
        fixture
            .source
            .fail(job_id, &old.lease_id, "late", FailureKind::Permanent)
            .await
            .map(|_| ()),
        "fail",
    );
    fenced(
        fixture
            .source
            .release(job_id, &old.lease_id, "shutdown")
            .await,
        "release",
    );
    // A lease id that was never issued is fenced the same way.
    fenced(
        fixture
            .source
            .heartbeat(job_id, "never-issued", 30_000)
            .await
            .map(|_| ()),
        "heartbeat with a made-up lease",
    );
    // The new holder is untouched and finishes the job.
    assert_eq!(
        job_state(&fixture.coordinator, &pass_id, job_id).await,
        (JobState::Leased, 2)
    );
    fixture
        .source
        .complete(job_id, &new.lease_id, &Completion::default())
        .await
        .unwrap();
    assert_eq!(
        job_state(&fixture.coordinator, &pass_id, job_id).await,
        (JobState::Done, 2)
    );
}

/// A probe job completed with segments is replaced by one pending job per segment.
pub async fn split(fixture: SourceFixture) {
    let pass_id = pass_of(&fixture.coordinator, &["long"]).await;
    let probe = leased_one(fixture.source.lease("w1", 1, 30_000).await.unwrap());
    let segments = vec![
        Segment {
            start_s: 0.0,
            end_s: 10.0,
        },
        Segment {
            start_s: 10.0,
            end_s: 15.5,
        },
    ];
    fixture
        .source
        .complete(
            &probe.job.job_id,
            &probe.lease_id,
            &Completion {
                result_url: None,
                segments: segments.clone(),
                skipped: false,
            },
        )
        .await
        .unwrap();
    let mut parts = fixture.source.lease("w1", 10, 30_000).await.unwrap();
    parts.sort_by(|a, b| a.job.spec.start_s.total_cmp(&b.job.spec.start_s));
    let ranges: Vec<(f64, f64, bool)> = parts
        .iter()
        .map(|part| {
            (
                part.job.spec.start_s,
                part.job.spec.end_s,
                part.job.spec.probe,
            )
        })
        .collect();
    assert_eq!(ranges, [(0.0, 10.0, false), (10.0, 15.5, false)]);
    for part in &parts {
        assert_eq!(part.job.spec.video_url, "file:///corpus/long.mp4");
        assert_eq!(part.job.pass_id, pass_id);
        fixture
            .source
            .complete(&part.job.job_id, &part.lease_id, &Completion::default())
            .await
            .unwrap();
    }
    let status = fixture.coordinator.status(&pass_id).await.unwrap();
    assert_eq!(status.state, PassState::Finished);
    assert_eq!(status.counts.done, 3);
}

/// Generates one `#[tokio::test]` per case over `$make`, an async expression returning
/// `(SourceFixture, guard)`; the guard (servers to stop) lives as long as the case.
#[macro_export]
macro_rules! job_source_conformance {
    ($make:expr) => {
        $crate::job_source_conformance!(@cases $make;
            lease, heartbeat, cancel_seen_at_heartbeat, complete, fail, stale_lease_fenced, split,
            release, panic_retried_once);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (fixture, _guard) = $make.await;
                $crate::source_conformance::$case(fixture).await;
            }
        )*
    };
}
