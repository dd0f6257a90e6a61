//! Keeping a lease and talking to the coordinator through its hiccups.
//!
//! [`call_with_retry`] retries a coordinator call that failed for a transient reason
//! (`vidx_core::Error::is_transient`) with exponential backoff and full jitter, up to a deadline:
//! the lease's remaining time for the calls of a job. [`keep_alive`] heartbeats a job's lease
//! every third of its length through it, moving the [`LeaseClock`] on each reply; when the
//! deadline passes without a reply, or the coordinator says the lease is no longer ours, the
//! job's [`CancelFlag`] is raised and the job stops without reporting.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::warn;
use vidx_core::source::JobSource;

use super::{CancelFlag, StopReason};
use crate::metrics::Health;

/// First pause after a transient failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest pause between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Exponential backoff with jitter: each pause is uniform in `[ceiling / 2, ceiling]`, the ceiling
/// doubling from `first` up to `max`, so that workers that failed together retry apart.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    ceiling: Duration,
    max: Duration,
}

impl Backoff {
    /// A backoff from `first` up to `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            ceiling: first,
            max: max.max(first),
        }
    }

    /// The next pause.
    pub fn next_pause(&mut self) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(self.max);
        let millis = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(millis / 2..=millis))
    }

    /// Back to the first pause.
    pub fn reset(&mut self) {
        self.ceiling = self.first;
    }
}

/// When a job's lease runs out, as far as this worker knows: moved on by every heartbeat reply.
#[derive(Debug, Clone)]
pub struct LeaseClock(Arc<Mutex<Instant>>);

impl LeaseClock {
    /// A lease of `length` taken now.
    pub fn new(length: Duration) -> Self {
        LeaseClock(Arc::new(Mutex::new(Instant::now() + length)))
    }

    /// When the lease runs out.
    pub fn expires(&self) -> Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn extend(&self, length: Duration) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now() + length;
    }
}

/// Runs `call` until it succeeds, fails for a reason other than a transient one, or `until`
/// passes; records in `health` whether the coordinator answered.
pub async fn call_with_retry<T, F, Fut>(
    what: &'static str,
    until: Instant,
    health: &Health,
    mut call: F,
) -> vidx_core::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = vidx_core::Result<T>>,
{
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    loop {
        match call().await {
            Ok(value) => {
                health.coordinator_call(Ok(()));
                return Ok(value);
            }
            Err(error) if error.is_transient() => {
                health.coordinator_call(Err(error.to_string()));
                let now = Instant::now();
                if now >= until {
                    return Err(error);
                }
                let pause = backoff.next_pause().min(until - now);
                warn!(%error, call = what, retry_in_ms = pause.as_millis() as u64, "coordinator call failed, retrying");
                tokio::time::sleep(pause).await;
            }
            Err(error) => {
                // The coordinator answered, with a refusal.
                health.coordinator_call(Ok(()));
                return Err(error);
            }
        }
    }
}

/// What keeps one job's lease alive.
#[derive(Clone)]
pub struct LeaseKeeper {
    /// The coordinator.
    pub source: Arc<dyn JobSource>,
    /// The job.
    pub job_id: String,
    /// The lease it holds.
    pub lease_id: String,
    /// Lease length; heartbeats come every third of it.
    pub lease: Duration,
    /// Moved on by every heartbeat reply.
    pub clock: LeaseClock,
    /// Told whether the coordinator answered.
    pub health: Arc<Health>,
    /// Raised when the job must stop.
    pub cancel: CancelFlag,
}

impl LeaseKeeper {
    /// Heartbeats every third of the lease until `stop`; raises the cancel flag when the pass
    /// was cancelled or the lease is no longer ours (refused, or ran out while the coordinator
    /// was unreachable).
    pub async fn keep_alive(self, stop: CancellationToken) {
        let every = (self.lease / 3).max(Duration::from_millis(100));
        let extend_ms = self.lease.as_millis() as u64;
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = stop.cancelled() => return,
            }
            let beat = call_with_retry("heartbeat", self.clock.expires(), &self.health, || {
                self.source
                    .heartbeat(&self.job_id, &self.lease_id, extend_ms)
            });
            let beat = tokio::select! {
                beat = beat => beat,
                () = stop.cancelled() => return,
            };
            match beat {
                Ok(beat) if beat.cancelled => {
                    self.cancel.raise(StopReason::Cancelled);
                    return;
                }
                Ok(_) => self.clock.extend(self.lease),
                Err(error) => {
                    warn!(%error, "lease lost");
                    self.cancel.raise(StopReason::LeaseLost);
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_ceiling_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let pauses: Vec<Duration> = (0..6).map(|_| backoff.next_pause()).collect();
        assert!(pauses[0] >= Duration::from_millis(50) && pauses[0] <= Duration::from_millis(100));
        assert!(pauses[5] >= Duration::from_millis(200) && pauses[5] <= Duration::from_millis(400));
        backoff.reset();
        assert!(backoff.next_pause() <= Duration::from_millis(100));
    }
}
