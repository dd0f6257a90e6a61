#!/usr/bin/env bash
# Installs the CUDA 13.0 toolchain that `cargo build --release --features cuda` needs, from
# NVIDIA's PyPI wheels (no NVIDIA download site is needed), into .tools/cuda (ignored by git), and
# prints the environment to use as `export NAME=value` lines:
#
#   eval "$(./scripts/setup-cuda.sh)"
#   cargo build --release --features cuda
#
# Why 13.0: our GPU nodes run driver 580 (CUDA 13.0), and PTX from a newer nvcc does not load
# there. nvcc does not pin nvvm and crt, so all three are pinned, or pip pulls newer ones.
#
# The wheels install one merged tree, site-packages/nvidia/cu13, that is nearly a CUDA root; this
# script adds what it lacks:
#   - lib64/ with the libraries and unversioned links (libcublas.so -> libcublas.so.13, ...), which
#     nvcc's profile and the linker look for;
#   - lib64/stubs/libcuda.so, a link-time stub of the driver built from scripts/cuda/libcuda-stub.c
#     (no wheel ships the driver). NEVER put lib64/stubs on a GPU machine's library path: it
#     would shadow the real driver. It is only in LIBRARY_PATH (the linker's), never in
#     LD_LIBRARY_PATH (the loader's).
#
# CUDA_COMPUTE_CAP (default 90: sm_90a, H100/H200; 80 A100, 89 L4/L40S) picks the GPUs that
# candle's kernels are compiled for; set it before running this script to change it.
# VIDX_CUDA_TOOLS overrides the install folder. Idempotent: a second run only prints.
# Progress goes to stderr, the exports alone to stdout.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="${VIDX_CUDA_TOOLS:-$repo_root/.tools/cuda}"
compute_cap="${CUDA_COMPUTE_CAP:-90}"
python="${PYTHON:-python3}"

pins=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-cccl==13.0.85
  nvidia-cublas==13.0.2.14
  nvidia-cuda-nvrtc==13.0.88
  nvidia-curand==10.4.0.35
)
stub_source="$repo_root/scripts/cuda/libcuda-stub.c"
stub_symbols="$repo_root/scripts/cuda/libcuda-stub-symbols.inc"

case "$compute_cap" in
  '' | *[!0-9]*)
    echo "setup-cuda: CUDA_COMPUTE_CAP must be a number such as 90 (H100/H200), 89 or 80, not '$compute_cap'" >&2
    exit 2
    ;;
esac

# What an installed tree was made from: the pins and the stub's sources. A change reinstalls.
fingerprint="$(printf '%s\n' "${pins[@]}"; cat "$stub_source" "$stub_symbols" | sha256sum)"
stamp="$tools/installed"
root="$tools/root"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$fingerprint" ] || [ ! -x "$root/bin/nvcc" ]; then
  echo "setup-cuda: installing the CUDA 13.0 wheels into $tools" >&2
  rm -f "$stamp"
  mkdir -p "$tools"
  [ -x "$tools/venv/bin/pip" ] || "$python" -m venv "$tools/venv"
  "$tools/venv/bin/pip" install --quiet --disable-pip-version-check "${pins[@]}" >&2

  site="$("$tools/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  merged="$site/nvidia/cu13"
  if [ ! -x "$merged/bin/nvcc" ] || [ ! -d "$merged/lib" ]; then
    echo "setup-cuda: the wheels did not install nvcc and lib/ under $merged" >&2
    exit 1
  fi
  ln -sfn "$merged" "$root"

  # lib64: every shared library, plus the unversioned names the linker asks for (-lcublas).
  rm -rf "$merged/lib64"
  mkdir -p "$merged/lib64/stubs"
  for library in "$merged"/lib/*.so.*; do
    name="$(basename "$library")"
    ln -sfn "../lib/$name" "$merged/lib64/$name"
    case "$name" in
      *.alt.so.*) continue ;; # nvrtc's alternative build: never linked by name
    esac
    unversioned="${name%%.so.*}.so"
    [ -e "$merged/lib64/$unversioned" ] || ln -sfn "$name" "$merged/lib64/$unversioned"
  done
  ln -sfn ../lib/libcudart_static.a "$merged/lib64/libcudart_static.a"
  ln -sfn ../lib/libcudadevrt.a "$merged/lib64/libcudadevrt.a"

  # The driver's link-time stub; soname libcuda.so.1 so binaries ask for the real driver by it.
  "${CC:-cc}" -shared -fPIC -O2 -Wall -Wl,-soname,libcuda.so.1 \
    -I"$(dirname "$stub_symbols")" -o "$merged/lib64/stubs/libcuda.so" "$stub_source"

  "$root/bin/nvcc" --version | grep -q 'release 13\.0' || {
    echo "setup-cuda: $root/bin/nvcc is not CUDA 13.0:" >&2
    "$root/bin/nvcc" --version >&2
    exit 1
  }
  printf '%s\n' "$fingerprint" > "$stamp"
  echo "setup-cuda: installed; CUDA root $root" >&2
fi

printf 'export CUDA_ROOT=%q\n' "$root"
printf 'export CUDA_PATH=%q\n' "$root"
printf 'export CUDA_HOME=%q\n' "$root"
# shellcheck disable=SC2016 # $PATH and $LIBRARY_PATH are expanded by the shell that evals this.
printf 'export PATH=%q:"$PATH"\n' "$root/bin"
# shellcheck disable=SC2016
printf 'export LIBRARY_PATH=%q:%q"${LIBRARY_PATH:+:$LIBRARY_PATH}"\n' "$root/lib64" "$root/lib64/stubs"
printf 'export CUDA_COMPUTE_CAP=%q\n' "$compute_cap"
