#!/usr/bin/env python3
"""Write a single-layer OCI image archive (for `ctr images import`) from files on this host.
No registry, no container engine: tarfile + json + hashlib (the pattern of
../shared/k8s/mkimage.py, generalised to any files).

  oci_image.py OUT.tar NAME [options]
    --file SRC:DST[:MODE]     a file (symlinks followed), e.g. a binary at /usr/local/bin/x
    --tree SRC:DST            a directory, recursively (see --exclude)
    --exclude GLOB            skip paths (relative to a --tree source) matching GLOB
    --dir DST[:MODE[:UID]]    an empty directory
    --text DST:TEXT           a small file with this content (\\n escapes allowed)
    --ldd                     add the shared libraries (and the ELF interpreter) that `ldd`
                              lists for every ELF file in the image, at the paths it names
    --entrypoint JSON --cmd JSON --user U:G --workdir DIR --env K=V --expose PORT/PROTO

The layer is an uncompressed tar (a valid OCI layer media type): importing is faster than
gzip costs here, and nothing is pushed anywhere. Timestamps are 0 so that the same inputs
give the same image digest.
"""
import argparse, fnmatch, hashlib, io, json, os, subprocess, sys, tarfile, tempfile

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("name")
ap.add_argument("--file", action="append", default=[])
ap.add_argument("--tree", action="append", default=[])
ap.add_argument("--exclude", action="append", default=[])
ap.add_argument("--dir", action="append", default=[])
ap.add_argument("--text", action="append", default=[])
ap.add_argument("--ldd", action="store_true")
ap.add_argument("--entrypoint", type=json.loads, default=None)
ap.add_argument("--cmd", type=json.loads, default=None)
ap.add_argument("--user", default="")
ap.add_argument("--workdir", default="/")
ap.add_argument("--env", action="append", default=[])
ap.add_argument("--expose", action="append", default=[])
A = ap.parse_args()

# dst (no leading slash) -> ("file", src, mode) | ("dir", mode, uid) | ("text", bytes) | ("link", target)
entries = {}


def parents(dst):
    parts = dst.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        entries.setdefault("/".join(parts[:i]), ("dir", 0o755, 0))


def add_file(src, dst, mode=None):
    dst = dst.lstrip("/")
    parents(dst)
    entries[dst] = ("file", src, mode if mode is not None else os.stat(src).st_mode & 0o777)


for spec in A.file:
    parts = spec.split(":")
    add_file(parts[0], parts[1], int(parts[2], 8) if len(parts) > 2 else None)
for spec in A.tree:
    src, dst = spec.split(":", 1)
    for root, dirs, files in os.walk(src):
        rel_root = os.path.relpath(root, src)
        keep = []
        for d in dirs:
            rel = os.path.normpath(os.path.join(rel_root, d))
            if not any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(d, g) for g in A.exclude):
                keep.append(d)
        dirs[:] = keep
        for f in files:
            rel = os.path.normpath(os.path.join(rel_root, f))
            if any(fnmatch.fnmatch(rel, g) or fnmatch.fnmatch(f, g) for g in A.exclude):
                continue
            path = os.path.join(root, f)
            if os.path.islink(path) and not os.path.exists(path):
                continue
            add_file(path, os.path.join(dst, rel))
for spec in A.dir:
    parts = spec.split(":")
    dst = parts[0].lstrip("/")
    parents(dst)
    entries[dst] = ("dir", int(parts[1], 8) if len(parts) > 1 else 0o755, int(parts[2]) if len(parts) > 2 else 0)
for spec in A.text:
    dst, txt = spec.split(":", 1)
    dst = dst.lstrip("/")
    parents(dst)
    entries[dst] = ("text", txt.encode().decode("unicode_escape").encode())


def is_elf(path):
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


if A.ldd:
    # Every ELF in the image, and every library found, until nothing new appears.
    todo = [e[1] for e in entries.values() if e[0] == "file" and is_elf(e[1])]
    seen = set()
    while todo:
        src = todo.pop()
        if src in seen:
            continue
        seen.add(src)
        out = subprocess.run(["ldd", src], capture_output=True, text=True).stdout
        for line in out.splitlines():
            line = line.strip()
            path = None
            if "=>" in line:
                right = line.split("=>", 1)[1].strip()
                if right.startswith("/"):
                    path = right.split(" (")[0]
            elif line.startswith("/"):
                path = line.split(" (")[0]  # the ELF interpreter
            if path and path.lstrip("/") not in entries:
                add_file(path, path, 0o755)
                todo.append(path)


def tinfo(path, kind, mode, size=0, uid=0):
    ti = tarfile.TarInfo(path)
    ti.type, ti.mode, ti.size = kind, mode, size
    ti.mtime, ti.uid, ti.gid = 0, uid, uid
    ti.uname, ti.gname = ("root", "root") if uid == 0 else ("", "")
    return ti


tmp = tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(A.out)), delete=False)
try:
    with tarfile.open(fileobj=tmp, mode="w", format=tarfile.PAX_FORMAT) as t:
        for dst in sorted(entries):
            e = entries[dst]
            if e[0] == "dir":
                t.addfile(tinfo(dst, tarfile.DIRTYPE, e[1], uid=e[2]))
            elif e[0] == "text":
                t.addfile(tinfo(dst, tarfile.REGTYPE, 0o644, len(e[1])), io.BytesIO(e[1]))
            else:
                size = os.stat(e[1]).st_size
                with open(e[1], "rb") as f:
                    t.addfile(tinfo(dst, tarfile.REGTYPE, e[2], size), f)
    tmp.close()
    h = hashlib.sha256()
    with open(tmp.name, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    layer_digest, layer_size = "sha256:" + h.hexdigest(), os.path.getsize(tmp.name)

    config = {
        "architecture": "amd64", "os": "linux", "created": "1970-01-01T00:00:00Z",
        "config": {"Env": A.env or ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                   "WorkingDir": A.workdir},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "tests/cluster/oci_image.py"}],
    }
    c = config["config"]
    if A.entrypoint is not None:
        c["Entrypoint"] = A.entrypoint
    if A.cmd is not None:
        c["Cmd"] = A.cmd
    if A.user:
        c["User"] = A.user
    if A.expose:
        c["ExposedPorts"] = {p: {} for p in A.expose}

    def blob(b):
        return "sha256:" + hashlib.sha256(b).hexdigest(), b

    cfg_d, cfg_b = blob(json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg_d, "size": len(cfg_b)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest,
                    "size": layer_size}],
    }
    man_d, man_b = blob(json.dumps(manifest, sort_keys=True).encode())
    tag = A.name.rsplit(":", 1)[1] if ":" in A.name.rsplit("/", 1)[-1] else "latest"
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": man_d,
                            "size": len(man_b), "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"io.containerd.image.name": A.name,
                                            "org.opencontainers.image.ref.name": tag}}]}
    with tarfile.open(A.out + ".part", "w") as t:
        def add(path, b):
            t.addfile(tinfo(path, tarfile.REGTYPE, 0o644, len(b)), io.BytesIO(b))
        t.addfile(tinfo("blobs", tarfile.DIRTYPE, 0o755))
        t.addfile(tinfo("blobs/sha256", tarfile.DIRTYPE, 0o755))
        add("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add("blobs/sha256/" + cfg_d.split(":")[1], cfg_b)
        add("blobs/sha256/" + man_d.split(":")[1], man_b)
        with open(tmp.name, "rb") as f:
            t.addfile(tinfo("blobs/sha256/" + layer_digest.split(":")[1], tarfile.REGTYPE, 0o644, layer_size), f)
        add("index.json", json.dumps(index).encode())
    os.replace(A.out + ".part", A.out)
finally:
    os.unlink(tmp.name)
print(f"{A.out}: {A.name} {len(entries)} paths, layer {layer_size / 1e6:.0f} MB, manifest {man_d[:19]}")
