//! The one error type of the media module: what went wrong reading, probing or decoding a video,
//! and whether trying the same job again could help.

use std::time::Duration;

/// Result alias of the media module.
pub type Result<T, E = MediaError> = std::result::Result<T, E>;

/// Which decoding budget ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The wall-clock time allowed for one probe or sampling call.
    Time,
    /// The number of frames the decoder may produce for one sampling call.
    DecodedFrames,
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Budget::Time => f.write_str("time"),
            Budget::DecodedFrames => f.write_str("decoded frame"),
        }
    }
}

/// Everything that can go wrong opening, probing or sampling a video.
///
/// Each variant says what is wrong with the input (or the environment); [`MediaError::retryable`]
/// says whether running the same request again could succeed.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The video address cannot be parsed or names no supported store.
    #[error("invalid video url {url}: {reason}")]
    InvalidUrl {
        /// The address as given.
        url: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// The sampling request itself is invalid (negative rate, empty segment, ...).
    #[error("invalid sampling spec: {reason}")]
    InvalidSpec {
        /// What is wrong, in words.
        reason: String,
    },
    /// The object does not exist.
    #[error("video not found: {uri}")]
    NotFound {
        /// The video's address.
        uri: String,
    },
    /// The store refused access (bad or missing credentials, no permission).
    #[error("access denied reading {uri}: {source}")]
    AccessDenied {
        /// The video's address.
        uri: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// The store could not be reached or answered with an error; often transient.
    #[error("object store error reading {uri}: {source}")]
    Store {
        /// The video's address.
        uri: String,
        /// The store's error.
        source: object_store::Error,
    },
    /// A single ranged read did not complete in time.
    #[error("read of {uri} timed out after {after:?}")]
    ReadTimeout {
        /// The video's address.
        uri: String,
        /// How long the read waited.
        after: Duration,
    },
    /// The object has zero bytes.
    #[error("video is empty (zero bytes): {uri}")]
    Empty {
        /// The video's address.
        uri: String,
    },
    /// The bytes are not a container FFmpeg recognises (a text file, an image, garbage).
    #[error("not a recognised video container: {uri}: {reason}")]
    UnrecognizedFormat {
        /// The video's address.
        uri: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// The container holds no video stream (for example an audio-only file).
    #[error("no video stream in {uri}")]
    NoVideoStream {
        /// The video's address.
        uri: String,
    },
    /// The video codec has no decoder in this FFmpeg build.
    #[error("unsupported video codec {codec} in {uri}")]
    UnsupportedCodec {
        /// The video's address.
        uri: String,
        /// The codec's name.
        codec: String,
    },
    /// The container or bitstream is damaged.
    #[error("corrupt video {uri}: {reason}")]
    Corrupt {
        /// The video's address.
        uri: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// The file ends before the data its own index points to: an interrupted upload.
    #[error(
        "truncated video {uri}: data ends at {decoded_until_s:.3}s of a declared {declared_s:.3}s"
    )]
    Truncated {
        /// The video's address.
        uri: String,
        /// Where the data ends, in seconds.
        decoded_until_s: f64,
        /// The duration the container declares, in seconds.
        declared_s: f64,
    },
    /// The video stream exists but not a single frame could be decoded from it.
    #[error("no decodable frames in {uri}")]
    NoFrames {
        /// The video's address.
        uri: String,
    },
    /// The frame is larger than the configured pixel limit.
    #[error("video {uri} is {width}x{height}, over the limit of {limit} pixels per frame")]
    TooLarge {
        /// The video's address.
        uri: String,
        /// Frame width in pixels.
        width: u32,
        /// Frame height in pixels.
        height: u32,
        /// The configured limit in pixels per frame.
        limit: u64,
    },
    /// A decoding budget ran out before the request was served.
    #[error("{budget} budget exceeded decoding {uri}: {detail}")]
    BudgetExceeded {
        /// The video's address.
        uri: String,
        /// The budget that ran out.
        budget: Budget,
        /// What was spent against it.
        detail: String,
    },
    /// The caller's frame handler stopped sampling; its own error says why.
    #[error("sampling of {uri} stopped by its caller: {reason}")]
    Stopped {
        /// The video's address.
        uri: String,
        /// What is wrong, in words.
        reason: String,
    },
    /// Writing frames or a manifest to local disk failed.
    #[error("writing output {path}: {source}")]
    Output {
        /// The file being written.
        path: String,
        /// The file system's error.
        source: std::io::Error,
    },
    /// An FFmpeg call failed in a way not covered above.
    #[error("ffmpeg {context} failed for {uri}: {source}")]
    Ffmpeg {
        /// The video's address.
        uri: String,
        /// The FFmpeg step that failed.
        context: &'static str,
        /// FFmpeg's error.
        source: ffmpeg_next::Error,
    },
}

impl MediaError {
    /// Whether running the same request again could succeed: true for transient store and
    /// network failures and for running out of time (which a loaded or slow host causes), false
    /// for anything that is wrong with the request or the bytes of the video.
    pub fn retryable(&self) -> bool {
        match self {
            MediaError::Store { source, .. } => !matches!(
                source,
                object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
            ),
            MediaError::ReadTimeout { .. } => true,
            MediaError::BudgetExceeded { budget, .. } => *budget == Budget::Time,
            MediaError::Output { .. } => true,
            MediaError::InvalidUrl { .. }
            | MediaError::InvalidSpec { .. }
            | MediaError::NotFound { .. }
            | MediaError::AccessDenied { .. }
            | MediaError::Empty { .. }
            | MediaError::UnrecognizedFormat { .. }
            | MediaError::NoVideoStream { .. }
            | MediaError::UnsupportedCodec { .. }
            | MediaError::Corrupt { .. }
            | MediaError::Truncated { .. }
            | MediaError::NoFrames { .. }
            | MediaError::TooLarge { .. }
            | MediaError::Stopped { .. }
            | MediaError::Ffmpeg { .. } => false,
        }
    }

    /// A short stable label for metrics and job failure records.
    pub fn label(&self) -> &'static str {
        match self {
            MediaError::InvalidUrl { .. } => "invalid_url",
            MediaError::InvalidSpec { .. } => "invalid_spec",
            MediaError::NotFound { .. } => "not_found",
            MediaError::AccessDenied { .. } => "access_denied",
            MediaError::Store { .. } => "store",
            MediaError::ReadTimeout { .. } => "read_timeout",
            MediaError::Empty { .. } => "empty",
            MediaError::UnrecognizedFormat { .. } => "unrecognized_format",
            MediaError::NoVideoStream { .. } => "no_video_stream",
            MediaError::UnsupportedCodec { .. } => "unsupported_codec",
            MediaError::Corrupt { .. } => "corrupt",
            MediaError::Truncated { .. } => "truncated",
            MediaError::NoFrames { .. } => "no_frames",
            MediaError::TooLarge { .. } => "too_large",
            MediaError::BudgetExceeded { .. } => "budget_exceeded",
            MediaError::Stopped { .. } => "stopped",
            MediaError::Output { .. } => "output",
            MediaError::Ffmpeg { .. } => "ffmpeg",
        }
    }

    /// Maps an `object_store` error for `uri` to the matching variant.
    pub(crate) fn from_store(uri: &str, source: object_store::Error) -> Self {
        let uri = uri.to_owned();
        match source {
            object_store::Error::NotFound { .. } => MediaError::NotFound { uri },
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => {
                MediaError::AccessDenied { uri, source }
            }
            source => MediaError::Store { uri, source },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_failures_are_retryable_and_bad_input_is_not() {
        let uri = "s3://bucket/video.mp4".to_owned();
        let store = MediaError::Store {
            uri: uri.clone(),
            source: object_store::Error::Generic {
                store: "S3",
                source: "connection reset".into(),
            },
        };
        assert!(store.retryable());
        assert!(
            MediaError::ReadTimeout {
                uri: uri.clone(),
                after: Duration::from_secs(1)
            }
            .retryable()
        );
        assert!(!MediaError::Empty { uri: uri.clone() }.retryable());
        assert!(
            !MediaError::Corrupt {
                uri: uri.clone(),
                reason: "bad".into()
            }
            .retryable()
        );
        assert!(!MediaError::NoVideoStream { uri: uri.clone() }.retryable());
        let not_found = MediaError::from_store(
            &uri,
            object_store::Error::NotFound {
                path: "video.mp4".into(),
                source: "missing".into(),
            },
        );
        assert!(matches!(not_found, MediaError::NotFound { .. }));
        assert!(!not_found.retryable());
    }
}
