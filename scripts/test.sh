#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need, checks formatting and lints,
# then runs every test in the workspace. Tests start their own servers (redis-server, an
# S3-compatible server) on loopback ports and stop them by pid.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
