//! The Qwen2.5-VL vision tower: a ViT over 14x14x2 patches with 2-D rotary embeddings,
//! windowed attention (full attention in `fullatt_block_indexes`), RMSNorm + SwiGLU blocks and a
//! 2x2 patch merger into the language model's width.
//!
//! Tensor names follow the checkpoint (`visual.patch_embed.proj`, `visual.blocks.N.*`,
//! `visual.merger.*`). Hidden states are processed in *window order*: merge units (2x2 patches)
//! are permuted so that each window is contiguous, and the merger output is permuted back.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{Linear, linear_b};

use crate::config::VisionConfig;
use crate::{Error, Result};

/// Layout of the patch sequence for a batch of grids: everything but the weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VisionLayout {
    /// `(h, w)` patch coordinates of every patch in original (merge-block major) order.
    pub rot_pos_ids: Vec<[usize; 2]>,
    /// Merge-unit permutation into window order.
    pub window_index: Vec<usize>,
    /// Patch boundaries of the attention windows (in window order), starting at 0.
    pub cu_window_seqlens: Vec<usize>,
    /// Patch boundaries of the full-attention chunks (one per temporal slice), starting at 0.
    pub cu_seqlens: Vec<usize>,
}

impl VisionLayout {
    /// Computes the layout of `grids` (patch grids `(t, h, w)`).
    pub fn new(grids: &[[usize; 3]], config: &VisionConfig) -> Result<Self> {
        let merge = config.spatial_merge_size;
        let unit = merge * merge;
        let window = config.window_size / merge / config.patch_size;
        let mut rot_pos_ids = Vec::new();
        let mut window_index = Vec::new();
        let mut cu_window_seqlens = vec![0usize];
        let mut cu_seqlens = vec![0usize];
        let mut offset = 0usize;
        for &[t, h, w] in grids {
            if t == 0 || h == 0 || w == 0 || h % merge != 0 || w % merge != 0 {
                return Err(Error::Input(format!("invalid vision grid ({t}, {h}, {w})")));
            }
            for _ in 0..t {
                for bh in 0..h / merge {
                    for bw in 0..w / merge {
                        for ih in 0..merge {
                            for iw in 0..merge {
                                rot_pos_ids.push([bh * merge + ih, bw * merge + iw]);
                            }
                        }
                    }
                }
                cu_seqlens.push(cu_seqlens[cu_seqlens.len() - 1] + h * w);
            }
            let (lh, lw) = (h / merge, w / merge);
            for ti in 0..t {
                for wy in 0..lh.div_ceil(window) {
                    for wx in 0..lw.div_ceil(window) {
                        let mut count = 0;
                        for y in wy * window..((wy + 1) * window).min(lh) {
                            for x in wx * window..((wx + 1) * window).min(lw) {
                                window_index.push(offset + ti * lh * lw + y * lw + x);
                                count += 1;
                            }
                        }
                        cu_window_seqlens
                            .push(cu_window_seqlens[cu_window_seqlens.len() - 1] + count * unit);
                    }
                }
            }
            offset += t * lh * lw;
        }
        Ok(Self {
            rot_pos_ids,
            window_index,
            cu_window_seqlens,
            cu_seqlens,
        })
    }

    /// Inverse of [`Self::window_index`] (`argsort`).
    pub fn reverse_index(&self) -> Vec<usize> {
        let mut out = vec![0; self.window_index.len()];
        for (i, &w) in self.window_index.iter().enumerate() {
            out[w] = i;
        }
        out
    }

    /// Patch permutation into window order (each merge unit keeps its inner order).
    fn patch_order(&self, unit: usize) -> Vec<u32> {
        self.window_index
            .iter()
            .flat_map(|&m| (0..unit).map(move |k| (m * unit + k) as u32))
            .collect()
    }
}

/// Intermediate results of one vision forward pass, for reference comparisons.
#[derive(Debug, Default)]
pub struct VisionTrace {
    /// Patch embeddings in original order `[P, Dv]`.
    pub patch_embed: Option<Tensor>,
    /// Output of every block, in window order `[P, Dv]`.
    pub block_out: Vec<Tensor>,
    /// Merger output in window order `[P/4, D]`.
    pub merger_out_window: Option<Tensor>,
}

fn rms_norm(vb: &VarBuilder, dim: usize, eps: f64) -> Result<RmsNorm> {
    Ok(RmsNorm {
        weight: vb.get(dim, "weight")?,
        eps: eps as f32,
    })
}

/// RMSNorm computed by candle's fused op.
#[derive(Debug, Clone)]
pub(crate) struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    pub(crate) fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        rms_norm(&vb, dim, eps)
    }
}

impl RmsNorm {
    /// `(x + residual, norm(x + residual))` in one fused op.
    pub(crate) fn forward_residual(
        &self,
        x: &Tensor,
        residual: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        Ok(crate::ops::rms_norm_residual(
            x,
            residual,
            &self.weight,
            self.eps,
        )?)
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(xs, &self.weight, self.eps)
    }
}

/// How one kind of attention (windowed or full) is laid out in launches: chunks of equal
/// length are gathered into one batch dimension, so a whole tower pass makes one launch per
/// distinct chunk length (a few: the full windows and the ragged ones at the right and bottom
/// edges), split further only where a batch's score matrix would exceed the device's bound.
/// Built on the host from the layout's integers; nothing is read back from the device.
#[derive(Debug)]
struct AttentionPlan {
    /// `(first patch, length)` of every non-empty chunk, in sequence order (the CPU path).
    chunks: Vec<(usize, usize)>,
    /// Patch permutation putting equal-length chunks next to each other (`None`: they already
    /// are), and its inverse.
    order: Option<(Tensor, Tensor)>,
    /// `(first patch, chunk length, chunk count)` of each launch, in the permuted order.
    launches: Vec<(usize, usize, usize)>,
}

impl AttentionPlan {
    fn new(cu: &[usize], num_heads: usize, device: &Device) -> Result<Self> {
        let in_order: Vec<(usize, usize)> = cu
            .windows(2)
            .map(|pair| (pair[0], pair[1] - pair[0]))
            .filter(|&(_, size)| size > 0)
            .collect();
        let mut chunks = in_order.clone();
        // Stable: chunks of one length keep their relative order.
        chunks.sort_by_key(|&(_, size)| std::cmp::Reverse(size));
        let mut permutation = Vec::with_capacity(cu.last().copied().unwrap_or(0));
        for &(start, size) in &chunks {
            permutation.extend(start as u32..(start + size) as u32);
        }
        let identity = permutation
            .iter()
            .enumerate()
            .all(|(i, &p)| p as usize == i);
        let order = if identity {
            None
        } else {
            let mut inverse = vec![0u32; permutation.len()];
            for (i, &p) in permutation.iter().enumerate() {
                inverse[p as usize] = i as u32;
            }
            Some((
                Tensor::new(permutation, device)?,
                Tensor::new(inverse, device)?,
            ))
        };
        let bound = if device.is_cpu() {
            CPU_SCORE_ELEMENTS
        } else {
            GPU_SCORE_ELEMENTS
        };
        let mut launches = Vec::new();
        let mut first = 0;
        for (_, size, count) in group_equal_chunks(&chunks) {
            let per_launch = (bound / (num_heads * size * size)).clamp(1, count);
            for done in (0..count).step_by(per_launch) {
                let n = per_launch.min(count - done);
                launches.push((first + done * size, size, n));
            }
            first += size * count;
        }
        Ok(Self {
            chunks: in_order,
            order,
            launches,
        })
    }
}

#[derive(Debug, Clone)]
struct VisionAttention {
    /// q and k projections in one matmul, q's rows pre-scaled by `1/sqrt(head_dim)` (scaling
    /// the weights once is cheaper than scaling q or every score matrix per pass).
    qk: Linear,
    v: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let dim = config.hidden_size;
        let qkv = linear_b(dim, dim * 3, true, vb.pp("qkv"))?;
        let weight = qkv.weight();
        let bias = qkv
            .bias()
            .ok_or_else(|| Error::Config("vision qkv has no bias".into()))?;
        let scale = 1.0 / (config.head_dim() as f64).sqrt();
        let scaled = |t: &Tensor, dim0: usize| -> Result<Tensor> {
            let q = (t.narrow(0, 0, dim)?.to_dtype(DType::F32)? * scale)?.to_dtype(t.dtype())?;
            Ok(Tensor::cat(&[&q, &t.narrow(0, dim, dim0)?], 0)?)
        };
        Ok(Self {
            qk: Linear::new(scaled(weight, dim)?, Some(scaled(bias, dim)?)),
            v: Linear::new(
                weight.narrow(0, 2 * dim, dim)?.contiguous()?,
                Some(bias.narrow(0, 2 * dim, dim)?.contiguous()?),
            ),
            proj: linear_b(dim, dim, true, vb.pp("proj"))?,
            num_heads: config.num_heads,
            head_dim: config.head_dim(),
        })
    }

    /// Non-causal attention inside each chunk of `plan`; `cos`/`sin` are `[P, head_dim/2]`.
    fn forward(
        &self,
        xs: &Tensor,
        plan: &AttentionPlan,
        cos: &Tensor,
        sin: &Tensor,
    ) -> Result<Tensor> {
        let (heads, head_dim) = (self.num_heads, self.head_dim);
        let seq = xs.dim(0)?;
        let dtype = xs.dtype();
        // Rotary on q and k together, in `[1, P, 2H, hd]` layout (no transpose needed).
        let qk = self
            .qk
            .forward(xs)?
            .reshape((1, seq, 2 * heads, head_dim))?;
        let qk = candle_nn::rotary_emb::rope_thd(&qk.to_dtype(DType::F32)?, cos, sin)?
            .to_dtype(dtype)?
            .reshape((seq, 2 * heads * head_dim))?;
        let v = self.v.forward(xs)?;
        if xs.device().is_cpu() && dtype == DType::F32 {
            // Per (chunk, head) tasks over the threads: no copies, no tiny parallel GEMMs.
            let out = crate::ops::chunked_attention_cpu(&qk, &v, &plan.chunks, heads, head_dim)?;
            return Ok(self.proj.forward(&out)?);
        }
        let (qk, v) = match &plan.order {
            Some((order, _)) => (qk.index_select(order, 0)?, v.index_select(order, 0)?),
            None => (qk, v),
        };
        let mut outputs = Vec::with_capacity(plan.launches.len());
        for &(start, size, count) in &plan.launches {
            // [count*size, parts*H*hd] rows -> [count, H, size, hd] for part `part`.
            let take = |t: &Tensor, parts: usize, part: usize| -> Result<Tensor> {
                Ok(t.narrow(0, start, count * size)?
                    .reshape((count, size, parts, heads, head_dim))?
                    .narrow(2, part, 1)?
                    .squeeze(2)?
                    .transpose(1, 2)?
                    .contiguous()?)
            };
            let (q, k, v) = (take(&qk, 2, 0)?, take(&qk, 2, 1)?, take(&v, 1, 0)?);
            let scores = crate::nn::matmul(&q, &k.t()?)?.to_dtype(DType::F32)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
            let out = crate::nn::matmul(&probs, &v)?; // [count, H, size, hd]
            outputs.push(
                out.transpose(1, 2)?
                    .reshape((count * size, heads * head_dim))?,
            );
        }
        let out = Tensor::cat(&outputs, 0)?; // one launch: no copy
        let out = match &plan.order {
            Some((_, inverse)) => out.index_select(inverse, 0)?,
            None => out,
        };
        Ok(self.proj.forward(&out)?)
    }
}

/// Upper bound on elements of one launch's attention scores on the CPU: 2M f32 values
/// (8 MiB: cache friendly, and reused by the allocator instead of freshly mapped).
const CPU_SCORE_ELEMENTS: usize = 1 << 21;

/// The same bound on a GPU: 256M values (1 GiB in f32), so a 7B-sized tower's windows of one
/// size fit one launch and its full-attention frames a few.
const GPU_SCORE_ELEMENTS: usize = 1 << 28;

/// Groups consecutive equal-length chunks `(start, size)` into `(start, size, count)` runs.
fn group_equal_chunks(chunks: &[(usize, usize)]) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for &(start, size) in chunks {
        match runs.last_mut() {
            Some((_, sz, count)) if *sz == size => *count += 1,
            _ => runs.push((start, size, 1)),
        }
    }
    runs
}

#[derive(Debug, Clone)]
struct VisionMlp {
    /// `gate_proj` and `up_proj` stacked into one `[2 * inter, dim]` projection (gate first).
    gate_up: Linear,
    down_proj: Linear,
}

impl VisionMlp {
    fn new(dim: usize, inter: usize, vb: VarBuilder) -> Result<Self> {
        let gate = linear_b(dim, inter, true, vb.pp("gate_proj"))?;
        let up = linear_b(dim, inter, true, vb.pp("up_proj"))?;
        let bias = |l: &Linear| {
            l.bias()
                .cloned()
                .ok_or_else(|| Error::Config("vision mlp has no bias".into()))
        };
        let weight = Tensor::cat(&[gate.weight(), up.weight()], 0)?;
        let bias = Tensor::cat(&[&bias(&gate)?, &bias(&up)?], 0)?;
        Ok(Self {
            gate_up: Linear::new(weight, Some(bias)),
            down_proj: linear_b(inter, dim, true, vb.pp("down_proj"))?,
        })
    }
}

impl Module for VisionMlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = crate::ops::silu_mul(&self.gate_up.forward(xs)?)?;
        self.down_proj.forward(&hidden)
    }
}

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: RmsNorm,
    norm2: RmsNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, inter) = (config.hidden_size, config.intermediate_size);
        Ok(Self {
            norm1: rms_norm(&vb.pp("norm1"), dim, 1e-6)?,
            norm2: rms_norm(&vb.pp("norm2"), dim, 1e-6)?,
            attn: VisionAttention::new(config, vb.pp("attn"))?,
            mlp: VisionMlp::new(dim, inter, vb.pp("mlp"))?,
        })
    }

    /// Runs the block on `xs`, given `normed = norm1(xs)`. Returns the block's output and,
    /// when `next_norm` is given, that norm of the output: the residual adds are fused with
    /// the norm that follows them ([`crate::ops::rms_norm_residual`]).
    fn forward(
        &self,
        xs: &Tensor,
        normed: &Tensor,
        plan: &AttentionPlan,
        rotary: (&Tensor, &Tensor),
        next_norm: Option<&RmsNorm>,
    ) -> Result<(Tensor, Option<Tensor>)> {
        let attn = self.attn.forward(normed, plan, rotary.0, rotary.1)?;
        let (xs, normed) = self.norm2.forward_residual(&attn, xs)?;
        let mlp = self.mlp.forward(&normed)?;
        match next_norm {
            Some(norm) => {
                let (out, normed) = norm.forward_residual(&mlp, &xs)?;
                Ok((out, Some(normed)))
            }
            None => Ok(((xs + mlp)?, None)),
        }
    }
}

#[derive(Debug, Clone)]
struct PatchMerger {
    ln_q: RmsNorm,
    fc1: Linear,
    fc2: Linear,
    merged_dim: usize,
}

impl Module for PatchMerger {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let xs = self.ln_q.forward(xs)?;
        let n = xs.elem_count() / self.merged_dim;
        let xs = xs.reshape((n, self.merged_dim))?;
        // Exact (erf) GELU, like torch's nn.GELU(); candle's `gelu` is the tanh approximation.
        self.fc2.forward(&self.fc1.forward(&xs)?.gelu_erf()?)
    }
}

/// The Qwen2.5-VL vision transformer (`visual.*`).
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    patch_embed: Linear,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    inv_freq: Vec<f32>,
    config: VisionConfig,
}

impl VisionTransformer {
    /// Builds the tower from `vb` rooted at `visual`.
    pub fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let c = config;
        let weight = vb.pp("patch_embed").pp("proj").get(
            (
                c.hidden_size,
                c.in_chans,
                c.temporal_patch_size,
                c.patch_size,
                c.patch_size,
            ),
            "weight",
        )?;
        // A Conv3d whose kernel equals its stride over one patch is a matmul over the flat patch.
        let patch_embed = Linear::new(weight.reshape((c.hidden_size, c.patch_dim()))?, None);
        let blocks = (0..c.depth)
            .map(|i| VisionBlock::new(c, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let merged_dim = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        let mvb = vb.pp("merger");
        let merger = PatchMerger {
            ln_q: rms_norm(&mvb.pp("ln_q"), c.hidden_size, 1e-6)?,
            fc1: linear_b(merged_dim, merged_dim, true, mvb.pp("mlp").pp(0))?,
            fc2: linear_b(merged_dim, c.out_hidden_size, true, mvb.pp("mlp").pp(2))?,
            merged_dim,
        };
        // VisionRotaryEmbedding(dim = head_dim / 2, theta = 10000).
        let rot_dim = c.head_dim() / 2;
        let inv_freq = (0..rot_dim)
            .step_by(2)
            .map(|i| 1.0f32 / 10000f32.powf(i as f32 / rot_dim as f32))
            .collect();
        Ok(Self {
            patch_embed,
            blocks,
            merger,
            inv_freq,
            config: c.clone(),
        })
    }

    /// The configuration the tower was built with.
    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// Cos/sin tables `[P, head_dim/2]` in window order.
    fn rotary(&self, layout: &VisionLayout, device: &Device) -> Result<(Tensor, Tensor)> {
        let unit = self.config.spatial_merge_size * self.config.spatial_merge_size;
        let half = self.inv_freq.len() * 2;
        let patches = layout.rot_pos_ids.len();
        let mut cos = Vec::with_capacity(patches * half);
        let mut sin = Vec::with_capacity(patches * half);
        for &m in &layout.window_index {
            for k in 0..unit {
                let [h, w] = layout.rot_pos_ids[m * unit + k];
                for coordinate in [h, w] {
                    for f in &self.inv_freq {
                        let angle = coordinate as f32 * f;
                        cos.push(angle.cos());
                        sin.push(angle.sin());
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (patches, half), device)?,
            Tensor::from_vec(sin, (patches, half), device)?,
        ))
    }

    /// Encodes `pixel_values` `[P, 3*2*14*14]` of the given grids into merged tokens
    /// `[P/4, out_hidden]` in original order.
    pub fn forward(&self, pixel_values: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        self.forward_traced(pixel_values, grids, None)
    }

    /// [`Self::forward`], optionally recording intermediate results into `trace`.
    pub fn forward_traced(
        &self,
        pixel_values: &Tensor,
        grids: &[[usize; 3]],
        mut trace: Option<&mut VisionTrace>,
    ) -> Result<Tensor> {
        let layout = VisionLayout::new(grids, &self.config)?;
        let patches = layout.rot_pos_ids.len();
        let (rows, cols) = pixel_values.dims2()?;
        if rows != patches || cols != self.config.patch_dim() {
            return Err(Error::Input(format!(
                "pixel values [{rows}, {cols}] do not match grids with {patches} patches of {}",
                self.config.patch_dim()
            )));
        }
        let device = pixel_values.device();
        let dtype = self.patch_embed.weight().dtype();
        let xs = self.patch_embed.forward(&pixel_values.to_dtype(dtype)?)?;
        if let Some(t) = trace.as_deref_mut() {
            t.patch_embed = Some(xs.clone());
        }
        let unit = self.config.spatial_merge_size * self.config.spatial_merge_size;
        let order = Tensor::new(layout.patch_order(unit), device)?;
        let mut xs = xs.index_select(&order, 0)?;
        let (cos, sin) = self.rotary(&layout, device)?;
        let heads = self.config.num_heads;
        let window_plan = AttentionPlan::new(&layout.cu_window_seqlens, heads, device)?;
        let full_plan = AttentionPlan::new(&layout.cu_seqlens, heads, device)?;
        let mut normed = match self.blocks.first() {
            Some(block) => block.norm1.forward(&xs)?,
            None => xs.clone(),
        };
        for (i, block) in self.blocks.iter().enumerate() {
            let plan = if self.config.fullatt_block_indexes.contains(&i) {
                &full_plan
            } else {
                &window_plan
            };
            let next_norm = self.blocks.get(i + 1).map(|b| &b.norm1);
            let (out, next_normed) = block.forward(&xs, &normed, plan, (&cos, &sin), next_norm)?;
            xs = out;
            if let Some(n) = next_normed {
                normed = n;
            }
            if let Some(t) = trace.as_deref_mut() {
                t.block_out.push(xs.clone());
            }
        }
        let merged = self.merger.forward(&xs)?;
        if let Some(t) = trace {
            t.merger_out_window = Some(merged.clone());
        }
        let reverse: Vec<u32> = layout
            .reverse_index()
            .into_iter()
            .map(|i| i as u32)
            .collect();
        Ok(merged.index_select(&Tensor::new(reverse, device)?, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(window_size: usize) -> VisionConfig {
        serde_json::from_str(&format!(r#"{{"window_size": {window_size}}}"#)).unwrap()
    }

    #[test]
    fn window_layout_drops_empty_windows_and_keeps_slices_contiguous() {
        // 4x6 patches -> 2x3 merge units, windows of 2x2 units: widths 2 and 1.
        let layout = VisionLayout::new(&[[2, 4, 6]], &config(56)).unwrap();
        assert_eq!(
            layout.window_index,
            vec![0, 1, 3, 4, 2, 5, 6, 7, 9, 10, 8, 11]
        );
        assert_eq!(layout.cu_window_seqlens, vec![0, 16, 24, 40, 48]);
        assert_eq!(layout.cu_seqlens, vec![0, 24, 48]);
        let reverse = layout.reverse_index();
        assert!(
            reverse
                .iter()
                .enumerate()
                .all(|(i, &r)| layout.window_index[r] == i)
        );
    }

    /// Attention of one window at a time, written as plainly as possible: the unfused qkv
    /// projection, rotary on `[1, H, S, hd]`, scaled scores, softmax, projection.
    fn per_window_reference(
        qkv: &candle_nn::Linear,
        proj: &candle_nn::Linear,
        xs: &Tensor,
        cu: &[usize],
        (cos, sin): (&Tensor, &Tensor),
        (heads, head_dim): (usize, usize),
    ) -> Tensor {
        let mut outputs = Vec::new();
        for pair in cu.windows(2) {
            let (start, size) = (pair[0], pair[1] - pair[0]);
            let qkv = qkv
                .forward(&xs.narrow(0, start, size).unwrap())
                .unwrap()
                .reshape((size, 3, heads, head_dim))
                .unwrap()
                .permute((1, 2, 0, 3))
                .unwrap();
            let part = |i: usize| {
                qkv.get(i)
                    .unwrap()
                    .unsqueeze(0)
                    .unwrap()
                    .contiguous()
                    .unwrap()
            };
            let rope = |t: Tensor| {
                let c = cos.narrow(0, start, size).unwrap();
                let s = sin.narrow(0, start, size).unwrap();
                candle_nn::rotary_emb::rope(&t, &c, &s).unwrap()
            };
            let (q, k, v) = (rope(part(0)), rope(part(1)), part(2));
            let scores = (q.matmul(&k.t().unwrap()).unwrap() / (head_dim as f64).sqrt()).unwrap();
            let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
            let out = probs.matmul(&v).unwrap().squeeze(0).unwrap();
            outputs.push(
                out.transpose(0, 1)
                    .unwrap()
                    .reshape((size, heads * head_dim))
                    .unwrap(),
            );
        }
        proj.forward(&Tensor::cat(&outputs, 0).unwrap()).unwrap()
    }

    #[test]
    fn gathered_ragged_windows_equal_attention_one_window_at_a_time() {
        let device = Device::Cpu;
        let (dim, heads) = (32, 4);
        let config: VisionConfig = serde_json::from_str(&format!(
            r#"{{"hidden_size": {dim}, "num_heads": {heads}}}"#
        ))
        .unwrap();
        let mut tensors = std::collections::HashMap::new();
        for (name, shape) in [
            ("qkv.weight", vec![3 * dim, dim]),
            ("qkv.bias", vec![3 * dim]),
            ("proj.weight", vec![dim, dim]),
            ("proj.bias", vec![dim]),
        ] {
            let t = (Tensor::randn(0f32, 1.0, shape, &device).unwrap() * 0.3).unwrap();
            tensors.insert(name.to_string(), t);
        }
        let vb = VarBuilder::from_tensors(tensors.clone(), DType::F32, &device);
        let attention = VisionAttention::new(&config, vb).unwrap();
        let linear = |n: &str| {
            candle_nn::Linear::new(
                tensors[&format!("{n}.weight")].clone(),
                Some(tensors[&format!("{n}.bias")].clone()),
            )
        };
        // Ragged windows of 16, 8, 16, 4, 16 patches, as at a frame's right and bottom edges.
        let cu = [0, 16, 24, 40, 44, 60];
        let xs = Tensor::randn(0f32, 1.0, (60, dim), &device).unwrap();
        let half = dim / heads / 2;
        let angles = Tensor::randn(0f32, 3.0, (60, half), &device).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let plan = AttentionPlan::new(&cu, heads, &device).unwrap();
        assert_eq!(plan.launches.len(), 3);
        let got = attention.forward(&xs, &plan, &cos, &sin).unwrap();
        let want = per_window_reference(
            &linear("qkv"),
            &linear("proj"),
            &xs,
            &cu,
            (&cos, &sin),
            (heads, dim / heads),
        );
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        let diff = diff.to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "gathered attention differs by {diff}");
    }

    #[test]
    fn equal_chunks_are_gathered_into_few_launches() {
        // Windows of 16, 8, 16, 8 patches: two launches after gathering the equal ones.
        let plan = AttentionPlan::new(&[0, 16, 24, 40, 48], 4, &Device::Cpu).unwrap();
        assert_eq!(plan.launches, vec![(0, 16, 2), (32, 8, 2)]);
        let (order, inverse) = plan.order.as_ref().unwrap();
        let order: Vec<u32> = order.to_vec1().unwrap();
        let want: Vec<u32> = (0..16).chain(24..40).chain(16..24).chain(40..48).collect();
        assert_eq!(order, want);
        let inverse: Vec<u32> = inverse.to_vec1().unwrap();
        assert!((0..48).all(|i| order[inverse[i] as usize] as usize == i));
        // Already grouped: no permutation; a bound on score elements splits a run.
        let plan = AttentionPlan::new(&[0, 8, 16, 24, 32], 2, &Device::Cpu).unwrap();
        assert!(plan.order.is_none());
        assert_eq!(plan.launches, vec![(0, 8, 4)]);
        let plan = AttentionPlan::new(&[0, 2048, 4096], 1, &Device::Cpu).unwrap();
        assert_eq!(plan.launches, vec![(0, 2048, 1), (2048, 2048, 1)]);
    }
}
