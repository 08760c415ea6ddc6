#!/usr/bin/env bash
# The prepared GPU check, one command on a bare GPU machine (no network, no Debian packages): unpacks
# .gpu-bundle/ (made here by scripts/gpu-bundle.sh), probes the GPU, runs the gpu test suite, the CUDA
# forward and backward under compute-sanitizer, bench/sweeps --backend cuda and a Llama-2-7B-shaped sweep. Every step has
# its own time limit so the summary always comes back; logs and summary.json go to OUTDIR (at most 8 files).
#
#   scripts/gpu-check.sh OUTDIR [--budget SECONDS]   (default 450: under 8 minutes with the start-up)
#
# On a machine with a GPU, a test that reports SKIP is a failure here: the point of the run is the GPU.
# Without one (e.g. here, to check the script), the GPU steps report "skip" and the script exits 0.
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
out=${1:?usage: scripts/gpu-check.sh OUTDIR [--budget SECONDS]}
budget=450
[ "${2:-}" = --budget ] && budget=${3:?--budget SECONDS}
mkdir -p "$out"
t0=$(date +%s)
left() { echo $((budget - ($(date +%s) - t0))); }
summary=()   # JSON objects, one per step
log=$out/steps.log
: >"$log"
note() { echo "$*" | tee -a "$log"; }

# step NAME LIMIT COMMAND...: runs with a time limit (never past the budget), appends to steps.log and
# records status pass / fail / skip / timeout with seconds and the last line of output.
step() {
    local name=$1 limit=$2
    shift 2
    local l=$(left)
    [ "$limit" -gt "$l" ] && limit=$l
    if [ "$limit" -le 5 ]; then
        summary+=("{\"step\": \"$name\", \"status\": \"not run\", \"why\": \"budget spent\"}")
        note "== $name: not run (budget spent)"
        return
    fi
    note "== $name (limit ${limit}s)"
    local s=$(date +%s) rc
    timeout -k 5 "$limit" "$@" >"$out/step.tmp" 2>&1
    rc=$?
    cat "$out/step.tmp" >>"$log"
    local secs=$(($(date +%s) - s)) st=pass
    case $rc in 0) st=pass ;; 77) st=skip ;; 124 | 137) st=timeout ;; *) st=fail ;; esac
    [ "$st" = skip ] && [ "$have_gpu" = 1 ] && st=fail   # a SKIP with a GPU present hides a broken probe
    local last
    last=$(grep -v '^\s*$' "$out/step.tmp" | tail -1 | tr -d '"\\' | cut -c1-300)
    summary+=("{\"step\": \"$name\", \"status\": \"$st\", \"exit\": $rc, \"seconds\": $secs, \"last\": \"$last\"}")
    note "== $name: $st (exit $rc, ${secs}s)"
    rm -f "$out/step.tmp"
}

# --- unpack the bundle and find the GPU machine's own cuBLAS ---------------------------------------------
b=$repo/.gpu-bundle
[ -x "$b/bin/patchsweep" ] || { echo "gpu-check: no .gpu-bundle/ here: run scripts/gpu-bundle.sh first (and carry .gpu-bundle)" >&2; exit 2; }
work=$(mktemp -d /tmp/ps-gpu.XXXXXX)
tar -xJf "$b/lib.tar.xz" -C "$work"
libdirs=$work/lib
for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda*/targets/x86_64-linux/lib \
    $(python3 -c 'import nvidia.cublas, os; print(os.path.join(list(nvidia.cublas.__path__)[0], "lib"))' 2>/dev/null); do
    [ -e "$d/libcublas.so.13" ] && libdirs=$libdirs:$d
done
export LD_LIBRARY_PATH=$libdirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
missing=$(for f in "$b"/bin/*; do ldd "$f" | awk '/not found/ {print $1}'; done | sort -u | tr '\n' ' ')
have_gpu=0
nvidia-smi -L >/dev/null 2>&1 && have_gpu=1

{
    echo "gpu-check $(date -u +%FT%TZ) on $(hostname), budget ${budget}s"
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
    echo "missing libraries: ${missing:-none}"
    nvidia-smi 2>&1 || echo "nvidia-smi: none"
    nvcc --version 2>&1 | tail -2
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' 2>&1
    "$b/bin/patchsweep" version 2>&1
    "$b/bin/patchsweep" bench-gemm 2>&1
} >"$out/probe.log"
cat "$out/probe.log" >>"$log"
summary+=("{\"step\": \"probe\", \"gpu\": $have_gpu, \"missing_libraries\": \"${missing}\"}")
if [ -n "$missing" ]; then
    note "gpu-check: libraries not found: $missing"
fi

export PS_SRC=$repo PS_BIN=$b/bin/patchsweep OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}
export PS_SHARED=$b/shared-data

# --- 1. the gpu suite: every kernel, every tiny model (GPT-2, Llama, GPT-NeoX), every sweep kind through the
# engine, and the backward pass against ps_cpu_backward ----------------------------------------------------
for t in gpu_kernels gpu_forward gpu_ops gpu_sweeps; do
    step "$t" 150 "$b/bin/test_$t"
done
step gpu_backward 90 "$b/bin/test_gpu_backward"
# The scale driver: a Llama-2-7B layer at T = 2048, attention at T = 12288, GPT-2-small fp16/bf16 errors.
step gpu_scale 90 "$b/bin/test_gpu_scale"

# --- 2. compute-sanitizer on the forward test (memcheck, racecheck) ------------------------------------
if command -v compute-sanitizer >/dev/null && [ $have_gpu = 1 ]; then
    step memcheck 90 compute-sanitizer --tool memcheck --error-exitcode 1 "$b/bin/test_gpu_forward"
    step memcheck_backward 60 compute-sanitizer --tool memcheck --error-exitcode 1 "$b/bin/test_gpu_backward"
    step racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 1 "$b/bin/test_gpu_kernels"
else
    summary+=("{\"step\": \"sanitizer\", \"status\": \"skip\", \"why\": \"no compute-sanitizer or no GPU\"}")
fi

# --- 3. the benchmark against TransformerLens on the same GPU (wheels for what the image lacks) ---------
if ls "$b"/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$work/site" "$b"/whl/*.whl \
        >>"$log" 2>&1 && export PYTHONPATH=$work/site${PYTHONPATH:+:$PYTHONPATH}
fi
if [ $have_gpu = 1 ]; then
    step bench_cuda 240 env PS_BENCH_PYTHON=python3 bench/sweeps --backend cuda --build "$b/bin" --prompts 8 --tl-budget 120
else
    summary+=("{\"step\": \"bench_cuda\", \"status\": \"skip\", \"why\": \"no GPU\"}")
fi

# --- 4. a Llama-2-7B-shaped checkpoint (random bf16, two shards, written here) and one head sweep --------
if [ $have_gpu = 1 ]; then
    step llama7b 200 bash -c "python3 bench/make_llama7b.py '$work/llama7b' && \
        /usr/bin/time -v '$b/bin/patchsweep' run '$work/llama7b/sweep.json' -o '$work/llama7b.h5' --force 2>&1 | \
        grep -E 'patchsweep|Maximum resident|Elapsed' && nvidia-smi --query-gpu=memory.used,memory.total --format=csv"
else
    summary+=("{\"step\": \"llama7b\", \"status\": \"skip\", \"why\": \"no GPU\"}")
fi

# --- summary ------------------------------------------------------------------------------------------
{
    printf '{"device": "%s", "seconds": %d, "steps": [\n' \
        "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo none)" $(($(date +%s) - t0))
    for i in "${!summary[@]}"; do printf '  %s%s\n' "${summary[$i]}" "$([ "$i" -lt $((${#summary[@]} - 1)) ] && echo ,)"; done
    echo "]}"
} >"$out/summary.json"
rm -rf "$work"
cat "$out/summary.json"
fails=$(grep -cE '"status": "(fail|timeout)"' "$out/summary.json")
[ "$fails" -eq 0 ] || { echo "gpu-check: $fails step(s) failed"; exit 1; }
echo "gpu-check: done in $(($(date +%s) - t0))s"
