//! Serde view of a Qwen2.5-VL `config.json` and `preprocessor_config.json`.
//!
//! Hub checkpoints (Qwen2.5-VL-7B-Instruct, Open-o3 Video) use a flat layout: text fields at the
//! top level, `rope_scaling.mrope_section`, and a `vision_config` block. transformers 5.x writes
//! a nested `text_config` with `rope_parameters` instead. [`Config`] accepts both and resolves
//! them into one flat struct.

use serde::Deserialize;

use crate::{Error, Result};

/// Vision tower hyper-parameters (`vision_config`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    /// Number of ViT blocks.
    #[serde(default = "default_vision_depth")]
    pub depth: usize,
    /// Width of the ViT.
    #[serde(default = "default_vision_hidden")]
    pub hidden_size: usize,
    /// Width of the SwiGLU MLP.
    #[serde(default = "default_vision_intermediate")]
    pub intermediate_size: usize,
    /// Attention heads of the ViT.
    #[serde(default = "default_vision_heads")]
    pub num_heads: usize,
    /// Input channels (3 for RGB).
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    /// Width of the merged tokens handed to the language model.
    #[serde(default = "default_out_hidden")]
    pub out_hidden_size: usize,
    /// Spatial patch size in pixels.
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    /// Side of the square of patches merged into one token.
    #[serde(default = "default_merge")]
    pub spatial_merge_size: usize,
    /// Frames per temporal patch.
    #[serde(default = "default_temporal_patch")]
    pub temporal_patch_size: usize,
    /// Window side in pixels for windowed attention.
    #[serde(default = "default_window")]
    pub window_size: usize,
    /// Blocks that attend over a whole frame instead of a window.
    #[serde(default = "default_fullatt")]
    pub fullatt_block_indexes: Vec<usize>,
    /// Temporal M-RoPE ids per second of video.
    #[serde(default = "default_tokens_per_second")]
    pub tokens_per_second: f64,
}

fn default_vision_depth() -> usize {
    32
}
fn default_vision_hidden() -> usize {
    1280
}
fn default_vision_intermediate() -> usize {
    3420
}
fn default_vision_heads() -> usize {
    16
}
fn default_in_chans() -> usize {
    3
}
fn default_out_hidden() -> usize {
    3584
}
fn default_patch() -> usize {
    14
}
fn default_merge() -> usize {
    2
}
fn default_temporal_patch() -> usize {
    2
}
fn default_window() -> usize {
    112
}
fn default_fullatt() -> Vec<usize> {
    vec![7, 15, 23, 31]
}
fn default_tokens_per_second() -> f64 {
    2.0
}

impl VisionConfig {
    /// Columns of one row of `pixel_values`: `in_chans * temporal_patch_size * patch_size^2`.
    pub fn patch_dim(&self) -> usize {
        self.in_chans * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Head width of the ViT attention.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// Resolved model configuration: the language model fields plus [`VisionConfig`].
/// Deserialises from either `config.json` layout.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    /// Rows of the embedding table.
    pub vocab_size: usize,
    /// Width of the decoder.
    pub hidden_size: usize,
    /// Width of the decoder MLP.
    pub intermediate_size: usize,
    /// Decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// RMSNorm epsilon of the decoder.
    pub rms_norm_eps: f64,
    /// RoPE base of the decoder.
    pub rope_theta: f64,
    /// Split of the rotary half-dimension into (t, h, w) sections.
    pub mrope_section: Vec<usize>,
    /// Maximum positions the checkpoint was trained for.
    pub max_position_embeddings: usize,
    /// Whether `lm_head` shares the embedding matrix.
    pub tie_word_embeddings: bool,
    /// `<|image_pad|>` id.
    pub image_token_id: u32,
    /// `<|video_pad|>` id.
    pub video_token_id: u32,
    /// `<|vision_start|>` id.
    pub vision_start_token_id: u32,
    /// `<|vision_end|>` id.
    pub vision_end_token_id: u32,
    /// End-of-sequence ids (`<|im_end|>`, `<|endoftext|>`, ...).
    pub eos_token_ids: Vec<u32>,
    /// Vision tower.
    pub vision_config: VisionConfig,
}

impl Config {
    /// Head width of the decoder.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Parses `config.json` text in the flat hub layout or the nested transformers 5.x layout.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig =
            serde_json::from_str(text).map_err(|e| Error::Config(format!("config.json: {e}")))?;
        raw.resolve()
    }

    fn validate(self) -> Result<Self> {
        if self.num_attention_heads == 0
            || self.num_key_value_heads == 0
            || !self.hidden_size.is_multiple_of(self.num_attention_heads)
            || !self
                .num_attention_heads
                .is_multiple_of(self.num_key_value_heads)
        {
            return Err(Error::Config(format!(
                "inconsistent heads: hidden {} heads {} kv heads {}",
                self.hidden_size, self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.mrope_section.len() != 3
            || self.mrope_section.iter().sum::<usize>() * 2 != self.head_dim()
        {
            return Err(Error::Config(format!(
                "mrope_section {:?} does not split half of head_dim {}",
                self.mrope_section,
                self.head_dim()
            )));
        }
        let v = &self.vision_config;
        if v.num_heads == 0
            || !v.hidden_size.is_multiple_of(v.num_heads)
            || !v.head_dim().is_multiple_of(4)
        {
            return Err(Error::Config(format!(
                "vision hidden {} not divisible into {} heads with a head_dim multiple of 4",
                v.hidden_size, v.num_heads
            )));
        }
        if v.out_hidden_size != self.hidden_size {
            return Err(Error::Config(format!(
                "vision out_hidden_size {} differs from text hidden_size {}",
                v.out_hidden_size, self.hidden_size
            )));
        }
        if !v
            .window_size
            .is_multiple_of(v.spatial_merge_size * v.patch_size)
        {
            return Err(Error::Config(format!(
                "window_size {} is not a multiple of merge*patch",
                v.window_size
            )));
        }
        Ok(self)
    }
}

#[derive(Debug, Default, Deserialize)]
struct RopeBlock {
    mrope_section: Option<Vec<usize>>,
    rope_theta: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Debug, Default, Deserialize)]
struct RawText {
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeBlock>,
    rope_parameters: Option<RopeBlock>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    eos_token_id: Option<OneOrMany>,
    image_token_id: Option<u32>,
    video_token_id: Option<u32>,
    vision_start_token_id: Option<u32>,
    vision_end_token_id: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(flatten)]
    top: RawText,
    text_config: Option<RawText>,
    vision_config: Option<VisionConfig>,
}

impl TryFrom<RawConfig> for Config {
    type Error = Error;

    fn try_from(raw: RawConfig) -> Result<Config> {
        raw.resolve()
    }
}

impl RawConfig {
    fn resolve(self) -> Result<Config> {
        let top = self.top;
        let nested = self.text_config.unwrap_or_default();
        macro_rules! pick {
            ($field:ident) => {
                nested.$field.or(top.$field)
            };
        }
        macro_rules! need {
            ($field:ident) => {
                pick!($field)
                    .ok_or_else(|| Error::Config(format!("missing field {}", stringify!($field))))?
            };
        }
        let ropes = [
            &nested.rope_parameters,
            &nested.rope_scaling,
            &top.rope_parameters,
            &top.rope_scaling,
        ];
        let mrope_section = ropes
            .iter()
            .find_map(|r| r.as_ref().and_then(|r| r.mrope_section.clone()))
            .ok_or_else(|| Error::Config("missing mrope_section".into()))?;
        let rope_theta = pick!(rope_theta)
            .or_else(|| {
                ropes
                    .iter()
                    .find_map(|r| r.as_ref().and_then(|r| r.rope_theta))
            })
            .unwrap_or(1_000_000.0);
        let eos_token_ids = match nested.eos_token_id.or(top.eos_token_id) {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
            None => Vec::new(),
        };
        let hidden_size = need!(hidden_size);
        let num_attention_heads = need!(num_attention_heads);
        let vision_config = self
            .vision_config
            .ok_or_else(|| Error::Config("missing vision_config".into()))?;
        Config {
            vocab_size: need!(vocab_size),
            hidden_size,
            intermediate_size: need!(intermediate_size),
            num_hidden_layers: need!(num_hidden_layers),
            num_attention_heads,
            num_key_value_heads: pick!(num_key_value_heads).unwrap_or(num_attention_heads),
            rms_norm_eps: pick!(rms_norm_eps).unwrap_or(1e-6),
            rope_theta,
            mrope_section,
            max_position_embeddings: pick!(max_position_embeddings).unwrap_or(128_000),
            tie_word_embeddings: top
                .tie_word_embeddings
                .or(nested.tie_word_embeddings)
                .unwrap_or(false),
            image_token_id: pick!(image_token_id).unwrap_or(151_655),
            video_token_id: pick!(video_token_id).unwrap_or(151_656),
            vision_start_token_id: pick!(vision_start_token_id).unwrap_or(151_652),
            vision_end_token_id: pick!(vision_end_token_id).unwrap_or(151_653),
            eos_token_ids,
            vision_config,
        }
        .validate()
    }
}

/// Image preprocessing settings (`preprocessor_config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PreprocessorConfig {
    /// Lower bound of pixels per image after [`crate::smart_resize`].
    #[serde(default = "default_min_pixels")]
    pub min_pixels: usize,
    /// Upper bound of pixels per image after [`crate::smart_resize`].
    #[serde(default = "default_max_pixels")]
    pub max_pixels: usize,
    /// Spatial patch size.
    #[serde(default = "default_patch")]
    pub patch_size: usize,
    /// Frames per temporal patch.
    #[serde(default = "default_temporal_patch")]
    pub temporal_patch_size: usize,
    /// Merge size of the vision merger.
    #[serde(default = "default_merge")]
    pub merge_size: usize,
    /// Per-channel mean (of values in 0..1).
    #[serde(default = "default_mean")]
    pub image_mean: [f32; 3],
    /// Per-channel std (of values in 0..1).
    #[serde(default = "default_std")]
    pub image_std: [f32; 3],
}

fn default_min_pixels() -> usize {
    56 * 56
}
fn default_max_pixels() -> usize {
    28 * 28 * 16384
}
fn default_mean() -> [f32; 3] {
    [0.481_454_66, 0.457_827_5, 0.408_210_73]
}
fn default_std() -> [f32; 3] {
    [0.268_629_54, 0.261_302_6, 0.275_777_1]
}

impl Default for PreprocessorConfig {
    fn default() -> Self {
        Self {
            min_pixels: default_min_pixels(),
            max_pixels: default_max_pixels(),
            patch_size: default_patch(),
            temporal_patch_size: default_temporal_patch(),
            merge_size: default_merge(),
            image_mean: default_mean(),
            image_std: default_std(),
        }
    }
}

impl PreprocessorConfig {
    /// Parses `preprocessor_config.json`; transformers 5.x's `size.{shortest,longest}_edge`
    /// is accepted for the pixel bounds.
    pub fn from_json(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Size {
            shortest_edge: Option<usize>,
            longest_edge: Option<usize>,
        }
        #[derive(Deserialize)]
        struct Raw {
            #[serde(flatten)]
            base: PreprocessorConfig,
            min_pixels: Option<usize>,
            max_pixels: Option<usize>,
            size: Option<Size>,
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("preprocessor_config.json: {e}")))?;
        let mut out = raw.base;
        if let Some(size) = raw.size {
            out.min_pixels = size.shortest_edge.unwrap_or(out.min_pixels);
            out.max_pixels = size.longest_edge.unwrap_or(out.max_pixels);
        }
        out.min_pixels = raw.min_pixels.unwrap_or(out.min_pixels);
        out.max_pixels = raw.max_pixels.unwrap_or(out.max_pixels);
        if out.patch_size == 0 || out.merge_size == 0 || out.temporal_patch_size == 0 {
            return Err(Error::Config(
                "zero patch, merge or temporal patch size".into(),
            ));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLAT: &str = r#"{
      "vocab_size": 1024, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
      "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
      "eos_token_id": 994, "image_token_id": 1004, "video_token_id": 1005,
      "vision_start_token_id": 1001, "vision_end_token_id": 1002, "tie_word_embeddings": false,
      "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "max_position_embeddings": 4096,
      "vision_config": {"depth": 4, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
        "in_chans": 3, "out_hidden_size": 64, "window_size": 56, "fullatt_block_indexes": [1, 3],
        "patch_size": 14, "spatial_patch_size": 14, "tokens_per_second": 2}
    }"#;

    /// `config.json` as transformers 5.23 `save_pretrained` writes it for the tiny fixture.
    const NESTED: &str = r#"{"architectures": ["Qwen2_5_VLForConditionalGeneration"], "dtype": "bfloat16", "image_token_id": 1004, "model_type": "qwen2_5_vl", "text_config": {"attention_dropout": 0.0, "bos_token_id": 992, "dtype": "bfloat16", "eos_token_id": 994, "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128, "layer_types": ["full_attention", "full_attention"], "max_position_embeddings": 4096, "max_window_layers": 2, "model_type": "qwen2_5_vl_text", "num_attention_heads": 4, "num_hidden_layers": 2, "num_key_value_heads": 2, "pad_token_id": null, "rms_norm_eps": 1e-06, "rope_parameters": {"mrope_section": [2, 3, 3], "rope_theta": 1000000.0, "rope_type": "default", "type": "mrope"}, "sliding_window": null, "use_cache": true, "use_sliding_window": false, "vocab_size": 1024}, "tie_word_embeddings": false, "transformers_version": "5.23.0", "video_token_id": 1005, "vision_config": {"depth": 4, "fullatt_block_indexes": [1, 3], "hidden_act": "silu", "hidden_size": 32, "in_channels": 3, "in_chans": 3, "initializer_range": 0.02, "intermediate_size": 64, "model_type": "qwen2_5_vl_vision", "num_heads": 2, "out_hidden_size": 64, "patch_size": 14, "rope_parameters": {"rope_theta": 10000.0, "rope_type": "axial"}, "spatial_merge_size": 2, "spatial_patch_size": 14, "temporal_patch_size": 2, "tokens_per_second": 2, "window_size": 56}, "vision_end_token_id": 1002, "vision_start_token_id": 1001, "vision_token_id": 1003}"#;

    #[test]
    fn flat_and_nested_layouts_resolve_to_the_same_config() {
        let flat = Config::from_json(FLAT).unwrap();
        let nested = Config::from_json(NESTED).unwrap();
        assert_eq!(flat, nested);
        assert_eq!(flat.mrope_section, vec![2, 3, 3]);
        assert_eq!(flat.eos_token_ids, vec![994]);
        assert_eq!(flat.vision_config.patch_dim(), 1176);
        let via_serde: Config = serde_json::from_str(NESTED).unwrap();
        assert_eq!(via_serde, flat);
    }

    #[test]
    fn inconsistent_mrope_section_is_rejected() {
        let bad = FLAT.replace("[2, 3, 3]", "[2, 3, 4]");
        assert!(matches!(Config::from_json(&bad), Err(Error::Config(_))));
    }

    #[test]
    fn preprocessor_size_block_sets_pixel_bounds() {
        let p = PreprocessorConfig::from_json(
            r#"{"size": {"shortest_edge": 100, "longest_edge": 200}}"#,
        )
        .unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (100, 200));
    }
}
