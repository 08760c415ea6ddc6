// Activation patches and cache stores: copying (position, head or neuron) slices between the batch's
// per-token buffers and caches on the device. One launch per hook covers every row of the batch.
#include "ps_cuda_internal.h"

// One block per row; the row's patches at (site, l) are applied in its order (a later patch overwrites an
// earlier one where they overlap, as in forward_cpu.c), so the block synchronises between them.
static __global__ void patch_kernel(const ps_cu_row *rows, const ps_cu_patch *patches, int64_t r0, int site, int64_t l,
                                    float *buf, int64_t ld, int64_t n_units, int64_t unit) {
    const ps_cu_row *row = &rows[r0 + blockIdx.x];
    const int64_t s = row->start_pos, T = row->T;
    for (int32_t p = row->pb; p < row->pe; p++) {
        const ps_cu_patch *pt = &patches[p];
        if (pt->site != site || pt->layer != l) continue;  // uniform over the block
        int64_t sel = -1;
        if (site == PS_SITE_Q || site == PS_SITE_K || site == PS_SITE_V || site == PS_SITE_Z) sel = pt->head;
        else if (site == PS_SITE_MLP_POST) sel = pt->neuron;
        if (sel >= n_units) continue;
        int64_t t0 = pt->pos < 0 ? s : pt->pos, t1 = pt->pos < 0 ? T : pt->pos + 1;
        if (t0 < s) t0 = s;
        if (t1 > T) t1 = T;
        const int64_t u0 = sel < 0 ? 0 : sel, u1 = sel < 0 ? n_units : sel + 1;
        const int64_t len = (u1 - u0) * unit, stride = n_units * unit;
        const int64_t n = (t1 > t0 ? t1 - t0 : 0) * len;
        const float *src = pt->src + l * T * stride + u0 * unit;
        float *dst = buf + row->off * ld + u0 * unit;  // token t of the row is buffer row off + t - s
        for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
            const int64_t t = t0 + i / len, k = i % len;
            dst[(t - s) * ld + k] = src[t * stride + k];
        }
        __syncthreads();
    }
}

// Rows [r0, r0 + gridDim.x) that are cache rows copy their (n, width) slice of buf into cache array arr at layer l.
static __global__ void store_kernel(const ps_cu_row *rows, int64_t r0, int arr, int64_t l, const float *buf,
                                    int64_t width) {
    const ps_cu_row *row = &rows[r0 + blockIdx.x];
    float *dst = row->ca[arr];
    if (!dst) return;
    dst += l * row->T * width;
    const float *src = buf + row->off * width;
    const int64_t n = row->n * width;
    for (int64_t i = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.y * blockDim.x)
        dst[i] = src[i];
}

int ps_cu_patch_launch(cudaStream_t st, const ps_cu_row *rows, const ps_cu_patch *patches, int64_t r0, int64_t r1,
                       int site, int64_t l, float *buf, int64_t ld, int64_t n_units, int64_t unit, ps_error *e) {
    PS_REQUIRE(e, r0 >= 0 && r1 >= r0 && r1 - r0 <= 0x7fffffff && l >= 0);
    PS_REQUIRE(e, site >= 0 && site < PS_SITE_COUNT && site != PS_SITE_PATTERN);
    PS_REQUIRE(e, ld > 0 && n_units > 0 && unit > 0 && n_units * unit <= ld);
    if (r1 == r0) return 0;
    PS_REQUIRE(e, rows && patches && buf);
    patch_kernel<<<(unsigned)(r1 - r0), 128, 0, st>>>(rows, patches, r0, site, l, buf, ld, n_units, unit);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_store_launch(cudaStream_t st, const ps_cu_row *rows, int64_t r0, int64_t r1, int arr, int64_t l,
                       const float *buf, int64_t width, int64_t T_max, ps_error *e) {
    PS_REQUIRE(e, r0 >= 0 && r1 >= r0 && r1 - r0 <= 0x7fffffff && l >= 0 && width > 0 && T_max >= 0);
    PS_REQUIRE(e, arr >= 0 && arr < PS_CA_COUNT);
    if (r1 == r0 || T_max == 0) return 0;
    PS_REQUIRE(e, rows && buf);
    int64_t chunks = (T_max * width + 255) / 256;
    if (chunks > 1024) chunks = 1024;
    dim3 grid((unsigned)(r1 - r0), (unsigned)chunks);
    store_kernel<<<grid, 256, 0, st>>>(rows, r0, arr, l, buf, width);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_patch(ps_cu_ctx *c, ps_cu_batch *bt, int64_t r0, int64_t r1, ps_site site, int64_t l, float *buf,
                   ps_error *e) {
    const ps_model_config *cfg = &c->cfg;
    const int64_t C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads, D = cfg->d_head, M = cfg->d_mlp;
    int64_t ld, n_units, unit;
    switch (site) {
    case PS_SITE_Q: case PS_SITE_Z: ld = H * D; n_units = H; unit = D; break;
    case PS_SITE_K: case PS_SITE_V: ld = Hkv * D; n_units = Hkv; unit = D; break;
    case PS_SITE_MLP_POST: ld = M; n_units = M; unit = 1; break;
    case PS_SITE_PATTERN: return 0;  // applied inside attention
    default: ld = C; n_units = 1; unit = C; break;
    }
    return ps_cu_patch_launch(c->stream, bt->rows, bt->patches, r0, r1, (int)site, l, buf, ld, n_units, unit, e);
}

int ps_cu_op_store(ps_cu_ctx *c, ps_cu_batch *bt, int64_t n_active, int arr, int64_t l, const float *buf,
                   int64_t width, ps_error *e) {
    const int64_t r1 = n_active < bt->cache_span ? n_active : bt->cache_span;
    if (r1 <= 0) return 0;
    return ps_cu_store_launch(c->stream, bt->rows, 0, r1, arr, l, buf, width, bt->T_max, e);
}
