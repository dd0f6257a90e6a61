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
    use vidx_coordinator::testing::RedisServer;

    async fn make() -> (Arc<dyn JobStore>, RedisServer) {
        let server = RedisServer::start().expect("redis-server starts (run scripts/setup.sh)");
        let store = RedisStore::connect(&server.url(), "vidx-test", RETRY)
            .await
            .expect("connects");
        (Arc::new(store), server)
    }

    vidx_coordinator::job_store_conformance!(make());
}
