#!/usr/bin/env python3
"""Redraws the sequence-continuation study's analysis figures from a patchsweep results file (the tables of
experiments/seqcont/demo.json, or any config with the same experiment names):

  logit_lens.png    the logit difference per layer (the lens over resid_pre/mid, both final-norm conventions)
  dla_layers.png    direct logit attribution per component (embeddings, each layer's attention and MLP)
  dla_heads.png     direct logit attribution per head (exact variant), layer x head
  attention.png     the pattern from the last token of prompt 0, for the heads with the largest |DLA|
  ov_scores.png     OV copy and next scores per head, and the top tokens of the best "next" head
  head_scores.png   ARENA's previous-token, duplicate-token and induction scores per head

Usage: python3 experiments/seqcont/figures.py RESULTS.h5 [-o OUTDIR]   (h5py, numpy, matplotlib)
The tables are read through their axes and labels (experiments/README.md), never by position alone.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def s(x):
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def labels(g, axis):
    return [s(v) for v in g[axis + "_label"][:]] if axis + "_label" in g else [str(v) for v in g[axis][:]]


def vocab(f):
    """id -> token string from the run's tokenizer.json (byte-level BPE pieces shown with their spaces)."""
    path = s(f["run"].attrs.get("tokenizer_path", b""))
    try:
        v = json.load(open(path))["model"]["vocab"]
    except (OSError, KeyError, ValueError):
        return {}
    return {i: t.replace("\u0120", " ").replace("\u010a", "\\n") for t, i in v.items()}


def q(t):
    return "'" + t.replace("$", r"\$") + "'"


def fig_lens(f, out):
    g = f["results/logit_lens"]
    m = g["mean"][:]                                      # (variant, stage, quantity)
    var, st, qu = labels(g, "variant"), labels(g, "stage"), labels(g, "quantity")
    k = qu.index("logit_diff")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, v in enumerate(var):
        ax.plot(range(len(st)), m[i, :, k], marker="o", label=v)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(range(len(st)), st, rotation=45, ha="right")
    ax.set_ylabel("mean logit difference")
    ax.set_title(f"Logit lens ({g['values'].shape[0]} prompts): answer - wrong per layer")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "logit_lens.png"), dpi=120)
    plt.close(fig)


def fig_dla(f, out):
    g = f["results/dla"]
    m = g["mean"][:]                                      # (variant, component)
    var, comp = labels(g, "variant"), labels(g, "component")
    layer_parts = [i for i, c in enumerate(comp) if c in ("embed", "pos_embed") or c.endswith(("_attn_out", "_mlp_out"))]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    w = 0.4
    for j, v in enumerate(var):
        ax.bar(np.arange(len(layer_parts)) + (j - 0.5) * w, m[j, layer_parts], w, label=v)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(range(len(layer_parts)), [comp[i] for i in layer_parts], rotation=45, ha="right")
    ax.set_ylabel("mean logit-difference attribution")
    total = m[var.index("exact"), layer_parts].sum() + m[var.index("exact"), comp.index("final_bias")]
    ax.set_title(f"Direct logit attribution per component (exact parts + final bias = {total:.2f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dla_layers.png"), dpi=120)
    plt.close(fig)
    heads = [(int(c[1:c.index("H")]), int(c[c.index("H") + 1:]), i) for i, c in enumerate(comp)
             if c.startswith("L") and "H" in c and c[1:c.index("H")].isdigit()]
    L, H = max(h[0] for h in heads) + 1, max(h[1] for h in heads) + 1
    grid = np.full((L, H), np.nan)
    for l, h, i in heads:
        grid[l, h] = m[var.index("exact"), i]
    lim = np.nanmax(np.abs(grid))
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * H, 1 + 0.5 * L))
    im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim)
    for l in range(L):
        for h in range(H):
            ax.text(h, l, f"{grid[l, h]:.2f}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("DLA per head (exact)")
    fig.colorbar(im)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dla_heads.png"), dpi=120)
    plt.close(fig)
    return sorted(heads, key=lambda t: -abs(grid[t[0], t[1]]))[:4]


def fig_attention(f, out, top_heads):
    g = f["results/attention_end"]
    v = g["values"][0]                                    # prompt 0: (layer, head, query, pos)
    lay, hd = list(g["layer"][:]), list(g["head"][:])
    n = int(f["prompts/length"][0])
    toks = [q(s(t)) for t in f["prompts/clean_tokens"][0][:n]]
    fig, axes = plt.subplots(len(top_heads), 1, figsize=(max(6, 0.35 * n), 1.3 * len(top_heads) + 1), squeeze=False)
    for ax, (l, h, _) in zip(axes[:, 0], top_heads):
        row = v[lay.index(l), hd.index(h), 0, :n]
        ax.bar(range(n), row)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"L{l}H{h}")
        ax.set_xticks(range(n), toks, rotation=70, fontsize=7)
    axes[0, 0].set_title("Attention from the last token, prompt 0 (heads with the largest |DLA|)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "attention.png"), dpi=120)
    plt.close(fig)


def fig_ov(f, out, vb, name="ov_digits", fname="ov_scores.png", head=None):
    """Copy and next scores per head of the ov_scores table `name`, and the top tokens of `head` (layer, head;
    default: the best "next" head)."""
    g = f["results/" + name]
    v = g["values"][:]                                    # (layer, head, token, quantity)
    tl, ql = labels(g, "token"), labels(g, "quantity")
    lay, hd = list(g["layer"][:]), list(g["head"][:])
    sc = tl.index("score")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    for ax, name in zip(axes[:2], ("copy_hit", "next_hit")):
        m = v[:, :, sc, ql.index(name)]
        im = ax.imshow(m, vmin=0, vmax=100, cmap="viridis")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(hd)), hd)
        ax.set_yticks(range(len(lay)), lay)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"OV {name.split('_')[0]} score (% top-{int(g.attrs['top_k'])})")
    fig.colorbar(im, ax=axes[:2].tolist())
    best = np.unravel_index(np.nanargmax(v[:, :, sc, ql.index("next_hit")]), v.shape[:2]) if head is None \
        else (lay.index(head[0]), hd.index(head[1]))
    tops = [i for i, n in enumerate(ql) if n.startswith("top")]
    cells = [[tl[t]] + [vb.get(int(v[best][t, k]), str(int(v[best][t, k]))) for k in tops] for t in range(sc)]
    axes[2].axis("off")
    tab = axes[2].table(cellText=[[q(c) for c in r] for r in cells], colLabels=["input"] + [ql[k] for k in tops], loc="center")
    tab.scale(1, 1.2)
    axes[2].set_title(f"L{lay[best[0]]}H{hd[best[1]]}: top tokens of its OV circuit")
    fig.savefig(os.path.join(out, fname), dpi=120, bbox_inches="tight")
    plt.close(fig)


def fig_head_scores(f, out):
    g = f["results/head_scores"]
    v = g["values"][:]                                    # (layer, head, score)
    sl = labels(g, "score")
    names = ("previous", "duplicate", "induction")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, name in zip(axes, names):
        m = v[:, :, sl.index(name)]
        im = ax.imshow(m, vmin=0, vmax=1, cmap="Blues")
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(f"{name} score")
    fig.colorbar(im, ax=axes.tolist())
    fig.suptitle(f"Attention on {int(g.attrs['n_seqs'])} random sequences of {int(g.attrs['seq_len'])} tokens, repeated")
    fig.savefig(os.path.join(out, "head_scores.png"), dpi=120, bbox_inches="tight")
    plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("-o", "--out", default="figures")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with h5py.File(a.results, "r") as f:
        missing = [n for n in ("logit_lens", "dla", "attention_end", "ov_digits", "head_scores") if n not in f["results"]]
        if missing:
            sys.exit(f"figures.py: {a.results} lacks the tables {missing} (run experiments/seqcont/demo.json)")
        fig_lens(f, a.out)
        top = fig_dla(f, a.out)
        fig_attention(f, a.out, top)
        fig_ov(f, a.out, vocab(f))
        fig_head_scores(f, a.out)
    print(f"figures.py: wrote logit_lens, dla_layers, dla_heads, attention, ov_scores, head_scores .png under {a.out}")


if __name__ == "__main__":
    main()
