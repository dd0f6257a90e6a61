//! The CUDA toolchain that `scripts/setup-cuda.sh` installs, and what the CUDA build links.
//!
//! - The driver stub's symbol list (`scripts/cuda/libcuda-stub-symbols.inc`) covers every driver
//!   entry point the locked cudarc declares, so a cudarc upgrade that adds one fails here rather
//!   than at link time on a fresh machine.
//! - Where the toolchain is installed (CI installs it before the tests), the script's second run
//!   is the fast path and prints the exports, nvcc is 13.0, and the stub is `libcuda.so.1` with
//!   every listed symbol.
//! - Where a CUDA `vidx` has been built (`target/vidx-cuda` from scripts/test.sh, or
//!   `cargo build --release --features cuda`), it needs no
//!   CUDA library beyond the driver, cuBLAS(Lt), the runtime and cuRAND.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn stub_symbols() -> BTreeSet<String> {
    let list = std::fs::read_to_string(repo().join("scripts/cuda/libcuda-stub-symbols.inc"))
        .expect("the stub's symbol list");
    list.lines()
        .filter_map(|line| line.strip_prefix("STUB(")?.strip_suffix(')'))
        .map(str::to_owned)
        .collect()
}

/// The source directory of the locked cudarc, from `cargo metadata`.
fn cudarc_source() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--locked",
            "--all-features",
        ])
        .current_dir(repo())
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "cargo metadata: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let manifest = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|package| package["name"] == "cudarc")
        .expect("cudarc is in the lock file (through candle's cuda feature)")["manifest_path"]
        .as_str()
        .unwrap()
        .to_owned();
    Path::new(&manifest).parent().unwrap().to_path_buf()
}

#[test]
fn the_stub_defines_every_driver_symbol_cudarc_declares() {
    let source = cudarc_source().join("src/driver/sys/mod.rs");
    let text = std::fs::read_to_string(&source).expect("cudarc's driver bindings");
    let declared: BTreeSet<String> = text
        .lines()
        .filter_map(|line| line.strip_prefix("pub unsafe fn cu"))
        .map(|rest| {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            format!("cu{name}")
        })
        .collect();
    assert!(declared.len() > 400, "parsed {} names", declared.len());
    let listed = stub_symbols();
    let missing: Vec<&String> = declared.difference(&listed).collect();
    assert!(
        missing.is_empty(),
        "add these to scripts/cuda/libcuda-stub-symbols.inc: {missing:?}"
    );
}

fn installed_root() -> Option<PathBuf> {
    let tools = std::env::var_os("VIDX_CUDA_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".tools/cuda"));
    tools
        .join("installed")
        .is_file()
        .then(|| tools.join("root"))
}

fn run(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> String {
    let output = Command::new(program.as_ref())
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("{:?} runs: {error}", program.as_ref()));
    assert!(
        output.status.success(),
        "{:?} {args:?}: {}",
        program.as_ref(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn an_installed_toolchain_is_complete() {
    let Some(root) = installed_root() else {
        eprintln!("skipped: scripts/setup-cuda.sh has not installed .tools/cuda here");
        return;
    };
    let output = Command::new(repo().join("scripts/setup-cuda.sh"))
        .env("CUDA_COMPUTE_CAP", "89")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.stderr.is_empty(),
        "an installed toolchain is not installed again: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let names: Vec<&str> = stdout
        .lines()
        .map(|line| {
            let rest = line.strip_prefix("export ").expect("export lines only");
            rest.split('=').next().unwrap()
        })
        .collect();
    for name in [
        "CUDA_ROOT",
        "CUDA_PATH",
        "PATH",
        "LIBRARY_PATH",
        "CUDA_COMPUTE_CAP",
    ] {
        assert!(names.contains(&name), "{name} in {stdout}");
    }
    assert!(stdout.contains("export CUDA_COMPUTE_CAP=89"), "{stdout}");
    assert!(
        !stdout.contains("LD_LIBRARY_PATH"),
        "the stub must never reach the loader's path"
    );

    let version = run(root.join("bin/nvcc"), &["--version"]);
    assert!(version.contains("release 13.0"), "{version}");
    for library in [
        "libcublas.so",
        "libcublasLt.so",
        "libcudart.so",
        "libcurand.so",
        "libnvrtc.so",
    ] {
        assert!(
            root.join("lib64").join(library).exists(),
            "{library} linkable"
        );
    }
    let stub = root.join("lib64/stubs/libcuda.so");
    let dynamic = run("readelf", &["-d", stub.to_str().unwrap()]);
    assert!(dynamic.contains("[libcuda.so.1]"), "{dynamic}");
    let exported: BTreeSet<String> = run("nm", &["-D", "--defined-only", stub.to_str().unwrap()])
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2).map(str::to_owned))
        .collect();
    let missing: Vec<String> = stub_symbols().difference(&exported).cloned().collect();
    assert!(missing.is_empty(), "not exported: {missing:?}");
}

#[test]
fn the_cuda_binary_needs_only_the_expected_cuda_libraries() {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target"));
    // scripts/test.sh keeps its CUDA build as vidx-cuda; `cargo build --release` makes the other.
    let Some(binary) = [target.join("vidx-cuda"), target.join("release/vidx")]
        .into_iter()
        .find(|path| path.is_file())
    else {
        eprintln!(
            "skipped: no vidx-cuda or release vidx under {}",
            target.display()
        );
        return;
    };
    let dynamic = run("readelf", &["-d", binary.to_str().unwrap()]);
    let needed: Vec<&str> = dynamic
        .lines()
        .filter(|line| line.contains("(NEEDED)"))
        .filter_map(|line| line.split('[').nth(1)?.strip_suffix(']'))
        .collect();
    if !needed.contains(&"libcuda.so.1") {
        eprintln!("skipped: {} is not a CUDA build", binary.display());
        return;
    }
    let cuda_libraries = [
        "libcuda.so.1",
        "libcublas.so.13",
        "libcublasLt.so.13",
        "libcudart.so.13",
        "libcurand.so.10",
    ];
    for library in &needed {
        let usual = [
            "libc.so",
            "libm.so",
            "libgcc_s.so",
            "libstdc++.so",
            "ld-linux",
        ]
        .iter()
        .chain(&["libav", "libsw", "libpostproc"])
        .any(|prefix| library.starts_with(prefix));
        assert!(
            usual || cuda_libraries.contains(library),
            "{library} is needed by the CUDA build: {needed:?}"
        );
    }
}
