//! The Qwen2 language model of Qwen2.5-VL (`model.*`, `lm_head`): grouped-query attention with
//! q/k/v biases, SwiGLU MLPs, RMSNorm, and multimodal RoPE (M-RoPE) whose rotary half-dimension
//! is split into `mrope_section` parts driven by the time, height and width position rows.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder};

use crate::config::Config;
use crate::kv_cache::{KvCache, SlotCache, StepLayout};
use crate::nn::{Linear, linear_b, linear_no_bias};
use crate::rope_index::PositionIds;
use crate::vision::RmsNorm;
use crate::{Error, Result};

/// M-RoPE tables: per token, the rotary half-dimension takes its angle from the t, h or w
/// position row according to `mrope_section`. Angles are computed on the device from the
/// positions (`3 x L` numbers cross to it, not `L x head_dim` tables).
#[derive(Debug, Clone)]
struct MultimodalRotary {
    /// `[1, head_dim/2]` f32 inverse frequencies.
    inv_freq: Tensor,
    /// `[head_dim/2]` u32: the position row (0 = t, 1 = h, 2 = w) of each frequency.
    section_of: Tensor,
}

impl MultimodalRotary {
    fn new(config: &Config, device: &Device) -> Result<Self> {
        let head_dim = config.head_dim();
        let theta = config.rope_theta as f32;
        let inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0f32 / theta.powf(i as f32 / head_dim as f32))
            .collect();
        let section_of: Vec<u32> = config
            .mrope_section
            .iter()
            .enumerate()
            .flat_map(|(s, &n)| std::iter::repeat_n(s as u32, n))
            .collect();
        if section_of.len() != inv_freq.len() {
            return Err(Error::Config(format!(
                "mrope_section covers {} of {} rotary frequencies",
                section_of.len(),
                inv_freq.len()
            )));
        }
        let half = inv_freq.len();
        Ok(Self {
            inv_freq: Tensor::from_vec(inv_freq, (1, half), device)?,
            section_of: Tensor::from_vec(section_of, half, device)?,
        })
    }

    /// `(cos, sin)` of shape `[L, head_dim/2]`, f32.
    fn tables(&self, positions: &PositionIds) -> Result<(Tensor, Tensor)> {
        let len = positions.len();
        let rows: Vec<f32> = (0..len)
            .flat_map(|i| positions.rows.iter().map(move |row| row[i] as f32))
            .collect();
        let rows = Tensor::from_vec(rows, (len, 3), self.inv_freq.device())?;
        let angle = rows
            .index_select(&self.section_of, 1)?
            .broadcast_mul(&self.inv_freq)?;
        Ok((angle.cos()?, angle.sin()?))
    }

    /// `(cos, sin)` of shape `[N, head_dim/2]` for one text position per sequence.
    fn text_tables(&self, positions: &[i64]) -> Result<(Tensor, Tensor)> {
        let rows: Vec<f32> = positions.iter().map(|&p| p as f32).collect();
        let rows = Tensor::from_vec(rows, (positions.len(), 1), self.inv_freq.device())?;
        let angle = rows.broadcast_mul(&self.inv_freq)?;
        Ok((angle.cos()?, angle.sin()?))
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

    /// Projections and rotary embedding: `q` `[B, heads, L, hd]`, `k`, `v` `[B, kv, L, hd]`.
    /// `cos`/`sin` are `[L, hd/2]` or `[B, L, hd/2]` in the activations' dtype.
    fn project(&self, xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, len, _) = xs.dims3()?;
        let split = |t: Tensor, heads: usize| -> Result<Tensor> {
            Ok(t.reshape((b, len, heads, self.head_dim))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split(self.q_proj.forward(xs)?, self.num_heads)?;
        let k = split(self.k_proj.forward(xs)?, self.num_kv_heads)?;
        let v = split(self.v_proj.forward(xs)?, self.num_kv_heads)?;
        let q = candle_nn::rotary_emb::rope(&q, cos, sin)?;
        let k = candle_nn::rotary_emb::rope(&k, cos, sin)?;
        Ok((q, k, v))
    }

    /// Attention of `L` new tokens of one sequence over its cache and themselves, causal.
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
        let (q, k, v) = self.project(xs, cos, sin)?;
        let past = cache.len();
        // Views of the cache's valid positions: never copied, the matmuls read them strided.
        let (k, v) = cache.append(layer, &k, &v)?;
        let groups = self.num_heads / self.num_kv_heads;
        let total = past + len;
        // Scaling q is cheaper than scaling the score matrix.
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;
        // Causal attention over blocks of query rows: each block only sees the keys up to its
        // last position, and its score matrix stays within `block_elements` (sized for the
        // device: cache-sized on the CPU, a few large launches on a GPU).
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
            let kb = k.narrow(2, 0, visible)?;
            let vb = v.narrow(2, 0, visible)?;
            let mut scores = crate::nn::matmul(&qb, &kb.t()?)?.to_dtype(DType::F32)?;
            if n > 1 {
                let mask = causal_mask(n, visible, past + start, scores.device())?;
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
        let out = if outputs.len() == 1 {
            outputs.swap_remove(0)
        } else {
            Tensor::cat(&outputs, 2)?
        };
        let out = out
            .transpose(1, 2)?
            .reshape((b, len, self.num_heads * self.head_dim))?;
        Ok(self.o_proj.forward(&out)?)
    }

    /// One new token per active slot of a batch (`xs` `[N, 1, D]`), each attending over its
    /// own slot up to its own length.
    fn forward_step(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        cache: &SlotCache,
        layer: usize,
        step: &StepLayout,
    ) -> Result<Tensor> {
        let (n, _, _) = xs.dims3()?;
        let (q, k, v) = self.project(xs, cos, sin)?;
        let (k, v) = cache.write_step(layer, &k, &v, step)?;
        let groups = self.num_heads / self.num_kv_heads;
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?.reshape((
            n,
            self.num_kv_heads,
            groups,
            self.head_dim,
        ))?;
        let mut scores = crate::nn::matmul(&q, &k.t()?)?.to_dtype(DType::F32)?;
        if let Some(mask) = &step.mask {
            scores = scores.broadcast_add(mask)?;
        }
        let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(v.dtype())?;
        let out = crate::nn::matmul(&probs, &v)?.reshape((n, 1, self.num_heads * self.head_dim))?;
        Ok(self.o_proj.forward(&out)?)
    }
}

/// `[n, visible]` additive causal mask, built on the device: query row `i` (at absolute
/// position `first_row + i`) sees keys `0..=first_row + i`.
fn causal_mask(n: usize, visible: usize, first_row: usize, device: &Device) -> Result<Tensor> {
    let columns = Tensor::arange(0u32, visible as u32, device)?.unsqueeze(0)?;
    let rows = Tensor::arange(first_row as u32, (first_row + n) as u32, device)?.unsqueeze(1)?;
    let hidden = columns.broadcast_gt(&rows)?;
    let blocked = Tensor::new(f32::NEG_INFINITY, device)?.broadcast_as((n, visible))?;
    let open = Tensor::new(0f32, device)?.broadcast_as((n, visible))?;
    Ok(hidden.where_cond(&blocked, &open)?)
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
    num_kv_heads: usize,
    head_dim: usize,
    /// Upper bound on elements of one attention score block; `None`: by device.
    attention_block_elements: Option<usize>,
}

/// Default bound on attention score elements per block on the CPU: 2M f32 values (8 MiB),
/// so a block stays in cache and the allocator reuses it.
pub const ATTENTION_BLOCK_ELEMENTS: usize = 1 << 21;

/// Default bound on a GPU: 128M f32 values (512 MiB), so a 7k-token prefill of a 7B model
/// takes about a dozen blocks per layer rather than thousands of small launches.
pub const GPU_ATTENTION_BLOCK_ELEMENTS: usize = 1 << 27;

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
            rotary: MultimodalRotary::new(config, vb.device())?,
            num_kv_heads: config.num_key_value_heads,
            head_dim: config.head_dim(),
            attention_block_elements: None,
        })
    }

    /// Sets the bound on attention score elements per query block (memory vs. speed; the
    /// result does not depend on it beyond float rounding).
    pub fn set_attention_block_elements(&mut self, elements: usize) {
        self.attention_block_elements = Some(elements.max(1));
    }

    fn block_elements(&self, device: &Device) -> usize {
        self.attention_block_elements.unwrap_or(if device.is_cpu() {
            ATTENTION_BLOCK_ELEMENTS
        } else {
            GPU_ATTENTION_BLOCK_ELEMENTS
        })
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

    /// Token embeddings `[N, 1, D]` of one id per sequence, the ids already on the device.
    pub(crate) fn embed_column(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.embed_tokens.forward(&ids.unsqueeze(1)?)?)
    }

    /// Runs the decoder on `embeds` `[1, L, D]` placed after the `cache`'s positions, with the
    /// given M-RoPE positions (`L` of them), writing the new positions into the cache.
    pub fn forward(
        &self,
        embeds: &Tensor,
        positions: &PositionIds,
        cache: &mut KvCache,
        mode: LogitsMode,
        mut trace: Option<&mut TextTrace>,
    ) -> Result<Tensor> {
        let (_, len, _) = embeds.dims3()?;
        if positions.len() != len || len == 0 {
            return Err(Error::Input(format!(
                "{} positions for {len} tokens",
                positions.len()
            )));
        }
        if cache.num_layers() != self.layers.len() {
            *cache = KvCache::new(self.layers.len());
        }
        let device = embeds.device();
        let (cos, sin) = self.rotary.tables(positions)?;
        let (cos, sin) = (cos.to_dtype(embeds.dtype())?, sin.to_dtype(embeds.dtype())?);
        let block_elements = self.block_elements(device);
        let mut xs = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = layer.self_attn.forward(
                &layer.input_layernorm.forward(&xs)?,
                &cos,
                &sin,
                cache,
                i,
                block_elements,
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
        cache.advance(len);
        let xs = match (mode, trace) {
            (_, Some(t)) => {
                let normed = self.norm.forward(&xs)?;
                t.final_norm = Some(normed.clone());
                match mode {
                    LogitsMode::All => normed,
                    LogitsMode::Last => normed.narrow(1, len - 1, 1)?,
                }
            }
            (LogitsMode::All, None) => self.norm.forward(&xs)?,
            // The norm is per position: only the last one is needed.
            (LogitsMode::Last, None) => self.norm.forward(&xs.narrow(1, len - 1, 1)?)?,
        };
        Ok(self.lm_head.forward(&xs)?.to_dtype(DType::F32)?)
    }

    /// One decode step of a batch: `embeds` `[N, 1, D]` holds the next token of each of the
    /// `N` active slots of `cache`, at text position `positions[i]`. Returns f32 logits
    /// `[N, V]`; the cache holds one more position per slot.
    pub(crate) fn forward_step(
        &self,
        embeds: &Tensor,
        positions: &[i64],
        cache: &mut SlotCache,
    ) -> Result<Tensor> {
        let (n, _, _) = embeds.dims3()?;
        if positions.len() != n || cache.active() != n {
            return Err(Error::Input(format!(
                "{n} tokens for {} positions and {} active sequences",
                positions.len(),
                cache.active()
            )));
        }
        let device = embeds.device();
        let step = cache.step_layout(self.num_kv_heads, self.head_dim, device)?;
        let (cos, sin) = self.rotary.text_tables(positions)?;
        let half = self.head_dim / 2;
        let (cos, sin) = (
            cos.to_dtype(embeds.dtype())?.reshape((n, 1, half))?,
            sin.to_dtype(embeds.dtype())?.reshape((n, 1, half))?,
        );
        let mut xs = embeds.clone();
        for (i, layer) in self.layers.iter().enumerate() {
            let attn = layer.self_attn.forward_step(
                &layer.input_layernorm.forward(&xs)?,
                &cos,
                &sin,
                cache,
                i,
                &step,
            )?;
            xs = (xs + attn)?;
            xs = (&xs
                + layer
                    .mlp
                    .forward(&layer.post_attention_layernorm.forward(&xs)?)?)?;
        }
        cache.advance();
        let xs = self.norm.forward(&xs)?;
        Ok(self
            .lm_head
            .forward(&xs)?
            .to_dtype(DType::F32)?
            .squeeze(1)?)
    }
}
