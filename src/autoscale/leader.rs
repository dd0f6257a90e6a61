//! One autoscaler leads at a time: the holder of a `coordination.k8s.io/v1` Lease.
//!
//! Every round each replica reads the Lease. The holder renews it (a `replace` carrying the
//! resource version it read, so a concurrent writer makes it fail instead of both winning).
//! Another replica takes it over only after the record has not changed for the Lease's whole
//! duration *as timed by its own clock* (the way client-go's leader election does), so clock
//! skew between nodes cannot cut a live leader's term short. Creating the Lease, renewing it and
//! taking it over are each one request that the API server accepts for one writer only: a
//! conflict (409) means someone else leads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_trait::async_trait;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;
use tracing::{info, warn};

/// Whether this instance may act.
#[async_trait]
pub trait Leadership: Send {
    /// Leads now? Called once per round; acquires or renews as needed.
    async fn lead(&mut self) -> Result<bool>;
    /// Gives the lead up (on shutdown), so another takes over without waiting out the Lease.
    async fn step_down(&mut self) {}
}

/// No election: the only instance (`--dry-run`, or no `--lease-name`) always leads.
#[derive(Debug, Clone, Copy, Default)]
pub struct SoleInstance;

#[async_trait]
impl Leadership for SoleInstance {
    async fn lead(&mut self) -> Result<bool> {
        Ok(true)
    }
}

/// Monotonic time for expiry, wall time for the record.
pub type Clock = Arc<dyn Fn() -> (Instant, Timestamp) + Send + Sync>;

/// What identifies one version of the Lease record, to notice that it stopped changing.
#[derive(Debug, Clone, PartialEq)]
struct Observed {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
}

/// Leader election on one Lease.
pub struct LeaseLock {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    clock: Clock,
    /// The last record seen held by someone else, and when this instance first saw it.
    observed: Option<(Observed, Instant)>,
    leading: bool,
}

impl LeaseLock {
    /// Competes for Lease `name` in `namespace` (else the client's) as `identity` (the pod
    /// name), holding it for `duration` per renewal.
    pub fn new(
        client: kube::Client,
        namespace: Option<&str>,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        let api = match namespace {
            Some(namespace) => Api::namespaced(client, namespace),
            None => Api::default_namespaced(client),
        };
        Self {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            clock: Arc::new(|| (Instant::now(), Timestamp::now())),
            observed: None,
            leading: false,
        }
    }

    /// The same lock on another clock (tests step time by hand).
    pub fn with_clock(mut self, clock: Clock) -> Self {
        self.clock = clock;
        self
    }

    fn duration_seconds(&self) -> i32 {
        i32::try_from(self.duration.as_secs().max(1)).unwrap_or(i32::MAX)
    }

    fn metadata(&self, resource_version: Option<String>) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            resource_version,
            ..ObjectMeta::default()
        }
    }

    /// Writes `lease` back with `replace`; `false` on a conflict (someone else wrote first).
    async fn replace(&self, lease: &Lease, doing: &str) -> Result<bool> {
        match self
            .api
            .replace(&self.name, &PostParams::default(), lease)
            .await
        {
            Ok(_) => Ok(true),
            // 409: AlreadyExists on create, Conflict on a stale resource version.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error)
                .with_context(|| format!("{doing} lease {} as {}", self.name, self.identity)),
        }
    }

    async fn create(&self, wall: Timestamp) -> Result<bool> {
        let lease = Lease {
            metadata: self.metadata(None),
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(MicroTime(wall)),
                renew_time: Some(MicroTime(wall)),
                lease_transitions: Some(0),
                ..LeaseSpec::default()
            }),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // 409: AlreadyExists on create, Conflict on a stale resource version.
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error)
                .with_context(|| format!("creating lease {} as {}", self.name, self.identity)),
        }
    }

    async fn try_lead(&mut self) -> Result<bool> {
        let (now, wall) = (self.clock)();
        let existing = self
            .api
            .get_opt(&self.name)
            .await
            .with_context(|| format!("reading lease {}", self.name))?;
        let Some(existing) = existing else {
            return self.create(wall).await;
        };
        let spec = existing.spec.clone().unwrap_or_default();
        let version = existing.metadata.resource_version.clone();
        if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
            let renewed = Lease {
                metadata: self.metadata(version),
                spec: Some(LeaseSpec {
                    renew_time: Some(MicroTime(wall)),
                    lease_duration_seconds: Some(self.duration_seconds()),
                    ..spec
                }),
            };
            return self.replace(&renewed, "renewing").await;
        }
        let observed = Observed {
            holder: spec
                .holder_identity
                .clone()
                .filter(|holder| !holder.is_empty()),
            renew_time: spec.renew_time.as_ref().map(|time| time.0),
            resource_version: version.clone(),
        };
        let expired = if observed.holder.is_none() {
            // Released by its last holder.
            true
        } else {
            let held_for = spec
                .lease_duration_seconds
                .and_then(|seconds| u64::try_from(seconds).ok())
                .map_or(self.duration, Duration::from_secs);
            match &self.observed {
                Some((seen, since)) if *seen == observed => now.duration_since(*since) >= held_for,
                _ => {
                    self.observed = Some((observed.clone(), now));
                    false
                }
            }
        };
        if !expired {
            return Ok(false);
        }
        let taken = Lease {
            metadata: self.metadata(version),
            spec: Some(LeaseSpec {
                holder_identity: Some(self.identity.clone()),
                lease_duration_seconds: Some(self.duration_seconds()),
                acquire_time: Some(MicroTime(wall)),
                renew_time: Some(MicroTime(wall)),
                lease_transitions: Some(spec.lease_transitions.unwrap_or(0) + 1),
                ..spec
            }),
        };
        let won = self.replace(&taken, "taking over").await?;
        if won {
            info!(lease = %self.name, previous = ?observed.holder, "took over the lead");
        }
        Ok(won)
    }
}

#[async_trait]
impl Leadership for LeaseLock {
    async fn lead(&mut self) -> Result<bool> {
        let result = self.try_lead().await;
        let leading = *result.as_ref().unwrap_or(&false);
        if leading != self.leading {
            info!(lease = %self.name, identity = %self.identity, leading, "leadership changed");
            self.leading = leading;
        }
        result
    }

    async fn step_down(&mut self) {
        if !self.leading {
            return;
        }
        match self.release().await {
            Ok(_) => self.leading = false,
            Err(error) => warn!(error = format!("{error:#}"), "cannot release the lease"),
        }
    }
}

impl LeaseLock {
    /// Clears the holder if it is still this instance.
    async fn release(&self) -> Result<bool> {
        let lease = self
            .api
            .get(&self.name)
            .await
            .with_context(|| format!("reading lease {}", self.name))?;
        let Some(spec) = lease.spec.clone() else {
            return Ok(false);
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(false);
        }
        let released = Lease {
            metadata: self.metadata(lease.metadata.resource_version.clone()),
            spec: Some(LeaseSpec {
                holder_identity: None,
                ..spec
            }),
        };
        self.replace(&released, "releasing").await
    }
}
