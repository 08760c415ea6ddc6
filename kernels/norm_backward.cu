// LayerNorm's and RMSNorm's backward passes with the scale as its own node (TransformerLens's hook_scale), the
// arithmetic of ps_cpu_layernorm_backward / ps_cpu_rmsnorm_backward (cpu_ops.c): sums in double, dx accumulated.
// Unrun: no GPU has executed this file yet.
#include "ps_cuda_internal.h"

// One block per token. LayerNorm: xhat = (x - mean) / s, dxhat = dout * w; dscale = -sum(dxhat xhat) / s;
// dx += (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) / s.
static __global__ void layernorm_backward_kernel(float *dx, float *dscale, const float *dout, const float *x,
                                                 const float *scale, const float *w, int64_t N, int64_t C) {
    __shared__ double red[32];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const float *xi = x + i * C, *di = dout + i * C;
        const float s = scale[i];
        double s1 = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s1 += xi[c];
        const double mean = ps_block_sum(s1, red) / (double)C;
        double a = 0, b = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            const double dxh = (double)di[c] * w[c];
            a += dxh;
            b += dxh * ((xi[c] - mean) / s);
        }
        a = ps_block_sum(a, red);
        b = ps_block_sum(b, red);
        if (dscale && threadIdx.x == 0) dscale[i] = (float)(-b / s);
        a /= (double)C;
        b /= (double)C;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            const double xh = (xi[c] - mean) / s;
            dx[i * C + c] += (float)(((double)di[c] * w[c] - a - xh * b) / s);
        }
    }
}

// RMSNorm: xhat = x / s: dscale = -sum(dxhat xhat) / s; dx += (dxhat - xhat mean(dxhat xhat)) / s.
static __global__ void rmsnorm_backward_kernel(float *dx, float *dscale, const float *dout, const float *x,
                                               const float *scale, const float *w, int64_t N, int64_t C) {
    __shared__ double red[32];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const float *xi = x + i * C, *di = dout + i * C;
        const float s = scale[i];
        double b = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) b += (double)di[c] * w[c] * ((double)xi[c] / s);
        b = ps_block_sum(b, red);
        if (dscale && threadIdx.x == 0) dscale[i] = (float)(-b / s);
        b /= (double)C;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            dx[i * C + c] += (float)(((double)di[c] * w[c] - ((double)xi[c] / s) * b) / s);
    }
}

int ps_cu_norm_backward_launch(cudaStream_t st, int rms, float *dx, float *dscale, const float *dout, const float *x,
                               const float *scale, const float *w, int64_t N, int64_t C, ps_error *e) {
    PS_REQUIRE(e, N >= 0 && C > 0);
    if (N == 0) return 0;
    PS_REQUIRE(e, dx && dout && x && scale && w);
    const int threads = C >= 512 ? 256 : 128;
    const unsigned blocks = (unsigned)(N < 65535 * 16 ? N : 65535 * 16);
    if (rms) rmsnorm_backward_kernel<<<blocks, threads, 0, st>>>(dx, dscale, dout, x, scale, w, N, C);
    else layernorm_backward_kernel<<<blocks, threads, 0, st>>>(dx, dscale, dout, x, scale, w, N, C);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_norm_backward(ps_cu_ctx *c, int which, int64_t l, float *dx, float *dscale, const float *dout,
                           const float *x, const float *scale, int64_t N, ps_error *e) {
    const ps_model_config *cfg = &c->cfg;
    const int64_t C = cfg->d_model;
    const float *w = which == 1 ? c->w.ln1_w + l * C : which == 2 ? c->w.ln2_w + l * C : c->w.lnf_w;
    return ps_cu_norm_backward_launch(c->stream, cfg->arch == PS_ARCH_LLAMA, dx, dscale, dout, x, scale, w, N, C, e);
}

static int test_norm_backward(ps_cu_tmp *t, int rms, float *dx, float *dscale, const float *dout, const float *x,
                              const float *scale, const float *w, int64_t N, int64_t C, ps_error *e) {
    void *d_dx, *d_ds, *d_dout, *d_x, *d_s, *d_w;
    const size_t nc = (size_t)(N * C) * sizeof(float);
    PS_TRY(ps_cu_tmp_up(t, &d_dx, dx, nc, e));
    PS_TRY(ps_cu_tmp_up(t, &d_ds, NULL, (size_t)N * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_dout, dout, nc, e));
    PS_TRY(ps_cu_tmp_up(t, &d_x, x, nc, e));
    PS_TRY(ps_cu_tmp_up(t, &d_s, scale, (size_t)N * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_w, w, (size_t)C * sizeof(float), e));
    PS_TRY(ps_cu_norm_backward_launch(0, rms, (float *)d_dx, dscale ? (float *)d_ds : NULL, (const float *)d_dout,
                                      (const float *)d_x, (const float *)d_s, (const float *)d_w, N, C, e));
    CUDA_CHECK(e, cudaMemcpy(dx, d_dx, nc, cudaMemcpyDeviceToHost));
    if (dscale) CUDA_CHECK(e, cudaMemcpy(dscale, d_ds, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int ps_cuda_test_norm_backward(int rms, float *dx, float *dscale, const float *dout, const float *x,
                                          const float *scale, const float *w, int64_t N, int64_t C, ps_error *e) {
    ps_cu_tmp t = {{0}, 0};
    int rc = test_norm_backward(&t, rms, dx, dscale, dout, x, scale, w, N, C, e);
    ps_cu_tmp_free(&t);
    return rc ? -1 : 0;
}
