// Interventions (ps_patch operations, captures, frozen hooks, head masks) through the engine's row
// planner: every operation against the naive engine (a full forward per row from the embedding, the same
// patch list, nothing skipped or narrowed) on every tiny model and at every site (hook_result too, which must
// also agree with the same operation at hook_z where they are the same linear map), the skip cases (rows known to equal base
// without running), the capability refusal; and zero/mean ablation and frozen hooks of hook_z against
// TransformerLens (tests/data/<model>/golden_interventions.json, tests/golden/make_intervention_goldens.py).
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_engine.h"
#include "ps_json.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL_NAIVE 1e-5f
#define TOL_TL 1e-4f

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) { fprintf(stderr, "test_interventions: out of memory\n"); exit(1); }
    return p;
}

static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13; *s ^= *s >> 7; *s ^= *s << 17;
    return *s;
}
static float rng_f(uint64_t *s) { return (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0); }
static int64_t rng_below(uint64_t *s, int64_t n) { return (int64_t)(rng_next(s) % (uint64_t)n); }

// Runs tokens once with every activation cached (and the patches, if any): a base for the rows.
static int cache_run(ps_backend *be, const ps_model *m, const int32_t *tokens, int64_t T, const ps_patch *patches,
                     int64_t n_patches, ps_cache *c) {
    ps_error e = {0};
    // hook_result too: result patches compare with base's and replace from it like every other site's.
    if (ps_cache_init(c, &m->cfg, T, PS_CACHE_RESULT, &e) != 0) { TU_CHECK(0, "%s", e.msg); return -1; }
    ps_row r = {.tokens = tokens, .T = T, .cache = c, .patches = patches, .n_patches = n_patches};
    ps_rows_opts o = {.naive = 1};
    if (ps_engine_rows(m, be, &r, 1, &o, NULL, &e) != 0) { TU_CHECK(0, "cache run: %s", e.msg); return -1; }
    return 0;
}

// What a category of cases accumulated: the engine's numbers and the naive engine's, end to end.
typedef struct {
    const char *name;
    float *got, *want;
    int64_t n, cap;
} acc;

static void acc_add(acc *a, const float *got, const float *want, int64_t n) {
    if (a->n + n > a->cap) {
        a->cap = (a->n + n) * 2;
        a->got = realloc(a->got, (size_t)a->cap * sizeof(float));
        a->want = realloc(a->want, (size_t)a->cap * sizeof(float));
        if (!a->got || !a->want) { fprintf(stderr, "test_interventions: out of memory\n"); exit(1); }
    }
    memcpy(a->got + a->n, got, (size_t)n * sizeof(float));
    memcpy(a->want + a->n, want, (size_t)n * sizeof(float));
    a->n += n;
}

enum { A_ZERO, A_MEAN, A_ADD, A_SCALE, A_PATTERN, A_FREEZE, A_MULTI, A_CAPTURE, A_SKIP, A_ALGEBRA, A_RESULT_Z, A_N };
static const char *ACC_NAMES[A_N] = {"zero", "mean (row-t, one row, mapped)", "add", "scale", "pattern ops",
                                     "frozen hooks + captures (path patching)", "multi-patch", "captures", "skip cases",
                                     "zero+add = mean, scale 0 = zero, scale 2 = add self",
                                     "hook_result = hook_z @ W_O per head (zero, scale, replace, head masks)"};

// One test row: its patches and captures.
typedef struct {
    ps_patch p[4];
    int np;
    ps_site cap_site[3];
    int64_t cap_layer[3];
    int nc;
    int cat;
    int expect_unchanged; // 1: the planner must know it equals base
} tcase;

typedef struct {
    const ps_model *m;
    ps_backend *be;
    const int32_t *tokens;
    int64_t T;
    const ps_cache *base;
    acc *acc;
    int64_t narrowed, unchanged_ok, runs;
} ctx;

// The case through the planner and through the naive engine, with out = the last position and with out =
// every position; logits and captures accumulate into the case's category.
static void run_case(ctx *x, const tcase *tc, const char *label) {
    const ps_model_config *mc = &x->m->cfg;
    const int64_t T = x->T, V = mc->d_vocab;
    for (int all = 0; all < 2; all++) {
        int64_t out_pos[PS_MAX_OUT_POS], n_out = all ? T : 1;
        for (int64_t i = 0; i < n_out; i++) out_pos[i] = all ? i : T - 1;
        float *lg[2], *cap[2][3];
        ps_capture caps[2][3];
        ps_row rows[2];
        int64_t wcap[3];
        for (int k = 0; k < 2; k++) {
            lg[k] = xcalloc((size_t)(n_out * V), sizeof(float));
            for (int c = 0; c < tc->nc; c++) {
                wcap[c] = ps_site_width(mc, tc->cap_site[c], T);
                cap[k][c] = xcalloc((size_t)(T * wcap[c]), sizeof(float));
                caps[k][c] = (ps_capture){tc->cap_site[c], tc->cap_layer[c], cap[k][c]};
            }
            rows[k] = (ps_row){.tokens = x->tokens, .T = T, .base = x->base, .patches = tc->p, .n_patches = tc->np,
                               .captures = caps[k], .n_captures = tc->nc, .out_pos = out_pos, .n_out = n_out, .logits = lg[k]};
        }
        ps_error e = {0};
        ps_rows_stats st = {0};
        ps_rows_opts planned = {0}, naive = {.naive = 1};
        if (ps_engine_rows(x->m, x->be, &rows[0], 1, &planned, &st, &e) != 0 ||
            ps_engine_rows(x->m, x->be, &rows[1], 1, &naive, NULL, &e) != 0) {
            TU_CHECK(0, "%s: %s", label, e.msg);
        } else {
            acc_add(&x->acc[tc->cat], lg[0], lg[1], n_out * V);
            for (int c = 0; c < tc->nc; c++) acc_add(&x->acc[A_CAPTURE], cap[0][c], cap[1][c], T * wcap[c]);
            x->narrowed += st.rows_narrowed;
            x->runs++;
            // Other rows may be known unchanged too (a last-layer patch away from out_pos); the comparison
            // with the naive engine says whether that was right.
            if (tc->expect_unchanged) {
                TU_CHECK(st.rows_unchanged == 1, "%s: should be known to equal base without running", label);
                x->unchanged_ok += st.rows_unchanged == 1;
            }
        }
        for (int k = 0; k < 2; k++) {
            free(lg[k]);
            for (int c = 0; c < tc->nc; c++) free(cap[k][c]);
        }
    }
}

// Two patch lists that must give the same numbers (naive engine, every position's logits).
static void same_result(ctx *x, const tcase *a, const tcase *b, acc *into, const char *label) {
    const int64_t T = x->T, V = x->m->cfg.d_vocab;
    int64_t out_pos[PS_MAX_OUT_POS];
    for (int64_t i = 0; i < T; i++) out_pos[i] = i;
    float *lg[2] = {xcalloc((size_t)(T * V), sizeof(float)), xcalloc((size_t)(T * V), sizeof(float))};
    ps_row rows[2];
    for (int k = 0; k < 2; k++) {
        const tcase *tc = k ? b : a;
        rows[k] = (ps_row){.tokens = x->tokens, .T = T, .patches = tc->p, .n_patches = tc->np, .out_pos = out_pos, .n_out = T,
                           .logits = lg[k]};
    }
    ps_error e = {0};
    ps_rows_opts naive = {.naive = 1};
    if (ps_engine_rows(x->m, x->be, rows, 2, &naive, NULL, &e) != 0) TU_CHECK(0, "%s: %s", label, e.msg);
    else acc_add(into, lg[0], lg[1], T * V);
    free(lg[0]);
    free(lg[1]);
}

static ps_patch mk(ps_op op, ps_site s, int64_t l, int64_t unit, int64_t pos) {
    ps_patch p = {.site = s, .layer = l, .head = -1, .pos = pos, .neuron = -1, .op = op, .factor = 1.0f};
    if (s == PS_SITE_MLP_POST) p.neuron = unit;
    else p.head = unit;
    return p;
}

static const ps_site SITES[] = {PS_SITE_RESID_PRE, PS_SITE_RESID_MID, PS_SITE_RESID_POST, PS_SITE_ATTN_OUT, PS_SITE_MLP_OUT,
                                PS_SITE_Q, PS_SITE_K, PS_SITE_V, PS_SITE_Z, PS_SITE_PATTERN, PS_SITE_MLP_POST, PS_SITE_RESULT};
enum { N_SITES = sizeof SITES / sizeof SITES[0] };

// Against the naive engine: every op at every site on every prompt of the patching fixture.
static void against_naive(const char *model) {
    pf_fixture f;
    ps_backend be;
    if (pf_load_cpu_or_fail(&f, model, 1, &be) != 0) return;
    const ps_model_config *mc = &f.m.cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads;
    acc a[A_N];
    memset(a, 0, sizeof a);
    uint64_t seed = 0x243f6a8885a308d3ull;
    for (const char *c = model; *c; c++) seed = (seed ^ (uint64_t)(unsigned char)*c) * 1099511628211ull;
    int64_t narrowed = 0, unchanged = 0, runs = 0;
    for (int64_t pi = 0; pi < f.ps.n; pi++) {
        const ps_prompt *p = &f.ps.p[pi];
        const int64_t T = p->T;
        ps_cache clean, corr, ablated;
        if (cache_run(&be, &f.m, p->clean, T, NULL, 0, &clean) || cache_run(&be, &f.m, p->corrupted, T, NULL, 0, &corr)) break;
        // Reference rows for mean/add, per site: T rows (row t), and the same buffer read as one row or mapped.
        float *ref[N_SITES];
        for (int s = 0; s < N_SITES; s++) {
            const int64_t w = ps_site_width(mc, SITES[s], T);
            ref[s] = xcalloc((size_t)(T * w), sizeof(float));
            for (int64_t i = 0; i < T * w; i++) ref[s][i] = 0.5f * rng_f(&seed);
        }
        int64_t map[64];
        for (int64_t t = 0; t < T; t++) map[t] = t == 1 ? -1 : t % 3;
        ctx x = {.m = &f.m, .be = &be, .tokens = p->corrupted, .T = T, .base = &corr, .acc = a};
        char label[256];
        for (int s = 0; s < N_SITES; s++) {
            const ps_site site = SITES[s];
            if (!ps_array_in_model(mc, ps_site_array(site))) continue; // resid_mid of a parallel block
            const int64_t units = ps_site_units(mc, site);
            for (int64_t l = 0; l < L; l++) {
                const int64_t u = units > 1 ? rng_below(&seed, units) : -1, t = rng_below(&seed, T);
                const ps_view rows_t = {ref[s], T, NULL}, one = {ref[s] + T / 2 * ps_site_width(mc, site, T), 1, NULL},
                              mapped = {ref[s], 3, map};
                tcase cs[16];
                int n = 0;
                cs[n++] = (tcase){.p = {mk(PS_OP_ZERO, site, l, u, -1)}, .np = 1, .cat = A_ZERO};
                cs[n++] = (tcase){.p = {mk(PS_OP_ZERO, site, l, u, t)}, .np = 1, .cat = A_ZERO};
                cs[n++] = (tcase){.p = {mk(PS_OP_SCALE, site, l, u, -1)}, .np = 1, .cat = A_SCALE};
                cs[n - 1].p[0].factor = 0.5f;
                cs[n++] = (tcase){.p = {mk(PS_OP_SCALE, site, l, -1, t)}, .np = 1, .cat = A_SCALE};
                cs[n - 1].p[0].factor = -1.5f;
                if (site == PS_SITE_PATTERN) {
                    for (int k = 0; k < n; k++) cs[k].cat = A_PATTERN;
                    cs[n++] = (tcase){.p = {mk(PS_OP_REPLACE, site, l, u, t)}, .np = 1, .cat = A_PATTERN};
                    cs[n - 1].p[0].src = &clean;
                    cs[n++] = (tcase){.p = {mk(PS_OP_ZERO, site, l, -1, -1)}, .np = 1, .cat = A_PATTERN};
                    cs[n - 1].p[0].head_mask = ps_heads_except(H, 0);
                } else {
                    cs[n++] = (tcase){.p = {mk(PS_OP_MEAN, site, l, u, -1)}, .np = 1, .cat = A_MEAN};
                    cs[n - 1].p[0].ref = rows_t;
                    cs[n++] = (tcase){.p = {mk(PS_OP_MEAN, site, l, u, t)}, .np = 1, .cat = A_MEAN};
                    cs[n - 1].p[0].ref = one;
                    cs[n++] = (tcase){.p = {mk(PS_OP_MEAN, site, l, u, -1)}, .np = 1, .cat = A_MEAN};
                    cs[n - 1].p[0].ref = mapped;
                    cs[n++] = (tcase){.p = {mk(PS_OP_ADD, site, l, u, -1)}, .np = 1, .cat = A_ADD};
                    cs[n - 1].p[0].ref = one;
                    cs[n++] = (tcase){.p = {mk(PS_OP_ADD, site, l, -1, t)}, .np = 1, .cat = A_ADD};
                    cs[n - 1].p[0].ref = rows_t;
                    // Zero then add is the mean of the added rows; then scale: three ops at one hook, in order.
                    cs[n++] = (tcase){.p = {mk(PS_OP_ZERO, site, l, u, -1), mk(PS_OP_ADD, site, l, u, -1), mk(PS_OP_SCALE, site, l, u, -1)},
                                      .np = 3, .cat = A_MULTI};
                    cs[n - 1].p[1].ref = mapped;
                    cs[n - 1].p[2].factor = 2.0f;
                }
                if (units > 1 && site != PS_SITE_MLP_POST) {
                    cs[n++] = (tcase){.p = {mk(PS_OP_SCALE, site, l, -1, -1)}, .np = 1, .cat = A_SCALE};
                    cs[n - 1].p[0].head_mask = ps_heads_except(units, u);
                    cs[n - 1].p[0].factor = 0.25f;
                }
                // Patches at two layers and a capture of this site at another layer.
                cs[n++] = (tcase){.p = {mk(PS_OP_REPLACE, PS_SITE_RESID_PRE, 0, -1, t), mk(PS_OP_ZERO, site, l, u, -1)}, .np = 2,
                                  .cat = A_MULTI, .cap_site = {site}, .cap_layer = {(l + 1) % L}, .nc = 1};
                cs[n - 1].p[0].src = &clean;
                // A capture alone: the row changes nothing, its captures are base's.
                cs[n++] = (tcase){.np = 0, .cat = A_SKIP, .cap_site = {site, PS_SITE_RESID_POST}, .cap_layer = {l, L - 1}, .nc = 2,
                                  .expect_unchanged = 1};
                // Skip cases: scale by 1, add of zeros, freeze at base's own values, mean equal to base.
                cs[n++] = (tcase){.p = {mk(PS_OP_SCALE, site, l, u, -1)}, .np = 1, .cat = A_SKIP, .expect_unchanged = 1};
                cs[n++] = (tcase){.p = {mk(PS_OP_FREEZE, site, l, u, -1)}, .np = 1, .cat = A_SKIP, .expect_unchanged = 1};
                cs[n - 1].p[0].src = &corr;
                // What the operations mean, checked on each other: zero then add v is mean v; scale by 0 is
                // zero; scale by 2 is adding base's own value where nothing upstream changed (layer 0's resid_pre).
                if (site != PS_SITE_PATTERN) {
                    tcase za = {.p = {mk(PS_OP_ZERO, site, l, u, -1), mk(PS_OP_ADD, site, l, u, -1)}, .np = 2};
                    za.p[1].ref = rows_t;
                    tcase me = {.p = {mk(PS_OP_MEAN, site, l, u, -1)}, .np = 1};
                    me.p[0].ref = rows_t;
                    snprintf(label, sizeof label, "%s p%lld %s l%lld zero+add vs mean", model, (long long)pi, ps_site_name(site), (long long)l);
                    same_result(&x, &za, &me, &a[A_ALGEBRA], label);
                }
                tcase s0 = {.p = {mk(PS_OP_SCALE, site, l, u, t)}, .np = 1}, z0 = {.p = {mk(PS_OP_ZERO, site, l, u, t)}, .np = 1};
                s0.p[0].factor = 0.0f;
                snprintf(label, sizeof label, "%s p%lld %s l%lld scale 0 vs zero", model, (long long)pi, ps_site_name(site), (long long)l);
                same_result(&x, &s0, &z0, &a[A_ALGEBRA], label);
                if (site == PS_SITE_RESULT) {
                    // result_h = z_h W_O[h] is linear in z_h: zero, scale and replace from a run agree at either hook
                    // (up to the rounding of the per-head sum against the fused W_O GEMM).
                    const ps_op ops[3] = {PS_OP_ZERO, PS_OP_SCALE, PS_OP_REPLACE};
                    for (int k = 0; k < 3; k++) {
                        tcase r = {.p = {mk(ops[k], PS_SITE_RESULT, l, k == 1 ? -1 : u, k == 2 ? t : -1)}, .np = 1},
                              zc = {.p = {mk(ops[k], PS_SITE_Z, l, k == 1 ? -1 : u, k == 2 ? t : -1)}, .np = 1};
                        if (k == 1) {
                            r.p[0].head_mask = zc.p[0].head_mask = ps_heads_except(H, u);
                            r.p[0].factor = zc.p[0].factor = -0.75f;
                        }
                        r.p[0].src = zc.p[0].src = &clean;
                        snprintf(label, sizeof label, "%s p%lld l%lld %s at result vs z", model, (long long)pi, (long long)l, ps_op_name(ops[k]));
                        same_result(&x, &r, &zc, &a[A_RESULT_Z], label);
                    }
                }
                if (site == PS_SITE_RESID_PRE && l == 0) {
                    tcase s2 = {.p = {mk(PS_OP_SCALE, site, 0, -1, -1)}, .np = 1}, ad = {.p = {mk(PS_OP_ADD, site, 0, -1, -1)}, .np = 1};
                    s2.p[0].factor = 2.0f;
                    ad.p[0].ref = (ps_view){corr.resid_pre, T, NULL};
                    same_result(&x, &s2, &ad, &a[A_ALGEBRA], label);
                }
                for (int k = 0; k < n; k++) {
                    snprintf(label, sizeof label, "%s p%lld %s l%lld case %d", model, (long long)pi, ps_site_name(site), (long long)l, k);
                    run_case(&x, &cs[k], label);
                }
            }
        }
        // add of a zero vector; mean whose reference rows are base's own values.
        {
            const int64_t C = mc->d_model;
            float *zeros = xcalloc((size_t)C, sizeof(float));
            const ps_site mid = mc->parallel_residual ? PS_SITE_RESID_POST : PS_SITE_RESID_MID; // no resid_mid in a parallel block
            tcase z = {.p = {mk(PS_OP_ADD, mid, 0, -1, -1)}, .np = 1, .cat = A_SKIP, .expect_unchanged = 1};
            z.p[0].ref = (ps_view){zeros, 1, NULL};
            snprintf(label, sizeof label, "%s p%lld add of zeros", model, (long long)pi);
            run_case(&x, &z, label);
            tcase mb = {.p = {mk(PS_OP_MEAN, PS_SITE_Z, L - 1, 1 % H, -1)}, .np = 1, .cat = A_SKIP, .expect_unchanged = 1};
            mb.p[0].ref = (ps_view){corr.z + (L - 1) * T * H * mc->d_head, T, NULL};
            snprintf(label, sizeof label, "%s p%lld mean equal to base", model, (long long)pi);
            run_case(&x, &mb, label);
            free(zeros);
        }
        // Zero of an all-zero slice is known without running: the base here is the run with head 0 of
        // layer 0's z already zeroed.
        const ps_patch z0 = mk(PS_OP_ZERO, PS_SITE_Z, 0, 0, -1);
        if (cache_run(&be, &f.m, p->corrupted, T, &z0, 1, &ablated) == 0) {
            ctx xa = x;
            xa.base = &ablated;
            tcase zz = {.p = {z0}, .np = 1, .cat = A_SKIP, .expect_unchanged = 1};
            snprintf(label, sizeof label, "%s p%lld zero of an all-zero slice", model, (long long)pi);
            run_case(&xa, &zz, label);
            // ... and a zero of another head on top of it runs (from layer 0), compared with naive.
            tcase z1 = {.p = {z0, mk(PS_OP_ZERO, PS_SITE_Z, 0, 1 % H, -1)}, .np = 2, .cat = A_ZERO};
            run_case(&xa, &z1, label);
            unchanged += xa.unchanged_ok;
            narrowed += xa.narrowed;
            runs += xa.runs;
            ps_cache_free(&ablated);
        }
        // A freeze of every head's pattern from a run that differs from base only in the last head: the
        // planner must look past the heads that agree.
        ps_patch sh = mk(PS_OP_SCALE, PS_SITE_PATTERN, 0, H - 1, -1);
        sh.factor = 0.5f;
        ps_cache half;
        if (H > 1 && cache_run(&be, &f.m, p->corrupted, T, &sh, 1, &half) == 0) {
            tcase fz = {.p = {mk(PS_OP_FREEZE, PS_SITE_PATTERN, 0, -1, -1)}, .np = 1, .cat = A_PATTERN};
            fz.p[0].src = &half;
            ctx xh = x;
            xh.runs = xh.unchanged_ok = xh.narrowed = 0;
            snprintf(label, sizeof label, "%s p%lld freeze pattern from a run differing in the last head", model, (long long)pi);
            run_case(&xh, &fz, label);
            tcase same = {.p = {sh}, .np = 1};
            same_result(&x, &fz, &same, &a[A_ALGEBRA], label);
            narrowed += xh.narrowed;
            runs += xh.runs;
            ps_cache_free(&half);
        }
        // Path patching, pass 1: orig (corrupted) runs with the sender's z from new (clean) and every other
        // head of every layer frozen at orig's value; the receivers' q/k/v inputs are captured.
        for (int64_t sl = 0; sl < L - 1; sl++) {
            const int64_t sh = rng_below(&seed, H);
            tcase pp = {.np = 0, .cat = A_FREEZE, .nc = 3, .cap_site = {PS_SITE_Q, PS_SITE_K, PS_SITE_V},
                        .cap_layer = {L - 1, L - 1, L - 1}};
            pp.p[pp.np] = mk(PS_OP_REPLACE, PS_SITE_Z, sl, sh, -1);
            pp.p[pp.np++].src = &clean;
            pp.p[pp.np] = mk(PS_OP_FREEZE, PS_SITE_Z, sl, -1, -1);
            pp.p[pp.np].head_mask = ps_heads_except(H, sh);
            pp.p[pp.np++].src = &corr;
            pp.p[pp.np] = mk(PS_OP_FREEZE, PS_SITE_Z, L - 1, -1, -1);
            pp.p[pp.np++].src = &corr;
            snprintf(label, sizeof label, "%s p%lld path patching sender %lld.%lld", model, (long long)pi, (long long)sl, (long long)sh);
            run_case(&x, &pp, label);
        }
        unchanged += x.unchanged_ok;
        narrowed += x.narrowed;
        runs += x.runs;
        for (int s = 0; s < N_SITES; s++) free(ref[s]);
        ps_cache_free(&clean);
        ps_cache_free(&corr);
    }
    char nm[160];
    for (int k = 0; k < A_N; k++) {
        snprintf(nm, sizeof nm, "%s vs naive: %s", model, ACC_NAMES[k]);
        TU_CHECK(a[k].n > 0, "%s: no cases ran", nm);
        if (a[k].n) tu_close(nm, a[k].got, a[k].want, a[k].n, TOL_NAIVE, TOL_NAIVE);
        free(a[k].got);
        free(a[k].want);
    }
    printf("%-48s %lld rows, %lld narrowed, %lld known unchanged\n", model, (long long)runs, (long long)narrowed, (long long)unchanged);
    TU_CHECK(narrowed > 0, "%s: no row was narrowed", model);

    // A backend without the operation refuses it; a replace row still runs.
    {
        const ps_prompt *p = &f.ps.p[0];
        ps_cache corr;
        if (cache_run(&be, &f.m, p->corrupted, p->T, NULL, 0, &corr) == 0) {
            ps_backend lim = be;
            lim.caps = PS_CAP_REPLACE;
            lim.name = "replace-only";
            float lg[128 * 2];
            int64_t out = p->T - 1;
            ps_patch zp = mk(PS_OP_ZERO, PS_SITE_Z, 0, 0, -1);
            ps_row r = {.tokens = p->corrupted, .T = p->T, .base = &corr, .patches = &zp, .n_patches = 1, .out_pos = &out, .n_out = 1,
                        .logits = lg};
            ps_error e2 = {0};
            TU_CHECK(ps_engine_rows(&f.m, &lim, &r, 1, NULL, NULL, &e2) != 0 && strstr(e2.msg, "does not implement the zero operation"),
                     "%s: a backend without zero must refuse it (got \"%s\")", model, e2.msg);
            printf("  refused as it should: %s\n", e2.msg);
            zp.op = PS_OP_REPLACE;
            zp.src = &corr;
            memset(&e2, 0, sizeof e2);
            TU_CHECK(ps_engine_rows(&f.m, &lim, &r, 1, NULL, NULL, &e2) == 0, "%s: replace on a replace-only backend: %s", model, e2.msg);
            // The CUDA backend's capabilities: a zero of hook_result (and a capture of it) is refused, bad input.
            lim.caps = PS_CAPS_CUDA;
            lim.name = "cuda";
            ps_patch rp = mk(PS_OP_ZERO, PS_SITE_RESULT, 0, 0, -1);
            r.patches = &rp;
            memset(&e2, 0, sizeof e2);
            TU_CHECK(ps_engine_rows(&f.m, &lim, &r, 1, NULL, NULL, &e2) != 0 && e2.code == PS_EXIT_BADINPUT &&
                         strstr(e2.msg, "the cuda backend does not implement interventions at hook_result"),
                     "%s: CUDA's caps must refuse hook_result (got \"%s\")", model, e2.msg);
            printf("  refused as it should: %s\n", e2.msg);
            float *cap = xcalloc((size_t)(p->T * ps_site_width(&f.m.cfg, PS_SITE_RESULT, p->T)), sizeof(float));
            ps_capture cp = {.site = PS_SITE_RESULT, .layer = 0, .out = cap};
            ps_row rc2 = {.tokens = p->corrupted, .T = p->T, .captures = &cp, .n_captures = 1, .out_pos = &out, .n_out = 1, .logits = lg};
            ps_rows_opts nv = {.naive = 1};
            memset(&e2, 0, sizeof e2);
            TU_CHECK(ps_engine_rows(&f.m, &lim, &rc2, 1, &nv, NULL, &e2) != 0 && strstr(e2.msg, "hook_result"),
                     "%s: CUDA's caps must refuse a capture of hook_result (got \"%s\")", model, e2.msg);
            free(cap);
            ps_cache_free(&corr);
        }
    }
    ps_backend_free(&be);
    pf_free(&f);
}

// ---------------------------------------------------------------------------------------------
// Against TransformerLens

static int32_t *json_i32(const cJSON *arr, int64_t *n) {
    *n = cJSON_GetArraySize(arr);
    int32_t *v = xcalloc((size_t)*n, sizeof(int32_t));
    for (int64_t i = 0; i < *n; i++) v[i] = (int32_t)cJSON_GetArrayItem(arr, (int)i)->valuedouble;
    return v;
}

static void against_tl(const char *model) {
    cJSON *doc;
    ps_model m;
    ps_backend be;
    if (gu_load_json_case(model, "golden_interventions.json", &doc, &m, &be) != 0) return;
    ps_error e = {0};
    const ps_model_config *mc = &m.cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads, D = mc->d_head, V = mc->d_vocab, HD = H * D;
    int64_t T, k;
    int32_t *clean = json_i32(cJSON_GetObjectItem(doc, "clean"), &T), *corrupted = json_i32(cJSON_GetObjectItem(doc, "corrupted"), &k);
    const cJSON *refs = cJSON_GetObjectItem(doc, "ref"), *grp = cJSON_GetObjectItem(doc, "group");
    const int64_t n_ref = cJSON_GetArraySize(refs);
    int64_t map[64];
    for (int64_t t = 0; t < T; t++) map[t] = (int64_t)cJSON_GetArrayItem(grp, (int)t)->valuedouble;
    ps_cache cc, xc;
    cache_run(&be, &m, clean, T, NULL, 0, &cc);
    cache_run(&be, &m, corrupted, T, NULL, 0, &xc);
    // Means of hook_z over the reference prompts: by position (L, T, HD), over all positions (L, HD),
    // by group (L, 2, HD); accumulated in double.
    double *sp = xcalloc((size_t)(L * T * HD), sizeof(double));
    float *mean_pos = xcalloc((size_t)(L * T * HD), sizeof(float)), *mean_all = xcalloc((size_t)(L * HD), sizeof(float)),
          *mean_grp = xcalloc((size_t)(L * 2 * HD), sizeof(float));
    for (int64_t r = 0; r < n_ref; r++) {
        int64_t n;
        int32_t *tok = json_i32(cJSON_GetArrayItem(refs, (int)r), &n);
        ps_cache rc;
        if (cache_run(&be, &m, tok, n, NULL, 0, &rc) == 0) {
            for (int64_t i = 0; i < L * T * HD; i++) sp[i] += rc.z[i];
            ps_cache_free(&rc);
        }
        free(tok);
    }
    for (int64_t l = 0; l < L; l++)
        for (int64_t i = 0; i < HD; i++) {
            double all = 0, g[2] = {0, 0};
            int64_t ng[2] = {0, 0};
            for (int64_t t = 0; t < T; t++) {
                const double v = sp[(l * T + t) * HD + i];
                mean_pos[(l * T + t) * HD + i] = (float)(v / (double)n_ref);
                all += v;
                if (map[t] >= 0) { g[map[t]] += v; ng[map[t]]++; }
            }
            mean_all[l * HD + i] = (float)(all / (double)(n_ref * T));
            for (int q = 0; q < 2; q++) mean_grp[(l * 2 + q) * HD + i] = (float)(g[q] / (double)(n_ref * ng[q]));
        }
    const cJSON *cases = cJSON_GetObjectItem(doc, "cases");
    const int64_t nc = cJSON_GetArraySize(cases);
    float *got[2], *want = xcalloc((size_t)(nc * V), sizeof(float));
    got[0] = xcalloc((size_t)(nc * V), sizeof(float));
    got[1] = xcalloc((size_t)(nc * V), sizeof(float));
    ps_patch *pts = xcalloc((size_t)nc, sizeof(ps_patch));
    ps_row *rows[2] = {xcalloc((size_t)nc, sizeof(ps_row)), xcalloc((size_t)nc, sizeof(ps_row))};
    int64_t out = T - 1, counts[PS_OP_COUNT] = {0};
    for (int64_t i = 0; i < nc; i++) {
        const cJSON *c = cJSON_GetArrayItem(cases, (int)i);
        const char *op = cJSON_GetObjectItem(c, "op")->valuestring, *view = cJSON_GetObjectItem(c, "view")->valuestring;
        const int64_t l = (int64_t)cJSON_GetObjectItem(c, "layer")->valuedouble, h = (int64_t)cJSON_GetObjectItem(c, "head")->valuedouble,
                      pos = (int64_t)cJSON_GetObjectItem(c, "pos")->valuedouble;
        const cJSON *lg = cJSON_GetObjectItem(c, "logits_last");
        for (int64_t j = 0; j < V; j++) want[i * V + j] = (float)cJSON_GetArrayItem(lg, (int)j)->valuedouble;
        ps_patch *pt = &pts[i];
        *pt = mk(PS_OP_ZERO, PS_SITE_Z, l, h, pos);
        if (!strcmp(op, "mean")) {
            pt->op = PS_OP_MEAN;
            if (!strcmp(view, "rows")) pt->ref = (ps_view){mean_pos + l * T * HD, T, NULL};
            else if (!strcmp(view, "one")) pt->ref = (ps_view){mean_all + l * HD, 1, NULL};
            else pt->ref = (ps_view){mean_grp + l * 2 * HD, 2, map};
        } else if (!strcmp(op, "freeze")) {
            pt->op = PS_OP_FREEZE;
            pt->src = &xc;
            if (!strcmp(view, "except")) { pt->head = -1; pt->head_mask = ps_heads_except(H, h); }
        }
        counts[pt->op]++;
        for (int k2 = 0; k2 < 2; k2++)
            rows[k2][i] = (ps_row){.tokens = clean, .T = T, .base = &cc, .patches = pt, .n_patches = 1, .out_pos = &out, .n_out = 1,
                                   .logits = got[k2] + i * V};
    }
    ps_rows_opts planned = {.batch_rows = 16}, naive = {.naive = 1, .batch_rows = 16};
    ps_rows_stats st = {0};
    char nm[160];
    if (ps_engine_rows(&m, &be, rows[0], nc, &planned, &st, &e) != 0 || ps_engine_rows(&m, &be, rows[1], nc, &naive, NULL, &e) != 0) {
        TU_CHECK(0, "%s: %s", model, e.msg);
    } else {
        snprintf(nm, sizeof nm, "%s vs TL: hook_z zero/mean/freeze (planned)", model);
        tu_close(nm, got[0], want, nc * V, TOL_TL, TOL_TL);
        snprintf(nm, sizeof nm, "%s vs TL: hook_z zero/mean/freeze (naive)", model);
        tu_close(nm, got[1], want, nc * V, TOL_TL, TOL_TL);
        printf("%-48s %lld zero, %lld mean, %lld freeze cases; %lld rows narrowed\n", model, (long long)counts[PS_OP_ZERO],
               (long long)counts[PS_OP_MEAN], (long long)counts[PS_OP_FREEZE], (long long)st.rows_narrowed);
    }
    free(got[0]); free(got[1]); free(want); free(pts); free(rows[0]); free(rows[1]);
    free(sp); free(mean_pos); free(mean_all); free(mean_grp); free(clean); free(corrupted);
    ps_cache_free(&cc);
    ps_cache_free(&xc);
    ps_backend_free(&be);
    ps_model_free(&m);
    cJSON_Delete(doc);
}

int main(void) {
    gu_for_each_model(against_naive);
    const char *tl_models[] = {"gpt2-tiny-a", "llama-tiny-a", "llama-tiny-b", "neox-tiny-a", "neox-tiny-b"};
    for (size_t i = 0; i < sizeof tl_models / sizeof *tl_models; i++) against_tl(tl_models[i]);
    return tu_done("interventions");
}
