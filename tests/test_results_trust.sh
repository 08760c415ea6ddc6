#!/usr/bin/env bash
# Results that can be trusted: a full disk while the results file is written (one line, exit 1, journal kept, a
# rerun completes), corrupt results files (bytes flipped anywhere, a dataset changed under a valid seal) refused by
# inspect, run and merge with one line (exit 2), /run inputs, and a journal record written twice not replayed.
# shellcheck source=tests/bin_env.sh
. "$(dirname "$0")/bin_env.sh"
$py -c 'import h5py' 2>/dev/null || { [ "${CI:-}" = "true" ] && { echo "FAIL: h5py missing with CI=true"; exit 1; }; echo "SKIP: h5py missing"; exit 77; }

cat >"$tmp/cfg.json" <<JSON
{"model": "$demo", "threads": 1,
 "dataset": [$(count_items 8)],
 "experiments": [{"name": "resid_pre", "site": "resid_pre", "by": "layer_pos"},
                 {"name": "neurons", "site": "mlp_post", "by": "layer_neuron"}]}
JSON
one_line() { [ "$(wc -l <"$1")" -eq 1 ]; }
"$bin" run "$tmp/cfg.json" -o "$tmp/ref.h5" --quiet 2>"$tmp/err" || { echo "FAIL: reference run: $(cat "$tmp/err")"; exit 1; }

# --- 1. a full disk while the results file is written ----------------------------------------------------------
# ulimit -f (KiB): the journal (about 75 KiB) fits, the results file (about 220 KiB) does not: EFBIG as ENOSPC.
(ulimit -f 150; exec "$bin" run "$tmp/cfg.json" -o "$tmp/full.h5" --quiet) 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 1 ] && one_line "$tmp/err" && grep -q "full.h5.partial: cannot write results file: File too large" "$tmp/err" &&
    [ ! -e "$tmp/full.h5" ] && [ ! -e "$tmp/full.h5.partial" ] && [ -s "$tmp/full.h5.journal" ]; then
    pass "full disk: exit 1, one line ($(cat "$tmp/err")), no results file or .partial, journal kept"
else fail "full disk: exit $rc: $(cat "$tmp/err"); left: $(ls "$tmp" | grep full)"; fi
"$bin" run "$tmp/cfg.json" -o "$tmp/full.h5" --quiet 2>"$tmp/err" && grep -q "resuming: 9 of 9 prompts already done" "$tmp/err" &&
    $py "$src/tests/h5_same_values.py" "$tmp/ref.h5" "$tmp/full.h5" >/dev/null && [ ! -e "$tmp/full.h5.journal" ] &&
    pass "rerun with space: resumed from the journal, values equal one uninterrupted run" || fail "rerun after full disk: $(cat "$tmp/err")"

# --- 2. corrupt results files ----------------------------------------------------------------------------------
"$bin" inspect "$tmp/ref.h5" >"$tmp/out" 2>"$tmp/err" && grep -q "checksums: sha256 of [0-9]* datasets verified" "$tmp/out" &&
    pass "inspect verifies every dataset's sha256: $(grep checksums "$tmp/out")" || fail "inspect of the reference: $(cat "$tmp/err")"
# One byte flipped: in the first DIMENSION_LIST attribute (libhdf5's attribute iteration crashed there), and at 200
# spread positions. Every one: exit 2, exactly one line naming the file, no crash.
$py - "$tmp/ref.h5" "$tmp" "$bin" <<'PY' >"$tmp/flips" 2>&1
import subprocess, sys
src, d, bin_ = sys.argv[1:4]
data = open(src, "rb").read()
at = data.find(b"DIMENSION_LIST")
pos = list(range(at - 8, at + 40)) + list(range(0, len(data), max(1, len(data) // 200)))
bad = []
for p in pos:
    b = bytearray(data); b[p] ^= 0x5A
    open(f"{d}/flip.h5", "wb").write(b)
    r = subprocess.run([bin_, "inspect", f"{d}/flip.h5"], capture_output=True, timeout=60)
    err = r.stderr.decode(errors="replace").splitlines()
    ok = (r.returncode == 2 and len(err) == 1 and "flip.h5" in err[0]) or (r.returncode == 0 and 81 <= p < 512)  # the userblock past the seal line is padding
    if not ok: bad.append((p, r.returncode, err[:2]))
print(f"{len(pos)} flips, {len(bad)} bad: {bad[:5]}")
sys.exit(1 if bad else 0)
PY
[ $? -eq 0 ] && pass "one byte flipped (DIMENSION_LIST and 200 positions): $(cat "$tmp/flips"), each exit 2 with one line" || fail "flips: $(cat "$tmp/flips")"
"$bin" inspect "$tmp/flip.h5" 2>&1 | sed 's/^/    /'

# A value changed and the seal recomputed (as a tool that knows the seal but not the datasets would): the dataset's
# own sha256 names it.
cp "$tmp/ref.h5" "$tmp/edit.h5"
$py - "$tmp/edit.h5" <<'PY'
import hashlib, sys, h5py
p = sys.argv[1]
with h5py.File(p, "r+") as f:
    v = f["results/neurons/values"]; x = v[()]; x[0, 0, 0] += 1.0; v[...] = x
b = bytearray(open(p, "rb").read())
line = b"PSRESULT sha256 " + hashlib.sha256(bytes(b[512:])).hexdigest().encode() + b"\n"
b[:512] = line + bytes(512 - len(line))
open(p, "wb").write(b)
PY
"$bin" inspect "$tmp/edit.h5" >/dev/null 2>"$tmp/err"; rc=$?
[ "$rc" -eq 2 ] && one_line "$tmp/err" && grep -q "edit.h5: /results/neurons/values: checksum mismatch" "$tmp/err" &&
    pass "a changed dataset: inspect exit 2: $(cat "$tmp/err")" || fail "changed dataset: exit $rc: $(cat "$tmp/err")"

# Unsealed files (no seal, no /run checksums: as an older patchsweep's) that crash libhdf5 1.10 when read (found by
# fuzz_results): inspect reads in a child process, so each is one line and exit 2, never a signal (under ASan the
# child's crash is an exit status, not a signal).
for f in "$src"/tests/data/corrupt_h5/*.h5; do
    "$bin" inspect "$f" >"$tmp/out" 2>"$tmp/err"; rc=$?
    [ "$rc" -eq 2 ] && one_line "$tmp/err" && grep -Eq "$(basename "$f"): corrupt: libhdf5 crashed reading it \((signal|exit) [0-9]+\)" "$tmp/err" && [ ! -s "$tmp/out" ] &&
        pass "a file that crashes libhdf5: inspect exit 2: $(cat "$tmp/err")" || fail "libhdf5 crash file $f: exit $rc: $(cat "$tmp/err")"
done

# A sealed file (as crafted) on which libhdf5 loops forever (found by fuzz_merge): merge's checking child is stopped
# after 30 s, one line, exit 2, nothing written.
"$bin" merge "$tmp/hang_m.h5" "$src/tests/data/corrupt_h5/hang/libhdf5_loop.h5" 2>"$tmp/err"; rc=$?
[ "$rc" -eq 2 ] && one_line "$tmp/err" && grep -q "libhdf5_loop.h5: corrupt: libhdf5 did not finish reading it in 30 s" "$tmp/err" &&
    [ ! -e "$tmp/hang_m.h5" ] && pass "a file libhdf5 loops on: merge exit 2 after 30 s: $(cat "$tmp/err")" || fail "hang file: exit $rc: $(cat "$tmp/err")"

# run: a corrupt complete output of the same run is not "complete ... nothing to do".
for f in flip edit; do
    cp "$tmp/$f.h5" "$tmp/run_$f.h5"
    "$bin" run "$tmp/cfg.json" -o "$tmp/run_$f.h5" --quiet 2>"$tmp/err"; rc=$?
    [ "$rc" -eq 2 ] && one_line "$tmp/err" && grep -q "run_$f.h5.*--force recomputes" "$tmp/err" && ! grep -q "nothing to do" "$tmp/err" &&
        pass "run on a corrupt output ($f): exit 2: $(cat "$tmp/err")" || fail "run on corrupt $f: exit $rc: $(cat "$tmp/err")"
done
"$bin" run "$tmp/cfg.json" -o "$tmp/run_edit.h5" --quiet --force 2>"$tmp/err" && "$bin" inspect "$tmp/run_edit.h5" >/dev/null &&
    pass "--force recomputes a corrupt output" || fail "--force over a corrupt output: $(cat "$tmp/err")"

# merge: a corrupt shard is refused, nothing written.
"$bin" run "$tmp/cfg.json" -o "$tmp/s0.h5" --shard 0/2 --quiet 2>/dev/null && "$bin" run "$tmp/cfg.json" -o "$tmp/s1.h5" --shard 1/2 --quiet 2>/dev/null ||
    fail "shard runs"
"$bin" merge "$tmp/m.h5" "$tmp/s0.h5" "$tmp/s1.h5" 2>"$tmp/err" && "$bin" inspect "$tmp/m.h5" >/dev/null &&
    $py "$src/tests/h5_same_values.py" "$tmp/ref.h5" "$tmp/m.h5" >/dev/null && pass "merge of good shards: sealed, verified, equal to one run" ||
    fail "merge of good shards: $(cat "$tmp/err")"
cp "$tmp/s1.h5" "$tmp/s1_good.h5"
$py -c "
import sys; p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[len(b) // 2] ^= 1; open(p, 'wb').write(b)" "$tmp/s1.h5"
"$bin" merge "$tmp/m2.h5" "$tmp/s0.h5" "$tmp/s1.h5" 2>"$tmp/err"; rc=$?
[ "$rc" -eq 2 ] && one_line "$tmp/err" && grep -q "s1.h5: corrupt" "$tmp/err" && [ ! -e "$tmp/m2.h5" ] && [ ! -e "$tmp/m2.h5.partial" ] &&
    pass "merge of a corrupt shard: exit 2: $(cat "$tmp/err")" || fail "merge corrupt shard: exit $rc: $(cat "$tmp/err")"

# Crafted shards: a metadata byte changed, then the seal recomputed as our writer computes it (the datasets' bytes are
# untouched, so every dataset's sha256 attribute stays valid). libhdf5 reads shards only in merge's child process; this
# process writes the merged file from the child's reply, so whatever the crafted byte does to libhdf5 (a refusal, a
# crash, a loop) is exit 2 and one line with nothing written, or a merge that succeeds.
craft() { # SRC DST OFFSET XOR: one byte changed, the userblock's sha256 recomputed
    $py - "$@" <<'PY'
import hashlib, sys
src, dst, off, x = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
b = bytearray(open(src, "rb").read())
b[off] ^= x
line = b"PSRESULT sha256 " + hashlib.sha256(bytes(b[512:])).hexdigest().encode() + b"\n"
b[:512] = line + bytes(512 - len(line))
open(dst, "wb").write(b)
PY
}
# The root group's link "prompts" renamed "qrompts": every checksum verifies, and the shard is still not a shard.
off=$($py -c "import sys; print(open(sys.argv[1], 'rb').read().index(b'prompts'))" "$tmp/s1_good.h5")
craft "$tmp/s1_good.h5" "$tmp/s1_craft.h5" "$off" 1
"$bin" inspect "$tmp/s1_craft.h5" >/dev/null 2>&1 && echo "note: inspect reads the crafted shard (its checksums are valid)"
"$bin" merge "$tmp/m3.h5" "$tmp/s0.h5" "$tmp/s1_craft.h5" 2>"$tmp/err"; rc=$?
[ "$rc" -eq 2 ] && one_line "$tmp/err" && grep -q "s1_craft.h5: /prompts/in_run missing" "$tmp/err" && [ ! -e "$tmp/m3.h5" ] && [ ! -e "$tmp/m3.h5.partial" ] &&
    pass "a crafted shard with valid checksums: merge exit 2: $(cat "$tmp/err")" || fail "crafted shard: exit $rc: $(cat "$tmp/err")"
# A file that crashes libhdf5's reads (inspect, above), sealed as a crafted shard: refused in the child.
craft "$src/tests/data/corrupt_h5/libhdf5_segv.h5" "$tmp/s1_segv.h5" 600 0
"$bin" merge "$tmp/m4.h5" "$tmp/s0.h5" "$tmp/s1_segv.h5" 2>"$tmp/err"; rc=$?
[ "$rc" -eq 2 ] && one_line "$tmp/err" && grep -q "s1_segv.h5" "$tmp/err" && [ ! -e "$tmp/m4.h5" ] && [ ! -e "$tmp/m4.h5.partial" ] &&
    pass "a sealed shard made from a file that crashes libhdf5: merge exit 2: $(cat "$tmp/err")" || fail "sealed libhdf5 crash shard: exit $rc: $(cat "$tmp/err")"
# Bytes in and around the dimension-scale attributes (DIMENSION_LIST, DIMENSION_LABELS), each changed and resealed.
n_craft=0; n_refused=0
for off in $($py -c "
import re, sys
b = open(sys.argv[1], 'rb').read()
offs = sorted({m.start() + d for pat in (b'DIMENSION_LIST', b'DIMENSION_LABELS') for m in list(re.finditer(pat, b))[:2] for d in range(-24, 24, 3)})
print(' '.join(map(str, offs)))" "$tmp/s1_good.h5"); do
    craft "$tmp/s1_good.h5" "$tmp/s1_x.h5" "$off" 255
    rm -f "$tmp/mx.h5"
    "$bin" merge "$tmp/mx.h5" "$tmp/s0.h5" "$tmp/s1_x.h5" >/dev/null 2>"$tmp/err"; rc=$?
    n_craft=$((n_craft + 1))
    if [ "$rc" -eq 2 ]; then
        n_refused=$((n_refused + 1))
        { one_line "$tmp/err" && [ ! -e "$tmp/mx.h5" ] && [ ! -e "$tmp/mx.h5.partial" ]; } || fail "crafted byte $off: exit 2 but: $(cat "$tmp/err")"
    elif [ "$rc" -ne 0 ]; then fail "crafted byte $off: exit $rc: $(cat "$tmp/err")"; fi
done
[ "$n_craft" -ge 40 ] && pass "$n_craft crafted shards (dimension-scale attribute bytes, resealed): $n_refused refused with one line, the rest merged, none crashed" ||
    fail "only $n_craft crafted shards"

# --- 3. /run inputs ---------------------------------------------------------------------------------------------
"$bin" inspect "$tmp/ref.h5" >"$tmp/out" 2>&1
$py - "$tmp/ref.h5" <<'PY' >"$tmp/inputs" 2>&1
import hashlib, json, os, sys, h5py
ins = json.loads(h5py.File(sys.argv[1], "r")["run"].attrs["inputs"])
assert len(ins) >= 3, ins
for i in ins:
    data = open(i["path"], "rb").read()
    assert i["sha256"] == hashlib.sha256(data).hexdigest() and i["bytes"] == len(data), i
print(len(ins), sorted({i["kind"] for i in ins}))
PY
[ $? -eq 0 ] && grep -q "inputs:    [0-9]* files" "$tmp/out" && grep -q "weights file .*model.safetensors (sha256 " "$tmp/out" &&
    pass "/run inputs: every input file's path, sha256 and bytes, shown by inspect: $(cat "$tmp/inputs")" || fail "inputs: $(cat "$tmp/inputs") $(cat "$tmp/out")"

# --- 4. a journal record written twice ------------------------------------------------------------------------
(ulimit -f 150; exec "$bin" run "$tmp/cfg.json" -o "$tmp/dup.h5" --quiet --chunk-prompts 2) 2>/dev/null
[ -s "$tmp/dup.h5.journal" ] || fail "no journal to duplicate a record in"
$py - "$tmp/dup.h5.journal" <<'PY'
import struct, sys
p = sys.argv[1]; b = open(p, "rb").read()
n_prompts, n_tables = struct.unpack_from("<qq", b, 136); at = 152
for _ in range(n_tables):
    at += 16
    for _ in range(3): (l,) = struct.unpack_from("<q", b, at); at += 8 + l
first = at
while b[at:at + 4] == b"PSRC":
    (length,) = struct.unpack_from("<q", b, at + 12)
    if at + 20 + length + 8 > len(b): break
    at += 20 + length + 8
(length,) = struct.unpack_from("<q", b, first + 12)
assert at > first
open(p, "wb").write(b[:at] + b[first:first + 20 + length + 8])   # the first record again, with its valid checksum
PY
"$bin" run "$tmp/cfg.json" -o "$tmp/dup.h5" --quiet 2>"$tmp/err"; rc=$?
run_ok=$($py -c "
import sys, h5py
a, b = h5py.File(sys.argv[1], 'r'), h5py.File(sys.argv[2], 'r')
print(all(a['results'][n].attrs['patches_run'] == b['results'][n].attrs['patches_run'] for n in a['results']))" "$tmp/ref.h5" "$tmp/dup.h5" 2>&1)
[ "$rc" -eq 0 ] && grep -q "dup.h5.journal: record [0-9]* (at byte [0-9]*) repeats prompt 0, already restored; skipped" "$tmp/err" && [ "$run_ok" = True ] &&
    $py "$src/tests/h5_same_values.py" "$tmp/ref.h5" "$tmp/dup.h5" >/dev/null &&
    pass "a duplicated journal record is skipped ($(grep repeats "$tmp/err")); values and patches_run equal one run" ||
    fail "duplicated record: exit $rc, patches_run equal: $run_ok: $(cat "$tmp/err")"

[ "$fails" -eq 0 ] && echo "all results-trust tests passed" || echo "$fails failed"
[ "$fails" -eq 0 ]
