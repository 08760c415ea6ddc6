#!/usr/bin/env bash
# End to end through the patchsweep binary: tokenize, run, inspect, naive vs fast, plot, and bad input
# (one line naming the file and field, exit status 2, no results file that looks complete).
. "$(dirname "$0")/bin_env.sh"
shared=${PS_SHARED:-$src/../shared/data}

# expect_bad NAME CONFIG_OR_ARGS... : exit status 2, one line on stderr containing PATTERN, no output file
expect_status() {
    local want=$1 pattern=$2 name=$3; shift 3
    local out
    out=$("$@" 2>&1 >/dev/null)
    local rc=$?
    if [ "$rc" -ne "$want" ]; then fail "$name: exit $rc, want $want: $out"; return; fi
    if ! grep -qF -- "$pattern" <<<"$out"; then fail "$name: message lacks '$pattern': $out"; return; fi
    if [ "$(printf '%s\n' "$out" | wc -l)" -ne 1 ]; then fail "$name: message is not one line: $out"; return; fi
    pass "$name ($out)"
}

# --- tokenize with the real GPT-2 tokenizer -------------------------------------------------------
tokjson=$shared/gpt2-tokenizer/tokenizer.json
if [ -f "$tokjson" ]; then
    [ "$("$bin" tokenize --tokenizer "$tokjson" --ids " 5")" = "642" ] && pass "tokenize ' 5' = 642" || fail "tokenize ' 5'"
    [ "$("$bin" tokenize --tokenizer "$tokjson" --ids "5")" = "20" ] && pass "tokenize '5' = 20" || fail "tokenize '5'"
    [ "$("$bin" tokenize --tokenizer "$tokjson" --ids --bos " 5")" = "50256 642" ] && pass "tokenize --bos" || fail "tokenize --bos"
    "$bin" tokenize --tokenizer "$shared/gpt2-tokenizer" "1 2 3 4" | grep -q '" 4"' && pass "tokenize shows token strings" \
        || fail "tokenize table"
elif [ "${CI:-}" = "true" ]; then
    fail "shared GPT-2 tokenizer missing with CI=true"
fi

# --- a run on the demo model ------------------------------------------------------------------------
cat >"$tmp/run.json" <<EOF
{
  "model": "$demo",
  "metric": "logit_diff",
  "dataset": [
    {"clean": "1 2 3 4", "corrupted": "1 2 3 3", "answer": " 5", "wrong": " 4"},
    {"clean": "January February March", "corrupted": "January February February", "answer": " April", "wrong": " March"},
    {"clean": "Monday Tuesday Wednesday Thursday", "corrupted": "Monday Tuesday Wednesday Wednesday", "answer": " Friday", "wrong": " Thursday"}
  ],
  "experiments": [
    {"name": "resid_pre", "site": "resid_pre", "by": "layer_pos"},
    {"name": "heads", "site": "z", "by": "layer_head"},
    {"name": "heads_noise", "site": "z", "by": "layer_head", "direction": "noise"},
    {"name": "neurons", "site": "mlp_post", "by": "layer_neuron", "layers": [0], "neurons": [0, 1, 2, 3, 4, 5, 6, 7]}
  ]
}
EOF
if "$bin" run "$tmp/run.json" -o "$tmp/fast.h5" --quiet 2>"$tmp/err"; then pass "run"; else fail "run: $(cat "$tmp/err")"; fi
[ -f "$tmp/fast.h5" ] && [ ! -e "$tmp/fast.h5.partial" ] && pass "results file complete, no .partial" || fail "results file"
"$bin" inspect "$tmp/fast.h5" >"$tmp/inspect" 2>&1 && grep -q "resid_pre" "$tmp/inspect" && pass "inspect" || fail "inspect: $(head -5 "$tmp/inspect")"
"$bin" run "$tmp/run.json" -o "$tmp/naive.h5" --quiet --naive 2>"$tmp/err" || fail "naive run: $(cat "$tmp/err")"
# Streamed weights, with no layer kept and with all kept, give the resident run's values bit for bit (the
# baselines' grouped call included).
if $py -c 'import h5py, numpy' 2>/dev/null; then
    for mb in 0 4096; do
        if "$bin" run "$tmp/run.json" -o "$tmp/streamed$mb.h5" --quiet --weights streamed --weights-cache-mb $mb 2>"$tmp/err" &&
            grep -q "streamed weights: .* layer conversions" "$tmp/err" &&
            $py "$src/tests/h5_same_values.py" "$tmp/fast.h5" "$tmp/streamed$mb.h5" >"$tmp/same" 2>&1; then
            pass "streamed weights (--weights-cache-mb $mb) equal resident bit for bit"
        else
            fail "streamed weights (--weights-cache-mb $mb): $(cat "$tmp/err" "$tmp/same" 2>/dev/null | head -5)"
        fi
    done
    # Streamed weights pack several prompts' batches into one call (each a group of its own); with 7 rows a
    # batch, prompts span several batches, so groups close mid-prompt and move to the front of the next call.
    # Still bit for bit the resident run's, which runs each batch alone.
    sed 's/"experiments": \[/"batch_rows": 7,\n  "experiments": [/' "$tmp/run.json" >"$tmp/run7.json"
    if "$bin" run "$tmp/run7.json" -o "$tmp/fast7.h5" --quiet 2>"$tmp/err" &&
        "$bin" run "$tmp/run7.json" -o "$tmp/streamed7.h5" --quiet --weights streamed --weights-cache-mb 0 2>"$tmp/err" &&
        grep -q "streamed weights: .* layer conversions" "$tmp/err" &&
        $py "$src/tests/h5_same_values.py" "$tmp/fast7.h5" "$tmp/streamed7.h5" >"$tmp/same" 2>&1; then
        pass "streamed weights, prompts' batches grouped into calls (7 rows a batch), equal resident bit for bit"
    else
        fail "streamed grouped batches: $(cat "$tmp/err" "$tmp/same" 2>/dev/null | head -5)"
    fi
fi

if $py -c 'import h5py, numpy' 2>/dev/null; then
    $py - "$tmp/fast.h5" "$tmp/naive.h5" <<'EOF' && pass "fast engine equals naive engine; file schema" || fail "fast vs naive / schema"
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
assert a["run"].attrs["status"] in (b"complete", "complete"), a["run"].attrs["status"]
assert "config" in a["run"], "config text missing"
for name in a["results"]:
    x, y = a["results"][name]["values"][...], b["results"][name]["values"][...]
    assert x.shape == y.shape, (name, x.shape, y.shape)
    d = np.nanmax(np.abs(x - y))
    assert np.array_equal(np.isnan(x), np.isnan(y)) and d <= 1e-4, (name, d)
    print(f"  {name}: shape {x.shape}, max |fast - naive| = {d:.2e}")
v = a["results"]["resid_pre"]["values"]
assert [d.label for d in v.dims] == ["prompt", "layer", "pos"], [d.label for d in v.dims]
# Denoising resid_pre at the last layer, last position restores the clean metric exactly.
vals, clean = v[...], a["baseline"]["clean_metric"][...]
L = vals.shape[1]
for i in range(vals.shape[0]):
    T = int(a["prompts"]["length"][i])
    assert abs(vals[i, L - 1, T - 1] - clean[i]) < 1e-3, (i, vals[i, L - 1, T - 1], clean[i])
EOF
    if $py -c 'import matplotlib' 2>/dev/null; then
        $py "$src/experiments/plot.py" "$tmp/fast.h5" -o "$tmp/png" >/dev/null 2>"$tmp/err" && [ -s "$tmp/png/resid_pre.png" ] \
            && pass "plot.py draws PNGs" || fail "plot.py: $(cat "$tmp/err")"
    fi
elif [ "${CI:-}" = "true" ]; then
    fail "h5py missing with CI=true (scripts/setup.sh installs python3-h5py)"
fi

# --- positions named by role, per prompt ---------------------------------------------------------------
ioi='{"clean": "When Mary and John went to the store, John gave a drink to", "corrupted": "When Mary and John went to the store, Paul gave a drink to", "answer": " Mary", "wrong": " John", "roles": {"IO": 2, "S2": 10}}'
cat >"$tmp/roles.json" <<JSON
{"model": "$demo", "dataset": [$ioi],
 "experiments": [{"name": "by_role", "site": "resid_pre", "positions": ["IO", "S2", "end"]},
                 {"name": "by_index", "site": "resid_pre", "positions": [2, 10, -1]}]}
JSON
if "$bin" run "$tmp/roles.json" -o "$tmp/roles.h5" --quiet 2>"$tmp/err"; then
    if $py -c 'import h5py' 2>/dev/null; then
        $py - "$tmp/roles.h5" <<'PY' && pass "role positions equal the same token indices" || fail "role positions"
import sys, h5py, numpy as np
r = h5py.File(sys.argv[1], "r")["results"]
# Equal rows at different places of one batch: equal up to the BLAS kernel's edge tiles (bitwise on some CPUs).
a, b = r["by_role"]["values"][...], r["by_index"]["values"][...]
err = np.abs(a - b) / (1e-5 + 1e-5 * np.abs(b))
assert a.shape == b.shape and np.all(err <= 1), (np.abs(a - b).max(), a, b)
labels = [x.decode() if isinstance(x, bytes) else x for x in r["by_role"]["pos_token"][...]]
assert labels[:2] == ["IO", "S2"], labels
PY
    fi
else fail "roles run: $(cat "$tmp/err")"; fi

# --- gradients: attribution next to the activation patching it estimates, edge attribution, plot --------------
cat >"$tmp/grad.json" <<JSON
{"model": "$demo", "dataset": [$ioi, {"clean": "1 2 3 4", "corrupted": "1 2 3 3", "answer": " 5", "wrong": " 4"}],
 "experiments": [{"name": "patch_z", "site": "z"},
                 {"name": "attr_z", "kind": "attribution", "site": "z"},
                 {"name": "attr_resid_noise", "kind": "attribution", "site": "resid_pre", "direction": "noise"},
                 {"name": "eap", "kind": "edge_attribution"},
                 {"name": "circ", "kind": "edge_circuit", "scores_from": "eap", "top_n": [50, 10]},
                 {"name": "circ_listed", "kind": "edge_circuit", "edges": ["input->logits"]}]}
JSON
if "$bin" run "$tmp/grad.json" -o "$tmp/grad.h5" --quiet 2>"$tmp/err"; then
    if $py -c 'import h5py' 2>/dev/null; then
        $py - "$tmp/grad.h5" <<'PY' && pass "attribution and edge attribution tables" || fail "attribution tables"
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
r = f["results"]
a, p = r["attr_z"], r["patch_z"]
assert a.attrs["kind"] in (b"attribution", "attribution") and a["values"].shape == p["values"].shape
# The linear estimate tracks activation patching on the demo model's heads.
x, y = a["mean_normalized"][...].ravel(), p["mean_normalized"][...].ravel()
assert np.corrcoef(x, y)[0, 1] > 0.5, np.corrcoef(x, y)
e = r["eap"]
assert [d.label for d in e["values"].dims] == ["prompt", "src", "dst"], [d.label for d in e["values"].dims]
n = int(e.attrs["n_edges"])
assert np.isfinite(e["values"][0]).sum() == n and np.isfinite(e["mean"][...]).sum() == n
# Noising resid_pre at layer 0 of the clean run: every position's estimate starts from the clean metric.
assert np.all(np.isfinite(r["attr_resid_noise"]["values"][...][:, 0, :2]))
# Circuits: metric and faithfulness per prompt; input -> logits alone is the clean embedding through the
# corrupted rest of the model.
c, l = r["circ"], r["circ_listed"]
assert c["values"].shape == (2, 2, 3) and np.all(np.isfinite(c["values"][...])), c["values"].shape
assert list(c["circuit"][...]) == [50, 10] and [d.label for d in c["values"].dims] == ["circuit", "item", "value"]
assert np.all(c["values"][0, :, 2] <= 50) and np.all(c["values"][1, :, 2] <= 10)
assert int(l.attrs["n_edges_kept"]) == 1 and np.all(np.isfinite(l["values"][...])) and l["values"].shape == (1, 2, 3)
PY
        if $py -c 'import matplotlib' 2>/dev/null; then
            $py "$src/experiments/plot.py" "$tmp/grad.h5" -o "$tmp/gpng" >/dev/null 2>"$tmp/err" && [ -s "$tmp/gpng/attr_z_vs_patch_z.png" ] \
                && [ -s "$tmp/gpng/eap.png" ] && pass "plot.py draws attribution against activation patching" || fail "plot.py: $(cat "$tmp/err")"
        fi
    fi
else fail "gradients run: $(cat "$tmp/err")"; fi

# --- bad input ---------------------------------------------------------------------------------------
bad() { # NAME PATTERN JSON
    printf '%s' "$3" >"$tmp/bad.json"
    rm -f "$tmp/bad.h5" "$tmp/bad.h5.partial"
    expect_status 2 "$2" "$1" "$bin" run "$tmp/bad.json" -o "$tmp/bad.h5"
    if [ -e "$tmp/bad.h5" ]; then fail "$1: left a results file"; fi
}
item='{"clean": "1 2 3 4", "corrupted": "1 2 3 3", "answer": " 5", "wrong": " 4"}'
bad "unknown key suggests" "did you mean 'model'" "{\"modle\": \"$demo\", \"dataset\": [$item]}"
bad "JSON syntax error has line:col" "line 3, column" "{\"model\": \"$demo\",
  \"dataset\": [$item],
  \"experiments\": [,]}"
bad "wrong type names the path" "threads" "{\"model\": \"$demo\", \"threads\": \"many\", \"dataset\": [$item]}"
bad "empty dataset" "dataset" "{\"model\": \"$demo\", \"dataset\": []}"
bad "missing model dir" "model: \"$tmp/nonexistent\" is not a directory" "{\"model\": \"$tmp/nonexistent\", \"dataset\": [$item]}"
bad "lengths differ: both tokenizations shown" "corrupted: [" "{\"model\": \"$demo\", \"dataset\": [{\"clean\": \"1 2 3 4\", \"corrupted\": \"1 2 3 3 3\", \"answer\": \" 5\", \"wrong\": \" 4\"}]}"
bad "layer out of range" "bad.json: experiments[0] (x): layers[0] = 99" "{\"model\": \"$demo\", \"dataset\": [$item], \"experiments\": [{\"name\": \"x\", \"site\": \"resid_pre\", \"layers\": [99]}]}"
bad "missing role names item and role" "positions[0] = \"S3\": dataset item 0 has no such role" "{\"model\": \"$demo\", \"dataset\": [$ioi], \"experiments\": [{\"name\": \"x\", \"site\": \"resid_pre\", \"positions\": [\"S3\"]}]}"
bad "unknown experiment kind suggests the nearest" 'experiments[0].kind: unknown kind "patch_swep" (did you mean "patch_sweep"?)' "{\"model\": \"$demo\", \"dataset\": [$item], \"experiments\": [{\"name\": \"x\", \"kind\": \"patch_swep\", \"site\": \"resid_pre\"}]}"
bad "multi_token needs the logprob metric" "multi_token" "{\"model\": \"$demo\", \"multi_token\": \"sum_logprob\", \"dataset\": [$item]}"
if ! nvidia-smi -L >/dev/null 2>&1; then # (on a GPU machine these would run on the GPU)
    bad "cuda without a GPU or build" "cuda" "{\"model\": \"$demo\", \"backend\": \"cuda\", \"dataset\": [$item]}"
    # A dry run plans a cuda config anyway (a login node): rows as the cuda backend runs them, no time.
    printf '{"model": "%s", "backend": "cuda", "precision": "bf16", "dataset": [%s], "experiments": [{"name": "x", "site": "z"}]}' \
        "$demo" "$item" >"$tmp/cuda.json"
    if "$bin" run "$tmp/cuda.json" --dry-run >"$tmp/plan" 2>"$tmp/err" && grep -q "planned on the CPU" "$tmp/plan" &&
        grep -q "MiB weights (bf16)" "$tmp/plan" && grep -q "estimated time     unknown" "$tmp/plan"; then
        pass "--dry-run of a cuda config without a GPU plans on the CPU"
    else fail "--dry-run of a cuda config without a GPU: $(cat "$tmp/plan" "$tmp/err")"; fi
fi
printf '{"model": "%s", "dataset": [{"clean": "1 2 \xff", "corrupted": "1 2 3", "answer": " 5", "wrong": " 4"}]}' "$demo" >"$tmp/bad.json"
expect_status 2 "byte" "invalid UTF-8 names the byte offset" "$bin" run "$tmp/bad.json" -o "$tmp/bad.h5"
expect_status 2 "nope.h5" "inspect of a missing file" "$bin" inspect "$tmp/nope.h5"
expect_status 2 "unknown command" "unknown command" "$bin" frobnicate

# --- the analyses end to end: dla, logit_lens and attention tables in the results file ------------------
printf '{"model": "%s", "dataset": [%s, {"clean": "2 3 4 5", "corrupted": "2 3 4 4", "answer": " 6", "wrong": " 5"}],
 "experiments": [{"name": "dla", "kind": "dla", "per_neuron": true}, {"name": "lens", "kind": "logit_lens", "top_k": 3},
  {"name": "att", "kind": "attention", "layers": [0, 3], "heads": [1], "positions": ["end", 2]},
  {"name": "dla_corr", "kind": "dla", "run": "corrupted"},
  {"name": "ov", "kind": "ov_scores", "tokens": [" 1", " 2", " 3", " 4"], "layers": [0], "top_k": 3},
  {"name": "ovp", "kind": "ov_scores", "tokens": [" 1", " 2", " 3", " 4"], "input": "prompts"},
  {"name": "hs", "kind": "head_scores"}]}' "$demo" "$item" >"$tmp/an.json"
if "$bin" run "$tmp/an.json" -o "$tmp/an.h5" --quiet 2>"$tmp/an.err"; then
    if $py -c 'import h5py, numpy' 2>/dev/null; then
        if out=$($py - "$tmp/an.h5" <<'PY' 2>&1
import sys, h5py, numpy as np
f = h5py.File(sys.argv[1], "r")
r, b = f["results"], f["baseline"]
d = r["dla"]
lab = [x.decode() for x in d["component_label"][:]]
assert d.attrs["kind"] in (b"dla", "dla"), d.attrs["kind"]
v = d["values"][:]                                    # (prompt, variant, component)
k, fb = lab.index("L0H0"), lab.index("final_bias")
for name, metric in (("dla", "clean_metric"), ("dla_corr", "corrupted_metric")):
    x = r[name]["values"][:, 1]
    err = np.abs(x[:, :k].sum(1) + x[:, fb] - b[metric][:]).max()
    assert err < 1e-4, (name, err)
lens = r["lens"]["values"][:]                         # (prompt, variant, stage, quantity)
assert lens.shape[1:] == (2, 9, 7), lens.shape
assert np.abs(lens[:, :, -1, 0] - b["clean_metric"][:][:, None]).max() < 1e-4
att = r["att"]["values"][:]                           # (prompt, layer, head, query, pos)
assert att.shape[1:4] == (2, 1, 2), att.shape
assert np.abs(np.nansum(att, -1) - 1).max() < 1e-5    # each query's pattern sums to 1
ov = r["ov"]["values"][:]                             # (layer, head, token, quantity): one row, not per prompt
assert ov.shape == (1, 4, 5, 7), ov.shape
assert [x.decode() for x in r["ov"]["token_label"][:]] == [" 1", " 2", " 3", " 4", "score"]
assert np.allclose(ov[:, :, 4, 0], 100 * ov[:, :, :4, 0].mean(-1)) and np.allclose(ov[:, :, 4, 1], 100 * ov[:, :, :3, 1].mean(-1))
ovp = r["ovp"]
assert ovp.attrs["occurrences"] == 5, ovp.attrs["occurrences"]   # ' 2' ' 3' ' 4' in "1 2 3 4", ' 3' ' 4' in "2 3 4 5"
assert np.isnan(ovp["values"][0, 0, 0, 0]) and not np.isnan(ovp["values"][0, 0, 1, 0])   # ' 1' never occurs
hs = r["hs"]["values"][:]                             # (layer, head, score): ARENA's detectors, means of probabilities
assert hs.shape == (4, 4, 5) and (hs >= 0).all() and (hs <= 1).all(), hs.shape
print("exact dla sum = logit diff (clean and corrupted runs), lens final stage = metric, patterns sum to 1, ov hit rates, ov over prompt occurrences, head scores")
PY
        ); then pass "analyses: $out"; else fail "analyses file: $out"; fi
    fi
else fail "analyses run: $(cat "$tmp/an.err")"; fi
# An analysis option is part of its experiment's identity: a changed top_k recomputes those experiments alone.
sed 's/"top_k": 3/"top_k": 2/' "$tmp/an.json" >"$tmp/an2.json" && cp "$tmp/an2.json" "$tmp/an.json"
if "$bin" run "$tmp/an.json" -o "$tmp/an.h5" --quiet 2>"$tmp/an.err" && grep -q '"lens": config changed (field "top_k"), recomputing' "$tmp/an.err" &&
    grep -q '"ov": config changed (field "top_k"), recomputing' "$tmp/an.err" && grep -q '"dla": unchanged, reused' "$tmp/an.err"; then
    pass "an analysis option changed recomputes its experiments only"
else fail "changed top_k: $(cat "$tmp/an.err")"; fi
# The study's config and its figure script (experiments/seqcont/): six figures from the stored tables.
if "$bin" run "$src/experiments/seqcont/demo.json" -o "$tmp/seqcont.h5" --quiet 2>"$tmp/sc.err"; then
    if $py -c 'import h5py, numpy, matplotlib' 2>/dev/null; then
        if $py "$src/experiments/seqcont/figures.py" "$tmp/seqcont.h5" -o "$tmp/scfig" >"$tmp/sc.out" 2>&1 &&
            [ "$(ls "$tmp/scfig"/*.png 2>/dev/null | wc -l)" -eq 6 ]; then pass "experiments/seqcont: figures.py drew 6 figures"
        else fail "experiments/seqcont/figures.py: $(cat "$tmp/sc.out")"; fi
    fi
else fail "experiments/seqcont/demo.json: $(cat "$tmp/sc.err")"; fi
bad "an analysis refuses patching keys" "experiments[0].site: only used with kind patch_sweep (this experiment is dla)" "{\"model\": \"$demo\", \"dataset\": [$item], \"experiments\": [{\"name\": \"x\", \"kind\": \"dla\", \"site\": \"z\"}]}"
bad "ov_scores: a member that is not one token shows its pieces" "tokens[0] = \"12345678\" is" "{\"model\": \"$demo\", \"dataset\": [$item], \"experiments\": [{\"name\": \"x\", \"kind\": \"ov_scores\", \"tokens\": [\"12345678\"]}]}"
bad "attention query outside every prompt" "experiments[0] (x): positions[0] = 40 is outside every prompt" "{\"model\": \"$demo\", \"dataset\": [$item], \"experiments\": [{\"name\": \"x\", \"kind\": \"attention\", \"positions\": [40]}]}"

if [ "$fails" -ne 0 ]; then echo "cli: $fails failure(s)"; exit 1; fi
echo "cli: all passed"
