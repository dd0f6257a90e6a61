//! Where the model runs and in what precision: the spellings of the `--device` and `--dtype`
//! settings (`auto`, `cpu`, `cuda:N`; `auto`, `bf16`, `f16`, `f32`), what `auto` resolves to,
//! and the check that a requested GPU exists before any weights load, so a worker that cannot
//! use its GPU says so in one line at start-up instead of failing its first job.
//!
//! `auto` is the first visible GPU in a build with the `cuda` feature, else the CPU; the dtype's
//! `auto` is bf16 on a GPU and f32 on the CPU. A CUDA build links the driver (`libcuda.so.1`), so
//! it starts only where an NVIDIA driver is installed; with the driver but no visible GPU
//! (`CUDA_VISIBLE_DEVICES=`), `auto` falls back to the CPU.

use std::fmt;
use std::str::FromStr;

use candle_core::DType;

use crate::loading::DeviceKind;

/// Why a requested device cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// A GPU was asked of a build without the `cuda` feature.
    #[error(
        "{requested}: this vidx was built without CUDA; use a build made with `--features cuda`, or `cpu`"
    )]
    NotBuiltWithCuda {
        /// What was asked.
        requested: DeviceKind,
    },
    /// The ordinal is not among the visible GPUs.
    #[error("{requested}: no such GPU; {visible} visible{hint}")]
    NoSuchGpu {
        /// What was asked.
        requested: DeviceKind,
        /// How many GPUs the driver shows this process.
        visible: usize,
        /// Which ordinals exist, or why none does.
        hint: String,
    },
    /// The driver refused the GPU.
    #[error("{requested}: cannot use the GPU: {reason}")]
    Unusable {
        /// What was asked.
        requested: DeviceKind,
        /// The driver's words, on one line.
        reason: String,
    },
    /// A setting is not one of the accepted spellings.
    #[error("unknown {what} {given:?}: expected {expected}")]
    Unknown {
        /// `device` or `dtype`.
        what: &'static str,
        /// What was given.
        given: String,
        /// The accepted spellings.
        expected: &'static str,
    },
}

impl From<DeviceError> for crate::Error {
    fn from(error: DeviceError) -> Self {
        crate::Error::Device(error.to_string())
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceKind::Cpu => f.write_str("cpu"),
            DeviceKind::Cuda(ordinal) => write!(f, "cuda:{ordinal}"),
        }
    }
}

const DEVICE_SPELLINGS: &str = "auto, cpu, cuda or cuda:N";

impl FromStr for DeviceKind {
    type Err = DeviceError;

    /// `cpu`, `cuda` (the first GPU) or `cuda:N`.
    fn from_str(raw: &str) -> Result<Self, DeviceError> {
        let unknown = || DeviceError::Unknown {
            what: "device",
            given: raw.to_owned(),
            expected: DEVICE_SPELLINGS,
        };
        match raw.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceKind::Cpu),
            "cuda" => Ok(DeviceKind::Cuda(0)),
            other => other
                .strip_prefix("cuda:")
                .filter(|ordinal| ordinal.bytes().all(|byte| byte.is_ascii_digit()))
                .and_then(|ordinal| ordinal.parse().ok())
                .map(DeviceKind::Cuda)
                .ok_or_else(unknown),
        }
    }
}

impl DeviceKind {
    /// Checks that this device can be used: always for the CPU; for a GPU, that the build has
    /// CUDA and the driver shows that ordinal (it opens the GPU's primary context).
    pub fn check(self) -> Result<(), DeviceError> {
        match self {
            DeviceKind::Cpu => Ok(()),
            DeviceKind::Cuda(ordinal) => check_gpu(self, ordinal),
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn check_gpu(requested: DeviceKind, _ordinal: usize) -> Result<(), DeviceError> {
    Err(DeviceError::NotBuiltWithCuda { requested })
}

#[cfg(feature = "cuda")]
fn check_gpu(requested: DeviceKind, ordinal: usize) -> Result<(), DeviceError> {
    use candle_core::cuda::cudarc::driver::{CudaContext, sys::CUresult};

    let one_line = |text: String| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let visible = match CudaContext::device_count() {
        Ok(count) => usize::try_from(count).unwrap_or(0),
        Err(error) if error.0 == CUresult::CUDA_ERROR_NO_DEVICE => 0,
        Err(error) => {
            return Err(DeviceError::Unusable {
                requested,
                reason: one_line(format!("the CUDA driver does not start: {error}")),
            });
        }
    };
    if ordinal >= visible {
        let hint = match visible {
            0 => " (no GPU visible: check CUDA_VISIBLE_DEVICES and the container's GPU access)"
                .to_owned(),
            1 => " (cuda:0)".to_owned(),
            n => format!(" (cuda:0 to cuda:{})", n - 1),
        };
        return Err(DeviceError::NoSuchGpu {
            requested,
            visible,
            hint,
        });
    }
    CudaContext::new(ordinal)
        .map(drop)
        .map_err(|error| DeviceError::Unusable {
            requested,
            reason: one_line(error.to_string()),
        })
}

/// How many GPUs this process can use: 0 in a build without CUDA, or when the driver shows none.
pub fn visible_gpus() -> usize {
    #[cfg(feature = "cuda")]
    {
        use candle_core::cuda::cudarc::driver::CudaContext;
        CudaContext::device_count()
            .ok()
            .and_then(|count| usize::try_from(count).ok())
            .unwrap_or(0)
    }
    #[cfg(not(feature = "cuda"))]
    {
        0
    }
}

/// The `--device` setting: `auto` or one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeviceSetting {
    /// The first visible GPU in a CUDA build, else the CPU.
    #[default]
    Auto,
    /// Exactly this device; an error when it cannot be used.
    Exactly(DeviceKind),
}

impl FromStr for DeviceSetting {
    type Err = DeviceError;

    /// `auto`, or what [`DeviceKind`] accepts.
    fn from_str(raw: &str) -> Result<Self, DeviceError> {
        if raw.trim().eq_ignore_ascii_case("auto") {
            return Ok(DeviceSetting::Auto);
        }
        raw.parse().map(DeviceSetting::Exactly)
    }
}

impl fmt::Display for DeviceSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSetting::Auto => f.write_str("auto"),
            DeviceSetting::Exactly(kind) => kind.fmt(f),
        }
    }
}

impl DeviceSetting {
    /// The device to load onto, checked: `auto` becomes `cuda:0` when that GPU can be used and
    /// the CPU otherwise (the reason is logged); a named device must be usable.
    pub fn resolve(self) -> Result<DeviceKind, DeviceError> {
        match self {
            DeviceSetting::Exactly(kind) => kind.check().map(|()| kind),
            DeviceSetting::Auto if !cfg!(feature = "cuda") => Ok(DeviceKind::Cpu),
            DeviceSetting::Auto => match DeviceKind::Cuda(0).check() {
                Ok(()) => Ok(DeviceKind::Cuda(0)),
                Err(reason) => {
                    tracing::info!(%reason, "device auto: no usable GPU, running on the cpu");
                    Ok(DeviceKind::Cpu)
                }
            },
        }
    }
}

/// The `--dtype` setting: the weights' and activations' precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DTypeSetting {
    /// bf16 on a GPU, f32 on the CPU.
    #[default]
    Auto,
    /// bfloat16.
    Bf16,
    /// IEEE half precision.
    F16,
    /// Single precision.
    F32,
}

const DTYPE_SPELLINGS: &str = "auto, bf16, f16 or f32";

impl FromStr for DTypeSetting {
    type Err = DeviceError;

    fn from_str(raw: &str) -> Result<Self, DeviceError> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(DTypeSetting::Auto),
            "bf16" => Ok(DTypeSetting::Bf16),
            "f16" => Ok(DTypeSetting::F16),
            "f32" => Ok(DTypeSetting::F32),
            _ => Err(DeviceError::Unknown {
                what: "dtype",
                given: raw.to_owned(),
                expected: DTYPE_SPELLINGS,
            }),
        }
    }
}

impl fmt::Display for DTypeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.dtype() {
            None => f.write_str("auto"),
            Some(dtype) => f.write_str(dtype.as_str()),
        }
    }
}

impl DTypeSetting {
    /// The dtype asked for; `None` for `auto` (what [`crate::LoadOptions::dtype`] takes).
    pub fn dtype(self) -> Option<DType> {
        match self {
            DTypeSetting::Auto => None,
            DTypeSetting::Bf16 => Some(DType::BF16),
            DTypeSetting::F16 => Some(DType::F16),
            DTypeSetting::F32 => Some(DType::F32),
        }
    }

    /// The dtype used on `device`: `auto` is bf16 on a GPU and f32 on the CPU.
    pub fn resolve(self, device: DeviceKind) -> DType {
        self.dtype().unwrap_or(default_dtype(device))
    }
}

/// The dtype a device runs in when none is asked for: bf16 on a GPU, f32 on the CPU.
pub fn default_dtype(device: DeviceKind) -> DType {
    match device {
        DeviceKind::Cpu => DType::F32,
        DeviceKind::Cuda(_) => DType::BF16,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_spellings_round_trip() {
        for (raw, setting) in [
            ("auto", DeviceSetting::Auto),
            ("cpu", DeviceSetting::Exactly(DeviceKind::Cpu)),
            ("cuda:0", DeviceSetting::Exactly(DeviceKind::Cuda(0))),
            ("cuda:7", DeviceSetting::Exactly(DeviceKind::Cuda(7))),
        ] {
            assert_eq!(raw.parse::<DeviceSetting>().unwrap(), setting);
            assert_eq!(setting.to_string(), raw);
        }
        assert_eq!(
            " CUDA ".parse::<DeviceSetting>().unwrap(),
            DeviceSetting::Exactly(DeviceKind::Cuda(0))
        );
    }

    #[test]
    fn bad_device_spellings_are_typed_errors() {
        for raw in ["gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "cuda0", ""] {
            let error = raw.parse::<DeviceSetting>().unwrap_err();
            assert!(
                matches!(error, DeviceError::Unknown { what: "device", .. }),
                "{raw}: {error}"
            );
            assert!(error.to_string().contains("cuda:N"), "{error}");
        }
    }

    #[test]
    fn dtype_spellings_and_defaults() {
        for (raw, setting) in [
            ("auto", DTypeSetting::Auto),
            ("bf16", DTypeSetting::Bf16),
            ("f16", DTypeSetting::F16),
            ("f32", DTypeSetting::F32),
        ] {
            assert_eq!(raw.parse::<DTypeSetting>().unwrap(), setting);
            assert_eq!(setting.to_string(), raw);
        }
        assert!(matches!(
            "f64".parse::<DTypeSetting>(),
            Err(DeviceError::Unknown { what: "dtype", .. })
        ));
        assert_eq!(DTypeSetting::Auto.resolve(DeviceKind::Cpu), DType::F32);
        assert_eq!(DTypeSetting::Auto.resolve(DeviceKind::Cuda(1)), DType::BF16);
        assert_eq!(DTypeSetting::F16.resolve(DeviceKind::Cpu), DType::F16);
        assert_eq!(DTypeSetting::F32.resolve(DeviceKind::Cuda(0)), DType::F32);
    }

    #[test]
    fn the_cpu_is_always_usable() {
        assert_eq!(
            DeviceSetting::Exactly(DeviceKind::Cpu).resolve(),
            Ok(DeviceKind::Cpu)
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_refuses_gpus_and_resolves_auto_to_the_cpu() {
        assert_eq!(DeviceSetting::Auto.resolve(), Ok(DeviceKind::Cpu));
        assert_eq!(visible_gpus(), 0);
        let error = DeviceSetting::Exactly(DeviceKind::Cuda(0))
            .resolve()
            .unwrap_err();
        assert_eq!(
            error,
            DeviceError::NotBuiltWithCuda {
                requested: DeviceKind::Cuda(0)
            }
        );
        assert!(error.to_string().starts_with("cuda:0: "), "{error}");
    }

    /// Runs on a machine with a GPU (a CUDA build there); elsewhere it says why it did nothing.
    #[cfg(feature = "cuda")]
    #[test]
    fn a_cuda_build_finds_the_visible_gpus() {
        let visible = visible_gpus();
        if visible == 0 {
            eprintln!("skipped: no GPU visible to this CUDA build");
            return;
        }
        assert_eq!(DeviceSetting::Auto.resolve(), Ok(DeviceKind::Cuda(0)));
        let last = DeviceKind::Cuda(visible - 1);
        assert_eq!(DeviceSetting::Exactly(last).resolve(), Ok(last));
        let missing = DeviceKind::Cuda(visible);
        let error = DeviceSetting::Exactly(missing).resolve().unwrap_err();
        assert!(
            matches!(error, DeviceError::NoSuchGpu { visible: v, .. } if v == visible),
            "{error}"
        );
        assert_eq!(error.to_string().lines().count(), 1, "{error}");
    }
}
