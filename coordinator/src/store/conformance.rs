//! One behaviour for every [`JobStore`]: these checks run against the in-memory store and against
//! a real `redis-server` (see `coordinator/tests/store_conformance.rs`). Each check takes a fresh,
//! empty store and drives time explicitly, so lease expiry and backoff need no sleeping.
//!
//! Checks panic with a description on failure, like any test assertion.

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashSet;
use std::sync::Arc;

mod handback;
mod passes;

pub use self::handback::{
    crash_counts_survive_other_transitions, crashes_are_counted_until_dead,
    panics_are_retried_once, release_hands_a_job_back, release_in_a_cancelled_pass_cancels,
    releases_never_use_up_attempts,
};
pub use self::passes::{
    concurrent_reapers, expire_old_passes, filtered_listing_walks_a_big_pass,
    finalization_is_claimed_once, lease_holders_are_named, planning_is_resumable,
    probe_job_splits_into_segments, segment_counter_designates_one_assembler, status_and_listing,
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
