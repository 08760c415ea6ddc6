// Interventions and cache stores on the device: a row's patches (replace, freeze, zero, mean, add, scale on a
// selection of one hook, cpu_patch.c's semantics) applied to the batch's per-token buffers, and cache rows'
// copies of those buffers into their device caches. One launch per hook covers every row of the batch; the
// layout comes from ps_cache.h's site table through the strides the host resolves (ps_cu_patch_desc).
#include "ps_cuda_internal.h"

// Grid: x = row r0 + blockIdx.x, y = a stripe of positions (t = t0 + y, t0 + y + gridDim.y, ...). A row's
// patches at (site, l) are applied in its order; every element (t, u, k) is always handled by the same block
// (its stripe is fixed by t), so one barrier between patches orders overlapping ones as on the CPU.
static __global__ void patch_kernel(const ps_cu_row *rows, const ps_cu_patch *patches, int64_t r0, int site, int64_t l,
                                    float *buf, int64_t ld) {
    const ps_cu_row *row = &rows[r0 + blockIdx.x];
    const int64_t s = row->start_pos;
    for (int32_t p = row->pb; p < row->pe; p++) {
        const ps_cu_patch *pt = &patches[p];
        if (pt->site != site || pt->layer != l) continue;  // uniform over the block
        const int64_t unit = pt->unit, len = (pt->u1 - pt->u0) * unit;
        for (int64_t t = pt->t0 + blockIdx.y; t < pt->t1; t += gridDim.y) {
            const float *from_row = NULL;
            if (pt->op == PS_OP_MEAN || pt->op == PS_OP_ADD) {
                const int64_t r = pt->map[t];
                if (r < 0) continue;  // the view leaves position t alone (uniform: t is the block's)
                from_row = pt->ref + r * pt->ref_width;
            }
            float *dst = buf + (row->off + t - s) * ld;  // token t of the row is buffer row off + t - s
            for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
                const int64_t u = pt->u0 + i / unit, k = i % unit;
                if (pt->head_mask && !((pt->head_mask >> u) & 1)) continue;
                float from = 0.0f;
                if (pt->src) from = pt->src[t * pt->src_pos + u * pt->src_unit + k];
                else if (from_row) from = from_row[u * unit + k];
                dst[u * unit + k] = ps_cu_op_value(pt->op, dst[u * unit + k], from, pt->factor);
            }
        }
        __syncthreads();
    }
}

// Rows [r0, r0 + gridDim.x) that are cache rows copy their (n, width) slice of buf into cache array arr at layer
// l: a position-major array, so the slice is contiguous there (width floats per position, from position 0).
static __global__ void store_kernel(const ps_cu_row *rows, int64_t r0, int arr, int64_t l, const float *buf,
                                    int64_t width) {
    const ps_cu_row *row = &rows[r0 + blockIdx.x];
    const ps_cu_arr a = row->ca[arr];
    if (!a.p) return;
    float *dst = a.p + l * a.layer;
    const float *src = buf + row->off * width;
    const int64_t n = row->n * width;
    for (int64_t i = blockIdx.y * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.y * blockDim.x)
        dst[i] = src[i];
}

ps_cu_patch ps_cu_patch_desc(const ps_model_config *cfg, const ps_row *row, const ps_patch *pt, const float *src,
                             const float *ref, const int64_t *map) {
    ps_cu_patch d;
    memset(&d, 0, sizeof d);
    const ps_array a = ps_site_array(pt->site);
    const int64_t T = row->T, s = row->start_pos, units = ps_site_units(cfg, pt->site);
    d.site = (int32_t)pt->site;
    d.op = (int32_t)pt->op;
    d.layer = pt->layer;
    d.t0 = pt->pos < 0 ? s : pt->pos;
    d.t1 = pt->pos < 0 ? T : pt->pos + 1;
    if (d.t0 < s) d.t0 = s;
    if (d.t1 < d.t0) d.t1 = d.t0;
    d.unit = ps_site_unit(cfg, pt->site, T);
    // The selected units: one run (ps_patch_run) or, with a head mask, every unit tested against the mask.
    if (pt->head_mask) {
        d.u0 = 0;
        d.u1 = units;
        d.head_mask = pt->head_mask;
    } else if (!ps_patch_run(pt, units, 0, &d.u0, &d.u1)) {
        d.t1 = d.t0;  // selects nothing
    }
    if ((pt->op == PS_OP_REPLACE || pt->op == PS_OP_FREEZE) && src) {
        const ps_cu_arr sa = ps_cu_arr_of(cfg, a, T, src);
        d.src = sa.p + pt->layer * sa.layer;
        d.src_pos = sa.pos;
        d.src_unit = sa.unit;
    }
    if (pt->op == PS_OP_MEAN || pt->op == PS_OP_ADD) {
        d.ref = ref;
        d.map = map;
        d.ref_width = ps_site_width(cfg, pt->site, T);
    }
    d.factor = pt->factor;
    return d;
}

int ps_cu_patch_launch(cudaStream_t st, const ps_cu_row *rows, const ps_cu_patch *patches, int64_t r0, int64_t r1,
                       int site, int64_t l, float *buf, int64_t ld, int64_t T_max, ps_error *e) {
    PS_REQUIRE(e, r0 >= 0 && r1 >= r0 && r1 - r0 <= 0x7fffffff && l >= 0 && T_max >= 0);
    PS_REQUIRE(e, site >= 0 && site < PS_SITE_COUNT && site != PS_SITE_PATTERN && ld > 0);
    if (r1 == r0 || T_max == 0) return 0;
    PS_REQUIRE(e, rows && patches && buf);
    const unsigned stripes = (unsigned)(T_max < 64 ? T_max : 64);
    dim3 grid((unsigned)(r1 - r0), stripes);
    patch_kernel<<<grid, 256, 0, st>>>(rows, patches, r0, site, l, buf, ld);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_store_launch(cudaStream_t st, const ps_cu_row *rows, int64_t r0, int64_t r1, ps_array arr, int64_t l,
                       const float *buf, int64_t width, int64_t T_max, ps_error *e) {
    PS_REQUIRE(e, r0 >= 0 && r1 >= r0 && r1 - r0 <= 0x7fffffff && l >= 0 && width > 0 && T_max >= 0);
    PS_REQUIRE(e, (int)arr >= 0 && arr < PS_ARR_COUNT && !ps_arrays[arr].head_major);
    if (r1 == r0 || T_max == 0) return 0;
    PS_REQUIRE(e, rows && buf);
    int64_t chunks = (T_max * width + 255) / 256;
    if (chunks > 1024) chunks = 1024;
    dim3 grid((unsigned)(r1 - r0), (unsigned)chunks);
    store_kernel<<<grid, 256, 0, st>>>(rows, r0, (int)arr, l, buf, width);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_patch(ps_cu_ctx *c, ps_cu_batch *bt, int64_t r0, int64_t r1, ps_site site, int64_t l, float *buf,
                   ps_error *e) {
    if (site == PS_SITE_PATTERN) return 0;  // applied inside attention
    // Every hook buffer holds a position's units together: its per-token stride is the site's width.
    const int64_t ld = ps_site_width(&c->cfg, site, bt->T_max);
    return ps_cu_patch_launch(c->stream, bt->rows, bt->patches, r0, r1, (int)site, l, buf, ld, bt->T_max, e);
}

int ps_cu_op_store(ps_cu_ctx *c, ps_cu_batch *bt, int64_t n_active, ps_array arr, int64_t l, const float *buf,
                   ps_error *e) {
    const int64_t r1 = n_active < bt->cache_span ? n_active : bt->cache_span;
    if (r1 <= 0) return 0;
    // Position-major arrays' width does not depend on T (only pattern/scores' does, and they are head-major).
    const int64_t width = ps_array_width(&c->cfg, arr, 1);
    return ps_cu_store_launch(c->stream, bt->rows, 0, r1, arr, l, buf, width, bt->T_max, e);
}
