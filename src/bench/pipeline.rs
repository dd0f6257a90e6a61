//! `vidx bench pipeline`: how busy the worker keeps its model. The medium random model (the model
//! bench's preset: a Qwen2.5-0.5B-like decoder and an 8-block vision tower with random weights)
//! indexes videos generated with the ffmpeg CLI through a real in-process coordinator and the
//! worker loop `vidx worker` runs, twice: prefetch off (each job fetched, probed and decoded
//! while the model waits), then on (the next videos prepared while the model works). Each run
//! prints videos a minute, the model busy ratio (time the model thread computed over the wall
//! time since it started) and the seconds spent in each stage, summed over the jobs.
//!
//! Both runs use the same model, the same videos and a fresh index each (an index that already
//! holds a video's document would skip it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use candle_nn::VarBuilder;
use tokio_util::sync::CancellationToken;
use vidx_coordinator::access::AccessPolicy;
use vidx_coordinator::metrics::Metrics;
use vidx_coordinator::service::Coordinator;
use vidx_coordinator::store::{MemoryStore, RetryPolicy};
use vidx_core::domain::{PassSpec, PassState, Sampling, TaskSpec};
use vidx_model::generation::GenerationParams;
use vidx_model::loading::ModelFiles;
use vidx_model::processor::Processor;
use vidx_model::{DeviceSetting, Model, OpenO3Video, PreprocessorConfig};
use vidx_worker::evidence::ModelInfo;
use vidx_worker::metrics::{Stage, WorkerMetrics};
use vidx_worker::runtime::{self, WorkerConfig};
use vidx_worker::video_job::VideoJobRunner;

use crate::cli::PipelineBenchArgs;

#[path = "../../model/benches/support/medium_config.rs"]
mod medium_config;
#[path = "../../model/benches/support/random_weights.rs"]
mod random_weights;

/// Frame size of the generated videos: the medium bench's 224x448, which is also 128·28·28
/// pixels, Open-o3 Video's smallest frame, so the processor keeps it as it is.
const WIDTH: u32 = 448;
const HEIGHT: u32 = 224;
/// Frames a second sampled from each video; with [`PipelineBenchConfig::seconds`] of 8 that is
/// the medium bench's 16 frames.
const SAMPLE_FPS: f64 = 2.0;

/// A validated `bench pipeline` run.
#[derive(Debug, Clone)]
pub struct PipelineBenchConfig {
    /// Videos indexed in each run.
    pub videos: u32,
    /// Length of each video.
    pub seconds: u32,
    /// Tokens generated a question.
    pub max_new_tokens: usize,
    /// Prefetch of the second run.
    pub prefetch: usize,
    /// Where the model runs.
    pub device: DeviceSetting,
    /// A checkpoint folder whose `tokenizer.json` the random model speaks.
    pub tokenizer_dir: PathBuf,
}

impl PipelineBenchArgs {
    /// Validates the flags.
    pub fn into_config(self) -> Result<PipelineBenchConfig> {
        if !(1..=256).contains(&self.videos) {
            bail!("--videos must be in 1..=256");
        }
        if !(1..=600).contains(&self.seconds) {
            bail!("--seconds must be in 1..=600");
        }
        if !(1..=4096).contains(&self.max_new_tokens) {
            bail!("--max-new-tokens must be in 1..=4096");
        }
        if !(1..=64).contains(&self.prefetch) {
            bail!("--prefetch must be in 1..=64 (the first run is the one without)");
        }
        if !self.tokenizer_dir.join("tokenizer.json").is_file() {
            bail!(
                "--tokenizer-dir {}: no tokenizer.json there",
                self.tokenizer_dir.display()
            );
        }
        Ok(PipelineBenchConfig {
            videos: self.videos,
            seconds: self.seconds,
            max_new_tokens: self.max_new_tokens,
            prefetch: self.prefetch,
            device: self.device,
            tokenizer_dir: self.tokenizer_dir,
        })
    }
}

/// What one run measured.
#[derive(Debug, Clone)]
pub struct PipelineRun {
    /// The prefetch it ran with.
    pub prefetch: usize,
    /// Videos indexed.
    pub videos: u64,
    /// Wall time from submitting the pass to its end.
    pub elapsed: Duration,
    /// Model thread busy time over its wall time.
    pub busy_ratio: f64,
    /// Seconds per stage, summed over the jobs.
    pub stage_seconds: Vec<(Stage, f64)>,
}

impl PipelineRun {
    /// Videos indexed a minute.
    pub fn videos_per_minute(&self) -> f64 {
        self.videos as f64 * 60.0 / self.elapsed.as_secs_f64().max(f64::EPSILON)
    }
}

/// Runs the benchmark and prints both runs.
pub async fn pipeline(config: PipelineBenchConfig) -> Result<()> {
    let scratch = tempfile::tempdir()?;
    let corpus = scratch.path().join("videos");
    std::fs::create_dir_all(&corpus)?;
    for index in 0..config.videos {
        encode_video(
            &corpus.join(format!("clip-{index:02}.mp4")),
            config.seconds,
            index,
        )?;
    }
    let device = config
        .device
        .resolve()
        .map_err(|error| anyhow::anyhow!("--device {error}"))?;
    println!(
        "bench pipeline: medium random model on {device}, {} videos of {} s at {WIDTH}x{HEIGHT}, \
         {} frames each, {} tokens a question",
        config.videos,
        config.seconds,
        (f64::from(config.seconds) * SAMPLE_FPS) as u64,
        config.max_new_tokens
    );
    let model = Arc::new(medium_model(&config, device.device()?)?);
    let mut runs = Vec::new();
    for prefetch in [0, config.prefetch] {
        let run = run_once(&config, &model, scratch.path(), prefetch).await?;
        print_run(&run);
        runs.push(run);
    }
    if let [off, on] = runs.as_slice() {
        println!(
            "prefetch {} over none: {:.2}x videos/min, busy ratio {:.3} -> {:.3}",
            on.prefetch,
            on.videos_per_minute() / off.videos_per_minute().max(f64::EPSILON),
            off.busy_ratio,
            on.busy_ratio
        );
    }
    Ok(())
}

/// A video of `seconds` at [`WIDTH`]x[`HEIGHT`], 10 frames a second, its picture shifted by
/// `index` so no two are the same file.
fn encode_video(path: &Path, seconds: u32, index: u32) -> Result<()> {
    let source = format!(
        "testsrc2=size={WIDTH}x{HEIGHT}:rate=10:duration={seconds},hue=h={}",
        index * 37
    );
    let output = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi"])
        .args(["-i", &source])
        .args([
            "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p",
        ])
        .arg(path)
        .output()
        .context("cannot run ffmpeg (run scripts/setup.sh)")?;
    if !output.status.success() {
        bail!(
            "ffmpeg could not encode {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The medium preset with random f32 weights, the tokenizer of `tokenizer_dir`, and frames kept
/// at their 224x448.
fn medium_model(config: &PipelineBenchConfig, device: candle_core::Device) -> Result<OpenO3Video> {
    let model_config = medium_config::medium_config()?;
    let weights = VarBuilder::from_backend(
        Box::new(random_weights::RandomWeights),
        candle_core::DType::F32,
        device,
    );
    let model = Model::new(&model_config, weights).context("building the medium model")?;
    let tokenizer = ModelFiles::from_dir(&config.tokenizer_dir)?.tokenizer()?;
    let mut model = OpenO3Video::new(
        model,
        tokenizer,
        Processor::new(PreprocessorConfig::default()),
    );
    let pixels = (WIDTH * HEIGHT) as usize;
    model.set_pixel_bounds(pixels, pixels);
    Ok(model)
}

/// One pass over the corpus with `prefetch`, through an in-process coordinator and the worker
/// loop, into a fresh index.
async fn run_once(
    config: &PipelineBenchConfig,
    model: &Arc<OpenO3Video>,
    scratch: &Path,
    prefetch: usize,
) -> Result<PipelineRun> {
    let corpus = url::Url::from_directory_path(scratch.join("videos"))
        .map_err(|()| anyhow::anyhow!("the scratch folder is not absolute"))?;
    let index_dir = scratch.join(format!("index-prefetch-{prefetch}"));
    std::fs::create_dir_all(&index_dir)?;
    let destination = url::Url::from_directory_path(&index_dir)
        .map_err(|()| anyhow::anyhow!("the scratch folder is not absolute"))?;
    let spec = PassSpec {
        source: corpus.to_string(),
        destination: destination.to_string(),
        task: TaskSpec::Questions {
            questions: vec!["What is shown?".into()],
        },
        sampling: Sampling {
            fps: SAMPLE_FPS,
            max_frames: (f64::from(config.seconds) * SAMPLE_FPS).ceil() as u32,
            segment_secs: f64::from(config.seconds) + 1.0,
        },
        idempotency_key: None,
        max_attempts: 1,
        verify: Some(false),
    };
    spec.validate()?;
    let retry = RetryPolicy {
        base_backoff_ms: 100,
        max_backoff_ms: 1_000,
        ..RetryPolicy::default()
    };
    let access = AccessPolicy::from_prefixes(&[scratch_prefix(scratch)?])?;
    let coordinator =
        Coordinator::new(Arc::new(MemoryStore::new(retry)), Metrics::new()).with_access(access);
    let stop = CancellationToken::new();
    let planner = tokio::spawn(vidx_coordinator::planner::run(
        coordinator.clone(),
        "bench".into(),
        stop.clone(),
    ));

    let metrics = Arc::new(WorkerMetrics::new());
    let mut generation = GenerationParams::open_o3();
    generation.max_new_tokens = config.max_new_tokens;
    let info = ModelInfo {
        id: "medium-random".into(),
        revision: "bench".into(),
        device: None,
        dtype: Some("f32".into()),
    };
    let runner = VideoJobRunner::new(Arc::clone(model), info, generation)
        .with_batching(1, prefetch.max(1))
        .with_metrics(Arc::clone(&metrics));
    let worker_config = WorkerConfig {
        worker_id: format!("bench-prefetch-{prefetch}"),
        idle_poll: Duration::from_millis(50),
        max_in_flight: 1,
        prefetch,
        metrics: Arc::clone(&metrics),
        ..WorkerConfig::default()
    };

    let started = Instant::now();
    let mut progress = coordinator.progress();
    let pass_id = coordinator.submit(spec).await?.pass_id;
    let worker = tokio::spawn(runtime::run(
        Arc::new(coordinator.clone()),
        Arc::new(runner),
        worker_config,
        stop.clone(),
    ));
    let status = loop {
        let status = coordinator.status(&pass_id).await?;
        if matches!(
            status.state,
            PassState::Finished | PassState::Cancelled | PassState::Failed
        ) {
            break status;
        }
        progress
            .changed()
            .await
            .context("the coordinator went away")?;
    };
    let elapsed = started.elapsed();
    // Read at the pass's end: the worker's shutdown afterwards is no part of the pipeline.
    let snapshot = metrics.snapshot();
    stop.cancel();
    worker.await.context("the worker loop panicked")??;
    let _ = planner.await;
    if status.state != PassState::Finished || status.counts.dead > 0 {
        bail!(
            "the pass did not index every video: {} ({} done, {} dead)",
            status.state,
            status.counts.done,
            status.counts.dead
        );
    }
    Ok(PipelineRun {
        prefetch,
        videos: status.counts.done,
        elapsed,
        busy_ratio: snapshot.model_busy_ratio,
        stage_seconds: snapshot.stage_seconds.into_iter().collect(),
    })
}

/// The `file://` prefix the in-process coordinator may read and write: the scratch folder.
fn scratch_prefix(scratch: &Path) -> Result<String> {
    url::Url::from_directory_path(scratch)
        .map(|url| url.to_string())
        .map_err(|()| anyhow::anyhow!("the scratch folder is not absolute"))
}

fn print_run(run: &PipelineRun) {
    let stages: Vec<String> = run
        .stage_seconds
        .iter()
        .map(|(stage, seconds)| format!("{}={seconds:.2}", stage.as_str()))
        .collect();
    println!(
        "prefetch {}: {} videos in {:.1} s, {:.2} videos/min, model busy ratio {:.3}; stage \
         seconds {}",
        run.prefetch,
        run.videos,
        run.elapsed.as_secs_f64(),
        run.videos_per_minute(),
        run.busy_ratio,
        stages.join(" ")
    );
}
