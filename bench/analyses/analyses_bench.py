#!/usr/bin/env python3
"""bench/analyses: every analysis of the seqcont study (dla, dla per neuron, logit lens, attention from the end,
OV copy/next scores of digits alone and in the prompts, ARENA's head detectors, a small Neuroscope) on the demo
model over N of the paper's 1536 numerals prompts (experiments/seqcont/data/numerals_1536.jsonl), as ONE
`patchsweep run`, and the same analyses in TransformerLens (4.3's TransformerBridge, run_with_cache in batches and
ActivationCache's methods) in one Python run. Prints both times, the ratio and the largest differences between the
two tools' stored numbers. See bench/analyses/README.md."""
import argparse
import json
import os
import subprocess
import sys
import resource
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "golden"))

DIGITS = [f" {i}" for i in range(1, 10)]
NUMBERS = [f" {i}" for i in range(1, 13)]
NEURONS = [(3, 440), (2, 252), (2, 136)]
TOP_K, NRN_K, WINDOW, HS_N, HS_SEQS = 5, 10, 4, 31, 10


def experiments():
    return [
        {"name": "dla", "kind": "dla"},
        {"name": "dla_neurons", "kind": "dla", "per_neuron": True},
        {"name": "logit_lens", "kind": "logit_lens", "top_k": TOP_K},
        {"name": "attention_end", "kind": "attention", "positions": ["end"]},
        {"name": "ov_digits", "kind": "ov_scores", "tokens": DIGITS, "top_k": TOP_K},
        {"name": "ov_digits_prompts", "kind": "ov_scores", "tokens": NUMBERS, "input": "prompts", "top_k": TOP_K},
        {"name": "head_scores", "kind": "head_scores"},
        {"name": "neuroscope", "kind": "neurons", "neurons": [f"{l}.{n}" for l, n in NEURONS], "top_k": NRN_K, "window": WINDOW},
    ]


def dataset(n, tok, work):
    """The first n of the 1536 prompts (the file is ordered by template: n/3 of each when n is a multiple of 3);
    the corrupted prompt is its randDS line where the demo tokenizer gives both one length, else the clean prompt
    itself (the analyses read the clean run; the demo tokenizer splits a few of randDS's 3-digit numbers)."""
    rows = [json.loads(x) for x in open(os.path.join(REPO, "experiments", "seqcont", "data", "numerals_1536.jsonl"))]
    per = n // 3
    by_t = {t: [r for r in rows if r["template"] == t] for t in ("done", "lost", "names")}
    pick = [r for t in ("done", "lost", "names") for r in by_t[t][:per]] + by_t["done"][per:per + n - 3 * per]
    same = 0
    with open(os.path.join(work, "prompts.jsonl"), "w") as f:
        for r in pick:
            if len(tok.encode(r["text"]).ids) != len(tok.encode(r["corrupted"]).ids):
                r = dict(r, corrupted=r["text"])
                same += 1
            f.write(json.dumps(r) + "\n")
    return pick, same


def run_patchsweep(a, work, n):
    cfg = {"model": os.path.join(REPO, "models", "demo"), "threads": a.threads, "metric": "logit_diff", "prepend_bos": True,
           "dataset": {"path": "prompts.jsonl", "fields": {"clean": "text", "corrupted": "corrupted", "answer": "corr", "wrong": "incorr"}},
           "experiments": experiments()}
    cpath = os.path.join(work, "analyses.json")
    json.dump(cfg, open(cpath, "w"), indent=1)
    out = os.path.join(work, "analyses.h5")
    t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([os.path.join(a.build, "patchsweep"), "run", cpath, "-o", out, "--force", "--quiet"], check=True)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.time() - t0, (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime), out


def run_tl(a, pick, tok):
    """The same analyses with TransformerLens; returns its compute time and CPU time (model load excluded) and its numbers."""
    from make_goldens import load_bridge, torch
    torch.set_num_threads(a.threads)
    folder = os.path.join(REPO, "models", "demo")
    V = json.load(open(os.path.join(folder, "config.json")))["vocab_size"]
    br = load_bridge(folder, V)
    bos = 1976
    enc = lambda s: [bos] + tok.encode(s).ids   # noqa: E731  (the demo model's BOS, as patchsweep prepends it)
    seqs = [enc(r["text"]) for r in pick]
    ans = [tok.encode(r["corr"]).ids[0] for r in pick]
    wrong = [tok.encode(r["incorr"]).ids[0] for r in pick]
    digit_ids = [tok.encode(d).ids[0] for d in DIGITS]
    number_ids = [tok.encode(d).ids[0] for d in NUMBERS]
    L, H = br.cfg.n_layers, br.cfg.n_heads
    W_U, b_U = br.W_U.detach(), br.b_U.detach()
    lnf_w, lnf_b = br.ln_final.weight.detach(), br.ln_final.bias.detach()
    res = {"dla": {}, "dla_neurons": {}, "lens": {}, "att": {}, "nrn": {}}
    occ_resid, occ_member = [], []
    t0, c0 = time.time(), time.process_time()   # process_time: every thread of this process (torch's included)
    with torch.no_grad():
        # One pass per batch of equal-length prompts (the metric at the last position), every per-prompt analysis
        # from its cache.
        by_len = {}
        for i, s in enumerate(seqs):
            by_len.setdefault(len(s), []).append(i)
        for T, idx in sorted(by_len.items()):
            for b0 in range(0, len(idx), a.batch):
                bi = idx[b0:b0 + a.batch]
                toks = torch.tensor([seqs[i] for i in bi])
                _, cache = br.run_with_cache(toks)
                at, wt = torch.tensor([ans[i] for i in bi]), torch.tensor([wrong[i] for i in bi])
                kw = dict(tokens=at, incorrect_tokens=wt, pos_slice=-1)
                resid = cache.decompose_resid(layer=-1, pos_slice=-1)
                heads = cache.stack_head_results(layer=-1, pos_slice=-1)
                neur = cache.stack_neuron_results(layer=L, pos_slice=-1)
                d_res, d_heads = cache.logit_attrs(resid, **kw), cache.logit_attrs(heads, **kw)
                d_neur = cache.logit_attrs(neur, **kw)
                acc = cache.accumulated_resid(incl_mid=True, apply_ln=True, pos_slice=-1)
                lens_r = acc @ W_U + b_U                                                # (stages, batch, V)
                raw = cache.accumulated_resid(incl_mid=True, apply_ln=False, pos_slice=-1)
                lens_c = cache.apply_ln_to_stack(raw, layer=-1, pos_slice=-1, recompute_ln=False) * lnf_w + lnf_b
                lens_c = lens_c @ W_U + b_U
                lens_out = []
                for lens in (lens_r, lens_c):   # the metric, the answer's rank and the top tokens of every stage
                    la = lens.gather(-1, at[None, :, None].expand(lens.shape[0], -1, 1))[..., 0]
                    lw = lens.gather(-1, wt[None, :, None].expand(lens.shape[0], -1, 1))[..., 0]
                    lens_out.append((la - lw, (lens > la[..., None]).sum(-1), lens.topk(TOP_K, -1).indices))
                pats = torch.stack([cache["pattern", l][:, :, -1, :] for l in range(L)], 1)   # (batch, L, H, T)
                post = {l: cache["post", l] for l in set(l for l, _ in NEURONS)}
                r0 = cache["resid_post", 0]
                for j, i in enumerate(bi):
                    res["dla"][i] = torch.cat([d_res[:, j], d_heads[:, j]])
                    res["dla_neurons"][i] = d_neur[:, j]
                    res["lens"][i] = [(x[:, j], r[:, j], t[:, j]) for x, r, t in lens_out]
                    res["att"][i] = pats[j]
                    res["nrn"][i] = torch.stack([post[l][j, :, n] for l, n in NEURONS])
                    for t, tk in enumerate(seqs[i]):
                        if tk in number_ids:
                            occ_resid.append(r0[j, t])
                            occ_member.append(number_ids.index(tk))
        # OV copy/next scores: members alone after the BOS, and every occurrence in the prompts.
        def ov_rates(resid, member, ids):
            copy, nxt, n_next = torch.zeros(L, H), torch.zeros(L, H), 0
            ids_t = torch.tensor(ids)
            for l in range(L):
                x = br.blocks[l].ln1(resid[None])[0]
                for h in range(H):
                    v = x @ br.W_V[l, h] + br.b_V[l, h]
                    lg = br.ln_final((v @ br.W_O[l, h])[None])[0] @ W_U + b_U
                    top = lg.topk(TOP_K, -1).indices
                    m = torch.tensor(member)
                    copy[l, h] = (top == ids_t[m][:, None]).any(-1).float().mean() * 100
                    has = m + 1 < len(ids)
                    nx = ids_t[(m + 1).clamp(max=len(ids) - 1)]
                    nxt[l, h] = ((top == nx[:, None]).any(-1) & has).float().sum() / has.sum() * 100
            return copy, nxt
        _, c1 = br.run_with_cache(torch.tensor([[bos, t] for t in digit_ids]))
        res["ov_iso"] = ov_rates(c1["blocks.0.hook_resid_post"][:, -1], list(range(len(digit_ids))), digit_ids)
        res["ov_prompts"] = ov_rates(torch.stack(occ_resid), occ_member, number_ids)
        # ARENA's head detectors on repeated random tokens.
        g = torch.Generator().manual_seed(0)
        half = torch.randint(0, V, (HS_SEQS, HS_N), generator=g)
        rep = torch.cat([torch.full((HS_SEQS, 1), bos), half, half], 1)
        _, hc = br.run_with_cache(rep)
        hs = torch.empty(L, H, 5)
        for l in range(L):
            pat = hc[f"blocks.{l}.attn.hook_pattern"]
            diag = lambda off: pat.diagonal(offset=off, dim1=-2, dim2=-1).mean((0, -1))   # noqa: E731
            hs[l] = torch.stack([diag(0), diag(-1), pat[..., 0].mean((0, -1)), diag(-HS_N), diag(1 - HS_N)], -1)
        res["hs"] = hs
        # The Neuroscope: each neuron's top-k (prompt, position) over the dataset, activation descending.
        res["top"] = []
        for k in range(len(NEURONS)):
            cells = sorted((-float(res["nrn"][i][k, t]), i, t) for i in range(len(seqs)) for t in range(len(seqs[i])))
            res["top"].append([(i, t) for _, i, t in cells[:NRN_K]])
    return time.time() - t0, time.process_time() - c0, res


def compare(out, res):
    """Largest |patchsweep - TransformerLens| of the per-prompt numbers, and whether the Neuroscope ranks agree."""
    import h5py
    import numpy as np
    d = {}
    with h5py.File(out, "r") as f:
        lab = lambda g, ax: [x.decode() for x in g[ax + "_label"][:]]   # noqa: E731
        g = f["results/dla"]
        comp, var = lab(g, "component"), lab(g, "variant")
        keep = [k for k, c in enumerate(comp) if c not in ("final_bias",) and "_b_" not in c]
        v = g["values"][:, var.index("tl")][:, keep]
        d["dla"] = max(float(np.max(np.abs(v[i] - res["dla"][i].numpy()))) for i in res["dla"])
        g = f["results/dla_neurons"]
        comp = lab(g, "component")
        nk = [k for k, c in enumerate(comp) if c.startswith("L") and "N" in c and "_b_" not in c]
        v = g["values"][:, 0][:, nk]
        d["dla_neurons"] = max(float(np.max(np.abs(v[i] - res["dla_neurons"][i].numpy()))) for i in res["dla_neurons"])
        g = f["results/logit_lens"]
        d["logit_lens"] = max(float(np.max(np.abs(g["values"][i, w, :, 0] - res["lens"][i][w][0].numpy()))) for i in res["lens"] for w in (0, 1))
        g = f["results/attention_end"]["values"][:, :, :, 0]    # (prompt, layer, head, key)
        d["attention"] = max(float(np.nanmax(np.abs(g[i][..., :res["att"][i].shape[-1]] - res["att"][i].numpy()))) for i in res["att"])
        g = f["results/neuroscope"]["values"]
        d["neurons"] = max(float(np.nanmax(np.abs(g[i][:, :res["nrn"][i].shape[-1]] - res["nrn"][i].numpy()))) for i in res["nrn"])
        t = f["results/neuroscope.top"]
        fields, tv = lab(t, "field"), t["values"][:]
        P, S = fields.index("prompt"), fields.index("pos")
        ours = [[(int(tv[k * NRN_K + r, P]), int(tv[k * NRN_K + r, S])) for r in range(NRN_K)] for k in range(len(NEURONS))]
        same_top = sum(ours[k] == res["top"][k] for k in range(len(NEURONS)))
        for name, key in (("ov_digits", "ov_iso"), ("ov_digits_prompts", "ov_prompts")):
            ov = f["results/" + name]["values"][()]            # (layer, head, token, quantity); the "score" row last
            d[name] = float(max(np.max(np.abs(ov[:, :, -1, 0] - res[key][0].numpy())), np.max(np.abs(ov[:, :, -1, 1] - res[key][1].numpy()))))
    return d, same_top


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=1536, help="prompts from the 1536 (default all)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--batch", type=int, default=64, help="TransformerLens batch size (default 64)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--keep", help="keep the config and results here")
    a = ap.parse_args()
    n = max(1, min(1536, a.prompts))
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(REPO, "models", "demo", "tokenizer.json"))
    work = a.keep or tempfile.mkdtemp(prefix="ps-bench-analyses-")
    os.makedirs(work, exist_ok=True)
    pick, same = dataset(n, tok, work)
    load0 = os.getloadavg()
    print(f"analyses bench: demo model, {n} seqcont numerals prompts ({same} with corrupted = clean: randDS tokenizes to "
          f"another length), {len(experiments())} analyses, {a.threads} threads, {os.cpu_count()} CPUs, load average {load0[0]:.2f}",
          flush=True)
    t_ps, cpu_ps, out = run_patchsweep(a, work, n)
    print(f"patchsweep (one run, whole process: load, tokenize, baselines, analyses, HDF5): {t_ps:.2f} s (CPU {cpu_ps:.2f} s)", flush=True)
    t_tl, cpu_tl, res = run_tl(a, pick, tok)
    print(f"TransformerLens (one run, model load excluded, batch {a.batch}): {t_tl:.2f} s (CPU {cpu_tl:.2f} s)", flush=True)
    d, same_top = compare(out, res)
    print("max |patchsweep - TransformerLens|: " + ", ".join(f"{k} {v:.2g}" for k, v in d.items()) +
          f"; neuroscope top-{NRN_K} equal for {same_top} of {len(NEURONS)} neurons")
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f}")
    ok = all(v < 1e-3 for k, v in d.items() if not k.startswith("ov")) and same_top == len(NEURONS)
    # On a loaded machine the wall times wait for other processes' CPU: the CPU ratio is the steadier figure there.
    print(f"cpu_time_ratio={cpu_tl / cpu_ps:.1f} (TransformerLens CPU / patchsweep CPU)")
    print(f"speedup_vs_transformerlens={t_tl / t_ps:.1f} prompts={n} max_abs_diff={max(v for k, v in d.items() if not k.startswith('ov')):.2g} agree={ok}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
