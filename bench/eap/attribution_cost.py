#!/usr/bin/env python3
"""bench/eap/attribution_cost.py: what attribution patching of bench/sweeps' whole sweep suite (resid_pre, attn_out,
mlp_out by layer x position; z by layer x head and by layer x position x head) costs per prompt, in forward-pass
equivalents, on the random GPT-2-small checkpoint with bench/sweeps' prompts (12 tokens). Three runs of
`patchsweep run` on the same prompts:
  base:  only the baselines (the clean and corrupted forward passes with their caches, which every sweep and
         attribution needs) and one trivial cell (resid_post of the last layer by layer: only the unembedding);
  attr:  the suite as kind attribution, direction denoise (one backward pass per prompt);
  attr2: the suite as attribution in both directions (two backward passes per prompt).
and base1, base on the first prompt alone. Counted by the CPU time of each whole process (getrusage of the child:
on a shared machine wall time is not the work done): one forward pass F = (base - base1) / (2 (prompts - 1)), so
loading and writing cancel; attribution per prompt = (attr - base) / (prompts x F). Also printed: the same from
patchsweep's "compute ... s" line (the engine's wall time) and from the engine's FLOP figure (which charges a
backward pass as two forward passes: an estimate, not a measurement). --threads 1 (the default here) keeps the CPU
time free of threads spinning while they wait.
Usage: bench/eap/attribution_cost.py [--prompts N] [--threads T] [--repeat R]   (see bench/README.md)"""
import argparse
import json
import os
import resource
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench"))
import sweeps_bench as sb  # noqa: E402

SUITE = [dict(name=n, **f) for n, _fn, _axes, f in sb.SWEEPS]


def run(exe, work, name, items, exps, threads):
    cfg = {"model": sb.MODEL_DIR, "backend": "cpu", "precision": "fp32", "threads": threads, "prepend_bos": True,
           "metric": "logit_diff", "dataset": items, "experiments": exps}
    path = os.path.join(work, name + ".json")
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = sb.run_patchsweep(exe, path, os.path.join(work, name + ".h5"))
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res["cpu"] = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=20, help="at least 2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=1, help="runs of each config; the fastest counts (default 1)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    a = ap.parse_args()
    sb.ensure_model()
    exe, version = sb.ensure_binary(a.build, "cpu")
    items, _ = sb.make_dataset(a.prompts)
    work = tempfile.mkdtemp(prefix="ps-bench-attrcost-")
    n = a.prompts
    if n < 2:
        sb.fail("--prompts must be at least 2")
    sb.say(f"attribution cost: random GPT-2 small, {n} prompts x {sb.N_TOKENS} tokens, {a.threads} threads, "
           f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {version}")
    trivial = [{"name": "unembed_only", "kind": "patch_sweep", "site": "resid_post", "by": "layer", "layers": [11],
                "direction": "denoise"}]
    configs = {
        "base1": (items[:1], trivial),
        "base": (items, trivial),
        "attr": (items, [dict(e, name="attr_" + e["name"], kind="attribution", direction="denoise") for e in SUITE]),
        "attr2": (items, [dict(e, name=f"attr_{d}_{e['name']}", kind="attribution", direction=d) for e in SUITE
                          for d in ("denoise", "noise")]),
    }
    best = {}
    for rep in range(a.repeat):
        for k, (its, exps) in configs.items():
            r = run(exe, work, k, its, exps, a.threads)
            for key in ("compute", "cpu"):
                best.setdefault(k, {})[key] = min(best.get(k, {}).get(key, float("inf")), r[key])
            best[k]["gflop"] = r["gflop"]
            sb.say(f"  {k:6s} run {rep + 1}: compute {r['compute']:.3f} s, process CPU {r['cpu']:.3f} s, wall {r['wall']:.2f} s, "
                   f"engine {r['gflop']:.1f} GFLOP")
    # One forward pass: the baselines' CPU time per run, the process's fixed cost (loading, writing) taken out by
    # the one-prompt run; the compute line (wall time of the engine) beside it.
    F_cpu = (best["base"]["cpu"] - best["base1"]["cpu"]) / (2 * (n - 1))
    F_wall = best["base"]["compute"] / (2 * n)
    F_flop = best["base"]["gflop"] / (2 * n)
    sb.say(f"\none forward pass: {1e3 * F_cpu:.1f} ms CPU (base - base1), {1e3 * F_wall:.1f} ms of compute wall time, "
           f"{F_flop:.2f} GFLOP (engine)")
    res = {}
    for k, dirs in (("attr", 1), ("attr2", 2)):
        c = (best[k]["cpu"] - best["base"]["cpu"]) / (n * F_cpu)
        w = (best[k]["compute"] - best["base"]["compute"]) / (n * F_wall)
        f = (best[k]["gflop"] - best["base"]["gflop"]) / (n * F_flop)
        res[k] = c
        sb.say(f"{k} ({dirs} direction(s)), per prompt beyond the baselines: {c:.2f} forward passes by CPU time "
               f"({c / dirs:.2f} per direction; {c + 2:.2f} with the 2 baseline passes), {w:.2f} by compute wall time, "
               f"{f:.2f} by the engine's FLOP estimate")
    sb.say(f"load average at the end {os.getloadavg()[0]:.2f}; files in {work}")
    sb.say(f"attribution_forward_equivalents_per_prompt={res['attr']:.2f} with_baselines={res['attr'] + 2:.2f} "
           f"both_directions={res['attr2']:.2f}")


if __name__ == "__main__":
    main()
