#!/usr/bin/env bash
# Results never go silently stale: after a killed or a finished run, a changed dataset file, merges.txt, weights
# shard or model config.json makes the rerun refuse (exit 2, one line naming the file), merge refuses shards of
# different inputs, while whitespace and key order of the config change nothing; the hash cache is used.
. "$(dirname "$0")/bin_env.sh"

# --- inputs: a JSONL dataset, a vocab.json + merges.txt tokenizer, a plain and a sharded copy of the demo model ---
mkdir -p "$tmp/m" "$tmp/sh" "$tmp/tok"
cp "$demo/config.json" "$demo/model.safetensors" "$demo/tokenizer.json" "$tmp/m/"
cp "$demo/config.json" "$demo/tokenizer.json" "$tmp/sh/"
"$py" - "$demo" "$tmp" <<'PY'
import json, struct, sys
demo, tmp = sys.argv[1], sys.argv[2]
with open(tmp + "/d.jsonl", "w") as f:
    for s in range(40):
        a = s % 20 + 1
        f.write(json.dumps({"clean": f"{a} {a+1} {a+2} {a+3}", "corrupted": f"{a} {a+1} {a+2} {a+2}",
                            "answer": f" {a+4}", "wrong": f" {a+3}"}) + "\n")
# GPT-2's two-file tokenizer from the demo's tokenizer.json.
tj = json.load(open(demo + "/tokenizer.json"))
vocab = dict(tj["model"]["vocab"])
for t in tj.get("added_tokens", []):
    vocab[t["content"]] = t["id"]
json.dump(vocab, open(tmp + "/tok/vocab.json", "w"))
with open(tmp + "/tok/merges.txt", "w") as f:
    f.write("#version: 0.2\n")
    for m in tj["model"]["merges"]:
        f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
# Two shards and an index, split by hand (8-byte header length, JSON header, then the tensors' bytes).
b = open(demo + "/model.safetensors", "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n]); data = b[8 + n:]
h.pop("__metadata__", None)
names = sorted(h, key=lambda k: h[k]["data_offsets"][0])
wm = {}
for i, part in enumerate([names[:len(names) // 2], names[len(names) // 2:]]):
    fn = "model-%05d-of-00002.safetensors" % (i + 1)
    hh, chunks, off = {}, [], 0
    for k in part:
        s, e = h[k]["data_offsets"]
        chunks.append(data[s:e]); hh[k] = dict(h[k], data_offsets=[off, off + e - s]); off += e - s; wm[k] = fn
    hb = json.dumps(hh).encode(); hb += b" " * ((8 - len(hb) % 8) % 8)
    open(tmp + "/sh/" + fn, "wb").write(struct.pack("<Q", len(hb)) + hb + b"".join(chunks))
json.dump({"metadata": {"total_size": len(data)}, "weight_map": wm}, open(tmp + "/sh/model.safetensors.index.json", "w"))
PY
config() { # FILE MODEL [extra keys]: the dataset from d.jsonl, enough experiments for a journal of several records
    cat >"$1" <<JSON
{"model": "$2", "threads": 1, ${3:-}
 "dataset": {"path": "$tmp/d.jsonl"},
 "experiments": [{"name": "resid", "site": "resid_pre"}, {"name": "z", "site": "z", "by": "layer_pos_head"}]}
JSON
}
config "$tmp/c.json" "$tmp/m"
config "$tmp/tok.json" "$tmp/m" "\"tokenizer\": \"$tmp/tok/vocab.json\","
config "$tmp/sh.json" "$tmp/sh"

# A run killed part way: the journal stops at a file size limit (as in test_resume), leaving finished chunks.
killed() { # CONFIG OUT
    rm -f "$2" "$2.journal"
    ( trap '' XFSZ; ulimit -f 8; exec "$bin" run "$1" -o "$2" --quiet --chunk-prompts 1 ) 2>"$tmp/kill.err"
    local rc=$?
    [ "$rc" -eq 1 ] && [ -s "$2.journal" ] && [ ! -e "$2" ] || fail "no partial journal for $2: exit $rc: $(cat "$tmp/kill.err")"
}
refuses() { # DESCRIPTION PATTERN CONFIG OUT: exit 2 with exactly one line matching PATTERN, no results file made
    "$bin" run "$3" -o "$4" --quiet >/dev/null 2>"$tmp/err"
    local rc=$?
    if [ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/err")" -eq 1 ] && grep -q -- "$2" "$tmp/err"; then pass "$1: $(cat "$tmp/err")"
    else fail "$1: exit $rc, want 2 and /$2/: $(cat "$tmp/err")"; fi
}
swap_answers() { "$py" -c '
import json, sys
p = sys.argv[1]; rows = [json.loads(l) for l in open(p)]
for r in rows: r["answer"], r["wrong"] = r["wrong"], r["answer"]
open(p, "w").write("".join(json.dumps(r) + "\n" for r in rows))' "$tmp/d.jsonl"; }

# --- the dataset's bytes: answer and wrong swapped after a killed run, and after a finished one ---------------
killed "$tmp/c.json" "$tmp/d.h5"
cp "$tmp/d.jsonl" "$tmp/d.orig"
swap_answers
refuses "dataset swapped after a killed run" "dataset file $tmp/d.jsonl changed since the journal $tmp/d.h5.journal was written; --force recomputes" "$tmp/c.json" "$tmp/d.h5"
cp "$tmp/d.orig" "$tmp/d.jsonl"
"$bin" run "$tmp/c.json" -o "$tmp/d.h5" --quiet 2>"$tmp/err" && grep -q "resuming: " "$tmp/err" &&
    pass "the original dataset back: the killed run resumes" || fail "resume with the original dataset: $(cat "$tmp/err")"
swap_answers
refuses "dataset swapped after a finished run" "dataset file $tmp/d.jsonl changed since $tmp/d.h5 was written" "$tmp/c.json" "$tmp/d.h5"
cp "$tmp/d.orig" "$tmp/d.jsonl"

# --- merges.txt beside vocab.json ------------------------------------------------------------------------------
killed "$tmp/tok.json" "$tmp/t.h5"
sed -i '$d' "$tmp/tok/merges.txt" # the last merge dropped
refuses "merges.txt edited after a killed run" "tokenizer file $tmp/tok/merges.txt changed since the journal" "$tmp/tok.json" "$tmp/t.h5"

# --- one shard of a sharded checkpoint ------------------------------------------------------------------------
"$bin" run "$tmp/sh.json" -o "$tmp/s.h5" --quiet 2>"$tmp/err" || fail "sharded checkpoint run: $(cat "$tmp/err")"
"$py" -c "
import h5py, sys
w = h5py.File(sys.argv[1], 'r')['run'].attrs['weights_sha256']
w = w.decode() if isinstance(w, bytes) else w
sys.exit(len(w) != 64)" "$tmp/s.h5" 2>/dev/null && pass "/run weights_sha256 of a sharded checkpoint is set" || echo "note: h5py missing or weights_sha256 unset"
killed "$tmp/sh.json" "$tmp/s2.h5"
"$py" -c "
import sys
p = sys.argv[1]; b = bytearray(open(p, 'rb').read()); b[-4] ^= 1; open(p, 'wb').write(b)" "$tmp/sh/model-00002-of-00002.safetensors"
refuses "shard 2 of 2 edited after a finished run" "weights file $tmp/sh/model-00002-of-00002.safetensors changed since $tmp/s.h5" "$tmp/sh.json" "$tmp/s.h5"
refuses "shard 2 of 2 edited after a killed run" "weights file $tmp/sh/model-00002-of-00002.safetensors changed since the journal" "$tmp/sh.json" "$tmp/s2.h5"

# --- the model's config.json -------------------------------------------------------------------------------------
killed "$tmp/c.json" "$tmp/e.h5"
sed -i 's/"layer_norm_epsilon": 1e-05/"layer_norm_epsilon": 2e-05/' "$tmp/m/config.json"
grep -q '"layer_norm_epsilon": 2e-05' "$tmp/m/config.json" || fail "layer_norm_epsilon not edited"
refuses "layer_norm_epsilon edited after a killed run" "model config $tmp/m/config.json changed since the journal" "$tmp/c.json" "$tmp/e.h5"
cp "$demo/config.json" "$tmp/m/config.json"

# --- merge: shards computed from different dataset bytes ---------------------------------------------------------
"$bin" run "$tmp/c.json" -o "$tmp/p0.h5" --shard 0/2 --quiet 2>/dev/null
swap_answers
"$bin" run "$tmp/c.json" -o "$tmp/p1.h5" --shard 1/2 --quiet 2>/dev/null
cp "$tmp/d.orig" "$tmp/d.jsonl"
"$bin" merge "$tmp/merged.h5" "$tmp/p0.h5" "$tmp/p1.h5" >/dev/null 2>"$tmp/err"
rc=$?
[ "$rc" -eq 2 ] && grep -q "a shard of another run" "$tmp/err" && [ ! -e "$tmp/merged.h5" ] &&
    pass "merge refuses shards of different dataset bytes: $(cat "$tmp/err")" || fail "merge of mixed shards: exit $rc: $(cat "$tmp/err")"

# --- whitespace and key order: the same run --------------------------------------------------------------------
reformat() { "$py" -c '
import json, sys
c = json.load(open(sys.argv[1])); json.dump(c, open(sys.argv[2], "w"), indent=7, sort_keys=True)' "$1" "$2"; }
killed "$tmp/c.json" "$tmp/w.h5"
reformat "$tmp/c.json" "$tmp/c2.json"
"$bin" run "$tmp/c2.json" -o "$tmp/w.h5" --quiet 2>"$tmp/err" && grep -q "resuming: " "$tmp/err" &&
    pass "reformatted config after a killed run: resumes" || fail "reformatted config resume: $(cat "$tmp/err")"
"$bin" run "$tmp/c.json" -o "$tmp/w.h5" --quiet 2>"$tmp/err" && grep -q "complete .*nothing to do" "$tmp/err" &&
    pass "the original spelling after the reformatted run: $(cat "$tmp/err")" || fail "original config: $(cat "$tmp/err")"

# --- any key of any kind is part of the identity (the experiment's canonical JSON), not a list of known fields ---
pp() { # FILE FREEZE_MLPS
    cat >"$1" <<JSON
{"model": "$tmp/m", "threads": 1, "dataset": {"path": "$tmp/d.jsonl", "limit": 4},
 "experiments": [{"name": "pp", "kind": "path_patch", "senders": "heads", "receivers": "resid_post", "freeze_mlps": $2}]}
JSON
}
pp "$tmp/pp1.json" false
pp "$tmp/pp2.json" true
"$bin" run "$tmp/pp1.json" -o "$tmp/pp.h5" --quiet 2>"$tmp/err" || fail "path_patch run: $(cat "$tmp/err")"
"$bin" run "$tmp/pp2.json" -o "$tmp/pp.h5" --quiet 2>"$tmp/err" &&
    grep -q '^patchsweep: experiment "pp": config changed (field "freeze_mlps"), recomputing$' "$tmp/err" &&
    pass "path_patch's freeze_mlps changed after a finished run: recomputed, naming the field" ||
    fail "freeze_mlps changed: $(cat "$tmp/err")"

# --- the hash cache: used on the next run, keyed by the file's stat ------------------------------------------------
hc="$tmp/w.h5.hashes"
grep -q "^F [0-9a-f]\{64\} .* $tmp/m/model.safetensors\$" "$hc" && grep -q " $tmp/d.jsonl\$" "$hc" &&
    pass "the cache lists the weights and the dataset" || fail "cache contents: $(cat "$hc")"
before=$(stat -c '%i %Y.%y' "$hc")
"$bin" run "$tmp/c.json" -o "$tmp/w.h5" --quiet 2>/dev/null
[ "$before" = "$(stat -c '%i %Y.%y' "$hc")" ] && pass "an unchanged rerun leaves the cache file untouched" ||
    fail "cache rewritten by an unchanged rerun"
# A cached hash is believed while the stat matches: a poisoned entry is what the next run sees ...
sed -i "s|^F [0-9a-f]\{64\}\( .* $tmp/d.jsonl\)\$|F $(printf '0%.0s' $(seq 64))\1|" "$hc"
refuses "a poisoned cache entry is used (no rehash while size, mtime, inode match)" "dataset file $tmp/d.jsonl changed" "$tmp/c.json" "$tmp/w.h5"
# ... and a new mtime rehashes: the same bytes are the same run.
touch "$tmp/d.jsonl"
"$bin" run "$tmp/c.json" -o "$tmp/w.h5" --quiet 2>"$tmp/err" && grep -q "nothing to do" "$tmp/err" &&
    pass "a touched dataset is rehashed: same bytes, nothing to do" || fail "touched dataset: $(cat "$tmp/err")"
grep -q "^F 0\{64\}" "$hc" && fail "the poisoned entry survived a rehash" || pass "the rehash replaced the cache entry"

[ "$fails" -eq 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "all identity checks passed"
