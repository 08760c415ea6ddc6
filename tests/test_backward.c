// The CPU backward pass against torch autograd: the logit difference's gradient at every TransformerLens hook
// of every tiny model (tests/data/*/golden_gradients.safetensors, made by tests/golden/make_gradient_goldens.py)
// at 1e-4 abs + rel, with the largest error per hook family printed; a central finite difference of the forward
// pass along random directions at several sites; and attribution patching (kind "attribution") on every site and
// layout against the torch reference.
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_producer.h"
#include "ps_backward.h"
#include "ps_forward.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *hook;   // TransformerLens name after "blocks.<l>." (or the whole name, per_layer = 0)
    ps_array arr;
    int per_layer;
    const char *family; // the line of the summary it counts towards
} hook_map;

static const hook_map HOOKS[] = {
    {"hook_embed", PS_ARR_EMBED, 0, "embed"},
    {"hook_pos_embed", PS_ARR_POS_EMBED, 0, "embed"},
    {"hook_resid_pre", PS_ARR_RESID_PRE, 1, "resid"},
    {"ln1.hook_scale", PS_ARR_LN1_SCALE, 1, "ln_scale"},
    {"attn.hook_q", PS_ARR_Q, 1, "q/k/v"},
    {"attn.hook_k", PS_ARR_K, 1, "q/k/v"},
    {"attn.hook_v", PS_ARR_V, 1, "q/k/v"},
    {"attn.hook_rot_q", PS_ARR_ROT_Q, 1, "rot_q/k"},
    {"attn.hook_rot_k", PS_ARR_ROT_K, 1, "rot_q/k"},
    {"attn.hook_attn_scores", PS_ARR_SCORES, 1, "scores"},
    {"attn.hook_pattern", PS_ARR_PATTERN, 1, "pattern"},
    {"attn.hook_z", PS_ARR_Z, 1, "z"},
    {"attn.hook_result", PS_ARR_RESULT, 1, "result"},
    {"hook_attn_out", PS_ARR_ATTN_OUT, 1, "attn_out"},
    {"hook_resid_mid", PS_ARR_RESID_MID, 1, "resid"},
    {"ln2.hook_scale", PS_ARR_LN2_SCALE, 1, "ln_scale"},
    {"mlp.hook_pre", PS_ARR_MLP_PRE, 1, "mlp_pre"},
    {"mlp.hook_pre_linear", PS_ARR_MLP_PRE_LINEAR, 1, "mlp_pre"},
    {"mlp.hook_post", PS_ARR_MLP_POST, 1, "mlp_post"},
    {"hook_mlp_out", PS_ARR_MLP_OUT, 1, "mlp_out"},
    {"hook_resid_post", PS_ARR_RESID_POST, 1, "resid"},
    {"ln_final.hook_scale", PS_ARR_LNF_SCALE, 0, "ln_scale"},
};
#define N_HOOKS (sizeof HOOKS / sizeof HOOKS[0])
static const char *const FAMILIES[] = {"embed", "resid", "ln_scale", "q/k/v", "rot_q/k", "scores", "pattern",
                                       "z", "result", "attn_out", "mlp_pre", "mlp_post", "mlp_out"};
#define N_FAM (sizeof FAMILIES / sizeof FAMILIES[0])

static int family_of(const char *f) {
    for (size_t i = 0; i < N_FAM; i++)
        if (!strcmp(FAMILIES[i], f)) return (int)i;
    return 0;
}

static int load(const char *name, const char *golden, ps_model *m, ps_safetensors *g) {
    char rel[256];
    ps_error e = {0};
    snprintf(rel, sizeof rel, "tests/data/%s", name);
    if (ps_model_load(m, tu_src(rel), &e) != 0) { TU_CHECK(0, "%s: load: %s", name, e.msg); return -1; }
    snprintf(rel, sizeof rel, "tests/data/%s/%s", name, golden);
    if (ps_safetensors_open(g, tu_src(rel), &e) != 0) {
        TU_CHECK(0, "%s: goldens: %s", name, e.msg);
        ps_model_free(m);
        return -1;
    }
    return 0;
}

// The run's cache and the gradient of logits[T-1, a] - logits[T-1, w] at every hook.
static int forward_backward(const ps_model *m, const int32_t *tok, int64_t T, int32_t a, int32_t w, ps_cache *f, ps_cache *g) {
    ps_error e = {0};
    const int64_t V = m->cfg.d_vocab, pos = T - 1;
    if (ps_cache_init(f, &m->cfg, T, PS_CACHE_ALL, &e) != 0 || ps_cache_init(g, &m->cfg, T, PS_CACHE_ALL, &e) != 0) {
        TU_CHECK(0, "cache: %s", e.msg);
        return -1;
    }
    ps_row row = {.tokens = tok, .T = T, .cache = f};
    if (ps_cpu_forward(m, &row, 1, &e) != 0) { TU_CHECK(0, "forward: %s", e.msg); return -1; }
    float *dl = calloc((size_t)V, sizeof(float));
    dl[a] += 1.0f;
    dl[w] -= 1.0f;
    const ps_logit_grad lg = {1, &pos, dl};
    int rc = ps_cpu_backward(m, f, &lg, g, &e);
    TU_CHECK(rc == 0, "backward: %s", e.msg);
    free(dl);
    return rc;
}

// Every hook's gradient against autograd; the largest absolute error and error/|want| per family.
static void test_gradients(const char *name) {
    ps_model m;
    ps_safetensors gs;
    if (load(name, "golden_gradients.safetensors", &m, &gs) != 0) return;
    double fam_abs[N_FAM] = {0}, fam_max[N_FAM] = {0};
    int compared = 0;
    for (int r = 0;; r++) {
        char key[256];
        int64_t T = 0, n1 = 0;
        snprintf(key, sizeof key, "g%d.tokens", r);
        int32_t *tok = gu_i32(&gs, key, &T);
        if (!tok) break;
        snprintf(key, sizeof key, "g%d.answer", r);
        int32_t *ans = gu_i32(&gs, key, &n1);
        snprintf(key, sizeof key, "g%d.wrong", r);
        int32_t *wr = gu_i32(&gs, key, &n1);
        ps_cache f, g;
        if (forward_backward(&m, tok, T, ans[0], wr[0], &f, &g) == 0) {
            // Streamed weights (one layer converted at a time, last layer first here) give the same bits.
            ps_model ms;
            ps_error e = {0};
            char rel[256];
            snprintf(rel, sizeof rel, "tests/data/%s", name);
            if (r == 0 && ps_model_load_mode(&ms, tu_src(rel), PS_WEIGHTS_STREAMED, &e) == 0) {
                ps_cache fs, gs2;
                if (forward_backward(&ms, tok, T, ans[0], wr[0], &fs, &gs2) == 0)
                    TU_CHECK(memcmp(gs2.memory, g.memory, g.n_floats * sizeof(float)) == 0, "%s: streamed weights change the gradients", name);
                ps_cache_free(&fs);
                ps_cache_free(&gs2);
                ps_model_free(&ms);
            } else if (r == 0) {
                TU_CHECK(0, "%s: streamed load: %s", name, e.msg);
            }
            for (size_t h = 0; h < N_HOOKS; h++) {
                const int64_t layers = HOOKS[h].per_layer ? m.cfg.n_layers : 1;
                const float *arr = ps_cache_array(&g, HOOKS[h].arr);
                for (int64_t l = 0; l < layers; l++) {
                    if (HOOKS[h].per_layer) snprintf(key, sizeof key, "g%d.blocks.%lld.%s", r, (long long)l, HOOKS[h].hook);
                    else snprintf(key, sizeof key, "g%d.%s", r, HOOKS[h].hook);
                    int64_t n = 0;
                    float *want = gu_f32(&gs, key, &n);
                    if (!want) continue;
                    if (!arr) {
                        TU_CHECK(0, "%s %s: golden exists but the gradient cache has no such array", name, key);
                        free(want);
                        continue;
                    }
                    const float *got = arr + l * n;
                    const int fam = family_of(HOOKS[h].family);
                    int bad = 0;
                    for (int64_t i = 0; i < n; i++) {
                        const double d = fabs((double)got[i] - want[i]);
                        if (d > fam_abs[fam]) fam_abs[fam] = d;
                        if (fabs(want[i]) > fam_max[fam]) fam_max[fam] = fabs(want[i]);
                        if (!(d <= 1e-4 + 1e-4 * fabs(want[i])) && bad++ < 3)
                            TU_CHECK(0, "%s %s[%lld]: got %.7g want %.7g", name, key, (long long)i, got[i], want[i]);
                    }
                    compared++;
                    free(want);
                }
            }
        }
        ps_cache_free(&f);
        ps_cache_free(&g);
        free(tok);
        free(ans);
        free(wr);
    }
    TU_CHECK(compared >= 2 * (int)m.cfg.n_layers * 14, "%s: only %d hooks compared", name, compared);
    printf("%s: gradients at %d hooks vs torch autograd, max |err| (max |grad|) per family:\n", name, compared);
    for (size_t i = 0; i < N_FAM; i++)
        if (fam_max[i] > 0) printf("  %-9s %.2e (%.3g)\n", FAMILIES[i], fam_abs[i], fam_max[i]);
    ps_safetensors_free(&gs);
    ps_model_free(&m);
}

// Central finite differences of the metric along a random direction u added at (site, layer) at every position:
// (m(x + eps u) - m(x - eps u)) / 2 eps against u . gradient.
static double metric_with_add(const ps_model *m, const int32_t *tok, int64_t T, int32_t a, int32_t w, ps_site site, int64_t l,
                              const float *u) {
    ps_error e = {0};
    const int64_t pos = T - 1;
    const int32_t cols[2] = {a, w};
    float logits[2];
    const ps_patch p = {.site = site, .layer = l, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_ADD, .ref = {u, T, NULL}};
    ps_row row = {.tokens = tok, .T = T, .patches = &p, .n_patches = 1, .out_pos = &pos, .n_out = 1, .cols = cols, .n_cols = 2,
                  .logits = logits};
    if (ps_cpu_forward(m, &row, 1, &e) != 0) { TU_CHECK(0, "fd forward: %s", e.msg); return NAN; }
    return (double)logits[0] - logits[1];
}

static void test_finite_difference(const char *name) {
    ps_model m;
    ps_safetensors gs;
    if (load(name, "golden_gradients.safetensors", &m, &gs) != 0) return;
    int64_t T = 0, n1 = 0;
    int32_t *tok = gu_i32(&gs, "g0.tokens", &T), *ans = gu_i32(&gs, "g0.answer", &n1), *wr = gu_i32(&gs, "g0.wrong", &n1);
    ps_cache f, g;
    if (forward_backward(&m, tok, T, ans[0], wr[0], &f, &g) == 0) {
        const ps_site sites[] = {PS_SITE_RESID_PRE, PS_SITE_Q, PS_SITE_K, PS_SITE_V, PS_SITE_Z, PS_SITE_MLP_POST, PS_SITE_RESID_MID};
        uint32_t seed = 12345;
        for (size_t s = 0; s < sizeof sites / sizeof sites[0]; s++)
            for (int64_t l = 0; l < m.cfg.n_layers && !(sites[s] == PS_SITE_RESID_MID && m.cfg.parallel_residual); l++) {
                const int64_t W = ps_site_width(&m.cfg, sites[s], T);
                float *u = malloc((size_t)(T * W) * sizeof(float)), *up = malloc((size_t)(T * W) * sizeof(float)),
                      *um = malloc((size_t)(T * W) * sizeof(float));
                const float *gr = ps_cache_site(&g, sites[s]) + ps_site_at(&m.cfg, sites[s], T, l, 0, 0);
                double dot = 0;
                for (int64_t i = 0; i < T * W; i++) {
                    seed = seed * 1664525u + 1013904223u;
                    u[i] = (float)((seed >> 8) / 16777216.0 - 0.5);
                    dot += (double)u[i] * gr[i];
                }
                // Richardson: (4 D(eps/2) - D(eps)) / 3 cancels the eps^2 term of the central difference (the
                // embeddings are small, so the norm's curvature there is large).
                double dd[2];
                for (int k = 0; k < 2; k++) {
                    const float eps = k ? 5e-3f : 1e-2f;
                    for (int64_t i = 0; i < T * W; i++) { up[i] = eps * u[i]; um[i] = -eps * u[i]; }
                    dd[k] = (metric_with_add(&m, tok, T, ans[0], wr[0], sites[s], l, up) -
                             metric_with_add(&m, tok, T, ans[0], wr[0], sites[s], l, um)) / (2.0 * eps);
                }
                const double fd = (4.0 * dd[1] - dd[0]) / 3.0;
                const double err = fabs(fd - dot);
                printf("%s: finite difference %s layer %lld: fd %.6f  u.grad %.6f  |diff| %.2e\n", name,
                       ps_site_name(sites[s]), (long long)l, fd, dot, err);
                TU_CHECK(err <= 2e-3 + 2e-3 * fabs(dot), "%s: finite difference at %s layer %lld: %.6g vs %.6g", name,
                         ps_site_name(sites[s]), (long long)l, fd, dot);
                free(u);
                free(up);
                free(um);
            }
    }
    ps_cache_free(&f);
    ps_cache_free(&g);
    free(tok);
    free(ans);
    free(wr);
    ps_safetensors_free(&gs);
    ps_model_free(&m);
}

// Attribution patching (kind "attribution") on every site and layout in both directions against the torch reference
// (golden a<pair>.<direction>.<site>.<layout>: TL's normalized attribution, i.e. the table's normalized values,
// less 1 for noising, whose base is the clean run). Also prints how well it tracks activation patching.
static void test_attribution(const char *name) {
    pf_fixture f;
    if (pf_load_or_fail(&f, name) != 0) return;
    ps_safetensors gs;
    ps_model m2;
    if (load(name, "golden_gradients.safetensors", &m2, &gs) != 0) { pf_free(&f); return; }
    ps_model_free(&m2);
    enum { MAXX = 2 * PS_SITE_COUNT * PS_BY_COUNT };
    ps_experiment ex[2 * MAXX];
    char names[2 * MAXX][64];
    int nx = 0;
    for (int d = 0; d < 2; d++)
        for (int s = 0; s < PS_SITE_COUNT; s++)
            for (int l = 0; l < PS_BY_COUNT; l++) {
                if (!ps_layout_fits((ps_site)s, (ps_layout)l) || !ps_array_in_model(&f.m.cfg, ps_site_array((ps_site)s))) continue;
                for (int k = 0; k < 2; k++) { // attribution, then the activation patching it estimates
                    memset(&ex[nx], 0, sizeof ex[nx]);
                    snprintf(names[nx], 64, "%s.%s.%s.%s", k ? "patch" : "attr", d ? "noise" : "denoise", ps_site_name((ps_site)s),
                             ps_layout_name((ps_layout)l));
                    ex[nx] = (ps_experiment){.name = names[nx], .kind = k ? "patch_sweep" : "attribution", .site = (ps_site)s,
                                             .layout = (ps_layout)l, .direction = d ? PS_DIR_NOISE : PS_DIR_DENOISE};
                    nx++;
                }
            }
    ps_backend be;
    ps_error e = {0};
    ps_run_results rr;
    ps_engine_opts o = {0};
    if (ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, 0, &f.m, &e) != 0 ||
        ps_engine_run(&f.m, &be, &f.ps, ex, nx, PS_METRIC_LOGIT_DIFF, &o, &rr, &e) != 0) {
        TU_CHECK(0, "%s: attribution run: %s", name, e.msg);
        ps_safetensors_free(&gs);
        pf_free(&f);
        return;
    }
    double worst = 0, sxy = 0, sxx = 0, syy = 0, sx = 0, sy = 0;
    int64_t compared = 0, nc = 0;
    for (int x = 0; x < nx; x += 2) {
        const ps_table *t = &rr.tables[x], *tp = &rr.tables[x + 1];
        TU_CHECK(!strcmp(t->kind, "attribution"), "%s: table %s has kind %s", name, t->name, t->kind);
        const double off = ex[x].direction == PS_DIR_NOISE ? 1.0 : 0.0;
        for (int64_t i = 0; i < f.ps.n; i++) {
            char key[128];
            snprintf(key, sizeof key, "a%lld.%s", (long long)i, names[x] + 5);
            int64_t n = 0;
            float *want = gu_f32(&gs, key, &n);
            if (!want) { TU_CHECK(0, "%s: no golden %s", name, key); continue; }
            // the golden's pos axis is this prompt's length, the table's the longest prompt's
            const int pa = ps_table_axis(t, "pos");
            int64_t inner = 1;
            for (int a = pa + 1; pa >= 0 && a < t->n_axes; a++) inner *= t->axes[a].len;
            const int64_t Tn = pa >= 0 ? f.ps.p[i].T : 1, Tt = pa >= 0 ? t->axes[pa].len : 1;
            for (int64_t k = 0; k < n; k++) {
                const int64_t outer = k / (Tn * inner), tt = (k / inner) % Tn, in = k % inner;
                const int64_t cell = (outer * Tt + tt) * inner + in;
                const double got = t->normalized[i * t->n_cells + cell] - off, w = want[k];
                const double err = fabs(got - w);
                if (err > worst) worst = err;
                if (!(err <= 1e-4 + 1e-4 * fabs(w)))
                    TU_CHECK(0, "%s %s[%lld]: got %.7g want %.7g", name, key, (long long)k, got, w);
                const double act = tp->normalized[i * tp->n_cells + cell] - off;
                sx += w; sy += act; sxx += w * w; syy += act * act; sxy += w * act; nc++;
                compared++;
            }
            free(want);
        }
    }
    const double cov = sxy / nc - (sx / nc) * (sy / nc), vx = sxx / nc - (sx / nc) * (sx / nc), vy = syy / nc - (sy / nc) * (sy / nc);
    printf("%s: attribution patching, %d tables x %lld prompts (%lld cells) vs the torch reference: max |err| %.2e; "
           "correlation with activation patching %.3f\n",
           name, nx / 2, (long long)f.ps.n, (long long)compared, worst, cov / sqrt(vx * vy));
    TU_CHECK(compared > 0, "%s: no attribution cells compared", name);
    ps_run_results_free(&rr);
    ps_backend_free(&be);
    ps_safetensors_free(&gs);
    pf_free(&f);
}

// Every metric's d / d logits (ps_metric_grad, where the backward pass starts) against central differences of
// ps_metric_value, on random logits at two positions.
static void test_metric_grads(void) {
    enum { V = 13 };
    float logits[2 * V], clean_lp[V], dl[2 * V];
    uint32_t seed = 7;
    for (int j = 0; j < 2 * V; j++) {
        seed = seed * 1664525u + 1013904223u;
        logits[j] = (float)((seed >> 8) / 16777216.0 * 6.0 - 3.0);
    }
    double lse = 0;
    for (int j = 0; j < V; j++) lse += exp(logits[V + j] * 0.5);
    for (int j = 0; j < V; j++) clean_lp[j] = (float)(logits[V + j] * 0.5 - log(lse));
    int64_t lp_pos[2] = {3, 4};
    int32_t lp_tok[2] = {5, 9};
    const ps_prompt p = {.T = 5, .T_prompt = 5, .score_pos = 4, .answer_id = 2, .wrong_id = 7, .n_lp = 2, .lp_pos = lp_pos, .lp_tok = lp_tok};
    const ps_metric_kind kinds[] = {PS_METRIC_LOGIT_DIFF, PS_METRIC_PROB_DIFF, PS_METRIC_LOGPROB, PS_METRIC_KL};
    for (int k = 0; k < 4; k++) {
        ps_metric_request rq;
        ps_metric_request_for(kinds[k], &p, &rq);
        rq.n_cols = 0;
        ps_metric_grad(kinds[k], &p, &rq, logits, V, clean_lp, dl);
        double worst = 0;
        for (int64_t j = 0; j < rq.n_out * V; j++) {
            float lp[2 * V];
            memcpy(lp, logits, sizeof lp);
            const float h = 1e-2f;
            lp[j] = logits[j] + h;
            const double up = ps_metric_value(kinds[k], &p, &rq, lp, V, clean_lp);
            lp[j] = logits[j] - h;
            const double dn = ps_metric_value(kinds[k], &p, &rq, lp, V, clean_lp);
            const double fd = (up - dn) / (2.0 * h), err = fabs(fd - dl[j]);
            if (err > worst) worst = err;
        }
        printf("metric %s: d/dlogits vs central differences, max |err| %.2e\n", ps_metric_name(kinds[k]), worst);
        TU_CHECK(worst < 1e-3, "metric %s: gradient off by %g", ps_metric_name(kinds[k]), worst);
    }
}

// Edge attribution (kind edge_attribution: EAP, EAP-IG-inputs, clean-corrupted) against the torch reference on EAP-IG's graph
// (tests/data/*/golden_eap.safetensors, made by tests/golden/make_eap_goldens.py): every edge of every prompt.
static void test_eap(const char *name) {
    pf_fixture f;
    if (pf_load_or_fail(&f, name) != 0) return;
    char rel[256];
    ps_safetensors gs;
    ps_error e = {0};
    snprintf(rel, sizeof rel, "tests/data/%s/golden_eap.safetensors", name);
    if (ps_safetensors_open(&gs, tu_src(rel), &e) != 0) { TU_CHECK(0, "%s: %s", name, e.msg); pf_free(&f); return; }
    // EAP twice (the second copies the first), EAP-IG-inputs with 3 steps, clean-corrupted.
    ps_experiment ex[4] = {{.name = "eap", .kind = "edge_attribution"},
                           {.name = "eap2", .kind = "edge_attribution"},
                           {.name = "ig", .kind = "edge_attribution", .method = PS_EDGE_EAP_IG_INPUTS, .steps = 3},
                           {.name = "cc", .kind = "edge_attribution", .method = PS_EDGE_CLEAN_CORRUPTED}};
    static const char *const keys[4] = {"scores", "scores", "ig_inputs", "clean_corrupted"};
    ps_backend be;
    ps_run_results rr;
    ps_engine_opts o = {0};
    if (ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, 0, &f.m, &e) != 0 ||
        ps_engine_run(&f.m, &be, &f.ps, ex, 4, PS_METRIC_LOGIT_DIFF, &o, &rr, &e) != 0) {
        TU_CHECK(0, "%s: edge attribution run: %s", name, e.msg);
        ps_safetensors_free(&gs);
        pf_free(&f);
        return;
    }
    double worst[4] = {0};
    int64_t edges = 0;
    for (int x = 0; x < 4; x++) {
        const ps_table *t = &rr.tables[x];
        const ps_attr *ne = ps_table_attr(t, "n_edges");
        int64_t nx = 0;
        for (int64_t i = 0; i < f.ps.n; i++) {
            char key[64];
            snprintf(key, sizeof key, "e%lld.%s", (long long)i, keys[x]);
            int64_t n = 0;
            float *want = gu_f32(&gs, key, &n);
            TU_CHECK(want && n == t->n_cells, "%s: %s has %lld scores, the table %lld cells", name, key, (long long)n, (long long)t->n_cells);
            for (int64_t k = 0; want && k < n && n == t->n_cells; k++) {
                const float got = t->values[i * t->n_cells + k];
                if (isnan(want[k]) || isnan(got)) {
                    TU_CHECK(isnan(want[k]) && isnan(got), "%s %s %s[%lld]: got %g want %g (edge or not)", name, ex[x].name, key, (long long)k,
                             got, want[k]);
                    continue;
                }
                const double err = fabs((double)got - want[k]);
                if (err > worst[x]) worst[x] = err;
                if (!(err <= 1e-4 + 1e-4 * fabs(want[k])))
                    TU_CHECK(0, "%s %s %s[%lld] (%s -> %s): got %.7g want %.7g", name, ex[x].name, key, (long long)k,
                             t->axes[0].label[k / t->axes[1].len], t->axes[1].label[k % t->axes[1].len], got, want[k]);
                if (i == 0) nx++;
            }
            free(want);
        }
        TU_CHECK(ne && ne->i == nx, "%s %s: n_edges %lld, edges with scores %lld", name, ex[x].name, ne ? (long long)ne->i : -1LL,
                 (long long)nx);
        edges = nx;
    }
    TU_CHECK(memcmp(rr.tables[0].values, rr.tables[1].values, (size_t)(f.ps.n * rr.tables[0].n_cells) * sizeof(float)) == 0,
             "%s: two EAP experiments differ", name);
    // hannamw/EAP-IG's own functions (tests/golden/run_eap_ig.py): the tables' means are its scores. Its graph has
    // q/k/v per query head, so the grouped-query model has none.
    ps_safetensors ig;
    double worst_ig[4] = {0};
    int have_ig = 0;
    snprintf(rel, sizeof rel, "tests/data/%s/golden_eap_ig.safetensors", name);
    if (f.m.cfg.n_kv_heads != f.m.cfg.n_heads) {
        printf("%s: grouped-query attention: no EAP-IG reference (its graph cannot hold the model)\n", name);
    } else if (ps_safetensors_open(&ig, tu_src(rel), &e) != 0) {
        TU_CHECK(0, "%s: %s", name, e.msg);
    } else {
        have_ig = 1;
        static const char *const ig_keys[4] = {"eap", "eap", "eap_ig_inputs", "clean_corrupted"};
        for (int x = 0; x < 4; x++) {
            const ps_table *t = &rr.tables[x];
            int64_t n = 0;
            float *want = gu_f32(&ig, ig_keys[x], &n);
            TU_CHECK(want && n == t->n_cells, "%s: EAP-IG %s has %lld scores, the table %lld cells", name, ig_keys[x], (long long)n,
                     (long long)t->n_cells);
            for (int64_t k = 0; want && n == t->n_cells && k < n; k++) {
                if (isnan(t->mean[k])) {
                    TU_CHECK(want[k] == 0, "%s EAP-IG %s[%lld] = %g where the graph has no edge", name, ig_keys[x], (long long)k, want[k]);
                    continue;
                }
                const double err = fabs((double)t->mean[k] - want[k]);
                if (err > worst_ig[x]) worst_ig[x] = err;
                if (!(err <= 1e-4 + 1e-4 * fabs(want[k])))
                    TU_CHECK(0, "%s %s mean[%lld] (%s -> %s): got %.7g, EAP-IG %.7g", name, ex[x].name, (long long)k,
                             t->axes[0].label[k / t->axes[1].len], t->axes[1].label[k % t->axes[1].len], t->mean[k], want[k]);
            }
            free(want);
        }
        ps_safetensors_free(&ig);
    }
    printf("%s: %lld edges x %lld prompts vs the torch reference on EAP-IG's graph, max |err|: EAP %.2e, EAP-IG-inputs (3 steps) %.2e, "
           "clean-corrupted %.2e\n", name, (long long)edges, (long long)f.ps.n, worst[0], worst[2], worst[3]);
    if (have_ig)
        printf("%s: mean over prompts vs hannamw/EAP-IG's own get_scores_*: max |err| EAP %.2e, EAP-IG-inputs %.2e, clean-corrupted %.2e\n",
               name, worst_ig[0], worst_ig[2], worst_ig[3]);
    ps_run_results_free(&rr);
    ps_backend_free(&be);
    ps_safetensors_free(&gs);
    pf_free(&f);
}

// EAP-IG's graph of GPT-2 small has 32,491 edges (the sequence-continuation write-up's count); laid out without a model.
static void test_graph_size(void) {
    const ps_model_config mc = {.arch = PS_ARCH_GPT2, .n_layers = 12, .d_model = 768, .n_heads = 12, .n_kv_heads = 12, .d_head = 64,
                                .d_mlp = 3072, .d_vocab = 50257, .n_ctx = 1024};
    int32_t tok[2] = {1, 2};
    ps_prompt p = {.clean = tok, .corrupted = tok, .T = 2, .T_prompt = 2, .score_pos = 1};
    const ps_prompt_set ps = {.p = &p, .n = 1, .T_max = 2};
    const ps_experiment ex = {.name = "eap", .kind = "edge_attribution"};
    ps_run_results rr;
    ps_error e = {0};
    if (ps_run_results_init(&rr, &mc, &ps, &ex, 1, &e) != 0) { TU_CHECK(0, "graph layout: %s", e.msg); return; }
    const ps_attr *ne = ps_table_attr(&rr.tables[0], "n_edges");
    TU_CHECK(ne && ne->i == 32491, "GPT-2 small: %lld edges, EAP-IG has 32491", ne ? (long long)ne->i : -1LL);
    TU_CHECK(rr.tables[0].axes[0].len == 157 && rr.tables[0].axes[1].len == 445, "GPT-2 small: %lld sources, %lld destinations",
             (long long)rr.tables[0].axes[0].len, (long long)rr.tables[0].axes[1].len);
    TU_CHECK(!strcmp(rr.tables[0].axes[1].label[37], "a1.h0<q>"), "destination 37 is %s", rr.tables[0].axes[1].label[37]);
    ps_run_results_free(&rr);
}

int main(void) {
    test_graph_size();
    test_metric_grads();
    TU_CHECK(gu_for_each_model(test_gradients) >= 3, "too few models");
    test_finite_difference("gpt2-tiny-a");
    test_finite_difference("llama-tiny-b");
    test_finite_difference("neox-tiny-a"); // parallel residual, rotary on a quarter of each head
    test_finite_difference("neox-tiny-b"); // sequential, full rotary
    TU_CHECK(gu_for_each_model(test_attribution) >= 3, "too few models");
    TU_CHECK(gu_for_each_model(test_eap) >= 3, "too few models");
    return tu_done("backward");
}
