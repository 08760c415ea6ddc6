// Helpers shared by the GPU tests: the skip-without-a-GPU rule, random in-memory models, and the
// CUDA-vs-CPU forward comparison (cache rows, patched rows of every site, batches mixing start layers).
#ifndef PS_GPU_COMMON_H
#define PS_GPU_COMMON_H

#include "ps_cuda.h"
#include "testutil.h"

// Prints "SKIP: no CUDA device (reason)" and exits 77 when no CUDA device is usable.
void gpu_require_device(void);

// Deterministic random numbers.
uint64_t gpu_rand_u64(uint64_t *s);
float gpu_rand_uniform(uint64_t *s);   // [-1, 1)

// A random model built in memory (no files): weights ~ U(-1,1) * 1/sqrt(fan-in), norm weights near 1.
// Free with gpu_free_model.
int gpu_random_model(ps_model *m, ps_arch arch, int64_t L, int64_t H, int64_t Hkv, int64_t D, int64_t M, int64_t V,
                     int64_t n_ctx, uint64_t seed);
void gpu_free_model(ps_model *m);

// Tolerance for comparing the CUDA backend at prec with the fp32 CPU reference: elements pass when
// |got - want| <= atol + rtol * |want|, with atol = abs_floor + rel * max|want| of the array.
typedef struct {
    float abs_floor, rel, rtol;
} gpu_tol;
gpu_tol gpu_tol_for(ps_precision prec);
// tu_close under t (infinities of want skipped when taking max|want|); 1 when every element passes.
int gpu_close(const char *name, const float *got, const float *want, int64_t n, gpu_tol t);

// Runs the whole comparison on model m at precision prec for each sequence length in Ts (clamped to n_ctx):
// cache rows (every cache array, logits), one batch of patched rows (every site, heads, positions, neurons,
// pattern patches, overlapping patches, start_layer/start_pos > 0, a row past the last layer, column subsets),
// the same batch reading caches the GPU made, a repeat (cached device copies), the cache-handle contract
// (handles set, aliasing refused, release_cache) and a rewritten source after release_cache. Failures go to
// tu_failures.
void gpu_compare_model(const ps_model *m, const char *label, ps_precision prec, const int64_t *Ts, int n_T);

#endif
