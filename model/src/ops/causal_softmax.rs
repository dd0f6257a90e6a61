//! Softmax over the last dimension under a causal mask computed from indices.
//!
//! Causal attention over blocks of query rows needs, per block, the mask "query `i` sees keys
//! `0..=past + i`". Building it on the host and uploading it costs a transfer per block and
//! layer; this op derives it from the row index instead, on both devices.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};

use super::{SharedRows, for_row_ranges, from_f32, to_f32};

/// Softmax of `scores` `[.., rows, cols]` over the last dimension where row `r` of each
/// matrix is query `q = r % query_len` and sees only the keys `0..=past + q` (the rest get
/// probability 0). Grouped-query heads folded into the rows (`rows = groups * query_len`) are
/// handled by the modulo. f32, f16 or bf16; f32 arithmetic.
///
/// Errors when `query_len` is 0 or does not divide `rows`, or on a non-float dtype.
pub fn causal_softmax(scores: &Tensor, query_len: usize, past: usize) -> Result<Tensor> {
    let dims = scores.dims();
    if dims.len() < 2 {
        candle_core::bail!(
            "causal_softmax: scores {:?} need rows and columns",
            scores.shape()
        );
    }
    let rows = dims[dims.len() - 2];
    if query_len == 0 || !rows.is_multiple_of(query_len) {
        candle_core::bail!(
            "causal_softmax: {rows} rows are not a multiple of query_len {query_len}"
        );
    }
    if !matches!(scores.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        candle_core::bail!("causal_softmax: unsupported dtype {:?}", scores.dtype());
    }
    if scores.elem_count() == 0 {
        return Ok(scores.clone());
    }
    scores
        .contiguous()?
        .apply_op1_no_bwd(&CausalSoftmax { query_len, past })
}

struct CausalSoftmax {
    query_len: usize,
    past: usize,
}

impl CausalSoftmax {
    /// Keys visible to global row `row`.
    fn visible(&self, row: usize, cols: usize) -> usize {
        (self.past + row % self.query_len + 1).min(cols)
    }

    fn cpu<T: WithDType>(&self, scores: &[T], cols: usize) -> Vec<T> {
        let rows = scores.len() / cols;
        let mut out = vec![T::zero(); scores.len()];
        let shared = SharedRows::new(&mut out);
        for_row_ranges(rows, cols, |first, count| {
            // SAFETY: every call gets a disjoint row range; `out` outlives the calls.
            let out_rows = unsafe { shared.rows(first * cols, count * cols) };
            let mut exps = vec![0f32; cols];
            for (offset, out_row) in out_rows.chunks_exact_mut(cols).enumerate() {
                let row = first + offset;
                let visible = self.visible(row, cols);
                let in_row = &scores[row * cols..row * cols + visible];
                let max = in_row
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &v| m.max(to_f32(v)));
                let mut sum = 0f32;
                for (e, &v) in exps.iter_mut().zip(in_row) {
                    *e = (to_f32(v) - max).exp();
                    sum += *e;
                }
                let inverse = 1.0 / sum;
                for (o, &e) in out_row.iter_mut().zip(&exps[..visible]) {
                    *o = from_f32(e * inverse);
                }
            }
        });
        out
    }
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "vidx-causal-softmax"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("causal_softmax: not contiguous".into()))?;
        let cols = layout.dims().last().copied().unwrap_or(1);
        let out = match storage {
            CpuStorage::F32(s) => CpuStorage::F32(self.cpu(&s[start..end], cols)),
            CpuStorage::F16(s) => CpuStorage::F16(self.cpu(&s[start..end], cols)),
            CpuStorage::BF16(s) => CpuStorage::BF16(self.cpu(&s[start..end], cols)),
            _ => candle_core::bail!("causal_softmax: unsupported dtype"),
        };
        Ok((out, layout.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle_core::CudaStorage,
        layout: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::CudaStorageSlice as S;
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
        };
        use candle_core::cuda_backend::{CudaDType, WrapErr};
        use candle_core::{CudaDevice, CudaStorage};

        fn launch<T: CudaDType + DeviceRepr>(
            op: &CausalSoftmax,
            kernel: &str,
            scores: &CudaSlice<T>,
            layout: &Layout,
            device: &CudaDevice,
        ) -> Result<CudaStorage> {
            let (start, end) = layout
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("causal_softmax: not contiguous".into()))?;
            let scores = scores.slice(start..end);
            let elements = end - start;
            let cols = layout.dims().last().copied().unwrap_or(1);
            let function = device.get_or_load_custom_func(
                kernel,
                "vidx_causal_softmax",
                super::ptx("causal_softmax")?,
            )?;
            // SAFETY: the kernel writes every element before anything reads it.
            let out = unsafe { device.alloc::<T>(elements)? };
            let config = LaunchConfig {
                grid_dim: ((elements / cols) as u32, 1, 1),
                block_dim: (super::block_threads(cols), 1, 1),
                shared_mem_bytes: 0,
            };
            let (cols, query_len, past) = (cols as i32, op.query_len as i32, op.past as i32);
            let mut builder = function.builder();
            builder.arg(&scores);
            builder.arg(&out);
            builder.arg(&cols);
            builder.arg(&query_len);
            builder.arg(&past);
            // SAFETY: the arguments match the kernel's signature and `out` holds every row.
            unsafe { builder.launch(config) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
        }

        let device = &storage.device;
        let out = match &storage.slice {
            S::F32(s) => launch(self, "causal_softmax_f32", s, layout, device)?,
            S::F16(s) => launch(self, "causal_softmax_f16", s, layout, device)?,
            S::BF16(s) => launch(self, "causal_softmax_bf16", s, layout, device)?,
            _ => candle_core::bail!("causal_softmax: unsupported dtype"),
        };
        Ok((out, layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{assert_close, test_devices};

    /// The plain composition: a host-built additive mask and candle's softmax.
    fn reference(scores: &Tensor, query_len: usize, past: usize) -> Tensor {
        let (rows, cols) = scores.dims4().map(|(_, _, r, c)| (r, c)).unwrap();
        let mask: Vec<f32> = (0..rows)
            .flat_map(|r| {
                (0..cols).map(move |c| {
                    if c > past + r % query_len {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (rows, cols), scores.device()).unwrap();
        let masked = scores
            .to_dtype(DType::F32)
            .unwrap()
            .broadcast_add(&mask)
            .unwrap();
        candle_nn::ops::softmax_last_dim(&masked).unwrap()
    }

    #[test]
    fn matches_the_masked_composition_on_every_dtype_and_device() {
        for device in test_devices() {
            // (batch*heads, groups*query_len rows, keys, query_len, past): a prefill block, a
            // later block of a long prompt with folded groups, one decode row, wide rows.
            for (heads, rows, cols, query_len, past) in [
                (2, 5, 5, 5, 0),
                (3, 8, 13, 4, 9),
                (2, 7, 40, 1, 39),
                (1, 64, 1500, 32, 1436),
            ] {
                let scores = (Tensor::randn(0f32, 1.0, (1, heads, rows, cols), &device).unwrap()
                    * 4.0)
                    .unwrap();
                for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 1e-2), (DType::F16, 1e-3)] {
                    // Both sides see the same rounded scores; only the output rounding differs.
                    let scores = scores.to_dtype(dtype).unwrap();
                    let want = reference(&scores, query_len, past);
                    let got = causal_softmax(&scores, query_len, past).unwrap();
                    let label = format!("{device:?} {dtype:?} {rows}x{cols} past {past}");
                    assert_close(&got, &want, tol, &label);
                }
            }
        }
    }

    #[test]
    fn bad_inputs_are_errors() {
        let device = candle_core::Device::Cpu;
        let scores = Tensor::zeros((2, 6, 6), DType::F32, &device).unwrap();
        assert!(causal_softmax(&scores, 0, 0).is_err());
        assert!(causal_softmax(&scores, 4, 0).is_err());
        assert!(causal_softmax(&Tensor::zeros(6, DType::F32, &device).unwrap(), 1, 0).is_err());
        let ints = Tensor::zeros((6, 6), DType::U32, &device).unwrap();
        assert!(causal_softmax(&ints, 6, 0).is_err());
    }
}
