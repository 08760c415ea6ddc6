#!/usr/bin/env python3
"""Draws edge_circuit circuits as graphs (for experiments/plot.py): the circuit is rebuilt from its table's
attributes (scores_from: the edge_attribution table of the same file, whose mean scores it chose from, or
scores_file: EAP-IG's graph JSON, when it is still where the run read it; selection
top_n / greedy / threshold; absolute) and its circuit axis (top<n>, greedy<n>), pruned of dangling nodes as
EAP-IG's Graph.prune does, and handed to graphviz's `dot` (Debian: graphviz): nodes input, a{l}.h{h}, m{l}, logits
in one row per layer (heads, then the MLP), edge width by |score|, colour by sign (blue positive, red negative),
the q/k/v input as the line style (solid / dashed / dotted). Only the graph's node and edge names are read, so
any model's graph is drawn. Listed circuits (edges by name) are not in the file and are skipped.
"""
import heapq
import os
import re
import shutil
import subprocess
import sys

import numpy as np

MAX_DRAWN = 300   # edges drawn at most (the strongest); the title says when a circuit has more
NODE = re.compile(r"^(input|logits|a(\d+)\.h(\d+)|m(\d+))(?:<([qkv])>)?$")


def as_str(x):
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def labels(ds, dim):
    d = ds.dims[dim]
    for k in d.keys():
        if d[k].dtype.kind in "OSU":
            return [as_str(t) for t in d[k][()]]
    return None


def node_of(name):
    """(node, layer rank, qkv) of a source or destination name: 'a3.h2<q>' -> ('a3.h2', 2 * 3 + 1, 'q')."""
    m = NODE.match(name)
    if not m:
        return None
    if m.group(1) == "input":
        return "input", 0, None
    if m.group(1) == "logits":
        return "logits", None, None
    if m.group(2) is not None:
        return f"a{m.group(2)}.h{m.group(3)}", 2 * int(m.group(2)) + 1, m.group(5)
    return f"m{m.group(4)}", 2 * int(m.group(4)) + 2, None


def real_edges(src, dst):
    """(S, D) mask of the edges that exist: a source writes before the destination reads (rank order)."""
    sr = [node_of(s)[1] for s in src]
    dr = [node_of(d) for d in dst]
    top = max(r for r in sr) + 1
    return np.array([[(dn[1] if dn[1] is not None else top) > r for dn in dr] for r in sr])


def prune(mask, src, dst):
    """EAP-IG's Graph.prune: drop nodes without an incoming (input excepted) or outgoing edge, and their edges,
    until nothing changes."""
    mask = mask.copy()
    dnode = [node_of(d)[0] for d in dst]
    snode = [node_of(s)[0] for s in src]
    while True:
        fed = {dnode[d] for d in np.nonzero(mask.any(0))[0]} | {"input"}
        feeds = {snode[s] for s in np.nonzero(mask.any(1))[0]}
        alive = fed & feeds | {"logits"}
        keep = np.array([[snode[s] in alive and dnode[d] in alive for d in range(len(dst))] for s in range(len(src))])
        new = mask & keep
        if (new == mask).all():
            return new
        mask = new


def greedy(key, real, src, dst, n):
    """EAP-IG's apply_greedy: n times the best edge into a node already in the graph (the logits at first); ties
    by the order the destination joined, then by index (as patchsweep's ps_circuit_greedy)."""
    dnode = [node_of(d)[0] for d in dst]
    snode = [node_of(s)[0] for s in src]
    by_node = {}
    for d, nd in enumerate(dnode):
        by_node.setdefault(nd, []).append(d)
    mask = np.zeros_like(real)
    heap, group, active, inside = [], 0, set(), set()

    def join(nd):
        nonlocal group
        for d in by_node.get(nd, []):
            if d not in active:
                active.add(d)
                for s in np.nonzero(real[:, d])[0]:
                    heapq.heappush(heap, (-key[s, d], group, s * len(dst) + d))
        group += 1
    join("logits")
    for _ in range(n):
        if not heap:
            break
        _, _, i = heapq.heappop(heap)
        s, d = divmod(i, len(dst))
        mask[s, d] = True
        if snode[s] not in inside:
            inside.add(snode[s])
            join(snode[s])
    return mask


def choose(scores, real, src, dst, selection, label, absolute, threshold):
    key = np.where(real, np.abs(scores) if absolute else scores, -np.inf)
    key = np.where(np.isnan(key), -np.inf, key)
    if selection == "threshold":
        return real & (key >= threshold)
    m = re.match(r"^(top|greedy)(\d+)$", label)
    if not m:
        return None
    n = int(m.group(2))
    if selection == "greedy":
        return greedy(key, real, src, dst, n)
    flat = np.argsort(-key.ravel(), kind="stable")[:min(n, int(real.sum()))]
    mask = np.zeros(key.size, bool)
    mask[flat] = True
    return mask.reshape(key.shape)


def dot_source(mask, scores, src, dst, title):
    edges = [(s, d) for s, d in zip(*np.nonzero(mask))]
    more = len(edges) - MAX_DRAWN
    if more > 0:
        edges = sorted(edges, key=lambda e: -abs(scores[e]))[:MAX_DRAWN]
        title += f" (the {MAX_DRAWN} strongest of {len(edges) + more} edges drawn)"
    top = max((abs(scores[e]) for e in edges), default=1.0) or 1.0
    nodes = {}
    for s, d in edges:
        for name in (src[s], dst[d]):
            nd, rank, _ = node_of(name)
            nodes[nd] = rank
    last = max((r for r in nodes.values() if r is not None), default=0) + 1
    lines = ["digraph circuit {", '  graph [rankdir=BT, bgcolor=white, nodesep=0.15, ranksep=0.45, fontname="Helvetica", '
             f'labelloc=t, fontsize=16, label="{title}\\nwidth |score| · blue positive, red negative · into q solid, k dashed, v dotted"];',
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11, height=0.3];',
             '  edge [arrowsize=0.5];']
    ranks = {}
    for nd, r in nodes.items():
        ranks.setdefault(last if r is None else r, []).append(nd)
    fill = {"input": "#e0e0e0", "logits": "#e0e0e0"}
    for r in sorted(ranks):
        members = " ".join(f'"{nd}" [fillcolor="{fill.get(nd, "#fde9c9" if nd.startswith("a") else "#d7ecd9")}"];'
                           for nd in sorted(ranks[r], key=lambda x: (len(x), x)))
        lines.append(f"  {{ rank=same; {members} }}")
    style = {"q": "solid", "k": "dashed", "v": "dotted", None: "solid"}
    for s, d in edges:
        v = float(scores[s, d])
        dn, _, qkv = node_of(dst[d])
        w = 0.4 + 4.6 * abs(v) / top
        colour = "#2166ac" if v >= 0 else "#b2182b"
        lines.append(f'  "{node_of(src[s])[0]}" -> "{dn}" [penwidth={w:.2f}, color="{colour}", style={style[qkv]}, '
                     f'tooltip="{src[s]}->{dst[d]} {v:.3g}"];')
    lines.append("}")
    return "\n".join(lines)


def file_scores(path):
    """(scores, src, dst) of a graph JSON written by EAP-IG's Graph.to_json (edge_circuit's scores_file), its
    nodes in EAP-IG's order; None when the file is gone or has no cfg."""
    import json
    try:
        with open(path) as f:
            d = json.load(f)
        L, H = int(d["cfg"]["n_layers"]), int(d["cfg"]["n_heads"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    src = ["input"] + [n for l in range(L) for n in [f"a{l}.h{h}" for h in range(H)] + [f"m{l}"]]
    dst = [n for l in range(L) for n in [f"a{l}.h{h}<{q}>" for q in "qkv" for h in range(H)] + [f"m{l}"]] + ["logits"]
    si, di = {n: i for i, n in enumerate(src)}, {n: i for i, n in enumerate(dst)}
    scores = np.full((len(src), len(dst)), np.nan)
    for name, e in d.get("edges", {}).items():
        a, _, b = name.partition("->")
        if a in si and b in di:
            scores[si[a], di[b]] = e["score"] if isinstance(e, dict) else e
    return scores, src, dst


def plot_circuits(results, outdir):
    """One PNG per circuit of every edge_circuit table chosen from scores in the file: <table>_<circuit>_graph.png."""
    written = []
    for name in results:
        g = results[name]
        if as_str(g.attrs.get("kind", "")) != "edge_circuit" or "values" not in g or \
                ("scores_from" not in g.attrs and "scores_file" not in g.attrs):
            continue
        if shutil.which("dot") is None:
            print("plot.py: graphviz's dot is not installed (Debian: graphviz): no circuit graphs", file=sys.stderr)
            return written
        if "scores_file" in g.attrs:
            got = file_scores(as_str(g.attrs["scores_file"]))
            if got is None:
                print(f"plot.py: {g.name}: its scores_file {as_str(g.attrs['scores_file'])} is not readable here, no graph drawn",
                      file=sys.stderr)
                continue
            scores, src, dst = got
        else:
            sf = as_str(g.attrs["scores_from"])
            if sf not in results or "mean" not in results[sf]:
                print(f"plot.py: {g.name}: its scores ({sf}) are not in the file, no graph drawn", file=sys.stderr)
                continue
            sd = results[sf]["mean"]
            scores = sd[()].astype(np.float64)
            src, dst = labels(sd, 0), labels(sd, 1)
            if src is None or dst is None or any(node_of(x) is None for x in src + dst):
                print(f"plot.py: {results[sf].name}: no graph node names on its axes, no graph drawn", file=sys.stderr)
                continue
        real = real_edges(src, dst)
        selection = as_str(g.attrs.get("selection", "top_n"))
        absolute = int(g.attrs.get("absolute", 1)) != 0
        threshold = float(g.attrs.get("threshold", 0.0))
        circuits = labels(g["values"], 0) or []
        vals = g["values"][()]   # (circuit, item, value): metric, faithfulness, kept
        for k, label in enumerate(circuits):
            mask = choose(scores, real, src, dst, selection, label, absolute, threshold)
            if mask is None:
                continue
            mask = prune(mask, src, dst)
            faith = np.nanmean(vals[k, :, 1]) if vals.shape[-1] > 1 else float("nan")
            title = (f"{name} {label}: {int(mask.sum())} edges after pruning, mean faithfulness {faith:.3g} "
                     f"({as_str(g.attrs.get('with', 'corrupted'))})")
            if vals.shape[-1] > 2 and np.isfinite(vals[k, 0, 2]) and int(vals[k, 0, 2]) != int(mask.sum()):
                print(f"plot.py: {g.name} {label}: {int(mask.sum())} edges rebuilt, the run kept {int(vals[k, 0, 2])} "
                      "(tied scores?)", file=sys.stderr)
            out = os.path.join(outdir, f"{name}_{label}_graph.png")
            r = subprocess.run(["dot", "-Tpng", "-Gdpi=110", "-o", out], input=dot_source(mask, scores, src, dst, title),
                               text=True, capture_output=True)
            if r.returncode != 0:
                print(f"plot.py: dot failed for {g.name} {label}: {r.stderr.strip()}", file=sys.stderr)
                continue
            written.append(out)
    return written
