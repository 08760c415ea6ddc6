// The resume journal: an append-only file of checksummed records, one per finished chunk of prompts.
// Layout (little-endian host order): header = magic "PSJRNL03", identity (64 hex chars: the run-wide identity and
// the experiments this run computes), base identity (64: the run-wide one alone), n_prompts, n_tables (int64), then
// per table: per_prompt, n_cells (int64), name, kind and identity (each an int64 length and its bytes; the identity
// is the table's attribute "identity", "" when it has none);
// record = magic "PSRC", n (int64), payload bytes (int64), payload, FNV-1a 64 checksum of the payload.
// Payload = n prompt indices, then per prompt its 6 baseline floats and the row of every per-prompt table, then
// per per-prompt table the counters (run, skipped as int64; flops as double). Tables that are not per prompt are
// recomputed by a resumed run, not journaled. Nothing here knows a table's producer.
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
    int64_t n_tables;
    int64_t *last_run, *last_skipped; // counters already put in a record, per table
    double *last_flops;
    // The writer thread and its one-record queue, under mu.
    pthread_t writer;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    unsigned char *pending; size_t pending_len; // the record being written, or NULL
    int quit;
    int err;                                     // errno of the first failed write (0: none)
};

static const char HEAD_MAGIC[8] = {'P', 'S', 'J', 'R', 'N', 'L', '0', '3'};
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

// The header: identities and the shape of every table (a run of another shape is another run).
static const char *table_identity(const ps_table *t) {
    const ps_attr *a = ps_table_attr(t, "identity");
    return a && a->type == PS_ATTR_STR && a->s ? a->s : "";
}

static unsigned char *make_header(const char identity[65], const char base_identity[65], int64_t n_prompts,
                                  const ps_table *tables, int64_t n_tables, size_t *len) {
    size_t n = 8 + 128 + 16;
    for (int64_t t = 0; t < n_tables; t++)
        n += 16 + 24 + strlen(tables[t].name) + strlen(tables[t].kind) + strlen(table_identity(&tables[t]));
    unsigned char *h = calloc(1, n);
    if (!h) return NULL;
    memcpy(h, HEAD_MAGIC, 8);
    memcpy(h + 8, identity, 64);
    memcpy(h + 72, base_identity, 64);
    int64_t v[2] = {n_prompts, n_tables};
    memcpy(h + 136, v, 16);
    unsigned char *c = h + 152;
    for (int64_t t = 0; t < n_tables; t++) {
        const int64_t shape[2] = {tables[t].per_prompt, tables[t].n_cells};
        memcpy(c, shape, 16);
        c += 16;
        const char *str[3] = {tables[t].name, tables[t].kind, table_identity(&tables[t])};
        for (int k = 0; k < 3; k++) {
            const int64_t l = (int64_t)strlen(str[k]);
            memcpy(c, &l, 8);
            memcpy(c + 8, str[k], (size_t)l);
            c += 8 + l;
        }
    }
    *len = n;
    return h;
}

// Bytes of a record's payload for n prompts.
static size_t payload_size(int64_t n, const ps_table *tables, int64_t n_tables) {
    size_t per_prompt = PS_BASELINE_COLS, counted = 0;
    for (int64_t t = 0; t < n_tables; t++)
        if (tables[t].per_prompt) {
            per_prompt += (size_t)tables[t].n_cells;
            counted++;
        }
    return (size_t)n * 8 + (size_t)n * per_prompt * 4 + counted * 24;
}

// Applies one record's payload: 0 applied; -1 when it does not fit the shape (the journal ends there); 1 when it
// holds a prompt already restored (*dup): a record written twice would count its patches and FLOPs twice, so it
// is skipped whole (its other prompts, if any, are recomputed).
static int apply_record(const unsigned char *pl, size_t len, int64_t n, ps_baseline *base, ps_table *tables,
                        int64_t n_tables, uint8_t *done, int64_t *n_done, int64_t *dup) {
    if (n > base->n || len != payload_size(n, tables, n_tables)) return -1; // (n bounded first: no overflow)
    int64_t idx_buf;
    const unsigned char *ip = pl;
    for (int64_t i = 0; i < n; i++) {
        memcpy(&idx_buf, ip + 8 * i, 8);
        if (idx_buf < 0 || idx_buf >= base->n) return -1;
    }
    for (int64_t i = 0; i < n; i++) { // done[p] = 2: seen in this record (a prompt twice in one record is a repeat too)
        memcpy(&idx_buf, ip + 8 * i, 8);
        if (done[idx_buf]) {
            *dup = idx_buf;
            for (int64_t k = 0; k < i; k++) {
                int64_t q;
                memcpy(&q, ip + 8 * k, 8);
                if (done[q] == 2) done[q] = 0;
            }
            return 1;
        }
        done[idx_buf] = 2;
    }
    for (int64_t i = 0; i < n; i++) {
        memcpy(&idx_buf, ip + 8 * i, 8);
        done[idx_buf] = 0; // set for real below
    }
    const int64_t *idx = (const int64_t *)pl;
    const float *f = (const float *)(pl + (size_t)n * 8);
    float *bl[PS_BASELINE_COLS];
    ps_baseline_columns(base, bl);
    for (int64_t i = 0; i < n; i++) {
        const int64_t p = idx[i];
        for (int k = 0; k < PS_BASELINE_COLS; k++) bl[k][p] = *f++;
        for (int64_t t = 0; t < n_tables; t++) {
            ps_table *tb = &tables[t];
            if (!tb->per_prompt) continue;
            memcpy(tb->values + p * tb->n_cells, f, (size_t)tb->n_cells * sizeof(float));
            f += tb->n_cells;
        }
        if (!done[p]) { done[p] = 1; (*n_done)++; }
    }
    const unsigned char *c = (const unsigned char *)f;
    for (int64_t t = 0; t < n_tables; t++) {
        if (!tables[t].per_prompt) continue;
        int64_t run, skipped;
        double flops;
        memcpy(&run, c, 8); memcpy(&skipped, c + 8, 8); memcpy(&flops, c + 16, 8);
        c += 24;
        tables[t].patches_run += run;
        tables[t].patches_skipped += skipped;
        tables[t].flops += flops;
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

int ps_journal_open(ps_journal **jp, const char *path, const char identity[65], int force, ps_baseline *base,
                    ps_table *tables, int64_t n_tables, uint8_t *done, int64_t *n_done, ps_error *e) {
    return ps_journal_open_base(jp, path, identity, identity, force, base, tables, n_tables, done, n_done, e);
}

int ps_journal_open_base(ps_journal **jp, const char *path, const char identity[65], const char base_identity[65], int force,
                         ps_baseline *base, ps_table *tables, int64_t n_tables, uint8_t *done, int64_t *n_done, ps_error *e) {
    *jp = NULL;
    *n_done = 0;
    size_t hlen = 0;
    unsigned char *head = make_header(identity, base_identity, base->n, tables, n_tables, &hlen);
    if (!head) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    int fd = open(path, O_RDWR | O_CREAT, 0644);
    if (fd < 0) { free(head); return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot open journal: %s", path, strerror(errno)); }
    struct stat st;
    fstat(fd, &st);
    off_t good = 0; // end of the last complete record
    int afresh = force || st.st_size == 0;
    if (!afresh) {
        unsigned char *old = malloc(hlen > 136 ? hlen : 136);
        ssize_t r = old ? pread(fd, old, hlen > 136 ? hlen : 136, 0) : -1;
        if (r < 136 || memcmp(old, HEAD_MAGIC, 8) != 0) {
            free(old); free(head); close(fd);
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: not a patchsweep journal (remove it or use --force)", path);
        }
        // Another run-wide identity, or the same identity with other tables: another run. The same run-wide identity
        // with another identity: another list of experiments to compute.
        const int same_ident = memcmp(old + 8, head + 8, 64) == 0;
        if (memcmp(old + 72, head + 72, 64) != 0 || (same_ident && (r != (ssize_t)hlen || memcmp(old, head, hlen) != 0))) {
            free(old); free(head); close(fd);
            return ps_fail(e, PS_EXIT_BADINPUT,
                           "%s: a journal of a different run (config, model, tokenizer, version or shard differ); use --force to start afresh",
                           path);
        }
        if (r != (ssize_t)hlen || memcmp(old, head, hlen) != 0) {
            // The same run-wide inputs, another list of experiments to compute: its records do not fit this run's
            // tables, so it starts afresh (the experiments finished in the output file are reused all the same).
            char ep[1024];
            fprintf(stderr, "patchsweep: %s was written for another list of experiments; its finished prompts are recomputed\n",
                    ps_escape(path, ep, sizeof ep));
            afresh = 1;
        }
        free(old);
    }
    if (!afresh) {
        good = (off_t)hlen;
        int64_t n_records = 0;
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
            int64_t dup = -1;
            int ar = sum == fnv1a(pl, (size_t)len) ? apply_record(pl, (size_t)len, n, base, tables, n_tables, done, n_done, &dup) : -1;
            free(pl);
            if (ar < 0) break;
            n_records++;
            if (ar == 1) {
                char ep[1024];
                fprintf(stderr, "patchsweep: %s: record %lld (at byte %lld) repeats prompt %lld, already restored; skipped\n",
                        ps_escape(path, ep, sizeof ep), (long long)n_records, (long long)good, (long long)dup);
            }
            good += 20 + len + 8;
        }
        // Drop a torn tail so the next record follows the last good one.
        if (ftruncate(fd, good) != 0) {
            free(head); close(fd);
            return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot truncate journal: %s", path, strerror(errno));
        }
    }
    if (afresh) {
        if (ftruncate(fd, 0) != 0 || write_all(fd, head, hlen) != 0 || fsync(fd) != 0) {
            free(head); close(fd);
            return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write journal: %s", path, strerror(errno));
        }
        good = (off_t)hlen;
    }
    free(head);
    lseek(fd, good, SEEK_SET);
    ps_journal *j = calloc(1, sizeof *j);
    if (j) {
        j->fd = fd;
        j->path = strdup(path);
        j->n_tables = n_tables;
        j->last_run = calloc((size_t)(n_tables + 1), sizeof(int64_t));
        j->last_skipped = calloc((size_t)(n_tables + 1), sizeof(int64_t));
        j->last_flops = calloc((size_t)(n_tables + 1), sizeof(double));
    }
    if (!j || !j->path || !j->last_run || !j->last_skipped || !j->last_flops) {
        close(fd);
        if (j) { free(j->path); free(j->last_run); free(j->last_skipped); free(j->last_flops); free(j); }
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    }
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

int ps_journal_append(ps_journal *j, const int64_t *prompts, int64_t n, const ps_baseline *base, const ps_table *tables,
                      ps_error *e) {
    const int64_t n_tables = j->n_tables;
    const size_t len = payload_size(n, tables, n_tables);
    unsigned char *buf = malloc(20 + len + 8);
    if (!buf) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", j->path);
    memcpy(buf, REC_MAGIC, 4);
    int64_t n64 = n, l64 = (int64_t)len;
    memcpy(buf + 4, &n64, 8);
    memcpy(buf + 12, &l64, 8);
    unsigned char *pl = buf + 20;
    memcpy(pl, prompts, (size_t)n * 8);
    float *f = (float *)(pl + (size_t)n * 8);
    float *bl[PS_BASELINE_COLS];
    ps_baseline_columns(base, bl);
    for (int64_t i = 0; i < n; i++) {
        const int64_t p = prompts[i];
        for (int k = 0; k < PS_BASELINE_COLS; k++) *f++ = bl[k][p];
        for (int64_t t = 0; t < n_tables; t++) {
            const ps_table *tb = &tables[t];
            if (!tb->per_prompt) continue;
            memcpy(f, tb->values + p * tb->n_cells, (size_t)tb->n_cells * sizeof(float));
            f += tb->n_cells;
        }
    }
    unsigned char *c = (unsigned char *)f;
    for (int64_t t = 0; t < n_tables; t++) {
        const ps_table *tb = &tables[t];
        if (!tb->per_prompt) continue;
        int64_t run = tb->patches_run - j->last_run[t], skipped = tb->patches_skipped - j->last_skipped[t];
        double flops = tb->flops - j->last_flops[t];
        memcpy(c, &run, 8); memcpy(c + 8, &skipped, 8); memcpy(c + 16, &flops, 8);
        c += 24;
        j->last_run[t] = tb->patches_run;
        j->last_skipped[t] = tb->patches_skipped;
        j->last_flops[t] = tb->flops;
    }
    uint64_t sum = fnv1a(pl, len);
    memcpy(pl + len, &sum, 8);
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
