//! Qwen2.5-VL for conditional generation: the vision tower and the Qwen2 decoder joined by
//! scattering merged vision tokens into the `<|image_pad|>` / `<|video_pad|>` positions.
//!
//! `Model::new(&Config, VarBuilder)` expects the hub checkpoint names (`visual.*`, `model.*`,
//! `lm_head`). No file or network access happens here.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::Config;
use crate::rope_index::{PositionIds, RopeIndexParams};
use crate::text::{TextModel, TextTrace};
use crate::vision::{VisionTrace, VisionTransformer};
use crate::{Error, Result};

pub use crate::text::LogitsMode;

/// Qwen2.5-VL / Open-o3 Video.
#[derive(Debug)]
pub struct Model {
    visual: VisionTransformer,
    text: TextModel,
    config: Config,
    device: Device,
    vision_calls: AtomicUsize,
    decoder_calls: AtomicUsize,
}

impl Model {
    /// Builds the model from a root `VarBuilder` over the checkpoint.
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let visual = VisionTransformer::new(&config.vision_config, vb.pp("visual"))?;
        let text = TextModel::new(config, vb.clone())?;
        Ok(Self {
            visual,
            text,
            config: config.clone(),
            device: vb.device().clone(),
            vision_calls: AtomicUsize::new(0),
            decoder_calls: AtomicUsize::new(0),
        })
    }

    /// The model's configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How many times the vision tower has run (each [`Self::encode_vision`] call counts once).
    pub fn vision_calls(&self) -> usize {
        self.vision_calls.load(Ordering::Relaxed)
    }

    /// How many times the decoder has run through [`Self::forward_embeds`] (a prefill, or one
    /// step of single-sequence generation; [`crate::batch::BatchDecoder`] steps are not counted).
    pub fn decoder_calls(&self) -> usize {
        self.decoder_calls.load(Ordering::Relaxed)
    }

    /// Parameters for [`crate::rope_index::mrope_position_ids`] from this config.
    pub fn rope_index_params(&self) -> RopeIndexParams {
        RopeIndexParams {
            image_token_id: self.config.image_token_id,
            video_token_id: self.config.video_token_id,
            vision_start_token_id: self.config.vision_start_token_id,
            spatial_merge_size: self.config.vision_config.spatial_merge_size,
            tokens_per_second: self.config.vision_config.tokens_per_second as f32,
        }
    }

    /// Runs the vision tower on `pixel_values` `[P, 1176]` with their grids; returns the merged
    /// tokens `[P/4, D]` to scatter into the placeholders, in prompt order.
    pub fn encode_vision(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        self.encode_vision_traced(pixel_values, grids, None)
    }

    /// [`Self::encode_vision`] recording intermediate results.
    pub fn encode_vision_traced(
        &self,
        pixel_values: &Tensor,
        grids: &[[usize; 3]],
        trace: Option<&mut VisionTrace>,
    ) -> Result<Tensor> {
        self.vision_calls.fetch_add(1, Ordering::Relaxed);
        let pixel_values = pixel_values.to_device(&self.device)?;
        self.visual.forward_traced(&pixel_values, grids, trace)
    }

    /// Input embeddings `[1, L, D]` of `ids`, with the rows of `vision_embeds` (in order)
    /// replacing every image/video placeholder token.
    pub fn embed(&self, ids: &[u32], vision_embeds: Option<&Tensor>) -> Result<Tensor> {
        let text = self.text.embed(ids, &self.device)?;
        let placeholders = ids
            .iter()
            .filter(|&&t| t == self.config.image_token_id || t == self.config.video_token_id)
            .count();
        let available = vision_embeds.map(|v| v.dim(0)).transpose()?.unwrap_or(0);
        if placeholders != available {
            return Err(Error::Input(format!(
                "{placeholders} vision placeholders but {available} vision embeddings"
            )));
        }
        let Some(vision) = vision_embeds else {
            return Ok(text);
        };
        if placeholders == 0 {
            return Ok(text);
        }
        let len = ids.len();
        let mut next = len as u32;
        let index: Vec<u32> = ids
            .iter()
            .enumerate()
            .map(|(i, &t)| {
                if t == self.config.image_token_id || t == self.config.video_token_id {
                    next += 1;
                    next - 1
                } else {
                    i as u32
                }
            })
            .collect();
        let vision = vision.to_dtype(text.dtype())?.to_device(&self.device)?;
        let table = Tensor::cat(&[&text.squeeze(0)?, &vision], 0)?;
        Ok(table
            .index_select(&Tensor::new(index, &self.device)?, 0)?
            .unsqueeze(0)?)
    }

    /// Decoder pass over `embeds` `[1, L, D]` at `positions`, continuing `cache`.
    /// Returns f32 logits (`[1, 1, V]` or `[1, L, V]`).
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        positions: &PositionIds,
        cache: &mut crate::KvCache,
        mode: LogitsMode,
    ) -> Result<Tensor> {
        self.decoder_calls.fetch_add(1, Ordering::Relaxed);
        self.text.forward(embeds, positions, cache, mode, None)
    }

    /// [`Self::forward_embeds`] recording intermediate results.
    pub fn forward_embeds_traced(
        &self,
        embeds: &Tensor,
        positions: &PositionIds,
        cache: &mut crate::KvCache,
        mode: LogitsMode,
        trace: &mut TextTrace,
    ) -> Result<Tensor> {
        self.decoder_calls.fetch_add(1, Ordering::Relaxed);
        self.text
            .forward(embeds, positions, cache, mode, Some(trace))
    }

    /// Bounds the attention score block of the decoder (elements per block of query rows;
    /// default [`crate::text::ATTENTION_BLOCK_ELEMENTS`]).
    pub fn set_attention_block_elements(&mut self, elements: usize) {
        self.text.set_attention_block_elements(elements);
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> crate::KvCache {
        crate::KvCache::new(self.text.num_layers())
    }

    /// An empty KV cache whose buffers hold `positions` positions before they grow.
    pub fn new_cache_with_capacity(&self, positions: usize) -> crate::KvCache {
        crate::KvCache::with_capacity(self.text.num_layers(), positions)
    }

    /// The decoder.
    pub(crate) fn text(&self) -> &TextModel {
        &self.text
    }
}
