//! Runs the job-store conformance suite against both stores: the in-memory one, and the Redis one
//! against a real `redis-server` started on a free loopback port for each test.

mod memory {
    use std::sync::Arc;

    use vidx_coordinator::store::{JobStore, MemoryStore, conformance::RETRY};

    async fn make() -> (Arc<dyn JobStore>, ()) {
        (Arc::new(MemoryStore::new(RETRY)), ())
    }

    vidx_coordinator::job_store_conformance!(make());
}

mod redis {
    use std::sync::Arc;

    use vidx_coordinator::store::{JobStore, RedisStore, conformance::RETRY};
    use vidx_testkit::redis::RedisServer;

    async fn make() -> (Arc<dyn JobStore>, RedisServer) {
        let server = RedisServer::start()
            .expect("redis-server starts (run scripts/install-test-servers.sh)");
        let store = RedisStore::connect(&server.url(), "vidx-test", RETRY)
            .await
            .expect("connects");
        (Arc::new(store), server)
    }

    vidx_coordinator::job_store_conformance!(make());
}

/// An indexing pass over `source` into `destination`, three attempts a job.
fn index_pass(source: &str, destination: &str) -> vidx_core::domain::PassSpec {
    use vidx_core::domain::{PassSpec, Sampling, TaskSpec};
    PassSpec {
        source: source.into(),
        destination: destination.into(),
        task: TaskSpec::Index { prompt: None },
        sampling: Sampling::default(),
        idempotency_key: None,
        max_attempts: 3,
        verify: None,
    }
}

/// What only the Redis store can show: its layout stays compact and expiry leaves nothing behind.
mod redis_layout {
    use vidx_coordinator::store::{JobStore, LeaseRequest, RedisStore, conformance::RETRY};
    use vidx_core::domain::{Completion, NewJob};
    use vidx_testkit::redis::RedisServer;

    const T0: i64 = 1_700_000_000_000;

    async fn keys_matching(
        connection: &mut redis::aio::MultiplexedConnection,
        pattern: &str,
    ) -> Vec<String> {
        let mut keys = Vec::new();
        let mut cursor = 0u64;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(connection)
                .await
                .unwrap();
            keys.extend(batch);
            if next == 0 {
                return keys;
            }
            cursor = next;
        }
    }

    /// Records stay in Redis's compact listpack encoding through planning and completion with
    /// S3-like ETags and evidence-document results; the de-duplication index is gone once
    /// planning ends; expiring the pass removes every key that names it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_stay_compact_and_expiry_frees_every_key() {
        let server = RedisServer::start()
            .expect("redis-server starts (run scripts/install-test-servers.sh)");
        let store = RedisStore::connect(&server.url(), "vidx-test", RETRY)
            .await
            .unwrap();
        let mut connection = redis::Client::open(server.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let spec = super::index_pass("s3://archive/broadcast/2026/", "s3://archive-index/v1/");
        let pass_id = store.create_pass(&spec, T0).await.unwrap().pass_id;
        let jobs: Vec<NewJob> = (0..200)
            .map(|index| NewJob {
                video_url: format!(
                    "s3://archive/broadcast/2026/channel-{}/clip-{index:06}.mp4",
                    index % 7
                ),
                start_s: 0.0,
                end_s: 0.0,
                size_bytes: 1_000_000_000 + index,
                etag: Some(format!("\"{:032x}\"", index * 7_919)),
                probe: true,
            })
            .collect();
        assert_eq!(
            store.add_jobs(&pass_id, &jobs, None, T0).await.unwrap(),
            200
        );
        assert!(
            !keys_matching(&mut connection, &format!("vidx-test:d:{pass_id}:*"))
                .await
                .is_empty()
        );
        store.finish_planning(&pass_id, None).await.unwrap();
        assert!(
            keys_matching(&mut connection, &format!("vidx-test:d:{pass_id}:*"))
                .await
                .is_empty(),
            "the de-duplication index goes when planning ends"
        );
        let encoding = |bucket: u64| {
            let mut connection = connection.clone();
            let key = format!("vidx-test:j:{pass_id}:{bucket}");
            async move {
                let encoding: String = redis::cmd("OBJECT")
                    .arg("ENCODING")
                    .arg(&key)
                    .query_async(&mut connection)
                    .await
                    .unwrap();
                encoding
            }
        };
        assert_eq!(encoding(1).await, "listpack");

        let request = LeaseRequest {
            worker_id: "w".into(),
            max_jobs: 50,
            lease_ms: 60_000,
        };
        let mut done = 0;
        for _ in 0..10 {
            let leased = store.lease(&request, T0).await.unwrap();
            if leased.is_empty() {
                break;
            }
            for job in leased {
                assert_eq!(job.job.spec, jobs[done], "the spec comes back exactly");
                let result = Completion {
                    result_url: Some(format!(
                        "v1/videos/{:032x}/5f0c2a94d1e8b7c36a4f9e2d1b0c8a7e/document.json",
                        done * 104_729
                    )),
                    segments: Vec::new(),
                    skipped: false,
                };
                store
                    .complete(&job.job.job_id, &job.lease_id, &result, T0)
                    .await
                    .unwrap();
                let stored = store.job(&job.job.job_id).await.unwrap();
                assert_eq!(
                    stored.result_url, result.result_url,
                    "the result comes back exactly"
                );
                done += 1;
            }
        }
        assert_eq!(done, 200);
        assert_eq!(encoding(1).await, "listpack", "done records stay compact");

        let expired = store.expire_passes(T0 + 1, 10).await.unwrap();
        assert_eq!(expired, std::slice::from_ref(&pass_id));
        let left = keys_matching(&mut connection, &format!("*{pass_id}*")).await;
        assert!(left.is_empty(), "keys left after expiry: {left:?}");
    }
}

/// What a Redis restart under a running store does to the calls that follow it.
mod redis_restart {
    use vidx_coordinator::store::{JobStore, RedisStore, conformance::RETRY};
    use vidx_testkit::redis::{RedisOptions, RedisServer};

    const T0: i64 = 1_700_000_000_000;

    /// Redis is killed and restarted on its port from its append-only file: the first read after
    /// it answers (the connection it finds dropped is replaced and the read made again), and so
    /// does every read after that, many times over so a lucky reconnect cannot hide a failure.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_after_a_redis_restart_answer_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = RedisOptions {
            append_only: true,
            dir: Some(dir.path().to_owned()),
            port: None,
        };
        let server = RedisServer::start_with(&options)
            .expect("redis-server starts (run scripts/install-test-servers.sh)");
        options.port = Some(server.port());
        let store = RedisStore::connect(&server.url(), "vidx-test", RETRY)
            .await
            .unwrap();
        let spec = super::index_pass("s3://archive/clips/", "s3://archive-index/");
        let pass_id = store.create_pass(&spec, T0).await.unwrap().pass_id;
        // Acknowledged writes reach the append-only file within a second (fsync everysec).
        tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
        let mut server = server;
        for restart in 0..5 {
            drop(server);
            server = RedisServer::start_with(&options).expect("redis-server restarts");
            let status = store
                .pass_status(&pass_id, T0 + 1)
                .await
                .unwrap_or_else(|error| {
                    panic!("restart {restart}: the first read after it failed: {error}")
                });
            assert_eq!(status.pass_id, pass_id);
            let jobs = store.list_jobs(&pass_id, None, 10, None).await.unwrap();
            assert!(jobs.items.is_empty());
        }
        drop(server);
    }
}
