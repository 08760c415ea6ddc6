// The HDF5 results file (schema in experiments/README.md): writes run metadata, prompts, baselines and one group
// per experiment with dimension-scale-labelled axes to PATH.partial, renames it on success; also `inspect`.
#include "ps_store.h"
#include "ps_metrics.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <time.h>

#include <hdf5.h>
#include <hdf5_hl.h>

#if H5_VERSION_GE(1, 12, 0)
#define ps_vlen_reclaim H5Treclaim
#else
#define ps_vlen_reclaim H5Dvlen_reclaim
#endif

struct ps_store {
    hid_t file;
    char *path;         // final name
    char *partial;      // path + ".partial", what is open
    int64_t n_prompts;  // from write_prompts; 0 until then
    int64_t T_max;
    char **tok0;        // clean token strings of prompt 0 (T_max), for pos labels when the caller gives none
    int64_t plen0;      // prompt length of prompt 0: negative positions (-1 = "end") are labelled from it
};

// ---------------------------------------------------------------------------------------------------------------
// Error helpers: HDF5 keeps a stack of messages; the innermost one usually says what really went wrong
// ("No such file or directory", "file locking"), so it goes at the end of our one-line message.

static herr_t innermost_cb(unsigned n, const H5E_error2_t *err, void *data) {
    char *buf = data;
    if (n == 0 && err->desc) snprintf(buf, 256, "%s", err->desc);
    return 0;
}

static const char *hdf5_detail(char buf[256]) {
    buf[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_cb, buf);
    if (!buf[0]) snprintf(buf, 256, "HDF5 error");
    return buf;
}

// Fails with PS_EXIT_RUNTIME: "FILE: OBJECT: what (hdf5 detail)".
static int h5fail(ps_error *e, const char *file, const char *what, ...) __attribute__((format(printf, 3, 4)));
static int h5fail(ps_error *e, const char *file, const char *what, ...) {
    char msg[1024], det[256];
    va_list ap;
    va_start(ap, what);
    vsnprintf(msg, sizeof msg, what, ap);
    va_end(ap);
    return ps_fail(e, PS_EXIT_RUNTIME, "%s: %s (%s)", file, msg, hdf5_detail(det));
}

static void quiet_hdf5(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

// ---------------------------------------------------------------------------------------------------------------
// Small writers.

static hid_t vlstr_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

// Copy of s with invalid UTF-8 bytes replaced by U+FFFD: a byte-level BPE token can be half a character, and
// h5py refuses to decode a string declared UTF-8 that is not. The ids stay exact in the *_ids datasets.
static char *utf8_sanitize(const char *s) {
    if (!s) s = "";
    size_t n = strlen(s), bad;
    if (ps_utf8_check(s, n, &bad) == 0) return strdup(s);
    char *out = malloc(3 * n + 1);
    if (!out) return NULL;
    size_t o = 0, i = 0;
    while (i < n) {
        if (ps_utf8_check(s + i, n - i, &bad) == 0) bad = n - i;
        memcpy(out + o, s + i, bad);
        o += bad;
        i += bad;
        if (i < n) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return out;
}

static void free_strs(char **v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

// Sanitized copies of n strings (NULL array or entries count as "").
static char **sanitize_all(const char *const *in, size_t n) {
    char **v = calloc(n ? n : 1, sizeof *v);
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++) {
        v[i] = utf8_sanitize(in ? in[i] : "");
        if (!v[i]) { free_strs(v, i); return NULL; }
    }
    return v;
}

static int attr_write(hid_t obj, const char *name, hid_t type, const void *val) {
    if (H5Aexists(obj, name) > 0 && H5Adelete(obj, name) < 0) return -1;
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = (a >= 0 && H5Awrite(a, type, val) >= 0) ? 0 : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc;
}

static int attr_str(hid_t obj, const char *name, const char *val) {
    char *s = utf8_sanitize(val);
    if (!s) return -1;
    hid_t t = vlstr_type();
    int rc = attr_write(obj, name, t, &s);
    H5Tclose(t);
    free(s);
    return rc;
}

static int attr_i64(hid_t obj, const char *name, int64_t v) { return attr_write(obj, name, H5T_STD_I64LE, &v); }
static int attr_f64(hid_t obj, const char *name, double v) { return attr_write(obj, name, H5T_IEEE_F64LE, &v); }

// Creates dataset name in loc with file type ftype, writes data (memory type mtype) and returns the open id
// (caller closes) or -1. Large float arrays get chunked + shuffle + gzip: patching sweeps over neurons are big
// and mostly smooth, and NaN blocks compress to nothing.
static hid_t dset_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
                        const void *data) {
    hid_t sp = rank == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(rank, dims, NULL);
    if (sp < 0) return -1;
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    hsize_t total = 1;
    for (int i = 0; i < rank; i++) total *= dims[i];
    if (rank > 0 && total >= (1u << 16) && H5Tget_class(ftype) == H5T_FLOAT && H5Zfilter_avail(H5Z_FILTER_DEFLATE) > 0) {
        // Chunks of at most ~256K elements, cut from the leading axes so a chunk is a contiguous tail block.
        hsize_t chunk[H5S_MAX_RANK];
        hsize_t elems = 1;
        for (int i = rank - 1; i >= 0; i--) {
            hsize_t room = (1u << 18) / elems;
            chunk[i] = dims[i] < room ? dims[i] : (room ? room : 1);
            if (chunk[i] == 0) chunk[i] = 1;
            elems *= chunk[i];
        }
        H5Pset_chunk(dcpl, rank, chunk);
        H5Pset_shuffle(dcpl);
        H5Pset_deflate(dcpl, 4);
    }
    hid_t d = H5Dcreate2(loc, name, ftype, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    H5Pclose(dcpl);
    if (d >= 0 && total > 0 && H5Dwrite(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
        H5Dclose(d);
        d = -1;
    }
    H5Sclose(sp);
    return d;
}

// Same for an array of strings (variable-length UTF-8, sanitized).
static hid_t dset_write_strs(hid_t loc, const char *name, int rank, const hsize_t *dims, const char *const *in) {
    hsize_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    char **v = sanitize_all(in, (size_t)n);
    if (!v) return -1;
    hid_t t = vlstr_type();
    hid_t d = dset_write(loc, name, t, t, rank, dims, v);
    H5Tclose(t);
    free_strs(v, (size_t)n);
    return d;
}

static int close_ok(hid_t d) { return d >= 0 ? (H5Dclose(d), 0) : -1; }

// A 1-D int64 dimension-scale dataset named `name` in loc with the given values (0..n-1 when NULL).
static hid_t scale_write(hid_t loc, const char *name, int64_t n, const int64_t *values) {
    int64_t *tmp = NULL;
    if (!values) {
        tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
        if (!tmp) return -1;
        for (int64_t i = 0; i < n; i++) tmp[i] = i;
        values = tmp;
    }
    hsize_t dim = (hsize_t)n;
    hid_t d = dset_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &dim, values);
    free(tmp);
    if (d >= 0 && H5DSset_scale(d, name) < 0) {
        H5Dclose(d);
        return -1;
    }
    return d;
}

// Attaches scale to dim of d and labels the dim.
static int attach(hid_t d, hid_t scale, unsigned dim, const char *label) {
    if (scale >= 0 && H5DSattach_scale(d, scale, dim) < 0) return -1;
    return H5DSset_label(d, dim, label) < 0 ? -1 : 0;
}

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

// Flushing after each write keeps the .partial file readable (`inspect`, h5py, plot.py --partial) with what was
// done so far when the process is killed before ps_store_close.
static int flush(ps_store *s, ps_error *e) {
    return H5Fflush(s->file, H5F_SCOPE_GLOBAL) < 0 ? h5fail(e, s->partial, "cannot flush") : 0;
}

// ---------------------------------------------------------------------------------------------------------------

int ps_store_open(ps_store **out, const char *path, ps_error *e) {
    *out = NULL;
    quiet_hdf5();
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
    s->file = H5Fcreate(s->partial, H5F_ACC_TRUNC, fcpl, H5P_DEFAULT);
    H5Pclose(fcpl);
    if (s->file < 0) {
        h5fail(e, s->partial, "cannot create results file");
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
    int rc = (run >= 0 && res >= 0 && attr_str(run, "status", "running") == 0 &&
              attr_str(run, "patchsweep_version", PS_VERSION) == 0 && attr_str(run, "created", created) == 0)
                 ? 0
                 : h5fail(e, s->partial, "/run: cannot write");
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
    if (run < 0) return h5fail(e, s->partial, "/run: cannot open");
    int bad = 0;
    bad |= attr_str(run, "patchsweep_version", r->version ? r->version : PS_VERSION);
    bad |= attr_str(run, "config_path", r->config_path);
    bad |= attr_str(run, "model_dir", r->model_dir);
    bad |= attr_str(run, "weights_sha256", r->weights_sha256);
    bad |= attr_str(run, "tokenizer_path", r->tokenizer_path);
    bad |= attr_str(run, "tokenizer_sha256", r->tokenizer_sha256);
    bad |= attr_str(run, "backend", r->backend);
    bad |= attr_str(run, "precision", r->precision);
    bad |= attr_str(run, "weights_dtype", r->weights_dtype);
    if (r->blas) bad |= attr_str(run, "blas", r->blas);
    bad |= attr_i64(run, "threads", r->threads);
    bad |= attr_i64(run, "prepend_bos", r->prepend_bos ? 1 : 0);
    bad |= attr_i64(run, "bos_id", r->bos_id);
    bad |= attr_str(run, "metric", r->metric);
    if (r->identity) bad |= attr_str(run, "identity", r->identity);
    if (r->run_identity) bad |= attr_str(run, "run_identity", r->run_identity);
    bad |= attr_i64(run, "shard_index", r->shard_count > 0 ? r->shard_index : 0);
    bad |= attr_i64(run, "shard_count", r->shard_count > 0 ? r->shard_count : 1);
    if (bad) {
        H5Gclose(run);
        return h5fail(e, s->partial, "/run: cannot write attributes");
    }
    if (H5Lexists(run, "config", H5P_DEFAULT) > 0) H5Ldelete(run, "config", H5P_DEFAULT);
    const char *cfg = r->config_text ? r->config_text : "";
    hid_t d = dset_write_strs(run, "config", 0, NULL, &cfg);
    H5Gclose(run);
    if (close_ok(d) != 0) return h5fail(e, s->partial, "/run/config: cannot write");
    return flush(s, e);
}

int ps_store_write_prompts(ps_store *s, const ps_prompts_info *p, ps_error *e) {
    if (p->n_prompts <= 0 || p->T_max <= 0)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /prompts: n_prompts=%lld T_max=%lld must be positive", s->partial,
                       (long long)p->n_prompts, (long long)p->T_max);
    if (s->n_prompts) return ps_fail(e, PS_EXIT_RUNTIME, "%s: /prompts written twice", s->partial);
    hid_t g = H5Gcreate2(s->file, "prompts", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return h5fail(e, s->partial, "/prompts: cannot create");
    hsize_t n = (hsize_t)p->n_prompts, T = (hsize_t)p->T_max, d2[2] = {n, T};
    const char *failed = NULL;
    hid_t sp = scale_write(g, "prompt", p->n_prompts, NULL);
    hid_t st = scale_write(g, "pos", p->T_max, NULL);
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
        case 'L': d = dset_write(g, items[k].name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &n, items[k].data); break;
        case 'I': d = dset_write(g, items[k].name, H5T_STD_I32LE, H5T_NATIVE_INT32, 2, d2, items[k].data); break;
        case 'i': d = dset_write(g, items[k].name, H5T_STD_I32LE, H5T_NATIVE_INT32, 1, &n, items[k].data); break;
        case 'u': d = dset_write(g, items[k].name, H5T_STD_U8LE, H5T_NATIVE_UINT8, 1, &n, items[k].data); break;
        case 'S': d = dset_write_strs(g, items[k].name, 2, d2, items[k].data); break;
        default: d = dset_write_strs(g, items[k].name, 1, &n, items[k].data); break;
        }
        if (d < 0 || attach(d, sp, 0, "prompt") < 0 || (two && attach(d, st, 1, "pos") < 0)) failed = items[k].name;
        if (d >= 0) H5Dclose(d);
    }
    if (sp >= 0) H5Dclose(sp);
    if (st >= 0) H5Dclose(st);
    H5Gclose(g);
    if (failed) return h5fail(e, s->partial, "/prompts/%s: cannot write", failed);

    s->n_prompts = p->n_prompts;
    s->T_max = p->T_max;
    s->tok0 = sanitize_all(p->clean_str, (size_t)p->T_max); // row 0 is the first T_max entries
    s->plen0 = p->prompt_length ? p->prompt_length[0] : (p->length ? p->length[0] : 0);
    if (!s->tok0) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", s->partial);
    return flush(s, e);
}

static double nanmean(const float *x, int64_t n) {
    double sum = 0;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (!isnan(x[i])) { sum += x[i]; k++; }
    return k ? sum / (double)k : NAN;
}

int ps_store_write_baseline(ps_store *s, const ps_baseline_info *b, ps_error *e) {
    if (s->n_prompts && b->n_prompts != s->n_prompts)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /baseline: %lld prompts but /prompts has %lld", s->partial,
                       (long long)b->n_prompts, (long long)s->n_prompts);
    hid_t g = H5Gcreate2(s->file, "baseline", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    if (g < 0) return h5fail(e, s->partial, "/baseline: cannot create");
    hsize_t n = (hsize_t)b->n_prompts;
    const char *failed = NULL;
    hid_t sp = scale_write(g, "prompt", b->n_prompts, NULL);
    if (sp < 0) failed = "prompt";
    struct { const char *name; const float *x; } items[] = {
        {"clean_metric", b->clean},
        {"corrupted_metric", b->corrupted},
        {"clean_answer_logit", b->clean_answer_logit},
        {"clean_wrong_logit", b->clean_wrong_logit},
        {"corrupted_answer_logit", b->corrupted_answer_logit},
        {"corrupted_wrong_logit", b->corrupted_wrong_logit},
    };
    for (size_t k = 0; k < sizeof items / sizeof items[0] && !failed; k++) {
        if (!items[k].x) continue;
        hid_t d = dset_write(g, items[k].name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, 1, &n, items[k].x);
        if (d < 0 || attach(d, sp, 0, "prompt") < 0) failed = items[k].name;
        if (d >= 0) H5Dclose(d);
    }
    if (sp >= 0) H5Dclose(sp);
    if (!failed && (attr_f64(g, "mean_clean", b->clean ? nanmean(b->clean, b->n_prompts) : NAN) < 0 ||
                    attr_f64(g, "mean_corrupted", b->corrupted ? nanmean(b->corrupted, b->n_prompts) : NAN) < 0))
        failed = "mean_clean";
    H5Gclose(g);
    if (failed) return h5fail(e, s->partial, "/baseline/%s: cannot write", failed);
    return flush(s, e);
}

static int valid_axis_name(const char *a) {
    static const char *reserved[] = {"prompt", "values", "normalized", "mean", "mean_normalized", "pos_token"};
    if (!a || !a[0] || strchr(a, '/') || strcmp(a, ".") == 0) return 0;
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (strcmp(a, reserved[i]) == 0) return 0;
    return 1;
}

int ps_store_write_result(ps_store *s, const ps_result_info *r, ps_error *e) {
    const char *f = s->partial;
    if (!r->name || !r->name[0] || strchr(r->name, '/') || strcmp(r->name, ".") == 0)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: experiment name '%s' cannot be an HDF5 group name", f,
                       r->name ? r->name : "");
    if (r->n_axes < 0 || r->n_axes > PS_STORE_MAX_AXES)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: %d axes (at most %d)", f, r->name, r->n_axes,
                       PS_STORE_MAX_AXES);
    if (r->n_prompts <= 0 || (s->n_prompts && r->n_prompts != s->n_prompts))
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: %lld prompts but /prompts has %lld", f, r->name,
                       (long long)r->n_prompts, (long long)s->n_prompts);
    if (!r->values) return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: no values", f, r->name);
    int pos_axis = -1;
    int64_t cells = 1;
    for (int a = 0; a < r->n_axes; a++) {
        if (!valid_axis_name(r->axis_name[a]) || r->axis_len[a] <= 0)
            return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: axis %d '%s' (length %lld) is not a valid axis", f,
                           r->name, a, r->axis_name[a] ? r->axis_name[a] : "", (long long)r->axis_len[a]);
        for (int b = 0; b < a; b++)
            if (strcmp(r->axis_name[a], r->axis_name[b]) == 0)
                return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s: axis '%s' appears twice", f, r->name,
                               r->axis_name[a]);
        if (strcmp(r->axis_name[a], "pos") == 0) pos_axis = a;
        cells *= r->axis_len[a];
    }
    hid_t res = H5Gopen2(s->file, "results", H5P_DEFAULT);
    if (res < 0) return h5fail(e, f, "/results: cannot open");
    if (H5Lexists(res, r->name, H5P_DEFAULT) > 0) {
        H5Gclose(res);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: /results/%s written twice", f, r->name);
    }
    hid_t g = H5Gcreate2(res, r->name, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    H5Gclose(res);
    if (g < 0) return h5fail(e, f, "/results/%s: cannot create", r->name);

    const char *failed = NULL;
    float *mean_tmp = NULL;
    hid_t scales[PS_STORE_MAX_AXES + 1], pos_token = -1;
    for (int i = 0; i <= PS_STORE_MAX_AXES; i++) scales[i] = -1;

    // Scales first: prompt, then one per axis, then pos_token as a second scale on the pos dim. The pos scale is
    // attached before pos_token so readers that take "the" scale of a dim (dims[i][0]) get the position index.
    scales[0] = scale_write(g, "prompt", r->n_prompts, NULL);
    if (scales[0] < 0) failed = "prompt";
    for (int a = 0; a < r->n_axes && !failed; a++) {
        scales[a + 1] = scale_write(g, r->axis_name[a], r->axis_len[a], r->axis_value[a]);
        if (scales[a + 1] < 0) failed = r->axis_name[a];
    }
    if (!failed && pos_axis >= 0) {
        // The header's pos_tokens are indexed by position (T_max long); the axis may list only some positions.
        int64_t L = r->axis_len[pos_axis];
        const char **names = calloc((size_t)L, sizeof *names);
        if (!names) failed = "pos_token";
        for (int64_t i = 0; names && i < L; i++) {
            int64_t p = r->axis_value[pos_axis] ? r->axis_value[pos_axis][i] : i;
            if (p < 0 && s->plen0 > 0) p += s->plen0; // counted from the end of the prompt
            int known = s->T_max ? (p >= 0 && p < s->T_max) : p >= 0;
            if (r->pos_labels && r->pos_labels[i]) names[i] = r->pos_labels[i];
            else if (!known) names[i] = "";
            else if (r->pos_tokens) names[i] = r->pos_tokens[p];
            else names[i] = s->tok0 ? s->tok0[p] : "";
        }
        if (names) {
            hsize_t dim = (hsize_t)L;
            pos_token = dset_write_strs(g, "pos_token", 1, &dim, names);
            if (pos_token < 0 || H5DSset_scale(pos_token, "pos_token") < 0) failed = "pos_token";
        }
        free(names);
    }

    int rank = r->n_axes + 1;
    hsize_t dims[PS_STORE_MAX_AXES + 1];
    dims[0] = (hsize_t)r->n_prompts;
    for (int a = 0; a < r->n_axes; a++) dims[a + 1] = (hsize_t)r->axis_len[a];

    const float *mean = r->mean;
    if (!mean && !failed) {
        mean_tmp = malloc((size_t)cells * sizeof *mean_tmp);
        if (!mean_tmp) failed = "mean";
        for (int64_t c = 0; mean_tmp && c < cells; c++) {
            double sum = 0;
            int64_t k = 0;
            for (int64_t pi = 0; pi < r->n_prompts; pi++) {
                float v = r->values[pi * cells + c];
                if (!isnan(v)) { sum += v; k++; }
            }
            mean_tmp[c] = k ? (float)(sum / (double)k) : NAN;
        }
        mean = mean_tmp;
    }

    struct { const char *name; const float *x; int per_prompt; } items[] = {
        {"values", r->values, 1},
        {"normalized", r->normalized, 1},
        {"mean", mean, 0},
        {"mean_normalized", r->mean_normalized, 0},
    };
    for (size_t k = 0; k < 4 && !failed; k++) {
        if (!items[k].x) continue;
        int off = items[k].per_prompt ? 0 : 1; // mean* drop the prompt axis
        hid_t d = dset_write(g, items[k].name, H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, rank - off, dims + off, items[k].x);
        if (d < 0) failed = items[k].name;
        for (int dim = off; dim < rank && !failed; dim++) {
            const char *label = dim == 0 ? "prompt" : r->axis_name[dim - 1];
            if (attach(d, scales[dim], (unsigned)(dim - off), label) < 0) failed = items[k].name;
            if (!failed && pos_axis >= 0 && dim - 1 == pos_axis && H5DSattach_scale(d, pos_token, (unsigned)(dim - off)) < 0)
                failed = items[k].name;
        }
        if (d >= 0) H5Dclose(d);
    }
    if (!failed) {
        int bad = 0;
        bad |= attr_str(g, "site", r->site);
        bad |= attr_str(g, "layout", r->layout);
        bad |= attr_str(g, "direction", r->direction);
        bad |= attr_str(g, "metric", r->metric);
        bad |= attr_i64(g, "patches_run", r->patches_run);
        bad |= attr_i64(g, "patches_skipped", r->patches_skipped);
        if (bad) failed = "attributes";
    }
    for (int i = 0; i <= PS_STORE_MAX_AXES; i++)
        if (scales[i] >= 0) H5Dclose(scales[i]);
    if (pos_token >= 0) H5Dclose(pos_token);
    free(mean_tmp);
    H5Gclose(g);
    if (failed) return h5fail(e, f, "/results/%s/%s: cannot write", r->name, failed);
    return flush(s, e);
}

int ps_store_close(ps_store *s, int complete, ps_error *e) {
    if (!s) return 0;
    int rc = 0;
    if (s->file >= 0) {
        if (complete) {
            hid_t run = H5Gopen2(s->file, "run", H5P_DEFAULT);
            if (run < 0 || attr_str(run, "status", "complete") < 0) rc = h5fail(e, s->partial, "/run: cannot set status");
            if (run >= 0) H5Gclose(run);
        }
        if (rc == 0 && H5Fflush(s->file, H5F_SCOPE_GLOBAL) < 0) rc = h5fail(e, s->partial, "cannot flush");
        if (H5Fclose(s->file) < 0 && rc == 0) rc = h5fail(e, s->partial, "cannot close");
        // rename() replaces an existing PATH atomically, so a reader never sees a half-written complete file.
        if (rc == 0 && complete && rename(s->partial, s->path) != 0)
            rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot rename to %s: %s", s->partial, s->path, strerror(errno));
    }
    free_strs(s->tok0, (size_t)s->T_max);
    free(s->path);
    free(s->partial);
    free(s);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// inspect

// Reads a string attribute (variable or fixed length) into buf; "" when missing.
static int read_attr_str(hid_t obj, const char *name, char *buf, size_t n);

// Same, but "-" when missing or empty: for display.
static const char *attr_or_dash(hid_t obj, const char *name, char *buf, size_t n) {
    if (read_attr_str(obj, name, buf, n) != 0 || !buf[0]) snprintf(buf, n, "-");
    return buf;
}

static int read_attr_str(hid_t obj, const char *name, char *buf, size_t n) {
    buf[0] = 0;
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a);
    int rc = -1;
    if (H5Tget_class(t) == H5T_STRING) {
        if (H5Tis_variable_str(t) > 0) {
            hid_t mt = vlstr_type();
            char *v = NULL;
            if (H5Aread(a, mt, &v) >= 0) {
                snprintf(buf, n, "%s", v ? v : "");
                rc = 0;
                hid_t sp = H5Aget_space(a);
                ps_vlen_reclaim(mt, sp, H5P_DEFAULT, &v);
                H5Sclose(sp);
            }
            H5Tclose(mt);
        } else {
            size_t sz = H5Tget_size(t);
            char *v = calloc(sz + 1, 1);
            if (v && H5Aread(a, t, v) >= 0) {
                snprintf(buf, n, "%s", v);
                rc = 0;
            }
            free(v);
        }
    } else if (H5Tget_class(t) == H5T_INTEGER || H5Tget_class(t) == H5T_FLOAT) {
        double d;
        if (H5Aread(a, H5T_NATIVE_DOUBLE, &d) >= 0) {
            snprintf(buf, n, "%.10g", d);
            rc = 0;
        }
    }
    H5Tclose(t);
    H5Aclose(a);
    return rc;
}

static int read_attr_f64(hid_t obj, const char *name, double *v) {
    *v = NAN;
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    int rc = H5Aread(a, H5T_NATIVE_DOUBLE, v) >= 0 ? 0 : -1;
    H5Aclose(a);
    return rc;
}

// Reads a whole numeric dataset converted to mtype; returns malloc'd data and its shape, or NULL.
static void *read_numeric(hid_t loc, const char *name, hid_t mtype, int *rank, hsize_t dims[H5S_MAX_RANK],
                          int64_t *count) {
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) return NULL;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t sp = H5Dget_space(d);
    *rank = H5Sget_simple_extent_ndims(sp);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    void *buf = calloc((size_t)(n > 0 ? n : 1), H5Tget_size(mtype));
    if (buf && n > 0 && H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        free(buf);
        buf = NULL;
    }
    H5Dclose(d);
    *count = (int64_t)n;
    return buf;
}

// Reads a 1-D or 2-D variable-length string dataset: malloc'd copies (caller frees with free_strs).
static char **read_strings(hid_t loc, const char *name, int64_t *count) {
    *count = 0;
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) return NULL;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t sp = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    hid_t mt = vlstr_type();
    char **raw = calloc((size_t)(n > 0 ? n : 1), sizeof *raw), **out = NULL;
    if (raw && n > 0 && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) >= 0) {
        out = calloc((size_t)n, sizeof *out);
        for (hssize_t i = 0; out && i < n; i++) out[i] = strdup(raw[i] ? raw[i] : "");
        ps_vlen_reclaim(mt, sp, H5P_DEFAULT, raw);
        *count = (int64_t)n;
    }
    free(raw);
    H5Tclose(mt);
    H5Sclose(sp);
    H5Dclose(d);
    return out;
}

// Prints a token as a quoted, escaped string so whitespace tokens (' ', '\n') stay visible.
static void print_token(FILE *o, const char *t) {
    fputc('\'', o);
    for (const unsigned char *c = (const unsigned char *)t; *c; c++) {
        if (*c == '\n') fputs("\\n", o);
        else if (*c == '\t') fputs("\\t", o);
        else if (*c == '\r') fputs("\\r", o);
        else if (*c == '\'' || *c == '\\') fprintf(o, "\\%c", *c);
        else if (*c < 0x20 || *c == 0x7f) fprintf(o, "\\x%02x", *c);
        else fputc(*c, o);
    }
    fputc('\'', o);
}

typedef struct {
    char names[64][256];
    int n, more;
} list_ctx;

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    list_ctx *c = data;
    if (c->n < 64) snprintf(c->names[c->n++], sizeof c->names[0], "%s", name);
    else c->more++;
    return 0;
}

static void inspect_result(FILE *o, hid_t res, const char *name) {
    hid_t g = H5Gopen2(res, name, H5P_DEFAULT);
    if (g < 0) {
        fprintf(o, "  %s: (cannot open)\n", name);
        return;
    }
    char site[128], layout[128], dir[128], metric[128], run[64], skipped[64];
    read_attr_str(g, "site", site, sizeof site);
    read_attr_str(g, "layout", layout, sizeof layout);
    read_attr_str(g, "direction", dir, sizeof dir);
    read_attr_str(g, "metric", metric, sizeof metric);
    read_attr_str(g, "patches_run", run, sizeof run);
    read_attr_str(g, "patches_skipped", skipped, sizeof skipped);
    fprintf(o, "  %s: %s patching (%s), layout %s, metric %s\n", name, site, dir, layout, metric);

    int rank = 0;
    hsize_t dims[H5S_MAX_RANK];
    int64_t n = 0;
    float *v = read_numeric(g, "values", H5T_NATIVE_FLOAT, &rank, dims, &n);
    if (!v) {
        fprintf(o, "    (no values dataset)\n");
        H5Gclose(g);
        return;
    }
    // Axis labels come from the dimension labels, their values from the scale datasets of the same name.
    char labels[H5S_MAX_RANK][64];
    hid_t vd = H5Dopen2(g, "values", H5P_DEFAULT);
    fprintf(o, "    shape:");
    for (int d = 0; d < rank; d++) {
        labels[d][0] = 0;
        if (vd >= 0 && H5DSget_label(vd, (unsigned)d, labels[d], sizeof labels[d]) <= 0)
            snprintf(labels[d], sizeof labels[d], "dim%d", d);
        fprintf(o, "%s %s %llu", d ? " x" : "", labels[d], (unsigned long long)dims[d]);
    }
    if (vd >= 0) H5Dclose(vd);
    int64_t nan_count = 0;
    for (int64_t i = 0; i < n; i++) nan_count += isnan(v[i]) != 0;
    fprintf(o, "; patches run %s, skipped %s; %lld of %lld entries not applicable (NaN)\n", run[0] ? run : "?",
            skipped[0] ? skipped : "?", (long long)nan_count, (long long)n);

    int nr = 0;
    hsize_t nd[H5S_MAX_RANK];
    int64_t nn = 0;
    float *norm = read_numeric(g, "normalized", H5T_NATIVE_FLOAT, &nr, nd, &nn);
    fprintf(o, "    mean over everything: %.4g", nanmean(v, n));
    if (norm) fprintf(o, " (normalized %.4g)", nanmean(norm, nn));
    fputc('\n', o);
    free(norm);
    free(v);

    const char *which = "mean_normalized";
    int mr = 0;
    hsize_t md[H5S_MAX_RANK];
    int64_t mn = 0;
    float *m = read_numeric(g, which, H5T_NATIVE_FLOAT, &mr, md, &mn);
    if (!m) {
        which = "mean";
        m = read_numeric(g, which, H5T_NATIVE_FLOAT, &mr, md, &mn);
    }
    if (m && mr == rank - 1) {
        // Per-axis labels for the top entries.
        int64_t *axv[H5S_MAX_RANK] = {0};
        char **pos_tok = NULL;
        int64_t pos_n = 0;
        for (int a = 0; a < mr; a++) {
            int r1;
            hsize_t d1[H5S_MAX_RANK];
            int64_t c1;
            axv[a] = read_numeric(g, labels[a + 1], H5T_NATIVE_INT64, &r1, d1, &c1);
            if (axv[a] && c1 != (int64_t)md[a]) { free(axv[a]); axv[a] = NULL; }
            if (strcmp(labels[a + 1], "pos") == 0 && !pos_tok) pos_tok = read_strings(g, "pos_token", &pos_n);
        }
        int64_t top[5];
        int nt = 0;
        for (int64_t i = 0; i < mn; i++) {
            if (isnan(m[i])) continue;
            int j = nt < 5 ? nt++ : 5;
            if (j == 5) {
                if (fabsf(m[i]) <= fabsf(m[top[4]])) continue;
                j = 4;
            }
            while (j > 0 && fabsf(m[i]) > fabsf(m[top[j - 1]])) { top[j] = top[j - 1]; j--; }
            top[j] = i;
        }
        fprintf(o, "    top %d by |%s|:\n", nt, which);
        for (int t = 0; t < nt; t++) {
            int64_t rem = top[t], idx[H5S_MAX_RANK];
            for (int a = mr - 1; a >= 0; a--) {
                idx[a] = rem % (int64_t)md[a];
                rem /= (int64_t)md[a];
            }
            fprintf(o, "     ");
            for (int a = 0; a < mr; a++) {
                fprintf(o, " %s %lld", labels[a + 1], (long long)(axv[a] ? axv[a][idx[a]] : idx[a]));
                if (strcmp(labels[a + 1], "pos") == 0 && pos_tok && idx[a] < pos_n) {
                    fputc(' ', o);
                    print_token(o, pos_tok[idx[a]]);
                }
            }
            fprintf(o, ": %.4g\n", m[top[t]]);
        }
        for (int a = 0; a < mr; a++) free(axv[a]);
        free_strs(pos_tok, (size_t)pos_n);
    }
    free(m);
    H5Gclose(g);
}

int ps_store_inspect(const char *path, ps_error *e) {
    quiet_hdf5();
    struct stat st;
    if (stat(path, &st) != 0) {
        int err = errno;
        char partial[4096];
        snprintf(partial, sizeof partial, "%s.partial", path);
        if (stat(partial, &st) == 0)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s; %s exists: that run was interrupted or is still going",
                           path, strerror(err), partial);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s", path, strerror(err));
    }
    if (S_ISDIR(st.st_mode)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: is a directory, not a results file", path);
    if (H5Fis_hdf5(path) <= 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: not an HDF5 file", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char det[256];
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, hdf5_detail(det));
    }
    if (H5Lexists(f, "run", H5P_DEFAULT) <= 0) {
        H5Fclose(f);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: /run: missing (not a patchsweep results file)", path);
    }
    FILE *o = stdout;
    hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
    char status[64], buf[1024], buf2[1024];
    read_attr_str(run, "status", status, sizeof status);
    int complete = strcmp(status, "complete") == 0;
    fprintf(o, "%s\n", path);
    if (!complete)
        fprintf(o, "  *** INCOMPLETE (status=%s): the run was interrupted; results below may be missing ***\n",
                status[0] ? status : "missing");
    attr_or_dash(run, "patchsweep_version", buf, sizeof buf);
    attr_or_dash(run, "created", buf2, sizeof buf2);
    fprintf(o, "  patchsweep %s, created %s, status %s\n", buf, buf2, status[0] ? status : "(missing)");
    fprintf(o, "  config:    %s\n", attr_or_dash(run, "config_path", buf, sizeof buf));
    attr_or_dash(run, "model_dir", buf, sizeof buf);
    attr_or_dash(run, "weights_dtype", buf2, sizeof buf2);
    fprintf(o, "  model:     %s (weights %s", buf, buf2);
    attr_or_dash(run, "weights_sha256", buf, sizeof buf);
    fprintf(o, ", sha256 %.16s%s)\n", buf, strlen(buf) > 16 ? "..." : "");
    fprintf(o, "  tokenizer: %s\n", attr_or_dash(run, "tokenizer_path", buf, sizeof buf));
    attr_or_dash(run, "backend", buf, sizeof buf);
    attr_or_dash(run, "precision", buf2, sizeof buf2);
    char threads[64], pbos[64], bos[64];
    attr_or_dash(run, "threads", threads, sizeof threads);
    read_attr_str(run, "prepend_bos", pbos, sizeof pbos);
    read_attr_str(run, "bos_id", bos, sizeof bos);
    fprintf(o, "  backend:   %s, precision %s, %s threads\n", buf, buf2, threads);
    if (strcmp(pbos, "1") == 0) fprintf(o, "  bos:       prepended (id %s)\n", bos);
    else fprintf(o, "  bos:       not prepended\n");
    char metric[128];
    attr_or_dash(run, "metric", metric, sizeof metric);
    fprintf(o, "  metric:    %s\n", metric);
    H5Gclose(run);

    if (H5Lexists(f, "prompts", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "prompts", H5P_DEFAULT);
        int rank = 0;
        hsize_t dims[H5S_MAX_RANK];
        int64_t n = 0, nt = 0;
        int64_t *len = read_numeric(g, "length", H5T_NATIVE_INT64, &rank, dims, &n);
        char **tok = read_strings(g, "clean_tokens", &nt);
        char **ctok = read_strings(g, "corrupted_tokens", &nt);
        int64_t na = 0, nw = 0;
        char **ans = read_strings(g, "answer_text", &na), **wr = read_strings(g, "wrong_text", &nw);
        hsize_t tdims[H5S_MAX_RANK] = {0, 0};
        if (H5Lexists(g, "clean_tokens", H5P_DEFAULT) > 0) {
            hid_t d = H5Dopen2(g, "clean_tokens", H5P_DEFAULT);
            hid_t sp = H5Dget_space(d);
            H5Sget_simple_extent_dims(sp, tdims, NULL);
            H5Sclose(sp);
            H5Dclose(d);
        }
        int64_t T = (int64_t)tdims[1];
        int64_t lmin = 0, lmax = 0;
        for (int64_t i = 0; len && i < n; i++) {
            if (i == 0 || len[i] < lmin) lmin = len[i];
            if (i == 0 || len[i] > lmax) lmax = len[i];
        }
        fprintf(o, "prompts: %lld (tokens per prompt %lld..%lld)\n", (long long)n, (long long)lmin, (long long)lmax);
        int64_t L0 = len && n ? len[0] : T;
        for (int which = 0; which < 2; which++) {
            char **t = which ? ctok : tok;
            if (!t || T <= 0) continue;
            fprintf(o, "  prompt 0 %-10s", which ? "corrupted:" : "clean:");
            for (int64_t j = 0; j < L0 && j < T; j++) {
                fputc(' ', o);
                print_token(o, t[j]);
            }
            fputc('\n', o);
        }
        if (ans && na) {
            fprintf(o, "  prompt 0 answer ");
            print_token(o, ans[0]);
            if (wr && nw) {
                fprintf(o, " vs wrong ");
                print_token(o, wr[0]);
            }
            fputc('\n', o);
        }
        free(len);
        free_strs(tok, (size_t)(tok ? tdims[0] * tdims[1] : 0));
        free_strs(ctok, (size_t)(ctok ? tdims[0] * tdims[1] : 0));
        free_strs(ans, (size_t)na);
        free_strs(wr, (size_t)nw);
        H5Gclose(g);
    } else {
        fprintf(o, "prompts: (missing)\n");
    }

    if (H5Lexists(f, "baseline", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "baseline", H5P_DEFAULT);
        double mc, mx;
        read_attr_f64(g, "mean_clean", &mc);
        read_attr_f64(g, "mean_corrupted", &mx);
        fprintf(o, "baseline: mean %s clean %.4g, corrupted %.4g (difference %.4g)\n", metric, mc, mx, mc - mx);
        H5Gclose(g);
    } else {
        fprintf(o, "baseline: (missing)\n");
    }

    list_ctx *lc = calloc(1, sizeof *lc);
    if (lc && H5Lexists(f, "results", H5P_DEFAULT) > 0) {
        hid_t res = H5Gopen2(f, "results", H5P_DEFAULT);
        // Creation order when the file tracks it (ours do), else by name.
        hid_t gcpl = H5Gget_create_plist(res);
        unsigned crt = 0;
        H5Pget_link_creation_order(gcpl, &crt);
        H5Pclose(gcpl);
        hsize_t idx = 0;
        H5Literate(res, (crt & H5P_CRT_ORDER_INDEXED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME, H5_ITER_INC, &idx,
                    list_cb, lc);
        fprintf(o, "experiments: %d\n", lc->n + lc->more);
        for (int i = 0; i < lc->n; i++) inspect_result(o, res, lc->names[i]);
        if (lc->more) fprintf(o, "  ... and %d more\n", lc->more);
        H5Gclose(res);
    } else {
        fprintf(o, "experiments: 0\n");
    }
    free(lc);
    if (!complete)
        fprintf(o, "*** INCOMPLETE (status=%s): the run was interrupted ***\n", status[0] ? status : "missing");
    fflush(o);
    H5Fclose(f);
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Identity and merge (resume and shards)

int ps_store_read_identity(const char *path, char identity[65], ps_error *e) {
    quiet_hdf5();
    identity[0] = 0;
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: not an HDF5 results file", path);
    char status[32] = "", id[128] = "";
    hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
    if (run >= 0) {
        read_attr_str(run, "status", status, sizeof status);
        read_attr_str(run, "identity", id, sizeof id);
        H5Gclose(run);
    }
    H5Fclose(f);
    if (strcmp(status, "complete") != 0 || strlen(id) != 64)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: not a complete patchsweep results file", path);
    memcpy(identity, id, 65);
    return 0;
}

// Reads a whole float dataset; *n gets its element count.
static float *read_floats(hid_t loc, const char *name, hsize_t *n) {
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t sp = H5Dget_space(d);
    hssize_t cnt = H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    float *buf = malloc((size_t)(cnt > 0 ? cnt : 1) * sizeof(float));
    if (!buf || H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        free(buf);
        H5Dclose(d);
        return NULL;
    }
    H5Dclose(d);
    *n = (hsize_t)cnt;
    return buf;
}

static int write_floats(hid_t loc, const char *name, const float *buf) {
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return -1;
    int rc = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0 ? -1 : 0;
    H5Dclose(d);
    return rc;
}

static int copy_file(const char *from, const char *to) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b) { if (a) fclose(a); if (b) fclose(b); return -1; }
    char buf[1 << 16];
    size_t n;
    int rc = 0;
    while ((n = fread(buf, 1, sizeof buf, a)) > 0)
        if (fwrite(buf, 1, n, b) != n) { rc = -1; break; }
    fclose(a);
    if (fclose(b) != 0) rc = -1;
    return rc;
}

typedef struct {
    int n_res;
    char (*names)[256];
} result_list;

static herr_t list_result(hid_t g, const char *name, const H5L_info_t *info, void *op) {
    (void)g; (void)info;
    result_list *rl = op;
    rl->names = realloc(rl->names, (size_t)(rl->n_res + 1) * sizeof *rl->names);
    snprintf(rl->names[rl->n_res++], 256, "%s", name);
    return 0;
}

int ps_store_merge(const char *out, const char *const *shards, int n_shards, ps_error *e) {
    quiet_hdf5();
    if (n_shards < 1) return ps_fail(e, PS_EXIT_BADINPUT, "merge: no shard files given");
    char run_id0[128] = "";
    int64_t count0 = 0;
    int *seen = NULL, first = -1, rc = 0;
    uint8_t **in_run = calloc((size_t)n_shards, sizeof *in_run);
    int64_t n_prompts = -1;
    for (int k = 0; k < n_shards && rc == 0; k++) {
        hid_t f = H5Fopen(shards[k], H5F_ACC_RDONLY, H5P_DEFAULT);
        if (f < 0) { rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: not an HDF5 results file", shards[k]); break; }
        char status[32] = "", rid[128] = "", buf[64];
        hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
        int64_t idx = -1, cnt = -1;
        if (run >= 0) {
            read_attr_str(run, "status", status, sizeof status);
            read_attr_str(run, "run_identity", rid, sizeof rid);
            if (read_attr_str(run, "shard_index", buf, sizeof buf) == 0) idx = atoll(buf);
            if (read_attr_str(run, "shard_count", buf, sizeof buf) == 0) cnt = atoll(buf);
            H5Gclose(run);
        }
        if (strcmp(status, "complete") != 0) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: shard is not complete (status \"%s\")", shards[k], status);
        else if (!rid[0]) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: no run identity: not a patchsweep shard", shards[k]);
        else if (k == 0) { snprintf(run_id0, sizeof run_id0, "%s", rid); count0 = cnt; seen = calloc((size_t)(cnt > 0 ? cnt : 1), sizeof(int)); }
        else if (strcmp(rid, run_id0) != 0)
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: a shard of another run (config, model, tokenizer or version differ from %s)", shards[k], shards[0]);
        else if (cnt != count0)
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: shard of %lld, but %s is a shard of %lld", shards[k], (long long)cnt, shards[0], (long long)count0);
        if (rc == 0 && (idx < 0 || idx >= count0)) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: bad shard index %lld", shards[k], (long long)idx);
        if (rc == 0 && seen[idx]) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: shard %lld/%lld given twice (also %s)", shards[k], (long long)idx, (long long)count0, shards[seen[idx] - 1]);
        if (rc == 0) {
            seen[idx] = k + 1;
            if (idx == 0) first = k;
            hid_t d = H5Dopen2(f, "prompts/in_run", H5P_DEFAULT);
            hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
            int64_t np = sp >= 0 ? (int64_t)H5Sget_simple_extent_npoints(sp) : -1;
            if (sp >= 0) H5Sclose(sp);
            if (np <= 0 || (n_prompts >= 0 && np != n_prompts)) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /prompts/in_run missing or of another size", shards[k]);
            else {
                n_prompts = np;
                in_run[k] = malloc((size_t)np);
                if (H5Dread(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, in_run[k]) < 0) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot read /prompts/in_run", shards[k]);
            }
            if (d >= 0) H5Dclose(d);
        }
        H5Fclose(f);
    }
    for (int64_t i = 0; rc == 0 && i < count0; i++)
        if (!seen[i]) rc = ps_fail(e, PS_EXIT_BADINPUT, "merge: shard %lld/%lld is missing (%d of %lld shard files given)", (long long)i, (long long)count0, n_shards, (long long)count0);

    size_t pl = strlen(out) + 16;
    char *partial = malloc(pl);
    snprintf(partial, pl, "%s.partial", out);
    hid_t f = -1;
    if (rc == 0 && copy_file(shards[first], partial) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write", partial);
    if (rc == 0 && (f = H5Fopen(partial, H5F_ACC_RDWR, H5P_DEFAULT)) < 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot open", partial);
    hid_t *sf = calloc((size_t)n_shards, sizeof(hid_t));
    for (int k = 0; rc == 0 && k < n_shards; k++) sf[k] = H5Fopen(shards[k], H5F_ACC_RDONLY, H5P_DEFAULT);
    // Each dataset whose first axis is the prompt: take each prompt's row from the shard that ran it.
    result_list rl = {0};
    if (rc == 0) {
        hid_t res = H5Gopen2(f, "results", H5P_DEFAULT);
        if (res >= 0) {
            H5Literate(res, H5_INDEX_NAME, H5_ITER_INC, NULL, list_result, &rl);
            H5Gclose(res);
        }
    }
    const char *base_names[] = {"baseline/clean_metric", "baseline/corrupted_metric", "baseline/clean_answer_logit",
                                "baseline/clean_wrong_logit", "baseline/corrupted_answer_logit", "baseline/corrupted_wrong_logit"};
    int n_paths = 6 + 2 * rl.n_res;
    char (*paths)[300] = calloc((size_t)n_paths, sizeof *paths);
    for (int i = 0; i < 6; i++) snprintf(paths[i], 300, "%s", base_names[i]);
    for (int r = 0; r < rl.n_res; r++) {
        snprintf(paths[6 + 2 * r], 300, "results/%s/values", rl.names[r]);
        snprintf(paths[7 + 2 * r], 300, "results/%s/normalized", rl.names[r]);
    }
    for (int pi = 0; rc == 0 && pi < n_paths; pi++) {
        if (H5Lexists(f, "baseline", H5P_DEFAULT) <= 0) break;
        hsize_t n = 0;
        float *merged = read_floats(f, paths[pi], &n);
        if (!merged) continue; // optional dataset (e.g. normalized) absent
        const size_t row = (size_t)(n / (hsize_t)n_prompts);
        for (int k = 0; rc == 0 && k < n_shards; k++) {
            if (k == first) continue;
            hsize_t m = 0;
            float *part = read_floats(sf[k], paths[pi], &m);
            if (!part || m != n) { free(part); rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /%s differs in shape from %s", shards[k], paths[pi], shards[first]); break; }
            for (int64_t i = 0; i < n_prompts; i++)
                if (in_run[k][i]) memcpy(merged + (size_t)i * row, part + (size_t)i * row, row * sizeof(float));
            free(part);
        }
        if (rc == 0 && write_floats(f, paths[pi], merged) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /%s", partial, paths[pi]);
        free(merged);
    }
    // Means over all prompts, as a single run computes them (ps_engine_finish).
    hsize_t nb = 0;
    float *clean = rc == 0 ? read_floats(f, "baseline/clean_metric", &nb) : NULL;
    float *corr = rc == 0 ? read_floats(f, "baseline/corrupted_metric", &nb) : NULL;
    for (int r = 0; rc == 0 && clean && corr && r < rl.n_res; r++) {
        char p[300];
        snprintf(p, sizeof p, "results/%s/values", rl.names[r]);
        hsize_t n = 0;
        float *v = read_floats(f, p, &n);
        if (!v) continue;
        const int64_t cells = (int64_t)(n / (hsize_t)n_prompts);
        float *mean = malloc((size_t)cells * sizeof(float)), *mnorm = malloc((size_t)cells * sizeof(float));
        ps_cell_means(v, clean, corr, n_prompts, cells, mean, mnorm);
        snprintf(p, sizeof p, "results/%s/mean", rl.names[r]);
        if (write_floats(f, p, mean) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /%s", partial, p);
        snprintf(p, sizeof p, "results/%s/mean_normalized", rl.names[r]);
        if (rc == 0 && H5Lexists(f, p, H5P_DEFAULT) > 0 && write_floats(f, p, mnorm) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /%s", partial, p);
        // Counters: the sum over shards.
        snprintf(p, sizeof p, "results/%s", rl.names[r]);
        int64_t run = 0, skipped = 0;
        for (int k = 0; k < n_shards; k++) {
            hid_t gk = H5Gopen2(sf[k], p, H5P_DEFAULT);
            char b1[64], b2[64];
            if (gk >= 0) {
                if (read_attr_str(gk, "patches_run", b1, sizeof b1) == 0) run += atoll(b1);
                if (read_attr_str(gk, "patches_skipped", b2, sizeof b2) == 0) skipped += atoll(b2);
                H5Gclose(gk);
            }
        }
        hid_t gr = H5Gopen2(f, p, H5P_DEFAULT);
        if (gr >= 0) {
            attr_i64(gr, "patches_run", run);
            attr_i64(gr, "patches_skipped", skipped);
            H5Gclose(gr);
        }
        free(mean);
        free(mnorm);
        free(v);
    }
    if (rc == 0 && clean && corr) {
        hid_t g = H5Gopen2(f, "baseline", H5P_DEFAULT);
        if (g >= 0) {
            attr_f64(g, "mean_clean", nanmean(clean, n_prompts));
            attr_f64(g, "mean_corrupted", nanmean(corr, n_prompts));
            H5Gclose(g);
        }
    }
    free(clean);
    free(corr);
    if (rc == 0) {
        // The merged file is what a single run (shard 0/1) of the same command writes.
        uint8_t *all = malloc((size_t)n_prompts);
        memset(all, 1, (size_t)n_prompts);
        hid_t d = H5Dopen2(f, "prompts/in_run", H5P_DEFAULT);
        if (d < 0 || H5Dwrite(d, H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT, all) < 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write /prompts/in_run", partial);
        if (d >= 0) H5Dclose(d);
        free(all);
        char buf[256], ident[65];
        snprintf(buf, sizeof buf, "%s\nshard %d/%d", run_id0, 0, 1);
        ps_sha256_hex(buf, strlen(buf), ident);
        hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
        if (run < 0 || attr_str(run, "identity", ident) < 0 || attr_i64(run, "shard_index", 0) < 0 ||
            attr_i64(run, "shard_count", 1) < 0 || attr_str(run, "status", "complete") < 0)
            rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot update /run", partial);
        if (run >= 0) H5Gclose(run);
    }
    for (int k = 0; k < n_shards; k++) if (sf[k] > 0) H5Fclose(sf[k]);
    if (f >= 0) H5Fclose(f);
    if (rc == 0 && rename(partial, out) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot rename to %s", partial, out);
    if (rc != 0) unlink(partial);
    for (int k = 0; k < n_shards; k++) free(in_run[k]);
    free(in_run);
    free(sf);
    free(seen);
    free(paths);
    free(rl.names);
    free(partial);
    return rc;
}
