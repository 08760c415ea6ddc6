// The reference forward pass: plain fp32 C, OpenBLAS GEMMs over every row's tokens at once,
// OpenMP over (row, head) for attention. Every faster path is checked against this file. The row plan
// (what a narrowed row skips) is ps_plan.h's; interventions act at the hooks through cpu_patch.c.
#include "cpu_internal.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

// Copies a row's freshly computed (n, width) slice into its cache array for layer l (cache rows start at position
// 0; from their start layer on: the layers below are base's, already in the cache).
static void store(float *cache_arr, int64_t l, const ps_cpu_slot *rs, const float *buf, int64_t width) {
    if (!cache_arr) return;
    const int64_t T = rs->row->T;
    PS_PROF(PS_PROF_COPY, memcpy(cache_arr + l * T * width, buf + rs->off * width, (size_t)(rs->n * width) * sizeof(float)));
}

// store() for every active row that keeps a cache; field is the ps_cache array (offsetof).
static void store_rows(const ps_cpu_slot *slots, int64_t n_active, size_t field, int64_t l, const float *buf, int64_t width) {
    for (int64_t r = 0; r < n_active; r++) {
        ps_cache *cc = slots[r].row->cache;
        if (cc) store(*(float **)((char *)cc + field), l, &slots[r], buf, width);
    }
}

// Copies and residual sums from this many floats (1 MiB) on run on the threads (on one they were a serial
// stretch of every layer, the other thread spinning); smaller ones on one: memory bound, and each region is a
// barrier where, on a busy machine, one thread waits for the other to be scheduled again.
#define PS_COPY_PAR_MIN ((int64_t)1 << 18)

// Copies positions [t0, t1) of a row from a base cache array (L, T, width) at layer l into buf.
static void copy_base(float *buf, const ps_cpu_slot *rs, const float *base_arr, int64_t l, int64_t width, int64_t t0, int64_t t1) {
    const ps_row *row = rs->row;
    if (t1 <= t0) return;
    memcpy(buf + (rs->off + t0 - row->start_pos) * width, base_arr + (l * row->T + t0) * width,
           (size_t)((t1 - t0) * width) * sizeof(float));
}

// Base's Q, K, V from qkv_end on in every row that attends (NA: the batch's tokens), rows on the threads.
static void qkv_from_base(float *q, float *k, float *v, const ps_cpu_slot *slots, int64_t n_active, int64_t NA, int64_t l,
                          int64_t QD, int64_t KD) {
#pragma omp parallel for schedule(static) if (NA * (QD + 2 * KD) >= PS_COPY_PAR_MIN)
    for (int64_t r = 0; r < n_active; r++) {
        const ps_cpu_slot *rs = &slots[r];
        const ps_cache *bc = rs->row->base;
        const int64_t t0 = rs->plan.qkv_end, t1 = rs->row->T;
        if (t0 >= t1 || !rs->plan.attn) continue;
        copy_base(q, rs, bc->q, l, QD, t0, t1);
        copy_base(k, rs, bc->k, l, KD, t0, t1);
        copy_base(v, rs, bc->v, l, KD, t0, t1);
    }
}

// Base's resid_post at the positions a narrowed row did not recompute, rows on the threads.
static void post_from_base(float *x, const ps_cpu_slot *slots, int64_t n_active, int64_t NA, int64_t l, int64_t C) {
#pragma omp parallel for schedule(static) if (NA * C >= PS_COPY_PAR_MIN)
    for (int64_t r = 0; r < n_active; r++) {
        const ps_cpu_slot *rs = &slots[r];
        for (int64_t t = rs->row->start_pos; t < rs->row->T; t++)
            // Only narrowed rows have a base to keep (rows from the embedding have none).
            if (rs->row->narrow && !ps_post_at(rs->row, &rs->plan, t)) copy_base(x, rs, rs->row->base->resid_post, l, C, t, t + 1);
    }
}

// ps_cpu_hook, timed when profiling.
static void hook(const ps_model_config *cfg, ps_site site, int64_t l, float *buf, int64_t ld, const int64_t *map,
                 const ps_cpu_slot *slots, int64_t n_active) {
    PS_PROF(PS_PROF_HOOK, ps_cpu_hook(cfg, site, l, buf, ld, map, slots, n_active));
}

// Which token of which row each row of the compacted buffers holds, at layer l.
typedef struct {
    const int64_t *idx, *kslot, *posbuf; // compacted row k = workspace token idx[k] of slots[kslot[k]]
    const ps_cpu_slot *slots;
    int64_t l;
} compact_rows;

// Compacted rows [k0, k1) of buf take base's value of a (L, T, width) ps_cache array (field: offsetof).
static void from_base_rows_(float *buf, int64_t width, const compact_rows *cr, int64_t k0, int64_t k1, size_t field) {
#pragma omp parallel for schedule(static) if ((k1 - k0) * width >= PS_COPY_PAR_MIN)
    for (int64_t k = k0; k < k1; k++) {
        const ps_row *row = cr->slots[cr->kslot[k]].row;
        const float *arr = *(const float *const *)((const char *)row->base + field);
        const int64_t t = cr->posbuf[cr->idx[k]];
        memcpy(buf + k * width, arr + (cr->l * row->T + t) * width, (size_t)width * sizeof(float));
    }
}
static void from_base_rows(float *buf, int64_t width, const compact_rows *cr, int64_t k0, int64_t k1, size_t field) {
    PS_PROF(PS_PROF_COPY, from_base_rows_(buf, width, cr, k0, k1, field));
}

// Row k of n (width floats each) from src row si[k] to dst row di[k]; a NULL index is k itself. gather:
// dst[k] = src[idx[k]], scatter: the way back.
static void move_rows(float *dst, const int64_t *di, const float *src, const int64_t *si, int64_t n, int64_t width) {
#pragma omp parallel for schedule(static) if (n * width >= PS_COPY_PAR_MIN)
    for (int64_t k = 0; k < n; k++)
        memcpy(dst + (di ? di[k] : k) * width, src + (si ? si[k] : k) * width, (size_t)width * sizeof(float));
}
static void gather(float *dst, const float *src, const int64_t *idx, int64_t n, int64_t width) {
    PS_PROF(PS_PROF_COPY, move_rows(dst, NULL, src, idx, n, width));
}
static void scatter(float *dst, const float *src, const int64_t *idx, int64_t n, int64_t width) {
    PS_PROF(PS_PROF_COPY, move_rows(dst, idx, src, NULL, n, width));
}

// x[0, n) += y[0, n): the residual stream's sums.
static void add_into(float *x, const float *y, int64_t n) {
#pragma omp parallel for schedule(static) if (n >= PS_COPY_PAR_MIN)
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

// The model's norm: RMSNorm for Llama, LayerNorm for GPT-2 (b is NULL for Llama).
static void norm(const ps_model_config *cfg, float *out, float *scale, const float *x, const float *w, const float *b, int64_t N) {
    PS_PROF(PS_PROF_NORM, if (cfg->arch == PS_ARCH_LLAMA) ps_cpu_rmsnorm(out, scale, x, w, N, cfg->d_model, cfg->eps);
                          else ps_cpu_layernorm(out, scale, x, w, b, N, cfg->d_model, cfg->eps));
}

static int cmp_start_layer(const void *a, const void *b) {
    const ps_cpu_slot *x = a, *y = b;
    if (x->row->start_layer != y->row->start_layer) return x->row->start_layer < y->row->start_layer ? -1 : 1;
    return x->row < y->row ? -1 : (x->row > y->row);
}

// The workspace keeps its buffers between batches (grown when a batch needs more): allocating and
// faulting in fresh pages for every batch cost a tenth of a sweep's time.
static void *ws_part(ps_cpu_workspace *w, int i, size_t bytes) {
    if (bytes > w->cap[i]) {
        free(w->part[i]);
        w->part[i] = malloc(bytes);
        w->cap[i] = w->part[i] ? bytes : 0;
    }
    return w->part[i];
}

void ps_cpu_workspace_free(ps_cpu_workspace *w) {
    for (int i = 0; i < 4; i++) free(w->part[i]);
    for (int p = 0; p < w->n_pieces; p++) ps_cpu_workspace_free((ps_cpu_workspace *)w->pieces + p); // (cpu_pieces.c)
    free(w->pieces);
    memset(w, 0, sizeof *w);
}

int ps_cpu_forward(const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    ps_cpu_workspace w = {0};
    int rc = ps_cpu_forward_ws(m, rows, n_rows, &w, e);
    ps_cpu_workspace_free(&w);
    return rc;
}

// One batch of rows on its way through the layers: the rows in start-layer order and every per-token
// buffer (one workspace allocation). Tokens of slot r are rows [off, off + n) of the full buffers.
typedef struct {
    const ps_model_config *cfg;
    const ps_weights *w;
    ps_cpu_slot *slots; int64_t n_rows;
    int64_t n_active, NA;  // rows and tokens active at the current layer (a prefix of slots)
    int64_t T_max;
    float *x;              // (N, C) residual stream
    float *xn;             // (N, C) normalized / scratch
    float *y;              // (N, C) attn_out / mlp_out
    float *q, *k, *v;      // (N, H*D), (N, Hkv*D), (N, Hkv*D)
    float *z;              // (N, H*D)
    float *h1, *h2, *h3;   // (N, M) mlp pre, mlp post, Llama up projection (NULL for GPT-2)
    float *scale;          // (N)
    float *xc, *qc, *kc, *vc, *zc; // compacted copies: the tokens a narrowed step computes, gathered
    int64_t *posbuf;       // (N) position of each token
    int64_t *idx;          // (N) tokens a narrowed step computes
    int64_t *map;          // (N) token -> its row in the compacted buffers, or -1
    int64_t *kslot;        // (N) compacted row -> its row slot
} batch;

// Checks the rows, orders them by start layer and lays out the workspace.
static int batch_setup(batch *b, const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *wsp, ps_error *e) {
    const ps_model_config *cfg = &m->cfg;
    const int64_t L = cfg->n_layers, C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads, D = cfg->d_head,
                  M = cfg->d_mlp, V = cfg->d_vocab;
    const int llama = cfg->arch == PS_ARCH_LLAMA;
    const int64_t QD = H * D, KD = Hkv * D;
    memset(b, 0, sizeof *b);
    b->cfg = cfg;
    b->w = &m->w;
    b->n_rows = n_rows;
    // Rows ordered by start layer, so the rows active at layer l are a prefix of the buffers.
    ps_cpu_slot *slots = ws_part(wsp, 0, (size_t)n_rows * sizeof *slots);
    if (!slots) return ps_fail(e, PS_EXIT_RUNTIME, "forward: out of memory");
    memset(slots, 0, (size_t)n_rows * sizeof *slots);
    int any_cache = 0, any_narrow = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        ps_row *row = &rows[r];
        if (row->T <= 0 || row->T > cfg->n_ctx || row->start_pos < 0 || row->start_pos >= row->T ||
            row->start_layer < 0 || row->start_layer > L ||
            ((row->start_layer > 0 || row->start_pos > 0 || row->narrow) && !row->base) ||
            (row->cache && (row->start_pos || row->narrow || row->start_layer >= L)) || // (PS_CAP_CACHE_LATE: start_layer > 0)
            (row->narrow && (row->dirty_end < row->start_pos || row->dirty_end > row->T)) ||
            (row->narrow && row->n_captures) || row->n_out > PS_MAX_OUT_POS) {
            return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld is inconsistent (T=%lld start_layer=%lld start_pos=%lld)",
                           (long long)r, (long long)row->T, (long long)row->start_layer, (long long)row->start_pos);
        }
        for (int64_t i = 0; i < row->T; i++)
            if (row->tokens[i] < 0 || row->tokens[i] >= V) {
                return ps_fail(e, PS_EXIT_BADINPUT, "forward: token id %d at position %lld is outside the vocabulary (%lld)",
                               row->tokens[i], (long long)i, (long long)V);
            }
        // The interventions, as the engine checked them (a direct caller gets the same errors).
        if (ps_row_check(cfg, row, PS_CAP_ALL, "cpu", e) != 0) return -1;
        any_cache |= row->cache != NULL;
        any_narrow |= row->narrow;
        slots[r].row = row;
    }
    // Cache rows store whole layers from the uncompacted buffers.
    if (any_cache && any_narrow) return ps_fail(e, PS_EXIT_RUNTIME, "forward: a batch mixes cache rows and narrowed rows");
    qsort(slots, (size_t)n_rows, sizeof *slots, cmp_start_layer);
    int64_t N = 0, T_max = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        slots[r].off = N;
        slots[r].n = slots[r].row->T - slots[r].row->start_pos;
        N += slots[r].n;
        if (slots[r].row->T > T_max) T_max = slots[r].row->T;
    }
    b->slots = slots;
    b->T_max = T_max;
    ps_cpu_captures_from_base(cfg, slots, n_rows);

    // One workspace for this batch: every per-token buffer, full (token i of the batch at row i) and
    // compacted (only the tokens a narrowed layer recomputes, gathered).
    const int64_t Mw = llama ? 3 * M : 2 * M;
    size_t ws_n = (size_t)N * (size_t)(4 * C + 4 * QD + 4 * KD + Mw) + (size_t)N;
    float *ws = ws_part(wsp, 1, ws_n * sizeof(float));
    int64_t *ibuf = ws_part(wsp, 2, (size_t)(4 * N) * sizeof(int64_t));
    if (!ws || !ibuf) {
        return ps_fail(e, PS_EXIT_RUNTIME, "forward: out of memory for %lld tokens", (long long)N);
    }
    b->x = ws;
    b->xn = b->x + N * C;
    b->y = b->xn + N * C;
    b->q = b->y + N * C;
    b->k = b->q + N * QD;
    b->v = b->k + N * KD;
    b->z = b->v + N * KD;
    b->h1 = b->z + N * QD;
    b->h2 = b->h1 + N * M;
    b->h3 = llama ? b->h2 + N * M : NULL;
    b->scale = b->h2 + N * M + (llama ? N * M : 0);
    b->xc = b->scale + N;
    b->qc = b->xc + N * C;
    b->kc = b->qc + N * QD;
    b->vc = b->kc + N * KD;
    b->zc = b->vc + N * KD;
    b->posbuf = ibuf;
    b->idx = ibuf + N;
    b->map = ibuf + 2 * N;
    b->kslot = ibuf + 3 * N;
    for (int64_t r = 0; r < n_rows; r++)
        for (int64_t i = 0; i < slots[r].n; i++) b->posbuf[slots[r].off + i] = slots[r].row->start_pos + i;

    return 0;
}

// Rows joining at layer l start from the base run's residual stream there (or from the embedding).
static void join_rows(batch *b, int64_t first_new, int64_t l) {
    const ps_model_config *cfg = b->cfg;
    const ps_weights *w = b->w;
    const int64_t C = cfg->d_model;
    ps_cpu_slot *slots = b->slots;
    float *x = b->x;
    const int64_t tokens = b->n_active > first_new
                               ? slots[b->n_active - 1].off + slots[b->n_active - 1].n - slots[first_new].off : 0;
#pragma omp parallel for schedule(static) if (tokens * C >= PS_COPY_PAR_MIN)
    for (int64_t r = first_new; r < b->n_active; r++) {
        ps_cpu_slot *rs = &slots[r];
        const ps_row *row = rs->row;
        float *xr = x + rs->off * C;
        rs->dirty = row->narrow ? row->dirty_end : row->T;
        if (row->base && (row->start_layer > 0 || row->start_pos > 0 || row->narrow)) {
            memcpy(xr, row->base->resid_pre + (l * row->T + row->start_pos) * C, (size_t)(rs->n * C) * sizeof(float));
        } else {
            for (int64_t i = 0; i < rs->n; i++) {
                int64_t t = row->start_pos + i;
                const float *te = w->wte + (int64_t)row->tokens[t] * C;
                for (int64_t c = 0; c < C; c++) xr[i * C + c] = te[c];
                if (row->cache) memcpy(row->cache->embed + t * C, te, (size_t)C * sizeof(float));
                if (w->wpe) { // GPT-2's learned positions
                    const float *pe = w->wpe + t * C;
                    for (int64_t c = 0; c < C; c++) xr[i * C + c] += pe[c];
                    if (row->cache) memcpy(row->cache->pos_embed + t * C, pe, (size_t)C * sizeof(float));
                }
            }
        }
    }
}

// q, k, v (n, QD / KD) = xn (n, C) @ W_Q, W_K, W_V of layer l [+ biases]: one parallel region for the three. xq (nq, C):
// the rows q is wanted at (xn, nq = n: all of them).
static void qkv_linear(float *q, float *k, float *v, const float *xn, const ps_layer_weights *lw, const ps_weights *w, int64_t l,
                       int64_t n, int64_t C, int64_t QD, int64_t KD, const float *xq, int64_t nq) {
    const ps_gemm g[3] = {
        {.C = q, .A = xq, .B = lw->w_q, .bias = w->b_q ? w->b_q + l * QD : NULL, .M = nq, .N = QD, .K = C, .lda = C, .ldb = QD, .ldc = QD},
        {.C = k, .A = xn, .B = lw->w_k, .bias = w->b_k ? w->b_k + l * KD : NULL, .M = n, .N = KD, .K = C, .lda = C, .ldb = KD, .ldc = KD},
        {.C = v, .A = xn, .B = lw->w_v, .bias = w->b_v ? w->b_v + l * KD : NULL, .M = n, .N = KD, .K = C, .lda = C, .ldb = KD, .ldc = KD},
    };
    if (n > 0) ps_cpu_linear_n(g, 3);
}

// Of the nq tokens idx[0..nq) whose Q/K/V a layer recomputes, those whose query it also needs: every one but the tokens
// of rows that run only their out_pos after attention (the last layer: ps_layer_plan.outs_only) which are not among them.
// sel[j]: the token's index in idx, tok[j]: the token. Returns their count.
static int64_t query_tokens(const batch *b, const int64_t *idx, int64_t *sel, int64_t *tok) {
    int64_t n = 0, k = 0;
    for (int64_t r = 0; r < b->n_active; r++) {
        const ps_cpu_slot *rs = &b->slots[r];
        for (int64_t t = rs->row->start_pos; t < rs->plan.qkv_end; t++, k++)
            if (ps_post_at(rs->row, &rs->plan, t) || !rs->plan.outs_only) {
                sel[n] = k;
                tok[n++] = idx[k];
            }
    }
    return n;
}

// Attention's inputs: LN1 and Q/K/V only where the residual stream changed (the rest is base's), then
// the q/k/v patches and, for Llama and GPT-NeoX, rotary (GPT-NeoX's on the first rotary_dim dims of a head).
static void qkv_step(batch *b, int64_t l, const ps_layer_weights *lw) {
    const ps_model_config *cfg = b->cfg;
    const ps_weights *w = b->w;
    const int64_t C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads, D = cfg->d_head;
    const int64_t QD = H * D, KD = Hkv * D, NA = b->NA, n_active = b->n_active;
    ps_cpu_slot *slots = b->slots;
    float *x = b->x, *xn = b->xn, *q = b->q, *k = b->k, *v = b->v, *scale = b->scale;
    float *xc = b->xc, *qc = b->qc, *kc = b->kc, *vc = b->vc;
    int64_t *posbuf = b->posbuf, *idx = b->idx;
    int64_t nq = 0;
    for (int64_t r = 0; r < n_active; r++)
        for (int64_t t = slots[r].row->start_pos; t < slots[r].plan.qkv_end; t++)
            idx[nq++] = slots[r].off + t - slots[r].row->start_pos;
    // Queries only where attention runs them (in the last layer, a narrowed or logits-only row's out_pos): their
    // normalized rows gathered into xc (free once the norm has read it). qsel/qtok: b->map and b->kslot, which
    // mlp_step sets afresh.
    int64_t *qsel = b->map, *qtok = b->kslot;
    const int64_t nqq = query_tokens(b, idx, qsel, qtok);
    if (nq == NA) {
        norm(cfg, xn, scale, x, w->ln1_w + l * C, w->ln1_b ? w->ln1_b + l * C : NULL, NA);
        store_rows(slots, n_active, offsetof(ps_cache, ln1_scale), l, scale, 1);
        if (nqq == nq) {
            qkv_linear(q, k, v, xn, lw, w, l, NA, C, QD, KD, xn, NA);
        } else {
            gather(xc, xn, qsel, nqq, C);
            qkv_linear(qc, k, v, xn, lw, w, l, NA, C, QD, KD, xc, nqq);
            scatter(q, qc, qtok, nqq, QD);
        }
    } else {
        gather(xc, x, idx, nq, C);
        norm(cfg, xn, NULL, xc, w->ln1_w + l * C, w->ln1_b ? w->ln1_b + l * C : NULL, nq);
        if (nqq == nq) {
            qkv_linear(qc, kc, vc, xn, lw, w, l, nq, C, QD, KD, xn, nq);
            scatter(q, qc, idx, nq, QD);
        } else {
            gather(xc, xn, qsel, nqq, C);
            qkv_linear(qc, kc, vc, xn, lw, w, l, nq, C, QD, KD, xc, nqq);
            scatter(q, qc, qtok, nqq, QD);
        }
        scatter(k, kc, idx, nq, KD);
        scatter(v, vc, idx, nq, KD);
        PS_PROF(PS_PROF_COPY, qkv_from_base(q, k, v, slots, n_active, NA, l, QD, KD));
    }
    hook(cfg, PS_SITE_Q, l, q, QD, NULL, slots, n_active);
    hook(cfg, PS_SITE_K, l, k, KD, NULL, slots, n_active);
    hook(cfg, PS_SITE_V, l, v, KD, NULL, slots, n_active);
    store_rows(slots, n_active, offsetof(ps_cache, q), l, q, QD);
    store_rows(slots, n_active, offsetof(ps_cache, k), l, k, KD);
    store_rows(slots, n_active, offsetof(ps_cache, v), l, v, KD);
    if (cfg->rotary_dim) {
        for (int64_t r = 0; r < n_active; r++) {
            const ps_cpu_slot *rs = &slots[r];
            ps_cpu_rotary(q + rs->off * QD, rs->n, H, D, cfg->rotary_dim, posbuf + rs->off, cfg->rope_theta);
            ps_cpu_rotary(k + rs->off * KD, rs->n, Hkv, D, cfg->rotary_dim, posbuf + rs->off, cfg->rope_theta);
            ps_cache *cc = rs->row->cache;
            if (cc) {
                store(cc->rot_q, l, rs, q, QD);
                store(cc->rot_k, l, rs, k, KD);
            }
        }
    }

}

// Causal attention per (row, head): keys before start_pos come from the base run's cache. Rows that skip
// attention at this layer take base's z where they recompute what follows. Then the z patches.
static void attention_step(batch *b, int64_t l, const ps_layer_weights *lw) {
    const ps_model_config *cfg = b->cfg;
    const int64_t C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads, D = cfg->d_head;
    const int64_t QD = H * D, KD = Hkv * D, n_active = b->n_active;
    ps_cpu_slot *slots = b->slots;
    float *q = b->q, *k = b->k, *v = b->v, *z = b->z;
    const int64_t group = H / Hkv, T_max = b->T_max;
    for (int64_t r = 0; r < n_active; r++) {
        const ps_cpu_slot *rs = &slots[r];
        if (!rs->plan.attn) PS_PROF(PS_PROF_COPY, copy_base(z, rs, rs->row->base->z, l, QD, rs->row->start_pos, rs->plan.post_end));
    }
    const ps_cpu_attn_layer al = {.cfg = cfg, .q = q, .k = k, .v = v, .z = z, .l = l, .H = H, .D = D, .QD = QD, .KD = KD, .group = group,
                           .rotary = cfg->rotary_dim > 0, .inv_sqrt_d = 1.0f / sqrtf((float)D)};
#ifdef PS_CPU_PROFILE
    const double prof_t0 = ps_prof_now();
#endif
#pragma omp parallel if (n_active * H * T_max * T_max * D >= PS_PAR_MIN)
    {
        float *sc = malloc(ps_cpu_attend_scratch(T_max, D) * sizeof(float));
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t r = 0; r < n_active; r++)
            for (int64_t h = 0; h < H; h++)
                if (slots[r].plan.attn) ps_cpu_attend_head(&al, &slots[r], h, sc);
        free(sc);
    }
#ifdef PS_CPU_PROFILE
    ps_prof_add(PS_PROF_ATTN, prof_t0);
#endif
    hook(cfg, PS_SITE_Z, l, z, QD, NULL, slots, n_active);
    for (int64_t r = 0; r < n_active; r++) {
        ps_cache *cc = slots[r].row->cache;
        if (!cc) continue;
        store(cc->z, l, &slots[r], z, QD);
        if (cc->result) {
            // result[t, h, :] = z[t, h, :] @ W_O[h]  (TransformerLens's per-head output, no bias)
            const int64_t T = slots[r].row->T;
            for (int64_t h = 0; h < H; h++)
                ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)T, (int)C, (int)D, 1.0f,
                            z + slots[r].off * QD + h * D, (int)QD, lw->w_o + h * D * C, (int)C, 0.0f,
                            cc->result + (l * T * H + h) * C, (int)(H * C));
        }
    }

}

// Rows taking the head delta (ps_layer_plan.delta) among compacted rows [k0, k1) (a row's tokens are consecutive there):
// y, their attn_out (base's), += (z - base's z) @ W_O[h] for each head h whose z differs from base's at some token of
// the row: per head, one GEMM over every such row's tokens. d (N x d_head), prod (N x d_model): scratch. 0, or -1 when
// out of memory.
static int add_head_deltas(const batch *b, const compact_rows *cr, int64_t k0, int64_t k1, const float *w_o, float *y, float *d,
                           float *prod) {
    const ps_model_config *cfg = b->cfg;
    const int64_t C = cfg->d_model, H = cfg->n_heads, D = cfg->d_head, QD = H * D, l = cr->l;
    int any = 0;
    for (int64_t k = k0; k < k1 && !any; k++) any = b->slots[cr->kslot[k]].plan.delta;
    if (!any) return 0;
    int64_t *sel = malloc((size_t)(k1 - k0) * sizeof *sel);
    if (!sel) return -1;
    for (int64_t h = 0; h < H; h++) {
        int64_t n = 0;
        for (int64_t k = k0, ke; k < k1; k = ke) {
            const int64_t r = cr->kslot[k];
            for (ke = k; ke < k1 && cr->kslot[ke] == r; ke++) {}
            const ps_row *row = b->slots[r].row;
            if (!b->slots[r].plan.delta) continue;
            int changed = 0;
            for (int64_t j = k; j < ke && !changed; j++)
                changed = memcmp(b->z + cr->idx[j] * QD + h * D, row->base->z + ps_array_at(cfg, PS_ARR_Z, row->T, l, cr->posbuf[cr->idx[j]], h),
                                 (size_t)D * sizeof(float)) != 0;
            for (int64_t j = k; changed && j < ke; j++, n++) {
                const float *zt = b->z + cr->idx[j] * QD + h * D;
                const float *bz = row->base->z + ps_array_at(cfg, PS_ARR_Z, row->T, l, cr->posbuf[cr->idx[j]], h);
                for (int64_t i = 0; i < D; i++) d[n * D + i] = zt[i] - bz[i];
                sel[n] = j;
            }
        }
        if (!n) continue;
        ps_cpu_linear(prod, d, w_o + h * D * C, NULL, n, D, C);
        for (int64_t i = 0; i < n; i++)
            for (int64_t c = 0; c < C; c++) y[sel[i] * C + c] += prod[i * C + c];
    }
    free(sel);
    return 0;
}

// The MLP's matrices, activation and hook_mlp_post on the tokens that run them (upto: mlp_step's), into y.
static void mlp_block(batch *b, int64_t l, const ps_layer_weights *lw, const compact_rows *crp, const int64_t *upto,
                      const int64_t *pmap) {
    const ps_model_config *cfg = b->cfg;
    const ps_weights *w = b->w;
    const int64_t C = cfg->d_model, M = cfg->d_mlp, n_active = b->n_active, nm = upto[2]; // nm: tokens the input matrices run on
    const int llama = cfg->arch == PS_ARCH_LLAMA;
    ps_cpu_slot *slots = b->slots;
    float *xn = b->xn, *y = b->y, *h1 = b->h1, *h2 = b->h2, *h3 = b->h3;
    const compact_rows cr = *crp;
    const int fused = cfg->act == PS_ACT_GELU_NEW && !llama; // GPT-2's: b_in added in the activation's pass
    const float *b_in = w->b_in ? w->b_in + l * M : NULL;
    ps_cpu_linear(h1, xn, lw->w_in, fused ? NULL : b_in, nm, C, M);
    if (llama) ps_cpu_linear(h3, xn, lw->w_up, NULL, nm, C, M);
#ifdef PS_CPU_PROFILE
    const double prof_t0 = ps_prof_now();
#endif
    if (fused) {
#pragma omp parallel for schedule(static) if (nm * M >= PS_PAR_MIN)
        for (int64_t t = 0; t < nm; t++) ps_cpu_bias_gelu_new_n(h2 + t * M, h1 + t * M, b_in, M);
    } else {
#pragma omp parallel for schedule(static) if (nm * M >= PS_PAR_MIN)
        for (int64_t i = 0; i < nm * M; i++) {
            float a = ps_cpu_act(cfg->act, h1[i]);
            h2[i] = llama ? a * h3[i] : a;
        }
    }
#ifdef PS_CPU_PROFILE
    ps_prof_add(PS_PROF_ACT, prof_t0);
#endif
    from_base_rows(h2, M, &cr, upto[2], upto[3], offsetof(ps_cache, mlp_post));
    hook(cfg, PS_SITE_MLP_POST, l, h2, M, pmap, slots, n_active);
    store_rows(slots, n_active, offsetof(ps_cache, mlp_pre), l, h1, M);
    if (llama) store_rows(slots, n_active, offsetof(ps_cache, mlp_pre_linear), l, h3, M);
    store_rows(slots, n_active, offsetof(ps_cache, mlp_post), l, h2, M);
    ps_cpu_linear(y, h2, lw->w_out, w->b_out ? w->b_out + l * C : NULL, upto[3], M, C);
}

// W_O and the MLP with their patches, then the residual stream of what a narrowed row did not recompute.
static int mlp_step(batch *b, int64_t l, const ps_layer_weights *lw) {
    const ps_model_config *cfg = b->cfg;
    const ps_weights *w = b->w;
    const int64_t C = cfg->d_model, H = cfg->n_heads, D = cfg->d_head;
    const int64_t QD = H * D, NA = b->NA, n_active = b->n_active;
    ps_cpu_slot *slots = b->slots;
    float *x = b->x, *xn = b->xn, *y = b->y, *z = b->z, *h1 = b->h1, *scale = b->scale;
    float *xc = b->xc, *zc = b->zc;
    int64_t *posbuf = b->posbuf, *idx = b->idx, *map = b->map, *kslot = b->kslot;
    // W_O and the MLP, on the tokens this layer recomputes (all of them unless rows are narrowed). A row
    // entering after z skips the steps before its hook (their outputs are base's): tokens are ordered by
    // how late they enter, so each step runs on a prefix; upto[k] counts the tokens entering at late <= k.
    // zp/xp are the full buffers or gathered copies, pmap the token -> row map of the latter.
    int64_t np = 0, upto[6];
    for (int k = 0; k < 6; k++) {
        for (int64_t r = 0; r < n_active; r++) {
            const ps_cpu_slot *rs = &slots[r];
            if (rs->plan.late != k) continue;
            for (int64_t t = rs->row->start_pos; t < rs->row->T; t++)
                if (ps_post_at(rs->row, &rs->plan, t)) {
                    kslot[np] = r;
                    idx[np++] = rs->off + t - rs->row->start_pos;
                }
        }
        upto[k] = np;
    }
    const int compact = np != NA || upto[0] != np;
    const int64_t *pmap = NULL;
    float *zp = z, *xp = x;
    if (compact) {
        for (int64_t i = 0; i < NA; i++) map[i] = -1;
        for (int64_t i = 0; i < np; i++) map[idx[i]] = i;
        pmap = map;
        gather(zc, z, idx, upto[0], QD);
        gather(xc, x, idx, np, C);
        zp = zc;
        xp = xc;
    }
    const compact_rows cr = {idx, kslot, posbuf, slots, l};
    const int64_t nm = upto[2]; // tokens the MLP's input matrices run on
    ps_cpu_linear(y, zp, lw->w_o, w->b_o ? w->b_o + l * C : NULL, upto[0], QD, C);
    // Rows that patch or capture hook_result: per-head outputs, their hook, attn_out as their sum (cpu_result.c).
    if (ps_cpu_result_step(cfg, lw->w_o, w->b_o ? w->b_o + l * C : NULL, l, zp, y, upto[0], pmap, NA, slots, n_active) != 0) return -1;
    if (!cfg->parallel_residual) {
        from_base_rows(y, C, &cr, upto[0], upto[1], offsetof(ps_cache, attn_out));
        if (add_head_deltas(b, &cr, upto[0], upto[1], lw->w_o, y, h1, xn) != 0) return -1;   // (h1, xn: free until the MLP)
        hook(cfg, PS_SITE_ATTN_OUT, l, y, C, pmap, slots, n_active);
        store_rows(slots, n_active, offsetof(ps_cache, attn_out), l, y, C);
        add_into(xp, y, upto[1] * C);
        from_base_rows(xp, C, &cr, upto[1], upto[4], offsetof(ps_cache, resid_mid));
        hook(cfg, PS_SITE_RESID_MID, l, xp, C, pmap, slots, n_active);
        store_rows(slots, n_active, offsetof(ps_cache, resid_mid), l, xp, C);
        norm(cfg, xn, scale, xp, w->ln2_w + l * C, w->ln2_b ? w->ln2_b + l * C : NULL, nm);
    } else {
        // GPT-NeoX's parallel block: the MLP reads ln2 of the stream entering the layer and resid_post =
        // resid_pre + attn_out + mlp_out, so there is no resid_mid (no site: ps_row_check refuses it). Rows
        // entering at mlp_post or mlp_out still add base's attn_out, so they take it with the late attn_out rows.
        from_base_rows(y, C, &cr, upto[0], upto[4], offsetof(ps_cache, attn_out));
        if (add_head_deltas(b, &cr, upto[0], upto[4], lw->w_o, y, h1, xn) != 0) return -1;   // (their MLP's output is base's: late 4)
        hook(cfg, PS_SITE_ATTN_OUT, l, y, C, pmap, slots, n_active);
        store_rows(slots, n_active, offsetof(ps_cache, attn_out), l, y, C);
        norm(cfg, xn, scale, xp, w->ln2_w + l * C, w->ln2_b ? w->ln2_b + l * C : NULL, nm);
        add_into(xp, y, upto[4] * C);
    }
    store_rows(slots, n_active, offsetof(ps_cache, ln2_scale), l, scale, 1);

    // MLP block. Where every row that runs it has its output overwritten whatever it computes (a mean- or
    // zero-ablated MLP: ps_row_mlp_replaced), it is skipped: the hook at mlp_out writes all their tokens.
    int live = 0;
    for (int64_t r = 0; !live && r < n_active; r++) live = slots[r].plan.late <= 3 && !ps_row_mlp_replaced(slots[r].row, l);
    if (live) mlp_block(b, l, lw, &cr, upto, pmap);
    from_base_rows(y, C, &cr, upto[3], upto[4], offsetof(ps_cache, mlp_out));
    hook(cfg, PS_SITE_MLP_OUT, l, y, C, pmap, slots, n_active);
    store_rows(slots, n_active, offsetof(ps_cache, mlp_out), l, y, C);
    add_into(xp, y, upto[4] * C);
    from_base_rows(xp, C, &cr, upto[4], np, offsetof(ps_cache, resid_post));
    hook(cfg, PS_SITE_RESID_POST, l, xp, C, pmap, slots, n_active);
    store_rows(slots, n_active, offsetof(ps_cache, resid_post), l, xp, C);
    if (compact) {
        scatter(x, xc, idx, np, C);
        // Positions a narrowed row did not recompute keep base's residual stream.
        PS_PROF(PS_PROF_COPY, post_from_base(x, slots, n_active, NA, l, C));
    }
    for (int64_t r = 0; r < n_active; r++) slots[r].dirty = slots[r].plan.post_end;
    return 0;
}

// Rows that start past the last layer, then the final norm and the unembedding at the positions asked
// for (every position for cache rows).
static int unembed_step(batch *b, ps_cpu_workspace *wsp, ps_error *e) {
    const ps_model_config *cfg = b->cfg;
    const ps_weights *w = b->w;
    const int64_t L = cfg->n_layers, C = cfg->d_model, V = cfg->d_vocab, n_rows = b->n_rows, n_active = b->n_active;
    ps_cpu_slot *slots = b->slots;
    float *x = b->x, *xn = b->xn;
    // Rows that start past the last layer (a patch of the final resid_post) take the base's final state.
    for (int64_t r = n_active; r < n_rows; r++) {
        const ps_cpu_slot *rs = &slots[r];
        memcpy(x + rs->off * C, rs->row->base->resid_post + ((L - 1) * rs->row->T + rs->row->start_pos) * C,
               (size_t)(rs->n * C) * sizeof(float));
        hook(cfg, PS_SITE_RESID_POST, L - 1, x, C, NULL, rs, 1);
    }

    // Final norm and unembedding, only at the positions asked for (all of them for cache rows).
    int64_t n_out_total = 0;
    for (int64_t r = 0; r < n_rows; r++) n_out_total += slots[r].row->n_out;
    float *xo = ws_part(wsp, 3, (size_t)(n_out_total ? n_out_total : 1) * (size_t)C * sizeof(float));
    if (!xo) {
        return ps_fail(e, PS_EXIT_RUNTIME, "forward: out of memory");
    }
    int64_t at = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        const ps_cpu_slot *rs = &slots[r];
        ps_row *row = rs->row;
        if (row->cache) {
            // Cache rows: final norm and logits at every position.
            float *xr = x + rs->off * C;
            norm(cfg, xn, row->cache->lnf_scale, xr, w->lnf_w, w->lnf_b, row->T);
            if (row->cache->logits) {
                const ps_gemm g = {.C = row->cache->logits, .A = xn, .B = w->w_u, .M = row->T, .N = V, .K = C, .lda = C,
                                   .ldb = C, .ldc = V, .trans_b = 1};
                ps_sgemm_par(&g, 1); // column blocks on the threads
                if (w->b_u)
                    for (int64_t t = 0; t < row->T; t++)
                        for (int64_t j = 0; j < V; j++) row->cache->logits[t * V + j] += w->b_u[j];
            }
        }
        for (int64_t o = 0; o < row->n_out; o++) {
            int64_t t = row->out_pos[o];
            if (t < row->start_pos || t >= row->T) {
                return ps_fail(e, PS_EXIT_RUNTIME, "forward: output position %lld outside [%lld, %lld)", (long long)t,
                               (long long)row->start_pos, (long long)row->T);
            }
            memcpy(xo + (at + o) * C, x + (rs->off + t - row->start_pos) * C, (size_t)C * sizeof(float));
        }
        at += row->n_out;
    }
    norm(cfg, xo, NULL, xo, w->lnf_w, w->lnf_b, n_out_total);
#ifdef PS_CPU_PROFILE
    const double prof_t0 = ps_prof_now();
#endif
    at = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        ps_row *row = slots[r].row;
        if (!row->n_out) continue;
        if (!row->cols) {
            // whole-vocabulary rows: full_logits(), after every batch of the call
        } else {
            for (int64_t o = 0; o < row->n_out; o++)
                for (int64_t c = 0; c < row->n_cols; c++) {
                    const float *wu = w->w_u + (int64_t)row->cols[c] * C;
                    const float acc = ps_cpu_dot(xo + (at + o) * C, wu, C);
                    row->logits[o * row->n_cols + c] = acc + (w->b_u ? w->b_u[row->cols[c]] : 0.0f);
                }
        }
        at += row->n_out;
    }
#ifdef PS_CPU_PROFILE
    ps_prof_add(PS_PROF_UNEMBED, prof_t0);
#endif
    return 0;
}

// The whole-vocabulary logits of every row without cols, of all nb batches of a call, in one GEMM over
// their final-norm rows (each batch's workspace part 3, as unembed_step left it): the unembedding is read
// once, not once per row (a one-row GEMM read all 150 MB of GPT-2's for each baseline prompt). Column blocks
// on the threads: each logit is the same dot product however the columns are split; but not however many rows
// the GEMM has, so callers pass batches whose numbers must not depend on each other one at a time.
static int full_logits(const ps_model *m, const batch *bs, ps_cpu_workspace *wss, int64_t nb, ps_error *e) {
    const ps_weights *w = &m->w;
    const int64_t C = m->cfg.d_model, V = m->cfg.d_vocab;
    int64_t n = 0;
    for (int64_t g = 0; g < nb; g++)
        for (int64_t r = 0; r < bs[g].n_rows; r++)
            if (!bs[g].slots[r].row->cols) n += bs[g].slots[r].row->n_out;
    if (n == 0) return 0;
#ifdef PS_CPU_PROFILE
    const double prof_t0 = ps_prof_now();
#endif
    float *xs = malloc((size_t)(n * C) * sizeof(float)), *ls = malloc((size_t)(n * V) * sizeof(float));
    if (!xs || !ls) {
        free(xs);
        free(ls);
        return ps_fail(e, PS_EXIT_RUNTIME, "forward: out of memory for %lld rows of logits", (long long)n);
    }
    int64_t k = 0;
    for (int64_t g = 0; g < nb; g++) {
        const float *xo = wss[g].part[3];
        int64_t at = 0;
        for (int64_t r = 0; r < bs[g].n_rows; r++) {
            const ps_row *row = bs[g].slots[r].row;
            if (!row->cols) {
                memcpy(xs + k * C, xo + at * C, (size_t)(row->n_out * C) * sizeof(float));
                k += row->n_out;
            }
            at += row->n_out;
        }
    }
    const ps_gemm g = {.C = ls, .A = xs, .B = w->w_u, .M = n, .N = V, .K = C, .lda = C, .ldb = C, .ldc = V, .trans_b = 1};
    ps_sgemm_par(&g, 1);
    k = 0;
    for (int64_t g = 0; g < nb; g++)
        for (int64_t r = 0; r < bs[g].n_rows; r++) {
            ps_row *row = bs[g].slots[r].row;
            if (row->cols) continue;
            for (int64_t o = 0; o < row->n_out; o++, k++)
                for (int64_t j = 0; j < V; j++) row->logits[o * V + j] = ls[k * V + j] + (w->b_u ? w->b_u[j] : 0.0f);
        }
    free(xs);
    free(ls);
#ifdef PS_CPU_PROFILE
    ps_prof_add(PS_PROF_UNEMBED, prof_t0);
#endif
    return 0;
}

// The last layer's rows at out_pos only (ps_row_last_layer_outs_only), unless the batch holds a cache row (cache rows store
// whole layers from the uncompacted buffers).
static void last_layer_outs_only(batch *b, int64_t l) {
    if (l != b->cfg->n_layers - 1) return;
    for (int64_t r = 0; r < b->n_rows; r++)
        if (b->slots[r].row->cache) return;
    for (int64_t r = 0; r < b->n_active; r++)
        if (ps_row_last_layer_outs_only(b->cfg, b->slots[r].row, l)) b->slots[r].plan.outs_only = 1;
}

// Layer l for one batch. The layer's matrices are asked for once per layer (*have), and only when a row is
// active, so a streamed layer is converted once for every batch that steps through it.
static int layer_step(batch *b, const ps_model *m, int64_t l, ps_layer_weights *lw, int *have, ps_error *e) {
    const int64_t first_new = b->n_active;
    while (b->n_active < b->n_rows && b->slots[b->n_active].row->start_layer <= l) b->n_active++;
    b->NA = b->n_active ? b->slots[b->n_active - 1].off + b->slots[b->n_active - 1].n : 0;
    join_rows(b, first_new, l);
    if (b->NA == 0) return 0;
    if (!*have && ps_model_layer(m, l, lw, e) != 0) return -1; // (converted now if the model is streamed)
    *have = 1;
    for (int64_t r = 0; r < b->n_active; r++) b->slots[r].plan = ps_plan_layer(b->cfg, b->slots[r].row, l, b->slots[r].dirty);
    last_layer_outs_only(b, l);
    hook(b->cfg, PS_SITE_RESID_PRE, l, b->x, b->cfg->d_model, NULL, b->slots, b->n_active);
    store_rows(b->slots, b->n_active, offsetof(ps_cache, resid_pre), l, b->x, b->cfg->d_model);
    qkv_step(b, l, lw);
    attention_step(b, l, lw);
    if (mlp_step(b, l, lw) != 0) return ps_fail(e, PS_EXIT_RUNTIME, "forward: out of memory for layer %lld's hook_result or head deltas", (long long)l);
    return 0;
}

int ps_cpu_forward_batch(const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *wsp, ps_error *e) {
    if (n_rows <= 0) return 0;
    batch b;
    if (batch_setup(&b, m, rows, n_rows, wsp, e) != 0) return -1;
    for (int64_t l = 0; l < m->cfg.n_layers; l++) {
        ps_layer_weights lw;
        int have = 0;
        if (layer_step(&b, m, l, &lw, &have, e) != 0) return -1;
    }
    if (unembed_step(&b, wsp, e) != 0) return -1;
    return full_logits(m, &b, wsp, 1, e);
}

#ifdef PS_CPU_PROFILE
static int forward_groups(const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends, int64_t G, ps_cpu_workspace *ws,
                          ps_error *e);
int ps_cpu_forward_groups_ws(const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends, int64_t G, ps_cpu_workspace *ws,
                             ps_error *e) {
    const double t0 = ps_prof_now();
    const int rc = forward_groups(m, rows, n_rows, ends, G, ws, e);
    ps_prof_add(PS_PROF_FORWARD, t0);
    if (n_rows > 0 && rows[0].cache) ps_prof_add(PS_PROF_BASELINE, t0);
    return rc;
}
static int forward_groups(const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends, int64_t G, ps_cpu_workspace *ws,
                          ps_error *e) {
#else
int ps_cpu_forward_groups_ws(const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends, int64_t G, ps_cpu_workspace *ws,
                             ps_error *e) {
#endif
    if (n_rows <= 0) return 0;
    if (!ends || G <= 0) G = 1, ends = &n_rows;
    for (int64_t g = 0; g < G; g++)
        if (ends[g] <= (g ? ends[g - 1] : 0) || ends[g] > n_rows || (g == G - 1 && ends[g] != n_rows))
            return ps_fail(e, PS_EXIT_RUNTIME, "forward: group %lld of %lld ends at row %lld of %lld (internal error)", (long long)g,
                           (long long)G, (long long)ends[g], (long long)n_rows);
    ps_blas_set_num_threads(1);
    // Small groups of resident weights: each whole on one thread, the threads taking groups in turn (no barrier per
    // step, and none of a small batch's serial stretches with the other thread waiting).
    if (ps_cpu_groups_on_threads(m, rows, ends, G)) return ps_cpu_forward_pieces(m, rows, ends, G, ws, e);
    ps_cpu_workspace *wsp = calloc((size_t)G, sizeof *wsp);
    batch *b = calloc((size_t)G, sizeof *b);
    int rc = 0;
    if (!wsp || !b) rc = ps_fail(e, PS_EXIT_RUNTIME, "forward: out of memory for %lld groups of rows", (long long)G);
    // Each group is its own batch with its own workspace: the same GEMM shapes and inputs as a call of its own.
    for (int64_t g = 0; rc == 0 && g < G; g++) {
        const int64_t r0 = g ? ends[g - 1] : 0;
        rc = batch_setup(&b[g], m, rows + r0, ends[g] - r0, &wsp[g], e);
    }
    for (int64_t l = 0; rc == 0 && l < m->cfg.n_layers; l++) {
        ps_layer_weights lw;
        int have = 0;
        for (int64_t g = 0; rc == 0 && g < G; g++) rc = layer_step(&b[g], m, l, &lw, &have, e);
    }
    for (int64_t g = 0; rc == 0 && g < G; g++) rc = unembed_step(&b[g], &wsp[g], e);
    // The whole-vocabulary logits group by group: the BLAS's bits for a row can depend on how many rows
    // its GEMM has (OpenBLAS's small-matrix kernels), so one GEMM over every group's rows made a group's
    // logits depend on the others in the call (the chunk's prompts, the fused pass's rows).
    for (int64_t g = 0; rc == 0 && g < G; g++) rc = full_logits(m, &b[g], &wsp[g], 1, e);
    for (int64_t g = 0; wsp && g < G; g++) ps_cpu_workspace_free(&wsp[g]);
    free(wsp);
    free(b);
    return rc;
}

int ps_cpu_forward_groups(const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends, int64_t G, ps_error *e) {
    ps_cpu_workspace w = {0};
    const int rc = ps_cpu_forward_groups_ws(m, rows, n_rows, ends, G, &w, e);
    ps_cpu_workspace_free(&w);
    return rc;
}
