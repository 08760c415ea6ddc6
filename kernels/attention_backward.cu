// Causal attention's backward pass for one prompt's layer (cpu_backward.c's attend_group_backward), in two
// kernels so that no two threads add into one gradient: per (query, head) the pattern's and the scores'
// gradients and d q; per (key, key/value head) d k and d v, summed over the group's query heads and the queries
// at or after the key in the CPU's order (head, then query). Also the gradient at hook_result (every head gets
// attn_out's whole gradient). Unrun: no GPU has executed this file yet.
#include "ps_cuda_internal.h"

#define ATTN_BWD_THREADS 128

// Grid: x = query t, y = query head h. Dynamic shared memory: T floats (d pattern, then d scores).
// dp[j] = dz[t] . v[j] at every key (the pattern hook's gradient is nonzero above the diagonal too, as in TL);
// ds[j] = p[j] (dp[j] - sum_k p[k] dp[k]) for j <= t, 0 above; dq[t] = sum_j ds[j] / sqrt(D) k[j].
static __global__ void __launch_bounds__(ATTN_BWD_THREADS)
attention_backward_q_kernel(const float *q, const float *k, const float *v, const float *pattern, const float *dz,
                            float *dq, float *dpattern, float *dscores, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                            float inv_sqrt_d) {
    extern __shared__ float sh[];
    __shared__ double red[32];
    const int64_t t = blockIdx.x, h = blockIdx.y, g = h / (H / Hkv), QD = H * D, KD = Hkv * D;
    const int tid = threadIdx.x, nthr = blockDim.x, lane = tid & 31, wid = tid >> 5, nwarp = nthr >> 5;
    const float *p = pattern + (h * T + t) * T, *dzt = dz + t * QD + h * D;
    // One warp per key, lanes across the head dimension.
    for (int64_t j = wid; j < T; j += nwarp) {
        const float *vj = v + j * KD + g * D;
        float acc = 0;
        for (int64_t d = lane; d < D; d += 32) acc += dzt[d] * vj[d];
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
        if (lane == 0) sh[j] = acc;
    }
    __syncthreads();
    double pdp = 0;
    for (int64_t j = tid; j <= t; j += nthr) pdp += (double)p[j] * sh[j];
    pdp = ps_block_sum(pdp, red);
    float *dpt = dpattern + (h * T + t) * T, *dst = dscores + (h * T + t) * T;
    for (int64_t j = tid; j < T; j += nthr) {
        const float dpj = sh[j];
        dpt[j] = dpj;
        const float ds = j <= t ? p[j] * (float)(dpj - pdp) : 0.0f;
        dst[j] = ds;
        sh[j] = ds;
    }
    __syncthreads();
    float *dqt = dq + t * QD + h * D;
    for (int64_t d = tid; d < D; d += nthr) {
        float acc = 0;
        for (int64_t j = 0; j <= t; j++) acc += (sh[j] * inv_sqrt_d) * k[j * KD + g * D + d];
        dqt[d] = acc;
    }
}

// Grid: x = key j, y = key/value head g; threads across the head dimension.
static __global__ void attention_backward_kv_kernel(const float *q, const float *pattern, const float *dz,
                                                    const float *dscores, float *dk, float *dv, int64_t T, int64_t H,
                                                    int64_t Hkv, int64_t D, float inv_sqrt_d) {
    const int64_t j = blockIdx.x, g = blockIdx.y, group = H / Hkv, QD = H * D, KD = Hkv * D;
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
        float ak = 0, av = 0;
        for (int64_t h = g * group; h < (g + 1) * group; h++)
            for (int64_t t = j; t < T; t++) {
                const int64_t at = (h * T + t) * T + j;
                av += pattern[at] * dz[t * QD + h * D + d];
                ak += (dscores[at] * inv_sqrt_d) * q[t * QD + h * D + d];
            }
        dk[j * KD + g * D + d] = ak;
        dv[j * KD + g * D + d] = av;
    }
}

// dst (T, H, C) with strides (pos, unit) = src (T, C) for every head.
static __global__ void result_backward_kernel(float *dst, int64_t pos, int64_t unit, const float *src, int64_t T,
                                              int64_t H, int64_t C) {
    const int64_t n = T * H * C;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t c = i % C, h = (i / C) % H, t = i / (C * H);
        dst[t * pos + h * unit + c] = src[t * C + c];
    }
}

int ps_cu_attention_backward_launch(cudaStream_t st, const float *q, const float *k, const float *v,
                                    const float *pattern, const float *dz, float *dq, float *dk, float *dv,
                                    float *dpattern, float *dscores, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                    ps_error *e) {
    PS_REQUIRE(e, T >= 0 && H > 0 && Hkv > 0 && H % Hkv == 0 && D > 0 && H <= 65535 && Hkv <= 65535);
    if (T == 0) return 0;
    PS_REQUIRE(e, q && k && v && pattern && dz && dq && dk && dv && dpattern && dscores);
    PS_REQUIRE(e, T <= 0x7fffffff && (size_t)T * sizeof(float) <= 48 * 1024);  // the default dynamic shared memory
    const float inv_sqrt_d = 1.0f / sqrtf((float)D);
    attention_backward_q_kernel<<<dim3((unsigned)T, (unsigned)H), ATTN_BWD_THREADS, (size_t)T * sizeof(float), st>>>(
        q, k, v, pattern, dz, dq, dpattern, dscores, T, H, Hkv, D, inv_sqrt_d);
    LAUNCH_CHECK(e);
    attention_backward_kv_kernel<<<dim3((unsigned)T, (unsigned)Hkv), D >= 128 ? 128 : 64, 0, st>>>(
        q, pattern, dz, dscores, dk, dv, T, H, Hkv, D, inv_sqrt_d);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_result_backward_launch(cudaStream_t st, ps_cu_arr dresult, int64_t l, const float *dattn, int64_t T,
                                 int64_t H, int64_t C, ps_error *e) {
    PS_REQUIRE(e, T >= 0 && H > 0 && C > 0 && l >= 0);
    if (T == 0 || !dresult.p) return 0;
    PS_REQUIRE(e, dattn != NULL);
    result_backward_kernel<<<ps_cu_blocks(T * H * C, 256), 256, 0, st>>>(dresult.p + l * dresult.layer, dresult.pos,
                                                                       dresult.unit, dattn, T, H, C);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_attention_backward(ps_cu_ctx *c, const float *q, const float *k, const float *v, const float *pattern,
                                const float *dz, float *dq, float *dk, float *dv, float *dpattern, float *dscores,
                                int64_t T, ps_error *e) {
    const ps_model_config *cfg = &c->cfg;
    return ps_cu_attention_backward_launch(c->stream, q, k, v, pattern, dz, dq, dk, dv, dpattern, dscores, T,
                                           cfg->n_heads, cfg->n_kv_heads, cfg->d_head, e);
}
