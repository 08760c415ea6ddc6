// The CPU backward pass against torch autograd: the logit difference's gradient at every TransformerLens hook
// of every tiny model (tests/data/*/golden_gradients.safetensors, made by tests/golden/make_gradient_goldens.py)
// at 1e-4 abs + rel, with the largest error per hook family printed; a central finite difference of the forward
// pass along random directions at several sites; and attribution patching against the torch reference.
#include "golden_util.h"
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
            for (int64_t l = 0; l < m.cfg.n_layers; l++) {
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

int main(void) {
    TU_CHECK(gu_for_each_model(test_gradients) >= 3, "too few models");
    test_finite_difference("gpt2-tiny-a");
    test_finite_difference("llama-tiny-b");
    return tu_done("backward");
}
