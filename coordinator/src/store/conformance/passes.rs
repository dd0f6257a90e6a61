//! Conformance cases for passes as a whole: status and listings, resumable planning, probe jobs
//! split into segments, concurrent reapers, expiry of old passes, lease holders, the segment
//! counter and the finalization claim. Part of the suite in [`super`], run by the same macro.

use super::*;

/// Status counts, job listing with paging and filters, pass listing newest first.
pub async fn status_and_listing(store: Arc<dyn JobStore>) {
    let pass_id = running_pass(store.as_ref(), 5, 3).await;
    let leased = store.lease(&request(2, 60_000), T0).await.unwrap();
    let result = Completion {
        result_url: Some("file:///index/doc.json".into()),
        segments: Vec::new(),
        skipped: false,
    };
    store
        .complete(&leased[0].job.job_id, &leased[0].lease_id, &result, T0)
        .await
        .unwrap();
    let status = store.pass_status(&pass_id, T0).await.unwrap();
    assert_eq!(status.skipped, 0);
    // A video indexed already: done, and counted as skipped.
    let skipped = Completion {
        skipped: true,
        ..result.clone()
    };
    store
        .complete(&leased[1].job.job_id, &leased[1].lease_id, &skipped, T0)
        .await
        .unwrap();

    let status = store.pass_status(&pass_id, T0).await.unwrap();
    assert_eq!(
        (
            status.counts.pending,
            status.counts.leased,
            status.counts.done,
            status.skipped
        ),
        (3, 0, 2, 1)
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
        skipped: false,
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
        skipped: false,
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
        skipped: false,
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
/// but one that asks to finalize again: that one excludes every other re-run until it
/// finishes, and the pass stays finalized for the rest meanwhile (a re-run that fails undoes
/// nothing).
pub async fn finalization_is_claimed_once(store: Arc<dyn JobStore>) {
    use crate::store::FinalizeClaim;
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

    // `vidx finalize` of a finalized pass: its claim holds off other re-runs until it finishes;
    // it renews its claim as it goes.
    assert_eq!(claim("cli", true, T0 + 5).await, FinalizeClaim::Claimed);
    assert_eq!(claim("replica-a", false, T0 + 6).await, FinalizeClaim::Done);
    assert_eq!(claim("replica-b", true, T0 + 6).await, FinalizeClaim::Busy);
    assert_eq!(claim("cli", true, T0 + 7).await, FinalizeClaim::Claimed);
    store.finish_finalization(&pass_id).await.unwrap();
    assert_eq!(claim("replica-a", false, T0 + 7).await, FinalizeClaim::Done);
    // Finishing let the claim go: the next re-run takes it at once.
    assert_eq!(
        claim("replica-b", true, T0 + 8).await,
        FinalizeClaim::Claimed
    );
    assert!(matches!(
        store
            .claim_finalization("no-such-pass", "replica-a", true, ttl, T0)
            .await,
        Err(Error::NotFound(_))
    ));
}
