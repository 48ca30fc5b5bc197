# Sourced by the scripts that build Debian roots and boot them (arm64-smoke.sh, device-image.sh, kernel-matrix.sh).
#
# apt_need PACKAGE...: installs the Debian packages not yet installed (one apt-get run, only when needed).
# mount_chroot ROOT: mounts proc, sys, dev and dev/pts inside ROOT; unmount_all undoes every mount made (also at exit).
apt_need() {
  local p missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -gt 0 ] || return 0
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

mounted=()
unmount_all() {
  for ((i=${#mounted[@]}-1; i>=0; i--)); do umount -l "${mounted[$i]}" 2>/dev/null || true; done
  mounted=()
}
trap unmount_all EXIT
mount_chroot() {
  local r=$1 fs
  for fs in proc sys dev dev/pts; do
    mountpoint -q "$r/$fs" && continue
    case $fs in
      proc) mount -t proc proc "$r/proc" ;;
      sys) mount -t sysfs sysfs "$r/sys" ;;
      dev) mount --bind /dev "$r/dev" ;;
      dev/pts) mount --bind /dev/pts "$r/dev/pts" ;;
    esac
    mounted+=("$r/$fs")
  done
}
