#!/usr/bin/env bash
# The main job (README): two real kubo backends, Kitsune in front of them, and a real
# Helia client fetching a 20 MiB file through it over TCP and WebSocket. Prints the
# proxy's peer ID, what was fetched, and how fast, next to a direct fetch.
set -euo pipefail
cd "$(dirname "$0")/.."

tests/harness/install.sh
cargo build --release -p kitsune-proxy -p kitsune-e2e --bins
exec target/release/kitsune-demo "$@"
