// Attribution patching (experiment kind "attribution", ps_producer.h): every cell of a patching sweep's layout
// estimated from one backward pass per prompt and direction instead of one patched forward per cell:
//   value = metric(base run) + sum over the cell of (source - base activation) . d metric / d activation,
// the gradient taken on the base run (TransformerLens's attribution-patching demo: denoising takes the
// corrupted run's gradient and patches clean activations in). The table has the sweep's axes and the metric's
// units, so its normalized dataset is the demo's normalized attribution and it compares with an activation
// patching table of the same site and layout cell by cell.
#include "engine_internal.h"
#include "ps_backward.h"
#include "ps_producer.h"

#include <stdlib.h>
#include <string.h>

// sum over the cell's elements of (src - base) * g at the patch's site, layer, position and unit.
static double cell_sum(const ps_model_config *mc, const ps_patch *pt, const ps_cache *base, const ps_cache *src,
                       const ps_cache *g) {
    const int64_t T = base->T, units = ps_site_units(mc, pt->site), unit = ps_site_unit(mc, pt->site, T);
    const int64_t sel = pt->head >= 0 ? pt->head : pt->neuron;
    const float *a = ps_cache_site(base, pt->site), *s = ps_cache_site(src, pt->site), *gr = ps_cache_site(g, pt->site);
    const int64_t t0 = pt->pos >= 0 ? pt->pos : 0, t1 = pt->pos >= 0 ? pt->pos + 1 : T;
    double acc = 0;
    for (int64_t t = t0; t < t1; t++)
        for (int64_t u = sel >= 0 ? sel : 0; u < (sel >= 0 ? sel + 1 : units); u++) {
            const size_t off = ps_site_at(mc, pt->site, T, pt->layer, t, u);
            for (int64_t k = 0; k < unit; k++) acc += ((double)s[off + k] - a[off + k]) * gr[off + k];
        }
    return acc;
}

// The base run's gradient at every hook: its logits at the metric's positions (from its final state; not for
// logit_diff), the metric's d / d logits there, then the backward pass (engine_internal.h).
int ps_run_gradient(ps_producer_ctx *cx, const ps_prompt *p, const int32_t *tokens, const ps_cache *base,
                    const float *clean_lp, ps_cache *g, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const int64_t V = mc->d_vocab;
    ps_metric_request rq;
    ps_metric_request_for(cx->metric, p, &rq);
    rq.n_cols = 0; // every column: the gradient needs the whole row for all but logit_diff
    float *logits = malloc((size_t)(rq.n_out * V) * sizeof(float)), *dl = malloc((size_t)(rq.n_out * V) * sizeof(float));
    int rc = -1;
    if (!logits || !dl) {
        ps_fail(e, PS_EXIT_RUNTIME, "attribution: out of memory for the logits");
        goto done;
    }
    // logit_diff's d / d logits is the same at any logits: no forward pass for them (it read the whole
    // unembedding matrix, a third of a forward pass).
    if (cx->metric != PS_METRIC_LOGIT_DIFF) {
        ps_row r = {.tokens = tokens, .T = p->T, .base = base, .out_pos = rq.out_pos, .n_out = rq.n_out, .logits = logits};
        if (ps_engine_rows(cx->m, cx->be, &r, 1, NULL, NULL, e) != 0) goto done;
    }
    ps_metric_grad(cx->metric, p, &rq, logits, V, clean_lp, dl);
    const ps_logit_grad lg = {rq.n_out, rq.out_pos, dl};
    if (ps_cache_init(g, mc, p->T, 0, e) != 0) goto done;
    // The backend's own backward pass where it has one (CUDA), else the CPU reference.
    rc = cx->be->backward ? cx->be->backward(cx->be, cx->m, base, &lg, g, e) : ps_cpu_backward(cx->m, base, &lg, g, e);
done:
    free(logits);
    free(dl);
    return rc;
}

static int attribution_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    const ps_model_config *mc = &cx->m->cfg;
    const ps_baseline *bl = &cx->rr->base;
    for (int64_t i = 0; i < ch->n; i++) {
        const int64_t pi = ch->prompts[i];
        const ps_prompt *p = &cx->ps->p[pi];
        for (int dir = PS_DIR_DENOISE; dir <= PS_DIR_NOISE; dir++) {
            int64_t cells = 0;
            for (int64_t s = 0; s < n; s++)
                if ((int)items[s]->ex->direction == dir) cells += ((ps_sweep *)items[s]->state)->n_cells;
            if (cells == 0) continue;
            // The backward pass costs about two forward passes of the prompt; charged to the direction's first table.
            for (int64_t s = 0; s < n; s++)
                if ((int)items[s]->ex->direction == dir) {
                    const ps_row full = {.tokens = p->clean, .T = p->T};
                    items[s]->t->flops += 2.0 * ps_row_flops(mc, &full);
                    break;
                }
            if (cx->o->dry_run) { cx->done += cells; continue; }
            if (ps_producer_stopped(cx, e)) return -1;
            const int noise = dir == PS_DIR_NOISE;
            const ps_cache *base = noise ? &ch->clean[i] : &ch->corrupted[i], *src = noise ? &ch->corrupted[i] : &ch->clean[i];
            const float base_metric = noise ? bl->clean[pi] : bl->corrupted[pi];
            const float *clean_lp = ch->clean_logprobs ? ch->clean_logprobs + i * mc->d_vocab : NULL;
            ps_cache g = {0};
            if (ps_run_gradient(cx, p, noise ? p->clean : p->corrupted, base, clean_lp, &g, e) != 0) {
                ps_cache_free(&g);
                return -1;
            }
            for (int64_t s = 0; s < n; s++) {
                const ps_sweep *sw = items[s]->state;
                if ((int)sw->ex->direction != dir) continue;
                for (int64_t cell = 0; cell < sw->n_cells; cell++) {
                    ps_patch pt;
                    if (!ps_cell_patch(sw, cell, p, &pt)) continue;
                    sw->t->values[pi * sw->n_cells + cell] = (float)((double)base_metric + cell_sum(mc, &pt, base, src, &g));
                }
            }
            ps_cache_free(&g);
            cx->done += cells;
            ps_producer_progress(cx, 0);
        }
    }
    return 0;
}

static int attribution_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    if (ps_sweep_product_init(mc, ps, p, e) != 0) return -1;
    return ps_table_attr_str(p->t, "estimate", "linear: metric(base) + (source - base) . gradient", e);
}

const ps_producer ps_attribution_producer = {
    .kind = "attribution", .per_prompt = 1, .init = attribution_init, .chunk = attribution_chunk, .free_state = ps_sweep_state_free,
};
