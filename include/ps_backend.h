// The backend interface: the one thing the engine asks of a device is to run a batch of rows.
// Everything about what to run, what to skip and what to patch lives above it, in the engine.
// Backend selection, capability bits and thread counts are decided here (backend.c), so the command line
// knows nothing about any particular device.
#ifndef PS_BACKEND_H
#define PS_BACKEND_H

#include "ps_backward.h"
#include "ps_plan.h"

// Capability bits (ps_backend.caps; the PS_CAP_* of ps_plan.h): the row features a backend implements.
// A backend sets exactly the bits of what it implements. The engine checks every row's features against
// caps (ps_row_check) and refuses one the backend lacks (an error naming the feature and the backend); it
// never approximates it with something else, so a number is either the reference's or absent.
// PS_CAP_NARROW is the one bit that is only an optimisation: without it the engine plans whole layers,
// which gives the same numbers (ps_row.narrow).
// PS_CAP_CACHE_LATE: a cache row (ps_row.cache) may start at a layer 0 < s < n_layers (start_pos 0, never narrowed,
// base required): the backend reads base's resid_pre at layer s, recomputes every position
// from there and writes the cache's layers [s, L), its final norm and logits; it writes nothing of the cache's
// layers below s nor its embeddings, which the caller guarantees are already base's (the usual case: cache ==
// base, a run rewritten in place from the first layer whose patches changed). A caller whose backend lacks the
// bit runs such rows from layer 0 instead (the same numbers); the engine refuses to send them.
// PS_CAP_HEAD_DELTA: a narrowed row entering at W_O with head_delta set (ps_row) starts its layer at base's
// attn_out plus the changed heads' (z - base z) @ W_O[h]: with a sequential block the MLP then runs from that
// resid_mid, with a parallel one (GPT-NeoX) the MLP's input is unchanged, so the layer is base's resid_post plus
// the change. Numbers within rounding of W_O over every head (tests/test_head_delta.c); without the bit a caller
// leaves head_delta at 0 and the row runs W_O as before.
#define PS_CAPS_CPU  ((unsigned)PS_CAP_ALL)      // the reference: every operation, capture and narrowing
// kernels/: every operation, head masks, captures; no narrowing yet. Listed bit by bit, so that a bit added to
// PS_CAP_ALL later is not claimed by CUDA until kernels/ implements it.
// (No PS_CAP_CACHE_LATE: its device copies are whole runs, and a cache may not be both a row's output and input.)
#define PS_CAPS_CUDA ((unsigned)(PS_CAP_REPLACE | PS_CAP_ZERO | PS_CAP_MEAN | PS_CAP_ADD | PS_CAP_SCALE | PS_CAP_FREEZE | \
                                 PS_CAP_HEAD_MASK | PS_CAP_CAPTURE))

// How to make a backend: everything a caller (the command line, a test) may choose.
typedef struct {
    ps_backend_kind kind;     // cpu, cuda, or auto (CUDA when a GPU is usable, else the CPU, saying so on stderr)
    ps_precision precision;   // fp32; fp16/bf16 on the CUDA backend only
    int threads;              // CPU threads for OpenMP (0 = all cores); the BLAS (ps_blas.h) runs single-threaded inside them
    int64_t cuda_cache_mb;    // CUDA: MiB for device copies of caches (`run --cuda-cache-mb N`);
                              // 0 = half the device memory free after the weights are uploaded
    int plan_only;            // a dry run: when the requested device is absent the CPU stands in (stand_in_for)
} ps_backend_opts;

typedef struct ps_backend {
    ps_backend_kind kind;     // PS_BACKEND_CPU or PS_BACKEND_CUDA once initialised
    ps_precision precision;
    const char *name;         // "cpu", "cuda"
    char device[128];         // e.g. "CPU (2 threads)", "NVIDIA H100 80GB HBM3"
    int threads;              // CPU threads it computes with (the results file's "threads"; 1 for CUDA)
    // Non-NULL only for opts.plan_only without the requested device: that backend's name ("cuda"). The
    // CPU computes (fp32), caps are the requested backend's, so rows are planned as it would run them, and
    // gemm_rate is NULL (its rate cannot be measured here). Such a backend is for planning, not results.
    const char *stand_in_for;
    int (*forward)(struct ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e);
    // Optional (NULL: the caller runs forward once per group): rows in groups of consecutive rows, group g
    // ending before row ends[g], each group's numbers exactly those of forward on that group alone
    // (ps_cpu_forward_groups).
    int (*forward_groups)(struct ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends,
                          int64_t n_groups, ps_error *e);
    // Optional (NULL: the caller runs ps_cpu_backward, the reference): the metric's gradient at every hook of one
    // prompt's run, with ps_cpu_backward's contract (ps_backward.h) and its numbers within rounding. CUDA's
    // reads fwd through its device copy (the handle contract below) and binds no handle to grad.
    int (*backward)(struct ps_backend *b, const ps_model *m, const ps_cache *fwd, const ps_logit_grad *lg, ps_cache *grad,
                    ps_error *e);
    void (*free)(struct ps_backend *b);
    // Device copies of caches (NULL for the CPU, which has none). The contract:
    //  - A backend that keeps a device copy of a cache records it in ps_cache.handle (0 = none): when it
    //    first uploads the cache (a row's base or patch source) or computes it (a cache row, whose device
    //    copy it keeps). It writes handle even through the const pointers of a row; nothing else may.
    //  - The copy is taken to equal the host arrays until release_cache: no contents are compared. A caller
    //    that writes a cache's host arrays after a backend has read or produced it (a rewrite, a reuse for
    //    another prompt) calls release_cache before the next forward that reads it; ps_cache_free without
    //    release_cache leaks the copy until ps_backend_free (or until the backend evicts it).
    //  - release_cache frees the copy and sets handle to 0; a cache the backend has no copy of (handle 0,
    //    or another backend's) is left alone. A handle that does not match the cache's memory, size and
    //    length is never trusted: the backend uploads afresh. A failed forward leaves no copy that a later
    //    forward could read as valid.
    //  - A batch may not use one cache both as a row's output (row->cache) and as an input: refused (the CPU
//    allows a PS_CAP_CACHE_LATE row's cache == its own base, rewritten in place).
    void (*release_cache)(struct ps_backend *b, ps_cache *c);
    // GFLOP/s of (M, K) @ (K, N) the way this backend runs its GEMMs, timed for about `seconds` (the dry
    // run's estimate); <= 0 when it cannot be measured.
    double (*gemm_rate)(struct ps_backend *b, int64_t M, int64_t K, int64_t N, double seconds);
    void *impl;               // backend-owned state (device weights, streams)
    unsigned caps;            // PS_CAP_* bits (ps_plan.h): the row features the backend implements
} ps_backend;

// 0, or -1 with e filled (exit status 2 for a backend or precision this machine cannot give).
int ps_backend_init_opts(ps_backend *b, const ps_backend_opts *o, const ps_model *m, ps_error *e);
// The same with the other options at their defaults.
int ps_backend_init(ps_backend *b, ps_backend_kind kind, ps_precision prec, int threads, const ps_model *m, ps_error *e);
void ps_backend_free(ps_backend *b);

// The callers' half of release_cache's contract, for c[0 .. n) (c NULL: nothing; b NULL or without release_cache: no
// device copies). ps_backend_release_caches: each cache's device copy released, its host arrays kept (to be rewritten).
// ps_backend_drop_caches: released, then ps_cache_free'd: the way to free caches a backend may have read or produced.
void ps_backend_release_caches(ps_backend *b, ps_cache *c, int64_t n);
void ps_backend_drop_caches(ps_backend *b, ps_cache *c, int64_t n);

// The CPU's fp32 GEMM rate through the loaded BLAS: row_blocks 1: the CPU backend's blocks of one GEMM (ps_cpu_linear);
// 2: one whole single-threaded GEMM a thread at once (the CPU forward's pieces); 0: one BLAS call with the BLAS's own
// threads (OpenMP's thread count).
double ps_cpu_gemm_rate(int64_t M, int64_t K, int64_t N, double seconds, int row_blocks);

#endif
