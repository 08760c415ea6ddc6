// Every TransformerLens sweep kind, both directions, through the engine on the CUDA backend: against
// TransformerLens's goldens (fp32, 1e-4) and against the CPU backend's run of the same experiments (which
// narrows its rows while CUDA runs whole layers), in fp32 at 1e-4 and in fp16/bf16 at gpu_tol_for's bounds
// (checked on each sweep's values, whose magnitude is O(1)), and once more in fp32 with a 1 MiB budget for the
// device copies of caches (eviction). Without a GPU it reports itself skipped.
#include "gpu_common.h"
#include "golden_util.h"
#include "patch_fixture.h"

#include <stdio.h>
#include <string.h>

static void test_model(const char *model) {
    pf_fixture f;
    ps_backend cpu;
    if (pf_load_cpu_or_fail(&f, model, 0, &cpu) != 0) return;
    ps_error e = {0};
    ps_engine_opts o = {0};
    ps_run_results rc;
    if (ps_engine_run(&f.m, &cpu, &f.ps, f.ex, f.n_ex, PS_METRIC_LOGIT_DIFF, &o, &rc, &e) != 0) {
        TU_CHECK(0, "%s: cpu engine: %s", model, e.msg);
        ps_backend_free(&cpu);
        pf_free(&f);
        return;
    }
    // The last run: fp32 with a 1 MiB budget for the device copies of caches, so they are evicted and
    // uploaded again as the engine goes (the arena's eviction path), with the same numbers.
    const ps_precision precs[] = {PS_PREC_FP32, PS_PREC_FP16, PS_PREC_BF16, PS_PREC_FP32};
    const int64_t cache_mb[] = {0, 0, 0, 1};
    for (int k = 0; k < 4; k++) {
        ps_backend gpu;
        const ps_backend_opts bo = {.kind = PS_BACKEND_CUDA, .precision = precs[k], .cuda_cache_mb = cache_mb[k]};
        if (ps_backend_init_opts(&gpu, &bo, &f.m, &e) != 0) {
            TU_CHECK(0, "%s: cuda backend (%s): %s", model, ps_precision_name(precs[k]), e.msg);
            continue;
        }
        ps_run_results rg;
        if (ps_engine_run(&f.m, &gpu, &f.ps, f.ex, f.n_ex, PS_METRIC_LOGIT_DIFF, &o, &rg, &e) != 0) {
            TU_CHECK(0, "%s: cuda engine (%s): %s", model, ps_precision_name(precs[k]), e.msg);
        } else {
            char what[128];
            snprintf(what, sizeof what, "%s cuda %s%s vs cpu:", model, ps_precision_name(precs[k]), cache_mb[k] ? " (1 MiB cache budget)" : "");
            const gpu_tol t = gpu_tol_for(precs[k]);
            pf_compare_runs(what, &rg, &rc, f.ps.n, t.abs_floor + t.rel);
            if (precs[k] == PS_PREC_FP32) pf_compare_with_goldens(model, &f, &rg, "cuda fp32", 1e-4f);
        }
        ps_run_results_free(&rg);
        ps_backend_free(&gpu);
    }
    ps_run_results_free(&rc);
    ps_backend_free(&cpu);
    pf_free(&f);
}

int main(void) {
    gpu_require_device();
    int tested = gu_for_each_model(test_model);
    printf("%d models' sweeps compared on the CUDA backend\n", tested);
    return tu_done("gpu sweeps");
}
