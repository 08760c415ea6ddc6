// seqcont's iterative node pruning (apartresearch/seqcont_circuits, src/iter_node_pruning/
// loop_node_ablation_fns.py and run_node_ablation.py), step for step, with candidates scored in
// speculative batches: the next k candidates are scored as if none were removed, the prefix up to the
// first removal is accepted and scoring resumes after it, so the trace equals the sequential one.
#include "ablation_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ps_ablator *a;
    const ps_search_opts *o;
    int64_t L, H;
    uint8_t *head, *mlp;          // (L*H), (L): the current circuit
    ps_component *comps;          // scratch: up to L*H + L components per set, per speculative slot
    ps_ref_means *mlp_means;      // (k) per slot, under mlp_means_under_heads
    float *values;                // (k, n_prompts)
    ps_search_result *out;
    int64_t cap_steps;
    // The current circuit's runs (a->base while set) and its MLP means under its head ablation, each rebuilt only
    // when a set reads it. A candidate differs from the circuit from its own layer on, so its rows start there;
    // an MLP removal leaves the head set, and so the reference runs and those means, as they are; a head removal
    // at layer l leaves the means of the layers below l as they are. Sets read the MLP means only of the MLP
    // layers they ablate: while the circuit keeps every MLP at and above a head candidate's layer, its means
    // are not needed.
    ps_cache *base;               // (n_prompts) NULL when they would not fit the budget; allocated once, re-run in place
    ps_cache *ref_base;           // (ref->n) the reference prompts under the circuit's head ablation (mlp_means_under_heads)
    int base_init, ref_init;      // the caches are allocated
    int base_ok, ref_ok;          // they hold the current circuit's runs
    int64_t base_from, ref_from;  // else: they hold its runs below this layer (a removal there; rewritten from it)
    ps_ref_means cur_mm;
    int cur_mm_ok;
    int64_t mm_valid;             // cur_mm's layers [0, mm_valid) are the current circuit's
    // Scores already known for the current circuit: a candidate's score is a function of the circuit and the
    // candidate alone, so one scored since the last change to the circuit (e.g. in the pass before, after its last
    // removal) is not scored again. memo_gen[c] == gen marks memo[c] valid; every change to the circuit bumps gen.
    double *memo;                 // (L*H + L): heads l*H + h, then MLP l at L*H + l
    int64_t *memo_gen;            // (L*H + L)
    int64_t gen;
} search;

// A candidate's slot in memo / memo_gen.
static int64_t comp_slot(const search *s, const ps_component *c) {
    return c->kind == PS_COMP_HEAD ? c->layer * s->H + c->index : s->L * s->H + c->layer;
}

static int known(const search *s, const ps_component *c) { return s->memo && s->memo_gen[comp_slot(s, c)] == s->gen; }

// The circuit without `drop` (kind, layer, index; kind -1: nothing dropped) as a keep set in comps.
static int64_t circuit_set(const search *s, int drop_kind, int64_t dl, int64_t dh, ps_component *comps) {
    int64_t n = 0;
    for (int64_t l = 0; l < s->L; l++) {
        for (int64_t h = 0; h < s->H; h++)
            if (s->head[l * s->H + h] && !(drop_kind == PS_COMP_HEAD && dl == l && dh == h))
                comps[n++] = (ps_component){.kind = PS_COMP_HEAD, .layer = l, .index = h};
        if (s->mlp[l] && !(drop_kind == PS_COMP_MLP && dl == l))
            comps[n++] = (ps_component){.kind = PS_COMP_MLP, .layer = l, .index = -1};
    }
    return n;
}

// A removal (kind -1: the end): the runs it changes are stale (their device copies released; the host memory
// is kept for the next runs). A removal at layer l leaves the runs' layers below l as they are (an ablation acts
// from its own layer on), so they are rewritten from the lowest such l (ps_abl_run_set's from).
static void drop_current(search *s, int kind, int64_t layer) {
    s->gen++; // every score known so far was for another circuit
    if (layer < 0) layer = 0;
    if (s->base_ok) ps_backend_release_caches(s->a->be, s->base, s->a->ps->n);
    if (s->base_ok || layer < s->base_from) s->base_from = layer;
    s->base_ok = 0;
    s->a->base = NULL;
    if (kind != PS_COMP_MLP) {
        if (s->ref_ok) ps_backend_release_caches(s->a->be, s->ref_base, s->o->ref->n);
        if (s->ref_ok || layer < s->ref_from) s->ref_from = layer;
        s->ref_ok = 0;
        if (layer < s->mm_valid) s->mm_valid = layer;
    }
}

static void free_runs(search *s) {
    drop_current(s, -1, -1);
    if (s->base_init) ps_backend_drop_caches(s->a->be, s->base, s->a->ps->n);
    if (s->ref_init) ps_backend_drop_caches(s->a->be, s->ref_base, s->o->ref->n);
    s->base_init = s->ref_init = 0;
    if (s->cur_mm_ok) ps_ref_means_free(&s->cur_mm);
    s->cur_mm_ok = 0;
}

// 1 when the circuit without `cand` (NULL: the circuit) mean-ablates layer m's MLP, i.e. reads its mean.
static int mlp_read(const search *s, const ps_component *cand, int64_t m) {
    return !s->mlp[m] || (cand && cand->kind == PS_COMP_MLP && cand->layer == m);
}

// 1 + the highest layer in [0, below) whose MLP mean that set reads; 0 when none.
static int64_t mlp_read_end(const search *s, const ps_component *cand, int64_t below) {
    for (int64_t m = below; m > 0; m--)
        if (mlp_read(s, cand, m - 1)) return m;
    return 0;
}

static int all_heads_kept(const search *s) {
    for (int64_t i = 0; i < s->L * s->H; i++)
        if (!s->head[i]) return 0;
    return 1;
}

// A circuit that keeps every head ablates none in the reference runs, so its MLP means under the head ablation are
// the plain reference means (the same rows in the same blocks of ps_abl_block prompts: bitwise at the default
// block), copied into cur_mm instead of taken again.
static int plain_mlp_means(search *s, ps_error *e) {
    const ps_ref_means *rm = s->a->means;
    ps_ref_means *mm = &s->cur_mm;
    memset(mm, 0, sizeof *mm);
    mm->group = rm->group;
    mm->n_groups = rm->n_groups;
    mm->rows = rm->rows;
    mm->n_ref = rm->n_ref;
    mm->group_count = malloc((size_t)rm->n_groups * sizeof *mm->group_count);
    if (!mm->group_count) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the MLP means");
    memcpy(mm->group_count, rm->group_count, (size_t)rm->n_groups * sizeof *mm->group_count);
    static const int sites[2] = {PS_MS_MLP_OUT, PS_MS_MLP_POST};
    for (int k = 0; k < 2; k++) {
        const int ms = sites[k];
        const size_t n = (size_t)(s->L * rm->n_groups * rm->rows * rm->width[ms]);
        mm->width[ms] = rm->width[ms];
        if (!(mm->site[ms] = malloc(n * sizeof(float)))) { ps_ref_means_free(mm); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the MLP means"); }
        memcpy(mm->site[ms], rm->site[ms], n * sizeof(float));
    }
    return 0;
}

// The current circuit's MLP means, valid at least for layers [0, upto) (0: none needed).
static int need_mm(search *s, int64_t upto, ps_error *e) {
    if (s->o->naive) upto = s->L;   // the oracle: the circuit's means afresh each time, every layer
    if (!s->o->mlp_means_under_heads || upto <= 0 || (s->cur_mm_ok && upto <= s->mm_valid && !s->o->naive)) return 0;
    if (s->cur_mm_ok) ps_ref_means_free(&s->cur_mm);
    s->cur_mm_ok = 0;
    const ps_ref_means *rm = s->a->means;
    if (!s->o->naive && all_heads_kept(s) && rm && rm->site[PS_MS_MLP_OUT] && rm->site[PS_MS_MLP_POST]) {
        if (plain_mlp_means(s, e) != 0) return -1;
        s->cur_mm_ok = 1;
        s->mm_valid = s->L;
        return 0;
    }
    const int64_t per_set = s->L * s->H + s->L;
    ps_component *c = s->comps + 63 * per_set;   // the last slot: a batch uses at most 63 others
    const ps_abl_set set = {.c = c, .n = circuit_set(s, -1, -1, -1, c), .keep = 1};
    if (ps_ablator_mlp_means_under(s->a, s->o->ref, &set, &s->cur_mm, e) != 0) return -1;
    s->cur_mm_ok = 1;
    s->mm_valid = s->L;
    return 0;
}

// The current circuit's runs of the scored prompts (and their MLP means), when missing.
static int need_current(search *s, ps_error *e) {
    if (need_mm(s, mlp_read_end(s, NULL, s->L), e) != 0) return -1;
    if (s->base && !s->base_ok) {
        const int64_t per_set = s->L * s->H + s->L;
        ps_component *c = s->comps + 63 * per_set;
        const ps_abl_set set = {.c = c, .n = circuit_set(s, -1, -1, -1, c), .keep = 1, .mlp_means = s->cur_mm_ok ? &s->cur_mm : NULL};
        s->a->base = NULL;
        if (ps_abl_run_set(s->a, s->a->ps, &set, 0, s->base_init, s->base_init ? s->base_from : 0, s->base, e) != 0) {
            s->base_init = 0;   // run_set freed them
            return -1;
        }
        s->base_init = s->base_ok = 1;
    }
    s->a->base = s->base_ok ? s->base : NULL;
    return 0;
}

// The reference prompts' runs under the current circuit's head ablation, when missing.
static int need_ref(search *s, ps_error *e) {
    if (!s->ref_base || s->ref_ok) return 0;
    const int64_t per_set = s->L * s->H + s->L;
    ps_component *c = s->comps + 63 * per_set;
    const ps_abl_set set = {.c = c, .n = circuit_set(s, -1, -1, -1, c), .keep = 1};
    if (ps_abl_run_set(s->a, s->o->ref, &set, 1, s->ref_init, s->ref_init ? s->ref_from : 0, s->ref_base, e) != 0) {
        s->ref_init = 0;
        return -1;
    }
    s->ref_init = s->ref_ok = 1;
    return 0;
}

// Scores of the circuit without each of cands[0..k) (seqcont: 100 x mean metric / mean full).
static int score_candidates(search *s, const ps_component *cands, int64_t k, double *score, ps_error *e) {
    ps_abl_set sets[64];
    const int64_t per_set = s->L * s->H + s->L, n = s->a->ps->n;
    uint8_t own[64] = {0};
    if (need_current(s, e) != 0) return -1;
    for (int64_t j = 0; j < k; j++) {
        ps_component *c = s->comps + j * per_set;
        const int64_t nc = circuit_set(s, (int)cands[j].kind, cands[j].layer, cands[j].index, c);
        sets[j] = (ps_abl_set){.c = c, .n = nc, .keep = 1};
        if (!s->o->mlp_means_under_heads) continue;
        // The oracle: every set's MLP means from full reference runs under its own heads, read or not (seqcont's way).
        if (s->o->naive) {
            if (ps_ablator_mlp_means_under(s->a, s->o->ref, &sets[j], &s->mlp_means[j], e) != 0) goto fail;
            own[j] = 1;
            sets[j].mlp_means = &s->mlp_means[j];
            continue;
        }
        // An MLP candidate keeps the circuit's heads, so its MLP means are the circuit's; so are a head candidate's
        // below its layer (a head of layer l changes the MLP means from layer l on).
        const int64_t from = cands[j].kind == PS_COMP_MLP ? s->L : cands[j].layer;
        if (mlp_read_end(s, &cands[j], s->L) <= from) {
            if (need_mm(s, mlp_read_end(s, &cands[j], from), e) != 0) goto fail;
            sets[j].mlp_means = s->cur_mm_ok ? &s->cur_mm : NULL;
            continue;
        }
        // seqcont's add_ablation_hook_MLP_head takes the MLP means with the set's heads hooked: from the circuit's
        // reference runs when held (rows from the candidate's layer; the layers below copied from the circuit's means
        // when those are valid where the set reads them, else captured from the runs).
        int rc = need_ref(s, e);
        if (rc == 0 && s->ref_ok) {
            const int below = s->cur_mm_ok && mlp_read_end(s, &cands[j], from) <= s->mm_valid;
            rc = ps_ablator_mlp_means_under_from(s->a, s->o->ref, &sets[j], s->ref_base, below ? from : 0, below ? &s->cur_mm : NULL,
                                                 &s->mlp_means[j], e);
        } else if (rc == 0) {
            rc = ps_ablator_mlp_means_under(s->a, s->o->ref, &sets[j], &s->mlp_means[j], e);
        }
        if (rc != 0) goto fail;
        own[j] = 1;
        sets[j].mlp_means = &s->mlp_means[j];
    }
    int rc = ps_ablator_score(s->a, sets, k, s->values, e);
    for (int64_t j = 0; j < k; j++) {
        if (rc == 0) score[j] = 100.0 * ps_abl_scores_of(s->a, s->values + j * n).faithfulness;
        if (own[j]) ps_ref_means_free(&s->mlp_means[j]);
    }
    s->out->candidates_scored += k;
    return rc;
fail:
    for (int64_t i = 0; i < k; i++)
        if (own[i]) ps_ref_means_free(&s->mlp_means[i]);
    return -1;
}

static int add_step(search *s, const ps_search_step *st, ps_error *e) {
    ps_search_result *r = s->out;
    if (r->n_steps == s->cap_steps) {
        const int64_t cap = s->cap_steps ? 2 * s->cap_steps : 64;
        ps_search_step *p = realloc(r->steps, (size_t)cap * sizeof *p);
        if (!p) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the search trace");
        r->steps = p;
        s->cap_steps = cap;
    }
    r->steps[r->n_steps++] = *st;
    return 0;
}

// One pass: backward (layers L-1 .. 0, the MLP before the heads) or forward (0 .. L-1, heads before the
// MLP). Returns 1 when the circuit changed, 0 when not, -1 on error.
static int run_pass(search *s, int64_t pass, int backward, double *current, ps_error *e) {
    const int64_t L = s->L, H = s->H;
    // seqcont: an empty head (or MLP) list at the start of a pass means the full model's.
    // Every layer changes then: the held runs and means are stale from layer 0.
    int any = 0;
    for (int64_t i = 0; i < L * H; i++) any |= s->head[i];
    if (!any) { memset(s->head, 1, (size_t)(L * H)); drop_current(s, PS_COMP_HEAD, 0); }
    any = 0;
    for (int64_t l = 0; l < L; l++) any |= s->mlp[l];
    if (!any) { memset(s->mlp, 1, (size_t)L); drop_current(s, PS_COMP_MLP, 0); }
    // Candidates in order: those in the circuit now (a removal changes no later candidate's membership).
    ps_component *cand = malloc((size_t)(L * H + L) * sizeof *cand);
    if (!cand) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    int64_t n = 0;
    for (int64_t i = 0; i < L; i++) {
        const int64_t l = backward ? L - 1 - i : i;
        if (backward && s->mlp[l]) cand[n++] = (ps_component){.kind = PS_COMP_MLP, .layer = l, .index = -1};
        for (int64_t h = 0; h < H; h++)
            if (s->head[l * H + h]) cand[n++] = (ps_component){.kind = PS_COMP_HEAD, .layer = l, .index = h};
        if (!backward && s->mlp[l]) cand[n++] = (ps_component){.kind = PS_COMP_MLP, .layer = l, .index = -1};
    }
    // Default: enough candidates for about 32 prompt rows a batch. A removal discards the rest of its batch, and
    // one candidate's rows fill the backend's batches once there are a few dozen prompts (measured: 24 prompts,
    // speculate 1 took 0.63 s CPU, 8 took 0.83 s).
    const int64_t np = s->a->ps->n > 0 ? s->a->ps->n : 1, k_auto = (32 + np - 1) / np;
    const int64_t k_max = s->o->speculate > 0 ? (s->o->speculate < 63 ? s->o->speculate : 63) : (k_auto < 8 ? k_auto : 8);
    double score[64];
    int changed = 0;
    for (int64_t i = 0; i < n;) {
        // A batch: the candidates from i whose scores for this circuit are not known yet (a known one is read, not
        // scored: it ends the batch, since a removal there would change the circuit for those after it).
        int64_t k = 0;
        if (known(s, &cand[i])) {
            score[0] = s->memo[comp_slot(s, &cand[i])];
            k = 1;
            s->out->candidates_reused++;
        } else {
            while (k < k_max && i + k < n && !known(s, &cand[i + k])) k++;
            if (score_candidates(s, cand + i, k, score, e) != 0) { free(cand); return -1; }
            for (int64_t j = 0; s->memo && j < k; j++) {
                s->memo[comp_slot(s, &cand[i + j])] = score[j];
                s->memo_gen[comp_slot(s, &cand[i + j])] = s->gen;
            }
        }
        int64_t j = 0;
        for (; j < k; j++) {
            const int removed = (100.0 - score[j]) < s->o->threshold;
            ps_search_step st = {.pass = pass, .cand = cand[i + j], .score_before = *current, .score = score[j], .removed = removed};
            if (add_step(s, &st, e) != 0) { free(cand); return -1; }
            if (removed) {
                // The removal takes effect at once: the rest of this batch assumed it had not.
                if (cand[i + j].kind == PS_COMP_HEAD) s->head[cand[i + j].layer * H + cand[i + j].index] = 0;
                else s->mlp[cand[i + j].layer] = 0;
                drop_current(s, (int)cand[i + j].kind, cand[i + j].layer);
                *current = score[j];
                changed = 1;
                j++;
                break;
            }
        }
        i += j;
    }
    free(cand);
    return changed;
}

void ps_search_run_bytes(const ps_ablator *a, const ps_search_opts *o, size_t *base_bytes, size_t *ref_bytes) {
    const ps_model_config *mc = &a->m->cfg;
    size_t ps_bytes = 0, rb = 0;
    const size_t budget = o->base_budget ? o->base_budget : PS_SEARCH_BASE_BUDGET;
    const unsigned fl = a->heads_at_result ? PS_CACHE_RESULT : 0;
    for (int64_t i = 0; i < a->ps->n; i++) ps_bytes += ps_cache_floats(mc, a->ps->p[i].T, fl) * sizeof(float);
    for (int64_t i = 0; o->mlp_means_under_heads && o->ref && i < o->ref->n; i++)
        rb += ps_cache_floats(mc, o->ref->p[i].T, fl) * sizeof(float);
    const int base_too = !o->naive && ps_bytes <= budget;
    *base_bytes = base_too ? ps_bytes : 0;
    *ref_bytes = base_too && o->mlp_means_under_heads && o->ref && ps_bytes + rb <= budget ? rb : 0;
}

int ps_circuit_search(ps_ablator *a, const ps_search_opts *o, ps_search_result *out, ps_error *e) {
    memset(out, 0, sizeof *out);
    const ps_model_config *mc = &a->m->cfg;
    search s = {.a = a, .o = o, .L = mc->n_layers, .H = mc->n_heads, .out = out};
    if (o->mlp_means_under_heads && (!o->ref || a->method != PS_ABL_MEAN)) {
        ps_backend_drop_caches(a->be, o->full_runs, a->ps->n);   // (ours from the call on)
        return ps_fail(e, PS_EXIT_BADINPUT, "circuit_search: mlp_means under_head_ablation needs mean ablation and the reference prompts");
    }
    const int64_t per_set = s.L * s.H + s.L;
    out->head_kept = malloc((size_t)(s.L * s.H));
    out->mlp_kept = malloc((size_t)s.L);
    s.comps = malloc((size_t)(64 * per_set) * sizeof *s.comps);
    s.mlp_means = calloc(64, sizeof *s.mlp_means);
    s.values = malloc((size_t)(64 * (a->ps->n ? a->ps->n : 1)) * sizeof(float));
    // The oracle (naive) scores every step afresh, as seqcont's loop does.
    if (!o->naive) {
        s.memo = malloc((size_t)per_set * sizeof *s.memo);
        s.memo_gen = malloc((size_t)per_set * sizeof *s.memo_gen);
        for (int64_t i = 0; s.memo_gen && i < per_set; i++) s.memo_gen[i] = -1;
    }
    int rc = 0;
    if (!out->head_kept || !out->mlp_kept || !s.comps || !s.mlp_means || !s.values || (!o->naive && (!s.memo || !s.memo_gen)))
        rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    const unsigned fl = a->heads_at_result ? PS_CACHE_RESULT : 0;   // the runs hold hook_result then (ablation.c's run_set)
    size_t base_bytes, ref_bytes;
    ps_search_run_bytes(a, o, &base_bytes, &ref_bytes);
    const int ref_too = ref_bytes > 0;
    if (rc == 0 && base_bytes > 0) {
        s.base = calloc((size_t)(a->ps->n ? a->ps->n : 1), sizeof *s.base);
        s.ref_base = ref_too ? calloc((size_t)o->ref->n, sizeof *s.ref_base) : NULL;
        if (!s.base || (ref_too && !s.ref_base)) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    }
    // The engine's clean baselines as the first circuit's runs (the full model's, the circuit every search starts
    // from), when the search holds runs of that layout; else freed. (They come from the baselines' own batches, so
    // their rounding is the baselines', not that of blocks of ps_abl_block prompts: the same numbers within it.)
    if (o->full_runs) {
        if (rc == 0 && s.base && !fl) {
            memcpy(s.base, o->full_runs, (size_t)a->ps->n * sizeof *s.base);
            s.base_init = s.base_ok = 1;
        } else {
            ps_backend_drop_caches(a->be, o->full_runs, a->ps->n);
        }
    }
    if (rc == 0) {
        s.head = out->head_kept;
        s.mlp = out->mlp_kept;
        memset(s.head, 1, (size_t)(s.L * s.H));
        memset(s.mlp, 1, (size_t)s.L);
        // run_node_ablation.py: backward, stop if unchanged, forward, stop if unchanged, repeat (or once each).
        // seqcont's loop restarts an emptied head (or MLP) list from the full model, so on some models its passes
        // cycle for ever. A pass is a function of the circuit it starts from and its direction: a start seen
        // before in a pass of the same direction repeats all that followed it, so the search stops there.
        const size_t per = (size_t)(s.L * s.H + s.L);
        uint8_t *seen = NULL;
        out->cycle_from = -1;
        double current = 100.0;
        // The unablated metric from the first circuit's runs (the full model's: rows that change nothing, unembedded).
        if (a->full_later && ((s.base && need_current(&s, e) != 0) || ps_ablator_full(a, e) != 0)) rc = -1;
        for (int64_t pass = 0; rc == 0; pass++) {
            uint8_t *grown = realloc(seen, (size_t)(pass + 1) * per);
            if (!grown) { rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); break; }
            seen = grown;
            memcpy(seen + (size_t)pass * per, s.head, (size_t)(s.L * s.H));
            memcpy(seen + (size_t)pass * per + (size_t)(s.L * s.H), s.mlp, (size_t)s.L);
            for (int64_t q = pass % 2; q < pass && out->cycle_from < 0; q += 2)
                if (memcmp(seen + (size_t)q * per, seen + (size_t)pass * per, per) == 0) out->cycle_from = q;
            if (out->cycle_from >= 0) break;
            const int ch = run_pass(&s, pass, pass % 2 == 0, &current, e);
            out->n_passes = pass + 1;
            if (ch < 0) { rc = -1; break; }
            if (!ch) break;
            if (o->one_iter && pass == 1) break;
        }
        free(seen);
    }
    if (rc == 0) {
        // The final circuit's own score (seqcont returns the last candidate's), from its own means and runs.
        rc = need_current(&s, e);
        ps_component *c = s.comps;
        ps_abl_set set = {.c = c, .n = circuit_set(&s, -1, -1, -1, c), .keep = 1, .mlp_means = s.cur_mm_ok ? &s.cur_mm : NULL};
        if (rc == 0) rc = ps_ablator_score(a, &set, 1, s.values, e);
        if (rc == 0) out->final_score = ps_abl_scores_of(a, s.values).circuit_score;
    }
    free_runs(&s);
    free(s.base);
    free(s.ref_base);
    free(s.comps); free(s.mlp_means); free(s.values); free(s.memo); free(s.memo_gen);
    if (rc != 0) ps_search_result_free(out);
    return rc;
}

void ps_search_result_free(ps_search_result *r) {
    if (!r) return;
    free(r->steps); free(r->head_kept); free(r->mlp_kept);
    memset(r, 0, sizeof *r);
}
