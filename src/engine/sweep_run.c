// The patching sweeps' producer (ps_producer.h): every (sweep, prompt, cell) of a chunk becomes a row that
// starts from the base run's cached state, planned (skipped, narrowed) by ps_plan_row and batched through the
// backend; sweep.c lays out each sweep's cells.
#include "engine_internal.h"
#include "ps_producer.h"

#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// Batches

typedef struct {
    ps_table *t;                         // the sweep's table
    int64_t prompt, local, cell;         // local: index of the prompt within the chunk
    ps_metric_request rq;
    size_t logit_off;
} row_tag;

// A backend call's rows. Ungrouped, it holds one prompt's rows (a batch never mixes prompts). Grouped
// (streamed weights), it holds several prompts' batches, each a group of its own in one forward_groups call:
// every group is exactly the batch that prompt would have alone, so its numbers are too, while a streamed
// layer is converted once per call instead of once per prompt.
typedef struct {
    ps_row *rows; ps_patch *patches; row_tag *tags;
    int64_t n, cap;
    int64_t *ends, n_groups;             // grouped: the closed groups' ends (cap), in rows
    float *logits; size_t logits_cap, logits_used;
} batch;

static int batch_init(batch *b, int64_t cap, size_t logits_cap, ps_error *e) {
    memset(b, 0, sizeof *b);
    b->cap = cap;
    b->rows = calloc((size_t)cap, sizeof *b->rows);
    b->patches = calloc((size_t)cap, sizeof *b->patches);
    b->tags = calloc((size_t)cap, sizeof *b->tags);
    b->ends = calloc((size_t)cap, sizeof *b->ends);
    b->logits_cap = logits_cap;
    b->logits = malloc(logits_cap * sizeof(float));
    if (!b->rows || !b->patches || !b->tags || !b->ends || !b->logits) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a batch");
    return 0;
}

static void batch_free(batch *b) {
    free(b->rows); free(b->patches); free(b->tags); free(b->ends); free(b->logits);
}

// Closes the group of the rows added since the last group's end (grouped batches only).
static void batch_close_group(batch *b) {
    const int64_t start = b->n_groups ? b->ends[b->n_groups - 1] : 0;
    if (b->n > start) b->ends[b->n_groups++] = b->n;
}

// Runs the batch's first n rows: all of them (ungrouped), or the closed groups (grouped). Rows after them,
// the open group of the prompt being planned, move to the front with their logits.
static int batch_run(ps_producer_ctx *c, batch *b, int64_t n, int grouped, const float *clean_lp, ps_error *e) {
    if (n > 0) {
        for (int64_t r = 0; r < n; r++) b->tags[r].t->flops += ps_row_flops(&c->m->cfg, &b->rows[r]);
        c->rr->rows_planned += n;
        if (!c->o->dry_run) {
            if (ps_producer_stopped(c, e)) return -1;
            const int rc = grouped ? c->be->forward_groups(c->be, c->m, b->rows, n, b->ends, b->n_groups, e)
                                   : c->be->forward(c->be, c->m, b->rows, n, e);
            if (rc != 0) return -1;
            const int64_t V = c->m->cfg.d_vocab;
            for (int64_t r = 0; r < n; r++) {
                const row_tag *tg = &b->tags[r];
                const ps_prompt *p = &c->ps->p[tg->prompt];
                const float *lp = clean_lp ? clean_lp + tg->local * V : NULL;
                double v = ps_metric_value(c->metric, p, &tg->rq, b->logits + tg->logit_off, V, lp);
                tg->t->values[tg->prompt * tg->t->n_cells + tg->cell] = (float)v;
            }
        }
        c->done += n;
        ps_producer_progress(c, 0);
    }
    const size_t off0 = n < b->n ? b->tags[n].logit_off : b->logits_used;
    const int64_t left = b->n - n;
    if (left > 0 && n > 0) {
        memmove(b->rows, b->rows + n, (size_t)left * sizeof *b->rows);
        memmove(b->patches, b->patches + n, (size_t)left * sizeof *b->patches);
        memmove(b->tags, b->tags + n, (size_t)left * sizeof *b->tags);
        memmove(b->logits, b->logits + off0, (b->logits_used - off0) * sizeof(float));
        for (int64_t k = 0; k < left; k++) {
            b->tags[k].logit_off -= off0;
            b->rows[k].patches = &b->patches[k];
            b->rows[k].out_pos = b->tags[k].rq.out_pos;
            b->rows[k].cols = b->tags[k].rq.n_cols ? b->tags[k].rq.cols : NULL;
            b->rows[k].logits = b->logits + b->tags[k].logit_off;
        }
    }
    b->n = left;
    b->logits_used -= off0;
    b->n_groups = 0;
    return 0;
}

// Runs everything the batch holds (its open group closed first).
static int batch_flush(ps_producer_ctx *c, batch *b, int grouped, const float *clean_lp, ps_error *e) {
    if (grouped) batch_close_group(b);
    return batch_run(c, b, b->n, grouped, clean_lp, e);
}

// ---------------------------------------------------------------------------------------------
// Rows

// Turns every (sweep, prompt, cell) of a chunk into a row that starts from the base run's cached state.
static int run_sweeps(ps_producer_ctx *c, batch *b, ps_product *const *items, int64_t n_items, const ps_chunk *ch, ps_error *e) {
    const int64_t *chunk = ch->prompts, nc = ch->n;
    const ps_cache *clean = ch->clean, *corr = ch->corrupted;
    const ps_model_config *mc = &c->m->cfg;
    const int64_t V = mc->d_vocab;
    const ps_engine_opts *o = c->o;
    const ps_baseline *bl = &c->rr->base;
    // Rows say which positions their patch can change when the backend can use it (never in the oracle).
    const int narrow = !o->naive && (c->be->caps & PS_CAP_NARROW);
    // Prompt-major, and a prompt's rows form the same batches whatever the chunking, sharding or resuming,
    // so its numbers are bitwise reproducible: batches of cap rows (fewer where the logits would overflow)
    // from the prompt's first row. Streamed weights put several prompts' batches in one call (batch).
    const int grouped = !o->naive && c->m->stream && c->be->forward_groups;
    for (int64_t i = 0; i < nc; i++) {
        int64_t first = b->n;   // the prompt's rows not yet in a batch start here
        const int64_t pi = chunk[i];
        const ps_prompt *p = &c->ps->p[pi];
        ps_metric_request rq;
        ps_metric_request_for(c->metric, p, &rq);
        const size_t need = (size_t)rq.n_out * (size_t)(rq.n_cols ? rq.n_cols : V);
        for (int64_t s = 0; s < n_items; s++) {
            ps_sweep *sw = (ps_sweep *)items[s]->state;
            const int noise = sw->ex->direction == PS_DIR_NOISE;
            const ps_cache *base = noise ? &clean[i] : &corr[i], *src = noise ? &corr[i] : &clean[i];
            const float base_metric = noise ? bl->clean[pi] : bl->corrupted[pi];
            for (int64_t cell = 0; cell < sw->n_cells; cell++) {
                ps_patch pt;
                if (!ps_cell_patch(sw, cell, p, &pt)) { c->done++; continue; }
                pt.src = src;
                ps_row r0 = {.tokens = noise ? p->clean : p->corrupted, .T = p->T, .base = o->naive ? NULL : base,
                             .patches = &pt, .n_patches = 1, .out_pos = rq.out_pos, .n_out = rq.n_out};
                if (!ps_plan_row(mc, &r0, narrow)) {
                    // The patch writes the value the base run already has, or changes nothing the metric
                    // reads: its result is the base metric.
                    sw->t->values[pi * sw->n_cells + cell] = base_metric;
                    sw->t->patches_skipped++;
                    c->done++;
                    continue;
                }
                if (ps_row_check(mc, &r0, c->be->caps, c->be->name, e) != 0) return -1;
                sw->t->patches_run++;
                while (b->n == b->cap || b->logits_used + need > b->logits_cap) {
                    // Full. Other prompts' groups before this prompt's open one run first, and its rows move
                    // to the front, to go on as if alone; a prompt's full batch runs as it would alone.
                    const int rc = grouped && first > 0 ? batch_run(c, b, first, 1, ch->clean_logprobs, e)
                                                        : batch_flush(c, b, grouped, ch->clean_logprobs, e);
                    if (rc != 0) return -1;
                    first = 0;
                }
                int64_t k = b->n++;
                row_tag *tg = &b->tags[k];
                tg->t = sw->t; tg->prompt = pi; tg->local = i; tg->cell = cell;
                tg->rq = rq;
                tg->logit_off = b->logits_used;
                b->logits_used += need;
                b->patches[k] = pt;
                ps_row *r = &b->rows[k];
                *r = r0;
                r->patches = &b->patches[k];
                r->out_pos = tg->rq.out_pos;
                r->cols = tg->rq.n_cols ? tg->rq.cols : NULL;
                r->n_cols = tg->rq.n_cols;
                r->logits = b->logits + tg->logit_off;
            }
        }
        if (grouped) batch_close_group(b);
        else if (batch_flush(c, b, 0, ch->clean_logprobs, e) != 0) return -1;
    }
    return batch_flush(c, b, grouped, ch->clean_logprobs, e);
}


// The producer: the batch lives for one chunk (its buffers are small next to the chunk's caches).
static int sweep_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    const int64_t V = cx->m->cfg.d_vocab;
    const int64_t brows = cx->o->batch_rows > 0 ? cx->o->batch_rows : 512;
    const size_t per_row_logits = (cx->metric == PS_METRIC_LOGIT_DIFF) ? 2 : (size_t)V * (cx->metric == PS_METRIC_LOGPROB ? PS_MAX_OUT_POS : 1);
    size_t logits_cap = per_row_logits * (size_t)brows;
    if (logits_cap > ((size_t)64 << 20)) logits_cap = per_row_logits > ((size_t)64 << 20) ? per_row_logits : ((size_t)64 << 20);
    batch b;
    int rc = batch_init(&b, brows, logits_cap, e);
    if (rc == 0) rc = run_sweeps(cx, &b, items, n, ch, e);
    batch_free(&b);
    return rc;
}

int ps_sweep_product_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    ps_sweep *sw = calloc(1, sizeof *sw);
    if (!sw) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", p->ex->name);
    p->state = sw;
    if (ps_sweep_init(sw, p->ex, p->idx, mc, ps, e) != 0) return -1;
    sw->t = p->t;
    return ps_sweep_table_init(p->t, sw, ps, e);
}

void ps_sweep_state_free(void *state) {
    ps_sweep *sw = state;
    if (!sw) return;
    for (int a = 0; a < 3; a++) free(sw->axis_value[a]);
    free(sw);
}

const ps_producer ps_patch_sweep_producer = {
    .kind = "patch_sweep", .per_prompt = 1, .init = ps_sweep_product_init, .chunk = sweep_chunk, .free_state = ps_sweep_state_free,
};
