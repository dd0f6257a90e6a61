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
    /// What the model sees: Qwen2.5-VL's `smart_resize` (multiples of 28, within Open-o3 Video's
    /// 128*28*28 to 768*28*28 pixels) with the bicubic, antialiased resize of the reference.
    Model,
}

/// Fewest pixels per frame Open-o3 Video feeds the model.
const MODEL_MIN_PIXELS: usize = 128 * 28 * 28;
/// Most pixels per frame Open-o3 Video feeds the model.
const MODEL_MAX_PIXELS: usize = 768 * 28 * 28;

/// A frame resized exactly as the model's processor resizes it.
fn resize_for_model(frame: Frame) -> media::Result<Frame> {
    let invalid = |error: vidx_model::Error| media::MediaError::InvalidSpec {
        reason: format!("cannot resize for the model: {error}"),
    };
    let (width, height) = (frame.width as usize, frame.height as usize);
    let (target_height, target_width) =
        vidx_model::smart_resize(height, width, 28, MODEL_MIN_PIXELS, MODEL_MAX_PIXELS)
            .map_err(invalid)?;
    let rgb =
        vidx_model::resize_rgb_bicubic(&frame.rgb, width, height, target_width, target_height)
            .map_err(invalid)?;
    Ok(Frame {
        width: target_width as u32,
        height: target_height as u32,
        rgb,
        ..frame
    })
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
    let transform: Box<dyn FnMut(Frame) -> media::Result<Frame>> = match args.resize {
        Resize::Source => Box::new(Ok),
        Resize::Model => Box::new(resize_for_model),
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
