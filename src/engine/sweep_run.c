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

// A backend call's rows. Ungrouped, it holds one block's rows (a batch never mixes blocks: ps_prompt_block).
// Grouped (streamed weights), it holds several blocks' batches, each a group of its own in one forward_groups
// call: every group is exactly the batch that block would have alone, so its numbers are too, while a
// streamed layer is converted once per call instead of once per block.
typedef struct {
    ps_row *rows; ps_patch *patches; row_tag *tags;
    int64_t n, cap;
    int64_t *ends, n_groups;             // grouped: the closed groups' ends (cap), in rows
    float *logits; size_t logits_cap, logits_used;
    int mode;                            // RUN, PREDICT or VERIFY (the fused streamed pass, below)
    struct ps_sweep_pass *pass;          // PREDICT: records into it; VERIFY: compares with it
} batch;

// The fused streamed pass. With streamed weights every pass over the layers converts the layers not kept, so
// the baselines' call and the sweep rows' calls after it converted those layers twice. Instead the chunk's
// rows are planned before the baselines exist (PREDICT, from the tokens: see predicted_change), batched
// exactly as the sweep would batch them, and run as further groups of the baselines' own forward_groups call,
// which goes layer by layer across all groups, baselines first: a row's base and patch source at layer l are
// written before the row reads them. Once the baselines are in, the sweep plans its rows for real (VERIFY),
// batch for batch as it always does; a group it forms that equals a predicted group row for row (same
// cells, same plan) takes the logits the fused call computed for it, which are bitwise those of a call of its
// own (every group computes alone); any other group runs now, as without the fused pass.
enum { RUN = 0, PREDICT = 1, VERIFY = 2 };
struct ps_sweep_pass {
    batch rec;                           // the predicted groups (rec.ends, rec.n_groups), PS_FUSED_BATCHES batches' worth at most
    int full;                            // a group did not fit: later groups are not predicted
    int unpredictable;                   // a patch the prediction cannot plan: nothing is fused
    int64_t next;                        // VERIFY: the predicted group the next real group is compared with
    int64_t matched;                     // VERIFY: predicted rows whose logits were taken
    size_t token_bytes, work_bytes, work_budget; // PREDICT: the forward's workspace a token, the predicted rows' and the limit
    const int32_t *tokens, *other;       // PREDICT: the row's tokens and its patch source's
};

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

// The logits a row asks for.
static size_t row_logits(const ps_row *r, int64_t V) { return (size_t)r->n_out * (size_t)(r->n_cols ? r->n_cols : V); }

// PREDICT: appends the batch's closed groups to the pass while they fit (its rows and logits, PS_FUSED_BATCHES
// batches' worth, and the workspace budget); after the first that does not, nothing more.
static void record_groups(batch *b) {
    ps_sweep_pass *sp = b->pass;
    batch *rec = &sp->rec;
    for (int64_t g = 0; g < b->n_groups && !sp->full; g++) {
        const int64_t r0 = g ? b->ends[g - 1] : 0, r1 = b->ends[g];
        const size_t need = (r1 < b->n ? b->tags[r1].logit_off : b->logits_used) - b->tags[r0].logit_off;
        size_t tokens = 0;
        for (int64_t r = r0; r < r1; r++) tokens += (size_t)(b->rows[r].T - b->rows[r].start_pos);
        if (rec->n + (r1 - r0) > rec->cap || rec->logits_used + need > rec->logits_cap ||
            sp->work_bytes + tokens * sp->token_bytes > sp->work_budget) {
            sp->full = 1;
            break;
        }
        sp->work_bytes += tokens * sp->token_bytes;
        for (int64_t r = r0; r < r1; r++) {
            const int64_t k = rec->n++;
            rec->tags[k] = b->tags[r];
            rec->tags[k].logit_off = rec->logits_used + (b->tags[r].logit_off - b->tags[r0].logit_off);
            rec->patches[k] = b->patches[r];
            rec->rows[k] = b->rows[r];
            rec->rows[k].patches = &rec->patches[k];
            rec->rows[k].out_pos = rec->tags[k].rq.out_pos;
            rec->rows[k].cols = rec->tags[k].rq.n_cols ? rec->tags[k].rq.cols : NULL;
            rec->rows[k].logits = rec->logits + rec->tags[k].logit_off;
        }
        rec->logits_used += need;
        rec->ends[rec->n_groups++] = rec->n;
    }
}

// 1 when rows a and b are the same cell with the same plan.
static int same_row(const ps_row *a, const row_tag *ta, const ps_row *b, const row_tag *tb) {
    return ta->t == tb->t && ta->prompt == tb->prompt && ta->cell == tb->cell && a->tokens == b->tokens && a->base == b->base &&
           a->start_layer == b->start_layer && a->start_pos == b->start_pos && a->narrow == b->narrow && a->entry == b->entry &&
           a->dirty_end == b->dirty_end && a->n_out == b->n_out && a->n_cols == b->n_cols && a->n_patches == b->n_patches;
}

// VERIFY: the closed groups of the batch's first n rows that equal the next predicted groups take the logits
// the fused call computed; the others run now, together in one call.
static int run_unpredicted(ps_producer_ctx *c, batch *b, int64_t n, ps_error *e) {
    ps_sweep_pass *sp = b->pass;
    const batch *rec = &sp->rec;
    const int64_t V = c->m->cfg.d_vocab;
    ps_row *rest = malloc((size_t)n * sizeof *rest);
    int64_t *rest_ends = malloc((size_t)(b->n_groups ? b->n_groups : 1) * sizeof *rest_ends), n_rest = 0, g_rest = 0;
    if (!rest || !rest_ends) {
        free(rest);
        free(rest_ends);
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a batch");
    }
    for (int64_t g = 0; g < b->n_groups; g++) {
        const int64_t r0 = g ? b->ends[g - 1] : 0, r1 = b->ends[g];
        int same = sp->next < rec->n_groups;
        if (same) {
            const int64_t p0 = sp->next ? rec->ends[sp->next - 1] : 0, p1 = rec->ends[sp->next];
            same = p1 - p0 == r1 - r0;
            for (int64_t k = 0; same && k < r1 - r0; k++) same = same_row(&b->rows[r0 + k], &b->tags[r0 + k], &rec->rows[p0 + k], &rec->tags[p0 + k]);
            for (int64_t k = 0; same && k < r1 - r0; k++)
                memcpy(b->rows[r0 + k].logits, rec->rows[p0 + k].logits, row_logits(&b->rows[r0 + k], V) * sizeof(float));
            sp->next++;
        }
        if (same) {
            c->rr->rows_fused += r1 - r0;
            sp->matched += r1 - r0;
            continue;
        }
        memcpy(rest + n_rest, b->rows + r0, (size_t)(r1 - r0) * sizeof *rest);
        n_rest += r1 - r0;
        rest_ends[g_rest++] = n_rest;
    }
    const int rc = n_rest ? c->be->forward_groups(c->be, c->m, rest, n_rest, rest_ends, g_rest, e) : 0;
    free(rest);
    free(rest_ends);
    return rc;
}

// PREDICT: where patch pt first changes the base run, from the tokens alone (ctx: the pass, whose `other` is
// the patch source's tokens). Before layer 0's attention (the embedding, q, k, v; with a parallel residual the
// MLP too) a position's activations depend on its own token only; after it, on the tokens up to it, except
// the first query's pattern, which is 1 whatever the tokens. So a replace patch changes position t when those
// tokens differ. Where a run's activations differ and its tokens do not, or agree where they differ (say a
// ReLU that is 0 in both runs), the real plan disagrees and that group runs again: slower, never different.
static int64_t predicted_change(const ps_model_config *mc, const ps_patch *pt, const ps_cache *base, void *ctx) {
    ps_sweep_pass *sp = ctx;
    if (pt->op != PS_OP_REPLACE) { sp->unpredictable = 1; return -1; }
    const ps_site s = pt->site;
    const int local = pt->layer == 0 && (s == PS_SITE_RESID_PRE || s == PS_SITE_Q || s == PS_SITE_K || s == PS_SITE_V ||
                                         (mc->parallel_residual && (s == PS_SITE_MLP_POST || s == PS_SITE_MLP_OUT)));
    const int64_t T = base->T, t0 = pt->pos < 0 ? 0 : pt->pos, t1 = pt->pos < 0 ? T : pt->pos + 1;
    int prefix_differs = 0;
    for (int64_t t = 0; t < t1; t++) {
        const int differs = sp->tokens[t] != sp->other[t];
        prefix_differs |= differs;
        if (t >= t0 && (local ? differs : prefix_differs) && !(s == PS_SITE_PATTERN && t == 0)) return t;
    }
    return -1;
}

// Runs the batch's first n rows: all of them (ungrouped), or the closed groups (grouped). Rows after them,
// the open group of the prompt being planned, move to the front with their logits.
static int batch_run(ps_producer_ctx *c, batch *b, int64_t n, int grouped, const float *clean_lp, ps_error *e) {
    if (n > 0 && b->mode == PREDICT) record_groups(b);
    else if (n > 0) {
        for (int64_t r = 0; r < n; r++) b->tags[r].t->flops += ps_row_flops(&c->m->cfg, &b->rows[r]);
        c->rr->rows_planned += n;
        if (!c->o->dry_run) {
            if (ps_producer_stopped(c, e)) return -1;
            const int rc = b->mode == VERIFY ? run_unpredicted(c, b, n, e)
                           : grouped         ? c->be->forward_groups(c->be, c->m, b->rows, n, b->ends, b->n_groups, e)
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
    // Block-major (a block: one prompt, or o->batch_prompts consecutive prompts, ps_prompt_block), and a block's
    // rows form the same batches whatever the chunking, sharding or resuming (they never split a block), so its
    // numbers are bitwise reproducible: batches of cap rows (fewer where the logits would overflow) from the
    // block's first row. Streamed weights put several blocks' batches in one call (batch).
    const int grouped = !o->naive && c->m->stream && c->be->forward_groups;
    const int predict = b->mode == PREDICT; // no values, no counts: only the groups, recorded
    const int64_t per = o->naive ? 1 : o->batch_prompts;
    int64_t first = 0;          // the block's rows not yet in a batch start here
    for (int64_t i = 0; i < nc; i++) {
        const int64_t pi = chunk[i];
        if (i == 0 || ps_prompt_block(chunk[i - 1], per) != ps_prompt_block(pi, per)) first = b->n;
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
                if (!ps_cell_patch(sw, cell, p, &pt)) { c->done += !predict; continue; }
                pt.src = src;
                ps_row r0 = {.tokens = noise ? p->clean : p->corrupted, .T = p->T, .base = o->naive ? NULL : base,
                             .patches = &pt, .n_patches = 1, .out_pos = rq.out_pos, .n_out = rq.n_out};
                if (predict) {
                    b->pass->tokens = r0.tokens;
                    b->pass->other = noise ? p->corrupted : p->clean;
                }
                if (predict ? !ps_plan_row_by(mc, &r0, narrow, predicted_change, b->pass) : !ps_plan_row(mc, &r0, narrow)) {
                    // The patch writes the value the base run already has, or changes nothing the metric
                    // reads: its result is the base metric.
                    if (predict) continue;
                    sw->t->values[pi * sw->n_cells + cell] = base_metric;
                    sw->t->patches_skipped++;
                    c->done++;
                    continue;
                }
                if (ps_row_check(mc, &r0, c->be->caps, c->be->name, e) != 0) return -1;
                if (predict && (b->pass->unpredictable || b->pass->full)) return 0;
                sw->t->patches_run += !predict;
                while (b->n == b->cap || b->logits_used + need > b->logits_cap) {
                    // Full. Other blocks' groups before this block's open one run first, and its rows move
                    // to the front, to go on as if alone; a block's full batch runs as it would alone.
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
        if (i + 1 < nc && ps_prompt_block(chunk[i + 1], per) == ps_prompt_block(pi, per)) continue; // the block goes on
        if (grouped) batch_close_group(b);
        else if (batch_flush(c, b, 0, ch->clean_logprobs, e) != 0) return -1;
    }
    return batch_flush(c, b, grouped, ch->clean_logprobs, e);
}


// One batch's rows and logits for this run's metric.
static int batch_for(const ps_producer_ctx *cx, batch *b, ps_error *e) {
    const int64_t V = cx->m->cfg.d_vocab;
    const int64_t brows = cx->o->batch_rows > 0 ? cx->o->batch_rows : 512;
    const size_t per_row_logits = (cx->metric == PS_METRIC_LOGIT_DIFF) ? 2 : (size_t)V * (cx->metric == PS_METRIC_LOGPROB ? PS_MAX_OUT_POS : 1);
    size_t logits_cap = per_row_logits * (size_t)brows;
    if (logits_cap > ((size_t)64 << 20)) logits_cap = per_row_logits > ((size_t)64 << 20) ? per_row_logits : ((size_t)64 << 20);
    return batch_init(b, brows, logits_cap, e);
}

// The producer: the batch lives for one chunk (its buffers are small next to the chunk's caches).
static int sweep_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    batch b;
    int rc = batch_for(cx, &b, e);
    if (rc == 0) rc = run_sweeps(cx, &b, items, n, ch, e);
    batch_free(&b);
    return rc;
}

int ps_sweep_fused_predict(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_sweep_pass **out,
                           ps_error *e) {
    *out = NULL;
    ps_sweep_pass *sp = calloc(1, sizeof *sp);
    if (!sp) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a batch");
    // Up to PS_FUSED_BATCHES batches' rows, in workspaces (the CPU forward's buffers, cpu_forward.c) of at most
    // half the activation-cache budget (256 MiB at least): the fused call holds every group's at once.
    const ps_model_config *mc = &cx->m->cfg;
    const int64_t QD = mc->n_heads * mc->d_head, KD = mc->n_kv_heads * mc->d_head;
    sp->token_bytes = sizeof(float) * (size_t)(4 * mc->d_model + 4 * QD + 4 * KD + 3 * mc->d_mlp + 1) + 4 * sizeof(int64_t);
    sp->work_budget = (cx->o->cache_budget ? cx->o->cache_budget : ((size_t)2 << 30)) / 2;
    if (sp->work_budget < ((size_t)256 << 20)) sp->work_budget = (size_t)256 << 20;
    batch b;
    int rc = batch_for(cx, &b, e);
    // Logits: PS_FUSED_BATCHES batches' worth, but no more than 64 Mi floats unless one batch takes more.
    size_t lcap = PS_FUSED_BATCHES * b.logits_cap;
    if (lcap > ((size_t)64 << 20)) lcap = b.logits_cap > ((size_t)64 << 20) ? b.logits_cap : ((size_t)64 << 20);
    if (rc == 0) rc = batch_init(&sp->rec, PS_FUSED_BATCHES * b.cap, lcap, e);
    if (rc == 0) {
        b.mode = PREDICT;
        b.pass = sp;
        rc = run_sweeps(cx, &b, items, n, ch, e);
    }
    batch_free(&b);
    if (rc != 0 || sp->unpredictable || sp->rec.n == 0) {
        ps_sweep_fused_free(sp);
        return rc;
    }
    *out = sp;
    return 0;
}

void ps_sweep_fused_rows(ps_sweep_pass *sp, ps_row **rows, int64_t *n_rows, const int64_t **ends, int64_t *n_groups) {
    *rows = sp->rec.rows;
    *n_rows = sp->rec.n;
    *ends = sp->rec.ends;
    *n_groups = sp->rec.n_groups;
}

int ps_sweep_fused_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_sweep_pass *sp,
                         ps_error *e) {
    if (!sp) return sweep_chunk(cx, items, n, ch, e);
    batch b;
    int rc = batch_for(cx, &b, e);
    if (rc == 0) {
        b.mode = VERIFY;
        b.pass = sp;
        rc = run_sweeps(cx, &b, items, n, ch, e);
    }
    batch_free(&b);
    cx->rr->rows_fused_wasted += sp->rec.n - sp->matched;
    return rc;
}

void ps_sweep_fused_free(ps_sweep_pass *sp) {
    if (!sp) return;
    batch_free(&sp->rec);
    free(sp);
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
