#!/usr/bin/env python3
"""Run hannamw/EAP-IG's own circuit selection (Graph.apply_topn, apply_threshold, prune) and evaluation
(eap.evaluate.evaluate_graph, intervention 'patching') on the tiny models' golden_patch pairs, and store the
pruned edge masks and the per-pair metrics in tests/data/<model>/golden_eap_ig_circuits.safetensors (+ .json): the
reference of the edge_circuit tests.

The circuits are chosen from EAP-IG's own EAP scores (key "eap" of golden_eap_ig.safetensors, run_eap_ig.py), so the
C side chooses from the very same floats. EAP-IG is loaded and shimmed as run_eap_ig.py does (same checkout), with one
more shim: the bridge's hook_mlp_in gets a copy of the residual stream, as TL 2.x's does (clone_mlp_in below):
    ~/.cache/ps-venv/bin/python tests/golden/run_eap_ig_circuits.py --eap-ig /tmp/EAP-IG [models...]
Keys, per circuit c (the list in the json, "circuits"): c.in_graph [n_forward, n_backward] (1 = edge kept after
evaluate_graph's own prune), c.n_kept [1], c.metric [n_pairs], c.threshold [1] (threshold circuits); and clean_metric, corrupted_metric [n_pairs]
(evaluate_baseline). Metric: logits[0, -1, answer] - logits[0, -1, wrong], as run_eap_ig.py.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_goldens as mg  # noqa: E402
import make_gradient_goldens as gg  # noqa: E402
import run_eap_ig as ri  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

MODELS = ["gpt2-tiny-a", "llama-tiny-a"]
# (name, selection, n or threshold, absolute). threshold: the |score| of the 30th edge, so ties are no issue.
CIRCUITS = [("all", "all", None, True), ("none", "topn", 0, True), ("top5", "topn", 5, True), ("top25", "topn", 25, True),
            ("top80", "topn", 80, True), ("signed20", "topn", 20, False), ("thr30", "threshold", 30, True)]


def import_all(path):
    attribute, graph = ri.import_eap(path)
    import eap.evaluate as evaluate
    evaluate.tokenize_plus = attribute.tokenize_plus
    return graph, evaluate


def clone_mlp_in(br):
    # TL 2.x's block runs hook_mlp_in on resid_mid.clone(), so evaluate_graph's in-place `activations += update` there
    # changes the MLP's input only. The bridge's hook_mlp_in gets ln2's input tensor, which HF's block also keeps as
    # the residual: the in-place edit would leak into resid_post and every later layer. Cloning it first, as TL 2.x
    # does, leaves EAP-IG's arithmetic alone.
    for blk in br.blocks:
        blk.hook_mlp_in.register_forward_pre_hook(lambda _m, args: (args[0].clone(),) + tuple(args[1:]))


def make(name, out_root, graph_mod, evaluate, commit):
    folder = os.path.join(out_root, name)
    with open(os.path.join(folder, "config.json")) as f:
        hcfg = json.load(f)
    print(f"== {name}", flush=True)
    br = mg.load_bridge(folder, hcfg["vocab_size"])
    br.set_use_split_qkv_input(True)
    br.set_use_hook_mlp_in(True)
    clone_mlp_in(br)
    pat = load_file(os.path.join(folder, "golden_patch.safetensors"))
    n_pairs = sum(1 for k in pat if k.endswith(".clean_tokens"))
    data = [([pat[f"p{i}.clean_tokens"].tolist()], [pat[f"p{i}.corrupted_tokens"].tolist()],
             (int(pat[f"p{i}.answer"][0]), int(pat[f"p{i}.wrong"][0]))) for i in range(n_pairs)]
    scores = load_file(os.path.join(folder, "golden_eap_ig.safetensors"))["eap"]

    def metric(logits, clean_logits, input_lengths, label):
        a, w = label
        return logits[0, -1, a] - logits[0, -1, w]
    out = {}
    clean, corrupted = evaluate.evaluate_baseline(br, data, metric, quiet=True), \
        evaluate.evaluate_baseline(br, data, metric, run_corrupted=True, quiet=True)
    out["clean_metric"], out["corrupted_metric"] = clean.float(), corrupted.float()
    meta = []
    for cname, how, arg, absolute in CIRCUITS:
        g = graph_mod.Graph.from_model(br)
        g.scores[:] = scores
        if how == "all":
            g.in_graph[:] = g.real_edge_mask
            g.nodes_in_graph[:] = True
            thr = None
        elif how == "topn":
            g.apply_topn(arg, absolute=absolute)
            thr = None
        else:
            s = scores.abs()[g.real_edge_mask].sort(descending=True).values
            thr = float(s[arg - 1])
            g.apply_threshold(thr, absolute=absolute)
        m = evaluate.evaluate_graph(br, g, data, metric, quiet=True)   # prunes again, as it always does
        out[f"{cname}.in_graph"] = g.in_graph.to(torch.float32).contiguous()
        out[f"{cname}.n_kept"] = torch.tensor([float(g.in_graph.sum())])
        out[f"{cname}.metric"] = m.float()
        if thr is not None:
            out[f"{cname}.threshold"] = torch.tensor([thr], dtype=torch.float32)
        meta.append({"name": cname, "selection": how, "n": arg if how == "topn" else None, "threshold": thr,
                     "absolute": absolute})
        print(f"  {cname}: kept {int(g.in_graph.sum())} edges, metric {m.tolist()}", flush=True)
    mg.save_st(out, os.path.join(folder, "golden_eap_ig_circuits.safetensors"))
    gg.write_json({"versions": gg.versions(), "generator": "tests/golden/run_eap_ig_circuits.py",
                   "eap_ig": {"repository": "https://github.com/hannamw/EAP-IG", "commit": commit},
                   "functions": ["eap.graph.Graph.apply_topn", "eap.graph.Graph.apply_threshold", "eap.graph.Graph.prune",
                                 "eap.evaluate.evaluate_graph (patching)", "eap.evaluate.evaluate_baseline"],
                   "scores": "golden_eap_ig.safetensors key eap (EAP-IG's get_scores_eap)",
                   "metric": "logits[0, -1, answer] - logits[0, -1, wrong], one pair per batch",
                   "circuits": meta}, os.path.join(folder, "golden_eap_ig_circuits.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--eap-ig", required=True, help="a checkout of hannamw/EAP-IG")
    ap.add_argument("--commit")
    ap.add_argument("--out", default=os.path.join(mg.REPO, "tests", "data"))
    a = ap.parse_args()
    graph_mod, evaluate = import_all(a.eap_ig)
    commit = a.commit or ri.commit_of(a.eap_ig)
    for n in a.models or MODELS:
        make(n, a.out, graph_mod, evaluate, commit)


if __name__ == "__main__":
    main()
