//! The one client for both coordinator services, used by the CLI, the autoscaler and workers.
//! It converts messages into domain types through [`wire`](crate::wire), and statuses into the
//! same [`Error`] variants the in-process coordinator returns, so callers never see generated
//! code or status codes. Every method takes `&self`: clones share one HTTP/2 connection.

use std::path::PathBuf;
use std::time::Duration;

use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::auth::{AttachToken, Token};
use crate::domain::{
    Completion, Created, FailOutcome, FailureKind, FinalizeClaim, Heartbeat, Job, JobState,
    LeasedJob, Page, PassSpec, PassStatus, collect_pages,
};
use crate::error::{Error, Result};
use crate::wire::{fail_request, job_state_filter_to_pb};
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
    pub async fn submit(&self, spec: &PassSpec) -> Result<Created> {
        let response = self
            .passes
            .clone()
            .submit_pass(pb::SubmitPassRequest::from(spec))
            .await?;
        Ok(Created::from(response.into_inner()))
    }

    /// A pass's status.
    pub async fn status(&self, pass_id: &str) -> Result<PassStatus> {
        let status = self
            .passes
            .clone()
            .get_pass(pb::GetPassRequest {
                pass_id: pass_id.to_owned(),
            })
            .await?;
        PassStatus::try_from(status.into_inner())
    }

    /// The workers holding a lease now, sorted, each once.
    pub async fn lease_holders(&self) -> Result<Vec<String>> {
        Ok(self
            .workers
            .clone()
            .list_lease_holders(pb::ListLeaseHoldersRequest {})
            .await?
            .into_inner()
            .worker_ids)
    }

    /// A page of passes, newest first.
    pub async fn list_passes(
        &self,
        page_size: u32,
        token: Option<String>,
    ) -> Result<Page<PassStatus>> {
        let response = self
            .passes
            .clone()
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
                .map(PassStatus::try_from)
                .collect::<Result<_>>()?,
            next: (!response.next_page_token.is_empty()).then_some(response.next_page_token),
        })
    }

    /// A page of a pass's jobs, optionally only those in `state`.
    pub async fn list_jobs(
        &self,
        pass_id: &str,
        state: Option<JobState>,
        page_size: u32,
        token: Option<String>,
    ) -> Result<Page<Job>> {
        let response = self
            .passes
            .clone()
            .list_jobs(pb::ListJobsRequest {
                pass_id: pass_id.to_owned(),
                state: job_state_filter_to_pb(state),
                page_size,
                page_token: token.unwrap_or_default(),
            })
            .await?
            .into_inner();
        Ok(Page {
            items: response
                .jobs
                .into_iter()
                .map(Job::try_from)
                .collect::<Result<_>>()?,
            next: (!response.next_page_token.is_empty()).then_some(response.next_page_token),
        })
    }

    /// Up to `limit` of a pass's jobs, walking the pages.
    pub async fn jobs(
        &self,
        pass_id: &str,
        state: Option<JobState>,
        limit: usize,
    ) -> Result<Vec<Job>> {
        collect_pages(limit, |token, page_size| {
            self.list_jobs(pass_id, state, page_size, token)
        })
        .await
    }

    /// Cancels a pass.
    pub async fn cancel(&self, pass_id: &str) -> Result<PassStatus> {
        let response = self
            .passes
            .clone()
            .cancel_pass(pb::CancelPassRequest {
                pass_id: pass_id.to_owned(),
            })
            .await?
            .into_inner();
        PassStatus::try_from(
            response
                .status
                .ok_or_else(|| Error::Corrupt("cancel reply has no status".into()))?,
        )
    }

    /// Takes (or renews) the right to finalize a pass for `ttl_ms`; `again` finalizes a
    /// finalized pass again.
    pub async fn claim_finalization(
        &self,
        pass_id: &str,
        holder: &str,
        again: bool,
        ttl_ms: u64,
    ) -> Result<FinalizeClaim> {
        let response = self
            .passes
            .clone()
            .claim_finalization(pb::ClaimFinalizationRequest {
                pass_id: pass_id.to_owned(),
                holder: holder.to_owned(),
                ttl_ms,
                again,
            })
            .await?
            .into_inner();
        FinalizeClaim::try_from(response.claim)
    }

    /// Records a pass finalized.
    pub async fn finish_finalization(&self, pass_id: &str) -> Result<()> {
        self.passes
            .clone()
            .finish_finalization(pb::FinishFinalizationRequest {
                pass_id: pass_id.to_owned(),
            })
            .await?;
        Ok(())
    }

    /// Leases up to `max_jobs` jobs for `lease_ms` milliseconds (0: the coordinator's default).
    pub async fn lease(
        &self,
        worker_id: &str,
        max_jobs: u32,
        lease_ms: u64,
    ) -> Result<Vec<LeasedJob>> {
        let response = self
            .workers
            .clone()
            .lease_jobs(pb::LeaseJobsRequest {
                worker_id: worker_id.to_owned(),
                max_jobs,
                lease_ms,
            })
            .await?
            .into_inner();
        response.jobs.into_iter().map(LeasedJob::try_from).collect()
    }

    /// Extends a lease.
    pub async fn heartbeat(
        &self,
        job_id: &str,
        lease_id: &str,
        extend_ms: u64,
    ) -> Result<Heartbeat> {
        let response = self
            .workers
            .clone()
            .heartbeat(pb::HeartbeatRequest {
                job_id: job_id.to_owned(),
                lease_id: lease_id.to_owned(),
                extend_ms,
            })
            .await?;
        Ok(Heartbeat::from(response.into_inner()))
    }

    /// Reports a job done (or split into `completion.segments`).
    pub async fn complete(
        &self,
        job_id: &str,
        lease_id: &str,
        completion: &Completion,
    ) -> Result<()> {
        self.workers
            .clone()
            .complete_job(pb::CompleteJobRequest {
                job_id: job_id.to_owned(),
                lease_id: lease_id.to_owned(),
                result_url: completion.result_url.clone().unwrap_or_default(),
                segments: completion.segments.iter().map(pb::Segment::from).collect(),
                skipped: completion.skipped,
            })
            .await?;
        Ok(())
    }

    /// Reports a job failed; the coordinator decides from `kind` what becomes of it.
    pub async fn fail(
        &self,
        job_id: &str,
        lease_id: &str,
        reason: &str,
        kind: FailureKind,
    ) -> Result<FailOutcome> {
        let response = self
            .workers
            .clone()
            .fail_job(fail_request(job_id, lease_id, reason, kind))
            .await?
            .into_inner();
        Ok(FailOutcome {
            state: JobState::try_from(response.state)?,
            retry_at_ms: response.retry_at_ms,
        })
    }

    /// Hands a job back unfinished: it is pending again at once without using an attempt (or
    /// cancelled, when its pass was). Returns the job's state after the release.
    pub async fn release(&self, job_id: &str, lease_id: &str, reason: &str) -> Result<JobState> {
        let response = self
            .workers
            .clone()
            .release_job(pb::ReleaseJobRequest {
                job_id: job_id.to_owned(),
                lease_id: lease_id.to_owned(),
                reason: reason.to_owned(),
            })
            .await?
            .into_inner();
        JobState::try_from(response.state)
    }

    /// Counts a segment job's part as written; true when this job assembles the video document.
    pub async fn count_segment(
        &self,
        job_id: &str,
        lease_id: &str,
        video_key: &str,
        segment_index: u32,
        segment_count: u32,
    ) -> Result<bool> {
        let response = self
            .workers
            .clone()
            .count_segment(pb::CountSegmentRequest {
                job_id: job_id.to_owned(),
                lease_id: lease_id.to_owned(),
                video_key: video_key.to_owned(),
                segment_index,
                segment_count,
            })
            .await?
            .into_inner();
        Ok(response.assemble)
    }
}
