// Stand-in for the CUDA backend in builds without nvcc: says so instead of running.
#include "ps_cuda.h"

#include <stdio.h>

int ps_cuda_built(void) { return 0; }

int ps_cuda_device_count(char *why, size_t why_len) {
    if (why && why_len) snprintf(why, why_len, "this patchsweep was built without CUDA");
    return 0;
}

int ps_cuda_backend_init(ps_backend *b, const ps_backend_opts *o, const ps_model *m, ps_error *e) {
    (void)b; (void)o; (void)m;
    return ps_fail(e, PS_EXIT_RUNTIME, "this patchsweep was built without CUDA (meson option cuda=disabled or no nvcc)");
}
