// The CPU backend's GEMM: a BLAS library chosen for this CPU from its cpuid features and loaded at run time
// (dlopen), so that no CPU model string, and no library's own CPU detection, decides how fast patchsweep runs.
#ifndef PS_BLAS_H
#define PS_BLAS_H

#include "ps_common.h"

#include <stddef.h>
#include <stdint.h>

// What cpuid (and XGETBV: whether the OS saves the wider registers) says; 1 = present. Not the model string.
typedef struct {
    int sse3, ssse3, sse41, sse42, avx, fma, avx2, f16c;
    int avx512f, avx512dq, avx512cd, avx512bw, avx512vl, avx512bf16;
    int os_ymm, os_zmm; // XCR0: without these the AVX / AVX-512 instructions fault even where cpuid lists them
} ps_cpu_features;

// This CPU's features (all zero on a CPU that is not x86).
void ps_cpu_features_detect(ps_cpu_features *f);
// "sse3 ssse3 ... avx512bf16" (what was found, space separated) into buf.
void ps_cpu_features_str(const ps_cpu_features *f, char *buf, size_t n);

// The OpenBLAS core types (OPENBLAS_CORETYPE names, as Debian's 0.3.21 knows them) whose kernels are correct on
// a CPU with these features, fastest first (measured: bench/README.md). Returns how many were written to out
// (at most max; 0 where none is known, e.g. not x86: OpenBLAS's own detection is then the only choice).
// The strings are static.
int ps_openblas_coretypes(const ps_cpu_features *f, const char **out, int max);

// A CBLAS sgemm: the same arguments as cblas_sgemm (CblasRowMajor = 101, CblasNoTrans = 111, CblasTrans = 112).
typedef void (*ps_sgemm_fn)(int order, int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
                            const float *B, int ldb, float beta, float *C, int ldc);

// The startup self-check: GEMMs at odd sizes (37x53x29, and 97x401x131, which spans several kernel tiles and
// blocks of K), both B layouts the forward pass uses, C prefilled with NaN (beta = 0 must not read it), against
// a plain double loop with |c - ref| <= 1e-4 + 1e-4 |ref|. 0 when f passes; -1 with why (one line) when it
// computes wrongly or cannot allocate. max_err (may be NULL): the largest |c - ref| seen.
int ps_blas_selfcheck(ps_sgemm_fn f, double *max_err, char *why, size_t why_len);

// The candidates for this CPU, in the order the choice tries them: "openblas:<core type>" for each core type of
// ps_openblas_coretypes, "openblas" (its own CPU detection), "blis". Writes up to max static strings; returns
// the count. Only the first OpenBLAS one and "blis" are tried by the choice (a process loads OpenBLAS once);
// bench-gemm measures them all, each in its own process.
int ps_blas_candidates(const ps_cpu_features *f, const char **out, int max);

// Loads the BLAS for this process, once: want = NULL (or "auto") is the choice: the best OpenBLAS core type for
// this CPU's features, then BLIS if OpenBLAS is missing or fails the self-check (a note on stderr); want = a
// candidate name loads only that one. Every loaded library must pass ps_blas_selfcheck. Thread-safe; a second
// call returns 0 if it asks for what is loaded (or for NULL), else PS_EXIT_BADINPUT. Sets the BLAS to one thread.
int ps_blas_init(const char *want, ps_error *e);
// After ps_blas_init: the candidate in use ("openblas:Cooperlake"), and a description with the library's
// version and the kernel it reports running ("openblas:Cooperlake (OpenBLAS 0.3.21, kernel Cooperlake)").
// Both static; "" before a BLAS is loaded.
const char *ps_blas_choice(void);
const char *ps_blas_describe(void);

// cblas_sgemm through the loaded BLAS. Loads the choice first if nothing is loaded yet (code that reaches the
// forward pass without ps_backend_init, e.g. tests); if that fails it prints why and aborts: no GEMM can run.
void ps_sgemm(int order, int transa, int transb, int M, int N, int K, float alpha, const float *A, int lda,
              const float *B, int ldb, float beta, float *C, int ldc);
// One GEMM of ps_sgemm_par, row-major: C (M, N) = A (M, K) @ B [+ bias (N), on every row], B (K, N), or with
// trans_b B (N, K) used transposed (the unembedding's W_U). lda, ldb, ldc: row strides. bias may be NULL; C is
// output only (beta 0), or, with a bias, written with it first and the GEMM adds to it (one pass over C).
typedef struct {
    float *C;
    const float *A, *B, *bias;
    int64_t M, N, K, lda, ldb, ldc;
    int trans_b;
} ps_gemm;

// GEMMs (multiply-adds) below this run whole on one thread.
#define PS_SGEMM_PAR_MIN ((int64_t)1 << 22)

// The n GEMMs (independent: no C is another's A or B) in ONE OpenMP parallel region over the threads of
// omp_get_max_threads(), one fork and one join for all n. Each GEMM of PS_SGEMM_PAR_MIN multiply-adds or more
// is cut into one block per thread, each a single-threaded BLAS call: by columns of C when M < N (each thread
// then packs its slice of B and all of A; by rows each would pack all of B, the larger operand), in slices
// of 16 columns (the AVX-512 kernels' unroll along C's columns); else by rows, as even as 4-row multiples
// allow. Smaller ones go whole to one thread each, in turn. Each element of C is the same dot product, in the
// same order over K, however C is cut (OpenBLAS Cooperlake: bitwise equal to one call at the forward pass's
// shapes, measured). Sets the BLAS to one thread.
void ps_sgemm_par(const ps_gemm *g, int n);

// The BLAS's own thread count (1 inside the CPU backend's OpenMP blocks); a no-op for a single-threaded build.
void ps_blas_set_num_threads(int n);

#endif
