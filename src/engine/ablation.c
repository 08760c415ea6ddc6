// Ablation rows: a set of components (heads at hook_z or hook_result, MLP layers at hook_mlp_out, neurons at hook_mlp_post)
// ablated, or everything outside a kept circuit, with zero / mean / resample / corrupted values, each prompt
// one row through ps_engine_rows; the metric per prompt and the circuit scores built on it.
#include "ablation_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *ps_abl_method_name(ps_abl_method m) {
    static const char *const names[] = {"zero", "mean", "resample", "corrupted"};
    return (unsigned)m < 4 ? names[m] : "?";
}

int ps_component_parse(const char *s, ps_component *c) {
    memset(c, 0, sizeof *c);
    long long a = -1, b = -1;
    int n = 0;
    if (sscanf(s, "h%lld.%lld%n", &a, &b, &n) == 2 && !s[n]) { c->kind = PS_COMP_HEAD; }
    else if (sscanf(s, "n%lld.%lld%n", &a, &b, &n) == 2 && !s[n]) { c->kind = PS_COMP_NEURON; }
    else if (sscanf(s, "mlp%lld%n", &a, &n) == 1 && !s[n]) { c->kind = PS_COMP_MLP; b = -1; }
    else return -1;
    if (a < 0 || (c->kind != PS_COMP_MLP && b < 0)) return -1;
    c->layer = a;
    c->index = b;
    return 0;
}

void ps_component_label(const ps_component *c, char *buf, size_t n) {
    if (c->kind == PS_COMP_MLP) snprintf(buf, n, "mlp%lld", (long long)c->layer);
    else snprintf(buf, n, "%c%lld.%lld", c->kind == PS_COMP_HEAD ? 'h' : 'n', (long long)c->layer, (long long)c->index);
}

int ps_component_check(const ps_model_config *mc, const ps_component *c, const char *where, ps_error *e) {
    char lab[64];
    ps_component_label(c, lab, sizeof lab);
    if (c->layer < 0 || c->layer >= mc->n_layers)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: the model has layers 0..%lld", where, lab, (long long)mc->n_layers - 1);
    if (c->kind == PS_COMP_HEAD && (c->index < 0 || c->index >= mc->n_heads))
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: the model has heads 0..%lld per layer", where, lab, (long long)mc->n_heads - 1);
    if (c->kind == PS_COMP_NEURON && (c->index < 0 || c->index >= mc->d_mlp))
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: the model has neurons 0..%lld per layer", where, lab, (long long)mc->d_mlp - 1);
    return 0;
}

// Positions of component c in prompt p, as flags over [0, T): all of them when c lists none.
static void comp_positions(const ps_component *c, const ps_prompt *p, uint8_t *at) {
    const int64_t T = p->T;
    memset(at, c->pos ? 0 : 1, (size_t)T);
    for (int64_t k = 0; c->pos && k < c->n_pos; k++) {
        int64_t t;
        if (c->pos_role && c->pos_role[k]) t = ps_prompt_role(p, c->pos_role[k]);
        else t = c->pos[k] < 0 ? c->pos[k] + p->T_prompt : c->pos[k];
        if (t >= 0 && t < T) at[t] = 1;   // a prompt without the role keeps nothing there
    }
}

int64_t ps_abl_patch_bound(const ps_model_config *mc, const ps_abl_set *set, int64_t T) {
    int64_t neurons = 0;
    for (int64_t k = 0; k < set->n; k++) neurons += set->c[k].kind == PS_COMP_NEURON;
    return (2 * mc->n_layers + neurons) * (T + 1);
}

// One patch of the method's op at (site, layer, pos).
static ps_patch make_patch(const ps_ablator *a, const ps_abl_set *set, ps_site site, int64_t l, int64_t pos, int64_t g,
                           const ps_cache *src) {
    const ps_model_config *mc = &a->m->cfg;
    ps_patch pt = {.site = site, .layer = l, .head = -1, .pos = pos, .neuron = -1};
    const int ms = site == PS_SITE_Z ? PS_MS_Z : site == PS_SITE_RESULT ? PS_MS_RESULT : site == PS_SITE_MLP_OUT ? PS_MS_MLP_OUT : PS_MS_MLP_POST;
    const int head = ms == PS_MS_Z || ms == PS_MS_RESULT;
    switch (a->method) {
    case PS_ABL_ZERO: pt.op = PS_OP_ZERO; break;
    case PS_ABL_MEAN: {
        const ps_ref_means *rm = (!head && set->mlp_means) ? set->mlp_means : a->means;
        pt.op = PS_OP_MEAN;
        pt.ref = ps_ref_means_view(rm, ms, l, g);
        break;
    }
    case PS_ABL_RESAMPLE:
        // The reference prompt's own run, position by position (same length, checked at init).
        pt.op = PS_OP_MEAN;
        pt.ref.data = ps_cache_site(src, site) + ps_site_at(mc, site, src->T, l, 0, 0);
        pt.ref.rows = src->T;
        break;
    case PS_ABL_CORRUPTED: pt.op = PS_OP_REPLACE; pt.src = src; break;
    }
    return pt;
}

int64_t ps_abl_build_patches(const ps_ablator *a, const ps_abl_set *set, const ps_prompt *p, int64_t g, const ps_cache *src,
                             int heads_only, ps_patch *out) {
    const ps_model_config *mc = &a->m->cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads, T = p->T;
    const uint64_t all_heads = H >= 64 ? ~0ull : ((1ull << H) - 1);
    const ps_site head_site = a->heads_at_result ? PS_SITE_RESULT : PS_SITE_Z;
    uint8_t at[4096];
    uint64_t hm[4096];
    uint8_t mm[4096];
    if (T > 4096) return -1;
    int64_t n = 0;
    for (int64_t l = 0; l < L; l++) {
        // Heads to ablate at each position, and whether the MLP is.
        for (int64_t t = 0; t < T; t++) { hm[t] = set->keep ? all_heads : 0; mm[t] = set->keep ? 1 : 0; }
        for (int64_t k = 0; k < set->n; k++) {
            const ps_component *c = &set->c[k];
            if (c->layer != l || c->kind == PS_COMP_NEURON) continue;
            comp_positions(c, p, at);
            for (int64_t t = 0; t < T; t++) {
                if (!at[t]) continue;
                if (c->kind == PS_COMP_HEAD) hm[t] = set->keep ? hm[t] & ~(1ull << c->index) : hm[t] | (1ull << c->index);
                else mm[t] = set->keep ? 0 : 1;
            }
        }
        int same_h = 1, same_m = 1;
        for (int64_t t = 1; t < T; t++) { same_h &= hm[t] == hm[0]; same_m &= mm[t] == mm[0]; }
        // One patch over every position where the selection is the same everywhere, else one per position.
        for (int64_t t = same_h ? -1 : 0; t < (same_h ? 0 : T); t++) {
            const uint64_t mask = hm[t < 0 ? 0 : t];
            if (!mask) continue;
            out[n] = make_patch(a, set, head_site, l, t, g, src);
            out[n++].head_mask = mask;
        }
        if (heads_only) continue;
        for (int64_t t = same_m ? -1 : 0; t < (same_m ? 0 : T); t++)
            if (mm[t < 0 ? 0 : t]) out[n++] = make_patch(a, set, PS_SITE_MLP_OUT, l, t, g, src);
        for (int64_t k = 0; !set->keep && k < set->n; k++) {
            const ps_component *c = &set->c[k];
            if (c->layer != l || c->kind != PS_COMP_NEURON) continue;
            comp_positions(c, p, at);
            int every = 1;
            for (int64_t t = 0; t < T; t++) every &= at[t];
            for (int64_t t = every ? -1 : 0; t < (every ? 0 : T); t++) {
                if (t >= 0 && !at[t]) continue;
                out[n] = make_patch(a, set, PS_SITE_MLP_POST, l, t, g, src);
                out[n++].neuron = c->index;
            }
        }
    }
    return n;
}

static uint64_t xorshift64s(uint64_t *s) {
    *s ^= *s >> 12; *s ^= *s << 25; *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1Dull;
}

// Prompts per backend call of the runs that record caches (and of the means' rows) unless batch_rows says: fixed
// blocks by prompt index, so the numbers do not depend on timing or memory.
#define PS_ABL_BLOCK 32

// Scored rows per backend call, in groups of PS_ABL_GROUP rows that run whole on one thread each (ps_ablator_score),
// unless batch_rows says (then one batch of that many rows a call, as before groups).
#define PS_ABL_SCORE_ROWS 1024
#define PS_ABL_GROUP 32

// Blocks of runs a backend call (run_rows).
#define PS_ABL_CALL_BLOCKS 8

int64_t ps_abl_block(const ps_ablator *a) { return a->batch_rows > 0 ? a->batch_rows : PS_ABL_BLOCK; }

// Runs every prompt `which` names (NULL: 0..n) of ps into caches[0..n), blocks of ps_abl_block prompts a call, each
// with the patches of `set` (NULL: none; heads_only as ps_abl_build_patches; with heads_only no resample/corrupted
// sources), clean or corrupted tokens. reuse: the caches are initialised (for these prompts' lengths) and are
// overwritten; else they are initialised here. from (with reuse): the caches hold runs whose patches equal set's
// below layer `from`, so they are rewritten in place from there (PS_CAP_CACHE_LATE; else from layer 0). On error
// none is held (reused ones are freed too).
static int run_rows(const ps_ablator *a, const ps_prompt_set *ps, const int64_t *which, int64_t n, int corrupted, const ps_abl_set *set,
                    int heads_only, int reuse, int64_t from, ps_cache *caches, ps_error *e) {
    const ps_model_config *mc = &a->m->cfg;
    if (!reuse || !(a->be->caps & PS_CAP_CACHE_LATE) || from < 0) from = 0;
    if (from > mc->n_layers - 1) from = mc->n_layers - 1;   // nothing changed: the last layer again (cache rows end there)
    // PS_ABL_CALL_BLOCKS blocks a backend call where the backend runs groups (the CPU), each block a group of its own
    // (the numbers of its own call, on one thread), so that the blocks run on the threads side by side; else a block
    // a call (a device keeps a copy of every cache row it computes).
    const int64_t blk = ps_abl_block(a), per = blk * (a->be->forward_groups ? PS_ABL_CALL_BLOCKS : 1), bound = set ? ps_abl_patch_bound(mc, set, ps->T_max) : 0;
    ps_row *rows = calloc((size_t)per, sizeof *rows);
    ps_patch *patches = bound ? malloc((size_t)(per * bound) * sizeof *patches) : NULL;
    int64_t *ends = malloc((size_t)PS_ABL_CALL_BLOCKS * sizeof *ends);
    int rc = rows && ends && (!bound || patches) ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "out of memory for ablation runs");
    int64_t held = reuse ? n : 0;
    const ps_rows_opts ro = {.naive = 1, .batch_rows = per, .group_rows = blk};
    int64_t *Ts = reuse ? NULL : malloc((size_t)blk * sizeof *Ts);
    if (rc == 0 && !reuse && !Ts) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for ablation runs");
    for (int64_t c0 = 0; rc == 0 && c0 < n; c0 += per) {
        const int64_t nc = n - c0 < per ? n - c0 : per;
        int64_t G = 0;
        for (int64_t i0 = c0; rc == 0 && i0 < c0 + nc; i0 += blk) {
            const int64_t nb = c0 + nc - i0 < blk ? c0 + nc - i0 : blk;
            ends[G++] = i0 + nb - c0;
            if (!reuse) {
                // The block's caches in one allocation. Heads ablated at hook_result read their source's result (H x
                // d_model a position and layer); rows starting from these runs compare their result patches with it.
                for (int64_t b = 0; b < nb; b++) Ts[b] = ps->p[which ? which[i0 + b] : i0 + b].T;
                if (ps_cache_init_block(&caches[i0], nb, mc, Ts, a->heads_at_result ? PS_CACHE_RESULT : 0, e) != 0) { rc = -1; break; }
                held = i0 + nb;
            }
        }
        for (int64_t b = 0; rc == 0 && b < nc; b++) {
            const int64_t i = which ? which[c0 + b] : c0 + b;
            const ps_prompt *p = &ps->p[i];
            rows[b] = (ps_row){.tokens = corrupted ? p->corrupted : p->clean, .T = p->T, .cache = &caches[c0 + b]};
            if (from > 0) { rows[b].base = &caches[c0 + b]; rows[b].start_layer = from; }
            if (!set) continue;
            const int64_t g = !heads_only && a->group_of && a->means && a->means->group == PS_GROUP_PER_TEMPLATE_POSITION ? a->group_of[i] : 0;
            const int64_t np = ps_abl_build_patches(a, set, p, g, !heads_only && a->src ? &a->src[i] : NULL, heads_only, patches + b * bound);
            if (np < 0) rc = ps_fail(e, PS_EXIT_BADINPUT, "prompt %lld: too long for an ablation row", (long long)i);
            rows[b].patches = patches + b * bound;
            rows[b].n_patches = np < 0 ? 0 : np;
        }
        if (rc == 0 && from == 0) rc = ps_engine_rows(a->m, a->be, rows, nc, &ro, NULL, e);
        // Rows rewritten in place from `from` (the engine plans cache rows from layer 0): checked, then run as they are.
        for (int64_t b = 0; rc == 0 && from > 0 && b < nc; b++) rc = ps_row_check(mc, &rows[b], a->be->caps, a->be->name, e);
        // (Without forward_groups a call holds one block: G is 1.)
        if (rc == 0 && from > 0)
            rc = a->be->forward_groups ? a->be->forward_groups(a->be, a->m, rows, nc, ends, G, e) : a->be->forward(a->be, a->m, rows, nc, e);
    }
    free(rows);
    free(patches);
    free(ends);
    free(Ts);
    if (rc != 0) ps_backend_drop_caches(a->be, caches, held);
    return rc;
}

static int run_caches(const ps_ablator *a, const ps_prompt_set *ps, const int64_t *which, int64_t n, int corrupted,
                      ps_cache *caches, ps_error *e) {
    return run_rows(a, ps, which, n, corrupted, NULL, 0, 0, 0, caches, e);
}

int ps_abl_resample_draws(const ps_prompt_set *ps, const ps_prompt_set *ref, uint64_t seed, const char *where, int64_t *from,
                          ps_error *e) {
    uint64_t s = seed ? seed : 0x9E3779B97F4A7C15ull;
    for (int64_t i = 0; i < ps->n; i++) {
        // Draw among the reference prompts of this prompt's length (positions must line up).
        int64_t n_same = 0;
        for (int64_t j = 0; j < ref->n; j++) n_same += ref->p[j].T == ps->p[i].T;
        if (!n_same)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: resample: no reference prompt has the %lld tokens of prompt %lld", where,
                           (long long)ps->p[i].T, (long long)i);
        int64_t k = (int64_t)(xorshift64s(&s) % (uint64_t)n_same), j = 0;
        for (;; j++)
            if (ref->p[j].T == ps->p[i].T && k-- == 0) break;
        from[i] = j;
    }
    return 0;
}

int ps_ablator_init(ps_ablator *a, const char *where, ps_error *e) {
    a->resample_from = NULL; a->src = NULL; a->full = NULL;
    memset(&a->stats, 0, sizeof a->stats);
    const ps_prompt_set *ps = a->ps;
    if (a->metric == PS_METRIC_KL)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: ablations score logit_diff, prob_diff or logprob, not kl", where);
    if (a->method == PS_ABL_MEAN) {
        if (!a->means) return ps_fail(e, PS_EXIT_BADINPUT, "%s: mean ablation needs a \"reference\" dataset", where);
        if (!a->means->site[a->heads_at_result ? PS_MS_RESULT : PS_MS_Z])
            return ps_fail(e, PS_EXIT_RUNTIME, "%s: the reference means hold no %s means for the heads", where,
                           a->heads_at_result ? "hook_result" : "hook_z");
        for (int64_t i = 0; a->means->group != PS_GROUP_ALL_POSITIONS && i < ps->n; i++)
            if (ps->p[i].T != a->means->rows)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s means are over %lld-token reference prompts but prompt %lld has %lld tokens",
                               where, ps_mean_group_name(a->means->group), (long long)a->means->rows, (long long)i, (long long)ps->p[i].T);
    }
    a->full = malloc((size_t)(ps->n ? ps->n : 1) * sizeof(float));
    if (!a->full) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    if (a->method == PS_ABL_RESAMPLE || a->method == PS_ABL_CORRUPTED) {
        a->src = calloc((size_t)(ps->n ? ps->n : 1), sizeof *a->src);
        a->resample_from = calloc((size_t)(ps->n ? ps->n : 1), sizeof *a->resample_from);
        if (!a->src || !a->resample_from) { ps_ablator_free(a); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); }
    }
    if (a->method == PS_ABL_RESAMPLE) {
        if (!a->ref || a->ref->n < 1) { ps_ablator_free(a); return ps_fail(e, PS_EXIT_BADINPUT, "%s: resample ablation needs a \"reference\" dataset", where); }
        if (a->draws) memcpy(a->resample_from, a->draws, (size_t)ps->n * sizeof *a->resample_from);
        else if (ps_abl_resample_draws(ps, a->ref, a->seed, where, a->resample_from, e) != 0) { ps_ablator_free(a); return -1; }
        if (run_caches(a, a->ref, a->resample_from, ps->n, 0, a->src, e) != 0) { ps_ablator_free(a); return -1; }
    } else if (a->method == PS_ABL_CORRUPTED) {
        for (int64_t i = 0; i < ps->n; i++) a->resample_from[i] = -1;
        if (run_caches(a, ps, NULL, ps->n, 1, a->src, e) != 0) { ps_ablator_free(a); return -1; }
    }
    a->full_mean = NAN;
    if (!a->full_later && ps_ablator_full(a, e) != 0) { ps_ablator_free(a); return -1; }
    return 0;
}

int ps_ablator_full(ps_ablator *a, ps_error *e) {
    // The unablated metric: an empty ablation set.
    const ps_abl_set none = {0};
    if (ps_ablator_score(a, &none, 1, a->full, e) != 0) return -1;
    double s = 0;
    for (int64_t i = 0; i < a->ps->n; i++) s += a->full[i];
    a->full_mean = a->ps->n ? s / (double)a->ps->n : NAN;
    return 0;
}

void ps_ablator_free(ps_ablator *a) {
    if (a->src) ps_backend_drop_caches(a->be, a->src, a->ps->n);
    free(a->src); free(a->resample_from); free(a->full);
    a->src = NULL; a->resample_from = NULL; a->full = NULL;
}

int ps_ablator_score(ps_ablator *a, const ps_abl_set *sets, int64_t n_sets, float *values, ps_error *e) {
    const ps_model_config *mc = &a->m->cfg;
    const ps_prompt_set *ps = a->ps;
    const int64_t total = n_sets * ps->n;
    int64_t per = a->batch_rows > 0 ? a->batch_rows : PS_ABL_SCORE_ROWS;
    int64_t bound = 1;
    for (int64_t s = 0; s < n_sets; s++) {
        const int64_t b = ps_abl_patch_bound(mc, &sets[s], ps->T_max);
        if (b > bound) bound = b;
    }
    // Logits each row asks for: two columns for logit_diff, whole rows otherwise.
    size_t need = 1;
    for (int64_t i = 0; i < ps->n; i++) {
        ps_metric_request q;
        ps_metric_request_for(a->metric, &ps->p[i], &q);
        const size_t n = (size_t)q.n_out * (size_t)(q.n_cols ? q.n_cols : mc->d_vocab);
        if (n > need) need = n;
    }
    // Whole-vocabulary logits (prob_diff, logprob) in fewer rows a call: at most 64 MiB of them.
    while (a->batch_rows <= 0 && per > 2 * PS_ABL_GROUP && (size_t)per * need * sizeof(float) > ((size_t)64 << 20)) per /= 2;
    ps_row *rows = calloc((size_t)per, sizeof *rows);
    ps_metric_request *rq = calloc((size_t)per, sizeof *rq);
    ps_patch *patches = malloc((size_t)(per * bound) * sizeof *patches);
    float *logits = malloc((size_t)per * need * sizeof(float));
    int rc = 0;
    if (!rows || !rq || !patches || !logits) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for ablation rows");
    for (int64_t r0 = 0; rc == 0 && r0 < total; r0 += per) {
        const int64_t nb = total - r0 < per ? total - r0 : per;
        // Each row's patches are its own (on the threads); the first prompt too long for its row is the one reported.
        int64_t too_long = -1;
#pragma omp parallel for schedule(static) if (nb >= 64)
        for (int64_t b = 0; b < nb; b++) {
            const int64_t s = (r0 + b) / ps->n, i = (r0 + b) % ps->n;
            const ps_prompt *p = &ps->p[i];
            const int64_t g = a->group_of && a->means && a->means->group == PS_GROUP_PER_TEMPLATE_POSITION ? a->group_of[i] : 0;
            ps_metric_request_for(a->metric, p, &rq[b]);
            const int64_t np = ps_abl_build_patches(a, &sets[s], p, g, a->src ? &a->src[i] : NULL, 0, patches + b * bound);
            if (np < 0) {
#pragma omp critical(ps_abl_too_long)
                if (too_long < 0 || i < too_long) too_long = i;
            }
            rows[b] = (ps_row){.tokens = p->clean, .T = p->T, .patches = patches + b * bound, .n_patches = np < 0 ? 0 : np,
                               .out_pos = rq[b].out_pos, .n_out = rq[b].n_out, .cols = rq[b].n_cols ? rq[b].cols : NULL,
                               .n_cols = rq[b].n_cols, .logits = logits + (size_t)b * need};
        }
        if (too_long >= 0) { rc = ps_fail(e, PS_EXIT_BADINPUT, "prompt %lld: too long for an ablation row", (long long)too_long); break; }
        // Without a base, full forwards (a kept circuit ablates from layer 0 on); with one, the engine starts
        // each row at its first patch that changes the base run's values.
        // A row that changes one head's z from base's (a head candidate of the circuit search) may then start its layer at
        // base's attn_out plus that head's part of W_O, where the backend can (PS_CAP_HEAD_DELTA).
        for (int64_t b = 0; a->base && b < nb; b++) {
            rows[b].base = &a->base[(r0 + b) % ps->n];
            rows[b].head_delta = (a->be->caps & PS_CAP_HEAD_DELTA) != 0;
        }
        // Groups of PS_ABL_GROUP rows: a row's numbers depend on its group only (ps_rows_opts.group_rows).
        ps_rows_opts ro = {.naive = a->base ? 0 : 1, .batch_rows = per, .group_rows = a->batch_rows > 0 ? 0 : a->group_rows > 0 ? a->group_rows : PS_ABL_GROUP};
        ps_rows_stats st = {0};
        if ((rc = ps_engine_rows(a->m, a->be, rows, nb, &ro, &st, e)) != 0) break;
        a->stats.rows_run += st.rows_run;
        a->stats.flops += st.flops;
        for (int64_t b = 0; b < nb; b++) {
            const int64_t i = (r0 + b) % ps->n;
            values[r0 + b] = (float)ps_metric_value(a->metric, &ps->p[i], &rq[b], rows[b].logits, mc->d_vocab, NULL);
        }
    }
    free(rows); free(rq); free(patches); free(logits);
    return rc;
}

int ps_abl_run_set(const ps_ablator *a, const ps_prompt_set *ps, const ps_abl_set *set, int heads_only, int reuse, int64_t from,
                   ps_cache *caches, ps_error *e) {
    return run_rows(a, ps, NULL, ps->n, 0, set, heads_only, reuse, from, caches, e);
}

int ps_ablator_runs(const ps_ablator *a, const ps_abl_set *set, ps_cache *caches, ps_error *e) {
    return ps_abl_run_set(a, a->ps, set, 0, 0, 0, caches, e);
}

ps_abl_scores ps_abl_scores_of(const ps_ablator *a, const float *values) {
    ps_abl_scores s;
    double sum = 0;
    for (int64_t i = 0; i < a->ps->n; i++) sum += values[i];
    s.mean = a->ps->n ? sum / (double)a->ps->n : NAN;
    s.faithfulness = s.mean / a->full_mean;
    s.circuit_score = 100.0 * s.faithfulness;
    return s;
}

// The head ablation of a kept set, for every reference prompt (seqcont's z hook while MLP means are taken).
typedef struct { const ps_ablator *a; const ps_abl_set *keep; } under_ctx;
static int64_t under_patches(void *vc, int64_t i, const ps_prompt *p, ps_patch *out, int64_t cap) {
    (void)i; (void)cap;
    const under_ctx *u = vc;
    return ps_abl_build_patches(u->a, u->keep, p, 0, NULL, 1, out);
}

int ps_ablator_mlp_means_under_from(const ps_ablator *a, const ps_prompt_set *ref, const ps_abl_set *keep, const ps_cache *ref_base,
                                    int64_t from_layer, const ps_ref_means *below, ps_ref_means *out, ps_error *e) {
    memset(out, 0, sizeof *out);
    if (a->method != PS_ABL_MEAN || !a->means || a->means->group == PS_GROUP_PER_TEMPLATE_POSITION)
        return ps_fail(e, PS_EXIT_BADINPUT, "mlp_means under_head_ablation needs mean ablation, per_position or all_positions");
    out->group = a->means->group;
    out->n_groups = 1;
    const unsigned sites = (1u << PS_MS_MLP_OUT) | (1u << PS_MS_MLP_POST);
    under_ctx u = {a, keep};
    const ps_means_base mb = {ref_base, from_layer, below};
    if (ps_means_accumulate(a->m, a->be, ref, NULL, sites, under_patches, &u, ps_abl_patch_bound(&a->m->cfg, keep, ref->T_max),
                            ref_base ? &mb : NULL, ps_abl_block(a), "reference", out, e) != 0) {
        ps_ref_means_free(out);
        return -1;
    }
    return 0;
}

int ps_ablator_mlp_means_under(const ps_ablator *a, const ps_prompt_set *ref, const ps_abl_set *keep, ps_ref_means *out,
                               ps_error *e) {
    return ps_ablator_mlp_means_under_from(a, ref, keep, NULL, 0, NULL, out, e);
}

int ps_ablator_ref_runs(const ps_ablator *a, const ps_prompt_set *ref, const ps_abl_set *keep, ps_cache *caches, ps_error *e) {
    return ps_abl_run_set(a, ref, keep, 1, 0, 0, caches, e);
}
