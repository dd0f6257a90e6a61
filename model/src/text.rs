//! The Qwen2 language model of Qwen2.5-VL (`model.*`, `lm_head`): grouped-query attention with
//! q/k/v biases, SwiGLU MLPs, RMSNorm, and multimodal RoPE (M-RoPE) whose rotary half-dimension
//! is split into `mrope_section` parts driven by the time, height and width position rows.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::config::Config;
use crate::nn::{Linear, linear_b, linear_no_bias};
use crate::rope_index::PositionIds;
use crate::vision::RmsNorm;
use crate::{Error, Result};

/// Key/value cache of all layers. Cloning is cheap (tensors are shared, never written in
/// place), so a prefilled prefix can be cloned and continued independently per question.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    /// An empty cache for `num_layers` layers.
    pub fn new(num_layers: usize) -> Self {
        Self {
            layers: vec![None; num_layers],
        }
    }

    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers
            .first()
            .and_then(|l| l.as_ref())
            .map(|(k, _)| k.dim(2).unwrap_or(0))
            .unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps only the first `len` positions.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        for layer in &mut self.layers {
            if let Some((k, v)) = layer.as_mut() {
                if len == 0 {
                    *layer = None;
                } else if k.dim(2)? > len {
                    *k = k.narrow(2, 0, len)?;
                    *v = v.narrow(2, 0, len)?;
                }
            }
        }
        Ok(())
    }

    fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let entry = &mut self.layers[layer];
        let (k, v) = match entry.as_ref() {
            None => (k.clone(), v.clone()),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2)?, Tensor::cat(&[pv, v], 2)?),
        };
        *entry = Some((k.clone(), v.clone()));
        Ok((k, v))
    }
}

/// M-RoPE tables: per token, the rotary half-dimension takes its angle from the t, h or w
/// position row according to `mrope_section`.
#[derive(Debug, Clone)]
struct MultimodalRotary {
    inv_freq: Vec<f32>,
    section_of: Vec<usize>,
}

impl MultimodalRotary {
    fn new(config: &Config) -> Self {
        let head_dim = config.head_dim();
        let theta = config.rope_theta as f32;
        let inv_freq = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0f32 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        let section_of = config
            .mrope_section
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| std::iter::repeat_n(s, n))
            .collect();
        Self {
            inv_freq,
            section_of,
        }
    }

    /// `(cos, sin)` of shape `[L, head_dim/2]`, f32.
    fn tables(&self, positions: &PositionIds, device: &Device) -> Result<(Tensor, Tensor)> {
        let len = positions.len();
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for i in 0..len {
            for (j, f) in self.inv_freq.iter().enumerate() {
                let angle = positions.rows[self.section_of[j]][i] as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, half), device)?,
            Tensor::from_vec(sin, (len, half), device)?,
        ))
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let (hidden, hd) = (config.hidden_size, config.head_dim());
        let (heads, kv) = (config.num_attention_heads, config.num_key_value_heads);
        Ok(Self {
            q_proj: linear_b(hidden, heads * hd, true, vb.pp("q_proj"))?,
            k_proj: linear_b(hidden, kv * hd, true, vb.pp("k_proj"))?,
            v_proj: linear_b(hidden, kv * hd, true, vb.pp("v_proj"))?,
            o_proj: linear_no_bias(heads * hd, hidden, vb.pp("o_proj"))?,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: hd,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &mut KvCache,
        layer: usize,
        block_elements: usize,
    ) -> Result<Tensor> {
        let (b, len, _) = xs.dims3()?;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q_proj.forward(xs)?, self.num_heads)?;
        let k = split(self.k_proj.forward(xs)?, self.num_kv_heads)?;
        let v = split(self.v_proj.forward(xs)?, self.num_kv_heads)?;
        let rope = |t: &Tensor| -> Result<Tensor> {
            let dtype = t.dtype();
            Ok(candle_nn::rotary_emb::rope(&t.to_dtype(DType::F32)?, cos, sin)?.to_dtype(dtype)?)
        };
        let (q, k) = (rope(&q)?, rope(&k)?);
        let (k, v) = cache.append(layer, &k, &v)?;
        let groups = self.num_heads / self.num_kv_heads;
        let total = k.dim(2)?;
        let past = total - len;
        // Scaling q is cheaper than scaling the score matrix.
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;
        // Causal attention over blocks of query rows: each block only sees the keys up to its
        // last position, and its score matrix stays within `block_elements` (cache friendly,
        // and small enough for the allocator to reuse instead of mapping fresh pages).
        let rows = (block_elements / (self.num_heads * total).max(1)).clamp(1, len);
        let mut outputs = Vec::with_capacity(len.div_ceil(rows));
        for start in (0..len).step_by(rows) {
            let n = rows.min(len - start);
            let visible = past + start + n;
            // Grouped-query attention without materialising repeated keys: fold the group
            // into the query length.
            let qb = q.narrow(2, start, n)?.contiguous()?.reshape((
                b,
                self.num_kv_heads,
                groups * n,
                self.head_dim,
            ))?;
            let kb = k.narrow(2, 0, visible)?.contiguous()?;
            let vb = v.narrow(2, 0, visible)?.contiguous()?;
            let mut scores = crate::nn::matmul(&qb, &kb.t()?)?.to_dtype(DType::F32)?;
            if n > 1 {
                let mask: Vec<f32> = (0..n)
                    .flat_map(|i| {
                        (0..visible).map(move |j| {
                            if j > past + start + i {
                                f32::NEG_INFINITY
                            } else {
                                0.0
                            }
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (n, visible), scores.device())?;
                scores = scores
                    .reshape((b, self.num_kv_heads, groups, n, visible))?
                    .broadcast_add(&mask)?
                    .reshape((b, self.num_kv_heads, groups * n, visible))?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(vb.dtype())?;
            outputs.push(crate::nn::matmul(&probs, &vb)?.reshape((
                b,
                self.num_heads,
                n,
                self.head_dim,
            ))?);
        }
        let out = Tensor::cat(&outputs, 2)?.transpose(1, 2)?.reshape((
            b,
            len,
            self.num_heads * self.head_dim,
        ))?;
        Ok(self.o_proj.forward(&out)?)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let (hidden, inter) = (config.hidden_size, config.intermediate_size);
        let mlp = vb.pp("mlp");
        Ok(Self {
            self_attn: Attention::new(config, vb.pp("self_attn"))?,
            mlp: Mlp {
                gate_proj: linear_no_bias(hidden, inter, mlp.pp("gate_proj"))?,
                up_proj: linear_no_bias(hidden, inter, mlp.pp("up_proj"))?,
                down_proj: linear_no_bias(inter, hidden, mlp.pp("down_proj"))?,
            },
            input_layernorm: RmsNorm::load(vb.pp("input_layernorm"), hidden, config.rms_norm_eps)?,
            post_attention_layernorm: RmsNorm::load(
                vb.pp("post_attention_layernorm"),
                hidden,
                config.rms_norm_eps,
            )?,
        })
    }
}

/// Which logits a forward pass returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogitsMode {
    /// Only the last position: `[B, 1, V]` (prefill and decode).
    Last,
    /// Every position: `[B, L, V]` (reference tests).
    All,
}

/// Intermediate results of one decoder pass, for reference comparisons.
#[derive(Debug, Default)]
pub struct TextTrace {
    /// Output of every decoder layer `[B, L, D]`.
    pub layer_out: Vec<Tensor>,
    /// Output of the final norm `[B, L, D]`.
    pub final_norm: Option<Tensor>,
}

/// The Qwen2 decoder with M-RoPE and its LM head.
#[derive(Debug, Clone)]
pub struct TextModel {
    embed_tokens: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Linear,
    rotary: MultimodalRotary,
    /// Upper bound on elements of one attention score block.
    attention_block_elements: usize,
}

/// Default bound on attention score elements per block: 2M f32 values (8 MiB).
pub const ATTENTION_BLOCK_ELEMENTS: usize = 1 << 21;

impl TextModel {
    /// Builds the decoder from the root `vb` (`model.*` and `lm_head`).
    pub fn new(config: &Config, vb: VarBuilder) -> Result<Self> {
        let mvb = vb.pp("model");
        let embed_weight = mvb
            .pp("embed_tokens")
            .get((config.vocab_size, config.hidden_size), "weight")?;
        let embed_tokens = Embedding::new(embed_weight.clone(), config.hidden_size);
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::new(config, mvb.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::load(mvb.pp("norm"), config.hidden_size, config.rms_norm_eps)?;
        let lm_head = if config.tie_word_embeddings {
            Linear::new(embed_weight, None)
        } else {
            linear_no_bias(config.hidden_size, config.vocab_size, vb.pp("lm_head"))?
        };
        Ok(Self {
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: MultimodalRotary::new(config),
            attention_block_elements: ATTENTION_BLOCK_ELEMENTS,
        })
    }

    /// Sets the bound on attention score elements per query block (memory vs. speed; the
    /// result does not depend on it beyond float rounding).
    pub fn set_attention_block_elements(&mut self, elements: usize) {
        self.attention_block_elements = elements.max(1);
    }

    /// Number of decoder layers (for [`KvCache::new`]).
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings `[1, L, D]` of `ids`.
    pub fn embed(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let ids = Tensor::new(ids, device)?.unsqueeze(0)?;
        Ok(self.embed_tokens.forward(&ids)?)
    }

    /// Runs the decoder on `embeds` `[1, L, D]` placed after the `cache`'s positions, with the
    /// given M-RoPE positions (`L` of them), appending to the cache.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &PositionIds,
        cache: &mut KvCache,
        mode: LogitsMode,
        mut trace: Option<&mut TextTrace>,
    ) -> Result<Tensor> {
        let (_, len, _) = embeds.dims3()?;
        if positions.len() != len {
            return Err(Error::Input(format!(
                "{} positions for {len} tokens",
                positions.len()
            )));
        }
        if cache.layers.len() != self.layers.len() {
            *cache = KvCache::new(self.layers.len());
        }
        let device = embeds.device();
        let (cos, sin) = self.rotary.tables(positions, device)?;
        let mut xs = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = layer.self_attn.forward(
                &layer.input_layernorm.forward(&xs)?,
                &cos,
                &sin,
                cache,
                i,
                self.attention_block_elements,
            )?;
            xs = (xs + attn)?;
            xs = (&xs
                + layer
                    .mlp
                    .forward(&layer.post_attention_layernorm.forward(&xs)?)?)?;
            if let Some(t) = trace.as_deref_mut() {
                t.layer_out.push(xs.clone());
            }
        }
        let xs = self.norm.forward(&xs)?;
        if let Some(t) = trace {
            t.final_norm = Some(xs.clone());
        }
        let xs = match mode {
            LogitsMode::All => xs,
            LogitsMode::Last => xs.narrow(1, len - 1, 1)?,
        };
        Ok(self.lm_head.forward(&xs)?.to_dtype(DType::F32)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncating_a_cache_keeps_the_prefix() {
        let device = Device::Cpu;
        let mut cache = KvCache::new(2);
        let k = Tensor::zeros((1, 2, 5, 4), DType::F32, &device).unwrap();
        for layer in 0..2 {
            cache.append(layer, &k, &k).unwrap();
        }
        let shared = cache.clone();
        cache.truncate(3).unwrap();
        assert_eq!(cache.len(), 3);
        assert_eq!(shared.len(), 5);
    }
}
