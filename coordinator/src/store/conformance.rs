//! One behaviour for every [`JobStore`]: these checks run against the in-memory store and against
//! a real `redis-server` (see `coordinator/tests/store_conformance.rs`). Each check takes a fresh,
//! empty store and drives time explicitly, so lease expiry and backoff need no sleeping.
//!
//! Checks panic with a description on failure, like any test assertion.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashSet;
use std::sync::Arc;

mod handback;

pub use self::handback::{
    crash_counts_survive_other_transitions, crashes_are_counted_until_dead,
    panics_are_retried_once, release_hands_a_job_back, release_in_a_cancelled_pass_cancels,
    releases_never_use_up_attempts,
};
use super::{JobStore, LeaseRequest, RetryPolicy};
use crate::error::Error;
use vidx_core::domain::{
    Completion, FailureKind, JobState, NewJob, PassSpec, PassState, Sampling, Segment, TaskSpec,
};

/// The retry policy every conformance store must be built with.
pub const RETRY: RetryPolicy = RetryPolicy {
    base_backoff_ms: 1_000,
    max_backoff_ms: 10_000,
    max_crashes: 2,
};

/// A fixed starting time, so results do not depend on the clock.
const T0: i64 = 1_700_000_000_000;

fn spec(key: Option<&str>, max_attempts: u32) -> PassSpec {
    PassSpec {
        source: "file:///corpus/".into(),
        destination: "file:///index/".into(),
        task: TaskSpec::Index { prompt: None },
        sampling: Sampling::default(),
        idempotency_key: key.map(str::to_owned),
        max_attempts,
        verify: None,
    }
}

fn video(index: usize) -> NewJob {
    NewJob {
        video_url: format!("file:///corpus/video-{index:05}.mp4"),
        start_s: 0.0,
        end_s: 0.0,
        size_bytes: 1000 + index as u64,
        etag: Some(format!("etag-{index}")),
        probe: true,
    }
}

fn request(max_jobs: u32, lease_ms: i64) -> LeaseRequest {
    LeaseRequest {
        worker_id: "worker-a".into(),
        max_jobs,
        lease_ms,
    }
}

/// Creates a running pass with `jobs` videos and returns its id.
async fn running_pass(store: &dyn JobStore, jobs: usize, max_attempts: u32) -> String {
    let created = store
        .create_pass(&spec(None, max_attempts), T0)
        .await
        .unwrap();
    let videos: Vec<NewJob> = (0..jobs).map(video).collect();
    let added = store
        .add_jobs(&created.pass_id, &videos, Some("last"), T0)
        .await
        .unwrap();
    assert_eq!(added, jobs as u64, "every new job is created");
    store.finish_planning(&created.pass_id, None).await.unwrap();
    created.pass_id
}

/// Leases the oldest job at `T0` and completes it; returns its lease.
async fn lease_and_finish_one(store: &dyn JobStore) -> vidx_core::domain::LeasedJob {
    let leased = store
        .lease(&request(1, 60_000), T0)
        .await
        .unwrap()
        .remove(0);
    store
        .complete(
            &leased.job.job_id,
            &leased.lease_id,
            &Completion::default(),
            T0,
        )
        .await
        .unwrap();
    leased
}

/// Lease then complete: counts move, leases are exclusive, a finished pass reads as finished.
pub async fn lease_and_complete(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 3, 3).await;
    let first = store.lease(&request(2, 60_000), T0).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].job.attempt, 1);
    assert_eq!(first[0].deadline_ms, T0 + 60_000);
    assert_eq!(first[0].job.state, JobState::Leased);
    assert_eq!(first[0].pass.destination, "file:///index/");
    assert_eq!(
        first[0].job.spec.video_url, "file:///corpus/video-00000.mp4",
        "oldest first"
    );
    assert_ne!(first[0].lease_id, first[1].lease_id);

    store
        .complete(
            &first[0].job.job_id,
            &first[0].lease_id,
            &Completion::default(),
            T0 + 10,
        )
        .await
        .unwrap();
    let status = store.pass_status(&pass_id, T0 + 10).await.unwrap();
    assert_eq!(
        (
            status.counts.pending,
            status.counts.leased,
            status.counts.done
        ),
        (1, 1, 1)
    );
    assert_eq!(status.state, PassState::Running);
    assert_eq!(status.videos, 3);

    let second = store.lease(&request(5, 60_000), T0 + 20).await.unwrap();
    assert_eq!(second.len(), 1, "only the one pending job is left");
    let seen: HashSet<_> = first
        .iter()
        .chain(&second)
        .map(|leased| leased.job.job_id.clone())
        .collect();
    assert_eq!(seen.len(), 3, "no job leased twice");
    for leased in first.iter().skip(1).chain(&second) {
        store
            .complete(
                &leased.job.job_id,
                &leased.lease_id,
                &Completion::default(),
                T0 + 30,
            )
            .await
            .unwrap();
    }
    let status = store.pass_status(&pass_id, T0 + 30).await.unwrap();
    assert_eq!(status.counts.done, 3);
    assert_eq!(status.state, PassState::Finished);
    assert_eq!(status.eta_seconds, Some(0.0));
    assert!(status.jobs_per_second > 0.0);
    assert!(
        store
            .lease(&request(5, 60_000), T0 + 40)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.leases_in_flight().await.unwrap(), 0);
}

/// An expired lease returns its job to pending, and the next lease is a new one.
pub async fn lease_expiry_and_relet(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 1, 3).await;
    let first = store.lease(&request(1, 1_000), T0).await.unwrap().remove(0);
    assert_eq!(store.leases_in_flight().await.unwrap(), 1);
    assert_eq!(
        store.reap_expired(T0 + 999, 100).await.unwrap(),
        0,
        "not yet expired"
    );

    let beat = store
        .heartbeat(&first.job.job_id, &first.lease_id, Some(5_000), T0 + 500)
        .await
        .unwrap();
    assert_eq!(beat.deadline_ms, T0 + 5_500);
    assert!(!beat.cancelled);
    assert_eq!(
        store.reap_expired(T0 + 5_499, 100).await.unwrap(),
        0,
        "heartbeat extended it"
    );
    assert_eq!(store.reap_expired(T0 + 5_500, 100).await.unwrap(), 1);

    let job = store.job(&first.job.job_id).await.unwrap();
    assert_eq!(job.state, JobState::Pending);
    assert_eq!(job.last_error.as_deref(), Some("lease expired"));
    let status = store.pass_status(&pass_id, T0 + 5_500).await.unwrap();
    assert_eq!((status.counts.pending, status.counts.leased), (1, 0));
    assert_eq!(status.recent_errors[0].reason, "lease expired");

    let second = store
        .lease(&request(1, 1_000), T0 + 6_000)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(second.job.job_id, first.job.job_id);
    assert_eq!(second.job.attempt, 2);
    assert_ne!(second.lease_id, first.lease_id);
    let stale = store
        .heartbeat(&first.job.job_id, &first.lease_id, None, T0 + 6_100)
        .await;
    assert!(matches!(stale, Err(Error::StaleLease { .. })), "{stale:?}");
    let beat = store
        .heartbeat(&second.job.job_id, &second.lease_id, None, T0 + 6_100)
        .await
        .unwrap();
    assert_eq!(
        beat.deadline_ms,
        T0 + 7_100,
        "no extension given keeps the lease's duration"
    );
}

/// A worker presumed dead can never overwrite the result of the one that replaced it.
pub async fn stale_lease_is_fenced(store: Arc<dyn JobStore>) {
    running_pass(store.as_ref(), 1, 5).await;
    let old = store.lease(&request(1, 1_000), T0).await.unwrap().remove(0);
    store.reap_expired(T0 + 1_000, 10).await.unwrap();
    let new = store
        .lease(&request(1, 1_000), T0 + 1_001)
        .await
        .unwrap()
        .remove(0);

    let completed = store
        .complete(
            &old.job.job_id,
            &old.lease_id,
            &Completion::default(),
            T0 + 1_002,
        )
        .await;
    assert!(
        matches!(
            completed,
            Err(Error::StaleLease {
                state: JobState::Leased,
                ..
            })
        ),
        "{completed:?}"
    );
    let failed = store
        .fail(
            &old.job.job_id,
            &old.lease_id,
            "late",
            FailureKind::Retryable,
            T0 + 1_002,
        )
        .await;
    assert!(
        matches!(failed, Err(Error::StaleLease { .. })),
        "{failed:?}"
    );

    store
        .complete(
            &new.job.job_id,
            &new.lease_id,
            &Completion::default(),
            T0 + 1_003,
        )
        .await
        .unwrap();
    let again = store
        .complete(
            &new.job.job_id,
            &new.lease_id,
            &Completion::default(),
            T0 + 1_004,
        )
        .await;
    assert!(
        matches!(
            again,
            Err(Error::StaleLease {
                state: JobState::Done,
                ..
            })
        ),
        "{again:?}"
    );
    let missing = store
        .complete("pass-x.nope", "1", &Completion::default(), T0)
        .await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
}

/// Retryable failures back off exponentially until attempts run out; then the job is dead.
pub async fn retry_with_backoff_then_dead(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 2, 3).await;
    let mut now = T0;
    let leased = store
        .lease(&request(1, 60_000), now)
        .await
        .unwrap()
        .remove(0);
    let job_id = leased.job.job_id.clone();
    let outcome = store
        .fail(
            &job_id,
            &leased.lease_id,
            "decoder hiccup 1",
            FailureKind::Retryable,
            now,
        )
        .await
        .unwrap();
    assert_eq!(outcome.state, JobState::Failed);
    assert_eq!(outcome.retry_at_ms, now + 1_000);
    assert_eq!(
        store
            .pass_status(&pass_id, now)
            .await
            .unwrap()
            .counts
            .failed,
        1
    );

    // The other job is leased meanwhile; the failed one is not due yet.
    let other = store.lease(&request(5, 60_000), now + 999).await.unwrap();
    assert_eq!(other.len(), 1);
    assert_ne!(other[0].job.job_id, job_id);

    now += 1_000;
    let retry = store
        .lease(&request(5, 60_000), now)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (retry.job.job_id.as_str(), retry.job.attempt),
        (job_id.as_str(), 2)
    );
    assert_eq!(retry.job.last_error.as_deref(), Some("decoder hiccup 1"));
    let outcome = store
        .fail(
            &job_id,
            &retry.lease_id,
            "decoder hiccup 2",
            FailureKind::Retryable,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        (outcome.state, outcome.retry_at_ms),
        (JobState::Failed, now + 2_000)
    );

    now += 2_000;
    let last = store
        .lease(&request(5, 60_000), now)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(last.job.attempt, 3);
    let outcome = store
        .fail(
            &job_id,
            &last.lease_id,
            "decoder hiccup 3",
            FailureKind::Retryable,
            now,
        )
        .await
        .unwrap();
    assert_eq!((outcome.state, outcome.retry_at_ms), (JobState::Dead, 0));

    let outcome = store
        .fail(
            &other[0].job.job_id,
            &other[0].lease_id,
            "not a video",
            FailureKind::Permanent,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.state,
        JobState::Dead,
        "non-retryable failures are dead at once"
    );

    let status = store.pass_status(&pass_id, now).await.unwrap();
    assert_eq!(
        (
            status.counts.dead,
            status.counts.failed,
            status.counts.total()
        ),
        (2, 0, 2)
    );
    assert_eq!(status.state, PassState::Finished);
    let reasons: Vec<&str> = status
        .recent_errors
        .iter()
        .map(|error| error.reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        [
            "not a video",
            "decoder hiccup 3",
            "decoder hiccup 2",
            "decoder hiccup 1"
        ]
    );
    assert_eq!(store.job(&job_id).await.unwrap().state, JobState::Dead);
    assert!(
        store
            .lease(&request(5, 60_000), now + 1_000_000)
            .await
            .unwrap()
            .is_empty()
    );
}

/// An expired lease on the last attempt makes the job dead, not pending.
pub async fn expiry_on_last_attempt_is_dead(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 1, 1).await;
    store.lease(&request(1, 100), T0).await.unwrap();
    assert_eq!(store.reap_expired(T0 + 100, 10).await.unwrap(), 1);
    let status = store.pass_status(&pass_id, T0 + 100).await.unwrap();
    assert_eq!((status.counts.dead, status.state), (1, PassState::Finished));
}

/// Cancelling stops new leases, tells leased workers, and turns their reports into cancelled.
pub async fn cancel(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 4, 3).await;
    let leased = store.lease(&request(2, 60_000), T0).await.unwrap();
    store
        .fail(
            &leased[1].job.job_id,
            &leased[1].lease_id,
            "flaky",
            FailureKind::Retryable,
            T0,
        )
        .await
        .unwrap();
    store.cancel_pass(&pass_id, T0 + 1).await.unwrap();

    let status = store.pass_status(&pass_id, T0 + 1).await.unwrap();
    assert_eq!(status.state, PassState::Cancelled);
    assert_eq!((status.counts.pending, status.counts.failed), (0, 0));
    assert_eq!((status.counts.leased, status.counts.cancelled), (1, 3));
    assert!(
        store
            .lease(&request(10, 60_000), T0 + 1_000_000)
            .await
            .unwrap()
            .is_empty()
    );

    let beat = store
        .heartbeat(&leased[0].job.job_id, &leased[0].lease_id, None, T0 + 2)
        .await
        .unwrap();
    assert!(
        beat.cancelled,
        "the worker learns of the cancel at its heartbeat"
    );
    let outcome = store
        .fail(
            &leased[0].job.job_id,
            &leased[0].lease_id,
            "stopped",
            FailureKind::Retryable,
            T0 + 3,
        )
        .await
        .unwrap();
    assert_eq!(outcome.state, JobState::Cancelled);
    let status = store.pass_status(&pass_id, T0 + 3).await.unwrap();
    assert_eq!((status.counts.cancelled, status.counts.total()), (4, 4));
    store.cancel_pass(&pass_id, T0 + 4).await.unwrap();
    let missing = store.cancel_pass("pass-unknown", T0).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
}

/// Cancelling a finished pass changes nothing.
pub async fn cancel_finished_is_noop(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 1, 3).await;
    lease_and_finish_one(store.as_ref()).await;
    store.cancel_pass(&pass_id, T0).await.unwrap();
    assert_eq!(
        store.pass_status(&pass_id, T0).await.unwrap().state,
        PassState::Finished
    );
}

/// The same idempotency key returns the same pass; other keys and no key create new passes.
pub async fn idempotent_submit(store: Arc<dyn JobStore>) {
    let first = store
        .create_pass(&spec(Some("nightly-2026-11-23"), 3), T0)
        .await
        .unwrap();
    assert!(!first.existing);
    let again = store
        .create_pass(&spec(Some("nightly-2026-11-23"), 3), T0 + 5)
        .await
        .unwrap();
    assert_eq!(again.pass_id, first.pass_id);
    assert!(again.existing);
    let other = store
        .create_pass(&spec(Some("nightly-2026-11-24"), 3), T0)
        .await
        .unwrap();
    assert_ne!(other.pass_id, first.pass_id);
    let anonymous_a = store.create_pass(&spec(None, 3), T0).await.unwrap();
    let anonymous_b = store.create_pass(&spec(None, 3), T0).await.unwrap();
    assert_ne!(anonymous_a.pass_id, anonymous_b.pass_id);
    assert_eq!(
        store.pass_spec(&first.pass_id).await.unwrap(),
        spec(Some("nightly-2026-11-23"), 3)
    );
}

/// Status counts, job listing with paging and filters, pass listing newest first.
pub async fn status_and_listing(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 5, 3).await;
    let leased = store.lease(&request(2, 60_000), T0).await.unwrap();
    let result = Completion {
        result_url: Some("file:///index/doc.json".into()),
        segments: Vec::new(),
    };
    store
        .complete(&leased[0].job.job_id, &leased[0].lease_id, &result, T0)
        .await
        .unwrap();

    let status = store.pass_status(&pass_id, T0).await.unwrap();
    assert_eq!(
        (
            status.counts.pending,
            status.counts.leased,
            status.counts.done
        ),
        (3, 1, 1)
    );
    assert_eq!(status.counts.total(), 5);
    assert_eq!(status.created_at_ms, T0);

    let mut urls = Vec::new();
    let mut cursor = None;
    for _ in 0..10 {
        let page = store
            .list_jobs(&pass_id, None, 2, cursor.as_deref())
            .await
            .unwrap();
        assert!(page.items.len() <= 2);
        urls.extend(page.items.into_iter().map(|job| job.spec.video_url));
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    let expected: Vec<String> = (0..5).map(|index| video(index).video_url).collect();
    assert_eq!(urls, expected, "every job once, in creation order");

    let pending = store
        .list_jobs(&pass_id, Some(JobState::Pending), 2, None)
        .await
        .unwrap();
    assert_eq!(pending.items.len(), 2);
    assert!(
        pending
            .items
            .iter()
            .all(|job| job.state == JobState::Pending)
    );
    let rest = store
        .list_jobs(
            &pass_id,
            Some(JobState::Pending),
            2,
            pending.next.as_deref(),
        )
        .await
        .unwrap();
    assert_eq!((rest.items.len(), rest.next), (1, None));
    let done = store
        .list_jobs(&pass_id, Some(JobState::Done), 10, None)
        .await
        .unwrap();
    assert_eq!(done.items[0].job_id, leased[0].job.job_id);
    assert_eq!(
        done.items[0].result_url.as_deref(),
        Some("file:///index/doc.json")
    );

    let foreign = store
        .list_jobs(&pass_id, None, 2, pending.next.as_deref())
        .await;
    assert!(
        matches!(foreign, Err(Error::InvalidArgument(_))),
        "a token from another listing: {foreign:?}"
    );
    let garbage = store
        .list_jobs(&pass_id, None, 2, Some("%%%not-a-token"))
        .await;
    assert!(
        matches!(garbage, Err(Error::InvalidArgument(_))),
        "{garbage:?}"
    );
    let missing = store.list_jobs("pass-missing", None, 2, None).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
    assert!(matches!(
        store.pass_status("pass-missing", T0).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.job("pass-missing.0").await,
        Err(Error::NotFound(_))
    ));

    let second = running_pass(store.as_ref(), 1, 3).await;
    let third = running_pass(store.as_ref(), 1, 3).await;
    let page = store.list_passes(2, None, T0).await.unwrap();
    let ids: Vec<&str> = page
        .items
        .iter()
        .map(|pass| pass.pass_id.as_str())
        .collect();
    assert_eq!(ids, [third.as_str(), second.as_str()], "newest first");
    let page = store
        .list_passes(2, page.next.as_deref(), T0)
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].pass_id, pass_id);
    assert_eq!(page.next, None);
}

/// Planning is resumable: re-adding the same jobs creates nothing, the cursor is kept, and only
/// one planner holds a pass at a time.
pub async fn planning_is_resumable(store: Arc<dyn JobStore>) {
    let pass_id = store.create_pass(&spec(None, 3), T0).await.unwrap().pass_id;
    assert!(
        store
            .claim_planning(&pass_id, "replica-a", 10_000, T0)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_planning(&pass_id, "replica-b", 10_000, T0)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_planning(&pass_id, "replica-a", 10_000, T0)
            .await
            .unwrap(),
        "renewal"
    );

    let batch: Vec<NewJob> = (0..3).map(video).collect();
    assert_eq!(
        store
            .add_jobs(&pass_id, &batch, Some("video-00002.mp4"), T0)
            .await
            .unwrap(),
        3
    );
    let planning = store.planning_passes().await.unwrap();
    let entry = planning
        .iter()
        .find(|pass| pass.pass_id == pass_id)
        .unwrap();
    assert_eq!(entry.cursor.as_deref(), Some("video-00002.mp4"));
    assert_eq!(
        store.pass_status(&pass_id, T0).await.unwrap().state,
        PassState::Planning
    );

    let overlapping: Vec<NewJob> = (1..5).map(video).collect();
    assert_eq!(
        store
            .add_jobs(&pass_id, &overlapping, None, T0)
            .await
            .unwrap(),
        2,
        "duplicates skipped"
    );
    store.finish_planning(&pass_id, None).await.unwrap();
    let status = store.pass_status(&pass_id, T0).await.unwrap();
    assert_eq!(
        (status.state, status.counts.total(), status.videos),
        (PassState::Running, 5, 5)
    );
    assert!(
        store
            .planning_passes()
            .await
            .unwrap()
            .iter()
            .all(|pass| pass.pass_id != pass_id)
    );
    let late = store.add_jobs(&pass_id, &[video(9)], None, T0).await;
    assert!(
        matches!(late, Err(Error::FailedPrecondition(_))),
        "{late:?}"
    );

    let failing = store.create_pass(&spec(None, 3), T0).await.unwrap().pass_id;
    store
        .add_jobs(&failing, &[video(0)], None, T0)
        .await
        .unwrap();
    store
        .finish_planning(&failing, Some("bucket does not exist"))
        .await
        .unwrap();
    let status = store.pass_status(&failing, T0).await.unwrap();
    assert_eq!(status.state, PassState::Failed);
    assert_eq!(
        status.planning_error.as_deref(),
        Some("bucket does not exist")
    );
    assert_eq!(
        status.counts.cancelled, 1,
        "jobs of a pass that failed planning are not run"
    );
}

/// A probe job completed with segments is replaced by one job per segment.
pub async fn probe_job_splits_into_segments(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 1, 3).await;
    let probe = store
        .lease(&request(1, 60_000), T0)
        .await
        .unwrap()
        .remove(0);
    assert!(probe.job.spec.probe);
    let segments = vec![
        Segment {
            start_s: 0.0,
            end_s: 600.0,
        },
        Segment {
            start_s: 600.0,
            end_s: 1200.0,
        },
        Segment {
            start_s: 1200.0,
            end_s: 1337.5,
        },
    ];
    let bad = Completion {
        result_url: None,
        segments: vec![Segment {
            start_s: 5.0,
            end_s: 1.0,
        }],
    };
    let invalid = store
        .complete(&probe.job.job_id, &probe.lease_id, &bad, T0)
        .await;
    assert!(
        matches!(invalid, Err(Error::InvalidArgument(_))),
        "{invalid:?}"
    );

    let split = Completion {
        result_url: None,
        segments,
    };
    let completed = store
        .complete(&probe.job.job_id, &probe.lease_id, &split, T0 + 50)
        .await
        .unwrap();
    assert_eq!(
        (completed.segments_created, completed.lease_held_ms),
        (3, 50)
    );
    let children = store.lease(&request(10, 60_000), T0 + 60).await.unwrap();
    let ranges: Vec<(f64, f64)> = children
        .iter()
        .map(|c| (c.job.spec.start_s, c.job.spec.end_s))
        .collect();
    assert_eq!(ranges, [(0.0, 600.0), (600.0, 1200.0), (1200.0, 1337.5)]);
    assert!(children.iter().all(|child| !child.job.spec.probe));
    let again = Completion {
        result_url: None,
        segments: vec![Segment {
            start_s: 0.0,
            end_s: 1.0,
        }],
    };
    let nested = store
        .complete(
            &children[0].job.job_id,
            &children[0].lease_id,
            &again,
            T0 + 70,
        )
        .await;
    assert!(
        matches!(nested, Err(Error::InvalidArgument(_))),
        "{nested:?}"
    );
    let status = store.pass_status(&pass_id, T0 + 70).await.unwrap();
    assert_eq!(
        (status.counts.done, status.counts.leased, status.videos),
        (1, 3, 1)
    );
}

/// Two reapers at once (two coordinator replicas) reap each expired lease exactly once.
pub async fn concurrent_reapers(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 60, 3).await;
    let leased = store.lease(&request(60, 1_000), T0).await.unwrap();
    assert_eq!(leased.len(), 60);
    let reapers: Vec<_> = (0..2)
        .map(|_| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut reaped = 0;
                for _ in 0..20 {
                    reaped += store.reap_expired(T0 + 1_000, 7).await.unwrap();
                }
                reaped
            })
        })
        .collect();
    let mut total = 0;
    for reaper in reapers {
        total += reaper.await.unwrap();
    }
    assert_eq!(total, 60);
    let status = store.pass_status(&pass_id, T0 + 1_000).await.unwrap();
    assert_eq!((status.counts.pending, status.counts.leased), (60, 0));
}

/// Retention: passes that ended before the cutoff go, with their jobs and idempotency key;
/// younger passes, and old passes with work left, stay.
pub async fn expire_old_passes(store: Arc<dyn JobStore>) {
    const DAY: i64 = 86_400_000;
    let old = store
        .create_pass(&spec(Some("nightly-old"), 3), T0)
        .await
        .unwrap()
        .pass_id;
    store.add_jobs(&old, &[video(0)], None, T0).await.unwrap();
    store.finish_planning(&old, None).await.unwrap();
    let leased = lease_and_finish_one(store.as_ref()).await;
    let busy = running_pass(store.as_ref(), 2, 3).await;
    let young = store
        .create_pass(&spec(None, 3), T0 + DAY)
        .await
        .unwrap()
        .pass_id;
    store
        .add_jobs(&young, &[video(1)], None, T0 + DAY)
        .await
        .unwrap();
    store.cancel_pass(&young, T0 + DAY).await.unwrap();

    let expired = store.expire_passes(T0 + DAY, 100).await.unwrap();
    assert_eq!(
        expired,
        std::slice::from_ref(&old),
        "only the old pass that ended"
    );
    assert!(matches!(
        store.pass_status(&old, T0 + DAY).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.job(&leased.job.job_id).await,
        Err(Error::NotFound(_))
    ));
    assert!(matches!(
        store.list_jobs(&old, None, 10, None).await,
        Err(Error::NotFound(_))
    ));
    assert_eq!(
        store
            .pass_status(&busy, T0 + DAY)
            .await
            .unwrap()
            .counts
            .pending,
        2
    );
    assert_eq!(
        store.pass_status(&young, T0 + DAY).await.unwrap().state,
        PassState::Cancelled
    );
    let page = store.list_passes(10, None, T0 + DAY).await.unwrap();
    assert!(page.items.iter().all(|pass| pass.pass_id != old));
    let again = store
        .create_pass(&spec(Some("nightly-old"), 3), T0 + DAY)
        .await
        .unwrap();
    assert!(!again.existing, "the idempotency key went with its pass");
    assert!(store.expire_passes(T0 + DAY, 100).await.unwrap().is_empty());
    let later = store.expire_passes(T0 + 2 * DAY, 100).await.unwrap();
    assert_eq!(later, [young], "the cancelled pass goes once old enough");
}

/// A filtered listing of a pass bigger than one read finds every matching job exactly once, in
/// creation order, however many pages it takes (a store may return short pages).
pub async fn filtered_listing_walks_a_big_pass(store: Arc<dyn JobStore>) {
    const JOBS: usize = 6_000;
    let pass_id = running_pass(store.as_ref(), JOBS, 3).await;
    let mut leased = Vec::new();
    while leased.len() < 5_000 {
        leased.extend(store.lease(&request(250, 60_000), T0).await.unwrap());
    }
    for job in leased.iter().skip(10) {
        store
            .complete(&job.job.job_id, &job.lease_id, &Completion::default(), T0)
            .await
            .unwrap();
    }
    for (state, expected) in [
        (JobState::Pending, JOBS - 5_000),
        (JobState::Leased, 10),
        (JobState::Done, 4_990),
    ] {
        let mut urls = Vec::new();
        let mut cursor = None;
        for _ in 0..1_000 {
            let page = store
                .list_jobs(&pass_id, Some(state), 500, cursor.as_deref())
                .await
                .unwrap();
            assert!(page.items.len() <= 500);
            assert!(page.items.iter().all(|job| job.state == state));
            urls.extend(page.items.into_iter().map(|job| job.spec.video_url));
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(urls.len(), expected, "{state} jobs listed");
        let mut sorted = urls.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, urls, "{state} jobs once each, in creation order");
    }
}

/// The store names the workers that hold leases, through heartbeats, until they let go.
pub async fn lease_holders_are_named(store: Arc<dyn JobStore>) {
    running_pass(store.as_ref(), 3, 3).await;
    assert!(store.lease_holders().await.unwrap().is_empty());
    let for_worker = |worker: &str, max_jobs: u32| LeaseRequest {
        worker_id: worker.to_owned(),
        max_jobs,
        lease_ms: 60_000,
    };
    let b = store
        .lease(&for_worker("pod b-7f9 (gpu)", 2), T0)
        .await
        .unwrap();
    let a = store.lease(&for_worker("pod-a", 1), T0).await.unwrap();
    assert_eq!(
        store.lease_holders().await.unwrap(),
        ["pod b-7f9 (gpu)", "pod-a"],
        "sorted, each once"
    );
    store
        .heartbeat(&b[0].job.job_id, &b[0].lease_id, Some(5_000), T0 + 1)
        .await
        .unwrap();
    for job in &b {
        store
            .complete(
                &job.job.job_id,
                &job.lease_id,
                &Completion::default(),
                T0 + 2,
            )
            .await
            .unwrap();
    }
    assert_eq!(store.lease_holders().await.unwrap(), ["pod-a"]);
    store
        .fail(
            &a[0].job.job_id,
            &a[0].lease_id,
            "oom",
            FailureKind::Retryable,
            T0 + 3,
        )
        .await
        .unwrap();
    assert!(store.lease_holders().await.unwrap().is_empty());
}

/// The segment counter designates exactly one assembler per video, the segment that completed
/// the set, and designates it again when that segment reports again (a retried job).
pub async fn segment_counter_designates_one_assembler(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 1, 3).await;
    // Segments of video "a" report out of order, one of them twice; "b" is counted apart.
    assert!(!store.count_segment(&pass_id, "a", 2, 3).await.unwrap());
    assert!(!store.count_segment(&pass_id, "a", 0, 3).await.unwrap());
    assert!(!store.count_segment(&pass_id, "a", 0, 3).await.unwrap());
    assert!(!store.count_segment(&pass_id, "b", 1, 3).await.unwrap());
    assert!(store.count_segment(&pass_id, "a", 1, 3).await.unwrap());
    // The designated segment's retry is designated again; no other segment ever is.
    assert!(store.count_segment(&pass_id, "a", 1, 3).await.unwrap());
    assert!(!store.count_segment(&pass_id, "a", 2, 3).await.unwrap());
    assert!(!store.count_segment(&pass_id, "a", 0, 3).await.unwrap());
    // A one-segment video is its own assembler.
    assert!(store.count_segment(&pass_id, "c", 0, 1).await.unwrap());
    // Concurrent reports of the last segments: exactly one of them assembles.
    let reports = (0..8u32).map(|index| {
        let store = Arc::clone(&store);
        let pass_id = pass_id.clone();
        tokio::spawn(async move { store.count_segment(&pass_id, "d", index, 8).await.unwrap() })
    });
    let mut designated = 0;
    for report in reports {
        designated += usize::from(report.await.unwrap());
    }
    assert_eq!(designated, 1);
    assert!(matches!(
        store.count_segment(&pass_id, "a", 3, 3).await,
        Err(Error::InvalidArgument(_))
    ));
    assert!(matches!(
        store.count_segment("no-such-pass", "a", 0, 1).await,
        Err(Error::NotFound(_))
    ));
}

/// One holder finalizes a pass while its claim lasts; once finished, every claim says done,
/// but one that asks to finalize again, which then excludes every other holder in turn.
pub async fn finalization_is_claimed_once(store: Arc<dyn JobStore>) {
    use super::FinalizeClaim;
    let pass_id = running_pass(store.as_ref(), 1, 3).await;
    let ttl = 60_000;
    let claim = |holder: &'static str, again: bool, now_ms: i64| {
        let store = Arc::clone(&store);
        let pass_id = pass_id.clone();
        async move {
            store
                .claim_finalization(&pass_id, holder, again, ttl, now_ms)
                .await
                .unwrap()
        }
    };
    assert_eq!(claim("replica-a", false, T0).await, FinalizeClaim::Claimed);
    assert_eq!(claim("replica-b", false, T0 + 1).await, FinalizeClaim::Busy);
    assert_eq!(claim("cli", true, T0 + 1).await, FinalizeClaim::Busy);
    assert_eq!(
        claim("replica-a", false, T0 + 2).await,
        FinalizeClaim::Claimed
    );
    store.finish_finalization(&pass_id).await.unwrap();
    assert_eq!(claim("replica-b", false, T0 + 3).await, FinalizeClaim::Done);
    assert_eq!(claim("replica-a", false, T0 + 4).await, FinalizeClaim::Done);

    // `vidx finalize` of a finalized pass: its claim holds off the replicas until it finishes.
    assert_eq!(claim("cli", true, T0 + 5).await, FinalizeClaim::Claimed);
    assert_eq!(claim("replica-a", false, T0 + 6).await, FinalizeClaim::Busy);
    assert_eq!(claim("replica-b", true, T0 + 6).await, FinalizeClaim::Busy);
    store.finish_finalization(&pass_id).await.unwrap();
    assert_eq!(claim("replica-a", false, T0 + 7).await, FinalizeClaim::Done);
    assert!(matches!(
        store
            .claim_finalization("no-such-pass", "replica-a", true, ttl, T0)
            .await,
        Err(Error::NotFound(_))
    ));
}

/// Runs every check, each on a fresh store from `make`.
#[macro_export]
macro_rules! job_store_conformance {
    ($make:expr) => {
        $crate::job_store_conformance!(@cases $make;
            lease_and_complete, lease_expiry_and_relet, stale_lease_is_fenced,
            retry_with_backoff_then_dead, expiry_on_last_attempt_is_dead, cancel,
            cancel_finished_is_noop, idempotent_submit, status_and_listing,
            planning_is_resumable, probe_job_splits_into_segments, concurrent_reapers,
            expire_old_passes, filtered_listing_walks_a_big_pass, lease_holders_are_named,
            release_hands_a_job_back, releases_never_use_up_attempts,
            release_in_a_cancelled_pass_cancels, crashes_are_counted_until_dead,
            crash_counts_survive_other_transitions, panics_are_retried_once,
            segment_counter_designates_one_assembler, finalization_is_claimed_once);
    };
    (@cases $make:expr; $($case:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make.await;
                $crate::store::conformance::$case(store).await;
            }
        )*
    };
}
