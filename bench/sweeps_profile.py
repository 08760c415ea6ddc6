#!/usr/bin/env python3
"""bench/sweeps' suite at a reduced prompt count, single-threaded, in CPU time: where the CPU backend's time goes.

Wall time means nothing on a shared machine; CPU time of one thread does. This builds patchsweep with the
forward pass's step timers (-DPS_CPU_PROFILE, in BUILD, default build-prof/, never the default build), runs
bench/sweeps' five sweeps (the same model and prompts: the first N of its 20) with "threads": 1, and prints
the CPU time per step of the forward pass (GEMMs, attention, norms, activation, copies, hooks, unembedding;
the baselines' share), the GEMMs by rows per call, and the floor: the run's GFLOP at the BLAS's own
one-thread rate in CPU time on bench/sweeps' three GEMM shapes. Its last line is

    forward_cpu_s=<s> floor_s=<s> floor_ratio=<forward CPU / floor> non_gemm_s=<s>

    ~/.cache/ps-venv/bin/python bench/sweeps_profile.py                 # 4 prompts, all five sweeps
    ~/.cache/ps-venv/bin/python bench/sweeps_profile.py --prompts 2 --only z_layer_pos_head

Needs the bench's model (built by bench/sweeps, or here with torch) and the `tokenizers` module.
"""
import argparse
import json
import os
import re
import resource
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
    a = ap.parse_args()

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
    sb.write_config(cfg, items, None, 1, "cpu", only=a.only)
    for f in (out, out + ".partial", out + ".journal"):
        if os.path.exists(f):
            os.remove(f)
    # The weights' hash is cached beside the output: hash once untimed so the timed run does not.
    subprocess.run([exe, "run", cfg, "-o", out, "--dry-run"], capture_output=True, text=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = subprocess.run([exe, "run", cfg, "-o", out, "--force", "--quiet"], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        sb.fail(f"patchsweep failed ({r.returncode}):\n{r.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    m = sb.LINE.search(r.stderr)
    if not m:
        sb.fail(f"no compute line in patchsweep's output:\n{r.stderr[-2000:]}")
    gflop = float(m.group(2))
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


if __name__ == "__main__":
    main()
