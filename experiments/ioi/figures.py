#!/usr/bin/env python3
"""Redraws ARENA's IOI chapter on the demo model from a patchsweep results file written by
experiments/ioi/demo.json:

  heads.png           activation patching of each head's z (all positions, and the last position only)
  path_resid.png      path patching, each head -> the final residual stream (ARENA: normalized - 1)
  path_<recv>.png     path patching to the receivers of path_nm_q / path_sinh_q / path_sinh_v
                      (name movers' queries, S-inhibition heads' queries and values)
  dla_layers.png, dla_heads.png   direct logit attribution (name movers write the IO - S direction)
  attention_roles.png mean attention from the last token to IO, S1 and S2, per head
  head_scores.png     previous-token, duplicate-token and induction scores (the early induction heads)

Usage: python3 experiments/ioi/figures.py RESULTS.h5 [-o OUTDIR]
Tables are read through their axes and labels (experiments/README.md); roles are found from the stored tokens.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "seqcont"))
from figures import fig_dla, fig_head_scores, h5py, plt, s  # noqa: E402  (the seqcont study's readers)


def heatmap(ax, m, g, title, centre=True):
    lim = np.nanmax(np.abs(m)) or 1
    im = ax.imshow(m, cmap="RdBu" if centre else "Blues", vmin=-lim if centre else 0, vmax=lim)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7)
    d = g["mean_normalized"].dims
    ax.set_xticks(range(m.shape[1]), g[d[-1].label][:])
    ax.set_yticks(range(m.shape[0]), g[d[0].label][:])
    ax.set_xlabel(d[-1].label)
    ax.set_ylabel(d[0].label)
    ax.set_title(title, fontsize=9)
    return im


def layer_head(g):
    """A (layer, head) grid from a table's mean_normalized, a single pos axis dropped; ARENA's path-patching
    convention (normalized - 1) for path_patch tables."""
    m = g["mean_normalized"][:]
    m = m.reshape(m.shape[0], m.shape[-1])
    return m - 1 if s(g.attrs.get("kind", "")) == "path_patch" else m


def fig_tables(f, out, names, fname, titles):
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.6), squeeze=False)
    for ax, n, t in zip(axes[0], names, titles):
        g = f["results/" + n]
        fig.colorbar(heatmap(ax, layer_head(g), g, f"{t}\n({g['values'].shape[0]} prompts)"), ax=ax)
    fig.tight_layout()
    fig.savefig(os.path.join(out, fname), dpi=120)
    plt.close(fig)


def roles(f, i):
    """IO, S1 and S2 of prompt i: where the answer's token and the wrong answer's token occur in it."""
    ids = list(f["prompts/clean_ids"][i][: int(f["prompts/prompt_length"][i])])
    io, sid = int(f["prompts/answer_id"][i]), int(f["prompts/wrong_id"][i])
    s_pos = [k for k, t in enumerate(ids) if t == sid]
    return {"IO": ids.index(io), "S1": s_pos[0], "S2": s_pos[-1]}


def fig_attention_roles(f, out):
    g = f["results/attention_end"]
    v = g["values"][:, :, :, 0, :]                        # (prompt, layer, head, pos), query = the last token
    lay, hd = list(g["layer"][:]), list(g["head"][:])
    names = ("IO", "S1", "S2")
    m = np.zeros((len(names), len(lay), len(hd)))
    for i in range(v.shape[0]):
        r = roles(f, i)
        for k, n in enumerate(names):
            m[k] += v[i, :, :, r[n]] / v.shape[0]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, k in zip(axes, range(3)):
        ax.imshow(m[k], vmin=0, vmax=1, cmap="Blues")
        for a in range(len(lay)):
            for b in range(len(hd)):
                ax.text(b, a, f"{m[k, a, b]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xticks(range(len(hd)), hd)
        ax.set_yticks(range(len(lay)), lay)
        ax.set_xlabel(g["values"].dims[2].label)
        ax.set_ylabel(g["values"].dims[1].label)
        ax.set_title(f"attention from the last token to {names[k]}")
    fig.suptitle(f"Mean over {v.shape[0]} prompts")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "attention_roles.png"), dpi=120)
    plt.close(fig)
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("-o", "--out", default="figures")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with h5py.File(a.results, "r") as f:
        need = ["heads", "heads_end", "path_resid", "dla", "attention_end", "head_scores"]
        missing = [n for n in need if n not in f["results"]]
        if missing:
            sys.exit(f"figures.py: {a.results} lacks the tables {missing} (run experiments/ioi/demo.json)")
        fig_tables(f, a.out, ["heads", "heads_end"], "heads.png",
                   ["patching z, all positions", "patching z, last position"])
        fig_tables(f, a.out, ["path_resid"], "path_resid.png", ["path patching -> final residual"])
        for n in (n for n in f["results"] if n.startswith("path_") and n != "path_resid"):
            g = f["results/" + n]
            fig_tables(f, a.out, [n], n + ".png", ["path patching -> " + s(g.attrs.get("receivers", n))])
        fig_dla(f, a.out)
        fig_attention_roles(f, a.out)
        fig_head_scores(f, a.out)
    print(f"figures.py: wrote the IOI figures under {a.out}")


if __name__ == "__main__":
    main()
