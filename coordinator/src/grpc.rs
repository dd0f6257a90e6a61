//! The gRPC edge. Every handler goes through [`handle`]: it opens an `rpc` span named for the
//! method, runs the call, counts a failure by method and error label, logs server faults, and
//! converts the result; messages are converted by the `From`/`TryFrom` impls in
//! `vidx_core::wire`, and errors to status codes by the one mapping in `vidx_core::error`.

use std::future::Future;

use tonic::{Request, Response, Status};
use tracing::{Instrument, info_span, warn};

use crate::error::Error;
use crate::service::Coordinator;
use vidx_core::domain::{Completion, PassSpec};
use vidx_core::wire::{failure_kind, job_state_filter};
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

/// Runs one call of `method` in its span, counts and logs a failure, and converts the outcome
/// with `reply`.
async fn handle<T, R>(
    coordinator: &Coordinator,
    method: &'static str,
    call: impl Future<Output = Result<T, Error>>,
    reply: impl FnOnce(T) -> R,
) -> Result<Response<R>, Status> {
    let span = info_span!("rpc", method);
    match call.instrument(span.clone()).await {
        Ok(value) => Ok(Response::new(reply(value))),
        Err(error) => {
            coordinator
                .metrics()
                .request_errors
                .with_label_values(&[method, error.label()])
                .inc();
            if error.is_server_fault() {
                span.in_scope(|| warn!(%error, kind = error.label(), "request failed"));
            }
            Err(Status::from(error))
        }
    }
}

fn optional_token(token: &str) -> Option<&str> {
    (!token.is_empty()).then_some(token)
}

/// Lease lengths arrive as `u64` milliseconds; the store keeps `i64`. Anything past `i64::MAX`
/// (292 million years) is refused rather than cut down.
fn lease_ms(what: &str, value: u64) -> Result<i64, Error> {
    i64::try_from(value).map_err(|_| Error::invalid(format!("{what} {value} ms is too long")))
}

#[tonic::async_trait]
impl pb::pass_service_server::PassService for PassApi {
    async fn submit_pass(
        &self,
        request: Request<pb::SubmitPassRequest>,
    ) -> Result<Response<pb::SubmitPassResponse>, Status> {
        let spec = PassSpec::from(request.into_inner());
        handle(
            &self.coordinator,
            "SubmitPass",
            self.coordinator.submit(spec),
            |created| pb::SubmitPassResponse {
                pass_id: created.pass_id,
                existing: created.existing,
            },
        )
        .await
    }

    async fn get_pass(
        &self,
        request: Request<pb::GetPassRequest>,
    ) -> Result<Response<pb::PassStatus>, Status> {
        let pass_id = request.into_inner().pass_id;
        handle(
            &self.coordinator,
            "GetPass",
            self.coordinator.status(&pass_id),
            |status| pb::PassStatus::from(&status),
        )
        .await
    }

    async fn list_passes(
        &self,
        request: Request<pb::ListPassesRequest>,
    ) -> Result<Response<pb::ListPassesResponse>, Status> {
        let request = request.into_inner();
        handle(
            &self.coordinator,
            "ListPasses",
            self.coordinator
                .list_passes(request.page_size, optional_token(&request.page_token)),
            |page| pb::ListPassesResponse {
                passes: page.items.iter().map(pb::PassStatus::from).collect(),
                next_page_token: page.next.unwrap_or_default(),
            },
        )
        .await
    }

    async fn list_jobs(
        &self,
        request: Request<pb::ListJobsRequest>,
    ) -> Result<Response<pb::ListJobsResponse>, Status> {
        let request = request.into_inner();
        let call = async {
            let state = job_state_filter(request.state)?;
            self.coordinator
                .list_jobs(
                    &request.pass_id,
                    state,
                    request.page_size,
                    optional_token(&request.page_token),
                )
                .await
        };
        handle(&self.coordinator, "ListJobs", call, |page| {
            pb::ListJobsResponse {
                jobs: page.items.iter().map(pb::Job::from).collect(),
                next_page_token: page.next.unwrap_or_default(),
            }
        })
        .await
    }

    async fn cancel_pass(
        &self,
        request: Request<pb::CancelPassRequest>,
    ) -> Result<Response<pb::CancelPassResponse>, Status> {
        let pass_id = request.into_inner().pass_id;
        handle(
            &self.coordinator,
            "CancelPass",
            self.coordinator.cancel(&pass_id),
            |status| pb::CancelPassResponse {
                status: Some(pb::PassStatus::from(&status)),
            },
        )
        .await
    }

    async fn claim_finalization(
        &self,
        request: Request<pb::ClaimFinalizationRequest>,
    ) -> Result<Response<pb::ClaimFinalizationResponse>, Status> {
        let request = request.into_inner();
        let call = async {
            let ttl = lease_ms("finalization claim", request.ttl_ms)?;
            self.coordinator
                .claim_finalization(&request.pass_id, &request.holder, request.again, ttl)
                .await
        };
        handle(&self.coordinator, "ClaimFinalization", call, |claim| {
            pb::ClaimFinalizationResponse {
                claim: pb::FinalizationClaim::from(claim) as i32,
            }
        })
        .await
    }

    async fn finish_finalization(
        &self,
        request: Request<pb::FinishFinalizationRequest>,
    ) -> Result<Response<pb::FinishFinalizationResponse>, Status> {
        let pass_id = request.into_inner().pass_id;
        handle(
            &self.coordinator,
            "FinishFinalization",
            self.coordinator.finish_finalization(&pass_id),
            |()| pb::FinishFinalizationResponse {},
        )
        .await
    }
}

#[tonic::async_trait]
impl pb::worker_service_server::WorkerService for WorkerApi {
    async fn lease_jobs(
        &self,
        request: Request<pb::LeaseJobsRequest>,
    ) -> Result<Response<pb::LeaseJobsResponse>, Status> {
        let request = request.into_inner();
        let call = async {
            let lease = lease_ms("lease", request.lease_ms)?;
            self.coordinator
                .lease(&request.worker_id, request.max_jobs, lease)
                .await
        };
        handle(&self.coordinator, "LeaseJobs", call, |leased| {
            pb::LeaseJobsResponse {
                jobs: leased.iter().map(pb::LeasedJob::from).collect(),
            }
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let request = request.into_inner();
        let call = async {
            let extend = lease_ms("lease extension", request.extend_ms)?;
            self.coordinator
                .heartbeat(&request.job_id, &request.lease_id, extend)
                .await
        };
        handle(&self.coordinator, "Heartbeat", call, |beat| {
            pb::HeartbeatResponse {
                deadline_ms: beat.deadline_ms,
                cancelled: beat.cancelled,
            }
        })
        .await
    }

    async fn complete_job(
        &self,
        request: Request<pb::CompleteJobRequest>,
    ) -> Result<Response<pb::CompleteJobResponse>, Status> {
        let request = request.into_inner();
        let completion = Completion::from(&request);
        handle(
            &self.coordinator,
            "CompleteJob",
            self.coordinator
                .complete(&request.job_id, &request.lease_id, &completion),
            |_| pb::CompleteJobResponse {},
        )
        .await
    }

    async fn fail_job(
        &self,
        request: Request<pb::FailJobRequest>,
    ) -> Result<Response<pb::FailJobResponse>, Status> {
        let request = request.into_inner();
        let call = async {
            let kind = failure_kind(&request)?;
            self.coordinator
                .fail(&request.job_id, &request.lease_id, &request.reason, kind)
                .await
        };
        handle(&self.coordinator, "FailJob", call, |outcome| {
            pb::FailJobResponse {
                state: pb::JobState::from(outcome.state) as i32,
                retry_at_ms: outcome.retry_at_ms,
            }
        })
        .await
    }

    async fn release_job(
        &self,
        request: Request<pb::ReleaseJobRequest>,
    ) -> Result<Response<pb::ReleaseJobResponse>, Status> {
        let request = request.into_inner();
        handle(
            &self.coordinator,
            "ReleaseJob",
            self.coordinator
                .release(&request.job_id, &request.lease_id, &request.reason),
            |state| pb::ReleaseJobResponse {
                state: pb::JobState::from(state) as i32,
            },
        )
        .await
    }

    async fn count_segment(
        &self,
        request: Request<pb::CountSegmentRequest>,
    ) -> Result<Response<pb::CountSegmentResponse>, Status> {
        let request = request.into_inner();
        handle(
            &self.coordinator,
            "CountSegment",
            self.coordinator.count_segment(
                &request.job_id,
                &request.lease_id,
                &request.video_key,
                request.segment_index,
                request.segment_count,
            ),
            |assemble| pb::CountSegmentResponse { assemble },
        )
        .await
    }

    async fn list_lease_holders(
        &self,
        _request: Request<pb::ListLeaseHoldersRequest>,
    ) -> Result<Response<pb::ListLeaseHoldersResponse>, Status> {
        handle(
            &self.coordinator,
            "ListLeaseHolders",
            self.coordinator.lease_holders(),
            |worker_ids| pb::ListLeaseHoldersResponse { worker_ids },
        )
        .await
    }
}
