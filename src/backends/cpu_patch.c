// Interventions on the CPU: a row's patches (replace, freeze, zero, mean, add, scale on a selection of one
// hook) and captures, applied where the forward reaches each hook. The layout comes from ps_cache.h's
// site table; which units a patch selects from ps_plan.h.
#include "cpu_internal.h"

#include <string.h>

// x (n floats of the hook's current value) under patch pt; from: the source's n floats (replace, freeze,
// mean: the values; add: what is added; unused otherwise).
static void op_apply(const ps_patch *pt, float *x, const float *from, int64_t n) {
    switch (pt->op) {
    case PS_OP_REPLACE: case PS_OP_FREEZE: case PS_OP_MEAN: memcpy(x, from, (size_t)n * sizeof(float)); break;
    case PS_OP_ZERO: memset(x, 0, (size_t)n * sizeof(float)); break;
    case PS_OP_ADD: for (int64_t i = 0; i < n; i++) x[i] += from[i]; break;
    case PS_OP_SCALE: for (int64_t i = 0; i < n; i++) x[i] *= pt->factor; break;
    default: break;
    }
}

static const float NOTHING[1];

// The source of unit u at position t (NULL when the patch leaves t alone).
static const float *op_source(const ps_model_config *cfg, const ps_patch *pt, int64_t T, int64_t t, int64_t u) {
    switch (pt->op) {
    case PS_OP_REPLACE: case PS_OP_FREEZE:
        return ps_cache_site(pt->src, pt->site) + ps_site_at(cfg, pt->site, T, pt->layer, t, u);
    case PS_OP_MEAN: case PS_OP_ADD: {
        const int64_t r = ps_view_row(&pt->ref, t);
        if (r < 0) return NULL;
        return pt->ref.data + r * ps_site_width(cfg, pt->site, T) + u * ps_site_unit(cfg, pt->site, T);
    }
    default: return NOTHING; // not read (zero, scale)
    }
}

void ps_cpu_hook(const ps_model_config *cfg, ps_site site, int64_t l, float *buf, int64_t ld, const int64_t *map,
                 const ps_cpu_slot *slots, int64_t n_active) {
    const int64_t units = ps_site_units(cfg, site);
    for (int64_t r = 0; r < n_active; r++) {
        const ps_cpu_slot *rs = &slots[r];
        const ps_row *row = rs->row;
        const int64_t s = row->start_pos, T = row->T, unit = ps_site_unit(cfg, site, T), width = units * unit;
        for (int64_t p = 0; p < row->n_patches; p++) {
            const ps_patch *pt = &row->patches[p];
            if (pt->site != site || pt->layer != l) continue;
            int64_t t0 = pt->pos < 0 ? s : pt->pos, t1 = pt->pos < 0 ? T : pt->pos + 1;
            if (t0 < s) t0 = s;
            for (int64_t t = t0; t < t1; t++) {
                const int64_t i = map ? map[rs->off + t - s] : rs->off + t - s;
                if (i < 0) continue;
                // A run of consecutive selected units is one contiguous slice of buf and of the source.
                int64_t u0, u1;
                for (int64_t u = 0; ps_patch_run(pt, units, u, &u0, &u1); u = u1) {
                    const float *from = op_source(cfg, pt, T, t, u0);
                    if (!from) break; // mean/add leaving position t alone
                    op_apply(pt, buf + i * ld + u0 * unit, from, (u1 - u0) * unit);
                }
            }
        }
        for (int64_t k = 0; k < row->n_captures; k++) {
            const ps_capture *cp = &row->captures[k];
            if (cp->site != site || cp->layer != l) continue;
            for (int64_t t = s; t < T; t++) {
                const int64_t i = map ? map[rs->off + t - s] : rs->off + t - s;
                if (i >= 0) memcpy(cp->out + t * width, buf + i * ld, (size_t)width * sizeof(float));
            }
        }
    }
}

void ps_cpu_pattern_hook(const ps_model_config *cfg, const ps_row *row, int64_t l, int64_t h, int64_t t, float *probs) {
    const int64_t T = row->T;
    for (int64_t p = 0; p < row->n_patches; p++) {
        const ps_patch *pt = &row->patches[p];
        if (pt->site != PS_SITE_PATTERN || pt->layer != l || !ps_patch_selects(pt, h) || (pt->pos >= 0 && pt->pos != t)) continue;
        op_apply(pt, probs, op_source(cfg, pt, T, t, h), t + 1);
    }
    for (int64_t k = 0; k < row->n_captures; k++) {
        const ps_capture *cp = &row->captures[k];
        if (cp->site != PS_SITE_PATTERN || cp->layer != l) continue;
        float *dst = cp->out + (t * cfg->n_heads + h) * T; // (T, H, T): query t, head h
        memcpy(dst, probs, (size_t)(t + 1) * sizeof(float));
        memset(dst + t + 1, 0, (size_t)(T - t - 1) * sizeof(float));
    }
}

void ps_cpu_captures_from_base(const ps_model_config *cfg, const ps_cpu_slot *slots, int64_t n_rows) {
    for (int64_t r = 0; r < n_rows; r++) ps_captures_from_base(cfg, slots[r].row);
}
