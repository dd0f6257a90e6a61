//! `vidx worker` and `vidx index` (the embedded default: a whole pass in this process, finalized
//! at its end through [`super::finalize`]).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vidx_coordinator::access::AccessPolicy;
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{MemoryStore, RetryPolicy};
use vidx_core::domain::PassState;
use vidx_core::source::JobSource;
use vidx_model::device::default_dtype;
use vidx_model::generation::GenerationParams;
use vidx_model::{LoadOptions, OpenO3Video};
use vidx_worker::evidence::ModelInfo;
use vidx_worker::metrics::{self, Health, WorkerMetrics};
use vidx_worker::runtime::{self, WorkerConfig};
use vidx_worker::video_job::VideoJobRunner;

use super::finalize::{all_jobs, finalize_pass};
use crate::cli::{IndexArgs, ModelArgs, RuntimeArgs, WorkerArgs};
use crate::commands::index_progress::IndexProgress;

/// Test hook (documented in the README's testing section): a worker aborts its process when it
/// starts a job whose video URL contains this, to exercise crash counting end to end.
const ABORT_ON_URL_ENV: &str = "VIDX_TEST_ABORT_ON_URL";

impl RuntimeArgs {
    /// `(max_in_flight, prefetch)`, checked.
    pub fn overlap(&self, max_in_flight: Option<usize>) -> Result<(usize, usize)> {
        const MAX_IN_FLIGHT: std::ops::RangeInclusive<usize> = 1..=64;
        const MAX_PREFETCH: usize = 64;
        let max_in_flight = max_in_flight.unwrap_or(self.max_in_flight);
        if !MAX_IN_FLIGHT.contains(&max_in_flight) {
            bail!(
                "--max-in-flight {max_in_flight} is outside {}..={}",
                MAX_IN_FLIGHT.start(),
                MAX_IN_FLIGHT.end()
            );
        }
        let prefetch = self.prefetch.unwrap_or_else(runtime::default_prefetch);
        if prefetch > MAX_PREFETCH {
            bail!("--prefetch {prefetch} is over {MAX_PREFETCH}");
        }
        Ok((max_in_flight, prefetch))
    }
}

/// The runner over a loaded model, batching as the loop's config says.
fn batched(runner: VideoJobRunner, config: &WorkerConfig) -> VideoJobRunner {
    runner
        .with_batching(config.max_in_flight, config.prefetch)
        .with_metrics(Arc::clone(&config.metrics))
}

impl ModelArgs {
    /// The device and dtype to load onto, checked before anything is loaded: a GPU that this
    /// build or this machine lacks is a one-line error naming `--device`.
    pub fn load_options(&self) -> Result<LoadOptions> {
        let device = self
            .device
            .resolve()
            .map_err(|error| anyhow!("--device {error}"))?;
        let dtype = self.dtype.resolve(device);
        info!(%device, dtype = dtype.as_str(), "model device");
        Ok(LoadOptions {
            device,
            dtype: Some(dtype),
        })
    }

    /// What the evidence records about the model, and where and in what dtype it ran.
    pub fn info(&self, options: &LoadOptions) -> ModelInfo {
        let id = self.model_id.clone().unwrap_or_else(|| {
            self.model.file_name().map_or_else(
                || "model".into(),
                |name| name.to_string_lossy().into_owned(),
            )
        });
        let dtype = options
            .dtype
            .unwrap_or_else(|| default_dtype(options.device));
        ModelInfo {
            id,
            revision: self.model_revision.clone(),
            device: Some(options.device.to_string()),
            dtype: Some(dtype.as_str().to_owned()),
        }
    }

    /// Loads the model (memory-mapped weights) on a blocking thread.
    pub async fn load(&self, options: &LoadOptions) -> Result<OpenO3Video> {
        if self.min_pixels == 0 || self.max_pixels < self.min_pixels {
            bail!("pixel bounds must satisfy 0 < min <= max");
        }
        let dir = self.model.clone();
        let (min_pixels, max_pixels) = (self.min_pixels, self.max_pixels);
        let options = options.clone();
        tokio::task::spawn_blocking(move || {
            let mut model = OpenO3Video::load(&dir, &options)?;
            model.set_pixel_bounds(min_pixels, max_pixels);
            Ok::<_, vidx_model::Error>(model)
        })
        .await?
        .with_context(|| format!("cannot load the model from {}", self.model.display()))
    }

    /// Loads the model and builds the pipeline that processes jobs with it.
    pub async fn pipeline(&self, options: &LoadOptions) -> Result<VideoJobRunner> {
        let model = self.load(options).await?;
        let mut generation = GenerationParams::open_o3();
        generation.max_new_tokens = self.max_new_tokens;
        Ok(VideoJobRunner::new(
            Arc::new(model),
            self.info(options),
            generation,
        ))
    }
}

impl WorkerArgs {
    /// The worker loop's settings, checked: a flag out of range is an error naming it, never
    /// silently moved into range.
    pub fn into_config(&self) -> Result<WorkerConfig> {
        const LEASE_SECS: std::ops::RangeInclusive<u64> = 5..=3_600;
        if !LEASE_SECS.contains(&self.lease_secs) {
            bail!(
                "--lease-secs {} is outside {}..={} seconds",
                self.lease_secs,
                LEASE_SECS.start(),
                LEASE_SECS.end()
            );
        }
        let worker_id = match &self.worker_id {
            Some(id) if id.trim().is_empty() => bail!("--worker-id is empty"),
            Some(id) if id.len() > 253 => bail!("--worker-id is longer than 253 bytes"),
            Some(id) => id.trim().to_owned(),
            None => format!("worker-{}", std::process::id()),
        };
        const GRACE_SECS: std::ops::RangeInclusive<u64> = 1..=86_400;
        if !GRACE_SECS.contains(&self.grace_secs) {
            bail!(
                "--grace-secs {} is outside {}..={} seconds",
                self.grace_secs,
                GRACE_SECS.start(),
                GRACE_SECS.end()
            );
        }
        let (max_in_flight, prefetch) = self.runtime.overlap(None)?;
        Ok(WorkerConfig {
            worker_id,
            lease: Duration::from_secs(self.lease_secs),
            exit_when_idle: self.exit_when_idle,
            max_in_flight,
            prefetch,
            grace: Duration::from_secs(self.grace_secs),
            abort_on_url: abort_on_url(),
            ..WorkerConfig::default()
        })
    }
}

fn abort_on_url() -> Option<String> {
    std::env::var(ABORT_ON_URL_ENV)
        .ok()
        .filter(|needle| !needle.is_empty())
}

/// Connects to the coordinator, retrying with backoff while it cannot be reached: a worker that
/// starts during a coordinator outage (or before the coordinator does) waits for it rather than
/// exiting and reloading its model. A bad URL or TLS setting fails at once. `None`: shut down
/// first.
async fn connect_with_retry(
    client: &crate::cli::ClientArgs,
    health: &Health,
    shutdown: &CancellationToken,
) -> Result<Option<vidx_core::client::CoordinatorClient>> {
    let config = client.config()?;
    let mut delay = Duration::from_millis(200);
    loop {
        match vidx_core::client::CoordinatorClient::connect(&config).await {
            Ok(connected) => {
                health.coordinator_call(Ok(()));
                return Ok(Some(connected));
            }
            Err(error) if error.is_transient() => {
                health.coordinator_call(Err(error.to_string()));
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "coordinator unreachable, retrying");
            }
            Err(error) => {
                return Err(anyhow::Error::new(error)
                    .context(format!("cannot connect to coordinator {}", config.url)));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => return Ok(None),
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// `vidx worker`: serves a coordinator until SIGTERM (or, with `--exit-when-idle`, no work).
pub async fn worker(args: WorkerArgs, shutdown: CancellationToken) -> Result<()> {
    let metrics = Arc::new(WorkerMetrics::new());
    let health = Arc::new(Health::default());
    let config = WorkerConfig {
        metrics: Arc::clone(&metrics),
        health: Arc::clone(&health),
        ..args.into_config()?
    };
    // Bound before the model loads, so /healthz answers (and /readyz says why not) meanwhile.
    let stop_serving = CancellationToken::new();
    let server = match &args.metrics_listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?;
            let bound = listener.local_addr()?;
            println!("metrics listening on {bound}");
            info!(address = %bound, "metrics listening on {bound}");
            Some(tokio::spawn(metrics::serve(
                listener,
                Arc::clone(&metrics),
                Arc::clone(&health),
                stop_serving.clone(),
            )))
        }
        None => None,
    };
    let options = args.model.load_options()?;
    let Some(client) = connect_with_retry(&args.client, &health, &shutdown).await? else {
        info!("shut down before the coordinator could be reached");
        stop_serving.cancel();
        return Ok(());
    };
    let client: Arc<dyn JobSource> = Arc::new(client);
    let runner = batched(
        args.model
            .pipeline(&options)
            .await?
            .with_coordinator(Arc::clone(&client)),
        &config,
    );
    health.set_model_loaded();
    let ran = runtime::run(client, Arc::new(runner), config, shutdown).await;
    stop_serving.cancel();
    if let Some(server) = server {
        let _ = server.await;
    }
    let tally = ran?;
    info!(
        done = tally.done,
        split = tally.split,
        failed = tally.failed,
        dropped = tally.dropped,
        released = tally.released,
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
pub async fn index(args: IndexArgs, shutdown: CancellationToken) -> Result<()> {
    let options = args.model.load_options()?;
    let spec = args.pass.spec()?;
    // Retries come quickly in a local run; a remote store's hiccup is still given a moment.
    let retry = RetryPolicy {
        base_backoff_ms: 500,
        max_backoff_ms: 5_000,
        ..RetryPolicy::default()
    };
    // The embedded coordinator reads and writes what this command was given, and no more (a
    // manifest's entries: next to it, or under an --allow-prefix).
    let mut allowed = args.allow_prefix.clone();
    allowed.extend(AccessPolicy::for_own_arguments(&spec)?.prefixes());
    let coordinator = Coordinator::new(Arc::new(MemoryStore::new(retry)), Metrics::new())
        .with_access(AccessPolicy::from_prefixes(&allowed)?);
    // The planner and the worker loop stop with this token: at the pass's end, or on a signal.
    let stop = shutdown.child_token();
    let planner = tokio::spawn(vidx_coordinator::planner::run(
        coordinator.clone(),
        "embedded".into(),
        stop.clone(),
    ));
    let (max_in_flight, prefetch) = args.runtime.overlap(args.workers)?;
    let config = WorkerConfig {
        worker_id: "embedded".into(),
        idle_poll: Duration::from_millis(500),
        max_in_flight,
        prefetch,
        abort_on_url: abort_on_url(),
        ..WorkerConfig::default()
    };
    let runner = Arc::new(batched(
        args.model
            .pipeline(&options)
            .await?
            .with_coordinator(Arc::new(coordinator.clone())),
        &config,
    ));
    let mut progress = coordinator.progress();
    let started = std::time::Instant::now();
    let pass_id = coordinator.submit(spec).await?.pass_id;
    info!(%pass_id, "pass submitted");
    let worker = tokio::spawn(runtime::run(
        Arc::new(coordinator.clone()),
        runner,
        config,
        stop.clone(),
    ));
    // The pass can only end when the coordinator notes progress (a job reported, planning
    // finished, a cancel), so this waits on that signal rather than polling.
    let mut display = IndexProgress::new()?;
    let status = loop {
        let status = coordinator.status(&pass_id).await?;
        display.update(&status);
        if is_over(status.state) {
            break Some(status);
        }
        tokio::select! {
            changed = progress.changed() => changed.context("the coordinator went away")?,
            () = shutdown.cancelled() => break None,
        }
    };
    display.finish();
    stop.cancel();
    let tally = worker.await.context("the worker loop panicked")??;
    let _ = planner.await;
    let Some(status) = status else {
        bail!(
            "interrupted: pass {pass_id} stopped after {} jobs done and {} failed; run the same \
             command again to resume (finished videos are not processed twice)",
            tally.done,
            tally.failed
        );
    };
    if status.state == PassState::Failed {
        bail!("pass failed: {}", status.planning_error.unwrap_or_default());
    }
    let jobs = all_jobs(&coordinator, &pass_id).await?;
    let manifest = finalize_pass(&status, &jobs, args.model.info(&options)).await?;
    println!(
        "pass {pass_id}: {} videos, {} jobs done, {} dead; {} indexed, {} skipped, {} failed \
         in {:.1}s; index at {}",
        manifest.videos.len(),
        status.counts.done,
        status.counts.dead,
        manifest.indexed,
        manifest.skipped,
        manifest.failed,
        started.elapsed().as_secs_f64(),
        status.spec.destination
    );
    Ok(())
}
