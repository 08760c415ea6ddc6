#!/usr/bin/env bash
# experiments/slurm/ against a real Slurm: a one-node cluster on this machine (munged, slurmctld and slurmd on
# localhost, a generated slurm.conf, no GPU gres) runs sweep.sbatch as a 4-task array and merge.sbatch after it.
# One task is requeued by hand while it runs; every task runs under a 1-minute time limit with the signal the
# script asks for, so tasks that outlive it are stopped, requeue themselves and resume from their journals.
# The merged file must equal one uninterrupted run. Needs root and Debian's slurm-wlm + munge; skipped (77)
# with the reason otherwise. Bounded in time; the daemons and files are removed on every exit path.
set -uo pipefail
bin=${PS_BIN:?}
src=${PS_SRC:?}
shared=${PS_SHARED:-$src/../shared/data}
limit_s=${PS_SLURM_TEST_LIMIT:-800}

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" -eq 0 ] || skip "needs root to start munged, slurmctld and slurmd"
for d in munged slurmctld slurmd sbatch scontrol squeue sacct; do
    command -v "$d" >/dev/null 2>&1 || [ -x "/usr/sbin/$d" ] || skip "$d not found (apt-get install slurm-wlm munge)"
done
[ -f "$shared/seqcont/data/numerals/numerals_prompts_done.jsonl" ] || skip "no shared data at $shared"
py=/usr/bin/python3
$py -c 'import h5py' 2>/dev/null || skip "no h5py for $py (scripts/setup.sh installs python3-h5py)"
PATH=$PATH:/usr/sbin

tmp=$(mktemp -d /tmp/ps-slurm.XXXXXX)
chmod 755 "$tmp"
pids=()
cleanup() {
    [ -n "${SLURM_CONF:-}" ] && scancel --quiet --full --user=root >/dev/null 2>&1
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
    sleep 1
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    pkill -9 -f "$tmp" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 1' INT TERM
fails=0
pass() { echo "ok: $*"; }
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
t_start=$(date +%s)
over() { [ $(($(date +%s) - t_start)) -gt "$limit_s" ]; }
logs() { for f in "$tmp"/*.log "$tmp"/work/logs/*; do [ -f "$f" ] && { echo "--- $f"; tail -20 "$f"; }; done; }

# --- munge with its own key and socket -------------------------------------------------------------------
dd if=/dev/urandom of="$tmp/munge.key" bs=1024 count=1 2>/dev/null
chmod 400 "$tmp/munge.key"
mkdir -p "$tmp/munge" && chmod 700 "$tmp/munge"
munged --force --socket="$tmp/munge/sock" --key-file="$tmp/munge.key" --pid-file="$tmp/munge/pid" \
    --log-file="$tmp/munged.log" --seed-file="$tmp/munge/seed" || { cat "$tmp/munged.log"; skip "munged does not start here"; }
pids+=("$(cat "$tmp/munge/pid")")

# --- slurm.conf: one node, this machine, ports chosen free ------------------------------------------------
node=$(hostname -s)
cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # nproc obeys OMP_NUM_THREADS, which meson sets to 1
mem=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2))
free_port() { $py -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ctl_port=$(free_port)
d_port=$(free_port)
mkdir -p "$tmp/state" "$tmp/spool" "$tmp/work/logs"
cat >"$tmp/slurm.conf" <<EOF
ClusterName=pstest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/munge/sock,cred_expire=10
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/slurmctld.pid
SlurmdPidFile=$tmp/slurmd.pid
SlurmctldLogFile=$tmp/slurmctld.log
SlurmdLogFile=$tmp/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait=20
MinJobAge=600
SchedulerParameters=defer_batch,bf_interval=5
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$tmp/slurm.conf
slurmctld -f "$SLURM_CONF" -i || { logs; skip "slurmctld does not start here"; }
for _ in $(seq 50); do [ -s "$tmp/slurmctld.pid" ] && break; sleep 0.2; done
pids+=("$(cat "$tmp/slurmctld.pid")")
slurmd -f "$SLURM_CONF" -N "$node" || { logs; skip "slurmd does not start here"; }
for _ in $(seq 50); do [ -s "$tmp/slurmd.pid" ] && break; sleep 0.2; done
pids+=("$(cat "$tmp/slurmd.pid")")
for _ in $(seq 100); do
    sinfo -h -o %T 2>/dev/null | grep -qE '^idle' && break
    sleep 0.3
done
sinfo -h -o %T | grep -qE '^idle' || { logs; fail "the node never became idle"; exit 1; }
pass "one-node cluster up (slurmctld :$ctl_port, slurmd :$d_port, $cpus CPUs)"

# --- the workload: the demo model on the seqcont numerals prompts, heavy enough that every shard outlives one of
# slurmctld's time-limit checks (every 30 s) even on an idle machine: six sweeps, each three times (about 33 s a
# shard alone on the AMD VM, 2026-12-01; about 70 s on the Intel VM, 2026-12-03, from its 16-prompt chunks' 23–27 s of compute). The demo config itself finishes in
# under a second. Chunks of 2 prompts (RUN_ARGS): a task run lasts 1 to 30 s before the signal, and it must
# commit a chunk in most of them to finish (with the default 16 a chunk took 23 to 35 s on the Intel VM with
# four tasks and the reference on two cores, so most runs ended with nothing new and the test ran out of time).
exps=""
for r in 1 2 3; do
    for sb in resid_pre:layer_pos z:layer_pos_head mlp_post:layer_neuron q:layer_pos_head k:layer_pos_head v:layer_pos_head; do
        exps="$exps${exps:+, }{\"name\": \"e$r${sb%%:*}\", \"site\": \"${sb%%:*}\", \"by\": \"${sb##*:}\"}"
    done
done
cat >"$tmp/work/sweep.json" <<EOF
{
  "model": "$src/models/demo",
  "threads": 1,
  "dataset": {
    "path": "$shared/seqcont/data/numerals/numerals_prompts_done.jsonl",
    "fields": {"clean": "text", "answer": "corr", "wrong": "incorr"},
    "corrupted": {"path": "$shared/seqcont/data/numerals/randDS_numerals.jsonl", "field": "text"},
    "limit": 190
  },
  "experiments": [$exps]
}
EOF
cd "$tmp/work" || exit 1
# The reference: one uninterrupted run, beside the cluster (same binary and thread count, so bitwise equal).
"$bin" run sweep.json -o ref.h5 --quiet 2>"$tmp/ref.err" &
ref_pid=$!

# The array: 1-minute limit with the script's own --signal (B:TERM) moved to 59 s before it, so the signal
# comes at slurmctld's first time-limit check after the first second (checks every 30 s), within every shard's run; the GPU gres is dropped (this node has none).
sub=$(sbatch --parsable --array=0-3 --time=1 --signal=B:TERM@59 --gres=none --cpus-per-task=1 \
    --export=ALL,CONFIG=sweep.json,PATCHSWEEP="$bin",OUTDIR=shards,RUN_ARGS="--chunk-prompts 2" \
    "$src/experiments/slurm/sweep.sbatch" 2>&1) \
    || { echo "$sub"; logs; fail "sbatch of sweep.sbatch refused"; exit 1; }
arr=${sub%%;*}
mj=$(sbatch --parsable --dependency=afterok:"$arr" --export=ALL,CONFIG=sweep.json,PATCHSWEEP="$bin",OUTDIR=shards,OUT=merged.h5 \
    "$src/experiments/slurm/merge.sbatch" 2>&1) || { echo "$mj"; fail "sbatch of merge.sbatch refused"; exit 1; }
mj=${mj%%;*}
pass "submitted array $arr (4 tasks) and merge $mj (afterok)"

# Requeue task 1 by hand once it has committed a chunk to its journal.
requeued=0
while ! over; do
    st=$(squeue -h -j "${arr}_1" -o %T 2>/dev/null)
    if [ "$st" = RUNNING ] && [ -s shards/shard1.h5.journal ]; then
        scontrol requeue "${arr}_1" && requeued=1
        break
    fi
    [ -z "$st" ] && break
    sleep 0.5
done
[ $requeued = 1 ] && pass "task 1 requeued while running" || fail "task 1 was never seen running with a journal"

# Wait for the merge job to end.
while ! over; do
    st=$(scontrol show job "$mj" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p')
    case "$st" in COMPLETED | FAILED | CANCELLED | TIMEOUT | OUT_OF_MEMORY | NODE_FAIL) break ;; esac
    # A dependency that can never be met leaves the merge pending forever: stop early.
    scontrol show job "$mj" 2>/dev/null | grep -q 'Reason=DependencyNeverSatisfied' && { st=NEVER; break; }
    sleep 2
done
wait "$ref_pid" || fail "reference run: $(cat "$tmp/ref.err")"
over && fail "the cluster did not finish within ${limit_s}s"
[ "$st" = COMPLETED ] && pass "merge job completed" || { fail "merge job ended $st"; logs; }

# Every task's log: task 1 started twice (requeued by hand); tasks stopped by the time limit's signal say
# so and requeued themselves.
starts1=$(grep -c 'patchsweep: resuming\|sweep.sbatch: start' logs/patchsweep-"${arr}"_1.out 2>/dev/null)
[ "${starts1:-0}" -ge 2 ] && pass "task 1 ran again after its requeue and resumed" || { fail "task 1's log shows ${starts1:-0} starts"; cat logs/patchsweep-"${arr}"_1.out 2>/dev/null; }
# Only the time limit's warning signal stops tasks 0, 2 and 3 (task 1 is also stopped by its requeue).
n_sig=$(cat logs/patchsweep-"${arr}"_[023].out 2>/dev/null | grep -c "sweep.sbatch: stopped by SIGTERM; requeueing ${arr}_[023] to resume")
[ "$n_sig" -ge 1 ] && pass "$n_sig task run(s) stopped by the time limit's signal and requeued themselves (that task only)" \
    || { fail "no task was stopped by the time limit's signal"; cat logs/*.out; }
# A finished task is never run again: nothing requeued the whole array.
n_again=$(cat logs/patchsweep-"${arr}"_*.out 2>/dev/null | grep -c 'nothing to do')
[ "$n_again" -eq 0 ] && pass "no finished task was run again" || { fail "$n_again finished task(s) were run again"; cat logs/*.out; }

if [ -f merged.h5 ] && [ -f ref.h5 ]; then
    $py - merged.h5 ref.h5 <<'PY' && pass "merged shards equal one uninterrupted run" || fail "merged file differs from the uninterrupted run"
import sys, h5py, numpy as np
a, b = h5py.File(sys.argv[1], "r"), h5py.File(sys.argv[2], "r")
n = 0
def cmp(name, obj):
    global n
    if isinstance(obj, h5py.Dataset) and not name.startswith("run"):
        x, y = obj[...], b[name][...]
        if x.dtype.kind == "f":
            assert x.shape == y.shape and np.array_equal(x, y, equal_nan=True), (name, np.nanmax(np.abs(x - y)))
        else:
            assert np.array_equal(x, y), name
        n += 1
a.visititems(cmp)
assert n > 10, n
assert a["run"].attrs["status"] in (b"complete", "complete")
print(f"  {n} datasets equal")
PY
else
    fail "missing merged.h5 or ref.h5"
fi
echo "slurm: $(($(date +%s) - t_start)) s"
[ $fails -eq 0 ] && echo "slurm: all passed" || { echo "slurm: $fails failure(s)"; exit 1; }
