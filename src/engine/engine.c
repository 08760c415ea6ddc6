// The engine's run: chunks of prompts whose clean and corrupted baselines run with every activation cached (a
// run's cache only where some experiment reads it), then
// every experiment's producer (ps_producer.h) on the chunk, the journal's callback, and the producers that run
// once. prompts.c tokenizes the dataset; sweep.c and sweep_run.c are the patching sweeps' producer.
#include "engine_internal.h"
#include "ps_producer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------------
// The run

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

// The chunk's clean and corrupted caches (before anything plans rows that read them): every activation of a run
// some experiment reads (reads: PS_READS_*); the other run's cache stays zeroed (its baseline runs logits only).
static int init_caches(ps_producer_ctx *c, const int64_t *chunk, int64_t nc, ps_cache *clean, ps_cache *corr, unsigned reads,
                       unsigned clean_flags, ps_error *e) {
    if (!(reads & (PS_READS_CLEAN | PS_READS_CORRUPTED)) || nc <= 0) return 0;
    int64_t *T = malloc((size_t)nc * sizeof *T);
    if (!T) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    for (int64_t i = 0; i < nc; i++) T[i] = c->ps->p[chunk[i]].T;
    int rc = 0;
    if ((reads & PS_READS_CLEAN) && ps_cache_init_block(clean, nc, &c->m->cfg, T, clean_flags, e) != 0) rc = -1;
    if (rc == 0 && (reads & PS_READS_CORRUPTED) && ps_cache_init_block(corr, nc, &c->m->cfg, T, 0, e) != 0) rc = -1;
    free(T);
    return rc;
}

// Runs the clean and corrupted baselines of a chunk into init_caches' caches (logits only for a run no experiment
// reads). sp: a fused pass's sweep rows (or NULL), run as further groups of the baselines' call (sweep_run.c).
static int run_baselines(ps_producer_ctx *c, const int64_t *chunk, int64_t nc, ps_cache *clean, ps_cache *corr, float *clean_lp,
                         unsigned reads, ps_sweep_pass *sp, ps_error *e) {
    const ps_model_config *mc = &c->m->cfg;
    const int64_t V = mc->d_vocab;
    const ps_prompt_set *ps = c->ps;
    ps_baseline *bl = &c->rr->base;
    const int64_t max_out = PS_MAX_OUT_POS;
    // A prompt's runs: clean, then corrupted (none in a dataset without corrupted prompts: its values are NaN).
    const int64_t nk = ps->no_corrupted ? 1 : 2;
    float *bl_logits = malloc((size_t)(nk * nc * max_out * V) * sizeof(float));
    ps_row *brow = calloc((size_t)(nk * nc), sizeof *brow);
    ps_metric_request *brq = calloc((size_t)nc, sizeof *brq);
    int rc = 0;
    if (!bl_logits || !brow || !brq) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld prompts' baselines", (long long)nc);
    for (int64_t i = 0; rc == 0 && i < nc; i++) {
        const ps_prompt *p = &ps->p[chunk[i]];
        ps_metric_request_for(c->metric, p, &brq[i]);
        brq[i].n_cols = 0;
        for (int k = 0; k < nk; k++) {
            ps_row *r = &brow[nk * i + k];
            r->tokens = k == 0 ? p->clean : p->corrupted;
            r->T = p->T;
            r->cache = (reads & (k == 0 ? PS_READS_CLEAN : PS_READS_CORRUPTED)) ? (k == 0 ? &clean[i] : &corr[i]) : NULL;
            r->out_pos = brq[i].out_pos;
            r->n_out = brq[i].n_out;
            r->logits = bl_logits + (nk * i + k) * max_out * V;
        }
    }
    for (int64_t i = 0; rc == 0 && i < nk * nc; i++) c->rr->baseline_flops += ps_row_flops(mc, &brow[i]);
    // Each block's clean and corrupted runs (a prompt's, or a batch_prompts block's: ps_prompt_block, never split
    // by chunks, shards or resuming) as a group of their own, so their numbers do not depend on the chunk; grouped
    // in one call where the backend can (a streamed layer is then converted once per chunk).
    const int64_t per = c->o->naive ? 1 : c->o->batch_prompts;
    ps_row *fr = NULL;
    const int64_t *fe = NULL;
    int64_t nfr = 0, nfg = 0;
    if (sp) ps_sweep_fused_rows(sp, &fr, &nfr, &fe, &nfg);
    int64_t *ends = rc == 0 ? malloc((size_t)(nc + nfg ? nc + nfg : 1) * sizeof *ends) : NULL;
    if (rc == 0 && !ends) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld prompts' baselines", (long long)nc);
    const int grouped = c->be->forward_groups != NULL, fused = grouped && nfr > 0;
    ps_row *all = rc == 0 && fused ? malloc((size_t)(nk * nc + nfr) * sizeof *all) : NULL;
    if (rc == 0 && fused && !all) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld prompts' baselines", (long long)nc);
    int64_t nbg = 0; // the baselines' groups
    for (int64_t i = 0; rc == 0 && i < nc; i++)
        if (i + 1 == nc || ps_prompt_block(chunk[i + 1], per) != ps_prompt_block(chunk[i], per)) ends[nbg++] = nk * (i + 1);
    if (all) {
        // The fused pass: the sweep's groups after the baselines', layer by layer across all of them.
        memcpy(all, brow, (size_t)(nk * nc) * sizeof *all);
        memcpy(all + nk * nc, fr, (size_t)nfr * sizeof *all);
        for (int64_t g = 0; g < nfg; g++) ends[nbg + g] = nk * nc + fe[g];
        rc = c->be->forward_groups(c->be, c->m, all, nk * nc + nfr, ends, nbg + nfg, e);
    } else if (rc == 0 && grouped) rc = c->be->forward_groups(c->be, c->m, brow, nk * nc, ends, nbg, e);
    else
        for (int64_t g = 0; rc == 0 && g < nbg; g++) {
            const int64_t r0 = g ? ends[g - 1] : 0;
            rc = c->be->forward(c->be, c->m, brow + r0, ends[g] - r0, e);
        }
    free(all);
    free(ends);
    for (int64_t i = 0; rc == 0 && i < nc; i++) {
        const int64_t pi = chunk[i];
        const ps_prompt *p = &ps->p[pi];
        int64_t si = 0;
        for (int64_t k = 0; k < brq[i].n_out; k++)
            if (brq[i].out_pos[k] == p->score_pos) si = k;
        const float *lc = brow[nk * i].logits, *lx = nk == 2 ? brow[nk * i + 1].logits : NULL;
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
        bl->corrupted[pi] = lx ? (float)ps_metric_value(c->metric, p, &brq[i], lx, V, lpi) : NAN;
        bl->clean_answer_logit[pi] = lc[si * V + p->answer_id];
        bl->clean_wrong_logit[pi] = lc[si * V + p->wrong_id];
        bl->corrupted_answer_logit[pi] = lx ? lx[si * V + p->answer_id] : NAN;
        bl->corrupted_wrong_logit[pi] = lx ? lx[si * V + p->wrong_id] : NAN;
    }
    free(bl_logits);
    free(brow);
    free(brq);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Results and producers

int ps_run_results_init(ps_run_results *out, const ps_model_config *mc, const ps_prompt_set *ps, const ps_experiment *exps,
                        int64_t n_exps, ps_error *e) {
    memset(out, 0, sizeof *out);
    if (ps_baseline_init(&out->base, ps->n, e) != 0) return -1;
    out->tables = calloc((size_t)(n_exps ? n_exps : 1), sizeof *out->tables);
    out->products = calloc((size_t)(n_exps ? n_exps : 1), sizeof *out->products);
    if (!out->tables || !out->products) {
        ps_run_results_free(out);
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    }
    for (int64_t i = 0; i < n_exps; i++) {
        const ps_experiment *ex = &exps[i];
        const char *kind = ex->kind ? ex->kind : "patch_sweep";
        const ps_producer *pr = ps_producer_for(kind);
        if (!pr) {
            ps_run_results_free(out);
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): kind \"%s\" has no producer in this patchsweep", (long long)i,
                           ex->name, kind);
        }
        // Counted as they are made, so ps_run_results_free releases exactly what exists.
        out->n_products = out->n_tables = i + 1;
        out->products[i] = (ps_product){.ex = ex, .idx = i, .t = &out->tables[i], .pr = pr};
        if (pr->init(mc, ps, &out->products[i], e) != 0) {
            ps_run_results_free(out);
            return -1;
        }
    }
    return 0;
}

void ps_engine_finish(ps_run_results *out) {
    for (int64_t s = 0; s < out->n_tables; s++) ps_table_finish(&out->tables[s], out->base.clean, out->base.corrupted);
}

void ps_run_results_free(ps_run_results *r) {
    if (!r) return;
    ps_baseline_free(&r->base);
    for (int64_t s = 0; r->products && s < r->n_products; s++)
        if (r->products[s].pr && r->products[s].pr->free_state) r->products[s].pr->free_state(r->products[s].state);
    for (int64_t s = 0; r->tables && s < r->n_tables; s++) ps_table_free(&r->tables[s]);
    free(r->products);
    free(r->tables);
    memset(r, 0, sizeof *r);
}

// The experiments of each producer, in the registry's order of first appearance: items[k] for k in
// [first[g], first[g + 1]) belong to group g.
typedef struct {
    ps_product **items; // (n_products)
    int64_t *first;     // (n_groups + 1)
    int64_t n_groups;
} groups;

static int group_products(ps_run_results *rr, groups *g, ps_error *e) {
    memset(g, 0, sizeof *g);
    const int64_t n = rr->n_products;
    g->items = malloc((size_t)(n ? n : 1) * sizeof *g->items);
    g->first = malloc((size_t)(n + 1) * sizeof *g->first);
    uint8_t *taken = calloc((size_t)(n ? n : 1), 1);
    if (!g->items || !g->first || !taken) {
        free(taken);
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    }
    int64_t k = 0;
    for (int64_t i = 0; i < n; i++) {
        if (taken[i]) continue;
        g->first[g->n_groups++] = k;
        for (int64_t j = i; j < n; j++)
            if (!taken[j] && rr->products[j].pr == rr->products[i].pr) {
                taken[j] = 1;
                g->items[k++] = &rr->products[j];
            }
    }
    g->first[g->n_groups] = k;
    free(taken);
    return 0;
}

static void groups_free(groups *g) {
    free(g->items);
    free(g->first);
}

int ps_engine_run(const ps_model *m, ps_backend *be, const ps_prompt_set *ps, const ps_experiment *exps, int64_t n_exps,
                  ps_metric_kind metric, const ps_engine_opts *o, ps_run_results *out, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t V = mc->d_vocab;
    if (ps_run_results_init(out, mc, ps, exps, n_exps, e) != 0) return -1;
    const double t0 = now_s();
    int64_t n_todo = o->todo ? o->n_todo : ps->n;
    int64_t *todo = malloc((size_t)(n_todo ? n_todo : 1) * sizeof(int64_t));
    groups g;
    if (!todo) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the prompt list");
    if (group_products(out, &g, e) != 0) {
        free(todo);
        return -1;
    }
    for (int64_t i = 0; i < n_todo; i++) todo[i] = o->todo ? o->todo[i] : i;

    ps_producer_ctx c = {.m = m, .be = be, .ps = ps, .metric = metric, .o = o, .rr = out};
    int64_t per_prompt_cells = 0;
    for (int64_t s = 0; s < out->n_tables; s++)
        if (out->tables[s].per_prompt) per_prompt_cells += out->tables[s].n_cells;
    c.total = per_prompt_cells * n_todo;
    const size_t budget = o->cache_budget ? o->cache_budget : ((size_t)2 << 30);
    // The baseline caches some per-prompt experiment reads (a producer that does not say: both).
    unsigned reads = 0;
    int as_base = 1; // every reader of the clean runs reads them only as its rows' bases
    for (int64_t s = 0; s < out->n_products; s++) {
        const ps_product *p = &out->products[s];
        if (!p->pr->chunk && !p->pr->keep) continue;
        const unsigned r = p->pr->reads ? p->pr->reads(p->ex) : PS_READS_CLEAN | PS_READS_CORRUPTED;
        reads |= r & (PS_READS_CLEAN | PS_READS_CORRUPTED);
        if ((r & PS_READS_CLEAN) && !(r & PS_READS_CLEAN_AS_BASE)) as_base = 0;
    }
    if (ps->no_corrupted) reads &= ~(unsigned)PS_READS_CORRUPTED; // nothing that reads them was let in (config.c)
    const unsigned clean_flags = as_base && (be->caps & PS_CAP_LEAN_BASE) ? PS_CACHE_LEAN : 0;
    // The fused pass only pays where each pass over the layers converts them (streamed weights, grouped calls).
    const int fuse = !o->naive && !o->dry_run && !o->no_fuse && m->stream && be->forward_groups;
    int rc = 0;

    for (int64_t c0 = 0; c0 < n_todo && rc == 0;) {
        // A chunk of prompts whose clean and corrupted caches fit the budget together.
        int64_t c1 = c0;
        size_t bytes = 0;
        while (c1 < n_todo && (o->chunk_prompts <= 0 || c1 - c0 < o->chunk_prompts)) {
            const int64_t T = ps->p[todo[c1]].T;
            size_t nb = ((reads & PS_READS_CLEAN ? ps_cache_floats(mc, T, clean_flags) : 0) +
                         (reads & PS_READS_CORRUPTED ? ps_cache_floats(mc, T, 0) : 0)) * sizeof(float);
            if (c1 > c0 && bytes + nb > budget) break;
            bytes += nb;
            c1++;
        }
        // A chunk ends at a block's end (ps_prompt_block): back to the last block's start, or on to the first
        // block's end where that block alone is over the limit.
        const int64_t per = o->batch_prompts;
        if (per > 1 && c1 < n_todo && ps_prompt_block(todo[c1], per) == ps_prompt_block(todo[c1 - 1], per)) {
            int64_t b1 = c1;
            while (b1 > c0 && ps_prompt_block(todo[b1 - 1], per) == ps_prompt_block(todo[c1], per)) b1--;
            if (b1 == c0)
                while (b1 < n_todo && ps_prompt_block(todo[b1], per) == ps_prompt_block(todo[c0], per)) b1++;
            c1 = b1;
            bytes = 0;
            for (int64_t k = c0; k < c1; k++)
                bytes += ((reads & PS_READS_CLEAN ? ps_cache_floats(mc, ps->p[todo[k]].T, clean_flags) : 0) +
                          (reads & PS_READS_CORRUPTED ? ps_cache_floats(mc, ps->p[todo[k]].T, 0) : 0)) * sizeof(float);
        }
        // (Caches a producer takes from the chunk move to held_cache_bytes: the chunk's and the held bytes before the
        // producers' keep() are the chunk's peak.)
        if (bytes + out->held_cache_bytes > out->peak_cache_bytes) out->peak_cache_bytes = bytes + out->held_cache_bytes;
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
            rc = ps_producer_stopped(&c, e);
            if (rc == 0) rc = init_caches(&c, chunk, nc, clean, corr, reads, clean_flags, e);
            const ps_chunk ch = {.prompts = chunk, .n = nc, .clean = clean, .corrupted = corr, .clean_logprobs = clean_lp};
            // Streamed weights: the sweeps' rows join the baselines' call where they can be planned from the tokens.
            ps_sweep_pass *sp = NULL;
            int64_t sweeps = -1;
            for (int64_t k = 0; k < g.n_groups; k++)
                if (g.items[g.first[k]]->pr == &ps_patch_sweep_producer) sweeps = k;
            if (rc == 0 && sweeps >= 0 && fuse)
                rc = ps_sweep_fused_predict(&c, g.items + g.first[sweeps], g.first[sweeps + 1] - g.first[sweeps], &ch, &sp, e);
            // Streamed layers are kept for a later pass only if one is known to come: another chunk, another
            // producer, or sweeps not fused. The fused pass alone converts each layer once (a sweep that overflows
            // it asks again, and the layers the budget allows are kept from that second conversion on). A dry
            // run's baselines are its only pass (and so time the conversion a real run's pass pays).
            if (m->stream) ps_model_stream_expect(m, !o->dry_run && (c1 < n_todo || g.n_groups > 1 || !sp));
            if (rc == 0) rc = run_baselines(&c, chunk, nc, clean, corr, clean_lp, reads, sp, e);
            const int64_t done_after = c.done + per_prompt_cells * nc;
            for (int64_t k = 0; rc == 0 && k < g.n_groups; k++) {
                ps_product *const *items = g.items + g.first[k];
                const int64_t ni = g.first[k + 1] - g.first[k];
                if (k == sweeps && sp) rc = ps_sweep_fused_chunk(&c, items, ni, &ch, sp, e);
                else if (items[0]->pr->chunk) rc = items[0]->pr->chunk(&c, items, ni, &ch, e);
            }
            // Then the producers that keep the chunk's clean runs for their once(), once nothing else reads them.
            ps_chunk kept = ch;
            kept.clean_to_take = (reads & PS_READS_CLEAN) ? clean : NULL;
            for (int64_t k = 0; rc == 0 && k < g.n_groups; k++)
                if (g.items[g.first[k]]->pr->keep) rc = g.items[g.first[k]]->pr->keep(&c, g.items + g.first[k], g.first[k + 1] - g.first[k], &kept, e);
            ps_sweep_fused_free(sp);
            if (c.done < done_after) c.done = done_after; // producers that count coarsely
            ps_producer_progress(&c, 0);
        }
        ps_backend_drop_caches(be, clean, nc);
        ps_backend_drop_caches(be, corr, nc);
        free(clean);
        free(corr);
        free(clean_lp);
        if (rc == 0 && nc > 0 && o->on_chunk && !o->dry_run) rc = o->on_chunk(o->chunk_ctx, chunk, nc, out, e);
        free(chunk);
        c0 = c1;
    }
    // Producers whose values are not per prompt, once every prompt's baseline is in.
    for (int64_t k = 0; rc == 0 && k < g.n_groups; k++) {
        ps_product *const *items = g.items + g.first[k];
        if (!items[0]->pr->per_prompt) rc = items[0]->pr->once(&c, items, g.first[k + 1] - g.first[k], e);
    }
    groups_free(&g);
    free(todo);
    ps_producer_progress(&c, 1);
    out->seconds = now_s() - t0;
    if (rc != 0) return -1;
    ps_engine_finish(out);
    return 0;
}
