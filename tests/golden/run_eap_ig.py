#!/usr/bin/env python3
"""Run hannamw/EAP-IG's own attribute functions (get_scores_eap, get_scores_eap_ig, get_scores_clean_corrupted)
on the tiny models' golden_patch pairs and store their scores in tests/data/<model>/golden_eap_ig.safetensors
(+ .json): the reference the edge_attribution tests compare with, beside make_eap_goldens.py's autograd.

EAP-IG is not vendored: pass a checkout (the public repository; the commit used is recorded in the json):
    git clone https://github.com/hannamw/EAP-IG /tmp/EAP-IG && git -C /tmp/EAP-IG checkout 795f560
    ~/.cache/ps-venv/bin/python tests/golden/run_eap_ig.py --eap-ig /tmp/EAP-IG [models...]
(the committed files: commit 795f5607b25638935aec89aee3c1cb4bd9ed72f1, "Merge pull request #17", unmodified).

EAP-IG is written for TransformerLens 2.x's HookedTransformer, which TL 4.3 (the reference venv) replaced by
TransformerBridge. Its code runs unchanged on the bridge in compatibility mode with shims that leave its
arithmetic alone: transformer_lens.HookedTransformer / HookedTransformerConfig name the bridge and its config
class (its imports and isinstance checks); transformer_lens.utils (gone in TL 4; EAP-IG imports only
get_attention_mask from it, for tokenize_plus) and eap.visualization (matplotlib, for drawing graphs) are stubs;
its score matrices, hardcoded on device 'cuda', are made on the CPU; tokenize_plus takes our token ids instead
of strings (the models have a word-level stub tokenizer; no BOS, no padding: one prompt per batch); and the
bridge gets use_split_qkv_input and use_hook_mlp_in (load_bridge sets use_attn_result), as EAP-IG requires of a
HookedTransformer. Its graph keeps q, k and v per query head, so the grouped-query model (llama-tiny-b) is
skipped: EAP-IG fails on its shapes.
Metric: logits[0, -1, answer] - logits[0, -1, wrong] of each pair, as make_eap_goldens.py. Keys:
eap, eap_ig_inputs (steps 3), clean_corrupted: [n_forward, n_backward] mean over the pairs, EAP-IG's own
normalisation (scores / items, and / steps).
"""
import argparse
import os
import subprocess
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_goldens as mg  # noqa: E402
import make_gradient_goldens as gg  # noqa: E402
import torch  # noqa: E402
import transformer_lens  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformer_lens.config.transformer_bridge_config import TransformerBridgeConfig  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

IG_STEPS = 3


def import_eap(path):
    # TL 4.3 raises ImportError for the removed names; EAP-IG imports them at module level.
    transformer_lens.HookedTransformer = TransformerBridge
    transformer_lens.HookedTransformerConfig = TransformerBridgeConfig
    # transformer_lens.utils (TL 2.x) is gone; EAP-IG takes only get_attention_mask from it, for tokenize_plus,
    # which is replaced below. Its visualization module needs matplotlib, for drawing graphs only.
    tl_utils = types.ModuleType("transformer_lens.utils")
    tl_utils.get_attention_mask = lambda tokenizer, tokens, prepend_bos: torch.ones_like(tokens)
    sys.modules.setdefault("transformer_lens.utils", tl_utils)
    viz = types.ModuleType("eap.visualization")
    viz.get_color = viz.generate_random_color = lambda *a, **k: "#000000"
    sys.modules.setdefault("eap.visualization", viz)
    sys.path.insert(0, os.path.join(path, "src"))
    import eap.attribute as attribute
    import eap.graph as graph

    class CpuTorch:  # the module `torch` as attribute.py sees it, with zeros(device='cuda') on the CPU
        def __getattr__(self, k):
            return getattr(torch, k)

        @staticmethod
        def zeros(*a, device=None, **k):
            return torch.zeros(*a, **k)
    attribute.torch = CpuTorch()

    def tokenize_ids(model, ids):  # a batch of one prompt, given as token ids
        toks = torch.tensor([ids[0]], dtype=torch.long)
        mask = torch.ones_like(toks)
        return toks, mask, mask.sum(1), toks.shape[1]
    attribute.tokenize_plus = tokenize_ids
    return attribute, graph


def commit_of(path):
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except Exception:
        return "unknown (not a git checkout)"


def make(name, out_root, attribute, graph_mod, commit):
    spec = next(s for s in mg.MODELS if s["name"] == name)
    folder = os.path.join(out_root, name)
    with open(os.path.join(folder, "config.json")) as f:
        import json
        hcfg = json.load(f)
    if spec["arch"] == "llama" and hcfg.get("num_key_value_heads", hcfg["num_attention_heads"]) != hcfg["num_attention_heads"]:
        print(f"== {name}: grouped-query attention, which EAP-IG's graph cannot hold; skipped", flush=True)
        return
    print(f"== {name}", flush=True)
    br = mg.load_bridge(folder, hcfg["vocab_size"])
    br.set_use_split_qkv_input(True)
    br.set_use_hook_mlp_in(True)
    pat = load_file(os.path.join(folder, "golden_patch.safetensors"))
    n_pairs = sum(1 for k in pat if k.endswith(".clean_tokens"))
    data = [([pat[f"p{i}.clean_tokens"].tolist()], [pat[f"p{i}.corrupted_tokens"].tolist()],
             (int(pat[f"p{i}.answer"][0]), int(pat[f"p{i}.wrong"][0]))) for i in range(n_pairs)]

    def metric(logits, clean_logits, input_lengths, label):
        a, w = label
        return logits[0, -1, a] - logits[0, -1, w]
    out = {}
    for key, fn, kw in (("eap", attribute.get_scores_eap, {}),
                        ("eap_ig_inputs", attribute.get_scores_eap_ig, {"steps": IG_STEPS}),
                        ("clean_corrupted", attribute.get_scores_clean_corrupted, {})):
        g = graph_mod.Graph.from_model(br)
        s = fn(br, g, data, metric, quiet=True, **kw)
        out[key] = s.detach().to(torch.float32).contiguous()
        print(f"  {key}: [{s.shape[0]}, {s.shape[1]}], max |score| {s.abs().max():.4g}", flush=True)
    mg.save_st(out, os.path.join(folder, "golden_eap_ig.safetensors"))
    gg.write_json({"versions": gg.versions(), "generator": "tests/golden/run_eap_ig.py",
                   "eap_ig": {"repository": "https://github.com/hannamw/EAP-IG", "commit": commit},
                   "functions": ["eap.attribute.get_scores_eap", "eap.attribute.get_scores_eap_ig (steps 3)",
                                 "eap.attribute.get_scores_clean_corrupted"],
                   "metric": "logits[0, -1, answer] - logits[0, -1, wrong], one pair per batch",
                   "keys": "eap, eap_ig_inputs, clean_corrupted: [n_forward, n_backward], EAP-IG's node order, "
                           "the mean over the golden_patch pairs; 0 where there is no edge"},
                  os.path.join(folder, "golden_eap_ig.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--eap-ig", required=True, help="a checkout of hannamw/EAP-IG")
    ap.add_argument("--commit", help="the checkout's commit, when it is not a git work tree (e.g. a git archive)")
    ap.add_argument("--out", default=os.path.join(mg.REPO, "tests", "data"))
    a = ap.parse_args()
    attribute, graph_mod = import_eap(a.eap_ig)
    commit = a.commit or commit_of(a.eap_ig)
    for n in a.models or gg.MODELS:
        make(n, a.out, attribute, graph_mod, commit)


if __name__ == "__main__":
    main()
