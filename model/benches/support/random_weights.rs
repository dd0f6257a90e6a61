//! Random weights for the benchmarks' models (the medium bench and the GPU bench), so both
//! sides of a comparison load a model of the real shapes without any checkpoint. Included by
//! path from `benches/medium.rs` and `examples/gpu_bench.rs`.

use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::Init;
use candle_nn::var_builder::SimpleBackend;

/// Random weights with O(1) activations: unit norms, small biases, 1/sqrt(fan_in) matrices.
pub struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let dims = s.dims().to_vec();
        let t = if dims.len() == 1 && (name.contains("norm") || name.contains("ln_q")) {
            Tensor::ones(s, DType::F32, dev)?
        } else if dims.len() == 1 {
            (Tensor::randn(0f32, 1f32, s, dev)? * 0.02)?
        } else if name.contains("embed_tokens") {
            Tensor::randn(0f32, 1f32, s, dev)?
        } else {
            let fan_in: usize = dims[1..].iter().product();
            (Tensor::randn(0f32, 1f32, s, dev)? / (fan_in as f64).sqrt())?
        };
        t.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("random backend needs a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}
