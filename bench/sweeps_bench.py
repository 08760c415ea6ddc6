#!/usr/bin/env python3
"""patchsweep vs TransformerLens on the same activation-patching sweep suite, in one run.

Run it through bench/sweeps (which finds or installs the Python tools); bench/README.md explains the
model, the prompts, what is timed and how the floor is computed. Options: bench/sweeps --help.
The last line printed is
    speedup_vs_transformerlens=<x> floor_ratio=<patchsweep compute s / floor s> max_abs_diff=<d>
"""
import argparse
import itertools
import json
import os
import platform
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "patchsweep-bench")

# The model: GPT2Config's defaults are GPT-2 small (12 layers, d_model 768, 12 heads, vocabulary 50257,
# gelu_new). Random weights; initializer_range 0.05 instead of HF's 0.02 so the logit differences are
# O(1) rather than nearly flat (the residual projections get 0.05/sqrt(2*12), as HF does).
MODEL_SPEC = {"seed": 1234, "initializer_range": 0.05, "n_positions": 1024}
MODEL_DIR = os.path.join(CACHE, "gpt2-small-random")
BOS = 50256
N_TOKENS = 12   # every prompt, clean and corrupted, BOS included

# Sequence-continuation prompts, three members and a fourth to predict:
#   "Van 1, Hat 2, Ring 3, and Sun" -> " 4" (wrong: " 3", the last member, as in seqcont's "incorr")
# Positions (BOS = 0): members at 2, 5 and 8; the last token (11) is scored.
WORDS = ["Apple", "Ball", "Car", "Dog", "Fish", "Gold", "Hat", "Jar", "Moon", "Rat", "Sun", "Tree", "Wolf",
         "Bird", "Cat", "House", "Ice", "Key", "Map", "Nut", "Queen", "Ring", "Star", "Train", "Van", "Box",
         "Cow", "Desk", "Fan", "Gate", "Hill", "Iron", "King", "Pen", "Rose", "Wall", "Corn", "Fire", "Lake",
         "Road", "Sand", "Wind", "Flag", "Snow", "Table", "Watch", "Clock", "Glass"]
MEMBER_POS = [2, 5, 8]

# The suite: (name in the config / results file, TL function, TL axes, config experiment fields).
SWEEPS = [
    ("resid_pre", "get_act_patch_resid_pre", ("layer", "pos"), {"site": "resid_pre", "by": "layer_pos"}),
    ("attn_out", "get_act_patch_attn_out", ("layer", "pos"), {"site": "attn_out", "by": "layer_pos"}),
    ("mlp_out", "get_act_patch_mlp_out", ("layer", "pos"), {"site": "mlp_out", "by": "layer_pos"}),
    ("z_layer_head", "get_act_patch_attn_head_out_all_pos", ("layer", "head"), {"site": "z", "by": "layer_head"}),
    ("z_layer_pos_head", "get_act_patch_attn_head_out_by_pos", ("layer", "pos", "head"),
     {"site": "z", "by": "layer_pos_head"}),
]


def say(*a):
    print(*a, flush=True)


def fail(msg):
    print(f"sweeps: {msg}", file=sys.stderr, flush=True)
    sys.exit(1)


def shared_dir():
    for d in (os.environ.get("PS_SHARED"), os.path.join(os.path.dirname(REPO), "shared", "data"),
              "/work/shared/data"):
        if d and os.path.isfile(os.path.join(d, "gpt2-tokenizer", "tokenizer.json")):
            return d
    fail("cannot find the GPT-2 tokenizer: set PS_SHARED to the shared data folder (it holds gpt2-tokenizer/)")


# ---------------------------------------------------------------------------------------------------
# Model

def ensure_model():
    """Builds the random GPT-2-small checkpoint once; reuses it while its spec is unchanged."""
    stamp = os.path.join(MODEL_DIR, "bench_spec.json")
    want = dict(MODEL_SPEC, tokenizer="gpt2-tokenizer/tokenizer.json")
    if os.path.isfile(stamp) and os.path.isfile(os.path.join(MODEL_DIR, "model.safetensors")):
        with open(stamp) as f:
            if json.load(f) == want:
                return
    say(f"building the random GPT-2-small checkpoint in {MODEL_DIR} (once)")
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(MODEL_SPEC["seed"])
    cfg = GPT2Config(initializer_range=MODEL_SPEC["initializer_range"], n_positions=MODEL_SPEC["n_positions"])
    model = GPT2LMHeadModel(cfg).eval()
    os.makedirs(CACHE, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=CACHE, prefix="model-")
    model.save_pretrained(tmp, safe_serialization=True)
    for f in os.listdir(tmp):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(tmp, f))
    tokdir = os.path.join(shared_dir(), "gpt2-tokenizer")
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(os.path.join(tokdir, f), os.path.join(tmp, f))
    with open(os.path.join(tmp, "bench_spec.json"), "w") as f:
        json.dump(want, f)
    if os.path.isdir(MODEL_DIR):
        shutil.rmtree(MODEL_DIR)
    os.rename(tmp, MODEL_DIR)


# ---------------------------------------------------------------------------------------------------
# Dataset

def make_dataset(n):
    """n seqcont-style pairs, each exactly N_TOKENS tokens with BOS. The corrupted prompt changes 1, 2 or 3
    of the sequence members (cycling over the prompts) to other numbers, like the paper's randDS."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(MODEL_DIR, "tokenizer.json"))

    def ids(text):
        return [BOS] + tok.encode(text, add_special_tokens=False).ids

    rng = random.Random(20)
    items, meta = [], []
    for i in range(n):
        w = rng.sample(WORDS, 4)
        s = rng.randint(1, 8)
        clean_nums = [s, s + 1, s + 2]
        changed = sorted(rng.sample(range(3), 1 + i % 3))
        corr_nums = list(clean_nums)
        for j in changed:
            corr_nums[j] = rng.choice([x for x in range(1, 13) if x != clean_nums[j]])

        def text(nums):
            return f"{w[0]} {nums[0]}, {w[1]} {nums[1]}, {w[2]} {nums[2]}, and {w[3]}"
        it = {"clean": text(clean_nums), "corrupted": text(corr_nums), "answer": f" {s + 3}", "wrong": f" {s + 2}"}
        c, x = ids(it["clean"]), ids(it["corrupted"])
        a, b = tok.encode(it["answer"], add_special_tokens=False).ids, tok.encode(it["wrong"], add_special_tokens=False).ids
        if len(c) != N_TOKENS or len(x) != N_TOKENS:
            fail(f"prompt {i}: {len(c)} clean / {len(x)} corrupted tokens, want {N_TOKENS}: {it}")
        if len(a) != 1 or len(b) != 1:
            fail(f"prompt {i}: answer/wrong are not single tokens: {it}")
        diff = [p for p in range(N_TOKENS) if c[p] != x[p]]
        if diff != [MEMBER_POS[j] for j in changed]:
            fail(f"prompt {i}: clean and corrupted differ at {diff}, expected {[MEMBER_POS[j] for j in changed]}")
        items.append(it)
        meta.append({"clean_ids": c, "corrupted_ids": x, "answer_id": a[0], "wrong_id": b[0], "diff": diff})
    return items, meta


# ---------------------------------------------------------------------------------------------------
# patchsweep

def ensure_binary(build, backend):
    """Brings BUILD/patchsweep up to date (ninja) or builds it (scripts/setup.sh, else meson + ninja)."""
    exe = os.path.join(build, "patchsweep")
    if os.path.isfile(os.path.join(build, "build.ninja")):
        r = subprocess.run(["ninja", "-C", build, "patchsweep"], capture_output=True, text=True)
        if r.returncode != 0:
            fail(f"ninja -C {build} patchsweep failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    elif not os.path.isfile(exe):
        setup = os.path.join(REPO, "scripts", "setup.sh")
        say(f"building patchsweep in {build}")
        if os.path.isfile(setup):
            cmd = [[setup, build]]
        else:
            cmd = [["meson", "setup", build, "--buildtype=release"], ["ninja", "-C", build]]
        for c in cmd:
            r = subprocess.run(c, cwd=REPO, capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"{' '.join(c)} failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    r = subprocess.run([exe, "version"], capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.startswith("patchsweep"):
        fail(f"{exe} does not run ('{exe} version' gave status {r.returncode}: {(r.stdout + r.stderr).strip()!r}); "
             "rebuild it or pass --build DIR")
    return exe, r.stdout.strip()


def write_config(path, items, layers, threads, backend, only=None, batch_prompts=1):
    exps = []
    for name, _fn, _axes, fields in SWEEPS:
        if only is not None and name != only:
            continue
        e = dict(name=name, **fields, direction="denoise")
        if layers is not None:
            e["layers"] = layers
        exps.append(e)
    cfg = {"model": MODEL_DIR, "backend": backend, "precision": "fp32", "threads": threads,
           "prepend_bos": True, "metric": "logit_diff", "dataset": items, "experiments": exps}
    if batch_prompts > 1:
        cfg["batch_prompts"] = batch_prompts
    with open(path, "w") as f:
        json.dump(cfg, f, indent=1)


LINE = re.compile(r"compute ([0-9.]+) s, ([0-9.]+) GFLOP \(([0-9.]+) GFLOP/s\), (\d+) patches run, (\d+) known without")


def run_patchsweep(exe, cfg, out):
    # A fresh run: an old journal next to the output would make patchsweep resume instead of compute.
    for f in (out, out + ".partial", out + ".journal"):
        if os.path.exists(f):
            os.remove(f)
    t0 = time.perf_counter()
    r = subprocess.run([exe, "run", cfg, "-o", out, "--quiet"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        fail(f"patchsweep run failed (status {r.returncode}):\n{r.stderr.strip()}")
    m = LINE.search(r.stderr)
    if not m:
        fail(f"no 'compute ... GFLOP' line in patchsweep's stderr:\n{r.stderr.strip()}")
    return {"wall": wall, "compute": float(m.group(1)), "gflop": float(m.group(2)), "rate": float(m.group(3)),
            "run": int(m.group(4)), "skipped": int(m.group(5)), "stderr": r.stderr.strip()}


RATE_LINE = re.compile(r"measured ([0-9.]+) GFLOP/s")

# fp32 peaks without tensor cores, TFLOP/s, from NVIDIA's data sheets (boost clock), by a name fragment.
GPU_FP32_PEAK = [("H200", 66.9), ("H100 PCIe", 51.2), ("H100", 66.9), ("A100", 19.5), ("L40S", 91.6), ("L40", 90.5),
                 ("L4", 30.3), ("A10", 31.2), ("RTX 4090", 82.6), ("RTX 3090", 35.6), ("V100", 15.7)]


def backend_gemm_rate(exe, cfg):
    """The backend's own GEMM rate at the model's MLP shape, as `run --dry-run` measures it (cuBLAS for cuda)."""
    r = subprocess.run([exe, "run", cfg, "--dry-run"], capture_output=True, text=True)
    m = RATE_LINE.search(r.stdout)
    if r.returncode != 0 or not m:
        fail(f"patchsweep run --dry-run failed or printed no GEMM rate:\n{(r.stdout + r.stderr).strip()}")
    dev = re.search(r"\(cuda backend, ([^)]*)\)", r.stdout)
    return float(m.group(1)), (dev.group(1) if dev else None)


def read_results(path):
    import h5py
    import numpy as np
    res = {}
    with h5py.File(path, "r") as f:
        for name, *_ in SWEEPS:
            g = f["results"][name]
            r = {"mean": np.asarray(g["mean"], dtype=np.float64)}
            v = np.asarray(g["values"], dtype=np.float64)
            r["values_range"] = (float(np.nanmin(v)), float(np.nanmax(v)))
            r["layers"] = [int(x) for x in g["layer"][()]] if "layer" in g else None
            for k in ("patches_run", "patches_skipped"):
                r[k] = int(g.attrs[k]) if k in g.attrs else None
            res[name] = r
        pr = f["prompts"]
        res["_prompts"] = {k: np.asarray(pr[k]).tolist() for k in ("clean_ids", "corrupted_ids", "answer_id", "wrong_id")}
        b = f["baseline"]
        res["_baseline"] = {k: np.asarray(b[k + "_metric"], dtype=np.float64) for k in ("clean", "corrupted")}
    return res


GEMM_LINE = re.compile(r"gemm \S+: best ([0-9.]+) GFLOP/s \((\S+)\), chosen ([0-9.]+) GFLOP/s \((\S+)\)")


def gemm_rate(exe, threads):
    """bench-gemm at the model's shapes: [(shape, best rate, best candidate, chosen rate, chosen candidate, its
    candidate lines)]. The floor uses the best candidate (every OpenBLAS core type correct on this CPU, BLIS), not
    whichever one patchsweep chose: a misdetected kernel must not lower the bar it is measured against."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(threads), OMP_NUM_THREADS=str(threads))
    rates = []
    for shape in ((256, 768, 3072), (256, 3072, 768), (256, 768, 2304)):
        r = subprocess.run([exe, "bench-gemm", *map(str, shape)], capture_output=True, text=True, env=env)
        m = GEMM_LINE.search(r.stdout)
        if r.returncode != 0 or not m:
            fail(f"patchsweep bench-gemm {shape} failed: {(r.stdout + r.stderr).strip()}")
        cands = [ln for ln in r.stdout.splitlines() if ln.startswith(("candidate ", "cpu features", "chosen"))]
        rates.append((shape, float(m.group(1)), m.group(2), float(m.group(3)), m.group(4), cands))
    return rates


# ---------------------------------------------------------------------------------------------------
# TransformerLens

def tl_dense_gflop(cfg, batch, T):
    """What one TL forward costs, by formula: every token through every layer, the full unembedding."""
    D, L, V, F = cfg.d_model, cfg.n_layers, cfg.d_vocab, cfg.d_mlp
    tokens = batch * T
    per_layer = 2 * tokens * (3 * D * D + D * D + 2 * D * F) + 2 * 2 * batch * T * T * D
    return (L * per_layer + 2 * tokens * D * V) * 1e-9


def run_tl(items, meta, layers, threads, device, budget, fraction):
    import numpy as np
    import pandas as pd
    import torch
    from transformers import AutoTokenizer
    from transformer_lens import patching
    from transformer_lens.model_bridge import TransformerBridge

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(MODEL_DIR)
    br = TransformerBridge.boot_transformers(MODEL_DIR, tokenizer=tok, device=device, dtype=torch.float32)
    br.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    br.eval()
    load_s = time.perf_counter() - t0

    clean = torch.tensor([m["clean_ids"] for m in meta], device=device)
    if not torch.equal(br.to_tokens([it["clean"] for it in items]).to(device), clean):
        fail("TransformerLens's to_tokens (its BOS policy included) disagrees with the benchmark's token ids")
    corrupted = torch.tensor([m["corrupted_ids"] for m in meta], device=device)
    ans = torch.tensor([m["answer_id"] for m in meta], device=device)
    wrong = torch.tensor([m["wrong_id"] for m in meta], device=device)
    rows = torch.arange(len(meta), device=device)

    def metric(logits):
        return (logits[rows, -1, ans] - logits[rows, -1, wrong]).mean()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    out = {"load_s": load_s, "sweeps": {}}
    with torch.no_grad():
        t0_cache = time.perf_counter()
        clean_logits, clean_cache = br.run_with_cache(clean)
        sync()
        t1 = time.perf_counter()
        corr_logits, _corr_cache = br.run_with_cache(corrupted)
        sync()
        t2 = time.perf_counter()
        out["cache_s"] = t2 - t0_cache
        out["clean"] = float(metric(clean_logits))
        out["corrupted"] = float(metric(corr_logits))
        del _corr_cache
        # One untimed calibration forward, the way TL runs each cell (run_with_hooks); the cached runs
        # overestimate it (warm-up, caching every activation).
        t0 = time.perf_counter()
        br.run_with_hooks(corrupted, fwd_hooks=[])
        sync()
        fwd_est = min(t1 - t0_cache, t2 - t1, time.perf_counter() - t0)

        n_layers, n_heads = br.cfg.n_layers, br.cfg.n_heads
        T = clean.shape[1]
        L = list(range(n_layers)) if layers is None else layers
        axis_range = {"layer": L, "pos": list(range(T)), "head": list(range(n_heads))}
        grids = {}
        for name, _fn, axes, _f in SWEEPS:
            grids[name] = pd.DataFrame(list(itertools.product(*[axis_range[a] for a in axes])),
                                       columns=list(axes))
        total = sum(len(g) for g in grids.values())
        why = f"--tl-fraction {fraction}"
        if fraction is None:
            fraction = 1.0 if budget <= 0 or fwd_est * total <= budget else budget / (fwd_est * total)
            why = f"over the {budget:.0f} s budget"
        out["fraction"] = fraction
        out["fwd_est"] = fwd_est
        out["dense_gflop_per_fwd"] = tl_dense_gflop(br.cfg, len(meta), T)
        say(f"  one forward of the batch: {fwd_est:.2f} s -> all {total} cells ~{fwd_est * total:.0f} s; "
            + ("measuring every cell" if fraction >= 1.0 else
               f"{why}: measuring {100 * fraction:.1f}% of each sweep's cells"))
        rng = np.random.default_rng(7)
        for name, fn_name, axes, _f in SWEEPS:
            fn = getattr(patching, fn_name)
            grid = grids[name]
            n = len(grid)
            k = n if fraction >= 1.0 else min(n, max(len(axis_range["head"]), int(round(fraction * n))))
            sync()
            t0 = time.perf_counter()
            if k == n and layers is None:
                vals = fn(br, corrupted, clean_cache, metric)    # the plain call a user makes
                flat = vals.reshape(-1)
            else:
                # The same TL function over a chosen subset of its cells (rows of TL's own index frame).
                pick = np.arange(n) if k == n else np.sort(rng.choice(n, size=k, replace=False))
                sub = grid.iloc[pick].reset_index(drop=True)
                flat = fn(br, corrupted, clean_cache, metric, index_axis_names=None, index_df=sub)
                grid = sub
            sync()
            secs = time.perf_counter() - t0
            vals = flat.detach().double().cpu().numpy()
            out["sweeps"][name] = {"cells": n, "measured": k, "seconds": secs, "grid": grid.values.tolist(),
                                   "values": vals.tolist(), "axes": axes}
            say(f"  TransformerLens {name}: {k}/{n} cells in {secs:.2f} s")
    return out


# ---------------------------------------------------------------------------------------------------

def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(prog="bench/sweeps", description=(
        "patchsweep vs TransformerLens on a GPT-2-small-shaped random model: resid_pre, attn_out, mlp_out "
        "by layer x position; head z by layer x head and by layer x position x head; 20 prompts of 12 tokens."))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 prompts, layers 0 and 11 only, TransformerLens budget 90 s")
    ap.add_argument("--prompts", type=int, help="number of prompt pairs (default 20; --quick: 3)")
    ap.add_argument("--threads", type=int, default=0, help="threads for both sides (default: all cores, nproc)")
    ap.add_argument("--build", default=os.path.join(REPO, "build"), help="patchsweep build dir (default ./build)")
    ap.add_argument("--backend", choices=("cpu", "cuda"), default="cpu",
                    help="cuda: patchsweep with backend cuda and TransformerLens on the GPU")
    ap.add_argument("--tl-budget", type=float,
                    help="seconds TransformerLens may spend on the sweeps; beyond it a uniform random subset of "
                         "each sweep's cells is measured and its time EXTRAPOLATED (default 1500, --quick 90; "
                         "0: no limit)")
    ap.add_argument("--tl-fraction", type=float,
                    help="measure exactly this fraction of every sweep's cells in TransformerLens (extrapolated)")
    ap.add_argument("--batch-prompts", type=int, default=4,
                    help="patchsweep's batch_prompts: blocks of this many prompts share its backend calls, as "
                         "TransformerLens's side runs all prompts in one forward (default 4; 1: a prompt a call)")
    ap.add_argument("--keep", metavar="DIR", help="keep the config and results file in DIR")
    a = ap.parse_args()

    threads = a.threads or os.cpu_count() or 1
    n_prompts = a.prompts or (3 if a.quick else 20)
    if a.tl_budget is None:
        a.tl_budget = 90.0 if a.quick else 1500.0
    layers = [0, 11] if a.quick else None
    if a.tl_fraction is not None and not 0 < a.tl_fraction <= 1:
        fail("--tl-fraction must be in (0, 1]")

    if a.backend == "cuda":
        if shutil.which("nvidia-smi") is None or subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode:
            fail("--backend cuda: no NVIDIA GPU on this machine (nvidia-smi finds none); run with --backend cpu")
        import torch
        if not torch.cuda.is_available():
            fail("--backend cuda: this Python's torch cannot use the GPU (torch.cuda.is_available() is False)")
    device = "cuda" if a.backend == "cuda" else "cpu"

    build = os.path.abspath(a.build)
    exe, ps_version = ensure_binary(build, a.backend)
    ensure_model()
    items, meta = make_dataset(n_prompts)

    import numpy as np
    import torch
    import transformers
    from importlib.metadata import version as pkg_version

    load0 = os.getloadavg()
    say(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    say(f"versions: {ps_version} ({exe}), torch {torch.__version__}, transformers {transformers.__version__}, "
        f"transformer_lens {pkg_version('transformer_lens')}")
    say(f"model: random GPT-2 small (12 layers, d_model 768, 12 heads, vocab 50257; seed {MODEL_SPEC['seed']}, "
        f"init std {MODEL_SPEC['initializer_range']}) at {MODEL_DIR}")
    firsts = [m["diff"][0] for m in meta]
    say(f"prompts: {n_prompts} pairs x {N_TOKENS} tokens (BOS included), e.g. {items[0]['clean']!r} -> "
        f"{items[0]['answer']!r} / {items[0]['wrong']!r}, corrupted {items[0]['corrupted']!r}")
    say("  clean/corrupted differ at " + ", ".join(
        f"{k} position(s): {sum(len(m['diff']) == k for m in meta)} prompts" for k in (1, 2, 3))
        + "; first differing position " + ", ".join(f"{p}: {firsts.count(p)}" for p in sorted(set(firsts))))
    say(f"backend {a.backend}, {threads} threads on both sides" + (", layers 0 and 11 only (--quick)" if a.quick else ""))

    work = os.path.abspath(a.keep) if a.keep else tempfile.mkdtemp(prefix="ps-bench-")
    os.makedirs(work, exist_ok=True)
    cfg_path, out_path = os.path.join(work, "bench_sweeps.json"), os.path.join(work, "bench_sweeps.h5")
    write_config(cfg_path, items, layers, threads, a.backend, batch_prompts=a.batch_prompts)

    say("\n== patchsweep")
    # The GEMM rate before and after the run: on a shared machine it moves with the other load.
    rates = gemm_rate(exe, threads)
    ps = run_patchsweep(exe, cfg_path, out_path)
    for line in ps["stderr"].splitlines():
        say("  " + line)
    rates_after = gemm_rate(exe, threads)
    for ln in rates[0][5]:
        say(f"  bench-gemm {' '.join(map(str, rates[0][0]))}: {ln}")
    for when, rr in (("before", rates), ("after", rates_after)):
        say(f"  {when} the run: " + "; ".join(f"bench-gemm {m} {k} {n}: best {r:.2f} GFLOP/s ({bn}), chosen {c:.2f} ({cn})"
                                             for (m, k, n), r, bn, c, cn, _l in rr))
    rates = rates + rates_after
    psr = read_results(out_path)
    p = psr["_prompts"]
    if (p["clean_ids"] != [m["clean_ids"] for m in meta] or p["corrupted_ids"] != [m["corrupted_ids"] for m in meta]
            or p["answer_id"] != [m["answer_id"] for m in meta] or p["wrong_id"] != [m["wrong_id"] for m in meta]):
        fail("patchsweep tokenized the prompts differently from the GPT-2 tokenizer in Python (see /prompts in "
             f"{out_path}); the comparison would be meaningless")
    say("  patchsweep's token ids (/prompts) equal the Python tokenizer's, BOS included")

    # Each sweep alone, in its own process (its baselines included), for per-sweep times and rates.
    per_ps = {}
    for name, *_ in SWEEPS:
        cfg_i, out_i = os.path.join(work, f"bench_{name}.json"), os.path.join(work, f"bench_{name}.h5")
        write_config(cfg_i, items, layers, threads, a.backend, only=name, batch_prompts=a.batch_prompts)
        per_ps[name] = run_patchsweep(exe, cfg_i, out_i)
    say("  each sweep alone: " + "; ".join(f"{n} {r['compute']:.2f} s ({r['gflop']:.1f} GFLOP)" for n, r in per_ps.items()))
    gpu_rate, gpu_name, gpu_peak = None, None, None
    if a.backend == "cuda":
        gpu_rate, gpu_name = backend_gemm_rate(exe, cfg_path)
        gpu_peak = next((pk for frag, pk in GPU_FP32_PEAK if gpu_name and frag in gpu_name), None)
        say(f"  GPU: {gpu_name}; cuBLAS fp32 GEMM at 256x768x3072 (the dry run's probe): {gpu_rate / 1e3:.2f} TFLOP/s; "
            + (f"data-sheet fp32 peak {gpu_peak} TFLOP/s" if gpu_peak else "data-sheet peak unknown for this GPU"))

    say("\n== TransformerLens (one batched call per sweep, all prompts; model loading not timed)")
    tl = run_tl(items, meta, layers, threads, device, a.tl_budget, a.tl_fraction)
    load1 = os.getloadavg()

    # ---- compare
    max_diff, vmin, vmax = 0.0, float("inf"), float("-inf")
    rows = []
    for name, _fn, axes, _f in SWEEPS:
        s, r = tl["sweeps"][name], psr[name]
        lay = r["layers"] if r["layers"] is not None else list(range(r["mean"].shape[0]))
        li = {l: i for i, l in enumerate(lay)}
        d = 0.0
        for idx, v in zip(s["grid"], s["values"]):
            pv = r["mean"][(li[int(idx[0])],) + tuple(int(x) for x in idx[1:])]
            d = max(d, abs(pv - v)) if np.isfinite(pv) else float("inf")
            vmin, vmax = min(vmin, v), max(vmax, v)
        max_diff = max(max_diff, d)
        t_full = s["seconds"] * s["cells"] / s["measured"]
        rows.append((name, "x".join(axes), s["cells"], s["measured"], s["seconds"], t_full,
                     1e3 * s["seconds"] / s["measured"], d))
    b = psr["_baseline"]
    base_d = max(abs(float(np.mean(b["clean"])) - tl["clean"]), abs(float(np.mean(b["corrupted"])) - tl["corrupted"]))

    extrap = any(r[2] != r[3] for r in rows)
    say("\n== per sweep (patchsweep: each sweep alone, compute time incl. its baselines; rate = its GFLOP / that time)")
    peak_col = f"{'% peak':>8}" if gpu_peak else ""
    say(f"{'sweep':<18}{'axes':<16}{'cells':>7}{'TL cells run':>14}{'TL s (run)':>12}{'TL s (all cells)':>18}"
        f"{'TL ms/cell':>12}{'max|diff|':>12}{'ps s':>10}{'ps GFLOP/s':>12}{peak_col}{'TL/ps':>8}")
    for name, axes, n, k, secs, full, per, d in rows:
        tag = "" if n == k else " *"
        r = per_ps[name]
        rate = r["gflop"] / r["compute"] if r["compute"] > 0 else 0.0
        pk = f"{100 * rate / (1e3 * gpu_peak):>7.1f}%" if gpu_peak else ""
        say(f"{name:<18}{axes:<16}{n:>7}{k:>14}{secs:>12.2f}{full:>16.2f}{tag:<2}{per:>12.1f}{d:>12.3g}"
            f"{r['compute']:>10.2f}{rate:>12.1f}{pk}{full / r['compute']:>8.1f}")
    tl_sweeps = sum(r[5] for r in rows)
    tl_total = tl_sweeps + tl["cache_s"]
    say(f"{'(2 run_with_cache)':<18}{'':<16}{'':>7}{'':>14}{tl['cache_s']:>12.2f}{tl['cache_s']:>16.2f}")
    if extrap:
        say(f"* EXTRAPOLATED: TransformerLens ran a fixed random subset ({100 * tl['fraction']:.1f}%, seed 7) of these "
            "sweeps' cells; every TL cell is one forward of the same batch, so the time for all cells is the "
            "measured time x cells / cells run. max|diff| covers the cells run.")

    gflop = ps["gflop"]
    # The floor's GEMM rate: the CPU's best bench-gemm candidate at any shape, or on a GPU the backend's cuBLAS probe.
    best = gpu_rate if gpu_rate else max(r[1] for r in rates)
    floor_s = gflop / best
    tl_gflop = tl["dense_gflop_per_fwd"] * (sum(r[2] for r in rows) + 2)
    say("\n== summary")
    pmin = min(psr[n]["values_range"][0] for n, *_ in SWEEPS)
    pmax = max(psr[n]["values_range"][1] for n, *_ in SWEEPS)
    say(f"metric (mean over prompts of the logit difference): TL's patched cells span {vmin:.4f} .. {vmax:.4f}; "
        f"unpatched clean {tl['clean']:.4f}, corrupted {tl['corrupted']:.4f} (|patchsweep - TL| {base_d:.3g}); "
        f"per prompt (patchsweep /values) {pmin:.3f} .. {pmax:.3f}")
    say(f"patchsweep: compute {ps['compute']:.3f} s, whole process (load, tokenize, sweeps, write HDF5) "
        f"{ps['wall']:.3f} s; {gflop:.3f} GFLOP; {ps['run']} patches run, {ps['skipped']} known without running")
    measured = sum(r[4] for r in rows) + tl["cache_s"]
    ex_note = f" (EXTRAPOLATED from {measured:.2f} s measured)" if extrap else ""
    say(f"TransformerLens: {tl_total:.2f} s{ex_note}"
        f" = sweeps {tl_sweeps:.2f} s + 2 cached runs {tl['cache_s']:.2f} s; model load {tl['load_s']:.2f} s not counted;"
        f" dense work by formula {tl_gflop:.0f} GFLOP ({tl_gflop / gflop:.0f}x patchsweep's)")
    say(f"speedup vs TransformerLens: {tl_total / ps['wall']:.2f}x on patchsweep's whole process, "
        f"{tl_total / ps['compute']:.2f}x on its compute time" + (" (TL time EXTRAPOLATED)" if extrap else ""))
    rate_src = "cuBLAS probe" if gpu_rate else "best bench-gemm candidate"
    say(f"floor: {gflop:.3f} GFLOP / {best:.2f} GFLOP/s ({rate_src}) = {floor_s:.3f} s; patchsweep compute is "
        f"{ps['compute'] / floor_s:.2f}x the floor, its whole process {ps['wall'] / floor_s:.2f}x")
    say(f"max |patchsweep - TL| over {sum(r[3] for r in rows)} cells: {max_diff:.3g} (values span {vmin:.3f} .. {vmax:.3f})")
    say(f"load average: {load0[0]:.2f} at start, {load1[0]:.2f} at end (1-minute)")
    if a.keep:
        say(f"kept {cfg_path} and {out_path}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    if extrap:
        say("(speedup below uses the EXTRAPOLATED TransformerLens time and patchsweep's whole-process time)")
    else:
        say("(speedup below uses patchsweep's whole-process time)")
    say(f"speedup_vs_transformerlens={tl_total / ps['wall']:.2f} floor_ratio={ps['compute'] / floor_s:.2f} "
        f"max_abs_diff={max_diff:.3g}")


if __name__ == "__main__":
    main()
