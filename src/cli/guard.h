// What `run` checks around the engine so an overnight job fails early and says why: strict numbers on the
// command line, a usable output path, one run per output (a lock), progress lines for batch logs, and results
// that mean something. Private to src/cli.
#ifndef PS_CLI_GUARD_H
#define PS_CLI_GUARD_H

#include "ps_common.h"

#include <stdint.h>

// The most shards a run may be split into (a Slurm array of this many tasks is already far beyond any use).
#define PS_MAX_SHARDS 1048576

// A decimal number of digits only (no sign, space or suffix) that is at most max; 0, or -1 when it is not.
int ps_cli_parse_u64(const char *s, uint64_t max, uint64_t *out);

// "I/N" with 0 <= I < N <= PS_MAX_SHARDS; 0, or -1 with e = one line naming --shard and the value.
int ps_cli_parse_shard(const char *s, int *i, int *n, ps_error *e);

// The output path is usable before anything is computed: not empty, not a directory (nor ending in '/'), not a
// FIFO or device, writable, and its nearest existing directory accepts new files. Creates nothing.
int ps_cli_check_output(const char *out, ps_error *e);

// One run per output: an flock on OUT.lock (the output's directory is created first). A second run refuses with
// one line naming the holder's pid; the lock dies with its process, and the file is removed by unlock.
typedef struct {
    int fd;     // -1: not held
    char *path; // OUT.lock
} ps_cli_lock;
int ps_cli_lock_output(const char *out, ps_cli_lock *l, ps_error *e);
void ps_cli_unlock_output(ps_cli_lock *l);

// Progress lines for logs (stderr not a terminal): at most one per `every` seconds (0: after every chunk), with
// the prompts done, this run's patches per second and the time left; no carriage returns.
typedef struct {
    double every;     // < 0: off
    double t0, last;  // monotonic seconds
    int64_t total;    // prompts this run computes (resumed ones not counted)
    int64_t done;
} ps_cli_progress;
void ps_cli_progress_start(ps_cli_progress *p, double every, int64_t total);
// After a chunk of n prompts; patches: those this run has computed so far.
void ps_cli_progress_chunk(ps_cli_progress *p, int64_t n, int64_t patches);

// Is there anything to report? Over the prompts of this run (in_run NULL: all): -1 with e filled when every
// baseline and value is NaN (exit 1, naming model_dir), or when clean and corrupted give the same metric for every
// prompt (exit 2, naming config_path: normalization divides by their difference); else 0, with one warning line on
// stderr when only some prompts are affected. values[k] holds n_values[k] floats per prompt. corrupted NULL: a
// dataset without corrupted prompts (only the clean baseline is checked).
int ps_cli_check_meaningful(const float *clean, const float *corrupted, int64_t n_prompts, const uint8_t *in_run,
                            const float *const *values, const int64_t *n_values, int64_t n_tables, const char *config_path,
                            const char *model_dir, ps_error *e);

#endif
