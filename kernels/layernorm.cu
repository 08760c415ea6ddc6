// LayerNorm with TransformerLens's hook_scale output, the same arithmetic as ps_cpu_layernorm
// (mean and variance accumulated in double, scale = sqrt(var + eps) rounded to float).
#include "ps_cuda_internal.h"

// One block per token; out may alias x (every element is read before the block writes it).
static __global__ void layernorm_kernel(float *out, float *scale, const float *x, const float *w, const float *b,
                                        int64_t N, int64_t C, float eps) {
    __shared__ double red[32];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const float *xi = x + i * C;
        double s1 = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) s1 += xi[c];
        const double mean = ps_block_sum(s1, red) / (double)C;
        double s2 = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
            double d = xi[c] - mean;
            s2 += d * d;
        }
        const double var = ps_block_sum(s2, red) / (double)C;
        const float s = (float)sqrt(var + eps);
        if (scale && threadIdx.x == 0) scale[i] = s;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
            out[i * C + c] = __fadd_rn(__fmul_rn((float)((xi[c] - mean) / s), w[c]), b[c]);  // rounded like the CPU (no FMA)
    }
}

int ps_cu_layernorm_launch(cudaStream_t st, float *out, float *scale, const float *x, const float *w, const float *b,
                           int64_t N, int64_t C, float eps, ps_error *e) {
    PS_REQUIRE(e, N >= 0 && C > 0);
    if (N == 0) return 0;
    PS_REQUIRE(e, out && x && w && b);
    const int threads = C >= 512 ? 256 : 128;
    const unsigned blocks = (unsigned)(N < 65535 * 16 ? N : 65535 * 16);
    layernorm_kernel<<<blocks, threads, 0, st>>>(out, scale, x, w, b, N, C, eps);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_norm(ps_cu_ctx *c, int which, int64_t l, float *out, float *scale, const float *x, int64_t N,
                  ps_error *e) {
    const ps_model_config *cfg = &c->cfg;
    const int64_t C = cfg->d_model;
    const float *w = which == 1 ? c->w.ln1_w + l * C : which == 2 ? c->w.ln2_w + l * C : c->w.lnf_w;
    if (cfg->arch == PS_ARCH_LLAMA) return ps_cu_rmsnorm_launch(c->stream, out, scale, x, w, N, C, cfg->eps, e);
    const float *b = which == 1 ? c->w.ln1_b + l * C : which == 2 ? c->w.ln2_b + l * C : c->w.lnf_b;
    return ps_cu_layernorm_launch(c->stream, out, scale, x, w, b, N, C, cfg->eps, e);
}

static int test_layernorm(ps_cu_tmp *t, float *out, float *scale, const float *x, const float *w, const float *b,
                          int64_t N, int64_t C, float eps, ps_error *e) {
    void *d_out, *d_scale, *d_x, *d_w, *d_b;
    PS_TRY(ps_cu_tmp_up(t, &d_out, NULL, (size_t)(N * C) * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_scale, NULL, (size_t)N * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_x, x, (size_t)(N * C) * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_w, w, (size_t)C * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_b, b, (size_t)C * sizeof(float), e));
    PS_TRY(ps_cu_layernorm_launch(0, (float *)d_out, scale ? (float *)d_scale : NULL, (const float *)d_x,
                                  (const float *)d_w, (const float *)d_b, N, C, eps, e));
    CUDA_CHECK(e, cudaMemcpy(out, d_out, (size_t)(N * C) * sizeof(float), cudaMemcpyDeviceToHost));
    if (scale) CUDA_CHECK(e, cudaMemcpy(scale, d_scale, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int ps_cuda_test_layernorm(float *out, float *scale, const float *x, const float *w, const float *b,
                                      int64_t N, int64_t C, float eps, ps_error *e) {
    ps_cu_tmp t = {{0}, 0};
    int rc = test_layernorm(&t, out, scale, x, w, b, N, C, eps, e);
    ps_cu_tmp_free(&t);
    return rc ? -1 : 0;
}
