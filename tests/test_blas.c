// Tests of the BLAS choice (src/backends/blas.c): the features -> OpenBLAS core type table, the self-check (a
// correct plain GEMM passes, deliberately wrong ones are refused), and the BLAS loaded here against a plain loop.
#include "ps_blas.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

// A plain row-major CBLAS sgemm for alpha = 1, beta = 0 (all the self-check asks), B as is (111) or transposed.
static void plain_sgemm(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            float s = 0;
            for (int k = 0; k < K; k++) s += A[i * lda + k] * (tb == 112 ? B[j * ldb + k] : B[k * ldb + j]);
            C[i * ldc + j] = alpha * s;
        }
}

// Wrong in one element of the last (multi-tile) shape only: what a broken edge case of a micro-kernel looks like.
static void off_by_a_bit(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                         const float *B, int ldb, float beta, float *C, int ldc) {
    plain_sgemm(order, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    if (M > 64 && tb == 112) C[(M - 1) * ldc + N - 1] += 1e-2f;
}

// Ignores the transpose flag: right for B as is, wrong for the unembedding's layout.
static void ignores_trans(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                          const float *B, int ldb, float beta, float *C, int ldc) {
    plain_sgemm(order, ta, 111, M, N, K, alpha, A, lda, B, N, beta, C, ldc);
}

// Accumulates into C as if beta were 1: C arrives filled with NaN, so this must be caught.
static void reads_c(int order, int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                    const float *B, int ldb, float beta, float *C, int ldc) {
    for (int i = 0; i < M; i++) {
        float *row = malloc((size_t)N * sizeof(float));
        if (!row) abort();
        plain_sgemm(order, ta, tb, 1, N, K, alpha, A + i * lda, lda, B, ldb, beta, row, N);
        for (int j = 0; j < N; j++) C[i * ldc + j] += row[j];
        free(row);
    }
}

static void test_selfcheck(void) {
    char why[512];
    double err = -1;
    TU_CHECK(ps_blas_selfcheck(plain_sgemm, &err, why, sizeof why) == 0, "plain loop refused: %s", why);
    printf("selfcheck plain loop: max_abs_err=%.3g\n", err);
    const struct { const char *name; ps_sgemm_fn f; const char *expect; } bad[] = {
        {"off by 1e-2 in one element", off_by_a_bit, "GEMM 97x401x131 (B transposed): C[96,130]"},
        {"ignores the transpose", ignores_trans, "(B transposed)"},
        {"reads C with beta 0", reads_c, "C[0,0]"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        why[0] = '\0';
        const int rc = ps_blas_selfcheck(bad[i].f, &err, why, sizeof why);
        TU_CHECK(rc != 0, "%s: not refused", bad[i].name);
        TU_CHECK(strstr(why, bad[i].expect) != NULL, "%s: message [%s] lacks [%s]", bad[i].name, why, bad[i].expect);
        TU_CHECK(strchr(why, '\n') == NULL, "%s: message is not one line", bad[i].name);
        printf("selfcheck %s: refused: %s\n", bad[i].name, why);
    }
}

static ps_cpu_features avx512_bf16(void) { // Zen 4/5, Sapphire Rapids, Cooper Lake
    ps_cpu_features f = {.sse3 = 1, .ssse3 = 1, .sse41 = 1, .sse42 = 1, .avx = 1, .fma = 1, .avx2 = 1, .f16c = 1,
                         .avx512f = 1, .avx512dq = 1, .avx512cd = 1, .avx512bw = 1, .avx512vl = 1, .avx512bf16 = 1,
                         .os_ymm = 1, .os_zmm = 1};
    return f;
}

static void expect_cores(const char *what, const ps_cpu_features *f, const char *want) {
    const char *got[16];
    const int n = ps_openblas_coretypes(f, got, 16);
    char list[256] = "";
    for (int i = 0, at = 0; i < n; i++) at += snprintf(list + at, sizeof list - (size_t)at, "%s%s", i ? " " : "", got[i]);
    TU_CHECK(!strcmp(list, want), "%s: core types [%s], want [%s]", what, list, want);
}

static void test_choice(void) {
    ps_cpu_features f = avx512_bf16();
    expect_cores("avx512+bf16", &f, "Cooperlake SkylakeX Haswell Zen SandyBridge Nehalem Core2 Prescott");
    f.avx512bf16 = 0;
    expect_cores("avx512 (Skylake-SP)", &f, "SkylakeX Haswell Zen SandyBridge Nehalem Core2 Prescott");
    f.avx512bw = 0; // Knights Landing: AVX-512F without BW, SkylakeX's kernels would fault
    expect_cores("avx512f without bw", &f, "Haswell Zen SandyBridge Nehalem Core2 Prescott");
    f = avx512_bf16();
    f.os_zmm = 0; // the OS does not save ZMM state: AVX-512 is unusable whatever cpuid says
    expect_cores("avx512 without OS support", &f, "Haswell Zen SandyBridge Nehalem Core2 Prescott");
    f.os_ymm = 0;
    expect_cores("avx without OS support", &f, "Nehalem Core2 Prescott");
    ps_cpu_features avx = {.sse3 = 1, .ssse3 = 1, .sse41 = 1, .sse42 = 1, .avx = 1, .os_ymm = 1};
    expect_cores("avx, no avx2 (Sandy Bridge)", &avx, "SandyBridge Nehalem Core2 Prescott");
    avx.avx2 = 1; // AVX2 without FMA: Haswell's kernels use FMA
    expect_cores("avx2 without fma", &avx, "SandyBridge Nehalem Core2 Prescott");
    ps_cpu_features none = {0};
    expect_cores("not x86 / nothing known", &none, "");

    const char *c[16];
    f = avx512_bf16();
    int n = ps_blas_candidates(&f, c, 16);
    TU_CHECK(n == 6 && !strcmp(c[0], "openblas:Cooperlake") && !strcmp(c[3], "openblas:Zen") &&
                 !strcmp(c[4], "openblas") && !strcmp(c[5], "blis"),
             "candidates on avx512+bf16: %d, first %s", n, n ? c[0] : "-");
    n = ps_blas_candidates(&none, c, 16);
    TU_CHECK(n == 2 && !strcmp(c[0], "openblas") && !strcmp(c[1], "blis"), "candidates with no features: %d", n);

    ps_error e = {0};
    TU_CHECK(ps_blas_init("openblas:NoSuchCore", &e) != 0 && strstr(e.msg, "not a candidate on this CPU"),
             "unknown candidate: [%s]", e.msg);
}

// The BLAS this machine chooses: loaded, named, and equal to a plain loop on a shape the forward pass uses.
static void test_loaded(void) {
    ps_error e = {0};
    if (ps_blas_init(NULL, &e) != 0) {
        TU_CHECK(0, "ps_blas_init: %s", e.msg);
        return;
    }
    char fs[256];
    ps_cpu_features f;
    ps_cpu_features_detect(&f);
    ps_cpu_features_str(&f, fs, sizeof fs);
    printf("cpu features: %s\nblas: %s\n", fs, ps_blas_describe());
    TU_CHECK(ps_blas_describe()[0] && strstr(ps_blas_describe(), ps_blas_choice()) == ps_blas_describe(),
             "describe [%s] does not start with the choice [%s]", ps_blas_describe(), ps_blas_choice());
    TU_CHECK(ps_blas_init(ps_blas_choice(), &e) == 0, "asking again for what is loaded: %s", e.msg);
    e = (ps_error){0};
    const char *other = strcmp(ps_blas_choice(), "blis") ? "blis" : "openblas";
    TU_CHECK(ps_blas_init(other, &e) != 0 && strstr(e.msg, "loaded already"), "a second BLAS: [%s]", e.msg);

    const int M = 50, K = 768, N = 77;
    float *A = malloc((size_t)M * K * sizeof(float)), *B = malloc((size_t)K * N * sizeof(float)),
          *C = malloc((size_t)M * N * sizeof(float)), *R = malloc((size_t)M * N * sizeof(float));
    if (!A || !B || !C || !R) abort();
    for (int i = 0; i < M * K; i++) A[i] = (float)((i * 37) % 101) / 101.0f - 0.5f;
    for (int i = 0; i < K * N; i++) B[i] = (float)((i * 53) % 97) / 97.0f - 0.5f;
    ps_blas_set_num_threads(1);
    ps_sgemm(101, 111, 111, M, N, K, 1.0f, A, K, B, N, 0.0f, C, N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int k = 0; k < K; k++) s += (double)A[i * K + k] * B[k * N + j];
            R[i * N + j] = (float)s;
        }
    tu_close("loaded blas 50x768x77", C, R, (int64_t)M * N, 1e-4f, 1e-4f);
    double err;
    char why[512];
    TU_CHECK(ps_blas_selfcheck(ps_sgemm, &err, why, sizeof why) == 0, "the loaded BLAS fails its self-check: %s", why);
    printf("selfcheck loaded blas: max_abs_err=%.3g\n", err);
    free(A); free(B); free(C); free(R);
}

int main(void) {
    test_selfcheck();
    test_choice();
    test_loaded();
    return tu_done("blas");
}
