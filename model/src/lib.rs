//! Open-o3 Video (a Qwen2.5-VL-7B-Instruct fine-tune) in candle.
//!
//! - Paper: "Qwen2.5-VL Technical Report" <https://arxiv.org/abs/2502.13923>
//! - Open-o3 Video: <https://arxiv.org/abs/2510.20579>, checkpoint
//!   <https://huggingface.co/marinero4972/Open-o3-Video>
//! - Base model card: <https://huggingface.co/Qwen/Qwen2.5-VL-7B-Instruct>
//!
//! The crate is split the way candle-transformers splits its models: [`config`] (serde view of
//! `config.json`), [`vision`] (the windowed ViT), [`text`] (the Qwen2 decoder with M-RoPE),
//! [`model`] (the two joined), [`kv_cache`] (caches preallocated and written in place),
//! [`generation`] (token choice on the device, one sequence) and [`batch`] (many sequences
//! decoded together), [`detokenize`] (incremental text), and pure, I/O-free preprocessing
//! ([`image`], [`processor`], [`rope_index`], [`prompt`]). File and network access lives only
//! in [`loading`]; [`pipeline`] glues everything into the API the worker calls, and [`verify`]
//! adds self-verification (P(yes) about an image, one prefill per image, no generation).
//!
//! ```no_run
//! use vidx_model::generation::GenerationParams;
//! use vidx_model::prompt::OPEN_O3_GROUNDED_SYSTEM_PROMPT;
//! use vidx_model::{LoadOptions, OpenO3Video, RgbImage, TimedFrame};
//!
//! # fn main() -> vidx_model::Result<()> {
//! let pipeline = OpenO3Video::load("/models/Open-o3-Video", &LoadOptions::default())?;
//! let frames = vec![TimedFrame {
//!     image: RgbImage::new(640, 360, vec![0; 640 * 360 * 3])?,
//!     timestamp_seconds: 0.0,
//! }];
//! let encoded = pipeline.encode_frames(&frames)?; // one vision tower pass
//! let prefix = pipeline.prefill(&encoded, OPEN_O3_GROUNDED_SYSTEM_PROMPT, 16.0)?; // one prefill
//! for question in ["Where is the dog?", "What happens at the end?"] {
//!     let answer = pipeline.ask(&prefix, question, &GenerationParams::open_o3(), &mut |delta| {
//!         print!("{delta}");
//!         true // keep going
//!     })?;
//!     println!("\n{:?} after {} tokens", answer.finish, answer.tokens.len());
//! }
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod allocator;
pub mod batch;
pub mod config;
pub mod detokenize;
pub mod device;
pub mod generation;
pub mod image;
pub mod kv_cache;
pub mod loading;
pub mod model;
pub mod nn;
pub mod ops;
pub mod pipeline;
pub mod processor;
pub mod prompt;
pub mod rope_index;
pub mod text;
pub mod verify;
pub mod vision;

pub use config::{Config, PreprocessorConfig, VisionConfig};
pub use device::{DTypeSetting, DeviceError, DeviceSetting};
pub use generation::{GenerationParams, Sampler};
pub use image::{RgbImage, resize_rgb_bicubic, smart_resize};
pub use kv_cache::KvCache;
pub use loading::{HubOptions, LoadOptions, ModelFiles};
pub use model::{LogitsMode, Model};
pub use pipeline::{Answer, EncodedFrames, OpenO3Video, PrefixCache, TimedFrame};

/// Errors of the model crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed in candle.
    #[error("tensor operation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A configuration file could not be parsed or is inconsistent.
    #[error("invalid config: {0}")]
    Config(String),
    /// An input (frames, prompt, ids) does not fit what the model accepts.
    #[error("invalid input: {0}")]
    Input(String),
    /// The tokenizer failed to load, encode or decode.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// A model file could not be read.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file that failed.
        path: std::path::PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file is missing from a model directory.
    #[error("missing model file {0}")]
    MissingFile(std::path::PathBuf),
    /// Downloading from the Hugging Face hub failed or timed out.
    #[error("hub download failed: {0}")]
    Hub(String),
    /// The requested device is not available in this build.
    #[error("device unavailable: {0}")]
    Device(String),
}

/// Result alias of the model crate.
pub type Result<T> = std::result::Result<T, Error>;
