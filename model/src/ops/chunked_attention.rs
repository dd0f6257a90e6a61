//! Non-causal attention inside chunks of a patch sequence (the vision tower's windows and
//! frames) on the CPU in f32, one (chunk, head) pair per task.
//!
//! The composition on candle's CPU backend copies q, k and v into `[chunks, heads, len, hd]`,
//! materialises every score matrix at once, runs softmax over them in another pass, multiplies
//! again and copies the output back to `[patches, heads * hd]`. A window is 64 patches, so its
//! two products are 256 tiny GEMMs per block, each one a parallel GEMM with its own thread
//! hand-off. Here each task reads its q, k and v in place through strides, keeps its scores in
//! a per-thread buffer (a chunk's scores fit in cache), runs softmax on them there and writes
//! its output columns straight into the result. Tasks are spread over the CPU threads and every
//! GEMM inside one is single-threaded. Chunks of different lengths need no regrouping.

use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::contiguous;
use super::exp::softmax_in_place;

/// Attention within each chunk `(first patch, patch count)` of `chunks`.
///
/// `qk` is `[patches, 2 * heads * head_dim]`: q (already scaled by `1/sqrt(head_dim)`) then k,
/// each head-major; `v` is `[patches, heads * head_dim]`. Returns `[patches, heads * head_dim]`,
/// `softmax(q k^T) v` per chunk and head. Patches outside every chunk come out zero. f32 CPU
/// tensors only.
pub fn chunked_attention_cpu(
    qk: &Tensor,
    v: &Tensor,
    chunks: &[(usize, usize)],
    heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let (patches, width) = v.dims2()?;
    if width != heads * head_dim || qk.dims2()? != (patches, 2 * width) {
        candle_core::bail!(
            "chunked attention: qk {:?} and v {:?} do not fit {heads} heads of {head_dim}",
            qk.dims(),
            v.dims()
        );
    }
    if let Some(&(first, len)) = chunks.iter().find(|&&(first, len)| first + len > patches) {
        candle_core::bail!("chunked attention: chunk {first}+{len} is past {patches} patches");
    }
    qk.contiguous()?.apply_op2_no_bwd(
        &v.contiguous()?,
        &ChunkedAttention {
            chunks: chunks.to_vec(),
            heads,
            head_dim,
        },
    )
}

struct ChunkedAttention {
    chunks: Vec<(usize, usize)>,
    heads: usize,
    head_dim: usize,
}

/// The output buffer, written by several threads at disjoint (row range, column range) blocks.
struct SharedOut(*mut f32);

// SAFETY: every task writes only its own chunk's rows in its own head's columns; no two tasks
// share a (chunk, head) pair and chunks do not overlap, so the written elements are disjoint.
unsafe impl Send for SharedOut {}
// SAFETY: as above: shared access only reaches disjoint elements.
unsafe impl Sync for SharedOut {}

impl CustomOp2 for ChunkedAttention {
    fn name(&self) -> &'static str {
        "vidx-chunked-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(qk), CpuStorage::F32(v)) = (s1, s2) else {
            candle_core::bail!("chunked attention: the CPU op takes f32 tensors only");
        };
        let (qk, v) = (contiguous(qk, l1)?, contiguous(v, l2)?);
        let (heads, hd) = (self.heads, self.head_dim);
        let width = heads * hd;
        let patches = v.len() / width.max(1);
        let mut chunks: Vec<(usize, usize)> = self
            .chunks
            .iter()
            .copied()
            .filter(|&(_, len)| len > 0)
            .collect();
        if chunks.iter().any(|&(first, len)| first + len > patches) || qk.len() != 2 * v.len() {
            candle_core::bail!("chunked attention: operand sizes do not fit");
        }
        // Longest first, so the last tasks to start are the short ones.
        chunks.sort_by_key(|&(_, len)| std::cmp::Reverse(len));
        let mut out = vec![0f32; v.len()];
        let tasks = chunks.len() * heads;
        let next = AtomicUsize::new(0);
        let shared = SharedOut(out.as_mut_ptr());
        let longest = chunks.first().map_or(0, |&(_, len)| len);
        let work = || {
            let shared = &shared;
            let mut scores = vec![0f32; longest * longest];
            loop {
                let task = next.fetch_add(1, Ordering::Relaxed);
                if task >= tasks {
                    break;
                }
                let (first, len) = chunks[task / heads];
                let head = task % heads;
                attend(
                    qk,
                    v,
                    shared.0,
                    &mut scores[..len * len],
                    (first, len),
                    head,
                    (heads, hd),
                );
            }
        };
        let threads = candle_core::utils::get_num_threads().clamp(1, tasks.max(1));
        std::thread::scope(|scope| {
            for _ in 1..threads {
                scope.spawn(work);
            }
            work();
        });
        Ok((CpuStorage::F32(out), Shape::from_dims(&[patches, width])))
    }
}

/// One (chunk, head) task: `out[chunk, head] = softmax(q k^T) v` with `scores` as scratch.
fn attend(
    qk: &[f32],
    v: &[f32],
    out: *mut f32,
    scores: &mut [f32],
    (first, len): (usize, usize),
    head: usize,
    (heads, hd): (usize, usize),
) {
    let width = heads * hd;
    let q_rows = 2 * width;
    let q = first * q_rows + head * hd;
    let k = first * q_rows + (heads + head) * hd;
    let vo = first * width + head * hd;
    // The last element each view reaches, for the bounds the unsafe calls rely on.
    let reach = |start: usize, row_stride: usize| start + (len - 1) * row_stride + hd;
    assert!(reach(q, q_rows) <= qk.len() && reach(k, q_rows) <= qk.len());
    assert!(reach(vo, width) <= v.len() && scores.len() == len * len);
    // SAFETY: scores is `len x len` row-major and exclusively borrowed. q is a `len x hd` view
    // of qk at offset `q` with row stride `q_rows`; k^T is an `hd x len` view of qk at offset
    // `k` (element (d, j) at `k + j * q_rows + d`). Both stay inside qk (asserted above) and qk
    // outlives the call. dst is not read (`read_dst` false).
    unsafe {
        matmul_serial(
            (len, len, hd),
            (scores.as_mut_ptr(), len),
            (qk.as_ptr().add(q), q_rows, 1),
            (qk.as_ptr().add(k), 1, q_rows),
        );
    }
    for row in scores.chunks_exact_mut(len) {
        softmax_in_place(row);
    }
    // SAFETY: lhs is the `len x len` scores; rhs is a `len x hd` view of v at offset `vo` with
    // row stride `width` (inside v, asserted above). dst is the same-shaped view of the
    // `[patches, width]` output buffer at offset `vo`, which has v's length; no other task
    // writes these elements (see `SharedOut`), and the buffer outlives the thread scope.
    unsafe {
        matmul_serial(
            (len, hd, len),
            (out.add(vo), width),
            (scores.as_ptr(), len, 1),
            (v.as_ptr().add(vo), width, 1),
        );
    }
}

/// `dst = lhs @ rhs` on the calling thread: `(m, n, k)`, `dst` row-major `m x n` with row
/// stride `dst.1`, `lhs` an `m x k` view and `rhs` a `k x n` view, each `(pointer, row stride,
/// column stride)`.
///
/// # Safety
/// Every view must lie inside a live buffer for the call, and no other thread may touch the
/// elements `dst` covers meanwhile.
unsafe fn matmul_serial(
    (m, n, k): (usize, usize, usize),
    (dst, dst_rs): (*mut f32, usize),
    (lhs, lhs_rs, lhs_cs): (*const f32, usize, usize),
    (rhs, rhs_rs, rhs_cs): (*const f32, usize, usize),
) {
    // SAFETY: the caller's promise above; gemm does not read dst (`read_dst` false).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            false,
            lhs,
            lhs_cs as isize,
            lhs_rs as isize,
            rhs,
            rhs_cs as isize,
            rhs_rs as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::assert_close;
    use candle_core::Device;

    /// The plain candle composition, one chunk and head at a time.
    fn reference(qk: &Tensor, v: &Tensor, chunks: &[(usize, usize)], heads: usize) -> Tensor {
        let (patches, width) = v.dims2().unwrap();
        let hd = width / heads;
        let mut out = Tensor::zeros((patches, width), candle_core::DType::F32, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        for &(first, len) in chunks {
            for h in 0..heads {
                let q = qk
                    .narrow(0, first, len)
                    .unwrap()
                    .narrow(1, h * hd, hd)
                    .unwrap();
                let k = qk
                    .narrow(0, first, len)
                    .unwrap()
                    .narrow(1, (heads + h) * hd, hd)
                    .unwrap();
                let vv = v
                    .narrow(0, first, len)
                    .unwrap()
                    .narrow(1, h * hd, hd)
                    .unwrap();
                let scores = q.contiguous().unwrap().matmul(&k.t().unwrap()).unwrap();
                let probs = candle_nn::ops::softmax_last_dim(&scores).unwrap();
                let o = probs.matmul(&vv.contiguous().unwrap()).unwrap();
                for (r, row) in o.to_vec2::<f32>().unwrap().into_iter().enumerate() {
                    out[first + r][h * hd..(h + 1) * hd].copy_from_slice(&row);
                }
            }
        }
        Tensor::new(out, &Device::Cpu).unwrap()
    }

    #[test]
    fn ragged_chunks_equal_attention_one_chunk_and_head_at_a_time() {
        let (heads, hd) = (3, 8);
        // Windows of different lengths, one of a single patch, and two patches in no chunk.
        let chunks = [(0, 16), (16, 5), (21, 1), (22, 9), (33, 4)];
        let patches = 37;
        let qk = Tensor::randn(0f32, 1.0, (patches, 2 * heads * hd), &Device::Cpu).unwrap();
        let v = Tensor::randn(0f32, 1.0, (patches, heads * hd), &Device::Cpu).unwrap();
        let got = chunked_attention_cpu(&qk, &v, &chunks, heads, hd).unwrap();
        assert_close(&got, &reference(&qk, &v, &chunks, heads), 1e-5, "attention");
        let gap = got
            .narrow(0, 31, 2)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap();
        assert_eq!(gap.to_scalar::<f32>().unwrap(), 0.0);
    }

    #[test]
    fn a_chunk_past_the_end_is_an_error() {
        let qk = Tensor::zeros((4, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let v = Tensor::zeros((4, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = chunked_attention_cpu(&qk, &v, &[(2, 3)], 2, 2).unwrap_err();
        assert!(err.to_string().contains("past 4 patches"), "{err}");
    }
}
