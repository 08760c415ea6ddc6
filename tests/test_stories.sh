#!/usr/bin/env bash
# The real pretrained Llama (models/stories260K, converted from llama2.c by tools/llama2c_to_hf.py): patchsweep must
# write llama2.c's greedy story from BOS exactly and tokenize as Hugging Face tokenizers (and run.c) do.
# Goldens: models/stories260K/golden_generate.json, made by tests/golden/make_stories260k_goldens.py.
set -u
bin=${PS_BIN:?PS_BIN must point at the patchsweep binary}
src=${PS_SRC:?PS_SRC must point at the source tree}
model=$src/models/stories260K
golden=$model/golden_generate.json
if [ ! -f "$model/model.safetensors" ] || [ ! -f "$golden" ]; then
    # It is committed: in CI a missing copy is a failure, elsewhere (a partial checkout) a skip.
    if [ "${CI:-}" = "true" ]; then echo "FAIL: $model (model.safetensors, golden_generate.json) is missing"; exit 1; fi
    echo "SKIP: $model (model.safetensors, golden_generate.json) is missing"
    exit 77
fi
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
command -v "$py" >/dev/null || { echo "FAIL: python3 (standard library only) is needed to read $golden"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
pass() { echo "ok: $*"; }

# --- the story: greedy from BOS, stopping where the model emits BOS as llama2.c does -------------------------
# The golden text is tokenizers' decode of run.c's ids, which is also what run.c printed.
"$py" - "$golden" "$tmp" <<'EOF'
import json, sys
g = json.load(open(sys.argv[1], encoding="utf-8"))
open(sys.argv[2] + "/want.txt", "w", encoding="utf-8").write(g["text"] + "\n")
open(sys.argv[2] + "/n_new", "w").write(str(g["n_new_tokens"]))
with open(sys.argv[2] + "/cases", "wb") as f:   # NUL-separated: text, expected ids
    for c in g["tokenize"]:
        f.write(c["text"].encode("utf-8") + b"\0" + " ".join(map(str, c["ids"])).encode() + b"\0")
EOF
n_new=$(cat "$tmp/n_new")
"$bin" generate --model "$model" --max-new-tokens $((n_new + 50)) >"$tmp/got.txt" 2>"$tmp/err.txt"
rc=$?
if [ $rc -ne 0 ]; then
    fail "generate exited $rc: $(head -c 500 "$tmp/err.txt")"
elif cmp -s "$tmp/got.txt" "$tmp/want.txt"; then
    pass "generate from BOS writes llama2.c's story ($n_new tokens, stops at BOS)"
else
    "$py" - "$tmp/want.txt" "$tmp/got.txt" <<'EOF'
import sys
w = open(sys.argv[1], encoding="utf-8", errors="replace").read()
g = open(sys.argv[2], encoding="utf-8", errors="replace").read()
i = next((k for k in range(min(len(w), len(g))) if w[k] != g[k]), min(len(w), len(g)))
print(f"  story differs at character {i} (want {len(w)} chars, got {len(g)}):")
print(f"  want: ...{w[max(0, i - 60):i + 40]!r}")
print(f"  got:  ...{g[max(0, i - 60):i + 40]!r}")
EOF
    fail "generate: story differs from the golden"
fi
if [ $rc -eq 0 ]; then
    grep -q "patchsweep: $n_new tokens generated" "$tmp/err.txt" && pass "generate: $n_new new tokens" \
        || fail "generate: stderr does not say '$n_new tokens generated': $(cat "$tmp/err.txt")"
fi

# A shorter run stops at the limit: the first 20 tokens of the story are a prefix of it.
"$bin" generate --model "$model" --max-new-tokens 20 >"$tmp/short.txt" 2>"$tmp/err2.txt"
rc=$?
short=$(cat "$tmp/short.txt")
if [ $rc -ne 0 ]; then
    fail "generate --max-new-tokens 20 exited $rc: $(head -c 300 "$tmp/err2.txt")"
elif [ -n "$short" ] && [ "${short}" = "$(head -c ${#short} "$tmp/want.txt")" ] && grep -q "20 tokens generated" "$tmp/err2.txt"; then
    pass "generate --max-new-tokens 20: '$short'"
else
    fail "generate --max-new-tokens 20: '$short' is not a 20-token prefix of the story ($(cat "$tmp/err2.txt"))"
fi

# --- tokenization: ids as Hugging Face tokenizers and llama2.c's run.c encoder give them (no BOS) -------------
ntok=0 nbad=0
while IFS= read -r -d '' text && IFS= read -r -d '' want; do
    got=$("$bin" tokenize --model "$model" --ids -- "$text" 2>&1)
    ntok=$((ntok + 1))
    if [ "$got" != "$want" ]; then
        fail "tokenize $(printf '%q' "$text"): got '$got', want '$want'"
        nbad=$((nbad + 1))
    fi
done <"$tmp/cases"
[ $nbad -eq 0 ] && pass "tokenize: $ntok texts give the golden ids"
got=$("$bin" tokenize --model "$model" --ids --bos "Once upon a time" 2>&1)
[ "$got" = "1 403 407 261 378" ] && pass "tokenize --bos 'Once upon a time' = $got" \
    || fail "tokenize --bos 'Once upon a time': got '$got', want '1 403 407 261 378'"

# --- the demo config's prompts: clean and corrupted tokenize to the same length ------------------------------
cfg=$src/configs/llama_stories.json
if [ -f "$cfg" ]; then
    "$py" - "$cfg" >"$tmp/pairs" <<'EOF'
import json, sys
for it in json.load(open(sys.argv[1], encoding="utf-8"))["dataset"]:
    print(it["clean"]); print(it["corrupted"])
EOF
    npair=0 nbad=0
    while IFS= read -r clean && IFS= read -r corr; do
        a=$("$bin" tokenize --model "$model" --ids -- "$clean" 2>&1 | wc -w)
        b=$("$bin" tokenize --model "$model" --ids -- "$corr" 2>&1 | wc -w)
        npair=$((npair + 1))
        if [ "$a" != "$b" ]; then
            fail "configs/llama_stories.json: '$clean' ($a tokens) and '$corr' ($b tokens) differ in length"
            nbad=$((nbad + 1))
        fi
    done <"$tmp/pairs"
    [ $nbad -eq 0 ] && pass "configs/llama_stories.json: $npair clean/corrupted pairs tokenize to equal lengths"
fi

if [ $fails -ne 0 ]; then
    echo "$fails check(s) failed"
    exit 1
fi
echo "all stories260K checks passed"
