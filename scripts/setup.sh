#!/usr/bin/env bash
# Installs what patchsweep needs from Debian's packages (only what is missing), then configures and builds it.
# Usage: scripts/setup.sh [BUILD_DIR] [extra meson options...]   (default build dir: build)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
shift || true

# libopenblas-dev: cblas.h and OpenBLAS, libblis4-serial: BLIS; both loaded at run time (src/backends/blas.c).
pkgs=(build-essential meson ninja-build pkg-config libcjson-dev libhdf5-dev libopenblas-dev libpcre2-dev
      libssl-dev libblis4-serial python3 python3-h5py python3-matplotlib python3-numpy clang libclang-rt-14-dev
      slurm-wlm munge graphviz)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# nvcc is often installed outside PATH; the CUDA backend is built when it is found (meson option cuda=auto).
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

# meson's own output goes to a log, shown only when it fails (buildtype defaults to release in meson.build).
log="$build.log"
mkdir -p "$(dirname "$log")"
if [ -f "$build/build.ninja" ]; then
    meson configure "$build" "$@" >"$log" 2>&1 || { cat "$log"; exit 1; }
else
    meson setup "$build" "$@" >"$log" 2>&1 || { cat "$log"; exit 1; }
fi
ninja -C "$build" >>"$log" 2>&1 || { tail -50 "$log"; exit 1; }
echo "setup: built $build/patchsweep"
