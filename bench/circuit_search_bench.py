#!/usr/bin/env python3
"""bench/circuit_search: seqcont's circuit search on the demo model over N seqcont numerals prompts (N/3 from each
template, from experiments/seqcont/data/numerals_demo.jsonl: the 1507 of the paper's 1536 whose clean and randDS
texts are 23 demo tokens) with their randDS lines as the mean reference, run by
patchsweep (`patchsweep run`, kind circuit_search) and by the torch reimplementation the goldens come from
(tests/golden/make_ablation_goldens.py: TransformerLens hooks, seqcont's loop), in one run. Prints both times,
the ratio and whether the two traces agree step for step. See bench/README.md."""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "golden"))


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=1455, help="prompts (a multiple of 3, at most 1455 = 3 x 485; default 1455)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--build", default=os.path.join(REPO, "build"))
    ap.add_argument("--threshold", type=float, default=20)
    ap.add_argument("--keep", help="keep the config and results here")
    a = ap.parse_args()
    n = max(3, min(1455, a.prompts - a.prompts % 3))
    per = n // 3
    rows = [json.loads(x) for x in open(os.path.join(REPO, "experiments", "seqcont", "data", "numerals_demo.jsonl"))]
    by_t = {t: [i for i, r in enumerate(rows) if r["template"] == t] for t in ("done", "lost", "names")}
    pick = [i for t in ("done", "lost", "names") for i in by_t[t][:per]]
    work = a.keep or tempfile.mkdtemp(prefix="ps-bench-search-")
    os.makedirs(work, exist_ok=True)
    # The prompts as seqcont's files hold them: no corrupted prompt (neither side runs one; patchsweep's baselines
    # would run it otherwise). randDS, the reference set, is what the demo file pairs as corrupted.
    with open(os.path.join(work, "prompts.jsonl"), "w") as f:
        for i in pick:
            f.write(json.dumps({k: v for k, v in rows[i].items() if k != "corrupted"}) + "\n")
    with open(os.path.join(work, "ref.jsonl"), "w") as f:
        for i in pick:
            f.write(json.dumps({"text": rows[i]["corrupted"]}) + "\n")
    cfg = {"model": os.path.join(REPO, "models", "demo"), "threads": a.threads, "metric": "logit_diff",
           "dataset": {"path": "prompts.jsonl", "fields": {"clean": "text", "answer": "corr", "wrong": "incorr"}},
           "experiments": [{"name": "search", "kind": "circuit_search", "with": "mean", "grouping": "per_position",
                            "reference": {"path": "ref.jsonl", "fields": {"clean": "text"}}, "mlp_means": "under_head_ablation",
                            "threshold": a.threshold}]}
    cpath = os.path.join(work, "search.json")
    json.dump(cfg, open(cpath, "w"), indent=1)
    load0 = os.getloadavg()
    print(f"circuit_search bench: demo model, {n} prompts ({per} per template), {n} randDS reference prompts, "
          f"threshold {a.threshold}, {a.threads} threads, {os.cpu_count()} CPUs, load average {load0[0]:.2f}", flush=True)

    out = os.path.join(work, "search.h5")
    # Wall time and CPU time (user + system over every thread: what a loaded machine distorts least).
    r0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    subprocess.run([os.path.join(a.build, "patchsweep"), "run", cpath, "-o", out, "--force", "--quiet"], check=True)
    r1, t_ps = resource.getrusage(resource.RUSAGE_CHILDREN), time.time() - t0
    c_ps = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    import h5py
    with h5py.File(out, "r") as f:
        v = f["results/search/values"][()]
        labels = [x.decode() if isinstance(x, bytes) else str(x) for x in f["results/search/step_label"][()]]
        circuit = f["results/search"].attrs["circuit"]
        circuit = circuit.decode() if isinstance(circuit, bytes) else str(circuit)
    print(f"patchsweep: {t_ps:.2f} s wall, {c_ps:.2f} s CPU, {len(labels)} steps, circuit {circuit}", flush=True)

    from make_ablation_goldens import Model, seqcont_search, torch  # the reference loop (TransformerLens hooks)
    from tokenizers import Tokenizer
    torch.set_num_threads(a.threads)
    folder = os.path.join(REPO, "models", "demo")
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    enc = lambda s: [1976] + tok.encode(s).ids   # the demo model's BOS, as patchsweep prepends it
    toks = torch.tensor([enc(rows[i]["text"]) for i in pick])
    ref = torch.tensor([enc(rows[i]["corrupted"]) for i in pick])
    ans = [tok.encode(rows[i]["corr"]).ids[0] for i in pick]
    wrong = [tok.encode(rows[i]["incorr"]).ids[0] for i in pick]
    mdl = Model(folder, json.load(open(os.path.join(folder, "config.json")))["vocab_size"])
    c0, t0 = time.process_time(), time.time()
    res = seqcont_search(mdl, toks, ans, wrong, ref, a.threshold)
    t_tl, c_tl = time.time() - t0, time.process_time() - c0
    steps = res["steps"]
    same = len(steps) == len(labels) and all(labels[i] == s["cand"] and int(v[i, 3]) == int(s["removed"]) for i, s in enumerate(steps))
    err = max((abs(float(v[i, 2]) - s["score"]) for i, s in enumerate(steps) if i < len(labels)), default=0.0)
    print(f"torch (TransformerLens hooks, seqcont's loop): {t_tl:.2f} s wall, {c_tl:.2f} s CPU, {len(steps)} steps", flush=True)
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f}")
    print(f"speedup_vs_torch={t_tl / t_ps:.1f} cpu_speedup_vs_torch={c_tl / c_ps:.1f} prompts={n} same_trace={same} max_score_diff={err:.2g}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
