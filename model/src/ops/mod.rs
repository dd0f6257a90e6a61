//! Fused kernels candle does not have, as candle custom ops with a CPU implementation and a
//! CUDA one (PTX compiled from `kernels/*.cu` by `build.rs` under the `cuda` feature).
//!
//! - [`rms_norm_residual`]: residual add + RMSNorm in one pass (both outputs).
//! - [`causal_softmax`]: last-dimension softmax under a causal mask computed from indices, so
//!   no mask tensor is built on the host per attention block.
//! - [`chunked_attention_cpu`] (CPU only): the vision tower's windowed attention, one task per
//!   (window, head) reading q, k and v in place, instead of 256 tiny parallel GEMMs per block.
//! - [`silu_mul`]: SwiGLU's `silu(gate) * up` over a fused gate|up projection in one pass (the
//!   candle composition off the CPU).
//!
//! The CPU loops use a vectorisable `exp` (`exp.rs`) instead of libm's scalar one.
//!
//! Rotary embeddings need no op here: candle's `rope`/`rope_thd` already have CPU and CUDA
//! kernels. Every op is tested against the plain candle composition on the CPU, and on the
//! GPU when `VIDX_TEST_DEVICE` names one in a CUDA build.

mod causal_softmax;
mod chunked_attention;
mod exp;
mod rms_norm_residual;
mod silu_mul;

pub use causal_softmax::causal_softmax;
pub use chunked_attention::chunked_attention_cpu;
pub use rms_norm_residual::rms_norm_residual;
pub use silu_mul::silu_mul;

use candle_core::{Layout, WithDType};

/// The elements of a CPU buffer that `layout` covers, which must be contiguous.
fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> candle_core::Result<&'a [T]> {
    Ok(&data[offsets(layout)?])
}

/// The element range of a contiguous `layout` in its buffer.
fn offsets(layout: &Layout) -> candle_core::Result<std::ops::Range<usize>> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(start..end),
        None => candle_core::bail!("vidx op: input is not contiguous"),
    }
}

/// Splits `rows` rows into one contiguous range per CPU thread (a single range for small
/// inputs, where spawning costs more than it saves) and runs `work(first_row, row_count)` on
/// each range in parallel. `work` gets disjoint row ranges.
fn for_row_ranges(rows: usize, cols: usize, work: impl Fn(usize, usize) + Sync) {
    const SERIAL_ELEMENTS: usize = 1 << 15;
    let threads = candle_core::utils::get_num_threads().max(1);
    if threads == 1 || rows < 2 || rows * cols <= SERIAL_ELEMENTS {
        work(0, rows);
        return;
    }
    let per_thread = rows.div_ceil(threads);
    std::thread::scope(|scope| {
        for first in (per_thread..rows).step_by(per_thread) {
            let work = &work;
            scope.spawn(move || work(first, per_thread.min(rows - first)));
        }
        work(0, per_thread.min(rows));
    });
}

/// A mutable output buffer shared by threads that each write a disjoint row range.
struct SharedRows<T> {
    pointer: *mut T,
    len: usize,
}

// SAFETY: `SharedRows` only hands out slices of disjoint ranges (see `rows`), so sending it to
// threads that each write their own range cannot race.
unsafe impl<T: Send> Send for SharedRows<T> {}
// SAFETY: as above; shared references only reach `rows`, whose callers take disjoint ranges.
unsafe impl<T: Send> Sync for SharedRows<T> {}

impl<T> SharedRows<T> {
    fn new(buffer: &mut [T]) -> Self {
        Self {
            pointer: buffer.as_mut_ptr(),
            len: buffer.len(),
        }
    }

    /// The elements `start..start + len`.
    ///
    /// # Safety
    /// Ranges passed by concurrent callers must not overlap, and the buffer given to
    /// [`Self::new`] must outlive every returned slice.
    #[allow(clippy::mut_from_ref)]
    unsafe fn rows(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "row range out of bounds");
        // SAFETY: in bounds (checked above); disjointness and lifetime are the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.pointer.add(start), len) }
    }
}

#[inline]
fn to_f32<T: WithDType>(value: T) -> f32 {
    value.to_f64() as f32
}

#[inline]
fn from_f32<T: WithDType>(value: f32) -> T {
    T::from_f64(f64::from(value))
}

/// PTX of the kernel file `module` (`kernels/{module}.cu`), compiled by `build.rs`.
#[cfg(feature = "cuda")]
fn ptx(module: &str) -> candle_core::Result<&'static str> {
    Ok(match module {
        "rms_norm_residual" => include_str!(concat!(env!("OUT_DIR"), "/rms_norm_residual.ptx")),
        "causal_softmax" => include_str!(concat!(env!("OUT_DIR"), "/causal_softmax.ptx")),
        other => candle_core::bail!("no vidx cuda module {other}"),
    })
}

/// Threads per block for a row of `cols` elements: a multiple of the warp, at most 1024.
#[cfg(feature = "cuda")]
fn block_threads(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, 1024) as u32
}

#[cfg(test)]
pub(crate) mod tests {
    use candle_core::{DType, Device, Tensor};

    /// The CPU, plus the device named by `VIDX_TEST_DEVICE` (e.g. `cuda:0`) when this build
    /// and machine have it; when it names one that is absent, says so and tests the CPU only.
    pub(crate) fn test_devices() -> Vec<Device> {
        let mut devices = vec![Device::Cpu];
        let name = std::env::var("VIDX_TEST_DEVICE").unwrap_or_default();
        let ordinal = match name.as_str() {
            "" | "cpu" => return devices,
            "cuda" => 0,
            other => other
                .strip_prefix("cuda:")
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("VIDX_TEST_DEVICE={other}: expected cpu or cuda:N")),
        };
        if !cfg!(feature = "cuda") {
            println!("skipping the GPU half: VIDX_TEST_DEVICE={name} but built without cuda");
            return devices;
        }
        match Device::new_cuda(ordinal) {
            Ok(device) => devices.push(device),
            Err(e) => println!("skipping the GPU half: VIDX_TEST_DEVICE={name}: {e}"),
        }
        devices
    }

    /// Asserts `max |got - want| <= tol * max(1, max |want|)`, NaN failing.
    pub(crate) fn assert_close(got: &Tensor, want: &Tensor, tol: f32, label: &str) {
        let got: Vec<f32> = got
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let want: Vec<f32> = want
            .to_dtype(DType::F32)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(got.len(), want.len(), "{label}: lengths");
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            let diff = (a - b).abs();
            assert!(
                diff <= tol * scale,
                "{label}: element {i}: {a} vs {b} (tol {tol})"
            );
        }
    }
}
