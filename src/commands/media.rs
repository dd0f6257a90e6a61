//! `vidx probe` and `vidx frames`: thin command-line wrappers over `vidx_worker::media`, kept
//! apart from `main.rs` so the media commands can be wired beside the others.

use std::path::PathBuf;

use anyhow::Context;
use vidx_worker::media::{self, Frame, SampleOptions, SamplingSpec, VideoSource};

/// Arguments of `vidx probe`.
#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    /// Video to describe: s3://, gs://, az://, file:// URL or a local path.
    pub video_url: String,
}

/// How `vidx frames` sizes the pictures it writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Resize {
    /// The video's own resolution, rotation applied.
    Source,
}

/// Arguments of `vidx frames`.
#[derive(Debug, clap::Args)]
pub struct FramesArgs {
    /// Video to sample: s3://, gs://, az://, file:// URL or a local path.
    pub video_url: String,
    /// Directory to write frame_0000.png ... and frames.json into.
    #[arg(long)]
    pub out: PathBuf,
    /// Target frames per second.
    #[arg(long, default_value_t = 1.0)]
    pub fps: f64,
    /// Most frames to take; more are spread evenly over the segment.
    #[arg(long, default_value_t = 16)]
    pub max_frames: usize,
    /// Segment start in seconds.
    #[arg(long, default_value_t = 0.0)]
    pub start: f64,
    /// Segment end in seconds (default: end of the video).
    #[arg(long)]
    pub end: Option<f64>,
    /// Output size.
    #[arg(long, value_enum, default_value_t = Resize::Source)]
    pub resize: Resize,
}

/// Prints the probe of one video as a JSON object on stdout.
pub fn probe(args: &ProbeArgs) -> anyhow::Result<()> {
    let info = media::probe(&args.video_url)?;
    println!(
        "{}",
        serde_json::to_string(&info).context("encoding the probe as json")?
    );
    Ok(())
}

/// Samples frames into `--out` and prints how many were written.
pub fn frames(args: &FramesArgs) -> anyhow::Result<()> {
    let spec = SamplingSpec {
        fps: args.fps,
        max_frames: args.max_frames,
        start_s: args.start,
        end_s: args.end,
    };
    let source = VideoSource::from_url(&args.video_url)?;
    // Each resize mode is one frame transform; `Resize::Model` (the model crate's smart_resize)
    // slots in here.
    let transform: Box<dyn FnMut(Frame) -> media::Result<Frame>> = match args.resize {
        Resize::Source => Box::new(Ok),
    };
    let records = media::write_frames_source(
        &source,
        &args.out,
        &spec,
        &SampleOptions::default(),
        transform,
    )?;
    println!(
        "{}",
        serde_json::to_string(&records).context("encoding the frame list as json")?
    );
    Ok(())
}
