#!/usr/bin/env bash
# Builds a Helix Edge device image for ARCH (arm64 or amd64) from Debian packages, the way a device team would:
# a Debian bookworm root (systemd, Python 3.11, libbpf1, mosquitto and nginx as the node's local workload), the
# helix-edge wheel built from this checkout in /opt/helix with its dependencies as wheels for ARCH, the systemd unit,
# a profile and the sysctl drop-in from firmware-configs/, and every kernel of the test matrix installed side by side,
# each kernel's config checked against firmware-configs/kernel/helix.config. See docs/portability.md.
#
#   sudo scripts/device-image.sh amd64      # bookworm 6.1, bookworm-backports (newer), bullseye 5.10 kernels
#   sudo scripts/device-image.sh arm64      # bookworm 6.1, bookworm-backports kernels (debootstrap under qemu-user)
#   HELIX_IMAGE_FRESH=1 scripts/device-image.sh amd64    # throw the cached root away and bootstrap again
#
# Output in $HELIX_IMAGE_DIR/ARCH (default /var/tmp/helix-device-images/ARCH, outside the repository):
#   rootfs.img      ext4 file system image of the root (boot it with a kernel below, root=/dev/vda)
#   boot/           vmlinuz-*, initrd.img-*, config-* of every installed kernel (direct kernel boot)
#   kernels.txt     one line per kernel: release, Debian suite
#   kconfig-check.txt  the fragment's options each kernel has, lacks or sets otherwise
# The Debian bootstrap is cached (root.base/); the Helix install and the image are redone on every run.
#
# The userland is bookworm for every kernel: the agent needs Python >= 3.11, which bullseye does not ship, and a
# gateway still on a 5.10 vendor kernel with a current userland is the case this checks (BPF is the kernel's part).
#
# The image carries a matrix self-test (helix-matrix.service) that runs only when the kernel command line has
# helix.matrix=1 (scripts/kernel-matrix.sh boots it so); a device booted normally never starts it.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

ARCH=${1:-}
case "$ARCH" in
  arm64) DEB_ARCH=arm64; QEMU_ARCH=aarch64; PROFILE=${HELIX_PROFILE:-arm64-1gb} ;;
  amd64) DEB_ARCH=amd64; QEMU_ARCH=x86_64; PROFILE=${HELIX_PROFILE:-x86-ipc} ;;
  -h|--help|"") sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; [ -n "$ARCH" ]; exit $? ;;
  *) echo "device-image: ARCH must be arm64 or amd64, got '$ARCH'" >&2; exit 2 ;;
esac
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
OUT=${HELIX_IMAGE_DIR:-/var/tmp/helix-device-images}/$ARCH
BASE=$OUT/root.base
ROOT=$OUT/root
# Where the node reaches the central uplink: scripts/kernel-matrix.sh forwards these guest addresses (qemu user
# networking) to the broker and gateway it runs on the host's loopback. A real site sets its own.
UPLINK_BROKER=${HELIX_UPLINK_BROKER:-mqtt://10.0.2.100:1883}
UPLINK_URL=${HELIX_UPLINK_URL:-http://10.0.2.100:4380/v1/batches}
T0=$(date +%s)

say() { printf 'device-image %s [%4ds] %s\n' "$ARCH" "$(( $(date +%s) - T0 ))" "$*"; }
die() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (debootstrap and chroot need it)"
mkdir -p "$OUT"
exec 8>"$OUT.lock"
flock -n 8 || { say "another build of the $ARCH image holds $OUT.lock; waiting"; flock 8; }
[ -f "firmware-configs/profiles/$PROFILE.toml" ] || die "no profile firmware-configs/profiles/$PROFILE.toml"

# ---- host tools -------------------------------------------------------------------------------------------
source scripts/host-lib.sh
host_tools=(debootstrap e2fsprogs)
# gcc and the headers build the accelerator natively; for another architecture its cross gcc (scripts/target-wheel.sh).
host_tools+=(gcc libpython3.11-dev)
[ "$(uname -m)" = "$QEMU_ARCH" ] || host_tools+=(qemu-user-static binfmt-support "gcc-${QEMU_ARCH//_/-}-linux-gnu"
  "libc6-dev-$DEB_ARCH-cross")
apt_need "${host_tools[@]}"
if [ "$(uname -m)" != "$QEMU_ARCH" ]; then
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$QEMU_ARCH" ] || update-binfmts --enable "qemu-$QEMU_ARCH" >/dev/null 2>&1 || true
  [ -e "/proc/sys/fs/binfmt_misc/qemu-$QEMU_ARCH" ] || die "qemu-$QEMU_ARCH is not registered in binfmt_misc"
fi

in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
    DEBIAN_FRONTEND=noninteractive "$@"
}

# ---- 1. the Debian root with every kernel (cached) --------------------------------------------------------
if [ "${HELIX_IMAGE_FRESH:-0}" = 1 ]; then rm -rf --one-file-system "$BASE"; fi
if [ ! -f "$BASE/.helix-base-done" ]; then
  rm -rf --one-file-system "$BASE" && mkdir -p "$BASE"
  say "debootstrap bookworm $DEB_ARCH (minutes; more under qemu-user for a foreign architecture)"
  debootstrap --arch="$DEB_ARCH" --variant=minbase \
    --include=systemd,systemd-sysv,udev,dbus,kmod,initramfs-tools,iproute2,procps,ca-certificates,python3,python3-venv,libbpf1,mosquitto,mosquitto-clients,nginx-light,curl,less \
    bookworm "$BASE" "$MIRROR" > "$OUT.debootstrap.log" 2>&1 \
    || { tail -20 "$OUT.debootstrap.log"; die "debootstrap failed (log: $OUT.debootstrap.log)"; }
  ROOT=$BASE
  mount_chroot "$ROOT"
  # Services must not start inside the build chroot.
  printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d" && chmod +x "$ROOT/usr/sbin/policy-rc.d"
  cat > "$ROOT/etc/apt/sources.list" <<EOF
deb $MIRROR bookworm main
deb $MIRROR bookworm-updates main
deb $SECURITY_MIRROR bookworm-security main
deb $MIRROR bookworm-backports main
EOF
  # A kernel from the previous release for the 5.10 column of the matrix; apt takes nothing else from it.
  if [ "$ARCH" = amd64 ]; then
    echo "deb $MIRROR bullseye main" >> "$ROOT/etc/apt/sources.list"
    echo "deb $SECURITY_MIRROR bullseye-security main" >> "$ROOT/etc/apt/sources.list"
    printf 'Package: *\nPin: release n=bullseye\nPin-Priority: 100\n\nPackage: *\nPin: release n=bullseye-security\nPin-Priority: 100\n' \
      > "$ROOT/etc/apt/preferences.d/bullseye"
  fi
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
  in_root apt-get update -qq
  say "installing the bookworm kernel (linux-image-$DEB_ARCH)"
  in_root apt-get install -y -qq --no-install-recommends "linux-image-$DEB_ARCH" > "$OUT.kernels.log" 2>&1 \
    || { tail -20 "$OUT.kernels.log"; die "kernel install failed"; }
  say "installing the bookworm-backports kernel"
  in_root apt-get install -y -qq --no-install-recommends -t bookworm-backports "linux-image-$DEB_ARCH" >> "$OUT.kernels.log" 2>&1 \
    || { tail -20 "$OUT.kernels.log"; die "backports kernel install failed"; }
  if [ "$ARCH" = amd64 ]; then
    bullseye_kernel=$(in_root apt-cache search --names-only '^linux-image-5\.10\.0-[0-9]+-amd64$' | cut -d' ' -f1 | sort -V | tail -1)
    [ -n "$bullseye_kernel" ] || die "no bullseye 5.10 kernel found"
    say "installing the bullseye kernel ($bullseye_kernel)"
    in_root apt-get install -y -qq --no-install-recommends "$bullseye_kernel" >> "$OUT.kernels.log" 2>&1 \
      || { tail -20 "$OUT.kernels.log"; die "bullseye kernel install failed"; }
  fi
  in_root apt-get clean
  unmount_all
  touch "$BASE/.helix-base-done"
else
  say "reusing the Debian root in $BASE (HELIX_IMAGE_FRESH=1 to bootstrap again)"
fi

# ---- 2. a fresh copy with Helix installed ------------------------------------------------------------------
ROOT=$OUT/root
rm -rf --one-file-system "$ROOT"
cp -a "$BASE" "$ROOT"
mount_chroot "$ROOT"

say "building the helix-edge wheel and its $DEB_ARCH dependencies (the versions this checkout is tested with)"
WHEELS=$OUT/wheels
rm -rf "$WHEELS" && mkdir -p "$WHEELS"
PY=$REPO/.venv/bin/python
[ -x "$PY" ] || PY=python3
# With the accelerator compiled for DEB_ARCH (natively, or cross-compiled for arm64), as the container images have
# it; scripts/target-wheel.sh fails if it did not compile or the wheel lacks the BPF objects.
sh scripts/target-wheel.sh "$DEB_ARCH" "$WHEELS" "$PY" > "$OUT.wheel.log" 2>&1 || { tail -20 "$OUT.wheel.log"; die "wheel build failed"; }
wheel=$(ls "$WHEELS"/helix_edge-*.whl)
"$PY" -m pip freeze --exclude-editable 2>/dev/null | grep -v '^-e ' > "$OUT/constraints.txt" || true
platforms=()
for tag in manylinux2014 manylinux_2_17 manylinux_2_28 manylinux_2_34; do platforms+=(--platform "${tag}_$QEMU_ARCH"); done
"$PY" -m pip download -q -d "$WHEELS" --only-binary=:all: --python-version 3.11 --implementation cp \
  "${platforms[@]}" --platform "linux_$QEMU_ARCH" --platform any -c "$OUT/constraints.txt" "$wheel" >> "$OUT.wheel.log" 2>&1 \
  || { tail -20 "$OUT.wheel.log"; die "cannot download $DEB_ARCH wheels for the dependencies"; }

say "installing $(basename "$wheel") into /opt/helix (offline, from the wheels)"
rm -rf "$ROOT/tmp/wheels" && cp -a "$WHEELS" "$ROOT/tmp/wheels"
in_root python3 -m venv /opt/helix
in_root /opt/helix/bin/pip install -q --no-index --find-links /tmp/wheels "/tmp/wheels/$(basename "$wheel")" \
  > "$OUT.pip.log" 2>&1 || { tail -20 "$OUT.pip.log"; die "pip install in the $DEB_ARCH root failed"; }
rm -rf "$ROOT/tmp/wheels"
in_root /opt/helix/bin/helix --version >/dev/null 2>&1 || in_root /opt/helix/bin/helix --help >/dev/null \
  || die "helix does not run in the $DEB_ARCH root"
# The compiled modules and the C head parser load there: the image must not fall back to pure Python unnoticed.
in_root /opt/helix/bin/python -c 'from edge import accel; s, c = accel.status(), accel.c_status(); print(s.detail); print(c.detail); raise SystemExit(not (s.compiled and c.compiled))' \
  || die "the compiled modules or the C head parser do not run in the $DEB_ARCH root"

say "the agent: user helix, firmware-configs/systemd/helix-agent.service and sysctl/60-helix.conf, profile $PROFILE"
in_root useradd --system --home-dir /var/lib/helix --no-create-home --shell /usr/sbin/nologin helix 2>/dev/null || true
install -m 0644 firmware-configs/systemd/helix-agent.service "$ROOT/etc/systemd/system/helix-agent.service"
# Debian's perf_event_paranoid default (3) admits only CAP_SYS_ADMIN to the syscall tracepoints.
install -m 0644 firmware-configs/sysctl/60-helix.conf "$ROOT/etc/sysctl.d/60-helix.conf"
mkdir -p "$ROOT/etc/helix"
# The profile as shipped, with the site's uplink endpoints (the only keys a site must set).
sed -e "s#^broker = \"mqtts\?://[^\"]*\"#broker = \"$UPLINK_BROKER\"#" \
    -e "s#^url = \"https\?://[^\"]*\"#url = \"$UPLINK_URL\"#" \
    "firmware-configs/profiles/$PROFILE.toml" > "$ROOT/etc/helix/agent.toml"
in_root /opt/helix/bin/helix check-config /etc/helix/agent.toml > /dev/null || die "the profile does not validate in the image"
in_root systemctl enable helix-agent.service mosquitto.service nginx.service systemd-networkd.service >/dev/null 2>&1 \
  || die "cannot enable the services"

say "system: hostname, fstab, DHCP on the first NIC, serial console"
echo "helix-$ARCH" > "$ROOT/etc/hostname"
echo "/dev/vda / ext4 rw,relatime 0 1" > "$ROOT/etc/fstab"
cat > "$ROOT/etc/systemd/network/50-wired.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=ipv4
EOF
in_root passwd -d root >/dev/null
rm -f "$ROOT/usr/sbin/policy-rc.d" "$ROOT/etc/resolv.conf"
: > "$ROOT/etc/machine-id"

say "matrix self-test (runs only with helix.matrix=1 on the kernel command line)"
install -m 0755 scripts/matrix-guest-check.sh "$ROOT/usr/local/sbin/helix-matrix-check"
cat > "$ROOT/etc/systemd/system/helix-matrix.service" <<'EOF'
[Unit]
Description=Helix Edge kernel-matrix self-test
ConditionKernelCommandLine=helix.matrix=1
After=helix-agent.service nginx.service mosquitto.service systemd-networkd-wait-online.service

[Service]
Type=oneshot
ExecStart=/usr/local/sbin/helix-matrix-check
StandardOutput=journal+console

[Install]
WantedBy=multi-user.target
EOF
in_root systemctl enable helix-matrix.service >/dev/null 2>&1 || die "cannot enable helix-matrix.service"

# ---- 3. kernels: the fragment's options checked, kernels and initrds handed out for direct boot ------------
say "checking each kernel's config against firmware-configs/kernel/helix.config"
rm -rf "$OUT/boot" && mkdir -p "$OUT/boot"
: > "$OUT/kernels.txt"
: > "$OUT/kconfig-check.txt"
bad=0
for cfg in "$ROOT"/boot/config-*; do
  rel=${cfg##*/config-}
  cp "$ROOT/boot/vmlinuz-$rel" "$ROOT/boot/initrd.img-$rel" "$cfg" "$OUT/boot/"
  suite=bookworm
  case $rel in 5.10.*) suite=bullseye ;; 6.1.*) suite=bookworm ;; *) suite=bookworm-backports ;; esac
  echo "$rel $suite" >> "$OUT/kernels.txt"
  if ! "$PY" scripts/kconfig-check.py firmware-configs/kernel/helix.config "$cfg" >> "$OUT/kconfig-check.txt"; then
    bad=1
  fi
done
sed 's/^/    /' "$OUT/kconfig-check.txt"
[ $bad = 0 ] || die "a kernel lacks options the probes need (see above)"

unmount_all
size_mb=$(( $(du -sm "$ROOT" | cut -f1) + 768 ))
say "writing rootfs.img (ext4, ${size_mb} MiB, sparse)"
rm -f "$OUT/rootfs.img"
mkfs.ext4 -q -L helix-root -d "$ROOT" "$OUT/rootfs.img" "${size_mb}M" || die "mkfs.ext4 -d failed"
rm -rf --one-file-system "$ROOT"
say "OK: $OUT/rootfs.img with kernels: $(cut -d' ' -f1 "$OUT/kernels.txt" | tr '\n' ' ')"
