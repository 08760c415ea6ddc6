// HDF5 helpers the results files share (store.c writes, inspect.c, merge.c and readback.c read): one-line errors with
// HDF5's innermost message, UTF-8-safe strings, attributes, datasets with dimension scales, whole-dataset reads.
#include "h5util.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------------------------
// Error helpers: HDF5 keeps a stack of messages; the innermost one usually says what really went wrong
// ("No such file or directory", "file locking"), so it goes at the end of our one-line message.

static herr_t innermost_cb(unsigned n, const H5E_error2_t *err, void *data) {
    char *buf = data;
    if (n == 0 && err->desc) snprintf(buf, 256, "%s", err->desc);
    return 0;
}

const char *ps_h5_detail(char buf[256]) {
    buf[0] = 0;
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, innermost_cb, buf);
    if (!buf[0]) snprintf(buf, 256, "HDF5 error");
    return buf;
}

// Fails with PS_EXIT_RUNTIME: "FILE: OBJECT: what (hdf5 detail)".
int ps_h5_fail(ps_error *e, const char *file, const char *what, ...) {
    char msg[1024], det[256];
    va_list ap;
    va_start(ap, what);
    vsnprintf(msg, sizeof msg, what, ap);
    va_end(ap);
    return ps_fail(e, PS_EXIT_RUNTIME, "%s: %s (%s)", file, msg, ps_h5_detail(det));
}

void ps_h5_quiet(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

// ---------------------------------------------------------------------------------------------------------------
// Small writers.

hid_t ps_h5_vlstr_type(void) {
    hid_t t = H5Tcopy(H5T_C_S1);
    H5Tset_size(t, H5T_VARIABLE);
    H5Tset_cset(t, H5T_CSET_UTF8);
    return t;
}

// Copy of s with invalid UTF-8 bytes replaced by U+FFFD: a byte-level BPE token can be half a character, and
// h5py refuses to decode a string declared UTF-8 that is not. The ids stay exact in the *_ids datasets.
char *ps_h5_sanitize(const char *s) {
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

void ps_h5_free_strs(char **v, size_t n) {
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

// Sanitized copies of n strings (NULL array or entries count as "").
char **ps_h5_sanitize_all(const char *const *in, size_t n) {
    char **v = calloc(n ? n : 1, sizeof *v);
    if (!v) return NULL;
    for (size_t i = 0; i < n; i++) {
        v[i] = ps_h5_sanitize(in ? in[i] : "");
        if (!v[i]) { ps_h5_free_strs(v, i); return NULL; }
    }
    return v;
}

int ps_h5_attr_write(hid_t obj, const char *name, hid_t type, const void *val) {
    if (H5Aexists(obj, name) > 0 && H5Adelete(obj, name) < 0) return -1;
    hid_t sp = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(obj, name, type, sp, H5P_DEFAULT, H5P_DEFAULT);
    int rc = (a >= 0 && H5Awrite(a, type, val) >= 0) ? 0 : -1;
    if (a >= 0) H5Aclose(a);
    H5Sclose(sp);
    return rc;
}

int ps_h5_attr_str(hid_t obj, const char *name, const char *val) {
    char *s = ps_h5_sanitize(val);
    if (!s) return -1;
    hid_t t = ps_h5_vlstr_type();
    int rc = ps_h5_attr_write(obj, name, t, &s);
    H5Tclose(t);
    free(s);
    return rc;
}

int ps_h5_attr_i64(hid_t obj, const char *name, int64_t v) { return ps_h5_attr_write(obj, name, H5T_STD_I64LE, &v); }
int ps_h5_attr_f64(hid_t obj, const char *name, double v) { return ps_h5_attr_write(obj, name, H5T_IEEE_F64LE, &v); }

// Creates dataset name in loc with file type ftype, writes data (memory type mtype) and returns the open id
// (caller closes) or -1. Large float arrays get chunked + shuffle + gzip: patching sweeps over neurons are big
// and mostly smooth, and NaN blocks compress to nothing.
hid_t ps_h5_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims,
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
        H5Pset_deflate(dcpl, 1);
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
hid_t ps_h5_write_strs(hid_t loc, const char *name, int rank, const hsize_t *dims, const char *const *in) {
    hsize_t n = 1;
    for (int i = 0; i < rank; i++) n *= dims[i];
    char **v = ps_h5_sanitize_all(in, (size_t)n);
    if (!v) return -1;
    hid_t t = ps_h5_vlstr_type();
    hid_t d = ps_h5_write(loc, name, t, t, rank, dims, v);
    H5Tclose(t);
    ps_h5_free_strs(v, (size_t)n);
    return d;
}

int ps_h5_close_ok(hid_t d) { return d >= 0 ? (H5Dclose(d), 0) : -1; }

// A 1-D int64 dimension-scale dataset named `name` in loc with the given values (0..n-1 when NULL).
hid_t ps_h5_scale_write(hid_t loc, const char *name, int64_t n, const int64_t *values) {
    int64_t *tmp = NULL;
    if (!values) {
        tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
        if (!tmp) return -1;
        for (int64_t i = 0; i < n; i++) tmp[i] = i;
        values = tmp;
    }
    hsize_t dim = (hsize_t)n;
    hid_t d = ps_h5_write(loc, name, H5T_STD_I64LE, H5T_NATIVE_INT64, 1, &dim, values);
    free(tmp);
    if (d >= 0 && H5DSset_scale(d, name) < 0) {
        H5Dclose(d);
        return -1;
    }
    return d;
}

// Attaches scale to dim of d and labels the dim.
int ps_h5_attach(hid_t d, hid_t scale, unsigned dim, const char *label) {
    if (scale >= 0 && H5DSattach_scale(d, scale, dim) < 0) return -1;
    return H5DSset_label(d, dim, label) < 0 ? -1 : 0;
}

double ps_h5_nanmean(const float *x, int64_t n) {
    double sum = 0;
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++)
        if (!isnan(x[i])) { sum += x[i]; k++; }
    return k ? sum / (double)k : NAN;
}

// Reads a string attribute (variable or fixed length) into buf; "" when missing.
int ps_h5_read_attr_str(hid_t obj, const char *name, char *buf, size_t n) {
    buf[0] = 0;
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    hid_t t = H5Aget_type(a);
    int rc = -1;
    if (H5Tget_class(t) == H5T_STRING) {
        if (H5Tis_variable_str(t) > 0) {
            hid_t mt = ps_h5_vlstr_type();
            char *v = NULL;
            if (H5Aread(a, mt, &v) >= 0) {
                snprintf(buf, n, "%s", v ? v : "");
                rc = 0;
                hid_t sp = H5Aget_space(a);
                ps_h5_vlen_reclaim(mt, sp, H5P_DEFAULT, &v);
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

// Dim dim's label (H5DSset_label's attribute DIMENSION_LABELS, one string per dim) into buf; -1 when it has none.
// Read here rather than with H5DSget_label, which trusts the attribute to hold exactly rank strings and overruns
// its buffer on a corrupt file (found by fuzz_results).
int ps_h5_dim_label(hid_t d, unsigned dim, char *buf, size_t n) {
    buf[0] = 0;
    if (H5Aexists(d, "DIMENSION_LABELS") <= 0) return -1;
    hid_t sp = H5Dget_space(d), a = H5Aopen(d, "DIMENSION_LABELS", H5P_DEFAULT);
    hid_t asp = a >= 0 ? H5Aget_space(a) : -1, t = a >= 0 ? H5Aget_type(a) : -1;
    int rc = -1;
    const int rank = sp >= 0 ? H5Sget_simple_extent_ndims(sp) : -1;
    const hssize_t count = asp >= 0 ? H5Sget_simple_extent_npoints(asp) : -1;
    if (rank > 0 && (hssize_t)rank == count && (int)dim < rank && t >= 0 && H5Tget_class(t) == H5T_STRING &&
        H5Tis_variable_str(t) > 0) {
        char *v[H5S_MAX_RANK] = {0};
        hid_t mt = ps_h5_vlstr_type();
        if (H5Aread(a, mt, v) >= 0) {
            if (v[dim] && v[dim][0]) {
                snprintf(buf, n, "%s", v[dim]);
                rc = 0;
            }
            ps_h5_vlen_reclaim(mt, asp, H5P_DEFAULT, v);
        }
        H5Tclose(mt);
    }
    if (t >= 0) H5Tclose(t);
    if (asp >= 0) H5Sclose(asp);
    if (a >= 0) H5Aclose(a);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

// A variable-length string attribute of any length (the inputs list), malloc'd; NULL when missing or not one.
char *ps_h5_read_attr_alloc(hid_t obj, const char *name) {
    if (H5Aexists(obj, name) <= 0) return NULL;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return NULL;
    hid_t t = H5Aget_type(a), sp = H5Aget_space(a);
    char *out = NULL;
    if (t >= 0 && sp >= 0 && H5Tget_class(t) == H5T_STRING && H5Tis_variable_str(t) > 0 && H5Sget_simple_extent_npoints(sp) == 1) {
        hid_t mt = ps_h5_vlstr_type();
        char *v = NULL;
        if (H5Aread(a, mt, &v) >= 0) {
            out = strdup(v ? v : "");
            ps_h5_vlen_reclaim(mt, sp, H5P_DEFAULT, &v);
        }
        H5Tclose(mt);
    }
    if (t >= 0) H5Tclose(t);
    if (sp >= 0) H5Sclose(sp);
    H5Aclose(a);
    return out;
}

int ps_h5_read_attr_f64(hid_t obj, const char *name, double *v) {
    *v = NAN;
    if (H5Aexists(obj, name) <= 0) return -1;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return -1;
    int rc = H5Aread(a, H5T_NATIVE_DOUBLE, v) >= 0 ? 0 : -1;
    H5Aclose(a);
    return rc;
}

// Reads a whole numeric dataset converted to mtype; returns malloc'd data and its shape, or NULL.
void *ps_h5_read(hid_t loc, const char *name, hid_t mtype, int *rank, hsize_t dims[H5S_MAX_RANK],
                          int64_t *count) {
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) return NULL;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t sp = H5Dget_space(d);
    *rank = H5Sget_simple_extent_ndims(sp);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    hssize_t n = *rank >= 0 && *rank <= H5S_MAX_RANK ? H5Sget_simple_extent_npoints(sp) : -1;
    H5Sclose(sp);
    // The element count comes from the file: bounded by what the file can hold before it sizes an allocation.
    if (n < 0 || (int64_t)n > ps_h5_max_bytes(d) / (int64_t)H5Tget_size(mtype)) {
        H5Dclose(d);
        return NULL;
    }
    void *buf = calloc((size_t)(n > 0 ? n : 1), H5Tget_size(mtype));
    if (buf && n > 0 && H5Dread(d, mtype, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0) {
        free(buf);
        buf = NULL;
    }
    H5Dclose(d);
    *count = (int64_t)n;
    return buf;
}

// Reads a 1-D or 2-D variable-length string dataset: malloc'd copies (caller frees with ps_h5_free_strs).
char **ps_h5_read_strs(hid_t loc, const char *name, int64_t *count) {
    *count = 0;
    if (H5Lexists(loc, name, H5P_DEFAULT) <= 0) return NULL;
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t sp = H5Dget_space(d);
    hssize_t n = H5Sget_simple_extent_npoints(sp);
    hid_t ft = H5Dget_type(d);
    const int is_vlstr = ft >= 0 && H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) > 0;
    if (ft >= 0) H5Tclose(ft);
    // Only variable-length strings (what the store writes), and no more of them than the file can hold.
    if (!is_vlstr || n < 0 || (int64_t)n > ps_h5_max_bytes(d) / (int64_t)sizeof(char *)) {
        H5Sclose(sp);
        H5Dclose(d);
        return NULL;
    }
    hid_t mt = ps_h5_vlstr_type();
    char **raw = calloc((size_t)(n > 0 ? n : 1), sizeof *raw), **out = NULL;
    if (raw && n > 0 && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw) >= 0) {
        out = calloc((size_t)n, sizeof *out);
        for (hssize_t i = 0; out && i < n; i++)
            if (!(out[i] = strdup(raw[i] ? raw[i] : ""))) {
                ps_h5_free_strs(out, (size_t)i);
                out = NULL;
            }
        ps_h5_vlen_reclaim(mt, sp, H5P_DEFAULT, raw);
        if (out) *count = (int64_t)n;
    }
    free(raw);
    H5Tclose(mt);
    H5Sclose(sp);
    H5Dclose(d);
    return out;
}
int ps_h5_overwrite_floats(hid_t loc, const char *name, const float *buf) {
    hid_t d = H5Dopen2(loc, name, H5P_DEFAULT);
    if (d < 0) return -1;
    int rc = H5Dwrite(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) < 0 ? -1 : 0;
    H5Dclose(d);
    return rc;
}

typedef struct {
    char **names;
    int64_t n, cap;
    int failed;
} name_list;

static herr_t list_cb(hid_t g, const char *name, const H5L_info_t *info, void *data) {
    (void)g; (void)info;
    name_list *l = data;
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 16;
        char **v = realloc(l->names, (size_t)cap * sizeof *v);
        if (!v) { l->failed = 1; return -1; }
        l->names = v;
        l->cap = cap;
    }
    if (!(l->names[l->n] = strdup(name))) { l->failed = 1; return -1; }
    l->n++;
    return 0;
}

char **ps_h5_list(hid_t g, int64_t *n) {
    *n = 0;
    hid_t gcpl = H5Gget_create_plist(g);
    unsigned crt = 0;
    if (gcpl >= 0) {
        H5Pget_link_creation_order(gcpl, &crt);
        H5Pclose(gcpl);
    }
    name_list l = {0};
    hsize_t idx = 0;
    herr_t rc = H5Literate(g, (crt & H5P_CRT_ORDER_INDEXED) ? H5_INDEX_CRT_ORDER : H5_INDEX_NAME, H5_ITER_INC, &idx,
                           list_cb, &l);
    if (rc < 0 || l.failed) {
        ps_h5_free_strs(l.names, (size_t)l.n);
        return NULL;
    }
    if (!l.names && !(l.names = calloc(1, sizeof *l.names))) return NULL;
    *n = l.n;
    return l.names;
}

int64_t ps_h5_schema_version(hid_t file) {
    if (H5Lexists(file, "run", H5P_DEFAULT) <= 0) return 0;
    hid_t run = H5Gopen2(file, "run", H5P_DEFAULT);
    double v = 0;
    if (run >= 0) {
        if (ps_h5_read_attr_f64(run, "schema_version", &v) != 0) v = 0;
        H5Gclose(run);
    }
    // The file's number, untrusted: one no schema ever had (NaN, negative, past any version) reads as "not ours" (0)
    // rather than reaching a float-to-integer conversion that is undefined out of range.
    return v >= 1 && v <= 1e6 ? (int64_t)v : 0;
}

// ---------------------------------------------------------------------------------------------------------------
// A result table as stored (store.c writes it; readback.c, merge.c and inspect.c read it back).

static const char *const own_attrs[] = {"kind", "patches_run", "patches_skipped"};

int ps_h5_table_own_attr(const char *name) {
    for (size_t i = 0; i < sizeof own_attrs / sizeof own_attrs[0]; i++)
        if (!strcmp(name, own_attrs[i])) return 1;
    return 0;
}

void ps_h5_axis_strs_name(const char *axis, char *buf, size_t n) {
    snprintf(buf, n, strcmp(axis, "pos") ? "%s_label" : "pos_token", axis);
}

int64_t ps_h5_read_counter(hid_t g, const char *name) {
    char b[64];
    return ps_h5_read_attr_str(g, name, b, sizeof b) == 0 ? strtoll(b, NULL, 10) : 0;
}

int ps_h5_values_per_prompt(hid_t values) {
    char label[64];
    return values >= 0 && ps_h5_dim_label(values, 0, label, sizeof label) == 0 && !strcmp(label, "prompt");
}

int64_t *ps_h5_axis_scale(hid_t g, const char *axis, int64_t len) {
    int rank;
    hsize_t dims[H5S_MAX_RANK];
    int64_t n = 0;
    int64_t *v = ps_h5_read(g, axis, H5T_NATIVE_INT64, &rank, dims, &n);
    if (v && (rank != 1 || n != len)) {
        free(v);
        return NULL;
    }
    return v;
}
