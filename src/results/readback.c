// A finished results file read back as result tables (ps_table.h) and baselines, so a rerun whose experiment list
// changed can reuse the tables it still needs, values copied exactly. The file is untrusted: libhdf5 reads it only
// in a child process (after the seal and every dataset's sha256 are checked there), which sends the tables back as
// a flat byte stream; this process parses that stream with bounds checks and never opens the file with libhdf5.
// Nothing here knows a table's producer.
#include "ps_store.h"
#include "h5util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ---- the byte stream: int64s, float arrays, strings (int64 length, bytes) ----
typedef struct {
    unsigned char *p;
    size_t n, cap;
    int oom;
} wbuf;

static void put(wbuf *w, const void *x, size_t n) {
    // (n == 0: x may be NULL, e.g. a table with no free attributes, and memcpy's arguments may not be)
    if (w->oom || n == 0) return;
    if (n > SIZE_MAX / 2 - w->n) { w->oom = 1; return; }
    if (w->n + n > w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 4096;
        while (nc < w->n + n) nc *= 2;
        unsigned char *q = realloc(w->p, nc);
        if (!q) { w->oom = 1; return; }
        w->p = q;
        w->cap = nc;
    }
    memcpy(w->p + w->n, x, n);
    w->n += n;
}
static void put_i64(wbuf *w, int64_t v) { put(w, &v, sizeof v); }
static void put_f64(wbuf *w, double v) { put(w, &v, sizeof v); }
static void put_str(wbuf *w, const char *s) {
    if (!s) { put_i64(w, -1); return; }
    const int64_t n = (int64_t)strlen(s);
    put_i64(w, n);
    put(w, s, (size_t)n);
}

typedef struct {
    const unsigned char *p;
    size_t n, at;
    int bad;
} rbuf;

static const void *take(rbuf *r, size_t n) {
    if (r->bad || n > r->n - r->at) { r->bad = 1; return NULL; }
    const void *q = r->p + r->at;
    r->at += n;
    return q;
}
static int64_t get_i64(rbuf *r) {
    int64_t v = 0;
    const void *q = take(r, sizeof v);
    if (q) memcpy(&v, q, sizeof v);
    return v;
}
static double get_f64(rbuf *r) {
    double v = 0;
    const void *q = take(r, sizeof v);
    if (q) memcpy(&v, q, sizeof v);
    return v;
}
// A malloc'd string; NULL for a null one (and for a bad stream: r->bad).
static char *get_str(rbuf *r) {
    const int64_t n = get_i64(r);
    if (n < 0 || r->bad) return NULL;
    const char *q = take(r, (size_t)n);
    char *s = q ? malloc((size_t)n + 1) : NULL;
    if (!s) { r->bad = 1; return NULL; }
    memcpy(s, q, (size_t)n);
    s[n] = 0;
    return s;
}
// n floats into x (which holds them).
static void get_floats(rbuf *r, float *x, int64_t n) {
    const void *q = n >= 0 && (uint64_t)n <= SIZE_MAX / sizeof(float) ? take(r, (size_t)n * sizeof(float)) : NULL;
    if (q) memcpy(x, q, (size_t)n * sizeof(float));
    else r->bad = 1;
}

// ---- in the child: the file's tables onto the stream ----

typedef struct {
    hid_t g;
    wbuf *w;
    int64_t n;
    int bad;
} attr_walk;

// The table's free attributes (the counters and kind are read apart). Strings, integers and floats, as written.
static herr_t attr_cb(hid_t g, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    attr_walk *c = data;
    if (ps_h5_table_own_attr(name)) return 0;
    hid_t a = H5Aopen(g, name, H5P_DEFAULT);
    hid_t t = a >= 0 ? H5Aget_type(a) : -1;
    const H5T_class_t cls = t >= 0 ? H5Tget_class(t) : H5T_NO_CLASS;
    if (t >= 0) H5Tclose(t);
    if (a >= 0) H5Aclose(a);
    wbuf tmp = {0};
    put_str(&tmp, name);
    if (cls == H5T_STRING) {
        char *s = ps_h5_read_attr_alloc(g, name);
        if (!s) { c->bad = 1; free(tmp.p); return -1; }
        put_i64(&tmp, PS_ATTR_STR);
        put_str(&tmp, s);
        free(s);
    } else if (cls == H5T_INTEGER) {
        char b[64];
        if (ps_h5_read_attr_str(g, name, b, sizeof b) != 0) { c->bad = 1; free(tmp.p); return -1; }
        put_i64(&tmp, PS_ATTR_I64);
        put_i64(&tmp, strtoll(b, NULL, 10));
    } else if (cls == H5T_FLOAT) {
        double v;
        if (ps_h5_read_attr_f64(g, name, &v) != 0) { c->bad = 1; free(tmp.p); return -1; }
        put_i64(&tmp, PS_ATTR_F64);
        put_f64(&tmp, v);
    } else {
        c->bad = 1;
        free(tmp.p);
        return -1;
    }
    put(c->w, tmp.p, tmp.n);
    free(tmp.p);
    c->n++;
    return 0;
}

// One table: name, kind, per_prompt, metric_valued, n_rows, axes (name, len, values, labels or -1), n_cells,
// values, counters, then its attributes.
static int put_table(wbuf *w, hid_t res, const char *name, const char *file, ps_error *e) {
    hid_t g = H5Gopen2(res, name, H5P_DEFAULT);
    if (g < 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: /results/%s: cannot open", file, name);
    char *kind = ps_h5_read_attr_alloc(g, "kind");
    hid_t d = H5Dopen2(g, "values", H5P_DEFAULT);
    hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
    const int rank = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    hsize_t dims[H5S_MAX_RANK];
    if (rank > 0) H5Sget_simple_extent_dims(sp, dims, NULL);
    char label[256];
    const int per_prompt = rank > 0 && ps_h5_values_per_prompt(d);
    const int n_axes = rank - per_prompt;
    int rc = 0;
    if (!kind || rank <= 0 || n_axes > PS_TABLE_MAX_AXES)
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /results/%s: not a result table (kind, values or axes)", file, name);
    put_str(w, name);
    put_str(w, kind);
    put_i64(w, per_prompt);
    put_i64(w, H5Lexists(g, "normalized", H5P_DEFAULT) > 0);
    put_i64(w, per_prompt ? (int64_t)dims[0] : 1);
    put_i64(w, n_axes);
    int64_t cells = 1;
    for (int a = 0; rc == 0 && a < n_axes; a++) {
        const unsigned dim = (unsigned)(a + per_prompt);
        const int64_t n = (int64_t)dims[dim];
        int64_t *v = NULL;
        if (ps_h5_dim_label(d, dim, label, sizeof label) != 0 || !(v = ps_h5_axis_scale(g, label, n))) {
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /results/%s: axis %d has no scale of its length", file, name, a);
            break;
        }
        put_str(w, label);
        put_i64(w, n);
        put(w, v, (size_t)n * sizeof *v);
        free(v);
        char sname[300];
        ps_h5_axis_strs_name(label, sname, sizeof sname);
        int64_t ns = 0;
        char **strs = H5Lexists(g, sname, H5P_DEFAULT) > 0 ? ps_h5_read_strs(g, sname, &ns) : NULL;
        if (strs && ns != n) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /results/%s/%s: not one label per entry", file, name, sname);
        put_i64(w, strs ? 1 : 0);
        for (int64_t i = 0; strs && i < ns; i++) put_str(w, strs[i]);
        ps_h5_free_strs(strs, (size_t)ns);
        cells *= n;
    }
    int64_t count = 0;
    int r2;
    hsize_t d2[H5S_MAX_RANK];
    float *x = rc == 0 ? ps_h5_read(g, "values", H5T_NATIVE_FLOAT, &r2, d2, &count) : NULL;
    if (rc == 0 && (!x || count != cells * (per_prompt ? (int64_t)dims[0] : 1)))
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /results/%s/values: unreadable or not its axes' size", file, name);
    if (rc == 0) {
        put_i64(w, cells);
        put(w, x, (size_t)count * sizeof *x);
        put_i64(w, ps_h5_read_counter(g, "patches_run"));
        put_i64(w, ps_h5_read_counter(g, "patches_skipped"));
        wbuf aw = {0};
        attr_walk c = {.g = g, .w = &aw};
        hsize_t idx = 0;
        if (H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_INC, &idx, attr_cb, &c) < 0 || c.bad || aw.oom)
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /results/%s: cannot read its attributes", file, name);
        put_i64(w, c.n);
        put(w, aw.p, aw.n);
        free(aw.p);
    }
    free(x);
    free(kind);
    if (sp >= 0) H5Sclose(sp);
    if (d >= 0) H5Dclose(d);
    H5Gclose(g);
    return rc;
}

// The child: verified (seal, every dataset's sha256), complete, this schema; then /run base_identity, the baseline
// columns and every table.
int ps_store_run_stream(const char *path, unsigned char **out, size_t *out_len, ps_error *e) {
    *out = NULL;
    *out_len = 0;
    char base[128];
    hid_t f = ps_h5_open_complete(path, 1, "base_identity", base, sizeof base, 0, e);
    if (f < 0) return -1;
    int rc = 0;
    wbuf w = {0};
    put_str(&w, strlen(base) == 64 ? base : "");
    int64_t n = -1;
    for (int k = 0; rc == 0 && k < PS_BASELINE_COLS; k++) {
        char p[64];
        snprintf(p, sizeof p, "baseline/%s", ps_baseline_names[k]);
        int r1;
        hsize_t d1[H5S_MAX_RANK];
        int64_t m = 0;
        float *x = ps_h5_read(f, p, H5T_NATIVE_FLOAT, &r1, d1, &m);
        if (!x || r1 != 1 || m <= 0 || (n >= 0 && m != n)) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /%s: missing or of another size", path, p);
        if (rc == 0) {
            if (n < 0) put_i64(&w, m);
            n = m;
            put(&w, x, (size_t)m * sizeof *x);
        }
        free(x);
    }
    int64_t n_res = 0;
    char **names = NULL;
    hid_t res = rc == 0 ? H5Gopen2(f, "results", H5P_DEFAULT) : -1;
    if (rc == 0 && (res < 0 || !(names = ps_h5_list(res, &n_res)))) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: /results: cannot list", path);
    put_i64(&w, n_res);
    for (int64_t t = 0; rc == 0 && t < n_res; t++) rc = put_table(&w, res, names[t], path, e);
    ps_h5_free_strs(names, (size_t)n_res);
    if (res >= 0) H5Gclose(res);
    H5Fclose(f);
    if (rc == 0 && w.oom) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    if (rc != 0) { free(w.p); return -1; }
    *out = w.p;
    *out_len = w.n;
    return 0;
}

static int read_cb(void *arg, unsigned char **out, size_t *out_len, ps_error *e) { return ps_store_run_stream(arg, out, out_len, e); }

// ---- here: the stream into tables ----

static int get_table(rbuf *r, ps_table *t, int64_t n_prompts, ps_error *e, const char *path) {
    memset(t, 0, sizeof *t);
    char *name = get_str(r), *kind = get_str(r);
    const int per_prompt = get_i64(r) != 0, metric_valued = get_i64(r) != 0;
    const int64_t n_rows = get_i64(r), n_axes = get_i64(r);
    ps_axis ax[PS_TABLE_MAX_AXES];
    memset(ax, 0, sizeof ax);
    int rc = 0;
    if (r->bad || !name || !kind || n_axes < 0 || n_axes > PS_TABLE_MAX_AXES || (per_prompt && n_rows != n_prompts) ||
        (!per_prompt && n_rows != 1))
        rc = -1;
    int64_t cells = 1;
    for (int a = 0; rc == 0 && a < n_axes; a++) {
        ax[a].name = get_str(r);
        ax[a].len = get_i64(r);
        if (r->bad || !ax[a].name || ax[a].len <= 0 || ax[a].len > (int64_t)(r->n / 8) ||
            !(ax[a].value = malloc((size_t)ax[a].len * sizeof(int64_t)))) { rc = -1; break; }
        const void *v = take(r, (size_t)ax[a].len * sizeof(int64_t));
        if (!v) { rc = -1; break; }
        memcpy(ax[a].value, v, (size_t)ax[a].len * sizeof(int64_t));
        if (get_i64(r)) {
            if (!(ax[a].label = calloc((size_t)ax[a].len, sizeof(char *)))) { rc = -1; break; }
            for (int64_t i = 0; i < ax[a].len && !r->bad; i++) ax[a].label[i] = get_str(r);
        }
        if (cells > (int64_t)r->n) rc = -1;
        cells *= ax[a].len;
    }
    if (rc == 0 && (get_i64(r) != cells || r->bad)) rc = -1;
    // The values must be in the stream before they are allocated: the axes alone could ask for n^3 bytes.
    if (rc == 0 && (uint64_t)cells > (r->n - r->at) / sizeof(float) / (uint64_t)n_rows) rc = -1;
    if (rc == 0 && ps_table_init(t, name, kind, per_prompt, n_rows, (int)n_axes, ax, metric_valued, e) != 0) rc = -2;
    if (rc == 0) get_floats(r, t->values, n_rows * cells);
    if (rc == 0) {
        t->patches_run = get_i64(r);
        t->patches_skipped = get_i64(r);
        const int64_t n_attrs = get_i64(r);
        if (n_attrs < 0 || n_attrs > PS_TABLE_MAX_ATTRS) rc = -1;
        for (int64_t k = 0; rc == 0 && k < n_attrs && !r->bad; k++) {
            char *key = get_str(r);
            const int64_t type = get_i64(r);
            if (!key || r->bad) rc = -1;
            else if (type == PS_ATTR_STR) {
                char *s = get_str(r);
                if (!s || ps_table_attr_str(t, key, s, e) != 0) rc = s ? -2 : -1;
                free(s);
            } else if (type == PS_ATTR_I64) {
                if (ps_table_attr_i64(t, key, get_i64(r), e) != 0) rc = -2;
            } else if (type == PS_ATTR_F64) {
                if (ps_table_attr_f64(t, key, get_f64(r), e) != 0) rc = -2;
            } else rc = -1;
            free(key);
        }
    }
    if (rc == 0 && r->bad) rc = -1;
    for (int a = 0; a < PS_TABLE_MAX_AXES; a++) ps_axis_free(&ax[a]); // ps_table_init copied them
    free(name);
    free(kind);
    if (rc == -1) ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: a table read back from it does not parse", path);
    if (rc != 0) ps_table_free(t);
    return rc ? -1 : 0;
}

void ps_stored_run_free(ps_stored_run *s) {
    if (!s) return;
    ps_baseline_free(&s->base);
    for (int64_t t = 0; s->tables && t < s->n_tables; t++) ps_table_free(&s->tables[t]);
    free(s->tables);
    memset(s, 0, sizeof *s);
}

int ps_store_read_run(const char *path, ps_stored_run *s, ps_error *e) {
    memset(s, 0, sizeof *s);
    ps_h5_quiet();
    unsigned char *buf = NULL;
    size_t len = 0;
    int64_t size = 0;
    ps_error oe = {0};
    int fd = ps_open_regular(path, &size, &oe);
    if (fd < 0) return ps_fail(e, oe.code ? oe.code : PS_EXIT_BADINPUT, "%s", oe.msg);
    close(fd);
    // What the file can expand to (its gzip'd float arrays), as the child's own reads are bounded.
    const size_t max = (size_t)ps_h5_expand_bound(size);
    if (ps_h5_guarded_buf(path, ps_h5_child_seconds(path), read_cb, (void *)path, &buf, &len, max, e) != 0) return -1;
    int rc = ps_store_parse_run(buf, len, path, s, e);
    free(buf);
    return rc;
}

int ps_store_parse_run(const unsigned char *buf, size_t len, const char *path, ps_stored_run *s, ps_error *e) {
    memset(s, 0, sizeof *s);
    rbuf r = {buf, len, 0, 0};
    int rc = 0;
    char *base = get_str(&r);
    if (base && strlen(base) == 64) memcpy(s->base_identity, base, 65);
    free(base);
    const int64_t n = get_i64(&r);
    if (r.bad || n <= 0 || n > (int64_t)(len / (PS_BASELINE_COLS * sizeof(float))))
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: its baselines read back do not parse", path);
    if (rc == 0 && ps_baseline_init(&s->base, n, e) != 0) rc = -1;
    float *col[PS_BASELINE_COLS];
    if (rc == 0) ps_baseline_columns(&s->base, col);
    for (int k = 0; rc == 0 && k < PS_BASELINE_COLS; k++) get_floats(&r, col[k], n);
    const int64_t n_t = rc == 0 ? get_i64(&r) : 0;
    if (rc == 0 && (r.bad || n_t < 0 || n_t > (int64_t)len)) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: its tables read back do not parse", path);
    if (rc == 0 && !(s->tables = calloc((size_t)(n_t ? n_t : 1), sizeof *s->tables))) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    for (int64_t t = 0; rc == 0 && t < n_t; t++) {
        if (get_table(&r, &s->tables[t], n, e, path) != 0) rc = -1;
        else s->n_tables = t + 1;
    }
    if (rc != 0) ps_stored_run_free(s);
    return rc;
}
