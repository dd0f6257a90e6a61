//! The in-memory job store: the embedded default for local runs, and the reference the Redis
//! store is checked against. One mutex guards all state; every method holds it once, which makes
//! each transition atomic just as the Redis scripts are.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{
    BUCKET_MS, Created, FinalizeClaim, JobStore, LeaseRequest, PlanningPass, RetryPolicy,
    crash_reason, effective_state, job_id_for, page_token, segment_jobs, throughput,
    validate_segment_count, validate_segments,
};
use crate::error::{Error, Result};
use vidx_core::domain::{
    Completed, Completion, ErrorReport, FailOutcome, FailureKind, Heartbeat, Job, JobCounts,
    JobState, LeasedJob, NewJob, Page, PassSpec, PassState, PassStatus, new_pass_id,
};

/// Recent errors kept per pass.
const RECENT_ERRORS: usize = 20;

#[derive(Debug)]
struct PassRecord {
    spec: PassSpec,
    state: PassState,
    created_at_ms: i64,
    planning_error: Option<String>,
    cursor: Option<String>,
    planner: Option<(String, i64)>,
    videos: u64,
    counts: JobCounts,
    /// Job ids in creation order (sequence number -> id).
    jobs: BTreeMap<u64, String>,
    next_seq: u64,
    errors: VecDeque<ErrorReport>,
    /// Completions per 10-second bucket.
    buckets: BTreeMap<i64, u64>,
    /// Jobs handed back unfinished.
    released: u64,
    /// Jobs done as skipped (their video was indexed already).
    skipped: u64,
}

#[derive(Debug)]
struct JobRecord {
    job: Job,
    seq: u64,
    lease: Option<Lease>,
    retry_at_ms: i64,
    /// Panics reported so far: the first is retried, the second is fatal.
    panics: u32,
}

#[derive(Debug, Clone)]
struct Lease {
    lease_id: String,
    deadline_ms: i64,
    started_ms: i64,
    duration_ms: i64,
    worker_id: String,
}

#[derive(Debug, Default)]
struct State {
    passes: HashMap<String, PassRecord>,
    /// Pass ids; they sort by creation time, for newest-first listing.
    pass_order: BTreeSet<String>,
    idempotency: HashMap<String, String>,
    jobs: HashMap<String, JobRecord>,
    /// (global sequence, job id): the pending queue, oldest first.
    pending: BTreeSet<(u64, String)>,
    /// (retry_at_ms, job id): failed jobs waiting for their backoff.
    delayed: BTreeSet<(i64, String)>,
    /// (deadline_ms, job id): held leases.
    leases: BTreeSet<(i64, String)>,
    next_global_seq: u64,
    next_lease: u64,
    /// Per (pass, video): the segments counted and the one designated to assemble.
    assembly: HashMap<(String, String), (BTreeSet<u32>, Option<u32>)>,
    /// Per pass: whether it was finalized, and the current finalization claim.
    finalization: HashMap<String, Finalization>,
}

/// Where finalizing a pass stands: a re-run's claim leaves `done` as it is.
#[derive(Debug, Clone, Default)]
struct Finalization {
    done: bool,
    /// The claim's holder and when it runs out.
    held: Option<(String, i64)>,
}

/// All state in process memory; lost when the process exits.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<State>,
    retry: RetryPolicy,
}

impl MemoryStore {
    /// An empty store with the given retry policy.
    pub fn new(retry: RetryPolicy) -> Self {
        MemoryStore {
            state: Mutex::new(State::default()),
            retry,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic mid-transition elsewhere; the state is still the last
        // consistent one because every transition validates before mutating.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl State {
    fn pass(&self, pass_id: &str) -> Result<&PassRecord> {
        self.passes
            .get(pass_id)
            .ok_or_else(|| Error::NotFound(format!("pass {pass_id}")))
    }

    fn pass_mut(&mut self, pass_id: &str) -> Result<&mut PassRecord> {
        self.passes
            .get_mut(pass_id)
            .ok_or_else(|| Error::NotFound(format!("pass {pass_id}")))
    }

    /// Moves a job between states, keeping counts and queues in step.
    fn transition(&mut self, job_id: &str, to: JobState) {
        let Some(record) = self.jobs.get_mut(job_id) else {
            return;
        };
        let from = record.job.state;
        match from {
            JobState::Pending => {
                self.pending.remove(&(record.seq, job_id.to_owned()));
            }
            JobState::Failed => {
                self.delayed
                    .remove(&(record.retry_at_ms, job_id.to_owned()));
            }
            JobState::Leased => {
                if let Some(lease) = record.lease.take() {
                    self.leases.remove(&(lease.deadline_ms, job_id.to_owned()));
                }
            }
            _ => {}
        }
        record.job.state = to;
        if to == JobState::Pending {
            self.next_global_seq += 1;
            record.seq = self.next_global_seq;
            self.pending.insert((record.seq, job_id.to_owned()));
        }
        let pass_id = record.job.pass_id.clone();
        if let Some(pass) = self.passes.get_mut(&pass_id) {
            *pass.counts.get_mut(from) -= 1;
            *pass.counts.get_mut(to) += 1;
        }
    }

    fn insert_job(&mut self, pass_id: &str, spec: &NewJob) -> bool {
        let job_id = job_id_for(pass_id, spec);
        if self.jobs.contains_key(&job_id) {
            return false;
        }
        self.next_global_seq += 1;
        let seq = self.next_global_seq;
        let Some(pass) = self.passes.get_mut(pass_id) else {
            return false;
        };
        pass.next_seq += 1;
        pass.jobs.insert(pass.next_seq, job_id.clone());
        pass.counts.pending += 1;
        self.pending.insert((seq, job_id.clone()));
        self.jobs.insert(
            job_id.clone(),
            JobRecord {
                job: Job {
                    job_id,
                    pass_id: pass_id.to_owned(),
                    spec: spec.clone(),
                    state: JobState::Pending,
                    attempt: 0,
                    last_error: None,
                    result_url: None,
                    crashes: 0,
                },
                seq,
                lease: None,
                retry_at_ms: 0,
                panics: 0,
            },
        );
        true
    }

    /// Checks that `lease_id` is the job's current lease.
    fn current_lease(&self, job_id: &str, lease_id: &str) -> Result<&JobRecord> {
        let record = self
            .jobs
            .get(job_id)
            .ok_or_else(|| Error::NotFound(format!("job {job_id}")))?;
        match &record.lease {
            Some(lease) if record.job.state == JobState::Leased && lease.lease_id == lease_id => {
                Ok(record)
            }
            _ => Err(Error::StaleLease {
                job_id: job_id.to_owned(),
                state: record.job.state,
            }),
        }
    }

    fn record_error(&mut self, job_id: &str, reason: &str, now_ms: i64) {
        let Some(record) = self.jobs.get_mut(job_id) else {
            return;
        };
        record.job.last_error = Some(reason.to_owned());
        let report = ErrorReport {
            job_id: job_id.to_owned(),
            video_url: record.job.spec.video_url.clone(),
            reason: reason.to_owned(),
            at_ms: now_ms,
        };
        if let Some(pass) = self.passes.get_mut(&record.job.pass_id) {
            pass.errors.push_front(report);
            pass.errors.truncate(RECENT_ERRORS);
        }
    }

    fn count_finished(&mut self, pass_id: &str, now_ms: i64) {
        if let Some(pass) = self.passes.get_mut(pass_id) {
            *pass.buckets.entry(now_ms / BUCKET_MS).or_default() += 1;
            let oldest_kept = now_ms / BUCKET_MS - 30;
            pass.buckets.retain(|bucket, _| *bucket >= oldest_kept);
        }
    }

    fn status(&self, pass_id: &str, now_ms: i64) -> Result<PassStatus> {
        let pass = self.pass(pass_id)?;
        let buckets: Vec<(i64, u64)> = pass.buckets.iter().map(|(b, c)| (*b, *c)).collect();
        let remaining = pass.counts.total() - pass.counts.finished();
        let (jobs_per_second, eta_seconds) =
            throughput(&buckets, pass.created_at_ms, remaining, now_ms);
        Ok(PassStatus {
            pass_id: pass_id.to_owned(),
            spec: pass.spec.clone(),
            state: effective_state(pass.state, &pass.counts),
            counts: pass.counts,
            videos: pass.videos,
            jobs_per_second,
            eta_seconds,
            recent_errors: pass.errors.iter().cloned().collect(),
            created_at_ms: pass.created_at_ms,
            planning_error: pass.planning_error.clone(),
            released: pass.released,
            skipped: pass.skipped,
        })
    }

    fn promote_due_retries(&mut self, now_ms: i64) {
        let due: Vec<String> = self
            .delayed
            .iter()
            .take_while(|(retry_at, _)| *retry_at <= now_ms)
            .map(|(_, job_id)| job_id.clone())
            .collect();
        for job_id in due {
            self.transition(&job_id, JobState::Pending);
        }
    }

    fn pass_stopped(&self, pass_id: &str) -> bool {
        self.passes
            .get(pass_id)
            .is_some_and(|pass| matches!(pass.state, PassState::Cancelled | PassState::Failed))
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn create_pass(&self, spec: &PassSpec, now_ms: i64) -> Result<Created> {
        let mut state = self.lock();
        if let Some(key) = &spec.idempotency_key
            && let Some(pass_id) = state.idempotency.get(key)
        {
            return Ok(Created {
                pass_id: pass_id.clone(),
                existing: true,
            });
        }
        let pass_id = new_pass_id();
        if let Some(key) = &spec.idempotency_key {
            state.idempotency.insert(key.clone(), pass_id.clone());
        }
        state.pass_order.insert(pass_id.clone());
        state.passes.insert(
            pass_id.clone(),
            PassRecord {
                spec: spec.clone(),
                state: PassState::Planning,
                created_at_ms: now_ms,
                planning_error: None,
                cursor: None,
                planner: None,
                videos: 0,
                counts: JobCounts::default(),
                jobs: BTreeMap::new(),
                next_seq: 0,
                errors: VecDeque::new(),
                buckets: BTreeMap::new(),
                released: 0,
                skipped: 0,
            },
        );
        Ok(Created {
            pass_id,
            existing: false,
        })
    }

    async fn add_jobs(
        &self,
        pass_id: &str,
        jobs: &[NewJob],
        cursor: Option<&str>,
        _now_ms: i64,
    ) -> Result<u64> {
        let mut state = self.lock();
        let pass = state.pass(pass_id)?;
        if pass.state != PassState::Planning {
            return Err(Error::FailedPrecondition(format!(
                "pass {pass_id} is {}, not planning",
                pass.state
            )));
        }
        let mut created = 0;
        for job in jobs {
            if state.insert_job(pass_id, job) {
                created += 1;
            }
        }
        let pass = state.pass_mut(pass_id)?;
        pass.videos += created;
        if let Some(cursor) = cursor {
            pass.cursor = Some(cursor.to_owned());
        }
        Ok(created)
    }

    async fn finish_planning(&self, pass_id: &str, error: Option<&str>) -> Result<()> {
        let mut state = self.lock();
        let pass = state.pass_mut(pass_id)?;
        if pass.state != PassState::Planning {
            return Ok(());
        }
        pass.planner = None;
        match error {
            Some(reason) => {
                pass.state = PassState::Failed;
                pass.planning_error = Some(reason.to_owned());
                let pending: Vec<String> = pass.jobs.values().cloned().collect();
                for job_id in pending {
                    if state
                        .jobs
                        .get(&job_id)
                        .is_some_and(|r| r.job.state == JobState::Pending)
                    {
                        state.transition(&job_id, JobState::Cancelled);
                    }
                }
            }
            None => pass.state = PassState::Running,
        }
        Ok(())
    }

    async fn claim_planning(
        &self,
        pass_id: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool> {
        let mut state = self.lock();
        let pass = state.pass_mut(pass_id)?;
        if pass.state != PassState::Planning {
            return Ok(false);
        }
        match &pass.planner {
            Some((owner, until)) if owner != holder && *until > now_ms => Ok(false),
            _ => {
                pass.planner = Some((holder.to_owned(), now_ms + ttl_ms));
                Ok(true)
            }
        }
    }

    async fn planning_passes(&self) -> Result<Vec<PlanningPass>> {
        let state = self.lock();
        Ok(state
            .passes
            .iter()
            .filter(|(_, pass)| pass.state == PassState::Planning)
            .map(|(pass_id, pass)| PlanningPass {
                pass_id: pass_id.clone(),
                spec: pass.spec.clone(),
                cursor: pass.cursor.clone(),
            })
            .collect())
    }

    async fn pass_spec(&self, pass_id: &str) -> Result<PassSpec> {
        Ok(self.lock().pass(pass_id)?.spec.clone())
    }

    async fn pass_status(&self, pass_id: &str, now_ms: i64) -> Result<PassStatus> {
        self.lock().status(pass_id, now_ms)
    }

    async fn list_passes(
        &self,
        page_size: u32,
        cursor: Option<&str>,
        now_ms: i64,
    ) -> Result<Page<PassStatus>> {
        let state = self.lock();
        let after = match cursor {
            Some(token) => Some(page_token::decode("passes", token)?),
            None => None,
        };
        let mut items = Vec::new();
        let mut next = None;
        let newer_first = state.pass_order.iter().rev();
        for pass_id in newer_first.filter(|id| after.as_ref().is_none_or(|after| *id < after)) {
            if items.len() == page_size as usize {
                next = items
                    .last()
                    .map(|last: &PassStatus| page_token::encode("passes", &last.pass_id));
                break;
            }
            items.push(state.status(pass_id, now_ms)?);
        }
        Ok(Page { items, next })
    }

    async fn list_jobs(
        &self,
        pass_id: &str,
        filter: Option<JobState>,
        page_size: u32,
        cursor: Option<&str>,
    ) -> Result<Page<Job>> {
        let state = self.lock();
        let pass = state.pass(pass_id)?;
        let scope = jobs_scope(pass_id, filter);
        let after: u64 = match cursor {
            Some(token) => page_token::decode(&scope, token)?
                .parse()
                .map_err(|_| Error::invalid("page token was not issued for this listing"))?,
            None => 0,
        };
        let mut items = Vec::new();
        let mut next = None;
        let mut last_seq = after;
        for (seq, job_id) in pass.jobs.range(after + 1..) {
            let Some(record) = state.jobs.get(job_id) else {
                continue;
            };
            if filter.is_some_and(|wanted| record.job.state != wanted) {
                continue;
            }
            if items.len() == page_size as usize {
                next = Some(page_token::encode(&scope, &last_seq.to_string()));
                break;
            }
            items.push(record.job.clone());
            last_seq = *seq;
        }
        Ok(Page { items, next })
    }

    async fn job(&self, job_id: &str) -> Result<Job> {
        let state = self.lock();
        state
            .jobs
            .get(job_id)
            .map(|record| record.job.clone())
            .ok_or_else(|| Error::NotFound(format!("job {job_id}")))
    }

    async fn cancel_pass(&self, pass_id: &str, _now_ms: i64) -> Result<()> {
        let mut state = self.lock();
        let pass = state.pass_mut(pass_id)?;
        if matches!(pass.state, PassState::Cancelled | PassState::Failed) {
            return Ok(());
        }
        if effective_state(pass.state, &pass.counts) == PassState::Finished {
            return Ok(());
        }
        pass.state = PassState::Cancelled;
        let job_ids: Vec<String> = pass.jobs.values().cloned().collect();
        for job_id in job_ids {
            let current = state.jobs.get(&job_id).map(|record| record.job.state);
            if matches!(current, Some(JobState::Pending | JobState::Failed)) {
                state.transition(&job_id, JobState::Cancelled);
            }
        }
        Ok(())
    }

    async fn lease(&self, request: &LeaseRequest, now_ms: i64) -> Result<Vec<LeasedJob>> {
        let mut state = self.lock();
        state.promote_due_retries(now_ms);
        let mut leased = Vec::new();
        while leased.len() < request.max_jobs as usize {
            let Some((_, job_id)) = state.pending.iter().next().cloned() else {
                break;
            };
            let pass_id = state.jobs[&job_id].job.pass_id.clone();
            if state.pass_stopped(&pass_id) {
                state.transition(&job_id, JobState::Cancelled);
                continue;
            }
            state.transition(&job_id, JobState::Leased);
            state.next_lease += 1;
            let lease = Lease {
                lease_id: state.next_lease.to_string(),
                deadline_ms: now_ms + request.lease_ms,
                started_ms: now_ms,
                duration_ms: request.lease_ms,
                worker_id: request.worker_id.clone(),
            };
            state.leases.insert((lease.deadline_ms, job_id.clone()));
            let record = state
                .jobs
                .get_mut(&job_id)
                .expect("job exists: taken from the queue");
            record.job.attempt += 1;
            record.lease = Some(lease.clone());
            let job = record.job.clone();
            let pass = state.pass(&pass_id)?.spec.clone();
            leased.push(LeasedJob {
                job,
                lease_id: lease.lease_id,
                deadline_ms: lease.deadline_ms,
                pass,
            });
        }
        Ok(leased)
    }

    async fn heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        extend_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<Heartbeat> {
        let mut state = self.lock();
        let record = state.current_lease(job_id, lease_id)?;
        let pass_id = record.job.pass_id.clone();
        let mut lease = record.lease.clone().expect("current lease checked above");
        state.leases.remove(&(lease.deadline_ms, job_id.to_owned()));
        lease.deadline_ms = now_ms + extend_ms.unwrap_or(lease.duration_ms);
        state.leases.insert((lease.deadline_ms, job_id.to_owned()));
        let deadline_ms = lease.deadline_ms;
        if let Some(record) = state.jobs.get_mut(job_id) {
            record.lease = Some(lease);
        }
        Ok(Heartbeat {
            deadline_ms,
            cancelled: state.pass_stopped(&pass_id),
        })
    }

    async fn complete(
        &self,
        job_id: &str,
        lease_id: &str,
        completion: &Completion,
        now_ms: i64,
    ) -> Result<Completed> {
        let mut state = self.lock();
        let record = state.current_lease(job_id, lease_id)?;
        if !completion.segments.is_empty() && !record.job.spec.probe {
            return Err(Error::invalid(format!(
                "job {job_id} is a segment job and cannot be split further"
            )));
        }
        validate_segments(&completion.segments)?;
        let started_ms = record
            .lease
            .as_ref()
            .map_or(now_ms, |lease| lease.started_ms);
        let pass_id = record.job.pass_id.clone();
        let parent = record.job.spec.clone();
        state.transition(job_id, JobState::Done);
        if let Some(record) = state.jobs.get_mut(job_id) {
            record.job.result_url = completion.result_url.clone();
        }
        state.count_finished(&pass_id, now_ms);
        if completion.skipped {
            state.pass_mut(&pass_id)?.skipped += 1;
        }
        let mut segments_created = 0;
        for job in segment_jobs(&parent, &completion.segments) {
            if state.insert_job(&pass_id, &job) {
                segments_created += 1;
            }
        }
        Ok(Completed {
            lease_held_ms: now_ms - started_ms,
            segments_created,
        })
    }

    async fn fail(
        &self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        kind: FailureKind,
        now_ms: i64,
    ) -> Result<FailOutcome> {
        let mut state = self.lock();
        let record = state.current_lease(job_id, lease_id)?;
        let attempt = record.job.attempt;
        let panics_before = record.panics;
        let pass_id = record.job.pass_id.clone();
        let max_attempts = state.pass(&pass_id)?.spec.max_attempts;
        state.record_error(job_id, reason, now_ms);
        if kind == FailureKind::Panic
            && let Some(record) = state.jobs.get_mut(job_id)
        {
            record.panics += 1;
        }
        let retry = match kind {
            FailureKind::Retryable => true,
            FailureKind::Panic => panics_before == 0,
            FailureKind::Permanent => false,
        };
        let outcome = if state.pass_stopped(&pass_id) {
            FailOutcome {
                state: JobState::Cancelled,
                retry_at_ms: 0,
            }
        } else if retry && attempt < max_attempts {
            FailOutcome {
                state: JobState::Failed,
                retry_at_ms: now_ms + self.retry.backoff_ms(attempt),
            }
        } else {
            FailOutcome {
                state: JobState::Dead,
                retry_at_ms: 0,
            }
        };
        state.transition(job_id, outcome.state);
        if outcome.state == JobState::Failed {
            let record = state
                .jobs
                .get_mut(job_id)
                .expect("job exists: lease checked above");
            record.retry_at_ms = outcome.retry_at_ms;
            state
                .delayed
                .insert((outcome.retry_at_ms, job_id.to_owned()));
        } else {
            state.count_finished(&pass_id, now_ms);
        }
        Ok(outcome)
    }

    async fn release(&self, job_id: &str, lease_id: &str, now_ms: i64) -> Result<JobState> {
        let mut state = self.lock();
        let record = state.current_lease(job_id, lease_id)?;
        let pass_id = record.job.pass_id.clone();
        let to = if state.pass_stopped(&pass_id) {
            JobState::Cancelled
        } else {
            JobState::Pending
        };
        state.transition(job_id, to);
        if to == JobState::Pending
            && let Some(record) = state.jobs.get_mut(job_id)
        {
            record.job.attempt = record.job.attempt.saturating_sub(1);
        }
        if to.is_terminal() {
            state.count_finished(&pass_id, now_ms);
        }
        state.pass_mut(&pass_id)?.released += 1;
        Ok(to)
    }

    async fn reap_expired(&self, now_ms: i64, limit: u32) -> Result<u64> {
        let mut state = self.lock();
        let expired: Vec<String> = state
            .leases
            .iter()
            .take_while(|(deadline, _)| *deadline <= now_ms)
            .take(limit as usize)
            .map(|(_, job_id)| job_id.clone())
            .collect();
        for job_id in &expired {
            let record = state
                .jobs
                .get_mut(job_id)
                .expect("job exists: taken from the leases");
            record.job.crashes += 1;
            let crashes = record.job.crashes;
            let pass_id = record.job.pass_id.clone();
            let attempt = record.job.attempt;
            let max_attempts = state.pass(&pass_id)?.spec.max_attempts;
            let stopped = state.pass_stopped(&pass_id);
            let crashed_out = crashes >= self.retry.max_crashes;
            let reason = if crashed_out && !stopped {
                crash_reason(crashes)
            } else {
                "lease expired".to_owned()
            };
            state.record_error(job_id, &reason, now_ms);
            let to = if stopped {
                JobState::Cancelled
            } else if crashed_out || attempt >= max_attempts {
                JobState::Dead
            } else {
                JobState::Pending
            };
            state.transition(job_id, to);
            if to.is_terminal() {
                state.count_finished(&pass_id, now_ms);
            }
        }
        Ok(expired.len() as u64)
    }

    async fn leases_in_flight(&self) -> Result<u64> {
        Ok(self.lock().leases.len() as u64)
    }

    async fn lease_holders(&self) -> Result<Vec<String>> {
        let state = self.lock();
        let holders: BTreeSet<String> = state
            .leases
            .iter()
            .filter_map(|(_, job_id)| state.jobs.get(job_id)?.lease.as_ref())
            .map(|lease| lease.worker_id.clone())
            .collect();
        Ok(holders.into_iter().collect())
    }

    async fn expire_passes(&self, created_before_ms: i64, limit: u32) -> Result<Vec<String>> {
        let mut state = self.lock();
        let oldest: Vec<String> = state
            .pass_order
            .iter()
            .take(limit as usize)
            .cloned()
            .collect();
        let mut expired = Vec::new();
        for pass_id in oldest {
            let Some(pass) = state.passes.get(&pass_id) else {
                continue;
            };
            if pass.created_at_ms >= created_before_ms {
                break;
            }
            let ended = match effective_state(pass.state, &pass.counts) {
                PassState::Finished | PassState::Failed | PassState::Cancelled => {
                    pass.counts.leased == 0
                }
                PassState::Planning | PassState::Running => false,
            };
            if !ended {
                continue;
            }
            let Some(pass) = state.passes.remove(&pass_id) else {
                continue;
            };
            for job_id in pass.jobs.values() {
                state.jobs.remove(job_id);
            }
            if let Some(key) = &pass.spec.idempotency_key {
                state.idempotency.remove(key);
            }
            state.pass_order.remove(&pass_id);
            state.assembly.retain(|(pass, _), _| *pass != pass_id);
            state.finalization.remove(&pass_id);
            expired.push(pass_id);
        }
        Ok(expired)
    }

    async fn active_passes(&self) -> Result<Vec<String>> {
        let state = self.lock();
        Ok(state
            .passes
            .iter()
            .filter(|(_, pass)| {
                matches!(
                    effective_state(pass.state, &pass.counts),
                    PassState::Planning | PassState::Running
                )
            })
            .map(|(pass_id, _)| pass_id.clone())
            .collect())
    }

    async fn count_segment(
        &self,
        pass_id: &str,
        video_key: &str,
        segment_index: u32,
        segment_count: u32,
    ) -> Result<bool> {
        validate_segment_count(video_key, segment_index, segment_count)?;
        let mut state = self.lock();
        state.pass(pass_id)?;
        let (counted, assembler) = state
            .assembly
            .entry((pass_id.to_owned(), video_key.to_owned()))
            .or_default();
        let new = counted.insert(segment_index);
        if new && assembler.is_none() && counted.len() as u32 >= segment_count {
            *assembler = Some(segment_index);
        }
        Ok(*assembler == Some(segment_index))
    }

    async fn claim_finalization(
        &self,
        pass_id: &str,
        holder: &str,
        again: bool,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<FinalizeClaim> {
        let mut state = self.lock();
        state.pass(pass_id)?;
        let finalization = state.finalization.entry(pass_id.to_owned()).or_default();
        if finalization.done && !again {
            return Ok(FinalizeClaim::Done);
        }
        if let Some((owner, until_ms)) = &finalization.held
            && owner != holder
            && *until_ms > now_ms
        {
            return Ok(FinalizeClaim::Busy);
        }
        finalization.held = Some((holder.to_owned(), now_ms + ttl_ms));
        Ok(FinalizeClaim::Claimed)
    }

    async fn finish_finalization(&self, pass_id: &str) -> Result<()> {
        let mut state = self.lock();
        state.pass(pass_id)?;
        state.finalization.insert(
            pass_id.to_owned(),
            Finalization {
                done: true,
                held: None,
            },
        );
        Ok(())
    }
}

pub(crate) fn jobs_scope(pass_id: &str, filter: Option<JobState>) -> String {
    format!("jobs:{pass_id}:{}", filter.map_or("all", JobState::as_str))
}
