// Error checks for the CUDA backend: every CUDA/cuBLAS call and every launch goes through one of these.
// Library code never aborts, so a failed check fills the ps_error with file, line and expression and returns.
#ifndef PS_CUDA_CHECK_H
#define PS_CUDA_CHECK_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

extern "C" {
#include "ps_common.h"
}

// Returned (instead of -1) when the device ran out of memory, so the backend can halve the batch and retry.
#define PS_CUDA_OOM (-2)

const char *ps_cublas_status_name(cublasStatus_t s);

// CUDA_CHECK(e, call): on failure fills e with "FILE:LINE: call: error" and returns -1 (PS_CUDA_OOM when out of memory).
#define CUDA_CHECK(e, call)                                                                                         \
    do {                                                                                                           \
        cudaError_t ps_err_ = (call);                                                                              \
        if (ps_err_ != cudaSuccess) {                                                                              \
            ps_fail((e), PS_EXIT_RUNTIME, "%s:%d: %s: %s", __FILE__, __LINE__, #call, cudaGetErrorString(ps_err_)); \
            if (ps_err_ == cudaErrorMemoryAllocation) {                                                            \
                (void)cudaGetLastError(); /* not sticky: clear it so a retry starts clean */                       \
                return PS_CUDA_OOM;                                                                                \
            }                                                                                                      \
            return -1;                                                                                             \
        }                                                                                                          \
    } while (0)

#define CUBLAS_CHECK(e, call)                                                                                       \
    do {                                                                                                           \
        cublasStatus_t ps_st_ = (call);                                                                            \
        if (ps_st_ != CUBLAS_STATUS_SUCCESS) {                                                                     \
            ps_fail((e), PS_EXIT_RUNTIME, "%s:%d: %s: %s", __FILE__, __LINE__, #call, ps_cublas_status_name(ps_st_)); \
            return ps_st_ == CUBLAS_STATUS_ALLOC_FAILED ? PS_CUDA_OOM : -1;                                        \
        }                                                                                                          \
    } while (0)

// After every kernel launch: catches bad launch configurations (and earlier asynchronous faults).
#define LAUNCH_CHECK(e) CUDA_CHECK(e, cudaGetLastError())

// A launcher's precondition: a violated one is a bug in the caller, reported rather than crashing the GPU.
#define PS_REQUIRE(e, cond)                                                                                         \
    do {                                                                                                           \
        if (!(cond)) return ps_fail((e), PS_EXIT_RUNTIME, "%s:%d: precondition failed: %s", __FILE__, __LINE__, #cond); \
    } while (0)

// Propagates a non-zero status from a call that already filled e.
#define PS_TRY(call)                                                                                                \
    do {                                                                                                           \
        int ps_rc_ = (call);                                                                                       \
        if (ps_rc_ != 0) return ps_rc_;                                                                            \
    } while (0)

#endif
