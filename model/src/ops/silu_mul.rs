//! SwiGLU's `silu(gate) * up` over a fused `[.., 2 * inter]` gate|up projection, in one pass.
//!
//! The MLPs project gate and up with one GEMM into `[rows, 2 * inter]` (gate columns first).
//! The composition then needs a SiLU pass that allocates its output, a product pass that
//! allocates another, and libm's scalar `exp` per element. On the CPU this op reads each row
//! once and writes `[rows, inter]` once, with the vectorised [`super::exp::exp_f32`]; on other
//! devices it is the candle composition over the two halves.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, WithDType};

use super::exp::exp_f32;
use super::{SharedRows, contiguous, for_row_ranges, from_f32, to_f32};

/// `silu(x[.., :inter]) * x[.., inter:]` for `x` of last dimension `2 * inter`.
pub fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    let last = gate_up.dims().last().copied().unwrap_or(0);
    if last % 2 != 0 {
        candle_core::bail!("silu_mul: last dimension {last} is not even");
    }
    let inter = last / 2;
    let axis = gate_up.rank() - 1;
    if !gate_up.device().is_cpu() || !matches!(gate_up.dtype(), DType::F32 | DType::BF16) {
        let gate = gate_up.narrow(axis, 0, inter)?;
        let up = gate_up.narrow(axis, inter, inter)?;
        return gate.silu()? * up;
    }
    gate_up.contiguous()?.apply_op1_no_bwd(&SiluMul)
}

struct SiluMul;

/// The loop over rows (for f32 the conversions are no-ops and the loop vectorises).
fn cpu<T: WithDType>(x: &[T], last: usize) -> Vec<T> {
    let inter = last / 2;
    let rows = x.len().checked_div(last).unwrap_or(0);
    let mut out = vec![T::zero(); rows * inter];
    let shared = SharedRows::new(&mut out);
    for_row_ranges(rows, last, |first, count| {
        // SAFETY: for_row_ranges hands each call a disjoint row range; `out` outlives it.
        let out = unsafe { shared.rows(first * inter, count * inter) };
        let input = &x[first * last..(first + count) * last];
        for (out_row, row) in out.chunks_exact_mut(inter).zip(input.chunks_exact(last)) {
            let (gate, up) = row.split_at(inter);
            for ((o, &g), &u) in out_row.iter_mut().zip(gate).zip(up) {
                let g = to_f32(g);
                *o = from_f32(g / (1.0 + exp_f32(-g)) * to_f32(u));
            }
        }
    });
    out
}

impl CustomOp1 for SiluMul {
    fn name(&self) -> &'static str {
        "vidx-silu-mul"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let last = layout.dims().last().copied().unwrap_or(0);
        let storage = match storage {
            CpuStorage::F32(x) => CpuStorage::F32(cpu(contiguous(x, layout)?, last)),
            CpuStorage::BF16(x) => CpuStorage::BF16(cpu(contiguous(x, layout)?, last)),
            _ => candle_core::bail!("silu_mul: unsupported dtype on the CPU"),
        };
        let mut dims = layout.dims().to_vec();
        if let Some(d) = dims.last_mut() {
            *d = last / 2;
        }
        Ok((storage, Shape::from_dims(&dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{assert_close, test_devices};

    #[test]
    fn equals_silu_of_gate_times_up() {
        for device in test_devices() {
            for (rows, inter) in [(1usize, 3usize), (37, 64), (300, 200)] {
                let x = Tensor::randn(0f32, 3.0, (rows, 2 * inter), &device).unwrap();
                let gate = x.narrow(1, 0, inter).unwrap();
                let up = x.narrow(1, inter, inter).unwrap();
                let want = (gate.silu().unwrap() * up).unwrap();
                let got = silu_mul(&x).unwrap();
                assert_eq!(got.dims(), [rows, inter]);
                assert_close(&got, &want, 1e-5, "silu_mul f32");
                let bf = silu_mul(&x.to_dtype(DType::BF16).unwrap()).unwrap();
                assert_close(
                    &bf.to_dtype(DType::F32).unwrap(),
                    &want,
                    2e-2,
                    "silu_mul bf16",
                );
            }
        }
    }

    #[test]
    fn an_odd_width_is_an_error() {
        let x = Tensor::zeros((2, 5), DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(silu_mul(&x).unwrap_err().to_string().contains("not even"));
    }
}
