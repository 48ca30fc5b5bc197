# Sourced by the scripts that run package scripts in a Debian root (arm64-smoke.sh, device-image.sh):
# mount_chroot ROOT mounts proc, sys, dev and dev/pts inside it; unmount_all undoes every mount made (also at exit).
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
