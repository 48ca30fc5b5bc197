# Helix Edge images, one Dockerfile for amd64 and arm64 (docs/container.md):
#   node (default target): the agent, `helix run`;   gateway: the central gateway, `helix gateway`.
#
#   docker buildx build --platform linux/arm64 -t helix-edge-node:arm64 .            # Docker >= 23
#   docker buildx build --platform linux/arm64 --target gateway -t helix-edge-gateway:arm64 .
#   DOCKER_BUILDKIT=1 docker build -t helix-edge-node .                               # Docker 20.10, this machine's arch
#
# The BPF objects and the Python packages are built on the build machine's own architecture (the objects are
# architecture-neutral bytecode; wheels for the target come from PyPI as they are), so an arm64 build runs
# emulated only for the target's apt-get. helix-edge's own wheel carries the compiled accelerator (mypyc modules
# and the C head parser) built for the target: natively, or cross-compiled (scripts/target-wheel.sh). Behind a TLS-inspecting proxy, pass its CA bundle to pip with
# --secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt. Built with the Dockerfile frontend that
# BuildKit carries (Docker >= 20.10): no `# syntax` line, so no frontend image is pulled from a registry.

# debian:bookworm-slim of 2025-04-07 (bookworm-20250407-slim), pinned by its multi-arch index digest. A base made
# locally (scripts/container-smoke.sh debootstraps one) replaces it: --build-arg BASE=… [--build-arg BUILD_BASE=…]
ARG BASE=debian:bookworm-slim@sha256:912d8a461ca5f85380a40de97d7b38dfcc39972de210518de07136126dd0bfa9
# The build stages run on the build machine's architecture: BUILD_BASE must be an image of that architecture
# (the default, a multi-arch index, is; a local single-architecture base is not).
ARG BUILD_BASE=${BASE}

# ---- build: probes, wheel, and the target's site-packages, natively -------------------------------------------
FROM --platform=$BUILDPLATFORM ${BUILD_BASE} AS build
ARG TARGETARCH
# gcc and the CPython headers build the accelerator; for another architecture, Debian's cross gcc for it
# (gcc-aarch64-linux-gnu on an amd64 builder). Cross-compiling, not emulation: the accelerator is portable C for an
# LP64 glibc target, so only the compiler and the target's pyconfig.h differ, and it takes minutes natively where
# mypyc's C under qemu would take many times longer.
RUN case "$TARGETARCH" in "$(dpkg --print-architecture)") cross= ;; \
        arm64) cross="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
        amd64) cross="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
        *) echo "no build for TARGETARCH=$TARGETARCH" >&2; exit 1 ;; esac \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        clang llvm libbpf-dev make python3 python3-venv ca-certificates netbase gcc libpython3.11-dev $cross \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /build/venv
WORKDIR /src
COPY . .
ARG PIP_INDEX_URL
# helix-edge's own wheel with the .bpf.o objects and the accelerator compiled for the target (the build fails if
# it did not compile: the image must not fall back to the pure-Python modules unnoticed; HELIX_ACCEL_BUILD=0 as a
# build argument makes the pure-Python wheel), then it and its dependencies for the target:
# CPython 3.11 (bookworm's), manylinux wheels only. EXTRAS picks the image: "" the node, "[gateway]" the gateway.
ARG HELIX_ACCEL_BUILD=1
COPY scripts/container-site.sh /usr/local/bin/
RUN --mount=type=secret,id=ca-certificates --mount=type=cache,target=/root/.cache/pip \
    if [ -s /run/secrets/ca-certificates ]; then export PIP_CERT=/run/secrets/ca-certificates; fi \
    && HELIX_ACCEL_BUILD=$HELIX_ACCEL_BUILD sh scripts/target-wheel.sh "$TARGETARCH" /wheels /build/venv/bin/python \
    && container-site.sh "$TARGETARCH" /wheels/helix_edge-*.whl /out/node \
    && container-site.sh "$TARGETARCH" "$(echo /wheels/helix_edge-*.whl)[gateway]" /out/gateway

# ---- runtime file system: the files of the Debian packages Python and libbpf need, no shell, no apt ----------
FROM ${BASE} AS rootfs
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3.11-minimal libpython3.11-stdlib libbpf1 \
    && rm -rf /var/lib/apt/lists/*
# The same on every architecture, so taken from the build stage (update-ca-certificates takes minutes under qemu).
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
COPY --from=build /etc/services /etc/protocols /etc/
COPY scripts/container-rootfs.sh /usr/local/bin/
RUN container-rootfs.sh /rootfs

FROM scratch AS runtime
COPY --from=rootfs /rootfs /
# container=docker: as podman and systemd-nspawn say it, so `helix doctor` gives container flags as fixes.
ENV PATH=/opt/helix/bin:/usr/bin PYTHONUNBUFFERED=1 LANG=C.UTF-8 container=docker
# `helix run` and `helix doctor` started as root (--user 0, for the kernel probes) switch to this user at once,
# keeping only the capabilities the probes need (edge/runtime/privileges.py).
ENV HELIX_USER=helix
WORKDIR /var/lib/helix
# Spool (batches not yet acknowledged upstream) and fleet state outlive the container in this volume.
VOLUME /var/lib/helix
USER 10001:10001

# ---- gateway: uplink batches in, OTLP out (grpcio, aiohttp) -----------------------------------------------------
FROM runtime AS gateway
COPY --from=build /out/gateway /opt/helix
# Every extension module finds its libraries in this file system (run under emulation for another architecture).
RUN ["python3", "-c", "import cbor2, zstandard, google.protobuf.message, cryptography.hazmat.bindings._rust, aiohttp, grpc"]
EXPOSE 4380
# Alive = the gateway answers on /healthz (gateway.http_listen); with another address, set HELIX_HEALTH_URL.
ENV HELIX_HEALTH_URL=http://127.0.0.1:4380/healthz
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD ["python3", "-c", \
    "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(os.environ['HELIX_HEALTH_URL'], timeout=4).status != 200)"]
ENTRYPOINT ["helix"]
# Defaults: the broker on this host; point gateway.export_endpoint at the backend with a config file mounted in
# /etc/helix and `gateway --config /etc/helix/gateway.toml`.
CMD ["gateway"]

# ---- node (default): the agent ---------------------------------------------------------------------------------
FROM runtime AS node
COPY --from=build /out/node /opt/helix
RUN ["python3", "-c", "import cbor2, zstandard, h2, google.protobuf.message, cryptography.hazmat.bindings._rust, aiohttp"]
# OTLP receivers for local SDKs and /metrics listen on loopback by default: run with --network=host.
EXPOSE 4317 4318
# Alive = the agent answers on /metrics; needs no capability. With another metrics.listen, set HELIX_HEALTH_URL.
ENV HELIX_HEALTH_URL=http://127.0.0.1:9464/metrics
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s CMD ["python3", "-c", \
    "import os, sys, urllib.request; sys.exit(urllib.request.urlopen(os.environ['HELIX_HEALTH_URL'], timeout=4).status != 200)"]
ENTRYPOINT ["helix"]
# Defaults: the broker on this host (SDK spans and uplink); a profile or config is mounted in /etc/helix and given
# as `run --config /etc/helix/agent.toml`.
CMD ["run"]
