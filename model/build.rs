//! Compiles the CUDA kernels of `src/ops/kernels/` to PTX when the `cuda` feature is on
//! (nothing happens otherwise, so CPU builds need no CUDA toolchain).
//!
//! `nvcc` comes from `$NVCC`, else `$CUDA_ROOT/bin/nvcc` (or `CUDA_PATH`, `CUDA_HOME`), else
//! `PATH`; the target is `sm_$CUDA_COMPUTE_CAP` (default 90: H100/H200). The PTX lands in
//! `OUT_DIR` and `src/ops/mod.rs` embeds it with `include_str!`.

use std::path::{Path, PathBuf};
use std::process::Command;

const KERNELS: [&str; 2] = ["rms_norm_residual", "causal_softmax"];

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/ops/kernels");
    for var in [
        "NVCC",
        "CUDA_ROOT",
        "CUDA_PATH",
        "CUDA_HOME",
        "CUDA_COMPUTE_CAP",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc();
    let compute_cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let compute_cap = compute_cap.trim().trim_start_matches("sm_").to_string();
    for kernel in KERNELS {
        let source = Path::new("src/ops/kernels").join(format!("{kernel}.cu"));
        let ptx = out_dir.join(format!("{kernel}.ptx"));
        let status = Command::new(&nvcc)
            .arg("--ptx")
            .arg("-O3")
            .arg("--std=c++17")
            .arg(format!("--gpu-architecture=sm_{compute_cap}"))
            .arg("-o")
            .arg(&ptx)
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        if !status.success() {
            panic!(
                "{} failed on {} ({status})",
                nvcc.display(),
                source.display()
            );
        }
    }
}

fn nvcc() -> PathBuf {
    if let Some(path) = std::env::var_os("NVCC") {
        return PathBuf::from(path);
    }
    for var in ["CUDA_ROOT", "CUDA_PATH", "CUDA_HOME"] {
        if let Some(root) = std::env::var_os(var) {
            let candidate = Path::new(&root).join("bin/nvcc");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("nvcc")
}
