// The patching fixture shared by the engine tests (CPU) and the GPU sweep test (see patch_fixture.c).
#ifndef PS_PATCH_FIXTURE_H
#define PS_PATCH_FIXTURE_H

#include "ps_engine.h"
#include "ps_safetensors.h"

// One TransformerLens sweep kind: its golden name and our experiment.
typedef struct {
    const char *key;      // golden sweep name
    ps_site site;
    ps_layout layout;
    int head_before_pos;  // golden is (layer, head, pos) while we lay out (layer, pos, head)
} pf_kind;

enum { PF_NK = 15 };
extern const pf_kind PF_KINDS[PF_NK];

// A tiny model, its goldens and prompts, and the experiments: ex[i] is kind kind[i] in direction d
// (0 denoise, 1 noise), for every kind the model has a site for (a parallel-residual GPT-NeoX has no resid_mid).
typedef struct {
    ps_model m;
    ps_safetensors g;
    ps_prompt_set ps;
    ps_experiment ex[2 * PF_NK];
    int kind[2 * PF_NK];  // ex[i]'s PF_KINDS index
    int n_ex;
    char names[2 * PF_NK][64];
} pf_fixture;

int pf_load(pf_fixture *f, const char *model, ps_error *e);
// pf_load, recording a failure (TU_CHECK) and freeing what was loaded; 0 when the fixture is ready.
int pf_load_or_fail(pf_fixture *f, const char *model);
// pf_load_or_fail and an fp32 CPU backend of `threads` threads (0: OpenMP's default) on its model in be; on failure
// reports it, frees both and returns -1. The caller frees be (ps_backend_free) and f (pf_free).
int pf_load_cpu_or_fail(pf_fixture *f, const char *model, int threads, ps_backend *be);
void pf_free(pf_fixture *f);
// Every prompt's baseline and every sweep of rr against the goldens, at abs and rel tolerance tol.
void pf_compare_with_goldens(const char *model, pf_fixture *f, const ps_run_results *rr, const char *mode, float tol);
// Two runs of the same experiments: baselines and every sweep's values.
void pf_compare_runs(const char *what, const ps_run_results *a, const ps_run_results *b, int64_t n_prompts, float tol);

#endif
