//! The gRPC edge: converts between `vidx.v1` messages and domain types, and maps errors to status
//! codes through `From<Error> for Status` (the one place that mapping lives).

use tonic::{Request, Response, Status};
use tracing::warn;

use crate::domain::{
    self, Completion, DEFAULT_MAX_ATTEMPTS, ErrorReport, Job, JobState, LeasedJob, PassSpec,
    PassState, PassStatus, Sampling, Segment, Task,
};
use crate::error::Error;
use crate::service::Coordinator;
use vidx_proto::v1 as pb;

/// Serves `vidx.v1.PassService`.
#[derive(Debug, Clone)]
pub struct PassApi {
    coordinator: Coordinator,
}

/// Serves `vidx.v1.WorkerService`.
#[derive(Debug, Clone)]
pub struct WorkerApi {
    coordinator: Coordinator,
}

impl PassApi {
    /// Wraps a coordinator.
    pub fn new(coordinator: Coordinator) -> Self {
        PassApi { coordinator }
    }
}

impl WorkerApi {
    /// Wraps a coordinator.
    pub fn new(coordinator: Coordinator) -> Self {
        WorkerApi { coordinator }
    }
}

/// Logs and counts an error on its way out, then converts it.
fn reject(coordinator: &Coordinator, error: Error) -> Status {
    coordinator
        .metrics()
        .request_errors
        .with_label_values(&[error.label()])
        .inc();
    if matches!(error, Error::Redis(_) | Error::Corrupt(_)) {
        warn!(%error, kind = error.label(), "request failed");
    }
    Status::from(error)
}

// ---- messages -> domain ----------------------------------------------------------------------

/// Reads a task message; a missing task means the default indexing prompt.
pub fn task_from_pb(task: Option<pb::Task>) -> Result<Task, Error> {
    use pb::task::Kind;
    Ok(match task.and_then(|task| task.kind) {
        None => Task::Index { prompt: None },
        Some(Kind::Index(index)) => Task::Index {
            prompt: (!index.prompt.trim().is_empty()).then_some(index.prompt),
        },
        Some(Kind::Questions(questions)) => Task::Questions {
            questions: questions.questions,
        },
        Some(Kind::Moderation(moderation)) => Task::Moderation {
            policy_yaml: moderation.policy_yaml,
        },
    })
}

/// Reads sampling settings; zero fields take their defaults.
pub fn sampling_from_pb(sampling: Option<pb::Sampling>) -> Sampling {
    let defaults = Sampling::default();
    let Some(sampling) = sampling else {
        return defaults;
    };
    Sampling {
        fps: if sampling.fps == 0.0 {
            defaults.fps
        } else {
            sampling.fps
        },
        max_frames: if sampling.max_frames == 0 {
            defaults.max_frames
        } else {
            sampling.max_frames
        },
        segment_secs: if sampling.segment_secs == 0.0 {
            defaults.segment_secs
        } else {
            sampling.segment_secs
        },
    }
}

/// Reads a submission.
pub fn spec_from_pb(request: pb::SubmitPassRequest) -> Result<PassSpec, Error> {
    Ok(PassSpec {
        source: request.source.trim().to_owned(),
        destination: request.destination.trim().to_owned(),
        task: task_from_pb(request.task)?,
        sampling: sampling_from_pb(request.sampling),
        idempotency_key: (!request.idempotency_key.is_empty()).then_some(request.idempotency_key),
        max_attempts: if request.max_attempts == 0 {
            DEFAULT_MAX_ATTEMPTS
        } else {
            request.max_attempts
        },
    })
}

fn job_state_filter(raw: i32) -> Result<Option<JobState>, Error> {
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

// ---- domain -> messages ----------------------------------------------------------------------

/// Writes a task message.
pub fn task_to_pb(task: &Task) -> pb::Task {
    use pb::task::Kind;
    let kind = match task {
        Task::Index { prompt } => Kind::Index(pb::IndexTask {
            prompt: prompt.clone().unwrap_or_default(),
        }),
        Task::Questions { questions } => Kind::Questions(pb::QuestionsTask {
            questions: questions.clone(),
        }),
        Task::Moderation { policy_yaml } => Kind::Moderation(pb::ModerationTask {
            policy_yaml: policy_yaml.clone(),
        }),
    };
    pb::Task { kind: Some(kind) }
}

/// Writes sampling settings.
pub fn sampling_to_pb(sampling: &Sampling) -> pb::Sampling {
    pb::Sampling {
        fps: sampling.fps,
        max_frames: sampling.max_frames,
        segment_secs: sampling.segment_secs,
    }
}

/// Writes a job state.
pub fn job_state_to_pb(state: JobState) -> pb::JobState {
    match state {
        JobState::Pending => pb::JobState::Pending,
        JobState::Leased => pb::JobState::Leased,
        JobState::Done => pb::JobState::Done,
        JobState::Failed => pb::JobState::Failed,
        JobState::Dead => pb::JobState::Dead,
        JobState::Cancelled => pb::JobState::Cancelled,
    }
}

/// Writes a job.
pub fn job_to_pb(job: &Job) -> pb::Job {
    pb::Job {
        job_id: job.job_id.clone(),
        pass_id: job.pass_id.clone(),
        video_url: job.spec.video_url.clone(),
        start_s: job.spec.start_s,
        end_s: job.spec.end_s,
        state: job_state_to_pb(job.state) as i32,
        attempt: job.attempt,
        last_error: job.last_error.clone().unwrap_or_default(),
        size_bytes: job.spec.size_bytes,
        etag: job.spec.etag.clone().unwrap_or_default(),
        probe: job.spec.probe,
        result_url: job.result_url.clone().unwrap_or_default(),
    }
}

fn pass_state_to_pb(state: PassState) -> pb::PassState {
    match state {
        PassState::Planning => pb::PassState::Planning,
        PassState::Running => pb::PassState::Running,
        PassState::Finished => pb::PassState::Finished,
        PassState::Cancelled => pb::PassState::Cancelled,
        PassState::Failed => pb::PassState::Failed,
    }
}

/// Writes a pass status.
pub fn status_to_pb(status: &PassStatus) -> pb::PassStatus {
    let counts = &status.counts;
    pb::PassStatus {
        pass_id: status.pass_id.clone(),
        state: pass_state_to_pb(status.state) as i32,
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
        recent_errors: status
            .recent_errors
            .iter()
            .map(|error| pb::ErrorReport {
                job_id: error.job_id.clone(),
                video_url: error.video_url.clone(),
                reason: error.reason.clone(),
                at_ms: error.at_ms,
            })
            .collect(),
        created_at_ms: status.created_at_ms,
        planning_error: status.planning_error.clone().unwrap_or_default(),
        videos: status.videos,
        task: Some(task_to_pb(&status.spec.task)),
        sampling: Some(sampling_to_pb(&status.spec.sampling)),
        idempotency_key: status.spec.idempotency_key.clone().unwrap_or_default(),
        max_attempts: status.spec.max_attempts,
    }
}

/// Reads a pass status (client side).
pub fn status_from_pb(status: pb::PassStatus) -> Result<PassStatus, Error> {
    let state = match pb::PassState::try_from(status.state) {
        Ok(pb::PassState::Planning) => PassState::Planning,
        Ok(pb::PassState::Running) => PassState::Running,
        Ok(pb::PassState::Finished) => PassState::Finished,
        Ok(pb::PassState::Cancelled) => PassState::Cancelled,
        Ok(pb::PassState::Failed) => PassState::Failed,
        _ => {
            return Err(Error::Corrupt(format!(
                "unknown pass state {}",
                status.state
            )));
        }
    };
    let counts = status.counts.unwrap_or_default();
    Ok(PassStatus {
        pass_id: status.pass_id,
        spec: PassSpec {
            source: status.source,
            destination: status.destination,
            task: task_from_pb(status.task)?,
            sampling: sampling_from_pb(status.sampling),
            idempotency_key: (!status.idempotency_key.is_empty()).then_some(status.idempotency_key),
            max_attempts: status.max_attempts,
        },
        state,
        counts: domain::JobCounts {
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
        recent_errors: status
            .recent_errors
            .into_iter()
            .map(|error| ErrorReport {
                job_id: error.job_id,
                video_url: error.video_url,
                reason: error.reason,
                at_ms: error.at_ms,
            })
            .collect(),
        created_at_ms: status.created_at_ms,
        planning_error: (!status.planning_error.is_empty()).then_some(status.planning_error),
    })
}

fn leased_to_pb(leased: &LeasedJob) -> pb::LeasedJob {
    pb::LeasedJob {
        job: Some(job_to_pb(&leased.job)),
        lease_id: leased.lease_id.clone(),
        deadline_ms: leased.deadline_ms,
        task: Some(task_to_pb(&leased.pass.task)),
        sampling: Some(sampling_to_pb(&leased.pass.sampling)),
        destination: leased.pass.destination.clone(),
    }
}

fn optional_token(token: &str) -> Option<&str> {
    (!token.is_empty()).then_some(token)
}

fn clamp_u64_to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[tonic::async_trait]
impl pb::pass_service_server::PassService for PassApi {
    async fn submit_pass(
        &self,
        request: Request<pb::SubmitPassRequest>,
    ) -> Result<Response<pb::SubmitPassResponse>, Status> {
        let result = async {
            let spec = spec_from_pb(request.into_inner())?;
            self.coordinator.submit(spec).await
        }
        .await;
        let created = result.map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::SubmitPassResponse {
            pass_id: created.pass_id,
            existing: created.existing,
        }))
    }

    async fn get_pass(
        &self,
        request: Request<pb::GetPassRequest>,
    ) -> Result<Response<pb::PassStatus>, Status> {
        let status = self
            .coordinator
            .status(&request.into_inner().pass_id)
            .await
            .map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(status_to_pb(&status)))
    }

    async fn list_passes(
        &self,
        request: Request<pb::ListPassesRequest>,
    ) -> Result<Response<pb::ListPassesResponse>, Status> {
        let request = request.into_inner();
        let page = self
            .coordinator
            .list_passes(request.page_size, optional_token(&request.page_token))
            .await
            .map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::ListPassesResponse {
            passes: page.items.iter().map(status_to_pb).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let result = async {
            let state = job_state_filter(request.state)?;
            self.coordinator
                .list_jobs(
                    &request.pass_id,
                    state,
                    request.page_size,
                    optional_token(&request.page_token),
                )
                .await
        }
        .await;
        let page = result.map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::ListJobsResponse {
            jobs: page.items.iter().map(job_to_pb).collect(),
            next_page_token: page.next.unwrap_or_default(),
        }))
    }

    async fn cancel_pass(
        &self,
        request: Request<pb::CancelPassRequest>,
    ) -> Result<Response<pb::CancelPassResponse>, Status> {
        let status = self
            .coordinator
            .cancel(&request.into_inner().pass_id)
            .await
            .map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::CancelPassResponse {
            status: Some(status_to_pb(&status)),
        }))
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    async fn lease_jobs(
        &self,
        request: Request<pb::LeaseJobsRequest>,
    ) -> Result<Response<pb::LeaseJobsResponse>, Status> {
        let request = request.into_inner();
        let leased = self
            .coordinator
            .lease(
                &request.worker_id,
                request.max_jobs,
                clamp_u64_to_i64(request.lease_ms),
            )
            .await
            .map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::LeaseJobsResponse {
            jobs: leased.iter().map(leased_to_pb).collect(),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let beat = self
            .coordinator
            .heartbeat(
                &request.job_id,
                &request.lease_id,
                clamp_u64_to_i64(request.extend_ms),
            )
            .await
            .map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::HeartbeatResponse {
            deadline_ms: beat.deadline_ms,
            cancelled: beat.cancelled,
        }))
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let request = request.into_inner();
        let completion = Completion {
            result_url: (!request.result_url.is_empty()).then_some(request.result_url),
            segments: request
                .segments
                .iter()
                .map(|segment| Segment {
                    start_s: segment.start_s,
                    end_s: segment.end_s,
                })
                .collect(),
        };
        self.coordinator
            .complete(&request.job_id, &request.lease_id, &completion)
            .await
            .map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::CompleteJobResponse {}))
    }

    async fn fail_job(
        &self,
        request: Request<pb::FailJobRequest>,
    ) -> Result<Response<pb::FailJobResponse>, Status> {
        let request = request.into_inner();
        let outcome = self
            .coordinator
            .fail(
                &request.job_id,
                &request.lease_id,
                &request.reason,
                request.retryable,
            )
            .await
            .map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::FailJobResponse {
            state: job_state_to_pb(outcome.state) as i32,
            retry_at_ms: outcome.retry_at_ms,
        }))
    }

    async fn list_lease_holders(
        &self,
        _request: Request<pb::ListLeaseHoldersRequest>,
    ) -> Result<Response<pb::ListLeaseHoldersResponse>, Status> {
        let worker_ids = self
            .coordinator
            .lease_holders()
            .await
            .map_err(|error| reject(&self.coordinator, error))?;
        Ok(Response::new(pb::ListLeaseHoldersResponse { worker_ids }))
    }
}
