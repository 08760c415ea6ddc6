// Edge attribution patching (experiment kind "edge_attribution", ps_producer.h) on EAP-IG's graph (ps_graph.h):
// sources input, every head's output (z_h @ W_O[h]) and every MLP's output; destinations every head's separate
// query, key and value inputs (key/value heads under grouped-query attention), every MLP's input and the logits,
// each input being the residual stream before its norm. EAP scores an edge u -> v of one prompt as
//   sum over positions of (corrupted - clean output of u) . d metric / d (input of v) on the clean run,
// and the table's mean over prompts is EAP-IG's score. EAP-IG-inputs averages the gradient over runs whose input
// embeddings go from corrupted to clean; clean-corrupted over the clean and the corrupted run (EAP-IG's methods).
// The input gradients come from the backward pass's q/k/v and MLP gradients through the one head's (or the
// MLP's) projection and norm, layer by layer, so memory is one prompt's caches, its gradient cache, the output
// differences (sources x T x C) and one layer's inputs.
#include "engine_internal.h"
#include "ps_backward.h"
#include "ps_blas.h"
#include "ps_graph.h"
#include "ps_producer.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// The graph (ps_graph.h, EAP-IG's conventions) with k and v per key/value head (kv_native), as the model computes
// them; per layer of destinations: H q, Hkv k, Hkv v, the MLP.
static ps_graph graph_of(const ps_model_config *mc) {
    ps_graph g;
    ps_graph_init(&g, mc, 1);
    return g;
}
static int64_t dests_per_layer(const ps_graph *g) { return g->n_heads + 2 * g->n_kv_heads + 1; }

// The norm's backward at its input x for a gradient dxn at its output: dx = (J_norm at x)^T dxn (zeroed first).
static void norm_input_grad(const ps_model_config *mc, float *dx, const float *dxn, const float *x, const float *scale,
                            const float *w, int64_t T) {
    memset(dx, 0, (size_t)(T * mc->d_model) * sizeof(float));
    if (mc->arch == PS_ARCH_LLAMA) ps_cpu_rmsnorm_backward(dx, NULL, dxn, x, scale, w, T, mc->d_model);
    else ps_cpu_layernorm_backward(dx, NULL, dxn, x, scale, w, T, mc->d_model);
}

// dxn (T, C) = dy (T, D) @ W[:, j*D:(j+1)*D]^T: one head's share of a projection's input gradient. W: (C, ld).
static void head_input(float *dxn, const float *dy, int64_t ld_dy, const float *W, int64_t ld_w, int64_t T, int64_t C, int64_t D) {
    ps_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)C, (int)D, 1.0f, dy, (int)ld_dy, W, (int)ld_w, 0.0f, dxn, (int)C);
}

typedef struct {
    const ps_model *m;
    ps_graph gr;
    int64_t T;
    const ps_cache *clean, *corr;
    const ps_cache *run, *g;   // the run whose gradient scores the edges now, and that gradient
    double weight;             // its share of the score
    float *delta;   // (n_src, T, C) corrupted - clean output of every source
    float *gin;     // (per_layer_dst, T, C) one layer's destination input gradients
    float *dxn;     // (T, C)
    float *dz;      // (T, H*D)
    float *scores;  // (n_src, per_layer_dst) one layer's block
    double *acc;    // (n_src, n_dst) the prompt's scores so far
} eap_work;

// Adds weight x the scores of destinations [v0, v0 + nd) (their input gradients in w->gin) to acc.
static void score_block(eap_work *w, int64_t v0, int64_t nd) {
    const int64_t TC = w->T * w->m->cfg.d_model, n_src = w->gr.n_sources;
    // S (n_src, nd) = delta (n_src, T C) @ gin^T
    ps_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n_src, (int)nd, (int)TC, 1.0f, w->delta, (int)TC, w->gin, (int)TC, 0.0f,
             w->scores, (int)nd);
    for (int64_t u = 0; u < n_src; u++)
        for (int64_t j = 0; j < nd; j++) w->acc[u * w->gr.n_dests + v0 + j] += w->weight * w->scores[u * nd + j];
}

// The sources' output differences: the embeddings, head h's output z_h @ W_O[h] (no bias: it is the same in both
// runs), each MLP's output.
static int eap_deltas(eap_work *w, ps_error *e) {
    const ps_model_config *mc = &w->m->cfg;
    const int64_t C = mc->d_model, H = mc->n_heads, D = mc->d_head, T = w->T, QD = H * D, TC = T * C;
    const ps_cache *c = w->clean, *k = w->corr;
    for (int64_t i = 0; i < TC; i++) w->delta[i] = k->resid_pre[i] - c->resid_pre[i];
    for (int64_t l = 0; l < mc->n_layers; l++) {
        ps_layer_weights lw;
        if (ps_model_layer(w->m, l, &lw, e) != 0) return -1;
        for (int64_t i = 0; i < T * QD; i++) w->dz[i] = k->z[l * T * QD + i] - c->z[l * T * QD + i];
        const int64_t s0 = 1 + l * (H + 1);
        for (int64_t h = 0; h < H; h++)
            ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)C, (int)D, 1.0f, w->dz + h * D, (int)QD,
                     lw.w_o + h * D * C, (int)C, 0.0f, w->delta + (s0 + h) * TC, (int)C);
        for (int64_t i = 0; i < TC; i++) w->delta[(s0 + H) * TC + i] = k->mlp_out[l * TC + i] - c->mlp_out[l * TC + i];
    }
    return 0;
}

// One layer's destinations: their input gradients on w->run and their scores.
static int eap_layer(eap_work *w, int64_t l, ps_error *e) {
    const ps_model_config *mc = &w->m->cfg;
    const ps_weights *wt = &w->m->w;
    const int64_t C = mc->d_model, H = mc->n_heads, Hkv = mc->n_kv_heads, D = mc->d_head, M = mc->d_mlp, T = w->T;
    const int64_t QD = H * D, KD = Hkv * D, TC = T * C;
    const ps_cache *r = w->run, *g = w->g;
    ps_layer_weights lw;
    if (ps_model_layer(w->m, l, &lw, e) != 0) return -1;
    // Each head's q (k, v) input gradient is its q gradient through its W_Q columns and ln1 (the norm's Jacobian
    // at this run's residual stream).
    const float *x1 = r->resid_pre + l * TC, *s1 = r->ln1_scale + l * T, *w1 = wt->ln1_w + l * C;
    for (int64_t h = 0; h < H; h++) {
        head_input(w->dxn, g->q + l * T * QD + h * D, QD, lw.w_q + h * D, QD, T, C, D);
        norm_input_grad(mc, w->gin + h * TC, w->dxn, x1, s1, w1, T);
    }
    for (int64_t j = 0; j < Hkv; j++) {
        head_input(w->dxn, g->k + l * T * KD + j * D, KD, lw.w_k + j * D, KD, T, C, D);
        norm_input_grad(mc, w->gin + (H + j) * TC, w->dxn, x1, s1, w1, T);
        head_input(w->dxn, g->v + l * T * KD + j * D, KD, lw.w_v + j * D, KD, T, C, D);
        norm_input_grad(mc, w->gin + (H + Hkv + j) * TC, w->dxn, x1, s1, w1, T);
    }
    // The MLP's input: its pre-activation gradients through W_in (and W_up) and ln2.
    ps_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)C, (int)M, 1.0f, g->mlp_pre + l * T * M, (int)M, lw.w_in, (int)M,
             0.0f, w->dxn, (int)C);
    if (mc->arch == PS_ARCH_LLAMA)
        ps_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)T, (int)C, (int)M, 1.0f, g->mlp_pre_linear + l * T * M, (int)M, lw.w_up,
                 (int)M, 1.0f, w->dxn, (int)C);
    // (A parallel-residual block's MLP reads ln2 of the stream entering the layer.)
    const float *x2 = (mc->parallel_residual ? r->resid_pre : r->resid_mid) + l * TC;
    norm_input_grad(mc, w->gin + (H + 2 * Hkv) * TC, w->dxn, x2, r->ln2_scale + l * T, wt->ln2_w + l * C, T);
    score_block(w, l * dests_per_layer(&w->gr), dests_per_layer(&w->gr));
    return 0;
}

// Adds weight x the scores from the gradient on run (a run of tokens) to w->acc.
static int eap_run(ps_producer_ctx *cx, eap_work *w, const ps_prompt *p, const int32_t *tokens, const ps_cache *run, const float *clean_lp,
                   double weight, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const int64_t TC = w->T * mc->d_model;
    ps_cache g = {0};
    int rc = -1;
    if (ps_run_gradient(cx, p, tokens, run, clean_lp, &g, e) != 0) goto done;
    w->run = run;
    w->g = &g;
    w->weight = weight;
    for (int64_t l = 0; l < mc->n_layers; l++)
        if (eap_layer(w, l, e) != 0) goto done;
    // logits read the final residual stream: its gradient is resid_post's of the last layer.
    memcpy(w->gin, g.resid_post + (mc->n_layers - 1) * TC, (size_t)TC * sizeof(float));
    score_block(w, w->gr.n_dests - 1, 1);
    rc = 0;
done:
    ps_cache_free(&g);
    return rc;
}

// EAP-IG-inputs: the clean tokens with the input embeddings moved to corrupted + a (clean - corrupted),
// a = k / steps for k = 0 .. steps - 1 (an add patch at blocks.0.hook_resid_pre), each run's gradient 1 / steps.
static int eap_ig_inputs(ps_producer_ctx *cx, eap_work *w, const ps_prompt *p, const float *clean_lp, int64_t steps, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const int64_t TC = w->T * mc->d_model;
    float *shift = malloc((size_t)TC * sizeof(float));
    if (!shift) return ps_fail(e, PS_EXIT_RUNTIME, "edge attribution: out of memory");
    int rc = 0;
    for (int64_t k = 0; k < steps && rc == 0; k++) {
        const double a = (double)k / (double)steps;
        for (int64_t i = 0; i < TC; i++) shift[i] = (float)((1.0 - a) * w->delta[i]); // clean + shift = corrupted + a (clean - corrupted)
        const ps_patch pt = {.site = PS_SITE_RESID_PRE, .layer = 0, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_ADD,
                             .ref = {shift, w->T, NULL}};
        ps_cache run = {0};
        ps_row r = {.tokens = p->clean, .T = p->T, .patches = &pt, .n_patches = 1, .cache = &run};
        rc = ps_cache_init(&run, mc, p->T, 0, e);
        if (rc == 0) rc = ps_engine_rows(cx->m, cx->be, &r, 1, NULL, NULL, e);
        if (rc == 0) rc = eap_run(cx, w, p, p->clean, &run, clean_lp, 1.0 / (double)steps, e);
        ps_backend_drop_caches(cx->be, &run, 1); // with the backend's device copy, if it kept one
    }
    free(shift);
    return rc;
}

// One prompt's scores of experiment ex into row (n_src x n_dst; non-edges stay NaN).
static int eap_prompt(ps_producer_ctx *cx, const ps_experiment *ex, const ps_prompt *p, const ps_cache *clean, const ps_cache *corr,
                      const float *clean_lp, float *row, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const int64_t C = mc->d_model, T = p->T, TC = T * C;
    eap_work w = {.m = cx->m, .gr = graph_of(mc), .T = T, .clean = clean, .corr = corr};
    int rc = -1;
    w.delta = malloc((size_t)(w.gr.n_sources * TC) * sizeof(float));
    w.gin = malloc((size_t)(dests_per_layer(&w.gr) * TC) * sizeof(float));
    w.dxn = malloc((size_t)TC * sizeof(float));
    w.dz = malloc((size_t)(T * mc->n_heads * mc->d_head) * sizeof(float));
    w.scores = malloc((size_t)(w.gr.n_sources * dests_per_layer(&w.gr)) * sizeof(float));
    w.acc = calloc((size_t)(w.gr.n_sources * w.gr.n_dests), sizeof(double));
    if (!w.delta || !w.gin || !w.dxn || !w.dz || !w.scores || !w.acc) {
        ps_fail(e, PS_EXIT_RUNTIME, "edge attribution: out of memory for a prompt of %lld tokens", (long long)T);
        goto done;
    }
    if (eap_deltas(&w, e) != 0) goto done;
    switch (ex->method) {
    case PS_EDGE_EAP: rc = eap_run(cx, &w, p, p->clean, clean, clean_lp, 1.0, e); break;
    case PS_EDGE_CLEAN_CORRUPTED:
        rc = eap_run(cx, &w, p, p->clean, clean, clean_lp, 0.5, e);
        if (rc == 0) rc = eap_run(cx, &w, p, p->corrupted, corr, clean_lp, 0.5, e);
        break;
    case PS_EDGE_EAP_IG_INPUTS: rc = eap_ig_inputs(cx, &w, p, clean_lp, ex->steps > 0 ? ex->steps : 5, e); break;
    }
    for (int64_t u = 0; rc == 0 && u < w.gr.n_sources; u++)
        for (int64_t v = 0; v < w.gr.n_dests; v++)
            if (ps_graph_edge(&w.gr, u, v)) row[u * w.gr.n_dests + v] = (float)w.acc[u * w.gr.n_dests + v];
done:
    free(w.delta);
    free(w.gin);
    free(w.dxn);
    free(w.dz);
    free(w.scores);
    free(w.acc);
    return rc;
}

// Gradient runs of a method (for the FLOP count).
static int64_t method_runs(const ps_experiment *ex) {
    return ex->method == PS_EDGE_EAP ? 1 : ex->method == PS_EDGE_CLEAN_CORRUPTED ? 2 : (ex->steps > 0 ? ex->steps : 5);
}

static int eap_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const ps_graph gr = graph_of(mc);
    for (int64_t i = 0; i < ch->n; i++) {
        const int64_t pi = ch->prompts[i];
        const ps_prompt *p = &cx->ps->p[pi];
        for (int64_t s = 0; s < n; s++) {
            const ps_experiment *ex = items[s]->ex;
            ps_table *t = items[s]->t;
            // An experiment with the method and steps of an earlier one copies its scores.
            int64_t same = -1;
            for (int64_t q = 0; q < s && same < 0; q++)
                if (items[q]->ex->method == ex->method && (ex->method != PS_EDGE_EAP_IG_INPUTS || items[q]->ex->steps == ex->steps)) same = q;
            if (same < 0) {
                // Each gradient run: a backward pass (about two forward passes; IG's runs one more forward) and the
                // score products (2 n_src n_dst T C).
                const ps_row full = {.tokens = p->clean, .T = p->T};
                const double per_run = (ex->method == PS_EDGE_EAP_IG_INPUTS ? 3.0 : 2.0) * ps_row_flops(mc, &full) +
                                       2.0 * (double)gr.n_sources * (double)gr.n_dests * (double)(p->T * mc->d_model);
                t->flops += (double)method_runs(ex) * per_run;
            }
            cx->done += t->n_cells;
            if (cx->o->dry_run) continue;
            if (ps_producer_stopped(cx, e)) return -1;
            float *row = t->values + pi * t->n_cells;
            if (same >= 0) {
                memcpy(row, items[same]->t->values + pi * t->n_cells, (size_t)t->n_cells * sizeof(float));
                continue;
            }
            if (eap_prompt(cx, ex, p, &ch->clean[i], &ch->corrupted[i], ch->clean_logprobs ? ch->clean_logprobs + i * mc->d_vocab : NULL,
                           row, e) != 0)
                return -1;
            ps_producer_progress(cx, 0);
        }
    }
    return 0;
}

static const char *method_name(ps_edge_method m) {
    return m == PS_EDGE_EAP ? "EAP" : m == PS_EDGE_EAP_IG_INPUTS ? "EAP-IG-inputs" : "clean-corrupted";
}

static int eap_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_graph gr = graph_of(mc);
    ps_axis axes[2] = {{.name = "src", .len = gr.n_sources}, {.name = "dst", .len = gr.n_dests}};
    int64_t *vals = malloc((size_t)(gr.n_sources + gr.n_dests) * sizeof(int64_t));
    char **labels = calloc((size_t)(gr.n_sources + gr.n_dests), sizeof(char *));
    int rc = -1;
    if (!vals || !labels) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the graph of %s", p->ex->name); goto done; }
    for (int64_t i = 0; i < gr.n_sources + gr.n_dests; i++) {
        char buf[64];
        if (i < gr.n_sources) ps_graph_source_name(&gr, i, buf, sizeof buf);
        else ps_graph_dest_name(&gr, i - gr.n_sources, buf, sizeof buf);
        vals[i] = i < gr.n_sources ? i : i - gr.n_sources;
        if (!(labels[i] = strdup(buf))) { ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the graph of %s", p->ex->name); goto done; }
    }
    axes[0].value = vals;
    axes[0].label = labels;
    axes[1].value = vals + gr.n_sources;
    axes[1].label = labels + gr.n_sources;
    if (ps_table_init(p->t, p->ex->name, "edge_attribution", 1, ps->n, 2, axes, 0, e) != 0 ||
        ps_table_attr_str(p->t, "method", method_name(p->ex->method), e) != 0 ||
        (p->ex->method == PS_EDGE_EAP_IG_INPUTS && ps_table_attr_i64(p->t, "steps", p->ex->steps > 0 ? p->ex->steps : 5, e) != 0) ||
        ps_table_attr_str(p->t, "graph", "EAP-IG: heads with separate q/k/v inputs (k/v per key/value head), MLPs, input, logits", e) != 0 ||
        ps_table_attr_str(p->t, "score", "sum over positions of (corrupted - clean output of src) . d metric / d input of dst", e) != 0 ||
        ps_table_attr_i64(p->t, "n_edges", gr.n_edges, e) != 0)
        goto done;
    rc = 0;
done:
    for (int64_t i = 0; labels && i < gr.n_sources + gr.n_dests; i++) free(labels[i]);
    free(labels);
    free(vals);
    return rc;
}

const ps_producer ps_edge_attribution_producer = {
    .kind = "edge_attribution", .per_prompt = 1, .init = eap_init, .chunk = eap_chunk,
};
