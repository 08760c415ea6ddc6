// CUDA backend extras beyond ps_backend.h (CUDA builds only): cache invalidation, and small
// C-callable entry points that run one kernel on host arrays, so tests can compare each kernel with the
// CPU building block of the same arithmetic (ps_cpu_layernorm, ps_cpu_rmsnorm, ps_cpu_rotary, ps_cpu_act).
#ifndef PS_CUDA_H
#define PS_CUDA_H

#include "ps_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// The CUDA backend keeps device copies of the host caches rows refer to (base runs, patch sources), keyed by
// the cache's memory pointer and checked against a sampled fingerprint of its contents on every use. A caller
// that rewrites part of a cache in place, or frees one, may call this to drop the copy for certain.
// No-op for other backends or caches it has not seen.
void ps_cuda_forget_cache(ps_backend *b, const ps_cache *c);

// Budget for those copies in bytes (least recently used ones are dropped beyond it). Default: half the device
// memory free after the weights are uploaded; the environment variable PS_CUDA_CACHE_MB overrides it.
size_t ps_cuda_cache_budget(const ps_backend *b);

// One op on host arrays (copied to the device and back); 0, or -1 with e filled. For tests.
int ps_cuda_test_layernorm(float *out, float *scale, const float *x, const float *w, const float *b, int64_t N,
                           int64_t C, float eps, ps_error *e);
int ps_cuda_test_rmsnorm(float *out, float *scale, const float *x, const float *w, int64_t N, int64_t C, float eps,
                         ps_error *e);
// x: (T, n_heads, D), rotated in place at positions pos (T), like ps_cpu_rotary.
int ps_cuda_test_rotary(float *x, int64_t T, int64_t n_heads, int64_t D, const int64_t *pos, float theta, ps_error *e);
// out[i] = ps_cpu_act(act, x[i]).
int ps_cuda_test_act(float *out, const float *x, int64_t n, ps_act act, ps_error *e);
// The fused MLP activation: h1 += bias (per column, bias may be NULL); h2 = act(h1), times h3 when h3 is non-NULL.
int ps_cuda_test_mlp_act(float *h2, float *h1, const float *h3, const float *bias, int64_t N, int64_t M, ps_act act,
                         ps_error *e);
// y (N, out) = x (N, in) @ W (in, out) [+ bias], or x @ W^T with W stored (out, in) when trans_w; W is
// rounded to prec on the device and the product accumulates in fp32 (cuBLAS).
int ps_cuda_test_gemm(float *y, const float *x, const float *W, const float *bias, int64_t N, int64_t in, int64_t out,
                      int trans_w, ps_precision prec, ps_error *e);
// x += y.
int ps_cuda_test_residual(float *x, const float *y, int64_t n, ps_error *e);

#ifdef __cplusplus
}
#endif

#endif
