#!/usr/bin/env python3
"""bench/eap: edge attribution patching (method EAP, EAP-IG's graph: 157 sources x 445 destinations, 32,491 edges)
on the random GPT-2-small checkpoint of bench/sweeps (~/.cache/patchsweep-bench/gpt2-small-random, built once by
bench/sweeps_bench.py's ensure_model) for N of bench/sweeps' sequence-continuation prompt pairs (12 tokens, BOS
included), by patchsweep (`patchsweep run`, kind edge_attribution) and by hannamw/EAP-IG's own
eap.attribute.attribute(method='EAP') on TransformerLens, in one run. Prints both times, the ratio and the largest
difference between the two score matrices (mean over prompts). See bench/README.md.

EAP-IG runs from a checkout (--eap-ig; default: a clone of the mirror's copy at its recorded commit in a temporary
folder) with tests/golden/run_eap_ig.py's shims for TransformerLens 4.3 (its HookedTransformer is TL 4's
TransformerBridge in compatibility mode; its score matrix, hard-coded on 'cuda', on the CPU). Its prompts go in as
token ids, --eap-batch pairs per batch (all of them by default: they have one length, so no padding); the metric is
the sum over the batch of logits[-1, answer] - logits[-1, wrong], so its scores / items are the mean over prompts,
as patchsweep's table mean. EAP-IG's time is attribute()'s alone (model loading not timed); patchsweep's is the
whole process (loading, tokenizing, baselines, the backward passes, writing the file) and its compute line."""
import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, os.path.join(REPO, "tests", "golden"))
import sweeps_bench as sb  # noqa: E402  (the model, the prompts, building and running patchsweep)

MIRROR = "/work/.mirror/hannamw+EAP-IG/repo"
EAP_IG_COMMIT = "795f5607b25638935aec89aee3c1cb4bd9ed72f1"


def eap_ig_checkout(path):
    if path:
        return path
    d = tempfile.mkdtemp(prefix="ps-bench-eap-ig-")
    for c in (["git", "clone", "-q", MIRROR, d], ["git", "-C", d, "checkout", "-q", EAP_IG_COMMIT]):
        r = subprocess.run(c, capture_output=True, text=True)
        if r.returncode != 0:
            sb.fail(f"{' '.join(c)} failed: {r.stderr.strip()} (pass --eap-ig DIR, a checkout of hannamw/EAP-IG)")
    return d


def run_eap_ig(path, meta, batch, threads):
    import torch
    import make_goldens as mg
    import run_eap_ig as rig
    torch.set_num_threads(threads)
    attribute, graph_mod = rig.import_eap(path)

    def tokenize_ids(model, ids):  # a batch of equal-length prompts given as token ids (BOS included)
        toks = torch.tensor(ids, dtype=torch.long)
        mask = torch.ones_like(toks)
        return toks, mask, mask.sum(1), toks.shape[1]
    attribute.tokenize_plus = tokenize_ids
    br = mg.load_bridge(sb.MODEL_DIR, 50257)
    br.set_use_split_qkv_input(True)
    br.set_use_hook_mlp_in(True)
    data = []
    for i in range(0, len(meta), batch):
        m = meta[i:i + batch]
        data.append(([x["clean_ids"] for x in m], [x["corrupted_ids"] for x in m],
                     torch.tensor([[x["answer_id"], x["wrong_id"]] for x in m])))

    def metric(logits, clean_logits, input_lengths, label):
        r = torch.arange(logits.shape[0])
        return (logits[r, -1, label[:, 0]] - logits[r, -1, label[:, 1]]).sum()
    g = graph_mod.Graph.from_model(br)
    t0 = time.perf_counter()
    attribute.attribute(br, g, data, metric, method="EAP", quiet=True)
    t = time.perf_counter() - t0
    return g.scores.detach().double().numpy(), t, g


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=20, help="prompt pairs (default 20)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--eap-ig", help="a checkout of hannamw/EAP-IG (default: a clone of the mirror at 795f560)")
    ap.add_argument("--eap-batch", type=int, help="EAP-IG's prompts per batch (default: all)")
    ap.add_argument("--keep", help="keep the config and results here")
    a = ap.parse_args()
    import numpy as np
    import h5py
    sb.ensure_model()
    exe, version = sb.ensure_binary(a.build, "cpu")
    items, meta = sb.make_dataset(a.prompts)
    work = a.keep or tempfile.mkdtemp(prefix="ps-bench-eap-")
    os.makedirs(work, exist_ok=True)
    cfg = {"model": sb.MODEL_DIR, "backend": "cpu", "precision": "fp32", "threads": a.threads, "prepend_bos": True,
           "metric": "logit_diff", "dataset": items, "experiments": [{"name": "eap", "kind": "edge_attribution", "method": "EAP"}]}
    cpath, out = os.path.join(work, "eap.json"), os.path.join(work, "eap.h5")
    import json
    with open(cpath, "w") as f:
        json.dump(cfg, f, indent=1)
    load0 = os.getloadavg()
    sb.say(f"eap bench: random GPT-2 small ({sb.MODEL_DIR}), {a.prompts} prompt pairs x {sb.N_TOKENS} tokens, method EAP, "
           f"{a.threads} threads, {os.cpu_count()} CPUs, load average {load0[0]:.2f}; {version}")

    sb.say("\n== patchsweep (edge_attribution, whole process)")
    ps = sb.run_patchsweep(exe, cpath, out)
    with h5py.File(out, "r") as f:
        g = f["results/eap"]
        ps_mean = np.asarray(g["mean"], dtype=np.float64)
        n_edges = int(g.attrs["n_edges"]) if "n_edges" in g.attrs else None
        ids = np.asarray(f["prompts/clean_ids"]).tolist()
    if [list(map(int, r))[:sb.N_TOKENS] for r in ids] != [m["clean_ids"] for m in meta]:
        sb.fail("patchsweep tokenized the prompts differently from the GPT-2 tokenizer in Python (see /prompts)")
    sb.say(f"  {ps['wall']:.2f} s wall, compute {ps['compute']:.2f} s, {ps['gflop']:.1f} GFLOP; "
           f"{ps_mean.shape[0]} x {ps_mean.shape[1]} scores, {n_edges} edges")

    sb.say("\n== hannamw/EAP-IG attribute(method='EAP') on TransformerLens (model loading not timed)")
    path = eap_ig_checkout(a.eap_ig)
    ig, t_ig, _ = run_eap_ig(path, meta, a.eap_batch or a.prompts, a.threads)
    sb.say(f"  {t_ig:.2f} s; checkout {path}")

    if ig.shape != ps_mean.shape:
        sb.fail(f"EAP-IG's scores are {ig.shape}, patchsweep's {ps_mean.shape}")
    edge = np.isfinite(ps_mean)
    if np.any(ig[~edge] != 0):
        sb.fail("EAP-IG scores an edge that patchsweep's graph does not have")
    diff = float(np.abs(ps_mean[edge] - ig[edge]).max())
    rel = diff / float(np.abs(ig[edge]).max())
    load1 = os.getloadavg()
    sb.say(f"\nmax |patchsweep - EAP-IG| over {int(edge.sum())} edges: {diff:.3g} (max |score| {np.abs(ig[edge]).max():.4g}, "
           f"relative {rel:.3g}); load average at the end {load1[0]:.2f}")
    sb.say(f"speedup_vs_eap_ig={t_ig / ps['wall']:.2f} (compute only {t_ig / ps['compute']:.2f}) "
           f"patchsweep_s={ps['wall']:.2f} eap_ig_s={t_ig:.2f} max_abs_diff={diff:.3g}")


if __name__ == "__main__":
    main()
