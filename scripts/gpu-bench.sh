#!/usr/bin/env bash
# Open-o3 Video (Qwen2.5-VL-7B shapes, random weights) in vidx against transformers on the same
# device: vision tower, vision + prefill, decode at batch 1 and 8, peak memory, every ratio.
#
# On the development machine (Rust, CUDA toolchain from scripts/setup-cuda.sh):
#   scripts/gpu-bench.sh --package            # builds the CUDA binary, writes dist/vidx-gpu-bench.tar.xz
#   scripts/gpu-bench.sh --device cpu --preset small    # runs here end-to-end, PyTorch from venv-fixture
# On any machine with an NVIDIA GPU, python3 with torch and transformers, no network, no Rust:
#   tar xJf vidx-gpu-bench.tar.xz && vidx-gpu-bench/gpu-bench.sh
#
# Flags: --device cuda:N|cpu (default cuda:0), --preset 7b|small (default 7b on a GPU, small on
# the CPU), --bin PATH (default: the packaged binary beside this script, else the release build),
# --python PATH (default python3 on a GPU, venv-fixture/bin/python on the CPU when it exists),
# --repeats N (default 3). Anything after `--` goes to both sides (e.g. -- --frames 8).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
device=cuda:0 preset="" bin="" python="" repeats=3 package=0 extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --device) device="$2"; shift 2 ;;
        --preset) preset="$2"; shift 2 ;;
        --bin) bin="$2"; shift 2 ;;
        --python) python="$2"; shift 2 ;;
        --repeats) repeats="$2"; shift 2 ;;
        --package) package=1; shift ;;
        --) shift; extra=("$@"); break ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "gpu-bench: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ "$package" = 1 ]; then
    root="$(cd "$here/.." && pwd)"
    ready="${VIDX_CUDA_ENV:-$root/.tools/cuda/READY}"
    [ -f "$ready" ] || { echo "gpu-bench: $ready missing: run scripts/setup-cuda.sh first" >&2; exit 1; }
    # shellcheck disable=SC1090
    source "$ready"
    (cd "$root" && cargo build --release --locked --features cuda -p vidx-model --example gpu_bench)
    target="${CARGO_TARGET_DIR:-$root/target}"
    out="$root/dist/vidx-gpu-bench"
    rm -rf "$out" && mkdir -p "$out"
    cp "$target/release/examples/gpu_bench" "$out/vidx-gpu-bench"
    strip "$out/vidx-gpu-bench"
    cp "$here/gpu-bench.sh" "$here/gpu_bench_reference.py" "$out/"
    tar -C "$root/dist" -cJf "$root/dist/vidx-gpu-bench.tar.xz" vidx-gpu-bench
    ls -l "$out/vidx-gpu-bench" "$root/dist/vidx-gpu-bench.tar.xz"
    exit 0
fi

case "$device" in cpu|cuda:*) ;; *) echo "gpu-bench: --device $device: expected cpu or cuda:N" >&2; exit 2 ;; esac
[ -n "$preset" ] || { [ "$device" = cpu ] && preset=small || preset=7b; }
if [ -z "$bin" ]; then
    for candidate in "$here/vidx-gpu-bench" "${CARGO_TARGET_DIR:-$here/../target}/release/examples/gpu_bench"; do
        [ -x "$candidate" ] && { bin="$candidate"; break; }
    done
fi
[ -n "$bin" ] && [ -x "$bin" ] || { echo "gpu-bench: no benchmark binary (--bin PATH, or --package)" >&2; exit 1; }
if [ -z "$python" ]; then
    python=python3
    [ "$device" = cpu ] && [ -x "$here/../venv-fixture/bin/python" ] && python="$here/../venv-fixture/bin/python"
fi

if [ "$device" != cpu ]; then
    # The CUDA libraries the binary loads (cuBLAS, cuRAND, the runtime) come from torch's wheels.
    libs="$("$python" - <<'EOF'
import glob, os, site
dirs = set()
for root in site.getsitepackages():
    for lib in glob.glob(os.path.join(root, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
EOF
)"
    export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi

work="$(mktemp -d)"
trap 'kill "${monitor:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
gpu_index="${device#cuda:}"

# Peak device memory used while a command runs (MiB over the idle baseline), by nvidia-smi.
measure() {
    local name="$1"; shift
    if [ "$device" = cpu ]; then
        "$@"
        echo 0 > "$work/$name.peak"
        return
    fi
    local base
    base="$(nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits)"
    nvidia-smi -i "$gpu_index" --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$work/$name.mem" &
    monitor=$!
    "$@"
    kill "$monitor"; wait "$monitor" 2>/dev/null || true
    sort -n "$work/$name.mem" | tail -1 | awk -v b="$base" '{print $1 - b}' > "$work/$name.peak"
}

start=$(date +%s)
"$bin" --preset "$preset" --repeats "$repeats" --write-inputs "$work/inputs.json" "${extra[@]}"
measure vidx "$bin" --preset "$preset" --device "$device" --repeats "$repeats" --out "$work/vidx.json" "${extra[@]}"
measure torch "$python" "$here/gpu_bench_reference.py" run --inputs "$work/inputs.json" --device "$device" --out "$work/torch.json"
peaks=()
[ "$device" != cpu ] && peaks=(--gpu-peaks "$(cat "$work/vidx.peak")" "$(cat "$work/torch.peak")")
"$python" "$here/gpu_bench_reference.py" compare "$work/vidx.json" "$work/torch.json" "${peaks[@]}"
echo "wall time $(( $(date +%s) - start )) s"
