// Planning rows with interventions: where a row's patches can first change the base run (per operation),
// where in its layer the change enters, whether the row can be narrowed or skipped, and the generic entry
// point that runs rows of patches and captures through a backend (ps_engine_rows). Sweeps plan their rows
// here too, so every producer skips by the same rules.
#include "engine_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int any_nonzero(const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (x[i] != 0) return 1;
    return 0;
}

// 1 when patch pt, applied to base's values, changes position t: replace/freeze/mean differ from their
// source bit for bit; zero of a slice that is all zero, add of a zero vector and scale by 1 (or of a zero
// slice) change nothing.
static int changes_at(const ps_model_config *mc, const ps_patch *pt, const ps_cache *base, int64_t t) {
    const int64_t T = base->T, units = ps_site_units(mc, pt->site), unit = ps_site_unit(mc, pt->site, T);
    const float *arr = ps_cache_site(base, pt->site);
    // A base or source without the hook (hook_result is held only when asked for): assume it changes (a source
    // without it is then refused by ps_row_check).
    if (!arr || ((pt->op == PS_OP_REPLACE || pt->op == PS_OP_FREEZE) && (!pt->src || !ps_cache_site(pt->src, pt->site)))) return 1;
    int64_t ref_row = -1;
    if (pt->op == PS_OP_MEAN || pt->op == PS_OP_ADD) {
        ref_row = ps_view_row(&pt->ref, t);
        if (ref_row < 0) return 0;
    }
    // Position-major sites compare a run of units in one go; pattern (head-major) one head at a time.
    const int head_major = ps_arrays[ps_site_array(pt->site)].head_major;
    int64_t u0, u1;
    for (int64_t u = 0; ps_patch_run(pt, units, u, &u0, &u1); u = u1) {
        if (head_major) u1 = u0 + 1;
        const int64_t n = pt->site == PS_SITE_PATTERN ? t + 1 : (u1 - u0) * unit; // a query's probabilities past t are 0
        const float *b = arr + ps_site_at(mc, pt->site, T, pt->layer, t, u0);
        const float *ref = ref_row >= 0 ? pt->ref.data + ref_row * ps_site_width(mc, pt->site, T) + u0 * unit : NULL;
        switch (pt->op) {
        case PS_OP_REPLACE: case PS_OP_FREEZE: {
            const float *s = ps_cache_site(pt->src, pt->site) + ps_site_at(mc, pt->site, T, pt->layer, t, u0);
            if (memcmp(b, s, (size_t)n * sizeof(float))) return 1;
            break;
        }
        case PS_OP_MEAN: if (memcmp(b, ref, (size_t)n * sizeof(float))) return 1; break;
        case PS_OP_ZERO: if (any_nonzero(b, n)) return 1; break;
        case PS_OP_ADD: if (any_nonzero(ref, n)) return 1; break;
        case PS_OP_SCALE: if (pt->factor != 1.0f && (!isfinite(pt->factor) || any_nonzero(b, n))) return 1; break;
        default: return 1;
        }
    }
    return 0;
}

// First position at which the patched run can differ from the base run; -1 when it cannot differ at all.
static int64_t first_change(const ps_model_config *mc, const ps_patch *pt, const ps_cache *base) {
    int64_t t0 = pt->pos < 0 ? 0 : pt->pos, t1 = pt->pos < 0 ? base->T : pt->pos + 1;
    for (int64_t t = t0; t < t1; t++)
        if (changes_at(mc, pt, base, t)) return t;
    return -1;
}

// Where a patch's changes begin in its layer (ps_entry). From a query's attention on, a patch changes only
// its own positions in that layer; resid_pre changes the input of every later position's attention, and
// k/v the keys and values every later query reads.
static ps_entry site_entry(ps_site s) {
    switch (s) {
    case PS_SITE_Q: case PS_SITE_PATTERN: return PS_ENTER_QUERIES;
    case PS_SITE_Z: case PS_SITE_RESULT: return PS_ENTER_WO;
    case PS_SITE_ATTN_OUT: return PS_ENTER_ATTN_OUT;
    case PS_SITE_RESID_MID: return PS_ENTER_RESID_MID;
    case PS_SITE_MLP_POST: return PS_ENTER_MLP_POST;
    case PS_SITE_MLP_OUT: return PS_ENTER_MLP_OUT;
    case PS_SITE_RESID_POST: return PS_ENTER_RESID_POST;
    default: return PS_ENTER_LAYER;
    }
}

static int64_t first_change_cb(const ps_model_config *mc, const ps_patch *pt, const ps_cache *base, void *ctx) {
    (void)ctx;
    return first_change(mc, pt, base);
}

int ps_plan_row(const ps_model_config *mc, ps_row *r, int narrow_ok) { return ps_plan_row_by(mc, r, narrow_ok, first_change_cb, NULL); }

int ps_plan_row_by(const ps_model_config *mc, ps_row *r, int narrow_ok, ps_first_change_fn fc_fn, void *ctx) {
    r->start_layer = r->start_pos = 0;
    r->narrow = 0;
    r->entry = PS_ENTER_LAYER;
    r->dirty_end = 0;
    if (!r->base || r->cache) return 1; // a full forward (cache rows record every position)
    // Patches that leave base's values as they are do not move the start, but still act where the row
    // recomputes (upstream changes reach them); the row changes nothing when none changes base's run:
    // by induction over the hooks in order, each later patch then sees base's values too.
    int64_t n_changing = 0, start_pos = -1, start_layer = mc->n_layers;
    const ps_patch *only = NULL;
    for (int64_t p = 0; p < r->n_patches; p++) {
        const ps_patch *pt = &r->patches[p];
        const int64_t fc = fc_fn(mc, pt, r->base, ctx);
        if (fc < 0) continue;
        n_changing++;
        only = pt;
        if (start_pos < 0 || fc < start_pos) start_pos = fc;
        if (pt->layer < start_layer) start_layer = pt->layer;
    }
    if (n_changing == 0) return 0;
    int64_t dirty_end = -1;
    if (n_changing == 1) {
        // Positions the patch can change: [start_pos, dirty_end) in its layer, entering it, in its attention
        // (q, pattern) or after it; k/v patches leave the layer's input unchanged.
        const ps_entry entry = site_entry(only->site);
        const int local = entry >= PS_ENTER_QUERIES; // changes only its own positions in its layer
        dirty_end = only->site == PS_SITE_RESID_PRE || local ? (only->pos < 0 ? r->T : only->pos + 1) : -1;
        if (local && only->layer == mc->n_layers - 1 && !r->n_captures) {
            // From a query's attention on, in the last layer, a position only reaches its own logits.
            int reaches = 0;
            for (int64_t k = 0; k < r->n_out; k++)
                if (r->out_pos[k] >= start_pos && r->out_pos[k] < dirty_end) reaches = 1;
            if (!reaches) return 0;
        }
        r->entry = entry;
    }
    for (int64_t k = 0; k < r->n_out; k++) // the row must still reach the metric's positions
        if (r->out_pos[k] < start_pos) start_pos = r->out_pos[k];
    if (dirty_end < start_pos) dirty_end = start_pos; // k/v: nothing entering the layer differs
    r->start_layer = start_layer;
    r->start_pos = start_pos;
    // Narrowed rows describe one patch's reach; with several changing patches or captures, whole layers.
    if (narrow_ok && n_changing == 1 && !r->n_captures) {
        r->narrow = 1;
        r->dirty_end = dirty_end;
    } else {
        r->entry = PS_ENTER_LAYER;
    }
    return 1;
}

// One row planned for ps_engine_rows: 0, or -1 with e naming the row.
static int plan_one(const ps_model_config *mc, const ps_backend *be, ps_row *r, int64_t i, int naive, int narrow_ok,
                    ps_rows_stats *s, ps_error *e) {
    if (naive) r->base = NULL;
    else if (!r->base && !r->cache)
        return ps_fail(e, PS_EXIT_BADINPUT, "row %lld: needs the base run of its tokens (or the naive engine)", (long long)i);
    if (!ps_plan_row(mc, r, narrow_ok)) {
        // Nothing changes: the row runs from past the last layer (base's final state, unembedded).
        r->start_layer = mc->n_layers;
        r->start_pos = r->T - 1;
        for (int64_t k = 0; k < r->n_out; k++)
            if (r->out_pos[k] < r->start_pos) r->start_pos = r->out_pos[k];
        s->rows_unchanged++;
    }
    s->rows_narrowed += r->narrow;
    ps_error ce = {0};
    if (ps_row_check(mc, r, be->caps, be->name, &ce) != 0) return ps_fail(e, PS_EXIT_BADINPUT, "row %lld: %s", (long long)i, ce.msg);
    s->flops += ps_row_flops(mc, r);
    return 0;
}

int ps_engine_rows(const ps_model *m, ps_backend *be, ps_row *rows, int64_t n_rows, const ps_rows_opts *o, ps_rows_stats *st,
                   ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const ps_rows_opts none = {0};
    if (!o) o = &none;
    // The CPU backend cannot mix cache rows with narrowed ones in one batch; cache rows are rare here.
    int any_cache = 0;
    for (int64_t i = 0; i < n_rows; i++) any_cache |= rows[i].cache != NULL;
    const int narrow_ok = !o->naive && !any_cache && (be->caps & PS_CAP_NARROW);
    // Rows plan independently (each compares its patches with its own base), so on the threads; the first bad row
    // (by index) is the one reported.
    ps_first_error bad = PS_FIRST_ERROR_NONE;
    int64_t unchanged = 0, narrowed = 0;
    double flops = 0;
#pragma omp parallel for schedule(dynamic, 16) reduction(+ : unchanged, narrowed, flops) if (n_rows >= 64)
    for (int64_t i = 0; i < n_rows; i++) {
        ps_rows_stats rs = {0};
        ps_error re = {0};
        if (plan_one(mc, be, &rows[i], i, o->naive, narrow_ok, &rs, &re) != 0) ps_first_error_note(&bad, i, &re);
        unchanged += rs.rows_unchanged;
        narrowed += rs.rows_narrowed;
        flops += rs.flops;
    }
    if (ps_first_error_take(&bad, e) != 0) return -1;
    const ps_rows_stats s = {.rows_run = n_rows, .rows_unchanged = unchanged, .rows_narrowed = narrowed, .flops = flops};
    const int64_t per = o->batch_rows > 0 ? o->batch_rows : 512, gr = o->group_rows > 0 && be->forward_groups ? o->group_rows : 0;
    int64_t *ends = gr ? malloc((size_t)((per + gr - 1) / gr) * sizeof *ends) : NULL;
    if (gr && !ends) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld rows", (long long)n_rows);
    int rc = 0;
    for (int64_t i = 0; rc == 0 && i < n_rows; i += per) {
        const int64_t n = n_rows - i < per ? n_rows - i : per;
        int64_t G = 0;
        for (int64_t r = gr; gr && r < n + gr; r += gr) ends[G++] = r < n ? r : n;
        rc = gr ? be->forward_groups(be, m, rows + i, n, ends, G, e) : be->forward(be, m, rows + i, n, e);
    }
    free(ends);
    if (rc == 0 && st) *st = s;
    return rc;
}
