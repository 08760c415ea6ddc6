// The unembedding's backward pass (cpu_backward.c's unembed_backward): the metric reads logits[pos[o], :], so
// d xn[pos[o]] += d logits[o] @ W_U and d logits[pos[o]] += d logits[o]. Rows are added in o's order by one
// thread per column (a position the metric reads twice sums both), never by atomics.
// Unrun: no GPU has executed this file yet.
#include "ps_cuda_internal.h"

// dst[pos[o], :] += src[o, :] for o = 0..n-1 in order; dst (rows, width), src (n, width).
static __global__ void rows_add_at_kernel(float *dst, const float *src, const int64_t *pos, int64_t n, int64_t width) {
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < width; c += (int64_t)gridDim.x * blockDim.x)
        for (int64_t o = 0; o < n; o++) dst[pos[o] * width + c] += src[o * width + c];
}

int ps_cu_rows_add_at_launch(cudaStream_t st, float *dst, const float *src, const int64_t *pos, int64_t n,
                             int64_t width, ps_error *e) {
    PS_REQUIRE(e, n >= 0 && width > 0);
    if (n == 0) return 0;
    PS_REQUIRE(e, dst && src && pos);
    rows_add_at_kernel<<<ps_cu_blocks(width, 256), 256, 0, st>>>(dst, src, pos, n, width);
    LAUNCH_CHECK(e);
    return 0;
}

// dxn (T, C) += at the metric's positions: dlogits (n, V) @ W_U (V, C), through tmp (n, C); dlogits_cache (T, V),
// when non-NULL, gets the d logits rows added at their positions. pos, dlogits on the device.
int ps_cu_op_unembed_backward(ps_cu_ctx *c, float *dxn, float *dlogits_cache, float *tmp, const float *dlogits,
                              const int64_t *pos, int64_t n, ps_error *e) {
    const int64_t C = c->cfg.d_model, V = c->cfg.d_vocab;
    if (n == 0) return 0;
    PS_TRY(ps_cu_gemm(c, tmp, dlogits, c->w.w_u, n, V, C, 0, e));
    PS_TRY(ps_cu_rows_add_at_launch(c->stream, dxn, tmp, pos, n, C, e));
    if (dlogits_cache) PS_TRY(ps_cu_rows_add_at_launch(c->stream, dlogits_cache, dlogits, pos, n, V, e));
    return 0;
}
