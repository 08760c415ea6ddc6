// Attention patterns of chosen heads at chosen query positions, read from a prompt's cache into a table
// (layer x head x query x key), for the papers' pattern figures.
#include "ps_analysis.h"

#include <math.h>
#include <stdlib.h>

static int64_t *list_or_all(const int64_t *given, int64_t n, int64_t all, int64_t *len) {
    *len = given ? n : all;
    int64_t *v = malloc((size_t)(*len ? *len : 1) * sizeof *v);
    if (v)
        for (int64_t i = 0; i < *len; i++) v[i] = given ? given[i] : i;
    return v;
}

int ps_attention_table_init(ps_table *t, const char *name, const ps_model_config *mc, int64_t n_rows,
                            const int64_t *layers, int64_t n_layers, const int64_t *heads, int64_t n_heads,
                            const int64_t *queries, char *const *query_label, int64_t n_queries, int64_t T_max, ps_error *e) {
    int64_t nl, nh, nq, nk;
    int64_t *lv = list_or_all(layers, n_layers, mc->n_layers, &nl), *hv = list_or_all(heads, n_heads, mc->n_heads, &nh);
    int64_t *qv = list_or_all(queries, n_queries, T_max, &nq), *kv = list_or_all(NULL, 0, T_max, &nk);
    int rc = -1;
    if (!lv || !hv || !qv || !kv) { ps_fail(e, PS_EXIT_RUNTIME, "attention %s: out of memory", name); goto done; }
    for (int64_t i = 0; i < nl; i++)
        if (lv[i] < 0 || lv[i] >= mc->n_layers) { ps_fail(e, PS_EXIT_BADINPUT, "attention %s: layer %lld outside [0, %lld)", name, (long long)lv[i], (long long)mc->n_layers); goto done; }
    for (int64_t i = 0; i < nh; i++)
        if (hv[i] < 0 || hv[i] >= mc->n_heads) { ps_fail(e, PS_EXIT_BADINPUT, "attention %s: head %lld outside [0, %lld)", name, (long long)hv[i], (long long)mc->n_heads); goto done; }
    ps_axis axes[4] = {{.name = "layer", .len = nl, .value = lv}, {.name = "head", .len = nh, .value = hv},
                       {.name = "query", .len = nq, .value = qv, .label = queries ? (char **)query_label : NULL}, {.name = "pos", .len = nk, .value = kv}};
    rc = ps_table_init(t, name, "attention", 1, n_rows, 4, axes, 0, e);
done:
    free(lv);
    free(hv);
    free(qv);
    free(kv);
    return rc;
}

void ps_attention_prompt(const ps_table *t, const ps_model_config *mc, const ps_cache *c, const int64_t *query_pos, float *out) {
    const ps_axis *al = &t->axes[0], *ah = &t->axes[1], *aq = &t->axes[2], *ak = &t->axes[3];
    const int64_t T = c->T, H = mc->n_heads;
    for (int64_t i = 0; i < t->n_cells; i++) out[i] = NAN;
    if (!c->pattern) return;
    for (int64_t li = 0; li < al->len; li++)
        for (int64_t hi = 0; hi < ah->len; hi++)
            for (int64_t qi = 0; qi < aq->len; qi++) {
                int64_t q = query_pos[qi];
                if (q < 0 || q >= T) continue;
                // pattern: (L, H, T, T), the query's row of keys.
                const float *row = c->pattern + ((al->value[li] * H + ah->value[hi]) * T + q) * T;
                float *o = out + ((li * ah->len + hi) * aq->len + qi) * ak->len;
                for (int64_t k = 0; k < ak->len && k < T; k++) o[k] = row[k];
            }
}

// ---- Head detectors (ARENA) --------------------------------------------------------------------------

static const char *const score_names[PS_HEAD_SCORES] = {"current", "previous", "first", "duplicate", "induction"};

int ps_head_scores_table_init(ps_table *t, const char *name, const ps_model_config *mc, ps_error *e) {
    int64_t nl, nh, sv[PS_HEAD_SCORES];
    int64_t *lv = list_or_all(NULL, 0, mc->n_layers, &nl), *hv = list_or_all(NULL, 0, mc->n_heads, &nh);
    for (int k = 0; k < PS_HEAD_SCORES; k++) sv[k] = k;
    int rc = -1;
    if (!lv || !hv) ps_fail(e, PS_EXIT_RUNTIME, "head_scores %s: out of memory", name);
    else {
        ps_axis axes[3] = {{.name = "layer", .len = nl, .value = lv}, {.name = "head", .len = nh, .value = hv},
                           {.name = "score", .len = PS_HEAD_SCORES, .value = sv, .label = (char **)score_names}};
        rc = ps_table_init(t, name, "head_scores", 0, 1, 3, axes, 0, e);
    }
    free(lv);
    free(hv);
    return rc;
}

// Mean of pattern[q, q + off] over the queries that have that key (a diagonal of the (T, T) pattern).
static double diag_mean(const float *pat, int64_t T, int64_t off) {
    double s = 0;
    int64_t n = 0;
    for (int64_t q = 0; q < T; q++)
        if (q + off >= 0 && q + off < T) { s += pat[q * T + q + off]; n++; }
    return n ? s / (double)n : NAN;
}

void ps_head_scores_add(const ps_model_config *mc, const ps_cache *c, int64_t N, double *acc) {
    const int64_t T = c->T, L = mc->n_layers, H = mc->n_heads;
    for (int64_t l = 0; l < L; l++)
        for (int64_t h = 0; h < H; h++) {
            const float *pat = c->pattern + (l * H + h) * T * T;   // (T, T): query rows, key columns
            double *a = acc + (l * H + h) * PS_HEAD_SCORES, first = 0;
            for (int64_t q = 0; q < T; q++) first += pat[q * T];
            a[0] += diag_mean(pat, T, 0);
            a[1] += diag_mean(pat, T, -1);
            a[2] += first / (double)T;
            a[3] += diag_mean(pat, T, -N);
            a[4] += diag_mean(pat, T, 1 - N);
        }
}
