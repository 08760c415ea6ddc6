// RMSNorm (Llama) with hook_scale, the same arithmetic as ps_cpu_rmsnorm (sum of squares in double).
#include "ps_cuda_internal.h"

// One block per token; out may alias x (each thread reads its elements before writing them).
static __global__ void rmsnorm_kernel(float *out, float *scale, const float *x, const float *w, int64_t N, int64_t C,
                                      float eps) {
    __shared__ double red[32];
    for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
        const float *xi = x + i * C;
        double ss = 0;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) ss += (double)xi[c] * xi[c];
        ss = ps_block_sum(ss, red);
        const float s = (float)sqrt(ss / (double)C + eps);
        if (scale && threadIdx.x == 0) scale[i] = s;
        for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[i * C + c] = (xi[c] / s) * w[c];
    }
}

int ps_cu_rmsnorm_launch(cudaStream_t st, float *out, float *scale, const float *x, const float *w, int64_t N,
                         int64_t C, float eps, ps_error *e) {
    PS_REQUIRE(e, N >= 0 && C > 0);
    if (N == 0) return 0;
    PS_REQUIRE(e, out && x && w);
    const int threads = C >= 512 ? 256 : 128;
    const unsigned blocks = (unsigned)(N < 65535 * 16 ? N : 65535 * 16);
    rmsnorm_kernel<<<blocks, threads, 0, st>>>(out, scale, x, w, N, C, eps);
    LAUNCH_CHECK(e);
    return 0;
}

static int test_rmsnorm(ps_cu_tmp *t, float *out, float *scale, const float *x, const float *w, int64_t N, int64_t C,
                        float eps, ps_error *e) {
    void *d_out, *d_scale, *d_x, *d_w;
    PS_TRY(ps_cu_tmp_up(t, &d_out, NULL, (size_t)(N * C) * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_scale, NULL, (size_t)N * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_x, x, (size_t)(N * C) * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_w, w, (size_t)C * sizeof(float), e));
    PS_TRY(ps_cu_rmsnorm_launch(0, (float *)d_out, scale ? (float *)d_scale : NULL, (const float *)d_x,
                                (const float *)d_w, N, C, eps, e));
    CUDA_CHECK(e, cudaMemcpy(out, d_out, (size_t)(N * C) * sizeof(float), cudaMemcpyDeviceToHost));
    if (scale) CUDA_CHECK(e, cudaMemcpy(scale, d_scale, (size_t)N * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int ps_cuda_test_rmsnorm(float *out, float *scale, const float *x, const float *w, int64_t N, int64_t C,
                                    float eps, ps_error *e) {
    ps_cu_tmp t = {{0}, 0};
    int rc = test_rmsnorm(&t, out, scale, x, w, N, C, eps, e);
    ps_cu_tmp_free(&t);
    return rc ? -1 : 0;
}
