//! Opening a video for demuxing: FFmpeg reads through [`ObjectReader`] (custom I/O, no scratch
//! file), the video stream is chosen, its display rotation and keyframe index are read, and
//! FFmpeg's error codes are turned into the typed [`MediaError`] variants.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use ffmpeg::format::context::{Input, StreamIo};
use ffmpeg::media::Type as MediaType;
use ffmpeg_next as ffmpeg;

use super::convert::Orientation;
use super::error::{Budget, MediaError, Result};
use super::reader::{Deadline, ObjectReader, ReadOptions, ReaderShared};
use super::source::VideoSource;

/// FFmpeg's `AVINDEX_KEYFRAME` flag on an index entry.
const INDEX_KEYFRAME: i32 = 0x0001;
/// Bytes FFmpeg may read to identify the container and its streams.
const PROBE_SIZE_BYTES: &str = "5000000";
/// Microseconds of media FFmpeg may read to find stream parameters.
const ANALYZE_DURATION_US: &str = "5000000";

/// Initialises FFmpeg once and keeps its own logging quiet: failures surface as typed errors.
pub(crate) fn init_ffmpeg() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        if ffmpeg::init().is_ok() {
            ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
        }
    });
}

/// An opened video: the demuxer, the chosen video stream and what the reader saw.
pub(crate) struct OpenedVideo {
    pub(crate) input: Input,
    pub(crate) source: VideoSource,
    pub(crate) read: ReadOptions,
    pub(crate) uri: String,
    pub(crate) size_bytes: u64,
    pub(crate) video_index: usize,
    pub(crate) shared: Arc<ReaderShared>,
    pub(crate) deadline: Deadline,
}

impl OpenedVideo {
    /// Opens `source`; every FFmpeg call made through the result stops with an error once
    /// `deadline` has passed (several copies of one video opened for one call share it).
    pub(crate) fn open(
        source: &VideoSource,
        read: &ReadOptions,
        deadline: Deadline,
    ) -> Result<Self> {
        init_ffmpeg();
        let reader = ObjectReader::open(source, read)?;
        let size_bytes = reader.size();
        let shared = reader.shared();
        let io =
            StreamIo::from_read_seek_with_capacity(reader, 64 * 1024).map_err(|source_error| {
                MediaError::Ffmpeg {
                    uri: source.uri.clone(),
                    context: "allocating the i/o context",
                    source: source_error,
                }
            })?;
        let mut options = ffmpeg::Dictionary::new();
        options.set("probesize", PROBE_SIZE_BYTES);
        options.set("analyzeduration", ANALYZE_DURATION_US);
        // No file name: the container is recognised from its bytes alone, so an extension cannot
        // route garbage to a permissive demuxer (`.bin` is ANSI art to FFmpeg).
        let opened =
            ffmpeg::format::input_from_stream_with_interrupt(io, None, Some(options), move || {
                deadline.expired()
            });
        let input = match opened {
            Ok(input) => input,
            Err(error) => {
                let mut error = open_error(&source.uri, &shared, deadline, error);
                if matches!(error, MediaError::UnrecognizedFormat { .. })
                    && iso_bmff_truncated(source, read)
                {
                    error = MediaError::Truncated {
                        uri: source.uri.clone(),
                        decoded_until_s: 0.0,
                        declared_s: 0.0,
                    };
                }
                return Err(error);
            }
        };
        let video_index = choose_video_stream(&input).ok_or_else(|| MediaError::NoVideoStream {
            uri: source.uri.clone(),
        })?;
        let codec = input
            .stream(video_index)
            .map(|stream| stream.parameters().id());
        if let Some(codec) = codec
            && is_text_art(codec)
        {
            return Err(MediaError::UnrecognizedFormat {
                uri: source.uri.clone(),
                reason: format!("{} is text art, not video", codec.name()),
            });
        }
        Ok(Self {
            input,
            source: source.clone(),
            read: read.clone(),
            uri: source.uri.clone(),
            size_bytes,
            video_index,
            shared,
            deadline,
        })
    }

    /// The chosen video stream.
    pub(crate) fn video_stream(&self) -> ffmpeg::format::stream::Stream<'_> {
        // The index was returned by `choose_video_stream` over this same input.
        self.input
            .stream(self.video_index)
            .expect("video stream index is valid")
    }

    /// The container's start time in seconds: presentation times are reported relative to it,
    /// as `ffmpeg -ss` positions are.
    pub(crate) fn start_time_s(&self) -> f64 {
        // SAFETY: `as_ptr` points at the live format context owned by `self.input`; reading a
        // plain integer field does not mutate or retain it.
        let start = unsafe { (*self.input.as_ptr()).start_time };
        if start == ffmpeg::ffi::AV_NOPTS_VALUE {
            let stream = self.video_stream();
            if stream.start_time() == ffmpeg::ffi::AV_NOPTS_VALUE {
                return 0.0;
            }
            return stream.start_time() as f64 * f64::from(stream.time_base());
        }
        start as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE)
    }

    /// The declared duration in seconds: the container's, else the stream's.
    pub(crate) fn duration_s(&self) -> Option<f64> {
        let container = self.input.duration();
        if container > 0 && container != ffmpeg::ffi::AV_NOPTS_VALUE {
            return Some(container as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE));
        }
        let stream = self.video_stream();
        if stream.duration() > 0 && stream.duration() != ffmpeg::ffi::AV_NOPTS_VALUE {
            return Some(stream.duration() as f64 * f64::from(stream.time_base()));
        }
        None
    }

    /// How to turn (and mirror) decoded pictures for display: the display matrix if the stream
    /// has one, else the legacy `rotate` tag.
    pub(crate) fn orientation(&self) -> Orientation {
        let stream = self.video_stream();
        for side_data in stream.side_data() {
            if side_data.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix
                && let Some(orientation) = orientation_from_display_matrix(side_data.data())
            {
                return orientation;
            }
        }
        let rotation = stream
            .metadata()
            .get("rotate")
            .and_then(|value| value.trim().parse::<f64>().ok())
            .map(snap_rotation)
            .unwrap_or(0);
        Orientation {
            rotation,
            mirrored: false,
        }
    }

    /// Presentation times (seconds from the start) of the keyframes in the demuxer's index, when
    /// the container has one in its header (MP4/MOV); empty otherwise.
    pub(crate) fn indexed_keyframes_s(&mut self) -> Vec<f64> {
        let start_s = self.start_time_s();
        let (time_base, index) = {
            let stream = self.video_stream();
            (f64::from(stream.time_base()), stream.index())
        };
        let mut keyframes = Vec::new();
        // SAFETY: the format context and its streams are owned by `self.input`, which we borrow
        // mutably for the whole block, so nothing else reads or changes the index meanwhile.
        // `index` is a valid stream index (checked by `choose_video_stream`), and each entry
        // pointer is used only before the next index call, as FFmpeg's documentation requires.
        unsafe {
            let context = self.input.as_mut_ptr();
            let stream = *(*context).streams.add(index);
            let count = ffmpeg::ffi::avformat_index_get_entries_count(stream);
            for entry_index in 0..count {
                let entry = ffmpeg::ffi::avformat_index_get_entry(stream, entry_index);
                if entry.is_null() {
                    break;
                }
                if (*entry).flags() & INDEX_KEYFRAME != 0 {
                    keyframes.push((*entry).timestamp as f64 * time_base - start_s);
                }
            }
        }
        keyframes.sort_by(f64::total_cmp);
        keyframes.dedup();
        keyframes
    }

    /// Whether the bytes end before the data the container points at (see
    /// [`iso_bmff_truncated`]), or the demuxer tried to read past the end.
    pub(crate) fn looks_truncated(&self) -> bool {
        self.shared.past_end.load(Ordering::Relaxed) || iso_bmff_truncated(&self.source, &self.read)
    }

    /// Maps an error that FFmpeg returned while reading packets or decoding.
    pub(crate) fn read_error(&self, context: &'static str, error: ffmpeg::Error) -> MediaError {
        map_error(&self.uri, &self.shared, self.deadline, context, error)
    }
}

/// Picks the video stream to sample: the default-flagged one if several, never cover art.
fn choose_video_stream(input: &Input) -> Option<usize> {
    let candidates: Vec<_> = input
        .streams()
        .filter(|stream| stream.parameters().medium() == MediaType::Video)
        .filter(|stream| {
            !stream
                .disposition()
                .contains(ffmpeg::format::stream::Disposition::ATTACHED_PIC)
        })
        .collect();
    candidates
        .iter()
        .find(|stream| {
            stream
                .disposition()
                .contains(ffmpeg::format::stream::Disposition::DEFAULT)
        })
        .or_else(|| candidates.first())
        .map(|stream| stream.index())
}

/// Codecs FFmpeg uses to render text files as pictures: such a "video" is a text file.
fn is_text_art(codec: ffmpeg::codec::Id) -> bool {
    use ffmpeg::codec::Id;
    matches!(codec, Id::ANSI | Id::BINTEXT | Id::XBIN | Id::IDF)
}

/// Whether `source` is an ISO base media file (MP4, MOV) whose top-level boxes claim more bytes
/// than the object has: the signature of an upload cut short. Reads only the box headers.
pub(crate) fn iso_bmff_truncated(source: &VideoSource, read: &ReadOptions) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let small_reads = ReadOptions {
        block_size: 4096,
        readahead_blocks: 1,
        cache_blocks: 2,
        ..read.clone()
    };
    let Ok(mut reader) = ObjectReader::open(source, &small_reads) else {
        return false;
    };
    let size = reader.size();
    let mut offset = 0u64;
    // A file has few top-level boxes; bound the walk anyway.
    for box_index in 0..1024 {
        if offset == size {
            return false;
        }
        let mut header = [0u8; 16];
        if reader.seek(SeekFrom::Start(offset)).is_err()
            || reader.read_exact(&mut header[..8]).is_err()
        {
            // A box header cut in the middle.
            return box_index > 0;
        }
        let kind = &header[4..8];
        if !kind
            .iter()
            .all(|byte| byte.is_ascii_alphanumeric() || *byte == b' ')
        {
            return false;
        }
        if box_index == 0 && kind != b"ftyp" {
            return false;
        }
        let box_size = match u32::from_be_bytes([header[0], header[1], header[2], header[3]]) {
            // The box runs to the end of the file.
            0 => return false,
            1 => {
                if reader.read_exact(&mut header[8..16]).is_err() {
                    return true;
                }
                u64::from_be_bytes([
                    header[8], header[9], header[10], header[11], header[12], header[13],
                    header[14], header[15],
                ])
            }
            small => u64::from(small),
        };
        if box_size < 8 {
            return false;
        }
        match offset.checked_add(box_size) {
            Some(end) if end <= size => offset = end,
            _ => return true,
        }
    }
    false
}

/// Reads the display orientation from an FFmpeg display matrix (nine native-endian 32-bit
/// integers, 16.16 fixed point except the last column), snapped to the eight right-angle
/// orientations.
///
/// FFmpeg's `av_display_rotation_get` returns the counter-clockwise angle `-atan2(m1, m0)`; its
/// CLI turns frames clockwise by the negation of that, and when the matrix mirrors (negative
/// determinant) it adds a flip: at 0 and 180 degrees a vertical or horizontal flip, at 90 and 270
/// a transpose. Each of those is, in [`Orientation`]'s terms, a clockwise turn followed by a
/// horizontal mirror: the turn is the matrix angle at 90 and 270, the angle plus a half turn at 0
/// and 180.
pub(crate) fn orientation_from_display_matrix(data: &[u8]) -> Option<Orientation> {
    if data.len() < 36 {
        return None;
    }
    let value = |index: usize| {
        let bytes = [
            data[index * 4],
            data[index * 4 + 1],
            data[index * 4 + 2],
            data[index * 4 + 3],
        ];
        f64::from(i32::from_ne_bytes(bytes)) / 65536.0
    };
    let scale_x = value(0).hypot(value(3));
    let scale_y = value(1).hypot(value(4));
    if scale_x == 0.0 || scale_y == 0.0 {
        return None;
    }
    let angle = snap_rotation((value(1) / scale_y).atan2(value(0) / scale_x).to_degrees());
    let mirrored = value(0) * value(4) - value(1) * value(3) < 0.0;
    let rotation = if mirrored && angle.is_multiple_of(180) {
        (angle + 180) % 360
    } else {
        angle
    };
    Some(Orientation { rotation, mirrored })
}

/// Snaps an angle in degrees (clockwise) to 0, 90, 180 or 270.
fn snap_rotation(degrees: f64) -> u32 {
    let quarter_turns = (degrees / 90.0).round() as i64;
    (quarter_turns.rem_euclid(4) * 90) as u32
}

fn open_error(
    uri: &str,
    shared: &ReaderShared,
    deadline: Deadline,
    error: ffmpeg::Error,
) -> MediaError {
    if let Some(store_error) = shared.take_error() {
        return store_error;
    }
    let uri = uri.to_owned();
    match error {
        ffmpeg::Error::Exit => MediaError::BudgetExceeded {
            uri,
            budget: Budget::Time,
            detail: format!("opening took longer than {:?}", deadline.budget()),
        },
        _ if shared.past_end.load(Ordering::Relaxed) => MediaError::Truncated {
            uri,
            decoded_until_s: 0.0,
            declared_s: 0.0,
        },
        ffmpeg::Error::InvalidData | ffmpeg::Error::Eof => MediaError::UnrecognizedFormat {
            uri,
            reason: error.to_string(),
        },
        ffmpeg::Error::DecoderNotFound
        | ffmpeg::Error::DemuxerNotFound
        | ffmpeg::Error::StreamNotFound
        | ffmpeg::Error::PatchWelcome => MediaError::UnrecognizedFormat {
            uri,
            reason: error.to_string(),
        },
        other => MediaError::Corrupt {
            uri,
            reason: format!("opening: {other}"),
        },
    }
}

pub(crate) fn map_error(
    uri: &str,
    shared: &ReaderShared,
    deadline: Deadline,
    context: &'static str,
    error: ffmpeg::Error,
) -> MediaError {
    if let Some(store_error) = shared.take_error() {
        return store_error;
    }
    let uri = uri.to_owned();
    match error {
        ffmpeg::Error::Exit => MediaError::BudgetExceeded {
            uri,
            budget: Budget::Time,
            detail: format!("{context} took longer than {:?}", deadline.budget()),
        },
        ffmpeg::Error::InvalidData => MediaError::Corrupt {
            uri,
            reason: format!("{context}: {error}"),
        },
        source => MediaError::Ffmpeg {
            uri,
            context,
            source,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(a: f64, b: f64, c: f64, d: f64) -> Vec<u8> {
        let fixed = |v: f64| (v * 65536.0).round() as i32;
        let values = [fixed(a), fixed(b), 0, fixed(c), fixed(d), 0, 0, 0, 1 << 30];
        values.iter().flat_map(|v| v.to_ne_bytes()).collect()
    }

    fn oriented(rotation: u32, mirrored: bool) -> Option<Orientation> {
        Some(Orientation { rotation, mirrored })
    }

    #[test]
    fn display_matrix_rotations() {
        let read = |a, b, c, d| orientation_from_display_matrix(&matrix(a, b, c, d));
        assert_eq!(read(1.0, 0.0, 0.0, 1.0), oriented(0, false));
        // [0, 1; -1, 0] in FFmpeg's row layout is what phones record in portrait (ffprobe:
        // "rotation of -90.00 degrees"): the FFmpeg CLI turns it a clockwise quarter turn.
        assert_eq!(read(0.0, 1.0, -1.0, 0.0), oriented(90, false));
        assert_eq!(read(-1.0, 0.0, 0.0, -1.0), oriented(180, false));
        assert_eq!(read(0.0, -1.0, 1.0, 0.0), oriented(270, false));
        // A scaled matrix turns the same way.
        assert_eq!(read(0.0, 2.0, -2.0, 0.0), oriented(90, false));
        assert_eq!(orientation_from_display_matrix(&[0u8; 8]), None);
    }

    #[test]
    fn mirrored_display_matrices() {
        let read = |a, b, c, d| orientation_from_display_matrix(&matrix(a, b, c, d));
        // Horizontal flip (front cameras): no turn, mirror.
        assert_eq!(read(-1.0, 0.0, 0.0, 1.0), oriented(0, true));
        // Vertical flip: a half turn, then mirror.
        assert_eq!(read(1.0, 0.0, 0.0, -1.0), oriented(180, true));
        // Transpose (the CLI's `transpose=cclock_flip`): a quarter turn clockwise, then mirror.
        assert_eq!(read(0.0, 1.0, 1.0, 0.0), oriented(90, true));
        // Anti-transpose (`transpose=clock_flip`).
        assert_eq!(read(0.0, -1.0, -1.0, 0.0), oriented(270, true));
    }

    #[test]
    fn snapping() {
        assert_eq!(snap_rotation(-90.0), 270);
        assert_eq!(snap_rotation(89.0), 90);
        assert_eq!(snap_rotation(360.0), 0);
    }
}
