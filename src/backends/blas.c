// The BLAS that finds the CPU: cpuid features -> the OpenBLAS core type (or BLIS) to load with dlopen, a
// self-check of every library before it is used, and ps_sgemm, the one GEMM entry point of the CPU backend.
// Why at run time: Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) picks its kernels from the CPU model and falls back to
// generic ones on CPUs newer than itself (Haswell kernels on Zen 5, Prescott on a Sapphire-Rapids-class VM).
#include "ps_blas.h"

#include <dlfcn.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define PS_X86 1
#endif

// ---------------------------------------------------------------------------------------------
// CPU features

#ifdef PS_X86
static uint64_t xgetbv0(void) {
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}
#endif

#ifdef PS_X86
// Where cpuid reports each feature: the query (0: leaf 1, 1: leaf 7.0, 2: leaf 7.1), the register (0-3: EAX,
// EBX, ECX, EDX) and the bit.
static const struct { int query, reg, bit; size_t field; } k_bits[] = {
    {0, 2, 0, offsetof(ps_cpu_features, sse3)},       {0, 2, 9, offsetof(ps_cpu_features, ssse3)},
    {0, 2, 12, offsetof(ps_cpu_features, fma)},       {0, 2, 19, offsetof(ps_cpu_features, sse41)},
    {0, 2, 20, offsetof(ps_cpu_features, sse42)},     {0, 2, 28, offsetof(ps_cpu_features, avx)},
    {0, 2, 29, offsetof(ps_cpu_features, f16c)},      {1, 1, 5, offsetof(ps_cpu_features, avx2)},
    {1, 1, 16, offsetof(ps_cpu_features, avx512f)},   {1, 1, 17, offsetof(ps_cpu_features, avx512dq)},
    {1, 1, 28, offsetof(ps_cpu_features, avx512cd)},  {1, 1, 30, offsetof(ps_cpu_features, avx512bw)},
    {1, 1, 31, offsetof(ps_cpu_features, avx512vl)},  {2, 0, 5, offsetof(ps_cpu_features, avx512bf16)},
};
#endif

void ps_cpu_features_detect(ps_cpu_features *f) {
    memset(f, 0, sizeof *f);
#ifdef PS_X86
    unsigned r[3][4] = {{0}};
    if (!__get_cpuid(1, &r[0][0], &r[0][1], &r[0][2], &r[0][3])) return;
    if (__get_cpuid_max(0, NULL) >= 7) {
        __cpuid_count(7, 0, r[1][0], r[1][1], r[1][2], r[1][3]);
        if (r[1][0] >= 1) __cpuid_count(7, 1, r[2][0], r[2][1], r[2][2], r[2][3]); // EAX of 7.0: last subleaf
    }
    for (size_t i = 0; i < sizeof k_bits / sizeof k_bits[0]; i++)
        *(int *)((char *)f + k_bits[i].field) = !!(r[k_bits[i].query][k_bits[i].reg] & (1u << k_bits[i].bit));
    if (r[0][2] & (1u << 27)) { // OSXSAVE: XGETBV may be executed
        const uint64_t xcr0 = xgetbv0();
        f->os_ymm = (xcr0 & 0x6) == 0x6;    // SSE + AVX state
        f->os_zmm = (xcr0 & 0xe6) == 0xe6;  // ... + opmask, ZMM0-15 upper halves, ZMM16-31
    }
#endif
}

void ps_cpu_features_str(const ps_cpu_features *f, char *buf, size_t n) {
    const struct { const char *name; int on; } k[] = {
        {"sse3", f->sse3}, {"ssse3", f->ssse3}, {"sse4.1", f->sse41}, {"sse4.2", f->sse42}, {"avx", f->avx},
        {"fma", f->fma}, {"avx2", f->avx2}, {"f16c", f->f16c}, {"avx512f", f->avx512f}, {"avx512dq", f->avx512dq},
        {"avx512cd", f->avx512cd}, {"avx512bw", f->avx512bw}, {"avx512vl", f->avx512vl},
        {"avx512bf16", f->avx512bf16}, {"os-ymm", f->os_ymm}, {"os-zmm", f->os_zmm},
    };
    size_t at = 0;
    if (n) buf[0] = '\0';
    for (size_t i = 0; i < sizeof k / sizeof k[0]; i++)
        if (k[i].on && at < n) {
            int w = snprintf(buf + at, n - at, "%s%s", at ? " " : "", k[i].name);
            at += w > 0 ? (size_t)w : 0;
        }
    if (n && !buf[0]) snprintf(buf, n, "none known");
}

// ---------------------------------------------------------------------------------------------
// Features -> OpenBLAS core types

// Instruction-set levels, each including the ones below it; a core type's kernels need its level.
enum { LVL_NONE, LVL_SSE3, LVL_SSSE3, LVL_SSE42, LVL_AVX, LVL_AVX2, LVL_AVX512, LVL_AVX512BF16 };

static int cpu_level(const ps_cpu_features *f) {
    if (!f->sse3) return LVL_NONE;
    if (!f->ssse3) return LVL_SSE3;
    if (!f->sse41 || !f->sse42) return LVL_SSSE3;
    if (!f->avx || !f->os_ymm) return LVL_SSE42;
    if (!f->avx2 || !f->fma) return LVL_AVX;
    // OpenBLAS's SkylakeX kernels use AVX-512 F, DQ, BW and VL (Knights Landing has F without BW: SIGILL).
    if (!(f->avx512f && f->avx512dq && f->avx512cd && f->avx512bw && f->avx512vl && f->os_zmm)) return LVL_AVX2;
    return f->avx512bf16 ? LVL_AVX512BF16 : LVL_AVX512;
}

// Fastest first. Cooperlake's sgemm is SkylakeX's kernel (it adds bf16 ones); measured within noise of it on
// Zen 5 and it is what OpenBLAS picks itself where it recognizes such a CPU. Zen is Haswell's kernels with other
// block sizes (measured equal on Zen 5), kept as a candidate for bench-gemm.
static const struct { const char *core, *cand; int level; } k_cores[] = {
    {"Cooperlake", "openblas:Cooperlake", LVL_AVX512BF16},
    {"SkylakeX", "openblas:SkylakeX", LVL_AVX512},
    {"Haswell", "openblas:Haswell", LVL_AVX2},
    {"Zen", "openblas:Zen", LVL_AVX2},
    {"SandyBridge", "openblas:SandyBridge", LVL_AVX},
    {"Nehalem", "openblas:Nehalem", LVL_SSE42},
    {"Core2", "openblas:Core2", LVL_SSSE3},
    {"Prescott", "openblas:Prescott", LVL_SSE3},
};
enum { N_CORES = sizeof k_cores / sizeof k_cores[0] };

int ps_openblas_coretypes(const ps_cpu_features *f, const char **out, int max) {
    const int lvl = cpu_level(f);
    int n = 0;
    for (int i = 0; i < N_CORES && n < max; i++)
        if (k_cores[i].level <= lvl) out[n++] = k_cores[i].core;
    return n;
}

// bench-gemm times the four best core types at most: the SSE-only ones are there only for CPUs without AVX.
enum { MAX_BENCHED_CORES = 4 };

int ps_blas_candidates(const ps_cpu_features *f, const char **out, int max) {
    const int lvl = cpu_level(f);
    int n = 0, cores = 0;
    for (int i = 0; i < N_CORES && n < max && cores < MAX_BENCHED_CORES; i++)
        if (k_cores[i].level <= lvl) { out[n++] = k_cores[i].cand; cores++; }
    if (n < max) out[n++] = "openblas";
    if (n < max) out[n++] = "blis";
    return n;
}

// ---------------------------------------------------------------------------------------------
// Self-check

static float lcg_float(uint32_t *s) { // [-0.5, 0.5): deterministic, no libc state
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / 16777216.0f - 0.5f;
}

int ps_blas_selfcheck(ps_sgemm_fn f, double *max_err, char *why, size_t why_len) {
    // (M, K, N, B transposed): odd sizes hit every edge case of the micro-kernels; 97x401x131 spans several
    // tiles in M and N and more than one block of K for the kernels measured here.
    static const int shapes[][4] = {{37, 53, 29, 0}, {37, 53, 29, 1}, {97, 401, 131, 0}, {97, 401, 131, 1}};
    const double atol = 1e-4, rtol = 1e-4;
    const int MX = 97, KX = 401, NX = 131;
    float *A = malloc((size_t)MX * KX * sizeof(float)), *B = malloc((size_t)KX * NX * sizeof(float)),
          *C = malloc((size_t)MX * NX * sizeof(float));
    int rc = 0;
    double worst = 0;
    if (!A || !B || !C) {
        snprintf(why, why_len, "out of memory for the BLAS self-check");
        rc = -1;
    }
    for (size_t s = 0; rc == 0 && s < sizeof shapes / sizeof shapes[0]; s++) {
        const int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2], tb = shapes[s][3];
        uint32_t seed = 12345u + (uint32_t)s;
        for (int i = 0; i < M * K; i++) A[i] = lcg_float(&seed);
        for (int i = 0; i < K * N; i++) B[i] = lcg_float(&seed);
        for (int i = 0; i < M * N; i++) C[i] = NAN; // beta = 0: C is output only, as the forward pass uses it
        // B is (K, N) row-major, or with tb its transpose (N, K) as the unembedding passes W_U.
        f(101, 111, tb ? 112 : 111, M, N, K, 1.0f, A, K, B, tb ? K : N, 0.0f, C, N);
        for (int i = 0; i < M && rc == 0; i++)
            for (int j = 0; j < N; j++) {
                double ref = 0;
                for (int k = 0; k < K; k++) ref += (double)A[i * K + k] * (double)(tb ? B[j * K + k] : B[k * N + j]);
                const double err = fabs((double)C[i * N + j] - ref);
                if (err > worst || err != err) worst = err != err ? INFINITY : err;
                if (!(err <= atol + rtol * fabs(ref))) {
                    snprintf(why, why_len, "GEMM %dx%dx%d (B %s): C[%d,%d] = %g where a plain loop gives %g (|error| %.3g > %g + %g |ref|)",
                             M, K, N, tb ? "transposed" : "as is", i, j, (double)C[i * N + j], ref, err, atol, rtol);
                    rc = -1;
                    break;
                }
            }
    }
    free(A); free(B); free(C);
    if (max_err) *max_err = worst;
    return rc;
}

// ---------------------------------------------------------------------------------------------
// Loading

typedef struct {
    ps_sgemm_fn sgemm;
    void (*set_threads)(int); // NULL where the library has no threading switch
    char choice[48], desc[192];
} blas_lib;

static blas_lib g_lib;              // the loaded BLAS: written once under g_mu, then only read
static atomic_int g_ready;          // 1 once g_lib is complete (release/acquire)
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;

static void *open_first(const char *const *sonames, const char **used, char *why, size_t why_len) {
    for (int i = 0; sonames[i]; i++) {
        void *h = dlopen(sonames[i], RTLD_NOW | RTLD_LOCAL); // LOCAL: OpenBLAS and BLIS both define cblas_*
        if (h) { *used = sonames[i]; return h; }
        if (i == 0) snprintf(why, why_len, "cannot load %s: %s", sonames[i], dlerror());
    }
    return NULL;
}

static void *need_sym(void *h, const char *lib, const char *sym, char *why, size_t why_len) {
    void *p = dlsym(h, sym);
    if (!p) snprintf(why, why_len, "%s has no symbol %s", lib, sym);
    return p;
}

// The one place patchsweep writes the process environment, and nothing in patchsweep reads it. OpenBLAS
// (DYNAMIC_ARCH) takes a core type only from OPENBLAS_CORETYPE, which its constructor reads once, when the library
// loads; it has no API to choose one (0.3.21 exports its per-core tables, gotoblas_SKYLAKEX ..., and the `gotoblas`
// pointer, but pointing that elsewhere after load would skip the chosen core's init of its block sizes). So:
// set it (coretype NULL: remove it, for OpenBLAS's own detection), dlopen, and remove it again, so that no child
// process inherits it. A user's own OPENBLAS_CORETYPE is overridden: bench-gemm --blas is the way to force one.
// Called with g_mu held, before any thread of ours runs a GEMM.
static void *dlopen_openblas_as(const char *coretype, const char **used, char *why, size_t why_len) {
    static const char *const sonames[] = {"libopenblas.so.0", "libopenblas.so", NULL};
    if (coretype) setenv("OPENBLAS_CORETYPE", coretype, 1);
    else unsetenv("OPENBLAS_CORETYPE");
    void *h = open_first(sonames, used, why, why_len);
    unsetenv("OPENBLAS_CORETYPE");
    return h;
}

static int load_openblas(const char *coretype, const char *cand, blas_lib *out, char *why, size_t why_len) {
    const char *so = NULL;
    void *h = dlopen_openblas_as(coretype, &so, why, why_len);
    if (!h) return -1;
    out->sgemm = (ps_sgemm_fn)need_sym(h, so, "cblas_sgemm", why, why_len);
    out->set_threads = (void (*)(int))need_sym(h, so, "openblas_set_num_threads", why, why_len);
    char *(*corename)(void) = (char *(*)(void))need_sym(h, so, "openblas_get_corename", why, why_len);
    if (!out->sgemm || !out->set_threads || !corename) return -1;
    char *(*config)(void) = (char *(*)(void))dlsym(h, "openblas_get_config"); // "OpenBLAS 0.3.21 DYNAMIC_ARCH ..."
    char version[32] = "?";
    if (config && config()) sscanf(config(), "OpenBLAS %31s", version);
    const char *kernel = corename() ? corename() : "?";
    snprintf(out->choice, sizeof out->choice, "%s", cand);
    snprintf(out->desc, sizeof out->desc, "%s (OpenBLAS %s, kernel %s)", cand, version, kernel);
    if (coretype && strcasecmp(kernel, coretype) != 0)
        fprintf(stderr, "patchsweep: OpenBLAS (%s) runs kernel %s, not the %s asked for (it was loaded before, or this "
                        "build lacks that core type)\n", so, kernel, coretype);
    return 0;
}

static int load_blis(blas_lib *out, char *why, size_t why_len) {
    static const char *const sonames[] = {"libblis.so.4", "libblis.so.3", "libblis.so", NULL};
    const char *so = NULL;
    void *h = open_first(sonames, &so, why, why_len);
    if (!h) return -1;
    out->sgemm = (ps_sgemm_fn)need_sym(h, so, "cblas_sgemm", why, why_len);
    if (!out->sgemm) return -1;
    out->set_threads = (void (*)(int))dlsym(h, "bli_thread_set_num_threads"); // absent in some serial builds
    long (*arch_id)(void) = (long (*)(void))dlsym(h, "bli_arch_query_id");
    const char *(*arch_str)(long) = (const char *(*)(long))dlsym(h, "bli_arch_string");
    const char *(*ver)(void) = (const char *(*)(void))dlsym(h, "bli_info_get_version_str");
    snprintf(out->choice, sizeof out->choice, "blis");
    snprintf(out->desc, sizeof out->desc, "blis (BLIS %s, arch %s)", ver ? ver() : "?",
             arch_id && arch_str ? arch_str(arch_id()) : "?");
    return 0;
}

// Loads one candidate by name and self-checks it; 0 when it is usable, else why starts "BLAS <candidate>".
static int load_candidate(const char *cand, blas_lib *out, char *why, size_t why_len) {
    memset(out, 0, sizeof *out);
    int rc;
    char bad[256];
    if (!strcmp(cand, "blis")) rc = load_blis(out, bad, sizeof bad);
    else if (!strcmp(cand, "openblas")) rc = load_openblas(NULL, cand, out, bad, sizeof bad);
    else rc = load_openblas(cand + strlen("openblas:"), cand, out, bad, sizeof bad);
    if (rc != 0) {
        snprintf(why, why_len, "BLAS %s: %s", cand, bad);
        return -1;
    }
    if (out->set_threads) out->set_threads(1);
    if (ps_blas_selfcheck(out->sgemm, NULL, bad, sizeof bad) != 0) {
        snprintf(why, why_len, "BLAS %s computes wrongly, refused: %s", out->desc, bad);
        return -1;
    }
    return 0;
}

int ps_blas_init(const char *want, ps_error *e) {
    if (want && !strcmp(want, "auto")) want = NULL;
    pthread_mutex_lock(&g_mu);
    int rc = 0;
    if (atomic_load_explicit(&g_ready, memory_order_acquire)) {
        if (want && strcmp(want, g_lib.choice) != 0)
            rc = ps_fail(e, PS_EXIT_BADINPUT, "BLAS %s requested, but %s is loaded already (one per process)", want,
                         g_lib.desc);
        pthread_mutex_unlock(&g_mu);
        return rc;
    }
    ps_cpu_features f;
    ps_cpu_features_detect(&f);
    const char *cands[N_CORES + 2];
    const int n = ps_blas_candidates(&f, cands, N_CORES + 2);
    blas_lib lib;
    char why[512] = "";
    if (want) {
        int known = 0;
        for (int i = 0; i < n; i++) known |= !strcmp(cands[i], want);
        if (!known) {
            char fs[256], list[512] = "";
            ps_cpu_features_str(&f, fs, sizeof fs);
            for (int i = 0, at = 0; i < n && at < (int)sizeof list; i++)
                at += snprintf(list + at, sizeof list - (size_t)at, "%s%s", i ? ", " : "", cands[i]);
            rc = ps_fail(e, PS_EXIT_BADINPUT, "BLAS \"%s\" is not a candidate on this CPU (%s); candidates: %s", want, fs, list);
        } else if (load_candidate(want, &lib, why, sizeof why) != 0) {
            rc = ps_fail(e, PS_EXIT_RUNTIME, "%s", why);
        }
    } else {
        // The choice: OpenBLAS with the best core type for these features (or its own detection where none is
        // known), then BLIS. Only one OpenBLAS core type per process: it is fixed when the library loads.
        const char *first = cands[0], *second = "blis";
        if (load_candidate(first, &lib, why, sizeof why) != 0) {
            char why2[512] = "";
            if (load_candidate(second, &lib, why2, sizeof why2) != 0)
                rc = ps_fail(e, PS_EXIT_RUNTIME, "no usable BLAS: %s; %s (install libopenblas0 or libblis4)", why, why2);
            else
                fprintf(stderr, "patchsweep: %s; using %s instead\n", why, lib.desc);
        }
    }
    if (rc == 0) {
        g_lib = lib;
        atomic_store_explicit(&g_ready, 1, memory_order_release);
    }
    pthread_mutex_unlock(&g_mu);
    return rc;
}

const char *ps_blas_choice(void) { return atomic_load_explicit(&g_ready, memory_order_acquire) ? g_lib.choice : ""; }
const char *ps_blas_describe(void) { return atomic_load_explicit(&g_ready, memory_order_acquire) ? g_lib.desc : ""; }

static void ensure_loaded(void) {
    if (atomic_load_explicit(&g_ready, memory_order_acquire)) return;
    ps_error e = {0};
    if (ps_blas_init(NULL, &e) != 0) {
        fprintf(stderr, "patchsweep: %s\n", e.msg);
        abort(); // a GEMM was asked for and none can run: there is no result to return
    }
}

void ps_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc) {
    ensure_loaded();
    g_lib.sgemm(order, transa, transb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void ps_blas_set_num_threads(int n) {
    ensure_loaded();
    if (g_lib.set_threads) g_lib.set_threads(n);
}

// ---------------------------------------------------------------------------------------------
// GEMMs over the OpenMP threads

// Boundary b of `parts` near-equal pieces of [0, n), rounded to multiples of align (0 and n at the ends).
static int64_t cut(int64_t n, int parts, int b, int64_t align) {
    if (b >= parts) return n;
    const int64_t c = (n * b / parts + align / 2) / align * align;
    return c < n ? c : n;
}

// Rows [r0, r1) x columns [c0, c1) of g's C, one single-threaded BLAS call.
static void gemm_block(const ps_gemm *g, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    if (r1 <= r0 || c1 <= c0) return;
    float *C = g->C + r0 * g->ldc + c0;
    if (g->bias)
        for (int64_t i = 0; i < r1 - r0; i++) memcpy(C + i * g->ldc, g->bias + c0, (size_t)(c1 - c0) * sizeof(float));
    const float *B = g->trans_b ? g->B + c0 * g->ldb : g->B + c0;
    g_lib.sgemm(101, 111, g->trans_b ? 112 : 111, (int)(r1 - r0), (int)(c1 - c0), (int)g->K, 1.0f, g->A + r0 * g->lda,
                (int)g->lda, B, (int)g->ldb, g->bias ? 1.0f : 0.0f, C, (int)g->ldc);
}

void ps_sgemm_par(const ps_gemm *g, int n) {
    ensure_loaded();
    if (g_lib.set_threads) g_lib.set_threads(1);
    int big = 0;
    for (int i = 0; i < n; i++) big |= g[i].M * g[i].N * g[i].K >= PS_SGEMM_PAR_MIN;
#pragma omp parallel if (big && omp_get_max_threads() > 1)
    {
        const int t = omp_get_thread_num(), nt = omp_get_num_threads();
        int solo = 0; // the small GEMMs so far: the next goes to thread solo % nt (every thread counts alike)
        for (int i = 0; i < n; i++) {
            const ps_gemm *x = &g[i];
            if (nt == 1) {
                gemm_block(x, 0, x->M, 0, x->N);
            } else if (x->M * x->N * x->K < PS_SGEMM_PAR_MIN) {
                if (solo++ % nt == t) gemm_block(x, 0, x->M, 0, x->N);
            } else if (x->M < x->N) {
                gemm_block(x, 0, x->M, cut(x->N, nt, t, 16), cut(x->N, nt, t + 1, 16));
            } else {
                gemm_block(x, cut(x->M, nt, t, 4), cut(x->M, nt, t + 1, 4), 0, x->N);
            }
        }
    }
}
