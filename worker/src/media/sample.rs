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

use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ffmpeg::codec::threading;
use ffmpeg_next as ffmpeg;
use serde::Serialize;
use tracing::{debug, warn};

use super::convert::{Orientation, RgbConverter};
use super::demux::OpenedVideo;
use super::error::{Budget, MediaError, Result};
use super::parallel;
use super::probe::rate;
use super::reader::{Deadline, ReadOptions};
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

/// Codecs whose decoders skip non-reference frames without harming later frames.
fn skip_nonref_is_safe(id: ffmpeg::codec::Id) -> bool {
    use ffmpeg::codec::Id;
    matches!(
        id,
        Id::H264 | Id::HEVC | Id::MPEG4 | Id::MPEG2VIDEO | Id::MPEG1VIDEO
    )
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

/// What every decoder of one call shares: the clock, the decoded-frame budget and the signal to
/// stop early.
pub(super) struct CallShared {
    pub(super) deadline: Deadline,
    max_decoded_frames: u64,
    frames_decoded: AtomicU64,
    stopped: AtomicBool,
}

impl CallShared {
    fn new(deadline: Deadline, max_decoded_frames: u64) -> Self {
        Self {
            deadline,
            max_decoded_frames,
            frames_decoded: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
        }
    }

    /// Tells every decoder to stop at its next packet: the caller has what it needs, or failed.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub(super) fn stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// Hands frames to the caller in order: numbers them and drops a frame already handed over for an
/// earlier target (two runs of targets can end on the same frame when a keyframe is late).
pub(super) struct Delivery<F> {
    on_frame: F,
    kept: usize,
    last_t: Option<f64>,
}

impl<F: FnMut(Frame) -> Result<()>> Delivery<F> {
    fn new(on_frame: F) -> Self {
        Self {
            on_frame,
            kept: 0,
            last_t: None,
        }
    }

    pub(super) fn deliver(&mut self, mut frame: Frame) -> Result<()> {
        if self
            .last_t
            .is_some_and(|last| frame.t_s <= last + TIME_EPSILON_S)
        {
            return Ok(());
        }
        frame.index = self.kept;
        self.kept += 1;
        self.last_t = Some(frame.t_s);
        (self.on_frame)(frame)
    }
}

/// How a run over some targets ended.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum RunEnd {
    /// Every target was served.
    Complete,
    /// The stream ended before `next_target_s`.
    StreamEnded {
        next_target_s: f64,
        last_frame_t: Option<f64>,
        /// The bytes end before the data the container points at: an interrupted upload.
        truncated: bool,
    },
    /// [`CallShared::stop`] was called.
    Stopped,
}

/// Decides what running out of stream before the last target means: a truncated upload is an
/// error; a container that merely declares more than it holds gives the frames it has. Returns
/// whether the stream ended early.
fn finish(plan: &Plan, end: RunEnd, kept: usize, uri: &str) -> Result<bool> {
    let RunEnd::StreamEnded {
        next_target_s,
        last_frame_t,
        truncated,
    } = end
    else {
        return Ok(false);
    };
    let uri = uri.to_owned();
    if truncated {
        return Err(MediaError::Truncated {
            uri,
            decoded_until_s: last_frame_t.unwrap_or(0.0),
            declared_s: plan.duration_s.unwrap_or(0.0),
        });
    }
    if kept == 0 {
        return Err(MediaError::NoFrames { uri });
    }
    warn!(
        %uri,
        kept,
        planned = plan.targets.len(),
        next_target = next_target_s,
        last_frame = last_frame_t.unwrap_or(0.0),
        "stream ended before the declared duration"
    );
    Ok(true)
}

/// Work counters of one decoder.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Counters {
    pub(super) frames_decoded: u64,
    pub(super) packets_decoded: u64,
    pub(super) seeks: u64,
    pub(super) bytes_fetched: u64,
    pub(super) requests: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, other: Self) {
        self.frames_decoded += other.frames_decoded;
        self.packets_decoded += other.packets_decoded;
        self.seeks += other.seeks;
        self.bytes_fetched += other.bytes_fetched;
        self.requests += other.requests;
    }
}

/// One demuxer and decoder over one opened copy of the video. It serves runs of targets in
/// ascending order and carries its position from one run to the next, so it seeks only when
/// the next target's keyframe lies beyond what it has already read.
pub(super) struct Sampler<'call> {
    video: OpenedVideo,
    decoder: ffmpeg::decoder::Video,
    packet: ffmpeg::Packet,
    decoded: ffmpeg::frame::Video,
    time_base: f64,
    start_offset_s: f64,
    frame_interval_s: f64,
    skip_nonref: bool,
    /// Targets, keyframes and orientation, decided once for every decoder of the call.
    plan: &'call Plan,
    call: &'call CallShared,
    counters: Counters,
    /// Latest presentation time of a video packet read since the last seek.
    packet_position: Option<f64>,
    last_keyframe_packet: Option<f64>,
    /// Longest keyframe interval seen, to decide on seeking when there is no index.
    observed_gap: Option<f64>,
    seeking_enabled: bool,
    /// Time of the last frame handed over, so one frame is never kept for two runs.
    last_emitted: Option<f64>,
    last_frame_t: Option<f64>,
    consecutive_errors: u32,
}

impl<'call> Sampler<'call> {
    /// Opens a decoder for `video`; `threads` 0 lets FFmpeg choose, 1 decodes on the calling
    /// thread only.
    pub(super) fn new(
        video: OpenedVideo,
        plan: &'call Plan,
        threads: usize,
        call: &'call CallShared,
    ) -> Result<Self> {
        let uri = video.uri.clone();
        let start_offset_s = video.start_time_s();
        let (parameters, stream_time_base, video_fps) = {
            let stream = video.video_stream();
            let fps = rate(stream.avg_frame_rate()).or_else(|| rate(stream.rate()));
            (stream.parameters(), stream.time_base(), fps)
        };
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
            count: threads,
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
        Ok(Self {
            video,
            decoder,
            packet: ffmpeg::Packet::empty(),
            decoded: ffmpeg::frame::Video::empty(),
            time_base: f64::from(stream_time_base),
            start_offset_s,
            frame_interval_s: video_fps
                .filter(|fps| *fps > 0.0)
                .map_or(0.04, |fps| 1.0 / fps),
            skip_nonref: skip_nonref_is_safe(codec_id),
            plan,
            call,
            counters: Counters::default(),
            packet_position: None,
            last_keyframe_packet: None,
            observed_gap: None,
            seeking_enabled: true,
            last_emitted: None,
            last_frame_t: None,
            consecutive_errors: 0,
        })
    }

    /// Refuses pictures larger than `max_pixels`, before anything is decoded.
    pub(super) fn check_size(&self, max_pixels: u64) -> Result<()> {
        let (width, height) = (self.decoder.width(), self.decoder.height());
        if u64::from(width) * u64::from(height) > max_pixels {
            return Err(MediaError::TooLarge {
                uri: self.video.uri.clone(),
                width,
                height,
                limit: max_pixels,
            });
        }
        Ok(())
    }

    /// The work done so far, reads from the store included.
    pub(super) fn counters(&self) -> Counters {
        Counters {
            bytes_fetched: self.video.shared.bytes_fetched.load(Ordering::Relaxed),
            requests: self.video.shared.requests.load(Ordering::Relaxed),
            ..self.counters
        }
    }

    /// Seconds from the start of the video for a timestamp in the stream's time base.
    fn seconds(&self, timestamp: i64) -> f64 {
        timestamp as f64 * self.time_base - self.start_offset_s
    }

    /// Whether to seek for `target` given the last demuxed video packet time `position`.
    fn should_seek(&self, target: f64) -> bool {
        let position = self.packet_position;
        let keyframes_s = &self.plan.keyframes_s;
        if !keyframes_s.is_empty() {
            // The last keyframe at or before the target; seeking pays off only if it lies ahead.
            let index = keyframes_s.partition_point(|k| *k <= target + TIME_EPSILON_S);
            let Some(keyframe) = index.checked_sub(1).map(|i| keyframes_s[i]) else {
                return false;
            };
            return match position {
                Some(position) => keyframe > position + TIME_EPSILON_S,
                None => keyframe > TIME_EPSILON_S,
            };
        }
        let position = position.unwrap_or(0.0);
        target - position
            > self
                .observed_gap
                .unwrap_or(DEFAULT_SEEK_GAP_S)
                .max(DEFAULT_SEEK_GAP_S)
    }

    fn seek(&mut self, target: f64) -> bool {
        let timestamp_us =
            ((target + self.start_offset_s) * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64;
        match self.video.input.seek(timestamp_us, ..timestamp_us) {
            Ok(()) => {
                self.decoder.flush();
                self.counters.seeks += 1;
                self.packet_position = None;
                self.last_keyframe_packet = None;
                true
            }
            Err(error) => {
                debug!(uri = %self.video.uri, %error, target, "seek failed, decoding forward");
                false
            }
        }
    }

    fn check_budgets(&self, kept: usize, targets: usize) -> Result<()> {
        if self.call.deadline.expired() {
            return Err(MediaError::BudgetExceeded {
                uri: self.video.uri.clone(),
                budget: Budget::Time,
                detail: format!(
                    "{kept} of {targets} frames of this run kept after {:?}",
                    self.call.deadline.budget()
                ),
            });
        }
        let decoded = self.call.frames_decoded.load(Ordering::Relaxed);
        if decoded > self.call.max_decoded_frames {
            return Err(MediaError::BudgetExceeded {
                uri: self.video.uri.clone(),
                budget: Budget::DecodedFrames,
                detail: format!(
                    "decoded {decoded} frames, over the budget of {}, with {kept} of {targets} \
                     frames of this run kept",
                    self.call.max_decoded_frames
                ),
            });
        }
        Ok(())
    }

    /// Decodes forward (seeking where it pays) until a frame is handed to `on_frame` for every
    /// one of `targets`, the stream ends, or the call is stopped.
    pub(super) fn run_targets(
        &mut self,
        targets: &[f64],
        converter: &mut RgbConverter,
        on_frame: &mut impl FnMut(Frame) -> Result<()>,
    ) -> Result<RunEnd> {
        // Targets at or before the last frame handed over are served by it already: it was the
        // first frame at or after an earlier target, so nothing lies between.
        let mut next_target = self.last_emitted.map_or(0, |emitted| {
            targets.partition_point(|target| *target <= emitted + TIME_EPSILON_S)
        });
        let mut kept = 0usize;
        let mut last_seek_target: Option<usize> = None;
        while next_target < targets.len() {
            if self.call.stopped() {
                return Ok(RunEnd::Stopped);
            }
            self.check_budgets(kept, targets.len())?;
            let target = targets[next_target];
            // One seek per target at most: a stream without timestamps must not seek forever.
            if self.seeking_enabled
                && last_seek_target != Some(next_target)
                && self.should_seek(target)
            {
                last_seek_target = Some(next_target);
                if !self.seek(target) {
                    self.seeking_enabled = false;
                }
            }
            if !self.read_video_packet()? {
                if self.decoder.send_eof().is_ok() {
                    self.drain(targets, &mut next_target, &mut kept, converter, on_frame)?;
                }
                break;
            }
            let packet_time = self
                .packet
                .pts()
                .or(self.packet.dts())
                .map(|ts| self.seconds(ts));
            self.note_packet_time(packet_time);
            if self.skip_nonref {
                let far_before_target =
                    packet_time.is_some_and(|time| time < target - 2.0 * self.frame_interval_s);
                self.decoder.skip_frame(if far_before_target {
                    ffmpeg::Discard::NonReference
                } else {
                    ffmpeg::Discard::Default
                });
            }
            self.counters.packets_decoded += 1;
            match self.decoder.send_packet(&self.packet) {
                Ok(()) => self.consecutive_errors = 0,
                Err(ffmpeg::Error::InvalidData) => {
                    self.consecutive_errors += 1;
                    if self.consecutive_errors > MAX_CONSECUTIVE_DECODE_ERRORS {
                        return Err(MediaError::Corrupt {
                            uri: self.video.uri.clone(),
                            reason: format!(
                                "{} undecodable packets in a row",
                                self.consecutive_errors
                            ),
                        });
                    }
                    continue;
                }
                Err(error) => return Err(self.video.read_error("decoding", error)),
            }
            self.drain(targets, &mut next_target, &mut kept, converter, on_frame)?;
        }
        if next_target < targets.len() {
            // The decoder has been sent its end; after a seek it would take packets again, but
            // nothing lies beyond the end of the stream.
            return Ok(RunEnd::StreamEnded {
                next_target_s: targets[next_target],
                last_frame_t: self.last_frame_t,
                truncated: self.video.looks_truncated(),
            });
        }
        Ok(RunEnd::Complete)
    }

    /// Reads packets until one of the video stream is in `self.packet`; false at the end of the
    /// stream (or of its readable part).
    fn read_video_packet(&mut self) -> Result<bool> {
        loop {
            match self.packet.read(&mut self.video.input) {
                Ok(()) if self.packet.stream() == self.video.video_index => return Ok(true),
                Ok(()) => {}
                Err(ffmpeg::Error::Eof) => return Ok(false),
                Err(error) => {
                    if let Some(store_error) = self.video.shared.take_error() {
                        return Err(store_error);
                    }
                    if matches!(error, ffmpeg::Error::Exit) {
                        return Err(self.video.read_error("reading packets", error));
                    }
                    // A damaged tail: treat like the end, the end-of-stream checks decide.
                    debug!(uri = %self.video.uri, %error, "demuxing stopped");
                    return Ok(false);
                }
            }
        }
    }

    /// Tracks the read position and the keyframe interval from a packet's time.
    fn note_packet_time(&mut self, packet_time: Option<f64>) {
        let Some(time) = packet_time else { return };
        self.packet_position = Some(self.packet_position.map_or(time, |p| p.max(time)));
        if self.packet.is_key() {
            if let Some(previous) = self.last_keyframe_packet
                && time > previous
            {
                let gap = time - previous;
                self.observed_gap = Some(self.observed_gap.map_or(gap, |g| g.max(gap)));
            }
            self.last_keyframe_packet = Some(time);
        }
    }

    /// Takes every frame the decoder has ready; keeps those that are the first at or after a
    /// pending target.
    fn drain(
        &mut self,
        targets: &[f64],
        next_target: &mut usize,
        kept: &mut usize,
        converter: &mut RgbConverter,
        on_frame: &mut impl FnMut(Frame) -> Result<()>,
    ) -> Result<()> {
        // Frames after the last target stay in the decoder for the next run.
        while *next_target < targets.len() {
            match self.decoder.receive_frame(&mut self.decoded) {
                Ok(()) => {}
                Err(ffmpeg::Error::Other { errno }) if errno == ffmpeg::util::error::EAGAIN => {
                    return Ok(());
                }
                Err(ffmpeg::Error::Eof) => return Ok(()),
                Err(ffmpeg::Error::InvalidData) => continue,
                Err(error) => return Err(self.video.read_error("decoding", error)),
            }
            self.counters.frames_decoded += 1;
            self.call.frames_decoded.fetch_add(1, Ordering::Relaxed);
            let t = match self.decoded.timestamp().or(self.decoded.pts()) {
                Some(timestamp) => self.seconds(timestamp),
                None => self.last_frame_t.map_or(0.0, |t| t + self.frame_interval_s),
            };
            self.last_frame_t = Some(t);
            let mut kept_for: Option<f64> = None;
            while *next_target < targets.len() && t + TIME_EPSILON_S >= targets[*next_target] {
                if kept_for.is_none() && self.last_emitted.is_none_or(|e| t > e + TIME_EPSILON_S) {
                    kept_for = Some(targets[*next_target]);
                }
                *next_target += 1;
            }
            let Some(target_s) = kept_for else { continue };
            if self.decoded.width() == 0 || self.decoded.height() == 0 {
                continue;
            }
            let (width, height, rgb) = converter
                .convert(&self.decoded, self.plan.orientation)
                .map_err(|error| self.video.read_error("converting to rgb", error))?;
            self.last_emitted = Some(t);
            *kept += 1;
            on_frame(Frame {
                // Numbered in order of delivery by `Delivery`.
                index: 0,
                t_s: t,
                target_s,
                width,
                height,
                rgb,
            })?;
        }
        Ok(())
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
