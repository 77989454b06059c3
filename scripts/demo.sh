#!/usr/bin/env bash
# The main job (README): two real kubo backends, Kitsune in front of them, and a real
# Helia client fetching a 20 MiB file through it over TCP and WebSocket. Prints the
# proxy's peer ID, what was fetched, and how fast, next to a direct fetch.
#
#   scripts/demo.sh --kubernetes   # the same on a real local Kubernetes cluster, the user's
#       way: brings ../shared/k8s's cluster up, installs the chart, a kubo StatefulSet, an
#       identity Secret and a KitsuneProxy, fetches through the proxy pods, scales kubo
#       down during a fetch, prints what happened and takes the cluster down (needs root).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--kubernetes" ]; then
  exec env KITSUNE_CLUSTER_DEMO=1 scripts/cluster-e2e.sh
fi

tests/harness/install.sh
cargo build --release -p kitsune-proxy -p kitsune-e2e --bins
exec target/release/kitsune-demo "$@"
