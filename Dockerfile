# syntax=docker/dockerfile:1
# Two images from one build of the workspace:
#   docker build --target proxy    -t ghcr.io/kitsune-proxy/kitsune-proxy:0.1.0 .
#   docker build --target operator -t ghcr.io/kitsune-proxy/kitsune-operator:0.1.0 .
# The tag must be the workspace version: the operator runs
# ghcr.io/kitsune-proxy/kitsune-proxy:<its version> unless told otherwise (--proxy-image,
# the chart's proxyImage, or spec.proxy.image).
# Not built in this project's CI (no container engine there); see docs/container-image.md.
# CI runs the same images on its local cluster: scripts/images.sh writes them as OCI
# archives from the test build's binaries, with this file's paths, ENTRYPOINT/CMD, USER,
# ports and the distroless base's files (glibc and the libraries ldd lists, /etc/passwd,
# CA bundle). Change one, change the other.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The cache mounts keep the registry and target dir between builds; the binaries are
# copied out of the mount so the next stage can see them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p kitsune-proxy -p kitsune-operator \
        --bin kitsune-proxy --bin kitsune-operator \
 && mkdir -p /out \
 && cp target/release/kitsune-proxy target/release/kitsune-operator /out/ \
 && strip /out/kitsune-proxy /out/kitsune-operator

# distroless cc: glibc and libgcc, no shell; user `nonroot` is 65532, the uid the
# operator's proxy pods and the chart run as.
FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/kitsune-operator /usr/local/bin/kitsune-operator
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kitsune-operator"]
CMD ["run"]

# Last, so a plain `docker build .` gives the proxy image.
FROM gcr.io/distroless/cc-debian12:nonroot AS proxy
COPY --from=build /out/kitsune-proxy /usr/local/bin/kitsune-proxy
USER 65532:65532
EXPOSE 4001/tcp 4001/udp 8080 8081 9090
ENTRYPOINT ["/usr/local/bin/kitsune-proxy"]
