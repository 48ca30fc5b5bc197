#!/bin/sh
# Builds helix-edge's wheel for a target architecture, with the compiled accelerator (setup.py: the mypyc modules
# and the C head parser) built for that architecture, and checks that it is in the wheel (docs/container.md).
#   target-wheel.sh ARCH OUT_DIR [PYTHON]     ARCH: amd64 | arm64 (Debian's names); PYTHON: a CPython 3.11
# Same architecture as this machine: setup.py's build as it is. Another one: the same build, cross-compiled with
# Debian's cross gcc (gcc-aarch64-linux-gnu / gcc-x86-64-linux-gnu) against the target's CPython 3.11 headers,
# taken from Debian's libpython3.11-dev of that architecture (apt-get download with a private package list, so
# this machine's dpkg architectures stay as they are). mypyc's C output and the C99 parser are portable C, and
# both architectures are LP64 glibc: only the compiler, the headers, the file suffix and the wheel tag change.
# HELIX_ACCEL_BUILD=0 builds the pure-Python wheel, as setup.py does.
set -eu
arch=$1 out=$2 py=${3:-python3}
repo=$(cd "$(dirname "$0")/.." && pwd)
case $arch in
  amd64) triplet=x86_64-linux-gnu machine=x86_64 elf_machine=62 ;;
  arm64) triplet=aarch64-linux-gnu machine=aarch64 elf_machine=183 ;;
  *) echo "target-wheel.sh: unsupported ARCH $arch (amd64 or arm64)" >&2; exit 1 ;;
esac
build_arch=$(dpkg --print-architecture)
if [ "${HELIX_ACCEL_BUILD:-1}" != 0 ] && [ "$arch" != "$build_arch" ]; then
  command -v "$triplet-gcc" >/dev/null || { echo "target-wheel.sh: no $triplet-gcc (apt install gcc-$(echo "$triplet" | sed 's/_/-/g') libc6-dev-$arch-cross)" >&2; exit 1; }
  cache=${HELIX_CROSS_CACHE:-/var/tmp/helix-cross}/$arch
  if [ ! -f "$cache/usr/include/$triplet/python3.11/pyconfig.h" ]; then
    echo "target-wheel.sh: fetching Debian's libpython3.11-dev:$arch (the target's CPython headers) into $cache" >&2
    apt_private="-o APT::Architectures::=$arch -o APT::Architecture=$arch -o Dir::State::Lists=$cache.apt/lists
      -o Dir::Cache=$cache.apt/cache -o Dir::State::status=/dev/null -o Debug::NoDropPrivs=1 -o APT::Sandbox::User=root"
    mkdir -p "$cache.apt/lists/partial" "$cache.apt/cache/archives/partial" "$cache"
    # shellcheck disable=SC2086
    apt-get -qq $apt_private update
    # shellcheck disable=SC2086
    (cd "$cache.apt" && rm -f ./*.deb && apt-get -qq $apt_private download "libpython3.11-dev:$arch")
    dpkg-deb --fsys-tarfile "$cache.apt"/libpython3.11-dev_*_"$arch".deb | tar -x -C "$cache" ./usr/include
    rm -rf "$cache.apt"
  fi
  # distutils takes CC, LDSHARED and CPPFLAGS from the environment; the target's headers come first (their
  # pyconfig.h picks the target's by the compiler's own defines). setuptools names the modules with
  # SETUPTOOLS_EXT_SUFFIX; bdist_wheel's --plat-name gives the wheel its platform tag (not _PYTHON_HOST_PLATFORM:
  # pip would then install the build requirements, mypy among them, for the target).
  export CC="$triplet-gcc" LDSHARED="$triplet-gcc -shared" \
    CPPFLAGS="-I$cache/usr/include/python3.11 -I$cache/usr/include" SETUPTOOLS_EXT_SUFFIX=".cpython-311-$triplet.so"
  set -- "--config-settings=--build-option=--plat-name=linux_$machine"  # pip >= 22.1 (bookworm: 23.0)
else
  set --
fi
mkdir -p "$out"
rm -f "$out"/helix_edge-*.whl
# Built from a clean copy: the checkout's own build (build/, the editable install's modules and manifest beside the
# sources) belongs to this machine's Python and must neither leak into the wheel nor be overwritten.
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
tar -C "$repo" --exclude=./.git --exclude=./.venv --exclude=./.cache --exclude=./build --exclude='*.so' \
  --exclude=./edge/accel_manifest.json --exclude='__pycache__' -c . | tar -x -C "$src"
"$py" -m pip wheel --no-deps -v -w "$out" "$@" "$src" >"$out/build.log" 2>&1 || { tail -30 "$out/build.log" >&2; exit 1; }
grep "^ *helix-edge:" "$out/build.log" >&2 || true
wheel=$(ls "$out"/helix_edge-*.whl)
# setup.py falls back to pure Python on any build failure; an image must not ship that silently.
"$py" - "$wheel" "$elf_machine" "$triplet" "${HELIX_ACCEL_BUILD:-1}" "$out/build.log" <<'PY'
import json, re, struct, sys, zipfile
wheel, elf_machine, triplet, accel = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] != "0"
z = zipfile.ZipFile(wheel)
names = z.namelist()
if not any(n.endswith("/io_compat.bpf.o") for n in names):
    sys.exit(f"target-wheel.sh: {wheel} has no BPF objects (clang missing on this machine?)")
sos = [n for n in names if n.endswith(".so")]
if not accel:
    sys.exit(f"target-wheel.sh: HELIX_ACCEL_BUILD=0 but {wheel} has compiled modules: {sos}" if sos else 0)
if "edge/accel_manifest.json" not in names:
    # The compiler's own words: setup.py's fallback keeps only the failed command.
    errors = [l.strip() for l in open(sys.argv[5], errors="replace") if "error" in l.lower()][:8]
    sys.exit(f"target-wheel.sh: the accelerator did not build (no manifest in {wheel}):\n  " + "\n  ".join(errors))
manifest = json.loads(z.read("edge/accel_manifest.json"))
# Every hand-written C extension edge/accel.py names (C_EXTENSIONS' sources) must have compiled.
wanted = set(re.findall(r'"([\w/]+\.c)"', z.read("edge/accel.py").decode()))
missing = wanted - set(manifest.get("c_sources", {}))
if not wanted or missing:
    sys.exit(f"target-wheel.sh: C extensions did not build ({sorted(missing) or 'none named'}) in {wheel}")
for n in sos:
    head = z.read(n)[:20]
    if head[:4] != b"\x7fELF" or struct.unpack_from("<H", head, 18)[0] != elf_machine or f"-{triplet}.so" not in n:
        sys.exit(f"target-wheel.sh: {n} in {wheel} is not built for {triplet}")
print(f"target-wheel.sh: {wheel.rsplit('/', 1)[-1]}: {len(sos)} compiled modules for {triplet}", file=sys.stderr)
PY
