#!/usr/bin/env bash
# Sets up Helix Edge on a Debian machine: system packages, a virtualenv in .venv with the package and its
# test tools, and the BPF objects (built by the package build). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  mosquitto mosquitto-clients          # MQTT broker and clients (demo, tests)
  clang llvm libbpf-dev bpftool make   # building the CO-RE BPF objects
  libbpf1                              # the libbpf.so.1 the agent loads at run time
  nginx-light curl                     # real third-party traffic in the probe tests
  python3 python3-venv python3-dev     # the agent's runtime
  zstd iproute2 ca-certificates
  gcc libmosquitto-dev libclang-rt-14-dev        # C device SDK: examples, sanitizer and libFuzzer builds
  gcc-arm-none-eabi libnewlib-arm-none-eabi      # C device SDK: the Cortex-M4 build and its size
  gcc-aarch64-linux-gnu libc6-dev-arm64-cross    # the agent's C head parser compiled for the devices' arch
)

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root for '$*' (run as root or install sudo)" >&2; exit 1; fi
}

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "setup: installing helix-edge (editable) with its test extra"
.venv/bin/python -m pip install -q -e '.[test]'

# MicroPython's WebAssembly port, to run the MicroPython device SDK in its tests (Node.js runs it).
MICROPYTHON_NPM=@micropython/micropython-webassembly-pyscript@1.27.0
if [ -f .cache/npm/node_modules/@micropython/micropython-webassembly-pyscript/micropython.mjs ]; then :
elif command -v npm >/dev/null; then
  echo "setup: installing $MICROPYTHON_NPM into .cache/npm"
  npm install --prefix .cache/npm --no-save --no-audit --no-fund --silent "$MICROPYTHON_NPM" >/dev/null
else
  echo "setup: npm not found: the MicroPython SDK tests will be skipped (install Node.js to run them)"
fi
# The official gRPC for Node.js, a gRPC-over-TLS peer whose TLS the probes read (tests/bpf/test_grpc_spans.py).
GRPC_JS_NPM=@grpc/grpc-js@1.14.7
if grep -qs '"version": "1.14.7"' .cache/grpc-js/node_modules/@grpc/grpc-js/package.json; then :
elif command -v npm >/dev/null; then
  echo "setup: installing $GRPC_JS_NPM into .cache/grpc-js"
  npm install --prefix .cache/grpc-js --no-save --no-audit --no-fund --silent "$GRPC_JS_NPM" >/dev/null
else
  echo "setup: npm not found: the gRPC-over-TLS kernel tests will fail (install Node.js and npm)"
fi
echo "setup: done. Try: .venv/bin/helix --help"
