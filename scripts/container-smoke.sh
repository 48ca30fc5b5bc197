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
case $MODE in native|arm64|all) ;; *) die "usage: $0 [native|arm64|all]" ;; esac
[ "$(id -u)" = 0 ] || die "run as root (debootstrap, dockerd and the kernel probes need it)"
mkdir -p "$CACHE"

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
base_tarball() {  # ARCH -> path of a cached root file system tarball (made once)
  local arch=$1 tar="$CACHE/base-$SUITE-$1.tar.zst" root="$CACHE/root-$1"
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
    tar --numeric-owner --xattrs -C "$root" -c . | zstd -q -T0 -o "$tar.tmp" && mv "$tar.tmp" "$tar"
    rm -rf --one-file-system "$root"
  fi
  echo "$tar"
}

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
      --bridge=none --iptables=false --ip6tables=false --ip-masq=false --log-level=warn >"$CACHE/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    for _ in $(seq 120); do d info >/dev/null 2>&1 && break; kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
    d info >/dev/null 2>&1 || { tail -20 "$CACHE/dockerd.log" >&2; die "dockerd did not start (log: $CACHE/dockerd.log)"; }
  fi
fi
ENGINE=$(d version --format '{{.Server.Version}}')
say "engine: Docker $ENGINE; CLI $DOCKER_CLI ($(d version --format '{{.Client.Version}}')): ${BUILD[*]}"
