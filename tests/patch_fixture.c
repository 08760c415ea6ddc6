// The patching fixture shared by the engine tests (CPU) and the GPU sweep test: a tiny model, its
// TransformerLens patching goldens (tests/data/<model>/golden_patch.safetensors), one experiment per
// TransformerLens sweep kind in both directions, and the comparisons.
#include "patch_fixture.h"
#include "ps_producer.h"

#include "golden_util.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

const pf_kind PF_KINDS[PF_NK] = {
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

int pf_load(pf_fixture *f, const char *model, ps_error *e) {
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
        for (int k = 0; k < PF_NK; k++) {
            if (!ps_array_in_model(&f->m.cfg, ps_site_array(PF_KINDS[k].site))) continue;
            const int i = f->n_ex++;
            ps_experiment *x = &f->ex[i];
            f->kind[i] = k;
            snprintf(f->names[i], 64, "%s_%s", d ? "noise" : "denoise", PF_KINDS[k].key);
            x->name = f->names[i];
            x->site = PF_KINDS[k].site;
            x->layout = PF_KINDS[k].layout;
            x->direction = d ? PS_DIR_NOISE : PS_DIR_DENOISE;
        }
    return 0;
}

int pf_load_or_fail(pf_fixture *f, const char *model) {
    ps_error e = {0};
    if (pf_load(f, model, &e) == 0) return 0;
    TU_CHECK(0, "%s: %s", model, e.msg);
    pf_free(f);
    return -1;
}

int pf_load_cpu_or_fail(pf_fixture *f, const char *model, int threads, ps_backend *be) {
    if (pf_load_or_fail(f, model) != 0) return -1;
    ps_error e = {0};
    if (ps_backend_init(be, PS_BACKEND_CPU, PS_PREC_FP32, threads, &f->m, &e) == 0) return 0;
    TU_CHECK(0, "%s: cpu backend: %s", model, e.msg);
    pf_free(f);
    return -1;
}

void pf_free(pf_fixture *f) {
    ps_prompt_set_free(&f->ps);
    ps_safetensors_free(&f->g);
    ps_model_free(&f->m);
}

// Our cell for (prompt p, golden index) of a sweep whose golden has p's own length on the pos axis.
void pf_compare_with_goldens(const char *model, pf_fixture *f, const ps_run_results *rr, const char *mode, float tol) {
    for (int64_t i = 0; i < f->ps.n; i++) {
        char key[128], nm[256];
        int64_t n;
        snprintf(key, sizeof key, "p%lld.clean_metric", (long long)i);
        float *cm = gu_f32(&f->g, key, &n);
        snprintf(key, sizeof key, "p%lld.corrupted_metric", (long long)i);
        float *xm = gu_f32(&f->g, key, &n);
        snprintf(nm, sizeof nm, "%s [%s] p%lld baseline clean", model, mode, (long long)i);
        tu_close(nm, &rr->base.clean[i], cm, 1, tol, tol);
        snprintf(nm, sizeof nm, "%s [%s] p%lld baseline corrupted", model, mode, (long long)i);
        tu_close(nm, &rr->base.corrupted[i], xm, 1, tol, tol);
        free(cm);
        free(xm);
        for (int64_t s = 0; s < rr->n_products; s++) {
            const ps_sweep *sw = (const ps_sweep *)rr->products[s].state;
            const int k = f->kind[s];
            snprintf(key, sizeof key, "p%lld.%s.%s", (long long)i, sw->ex->direction ? "noise" : "denoise", PF_KINDS[k].key);
            float *want = gu_f32(&f->g, key, &n);
            if (!want) { TU_CHECK(0, "%s: golden %s missing", model, key); continue; }
            // Gather our values for this prompt into the golden's layout.
            float *got = malloc((size_t)n * sizeof(float));
            const float *v = sw->t->values + i * sw->n_cells;
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
                    if (PF_KINDS[k].head_before_pos) {
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
                tu_close(nm, got, want, n, tol, tol);
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

void pf_compare_runs(const char *what, const ps_run_results *a, const ps_run_results *b, int64_t n_prompts, float tol) {
    char nm[256];
    snprintf(nm, sizeof nm, "%s baseline", what);
    tu_close(nm, a->base.clean, b->base.clean, n_prompts, tol, tol);
    for (int64_t s = 0; s < a->n_tables; s++) {
        snprintf(nm, sizeof nm, "%s %s", what, a->tables[s].name);
        tu_close(nm, a->tables[s].values, b->tables[s].values, n_prompts * a->tables[s].n_cells, tol, tol);
    }
}
