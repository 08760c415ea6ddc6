#!/usr/bin/env bash
# The whole test suite: installs and builds, runs the CPU tests, the GPU suite (skipped without a GPU),
# the parsers' fuzz targets for a bounded time, the Slurm scripts on a real one-node Slurm (root only), and
# every CPU test again under AddressSanitizer and UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
meson test -C build --suite cpu --print-errorlogs --num-processes 2
meson test -C build --suite gpu --print-errorlogs --num-processes 1 || { echo "gpu suite failed"; exit 1; }
meson test -C build --suite fuzz --print-errorlogs
meson test -C build --suite slurm --print-errorlogs
# Sanitizers: a second build without CUDA, running the parsers' and the engine's tests.
scripts/setup.sh build-asan -Db_sanitize=address,undefined -Dcuda=disabled -Dbuildtype=debug -Doptimization=1
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    meson test -C build-asan --suite cpu --print-errorlogs --num-processes 2 --timeout-multiplier 4
echo "test: all suites passed"
