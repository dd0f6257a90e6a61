//! Runs the `JobSource` conformance suite against both implementations a worker can be given:
//! the in-process coordinator (as the embedded `vidx index` runs it, here over the memory store),
//! and the gRPC client against a coordinator served on a loopback port over a real Redis (as
//! `vidx worker` runs it).

use std::sync::Arc;

use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::source_conformance::SourceFixture;
use vidx_coordinator::store::RetryPolicy;

/// Retries come due within milliseconds, so the `fail` case sees its retry at once.
const RETRY: RetryPolicy = RetryPolicy {
    base_backoff_ms: 1,
    max_backoff_ms: 1,
    max_crashes: vidx_coordinator::store::DEFAULT_MAX_CRASHES,
};

mod in_process {
    use super::*;
    use vidx_coordinator::store::MemoryStore;

    async fn make() -> (SourceFixture, ()) {
        let coordinator = Coordinator::new(Arc::new(MemoryStore::new(RETRY)), Metrics::new());
        let fixture = SourceFixture {
            source: Arc::new(coordinator.clone()),
            coordinator,
        };
        (fixture, ())
    }

    vidx_coordinator::job_source_conformance!(make());
}

mod over_grpc {
    use super::*;
    use tokio_util::sync::CancellationToken;
    use vidx_coordinator::server::{self, ServerConfig};
    use vidx_coordinator::store::RedisStore;
    use vidx_core::auth::Token;
    use vidx_core::client::{ClientConfig, CoordinatorClient};
    use vidx_testkit::redis::RedisServer;

    use std::time::Duration;

    /// Stops the served coordinator, then Redis, when a case ends.
    struct Served {
        stop: CancellationToken,
        _redis: RedisServer,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.stop.cancel();
        }
    }

    async fn make() -> (SourceFixture, Served) {
        let redis = RedisServer::start()
            .expect("redis-server starts (run scripts/install-test-servers.sh)");
        let store = RedisStore::connect(&redis.url(), "vidx-source", RETRY)
            .await
            .expect("connects");
        let coordinator = Coordinator::new(Arc::new(store), Metrics::new());
        let token = Token::new("conformance-token").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        tokio::spawn(server::run(
            coordinator.clone(),
            ServerConfig {
                auth_token: Some(token.clone()),
                // The suite reaps by hand (and asserts what a reap took): a background reap
                // between a lease's deadline and the suite's own would take the job first.
                reap_interval: Duration::from_secs(3_600),
                ..ServerConfig::default()
            },
            listener,
            None,
            stop.clone().cancelled_owned(),
        ));
        let client = CoordinatorClient::connect(&ClientConfig::new(url, Some(token)))
            .await
            .expect("the served coordinator answers");
        let fixture = SourceFixture {
            source: Arc::new(client),
            coordinator,
        };
        (
            fixture,
            Served {
                stop,
                _redis: redis,
            },
        )
    }

    vidx_coordinator::job_source_conformance!(make());
}
