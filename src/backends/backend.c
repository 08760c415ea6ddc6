// Backend selection: the CPU reference, or CUDA when it is built and a GPU is present; the thread count,
// the capability bits, and the dry run's stand-in for a device this machine lacks.
#include "ps_backend.h"
#include "ps_blas.h"
#include "ps_cuda.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cpu_forward(ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    return ps_cpu_forward_ws(m, rows, n_rows, (ps_cpu_workspace *)b->impl, e);
}

static int cpu_forward_groups(ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends,
                              int64_t n_groups, ps_error *e) {
    return ps_cpu_forward_groups_ws(m, rows, n_rows, ends, n_groups, (ps_cpu_workspace *)b->impl, e);
}

// Through the loaded BLAS (ps_blas_init's choice unless one was loaded before).
// Mode 2: every thread its own whole GEMM at once (its own A and C, the weights shared), single-threaded, as the
// CPU forward runs a batch cut into pieces (cpu_forward.c): the rate of all of them together.
static double gemm_rate_per_thread(int64_t M, int64_t K, int64_t N, double seconds, const float *w) {
    const int nt = omp_get_max_threads();
    float *a = malloc((size_t)(nt * M * K) * sizeof(float)), *c = malloc((size_t)(nt * M * N) * sizeof(float));
    double rate = 0;
    if (a && c) {
        for (int64_t i = 0; i < nt * M * K; i++) a[i] = (float)(i % 7) * 0.1f;
        ps_blas_set_num_threads(1);
        struct timespec t0 = {0}, t1;
        int reps = -1; // the first round warms up, untimed
        double el = 0;
        while (el < seconds) {
#pragma omp parallel num_threads(nt)
            {
                const int t = omp_get_thread_num();
                ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, a + t * M * K, (int)K, w,
                         (int)N, 0.0f, c + t * M * N, (int)N);
            }
            if (++reps == 0) clock_gettime(CLOCK_MONOTONIC, &t0);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            el = reps ? (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec) : 0;
        }
        rate = 2.0 * (double)(M * N * K) * nt * reps / el * 1e-9;
    } else {
        fprintf(stderr, "patchsweep: out of memory for %d %lldx%lldx%lld GEMMs\n", nt, (long long)M, (long long)K, (long long)N);
    }
    free(a); free(c);
    return rate;
}

double ps_cpu_gemm_rate(int64_t M, int64_t K, int64_t N, double seconds, int row_blocks) {
    float *a = malloc((size_t)(M * K) * sizeof(float)), *w = malloc((size_t)(K * N) * sizeof(float)),
          *c = malloc((size_t)(M * N) * sizeof(float));
    double rate = 0;
    if (a && w && c && row_blocks == 2) {
        for (int64_t i = 0; i < K * N; i++) w[i] = (float)(i % 5) * 0.1f;
        rate = gemm_rate_per_thread(M, K, N, seconds, w);
    } else if (a && w && c) {
        for (int64_t i = 0; i < M * K; i++) a[i] = (float)(i % 7) * 0.1f;
        for (int64_t i = 0; i < K * N; i++) w[i] = (float)(i % 5) * 0.1f;
        if (!row_blocks) ps_blas_set_num_threads(omp_get_max_threads());
        struct timespec t0 = {0}, t1;
        int reps = -1; // the first call warms up, untimed
        double el = 0;
        while (el < seconds) {
            if (row_blocks) ps_cpu_linear(c, a, w, NULL, M, K, N);
            else ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, a, (int)K, w, (int)N, 0.0f, c, (int)N);
            if (++reps == 0) clock_gettime(CLOCK_MONOTONIC, &t0);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            el = reps ? (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec) : 0;
        }
        rate = 2.0 * (double)(M * N * K) * reps / el * 1e-9;
        if (!row_blocks) ps_blas_set_num_threads(1); // as the CPU backend runs it
    } else {
        fprintf(stderr, "patchsweep: out of memory for a %lldx%lldx%lld GEMM\n", (long long)M, (long long)K, (long long)N);
    }
    free(a); free(w); free(c);
    return rate;
}

static double cpu_gemm_rate(ps_backend *b, int64_t M, int64_t K, int64_t N, double seconds) {
    return ps_cpu_gemm_rate(M, K, N, seconds, 1);
}

static void cpu_free(ps_backend *b) {
    if (b->impl) ps_cpu_workspace_free((ps_cpu_workspace *)b->impl);
    free(b->impl);
    b->impl = NULL;
}

// The CPU reference backend (fp32 only).
static int cpu_init(ps_backend *b, ps_precision prec, ps_error *e) {
    memset(b, 0, sizeof *b);
    if (prec != PS_PREC_FP32)
        return ps_fail(e, PS_EXIT_BADINPUT, "precision \"%s\": the CPU backend computes in fp32 only (fp16/bf16 need the cuda backend)",
                       ps_precision_name(prec));
    if (ps_blas_init(NULL, e) != 0) return -1; // the BLAS for this CPU, self-checked (ps_blas.h)
    b->kind = PS_BACKEND_CPU;
    b->precision = PS_PREC_FP32;
    b->name = "cpu";
    b->threads = omp_get_max_threads();
    snprintf(b->device, sizeof b->device, "CPU (%d threads)", b->threads);
    b->caps = PS_CAPS_CPU;
    b->forward = cpu_forward;
    b->forward_groups = cpu_forward_groups;
    b->free = cpu_free;
    b->gemm_rate = cpu_gemm_rate;
    b->impl = calloc(1, sizeof(ps_cpu_workspace));
    if (!b->impl) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    return 0;
}

int ps_backend_init_opts(ps_backend *b, const ps_backend_opts *o, const ps_model *m, ps_error *e) {
    memset(b, 0, sizeof *b);
    if (o->threads > 0) {
        omp_set_num_threads(o->threads); // the BLAS runs single-threaded inside them (ps_cpu_linear)
    }
    char why[256] = "";
    if (o->plan_only && o->kind == PS_BACKEND_CUDA && ps_cuda_device_count(why, sizeof why) <= 0) {
        // A dry run on a machine without the GPU (a login node): the plan does not need one. The CPU computes
        // the baselines and rows are planned as the cuda backend runs them (its caps); only the time estimate
        // needs the device.
        fprintf(stderr, "patchsweep: --dry-run: no GPU here (%s); planning on the CPU for the cuda backend\n", why);
        if (cpu_init(b, PS_PREC_FP32, e) != 0) return -1;
        b->stand_in_for = "cuda";
        b->caps = PS_CAPS_CUDA;
        b->gemm_rate = NULL;
        return 0;
    }
    if (o->kind == PS_BACKEND_CUDA || o->kind == PS_BACKEND_AUTO) {
        ps_error ce = {0};
        if (ps_cuda_backend_init(b, o, m, &ce) == 0) return 0;
        if (o->kind == PS_BACKEND_CUDA)
            return ps_fail(e, PS_EXIT_BADINPUT, "backend \"cuda\": %s (use \"backend\": \"cpu\" or \"auto\")", ce.msg);
        fprintf(stderr, "patchsweep: backend auto: %s; falling back to the CPU backend\n", ce.msg);
    }
    return cpu_init(b, o->precision, e);
}

int ps_backend_init(ps_backend *b, ps_backend_kind kind, ps_precision prec, int threads, const ps_model *m, ps_error *e) {
    const ps_backend_opts o = {.kind = kind, .precision = prec, .threads = threads};
    return ps_backend_init_opts(b, &o, m, e);
}

void ps_backend_free(ps_backend *b) {
    if (b && b->free) b->free(b);
    if (b) memset(b, 0, sizeof *b);
}

void ps_backend_release_caches(ps_backend *b, ps_cache *c, int64_t n) {
    for (int64_t i = 0; c && b && b->release_cache && i < n; i++) b->release_cache(b, &c[i]);
}

void ps_backend_drop_caches(ps_backend *b, ps_cache *c, int64_t n) {
    ps_backend_release_caches(b, c, n);
    for (int64_t i = 0; c && i < n; i++) ps_cache_free(&c[i]);
}
