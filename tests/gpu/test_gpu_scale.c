// The scale driver (issue 18): the CUDA backend at real shapes against the CPU, with random in-memory weights.
//  1. one layer of a Llama-2-7B shape (d_model 4096, 32 heads, 8 kv heads, d_mlp 11008, vocab 32000) at
//     T = 2048 in fp32: a cache row (PS_CACHE_ALL: scores, pattern and result pass 2^31 bytes) and a patched row
//     starting at T-1 from it;
//  2. two heads of d_head 128 at T = 12288: attention's shared memory beyond 48 KB (the opt-in path);
//  3. a GPT-2-small shape (12 layers, 768, vocab 50257) with full-vocabulary logits in fp16 and bf16 (and fp32),
//     printing the largest errors to calibrate gpu_tol_for's bounds.
// The CPU side stays small: by causality the GPU's long run at positions [0, P) must equal a CPU run of the
// first P tokens, and a CPU row that starts at T-k from the GPU's own cache must reproduce the GPU's last k
// positions; so no CPU forward is ever T long. Meant to finish in well under a minute on an H200.
// SKIP without a GPU. `--tiny` shrinks every shape and `--cpu` stands the CPU backend in for CUDA, so the driver
// itself can be checked on a machine without one (neither is what gpu-check.sh runs).
#include "gpu_common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int g_tiny, g_cpu;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int backend_for(ps_backend *b, const ps_model *m, ps_precision prec, ps_error *e) {
    memset(b, 0, sizeof *b);
    if (g_cpu) {
        const ps_backend_opts o = {.kind = PS_BACKEND_CPU, .precision = PS_PREC_FP32};
        return ps_backend_init_opts(b, &o, m, e);
    }
    const ps_backend_opts o = {.kind = PS_BACKEND_CUDA, .precision = prec};
    return ps_cuda_backend_init(b, &o, m, e);
}

// Largest |got - want| and the same over max|want|; checked against t; printed either way.
static void report(const char *name, const float *got, const float *want, int64_t n, gpu_tol t) {
    double mx = 0, mw = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(want[i])) continue;
        if (!isfinite(got[i])) { bad++; continue; }
        const double d = fabs((double)got[i] - want[i]);
        if (d > mx) mx = d;
        if (fabs(want[i]) > mw) mw = fabs(want[i]);
    }
    printf("  %-52s n=%-10lld max_abs_err=%.3g max|want|=%.3g rel_to_max=%.3g%s\n", name, (long long)n, mx, mw,
           mw > 0 ? mx / mw : 0.0, bad ? " NON-FINITE" : "");
    TU_CHECK(!bad, "%s: %lld non-finite values where the CPU has finite ones", name, (long long)bad);
    gpu_close(name, got, want, n, t);
}

// Array a of cache c at positions [0, P) of layer l: (P, width) rows, for caches of different T (position-major).
static const float *prefix(const ps_model_config *cfg, const ps_cache *c, ps_array a, int64_t l) {
    return ps_cache_array(c, a) + ps_array_at(cfg, a, c->T, l, 0, 0);
}

static void random_tokens(int32_t *tok, int64_t T, int64_t V, uint64_t seed) {
    for (int64_t i = 0; i < T; i++) tok[i] = (int32_t)(gpu_rand_u64(&seed) % (uint64_t)V);
}

// A long run on the GPU checked piecewise against the CPU: prefix P from scratch (every position-major hook and
// the logits), and the last k positions from the GPU's cache (logits), plus a patched row starting at T-1.
static void long_run(const char *label, const ps_model *m, int64_t T, int64_t P, int64_t k, unsigned flags, gpu_tol t) {
    const ps_model_config *cfg = &m->cfg;
    const int64_t V = cfg->d_vocab, L = cfg->n_layers;
    ps_backend b;
    ps_error e = {0};
    double t0 = now();
    if (backend_for(&b, m, PS_PREC_FP32, &e) != 0) { TU_CHECK(0, "%s: backend: %s", label, e.msg); return; }
    printf("%s: T=%lld on %s (fp32), set-up %.1fs\n", label, (long long)T, b.device, now() - t0);
    int32_t *tok = malloc((size_t)T * sizeof *tok);
    float *lg_gpu = malloc((size_t)(2 * V) * sizeof(float)), *lg_cpu = malloc((size_t)((k + 1) * V) * sizeof(float));
    ps_cache g, cpre;
    memset(&g, 0, sizeof g);
    memset(&cpre, 0, sizeof cpre);
    if (!tok || !lg_gpu || !lg_cpu || ps_cache_init(&g, cfg, T, flags, &e) || ps_cache_init(&cpre, cfg, P, flags, &e)) {
        TU_CHECK(0, "%s: out of memory (%s)", label, e.msg);
        goto out;
    }
    random_tokens(tok, T, V, 0x5ca1e + (uint64_t)T);
    // GPU: the cache row, then a patched row starting at T-1 from it (z of head 3 zeroed, its last position).
    t0 = now();
    ps_row gr = {.tokens = tok, .T = T, .cache = &g};
    if (b.forward(&b, m, &gr, 1, &e) != 0) { TU_CHECK(0, "%s: cache row: %s", label, e.msg); goto out; }
    printf("  GPU cache row: %.2fs\n", now() - t0);
    const int64_t last = T - 1;
    ps_patch zp = {.op = PS_OP_ZERO, .site = PS_SITE_Z, .layer = L - 1, .head = 3 % cfg->n_heads, .pos = -1, .neuron = -1};
    ps_row pr = {.tokens = tok, .T = T, .base = &g, .start_pos = T - 1, .patches = &zp, .n_patches = 1, .out_pos = &last,
                 .n_out = 1, .logits = lg_gpu};
    t0 = now();
    if (b.forward(&b, m, &pr, 1, &e) != 0) { TU_CHECK(0, "%s: row at T-1: %s", label, e.msg); goto out; }
    printf("  GPU row at T-1: %.3fs\n", now() - t0);

    // CPU: the prefix from scratch.
    t0 = now();
    ps_row cr = {.tokens = tok, .T = P, .cache = &cpre};
    if (ps_cpu_forward(m, &cr, 1, &e) != 0) { TU_CHECK(0, "%s: CPU prefix: %s", label, e.msg); goto out; }
    const ps_array arrs[] = {PS_ARR_RESID_PRE, PS_ARR_Q, PS_ARR_K, PS_ARR_V, PS_ARR_Z, PS_ARR_ATTN_OUT, PS_ARR_MLP_POST,
                             PS_ARR_RESID_POST, PS_ARR_LOGITS};
    for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
        const ps_array a = arrs[i];
        if (!ps_cache_array(&g, a) || !ps_cache_array(&cpre, a)) continue;
        const int64_t l = ps_arrays[a].per_layer ? L - 1 : 0;
        char name[160];
        snprintf(name, sizeof name, "%s prefix %lld: %s", label, (long long)P, ps_arrays[a].hook);
        report(name, prefix(cfg, &g, a, l), prefix(cfg, &cpre, a, l), P * ps_array_width(cfg, a, P), t);
    }
    // CPU: the last k positions from the GPU's cache, and the patched row at T-1.
    int64_t outs[8];
    for (int64_t i = 0; i < k; i++) outs[i] = T - k + i;
    ps_row tail[2] = {{.tokens = tok, .T = T, .base = &g, .start_pos = T - k, .out_pos = outs, .n_out = k, .logits = lg_cpu},
                      pr};
    tail[1].logits = lg_cpu + k * V;
    if (ps_cpu_forward(m, tail, 2, &e) != 0) { TU_CHECK(0, "%s: CPU tail: %s", label, e.msg); goto out; }
    printf("  CPU side: %.2fs\n", now() - t0);
    char name[160];
    if (g.logits) {
        snprintf(name, sizeof name, "%s last %lld positions: logits", label, (long long)k);
        report(name, g.logits + (T - k) * V, lg_cpu, k * V, t);
    }
    snprintf(name, sizeof name, "%s patched row at T-1: logits", label);
    report(name, lg_gpu, lg_cpu + k * V, V, t);
out:
    ps_backend_free(&b);
    ps_cache_free(&g);
    ps_cache_free(&cpre);
    free(tok); free(lg_gpu); free(lg_cpu);
}

// Full-vocabulary logits of a few prompts at every precision against the CPU's fp32, with a cache row's hooks.
static void precision_run(const char *label, const ps_model *m, int64_t T, int n_prompts) {
    const ps_model_config *cfg = &m->cfg;
    const int64_t V = cfg->d_vocab;
    int32_t *tok = malloc((size_t)(n_prompts * T) * sizeof *tok);
    float *want = malloc((size_t)(n_prompts * V) * sizeof(float)), *got = malloc((size_t)(n_prompts * V) * sizeof(float));
    int64_t *last = malloc((size_t)n_prompts * sizeof *last);
    ps_row *rows = calloc((size_t)n_prompts + 1, sizeof *rows);
    ps_cache cc, gc;
    memset(&cc, 0, sizeof cc);
    memset(&gc, 0, sizeof gc);
    ps_error e = {0};
    if (!tok || !want || !got || !last || !rows || ps_cache_init(&cc, cfg, T, PS_CACHE_LOGITS, &e) ||
        ps_cache_init(&gc, cfg, T, PS_CACHE_LOGITS, &e)) {
        TU_CHECK(0, "%s: out of memory", label);
        goto out;
    }
    random_tokens(tok, n_prompts * T, V, 0x9a2 + (uint64_t)T);
    for (int i = 0; i < n_prompts; i++) {
        last[i] = T - 1;
        rows[i] = (ps_row){.tokens = tok + i * T, .T = T, .out_pos = &last[i], .n_out = 1, .logits = want + i * V};
    }
    rows[n_prompts] = (ps_row){.tokens = tok, .T = T, .cache = &cc};
    double t0 = now();
    if (ps_cpu_forward(m, rows, n_prompts + 1, &e) != 0) { TU_CHECK(0, "%s: CPU: %s", label, e.msg); goto out; }
    printf("%s: %d prompts of T=%lld, CPU %.2fs\n", label, n_prompts, (long long)T, now() - t0);
    const ps_precision precs[] = {PS_PREC_FP32, PS_PREC_FP16, PS_PREC_BF16};
    for (int p = 0; p < 3; p++) {
        ps_backend b;
        if (backend_for(&b, m, precs[p], &e) != 0) { TU_CHECK(0, "%s: backend: %s", label, e.msg); continue; }
        for (int i = 0; i < n_prompts; i++) rows[i].logits = got + i * V;
        rows[n_prompts].cache = &gc;
        t0 = now();
        const int rc = b.forward(&b, m, rows, n_prompts + 1, &e);
        TU_CHECK(rc == 0, "%s %s: forward: %s", label, ps_precision_name(precs[p]), e.msg);
        if (rc == 0) {
            printf(" %s (%.2fs):\n", ps_precision_name(precs[p]), now() - t0);
            const gpu_tol t = gpu_tol_for(precs[p]);
            char name[160];
            snprintf(name, sizeof name, "%s %s last-position logits", label, ps_precision_name(precs[p]));
            report(name, got, want, n_prompts * V, t);
            const ps_array arrs[] = {PS_ARR_RESID_MID, PS_ARR_MLP_POST, PS_ARR_RESID_POST, PS_ARR_LOGITS};
            for (size_t i = 0; i < sizeof arrs / sizeof arrs[0]; i++) {
                snprintf(name, sizeof name, "%s %s cache %s", label, ps_precision_name(precs[p]), ps_arrays[arrs[i]].hook);
                report(name, ps_cache_array(&gc, arrs[i]), ps_cache_array(&cc, arrs[i]),
                       (int64_t)ps_array_floats(cfg, arrs[i], T, PS_CACHE_LOGITS), t);
            }
        }
        for (int i = 0; i < n_prompts; i++) rows[i].logits = want + i * V;
        rows[n_prompts].cache = &cc;
        ps_backend_free(&b);
    }
out:
    ps_cache_free(&cc);
    ps_cache_free(&gc);
    free(tok); free(want); free(got); free(last); free(rows);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        g_tiny |= !strcmp(argv[i], "--tiny");
        g_cpu |= !strcmp(argv[i], "--cpu");
    }
    if (!g_cpu) gpu_require_device();
    const double t_start = now();
    // fp32 at these widths: cuBLAS and OpenBLAS sum 4096-11008 products in different orders.
    const gpu_tol wide = {1e-3f, 1e-4f, 1e-3f};
    ps_model m;
    double t0 = now();
    // 1. One Llama-2-7B layer.
    if (g_tiny ? gpu_random_model(&m, PS_ARCH_LLAMA, 1, 8, 2, 16, 96, 300, 64, 7)
               : gpu_random_model(&m, PS_ARCH_LLAMA, 1, 32, 8, 128, 11008, 32000, 4096, 7)) {
        TU_CHECK(0, "llama-7b layer: out of host memory for the weights");
    } else {
        printf("llama-2-7b layer weights: %.1fs\n", now() - t0);
        long_run("llama-7b layer", &m, g_tiny ? 48 : 2048, 16, 4, PS_CACHE_ALL, wide);
        gpu_free_model(&m);
    }
    // 2. Two heads of 128 at T = 12288 (shared memory (128 + T) floats = 49.7 KB: the opt-in).
    if (g_tiny ? gpu_random_model(&m, PS_ARCH_LLAMA, 1, 2, 2, 16, 64, 128, 200, 8)
               : gpu_random_model(&m, PS_ARCH_LLAMA, 1, 2, 2, 128, 512, 512, 12288, 8)) {
        TU_CHECK(0, "long attention: out of host memory");
    } else {
        long_run("2 heads x 128, long", &m, g_tiny ? 200 : 12288, 16, 2, PS_CACHE_LOGITS, wide);
        gpu_free_model(&m);
    }
    // 3. GPT-2 small, full vocabulary, every precision.
    t0 = now();
    if (g_tiny ? gpu_random_model(&m, PS_ARCH_GPT2, 2, 4, 4, 16, 128, 500, 64, 9)
               : gpu_random_model(&m, PS_ARCH_GPT2, 12, 12, 12, 64, 3072, 50257, 1024, 9)) {
        TU_CHECK(0, "gpt2-small: out of host memory");
    } else {
        printf("gpt2-small weights: %.1fs\n", now() - t0);
        precision_run("gpt2-small", &m, g_tiny ? 16 : 64, 4);
        gpu_free_model(&m);
    }
    printf("scale driver: %.1fs in all\n", now() - t_start);
    return tu_done("gpu scale");
}
