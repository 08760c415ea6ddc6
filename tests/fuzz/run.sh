#!/usr/bin/env bash
# Builds the libFuzzer targets under AddressSanitizer + UBSan, replays every regression input, then fuzzes each target
# for a bounded time on a temporary copy of its seed corpus. Exit 0: clean; 1: a crash, leak, UB report, timeout or
# build failure (the reproducer's path is printed); 77: clang or its fuzzer runtime is missing (skip).
# Usage: tests/fuzz/run.sh [SECONDS_PER_TARGET]   (default 20; 0 replays seeds and regressions only)
# Env: FUZZ_TARGETS="fuzz_config fuzz_dataset" picks targets; FUZZ_CC picks the compiler (default clang);
#      FUZZ_KEEP=1 keeps the work directory; FUZZ_ARGS adds libFuzzer flags (e.g. "-jobs=2 -workers=2");
#      FUZZ_SRC=/path/to/src builds another copy of the sources (e.g. with a fix applied; headers from its ../include);
#      FUZZ_SEED=N fixes libFuzzer's seed (the test suite's run: a given tree tries the same inputs, as far as its time
#      reaches, on every run, so a finding is the tree's, not the luck of a seed; unset: a new seed each run).
set -u

secs=${1:-20}
case $secs in '' | *[!0-9]*) echo "usage: $0 [SECONDS_PER_TARGET]" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
src=${FUZZ_SRC:-$root/src}
inc=$(cd "$src/../include" 2>/dev/null && pwd) || inc=$root/include
cc=${FUZZ_CC:-clang}
all_targets="fuzz_config fuzz_dataset fuzz_model_config fuzz_safetensors fuzz_tokenizer_json fuzz_tokenizer_model fuzz_tokenizer_vocab
    fuzz_results fuzz_merge fuzz_journal fuzz_readback"
targets=${FUZZ_TARGETS:-$all_targets}

# Targets whose input reaches libhdf5 (fuzzed past its crashes; see below).
hdf5_targets="fuzz_results fuzz_merge fuzz_readback"

# The readers under test (a file missing from the tree fails the run: the list is out of date). They go into one
# static archive, so each target pulls in only the objects it needs and one module that does not compile fails only
# its targets.
readers="util/common util/json inputs/config inputs/config_ablation inputs/config_circuit inputs/config_dataset inputs/config_analysis inputs/dataset inputs/safetensors inputs/model
    inputs/model_config inputs/tokenizer inputs/tokenizer_hf inputs/tokenizer_sp inputs/unicode_nfc inputs/unicode_nfc_table
    results/table results/h5util results/h5file results/inspect results/merge results/journal results/readback"

if ! command -v "$cc" >/dev/null 2>&1; then
    echo "SKIP: $cc not found (apt-get install clang libclang-rt-14-dev)"
    exit 77
fi
work=$(mktemp -d "${TMPDIR:-/tmp}/psfuzz-run.XXXXXX") || exit 1
failed=0
cleanup() {   # shellcheck disable=SC2317  # (run by the EXIT trap)
    if [ "$failed" = 0 ] && [ -z "${FUZZ_KEEP:-}" ]; then rm -rf "$work"; else echo "work directory kept: $work"; fi
}
trap cleanup EXIT

# Does this clang have libFuzzer and the sanitizer runtimes? (Debian: libclang-rt-14-dev)
printf 'int LLVMFuzzerTestOneInput(const unsigned char *d, unsigned long n) { (void)d; (void)n; return 0; }\n' >"$work/probe.c"
if ! "$cc" -fsanitize=fuzzer,address,undefined "$work/probe.c" -o "$work/probe" >"$work/probe.log" 2>&1; then
    echo "SKIP: $cc cannot link -fsanitize=fuzzer,address,undefined (install libclang-rt-14-dev): $(head -c 300 "$work/probe.log")"
    exit 77
fi

# shellcheck disable=SC2054  # the commas are -fsanitize's
# libhdf5 (the results readers): Debian's serial build, found by pkg-config.
read -r -a h5_cflags <<<"$(pkg-config --cflags hdf5 2>/dev/null)"
read -r -a h5_libs <<<"$(pkg-config --libs hdf5 2>/dev/null)"
cflags=(-g -O1 -std=c11 -D_GNU_SOURCE -Wall -Wno-unused-parameter -Wno-unused-function "-I$inc" "${h5_cflags[@]}"
    -fsanitize=address,undefined -fno-sanitize-recover=undefined)
libs=(-lcjson -lpcre2-8 -lcrypto -lm -lpthread "${h5_libs[@]}" -lhdf5_hl)
# The targets' per-process input directories go under the work directory, so crashed runs leave nothing behind.
mkdir -p "$work/tmp"
export TMPDIR="$work/tmp"
export ASAN_OPTIONS="detect_leaks=1:allocator_may_return_null=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"
fuzz_flags=(-timeout=20 -rss_limit_mb=2048 -malloc_limit_mb=2048 -error_exitcode=1 -timeout_exitcode=1 -print_final_stats=1)
read -r -a extra_args <<<"${FUZZ_ARGS:-}"
case ${FUZZ_SEED:-} in '') ;; *[!0-9]*) echo "FUZZ_SEED: not a number: $FUZZ_SEED" >&2; exit 2 ;; *) extra_args+=("-seed=$FUZZ_SEED") ;; esac

mkdir -p "$work/obj" "$work/bin"
objs=()
for r in $readers; do
    if [ ! -f "$src/$r.c" ]; then echo "FAIL: $src/$r.c is missing (readers list out of date)"; failed=1; continue; fi
    if "$cc" "${cflags[@]}" -fsanitize=fuzzer-no-link -c "$src/$r.c" -o "$work/obj/${r//\//_}.o" 2>"$work/obj/${r//\//_}.log"; then
        objs+=("$work/obj/${r//\//_}.o")
    else
        echo "FAIL: $src/$r.c does not compile with clang:"
        head -20 "$work/obj/${r//\//_}.log"
        failed=1
    fi
done
ar rcs "$work/libreaders.a" "${objs[@]}" || exit 1
for t in $targets; do
    if [ ! -f "$here/$t.c" ]; then echo "FAIL: unknown target $t"; failed=1; continue; fi
    if ! "$cc" "${cflags[@]}" -fsanitize=fuzzer "$here/$t.c" "$work/libreaders.a" "${libs[@]}" -o "$work/bin/$t" \
        2>"$work/bin/$t.log"; then
        echo "FAIL: $t does not build (a reader it needs is missing from \$readers in $0?):"
        head -20 "$work/bin/$t.log"
        failed=1
    fi
done

report() {   # target, log, what
    echo "FAIL: $1: $3"
    grep -E "ERROR: |SUMMARY: |runtime error|FUZZ INVARIANT|Test unit written|ALARM|out-of-memory|Running: " "$2" | tail -12 | sed 's/^/    /'
    echo "    full log: $2"
    failed=1
}

for t in $targets; do
    bin="$work/bin/$t"
    [ -x "$bin" ] || continue
    log="$work/$t.replay.log"
    # Regressions (must not crash) and the seeds themselves, each run once.
    inputs=()
    for f in "$here/regressions/$t"/* "$here/corpus/$t"/*; do [ -f "$f" ] && inputs+=("$f"); done
    if [ ${#inputs[@]} -gt 0 ]; then
        if ! "$bin" "${fuzz_flags[@]}" "${inputs[@]}" >"$log" 2>&1; then
            report "$t" "$log" "a regression or seed input fails (reproduce: $bin <file>)"
            continue
        fi
    fi
    nreg=$(find "$here/regressions/$t" -type f 2>/dev/null | wc -l)
    [ "$secs" = 0 ] && { echo "ok   $t: $nreg regressions and seeds replayed"; continue; }

    mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
    cp "$here/corpus/$t"/* "$work/corpus/$t"/ 2>/dev/null
    dict=()
    [ -f "$here/dict/$t.dict" ] && dict=("-dict=$here/dict/$t.dict")
    log="$work/$t.fuzz.log"
    case " $hdf5_targets " in *" $t "*)
        # libhdf5 (not ours, not instrumented) crashes on corrupt files, which is why patchsweep checks seals and reads
        # in a child process. Fuzzing goes on past a crash (-fork) and each reproducer is then replayed: one whose
        # first frame outside the sanitizers and libc is in libhdf5 is counted as libhdf5's, any other fails.
        # (-timeout=60: past the 30 s a reading child gets before it is stopped, ps_h5_child_seconds)
        "$bin" "${fuzz_flags[@]}" -timeout=60 -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 -max_total_time="$secs" \
            "${dict[@]}" -artifact_prefix="$work/artifacts/$t/" "${extra_args[@]}" "$work/corpus/$t" >"$log" 2>&1
        ours=0 theirs=0 gone=0
        for a in "$work/artifacts/$t"/*; do
            [ -f "$a" ] || continue
            "$bin" -timeout=60 -rss_limit_mb=2048 -malloc_limit_mb=2048 "$a" >"$a.log" 2>&1
            top=$(grep -E '^ +#[0-9]+ ' "$a.log" | grep -vE 'sanitizer|fuzzer::|__asan|__interceptor|__lsan|in (malloc|calloc|realloc|free|strdup)|libc\.so|libstdc\+\+|in main |/string/|csu/|__libc_start|memcpy|memmove' | head -1)
            if [ -z "$top" ]; then gone=$((gone + 1))   # (a timeout or out-of-memory that does not reproduce alone)
            elif printf '%s' "$top" | grep -q 'libhdf5'; then theirs=$((theirs + 1)); else
                ours=$((ours + 1)); echo "FAIL: $t: a finding outside libhdf5: $a"; printf '    %s\n' "$top"; fi
        done
        runs=$(grep -oE '#[0-9]+: cov' "$log" | tail -1 | tr -dc 0-9)
        [ "$ours" -gt 0 ] && { failed=1; continue; }
        echo "ok   $t: $nreg regressions replayed, about ${runs:-?} runs in ${secs}s, $theirs findings inside libhdf5 (not ours), $gone that do not reproduce alone, none elsewhere"
        continue ;;
    esac
    if ! "$bin" "${fuzz_flags[@]}" -max_total_time="$secs" "${dict[@]}" -artifact_prefix="$work/artifacts/$t/" \
        "${extra_args[@]}" "$work/corpus/$t" >"$log" 2>&1; then
        report "$t" "$log" "fuzzing found a problem"
        for a in "$work/artifacts/$t"/*; do [ -f "$a" ] && echo "    reproducer: $a  (replay: $bin $a)"; done
        continue
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    echo "ok   $t: $nreg regressions replayed, ${runs:-?} runs in ${secs}s, corpus $(find "$work/corpus/$t" -type f | wc -l) files"
done

if [ "$failed" != 0 ]; then
    echo "fuzz: FAILED"
    exit 1
fi
echo "fuzz: all targets clean"
exit 0
