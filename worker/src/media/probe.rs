//! Probing: what a video is (container, codec, displayed size, rotation, frame rates, duration,
//! streams, audio, keyframe spacing) without decoding it.

use std::time::Duration;

use ffmpeg::media::Type as MediaType;
use ffmpeg_next as ffmpeg;
use serde::Serialize;

use super::demux::OpenedVideo;
use super::error::{MediaError, Result};
use super::reader::{Deadline, ReadOptions};
use super::source::VideoSource;

/// Video packets read at most to find the keyframe spacing of a container without an index.
const KEYFRAME_SCAN_PACKETS: usize = 600;

/// What [`probe`] learns about a video.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeInfo {
    /// The address the video was opened by.
    pub uri: String,
    /// FFmpeg's name of the container format (for example `mov,mp4,m4a,3gp,3g2,mj2`).
    pub container: String,
    /// FFmpeg's name of the video codec (for example `h264`).
    pub codec: String,
    /// Width as displayed: coded width, or coded height when the rotation is 90 or 270.
    pub width: u32,
    /// Height as displayed.
    pub height: u32,
    /// Width of the decoded pictures before rotation.
    pub coded_width: u32,
    /// Height of the decoded pictures before rotation.
    pub coded_height: u32,
    /// Clockwise rotation applied for display: 0, 90, 180 or 270.
    pub rotation: u32,
    /// Whether the display matrix also mirrors the picture left to right after the rotation
    /// (front cameras, flips and transposes).
    pub mirrored: bool,
    /// Frame rate to report: the average rate, else the real base rate.
    pub fps: Option<f64>,
    /// Average frame rate declared by the container (`avg_frame_rate`).
    pub avg_frame_rate: Option<f64>,
    /// Lowest rate at which all timestamps can be represented (`r_frame_rate`).
    pub real_frame_rate: Option<f64>,
    /// Declared duration in seconds (container, else video stream).
    pub duration_s: Option<f64>,
    /// Number of streams of any kind.
    pub stream_count: usize,
    /// Whether any audio stream is present.
    pub has_audio: bool,
    /// Typical spacing of keyframes in seconds, when cheap to find (container index, or the
    /// first keyframes of the stream).
    pub keyframe_interval_s: Option<f64>,
    /// Frame count declared by the container, if any.
    pub frame_count: Option<u64>,
    /// Size of the object in bytes.
    pub size_bytes: u64,
}

/// Limits of one probe.
#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// How bytes are fetched from the store.
    pub read: ReadOptions,
    /// Wall-clock budget for the whole probe.
    pub time_budget: Duration,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        Self {
            read: ReadOptions::default(),
            time_budget: Duration::from_secs(60),
        }
    }
}

/// Probes the video at `url` (see [`VideoSource::from_url`]) with default limits. Blocking.
pub fn probe(url: &str) -> Result<ProbeInfo> {
    probe_source(&VideoSource::from_url(url)?, &ProbeOptions::default())
}

/// Probes a video in a store the caller already holds. Blocking: call from `spawn_blocking`.
pub fn probe_source(source: &VideoSource, options: &ProbeOptions) -> Result<ProbeInfo> {
    let mut video = OpenedVideo::open(source, &options.read, Deadline::new(options.time_budget))?;
    let orientation = video.orientation();
    let rotation = orientation.rotation;
    let duration_s = video.duration_s();
    let (codec, coded_width, coded_height, avg_frame_rate, real_frame_rate, frame_count) = {
        let stream = video.video_stream();
        let parameters = stream.parameters();
        // SAFETY: `parameters` borrows the live stream's codec parameters; reading two plain
        // integer fields neither mutates nor retains the pointer.
        let (width, height) = unsafe {
            let raw = parameters.as_ptr();
            ((*raw).width, (*raw).height)
        };
        (
            parameters.id().name().to_owned(),
            u32::try_from(width).unwrap_or(0),
            u32::try_from(height).unwrap_or(0),
            rate(stream.avg_frame_rate()),
            rate(stream.rate()),
            u64::try_from(stream.frames())
                .ok()
                .filter(|frames| *frames > 0),
        )
    };
    if coded_width == 0 || coded_height == 0 {
        return Err(MediaError::Corrupt {
            uri: source.uri.clone(),
            reason: "video stream has no picture size".into(),
        });
    }
    let (width, height) = if rotation % 180 == 90 {
        (coded_height, coded_width)
    } else {
        (coded_width, coded_height)
    };
    let has_audio = video
        .input
        .streams()
        .any(|stream| stream.parameters().medium() == MediaType::Audio);
    let stream_count = video.input.streams().count();
    let container = video.input.format().name().to_owned();
    let keyframe_interval_s = keyframe_interval(&mut video);
    Ok(ProbeInfo {
        uri: source.uri.clone(),
        container,
        codec,
        width,
        height,
        coded_width,
        coded_height,
        rotation,
        mirrored: orientation.mirrored,
        fps: avg_frame_rate.or(real_frame_rate),
        avg_frame_rate,
        real_frame_rate,
        duration_s,
        stream_count,
        has_audio,
        keyframe_interval_s,
        frame_count,
        size_bytes: video.size_bytes,
    })
}

/// A rational rate as a float, or `None` when FFmpeg does not know it.
pub(crate) fn rate(value: ffmpeg::Rational) -> Option<f64> {
    if value.numerator() <= 0 || value.denominator() <= 0 {
        return None;
    }
    Some(f64::from(value))
}

/// The median spacing of indexed keyframes, else the spacing of the first two keyframes among
/// the first packets; `None` when neither is cheap.
fn keyframe_interval(video: &mut OpenedVideo) -> Option<f64> {
    let indexed = video.indexed_keyframes_s();
    if indexed.len() >= 2 {
        return median_spacing(&indexed);
    }
    let time_base = f64::from(video.video_stream().time_base());
    let mut keyframes = Vec::new();
    let mut packet = ffmpeg::Packet::empty();
    let mut video_packets = 0;
    while video_packets < KEYFRAME_SCAN_PACKETS && keyframes.len() < 3 {
        if packet.read(&mut video.input).is_err() {
            break;
        }
        if packet.stream() != video.video_index {
            continue;
        }
        video_packets += 1;
        if packet.is_key()
            && let Some(pts) = packet.pts().or(packet.dts())
        {
            keyframes.push(pts as f64 * time_base);
        }
    }
    keyframes.sort_by(f64::total_cmp);
    median_spacing(&keyframes)
}

fn median_spacing(times: &[f64]) -> Option<f64> {
    let mut gaps: Vec<f64> = times
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .filter(|gap| *gap > 0.0)
        .collect();
    if gaps.is_empty() {
        return None;
    }
    gaps.sort_by(f64::total_cmp);
    Some(gaps[gaps.len() / 2])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_spacing_ignores_duplicates() {
        assert_eq!(median_spacing(&[0.0, 2.0, 4.0, 4.0, 6.0, 9.0]), Some(2.0));
        assert_eq!(median_spacing(&[1.0]), None);
    }

    #[test]
    fn unknown_rates_are_none() {
        assert_eq!(rate(ffmpeg::Rational::new(0, 1)), None);
        assert_eq!(
            rate(ffmpeg::Rational::new(30000, 1001)).map(|r| (r * 1000.0).round()),
            Some(29970.0)
        );
    }
}
