// The residual stream update x += y (attn_out, mlp_out) over every active token of the batch in one launch.
#include "ps_cuda_internal.h"

static __global__ void residual_kernel(float *x, const float *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
        x[i] += y[i];
}

int ps_cu_residual_launch(cudaStream_t st, float *x, const float *y, int64_t n, ps_error *e) {
    PS_REQUIRE(e, n >= 0);
    if (n == 0) return 0;
    PS_REQUIRE(e, x && y && x != y);
    residual_kernel<<<ps_cu_blocks(n, 256), 256, 0, st>>>(x, y, n);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_residual(ps_cu_ctx *c, ps_cu_batch *bt, int64_t NA, ps_error *e) {
    return ps_cu_residual_launch(c->stream, bt->x, bt->y, NA * c->cfg.d_model, e);
}

static int test_residual(ps_cu_tmp *t, float *x, const float *y, int64_t n, ps_error *e) {
    void *d_x, *d_y;
    PS_TRY(ps_cu_tmp_up(t, &d_x, x, (size_t)n * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_y, y, (size_t)n * sizeof(float), e));
    PS_TRY(ps_cu_residual_launch(0, (float *)d_x, (const float *)d_y, n, e));
    CUDA_CHECK(e, cudaMemcpy(x, d_x, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int ps_cuda_test_residual(float *x, const float *y, int64_t n, ps_error *e) {
    ps_cu_tmp t = {{0}, 0};
    int rc = test_residual(&t, x, y, n, e);
    ps_cu_tmp_free(&t);
    return rc ? -1 : 0;
}
