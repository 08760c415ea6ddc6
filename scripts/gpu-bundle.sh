#!/usr/bin/env bash
# Prepares .gpu-bundle/ (ignored by git) with what a bare GPU machine needs to test and benchmark the CUDA
# backend: the CUDA build's programs built here, the shared libraries they load that a CUDA image lacks
# (xz-compressed: OpenBLAS alone is 35 MB), and wheels for the Python tools the benchmark needs that the
# image lacks. scripts/gpu-check.sh runs there from it. Fails if what would travel passes 64 MiB.
#
#   scripts/gpu-bundle.sh [BUILD_DIR]        (default build-gpu; a CUDA build is made there)
#
# Why prebuilt programs rather than headers and libraries to build there: the GPU machine has nvcc, meson
# and ninja but none of the Debian -dev packages; shipping their headers, pkg-config files and static or
# shared libraries is larger (HDF5 alone ~10 MB) and the build would spend device minutes (about 2 on 16
# cores). nvcc is 13.0 on both sides, so the fat binaries built here (sm_80..sm_90 + PTX) run there.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build-gpu}
out=.gpu-bundle
limit_mib=64

command -v nvcc >/dev/null || [ -x /usr/local/cuda/bin/nvcc ] || { echo "gpu-bundle: nvcc not found: the bundle needs a CUDA build" >&2; exit 1; }
scripts/setup.sh "$build" -Dcuda=enabled
[ -x "$build/tests/test_gpu_kernels" ] || { echo "gpu-bundle: $build has no GPU tests (was CUDA found?)" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/bin" "$out/lib" "$out/whl"
cp "$build/patchsweep" "$out/bin/"
# Only what gpu-check.sh runs: the gpu suite (every program links the CUDA kernels' fat binary, ~1.8 MB each,
# so the cpu suite's programs alone would pass the carry limit).
for t in "$build"/tests/test_gpu_*; do
    [ -f "$t" ] && [ -x "$t" ] && cp "$t" "$out/bin/"
done

# Libraries: every library the programs load, minus what the GPU machine has: glibc and the toolchain's
# runtime (its own, newer: Python 3.12's image), the CUDA driver and cuBLAS (hundreds of MB; the image
# has cuBLAS 13 from its CUDA toolkit and from PyTorch's wheels). libcudart is small and pinned to the
# version built against, so it travels.
system='^(linux-vdso|ld-linux|libc\.so|libm\.so|libdl\.so|libpthread\.so|librt\.so|libresolv\.so|libutil\.so|libstdc\+\+\.so|libgcc_s\.so|libcuda\.so|libcublas\.so|libcublasLt\.so)'
declare -A seen=()
for f in "$out"/bin/*; do
    while read -r name path; do
        [[ $name =~ $system ]] && continue
        [ -n "$path" ] && [ -f "$path" ] || { echo "gpu-bundle: $f needs $name, which is not found here" >&2; exit 1; }
        seen[$name]=$path
    done < <(ldd "$f" | awk '/=>/ {print $1, $3}')
done
# BLAS libraries the CPU backend may open at run time (dlopen): ldd does not list those.
for extra in /usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 /usr/lib/x86_64-linux-gnu/libblis.so.4; do
    [ -f "$extra" ] && seen[$(basename "$extra")]=$extra
done
for name in "${!seen[@]}"; do cp -L "${seen[$name]}" "$out/lib/$name"; done
tar -cJf "$out/lib.tar.xz" -C "$out" lib
rm -rf "$out/lib"
# Check as the GPU machine will load them: with only the unpacked bundle on LD_LIBRARY_PATH, every library
# outside the system list must resolve inside the bundle (else it would be missing on a bare CUDA image).
chk=$(mktemp -d)
tar -xJf "$out/lib.tar.xz" -C "$chk"
bad=$(for f in "$out"/bin/*; do env -i LD_LIBRARY_PATH="$chk/lib" ldd "$f"; done | awk '/=>/ {print $1, $3}' |
    while read -r name path; do [[ $name =~ $system ]] || [[ $path == "$chk/lib/"* ]] || echo "$name ($path)"; done | sort -u)
rm -rf "$chk"
[ -z "$bad" ] || { echo "gpu-bundle: would be missing on a bare CUDA image: $bad" >&2; exit 1; }

# Python: transformer_lens 4.3.0 (the benchmark's peer) and what it imports that the image lacks
# (the image's package list: /work/.library/device/KINDS.md). Wheels for CPython 3.12, no dependencies.
pipdl() {
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$out/whl" "$@"
}
wheels=(transformer_lens==4.3.0 beartype==0.23.1 fancy-einsum==0.0.3 typeguard==4.6.1 transformers-stream-generator==0.0.5
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)
for w in "${wheels[@]}"; do
    # A package published only as source (transformers-stream-generator) is built into a wheel here.
    pipdl "$w" 2>/dev/null || python3 -m pip wheel --quiet --no-deps -w "$out/whl" "$w" >/dev/null 2>&1 \
        || { echo "gpu-bundle: no wheel for $w" >&2; exit 1; }
done

# Shared data the GPU steps read (the ../shared beside the checkout does not travel): the tokenizers of the
# benchmark's GPT-2 model and of the Llama-2-7B-shaped check.
shared=${PS_SHARED:-../shared/data}
mkdir -p "$out/shared-data"
for d in gpt2-tokenizer llama2-tokenizer; do
    [ -d "$shared/$d" ] || { echo "gpu-bundle: $shared/$d not found (set PS_SHARED)" >&2; exit 1; }
    cp -r "$shared/$d" "$out/shared-data/"
done

# What travels: the tracked tree (git's view) plus this folder.
tree_kib=$(git ls-files -z | xargs -0 du -ck 2>/dev/null | tail -1 | cut -f1)
bundle_kib=$(du -sk "$out" | cut -f1)
total_mib=$(((tree_kib + bundle_kib) / 1024))
printf 'gpu-bundle: %s: %d KiB (programs %d KiB, libraries %d KiB xz, wheels %d KiB, shared data %d KiB); tree %d KiB; carry total %d MiB of %d\n' \
    "$out" "$bundle_kib" "$(du -sk "$out/bin" | cut -f1)" "$(du -sk "$out/lib.tar.xz" | cut -f1)" "$(du -sk "$out/whl" | cut -f1)" "$(du -sk "$out/shared-data" | cut -f1)" \
    "$tree_kib" "$total_mib" "$limit_mib"
[ "$total_mib" -lt "$limit_mib" ] || { echo "gpu-bundle: the carry would pass ${limit_mib} MiB" >&2; exit 1; }
echo "gpu-bundle: run on the GPU machine:  scripts/gpu-check.sh \$OUT   (carry: .gpu-bundle)"
