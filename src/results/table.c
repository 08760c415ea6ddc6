// The result table every producer fills (ps_table.h) and the baseline metrics its derived datasets are
// normalized by (ps_results.h): allocation, attributes, means and the shard check, with no per-kind code.
#include "ps_results.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// Baseline

const char *const ps_baseline_names[PS_BASELINE_COLS] = {
    "clean_metric",       "corrupted_metric",       "clean_answer_logit",
    "clean_wrong_logit", "corrupted_answer_logit", "corrupted_wrong_logit",
};

int ps_baseline_init(ps_baseline *b, int64_t n, ps_error *e) {
    memset(b, 0, sizeof *b);
    float *blk = malloc((size_t)(PS_BASELINE_COLS * (n ? n : 1)) * sizeof(float));
    if (!blk) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld prompts' baselines", (long long)n);
    for (int64_t i = 0; i < PS_BASELINE_COLS * n; i++) blk[i] = NAN;
    b->n = n;
    b->clean = blk; b->corrupted = blk + n;
    b->clean_answer_logit = blk + 2 * n; b->clean_wrong_logit = blk + 3 * n;
    b->corrupted_answer_logit = blk + 4 * n; b->corrupted_wrong_logit = blk + 5 * n;
    return 0;
}

void ps_baseline_free(ps_baseline *b) {
    if (!b) return;
    free(b->clean);
    memset(b, 0, sizeof *b);
}

void ps_baseline_columns(const ps_baseline *b, float *col[PS_BASELINE_COLS]) {
    col[0] = b->clean; col[1] = b->corrupted;
    col[2] = b->clean_answer_logit; col[3] = b->clean_wrong_logit;
    col[4] = b->corrupted_answer_logit; col[5] = b->corrupted_wrong_logit;
}

// ---------------------------------------------------------------------------------------------
// Tables

static float *nan_floats(int64_t n) {
    float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof(float));
    for (int64_t i = 0; x && i < n; i++) x[i] = NAN;
    return x;
}

static int axis_copy(ps_axis *dst, const ps_axis *src) {
    memset(dst, 0, sizeof *dst);
    dst->len = src->len;
    dst->name = strdup(src->name ? src->name : "");
    dst->value = malloc((size_t)(src->len > 0 ? src->len : 1) * sizeof(int64_t));
    if (!dst->name || !dst->value) return -1;
    for (int64_t i = 0; i < src->len; i++) dst->value[i] = src->value ? src->value[i] : i;
    if (!src->label) return 0;
    dst->label = calloc((size_t)(src->len > 0 ? src->len : 1), sizeof(char *));
    if (!dst->label) return -1;
    for (int64_t i = 0; i < src->len; i++)
        if (src->label[i] && !(dst->label[i] = strdup(src->label[i]))) return -1;
    return 0;
}

void ps_axis_free(ps_axis *a) {
    for (int64_t i = 0; a->label && i < a->len; i++) free(a->label[i]);
    free(a->label);
    free(a->name);
    free(a->value);
    memset(a, 0, sizeof *a);
}

int ps_table_init(ps_table *t, const char *name, const char *kind, int per_prompt, int64_t n_rows, int n_axes,
                  const ps_axis *axes, int metric_valued, ps_error *e) {
    memset(t, 0, sizeof *t);
    if (n_axes < 0 || n_axes > PS_TABLE_MAX_AXES)
        return ps_fail(e, PS_EXIT_RUNTIME, "table %s: %d axes (at most %d)", name, n_axes, PS_TABLE_MAX_AXES);
    t->per_prompt = per_prompt ? 1 : 0;
    t->n_rows = per_prompt ? n_rows : 1;
    t->metric_valued = metric_valued && per_prompt;
    t->name = strdup(name);
    t->kind = strdup(kind);
    int bad = !t->name || !t->kind;
    t->n_cells = 1;
    for (int a = 0; a < n_axes && !bad; a++) {
        t->n_axes = a + 1;
        bad = axis_copy(&t->axes[a], &axes[a]) != 0;
        t->n_cells *= axes[a].len;
    }
    const int64_t n = t->n_rows * t->n_cells;
    if (!bad) bad = !(t->values = nan_floats(n));
    if (!bad && t->per_prompt) bad = !(t->mean = nan_floats(t->n_cells));
    if (!bad && t->metric_valued)
        bad = !(t->normalized = nan_floats(n)) || !(t->mean_normalized = nan_floats(t->n_cells));
    if (bad) {
        ps_table_free(t);
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the results of %s", name);
    }
    return 0;
}

void ps_table_free(ps_table *t) {
    if (!t) return;
    for (int a = 0; a < t->n_axes; a++) ps_axis_free(&t->axes[a]);
    for (int i = 0; i < t->n_attrs; i++) {
        free(t->attrs[i].key);
        free(t->attrs[i].s);
    }
    free(t->name); free(t->kind);
    free(t->values); free(t->normalized); free(t->mean); free(t->mean_normalized);
    memset(t, 0, sizeof *t);
}

// The slot for key, of this type: its existing entry (value released) or a new one.
static ps_attr *attr_slot(ps_table *t, const char *key, ps_attr_type type, ps_error *e) {
    for (int i = 0; i < t->n_attrs; i++)
        if (!strcmp(t->attrs[i].key, key)) {
            free(t->attrs[i].s);
            t->attrs[i].s = NULL;
            t->attrs[i].type = type;
            return &t->attrs[i];
        }
    if (t->n_attrs == PS_TABLE_MAX_ATTRS) {
        ps_fail(e, PS_EXIT_RUNTIME, "table %s: attribute %s: at most %d attributes", t->name, key, PS_TABLE_MAX_ATTRS);
        return NULL;
    }
    ps_attr *a = &t->attrs[t->n_attrs];
    memset(a, 0, sizeof *a);
    if (!(a->key = strdup(key))) {
        ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
        return NULL;
    }
    a->type = type;
    t->n_attrs++;
    return a;
}

int ps_table_attr_str(ps_table *t, const char *key, const char *val, ps_error *e) {
    ps_attr *a = attr_slot(t, key, PS_ATTR_STR, e);
    if (!a) return -1;
    if (!(a->s = strdup(val ? val : ""))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    return 0;
}

int ps_table_attr_i64(ps_table *t, const char *key, int64_t val, ps_error *e) {
    ps_attr *a = attr_slot(t, key, PS_ATTR_I64, e);
    if (a) a->i = val;
    return a ? 0 : -1;
}

int ps_table_attr_f64(ps_table *t, const char *key, double val, ps_error *e) {
    ps_attr *a = attr_slot(t, key, PS_ATTR_F64, e);
    if (a) a->f = val;
    return a ? 0 : -1;
}

const ps_attr *ps_table_attr(const ps_table *t, const char *key) {
    for (int i = 0; i < t->n_attrs; i++)
        if (!strcmp(t->attrs[i].key, key)) return &t->attrs[i];
    return NULL;
}

int ps_table_axis(const ps_table *t, const char *name) {
    for (int a = 0; a < t->n_axes; a++)
        if (!strcmp(t->axes[a].name, name)) return a;
    return -1;
}

void ps_cell_means(const float *values, const float *clean, const float *corrupted, int64_t n_rows, int64_t n_cells,
                   float *mean, float *mean_normalized) {
    const int norm = mean_normalized && clean && corrupted;
    for (int64_t cell = 0; cell < n_cells; cell++) {
        double sum = 0, sum_c = 0, sum_x = 0;
        int64_t cnt = 0;
        for (int64_t i = 0; i < n_rows; i++) {
            const float v = values[i * n_cells + cell];
            if (isnan(v)) continue;
            sum += v;
            if (norm) { sum_c += clean[i]; sum_x += corrupted[i]; }
            cnt++;
        }
        mean[cell] = cnt ? (float)(sum / (double)cnt) : NAN;
        if (norm)
            mean_normalized[cell] =
                cnt ? (float)((sum / (double)cnt - sum_x / (double)cnt) / (sum_c / (double)cnt - sum_x / (double)cnt)) : NAN;
    }
}

void ps_table_finish(ps_table *t, const float *clean, const float *corrupted) {
    if (!t->per_prompt) return;
    const int norm = t->metric_valued && clean && corrupted;
    if (norm && t->normalized)
        for (int64_t i = 0; i < t->n_rows; i++) {
            // (x - corrupted) in float, divided in double: the arithmetic every earlier file was written with.
            const double den = (double)clean[i] - (double)corrupted[i];
            for (int64_t cell = 0; cell < t->n_cells; cell++) {
                const float v = t->values[i * t->n_cells + cell];
                t->normalized[i * t->n_cells + cell] = isnan(v) ? NAN : (float)((v - corrupted[i]) / den);
            }
        }
    if (t->mean)
        ps_cell_means(t->values, clean, corrupted, t->n_rows, t->n_cells, t->mean, norm ? t->mean_normalized : NULL);
}

void ps_table_add_counters(ps_table *dst, const ps_table *src) {
    dst->patches_run += src->patches_run;
    dst->patches_skipped += src->patches_skipped;
    dst->flops += src->flops;
}

int ps_tables_check_shardable(const ps_table *tables, int64_t n_tables, ps_error *e) {
    for (int64_t i = 0; i < n_tables; i++)
        if (!tables[i].per_prompt && strcmp(tables[i].kind, "reference_means") != 0)   // those are alike in every shard
            return ps_fail(e, PS_EXIT_BADINPUT,
                           "%s (kind %s): its values are not per prompt, so --shard cannot split it by prompt; run it without --shard",
                           tables[i].name, tables[i].kind);
    return 0;
}
