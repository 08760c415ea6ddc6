// The reference backward pass (ps_backward.h): plain fp32 C, the reverse of cpu_forward.c's steps for one
// prompt's run, each step's backward reading what the forward cached (llm.c's forward/backward pairs).
// Unembedding -> final norm -> per layer, last first: MLP (mlp_step), attention (attention_step), its
// inputs (qkv_step) -> embeddings. Gradients go straight into the gradient cache; the working set is one
// layer's (T, C) buffer. GPT-NeoX's parallel block (resid_post = resid_pre + attn_out + mlp_out, the MLP on
// ln2(resid_pre)) has no resid_mid: there both branches' norm gradients meet at resid_pre.
#include "cpu_internal.h"
#include "ps_backward.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// Everything one backward pass reads and writes.
typedef struct {
    const ps_model_config *cfg;
    const ps_weights *w;
    const ps_cache *f;   // the forward's cache
    ps_cache *g;         // the gradients, same layout
    int64_t T;
    float *dxn;          // (T, C) gradient at a norm's output
    int64_t *pos;        // (T) 0..T-1, rotary's positions
} bwd;

// dx (N, in) = beta dx + dy (N, out) @ W^T, W (in, out): the gradient at a linear layer's input.
static void linear_backward(float *dx, const float *dy, const float *W, int64_t N, int64_t in, int64_t out, float beta) {
    if (N <= 0) return;
    ps_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)N, (int)in, (int)out, 1.0f, dy, (int)out, W, (int)out, beta, dx,
             (int)in);
}

// The model's norm backward (RMSNorm for Llama, LayerNorm for GPT-2): dx += through the norm; dscale its own.
static void norm_backward(const ps_model_config *cfg, float *dx, float *dscale, const float *dout, const float *x,
                          const float *scale, const float *w, int64_t N) {
    if (cfg->arch == PS_ARCH_LLAMA) ps_cpu_rmsnorm_backward(dx, dscale, dout, x, scale, w, N, cfg->d_model);
    else ps_cpu_layernorm_backward(dx, dscale, dout, x, scale, w, N, cfg->d_model);
}

// Unembedding and final norm: d resid_post[L-1] from d logits at the metric's positions.
static void unembed_backward(bwd *b, const ps_logit_grad *lg) {
    const ps_model_config *cfg = b->cfg;
    const int64_t L = cfg->n_layers, C = cfg->d_model, V = cfg->d_vocab, T = b->T;
    memset(b->dxn, 0, (size_t)(T * C) * sizeof(float));
    if (b->g->logits) memset(b->g->logits, 0, (size_t)(T * V) * sizeof(float));
    for (int64_t o = 0; o < lg->n_out; o++) {
        const int64_t t = lg->pos[o];
        const float *dl = lg->dlogits + o * V;
        // logits[t] = xn[t] @ W_U^T + b_U  =>  dxn[t] += dlogits[o] @ W_U (W_U: (V, C)). A sparse row (logit_diff's two
        // tokens) reads only its rows of W_U: the whole matrix (154 MB for GPT-2 small) made this one row-vector
        // product cost a third of a forward pass.
        int64_t nnz = 0;
        for (int64_t j = 0; j < V; j++) nnz += dl[j] != 0.0f;
        if (nnz * 16 < V) {
            for (int64_t j = 0; j < V; j++)
                if (dl[j] != 0.0f)
                    for (int64_t c = 0; c < C; c++) b->dxn[t * C + c] += dl[j] * b->w->w_u[j * C + c];
        } else {
            ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, 1, (int)C, (int)V, 1.0f, dl, (int)V, b->w->w_u, (int)C, 1.0f,
                     b->dxn + t * C, (int)C);
        }
        if (b->g->logits)
            for (int64_t j = 0; j < V; j++) b->g->logits[t * V + j] += lg->dlogits[o * V + j];
    }
    float *dx = b->g->resid_post + (L - 1) * T * C;
    memset(dx, 0, (size_t)(T * C) * sizeof(float));
    norm_backward(cfg, dx, b->g->lnf_scale, b->dxn, b->f->resid_post + (L - 1) * T * C, b->f->lnf_scale, b->w->lnf_w, T);
}

// mlp_step backward: from d resid_post[l] to d resid_mid[l] (mlp_out, mlp_post, mlp_pre[_linear], ln2 on the way);
// for a parallel block to d resid_pre[l]'s residual and ln2 parts (qkv_step_backward adds ln1's).
static void mlp_step_backward(bwd *b, int64_t l, const ps_layer_weights *lw) {
    const ps_model_config *cfg = b->cfg;
    const int64_t C = cfg->d_model, M = cfg->d_mlp, T = b->T;
    const int llama = cfg->arch == PS_ARCH_LLAMA;
    const ps_cache *f = b->f;
    ps_cache *g = b->g;
    const float *dpost_res = g->resid_post + l * T * C; // (T, C)
    float *dout = g->mlp_out + l * T * C;
    memcpy(dout, dpost_res, (size_t)(T * C) * sizeof(float));
    float *dpost = g->mlp_post + l * T * M, *dpre = g->mlp_pre + l * T * M;
    linear_backward(dpost, dout, lw->w_out, T, M, C, 0.0f);
    const float *pre = f->mlp_pre + l * T * M;
    if (llama) {
        // post = silu(gate) * up: d gate = d post * up * silu'(gate), d up = d post * silu(gate)
        const float *lin = f->mlp_pre_linear + l * T * M;
        float *dlin = g->mlp_pre_linear + l * T * M;
        for (int64_t i = 0; i < T * M; i++) {
            dpre[i] = dpost[i] * lin[i] * ps_cpu_act_backward(cfg->act, pre[i]);
            dlin[i] = dpost[i] * ps_cpu_act(cfg->act, pre[i]);
        }
        linear_backward(b->dxn, dpre, lw->w_in, T, C, M, 0.0f);
        linear_backward(b->dxn, dlin, lw->w_up, T, C, M, 1.0f);
    } else {
        for (int64_t i = 0; i < T * M; i++) dpre[i] = dpost[i] * ps_cpu_act_backward(cfg->act, pre[i]);
        linear_backward(b->dxn, dpre, lw->w_in, T, C, M, 0.0f);
    }
    // resid_post = resid_mid + mlp_out(ln2(resid_mid)): both branches meet at resid_mid (parallel: at resid_pre,
    // whose ln1 branch comes later).
    const int par = cfg->parallel_residual;
    float *dmid = (par ? g->resid_pre : g->resid_mid) + l * T * C;
    const float *x2 = (par ? f->resid_pre : f->resid_mid) + l * T * C;
    memcpy(dmid, dpost_res, (size_t)(T * C) * sizeof(float));
    norm_backward(cfg, dmid, g->ln2_scale + l * T, b->dxn, x2, f->ln2_scale + l * T, b->w->ln2_w + l * C, T);
}

// One key/value head group's attention backward (query heads h with h / group == kvh): pattern, scores, and
// the gradients at q, k, v (rotated q and k for Llama). dk, dv are this group's alone, so groups run in parallel.
typedef struct {
    const float *q, *k, *v, *pattern, *dz; // (T, QD), (T, KD), (T, KD), (H, T, T), (T, QD)
    float *dq, *dk, *dv, *dpattern, *dscores; // likewise; dscores may be NULL
    int64_t T, H, D, QD, KD, group;
    float inv_sqrt_d;
} attn_bwd;

static void attend_group_backward(const attn_bwd *a, int64_t kvh, float *dp) {
    const int64_t T = a->T, D = a->D, QD = a->QD, KD = a->KD;
    for (int64_t h = kvh * a->group; h < (kvh + 1) * a->group; h++) {
        for (int64_t t = 0; t < T; t++) {
            const float *p = a->pattern + (h * T + t) * T;
            const float *dzt = a->dz + t * QD + h * D;
            // z[t] = sum_j p[j] v[j]: d p[j] = dz[t] . v[j] at every key (masked ones too, as TL's pattern hook),
            // d v[j] += p[j] dz[t]
            double pdp = 0;
            for (int64_t j = 0; j < T; j++) {
                const float *vj = a->v + j * KD + kvh * D;
                float s = 0;
                for (int64_t d = 0; d < D; d++) s += dzt[d] * vj[d];
                dp[j] = s;
                if (j <= t) {
                    pdp += (double)p[j] * s;
                    float *dvj = a->dv + j * KD + kvh * D;
                    for (int64_t d = 0; d < D; d++) dvj[d] += p[j] * dzt[d];
                }
            }
            memcpy(a->dpattern + (h * T + t) * T, dp, (size_t)T * sizeof(float));
            // softmax: d s[j] = p[j] (d p[j] - sum_k p[k] d p[k]); zero at masked keys (p = 0)
            const float *qt = a->q + t * QD + h * D;
            float *dqt = a->dq + t * QD + h * D;
            for (int64_t j = 0; j < T; j++) {
                const float ds = j <= t ? p[j] * (float)(dp[j] - pdp) : 0.0f;
                if (a->dscores) a->dscores[(h * T + t) * T + j] = ds;
                if (j > t) continue;
                // s = q . k / sqrt(D)
                const float c = ds * a->inv_sqrt_d;
                const float *kj = a->k + j * KD + kvh * D;
                float *dkj = a->dk + j * KD + kvh * D;
                for (int64_t d = 0; d < D; d++) {
                    dqt[d] += c * kj[d];
                    dkj[d] += c * qt[d];
                }
            }
        }
    }
}

// attention_step backward: from d resid_mid[l] (= d attn_out; d resid_post[l] in a parallel block) through W_O
// and attention to d q, k, v.
static int attention_step_backward(bwd *b, int64_t l, const ps_layer_weights *lw, ps_error *e) {
    const ps_model_config *cfg = b->cfg;
    const int64_t C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads, D = cfg->d_head, T = b->T;
    const int64_t QD = H * D, KD = Hkv * D;
    const int rotary = cfg->rotary_dim > 0; // Llama and GPT-NeoX: scores read the rotated q and k
    const ps_cache *f = b->f;
    ps_cache *g = b->g;
    const float *dmid = (cfg->parallel_residual ? g->resid_post : g->resid_mid) + l * T * C;
    float *dattn = g->attn_out + l * T * C;
    memcpy(dattn, dmid, (size_t)(T * C) * sizeof(float));
    // attn_out = sum_h result[h] + b_O: every head's result gets the whole gradient.
    if (g->result)
        for (int64_t t = 0; t < T; t++)
            for (int64_t h = 0; h < H; h++)
                memcpy(g->result + ((l * T + t) * H + h) * C, dattn + t * C, (size_t)C * sizeof(float));
    float *dz = g->z + l * T * QD;
    linear_backward(dz, dattn, lw->w_o, T, QD, C, 0.0f);
    float *dq = (rotary ? g->rot_q : g->q) + l * T * QD, *dk = (rotary ? g->rot_k : g->k) + l * T * KD;
    float *dv = g->v + l * T * KD;
    memset(dq, 0, (size_t)(T * QD) * sizeof(float));
    memset(dk, 0, (size_t)(T * KD) * sizeof(float));
    memset(dv, 0, (size_t)(T * KD) * sizeof(float));
    const attn_bwd a = {.q = (rotary ? f->rot_q : f->q) + l * T * QD, .k = (rotary ? f->rot_k : f->k) + l * T * KD,
                        .v = f->v + l * T * KD, .pattern = f->pattern + l * H * T * T, .dz = dz, .dq = dq, .dk = dk, .dv = dv,
                        .dpattern = g->pattern + l * H * T * T, .dscores = g->attn_scores ? g->attn_scores + l * H * T * T : NULL,
                        .T = T, .H = H, .D = D, .QD = QD, .KD = KD, .group = H / Hkv, .inv_sqrt_d = 1.0f / sqrtf((float)D)};
    int oom = 0;
#pragma omp parallel if (H * T * T * D >= PS_PAR_MIN) reduction(| : oom)
    {
        float *dp = malloc((size_t)T * sizeof(float));
        oom = !dp;
#pragma omp for schedule(dynamic, 1)
        for (int64_t kvh = 0; kvh < Hkv; kvh++)
            if (dp) attend_group_backward(&a, kvh, dp);
        free(dp);
    }
    if (oom) return ps_fail(e, PS_EXIT_RUNTIME, "backward: out of memory");
    if (rotary) {
        // hook_q / hook_k are before rotary (of the first rotary_dim dims of a head): rotate the gradients back.
        float *gq = g->q + l * T * QD, *gk = g->k + l * T * KD;
        memcpy(gq, dq, (size_t)(T * QD) * sizeof(float));
        memcpy(gk, dk, (size_t)(T * KD) * sizeof(float));
        ps_cpu_rotary_backward(gq, T, H, D, cfg->rotary_dim, b->pos, cfg->rope_theta);
        ps_cpu_rotary_backward(gk, T, Hkv, D, cfg->rotary_dim, b->pos, cfg->rope_theta);
    }
    return 0;
}

// qkv_step backward: d q, k, v (before rotary) through W_Q/W_K/W_V and ln1 to d resid_pre[l].
static void qkv_step_backward(bwd *b, int64_t l, const ps_layer_weights *lw) {
    const ps_model_config *cfg = b->cfg;
    const int64_t C = cfg->d_model, T = b->T, QD = cfg->n_heads * cfg->d_head, KD = cfg->n_kv_heads * cfg->d_head;
    const ps_cache *f = b->f;
    ps_cache *g = b->g;
    linear_backward(b->dxn, g->q + l * T * QD, lw->w_q, T, C, QD, 0.0f);
    linear_backward(b->dxn, g->k + l * T * KD, lw->w_k, T, C, KD, 1.0f);
    linear_backward(b->dxn, g->v + l * T * KD, lw->w_v, T, C, KD, 1.0f);
    // resid_mid = resid_pre + attn(ln1(resid_pre)); in a parallel block dpre already holds the residual and ln2
    // parts.
    float *dpre = g->resid_pre + l * T * C;
    if (!cfg->parallel_residual) memcpy(dpre, g->resid_mid + l * T * C, (size_t)(T * C) * sizeof(float));
    norm_backward(cfg, dpre, g->ln1_scale + l * T, b->dxn, f->resid_pre + l * T * C, f->ln1_scale + l * T, b->w->ln1_w + l * C, T);
}

int ps_cpu_backward(const ps_model *m, const ps_cache *fwd, const ps_logit_grad *lg, ps_cache *grad, ps_error *e) {
    const ps_model_config *cfg = &m->cfg;
    const int64_t L = cfg->n_layers, C = cfg->d_model, T = fwd->T;
    if (T <= 0 || grad->T != T || !grad->memory || !fwd->memory)
        return ps_fail(e, PS_EXIT_RUNTIME, "backward: the gradient cache is not one of %lld tokens", (long long)T);
    for (int64_t o = 0; o < lg->n_out; o++)
        if (lg->pos[o] < 0 || lg->pos[o] >= T)
            return ps_fail(e, PS_EXIT_RUNTIME, "backward: metric position %lld outside [0, %lld)", (long long)lg->pos[o], (long long)T);
    ps_blas_set_num_threads(1);
    bwd b = {.cfg = cfg, .w = &m->w, .f = fwd, .g = grad, .T = T};
    b.dxn = malloc((size_t)(T * C) * sizeof(float));
    b.pos = malloc((size_t)T * sizeof(int64_t));
    int rc = 0;
    if (!b.dxn || !b.pos) {
        rc = ps_fail(e, PS_EXIT_RUNTIME, "backward: out of memory for %lld tokens", (long long)T);
        goto done;
    }
    for (int64_t t = 0; t < T; t++) b.pos[t] = t;
    unembed_backward(&b, lg);
    for (int64_t l = L - 1; l >= 0; l--) {
        ps_layer_weights lw;
        if (ps_model_layer(m, l, &lw, e) != 0) { rc = -1; goto done; }
        mlp_step_backward(&b, l, &lw);
        if (attention_step_backward(&b, l, &lw, e) != 0) { rc = -1; goto done; }
        qkv_step_backward(&b, l, &lw);
        // resid_pre[l] is resid_post[l - 1]: the same value, so the same gradient.
        if (l > 0) memcpy(grad->resid_post + (l - 1) * T * C, grad->resid_pre + l * T * C, (size_t)(T * C) * sizeof(float));
    }
    // resid_pre[0] = embed (+ pos_embed)
    memcpy(grad->embed, grad->resid_pre, (size_t)(T * C) * sizeof(float));
    if (grad->pos_embed) memcpy(grad->pos_embed, grad->resid_pre, (size_t)(T * C) * sizeof(float));
done:
    free(b.dxn);
    free(b.pos);
    return rc;
}
