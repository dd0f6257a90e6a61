//! `vidx ask VIDEO_URL --model DIR "question"`: one model call over one video, for debugging.
//! Frames are sampled like a pass samples them and labelled with their times; the answer streams
//! to stdout as it is generated.

use std::io::Write;

use anyhow::{Context, Result};
use vidx_model::{RgbImage, TimedFrame};
use vidx_worker::media::{self, SampleOptions, SamplingSpec, VideoSource};

use crate::cli::ModelArgs;

/// Flags of `vidx ask`.
#[derive(Debug, clap::Args)]
pub struct AskArgs {
    /// The video (object-store URL or local path).
    pub video: String,
    /// The question.
    pub question: String,
    /// The model.
    #[command(flatten)]
    pub model: ModelArgs,
    /// Frames per second to sample.
    #[arg(long, default_value_t = 1.0)]
    pub fps: f64,
    /// Most frames.
    #[arg(long, default_value_t = 16)]
    pub max_frames: usize,
    /// Start of the time range, seconds.
    #[arg(long, default_value_t = 0.0)]
    pub start: f64,
    /// End of the time range, seconds (default: the end of the video).
    #[arg(long)]
    pub end: Option<f64>,
    /// System prompt (default: Open-o3 Video's grounded reasoning prompt).
    #[arg(long)]
    pub system: Option<String>,
}

/// Runs the call; the model and decoding run on a blocking thread.
pub async fn ask(args: AskArgs) -> Result<()> {
    let options = args.model.load_options()?;
    let pipeline = args.model.load(&options).await?;
    tokio::task::spawn_blocking(move || {
        let source = VideoSource::from_url(&args.video)?;
        let spec = SamplingSpec {
            fps: args.fps,
            max_frames: args.max_frames,
            start_s: args.start,
            end_s: args.end,
        };
        let sampled = media::sample_source(&source, &spec, &SampleOptions::default())?;
        let frames = sampled
            .frames
            .into_iter()
            .map(|frame| {
                let image = RgbImage::new(frame.width as usize, frame.height as usize, frame.rgb)?;
                Ok(TimedFrame {
                    image,
                    timestamp_seconds: frame.t_s - args.start,
                })
            })
            .collect::<Result<Vec<_>, vidx_model::Error>>()?;
        let last = frames.last().map_or(0.0, |frame| frame.timestamp_seconds);
        let duration = match (args.end, sampled.stats.duration_s) {
            (Some(end), _) => end - args.start,
            (None, Some(total)) => total - args.start,
            (None, None) => last,
        };
        let system = args
            .system
            .as_deref()
            .unwrap_or(vidx_model::prompt::OPEN_O3_GROUNDED_SYSTEM_PROMPT);
        let encoded = pipeline.encode_frames(&frames)?;
        let prefix = pipeline.prefill(&encoded, system, duration)?;
        let mut params = vidx_model::generation::GenerationParams::open_o3();
        params.max_new_tokens = args.model.max_new_tokens;
        let mut stdout = std::io::stdout();
        let answer = pipeline.ask(&prefix, &args.question, &params, &mut |delta| {
            let _ = stdout.write_all(delta.as_bytes());
            let _ = stdout.flush();
            true
        })?;
        println!();
        eprintln!(
            "{} frames, {} prompt tokens, {} generated, finish {:?}",
            frames.len(),
            answer.prompt_tokens,
            answer.tokens.len(),
            answer.finish
        );
        Ok::<_, anyhow::Error>(())
    })
    .await
    .context("model thread failed")?
}
