#!/usr/bin/env bash
# Boots the device images of scripts/device-image.sh on each kernel of the matrix and checks the agent there: the
# systemd unit (Type=notify, watchdog, capabilities instead of root), `helix doctor`, kernel spans of a curl -> nginx
# request and an MQTT v5 publish with a traceparent reaching a gateway and OTLP peer on the host, and the spool across
# SIGKILL of the agent. One VM at a time: KVM for amd64, emulation (qemu-system-aarch64, TCG) for arm64.
# See docs/portability.md.
#
#   sudo scripts/kernel-matrix.sh                        # every kernel of both images (arm64 emulated: slow)
#   sudo scripts/kernel-matrix.sh --arch amd64 --kernel 5.10 --kernel 6.1
#   sudo scripts/kernel-matrix.sh --arch arm64 --kernel 6.1 --keep
#
# Builds an image first when HELIX_IMAGE_DIR/<arch>/rootfs.img is missing or HELIX_IMAGE_REBUILD=1 (with the wheel
# of this checkout). Prints one table row per boot and exits non-zero if any boot failed a check. Each run's
# findings: HELIX_IMAGE_DIR/results/<arch>-<kernel>.json; a failed run keeps its console log and gateway log.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGES=${HELIX_IMAGE_DIR:-/var/tmp/helix-device-images}
export HELIX_IMAGE_DIR=$IMAGES

say() { printf 'kernel-matrix: %s\n' "$*"; }
die() { say "FAILED: $*"; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (it builds images with debootstrap and uses /dev/kvm)"
# One matrix run at a time on a machine: one VM at a time, and no image rebuilt under a running VM.
mkdir -p "$IMAGES"
exec 9>"$IMAGES/.matrix.lock"
flock -n 9 || { say "another kernel-matrix run holds $IMAGES/.matrix.lock; waiting"; flock 9; }

archs=()
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[$i]} in
    --arch) archs+=("${args[$((i + 1))]:-}") ;;
    --arch=*) archs+=("${args[$i]#--arch=}") ;;
    -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exec .venv/bin/python scripts/kernel_matrix.py --images "$IMAGES" --help ;;
  esac
done
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64)

need=()
for a in "${archs[@]}"; do
  case $a in
    amd64) need+=(qemu-system-x86) ;;
    arm64) need+=(qemu-system-arm) ;;
  esac
done
need+=(qemu-utils socat)
source scripts/host-lib.sh
apt_need "${need[@]}"
[ -x .venv/bin/python ] || die "no .venv: run scripts/setup.sh first"

for a in "${archs[@]}"; do
  if [ "${HELIX_IMAGE_REBUILD:-0}" = 1 ] || [ ! -f "$IMAGES/$a/rootfs.img" ]; then
    t=$(date +%s)
    scripts/device-image.sh "$a"
    say "image $a built in $(( $(date +%s) - t ))s"
  fi
done
exec .venv/bin/python scripts/kernel_matrix.py --images "$IMAGES" "$@"
