#!/bin/sh
# Used by the Dockerfile's build stage: lays out /opt/helix for the image — a virtualenv over the image's
# /usr/bin/python3.11 whose site-packages hold REQUIREMENT and its dependencies as CPython 3.11 manylinux wheels
# for ARCH (Docker's TARGETARCH), installed by the build machine's pip without running anything of the target.
#   container-site.sh ARCH REQUIREMENT OUT
set -eu
arch=$1 req=$2 out=$3
case $arch in
  amd64) machine=x86_64 ;;
  arm64) machine=aarch64 ;;
  *) echo "container-site.sh: no wheels for TARGETARCH=$arch (amd64 or arm64)" >&2; exit 1 ;;
esac
# bookworm has glibc 2.36: every manylinux tag up to that one fits.
# linux_ARCH: helix-edge's own wheel (scripts/target-wheel.sh builds it here, for ARCH).
platforms="--platform linux_$machine --platform manylinux2014_$machine"
v=17
while [ $v -le 36 ]; do platforms="$platforms --platform manylinux_2_${v}_$machine"; v=$((v + 1)); done
site=$out/lib/python3.11/site-packages
# shellcheck disable=SC2086
/build/venv/bin/pip install --quiet --no-compile --no-warn-script-location --target "$site" $platforms \
  --implementation cp --python-version 3.11 --abi cp311 --only-binary=:all: "$req"
# Wheels ship their extensions with symbols (zstandard's two backends: 22 MB on aarch64, 2 MB stripped).
find "$site" -name '*.so' -exec llvm-strip --strip-unneeded {} +
# Byte-code compiled here (same CPython 3.11), checked by hash rather than by file time, so that the agent, which
# cannot write to /opt, never compiles at start.
/build/venv/bin/python -m compileall -q -j 0 --invalidation-mode unchecked-hash "$site" >/dev/null
mkdir -p "$out/bin"
ln -s /usr/bin/python3.11 "$out/bin/python3"
ln -s python3 "$out/bin/python"
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.11\n' >"$out/pyvenv.cfg"
# pip wrote the console scripts with the build machine's interpreter: point them at the image's.
for script in "$site"/bin/*; do
  sed '1s|^#!.*|#!/opt/helix/bin/python3|' "$script" >"$out/bin/$(basename "$script")"
  chmod 0755 "$out/bin/$(basename "$script")"
done
rm -rf "$site/bin"
