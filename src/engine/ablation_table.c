// Ablation results and the circuit search's trace as result tables (ps_table.h), the one form the store,
// journal, merge and inspect read: per-prompt values over a component axis, their scores, and the trace
// over a step axis.
#include "ps_ablation.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// An axis of n cells valued 0..n-1 with the given labels (borrowed; ps_table_init copies them).
static int index_axis(ps_axis *ax, const char *name, int64_t n, char **labels, ps_error *e) {
    ax->name = (char *)name;
    ax->len = n;
    ax->label = labels;
    ax->value = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (!ax->value) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    for (int64_t i = 0; i < n; i++) ax->value[i] = i;
    return 0;
}

int ps_ablation_tables(const ps_ablator *a, const char *name, const char *const *labels, int64_t n_sets, const float *values,
                       ps_table *vt, ps_table *st, ps_error *e) {
    memset(vt, 0, sizeof *vt);
    memset(st, 0, sizeof *st);
    const int64_t n = a->ps->n;
    static const char *score_names[3] = {"mean", "circuit_score", "faithfulness"};
    ps_axis ax[2] = {{0}};
    char sname[300];
    snprintf(sname, sizeof sname, "%s.scores", name);
    int rc = index_axis(&ax[0], "component", n_sets, (char **)labels, e);
    if (rc == 0) rc = index_axis(&ax[1], "score", 3, (char **)score_names, e);
    if (rc == 0) rc = ps_table_init(vt, name, "ablation", 1, n, 1, ax, 0, e);
    if (rc == 0) rc = ps_table_init(st, sname, "ablation", 0, 1, 2, ax, 0, e);
    free(ax[0].value); free(ax[1].value);
    if (rc != 0) { ps_table_free(vt); ps_table_free(st); return -1; }
    for (int64_t s = 0; s < n_sets; s++) {
        double sum = 0;
        for (int64_t i = 0; i < n; i++) { vt->values[i * n_sets + s] = values[s * n + i]; sum += values[s * n + i]; }
        vt->mean[s] = (float)(n ? sum / (double)n : 0);
        const ps_abl_scores sc = ps_abl_scores_of(a, values + s * n);
        st->values[s * 3 + 0] = (float)sc.mean;
        st->values[s * 3 + 1] = (float)sc.circuit_score;
        st->values[s * 3 + 2] = (float)sc.faithfulness;
    }
    vt->patches_run = st->patches_run = a->stats.rows_run;
    vt->flops = a->stats.flops;
    const char *grp = a->method == PS_ABL_MEAN && a->means ? ps_mean_group_name(a->means->group) : "";
    for (int k = 0; k < 2 && rc == 0; k++) {
        ps_table *t = k ? st : vt;
        if (ps_table_attr_str(t, "method", ps_abl_method_name(a->method), e) || ps_table_attr_str(t, "group", grp, e) ||
            ps_table_attr_str(t, "metric", ps_metric_name(a->metric), e) || ps_table_attr_f64(t, "full_mean", a->full_mean, e) ||
            ps_table_attr_str(t, "circuit_score", "100 x mean metric (ablated) / mean metric (full model), seqcont", e) ||
            ps_table_attr_str(t, "faithfulness", "mean metric (ablated) / mean metric (full model), IOI F(C)/F(M)", e))
            rc = -1;
        if (rc == 0 && a->method == PS_ABL_RESAMPLE) rc = ps_table_attr_i64(t, "seed", (int64_t)a->seed, e);
    }
    if (rc != 0) { ps_table_free(vt); ps_table_free(st); }
    return rc;
}

int ps_search_table(const ps_search_result *r, const ps_search_opts *o, const ps_model_config *mc, const char *name, ps_table *t,
                    ps_error *e) {
    memset(t, 0, sizeof *t);
    static const char *fields[4] = {"pass", "score_before", "score", "removed"};
    char **labels = calloc((size_t)(r->n_steps ? r->n_steps : 1), sizeof *labels);
    ps_axis ax[2] = {{0}};
    int rc = labels ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    for (int64_t i = 0; rc == 0 && i < r->n_steps; i++) {
        labels[i] = malloc(32);
        if (!labels[i]) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
        else ps_component_label(&r->steps[i].cand, labels[i], 32);
    }
    if (rc == 0) rc = index_axis(&ax[0], "step", r->n_steps, labels, e);
    if (rc == 0) rc = index_axis(&ax[1], "field", 4, (char **)fields, e);
    if (rc == 0) rc = ps_table_init(t, name, "circuit_search", 0, 1, 2, ax, 0, e);
    for (int64_t i = 0; labels && i < r->n_steps; i++) free(labels[i]);
    free(labels); free(ax[0].value); free(ax[1].value);
    if (rc != 0) return -1;
    for (int64_t i = 0; i < r->n_steps; i++) {
        float *v = t->values + i * 4;
        v[0] = (float)r->steps[i].pass;
        v[1] = (float)r->steps[i].score_before;
        v[2] = (float)r->steps[i].score;
        v[3] = (float)r->steps[i].removed;
    }
    // The final circuit as one string: heads then MLP layers.
    size_t cap = (size_t)(mc->n_layers * (mc->n_heads + 1)) * 16 + 1, len = 0;
    char *circ = calloc(cap, 1);
    if (!circ) { ps_table_free(t); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); }
    for (int64_t l = 0; l < mc->n_layers; l++)
        for (int64_t h = 0; h < mc->n_heads; h++)
            if (r->head_kept[l * mc->n_heads + h]) len += (size_t)snprintf(circ + len, cap - len, "%sh%lld.%lld", len ? " " : "", (long long)l, (long long)h);
    for (int64_t l = 0; l < mc->n_layers; l++)
        if (r->mlp_kept[l]) len += (size_t)snprintf(circ + len, cap - len, "%smlp%lld", len ? " " : "", (long long)l);
    // Why the passes ended; a cycle (seqcont's loop would never end) names the pass the next one would repeat.
    char stopped[96];
    if (r->cycle_from >= 0)
        snprintf(stopped, sizeof stopped, "cycle: pass %lld would repeat pass %lld", (long long)r->n_passes, (long long)r->cycle_from);
    else
        snprintf(stopped, sizeof stopped, "%s", o->one_iter ? "one pass each" : "a pass changed nothing");
    rc = ps_table_attr_f64(t, "threshold", o->threshold, e) || ps_table_attr_str(t, "circuit", circ, e) ||
         ps_table_attr_f64(t, "final_score", r->final_score, e) || ps_table_attr_i64(t, "passes", r->n_passes, e) ||
         ps_table_attr_i64(t, "candidates_scored", r->candidates_scored, e) ||
         ps_table_attr_i64(t, "candidates_reused", r->candidates_reused, e) ||
         ps_table_attr_str(t, "stopped", stopped, e) ||
         ps_table_attr_str(t, "mlp_means", o->mlp_means_under_heads ? "under_head_ablation" : "clean", e) ||
         ps_table_attr_str(t, "rule", "remove when 100 - score < threshold; backward L-1..0 (MLP, heads), forward 0..L-1 (heads, MLP)", e)
             ? -1 : 0;
    free(circ);
    if (rc != 0) ps_table_free(t);
    return rc;
}
