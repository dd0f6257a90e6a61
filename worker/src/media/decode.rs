//! The decode loop of frame sampling: given the [`Plan`] made in `sample.rs`, decoders walk the
//! video from keyframe to keyframe, keep the frame nearest each target, and stop at the last
//! one, within the call's time and decoded-frame budgets. One [`Sampler`] runs per decoding
//! thread; `parallel.rs` runs several side by side over one [`CallShared`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ffmpeg::codec::threading;
use ffmpeg_next as ffmpeg;
use tracing::{debug, warn};

use super::convert::RgbConverter;
use super::demux::OpenedVideo;
use super::error::{Budget, MediaError, Result};
use super::probe::rate;
use super::reader::Deadline;
use super::sample::*;

/// Codecs whose decoders skip non-reference frames without harming later frames.
fn skip_nonref_is_safe(id: ffmpeg::codec::Id) -> bool {
    use ffmpeg::codec::Id;
    matches!(
        id,
        Id::H264 | Id::HEVC | Id::MPEG4 | Id::MPEG2VIDEO | Id::MPEG1VIDEO
    )
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
    pub(super) fn new(deadline: Deadline, max_decoded_frames: u64) -> Self {
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
    pub(super) kept: usize,
    last_t: Option<f64>,
}

impl<F: FnMut(Frame) -> Result<()>> Delivery<F> {
    pub(super) fn new(on_frame: F) -> Self {
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
pub(super) fn finish(plan: &Plan, end: RunEnd, kept: usize, uri: &str) -> Result<bool> {
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
    pub(super) fetch_nanos: u64,
}

impl std::ops::AddAssign for Counters {
    fn add_assign(&mut self, other: Self) {
        self.frames_decoded += other.frames_decoded;
        self.packets_decoded += other.packets_decoded;
        self.seeks += other.seeks;
        self.bytes_fetched += other.bytes_fetched;
        self.requests += other.requests;
        self.fetch_nanos += other.fetch_nanos;
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
            fetch_nanos: self.video.shared.fetch_nanos.load(Ordering::Relaxed),
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
