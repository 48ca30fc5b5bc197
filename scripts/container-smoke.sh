#!/usr/bin/env bash
# Builds the Helix Edge container images from this checkout and runs them for real (docs/container.md).
#
#   scripts/container-smoke.sh native   # build node + gateway for this machine's architecture, run the node image
#                                         with the documented capabilities: `helix doctor` attaches the probes, an
#                                         SDK span (OTLP from another container) and a kernel span (curl to nginx
#                                         in another container) reach an OTLP sink through the gateway image
#   scripts/container-smoke.sh arm64    # build both for linux/arm64 (qemu-user-static through binfmt_misc) and run
#                                         them emulated: SDK-only (qemu does not emulate bpf()), end to end
#   scripts/container-smoke.sh all      # both (default)
#
# No registry is needed: the base (Debian bookworm, as slim as debian:bookworm-slim) is made with debootstrap and
# cached in $HELIX_CONTAINER_CACHE (default /var/tmp/helix-container) between runs. Uses a running Docker engine if
# there is one, else starts Debian's dockerd (docker.io, installed if missing) on a private socket with no bridge
# and no iptables rules (every container here uses the host's network), and stops it at the end; likewise it stops
# only the containers it started. Needs root. Figures (sizes, build times, start to first span, idle RSS) are
# printed as they are measured and as one JSON object on the last line.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

MODE=${1:-all}
CACHE=${HELIX_CONTAINER_CACHE:-/var/tmp/helix-container}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
TAG=${HELIX_IMAGE_TAG:-smoke}
RUN_ID=helix-smoke-$$
T0=$(date +%s)
declare -A FIG=()

say() { printf 'container-smoke [%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*" >&2; }
die() { say "FAILED: $*"; exit 1; }
fig() { FIG[$1]=$2; say "figure $1 = $2"; }
elapsed() { awk -v now="$(date +%s.%N)" -v t0="$1" 'BEGIN { printf "%.1f", now - t0 }'; }
case $MODE in native|arm64|all) ;; *) die "usage: $0 [native|arm64|all]" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, dockerd and the kernel probes need it)"
mkdir -p "$CACHE"
# One run at a time per cache: two runs would share the engine, its data root and the image tags, and stop each
# other's containers. A second run waits for the first.
exec 9>"$CACHE/run.lock"
if ! flock -n 9; then
  say "another container-smoke run holds $CACHE/run.lock; waiting for it to finish"
  flock 9
fi

host_arch=$(dpkg --print-architecture)
case $host_arch in amd64|arm64) ;; *) die "unsupported host architecture $host_arch (amd64 or arm64)" ;; esac
arches=()
[ "$MODE" = arm64 ] || arches+=("$host_arch")
[ "$MODE" = native ] || [ "$host_arch" = arm64 ] || arches+=(arm64)

# ---- host tools -------------------------------------------------------------------------------------------------
need=()
want=(debootstrap zstd)
command -v dockerd >/dev/null || want+=(docker.io)
[ "$MODE" = native ] || [ "$host_arch" = arm64 ] || want+=(qemu-user-static binfmt-support)
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# ---- binfmt_misc: arm64 binaries run through qemu (the F flag opens the emulator once, so containers need no copy)
if [[ " ${arches[*]} " == *" arm64 "* ]] && [ "$host_arch" != arm64 ]; then
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc \
    || die "cannot mount binfmt_misc"
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null \
    || die "qemu-aarch64 is not registered in binfmt_misc with the F flag (apt install qemu-user-static binfmt-support)"
fi

# ---- the local base: debootstrap minbase, slimmed the way debian:bookworm-slim is ---------------------------------
# Same packages as the official image (minbase) and the same dpkg excludes (no docs, man pages or locales), so the
# Dockerfile's apt-get steps behave as they do on debian:bookworm-slim.
base_tarball() {  # ARCH -> path of the cached image archive of the base (made once)
  local arch=$1 tar="$CACHE/base-$SUITE-$1.image.tar.zst" root="$CACHE/root-$1"
  if [ ! -s "$tar" ]; then
    say "debootstrap $SUITE $arch (minbase) into $root"
    rm -rf --one-file-system "$root"
    debootstrap --arch="$arch" --variant=minbase "$SUITE" "$root" "$MIRROR" >"$CACHE/debootstrap-$arch.log" 2>&1 \
      || { tail -20 "$CACHE/debootstrap-$arch.log" >&2; die "debootstrap $arch failed (log: $CACHE/debootstrap-$arch.log)"; }
    cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/overrides/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
CFG
    cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
    printf 'Acquire::Languages "none";\n' >"$root/etc/apt/apt.conf.d/docker-no-languages"
    printf 'deb %s %s main\ndeb %s %s-updates main\ndeb http://deb.debian.org/debian-security %s-security main\n' \
      "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" "$SUITE" >"$root/etc/apt/sources.list"
    find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
    rm -rf "$root"/usr/share/{man,info,groff,linda,lintian,locale}/* "$root"/var/lib/apt/lists/* \
      "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log "$root"/var/log/apt/*
    : >"$root/etc/resolv.conf"
    # An image archive as `docker save` writes it (docker import would label an arm64 root with this machine's
    # architecture, and BuildKit would then look for the base in a registry).
    local img="$CACHE/image-$arch" variant="" layer_sha config_sha
    [ "$arch" = arm64 ] && variant=',"variant":"v8"'
    rm -rf "$img" && mkdir -p "$img/layer"
    tar --numeric-owner --xattrs -C "$root" -c . >"$img/layer/layer.tar"
    layer_sha=$(sha256sum "$img/layer/layer.tar" | cut -d' ' -f1)
    printf '{"architecture":"%s"%s,"os":"linux","created":"%s","config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["bash"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"%s","created_by":"debootstrap --variant=minbase %s, slimmed as debian:%s-slim"}]}' \
      "$arch" "$variant" "$(date -u +%FT%TZ)" "$layer_sha" "$(date -u +%FT%TZ)" "$SUITE" "$SUITE" >"$img/config.json"
    config_sha=$(sha256sum "$img/config.json" | cut -d' ' -f1)
    mv "$img/config.json" "$img/$config_sha.json"
    printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer/layer.tar"]}]' "$config_sha" "$(base_image "$arch")" \
      >"$img/manifest.json"
    tar -C "$img" -c manifest.json "$config_sha.json" layer/layer.tar | zstd -q -T0 -o "$tar.tmp" && mv "$tar.tmp" "$tar"
    rm -rf --one-file-system "$root" "$img"
  fi
  echo "$tar"
}
base_image() { echo "helix-local/debian:$SUITE-slim-$1"; }

# ---- the Docker engine ------------------------------------------------------------------------------------------
# Debian's docker.io is Docker 20.10, whose CLI builds with BuildKit itself (DOCKER_BUILDKIT=1); a newer CLI
# (Docker >= 23) builds through the buildx plugin and falls back to the legacy builder without it, which does not
# set TARGETARCH. So: the CLI that can run BuildKit here, Debian's first.
pick_cli() {
  local c
  for c in ${DOCKER:-} /usr/bin/docker "$(command -v docker || true)"; do
    [ -x "$c" ] || continue
    if "$c" buildx version >/dev/null 2>&1; then DOCKER_CLI=$c; BUILD=(buildx build --load); return; fi
    case $("$c" version --format '{{.Client.Version}}' 2>/dev/null) in
      20.10.*|19.03.*) DOCKER_CLI=$c; BUILD=(build); export DOCKER_BUILDKIT=1; return ;;
    esac
  done
  die "no docker CLI that builds with BuildKit: Debian's docker.io (20.10) or a newer CLI with the buildx plugin"
}
DOCKERD_PID=""
STARTED_CONTAINERS=()
cleanup() {
  set +e
  for c in "${STARTED_CONTAINERS[@]}"; do d rm -f "$c" >/dev/null 2>&1; done
  if [ -n "$DOCKERD_PID" ]; then
    say "stopping the dockerd this script started (pid $DOCKERD_PID)"
    kill "$DOCKERD_PID" 2>/dev/null
    for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
  fi
}
trap cleanup EXIT
d() { "$DOCKER_CLI" "$@"; }
pick_cli
if [ -z "${DOCKER_HOST:-}" ] && ! d info >/dev/null 2>&1; then
  # Our own engine: a private socket, data root in the cache (layers and build cache survive between runs), no
  # docker0 bridge and no iptables rules, so nothing else on this machine sees a change in its network.
  export DOCKER_HOST="unix://$CACHE/docker.sock"
  if ! d info >/dev/null 2>&1; then
    say "starting dockerd ($(dockerd --version | cut -d, -f1)) on $DOCKER_HOST"
    dockerd --host "$DOCKER_HOST" --data-root "$CACHE/docker" --exec-root "$CACHE/exec" --pidfile "$CACHE/dockerd.pid" \
      --bridge=none --iptables=false --ip6tables=false --ip-masq=false --log-level=warn >"$CACHE/dockerd.log" 2>&1 9>&- &
    DOCKERD_PID=$!
    for _ in $(seq 120); do d info >/dev/null 2>&1 && break; kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    d info >/dev/null 2>&1 || { tail -20 "$CACHE/dockerd.log" >&2; die "dockerd did not start (log: $CACHE/dockerd.log)"; }
  fi
fi
ENGINE=$(d version --format '{{.Server.Version}}')
say "engine: Docker $ENGINE; CLI $DOCKER_CLI ($(d version --format '{{.Client.Version}}')): ${BUILD[*]}"

# ---- images -----------------------------------------------------------------------------------------------------
for arch in "$host_arch" "${arches[@]}"; do
  d image inspect "$(base_image "$arch")" >/dev/null 2>&1 && continue
  tar=$(base_tarball "$arch")
  say "loading the $arch base from $tar"
  zstd -dc "$tar" | d load >/dev/null
done
# Behind a TLS-inspecting proxy pip needs this machine's CA bundle; the build gets it as a secret (not in a layer).
ca=()
[ -s /etc/ssl/certs/ca-certificates.crt ] && ca=(--secret id=ca-certificates,src=/etc/ssl/certs/ca-certificates.crt)
build() {  # ARCH TARGET -> image helix-edge-TARGET:TAG-ARCH
  local arch=$1 target=$2 image="helix-edge-$2:$TAG-$1" t0
  t0=$(date +%s.%N)
  say "building $image (--platform linux/$arch --target $target)"
  d "${BUILD[@]}" --network=host --platform "linux/$arch" --target "$target" \
    --build-arg BASE="$(base_image "$arch")" --build-arg BUILD_BASE="$(base_image "$host_arch")" "${ca[@]}" \
    -t "$image" "$REPO" >"$CACHE/build-$target-$arch.log" 2>&1 \
    || { tail -30 "$CACHE/build-$target-$arch.log" >&2; die "build of $image failed (log: $CACHE/build-$target-$arch.log)"; }
  fig "build_s_${target}_$arch" "$(elapsed "$t0")"
  fig "image_mb_${target}_$arch" "$(d image inspect -f '{{.Size}}' "$image" | awk '{printf "%.1f", $1 / 1e6}')"
  [ "$(d image inspect -f '{{.Architecture}}' "$image")" = "$arch" ] || die "$image is not an $arch image"
}
for arch in "${arches[@]}"; do build "$arch" node; build "$arch" gateway; done

# ---- what runs around the images, on this host's loopback ---------------------------------------------------------
PY=$REPO/.venv/bin/python
[ -x "$PY" ] || die "no $PY: run scripts/setup.sh first (the OTLP sink and the app use the checkout's venv)"
command -v mosquitto >/dev/null && command -v nginx >/dev/null && command -v curl >/dev/null \
  || die "mosquitto, nginx and curl are needed (scripts/setup.sh installs them)"
WORK=$(mktemp -d /tmp/helix-container-smoke.XXXXXX)
HOST_PIDS=()
stop_host() {
  for p in "${HOST_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${HOST_PIDS[@]}"; do wait "$p" 2>/dev/null; done
  rm -rf "$WORK"
}
trap 'stop_host; cleanup' EXIT
free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {  # PORT SECONDS
  local end=$(( $(date +%s) + $2 ))
  until "$PY" -c "import socket, sys; socket.create_connection(('127.0.0.1', $1), 1)" 2>/dev/null; do
    [ "$(date +%s)" -lt $end ] || return 1; sleep 0.2
  done
}
MQTT=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$MQTT" >"$WORK/mosquitto.conf"
mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 9>&- & HOST_PIDS+=($!)
WEB=$(free_port)
mkdir -p "$WORK/www" && echo ok >"$WORK/www/index.html"
cat >"$WORK/nginx.conf" <<CONF
daemon off; worker_processes 1; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
events {}
http { access_log off; server { listen 127.0.0.1:$WEB; root $WORK/www; } }
CONF
nginx -c "$WORK/nginx.conf" -e "$WORK/nginx.err" >/dev/null 2>&1 9>&- & HOST_PIDS+=($!)
SINK=$(free_port)
(cd "$REPO" && exec "$PY" scripts/container_smoke_host.py sink "$SINK" "$WORK/sink.jsonl") >"$WORK/sink.log" 2>&1 &
HOST_PIDS+=($!)
wait_port "$MQTT" 20 && wait_port "$WEB" 20 && wait_port "$SINK" 60 || die "mosquitto, nginx or the OTLP sink did not start"
say "on loopback: mosquitto :$MQTT, nginx :$WEB, OTLP sink :$SINK"

# Every container uses the host's network: the agent's OTLP receivers are on loopback, as on a board.
run_gateway() {  # ARCH NAME
  local cfg="$WORK/gateway-$2.toml" http
  http=$(free_port)
  printf '[gateway]\nbroker = "mqtt://127.0.0.1:%s"\nhttp_listen = "127.0.0.1:%s"\nexport_protocol = "grpc"\nexport_endpoint = "http://127.0.0.1:%s"\n' \
    "$MQTT" "$http" "$SINK" >"$cfg"
  STARTED_CONTAINERS+=("$2")
  d run -d --name "$2" --platform "linux/$1" --network=host -v "$cfg:/etc/helix/gateway.toml:ro" \
    -e HELIX_HEALTH_URL="http://127.0.0.1:$http/healthz" --health-interval=2s --health-start-period=60s \
    "helix-edge-gateway:$TAG-$1" gateway --config /etc/helix/gateway.toml >/dev/null
}
agent_config() {  # NAME -> AGENT_CFG (a path), OTLP_HTTP and METRICS (its ports)
  OTLP_HTTP=$(free_port) METRICS=$(free_port)
  printf '[node]\nid = "%s"\n[sources.mqtt]\nbroker = "mqtt://127.0.0.1:%s"\n[sources.otlp]\ngrpc_listen = ""\nhttp_listen = "127.0.0.1:%s"\n[metrics]\nlisten = "127.0.0.1:%s"\n[uplink]\nbroker = "mqtt://127.0.0.1:%s"\n' \
    "$1" "$MQTT" "$OTLP_HTTP" "$METRICS" "$MQTT" >"$WORK/agent-$1.toml"
  AGENT_CFG="$WORK/agent-$1.toml"
}
health() {  # NAME SECONDS -> waits for the HEALTHCHECK to say healthy
  local end=$(( $(date +%s) + $2 )) s
  while :; do
    s=$(d inspect -f '{{.State.Health.Status}}' "$1" 2>/dev/null || echo gone)
    [ "$s" = healthy ] && return 0
    [ "$s" = gone ] || [ "$(date +%s)" -ge $end ] && { d logs "$1" 2>&1 | tail -20 >&2; return 1; }
    sleep 1
  done
}

# The capabilities docs/container.md gives for this engine: Docker 20.10 cannot grant CAP_BPF or CAP_PERFMON, and
# CAP_SYS_ADMIN stands in for both; CAP_SYS_ADMIN also for the TLS uprobes, which current kernels refuse to
# CAP_PERFMON; SETUID and SETGID let helix switch from root to its user; DAC_READ_SEARCH reads tracefs; SYS_RESOURCE
# (RLIMIT_MEMLOCK) only before 5.11, where the kernel charged BPF maps to it.
probe_flags() {
  local major=${ENGINE%%.*} kernel
  PROBE_FLAGS=(--user 0 --pid=host --cap-drop ALL --cap-add SETUID --cap-add SETGID --cap-add DAC_READ_SEARCH
    -v /sys/kernel/tracing:/sys/kernel/tracing:ro)
  if [ "$major" -ge 23 ] 2>/dev/null; then PROBE_FLAGS+=(--cap-add BPF --cap-add PERFMON --cap-add SYS_ADMIN); else PROBE_FLAGS+=(--cap-add SYS_ADMIN); fi
  kernel=$(uname -r | awk -F. '{print $1 * 100 + $2}')
  [ "$kernel" -ge 511 ] || PROBE_FLAGS+=(--cap-add SYS_RESOURCE)
}

# The compiled modules and the C head parser run in the node image, not the pure-Python fallback (edge/accel.py).
accel_check() {  # ARCH
  local out
  out=$(d run --rm --platform "linux/$1" --entrypoint python3 "helix-edge-node:$TAG-$1" -c \
    'from edge import accel; s, c = accel.status(), accel.c_status(); print(s.detail); print(c.detail); raise SystemExit(not (s.compiled and c.compiled))' 2>&1) \
    || die "the $1 node image runs the pure-Python modules: $out"
  echo "$out" | sed 's/^/    /' >&2
  fig "accel_compiled_node_$1" 1
}

if [[ " ${arches[*]} " == *" $host_arch "* ]]; then
  arch=$host_arch node="helix-edge-node:$TAG-$arch"
  say "native ($arch): helix doctor without capabilities names them and the flags"
  out=$(d run --rm --network=host "$node" doctor 2>&1) && die "doctor passed without capabilities: $out"
  echo "$out" | grep -q '✘ capabilities' && echo "$out" | grep -q -- '--cap-add' && echo "$out" | grep -q -- '--user 0' \
    || die "doctor did not name the missing capabilities and flags: $out"
  probe_flags
  say "native ($arch): helix doctor with ${PROBE_FLAGS[*]}"
  out=$(d run --rm --network=host "${PROBE_FLAGS[@]}" "$node" doctor 2>&1) || die "doctor failed with the documented flags: $out"
  echo "$out" | sed 's/^/    /' >&2
  echo "$out" | grep -q '✔ probes load and attach' || die "the probes did not attach"
  echo "$out" | grep -q 'user helix (uid 10001, switched from root)' || die "doctor did not run as user helix"
  # The image's wheel carries the accelerator compiled for the target (scripts/target-wheel.sh): doctor says it runs.
  echo "$out" | grep -q '✔ span builder: compiled (mypyc' || die "doctor does not report the compiled span builder"
  echo "$out" | grep -q 'C extensions: HTTP/1 whole-head parsing' || die "doctor does not report the C head parser"
  accel_check "$arch"

  run_gateway "$arch" "$RUN_ID-gateway-$arch"
  agent_config "smoke-$arch"
  volume="$RUN_ID-spool"
  t0=$(date +%s.%N)
  STARTED_CONTAINERS+=("$RUN_ID-node-$arch")
  d run -d --name "$RUN_ID-node-$arch" --network=host "${PROBE_FLAGS[@]}" -v "$AGENT_CFG:/etc/helix/agent.toml:ro" \
    -v "$volume:/var/lib/helix" -e HELIX_HEALTH_URL="http://127.0.0.1:$METRICS/metrics" --health-interval=2s \
    "$node" run --config /etc/helix/agent.toml >/dev/null
  wait_port "$OTLP_HTTP" 60 || { d logs "$RUN_ID-node-$arch" 2>&1 | tail -20 >&2; die "the agent's OTLP receiver did not open"; }
  fig "start_to_otlp_ready_s_$arch" "$(elapsed "$t0")"
  trace=$(cd "$REPO" && "$PY" scripts/container_smoke_host.py app "http://127.0.0.1:$OTLP_HTTP" "http://127.0.0.1:$WEB/") \
    || die "the instrumented app failed"
  say "native ($arch): trace $trace (SDK span, curl inside it); waiting for its SDK and kernel spans at the sink"
  "$PY" scripts/container_smoke_host.py wait "$WORK/sink.jsonl" "$trace" sdk-otlp,ebpf >&2 \
    || { d logs "$RUN_ID-node-$arch" 2>&1 | tail -30 >&2; die "the trace did not reach the sink whole"; }
  fig "start_to_sdk_and_kernel_span_s_$arch" "$(elapsed "$t0")"
  logs=$(d logs "$RUN_ID-node-$arch" 2>&1)
  echo "$logs" | grep -q 'running as user helix (uid 10001)' || die "the agent did not switch to user helix: $logs"
  echo "$logs" | grep -q 'kernel=running' || die "the agent's probes are not running: $logs"
  health "$RUN_ID-node-$arch" 60 || die "the node's HEALTHCHECK did not turn healthy"
  health "$RUN_ID-gateway-$arch" 60 || die "the gateway's HEALTHCHECK did not turn healthy"
  sleep "${IDLE_S:-20}"
  pid=$(d inspect -f '{{.State.Pid}}' "$RUN_ID-node-$arch")
  fig "idle_rss_mib_node_$arch" "$(awk '/^VmRSS/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status")"
  d stop -t 20 "$RUN_ID-node-$arch" >/dev/null
  [ "$(d inspect -f '{{.State.ExitCode}}' "$RUN_ID-node-$arch")" = 0 ] || die "the agent did not stop cleanly on SIGTERM"
  d run --rm --network=host -v "$volume:/var/lib/helix" --entrypoint python3 "$node" -c \
    'import os; assert os.path.isdir("/var/lib/helix/spool"), os.listdir("/var/lib/helix")' \
    || die "the spool is not in the volume"
  d rm -f "$RUN_ID-node-$arch" "$RUN_ID-gateway-$arch" >/dev/null
  d volume rm "$volume" >/dev/null
  say "native ($arch): OK — probes attached as user helix, SDK and kernel spans of one trace reached the sink"
fi

if [[ " ${arches[*]} " == *" arm64 "* ]] && [ "$host_arch" != arm64 ]; then
  arch=arm64 node="helix-edge-node:$TAG-arm64"
  machine=$(d run --rm --platform linux/arm64 --entrypoint python3 "$node" -c 'import platform; print(platform.machine())')
  [ "$machine" = aarch64 ] || die "the arm64 image runs as $machine"
  say "arm64 (emulated): helix doctor (qemu-user has no bpf(): the probes cannot load)"
  d run --rm --platform linux/arm64 --network=host "$node" doctor 2>&1 | sed 's/^/    /' >&2 || true
  accel_check arm64
  # What the compiled modules buy on aarch64: bench/span_builder.py in the image, compiled and pure in the same run
  # (under emulation only the ratio means something). HELIX_CONTAINER_BENCH=0 skips it.
  if [ "${HELIX_CONTAINER_BENCH:-1}" != 0 ]; then
    say "arm64 (emulated): bench/span_builder.py --exchanges 5000 --runs 3 in the node image"
    bench=$(d run --rm --platform linux/arm64 -v "$REPO/bench:/opt/bench:ro" --entrypoint python3 "$node" \
      /opt/bench/span_builder.py --exchanges 5000 --runs 3 2>&1 | tail -1)
    echo "    $bench" >&2
    ratio=$(echo "$bench" | "$PY" -c 'import json, sys; print(json.loads(sys.stdin.read())["speedup_vs_pure"])') \
      || die "bench/span_builder.py failed in the arm64 image: $bench"
    fig speedup_vs_pure_arm64_emulated "$ratio"
  fi
  run_gateway arm64 "$RUN_ID-gateway-arm64"
  agent_config smoke-arm64
  t0=$(date +%s.%N)
  STARTED_CONTAINERS+=("$RUN_ID-node-arm64")
  d run -d --name "$RUN_ID-node-arm64" --platform linux/arm64 --network=host -v "$AGENT_CFG:/etc/helix/agent.toml:ro" \
    "$node" run --config /etc/helix/agent.toml >/dev/null
  wait_port "$OTLP_HTTP" 180 || { d logs "$RUN_ID-node-arm64" 2>&1 | tail -20 >&2; die "the arm64 agent's OTLP receiver did not open"; }
  fig start_to_otlp_ready_s_arm64_emulated "$(elapsed "$t0")"
  trace=$(cd "$REPO" && "$PY" scripts/container_smoke_host.py app "http://127.0.0.1:$OTLP_HTTP") || die "the app failed"
  WAIT_S=180 "$PY" scripts/container_smoke_host.py wait "$WORK/sink.jsonl" "$trace" sdk-otlp >&2 \
    || { d logs "$RUN_ID-node-arm64" 2>&1 | tail -30 >&2; die "the SDK span did not reach the sink through the arm64 images"; }
  fig start_to_sdk_span_s_arm64_emulated "$(elapsed "$t0")"
  d logs "$RUN_ID-node-arm64" 2>&1 | grep -q 'running on SDK spans only' || die "the arm64 agent did not say it runs on SDK spans only"
  d rm -f "$RUN_ID-node-arm64" "$RUN_ID-gateway-arm64" >/dev/null
  say "arm64 (emulated): OK — SDK-only agent, an SDK span through the arm64 node and gateway images to the sink"
fi

if [ -n "$DOCKERD_PID" ]; then  # our engine: keep its cache bounded (the bases and the last images stay)
  d image prune -f >/dev/null 2>&1 || true
  d builder prune -f --keep-storage 3gb >/dev/null 2>&1 || true
fi
json=$(for k in "${!FIG[@]}"; do printf '"%s": %s\n' "$k" "${FIG[$k]}"; done | sort | paste -sd, -)
say "OK (${MODE}): Docker $ENGINE"
echo "{\"engine\": \"$ENGINE\", $json}"
