// The logit lens: the accumulated residual stream at one position, stage by stage, through the final norm
// (recomputed per stage, or at its cached scale) and the unembedding; per stage the metric's logits, the
// answer's rank and the top-k tokens (ps_analysis.h has the layout).
#include "ps_analysis.h"
#include "ps_blas.h"
#include "ps_forward.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Stages as TransformerLens's accumulated_resid(incl_mid=True) lists them: each layer's resid_pre and resid_mid, then
// the final resid_post; a parallel-residual block (GPT-NeoX) has no resid_mid, so only resid_pre there.
int64_t ps_lens_n_stages(const ps_model_config *mc) { return (mc->parallel_residual ? 1 : 2) * mc->n_layers + 1; }

// Stage s's layer, and whether it is that layer's resid_mid.
static int64_t stage_layer(const ps_model_config *mc, int64_t s, int *mid) {
    *mid = !mc->parallel_residual && s % 2;
    return mc->parallel_residual ? s : s / 2;
}

int ps_lens_table_init(ps_table *t, const char *name, const ps_model_config *mc, int64_t n_rows, int64_t top_k, ps_error *e) {
    if (top_k < 0 || top_k > mc->d_vocab)
        return ps_fail(e, PS_EXIT_BADINPUT, "logit_lens %s: top_k %lld outside [0, %lld]", name, (long long)top_k, (long long)mc->d_vocab);
    int64_t S = ps_lens_n_stages(mc), Q = PS_LENS_QUANTITIES + top_k, L = mc->n_layers;
    int64_t *sval = malloc((size_t)S * sizeof *sval), *qval = malloc((size_t)Q * sizeof *qval);
    char **slab = calloc((size_t)S, sizeof *slab), **qlab = calloc((size_t)Q, sizeof *qlab);
    int rc = -1;
    if (!sval || !qval || !slab || !qlab) { ps_fail(e, PS_EXIT_RUNTIME, "logit_lens %s: out of memory", name); goto done; }
    char buf[32];
    for (int64_t s = 0; s < S; s++) {
        sval[s] = s;
        int mid;
        const int64_t sl = stage_layer(mc, s, &mid);
        if (s == S - 1) snprintf(buf, sizeof buf, "final_post");
        else snprintf(buf, sizeof buf, "%lld_%s", (long long)sl, mid ? "mid" : "pre");
        if (!(slab[s] = strdup(buf))) { ps_fail(e, PS_EXIT_RUNTIME, "logit_lens %s: out of memory", name); goto done; }
    }
    static const char *qnames[PS_LENS_QUANTITIES] = {"logit_diff", "answer_logit", "wrong_logit", "answer_rank"};
    for (int64_t q = 0; q < Q; q++) {
        qval[q] = q;
        if (q < PS_LENS_QUANTITIES) snprintf(buf, sizeof buf, "%s", qnames[q]);
        else snprintf(buf, sizeof buf, "top%lld", (long long)(q - PS_LENS_QUANTITIES + 1));
        if (!(qlab[q] = strdup(buf))) { ps_fail(e, PS_EXIT_RUNTIME, "logit_lens %s: out of memory", name); goto done; }
    }
    int64_t vval[2] = {0, 1};
    char *vlab[2] = {"recompute", "cached"};
    ps_axis axes[3] = {{.name = "variant", .len = 2, .value = vval, .label = vlab},
                       {.name = "stage", .len = S, .value = sval, .label = slab},
                       {.name = "quantity", .len = Q, .value = qval, .label = qlab}};
    (void)L;
    if ((rc = ps_table_init(t, name, "logit_lens", 1, n_rows, 3, axes, 0, e)) == 0 &&
        (ps_table_attr_str(t, "recompute", "final norm recomputed per stage (TransformerLens >= 2.18 accumulated_resid(apply_ln=True))", e) ||
         ps_table_attr_str(t, "cached", "centred, / the final norm's cached scale, then its weight and bias (older TransformerLens)", e) ||
         ps_table_attr_i64(t, "top_k", top_k, e))) {
        ps_table_free(t);
        rc = -1;
    }
done:
    free(sval);
    free(qval);
    ps_labels_free(slab, S);
    ps_labels_free(qlab, Q);
    return rc;
}

int ps_lens_logits(const ps_model *m, const ps_cache *c, int64_t pos, float *logits, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t C = mc->d_model, L = mc->n_layers, V = mc->d_vocab, T = c->T, S = ps_lens_n_stages(mc);
    if (pos < 0 || pos >= T) return ps_fail(e, PS_EXIT_BADINPUT, "logit_lens: position %lld outside the prompt's %lld tokens", (long long)pos, (long long)T);
    if (!c->resid_pre || (!mc->parallel_residual && !c->resid_mid) || !c->resid_post || !c->lnf_scale)
        return ps_fail(e, PS_EXIT_RUNTIME, "logit_lens: the cache lacks an array it reads");
    float *y = malloc((size_t)(2 * S * C) * sizeof *y);
    if (!y) return ps_fail(e, PS_EXIT_RUNTIME, "logit_lens: out of memory");
    const int ln = mc->arch != PS_ARCH_LLAMA;   // LayerNorm: GPT-2 and GPT-NeoX
    const float s_f = c->lnf_scale[pos];
    for (int64_t s = 0; s < S; s++) {
        int mid;
        const int64_t sl = stage_layer(mc, s, &mid);
        const float *x = s == S - 1 ? c->resid_post + ((L - 1) * T + pos) * C : (mid ? c->resid_mid : c->resid_pre) + (sl * T + pos) * C;
        float *yr = y + s * C, *yc = y + (S + s) * C, scale;
        if (ln) ps_cpu_layernorm(yr, &scale, x, m->w.lnf_w, m->w.lnf_b, 1, C, mc->eps);
        else ps_cpu_rmsnorm(yr, &scale, x, m->w.lnf_w, 1, C, mc->eps);
        double mean = 0;
        if (ln) {
            for (int64_t i = 0; i < C; i++) mean += x[i];
            mean /= (double)C;
        }
        for (int64_t i = 0; i < C; i++)
            yc[i] = (float)((x[i] - mean) / s_f) * m->w.lnf_w[i] + (m->w.lnf_b ? m->w.lnf_b[i] : 0.0f);
    }
    // logits (2S, V) = y (2S, C) @ W_U^T; w_u is (V, C), one row per token.
    ps_sgemm(101, 111, 112, (int)(2 * S), (int)V, (int)C, 1.0f, y, (int)C, m->w.w_u, (int)C, 0.0f, logits, (int)V);
    if (m->w.b_u)   // NULL for Llama
        for (int64_t r = 0; r < 2 * S; r++)
            for (int64_t v = 0; v < V; v++) logits[r * V + v] += m->w.b_u[v];
    free(y);
    return 0;
}

int ps_lens_prompt(const ps_model *m, const ps_cache *c, int64_t pos, int32_t answer, int32_t wrong, int64_t top_k,
                   float *out, ps_error *e) {
    const int64_t V = m->cfg.d_vocab, S = ps_lens_n_stages(&m->cfg), Q = PS_LENS_QUANTITIES + top_k;
    if (answer < 0 || answer >= V || wrong < 0 || wrong >= V)
        return ps_fail(e, PS_EXIT_BADINPUT, "logit_lens: answer %d or wrong %d outside the vocabulary (%lld)", answer, wrong, (long long)V);
    if (top_k < 0 || top_k > V) return ps_fail(e, PS_EXIT_BADINPUT, "logit_lens: top_k %lld outside [0, %lld]", (long long)top_k, (long long)V);
    float *lg = malloc((size_t)(2 * S * V) * sizeof *lg);
    int64_t *top = malloc((size_t)(top_k ? top_k : 1) * sizeof *top);
    if (!lg || !top) { free(lg); free(top); return ps_fail(e, PS_EXIT_RUNTIME, "logit_lens: out of memory"); }
    if (ps_lens_logits(m, c, pos, lg, e) != 0) { free(lg); free(top); return -1; }
    for (int64_t r = 0; r < 2 * S; r++) {
        const float *l = lg + r * V;
        float *o = out + r * Q;
        int64_t rank = 0;
        for (int64_t v = 0; v < V; v++) rank += l[v] > l[answer];
        o[0] = l[answer] - l[wrong];
        o[1] = l[answer];
        o[2] = l[wrong];
        o[3] = (float)rank;
        // Top-k in one pass: top[0..n) sorted by logit, descending; ties keep the lower token id first.
        int64_t n = 0;
        for (int64_t v = 0; v < V && top_k > 0; v++) {
            if (n == top_k && !(l[v] > l[top[n - 1]])) continue;
            int64_t j = n < top_k ? n++ : n - 1;
            while (j > 0 && l[v] > l[top[j - 1]]) { top[j] = top[j - 1]; j--; }
            top[j] = v;
        }
        for (int64_t k = 0; k < top_k; k++) o[PS_LENS_QUANTITIES + k] = (float)top[k];
    }
    free(lg);
    free(top);
    return 0;
}
