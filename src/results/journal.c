// The resume journal: an append-only file of checksummed records, one per finished chunk of prompts.
// Layout (little-endian host order): header = magic "PSJRNL01", identity (64 hex chars), n_prompts,
// n_sweeps, n_cells[n_sweeps] (int64); record = magic "PSRC", n (int64), payload bytes (int64),
// payload, FNV-1a 64 checksum of the payload. Payload = n prompt indices, then per prompt its 6 baseline
// floats and every sweep's cells, then per sweep the counters (run, skipped as int64; flops as double).
// A record is built when its chunk finishes and written (write + fsync) by a writer thread while the
// next chunk computes; at most one record waits.
#include "ps_journal.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct ps_journal {
    int fd;
    char *path;
    int64_t n_sweeps;
    int64_t *last_run, *last_skipped; // counters already put in a record, per sweep
    double *last_flops;
    // The writer thread and its one-record queue, under mu.
    pthread_t writer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned char *pending; size_t pending_len; // the record being written, or NULL
    int quit;
    int err;                                     // errno of the first failed write (0: none)
};

static const char HEAD_MAGIC[8] = {'P', 'S', 'J', 'R', 'N', 'L', '0', '1'};
static const char REC_MAGIC[4] = {'P', 'S', 'R', 'C'};

static uint64_t fnv1a(const unsigned char *p, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) { h ^= p[i]; h *= 1099511628211ull; }
    return h;
}

static int write_all(int fd, const void *buf, size_t n) {
    const char *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static size_t header_size(const ps_run_results *rr) { return 8 + 64 + 16 + 8 * (size_t)rr->n_sweeps; }

static unsigned char *make_header(const char identity[65], const ps_run_results *rr, size_t *len) {
    size_t n = header_size(rr);
    unsigned char *h = calloc(1, n);
    memcpy(h, HEAD_MAGIC, 8);
    memcpy(h + 8, identity, 64);
    int64_t v[2] = {rr->base.n, rr->n_sweeps};
    memcpy(h + 72, v, 16);
    for (int64_t s = 0; s < rr->n_sweeps; s++) memcpy(h + 88 + 8 * s, &rr->sweeps[s].n_cells, 8);
    *len = n;
    return h;
}

static size_t per_prompt_floats(const ps_run_results *rr) {
    size_t n = 6;
    for (int64_t s = 0; s < rr->n_sweeps; s++) n += (size_t)rr->sweeps[s].n_cells;
    return n;
}

// Applies one record's payload to rr; returns -1 when it does not fit the shape.
static int apply_record(const unsigned char *pl, size_t len, int64_t n, ps_run_results *rr, uint8_t *done, int64_t *n_done) {
    const size_t ppf = per_prompt_floats(rr);
    const size_t want = (size_t)n * 8 + (size_t)n * ppf * 4 + (size_t)rr->n_sweeps * 24;
    if (len != want) return -1;
    const int64_t *idx = (const int64_t *)pl;
    for (int64_t i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= rr->base.n) return -1;
    const float *f = (const float *)(pl + (size_t)n * 8);
    ps_baseline *b = &rr->base;
    float *bl[6] = {b->clean, b->corrupted, b->clean_answer_logit, b->clean_wrong_logit, b->corrupted_answer_logit,
                    b->corrupted_wrong_logit};
    for (int64_t i = 0; i < n; i++) {
        const int64_t p = idx[i];
        for (int k = 0; k < 6; k++) bl[k][p] = *f++;
        for (int64_t s = 0; s < rr->n_sweeps; s++) {
            ps_sweep *sw = &rr->sweeps[s];
            memcpy(sw->values + p * sw->n_cells, f, (size_t)sw->n_cells * sizeof(float));
            f += sw->n_cells;
        }
        if (!done[p]) { done[p] = 1; (*n_done)++; }
    }
    const unsigned char *c = (const unsigned char *)f;
    for (int64_t s = 0; s < rr->n_sweeps; s++) {
        int64_t run, skipped;
        double flops;
        memcpy(&run, c, 8); memcpy(&skipped, c + 8, 8); memcpy(&flops, c + 16, 8);
        c += 24;
        rr->sweeps[s].patches_run += run;
        rr->sweeps[s].patches_skipped += skipped;
        rr->sweeps[s].flops += flops;
    }
    return 0;
}

// Writes each record handed over by ps_journal_append, then fsyncs; stops when asked and nothing waits.
static void *writer_main(void *arg) {
    ps_journal *j = arg;
    // Signals (SIGINT/SIGTERM set the run's stop flag) are the main thread's to take, not this one's.
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_mutex_lock(&j->mu);
    for (;;) {
        while (!j->pending && !j->quit) pthread_cond_wait(&j->cv, &j->mu);
        if (!j->pending) break;
        unsigned char *buf = j->pending;
        size_t len = j->pending_len;
        pthread_mutex_unlock(&j->mu);
        int err = 0;
        if (write_all(j->fd, buf, len) != 0 || fsync(j->fd) != 0) err = errno ? errno : EIO;
        free(buf);
        pthread_mutex_lock(&j->mu);
        j->pending = NULL;
        if (err && !j->err) j->err = err;
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    return NULL;
}

// Waits until no record is being written; the first write error, if any, as ps_fail.
static int wait_idle(ps_journal *j, ps_error *e) {
    pthread_mutex_lock(&j->mu);
    while (j->pending) pthread_cond_wait(&j->cv, &j->mu);
    int err = j->err;
    pthread_mutex_unlock(&j->mu);
    if (err) return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot append to journal: %s", j->path, strerror(err));
    return 0;
}

int ps_journal_open(ps_journal **jp, const char *path, const char identity[65], int force, ps_run_results *rr,
                    uint8_t *done, int64_t *n_done, ps_error *e) {
    *jp = NULL;
    *n_done = 0;
    size_t hlen;
    unsigned char *head = make_header(identity, rr, &hlen);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) { free(head); return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot open journal: %s", path, strerror(errno)); }
    struct stat st;
    fstat(fd, &st);
    off_t good = 0; // end of the last complete record
    if (st.st_size > 0 && !force) {
        unsigned char *old = malloc(hlen);
        ssize_t r = pread(fd, old, hlen, 0);
        if (r != (ssize_t)hlen || memcmp(old, HEAD_MAGIC, 8) != 0) {
            free(old); free(head); close(fd);
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: not a patchsweep journal (remove it or use --force)", path);
        }
        if (memcmp(old, head, hlen) != 0) {
            free(old); free(head); close(fd);
            return ps_fail(e, PS_EXIT_BADINPUT,
                           "%s: a journal of a different run (config, model, tokenizer, version or shard differ); use --force to start afresh",
                           path);
        }
        free(old);
        good = (off_t)hlen;
        for (;;) {
            unsigned char rh[20];
            if (pread(fd, rh, 20, good) != 20 || memcmp(rh, REC_MAGIC, 4) != 0) break;
            int64_t n, len;
            memcpy(&n, rh + 4, 8);
            memcpy(&len, rh + 12, 8);
            if (n <= 0 || len <= 0 || good + 20 + len + 8 > st.st_size) break;
            unsigned char *pl = malloc((size_t)len + 8);
            if (!pl || pread(fd, pl, (size_t)len + 8, good + 20) != len + 8) { free(pl); break; }
            uint64_t sum;
            memcpy(&sum, pl + len, 8);
            int ok = sum == fnv1a(pl, (size_t)len) && apply_record(pl, (size_t)len, n, rr, done, n_done) == 0;
            free(pl);
            if (!ok) break;
            good += 20 + len + 8;
        }
        // Drop a torn tail so the next record follows the last good one.
        if (ftruncate(fd, good) != 0) {
            free(head); close(fd);
            return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot truncate journal: %s", path, strerror(errno));
        }
    } else {
        if (ftruncate(fd, 0) != 0 || write_all(fd, head, hlen) != 0 || fsync(fd) != 0) {
            free(head); close(fd);
            return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write journal: %s", path, strerror(errno));
        }
        good = (off_t)hlen;
    }
    free(head);
    lseek(fd, good, SEEK_SET);
    ps_journal *j = calloc(1, sizeof *j);
    j->fd = fd;
    j->path = strdup(path);
    j->n_sweeps = rr->n_sweeps;
    j->last_run = calloc((size_t)(rr->n_sweeps + 1), sizeof(int64_t));
    j->last_skipped = calloc((size_t)(rr->n_sweeps + 1), sizeof(int64_t));
    j->last_flops = calloc((size_t)(rr->n_sweeps + 1), sizeof(double));
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, NULL);
    int prc = pthread_create(&j->writer, NULL, writer_main, j);
    if (prc != 0) {
        pthread_cond_destroy(&j->cv);
        pthread_mutex_destroy(&j->mu);
        close(fd);
        free(j->path); free(j->last_run); free(j->last_skipped); free(j->last_flops); free(j);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot start the journal's writer thread: %s", path, strerror(prc));
    }
    *jp = j;
    return 0;
}

int ps_journal_append(ps_journal *j, const int64_t *prompts, int64_t n, const ps_run_results *rr, ps_error *e) {
    const size_t ppf = per_prompt_floats(rr);
    const size_t len = (size_t)n * 8 + (size_t)n * ppf * 4 + (size_t)rr->n_sweeps * 24;
    unsigned char *buf = malloc(20 + len + 8);
    if (!buf) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", j->path);
    memcpy(buf, REC_MAGIC, 4);
    int64_t n64 = n, l64 = (int64_t)len;
    memcpy(buf + 4, &n64, 8);
    memcpy(buf + 12, &l64, 8);
    unsigned char *pl = buf + 20;
    memcpy(pl, prompts, (size_t)n * 8);
    float *f = (float *)(pl + (size_t)n * 8);
    const ps_baseline *b = &rr->base;
    const float *bl[6] = {b->clean, b->corrupted, b->clean_answer_logit, b->clean_wrong_logit, b->corrupted_answer_logit,
                          b->corrupted_wrong_logit};
    for (int64_t i = 0; i < n; i++) {
        const int64_t p = prompts[i];
        for (int k = 0; k < 6; k++) *f++ = bl[k][p];
        for (int64_t s = 0; s < rr->n_sweeps; s++) {
            const ps_sweep *sw = &rr->sweeps[s];
            memcpy(f, sw->values + p * sw->n_cells, (size_t)sw->n_cells * sizeof(float));
            f += sw->n_cells;
        }
    }
    unsigned char *c = (unsigned char *)f;
    for (int64_t s = 0; s < rr->n_sweeps; s++) {
        const ps_sweep *sw = &rr->sweeps[s];
        int64_t run = sw->patches_run - j->last_run[s], skipped = sw->patches_skipped - j->last_skipped[s];
        double flops = sw->flops - j->last_flops[s];
        memcpy(c, &run, 8); memcpy(c + 8, &skipped, 8); memcpy(c + 16, &flops, 8);
        c += 24;
    }
    uint64_t sum = fnv1a(pl, len);
    memcpy(pl + len, &sum, 8);
    for (int64_t s = 0; s < rr->n_sweeps; s++) {
        j->last_run[s] = rr->sweeps[s].patches_run;
        j->last_skipped[s] = rr->sweeps[s].patches_skipped;
        j->last_flops[s] = rr->sweeps[s].flops;
    }
    // Hand the record to the writer once the previous one is on disk (records stay in order).
    if (wait_idle(j, e) != 0) {
        free(buf);
        return -1;
    }
    pthread_mutex_lock(&j->mu);
    j->pending = buf;
    j->pending_len = 20 + len + 8;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    return 0;
}

int ps_journal_sync(ps_journal *j, ps_error *e) { return j ? wait_idle(j, e) : 0; }

void ps_journal_close(ps_journal *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    j->quit = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
    pthread_join(j->writer, NULL); // a record already handed over is still written
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    close(j->fd);
    free(j->path);
    free(j->last_run);
    free(j->last_skipped);
    free(j->last_flops);
    free(j);
}
