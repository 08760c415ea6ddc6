#!/usr/bin/env bash
# Writes the seed corpora of fuzz_results, fuzz_merge, fuzz_readback (its files; its streams: README.md) and
# fuzz_journal (tests/fuzz/corpus/) from small runs of the demo model.
# Usage: tests/fuzz/make_results_seeds.sh BUILD/patchsweep   (needs /usr/bin/python3 with h5py)
# Results seeds come sealed (as written) and also unsealed with no /run checksums (an older patchsweep's file), so
# that mutations reach libhdf5 and the readers instead of stopping at the seal.
set -eu
bin=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/cfg.json" <<JSON
{"model": "$root/models/demo", "threads": 1,
 "dataset": [{"clean": "1 2 3", "corrupted": "1 2 2", "answer": " 4", "wrong": " 3"},
             {"clean": "A B C", "corrupted": "A B B", "answer": " D", "wrong": " C"},
             {"clean": "5 6 7", "corrupted": "5 6 6", "answer": " 8", "wrong": " 7"}],
 "experiments": [{"name": "resid", "site": "resid_pre", "by": "layer_pos"},
                 {"name": "heads", "site": "z", "by": "layer_head", "layers": [0]}]}
JSON
"$bin" run "$tmp/cfg.json" -o "$tmp/full.h5" --quiet
"$bin" run "$tmp/cfg.json" -o "$tmp/s0.h5" --shard 0/2 --quiet
"$bin" run "$tmp/cfg.json" -o "$tmp/s1.h5" --shard 1/2 --quiet
/usr/bin/python3 - "$tmp" "$here/corpus" <<'PY'
import os, struct, sys, h5py
tmp, out = sys.argv[1], sys.argv[2]
def put(target, name, data):
    os.makedirs(f"{out}/{target}", exist_ok=True)
    open(f"{out}/{target}/{name}", "wb").write(data)
def unsealed(path):
    with h5py.File(path, "r+") as f:
        del f["run"].attrs["checksums"]
    b = bytearray(open(path, "rb").read()); b[:512] = bytes(512)
    return bytes(b)
for n in ("full", "s0", "s1"):
    sealed = open(f"{tmp}/{n}.h5", "rb").read()
    put("fuzz_results", f"{n}_sealed.h5", sealed)
    open(f"{tmp}/{n}_u.h5", "wb").write(sealed)
    put("fuzz_results", f"{n}_unsealed.h5", unsealed(f"{tmp}/{n}_u.h5"))
mark = b"PSSHARD1"
s0, s1 = open(f"{tmp}/s0.h5", "rb").read(), open(f"{tmp}/s1.h5", "rb").read()
put("fuzz_merge", "shards_sealed", s0 + mark + s1)
put("fuzz_merge", "shards_unsealed", open(f"{out}/fuzz_results/s0_unsealed.h5", "rb").read() + mark +
    open(f"{out}/fuzz_results/s1_unsealed.h5", "rb").read())
put("fuzz_merge", "one_shard", open(f"{tmp}/full.h5", "rb").read())
put("fuzz_readback", "full.h5", open(f"{tmp}/full.h5", "rb").read())
put("fuzz_readback", "shard1.h5", open(f"{tmp}/s1.h5", "rb").read())

# The journal target's fixed shape (fuzz_journal.c): 4 prompts; "t" (kind "k", per prompt, 3 cells), "u" (not).
def fnv(b):
    h = 1469598103934665603
    for c in b: h = ((h ^ c) * 1099511628211) & (2**64 - 1)
    return h
head = b"PSJRNL03" + b"a" * 64 + b"a" * 64 + struct.pack("<qq", 4, 2)   # identity, run-wide identity
for name, pp, cells in ((b"t", 1, 3), (b"u", 0, 1)):   # the tables carry no identity attribute ("")
    head += struct.pack("<qq", pp, cells) + struct.pack("<q", len(name)) + name + struct.pack("<q", 1) + b"k" + struct.pack("<q", 0)
def record(prompts):
    pl = struct.pack(f"<{len(prompts)}q", *prompts)
    for p in prompts: pl += struct.pack("<9f", *(float(p + k) for k in range(9)))  # 6 baseline + 3 cells
    pl += struct.pack("<qqd", 3 * len(prompts), 1, 1e3)
    return b"PSRC" + struct.pack("<qq", len(prompts), len(pl)) + pl + struct.pack("<Q", fnv(pl))
r01, r2, r3 = record([0, 1]), record([2]), record([3])
put("fuzz_journal", "header_only", head)
put("fuzz_journal", "complete", head + r01 + r2 + r3)
put("fuzz_journal", "duplicated_record", head + r01 + r2 + r01)
put("fuzz_journal", "torn_tail", head + r01 + r2[:-5])
put("fuzz_journal", "prompt_twice_in_record", head + record([1, 1]))
PY
echo "seeds written under $here/corpus/fuzz_{results,merge,readback,journal}"
