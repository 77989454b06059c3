// Kitsune e2e harness: Helia 7 (bitswap over libp2p 3) dials ONE peer and fetches a CID.
// Run from the installed helia folder (tests/harness/install.sh), Node 20:
//   NODE_OPTIONS="--require ./node20-polyfill.cjs --experimental-websocket" \
//     node fetch.mjs MADDR CID [--out FILE] [--mode cat|blocks] [--timeout S] [--muxers yamux,mplex] [--listen]
// MADDR  /ip4/127.0.0.1/tcp/P/p2p/ID  or  /ip4/127.0.0.1/tcp/P/ws/p2p/ID
// --mode cat     (default) UnixFS cat of a file CID; --out gets the file bytes
// --mode blocks  fetch only the root block (helia.blockstore.get); --out gets the raw block
// --timeout S    whole dial + fetch budget (default 60)
// --muxers LIST  stream muxers to offer, in preference order (default yamux,mplex)
// --listen       also listen on /ip4/127.0.0.1/tcp/0 (default: dial-only)
// Nothing but MADDR is contacted: no bootstrap, mDNS, DHT, delegated routers or gateways.
// Last stdout line (machine-readable), exit 0 on success, 1 on failure, 2 on usage errors:
//   RESULT {"ok":true,"bytes":N,"ms":T,"dial_ms":D,"peer":"...","remote_addr":"...","muxer":"...","encryption":"..."}
//   RESULT {"ok":false,"error":"...","bytes":0,"ms":T,"dial_ms":D|null}
import { createHelia } from 'helia'
import { unixfs } from '@helia/unixfs'
import { tcp } from '@libp2p/tcp'
import { webSockets } from '@libp2p/websockets'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { mplex } from '@libp2p/mplex'
import { identify } from '@libp2p/identify'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { writeFileSync } from 'node:fs'

const args = process.argv.slice(2)
const WITH_VALUE = ['--out', '--mode', '--timeout', '--muxers']
const flags = {}; const positional = []
for (let i = 0; i < args.length; i++) {
  if (WITH_VALUE.includes(args[i])) flags[args[i]] = args[++i]
  else if (args[i].startsWith('--')) flags[args[i]] = true
  else positional.push(args[i])
}
const opt = (k, d) => flags[k] ?? d
const [maddrStr, cidStr] = positional
const usage = 'usage: node fetch.mjs MADDR CID [--out FILE] [--mode cat|blocks] [--timeout S] [--muxers yamux,mplex] [--listen]'
const result = (r) => console.log('RESULT ' + JSON.stringify(r))
if (!maddrStr || !cidStr) { console.error(usage); result({ ok: false, error: 'usage', bytes: 0, ms: 0, dial_ms: null }); process.exit(2) }
const mode = opt('--mode', 'cat'); const out = opt('--out'); const timeoutS = Number(opt('--timeout', 60))
const muxerNames = opt('--muxers', 'yamux,mplex').split(',').filter(Boolean)
const muxerFactories = { yamux, mplex }
if (!['cat', 'blocks'].includes(mode) || !(timeoutS > 0) || muxerNames.some(m => !muxerFactories[m])) {
  console.error(usage); result({ ok: false, error: 'usage', bytes: 0, ms: 0, dial_ms: null }); process.exit(2)
}

const t0 = Date.now()
let dialMs = null; let fetchStart = null; let done = false
const finish = (r, code) => {
  if (done) return
  done = true
  result(r)
  process.exit(code)
}
// Hard watchdog: whatever hangs (dial, fetch, stop), print a RESULT and exit.
setTimeout(() => finish({ ok: false, error: `watchdog: no result after ${timeoutS + 10} s`, bytes: 0, ms: Date.now() - (fetchStart ?? t0), dial_ms: dialMs }, 1),
  (timeoutS + 10) * 1000).unref()

let helia
let res
try {
  helia = await createHelia({
    libp2p: {
      addresses: { listen: flags['--listen'] === true ? ['/ip4/127.0.0.1/tcp/0'] : [] },
      transports: [tcp(), webSockets()],
      connectionEncrypters: [noise()],
      streamMuxers: muxerNames.map(m => muxerFactories[m]()),
      peerDiscovery: [],
      services: { identify: identify() }
    },
    http: { delegatedRouters: [], recursiveGateways: [] },
    routers: []
  })
  await helia.start()
  console.log(`helia started in ${Date.now() - t0} ms as ${helia.libp2p.peerId.toString()}`)
  const signal = AbortSignal.timeout(timeoutS * 1000)
  let t = Date.now()
  const conn = await helia.libp2p.dial(multiaddr(maddrStr), { signal })
  dialMs = Date.now() - t
  console.log(`dialed ${conn.remoteAddr.toString()} in ${dialMs} ms (muxer ${conn.multiplexer}, encryption ${conn.encryption})`)
  const cid = CID.parse(cidStr)
  fetchStart = t = Date.now()
  const chunks = []; let n = 0
  if (mode === 'blocks') {
    // interface-blockstore 7: get() yields the block as a stream of Uint8Array chunks
    for await (const c of helia.blockstore.get(cid, { signal })) { n += c.length; if (out) chunks.push(c) }
  } else {
    const fs = unixfs(helia)
    for await (const c of fs.cat(cid, { signal })) { n += c.length; if (out) chunks.push(c) }
  }
  const ms = Date.now() - t
  console.log(`FETCHED ${cidStr} (${mode}): ${n} bytes in ${ms} ms`)
  if (out) writeFileSync(out, Buffer.concat(chunks))
  res = {
    ok: true, bytes: n, ms, dial_ms: dialMs, peer: conn.remotePeer.toString(), remote_addr: conn.remoteAddr.toString(),
    muxer: conn.multiplexer ?? null, encryption: conn.encryption ?? null
  }
} catch (e) {
  console.error(`FAILED: ${e?.name}: ${e?.message}`)
  res = { ok: false, error: `${e?.name}: ${e?.message}`, bytes: 0, ms: Date.now() - (fetchStart ?? t0), dial_ms: dialMs }
}
// stopping can hang on a half-dead connection: give it 3 s
if (helia) await Promise.race([helia.stop().catch(() => {}), new Promise(r => setTimeout(r, 3000).unref())])
console.log(`rss ${(process.memoryUsage().rss / 1048576).toFixed(0)} MB, total ${Date.now() - t0} ms`)
finish(res, res.ok ? 0 : 1)
