//! Matmul and linear layers that honour every load dtype on every device.
//!
//! candle's CPU backend (without MKL) has no bf16 matmul. So that a model loaded in bf16 runs
//! on the CPU too (CI checks the bf16 path against the transformers references there), bf16
//! matmuls on the CPU upcast both operands to f32, multiply, and round the product back to
//! bf16: the numerics of a GPU bf16 GEMM (f32 accumulation, bf16 output), slower and with f32
//! temporaries. Every other device/dtype pair goes straight to candle.

use candle_core::{DType, Module, Tensor};
use candle_nn::VarBuilder;

/// Whether `t` needs the f32 detour (a bf16 tensor on the CPU).
fn emulated(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::BF16
}

/// `a.matmul(b)`, also for bf16 on the CPU (see the module docs).
pub fn matmul(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    if !emulated(a) {
        return a.matmul(b);
    }
    a.to_dtype(DType::F32)?
        .matmul(&b.to_dtype(DType::F32)?)?
        .to_dtype(DType::BF16)
}

/// `candle_nn::Linear`, also for bf16 on the CPU (see the module docs).
#[derive(Debug, Clone)]
pub struct Linear {
    inner: candle_nn::Linear,
}

impl Linear {
    /// A layer computing `x @ weight.T + bias`; `weight` is `[out, in]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            inner: candle_nn::Linear::new(weight, bias),
        }
    }

    /// The `[out, in]` weight.
    pub fn weight(&self) -> &Tensor {
        self.inner.weight()
    }

    /// The `[out]` bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.inner.bias()
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        if !emulated(xs) {
            return self.inner.forward(xs);
        }
        let weight = self.inner.weight().to_dtype(DType::F32)?;
        let bias = self
            .inner
            .bias()
            .map(|b| b.to_dtype(DType::F32))
            .transpose()?;
        candle_nn::Linear::new(weight, bias)
            .forward(&xs.to_dtype(DType::F32)?)?
            .to_dtype(DType::BF16)
    }
}

/// A linear layer with a bias when `bias` is set (`vb` holds `weight` and `bias`).
pub fn linear_b(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    let inner = candle_nn::linear_b(in_dim, out_dim, bias, vb)?;
    Ok(Linear { inner })
}

/// A linear layer without bias (`vb` holds `weight`).
pub fn linear_no_bias(
    in_dim: usize,
    out_dim: usize,
    vb: VarBuilder,
) -> candle_core::Result<Linear> {
    let inner = candle_nn::linear_no_bias(in_dim, out_dim, vb)?;
    Ok(Linear { inner })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn bf16_on_the_cpu_matches_f32_within_bf16_rounding() {
        let device = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 5, 16), &device).unwrap();
        let w = Tensor::randn(0f32, 0.25, (8, 16), &device).unwrap();
        let b = Tensor::randn(0f32, 0.1, 8, &device).unwrap();
        let want = candle_nn::Linear::new(w.clone(), Some(b.clone()))
            .forward(&x)
            .unwrap();
        let bf = |t: &Tensor| t.to_dtype(DType::BF16).unwrap();
        let got = Linear::new(bf(&w), Some(bf(&b))).forward(&bf(&x)).unwrap();
        assert_eq!(got.dtype(), DType::BF16);
        let diff = (got.to_dtype(DType::F32).unwrap() - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 0.05, "bf16 linear differs by {diff}");
        let product = matmul(&bf(&x.reshape((10, 16)).unwrap()), &bf(&w.t().unwrap())).unwrap();
        assert_eq!(product.dtype(), DType::BF16);
        assert_eq!(product.dims(), &[10, 8]);
    }
}
