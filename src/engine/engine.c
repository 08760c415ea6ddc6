// The engine: what to run, what to skip, what to patch. Runs the clean and corrupted baselines with caches,
// turns every patch of every sweep into a row that starts from the base run's cached state, and batches the
// rows through the backend (prompts.c tokenizes the dataset, sweep.c lays out each sweep's cells).
#include "engine_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------------
// Batches

typedef struct {
    int64_t sweep, prompt, local, cell;  // local: index of the prompt within the chunk
    ps_metric_request rq;
    size_t logit_off;
} row_tag;

typedef struct {
    ps_row *rows; ps_patch *patches; row_tag *tags;
    int64_t n, cap;
    float *logits; size_t logits_cap, logits_used;
} batch;

static int batch_init(batch *b, int64_t cap, size_t logits_cap, ps_error *e) {
    memset(b, 0, sizeof *b);
    b->cap = cap;
    b->rows = calloc((size_t)cap, sizeof *b->rows);
    b->patches = calloc((size_t)cap, sizeof *b->patches);
    b->tags = calloc((size_t)cap, sizeof *b->tags);
    b->logits_cap = logits_cap;
    b->logits = malloc(logits_cap * sizeof(float));
    if (!b->rows || !b->patches || !b->tags || !b->logits) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a batch");
    return 0;
}

static void batch_free(batch *b) {
    free(b->rows); free(b->patches); free(b->tags); free(b->logits);
}

typedef struct {
    const ps_model *m;
    ps_backend *be;
    const ps_prompt_set *ps;
    ps_metric_kind metric;
    ps_run_results *out;
    const float *clean_lp;  // (chunk prompts, V) clean log-probs at score_pos, KL only
    const ps_engine_opts *o;
    int64_t done, total;
    double t_start, t_last;
} run_ctx;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress(run_ctx *c, int final) {
    if (!c->o->progress) return;
    double t = now_s();
    if (!final && t - c->t_last < 0.5) return;
    c->t_last = t;
    double el = t - c->t_start, rate = el > 0 ? (double)c->done / el : 0;
    double eta = rate > 0 ? (double)(c->total - c->done) / rate : 0;
    fprintf(stderr, "\r  patches %lld/%lld  %.1f/s  elapsed %.0fs  eta %.0fs   %s", (long long)c->done, (long long)c->total, rate,
            el, eta, final ? "\n" : "");
    fflush(stderr);
}

static int stopped(const run_ctx *c, ps_error *e) {
    if (c->o->stop && *c->o->stop) return ps_fail(e, PS_EXIT_RUNTIME, "interrupted");
    return 0;
}

static int batch_flush(run_ctx *c, batch *b, ps_error *e) {
    if (b->n == 0) return 0;
    for (int64_t r = 0; r < b->n; r++) c->out->sweeps[b->tags[r].sweep].t->flops += ps_row_flops(&c->m->cfg, &b->rows[r]);
    c->out->rows_planned += b->n;
    if (!c->o->dry_run) {
        if (stopped(c, e)) return -1;
        if (c->be->forward(c->be, c->m, b->rows, b->n, e) != 0) return -1;
        const int64_t V = c->m->cfg.d_vocab;
        for (int64_t r = 0; r < b->n; r++) {
            const row_tag *tg = &b->tags[r];
            const ps_prompt *p = &c->ps->p[tg->prompt];
            const float *lp = c->clean_lp ? c->clean_lp + tg->local * V : NULL;
            double v = ps_metric_value(c->metric, p, &tg->rq, b->logits + tg->logit_off, V, lp);
            ps_sweep *sw = &c->out->sweeps[tg->sweep];
            sw->t->values[tg->prompt * sw->n_cells + tg->cell] = (float)v;
        }
    }
    c->done += b->n;
    progress(c, 0);
    b->n = 0;
    b->logits_used = 0;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// The run

// Runs the clean and corrupted baselines of a chunk with every activation cached.
static int run_baselines(run_ctx *c, const int64_t *chunk, int64_t nc, ps_cache *clean, ps_cache *corr, float *clean_lp,
                         ps_error *e) {
    const ps_model_config *mc = &c->m->cfg;
    const int64_t V = mc->d_vocab;
    const ps_prompt_set *ps = c->ps;
    ps_baseline *bl = &c->out->base;
    const int64_t max_out = PS_MAX_OUT_POS;
    float *bl_logits = malloc((size_t)(2 * nc * max_out * V) * sizeof(float));
    ps_row *brow = calloc((size_t)(2 * nc), sizeof *brow);
    ps_metric_request *brq = calloc((size_t)nc, sizeof *brq);
    int rc = 0;
    if (!bl_logits || !brow || !brq) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld prompts' baselines", (long long)nc);
    for (int64_t i = 0; rc == 0 && i < nc; i++) {
        const ps_prompt *p = &ps->p[chunk[i]];
        if (ps_cache_init(&clean[i], mc, p->T, 0, e) || ps_cache_init(&corr[i], mc, p->T, 0, e)) { rc = -1; break; }
        ps_metric_request_for(c->metric, p, &brq[i]);
        brq[i].n_cols = 0;
        for (int k = 0; k < 2; k++) {
            ps_row *r = &brow[2 * i + k];
            r->tokens = k == 0 ? p->clean : p->corrupted;
            r->T = p->T;
            r->cache = k == 0 ? &clean[i] : &corr[i];
            r->out_pos = brq[i].out_pos;
            r->n_out = brq[i].n_out;
            r->logits = bl_logits + (2 * i + k) * max_out * V;
        }
    }
    for (int64_t i = 0; rc == 0 && i < 2 * nc; i++) c->out->baseline_flops += ps_row_flops(mc, &brow[i]);
    // One prompt's clean and corrupted runs per call, so their numbers do not depend on the chunk.
    for (int64_t i = 0; rc == 0 && i < nc; i++) rc = c->be->forward(c->be, c->m, brow + 2 * i, 2, e);
    for (int64_t i = 0; rc == 0 && i < nc; i++) {
        const int64_t pi = chunk[i];
        const ps_prompt *p = &ps->p[pi];
        int64_t si = 0;
        for (int64_t k = 0; k < brq[i].n_out; k++)
            if (brq[i].out_pos[k] == p->score_pos) si = k;
        const float *lc = brow[2 * i].logits, *lx = brow[2 * i + 1].logits;
        if (clean_lp) {
            const float *row = lc + si * V;
            double mx = row[0], sum = 0;
            for (int64_t j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
            for (int64_t j = 0; j < V; j++) sum += exp(row[j] - mx);
            double lse = mx + log(sum);
            for (int64_t j = 0; j < V; j++) clean_lp[i * V + j] = (float)(row[j] - lse);
        }
        const float *lpi = clean_lp ? clean_lp + i * V : NULL;
        bl->clean[pi] = (float)ps_metric_value(c->metric, p, &brq[i], lc, V, lpi);
        bl->corrupted[pi] = (float)ps_metric_value(c->metric, p, &brq[i], lx, V, lpi);
        bl->clean_answer_logit[pi] = lc[si * V + p->answer_id];
        bl->clean_wrong_logit[pi] = lc[si * V + p->wrong_id];
        bl->corrupted_answer_logit[pi] = lx[si * V + p->answer_id];
        bl->corrupted_wrong_logit[pi] = lx[si * V + p->wrong_id];
    }
    free(bl_logits);
    free(brow);
    free(brq);
    return rc;
}

// Turns every (sweep, prompt, cell) of a chunk into a row that starts from the base run's cached state.
static int run_sweeps(run_ctx *c, batch *b, const int64_t *chunk, int64_t nc, const ps_cache *clean, const ps_cache *corr,
                      ps_error *e) {
    const ps_model_config *mc = &c->m->cfg;
    const int64_t V = mc->d_vocab;
    const ps_engine_opts *o = c->o;
    ps_run_results *out = c->out;
    const ps_baseline *bl = &out->base;
    // Rows say which positions their patch can change when the backend can use it (never in the oracle).
    const int narrow = !o->naive && (c->be->caps & PS_CAP_NARROW);
    // Prompt-major, and a batch never mixes prompts: a prompt's rows form the same batches whatever the
    // chunking, sharding or resuming, so its numbers are bitwise reproducible.
    for (int64_t i = 0; i < nc; i++) {
        const int64_t pi = chunk[i];
        const ps_prompt *p = &c->ps->p[pi];
        ps_metric_request rq;
        ps_metric_request_for(c->metric, p, &rq);
        const size_t need = (size_t)rq.n_out * (size_t)(rq.n_cols ? rq.n_cols : V);
        for (int64_t s = 0; s < out->n_sweeps; s++) {
            ps_sweep *sw = &out->sweeps[s];
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
                if (b->n == b->cap || b->logits_used + need > b->logits_cap)
                    if (batch_flush(c, b, e) != 0) return -1;
                int64_t k = b->n++;
                row_tag *tg = &b->tags[k];
                tg->sweep = s; tg->prompt = pi; tg->local = i; tg->cell = cell;
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
        if (batch_flush(c, b, e) != 0) return -1;
    }
    return batch_flush(c, b, e);
}

int ps_engine_run(const ps_model *m, ps_backend *be, const ps_prompt_set *ps, const ps_experiment *exps, int64_t n_exps,
                  ps_metric_kind metric, const ps_engine_opts *o, ps_run_results *out, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t V = mc->d_vocab;
    if (ps_run_results_init(out, mc, ps, exps, n_exps, e) != 0) return -1;
    const double t0 = now_s();
    int64_t n_todo = o->todo ? o->n_todo : ps->n;
    int64_t *todo = malloc((size_t)(n_todo ? n_todo : 1) * sizeof(int64_t));
    if (!todo) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the prompt list");
    for (int64_t i = 0; i < n_todo; i++) todo[i] = o->todo ? o->todo[i] : i;

    run_ctx c = {.m = m, .be = be, .ps = ps, .metric = metric, .out = out, .o = o};
    int64_t per_prompt_cells = 0;
    for (int64_t s = 0; s < n_exps; s++) per_prompt_cells += out->sweeps[s].n_cells;
    c.total = per_prompt_cells * n_todo;
    c.t_start = c.t_last = now_s();

    const int64_t brows = o->batch_rows > 0 ? o->batch_rows : 512;
    const size_t budget = o->cache_budget ? o->cache_budget : ((size_t)2 << 30);
    const size_t per_row_logits = (metric == PS_METRIC_LOGIT_DIFF) ? 2 : (size_t)V * (metric == PS_METRIC_LOGPROB ? PS_MAX_OUT_POS : 1);
    size_t logits_cap = per_row_logits * (size_t)brows;
    if (logits_cap > ((size_t)64 << 20)) logits_cap = per_row_logits > ((size_t)64 << 20) ? per_row_logits : ((size_t)64 << 20);
    batch b;
    int rc = batch_init(&b, brows, logits_cap, e);

    for (int64_t c0 = 0; c0 < n_todo && rc == 0;) {
        // A chunk of prompts whose clean and corrupted caches fit the budget together.
        int64_t c1 = c0;
        size_t bytes = 0;
        while (c1 < n_todo && (o->chunk_prompts <= 0 || c1 - c0 < o->chunk_prompts)) {
            size_t nb = 2 * ps_cache_floats(mc, ps->p[todo[c1]].T, 0) * sizeof(float);
            if (c1 > c0 && bytes + nb > budget) break;
            bytes += nb;
            c1++;
        }
        if (bytes > out->peak_cache_bytes) out->peak_cache_bytes = bytes;
        // Prompts of this chunk a previous (interrupted) run already committed are not run again.
        int64_t *chunk = malloc((size_t)(c1 - c0) * sizeof(int64_t)), nc = 0;
        if (!chunk) { rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a chunk of prompts"); break; }
        for (int64_t k = c0; k < c1; k++)
            if (!o->skip || !o->skip[todo[k]]) chunk[nc++] = todo[k];
            else c.done += per_prompt_cells;
        ps_cache *clean = calloc((size_t)(nc ? nc : 1), sizeof *clean), *corr = calloc((size_t)(nc ? nc : 1), sizeof *corr);
        float *clean_lp = metric == PS_METRIC_KL ? malloc((size_t)((nc ? nc : 1) * V) * sizeof(float)) : NULL;
        if (!clean || !corr || (metric == PS_METRIC_KL && !clean_lp))
            rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld prompts' caches", (long long)nc);
        if (rc == 0 && nc > 0) {
            rc = stopped(&c, e);
            if (rc == 0) rc = run_baselines(&c, chunk, nc, clean, corr, clean_lp, e);
            c.clean_lp = clean_lp;
            if (rc == 0) rc = run_sweeps(&c, &b, chunk, nc, clean, corr, e);
        }
        for (int64_t i = 0; i < nc; i++) {
            if (be->release_cache && clean) be->release_cache(be, &clean[i]);
            if (be->release_cache && corr) be->release_cache(be, &corr[i]);
            if (clean) ps_cache_free(&clean[i]);
            if (corr) ps_cache_free(&corr[i]);
        }
        free(clean);
        free(corr);
        free(clean_lp);
        c.clean_lp = NULL;
        if (rc == 0 && nc > 0 && o->on_chunk && !o->dry_run) rc = o->on_chunk(o->chunk_ctx, chunk, nc, out, e);
        free(chunk);
        c0 = c1;
    }
    batch_free(&b);
    free(todo);
    progress(&c, 1);
    out->seconds = now_s() - t0;
    if (rc != 0) return -1;
    ps_engine_finish(out);
    return 0;
}

