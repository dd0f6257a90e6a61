//! `vidx coordinator`: the validated coordinator config and the function that runs it.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tokio::net::TcpListener;
use tracing::warn;
use vidx_coordinator::access::AccessPolicy;
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::server::{ServerConfig, TlsFiles};
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{JobStore, MemoryStore, RedisStore, RetryPolicy};

use crate::cli::CoordinatorArgs;
use crate::commands::token_from;

/// Everything `vidx coordinator` needs, checked.
#[derive(Debug, Clone)]
pub struct CoordinatorConfig {
    /// gRPC listen address.
    pub listen: String,
    /// Redis URL; `None` for the in-memory store.
    pub redis: Option<String>,
    /// Key prefix in Redis.
    pub redis_prefix: String,
    /// `/metrics` listen address.
    pub metrics_listen: Option<String>,
    /// Retry policy.
    pub retry: RetryPolicy,
    /// Server settings.
    pub server: ServerConfig,
    /// Where passes may read and write.
    pub access: AccessPolicy,
}

impl CoordinatorArgs {
    /// Validates the flags once.
    pub fn into_config(self) -> Result<CoordinatorConfig> {
        let auth_token = token_from(self.auth_token_file.as_deref(), self.token.as_deref())?;
        if self.retry_base_ms <= 0 || self.retry_max_ms < self.retry_base_ms {
            bail!(
                "retry backoff must satisfy 0 < base <= max, got base {} max {}",
                self.retry_base_ms,
                self.retry_max_ms
            );
        }
        if self.max_crashes == 0 {
            bail!("--max-crashes must be at least 1, got 0");
        }
        if self.redis_prefix.is_empty() || self.redis_prefix.contains(char::is_whitespace) {
            bail!("redis prefix must be non-empty without spaces");
        }
        let tls = match (self.tls_cert, self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let mut server = ServerConfig {
            auth_token,
            tls,
            ..ServerConfig::default()
        };
        let access = AccessPolicy::from_prefixes(&self.allow_prefix).context("--allow-prefix")?;
        if let Some(replica_id) = self.replica_id {
            server.replica_id = replica_id;
        }
        if let Some(days) = self.retain_passes_days {
            if !days.is_finite() || days <= 0.0 || days > 36_500.0 {
                bail!("--retain-passes-days must be in (0, 36500], got {days}");
            }
            server.retain_passes = Some(std::time::Duration::from_secs_f64(days * 86_400.0));
        }
        Ok(CoordinatorConfig {
            listen: self.listen,
            redis: self.redis,
            redis_prefix: self.redis_prefix,
            metrics_listen: self.metrics_listen,
            retry: RetryPolicy {
                base_backoff_ms: self.retry_base_ms,
                max_backoff_ms: self.retry_max_ms,
                max_crashes: self.max_crashes,
            },
            server,
            access,
        })
    }
}

/// Builds the store a config names.
pub async fn open_store(config: &CoordinatorConfig) -> Result<Arc<dyn JobStore>> {
    Ok(match &config.redis {
        Some(url) => Arc::new(
            RedisStore::connect(url, &config.redis_prefix, config.retry)
                .await
                .context("cannot connect to redis")?,
        ),
        None => {
            warn!(
                "no --redis given: job state lives in memory and is lost when this process exits"
            );
            Arc::new(MemoryStore::new(config.retry))
        }
    })
}

/// Binds, serves, and returns when `shutdown` resolves.
pub async fn run(
    config: CoordinatorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let store = open_store(&config).await?;
    let listener = TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let metrics_listener = match &config.metrics_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?,
        ),
        None => None,
    };
    // The bound addresses, on stdout: supervisors (and the test kit) listen on port 0 and read
    // them back. Metrics first, so the gRPC line means both are bound.
    if let Some(metrics_listener) = &metrics_listener {
        println!("metrics listening on {}", metrics_listener.local_addr()?);
    }
    println!("grpc listening on {}", listener.local_addr()?);
    let coordinator = Coordinator::new(store, Metrics::new()).with_access(config.access);
    vidx_coordinator::server::run(
        coordinator,
        config.server,
        listener,
        metrics_listener,
        shutdown,
    )
    .await?;
    Ok(())
}
