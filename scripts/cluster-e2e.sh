#!/usr/bin/env bash
# Kitsune on a real Kubernetes cluster, the user's way (issue 17): brings up the local
# single-node cluster (../shared/k8s/cluster.sh), builds and imports the images
# (scripts/images.sh), runs tests/cluster/e2e.py (chart install, kubo fleet, identity,
# KitsuneProxy, real Helia fetches through the proxy pods, scaling, bad input, deletion)
# and operator/tests/cluster.rs against it, and ALWAYS brings the cluster down.
#
#   scripts/cluster-e2e.sh            # builds the debug binaries first if needed
#   KITSUNE_CLUSTER_QUICK=1 scripts/cluster-e2e.sh   # skip the optional steps (scale, restart, rollout, preload)
#
# Needs root (the cluster), the harness (tests/harness/install.sh) and a debug build
# (cargo build --workspace --all-targets; $KITSUNE_BIN_DIR to use other binaries).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${KITSUNE_SHARED_DIR:-$ROOT/../shared}
CLUSTER=$SHARED/k8s/cluster.sh
log() { printf '[cluster-e2e] %s\n' "$*" >&2; }
[ -x "$CLUSTER" ] || { log "missing $CLUSTER"; exit 1; }

# The cluster's state (containerd's image store, etcd, logs), the image archives and the
# test's files go to memory when there is room: about 1.5 GB, none of it worth keeping, and
# a full disk then cannot fail the run.
if [ -z "${KITSUNE_K8S_DIR:-}" ] && [ -d /dev/shm ] &&
   [ "$(df -Pk /dev/shm | awk 'NR==2 {print $4}')" -gt 3000000 ]; then
  export KITSUNE_K8S_DIR=/dev/shm/kitsune-k8s
  export KITSUNE_IMAGES_DIR=${KITSUNE_IMAGES_DIR:-/dev/shm/kitsune-images}
  export KITSUNE_CLUSTER_WORK=${KITSUNE_CLUSTER_WORK:-/dev/shm/kitsune-cluster-e2e}
fi
log "cluster state in ${KITSUNE_K8S_DIR:-/tmp/kitsune-k8s}"

t0=$(date +%s)
down() {
  local rc=$?
  trap - EXIT INT TERM
  log "bringing the cluster down (exit status $rc)"
  "$CLUSTER" down >/dev/null 2>&1 || "$CLUSTER" down || true
  log "total $(($(date +%s) - t0)) s"
  exit "$rc"
}
trap down EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

tests/harness/install.sh
if [ -z "${KITSUNE_BIN_DIR:-}" ]; then
  # All targets, as scripts/test.sh builds them (the same features: nothing rebuilt), the
  # suite's test binary (operator/tests/cluster.rs) among them, before the clock runs.
  nice cargo build --workspace --all-targets
fi

t_up=$(date +%s)
eval "$("$CLUSTER" up)"
export KUBECONFIG
KUBECTL=${KUBECTL:-$(command -v kubectl || echo "${KITSUNE_K8S_DIR:-/tmp/kitsune-k8s}/kvenv/bin/kubectl")}
export KUBECTL
log "cluster up in $(($(date +%s) - t_up)) s"
"$KUBECTL" wait --for=condition=Ready node --all --timeout=60s >/dev/null

scripts/images.sh
.harness/venv/bin/python tests/cluster/e2e.py

if [ -z "${KITSUNE_BIN_DIR:-}" ] && [ "${KITSUNE_CLUSTER_DEMO:-}" != 1 ]; then
  t_suite=$(date +%s)
  # --workspace, not -p: the same features as the build above, so nothing is rebuilt.
  cargo test --workspace --test cluster -- --test-threads 1 --nocapture
  log "operator/tests/cluster.rs in $(($(date +%s) - t_suite)) s"
fi
log "cluster part (up to here) $(($(date +%s) - t_up)) s"
