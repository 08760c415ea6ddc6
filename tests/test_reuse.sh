#!/usr/bin/env bash
# Per-experiment reuse: a rerun whose run-wide inputs match a finished output computes only the new or changed
# experiments, copies the unchanged tables exactly, drops the removed ones, says which on stderr (one line each),
# resumes after SIGTERM with reused and new experiments mixed, and still refuses a changed run-wide input.
. "$(dirname "$0")/bin_env.sh"

"$py" - "$tmp" <<'PY'
import json, sys
tmp = sys.argv[1]
with open(tmp + "/d.jsonl", "w") as f:
    for s in range(40):
        a = s % 20 + 1
        f.write(json.dumps({"clean": f"{a} {a+1} {a+2} {a+3}", "corrupted": f"{a} {a+1} {a+2} {a+2}",
                            "answer": f" {a+4}", "wrong": f" {a+3}"}) + "\n")
PY
config() { # FILE EXPERIMENTS...: the demo model on d.jsonl with these experiment objects
    local f=$1; shift
    local IFS=,
    printf '{"model": "%s", "threads": 1, "dataset": {"path": "%s"},\n "experiments": [%s]}\n' "$demo" "$tmp/d.jsonl" "$*" >"$f"
}
A='{"name": "resid", "site": "resid_pre"}'
B='{"name": "z", "site": "z", "by": "layer_pos_head"}'
C='{"name": "z_heads", "site": "z", "by": "layer_pos_head", "positions": [-1]}'
C2='{"name": "z_heads", "site": "z", "by": "layer_pos_head", "positions": [-2]}'
config "$tmp/c2.json" "$A" "$B"
config "$tmp/c3.json" "$A" "$B" "$C"
config "$tmp/c3b.json" "$A" "$B" "$C2"
config "$tmp/c2b.json" "$A" "$C"

same() { /usr/bin/python3 "$src/tests/h5_same_values.py" "$@" >"$tmp/same.out" 2>&1; }
# The table values of A and B within abs+rel 1e-5 (rows batched with other experiments round differently in the last bits).
close() { # A.h5 B.h5 TABLE
    "$py" - "$@" <<'PY'
import sys, h5py, numpy as np
a, b, t = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r"), sys.argv[3]
worst = 0.0
for k in ("values", "normalized", "mean", "mean_normalized"):
    if k not in a["results/" + t]: continue
    x, y = a["results/" + t][k][:], b["results/" + t][k][:]
    assert x.shape == y.shape and (np.isnan(x) == np.isnan(y)).all(), (k, x.shape, y.shape)
    m = ~np.isnan(x)
    err = np.abs(x[m] - y[m]); tol = 1e-5 + 1e-5 * np.abs(y[m])
    if (err > tol).any():
        i = np.argmax(err - tol); print(f"{t}/{k}: max error {err.max():.3g}, first mismatch {x[m][i]} vs {y[m][i]}"); sys.exit(1)
    worst = max(worst, float(err.max()) if err.size else 0.0)
print(f"{t}: max error {worst:.3g}")
PY
}
attr() { "$py" -c "import h5py, sys; print(h5py.File(sys.argv[1], 'r')['results/' + sys.argv[2]].attrs[sys.argv[3]])" "$@"; }
patches() { sed -n 's/.* \([0-9]*\) patches run.*/\1/p' "$1"; }

# --- fresh references -------------------------------------------------------------------------------------------
"$bin" run "$tmp/c3.json" -o "$tmp/fresh3.h5" --quiet 2>/dev/null || fail "fresh 3-experiment run"
"$bin" run "$tmp/c3b.json" -o "$tmp/fresh3b.h5" --quiet 2>/dev/null || fail "fresh run with z_heads changed"

# --- an experiment added: only it is computed -------------------------------------------------------------------
"$bin" run "$tmp/c2.json" -o "$tmp/o.h5" --quiet 2>/dev/null || fail "2-experiment run"
cp "$tmp/o.h5" "$tmp/two.h5"
"$bin" run "$tmp/c3.json" -o "$tmp/o.h5" --quiet 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 0 ] && grep -qx "patchsweep: experiment \"resid\": unchanged, reused from $tmp/o.h5" "$tmp/err" &&
    grep -qx "patchsweep: experiment \"z\": unchanged, reused from $tmp/o.h5" "$tmp/err" &&
    grep -qx 'patchsweep: experiment "z_heads": new, computing' "$tmp/err"; then pass "a third experiment added: two reused, one computed"
else fail "third experiment added: exit $rc: $(cat "$tmp/err")"; fi
want=$(attr "$tmp/fresh3.h5" z_heads patches_run)
[ -n "$want" ] && [ "$(patches "$tmp/err")" = "$want" ] && pass "this run's patches_run counts the new experiment alone ($want)" ||
    fail "patches run $(patches "$tmp/err"), want $want (z_heads alone): $(cat "$tmp/err")"
same "$tmp/two.h5" "$tmp/o.h5" results/resid results/z baseline && pass "the reused tables are bitwise the first run's: $(tail -1 "$tmp/same.out")" ||
    fail "reused tables differ: $(cat "$tmp/same.out")"
[ "$(attr "$tmp/o.h5" z patches_run)" = "$(attr "$tmp/two.h5" z patches_run)" ] && pass "a reused table keeps its counters" || fail "counters of z"
out=$(close "$tmp/o.h5" "$tmp/fresh3.h5" z_heads) && pass "the new table equals a fresh 3-experiment run's: $out" || fail "new table: $out"
"$bin" inspect "$tmp/o.h5" >"$tmp/insp" 2>&1 && grep -q "z_heads: patch_sweep (config .*identity [0-9a-f]\{64\}" "$tmp/insp" &&
    pass "inspect shows each table's config and identity" || fail "inspect: $(grep z_heads "$tmp/insp")"

# --- whitespace and key order: nothing to do ----------------------------------------------------------------------
"$py" -c 'import json, sys; json.dump(json.load(open(sys.argv[1])), open(sys.argv[2], "w"), indent=5, sort_keys=True)' "$tmp/c3.json" "$tmp/c3r.json"
"$bin" run "$tmp/c3r.json" -o "$tmp/o.h5" --quiet 2>"$tmp/err" && grep -q "complete .*nothing to do" "$tmp/err" &&
    pass "a reformatted config is unchanged: $(cat "$tmp/err")" || fail "reformatted: $(cat "$tmp/err")"

# --- one experiment's field changed: only it recomputes -----------------------------------------------------------
cp "$tmp/o.h5" "$tmp/three.h5"
"$bin" run "$tmp/c3b.json" -o "$tmp/o.h5" --quiet 2>"$tmp/err"
if [ $? -eq 0 ] && grep -qx 'patchsweep: experiment "z_heads": config changed (field "positions"), recomputing' "$tmp/err" &&
    [ "$(grep -c 'unchanged, reused' "$tmp/err")" -eq 2 ]; then pass "a changed field recomputes that experiment alone"
else fail "changed field: $(cat "$tmp/err")"; fi
same "$tmp/three.h5" "$tmp/o.h5" results/resid results/z && pass "the others stay bitwise equal" || fail "others: $(cat "$tmp/same.out")"
out=$(close "$tmp/o.h5" "$tmp/fresh3b.h5" z_heads) && pass "the recomputed table equals a fresh run's: $out" || fail "recomputed: $out"

# --- an experiment removed: dropped ---------------------------------------------------------------------------------
config "$tmp/c2c.json" "$A" "$C2"
"$bin" run "$tmp/c2c.json" -o "$tmp/o.h5" --quiet 2>"$tmp/err"
if [ $? -eq 0 ] && grep -qx 'patchsweep: experiment "z": no longer in the config, dropped' "$tmp/err" &&
    [ "$(grep -c 'unchanged, reused' "$tmp/err")" -eq 2 ] && grep -q " 0 patches run" "$tmp/err" &&
    "$py" -c "import h5py, sys; sys.exit(sorted(h5py.File(sys.argv[1], 'r')['results']) != ['resid', 'z_heads'])" "$tmp/o.h5"; then
    pass "a removed experiment is dropped, nothing computed"
else fail "removed: $(cat "$tmp/err")"; fi
same "$tmp/three.h5" "$tmp/o.h5" results/resid && pass "the kept table stays bitwise equal" || fail "kept: $(cat "$tmp/same.out")"

# --- SIGTERM while the new experiment computes, then resume ---------------------------------------------------------
cp "$tmp/two.h5" "$tmp/k.h5"
"$bin" run "$tmp/c3.json" -o "$tmp/k.h5" --quiet --chunk-prompts 1 2>"$tmp/kerr" &
pid=$!
for _ in $(seq 400); do [ -s "$tmp/k.h5.journal" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
head=$(stat -c %s "$tmp/k.h5.journal" 2>/dev/null || echo 0) # the header: then wait for the first record after it
for _ in $(seq 400); do [ "$(stat -c %s "$tmp/k.h5.journal" 2>/dev/null || echo 0)" -gt "$head" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
kill -TERM "$pid" 2>/dev/null
wait "$pid"
rc=$?
if [ "$rc" -eq 143 ]; then
    pass "SIGTERM during the new experiment: exit 143"
    same "$tmp/two.h5" "$tmp/k.h5" && pass "the finished output is untouched while the run is unfinished" || fail "output changed by a killed run"
    "$bin" run "$tmp/c3.json" -o "$tmp/k.h5" --quiet --chunk-prompts 1 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 0 ] && grep -q "resuming: " "$tmp/err" && grep -q '"z_heads": new, computing' "$tmp/err" &&
        pass "resumed: $(grep resuming "$tmp/err")" || fail "resume after SIGTERM: exit $rc: $(cat "$tmp/err")"
    same "$tmp/two.h5" "$tmp/k.h5" results/resid results/z && pass "after the resume the reused tables are bitwise the first run's" ||
        fail "resume, reused: $(cat "$tmp/same.out")"
    out=$(close "$tmp/k.h5" "$tmp/fresh3.h5" z_heads) && pass "after the resume the new table equals a fresh run's: $out" || fail "resume, new: $out"
    # The same reusing run uninterrupted: the resumed file is bitwise equal to it.
    cp "$tmp/two.h5" "$tmp/k3.h5"
    "$bin" run "$tmp/c3.json" -o "$tmp/k3.h5" --quiet --chunk-prompts 1 2>/dev/null
    same "$tmp/k3.h5" "$tmp/k.h5" && pass "the resumed file is bitwise the uninterrupted reusing run's: $(tail -1 "$tmp/same.out")" ||
        fail "resumed vs uninterrupted: $(cat "$tmp/same.out")"
elif [ "$rc" -eq 0 ]; then echo "note: the run finished before SIGTERM arrived"
else fail "SIGTERM: exit $rc: $(cat "$tmp/kerr")"; fi

# --- a journal of another experiment list (killed before any output existed): started afresh, saying so ---------------
rm -f "$tmp/j.h5" "$tmp/j.h5.journal"
( trap '' XFSZ; ulimit -f 8; exec "$bin" run "$tmp/c2.json" -o "$tmp/j.h5" --quiet --chunk-prompts 1 ) 2>/dev/null
if [ -s "$tmp/j.h5.journal" ] && [ ! -e "$tmp/j.h5" ]; then
    "$bin" run "$tmp/c3.json" -o "$tmp/j.h5" --quiet 2>"$tmp/err"
    rc=$?
    [ "$rc" -eq 0 ] && grep -qx "patchsweep: $tmp/j.h5.journal was written for another list of experiments; its finished prompts are recomputed" "$tmp/err" &&
        same "$tmp/fresh3.h5" "$tmp/j.h5" && pass "a journal of another experiment list starts afresh: equal to a fresh run" ||
        fail "journal of another list: exit $rc: $(cat "$tmp/err") $(cat "$tmp/same.out")"
else fail "no partial journal of the 2-experiment run"; fi

# --- a changed run-wide input is still refused ----------------------------------------------------------------------
"$py" -c '
import json, sys
p = sys.argv[1]; rows = [json.loads(l) for l in open(p)]
for r in rows: r["answer"], r["wrong"] = r["wrong"], r["answer"]
open(p, "w").write("".join(json.dumps(r) + "\n" for r in rows))' "$tmp/d.jsonl"
"$bin" run "$tmp/c3.json" -o "$tmp/o.h5" --quiet >/dev/null 2>"$tmp/err"
rc=$?
[ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "dataset file $tmp/d.jsonl changed since $tmp/o.h5 was written; --force recomputes" "$tmp/err" &&
    pass "a changed dataset file is refused: $(cat "$tmp/err")" || fail "changed dataset: exit $rc: $(cat "$tmp/err")"
"$bin" run "$tmp/c2b.json" -o "$tmp/o.h5" --quiet >/dev/null 2>"$tmp/err"
[ $? -eq 2 ] && grep -q "dataset file .* changed" "$tmp/err" && pass "also with another experiment list" || fail "changed dataset, other list: $(cat "$tmp/err")"

[ "$fails" -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "all reuse checks passed"
