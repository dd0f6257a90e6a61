#!/usr/bin/env bash
# Installs what building and running vidx needs on Debian 12, and nothing more: the C toolchain
# and libclang (bindgen for ffmpeg-next), FFmpeg's libraries and CLI, and protoc. This is what
# ./scripts/demo.sh runs; the test suite's servers and tools (redis-server, s3s-fs, Azurite,
# fake-gcs-server, helm, Chromium, the Python checkers) are installed by
# scripts/install-test-servers.sh, which ./scripts/test.sh runs.
# Idempotent: packages already present are left alone.
set -euo pipefail
scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if ! command -v cargo >/dev/null; then
  echo "setup.sh: cargo not found: install the Rust toolchain (https://rustup.rs), then run this again" >&2
  exit 1
fi

"$scripts/apt-install.sh" \
  pkg-config clang libclang-dev \
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev \
  libavfilter-dev libavdevice-dev \
  protobuf-compiler ffmpeg
