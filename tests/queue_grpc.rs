//! The job queue through the real gRPC server against a real `redis-server`: exactly-once under
//! concurrency, authentication, and a status code for every kind of bad request.

use std::sync::Arc;
use std::time::Duration;

use tonic::Code;
use vidx::bench::{drive, start_coordinator, submit_and_plan, write_manifest};
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{RedisStore, RetryPolicy};
use vidx_core::auth::Token;
use vidx_core::client::{ClientConfig, CoordinatorClient};
use vidx_core::domain::{JobState, PassState};
use vidx_proto::v1 as pb;
use vidx_testkit::redis::RedisServer;

async fn redis_coordinator(server: &RedisServer) -> Coordinator {
    let store = RedisStore::connect(&server.url(), "vidx", RetryPolicy::default())
        .await
        .unwrap();
    Coordinator::new(Arc::new(store), Metrics::new())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_jobs_complete_exactly_once_with_sixteen_clients() {
    let redis =
        RedisServer::start().expect("redis-server starts (run scripts/install-test-servers.sh)");
    let token = Token::new("test-token").unwrap();
    let (url, stop, server) =
        start_coordinator(redis_coordinator(&redis).await, Some(token.clone()))
            .await
            .unwrap();
    let config = ClientConfig::new(url, Some(token));
    let mut client = CoordinatorClient::connect(&config).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let manifest = write_manifest(scratch.path(), 10_000).unwrap();
    let pass_id = submit_and_plan(&mut client, &manifest, "file:///tmp/vidx-test-out/")
        .await
        .unwrap();

    let report = drive(&config, 16, 16, 10_000, Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(report.completed, 10_000, "every completion accepted");
    assert_eq!(report.distinct, 10_000, "no job completed twice");

    let status = client.status(&pass_id).await.unwrap();
    assert_eq!(
        (status.counts.done, status.counts.total()),
        (10_000, 10_000)
    );
    assert_eq!(status.state, PassState::Finished);
    let mut done = 0;
    let mut token = None;
    for _ in 0..20 {
        let page = client
            .list_jobs(&pass_id, Some(JobState::Done), 1_000, token)
            .await
            .unwrap();
        assert!(
            page.items
                .iter()
                .all(|job| job.attempt == 1 && job.state == JobState::Done)
        );
        done += page.items.len();
        token = page.next;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(done, 10_000);
    let _ = stop.send(());
    server.await.unwrap();
}

fn code_of<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> (Code, String) {
    let status = result.expect_err("the call must fail");
    (status.code(), status.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_valid_token_are_unauthenticated() {
    let redis = RedisServer::start().unwrap();
    let token = Token::new("right-token").unwrap();
    let (url, stop, server) = start_coordinator(redis_coordinator(&redis).await, Some(token))
        .await
        .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    let mut bare = pb::pass_service_client::PassServiceClient::new(channel.clone());
    let (code, message) = code_of(bare.list_passes(pb::ListPassesRequest::default()).await);
    assert_eq!(code, Code::Unauthenticated, "{message}");
    let mut bare_worker = pb::worker_service_client::WorkerServiceClient::new(channel.clone());
    let (code, _) = code_of(
        bare_worker
            .lease_jobs(pb::LeaseJobsRequest::default())
            .await,
    );
    assert_eq!(code, Code::Unauthenticated);

    let wrong = ClientConfig::new(url.clone(), Some(Token::new("wrong-token").unwrap()));
    let wrong = CoordinatorClient::connect(&wrong).await.unwrap();
    match wrong.list_passes(10, None).await {
        Err(vidx_core::Error::Unauthenticated(_)) => {}
        other => panic!("wrong token accepted: {other:?}"),
    }

    // Health checks need no token.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let reply = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "vidx.v1.PassService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        reply.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_request_gets_its_status_code() {
    let redis = RedisServer::start().unwrap();
    let token = Token::new("t").unwrap();
    let (url, stop, server) =
        start_coordinator(redis_coordinator(&redis).await, Some(token.clone()))
            .await
            .unwrap();
    let channel = tonic::transport::Endpoint::from_shared(url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let auth = vidx_core::auth::AttachToken::new(Some(&token));
    let mut passes =
        pb::pass_service_client::PassServiceClient::with_interceptor(channel.clone(), auth.clone());
    let mut workers =
        pb::worker_service_client::WorkerServiceClient::with_interceptor(channel, auth);

    let good = || pb::SubmitPassRequest {
        source: "file:///tmp/vidx-corpus/".into(),
        destination: "file:///tmp/vidx-out/".into(),
        ..Default::default()
    };
    let bad_submissions = [
        (
            pb::SubmitPassRequest {
                source: String::new(),
                ..good()
            },
            "empty",
        ),
        (
            pb::SubmitPassRequest {
                source: "not a url".into(),
                ..good()
            },
            "not a url",
        ),
        (
            pb::SubmitPassRequest {
                source: "ftp://host/videos/".into(),
                ..good()
            },
            "unsupported scheme",
        ),
        (
            pb::SubmitPassRequest {
                destination: "gopher://x/".into(),
                ..good()
            },
            "unsupported scheme",
        ),
        (
            pb::SubmitPassRequest {
                sampling: Some(pb::Sampling {
                    fps: -1.0,
                    ..Default::default()
                }),
                ..good()
            },
            "fps",
        ),
        (
            pb::SubmitPassRequest {
                sampling: Some(pb::Sampling {
                    max_frames: 100_000,
                    ..Default::default()
                }),
                ..good()
            },
            "max frames",
        ),
        (
            pb::SubmitPassRequest {
                max_attempts: 1_000,
                ..good()
            },
            "max attempts",
        ),
        (
            pb::SubmitPassRequest {
                task: Some(pb::Task {
                    kind: Some(pb::task::Kind::Questions(pb::QuestionsTask {
                        questions: vec![],
                    })),
                }),
                ..good()
            },
            "no questions",
        ),
    ];
    for (request, needle) in bad_submissions {
        let (code, message) = code_of(passes.submit_pass(request).await);
        assert_eq!(code, Code::InvalidArgument, "{message}");
        assert!(
            message.contains(needle),
            "{message:?} should mention {needle:?}"
        );
    }

    let unknown = || "pass-0000000000000000".to_owned();
    let (code, message) = code_of(
        passes
            .get_pass(pb::GetPassRequest { pass_id: unknown() })
            .await,
    );
    assert_eq!(code, Code::NotFound, "{message}");
    assert!(message.contains("pass-0000000000000000"));
    let (code, _) = code_of(
        passes
            .cancel_pass(pb::CancelPassRequest { pass_id: unknown() })
            .await,
    );
    assert_eq!(code, Code::NotFound);
    let (code, _) = code_of(
        passes
            .list_jobs(pb::ListJobsRequest {
                pass_id: unknown(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::NotFound);
    let (code, _) = code_of(
        passes
            .get_pass(pb::GetPassRequest {
                pass_id: String::new(),
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);

    let scratch = tempfile::tempdir().unwrap();
    let manifest = write_manifest(scratch.path(), 5).unwrap();
    let mut client = CoordinatorClient::connect(&ClientConfig::new(url, Some(token)))
        .await
        .unwrap();
    let pass_id = submit_and_plan(&mut client, &manifest, "file:///tmp/vidx-out/")
        .await
        .unwrap();
    let other_id = submit_and_plan(&mut client, &manifest, "file:///tmp/vidx-out/")
        .await
        .unwrap();
    let first_page = passes
        .list_jobs(pb::ListJobsRequest {
            pass_id: other_id.clone(),
            page_size: 2,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let foreign_token = first_page.next_page_token;
    assert!(!foreign_token.is_empty());
    let (code, message) = code_of(
        passes
            .list_jobs(pb::ListJobsRequest {
                pass_id: pass_id.clone(),
                page_size: 2,
                page_token: foreign_token,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let (code, _) = code_of(
        passes
            .list_passes(pb::ListPassesRequest {
                page_size: 2,
                page_token: "garbage!".into(),
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(
        passes
            .list_jobs(pb::ListJobsRequest {
                pass_id: pass_id.clone(),
                state: 99,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(
        passes
            .list_passes(pb::ListPassesRequest {
                page_size: 5_000,
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);

    let lease = |max_jobs, lease_ms| pb::LeaseJobsRequest {
        worker_id: "w".into(),
        max_jobs,
        lease_ms,
    };
    let (code, _) = code_of(workers.lease_jobs(lease(10_000, 0)).await);
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(workers.lease_jobs(lease(1, 10)).await);
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(workers.lease_jobs(pb::LeaseJobsRequest::default()).await);
    assert_eq!(code, Code::InvalidArgument, "a worker id is required");

    // A lease long enough that the background reaper cannot take it back before the
    // completion below, however slow the RPCs in between.
    let leased = workers
        .lease_jobs(lease(1, 60_000))
        .await
        .unwrap()
        .into_inner()
        .jobs
        .remove(0);
    let job_id = leased.job.unwrap().job_id;
    let complete = |lease_id: &str| pb::CompleteJobRequest {
        job_id: job_id.clone(),
        lease_id: lease_id.to_owned(),
        ..Default::default()
    };
    // A stale lease is ABORTED (a fencing conflict), distinct from every other refusal.
    let (code, message) = code_of(workers.complete_job(complete("999999")).await);
    assert_eq!(code, Code::Aborted, "{message}");
    assert!(message.contains("stale lease"), "{message}");
    let (code, _) = code_of(
        workers
            .complete_job(pb::CompleteJobRequest {
                job_id: "pass-x.0".into(),
                lease_id: "1".into(),
                ..Default::default()
            })
            .await,
    );
    assert_eq!(code, Code::NotFound);
    let (code, _) = code_of(
        workers
            .heartbeat(pb::HeartbeatRequest {
                job_id: String::new(),
                lease_id: "1".into(),
                extend_ms: 0,
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    let (code, _) = code_of(
        workers
            .fail_job(pb::FailJobRequest {
                job_id: job_id.clone(),
                lease_id: leased.lease_id.clone(),
                reason: String::new(),
                retryable: true,
                kind: 0,
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument, "a failure needs a reason");
    let (code, message) = code_of(
        workers
            .fail_job(pb::FailJobRequest {
                job_id: job_id.clone(),
                lease_id: leased.lease_id.clone(),
                reason: "boom".into(),
                retryable: true,
                kind: 99,
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert!(message.contains("failure kind 99"), "{message}");
    let (code, _) = code_of(
        workers
            .release_job(pb::ReleaseJobRequest {
                job_id: job_id.clone(),
                lease_id: String::new(),
                reason: "shutdown".into(),
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument, "a release needs a lease id");
    let (code, _) = code_of(
        workers
            .complete_job(pb::CompleteJobRequest {
                segments: vec![pb::Segment {
                    start_s: f64::NAN,
                    end_s: 1.0,
                }],
                ..complete(&leased.lease_id)
            })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    workers
        .complete_job(complete(&leased.lease_id))
        .await
        .unwrap();
    let _ = stop.send(());
    server.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_round_trips_the_submitted_spec() {
    use vidx_core::domain::{PassSpec, Sampling, TaskSpec};
    let redis = RedisServer::start().unwrap();
    let (url, stop, server) = start_coordinator(redis_coordinator(&redis).await, None)
        .await
        .unwrap();
    let client = CoordinatorClient::connect(&ClientConfig::new(url, None))
        .await
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let spec = PassSpec {
        source: write_manifest(scratch.path(), 3).unwrap(),
        destination: "file:///tmp/vidx-out/".into(),
        task: TaskSpec::Questions {
            questions: vec!["where is the red car?".into(), "who speaks?".into()],
        },
        sampling: Sampling {
            fps: 2.0,
            max_frames: 8,
            segment_secs: 120.0,
        },
        idempotency_key: Some("round-trip".into()),
        max_attempts: 5,
        verify: None,
    };
    let created = client.submit(&spec).await.unwrap();
    let again = client.submit(&spec).await.unwrap();
    assert_eq!(
        (again.pass_id.as_str(), again.existing),
        (created.pass_id.as_str(), true)
    );
    let status = client.status(&created.pass_id).await.unwrap();
    assert_eq!(status.spec, spec);
    let _ = stop.send(());
    server.await.unwrap();
}
