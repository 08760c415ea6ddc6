// The CUDA backend's backward pass (ps_backend.backward): ps_cpu_backward's steps for one prompt's run
// (cpu_backward.c is the reference; each function below names the one it mirrors) as kernels and cuBLAS GEMMs,
// with the same contract (ps_backward.h): the forward's cache in (its device copy reused when the forward ran
// here, else uploaded, through the arena of cuda_memory.cu), the gradient at every array of grad out.
// Gradients are fp32; only the weight matrices are in the backend's precision (fp16/bf16 round the GEMM inputs).
// GPT-2 and Llama; for any other family it runs ps_cpu_backward itself, so the numbers are the reference's
// (today that refuses GPT-NeoX, as the CPU does).
// Unrun: no GPU has executed this file yet; tests/gpu/test_gpu_backward.c compares it with ps_cpu_backward.
#include "ps_cuda_internal.h"

#include <stdio.h>

// One backward pass: the host caches (for their layouts) and their device copies.
typedef struct {
    ps_cu_ctx *c;
    const ps_model_config *cfg;
    const ps_cache *f, *g;   // the forward's cache and the gradients (host)
    const float *fd;         // device copy of f (same layout)
    float *gd;               // device copy of g
    int64_t T;
    float *dxn;              // (T, C) gradient at a norm's output
    float *tmp;              // (n_out, C)
    float *ds;               // (H, T, T) d scores when g holds no attn_scores
    float *rope_cos, *rope_sin; // (T, R/2) the negated angles' table (rotary's transpose)
} bwd_t;

// Device address of array a at layer l (0 for per-run arrays) of host cache c whose copy starts at dev.
static float *at_layer(const ps_model_config *cfg, const ps_cache *c, const float *dev, ps_array a, int64_t l) {
    const float *h = ps_cache_array(c, a);
    if (!h) return NULL;
    return (float *)dev + (h - c->memory) + ps_array_at(cfg, a, c->T, l, 0, 0);
}
#define F(a, l) at_layer(b->cfg, b->f, b->fd, (a), (l))
#define G(a, l) at_layer(b->cfg, b->g, b->gd, (a), (l))

static int copy_dev(const bwd_t *b, float *dst, const float *src, int64_t n, ps_error *e) {
    PS_REQUIRE(e, dst && src && n >= 0);
    CUDA_CHECK(e, cudaMemcpyAsync(dst, src, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice, b->c->stream));
    return 0;
}

// linear_backward: dx (N, in) = beta dx + dy (N, out) @ W^T, W (in, out).
static int lin_bwd(ps_cu_ctx *c, float *dx, const float *dy, ps_cu_mat W, int64_t N, int64_t in, int64_t out, float beta,
                   ps_error *e) {
    return ps_cu_gemm_beta(c, dx, dy, W, N, out, in, 1, beta, e);
}

// unembed_backward: d resid_post[L-1] from d logits at the metric's positions (dlog (n, V), pos (n) on the device).
static int unembed_bwd(const bwd_t *b, const float *dlog, const int64_t *pos, int64_t n, ps_error *e) {
    const int64_t L = b->cfg->n_layers, C = b->cfg->d_model, T = b->T;
    CUDA_CHECK(e, cudaMemsetAsync(b->dxn, 0, (size_t)(T * C) * sizeof(float), b->c->stream));
    PS_TRY(ps_cu_op_unembed_backward(b->c, b->dxn, G(PS_ARR_LOGITS, 0), b->tmp, dlog, pos, n, e));
    // d resid_post[L-1] is zero here (the whole gradient was cleared): the norm's backward adds into it.
    return ps_cu_op_norm_backward(b->c, 0, 0, G(PS_ARR_RESID_POST, L - 1), G(PS_ARR_LNF_SCALE, 0), b->dxn,
                                  F(PS_ARR_RESID_POST, L - 1), F(PS_ARR_LNF_SCALE, 0), T, e);
}

// mlp_step_backward: from d resid_post[l] to d resid_mid[l].
static int mlp_bwd(const bwd_t *b, int64_t l, ps_error *e) {
    ps_cu_ctx *c = b->c;
    const ps_cu_weights *w = &c->w;
    const int64_t C = b->cfg->d_model, M = b->cfg->d_mlp, T = b->T;
    const int llama = b->cfg->arch == PS_ARCH_LLAMA;
    const float *dpost_res = G(PS_ARR_RESID_POST, l);
    float *dout = G(PS_ARR_MLP_OUT, l), *dpost = G(PS_ARR_MLP_POST, l), *dpre = G(PS_ARR_MLP_PRE, l);
    PS_TRY(copy_dev(b, dout, dpost_res, T * C, e));
    PS_TRY(lin_bwd(c, dpost, dout, ps_cu_mat_at(w->w_out, (size_t)(l * M * C)), T, M, C, 0.0f, e));
    const ps_cu_mat w_in = ps_cu_mat_at(w->w_in, (size_t)(l * C * M));
    if (llama) {
        // post = silu(gate) * up
        float *dlin = G(PS_ARR_MLP_PRE_LINEAR, l);
        PS_TRY(ps_cu_op_mlp_act_backward(c, dpre, dlin, dpost, F(PS_ARR_MLP_PRE, l), F(PS_ARR_MLP_PRE_LINEAR, l), T, e));
        PS_TRY(lin_bwd(c, b->dxn, dpre, w_in, T, C, M, 0.0f, e));
        PS_TRY(lin_bwd(c, b->dxn, dlin, ps_cu_mat_at(w->w_up, (size_t)(l * C * M)), T, C, M, 1.0f, e));
    } else {
        PS_TRY(ps_cu_op_mlp_act_backward(c, dpre, NULL, dpost, F(PS_ARR_MLP_PRE, l), NULL, T, e));
        PS_TRY(lin_bwd(c, b->dxn, dpre, w_in, T, C, M, 0.0f, e));
    }
    // resid_post = resid_mid + mlp_out(ln2(resid_mid)): both branches meet at resid_mid.
    float *dmid = G(PS_ARR_RESID_MID, l);
    PS_TRY(copy_dev(b, dmid, dpost_res, T * C, e));
    return ps_cu_op_norm_backward(c, 2, l, dmid, G(PS_ARR_LN2_SCALE, l), b->dxn, F(PS_ARR_RESID_MID, l),
                                  F(PS_ARR_LN2_SCALE, l), T, e);
}

// attention_step_backward: from d resid_mid[l] (= d attn_out) through W_O and attention to d q, k, v.
static int attention_bwd(const bwd_t *b, int64_t l, ps_error *e) {
    ps_cu_ctx *c = b->c;
    const ps_model_config *cfg = b->cfg;
    const int64_t C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads, D = cfg->d_head, T = b->T;
    const int64_t QD = H * D, KD = Hkv * D;
    const int rot = cfg->rotary_dim > 0;
    float *dattn = G(PS_ARR_ATTN_OUT, l);
    PS_TRY(copy_dev(b, dattn, G(PS_ARR_RESID_MID, l), T * C, e));
    // attn_out = sum_h result[h] + b_O: every head's result gets the whole gradient.
    if (b->g->result)
        PS_TRY(ps_cu_result_backward_launch(c->stream, ps_cu_arr_of(cfg, PS_ARR_RESULT, T, G(PS_ARR_RESULT, 0)), l, dattn,
                                            T, H, C, e));
    float *dz = G(PS_ARR_Z, l);
    PS_TRY(lin_bwd(c, dz, dattn, ps_cu_mat_at(c->w.w_o, (size_t)(l * QD * C)), T, QD, C, 0.0f, e));
    const ps_array aq = rot ? PS_ARR_ROT_Q : PS_ARR_Q, ak = rot ? PS_ARR_ROT_K : PS_ARR_K;
    float *dq = G(aq, l), *dk = G(ak, l), *dv = G(PS_ARR_V, l);
    float *ds = b->g->attn_scores ? G(PS_ARR_SCORES, l) : b->ds;
    PS_TRY(ps_cu_op_attention_backward(c, F(aq, l), F(ak, l), F(PS_ARR_V, l), F(PS_ARR_PATTERN, l), dz, dq, dk, dv,
                                       G(PS_ARR_PATTERN, l), ds, T, e));
    if (rot) {
        // hook_q / hook_k are before rotary: rotate the gradients back (the negated angles' table).
        float *gq = G(PS_ARR_Q, l), *gk = G(PS_ARR_K, l);
        PS_TRY(copy_dev(b, gq, dq, T * QD, e));
        PS_TRY(copy_dev(b, gk, dk, T * KD, e));
        PS_TRY(ps_cu_rotary_launch(c->stream, gq, b->rope_cos, b->rope_sin, T, H, D, cfg->rotary_dim, e));
        PS_TRY(ps_cu_rotary_launch(c->stream, gk, b->rope_cos, b->rope_sin, T, Hkv, D, cfg->rotary_dim, e));
    }
    return 0;
}

// qkv_step_backward: d q, k, v (before rotary) through W_Q/W_K/W_V and ln1 to d resid_pre[l].
static int qkv_bwd(const bwd_t *b, int64_t l, ps_error *e) {
    ps_cu_ctx *c = b->c;
    const ps_cu_weights *w = &c->w;
    const int64_t C = b->cfg->d_model, T = b->T, QD = b->cfg->n_heads * b->cfg->d_head, KD = b->cfg->n_kv_heads * b->cfg->d_head;
    PS_TRY(lin_bwd(c, b->dxn, G(PS_ARR_Q, l), ps_cu_mat_at(w->w_q, (size_t)(l * C * QD)), T, C, QD, 0.0f, e));
    PS_TRY(lin_bwd(c, b->dxn, G(PS_ARR_K, l), ps_cu_mat_at(w->w_k, (size_t)(l * C * KD)), T, C, KD, 1.0f, e));
    PS_TRY(lin_bwd(c, b->dxn, G(PS_ARR_V, l), ps_cu_mat_at(w->w_v, (size_t)(l * C * KD)), T, C, KD, 1.0f, e));
    // resid_mid = resid_pre + attn(ln1(resid_pre))
    float *dpre = G(PS_ARR_RESID_PRE, l);
    PS_TRY(copy_dev(b, dpre, G(PS_ARR_RESID_MID, l), T * C, e));
    return ps_cu_op_norm_backward(c, 1, l, dpre, G(PS_ARR_LN1_SCALE, l), b->dxn, F(PS_ARR_RESID_PRE, l),
                                  F(PS_ARR_LN1_SCALE, l), T, e);
}

// Everything after the checks and the placement of the forward's copy (fd): workspace, the reverse pass, the copy back.
static int backward_on_device(ps_cu_backend *im, const ps_model *m, const ps_cache *fwd, const float *fd,
                              const ps_logit_grad *lg, ps_cache *grad, ps_error *e) {
    ps_cu_ctx *c = &im->ctx;
    const ps_model_config *cfg = &m->cfg;
    const int64_t L = cfg->n_layers, C = cfg->d_model, H = cfg->n_heads, D = cfg->d_head, M = cfg->d_mlp,
                  V = cfg->d_vocab, T = fwd->T, n = lg->n_out, R = cfg->rotary_dim;
    const int64_t QD = H * D;
    const int rot = R > 0;
    // Rows x width of the widest GEMM input (rounded into the half buffer in fp16/bf16).
    int64_t wide = C > M ? C : M;
    wide = wide > QD ? wide : QD;
    const int64_t half_n = n * V > T * wide ? n * V : T * wide;
    size_t at = 0;
    const size_t o_g = ps_cu_take(&at, grad->n_floats * sizeof(float)), o_dxn = ps_cu_take(&at, (size_t)(T * C) * 4),
                 o_ds = ps_cu_take(&at, grad->attn_scores ? 0 : (size_t)(H * T * T) * 4),
                 o_tmp = ps_cu_take(&at, (size_t)(n * C) * 4), o_dl = ps_cu_take(&at, (size_t)(n * V) * 4),
                 o_pos = ps_cu_take(&at, (size_t)n * 8), o_rpos = ps_cu_take(&at, (size_t)T * 8),
                 o_cos = ps_cu_take(&at, rot ? (size_t)(T * (R / 2)) * 4 : 0),
                 o_sin = ps_cu_take(&at, rot ? (size_t)(T * (R / 2)) * 4 : 0),
                 o_half = ps_cu_take(&at, c->prec == PS_PREC_FP32 ? 0 : (size_t)half_n * 2);
    PS_TRY(ps_cu_ensure_ws(im, at, e));
    // Host staging (pinned): the metric's positions, then rotary's 0..T-1.
    PS_TRY(ps_cu_ensure_host(im, (size_t)(n + T) * 8 + 8, e));
    char *ws = im->ws;
    int64_t *hpos = (int64_t *)im->host;
    for (int64_t o = 0; o < n; o++) hpos[o] = lg->pos[o];
    for (int64_t t = 0; t < T; t++) hpos[n + t] = t;
    c->half_buf = c->prec == PS_PREC_FP32 ? NULL : ws + o_half;
    c->half_cap = c->prec == PS_PREC_FP32 ? 0 : (size_t)half_n;
    bwd_t b = {c, cfg, fwd, grad, fd, (float *)(ws + o_g), T, (float *)(ws + o_dxn), (float *)(ws + o_tmp),
               grad->attn_scores ? NULL : (float *)(ws + o_ds), rot ? (float *)(ws + o_cos) : NULL,
               rot ? (float *)(ws + o_sin) : NULL};
    const int64_t *dpos = (const int64_t *)(ws + o_pos), *drpos = (const int64_t *)(ws + o_rpos);
    const float *dlog = (const float *)(ws + o_dl);
    if (c->overflow) CUDA_CHECK(e, cudaMemsetAsync(c->overflow, 0, sizeof(int), c->stream));
    CUDA_CHECK(e, cudaMemsetAsync(b.gd, 0, grad->n_floats * sizeof(float), c->stream));
    if (n) {
        CUDA_CHECK(e, cudaMemcpyAsync((void *)dpos, hpos, (size_t)n * 8, cudaMemcpyHostToDevice, c->stream));
        // From the caller's pageable memory: the runtime stages it before returning.
        CUDA_CHECK(e, cudaMemcpyAsync((void *)dlog, lg->dlogits, (size_t)(n * V) * 4, cudaMemcpyHostToDevice, c->stream));
    }
    CUDA_CHECK(e, cudaMemcpyAsync((void *)drpos, hpos + n, (size_t)T * 8, cudaMemcpyHostToDevice, c->stream));
    if (rot) PS_TRY(ps_cu_rope_table_launch(c->stream, b.rope_cos, b.rope_sin, drpos, T, R, cfg->rope_theta, -1.0f, e));

    const bwd_t *bp = &b;
    PS_TRY(unembed_bwd(bp, dlog, dpos, n, e));
    for (int64_t l = L - 1; l >= 0; l--) {
        PS_TRY(mlp_bwd(bp, l, e));
        PS_TRY(attention_bwd(bp, l, e));
        PS_TRY(qkv_bwd(bp, l, e));
        // resid_pre[l] is resid_post[l - 1]: the same value, so the same gradient.
        if (l > 0) PS_TRY(copy_dev(bp, at_layer(cfg, grad, b.gd, PS_ARR_RESID_POST, l - 1),
                                   at_layer(cfg, grad, b.gd, PS_ARR_RESID_PRE, l), T * C, e));
    }
    // resid_pre[0] = embed (+ pos_embed)
    float *d0 = at_layer(cfg, grad, b.gd, PS_ARR_RESID_PRE, 0);
    PS_TRY(copy_dev(bp, at_layer(cfg, grad, b.gd, PS_ARR_EMBED, 0), d0, T * C, e));
    if (grad->pos_embed) PS_TRY(copy_dev(bp, at_layer(cfg, grad, b.gd, PS_ARR_POS_EMBED, 0), d0, T * C, e));

    int flag = 0;
    CUDA_CHECK(e, cudaMemcpyAsync(grad->memory, b.gd, grad->n_floats * sizeof(float), cudaMemcpyDeviceToHost, c->stream));
    if (c->overflow) CUDA_CHECK(e, cudaMemcpyAsync(&flag, c->overflow, sizeof flag, cudaMemcpyDeviceToHost, c->stream));
    CUDA_CHECK(e, cudaStreamSynchronize(c->stream));
    if (flag)
        return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend (fp16): a gradient exceeded fp16's range (65504) where it is rounded "
                       "for a matrix product; run this model with precision bf16 or fp32");
    return 0;
}

int ps_cu_backward(ps_cu_backend *im, const ps_model *m, const ps_cache *fwd, const ps_logit_grad *lg, ps_cache *grad,
                   ps_error *e) {
    const ps_model_config *cfg = &m->cfg;
    // Other families: the reference itself (it says which it covers).
    if (cfg->arch != PS_ARCH_GPT2 && cfg->arch != PS_ARCH_LLAMA) return ps_cpu_backward(m, fwd, lg, grad, e);
    if (cfg->n_layers != im->ctx.cfg.n_layers || cfg->d_model != im->ctx.cfg.d_model || cfg->d_vocab != im->ctx.cfg.d_vocab)
        return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: backward called with a different model than it was made for");
    const int64_t T = fwd->T;
    if (T <= 0 || grad->T != T || !grad->memory || !fwd->memory)
        return ps_fail(e, PS_EXIT_RUNTIME, "backward: the gradient cache is not one of %lld tokens", (long long)T);
    for (int64_t o = 0; o < lg->n_out; o++)
        if (lg->pos[o] < 0 || lg->pos[o] >= T)
            return ps_fail(e, PS_EXIT_RUNTIME, "backward: metric position %lld outside [0, %lld)", (long long)lg->pos[o], (long long)T);
    if (lg->n_out > 0 && !lg->dlogits) return ps_fail(e, PS_EXIT_RUNTIME, "backward: no d logits");
    // The forward's cache as the forward's rows read a base: its device copy, uploaded unless valid.
    im->clock++;
    size_t f_off = 0;
    int rc = ps_cu_cache_place(im, fwd, PS_CU_CACHE_INPUT, &f_off, e);
    if (!rc) rc = backward_on_device(im, m, fwd, ps_cu_cache_field(im, f_off, fwd, fwd->memory), lg, grad, e);
    im->ctx.half_buf = NULL;  // it pointed into the workspace, which a later call may move
    im->ctx.half_cap = 0;
    if (rc) {
        // Nothing queued may still run, and no copy this call touched is trusted again.
        if (cudaStreamSynchronize(im->ctx.stream) != cudaSuccess) (void)cudaGetLastError();
        ps_cu_cache_fail_call(im);
        return -1;
    }
    return 0;
}
