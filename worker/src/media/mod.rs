//! Reading, probing and sampling videos.
//!
//! A video is named by a URL (`s3://`, `gs://`, `az://`, `file://` or a local path) and read
//! through `object_store` with ranged requests feeding FFmpeg's custom I/O: no scratch file, and
//! sampling a long video fetches only the bytes around the sampled frames. [`probe`] describes a
//! video; [`sample_frames`] takes frames the way Open-o3 Video was trained (1 fps, at most 16 per
//! segment, spread like `linspace`) as upright RGB24 tagged with presentation times. Everything
//! here is blocking: the worker calls it from `spawn_blocking`. Every failure is a typed
//! [`MediaError`] that says whether a retry could help.

mod convert;
mod decode;
mod demux;
mod error;
mod export;
mod parallel;
mod probe;
mod reader;
mod sample;
mod source;

pub use error::{Budget, MediaError, Result};
pub use export::{FrameRecord, write_frames, write_frames_source};
pub use probe::{ProbeInfo, ProbeOptions, probe, probe_source};
pub use reader::{ObjectReader, ReadOptions};
pub use sample::{
    DecodeLimits, Frame, SampleOptions, SampleStats, Sampled, SamplingSpec, plan_targets,
    sample_frames, sample_source, sample_source_with,
};
pub use source::VideoSource;
