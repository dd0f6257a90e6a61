//! Residual add fused with RMSNorm: `sum = x + residual`, `normed = sum / rms(sum) * weight`.
//!
//! Pre-norm transformer blocks do this between every two sublayers; the plain composition
//! reads the row three times (add, then candle's two-pass norm) and writes it twice. Both
//! outputs come from one op: its output is `[2, ..shape]`, split into two views.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, WithDType};

#[cfg(feature = "cuda")]
use super::offsets;
use super::{SharedRows, contiguous, for_row_ranges, from_f32, to_f32};

/// Returns `(sum, normed)`: `sum = x + residual` rounded to the input dtype (the residual
/// stream) and `normed = rms_norm(sum, weight, eps)` over the last dimension.
///
/// `x` and `residual` share one shape; `weight` is 1-D with the last dimension's size; all
/// three share a float dtype (f32, f16 or bf16; the arithmetic is f32). A mismatch is an
/// error, never a panic.
pub fn rms_norm_residual(
    x: &Tensor,
    residual: &Tensor,
    weight: &Tensor,
    eps: f32,
) -> Result<(Tensor, Tensor)> {
    if x.shape() != residual.shape() {
        candle_core::bail!(
            "rms_norm_residual: x {:?} and residual {:?} differ in shape",
            x.shape(),
            residual.shape()
        );
    }
    let cols = x.dims().last().copied().unwrap_or(0);
    if x.rank() == 0 || cols == 0 {
        candle_core::bail!("rms_norm_residual: empty or scalar input {:?}", x.shape());
    }
    if weight.dims() != [cols] {
        candle_core::bail!(
            "rms_norm_residual: weight {:?} does not match last dimension {cols}",
            weight.shape()
        );
    }
    if x.dtype() != residual.dtype() || x.dtype() != weight.dtype() {
        candle_core::bail!(
            "rms_norm_residual: dtypes {:?}, {:?}, {:?} differ",
            x.dtype(),
            residual.dtype(),
            weight.dtype()
        );
    }
    if !matches!(x.dtype(), DType::F32 | DType::F16 | DType::BF16) {
        candle_core::bail!("rms_norm_residual: unsupported dtype {:?}", x.dtype());
    }
    let out = x.contiguous()?.apply_op3_no_bwd(
        &residual.contiguous()?,
        &weight.contiguous()?,
        &RmsNormResidual { eps },
    )?;
    Ok((out.get(0)?, out.get(1)?))
}

struct RmsNormResidual {
    eps: f32,
}

fn cpu<T: WithDType>(x: &[T], residual: &[T], weight: &[T], cols: usize, eps: f32) -> Vec<T> {
    let elements = x.len();
    let rows = elements / cols;
    let mut out = vec![T::zero(); 2 * elements];
    let (sums, norms) = out.split_at_mut(elements);
    let (sums, norms) = (SharedRows::new(sums), SharedRows::new(norms));
    let weight: Vec<f32> = weight.iter().map(|&w| to_f32(w)).collect();
    for_row_ranges(rows, cols, |first, count| {
        let range = first * cols..(first + count) * cols;
        // SAFETY: `for_row_ranges` hands every call a disjoint row range, and `out` outlives
        // the scope in which the calls run.
        let (sum_rows, norm_rows) = unsafe {
            (
                sums.rows(range.start, range.len()),
                norms.rows(range.start, range.len()),
            )
        };
        let x_rows = &x[range.clone()];
        let residual_rows = &residual[range];
        for row in 0..count {
            let cells = row * cols..(row + 1) * cols;
            let mut squares = 0f32;
            for ((sum, &a), &b) in sum_rows[cells.clone()]
                .iter_mut()
                .zip(&x_rows[cells.clone()])
                .zip(&residual_rows[cells.clone()])
            {
                *sum = from_f32(to_f32(a) + to_f32(b));
                let rounded = to_f32(*sum);
                squares += rounded * rounded;
            }
            let inverse = 1.0 / (squares / cols as f32 + eps).sqrt();
            for ((norm, &sum), &w) in norm_rows[cells.clone()]
                .iter_mut()
                .zip(&sum_rows[cells])
                .zip(&weight)
            {
                *norm = from_f32(to_f32(sum) * inverse * w);
            }
        }
    });
    out
}

impl CustomOp3 for RmsNormResidual {
    fn name(&self) -> &'static str {
        "vidx-rms-norm-residual"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let cols = l1.dims().last().copied().unwrap_or(1);
        let shape = output_shape(l1);
        let storage = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(r), CpuStorage::F32(w)) => CpuStorage::F32(cpu(
                contiguous(x, l1)?,
                contiguous(r, l2)?,
                contiguous(w, l3)?,
                cols,
                self.eps,
            )),
            (CpuStorage::F16(x), CpuStorage::F16(r), CpuStorage::F16(w)) => CpuStorage::F16(cpu(
                contiguous(x, l1)?,
                contiguous(r, l2)?,
                contiguous(w, l3)?,
                cols,
                self.eps,
            )),
            (CpuStorage::BF16(x), CpuStorage::BF16(r), CpuStorage::BF16(w)) => {
                CpuStorage::BF16(cpu(
                    contiguous(x, l1)?,
                    contiguous(r, l2)?,
                    contiguous(w, l3)?,
                    cols,
                    self.eps,
                ))
            }
            _ => candle_core::bail!("rms_norm_residual: unsupported or mixed dtypes"),
        };
        Ok((storage, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::CudaStorageSlice as S;
        use candle_core::cuda_backend::cudarc::driver::{
            CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg,
        };
        use candle_core::cuda_backend::{CudaDType, WrapErr};
        use candle_core::{CudaDevice, CudaStorage};

        fn launch<T: CudaDType + DeviceRepr>(
            kernel: &str,
            inputs: [(&CudaSlice<T>, &Layout); 3],
            eps: f32,
            device: &CudaDevice,
        ) -> Result<CudaStorage> {
            let [(x, lx), (r, lr), (w, lw)] = inputs;
            let (x, r, w) = (
                x.slice(offsets(lx)?),
                r.slice(offsets(lr)?),
                w.slice(offsets(lw)?),
            );
            let elements = lx.shape().elem_count();
            let cols = lx.dims().last().copied().unwrap_or(1);
            let rows = elements / cols;
            let function = device.get_or_load_custom_func(
                kernel,
                "vidx_rms_norm_residual",
                super::ptx("rms_norm_residual")?,
            )?;
            // SAFETY: the kernel writes every element before anything reads it.
            let out = unsafe { device.alloc::<T>(2 * elements)? };
            let config = LaunchConfig {
                grid_dim: (rows as u32, 1, 1),
                block_dim: (super::block_threads(cols), 1, 1),
                shared_mem_bytes: 0,
            };
            let (rows, cols) = (rows as i32, cols as i32);
            let mut builder = function.builder();
            builder.arg(&x);
            builder.arg(&r);
            builder.arg(&w);
            builder.arg(&out);
            builder.arg(&rows);
            builder.arg(&cols);
            builder.arg(&eps);
            // SAFETY: the arguments match the kernel's signature and `out` holds both halves.
            unsafe { builder.launch(config) }.w()?;
            Ok(CudaStorage::wrap_cuda_slice(out, device.clone()))
        }

        let device = &s1.device;
        let storage = match (&s1.slice, &s2.slice, &s3.slice) {
            (S::F32(x), S::F32(r), S::F32(w)) => launch(
                "rms_norm_residual_f32",
                [(x, l1), (r, l2), (w, l3)],
                self.eps,
                device,
            )?,
            (S::F16(x), S::F16(r), S::F16(w)) => launch(
                "rms_norm_residual_f16",
                [(x, l1), (r, l2), (w, l3)],
                self.eps,
                device,
            )?,
            (S::BF16(x), S::BF16(r), S::BF16(w)) => launch(
                "rms_norm_residual_bf16",
                [(x, l1), (r, l2), (w, l3)],
                self.eps,
                device,
            )?,
            _ => candle_core::bail!("rms_norm_residual: unsupported or mixed dtypes"),
        };
        Ok((storage, output_shape(l1)))
    }
}

/// The element range of a contiguous layout.
fn output_shape(layout: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(layout.dims());
    Shape::from_dims(&dims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::tests::{assert_close, test_devices};

    /// The plain composition the op replaces.
    fn reference(x: &Tensor, residual: &Tensor, weight: &Tensor, eps: f32) -> (Tensor, Tensor) {
        let sum = (x + residual).unwrap();
        let normed = candle_nn::ops::rms_norm(&sum, weight, eps).unwrap();
        (sum, normed)
    }

    #[test]
    fn matches_the_candle_composition_on_every_dtype_and_device() {
        for device in test_devices() {
            // 300 rows crosses the threaded path on CPU; 1000 columns needs several warps.
            for (rows, cols) in [(3, 8), (300, 1000), (17, 1280)] {
                let x = Tensor::randn(0f32, 1.0, (rows, cols), &device).unwrap();
                let r = Tensor::randn(0f32, 2.0, (rows, cols), &device).unwrap();
                let w = Tensor::randn(1f32, 0.1, cols, &device).unwrap();
                for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, 2e-2), (DType::F16, 2e-3)] {
                    let (x, r, w) = (
                        x.to_dtype(dtype).unwrap(),
                        r.to_dtype(dtype).unwrap(),
                        w.to_dtype(dtype).unwrap(),
                    );
                    let (sum, normed) = rms_norm_residual(&x, &r, &w, 1e-6).unwrap();
                    let (want_sum, want_normed) = reference(&x, &r, &w, 1e-6);
                    let label = format!("{device:?} {dtype:?} {rows}x{cols}");
                    assert_close(&sum, &want_sum, 0.0, &format!("sum {label}"));
                    assert_close(&normed, &want_normed, tol, &format!("normed {label}"));
                }
            }
        }
    }

    #[test]
    fn non_contiguous_inputs_and_leading_dimensions_are_handled() {
        let device = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 16, 6), &device).unwrap();
        let r = Tensor::randn(0f32, 1.0, (2, 6, 16), &device)
            .unwrap()
            .transpose(1, 2)
            .unwrap();
        let w = Tensor::randn(1f32, 0.1, 6, &device).unwrap();
        let (sum, normed) = rms_norm_residual(&x, &r, &w, 1e-6).unwrap();
        let (want_sum, want_normed) = reference(&x, &r.contiguous().unwrap(), &w, 1e-6);
        assert_eq!(sum.dims(), &[2, 16, 6]);
        assert_close(&sum, &want_sum, 0.0, "sum");
        assert_close(&normed, &want_normed, 1e-5, "normed");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let device = candle_core::Device::Cpu;
        let x = Tensor::zeros((4, 6), DType::F32, &device).unwrap();
        let w = Tensor::ones(6, DType::F32, &device).unwrap();
        let other = Tensor::zeros((4, 5), DType::F32, &device).unwrap();
        assert!(rms_norm_residual(&x, &other, &w, 1e-6).is_err());
        assert!(
            rms_norm_residual(&x, &x, &Tensor::ones(5, DType::F32, &device).unwrap(), 1e-6)
                .is_err()
        );
        assert!(rms_norm_residual(&x, &x.to_dtype(DType::BF16).unwrap(), &w, 1e-6).is_err());
        let ints = Tensor::zeros((4, 6), DType::U32, &device).unwrap();
        assert!(rms_norm_residual(&ints, &ints, &ints.get(0).unwrap(), 1e-6).is_err());
    }
}
