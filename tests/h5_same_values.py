#!/usr/bin/env python3
"""Checks that two patchsweep results files hold identical values: every dataset under the given groups
(default /results, /baseline, /prompts) present in both, same shape, and equal (NaN where NaN, 0 difference).
Attributes are not compared (a newer layout may add some); datasets only one file has are listed.

Usage: /usr/bin/python3 tests/h5_same_values.py A.h5 B.h5 [GROUP...]
Exit 0 when identical, 1 when any dataset differs or is missing from B, 2 on bad input.
"""
import sys

import h5py
import numpy as np


def datasets(f, group):
    out = {}
    if group not in f:
        return out
    f[group].visititems(lambda name, obj: out.__setitem__(f"{group}/{name}", obj) if isinstance(obj, h5py.Dataset) else None)
    return out


def main(argv):
    if len(argv) < 3:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    groups = argv[3:] or ["results", "baseline", "prompts"]
    try:
        a, b = h5py.File(argv[1], "r"), h5py.File(argv[2], "r")
    except OSError as e:
        print(f"h5_same_values: {e}", file=sys.stderr)
        return 2
    bad, n, worst = 0, 0, 0.0
    for g in groups:
        da, db = datasets(a, g), datasets(b, g)
        for name in sorted(set(db) - set(da)):
            print(f"  only in {argv[2]}: /{name}")
        for name, x in sorted(da.items()):
            if name not in db:
                print(f"  MISSING in {argv[2]}: /{name}")
                bad += 1
                continue
            xv, yv = x[()], db[name][()]
            n += 1
            if np.shape(xv) != np.shape(yv):
                print(f"  DIFFERENT SHAPE /{name}: {np.shape(xv)} vs {np.shape(yv)}")
                bad += 1
            elif getattr(xv, "dtype", None) is not None and xv.dtype.kind == "f":
                same_nan = np.array_equal(np.isnan(xv), np.isnan(yv))
                d = np.abs(xv.astype(np.float64) - yv.astype(np.float64))
                d = float(np.nanmax(d)) if d.size and not np.all(np.isnan(d)) else 0.0
                worst = max(worst, d)
                if not same_nan or d != 0:
                    print(f"  DIFFERENT /{name}: max |a - b| = {d:.3g}, NaN pattern {'same' if same_nan else 'differs'}")
                    bad += 1
            elif not np.array_equal(xv, yv):
                print(f"  DIFFERENT /{name}")
                bad += 1
    print(f"{n} datasets compared under /{', /'.join(groups)}: {bad} differ; max |a - b| over float datasets = {worst:.3g}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
