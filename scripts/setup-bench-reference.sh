#!/usr/bin/env bash
# The PyTorch reference the model benchmark compares against: a venv at venv-fixture/ (ignored by
# git) with the versions ../shared/tools/requirements-fixture.txt pins. About 3 GB of wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x venv-fixture/bin/python ] || python3 -m venv venv-fixture
venv-fixture/bin/pip install -q -r ../shared/tools/requirements-fixture.txt
