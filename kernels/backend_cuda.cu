// The CUDA backend as a ps_backend: set-up (device checks, stream, cuBLAS, weights, the cache budget),
// tear-down, the forward and backward entry points and the GEMM rate. The work is in cuda_memory.cu (device
// memory and the copies of caches), cuda_weights.cu (the upload), cuda_batch.cu (the forward over a batch) and
// cuda_backward.cu (the backward pass of one prompt).
// Unrun: no GPU has executed this backend yet; it is checked by compiling and by reading (README, "unverified").
#include "ps_cuda_internal.h"

#include <limits.h>
#include <stdio.h>

static int cuda_forward(ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    ps_cu_backend *im = (ps_cu_backend *)b->impl;
    if (!im) return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: not initialised");
    if (m->cfg.n_layers != im->ctx.cfg.n_layers || m->cfg.d_model != im->ctx.cfg.d_model ||
        m->cfg.d_vocab != im->ctx.cfg.d_vocab)
        return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: forward called with a different model than it was made for");
    return ps_cu_forward_rows(im, m, rows, n_rows, e);
}

// ps_backend.backward (cuda_backward.cu). Unrun, like the rest of this backend.
static int cuda_backward(ps_backend *b, const ps_model *m, const ps_cache *fwd, const ps_logit_grad *lg, ps_cache *grad,
                         ps_error *e) {
    ps_cu_backend *im = (ps_cu_backend *)b->impl;
    if (!im) return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: not initialised");
    return ps_cu_backward(im, m, fwd, lg, grad, e);
}

// ---------------------------------------------------------------------------------------------
// Set-up and tear-down

static void impl_free(ps_cu_backend *im) {
    if (!im) return;
    // Teardown cannot report: a failed sync (a lost context) still frees what it can.
    if (im->ctx.stream && cudaStreamSynchronize(im->ctx.stream) != cudaSuccess) (void)cudaGetLastError();
    cudaFree(im->wmem);
    cudaFree(im->ctx.overflow);
    ps_cu_cache_free_all(im);
    cudaFree(im->ws);
    cudaFreeHost(im->host);
    if (im->ctx.blas) cublasDestroy(im->ctx.blas);
    if (im->ctx.stream) cudaStreamDestroy(im->ctx.stream);
    free(im);
}

static void cuda_free(ps_backend *b) {
    impl_free((ps_cu_backend *)b->impl);
    b->impl = NULL;
}

extern "C" int ps_cuda_built(void) { return 1; }

extern "C" int ps_cuda_device_count(char *why, size_t why_len) {
    int n = 0;
    cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        if (why && why_len) snprintf(why, why_len, "cudaGetDeviceCount: %s", cudaGetErrorString(err));
        return 0;
    }
    if (n == 0 && why && why_len) snprintf(why, why_len, "cudaGetDeviceCount found 0 devices");
    return n;
}

// GFLOP/s of x (M, K) @ W (K, N) as the forward runs its GEMMs (cublasGemmEx in the weights' type, fp32
// accumulation), timed with events on the backend's stream; 0 when anything fails. Inputs are a non-zero
// byte pattern: all-zero operands draw less power and would flatter the clock.
static double cuda_gemm_rate(ps_backend *b, int64_t M, int64_t K, int64_t N, double seconds) {
    ps_cu_backend *im = (ps_cu_backend *)b->impl;
    ps_cu_ctx *c = &im->ctx;
    if (M <= 0 || K <= 0 || N <= 0) return 0;
    const size_t esz = c->prec == PS_PREC_FP32 ? 4 : 2;
    const cudaDataType_t t = c->prec == PS_PREC_FP16 ? CUDA_R_16F : c->prec == PS_PREC_BF16 ? CUDA_R_16BF : CUDA_R_32F;
    void *x = NULL, *w = NULL, *y = NULL;
    cudaEvent_t e0 = NULL, e1 = NULL;
    double rate = 0;
    int ok = cudaMalloc(&x, (size_t)(M * K) * esz) == cudaSuccess && cudaMalloc(&w, (size_t)(K * N) * esz) == cudaSuccess &&
             cudaMalloc(&y, (size_t)(M * N) * sizeof(float)) == cudaSuccess && cudaEventCreate(&e0) == cudaSuccess &&
             cudaEventCreate(&e1) == cudaSuccess && cudaMemsetAsync(x, 0x3c, (size_t)(M * K) * esz, c->stream) == cudaSuccess &&
             cudaMemsetAsync(w, 0x3c, (size_t)(K * N) * esz, c->stream) == cudaSuccess;
    const float alpha = 1.0f, beta = 0.0f;
    // The forward's call: row-major y = x @ W as column-major y^T = W^T x^T.
#define PS_RATE_GEMM()                                                                                              \
    (cublasGemmEx_64(c->blas, CUBLAS_OP_N, CUBLAS_OP_N, N, M, K, &alpha, w, t, N, x, t, K, &beta, y, CUDA_R_32F, N,    \
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) == CUBLAS_STATUS_SUCCESS)
    ok = ok && PS_RATE_GEMM(); // warm-up, untimed
    double el = 0;
    int64_t reps = 0;
    while (ok && el < seconds) {
        ok = cudaEventRecord(e0, c->stream) == cudaSuccess;
        for (int i = 0; i < 20 && ok; i++) ok = PS_RATE_GEMM();
        float ms = 0;
        ok = ok && cudaEventRecord(e1, c->stream) == cudaSuccess && cudaEventSynchronize(e1) == cudaSuccess &&
             cudaEventElapsedTime(&ms, e0, e1) == cudaSuccess;
        el += 1e-3 * ms;
        reps += 20;
    }
#undef PS_RATE_GEMM
    if (ok && el > 0) rate = 2.0 * (double)M * (double)N * (double)K * (double)reps / el * 1e-9;
    if (e0) cudaEventDestroy(e0);
    if (e1) cudaEventDestroy(e1);
    cudaFree(x);
    cudaFree(w);
    cudaFree(y);
    (void)cudaGetLastError();
    return rate;
}

// ps_backend.release_cache: the engine (or a caller that rewrites a cache) is done with this copy.
static void cuda_release_cache(ps_backend *b, ps_cache *c) {
    if (!b || b->kind != PS_BACKEND_CUDA || !b->impl || !c) return;
    ps_cu_cache_release((ps_cu_backend *)b->impl, c);
}

static int backend_init(ps_backend *b, const ps_backend_opts *o, const ps_model *m, ps_error *e) {
    const ps_precision prec = o->precision;
    char why[256];
    if (ps_cuda_device_count(why, sizeof why) <= 0) return ps_fail(e, PS_EXIT_RUNTIME, "no CUDA device found (%s)", why);
    if (prec != PS_PREC_FP32 && prec != PS_PREC_FP16 && prec != PS_PREC_BF16)
        return ps_fail(e, PS_EXIT_BADINPUT, "CUDA backend: unknown precision %d", (int)prec);
    const ps_model_config *cfg = &m->cfg;
    if (cfg->n_kv_heads <= 0 || cfg->n_heads % cfg->n_kv_heads || cfg->d_head % 2 || cfg->n_heads > 65535 ||
        cfg->rotary_dim < 0 || cfg->rotary_dim % 2 || cfg->rotary_dim > cfg->d_head)
        return ps_fail(e, PS_EXIT_BADINPUT, "CUDA backend: unsupported head layout (H=%lld, Hkv=%lld, D=%lld, rotary_dim=%lld)",
                       (long long)cfg->n_heads, (long long)cfg->n_kv_heads, (long long)cfg->d_head, (long long)cfg->rotary_dim);
    CUDA_CHECK(e, cudaSetDevice(0));
    cudaDeviceProp prop;
    CUDA_CHECK(e, cudaGetDeviceProperties(&prop, 0));
    if (prop.major < 8)
        return ps_fail(e, PS_EXIT_RUNTIME, "no CUDA device found that this build supports (%s is sm_%d%d; kernels are built for sm_80 and newer)",
                       prop.name, prop.major, prop.minor);

    ps_cu_backend *im = (ps_cu_backend *)calloc(1, sizeof *im);
    if (!im) return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: out of host memory");
    im->ctx.cfg = *cfg;
    im->ctx.prec = prec;
    int rc = 0;
    {
        cudaError_t err = cudaStreamCreate(&im->ctx.stream);
        if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "cudaStreamCreate: %s", cudaGetErrorString(err));
    }
    if (!rc) {
        cublasStatus_t st = cublasCreate(&im->ctx.blas);
        if (st != CUBLAS_STATUS_SUCCESS) im->ctx.blas = NULL;
        if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetStream(im->ctx.blas, im->ctx.stream);
        // Plain fp32 arithmetic (no TF32) so fp32 results track the CPU reference.
        if (st == CUBLAS_STATUS_SUCCESS) st = cublasSetMathMode(im->ctx.blas, CUBLAS_DEFAULT_MATH);
        if (st != CUBLAS_STATUS_SUCCESS) rc = ps_fail(e, PS_EXIT_RUNTIME, "cuBLAS initialisation: %s", ps_cublas_status_name(st));
    }
    if (!rc) {
        int optin = 0;
        cudaError_t err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
        im->ctx.smem_optin = err == cudaSuccess ? optin : 48 * 1024;
        (void)cudaGetLastError();
    }
    if (!rc && prec == PS_PREC_FP16) {
        // The overflow flag of fp16 roundings (gemm.cu), zeroed before the weights' upload and each batch.
        cudaError_t err = cudaMalloc((void **)&im->ctx.overflow, sizeof(int));
        if (err == cudaSuccess) err = cudaMemset(im->ctx.overflow, 0, sizeof(int));
        if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: the overflow flag: %s", __FILE__, __LINE__, cudaGetErrorString(err));
    }
    if (!rc) rc = ps_cu_upload_weights(im, m, e);
    if (!rc) {
        size_t free_b = 0, total_b = 0;
        if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) (void)cudaGetLastError();
        im->budget = o->cuda_cache_mb > 0 ? (size_t)o->cuda_cache_mb << 20 : free_b / 2;
    }
    if (rc) {
        impl_free(im);
        return -1;
    }
    memset(b, 0, sizeof *b);
    b->kind = PS_BACKEND_CUDA;
    b->precision = prec;
    b->name = "cuda";
    b->threads = 1;  // the host side is one thread (the results file's "threads")
    b->caps = PS_CAPS_CUDA;
    snprintf(b->device, sizeof b->device, "%.127s", prop.name);
    b->forward = cuda_forward;
    b->backward = cuda_backward;
    b->free = cuda_free;
    b->release_cache = cuda_release_cache;
    b->gemm_rate = cuda_gemm_rate;
    b->impl = im;
    return 0;
}

extern "C" int ps_cuda_backend_init(ps_backend *b, const ps_backend_opts *o, const ps_model *m, ps_error *e) {
    return backend_init(b, o, m, e) ? -1 : 0;
}

extern "C" size_t ps_cuda_cache_budget(const ps_backend *b) {
    if (!b || b->kind != PS_BACKEND_CUDA || !b->impl) return 0;
    return ((const ps_cu_backend *)b->impl)->budget;
}
