#!/usr/bin/env bash
# The main job on the embedded default: installs what vidx needs, makes a small corpus of real
# videos, indexes it in one process (in-memory coordinator, local worker, local files, no Redis)
# and writes a report you can open.
#
# The model is $VIDX_MODEL: a Hugging Face directory of Open-o3 Video (marinero4972/Open-o3-Video)
# for real answers. Without it the tiny random Qwen2.5-VL checkpoint from ../shared/fixtures is
# used, which runs the whole pipeline but answers noise.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh

demo=.scratch/demo
model="${VIDX_MODEL:-../shared/fixtures/qwen2_5_vl/tiny-realvocab}"
mkdir -p "$demo/videos"
rm -rf "$demo/index"
[ -f "$demo/videos/testsrc.mp4" ] || ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i testsrc2=size=640x360:rate=25:duration=12 -c:v libx264 -pix_fmt yuv420p "$demo/videos/testsrc.mp4"
[ -f "$demo/videos/mandelbrot.webm" ] || ffmpeg -hide_banner -loglevel error -y \
  -f lavfi -i mandelbrot=size=320x240:rate=10 -t 8 -c:v libvpx-vp9 "$demo/videos/mandelbrot.webm"
: > "$demo/videos/zero-bytes.mp4"   # a broken upload: the pass finishes and reports it

max_new_tokens=2048
[ -z "${VIDX_MODEL:-}" ] && max_new_tokens=24
cargo run --release -- index "$demo/videos" --out "$demo/index" --model "$model" \
  --fps 1 --max-frames 8 --max-new-tokens "$max_new_tokens"
cargo run --release -- report "$demo/index" --out "$demo/report.html"
echo "open $demo/report.html; search with: cargo run --release -- search $demo/index 'person'"
