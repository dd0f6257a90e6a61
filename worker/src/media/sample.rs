//! Frame sampling the way Open-o3 Video was trained and evaluated: frames at a target rate
//! (default 1 fps) over a segment `[start, end)`, at most `max_frames` of them (default 16), spread
//! evenly like `numpy.linspace` when the rate would give more; each frame tagged with its
//! presentation time in seconds from the start of the video and converted to upright RGB24.
//!
//! Decoding reads only what the targets need: it seeks to the keyframe before a target only when
//! that keyframe lies beyond the current decoding position (otherwise decoding forward is
//! cheaper), skips non-reference frames well before a target for codecs where that is safe, and
//! stops after the last target. Runs of targets after different keyframes are decoded side by
//! side when the container indexes its keyframes (see `parallel.rs`). A time budget and a
//! decoded-frame budget bound every call.
//!
//! This file holds the request types, the public entry points and the plan (which times to
//! keep, which keyframes govern them); the decode loop itself is in `decode.rs`.

use std::ops::Range;
use std::time::Duration;

use serde::Serialize;
use tracing::debug;

use super::convert::{Orientation, RgbConverter};
use super::decode::{CallShared, Delivery, Sampler, finish};
use super::demux::OpenedVideo;
use super::error::{MediaError, Result};
use super::parallel;
use super::probe::rate;
use super::reader::{Deadline, ReadOptions};
use super::source::VideoSource;

/// Frames decoded per kept frame allowed by the automatic frame budget (a 10 s GOP at 120 fps).
const DECODED_FRAMES_PER_TARGET: u64 = 1200;
/// Decoded frames allowed on top of the per-target budget.
const DECODED_FRAMES_BASE: u64 = 2000;
/// Seek ahead when no index is known and the next target is at least this far away.
pub(super) const DEFAULT_SEEK_GAP_S: f64 = 2.0;
/// Consecutive packets the decoder may reject before the stream counts as corrupt.
pub(super) const MAX_CONSECUTIVE_DECODE_ERRORS: u32 = 64;
/// Slack when comparing times in seconds, well below any frame interval.
pub(super) const TIME_EPSILON_S: f64 = 1e-6;

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
    /// Decoding threads: 0 uses every core. Runs of targets after different keyframes go to
    /// decoders side by side, one per thread (automatically at most 8, the other cores becoming
    /// their frame threads); a single run gets one decoder with FFmpeg's frame threading.
    pub threads: usize,
    /// Bytes of decoded frames that decoders running ahead may hold while the caller still waits
    /// for an earlier frame; at least one frame is always allowed.
    pub reorder_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            time_budget: Duration::from_secs(300),
            max_decoded_frames: None,
            max_pixels: 8192 * 4352,
            threads: 0,
            reorder_bytes: 256 << 20,
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
    /// Decoders that ran side by side (1 when sampling ran on one decoder).
    pub decoders: usize,
    /// Bytes fetched from the store.
    pub bytes_fetched: u64,
    /// Ranged requests made to the store.
    pub requests: u64,
    /// Seconds spent waiting on the store's ranged reads, summed over the decoders.
    pub fetch_s: f64,
    /// Clockwise rotation applied.
    pub rotation: u32,
    /// Whether frames were mirrored left to right after the rotation (a flipped display matrix).
    pub mirrored: bool,
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

/// Samples frames and hands each to `on_frame` in presentation order as soon as it can, so a
/// caller that resizes or writes frames never holds them all at full size. An error from
/// `on_frame` stops sampling and is returned.
///
/// When the container indexes its keyframes and targets fall after more than one of them, the
/// runs of targets between keyframes are independent of each other: they are decoded by several
/// single-threaded decoders at once (see [`super::parallel`]), which uses the cores better than
/// one frame-threaded decoder once non-reference frames are skipped.
pub fn sample_source_with(
    source: &VideoSource,
    spec: &SamplingSpec,
    options: &SampleOptions,
    on_frame: impl FnMut(Frame) -> Result<()>,
) -> Result<SampleStats> {
    validate_spec(spec)?;
    let deadline = Deadline::new(options.limits.time_budget);
    let mut video = OpenedVideo::open(source, &options.read, deadline)?;
    let plan = Plan::new(&mut video, spec, &options.limits)?;
    let call = CallShared::new(deadline, plan.max_decoded_frames);
    let mut delivery = Delivery::new(on_frame);
    let groups = keyframe_groups(&plan.targets, &plan.keyframes_s);
    let layout = parallel::layout(options.limits.threads, groups.len());
    // The first decoder runs over the copy opened for planning, on its own or beside others.
    let threads = layout.map_or(options.limits.threads, |layout| layout.threads_per_decoder);
    let mut first = Sampler::new(video, &plan, threads, &call)?;
    first.check_size(options.limits.max_pixels)?;
    let (end, counters) = match layout {
        Some(layout) => parallel::run(
            parallel::Job {
                source,
                read: &options.read,
                plan: &plan,
                groups: &groups,
                call: &call,
                reorder_bytes: options.limits.reorder_bytes,
            },
            layout,
            first,
            &mut delivery,
        )?,
        None => {
            let mut converter = RgbConverter::new();
            let end = first.run_targets(&plan.targets, &mut converter, &mut |frame| {
                delivery.deliver(frame)
            })?;
            (end, first.counters())
        }
    };
    let ended_early = finish(&plan, end, delivery.kept, &source.uri)?;
    Ok(SampleStats {
        targets: plan.targets.len(),
        frames_kept: delivery.kept,
        frames_decoded: counters.frames_decoded,
        packets_decoded: counters.packets_decoded,
        seeks: counters.seeks,
        bytes_fetched: counters.bytes_fetched,
        requests: counters.requests,
        fetch_s: counters.fetch_nanos as f64 * 1e-9,
        decoders: layout.map_or(1, |layout| layout.decoders),
        rotation: plan.orientation.rotation,
        mirrored: plan.orientation.mirrored,
        duration_s: plan.duration_s,
        ended_early,
    })
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

/// Splits sorted `targets` into runs that follow the same keyframe: each run can be decoded on
/// its own after a seek to its keyframe. Without a keyframe index everything is one run.
pub(super) fn keyframe_groups(targets: &[f64], keyframes_s: &[f64]) -> Vec<Range<usize>> {
    if targets.is_empty() {
        return Vec::new();
    }
    let governing =
        |target: f64| keyframes_s.partition_point(|keyframe| *keyframe <= target + TIME_EPSILON_S);
    let mut groups = Vec::new();
    let mut start = 0;
    for index in 1..targets.len() {
        if governing(targets[index]) != governing(targets[start]) {
            groups.push(start..index);
            start = index;
        }
    }
    groups.push(start..targets.len());
    groups
}

/// What is decided once per call from the first opened copy of the video.
pub(super) struct Plan {
    /// Target times, ascending.
    pub(super) targets: Vec<f64>,
    /// Indexed keyframe times, ascending; empty when the container has no index.
    pub(super) keyframes_s: Vec<f64>,
    pub(super) orientation: Orientation,
    pub(super) duration_s: Option<f64>,
    pub(super) max_decoded_frames: u64,
}

impl Plan {
    fn new(video: &mut OpenedVideo, spec: &SamplingSpec, limits: &DecodeLimits) -> Result<Self> {
        let duration_s = video.duration_s();
        let keyframes_s = video.indexed_keyframes_s();
        let video_fps = {
            let stream = video.video_stream();
            rate(stream.avg_frame_rate()).or_else(|| rate(stream.rate()))
        };
        let targets = plan_targets(spec, duration_s, video_fps)?;
        let max_decoded_frames = limits
            .max_decoded_frames
            .unwrap_or(DECODED_FRAMES_BASE + DECODED_FRAMES_PER_TARGET * targets.len() as u64);
        debug!(
            uri = %video.uri,
            targets = targets.len(),
            keyframes = keyframes_s.len(),
            "sampling planned"
        );
        Ok(Self {
            targets,
            keyframes_s,
            orientation: video.orientation(),
            duration_s,
            max_decoded_frames,
        })
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
    fn runs_of_targets_break_at_keyframes() {
        let targets = [0.0, 1.0, 2.0, 3.0, 9.5, 10.0, 10.5];
        assert_eq!(
            keyframe_groups(&targets, &[0.0, 2.0, 10.0]),
            vec![0..2, 2..5, 5..7]
        );
        // Targets before the first indexed keyframe form a run of their own.
        assert_eq!(keyframe_groups(&[0.0, 0.5, 1.5], &[1.0]), vec![0..2, 2..3]);
        assert_eq!(keyframe_groups(&targets, &[]), vec![0..7]);
        assert!(keyframe_groups(&[], &[0.0]).is_empty());
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
