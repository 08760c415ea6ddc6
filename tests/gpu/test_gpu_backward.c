// The CUDA backend's backward pass (ps_backend.backward, kernels/cuda_backward.cu) against ps_cpu_backward, the
// reference, on the tiny checkpoints of tests/data (gpt2-tiny-*, llama-tiny-*; neox-tiny-* too, where both must
// give the same answer: today both refuse GPT-NeoX) and on random GPT-2 / Llama (GQA) models: every hook's gradient
// at 1e-4 (abs + rel, fp32), for sequence lengths 1, 7 and n_ctx, with the metric reading logits at three
// positions (one twice), for gradient caches with every optional array and with none, and for a forward cache the
// GPU made (its device copy reused); and through the engine, attribution and edge attribution tables on CUDA
// against the CPU backend's. Without a GPU it checks the CPU backend leaves backward NULL (the engine then runs
// the reference), then skips. Unrun on a GPU so far.
#include "gpu_common.h"
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_producer.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// Every array two gradient caches both hold, by name; one held on one side only is a failure.
static void compare_grads(const char *what, const ps_cache *got, const ps_cache *want, const ps_model_config *cfg) {
    const gpu_tol t = {1e-4f, 0.0f, 1e-4f};
    for (int a = 0; a < PS_ARR_COUNT; a++) {
        const float *g = ps_cache_array(got, (ps_array)a), *w = ps_cache_array(want, (ps_array)a);
        const char *hook = ps_arrays[a].hook;
        TU_CHECK(!g == !w, "%s: gradient %s present on one side only", what, hook);
        if (!g || !w) continue;
        char name[320];
        snprintf(name, sizeof name, "%s d/d %s", what, hook);
        gpu_close(name, g, w, (int64_t)ps_array_floats(cfg, (ps_array)a, want->T, PS_CACHE_ALL), t);
    }
}

static void compare_T(ps_backend *b, const ps_model *m, const char *label, int64_t T, uint64_t seed) {
    const ps_model_config *cfg = &m->cfg;
    const int64_t V = cfg->d_vocab;
    char what[192];
    snprintf(what, sizeof what, "%s T=%lld", label, (long long)T);
    uint64_t s = seed;
    int32_t *tok = malloc((size_t)T * sizeof *tok);
    float *dl = malloc((size_t)(3 * V) * sizeof *dl);
    if (!tok || !dl) { TU_CHECK(0, "out of memory"); free(tok); free(dl); return; }
    for (int64_t i = 0; i < T; i++) tok[i] = (int32_t)(gpu_rand_u64(&s) % (uint64_t)V);
    for (int64_t i = 0; i < 3 * V; i++) dl[i] = gpu_rand_uniform(&s);
    const int64_t pos[3] = {T - 1, T / 2, T - 1};
    const ps_logit_grad lg = {3, pos, dl};
    ps_error e = {0};
    ps_cache fc, fg, gc_all, gg_all, gc0, gg0, gg_dev;
    memset(&fc, 0, sizeof fc); memset(&fg, 0, sizeof fg); memset(&gc_all, 0, sizeof gc_all);
    memset(&gg_all, 0, sizeof gg_all); memset(&gc0, 0, sizeof gc0); memset(&gg0, 0, sizeof gg0); memset(&gg_dev, 0, sizeof gg_dev);
    int ok = ps_cache_init(&fc, cfg, T, 0, &e) == 0 && ps_cache_init(&fg, cfg, T, 0, &e) == 0 &&
             ps_cache_init(&gc_all, cfg, T, PS_CACHE_ALL, &e) == 0 && ps_cache_init(&gg_all, cfg, T, PS_CACHE_ALL, &e) == 0 &&
             ps_cache_init(&gc0, cfg, T, 0, &e) == 0 && ps_cache_init(&gg0, cfg, T, 0, &e) == 0 &&
             ps_cache_init(&gg_dev, cfg, T, PS_CACHE_ALL, &e) == 0;
    TU_CHECK(ok, "%s: cache init: %s", what, e.msg);
    if (ok) {
        // The forward caches: one by the CPU (uploaded by the backward), one by the GPU (its device copy reused).
        ps_row rc = {.tokens = tok, .T = T, .cache = &fc}, rg = {.tokens = tok, .T = T, .cache = &fg};
        TU_CHECK(ps_cpu_forward(m, &rc, 1, &e) == 0, "%s: cpu forward: %s", what, e.msg);
        TU_CHECK(b->forward(b, m, &rg, 1, &e) == 0, "%s: cuda forward: %s", what, e.msg);
        ps_error ec = {0}, eg = {0};
        const int rcc = ps_cpu_backward(m, &fc, &lg, &gc_all, &ec);
        const int rcg = b->backward(b, m, &fc, &lg, &gg_all, &eg);
        if (rcc != 0) {
            // The reference refuses (GPT-NeoX today): the backend must refuse the same way.
            TU_CHECK(rcg != 0 && eg.code == ec.code && !strcmp(eg.msg, ec.msg), "%s: cpu backward refused (%s) but cuda gave rc=%d (%s)",
                     what, ec.msg, rcg, eg.msg);
        } else {
            TU_CHECK(rcg == 0, "%s: cuda backward: %s", what, eg.msg);
            char name[256];
            snprintf(name, sizeof name, "%s all arrays", what);
            if (rcg == 0) compare_grads(name, &gg_all, &gc_all, cfg);
            TU_CHECK(ps_cpu_backward(m, &fc, &lg, &gc0, &ec) == 0, "%s: cpu backward: %s", what, ec.msg);
            TU_CHECK(b->backward(b, m, &fc, &lg, &gg0, &eg) == 0, "%s: cuda backward (no optional arrays): %s", what, eg.msg);
            snprintf(name, sizeof name, "%s no optional arrays", what);
            compare_grads(name, &gg0, &gc0, cfg);
            // On the GPU's own forward cache: the CPU's gradient within the forward's rounding (1e-4 all the same).
            TU_CHECK(b->backward(b, m, &fg, &lg, &gg_dev, &eg) == 0, "%s: cuda backward (GPU forward): %s", what, eg.msg);
            snprintf(name, sizeof name, "%s on the GPU's forward cache", what);
            compare_grads(name, &gg_dev, &gc_all, cfg);
            // Bad input is refused, naming the position.
            const int64_t bad[1] = {T};
            const ps_logit_grad lb = {1, bad, dl};
            ps_error eb = {0};
            TU_CHECK(b->backward(b, m, &fc, &lb, &gg0, &eb) != 0 && strstr(eb.msg, "outside"),
                     "%s: a metric position past T: want a refusal, got \"%s\"", what, eb.msg);
        }
        if (b->release_cache) {
            b->release_cache(b, &fc);
            b->release_cache(b, &fg);
        }
    }
    ps_cache_free(&fc); ps_cache_free(&fg); ps_cache_free(&gc_all); ps_cache_free(&gg_all);
    ps_cache_free(&gc0); ps_cache_free(&gg0); ps_cache_free(&gg_dev);
    free(tok);
    free(dl);
}

static void run_model(const ps_model *m, const char *label) {
    ps_backend b;
    ps_error e = {0};
    const ps_backend_opts o = {.kind = PS_BACKEND_CUDA, .precision = PS_PREC_FP32};
    if (ps_cuda_backend_init(&b, &o, m, &e) != 0) {
        TU_CHECK(0, "%s: ps_cuda_backend_init: %s", label, e.msg);
        return;
    }
    TU_CHECK(b.backward != NULL, "%s: the cuda backend has no backward", label);
    if (b.backward) {
        const int64_t Ts[] = {1, 7, m->cfg.n_ctx};
        for (int i = 0; i < 3; i++)
            if (i == 0 || Ts[i] != Ts[i - 1]) compare_T(&b, m, label, Ts[i], 0xbac0000u + (uint64_t)Ts[i]);
    }
    ps_backend_free(&b);
}

// Through the engine: attribution on every site and layout in both directions, and edge attribution (EAP,
// EAP-IG-inputs with 3 steps, clean-corrupted), on the CPU backend and on CUDA (ps_backend.backward): every cell of
// every table at 1e-4 abs + rel (NaN where the other has NaN: non-edges).
static void test_engine(const char *name) {
    pf_fixture f;
    if (pf_load_or_fail(&f, name) != 0) return;
    if (f.m.cfg.arch != PS_ARCH_GPT2 && f.m.cfg.arch != PS_ARCH_LLAMA) { pf_free(&f); return; }  // no backward yet
    enum { MAXX = 2 * PS_SITE_COUNT * PS_BY_COUNT + 3 };
    ps_experiment ex[MAXX];
    char names[MAXX][64];
    int nx = 0;
    for (int d = 0; d < 2; d++)
        for (int s = 0; s < PS_SITE_COUNT; s++)
            for (int l = 0; l < PS_BY_COUNT; l++) {
                if (!ps_layout_fits((ps_site)s, (ps_layout)l)) continue;
                snprintf(names[nx], 64, "attr.%s.%s.%s", d ? "noise" : "denoise", ps_site_name((ps_site)s), ps_layout_name((ps_layout)l));
                ex[nx] = (ps_experiment){.name = names[nx], .kind = "attribution", .site = (ps_site)s, .layout = (ps_layout)l,
                                         .direction = d ? PS_DIR_NOISE : PS_DIR_DENOISE};
                nx++;
            }
    ex[nx++] = (ps_experiment){.name = "eap", .kind = "edge_attribution"};
    ex[nx++] = (ps_experiment){.name = "ig", .kind = "edge_attribution", .method = PS_EDGE_EAP_IG_INPUTS, .steps = 3};
    ex[nx++] = (ps_experiment){.name = "cc", .kind = "edge_attribution", .method = PS_EDGE_CLEAN_CORRUPTED};
    ps_backend cpu, gpu;
    ps_run_results rc, rg;
    ps_engine_opts o = {0};
    ps_error e = {0};
    const ps_backend_opts bo = {.kind = PS_BACKEND_CUDA, .precision = PS_PREC_FP32};
    if (ps_backend_init(&cpu, PS_BACKEND_CPU, PS_PREC_FP32, 0, &f.m, &e) != 0 ||
        ps_engine_run(&f.m, &cpu, &f.ps, ex, nx, PS_METRIC_LOGIT_DIFF, &o, &rc, &e) != 0) {
        TU_CHECK(0, "%s: cpu attribution run: %s", name, e.msg);
        pf_free(&f);
        return;
    }
    if (ps_backend_init_opts(&gpu, &bo, &f.m, &e) != 0 || ps_engine_run(&f.m, &gpu, &f.ps, ex, nx, PS_METRIC_LOGIT_DIFF, &o, &rg, &e) != 0) {
        TU_CHECK(0, "%s: cuda attribution run: %s", name, e.msg);
    } else {
        double worst = 0;
        int64_t cells = 0;
        for (int x = 0; x < nx; x++) {
            const ps_table *tc = &rc.tables[x], *tg = &rg.tables[x];
            if (tc->n_cells != tg->n_cells || tc->n_rows != tg->n_rows) {
                TU_CHECK(0, "%s %s: tables of different shapes", name, ex[x].name);
                continue;
            }
            int bad = 0;
            for (int64_t k = 0; k < tc->n_rows * tc->n_cells; k++) {
                const float w = tc->values[k], g = tg->values[k];
                if (isnan(w) || isnan(g)) {
                    if (!(isnan(w) && isnan(g)) && bad++ < 5) TU_CHECK(0, "%s %s[%lld]: cuda %g, cpu %g", name, ex[x].name, (long long)k, g, w);
                    continue;
                }
                const double err = fabs((double)g - w);
                if (err > worst) worst = err;
                cells++;
                if (!(err <= 1e-4 + 1e-4 * fabs(w)) && bad++ < 5)
                    TU_CHECK(0, "%s %s[%lld]: cuda %.7g, cpu %.7g", name, ex[x].name, (long long)k, g, w);
            }
        }
        printf("%s: %d attribution / edge attribution tables, %lld cells, cuda vs cpu: max |err| %.2e\n", name, nx,
               (long long)cells, worst);
        ps_run_results_free(&rg);
        ps_backend_free(&gpu);
    }
    ps_run_results_free(&rc);
    ps_backend_free(&cpu);
    pf_free(&f);
}

int main(void) {
    {
        // Without a GPU too: the CPU backend has no backward of its own, so the engine runs ps_cpu_backward.
        ps_model m;
        ps_backend b;
        ps_error e = {0};
        if (gpu_random_model(&m, PS_ARCH_GPT2, 1, 2, 2, 8, 32, 11, 8, 1) == 0) {
            TU_CHECK(ps_backend_init(&b, PS_BACKEND_CPU, PS_PREC_FP32, 1, &m, &e) == 0, "cpu backend: %s", e.msg);
            TU_CHECK(!b.backward, "the cpu backend sets backward: the engine would not run the reference");
            ps_backend_free(&b);
            gpu_free_model(&m);
        }
        if (tu_failures) return tu_done("gpu backward (no-device checks)");
    }
    gpu_require_device();
    ps_model m;
    if (gpu_random_model(&m, PS_ARCH_GPT2, 2, 3, 3, 16, 40, 37, 24, 21) == 0) {
        run_model(&m, "random gpt2");
        gpu_free_model(&m);
    }
    if (gpu_random_model(&m, PS_ARCH_LLAMA, 2, 4, 2, 16, 40, 37, 24, 22) == 0) {
        run_model(&m, "random llama (GQA)");
        gpu_free_model(&m);
    }
    const char *data = tu_src("tests/data");
    DIR *dir = opendir(data);
    struct dirent *de;
    int tested = 0;
    while (dir && (de = readdir(dir))) {
        if (strncmp(de->d_name, "gpt2-tiny-", 10) && strncmp(de->d_name, "llama-tiny-", 11) &&
            strncmp(de->d_name, "neox-tiny-", 10))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", data, de->d_name);
        ps_error e = {0};
        if (ps_model_load(&m, path, &e) != 0) continue;  // incomplete checkpoints are test_gpu_forward's concern
        run_model(&m, de->d_name);
        ps_model_free(&m);
        tested++;
    }
    if (dir) closedir(dir);
    printf("%d tiny models' gradients compared on the CUDA backend\n", tested);
    gu_for_each_model(test_engine);
    return tu_done("gpu backward");
}
