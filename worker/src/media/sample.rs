//! Frame sampling the way Open-o3 Video was trained and evaluated: frames at a target rate
//! (default 1 fps) over a segment `[start, end)`, at most `max_frames` of them (default 16), spread
//! evenly like `numpy.linspace` when the rate would give more; each frame tagged with its
//! presentation time in seconds from the start of the video and converted to upright RGB24.
//!
//! Decoding reads only what the targets need: it seeks to the keyframe before a target only when
//! that keyframe lies beyond the current decoding position (otherwise decoding forward is
//! cheaper), skips non-reference frames well before a target for codecs where that is safe, and
//! stops after the last target. A time budget and a decoded-frame budget bound every call.

use std::time::Duration;

use ffmpeg::codec::threading;
use ffmpeg_next as ffmpeg;
use serde::Serialize;
use tracing::{debug, warn};

use super::convert::RgbConverter;
use super::demux::OpenedVideo;
use super::error::{Budget, MediaError, Result};
use super::probe::rate;
use super::reader::ReadOptions;
use super::source::VideoSource;

/// Frames decoded per kept frame allowed by the automatic frame budget (a 10 s GOP at 120 fps).
const DECODED_FRAMES_PER_TARGET: u64 = 1200;
/// Decoded frames allowed on top of the per-target budget.
const DECODED_FRAMES_BASE: u64 = 2000;
/// Seek ahead when no index is known and the next target is at least this far away.
const DEFAULT_SEEK_GAP_S: f64 = 2.0;
/// Consecutive packets the decoder may reject before the stream counts as corrupt.
const MAX_CONSECUTIVE_DECODE_ERRORS: u32 = 64;
/// Slack when comparing times in seconds, well below any frame interval.
const TIME_EPSILON_S: f64 = 1e-6;

/// Which frames to take from a video.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SamplingSpec {
    /// Target frames per second.
    pub fps: f64,
    /// Most frames to keep from the segment; more targets are thinned to this many, evenly spread.
    pub max_frames: usize,
    /// Segment start in seconds from the start of the video (inclusive).
    pub start_s: f64,
    /// Segment end in seconds (exclusive); `None` for the end of the video.
    pub end_s: Option<f64>,
}

impl Default for SamplingSpec {
    fn default() -> Self {
        Self {
            fps: 1.0,
            max_frames: 16,
            start_s: 0.0,
            end_s: None,
        }
    }
}

/// Budgets and decoder settings for one sampling call.
#[derive(Debug, Clone)]
pub struct DecodeLimits {
    /// Wall-clock budget for the whole call, opening included.
    pub time_budget: Duration,
    /// Most frames the decoder may produce; `None` sizes it from the number of targets.
    pub max_decoded_frames: Option<u64>,
    /// Largest picture accepted, in pixels (width times height).
    pub max_pixels: u64,
    /// Decoder threads; 0 lets FFmpeg choose (one per core plus one, as the CLI does).
    pub threads: usize,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            time_budget: Duration::from_secs(300),
            max_decoded_frames: None,
            max_pixels: 8192 * 4352,
            threads: 0,
        }
    }
}

/// Everything configurable about a sampling call besides the spec.
#[derive(Debug, Clone, Default)]
pub struct SampleOptions {
    /// How bytes are fetched from the store.
    pub read: ReadOptions,
    /// Decoding budgets and threads.
    pub limits: DecodeLimits,
}

/// One sampled frame: upright RGB24 rows without padding.
#[derive(Clone, PartialEq)]
pub struct Frame {
    /// Position in the sampled sequence, from 0.
    pub index: usize,
    /// Presentation time of this frame in seconds from the start of the video.
    pub t_s: f64,
    /// The target time this frame was taken for (the frame is the first at or after it).
    pub target_s: f64,
    /// Width as displayed.
    pub width: u32,
    /// Height as displayed.
    pub height: u32,
    /// `width * height * 3` bytes, row-major, RGB.
    pub rgb: Vec<u8>,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("index", &self.index)
            .field("t_s", &self.t_s)
            .field("target_s", &self.target_s)
            .field("width", &self.width)
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

/// What a sampling call did, for logs, metrics and the benchmark.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SampleStats {
    /// Target times planned.
    pub targets: usize,
    /// Frames handed to the caller.
    pub frames_kept: usize,
    /// Frames the decoder produced.
    pub frames_decoded: u64,
    /// Packets of the video stream sent to the decoder.
    pub packets_decoded: u64,
    /// Seeks made.
    pub seeks: u64,
    /// Bytes fetched from the store.
    pub bytes_fetched: u64,
    /// Ranged requests made to the store.
    pub requests: u64,
    /// Clockwise rotation applied.
    pub rotation: u32,
    /// Declared duration in seconds.
    pub duration_s: Option<f64>,
    /// The stream ended before the last target: the container declares more than it holds.
    pub ended_early: bool,
}

/// The frames of a sampling call and what it took.
#[derive(Debug, Clone)]
pub struct Sampled {
    /// The frames, in presentation order.
    pub frames: Vec<Frame>,
    /// Counters of the call.
    pub stats: SampleStats,
}

/// Samples frames from the video at `url` (see [`VideoSource::from_url`]) with default options.
/// Blocking: call from `spawn_blocking` or a plain thread.
pub fn sample_frames(url: &str, spec: &SamplingSpec) -> Result<Sampled> {
    sample_source(
        &VideoSource::from_url(url)?,
        spec,
        &SampleOptions::default(),
    )
}

/// Samples frames from a video in a store the caller already holds and collects them.
pub fn sample_source(
    source: &VideoSource,
    spec: &SamplingSpec,
    options: &SampleOptions,
) -> Result<Sampled> {
    let mut frames = Vec::new();
    let stats = sample_source_with(source, spec, options, |frame| {
        frames.push(frame);
        Ok(())
    })?;
    Ok(Sampled { frames, stats })
}

/// Samples frames and hands each to `on_frame` as soon as it is decoded, so a caller that
/// resizes or writes frames never holds them all at full size. An error from `on_frame` stops
/// sampling and is returned.
pub fn sample_source_with(
    source: &VideoSource,
    spec: &SamplingSpec,
    options: &SampleOptions,
    on_frame: impl FnMut(Frame) -> Result<()>,
) -> Result<SampleStats> {
    validate_spec(spec)?;
    let video = OpenedVideo::open(source, &options.read, options.limits.time_budget)?;
    Sampler::new(video, spec, &options.limits)?.run(on_frame)
}

fn validate_spec(spec: &SamplingSpec) -> Result<()> {
    let invalid = |reason: &str| {
        Err(MediaError::InvalidSpec {
            reason: reason.to_owned(),
        })
    };
    if !(spec.fps.is_finite() && spec.fps > 0.0) {
        return invalid("fps must be a positive number");
    }
    if spec.max_frames == 0 {
        return invalid("max_frames must be at least 1");
    }
    if !(spec.start_s.is_finite() && spec.start_s >= 0.0) {
        return invalid("start must be a non-negative number of seconds");
    }
    if let Some(end) = spec.end_s
        && !(end.is_finite() && end > spec.start_s)
    {
        return invalid("end must be a number of seconds after start");
    }
    Ok(())
}

/// The target times of `spec` over a video of `duration_s` seconds at `video_fps`.
///
/// Targets run at `spec.fps` from the segment start. When there would be more than
/// `spec.max_frames` (or more than the video has frames in the segment), that many are spread
/// evenly from the segment start to its last frame, both included, like
/// `numpy.linspace(start, end - frame_interval, n)`.
pub fn plan_targets(
    spec: &SamplingSpec,
    duration_s: Option<f64>,
    video_fps: Option<f64>,
) -> Result<Vec<f64>> {
    validate_spec(spec)?;
    let start = spec.start_s;
    let end = match (spec.end_s, duration_s) {
        (Some(end), Some(duration)) => end.min(duration),
        (Some(end), None) => end,
        (None, Some(duration)) => duration,
        // Without a known length, take up to `max_frames` at the target rate.
        (None, None) => start + spec.max_frames as f64 / spec.fps,
    };
    if end <= start {
        return Err(MediaError::InvalidSpec {
            reason: format!(
                "segment starts at {start:.3}s, at or after the video ends at {end:.3}s"
            ),
        });
    }
    let frame_interval = video_fps
        .filter(|fps| *fps > 0.0)
        .map_or(0.0, |fps| 1.0 / fps);
    let last = (end - frame_interval).max(start);
    let at_rate = ((last - start) * spec.fps + TIME_EPSILON_S).floor() as usize + 1;
    let in_video = video_fps
        .filter(|fps| *fps > 0.0)
        .map_or(usize::MAX, |fps| {
            (((end - start) * fps).round() as usize).max(1)
        });
    let count = at_rate.min(spec.max_frames).min(in_video);
    if count == at_rate {
        return Ok((0..count).map(|i| start + i as f64 / spec.fps).collect());
    }
    if count == 1 {
        return Ok(vec![start]);
    }
    let step = (last - start) / (count - 1) as f64;
    Ok((0..count).map(|i| start + i as f64 * step).collect())
}

/// Codecs whose decoders skip non-reference frames without harming later frames.
fn skip_nonref_is_safe(id: ffmpeg::codec::Id) -> bool {
    use ffmpeg::codec::Id;
    matches!(
        id,
        Id::H264 | Id::HEVC | Id::MPEG4 | Id::MPEG2VIDEO | Id::MPEG1VIDEO
    )
}

struct Sampler {
    video: OpenedVideo,
    decoder: ffmpeg::decoder::Video,
    targets: Vec<f64>,
    rotation: u32,
    time_base: f64,
    start_offset_s: f64,
    frame_interval_s: f64,
    keyframes_s: Vec<f64>,
    skip_nonref: bool,
    max_decoded_frames: u64,
    stats: SampleStats,
}

impl Sampler {
    fn new(mut video: OpenedVideo, spec: &SamplingSpec, limits: &DecodeLimits) -> Result<Self> {
        let uri = video.uri.clone();
        let rotation = video.rotation();
        let duration_s = video.duration_s();
        let start_offset_s = video.start_time_s();
        let keyframes_s = video.indexed_keyframes_s();
        let (parameters, stream_time_base, video_fps) = {
            let stream = video.video_stream();
            let fps = rate(stream.avg_frame_rate()).or_else(|| rate(stream.rate()));
            (stream.parameters(), stream.time_base(), fps)
        };
        let time_base = f64::from(stream_time_base);
        let codec_id = parameters.id();
        if ffmpeg::decoder::find(codec_id).is_none() {
            return Err(MediaError::UnsupportedCodec {
                uri,
                codec: codec_id.name().to_owned(),
            });
        }
        let mut context = ffmpeg::codec::context::Context::from_parameters(parameters)
            .map_err(|error| video.read_error("reading codec parameters", error))?;
        context.set_threading(threading::Config {
            kind: threading::Type::Frame,
            count: limits.threads,
            ..Default::default()
        });
        let mut decoder = context.decoder();
        decoder.set_packet_time_base(stream_time_base);
        let decoder = decoder.video().map_err(|error| match error {
            ffmpeg::Error::DecoderNotFound => MediaError::UnsupportedCodec {
                uri: uri.clone(),
                codec: codec_id.name().to_owned(),
            },
            other => video.read_error("opening the decoder", other),
        })?;
        let pixels = u64::from(decoder.width()) * u64::from(decoder.height());
        if pixels > limits.max_pixels {
            return Err(MediaError::TooLarge {
                uri,
                width: decoder.width(),
                height: decoder.height(),
                limit: limits.max_pixels,
            });
        }
        let targets = plan_targets(spec, duration_s, video_fps)?;
        let max_decoded_frames = limits
            .max_decoded_frames
            .unwrap_or(DECODED_FRAMES_BASE + DECODED_FRAMES_PER_TARGET * targets.len() as u64);
        debug!(%uri, targets = targets.len(), keyframes = keyframes_s.len(), rotation, "sampling planned");
        let stats = SampleStats {
            targets: targets.len(),
            rotation,
            duration_s,
            ..Default::default()
        };
        Ok(Self {
            video,
            decoder,
            targets,
            rotation,
            time_base,
            start_offset_s,
            frame_interval_s: video_fps
                .filter(|fps| *fps > 0.0)
                .map_or(0.04, |fps| 1.0 / fps),
            keyframes_s,
            skip_nonref: skip_nonref_is_safe(codec_id),
            max_decoded_frames,
            stats,
        })
    }

    /// Seconds from the start of the video for a timestamp in the stream's time base.
    fn seconds(&self, timestamp: i64) -> f64 {
        timestamp as f64 * self.time_base - self.start_offset_s
    }

    /// Whether to seek for `target` given the last demuxed video packet time `position`.
    fn should_seek(&self, target: f64, position: Option<f64>, observed_gap: Option<f64>) -> bool {
        if !self.keyframes_s.is_empty() {
            // The last keyframe at or before the target; seeking pays off only if it lies ahead.
            let index = self
                .keyframes_s
                .partition_point(|k| *k <= target + TIME_EPSILON_S);
            let Some(keyframe) = index.checked_sub(1).map(|i| self.keyframes_s[i]) else {
                return false;
            };
            return match position {
                Some(position) => keyframe > position + TIME_EPSILON_S,
                None => keyframe > TIME_EPSILON_S,
            };
        }
        let position = position.unwrap_or(0.0);
        target - position
            > observed_gap
                .unwrap_or(DEFAULT_SEEK_GAP_S)
                .max(DEFAULT_SEEK_GAP_S)
    }

    fn seek(&mut self, target: f64) -> bool {
        let timestamp_us =
            ((target + self.start_offset_s) * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64;
        match self.video.input.seek(timestamp_us, ..timestamp_us) {
            Ok(()) => {
                self.decoder.flush();
                self.stats.seeks += 1;
                true
            }
            Err(error) => {
                debug!(uri = %self.video.uri, %error, target, "seek failed, decoding forward");
                false
            }
        }
    }

    fn check_budgets(&self) -> Result<()> {
        if self.video.deadline.expired() {
            return Err(MediaError::BudgetExceeded {
                uri: self.video.uri.clone(),
                budget: Budget::Time,
                detail: format!(
                    "{} of {} frames kept after {:?}",
                    self.stats.frames_kept,
                    self.targets.len(),
                    self.video.deadline.budget()
                ),
            });
        }
        if self.stats.frames_decoded > self.max_decoded_frames {
            return Err(MediaError::BudgetExceeded {
                uri: self.video.uri.clone(),
                budget: Budget::DecodedFrames,
                detail: format!(
                    "decoded {} frames for {} of {} targets",
                    self.stats.frames_decoded,
                    self.stats.frames_kept,
                    self.targets.len()
                ),
            });
        }
        Ok(())
    }

    fn run(mut self, mut on_frame: impl FnMut(Frame) -> Result<()>) -> Result<SampleStats> {
        let mut converter = RgbConverter::new();
        let mut packet = ffmpeg::Packet::empty();
        let mut decoded = ffmpeg::frame::Video::empty();
        let mut next_target = 0usize;
        let mut packet_position: Option<f64> = None;
        let mut last_keyframe_packet: Option<f64> = None;
        let mut observed_gap: Option<f64> = None;
        let mut seeking_enabled = true;
        let mut last_seek_target: Option<usize> = None;
        let mut consecutive_errors = 0u32;
        let mut last_emitted: Option<f64> = None;
        let mut last_frame_t: Option<f64> = None;

        while next_target < self.targets.len() {
            self.check_budgets()?;
            let target = self.targets[next_target];
            // One seek per target at most: a stream without timestamps must not seek forever.
            if seeking_enabled
                && last_seek_target != Some(next_target)
                && self.should_seek(target, packet_position, observed_gap)
            {
                last_seek_target = Some(next_target);
                if self.seek(target) {
                    packet_position = None;
                    last_keyframe_packet = None;
                } else {
                    seeking_enabled = false;
                }
            }
            // Demux one packet of the video stream.
            let end_of_stream = loop {
                match packet.read(&mut self.video.input) {
                    Ok(()) if packet.stream() == self.video.video_index => break false,
                    Ok(()) => {}
                    Err(ffmpeg::Error::Eof) => break true,
                    Err(error) => {
                        if let Some(store_error) = self.video.shared.take_error() {
                            return Err(store_error);
                        }
                        if matches!(error, ffmpeg::Error::Exit) {
                            return Err(self.video.read_error("reading packets", error));
                        }
                        // A damaged tail: treat like the end, the end-of-stream checks decide.
                        debug!(uri = %self.video.uri, %error, "demuxing stopped");
                        break true;
                    }
                }
            };
            if end_of_stream {
                if self.decoder.send_eof().is_ok() {
                    self.drain(
                        &mut decoded,
                        &mut converter,
                        &mut next_target,
                        &mut last_emitted,
                        &mut last_frame_t,
                        &mut on_frame,
                    )?;
                }
                break;
            }
            let packet_time = packet.pts().or(packet.dts()).map(|ts| self.seconds(ts));
            if let Some(time) = packet_time {
                packet_position = Some(packet_position.map_or(time, |p: f64| p.max(time)));
                if packet.is_key() {
                    if let Some(previous) = last_keyframe_packet
                        && time > previous
                    {
                        let gap = time - previous;
                        observed_gap = Some(observed_gap.map_or(gap, |g: f64| g.max(gap)));
                    }
                    last_keyframe_packet = Some(time);
                }
            }
            if self.skip_nonref {
                let far_before_target =
                    packet_time.is_some_and(|time| time < target - 2.0 * self.frame_interval_s);
                self.decoder.skip_frame(if far_before_target {
                    ffmpeg::Discard::NonReference
                } else {
                    ffmpeg::Discard::Default
                });
            }
            self.stats.packets_decoded += 1;
            match self.decoder.send_packet(&packet) {
                Ok(()) => consecutive_errors = 0,
                Err(ffmpeg::Error::InvalidData) => {
                    consecutive_errors += 1;
                    if consecutive_errors > MAX_CONSECUTIVE_DECODE_ERRORS {
                        return Err(MediaError::Corrupt {
                            uri: self.video.uri.clone(),
                            reason: format!("{consecutive_errors} undecodable packets in a row"),
                        });
                    }
                    continue;
                }
                Err(error) => return Err(self.video.read_error("decoding", error)),
            }
            self.drain(
                &mut decoded,
                &mut converter,
                &mut next_target,
                &mut last_emitted,
                &mut last_frame_t,
                &mut on_frame,
            )?;
        }

        if next_target < self.targets.len() {
            self.finish_early(next_target, last_frame_t)?;
        }
        self.stats.bytes_fetched = self
            .video
            .shared
            .bytes_fetched
            .load(std::sync::atomic::Ordering::Relaxed);
        self.stats.requests = self
            .video
            .shared
            .requests
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(self.stats)
    }

    /// Decides what running out of stream before the last target means: a truncated upload is
    /// an error; a container that merely declares more than it holds gives the frames it has.
    fn finish_early(&mut self, next_target: usize, last_frame_t: Option<f64>) -> Result<()> {
        let uri = self.video.uri.clone();
        let declared_s = self.stats.duration_s.unwrap_or(0.0);
        if self.video.looks_truncated() {
            return Err(MediaError::Truncated {
                uri,
                decoded_until_s: last_frame_t.unwrap_or(0.0),
                declared_s,
            });
        }
        if self.stats.frames_kept == 0 {
            return Err(MediaError::NoFrames { uri });
        }
        warn!(
            %uri,
            kept = self.stats.frames_kept,
            planned = self.targets.len(),
            next_target = self.targets[next_target],
            last_frame = last_frame_t.unwrap_or(0.0),
            "stream ended before the declared duration"
        );
        self.stats.ended_early = true;
        Ok(())
    }

    /// Takes every frame the decoder has ready; keeps those that are the first at or after a
    /// pending target.
    fn drain(
        &mut self,
        decoded: &mut ffmpeg::frame::Video,
        converter: &mut RgbConverter,
        next_target: &mut usize,
        last_emitted: &mut Option<f64>,
        last_frame_t: &mut Option<f64>,
        on_frame: &mut impl FnMut(Frame) -> Result<()>,
    ) -> Result<()> {
        loop {
            match self.decoder.receive_frame(decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    return Ok(());
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(error) => return Err(self.video.read_error("decoding", error)),
            }
            self.stats.frames_decoded += 1;
            let t = match decoded.timestamp().or(decoded.pts()) {
                Some(timestamp) => self.seconds(timestamp),
                None => last_frame_t.map_or(0.0, |t| t + self.frame_interval_s),
            };
            *last_frame_t = Some(t);
            let mut kept_for: Option<f64> = None;
            while *next_target < self.targets.len()
                && t + TIME_EPSILON_S >= self.targets[*next_target]
            {
                if kept_for.is_none() && last_emitted.is_none_or(|e| t > e + TIME_EPSILON_S) {
                    kept_for = Some(self.targets[*next_target]);
                }
                *next_target += 1;
            }
            let Some(target_s) = kept_for else { continue };
            if decoded.width() == 0 || decoded.height() == 0 {
                continue;
            }
            let (width, height, rgb) = converter
                .convert(decoded, self.rotation)
                .map_err(|error| self.video.read_error("converting to rgb", error))?;
            *last_emitted = Some(t);
            let frame = Frame {
                index: self.stats.frames_kept,
                t_s: t,
                target_s,
                width,
                height,
                rgb,
            };
            self.stats.frames_kept += 1;
            on_frame(frame)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(fps: f64, max_frames: usize, start_s: f64, end_s: Option<f64>) -> SamplingSpec {
        SamplingSpec {
            fps,
            max_frames,
            start_s,
            end_s,
        }
    }

    #[test]
    fn targets_follow_the_rate_when_under_the_cap() {
        let targets = plan_targets(&spec(1.0, 16, 0.0, None), Some(10.0), Some(25.0)).unwrap();
        assert_eq!(targets, (0..10).map(f64::from).collect::<Vec<_>>());
        let targets = plan_targets(&spec(2.0, 16, 3.0, Some(5.0)), Some(10.0), Some(25.0)).unwrap();
        assert_eq!(targets, vec![3.0, 3.5, 4.0, 4.5]);
    }

    #[test]
    fn targets_spread_like_linspace_over_the_cap() {
        let targets = plan_targets(&spec(1.0, 16, 0.0, None), Some(600.0), Some(25.0)).unwrap();
        assert_eq!(targets.len(), 16);
        assert_eq!(targets[0], 0.0);
        assert!((targets[15] - 599.96).abs() < 1e-9);
        let step = targets[1] - targets[0];
        assert!(
            targets
                .windows(2)
                .all(|w| ((w[1] - w[0]) - step).abs() < 1e-9)
        );
    }

    #[test]
    fn targets_never_outnumber_the_frames() {
        let targets = plan_targets(&spec(30.0, 100, 0.0, None), Some(1.0), Some(10.0)).unwrap();
        assert_eq!(targets.len(), 10);
        let single = plan_targets(&spec(1.0, 16, 0.0, None), Some(0.04), Some(25.0)).unwrap();
        assert_eq!(single, vec![0.0]);
    }

    #[test]
    fn bad_specs_are_refused() {
        assert!(plan_targets(&spec(0.0, 16, 0.0, None), Some(10.0), None).is_err());
        assert!(plan_targets(&spec(1.0, 0, 0.0, None), Some(10.0), None).is_err());
        assert!(plan_targets(&spec(1.0, 16, 5.0, Some(4.0)), Some(10.0), None).is_err());
        assert!(plan_targets(&spec(1.0, 16, 12.0, None), Some(10.0), None).is_err());
        assert!(plan_targets(&spec(f64::NAN, 16, 0.0, None), Some(10.0), None).is_err());
    }
}
