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
  backup_name_movers.png  each head's DLA in the clean run vs with the name movers ablated (a dla table with
                      "ablate"), and the change per head (ARENA's backup name movers; exact DLA)

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


def heads_of(g, variant="exact"):
    """(layer, head) grid of a dla table's mean per-head parts (components L<l>H<h>) in one variant."""
    comp = [c.decode() if isinstance(c, bytes) else c for c in g["component_label"][:]]
    var = [v.decode() if isinstance(v, bytes) else v for v in g["variant_label"][:]]
    m = g["mean"][var.index(variant)]
    heads = [(int(c[1:].split("H")[0]), int(c.split("H")[1]), k) for k, c in enumerate(comp)
             if c.startswith("L") and "H" in c and c[1:].split("H")[0].isdigit()]
    L, H = max(l for l, _, _ in heads) + 1, max(h for _, h, _ in heads) + 1
    grid = np.full((L, H), np.nan)
    for l, h, k in heads:
        grid[l, h] = m[k]
    return grid


def fig_backup(f, out, name):
    """ARENA's backup name movers: each head's direct logit attribution in the clean run (dla) against the run with
    the name movers ablated (a dla table with "ablate"), and the change per head. The exact variant (its parts sum to
    the logit difference, so the naive prediction, clean minus the ablated heads' parts, is consistent); on
    ARENA's folded GPT-2 TransformerLens's convention is the same thing."""
    g, c = f["results/" + name], f["results/dla"]
    clean, abl = heads_of(c), heads_of(g)
    ablated = s(g.attrs.get("ablated", ""))
    marked = {tuple(int(x) for x in h[1:].split(".")) for h in ablated.split() if h.startswith("h")}
    var = [v.decode() if isinstance(v, bytes) else v for v in g["variant_label"][:]]
    comp = [x.decode() if isinstance(x, bytes) else x for x in g["component_label"][:]]
    parts = [k for k, x in enumerate(comp) if x in ("embed", "pos_embed", "final_bias") or x.endswith(("_attn_out", "_mlp_out"))]
    ld_clean = float(np.nanmean(f["baseline/clean_metric"][:]))
    ld_abl = float(np.nanmean(g["values"][:, var.index("exact")][:, parts].sum(axis=1)))
    naive = ld_clean - sum(clean[l, h] for l, h in marked)
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 4.2))
    lim = np.nanmax(np.abs(np.concatenate([clean.ravel(), abl.ravel()]))) * 1.1 or 1
    a0.plot([-lim, lim], [-lim, lim], color="grey", lw=0.8, ls="--")
    for l in range(clean.shape[0]):
        for h in range(clean.shape[1]):
            a0.scatter(clean[l, h], abl[l, h], s=22, color="tab:red" if (l, h) in marked else "tab:blue")
            if max(abs(clean[l, h]), abs(abl[l, h])) > 0.08 * lim or (l, h) in marked:   # the crowd near 0 unlabelled
                a0.annotate(f"{l}.{h}", (clean[l, h], abl[l, h]), fontsize=7, xytext=(3, 2), textcoords="offset points")
    a0.set_xlim(-lim, lim)
    a0.set_ylim(-lim, lim)
    a0.set_xlabel("clean run: direct logit attribution per head")
    a0.set_ylabel("name movers ablated: direct logit attribution")
    a0.set_title(f"ablated {ablated} ({s(g.attrs.get('ablation_method', ''))})\nlogit diff {ld_clean:.2f} -> {ld_abl:.2f} "
                 f"(naive prediction {naive:.2f})", fontsize=9)
    d = abl - clean
    dl = np.nanmax(np.abs(d)) or 1
    im = a1.imshow(d, cmap="RdBu", vmin=-dl, vmax=dl)
    for l in range(d.shape[0]):
        for h in range(d.shape[1]):
            a1.text(h, l, f"{d[l, h]:.2f}", ha="center", va="center", fontsize=7, fontweight="bold" if (l, h) in marked else "normal")
    a1.set_xticks(range(d.shape[1]))
    a1.set_yticks(range(d.shape[0]))
    a1.set_xlabel("head")
    a1.set_ylabel("layer")
    a1.set_title("change in DLA per head (ablated - clean); ablated heads in bold", fontsize=9)
    fig.colorbar(im, ax=a1)
    fig.suptitle(f"Backup name movers ({g['values'].shape[0]} prompts, exact DLA at the final norm's cached scale, mean over prompts)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "backup_name_movers.png"), dpi=120)
    plt.close(fig)
    return ld_clean, ld_abl, naive, d


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
        for n in (n for n in f["results"] if s(f["results"][n].attrs.get("kind", "")) == "dla" and "ablated" in f["results"][n].attrs):
            ld, la, nv, d = fig_backup(f, a.out, n)
            print(f"backup name movers ({n}): logit diff {ld:.3f} clean, {la:.3f} ablated, naive prediction {nv:.3f}; "
                  f"largest DLA rise {np.nanmax(d):.3f}")
    print(f"figures.py: wrote the IOI figures under {a.out}")


if __name__ == "__main__":
    main()
