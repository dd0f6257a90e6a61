#!/usr/bin/env bash
# Installs every system package that building and testing vidx needs on Debian 12.
# Idempotent: packages already present are left alone.
set -euo pipefail

packages=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev
  protobuf-compiler ffmpeg redis-server redis-tools
  python3-pip python3-venv
  chromium fonts-dejavu-core
)

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if ((${#missing[@]})); then
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -q
  "${sudo_cmd[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# A Redis that some distributions start as a service is not used: tests start their own on a free port.

# Python tools the tests use: pyarrow and DuckDB read the evidence tables vidx writes, and the
# Azure SDK creates containers in the Azure emulator; in a venv at the repository root (ignored
# by git). VIDX_PYTHON overrides it in tests.
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ! "$repo_root/venv/bin/python" -c 'import pyarrow, duckdb, azure.storage.blob' 2>/dev/null; then
  python3 -m venv "$repo_root/venv"
  "$repo_root/venv/bin/pip" install -q pyarrow duckdb azure-storage-blob==12.*
fi

# Servers the integration tests start themselves (S3-compatible object store).
"$(dirname "$0")/install-test-servers.sh"
