// Preloaded (NODE_OPTIONS=--require) into every Node process of Kitsune's e2e harness.
// 1) Promise.withResolvers appeared in Node 22; newer transitive deps of Helia / js-ipfs call it.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new Promise((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
// 2) Loopback guard: it-ws (js-ipfs's WebSocket listener) calls server.listen(port) without a
//    host, which would bind every interface. Any listen() given a port but no host binds 127.0.0.1.
const net = require('net')
const origListen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' && (args.length === 1 || typeof args[1] === 'function')) {
    args.splice(1, 0, '127.0.0.1')
  } else if (args[0] != null && typeof args[0] === 'object' && args[0].port != null && args[0].host == null && args[0].path == null) {
    args[0] = { ...args[0], host: '127.0.0.1' }
  }
  return origListen.apply(this, args)
}
// 3) KITSUNE_EXIT_WITH_PARENT=1: exit when the parent process (the test runner) goes away, so a
//    crashed or killed test never leaves Node peers behind.
if (process.env.KITSUNE_EXIT_WITH_PARENT === '1') {
  const ppid = process.ppid
  setInterval(() => { if (process.ppid !== ppid) process.exit(70) }, 500).unref()
}
