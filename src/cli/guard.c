// `run`'s guards for long unattended jobs: strict command-line numbers, the output path checked before any
// compute, a lock so two runs never write one output, progress lines for batch logs and a check that the results
// mean something. Each is one function so the run command stays readable (see guard.h).
#include "guard.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int ps_cli_parse_u64(const char *s, uint64_t max, uint64_t *out) {
    uint64_t v = 0;
    if (!s || !*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9') return -1;
        unsigned d = (unsigned)(*s - '0');
        if (v > (max - d) / 10) return -1; // v * 10 + d > max, without overflowing
        v = v * 10 + d;
    }
    *out = v;
    return 0;
}

int ps_cli_parse_shard(const char *s, int *i, int *n, ps_error *e) {
    const char *slash = strchr(s, '/');
    char a[32];
    uint64_t vi, vn;
    size_t al = slash ? (size_t)(slash - s) : 0;
    if (!slash || al == 0 || al >= sizeof a)
        return ps_fail(e, PS_EXIT_BADINPUT, "--shard: '%s': expected I/N (shard I of N, 0 <= I < N)", s);
    memcpy(a, s, al);
    a[al] = 0;
    if (ps_cli_parse_u64(slash + 1, UINT64_MAX, &vn) != 0 || ps_cli_parse_u64(a, UINT64_MAX, &vi) != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "--shard: '%s': I and N must be decimal integers (0 <= I < N <= %d)", s,
                       PS_MAX_SHARDS);
    if (vn < 1 || vn > PS_MAX_SHARDS)
        return ps_fail(e, PS_EXIT_BADINPUT, "--shard: '%s': N must be from 1 to %d", s, PS_MAX_SHARDS);
    if (vi >= vn) return ps_fail(e, PS_EXIT_BADINPUT, "--shard: '%s': I must be below N (shards count from 0)", s);
    *i = (int)vi;
    *n = (int)vn;
    return 0;
}

// Can a new file be created in dir? Tried for real (a probe file, removed at once): permissions, a read-only
// mount or a full quota all show up here rather than after the sweeps.
static int dir_accepts_files(const char *out, const char *dir, ps_error *e) {
    size_t n = strlen(dir) + 32;
    char *probe = malloc(n);
    if (!probe) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", out);
    snprintf(probe, n, "%s/.patchsweep-probe.XXXXXX", dir);
    int fd = mkstemp(probe);
    if (fd < 0) {
        int err = errno;
        free(probe);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot create files in '%s': %s", out, dir, strerror(err));
    }
    close(fd);
    unlink(probe);
    free(probe);
    return 0;
}

int ps_cli_check_output(const char *out, ps_error *e) {
    if (!out || !out[0])
        return ps_fail(e, PS_EXIT_BADINPUT, "-o '': the output path is empty (give a file name such as results/run.h5)");
    size_t n = strlen(out);
    if (out[n - 1] == '/')
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: the output path ends in '/' (give a file name, e.g. %sresults.h5)", out, out);
    const char *base = strrchr(out, '/');
    base = base ? base + 1 : out;
    // OUT.h5.journal and OUT.h5.partial sit beside the output; their names must fit too.
    if (strlen(base) + sizeof ".journal" > NAME_MAX + 1)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: the output's file name is too long (at most %d bytes)", out,
                       (int)(NAME_MAX - sizeof ".journal" + 1));
    struct stat st;
    if (stat(out, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: the output path is a directory (give a file name inside it)", out);
        if (!S_ISREG(st.st_mode)) return ps_check_regular(out, NULL, e);
    } else if (errno != ENOENT) {
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot use the output path: %s", out, strerror(errno));
    }
    // The nearest existing ancestor must be a directory that takes new files (missing ones are created later).
    char *dir = ps_dirname(out);
    if (!dir) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", out);
    int rc = 0;
    for (;;) {
        if (stat(dir, &st) == 0) {
            if (!S_ISDIR(st.st_mode))
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: '%s' is not a directory", out, dir);
            else
                rc = dir_accepts_files(out, dir, e);
            break;
        }
        if (errno != ENOENT || !strcmp(dir, ".") || !strcmp(dir, "/")) {
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot use the output's directory '%s': %s", out, dir, strerror(errno));
            break;
        }
        char *up = ps_dirname(dir);
        free(dir);
        dir = up;
        if (!dir) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", out);
    }
    free(dir);
    return rc;
}

// mkdir -p of the output's directory (ps_cli_check_output has shown it can be made).
static int make_parent_dirs(const char *out, ps_error *e) {
    char *dir = ps_dirname(out);
    if (!dir) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", out);
    for (char *q = dir + 1; *q; q++)
        if (*q == '/') { *q = 0; mkdir(dir, 0755); *q = '/'; }
    struct stat st;
    int rc = 0;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot create the directory '%s': %s", out, dir, strerror(errno));
    else if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: '%s' is not a directory", out, dir);
    free(dir);
    return rc;
}

int ps_cli_lock_output(const char *out, ps_cli_lock *l, ps_error *e) {
    l->fd = -1;
    size_t n = strlen(out) + sizeof ".lock";
    l->path = malloc(n);
    if (!l->path) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", out);
    snprintf(l->path, n, "%s.lock", out);
    if (make_parent_dirs(out, e) != 0) return -1;
    for (int attempt = 0; attempt < 64; attempt++) {
        int fd = open(l->path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
        if (fd < 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot create the lock file: %s", l->path, strerror(errno));
        if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
            int err = errno;
            char pid[32] = "";
            ssize_t got = read(fd, pid, sizeof pid - 1);
            pid[got > 0 ? got : 0] = 0;
            pid[strcspn(pid, "\n")] = 0;
            close(fd);
            if (err == EWOULDBLOCK)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: another run (pid %s) is writing this output (it holds %s); wait "
                               "for it to finish or use another -o", out, pid[0] ? pid : "?", l->path);
            return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot lock: %s", l->path, strerror(err));
        }
        // The previous holder removes the file when it is done: if that happened between our open and our flock,
        // we hold a lock on a file nobody else will open, so start again on the new one.
        struct stat a, b;
        if (fstat(fd, &a) == 0 && stat(l->path, &b) == 0 && a.st_ino == b.st_ino && a.st_dev == b.st_dev) {
            char pid[32];
            int len = snprintf(pid, sizeof pid, "%ld\n", (long)getpid());
            if (ftruncate(fd, 0) != 0 || pwrite(fd, pid, (size_t)len, 0) != len) { /* the pid is only for the message */ }
            l->fd = fd;
            return 0;
        }
        close(fd);
    }
    return ps_fail(e, PS_EXIT_RUNTIME, "%s: the lock file keeps being replaced; giving up", l->path);
}

void ps_cli_unlock_output(ps_cli_lock *l) {
    if (l->fd >= 0) {
        unlink(l->path); // before the lock goes: a run waiting on this file then sees it replaced and retries
        close(l->fd);
        l->fd = -1;
    }
    free(l->path);
    l->path = NULL;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// "1h02m", "3m05s", "42s": short enough for a log line.
static void duration(double s, char *buf, size_t n) {
    long t = s > 0 && s < 1e9 ? (long)(s + 0.5) : 0;
    if (t >= 3600) snprintf(buf, n, "%ldh%02ldm", t / 3600, (t % 3600) / 60);
    else if (t >= 60) snprintf(buf, n, "%ldm%02lds", t / 60, t % 60);
    else snprintf(buf, n, "%lds", t);
}

void ps_cli_progress_start(ps_cli_progress *p, double every, int64_t total) {
    p->every = every;
    p->t0 = p->last = now_s();
    p->total = total;
    p->done = 0;
}

void ps_cli_progress_chunk(ps_cli_progress *p, int64_t n, int64_t patches) {
    p->done += n;
    if (p->every < 0) return;
    double t = now_s();
    if (t - p->last < p->every) return;
    p->last = t;
    double el = t - p->t0;
    char eta[32] = "?", spent[32];
    if (p->done > 0) duration(el * (double)(p->total - p->done) / (double)p->done, eta, sizeof eta);
    duration(el, spent, sizeof spent);
    fprintf(stderr, "patchsweep: progress: %lld/%lld prompts (%.1f%%), %lld patches in %s (%.1f patches/s), ETA %s\n",
            (long long)p->done, (long long)p->total, p->total ? 100.0 * (double)p->done / (double)p->total : 100.0,
            (long long)patches, spent, el > 0 ? (double)patches / el : 0.0, eta);
    fflush(stderr);
}

int ps_cli_check_meaningful(const float *clean, const float *corrupted, int64_t n_prompts, const uint8_t *in_run,
                            const float *const *values, const int64_t *n_values, int64_t n_tables, const char *config_path,
                            const char *model_dir, ps_error *e) {
    int64_t owned = 0, nan_base = 0, same = 0, finite_values = 0, cells = 0;
    for (int64_t i = 0; i < n_prompts; i++) {
        if (in_run && !in_run[i]) continue;
        owned++;
        // Equal up to rounding: a clean and a corrupted row in different places of one batch differ by ~1e-6.
        if (isnan(clean[i]) || (corrupted && isnan(corrupted[i]))) nan_base++;
        else if (corrupted && fabsf(clean[i] - corrupted[i]) <= 1e-5f * fmaxf(1.0f, fabsf(clean[i]) + fabsf(corrupted[i]))) same++;
        for (int64_t k = 0; k < n_tables; k++) {
            cells += n_values[k];
            for (int64_t c = 0; c < n_values[k]; c++) finite_values += !isnan(values[k][i * n_values[k] + c]);
        }
    }
    if (owned == 0) return 0; // a shard beyond the dataset's end: nothing to compute is not a failure
    if (nan_base == owned && finite_values == 0)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: nothing meaningful was computed: every baseline and patched value is NaN "
                       "(a NaN or Inf in the weights, or an overflow at this precision?); no results file written",
                       model_dir);
    if (nan_base + same == owned && same > 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset: clean and corrupted give the same metric for every prompt (%lld "
                       "of them; the same text?), so patching measures nothing and normalized values are undefined; no "
                       "results file written", config_path, (long long)same);
    if (nan_base > 0 || same > 0)
        fprintf(stderr, "patchsweep: warning: %lld of %lld prompts have a NaN baseline and %lld the same clean and "
                "corrupted metric; their normalized values are NaN\n", (long long)nan_base, (long long)owned,
                (long long)same);
    else if (cells > 0 && finite_values == 0)
        fprintf(stderr, "patchsweep: warning: every patched value is NaN (the baselines are not)\n");
    return 0;
}
