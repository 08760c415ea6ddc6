// Where a row's residual stream starts: the token (+ learned position) embedding for rows run from scratch,
// or the base run's cached residual stream for rows that join at a later layer or position.
#include "ps_cuda_internal.h"

// One block per token of [tok0, tok0 + ntok). tail: every token takes the base's resid_post at layer l.
template <typename T>
static __global__ void join_kernel(const ps_cu_row *rows, const int32_t *tok_row, const int32_t *tokens,
                                   const int64_t *pos, int64_t tok0, int64_t ntok, float *x, const T *wte, const T *wpe,
                                   int64_t l, int tail, int64_t C) {
    for (int64_t i = tok0 + blockIdx.x; i < tok0 + ntok; i += gridDim.x) {
        const ps_cu_row *row = &rows[tok_row[i]];
        const int64_t t = pos[i];
        float *xi = x + i * C;
        if (tail || row->from_base) {
            const ps_cu_arr b = tail ? row->base_resid_post : row->base_resid_pre;
            const float *src = b.p + l * b.layer + t * b.pos;
            for (int64_t c = threadIdx.x; c < C; c += blockDim.x) xi[c] = src[c];
            continue;
        }
        const T *te = wte + (int64_t)tokens[i] * C;
        const T *pe = wpe ? wpe + t * C : NULL;
        const ps_cu_arr ae = row->ca[PS_ARR_EMBED], ap = row->ca[PS_ARR_POS_EMBED];
        float *ce = ae.p ? ae.p + t * ae.pos : NULL, *cp = ap.p ? ap.p + t * ap.pos : NULL;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            const float a = ps_to_f(te[c]);
            float v = a;
            if (ce) ce[c] = a;
            if (pe) {
                const float b = ps_to_f(pe[c]);
                v += b;
                if (cp) cp[c] = b;
            }
            xi[c] = v;
        }
    }
}

int ps_cu_join_launch(cudaStream_t st, const ps_cu_row *rows, const int32_t *tok_row, const int32_t *tokens,
                      const int64_t *pos, int64_t tok0, int64_t tok1, float *x, ps_cu_mat wte, ps_cu_mat wpe,
                      int64_t l, int tail, int64_t C, ps_error *e) {
    PS_REQUIRE(e, tok0 >= 0 && tok1 >= tok0 && C > 0 && l >= 0);
    if (tok1 == tok0) return 0;
    PS_REQUIRE(e, rows && tok_row && tokens && pos && x && wte.p);
    PS_REQUIRE(e, !wpe.p || wpe.dt == wte.dt);
    const int64_t ntok = tok1 - tok0;
    const unsigned blocks = (unsigned)(ntok < 65535 * 16 ? ntok : 65535 * 16);
    const int threads = C >= 512 ? 256 : 128;
    switch (wte.dt) {
    case PS_PREC_FP16:
        join_kernel<__half><<<blocks, threads, 0, st>>>(rows, tok_row, tokens, pos, tok0, ntok, x, (const __half *)wte.p,
                                                        (const __half *)wpe.p, l, tail, C);
        break;
    case PS_PREC_BF16:
        join_kernel<__nv_bfloat16><<<blocks, threads, 0, st>>>(rows, tok_row, tokens, pos, tok0, ntok, x,
                                                               (const __nv_bfloat16 *)wte.p,
                                                               (const __nv_bfloat16 *)wpe.p, l, tail, C);
        break;
    default:
        join_kernel<float><<<blocks, threads, 0, st>>>(rows, tok_row, tokens, pos, tok0, ntok, x, (const float *)wte.p,
                                                       (const float *)wpe.p, l, tail, C);
        break;
    }
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_join(ps_cu_ctx *c, ps_cu_batch *bt, int64_t tok0, int64_t tok1, int64_t l, int tail, ps_error *e) {
    return ps_cu_join_launch(c->stream, bt->rows, bt->tok_row, bt->tokens, bt->pos, tok0, tok1, bt->x, c->w.wte, c->w.wpe,
                             l, tail, c->cfg.d_model, e);
}
