//! The one client for both coordinator services, used by the CLI and by workers. It converts
//! messages into domain types, so callers never see generated code.

use std::path::PathBuf;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::{AttachToken, Token};
use crate::domain::{
    Completion, FailOutcome, Heartbeat, Job, JobState, LeasedJob, Page, PassSpec, PassStatus,
};
use crate::error::{Error, Result};
use crate::grpc::{
    job_state_to_pb, sampling_from_pb, sampling_to_pb, status_from_pb, task_from_pb, task_to_pb,
};
use crate::store::Created;
use vidx_proto::v1 as pb;
use vidx_proto::v1::pass_service_client::PassServiceClient;
use vidx_proto::v1::worker_service_client::WorkerServiceClient;

type Authed = InterceptedService<Channel, AttachToken>;

/// Where the coordinator is and how to talk to it.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `http://host:port` or `https://host:port`.
    pub url: String,
    /// Bearer token sent with every call.
    pub token: Option<Token>,
    /// PEM CA certificate to trust for `https`, beyond the system roots.
    pub tls_ca: Option<PathBuf>,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl ClientConfig {
    /// A plain config for `url`.
    pub fn new(url: impl Into<String>, token: Option<Token>) -> Self {
        ClientConfig {
            url: url.into(),
            token,
            tls_ca: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A connection to a coordinator. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct CoordinatorClient {
    passes: PassServiceClient<Authed>,
    workers: WorkerServiceClient<Authed>,
}

impl CoordinatorClient {
    /// Connects, failing within a few seconds when the coordinator cannot be reached.
    pub async fn connect(config: &ClientConfig) -> Result<Self> {
        let mut endpoint = Endpoint::from_shared(config.url.clone())
            .map_err(|error| Error::invalid(format!("coordinator url {:?}: {error}", config.url)))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(config.timeout)
            .tcp_nodelay(true);
        if config.url.starts_with("https://") {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &config.tls_ca {
                let pem = std::fs::read(ca).map_err(|error| {
                    Error::invalid(format!("cannot read {}: {error}", ca.display()))
                })?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            endpoint = endpoint
                .tls_config(tls)
                .map_err(|error| Error::invalid(format!("tls configuration: {error}")))?;
        }
        let channel = endpoint.connect().await.map_err(|error| {
            Error::Transport(format!(
                "cannot reach coordinator at {}: {error}",
                config.url
            ))
        })?;
        let auth = AttachToken::new(config.token.as_ref());
        Ok(CoordinatorClient {
            passes: PassServiceClient::with_interceptor(channel.clone(), auth.clone()),
            workers: WorkerServiceClient::with_interceptor(channel, auth),
        })
    }

    /// Submits a pass.
    pub async fn submit(&mut self, spec: &PassSpec) -> Result<Created> {
        let response = self
            .passes
            .submit_pass(pb::SubmitPassRequest {
                source: spec.source.clone(),
                destination: spec.destination.clone(),
                task: Some(task_to_pb(&spec.task)),
                sampling: Some(sampling_to_pb(&spec.sampling)),
                idempotency_key: spec.idempotency_key.clone().unwrap_or_default(),
                max_attempts: spec.max_attempts,
            })
            .await?
            .into_inner();
        Ok(Created {
            pass_id: response.pass_id,
            existing: response.existing,
        })
    }

    /// A pass's status.
    pub async fn status(&mut self, pass_id: &str) -> Result<PassStatus> {
        let status = self
            .passes
            .get_pass(pb::GetPassRequest {
                pass_id: pass_id.to_owned(),
            })
            .await?
            .into_inner();
        status_from_pb(status)
    }

    /// A page of passes, newest first.
    pub async fn list_passes(
        &mut self,
        page_size: u32,
        token: Option<String>,
    ) -> Result<Page<PassStatus>> {
        let response = self
            .passes
            .list_passes(pb::ListPassesRequest {
                page_size,
                page_token: token.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(Page {
            items: response
                .passes
                .into_iter()
                .map(status_from_pb)
                .collect::<Result<_>>()?,
            next: (!response.next_page_token.is_empty()).then_some(response.next_page_token),
        })
    }

    /// A page of a pass's jobs.
    pub async fn list_jobs(
        &mut self,
        pass_id: &str,
        state: Option<JobState>,
        page_size: u32,
        token: Option<String>,
    ) -> Result<Page<Job>> {
        let response = self
            .passes
            .list_jobs(pb::ListJobsRequest {
                pass_id: pass_id.to_owned(),
                state: state.map_or(pb::JobState::Unspecified, job_state_to_pb) as i32,
                page_size,
                page_token: token.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(Page {
            items: response
                .jobs
                .into_iter()
                .map(job_from_pb)
                .collect::<Result<_>>()?,
            next: (!response.next_page_token.is_empty()).then_some(response.next_page_token),
        })
    }

    /// Cancels a pass.
    pub async fn cancel(&mut self, pass_id: &str) -> Result<PassStatus> {
        let response = self
            .passes
            .cancel_pass(pb::CancelPassRequest {
                pass_id: pass_id.to_owned(),
            })
            .await?
            .into_inner();
        status_from_pb(
            response
                .status
                .ok_or_else(|| Error::Corrupt("cancel reply has no status".into()))?,
        )
    }

    /// Leases up to `max_jobs` jobs for `lease_ms` milliseconds (0: the coordinator's default).
    pub async fn lease(
        &mut self,
        worker_id: &str,
        max_jobs: u32,
        lease_ms: u64,
    ) -> Result<Vec<LeasedJob>> {
        let response = self
            .workers
            .lease_jobs(pb::LeaseJobsRequest {
                worker_id: worker_id.to_owned(),
                max_jobs,
                lease_ms,
            })
            .await?
            .into_inner();
        response.jobs.into_iter().map(leased_from_pb).collect()
    }

    /// Extends a lease.
    pub async fn heartbeat(
        &mut self,
        job_id: &str,
        lease_id: &str,
        extend_ms: u64,
    ) -> Result<Heartbeat> {
        let response = self
            .workers
            .heartbeat(pb::HeartbeatRequest {
                job_id: job_id.to_owned(),
                lease_id: lease_id.to_owned(),
                extend_ms,
            })
            .await?
            .into_inner();
        Ok(Heartbeat {
            deadline_ms: response.deadline_ms,
            cancelled: response.cancelled,
        })
    }

    /// Reports a job done.
    pub async fn complete(
        &mut self,
        job_id: &str,
        lease_id: &str,
        completion: &Completion,
    ) -> Result<()> {
        self.workers
            .complete_job(pb::CompleteJobRequest {
                job_id: job_id.to_owned(),
                lease_id: lease_id.to_owned(),
                result_url: completion.result_url.clone().unwrap_or_default(),
                segments: completion
                    .segments
                    .iter()
                    .map(|segment| pb::Segment {
                        start_s: segment.start_s,
                        end_s: segment.end_s,
                    })
                    .collect(),
            })
            .await?;
        Ok(())
    }

    /// Reports a job failed.
    pub async fn fail(
        &mut self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        retryable: bool,
    ) -> Result<FailOutcome> {
        let response = self
            .workers
            .fail_job(pb::FailJobRequest {
                job_id: job_id.to_owned(),
                lease_id: lease_id.to_owned(),
                reason: reason.to_owned(),
                retryable,
            })
            .await?
            .into_inner();
        let state = job_state_from_pb(response.state)?;
        Ok(FailOutcome {
            state,
            retry_at_ms: response.retry_at_ms,
        })
    }

    /// The workers holding a lease now, sorted, each once.
    pub async fn lease_holders(&mut self) -> Result<Vec<String>> {
        Ok(self
            .workers
            .list_lease_holders(pb::ListLeaseHoldersRequest {})
            .await?
            .into_inner()
            .worker_ids)
    }
}

fn job_state_from_pb(raw: i32) -> Result<JobState> {
    Ok(match pb::JobState::try_from(raw) {
        Ok(pb::JobState::Pending) => JobState::Pending,
        Ok(pb::JobState::Leased) => JobState::Leased,
        Ok(pb::JobState::Done) => JobState::Done,
        Ok(pb::JobState::Failed) => JobState::Failed,
        Ok(pb::JobState::Dead) => JobState::Dead,
        Ok(pb::JobState::Cancelled) => JobState::Cancelled,
        _ => return Err(Error::Corrupt(format!("unknown job state {raw}"))),
    })
}

fn job_from_pb(job: pb::Job) -> Result<Job> {
    Ok(Job {
        state: job_state_from_pb(job.state)?,
        job_id: job.job_id,
        pass_id: job.pass_id,
        spec: crate::domain::NewJob {
            video_url: job.video_url,
            start_s: job.start_s,
            end_s: job.end_s,
            size_bytes: job.size_bytes,
            etag: (!job.etag.is_empty()).then_some(job.etag),
            probe: job.probe,
        },
        attempt: job.attempt,
        last_error: (!job.last_error.is_empty()).then_some(job.last_error),
        result_url: (!job.result_url.is_empty()).then_some(job.result_url),
    })
}

fn leased_from_pb(leased: pb::LeasedJob) -> Result<LeasedJob> {
    let job = job_from_pb(
        leased
            .job
            .ok_or_else(|| Error::Corrupt("leased job has no job".into()))?,
    )?;
    Ok(LeasedJob {
        job,
        lease_id: leased.lease_id,
        deadline_ms: leased.deadline_ms,
        pass: PassSpec {
            source: String::new(),
            destination: leased.destination,
            task: task_from_pb(leased.task)?,
            sampling: sampling_from_pb(leased.sampling),
            idempotency_key: None,
            max_attempts: crate::domain::DEFAULT_MAX_ATTEMPTS,
        },
    })
}
