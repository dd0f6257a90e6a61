#!/usr/bin/env bash
# Installs the servers that integration tests start on loopback ports themselves:
# s3s-fs, a real S3-compatible server (serving a directory), built from crates.io.
# Idempotent: an installed binary of the pinned version is left alone.
set -euo pipefail

S3S_FS_VERSION="0.14.1"   # 0.17 needs a newer rustc than the workspace's 1.95

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
if [ -x "$cargo_bin/s3s-fs" ] && "$cargo_bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
  exit 0
fi
cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --quiet
