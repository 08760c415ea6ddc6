// Kind "edge_circuit" (ps_producer.h, ps_circuit.h): one circuit of EAP-IG's graph, given as edge names or chosen
// from an edge_attribution experiment's mean scores (top_n or threshold), pruned, and evaluated per prompt.
// It runs once, after the last chunk, so the scores it chooses from are every prompt's mean (--shard refuses
// tables that are not per prompt, so every prompt is this run's); it reruns each prompt's clean and corrupted
// baselines for their caches. Table: one row, cells (item, value): item = the prompt ("prompt" names per-prompt
// tables' leading axis), value = the metric and the faithfulness (metric - corrupted) / (clean - corrupted) of
// the run's baselines.
#include "engine_internal.h"
#include "ps_circuit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static ps_graph graph_of(const ps_model_config *mc) {
    ps_graph g;
    ps_graph_init(&g, mc, 1);
    return g;
}

static int ec_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    const ps_graph g = graph_of(mc);
    if (mc->parallel_residual)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: edge_circuit needs sequential blocks (this model's attention and MLP are parallel)", ex->name);
    if (!ex->scores_from == !ex->edge_names)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: give either edges or scores_from", ex->name);
    for (int64_t i = 0; i < ex->n_edge_names; i++) {
        int64_t s, d;
        if (ps_circuit_edge_by_name(&g, ex->edge_names[i], &s, &d) != 0)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: edges[%lld]: \"%s\" is no edge of the graph (e.g. \"a0.h1->a1.h0<q>\", \"m0->logits\")",
                           ex->name, (long long)i, ex->edge_names[i]);
    }
    int64_t *pv = malloc((size_t)ps->n * sizeof(int64_t)), vv[2] = {0, 1};
    if (!pv) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    for (int64_t i = 0; i < ps->n; i++) pv[i] = i;
    const char *vl[2] = {"metric", "faithfulness"};
    ps_axis axes[2] = {{.name = "item", .len = ps->n, .value = pv}, {.name = "value", .len = 2, .value = vv, .label = (char **)vl}};
    int rc = ps_table_init(p->t, ex->name, "edge_circuit", 0, 1, 2, axes, 0, e);
    free(pv);
    if (rc != 0) return -1;
    const int64_t requested = ex->scores_from ? (ex->has_threshold ? -1 : ex->top_n) : ex->n_edge_names;
    if (ps_table_attr_i64(p->t, "n_edges_requested", requested, e) != 0 ||
        (ex->scores_from && ps_table_attr_str(p->t, "scores_from", ex->scores_from, e) != 0) ||
        (ex->has_threshold && ps_table_attr_f64(p->t, "threshold", ex->threshold, e) != 0) ||
        ps_table_attr_str(p->t, "faithfulness", "(metric - corrupted) / (clean - corrupted), the run's baselines", e) != 0)
        return -1;
    return 0;
}

// The circuit of experiment ex (before pruning) into in_graph.
static int choose(ps_producer_ctx *cx, const ps_experiment *ex, const ps_graph *g, uint8_t *in_graph, ps_error *e) {
    const int64_t N = g->n_sources * g->n_dests;
    memset(in_graph, 0, (size_t)N);
    for (int64_t i = 0; i < ex->n_edge_names; i++) {
        int64_t s, d;
        if (ps_circuit_edge_by_name(g, ex->edge_names[i], &s, &d) == 0) in_graph[s * g->n_dests + d] = 1;
    }
    if (!ex->scores_from) return 0;
    const ps_table *t = NULL;
    for (int64_t k = 0; k < cx->rr->n_products; k++)
        if (!strcmp(cx->rr->products[k].ex->name, ex->scores_from)) t = cx->rr->products[k].t;
    if (!t || strcmp(t->kind, "edge_attribution") != 0 || t->n_cells != N)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: scores_from: \"%s\" is no edge_attribution experiment of this run", ex->name,
                       ex->scores_from);
    // The mean score over the prompts that have one (EAP-IG's scores are the mean over its data).
    float *mean = malloc((size_t)N * sizeof(float));
    if (!mean) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    for (int64_t c = 0; c < N; c++) {
        double s = 0;
        int64_t n = 0;
        for (int64_t r = 0; r < t->n_rows; r++) {
            const float v = t->values[r * N + c];
            if (!isnan(v)) { s += v; n++; }
        }
        mean[c] = n ? (float)(s / (double)n) : NAN;
    }
    int rc = 0;
    if (ex->has_threshold) ps_circuit_threshold(g, mean, (float)ex->threshold, !ex->signed_scores, in_graph);
    else if (ps_circuit_topn(g, mean, ex->top_n, !ex->signed_scores, in_graph) != 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    free(mean);
    return rc;
}

// One prompt: its baselines' caches, the circuit's logits, the metric.
static int eval_prompt(ps_producer_ctx *cx, const ps_graph *g, const uint8_t *in_graph, int64_t pi, double *metric, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const ps_prompt *p = &cx->ps->p[pi];
    ps_cache cache[2] = {{0}, {0}};
    ps_metric_request rq;
    ps_metric_request_for(cx->metric, p, &rq);
    const int64_t width = rq.n_cols ? rq.n_cols : mc->d_vocab;
    float *logits = malloc((size_t)(rq.n_out * width) * sizeof(float)), *lp = NULL;
    int rc = -1;
    if (!logits) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); goto done; }
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
    if (ps_circuit_eval(cx->m, cx->be, g, in_graph, p, &cache[0], &cache[1], &rq, logits, e) != 0) goto done;
    *metric = ps_metric_value(cx->metric, p, &rq, logits, mc->d_vocab, lp);
    rc = 0;
done:
    for (int k = 0; k < 2; k++) {
        if (cx->be->release_cache) cx->be->release_cache(cx->be, &cache[k]);
        ps_cache_free(&cache[k]);
    }
    free(logits);
    free(lp);
    return rc;
}

static int ec_once(ps_producer_ctx *cx, ps_product *const *items, int64_t n, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const ps_graph g = graph_of(mc);
    uint8_t *in_graph = malloc((size_t)(g.n_sources * g.n_dests));
    if (!in_graph) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for an edge set");
    int rc = 0;
    for (int64_t s = 0; rc == 0 && s < n; s++) {
        ps_table *t = items[s]->t;
        rc = choose(cx, items[s]->ex, &g, in_graph, e);
        const int64_t kept = rc == 0 ? ps_circuit_prune(&g, in_graph) : 0;
        if (rc == 0 && kept < 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory pruning an edge set");
        if (rc == 0) rc = ps_table_attr_i64(t, "n_edges_kept", kept, e);
        // Each pass is a forward of the prompt; up to 2 L + 1 of them and the two baselines.
        for (int64_t pi = 0; rc == 0 && pi < cx->ps->n; pi++) {
            const ps_row full = {.tokens = cx->ps->p[pi].clean, .T = cx->ps->p[pi].T};
            t->flops += (double)(2 * mc->n_layers + 3) * ps_row_flops(mc, &full);
            if (cx->o->dry_run) continue;
            if ((rc = ps_producer_stopped(cx, e)) != 0) break;
            double m;
            if ((rc = eval_prompt(cx, &g, in_graph, pi, &m, e)) != 0) break;
            const double c = cx->rr->base.clean[pi], k = cx->rr->base.corrupted[pi];
            t->values[pi * 2] = (float)m;
            t->values[pi * 2 + 1] = (float)((m - k) / (c - k));
            ps_producer_progress(cx, 0);
        }
    }
    free(in_graph);
    return rc;
}

const ps_producer ps_edge_circuit_producer = {
    .kind = "edge_circuit", .per_prompt = 0, .init = ec_init, .once = ec_once,
};
