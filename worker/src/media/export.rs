//! Writing sampled frames to a directory: `frame_0000.png`, ... and `frames.json` listing
//! `{index, t_s, width, height}` per frame. Backs the `vidx frames` command.

use std::path::Path;

use serde::Serialize;

use super::error::{MediaError, Result};
use super::sample::{Frame, SampleOptions, SamplingSpec, sample_source_with};
use super::source::VideoSource;

/// One entry of `frames.json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FrameRecord {
    /// Position in the sampled sequence; the PNG is `frame_{index:04}.png`.
    pub index: usize,
    /// Presentation time in seconds from the start of the video.
    pub t_s: f64,
    /// Width of the written picture.
    pub width: u32,
    /// Height of the written picture.
    pub height: u32,
}

/// Samples the video at `url` and writes its frames at source resolution into `out_dir`.
pub fn write_frames(url: &str, out_dir: &Path, spec: &SamplingSpec) -> Result<Vec<FrameRecord>> {
    write_frames_source(
        &VideoSource::from_url(url)?,
        out_dir,
        spec,
        &SampleOptions::default(),
        Ok,
    )
}

/// Samples a video and writes each frame, after `transform` (for example a resize to the model's
/// input size), as a PNG into `out_dir`, then writes `frames.json`. Frames are written as they
/// are decoded, so only one is held at a time.
pub fn write_frames_source(
    source: &VideoSource,
    out_dir: &Path,
    spec: &SamplingSpec,
    options: &SampleOptions,
    mut transform: impl FnMut(Frame) -> Result<Frame>,
) -> Result<Vec<FrameRecord>> {
    let output_error = |path: &Path, source: std::io::Error| MediaError::Output {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(out_dir).map_err(|error| output_error(out_dir, error))?;
    let mut records = Vec::new();
    sample_source_with(source, spec, options, |frame| {
        let frame = transform(frame)?;
        let path = out_dir.join(format!("frame_{:04}.png", frame.index));
        image::save_buffer(
            &path,
            &frame.rgb,
            frame.width,
            frame.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|error| output_error(&path, std::io::Error::other(error)))?;
        records.push(FrameRecord {
            index: frame.index,
            t_s: frame.t_s,
            width: frame.width,
            height: frame.height,
        });
        Ok(())
    })?;
    let manifest = out_dir.join("frames.json");
    let json = serde_json::to_vec_pretty(&records)
        .map_err(|error| output_error(&manifest, std::io::Error::other(error)))?;
    std::fs::write(&manifest, json).map_err(|error| output_error(&manifest, error))?;
    Ok(records)
}
