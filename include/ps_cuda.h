// The CUDA backend's entry points beyond ps_backend.h: what backend.c calls to make one (provided by kernels/
// in CUDA builds, by src/backends/backend_nocuda.c otherwise), and (CUDA builds only) small C-callable entry
// points that run one kernel on host arrays, so tests can compare each kernel with the CPU building block of
// the same arithmetic (ps_cpu_layernorm, ps_cpu_rmsnorm, ps_cpu_rotary, ps_cpu_act).
#ifndef PS_CUDA_H
#define PS_CUDA_H

#include "ps_backend.h"

#ifdef __cplusplus
extern "C" {
#endif

// 0 when a CUDA device can run the model (b filled, caps PS_CAPS_CUDA); -1 with e filled otherwise.
// Reads o->precision and o->cuda_cache_mb; kind, threads and plan_only are backend.c's.
int ps_cuda_backend_init(ps_backend *b, const ps_backend_opts *o, const ps_model *m, ps_error *e);
int ps_cuda_built(void);
// Number of CUDA devices; 0 when there is none (or no CUDA in this build), with why (if non-NULL) saying
// what the runtime reported.
int ps_cuda_device_count(char *why, size_t why_len);

// CUDA builds only from here on.
// Budget in bytes for the device copies of caches (least recently used ones are dropped beyond it):
// ps_backend_opts.cuda_cache_mb, or half the device memory free after the weights. 0 for other backends.
size_t ps_cuda_cache_budget(const ps_backend *b);

// One op on host arrays (copied to the device and back); 0, or -1 with e filled. For tests.
int ps_cuda_test_layernorm(float *out, float *scale, const float *x, const float *w, const float *b, int64_t N,
                           int64_t C, float eps, ps_error *e);
int ps_cuda_test_rmsnorm(float *out, float *scale, const float *x, const float *w, int64_t N, int64_t C, float eps,
                         ps_error *e);
// x: (T, n_heads, D), rotated in place at positions pos (T), like ps_cpu_rotary.
int ps_cuda_test_rotary(float *x, int64_t T, int64_t n_heads, int64_t D, const int64_t *pos, float theta, ps_error *e);
// The same for the first rot_dim dims of each head (GPT-NeoX's partial rotary), or, with backward, the transposed
// rotation (ps_cpu_rotary_backward).
int ps_cuda_test_rotary_dims(float *x, int64_t T, int64_t n_heads, int64_t D, int64_t rot_dim, const int64_t *pos,
                             float theta, int backward, ps_error *e);
// dx (N, C) += the norm's backward (RMSNorm when rms, else LayerNorm), dscale (N, may be NULL) its scale's own
// gradient, like ps_cpu_layernorm_backward / ps_cpu_rmsnorm_backward.
int ps_cuda_test_norm_backward(int rms, float *dx, float *dscale, const float *dout, const float *x, const float *scale,
                               const float *w, int64_t N, int64_t C, ps_error *e);
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
