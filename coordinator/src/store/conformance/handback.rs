//! Conformance cases for the ways a job leaves a worker without finishing: handed back
//! (`release`), lost with a crashed worker (crash counting in the reaper), and failed with a
//! panic (retried once). Part of the suite in [`super`], run by the same macro.

use std::sync::Arc;

use super::{T0, request, running_pass};
use crate::error::Error;
use crate::store::{JobStore, crash_reason};
use vidx_core::domain::{Completion, FailureKind, JobState, PassState};

/// A released job is pending at once and leasable by the very next call, with the attempt it was
/// leased under given back; the release is fenced by the lease id, and counted in the pass.
pub async fn release_hands_a_job_back(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 2, 3).await;
    let held = store
        .lease(&request(1, 60_000), T0)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(held.job.attempt, 1);

    let wrong = store
        .release(&held.job.job_id, "not-the-lease", T0 + 1)
        .await;
    assert!(
        matches!(
            wrong,
            Err(Error::StaleLease { ref job_id, state: JobState::Leased }) if *job_id == held.job.job_id
        ),
        "{wrong:?}"
    );

    let state = store
        .release(&held.job.job_id, &held.lease_id, T0 + 2)
        .await
        .unwrap();
    assert_eq!(state, JobState::Pending);
    let job = store.job(&held.job.job_id).await.unwrap();
    assert_eq!(
        (job.state, job.attempt, job.crashes),
        (JobState::Pending, 0, 0),
        "the attempt is given back and nothing counts as a crash"
    );
    let status = store.pass_status(&pass_id, T0 + 2).await.unwrap();
    assert_eq!(
        (status.counts.pending, status.counts.leased, status.released),
        (2, 0, 1)
    );
    assert!(
        status.recent_errors.is_empty(),
        "a release is not an error: {:?}",
        status.recent_errors
    );
    assert_eq!(store.leases_in_flight().await.unwrap(), 0);

    // Due now: the same instant's lease gets it back, with the same attempt number as before.
    let leased = store.lease(&request(2, 60_000), T0 + 2).await.unwrap();
    let again = leased
        .iter()
        .find(|leased| leased.job.job_id == held.job.job_id)
        .expect("the released job is leasable at once");
    assert_eq!(again.job.attempt, 1);
    assert_ne!(again.lease_id, held.lease_id);

    // The old lease stays fenced off everywhere, release included.
    let twice = store
        .release(&held.job.job_id, &held.lease_id, T0 + 3)
        .await;
    assert!(matches!(twice, Err(Error::StaleLease { .. })), "{twice:?}");
    let late = store
        .complete(
            &held.job.job_id,
            &held.lease_id,
            &Completion::default(),
            T0 + 3,
        )
        .await;
    assert!(matches!(late, Err(Error::StaleLease { .. })), "{late:?}");
    store
        .complete(
            &again.job.job_id,
            &again.lease_id,
            &Completion::default(),
            T0 + 4,
        )
        .await
        .unwrap();
    let done = store
        .release(&again.job.job_id, &again.lease_id, T0 + 5)
        .await;
    assert!(
        matches!(
            done,
            Err(Error::StaleLease {
                state: JobState::Done,
                ..
            })
        ),
        "{done:?}"
    );
    let missing = store.release("pass-x.nope", "1", T0).await;
    assert!(matches!(missing, Err(Error::NotFound(_))), "{missing:?}");
}

/// Releasing jobs over and over never uses up attempts: a job handed back more times than it
/// has attempts is still leased, and finished, on its first attempt.
pub async fn releases_never_use_up_attempts(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 1, 2).await;
    let mut now = T0;
    for _ in 0..5 {
        let held = store
            .lease(&request(1, 60_000), now)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(held.job.attempt, 1);
        store
            .release(&held.job.job_id, &held.lease_id, now)
            .await
            .unwrap();
        now += 1;
    }
    let last = store
        .lease(&request(1, 60_000), now)
        .await
        .unwrap()
        .remove(0);
    store
        .complete(
            &last.job.job_id,
            &last.lease_id,
            &Completion::default(),
            now,
        )
        .await
        .unwrap();
    let status = store.pass_status(&pass_id, now).await.unwrap();
    assert_eq!(
        (status.state, status.counts.done, status.released),
        (PassState::Finished, 1, 5)
    );
}

/// A job released after its pass was cancelled is cancelled, not pending.
pub async fn release_in_a_cancelled_pass_cancels(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 2, 3).await;
    let held = store
        .lease(&request(1, 60_000), T0)
        .await
        .unwrap()
        .remove(0);
    store.cancel_pass(&pass_id, T0 + 1).await.unwrap();
    let state = store
        .release(&held.job.job_id, &held.lease_id, T0 + 2)
        .await
        .unwrap();
    assert_eq!(state, JobState::Cancelled);
    assert_eq!(
        store.job(&held.job.job_id).await.unwrap().state,
        JobState::Cancelled
    );
    let status = store.pass_status(&pass_id, T0 + 2).await.unwrap();
    assert_eq!(
        (status.state, status.counts.cancelled, status.counts.leased),
        (PassState::Cancelled, 2, 0)
    );
    assert!(
        store
            .lease(&request(5, 60_000), T0 + 3)
            .await
            .unwrap()
            .is_empty()
    );
}

/// Each expired lease counts a crash; at the policy's `max_crashes` (2 in the suite's
/// [`RETRY`](super::RETRY)) the job is dead with the crash reason, however many attempts are
/// left. Other jobs of the pass are untouched, and a heartbeat keeps a lease from counting one.
pub async fn crashes_are_counted_until_dead(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 2, 10).await;
    let first = store.lease(&request(1, 1_000), T0).await.unwrap().remove(0);
    let poison = first.job.job_id.clone();
    assert_eq!(first.job.crashes, 0);
    assert_eq!(store.reap_expired(T0 + 1_000, 10).await.unwrap(), 1);
    let job = store.job(&poison).await.unwrap();
    assert_eq!(
        (job.state, job.crashes, job.last_error.as_deref()),
        (JobState::Pending, 1, Some("lease expired"))
    );

    let both = store.lease(&request(2, 1_000), T0 + 2_000).await.unwrap();
    assert_eq!(both.len(), 2);
    let (again, other): (Vec<_>, Vec<_>) = both
        .into_iter()
        .partition(|leased| leased.job.job_id == poison);
    let (again, other) = (&again[0], &other[0]);
    assert_eq!(
        (again.job.attempt, again.job.crashes),
        (2, 1),
        "the lease carries the crash count"
    );
    assert_eq!(other.job.crashes, 0);
    store
        .complete(
            &other.job.job_id,
            &other.lease_id,
            &Completion::default(),
            T0 + 2_001,
        )
        .await
        .unwrap();
    // A heartbeat holds the lease: no expiry, no crash.
    store
        .heartbeat(&poison, &again.lease_id, None, T0 + 2_500)
        .await
        .unwrap();
    assert_eq!(store.reap_expired(T0 + 3_499, 10).await.unwrap(), 0);
    assert_eq!(store.reap_expired(T0 + 3_500, 10).await.unwrap(), 1);

    let dead = store.job(&poison).await.unwrap();
    let reason = crash_reason(2);
    assert_eq!(reason, "worker crashed 2 times on this video");
    assert_eq!(
        (dead.state, dead.crashes, dead.last_error.as_deref()),
        (JobState::Dead, 2, Some(reason.as_str())),
        "dead at max crashes with 8 attempts to spare"
    );
    let status = store.pass_status(&pass_id, T0 + 3_500).await.unwrap();
    assert_eq!(
        (status.state, status.counts.dead, status.counts.done),
        (PassState::Finished, 1, 1),
        "the other video finished"
    );
    assert_eq!(status.recent_errors[0].reason, reason);
    assert_eq!(status.recent_errors[0].job_id, poison);
    let listed = store
        .list_jobs(&pass_id, Some(JobState::Dead), 10, None)
        .await
        .unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].crashes, 2, "listings show the crash count");
    let all = store.list_jobs(&pass_id, None, 10, None).await.unwrap();
    assert_eq!(
        all.items
            .iter()
            .map(|job| (job.job_id == poison, job.crashes))
            .collect::<Vec<_>>(),
        [(true, 2), (false, 0)]
    );
}

/// A crash count is kept through releases and retries, so crashes spread over other
/// transitions still add up.
pub async fn crash_counts_survive_other_transitions(store: Arc<dyn JobStore>) {
    running_pass(store.as_ref(), 1, 10).await;
    let first = store.lease(&request(1, 1_000), T0).await.unwrap().remove(0);
    let job_id = first.job.job_id.clone();
    store.reap_expired(T0 + 1_000, 10).await.unwrap();

    let second = store
        .lease(&request(1, 1_000), T0 + 1_001)
        .await
        .unwrap()
        .remove(0);
    store
        .release(&job_id, &second.lease_id, T0 + 1_002)
        .await
        .unwrap();
    let third = store
        .lease(&request(1, 1_000), T0 + 1_003)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(third.job.crashes, 1, "a release keeps the count");
    let failed = store
        .fail(
            &job_id,
            &third.lease_id,
            "store timed out",
            FailureKind::Retryable,
            T0 + 1_004,
        )
        .await
        .unwrap();
    assert_eq!(failed.state, JobState::Failed);
    assert_eq!(store.job(&job_id).await.unwrap().crashes, 1);

    let fourth = store
        .lease(&request(1, 1_000), failed.retry_at_ms)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(fourth.job.crashes, 1, "a retry keeps the count");
    store
        .reap_expired(failed.retry_at_ms + 1_000, 10)
        .await
        .unwrap();
    let dead = store.job(&job_id).await.unwrap();
    assert_eq!(
        (dead.state, dead.crashes, dead.last_error),
        (JobState::Dead, 2, Some(crash_reason(2)))
    );
}

/// A panic is retried once like a retryable failure; the second panic makes the job dead with
/// the panic message, attempts or not. A permanent failure is dead at once.
pub async fn panics_are_retried_once(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 1, 10).await;
    let first = store
        .lease(&request(1, 60_000), T0)
        .await
        .unwrap()
        .remove(0);
    let job_id = first.job.job_id.clone();
    let outcome = store
        .fail(
            &job_id,
            &first.lease_id,
            "processing panicked: index out of bounds",
            FailureKind::Panic,
            T0 + 1,
        )
        .await
        .unwrap();
    assert_eq!(
        outcome.state,
        JobState::Failed,
        "the first panic is retried"
    );
    assert_eq!(outcome.retry_at_ms, T0 + 1 + 1_000);

    let second = store
        .lease(&request(1, 60_000), outcome.retry_at_ms)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(
        (second.job.job_id.as_str(), second.job.attempt),
        (job_id.as_str(), 2)
    );
    // A retryable failure between two panics does not reset the panic count.
    let retried = store
        .fail(
            &job_id,
            &second.lease_id,
            "store timed out",
            FailureKind::Retryable,
            outcome.retry_at_ms + 1,
        )
        .await
        .unwrap();
    assert_eq!(retried.state, JobState::Failed);
    let third = store
        .lease(&request(1, 60_000), retried.retry_at_ms)
        .await
        .unwrap()
        .remove(0);
    let dead = store
        .fail(
            &job_id,
            &third.lease_id,
            "processing panicked: attempt to divide by zero",
            FailureKind::Panic,
            retried.retry_at_ms + 1,
        )
        .await
        .unwrap();
    assert_eq!(
        (dead.state, dead.retry_at_ms),
        (JobState::Dead, 0),
        "the second panic is fatal with attempts to spare"
    );
    let job = store.job(&job_id).await.unwrap();
    assert_eq!(
        (job.state, job.last_error.as_deref()),
        (
            JobState::Dead,
            Some("processing panicked: attempt to divide by zero")
        )
    );
    assert_eq!(job.crashes, 0, "a panic is not a crash");
    let status = store
        .pass_status(&pass_id, retried.retry_at_ms + 1)
        .await
        .unwrap();
    assert_eq!((status.state, status.counts.dead), (PassState::Finished, 1));

    let other_pass = running_pass(store.as_ref(), 1, 10).await;
    let other = store
        .lease(&request(1, 60_000), retried.retry_at_ms + 2)
        .await
        .unwrap()
        .remove(0);
    assert_eq!(other.job.pass_id, other_pass);
    let permanent = store
        .fail(
            &other.job.job_id,
            &other.lease_id,
            "not a video",
            FailureKind::Permanent,
            retried.retry_at_ms + 3,
        )
        .await
        .unwrap();
    assert_eq!(
        permanent.state,
        JobState::Dead,
        "a permanent failure is dead at once"
    );
}
