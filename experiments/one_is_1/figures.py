#!/usr/bin/env python3
"""Redraws the "One is 1" study's figures and tables (digits, number words and months in GPT-2 small) from a
patchsweep results file written by experiments/one_is_1/numerals.json (or its numwords/months variants):

  dla_layers.png, dla_heads.png   Figure 1: direct logit attribution per layer component, and per head
  table1_heads.txt                Table 1: heads ranked by mean normalized z patching (also printed)
  attention.png                   Figures 2, 9-11: the attention patterns of the named heads on prompt 0
  scatter.png                     Figure 3: per prompt, a head's attention from the last token to the previous
                                  number vs its output on the answer's unembedding through the final norm
                                  (dla_answer's exact per-head part; without it, dla's: answer - wrong)
  ov_<set>.png                    Figures 4-5: OV copy/next scores per head and a head's top-5 tokens
  neurons.png                     Figure 7: patching each neuron's mlp_post, mean normalized recovery
  neuroscope_<name>.png           Figure 8: each chosen neuron's top-activating prompts (kind neurons and its
                                  NAME.top), the tokens coloured by the neuron's activation, the top one boxed
  table2_circuits.txt             Tables 2a/2b: the mean-ablation circuit and its score, each component's
                                  score when mean-ablated alone (also printed)

Usage: python3 experiments/one_is_1/figures.py RESULTS.h5 [-o OUTDIR] [--heads 9.1,6.1] [--scatter-head 9.1]
Without --heads the four heads first in Table 1 are drawn; without --scatter-head, the head that attends most
from the last token to the previous number. Tables are read through their axes and labels (experiments/README.md).
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "seqcont"))
from figures import fig_dla, fig_ov, h5py, labels, plt, q, s, vocab  # noqa: E402  (the seqcont study's readers)


def head_list(text):
    return [tuple(int(x) for x in h.split(".")) for h in text.split(",")] if text else None


def table1(f, out):
    """Heads ranked by mean normalized patching of their z; returns [(layer, head, score)] best first."""
    g = f["results/heads"]
    m = g["mean_normalized"][:]                           # (layer, head)
    lay, hd = list(g["layer"][:]), list(g["head"][:])
    rows = sorted(((int(lay[i]), int(hd[j]), float(m[i, j])) for i in range(len(lay)) for j in range(len(hd))),
                  key=lambda r: -r[2])
    text = [f"Table 1: heads by mean normalized patching of z ({g['values'].shape[0]} prompts, "
            f"{s(g.attrs.get('direction', b'denoise'))})", f"{'rank':>4}  {'head':>6}  {'score':>8}"]
    text += [f"{k + 1:>4}  {f'{l}.{h}':>6}  {v:8.4f}" for k, (l, h, v) in enumerate(rows)]
    open(os.path.join(out, "table1_heads.txt"), "w").write("\n".join(text) + "\n")
    print("\n".join(text))
    return rows


def prev_number_pos(f, i):
    """The previous number of prompt i: the token before its last '.' (the templates end '... 4. Sun done in')."""
    n = int(f["prompts/length"][i])
    toks = [s(t) for t in f["prompts/clean_tokens"][i][:n]]
    return max(k for k, t in enumerate(toks) if t == ".") - 1


def fig_attention(f, out, heads):
    g = f["results/attention"]
    v = g["values"][0]                                    # prompt 0: (layer, head, query, pos)
    lay, hd, qs = list(g["layer"][:]), list(g["head"][:]), list(g["query"][:])
    n = int(f["prompts/length"][0])
    toks = [q(s(t)) for t in f["prompts/clean_tokens"][0][:n]]
    fig, axes = plt.subplots(1, len(heads), figsize=(4.2 * len(heads), 4.6), squeeze=False)
    for ax, (l, h) in zip(axes[0], heads):
        ax.imshow(v[lay.index(l), hd.index(h)][:n, :n], cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), toks, rotation=90, fontsize=6)
        ax.set_yticks(range(len(qs[:n])), toks, fontsize=6)
        ax.set_xlabel("key position (" + g["values"].dims[4].label + ")")
        ax.set_ylabel(g["values"].dims[3].label)
        ax.set_title(f"head {l}.{h}")
    fig.suptitle("Attention patterns, prompt 0")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "attention.png"), dpi=120)
    plt.close(fig)


def scatter_data(f, head):
    """Per prompt: attention from the last token to the previous number, and the head's exact DLA (of the answer's
    logit alone when the file has dla_answer, else of the logit difference)."""
    a = f["results/attention"]
    d = f["results/dla_answer" if "dla_answer" in f["results"] else "dla"]
    lay, hd, qs = list(a["layer"][:]), list(a["head"][:]), list(a["query"][:])
    comp, var = labels(d, "component"), labels(d, "variant")
    l, h = head
    att = a["values"][:, lay.index(l), hd.index(h)]       # (prompt, query, pos)
    x = [att[i, int(f["prompts/length"][i]) - 1 if -1 not in qs else qs.index(-1), prev_number_pos(f, i)]
         for i in range(att.shape[0])]
    y = d["values"][:, var.index("exact"), comp.index(f"L{l}H{h}")]
    return np.array(x), np.array(y)


def fig_scatter(f, out, head):
    x, y = scatter_data(f, head)
    r = np.corrcoef(x, y)[0, 1] if np.std(x) > 0 and np.std(y) > 0 else float("nan")
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(x, y, s=14)
    ax.set_xlabel(f"attention of {head[0]}.{head[1]} from the last token to the previous number")
    target = "W_U[answer]" if "dla_answer" in f["results"] else "W_U[answer] - W_U[wrong]"
    ax.set_ylabel(f"{head[0]}.{head[1]} output on {target} (DLA, exact)")
    ax.set_title(f"Writing direction of head {head[0]}.{head[1]} ({len(x)} prompts, r = {r:.2f})")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "scatter.png"), dpi=120)
    plt.close(fig)
    return r


def fig_neurons(f, out):
    g = f["results/neurons"]
    m = g["mean_normalized"][:]                           # (layer, neuron)
    lay, nr = list(g["layer"][:]), np.array(g["neuron"][:])
    fig, axes = plt.subplots(len(lay), 1, figsize=(9, 2.6 * len(lay)), squeeze=False)
    for ax, i in zip(axes[:, 0], range(len(lay))):
        ax.bar(nr, m[i], width=1.0)
        for k in np.argsort(-np.abs(m[i]))[:5]:
            ax.annotate(str(nr[k]), (nr[k], m[i, k]), fontsize=7, ha="center")
        ax.set_xlabel(g["values"].dims[2].label)
        ax.set_ylabel(f"layer {lay[i]}: mean normalized")
    axes[0, 0].set_title(f"Patching each neuron (mlp_post, {g['values'].shape[0]} prompts)")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "neurons.png"), dpi=120)
    plt.close(fig)


def fig_neuroscope(f, out, name, shown=8, before=8, after=3):
    """Figure 8: a small Neuroscope. For each neuron of the kind-neurons table `name`, its top-activating prompts
    (from NAME.top, best first), the tokens around the top one coloured by the neuron's activation there
    (white = 0 or below, red = the neuron's largest), the top token boxed."""
    g, t = f["results/" + name], f["results/" + name + ".top"]
    acts = g["values"][:]                                 # (prompt, neuron, pos)
    nlab = labels(g, "neuron")
    fields = labels(t, "field")
    tv = t["values"][0] if t["values"].ndim == 3 else t["values"][:]   # (entry, field)
    k = int(t.attrs["top_k"])
    side = "corrupted" if s(g.attrs.get("run", "clean")) == "corrupted" else "clean"
    toks = f[f"prompts/{side}_tokens"]
    rows = min(k, shown)
    fig, axes = plt.subplots(len(nlab), 1, figsize=(11, 0.42 * rows * len(nlab) + 0.9 * len(nlab)), squeeze=False)
    cmap = plt.get_cmap("Reds")
    fig.canvas.draw()
    rend = fig.canvas.get_renderer()
    for i, ax in enumerate(axes[:, 0]):
        ent = tv[i * k:(i + 1) * k]
        ok = ~np.isnan(ent[:, fields.index("prompt")])
        top = float(np.nanmax(ent[:, fields.index("activation")])) if ok.any() else 1.0
        scale = top if top > 0 else 1.0
        ax.set_xlim(0, 1)
        ax.set_ylim(rows + 0.2, -0.8)
        ax.axis("off")
        ax.set_title(f"neuron {nlab[i]}: top {int(ok.sum())} of {acts.shape[0]} prompts x positions "
                     f"(max {top:.3f}; colour = activation / max)", fontsize=9, loc="left")
        for r in range(rows):
            if not ok[r]:
                continue
            p, pos = int(ent[r, fields.index("prompt")]), int(ent[r, fields.index("pos")])
            n = int(f["prompts/prompt_length"][p]) if "prompt_length" in f["prompts"] else int(f["prompts/length"][p])
            ax.text(0.0, r, f"{ent[r, fields.index('activation')]:7.3f}  p{p}", fontsize=8, family="monospace", va="center")
            x = 0.13
            for j in range(max(0, pos - before), min(n, pos + after + 1)):
                a = acts[p, i, j]
                col = cmap(0.85 * max(0.0, a / scale)) if np.isfinite(a) else (1, 1, 1, 1)
                txt = ax.text(x, r, q(s(toks[p][j])), fontsize=8, family="monospace", va="center",
                              fontweight="bold" if j == pos else "normal",
                              bbox=dict(boxstyle="square,pad=0.15", fc=col, ec="black" if j == pos else col, lw=0.8))
                bb = txt.get_window_extent(renderer=rend).transformed(ax.transData.inverted())
                x = bb.x1 + 0.004
    fig.suptitle(f"Top-activating prompts per neuron ({name}: hook_mlp_post, {side} run)", fontsize=10)
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"neuroscope_{name}.png"), dpi=130)
    plt.close(fig)


def tables2(f, out):
    """Tables 2a/2b: every circuit_search table's circuit and score, and every ablation table's cells scored as
    seqcont does (100 x mean metric with the cell mean-ablated / mean clean metric), best kept first."""
    clean = float(np.nanmean(f["baseline/clean_metric"][:]))
    a, b = [], []
    for n in f["results"]:
        g = f["results/" + n]
        kind = s(g.attrs.get("kind", ""))
        if kind == "circuit_search":
            a += [f"Table 2a ({n}): circuit found by {s(g.attrs['method'])}-ablation pruning, "
                     f"threshold {float(g.attrs['threshold']):g}", f"  circuit: {s(g.attrs['circuit'])}",
                     f"  score:   {float(g.attrs['final_score']):.2f}"]
        elif kind == "ablation":
            cells = labels(g, "component")
            sc = 100 * g["mean"][:] / clean
            b += [f"Table 2b ({n}): circuit score with each cell {s(g.attrs['method'])}-ablated "
                     f"({g['values'].shape[0]} prompts)", f"  {'cell':>12}  {'score':>7}"]
            b += [f"  {cells[i]:>12}  {sc[i]:7.2f}" for i in np.argsort(sc)]
    text = a + b
    if text:
        open(os.path.join(out, "table2_circuits.txt"), "w").write("\n".join(text) + "\n")
        print("\n".join(text))
    return text


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("results")
    ap.add_argument("-o", "--out", default="figures")
    ap.add_argument("--heads", help="heads to draw, e.g. 9.1,6.1 (GPT-2 small's); default: Table 1's first four")
    ap.add_argument("--scatter-head", help="the head of the scatter, e.g. 9.1")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    with h5py.File(a.results, "r") as f:
        need = ["dla", "heads", "attention", "neurons"]
        missing = [n for n in need if n not in f["results"]]
        if missing:
            sys.exit(f"figures.py: {a.results} lacks the tables {missing} (run experiments/one_is_1/numerals.json)")
        fig_dla(f, a.out)
        rows = table1(f, a.out)
        heads = head_list(a.heads) or [(l, h) for l, h, _ in rows[:4]]
        fig_attention(f, a.out, heads)
        if a.scatter_head:
            sh = head_list(a.scatter_head)[0]
        else:
            g = f["results/attention"]
            sh = max(((int(l), int(h)) for l in g["layer"][:] for h in g["head"][:]),
                     key=lambda lh: np.mean(scatter_data(f, lh)[0]))
        r = fig_scatter(f, a.out, sh)
        print(f"figure 3: head {sh[0]}.{sh[1]}, r = {r:.3f}")
        vb = vocab(f)
        for name in (n for n in f["results"] if f["results"][n].attrs.get("kind") in (b"ov_scores", "ov_scores")):
            fig_ov(f, a.out, vb, name=name, fname=name + ".png", head=sh)
        fig_neurons(f, a.out)
        for name in (n for n in f["results"] if s(f["results"][n].attrs.get("kind", "")) == "neurons"):
            fig_neuroscope(f, a.out, name)
        tables2(f, a.out)
    print(f"figures.py: wrote the figures and table1_heads.txt under {a.out}")


if __name__ == "__main__":
    main()
