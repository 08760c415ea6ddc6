// What means.c, ablation.c and circuit_search.c share: turning an ablation set into one prompt's patches,
// and running prompts with patches into activation caches.
#ifndef PS_ABLATION_INTERNAL_H
#define PS_ABLATION_INTERNAL_H

#include "ps_ablation.h"

// Bytes of base runs the circuit search holds at most unless told (beyond them rows run from the embedding). The
// scored prompts' runs come first: they let every candidate's rows start at its layer; the reference prompts'
// (for seqcont's MLP means) only when both fit.
#define PS_SEARCH_BASE_BUDGET ((size_t)2 << 30)

// Upper bound on the patches build_patches writes for a set and a prompt of T tokens.
int64_t ps_abl_patch_bound(const ps_model_config *mc, const ps_abl_set *set, int64_t T);

// The patches that ablate `set` in prompt p (index i of a->ps, or of `ref` when heads_only is set; g: its
// mean group; src: the run a resample/corrupted ablation reads). heads_only: only the head ablations
// (the runs seqcont takes its MLP means under). Returns the count written to out (<= ps_abl_patch_bound).
int64_t ps_abl_build_patches(const ps_ablator *a, const ps_abl_set *set, const ps_prompt *p, int64_t g, const ps_cache *src,
                             int heads_only, ps_patch *out);

// Prompts per backend call of the runs that record caches and of the means' rows: a->batch_rows, else 32.
int64_t ps_abl_block(const ps_ablator *a);

// Every prompt of ps run with set's patches (heads_only: only its head ablations, the reference runs; else all,
// from the ablator's own prompts' sources) into caches (ps->n), ps_abl_block prompts a backend call. reuse: the
// caches are initialised for these prompts (a previous run's, overwritten); else initialised here. from (with
// reuse; 0: none): the held runs' patches equal set's below layer `from`, so the runs are rewritten in place from
// there where the backend can (PS_CAP_CACHE_LATE), bitwise what a run from layer 0 gives in these fixed blocks.
// On error none is held (reused ones freed too).
int ps_abl_run_set(const ps_ablator *a, const ps_prompt_set *ps, const ps_abl_set *set, int heads_only, int reuse, int64_t from,
                   ps_cache *caches, ps_error *e);

// Means over ref's prompts of the sites in `sites` (bits 1 << PS_MS_*), each run with the patches
// patch_fn writes for it (NULL: none; the count returned, -1 = error). out->group, n_groups set by the caller.
// mb (NULL: every row a full forward): runs of the reference prompts (base, (ref->n)) whose patches equal
// patch_fn's below from_layer, and their means (below, with the same sites): layers below from_layer are
// below's, the others are taken from rows that start where their patches first change base. batch: prompts per
// backend call (0: 32), fixed blocks by index.
typedef int64_t (*ps_means_patch_fn)(void *ctx, int64_t i, const ps_prompt *p, ps_patch *out, int64_t cap);
typedef struct { const ps_cache *base; int64_t from_layer; const ps_ref_means *below; } ps_means_base;
int ps_means_accumulate(const ps_model *m, ps_backend *be, const ps_prompt_set *ref, const int64_t *group_of,
                        unsigned sites, ps_means_patch_fn patch_fn, void *ctx, int64_t patch_cap, const ps_means_base *mb,
                        int64_t batch, const char *where, ps_ref_means *out, ps_error *e);

#endif
