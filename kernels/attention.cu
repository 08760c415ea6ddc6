// Causal self-attention per (row, head, query): keys/values before the row's start_pos come from its base
// run's cache (rot_k for Llama), the rest from this batch; softmax; the row's pattern patches replace the
// pattern inside the kernel (replace, freeze, zero, scale: cpu_patch.c's pattern hook), pattern captures take
// the result; then pattern @ V. Cache rows also get attn_scores and pattern written.
// Mirrors the attention loop of ps_cpu_forward (scores in float, softmax sum in double).
#include "ps_cuda_internal.h"

#define ATTN_THREADS 128

// Grid: x = computed token of the batch (its row and position come from tok_row/pos), y = query head.
// Dynamic shared memory: D floats of the query, then the row's T scores.
static __global__ void __launch_bounds__(ATTN_THREADS)
attention_kernel(const ps_cu_row *rows, const ps_cu_patch *patches, float *const *pat_cap, const int32_t *tok_row,
                 const int64_t *pos, const float *q, const float *k, const float *v, float *z, int64_t l, int64_t L,
                 int64_t H, int64_t Hkv, int64_t D, float inv_sqrt_d) {
    extern __shared__ float smem[];
    __shared__ float red_f[32];
    __shared__ double red_d[32];
    const int64_t i = blockIdx.x, h = blockIdx.y;
    const int32_t ri = tok_row[i];
    const ps_cu_row *row = &rows[ri];
    const int64_t T = row->T, s = row->start_pos, t = pos[i], g = h / (H / Hkv);
    const int64_t QD = H * D, KD = Hkv * D;
    const int tid = threadIdx.x, nthr = blockDim.x, lane = tid & 31, wid = tid >> 5, nwarp = nthr >> 5;
    float *qs = smem, *sc = smem + D;

    for (int64_t d = tid; d < D; d += nthr) qs[d] = q[i * QD + h * D + d];
    __syncthreads();

    // Key j: the base's cached key below start_pos, else the batch's (buffer row off + j - s).
    const ps_cu_arr bk = row->base_k, bv = row->base_v;
    const float *kbase = bk.p ? bk.p + l * bk.layer + g * bk.unit : NULL;
    const float *vbase = bv.p ? bv.p + l * bv.layer + g * bv.unit : NULL;
    const float *kbatch = k + g * D, *vbatch = v + g * D;

    // Scores: one warp per key, lanes across the head dimension (coalesced key reads).
    for (int64_t j = wid; j <= t; j += nwarp) {
        const float *kj = j < s ? kbase + j * bk.pos : kbatch + (row->off + j - s) * KD;
        float acc = 0;
        for (int64_t d = lane; d < D; d += 32) acc += qs[d] * kj[d];
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffffu, acc, o);
        if (lane == 0) sc[j] = acc * inv_sqrt_d;
    }
    __syncthreads();

    const ps_cu_arr cs = row->ca[PS_ARR_SCORES];
    if (cs.p) {
        float *dst = cs.p + l * cs.layer + h * cs.unit + t * cs.pos;
        for (int64_t j = tid; j < T; j += nthr) dst[j] = j <= t ? sc[j] : -INFINITY;
    }

    float mx = -INFINITY;
    for (int64_t j = tid; j <= t; j += nthr) mx = fmaxf(mx, sc[j]);
    mx = ps_block_max(mx, red_f);
    double sum = 0;
    for (int64_t j = tid; j <= t; j += nthr) {
        const float ex = expf(sc[j] - mx);
        sc[j] = ex;
        sum += ex;
    }
    sum = ps_block_sum(sum, red_d);
    // From here on thread tid owns sc[j] for j = tid mod nthr until the barrier before pattern @ V.
    for (int64_t j = tid; j <= t; j += nthr) sc[j] = (float)(sc[j] / sum);

    // Pattern patches of this (layer, head, query), in the row's order (a later one acts on an earlier one's
    // result, element by element: the same thread owns sc[j] throughout).
    for (int32_t p = row->pb; p < row->pe; p++) {
        const ps_cu_patch *pt = &patches[p];
        if (pt->site != PS_SITE_PATTERN || pt->layer != l) continue;
        if (h < pt->u0 || h >= pt->u1 || (pt->head_mask && !((pt->head_mask >> h) & 1)) || t < pt->t0 || t >= pt->t1) continue;
        const float *src = pt->src ? pt->src + t * pt->src_pos + h * pt->src_unit : NULL;
        for (int64_t j = tid; j <= t; j += nthr) sc[j] = ps_cu_op_value(pt->op, sc[j], src ? src[j] : 0.0f, pt->factor);
    }

    // Captures: (n, H, T) from the row's start_pos, a query's probabilities per head, zero past the query.
    float *cap = pat_cap ? pat_cap[(int64_t)ri * L + l] : NULL;
    if (cap) {
        float *dst = cap + ((t - s) * H + h) * T;
        for (int64_t j = tid; j < T; j += nthr) dst[j] = j <= t ? sc[j] : 0.0f;
    }

    const ps_cu_arr cp = row->ca[PS_ARR_PATTERN];
    if (cp.p) {
        float *dst = cp.p + l * cp.layer + h * cp.unit + t * cp.pos;
        for (int64_t j = tid; j < T; j += nthr) dst[j] = j <= t ? sc[j] : 0.0f;
    }
    __syncthreads();

    // z[t, h, :] = sum_j pattern[j] * v[j]: threads across the head dimension, keys in order (as the CPU sums).
    float *zt = z + i * QD + h * D;
    for (int64_t d = tid; d < D; d += nthr) {
        float acc = 0;
        for (int64_t j = 0; j <= t; j++) {
            const float *vj = j < s ? vbase + j * bv.pos : vbatch + (row->off + j - s) * KD;
            acc += sc[j] * vj[d];
        }
        zt[d] = acc;
    }
}

int ps_cu_attention_launch(cudaStream_t st, int smem_optin, const ps_cu_row *rows, const ps_cu_patch *patches,
                           float *const *pat_cap, const int32_t *tok_row, const int64_t *pos, const float *q,
                           const float *k, const float *v, float *z, int64_t NA, int64_t l, int64_t L, int64_t H,
                           int64_t Hkv, int64_t D, int64_t T_max, ps_error *e) {
    PS_REQUIRE(e, NA >= 0 && NA <= 0x7fffffff && l >= 0 && l < L);
    PS_REQUIRE(e, H > 0 && H <= 65535 && Hkv > 0 && H % Hkv == 0 && D > 0 && T_max > 0);
    if (NA == 0) return 0;
    PS_REQUIRE(e, rows && tok_row && pos && q && k && v && z);
    const size_t smem = (size_t)(D + T_max) * sizeof(float);
    if (smem > 47 * 1024) {  // beyond the default 48 KiB (less the kernel's static reduction scratch): opt in
        if ((int64_t)smem + 1024 > (int64_t)smem_optin)
            return ps_fail(e, PS_EXIT_RUNTIME,
                           "attention: %lld tokens need %zu bytes of shared memory per block; this GPU allows %d",
                           (long long)T_max, smem, smem_optin);
        CUDA_CHECK(e, cudaFuncSetAttribute(attention_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    }
    const float inv_sqrt_d = 1.0f / sqrtf((float)D);
    dim3 grid((unsigned)NA, (unsigned)H);
    attention_kernel<<<grid, ATTN_THREADS, smem, st>>>(rows, patches, pat_cap, tok_row, pos, q, k, v, z, l, L, H, Hkv, D,
                                                       inv_sqrt_d);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_attention(ps_cu_ctx *c, ps_cu_batch *bt, int64_t l, int64_t NA, ps_error *e) {
    const ps_model_config *cfg = &c->cfg;
    return ps_cu_attention_launch(c->stream, c->smem_optin, bt->rows, bt->patches, bt->pat_cap, bt->tok_row, bt->pos,
                                  bt->q, bt->k, bt->v, bt->z, NA, l, cfg->n_layers, cfg->n_heads, cfg->n_kv_heads,
                                  cfg->d_head, bt->T_max, e);
}
