// The row plan (ps_plan.h): what a row computes at each layer, the FLOPs that costs, which units a patch
// selects, and the checks of a row's interventions against the model and a backend's capabilities.
#include "ps_plan.h"

#include <string.h>

ps_layer_plan ps_plan_layer(const ps_model_config *cfg, const ps_row *row, int64_t l, int64_t dirty) {
    ps_layer_plan p = {1, row->T, 0, row->T, 0, 0};
    if (!row->narrow) return p;
    const ps_entry en = l == row->start_layer ? row->entry : PS_ENTER_LAYER;
    p.attn = en <= PS_ENTER_QUERIES;
    p.late = en > PS_ENTER_WO ? (int)(en - PS_ENTER_WO) : 0;
    if (en == PS_ENTER_WO && row->head_delta && !ps_row_at_result(row, l)) {
        // base's attn_out plus the changed heads' part of W_O: then as a row entering at attn_out, or with a parallel
        // residual at mlp_out (the MLP reads the stream entering the layer, which is base's).
        p.delta = 1;
        p.late = (int)((cfg->parallel_residual ? PS_ENTER_MLP_OUT : PS_ENTER_ATTN_OUT) - PS_ENTER_WO);
    }
    p.qkv_end = en == PS_ENTER_LAYER ? dirty : row->start_pos;
    p.outs_only = l == cfg->n_layers - 1;
    p.post_end = en == PS_ENTER_LAYER ? row->T : dirty;
    return p;
}

static int is_out(const ps_row *row, int64_t t) {
    for (int64_t o = 0; o < row->n_out; o++)
        if (row->out_pos[o] == t) return 1;
    return 0;
}

int ps_post_at(const ps_row *row, const ps_layer_plan *p, int64_t t) {
    return t >= row->start_pos && t < p->post_end && (!p->outs_only || is_out(row, t));
}

int ps_row_at_result(const ps_row *row, int64_t l) {
    for (int64_t p = 0; p < row->n_patches; p++)
        if (row->patches[p].site == PS_SITE_RESULT && row->patches[p].layer == l) return 1;
    for (int64_t k = 0; k < row->n_captures; k++)
        if (row->captures[k].site == PS_SITE_RESULT && row->captures[k].layer == l) return 1;
    return 0;
}

int ps_row_mlp_replaced(const ps_row *row, int64_t l) {
    if (row->cache && !(row->cache->flags & PS_CACHE_LEAN)) return 0; // it stores mlp_pre and mlp_post
    for (int64_t k = 0; k < row->n_captures; k++) {
        const ps_site s = row->captures[k].site;
        if (row->captures[k].layer == l && (s == PS_SITE_MLP_POST || s == PS_SITE_MLP_OUT)) return 0;
    }
    for (int64_t p = 0; p < row->n_patches; p++) {
        const ps_patch *pt = &row->patches[p];
        if (pt->site != PS_SITE_MLP_OUT || pt->layer != l || pt->pos >= 0) continue;
        if (((pt->op == PS_OP_REPLACE || pt->op == PS_OP_FREEZE) && pt->src) || pt->op == PS_OP_ZERO) return 1;
        if (pt->op == PS_OP_MEAN && pt->ref.data) {
            int every = 1; // a map entry < 0 leaves that position alone (ps_view)
            for (int64_t t = row->start_pos; pt->ref.map && every && t < row->T; t++) every = pt->ref.map[t] >= 0;
            if (every) return 1;
        }
    }
    return 0;
}

int ps_row_last_layer_outs_only(const ps_model_config *mc, const ps_row *row, int64_t l) {
    if (l != mc->n_layers - 1 || row->cache) return 0;
    for (int64_t k = 0; k < row->n_captures; k++)
        if (row->captures[k].layer == l) return 0;
    return 1;
}

double ps_row_flops(const ps_model_config *mc, const ps_row *row) {
    const double C = (double)mc->d_model, QD = (double)(mc->n_heads * mc->d_head), KD = (double)(mc->n_kv_heads * mc->d_head),
                 M = (double)mc->d_mlp;
    const double mlp_mats = mc->arch == PS_ARCH_LLAMA ? 3 : 2;
    double f = 0;
    int64_t dirty = row->narrow ? row->dirty_end : row->T;
    for (int64_t l = row->start_layer; l < mc->n_layers; l++) {
        ps_layer_plan p = ps_plan_layer(mc, row, l, dirty);
        if (ps_row_last_layer_outs_only(mc, row, l)) p.outs_only = 1; // (a count of one row: as if in a batch without a cache row)
        double n_post = 0, keys = 0, n_q = 0; // attention: each query reads every key up to itself, for scores and sum
        for (int64_t t = row->start_pos; t < row->T; t++)
            if (ps_post_at(row, &p, t)) {
                n_post += 1;
                if (p.attn) keys += (double)(t + 1);
                n_q += t < p.qkv_end;
            }
        if (!p.outs_only) n_q = (double)(p.qkv_end - row->start_pos); // queries only where attention runs them (cpu_forward.c)
        // W_O unless entering after it; the MLP's input matrices unless entering after them; W_out likewise.
        // head_delta: one head's (D, C) part of W_O (the fewest that change the row; a row changing more heads costs more).
        const int mlp = !ps_row_mlp_replaced(row, l);
        const double post = (p.late == 0 ? QD * C : 0) + (p.delta ? (double)mc->d_head * C : 0) +
                            (mlp && p.late <= 2 ? C * M * (mlp_mats - 1) : 0) + (mlp && p.late <= 3 ? M * C : 0);
        f += 2 * (double)(p.qkv_end - row->start_pos) * C * 2 * KD + 2 * n_q * C * QD + 2 * n_post * post + 4 * keys * QD;
        if (p.late == 0 && ps_row_at_result(row, l)) f += 2 * n_post * QD * C; // W_O again, head by head (cpu_result.c)
        dirty = p.post_end;
    }
    const double cols = row->cols ? (double)row->n_cols : (double)mc->d_vocab;
    return f + 2 * (double)row->n_out * C * cols;
}

// ---------------------------------------------------------------------------------------------
// Selections

const char *ps_op_name(ps_op op) {
    static const char *names[PS_OP_COUNT] = {"replace", "zero", "mean", "add", "scale", "freeze"};
    return (int)op >= 0 && op < PS_OP_COUNT ? names[op] : "?";
}

uint64_t ps_heads_except(int64_t n_heads, int64_t h) {
    const uint64_t all = n_heads >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << n_heads) - 1);
    return h >= 0 && h < 64 ? all & ~((uint64_t)1 << h) : all;
}

int ps_patch_selects(const ps_patch *pt, int64_t u) {
    switch (ps_arrays[ps_site_array(pt->site)].units) {
    case PS_UNITS_HEADS: case PS_UNITS_KV_HEADS:
        if (pt->head_mask) return u < 64 && ((pt->head_mask >> u) & 1);
        return pt->head < 0 || pt->head == u;
    case PS_UNITS_NEURONS: return pt->neuron < 0 || pt->neuron == u;
    default: return 1;
    }
}

int ps_patch_run(const ps_patch *pt, int64_t units, int64_t from, int64_t *u0, int64_t *u1) {
    const ps_units uk = ps_arrays[ps_site_array(pt->site)].units;
    if (uk == PS_UNITS_HEADS || uk == PS_UNITS_KV_HEADS ? pt->head_mask != 0 : 0) {
        int64_t u = from;
        while (u < units && !ps_patch_selects(pt, u)) u++;
        if (u >= units) return 0;
        *u0 = u;
        while (u < units && ps_patch_selects(pt, u)) u++;
        *u1 = u;
        return 1;
    }
    const int64_t sel = uk == PS_UNITS_HEADS || uk == PS_UNITS_KV_HEADS ? pt->head : uk == PS_UNITS_NEURONS ? pt->neuron : -1;
    int64_t a = sel < 0 ? 0 : sel, b = sel < 0 ? units : sel + 1;
    if (a < from) a = from;
    if (b > units) b = units;
    if (a >= b) return 0;
    *u0 = a;
    *u1 = b;
    return 1;
}

int64_t ps_view_row(const ps_view *v, int64_t t) {
    if (v->map) return v->map[t];
    return v->rows == 1 ? 0 : t;
}

static const unsigned OP_CAP[PS_OP_COUNT] = {PS_CAP_REPLACE, PS_CAP_ZERO, PS_CAP_MEAN, PS_CAP_ADD, PS_CAP_SCALE, PS_CAP_FREEZE};

unsigned ps_row_caps(const ps_row *row) {
    unsigned c = row->narrow ? PS_CAP_NARROW : 0;
    for (int64_t p = 0; p < row->n_patches; p++) {
        const ps_patch *pt = &row->patches[p];
        if ((int)pt->op >= 0 && pt->op < PS_OP_COUNT) c |= OP_CAP[pt->op];
        if (pt->head_mask) c |= PS_CAP_HEAD_MASK;
        if (pt->site == PS_SITE_RESULT) c |= PS_CAP_RESULT;
    }
    if (row->n_captures) c |= PS_CAP_CAPTURE;
    if (row->cache && row->start_layer > 0) c |= PS_CAP_CACHE_LATE;
    if (row->narrow && row->head_delta && row->entry == PS_ENTER_WO) c |= PS_CAP_HEAD_DELTA;
    if (row->base && (row->base->flags & PS_CACHE_LEAN)) c |= PS_CAP_LEAN_BASE;
    for (int64_t k = 0; k < row->n_captures; k++)
        if (row->captures[k].site == PS_SITE_RESULT) c |= PS_CAP_RESULT;
    return c;
}

static const char *cap_name(unsigned bit) {
    switch (bit) {
    case PS_CAP_NARROW: return "narrowed rows";
    case PS_CAP_REPLACE: return "the replace operation";
    case PS_CAP_ZERO: return "the zero operation";
    case PS_CAP_MEAN: return "the mean operation";
    case PS_CAP_ADD: return "the add operation";
    case PS_CAP_SCALE: return "the scale operation";
    case PS_CAP_FREEZE: return "frozen hooks";
    case PS_CAP_HEAD_MASK: return "head masks";
    case PS_CAP_CAPTURE: return "captures";
    case PS_CAP_RESULT: return "interventions at hook_result (heads after W_O)";
    case PS_CAP_CACHE_LATE: return "cache rows that start past layer 0";
    case PS_CAP_HEAD_DELTA: return "rows that start a layer at base's attn_out plus their heads' change (head_delta)";
    case PS_CAP_LEAN_BASE: return "base runs held without pattern, mlp_pre and mlp_post (PS_CACHE_LEAN)";
    default: return "?";
    }
}

int ps_row_check(const ps_model_config *mc, const ps_row *row, unsigned caps, const char *backend, ps_error *e) {
    const unsigned missing = ps_row_caps(row) & ~caps;
    for (unsigned bit = 1; missing && bit <= PS_CAP_ALL; bit <<= 1)
        if (missing & bit)
            return ps_fail(e, PS_EXIT_BADINPUT, "the %s backend does not implement %s (use the cpu backend)", backend, cap_name(bit));
    const int64_t T = row->T;
    const int lean = row->base && (row->base->flags & PS_CACHE_LEAN);
    if (lean && row->n_captures)
        return ps_fail(e, PS_EXIT_RUNTIME, "a row with captures on a lean base run (internal error: captures read the base's every hook)");
    for (int64_t p = 0; p < row->n_patches; p++) {
        const ps_patch *pt = &row->patches[p];
        const ps_array a = ps_site_array(pt->site);
        if (lean && (pt->site == PS_SITE_PATTERN || pt->site == PS_SITE_MLP_POST))
            return ps_fail(e, PS_EXIT_RUNTIME, "patch %lld at %s on a lean base run, which lacks that hook (internal error)", (long long)p,
                           ps_site_name(pt->site));
        if (a == PS_ARR_COUNT || (int)pt->op < 0 || pt->op >= PS_OP_COUNT)
            return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld: site %d / operation %d is not one of patchsweep's", (long long)p,
                           (int)pt->site, (int)pt->op);
        const char *site = ps_site_name(pt->site), *op = ps_op_name(pt->op);
        if (!ps_array_in_model(mc, a))
            return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld (%s at %s): %s", (long long)p, op, site, ps_site_absent_why(mc, pt->site));
        const int64_t units = ps_array_units(mc, a);
        const ps_units uk = ps_arrays[a].units;
        if (pt->layer < 0 || pt->layer >= mc->n_layers || pt->pos >= T || pt->pos < -1)
            return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld (%s at %s): layer %lld / position %lld outside the model's %lld layers / the row's %lld tokens",
                           (long long)p, op, site, (long long)pt->layer, (long long)pt->pos, (long long)mc->n_layers, (long long)T);
        if ((uk == PS_UNITS_HEADS || uk == PS_UNITS_KV_HEADS) && pt->head >= units)
            return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld (%s at %s): head %lld outside the site's %lld heads", (long long)p, op,
                           site, (long long)pt->head, (long long)units);
        if (uk == PS_UNITS_NEURONS && pt->neuron >= units)
            return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld (%s at %s): neuron %lld outside the model's %lld", (long long)p, op,
                           site, (long long)pt->neuron, (long long)units);
        if (pt->head_mask && (pt->head >= 0 || (uk != PS_UNITS_HEADS && uk != PS_UNITS_KV_HEADS) || units > 64 ||
                              (units < 64 && (pt->head_mask >> units))))
            return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld (%s at %s): a head mask needs head -1, a head site and at most 64 heads, and may name only the site's %lld heads",
                           (long long)p, op, site, (long long)units);
        if ((pt->op == PS_OP_REPLACE || pt->op == PS_OP_FREEZE) && (!pt->src || pt->src->T != T || !ps_cache_site(pt->src, pt->site)))
            return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld (%s at %s): needs a source cache of the row's %lld tokens", (long long)p,
                           op, site, (long long)T);
        if (pt->op == PS_OP_MEAN || pt->op == PS_OP_ADD) {
            if (pt->site == PS_SITE_PATTERN)
                return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld: %s is not defined at the pattern site (replace, freeze, zero or scale)",
                               (long long)p, op);
            if (!pt->ref.data || pt->ref.rows < 1)
                return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld (%s at %s): needs reference rows", (long long)p, op, site);
            for (int64_t t = 0; t < T; t++) {
                const int64_t r = ps_view_row(&pt->ref, t);
                if (r >= pt->ref.rows)
                    return ps_fail(e, PS_EXIT_BADINPUT, "patch %lld (%s at %s): position %lld reads reference row %lld of %lld (give one row, one per position, or a map)",
                                   (long long)p, op, site, (long long)t, (long long)r, (long long)pt->ref.rows);
            }
        }
    }
    for (int64_t k = 0; k < row->n_captures; k++) {
        const ps_capture *cp = &row->captures[k];
        if (ps_site_array(cp->site) == PS_ARR_COUNT || cp->layer < 0 || cp->layer >= mc->n_layers || !cp->out)
            return ps_fail(e, PS_EXIT_BADINPUT, "capture %lld: needs a site, a layer of the model's %lld and a buffer", (long long)k,
                           (long long)mc->n_layers);
        if (!ps_array_in_model(mc, ps_site_array(cp->site)))
            return ps_fail(e, PS_EXIT_BADINPUT, "capture %lld (%s): %s", (long long)k, ps_site_name(cp->site), ps_site_absent_why(mc, cp->site));
        // Positions and layers a row does not recompute are copied from base (hook_result only in caches that ask for it).
        if (row->base && !ps_cache_site(row->base, cp->site))
            return ps_fail(e, PS_EXIT_BADINPUT, "capture %lld (%s): the row's base run does not hold that hook", (long long)k,
                           ps_site_name(cp->site));
    }
    if (row->n_captures && row->narrow)
        return ps_fail(e, PS_EXIT_RUNTIME, "a row with captures cannot be narrowed");
    if (row->n_out > PS_MAX_OUT_POS)
        return ps_fail(e, PS_EXIT_BADINPUT, "a row asks for logits at %lld positions; at most PS_MAX_OUT_POS = %d", (long long)row->n_out,
                       PS_MAX_OUT_POS);
    return 0;
}

void ps_captures_from_base(const ps_model_config *cfg, const ps_row *row) {
    if (!row->base) return;
    const int64_t T = row->T;
    for (int64_t k = 0; k < row->n_captures; k++) {
        const ps_capture *cp = &row->captures[k];
        // Position-major arrays hold a position's units together; pattern's heads lie apart.
        const int head_major = ps_arrays[ps_site_array(cp->site)].head_major;
        const int64_t units = head_major ? ps_site_units(cfg, cp->site) : 1, unit = ps_site_width(cfg, cp->site, T) / units;
        const float *arr = ps_cache_site(row->base, cp->site);
        for (int64_t t = 0; t < T; t++)
            for (int64_t u = 0; u < units; u++)
                memcpy(cp->out + (t * units + u) * unit, arr + ps_site_at(cfg, cp->site, T, cp->layer, t, u),
                       (size_t)unit * sizeof(float));
    }
}

int ps_patch_reads_src(const ps_patch *pt) { return pt->op == PS_OP_REPLACE || pt->op == PS_OP_FREEZE; }

int ps_rows_check_aliasing(const ps_row *rows, int64_t n_rows, ps_error *e) {
    for (int64_t r = 0; r < n_rows; r++) {
        const ps_cache *out = rows[r].cache;
        if (!out) continue;
        for (int64_t q = 0; q < n_rows; q++) {
            const ps_row *o = &rows[q];
            int hit = (q != r && o->cache == out) || o->base == out;
            for (int64_t p = 0; p < o->n_patches && !hit; p++) hit = ps_patch_reads_src(&o->patches[p]) && o->patches[p].src == out;
            if (hit)
                return ps_fail(e, PS_EXIT_RUNTIME, "forward: row %lld's cache is also read or written by row %lld of the same batch",
                               (long long)r, (long long)q);
        }
    }
    return 0;
}
