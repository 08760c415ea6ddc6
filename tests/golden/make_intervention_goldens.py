#!/usr/bin/env python3
"""Make the intervention goldens (tests/data/<model>/golden_interventions.json) from TransformerLens:
zero- and mean-ablation of one head's hook_z (at every position and at one position; means by
position, over all positions, and by a position -> group map) and frozen hooks (hook_z of a
layer held at another run's cached value while the clean prompt runs, all heads or all heads
but one), each a batch-1 `run_with_hooks` on the committed tiny models.

Regenerate (from the repo root; needs the reference venv, offline is fine):
    ~/.cache/ps-venv/bin/python tests/golden/make_intervention_goldens.py              # default models
    ~/.cache/ps-venv/bin/python tests/golden/make_intervention_goldens.py gpt2-tiny-a  # just some
Option: --out DIR (default tests/data). The models are read, never rebuilt (make_goldens.py owns them).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import REPO, load_bridge, pkg_version, torch, transformers  # noqa: E402

DEFAULT_MODELS = ["gpt2-tiny-a", "llama-tiny-a", "llama-tiny-b", "neox-tiny-a", "neox-tiny-b"]
T = 7          # prompt length
N_REF = 4      # reference prompts the means are taken over
SEED = 7


def rounded(t):
    return [float(f"{x:.9g}") for x in t.reshape(-1).tolist()]


def make(name, out_root):
    folder = os.path.join(REPO, "tests", "data", name)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    vocab = cfg["vocab_size"]
    br = load_bridge(folder, vocab)
    n_layers, n_heads = br.cfg.n_layers, br.cfg.n_heads
    g = torch.Generator().manual_seed(SEED + sum(map(ord, name)))
    clean = torch.randint(0, vocab, (1, T), generator=g)
    corrupted = clean.clone()
    corrupted[0, 2] = (corrupted[0, 2] + 1 + torch.randint(0, vocab - 1, (1,), generator=g)) % vocab
    ref = torch.randint(0, vocab, (N_REF, T), generator=g)
    # Group of each position for the mapped mean: position 0 left alone (-1), then alternating groups.
    group = [-1] + [t % 2 for t in range(1, T)]
    with torch.no_grad():
        _, corr_cache = br.run_with_cache(corrupted)
        ref_z = []
        for i in range(N_REF):
            _, c = br.run_with_cache(ref[i:i + 1])
            ref_z.append(torch.stack([c[f"blocks.{L}.attn.hook_z"][0] for L in range(n_layers)]))  # (L, T, H, D)
    ref_z = torch.stack(ref_z)                       # (N_REF, L, T, H, D)
    mean_pos = ref_z.mean(0)                         # (L, T, H, D): row t
    mean_all = ref_z.mean((0, 2))                    # (L, H, D): one row for all positions
    mean_grp = torch.stack([ref_z[:, :, [t for t in range(T) if group[t] == k]].mean((0, 2)) for k in range(2)], 1)  # (L, 2, H, D)

    def run(tokens, hook_name, fn):
        def hook(act, hook):
            act = act.clone()
            fn(act)
            return act
        with torch.no_grad():
            logits = br.run_with_hooks(tokens, fwd_hooks=[(hook_name, hook)])
        return rounded(logits[0, -1])

    tpos = T // 2
    cases = []
    for L in range(n_layers):
        hz = f"blocks.{L}.attn.hook_z"
        for h in range(n_heads):
            def zero_all(a, h=h): a[:, :, h] = 0
            def zero_pos(a, h=h): a[:, tpos, h] = 0
            def mean_rows(a, h=h, L=L): a[0, :, h] = mean_pos[L, :, h]
            def mean_one(a, h=h, L=L): a[0, :, h] = mean_all[L, h]
            def mean_at(a, h=h, L=L): a[0, tpos, h] = mean_pos[L, tpos, h]
            def mean_map(a, h=h, L=L):
                for t in range(T):
                    if group[t] >= 0:
                        a[0, t, h] = mean_grp[L, group[t], h]
            for op, view, pos, fn in [("zero", "", -1, zero_all), ("zero", "", tpos, zero_pos),
                                      ("mean", "rows", -1, mean_rows), ("mean", "one", -1, mean_one),
                                      ("mean", "rows", tpos, mean_at), ("mean", "map", -1, mean_map)]:
                cases.append({"op": op, "view": view, "run": "clean", "hook": hz, "layer": L, "head": h,
                              "pos": pos, "logits_last": run(clean, hz, fn)})
            # Frozen: every head but h held at the corrupted run's value while the clean prompt runs.
            src = corr_cache[hz]
            def freeze_except(a, h=h, src=src):
                keep = a[:, :, h].clone()
                a[:] = src
                a[:, :, h] = keep
            cases.append({"op": "freeze", "view": "except", "run": "clean", "hook": hz, "layer": L, "head": h,
                          "pos": -1, "logits_last": run(clean, hz, freeze_except)})
        def freeze_all(a, src=corr_cache[hz]): a[:] = src
        cases.append({"op": "freeze", "view": "all", "run": "clean", "hook": hz, "layer": L, "head": -1,
                      "pos": -1, "logits_last": run(clean, hz, freeze_all)})
    doc = {
        "generator": "tests/golden/make_intervention_goldens.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "transformer_lens": pkg_version("transformer_lens"), "python": sys.version.split()[0]},
        "tl_loading": "make_goldens.load_bridge: TransformerBridge.boot_transformers + "
                      "enable_compatibility_mode(no_processing=True); batch-1 run_with_hooks, no BOS",
        "seed": SEED, "T": T, "tpos": tpos,
        "clean": clean[0].tolist(), "corrupted": corrupted[0].tolist(), "ref": ref.tolist(),
        "group": group,
        "notes": [
            "logits_last: logits[0, -1] of the clean prompt run with the one hook function",
            "zero: hook_z[:, pos or all, head] = 0",
            "mean rows: hook_z[:, t, head] = mean over the ref prompts of their hook_z[t, head] (pos = one t or all)",
            "mean one: the mean over the ref prompts and all positions, at every position",
            "mean map: position t takes the mean over the ref prompts and the positions of group[t]; -1 left alone",
            "freeze all: hook_z = the corrupted run's cached hook_z; freeze except: all heads but head",
        ],
        "cases": cases,
    }
    os.makedirs(os.path.join(out_root, name), exist_ok=True)
    path = os.path.join(out_root, name, "golden_interventions.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{name}: {len(cases)} cases -> {path}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    a = ap.parse_args()
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"transformer_lens {pkg_version('transformer_lens')}", flush=True)
    for m in a.models:
        make(m, a.out)


if __name__ == "__main__":
    main()
