#!/usr/bin/env bash
# Runs as a batch job sees them: progress lines in a log (stderr not a terminal, no carriage returns), this
# run's compute only after a resume, one run per output (the second refuses while the first holds the lock),
# and a run that computes nothing meaningful (NaN weights) failing instead of writing a file of NaNs.
# shellcheck source=tests/bin_env.sh
. "$(dirname "$0")/bin_env.sh"

cat >"$tmp/cfg.json" <<JSON
{"model": "$demo", "threads": 1,
 "dataset": [$(count_items 12)],
 "experiments": [{"name": "resid_pre", "site": "resid_pre"}, {"name": "heads", "site": "z", "by": "layer_head"}]}
JSON

# --- progress lines in a log ---------------------------------------------------------------------------------
"$bin" run "$tmp/cfg.json" -o "$tmp/p.h5" --chunk-prompts 2 --progress-every 0 2>"$tmp/err" || fail "progress run: $(cat "$tmp/err")"
n=$(grep -c '^patchsweep: progress: [0-9]*/13 prompts (.*%), [0-9]* patches in .* ([0-9.]* patches/s), ETA ' "$tmp/err")
if [ "$n" -eq 7 ] && ! grep -q $'\r' "$tmp/err" && grep -q 'progress: 13/13 prompts (100.0%)' "$tmp/err"; then
    pass "--progress-every 0: one line per chunk (7 for 13 prompts in chunks of 2), no carriage returns"
else fail "progress lines: $n of 7: $(cat "$tmp/err")"; fi
"$bin" run "$tmp/cfg.json" -o "$tmp/p2.h5" --chunk-prompts 2 2>"$tmp/err" || fail "default run: $(cat "$tmp/err")"
grep -q 'progress:' "$tmp/err" && fail "a run of under a second printed progress with the 60 s default: $(cat "$tmp/err")" \
    || pass "default interval (60 s): no progress line in a short run"
"$bin" run "$tmp/cfg.json" -o "$tmp/p3.h5" --chunk-prompts 2 --progress-every 0 --quiet 2>"$tmp/err" || fail "quiet run"
grep -q 'progress:' "$tmp/err" && fail "--quiet printed progress" || pass "--quiet prints no progress"

# --- after a resume, the compute of this run only -------------------------------------------------------------
gflop() { sed -n 's/^patchsweep: compute .* s, \([0-9.]*\) GFLOP (\([0-9.]*\) GFLOP\/s).*/\1 \2/p' "$1"; }
# The journal stops at a file size limit part way (as in test_resume), the second run resumes from it.
sed 's|"experiments": \[|"experiments": [{"name": "n", "site": "mlp_post", "layers": [0]}, |' "$tmp/cfg.json" >"$tmp/big.json"
"$bin" run "$tmp/big.json" -o "$tmp/full.h5" --chunk-prompts 1 2>"$tmp/err" || fail "reference run: $(cat "$tmp/err")"
read -r full_gf _ < <(gflop "$tmp/err")
( trap '' XFSZ; ulimit -f 8; exec "$bin" run "$tmp/big.json" -o "$tmp/r.h5" --chunk-prompts 1 ) 2>"$tmp/err1"
rc=$?
"$bin" run "$tmp/big.json" -o "$tmp/r.h5" --chunk-prompts 1 2>"$tmp/err2"
rc2=$?
read -r res_gf res_rate < <(gflop "$tmp/err2")
if [ "$rc" -eq 1 ] && [ "$rc2" -eq 0 ] && grep -q 'resuming: ' "$tmp/err2" && grep -q '(this run; ' "$tmp/err2" &&
    "$py" -c "import sys; f, r, rate = map(float, sys.argv[1:]); sys.exit(not (0 < r < f and rate < 1e5))" \
        "${full_gf:-0}" "${res_gf:-0}" "${res_rate:-1e9}"; then
    pass "resumed run reports its own compute ($res_gf of $full_gf GFLOP, $res_rate GFLOP/s)"
else fail "resume compute: rc $rc/$rc2, full ${full_gf:-?} resumed ${res_gf:-?} at ${res_rate:-?}: $(cat "$tmp/err1" "$tmp/err2")"; fi

# --- one run per output ----------------------------------------------------------------------------------------
if command -v flock >/dev/null; then
    ( exec 9>"$tmp/l.h5.lock"; flock 9; exec sleep 30 ) &   # (exec: the lock's holder is the pid killed below)
    holder=$!
    for _ in $(seq 50); do [ -e "$tmp/l.h5.lock" ] && break; sleep 0.1; done
    "$bin" run "$tmp/cfg.json" -o "$tmp/l.h5" 2>"$tmp/err"
    rc=$?
    kill "$holder" 2>/dev/null
    wait "$holder" 2>/dev/null
    if [ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "l.h5: another run (pid .*) is writing this output" "$tmp/err" &&
        [ ! -e "$tmp/l.h5" ]; then pass "a held lock (flock(1)) makes the run refuse: $(cat "$tmp/err")"
    else fail "held lock: exit $rc: $(cat "$tmp/err")"; fi
fi
# Two patchsweep runs: the first stopped (SIGSTOP) once it holds the lock, the second must refuse, naming its pid.
"$bin" run "$tmp/cfg.json" -o "$tmp/two.h5" --quiet --naive 2>"$tmp/err1" &
first=$!
for _ in $(seq 200); do [ -s "$tmp/two.h5.lock" ] && break; sleep 0.01; done
kill -STOP "$first" 2>/dev/null
"$bin" run "$tmp/cfg.json" -o "$tmp/two.h5" --quiet 2>"$tmp/err2"
rc=$?
kill -CONT "$first" 2>/dev/null
wait "$first"
rc1=$?
if [ "$rc" -eq 2 ] && grep -q "two.h5: another run (pid $first) is writing this output" "$tmp/err2" && [ "$rc1" -eq 0 ] &&
    [ -f "$tmp/two.h5" ] && [ ! -e "$tmp/two.h5.lock" ]; then
    pass "a second run on the same output refuses while the first runs; the first completes and removes its lock"
else fail "two runs: second exit $rc ($(cat "$tmp/err2")), first exit $rc1 ($(cat "$tmp/err1")), lock $(ls "$tmp"/two.h5.lock 2>&1)"; fi
# A lock file left by a killed run does not block the next one (flock dies with its process).
"$bin" run "$tmp/cfg.json" -o "$tmp/k.h5" --quiet --naive --chunk-prompts 1 2>/dev/null &
victim=$!
for _ in $(seq 200); do [ -s "$tmp/k.h5.lock" ] && break; sleep 0.01; done
kill -9 "$victim" 2>/dev/null
wait "$victim" 2>/dev/null
if "$bin" run "$tmp/cfg.json" -o "$tmp/k.h5" --quiet 2>"$tmp/err" && [ -f "$tmp/k.h5" ] && [ ! -e "$tmp/k.h5.lock" ]; then
    pass "the lock of a killed run is no obstacle"
else fail "stale lock: $(cat "$tmp/err")"; fi

# --- nothing meaningful computed ---------------------------------------------------------------------------------
mkdir "$tmp/nan"
cp "$demo/config.json" "$demo/tokenizer.json" "$tmp/nan/"
"$py" - "$demo/model.safetensors" "$tmp/nan/model.safetensors" <<'PY'
import json, struct, sys
b = bytearray(open(sys.argv[1], "rb").read())
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
t = h["transformer.ln_f.weight"] if "transformer.ln_f.weight" in h else h["ln_f.weight"]
s, e = t["data_offsets"]
b[8 + n + s:8 + n + e] = struct.pack("<f", float("nan")) * ((e - s) // 4)  # every logit becomes NaN
open(sys.argv[2], "wb").write(b)
PY
sed "s|\"model\": \"$demo\"|\"model\": \"$tmp/nan\"|" "$tmp/cfg.json" >"$tmp/nan.json"
"$bin" run "$tmp/nan.json" -o "$tmp/nan.h5" --quiet 2>"$tmp/err"
rc=$?
if [ "$rc" -eq 1 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q "nan: nothing meaningful was computed: every baseline and patched value is NaN" "$tmp/err" &&
    [ -z "$(ls "$tmp"/nan.h5* 2>/dev/null)" ]; then pass "NaN weights: exit 1, one line, no results file or journal"
else fail "NaN weights: exit $rc: $(cat "$tmp/err"); left: $(ls "$tmp"/nan.h5* 2>/dev/null)"; fi

if [ "$fails" -ne 0 ]; then echo "long runs: $fails failure(s)"; exit 1; fi
echo "long runs: all passed"
