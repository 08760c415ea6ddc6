#!/usr/bin/env bash
# The demo: installs and builds patchsweep, runs configs/demo.json on the embedded demo model,
# writes results/demo.h5 and draws its figures (results/demo/*.png).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh build
build/patchsweep run configs/demo.json -o results/demo.h5 --progress
build/patchsweep inspect results/demo.h5
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3   # Debian's python has h5py and matplotlib
$py experiments/plot.py results/demo.h5 -o results/demo
echo "demo: results/demo.h5 and results/demo/*.png"
