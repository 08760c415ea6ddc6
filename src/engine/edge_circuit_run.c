// Kind "edge_circuit" (ps_producer.h, ps_circuit.h): circuits of EAP-IG's graph, given as edge names or chosen
// from an edge_attribution experiment's mean scores or an EAP-IG graph file's (top_n or greedy, one circuit per count,
// or threshold), pruned, and
// evaluated per prompt, a prompt's circuits as rows of one batch.
// It runs once, after the last chunk, so the scores it chooses from are every prompt's mean (--shard refuses
// tables that are not per prompt, so every prompt is this run's); it reruns each prompt's clean and corrupted
// baselines for their caches. Table: one row, cells (circuit, item, value): item = the prompt ("prompt" names
// per-prompt tables' leading axis), value = the metric, the faithfulness (metric - corrupted) / (clean -
// corrupted) of the run's baselines, and the circuit's kept edge count.
#include "engine_internal.h"
#include "ps_ablation.h"
#include "ps_circuit.h"
#include "ps_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ps_graph graph_of(const ps_model_config *mc) {
    ps_graph g;
    ps_graph_init(&g, mc, 1);
    return g;
}

// The experiment's reference prompts (with "with": "mean"), or NULL.
static const ps_prompt_set *ref_of(const ps_prompt_set *ps, const ps_product *p) {
    return ps->ref && p->idx < ps->n_ref && ps->ref[p->idx].n > 0 ? &ps->ref[p->idx] : NULL;
}

// Whether the experiment chooses its edges from scores (an edge_attribution experiment or a file).
static int scored(const ps_experiment *ex) { return ex->scores_from || ex->scores_path; }

// Whether name is "a<l>.h<h>->m<l>" (*layer = l): a real pair of nodes, but no edge of a parallel block, whose MLP
// reads the stream entering the layer, not that layer's heads.
static int own_mlp_edge(const char *name, long long *layer) {
    long long la, h;
    int end = 0;
    return sscanf(name, "a%lld.h%lld->m%lld%n", &la, &h, layer, &end) == 3 && !name[end] && la == *layer;
}

// The scores of ex->scores_path (EAP-IG's Graph.to_json) into mean (n_sources x n_dests), NaN for the edges it
// does not name (never chosen). Bad input when its cfg or an edge name does not fit the model's graph.
static int file_scores(const ps_experiment *ex, int64_t idx, const ps_graph *g, float *mean, ps_error *e) {
    ps_edge_scores es;
    if (ps_edge_scores_read(ex->scores_path, &es, e) != 0) return -1;
    int rc = -1;
    if (g->n_kv_heads != g->n_heads) {
        ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): scores_file: EAP-IG's graph keeps k and v per query head; this model's "
                "grouped-query attention has them per key/value head (use scores_from)", (long long)idx, ex->name);
        goto done;
    }
    if ((es.n_layers >= 0 && es.n_layers != g->n_layers) || (es.n_heads >= 0 && es.n_heads != g->n_heads)) {
        ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): scores_file %s: cfg has %lld layers x %lld heads, the model %lld x %lld",
                (long long)idx, ex->name, ex->scores_path, (long long)es.n_layers, (long long)es.n_heads, (long long)g->n_layers,
                (long long)g->n_heads);
        goto done;
    }
    // Graphs of the two block layouts name the same nodes and differ only in the edges a<l>.h<h> -> m<l> (EAP-IG's
    // from_model): every edge of a parallel graph is one of a sequential model's too, so only the cfg tells.
    if (es.parallel >= 0 && es.parallel != g->parallel) {
        ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): scores_file %s: cfg.parallel_attn_mlp: %s, but this model's %s", (long long)idx,
                ex->name, ex->scores_path,
                es.parallel ? "true (a graph of parallel attention and MLP, without the edges a<l>.h<h>->m<l>)"
                            : "false (a graph of sequential blocks, with the edges a<l>.h<h>->m<l>)",
                g->parallel ? "attention and MLP are parallel (use_parallel_residual)" : "blocks are sequential");
        goto done;
    }
    for (int64_t i = 0; mean && i < g->n_sources * g->n_dests; i++) mean[i] = NAN;
    for (int64_t i = 0; i < es.n; i++) {
        int64_t s, d;
        if (ps_circuit_edge_by_name(g, es.names[i], &s, &d) != 0) {
            char name[120];
            ps_text_escape(es.names[i], name, sizeof name, 80);
            long long l;
            if (g->parallel && own_mlp_edge(es.names[i], &l))
                ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): scores_file %s: edges.%s: no edge of this model's graph: its attention "
                        "and MLP are parallel (use_parallel_residual), so m%lld reads the stream entering layer %lld, not that layer's heads",
                        (long long)idx, ex->name, ex->scores_path, name, l, l);
            else
                ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): scores_file %s: edges.%s: no edge of this model's graph", (long long)idx,
                        ex->name, ex->scores_path, name);
            goto done;
        }
        if (mean) mean[s * g->n_dests + d] = (float)es.score[i];
    }
    rc = 0;
done:
    ps_edge_scores_free(&es);
    return rc;
}

// Circuits of an experiment: one per top_n count, else one.
static int64_t n_circuits(const ps_experiment *ex) { return ex->top_ns ? ex->n_top_ns : 1; }
enum { V_METRIC = 0, V_FAITH, V_KEPT, N_VALUES };

static int ec_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    const ps_graph g = graph_of(mc);
    const int64_t K = n_circuits(ex);
    if (!scored(ex) == !ex->edge_names)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: give either edges or scores_from or scores_file", ex->name);
    if (ex->scores_path && file_scores(ex, p->idx, &g, NULL, e) != 0) return -1;
    for (int64_t i = 0; i < ex->n_edge_names; i++) {
        int64_t s, d;
        if (ps_circuit_edge_by_name(&g, ex->edge_names[i], &s, &d) == 0) continue;
        char name[120];
        ps_text_escape(ex->edge_names[i], name, sizeof name, 80);
        long long lm;
        if (g.parallel && own_mlp_edge(ex->edge_names[i], &lm))
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): edges[%lld]: \"%s\" is no edge of this model's graph: its attention and "
                           "MLP are parallel (use_parallel_residual), so m%lld reads the stream entering layer %lld, not that layer's heads",
                           (long long)p->idx, ex->name, (long long)i, name, lm, lm);
        return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): edges[%lld]: \"%s\" is no edge of the graph (e.g. \"a0.h1->a1.h0<q>\", "
                       "\"m0->logits\")", (long long)p->idx, ex->name, (long long)i, name);
    }
    const ps_prompt_set *ref = ref_of(ps, p);
    if (ex->edge_with == PS_EDGE_MEAN && !ref)
        return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): reference: required with \"with\": \"mean\"", (long long)p->idx, ex->name);
    // Means per position need the prompts and the reference prompts of one length (checked before any run).
    for (int64_t i = 0; ref && ex->abl_group == PS_GROUP_PER_POSITION && i < ps->n + ref->n; i++) {
        const int64_t T = i < ps->n ? ps->p[i].T : ref->p[i - ps->n].T;
        if (T != ref->p[0].T)
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): reference: per_position means need one length: reference item 0 has %lld "
                           "tokens, %s item %lld has %lld (\"grouping\": \"all_positions\" takes any)", (long long)p->idx, ex->name, (long long)ref->p[0].T, i < ps->n ? "dataset" : "reference",
                           (long long)(i < ps->n ? i : i - ps->n), (long long)T);
    }
    // Axis circuit: the edges asked for (top_n or greedy, the listed count, -1 for a threshold), labelled top<n>,
    // greedy<n>, listed, threshold.
    int64_t *cv = malloc((size_t)K * sizeof(int64_t)), *pv = malloc((size_t)ps->n * sizeof(int64_t)), vv[N_VALUES] = {0, 1, 2};
    char **cl = calloc((size_t)K, sizeof *cl);
    int rc = -1;
    if (!cv || !pv || !cl) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); goto done; }
    for (int64_t k = 0; k < K; k++) {
        char buf[48];
        cv[k] = scored(ex) ? (ex->has_threshold ? -1 : ex->top_ns ? ex->top_ns[k] : ex->top_n) : ex->n_edge_names;
        if (!scored(ex)) snprintf(buf, sizeof buf, "listed");
        else if (ex->has_threshold) snprintf(buf, sizeof buf, "threshold");
        else snprintf(buf, sizeof buf, "%s%lld", ex->greedy ? "greedy" : "top", (long long)cv[k]);
        if (!(cl[k] = strdup(buf))) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); goto done; }
    }
    for (int64_t i = 0; i < ps->n; i++) pv[i] = i;
    const char *vl[N_VALUES] = {"metric", "faithfulness", "n_edges_kept"};
    ps_axis axes[3] = {{.name = "circuit", .len = K, .value = cv, .label = cl},
                       {.name = "item", .len = ps->n, .value = pv},
                       {.name = "value", .len = N_VALUES, .value = vv, .label = (char **)vl}};
    if (ps_table_init(p->t, ex->name, "edge_circuit", 0, 1, 3, axes, 0, e) != 0) goto done;
    if ((K == 1 && ps_table_attr_i64(p->t, "n_edges_requested", cv[0], e) != 0) ||
        (ex->scores_from && ps_table_attr_str(p->t, "scores_from", ex->scores_from, e) != 0) ||
        (ex->scores_path && ps_table_attr_str(p->t, "scores_file", ex->scores_path, e) != 0) ||
        (scored(ex) && ps_table_attr_str(p->t, "selection", ex->has_threshold ? "threshold" : ex->greedy ? "greedy" : "top_n", e) != 0) ||
        (scored(ex) && ps_table_attr_i64(p->t, "absolute", !ex->signed_scores, e) != 0) ||
        (ex->has_threshold && ps_table_attr_f64(p->t, "threshold", ex->threshold, e) != 0) ||
        ps_table_attr_str(p->t, "faithfulness", "(metric - corrupted) / (clean - corrupted), the run's baselines", e) != 0 ||
        ps_table_attr_str(p->t, "with", ex->edge_with == PS_EDGE_ZERO ? "zero" : ex->edge_with == PS_EDGE_MEAN ? "mean" : "corrupted", e) != 0 ||
        (ref && (ps_table_attr_str(p->t, "grouping", ps_mean_group_name((ps_mean_group)ex->abl_group), e) != 0 ||
                 ps_table_attr_str(p->t, "reference", ex->ref_path ? ex->ref_path : "", e) != 0)))
        goto done;
    rc = 0;
done:
    for (int64_t k = 0; cl && k < K; k++) free(cl[k]);
    free(cl);
    free(cv);
    free(pv);
    return rc;
}

// The mean score over the prompts that have one (EAP-IG's scores are the mean over its data) of the
// edge_attribution experiment ex->scores_from, into mean (n_sources x n_dests).
static int mean_scores(ps_producer_ctx *cx, const ps_experiment *ex, int64_t N, float *mean, ps_error *e) {
    const ps_table *t = NULL;
    for (int64_t k = 0; k < cx->rr->n_products; k++)
        if (!strcmp(cx->rr->products[k].ex->name, ex->scores_from)) t = cx->rr->products[k].t;
    if (!t || strcmp(t->kind, "edge_attribution") != 0 || t->n_cells != N)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: scores_from: \"%s\" is no edge_attribution experiment of this run", ex->name,
                       ex->scores_from);
    for (int64_t c = 0; c < N; c++) {
        double s = 0;
        int64_t n = 0;
        for (int64_t r = 0; r < t->n_rows; r++) {
            const float v = t->values[r * N + c];
            if (!isnan(v)) { s += v; n++; }
        }
        mean[c] = n ? (float)(s / (double)n) : NAN;
    }
    return 0;
}

// Circuit k of experiment ex (before pruning) into in_graph; mean: the scores (scores_from or scores_file).
static int choose(const ps_experiment *ex, const ps_graph *g, int64_t k, const float *mean, uint8_t *in_graph, ps_error *e) {
    memset(in_graph, 0, (size_t)(g->n_sources * g->n_dests));
    for (int64_t i = 0; i < ex->n_edge_names; i++) {
        int64_t s, d;
        if (ps_circuit_edge_by_name(g, ex->edge_names[i], &s, &d) == 0) in_graph[s * g->n_dests + d] = 1;
    }
    if (!scored(ex)) return 0;
    if (ex->has_threshold) {
        ps_circuit_threshold(g, mean, (float)ex->threshold, !ex->signed_scores, in_graph);
        return 0;
    }
    const int64_t n = ex->top_ns ? ex->top_ns[k] : ex->top_n;
    if ((ex->greedy ? ps_circuit_greedy(g, mean, n, !ex->signed_scores, in_graph) : ps_circuit_topn(g, mean, n, !ex->signed_scores, in_graph)) != 0)
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    return 0;
}

// One prompt: its baselines' caches, the K circuits' logits (one batch per pass), their metrics. means: with
// "with": "mean", (n_sources, rows, C) the mean source values (rows 1: every position's).
static int eval_prompt(ps_producer_ctx *cx, const ps_experiment *ex, const ps_graph *g, const uint8_t *const *masks, int64_t K,
                       int64_t pi, const float *means, int64_t rows, double *metric, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const ps_prompt *p = &cx->ps->p[pi];
    ps_cache cache[2] = {{0}, {0}};
    ps_metric_request rq;
    ps_metric_request_for(cx->metric, p, &rq);
    const int64_t width = rq.n_cols ? rq.n_cols : mc->d_vocab;
    const int64_t TC = p->T * mc->d_model, S = g->n_sources;
    float *logits = malloc((size_t)(K * rq.n_out * width) * sizeof(float)), *lp = NULL, *values = NULL;
    int rc = -1;
    if (!logits) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); goto done; }
    if (ex->edge_with != PS_EDGE_CORRUPTED) { // zeros, or the means at each position
        if (!(values = calloc((size_t)(S * TC), sizeof(float)))) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); goto done; }
        for (int64_t s = 0; means && s < S; s++)
            for (int64_t t = 0; t < p->T; t++)
                memcpy(values + s * TC + t * mc->d_model, means + (s * rows + (rows == 1 ? 0 : t)) * mc->d_model, (size_t)mc->d_model * sizeof(float));
    }
    ps_row r[2];
    for (int k = 0; k < 2; k++) {
        if (ps_cache_init(&cache[k], mc, p->T, k == 0 && cx->metric == PS_METRIC_KL ? PS_CACHE_LOGITS : 0, e) != 0) goto done;
        r[k] = (ps_row){.tokens = k ? p->corrupted : p->clean, .T = p->T, .cache = &cache[k]};
    }
    if (ps_engine_rows(cx->m, cx->be, r, 2, NULL, NULL, e) != 0) goto done;
    if (cx->metric == PS_METRIC_KL) { // the clean run's log-softmax at score_pos
        const int64_t V = mc->d_vocab;
        const float *z = cache[0].logits + p->score_pos * V;
        if (!(lp = malloc((size_t)V * sizeof(float)))) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); goto done; }
        double mx = z[0], s = 0;
        for (int64_t v = 1; v < V; v++) mx = z[v] > mx ? z[v] : mx;
        for (int64_t v = 0; v < V; v++) s += exp(z[v] - mx);
        for (int64_t v = 0; v < V; v++) lp[v] = (float)(z[v] - mx - log(s));
    }
    if ((values ? ps_circuit_eval_values(cx->m, cx->be, g, masks, K, p, &cache[0], values, &rq, logits, e)
                : ps_circuit_eval_many(cx->m, cx->be, g, masks, K, p, &cache[0], &cache[1], &rq, logits, e)) != 0)
        goto done;
    for (int64_t k = 0; k < K; k++) metric[k] = ps_metric_value(cx->metric, p, &rq, logits + k * rq.n_out * width, mc->d_vocab, lp);
    rc = 0;
done:
    ps_backend_drop_caches(cx->be, cache, 2);
    free(logits);
    free(lp);
    free(values);
    return rc;
}

// One experiment's circuits: chosen, pruned, evaluated on every prompt.
static int ec_experiment(ps_producer_ctx *cx, ps_product *it, const ps_graph *g, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const ps_experiment *ex = it->ex;
    ps_table *t = it->t;
    const int64_t K = n_circuits(ex), N = g->n_sources * g->n_dests, n = cx->ps->n;
    uint8_t *masks = malloc((size_t)(K * N));
    const uint8_t **ms = malloc((size_t)K * sizeof *ms);
    float *mean = scored(ex) ? malloc((size_t)N * sizeof(float)) : NULL;
    int64_t *kept = malloc((size_t)K * sizeof *kept), rows = 0;
    double *metric = malloc((size_t)K * sizeof *metric);
    float *means = NULL;
    int rc = -1;
    if (!masks || !ms || (scored(ex) && !mean) || !kept || !metric) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory for edge sets"); goto done; }
    if (ex->scores_from && mean_scores(cx, ex, N, mean, e) != 0) goto done;
    if (ex->scores_path && file_scores(ex, it->idx, g, mean, e) != 0) goto done;
    for (int64_t k = 0; k < K; k++) {
        ms[k] = masks + k * N;
        if (choose(ex, g, k, mean, masks + k * N, e) != 0) goto done;
        if ((kept[k] = ps_circuit_prune(g, masks + k * N)) < 0) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory pruning an edge set"); goto done; }
    }
    if (K == 1 && ps_table_attr_i64(t, "n_edges_kept", kept[0], e) != 0) goto done;
    if (ex->edge_with == PS_EDGE_MEAN && !cx->o->dry_run &&
        ps_circuit_mean_values(cx->m, cx->be, g, ref_of(cx->ps, it), ex->abl_group == PS_GROUP_ALL_POSITIONS, ex->name, &means, &rows, e) != 0)
        goto done;
    for (int64_t pi = 0; pi < n; pi++) {
        // Each pass is a forward of the prompt per circuit: up to 2 L + 1 of them (L + 1 with parallel blocks), and
        // the two baselines.
        const ps_row full = {.tokens = cx->ps->p[pi].clean, .T = cx->ps->p[pi].T};
        const int64_t passes = (mc->parallel_residual ? 1 : 2) * mc->n_layers + 1;
        t->flops += (double)(K * passes + 2) * ps_row_flops(mc, &full);
        if (cx->o->dry_run) continue;
        if (ps_producer_stopped(cx, e) != 0) goto done;
        if (eval_prompt(cx, ex, g, ms, K, pi, means, rows, metric, e) != 0) goto done;
        const double c = cx->rr->base.clean[pi], x = cx->rr->base.corrupted[pi];
        for (int64_t k = 0; k < K; k++) {
            float *v = t->values + (k * n + pi) * N_VALUES;
            v[V_METRIC] = (float)metric[k];
            v[V_FAITH] = (float)((metric[k] - x) / (c - x));
            v[V_KEPT] = (float)kept[k];
        }
        ps_producer_progress(cx, 0);
    }
    rc = 0;
done:
    free(masks);
    free(ms);
    free(mean);
    free(kept);
    free(metric);
    free(means);
    return rc;
}

static int ec_once(ps_producer_ctx *cx, ps_product *const *items, int64_t n, ps_error *e) {
    const ps_graph g = graph_of(&cx->m->cfg);
    for (int64_t s = 0; s < n; s++)
        if (ec_experiment(cx, items[s], &g, e) != 0) return -1;
    return 0;
}

const ps_producer ps_edge_circuit_producer = {
    .kind = "edge_circuit", .per_prompt = 0, .init = ec_init, .once = ec_once,
};
