// The patching engine against TransformerLens's own patching functions (tests/data/*/golden_patch.safetensors),
// per prompt, every sweep kind, both directions, at 1e-4; and the skipping engine against the naive engine
// (one full forward per patch, nothing reused) for every metric, batch size and cache budget.
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_engine.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>


// Randomized experiments (the check of the skipping engine): random sites, layouts, layer/head/
// neuron/position subsets (negative positions included), directions, metrics, batch sizes and metric
// positions, each compared with the naive engine at 1e-4. Seeded, so a failure repeats.
static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}
static int64_t rng_below(uint64_t *s, int64_t n) { return (int64_t)(rng_next(s) % (uint64_t)n); }

// k distinct values from [lo, lo + n), ascending.
static int64_t rng_subset(uint64_t *s, int64_t *out, int64_t k, int64_t lo, int64_t n) {
    int64_t m = 0;
    for (int64_t i = 0; i < n && m < k; i++)
        if (rng_below(s, n - i) < k - m) out[m++] = lo + i;
    return m;
}

static void randomized(const char *model, pf_fixture *f, ps_backend *be) {
    const ps_model_config *mc = &f->m.cfg;
    int64_t T_min = f->ps.T_max;
    for (int64_t i = 0; i < f->ps.n; i++) T_min = f->ps.p[i].T < T_min ? f->ps.p[i].T : T_min;
    static const struct { ps_site site; ps_layout layouts[3]; int n; } SITES[] = {
        {PS_SITE_RESID_PRE, {PS_BY_LAYER_POS, PS_BY_LAYER}, 2},   {PS_SITE_RESID_MID, {PS_BY_LAYER_POS, PS_BY_LAYER}, 2},
        {PS_SITE_RESID_POST, {PS_BY_LAYER_POS, PS_BY_LAYER}, 2},  {PS_SITE_ATTN_OUT, {PS_BY_LAYER_POS, PS_BY_LAYER}, 2},
        {PS_SITE_MLP_OUT, {PS_BY_LAYER_POS, PS_BY_LAYER}, 2},
        {PS_SITE_Q, {PS_BY_LAYER_POS, PS_BY_LAYER_HEAD, PS_BY_LAYER_POS_HEAD}, 3},
        {PS_SITE_K, {PS_BY_LAYER_POS, PS_BY_LAYER_HEAD, PS_BY_LAYER_POS_HEAD}, 3},
        {PS_SITE_V, {PS_BY_LAYER_POS, PS_BY_LAYER_HEAD, PS_BY_LAYER_POS_HEAD}, 3},
        {PS_SITE_Z, {PS_BY_LAYER_POS, PS_BY_LAYER_HEAD, PS_BY_LAYER_POS_HEAD}, 3},
        {PS_SITE_PATTERN, {PS_BY_LAYER_HEAD, PS_BY_LAYER_POS_HEAD}, 2},
        {PS_SITE_MLP_POST, {PS_BY_LAYER_NEURON}, 1},
    };
    enum { NSITES = sizeof SITES / sizeof SITES[0], NX = 6, ITERS = 4 };
    const ps_metric_kind metrics[] = {PS_METRIC_LOGIT_DIFF, PS_METRIC_PROB_DIFF, PS_METRIC_LOGPROB, PS_METRIC_KL};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (const char *c = model; *c; c++) seed = (seed ^ (uint64_t)(unsigned char)*c) * 1099511628211ull;
    for (int it = 0; it < ITERS; it++) {
        ps_experiment ex[NX];
        char names[NX][48];
        int64_t lists[NX][4][16];
        memset(ex, 0, sizeof ex);
        for (int k = 0; k < NX; k++) {
            ps_experiment *x = &ex[k];
            int si = (int)rng_below(&seed, NSITES);
            while (!ps_array_in_model(mc, ps_site_array(SITES[si].site))) si = (int)rng_below(&seed, NSITES); // resid_mid of a parallel block
            x->site = SITES[si].site;
            x->layout = SITES[si].layouts[rng_below(&seed, SITES[si].n)];
            x->direction = rng_below(&seed, 2) ? PS_DIR_NOISE : PS_DIR_DENOISE;
            snprintf(names[k], sizeof names[k], "r%d_%d_%s_%s_%s", it, k, ps_site_name(x->site), ps_layout_name(x->layout),
                     ps_direction_name(x->direction));
            x->name = names[k];
            if (rng_below(&seed, 3)) { // else all layers
                x->layers = lists[k][0];
                x->n_layers = rng_subset(&seed, x->layers, 1 + rng_below(&seed, 3), 0, mc->n_layers);
            }
            const int64_t Hs = (x->site == PS_SITE_K || x->site == PS_SITE_V) ? mc->n_kv_heads : mc->n_heads;
            if ((x->layout == PS_BY_LAYER_HEAD || x->layout == PS_BY_LAYER_POS_HEAD) && rng_below(&seed, 2)) {
                x->heads = lists[k][1];
                x->n_heads = rng_subset(&seed, x->heads, 1 + rng_below(&seed, Hs), 0, Hs);
            }
            if (x->layout == PS_BY_LAYER_NEURON) {
                x->neurons = lists[k][2];
                x->n_neurons = rng_subset(&seed, x->neurons, 1 + rng_below(&seed, 6), 0, mc->d_mlp);
            }
            if ((x->layout == PS_BY_LAYER_POS || x->layout == PS_BY_LAYER_POS_HEAD) && rng_below(&seed, 2)) {
                // some positions from the start, some counted from the end of each prompt
                x->positions = lists[k][3];
                int64_t m = rng_subset(&seed, x->positions, 1 + rng_below(&seed, 3), 0, T_min);
                if (rng_below(&seed, 2)) x->positions[m++] = -1 - rng_below(&seed, 2);
                if (m == 2 && x->positions[0] == T_min + x->positions[1]) m = 1; // no duplicate cells
                x->n_positions = m;
            }
        }
        const ps_metric_kind metric = metrics[rng_below(&seed, 4)];
        const int64_t back = rng_below(&seed, 3); // the metric read 0, 1 or 2 tokens before the end
        for (int64_t i = 0; i < f->ps.n; i++) f->ps.p[i].score_pos = f->ps.p[i].lp_pos[0] = f->ps.p[i].T - 1 - back;
        ps_engine_opts fast = {.batch_rows = 1 + rng_below(&seed, 40)}, naive = {.naive = 1};
        ps_run_results a, b;
        ps_error e = {0};
        int ok = ps_engine_run(&f->m, be, &f->ps, ex, NX, metric, &fast, &a, &e) == 0 &&
                 ps_engine_run(&f->m, be, &f->ps, ex, NX, metric, &naive, &b, &e) == 0;
        TU_CHECK(ok, "%s randomized %d: %s", model, it, e.msg);
        if (ok) {
            char what[160];
            snprintf(what, sizeof what, "%s randomized %d (%s, metric %lld tokens from the end, batch %lld) fast vs naive:", model,
                     it, ps_metric_name(metric), (long long)(back + 1), (long long)fast.batch_rows);
            pf_compare_runs(what, &a, &b, f->ps.n, 1e-4f);
        }
        ps_run_results_free(&a);
        ps_run_results_free(&b);
    }
    for (int64_t i = 0; i < f->ps.n; i++) f->ps.p[i].score_pos = f->ps.p[i].lp_pos[0] = f->ps.p[i].T - 1;
}

static void test_model(const char *model) {
    pf_fixture f;
    if (pf_load_or_fail(&f, model) != 0) return;
    ps_error e = {0};
    ps_backend be;
    ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, 0, &f.m, &e);

    ps_engine_opts fast = {0}, naive = {.naive = 1};
    ps_run_results rf, rn;
    if (ps_engine_run(&f.m, &be, &f.ps, f.ex, f.n_ex, PS_METRIC_LOGIT_DIFF, &fast, &rf, &e) != 0) {
        TU_CHECK(0, "%s: engine: %s", model, e.msg);
    } else {
        pf_compare_with_goldens(model, &f, &rf, "fast", 1e-4f);
        int64_t run = 0, skipped = 0;
        for (int64_t s = 0; s < rf.n_tables; s++) { run += rf.tables[s].patches_run; skipped += rf.tables[s].patches_skipped; }
        printf("%s: fast engine ran %lld patches, knew %lld without running\n", model, (long long)run, (long long)skipped);
        TU_CHECK(skipped > 0, "%s: positions before the first changed token should be skipped", model);
    }
    if (ps_engine_run(&f.m, &be, &f.ps, f.ex, f.n_ex, PS_METRIC_LOGIT_DIFF, &naive, &rn, &e) != 0) {
        TU_CHECK(0, "%s: naive engine: %s", model, e.msg);
    } else {
        pf_compare_with_goldens(model, &f, &rn, "naive", 1e-4f);
    }
    ps_run_results_free(&rn);

    // Batch sizes and cache budgets (chunks of one prompt) must not change a number.
    int64_t sizes[] = {1, 7};
    for (int i = 0; i < 2; i++) {
        ps_engine_opts o = {.batch_rows = sizes[i], .cache_budget = 1};
        ps_run_results r;
        if (ps_engine_run(&f.m, &be, &f.ps, f.ex, f.n_ex, PS_METRIC_LOGIT_DIFF, &o, &r, &e) != 0) {
            TU_CHECK(0, "%s: engine batch %lld: %s", model, (long long)sizes[i], e.msg);
            continue;
        }
        char what[128];
        snprintf(what, sizeof what, "%s batch_rows=%lld chunked vs default:", model, (long long)sizes[i]);
        pf_compare_runs(what, &r, &rf, f.ps.n, 1e-5f);
        ps_run_results_free(&r);
    }
    ps_run_results_free(&rf);

    // Every metric: the skipping engine equals the naive one.
    ps_metric_kind metrics[] = {PS_METRIC_PROB_DIFF, PS_METRIC_LOGPROB, PS_METRIC_KL};
    const char *mnames[] = {"prob_diff", "logprob", "kl"};
    for (int k = 0; k < 3; k++) {
        ps_run_results a, b;
        int ok = ps_engine_run(&f.m, &be, &f.ps, f.ex, f.n_ex, metrics[k], &fast, &a, &e) == 0 &&
                 ps_engine_run(&f.m, &be, &f.ps, f.ex, f.n_ex, metrics[k], &naive, &b, &e) == 0;
        TU_CHECK(ok, "%s %s: %s", model, mnames[k], e.msg);
        if (ok) {
            char what[128];
            snprintf(what, sizeof what, "%s %s fast vs naive:", model, mnames[k]);
            pf_compare_runs(what, &a, &b, f.ps.n, 1e-4f);
            if (metrics[k] == PS_METRIC_KL)
                for (int64_t i = 0; i < f.ps.n; i++)
                    TU_CHECK(fabsf(a.base.clean[i]) < 1e-5f, "%s: KL of the clean run from itself is %g", model, a.base.clean[i]);
        }
        ps_run_results_free(&a);
        ps_run_results_free(&b);
    }

    // Sites and layouts TransformerLens has no sweep function for, and positions restricted to the last
    // token and the first (the narrowed last layer): the skipping engine against the naive one.
    {
        static int64_t ends[] = {-1, 0};
        struct { ps_site site; ps_layout layout; int restrict_pos; } extra[] = {
            {PS_SITE_RESID_POST, PS_BY_LAYER_POS, 0}, {PS_SITE_RESID_POST, PS_BY_LAYER, 0},
            {PS_SITE_RESID_PRE, PS_BY_LAYER, 0},      {PS_SITE_MLP_OUT, PS_BY_LAYER, 0},
            {PS_SITE_RESID_MID, PS_BY_LAYER, 0},      {PS_SITE_ATTN_OUT, PS_BY_LAYER_POS, 1},
            {PS_SITE_Z, PS_BY_LAYER_POS_HEAD, 1},     {PS_SITE_RESID_PRE, PS_BY_LAYER_POS, 1},
        };
        enum { NX = sizeof extra / sizeof extra[0] };
        ps_experiment ex[2 * NX];
        char names[2 * NX][48];
        int n_ex = 0;
        memset(ex, 0, sizeof ex);
        for (int d = 0; d < 2; d++)
            for (int k = 0; k < NX; k++) {
                if (!ps_array_in_model(&f.m.cfg, ps_site_array(extra[k].site))) continue;
                ps_experiment *x = &ex[n_ex];
                snprintf(names[n_ex], sizeof names[0], "%s_%s_%s%s", d ? "noise" : "denoise", ps_site_name(extra[k].site),
                         ps_layout_name(extra[k].layout), extra[k].restrict_pos ? "_ends" : "");
                x->name = names[n_ex++];
                x->site = extra[k].site;
                x->layout = extra[k].layout;
                x->direction = d ? PS_DIR_NOISE : PS_DIR_DENOISE;
                if (extra[k].restrict_pos) { x->positions = ends; x->n_positions = 2; }
            }
        ps_metric_kind ms[] = {PS_METRIC_LOGIT_DIFF, PS_METRIC_PROB_DIFF, PS_METRIC_LOGIT_DIFF};
        for (int k = 0; k < 3; k++) {
            // The third pass reads the metric two tokens before the end, so patches come after it and rows
            // start before their patch: what a narrowed row does not recompute must stay base's.
            for (int64_t i = 0; k == 2 && i < f.ps.n; i++) f.ps.p[i].score_pos = f.ps.p[i].T - 3;
            ps_run_results a, b;
            int ok = ps_engine_run(&f.m, &be, &f.ps, ex, n_ex, ms[k], &fast, &a, &e) == 0 &&
                     ps_engine_run(&f.m, &be, &f.ps, ex, n_ex, ms[k], &naive, &b, &e) == 0;
            TU_CHECK(ok, "%s extra sites: %s", model, e.msg);
            if (ok) {
                char what[128];
                snprintf(what, sizeof what, "%s %s fast vs naive:", model,
                         k == 0 ? "logit_diff" : k == 1 ? "prob_diff" : "logit_diff read at T-3");
                pf_compare_runs(what, &a, &b, f.ps.n, 1e-4f);
            }
            ps_run_results_free(&a);
            ps_run_results_free(&b);
        }
        for (int64_t i = 0; i < f.ps.n; i++) f.ps.p[i].score_pos = f.ps.p[i].T - 1;
    }
    randomized(model, &f, &be);
    ps_backend_free(&be);
    pf_free(&f);
}

int main(void) {
    int tested = gu_for_each_model(test_model);
    printf("%d models' patching compared with TransformerLens\n", tested);
    return tu_done("engine");
}
