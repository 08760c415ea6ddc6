// Evaluating a circuit given as a set of edges (ps_circuit.h) with EAP-IG's evaluate_graph semantics, through
// the intervention model: add patches on ps_engine_rows, layer by layer.
//
// The route. Destination v's input must be x_v = (this run's residual stream where v reads it) + c_v, with
// c_v = sum over v's missing edges u -> v of (value of u - this run's output of u); the value is u's output in the
// corrupted run, 0, or a mean over reference prompts (EAP-IG's interventions patching, zero, mean-positional). This run's outputs of layer l's
// sources depend on the corrections of layers <= l, so the layers are built in order, each from a forward pass
// that carries every patch found so far (its cache gives the sources' outputs that are now final):
//  - a head's q (k, v) input is read through ln1, which is not linear, so c_v cannot be added to the residual
//    stream that all heads share. Per head h it is applied where it is exact: q_h' = ln1(x + c_qh) W_Q[h] + b_Q[h]
//    is this run's q_h plus (ln1(x + c_qh) - ln1(x)) W_Q[h] (the bias cancels), an add patch at hook_q of
//    head h's columns (hook_k, hook_v of a key/value head alike); rotary acts after hook_q and sees q_h';
//  - an MLP's input (hook_mlp_in in EAP-IG) is ln2 of resid_mid: add c at resid_mid and -c at resid_post, so the
//    MLP reads resid_mid + c while the residual stream after the layer is unchanged (resid_post = resid_mid + c +
//    mlp_out - c);
//  - the logits read resid_post of the last layer: add c there (after that layer's MLP patch).
// A parallel block (GPT-NeoX: resid_post = x + attn(ln1(x)) + mlp(ln2(x)), x = resid_pre) has no resid_mid, and its
// MLP reads no source of its own layer, so its correction c_m is final before the layer runs: one pass per layer
// adds c_m at resid_pre (ln1 and ln2 then read x + c_m) and -c_m at attn_out (resid_post = x + c_m + attn_out -
// c_m + mlp_out), and each head's q (k, v) patch is taken against the shifted stream, (ln1(x + c_qh) - ln1(x +
// c_m)) W_Q[h], for every head (those missing no edge too, with c_qh = 0).
// Each is EAP-IG's input construction exactly in real arithmetic; in fp32 they differ by rounding (1e-6 seen).
// Up to 2 L passes per circuit and prompt (L with parallel blocks), the circuits of one prompt batched as rows of
// each pass; the passes of layer l start at layer l from the circuit's state (captured by the pass before), so they
// cost about L full forwards in all (a pass cannot stop at its layer: it runs to the last one); the logits row is an unembedding
// from the state. Steps whose destinations miss no edge are skipped. EAP-IG's hooks need 2 forwards: a row that
// could stop after a layer (and cache rows that start from a base) would bring this route near that.
#include "engine_internal.h"
#include "ps_ablation.h"
#include "ps_blas.h"
#include "ps_circuit.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const ps_model *m;
    ps_backend *be;
    const ps_graph *g;
    const uint8_t *in_graph;
    const ps_prompt *p;
    int64_t T;
    const float *corr_out; // (n_sources, T, C) the missing edges' source values (shared by the circuits)
    float *run_out;   // (n_sources, T, C) this run's, final for the sources done so far
    float *c;         // (T, C) one destination's correction
    float *xn0, *xn1, *sc; // (T, C), (T, C), (T): ln1 of this run's stream and of the corrected one
    float *refs;      // per layer: q (T, H D), k (T, Hkv D), v (T, Hkv D), mlp +c (T, C), -c (T, C); then the logits' (T, C)
    ps_patch *patches; int64_t n_patches;
    ps_cache st[2];   // the latest pass's resid_pre, z, mlp_out and resid_post at every layer, alternately
    int next;         // the st the next pass captures into
    const ps_cache *cur; // the run's state so far: the clean cache, then the latest st
    ps_capture *caps; // (4 L) into st[0], then (4 L) into st[1]
    int64_t first;    // patches[first..]: those of the layer being built (earlier ones act through cur)
    float dummy;      // the one logit a pass asks for
} circ;

static int64_t layer_ref_floats(const ps_model_config *mc, int64_t T) {
    return T * (mc->n_heads * mc->d_head + 2 * mc->n_kv_heads * mc->d_head + 2 * mc->d_model);
}

// The input's output: the token embeddings (EAP-IG's hook_embed; GPT-2's position embeddings, like the biases,
// belong to no source). out (T, C).
static void embed_rows(const ps_model *m, const int32_t *tok, int64_t T, float *out) {
    const int64_t C = m->cfg.d_model;
    for (int64_t t = 0; t < T; t++) memcpy(out + t * C, m->w.wte + (int64_t)tok[t] * C, (size_t)C * sizeof(float));
}

// Source outputs of a run (heads: z_h @ W_O[h], no bias, as hook_result) for the sources of layer l >= 0;
// heads and/or MLP.
static int source_outputs(circ *w, const ps_cache *r, float *out, int64_t l, int heads, int mlp, ps_error *e) {
    const ps_model_config *mc = &w->m->cfg;
    const int64_t C = mc->d_model, H = mc->n_heads, D = mc->d_head, T = w->T, QD = H * D, TC = T * C;
    ps_layer_weights lw;
    if (ps_model_layer(w->m, l, &lw, e) != 0) return -1;
    const int64_t s0 = ps_graph_source(w->g, l, 0);
    for (int64_t h = 0; heads && h < H; h++)
        ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)C, (int)D, 1.0f, r->z + l * T * QD + h * D, (int)QD,
                 lw.w_o + h * D * C, (int)C, 0.0f, out + (s0 + h) * TC, (int)C);
    if (mlp) memcpy(out + (s0 + H) * TC, r->mlp_out + l * TC, (size_t)TC * sizeof(float));
    return 0;
}

// w->c = destination d's correction; returns whether any edge into d is missing.
static int correction(circ *w, int64_t d) {
    const int64_t TC = w->T * w->m->cfg.d_model, Dn = w->g->n_dests;
    int any = 0;
    memset(w->c, 0, (size_t)TC * sizeof(float));
    for (int64_t s = 0; s < w->g->n_sources; s++) {
        if (!ps_graph_edge(w->g, s, d) || w->in_graph[s * Dn + d]) continue;
        any = 1;
        const float *a = w->corr_out + s * TC, *b = w->run_out + s * TC;
        for (int64_t i = 0; i < TC; i++) w->c[i] += a[i] - b[i];
    }
    return any;
}

static void norm(const ps_model_config *mc, float *out, float *scale, const float *x, const float *wt, const float *b, int64_t T) {
    if (mc->arch == PS_ARCH_LLAMA) ps_cpu_rmsnorm(out, scale, x, wt, T, mc->d_model, mc->eps);
    else ps_cpu_layernorm(out, scale, x, wt, b, T, mc->d_model, mc->eps);
}

static void add_patch(circ *w, ps_site site, int64_t l, const float *ref) {
    w->patches[w->n_patches++] = (ps_patch){.site = site, .layer = l, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_ADD,
                                            .ref = {ref, w->T, NULL}};
}

// One pass of the clean tokens per circuit k with need[k], in one batch. A row starts at the layer being built
// from the circuit's state (cur: every earlier patch is in its resid_pre there) with that layer's patches only,
// and captures the sites the next steps read at every layer into the other state (ps_captures_from_base fills
// the layers below its start from cur). It asks for one logit at position 0 so that it starts there (at a later
// position it would read keys and values the state does not hold).
static int pass_many(circ *ws, int64_t K, const int *need, ps_row *rows, ps_error *e) {
    int64_t n = 0;
    static const int64_t pos0 = 0;
    static const int32_t col0 = 0;
    const int64_t L = ws[0].m->cfg.n_layers;
    for (int64_t k = 0; k < K; k++) {
        if (!need[k]) continue;
        circ *w = &ws[k];
        // The state this pass captures into was an earlier pass's base: its device copy, if any, is stale now.
        ps_backend_release_caches(w->be, &w->st[w->next], 1);
        rows[n++] = (ps_row){.tokens = w->p->clean, .T = w->T, .base = w->cur, .patches = w->patches + w->first,
                             .n_patches = w->n_patches - w->first, .captures = w->caps + w->next * 4 * L, .n_captures = 4 * L,
                             .out_pos = &pos0, .n_out = 1, .cols = &col0, .n_cols = 1, .logits = &w->dummy};
    }
    if (n && ps_engine_rows(ws[0].m, ws[0].be, rows, n, NULL, NULL, e) != 0) return -1;
    for (int64_t k = 0; k < K; k++)
        if (need[k]) {
            ws[k].cur = &ws[k].st[ws[k].next];
            ws[k].next ^= 1;
        }
    return 0;
}

// Layer l's q/k/v corrections from w->cur (whose resid_pre of layer l is final) as add patches; 1 when any.
// shift (T, C), or NULL: what a resid_pre patch of this pass adds to the stream both ln1 and ln2 read (a
// parallel block's MLP correction); every head's patch is then taken against ln1(x + shift).
static int attn_step(circ *w, int64_t l, const float *shift, float *ref, int *any, ps_error *e) {
    const ps_model_config *mc = &w->m->cfg;
    const int64_t C = mc->d_model, H = mc->n_heads, Hkv = mc->n_kv_heads, D = mc->d_head, T = w->T, TC = T * C;
    const int64_t QD = H * D, KD = Hkv * D;
    ps_layer_weights lw;
    if (ps_model_layer(w->m, l, &lw, e) != 0) return -1;
    const float *x = w->cur->resid_pre + l * TC, *lnw = w->m->w.ln1_w + l * C, *lnb = w->m->w.ln1_b ? w->m->w.ln1_b + l * C : NULL;
    float *dq = ref, *dk = ref + T * QD, *dv = dk + T * KD;
    memset(ref, 0, (size_t)(T * (QD + 2 * KD)) * sizeof(float));
    if (shift) { // xn0 = ln1(x + shift), xn1 as scratch
        for (int64_t i = 0; i < TC; i++) w->xn1[i] = x[i] + shift[i];
        norm(mc, w->xn0, w->sc, w->xn1, lnw, lnb, T);
    } else {
        norm(mc, w->xn0, w->sc, x, lnw, lnb, T);
    }
    *any = shift != NULL;
    const ps_dest_kind kinds[3] = {PS_DEST_Q, PS_DEST_K, PS_DEST_V};
    float *outs[3] = {dq, dk, dv};
    const float *W[3] = {lw.w_q, lw.w_k, lw.w_v};
    const int64_t ld[3] = {QD, KD, KD}, nh[3] = {H, Hkv, Hkv};
    for (int k = 0; k < 3; k++)
        for (int64_t h = 0; h < nh[k]; h++) {
            if (!correction(w, ps_graph_dest(w->g, kinds[k], l, h)) && !shift) continue;
            *any = 1;
            for (int64_t i = 0; i < TC; i++) w->c[i] += x[i];
            norm(mc, w->xn1, w->sc, w->c, lnw, lnb, T);
            for (int64_t i = 0; i < TC; i++) w->xn1[i] -= w->xn0[i];
            // delta (T, D) = (ln(x + c) - ln(x)) @ W[:, h D : (h+1) D]
            ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)D, (int)C, 1.0f, w->xn1, (int)C, W[k] + h * D, (int)ld[k],
                     0.0f, outs[k] + h * D, (int)ld[k]);
        }
    if (*any) {
        add_patch(w, PS_SITE_Q, l, dq);
        add_patch(w, PS_SITE_K, l, dk);
        add_patch(w, PS_SITE_V, l, dv);
    }
    return 0;
}

// One circuit's buffers; corr_out is shared (borrowed).
static int circ_init(circ *w, const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *in_graph, const ps_prompt *p,
                     const ps_cache *clean, const float *corr_out, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, T = p->T, TC = T * mc->d_model, S = g->n_sources;
    *w = (circ){.m = m, .be = be, .g = g, .in_graph = in_graph, .p = p, .T = T, .cur = clean, .corr_out = corr_out};
    w->run_out = malloc((size_t)(S * TC) * sizeof(float));
    w->c = malloc((size_t)TC * sizeof(float));
    w->xn0 = malloc((size_t)TC * sizeof(float));
    w->xn1 = malloc((size_t)TC * sizeof(float));
    w->sc = malloc((size_t)T * sizeof(float));
    w->refs = malloc((size_t)(L * layer_ref_floats(mc, T) + TC) * sizeof(float));
    w->patches = calloc((size_t)(5 * L + 1), sizeof *w->patches);
    w->caps = calloc((size_t)(8 * L), sizeof *w->caps);
    if (!w->run_out || !w->c || !w->xn0 || !w->xn1 || !w->sc || !w->refs || !w->patches || !w->caps)
        return ps_fail(e, PS_EXIT_RUNTIME, "edge_circuit: out of memory for a prompt of %lld tokens", (long long)T);
    static const ps_site sites[4] = {PS_SITE_RESID_PRE, PS_SITE_Z, PS_SITE_MLP_OUT, PS_SITE_RESID_POST};
    for (int b = 0; b < 2; b++) {
        if (ps_cache_init(&w->st[b], mc, T, 0, e) != 0) return -1;
        for (int64_t l = 0; l < L; l++)
            for (int k = 0; k < 4; k++)
                w->caps[(b * L + l) * 4 + k] = (ps_capture){.site = sites[k], .layer = l,
                                                            .out = ps_cache_site(&w->st[b], sites[k]) + ps_site_at(mc, sites[k], T, l, 0, 0)};
    }
    embed_rows(m, p->clean, T, w->run_out);
    return 0;
}

static void circ_free(circ *w) {
    ps_backend_drop_caches(w->be, w->st, 2);
    free(w->caps);
    free(w->run_out);
    free(w->c);
    free(w->xn0);
    free(w->xn1);
    free(w->sc);
    free(w->refs);
    free(w->patches);
}

int ps_circuit_source_values(const ps_model *m, const ps_graph *g, const ps_prompt *p, const int32_t *tokens, const ps_cache *run,
                              float *out, ps_error *e) {
    circ w0 = {.m = m, .g = g, .T = p->T};
    embed_rows(m, tokens, p->T, out);
    for (int64_t l = 0; l < m->cfg.n_layers; l++)
        if (source_outputs(&w0, run, out, l, 1, 1, e) != 0) return -1;
    return 0;
}

int ps_circuit_eval_many(const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *const *in_graph, int64_t K,
                         const ps_prompt *p, const ps_cache *clean, const ps_cache *corr, const ps_metric_request *rq, float *logits,
                         ps_error *e) {
    float *v = malloc((size_t)(g->n_sources * p->T * m->cfg.d_model) * sizeof(float));
    if (!v) return ps_fail(e, PS_EXIT_RUNTIME, "edge_circuit: out of memory for a prompt of %lld tokens", (long long)p->T);
    int rc = ps_circuit_source_values(m, g, p, p->corrupted, corr, v, e);
    if (rc == 0) rc = ps_circuit_eval_values(m, be, g, in_graph, K, p, clean, v, rq, logits, e);
    free(v);
    return rc;
}

int ps_circuit_eval_values(const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *const *in_graph, int64_t K,
                           const ps_prompt *p, const ps_cache *clean, const float *values, const ps_metric_request *rq, float *logits,
                           ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, T = p->T, TC = T * mc->d_model;
    const int64_t per_layer = layer_ref_floats(mc, T), width = rq->n_cols ? rq->n_cols : mc->d_vocab;
    circ *ws = calloc((size_t)K, sizeof *ws);
    ps_row *rows = calloc((size_t)K, sizeof *rows);
    int *need = calloc((size_t)K, sizeof *need);
    int rc = -1;
    if (!ws || !rows || !need) {
        ps_fail(e, PS_EXIT_RUNTIME, "edge_circuit: out of memory for %lld circuits", (long long)K);
        goto done;
    }
    for (int64_t k = 0; k < K; k++)
        if (circ_init(&ws[k], m, be, g, in_graph[k], p, clean, values, e) != 0) goto done;
    for (int64_t l = 0; mc->parallel_residual && l < L; l++) {
        // A parallel block in one pass: its heads and its MLP read the stream entering the layer.
        for (int64_t k = 0; k < K; k++) {
            circ *w = &ws[k];
            float *ref = w->refs + l * per_layer, *plus = ref + T * (mc->n_heads + 2 * mc->n_kv_heads) * mc->d_head, *minus = plus + TC;
            const int mlp = correction(w, ps_graph_dest(g, PS_DEST_MLP, l, -1));
            w->first = w->n_patches;
            if (mlp) {
                memcpy(plus, w->c, (size_t)TC * sizeof(float));
                for (int64_t i = 0; i < TC; i++) minus[i] = -w->c[i];
            }
            if (attn_step(w, l, mlp ? plus : NULL, ref, &need[k], e) != 0) goto done;
            if (mlp) {
                add_patch(w, PS_SITE_RESID_PRE, l, plus);
                add_patch(w, PS_SITE_ATTN_OUT, l, minus);
            }
        }
        if (pass_many(ws, K, need, rows, e) != 0) goto done;
        for (int64_t k = 0; k < K; k++)
            if (source_outputs(&ws[k], ws[k].cur, ws[k].run_out, l, 1, 1, e) != 0) goto done;
    }
    for (int64_t l = 0; !mc->parallel_residual && l < L; l++) {
        // Heads of layer l: their inputs from each circuit's stream before layer l, their outputs after the patches.
        for (int64_t k = 0; k < K; k++) {
            ws[k].first = ws[k].n_patches;
            if (attn_step(&ws[k], l, NULL, ws[k].refs + l * per_layer, &need[k], e) != 0) goto done;
        }
        if (pass_many(ws, K, need, rows, e) != 0) goto done;
        // The MLP of layer l reads input, the heads of layers <= l and the MLPs before it.
        for (int64_t k = 0; k < K; k++) {
            circ *w = &ws[k];
            float *mlp_plus = w->refs + l * per_layer + T * (mc->n_heads + 2 * mc->n_kv_heads) * mc->d_head, *mlp_minus = mlp_plus + TC;
            if (source_outputs(w, w->cur, w->run_out, l, 1, 0, e) != 0) goto done;
            need[k] = correction(w, ps_graph_dest(g, PS_DEST_MLP, l, -1));
            if (!need[k]) continue;
            memcpy(mlp_plus, w->c, (size_t)TC * sizeof(float));
            for (int64_t i = 0; i < TC; i++) mlp_minus[i] = -w->c[i];
            add_patch(w, PS_SITE_RESID_MID, l, mlp_plus);
            add_patch(w, PS_SITE_RESID_POST, l, mlp_minus);
        }
        if (pass_many(ws, K, need, rows, e) != 0) goto done;
        for (int64_t k = 0; k < K; k++)
            if (source_outputs(&ws[k], ws[k].cur, ws[k].run_out, l, 0, 1, e) != 0) goto done;
    }
    // The logits read the last resid_post; one row per circuit from its state. Its numbers must not depend on where
    // the plan starts it (narrowed at resid_post where the backend narrows, from the last layer where it does not):
    // the row carries the last layer's patches again (w->first still marks them; not those at its resid_pre, which
    // the state's resid_pre holds: captures record values after the patches) with the logits' own, so a recomputed
    // layer is the state's again, and it asks for position 0's logits first so that it starts at position 0, as
    // pass_many's rows do (the state holds no keys or values for a later start to read).
    const int64_t n_out = rq->n_out + 1;
    if (n_out > PS_MAX_OUT_POS) {
        ps_fail(e, PS_EXIT_BADINPUT, "edge_circuit: %lld metric positions (at most %d)", (long long)rq->n_out, PS_MAX_OUT_POS - 1);
        goto done;
    }
    int64_t out_pos[PS_MAX_OUT_POS] = {0};
    memcpy(out_pos + 1, rq->out_pos, (size_t)rq->n_out * sizeof *out_pos);
    enum { FINAL_PATCHES = 6 };   // a layer's at most 5 (q, k, v and the MLP's two) and the logits'
    float *lgs = malloc((size_t)(K * n_out * width) * sizeof *lgs);
    ps_patch *fin = malloc((size_t)(K * FINAL_PATCHES) * sizeof *fin);
    if (!lgs || !fin) {
        free(lgs);
        free(fin);
        ps_fail(e, PS_EXIT_RUNTIME, "edge_circuit: out of memory for %lld circuits' logits", (long long)K);
        goto done;
    }
    for (int64_t k = 0; k < K; k++) {
        circ *w = &ws[k];
        if (correction(w, g->n_dests - 1)) {
            float *lg = w->refs + L * per_layer;
            memcpy(lg, w->c, (size_t)TC * sizeof(float));
            add_patch(w, PS_SITE_RESID_POST, L - 1, lg);
        }
        ps_patch *f = fin + k * FINAL_PATCHES;
        int64_t nf = 0;
        for (int64_t i = w->first; i < w->n_patches; i++) {
            if (w->patches[i].site == PS_SITE_RESID_PRE) continue;
            if (nf == FINAL_PATCHES) {   // (cannot happen: the counts above)
                ps_fail(e, PS_EXIT_RUNTIME, "edge_circuit: more than %d patches in the last layer", FINAL_PATCHES - 1);
                goto final_done;
            }
            f[nf++] = w->patches[i];
        }
        rows[k] = (ps_row){.tokens = p->clean, .T = T, .base = w->cur, .patches = f, .n_patches = nf,
                           .out_pos = out_pos, .n_out = n_out, .cols = rq->n_cols ? rq->cols : NULL, .n_cols = rq->n_cols,
                           .logits = lgs + k * n_out * width};
    }
    rc = ps_engine_rows(m, be, rows, K, NULL, NULL, e);
final_done:
    for (int64_t k = 0; rc == 0 && k < K; k++)
        memcpy(logits + k * rq->n_out * width, lgs + (k * n_out + 1) * width, (size_t)(rq->n_out * width) * sizeof *lgs);
    free(lgs);
    free(fin);
done:
    for (int64_t k = 0; ws && k < K; k++) circ_free(&ws[k]);
    free(ws);
    free(rows);
    free(need);
    return rc;
}

int ps_circuit_eval(const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *in_graph, const ps_prompt *p,
                    const ps_cache *clean, const ps_cache *corr, const ps_metric_request *rq, float *logits, ps_error *e) {
    return ps_circuit_eval_many(m, be, g, &in_graph, 1, p, clean, corr, rq, logits, e);
}

int ps_circuit_mean_values(const ps_model *m, ps_backend *be, const ps_graph *g, const ps_prompt_set *ref, int all_positions,
                           const char *where, float **out, int64_t *rows, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, C = mc->d_model, H = mc->n_heads, D = mc->d_head, QD = H * D;
    ps_ref_means rm;
    *out = NULL;
    if (ps_ref_means_compute(m, be, ref, all_positions ? PS_GROUP_ALL_POSITIONS : PS_GROUP_PER_POSITION, NULL, 1, where, &rm, e) != 0)
        return -1;
    const int64_t R = rm.rows, RC = R * C;
    float *v = calloc((size_t)(g->n_sources * RC), sizeof(float));
    double *emb = calloc((size_t)RC, sizeof(double));
    int rc = -1;
    if (!v || !emb) { ps_fail(e, PS_EXIT_RUNTIME, "edge_circuit: out of memory for the mean source values"); goto done; }
    // The input: the mean token embedding per position (or over every token), summed in double in prompt order.
    double n = 0;
    for (int64_t i = 0; i < ref->n; i++) {
        const ps_prompt *rp = &ref->p[i];
        for (int64_t t = 0; t < rp->T; t++) {
            const float *x = m->w.wte + (int64_t)rp->clean[t] * C;
            double *acc = emb + (R == 1 ? 0 : t) * C;
            for (int64_t c = 0; c < C; c++) acc[c] += x[c];
        }
        n += R == 1 ? (double)rp->T : 1.0;
    }
    for (int64_t j = 0; j < RC; j++) v[j] = (float)(emb[j] / n);
    // Heads: mean z_h @ W_O[h] (linear, so the mean of the outputs); MLPs: mean mlp_out.
    for (int64_t l = 0; l < L; l++) {
        ps_layer_weights lw;
        if (ps_model_layer(m, l, &lw, e) != 0) goto done;
        const ps_view z = ps_ref_means_view(&rm, PS_MS_Z, l, 0), mo = ps_ref_means_view(&rm, PS_MS_MLP_OUT, l, 0);
        const int64_t s0 = ps_graph_source(g, l, 0);
        for (int64_t h = 0; h < H; h++)
            ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)R, (int)C, (int)D, 1.0f, z.data + h * D, (int)QD, lw.w_o + h * D * C,
                     (int)C, 0.0f, v + (s0 + h) * RC, (int)C);
        memcpy(v + (s0 + H) * RC, mo.data, (size_t)RC * sizeof(float));
    }
    *out = v;
    *rows = R;
    v = NULL;
    rc = 0;
done:
    free(v);
    free(emb);
    ps_ref_means_free(&rm);
    return rc;
}
