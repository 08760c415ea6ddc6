#!/usr/bin/env python3
"""Plots a patchsweep results file: one PNG per result table (mean over prompts) plus a baseline figure.

Usage: python3 experiments/plot.py RESULTS.h5 [-o OUTDIR] [--normalized | --raw] [--partial]
Needs h5py, numpy and matplotlib (Debian: python3-h5py python3-matplotlib). Axes, ticks and labels come from
the table's HDF5 dimension scales (integer values, string labels), titles from its kind and attributes, so any
producer's table is drawn without knowing it in advance: 1 axis: bars; 2 axes: a heatmap; more: one heatmap
per index of the leading axes (small multiples). Each attribution table with a patch_sweep table of the same
site, layout, direction and shape also gets <attr>_vs_<patch>.png: a scatter of every cell and, for two axes,
side-by-side heatmaps. A path_patch table (attribute arena_normalized) is drawn as ARENA does, normalized - 1.
Every edge_circuit circuit chosen from an edge_attribution table of the file is drawn as a graph
(experiments/plot_graph.py, graphviz's dot). Schema: experiments/README.md.
"""
import argparse
import math
import os
import sys
import warnings

import matplotlib

matplotlib.use("Agg")
import h5py  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plot_graph  # noqa: E402

NAN_COLOUR = "#d9d9d9"  # "not applicable" cells (a prompt shorter than the position, ...)
MAX_FACETS = 48
MAX_COLUMNS = 400  # wider heatmaps are binned (max |value| per bin)


def die(msg):
    print(f"plot.py: {msg}", file=sys.stderr)
    sys.exit(2)


def as_str(x):
    return x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)


def token_label(tok):
    """A token as a tick label: quoted so leading spaces show, escapes for whitespace, '$' kept out of mathtext."""
    t = tok.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t").replace("\r", "\\r")
    return "'" + t.replace("$", r"\$") + "'"


class Axis:
    """One labelled axis of a dataset: name ("layer", "pos", "token", ...), tick values (its integer scale) and,
    when the axis has string labels (a second scale: pos_token, <axis>_label), those strings."""

    def __init__(self, ds, dim):
        d = ds.dims[dim]
        self.name = d.label or f"dim{dim}"
        n = ds.shape[dim]
        self.values = np.arange(n)
        self.tokens = None
        if len(d) > 0:
            self.values = d[0][()]
        for k in d.keys()[1:]:
            if d[k].dtype.kind in "OSU" and d[k].shape == (n,):
                self.tokens = [as_str(t) for t in d[k][()]]
                break

    def ticklabels(self):
        if self.tokens is not None:
            return [f"{v} {token_label(t)}" for v, t in zip(self.values, self.tokens)]
        return [str(v) for v in self.values]

    def title(self, i):
        s = f"{self.name} {self.values[i]}"
        if self.tokens is not None:
            s += " " + token_label(self.tokens[i])
        return s


def pick(group, want_normalized):
    """Returns (dataset, normalized?) following --normalized/--raw; normalized when available by default. A table
    whose values have no prompt axis (not per prompt) is drawn from its values; None when there is nothing to draw."""
    if want_normalized is not False and "mean_normalized" in group:
        return group["mean_normalized"], True
    if want_normalized is True:
        print(f"plot.py: {group.name}: no mean_normalized, plotting raw values", file=sys.stderr)
    if "mean" in group:
        return group["mean"], False
    v = group.get("values")
    if v is not None and v.ndim and v.dims[0].label != "prompt":
        return v, False
    return None, False


def describe(name, group, normalized, n_prompts):
    """Title, subtitle and colour-bar label from the table's kind and attributes (never from what they mean)."""
    attrs = {k: as_str(v) for k, v in group.attrs.items() if k not in ("kind", "patches_run", "patches_skipped")}
    kind = as_str(group.attrs.get("kind", "patch_sweep"))  # files before schema_version held only patching sweeps
    metric = attrs.get("metric", "value")
    what = f"normalized {metric}" if normalized else metric
    title = f"{name} ({kind}), {what}"
    per = f"mean over {n_prompts} prompts" if "mean" in group else "one row"
    subtitle = " · ".join([f"{k} {v}" for k, v in sorted(attrs.items()) if k != "metric"] + [per])
    cbar = f"normalized {metric}\n(0 = corrupted, 1 = clean)" if normalized else metric
    return title, subtitle, cbar


def sym_limits(x):
    m = np.nanmax(np.abs(x)) if np.isfinite(x).any() else 1.0
    return (-m, m) if m > 0 else (-1.0, 1.0)


def heatmap(ax, data, yaxis, xaxis, vmin, vmax, show_y=True, show_x=True, ticks_max=40):
    cmap = matplotlib.colormaps["RdBu"].copy()
    cmap.set_bad(NAN_COLOUR)
    im = ax.imshow(np.ma.masked_invalid(data), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto",
                   interpolation="nearest", origin="upper")
    for axis, setter, lab_setter, show in ((yaxis, ax.set_yticks, ax.set_ylabel, show_y),
                                           (xaxis, ax.set_xticks, ax.set_xlabel, show_x)):
        n = len(axis.values)
        step = max(1, math.ceil(n / ticks_max))
        idx = list(range(0, n, step))
        labels = [axis.ticklabels()[i] for i in idx] if show else []
        rotate = axis is xaxis and (axis.tokens is not None or len(idx) > 16)
        setter(idx, labels, rotation=90 if rotate else 0, fontsize=8 if axis.tokens is not None else 9)
        if show:
            lab_setter(axis.name)
    ax.tick_params(length=2)
    for sp in ax.spines.values():
        sp.set_visible(False)
    return im


def order_axes(axes):
    """Chooses y (layer), x (head > neuron > pos > other) and the facet axes (the rest) among the mean's axes."""
    names = [a.name for a in axes]
    y = names.index("layer") if "layer" in names else 0
    rest = [i for i in range(len(axes)) if i != y]
    x = None
    for pref in ("head", "neuron", "pos"):
        if pref in names and names.index(pref) != y:
            x = names.index(pref)
            break
    if x is None and rest:
        x = rest[-1]
    facets = [i for i in rest if i != x]
    return y, x, facets


def plot_experiment(name, group, want_normalized, n_prompts, outdir):
    ds, normalized = pick(group, want_normalized)
    data = ds[()].astype(np.float64)
    axes = [Axis(ds, d) for d in range(ds.ndim)]
    title, subtitle, cbar_label = describe(name, group, normalized, n_prompts)
    if normalized and as_str(group.attrs.get("arena_normalized", "")) == "normalized - 1":
        # Path patching as ARENA draws it: 0 = unharmed, -1 = destroyed, centred at 0 like every heatmap here.
        data = data - 1.0
        title = title.replace("), normalized ", "), ARENA's normalized ") + " - 1"
        cbar_label = "normalized - 1\n(0 = unharmed, -1 = destroyed)"
    vmin, vmax = sym_limits(data)

    if data.ndim == 0:
        fig, ax = plt.subplots(figsize=(3, 3), layout="constrained")
        ax.bar([0], [float(data)], color="#2166ac")
        ax.set_xticks([])
        ax.axhline(0, color="k", lw=0.6)
    elif data.ndim == 1:
        ax0 = axes[0]
        fig, ax = plt.subplots(figsize=(max(4, 0.35 * len(ax0.values) + 2), 3.2), layout="constrained")
        colours = ["#b2182b" if v < 0 else "#2166ac" for v in np.nan_to_num(data)]
        ax.bar(range(len(data)), np.nan_to_num(data), color=colours)
        ax.set_xticks(range(len(data)), ax0.ticklabels(), rotation=90 if ax0.tokens else 0, fontsize=8)
        ax.set_xlabel(ax0.name)
        ax.set_ylabel(cbar_label)
        ax.axhline(0, color="k", lw=0.6)
        ax.spines[["top", "right"]].set_visible(False)
    else:
        y, x, facets = order_axes(axes)
        data = np.transpose(data, [*facets, y, x])  # facet axes first, then the heatmap's rows and columns
        yaxis, xaxis = axes[y], axes[x]
        if xaxis.name == "neuron" and not facets and len(xaxis.values) > 64:
            fig = neuron_panels(data, yaxis, xaxis, vmin, vmax, cbar_label)
            return save(fig, title, subtitle, outdir, name)
        if len(xaxis.values) > MAX_COLUMNS:
            data, xaxis = bin_columns(data, xaxis)
        facet_shape = data.shape[:len(facets)]
        n_f = int(np.prod(facet_shape)) if facets else 1
        if facets:
            subtitle += " · one panel per " + " × ".join(axes[i].name for i in facets)
        if n_f > MAX_FACETS:
            print(f"plot.py: {name}: {n_f} facets, drawing the first {MAX_FACETS}", file=sys.stderr)
            n_f = MAX_FACETS
        cols = min(n_f, 6 if len(xaxis.values) <= 16 else 3)
        rows = math.ceil(n_f / cols)
        nx, ny = len(xaxis.values), len(yaxis.values)
        if n_f > 1:  # small multiples: about 0.17 inch per cell, capped
            cell_w, cell_h = min(max(0.17 * nx + 0.9, 2.0), 6.0), min(0.17 * ny + 0.9 + 0.2 * len(facets), 4.5)
        else:
            cell_w, cell_h = min(0.45 * nx + 2.5, 14.0), min(0.4 * ny + 2.0, 8.0)
        if xaxis.tokens is not None:
            cell_h += 1.0  # rotated token labels
        fig, axs = plt.subplots(rows, cols, figsize=(cols * cell_w + 1.2, rows * cell_h + 1.0), squeeze=False,
                                layout="constrained")
        im = None
        for f in range(rows * cols):
            ax = axs[f // cols][f % cols]
            if f >= n_f:
                ax.axis("off")
                continue
            idx = np.unravel_index(f, facet_shape) if facets else ()
            im = heatmap(ax, data[idx], yaxis, xaxis, vmin, vmax, show_y=(f % cols == 0),
                         show_x=(f // cols == rows - 1 or f + cols >= n_f), ticks_max=12 if n_f > 1 else 40)
            if facets:
                ax.set_title("\n".join(axes[facets[k]].title(i) for k, i in enumerate(idx)), fontsize=9)
        cb = fig.colorbar(im, ax=axs.ravel().tolist(), shrink=0.9 if rows > 1 else 1.0, pad=0.01,
                          aspect=30 if rows > 1 else 20)
        cb.set_label(cbar_label)
        cb.outline.set_visible(False)
    return save(fig, title, subtitle, outdir, name)


def attribution_pairs(results):
    """(attribution table, patch_sweep table) pairs of the same site, layout, direction and shape: the estimate and
    what it estimates, cell by cell."""
    def key(g):
        return tuple(as_str(g.attrs.get(k, "")) for k in ("site", "layout", "direction")) + (g["values"].shape,)
    sweeps = {}
    for name in results:
        g = results[name]
        if as_str(g.attrs.get("kind", "patch_sweep")) == "patch_sweep" and "values" in g:
            sweeps.setdefault(key(g), name)
    return [(name, sweeps[key(results[name])]) for name in results
            if as_str(results[name].attrs.get("kind", "")) == "attribution" and "values" in results[name]
            and key(results[name]) in sweeps]


def plot_attribution_vs_patching(results, attr, patch, want_normalized, outdir):
    """A scatter of every cell (activation patching on x, attribution patching on y, the mean over prompts) and,
    for 2-axis tables, the two heatmaps side by side on one colour scale."""
    ga, gp = results[attr], results[patch]
    da, normalized = pick(ga, want_normalized)
    dp, _ = pick(gp, normalized)
    a, b = da[()].astype(np.float64), dp[()].astype(np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    r = np.corrcoef(a[ok], b[ok])[0, 1] if ok.sum() > 1 and a[ok].std() > 0 and b[ok].std() > 0 else float("nan")
    what = f"normalized {as_str(ga.attrs.get('metric', 'value'))}" if normalized else as_str(ga.attrs.get("metric", "value"))
    two_d = a.ndim == 2
    fig, axs = plt.subplots(1, 3 if two_d else 1, figsize=(15 if two_d else 5, 4.5), squeeze=False, layout="constrained")
    ax = axs[0][0]
    lo, hi = np.nanmin(np.r_[a[ok], b[ok], 0.0]), np.nanmax(np.r_[a[ok], b[ok], 0.0])
    ax.plot([lo, hi], [lo, hi], color="#999999", lw=0.8, ls="--")
    ax.scatter(b[ok], a[ok], s=10, color="#2166ac", alpha=0.7)
    ax.set_xlabel(f"activation patching ({patch})")
    ax.set_ylabel(f"attribution patching ({attr})")
    ax.set_title(f"{ok.sum()} cells, Pearson r = {r:.3f}", fontsize=10)
    ax.spines[["top", "right"]].set_visible(False)
    if two_d:
        axes = [Axis(da, d) for d in range(2)]
        y, x, _ = order_axes(axes)
        vmin, vmax = sym_limits(np.r_[a[ok], b[ok]])
        im = None
        for k, (data, label) in enumerate(((b, "activation patching"), (a, "attribution patching"))):
            im = heatmap(axs[0][k + 1], np.transpose(data, [y, x]), axes[y], axes[x], vmin, vmax, show_y=(k == 0))
            axs[0][k + 1].set_title(label, fontsize=10)
        cb = fig.colorbar(im, ax=axs[0][1:].tolist(), pad=0.01)
        cb.set_label(what)
        cb.outline.set_visible(False)
    attrs = {k: as_str(ga.attrs[k]) for k in ("site", "layout", "direction") if k in ga.attrs}
    subtitle = " · ".join(f"{k} {v}" for k, v in attrs.items()) + f" · {what}, mean over prompts"
    return save(fig, f"{attr} vs {patch}: attribution against activation patching", subtitle, outdir,
                f"{attr}_vs_{patch}")


def save(fig, title, subtitle, outdir, name):
    fig.suptitle(title, fontsize=12, fontweight="bold")
    fig.supxlabel(subtitle, fontsize=8, color="#555555")
    out = os.path.join(outdir, f"{name}.png")
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out


class BinnedAxis:
    """An axis squeezed into bins for drawing; ticks name each bin's first entry."""

    def __init__(self, axis, starts):
        self.name = f"{axis.name} (max |value| per {starts[1] - starts[0] if len(starts) > 1 else 1})"
        self.values = axis.values[starts]
        self.tokens = None

    def ticklabels(self):
        return [str(v) for v in self.values]


def bin_columns(data, xaxis):
    """Keeps, per bin of columns, the signed entry of largest magnitude: a single strong neuron among thousands
    must stay visible, and plain image downsampling would drop it."""
    n = data.shape[-1]
    k = math.ceil(n / MAX_COLUMNS)
    starts = np.arange(0, n, k)
    pad = len(starts) * k - n
    d = np.concatenate([data, np.full(data.shape[:-1] + (pad,), np.nan)], axis=-1) if pad else data
    d = d.reshape(data.shape[:-1] + (len(starts), k))
    absd = np.where(np.isnan(d), -1.0, np.abs(d))
    pick = np.take_along_axis(d, absd.argmax(axis=-1)[..., None], axis=-1)[..., 0]
    return pick, BinnedAxis(xaxis, starts)


def neuron_panels(data, yaxis, xaxis, vmin, vmax, ylabel):
    """(layer, neuron): one strip per layer, every neuron a dot coloured and placed by its effect, the strongest
    five labelled; thousands of neurons do not fit a heatmap's pixels."""
    n_rows = data.shape[0]
    fig, axs = plt.subplots(n_rows, 1, figsize=(11, 0.6 * n_rows + 1.6), sharex=True, sharey=True, squeeze=False,
                            layout="constrained")
    cmap = matplotlib.colormaps["RdBu"]
    flat = np.where(np.isnan(data), 0, np.abs(data)).ravel()
    top = set(np.argsort(flat)[::-1][:5].tolist()) if flat.size else set()
    for r in range(n_rows):
        ax = axs[r][0]
        row = data[r]
        ax.axhline(0, color="#999999", lw=0.5)
        ax.scatter(xaxis.values, row, c=row, cmap=cmap, vmin=vmin, vmax=vmax, s=3 + 25 * np.nan_to_num(np.abs(row)) / vmax,
                   linewidths=0)
        for i in range(len(row)):
            if r * len(row) + i in top and not np.isnan(row[i]):
                ax.annotate(f"{xaxis.values[i]}", (xaxis.values[i], row[i]), fontsize=7, xytext=(3, 0),
                            textcoords="offset points", va="center")
        ax.set_ylabel(f"{yaxis.name} {yaxis.values[r]}", rotation=0, ha="right", va="center", fontsize=8)
        ax.set_yticks([])
        ax.set_ylim(vmin * 1.15, vmax * 1.15)
        for side in ("top", "right", "left") + (("bottom",) if r < n_rows - 1 else ()):
            ax.spines[side].set_visible(False)
        if r < n_rows - 1:
            ax.tick_params(axis="x", length=0)
    axs[-1][0].set_xlabel(xaxis.name)
    axs[-1][0].set_xlim(xaxis.values.min() - 1, xaxis.values.max() + 1)
    fig.supylabel(f"{ylabel}  (each strip: ±{vmax:.3g})", fontsize=9)
    return fig


def plot_baseline(f, outdir):
    if "baseline" not in f:
        return None
    b = f["baseline"]
    metric = as_str(f["run"].attrs.get("metric", "metric"))
    clean = b["clean_metric"][()] if "clean_metric" in b else None
    corr = b["corrupted_metric"][()] if "corrupted_metric" in b else None
    if clean is None or corr is None:
        return None
    n = len(clean)
    labels = [str(i) for i in range(n)]
    if "prompts" in f and "answer_text" in f["prompts"]:
        ans = [as_str(t) for t in f["prompts"]["answer_text"][()]]
        labels = [f"{i} {token_label(a)}" for i, a in enumerate(ans)]
    fig, ax = plt.subplots(figsize=(min(max(5.0, 0.45 * n + 2.0), 20.0), 3.8), layout="constrained")
    x = np.arange(n)
    w = 0.4
    ax.bar(x - w / 2, clean, w, label=f"clean (mean {np.nanmean(clean):.3g})", color="#2166ac")
    ax.bar(x + w / 2, corr, w, label=f"corrupted (mean {np.nanmean(corr):.3g})", color="#b2182b")
    ax.axhline(np.nanmean(clean), color="#2166ac", ls="--", lw=0.8)
    ax.axhline(np.nanmean(corr), color="#b2182b", ls="--", lw=0.8)
    ax.axhline(0, color="k", lw=0.6)
    step = max(1, math.ceil(n / 60))
    ax.set_xticks(x[::step], labels[::step], rotation=90 if n > 8 else 0, fontsize=8)
    ax.set_xlabel("prompt (answer)")
    ax.set_ylabel(metric)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"Unpatched {metric} per prompt", fontsize=12, fontweight="bold")
    out = os.path.join(outdir, "baseline.png")
    fig.savefig(out, dpi=150, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description="Plot a patchsweep results file (one PNG per result table).")
    p.add_argument("results", help="results file written by patchsweep (RESULTS.h5)")
    p.add_argument("-o", "--outdir", help="output directory (default: RESULTS_plots next to the file)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--normalized", dest="normalized", action="store_true", default=None,
                   help="plot mean_normalized (the default when the file has it)")
    g.add_argument("--raw", dest="normalized", action="store_false", help="plot the raw mean metric")
    p.add_argument("--partial", action="store_true",
                   help="plot a file whose run did not finish (/run status is not 'complete')")
    args = p.parse_args(argv)

    path = args.results
    if not os.path.exists(path):
        extra = f"; {path}.partial exists (unfinished run: pass it with --partial)" if os.path.exists(
            path + ".partial") else ""
        die(f"{path}: no such file{extra}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        die(f"{path}: not a readable HDF5 file ({e})")
    with f:
        if "run" not in f:
            die(f"{path}: /run: missing (not a patchsweep results file)")
        status = as_str(f["run"].attrs.get("status", "missing"))
        if status != "complete" and not args.partial:
            die(f"{path}: /run status is '{status}', not 'complete': the run was interrupted "
                f"(pass --partial to plot what is there)")
        outdir = args.outdir or os.path.splitext(path.removesuffix(".partial"))[0] + "_plots"
        os.makedirs(outdir, exist_ok=True)
        n_prompts = f["prompts"]["length"].shape[0] if "prompts" in f and "length" in f["prompts"] else "?"
        written = []
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing glyphs for exotic tokens are not worth a page of warnings
            b = plot_baseline(f, outdir)
            if b:
                written.append(b)
            results = f["results"] if "results" in f else {}
            for name in results:
                grp = results[name]
                if pick(grp, False)[0] is None:
                    print(f"plot.py: {grp.name}: no mean dataset, skipped", file=sys.stderr)
                    continue
                written.append(plot_experiment(name, grp, args.normalized, n_prompts, outdir))
            for attr, patch in attribution_pairs(results) if results else []:
                written.append(plot_attribution_vs_patching(results, attr, patch, args.normalized, outdir))
            written += plot_graph.plot_circuits(results, outdir) if results else []
    for w in written:
        print(w)
    return 0


if __name__ == "__main__":
    sys.exit(main())
