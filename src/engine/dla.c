// Direct logit attribution: the logit difference at one position split over the components that write the
// final residual stream (embeddings, attention and MLP outputs, heads, neurons, biases), in TransformerLens's
// convention and in the exact one that sums to the logit difference (ps_analysis.h has the definitions), of a
// prompt's run or of its run with components ablated.
#include "ps_analysis.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// LayerNorm and biases: GPT-2 and GPT-NeoX (Llama has RMSNorm and none); learned positions: GPT-2 only.
static int has_biases(const ps_model_config *mc) { return mc->arch != PS_ARCH_LLAMA; }
static int has_pos_embed(const ps_model_config *mc) { return mc->arch == PS_ARCH_GPT2; }

int64_t ps_dla_n_components(const ps_model_config *mc, int neurons) {
    int64_t L = mc->n_layers, b = has_biases(mc);
    int64_t k = 1 + has_pos_embed(mc) + 2 * L + L * mc->n_heads + b * L + 1;
    if (neurons) k += L * mc->d_mlp + b * L;
    return k;
}

void ps_labels_free(char **labels, int64_t n) {
    if (!labels) return;
    for (int64_t i = 0; i < n; i++) free(labels[i]);
    free(labels);
}

char **ps_dla_labels(const ps_model_config *mc, int neurons) {
    int64_t K = ps_dla_n_components(mc, neurons), k = 0, L = mc->n_layers;
    char **lab = calloc((size_t)K, sizeof *lab);
    if (!lab) return NULL;
    char buf[64];
#define ADD(...) do { snprintf(buf, sizeof buf, __VA_ARGS__); if (!(lab[k++] = strdup(buf))) goto oom; } while (0)
    ADD("embed");
    if (has_pos_embed(mc)) ADD("pos_embed");
    for (int64_t l = 0; l < L; l++) { ADD("%lld_attn_out", (long long)l); ADD("%lld_mlp_out", (long long)l); }
    for (int64_t l = 0; l < L; l++)
        for (int64_t h = 0; h < mc->n_heads; h++) ADD("L%lldH%lld", (long long)l, (long long)h);
    if (has_biases(mc))
        for (int64_t l = 0; l < L; l++) ADD("L%lld_b_O", (long long)l);
    ADD("final_bias");
    if (neurons) {
        for (int64_t l = 0; l < L; l++)
            for (int64_t n = 0; n < mc->d_mlp; n++) ADD("L%lldN%lld", (long long)l, (long long)n);
        if (has_biases(mc))
            for (int64_t l = 0; l < L; l++) ADD("L%lld_b_out", (long long)l);
    }
#undef ADD
    return lab;
oom:
    ps_labels_free(lab, K);
    return NULL;
}

int ps_dla_table_init(ps_table *t, const char *name, const ps_model_config *mc, int64_t n_rows, int neurons, int answer_only,
                      ps_error *e) {
    int64_t K = ps_dla_n_components(mc, neurons);
    char **lab = ps_dla_labels(mc, neurons);
    int64_t *val = malloc((size_t)K * sizeof *val);
    int64_t vval[2] = {0, 1};
    char *vlab[2] = {"tl", "exact"};
    if (!lab || !val) {
        ps_labels_free(lab, K);
        free(val);
        return ps_fail(e, PS_EXIT_RUNTIME, "dla %s: out of memory for %lld component labels", name, (long long)K);
    }
    for (int64_t k = 0; k < K; k++) val[k] = k;
    ps_axis axes[2] = {{.name = "variant", .len = 2, .value = vval, .label = vlab},
                       {.name = "component", .len = K, .value = val, .label = lab}};
    int rc = ps_table_init(t, name, "dla", 1, n_rows, 2, axes, 0, e);
    ps_labels_free(lab, K);
    free(val);
    if (rc == 0 && (ps_table_attr_str(t, "tl", "TransformerLens logit_attrs: centred (LayerNorm), / cached final-norm scale, no norm weight", e) ||
                    ps_table_attr_str(t, "exact", answer_only ? "with the final norm's weight at its cached scale; parts + final_bias = the answer's logit"
                                                        : "with the final norm's weight at its cached scale; parts + final_bias = logit diff", e) ||
                    ps_table_attr_str(t, "target", answer_only ? "answer" : "answer - wrong", e) ||
                    ps_table_attr_i64(t, "neurons", neurons, e))) {
        ps_table_free(t);
        return -1;
    }
    return rc;
}

static double dot(const float *x, const double *u, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)x[i] * u[i];
    return s;
}

// g (rows) = W (rows, C) @ u (C): what one unit (a head's dimension, a neuron) adds per unit of activation.
static void project(double *g, const float *W, const double *u, int64_t rows, int64_t C) {
    for (int64_t r = 0; r < rows; r++) g[r] = dot(W + r * C, u, C);
}

// What a prompt's decomposition needs of its (answer, wrong) pair, before the final-norm scale: per variant the
// direction u (C) a residual vector is dotted with (the norm's weight folded in for "exact", centred for
// LayerNorm), its projections through every layer's W_O (L, H*D) and W_out (L, M), the dot products with b_O
// and b_out (L each), and the final bias term. A prompt divides by its own scale: sum x_i u_i / s.
typedef struct {
    int32_t answer, wrong;
    int neurons;
    double *u, *g_o, *g_out, *b_o, *b_out;   // (2, C), (2, L, H*D), (2, L, M) or NULL, (2, L), (2, L); in one block
    double fb;
} dla_dirs;

struct ps_dla_memo {
    dla_dirs *d;
    int64_t n, cap, max_n;
};

ps_dla_memo *ps_dla_memo_new(const ps_model_config *mc, size_t max_bytes) {
    ps_dla_memo *mm = calloc(1, sizeof *mm);
    if (!mm) return NULL;
    const size_t per = (size_t)(2 * (mc->d_model + mc->n_layers * (mc->n_heads * mc->d_head + mc->d_mlp + 2))) * sizeof(double);
    mm->max_n = (int64_t)(max_bytes / (per ? per : 1));
    return mm;
}

void ps_dla_memo_free(ps_dla_memo *mm) {
    if (!mm) return;
    for (int64_t i = 0; i < mm->n; i++) free(mm->d[i].u);
    free(mm->d);
    free(mm);
}

static void dirs_free(dla_dirs *d) { free(d->u); }

// Fills d for (answer, wrong) (wrong -1: the answer alone).
static int dirs_make(const ps_model *m, int32_t answer, int32_t wrong, int neurons, dla_dirs *d, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t C = mc->d_model, L = mc->n_layers, HD = mc->n_heads * mc->d_head, M = mc->d_mlp;
    const int bias = has_biases(mc);
    *d = (dla_dirs){.answer = answer, .wrong = wrong, .neurons = neurons};
    double *blk = malloc((size_t)(2 * (C + L * HD + (neurons ? L * M : 0) + 2 * L)) * sizeof *blk);
    if (!blk) return ps_fail(e, PS_EXIT_RUNTIME, "dla: out of memory");
    d->u = blk;
    d->g_o = d->u + 2 * C;
    d->g_out = neurons ? d->g_o + 2 * L * HD : NULL;
    d->b_o = d->g_o + 2 * L * HD + (neurons ? 2 * L * M : 0);
    d->b_out = d->b_o + 2 * L;
    const float *wa = m->w.w_u + (int64_t)answer * C, *ww = wrong >= 0 ? m->w.w_u + (int64_t)wrong * C : NULL;   // NULL: answer alone
    for (int v = 0; v < 2; v++) {
        double *uv = d->u + v * C, mean = 0;
        for (int64_t i = 0; i < C; i++) {
            uv[i] = (double)wa[i] - (ww ? ww[i] : 0.0f);
            if (v == 1) uv[i] *= m->w.lnf_w[i];
            mean += uv[i];
        }
        mean /= (double)C;
        // Centring x before the dot product equals centring the direction: sum (x_i - mean x) u_i = x . (u - mean u).
        if (bias)
            for (int64_t i = 0; i < C; i++) uv[i] -= mean;
    }
    for (int64_t l = 0; l < L; l++) {
        ps_layer_weights lw;
        if (ps_model_layer(m, l, &lw, e) != 0) {
            dirs_free(d);
            return -1;
        }
        for (int v = 0; v < 2; v++) {
            const double *uv = d->u + v * C;
            project(d->g_o + (v * L + l) * HD, lw.w_o, uv, HD, C);   // w_o: (H*D, C)
            if (neurons) project(d->g_out + (v * L + l) * M, lw.w_out, uv, M, C);   // w_out: (M, C)
            d->b_o[v * L + l] = bias ? dot(m->w.b_o + l * C, uv, C) : NAN;
            d->b_out[v * L + l] = bias && neurons ? dot(m->w.b_out + l * C, uv, C) : NAN;
        }
    }
    double fb = m->w.b_u ? (double)m->w.b_u[answer] - (wrong >= 0 ? m->w.b_u[wrong] : 0.0f) : 0.0;   // b_u: NULL for Llama
    if (m->w.lnf_b)
        for (int64_t i = 0; i < C; i++) fb += (double)m->w.lnf_b[i] * ((double)wa[i] - (ww ? ww[i] : 0.0f));
    d->fb = fb;
    return 0;
}

// The pair's directions (*d) from the memo, made (and kept while there is room) when absent; made and not kept, they
// are tmp's, which the caller frees (dirs_free; a kept tmp is zeroed).
static int dirs_get(const ps_model *m, ps_dla_memo *mm, int32_t answer, int32_t wrong, int neurons, dla_dirs **d, dla_dirs *tmp,
                    ps_error *e) {
    for (int64_t i = 0; mm && i < mm->n; i++)
        if (mm->d[i].answer == answer && mm->d[i].wrong == wrong && mm->d[i].neurons == neurons) {
            *d = &mm->d[i];
            return 0;
        }
    if (dirs_make(m, answer, wrong, neurons, tmp, e) != 0) return -1;
    *d = tmp;
    if (!mm || mm->n >= mm->max_n) return 0;
    if (mm->n == mm->cap) {
        int64_t cap = mm->cap ? 2 * mm->cap : 16;
        dla_dirs *nd = realloc(mm->d, (size_t)cap * sizeof *nd);
        if (!nd) return 0;   // not kept: the numbers are the same
        mm->d = nd;
        mm->cap = cap;
    }
    mm->d[mm->n] = *tmp;
    *d = &mm->d[mm->n++];
    memset(tmp, 0, sizeof *tmp);
    return 0;
}

int ps_dla_prompt_memo(const ps_model *m, ps_dla_memo *memo, const ps_cache *c, int64_t pos, int32_t answer, int32_t wrong, int neurons,
                       float *out, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t C = mc->d_model, L = mc->n_layers, H = mc->n_heads, D = mc->d_head, M = mc->d_mlp, V = mc->d_vocab;
    const int64_t T = c->T, K = ps_dla_n_components(mc, neurons), HD = H * D;
    const int bias = has_biases(mc);
    if (pos < 0 || pos >= T) return ps_fail(e, PS_EXIT_BADINPUT, "dla: position %lld outside the prompt's %lld tokens", (long long)pos, (long long)T);
    if (answer < 0 || answer >= V || wrong < -1 || wrong >= V)
        return ps_fail(e, PS_EXIT_BADINPUT, "dla: answer %d or wrong %d outside the vocabulary (%lld)", answer, wrong, (long long)V);
    if (!c->z || !c->attn_out || !c->mlp_out || !c->lnf_scale || (neurons && !c->mlp_post))
        return ps_fail(e, PS_EXIT_RUNTIME, "dla: the cache lacks an array it reads");
    dla_dirs tmp = {0}, *d = NULL;
    if (dirs_get(m, memo, answer, wrong, neurons, &d, &tmp, e) != 0) return -1;
    const double s = c->lnf_scale[pos];
    for (int64_t i = 0; i < 2 * K; i++) out[i] = NAN;
    for (int v = 0; v < 2; v++) {
        const double *uv = d->u + v * C;
        float *o = out + v * K;
        int64_t k = 0;
        o[k++] = (float)(dot(c->embed + pos * C, uv, C) / s);
        if (has_pos_embed(mc)) o[k++] = (float)(dot(c->pos_embed + pos * C, uv, C) / s);
        for (int64_t l = 0; l < L; l++) {
            o[k++] = (float)(dot(c->attn_out + (l * T + pos) * C, uv, C) / s);
            o[k++] = (float)(dot(c->mlp_out + (l * T + pos) * C, uv, C) / s);
        }
        int64_t k_heads = k, k_bo = k_heads + L * H;
        int64_t k_fb = k_bo + bias * L, k_neur = k_fb + 1, k_bout = k_neur + L * M;
        for (int64_t l = 0; l < L; l++) {
            const double *g = d->g_o + (v * L + l) * HD;
            const float *z = c->z + (l * T + pos) * HD;
            for (int64_t h = 0; h < H; h++) {
                double a = 0;
                for (int64_t j = 0; j < D; j++) a += (double)z[h * D + j] * g[h * D + j];
                o[k_heads + l * H + h] = (float)(a / s);
            }
            if (bias) o[k_bo + l] = (float)(d->b_o[v * L + l] / s);
            if (neurons) {
                const double *gn = d->g_out + (v * L + l) * M;
                const float *post = c->mlp_post + (l * T + pos) * M;
                for (int64_t n = 0; n < M; n++) o[k_neur + l * M + n] = (float)((double)post[n] * gn[n] / s);
                if (bias) o[k_bout + l] = (float)(d->b_out[v * L + l] / s);
            }
        }
        if (v == 1) o[k_fb] = (float)d->fb;
    }
    dirs_free(&tmp);
    return 0;
}

int ps_dla_prompt(const ps_model *m, const ps_cache *c, int64_t pos, int32_t answer, int32_t wrong, int neurons, float *out,
                  ps_error *e) {
    return ps_dla_prompt_memo(m, NULL, c, pos, answer, wrong, neurons, out, e);
}

int ps_dla_ablated(const ps_ablator *a, const ps_abl_set *set, int neurons, int answer_only, float *out, ps_error *e) {
    const int64_t n = a->ps->n, K = ps_dla_n_components(&a->m->cfg, neurons);
    ps_cache *caches = calloc((size_t)(n ? n : 1), sizeof *caches);
    if (!caches) return ps_fail(e, PS_EXIT_RUNTIME, "dla: out of memory for %lld ablated runs", (long long)n);
    if (ps_ablator_runs(a, set, caches, e) != 0) {   // it holds no cache then
        free(caches);
        return -1;
    }
    ps_dla_memo *memo = ps_dla_memo_new(&a->m->cfg, (size_t)64 << 20);
    int rc = memo ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "dla: out of memory");
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        const ps_prompt *p = &a->ps->p[i];
        rc = ps_dla_prompt_memo(a->m, memo, &caches[i], p->score_pos, p->answer_id, answer_only ? -1 : p->wrong_id, neurons, out + i * 2 * K, e);
    }
    ps_dla_memo_free(memo);
    ps_backend_drop_caches(a->be, caches, n);
    free(caches);
    return rc;
}
