#!/usr/bin/env python3
"""bench/paths: on the random GPT-2-small checkpoint and the seqcont-style prompts of bench/sweeps (12 tokens
each), in one run:
  1. path patching of all 144 heads -> the final residual stream (ARENA's get_path_patch_head_to_final_resid_post),
  2. path patching of the heads of layers 0..L-1 -> head L.H's values (get_path_patch_head_to_heads), default 9.9 v,
  3. the evaluation of six top-n circuits (n = 100, 200, 500, 1000, 1500, 5000) chosen from one score file
     (patchsweep's EAP scores of the same prompts, written by EAP-IG's Graph.to_json; read by both sides),
each by patchsweep (`patchsweep run`, one process per part, its whole process timed) and by the torch reimplementation the goldens come from: ARENA's code on
TransformerLens (tests/golden/make_path_goldens.py) and hannamw/EAP-IG's own Graph.apply_topn + evaluate_graph
(tests/golden/run_eap_ig_circuits.py's loading and shims; needs --eap-ig, a checkout of hannamw/EAP-IG). Prints
each time, the ratios and the largest difference of the two sides' values."""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench"))
sys.path.insert(0, os.path.join(REPO, "tests", "golden"))
TOP_NS = [100, 200, 500, 1000, 1500, 5000]


def run_ps(exe, cfg, work, name):
    path, out = os.path.join(work, name + ".json"), os.path.join(work, name + ".h5")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    t0 = time.time()
    r = subprocess.run([exe, "run", path, "-o", out, "--force", "--quiet"], check=True, stderr=subprocess.PIPE, text=True)
    t = time.time() - t0
    m = re.search(r"compute ([0-9.]+) s", r.stderr)
    print(f"  patchsweep {name}: whole process {t:.2f} s, its compute line {m.group(1) if m else '?'} s", flush=True)
    return t, out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--eap-ig", required=True, help="a checkout of hannamw/EAP-IG (git clone /work/.mirror/hannamw+EAP-IG/repo)")
    ap.add_argument("--receiver", default="9.9", help="layer.head whose values receive part 2 (default 9.9)")
    ap.add_argument("--parts", default="1,2,3")
    ap.add_argument("--keep", help="keep the configs and results here")
    a = ap.parse_args()
    parts = {int(x) for x in a.parts.split(",")}
    import sweeps_bench as sb
    sb.ensure_model()
    items, meta = sb.make_dataset(a.prompts)
    work = a.keep or tempfile.mkdtemp(prefix="ps-bench-paths-")
    os.makedirs(work, exist_ok=True)
    exe = os.path.join(a.build, "patchsweep")
    rl, rh = (int(x) for x in a.receiver.split("."))
    base = {"model": sb.MODEL_DIR, "threads": a.threads, "metric": "logit_diff", "dataset": items}
    load0 = os.getloadavg()
    print(f"paths bench: random GPT-2 small ({sb.MODEL_DIR}), {a.prompts} prompts x {sb.N_TOKENS} tokens, {a.threads} threads, "
          f"{os.cpu_count()} CPUs, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}", flush=True)

    import h5py
    import numpy as np
    import torch
    torch.set_num_threads(a.threads)
    import make_goldens as mg
    br = mg.load_bridge(sb.MODEL_DIR, 50257)
    clean = torch.tensor([m["clean_ids"] for m in meta])
    corr = torch.tensor([m["corrupted_ids"] for m in meta])
    ans = torch.tensor([m["answer_id"] for m in meta])
    wrong = torch.tensor([m["wrong_id"] for m in meta])
    L, H = br.cfg.n_layers, br.cfg.n_heads
    res = {}

    def ld_of(lg):  # (N, senders, V) -> (N, senders)
        n, s = lg.shape[:2]
        return (lg.gather(2, ans.view(n, 1, 1).expand(n, s, 1)) - lg.gather(2, wrong.view(n, 1, 1).expand(n, s, 1)))[..., 0]

    import make_path_goldens as mp
    heads = lambda layers: [("head", l, h) for l in layers for h in range(H)]  # noqa: E731
    for part in (1, 2):
        if part not in parts:
            continue
        what = "144 heads -> final residual" if part == 1 else f"heads of layers 0..{rl - 1} -> a{rl}.h{rh} values"
        ex = {"name": "pp", "kind": "path_patch"}
        if part == 2:
            ex["receivers"] = [f"a{rl}.h{rh}.v"]
        t_ps, out = run_ps(exe, dict(base, experiments=[ex]), work, f"path{part}")
        with h5py.File(out) as f:
            v = f["results/pp/values"][()]          # (prompt, layer, head)
        case = dict(receivers="resid_post" if part == 1 else [(rl, rh)], input="resid_post" if part == 1 else "v",
                    senders=heads(range(L) if part == 1 else range(rl)), freeze_mlps=False, sender_pos=None)
        t0 = time.time()
        lg = mp.path_patch(br, case, clean, corr)
        t_tl = time.time() - t0
        want = ld_of(lg).numpy().reshape(v.shape)
        res[part] = (what, t_ps, t_tl, float(np.abs(v - want).max()))
        print(f"part {part} ({what}): patchsweep {t_ps:.2f} s, ARENA/TransformerLens {t_tl:.2f} s, ratio {t_tl / t_ps:.2f}x, "
              f"max |diff| {res[part][3]:.2e}", flush=True)

    if 3 in parts:
        import run_eap_ig_circuits as rc
        graph_mod, evaluate, _ = rc.import_all(a.eap_ig)
        eap = {"name": "eap", "kind": "edge_attribution"}
        t_eap, out = run_ps(exe, dict(base, experiments=[eap]), work, "eap")
        with h5py.File(out) as f:
            scores = f["results/eap/values"][()].mean(0)     # (sources, dests): the mean EAP scores
        # The score file: EAP-IG's own Graph.to_json of those scores, read by both sides.
        g = graph_mod.Graph.from_model(br)
        g.scores[:] = torch.from_numpy(scores)
        score_file = os.path.join(work, "scores.json")
        g.to_json(score_file)
        circ = {"name": "circ", "kind": "edge_circuit", "scores_file": score_file, "top_n": TOP_NS}
        t_ps, out = run_ps(exe, dict(base, experiments=[circ]), work, "circuits")
        with h5py.File(out) as f:
            v = f["results/circ/values"][()]                 # (circuit, item, value): metric, faithfulness, kept
        br.set_use_split_qkv_input(True)
        br.set_use_hook_mlp_in(True)
        rc.clone_mlp_in(br)
        data = [([meta[i]["clean_ids"]], [meta[i]["corrupted_ids"]], (meta[i]["answer_id"], meta[i]["wrong_id"])) for i in range(len(meta))]

        def metric(logits, clean_logits, input_lengths, label):
            return logits[0, -1, label[0]] - logits[0, -1, label[1]]
        t_tl, diff, kept = 0.0, 0.0, []
        t0 = time.time()
        for k, n in enumerate(TOP_NS):
            g = graph_mod.Graph.from_json(score_file)
            g.apply_topn(n, absolute=True)
            m = evaluate.evaluate_graph(br, g, data, metric, quiet=True)
            kept.append((int(g.in_graph.sum()), int(v[k, 0, 2])))
            diff = max(diff, float(np.abs(v[k, :, 0] - m.numpy()).max()))
        t_tl = time.time() - t0
        res[3] = ("six top-n circuits", t_ps, t_tl, diff)
        print(f"part 3 (top-n {TOP_NS} from {score_file}, kept EAP-IG/patchsweep {kept}): patchsweep {t_ps:.2f} s, "
              f"EAP-IG from_json + apply_topn + evaluate_graph {t_tl:.2f} s, ratio {t_tl / t_ps:.2f}x, max |diff| {diff:.2e} "
              f"(the scores: patchsweep edge_attribution, {t_eap:.2f} s, not timed)", flush=True)
    load1 = os.getloadavg()
    print(f"load average at the end {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print("summary: " + " ".join(f"part{p}_speedup={r[2] / r[1]:.2f}" for p, r in sorted(res.items())) +
          f" max_abs_diff={max((r[3] for r in res.values()), default=0):.2e}")


if __name__ == "__main__":
    main()
