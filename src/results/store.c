// The HDF5 results file's writer (schema in experiments/README.md): run metadata, prompts, baselines and one
// group per result table with dimension-scale-labelled axes, written to PATH.partial and renamed on success.
// Any producer's table is written the same way; inspect.c and merge.c read them back.
#include "ps_store.h"
#include "h5util.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

struct ps_store {
    hid_t file;
    char *path;         // final name
    char *partial;      // path + ".partial", what is open
    int64_t n_prompts;  // from write_prompts; 0 until then
    int64_t T_max;
    char **tok0;        // clean token strings of prompt 0 (T_max), for pos labels when the caller gives none
    int64_t plen0;      // prompt length of prompt 0: negative positions (-1 = "end") are labelled from it
};

static int mkdir_p(const char *dir) {
    char *p = strdup(dir);
    if (!p) return -1;
    for (char *c = p + 1;; c++) {
        if (*c == '/' || *c == 0) {
            char save = *c;
            *c = 0;
            if (mkdir(p, 0777) != 0 && errno != EEXIST) { free(p); return -1; }
            *c = save;
            if (!save) break;
        }
    }
    struct stat st;
    int ok = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
    free(p);
    if (!ok) errno = ENOTDIR;
    return ok ? 0 : -1;
}

// The file is built in memory (h5file.c). After each block the image goes to the .partial, so a process killed
// before ps_store_close leaves a file that is readable (`inspect`, h5py, plot.py --partial) with what was done so
// far; past PS_STORE_PARTIAL_MAX bytes only ps_store_close writes it (rewriting a big image per table costs more
// than it saves: the journal, not this file, is what a killed run resumes from).
#define PS_STORE_PARTIAL_MAX ((int64_t)64 << 20)
static int flush(ps_store *s, ps_error *e) {
    const int64_t n = ps_h5_image_size(s->file);
    if (n < 0) return ps_h5_fail(e, s->partial, "cannot flush");
    return n <= PS_STORE_PARTIAL_MAX ? ps_h5_save(s->file, s->partial, 1, e) : 0;
}

// ---------------------------------------------------------------------------------------------------------------

int ps_store_open(ps_store **out, const char *path, ps_error *e) {
    *out = NULL;
    ps_h5_quiet();
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: output path is a directory", path);
    char *dir = ps_dirname(path);
    if (!dir) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    if (mkdir_p(dir) != 0) {
        int err = errno;
        ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot create directory %s: %s", path, dir, strerror(err));
        free(dir);
        return -1;
    }
    free(dir);

    ps_store *s = calloc(1, sizeof *s);
    if (!s) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    s->file = -1;
    s->path = strdup(path);
    size_t n = strlen(path) + 9;
    s->partial = malloc(n);
    if (!s->path || !s->partial) {
        free(s->path); free(s->partial); free(s);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    }
    snprintf(s->partial, n, "%s.partial", path);

    // Track creation order so `inspect` and h5py list experiments in the order they ran.
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE);
    H5Pset_link_creation_order(fcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    s->file = ps_h5_mem_create(s->partial, fcpl);
    H5Pclose(fcpl);
    if (s->file < 0) {
        ps_h5_fail(e, s->partial, "cannot create results file");
        free(s->path); free(s->partial); free(s);
        return -1;
    }

    char created[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(created, sizeof created, "%Y-%m-%dT%H:%M:%SZ", &tm);

    hid_t gcpl = H5Pcreate(H5P_GROUP_CREATE);
    H5Pset_link_creation_order(gcpl, H5P_CRT_ORDER_TRACKED | H5P_CRT_ORDER_INDEXED);
    hid_t run = H5Gcreate2(s->file, "run", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    hid_t res = H5Gcreate2(s->file, "results", H5P_DEFAULT, gcpl, H5P_DEFAULT);
    H5Pclose(gcpl);
    int rc = (run >= 0 && res >= 0 && ps_h5_attr_str(run, "status", "running") == 0 &&
              ps_h5_attr_str(run, "patchsweep_version", PS_VERSION) == 0 && ps_h5_attr_str(run, "created", created) == 0 &&
              ps_h5_attr_i64(run, "schema_version", PS_SCHEMA_VERSION) == 0)
                 ? 0
                 : ps_h5_fail(e, s->partial, "/run: cannot write");
    if (run >= 0) H5Gclose(run);
    if (res >= 0) H5Gclose(res);
    if (rc == 0) rc = flush(s, e);
    if (rc != 0) {
        ps_store_close(s, 0, NULL);
        return -1;
    }
    *out = s;
    return 0;
}

int ps_store_write_run(ps_store *s, const ps_run_info *r, ps_error *e) {
    hid_t run = H5Gopen2(s->file, "run", H5P_DEFAULT);
    if (run < 0) return ps_h5_fail(e, s->partial, "/run: cannot open");
    int bad = 0;
    bad |= ps_h5_attr_str(run, "patchsweep_version", r->version ? r->version : PS_VERSION);
    bad |= ps_h5_attr_str(run, "config_path", r->config_path);
    bad |= ps_h5_attr_str(run, "model_dir", r->model_dir);
    bad |= ps_h5_attr_str(run, "weights_sha256", r->weights_sha256);
    bad |= ps_h5_attr_str(run, "tokenizer_path", r->tokenizer_path);
    bad |= ps_h5_attr_str(run, "tokenizer_sha256", r->tokenizer_sha256);
    bad |= ps_h5_attr_str(run, "backend", r->backend);
    bad |= ps_h5_attr_str(run, "precision", r->precision);
    bad |= ps_h5_attr_str(run, "weights_dtype", r->weights_dtype);
    if (r->architecture) bad |= ps_h5_attr_str(run, "architecture", r->architecture);
    if (r->blas) bad |= ps_h5_attr_str(run, "blas", r->blas);
    bad |= ps_h5_attr_i64(run, "threads", r->threads);
    bad |= ps_h5_attr_i64(run, "prepend_bos", r->prepend_bos ? 1 : 0);
    bad |= ps_h5_attr_i64(run, "bos_id", r->bos_id);
    bad |= ps_h5_attr_str(run, "metric", r->metric);
    if (r->identity) bad |= ps_h5_attr_str(run, "identity", r->identity);
    if (r->run_identity) bad |= ps_h5_attr_str(run, "run_identity", r->run_identity);
    if (r->base_identity) bad |= ps_h5_attr_str(run, "base_identity", r->base_identity);
    if (r->inputs_json) bad |= ps_h5_attr_str(run, "inputs", r->inputs_json);
    bad |= ps_h5_attr_i64(run, "shard_index", r->shard_count > 0 ? r->shard_index : 0);
    bad |= ps_h5_attr_i64(run, "shard_count", r->shard_count > 0 ? r->shard_count : 1);
    if (bad) {
        H5Gclose(run);
        return ps_h5_fail(e, s->partial, "/run: cannot write attributes");
    }
    if (H5Lexists(run, "config", H5P_DEFAULT) > 0) H5Ldelete(run, "config", H5P_DEFAULT);
    const char *cfg = r->config_text ? r->config_text : "";
    hid_t d = ps_h5_write_strs(run, "config", 0, NULL, &cfg);
    H5Gclose(run);
    if (ps_h5_close_ok(d) != 0) return ps_h5_fail(e, s->partial, "/run/config: cannot write");
    return flush(s, e);
}

int ps_store_write_prompts(ps_store *s, const ps_prompts_info *p, ps_error *e) {
    if (p->n_prompts <= 0 || p->T_max <= 0)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /prompts: n_prompts=%lld T_max=%lld must be positive", s->partial,
                       (long long)p->n_prompts, (long long)p->T_max);
    if (s->n_prompts) return ps_fail(e, PS_EXIT_RUNTIME, "%s: /prompts written twice", s->partial);
    hid_t g = H5Gcreate2(s->file, "prompts", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return ps_h5_fail(e, s->partial, "/prompts: cannot create");
    hsize_t n = (hsize_t)p->n_prompts, T = (hsize_t)p->T_max, d2[2] = {n, T};
    const char *failed = NULL;
    hid_t sp = ps_h5_scale_write(g, "prompt", p->n_prompts, NULL);
    hid_t st = ps_h5_scale_write(g, "pos", p->T_max, NULL);
    if (sp < 0 || st < 0) failed = "prompt/pos scales";

    struct { const char *name; int kind; const void *data; } items[] = {
        {"length", 'L', p->length},           {"prompt_length", 'L', p->prompt_length},
        {"clean_ids", 'I', p->clean_ids},     {"corrupted_ids", 'I', p->corrupted_ids},
        {"clean_tokens", 'S', p->clean_str},  {"corrupted_tokens", 'S', p->corrupted_str},
        {"clean_text", 's', p->clean_text},   {"corrupted_text", 's', p->corrupted_text},
        {"answer_text", 's', p->answer_text}, {"wrong_text", 's', p->wrong_text},
        {"answer_id", 'i', p->answer_id},     {"wrong_id", 'i', p->wrong_id},
        {"in_run", 'u', p->in_run},
    };
    for (size_t k = 0; k < sizeof items / sizeof items[0] && !failed; k++) {
        if (!items[k].data) continue; // optional: a caller without wrong answers leaves them out
        int two = items[k].kind == 'I' || items[k].kind == 'S';
        hid_t d;
        switch (items[k].kind) {
        case 'L': d = ps_h5_write(g, items[k].name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &n, items[k].data); break;
        case 'I': d = ps_h5_write(g, items[k].name, H5T_STD_I32LE, H5T_NATIVE_INT32, 2, d2, items[k].data); break;
        case 'i': d = ps_h5_write(g, items[k].name, H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &n, items[k].data); break;
        case 'u': d = ps_h5_write(g, items[k].name, H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, &n, items[k].data); break;
        case 'S': d = ps_h5_write_strs(g, items[k].name, 2, d2, items[k].data); break;
        default: d = ps_h5_write_strs(g, items[k].name, 1, &n, items[k].data); break;
        }
        if (d < 0 || ps_h5_attach(d, sp, 0, "prompt") < 0 || (two && ps_h5_attach(d, st, 1, "pos") < 0)) failed = items[k].name;
        if (d >= 0) H5Dclose(d);
    }
    if (sp >= 0) H5Dclose(sp);
    if (st >= 0) H5Dclose(st);
    H5Gclose(g);
    if (failed) return ps_h5_fail(e, s->partial, "/prompts/%s: cannot write", failed);

    s->n_prompts = p->n_prompts;
    s->T_max = p->T_max;
    s->tok0 = ps_h5_sanitize_all(p->clean_str, (size_t)p->T_max); // row 0 is the first T_max entries
    s->plen0 = p->prompt_length ? p->prompt_length[0] : (p->length ? p->length[0] : 0);
    if (!s->tok0) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", s->partial);
    return flush(s, e);
}

int ps_store_write_baseline(ps_store *s, const ps_baseline *b, ps_error *e) {
    if (s->n_prompts && b->n != s->n_prompts)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /baseline: %lld prompts but /prompts has %lld", s->partial,
                       (long long)b->n, (long long)s->n_prompts);
    hid_t g = H5Gcreate2(s->file, "baseline", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return ps_h5_fail(e, s->partial, "/baseline: cannot create");
    hsize_t n = (hsize_t)b->n;
    const char *failed = NULL;
    hid_t sp = ps_h5_scale_write(g, "prompt", b->n, NULL);
    if (sp < 0) failed = "prompt";
    float *col[PS_BASELINE_COLS];
    ps_baseline_columns(b, col);
    for (int k = 0; k < PS_BASELINE_COLS && !failed; k++) {
        if (!col[k]) continue;
        hid_t d = ps_h5_write(g, ps_baseline_names[k], H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &n, col[k]);
        if (d < 0 || ps_h5_attach(d, sp, 0, "prompt") < 0) failed = ps_baseline_names[k];
        if (d >= 0) H5Dclose(d);
    }
    if (sp >= 0) H5Dclose(sp);
    if (!failed && (ps_h5_attr_f64(g, "mean_clean", b->clean ? ps_h5_nanmean(b->clean, b->n) : NAN) < 0 ||
                    ps_h5_attr_f64(g, "mean_corrupted", b->corrupted ? ps_h5_nanmean(b->corrupted, b->n) : NAN) < 0))
        failed = "mean_clean";
    H5Gclose(g);
    if (failed) return ps_h5_fail(e, s->partial, "/baseline/%s: cannot write", failed);
    return flush(s, e);
}

// Names a table's group holds besides its axes' scales: an axis may not take one of them.
static int valid_axis_name(const char *a) {
    static const char *reserved[] = {"prompt", "values", "normalized", "mean", "mean_normalized", "pos_token"};
    if (!a || !a[0] || strchr(a, '/') || strcmp(a, ".") == 0) return 0;
    size_t n = strlen(a);
    if (n >= 6 && strcmp(a + n - 6, "_label") == 0) return 0;
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcmp(a, reserved[i]) == 0) return 0;
    return 1;
}

static int check_table(const ps_store *s, const ps_table *t, ps_error *e) {
    const char *f = s->partial;
    if (!t->name || !t->name[0] || strchr(t->name, '/') || strcmp(t->name, ".") == 0)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: table name '%s' cannot be an HDF5 group name", f, t->name ? t->name : "");
    if (t->n_axes < 0 || t->n_axes > PS_TABLE_MAX_AXES)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: %d axes (at most %d)", f, t->name, t->n_axes, PS_TABLE_MAX_AXES);
    if (t->per_prompt && (t->n_rows <= 0 || (s->n_prompts && t->n_rows != s->n_prompts)))
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: %lld prompts but /prompts has %lld", f, t->name,
                       (long long)t->n_rows, (long long)s->n_prompts);
    if (!t->values) return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: no values", f, t->name);
    int64_t cells = 1;
    for (int a = 0; a < t->n_axes; a++) {
        const ps_axis *ax = &t->axes[a];
        if (!valid_axis_name(ax->name) || ax->len <= 0)
            return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: axis %d '%s' (length %lld) is not a valid axis", f,
                           t->name, a, ax->name ? ax->name : "", (long long)ax->len);
        for (int b = 0; b < a; b++)
            if (strcmp(ax->name, t->axes[b].name) == 0)
                return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: axis '%s' appears twice", f, t->name, ax->name);
        cells *= ax->len;
    }
    if (cells != t->n_cells)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: %lld cells, but its axes make %lld", f, t->name,
                       (long long)t->n_cells, (long long)cells);
    return 0;
}

// The string labels of an axis, or NULL when it has none. A pos axis always has them (pos_token): an entry the
// producer did not label (a role name) is prompt 0's token at that position; negative positions count from
// prompt 0's end, and a position outside it is "".
static const char **axis_strings(const ps_store *s, const ps_axis *ax, int is_pos) {
    if (!ax->label && !is_pos) return NULL;
    const char **names = calloc((size_t)ax->len, sizeof *names);
    for (int64_t i = 0; names && i < ax->len; i++) {
        int64_t p = ax->value[i];
        if (p < 0 && s->plen0 > 0) p += s->plen0;
        int known = s->T_max ? (p >= 0 && p < s->T_max) : p >= 0;
        if (ax->label && ax->label[i]) names[i] = ax->label[i];
        else if (!is_pos || !known || !s->tok0) names[i] = "";
        else names[i] = s->tok0[p];
    }
    return names;
}

static int write_attrs(hid_t g, const ps_table *t) {
    int bad = ps_h5_attr_str(g, "kind", t->kind ? t->kind : "");
    for (int i = 0; i < t->n_attrs; i++) {
        const ps_attr *a = &t->attrs[i];
        if (a->type == PS_ATTR_STR) bad |= ps_h5_attr_str(g, a->key, a->s);
        else if (a->type == PS_ATTR_I64) bad |= ps_h5_attr_i64(g, a->key, a->i);
        else bad |= ps_h5_attr_f64(g, a->key, a->f);
    }
    bad |= ps_h5_attr_i64(g, "patches_run", t->patches_run);
    bad |= ps_h5_attr_i64(g, "patches_skipped", t->patches_skipped);
    return bad ? -1 : 0;
}

int ps_store_write_table(ps_store *s, const ps_table *t, ps_error *e) {
    const char *f = s->partial;
    if (check_table(s, t, e) != 0) return -1;
    hid_t res = H5Gopen2(s->file, "results", H5P_DEFAULT);
    if (res < 0) return ps_h5_fail(e, f, "/results: cannot open");
    if (H5Lexists(res, t->name, H5P_DEFAULT) > 0) {
        H5Gclose(res);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s written twice", f, t->name);
    }
    hid_t g = H5Gcreate2(res, t->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(res);
    if (g < 0) return ps_h5_fail(e, f, "/results/%s: cannot create", t->name);

    // Dims of values: the prompt axis (when per prompt), then the table's axes. scales[d] is dim d's integer
    // scale, strs[d] its string labels (a second scale: pos_token or <axis>_label).
    const int off0 = t->per_prompt ? 1 : 0, rank = t->n_axes + off0;
    hsize_t dims[PS_TABLE_MAX_AXES + 1];
    hid_t scales[PS_TABLE_MAX_AXES + 1], strs[PS_TABLE_MAX_AXES + 1];
    const char *dim_name[PS_TABLE_MAX_AXES + 1];
    for (int d = 0; d <= PS_TABLE_MAX_AXES; d++) scales[d] = strs[d] = -1;
    const char *failed = NULL;
    float *mean_tmp = NULL;
    if (t->per_prompt) {
        dims[0] = (hsize_t)t->n_rows;
        dim_name[0] = "prompt";
        if ((scales[0] = ps_h5_scale_write(g, "prompt", t->n_rows, NULL)) < 0) failed = "prompt";
    }
    // The integer scale is attached before the strings so readers that take "the" scale of a dim (dims[i][0])
    // get the index.
    for (int a = 0; a < t->n_axes && !failed; a++) {
        const ps_axis *ax = &t->axes[a];
        const int d = a + off0, is_pos = strcmp(ax->name, "pos") == 0;
        dims[d] = (hsize_t)ax->len;
        dim_name[d] = ax->name;
        if ((scales[d] = ps_h5_scale_write(g, ax->name, ax->len, ax->value)) < 0) { failed = ax->name; break; }
        const char **names = axis_strings(s, ax, is_pos);
        if (!names && (ax->label || is_pos)) { failed = ax->name; break; }
        if (!names) continue;
        char sname[256];
        ps_h5_axis_strs_name(ax->name, sname, sizeof sname);
        hsize_t len = (hsize_t)ax->len;
        strs[d] = ps_h5_write_strs(g, sname, 1, &len, names);
        if (strs[d] < 0 || H5DSset_scale(strs[d], sname) < 0) failed = ax->name;
        free(names);
    }
    const float *mean = t->mean;
    if (!failed && t->per_prompt && !mean) {
        if (!(mean_tmp = malloc((size_t)(t->n_cells ? t->n_cells : 1) * sizeof *mean_tmp))) failed = "mean";
        else ps_cell_means(t->values, NULL, NULL, t->n_rows, t->n_cells, mean_tmp, NULL);
        mean = mean_tmp;
    }
    struct { const char *name; const float *x; int off; } items[] = {
        {"values", t->values, 0},
        {"normalized", t->normalized, 0},
        {"mean", t->per_prompt ? mean : NULL, 1},          // mean* drop the prompt axis
        {"mean_normalized", t->per_prompt ? t->mean_normalized : NULL, 1},
    };
    for (size_t k = 0; k < sizeof items / sizeof items[0] && !failed; k++) {
        if (!items[k].x) continue;
        const int off = items[k].off;
        hid_t d = ps_h5_write(g, items[k].name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, rank - off, dims + off, items[k].x);
        if (d < 0) failed = items[k].name;
        for (int dim = off; dim < rank && !failed; dim++) {
            if (ps_h5_attach(d, scales[dim], (unsigned)(dim - off), dim_name[dim]) < 0) failed = items[k].name;
            if (!failed && strs[dim] >= 0 && H5DSattach_scale(d, strs[dim], (unsigned)(dim - off)) < 0) failed = items[k].name;
        }
        if (d >= 0) H5Dclose(d);
    }
    if (!failed && write_attrs(g, t) != 0) failed = "attributes";
    for (int d = 0; d <= PS_TABLE_MAX_AXES; d++) {
        if (scales[d] >= 0) H5Dclose(scales[d]);
        if (strs[d] >= 0) H5Dclose(strs[d]);
    }
    free(mean_tmp);
    H5Gclose(g);
    if (failed) return ps_h5_fail(e, f, "/results/%s/%s: cannot write", t->name, failed);
    return flush(s, e);
}

int ps_store_close(ps_store *s, int complete, ps_error *e) {
    if (!s) return 0;
    int rc = 0;
    if (s->file >= 0) {
        if (complete) {
            hid_t run = H5Gopen2(s->file, "run", H5P_DEFAULT);
            if (run < 0 || ps_h5_attr_str(run, "status", "complete") < 0) rc = ps_h5_fail(e, s->partial, "/run: cannot set status");
            if (run >= 0) H5Gclose(run);
        }
        // A complete file carries a sha256 of every dataset: run, merge and inspect check them before trusting it.
        if (rc == 0 && complete) rc = ps_h5_seal(s->file, s->partial, e);
        // The image reaches the disk here with plain write()/fsync(); a full disk fails with errno's one line and
        // removes the .partial (the file in memory always closes, so nothing is left open at exit).
        if (rc == 0) rc = ps_h5_save(s->file, s->partial, 1, e);
        H5Fclose(s->file);
        // rename() replaces an existing PATH atomically, so a reader never sees a half-written complete file.
        if (rc == 0 && complete && rename(s->partial, s->path) != 0)
            rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot rename to %s: %s", s->partial, s->path, strerror(errno));
        if (rc != 0 && complete) unlink(s->partial); // nothing half-written or stale that a reader could open
    }
    ps_h5_free_strs(s->tok0, (size_t)s->T_max);
    free(s->path);
    free(s->partial);
    free(s);
    return rc;
}
