//! Scales the worker Deployment on queue depth: `vidx autoscale`.
//!
//! Every interval it asks the coordinator how many jobs are outstanding (pending, leased, or
//! waiting to retry, over every pass still planning or running), turns that into a replica count
//! with [`ScalePolicy`], and sets the Deployment's `scale` subresource through the Kubernetes API
//! (`kube`). Scaling up happens at once; scaling down only once demand has stayed lower for the
//! whole scale-down delay (the way the HorizontalPodAutoscaler stabilises), so a pass that ends
//! while the next is being planned does not tear workers down and cold-load the model again.
//! A worker that is scaled away hands its job back on SIGTERM; leases cover the rest.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use async_trait::async_trait;
use tokio::sync::watch;
use tracing::{info, warn};
use vidx_coordinator::client::CoordinatorClient;
use vidx_coordinator::domain::{PassState, PassStatus};

/// How outstanding jobs become replicas.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalePolicy {
    /// Fewest workers, also when there is no work (0 scales to zero).
    pub min_replicas: u32,
    /// Most workers.
    pub max_replicas: u32,
    /// Outstanding jobs one worker is meant to have ahead of it.
    pub jobs_per_worker: u32,
    /// How long demand must stay lower before workers are removed.
    pub scale_down_delay: Duration,
}

impl ScalePolicy {
    /// Checks the bounds once, before the loop starts.
    pub fn validate(&self) -> Result<()> {
        if self.max_replicas == 0 {
            bail!("max replicas must be at least 1");
        }
        if self.min_replicas > self.max_replicas {
            bail!(
                "min replicas ({}) is above max replicas ({})",
                self.min_replicas,
                self.max_replicas
            );
        }
        if self.jobs_per_worker == 0 {
            bail!("jobs per worker must be at least 1");
        }
        Ok(())
    }

    /// Workers wanted for `outstanding` jobs: enough for `jobs_per_worker` each, within bounds.
    pub fn desired(&self, outstanding: u64) -> u32 {
        let wanted = outstanding.div_ceil(u64::from(self.jobs_per_worker));
        let wanted = u32::try_from(wanted).unwrap_or(u32::MAX);
        wanted.clamp(self.min_replicas, self.max_replicas)
    }
}

/// Decides replica counts over time: up at once, down to the highest count wanted during the
/// scale-down delay.
#[derive(Debug)]
pub struct Autoscaler {
    policy: ScalePolicy,
    /// Counts wanted within the last `scale_down_delay`, oldest first.
    recent: VecDeque<(Instant, u32)>,
}

impl Autoscaler {
    /// A scaler with no history.
    pub fn new(policy: ScalePolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// The replica count to set at `now`, given the `current` count and the `outstanding` jobs;
    /// `None` to leave it as it is.
    pub fn decide(&mut self, now: Instant, current: u32, outstanding: u64) -> Option<u32> {
        let wanted = self.policy.desired(outstanding);
        self.recent.push_back((now, wanted));
        while let Some((at, _)) = self.recent.front() {
            if now.duration_since(*at) > self.policy.scale_down_delay {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        let target = if wanted >= current {
            wanted
        } else {
            // Lower only to what every moment of the delay would still allow.
            let stable = self.recent.iter().map(|(_, count)| *count).max();
            stable.unwrap_or(wanted).min(current)
        };
        // Bounds hold even for a Deployment someone scaled by hand outside them.
        let target = target.clamp(self.policy.min_replicas, self.policy.max_replicas);
        (target != current).then_some(target)
    }
}

/// Jobs still to be done in `passes`: pending, leased, or waiting to retry, over passes that
/// are planning or running.
pub fn outstanding_jobs<'a>(passes: impl IntoIterator<Item = &'a PassStatus>) -> u64 {
    passes
        .into_iter()
        .filter(|pass| matches!(pass.state, PassState::Planning | PassState::Running))
        .map(|pass| pass.counts.pending + pass.counts.leased + pass.counts.failed)
        .sum()
}

/// Where demand comes from.
#[async_trait]
pub trait Demand: Send {
    /// Outstanding jobs now.
    async fn outstanding(&mut self) -> Result<u64>;
}

#[async_trait]
impl Demand for CoordinatorClient {
    async fn outstanding(&mut self) -> Result<u64> {
        let mut total = 0;
        let mut token = None;
        // Bounded: a page per 1,000 passes, and the listing ends when the pages do.
        for _ in 0..10_000 {
            let page = self.list_passes(1_000, token).await?;
            total += outstanding_jobs(&page.items);
            token = page.next;
            if token.is_none() {
                return Ok(total);
            }
        }
        bail!("more than ten million passes listed; giving up on this round")
    }
}

/// What is scaled.
#[async_trait]
pub trait Replicas: Send {
    /// The replica count asked for now.
    async fn current(&mut self) -> Result<u32>;
    /// Asks for `count` replicas.
    async fn set(&mut self, count: u32) -> Result<()>;
}

/// A Deployment's `scale` subresource, through the Kubernetes API.
pub struct DeploymentScale {
    api: kube::Api<k8s_openapi::api::apps::v1::Deployment>,
    name: String,
}

impl DeploymentScale {
    /// The Deployment `name` in `namespace` (else the client's default namespace), with the
    /// in-cluster service account or the local kubeconfig.
    pub async fn connect(name: &str, namespace: Option<&str>) -> Result<Self> {
        // Both of rustls's crypto back ends are linked (object_store's HTTP client brings ring,
        // tonic's TLS aws-lc-rs), so rustls cannot pick a default by itself and the Kubernetes
        // client, which asks for one, would panic. aws-lc-rs, as tonic uses; a provider already
        // installed is kept.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let api = match namespace {
            Some(namespace) => kube::Api::namespaced(client, namespace),
            None => kube::Api::default_namespaced(client),
        };
        Ok(Self {
            api,
            name: name.to_owned(),
        })
    }
}

#[async_trait]
impl Replicas for DeploymentScale {
    async fn current(&mut self) -> Result<u32> {
        let scale = self
            .api
            .get_scale(&self.name)
            .await
            .with_context(|| format!("reading the scale of deployment {}", self.name))?;
        let replicas = scale.spec.and_then(|spec| spec.replicas).unwrap_or(0);
        Ok(u32::try_from(replicas).unwrap_or(0))
    }

    async fn set(&mut self, count: u32) -> Result<()> {
        let patch = serde_json::json!({ "spec": { "replicas": count } });
        self.api
            .patch_scale(
                &self.name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&patch),
            )
            .await
            .with_context(|| format!("scaling deployment {} to {count}", self.name))?;
        Ok(())
    }
}

/// A replica count kept in memory: `vidx autoscale --dry-run` scales this instead of a
/// Deployment, to show what the loop would do against a coordinator without touching a cluster.
#[derive(Debug, Clone, Default)]
pub struct InMemoryReplicas {
    /// The count asked for last.
    pub count: u32,
}

#[async_trait]
impl Replicas for InMemoryReplicas {
    async fn current(&mut self) -> Result<u32> {
        Ok(self.count)
    }

    async fn set(&mut self, count: u32) -> Result<()> {
        self.count = count;
        Ok(())
    }
}

/// Runs the loop every `interval` until `shutdown` turns true. A failed round (coordinator or
/// API unreachable) is logged and retried next round; it never scales on missing data.
pub async fn run(
    policy: ScalePolicy,
    interval: Duration,
    demand: &mut dyn Demand,
    replicas: &mut dyn Replicas,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    policy.validate()?;
    let mut scaler = Autoscaler::new(policy);
    while !*shutdown.borrow() {
        if let Err(error) = round(&mut scaler, demand, replicas).await {
            warn!(error = format!("{error:#}"), "autoscaling round failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => {}
        }
    }
    Ok(())
}

async fn round(
    scaler: &mut Autoscaler,
    demand: &mut dyn Demand,
    replicas: &mut dyn Replicas,
) -> Result<()> {
    let outstanding = demand.outstanding().await?;
    let current = replicas.current().await?;
    if let Some(target) = scaler.decide(Instant::now(), current, outstanding) {
        replicas.set(target).await?;
        info!(outstanding, from = current, to = target, "workers scaled");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ScalePolicy {
        ScalePolicy {
            min_replicas: 0,
            max_replicas: 8,
            jobs_per_worker: 4,
            scale_down_delay: Duration::from_secs(300),
        }
    }

    #[test]
    fn desired_counts_round_up_within_bounds() {
        let policy = policy();
        assert_eq!(policy.desired(0), 0);
        assert_eq!(policy.desired(1), 1);
        assert_eq!(policy.desired(4), 1);
        assert_eq!(policy.desired(5), 2);
        assert_eq!(policy.desired(10_000_000_000), 8);
        let floor = ScalePolicy {
            min_replicas: 2,
            ..policy
        };
        assert_eq!(floor.desired(0), 2);
    }

    #[test]
    fn bad_policies_are_refused() {
        for bad in [
            ScalePolicy {
                max_replicas: 0,
                ..policy()
            },
            ScalePolicy {
                min_replicas: 9,
                ..policy()
            },
            ScalePolicy {
                jobs_per_worker: 0,
                ..policy()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
        policy().validate().unwrap();
    }

    #[test]
    fn up_at_once_down_only_after_the_delay() {
        let mut scaler = Autoscaler::new(policy());
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(scaler.decide(at(0), 0, 20), Some(5));
        assert_eq!(scaler.decide(at(15), 5, 30), Some(8));
        // Demand falls: hold while the higher counts are within the delay.
        assert_eq!(scaler.decide(at(30), 8, 4), None);
        assert_eq!(scaler.decide(at(200), 8, 4), None);
        // 300 s after the last high reading, down to the highest count since.
        assert_eq!(scaler.decide(at(316), 8, 4), Some(1));
        // Work gone: the minimum once no reading within the delay wanted more.
        assert_eq!(scaler.decide(at(400), 1, 0), None);
        assert_eq!(scaler.decide(at(600), 1, 0), None);
        assert_eq!(scaler.decide(at(617), 1, 0), Some(0));
        // New work scales up at once, whatever the history.
        assert_eq!(scaler.decide(at(618), 0, 1), Some(1));
    }

    #[test]
    fn a_deployment_scaled_outside_the_bounds_is_brought_back() {
        let mut scaler = Autoscaler::new(policy());
        let now = Instant::now();
        assert_eq!(scaler.decide(now, 20, 1_000), Some(8));
        let mut scaler = Autoscaler::new(ScalePolicy {
            min_replicas: 2,
            ..policy()
        });
        assert_eq!(scaler.decide(now, 0, 0), Some(2));
    }
}
