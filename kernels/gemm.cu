// The matrix products: cuBLAS with fp32 accumulation. fp32 weights: plain fp32 GEMM (no TF32).
// fp16/bf16 weights: the fp32 activations are rounded to the weights' type first (cublasGemmEx needs A and B
// of one type), the product accumulates in fp32 and lands in fp32. Every call is cuBLAS's 64-bit API
// (cublas*_64): at Llama-2-7B shapes an operand passes 2^31 elements (a batch's N x d_mlp activations) and a
// dimension may too (N tokens of a large batch), so no int argument can overflow.
// Rounding fp32 activations to fp16 overflows to inf above 65504: the cast flags it (ctx.overflow) and the batch
// fails with a clear error instead of returning NaN logits (bf16 has fp32's range).
#include "ps_cuda_internal.h"

const char *ps_cublas_status_name(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED (out of device memory)";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH (GPU lacks the feature, e.g. bf16 before sm_80)";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "unknown cuBLAS status";
}

// overflow (may be NULL): set to 1 when a finite input rounds to an infinity (fp16 above 65504).
template <typename T> static __global__ void cast_kernel(T *dst, const float *src, int64_t n, int *overflow) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const T v = ps_from_f<T>(src[i]);
        dst[i] = v;
        if (overflow && isinf(ps_to_f(v)) && isfinite(src[i])) *overflow = 1;  // a benign race: every writer stores 1
    }
}

int ps_cu_cast_launch(cudaStream_t st, void *dst, ps_precision dt, const float *src, int64_t n, int *overflow,
                      ps_error *e) {
    PS_REQUIRE(e, n >= 0 && (dt == PS_PREC_FP32 || dt == PS_PREC_FP16 || dt == PS_PREC_BF16));
    if (n == 0) return 0;
    PS_REQUIRE(e, dst && src);
    const unsigned blocks = ps_cu_blocks(n, 256);
    if (dt == PS_PREC_FP16) cast_kernel<__half><<<blocks, 256, 0, st>>>((__half *)dst, src, n, overflow);
    else if (dt == PS_PREC_BF16) cast_kernel<__nv_bfloat16><<<blocks, 256, 0, st>>>((__nv_bfloat16 *)dst, src, n, overflow);
    else cast_kernel<float><<<blocks, 256, 0, st>>>((float *)dst, src, n, NULL);
    LAUNCH_CHECK(e);
    return 0;
}

static cudaDataType_t cu_type(ps_precision dt) {
    return dt == PS_PREC_FP16 ? CUDA_R_16F : dt == PS_PREC_BF16 ? CUDA_R_16BF : CUDA_R_32F;
}

// The B operand: x itself in fp32, else x rounded into the context's half buffer.
static int gemm_input(ps_cu_ctx *c, const void **B, const float *x, int64_t n, ps_precision dt, ps_error *e) {
    *B = x;
    if (dt == PS_PREC_FP32) return 0;
    PS_REQUIRE(e, c->half_buf && c->half_cap >= (size_t)n);
    PS_TRY(ps_cu_cast_launch(c->stream, c->half_buf, dt, x, n, c->overflow, e));
    *B = c->half_buf;
    return 0;
}

int ps_cu_gemm(ps_cu_ctx *c, float *y, const float *x, ps_cu_mat W, int64_t N, int64_t in, int64_t out, int trans_w,
               ps_error *e) {
    return ps_cu_gemm_beta(c, y, x, W, N, in, out, trans_w, 0.0f, e);
}

int ps_cu_gemm_beta(ps_cu_ctx *c, float *y, const float *x, ps_cu_mat W, int64_t N, int64_t in, int64_t out, int trans_w,
                    float beta, ps_error *e) {
    PS_REQUIRE(e, N >= 0 && in > 0 && out > 0 && (beta == 0.0f || beta == 1.0f));
    if (N == 0) return 0;
    PS_REQUIRE(e, y && x && W.p);
    const void *B;
    PS_TRY(gemm_input(c, &B, x, N * in, W.dt, e));
    const float alpha = 1.0f;
    const cudaDataType_t t = cu_type(W.dt);
    // Row-major y = x @ W is column-major y^T = W^T x^T: W (in, out) row-major is W^T column-major with ld = out.
    // trans_w: W (out, in) row-major is column-major (in x out) with ld = in; op T makes it (out x in).
    if (!trans_w)
        CUBLAS_CHECK(e, cublasGemmEx_64(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, out, N, in, &alpha, W.p, t, out, B, t, in, &beta,
                                        y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    else
        CUBLAS_CHECK(e, cublasGemmEx_64(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, out, N, in, &alpha, W.p, t, in, B, t, in, &beta,
                                        y, CUDA_R_32F, out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return 0;
}

int ps_cu_gemm_per_head(ps_cu_ctx *c, float *result, const float *z, ps_cu_mat w_o, int64_t T, int64_t H, int64_t D,
                        int64_t C, ps_error *e) {
    PS_REQUIRE(e, T >= 0 && H > 0 && D > 0 && C > 0);
    if (T == 0) return 0;
    PS_REQUIRE(e, result && z && w_o.p);
    const void *B;
    PS_TRY(gemm_input(c, &B, z, T * H * D, w_o.dt, e));
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t t = cu_type(w_o.dt);
    // Head h: result[:, h, :] (T, C), ld H*C  =  z[:, h, :] (T, D), ld H*D  @  W_O rows [h*D, (h+1)*D) (D, C).
    CUBLAS_CHECK(e, cublasGemmStridedBatchedEx_64(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, C, T, D, &alpha, w_o.p, t, C, D * C, B,
                                                  t, H * D, D, &beta, result, CUDA_R_32F, H * C, C, H, CUBLAS_COMPUTE_32F,
                                                  CUBLAS_GEMM_DEFAULT));
    return 0;
}

int ps_cu_op_linear(ps_cu_ctx *c, float *y, const float *x, ps_cu_mat W, const float *bias, int64_t N, int64_t in,
                    int64_t out, ps_error *e) {
    PS_TRY(ps_cu_gemm(c, y, x, W, N, in, out, 0, e));
    return ps_cu_bias_add_launch(c->stream, y, bias, N, out, e);
}

static int test_gemm(ps_cu_tmp *t, ps_cu_ctx *c, float *y, const float *x, const float *W, const float *bias, int64_t N,
                     int64_t in, int64_t out, int trans_w, ps_precision prec, ps_error *e) {
    void *d_y, *d_x, *d_w32, *d_w, *d_b = NULL;
    const size_t nw = (size_t)(in * out);
    PS_TRY(ps_cu_tmp_up(t, &d_y, NULL, (size_t)(N * out) * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_x, x, (size_t)(N * in) * sizeof(float), e));
    PS_TRY(ps_cu_tmp_up(t, &d_w32, W, nw * sizeof(float), e));
    if (bias) PS_TRY(ps_cu_tmp_up(t, &d_b, bias, (size_t)out * sizeof(float), e));
    d_w = d_w32;
    if (prec != PS_PREC_FP32) {
        PS_TRY(ps_cu_tmp_up(t, &d_w, NULL, nw * 2, e));
        PS_TRY(ps_cu_cast_launch(0, d_w, prec, (const float *)d_w32, (int64_t)nw, NULL, e));
        PS_TRY(ps_cu_tmp_up(t, &c->half_buf, NULL, (size_t)(N * in) * 2, e));
        c->half_cap = (size_t)(N * in);
    }
    ps_cu_mat m = {d_w, prec};
    PS_TRY(ps_cu_gemm(c, (float *)d_y, (const float *)d_x, m, N, in, out, trans_w, e));
    PS_TRY(ps_cu_bias_add_launch(0, (float *)d_y, (const float *)d_b, N, out, e));
    CUDA_CHECK(e, cudaMemcpy(y, d_y, (size_t)(N * out) * sizeof(float), cudaMemcpyDeviceToHost));
    return 0;
}

extern "C" int ps_cuda_test_gemm(float *y, const float *x, const float *W, const float *bias, int64_t N, int64_t in,
                                 int64_t out, int trans_w, ps_precision prec, ps_error *e) {
    ps_cu_ctx c;
    memset(&c, 0, sizeof c);
    c.prec = prec;
    c.stream = 0;
    cublasStatus_t st = cublasCreate(&c.blas);
    if (st != CUBLAS_STATUS_SUCCESS) return ps_fail(e, PS_EXIT_RUNTIME, "cublasCreate: %s", ps_cublas_status_name(st));
    ps_cu_tmp t = {{0}, 0};
    int rc = test_gemm(&t, &c, y, x, W, bias, N, in, out, trans_w, prec, e);
    ps_cu_tmp_free(&t);
    cublasDestroy(c.blas);
    return rc ? -1 : 0;
}
