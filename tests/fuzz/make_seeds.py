# Writes the fuzz seed corpus under tests/fuzz/corpus/<target>/ from the project's test data and the real tokenizers.
# Run from the repository root with the project venv: ~/.cache/ps-venv/bin/python tests/fuzz/make_seeds.py
# Needs /work/shared/data (or PS_SHARED) for the GPT-2 and Llama-2 tokenizers; tokenizers and sentencepiece check the
# trimmed tokenizers load in the reference libraries. Seeds only need to be valid or nearly valid inputs, not goldens.
import json
import os
import shutil
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHARED = os.environ.get("PS_SHARED", os.path.join(ROOT, "..", "shared", "data"))
OUT = os.path.join(ROOT, "tests", "fuzz", "corpus")


def put(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def jdump(o):
    return json.dumps(o, ensure_ascii=False, indent=1)


# ---- config (fuzz_config: d.jsonl, c.jsonl, d.csv, d.json exist beside the config) ----

def config_seeds():
    t = "fuzz_config"
    full = json.loads(read(os.path.join(ROOT, "tests/data/configs/full.json")))
    put(t, "full.json", jdump(full))
    put(t, "minimal.json", read(os.path.join(ROOT, "tests/data/configs/minimal.json")))
    put(t, "csv.json", '{"model": "m", "dataset": {"path": "d.csv"}, "experiments": []}')
    put(t, "json_items.json", '{"model": "m", "dataset": {"path": "d.json", "format": "json", "limit": 5}}')
    put(t, "jsonl_fields.json", jdump({
        "model": "/models/m",
        "dataset": {"path": "d.jsonl", "fields": {"clean": "text", "answer": "corr", "wrong": "incorr"},
                    "corrupted": {"path": "c.jsonl", "offset": 1, "field": "text"}, "offset": 0, "limit": 2}}))
    put(t, "jsonl_corrupted_fmt.json", jdump({
        "model": "m", "tokenizer": "tok",
        "dataset": {"path": "d.jsonl", "format": "jsonl", "corrupted": {"path": "c.jsonl", "format": "jsonl"}},
        "experiments": [{"name": "a", "site": "k", "by": "layer_pos_head", "heads": [0], "positions": ["end", -3]}]}))
    put(t, "roles.json", jdump({
        "model": "m",
        "dataset": [{"clean": "When Mary and John went to the store, John gave a drink to", "corrupted": "x y", "answer": " Mary",
                     "wrong": " John", "roles": {"IO": 2, "S1": 4, "S2": 10}},
                    {"clean": "a b", "corrupted": "a c", "answer": " b", "wrong": " c", "roles": {}}],
        "experiments": [{"name": "r", "site": "resid_pre", "positions": ["IO", "S2", "end", 0, -2]},
                        {"name": "h", "site": "z", "by": "layer_pos_head", "positions": ["S1"], "heads": [1]}]}))
    # Malformed: each stops at a different check.
    put(t, "bad_unknown_key.json", '{"model": "m", "modle": 1, "dataset": []}')
    put(t, "bad_dup_key.json", '{"model": "m", "model": "n", "dataset": [{"clean":"a","corrupted":"b","answer":"c","wrong":"d"}]}')
    put(t, "bad_bom_nul.json", b'\xef\xbb\xbf{"model": "m\x00", "dataset": []}')
    put(t, "bad_utf8.json", b'{"model": "\xc3\x28", "dataset": []}')
    put(t, "bad_syntax.json", '{"model": "m", "dataset": [{"clean": "a",]}')
    put(t, "bad_layout.json", jdump({"model": "m", "dataset": [{"clean": "a", "corrupted": "b", "answer": "c", "wrong": "d"}],
                                     "experiments": [{"name": "x", "site": "pattern", "by": "layer_pos", "neurons": [1, 1]}]}))
    put(t, "bad_numbers.json", '{"model": "m", "threads": 1e400, "batch_rows": -0.5, "dataset": [{"clean": "a", "corrupted": "b", '
                               '"answer": "c", "wrong": "d"}], "experiments": [{"name": "..", "site": "z", "layers": [9007199254740993]}]}')
    put(t, "bad_roles.json", '{"model": "m", "dataset": [{"clean": "a", "corrupted": "b", "answer": "c", "wrong": "d", '
                             '"roles": {"end": 1, "S": -1, "S": 1.5}}], "experiments": [{"name": "x", "site": "q", '
                             '"positions": ["S", "S", ""]}]}')
    put(t, "bad_missing_file.json", '{"model": "m", "dataset": {"path": "nope.jsonl", "corrupted": {"path": "c.txt"}}}')


# ---- model config.json ----

def model_config_seeds():
    t = "fuzz_model_config"
    for d in sorted(os.listdir(os.path.join(ROOT, "tests/data"))):
        p = os.path.join(ROOT, "tests/data", d, "config.json")
        if os.path.exists(p) and d.endswith("-a"):
            put(t, d + ".json", read(p))
    g = os.path.join(SHARED, "gpt2-tokenizer", "config.json")
    if os.path.exists(g):
        put(t, "gpt2-small.json", read(g))
    put(t, "mistral_gqa.json", jdump({
        "model_type": "mistral", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 8,
        "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 300, "max_position_embeddings": 4096,
        "sliding_window": 16, "rope_theta": 1e6, "rms_norm_eps": 1e-5, "bos_token_id": 1, "eos_token_id": [2, 5],
        "hidden_act": "silu", "rope_scaling": None, "torch_dtype": "bfloat16"}))
    put(t, "llama_arch_only.json", jdump({
        "architectures": ["LlamaForCausalLM"], "hidden_size": 48, "num_hidden_layers": 1, "num_attention_heads": 3,
        "head_dim": 32, "intermediate_size": 64, "vocab_size": 10, "max_position_embeddings": 8,
        "rope_parameters": {"rope_type": "default", "rope_theta": 500000.0}, "tie_word_embeddings": True}))
    put(t, "gpt2_n_ctx.json", '{"architectures": ["GPT2LMHeadModel"], "n_layer": 1, "n_head": 2, "n_embd": 8, '
                              '"vocab_size": 5, "n_ctx": 4, "n_inner": 16, "activation_function": "relu", "bos_token_id": 50256}')
    put(t, "bad_rope.json", '{"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, '
                            '"intermediate_size": 96, "vocab_size": 101, "max_position_embeddings": 64, '
                            '"rope_scaling": {"type": "yarn", "factor": 4}}')
    put(t, "bad_sizes.json", '{"model_type": "gpt2", "n_layer": 0, "n_head": 3, "n_embd": 64, "vocab_size": 1e300, "n_positions": -1}')
    put(t, "bad_syntax.json", '{"model_type": "gpt2", "n_layer": [1,')


# ---- safetensors ----

def st_bytes(tensors, meta=None, pad=True):
    """tensors: list of (name, dtype, shape, raw bytes)."""
    hdr, off, blob = {}, 0, b""
    if meta is not None:
        hdr["__metadata__"] = meta
    for name, dt, shape, raw in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        off += len(raw)
        blob += raw
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + blob


def safetensors_seeds():
    t = "fuzz_safetensors"
    f32 = struct.pack("<6f", 1, -2, 0.5, 3e38, -0.0, 1e-40)
    f16 = struct.pack("<4H", 0x3c00, 0x0001, 0x7c00, 0xfe01)
    bf16 = struct.pack("<3H", 0x3f80, 0xff80, 0x0001)
    f64 = struct.pack("<2d", 1e300, -1.5)
    i64 = struct.pack("<2q", 1, -1)
    put(t, "all_dtypes.safetensors", st_bytes([
        ("a.f32", "F32", [2, 3], f32), ("b.f16", "F16", [4], f16), ("c.bf16", "BF16", [3], bf16),
        ("d.f64", "F64", [2], f64), ("e.i64", "I64", [2], i64), ("f.i32", "I32", [1], b"\x01\0\0\0"),
        ("g.i16", "I16", [1], b"\x01\0"), ("h.i8", "I8", [1], b"\x01"), ("i.u8", "U8", [1], b"\xff"),
        ("j.bool", "BOOL", [1], b"\x01"), ("k.empty", "F32", [0, 5], b""), ("l.scalar", "F32", [], b"\0\0\x80\x3f")],
        meta={"format": "pt"}))
    put(t, "unpadded_unaligned.safetensors", st_bytes([("x", "F16", [1], b"\0\x3c"), ("y", "F32", [1], b"\0\0\x80\x3f")], pad=False))
    put(t, "gpt2_like.safetensors", st_bytes([
        ("h.0.attn.c_attn.weight", "F32", [2, 6], bytes(48)), ("wte.weight", "F32", [4, 2], bytes(32)),
        ("wpe.weight", "BF16", [2, 2], bytes(8))], meta={"generator": "make_seeds.py"}))
    g = read(os.path.join(ROOT, "tests/data/gpt2-tiny-a/golden_patch.safetensors"))
    put(t, "golden_patch_head.safetensors", g[:4096])   # truncated real file: header length past the end
    good = st_bytes([("a", "F32", [2], bytes(8)), ("b", "F32", [1], bytes(4))])
    put(t, "bad_truncated.safetensors", good[:-3])
    h = json.dumps({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                    "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}, separators=(",", ":")).encode()
    put(t, "bad_overlap.safetensors", struct.pack("<Q", len(h)) + h + bytes(8))
    h = json.dumps({"a": {"dtype": "F64", "shape": [4294967296, 4294967296, 2], "data_offsets": [0, 0]}},
                   separators=(",", ":")).encode()
    put(t, "bad_huge_shape.safetensors", struct.pack("<Q", len(h)) + h)
    put(t, "bad_len.safetensors", struct.pack("<Q", 2**63) + b"{}")
    # Sharded: the index names the fixed shards the target writes (a.safetensors: wte, b.safetensors: h.0.w).
    put(t, "index.json", jdump({"metadata": {"total_size": 16}, "weight_map": {"wte": "a.safetensors", "h.0.w": "b.safetensors"}}))
    put(t, "index_bad.json", jdump({"weight_map": {"wte": "b.safetensors", "x": "missing.safetensors"}}))


# ---- tokenizers ----

def gpt2_small_tokenizer(n_merges=50):
    """GPT-2's tokenizer.json cut to the 256 byte tokens, the first n merges and <|endoftext|>."""
    t = json.loads(read(os.path.join(SHARED, "gpt2-tokenizer", "tokenizer.json")))
    inv = {v: k for k, v in t["model"]["vocab"].items()}
    vocab = {inv[i]: i for i in range(256 + n_merges)}   # GPT-2's merge k makes token 256 + k
    merges = t["model"]["merges"][:n_merges]
    for m in merges:
        a, b = m if isinstance(m, list) else m.split(" ")
        assert a in vocab and b in vocab and a + b in vocab
    eot = 256 + n_merges
    vocab["<|endoftext|>"] = eot
    t["model"]["vocab"] = vocab
    t["model"]["merges"] = merges
    t["added_tokens"][0]["id"] = eot
    return t


def llama_small_tokenizer(n_merges=60):
    """Llama-2's tokenizer.json cut to <unk>, <s>, </s>, the byte tokens, single characters and the first merges
    that only need those (closure in merge order), renumbered densely."""
    t = json.loads(read(os.path.join(ROOT, "tests/data/tokenizer/llama2/tokenizer.json")))
    full = t["model"]["vocab"]
    keep = {p for p, i in full.items() if i < 259}
    singles = sorted((i, p) for p, i in full.items() if i >= 259 and len(p) == 1)[:80]
    keep |= {p for _, p in singles}
    merges = []
    for m in t["model"]["merges"]:
        a, b = m if isinstance(m, list) else m.split(" ")
        if a in keep and b in keep and a + b in full:
            merges.append([a, b])
            keep.add(a + b)
            if len(merges) == n_merges:
                break
    order = sorted(keep, key=lambda p: full[p])
    t["model"]["vocab"] = {p: i for i, p in enumerate(order)}
    t["model"]["merges"] = merges
    return t


def check_hf(tok_json, text):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        return
    tk = Tokenizer.from_str(json.dumps(tok_json))
    ids = tk.encode(text).ids
    assert ids, "empty encoding"


def tokenizer_json_seeds():
    t = "fuzz_tokenizer_json"
    g = gpt2_small_tokenizer()
    check_hf(g, "Hello there, the rain in Spain")
    put(t, "gpt2_50_merges.json", json.dumps(g, ensure_ascii=False))
    lt = llama_small_tokenizer()
    check_hf(lt, "Hello there, the rain in Spain \u00e9\U0001F600")
    put(t, "llama_60_merges.json", json.dumps(lt, ensure_ascii=False))
    # Metaspace pre-tokenizer and decoder (Mistral/newer Llama conversions), with lstrip/rstrip added tokens.
    m = json.loads(json.dumps(lt))
    m["normalizer"] = None
    m["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    m["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": False}
    m["added_tokens"].append({"id": len(m["model"]["vocab"]), "content": "<mask>", "single_word": False, "lstrip": True,
                              "rstrip": True, "normalized": True, "special": False})
    put(t, "metaspace.json", json.dumps(m, ensure_ascii=False))
    # Hand-made: tiny vocab, merges as "a b" strings, no pre-tokenizer, no decoder (HF joins tokens with spaces).
    tiny = {"version": "1.0", "added_tokens": [{"id": 5, "content": "[X]", "special": True, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False}],
            "normalizer": {"type": "Replace", "pattern": {"String": "\n"}, "content": " "}, "pre_tokenizer": None,
            "decoder": None, "model": {"type": "BPE", "dropout": None, "unk_token": "?", "fuse_unk": False,
                                       "byte_fallback": False, "vocab": {"?": 0, "a": 1, "b": 2, "ab": 3, "aba": 4},
                                       "merges": ["a b", "ab a"]}}
    check_hf(tiny, "abab xa")
    put(t, "tiny.json", jdump(tiny))
    put(t, "bad_merge.json", jdump({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a  b", ["a"]]}}))
    put(t, "bad_regex.json", jdump({"normalizer": {"type": "Replace", "pattern": {"Regex": "\\s+"}, "content": " "},
                                    "model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}}))
    put(t, "bad_ids.json", jdump({"added_tokens": [{"id": 300, "content": "x"}], "model": {"vocab": {"a": 2, "b": 2}, "merges": []}}))


def tokenizer_vocab_seeds():
    t = "fuzz_tokenizer_vocab"
    g = gpt2_small_tokenizer(40)
    vocab = json.dumps(g["model"]["vocab"], ensure_ascii=False).encode()
    merges = "#version: 0.2\n" + "".join(" ".join(m if isinstance(m, list) else m.split(" ")) + "\n" for m in g["model"]["merges"])
    put(t, "gpt2_40_merges", vocab + b"\0" + merges.encode())
    put(t, "crlf_no_version", vocab + b"\0" + merges.replace("#version: 0.2\n", "").replace("\n", "\r\n").encode())
    put(t, "no_merges", vocab)
    put(t, "bad_missing_byte", b'{"a": 0, "b": 1}\0a b\n')


def tokenizer_model_seeds():
    t = "fuzz_tokenizer_model"
    src = os.path.join(SHARED, "llama2-tokenizer", "tokenizer.model")
    data = read(src)
    try:
        from sentencepiece import sentencepiece_model_pb2 as pb
        import sentencepiece as spm
    except ImportError:
        pb = None
    if pb is None:
        put(t, "llama2_head.model", data[:4000])
        return
    m = pb.ModelProto()
    m.ParseFromString(data)
    # Keep <unk> <s> </s>, the 256 byte pieces, then pieces up to 180 more (the first BPE pieces of Llama-2 are the
    # most frequent merges, and every piece a merge needs to reach a kept piece is kept too via the original order).
    keep = 259 + 180
    del m.pieces[keep:]
    small = m.SerializeToString()
    sp = spm.SentencePieceProcessor(model_proto=small)
    assert sp.encode("Hello world") and sp.get_piece_size() == keep
    put(t, "llama2_439_pieces.model", small)
    # Without byte fallback and without the dummy prefix: unknown characters become <unk>.
    m2 = pb.ModelProto()
    m2.ParseFromString(small)
    m2.trainer_spec.byte_fallback = False
    m2.normalizer_spec.add_dummy_prefix = False
    del m2.pieces[259 + 60:]
    del m2.pieces[3:259]
    put(t, "no_byte_fallback.model", m2.SerializeToString())
    put(t, "llama2_head.model", data[:2000])   # truncated inside the pieces
    m3 = pb.ModelProto()
    m3.ParseFromString(small)
    m3.trainer_spec.model_type = pb.TrainerSpec.UNIGRAM
    del m3.pieces[10:]
    put(t, "bad_unigram.model", m3.SerializeToString())
    put(t, "bad_wiretype.model", b"\x0a\x05\x0a\x01a\x17" + b"\x12\x02\x18\x02")


def dataset_seeds():
    t = "fuzz_dataset"
    ds = os.path.join(ROOT, "tests/data/datasets")
    fmt = {"jsonl": 0, "csv": 1, "json": 2}
    for name in sorted(os.listdir(ds)):
        ext = name.rsplit(".", 1)[1]
        text = read(os.path.join(ds, name))
        names = 0x80 if b'"text"' in text else 0   # bit 7: fields text/corr/incorr
        put(t, name, bytes([fmt[ext] | names]) + text)
    # small.jsonl with text/corr/incorr names (bit 7) and corrupted prompts from a second file, offset 1, field "text"
    # is the clean name, so ctl2 bit 4 off; corrupted offset 1 in bits 2-3.
    put(t, "pair_jsonl", bytes([0x80 | 0x04 | (1 << 5), 0 | (1 << 2)]) + read(os.path.join(ds, "small.jsonl")) + b"\0" +
        read(os.path.join(ds, "small_corrupted.jsonl")))
    put(t, "pair_csv_json", bytes([0x01 | 0x04 | (1 << 3), 0x02 | 0x10]) + b"clean,answer,wrong\r\nx,\" y\",z\r\n\r\n\"p\nq\",r,s\n"
        + b"\0" + b'[{"clean": "c0"}, {"clean": "c1"}, {"clean": "c2"}]')
    put(t, "auto_ndjson", bytes([0x03]) + b'\xef\xbb\xbf{"clean": "a", "corrupted": "b", "answer": "c", "wrong": "d"}\r\n  \n')
    put(t, "bad_csv_fields", bytes([0x01]) + b'clean,corrupted,answer,wrong\na,b,c\n"x"y,b,c,d\n')
    put(t, "bad_json_types", bytes([0x02]) + b'[{"clean": 1}, 2, {"clean": ""}]')
    put(t, "bad_jsonl_trailing", bytes([0x00]) + b'{"clean": "a"} {"x": 1}\n[1]\n')


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    config_seeds()
    model_config_seeds()
    safetensors_seeds()
    tokenizer_json_seeds()
    tokenizer_vocab_seeds()
    tokenizer_model_seeds()
    dataset_seeds()
    total = 0
    for d in sorted(os.listdir(OUT)):
        files = os.listdir(os.path.join(OUT, d))
        size = sum(os.path.getsize(os.path.join(OUT, d, f)) for f in files)
        total += size
        print(f"{d}: {len(files)} files, {size} bytes")
    print(f"total {total} bytes")
    if total > 1 << 20:
        sys.exit("corpus is over 1 MB")


if __name__ == "__main__":
    main()
