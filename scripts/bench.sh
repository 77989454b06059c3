#!/usr/bin/env bash
# The benchmark suite (issue 7): real kubo backends, the release proxy, real clients,
# all on loopback. Prints every figure and writes docs/PERFORMANCE.md.
#   scripts/bench.sh            the full suite (about 45 minutes with the 30-minute soak)
#   scripts/bench.sh --quick    a quick pass that fits in CI (writes nothing)
#   scripts/bench.sh --only clients,scaling --clients 1000
set -euo pipefail
cd "$(dirname "$0")/.."

tests/harness/install.sh
cargo build --release -p kitsune-proxy -p kitsune-operator -p kitsune-e2e --bins
exec target/release/kitsune-bench "$@"
