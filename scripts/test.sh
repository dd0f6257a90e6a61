#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, checks formatting and lints,
# then runs every test in the workspace. Tests start their own servers (redis-server, an
# S3-compatible server) on loopback ports and stop them by pid.
#
# Before the tests it compiles the CUDA build, so it can never rot: the `vidx` binary and the
# model crate's tests and benches with `--features cuda`, against the toolchain
# scripts/setup-cuda.sh installs. Compile only: CI has no GPU, and a CUDA binary needs the NVIDIA
# driver even to start. It uses the dev profile and the same target/ as the tests: the profile
# optimises every dependency anyway (Cargo.toml), and only the crates the `cuda` feature changes
# (candle, cudarc, candle-kernels, a few build-time crates and ours) are compiled twice, where a
# release build would compile all ~400 again. candle-kernels compiles its CUDA kernels in its
# build script once per profile, so CI pays for them once. The CUDA binary is kept as
# target/vidx-cuda for tests/cuda_toolchain.rs. VIDX_SKIP_CUDA=1 leaves this step out.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
./scripts/install-test-servers.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# Runs in a subshell: the CUDA environment stays out of the tests.
compile_cuda() (
  eval "$(./scripts/setup-cuda.sh)"
  # candle-kernels compiles its .cu files with a rayon pool of half the cores by default;
  # all of them is faster, as the kernels are most of the build's critical path.
  CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-$(nproc)}"
  export CUDAFORGE_THREADS
  started=$(date +%s)
  # One cargo invocation for everything: two would resolve features differently (the model's
  # dev-dependencies, the root's build scripts), give candle-kernels' build script two hashes and
  # compile every kernel twice (about 8 minutes on 2 cores). The root's integration tests below
  # make cargo build the `vidx` binary itself with the feature on.
  model_tests=()
  for test in model/tests/*.rs; do
    model_tests+=(--test "$(basename "$test" .rs)")
  done
  cargo test --locked --no-run --features vidx/cuda,vidx-model/cuda -p vidx -p vidx-model \
    --lib --benches "${model_tests[@]}" --test device_flags --test cuda_toolchain
  target_dir="${CARGO_TARGET_DIR:-target}"
  cp "$target_dir/debug/vidx" "$target_dir/vidx-cuda"
  echo "test.sh: CUDA build compiled in $(($(date +%s) - started)) s"
)

# The CUDA compile comes before the tests, so that the test run's summary closes the log.
if [ "${VIDX_SKIP_CUDA:-0}" = 1 ]; then
  echo "test.sh: VIDX_SKIP_CUDA=1: the CUDA build was not compiled"
else
  compile_cuda
fi

cargo test --workspace --locked
