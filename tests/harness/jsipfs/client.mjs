// Kitsune e2e harness: an in-process ipfs-core 0.18.1 (js-ipfs 0.66.1) node used as a client,
// with the js-ipfs 'preload' feature. Run from the installed jsipfs folder, Node 20:
//   NODE_OPTIONS="--require ./node20-polyfill.cjs" node client.mjs [options]
// options (all optional):
//   --connect MADDR     dial this peer (repeatable); also used as the Bootstrap list
//   --preload MADDR     preload node, e.g. /ip4/127.0.0.1/tcp/PORT/http (preload is OFF without it)
//   --add-bytes N       add N deterministic bytes (see --seed); preload fires for the new root CID
//   --seed S            seed of the byte generator (default 0); same bytes as the Rust
//                       harness's random_bytes(N, S): mulberry32, 4 little-endian bytes per step
//   --add-dag-cbor N    put N raw blocks of --leaf-size bytes (leaf i = bytes(--leaf-size, seed + i))
//                       without preloading them, then a dag-cbor root {"leaves": [links...]},
//                       whose dag.put preloads it; ADDED is the root
//   --leaf-size B       leaf size for --add-dag-cbor (default 65536)
//   --cat CID           fetch CID via bitswap (UnixFS cat)
//   --get-dag CID       fetch a --add-dag-cbor root (dag.get) and its leaves (block.get) via
//                       bitswap; the "file" is the leaves' bytes in order
//   --out FILE          write the fetched bytes to FILE
//   --timeout S         budget for connect + cat (default 60)
//   --linger S          stay up S seconds before stopping (default 1; lets preload requests finish)
// Swarm listens on /ip4/127.0.0.1/tcp/0 only; no MDNS, no webRTCStar, no routing, no pubsub.
// --connect addresses may be /ws (the multiaddr-to-uri override in package.json makes
// @libp2p/websockets 5 dial them).
// Last stdout line (machine-readable), exit 0 on success, 1 on failure, 2 on usage errors:
//   RESULT {"ok":true,"peer_id":"12D3...","added":"Qm..."|null,"added_bytes":N|null,
//           "bytes":N|null,"ms":T|null,"connect_ms":C|null,"connected":[...]}
//   RESULT {"ok":false,"error":"...", ...same fields so far}
import { create } from 'ipfs-core'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

const args = process.argv.slice(2)
const WITH_VALUE = ['--connect', '--preload', '--add-bytes', '--seed', '--cat', '--out', '--timeout', '--linger',
  '--add-dag-cbor', '--leaf-size', '--get-dag']
const flags = {}; const connect = []
for (let i = 0; i < args.length; i++) {
  const k = args[i]
  if (!WITH_VALUE.includes(k) || i + 1 >= args.length) {
    console.error(`unknown or incomplete option ${k}`)
    console.log('RESULT ' + JSON.stringify({ ok: false, error: `usage: bad option ${k}` }))
    process.exit(2)
  }
  if (k === '--connect') connect.push(args[++i]); else flags[k] = args[++i]
}
const preload = flags['--preload']; const catCid = flags['--cat']; const out = flags['--out']
const addDag = flags['--add-dag-cbor'] != null ? Number(flags['--add-dag-cbor']) : null
const leafSize = Number(flags['--leaf-size'] ?? 65536); const getDag = flags['--get-dag']
const addBytes = flags['--add-bytes'] != null ? Number(flags['--add-bytes']) : null
const seed = BigInt(flags['--seed'] ?? 0)
const timeoutS = Number(flags['--timeout'] ?? 60); const linger = Number(flags['--linger'] ?? 1)

const res = { ok: false, peer_id: null, added: null, added_bytes: null, bytes: null, ms: null, connect_ms: null, connected: [] }
let done = false
const finish = (code) => {
  if (done) return
  done = true
  console.log('RESULT ' + JSON.stringify(res))
  process.exit(code)
}
setTimeout(() => { res.ok = false; res.error = res.error ?? `watchdog: no result after ${timeoutS + linger + 20} s`; finish(1) },
  (timeoutS + linger + 20) * 1000).unref()

// mulberry32 stream, 4 bytes little-endian per step; state = low32(seed ^ (seed >> 32))
function deterministicBytes (len, seed) {
  let a = Number((seed ^ (seed >> 32n)) & 0xffffffffn) >>> 0
  const buf = Buffer.alloc(Math.ceil(len / 4) * 4)
  for (let o = 0; o < buf.length; o += 4) {
    a = (a + 0x6D2B79F5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    buf.writeUInt32LE((t ^ (t >>> 14)) >>> 0, o)
  }
  return buf.subarray(0, len)
}

const repo = mkdtempSync(join(tmpdir(), 'kitsune-jsipfs-client-'))
const t0 = Date.now()
let node
let code = 1
try {
  node = await create({
    repo,
    init: { algorithm: 'Ed25519', emptyRepo: true },
    start: true,
    preload: preload ? { enabled: true, addresses: [preload] } : { enabled: false },
    config: {
      Addresses: { Swarm: ['/ip4/127.0.0.1/tcp/0'], API: '', Gateway: '', RPC: '', Delegates: [] },
      Bootstrap: connect,
      Discovery: { MDNS: { Enabled: false }, webRTCStar: { Enabled: false } },
      Routing: { Type: 'none' },
      Pubsub: { Enabled: false }
    }
  })
  res.peer_id = (await node.id()).id.toString()
  console.log(`started in ${Date.now() - t0} ms as ${res.peer_id}`)
  const signal = AbortSignal.timeout(timeoutS * 1000)
  if (connect.length) {
    const t = Date.now()
    for (const ma of connect) {
      await node.swarm.connect(multiaddr(ma), { signal })
      res.connected.push(ma)
      console.log(`connected to ${ma}`)
    }
    res.connect_ms = Date.now() - t
  }
  if (addBytes != null) {
    const r = await node.add(deterministicBytes(addBytes, seed))
    res.added = r.cid.toString(); res.added_bytes = addBytes
    console.log(`ADDED ${res.added} size ${r.size}`)
  }
  if (addDag != null) {
    const leaves = []
    for (let i = 0; i < addDag; i++) {
      const cid = await node.block.put(deterministicBytes(leafSize, seed + BigInt(i)),
        { format: 'raw', mhtype: 'sha2-256', version: 1, preload: false })
      leaves.push(cid)
    }
    const root = await node.dag.put({ leaves }, { storeCodec: 'dag-cbor', hashAlg: 'sha2-256' })
    res.added = root.toString(); res.added_bytes = addDag * leafSize
    console.log(`ADDED ${res.added} size ${res.added_bytes}`)
  }
  if (getDag) {
    const t = Date.now(); const chunks = []; let n = 0
    const root = await node.dag.get(CID.parse(getDag), { signal })
    for (const leaf of root.value.leaves) {
      const b = await node.block.get(leaf, { signal })
      n += b.length; chunks.push(b)
    }
    res.ms = Date.now() - t; res.bytes = n
    console.log(`FETCHED ${getDag} ${n} bytes in ${res.ms} ms`)
    if (out) writeFileSync(out, Buffer.concat(chunks))
  }
  if (catCid) {
    const t = Date.now(); const chunks = []; let n = 0
    for await (const c of node.cat(catCid, { signal })) { n += c.length; if (out) chunks.push(c) }
    res.ms = Date.now() - t; res.bytes = n
    console.log(`FETCHED ${catCid} ${n} bytes in ${res.ms} ms`)
    if (out) writeFileSync(out, Buffer.concat(chunks))
  }
  if (linger > 0) await new Promise(r => setTimeout(r, linger * 1000))
  res.ok = true; code = 0
} catch (e) {
  console.error(`FAILED: ${e?.name}: ${e?.message}`)
  res.error = `${e?.name}: ${e?.message}`
} finally {
  if (node) await Promise.race([node.stop().catch(() => {}), new Promise(r => setTimeout(r, 3000).unref())])
  rmSync(repo, { recursive: true, force: true })
  console.log(`rss ${(process.memoryUsage().rss / 1048576).toFixed(0)} MB, total ${Date.now() - t0} ms`)
  finish(code)
}
