// Kitsune e2e harness: Helia 7 over HTTP only (no libp2p at all): a light Helia with the
// trustless-gateway block broker (`withHTTP` of @helia/http, what createHelia adds for HTTP)
// does a UnixFS cat of a CID.
// Run from the installed helia folder (tests/harness/install.sh), Node 20:
//   NODE_OPTIONS="--require ./node20-polyfill.cjs" \
//     node http-fetch.mjs URL CID [--out FILE] [--routing gateway|delegated] [--connections N] [--timeout S]
// URL        http://HOST:PORT or https://HOST:PORT (trust a test CA with NODE_EXTRA_CA_CERTS)
// --routing gateway    (default) URL is the one trustless gateway every block is asked of
// --routing delegated  URL is the only /routing/v1 delegated router; the gateways are the
//                      providers it names (their /http or /tls/http addresses)
// --connections N      HTTP connections per origin (default 6, a browser's pool; HTTP/2 over
//                      TLS when the server offers it). Node's own fetch has no such bound: Helia
//                      then opens one connection per outstanding block (64+ for 20 MiB at once).
//                      0: Node's own fetch, unbounded, as Helia is out of the box.
// --timeout S          whole fetch budget (default 60)
// Plain-http URLs are allowed (allowInsecure) only when URL itself is http; loopback providers
// always (allowLocal). Nothing else is contacted: no default routers or recursive gateways.
// Last stdout line (machine-readable), exit 0 on success, 1 on failure, 2 on usage errors:
//   RESULT {"ok":true,"bytes":N,"ms":T,"requests":{"ipfs":I,"routing":R},"origins":["http://..."]}
//   RESULT {"ok":false,"error":"...","bytes":0,"ms":T,"requests":{...},"origins":[...]}
import { createHeliaLight } from 'helia'
import { withHTTP } from '@helia/http'
import { fallbackRouter } from '@helia/fallback-router'
import { unixfs } from '@helia/unixfs'
import { CID } from 'multiformats/cid'
import { writeFileSync } from 'node:fs'
// undici is pinned in the lock (package.json's override); its fetch takes a dispatcher.
import { Agent, fetch as undiciFetch } from 'undici'

const args = process.argv.slice(2)
const WITH_VALUE = ['--out', '--routing', '--connections', '--timeout']
const flags = {}; const positional = []
for (let i = 0; i < args.length; i++) {
  if (WITH_VALUE.includes(args[i])) flags[args[i]] = args[++i]
  else positional.push(args[i])
}
const [url, cidStr] = positional
const routing = flags['--routing'] ?? 'gateway'
const timeoutS = Number(flags['--timeout'] ?? 60)
const connections = Number(flags['--connections'] ?? 6)
const usage = 'usage: node http-fetch.mjs URL CID [--out FILE] [--routing gateway|delegated] [--connections N] [--timeout S]'
// Every HTTP request the client makes, by kind, and the origins it went to.
const requests = { ipfs: 0, routing: 0, other: 0 }
const origins = new Set()
const result = (r) => console.log('RESULT ' + JSON.stringify({ ...r, requests, origins: [...origins] }))
if (!url || !cidStr || !['gateway', 'delegated'].includes(routing) || !(timeoutS > 0) || !(connections >= 0) || !/^https?:\/\//.test(url)) {
  console.error(usage); result({ ok: false, error: 'usage', bytes: 0, ms: 0 }); process.exit(2)
}

const pool = connections > 0 ? new Agent({ connections, allowH2: true }) : null
const nodeFetch = globalThis.fetch
globalThis.fetch = (input, init) => {
  const u = new URL(input instanceof Request ? input.url : String(input))
  origins.add(u.origin)
  if (u.pathname.startsWith('/ipfs/')) requests.ipfs++
  else if (u.pathname.startsWith('/routing/v1/')) requests.routing++
  else requests.other++
  return pool ? undiciFetch(input, { ...init, dispatcher: pool }) : nodeFetch(input, init)
}

const t0 = Date.now()
let done = false
const finish = (r, code) => {
  if (done) return
  done = true
  result(r)
  process.exit(code)
}
// Hard watchdog: whatever hangs, print a RESULT and exit. Not unref'd: a promise that can
// never settle must not let the loop empty (node exits 13, "unsettled top-level await").
const watchdog = setTimeout(() => finish({ ok: false, error: `watchdog: no result after ${timeoutS + 10} s`, bytes: 0, ms: Date.now() - t0 }, 1),
  (timeoutS + 10) * 1000)

// The trustless gateway as a router of its own. @helia/fallback-router marks itself a
// `fallback` router, and Helia 7's routing (helia/dist/src/routing.js) first merges the
// providers of the non-fallback routers, a merge that ends only when one of them finishes:
// with none at all it never ends, the event loop empties and node exits with code 13. So
// the gateway is offered as an ordinary router, as @helia/routers' httpGatewayRouting was.
function gatewayRouter (gatewayUrl) {
  const gateways = fallbackRouter({ gateways: [gatewayUrl], shuffle: false })
  return {
    name: 'http-gateway-router',
    findProviders: (cid, options) => gateways.findProviders(cid, options),
    toString: () => `GatewayRouter(${gatewayUrl})`
  }
}

let helia
let res
try {
  helia = withHTTP(createHeliaLight({ routers: routing === 'gateway' ? [gatewayRouter(url)] : [] }), {
    delegatedRouters: routing === 'delegated' ? [url] : [],
    recursiveGateways: [],
    allowInsecure: url.startsWith('http:'),
    allowLocal: true,
    cacheTTL: 0
  })
  await helia.start()
  const signal = AbortSignal.timeout(timeoutS * 1000)
  const t = Date.now()
  const chunks = []; let n = 0
  for await (const c of unixfs(helia).cat(CID.parse(cidStr), { signal })) {
    n += c.length
    if (flags['--out']) chunks.push(c)
  }
  const ms = Date.now() - t
  console.log(`FETCHED ${cidStr} over HTTP (${routing}): ${n} bytes in ${ms} ms, requests ${JSON.stringify(requests)}`)
  if (flags['--out']) writeFileSync(flags['--out'], Buffer.concat(chunks))
  res = { ok: true, bytes: n, ms }
} catch (e) {
  console.error(`FAILED: ${e?.name}: ${e?.message}`)
  for (const inner of e?.errors ?? []) console.error(`  ${inner?.message}`)
  res = { ok: false, error: `${e?.name}: ${e?.message}`, bytes: 0, ms: Date.now() - t0 }
}
if (helia) await Promise.race([helia.stop().catch(() => {}), new Promise(resolve => setTimeout(resolve, 3000).unref())])
clearTimeout(watchdog)
finish(res, res.ok ? 0 : 1)
