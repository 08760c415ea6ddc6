#!/usr/bin/env bash
# The ablation and circuit_search kinds through the patchsweep binary: run tests/data/seqcont/ablation.json, the
# results file's tables against the library goldens (tests/data/demo/golden_ablation.json, where h5py exists),
# inspect, a resumed run, --shard (an ablation shards, a search does not), completeness and minimality
# (tests/data/demo/golden_circuit_scores.json), and bad input (one line naming the
# config path, exit status 2, no results file).
. "$(dirname "$0")/bin_env.sh"
data=$src/tests/data/seqcont
cfg=$data/ablation.json

# --- the run and what the file holds -------------------------------------------------------------
if "$bin" run "$cfg" -o "$tmp/abl.h5" --quiet 2>"$tmp/err"; then pass "run $cfg"; else fail "run: $(cat "$tmp/err")"; fi
"$bin" inspect "$tmp/abl.h5" >"$tmp/inspect" 2>&1 || fail "inspect: $(cat "$tmp/inspect")"
for want in "search: circuit_search" "shape: step 35 x field 4" "mean_per_position_sets: ablation" \
            "shape: prompt 12 x component 4" "component 3 'h1.2@pos+h0.0'" \
            "search.reference_means: reference_means" "shape: layer 4 x group 3 x pos 24 x unit 768" "circuit h0.0 h0.1 h0.2 h0.3 h1.0 h1.1 h1.3 h2.1 h2.2 h2.3 h3.2 mlp0"; do
    grep -qF -- "$want" "$tmp/inspect" && pass "inspect shows '$want'" || fail "inspect lacks '$want'"
done

if $py -c 'import h5py, numpy' 2>/dev/null; then
    if $py - "$tmp/abl.h5" "$src/tests/data/demo/golden_ablation.json" <<'EOF'
import sys, json, h5py, numpy as np
f, g = h5py.File(sys.argv[1], "r"), json.load(open(sys.argv[2]))
sets = {"h0.1": ("sets", 0), "mlp1": ("sets", 1), "n0.5": ("sets", 2), "h1.2@end+h0.0": ("sets", 3),
        "keep h0.0 h1.1 mlp0": ("keep1", 0), "keep h1.1@end mlp1": ("keep2", 0)}
clean = f["baseline/clean_metric"][()]
worst, worst_score, n = 0.0, 0.0, 0
for c in g["cases"]:
    suffix, cell = sets[c["set"]]
    name = c["method"] + ("_" + c["group"] if c["group"] else "") + "_" + suffix
    v = f["results/" + name + "/values"][:, cell]
    worst = max(worst, float(np.max(np.abs(v - np.array(c["values"])) / (1e-4 + 1e-4 * np.abs(c["values"])))))
    if clean is not None:
        worst_score = max(worst_score, abs(100 * v.mean() / clean.mean() - c["circuit_score"]) / max(1, abs(c["circuit_score"])))
    n += 1
s = f["results/search/values"][()]
labels = [x.decode() if isinstance(x, bytes) else x for x in f["results/search/step_label"][()]]
steps = g["search"]["steps"]
same = len(steps) == s.shape[0] and all(labels[i] == w["cand"] and int(s[i, 3]) == int(w["removed"]) and abs(s[i, 2] - w["score"]) < 1e-3
                                        for i, w in enumerate(steps))
print(f"file vs golden: {n} cases, max err / tolerance {worst:.3g}, circuit score max rel err {worst_score:.3g}; "
      f"search {s.shape[0]} steps, same as the reference: {same}")
sys.exit(0 if n == 36 and worst <= 1 and worst_score <= 1e-4 and same else 1)
EOF
    then pass "results file equals the goldens"; else fail "results file differs from the goldens"; fi
else
    echo "note: no h5py for $py; the file's values are checked by test_ablation_run instead"
fi

# same_values A.h5 B.h5 TOL: every /results table's values within TOL (NaN where both are NaN)
same_values() {
    $py - "$1" "$2" "$3" <<'EOF'
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
d = max(float(np.nanmax(np.abs(a["results/" + k + "/values"][()] - b["results/" + k + "/values"][()]))) for k in b["results"])
print(f"{sys.argv[1]} vs {sys.argv[2]}: max abs diff {d:.3g} over {len(b['results'])} tables")
sys.exit(0 if d <= float(sys.argv[3]) else 1)
EOF
}

# run_same BASE TOL WHAT: runs BASE.json into BASE.h5; its tables must equal the full run's (abl.h5) within TOL.
run_same() {
    if "$bin" run "$1.json" -o "$1.h5" --quiet 2>"$tmp/err"; then
        pass "$3 runs"
        if $py -c 'import h5py' 2>/dev/null; then
            same_values "$tmp/abl.h5" "$1.h5" "$2" && pass "$3: the same values" || fail "$3: other values"
        fi
    else
        fail "$3: $(cat "$tmp/err")"
    fi
}

# --- the naive engine (every row from the embedding) gives the same numbers ---------------------------
if "$bin" run "$cfg" -o "$tmp/naive.h5" --naive --quiet 2>"$tmp/err" && $py -c 'import h5py' 2>/dev/null; then
    same_values "$tmp/abl.h5" "$tmp/naive.h5" 1e-4 && pass "--naive equals the fast run" || fail "--naive differs from the fast run"
elif [ -s "$tmp/err" ]; then
    fail "--naive run: $(cat "$tmp/err")"
fi

# --- the search listed first: it keeps the clean baselines' runs only after the ablations have read them ------------
python3 - "$cfg" "$tmp/first.json" <<'EOF2'
import json, os, sys
c = json.load(open(sys.argv[1]))
c["experiments"] = [x for x in c["experiments"] if x["kind"] == "circuit_search"] + [x for x in c["experiments"] if x["kind"] != "circuit_search"]
d = os.path.dirname(os.path.abspath(sys.argv[1]))
for k in ("model",): c[k] = os.path.join(d, c[k]) if not os.path.isabs(c[k]) else c[k]
for x in [c["dataset"]] + [e.get("reference", {}) for e in c["experiments"]]:
    if isinstance(x, dict) and "path" in x and not os.path.isabs(x["path"]): x["path"] = os.path.join(d, x["path"])
json.dump(c, open(sys.argv[2], "w"))
EOF2
run_same "$tmp/first" 1e-4 "the search listed first"

# --- the search alone: the only reader of the clean runs, as its rows' bases, so they are held lean (PS_CACHE_LEAN) ----
python3 - "$tmp/first.json" "$tmp/alone.json" <<'EOF2'
import json, sys
c = json.load(open(sys.argv[1]))
c["experiments"] = [x for x in c["experiments"] if x["kind"] == "circuit_search"]
json.dump(c, open(sys.argv[2], "w"))
EOF2
run_same "$tmp/alone" 1e-5 "the search alone (lean clean runs)"

# --- a dataset without corrupted prompts (seqcont's own files have none): the experiments that never run them give
# the same values, the corrupted baselines are NaN and no corrupted token is stored; one that runs them is refused --
python3 - "$tmp/first.json" "$tmp/nocorr.json" "$tmp/nocorr.jsonl" "$tmp/nocorr_bad.json" <<'EOF2'
import json, sys
c = json.load(open(sys.argv[1]))
with open(c["dataset"]["path"]) as f, open(sys.argv[3], "w") as g:
    for line in f:
        if line.strip():
            r = json.loads(line); r.pop("corrupted"); g.write(json.dumps(r) + "\n")
c["dataset"]["path"] = sys.argv[3]
del c["dataset"]["fields"]["corrupted"]
c["experiments"] = [x for x in c["experiments"] if x.get("with") != "corrupted"]
json.dump(c, open(sys.argv[2], "w"))
c["experiments"].append({"name": "sweep", "site": "resid_pre"})
json.dump(c, open(sys.argv[4], "w"))
EOF2
if "$bin" run "$tmp/nocorr.json" -o "$tmp/nocorr.h5" 2>"$tmp/err"; then
    grep -q "no corrupted prompts" "$tmp/err" && pass "no corrupted prompts: runs ($(grep wrote "$tmp/err"))" \
        || fail "no corrupted prompts: the summary does not say so: $(cat "$tmp/err")"
    if $py -c 'import h5py' 2>/dev/null; then
        $py - "$tmp/abl.h5" "$tmp/nocorr.h5" <<'EOF2' && pass "no corrupted prompts: the same values, corrupted baselines NaN" || fail "no corrupted prompts: other values"
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
names = [k for k in b["results"]]
d = max(float(np.nanmax(np.abs(a["results/" + k + "/values"][()] - b["results/" + k + "/values"][()]))) for k in names)
clean = float(np.max(np.abs(a["baseline/clean_metric"][()] - b["baseline/clean_metric"][()])))
nan = all(bool(np.all(np.isnan(b["baseline/corrupted_" + k][()]))) for k in ("metric", "answer_logit", "wrong_logit"))
ids = b["prompts/corrupted_ids"][()] if "prompts/corrupted_ids" in b else None
no_ids = ids is not None and bool(np.all(ids == -1))
print(f"without corrupted prompts: {len(names)} tables, max abs diff {d:.3g}, clean baseline diff {clean:.3g}, "
      f"corrupted baseline all NaN {nan}, corrupted ids all -1 {no_ids}")
sys.exit(0 if len(names) >= 5 and d <= 1e-4 and clean <= 1e-5 and nan and no_ids else 1)
EOF2
    fi
else
    fail "no corrupted prompts: $(cat "$tmp/err")"
fi
out=$("$bin" run "$tmp/nocorr_bad.json" -o "$tmp/nocorr_bad.h5" 2>&1 >/dev/null); rc=$?
[ "$rc" -eq 2 ] && [ "$(wc -l <<<"$out")" -eq 1 ] && [ ! -e "$tmp/nocorr_bad.h5" ] &&
    grep -qF "nocorr_bad.json: experiments[" <<<"$out" && grep -qF "(kind patch_sweep) runs the corrupted prompts" <<<"$out" &&
    pass "a sweep over a dataset without corrupted prompts is refused ($out)" || fail "a sweep without corrupted prompts: exit $rc: $out"

# --- resume and shards ---------------------------------------------------------------------------
"$bin" run "$cfg" -o "$tmp/abl.h5" --quiet 2>"$tmp/err"; rc=$?
[ "$rc" -eq 0 ] && pass "a second run of a finished file ($(head -c 120 "$tmp/err"))" || fail "second run: exit $rc $(cat "$tmp/err")"
out=$("$bin" run "$cfg" -o "$tmp/sh.h5" --shard 0/2 --quiet 2>&1 >/dev/null); rc=$?
[ "$rc" -eq 2 ] && grep -q "search (kind circuit_search): its values are not per prompt" <<<"$out" && pass "--shard refuses the search ($out)" \
    || fail "--shard with a search: exit $rc: $out"
$py - "$cfg" "$tmp/shardable.json" "$data" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["model"] = sys.argv[3] + "/" + c["model"]
c["dataset"]["path"] = sys.argv[3] + "/" + c["dataset"]["path"]
c["experiments"] = [x for x in c["experiments"] if x["kind"] == "ablation" and x["name"].startswith(("resample", "mean_per_template"))]
for x in c["experiments"]:
    x["reference"]["path"] = sys.argv[3] + "/" + x["reference"]["path"]
json.dump(c, open(sys.argv[2], "w"))
EOF
ok=1
for i in 0 1; do "$bin" run "$tmp/shardable.json" -o "$tmp/s$i.h5" --shard $i/2 --quiet 2>"$tmp/err" || { ok=0; fail "shard $i: $(cat "$tmp/err")"; }; done
if [ $ok = 1 ] && "$bin" merge "$tmp/merged.h5" "$tmp/s0.h5" "$tmp/s1.h5" 2>"$tmp/err" && "$bin" run "$tmp/shardable.json" -o "$tmp/one.h5" --quiet 2>/dev/null; then
    if $py -c 'import h5py' 2>/dev/null; then
        same_values "$tmp/merged.h5" "$tmp/one.h5" 1e-5 && pass "two shards merged = one run (resample draws and template means per prompt)" \
            || fail "shards differ from one run"
    else pass "two shards merged"; fi
else
    fail "merge: $(cat "$tmp/err")"
fi

# --- completeness and minimality through the binary, against golden_circuit_scores.json -----------------
$py - "$cfg" "$tmp/scores.json" "$data" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["model"] = sys.argv[3] + "/" + c["model"]
c["dataset"]["path"] = sys.argv[3] + "/" + c["dataset"]["path"]
ref = [x for x in c["experiments"] if x["kind"] == "ablation" and x.get("with", "mean") == "mean"
       and x.get("grouping", "per_position") == "per_position"][0]["reference"]
ref["path"] = sys.argv[3] + "/" + ref["path"]
keep = ["h0.0", {"name": "h1.1", "positions": ["end"]}, "h1.0", "mlp0"]
extra = {"classes": {"movers": ["h1.1", "h1.0"]}, "completeness": ["h0.0", "movers", ["mlp0", "h1.1"]],
         "minimality": {"h1.1": ["h0.0"], "mlp0": "movers"}}
c["experiments"] = [dict(name="cm", kind="ablation", keep=keep, reference=ref, **extra),
                    dict(name="cz", kind="ablation", keep=keep, **{"with": "zero"}, **extra)]
json.dump(c, open(sys.argv[2], "w"))
EOF
if "$bin" run "$tmp/scores.json" -o "$tmp/scores.h5" --quiet 2>"$tmp/err"; then pass "run with completeness and minimality"; else fail "scores run: $(cat "$tmp/err")"; fi
"$bin" inspect "$tmp/scores.h5" >"$tmp/inspect" 2>&1 || fail "inspect: $(cat "$tmp/inspect")"
for want in "cm.completeness: circuit_scores" "shape: K 3 x field 3" "cz.minimality: circuit_scores" "shape: component 4 x field 4" \
            "shape: prompt 12 x component 16" "component 5 'M\\\\K[movers]'"; do
    grep -qF -- "$want" "$tmp/inspect" && pass "inspect shows '$want'" || fail "inspect lacks '$want'"
done
if $py -c 'import h5py, numpy' 2>/dev/null; then
    if $py - "$tmp/scores.h5" "$src/tests/data/demo/golden_circuit_scores.json" <<'EOF'
import sys, json, h5py, numpy as np
f, g = h5py.File(sys.argv[1], "r"), json.load(open(sys.argv[2]))
worst, n = 0.0, 0
for case, name in zip(g["cases"], ["cm", "cz"]):
    got = np.concatenate([f[f"results/{name}.completeness/values"][()].ravel(), f[f"results/{name}.minimality/values"][()].ravel()])
    want = np.array([x[k] for x in case["completeness"] for k in ("F_C_minus_K", "F_M_minus_K", "completeness")] +
                    [x[k] for x in case["minimality"] for k in ("F_C_minus_K", "F_C_minus_K_v", "abs_change", "minimality")])
    worst = max(worst, float(np.max(np.abs(got - want) / (1e-4 + 1e-4 * np.abs(want)))))
    n += want.size
print(f"completeness and minimality in the file vs TransformerLens: {n} values, max err / tolerance {worst:.3g}")
sys.exit(0 if n == 2 * 25 and worst <= 1 else 1)
EOF
    then pass "completeness and minimality tables equal the goldens"; else fail "completeness and minimality tables differ from the goldens"; fi
fi
out=$("$bin" run "$tmp/scores.json" -o "$tmp/sh.h5" --shard 0/2 --quiet 2>&1 >/dev/null); rc=$?
[ "$rc" -eq 2 ] && grep -q "cm.completeness (kind circuit_scores): its values are not per prompt" <<<"$out" && pass "--shard refuses the scores ($out)" \
    || fail "--shard with circuit scores: exit $rc: $out"

# --- heads at hook_result ("head_site": "result") against the same experiments at hook_z -----------------
# The same linear map for these ablations (result_h = z_h W_O[h]): every pair within 1e-5 abs+rel, the searches
# step for step. (TransformerLens at result is the golden of test_ablation; this is the binary's end to end.)
$py - "$cfg" "$tmp/result.json" "$data" <<'EOF'
import copy, json, sys
c = json.load(open(sys.argv[1]))
c["model"] = sys.argv[3] + "/" + c["model"]
c["dataset"]["path"] = sys.argv[3] + "/" + c["dataset"]["path"]
keep = ("zero_sets", "mean_per_position_sets", "mean_per_template_position_keep1", "resample_keep2", "corrupted_sets", "search")
xs = [x for x in c["experiments"] if x["name"] in keep]
for x in xs:
    if "reference" in x:
        x["reference"]["path"] = sys.argv[3] + "/" + x["reference"]["path"]
    if x["kind"] == "circuit_search":
        x["passes"] = "one_each"
c["experiments"] = xs + [dict(copy.deepcopy(x), name=x["name"] + "_r", head_site="result") for x in xs]
json.dump(c, open(sys.argv[2], "w"))
EOF
if "$bin" run "$tmp/result.json" -o "$tmp/result.h5" --quiet 2>"$tmp/err"; then pass "run with heads at hook_result"; else fail "result run: $(cat "$tmp/err")"; fi
"$bin" inspect "$tmp/result.h5" >"$tmp/inspect" 2>&1 || fail "inspect: $(cat "$tmp/inspect")"
for want in "mean_per_position_sets_r.reference_means: reference_means" "shape: layer 4 x group 1 x pos 24 x unit 1152" "head_site result"; do
    grep -qF -- "$want" "$tmp/inspect" && pass "inspect shows '$want'" || fail "inspect lacks '$want'"
done
if $py -c 'import h5py, numpy' 2>/dev/null; then
    if $py - "$tmp/result.h5" <<'EOF'
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
worst, n = 0.0, 0
for k in f["results"]:
    if not k.endswith("_r"):
        continue
    a, b = f["results/" + k + "/values"][()], f["results/" + k[:-2] + "/values"][()]
    if k.startswith("search"):
        same = a.shape == b.shape and np.array_equal(a[:, 3], b[:, 3]) and np.allclose(a[:, 2], b[:, 2], rtol=1e-4, atol=1e-4)
        print(f"search at result vs at z: {a.shape[0]} steps, same removals: {same}, max score diff {np.max(np.abs(a[:, 2] - b[:, 2])):.3g}")
        worst = worst if same else 1e9
        continue
    worst = max(worst, float(np.max(np.abs(a - b) / (1e-5 + 1e-5 * np.abs(b)))))
    n += 1
print(f"hook_result vs hook_z: {n} ablation tables, max err / tolerance (1e-5) {worst:.3g}")
sys.exit(0 if n == 5 and worst <= 1 else 1)
EOF
    then pass "ablations at hook_result equal those at hook_z"; else fail "ablations at hook_result differ from those at hook_z"; fi
fi

# --- bad input: one line naming the config path, exit 2, no results file ----------------------------
expect_bad() {
    local name=$1 pattern=$2 conf=$3
    local out rc
    out=$("$bin" run "$conf" -o "$tmp/bad.h5" 2>&1 >/dev/null); rc=$?
    if [ "$rc" -ne 2 ]; then fail "$name: exit $rc, want 2: $out"; return; fi
    if ! grep -qF -- "$pattern" <<<"$out"; then fail "$name: message lacks '$pattern': $out"; return; fi
    if [ "$(printf '%s\n' "$out" | wc -l)" -ne 1 ]; then fail "$name: message is not one line: $out"; return; fi
    if [ -e "$tmp/bad.h5" ]; then fail "$name: left a results file"; rm -f "$tmp/bad.h5"; return; fi
    pass "$name ($out)"
}
# bad CONFIG_NAME JSON_EXPERIMENTS [REFERENCE_LINES_EDIT]: the test config with these experiments
mk() {
    $py - "$cfg" "$tmp/$1.json" "$data" "$2" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["model"] = sys.argv[3] + "/" + c["model"]
c["dataset"]["path"] = sys.argv[3] + "/" + c["dataset"]["path"]
c["experiments"] = json.loads(sys.argv[4].replace("@DATA", sys.argv[3]))
json.dump(c, open(sys.argv[2], "w"))
EOF
}
ref='{"path": "@DATA/randDS.jsonl", "fields": {"clean": "text", "template": "template"}}'
mk head "[{\"name\": \"k\", \"kind\": \"ablation\", \"keep\": [\"h0.1\", \"h9.1\"], \"reference\": $ref}]"
expect_bad "a circuit naming a layer the model lacks" "head.json: experiments[0] (k): keep[1]: h9.1: the model has layers 0..3" "$tmp/head.json"
mk headidx "[{\"name\": \"k\", \"kind\": \"ablation\", \"components\": [\"h0.7\"], \"with\": \"zero\"}]"
expect_bad "a head the model lacks" "headidx.json: experiments[0] (k): components[0]: h0.7: the model has heads 0..3" "$tmp/headidx.json"
echo '{"text": "Van done in 1."}' >"$tmp/short.jsonl"
mk len "[{\"name\": \"k\", \"kind\": \"ablation\", \"components\": [\"h0.1\"], \"reference\": {\"path\": \"$tmp/short.jsonl\", \"fields\": {\"clean\": \"text\"}}}]"
expect_bad "a per_position reference of another length" "len.json: experiments[0] (k): reference: per_position means need the reference prompts' length" "$tmp/len.json"
sed '4s/, "template": "[a-z]*"//' "$data/randDS.jsonl" >"$tmp/notmpl.jsonl"
mk tmpl "[{\"name\": \"k\", \"kind\": \"ablation\", \"components\": [\"h0.1\"], \"grouping\": \"per_template_position\", \"reference\": {\"path\": \"$tmp/notmpl.jsonl\", \"fields\": {\"clean\": \"text\", \"template\": \"template\"}}}]"
expect_bad "a template field missing from a reference prompt" "tmpl.json: experiments[0].reference: $tmp/notmpl.jsonl:line 4: field 'template' missing" "$tmp/tmpl.json"
mk name "[{\"name\": \"k\", \"kind\": \"ablation\", \"components\": [\"head3\"], \"with\": \"zero\"}]"
expect_bad "a malformed component" "name.json: experiments[0].components[0]: expected a component" "$tmp/name.json"
mk both "[{\"name\": \"k\", \"kind\": \"ablation\", \"components\": [\"h0.1\"], \"keep\": [\"h0.1\"], \"with\": \"zero\"}]"
expect_bad "components and keep" "both.json: experiments[0].keep: give either components" "$tmp/both.json"
mk noref '[{"name": "k", "kind": "circuit_search"}]'
expect_bad "mean without a reference" "noref.json: experiments[0].reference: required with \"with\": \"mean\"" "$tmp/noref.json"
mk circ '[{"name": "k", "kind": "ablation", "keep": {"path": "@DATA/../../../../shared/data/seqcont/results/numerals_circuit_thres_0.8.json"}, "with": "zero"}]'
if [ -f "$data/../../../../shared/data/seqcont/results/numerals_circuit_thres_0.8.json" ]; then
    expect_bad "the paper's GPT-2 circuit on the 4-layer demo model" "circ.json: experiments[0] (k): keep[1]: h1.5: the model has heads 0..3 per layer" "$tmp/circ.json"
fi

# completeness / minimality
sc='"keep": ["h0.0", "h1.1", "mlp0"], "with": "zero"'
mk k1 "[{\"name\": \"k\", \"kind\": \"ablation\", $sc, \"completeness\": [[\"h0.0\", \"h2.2\"]]}]"
expect_bad "a K outside the circuit" "k1.json: experiments[0] (k): completeness[0]: \"h2.2\" is not a component of the kept circuit" "$tmp/k1.json"
mk k2 "[{\"name\": \"k\", \"kind\": \"ablation\", $sc, \"completeness\": [\"nm\"]}]"
expect_bad "an unknown class" "k2.json: experiments[0].completeness[0]: expected a component of the circuit" "$tmp/k2.json"
mk k3 "[{\"name\": \"k\", \"kind\": \"ablation\", $sc, \"minimality\": {\"h1.1\": [\"h1.1\"]}}]"
expect_bad "K_v holding v" "k3.json: experiments[0] (k): minimality.h1.1: K holds h1.1 itself" "$tmp/k3.json"
mk k4 "[{\"name\": \"k\", \"kind\": \"ablation\", \"components\": [\"h0.0\"], \"with\": \"zero\", \"completeness\": [\"h0.0\"]}]"
expect_bad "completeness without keep" "k4.json: experiments[0].completeness: scores a kept circuit: needs \"keep\"" "$tmp/k4.json"
mk k5 "[{\"name\": \"k\", \"kind\": \"ablation\", $sc, \"minimality\": 3}]"
expect_bad "minimality neither true nor an object" "k5.json: experiments[0].minimality: expected true" "$tmp/k5.json"
mk k6 "[{\"name\": \"k\", \"kind\": \"ablation\", $sc, \"classes\": {\"h1.1\": [\"h0.0\"]}, \"completeness\": [\"h0.0\"]}]"
expect_bad "a class named like a component" "k6.json: experiments[0].classes.h1.1: a class name cannot be a component's name" "$tmp/k6.json"
mk k7 "[{\"name\": \"k\", \"kind\": \"ablation\", $sc, \"minimality\": {\"h3.3\": []}}]"
expect_bad "minimality of a component outside the circuit" "k7.json: experiments[0] (k): minimality.h3.3: \"h3.3\" is not a component of the kept circuit" "$tmp/k7.json"
mk k8 "[{\"name\": \"k\", \"kind\": \"ablation\", \"keep\": [\"h0.0\", \"h1.1\"], \"reference\": $ref, \"mlp_means\": \"under_head_ablation\", \"completeness\": [\"h0.0\"]}]"
expect_bad "completeness with seqcont's MLP means" "k8.json: experiments[0].completeness: takes MLP means over the reference run" "$tmp/k8.json"

# hook_result where it is not implemented, or wrong
mk hs1 "[{\"name\": \"k\", \"kind\": \"ablation\", \"components\": [\"h0.1\"], \"with\": \"zero\", \"head_site\": \"results\"}]"
expect_bad "a misspelt head site" "hs1.json: experiments[0].head_site:" "$tmp/hs1.json"
mk hs2 "[{\"name\": \"k\", \"kind\": \"ablation\", \"components\": [\"h0.4\"], \"with\": \"zero\", \"head_site\": \"result\"}]"
expect_bad "a head the model lacks, at result" "hs2.json: experiments[0] (k): components[0]: h0.4: the model has heads 0..3" "$tmp/hs2.json"
mk hs3 '[{"name": "k", "site": "result"}]'
expect_bad "a patch sweep at result" "hs3.json: experiments[0].site: patch_sweep does not patch hook_result" "$tmp/hs3.json"
mk hs4 '[{"name": "k", "kind": "attribution", "site": "result", "by": "layer_head"}]'
expect_bad "attribution at result" "hs4.json: experiments[0].site: attribution does not patch hook_result" "$tmp/hs4.json"
mk hs5 '[{"name": "k", "kind": "dla", "ablate": {"components": ["h0.1"], "with": "zero", "head_site": "result"}}]'
expect_bad "dla's ablate at result" "hs5.json: experiments[0].ablate.head_site: unknown key" "$tmp/hs5.json"

[ "$fails" -eq 0 ] && echo "ablation_cli: all passed" || echo "ablation_cli: $fails failed"
[ "$fails" -eq 0 ]
