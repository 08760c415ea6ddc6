#!/usr/bin/env bash
# Overnight runs that survive: SIGKILL at 20 random moments with a resume after each, SIGTERM, refusal of
# another run's output, shards + merge equal to one run, and --dry-run. Compares every dataset with h5py.
. "$(dirname "$0")/bin_env.sh"
if ! $py -c 'import h5py' 2>/dev/null; then
    [ "${CI:-}" = "true" ] && { echo "FAIL: h5py missing with CI=true"; exit 1; }
    echo "SKIP: h5py missing"; exit 77
fi

items=""
for s in $(seq 1 40); do
    a=$((s % 20 + 1)); items="$items{\"clean\": \"$a $((a + 1)) $((a + 2)) $((a + 3))\", \"corrupted\": \"$a $((a + 1)) $((a + 2)) $((a + 2))\", \"answer\": \" $((a + 4))\", \"wrong\": \" $((a + 3))\"},"
done
cat >"$tmp/cfg.json" <<JSON
{
  "model": "$demo",
  "threads": 1,
  "dataset": [
    $items
    {"clean": "January February March", "corrupted": "January February February", "answer": " April", "wrong": " March"},
    {"clean": "Monday Tuesday Wednesday", "corrupted": "Monday Tuesday Tuesday", "answer": " Thursday", "wrong": " Wednesday"},
    {"clean": "A B C D", "corrupted": "A B C C", "answer": " E", "wrong": " D"}
  ],
  "experiments": [
    {"name": "resid_pre", "site": "resid_pre", "by": "layer_pos"},
    {"name": "z_by_pos", "site": "z", "by": "layer_pos_head"},
    {"name": "neurons", "site": "mlp_post", "by": "layer_neuron", "layers": [1]},
    {"name": "heads_noise", "site": "z", "by": "layer_head", "direction": "noise"}
  ]
}
JSON
compare() { # A B: every dataset and result counter equal
    $py - "$1" "$2" <<'PY'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
worst = 0.0
def visit(name, obj):
    global worst
    if not isinstance(obj, h5py.Dataset) or name.startswith("run"):
        return
    x, y = obj[()], b[name][()]
    if x.dtype.kind == "f":
        assert x.shape == y.shape and np.array_equal(np.isnan(x), np.isnan(y)), name
        d = float(np.nanmax(np.abs(x - y))) if x.size and not np.all(np.isnan(x)) else 0.0
        worst = max(worst, d)
        assert d == 0, (name, d)  # prompts never share a batch: results are bitwise reproducible
    else:
        assert np.array_equal(x, y), name
a.visititems(visit)
for name in a["results"]:
    for k in ("patches_run", "patches_skipped"):
        assert a["results"][name].attrs[k] == b["results"][name].attrs[k], (name, k)
assert a["run"].attrs["status"] == b["run"].attrs["status"] == "complete"
print(f"  max |a - b| over every float dataset: {worst:.3g}")
PY
}

"$bin" run "$tmp/cfg.json" -o "$tmp/ref.h5" --quiet 2>"$tmp/err" || { echo "FAIL: reference run: $(cat "$tmp/err")"; exit 1; }
start=$(date +%s%N)
"$bin" run "$tmp/cfg.json" -o "$tmp/time.h5" --quiet --chunk-prompts 1 2>/dev/null
ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "uninterrupted run: ${ms} ms"

# --- SIGKILL at 20 random moments, resuming each time -------------------------------------------
kills=0
RANDOM=12345
for k in $(seq 1 20); do
    "$bin" run "$tmp/cfg.json" -o "$tmp/out.h5" --quiet --chunk-prompts 1 2>/dev/null &
    pid=$!
    delay=$(( RANDOM % (ms / 12 > 20 ? ms / 12 : 20) + 30 ))  # past start-up, well before the end
    sleep "$(awk -v d="$delay" 'BEGIN { printf "%.3f", d / 1000 }')"
    if kill -9 "$pid" 2>/dev/null; then kills=$((kills + 1)); fi
    wait "$pid" 2>/dev/null
    if [ -e "$tmp/out.h5" ]; then
        # Only a complete run may leave OUT.h5, and it must read as complete.
        $py -c "import h5py,sys; sys.exit(0 if h5py.File('$tmp/out.h5','r')['run'].attrs['status']=='complete' else 1)" \
            || fail "kill $k left an incomplete $tmp/out.h5"
        break
    fi
done
"$bin" run "$tmp/cfg.json" -o "$tmp/out.h5" --quiet --chunk-prompts 1 2>"$tmp/err" || fail "final resume: $(cat "$tmp/err")"
[ -e "$tmp/out.h5.journal" ] && fail "journal left behind after completion"
if compare "$tmp/out.h5" "$tmp/ref.h5"; then pass "SIGKILL at $kills moments, resumed each time: equal to an uninterrupted run"
else fail "resumed run differs from the uninterrupted one"; fi
[ "$kills" -ge 10 ] || fail "only $kills of 20 kills landed during a run"

# --- SIGTERM (what Slurm sends) -------------------------------------------------------------------
"$bin" run "$tmp/cfg.json" -o "$tmp/term.h5" --quiet --chunk-prompts 1 2>"$tmp/err" &
pid=$!
# Once the run is under way (its journal holds a chunk): before main() runs, while the dynamic loader maps
# the CUDA libraries, a signal can only take its default action.
for _ in $(seq 200); do [ -s "$tmp/term.h5.journal" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
kill -TERM "$pid" 2>/dev/null
wait "$pid"
rc=$?
if [ "$rc" -eq 143 ]; then
    grep -q "resume" "$tmp/err" && pass "SIGTERM exits 143 and says how to resume" || fail "SIGTERM message: $(cat "$tmp/err")"
    [ -e "$tmp/term.h5" ] && fail "SIGTERM left a results file"
elif [ "$rc" -eq 0 ]; then
    echo "note: the run finished before SIGTERM arrived"
else
    fail "SIGTERM: exit $rc: $(cat "$tmp/err")"
fi
if "$bin" run "$tmp/cfg.json" -o "$tmp/term.h5" --quiet 2>/dev/null && compare "$tmp/term.h5" "$tmp/ref.h5" >/dev/null; then
    pass "resume after SIGTERM equals the uninterrupted run"
else fail "resume after SIGTERM"; fi

# --- a journal that cannot be written (a full disk, here a file size limit) -----------------------------
# The writer thread's failure must stop the run with one line and no results file, and a later run resumes.
( trap '' XFSZ; ulimit -f 8; exec "$bin" run "$tmp/cfg.json" -o "$tmp/full.h5" --quiet --chunk-prompts 1 ) 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 1 ] && grep -q "cannot append to journal" "$tmp/err" && [ ! -e "$tmp/full.h5" ]; then
    pass "a journal write that fails stops the run (exit 1, no results file)"
else fail "journal write failure: exit $rc: $(cat "$tmp/err")"; fi
if "$bin" run "$tmp/cfg.json" -o "$tmp/full.h5" --quiet 2>"$tmp/err" && compare "$tmp/full.h5" "$tmp/ref.h5" >/dev/null; then
    pass "resume after a failed journal write equals the uninterrupted run"
else fail "resume after a failed journal write: $(cat "$tmp/err")"; fi

# --- an existing output -----------------------------------------------------------------------------
if "$bin" run "$tmp/cfg.json" -o "$tmp/ref.h5" 2>"$tmp/err" && grep -q "nothing to do" "$tmp/err"; then
    pass "same config, complete output: nothing to do"
else fail "rerun of a complete output: $(cat "$tmp/err")"; fi
sed 's/"threads": 1/"threads": 1, "metric": "prob_diff"/' "$tmp/cfg.json" >"$tmp/other.json"
"$bin" run "$tmp/other.json" -o "$tmp/ref.h5" 2>"$tmp/err"
if [ $? -eq 2 ] && grep -q -- "--force" "$tmp/err"; then pass "another config's output refused without --force"
else fail "another config over an existing output: $(cat "$tmp/err")"; fi

# --- shards and merge -------------------------------------------------------------------------------
for i in 0 1 2 3; do
    "$bin" run "$tmp/cfg.json" -o "$tmp/shard$i.h5" --quiet --shard "$i/4" 2>"$tmp/err" || fail "shard $i: $(cat "$tmp/err")"
done
"$bin" merge "$tmp/merged.h5" "$tmp"/shard{2,0,3,1}.h5 2>"$tmp/err" || fail "merge: $(cat "$tmp/err")"
if compare "$tmp/merged.h5" "$tmp/ref.h5"; then pass "4 shards merged equal one run"; else fail "merged shards differ from one run"; fi
"$bin" merge "$tmp/m3.h5" "$tmp"/shard{0,1,2}.h5 2>"$tmp/err"
if [ $? -eq 2 ] && grep -q "missing" "$tmp/err" && [ ! -e "$tmp/m3.h5" ]; then pass "merging 3 of 4 shards fails (exit 2)"
else fail "merge of 3 of 4: $(cat "$tmp/err")"; fi
"$bin" merge "$tmp/m4.h5" "$tmp"/shard{0,1,1,2,3}.h5 2>"$tmp/err"
if [ $? -eq 2 ] && grep -q "twice" "$tmp/err"; then pass "a duplicated shard fails (exit 2)"; else fail "duplicate shard: $(cat "$tmp/err")"; fi
"$bin" run "$tmp/other.json" -o "$tmp/oshard1.h5" --quiet --shard 1/4 2>/dev/null
"$bin" merge "$tmp/m5.h5" "$tmp"/shard{0,2,3}.h5 "$tmp/oshard1.h5" 2>"$tmp/err"
if [ $? -eq 2 ] && grep -q "another run" "$tmp/err"; then pass "a shard of another config fails (exit 2)"
else fail "foreign shard: $(cat "$tmp/err")"; fi

# --- the read-out analyses: interrupted, resumed and sharded runs equal one run ------------------------------
# ov_scores over the prompts and neuron_top read every prompt's run: the prompts a process did not run itself (the
# journal's, another shard's) are run again as their baselines ran, so the tables are bitwise the same.
$py - "$tmp/cfg.json" "$tmp/acfg.json" "$tmp/scfg.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["experiments"] = [
    {"name": "dla", "kind": "dla", "per_neuron": True},
    {"name": "lens", "kind": "logit_lens", "top_k": 3},
    {"name": "att", "kind": "attention", "positions": [-1]},
    {"name": "ov", "kind": "ov_scores", "tokens": [" 1", " 2", " 3", " 4", " 5", " 6", " 7", " 8", " 9"], "input": "prompts", "top_k": 3},
    {"name": "ov_alone", "kind": "ov_scores", "tokens": [" 1", " 2", " 3"], "top_k": 3},
    {"name": "nrn", "kind": "neurons", "neurons": ["1.5", "3.440"], "top_k": 4, "window": 2},
    {"name": "dla_corrupted", "kind": "dla", "run": "corrupted"},
]
json.dump(c, open(sys.argv[2], "w"), indent=1)
c["experiments"] = [x for x in c["experiments"] if x["kind"] not in ("ov_scores", "neurons")]   # --shard splits per-prompt tables only
json.dump(c, open(sys.argv[3], "w"), indent=1)
PY
"$bin" run "$tmp/acfg.json" -o "$tmp/aref.h5" --quiet 2>"$tmp/err" || fail "analyses: reference run: $(cat "$tmp/err")"
# The logit lens's prompts and the OV heads run on the OpenMP threads: the same numbers as on one.
sed 's/"threads": 1/"threads": 2/' "$tmp/acfg.json" >"$tmp/acfg2.json"
if "$bin" run "$tmp/acfg2.json" -o "$tmp/a2.h5" --quiet 2>"$tmp/err" && compare "$tmp/a2.h5" "$tmp/aref.h5"; then
    pass "analyses: 2 threads equal 1 thread, bitwise"
else fail "analyses: 2 threads differ from 1 or failed: $(cat "$tmp/err")"; fi
for sig in TERM KILL; do
    rm -f "$tmp/a$sig.h5" "$tmp/a$sig.h5.journal"
    "$bin" run "$tmp/acfg.json" -o "$tmp/a$sig.h5" --quiet --chunk-prompts 1 2>/dev/null &
    pid=$!
    for _ in $(seq 200); do [ -s "$tmp/a$sig.h5.journal" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.02; done
    kill -$sig "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    [ -e "$tmp/a$sig.h5" ] && echo "note: the analyses run finished before SIG$sig arrived"
    if "$bin" run "$tmp/acfg.json" -o "$tmp/a$sig.h5" --quiet --chunk-prompts 3 2>"$tmp/err" && compare "$tmp/a$sig.h5" "$tmp/aref.h5"; then
        pass "analyses: SIG$sig, then resumed: equal to an uninterrupted run"
    else fail "analyses: resume after SIG$sig differs or failed: $(cat "$tmp/err")"; fi
done
"$bin" run "$tmp/scfg.json" -o "$tmp/sref.h5" --quiet 2>"$tmp/err" || fail "analyses: reference run: $(cat "$tmp/err")"
for i in 0 1 2; do
    "$bin" run "$tmp/scfg.json" -o "$tmp/ashard$i.h5" --quiet --shard "$i/3" 2>"$tmp/err" || fail "analyses shard $i: $(cat "$tmp/err")"
done
if "$bin" merge "$tmp/amerged.h5" "$tmp"/ashard{1,2,0}.h5 2>"$tmp/err" && compare "$tmp/amerged.h5" "$tmp/sref.h5"; then
    pass "analyses: 3 shards merged equal one run"
else fail "analyses: merged shards differ from one run: $(cat "$tmp/err")"; fi

# --- blocks of prompts (batch_prompts): rows of 5 prompts share calls, and chunks, shards and resuming keep ---
# blocks whole, so every way of cutting the run gives the same bits (and the values agree with one prompt a call).
sed 's/"threads": 1,/"threads": 1,\n  "batch_prompts": 5,/' "$tmp/cfg.json" >"$tmp/bcfg.json"
grep -q '"batch_prompts": 5' "$tmp/bcfg.json" || fail "bcfg.json: batch_prompts not set"
"$bin" run "$tmp/bcfg.json" -o "$tmp/bref.h5" --quiet 2>"$tmp/err" || fail "batch_prompts 5: $(cat "$tmp/err")"
for cp in 1 7; do
    if "$bin" run "$tmp/bcfg.json" -o "$tmp/bc$cp.h5" --quiet --chunk-prompts $cp 2>"$tmp/err" && compare "$tmp/bc$cp.h5" "$tmp/bref.h5"; then
        pass "batch_prompts 5, chunks of $cp prompts: equal to chunks of 16, bitwise"
    else fail "batch_prompts 5, chunks of $cp: $(cat "$tmp/err")"; fi
done
for i in 0 1 2; do
    "$bin" run "$tmp/bcfg.json" -o "$tmp/bshard$i.h5" --quiet --shard "$i/3" 2>"$tmp/err" || fail "batch_prompts shard $i: $(cat "$tmp/err")"
done
if "$bin" merge "$tmp/bmerged.h5" "$tmp"/bshard{2,0,1}.h5 2>"$tmp/err" && compare "$tmp/bmerged.h5" "$tmp/bref.h5"; then
    pass "batch_prompts 5: 3 shards merged equal one run, bitwise"
else fail "batch_prompts 5: merged shards differ from one run: $(cat "$tmp/err")"; fi
$py - "$tmp/bshard1.h5" "$tmp/bref.h5" "$tmp/ref.h5" <<'PY' && pass "batch_prompts 5: shard 1/3 holds blocks 1, 4, 7 (prompts 5-9, 20-24, 35-39); values within 1e-5 of one prompt a call" || fail "batch_prompts 5: shard blocks or values"
import sys, h5py, numpy as np
s, b, r = (h5py.File(p, "r") for p in sys.argv[1:])
v = s["results"]["resid_pre"]["values"][...]
ran = [i for i in range(v.shape[0]) if not np.all(np.isnan(v[i]))]
assert ran == [*range(5, 10), *range(20, 25), *range(35, 40)], ran
worst = 0.0
for name in b["results"]:
    x, y = b["results"][name]["values"][...], r["results"][name]["values"][...]
    assert np.array_equal(np.isnan(x), np.isnan(y)), name
    worst = max(worst, float(np.nanmax(np.abs(x - y))))
for name in b["baseline"]:  # the baselines run in the same blocks
    x, y = b["baseline"][name][...], r["baseline"][name][...]
    if x.dtype.kind == "f":
        assert not np.any(np.isnan(x)) and not np.any(np.isnan(y)), name
        worst = max(worst, float(np.max(np.abs(x - y))))
assert worst <= 1e-5, worst
print(f"  max |5 prompts a call - 1 prompt a call| = {worst:.3g} (results and baselines)")
PY
rm -f "$tmp/bkill.h5" "$tmp/bkill.h5.journal"
"$bin" run "$tmp/bcfg.json" -o "$tmp/bkill.h5" --quiet --chunk-prompts 1 2>/dev/null &
pid=$!
for _ in $(seq 400); do [ -s "$tmp/bkill.h5.journal" ] && break; kill -0 "$pid" 2>/dev/null || break; sleep 0.01; done
kill -KILL "$pid" 2>/dev/null
wait "$pid" 2>/dev/null
[ -e "$tmp/bkill.h5" ] && echo "note: the batch_prompts run finished before SIGKILL arrived"
if "$bin" run "$tmp/bcfg.json" -o "$tmp/bkill.h5" --quiet --chunk-prompts 7 2>"$tmp/err" && compare "$tmp/bkill.h5" "$tmp/bref.h5"; then
    pass "batch_prompts 5: SIGKILL, resumed with other chunks: equal to an uninterrupted run"
else fail "batch_prompts 5: resume after SIGKILL differs or failed: $(cat "$tmp/err")"; fi

# --- dry run ------------------------------------------------------------------------------------------
if "$bin" run "$tmp/cfg.json" -o "$tmp/dry.h5" --dry-run >"$tmp/plan" 2>&1 && grep -q "estimated time" "$tmp/plan" &&
    grep -q "GFLOP" "$tmp/plan" && [ ! -e "$tmp/dry.h5" ] && [ ! -e "$tmp/dry.h5.journal" ]; then
    pass "dry run prints the plan and writes nothing"
else fail "dry run: $(cat "$tmp/plan")"; fi

if [ "$fails" -ne 0 ]; then echo "resume: $fails failure(s)"; exit 1; fi
echo "resume: all passed"
