#!/usr/bin/env python3
"""Writes a Llama-2-7B-shaped checkpoint with random bf16 weights (13.5 GB in two safetensors shards, the
Hugging Face layout) and a patchsweep config for one sweep on it: z by layer x head at layers 30-31 and
resid_pre at layers 0, 16, 31, over 2 prompts. For memory and speed checks only: the numbers mean nothing.

    python3 bench/make_llama7b.py OUT_DIR [--backend cuda|cpu] [--precision bf16|fp32]
                                          [--tokenizer DIR_WITH_tokenizer.model] [--layers N]

Needs torch and safetensors (numpy is enough for neither: bf16). Writes OUT_DIR/model/ and OUT_DIR/sweep.json.
"""
import argparse, json, os, sys

SHAPE = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
             num_hidden_layers=32, vocab_size=32000, max_position_embeddings=4096, rms_norm_eps=1e-5,
             rope_theta=10000.0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--backend", default="cuda")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--layers", type=int, default=32, help="fewer layers for a quick run (default 32)")
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--tokenizer", default=None, help="folder with Llama-2's tokenizer.model "
                    "(default: $PS_SHARED/llama2-tokenizer, ../shared/data/llama2-tokenizer)")
    a = ap.parse_args()
    import torch
    from safetensors.torch import save_file
    tok = a.tokenizer
    for d in ([tok] if tok else []) + [os.path.join(os.environ.get("PS_SHARED", ""), "llama2-tokenizer"),
                                       os.path.join(here, "..", "..", "shared", "data", "llama2-tokenizer")]:
        if d and os.path.isfile(os.path.join(d, "tokenizer.model")):
            tok = os.path.abspath(d)
            break
    else:
        sys.exit("make_llama7b: no tokenizer.model found (pass --tokenizer DIR)")
    s = dict(SHAPE, num_hidden_layers=a.layers)
    C, M, H, V, L = s["hidden_size"], s["intermediate_size"], s["num_attention_heads"], s["vocab_size"], a.layers
    mdir = os.path.join(a.out, "model")
    os.makedirs(mdir, exist_ok=True)
    cfg = dict(s, architectures=["LlamaForCausalLM"], model_type="llama", hidden_act="silu", torch_dtype="bfloat16",
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=1)
    g = torch.Generator().manual_seed(0)

    def rnd(*shape, std=0.02):
        return (torch.randn(*shape, generator=g, dtype=torch.float32) * std).to(torch.bfloat16)

    shards = [{}, {}]
    shards[0]["model.embed_tokens.weight"] = rnd(V, C)
    for l in range(L):
        p, sh = f"model.layers.{l}.", shards[0 if l < L // 2 else 1]
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sh[p + f"self_attn.{n}.weight"] = rnd(C, C)
        sh[p + "mlp.gate_proj.weight"] = rnd(M, C)
        sh[p + "mlp.up_proj.weight"] = rnd(M, C)
        sh[p + "mlp.down_proj.weight"] = rnd(C, M)
        sh[p + "input_layernorm.weight"] = torch.ones(C, dtype=torch.bfloat16)
        sh[p + "post_attention_layernorm.weight"] = torch.ones(C, dtype=torch.bfloat16)
    shards[1]["model.norm.weight"] = torch.ones(C, dtype=torch.bfloat16)
    shards[1]["lm_head.weight"] = rnd(V, C)
    index, total = {"metadata": {}, "weight_map": {}}, 0
    for i, sh in enumerate(shards):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file(sh, os.path.join(mdir, name), metadata={"format": "pt"})
        for k, t in sh.items():
            index["weight_map"][k] = name
            total += t.numel() * 2
    index["metadata"]["total_size"] = total
    with open(os.path.join(mdir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=1)
    layers = sorted({0, L // 2, L - 1})
    config = {
        "model": os.path.abspath(mdir), "tokenizer": os.path.join(tok, "tokenizer.model"),
        "backend": a.backend, "precision": a.precision, "prepend_bos": True, "metric": "logit_diff",
        "dataset": [
            {"clean": "1 2 3 4", "corrupted": "1 2 3 3", "answer": " 5", "wrong": " 4"},
            {"clean": "Monday Tuesday Wednesday", "corrupted": "Monday Tuesday Tuesday", "answer": " Thursday",
             "wrong": " Wednesday"},
        ],
        "experiments": [
            {"name": "heads", "site": "z", "by": "layer_head", "layers": sorted({max(L - 2, 0), L - 1})},
            {"name": "resid", "site": "resid_pre", "by": "layer_pos", "layers": layers},
        ],
    }
    with open(os.path.join(a.out, "sweep.json"), "w") as f:
        json.dump(config, f, indent=1)
    print(f"make_llama7b: {total / 1e9:.2f} GB of bf16 weights ({L} layers) in {mdir}; config {a.out}/sweep.json")


if __name__ == "__main__":
    main()
