#!/usr/bin/env bash
# Replays a list of bad inputs of every kind (config JSON, dataset files, a model's config.json, safetensors
# headers, tokenizer files, command-line flags, output paths) through the patchsweep binary and checks each one:
# exit status 2, exactly one line on stderr that names the file and the field or byte offset, no control
# characters in it, and nothing left behind (no results file, .partial, journal or lock). Runs under the
# sanitizer build too (PS_BIN), where a crash, a leak or UB changes the status.
# shellcheck source=tests/bin_env.sh
. "$(dirname "$0")/bin_env.sh"
cases=0 d=

I='{"clean": "1 2 3 4", "corrupted": "1 2 3 3", "answer": " 5", "wrong": " 4"}'
# begin NAME: a fresh directory holding m/ (the demo model as symlinks) and c.json (a good config using it).
begin() {
    name=$1
    cases=$((cases + 1))
    d=$tmp/case$cases
    mkdir -p "$d/m"
    for f in "$demo"/*; do ln -s "$f" "$d/m/"; done
    printf '{"model": "m", "dataset": [%s]}\n' "$I" >"$d/c.json"
    base_cfg=$demo/config.json
}
put() { rm -f "$d/$1"; printf '%s' "$2" >"$d/$1"; }   # put FILE TEXT (replaces a symlink with a real file)
cfg() { put c.json "$1"; }
# model_json 'python expression over c': the case model's config.json edited (c is the parsed dict).
model_json() {
    rm -f "$d/m/config.json"
    "$py" - "$base_cfg" "$d/m/config.json" "$1" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
exec(sys.argv[3])
open(sys.argv[2], "w").write(json.dumps(c))
PY
}
# st_file NAME HEADER_JSON [DATA_BYTES]: a safetensors file with that header text (no padding) and data.
st_file() {
    rm -f "$d/$1"
    "$py" - "$d/$1" "$2" "${3:-0}" <<'PY'
import struct, sys
h = sys.argv[2].encode("utf-8", "surrogateescape")
open(sys.argv[1], "wb").write(struct.pack("<Q", len(h)) + h + b"\0" * int(sys.argv[3]))
PY
}

# check PATTERN [ARGS...]: runs patchsweep ARGS (default: run c.json -o out.h5) in the case's directory.
check() {
    local pat=$1
    shift
    local args=("$@")
    [ ${#args[@]} -eq 0 ] && args=(run c.json -o out.h5)
    (cd "$d" && timeout 30 "$bin" "${args[@]}" </dev/null >"$d/.stdout" 2>"$d/.stderr")
    local rc=$? msg
    msg=$(cat "$d/.stderr")
    local left
    left=$(cd "$d" && find . -type f \( -name 'out.h5*' -o -name '*.partial' -o -name '*.journal' -o -name '*.lock' \
        -o -name '*.h5' \) -print | head -3 | tr '\n' ' ')
    if [ "$rc" -ne 2 ]; then fail "$name: exit $rc, want 2: $msg"
    elif [ "$(wc -l <"$d/.stderr")" -ne 1 ] || [ -n "$(tail -c1 "$d/.stderr")" ]; then fail "$name: not one line: $msg"
    elif LC_ALL=C grep -q '[[:cntrl:]]' <(tr -d '\n' <"$d/.stderr"); then fail "$name: control characters in: $(od -c "$d/.stderr" | head -3)"
    elif [ "${msg#patchsweep: }" = "$msg" ]; then fail "$name: does not start with 'patchsweep: ': $msg"
    elif ! grep -qF -- "$pat" <<<"$msg"; then fail "$name: lacks '$pat': $msg"
    elif [ -n "$left" ]; then fail "$name: left behind: $left"
    else [ -n "${VERBOSE:-}" ] && echo "ok: $name: $msg"
    fi
    rm -rf "$d"
}

start=$(date +%s)

# --- the config ---------------------------------------------------------------------------------------------
begin "config: syntax error";          cfg '{"model": "m",'; check "c.json: line 1"
begin "config: trailing comma";        cfg "{\"model\": \"m\", \"dataset\": [$I],}"; check "c.json: line 1, column"
begin "config: empty file";            cfg ''; check "c.json: line 1"
begin "config: top-level array";       cfg '[]'; check "c.json: expected a JSON object"
begin "config: text after the value";  cfg "{\"model\": \"m\", \"dataset\": [$I]} x"; check "c.json: line 1"
begin "config: unknown key";           cfg "{\"modle\": \"m\", \"dataset\": [$I]}"; check "c.json: modle"
begin "config: model missing";         cfg "{\"dataset\": [$I]}"; check "c.json: model"
begin "config: model not a string";    cfg "{\"model\": 3, \"dataset\": [$I]}"; check "c.json: model"
begin "config: model not a directory"; cfg "{\"model\": \"nope\", \"dataset\": [$I]}"; check "c.json: model"
begin "config: model is a file";       cfg "{\"model\": \"c.json\", \"dataset\": [$I]}"; check "c.json: model"
begin "config: threads 65536";         cfg "{\"model\": \"m\", \"threads\": 65536, \"dataset\": [$I]}"; check "c.json: threads: 65536"
begin "config: threads 4097";          cfg "{\"model\": \"m\", \"threads\": 4097, \"dataset\": [$I]}"; check "c.json: threads"
begin "config: threads negative";      cfg "{\"model\": \"m\", \"threads\": -1, \"dataset\": [$I]}"; check "c.json: threads"
begin "config: threads a string";      cfg "{\"model\": \"m\", \"threads\": \"4\", \"dataset\": [$I]}"; check "c.json: threads"
begin "config: threads 1.5";           cfg "{\"model\": \"m\", \"threads\": 1.5, \"dataset\": [$I]}"; check "c.json: threads"
begin "config: batch_rows 2^53";       cfg "{\"model\": \"m\", \"batch_rows\": 9007199254740992, \"dataset\": [$I]}"; check "c.json: batch_rows"
begin "config: batch_rows 1e300";      cfg "{\"model\": \"m\", \"batch_rows\": 1e300, \"dataset\": [$I]}"; check "c.json: batch_rows"
begin "config: batch_prompts 0";       cfg "{\"model\": \"m\", \"batch_prompts\": 0, \"dataset\": [$I]}"; check "c.json: batch_prompts"
begin "config: batch_prompts 65537";   cfg "{\"model\": \"m\", \"batch_prompts\": 65537, \"dataset\": [$I]}"; check "c.json: batch_prompts"
begin "config: backend unknown";       cfg "{\"model\": \"m\", \"backend\": \"tpu\", \"dataset\": [$I]}"; check "c.json: backend"
begin "config: precision unknown";     cfg "{\"model\": \"m\", \"precision\": \"fp8\", \"dataset\": [$I]}"; check "c.json: precision"
begin "config: metric unknown";        cfg "{\"model\": \"m\", \"metric\": \"acc\", \"dataset\": [$I]}"; check "c.json: metric"
begin "config: prepend_bos a string";  cfg "{\"model\": \"m\", \"prepend_bos\": \"yes\", \"dataset\": [$I]}"; check "c.json: prepend_bos"
begin "config: output a number";       cfg "{\"model\": \"m\", \"output\": 5, \"dataset\": [$I]}"; check "c.json: output"
begin "config: multi_token needs logprob"; cfg "{\"model\": \"m\", \"multi_token\": \"sum_logprob\", \"dataset\": [$I]}"; check "multi_token"
begin "config: dataset missing";       cfg '{"model": "m"}'; check "c.json: dataset"
begin "config: dataset empty";         cfg '{"model": "m", "dataset": []}'; check "c.json: dataset"
begin "config: dataset a string";      cfg '{"model": "m", "dataset": "d.jsonl"}'; check "c.json: dataset"
begin "config: item missing answer";   cfg '{"model": "m", "dataset": [{"clean": "a", "corrupted": "b", "wrong": "c"}]}'; check "c.json: dataset[0]"
begin "config: item empty clean";      cfg '{"model": "m", "dataset": [{"clean": "", "corrupted": "b", "answer": "c", "wrong": "d"}]}'; check "c.json: dataset[0]"
begin "config: \\u0000 in a prompt";   cfg '{"model": "m", "dataset": [{"clean": "1 2\u0000 3 4", "corrupted": "1 2 3 3", "answer": " 5", "wrong": " 4"}]}'
check "c.json: line 1, column 42: dataset[0].clean: \\u0000"
begin "config: \\u0000 in a key";      cfg "{\"model\": \"m\", \"dataset\": [$I], \"x\\u0000\": 1}"; check 'c.json: line 1, column'
begin "config: \\u0000 in the model";  cfg "{\"model\": \"m\\u0000x\", \"dataset\": [$I]}"; check "c.json: line 1, column 13: model: \\u0000"
begin "config: raw NUL byte";          printf '{"model": "m",\0 "dataset": []}' >"$d/c.json"; check "c.json: byte 14"
begin "config: invalid UTF-8";         printf '{"model": "m\xff", "dataset": []}' >"$d/c.json"; check "c.json: byte 12"
begin "config: ANSI escape and newline echoed"; cfg "{\"model\": \"no\\u001b[31mX\\nY\", \"dataset\": [$I]}"; check 'no\x1b[31mX\nY'
begin "config: experiments an object"; cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": {}}"; check "c.json: experiments"
begin "config: experiment without name"; cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"site\": \"z\"}]}"; check "c.json: experiments[0]"
begin "config: experiment bad name";   cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a/b\", \"site\": \"z\"}]}"; check "experiments[0].name"
begin "config: duplicate name";        cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"z\"}, {\"name\": \"a\", \"site\": \"z\"}]}"; check "experiments[1].name"
begin "config: unknown site";          cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"resid\"}]}"; check "experiments[0].site"
begin "config: layout misfit";         cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"resid_pre\", \"by\": \"layer_head\"}]}"; check "experiments[0].by"
begin "config: heads with layer_pos";  cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"resid_pre\", \"heads\": [0]}]}"; check "experiments[0].heads"
begin "config: empty layers";          cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"z\", \"layers\": []}]}"; check "experiments[0].layers"
begin "config: repeated layer";        cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"z\", \"layers\": [1, 1]}]}"; check "experiments[0].layers"
begin "config: layer out of range";    cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"z\", \"layers\": [99]}]}"; check "c.json: experiments[0] (a): layers[0] = 99"
begin "config: head out of range";     cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"z\", \"heads\": [4]}]}"; check "c.json: experiments[0] (a): heads[0]"
begin "config: missing role";          cfg "{\"model\": \"m\", \"dataset\": [$I], \"experiments\": [{\"name\": \"a\", \"site\": \"resid_pre\", \"positions\": [\"S2\"]}]}"; check "S2"
begin "config: lengths differ";        cfg '{"model": "m", "dataset": [{"clean": "1 2 3 4", "corrupted": "1 2 3 3 3", "answer": " 5", "wrong": " 4"}]}'; check "c.json: dataset item 0"
begin "config: clean == corrupted everywhere"; cfg '{"model": "m", "dataset": [{"clean": "1 2 3 4", "corrupted": "1 2 3 4", "answer": " 5", "wrong": " 4"}]}'; check "c.json: dataset: clean and corrupted give the same metric"
begin "config: tokenizer missing";     cfg "{\"model\": \"m\", \"tokenizer\": \"nope.json\", \"dataset\": [$I]}"; check "nope.json: cannot open"
begin "config: is a directory";        check ".: not a regular file (a directory)" run .
begin "config: is a FIFO";             mkfifo "$d/f.json"; check "f.json: not a regular file (a FIFO)" run f.json
begin "config: missing";               check "none.json: cannot open" run none.json
begin "config: /dev/zero";             check "/dev/zero: not a regular file (a character device)" run /dev/zero

# --- dataset files --------------------------------------------------------------------------------------------
ds() { cfg "{\"model\": \"m\", \"dataset\": {\"path\": \"$1\"${2:-}}}"; }
begin "jsonl: syntax error";           put d.jsonl "$I
{\"clean\": }"; ds d.jsonl; check "d.jsonl:line 2"
begin "jsonl: field missing";          put d.jsonl '{"clean": "a", "corrupted": "b", "answer": "c"}'; ds d.jsonl; check "d.jsonl:line 1"
begin "jsonl: field not a string";     put d.jsonl '{"clean": 1, "corrupted": "b", "answer": "c", "wrong": "d"}'; ds d.jsonl; check "d.jsonl:line 1"
begin "jsonl: \\u0000 in a field";     put d.jsonl "$I
{\"clean\": \"1 2 3 4\", \"corrupted\": \"1 2 3 3\", \"answer\": \" 5\\u0000\", \"wrong\": \" 4\"}"; ds d.jsonl; check "d.jsonl: line 2, column 59: answer: \\u0000"
begin "jsonl: text after the object";  put d.jsonl "$I $I"; ds d.jsonl; check "d.jsonl:line 1"
begin "jsonl: not an object";          put d.jsonl '[1, 2]'; ds d.jsonl; check "d.jsonl:line 1"
begin "jsonl: empty file";             put d.jsonl ''; ds d.jsonl; check "d.jsonl"
begin "jsonl: invalid UTF-8";          printf '{"clean": "\xc3\x28"}\n' >"$d/d.jsonl"; ds d.jsonl; check "d.jsonl: byte 11"
begin "jsonl: raw NUL";                printf '{"clean": "a\0"}\n' >"$d/d.jsonl"; ds d.jsonl; check "d.jsonl: byte 12"
begin "jsonl: a directory";            mkdir "$d/d.jsonl"; ds d.jsonl; check "not a regular file (a directory)"
begin "jsonl: a FIFO";                 mkfifo "$d/d.jsonl"; ds d.jsonl; check "not a regular file (a FIFO)"
begin "jsonl: missing";                ds none.jsonl; check "none.jsonl"
begin "csv: missing column";           put d.csv 'clean,corrupted,answer
a,b,c'; ds d.csv; check "d.csv"
begin "csv: unterminated quote";       put d.csv 'clean,corrupted,answer,wrong
"a,b,c,d'; ds d.csv; check "d.csv:line 2"
begin "csv: ragged row";               put d.csv 'clean,corrupted,answer,wrong
a,b,c'; ds d.csv; check "d.csv:line 2"
begin "csv: header only";              put d.csv 'clean,corrupted,answer,wrong'; ds d.csv; check "d.csv"
begin "json: not an array";            put d.json '{}'; ds d.json; check "d.json: expected a JSON array"
begin "json: element not an object";   put d.json '[1]'; ds d.json; check "d.json: [0]"
begin "json: syntax error";            put d.json '[{]'; ds d.json; check "d.json: line 1"
begin "json: \\u0000";                 put d.json '[{"clean": "\u0000", "corrupted": "b", "answer": "c", "wrong": "d"}]'; ds d.json; check "d.json: line 1, column 13: [0].clean: \\u0000"
begin "dataset: unknown format";       put d.jsonl "$I"; ds d.jsonl ', "format": "xml"'; check "c.json: dataset.format"
begin "dataset: unknown key";          put d.jsonl "$I"; ds d.jsonl ', "limt": 1'; check "c.json: dataset"
begin "dataset: negative offset";      put d.jsonl "$I"; ds d.jsonl ', "offset": -1'; check "c.json: dataset.offset"
begin "dataset: offset past the end";  put d.jsonl "$I"; ds d.jsonl ', "offset": 5'; check "d.jsonl"
begin "dataset: fields not an object"; put d.jsonl "$I"; ds d.jsonl ', "fields": 3'; check "c.json: dataset.fields"
begin "dataset: field renamed away";   put d.jsonl "$I"; ds d.jsonl ', "fields": {"clean": "text"}'; check "d.jsonl:line 1"
begin "dataset: corrupted file missing"; put d.jsonl "$I"; ds d.jsonl ', "corrupted": {"path": "x.jsonl"}'; check "x.jsonl"

# --- the model's config.json ----------------------------------------------------------------------------------
begin "model config: n_layer 1e9";     model_json 'c["n_layer"] = 1e9'; check "m/config.json: n_layer: 1000000000 is more than"
begin "model config: n_layer 0";       model_json 'c["n_layer"] = 0'; check "m/config.json: n_layer"
begin "model config: n_layer a string"; model_json 'c["n_layer"] = "4"'; check "m/config.json: n_layer"
begin "model config: n_layer missing"; model_json 'del c["n_layer"]'; check "m/config.json: n_layer"
begin "model config: n_head 3";        model_json 'c["n_head"] = 3'; check "m/config.json: n_embd"
begin "model config: vocab_size 2^25"; model_json 'c["vocab_size"] = 2**25'; check "m/config.json: vocab_size"
begin "model config: n_embd 1e12";     model_json 'c["n_embd"] = 1e12'; check "m/config.json: n_embd"
begin "model config: model_type";      model_json 'c["model_type"] = "bert"'; check "m/config.json: model_type"
begin "model config: activation";      model_json 'c["activation_function"] = "swiglu"'; check "m/config.json: activation_function"
begin "model config: epsilon 0";       model_json 'c["layer_norm_epsilon"] = 0'; check "m/config.json: layer_norm_epsilon"
begin "model config: \\u0000";         model_json 'c["model_type"] = "gpt2\0"'; check "m/config.json: line 1, column"
begin "model config: top-level array"; rm "$d/m/config.json"; put m/config.json '[]'; check "m/config.json"
begin "model config: syntax error";    rm "$d/m/config.json"; put m/config.json '{"n_layer": }'; check "m/config.json: line 1"
begin "model config: a FIFO";          rm "$d/m/config.json"; mkfifo "$d/m/config.json"; check "m/config.json: not a regular file (a FIFO)"
begin "model config: a directory";     rm "$d/m/config.json"; mkdir "$d/m/config.json"; check "m/config.json: not a regular file (a directory)"
begin "model config: missing";         rm "$d/m/config.json"; check "m/config.json"

# A GPT-NeoX model: begin_neox NAME is begin with m/ the tiny neox-tiny-a model and the GPT-NeoX tokenizer.
begin_neox() {
    begin "$1"
    rm -f "$d/m/"*
    for f in config.json model.safetensors; do ln -s "$src/tests/data/neox-tiny-a/$f" "$d/m/"; done
    ln -s "$src/tests/data/tokenizer/neox/tokenizer.json" "$d/m/"
    printf '{"model": "m", "dataset": [{"clean": "#$%%&", "corrupted": "#$%%%%", "answer": "(", "wrong": ")"}]}\n' >"$d/c.json"
    base_cfg=$src/tests/data/neox-tiny-a/config.json
}
begin_neox "neox config: odd rotary dims"; model_json 'c["rope_parameters"]["partial_rotary_factor"] = 0.3125'; check "m/config.json: rope_parameters.partial_rotary_factor: 0.3125 of a 16-wide head gives 5 rotary dimensions"
begin_neox "neox config: rotary_pct odd";  model_json 'del c["rope_parameters"]; c["rotary_pct"] = 0.0625'; check "m/config.json: rotary_pct"
begin_neox "neox config: hidden_act";      model_json 'c["hidden_act"] = "swiglu"'; check 'm/config.json: hidden_act: "swiglu" is not supported'
begin_neox "neox config: attention_bias";  model_json 'c["attention_bias"] = False'; check "m/config.json: attention_bias"
begin_neox "neox: query_key_value size"
rm -f "$d/m/model.safetensors"
"$py" - "$src/tests/data/neox-tiny-a/model.safetensors" "$d/m/model.safetensors" <<'PY'
import json, struct, sys
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
h = json.loads(raw[8:8 + n])
h["gpt_neox.layers.1.attention.query_key_value.weight"]["shape"] = [96, 128]  # same bytes, wrong shape
hb = json.dumps(h).encode()
open(sys.argv[2], "wb").write(struct.pack("<Q", len(hb)) + hb + raw[8 + n:])
PY
check 'query_key_value.weight": shape [96, 128] in the file, but'
begin_neox "neox: resid_mid of a parallel block"
printf '{"model": "m", "dataset": [{"clean": "#$%%&", "corrupted": "#$%%%%", "answer": "(", "wrong": ")"}], "experiments": [{"name": "mid", "site": "resid_mid", "by": "layer_pos"}]}\n' >"$d/c.json"
check "site resid_mid: this model runs attention and the MLP in parallel"
begin_neox "neox: edge_circuit edge from a parallel layer's heads to its MLP"
printf '{"model": "m", "dataset": [{"clean": "#$%%&", "corrupted": "#$%%%%", "answer": "(", "wrong": ")"}], "experiments": [{"name": "circ", "kind": "edge_circuit", "edges": ["input->logits", "a1.h2->m1"]}]}\n' >"$d/c.json"
check 'c.json: experiments[0] (circ): edges[1]: "a1.h2->m1" is no edge of this model'"'"'s graph: its attention and MLP are parallel'
begin_neox "neox: edge_circuit edge name of no node"
printf '{"model": "m", "dataset": [{"clean": "#$%%&", "corrupted": "#$%%%%", "answer": "(", "wrong": ")"}], "experiments": [{"name": "circ", "kind": "edge_circuit", "edges": ["a0.h9->logits"]}]}\n' >"$d/c.json"
check 'c.json: experiments[0] (circ): edges[0]: "a0.h9->logits" is no edge of the graph'
# EAP-IG graph files (hannamw/EAP-IG's to_json, run_eap_ig_circuits.py) of the other block layout, same shape (2 x 4):
# a parallel graph's edges all exist in a sequential model's graph, so its cfg.parallel_attn_mlp must be checked.
# graph_json FILE 'python over d': FILE (a graph file) edited into the case's g.json; graph_cfg: a circuit from it.
graph_json() {
    "$py" - "$src/tests/data/$1/golden_eap_ig_graph.json" "$d/g.json" "$2" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
exec(sys.argv[3])
open(sys.argv[2], "w").write(json.dumps(d))
PY
}
graph_cfg() {
    printf '{"model": "m", "dataset": [{"clean": "#$%%&", "corrupted": "#$%%%%", "answer": "(", "wrong": ")"}], "experiments": [{"name": "circ", "kind": "edge_circuit", "scores_file": "g.json", "top_n": 25}]}\n' >"$d/c.json"
}
begin_neox "neox: edge_circuit scores_file of a sequential model's graph"; graph_json gpt2-tiny-a ''; graph_cfg
check 'c.json: experiments[0] (circ): scores_file g.json: cfg.parallel_attn_mlp: false (a graph of sequential blocks, with the edges a<l>.h<h>->m<l>), but this model'"'"'s attention and MLP are parallel'
begin_neox "neox sequential: edge_circuit scores_file of a parallel model's graph"; model_json 'c["use_parallel_residual"] = False'
graph_json neox-tiny-a ''; graph_cfg
check 'c.json: experiments[0] (circ): scores_file g.json: cfg.parallel_attn_mlp: true (a graph of parallel attention and MLP, without the edges a<l>.h<h>->m<l>), but this model'"'"'s blocks are sequential'
begin_neox "neox: edge_circuit scores_file of a sequential graph without parallel_attn_mlp"
graph_json gpt2-tiny-a 'del d["cfg"]["parallel_attn_mlp"]'; graph_cfg
check 'c.json: experiments[0] (circ): scores_file g.json: edges.a0.h0->m0: no edge of this model'"'"'s graph: its attention and MLP are parallel'
begin_neox "neox: edge_circuit scores_file parallel_attn_mlp not a bool"; graph_json neox-tiny-a 'd["cfg"]["parallel_attn_mlp"] = 1'; graph_cfg
check 'g.json: cfg.parallel_attn_mlp: expected true or false, got 1'

# --- safetensors headers ------------------------------------------------------------------------------------
W=m/model.safetensors
begin "safetensors: empty file";       rm "$d/$W"; : >"$d/$W"; check "model.safetensors: byte 0"
begin "safetensors: 4 bytes";          rm "$d/$W"; printf 'abcd' >"$d/$W"; check "model.safetensors: byte 0"
begin "safetensors: length past EOF";  rm "$d/$W"; printf '\xff\0\0\0\0\0\0\0{}' >"$d/$W"; check "model.safetensors: byte 0: header length 255"
begin "safetensors: length 1";         rm "$d/$W"; printf '\1\0\0\0\0\0\0\0{}' >"$d/$W"; check "model.safetensors: byte 8"
begin "safetensors: header not JSON";  st_file "$W" '{"a": [}'; check "model.safetensors: byte"
begin "safetensors: header not UTF-8"; st_file "$W" $'{"\xff": 1}'; check "model.safetensors: byte 10"
begin "safetensors: unknown dtype";    st_file "$W" '{"wte.weight": {"dtype": "F9", "shape": [1], "data_offsets": [0, 4]}}' 4; check "model.safetensors"
begin "safetensors: offsets past the end"; st_file "$W" '{"wte.weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 400]}}' 4; check "model.safetensors"
begin "safetensors: shape != bytes";   st_file "$W" '{"wte.weight": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}' 4; check "model.safetensors"
begin "safetensors: \\u0000 in a name"; st_file "$W" '{"wte\u0000": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}' 4; check "model.safetensors: line 1, column 6: wte"
begin "safetensors: tensors missing";  st_file "$W" '{"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}' 4; check "model.safetensors"
begin "safetensors: a FIFO";           rm "$d/$W"; mkfifo "$d/$W"; check "model.safetensors: not a regular file (a FIFO)"
begin "safetensors: index not JSON";   rm "$d/$W"; put m/model.safetensors.index.json '{'; check "model.safetensors.index.json: line 1"

# --- tokenizers -----------------------------------------------------------------------------------------------
tokcfg() { cfg "{\"model\": \"m\", \"tokenizer\": \"$1\", \"dataset\": [$I]}"; }
begin "tokenizer.json: syntax error";  put t.json '{"model": '; tokcfg t.json; check "t.json: line 1"
begin "tokenizer.json: Unigram";       put t.json '{"model": {"type": "Unigram", "vocab": []}}'; tokcfg t.json; check "t.json: model.type"
begin "tokenizer.json: vocab an array"; put t.json '{"model": {"type": "BPE", "vocab": [], "merges": []}}'; tokcfg t.json; check "t.json: model.vocab"
begin "tokenizer.json: id not an integer"; put t.json '{"model": {"type": "BPE", "vocab": {"a": 1.5}, "merges": []}}'; tokcfg t.json; check 't.json: model.vocab["a"]'
begin "tokenizer.json: merges missing"; put t.json '{"model": {"type": "BPE", "vocab": {"a": 0}}}'; tokcfg t.json; check "t.json: model.merges"
begin "tokenizer.json: bad merge";     put t.json '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a"]}}'; tokcfg t.json; check "t.json: model.merges[0]"
begin "tokenizer.json: merge not in vocab"; put t.json '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}'; tokcfg t.json; check "t.json: model.merges[0]"
begin "tokenizer.json: added_tokens"; put t.json '{"added_tokens": 3, "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}'; tokcfg t.json; check "t.json: added_tokens"
begin "tokenizer.json: \\u0000 token"; put t.json '{"model": {"type": "BPE", "vocab": {"\u0000": 0}, "merges": []}}'; tokcfg t.json; check "t.json: line 1, column 38: model.vocab.\\u0000"
begin "tokenizer.json: dropout";       put t.json '{"model": {"type": "BPE", "dropout": 0.1, "vocab": {"a": 0}, "merges": []}}'; tokcfg t.json; check "t.json: model.dropout"
begin "tokenizer.json: a FIFO";        mkfifo "$d/t.json"; tokcfg t.json; check "t.json: not a regular file (a FIFO)"
begin "tokenizer.json in the model: a FIFO"; rm "$d/m/tokenizer.json"; mkfifo "$d/m/tokenizer.json"; check "m/tokenizer.json: not a regular file (a FIFO)"
begin "vocab.json: merges.txt missing"; mkdir "$d/v"; put v/vocab.json '{"a": 0, "b": 1}'; tokcfg v/vocab.json; check "v/merges.txt: cannot open"
begin "vocab.json: merges.txt a FIFO"; mkdir "$d/v"; put v/vocab.json '{"a": 0, "b": 1}'; mkfifo "$d/v/merges.txt"; tokcfg v/vocab.json; check "v/merges.txt: not a regular file (a FIFO)"
begin "merges.txt: one token";         mkdir "$d/v"; put v/vocab.json '{"a": 0, "b": 1, "ab": 2}'; put v/merges.txt '#version: 0.2
a'; tokcfg v/vocab.json; check "v/merges.txt: line 2"
begin "merges.txt: not in the vocab";  mkdir "$d/v"; put v/vocab.json '{"a": 0, "b": 1}'; put v/merges.txt 'a c'; tokcfg v/vocab.json; check "v/merges.txt: line 1"
begin "vocab.json: duplicate id";      mkdir "$d/v"; put v/vocab.json '{"a": 0, "b": 0}'; put v/merges.txt ''; tokcfg v/vocab.json; check 'v/vocab.json: vocab["b"]'
begin "vocab.json: sparse ids";        mkdir "$d/v"; put v/vocab.json '{"a": 0, "b": 9000000}'; put v/merges.txt ''; tokcfg v/vocab.json; check "v/vocab.json: vocab"
begin "tokenizer.model: garbage";      printf '\x0a\x05abc' >"$d/t.model"; tokcfg t.model; check "t.model: byte"
begin "tokenizer.model: bad varint";   printf '\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff' >"$d/t.model"; tokcfg t.model; check "t.model: byte"
begin "tokenizer.model: no pieces";    printf '\x12\x00' >"$d/t.model"; tokcfg t.model; check "t.model: pieces"
begin "tokenizer.model: wire type";    printf '\x0d\x00\x00\x00\x00' >"$d/t.model"; tokcfg t.model; check "t.model: byte"
begin "tokenizer_config.json: bad bos"; mkdir "$d/k"; cp "$demo/tokenizer.json" "$d/k/"; put k/tokenizer_config.json '{"bos_token": "<zz>"}'; tokcfg k; check "k/tokenizer_config.json: bos_token"
begin "tokenizer_config.json: syntax"; mkdir "$d/k"; cp "$demo/tokenizer.json" "$d/k/"; put k/tokenizer_config.json '{'; tokcfg k; check "k/tokenizer_config.json: line 1"
begin "tokenizer_config.json: a FIFO"; mkdir "$d/k"; cp "$demo/tokenizer.json" "$d/k/"; mkfifo "$d/k/tokenizer_config.json"; tokcfg k; check "k/tokenizer_config.json: not a regular file (a FIFO)"

# --- command-line flags ---------------------------------------------------------------------------------------
begin "--shard 0/4294967296";          check "--shard: '0/4294967296': N must be from 1 to" run c.json -o out.h5 --shard 0/4294967296
begin "--shard 1/4294967299";          check "--shard: '1/4294967299'" run c.json -o out.h5 --shard 1/4294967299
begin "--shard 18446744073709551617/2"; check "--shard: '18446744073709551617/2'" run c.json -o out.h5 --shard 18446744073709551617/2
begin "--shard 3/3";                   check "--shard: '3/3': I must be below N" run c.json -o out.h5 --shard 3/3
begin "--shard -1/2";                  check "--shard: '-1/2'" run c.json -o out.h5 --shard -1/2
begin "--shard 1/0";                   check "--shard: '1/0'" run c.json -o out.h5 --shard 1/0
begin "--shard 1/2x";                  check "--shard: '1/2x'" run c.json -o out.h5 --shard 1/2x
begin "--shard ' 1/2'";                check "--shard: ' 1/2'" run c.json -o out.h5 --shard ' 1/2'
begin "--shard 1";                     check "--shard: '1'" run c.json -o out.h5 --shard 1
begin "--chunk-prompts 0";             check "--chunk-prompts" run c.json -o out.h5 --chunk-prompts 0
begin "--chunk-prompts 1e3";           check "--chunk-prompts" run c.json -o out.h5 --chunk-prompts 1e3
begin "--progress-every -1";           check "--progress-every" run c.json -o out.h5 --progress-every -1
begin "unknown option";                check "unknown option" run c.json -o out.h5 --frobnicate
begin "two configs";                   check "one CONFIG" run c.json c.json -o out.h5
begin "no config";                     check "CONFIG" run
begin "unknown command with escapes";  check 'unknown command '"'"'x\x1b[2J\ny'"'" $'x\e[2J\ny'

# --- output paths ----------------------------------------------------------------------------------------------
begin "-o out/sub/";                   check "out/sub/: the output path ends in '/'" run c.json -o out/sub/
begin "-o ''";                         check "-o '': the output path is empty" run c.json -o ''
begin "-o a directory";                mkdir "$d/o"; check "o: the output path is a directory" run c.json -o o
begin "-o under a file";               check "c.json/x.h5: cannot use the output path" run c.json -o c.json/x.h5
begin "-o in a missing dir under a file"; check "c.json/a/x.h5" run c.json -o c.json/a/x.h5
begin "-o a FIFO";                     mkfifo "$d/o.h5"; check "o.h5: not a regular file (a FIFO)" run c.json -o o.h5
begin "-o /proc";                      check "/proc/x.h5: cannot create files in '/proc'" run c.json -o /proc/x.h5
begin "-o a long name";                check "the output's file name is too long" run c.json -o "$(printf 'x%.0s' $(seq 250)).h5"
begin "output in the config: a dir";   cfg "{\"model\": \"m\", \"output\": \"m\", \"dataset\": [$I]}"; check "m: the output path is a directory" run c.json
begin "output in the config: ends in /"; cfg "{\"model\": \"m\", \"output\": \"r/\", \"dataset\": [$I]}"; check "r/: the output path ends in '/'" run c.json
if [ "$(id -u)" != 0 ]; then
    begin "-o an unwritable directory"; mkdir "$d/ro"; chmod 555 "$d/ro"; check "cannot create files in 'ro'" run c.json -o ro/x.h5
fi

took=$(($(date +%s) - start))
echo "bad inputs: $cases replayed in ${took}s, $fails failure(s)"
[ "$cases" -ge 100 ] || { echo "FAIL: only $cases cases (the list must hold at least 100)"; exit 1; }
[ "$fails" -eq 0 ] || exit 1
