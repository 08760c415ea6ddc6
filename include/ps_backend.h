// The backend interface: the one thing the engine asks of a device is to run a batch of rows.
// Everything about what to run, what to skip and what to patch lives above it, in engine.c.
#ifndef PS_BACKEND_H
#define PS_BACKEND_H

#include "ps_plan.h"

typedef struct ps_backend {
    ps_backend_kind kind;     // PS_BACKEND_CPU or PS_BACKEND_CUDA once initialised
    ps_precision precision;
    const char *name;         // "cpu", "cuda"
    char device[128];         // e.g. "CPU (2 threads)", "NVIDIA H100 80GB HBM3"
    int (*forward)(struct ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e);
    void (*free)(struct ps_backend *b);
    // Optional: the engine is about to free or reuse this cache; a device copy of it must be dropped.
    void (*release_cache)(struct ps_backend *b, const ps_cache *c);
    // GFLOP/s of (M, K) @ (K, N) the way this backend runs its GEMMs, timed for about `seconds` (the dry
    // run's estimate); <= 0 when it cannot be measured.
    double (*gemm_rate)(struct ps_backend *b, int64_t M, int64_t K, int64_t N, double seconds);
    void *impl;               // backend-owned state (device weights, streams)
    unsigned caps;            // PS_CAP_* bits (ps_plan.h): the row features the backend implements
} ps_backend;

// kind AUTO picks CUDA when a GPU is usable and otherwise says on stderr that it falls back to the CPU.
// threads: CPU threads for OpenMP (0 = all cores); the BLAS (ps_blas.h, loaded and self-checked here) runs
// single-threaded inside them.
int ps_backend_init(ps_backend *b, ps_backend_kind kind, ps_precision prec, int threads, const ps_model *m, ps_error *e);
void ps_backend_free(ps_backend *b);

// The CPU's fp32 GEMM rate through the loaded BLAS: row_blocks = the CPU backend's way (ps_cpu_linear), else one
// BLAS call with the BLAS's own threads (OpenMP's thread count).
double ps_cpu_gemm_rate(int64_t M, int64_t K, int64_t N, double seconds, int row_blocks);

// Provided by kernels/ (CUDA builds) or src/backend_nocuda.c: 0 when a CUDA device can run the model.
int ps_cuda_backend_init(ps_backend *b, ps_precision prec, const ps_model *m, ps_error *e);
int ps_cuda_built(void);
// Number of CUDA devices; 0 when there is none (or no CUDA in this build), with why (if non-NULL) saying
// what the runtime reported.
int ps_cuda_device_count(char *why, size_t why_len);

#endif
