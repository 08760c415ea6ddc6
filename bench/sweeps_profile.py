#!/usr/bin/env python3
"""bench/sweeps' suite at a reduced prompt count, single-threaded, in CPU time: where the CPU backend's time goes.

Wall time means nothing on a shared machine; CPU time of one thread does. This builds patchsweep with the
forward pass's step timers (-DPS_CPU_PROFILE, in BUILD, default build-prof/, never the default build), runs
bench/sweeps' five sweeps (the same model and prompts: the first N of its 20) with "threads": 1, and prints
the CPU time per step of the forward pass (GEMMs, attention, norms, activation, copies, hooks, unembedding;
the baselines' share), the GEMMs by rows per call, and the floor: the run's GFLOP at the BLAS's own
one-thread rate in CPU time on bench/sweeps' three GEMM shapes. Its last line is

    forward_cpu_s=<s> floor_s=<s> floor_ratio=<forward CPU / floor> non_gemm_s=<s>

With --threads 2 the step timers add up both threads' CPU time, libgomp's spinning included, so they no
longer give shares; --perf then runs patchsweep under `perf record` (call graphs) and splits every thread's
on-CPU samples of the sweep into the BLAS, other work, libgomp (workers spinning between parallel regions,
threads waiting at a region's barrier for the other) and the main thread's serial work outside any parallel
region: what two threads lose, without trusting wall time (a descheduled thread still inflates the other's
wait, so compare runs at a similar load). Its last line is then

    threads=<n> compute_s=<wall> blas=<share> work=<share> gomp=<share> serial=<share>

    ~/.cache/ps-venv/bin/python bench/sweeps_profile.py                 # 4 prompts, all five sweeps
    ~/.cache/ps-venv/bin/python bench/sweeps_profile.py --prompts 2 --only z_layer_pos_head
    ~/.cache/ps-venv/bin/python bench/sweeps_profile.py --threads 2 --perf --build build   # where 2 threads lose

Needs the bench's model (built by bench/sweeps, or here with torch) and the `tokenizers` module.
"""
import argparse
import collections
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import sweeps_bench as sb  # noqa: E402  (the model, the prompts and the config of bench/sweeps)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=4, help="prompt pairs (the first N of bench/sweeps' 20; default 4)")
    ap.add_argument("--only", choices=[s[0] for s in sb.SWEEPS], help="one sweep instead of all five")
    ap.add_argument("--build", default=os.path.join(sb.REPO, "build-prof"), help="profiling build dir (default build-prof/)")
    ap.add_argument("--keep", metavar="DIR", help="keep the config and results file in DIR")
    ap.add_argument("--threads", type=int, default=1, help="OpenMP threads (default 1: the step timers' shares are exact)")
    ap.add_argument("--batch-prompts", type=int, default=4, help="the config's batch_prompts (as bench/sweeps; default 4)")
    ap.add_argument("--perf", action="store_true",
                    help="run under perf record and split each thread's samples (BLAS, work, libgomp, serial); "
                         "works with any build (--build build: no step timers)")
    a = ap.parse_args()

    if a.perf and not shutil.which("perf"):
        sb.fail("--perf: no perf on PATH (Debian: apt-get install linux-perf)")
    if not os.path.isfile(os.path.join(a.build, "build.ninja")):
        r = subprocess.run(["meson", "setup", a.build, "-Dcuda=disabled", "-Dc_args=-DPS_CPU_PROFILE"], cwd=sb.REPO,
                           capture_output=True, text=True)
        if r.returncode != 0:
            sb.fail(f"meson setup {a.build} failed:\n{r.stdout[-3000:]}{r.stderr[-2000:]}")
    exe, version = sb.ensure_binary(a.build, "cpu")
    sb.ensure_model()
    items, _meta = sb.make_dataset(a.prompts)
    out_dir = a.keep or tempfile.mkdtemp(prefix="ps-profile-")
    os.makedirs(out_dir, exist_ok=True)
    cfg, out = os.path.join(out_dir, "profile.json"), os.path.join(out_dir, "profile.h5")
    sb.write_config(cfg, items, None, a.threads, "cpu", only=a.only, batch_prompts=a.batch_prompts)
    for f in (out, out + ".partial", out + ".journal"):
        if os.path.exists(f):
            os.remove(f)
    # The weights' hash is cached beside the output: hash once untimed so the timed run does not.
    subprocess.run([exe, "run", cfg, "-o", out, "--dry-run"], capture_output=True, text=True)
    cmd = [exe, "run", cfg, "-o", out, "--force", "--quiet"]
    pdata = os.path.join(out_dir, "perf.data")
    if a.perf:
        # 499 Hz and 8 KiB of stack a sample: enough to see an OpenMP region's frames, small enough to keep perf's
        # own cost out of the picture.
        cmd = ["perf", "record", "-q", "-F", "499", "--call-graph", "dwarf,8192", "-o", pdata, "--"] + cmd
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sb.fail(f"patchsweep failed ({r.returncode}):\n{r.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = sb.LINE.search(r.stderr)
    if not m:
        sb.fail(f"no compute line in patchsweep's output:\n{r.stderr[-2000:]}")
    gflop = float(m.group(2))
    if a.perf:
        thread_split(pdata, a.threads, float(m.group(1)), version, exe, a)
        return
    prof = {k.strip(): float(v) for k, v in re.findall(r"profile: (.+?)\s+([0-9.]+) s cpu\n", r.stderr)}
    rate = re.search(r"profile: gemm rate ([0-9.]+) GFLOP/s", r.stderr)
    if "forward total" not in prof or not rate:
        sb.fail(f"{exe} prints no profile: is it built with -DPS_CPU_PROFILE?\n{r.stderr[-2000:]}")
    rate = float(rate.group(1))
    sb.say(f"{version} ({exe}); {a.prompts} prompts, {a.only or 'all five sweeps'}, threads 1; load average "
           f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for line in r.stderr.splitlines():
        if line.startswith("profile:") or "compute" in line:
            sb.say("  " + line)
    fwd = prof["forward total"]
    floor = gflop / rate
    non_gemm = fwd - prof["gemm"]
    sb.say(f"process CPU time {cpu:.3f} s (load, tokenize, write and the exit-time GEMM-rate probe included); forward {fwd:.3f} s, of it GEMMs "
           f"{prof['gemm']:.3f} s and the rest {non_gemm:.3f} s")
    sb.say(f"floor: {gflop:.3f} GFLOP / {rate:.1f} GFLOP/s = {floor:.3f} s; forward / floor = {fwd / floor:.3f}; "
           f"(floor + non-GEMM) / floor = {(floor + non_gemm) / floor:.3f}")
    sb.say(f"forward_cpu_s={fwd:.3f} floor_s={floor:.3f} floor_ratio={fwd / floor:.3f} non_gemm_s={non_gemm:.3f}")


def thread_split(pdata, threads, compute_s, version, exe, a):
    """Each thread's on-CPU samples of the sweep: BLAS, other work, libgomp, and the main thread's serial work."""
    r = subprocess.run(["perf", "script", "-i", pdata, "-F", "tid,time,ip,sym,dso"], capture_output=True, text=True)
    if r.returncode != 0:
        sb.fail(f"perf script failed:\n{r.stderr[-2000:]}")
    samples, cur = [], None  # (tid, time, [frames, leaf first])
    for line in r.stdout.split("\n"):
        if not line.strip():
            if cur:
                samples.append(cur)
            cur = None
        elif not line[0].isspace():
            p = line.split()
            cur = (p[0], float(p[1].rstrip(":")), [])
        elif cur:
            cur[2].append(line.strip())
    if cur:
        samples.append(cur)
    if not samples:
        sb.fail("perf recorded no samples")
    main_tid = samples[0][0]
    in_region = lambda fr: any("_omp_fn" in f or "GOMP_" in f for f in fr)
    # The sweep: from the first sample of an OpenMP worker (created by the first parallel region) to the last
    # one (the profiled binary's exit-time GEMM-rate probe runs on the main thread alone, after).
    wt = [t for tid, t, fr in samples if tid != main_tid and in_region(fr)]
    if threads > 1 and not wt:
        sb.fail("no OpenMP worker in the samples (did the run use one thread?)")
    t0, t1 = (min(wt), max(wt)) if wt else (samples[0][1], samples[-1][1])
    cat = collections.Counter()
    serial_at = collections.Counter()
    for tid, t, fr in samples:
        if not (t0 <= t <= t1) or not fr:
            continue
        leaf = fr[0]
        who = "main" if tid == main_tid else "worker"
        if "libgomp" in leaf:
            k = "gomp"
        elif "openblas" in leaf or "libblis" in leaf:
            k = "blas"
        elif who == "main" and not in_region(fr):
            k = "serial"
            fn = next((f.split()[1] for f in fr if f.endswith(f"({exe})") or "/patchsweep)" in f), "?")
            serial_at[fn.split("+")[0]] += 1
        else:
            k = "work"
        if who == "worker" and tid != main_tid and not in_region(fr) and k == "work":
            k = "other"  # a thread that is not OpenMP's (HDF5, OpenBLAS's idle pool)
        cat[(who, k)] += 1
    tot = sum(cat.values())
    sb.say(f"{version} ({exe}); {a.prompts} prompts, {a.only or 'all five sweeps'}, threads {threads}, under perf; load "
           f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    sb.say(f"compute {compute_s:.3f} s wall (patchsweep's line); {tot} on-CPU samples of the sweep at 499 Hz "
           f"({t1 - t0:.2f} s from the first worker sample to its last)")
    for who in ("main", "worker"):
        n = sum(v for (w, _k), v in cat.items() if w == who)
        if n:
            sb.say(f"  {who:6s} " + "  ".join(f"{k} {cat[(who, k)] / n:6.1%}" for k in ("blas", "work", "gomp", "serial", "other")
                                             if cat[(who, k)]))
    sb.say("  the main thread's serial work by function: " +
           ", ".join(f"{fn} {v / tot:.2%}" for fn, v in serial_at.most_common(6)))
    share = lambda k: sum(v for (_w, kk), v in cat.items() if kk == k) / tot
    sb.say(f"threads={threads} compute_s={compute_s:.3f} blas={share('blas'):.3f} work={share('work'):.3f} "
           f"gomp={share('gomp'):.3f} serial={share('serial'):.3f}")


if __name__ == "__main__":
    main()
