// What the CUDA backend's files share: the device context (stream, cuBLAS, weights), the backend's state
// (device memory, weights, the copies of caches), the batch as the kernels see it (row and patch
// descriptors), small device helpers, and every op's launcher and op layer.
// Each op lives in its own .cu: a static __global__ kernel, a launcher (stream + checked preconditions)
// and the op the backend calls. Activations are fp32 everywhere; only the big matrices may be fp16/bf16.
// The backend itself is four files: backend_cuda.cu (the ps_backend: set-up, tear-down, GEMM rate),
// cuda_memory.cu (device memory: cache copies by handle, workspace, halve-and-retry on OOM),
// cuda_weights.cu (upload and fp16/bf16 conversion) and cuda_batch.cu (the forward over a batch of rows).
#ifndef PS_CUDA_INTERNAL_H
#define PS_CUDA_INTERNAL_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>

extern "C" {
#include "ps_backend.h"
#include "ps_backward.h"
#include "ps_cuda.h"
}
#include "ps_cuda_check.h"

// ---------------------------------------------------------------------------------------------
// Weights on the device

// A weight matrix in its storage type (PS_PREC_FP32/FP16/BF16); elements are addressed with ps_cu_mat_at.
typedef struct {
    const void *p;
    ps_precision dt;
} ps_cu_mat;

static inline size_t ps_cu_dt_size(ps_precision dt) { return dt == PS_PREC_FP32 ? 4 : 2; }
static inline ps_cu_mat ps_cu_mat_at(ps_cu_mat m, size_t elem_off) {
    ps_cu_mat r = {m.p ? (const char *)m.p + elem_off * ps_cu_dt_size(m.dt) : NULL, m.dt};
    return r;
}

// Same layout as ps_weights (row-major, input dimension first); vectors stay fp32, NULL where ps_weights has NULL.
typedef struct {
    ps_cu_mat wte, wpe, w_q, w_k, w_v, w_o, w_in, w_up, w_out, w_u;
    const float *ln1_w, *ln1_b, *b_q, *b_k, *b_v, *b_o, *ln2_w, *ln2_b, *b_in, *b_out, *lnf_w, *lnf_b, *b_u;
} ps_cu_weights;

typedef struct {
    ps_model_config cfg;
    ps_precision prec;          // storage type of the matrices
    cudaStream_t stream;
    cublasHandle_t blas;
    ps_cu_weights w;
    void *half_buf;             // GEMM inputs rounded to fp16/bf16 (unused in fp32)
    size_t half_cap;            // elements in half_buf
    int smem_optin;             // largest dynamic shared memory a block may opt into (bytes)
    int *overflow;              // device flag: an fp16 rounding overflowed to inf (gemm.cu, unembed.cu); NULL: unchecked
} ps_cu_ctx;

// ---------------------------------------------------------------------------------------------
// The backend's state

// A device copy of a host ps_cache (same layout: one block of n_floats) in the arena, bound to the cache by
// ps_cache.handle (ps_backend.h's contract). memory, n_floats and T are the cache's when it was bound: a
// handle whose cache no longer matches them is not trusted.
typedef struct {
    uint64_t handle;      // unique in the process (never reused), so another backend's handle matches nothing here
    const float *memory;
    size_t n_floats;
    int64_t T;
    size_t off, bytes;    // place in the arena
    uint64_t used;        // forward call that last used it; entries used by the current call are never evicted
    int valid;            // the device copy equals the host arrays: uploaded, or computed and copied back
} ps_cu_entry;

typedef struct {
    ps_cu_ctx ctx;
    void *wmem;                 // every weight, one allocation
    size_t wbytes;
    char *arena;                // device copies of caches, one allocation, grown as needed
    size_t arena_cap, budget;   // budget: ps_backend_opts.cuda_cache_mb, or half the free memory after the weights
    ps_cu_entry *ent;           // sorted by offset
    int64_t n_ent, cap_ent;
    uint64_t clock;             // forward calls so far
    char *ws;                   // batch workspace (device)
    size_t ws_cap;
    char *host;                 // pinned staging for descriptors and logits
    size_t host_cap;
    int64_t tok_cap;            // 0, or the most tokens a batch may hold since one ran out of memory (cuda_memory.cu)
} ps_cu_backend;

static inline size_t ps_cu_align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }
// Bump allocation of one workspace: the offset of bytes at *at (256-byte aligned).
static inline size_t ps_cu_take(size_t *at, size_t bytes) {
    const size_t o = ps_cu_align_up(*at, 256);
    *at = o + bytes;
    return o;
}

// cuda_memory.cu: the copies of caches. place: the arena offset of c's device copy, bound to c (handle) when
// new. An input (a base run, a patch source) is uploaded unless its copy is valid; an output (a cache row)
// is about to be computed on the device and only needs room; it stays invalid until commit.
typedef enum { PS_CU_CACHE_INPUT = 0, PS_CU_CACHE_OUTPUT = 1 } ps_cu_cache_role;
int ps_cu_cache_place(ps_cu_backend *im, const ps_cache *c, ps_cu_cache_role role, size_t *off, ps_error *e);
void ps_cu_cache_commit(ps_cu_backend *im, const ps_cache *c);     // c's copy was computed and copied back
void ps_cu_cache_fail_call(ps_cu_backend *im);                      // a forward failed: its copies are not trusted
void ps_cu_cache_release(ps_cu_backend *im, ps_cache *c);          // ps_backend.release_cache
void ps_cu_cache_free_all(ps_cu_backend *im);
// Device address of a cache array placed at off (NULL stays NULL).
static inline float *ps_cu_cache_field(const ps_cu_backend *im, size_t off, const ps_cache *c, const float *field) {
    return field ? (float *)(im->arena + off) + (field - c->memory) : NULL;
}
// The batch workspace and the pinned host staging, grown as batches need (PS_CUDA_OOM when the device is full).
int ps_cu_ensure_ws(ps_cu_backend *im, size_t bytes, ps_error *e);
int ps_cu_ensure_host(ps_cu_backend *im, size_t bytes, ps_error *e);
int ps_cu_release_ws(ps_cu_backend *im, ps_error *e);   // -1 when the stream reports a fault (e filled)
// Runs rows; when the device runs out of memory, evicts the cache arena and retries, then splits the batch
// (and later batches, by tok_cap) into halves that fit.
int ps_cu_forward_rows(ps_cu_backend *im, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e);

// cuda_weights.cu: every weight uploaded once into im->wmem, matrices in im->ctx.prec.
int ps_cu_upload_weights(ps_cu_backend *im, const ps_model *m, ps_error *e);

// cuda_batch.cu: one forward over rows, all on the device at once (PS_CUDA_OOM when it does not fit).
int ps_cu_run_batch(ps_cu_backend *im, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e);

// cuda_backward.cu: ps_backend.backward, ps_cpu_backward's contract (ps_backward.h) for one prompt's run.
int ps_cu_backward(ps_cu_backend *im, const ps_model *m, const ps_cache *fwd, const ps_logit_grad *lg, ps_cache *grad,
                   ps_error *e);

// ---------------------------------------------------------------------------------------------
// The batch on the device

// A cache array on the device as the kernels address it: p is layer 0, position 0, unit 0, and the strides
// (floats) are ps_array_at's (cache.c, the one place the layout is written), taken on the host so that no
// kernel spells the layout out: element (l, t, u, k) is p[l * layer + t * pos + u * unit + k].
typedef struct {
    float *p;                       // NULL: the cache does not hold this array
    int64_t layer, pos, unit;
} ps_cu_arr;

static inline ps_cu_arr ps_cu_arr_of(const ps_model_config *cfg, ps_array a, int64_t T, const float *p) {
    ps_cu_arr r = {(float *)p, 0, 0, 0};
    if (!p) return r;
    const int64_t o = (int64_t)ps_array_at(cfg, a, T, 0, 0, 0);
    r.layer = (int64_t)ps_array_at(cfg, a, T, 1, 0, 0) - o;
    r.pos = (int64_t)ps_array_at(cfg, a, T, 0, 1, 0) - o;
    r.unit = (int64_t)ps_array_at(cfg, a, T, 0, 0, 1) - o;
    return r;
}

// One row, in start-layer order; its computed tokens are [off, off + n) of every per-token buffer.
typedef struct {
    int64_t off, n, T, start_pos;
    int32_t from_base;              // joins from base's resid_pre instead of the embedding
    int32_t pb, pe;                 // its patches: [pb, pe) of the patch table, in the row's order
    ps_cu_arr base_k;               // base's rot_k (rotary models: Llama, GPT-NeoX) or k; p NULL when start_pos == 0
    ps_cu_arr base_v;
    ps_cu_arr base_resid_pre;       // when from_base
    ps_cu_arr base_resid_post;      // for rows that start past the last layer
    ps_cu_arr ca[PS_ARR_COUNT];     // cache rows: each array of the device copy of row->cache (p NULL otherwise)
} ps_cu_row;

// One intervention (ps_patch) with its selection resolved on the host (patch.cu: ps_cu_patch_desc).
typedef struct {
    int32_t site, op;               // ps_site, ps_op
    int64_t layer;
    int64_t t0, t1;                 // positions [t0, t1), within the row's [start_pos, T)
    int64_t u0, u1;                 // units [u0, u1) of the site (heads, neurons; 0..1 for one-unit sites)
    uint64_t head_mask;             // 0: every unit of [u0, u1); else only units whose bit is set
    int64_t unit;                   // floats per unit
    const float *src;               // replace/freeze: the source cache's array at this layer, on the device
    int64_t src_pos, src_unit;      //   its strides (pattern: head-major)
    const float *ref;               // mean/add: the reference rows (rows, ref_width), on the device
    const int64_t *map;             //   the reference row of each position (T; < 0 leaves it alone)
    int64_t ref_width;
    float factor;                   // scale
    int32_t pad_;
} ps_cu_patch;

typedef struct {
    int64_t n_rows, N;              // rows and computed tokens
    int64_t T_max;
    int64_t cache_span;             // rows [0, cache_span) include every cache row (0: none)
    const ps_cu_row *rows;          // device (n_rows)
    const ps_cu_patch *patches;     // device
    float *const *pat_cap;          // device (n_rows x L): a row's pattern capture buffer at layer l, or NULL
    const int32_t *tok_row;         // device (N): row of each computed token
    const int32_t *tokens;          // device (N): token id
    const int64_t *pos;             // device (N): position in its row
    float *x, *xn, *y, *q, *k, *v, *z, *h1, *h2, *h3, *scale;   // per-token workspace, as in cpu_forward.c
    float *rope_cos, *rope_sin;     // (N, rotary_dim/2), Llama and GPT-NeoX
} ps_cu_batch;

// ---------------------------------------------------------------------------------------------
// Device helpers (header-defined: the .cu files are compiled without relocatable device code)

template <typename T> static __device__ __forceinline__ float ps_to_f(T v);
template <> __device__ __forceinline__ float ps_to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float ps_to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float ps_to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> static __device__ __forceinline__ T ps_from_f(float v);
template <> __device__ __forceinline__ float ps_from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half ps_from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 ps_from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Block-wide sum / max; red needs 32 slots of shared memory; every thread gets the result.
// blockDim.x must be a multiple of 32.
template <typename T> static __device__ __forceinline__ T ps_block_sum(T v, T *red) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();  // red may still be read from the previous call
    if (lane == 0) red[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? red[lane] : (T)0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

static __device__ __forceinline__ float ps_block_max(float v, float *red) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    if (wid == 0) {
        v = lane < nw ? red[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) red[0] = v;
    }
    __syncthreads();
    return red[0];
}

// The MLP activation (ps_cpu_act's formulas; GELU-new with tanhf where the CPU uses a rational tanh within 4e-7).
static __device__ __forceinline__ float ps_cu_act_f(ps_act act, float x) {
    switch (act) {
    case PS_ACT_GELU_NEW: return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
    case PS_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case PS_ACT_RELU: return x > 0 ? x : 0;
    case PS_ACT_SILU: return x / (1.0f + expf(-x));
    }
    return x;
}

// x under intervention op at one element (cpu_patch.c's op_apply, element by element; same float arithmetic).
static __device__ __forceinline__ float ps_cu_op_value(int32_t op, float x, float from, float factor) {
    switch (op) {
    case PS_OP_ZERO: return 0.0f;
    case PS_OP_ADD: return x + from;
    case PS_OP_SCALE: return x * factor;
    default: return from;  // replace, freeze, mean
    }
}

// Grid size for a grid-stride loop over n elements.
static inline unsigned ps_cu_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 65535 * 16) b = 65535 * 16;
    return (unsigned)b;
}

// ---------------------------------------------------------------------------------------------
// Device copies for the ps_cuda_test_* entry points: allocations freed together at the end.
typedef struct {
    void *p[12];
    int n;
} ps_cu_tmp;

// *dst = a device buffer of bytes, holding a copy of src when src is non-NULL.
static inline int ps_cu_tmp_up(ps_cu_tmp *t, void **dst, const void *src, size_t bytes, ps_error *e) {
    *dst = NULL;
    PS_REQUIRE(e, t->n < 12);
    CUDA_CHECK(e, cudaMalloc(dst, bytes ? bytes : 1));
    t->p[t->n++] = *dst;
    if (src && bytes) CUDA_CHECK(e, cudaMemcpy(*dst, src, bytes, cudaMemcpyHostToDevice));
    return 0;
}
static inline void ps_cu_tmp_free(ps_cu_tmp *t) {
    for (int i = 0; i < t->n; i++) cudaFree(t->p[i]);
    t->n = 0;
}

// ---------------------------------------------------------------------------------------------
// Launchers (stream + checked preconditions) and ops (what the backend calls). 0 on success,
// -1 (or PS_CUDA_OOM) with e filled on failure.

// layernorm.cu
int ps_cu_layernorm_launch(cudaStream_t st, float *out, float *scale, const float *x, const float *w, const float *b,
                           int64_t N, int64_t C, float eps, ps_error *e);
// Norm of the model's kind (LayerNorm for GPT-2 and GPT-NeoX, RMSNorm for Llama); which: 1 = ln1, 2 = ln2, 0 = ln_final.
int ps_cu_op_norm(ps_cu_ctx *c, int which, int64_t l, float *out, float *scale, const float *x, int64_t N, ps_error *e);

// rmsnorm.cu
int ps_cu_rmsnorm_launch(cudaStream_t st, float *out, float *scale, const float *x, const float *w, int64_t N,
                         int64_t C, float eps, ps_error *e);

// rotary.cu: the first R = rotary_dim dims of each head of width D (R = D for Llama, D * rotary_pct for
// GPT-NeoX). Tables (N, R/2); sign -1 makes the transposed rotation's table (the backward).
int ps_cu_rope_table_launch(cudaStream_t st, float *cos_t, float *sin_t, const int64_t *pos, int64_t N, int64_t R,
                            float theta, float sign, ps_error *e);
int ps_cu_rotary_launch(cudaStream_t st, float *x, const float *cos_t, const float *sin_t, int64_t N, int64_t n_heads,
                        int64_t D, int64_t R, ps_error *e);
int ps_cu_op_rope_table(ps_cu_ctx *c, ps_cu_batch *bt, ps_error *e);
int ps_cu_op_rotary(ps_cu_ctx *c, ps_cu_batch *bt, float *x, int64_t N, int64_t n_heads, ps_error *e);

// attention.cu: causal attention for the first n_active rows at layer l (z from q, k, v; pattern patches and
// pattern captures inside). pat_cap: NULL, or (n_rows x L) capture buffers (n, H, T) per row and layer.
int ps_cu_attention_launch(cudaStream_t st, int smem_optin, const ps_cu_row *rows, const ps_cu_patch *patches,
                           float *const *pat_cap, const int32_t *tok_row, const int64_t *pos, const float *q,
                           const float *k, const float *v, float *z, int64_t NA, int64_t l, int64_t L, int64_t H,
                           int64_t Hkv, int64_t D, int64_t T_max, ps_error *e);
int ps_cu_op_attention(ps_cu_ctx *c, ps_cu_batch *bt, int64_t l, int64_t NA, ps_error *e);

// act.cu: h1 += b; h2 = act(h1) (* h3 for SwiGLU); and a plain bias add.
int ps_cu_mlp_act_launch(cudaStream_t st, float *h2, float *h1, const float *h3, const float *bias, int64_t N,
                         int64_t M, ps_act act, ps_error *e);
int ps_cu_bias_add_launch(cudaStream_t st, float *y, const float *bias, int64_t N, int64_t width, ps_error *e);
int ps_cu_op_mlp_act(ps_cu_ctx *c, ps_cu_batch *bt, int64_t l, int64_t NA, ps_error *e);

// patch.cu: a row's interventions at (site, layer l) applied in its order to buf (per-token stride ld) for rows
// [r0, r1), and cache rows' stores of position-major arrays. ps_cu_patch_desc resolves one ps_patch of a row on the
// host (src: its source array on the device; ref/map: its reference rows and position map on the device).
ps_cu_patch ps_cu_patch_desc(const ps_model_config *cfg, const ps_row *row, const ps_patch *pt, const float *src,
                             const float *ref, const int64_t *map);
int ps_cu_patch_launch(cudaStream_t st, const ps_cu_row *rows, const ps_cu_patch *patches, int64_t r0, int64_t r1,
                       int site, int64_t l, float *buf, int64_t ld, int64_t T_max, ps_error *e);
int ps_cu_store_launch(cudaStream_t st, const ps_cu_row *rows, int64_t r0, int64_t r1, ps_array arr, int64_t l,
                       const float *buf, int64_t width, int64_t T_max, ps_error *e);
int ps_cu_op_patch(ps_cu_ctx *c, ps_cu_batch *bt, int64_t r0, int64_t r1, ps_site site, int64_t l, float *buf,
                   ps_error *e);
int ps_cu_op_store(ps_cu_ctx *c, ps_cu_batch *bt, int64_t n_active, ps_array arr, int64_t l, const float *buf,
                   ps_error *e);

// residual.cu: x += y.
int ps_cu_residual_launch(cudaStream_t st, float *x, const float *y, int64_t n, ps_error *e);
int ps_cu_op_residual(ps_cu_ctx *c, ps_cu_batch *bt, int64_t NA, ps_error *e);

// embed.cu: tokens [tok0, tok1) of the rows joining at layer l take the embedding or the base's residual stream
// (tail = 1: the base's final resid_post, for rows that start past the last layer).
int ps_cu_join_launch(cudaStream_t st, const ps_cu_row *rows, const int32_t *tok_row, const int32_t *tokens,
                      const int64_t *pos, int64_t tok0, int64_t tok1, float *x, ps_cu_mat wte, ps_cu_mat wpe,
                      int64_t l, int tail, int64_t C, ps_error *e);
int ps_cu_op_join(ps_cu_ctx *c, ps_cu_batch *bt, int64_t tok0, int64_t tok1, int64_t l, int tail, ps_error *e);

// gemm.cu: y (N, out) = x (N, in) @ W (in, out), or x @ W^T when trans_w (W stored (out, in)); fp32 accumulate.
int ps_cu_gemm(ps_cu_ctx *c, float *y, const float *x, ps_cu_mat W, int64_t N, int64_t in, int64_t out, int trans_w,
               ps_error *e);
// The same with y = beta y + ... (beta 0 or 1: a backward pass accumulating its gradients).
int ps_cu_gemm_beta(ps_cu_ctx *c, float *y, const float *x, ps_cu_mat W, int64_t N, int64_t in, int64_t out, int trans_w,
                    float beta, ps_error *e);
// result[t, h, :] = z[t, h, :] @ W_O[h] for one row (T tokens), per head (strided batched).
int ps_cu_gemm_per_head(ps_cu_ctx *c, float *result, const float *z, ps_cu_mat w_o, int64_t T, int64_t H, int64_t D,
                        int64_t C, ps_error *e);
// linear with an optional fp32 bias, like forward_cpu.c's linear().
int ps_cu_op_linear(ps_cu_ctx *c, float *y, const float *x, ps_cu_mat W, const float *bias, int64_t N, int64_t in,
                    int64_t out, ps_error *e);
// overflow: NULL, or a device int set to 1 when a finite value rounds to an infinity (fp16).
int ps_cu_cast_launch(cudaStream_t st, void *dst, ps_precision dt, const float *src, int64_t n, int *overflow,
                      ps_error *e);

// unembed.cu: xo[j] = x[idx[j]]; logits for requested columns only.
typedef struct {
    int64_t xo;          // row of xo
    int64_t col0;        // first of its columns in the column table
    int64_t n_cols;
    int64_t out;         // first output float
} ps_cu_unembed_job;
int ps_cu_gather_launch(cudaStream_t st, float *xo, const float *x, const int64_t *idx, int64_t n, int64_t C,
                        ps_error *e);
int ps_cu_unembed_cols_launch(cudaStream_t st, float *out, const float *xo, const ps_cu_unembed_job *jobs,
                              int64_t n_jobs, const int32_t *cols, ps_cu_mat w_u, const float *b_u, int64_t C,
                              int *overflow, ps_error *e);
// All V logits of n rows of xn (normed): out (n, V) = xn @ w_u^T + b_u.
int ps_cu_op_logits_full(ps_cu_ctx *c, float *out, const float *xn, int64_t n, ps_error *e);

// ---------------------------------------------------------------------------------------------
// The backward pass's ops (cpu_backward.c's steps, for one prompt of T tokens; every gradient fp32)

// norm_backward.cu: dx (N, C) += through the norm (LayerNorm, or RMSNorm when rms); dscale (N, may be NULL) = the
// gradient at the scale as its own node. x, scale: the forward's input and cached scale.
int ps_cu_norm_backward_launch(cudaStream_t st, int rms, float *dx, float *dscale, const float *dout, const float *x,
                               const float *scale, const float *w, int64_t N, int64_t C, ps_error *e);
// The model's norm (which: 1 = ln1, 2 = ln2 of layer l, 0 = ln_final).
int ps_cu_op_norm_backward(ps_cu_ctx *c, int which, int64_t l, float *dx, float *dscale, const float *dout,
                           const float *x, const float *scale, int64_t N, ps_error *e);

// act_backward.cu: dpre = dpost * act'(pre); gated (lin, dlin non-NULL): dpre *= lin, dlin = dpost * act(pre).
int ps_cu_mlp_act_backward_launch(cudaStream_t st, float *dpre, float *dlin, const float *dpost, const float *pre,
                                  const float *lin, int64_t n, ps_act act, ps_error *e);
int ps_cu_op_mlp_act_backward(ps_cu_ctx *c, float *dpre, float *dlin, const float *dpost, const float *pre,
                              const float *lin, int64_t T, ps_error *e);

// attention_backward.cu: one layer of one prompt. q (T, H*D), k/v (T, Hkv*D) (rotated q/k for rotary models),
// pattern (H, T, T), dz (T, H*D) in; dq, dk, dv (overwritten), dpattern and dscores (H, T, T) out.
int ps_cu_attention_backward_launch(cudaStream_t st, const float *q, const float *k, const float *v,
                                    const float *pattern, const float *dz, float *dq, float *dk, float *dv,
                                    float *dpattern, float *dscores, int64_t T, int64_t H, int64_t Hkv, int64_t D,
                                    ps_error *e);
int ps_cu_op_attention_backward(ps_cu_ctx *c, const float *q, const float *k, const float *v, const float *pattern,
                                const float *dz, float *dq, float *dk, float *dv, float *dpattern, float *dscores,
                                int64_t T, ps_error *e);
// hook_result's gradient at layer l: every head's (T, C) slice = dattn (T, C).
int ps_cu_result_backward_launch(cudaStream_t st, ps_cu_arr dresult, int64_t l, const float *dattn, int64_t T,
                                 int64_t H, int64_t C, ps_error *e);

// unembed_backward.cu: dst[pos[o], :] += src[o, :] in o's order; and the unembedding's backward (dxn (T, C) +=
// dlogits (n, V) @ W_U at pos, through tmp (n, C); dlogits_cache (T, V) += dlogits at pos when non-NULL).
int ps_cu_rows_add_at_launch(cudaStream_t st, float *dst, const float *src, const int64_t *pos, int64_t n,
                             int64_t width, ps_error *e);
int ps_cu_op_unembed_backward(ps_cu_ctx *c, float *dxn, float *dlogits_cache, float *tmp, const float *dlogits,
                              const int64_t *pos, int64_t n, ps_error *e);

#endif
