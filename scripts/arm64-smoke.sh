#!/usr/bin/env bash
# ARM64 smoke test without Docker: an arm64 Debian root made with debootstrap, run through qemu-user-static
# (binfmt_misc), the helix-edge wheel built from this checkout installed into it, and `helix demo` run there:
# Mosquitto, gateway, agent and OTLP peer as aarch64 processes, SDK spans (OTLP and CBOR over MQTT) end to end.
# The kernel probes cannot load under qemu-user (it does not emulate bpf()), so the agent runs degraded, as on a
# board without BTF. Needs root and network access to a Debian mirror and PyPI. Slow (minutes): not part of the
# default test run. See docs/arm64-smoke.md.
#
#   sudo scripts/arm64-smoke.sh                 # bootstrap (or reuse) the root, install, run the demo
#   ARM64_ROOT=/srv/arm64 DURATION=20 scripts/arm64-smoke.sh
#   ARM64_FRESH=1 scripts/arm64-smoke.sh         # throw the root away and bootstrap again
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

ROOT=${ARM64_ROOT:-/var/tmp/helix-arm64-root}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=${DEBIAN_SUITE:-bookworm}
DURATION=${DURATION:-10}
T0=$(date +%s)

say() { printf 'arm64-smoke [%4ds] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot and binfmt_misc need it)"

# ---- host tools -------------------------------------------------------------------------------------------
source scripts/host-lib.sh
apt_need qemu-user-static debootstrap binfmt-support gcc-aarch64-linux-gnu libc6-dev-arm64-cross  # the last two: scripts/target-wheel.sh

# ---- binfmt_misc: aarch64 ELF files run through qemu-aarch64-static --------------------------------------
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc (a container without it?)"
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "qemu-aarch64 is not registered in binfmt_misc (update-binfmts --enable qemu-aarch64)"
# The F flag makes the kernel open the interpreter at registration, so it need not exist inside the chroot.
grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64 \
  || say "warning: qemu-aarch64 is registered without the F flag; copying the interpreter into the root"

# ---- the arm64 root ---------------------------------------------------------------------------------------
if [ "${ARM64_FRESH:-0}" = 1 ] && [ -d "$ROOT" ]; then
  say "removing $ROOT"
  rm -rf --one-file-system "$ROOT"
fi
if [ ! -f "$ROOT/.helix-bootstrapped" ]; then
  say "debootstrap $SUITE arm64 into $ROOT (several minutes under emulation)"
  rm -rf --one-file-system "$ROOT"
  mkdir -p "$ROOT"
  debootstrap --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,mosquitto,ca-certificates,libbpf1 \
    "$SUITE" "$ROOT" "$MIRROR" > /var/tmp/helix-arm64-debootstrap.log 2>&1 \
    || { tail -20 /var/tmp/helix-arm64-debootstrap.log; die "debootstrap failed (log: /var/tmp/helix-arm64-debootstrap.log)"; }
  touch "$ROOT/.helix-bootstrapped"
else
  say "reusing the arm64 root in $ROOT (ARM64_FRESH=1 to rebuild)"
fi
if ! grep -q '^flags:.*F' /proc/sys/fs/binfmt_misc/qemu-aarch64; then
  cp /usr/bin/qemu-aarch64-static "$ROOT/usr/bin/"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
# Behind a TLS-inspecting proxy the host trusts extra CAs; the root must too, or pip cannot reach PyPI.
if compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
  mkdir -p "$ROOT/usr/local/share/ca-certificates"
  cp /usr/local/share/ca-certificates/*.crt "$ROOT/usr/local/share/ca-certificates/"
  local_ca=1
fi

mount_chroot "$ROOT"
proxy_env=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL; do
  [ -n "${!v:-}" ] && proxy_env+=("$v=${!v}")
done
in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/opt/helix/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_DEFAULT_TIMEOUT=180 "${proxy_env[@]}" "$@"
}
[ "${local_ca:-0}" = 1 ] && in_root update-ca-certificates >/dev/null 2>&1

# Roots bootstrapped by an older version of this script lack libbpf1 (the runtime image has it).
in_root dpkg-query -W libbpf1 >/dev/null 2>&1 || { in_root apt-get update -qq && in_root apt-get install -y -qq libbpf1 >/dev/null; }

arch=$(in_root uname -m)
[ "$arch" = aarch64 ] || die "the root does not run as aarch64 (uname -m says $arch)"
say "the root runs as $arch ($(in_root python3 --version))"

# ---- the wheel from this checkout -------------------------------------------------------------------------
# The BPF objects are bytecode (CO-RE, arch-neutral for the tracepoint programs), built here with clang if
# present, else the prebuilt ones are packaged.
say "building the wheel"
wheels=$(mktemp -d)
# The accelerator cross-compiled for aarch64, as in the images (scripts/target-wheel.sh).
sh scripts/target-wheel.sh arm64 "$wheels" python3 >"$wheels.log" 2>&1 || { tail -20 "$wheels.log"; die "wheel build failed"; }
wheel=$(ls "$wheels"/helix_edge-*.whl)
rm -rf "$ROOT/tmp/helix-wheel" && mkdir -p "$ROOT/tmp/helix-wheel"
cp "$wheel" "$ROOT/tmp/helix-wheel/"
rm -rf "$wheels"

say "installing $(basename "$wheel") and the demo extra into /opt/helix (aarch64 wheels from PyPI)"
in_root python3 -m venv /opt/helix
in_root /opt/helix/bin/pip install -q --disable-pip-version-check \
  "/tmp/helix-wheel/$(basename "$wheel")[demo]" || die "pip install in the arm64 root failed"
in_root /opt/helix/bin/python -c \
  'import platform, grpc, zstandard, cbor2, edge; print("python", platform.machine(), "edge", edge.__version__)'

# ---- the agent, degraded, with the SDK path end to end ----------------------------------------------------
say "helix doctor (the probes are expected not to load under qemu-user)"
in_root /opt/helix/bin/helix doctor 2>&1 | sed 's/^/    /' | head -20 || true
in_root /opt/helix/bin/python -c 'from edge import accel; s, c = accel.status(), accel.c_status(); print(s.detail); print(c.detail); raise SystemExit(not (s.compiled and c.compiled))' \
  | sed 's/^/    /' || die "the compiled modules or the C head parser do not run on aarch64"
say "helix demo --duration $DURATION"
rm -f "$ROOT/tmp/helix-demo.jsonl"
set +e
in_root /opt/helix/bin/helix demo --duration "$DURATION" --out /tmp/helix-demo.jsonl > /var/tmp/helix-arm64-demo.log 2>&1
rc=$?
set -e
sed 's/^/    /' /var/tmp/helix-arm64-demo.log | head -60
[ $rc = 0 ] || die "helix demo exited $rc (no trace arrived?)"
lines=$(wc -l < "$ROOT/tmp/helix-demo.jsonl")
grep -q 'sensor-gw-7' "$ROOT/tmp/helix-demo.jsonl" || die "no device span (CBOR over MQTT) reached the OTLP peer"
grep -q 'order-service' "$ROOT/tmp/helix-demo.jsonl" || die "no OTLP SDK span reached the OTLP peer"
say "OK: $lines OTLP requests at the peer, with device (MQTT SDK) and OpenTelemetry SDK spans, on aarch64"
