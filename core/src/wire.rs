//! Conversions between the `vidx.v1` messages and the [`domain`](crate::domain) types, as
//! `From`/`TryFrom` impls: the server and the client both go through these, so a field is read
//! and written in one place. Zero and empty fields stand for "unset" on the wire, as proto3
//! makes them; the conversions turn them into `None` or the documented default.

use vidx_proto::v1 as pb;

use crate::domain::{
    Completion, Created, DEFAULT_MAX_ATTEMPTS, ErrorReport, FailureKind, FinalizeClaim, Heartbeat,
    Job, JobCounts, JobState, LeasedJob, NewJob, PassSpec, PassState, PassStatus, Sampling,
    Segment, TaskSpec,
};
use crate::error::Error;

fn non_empty(value: String) -> Option<String> {
    (!value.is_empty()).then_some(value)
}

// ---- task and sampling -----------------------------------------------------------------------

impl From<Option<pb::Task>> for TaskSpec {
    /// A missing task means the default indexing prompt.
    fn from(task: Option<pb::Task>) -> Self {
        use pb::task::Kind;
        match task.and_then(|task| task.kind) {
            None => TaskSpec::Index { prompt: None },
            Some(Kind::Index(index)) => TaskSpec::Index {
                prompt: (!index.prompt.trim().is_empty()).then_some(index.prompt),
            },
            Some(Kind::Questions(questions)) => TaskSpec::Questions {
                questions: questions.questions,
            },
            Some(Kind::Moderation(moderation)) => TaskSpec::Moderation {
                policy_yaml: moderation.policy_yaml,
            },
        }
    }
}

impl From<&TaskSpec> for pb::Task {
    fn from(task: &TaskSpec) -> Self {
        use pb::task::Kind;
        let kind = match task {
            TaskSpec::Index { prompt } => Kind::Index(pb::IndexTask {
                prompt: prompt.clone().unwrap_or_default(),
            }),
            TaskSpec::Questions { questions } => Kind::Questions(pb::QuestionsTask {
                questions: questions.clone(),
            }),
            TaskSpec::Moderation { policy_yaml } => Kind::Moderation(pb::ModerationTask {
                policy_yaml: policy_yaml.clone(),
            }),
        };
        pb::Task { kind: Some(kind) }
    }
}

impl From<Option<pb::Sampling>> for Sampling {
    /// Zero fields take their defaults.
    fn from(sampling: Option<pb::Sampling>) -> Self {
        let defaults = Sampling::default();
        let Some(sampling) = sampling else {
            return defaults;
        };
        let or = |value: f64, default: f64| if value == 0.0 { default } else { value };
        Sampling {
            fps: or(sampling.fps, defaults.fps),
            max_frames: if sampling.max_frames == 0 {
                defaults.max_frames
            } else {
                sampling.max_frames
            },
            segment_secs: or(sampling.segment_secs, defaults.segment_secs),
        }
    }
}

impl From<&Sampling> for pb::Sampling {
    fn from(sampling: &Sampling) -> Self {
        pb::Sampling {
            fps: sampling.fps,
            max_frames: sampling.max_frames,
            segment_secs: sampling.segment_secs,
        }
    }
}

// ---- passes ----------------------------------------------------------------------------------

impl From<pb::SubmitPassRequest> for PassSpec {
    /// Reads a submission; it is validated by [`PassSpec::validate`] where it is accepted.
    fn from(request: pb::SubmitPassRequest) -> Self {
        PassSpec {
            source: request.source.trim().to_owned(),
            destination: request.destination.trim().to_owned(),
            task: TaskSpec::from(request.task),
            sampling: Sampling::from(request.sampling),
            idempotency_key: non_empty(request.idempotency_key),
            max_attempts: if request.max_attempts == 0 {
                DEFAULT_MAX_ATTEMPTS
            } else {
                request.max_attempts
            },
            verify: request.verify,
        }
    }
}

impl From<&PassSpec> for pb::SubmitPassRequest {
    fn from(spec: &PassSpec) -> Self {
        pb::SubmitPassRequest {
            source: spec.source.clone(),
            destination: spec.destination.clone(),
            task: Some(pb::Task::from(&spec.task)),
            sampling: Some(pb::Sampling::from(&spec.sampling)),
            idempotency_key: spec.idempotency_key.clone().unwrap_or_default(),
            max_attempts: spec.max_attempts,
            verify: spec.verify,
        }
    }
}

impl From<pb::SubmitPassResponse> for Created {
    fn from(response: pb::SubmitPassResponse) -> Self {
        Created {
            pass_id: response.pass_id,
            existing: response.existing,
        }
    }
}

impl From<PassState> for pb::PassState {
    fn from(state: PassState) -> Self {
        match state {
            PassState::Planning => pb::PassState::Planning,
            PassState::Running => pb::PassState::Running,
            PassState::Finished => pb::PassState::Finished,
            PassState::Cancelled => pb::PassState::Cancelled,
            PassState::Failed => pb::PassState::Failed,
        }
    }
}

impl TryFrom<i32> for PassState {
    type Error = Error;

    fn try_from(raw: i32) -> Result<Self, Error> {
        Ok(match pb::PassState::try_from(raw) {
            Ok(pb::PassState::Planning) => PassState::Planning,
            Ok(pb::PassState::Running) => PassState::Running,
            Ok(pb::PassState::Finished) => PassState::Finished,
            Ok(pb::PassState::Cancelled) => PassState::Cancelled,
            Ok(pb::PassState::Failed) => PassState::Failed,
            _ => return Err(Error::Corrupt(format!("unknown pass state {raw}"))),
        })
    }
}

impl From<&ErrorReport> for pb::ErrorReport {
    fn from(error: &ErrorReport) -> Self {
        pb::ErrorReport {
            job_id: error.job_id.clone(),
            video_url: error.video_url.clone(),
            reason: error.reason.clone(),
            at_ms: error.at_ms,
        }
    }
}

impl From<pb::ErrorReport> for ErrorReport {
    fn from(error: pb::ErrorReport) -> Self {
        ErrorReport {
            job_id: error.job_id,
            video_url: error.video_url,
            reason: error.reason,
            at_ms: error.at_ms,
        }
    }
}

impl From<&PassStatus> for pb::PassStatus {
    fn from(status: &PassStatus) -> Self {
        let counts = &status.counts;
        pb::PassStatus {
            pass_id: status.pass_id.clone(),
            state: pb::PassState::from(status.state) as i32,
            source: status.spec.source.clone(),
            destination: status.spec.destination.clone(),
            counts: Some(pb::JobCounts {
                pending: counts.pending,
                leased: counts.leased,
                done: counts.done,
                failed: counts.failed,
                dead: counts.dead,
                cancelled: counts.cancelled,
                total: counts.total(),
            }),
            jobs_per_second: status.jobs_per_second,
            eta_seconds: status.eta_seconds.unwrap_or(-1.0),
            recent_errors: status.recent_errors.iter().map(Into::into).collect(),
            created_at_ms: status.created_at_ms,
            planning_error: status.planning_error.clone().unwrap_or_default(),
            videos: status.videos,
            task: Some(pb::Task::from(&status.spec.task)),
            sampling: Some(pb::Sampling::from(&status.spec.sampling)),
            idempotency_key: status.spec.idempotency_key.clone().unwrap_or_default(),
            max_attempts: status.spec.max_attempts,
            released: status.released,
            verify: status.spec.verify,
            skipped: status.skipped,
        }
    }
}

impl TryFrom<pb::PassStatus> for PassStatus {
    type Error = Error;

    fn try_from(status: pb::PassStatus) -> Result<Self, Error> {
        let counts = status.counts.unwrap_or_default();
        Ok(PassStatus {
            state: PassState::try_from(status.state)?,
            pass_id: status.pass_id,
            spec: PassSpec {
                source: status.source,
                destination: status.destination,
                task: TaskSpec::from(status.task),
                sampling: Sampling::from(status.sampling),
                idempotency_key: non_empty(status.idempotency_key),
                max_attempts: status.max_attempts,
                verify: status.verify,
            },
            counts: JobCounts {
                pending: counts.pending,
                leased: counts.leased,
                done: counts.done,
                failed: counts.failed,
                dead: counts.dead,
                cancelled: counts.cancelled,
            },
            videos: status.videos,
            jobs_per_second: status.jobs_per_second,
            eta_seconds: (status.eta_seconds >= 0.0).then_some(status.eta_seconds),
            recent_errors: status.recent_errors.into_iter().map(Into::into).collect(),
            created_at_ms: status.created_at_ms,
            planning_error: non_empty(status.planning_error),
            released: status.released,
            skipped: status.skipped,
        })
    }
}

// ---- jobs ------------------------------------------------------------------------------------

impl From<JobState> for pb::JobState {
    fn from(state: JobState) -> Self {
        match state {
            JobState::Pending => pb::JobState::Pending,
            JobState::Leased => pb::JobState::Leased,
            JobState::Done => pb::JobState::Done,
            JobState::Failed => pb::JobState::Failed,
            JobState::Dead => pb::JobState::Dead,
            JobState::Cancelled => pb::JobState::Cancelled,
        }
    }
}

/// Reads a job-state filter: `UNSPECIFIED` means every state; an unknown number is the caller's
/// mistake.
pub fn job_state_filter(raw: i32) -> Result<Option<JobState>, Error> {
    let state = pb::JobState::try_from(raw)
        .map_err(|_| Error::invalid(format!("job state {raw} is not a known state")))?;
    Ok(match state {
        pb::JobState::Unspecified => None,
        pb::JobState::Pending => Some(JobState::Pending),
        pb::JobState::Leased => Some(JobState::Leased),
        pb::JobState::Done => Some(JobState::Done),
        pb::JobState::Failed => Some(JobState::Failed),
        pb::JobState::Dead => Some(JobState::Dead),
        pb::JobState::Cancelled => Some(JobState::Cancelled),
    })
}

/// Writes a job-state filter: `None` is every state.
pub fn job_state_filter_to_pb(state: Option<JobState>) -> i32 {
    state.map_or(pb::JobState::Unspecified, pb::JobState::from) as i32
}

impl TryFrom<i32> for JobState {
    type Error = Error;

    /// A job's state as received; unlike a filter, it is never unspecified.
    fn try_from(raw: i32) -> Result<Self, Error> {
        job_state_filter(raw)
            .ok()
            .flatten()
            .ok_or_else(|| Error::Corrupt(format!("unknown job state {raw}")))
    }
}

impl From<&Job> for pb::Job {
    fn from(job: &Job) -> Self {
        pb::Job {
            job_id: job.job_id.clone(),
            pass_id: job.pass_id.clone(),
            video_url: job.spec.video_url.clone(),
            start_s: job.spec.start_s,
            end_s: job.spec.end_s,
            state: pb::JobState::from(job.state) as i32,
            attempt: job.attempt,
            last_error: job.last_error.clone().unwrap_or_default(),
            size_bytes: job.spec.size_bytes,
            etag: job.spec.etag.clone().unwrap_or_default(),
            probe: job.spec.probe,
            result_url: job.result_url.clone().unwrap_or_default(),
            crashes: job.crashes,
        }
    }
}

impl TryFrom<pb::Job> for Job {
    type Error = Error;

    fn try_from(job: pb::Job) -> Result<Self, Error> {
        Ok(Job {
            state: JobState::try_from(job.state)?,
            job_id: job.job_id,
            pass_id: job.pass_id,
            spec: NewJob {
                video_url: job.video_url,
                start_s: job.start_s,
                end_s: job.end_s,
                size_bytes: job.size_bytes,
                etag: non_empty(job.etag),
                probe: job.probe,
            },
            attempt: job.attempt,
            last_error: non_empty(job.last_error),
            result_url: non_empty(job.result_url),
            crashes: job.crashes,
        })
    }
}

impl From<&LeasedJob> for pb::LeasedJob {
    fn from(leased: &LeasedJob) -> Self {
        pb::LeasedJob {
            job: Some(pb::Job::from(&leased.job)),
            lease_id: leased.lease_id.clone(),
            deadline_ms: leased.deadline_ms,
            task: Some(pb::Task::from(&leased.pass.task)),
            sampling: Some(pb::Sampling::from(&leased.pass.sampling)),
            destination: leased.pass.destination.clone(),
            verify: leased.pass.verify,
        }
    }
}

impl TryFrom<pb::LeasedJob> for LeasedJob {
    type Error = Error;

    /// The pass travels as the parts a worker needs: task, sampling and destination.
    fn try_from(leased: pb::LeasedJob) -> Result<Self, Error> {
        let job = leased
            .job
            .ok_or_else(|| Error::Corrupt("leased job has no job".into()))?;
        Ok(LeasedJob {
            job: Job::try_from(job)?,
            lease_id: leased.lease_id,
            deadline_ms: leased.deadline_ms,
            pass: PassSpec {
                source: String::new(),
                destination: leased.destination,
                task: TaskSpec::from(leased.task),
                sampling: Sampling::from(leased.sampling),
                idempotency_key: None,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                verify: leased.verify,
            },
        })
    }
}

impl From<pb::HeartbeatResponse> for Heartbeat {
    fn from(response: pb::HeartbeatResponse) -> Self {
        Heartbeat {
            deadline_ms: response.deadline_ms,
            cancelled: response.cancelled,
        }
    }
}

impl From<&pb::CompleteJobRequest> for Completion {
    fn from(request: &pb::CompleteJobRequest) -> Self {
        Completion {
            result_url: non_empty(request.result_url.clone()),
            segments: request
                .segments
                .iter()
                .map(|segment| Segment {
                    start_s: segment.start_s,
                    end_s: segment.end_s,
                })
                .collect(),
            skipped: request.skipped,
        }
    }
}

impl From<FinalizeClaim> for pb::FinalizationClaim {
    fn from(claim: FinalizeClaim) -> Self {
        match claim {
            FinalizeClaim::Claimed => pb::FinalizationClaim::Claimed,
            FinalizeClaim::Busy => pb::FinalizationClaim::Busy,
            FinalizeClaim::Done => pb::FinalizationClaim::Done,
        }
    }
}

impl TryFrom<i32> for FinalizeClaim {
    type Error = Error;

    fn try_from(value: i32) -> Result<Self, Error> {
        match pb::FinalizationClaim::try_from(value) {
            Ok(pb::FinalizationClaim::Claimed) => Ok(FinalizeClaim::Claimed),
            Ok(pb::FinalizationClaim::Busy) => Ok(FinalizeClaim::Busy),
            Ok(pb::FinalizationClaim::Done) => Ok(FinalizeClaim::Done),
            Ok(pb::FinalizationClaim::Unspecified) | Err(_) => Err(Error::Corrupt(format!(
                "finalization claim {value} is not a known answer"
            ))),
        }
    }
}

impl From<FailureKind> for pb::FailureKind {
    fn from(kind: FailureKind) -> Self {
        match kind {
            FailureKind::Retryable => pb::FailureKind::Retryable,
            FailureKind::Permanent => pb::FailureKind::Permanent,
            FailureKind::Panic => pb::FailureKind::Panic,
        }
    }
}

/// Reads a failure report's kind: an unspecified kind falls back to the deprecated `retryable`
/// flag (workers that predate the kind); an unknown number is the caller's mistake.
pub fn failure_kind(request: &pb::FailJobRequest) -> Result<FailureKind, Error> {
    match pb::FailureKind::try_from(request.kind) {
        Ok(pb::FailureKind::Unspecified) => Ok(FailureKind::from_retryable(request.retryable)),
        Ok(pb::FailureKind::Retryable) => Ok(FailureKind::Retryable),
        Ok(pb::FailureKind::Permanent) => Ok(FailureKind::Permanent),
        Ok(pb::FailureKind::Panic) => Ok(FailureKind::Panic),
        Err(_) => Err(Error::invalid(format!(
            "failure kind {} is not a known kind",
            request.kind
        ))),
    }
}

/// Writes a failure report; the deprecated `retryable` flag is set too, so a coordinator that
/// predates the kind still reads a retryable failure (and a panic) as retryable.
pub fn fail_request(
    job_id: &str,
    lease_id: &str,
    reason: &str,
    kind: FailureKind,
) -> pb::FailJobRequest {
    pb::FailJobRequest {
        job_id: job_id.to_owned(),
        lease_id: lease_id.to_owned(),
        reason: reason.to_owned(),
        retryable: kind != FailureKind::Permanent,
        kind: pb::FailureKind::from(kind) as i32,
    }
}

impl From<&Segment> for pb::Segment {
    fn from(segment: &Segment) -> Self {
        pb::Segment {
            start_s: segment.start_s,
            end_s: segment.end_s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pass_status_survives_the_wire() {
        let status = PassStatus {
            pass_id: "p".into(),
            spec: PassSpec {
                source: "s3://videos/".into(),
                destination: "s3://index/".into(),
                task: TaskSpec::Questions {
                    questions: vec!["Where is the red car?".into()],
                },
                sampling: Sampling {
                    fps: 2.0,
                    max_frames: 8,
                    segment_secs: 300.0,
                },
                idempotency_key: Some("nightly".into()),
                max_attempts: 5,
                verify: None,
            },
            state: PassState::Running,
            counts: JobCounts {
                pending: 3,
                leased: 1,
                done: 7,
                failed: 1,
                dead: 2,
                cancelled: 0,
            },
            videos: 12,
            jobs_per_second: 0.5,
            eta_seconds: None,
            recent_errors: vec![ErrorReport {
                job_id: "p.4".into(),
                video_url: "s3://videos/bad.mp4".into(),
                reason: "not a video".into(),
                at_ms: 9,
            }],
            created_at_ms: 1,
            planning_error: None,
            released: 4,
            skipped: 3,
        };
        let back = PassStatus::try_from(pb::PassStatus::from(&status)).unwrap();
        assert_eq!(back, status);
    }

    #[test]
    fn a_leased_job_survives_the_wire_but_for_the_pass_fields_workers_do_not_get() {
        let leased = LeasedJob {
            job: Job {
                job_id: "p.1".into(),
                pass_id: "p".into(),
                spec: NewJob {
                    video_url: "s3://videos/a.mp4".into(),
                    start_s: 600.0,
                    end_s: 1200.0,
                    size_bytes: 42,
                    etag: Some("\"e\"".into()),
                    probe: false,
                },
                state: JobState::Leased,
                attempt: 2,
                last_error: Some("timed out".into()),
                result_url: None,
                crashes: 1,
            },
            lease_id: "l".into(),
            deadline_ms: 77,
            pass: PassSpec {
                source: String::new(),
                destination: "s3://index/".into(),
                task: TaskSpec::Moderation {
                    policy_yaml: "categories: []".into(),
                },
                sampling: Sampling::default(),
                idempotency_key: None,
                max_attempts: DEFAULT_MAX_ATTEMPTS,
                verify: None,
            },
        };
        let back = LeasedJob::try_from(pb::LeasedJob::from(&leased)).unwrap();
        assert_eq!(back, leased);
    }

    #[test]
    fn unknown_states_are_errors_and_unspecified_filters_mean_all() {
        assert!(matches!(JobState::try_from(99), Err(Error::Corrupt(_))));
        assert!(matches!(JobState::try_from(0), Err(Error::Corrupt(_))));
        assert!(matches!(job_state_filter(0), Ok(None)));
        assert!(matches!(
            job_state_filter(99),
            Err(Error::InvalidArgument(_))
        ));
        for state in JobState::ALL {
            assert_eq!(
                job_state_filter(job_state_filter_to_pb(Some(state))).unwrap(),
                Some(state)
            );
        }
        assert!(matches!(PassState::try_from(42), Err(Error::Corrupt(_))));
    }

    #[test]
    fn failure_kinds_survive_the_wire_and_old_workers_are_understood() {
        for kind in [
            FailureKind::Retryable,
            FailureKind::Permanent,
            FailureKind::Panic,
        ] {
            let request = fail_request("p.1", "l", "boom", kind);
            assert_eq!(failure_kind(&request).unwrap(), kind);
        }
        let old_worker = |retryable| pb::FailJobRequest {
            job_id: "p.1".into(),
            lease_id: "l".into(),
            reason: "boom".into(),
            retryable,
            kind: 0,
        };
        assert_eq!(
            failure_kind(&old_worker(true)).unwrap(),
            FailureKind::Retryable
        );
        assert_eq!(
            failure_kind(&old_worker(false)).unwrap(),
            FailureKind::Permanent
        );
        let unknown = pb::FailJobRequest {
            kind: 99,
            ..old_worker(true)
        };
        assert!(matches!(
            failure_kind(&unknown),
            Err(Error::InvalidArgument(_))
        ));
    }
}
