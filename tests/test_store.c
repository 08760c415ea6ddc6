// Tests for the HDF5 results file: writes synthetic experiments, reads them back with the plain HDF5 API (values,
// shapes, attributes, dimension scales), checks the .partial/rename protocol, `inspect`, h5py and plot.py.
#include "ps_store.h"
#include "testutil.h"

#include <fcntl.h>
#include <hdf5.h>
#include <hdf5_hl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NP 3
#define T 6

static int exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

// Runs fn(arg) with stdout (and stderr) going to files; returns fn's result. Output is read back into out/err.
typedef int (*capture_fn)(const void *arg, ps_error *e);
static int capture(capture_fn fn, const void *arg, ps_error *e, const char *dir, char **out, char **err) {
    char po[4096], pe[4096];
    snprintf(po, sizeof po, "%s/capture.out", dir);
    snprintf(pe, sizeof pe, "%s/capture.err", dir);
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    int fo = open(po, O_WRONLY | O_CREAT | O_TRUNC, 0644), fe = open(pe, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fo, 1);
    dup2(fe, 2);
    int rc = fn(arg, e);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so); close(se); close(fo); close(fe);
    *out = ps_read_file(po, NULL, NULL);
    *err = ps_read_file(pe, NULL, NULL);
    return rc;
}

static int do_inspect(const void *path, ps_error *e) { return ps_store_inspect(path, e); }

// ------------------------------------------------------------------------------------------------------------
// Synthetic data: 3 prompts of lengths 5, 6, 4 tokens; experiments with (layer, pos), (layer, head),
// a subset of positions, (layer, pos, head) and (layer, neuron).

static const int64_t length[NP] = {5, 6, 4}, prompt_length[NP] = {4, 5, 3};
static int32_t clean_ids[NP * T], corr_ids[NP * T], answer_id[NP] = {642, 718, 767}, wrong_id[NP] = {718, 767, 807};
static const char *clean_str[NP * T], *corr_str[NP * T];
static const char *clean_text[NP] = {"1 2 3 4", "5 6 7 8 9", "a\nb"};
static const char *corr_text[NP] = {"1 2 3 5", "5 6 7 8 0", "a\nc"};
static const char *answer_text[NP] = {" 5", " 6", " 7"}, *wrong_text[NP] = {" 6", " 7", " 8"};
static const char *tok_rows[NP][T] = {
    {"<|endoftext|>", " 1", " 2", " 3", " 4", NULL},
    {"<|endoftext|>", " 5", " 6", " 7", " 8", " 9"},
    {"<|endoftext|>", "a", "\n", "\xe2\x80", NULL, NULL}, // half a UTF-8 character, as byte-level BPE can give
};
static float base_clean[NP] = {3.0f, 2.0f, 4.0f}, base_corr[NP] = {-1.0f, -2.0f, 0.0f};
static float ca[NP] = {10, 11, 12}, cw[NP] = {7, 9, 8}, xa[NP] = {6, 7, 8}, xw[NP] = {7, 9, 8};

static void fill_prompts(ps_prompts_info *p) {
    for (int i = 0; i < NP; i++)
        for (int t = 0; t < T; t++) {
            int in = t < length[i];
            clean_ids[i * T + t] = in ? 100 * i + t : -1;
            corr_ids[i * T + t] = in ? 100 * i + t + 50 : -1;
            clean_str[i * T + t] = tok_rows[i][t];
            corr_str[i * T + t] = in ? "x" : NULL;
        }
    *p = (ps_prompts_info){.n_prompts = NP, .T_max = T, .length = length, .prompt_length = prompt_length,
                           .clean_ids = clean_ids, .corrupted_ids = corr_ids, .clean_str = clean_str,
                           .corrupted_str = corr_str, .clean_text = clean_text, .corrupted_text = corr_text,
                           .answer_text = answer_text, .wrong_text = wrong_text, .answer_id = answer_id,
                           .wrong_id = wrong_id};
}

// Values with a recognizable pattern: prompt p, flat cell c -> p + c/100, NaN beyond a prompt's length on pos.
// r describes the experiment for the checks; t is the table the store writes.
typedef struct {
    const char *name, *site, *layout, *direction;
    int n_axes;
    const char *axis_name[PS_TABLE_MAX_AXES];
    int64_t axis_len[PS_TABLE_MAX_AXES];
    const int64_t *axis_value[PS_TABLE_MAX_AXES];
    const float *normalized; // NULL: the table has no normalized datasets
    int64_t patches_run, patches_skipped;
} exp_desc;
typedef struct {
    exp_desc r;
    ps_table t;
    float *values, *normalized, *mean, *mean_normalized;
    int64_t cells;
} exp_data;

static void make_exp(exp_data *x, const char *name, const char *site, const char *layout, const char *dir, int n_axes,
                     const char **names, const int64_t *lens, const int64_t **vals, int with_norm, int with_mean) {
    memset(x, 0, sizeof *x);
    x->cells = 1;
    for (int a = 0; a < n_axes; a++) x->cells *= lens[a];
    x->values = malloc(NP * x->cells * sizeof(float));
    x->normalized = malloc(NP * x->cells * sizeof(float));
    x->mean = malloc(x->cells * sizeof(float));
    x->mean_normalized = malloc(x->cells * sizeof(float));
    int pos_axis = -1;
    for (int a = 0; a < n_axes; a++)
        if (strcmp(names[a], "pos") == 0) pos_axis = a;
    for (int64_t c = 0; c < x->cells; c++) {
        // unflatten to find this cell's position
        int64_t rem = c, pos = -1;
        for (int a = n_axes - 1; a >= 0; a--) {
            int64_t i = rem % lens[a];
            rem /= lens[a];
            if (a == pos_axis) pos = vals[a] ? vals[a][i] : i;
        }
        double s = 0, sn = 0;
        int k = 0;
        for (int p = 0; p < NP; p++) {
            float v = (pos >= length[p]) ? NAN : (float)(p + 0.01 * c - 0.3);
            float nv = isnan(v) ? NAN : (v - base_corr[p]) / (base_clean[p] - base_corr[p]);
            x->values[p * x->cells + c] = v;
            x->normalized[p * x->cells + c] = nv;
            if (!isnan(v)) { s += v; sn += nv; k++; }
        }
        x->mean[c] = k ? (float)(s / k) : NAN;
        x->mean_normalized[c] = k ? (float)(sn / k) : NAN;
    }
    x->r = (exp_desc){.name = name, .site = site, .layout = layout, .direction = dir, .n_axes = n_axes,
                      .normalized = with_norm ? x->normalized : NULL, .patches_run = NP * x->cells, .patches_skipped = 2};
    ps_axis axes[PS_TABLE_MAX_AXES];
    for (int a = 0; a < n_axes; a++) {
        x->r.axis_name[a] = names[a];
        x->r.axis_len[a] = lens[a];
        x->r.axis_value[a] = vals[a];
        axes[a] = (ps_axis){.name = (char *)names[a], .len = lens[a], .value = (int64_t *)vals[a]};
    }
    // The table: normalized datasets only with_norm; without a mean the store computes it.
    ps_error e = {0};
    ps_table *t = &x->t;
    int rc = ps_table_init(t, name, "patch_sweep", 1, NP, n_axes, axes, with_norm, &e);
    TU_CHECK(rc == 0, "ps_table_init %s: %s", name, e.msg);
    if (rc != 0) return;
    memcpy(t->values, x->values, NP * x->cells * sizeof(float));
    if (with_norm) {
        memcpy(t->normalized, x->normalized, NP * x->cells * sizeof(float));
        memcpy(t->mean_normalized, x->mean_normalized, x->cells * sizeof(float));
    }
    if (with_mean) memcpy(t->mean, x->mean, x->cells * sizeof(float));
    else { free(t->mean); t->mean = NULL; }
    t->patches_run = x->r.patches_run;
    t->patches_skipped = x->r.patches_skipped;
    TU_CHECK(ps_table_attr_str(t, "site", site, &e) == 0 && ps_table_attr_str(t, "layout", layout, &e) == 0 &&
                 ps_table_attr_str(t, "direction", dir, &e) == 0 && ps_table_attr_str(t, "metric", "logit_diff", &e) == 0,
             "%s: attributes: %s", name, e.msg);
}

static void free_exp(exp_data *x) {
    free(x->values); free(x->normalized); free(x->mean); free(x->mean_normalized);
    ps_table_free(&x->t);
}

#define NEXP 5
static exp_data exps[NEXP];
static const int64_t layer_vals[4] = {0, 1, 2, 3}, layer_odd[2] = {1, 3}, some_pos[3] = {1, 3, 5};

static void make_all(void) {
    {
        const char *n[] = {"layer", "pos"};
        int64_t l[] = {4, T};
        const int64_t *v[] = {layer_vals, NULL};
        make_exp(&exps[0], "resid_pre", "resid_pre", "layer_pos", "denoise", 2, n, l, v, 1, 1);
    }
    {
        const char *n[] = {"layer", "head"};
        int64_t l[] = {2, 3};
        const int64_t *v[] = {layer_odd, NULL};
        make_exp(&exps[1], "attn_head_out", "attn_head_out", "layer_head", "noise", 2, n, l, v, 1, 1);
    }
    {
        const char *n[] = {"layer", "pos"};
        int64_t l[] = {4, 3};
        const int64_t *v[] = {NULL, some_pos};
        make_exp(&exps[2], "mlp_out_some_pos", "mlp_out", "layer_pos", "denoise", 2, n, l, v, 0, 0);
    }
    {
        const char *n[] = {"layer", "pos", "head"};
        int64_t l[] = {2, T, 3};
        const int64_t *v[] = {NULL, NULL, NULL};
        make_exp(&exps[3], "z_per_pos", "z", "layer_pos_head", "denoise", 3, n, l, v, 1, 1);
    }
    {
        const char *n[] = {"layer", "neuron"};
        int64_t l[] = {2, 64};
        const int64_t *v[] = {NULL, NULL};
        make_exp(&exps[4], "mlp_post_neurons", "mlp_post", "layer_neuron", "denoise", 2, n, l, v, 1, 1);
    }
}

static int write_file(const char *path, int complete, int n_exp, ps_error *e) {
    ps_store *s;
    if (ps_store_open(&s, path, e) != 0) return -1;
    ps_run_info run = {.config_text = "{\n  \"model\": \"gpt2\" // ü\n}\n", .config_path = "configs/x.jsonc",
                       .version = PS_VERSION, .model_dir = "models/gpt2", .weights_sha256 = "ab12cd34ef56",
                       .tokenizer_path = "tok.json", .tokenizer_sha256 = "99", .backend = "cpu",
                       .precision = "fp32", .weights_dtype = "F32", .threads = 2, .prepend_bos = 1,
                       .bos_id = 50256, .metric = "logit_diff"};
    ps_prompts_info p;
    fill_prompts(&p);
    ps_baseline b = {.n = NP, .clean = base_clean, .corrupted = base_corr, .clean_answer_logit = ca,
                     .clean_wrong_logit = cw, .corrupted_answer_logit = xa, .corrupted_wrong_logit = xw};
    if (ps_store_write_run(s, &run, e) || ps_store_write_prompts(s, &p, e) || ps_store_write_baseline(s, &b, e)) {
        ps_store_close(s, 0, NULL);
        return -1;
    }
    for (int i = 0; i < n_exp; i++)
        if (ps_store_write_table(s, &exps[i].t, e)) {
            ps_store_close(s, 0, NULL);
            return -1;
        }
    // Every group/dataset/attribute the writer opened is closed again: only the file itself is open.
    ssize_t open_objs = H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL);
    TU_CHECK(open_objs == 1, "open HDF5 objects before close: %zd (want 1, the file)", open_objs);
    return ps_store_close(s, complete, e);
}

// ------------------------------------------------------------------------------------------------------------
// Readers for the checks.

static char *attr_s(hid_t obj, const char *name) {
    static char buf[4][512];
    static int slot;
    char *out = buf[slot++ % 4];
    out[0] = 0;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return strcpy(out, "<missing>");
    hid_t t = H5Aget_type(a);
    TU_CHECK(H5Tis_variable_str(t) > 0 && H5Tget_cset(t) == H5T_CSET_UTF8, "attribute %s is not a VL UTF-8 string",
             name);
    char *v = NULL;
    if (H5Aread(a, t, &v) >= 0 && v) snprintf(out, 512, "%s", v);
    H5free_memory(v);
    H5Tclose(t);
    H5Aclose(a);
    return out;
}

static double attr_d(hid_t obj, const char *name) {
    double v = NAN;
    hid_t a = H5Aopen(obj, name, H5P_DEFAULT);
    if (a < 0) return NAN;
    H5Aread(a, H5T_NATIVE_DOUBLE, &v);
    H5Aclose(a);
    return v;
}

static int shape_is(hid_t d, int rank, const hsize_t *want) {
    hid_t sp = H5Dget_space(d);
    hsize_t dims[8];
    int r = H5Sget_simple_extent_ndims(sp);
    H5Sget_simple_extent_dims(sp, dims, NULL);
    H5Sclose(sp);
    if (r != rank) return 0;
    for (int i = 0; i < r; i++)
        if (dims[i] != want[i]) return 0;
    return 1;
}

static float *read_f(hid_t g, const char *name, int rank, const hsize_t *dims) {
    hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
    if (d < 0) { TU_CHECK(0, "dataset %s missing", name); return NULL; }
    TU_CHECK(shape_is(d, rank, dims), "dataset %s has the wrong shape", name);
    hid_t t = H5Dget_type(d);
    TU_CHECK(H5Tget_class(t) == H5T_FLOAT && H5Tget_size(t) == 4, "%s is not float32", name);
    H5Tclose(t);
    int64_t n = 1;
    for (int i = 0; i < rank; i++) n *= (int64_t)dims[i];
    float *x = malloc((size_t)(n ? n : 1) * sizeof *x);
    H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x);
    H5Dclose(d);
    return x;
}

// Reads n VL strings as malloc'd copies (free_s).
static char **read_s(hid_t g, const char *name, int64_t n) {
    hid_t d = H5Dopen2(g, name, H5P_DEFAULT);
    if (d < 0) { TU_CHECK(0, "dataset %s missing", name); return NULL; }
    hid_t t = H5Dget_type(d), sp = H5Dget_space(d);
    char **raw = calloc((size_t)n, sizeof *raw), **out = calloc((size_t)n, sizeof *out);
    H5Dread(d, t, H5S_ALL, H5S_ALL, H5P_DEFAULT, raw);
    for (int64_t i = 0; i < n; i++) out[i] = strdup(raw[i] ? raw[i] : "");
#if H5_VERSION_GE(1, 12, 0)
    H5Treclaim(t, sp, H5P_DEFAULT, raw);
#else
    H5Dvlen_reclaim(t, sp, H5P_DEFAULT, raw);
#endif
    free(raw);
    H5Sclose(sp);
    H5Tclose(t);
    H5Dclose(d);
    return out;
}

static void free_s(char **v, int64_t n) {
    for (int64_t i = 0; v && i < n; i++) free(v[i]);
    free(v);
}

static void check_label(hid_t d, unsigned dim, const char *want, const char *what) {
    char lab[64] = "";
    H5DSget_label(d, dim, lab, sizeof lab);
    TU_CHECK(strcmp(lab, want) == 0, "%s dim %u label '%s', want '%s'", what, dim, lab, want);
}

// Checks that scale dataset `scale_name` in g is a dimension scale attached to dim of dataset d, labelled label.
static void check_scale(hid_t g, hid_t d, unsigned dim, const char *scale_name, const char *label, const char *what) {
    hid_t sc = H5Dopen2(g, scale_name, H5P_DEFAULT);
    TU_CHECK(sc >= 0 && H5DSis_scale(sc) > 0, "%s: %s is not a dimension scale", what, scale_name);
    if (sc >= 0) {
        TU_CHECK(H5DSis_attached(d, sc, dim) > 0, "%s: scale %s not attached to dim %u", what, scale_name, dim);
        H5Dclose(sc);
    }
    if (label) check_label(d, dim, label, what);
}

static void check_complete_file(const char *path) {
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    TU_CHECK(f >= 0, "cannot reopen %s", path);
    if (f < 0) return;
    // /run
    hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
    TU_CHECK(strcmp(attr_s(run, "status"), "complete") == 0, "status %s", attr_s(run, "status"));
    TU_CHECK(strcmp(attr_s(run, "metric"), "logit_diff") == 0, "metric");
    TU_CHECK(strcmp(attr_s(run, "patchsweep_version"), PS_VERSION) == 0, "version");
    TU_CHECK(strcmp(attr_s(run, "model_dir"), "models/gpt2") == 0, "model_dir");
    TU_CHECK(strcmp(attr_s(run, "weights_dtype"), "F32") == 0, "weights_dtype");
    TU_CHECK(strcmp(attr_s(run, "backend"), "cpu") == 0 && strcmp(attr_s(run, "precision"), "fp32") == 0, "backend");
    TU_CHECK(attr_d(run, "threads") == 2 && attr_d(run, "prepend_bos") == 1 && attr_d(run, "bos_id") == 50256,
             "threads/prepend_bos/bos_id");
    const char *created = attr_s(run, "created");
    TU_CHECK(strlen(created) == 20 && created[4] == '-' && created[10] == 'T' && created[19] == 'Z',
             "created '%s' not ISO 8601 UTC", created);
    char **cfg = read_s(run, "config", 1);
    TU_CHECK(cfg && strcmp(cfg[0], "{\n  \"model\": \"gpt2\" // ü\n}\n") == 0, "config text not verbatim");
    free_s(cfg, 1);
    H5Gclose(run);

    // /prompts
    hid_t pg = H5Gopen2(f, "prompts", H5P_DEFAULT);
    hsize_t d2[2] = {NP, T};
    hid_t d = H5Dopen2(pg, "clean_ids", H5P_DEFAULT);
    TU_CHECK(shape_is(d, 2, d2), "clean_ids shape");
    int32_t ids[NP * T];
    H5Dread(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, ids);
    TU_CHECK(memcmp(ids, clean_ids, sizeof ids) == 0 && ids[5] == -1 && ids[6] == 100,
             "clean_ids values (ids[5]=%d ids[6]=%d)", ids[5], ids[6]);
    check_scale(pg, d, 0, "prompt", "prompt", "clean_ids");
    check_scale(pg, d, 1, "pos", "pos", "clean_ids");
    H5Dclose(d);
    d = H5Dopen2(pg, "answer_id", H5P_DEFAULT);
    int32_t aid[NP];
    H5Dread(d, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, aid);
    TU_CHECK(aid[0] == 642 && aid[2] == 767, "answer_id");
    check_scale(pg, d, 0, "prompt", "prompt", "answer_id");
    H5Dclose(d);
    d = H5Dopen2(pg, "length", H5P_DEFAULT);
    int64_t len[NP];
    H5Dread(d, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, len);
    TU_CHECK(len[0] == 5 && len[1] == 6 && len[2] == 4, "length");
    H5Dclose(d);
    char **toks = read_s(pg, "clean_tokens", NP * T);
    TU_CHECK(toks && strcmp(toks[0], "<|endoftext|>") == 0 && strcmp(toks[1], " 1") == 0 && strcmp(toks[5], "") == 0,
             "clean_tokens row 0");
    TU_CHECK(toks && strcmp(toks[2 * T + 2], "\n") == 0, "newline token kept");
    TU_CHECK(toks && strcmp(toks[2 * T + 3], "\xef\xbf\xbd\xef\xbf\xbd") == 0,
             "invalid UTF-8 token became '%s', want two U+FFFD", toks ? toks[2 * T + 3] : "");
    free_s(toks, NP * T);
    char **txt = read_s(pg, "wrong_text", NP);
    TU_CHECK(txt && strcmp(txt[1], " 7") == 0, "wrong_text");
    free_s(txt, NP);
    H5Gclose(pg);

    // /baseline
    hid_t bg = H5Gopen2(f, "baseline", H5P_DEFAULT);
    hsize_t dn[1] = {NP};
    float *bc = read_f(bg, "clean_metric", 1, dn), *bx = read_f(bg, "corrupted_wrong_logit", 1, dn);
    if (bc) tu_close("baseline/clean_metric", bc, base_clean, NP, 0, 0);
    if (bx) tu_close("baseline/corrupted_wrong_logit", bx, xw, NP, 0, 0);
    free(bc);
    free(bx);
    TU_CHECK(fabs(attr_d(bg, "mean_clean") - 3.0) < 1e-9 && fabs(attr_d(bg, "mean_corrupted") + 1.0) < 1e-9,
             "baseline means %g %g", attr_d(bg, "mean_clean"), attr_d(bg, "mean_corrupted"));
    d = H5Dopen2(bg, "clean_metric", H5P_DEFAULT);
    check_scale(bg, d, 0, "prompt", "prompt", "baseline/clean_metric");
    H5Dclose(d);
    H5Gclose(bg);

    // /results/*
    hid_t res = H5Gopen2(f, "results", H5P_DEFAULT);
    for (int i = 0; i < NEXP; i++) {
        const exp_desc *r = &exps[i].r;
        hid_t g = H5Gopen2(res, r->name, H5P_DEFAULT);
        TU_CHECK(g >= 0, "/results/%s missing", r->name);
        if (g < 0) continue;
        TU_CHECK(strcmp(attr_s(g, "site"), r->site) == 0 && strcmp(attr_s(g, "layout"), r->layout) == 0 &&
                     strcmp(attr_s(g, "direction"), r->direction) == 0 && strcmp(attr_s(g, "metric"), "logit_diff") == 0,
                 "%s: attributes", r->name);
        TU_CHECK(attr_d(g, "patches_run") == (double)r->patches_run && attr_d(g, "patches_skipped") == 2,
                 "%s: patches_run/skipped", r->name);
        hsize_t dims[PS_TABLE_MAX_AXES + 1] = {0};
        dims[0] = NP;
        for (int a = 0; a < r->n_axes; a++) dims[a + 1] = (hsize_t)r->axis_len[a];
        char nm[128];
        snprintf(nm, sizeof nm, "%s/values", r->name);
        float *v = read_f(g, "values", r->n_axes + 1, dims);
        if (v) tu_close(nm, v, exps[i].values, NP * exps[i].cells, 0, 0);
        free(v);
        snprintf(nm, sizeof nm, "%s/mean", r->name);
        v = read_f(g, "mean", r->n_axes, dims + 1);
        // mean given by the caller is stored as is; computed by the store it agrees to float rounding.
        if (v) tu_close(nm, v, exps[i].mean, exps[i].cells, 1e-6f, 1e-6f);
        free(v);
        int has_norm = r->normalized != NULL;
        TU_CHECK((H5Lexists(g, "normalized", H5P_DEFAULT) > 0) == has_norm, "%s: normalized presence", r->name);
        TU_CHECK((H5Lexists(g, "mean_normalized", H5P_DEFAULT) > 0) == has_norm, "%s: mean_normalized presence",
                 r->name);
        if (has_norm) {
            snprintf(nm, sizeof nm, "%s/mean_normalized", r->name);
            v = read_f(g, "mean_normalized", r->n_axes, dims + 1);
            if (v) tu_close(nm, v, exps[i].mean_normalized, exps[i].cells, 0, 0);
            free(v);
        }
        // Scales: every dim of every data set, right labels; axis values stored.
        const char *dsets[4] = {"values", "normalized", "mean", "mean_normalized"};
        for (int k = 0; k < 4; k++) {
            if (H5Lexists(g, dsets[k], H5P_DEFAULT) <= 0) continue;
            hid_t dd = H5Dopen2(g, dsets[k], H5P_DEFAULT);
            int off = k >= 2; // mean* have no prompt axis
            snprintf(nm, sizeof nm, "%s/%s", r->name, dsets[k]);
            if (!off) check_scale(g, dd, 0, "prompt", "prompt", nm);
            for (int a = 0; a < r->n_axes; a++) {
                unsigned dim = (unsigned)(a + 1 - off);
                check_scale(g, dd, dim, r->axis_name[a], r->axis_name[a], nm);
                int want_scales = strcmp(r->axis_name[a], "pos") == 0 ? 2 : 1;
                TU_CHECK(H5DSget_num_scales(dd, dim) == want_scales, "%s dim %u: %d scales, want %d", nm, dim,
                         H5DSget_num_scales(dd, dim), want_scales);
                if (want_scales == 2) check_scale(g, dd, dim, "pos_token", NULL, nm);
            }
            H5Dclose(dd);
        }
        for (int a = 0; a < r->n_axes; a++) {
            hid_t sc = H5Dopen2(g, r->axis_name[a], H5P_DEFAULT);
            int64_t vals[128];
            H5Dread(sc, H5T_NATIVE_INT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, vals);
            int ok = 1;
            for (int64_t j = 0; j < r->axis_len[a]; j++)
                ok &= vals[j] == (r->axis_value[a] ? r->axis_value[a][j] : j);
            TU_CHECK(ok, "%s: scale %s values", r->name, r->axis_name[a]);
            H5Dclose(sc);
        }
        H5Gclose(g);
    }
    // pos_token: prompt 0's tokens from /prompts, at every position for resid_pre and at 1, 3, 5 for the subset.
    hid_t g = H5Gopen2(res, "resid_pre", H5P_DEFAULT);
    char **pt = read_s(g, "pos_token", T);
    TU_CHECK(pt && strcmp(pt[0], "<|endoftext|>") == 0 && strcmp(pt[4], " 4") == 0, "resid_pre pos_token");
    free_s(pt, T);
    H5Gclose(g);
    g = H5Gopen2(res, "mlp_out_some_pos", H5P_DEFAULT);
    pt = read_s(g, "pos_token", 3);
    TU_CHECK(pt && strcmp(pt[0], " 1") == 0 && strcmp(pt[1], " 3") == 0 && strcmp(pt[2], "") == 0,
             "subset pos_token: '%s' '%s' '%s'", pt ? pt[0] : "", pt ? pt[1] : "", pt ? pt[2] : "");
    free_s(pt, 3);
    H5Gclose(g);
    H5Gclose(res);
    ssize_t open_objs = H5Fget_obj_count(f, H5F_OBJ_ALL);
    TU_CHECK(open_objs == 1, "test reader leaked %zd objects", open_objs - 1);
    H5Fclose(f);
}

int main(void) {
    H5open();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hsize_t base_spaces = 0, base_types = 0, base_plists = 0;
    H5Inmembers(H5I_DATASPACE, &base_spaces);
    H5Inmembers(H5I_DATATYPE, &base_types);
    H5Inmembers(H5I_GENPROP_LST, &base_plists);

    char dir[] = "/tmp/ps_test_store_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char path[1024], partial[1100];
    snprintf(path, sizeof path, "%s/a/b/out.h5", dir); // parent directories do not exist yet
    snprintf(partial, sizeof partial, "%s.partial", path);
    make_all();

    // 1. A complete run: renamed, no .partial left, everything reads back.
    ps_error e = {0};
    int rc = write_file(path, 1, NEXP, &e);
    TU_CHECK(rc == 0, "write complete file: %s", e.msg);
    TU_CHECK(exists(path) && !exists(partial), "after complete close: %s exists=%d, .partial exists=%d", path,
             exists(path), exists(partial));
    TU_CHECK(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0, "objects left open after close");
    hsize_t n_spaces = 0, n_types = 0, n_plists = 0;
    H5Inmembers(H5I_DATASPACE, &n_spaces);
    H5Inmembers(H5I_DATATYPE, &n_types);
    H5Inmembers(H5I_GENPROP_LST, &n_plists);
    TU_CHECK(n_spaces == base_spaces && n_types == base_types && n_plists == base_plists,
             "leaked ids: dataspaces %lld->%lld, datatypes %lld->%lld, property lists %lld->%lld",
             (long long)base_spaces, (long long)n_spaces, (long long)base_types, (long long)n_types,
             (long long)base_plists, (long long)n_plists);
    printf("complete file: %s (%ld bytes)\n", path, file_size(path));
    check_complete_file(path);

    // 2. An interrupted run: only .partial, status running; rewriting the same name later replaces it.
    char ipath[1024], ipartial[1100];
    snprintf(ipath, sizeof ipath, "%s/interrupted.h5", dir);
    snprintf(ipartial, sizeof ipartial, "%s.partial", ipath);
    e = (ps_error){0};
    rc = write_file(ipath, 0, 1, &e);
    TU_CHECK(rc == 0, "write interrupted file: %s", e.msg);
    TU_CHECK(!exists(ipath) && exists(ipartial), "after complete=0: final exists=%d partial exists=%d", exists(ipath),
             exists(ipartial));
    hid_t f = H5Fopen(ipartial, H5F_ACC_RDONLY, H5P_DEFAULT);
    TU_CHECK(f >= 0, "cannot open %s", ipartial);
    if (f >= 0) {
        hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
        TU_CHECK(strcmp(attr_s(run, "status"), "running") == 0, "partial status %s", attr_s(run, "status"));
        H5Gclose(run);
        H5Fclose(f);
    }

    // 2b. A run killed before ps_store_close: the flushed .partial still opens and shows what was written.
    char kpath[1024], kpartial[1100];
    snprintf(kpath, sizeof kpath, "%s/killed.h5", dir);
    snprintf(kpartial, sizeof kpartial, "%s.partial", kpath);
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        ps_store *ks;
        ps_error ke = {0};
        if (ps_store_open(&ks, kpath, &ke) == 0 && ps_store_write_table(ks, &exps[1].t, &ke) == 0) _exit(0);
        _exit(1); // no close: like a crash after the first experiment
    }
    int wst = 0;
    waitpid(pid, &wst, 0);
    TU_CHECK(WIFEXITED(wst) && WEXITSTATUS(wst) == 0 && exists(kpartial) && !exists(kpath), "killed-run child");

    // 3. inspect: complete, partial, killed, missing, not HDF5.
    char *out = NULL, *err = NULL;
    e = (ps_error){0};
    rc = capture(do_inspect, path, &e, dir, &out, &err);
    TU_CHECK(rc == 0, "inspect: %s", e.msg);
    if (out) {
        printf("---- inspect %s ----\n%s----\n", path, out);
        TU_CHECK(strstr(out, "status complete") && !strstr(out, "INCOMPLETE"), "inspect: status line");
        TU_CHECK(strstr(out, "model:     models/gpt2"), "inspect: model");
        TU_CHECK(strstr(out, "prompts: 3"), "inspect: prompt count");
        TU_CHECK(strstr(out, "'<|endoftext|>' ' 1' ' 2' ' 3' ' 4'\n"), "inspect: first prompt's tokens");
        TU_CHECK(strstr(out, "clean 3, corrupted -1"), "inspect: baseline means");
        TU_CHECK(strstr(out, "experiments: 5"), "inspect: experiment count");
        TU_CHECK(strstr(out, "shape: prompt 3 x layer 4 x pos 6"), "inspect: resid_pre shape");
        // resid_pre's largest |mean_normalized| is its last valid cell: layer 3, pos 5 (only prompt 1 reaches it).
        char want[128];
        snprintf(want, sizeof want, "layer 3 pos 5 '': %.4g", exps[0].mean_normalized[3 * T + 5]);
        TU_CHECK(strstr(out, want), "inspect: top entry '%s' not found", want);
        TU_CHECK(strstr(out, "layer 3 head 2:"), "inspect: head labels use the layer scale values (1, 3)");
        TU_CHECK(strstr(out, "pos 5 ''") || strstr(out, "pos 3 ' 3'"), "inspect: subset positions labelled");
        TU_CHECK(strstr(out, "top 5 by |mean|"), "inspect: falls back to |mean| without normalized");
    }
    TU_CHECK(err && err[0] == 0, "inspect wrote to stderr: %s", err ? err : "");
    free(out); free(err);

    e = (ps_error){0};
    rc = capture(do_inspect, ipartial, &e, dir, &out, &err);
    TU_CHECK(rc == 0 && out && strstr(out, "INCOMPLETE (status=running): the run was interrupted"),
             "inspect partial: rc=%d %s", rc, out ? out : "");
    free(out); free(err);

    e = (ps_error){0};
    rc = capture(do_inspect, kpartial, &e, dir, &out, &err);
    TU_CHECK(rc == 0 && out && strstr(out, "INCOMPLETE (status=running)") && strstr(out, "experiments: 1") &&
                 strstr(out, "layer 3 head 2:"),
             "inspect killed run's partial: rc=%d %s %s", rc, e.msg, out ? out : "");
    free(out); free(err);

    e = (ps_error){0};
    rc = capture(do_inspect, ipath, &e, dir, &out, &err);
    TU_CHECK(rc != 0 && e.code == PS_EXIT_BADINPUT && strstr(e.msg, ipath) && strstr(e.msg, ".partial exists"),
             "inspect missing file with a .partial: code %d: %s", e.code, e.msg);
    TU_CHECK(err && err[0] == 0, "HDF5 printed on stderr: %s", err ? err : "");
    printf("inspect missing: %s\n", e.msg);
    free(out); free(err);

    char junk[1024];
    snprintf(junk, sizeof junk, "%s/not_hdf5.h5", dir);
    FILE *jf = fopen(junk, "w");
    fputs("this is not HDF5\n", jf);
    fclose(jf);
    e = (ps_error){0};
    rc = capture(do_inspect, junk, &e, dir, &out, &err);
    TU_CHECK(rc != 0 && e.code == PS_EXIT_BADINPUT && strstr(e.msg, junk), "inspect junk: code %d: %s", e.code, e.msg);
    TU_CHECK(err && err[0] == 0, "HDF5 printed on stderr: %s", err ? err : "");
    printf("inspect junk: %s\n", e.msg);
    free(out); free(err);

    // 4. Errors: a parent that is a file; an experiment written twice. One line, code 1, nothing on stderr.
    char bad[4096];
    snprintf(bad, sizeof bad, "%s/sub/out.h5", junk);
    ps_store *s = NULL;
    e = (ps_error){0};
    rc = ps_store_open(&s, bad, &e);
    TU_CHECK(rc != 0 && s == NULL && e.code == PS_EXIT_RUNTIME && !strchr(e.msg, '\n'), "open under a file: %s",
             e.msg);
    printf("open under a file: %s\n", e.msg);
    char dpath[4096];
    snprintf(dpath, sizeof dpath, "%s/dup.h5", dir);
    e = (ps_error){0};
    rc = ps_store_open(&s, dpath, &e);
    TU_CHECK(rc == 0, "open dup: %s", e.msg);
    if (rc == 0) {
        TU_CHECK(ps_store_write_table(s, &exps[1].t, &e) == 0, "first write: %s", e.msg);
        TU_CHECK(ps_store_write_table(s, &exps[1].t, &e) != 0 && strstr(e.msg, "written twice"),
                 "duplicate experiment: %s", e.msg);
        printf("duplicate: %s\n", e.msg);
        ps_store_close(s, 0, NULL);
    }
    TU_CHECK(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) == 0, "objects left open after error paths");

    // 5. h5py (what users read with): dims labels and scales as h5py sees them.
    if (tu_have_python("h5py")) {
        char cmd[8192];
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 - '%s' <<'EOF'\n"
                 "import sys, h5py, numpy as np\n"
                 "f = h5py.File(sys.argv[1], 'r')\n"
                 "v = f['results/resid_pre/values']\n"
                 "assert [d.label for d in v.dims] == ['prompt', 'layer', 'pos'], [d.label for d in v.dims]\n"
                 "assert v.dims[1].label == 'layer'\n"
                 "assert list(v.dims[1][0][()]) == [0, 1, 2, 3]\n"
                 "assert [d.label for d in f['results/z_per_pos/mean'].dims] == ['layer', 'pos', 'head']\n"
                 "assert list(f['results/attn_head_out/values'].dims[1][0][()]) == [1, 3]\n"
                 "toks = v.dims[2]['pos_token'].asstr()[()]\n"
                 "assert list(toks[:2]) == ['<|endoftext|>', ' 1'], toks\n"
                 "assert f['run'].attrs['status'] == 'complete'\n"
                 "assert f['run'].attrs['bos_id'] == 50256\n"
                 "assert f['prompts/clean_tokens'].asstr()[2, 3] == '\\ufffd\\ufffd'\n"
                 "assert np.isnan(v[0, 0, 5]) and abs(v[1, 0, 5] - 0.75) < 1e-6, v[:, 0, 5]\n"
                 "assert f['run/config'].asstr()[()].startswith('{')\n"
                 "print('h5py check ok:', [d.label for d in v.dims], list(toks))\n"
                 "EOF",
                 path);
        TU_CHECK(tu_sh_status(cmd) == 0, "h5py check failed");
    } else {
        printf("SKIP h5py check: /usr/bin/python3 has no h5py\n");
    }

    // 6. plot.py: PNGs for every experiment + baseline; refuses the partial file unless --partial.
    if (tu_have_python("h5py, numpy, matplotlib")) {
        char cmd[8192], png[4096];
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s' -o '%s/plots' > '%s/plot.log' 2>&1",
                 tu_src("experiments/plot.py"), path, dir, dir);
        int st = tu_sh_status(cmd);
        TU_CHECK(st == 0, "plot.py exit %d (log %s/plot.log)", st, dir);
        const char *names[] = {"baseline", "resid_pre", "attn_head_out", "mlp_out_some_pos", "z_per_pos",
                               "mlp_post_neurons"};
        for (int i = 0; i < 6; i++) {
            snprintf(png, sizeof png, "%s/plots/%s.png", dir, names[i]);
            long sz = file_size(png);
            TU_CHECK(sz > 1000, "%s: size %ld", png, sz);
            printf("plot %-20s %ld bytes\n", names[i], sz);
        }
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s' -o '%s/pplots' > '%s/plot2.log' 2>&1",
                 tu_src("experiments/plot.py"), ipartial, dir, dir);
        st = tu_sh_status(cmd);
        snprintf(png, sizeof png, "%s/plot2.log", dir);
        char *log = ps_read_file(png, NULL, NULL);
        TU_CHECK(st == 2 && log && strstr(log, "not 'complete'") && strchr(log, '\n') == log + strlen(log) - 1,
                 "plot.py on a partial file: exit %d, output %s", st, log ? log : "");
        printf("plot.py partial: exit %d: %s", st, log ? log : "\n");
        free(log);
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s' --partial --raw -o '%s/pplots' > '%s/plot3.log' 2>&1",
                 tu_src("experiments/plot.py"), ipartial, dir, dir);
        TU_CHECK(tu_sh_status(cmd) == 0, "plot.py --partial failed");
        snprintf(png, sizeof png, "%s/pplots/resid_pre.png", dir);
        TU_CHECK(file_size(png) > 1000, "plot.py --partial: no resid_pre.png");
    } else {
        printf("SKIP plot.py check: /usr/bin/python3 lacks h5py/numpy/matplotlib\n");
    }

    for (int i = 0; i < NEXP; i++) free_exp(&exps[i]);
    if (getenv("PS_KEEP_TMP")) printf("kept %s\n", dir);
    else {
        char cmd[4200];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    H5close(); // frees HDF5's global caches so LeakSanitizer sees only our allocations
    return tu_done("store");
}
