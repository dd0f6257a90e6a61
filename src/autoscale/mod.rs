//! Scales the worker Deployment on queue depth: `vidx autoscale`.
//!
//! Every interval it asks the coordinator how many jobs are outstanding (pending, leased, or
//! waiting to retry, over every pass still planning or running) and how many are leased, turns
//! that into a replica count with [`Autoscaler`], and sets the Deployment's `scale` subresource
//! through the Kubernetes API ([`kubernetes`]). Scaling up happens at once; scaling down only
//! once demand has stayed lower for the whole scale-down delay (the way the
//! HorizontalPodAutoscaler stabilises), so a pass that ends while the next is being planned does
//! not tear workers down and cold-load the model again. The count never drops below the jobs
//! leased right now, so a scale-in never has to take a busy worker.
//!
//! The delay's window starts seeded with the Deployment's current count, so an autoscaler that
//! was just restarted (or just became leader) holds on its first low reading instead of scaling
//! down at once. Several replicas may run: only the holder of a `coordination.k8s.io` Lease
//! ([`leader`]) scales, the others wait to take over. A worker that is scaled away hands its job
//! back on SIGTERM; leases cover the rest.

pub mod kubernetes;
pub mod leader;

use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vidx_core::client::CoordinatorClient;
use vidx_core::domain::{PassState, PassStatus};

pub use kubernetes::DeploymentScale;
pub use leader::{Leadership, LeaseLock, SoleInstance};

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

/// One reading of the coordinator's queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Pending, leased and retrying jobs over live passes.
    pub outstanding: u64,
    /// Jobs leased right now: a worker holds each (workers lease one job at a time).
    pub leased: u64,
}

/// Decides replica counts over time: up at once, down to the highest count wanted during the
/// scale-down delay, never below the jobs leased.
#[derive(Debug)]
pub struct Autoscaler {
    policy: ScalePolicy,
    /// Counts wanted (or running) within the last `scale_down_delay`, oldest first. Empty only
    /// before the first reading, which seeds it with the current count.
    recent: VecDeque<(Instant, u32)>,
}

impl Autoscaler {
    /// A scaler whose window is seeded at its first reading.
    pub fn new(policy: ScalePolicy) -> Self {
        Self {
            policy,
            recent: VecDeque::new(),
        }
    }

    /// The replica count to set at `now`, given the `current` count and a `reading`; `None` to
    /// leave it as it is.
    pub fn decide(&mut self, now: Instant, current: u32, reading: Reading) -> Option<u32> {
        if self.recent.is_empty() {
            // Nothing is known about the last delay (a restart, a new leader): treat the count
            // running now as what it wanted, so the first low reading does not scale down.
            self.recent.push_back((now, current));
        }
        let wanted = self.policy.desired(reading.outstanding);
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
        // Never below the workers holding leases: removing one would take a busy worker.
        let busy = u32::try_from(reading.leased)
            .unwrap_or(u32::MAX)
            .min(current);
        let target = target.max(busy);
        (target != current).then_some(target)
    }
}

/// The reading over `passes`: outstanding (pending, leased, waiting to retry) and leased jobs
/// of passes that are planning or running.
pub fn reading_of<'a>(passes: impl IntoIterator<Item = &'a PassStatus>) -> Reading {
    passes
        .into_iter()
        .filter(|pass| matches!(pass.state, PassState::Planning | PassState::Running))
        .fold(Reading::default(), |total, pass| Reading {
            outstanding: total.outstanding
                + pass.counts.pending
                + pass.counts.leased
                + pass.counts.failed,
            leased: total.leased + pass.counts.leased,
        })
}

/// Where demand comes from.
#[async_trait]
pub trait Demand: Send {
    /// The queue now.
    async fn read(&mut self) -> Result<Reading>;

    /// The ids of the workers holding a lease now, when the source knows them (`None`: it
    /// does not, and no pod is marked).
    async fn busy_workers(&mut self) -> Result<Option<BTreeSet<String>>> {
        Ok(None)
    }
}

#[async_trait]
impl Demand for CoordinatorClient {
    async fn read(&mut self) -> Result<Reading> {
        let mut total = Reading::default();
        let mut token = None;
        // Bounded: a page per 1,000 passes, and the listing ends when the pages do.
        for _ in 0..10_000 {
            let page = self.list_passes(1_000, token).await?;
            let reading = reading_of(&page.items);
            total.outstanding += reading.outstanding;
            total.leased += reading.leased;
            token = page.next;
            if token.is_none() {
                return Ok(total);
            }
        }
        bail!("more than ten million passes listed; giving up on this round")
    }

    async fn busy_workers(&mut self) -> Result<Option<BTreeSet<String>>> {
        Ok(Some(self.lease_holders().await?.into_iter().collect()))
    }
}

/// What is scaled.
#[async_trait]
pub trait Replicas: Send {
    /// The replica count asked for now.
    async fn current(&mut self) -> Result<u32>;
    /// Asks for `count` replicas.
    async fn set(&mut self, count: u32) -> Result<()>;
    /// Before a scale-in: marks the pods so that those not in `busy` are removed first.
    async fn prefer_removing_idle(&mut self, busy: &BTreeSet<String>) -> Result<()> {
        let _ = busy;
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

/// The parts one autoscaling loop works with.
pub struct Scaling<'a> {
    /// The decisions and their window.
    pub scaler: Autoscaler,
    /// The queue.
    pub demand: &'a mut dyn Demand,
    /// The Deployment.
    pub replicas: &'a mut dyn Replicas,
    /// Whether this instance may scale.
    pub leadership: &'a mut dyn Leadership,
}

impl Scaling<'_> {
    /// One round at `now`: scales only while this instance leads. Returns the count it set.
    pub async fn round(&mut self, now: Instant) -> Result<Option<u32>> {
        if !self.leadership.lead().await? {
            // Whoever leads now has the window; ours would be stale when we lead again.
            self.scaler = Autoscaler::new(self.scaler.policy.clone());
            debug!("not the leader: not scaling");
            return Ok(None);
        }
        let reading = self.demand.read().await?;
        let current = self.replicas.current().await?;
        let Some(target) = self.scaler.decide(now, current, reading) else {
            return Ok(None);
        };
        if target < current
            && let Some(busy) = self.demand.busy_workers().await?
        {
            self.replicas.prefer_removing_idle(&busy).await?;
        }
        self.replicas.set(target).await?;
        info!(
            outstanding = reading.outstanding,
            leased = reading.leased,
            from = current,
            to = target,
            "workers scaled"
        );
        Ok(Some(target))
    }
}

/// Runs the loop every `interval` until `shutdown` is cancelled. A failed round (coordinator or
/// API unreachable) is logged and retried next round; it never scales on missing data.
pub async fn run(
    policy: ScalePolicy,
    interval: Duration,
    demand: &mut dyn Demand,
    replicas: &mut dyn Replicas,
    leadership: &mut dyn Leadership,
    shutdown: CancellationToken,
) -> Result<()> {
    policy.validate()?;
    let mut scaling = Scaling {
        scaler: Autoscaler::new(policy),
        demand,
        replicas,
        leadership,
    };
    while !shutdown.is_cancelled() {
        if let Err(error) = scaling.round(Instant::now()).await {
            warn!(error = format!("{error:#}"), "autoscaling round failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            () = shutdown.cancelled() => {}
        }
    }
    scaling.leadership.step_down().await;
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

    fn outstanding(outstanding: u64) -> Reading {
        Reading {
            outstanding,
            leased: 0,
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
        assert_eq!(scaler.decide(at(0), 0, outstanding(20)), Some(5));
        assert_eq!(scaler.decide(at(15), 5, outstanding(30)), Some(8));
        // Demand falls: hold while the higher counts are within the delay.
        assert_eq!(scaler.decide(at(30), 8, outstanding(4)), None);
        assert_eq!(scaler.decide(at(200), 8, outstanding(4)), None);
        // 300 s after the last high reading, down to the highest count since.
        assert_eq!(scaler.decide(at(316), 8, outstanding(4)), Some(1));
        // Work gone: the minimum once no reading within the delay wanted more.
        assert_eq!(scaler.decide(at(400), 1, outstanding(0)), None);
        assert_eq!(scaler.decide(at(600), 1, outstanding(0)), None);
        assert_eq!(scaler.decide(at(617), 1, outstanding(0)), Some(0));
        // New work scales up at once, whatever the history.
        assert_eq!(scaler.decide(at(618), 0, outstanding(1)), Some(1));
    }

    #[test]
    fn a_fresh_scaler_holds_what_is_running_for_the_delay() {
        // As after a restart: six workers run, the queue is empty.
        let mut scaler = Autoscaler::new(policy());
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        assert_eq!(scaler.decide(at(0), 6, outstanding(0)), None);
        assert_eq!(scaler.decide(at(299), 6, outstanding(0)), None);
        assert_eq!(scaler.decide(at(301), 6, outstanding(0)), Some(0));
    }

    #[test]
    fn never_fewer_workers_than_leased_jobs() {
        let mut scaler = Autoscaler::new(ScalePolicy {
            scale_down_delay: Duration::ZERO,
            ..policy()
        });
        let now = Instant::now();
        let later = now + Duration::from_secs(1);
        // Five workers, five jobs leased, nothing else queued: one worker "wanted" by the
        // ratio, but each of the five is busy.
        let busy = Reading {
            outstanding: 5,
            leased: 5,
        };
        assert_eq!(scaler.decide(now, 5, busy), None);
        // Two finish: down to the three still busy, not to the one the ratio asks for.
        let three = Reading {
            outstanding: 3,
            leased: 3,
        };
        assert_eq!(scaler.decide(later, 5, three), Some(3));
        // Leases held beyond the running count (expiring ones) never scale up past the ratio.
        let stale = Reading {
            outstanding: 4,
            leased: 4,
        };
        assert_eq!(scaler.decide(later, 0, stale), Some(1));
    }

    #[test]
    fn a_deployment_scaled_outside_the_bounds_is_brought_back() {
        let mut scaler = Autoscaler::new(policy());
        let now = Instant::now();
        assert_eq!(scaler.decide(now, 20, outstanding(1_000)), Some(8));
        let mut scaler = Autoscaler::new(ScalePolicy {
            min_replicas: 2,
            ..policy()
        });
        assert_eq!(scaler.decide(now, 0, outstanding(0)), Some(2));
    }

    #[test]
    fn readings_count_live_passes_only() {
        use vidx_core::domain::{JobCounts, PassSpec, Sampling, TaskSpec};
        let pass = |state, pending, leased, failed| PassStatus {
            pass_id: "p".into(),
            spec: PassSpec {
                source: "s3://b/v/".into(),
                destination: "s3://b/i/".into(),
                task: TaskSpec::default(),
                sampling: Sampling::default(),
                idempotency_key: None,
                max_attempts: 3,
                verify: None,
            },
            state,
            counts: JobCounts {
                pending,
                leased,
                failed,
                ..JobCounts::default()
            },
            videos: 0,
            jobs_per_second: 0.0,
            eta_seconds: None,
            recent_errors: Vec::new(),
            created_at_ms: 0,
            planning_error: None,
            released: 0,
            skipped: 0,
        };
        let passes = [
            pass(PassState::Running, 3, 2, 1),
            pass(PassState::Planning, 1, 0, 0),
            pass(PassState::Cancelled, 50, 50, 50),
        ];
        assert_eq!(
            reading_of(&passes),
            Reading {
                outstanding: 7,
                leased: 2
            }
        );
    }
}
