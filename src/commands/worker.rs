//! `vidx worker`, `vidx index` (the embedded default: a whole pass in this process) and
//! `vidx finalize` (a pass's manifest and corpus tables).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::sync::watch;
use tracing::info;
use vidx_coordinator::access::AccessPolicy;
use vidx_coordinator::domain::{Job, JobState, PassState, PassStatus};
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{MemoryStore, RetryPolicy};
use vidx_model::generation::GenerationParams;
use vidx_model::loading::DeviceKind;
use vidx_model::{LoadOptions, OpenO3Video};
use vidx_worker::evidence::store::OutcomeStatus;
use vidx_worker::evidence::{EvidenceIndex, ModelInfo, PassManifest};
use vidx_worker::pipeline::{Pipeline, evidence_task};
use vidx_worker::runtime::{self, WorkerConfig};

use crate::cli::{FinalizeArgs, IndexArgs, ModelArgs, WorkerArgs};

impl ModelArgs {
    /// What the evidence records about the model.
    pub fn info(&self) -> ModelInfo {
        let id = self.model_id.clone().unwrap_or_else(|| {
            self.model.file_name().map_or_else(
                || "model".into(),
                |name| name.to_string_lossy().into_owned(),
            )
        });
        ModelInfo {
            id,
            revision: self.model_revision.clone(),
        }
    }

    /// Loads the model (memory-mapped weights) on a blocking thread.
    pub async fn load(&self) -> Result<OpenO3Video> {
        if self.min_pixels == 0 || self.max_pixels < self.min_pixels {
            bail!("pixel bounds must satisfy 0 < min <= max");
        }
        let dir = self.model.clone();
        let (min_pixels, max_pixels) = (self.min_pixels, self.max_pixels);
        let options = LoadOptions {
            device: self.device.unwrap_or(if cfg!(feature = "cuda") {
                DeviceKind::Cuda(0)
            } else {
                DeviceKind::Cpu
            }),
            ..LoadOptions::default()
        };
        tokio::task::spawn_blocking(move || {
            let mut model = OpenO3Video::load(&dir, &options)?;
            model.set_pixel_bounds(min_pixels, max_pixels);
            Ok::<_, vidx_model::Error>(model)
        })
        .await?
        .with_context(|| format!("cannot load the model from {}", self.model.display()))
    }

    /// Loads the model and builds the pipeline that processes jobs with it.
    pub async fn pipeline(&self) -> Result<Pipeline> {
        let model = self.load().await?;
        let mut generation = GenerationParams::open_o3();
        generation.max_new_tokens = self.max_new_tokens;
        Ok(Pipeline::new(
            Arc::new(model),
            self.info(),
            generation,
            tokio::runtime::Handle::current(),
        ))
    }
}

/// `vidx worker`: serves a coordinator until SIGTERM (or, with `--exit-when-idle`, no work).
pub async fn worker(
    args: WorkerArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let pipeline = args.model.pipeline().await?;
    let client = args.client.connect().await?;
    let config = WorkerConfig {
        worker_id: args
            .worker_id
            .unwrap_or_else(|| format!("worker-{}", std::process::id())),
        lease: Duration::from_secs(args.lease_secs.clamp(5, 3_600)),
        exit_when_idle: args.exit_when_idle,
        ..WorkerConfig::default()
    };
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop.send(true);
    });
    let tally = runtime::run(Arc::new(client), Arc::new(pipeline), config, stopped).await?;
    info!(
        done = tally.done,
        split = tally.split,
        failed = tally.failed,
        dropped = tally.dropped,
        "worker stopped"
    );
    Ok(())
}

fn is_over(state: PassState) -> bool {
    matches!(
        state,
        PassState::Finished | PassState::Cancelled | PassState::Failed
    )
}

/// `vidx index`: plans, processes and finalizes a pass in this process.
pub async fn index(args: IndexArgs) -> Result<()> {
    let spec = args.pass.spec()?;
    // Retries come quickly in a local run; a remote store's hiccup is still given a moment.
    let retry = RetryPolicy {
        base_backoff_ms: 500,
        max_backoff_ms: 5_000,
    };
    // The embedded coordinator reads and writes what this command was given, and no more (a
    // manifest's entries: next to it, or under an --allow-prefix).
    let mut allowed = args.allow_prefix.clone();
    allowed.extend(AccessPolicy::for_own_arguments(&spec)?.prefixes());
    let coordinator = Coordinator::new(Arc::new(MemoryStore::new(retry)), Metrics::new())
        .with_access(AccessPolicy::from_prefixes(&allowed)?);
    let (stop, stopped) = watch::channel(false);
    let planner = tokio::spawn(vidx_coordinator::planner::run(
        Arc::clone(coordinator.store()),
        "embedded".into(),
        coordinator.access().clone(),
        coordinator.planner_wake(),
        stopped.clone(),
    ));
    let pipeline = Arc::new(args.model.pipeline().await?);
    let pass_id = coordinator.submit(spec).await?.pass_id;
    info!(%pass_id, "pass submitted");
    let config = WorkerConfig {
        worker_id: "embedded".into(),
        exit_when_idle: true,
        ..WorkerConfig::default()
    };
    let started = Instant::now();
    let status = loop {
        let status = coordinator.status(&pass_id).await?;
        if is_over(status.state) {
            break status;
        }
        if status.state == PassState::Running {
            runtime::run(
                Arc::new(coordinator.clone()),
                pipeline.clone(),
                config.clone(),
                stopped.clone(),
            )
            .await?;
        }
        // Waiting for planning, or for a retry's backoff.
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(7 * 24 * 3600) {
            bail!("pass {pass_id} did not finish within a week");
        }
    };
    let _ = stop.send(true);
    let _ = planner.await;
    if status.state == PassState::Failed {
        bail!("pass failed: {}", status.planning_error.unwrap_or_default());
    }
    let jobs = all_jobs_local(&coordinator, &pass_id).await?;
    let manifest = finalize_pass(&status, &jobs, args.model.info()).await?;
    println!(
        "pass {pass_id}: {} videos, {} jobs done, {} dead; {} indexed, {} failed; index at {}",
        status.videos,
        status.counts.done,
        status.counts.dead,
        manifest.indexed,
        manifest.failed,
        status.spec.destination
    );
    Ok(())
}

async fn all_jobs_local(coordinator: &Coordinator, pass_id: &str) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    let mut token = None;
    loop {
        let page = coordinator
            .list_jobs(pass_id, None, 1_000, token.as_deref())
            .await?;
        jobs.extend(page.items);
        match page.next {
            Some(next) => token = Some(next),
            None => return Ok(jobs),
        }
    }
}

/// Writes the manifest (every video's outcome, failures with their reasons) and the corpus tables.
pub async fn finalize_pass(
    status: &PassStatus,
    jobs: &[Job],
    model: ModelInfo,
) -> Result<PassManifest> {
    let task = evidence_task(&status.spec.task).context("the pass's task")?;
    let index = EvidenceIndex::from_url(&status.spec.destination)?;
    let mut manifest = PassManifest::new(status.pass_id.clone(), model, &task);
    for job in jobs {
        let url = job.spec.video_url.clone();
        let outcome = match (job.state, &job.result_url) {
            (JobState::Done, Some(key)) => OutcomeStatus::Indexed {
                document_key: key.clone(),
            },
            // A probe job that was split: its segments carry the results.
            (JobState::Done, None) => continue,
            (JobState::Dead, _) => OutcomeStatus::Failed {
                stage: "job".into(),
                reason: job.last_error.clone().unwrap_or_else(|| "failed".into()),
            },
            (JobState::Cancelled, _) => OutcomeStatus::Failed {
                stage: "cancelled".into(),
                reason: "pass cancelled".into(),
            },
            (state, _) => OutcomeStatus::Failed {
                stage: "unfinished".into(),
                reason: format!("job still {state}"),
            },
        };
        manifest.record(url, outcome);
    }
    Ok(index.finish_pass(manifest).await?)
}

/// `vidx finalize`.
pub async fn finalize(args: FinalizeArgs) -> Result<()> {
    let mut client = args.client.connect().await?;
    let status = client.status(&args.pass_id).await?;
    if !is_over(status.state) {
        bail!(
            "pass {} is {}: finalize it once it has finished",
            args.pass_id,
            status.state
        );
    }
    let mut jobs = Vec::new();
    let mut token = None;
    loop {
        let page = client.list_jobs(&args.pass_id, None, 1_000, token).await?;
        jobs.extend(page.items);
        token = page.next;
        if token.is_none() {
            break;
        }
    }
    let model = ModelInfo {
        id: args.model_id,
        revision: args.model_revision,
    };
    let manifest = finalize_pass(&status, &jobs, model).await?;
    println!(
        "{} indexed, {} failed; manifest and tables written under {}",
        manifest.indexed, manifest.failed, status.spec.destination
    );
    Ok(())
}
