// Backend selection: the CPU reference, or CUDA when it is built and a GPU is present.
#include "ps_backend.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void openblas_set_num_threads(int num_threads);

static int cpu_forward(ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    return ps_cpu_forward_ws(m, rows, n_rows, (ps_cpu_workspace *)b->impl, e);
}

static void cpu_free(ps_backend *b) {
    if (b->impl) ps_cpu_workspace_free((ps_cpu_workspace *)b->impl);
    free(b->impl);
    b->impl = NULL;
}

int ps_backend_init(ps_backend *b, ps_backend_kind kind, ps_precision prec, int threads, const ps_model *m, ps_error *e) {
    memset(b, 0, sizeof *b);
    if (threads > 0) {
        omp_set_num_threads(threads);
        openblas_set_num_threads(threads);
    }
    if (kind == PS_BACKEND_CUDA || kind == PS_BACKEND_AUTO) {
        ps_error ce = {0};
        if (ps_cuda_backend_init(b, prec, m, &ce) == 0) return 0;
        if (kind == PS_BACKEND_CUDA)
            return ps_fail(e, PS_EXIT_BADINPUT, "backend \"cuda\": %s (use \"backend\": \"cpu\" or \"auto\")", ce.msg);
        fprintf(stderr, "patchsweep: backend auto: %s; falling back to the CPU backend\n", ce.msg);
        memset(b, 0, sizeof *b);
    }
    if (prec != PS_PREC_FP32)
        return ps_fail(e, PS_EXIT_BADINPUT, "precision \"%s\": the CPU backend computes in fp32 only (fp16/bf16 need the cuda backend)",
                       ps_precision_name(prec));
    b->kind = PS_BACKEND_CPU;
    b->precision = PS_PREC_FP32;
    b->name = "cpu";
    snprintf(b->device, sizeof b->device, "CPU (%d threads)", omp_get_max_threads());
    b->caps = PS_CAP_NARROW;
    b->forward = cpu_forward;
    b->free = cpu_free;
    b->impl = calloc(1, sizeof(ps_cpu_workspace));
    if (!b->impl) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    return 0;
}

void ps_backend_free(ps_backend *b) {
    if (b && b->free) b->free(b);
    if (b) memset(b, 0, sizeof *b);
}
