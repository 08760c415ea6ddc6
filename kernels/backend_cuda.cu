// The CUDA backend: weights uploaded once, host caches mirrored in a device arena, and a forward pass that
// reproduces ps_cpu_forward's row semantics exactly (forward_cpu.c is the reference; every step below names
// the step it mirrors) with one batched launch per op over all rows of the batch.
// It does not narrow rows (ps_row.narrow; caps has no PS_CAP_NARROW), so the engine plans whole patched
// layers for it: the same numbers, more arithmetic. Narrowing would mirror forward_cpu.c's plan_layer and
// its compacted Q/K/V and W_O+MLP steps; tests/gpu/test_gpu_sweeps.c compares with the CPU's narrowed run.
#include "ps_cuda_internal.h"

#include <limits.h>
#include <stdio.h>

// ---------------------------------------------------------------------------------------------
// State

// A host ps_cache mirrored on the device (same layout: one block of n_floats), keyed by its memory pointer.
typedef struct {
    const float *key;
    size_t n_floats;
    int64_t T;
    uint64_t fp;        // sampled fingerprint of the host contents when the copies last agreed
    size_t off, bytes;  // place in the arena
    uint64_t used;      // forward call that last used it; entries used by the current call are never evicted
} arena_entry;

typedef struct {
    ps_cu_ctx ctx;
    void *wmem;                 // every weight, one allocation
    size_t wbytes;
    char *arena;                // mirrored caches, one allocation, grown as needed
    size_t arena_cap, budget;
    arena_entry *ent;           // sorted by offset
    int64_t n_ent, cap_ent;
    uint64_t clock;             // forward calls so far
    char *ws;                   // batch workspace (device)
    size_t ws_cap;
    char *host;                 // pinned staging for descriptors and logits
    size_t host_cap;
} cuda_impl;

static size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// ---------------------------------------------------------------------------------------------
// The cache arena

static uint64_t fingerprint(const ps_cache *c) {
    uint64_t h = 1469598103934665603ull;
    const uint32_t *u = (const uint32_t *)c->memory;
    const size_t n = c->n_floats, samples = 1024;
    h = (h ^ (uint64_t)c->T) * 1099511628211ull;
    h = (h ^ (uint64_t)n) * 1099511628211ull;
    for (size_t i = 0; i < samples && n; i++) h = (h ^ u[i * n / samples]) * 1099511628211ull;
    if (n) h = (h ^ u[n - 1]) * 1099511628211ull;
    return h;
}

static int64_t arena_find(const cuda_impl *im, const float *key) {
    for (int64_t i = 0; i < im->n_ent; i++)
        if (im->ent[i].key == key) return i;
    return -1;
}

static void arena_remove(cuda_impl *im, int64_t i) {
    memmove(im->ent + i, im->ent + i + 1, (size_t)(im->n_ent - i - 1) * sizeof *im->ent);
    im->n_ent--;
}

static size_t arena_used(const cuda_impl *im) {
    size_t s = 0;
    for (int64_t i = 0; i < im->n_ent; i++) s += im->ent[i].bytes;
    return s;
}

// Least recently used entry that the current forward call has not touched; -1 when none.
static int64_t arena_victim(const cuda_impl *im) {
    int64_t best = -1;
    for (int64_t i = 0; i < im->n_ent; i++)
        if (im->ent[i].used < im->clock && (best < 0 || im->ent[i].used < im->ent[best].used)) best = i;
    return best;
}

// First fit between the entries; returns the insertion index, or -1.
static int64_t arena_gap(const cuda_impl *im, size_t bytes, size_t *off) {
    size_t prev = 0;
    for (int64_t i = 0; i < im->n_ent; i++) {
        if (im->ent[i].off - prev >= bytes) {
            *off = prev;
            return i;
        }
        prev = im->ent[i].off + im->ent[i].bytes;
    }
    if (im->arena_cap >= prev && im->arena_cap - prev >= bytes) {
        *off = prev;
        return im->n_ent;
    }
    return -1;
}

// A new entry for c (contents not copied); evicts least recently used entries beyond the budget, grows the
// arena (offsets are kept, so entries stay valid) when nothing fits.
static int arena_alloc(cuda_impl *im, const ps_cache *c, int64_t *idx, ps_error *e) {
    const size_t bytes = align_up(c->n_floats * sizeof(float), 256);
    for (;;) {
        size_t off = 0;
        const int64_t at = arena_gap(im, bytes, &off);
        if (at >= 0) {
            if (im->n_ent == im->cap_ent) {
                int64_t cap = im->cap_ent ? 2 * im->cap_ent : 64;
                arena_entry *p = (arena_entry *)realloc(im->ent, (size_t)cap * sizeof *p);
                if (!p) return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: out of host memory");
                im->ent = p;
                im->cap_ent = cap;
            }
            memmove(im->ent + at + 1, im->ent + at, (size_t)(im->n_ent - at) * sizeof *im->ent);
            arena_entry en = {c->memory, c->n_floats, c->T, 0, off, bytes, im->clock};
            im->ent[at] = en;
            im->n_ent++;
            *idx = at;
            return 0;
        }
        const int64_t victim = arena_victim(im);
        if (victim >= 0 && arena_used(im) + bytes > im->budget) {
            arena_remove(im, victim);
            continue;
        }
        const size_t high = im->n_ent ? im->ent[im->n_ent - 1].off + im->ent[im->n_ent - 1].bytes : 0;
        const size_t need = align_up(high + bytes, 1 << 20);
        size_t want = im->arena_cap * 2 > need ? align_up(im->arena_cap * 2, 1 << 20) : need;
        char *p = NULL;
        if (cudaMalloc((void **)&p, want) != cudaSuccess) {
            (void)cudaGetLastError();
            p = NULL;
            want = need;
            if (cudaMalloc((void **)&p, want) != cudaSuccess) {
                (void)cudaGetLastError();
                p = NULL;
            }
        }
        if (!p) {
            if (victim >= 0) {
                arena_remove(im, victim);
                continue;
            }
            ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: out of device memory for the batch's activation caches (%zu MiB)",
                    (high + bytes) >> 20);
            return PS_CUDA_OOM;
        }
        if (high) {
            cudaError_t err = cudaMemcpyAsync(p, im->arena, high, cudaMemcpyDeviceToDevice, im->ctx.stream);
            if (err == cudaSuccess) err = cudaStreamSynchronize(im->ctx.stream);
            if (err != cudaSuccess) {
                cudaFree(p);
                return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: growing the cache arena: %s", cudaGetErrorString(err));
            }
        }
        cudaStreamSynchronize(im->ctx.stream);  // nothing queued may still use the old arena
        cudaFree(im->arena);
        im->arena = p;
        im->arena_cap = want;
    }
}

// The arena offset of c's device copy. upload: c is an input (base run, patch source) whose copy must match the
// host; otherwise c is about to be computed on the device (a cache row) and only needs room.
static int cache_place(cuda_impl *im, const ps_cache *c, int upload, size_t *off, ps_error *e) {
    if (!c->memory || !c->n_floats) return ps_fail(e, PS_EXIT_RUNTIME, "forward: a cache the rows refer to is empty");
    int64_t i = arena_find(im, c->memory);
    if (i >= 0 && (im->ent[i].n_floats != c->n_floats || im->ent[i].T != c->T)) {
        arena_remove(im, i);  // another cache now lives at that address
        i = -1;
    }
    int fresh = 0;
    if (i < 0) {
        PS_TRY(arena_alloc(im, c, &i, e));
        fresh = 1;
    }
    arena_entry *en = &im->ent[i];
    if (upload && (fresh || en->used != im->clock)) {
        const uint64_t fp = fingerprint(c);
        if (fresh || fp != en->fp) {
            CUDA_CHECK(e, cudaMemcpyAsync(im->arena + en->off, c->memory, c->n_floats * sizeof(float),
                                          cudaMemcpyHostToDevice, im->ctx.stream));
            en->fp = fp;
        }
    }
    en->used = im->clock;
    *off = en->off;
    return 0;
}

// Device address of a cache array (NULL stays NULL).
static float *dev_field(const cuda_impl *im, size_t off, const ps_cache *c, const float *field) {
    return field ? (float *)(im->arena + off) + (field - c->memory) : NULL;
}

static const float *site_field(const ps_cache *c, ps_site s) {
    switch (s) {
    case PS_SITE_RESID_PRE: return c->resid_pre;
    case PS_SITE_RESID_MID: return c->resid_mid;
    case PS_SITE_RESID_POST: return c->resid_post;
    case PS_SITE_ATTN_OUT: return c->attn_out;
    case PS_SITE_MLP_OUT: return c->mlp_out;
    case PS_SITE_Q: return c->q;
    case PS_SITE_K: return c->k;
    case PS_SITE_V: return c->v;
    case PS_SITE_PATTERN: return c->pattern;
    case PS_SITE_Z: return c->z;
    case PS_SITE_MLP_POST: return c->mlp_post;
    default: return NULL;
    }
}

static void cache_arrays(const ps_cache *c, const float *a[PS_CA_COUNT]) {
    a[PS_CA_EMBED] = c->embed; a[PS_CA_POS_EMBED] = c->pos_embed; a[PS_CA_RESID_PRE] = c->resid_pre;
    a[PS_CA_LN1_SCALE] = c->ln1_scale; a[PS_CA_Q] = c->q; a[PS_CA_K] = c->k; a[PS_CA_V] = c->v;
    a[PS_CA_ROT_Q] = c->rot_q; a[PS_CA_ROT_K] = c->rot_k; a[PS_CA_SCORES] = c->attn_scores;
    a[PS_CA_PATTERN] = c->pattern; a[PS_CA_Z] = c->z; a[PS_CA_RESULT] = c->result; a[PS_CA_ATTN_OUT] = c->attn_out;
    a[PS_CA_RESID_MID] = c->resid_mid; a[PS_CA_LN2_SCALE] = c->ln2_scale; a[PS_CA_MLP_PRE] = c->mlp_pre;
    a[PS_CA_MLP_PRE_LINEAR] = c->mlp_pre_linear; a[PS_CA_MLP_POST] = c->mlp_post; a[PS_CA_MLP_OUT] = c->mlp_out;
    a[PS_CA_RESID_POST] = c->resid_post; a[PS_CA_LNF_SCALE] = c->lnf_scale; a[PS_CA_LOGITS] = c->logits;
}

// ---------------------------------------------------------------------------------------------
// Workspace

static int ensure_ws(cuda_impl *im, size_t bytes, ps_error *e) {
    if (bytes <= im->ws_cap) return 0;
    cudaStreamSynchronize(im->ctx.stream);
    cudaFree(im->ws);
    im->ws = NULL;
    im->ws_cap = 0;
    size_t want = align_up(bytes + bytes / 4, 1 << 20);
    if (cudaMalloc((void **)&im->ws, want) != cudaSuccess) {
        (void)cudaGetLastError();
        want = bytes;
        if (cudaMalloc((void **)&im->ws, want) != cudaSuccess) {
            (void)cudaGetLastError();
            im->ws = NULL;
            ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: out of device memory for a batch workspace of %zu MiB", bytes >> 20);
            return PS_CUDA_OOM;
        }
    }
    im->ws_cap = want;
    return 0;
}

static int ensure_host(cuda_impl *im, size_t bytes, ps_error *e) {
    if (bytes <= im->host_cap) return 0;
    cudaFreeHost(im->host);
    im->host = NULL;
    im->host_cap = 0;
    const size_t want = align_up(bytes + bytes / 4, 1 << 16);
    CUDA_CHECK(e, cudaMallocHost((void **)&im->host, want));
    im->host_cap = want;
    return 0;
}

static void release_ws(cuda_impl *im) {
    cudaStreamSynchronize(im->ctx.stream);
    cudaFree(im->ws);
    im->ws = NULL;
    im->ws_cap = 0;
}

static size_t take(size_t *at, size_t bytes) {
    const size_t o = align_up(*at, 256);
    *at = o + bytes;
    return o;
}

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

// The same checks as ps_cpu_forward, plus the ones the device cannot afford to get wrong (sizes of caches).
static int check_rows(const ps_model_config *cfg, ps_row *rows, int64_t n_rows, ps_error *e) {
    const int64_t L = cfg->n_layers, V = cfg->d_vocab;
    for (int64_t r = 0; r < n_rows; r++) {
        ps_row *row = &rows[r];
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
                          !(cfg->arch == PS_ARCH_LLAMA ? row->base->rot_k : row->base->k)))
            return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld: its base cache does not match it (T=%lld, row T=%lld)",
                           (long long)r, (long long)row->base->T, (long long)row->T);
        if (row->cache && row->cache->T != row->T)
            return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld: its cache has T=%lld, the row T=%lld", (long long)r,
                           (long long)row->cache->T, (long long)row->T);
        for (int64_t p = 0; p < row->n_patches; p++) {
            const ps_patch *pt = &row->patches[p];
            if ((int)pt->site < 0 || pt->site >= PS_SITE_COUNT || !pt->src || pt->src->T != row->T ||
                !site_field(pt->src, pt->site))
                return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld patch %lld: no usable source cache for site %d",
                               (long long)r, (long long)p, (int)pt->site);
        }
    }
    return 0;
}

static int run_batch(cuda_impl *im, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    ps_cu_ctx *c = &im->ctx;
    const ps_model_config *cfg = &m->cfg;
    const int64_t L = cfg->n_layers, C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads, D = cfg->d_head,
                  M = cfg->d_mlp, V = cfg->d_vocab;
    const int llama = cfg->arch == PS_ARCH_LLAMA;
    const int64_t QD = H * D, KD = Hkv * D;
    PS_TRY(check_rows(cfg, rows, n_rows, e));

    // Rows ordered by start layer, so the rows active at layer l are a prefix of the buffers (as on the CPU).
    slot_t *slots = (slot_t *)calloc((size_t)n_rows, sizeof *slots);
    size_t *base_off = (size_t *)calloc((size_t)n_rows * 2, sizeof(size_t));
    int64_t n_patch = 0;
    for (int64_t r = 0; r < n_rows; r++) n_patch += rows[r].n_patches;
    size_t *src_off = (size_t *)calloc((size_t)(n_patch ? n_patch : 1), sizeof(size_t));
    unsigned char *has = (unsigned char *)calloc((size_t)(PS_SITE_COUNT * L), 1);
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

        // Device copies of every cache the rows read (uploaded when missing or stale) or fill (cache rows).
        im->clock++;
        for (int64_t r = 0, p_at = 0; r < n_rows; r++) {
            ps_row *row = slots[r].row;
            if (row->start_layer > 0 || row->start_pos > 0) TRY(cache_place(im, row->base, 1, &base_off[r], e));
            for (int64_t p = 0; p < row->n_patches; p++, p_at++) TRY(cache_place(im, row->patches[p].src, 1, &src_off[p_at], e));
            if (row->cache) TRY(cache_place(im, row->cache, 0, &cache_off[r], e));
        }

        // Workspace: per-token buffers as in forward_cpu.c, the half-precision GEMM input, outputs, descriptors.
        const int64_t widest = C > QD ? (C > M ? C : M) : (QD > M ? QD : M);
        const int64_t n_half_rows = N > n_out_total ? N : n_out_total;
        size_t at = 0;
        const size_t o_x = take(&at, (size_t)(N * C) * 4), o_xn = take(&at, (size_t)(N * C) * 4),
                     o_y = take(&at, (size_t)(N * C) * 4), o_q = take(&at, (size_t)(N * QD) * 4),
                     o_k = take(&at, (size_t)(N * KD) * 4), o_v = take(&at, (size_t)(N * KD) * 4),
                     o_z = take(&at, (size_t)(N * QD) * 4), o_h1 = take(&at, (size_t)(N * M) * 4),
                     o_h2 = take(&at, (size_t)(N * M) * 4), o_h3 = take(&at, llama ? (size_t)(N * M) * 4 : 0),
                     o_scale = take(&at, (size_t)N * 4), o_cos = take(&at, llama ? (size_t)(N * (D / 2)) * 4 : 0),
                     o_sin = take(&at, llama ? (size_t)(N * (D / 2)) * 4 : 0),
                     o_xo = take(&at, (size_t)(n_out_total * C) * 4),
                     o_half = take(&at, im->ctx.prec == PS_PREC_FP32 ? 0 : (size_t)(n_half_rows * widest) * 2);
        const size_t lout_bytes = (size_t)(n_full * V + n_cols_out) * 4;
        const size_t o_lout = take(&at, lout_bytes);
        // Descriptors: laid out identically in the host staging buffer and copied in one transfer.
        size_t mat = 0;
        const size_t m_rows = take(&mat, (size_t)n_rows * sizeof(ps_cu_row)),
                     m_patch = take(&mat, (size_t)n_patch * sizeof(ps_cu_patch)),
                     m_tokrow = take(&mat, (size_t)N * 4), m_tokens = take(&mat, (size_t)N * 4),
                     m_pos = take(&mat, (size_t)N * 8), m_idx = take(&mat, (size_t)n_out_total * 8),
                     m_cols = take(&mat, (size_t)n_cols_tab * 4),
                     m_jobs = take(&mat, (size_t)n_cols_jobs * sizeof(ps_cu_unembed_job));
        const size_t meta_bytes = align_up(mat, 256);
        const size_t o_meta = take(&at, meta_bytes);
        TRY(ensure_ws(im, at, e));
        TRY(ensure_host(im, meta_bytes > lout_bytes ? meta_bytes : lout_bytes, e));
        char *ws = im->ws, *hs = im->host;
        c->half_buf = im->ctx.prec == PS_PREC_FP32 ? NULL : ws + o_half;
        c->half_cap = im->ctx.prec == PS_PREC_FP32 ? 0 : (size_t)(n_half_rows * widest);

        // Fill the descriptors (the arena is final now: every cache has its place).
        ps_cu_row *hrows = (ps_cu_row *)(hs + m_rows);
        ps_cu_patch *hpat = (ps_cu_patch *)(hs + m_patch);
        int32_t *htokrow = (int32_t *)(hs + m_tokrow), *htok = (int32_t *)(hs + m_tokens);
        int64_t *hpos = (int64_t *)(hs + m_pos), *hidx = (int64_t *)(hs + m_idx);
        int32_t *hcols = (int32_t *)(hs + m_cols);
        ps_cu_unembed_job *hjobs = (ps_cu_unembed_job *)(hs + m_jobs);
        int64_t p_at = 0, idx_full = 0, idx_cols = n_full, cols_at = 0, jobs_at = 0, out_cols_at = n_full * V;
        for (int64_t r = 0; r < n_rows; r++) {
            const ps_row *row = slots[r].row;
            ps_cu_row d;
            memset(&d, 0, sizeof d);
            d.off = slots[r].off;
            d.n = slots[r].n;
            d.T = row->T;
            d.start_pos = row->start_pos;
            d.from_base = row->start_layer > 0 || row->start_pos > 0;
            if (d.from_base) {
                const ps_cache *b = row->base;
                d.base_resid_pre = dev_field(im, base_off[r], b, b->resid_pre);
                d.base_resid_post = dev_field(im, base_off[r], b, b->resid_post);
                if (row->start_pos > 0) {
                    d.base_k = dev_field(im, base_off[r], b, llama ? b->rot_k : b->k);
                    d.base_v = dev_field(im, base_off[r], b, b->v);
                }
            }
            d.pb = (int32_t)p_at;
            for (int64_t p = 0; p < row->n_patches; p++, p_at++) {
                const ps_patch *pt = &row->patches[p];
                ps_cu_patch dp;
                memset(&dp, 0, sizeof dp);
                dp.site = (int32_t)pt->site;
                dp.layer = pt->layer;
                dp.head = pt->head;
                dp.pos = pt->pos;
                dp.neuron = pt->neuron;
                dp.src = dev_field(im, src_off[p_at], pt->src, site_field(pt->src, pt->site));
                hpat[p_at] = dp;
            }
            d.pe = (int32_t)p_at;
            if (row->cache) {
                const float *a[PS_CA_COUNT];
                cache_arrays(row->cache, a);
                for (int k = 0; k < PS_CA_COUNT; k++) d.ca[k] = dev_field(im, cache_off[r], row->cache, a[k]);
            }
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
        bt.x = (float *)(ws + o_x); bt.xn = (float *)(ws + o_xn); bt.y = (float *)(ws + o_y);
        bt.q = (float *)(ws + o_q); bt.k = (float *)(ws + o_k); bt.v = (float *)(ws + o_v); bt.z = (float *)(ws + o_z);
        bt.h1 = (float *)(ws + o_h1); bt.h2 = (float *)(ws + o_h2); bt.h3 = llama ? (float *)(ws + o_h3) : NULL;
        bt.scale = (float *)(ws + o_scale);
        bt.rope_cos = llama ? (float *)(ws + o_cos) : NULL;
        bt.rope_sin = llama ? (float *)(ws + o_sin) : NULL;
        const ps_cu_weights *w = &c->w;
        if (llama) TRY(ps_cu_op_rope_table(c, &bt, e));

        int64_t n_active = 0;
        for (int64_t l = 0; l < L; l++) {
            // Rows joining at this layer start from the base run's residual stream (or the embedding).
            const int64_t first_new = n_active;
            while (n_active < n_rows && slots[n_active].row->start_layer <= l) n_active++;
            const int64_t NA = n_active ? slots[n_active - 1].off + slots[n_active - 1].n : 0;
            if (first_new < n_active) TRY(ps_cu_op_join(c, &bt, slots[first_new].off, NA, l, 0, e));
            if (NA == 0) continue;
            const int64_t ra = n_active;
#define PATCH(site, buf) do { if (has[(site) * L + l]) TRY(ps_cu_op_patch(c, &bt, 0, ra, (site), l, (buf), e)); } while (0)
#define STORE(arr, buf, width) TRY(ps_cu_op_store(c, &bt, ra, (arr), l, (buf), (width), e))

            PATCH(PS_SITE_RESID_PRE, bt.x);
            STORE(PS_CA_RESID_PRE, bt.x, C);

            // Attention block
            TRY(ps_cu_op_norm(c, 1, l, bt.xn, bt.scale, bt.x, NA, e));
            STORE(PS_CA_LN1_SCALE, bt.scale, 1);
            TRY(ps_cu_op_linear(c, bt.q, bt.xn, ps_cu_mat_at(w->w_q, (size_t)(l * C * QD)), w->b_q ? w->b_q + l * QD : NULL, NA, C, QD, e));
            TRY(ps_cu_op_linear(c, bt.k, bt.xn, ps_cu_mat_at(w->w_k, (size_t)(l * C * KD)), w->b_k ? w->b_k + l * KD : NULL, NA, C, KD, e));
            TRY(ps_cu_op_linear(c, bt.v, bt.xn, ps_cu_mat_at(w->w_v, (size_t)(l * C * KD)), w->b_v ? w->b_v + l * KD : NULL, NA, C, KD, e));
            PATCH(PS_SITE_Q, bt.q);
            PATCH(PS_SITE_K, bt.k);
            PATCH(PS_SITE_V, bt.v);
            STORE(PS_CA_Q, bt.q, QD);
            STORE(PS_CA_K, bt.k, KD);
            STORE(PS_CA_V, bt.v, KD);
            if (llama) {
                TRY(ps_cu_op_rotary(c, &bt, bt.q, NA, H, e));
                TRY(ps_cu_op_rotary(c, &bt, bt.k, NA, Hkv, e));
                STORE(PS_CA_ROT_Q, bt.q, QD);
                STORE(PS_CA_ROT_K, bt.k, KD);
            }
            TRY(ps_cu_op_attention(c, &bt, l, NA, e));
            PATCH(PS_SITE_Z, bt.z);
            STORE(PS_CA_Z, bt.z, QD);
            for (int64_t r = 0; r < ra && r < cache_span; r++) {
                float *res = hrows[r].ca[PS_CA_RESULT];
                if (!res) continue;
                const int64_t T = hrows[r].T;
                TRY(ps_cu_gemm_per_head(c, res + l * T * H * C, bt.z + hrows[r].off * QD,
                                        ps_cu_mat_at(w->w_o, (size_t)(l * QD * C)), T, H, D, C, e));
            }
            TRY(ps_cu_op_linear(c, bt.y, bt.z, ps_cu_mat_at(w->w_o, (size_t)(l * QD * C)), w->b_o ? w->b_o + l * C : NULL, NA, QD, C, e));
            PATCH(PS_SITE_ATTN_OUT, bt.y);
            STORE(PS_CA_ATTN_OUT, bt.y, C);
            TRY(ps_cu_op_residual(c, &bt, NA, e));
            PATCH(PS_SITE_RESID_MID, bt.x);
            STORE(PS_CA_RESID_MID, bt.x, C);

            // MLP block (the bias of the first layer is fused into the activation kernel)
            TRY(ps_cu_op_norm(c, 2, l, bt.xn, bt.scale, bt.x, NA, e));
            STORE(PS_CA_LN2_SCALE, bt.scale, 1);
            TRY(ps_cu_gemm(c, bt.h1, bt.xn, ps_cu_mat_at(w->w_in, (size_t)(l * C * M)), NA, C, M, 0, e));
            if (llama) TRY(ps_cu_gemm(c, bt.h3, bt.xn, ps_cu_mat_at(w->w_up, (size_t)(l * C * M)), NA, C, M, 0, e));
            TRY(ps_cu_op_mlp_act(c, &bt, l, NA, e));
            PATCH(PS_SITE_MLP_POST, bt.h2);
            STORE(PS_CA_MLP_PRE, bt.h1, M);
            if (llama) STORE(PS_CA_MLP_PRE_LINEAR, bt.h3, M);
            STORE(PS_CA_MLP_POST, bt.h2, M);
            TRY(ps_cu_op_linear(c, bt.y, bt.h2, ps_cu_mat_at(w->w_out, (size_t)(l * M * C)), w->b_out ? w->b_out + l * C : NULL, NA, M, C, e));
            PATCH(PS_SITE_MLP_OUT, bt.y);
            STORE(PS_CA_MLP_OUT, bt.y, C);
            TRY(ps_cu_op_residual(c, &bt, NA, e));
            PATCH(PS_SITE_RESID_POST, bt.x);
            STORE(PS_CA_RESID_POST, bt.x, C);
#undef PATCH
#undef STORE
        }
        // Rows that start past the last layer (a patch of the final resid_post) take the base's final state.
        if (n_active < n_rows) {
            TRY(ps_cu_op_join(c, &bt, slots[n_active].off, N, L - 1, 1, e));
            if (has[PS_SITE_RESID_POST * L + L - 1]) TRY(ps_cu_op_patch(c, &bt, n_active, n_rows, PS_SITE_RESID_POST, L - 1, bt.x, e));
        }

        // Cache rows: final norm and logits at every position, into the cache's device copy.
        for (int64_t r = 0; r < cache_span; r++) {
            if (!slots[r].row->cache) continue;
            const int64_t T = hrows[r].T;
            TRY(ps_cu_op_norm(c, 0, 0, bt.xn, hrows[r].ca[PS_CA_LNF_SCALE], bt.x + hrows[r].off * C, T, e));
            if (hrows[r].ca[PS_CA_LOGITS]) TRY(ps_cu_op_logits_full(c, hrows[r].ca[PS_CA_LOGITS], bt.xn, T, e));
        }
        // Requested positions: gather, final norm in place, all-V logits by GEMM, chosen columns by dot products.
        float *xo = (float *)(ws + o_xo), *lout = (float *)(ws + o_lout);
        TRY(ps_cu_gather_launch(c->stream, xo, bt.x, (const int64_t *)(ws + o_meta + m_idx), n_out_total, C, e));
        TRY(ps_cu_op_norm(c, 0, 0, xo, NULL, xo, n_out_total, e));
        TRY(ps_cu_op_logits_full(c, lout, xo, n_full, e));
        TRY(ps_cu_unembed_cols_launch(c->stream, lout, xo, (const ps_cu_unembed_job *)(ws + o_meta + m_jobs), n_cols_jobs,
                                      (const int32_t *)(ws + o_meta + m_cols), w->w_u, w->b_u, C, e));

        // Back to the host: logits into each row, cache rows into their ps_cache.
        {
            cudaError_t err = lout_bytes ? cudaMemcpyAsync(hs, lout, lout_bytes, cudaMemcpyDeviceToHost, c->stream) : cudaSuccess;
            if (err == cudaSuccess) err = cudaStreamSynchronize(c->stream);
            if (err != cudaSuccess)
                FAIL(ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: forward of %lld rows failed: %s", (long long)n_rows,
                             cudaGetErrorString(err)));
        }
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
            const int64_t i = arena_find(im, cc->memory);
            if (i >= 0) im->ent[i].fp = fingerprint(cc);
        }
    }
done:
#undef TRY
#undef FAIL
    free(slots);
    free(base_off);
    free(src_off);
    free(has);
    return rc;
}

// Runs rows; when the device runs out of memory, frees what it can and runs each half on its own.
static int forward_rows(cuda_impl *im, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    if (n_rows <= 0) return 0;
    ps_error le;
    memset(&le, 0, sizeof le);
    const int rc = run_batch(im, m, rows, n_rows, &le);
    if (rc == 0) return 0;
    if (rc == PS_CUDA_OOM && n_rows > 1) {
        (void)cudaGetLastError();
        release_ws(im);
        const int64_t h = n_rows / 2;
        if (forward_rows(im, m, rows, h, e)) return -1;
        return forward_rows(im, m, rows + h, n_rows - h, e);
    }
    if (rc == PS_CUDA_OOM) release_ws(im);
    return ps_fail(e, le.code ? le.code : PS_EXIT_RUNTIME, "%s", le.msg);
}

static int cuda_forward(ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    cuda_impl *im = (cuda_impl *)b->impl;
    if (!im) return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: not initialised");
    if (m->cfg.n_layers != im->ctx.cfg.n_layers || m->cfg.d_model != im->ctx.cfg.d_model ||
        m->cfg.d_vocab != im->ctx.cfg.d_vocab)
        return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: forward called with a different model than it was made for");
    return forward_rows(im, m, rows, n_rows, e);
}

// ---------------------------------------------------------------------------------------------
// Set-up and tear-down

static void impl_free(cuda_impl *im) {
    if (!im) return;
    if (im->ctx.stream) cudaStreamSynchronize(im->ctx.stream);
    cudaFree(im->wmem);
    cudaFree(im->arena);
    cudaFree(im->ws);
    cudaFreeHost(im->host);
    free(im->ent);
    if (im->ctx.blas) cublasDestroy(im->ctx.blas);
    if (im->ctx.stream) cudaStreamDestroy(im->ctx.stream);
    free(im);
}

static void cuda_free(ps_backend *b) {
    impl_free((cuda_impl *)b->impl);
    b->impl = NULL;
}

// One entry of the weight table: a host tensor, where it goes, and whether it is a matrix (stored in the
// chosen precision) or a vector (kept fp32).
typedef struct {
    const float *host;
    size_t n;
    int matrix;
    ps_cu_mat *mat;
    const float **vec;
    int layer_field;   // streamed models: which ps_layer_weights matrix (0..6) comes layer by layer; -1 none
} wspec;

static int upload_weights(cuda_impl *im, const ps_model *m, ps_error *e) {
    const ps_model_config *cfg = &m->cfg;
    const ps_weights *w = &m->w;
    ps_cu_weights *d = &im->ctx.w;
    const size_t L = (size_t)cfg->n_layers, C = (size_t)cfg->d_model, QD = (size_t)(cfg->n_heads * cfg->d_head),
                 KD = (size_t)(cfg->n_kv_heads * cfg->d_head), M = (size_t)cfg->d_mlp, V = (size_t)cfg->d_vocab,
                 P = (size_t)cfg->n_ctx;
    const int tied = w->w_u == w->wte;
    wspec spec[] = {
        {w->wte, V * C, 1, &d->wte, NULL, -1},          {w->wpe, P * C, 1, &d->wpe, NULL, -1},
        {w->ln1_w, L * C, 0, NULL, &d->ln1_w, -1},      {w->ln1_b, L * C, 0, NULL, &d->ln1_b, -1},
        {w->w_q, L * C * QD, 1, &d->w_q, NULL, 0},      {w->w_k, L * C * KD, 1, &d->w_k, NULL, 1},
        {w->w_v, L * C * KD, 1, &d->w_v, NULL, 2},      {w->b_q, L * QD, 0, NULL, &d->b_q, -1},
        {w->b_k, L * KD, 0, NULL, &d->b_k, -1},         {w->b_v, L * KD, 0, NULL, &d->b_v, -1},
        {w->w_o, L * QD * C, 1, &d->w_o, NULL, 3},      {w->b_o, L * C, 0, NULL, &d->b_o, -1},
        {w->ln2_w, L * C, 0, NULL, &d->ln2_w, -1},      {w->ln2_b, L * C, 0, NULL, &d->ln2_b, -1},
        {w->w_in, L * C * M, 1, &d->w_in, NULL, 4},     {w->w_up, L * C * M, 1, &d->w_up, NULL, 5},
        {w->b_in, L * M, 0, NULL, &d->b_in, -1},        {w->w_out, L * M * C, 1, &d->w_out, NULL, 6},
        {w->b_out, L * C, 0, NULL, &d->b_out, -1},      {w->lnf_w, C, 0, NULL, &d->lnf_w, -1},
        {w->lnf_b, C, 0, NULL, &d->lnf_b, -1},          {tied ? NULL : w->w_u, V * C, 1, &d->w_u, NULL, -1},
        {w->b_u, V, 0, NULL, &d->b_u, -1},
    };
    // A streamed model keeps its layer matrices in the mapped file: mark them present; they go up layer by layer.
    static const float stream_marker = 0;
    const int llama_up = cfg->arch == PS_ARCH_LLAMA;
    if (m->stream)
        for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++)
            if (spec[i].layer_field >= 0 && !spec[i].host && (spec[i].layer_field != 5 || llama_up)) spec[i].host = &stream_marker;
    const size_t n_spec = sizeof spec / sizeof spec[0];
    const ps_precision prec = im->ctx.prec;
    size_t total = 0, biggest = 0;
    for (size_t i = 0; i < n_spec; i++) {
        if (!spec[i].host) continue;
        total = align_up(total, 256) + spec[i].n * (spec[i].matrix ? ps_cu_dt_size(prec) : 4);
        if (spec[i].matrix && spec[i].n > biggest) biggest = spec[i].n;
    }
    CUDA_CHECK(e, cudaMalloc(&im->wmem, total ? total : 1));
    im->wbytes = total;
    // fp16/bf16: each matrix goes up in fp32 chunks and is rounded on the device.
    float *stage = NULL;
    const size_t chunk = biggest < ((size_t)16 << 20) ? biggest : ((size_t)16 << 20);
    if (prec != PS_PREC_FP32 && chunk) CUDA_CHECK(e, cudaMalloc((void **)&stage, chunk * sizeof(float)));
    size_t at = 0;
    int rc = 0;
    for (size_t i = 0; i < n_spec && !rc; i++) {
        const wspec *s = &spec[i];
        if (s->mat) { s->mat->p = NULL; s->mat->dt = prec; }
        if (s->vec) *s->vec = NULL;
        if (!s->host) continue;
        at = align_up(at, 256);
        char *dst = (char *)im->wmem + at;
        if (s->host == &stream_marker) {
            // One layer at a time from the model's layer buffer (converted from the file's dtype on the host).
            const size_t per = s->n / L;
            for (size_t l = 0; l < L && !rc; l++) {
                ps_layer_weights lw;
                if (ps_model_layer(m, (int64_t)l, &lw, e) != 0) { rc = -1; break; }
                const float *src[] = {lw.w_q, lw.w_k, lw.w_v, lw.w_o, lw.w_in, lw.w_up, lw.w_out};
                const float *h = src[s->layer_field];
                for (size_t o = 0; o < per && !rc; o += (prec == PS_PREC_FP32 ? per : chunk)) {
                    const size_t n = prec == PS_PREC_FP32 ? per : (per - o < chunk ? per - o : chunk);
                    cudaError_t err;
                    if (prec == PS_PREC_FP32) {
                        err = cudaMemcpy(dst + l * per * 4, h, per * sizeof(float), cudaMemcpyHostToDevice);
                    } else {
                        err = cudaMemcpy(stage, h + o, n * sizeof(float), cudaMemcpyHostToDevice);
                        if (err == cudaSuccess && ps_cu_cast_launch(0, dst + (l * per + o) * 2, prec, stage, (int64_t)n, e) != 0) { rc = -1; break; }
                        if (err == cudaSuccess) err = cudaDeviceSynchronize();
                    }
                    if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: uploading weights: %s", cudaGetErrorString(err));
                }
            }
        } else if (!s->matrix || prec == PS_PREC_FP32) {
            cudaError_t err = cudaMemcpy(dst, s->host, s->n * sizeof(float), cudaMemcpyHostToDevice);
            if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: uploading weights: %s", cudaGetErrorString(err));
        } else {
            for (size_t o = 0; o < s->n && !rc; o += chunk) {
                const size_t n = s->n - o < chunk ? s->n - o : chunk;
                cudaError_t err = cudaMemcpy(stage, s->host + o, n * sizeof(float), cudaMemcpyHostToDevice);
                if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: uploading weights: %s", cudaGetErrorString(err));
                else rc = ps_cu_cast_launch(0, dst + o * 2, prec, stage, (int64_t)n, e);
                if (!rc) {
                    err = cudaDeviceSynchronize();  // the stage buffer is reused by the next chunk
                    if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: converting weights: %s", cudaGetErrorString(err));
                }
            }
        }
        if (s->mat) s->mat->p = dst;
        if (s->vec) *s->vec = (const float *)dst;
        at += s->n * (s->matrix ? ps_cu_dt_size(prec) : 4);
    }
    if (!rc) {
        cudaError_t err = cudaDeviceSynchronize();
        if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: uploading weights: %s", cudaGetErrorString(err));
    }
    cudaFree(stage);
    if (rc) return rc;
    if (tied) d->w_u = d->wte;
    return 0;
}

extern "C" int ps_cuda_built(void) { return 1; }

extern "C" int ps_cuda_device_count(char *why, size_t why_len) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        if (why && why_len) snprintf(why, why_len, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
        return 0;
    }
    if (n == 0 && why && why_len) snprintf(why, why_len, "cudaGetDeviceCount found 0 devices");
    return n;
}

// GFLOP/s of x (M, K) @ W (K, N) as the forward runs its GEMMs (cublasGemmEx in the weights' type, fp32
// accumulation), timed with events on the backend's stream; 0 when anything fails. Inputs are a non-zero
// byte pattern: all-zero operands draw less power and would flatter the clock.
static double cuda_gemm_rate(ps_backend *b, int64_t M, int64_t K, int64_t N, double seconds) {
    cuda_impl *im = (cuda_impl *)b->impl;
    ps_cu_ctx *c = &im->ctx;
    if (M <= 0 || K <= 0 || N <= 0 || M > INT_MAX || K > INT_MAX || N > INT_MAX) return 0;
    const size_t esz = c->prec == PS_PREC_FP32 ? 4 : 2;
    const cudaDataType_t t = c->prec == PS_PREC_FP16 ? CUDA_R_16F : c->prec == PS_PREC_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    void *x = NULL, *w = NULL, *y = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double rate = 0;
    int ok = cudaMalloc(&x, (size_t)(M * K) * esz) == cudaSuccess && cudaMalloc(&w, (size_t)(K * N) * esz) == cudaSuccess &&
             cudaMalloc(&y, (size_t)(M * N) * sizeof(float)) == cudaSuccess && cudaEventCreate(&e0) == cudaSuccess &&
             cudaEventCreate(&e1) == cudaSuccess && cudaMemsetAsync(x, 0x3c, (size_t)(M * K) * esz, c->stream) == cudaSuccess &&
             cudaMemsetAsync(w, 0x3c, (size_t)(K * N) * esz, c->stream) == cudaSuccess;
    const float alpha = 1.0f, beta = 0.0f;
    // The forward's call: row-major y = x @ W as column-major y^T = W^T x^T.
#define PS_RATE_GEMM()                                                                                              \
    (cublasGemmEx(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)N, (int)M, (int)K, &alpha, w, t, (int)N, x, t, (int)K, &beta, y, \
                  CUDA_R_32F, (int)N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS)
    ok = ok && PS_RATE_GEMM(); // warm-up, untimed
    double el = 0;
    int64_t reps = 0;
    while (ok && el < seconds) {
        ok = cudaEventRecord(e0, c->stream) == cudaSuccess;
        for (int i = 0; i < 20 && ok; i++) ok = PS_RATE_GEMM();
        float ms = 0;
        ok = ok && cudaEventRecord(e1, c->stream) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess &&
             cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
        el += 1e-3 * ms;
        reps += 20;
    }
#undef PS_RATE_GEMM
    if (ok && el > 0) rate = 2.0 * (double)M * (double)N * (double)K * (double)reps / el * 1e-9;
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(x);
    cudaFree(w);
    cudaFree(y);
    (void)cudaGetLastError();
    return rate;
}

static int backend_init(ps_backend *b, ps_precision prec, const ps_model *m, ps_error *e) {
    char why[256];
    if (ps_cuda_device_count(why, sizeof why) <= 0) return ps_fail(e, PS_EXIT_RUNTIME, "no CUDA device found (%s)", why);
    if (prec != PS_PREC_FP32 && prec != PS_PREC_FP16 && prec != PS_PREC_BF16)
        return ps_fail(e, PS_EXIT_BADINPUT, "CUDA backend: unknown precision %d", (int)prec);
    const ps_model_config *cfg = &m->cfg;
    if (cfg->n_kv_heads <= 0 || cfg->n_heads % cfg->n_kv_heads || cfg->d_head % 2 || cfg->n_heads > 65535)
        return ps_fail(e, PS_EXIT_BADINPUT, "CUDA backend: unsupported head layout (H=%lld, Hkv=%lld, D=%lld)",
                       (long long)cfg->n_heads, (long long)cfg->n_kv_heads, (long long)cfg->d_head);
    CUDA_CHECK(e, cudaSetDevice(0));
    cudaDeviceProp prop;
    CUDA_CHECK(e, cudaGetDeviceProperties(&prop, 0));
    if (prop.major < 8)
        return ps_fail(e, PS_EXIT_RUNTIME, "no CUDA device found that this build supports (%s is sm_%d%d; kernels are built for sm_80 and newer)",
                       prop.name, prop.major, prop.minor);

    cuda_impl *im = (cuda_impl *)calloc(1, sizeof *im);
    if (!im) return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: out of host memory");
    im->ctx.cfg = *cfg;
    im->ctx.prec = prec;
    int rc = 0;
    {
        cudaError_t err = cudaStreamCreate(&im->ctx.stream);
        if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "cudaStreamCreate: %s", cudaGetErrorString(err));
    }
    if (!rc) {
        cublasStatus_t st = cublasCreate(&im->ctx.blas);
        if (st != CUBLAS_STATUS_SUCCESS) im->ctx.blas = NULL;
        if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(im->ctx.blas, im->ctx.stream);
        // Plain fp32 arithmetic (no TF32) so fp32 results track the CPU reference.
        if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetMathMode(im->ctx.blas, CUBLAS_DEFAULT_MATH);
        if (st != CUBLAS_STATUS_SUCCESS) rc = ps_fail(e, PS_EXIT_RUNTIME, "cuBLAS initialisation: %s", ps_cublas_status_name(st));
    }
    if (!rc) {
        int optin = 0;
        cudaError_t err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
        im->ctx.smem_optin = err == cudaSuccess ? optin : 48 * 1024;
        (void)cudaGetLastError();
    }
    if (!rc) rc = upload_weights(im, m, e);
    if (!rc) {
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
        im->budget = free_b / 2;
        const char *env = getenv("PS_CUDA_CACHE_MB");
        if (env && *env) im->budget = (size_t)strtoull(env, NULL, 10) << 20;
    }
    if (rc) {
        impl_free(im);
        return -1;
    }
    memset(b, 0, sizeof *b);
    b->kind = PS_BACKEND_CUDA;
    b->caps = PS_CAP_REPLACE; // replace only for now: the engine refuses rows needing other PS_CAP_* bits
    b->precision = prec;
    b->name = "cuda";
    snprintf(b->device, sizeof b->device, "%.127s", prop.name);
    b->forward = cuda_forward;
    b->free = cuda_free;
    b->release_cache = ps_cuda_forget_cache;
    b->gemm_rate = cuda_gemm_rate;
    b->impl = im;
    return 0;
}

extern "C" int ps_cuda_backend_init(ps_backend *b, ps_precision prec, const ps_model *m, ps_error *e) {
    return backend_init(b, prec, m, e) ? -1 : 0;
}

extern "C" void ps_cuda_forget_cache(ps_backend *b, const ps_cache *c) {
    if (!b || b->kind != PS_BACKEND_CUDA || !b->impl || !c) return;
    cuda_impl *im = (cuda_impl *)b->impl;
    const int64_t i = arena_find(im, c->memory);
    if (i >= 0) arena_remove(im, i);
}

extern "C" size_t ps_cuda_cache_budget(const ps_backend *b) {
    if (!b || b->kind != PS_BACKEND_CUDA || !b->impl) return 0;
    return ((const cuda_impl *)b->impl)->budget;
}
