// The unembedding, computed only where asked: the final residual stream is gathered at the requested
// positions, and logits are made for the requested vocabulary columns only (a GEMM when all V are wanted).
#include "ps_cuda_internal.h"

// xo[j] = x[idx[j]] (rows of C floats); one block per gathered row.
static __global__ void gather_kernel(float *xo, const float *x, const int64_t *idx, int64_t n, int64_t C) {
    for (int64_t j = blockIdx.x; j < n; j += gridDim.x) {
        const float *src = x + idx[j] * C;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) xo[j * C + c] = src[c];
    }
}

// One block per job (one output position of one row); one warp per requested column. x is rounded to the
// weights' type first so that the numbers match the GEMM path, which rounds its inputs the same way.
template <typename T>
static __global__ void unembed_cols_kernel(float *out, const float *xo, const ps_cu_unembed_job *jobs,
                                           const int32_t *cols, const T *w_u, const float *b_u, int64_t C,
                                           int *overflow) {
    const ps_cu_unembed_job jb = jobs[blockIdx.x];
    const float *xv = xo + jb.xo * C;
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nwarp = blockDim.x >> 5;
    for (int64_t c = wid; c < jb.n_cols; c += nwarp) {
        const int32_t col = cols[jb.col0 + c];
        const T *wu = w_u + (int64_t)col * C;
        float acc = 0;
        for (int64_t d = lane; d < C; d += 32) {
            const float xr = ps_to_f(ps_from_f<T>(xv[d]));
            if (overflow && isinf(xr) && isfinite(xv[d])) *overflow = 1;  // fp16 above 65504 (as gemm.cu's cast)
            acc += xr * ps_to_f(wu[d]);
        }
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
        if (lane == 0) out[jb.out + c] = acc + (b_u ? b_u[col] : 0.0f);
    }
}

int ps_cu_gather_launch(cudaStream_t st, float *xo, const float *x, const int64_t *idx, int64_t n, int64_t C,
                        ps_error *e) {
    PS_REQUIRE(e, n >= 0 && C > 0);
    if (n == 0) return 0;
    PS_REQUIRE(e, xo && x && idx && xo != x);
    const unsigned blocks = (unsigned)(n < 65535 * 16 ? n : 65535 * 16);
    gather_kernel<<<blocks, 128, 0, st>>>(xo, x, idx, n, C);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_unembed_cols_launch(cudaStream_t st, float *out, const float *xo, const ps_cu_unembed_job *jobs,
                              int64_t n_jobs, const int32_t *cols, ps_cu_mat w_u, const float *b_u, int64_t C,
                              int *overflow, ps_error *e) {
    PS_REQUIRE(e, n_jobs >= 0 && n_jobs <= 0x7fffffff && C > 0);
    if (n_jobs == 0) return 0;
    PS_REQUIRE(e, out && xo && jobs && cols && w_u.p);
    const unsigned blocks = (unsigned)n_jobs;
    switch (w_u.dt) {
    case PS_PREC_FP16:
        unembed_cols_kernel<__half><<<blocks, 128, 0, st>>>(out, xo, jobs, cols, (const __half *)w_u.p, b_u, C,
                                                            overflow);
        break;
    case PS_PREC_BF16:
        unembed_cols_kernel<__nv_bfloat16><<<blocks, 128, 0, st>>>(out, xo, jobs, cols, (const __nv_bfloat16 *)w_u.p,
                                                                   b_u, C, NULL);
        break;
    default:
        unembed_cols_kernel<float><<<blocks, 128, 0, st>>>(out, xo, jobs, cols, (const float *)w_u.p, b_u, C, NULL);
        break;
    }
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_logits_full(ps_cu_ctx *c, float *out, const float *xn, int64_t n, ps_error *e) {
    const int64_t C = c->cfg.d_model, V = c->cfg.d_vocab;
    PS_TRY(ps_cu_gemm(c, out, xn, c->w.w_u, n, C, V, 1, e));
    return ps_cu_bias_add_launch(c->stream, out, c->w.b_u, n, V, e);
}
