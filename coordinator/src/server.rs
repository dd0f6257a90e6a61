//! Serving: gRPC (both services, health, bearer auth, optional TLS) on a listener the caller
//! bound, `/metrics` on another, plus the background loops every replica runs (lease reaping and
//! planning). Stops when the caller's shutdown future resolves; installs no signal handlers.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tracing::{info, warn};

use crate::auth::RequireToken;
use crate::error::{Error, Result};
use crate::grpc::{PassApi, WorkerApi};
use crate::service::Coordinator;
use vidx_core::auth::Token;
use vidx_core::domain::now_ms;
use vidx_proto::v1::pass_service_server::PassServiceServer;
use vidx_proto::v1::worker_service_server::WorkerServiceServer;

/// How the server runs, validated by the binary before [`run`].
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Required bearer token; `None` disables authentication.
    pub auth_token: Option<Token>,
    /// PEM certificate and key for TLS.
    pub tls: Option<TlsFiles>,
    /// This replica's name (planning locks, logs).
    pub replica_id: String,
    /// How often expired leases are reaped.
    pub reap_interval: Duration,
    /// How long after creation an ended pass's state is kept; `None` keeps it forever.
    pub retain_passes: Option<Duration>,
    /// How often ended passes past their retention are looked for.
    pub expire_interval: Duration,
}

/// PEM files for TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            auth_token: None,
            tls: None,
            replica_id: format!("coordinator-{}", uuid::Uuid::new_v4().simple()),
            reap_interval: Duration::from_millis(500),
            retain_passes: None,
            expire_interval: Duration::from_secs(600),
        }
    }
}

/// Serves until `shutdown` resolves. Background loops stop with it.
pub async fn run(
    coordinator: Coordinator,
    config: ServerConfig,
    listener: TcpListener,
    metrics_listener: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let stop = CancellationToken::new();
    let address = listener
        .local_addr()
        .map_err(|error| Error::Unavailable(error.to_string()))?;
    if config.auth_token.is_none() {
        warn!("no auth token configured: every gRPC call is accepted unauthenticated");
    }
    let allowed_prefixes = coordinator.access().prefixes();
    // None listed: any cloud URL, no local files (see `access`).
    info!(
        ?allowed_prefixes,
        "passes read and write under these prefixes"
    );

    let mut background = tokio::task::JoinSet::new();
    background.spawn(reap_loop(
        coordinator.clone(),
        config.reap_interval,
        stop.clone(),
    ));
    if let Some(retain) = config.retain_passes {
        background.spawn(expire_loop(
            coordinator.clone(),
            retain,
            config.expire_interval,
            stop.clone(),
        ));
    }
    background.spawn(crate::planner::run(
        coordinator.clone(),
        config.replica_id.clone(),
        stop.clone(),
    ));
    if let Some(metrics_listener) = metrics_listener {
        background.spawn(serve_metrics(
            coordinator.clone(),
            metrics_listener,
            stop.clone(),
        ));
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<PassServiceServer<PassApi>>().await;
    health.set_serving::<WorkerServiceServer<WorkerApi>>().await;

    let auth = RequireToken::new(config.auth_token.clone());
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let cert = read_pem(&tls.cert)?;
        let key = read_pem(&tls.key)?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|error| Error::invalid(format!("tls configuration: {error}")))?;
    }
    info!(%address, replica = %config.replica_id, tls = config.tls.is_some(), "coordinator listening");
    let served = builder
        .add_service(health_service)
        .add_service(PassServiceServer::with_interceptor(
            PassApi::new(coordinator.clone()),
            auth.clone(),
        ))
        .add_service(WorkerServiceServer::with_interceptor(
            WorkerApi::new(coordinator.clone()),
            auth,
        ))
        // Our listener, so tonic does not configure its sockets: without TCP_NODELAY, Nagle's
        // algorithm and delayed ACKs hold small replies back for tens of milliseconds.
        .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), {
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        })
        .await;
    background.shutdown().await;
    info!("coordinator stopped");
    served.map_err(|error| Error::Unavailable(error.to_string()))
}

fn read_pem(path: &std::path::Path) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|error| Error::invalid(format!("cannot read {}: {error}", path.display())))
}

/// Returns expired leases to the queue. Every replica runs this; the store makes it safe.
async fn reap_loop(coordinator: Coordinator, interval: Duration, stop: CancellationToken) {
    const LIMIT: u32 = 1_000;
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
        // Bounded: at most 100 full batches per tick, then yield to the next tick.
        for _ in 0..100 {
            match coordinator.store().reap_expired(now_ms(), LIMIT).await {
                Ok(reaped) if reaped > 0 => {
                    info!(reaped, "expired leases returned to the queue");
                    if reaped < u64::from(LIMIT) {
                        break;
                    }
                }
                Ok(_) => break,
                Err(error) => {
                    warn!(%error, "cannot reap expired leases");
                    break;
                }
            }
        }
    }
}

/// Deletes the state of passes that ended and are older than `retain`. Every replica may run it:
/// deleting a pass twice is harmless.
async fn expire_loop(
    coordinator: Coordinator,
    retain: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    const LIMIT: u32 = 1_000;
    let retain_ms = i64::try_from(retain.as_millis()).unwrap_or(i64::MAX);
    loop {
        let cutoff = now_ms().saturating_sub(retain_ms);
        match coordinator.store().expire_passes(cutoff, LIMIT).await {
            Ok(expired) if !expired.is_empty() => {
                info!(
                    passes = expired.len(),
                    "expired passes past their retention"
                );
            }
            Ok(_) => {}
            Err(error) => warn!(%error, "cannot expire old passes"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn serve_metrics(coordinator: Coordinator, listener: TcpListener, stop: CancellationToken) {
    use axum::routing::get;
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let coordinator = coordinator.clone();
            async move {
                if let Err(error) = coordinator.refresh_metrics().await {
                    warn!(%error, "cannot refresh metrics");
                }
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4",
                    )],
                    coordinator.metrics().encode(),
                )
            }
        }),
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
    if let Err(error) = served {
        warn!(%error, "metrics server stopped");
    }
}
