// MLP activations with the bias fused in: GELU (tanh "new" and exact erf), ReLU, SiLU, and Llama's SwiGLU
// gate (act(gate) * up). Same float formulas as ps_cpu_act. Also the plain bias add used after other GEMMs.
#include "ps_cuda_internal.h"

// h1 (N, M) += bias; h2 = act(h1) [* h3]. h2 may alias h1 only when the pre-activation is not needed.
static __global__ void mlp_act_kernel(float *h2, float *h1, const float *h3, const float *bias, int64_t n, int64_t M,
                                      ps_act act) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        float h = h1[i];
        if (bias) {
            h += bias[i % M];
            h1[i] = h;  // hook_pre includes the bias, as in forward_cpu.c
        }
        const float a = ps_cu_act_f(act, h);
        h2[i] = h3 ? a * h3[i] : a;
    }
}

static __global__ void bias_add_kernel(float *y, const float *bias, int64_t n, int64_t width) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        y[i] += bias[i % width];
}

int ps_cu_mlp_act_launch(cudaStream_t st, float *h2, float *h1, const float *h3, const float *bias, int64_t N,
                         int64_t M, ps_act act, ps_error *e) {
    PS_REQUIRE(e, N >= 0 && M > 0);
    PS_REQUIRE(e, act == PS_ACT_GELU_NEW || act == PS_ACT_GELU || act == PS_ACT_RELU || act == PS_ACT_SILU);
    if (N == 0) return 0;
    PS_REQUIRE(e, h2 && h1);
    mlp_act_kernel<<<ps_cu_blocks(N * M, 256), 256, 0, st>>>(h2, h1, h3, bias, N * M, M, act);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_bias_add_launch(cudaStream_t st, float *y, const float *bias, int64_t N, int64_t width, ps_error *e) {
    PS_REQUIRE(e, N >= 0 && width > 0);
    if (N == 0 || !bias) return 0;
    PS_REQUIRE(e, y != NULL);
    bias_add_kernel<<<ps_cu_blocks(N * width, 256), 256, 0, st>>>(y, bias, N * width, width);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_mlp_act(ps_cu_ctx *c, ps_cu_batch *bt, int64_t l, int64_t NA, ps_error *e) {
    const int64_t M = c->cfg.d_mlp;
    const int llama = c->cfg.arch == PS_ARCH_LLAMA;
    return ps_cu_mlp_act_launch(c->stream, bt->h2, bt->h1, llama ? bt->h3 : NULL, c->w.b_in ? c->w.b_in + l * M : NULL,
                                NA, M, c->cfg.act, e);
}

static int test_mlp_act(ps_cu_tmp *t, float *h2, float *h1, const float *h3, const float *bias, int64_t N, int64_t M,
                        ps_act act, ps_error *e) {
    void *d_h1, *d_h2, *d_h3 = NULL, *d_b = NULL;
    const size_t n = (size_t)(N * M);
    PS_TRY(ps_cu_tmp_up(t, &d_h1, h1, n * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_h2, NULL, n * sizeof(float), e));
    if (h3) PS_TRY(ps_cu_tmp_up(t, &d_h3, h3, n * sizeof(float), e));
    if (bias) PS_TRY(ps_cu_tmp_up(t, &d_b, bias, (size_t)M * sizeof(float), e));
    PS_TRY(ps_cu_mlp_act_launch(0, (float *)d_h2, (float *)d_h1, (const float *)d_h3, (const float *)d_b, N, M, act, e));
    CUDA_CHECK(e, cudaMemcpy(h2, d_h2, n * sizeof(float), cudaMemcpyDeviceToHost));
    CUDA_CHECK(e, cudaMemcpy(h1, d_h1, n * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int ps_cuda_test_mlp_act(float *h2, float *h1, const float *h3, const float *bias, int64_t N, int64_t M,
                                    ps_act act, ps_error *e) {
    ps_cu_tmp t = {{0}, 0};
    int rc = test_mlp_act(&t, h2, h1, h3, bias, N, M, act, e);
    ps_cu_tmp_free(&t);
    return rc ? -1 : 0;
}

extern "C" int ps_cuda_test_act(float *out, const float *x, int64_t n, ps_act act, ps_error *e) {
    if (n <= 0) return 0;
    float *tmp = (float *)malloc((size_t)n * sizeof(float));
    if (!tmp) return ps_fail(e, PS_EXIT_RUNTIME, "ps_cuda_test_act: out of memory");
    memcpy(tmp, x, (size_t)n * sizeof(float));
    int rc = ps_cuda_test_mlp_act(out, tmp, NULL, NULL, 1, n, act, e);
    free(tmp);
    return rc;
}
