#!/usr/bin/env bash
# Kitsune e2e harness: start a js-ipfs 0.66.1 daemon on loopback only, in the foreground
# (exec: this script's PID becomes the node process).
#   daemon.sh RUNDIR PORTBASE                         ports PORTBASE .. PORTBASE+4
#   daemon.sh RUNDIR TCP WS API GATEWAY GRPC           five explicit ports
#   TCP  swarm /ip4/127.0.0.1/tcp/TCP      WS  swarm /ip4/127.0.0.1/tcp/WS/ws
#   API  HTTP RPC http://127.0.0.1:API/api/v0/...      GATEWAY / GRPC (unused by the tests)
# Inits RUNDIR with `--profile test --empty-repo` if it has no config. No bootstrap, no mDNS,
# no webRTCStar, Routing.Type none, pubsub off. js-ipfs speaks noise + mplex only (no yamux).
# Uses node_modules beside this script (the installed copy), else $KITSUNE_HARNESS_DIR/jsipfs.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
if [ $# -ne 2 ] && [ $# -ne 6 ]; then
  echo "usage: $0 RUNDIR PORTBASE | $0 RUNDIR TCP WS API GATEWAY GRPC" >&2; exit 2
fi
js="$here"
[ -x "$js/node_modules/.bin/jsipfs" ] || js="${KITSUNE_HARNESS_DIR:-$here/../../../.harness}/jsipfs"
[ -x "$js/node_modules/.bin/jsipfs" ] || { echo "js-ipfs not installed: run tests/harness/install.sh" >&2; exit 3; }
repo="$(mkdir -p "$(dirname "$1")" && cd "$(dirname "$1")" && pwd)/$(basename "$1")"
if [ $# -eq 2 ]; then
  ports=("$2" $(( $2 + 1 )) $(( $2 + 2 )) $(( $2 + 3 )) $(( $2 + 4 )))
else
  ports=("$2" "$3" "$4" "$5" "$6")
fi
export IPFS_PATH="$repo"
export NODE_OPTIONS="--require $js/node20-polyfill.cjs"
if [ ! -f "$repo/config" ]; then
  "$js/node_modules/.bin/jsipfs" init --profile test --empty-repo >/dev/null
fi
node -e '
const fs = require("fs"); const p = process.argv[1]; const [t, w, a, g, r] = process.argv.slice(2).map(Number)
const c = JSON.parse(fs.readFileSync(p))
c.Addresses = { Swarm: [`/ip4/127.0.0.1/tcp/${t}`, `/ip4/127.0.0.1/tcp/${w}/ws`], Announce: [], NoAnnounce: [],
  API: `/ip4/127.0.0.1/tcp/${a}`, Gateway: `/ip4/127.0.0.1/tcp/${g}`, RPC: `/ip4/127.0.0.1/tcp/${r}`, Delegates: [] }
c.Bootstrap = []; c.Routing = { Type: "none" }; c.Pubsub = { ...(c.Pubsub || {}), Enabled: false }
c.Discovery = { MDNS: { Enabled: false, Interval: 10 }, webRTCStar: { Enabled: false } }
fs.writeFileSync(p, JSON.stringify(c, null, 2))
' "$repo/config" "${ports[@]}"
exec "$js/node_modules/.bin/jsipfs" daemon
