#!/usr/bin/env bash
# The studies of experiments/one_is_1/ and experiments/ioi/: each config on a few prompts of the demo model, then
# its figure script; asserts the figures and tables exist and a few numeric facts of the stored tables.
. "$(dirname "$0")/bin_env.sh"
shared=${PS_SHARED:-$src/../shared/data}
if ! $py -c 'import h5py, numpy, matplotlib' 2>/dev/null; then echo "studies: skipped (no h5py/numpy/matplotlib)"; exit 77; fi

# small CONFIG OUT: the study config with absolute paths and its dataset cut to 8 prompts
small() {
    $py - "$1" "$2" "$shared" <<'PY'
import json, os, sys
cfg_path, out, shared = sys.argv[1:]
d = os.path.dirname(os.path.abspath(cfg_path))
c = json.load(open(cfg_path))
c["model"] = os.path.normpath(os.path.join(d, c["model"]))
ds = c["dataset"]
fix = lambda p: os.path.join(shared, p.split("shared/data/", 1)[1]) if "shared/data/" in p else os.path.join(d, p)
ds["path"] = fix(ds["path"])
if "corrupted" in ds:
    ds["corrupted"]["path"] = fix(ds["corrupted"]["path"])
ds["limit"] = 8
for ex in c["experiments"]:            # the ablations' reference prompts (the means), 8 as well
    if "reference" in ex:
        ex["reference"]["path"], ex["reference"]["limit"] = fix(ex["reference"]["path"]), 8
json.dump(c, open(out, "w"))
PY
}

# --- One is 1 ---------------------------------------------------------------------------------------
if [ -f "$shared/seqcont/data/numerals/numerals_prompts_done.jsonl" ]; then
    small "$src/experiments/one_is_1/numerals.json" "$tmp/one.json"
    if "$bin" run "$tmp/one.json" -o "$tmp/one.h5" --quiet 2>"$tmp/err"; then pass "one_is_1: run"; else fail "one_is_1 run: $(cat "$tmp/err")"; fi
    if $py "$src/experiments/one_is_1/figures.py" "$tmp/one.h5" -o "$tmp/one" >"$tmp/one.out" 2>&1; then
        n=$(ls "$tmp/one"/*.png 2>/dev/null | wc -l)
        [ "$n" -eq 9 ] && [ -s "$tmp/one/table1_heads.txt" ] && pass "one_is_1: 9 figures and Table 1" || fail "one_is_1: $n figures, want 9: $(ls "$tmp/one")"
    else fail "one_is_1 figures.py: $(cat "$tmp/one.out")"; fi
    $py - "$tmp/one.h5" "$tmp/one/table1_heads.txt" "$tmp/one/table2_circuits.txt" <<'PY' && pass "one_is_1: DLA parts sum to the logit difference (answer_only: to the answer logit); Table 1 ranks every head; scatter inputs; Tables 2a/2b" || fail "one_is_1 facts"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
d = f["results/dla"]
comp = [c.decode() for c in d["component_label"][:]]
var = [v.decode() for v in d["variant_label"][:]]
parts = [i for i, c in enumerate(comp) if c in ("embed", "pos_embed", "final_bias") or c.endswith(("_attn_out", "_mlp_out"))]
total = d["values"][:, var.index("exact")][:, parts].sum(axis=1)
err = np.max(np.abs(total - f["baseline/clean_metric"][:]))
assert err < 1e-3, err
# answer_only: the same parts of the answer's logit alone sum to the clean run's answer logit
d = f["results/dla_answer"]
assert d.attrs["target"] in (b"answer", "answer")
err_a = np.max(np.abs(d["values"][:, var.index("exact")][:, parts].sum(axis=1) - f["baseline/clean_answer_logit"][:]))
assert err_a < 1e-3, err_a
rows = [l for l in open(sys.argv[2]).read().splitlines()[2:] if l.strip()]
g = f["results/heads"]
assert len(rows) == g["mean"].size, (len(rows), g["mean"].shape)
scores = [float(r.split()[2]) for r in rows]
assert scores == sorted(scores, reverse=True) and abs(scores[0] - np.nanmax(g["mean_normalized"][:])) < 1e-4
a = f["results/attention"]["values"][:]
assert np.nanmin(a) >= 0 and np.allclose(np.nansum(a, axis=-1)[..., :8], 1, atol=1e-4)
# Tables 2a/2b: the search's circuit and score, then every component of ablate_each scored
t2 = open(sys.argv[3]).read().splitlines()
assert t2[0].startswith("Table 2a") and "circuit:" in t2[1] and abs(float(t2[2].split()[1]) - f["results/circuit"].attrs["final_score"]) < 0.01
k = [i for i, l in enumerate(t2) if l.startswith("Table 2b")][0]
assert len(t2) - k - 2 == f["results/ablate_each/mean"].shape[0], t2
print(f"  DLA sum error {err:.2e}, {len(rows)} heads ranked")
PY
    $py - "$tmp/one.h5" <<'PY' && pass "one_is_1: neuroscope's top entries are the neurons table's largest cells, in order, labelled with their token" || fail "one_is_1 neuroscope facts"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
g, t = f["results/neuroscope"], f["results/neuroscope.top"]
acts, v, k = g["values"][:], t["values"][:], int(t.attrs["top_k"])
fields = [x.decode() for x in t["field_label"][:]]
lab = [x.decode() for x in t["entry_label"][:]]
A, P, S, T = (fields.index(x) for x in ("activation", "prompt", "pos", "token"))
for i in range(acts.shape[1]):
    cells = sorted((-float(acts[p, i, s]), p, s) for p in range(acts.shape[0]) for s in range(acts.shape[2]) if np.isfinite(acts[p, i, s]))[:k]
    got = [(-float(v[i * k + r, A]), int(v[i * k + r, P]), int(v[i * k + r, S])) for r in range(k)]
    assert got == cells, (i, got, cells)
    for r in range(k):
        p, s = int(v[i * k + r, P]), int(v[i * k + r, S])
        assert int(v[i * k + r, T]) == int(f["prompts/clean_ids"][p][s])
        assert "[[" + f["prompts/clean_tokens"][p][s].decode() + "]]" in lab[i * k + r], lab[i * k + r]
PY
elif [ "${CI:-}" = "true" ]; then fail "shared seqcont data missing with CI=true"
else echo "skip: one_is_1 (no $shared/seqcont)"; fi

# --- bad input of kinds neurons and dla's ablate: one line naming the config and the field, exit 2, no file ---
bad_run() {   # KIND KEYS PATTERN
    printf '{"model": "%s", "dataset": [{"clean": "1 2 3", "corrupted": "1 2 4", "answer": " 4", "wrong": " 5"}], "experiments": [{"name": "n", "kind": "%s", %s}]}' \
        "$src/models/demo" "$1" "$2" > "$tmp/bad.json"
    "$bin" run "$tmp/bad.json" -o "$tmp/bad.h5" --quiet 2>"$tmp/err"; rc=$?
    if [ "$rc" -eq 2 ] && [ "$(wc -l < "$tmp/err")" -eq 1 ] && grep -q "bad.json: experiments\[0\]$3" "$tmp/err" && [ ! -e "$tmp/bad.h5" ]; then
        pass "$1: refused $2"
    else fail "$1: $2 gave rc $rc: $(cat "$tmp/err")"; fi
}
for bad in '"neurons": ["3.x"]' '"neurons": ["3.1", "3.1"]' '"neurons": ["3.512"]' '"neurons": ["3.1"], "window": 65' '"neurons": ["3.1"], "top_k": 0' '"top_k": 3'; do
    bad_run neurons "$bad" '\.\(neurons\|window\|top_k\)'
done
bad_run dla '"ablate": 3' '\.ablate: expected an ablation block'
bad_run dla '"ablate": {"components": ["h1.0"], "with": "zero", "name": "x"}' '\.ablate\.name'
bad_run dla '"ablate": {"components": ["h9.0"], "with": "zero"}' ' (n): ablate\.components\[0\]'
bad_run dla '"ablate": {"components": ["h1.0"], "with": "mean"}' '\.ablate\.reference: required'
bad_run dla '"ablate": {"components": ["h1.0"], "with": "zero"}, "run": "corrupted"' '\.run: with "ablate"'
bad_run neurons '"neurons": ["1.1"], "ablate": {"components": ["h1.0"]}' '\.ablate: only used with kind dla'

# --- IOI ---------------------------------------------------------------------------------------------
small "$src/experiments/ioi/demo.json" "$tmp/ioi.json"
if "$bin" run "$tmp/ioi.json" -o "$tmp/ioi.h5" --quiet 2>"$tmp/err"; then pass "ioi: run"; else fail "ioi run: $(cat "$tmp/err")"; fi
if $py "$src/experiments/ioi/figures.py" "$tmp/ioi.h5" -o "$tmp/ioi" >"$tmp/ioi.out" 2>&1; then
    n=$(ls "$tmp/ioi"/*.png 2>/dev/null | wc -l)
    [ "$n" -eq 10 ] && pass "ioi: 10 figures" || fail "ioi: $n figures, want 10: $(ls "$tmp/ioi")"
else fail "ioi figures.py: $(cat "$tmp/ioi.out")"; fi
$py - "$tmp/ioi.h5" <<'PY' && pass "ioi: 8 prompts; path patching tables per sender head; the roles IO, S1, S2 found" || fail "ioi facts"
import importlib.util, os, sys, h5py, numpy as np
spec = importlib.util.spec_from_file_location("ioi_figures", os.path.join(os.environ["PS_SRC"], "experiments/ioi/figures.py"))
ioi = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ioi)   # its own import of the seqcont readers ("figures") stays distinct
roles = ioi.roles
f = h5py.File(sys.argv[1], "r")
assert f["prompts/length"].shape == (8,)
for n in ("path_resid", "path_nm_q", "path_sinh_q", "path_sinh_v"):
    m = f["results/" + n]["mean_normalized"]
    assert m.dims[0].label == "layer" and m.dims[-1].label == "head" and np.all(np.isfinite(m[:])), n
# senders lie below the last receiver's layer (ARENA): S-inhibition receivers in layer 1 leave layer 0 only
assert list(f["results/path_sinh_v/layer"][:]) == [0]
for i in range(8):
    r = roles(f, i)
    assert r["S1"] < r["S2"] and r["IO"] != r["S1"], r
PY
$py - "$tmp/ioi.h5" <<'PY' && pass "ioi: DLA of the name-mover-ablated run sums to the ablation kind's logit diff of the same run; the ablated heads' parts are 0" || fail "ioi backup name mover facts"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
d = f["results/dla_nm_ablated"]
comp = [c.decode() for c in d["component_label"][:]]
var = [v.decode() for v in d["variant_label"][:]]
parts = [i for i, c in enumerate(comp) if c in ("embed", "pos_embed", "final_bias") or c.endswith(("_attn_out", "_mlp_out"))]
total = d["values"][:, var.index("exact")][:, parts].sum(axis=1)
abl = f["results/nm_ablated/values"][:, 0]
err = np.max(np.abs(total - abl))
assert err < 1e-3, (err, total[:4], abl[:4])
assert np.max(np.abs(total - f["baseline/clean_metric"][:])) > 0.1   # the ablation changed the run
for h in ("L2H0", "L2H1", "L2H2"):
    assert np.all(d["values"][:, :, comp.index(h)] == 0), h
print(f"  ablated-run DLA sum vs ablation kind: {err:.2e}")
PY


if [ "$fails" -ne 0 ]; then echo "studies: $fails failure(s)"; exit 1; fi
echo "studies: all passed"
