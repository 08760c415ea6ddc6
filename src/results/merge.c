// `patchsweep merge OUT SHARD...` and the identity resume checks: shards of one run (prompts i with
// i % N == k, or blocks of batch_prompts prompts: in_run says which) combined into the file a single run writes, built in a child process that alone lets libhdf5 read
// the shards (a crafted shard that passes every checksum and still crashes libhdf5 is one line, exit 2). Every per-prompt dataset (the baseline columns and each
// table's values and normalized) takes each prompt's row from the shard that ran it; the means are recomputed
// with the run's own arithmetic (ps_cell_means) and the counters summed. Nothing here knows a table's producer.
#include "ps_store.h"
#include "h5util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// One line for a file of the layout before schema_version (what the old binary wrote).
static int old_layout(ps_error *e, const char *path) {
    return ps_fail(e, PS_EXIT_BADINPUT,
                   "%s: results file of an older layout (no /run schema_version; this patchsweep reads schema %d): regenerate it with `patchsweep run CONFIG --force`",
                   path, PS_SCHEMA_VERSION);
}

// A file without the seal is not parsed by run or merge (libhdf5 is not robust against corrupt files, and nothing
// in it could be verified): one line saying how to get a file that can.
static int no_seal(ps_error *e, const char *path) {
    return ps_fail(e, PS_EXIT_BADINPUT,
                   "%s: no seal (not a patchsweep results file, or one an older patchsweep wrote): it cannot be verified; regenerate it with `patchsweep run CONFIG --force`",
                   path);
}

int ps_h5_verify_path(const char *path, ps_error *e) {
    ps_h5_quiet();
    const int seal = ps_h5_check_seal(path, e);
    if (seal < 0) return -1;
    if (seal > 0) return no_seal(e, path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: not an HDF5 results file", path);
    int rc = ps_h5_verify(f, path, 1, NULL, e);
    H5Fclose(f);
    return rc;
}

hid_t ps_h5_open_complete(const char *path, int verify, const char *attr, char *val, size_t n, size_t id_len, ps_error *e) {
    ps_h5_quiet();
    val[0] = 0;
    if (verify) {
        if (ps_h5_verify_path(path, e) != 0) return -1;
    } else {
        const int seal = ps_h5_check_seal(path, e); // libhdf5 never parses a corrupt file, nor one it cannot check
        if (seal < 0) return -1;
        if (seal > 0) return no_seal(e, path);
    }
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: not an HDF5 results file", path);
    char status[32] = "";
    hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
    if (run >= 0) {
        ps_h5_read_attr_str(run, "status", status, sizeof status);
        if (ps_h5_read_attr_str(run, attr, val, n) != 0) val[0] = 0;
        H5Gclose(run);
    }
    int rc = 0;
    if (strcmp(status, "complete") != 0 || (id_len && strlen(val) != id_len))
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: not a complete patchsweep results file", path);
    else if (ps_h5_schema_version(f) != PS_SCHEMA_VERSION)
        rc = old_layout(e, path);
    if (rc == 0) return f;
    H5Fclose(f);
    val[0] = 0;
    return -1;
}

static int read_identity_in_process(const char *path, char identity[65], ps_error *e) {
    char id[128];
    identity[0] = 0;
    hid_t f = ps_h5_open_complete(path, 0, "identity", id, sizeof id, 64, e);
    if (f < 0) return -1;
    H5Fclose(f);
    memcpy(identity, id, 65);
    return 0;
}

// run's checks of an existing output, each in a child process (ps_h5_guarded): a crafted or corrupt file that
// passes the seal and crashes libhdf5 is one line, exit 2.
static int verify_cb(void *arg, void *result, ps_error *e) { (void)result; return ps_h5_verify_path(arg, e); }
static int identity_cb(void *arg, void *result, ps_error *e) { return read_identity_in_process(arg, result, e); }

int ps_store_verify(const char *path, ps_error *e) { return ps_h5_guarded(path, verify_cb, (void *)path, NULL, 0, e); }

int ps_store_read_identity(const char *path, char identity[65], ps_error *e) {
    identity[0] = 0;
    char id[65] = "";
    int rc = ps_h5_guarded(path, identity_cb, (void *)path, id, sizeof id, e);
    if (rc == 0) memcpy(identity, id, 65);
    return rc;
}

// The shards as checked: which file is shard 0, and each file's /prompts/in_run.
typedef struct {
    int n_shards, first;
    int64_t count, n_prompts;
    char run_id[128];
    uint8_t **in_run;   // (n_shards) each (n_prompts)
} shard_set;

static void shard_set_free(shard_set *ss) {
    for (int k = 0; ss->in_run && k < ss->n_shards; k++) free(ss->in_run[k]);
    free(ss->in_run);
}

// Opens every shard: complete, this schema, the same run and shard count, each index once, all present.
static int check_shards(shard_set *ss, const char *const *shards, int n_shards, ps_error *e) {
    memset(ss, 0, sizeof *ss);
    ss->n_shards = n_shards;
    ss->first = -1;
    ss->n_prompts = -1;
    ss->in_run = calloc((size_t)n_shards, sizeof *ss->in_run);
    if (!ss->in_run) return ps_fail(e, PS_EXIT_RUNTIME, "merge: out of memory");
    int *seen = NULL, rc = 0;
    for (int k = 0; k < n_shards && rc == 0; k++) {
        // Only a sealed file whose every dataset was read once in a child (ps_store_verify) reaches libhdf5 here:
        // libhdf5 is not robust against corrupt files, and an older patchsweep's unsealed shards are rerun, not merged.
        if (ps_store_verify(shards[k], e) != 0) { rc = -1; break; }
        hid_t f = H5Fopen(shards[k], H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0) { rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: not an HDF5 results file", shards[k]); break; }
        char status[32] = "", rid[128] = "", buf[64];
        hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
        int64_t idx = -1, cnt = -1;
        if (run >= 0) {
            ps_h5_read_attr_str(run, "status", status, sizeof status);
            ps_h5_read_attr_str(run, "run_identity", rid, sizeof rid);
            if (ps_h5_read_attr_str(run, "shard_index", buf, sizeof buf) == 0) idx = atoll(buf);
            if (ps_h5_read_attr_str(run, "shard_count", buf, sizeof buf) == 0) cnt = atoll(buf);
            H5Gclose(run);
        }
        if (strcmp(status, "complete") != 0) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: shard is not complete (status \"%s\")", shards[k], status);
        else if (ps_h5_schema_version(f) != PS_SCHEMA_VERSION) rc = old_layout(e, shards[k]);
        else if (!rid[0]) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: no run identity: not a patchsweep shard", shards[k]);
        else if (k == 0) {
            snprintf(ss->run_id, sizeof ss->run_id, "%s", rid);
            ss->count = cnt;
            // The count sizes an allocation: it must be one the given files can cover.
            if (cnt < 1 || cnt > n_shards)
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /run shard_count %lld: %d shard files given, so some are missing", shards[k], (long long)cnt, n_shards);
            else if (!(seen = calloc((size_t)cnt, sizeof(int)))) rc = ps_fail(e, PS_EXIT_RUNTIME, "merge: out of memory");
        } else if (strcmp(rid, ss->run_id) != 0)
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: a shard of another run (config, model, tokenizer or version differ from %s)", shards[k], shards[0]);
        else if (cnt != ss->count)
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: shard of %lld, but %s is a shard of %lld", shards[k], (long long)cnt, shards[0], (long long)ss->count);
        if (rc == 0 && (idx < 0 || idx >= ss->count)) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: bad shard index %lld", shards[k], (long long)idx);
        if (rc == 0 && seen[idx]) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: shard %lld/%lld given twice (also %s)", shards[k], (long long)idx, (long long)ss->count, shards[seen[idx] - 1]);
        if (rc == 0) {
            seen[idx] = k + 1;
            if (idx == 0) ss->first = k;
            int r1;
            hsize_t d1[H5S_MAX_RANK];
            int64_t np = 0;
            ss->in_run[k] = ps_h5_read(f, "prompts/in_run", H5T_NATIVE_UINT8, &r1, d1, &np);
            if (!ss->in_run[k] || np <= 0 || r1 != 1 || (ss->n_prompts >= 0 && np != ss->n_prompts))
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /prompts/in_run missing or of another size", shards[k]);
            ss->n_prompts = np;
        }
        H5Fclose(f);
    }
    for (int64_t i = 0; rc == 0 && i < ss->count; i++)
        if (!seen[i]) rc = ps_fail(e, PS_EXIT_BADINPUT, "merge: shard %lld/%lld is missing (%d of %lld shard files given)", (long long)i, (long long)ss->count, n_shards, (long long)ss->count);
    free(seen);
    return rc;
}

// A table's values must have the prompt axis first to come from shards (a run refuses --shard otherwise).
static int check_per_prompt(hid_t f, const char *file, const char *name, ps_error *e) {
    char path[300], kind[128] = "?";
    snprintf(path, sizeof path, "results/%s", name);
    hid_t g = H5Gopen2(f, path, H5P_DEFAULT);
    if (g < 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: /%s: cannot open", file, path);
    ps_h5_read_attr_str(g, "kind", kind, sizeof kind);
    hid_t d = H5Dopen2(g, "values", H5P_DEFAULT);
    const int per_prompt = ps_h5_values_per_prompt(d);
    if (d >= 0) H5Dclose(d);
    H5Gclose(g);
    // A table every shard computes alike (reference means: a function of the model and the reference set, both in
    // the shards' common identity) is the first shard's, as copied.
    if (!strcmp(kind, "reference_means")) return 1;
    if (!per_prompt)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: /%s (kind %s): values are not per prompt, so shards cannot hold it", file, path, kind);
    return 0;
}

// Row by row, the prompts each shard ran, into the merged file's dataset `path` (absent: nothing to do).
static int merge_rows(hid_t f, const hid_t *sf, const shard_set *ss, const char *const *shards, const char *partial,
                      const char *path, ps_error *e) {
    int rank;
    hsize_t dims[H5S_MAX_RANK];
    int64_t n = 0;
    float *merged = ps_h5_read(f, path, H5T_NATIVE_FLOAT, &rank, dims, &n);
    if (!merged) return 0; // optional dataset (e.g. normalized) absent
    if (rank < 1 || (int64_t)dims[0] != ss->n_prompts) {
        free(merged);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: /%s: first axis is not the %lld prompts", shards[ss->first], path, (long long)ss->n_prompts);
    }
    const size_t row = (size_t)(n / ss->n_prompts);
    int rc = 0;
    for (int k = 0; rc == 0 && k < ss->n_shards; k++) {
        if (k == ss->first) continue;
        int64_t m = 0;
        float *part = ps_h5_read(sf[k], path, H5T_NATIVE_FLOAT, &rank, dims, &m);
        if (!part || m != n) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /%s differs in shape from %s", shards[k], path, shards[ss->first]);
        for (int64_t i = 0; rc == 0 && i < ss->n_prompts; i++)
            if (ss->in_run[k][i]) memcpy(merged + (size_t)i * row, part + (size_t)i * row, row * sizeof(float));
        free(part);
    }
    if (rc == 0 && ps_h5_overwrite_floats(f, path, merged) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /%s", partial, path);
    free(merged);
    return rc;
}

// A table's means over all prompts, as a single run computes them, and its counters summed over the shards.
static int merge_table(hid_t f, const hid_t *sf, const shard_set *ss, const char *partial, const char *name,
                       const float *clean, const float *corr, ps_error *e) {
    char p[300];
    snprintf(p, sizeof p, "results/%s/values", name);
    int rank;
    hsize_t dims[H5S_MAX_RANK];
    int64_t n = 0;
    float *v = ps_h5_read(f, p, H5T_NATIVE_FLOAT, &rank, dims, &n);
    if (!v) return 0;
    const int64_t cells = n / ss->n_prompts;
    // The means read cells values per row and exist (where present) with exactly cells entries.
    for (int k = 0; k < 2; k++) {
        char q[300];
        snprintf(q, sizeof q, "results/%s/%s", name, k ? "mean_normalized" : "mean");
        int r2;
        hsize_t d2[H5S_MAX_RANK];
        int64_t m2 = 0;
        float *x = ps_h5_read(f, q, H5T_NATIVE_FLOAT, &r2, d2, &m2);
        const int bad = x && m2 != cells;
        free(x);
        if (bad) {
            free(v);
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: /%s: %lld entries, but values have %lld cells per prompt", partial, q, (long long)m2, (long long)cells);
        }
    }
    snprintf(p, sizeof p, "results/%s/mean_normalized", name);
    const int has_mnorm = H5Lexists(f, p, H5P_DEFAULT) > 0;
    float *mean = malloc((size_t)(cells ? cells : 1) * sizeof(float)), *mnorm = malloc((size_t)(cells ? cells : 1) * sizeof(float));
    int rc = 0;
    if (!mean || !mnorm) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", partial);
    if (rc == 0) {
        ps_cell_means(v, clean, corr, ss->n_prompts, cells, mean, has_mnorm ? mnorm : NULL);
        snprintf(p, sizeof p, "results/%s/mean", name);
        if (H5Lexists(f, p, H5P_DEFAULT) > 0 && ps_h5_overwrite_floats(f, p, mean) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /%s", partial, p);
        snprintf(p, sizeof p, "results/%s/mean_normalized", name);
        if (rc == 0 && has_mnorm && ps_h5_overwrite_floats(f, p, mnorm) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /%s", partial, p);
    }
    static const char *const counters[] = {"patches_run", "patches_skipped"};
    snprintf(p, sizeof p, "results/%s", name);
    for (size_t c = 0; rc == 0 && c < sizeof counters / sizeof counters[0]; c++) {
        int64_t sum = 0;
        for (int k = 0; k < ss->n_shards; k++) {
            hid_t gk = H5Gopen2(sf[k], p, H5P_DEFAULT);
            if (gk < 0) continue;
            sum += ps_h5_read_counter(gk, counters[c]);
            H5Gclose(gk);
        }
        hid_t gr = H5Gopen2(f, p, H5P_DEFAULT);
        if (gr < 0 || ps_h5_attr_i64(gr, counters[c], sum) < 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /%s %s", partial, p, counters[c]);
        if (gr >= 0) H5Gclose(gr);
    }
    free(mean);
    free(mnorm);
    free(v);
    return rc;
}

// /run and /prompts/in_run as a single run (shard 0/1) of the same command writes them.
static int finish_run(hid_t f, const shard_set *ss, const char *partial, ps_error *e) {
    int rc = 0;
    uint8_t *all = malloc((size_t)ss->n_prompts);
    if (!all) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", partial);
    memset(all, 1, (size_t)ss->n_prompts);
    hid_t d = H5Dopen2(f, "prompts/in_run", H5P_DEFAULT);
    if (d < 0 || H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, all) < 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /prompts/in_run", partial);
    if (d >= 0) H5Dclose(d);
    free(all);
    char buf[256], ident[65];
    snprintf(buf, sizeof buf, "%s\nshard %d/%d", ss->run_id, 0, 1);
    ps_sha256_hex(buf, strlen(buf), ident);
    hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
    if (rc == 0 && (run < 0 || ps_h5_attr_str(run, "identity", ident) < 0 || ps_h5_attr_i64(run, "shard_index", 0) < 0 ||
                    ps_h5_attr_i64(run, "shard_count", 1) < 0 || ps_h5_attr_str(run, "status", "complete") < 0))
        rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot update /run", partial);
    if (run >= 0) H5Gclose(run);
    return rc;
}

// The merge itself, in a child process (ps_store_merge): every shard is read there, the merged file is built there
// in memory, and its bytes are the reply. Nothing in this process hands a shard's bytes to libhdf5.
typedef struct {
    const char *out;
    const char *const *shards;
    int n_shards;
} merge_args;

static int merge_in_child(void *arg, unsigned char **bytes, size_t *n_bytes, ps_error *e) {
    const merge_args *ma = arg;
    const char *out = ma->out;
    const char *const *shards = ma->shards;
    const int n_shards = ma->n_shards;
    ps_h5_quiet();
    shard_set ss;
    int rc = check_shards(&ss, shards, n_shards, e);
    size_t pl = strlen(out) + 16;
    char *partial = malloc(pl);
    hid_t *sf = calloc((size_t)n_shards, sizeof(hid_t));
    if (rc == 0 && (!partial || !sf)) rc = ps_fail(e, PS_EXIT_RUNTIME, "merge: out of memory");
    if (partial) snprintf(partial, pl, "%s.partial", out);
    // Shard 0's file, in memory: merged there, sealed with fresh checksums and written out in one piece (h5file.c).
    hid_t f = -1;
    if (rc == 0 && (f = ps_h5_mem_open(shards[ss.first])) < 0) rc = ps_h5_fail(e, shards[ss.first], "cannot read");
    for (int k = 0; rc == 0 && k < n_shards; k++)
        if ((sf[k] = H5Fopen(shards[k], H5F_ACC_RDONLY, H5P_DEFAULT)) < 0) rc = ps_h5_fail(e, shards[k], "cannot open");
    int64_t n_res = 0;
    char **names = NULL;
    if (rc == 0 && H5Lexists(f, "results", H5P_DEFAULT) > 0) {
        hid_t res = H5Gopen2(f, "results", H5P_DEFAULT);
        names = ps_h5_list(res, &n_res);
        H5Gclose(res);
        if (!names) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot list /results", partial);
    }
    uint8_t *shared_t = calloc((size_t)(n_res ? n_res : 1), 1);
    if (rc == 0 && !shared_t) rc = ps_fail(e, PS_EXIT_RUNTIME, "merge: out of memory");
    for (int64_t r = 0; rc == 0 && r < n_res; r++) {
        rc = check_per_prompt(f, shards[ss.first], names[r], e);
        if (rc == 1) { shared_t[r] = 1; rc = 0; }
    }
    // Each dataset whose first axis is the prompt: take each prompt's row from the shard that ran it.
    const int have_baseline = rc == 0 && H5Lexists(f, "baseline", H5P_DEFAULT) > 0;
    char path[300];
    for (int k = 0; have_baseline && rc == 0 && k < PS_BASELINE_COLS; k++) {
        snprintf(path, sizeof path, "baseline/%s", ps_baseline_names[k]);
        rc = merge_rows(f, sf, &ss, shards, partial, path, e);
    }
    for (int64_t r = 0; have_baseline && rc == 0 && r < n_res; r++) {
        if (shared_t[r]) continue;
        snprintf(path, sizeof path, "results/%s/values", names[r]);
        rc = merge_rows(f, sf, &ss, shards, partial, path, e);
        snprintf(path, sizeof path, "results/%s/normalized", names[r]);
        if (rc == 0) rc = merge_rows(f, sf, &ss, shards, partial, path, e);
    }
    int r1;
    hsize_t d1[H5S_MAX_RANK];
    int64_t nb = 0;
    int64_t nc = 0;
    float *clean = rc == 0 ? ps_h5_read(f, "baseline/clean_metric", H5T_NATIVE_FLOAT, &r1, d1, &nc) : NULL;
    float *corr = rc == 0 ? ps_h5_read(f, "baseline/corrupted_metric", H5T_NATIVE_FLOAT, &r1, d1, &nb) : NULL;
    if (rc == 0 && clean && corr && (nc != ss.n_prompts || nb != ss.n_prompts))
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /baseline: %lld and %lld metrics for %lld prompts", shards[ss.first], (long long)nc,
                     (long long)nb, (long long)ss.n_prompts);
    for (int64_t r = 0; rc == 0 && clean && corr && r < n_res; r++)
        if (!shared_t[r]) rc = merge_table(f, sf, &ss, partial, names[r], clean, corr, e);
    if (rc == 0 && clean && corr) {
        hid_t g = H5Gopen2(f, "baseline", H5P_DEFAULT);
        if (g < 0 || ps_h5_attr_f64(g, "mean_clean", ps_h5_nanmean(clean, ss.n_prompts)) < 0 ||
            ps_h5_attr_f64(g, "mean_corrupted", ps_h5_nanmean(corr, ss.n_prompts)) < 0)
            rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /baseline means", partial);
        if (g >= 0) H5Gclose(g);
    }
    free(clean);
    free(corr);
    if (rc == 0) rc = finish_run(f, &ss, partial, e);
    if (rc == 0) rc = ps_h5_seal(f, partial, e);
    if (rc == 0) rc = ps_h5_file_bytes(f, partial, 1, bytes, n_bytes, e);
    for (int k = 0; sf && k < n_shards; k++) if (sf[k] > 0) H5Fclose(sf[k]);
    if (f >= 0) H5Fclose(f);
    ps_h5_free_strs(names, (size_t)n_res);
    free(shared_t);
    shard_set_free(&ss);
    free(sf);
    free(partial);
    return rc;
}

static int write_merged(const char *out, const unsigned char *bytes, size_t n, ps_error *e);

int ps_store_merge(const char *out, const char *const *shards, int n_shards, ps_error *e) {
    if (n_shards < 1) return ps_fail(e, PS_EXIT_BADINPUT, "merge: no shard files given");
    // The child's time and reply are bounded by what the shard files can hold (their float arrays gzip'd).
    unsigned seconds = 30;
    uint64_t total = 0;
    char label[1024];
    int at = snprintf(label, sizeof label, "merge: the shard files");
    for (int k = 0; k < n_shards; k++) {
        seconds += ps_h5_child_seconds(shards[k]);
        int64_t size = 0;
        ps_error oe = {0};
        int fd = ps_open_regular(shards[k], &size, &oe);
        if (fd < 0) return ps_fail(e, oe.code ? oe.code : PS_EXIT_BADINPUT, "%s", oe.msg);
        close(fd);
        total += (uint64_t)size;
        if (at < (int)sizeof label - 1) at += snprintf(label + at, sizeof label - (size_t)at, "%s %s", k ? "," : "", shards[k]);
    }
    merge_args ma = {out, shards, n_shards};
    unsigned char *bytes = NULL;
    size_t n = 0;
    const size_t max = (size_t)ps_h5_expand_bound(total > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)total);
    if (ps_h5_guarded_buf(label, seconds, merge_in_child, &ma, &bytes, &n, max, e) != 0) return -1;
    int rc = write_merged(out, bytes, n, e);
    free(bytes);
    return rc;
}

int ps_store_merge_in_process(const char *out, const char *const *shards, int n_shards, ps_error *e) {
    if (n_shards < 1) return ps_fail(e, PS_EXIT_BADINPUT, "merge: no shard files given");
    merge_args ma = {out, shards, n_shards};
    unsigned char *bytes = NULL;
    size_t n = 0;
    int rc = merge_in_child(&ma, &bytes, &n, e);
    if (rc == 0) rc = write_merged(out, bytes, n, e);
    free(bytes);
    return rc;
}

// OUT.partial with write/fsync, then renamed, so no file looks complete before it is.
static int write_merged(const char *out, const unsigned char *bytes, size_t n, ps_error *e) {
    size_t pl = strlen(out) + 16;
    char *partial = malloc(pl);
    int rc = 0;
    if (!partial) rc = ps_fail(e, PS_EXIT_RUNTIME, "merge: out of memory");
    else snprintf(partial, pl, "%s.partial", out);
    if (rc == 0) rc = ps_h5_write_bytes(partial, bytes, n, e);
    if (rc == 0 && rename(partial, out) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot rename to %s", partial, out);
    if (rc != 0 && partial) unlink(partial);
    free(partial);
    return rc;
}
