// The CUDA backend's batch runner: one forward over every row of a batch, reproducing ps_cpu_forward's row
// semantics exactly (cpu_forward.c is the reference; every step below names the step it mirrors) with one
// batched launch per op over all rows. It does not narrow rows (PS_CAPS_CUDA has no PS_CAP_NARROW), so the
// engine plans whole patched layers for it: the same numbers, more arithmetic. Interventions (every ps_op, head
// masks) and captures are applied at the same hooks and in the same order as cpu_patch.c. Narrowing would mirror
// cpu_forward.c's plan_layer and its compacted Q/K/V and W_O+MLP steps; tests/gpu/test_gpu_sweeps.c compares
// with the CPU's narrowed run. Families: GPT-2, Llama (rotary, SwiGLU), GPT-NeoX (partial rotary, parallel or
// sequential residual). Unrun: no GPU has executed this file yet (GPT-NeoX's path included).
#include "ps_cuda_internal.h"

#include <stdio.h>

// Bump allocation of one workspace (ps_cu_take).
static size_t take(size_t *at, size_t bytes) { return ps_cu_take(at, bytes); }

// ---------------------------------------------------------------------------------------------
// The forward pass

typedef struct {
    ps_row *row;
    int64_t off, n;
} slot_t;

static int cmp_start_layer(const void *a, const void *b) {
    const slot_t *x = (const slot_t *)a, *y = (const slot_t *)b;
    if (x->row->start_layer != y->row->start_layer) return x->row->start_layer < y->row->start_layer ? -1 : 1;
    return x->row < y->row ? -1 : (x->row > y->row);
}

// A trip wire for PS_CAPS_CUDA: when ps_patch, ps_view, ps_capture or ps_row grows a field (a new intervention
// op, a new row feature), the CUDA build stops here until this file implements it or check_rows refuses rows that
// use it (and caps stays without its bit), so such a row is never run as if it were a plain one. Sizes are LP64's.
// Implemented today: every op of ps_op (replace, freeze, zero, mean, add, scale), head masks and captures; refused
// through ps_row_check: narrowing (PS_CAPS_CUDA has no PS_CAP_NARROW; the engine then plans whole layers), and with it
// head_delta, which acts only on a narrowed row (PS_CAP_HEAD_DELTA is not in PS_CAPS_CUDA either; callers leave it 0).
static_assert(sizeof(ps_patch) == 96, "ps_patch changed: implement the new field here or refuse it in check_rows, then update this size");
static_assert(sizeof(ps_view) == 24, "ps_view changed: implement the new field here or refuse it in check_rows, then update this size");
static_assert(sizeof(ps_capture) == 24, "ps_capture changed: implement the new field here or refuse it in check_rows, then update this size");
static_assert(PS_OP_COUNT == 6, "a new ps_op: implement it in ps_cu_op_value (ps_cuda_internal.h) and patch.cu, then update this count");
static_assert(sizeof(ps_row) == 144, "ps_row changed: implement the new field here or refuse it in check_rows, then update this size");

// The same checks as ps_cpu_forward, plus the ones the device cannot afford to get wrong (sizes of caches).
static int check_rows(const ps_model_config *cfg, ps_row *rows, int64_t n_rows, ps_error *e) {
    const int64_t L = cfg->n_layers, V = cfg->d_vocab;
    for (int64_t r = 0; r < n_rows; r++) {
        ps_row *row = &rows[r];
        // The engine checks rows against caps too; a caller that bypasses it must not get a plain row's numbers.
        if (ps_row_check(cfg, row, PS_CAPS_CUDA, "cuda", e) != 0) return -1;
        if (row->T <= 0 || row->T > cfg->n_ctx || row->start_pos < 0 || row->start_pos >= row->T || row->start_layer < 0 ||
            row->start_layer > L || ((row->start_layer > 0 || row->start_pos > 0) && !row->base) ||
            (row->cache && (row->start_layer || row->start_pos)))
            return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld is inconsistent (T=%lld start_layer=%lld start_pos=%lld)",
                           (long long)r, (long long)row->T, (long long)row->start_layer, (long long)row->start_pos);
        for (int64_t i = 0; i < row->T; i++)
            if (row->tokens[i] < 0 || row->tokens[i] >= V)
                return ps_fail(e, PS_EXIT_BADINPUT, "forward: token id %d at position %lld is outside the vocabulary (%lld)",
                               row->tokens[i], (long long)i, (long long)V);
        for (int64_t o = 0; o < row->n_out; o++) {
            const int64_t t = row->out_pos[o];
            if (t < row->start_pos || t >= row->T)
                return ps_fail(e, PS_EXIT_RUNTIME, "forward: output position %lld outside [%lld, %lld)", (long long)t,
                               (long long)row->start_pos, (long long)row->T);
        }
        if (row->n_out && !row->logits) return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld has no logits buffer", (long long)r);
        if (row->cols)
            for (int64_t c = 0; c < row->n_cols; c++)
                if (row->cols[c] < 0 || row->cols[c] >= V)
                    return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld: column %d outside the vocabulary (%lld)",
                                   (long long)r, row->cols[c], (long long)V);
        const int from_base = row->start_layer > 0 || row->start_pos > 0;
        if (from_base && (row->base->T != row->T || !row->base->resid_pre || !row->base->resid_post || !row->base->v ||
                          !(cfg->rotary_dim > 0 ? row->base->rot_k : row->base->k)))
            return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld: its base cache does not match it (T=%lld, row T=%lld)",
                           (long long)r, (long long)row->base->T, (long long)row->T);
        if (row->cache && row->cache->T != row->T)
            return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld: its cache has T=%lld, the row T=%lld", (long long)r,
                           (long long)row->cache->T, (long long)row->T);
        // Patches and captures (sites, layers, units, sources, reference views) were checked by ps_row_check.
    }
    return ps_rows_check_aliasing(rows, n_rows, e);
}

// ---------------------------------------------------------------------------------------------
// Reference views and captures of a batch (host bookkeeping)

// A mean/add patch's reference rows, uploaded once per batch however many patches share them.
typedef struct {
    const float *data;
    int64_t rows, width;
    size_t off;        // floats into the batch's reference area
} ref_t;

// A capture of a row at (site, layer): a device buffer of (n, width) from the row's start_pos; captures of the
// same (row, site, layer) share the first one's buffer (owner).
typedef struct {
    const ps_capture *cp;
    int64_t slot, n, width;
    int64_t owner;     // index of the capture whose buffer holds the values (itself when first)
    int fires;         // the row recomputes this hook (else base's values, filled on the host, stand)
    size_t off;        // floats into the batch's capture area (owners)
} cap_t;

typedef struct {
    ref_t *refs;
    int64_t n_refs;
    size_t ref_floats;
    int64_t *patch_ref;     // per patch of the batch (in slot order): its ref, or -1
    int64_t n_map;          // int64 entries of the position maps (T per mean/add patch)
    cap_t *caps;
    int64_t n_caps;
    size_t cap_floats;
    int any_pattern_cap;
    unsigned char *cap_has; // (site, layer): some owner capture fires there
} extras_t;

static void extras_free(extras_t *x) {
    free(x->refs);
    free(x->patch_ref);
    free(x->caps);
    free(x->cap_has);
}

// Rows in slot order: unique reference views, the size of the maps, and the captures with their buffers.
static int plan_extras(const ps_model_config *cfg, const slot_t *slots, int64_t n_rows, int64_t n_patch, extras_t *x,
                       ps_error *e) {
    const int64_t L = cfg->n_layers;
    memset(x, 0, sizeof *x);
    int64_t n_caps = 0;
    for (int64_t r = 0; r < n_rows; r++) n_caps += slots[r].row->n_captures;
    x->refs = (ref_t *)calloc((size_t)(n_patch ? n_patch : 1), sizeof *x->refs);
    x->patch_ref = (int64_t *)calloc((size_t)(n_patch ? n_patch : 1), sizeof *x->patch_ref);
    x->caps = (cap_t *)calloc((size_t)(n_caps ? n_caps : 1), sizeof *x->caps);
    x->cap_has = (unsigned char *)calloc((size_t)(PS_SITE_COUNT * L), 1);
    if (!x->refs || !x->patch_ref || !x->caps || !x->cap_has) return ps_fail(e, PS_EXIT_RUNTIME, "forward: out of host memory");
    for (int64_t r = 0, p_at = 0; r < n_rows; r++) {
        const ps_row *row = slots[r].row;
        for (int64_t p = 0; p < row->n_patches; p++, p_at++) {
            const ps_patch *pt = &row->patches[p];
            x->patch_ref[p_at] = -1;
            if (pt->op != PS_OP_MEAN && pt->op != PS_OP_ADD) continue;
            const int64_t width = ps_site_width(cfg, pt->site, row->T);
            int64_t k = 0;
            while (k < x->n_refs && !(x->refs[k].data == pt->ref.data && x->refs[k].rows == pt->ref.rows && x->refs[k].width == width)) k++;
            if (k == x->n_refs) {
                ref_t rf = {pt->ref.data, pt->ref.rows, width, x->ref_floats};
                x->refs[x->n_refs++] = rf;
                x->ref_floats += (size_t)(pt->ref.rows * width);
            }
            x->patch_ref[p_at] = k;
            x->n_map += row->T;
        }
        for (int64_t k = 0; k < row->n_captures; k++) {
            const ps_capture *cp = &row->captures[k];
            cap_t cb;
            memset(&cb, 0, sizeof cb);
            cb.cp = cp;
            cb.slot = r;
            cb.n = slots[r].n;
            cb.width = ps_site_width(cfg, cp->site, row->T);
            // Without narrowing a row recomputes every hook of every layer from its start layer; a row past the
            // last layer only its final resid_post hook (cpu_forward.c's unembed_step).
            cb.fires = cp->layer >= row->start_layer ||
                       (row->start_layer == L && cp->site == PS_SITE_RESID_POST && cp->layer == L - 1);
            cb.owner = x->n_caps;
            for (int64_t j = 0; j < x->n_caps; j++)
                if (x->caps[j].slot == r && x->caps[j].cp->site == cp->site && x->caps[j].cp->layer == cp->layer) {
                    cb.owner = j;
                    break;
                }
            if (cb.owner == x->n_caps && cb.fires) {
                cb.off = x->cap_floats;
                x->cap_floats += (size_t)(cb.n * cb.width);
                x->cap_has[cp->site * L + cp->layer] = 1;
                x->any_pattern_cap |= cp->site == PS_SITE_PATTERN;
            }
            x->caps[x->n_caps++] = cb;
        }
    }
    return 0;
}

// What every hook of the forward does, after the step that produced buf: the rows' patches at (site, l), then
// their captures there (cpu_patch.c's ps_cpu_hook order). Pattern patches and captures happen in attention.
typedef struct {
    ps_cu_ctx *c;
    ps_cu_batch *bt;
    const unsigned char *has;
    const extras_t *x;
    const slot_t *slots;
    float *cap_dev;
    int64_t L;
} hooks_t;

static int run_hook(const hooks_t *hk, ps_site site, int64_t l, float *buf, int64_t r0, int64_t r1, ps_error *e) {
    const int64_t at = site * hk->L + l;
    if (hk->has[at]) PS_TRY(ps_cu_op_patch(hk->c, hk->bt, r0, r1, site, l, buf, e));
    if (!hk->x->cap_has[at] || site == PS_SITE_PATTERN) return 0;
    for (int64_t k = 0; k < hk->x->n_caps; k++) {
        const cap_t *cb = &hk->x->caps[k];
        if (cb->owner != k || !cb->fires || cb->cp->site != site || cb->cp->layer != l || cb->slot < r0 || cb->slot >= r1) continue;
        // Every hook buffer holds a position's units together with stride = the site's width: the row's slice
        // [off, off + n) is contiguous.
        CUDA_CHECK(e, cudaMemcpyAsync(hk->cap_dev + cb->off, buf + hk->slots[cb->slot].off * cb->width,
                                      (size_t)(cb->n * cb->width) * sizeof(float), cudaMemcpyDeviceToDevice, hk->c->stream));
    }
    return 0;
}

// After the batch: each capture that fired gets its positions [start_pos, T) from its owner's buffer (the
// stream is drained; out is the caller's pageable memory).
static int captures_back(const extras_t *x, const slot_t *slots, const float *cap_dev, ps_error *e) {
    for (int64_t k = 0; k < x->n_caps; k++) {
        const cap_t *cb = &x->caps[k];
        if (!cb->fires) continue;
        const cap_t *ow = &x->caps[cb->owner];
        CUDA_CHECK(e, cudaMemcpy(cb->cp->out + slots[cb->slot].row->start_pos * cb->width, cap_dev + ow->off,
                                 (size_t)(cb->n * cb->width) * sizeof(float), cudaMemcpyDeviceToHost));
    }
    return 0;
}

// ---------------------------------------------------------------------------------------------
// The forward over a batch

int ps_cu_run_batch(ps_cu_backend *im, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    ps_cu_ctx *c = &im->ctx;
    const ps_model_config *cfg = &m->cfg;
    const int64_t L = cfg->n_layers, C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads, D = cfg->d_head,
                  M = cfg->d_mlp, V = cfg->d_vocab;
    const int llama = cfg->arch == PS_ARCH_LLAMA;
    // Rotary models (Llama: every dim of a head; GPT-NeoX: the first rotary_dim) attend with rot_q/rot_k.
    const int rotary = cfg->rotary_dim > 0;
    const int64_t R = cfg->rotary_dim;
    const int64_t QD = H * D, KD = Hkv * D;
    if (n_rows <= 0) return 0;
    PS_TRY(check_rows(cfg, rows, n_rows, e));

    // Rows ordered by start layer, so the rows active at layer l are a prefix of the buffers (as on the CPU).
    slot_t *slots = (slot_t *)calloc((size_t)n_rows, sizeof *slots);
    size_t *base_off = (size_t *)calloc((size_t)n_rows * 2, sizeof(size_t));
    int64_t n_patch = 0;
    for (int64_t r = 0; r < n_rows; r++) n_patch += rows[r].n_patches;
    size_t *src_off = (size_t *)calloc((size_t)(n_patch ? n_patch : 1), sizeof(size_t));
    unsigned char *has = (unsigned char *)calloc((size_t)(PS_SITE_COUNT * L), 1);
    extras_t xt;
    memset(&xt, 0, sizeof xt);
    int rc = 0;
#define FAIL(x) do { rc = (x); goto done; } while (0)
#define TRY(x) do { int t_ = (x); if (t_) FAIL(t_); } while (0)
    if (!slots || !base_off || !src_off || !has) FAIL(ps_fail(e, PS_EXIT_RUNTIME, "forward: out of host memory"));
    {
        size_t *cache_off = base_off + n_rows;
        for (int64_t r = 0; r < n_rows; r++) slots[r].row = &rows[r];
        qsort(slots, (size_t)n_rows, sizeof *slots, cmp_start_layer);
        int64_t N = 0, T_max = 0, n_out_total = 0, n_full = 0, n_cols_out = 0, n_cols_jobs = 0, n_cols_tab = 0;
        int64_t cache_span = 0;
        for (int64_t r = 0; r < n_rows; r++) {
            ps_row *row = slots[r].row;
            slots[r].off = N;
            slots[r].n = row->T - row->start_pos;
            N += slots[r].n;
            if (row->T > T_max) T_max = row->T;
            n_out_total += row->n_out;
            if (row->cols) {
                n_cols_out += row->n_out * row->n_cols;
                n_cols_jobs += row->n_cols ? row->n_out : 0;
                n_cols_tab += row->n_cols;
            } else {
                n_full += row->n_out;
            }
            if (row->cache) cache_span = r + 1;
            for (int64_t p = 0; p < row->n_patches; p++) {
                const ps_patch *pt = &row->patches[p];
                if (pt->layer >= 0 && pt->layer < L) has[pt->site * L + pt->layer] = 1;
            }
        }
        TRY(plan_extras(cfg, slots, n_rows, n_patch, &xt, e));
        // Captures start as base's values everywhere (the positions and layers the row does not recompute);
        // the device's values replace the rest once the batch is done.
        for (int64_t r = 0; r < n_rows; r++) ps_captures_from_base(cfg, slots[r].row);

        // Device copies of every cache the rows read (uploaded unless valid) or fill (cache rows).
        im->clock++;
        for (int64_t r = 0, p_at = 0; r < n_rows; r++) {
            ps_row *row = slots[r].row;
            if (row->start_layer > 0 || row->start_pos > 0)
                TRY(ps_cu_cache_place(im, row->base, PS_CU_CACHE_INPUT, &base_off[r], e));
            for (int64_t p = 0; p < row->n_patches; p++, p_at++)
                if (ps_patch_reads_src(&row->patches[p]))
                    TRY(ps_cu_cache_place(im, row->patches[p].src, PS_CU_CACHE_INPUT, &src_off[p_at], e));
            if (row->cache) TRY(ps_cu_cache_place(im, row->cache, PS_CU_CACHE_OUTPUT, &cache_off[r], e));
        }

        // Workspace: per-token buffers as in cpu_forward.c, the half-precision GEMM input, outputs, reference rows,
        // capture buffers, descriptors.
        const int64_t widest = C > QD ? (C > M ? C : M) : (QD > M ? QD : M);
        const int64_t n_half_rows = N > n_out_total ? N : n_out_total;
        size_t at = 0;
        const size_t o_x = take(&at, (size_t)(N * C) * 4), o_xn = take(&at, (size_t)(N * C) * 4),
                     o_y = take(&at, (size_t)(N * C) * 4), o_q = take(&at, (size_t)(N * QD) * 4),
                     o_k = take(&at, (size_t)(N * KD) * 4), o_v = take(&at, (size_t)(N * KD) * 4),
                     o_z = take(&at, (size_t)(N * QD) * 4), o_h1 = take(&at, (size_t)(N * M) * 4),
                     o_h2 = take(&at, (size_t)(N * M) * 4), o_h3 = take(&at, llama ? (size_t)(N * M) * 4 : 0),
                     o_scale = take(&at, (size_t)N * 4), o_cos = take(&at, rotary ? (size_t)(N * (R / 2)) * 4 : 0),
                     o_sin = take(&at, rotary ? (size_t)(N * (R / 2)) * 4 : 0),
                     o_xo = take(&at, (size_t)(n_out_total * C) * 4),
                     o_half = take(&at, im->ctx.prec == PS_PREC_FP32 ? 0 : (size_t)(n_half_rows * widest) * 2),
                     o_ref = take(&at, xt.ref_floats * 4), o_cap = take(&at, xt.cap_floats * 4);
        const size_t lout_bytes = (size_t)(n_full * V + n_cols_out) * 4;
        const size_t o_lout = take(&at, lout_bytes);
        // Descriptors: laid out identically in the host staging buffer and copied in one transfer.
        const int64_t n_pcap = xt.any_pattern_cap ? n_rows * L : 0;
        size_t mat = 0;
        const size_t m_rows = take(&mat, (size_t)n_rows * sizeof(ps_cu_row)),
                     m_patch = take(&mat, (size_t)n_patch * sizeof(ps_cu_patch)),
                     m_tokrow = take(&mat, (size_t)N * 4), m_tokens = take(&mat, (size_t)N * 4),
                     m_pos = take(&mat, (size_t)N * 8), m_idx = take(&mat, (size_t)n_out_total * 8),
                     m_cols = take(&mat, (size_t)n_cols_tab * 4),
                     m_jobs = take(&mat, (size_t)n_cols_jobs * sizeof(ps_cu_unembed_job)),
                     m_map = take(&mat, (size_t)xt.n_map * 8), m_pcap = take(&mat, (size_t)n_pcap * sizeof(float *));
        const size_t meta_bytes = ps_cu_align_up(mat, 256);
        const size_t o_meta = take(&at, meta_bytes);
        TRY(ps_cu_ensure_ws(im, at, e));
        const size_t flag_at = ps_cu_align_up(lout_bytes, 256);  // the overflow flag's copy, after the logits
        TRY(ps_cu_ensure_host(im, meta_bytes > flag_at + 256 ? meta_bytes : flag_at + 256, e));
        char *ws = im->ws, *hs = im->host;
        c->half_buf = im->ctx.prec == PS_PREC_FP32 ? NULL : ws + o_half;
        c->half_cap = im->ctx.prec == PS_PREC_FP32 ? 0 : (size_t)(n_half_rows * widest);
        float *ref_dev = (float *)(ws + o_ref), *cap_dev = (float *)(ws + o_cap);
        for (int64_t k = 0; k < xt.n_refs; k++) {
            const ref_t *rf = &xt.refs[k];
            // From the caller's pageable memory: the runtime stages it before returning, so no lifetime issue.
            cudaError_t err = cudaMemcpyAsync(ref_dev + rf->off, rf->data, (size_t)(rf->rows * rf->width) * sizeof(float),
                                              cudaMemcpyHostToDevice, c->stream);
            if (err != cudaSuccess)
                FAIL(ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: uploading reference rows: %s", __FILE__, __LINE__, cudaGetErrorString(err)));
        }

        // Fill the descriptors (the arena is final now: every cache has its place).
        ps_cu_row *hrows = (ps_cu_row *)(hs + m_rows);
        ps_cu_patch *hpat = (ps_cu_patch *)(hs + m_patch);
        int32_t *htokrow = (int32_t *)(hs + m_tokrow), *htok = (int32_t *)(hs + m_tokens);
        int64_t *hpos = (int64_t *)(hs + m_pos), *hidx = (int64_t *)(hs + m_idx), *hmap = (int64_t *)(hs + m_map);
        int32_t *hcols = (int32_t *)(hs + m_cols);
        ps_cu_unembed_job *hjobs = (ps_cu_unembed_job *)(hs + m_jobs);
        float **hpcap = (float **)(hs + m_pcap);
        int64_t p_at = 0, idx_full = 0, idx_cols = n_full, cols_at = 0, jobs_at = 0, out_cols_at = n_full * V, map_at = 0;
        for (int64_t i = 0; i < n_pcap; i++) hpcap[i] = NULL;
        for (int64_t k = 0; k < xt.n_caps; k++) {
            const cap_t *cb = &xt.caps[k];
            if (cb->owner == k && cb->fires && cb->cp->site == PS_SITE_PATTERN) hpcap[cb->slot * L + cb->cp->layer] = cap_dev + cb->off;
        }
        for (int64_t r = 0; r < n_rows; r++) {
            const ps_row *row = slots[r].row;
            const int64_t T = row->T;
            ps_cu_row d;
            memset(&d, 0, sizeof d);
            d.off = slots[r].off;
            d.n = slots[r].n;
            d.T = T;
            d.start_pos = row->start_pos;
            d.from_base = row->start_layer > 0 || row->start_pos > 0;
            if (d.from_base) {
                const ps_cache *b = row->base;
                d.base_resid_pre = ps_cu_arr_of(cfg, PS_ARR_RESID_PRE, T, ps_cu_cache_field(im, base_off[r], b, b->resid_pre));
                d.base_resid_post = ps_cu_arr_of(cfg, PS_ARR_RESID_POST, T, ps_cu_cache_field(im, base_off[r], b, b->resid_post));
                if (row->start_pos > 0) {
                    const ps_array ka = rotary ? PS_ARR_ROT_K : PS_ARR_K;
                    d.base_k = ps_cu_arr_of(cfg, ka, T, ps_cu_cache_field(im, base_off[r], b, ps_cache_array(b, ka)));
                    d.base_v = ps_cu_arr_of(cfg, PS_ARR_V, T, ps_cu_cache_field(im, base_off[r], b, b->v));
                }
            }
            d.pb = (int32_t)p_at;
            for (int64_t p = 0; p < row->n_patches; p++, p_at++) {
                const ps_patch *pt = &row->patches[p];
                const float *src = ps_patch_reads_src(pt) ? ps_cu_cache_field(im, src_off[p_at], pt->src, ps_cache_site(pt->src, pt->site)) : NULL;
                const float *ref = NULL;
                const int64_t *map = NULL;
                if (xt.patch_ref[p_at] >= 0) {
                    ref = ref_dev + xt.refs[xt.patch_ref[p_at]].off;
                    map = (const int64_t *)(ws + o_meta + m_map) + map_at;
                    for (int64_t t = 0; t < T; t++) hmap[map_at + t] = ps_view_row(&pt->ref, t);
                    map_at += T;
                }
                hpat[p_at] = ps_cu_patch_desc(cfg, row, pt, src, ref, map);
            }
            d.pe = (int32_t)p_at;
            if (row->cache)
                for (int k = 0; k < PS_ARR_COUNT; k++)
                    d.ca[k] = ps_cu_arr_of(cfg, (ps_array)k, T,
                                           ps_cu_cache_field(im, cache_off[r], row->cache, ps_cache_array(row->cache, (ps_array)k)));
            hrows[r] = d;
            for (int64_t i = 0; i < d.n; i++) {
                htokrow[d.off + i] = (int32_t)r;
                htok[d.off + i] = row->tokens[row->start_pos + i];
                hpos[d.off + i] = row->start_pos + i;
            }
            // Gathered outputs: every full-vocabulary row first (one GEMM), then the rows with columns.
            if (!row->cols) {
                for (int64_t o = 0; o < row->n_out; o++) hidx[idx_full++] = d.off + row->out_pos[o] - row->start_pos;
            } else {
                for (int64_t o = 0; o < row->n_out; o++) {
                    if (row->n_cols) {
                        ps_cu_unembed_job jb = {idx_cols, cols_at, row->n_cols, out_cols_at};
                        hjobs[jobs_at++] = jb;
                    }
                    hidx[idx_cols++] = d.off + row->out_pos[o] - row->start_pos;
                    out_cols_at += row->n_cols;
                }
                if (row->n_cols) memcpy(hcols + cols_at, row->cols, (size_t)row->n_cols * sizeof(int32_t));
                cols_at += row->n_cols;
            }
        }
        if (c->overflow) {
            cudaError_t err = cudaMemsetAsync(c->overflow, 0, sizeof(int), c->stream);
            if (err != cudaSuccess) FAIL(ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: cudaMemsetAsync: %s", __FILE__, __LINE__, cudaGetErrorString(err)));
        }
        if (meta_bytes) {
            cudaError_t err = cudaMemcpyAsync(ws + o_meta, hs, meta_bytes, cudaMemcpyHostToDevice, c->stream);
            if (err != cudaSuccess)
                FAIL(ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: copying the batch descriptors: %s", __FILE__, __LINE__,
                             cudaGetErrorString(err)));
        }
        for (int64_t r = 0; r < n_rows; r++)
            if (slots[r].row->cache) {
                cudaError_t err = cudaMemsetAsync(im->arena + cache_off[r], 0, slots[r].row->cache->n_floats * 4, c->stream);
                if (err != cudaSuccess) FAIL(ps_fail(e, PS_EXIT_RUNTIME, "cudaMemsetAsync: %s", cudaGetErrorString(err)));
            }

        ps_cu_batch bt;
        memset(&bt, 0, sizeof bt);
        bt.n_rows = n_rows;
        bt.N = N;
        bt.T_max = T_max;
        bt.cache_span = cache_span;
        bt.rows = (const ps_cu_row *)(ws + o_meta + m_rows);
        bt.patches = (const ps_cu_patch *)(ws + o_meta + m_patch);
        bt.tok_row = (const int32_t *)(ws + o_meta + m_tokrow);
        bt.tokens = (const int32_t *)(ws + o_meta + m_tokens);
        bt.pos = (const int64_t *)(ws + o_meta + m_pos);
        bt.pat_cap = n_pcap ? (float *const *)(ws + o_meta + m_pcap) : NULL;
        bt.x = (float *)(ws + o_x); bt.xn = (float *)(ws + o_xn); bt.y = (float *)(ws + o_y);
        bt.q = (float *)(ws + o_q); bt.k = (float *)(ws + o_k); bt.v = (float *)(ws + o_v); bt.z = (float *)(ws + o_z);
        bt.h1 = (float *)(ws + o_h1); bt.h2 = (float *)(ws + o_h2); bt.h3 = llama ? (float *)(ws + o_h3) : NULL;
        bt.scale = (float *)(ws + o_scale);
        bt.rope_cos = rotary ? (float *)(ws + o_cos) : NULL;
        bt.rope_sin = rotary ? (float *)(ws + o_sin) : NULL;
        const ps_cu_weights *w = &c->w;
        const hooks_t hk = {c, &bt, has, &xt, slots, cap_dev, L};
        if (rotary) TRY(ps_cu_op_rope_table(c, &bt, e));

        int64_t n_active = 0;
        for (int64_t l = 0; l < L; l++) {
            // Rows joining at this layer start from the base run's residual stream (or the embedding).
            const int64_t first_new = n_active;
            while (n_active < n_rows && slots[n_active].row->start_layer <= l) n_active++;
            const int64_t NA = n_active ? slots[n_active - 1].off + slots[n_active - 1].n : 0;
            if (first_new < n_active) TRY(ps_cu_op_join(c, &bt, slots[first_new].off, NA, l, 0, e));
            if (NA == 0) continue;
            const int64_t ra = n_active;
#define PATCH(site, buf) TRY(run_hook(&hk, (site), l, (buf), 0, ra, e))
#define STORE(arr, buf) TRY(ps_cu_op_store(c, &bt, ra, (arr), l, (buf), e))
// The end of the attention or MLP block: y = in @ W + bias (the block's output hook), x += y (the residual hook).
#define BLOCK_OUT(in, in_w, W, bias, out_site, out_arr, resid_site, resid_arr)       \
    do {                                                                            \
        TRY(ps_cu_op_linear(c, bt.y, (in), (W), (bias), NA, (in_w), C, e));         \
        PATCH(out_site, bt.y);                                                      \
        STORE(out_arr, bt.y);                                                    \
        TRY(ps_cu_op_residual(c, &bt, NA, e));                                      \
        PATCH(resid_site, bt.x);                                                    \
        STORE(resid_arr, bt.x);                                                  \
    } while (0)

            PATCH(PS_SITE_RESID_PRE, bt.x);
            STORE(PS_ARR_RESID_PRE, bt.x);

            // Attention block
            TRY(ps_cu_op_norm(c, 1, l, bt.xn, bt.scale, bt.x, NA, e));
            STORE(PS_ARR_LN1_SCALE, bt.scale);
            TRY(ps_cu_op_linear(c, bt.q, bt.xn, ps_cu_mat_at(w->w_q, (size_t)(l * C * QD)), w->b_q ? w->b_q + l * QD : NULL, NA, C, QD, e));
            TRY(ps_cu_op_linear(c, bt.k, bt.xn, ps_cu_mat_at(w->w_k, (size_t)(l * C * KD)), w->b_k ? w->b_k + l * KD : NULL, NA, C, KD, e));
            TRY(ps_cu_op_linear(c, bt.v, bt.xn, ps_cu_mat_at(w->w_v, (size_t)(l * C * KD)), w->b_v ? w->b_v + l * KD : NULL, NA, C, KD, e));
            PATCH(PS_SITE_Q, bt.q);
            PATCH(PS_SITE_K, bt.k);
            PATCH(PS_SITE_V, bt.v);
            STORE(PS_ARR_Q, bt.q);
            STORE(PS_ARR_K, bt.k);
            STORE(PS_ARR_V, bt.v);
            if (rotary) {
                TRY(ps_cu_op_rotary(c, &bt, bt.q, NA, H, e));
                TRY(ps_cu_op_rotary(c, &bt, bt.k, NA, Hkv, e));
                STORE(PS_ARR_ROT_Q, bt.q);
                STORE(PS_ARR_ROT_K, bt.k);
            }
            TRY(ps_cu_op_attention(c, &bt, l, NA, e));
            PATCH(PS_SITE_Z, bt.z);
            STORE(PS_ARR_Z, bt.z);
            for (int64_t r = 0; r < ra && r < cache_span; r++) {
                const ps_cu_arr res = hrows[r].ca[PS_ARR_RESULT];
                if (!res.p) continue;
                const int64_t T = hrows[r].T;
                // (T, H, C) at layer l: the strides the per-head GEMM writes with.
                if (res.pos != H * C || res.unit != C) FAIL(ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: result layout", __FILE__, __LINE__));
                TRY(ps_cu_gemm_per_head(c, res.p + l * res.layer, bt.z + hrows[r].off * QD,
                                        ps_cu_mat_at(w->w_o, (size_t)(l * QD * C)), T, H, D, C, e));
            }
            if (!cfg->parallel_residual) {
                BLOCK_OUT(bt.z, QD, ps_cu_mat_at(w->w_o, (size_t)(l * QD * C)), w->b_o ? w->b_o + l * C : NULL,
                          PS_SITE_ATTN_OUT, PS_ARR_ATTN_OUT, PS_SITE_RESID_MID, PS_ARR_RESID_MID);
                // MLP block (the bias of the first layer is fused into the activation kernel)
                TRY(ps_cu_op_norm(c, 2, l, bt.xn, bt.scale, bt.x, NA, e));
            } else {
                // GPT-NeoX's parallel block (cpu_forward.c's mlp_step): the MLP reads ln2 of the stream entering the
                // layer and resid_post = resid_pre + attn_out + mlp_out; there is no resid_mid (ps_row_check refuses
                // its site; the cache has no such array, so nothing is stored).
                TRY(ps_cu_op_linear(c, bt.y, bt.z, ps_cu_mat_at(w->w_o, (size_t)(l * QD * C)), w->b_o ? w->b_o + l * C : NULL,
                                    NA, QD, C, e));
                PATCH(PS_SITE_ATTN_OUT, bt.y);
                STORE(PS_ARR_ATTN_OUT, bt.y);
                TRY(ps_cu_op_norm(c, 2, l, bt.xn, bt.scale, bt.x, NA, e));
                TRY(ps_cu_op_residual(c, &bt, NA, e));
            }
            STORE(PS_ARR_LN2_SCALE, bt.scale);
            TRY(ps_cu_gemm(c, bt.h1, bt.xn, ps_cu_mat_at(w->w_in, (size_t)(l * C * M)), NA, C, M, 0, e));
            if (llama) TRY(ps_cu_gemm(c, bt.h3, bt.xn, ps_cu_mat_at(w->w_up, (size_t)(l * C * M)), NA, C, M, 0, e));
            TRY(ps_cu_op_mlp_act(c, &bt, l, NA, e));
            PATCH(PS_SITE_MLP_POST, bt.h2);
            STORE(PS_ARR_MLP_PRE, bt.h1);
            if (llama) STORE(PS_ARR_MLP_PRE_LINEAR, bt.h3);
            STORE(PS_ARR_MLP_POST, bt.h2);
            BLOCK_OUT(bt.h2, M, ps_cu_mat_at(w->w_out, (size_t)(l * M * C)), w->b_out ? w->b_out + l * C : NULL,
                      PS_SITE_MLP_OUT, PS_ARR_MLP_OUT, PS_SITE_RESID_POST, PS_ARR_RESID_POST);
#undef BLOCK_OUT
#undef PATCH
#undef STORE
        }
        // Rows that start past the last layer (a patch of the final resid_post) take the base's final state.
        if (n_active < n_rows) {
            TRY(ps_cu_op_join(c, &bt, slots[n_active].off, N, L - 1, 1, e));
            TRY(run_hook(&hk, PS_SITE_RESID_POST, L - 1, bt.x, n_active, n_rows, e));
        }

        // Cache rows: final norm and logits at every position, into the cache's device copy.
        for (int64_t r = 0; r < cache_span; r++) {
            if (!slots[r].row->cache) continue;
            const int64_t T = hrows[r].T;
            TRY(ps_cu_op_norm(c, 0, 0, bt.xn, hrows[r].ca[PS_ARR_LNF_SCALE].p, bt.x + hrows[r].off * C, T, e));
            if (hrows[r].ca[PS_ARR_LOGITS].p) TRY(ps_cu_op_logits_full(c, hrows[r].ca[PS_ARR_LOGITS].p, bt.xn, T, e));
        }
        // Requested positions: gather, final norm in place, all-V logits by GEMM, chosen columns by dot products.
        float *xo = (float *)(ws + o_xo), *lout = (float *)(ws + o_lout);
        TRY(ps_cu_gather_launch(c->stream, xo, bt.x, (const int64_t *)(ws + o_meta + m_idx), n_out_total, C, e));
        TRY(ps_cu_op_norm(c, 0, 0, xo, NULL, xo, n_out_total, e));
        TRY(ps_cu_op_logits_full(c, lout, xo, n_full, e));
        TRY(ps_cu_unembed_cols_launch(c->stream, lout, xo, (const ps_cu_unembed_job *)(ws + o_meta + m_jobs), n_cols_jobs,
                                      (const int32_t *)(ws + o_meta + m_cols), w->w_u, w->b_u, C, c->overflow, e));

        // Back to the host: logits into each row, cache rows into their ps_cache.
        {
            int *hflag = (int *)(hs + flag_at);
            *hflag = 0;
            cudaError_t err = lout_bytes ? cudaMemcpyAsync(hs, lout, lout_bytes, cudaMemcpyDeviceToHost, c->stream) : cudaSuccess;
            if (err == cudaSuccess && c->overflow)
                err = cudaMemcpyAsync(hflag, c->overflow, sizeof(int), cudaMemcpyDeviceToHost, c->stream);
            if (err == cudaSuccess) err = cudaStreamSynchronize(c->stream);
            if (err != cudaSuccess)
                FAIL(ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: forward of %lld rows failed: %s", (long long)n_rows,
                             cudaGetErrorString(err)));
            // No row gets numbers computed from an infinity: the whole batch fails, naming the cause.
            if (*hflag)
                FAIL(ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend (fp16): an activation exceeded fp16's range (65504) where it "
                             "is rounded for a matrix product, so the logits would be NaN or inf; run this model with "
                             "precision bf16 or fp32"));
        }
        TRY(captures_back(&xt, slots, cap_dev, e));
        const float *hl = (const float *)hs;
        int64_t full_at = 0, cols_out = n_full * V;
        for (int64_t r = 0; r < n_rows; r++) {
            ps_row *row = slots[r].row;
            if (!row->n_out) continue;
            if (!row->cols) {
                memcpy(row->logits, hl + full_at * V, (size_t)(row->n_out * V) * sizeof(float));
                full_at += row->n_out;
            } else {
                memcpy(row->logits, hl + cols_out, (size_t)(row->n_out * row->n_cols) * sizeof(float));
                cols_out += row->n_out * row->n_cols;
            }
        }
        for (int64_t r = 0; r < cache_span; r++) {
            ps_cache *cc = slots[r].row->cache;
            if (!cc) continue;
            cudaError_t err = cudaMemcpyAsync(cc->memory, im->arena + cache_off[r], cc->n_floats * sizeof(float),
                                              cudaMemcpyDeviceToHost, c->stream);
            if (err == cudaSuccess) err = cudaStreamSynchronize(c->stream);
            if (err != cudaSuccess) FAIL(ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: copying a cache back: %s", cudaGetErrorString(err)));
            ps_cu_cache_commit(im, cc);  // host and device copies agree now
        }
    }
done:
#undef TRY
#undef FAIL
    if (rc) {
        // Nothing queued may still run when the caller frees or reuses the workspace, and no copy this call
        // touched is trusted again (issue 18: a failed cache row must not be read back as zeros).
        const cudaError_t err = cudaStreamSynchronize(c->stream);
        if (err != cudaSuccess) {
            (void)cudaGetLastError();
            // An asynchronous fault as well: a smaller batch would not help, so this is no longer "out of memory".
            if (rc == PS_CUDA_OOM) {
                char first[sizeof e->msg];
                snprintf(first, sizeof first, "%s", e->msg);
                rc = ps_fail(e, PS_EXIT_RUNTIME, "%s (and then the stream failed: %s)", first, cudaGetErrorString(err));
            }
        }
        ps_cu_cache_fail_call(im);
    }
    extras_free(&xt);
    free(slots);
    free(base_off);
    free(src_off);
    free(has);
    return rc;
}
