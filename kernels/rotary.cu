// Rotary embeddings in Hugging Face's rotate_half layout: pairs (i, i + R/2) of each head's first R =
// rotary_dim dims rotate, dims [R, D) pass through (GPT-NeoX's partial rotary; R = D for Llama), theta from
// the config. The cos/sin table is made once per batch in double, exactly as ps_cpu_rotary computes its
// angles; a table made with sign -1 rotates by the negated angles: the transpose, rotary's backward
// (ps_cpu_rotary_backward). Unrun: no GPU has executed this file yet.
#include "ps_cuda_internal.h"

// cos_t/sin_t (N, R/2): angle pos[i] * (float)theta^(-2k/R); sin_t holds sign * sin.
static __global__ void rope_table_kernel(float *cos_t, float *sin_t, const int64_t *pos, int64_t N, int64_t R,
                                         float theta, float sign) {
    const int64_t half = R / 2, n = N * half;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n; idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t i = idx / half, k = idx % half;
        const double inv_freq = pow((double)theta, -(double)(2 * k) / (double)R);
        const double ang = (double)pos[i] * (double)(float)inv_freq;
        cos_t[idx] = (float)cos(ang);
        sin_t[idx] = sign * (float)sin(ang);
    }
}

// x (N, n_heads, D) in place, the first R dims of each head; one thread per (token, head, pair).
static __global__ void rotary_kernel(float *x, const float *cos_t, const float *sin_t, int64_t N, int64_t n_heads,
                                     int64_t D, int64_t R) {
    const int64_t half = R / 2, n = N * n_heads * half;
    for (int64_t idx = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; idx < n; idx += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k = idx % half, th = idx / half, i = th / n_heads;
        float *xh = x + th * D;
        const float cs = cos_t[i * half + k], sn = sin_t[i * half + k];
        const float a = xh[k], b = xh[k + half];
        xh[k] = __fsub_rn(__fmul_rn(a, cs), __fmul_rn(b, sn));  // no FMA contraction: the CPU rounds each product
        xh[k + half] = __fadd_rn(__fmul_rn(b, cs), __fmul_rn(a, sn));
    }
}

int ps_cu_rope_table_launch(cudaStream_t st, float *cos_t, float *sin_t, const int64_t *pos, int64_t N, int64_t R,
                            float theta, float sign, ps_error *e) {
    PS_REQUIRE(e, N >= 0 && R > 0 && R % 2 == 0 && theta > 0 && (sign == 1.0f || sign == -1.0f));
    if (N == 0) return 0;
    PS_REQUIRE(e, cos_t && sin_t && pos);
    rope_table_kernel<<<ps_cu_blocks(N * (R / 2), 256), 256, 0, st>>>(cos_t, sin_t, pos, N, R, theta, sign);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_rotary_launch(cudaStream_t st, float *x, const float *cos_t, const float *sin_t, int64_t N, int64_t n_heads,
                        int64_t D, int64_t R, ps_error *e) {
    PS_REQUIRE(e, N >= 0 && n_heads > 0 && D > 0 && R > 0 && R % 2 == 0 && R <= D);
    if (N == 0) return 0;
    PS_REQUIRE(e, x && cos_t && sin_t);
    rotary_kernel<<<ps_cu_blocks(N * n_heads * (R / 2), 256), 256, 0, st>>>(x, cos_t, sin_t, N, n_heads, D, R);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_rope_table(ps_cu_ctx *c, ps_cu_batch *bt, ps_error *e) {
    return ps_cu_rope_table_launch(c->stream, bt->rope_cos, bt->rope_sin, bt->pos, bt->N, c->cfg.rotary_dim,
                                   c->cfg.rope_theta, 1.0f, e);
}

int ps_cu_op_rotary(ps_cu_ctx *c, ps_cu_batch *bt, float *x, int64_t N, int64_t n_heads, ps_error *e) {
    return ps_cu_rotary_launch(c->stream, x, bt->rope_cos, bt->rope_sin, N, n_heads, c->cfg.d_head, c->cfg.rotary_dim, e);
}

static int test_rotary(ps_cu_tmp *t, float *x, int64_t T, int64_t n_heads, int64_t D, int64_t R, const int64_t *pos,
                       float theta, float sign, ps_error *e) {
    void *d_x, *d_pos, *d_cos, *d_sin;
    PS_REQUIRE(e, R > 0 && R % 2 == 0 && R <= D);
    const size_t nx = (size_t)(T * n_heads * D), nt = (size_t)(T * (R / 2));
    PS_TRY(ps_cu_tmp_up(t, &d_x, x, nx * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_pos, pos, (size_t)T * sizeof(int64_t), e));
    PS_TRY(ps_cu_tmp_up(t, &d_cos, NULL, nt * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_sin, NULL, nt * sizeof(float), e));
    PS_TRY(ps_cu_rope_table_launch(0, (float *)d_cos, (float *)d_sin, (const int64_t *)d_pos, T, R, theta, sign, e));
    PS_TRY(ps_cu_rotary_launch(0, (float *)d_x, (const float *)d_cos, (const float *)d_sin, T, n_heads, D, R, e));
    CUDA_CHECK(e, cudaMemcpy(x, d_x, nx * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int ps_cuda_test_rotary(float *x, int64_t T, int64_t n_heads, int64_t D, const int64_t *pos, float theta,
                                   ps_error *e) {
    ps_cu_tmp t = {{0}, 0};
    int rc = test_rotary(&t, x, T, n_heads, D, D, pos, theta, 1.0f, e);
    ps_cu_tmp_free(&t);
    return rc ? -1 : 0;
}

extern "C" int ps_cuda_test_rotary_dims(float *x, int64_t T, int64_t n_heads, int64_t D, int64_t rot_dim,
                                        const int64_t *pos, float theta, int backward, ps_error *e) {
    ps_cu_tmp t = {{0}, 0};
    int rc = test_rotary(&t, x, T, n_heads, D, rot_dim, pos, theta, backward ? -1.0f : 1.0f, e);
    ps_cu_tmp_free(&t);
    return rc ? -1 : 0;
}
