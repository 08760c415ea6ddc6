// The patching engine against TransformerLens's own patching functions (tests/data/*/golden_patch.safetensors),
// per prompt, every sweep kind, both directions, at 1e-4; and the skipping engine against the naive engine
// (one full forward per patch, nothing reused) for every metric, batch size and cache budget.
#include "golden_util.h"
#include "ps_engine.h"
#include "testutil.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *key;      // golden sweep name
    ps_site site;
    ps_layout layout;
    int head_before_pos;  // golden is (layer, head, pos) while we lay out (layer, pos, head)
} sweep_kind;

static const sweep_kind KINDS[] = {
    {"resid_pre", PS_SITE_RESID_PRE, PS_BY_LAYER_POS, 0},
    {"resid_mid", PS_SITE_RESID_MID, PS_BY_LAYER_POS, 0},
    {"attn_out", PS_SITE_ATTN_OUT, PS_BY_LAYER_POS, 0},
    {"mlp_out", PS_SITE_MLP_OUT, PS_BY_LAYER_POS, 0},
    {"z_all_pos", PS_SITE_Z, PS_BY_LAYER_HEAD, 0},
    {"q_all_pos", PS_SITE_Q, PS_BY_LAYER_HEAD, 0},
    {"k_all_pos", PS_SITE_K, PS_BY_LAYER_HEAD, 0},
    {"v_all_pos", PS_SITE_V, PS_BY_LAYER_HEAD, 0},
    {"pattern_all_pos", PS_SITE_PATTERN, PS_BY_LAYER_HEAD, 0},
    {"z_by_pos", PS_SITE_Z, PS_BY_LAYER_POS_HEAD, 0},
    {"q_by_pos", PS_SITE_Q, PS_BY_LAYER_POS_HEAD, 0},
    {"k_by_pos", PS_SITE_K, PS_BY_LAYER_POS_HEAD, 0},
    {"v_by_pos", PS_SITE_V, PS_BY_LAYER_POS_HEAD, 0},
    {"pattern_by_pos", PS_SITE_PATTERN, PS_BY_LAYER_POS_HEAD, 1},
    {"neuron", PS_SITE_MLP_POST, PS_BY_LAYER_NEURON, 0},
};
enum { NK = sizeof KINDS / sizeof KINDS[0] };

typedef struct {
    ps_model m;
    ps_safetensors g;
    ps_prompt_set ps;
    ps_experiment ex[2 * NK];
    char names[2 * NK][64];
} fixture;

static int fixture_load(fixture *f, const char *model, ps_error *e) {
    memset(f, 0, sizeof *f);
    char dir[512], gp[600];
    snprintf(dir, sizeof dir, "%s/%s", tu_src("tests/data"), model);
    snprintf(gp, sizeof gp, "%s/golden_patch.safetensors", dir);
    if (ps_model_load(&f->m, dir, e) != 0) return -1;
    if (ps_safetensors_open(&f->g, gp, e) != 0) return -1;
    int n = 0;
    while (1) {
        char key[64];
        snprintf(key, sizeof key, "p%d.clean_tokens", n);
        if (!ps_safetensors_find(&f->g, key)) break;
        n++;
    }
    f->ps.n = n;
    f->ps.p = calloc((size_t)n, sizeof *f->ps.p);
    for (int i = 0; i < n; i++) {
        ps_prompt *p = &f->ps.p[i];
        char key[64];
        int64_t k;
        snprintf(key, sizeof key, "p%d.clean_tokens", i);
        p->clean = gu_i32(&f->g, key, &p->T);
        snprintf(key, sizeof key, "p%d.corrupted_tokens", i);
        p->corrupted = gu_i32(&f->g, key, &k);
        snprintf(key, sizeof key, "p%d.answer", i);
        int32_t *a = gu_i32(&f->g, key, &k);
        snprintf(key, sizeof key, "p%d.wrong", i);
        int32_t *w = gu_i32(&f->g, key, &k);
        p->T_prompt = p->T;
        p->score_pos = p->T - 1;
        p->answer_id = a[0];
        p->wrong_id = w[0];
        p->n_lp = 1;
        p->lp_pos = malloc(sizeof(int64_t));
        p->lp_tok = malloc(sizeof(int32_t));
        p->lp_pos[0] = p->T - 1;
        p->lp_tok[0] = a[0];
        free(a);
        free(w);
        if (p->T > f->ps.T_max) f->ps.T_max = p->T;
    }
    for (int d = 0; d < 2; d++)
        for (int k = 0; k < NK; k++) {
            ps_experiment *x = &f->ex[d * NK + k];
            snprintf(f->names[d * NK + k], 64, "%s_%s", d ? "noise" : "denoise", KINDS[k].key);
            x->name = f->names[d * NK + k];
            x->site = KINDS[k].site;
            x->layout = KINDS[k].layout;
            x->direction = d ? PS_DIR_NOISE : PS_DIR_DENOISE;
        }
    return 0;
}

static void fixture_free(fixture *f) {
    ps_prompt_set_free(&f->ps);
    ps_safetensors_free(&f->g);
    ps_model_free(&f->m);
}

// Our cell for (prompt p, golden index) of a sweep whose golden has p's own length on the pos axis.
static void compare_with_goldens(const char *model, fixture *f, const ps_run_results *rr, const char *mode) {
    for (int64_t i = 0; i < f->ps.n; i++) {
        char key[128], nm[256];
        int64_t n;
        snprintf(key, sizeof key, "p%lld.clean_metric", (long long)i);
        float *cm = gu_f32(&f->g, key, &n);
        snprintf(key, sizeof key, "p%lld.corrupted_metric", (long long)i);
        float *xm = gu_f32(&f->g, key, &n);
        snprintf(nm, sizeof nm, "%s [%s] p%lld baseline clean", model, mode, (long long)i);
        tu_close(nm, &rr->base.clean[i], cm, 1, 1e-4f, 1e-4f);
        snprintf(nm, sizeof nm, "%s [%s] p%lld baseline corrupted", model, mode, (long long)i);
        tu_close(nm, &rr->base.corrupted[i], xm, 1, 1e-4f, 1e-4f);
        free(cm);
        free(xm);
        for (int64_t s = 0; s < rr->n_sweeps; s++) {
            const ps_sweep *sw = &rr->sweeps[s];
            const int k = (int)(s % NK);
            snprintf(key, sizeof key, "p%lld.%s.%s", (long long)i, sw->ex->direction ? "noise" : "denoise", KINDS[k].key);
            float *want = gu_f32(&f->g, key, &n);
            if (!want) { TU_CHECK(0, "%s: golden %s missing", model, key); continue; }
            // Gather our values for this prompt into the golden's layout.
            float *got = malloc((size_t)n * sizeof(float));
            const float *v = sw->values + i * sw->n_cells;
            const int64_t T = f->ps.p[i].T, Tm = f->ps.T_max;
            int64_t at = 0;
            if (sw->n_axes == 2 && !strcmp(sw->axis_name[1], "pos")) {
                for (int64_t l = 0; l < sw->axis_len[0]; l++)
                    for (int64_t t = 0; t < T; t++) got[at++] = v[l * Tm + t];
            } else if (sw->n_axes == 2) {
                for (int64_t c = 0; c < sw->n_cells; c++) got[at++] = v[c];
            } else {
                const int64_t Hs = sw->axis_len[2];
                for (int64_t l = 0; l < sw->axis_len[0]; l++) {
                    if (KINDS[k].head_before_pos) {
                        for (int64_t h = 0; h < Hs; h++)
                            for (int64_t t = 0; t < T; t++) got[at++] = v[(l * Tm + t) * Hs + h];
                    } else {
                        for (int64_t t = 0; t < T; t++)
                            for (int64_t h = 0; h < Hs; h++) got[at++] = v[(l * Tm + t) * Hs + h];
                    }
                }
            }
            if (at != n) {
                TU_CHECK(0, "%s %s: %lld cells, golden has %lld", model, key, (long long)at, (long long)n);
            } else {
                snprintf(nm, sizeof nm, "%s [%s] %s", model, mode, key);
                tu_close(nm, got, want, n, 1e-4f, 1e-4f);
            }
            // Cells past this prompt's length are NaN, never a number.
            if (sw->n_axes >= 2 && !strcmp(sw->axis_name[1], "pos") && T < Tm) {
                int nan_ok = 1;
                const int64_t inner = sw->n_axes == 3 ? sw->axis_len[2] : 1;
                for (int64_t l = 0; l < sw->axis_len[0]; l++)
                    for (int64_t t = T; t < Tm; t++)
                        for (int64_t h = 0; h < inner; h++) nan_ok &= isnan(v[(l * Tm + t) * inner + h]);
                TU_CHECK(nan_ok, "%s %s: cells past the prompt's length must be NaN", model, key);
            }
            free(got);
            free(want);
        }
    }
}

static void compare_runs(const char *what, const ps_run_results *a, const ps_run_results *b, int64_t n_prompts, float tol) {
    char nm[256];
    snprintf(nm, sizeof nm, "%s baseline", what);
    tu_close(nm, a->base.clean, b->base.clean, n_prompts, tol, tol);
    for (int64_t s = 0; s < a->n_sweeps; s++) {
        snprintf(nm, sizeof nm, "%s %s", what, a->sweeps[s].ex->name);
        tu_close(nm, a->sweeps[s].values, b->sweeps[s].values, n_prompts * a->sweeps[s].n_cells, tol, tol);
    }
}

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

static void randomized(const char *model, fixture *f, ps_backend *be) {
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
            const int si = (int)rng_below(&seed, NSITES);
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
            compare_runs(what, &a, &b, f->ps.n, 1e-4f);
        }
        ps_run_results_free(&a);
        ps_run_results_free(&b);
    }
    for (int64_t i = 0; i < f->ps.n; i++) f->ps.p[i].score_pos = f->ps.p[i].lp_pos[0] = f->ps.p[i].T - 1;
}

static void test_model(const char *model) {
    fixture f;
    ps_error e = {0};
    if (fixture_load(&f, model, &e) != 0) {
        TU_CHECK(0, "%s: %s", model, e.msg);
        fixture_free(&f);
        return;
    }
    ps_backend be;
    ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, 0, &f.m, &e);

    ps_engine_opts fast = {0}, naive = {.naive = 1};
    ps_run_results rf, rn;
    if (ps_engine_run(&f.m, &be, &f.ps, f.ex, 2 * NK, PS_METRIC_LOGIT_DIFF, &fast, &rf, &e) != 0) {
        TU_CHECK(0, "%s: engine: %s", model, e.msg);
    } else {
        compare_with_goldens(model, &f, &rf, "fast");
        int64_t run = 0, skipped = 0;
        for (int64_t s = 0; s < rf.n_sweeps; s++) { run += rf.sweeps[s].patches_run; skipped += rf.sweeps[s].patches_skipped; }
        printf("%s: fast engine ran %lld patches, knew %lld without running\n", model, (long long)run, (long long)skipped);
        TU_CHECK(skipped > 0, "%s: positions before the first changed token should be skipped", model);
    }
    if (ps_engine_run(&f.m, &be, &f.ps, f.ex, 2 * NK, PS_METRIC_LOGIT_DIFF, &naive, &rn, &e) != 0) {
        TU_CHECK(0, "%s: naive engine: %s", model, e.msg);
    } else {
        compare_with_goldens(model, &f, &rn, "naive");
    }
    ps_run_results_free(&rn);

    // Batch sizes and cache budgets (chunks of one prompt) must not change a number.
    int64_t sizes[] = {1, 7};
    for (int i = 0; i < 2; i++) {
        ps_engine_opts o = {.batch_rows = sizes[i], .cache_budget = 1};
        ps_run_results r;
        if (ps_engine_run(&f.m, &be, &f.ps, f.ex, 2 * NK, PS_METRIC_LOGIT_DIFF, &o, &r, &e) != 0) {
            TU_CHECK(0, "%s: engine batch %lld: %s", model, (long long)sizes[i], e.msg);
            continue;
        }
        char what[128];
        snprintf(what, sizeof what, "%s batch_rows=%lld chunked vs default:", model, (long long)sizes[i]);
        compare_runs(what, &r, &rf, f.ps.n, 1e-5f);
        ps_run_results_free(&r);
    }
    ps_run_results_free(&rf);

    // Every metric: the skipping engine equals the naive one.
    ps_metric_kind metrics[] = {PS_METRIC_PROB_DIFF, PS_METRIC_LOGPROB, PS_METRIC_KL};
    const char *mnames[] = {"prob_diff", "logprob", "kl"};
    for (int k = 0; k < 3; k++) {
        ps_run_results a, b;
        int ok = ps_engine_run(&f.m, &be, &f.ps, f.ex, 2 * NK, metrics[k], &fast, &a, &e) == 0 &&
                 ps_engine_run(&f.m, &be, &f.ps, f.ex, 2 * NK, metrics[k], &naive, &b, &e) == 0;
        TU_CHECK(ok, "%s %s: %s", model, mnames[k], e.msg);
        if (ok) {
            char what[128];
            snprintf(what, sizeof what, "%s %s fast vs naive:", model, mnames[k]);
            compare_runs(what, &a, &b, f.ps.n, 1e-4f);
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
        memset(ex, 0, sizeof ex);
        for (int d = 0; d < 2; d++)
            for (int k = 0; k < NX; k++) {
                ps_experiment *x = &ex[d * NX + k];
                snprintf(names[d * NX + k], sizeof names[0], "%s_%s_%s%s", d ? "noise" : "denoise", ps_site_name(extra[k].site),
                         ps_layout_name(extra[k].layout), extra[k].restrict_pos ? "_ends" : "");
                x->name = names[d * NX + k];
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
            int ok = ps_engine_run(&f.m, &be, &f.ps, ex, 2 * NX, ms[k], &fast, &a, &e) == 0 &&
                     ps_engine_run(&f.m, &be, &f.ps, ex, 2 * NX, ms[k], &naive, &b, &e) == 0;
            TU_CHECK(ok, "%s extra sites: %s", model, e.msg);
            if (ok) {
                char what[128];
                snprintf(what, sizeof what, "%s %s fast vs naive:", model,
                         k == 0 ? "logit_diff" : k == 1 ? "prob_diff" : "logit_diff read at T-3");
                compare_runs(what, &a, &b, f.ps.n, 1e-4f);
            }
            ps_run_results_free(&a);
            ps_run_results_free(&b);
        }
        for (int64_t i = 0; i < f.ps.n; i++) f.ps.p[i].score_pos = f.ps.p[i].T - 1;
    }
    randomized(model, &f, &be);
    ps_backend_free(&be);
    fixture_free(&f);
}

int main(void) {
    int tested = gu_for_each_model(test_model);
    printf("%d models' patching compared with TransformerLens\n", tested);
    return tu_done("engine");
}
