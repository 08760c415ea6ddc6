#!/usr/bin/env python3
# Converts llama2.c checkpoints (.bin, legacy v0 or fp32 v1) and tokenizers (tokenizer.bin / tok512.bin) into a
# Hugging Face Llama checkpoint directory: config.json, model.safetensors (HF names and q/k layout), tokenizer.json.
"""Usage:
    python tools/llama2c_to_hf.py --checkpoint stories260K.bin --tokenizer tok512.bin --out models/stories260K

Needs numpy and safetensors only (no torch). Either input may be left out to convert just the other.

Checkpoint formats (llama2.c's export.py):
  v0 (legacy): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len), then fp32 token
      embedding, attention RMSNorms, wq, wk, wv, wo, FFN RMSNorms, w1, w2, w3, final RMSNorm, two RoPE tables
      (seq_len * head_size/2 each, unused), then the classifier only when vocab_size is negative.
  v1: uint32 magic "ak42", int32 version 1, the same 7 int32, uint8 shared_classifier, zero padding to 256 bytes,
      then fp32 attention RMSNorms, FFN RMSNorms, final RMSNorm, token embedding, wq, wk, wv, wo, w1, w2, w3
      and the classifier when not shared. (v2 is int8-quantized and not accepted: export v0 or v1 instead.)
Matrices are row-major [out, in], as in PyTorch.

Rotary layout. llama2.c rotates adjacent pairs (2i, 2i+1) of each head by frequency i; Hugging Face's
rotate_half rotates (i, i + head_dim/2). The same rotation in HF's layout needs the rows of wq and wk reordered
within each head: HF row a*head_dim/2 + i = llama2.c row 2i + a (a = 0, 1). This is the permutation of HF's
convert_llama_weights_to_hf.py, w.view(n_heads, head_dim/2, 2, dim).transpose(1, 2), and the inverse of
llama2.c's export (view(n_heads, 2, head_dim/2, dim).transpose(1, 2)). q.k is unchanged within a head because
both get the same reordering, so wv, wo and everything else are copied as they are.

Constants llama2.c hard-codes and the config states: RMSNorm eps 1e-5, rope theta 10000, SiLU, no biases.
A shared classifier becomes tie_word_embeddings: true with no lm_head.weight tensor (HF re-ties it on load).

Tokenizer: llama2.c's format is int32 max_token_length, then per token float32 score, int32 length, bytes. It is
a SentencePiece BPE vocabulary exported by llama2.c's tokenizer.py, which wrote "\\n<s>\\n" and "\\n</s>\\n" for BOS
and EOS and replaced "▁" by " ". The tokenizer.json written here is what transformers' LlamaConverter (legacy=True)
makes from the SentencePiece model (and what meta-llama/Llama-2-7b-hf ships): BPE with byte_fallback and
fuse_unk; vocab = the pieces with " " back to "▁"; merges from the scores exactly as
transformers.tokenization_utils_base.generate_merges orders them; normalizer Prepend("▁") + Replace(" ", "▁");
no pre-tokenizer; decoder Replace("▁", " "), ByteFallback, Fuse, Strip(1 leading space); <unk>, <s>, </s> as
special added tokens; a post-processor that adds <s> like Llama-2's (patchsweep ignores it and adds BOS itself).
"""
import argparse
import json
import os
import struct
import sys

import numpy as np

MAGIC_V1 = 0x616B3432  # "ak42"


class BadInput(Exception):
    """One line in the project's error style: FILE: where: what is wrong."""


def read_checkpoint(path):
    """Returns (cfg dict, weights dict of float32 arrays in llama2.c's layout, tied flag)."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 28:
        raise BadInput(f"{path}: byte 0: {len(data)} bytes, too short for a llama2.c header")
    magic = struct.unpack_from("<I", data, 0)[0]
    if magic == MAGIC_V1:
        version = struct.unpack_from("<i", data, 4)[0]
        if version != 1:
            raise BadInput(f"{path}: byte 4: llama2.c export version {version} is not supported "
                           "(only v0 legacy and v1 fp32; v2 is int8-quantized)")
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack_from("<7i", data, 8)
        tied = data[36] != 0
        offset = 256
    else:
        version = 0
        dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack_from("<7i", data, 0)
        tied = vocab > 0
        vocab = abs(vocab)
        offset = 28
    names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
    for i, (n, v) in enumerate(zip(names, [dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len])):
        if v <= 0:
            at = (8 if version else 0) + 4 * i
            raise BadInput(f"{path}: byte {at} ({n}): {v} is not a positive size")
    if dim % n_heads or n_heads % n_kv or (dim // n_heads) % 2:
        raise BadInput(f"{path}: header: dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv} do not give an even head "
                       "size shared by whole key/value groups")
    hs = dim // n_heads
    kv_dim = n_kv * hs
    L = n_layers
    shapes = {
        "tok": (vocab, dim), "att_norm": (L, dim), "wq": (L, dim, dim), "wk": (L, kv_dim, dim),
        "wv": (L, kv_dim, dim), "wo": (L, dim, dim), "ffn_norm": (L, dim), "w1": (L, hidden, dim),
        "w2": (L, dim, hidden), "w3": (L, hidden, dim), "final_norm": (dim,),
        "rope_re": (seq_len, hs // 2), "rope_im": (seq_len, hs // 2), "cls": (vocab, dim),
    }
    if version == 0:
        order = ["tok", "att_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3", "final_norm",
                 "rope_re", "rope_im"]
    else:
        order = ["att_norm", "ffn_norm", "final_norm", "tok", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
    if not tied:
        order.append("cls")
    need = offset + 4 * sum(int(np.prod(shapes[k])) for k in order)
    if len(data) != need:
        raise BadInput(f"{path}: byte {len(data)}: file is {len(data)} bytes but the header "
                       f"(dim {dim}, hidden {hidden}, layers {L}, heads {n_heads}/{n_kv}, vocab {vocab}, "
                       f"seq_len {seq_len}, {'shared' if tied else 'separate'} classifier) needs {need}")
    w = {}
    for k in order:
        n = int(np.prod(shapes[k]))
        w[k] = np.frombuffer(data, dtype="<f4", count=n, offset=offset).reshape(shapes[k]).astype(np.float32)
        offset += 4 * n
    for k, a in w.items():
        if not np.all(np.isfinite(a)):
            raise BadInput(f"{path}: tensor {k}: holds NaN or infinity")
    cfg = dict(dim=dim, hidden_dim=hidden, n_layers=L, n_heads=n_heads, n_kv_heads=n_kv, vocab_size=vocab,
               seq_len=seq_len, version=version)
    return cfg, w, tied


def to_hf_rows(w, n_heads):
    """Reorders the rows of a llama2.c wq/wk [n_heads*head_dim, dim] into HF's rotate_half layout."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, hd // 2, 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def to_llama2c_rows(w, n_heads):
    """The inverse of to_hf_rows (llama2.c's export permutation), for round-trip checks."""
    out_dim, in_dim = w.shape
    hd = out_dim // n_heads
    return w.reshape(n_heads, 2, hd // 2, in_dim).transpose(0, 2, 1, 3).reshape(out_dim, in_dim)


def hf_tensors(cfg, w, tied):
    t = {"model.embed_tokens.weight": w["tok"], "model.norm.weight": w["final_norm"]}
    for i in range(cfg["n_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = w["att_norm"][i]
        t[p + "self_attn.q_proj.weight"] = to_hf_rows(w["wq"][i], cfg["n_heads"])
        t[p + "self_attn.k_proj.weight"] = to_hf_rows(w["wk"][i], cfg["n_kv_heads"])
        t[p + "self_attn.v_proj.weight"] = w["wv"][i]
        t[p + "self_attn.o_proj.weight"] = w["wo"][i]
        t[p + "post_attention_layernorm.weight"] = w["ffn_norm"][i]
        t[p + "mlp.gate_proj.weight"] = w["w1"][i]
        t[p + "mlp.up_proj.weight"] = w["w3"][i]
        t[p + "mlp.down_proj.weight"] = w["w2"][i]
    if not tied:
        t["lm_head.weight"] = w["cls"]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in t.items()}


def hf_config(cfg, tied, bos=1, eos=2):
    # The keys transformers 5 writes for LlamaConfig, plus top-level rope_theta for transformers 4.x readers.
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": bos,
        "dtype": "float32",
        "eos_token_id": eos,
        "head_dim": cfg["dim"] // cfg["n_heads"],
        "hidden_act": "silu",
        "hidden_size": cfg["dim"],
        "initializer_range": 0.02,
        "intermediate_size": cfg["hidden_dim"],
        "max_position_embeddings": cfg["seq_len"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": cfg["n_heads"],
        "num_hidden_layers": cfg["n_layers"],
        "num_key_value_heads": cfg["n_kv_heads"],
        "pad_token_id": None,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "rope_theta": 10000.0,
        "tie_word_embeddings": bool(tied),
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": cfg["vocab_size"],
    }


# ---------------------------------------------------------------------------------------------- tokenizer

def read_llama2c_tokenizer(path, vocab_size=None):
    """Returns (pieces as SentencePiece spells them, scores). vocab_size None: read to the end of the file."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise BadInput(f"{path}: byte 0: too short for a llama2.c tokenizer")
    max_len = struct.unpack_from("<i", data, 0)[0]
    off = 4
    pieces, scores = [], []
    while off < len(data) and (vocab_size is None or len(pieces) < vocab_size):
        if off + 8 > len(data):
            raise BadInput(f"{path}: byte {off}: token {len(pieces)} is cut off")
        score, n = struct.unpack_from("<fi", data, off)
        if n < 0 or off + 8 + n > len(data):
            raise BadInput(f"{path}: byte {off + 4}: token {len(pieces)} has length {n} past the end of the file")
        if n > max_len:
            raise BadInput(f"{path}: byte {off + 4}: token {len(pieces)} is {n} bytes, over max_token_length {max_len}")
        raw = data[off + 8: off + 8 + n]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput(f"{path}: byte {off + 8}: token {len(pieces)} is not valid UTF-8") from None
        pieces.append(text)
        scores.append(score)
        off += 8 + n
    if vocab_size is not None and len(pieces) != vocab_size:
        raise BadInput(f"{path}: byte {off}: {len(pieces)} tokens, the checkpoint has {vocab_size}")
    if off != len(data):
        raise BadInput(f"{path}: byte {off}: {len(data) - off} bytes after the last token")
    # Undo llama2.c's tokenizer.py export: BOS/EOS were written as "\n<s>\n" / "\n</s>\n", "▁" as " ".
    out = []
    for i, p in enumerate(pieces):
        if p.startswith("\n") and p.endswith("\n") and p.strip("\n") in ("<s>", "</s>"):
            p = p.strip("\n")
        out.append(p.replace(" ", "\u2581"))
    if len(set(out)) != len(out):
        dup = next(p for p in out if out.count(p) > 1)
        raise BadInput(f"{path}: token {out.index(dup)}: piece {dup!r} occurs twice")
    return out, scores


def generate_merges(vocab, vocab_scores):
    """transformers.tokenization_utils_base.generate_merges(vocab, vocab_scores), re-stated so this tool needs no
    transformers: every split of a piece into two pieces, by descending score of the merged piece (then longer
    left part, longer right part), splits of one piece in the order of their parts' ids."""
    merges = []
    for merge, piece_score in vocab_scores:
        local = []
        for index in range(1, len(merge)):
            left, right = merge[:index], merge[index:]
            if left in vocab and right in vocab:
                local.append((left, right, piece_score))
        local.sort(key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges.sort(key=lambda v: (v[2], len(v[0]), len(v[1])), reverse=True)
    return [[a, b] for a, b, _ in merges]


def tokenizer_json(pieces, scores, unk="<unk>", bos="<s>", eos="</s>"):
    vocab = {p: i for i, p in enumerate(pieces)}
    for name in (unk, bos, eos):
        if name not in vocab:
            raise BadInput(f"tokenizer: piece {name!r} is missing")
    merges = generate_merges(vocab, list(zip(pieces, scores)))
    added = [{"id": vocab[s], "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for s in sorted((unk, bos, eos), key=lambda s: vocab[s])]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [vocab[bos]], "tokens": [bos]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
                  "vocab": vocab, "merges": merges},
    }


def tokenizer_config(max_len):
    # PreTrainedTokenizerFast, not LlamaTokenizer(Fast): transformers 5's LlamaTokenizer swaps the normalizer for a
    # Metaspace pre-tokenizer that prepends no "▁" to text starting with a space (" Lily" -> [▁Lily], where
    # SentencePiece, llama2.c and this tokenizer.json give [▁, ▁Lily]). The generic class uses tokenizer.json as
    # written, in transformers 4 and 5 alike; its post-processor adds <s>.
    return {
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": False,
        "eos_token": "</s>",
        "model_max_length": max_len,
        "pad_token": None,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": "<unk>",
    }


# ---------------------------------------------------------------------------------------------- main

def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def convert(checkpoint, tokenizer, out):
    from safetensors.numpy import save_file

    os.makedirs(out, exist_ok=True)
    vocab_size, seq_len = None, 2048
    if checkpoint:
        cfg, w, tied = read_checkpoint(checkpoint)
        tensors = hf_tensors(cfg, w, tied)
        st = os.path.join(out, "model.safetensors")
        save_file(tensors, st, metadata={"format": "pt"})
        os.chmod(st, 0o644)  # safetensors creates it 0600
        write_json(os.path.join(out, "config.json"), hf_config(cfg, tied))
        vocab_size, seq_len = cfg["vocab_size"], cfg["seq_len"]
        print(f"{checkpoint}: llama2.c v{cfg['version']}, dim {cfg['dim']}, hidden {cfg['hidden_dim']}, "
              f"{cfg['n_layers']} layers, {cfg['n_heads']} heads / {cfg['n_kv_heads']} kv heads, vocab {vocab_size}, "
              f"seq_len {seq_len}, {'tied' if tied else 'separate'} classifier -> {len(tensors)} tensors")
    if tokenizer:
        pieces, scores = read_llama2c_tokenizer(tokenizer, vocab_size)
        tj = tokenizer_json(pieces, scores)
        write_json(os.path.join(out, "tokenizer.json"), tj)
        write_json(os.path.join(out, "tokenizer_config.json"), tokenizer_config(seq_len))
        print(f"{tokenizer}: {len(pieces)} pieces, {len(tj['model']['merges'])} merges")
    print(f"wrote {out}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--checkpoint", help="llama2.c model .bin (v0 legacy or v1)")
    ap.add_argument("--tokenizer", help="llama2.c tokenizer .bin (e.g. tok512.bin)")
    ap.add_argument("--out", required=True, help="output directory")
    a = ap.parse_args()
    if not a.checkpoint and not a.tokenizer:
        ap.error("give --checkpoint and/or --tokenizer")
    try:
        convert(a.checkpoint, a.tokenizer, a.out)
    except BadInput as ex:
        print(ex, file=sys.stderr)
        sys.exit(2)
    except OSError as ex:
        print(f"{ex.filename}: {ex.strerror}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
