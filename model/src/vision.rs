//! The Qwen2.5-VL vision tower: a ViT over 14x14x2 patches with 2-D rotary embeddings,
//! windowed attention (full attention in `fullatt_block_indexes`), RMSNorm + SwiGLU blocks and a
//! 2x2 patch merger into the language model's width.
//!
//! Tensor names follow the checkpoint (`visual.patch_embed.proj`, `visual.blocks.N.*`,
//! `visual.merger.*`). Hidden states are processed in *window order*: merge units (2x2 patches)
//! are permuted so that each window is contiguous, and the merger output is permuted back.

use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_nn::{Linear, VarBuilder, linear_b};

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

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::rms_norm(xs, &self.weight, self.eps)
    }
}

#[derive(Debug, Clone)]
struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let dim = config.hidden_size;
        Ok(Self {
            qkv: linear_b(dim, dim * 3, true, vb.pp("qkv"))?,
            proj: linear_b(dim, dim, true, vb.pp("proj"))?,
            num_heads: config.num_heads,
            head_dim: config.head_dim(),
        })
    }

    /// Non-causal attention inside each `[cu[i], cu[i+1])` chunk of the sequence.
    fn forward(&self, xs: &Tensor, cu: &[usize], cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let seq = xs.dim(0)?;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((seq, 3, self.num_heads, self.head_dim))?
            .permute((1, 2, 0, 3))?; // [3, H, P, hd]
        let rope = |t: Tensor| -> Result<Tensor> {
            let t = t.unsqueeze(0)?.contiguous()?;
            let dtype = t.dtype();
            let out = candle_nn::rotary_emb::rope(&t.to_dtype(DType::F32)?, cos, sin)?;
            Ok(out.to_dtype(dtype)?)
        };
        let q = rope(qkv.i(0)?)?;
        let k = rope(qkv.i(1)?)?;
        let v = qkv.i(2)?.unsqueeze(0)?.contiguous()?;
        // Scaling q is cheaper than scaling every score matrix.
        let q = (q * (1.0 / (self.head_dim as f64).sqrt()))?;
        let mut outputs = Vec::with_capacity(cu.len());
        for (run_start, size, run_count) in group_equal_chunks(cu) {
            // Equal chunks are attended as one batch, capped so that a score block stays small
            // (cache friendly, and reused by the allocator instead of freshly mapped).
            let per_batch =
                (SCORE_BLOCK_ELEMENTS / (self.num_heads * size * size)).clamp(1, run_count);
            for first in (0..run_count).step_by(per_batch) {
                let count = per_batch.min(run_count - first);
                let start = run_start + first * size;
                let take = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(2, start, size * count)?
                        .reshape((self.num_heads, count, size, self.head_dim))?
                        .transpose(0, 1)?
                        .contiguous()?)
                };
                let (qc, kc, vc) = (take(&q)?, take(&k)?, take(&v)?);
                let scores = qc.matmul(&kc.t()?)?.to_dtype(DType::F32)?;
                let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(vc.dtype())?;
                let out = probs.matmul(&vc)?; // [count, H, size, hd]
                outputs.push(
                    out.transpose(1, 2)?
                        .reshape((count * size, self.num_heads * self.head_dim))?,
                );
            }
        }
        let out = Tensor::cat(&outputs, 0)?;
        Ok(self.proj.forward(&out)?)
    }
}

/// Upper bound on elements of one batch of attention scores: 2M f32 values (8 MiB).
const SCORE_BLOCK_ELEMENTS: usize = 1 << 21;

/// Groups consecutive equal-length chunks of `cu` into `(start, size, count)` runs; empty
/// chunks are skipped.
fn group_equal_chunks(cu: &[usize]) -> Vec<(usize, usize, usize)> {
    let mut runs: Vec<(usize, usize, usize)> = Vec::new();
    for pair in cu.windows(2) {
        let (start, size) = (pair[0], pair[1] - pair[0]);
        if size == 0 {
            continue;
        }
        match runs.last_mut() {
            Some((s, sz, count)) if *sz == size && *s + *sz * *count == start => *count += 1,
            _ => runs.push((start, size, 1)),
        }
    }
    runs
}

#[derive(Debug, Clone)]
struct VisionMlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Module for VisionMlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(xs)?.silu()?;
        self.down_proj.forward(&(gate * self.up_proj.forward(xs)?)?)
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
        let mlp = vb.pp("mlp");
        Ok(Self {
            norm1: rms_norm(&vb.pp("norm1"), dim, 1e-6)?,
            norm2: rms_norm(&vb.pp("norm2"), dim, 1e-6)?,
            attn: VisionAttention::new(config, vb.pp("attn"))?,
            mlp: VisionMlp {
                gate_proj: linear_b(dim, inter, true, mlp.pp("gate_proj"))?,
                up_proj: linear_b(dim, inter, true, mlp.pp("up_proj"))?,
                down_proj: linear_b(inter, dim, true, mlp.pp("down_proj"))?,
            },
        })
    }

    fn forward(&self, xs: &Tensor, cu: &[usize], cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let xs = (xs + self.attn.forward(&self.norm1.forward(xs)?, cu, cos, sin)?)?;
        Ok((&xs + self.mlp.forward(&self.norm2.forward(&xs)?)?)?)
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
        for (i, block) in self.blocks.iter().enumerate() {
            let cu = if self.config.fullatt_block_indexes.contains(&i) {
                &layout.cu_seqlens
            } else {
                &layout.cu_window_seqlens
            };
            xs = block.forward(&xs, cu, &cos, &sin)?;
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

    #[test]
    fn equal_chunks_are_grouped() {
        assert_eq!(
            group_equal_chunks(&[0, 16, 32, 40, 40, 56]),
            vec![(0, 16, 2), (32, 8, 1), (40, 16, 1)]
        );
    }
}
