#!/usr/bin/env python3
"""Run hannamw/EAP-IG's own circuit selection (Graph.apply_topn, apply_threshold, apply_greedy, prune) and evaluation
(eap.evaluate.evaluate_graph, interventions 'patching', 'zero', 'mean-positional', 'mean') on the tiny models'
golden_patch pairs, and store the
pruned edge masks and the per-pair metrics in tests/data/<model>/golden_eap_ig_circuits.safetensors (+ .json): the
reference of the edge_circuit tests.

The circuits are chosen from EAP-IG's own EAP scores (key "eap" of golden_eap_ig.safetensors, run_eap_ig.py), so the
C side chooses from the very same floats. EAP-IG is loaded and shimmed as run_eap_ig.py does (same checkout), with one
more shim: the bridge's hook_mlp_in gets a copy of the residual stream, as TL 2.x's does (clone_mlp_in below):
    ~/.cache/ps-venv/bin/python tests/golden/run_eap_ig_circuits.py --eap-ig /tmp/EAP-IG [models...]
Keys, per circuit c (the list in the json, "circuits"): c.in_graph [n_forward, n_backward] (1 = edge kept after
evaluate_graph's own prune), c.n_kept [1], c.metric [n_pairs], c.threshold [1] (threshold circuits); and clean_metric, corrupted_metric [n_pairs]
(evaluate_baseline); golden_eap_ig_graph.json: the same scores written by EAP-IG's Graph.to_json; for the circuits of INTERVENED also c.zero.metric, c.mean_positional.metric, c.mean.metric, and
the reference prompts ref<T>.tokens [3, T] (int32). Metric: logits[0, -1, answer] - logits[0, -1, wrong], as run_eap_ig.py.

GPT-NeoX (neox-tiny-a, -c: parallel attention and MLP, TransformerLens's parallel_attn_mlp, which EAP-IG's graph and
evaluate_graph handle): every 'patching' and 'zero' metric is also computed without EAP-IG or TransformerLens, on
make_eap_goldens.py's plain-torch split forward (split_eval), and the script stops if they differ by more than 1e-4.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_eap_goldens as eg  # noqa: E402
import make_goldens as mg  # noqa: E402
import make_gradient_goldens as gg  # noqa: E402
import run_eap_ig as ri  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

MODELS = ["gpt2-tiny-a", "llama-tiny-a", "neox-tiny-a", "neox-tiny-c"]
# (name, selection, n or threshold, absolute). threshold: the |score| of the 30th edge, so ties are no issue.
CIRCUITS = [("all", "all", None, True), ("none", "topn", 0, True), ("top5", "topn", 5, True), ("top25", "topn", 25, True),
            ("top80", "topn", 80, True), ("signed20", "topn", 20, False), ("thr30", "threshold", 30, True),
            ("greedy25", "greedy", 25, True), ("greedy50", "greedy", 50, True), ("greedysigned20", "greedy", 20, False)]


# The interventions besides patching: evaluate_graph(intervention=...) on these circuits, the means over
# seeded random reference prompts (REF_PER_LENGTH of each pair's length).
INTERVENED = ["none", "top25", "greedy25"]
REF_PER_LENGTH = 3


def import_all(path):
    attribute, graph = ri.import_eap(path)
    import eap.evaluate as evaluate
    import eap.utils as utils
    evaluate.tokenize_plus = attribute.tokenize_plus
    # compute_mean_activations tokenizes (our token ids, as above) and allocates on 'cuda': the same shims.
    utils.tokenize_plus = lambda model, ids, max_length=None: attribute.tokenize_plus(model, ids)
    utils.torch = attribute.torch
    return graph, evaluate, utils


def mean_all_positions(utils, model, graph, ref):
    # EAP-IG's own per_position=False branch is broken at this commit: it keeps only each prompt's last position
    # (mask[arange, input_lengths - 1] = 1), divides it by the length, and then averages over the nodes
    # (means.mean(0)), so every source gets one vector. The mean over every reference token is taken instead
    # with its per_position=True code, one prompt at a time, and handed to evaluate_graph in the shape its
    # 'mean' branch expects, (n_forward, d_model).
    tot, n = None, 0
    for toks in ref:
        m = utils.compute_mean_activations(model, graph, [([toks],)], per_position=True)  # (T, n_forward, d_model)
        s = m.sum(0)
        tot = s if tot is None else tot + s
        n += m.shape[0]
    return tot / n


def clone_mlp_in(br):
    # TL 2.x's block runs hook_mlp_in on resid_mid.clone(), so evaluate_graph's in-place `activations += update` there
    # changes the MLP's input only. The bridge's hook_mlp_in gets ln2's input tensor, which HF's block also keeps as
    # the residual: the in-place edit would leak into resid_post and every later layer. Cloning it first, as TL 2.x
    # does, leaves EAP-IG's arithmetic alone.
    for blk in br.blocks:
        blk.hook_mlp_in.register_forward_pre_hook(lambda _m, args: (args[0].clone(),) + tuple(args[1:]))


def split_eval(sp, src, dst, in_graph, clean, values, a, w):
    """evaluate_graph written out on make_eap_goldens.py's split forward (each destination node reads its own copy of
    the residual stream, through a tap added before its norm): destination v's tap is the sum over its missing edges
    u -> v of (values[u] - this run's output of u), values = the corrupted run's outputs ('patching') or zeros
    ('zero'). A destination of layer l reads sources of earlier layers only (a parallel block's MLP too), so L + 1
    passes, each with the taps from the previous pass's outputs, reach the run's fixed point; the last two must agree."""
    with torch.no_grad():
        _, out = sp.forward(clean, {})
        last = None
        for _ in range(sp.L + 2):
            taps = {}
            for j, v in enumerate(dst):
                t = torch.zeros(clean.shape[0], sp.C)
                for i, u in enumerate(src):
                    if eg.src_layer(u) < eg.dst_layer(v, sp.L, sp.parallel) and not in_graph[i, j]:
                        t = t + values[u] - out[u]
                taps[v] = t
            logits, out = sp.forward(clean, taps)
            m = float(logits[-1, a] - logits[-1, w])
            prev, last = last, m
        assert prev == last, f"split_eval did not reach its fixed point: {prev} then {last}"
    return last


def check_split(name, sp, src, dst, g, data, got, values_of):
    """Stops when EAP-IG's metrics (got) and split_eval's differ by more than 1e-4 (abs + rel); the largest difference."""
    worst = 0.0
    for i, (clean, corr, (a, w)) in enumerate(data):
        c = torch.tensor(clean[0])
        want = split_eval(sp, src, dst, g.in_graph, c, values_of(c, torch.tensor(corr[0])), a, w)
        d = abs(float(got[i]) - want) / (1 + abs(want))
        if d > 1e-4:
            raise SystemExit(f"{name}: pair {i}: EAP-IG's evaluate_graph {float(got[i])}, the plain-torch split forward {want}")
        worst = max(worst, d)
    return worst


def make(name, out_root, graph_mod, evaluate, utils, commit):
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
    gen = torch.Generator().manual_seed(1300)
    refs = {T: torch.randint(0, hcfg["vocab_size"], (REF_PER_LENGTH, T), generator=gen)
            for T in sorted({len(d[0][0]) for d in data})}
    all_refs = [r.tolist() for T in sorted(refs) for r in refs[T]]

    def metric(logits, clean_logits, input_lengths, label):
        a, w = label
        return logits[0, -1, a] - logits[0, -1, w]
    out = {}
    # The scores as EAP-IG writes a graph to disk (Graph.to_json): the file edge_circuit's scores_file reads.
    g = graph_mod.Graph.from_model(br)
    g.scores[:] = scores
    g.to_json(os.path.join(folder, "golden_eap_ig_graph.json"))
    clean, corrupted = evaluate.evaluate_baseline(br, data, metric, quiet=True), \
        evaluate.evaluate_baseline(br, data, metric, run_corrupted=True, quiet=True)
    out["clean_metric"], out["corrupted_metric"] = clean.float(), corrupted.float()
    for T, r in refs.items():
        out[f"ref{T}.tokens"] = r.to(torch.int32).contiguous()
    sp, worst = None, 0.0
    if hcfg.get("model_type") == "gpt_neox":
        hf = mg.HF_CLASSES["neox"][1].from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
        sp = eg.SplitNeox(hf, folder)
        src, dst = eg.node_names(sp.L, sp.H, sp.KV)

        def corrupted_outputs(c, x):
            with torch.no_grad():
                return sp.forward(x, {})[1]

        def zero_outputs(c, x):
            return {u: torch.zeros(c.shape[0], sp.C) for u in src}
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
        elif how == "greedy":
            # Ties would make apply_greedy's order depend on Python's set order (hash seed): refuse them.
            s = (scores.abs() if absolute else scores)[g.real_edge_mask]
            assert s.unique().numel() == s.numel(), f"{name}: tied scores; greedy's order would be undefined"
            g.apply_greedy(arg, absolute=absolute)
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
        meta.append({"name": cname, "selection": how, "n": arg if how in ("topn", "greedy") else None, "threshold": thr,
                     "absolute": absolute})
        print(f"  {cname}: kept {int(g.in_graph.sum())} edges, metric {m.tolist()}", flush=True)
        if sp is not None:
            worst = max(worst, check_split(name, sp, src, dst, g, data, m, corrupted_outputs))
        if cname not in INTERVENED:
            continue
        # zero: every pair at once; mean-positional: each pair with the reference prompts of its length; mean:
        # every reference prompt, through the corrected mean (mean_all_positions).
        out[f"{cname}.zero.metric"] = evaluate.evaluate_graph(br, g, data, metric, quiet=True, intervention="zero").float()
        if sp is not None:
            worst = max(worst, check_split(name, sp, src, dst, g, data, out[f"{cname}.zero.metric"], zero_outputs))
        pos = [evaluate.evaluate_graph(br, g, [data[i]], metric, quiet=True, intervention="mean-positional",
                                       intervention_dataloader=[([r.tolist()],) for r in refs[len(data[i][0][0])]])
               for i in range(n_pairs)]
        out[f"{cname}.mean_positional.metric"] = torch.cat(pos).float()
        orig = utils.compute_mean_activations
        evaluate.compute_mean_activations = lambda model, graph, dl, per_position=False: mean_all_positions(utils, model, graph, all_refs)
        out[f"{cname}.mean.metric"] = evaluate.evaluate_graph(br, g, data, metric, quiet=True, intervention="mean",
                                                              intervention_dataloader=[None]).float()
        evaluate.compute_mean_activations = orig
        print(f"    zero {out[f'{cname}.zero.metric'].tolist()}, mean-positional {out[f'{cname}.mean_positional.metric'].tolist()}, "
              f"mean {out[f'{cname}.mean.metric'].tolist()}", flush=True)
    if sp is not None:
        print(f"  EAP-IG vs the plain-torch split forward (patching, zero): max rel difference {worst:.2e}", flush=True)
    mg.save_st(out, os.path.join(folder, "golden_eap_ig_circuits.safetensors"))
    gg.write_json({"versions": gg.versions(), "generator": "tests/golden/run_eap_ig_circuits.py",
                   "eap_ig": {"repository": "https://github.com/hannamw/EAP-IG", "commit": commit},
                   "functions": ["eap.graph.Graph.apply_topn", "eap.graph.Graph.apply_threshold", "eap.graph.Graph.apply_greedy",
                                 "eap.graph.Graph.prune", "eap.evaluate.evaluate_graph (patching, zero, mean-positional, mean)",
                                 "eap.utils.compute_mean_activations (per_position=True)", "eap.evaluate.evaluate_baseline"],
                   "interventions": {"circuits": INTERVENED, "reference": f"ref<T>.tokens: {REF_PER_LENGTH} prompts of each pair's "
                                     "length T, torch.randint(0, vocab) seeded 1300; mean-positional: pair i with ref<T_i>; mean: "
                                     "every reference prompt, the mean over every token (EAP-IG's own per_position=False mean is "
                                     "broken at this commit: mean_all_positions)"},
                   "scores": "golden_eap_ig.safetensors key eap (EAP-IG's get_scores_eap)",
                   "metric": "logits[0, -1, answer] - logits[0, -1, wrong], one pair per batch",
                   "circuits": meta,
                   **({"cross_check": f"patching and zero metrics = make_eap_goldens.py's plain-torch split forward "
                       f"(split_eval), max rel difference {worst:.2e}"} if sp is not None else {})},
                  os.path.join(folder, "golden_eap_ig_circuits.json"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--eap-ig", required=True, help="a checkout of hannamw/EAP-IG")
    ap.add_argument("--commit")
    ap.add_argument("--out", default=os.path.join(mg.REPO, "tests", "data"))
    a = ap.parse_args()
    graph_mod, evaluate, utils = import_all(a.eap_ig)
    commit = a.commit or ri.commit_of(a.eap_ig)
    for n in a.models or MODELS:
        make(n, a.out, graph_mod, evaluate, utils, commit)


if __name__ == "__main__":
    main()
