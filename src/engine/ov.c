// OV copy and next scores: a set of member tokens (digits, months, ...) in order, each one's first-layer residual
// sent through one head's OV circuit (its ln1, W_V + b_V, +-W_O), the final norm recomputed and the
// unembedding; the copy hit is the member itself among the top-k tokens (the IOI paper's copy score), the next
// hit the following member (sequence continuation's "next" score: 4 -> 5, March -> April).
#include "ps_analysis.h"
#include "ps_blas.h"
#include "ps_forward.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// xn (n, C): rows after layer l's ln1 (ln1_rows). Fails only on a head outside the model or out of memory.
static int ov_logits_normed(const ps_model *m, const float *xn, int64_t n, int64_t l, int64_t h, float sign, float *logits, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t C = mc->d_model, D = mc->d_head, H = mc->n_heads, Hkv = mc->n_kv_heads, V = mc->d_vocab;
    if (l < 0 || l >= mc->n_layers || h < 0 || h >= H)
        return ps_fail(e, PS_EXIT_BADINPUT, "ov_scores: head %lld.%lld outside the model (%lld layers, %lld heads)", (long long)l,
                       (long long)h, (long long)mc->n_layers, (long long)H);
    ps_layer_weights lw;
    if (ps_model_layer(m, l, &lw, e) != 0) return -1;
    const int gpt2 = mc->arch != PS_ARCH_LLAMA; // LayerNorm and biases: GPT-2 and GPT-NeoX
    const int64_t g = h / (H / Hkv);   // the key/value head query head h reads
    // xs (n, C): every row's normalized head output, unembedded by one GEMM (a GEMV per row is several times slower).
    float *x = malloc((size_t)(C + D) * sizeof *x), *xs = malloc((size_t)((n ? n : 1) * C) * sizeof *xs), scale;
    // Double accumulators, each summed in index order; the loops run along the weights' rows (contiguous).
    double *acc = malloc((size_t)(C > D ? C : D) * sizeof *acc);
    if (!x || !xs || !acc) {
        free(x);
        free(xs);
        free(acc);
        return ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    }
    float *o = x, *v = x + C;
    for (int64_t r = 0; r < n; r++) {
        const float *xr = xn + r * C;
        // v (D) = x @ W_V[:, g*D:(g+1)*D] + b_V; w_v is (C, Hkv*D).
        for (int64_t d = 0; d < D; d++) acc[d] = gpt2 ? m->w.b_v[l * Hkv * D + g * D + d] : 0.0;
        for (int64_t c = 0; c < C; c++) {
            const float *wr = lw.w_v + c * Hkv * D + g * D;
            const double xc = xr[c];
            for (int64_t d = 0; d < D; d++) acc[d] += xc * wr[d];
        }
        for (int64_t d = 0; d < D; d++) v[d] = (float)acc[d];
        // o (C) = sign * v @ W_O[h*D:(h+1)*D, :]; w_o is (H*D, C).
        for (int64_t c = 0; c < C; c++) acc[c] = 0;
        for (int64_t d = 0; d < D; d++) {
            const float *wr = lw.w_o + (h * D + d) * C;
            const double vd = v[d];
            for (int64_t c = 0; c < C; c++) acc[c] += vd * wr[c];
        }
        for (int64_t c = 0; c < C; c++) o[c] = (float)(sign * acc[c]);
        if (gpt2) ps_cpu_layernorm(xs + r * C, &scale, o, m->w.lnf_w, m->w.lnf_b, 1, C, mc->eps);
        else ps_cpu_rmsnorm(xs + r * C, &scale, o, m->w.lnf_w, 1, C, mc->eps);
    }
    if (n > 0) ps_sgemm(101, 111, 112, (int)n, (int)V, (int)C, 1.0f, xs, (int)C, m->w.w_u, (int)C, 0.0f, logits, (int)V);
    for (int64_t r = 0; m->w.b_u && r < n; r++)
        for (int64_t t = 0; t < V; t++) logits[r * V + t] += m->w.b_u[t];
    free(x);
    free(xs);
    free(acc);
    return 0;
}

// xn (n, C) = layer l's ln1 of each row of resid (a row at a time, as the forward pass normalizes).
static void ln1_rows(const ps_model *m, const float *resid, int64_t n, int64_t l, float *xn) {
    const ps_model_config *mc = &m->cfg;
    const int64_t C = mc->d_model;
    float scale;
    for (int64_t r = 0; r < n; r++) {
        if (mc->arch != PS_ARCH_LLAMA) ps_cpu_layernorm(xn + r * C, &scale, resid + r * C, m->w.ln1_w + l * C, m->w.ln1_b + l * C, 1, C, mc->eps);
        else ps_cpu_rmsnorm(xn + r * C, &scale, resid + r * C, m->w.ln1_w + l * C, 1, C, mc->eps);
    }
}

int ps_ov_logits(const ps_model *m, const float *resid, int64_t n, int64_t l, int64_t h, float sign, float *logits, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    if (l < 0 || l >= mc->n_layers) return ov_logits_normed(m, resid, 0, l, h, sign, logits, e);   // its message
    float *xn = malloc((size_t)((n ? n : 1) * mc->d_model) * sizeof *xn);
    if (!xn) return ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    ln1_rows(m, resid, n, l, xn);
    int rc = ov_logits_normed(m, xn, n, l, h, sign, logits, e);
    free(xn);
    return rc;
}

static const char *const ov_quantities[PS_OV_QUANTITIES] = {"copy_hit", "next_hit", "copy_rank", "next_rank"};

int ps_ov_table_init(ps_table *t, const char *name, const ps_model_config *mc, const int64_t *layers, int64_t n_layers,
                     const int64_t *heads, int64_t n_heads, const int32_t *tokens, char *const *token_label, int64_t n_tokens,
                     int64_t top_k, ps_error *e) {
    if (n_tokens < 1) return ps_fail(e, PS_EXIT_BADINPUT, "ov_scores %s: no member tokens", name);
    if (top_k < 1 || top_k > mc->d_vocab) return ps_fail(e, PS_EXIT_BADINPUT, "ov_scores %s: top_k %lld outside [1, %lld]", name, (long long)top_k, (long long)mc->d_vocab);
    for (int64_t i = 0; i < n_tokens; i++)
        if (tokens[i] < 0 || tokens[i] >= mc->d_vocab) return ps_fail(e, PS_EXIT_BADINPUT, "ov_scores %s: token %d outside the vocabulary", name, tokens[i]);
    int64_t nl = layers ? n_layers : mc->n_layers, nh = heads ? n_heads : mc->n_heads, nm = n_tokens + 1;
    int64_t nq = PS_OV_QUANTITIES + top_k;
    int64_t *lv = malloc((size_t)nl * sizeof *lv), *hv = malloc((size_t)nh * sizeof *hv);
    int64_t *mv = malloc((size_t)nm * sizeof *mv), *qv = malloc((size_t)nq * sizeof *qv);
    char **ml = calloc((size_t)nm, sizeof *ml), **ql = calloc((size_t)nq, sizeof *ql);
    int rc = -1;
    if (!lv || !hv || !mv || !qv || !ml || !ql) { ps_fail(e, PS_EXIT_RUNTIME, "ov_scores %s: out of memory", name); goto done; }
    for (int64_t i = 0; i < nl; i++) {
        lv[i] = layers ? layers[i] : i;
        if (lv[i] < 0 || lv[i] >= mc->n_layers) { ps_fail(e, PS_EXIT_BADINPUT, "ov_scores %s: layer %lld outside [0, %lld)", name, (long long)lv[i], (long long)mc->n_layers); goto done; }
    }
    for (int64_t i = 0; i < nh; i++) {
        hv[i] = heads ? heads[i] : i;
        if (hv[i] < 0 || hv[i] >= mc->n_heads) { ps_fail(e, PS_EXIT_BADINPUT, "ov_scores %s: head %lld outside [0, %lld)", name, (long long)hv[i], (long long)mc->n_heads); goto done; }
    }
    char buf[32];
    for (int64_t i = 0; i < nm; i++) {
        mv[i] = i < n_tokens ? tokens[i] : -1;
        const char *s = i == n_tokens ? "score" : token_label && token_label[i] ? token_label[i] : NULL;
        if (s && !(ml[i] = strdup(s))) { ps_fail(e, PS_EXIT_RUNTIME, "ov_scores %s: out of memory", name); goto done; }
    }
    for (int64_t q = 0; q < nq; q++) {
        qv[q] = q;
        if (q < PS_OV_QUANTITIES) snprintf(buf, sizeof buf, "%s", ov_quantities[q]);
        else snprintf(buf, sizeof buf, "top%lld", (long long)(q - PS_OV_QUANTITIES + 1));
        if (!(ql[q] = strdup(buf))) { ps_fail(e, PS_EXIT_RUNTIME, "ov_scores %s: out of memory", name); goto done; }
    }
    ps_axis axes[4] = {{.name = "layer", .len = nl, .value = lv}, {.name = "head", .len = nh, .value = hv},
                       {.name = "token", .len = nm, .value = mv, .label = ml}, {.name = "quantity", .len = nq, .value = qv, .label = ql}};
    if ((rc = ps_table_init(t, name, "ov_scores", 0, 1, 4, axes, 0, e)) == 0 &&
        (ps_table_attr_i64(t, "top_k", top_k, e) ||
         ps_table_attr_str(t, "score", "token 'score': copy_hit and next_hit as percentages of the members (next: all but the last)", e))) {
        ps_table_free(t);
        rc = -1;
    }
done:
    free(lv); free(hv); free(mv); free(qv);
    ps_labels_free(ml, nm);
    ps_labels_free(ql, nq);
    return rc;
}

// One head's cells of the table (layer li, head hi of its axes) from the rows after the layer's ln1 xn (n_rows, C).
// Scratch: lg (n_rows + n, V), top (top_k), acc (5 n).
static int ov_head(const ps_model *m, ps_table *t, const float *xn, int64_t n_rows, const int64_t *member_of, float sign, int64_t li,
                   int64_t hi, float *lg, int64_t *top, double *acc, ps_error *e) {
    const int64_t V = m->cfg.d_vocab;
    const ps_axis *al = &t->axes[0], *ah = &t->axes[1], *am = &t->axes[2], *aq = &t->axes[3];
    const int64_t n = am->len - 1, top_k = aq->len - PS_OV_QUANTITIES, Q = aq->len;
    float *mean = lg + n_rows * V;   // (n, V): each member's OV logits averaged over its occurrences
    if (ov_logits_normed(m, xn, n_rows, al->value[li], ah->value[hi], sign, lg, e) != 0) return -1;
    memset(acc, 0, (size_t)(5 * n) * sizeof *acc);
    memset(mean, 0, (size_t)(n * V) * sizeof *mean);
    for (int64_t r = 0; r < n_rows; r++) {
        const int64_t i = member_of ? member_of[r] : r, nxt = i + 1 < n ? am->value[i + 1] : -1;
        const float *l = lg + r * V;
        // The member's and the next member's ranks (tokens with a larger logit) and the running sum, in one pass.
        const float ls = l[am->value[i]], ln = nxt >= 0 ? l[nxt] : INFINITY;
        int64_t rs = 0, rn = 0;
        float *mi = mean + i * V;
        for (int64_t v = 0; v < V; v++) {
            rs += l[v] > ls;
            rn += l[v] > ln;
            mi[v] += l[v];
        }
        double *a = acc + 5 * i;
        a[0] += 1;
        a[1] += rs < top_k;
        a[2] += nxt >= 0 && rn < top_k;
        a[3] += (double)rs;
        a[4] += (double)rn;
    }
    float *cell = t->values + (li * ah->len + hi) * am->len * Q;
    double occ = 0, occ_next = 0, copy = 0, next = 0;
    for (int64_t i = 0; i < n; i++) {
        const double *a = acc + 5 * i;
        const int has_next = i + 1 < n;
        float *o = cell + i * Q, *l = mean + i * V;
        for (int64_t q = 0; q < Q; q++) o[q] = NAN;
        if (a[0] == 0) continue;   // the member never occurs
        for (int64_t v = 0; v < V; v++) l[v] = (float)(l[v] / a[0]);
        o[0] = (float)(a[1] / a[0]);
        o[2] = (float)(a[3] / a[0]);
        if (has_next) { o[1] = (float)(a[2] / a[0]); o[3] = (float)(a[4] / a[0]); }
        // Top-k of the mean logits in one pass, ties to the lower token id.
        int64_t k = 0;
        for (int64_t v = 0; v < V; v++) {
            if (k == top_k && !(l[v] > l[top[k - 1]])) continue;
            int64_t j = k < top_k ? k++ : k - 1;
            while (j > 0 && l[v] > l[top[j - 1]]) { top[j] = top[j - 1]; j--; }
            top[j] = v;
        }
        for (int64_t j = 0; j < top_k; j++) o[PS_OV_QUANTITIES + j] = (float)top[j];
        occ += a[0];
        copy += a[1];
        if (has_next) { occ_next += a[0]; next += a[2]; }
    }
    // The rates over every occurrence (the IOI paper's n_right / n; seqcont's per member when isolated).
    float *sc = cell + n * Q;
    for (int64_t q = 0; q < Q; q++) sc[q] = NAN;
    if (occ > 0) sc[0] = (float)(100.0 * copy / occ);
    if (occ_next > 0) sc[1] = (float)(100.0 * next / occ_next);
    return 0;
}

// Scratch logits kept per thread at most (heads run in parallel while their buffers fit).
#define OV_PAR_BYTES ((size_t)1 << 30)

int ps_ov_fill(const ps_model *m, ps_table *t, const float *resid, int64_t n_rows, const int64_t *member_of, float sign, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t V = mc->d_vocab;
    const ps_axis *al = &t->axes[0], *ah = &t->axes[1], *am = &t->axes[2], *aq = &t->axes[3];
    const int64_t n = am->len - 1, top_k = aq->len - PS_OV_QUANTITIES;
    if (!member_of && n_rows != n) return ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: %lld rows for %lld members", (long long)n_rows, (long long)n);
    float *xn = malloc((size_t)((n_rows ? n_rows : 1) * mc->d_model) * sizeof *xn);   // (n_rows, C): the rows after a layer's ln1
    if (!xn) return ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    // The heads of a layer are independent (each its own cells and scratch): on threads when the model is resident
    // (a streamed layer is fetched into one shared buffer) and every thread's scratch fits. Same numbers either way.
    const size_t scratch = (size_t)((n_rows + n) * V) * sizeof(float);
    const int nt = omp_get_max_threads();
    const int par = !m->stream && nt > 1 && ah->len > 1 && scratch * (size_t)nt <= OV_PAR_BYTES;
    int failed = 0;   // set once, by the first head that fails (its message in e)
    for (int64_t li = 0; li < al->len && !failed; li++) {
        if (al->value[li] >= 0 && al->value[li] < mc->n_layers) ln1_rows(m, resid, n_rows, al->value[li], xn);
#pragma omp parallel if (par)
        {
            float *lg = malloc(scratch ? scratch : 1);
            int64_t *top = malloc((size_t)top_k * sizeof *top);
            double *acc = malloc((size_t)(5 * n) * sizeof *acc);   // per member: occurrences, copy hits, next hits, rank sums
            ps_error e_own = {0};
            int bad = !lg || !top || !acc;
#pragma omp for schedule(dynamic, 1)
            for (int64_t hi = 0; hi < ah->len; hi++) {
                if (bad) continue;
                if (ov_head(m, t, xn, n_rows, member_of, sign, li, hi, lg, top, acc, &e_own) != 0) bad = 2;
            }
            if (bad) {
#pragma omp critical(ps_ov_fill_error)
                if (!failed) {
                    if (bad == 2) *e = e_own;
                    else ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
                    failed = 1;
                }
            }
            free(lg);
            free(top);
            free(acc);
        }
    }
    free(xn);
    return failed ? -1 : 0;
}
