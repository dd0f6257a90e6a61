//! Helpers shared by the model's integration tests: the device and dtypes they run on
//! (`VIDX_TEST_DEVICE`), the tolerances per dtype, and a stage-by-stage comparison report.
#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use vidx_model::LoadOptions;
use vidx_model::loading::DeviceKind;

/// Relative tolerance of f32 float stages against the transformers f32 references: both sides
/// compute in f32 from identical (bf16-rounded) weights, so only summation order differs
/// (~1e-6 relative per reduction, growing mildly with depth); a real bug (wrong GELU, mask,
/// rope section, bias) shows up as 1e-2 or more.
pub const F32_REL_TOL: f32 = 1e-4;

/// Relative tolerance of bf16 float stages against the same f32 references. bf16 keeps 8
/// significant bits, so every op output is rounded by up to 2^-9 (0.2%) relative and the
/// errors add up along the residual stream: on the shared fixtures (CPU, 2026-12-01) the
/// largest deviation was 3.0% of a stage's largest reference value (`text.final_norm`),
/// 1.3% in the vision tower, 2.4% in the logits. GPU bf16 GEMMs round the same way (f32
/// accumulation, bf16 output); 6% leaves twice the measured deviation for their other
/// summation order. This catches what only the bf16 path can get wrong (a cast in the wrong
/// place, overflow, f16/bf16 mix-ups, a NaN), which moves values by tens of percent; fine
/// errors (a tanh GELU, an epsilon) are the f32 run's job.
pub const BF16_REL_TOL: f32 = 6e-2;

/// The tolerance of float stages for `dtype`.
pub fn tolerance(dtype: DType) -> f32 {
    match dtype {
        DType::F32 => F32_REL_TOL,
        _ => BF16_REL_TOL,
    }
}

/// Prints a line that libtest does not capture, so a skip is visible in every run.
pub fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The device named by `VIDX_TEST_DEVICE` (`cpu`, the default, or `cuda:N`), or `None` after
/// printing why the test is skipped: it names CUDA and this build has no `cuda` feature, or
/// no such GPU is present. A malformed value is an error.
pub fn test_device(test: &str) -> Result<Option<(DeviceKind, Device)>> {
    let name = std::env::var("VIDX_TEST_DEVICE").unwrap_or_default();
    let kind = match name.as_str() {
        "" | "cpu" => return Ok(Some((DeviceKind::Cpu, Device::Cpu))),
        "cuda" => DeviceKind::Cuda(0),
        other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
            Some(ordinal) => DeviceKind::Cuda(ordinal),
            None => anyhow::bail!("VIDX_TEST_DEVICE={other}: expected cpu or cuda:N"),
        },
    };
    if !cfg!(feature = "cuda") {
        say(&format!(
            "SKIPPED {test}: VIDX_TEST_DEVICE={name} but vidx-model was built without the cuda feature"
        ));
        return Ok(None);
    }
    match kind.device() {
        Ok(device) => Ok(Some((kind, device))),
        Err(e) => {
            say(&format!("SKIPPED {test}: VIDX_TEST_DEVICE={name}: {e}"));
            Ok(None)
        }
    }
}

/// Load options for the test device in `dtype`.
pub fn load_options(kind: DeviceKind, dtype: DType) -> LoadOptions {
    LoadOptions {
        device: kind,
        dtype: Some(dtype),
    }
}

/// Collects every comparison so one run reports all stages.
pub struct Report {
    /// Printed before the lines and prefixed to every failure.
    pub label: String,
    /// Stages beyond tolerance.
    pub failures: Vec<String>,
    /// One line per compared stage.
    pub lines: Vec<String>,
    /// Relative tolerance of float stages (see [`tolerance`]).
    pub rel_tol: f32,
}

impl Report {
    /// An empty report whose float stages use `rel_tol`.
    pub fn new(label: &str, rel_tol: f32) -> Self {
        Self {
            label: label.to_string(),
            failures: Vec::new(),
            lines: Vec::new(),
            rel_tol,
        }
    }

    /// Records a failure.
    pub fn fail(&mut self, msg: String) {
        self.failures.push(format!("{}: {msg}", self.label));
    }

    /// Compares float stages within `rel_tol * max(1, max|want|)`; returns that tolerance.
    pub fn close(&mut self, stage: &str, got: &Tensor, want: &Tensor) -> Result<f32> {
        let got = got.to_dtype(DType::F32)?;
        let want = want.to_dtype(DType::F32)?;
        if got.elem_count() != want.elem_count() {
            self.fail(format!(
                "{stage}: shape {:?} vs reference {:?}",
                got.shape(),
                want.shape()
            ));
            return Ok(f32::INFINITY);
        }
        let got: Vec<f32> = got.flatten_all()?.to_vec1()?;
        let want: Vec<f32> = want.flatten_all()?.to_vec1()?;
        let magnitude = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        // `f32::max` ignores NaN, so a NaN anywhere turns the difference into NaN explicitly.
        let diff = got.iter().zip(&want).fold(0f32, |m, (a, b)| {
            let d = (a - b).abs();
            if m.is_nan() || d.is_nan() {
                f32::NAN
            } else {
                m.max(d)
            }
        });
        let tol = self.rel_tol * magnitude.max(1.0);
        self.lines.push(format!(
            "{:<32} max|diff| {diff:.3e}  tol {tol:.1e}  max|ref| {magnitude:.2}",
            stage
        ));
        if diff.is_nan() || diff > tol {
            self.fail(format!("{stage}: max abs diff {diff:e} above {tol:e}"));
        }
        Ok(tol)
    }

    /// Compares integer stages exactly.
    pub fn exact(&mut self, stage: &str, got: &[i64], want: &[i64]) {
        self.lines.push(format!(
            "{stage:<32} {}",
            if got == want { "exact" } else { "MISMATCH" }
        ));
        if got != want {
            self.fail(format!("{stage}: {got:?} vs reference {want:?}"));
        }
    }

    /// Argmax agreement of each row where the reference margin is well above the tolerance.
    pub fn argmax(&mut self, stage: &str, got: &Tensor, want: &Tensor, tol: f32) -> Result<()> {
        let got: Vec<Vec<f32>> = got.to_dtype(DType::F32)?.to_vec2()?;
        let want: Vec<Vec<f32>> = want.to_dtype(DType::F32)?.to_vec2()?;
        let mut checked = 0;
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let mut sorted = w.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            if sorted.len() < 2 || sorted[0] - sorted[1] <= 10.0 * tol {
                continue;
            }
            checked += 1;
            let (ga, wa) = (
                vidx_model::generation::argmax(g),
                vidx_model::generation::argmax(w),
            );
            if ga != wa {
                self.fail(format!("{stage}: row {i} argmax {ga} vs reference {wa}"));
            }
        }
        self.lines.push(format!(
            "{stage:<32} argmax equal on {checked}/{} rows",
            want.len()
        ));
        Ok(())
    }
}
