//! Keeps the C allocator from handing every large tensor buffer back to the kernel.
//!
//! candle's CPU backend allocates a fresh `Vec` for every op's output. glibc serves blocks
//! above its mmap threshold (dynamic, starting at 128 KiB) with their own `mmap`, and trims the
//! top of the heap once 128 KiB or more are free there. So a forward pass maps, zero-fills
//! (a page fault per 4 KiB) and unmaps its multi-megabyte activations over and over; on the
//! vision tower that is more than a tenth of a pass. [`keep_freed_buffers`] raises both
//! thresholds once at start, so freed activations are reused from the heap instead. The peak
//! footprint does not change; memory freed after the peak stays with the process for the
//! next pass, which is what a worker running pass after pass wants.

/// Blocks up to this size come from the heap (glibc's largest allowed mmap threshold on 64-bit).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of the heap is returned to the kernel only past this much.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 1 << 30;

/// Tunes glibc's allocator for the model's large, short-lived buffers (see the module docs).
/// Call once at the start of a program that runs the model on the CPU, before its threads
/// start. Returns whether the settings were applied; does nothing off glibc.
pub fn keep_freed_buffers() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes two allocator parameters; it takes plain integers and
        // is safe to call at any time (glibc takes its arena lock).
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_settings() {
        assert!(super::keep_freed_buffers());
    }
}
