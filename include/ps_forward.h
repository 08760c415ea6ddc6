// The forward pass as the engine sees it: activation caches, interventions on hooks, and batches of rows.
// A row is one prompt run from a cached state (start layer, start position) with a list of patches;
// the backend computes only what the row asks for. The CPU backend (cpu_forward.c) is the reference;
// ps_plan.h is what every backend may skip.
#ifndef PS_FORWARD_H
#define PS_FORWARD_H

#include "ps_cache.h"

// One intervention: an operation on a selection of one hook (site, layer), in the row's order with the
// row's other patches at that hook. Selection: head (q/k/v/z/pattern), neuron (mlp_post) and pos; -1 =
// all; head_mask (non-zero) selects the heads whose bit is set instead of head (ps_heads_except: all but
// one). resid_*/attn_out/mlp_out ignore head and neuron. The operations, on the selected slice x:
//   PS_OP_REPLACE  x = src's slice             (src: a run of the same length; today's patching)
//   PS_OP_FREEZE   x = src's slice             (the same arithmetic, for holding a hook at a given run's
//                                               value while the rest of the row recomputes: path patching)
//   PS_OP_ZERO     x = 0
//   PS_OP_MEAN     x = ref's row for position t (ref: any length, see ps_view)
//   PS_OP_ADD      x += ref's row for position t (e.g. a steering direction)
//   PS_OP_SCALE    x *= factor
// pattern (post-softmax probabilities of a query) takes replace, freeze, zero and scale only.
typedef enum { PS_OP_REPLACE = 0, PS_OP_ZERO, PS_OP_MEAN, PS_OP_ADD, PS_OP_SCALE, PS_OP_FREEZE, PS_OP_COUNT } ps_op;

// Rows of reference values for one (site, layer), broadcast over a row's positions: position t reads
// row map[t] (map NULL: row t when rows > 1, row 0 when rows == 1); map[t] < 0 leaves t alone. Borrowed.
typedef struct {
    const float *data;     // (rows, width), width = ps_site_width(): every unit of the site at one position
    int64_t rows;
    const int64_t *map;    // (T of the row) or NULL
} ps_view;

typedef struct {
    ps_site site;
    int64_t layer, head, pos, neuron;
    const ps_cache *src;   // replace, freeze (borrowed)
    ps_op op;              // 0: replace, so a zeroed patch with src set is today's patch
    uint64_t head_mask;    // 0: use head; else bit h selects head h (head must be -1)
    ps_view ref;           // mean, add
    float factor;          // scale
} ps_patch;

const char *ps_op_name(ps_op op);   // "replace", "zero", ...
// Every head but h of n_heads (n_heads <= 64), as a head_mask.
uint64_t ps_heads_except(int64_t n_heads, int64_t h);

// Records one hook's value in a row, after the row's patches at that hook: out[t] for every position t,
// those before the row's start_pos (and every position of a layer before its start_layer) copied from
// base, which equals the row there. Pattern: out is (T, H, T), a query's probabilities per head.
typedef struct {
    ps_site site;
    int64_t layer;
    float *out;            // (T, ps_site_width(mc, site, T)), caller-owned
} ps_capture;

// Where a narrowed row's changes begin in its start layer (see ps_row), in the order of the layer's steps.
typedef enum {
    PS_ENTER_LAYER = 0, PS_ENTER_QUERIES, PS_ENTER_WO, PS_ENTER_ATTN_OUT, PS_ENTER_RESID_MID, PS_ENTER_MLP_POST,
    PS_ENTER_MLP_OUT, PS_ENTER_RESID_POST
} ps_entry;

// One row of a batch. Positions before start_pos and layers before start_layer are read from base:
// the caller guarantees the patches cannot change them (causality; patches act at layers >= start_layer).
typedef struct {
    const int32_t *tokens; int64_t T;
    const ps_cache *base;          // required when start_layer > 0 or start_pos > 0
    int64_t start_layer, start_pos;
    const ps_patch *patches; int64_t n_patches;   // applied in this order at each hook
    const ps_capture *captures; int64_t n_captures; // rows with captures are never narrowed
    ps_cache *cache;               // optional: receives every activation (needs start_pos = 0, start_layer = 0 unless
                                   // PS_CAP_CACHE_LATE: ps_backend.h)
    const int64_t *out_pos; int64_t n_out;   // positions whose logits are wanted (each >= start_pos), <= PS_MAX_OUT_POS
    const int32_t *cols; int64_t n_cols;     // vocabulary columns wanted; NULL = all V
    float *logits;                 // (n_out, n_cols or V), written by the backend
    // Narrowing: what the engine knows the patches can change. With narrow = 0 every position from
    // start_pos is recomputed at every layer from start_layer on. With narrow = 1 (never with cache),
    // at start_layer only positions [start_pos, dirty_end) differ from base, at the point `entry` says:
    //  - PS_ENTER_LAYER: the residual stream entering the layer; LN1 and Q/K/V are recomputed there
    //    (the other positions' are base's) and attention at every query;
    //  - PS_ENTER_QUERIES: the attention of those queries (a q or pattern patch); Q/K/V are all base's;
    //  - PS_ENTER_WO: the heads' outputs z; attention is not recomputed, z is base's, the row begins
    //    at W_O;
    //  - PS_ENTER_ATTN_OUT ... PS_ENTER_RESID_POST: that hook; the steps before it are not recomputed
    //    (their outputs are base's) and the row begins there.
    // Positions a layer does not recompute keep base's residual stream. In the last layer queries, W_O
    // and the MLP run only at out_pos (keys and values still at every changed position).
    // Narrowing only says what need not be recomputed: a backend that ignores it (no PS_CAP_NARROW)
    // computes the same numbers from start_layer and start_pos.
    int narrow;
    ps_entry entry;
    int64_t dirty_end;
    // With narrow and entry PS_ENTER_WO (a z patch, no hook_result at that layer): the backend may take the start
    // layer's attn_out as base's plus (z - base's z) @ W_O[h] for each head h whose z changed, instead of W_O over
    // every head; the same numbers within rounding (the sum's order differs). Needs PS_CAP_HEAD_DELTA (ps_backend.h);
    // a caller sets it only where the backend has the bit. Ignored elsewhere.
    int head_delta;
} ps_row;

// The reference forward pass: fp32, OpenBLAS GEMMs over all rows' tokens at once, OpenMP attention.
// A row's numbers do not depend on the other rows of the batch beyond rounding: no padding, but a BLAS
// kernel may round a row differently by where it falls in the GEMM's tiles (seen: 2e-6 on an AVX-512 Zen).
int ps_cpu_forward(const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e);

// The same with buffers kept between calls (one workspace per backend lifetime, grown as batches need).
typedef struct {
    void *part[4];   // row slots, per-token activations, positions, final-norm rows
    size_t cap[4];
    void *pieces;    // the workspaces of a batch cut into pieces on the threads (cpu_pieces.c; owned), or NULL
    int n_pieces;
    double piece_min_flop; // FLOPs a piece takes at least; 0: the CPU forward's own (tests set less to cut tiny batches;
                           // then no floor on a piece's tokens either)
} ps_cpu_workspace;
int ps_cpu_forward_ws(const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *w, ps_error *e);
void ps_cpu_workspace_free(ps_cpu_workspace *w);

// Rows in groups of consecutive rows, group g ending before row ends[g] (increasing, the last == n_rows;
// ends NULL: one group): each group's numbers are bitwise those of ps_cpu_forward on that group alone (its
// own batch and buffers, the same GEMMs), but all groups go through a layer together, so a streamed model
// converts each layer once per call instead of once per group. The baselines run every prompt of a chunk
// this way, and the sweeps their prompts' batches when the weights are streamed.
// With resident weights and more than one thread, small groups (each below a piece's FLOPs, at least two a thread)
// instead run whole, each on one thread, the threads taking them in turn: each group's numbers are then those of
// its own call on one thread (the groups' own GEMMs, never cut between threads).
int ps_cpu_forward_groups(const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends, int64_t n_groups, ps_error *e);
// The same with the buffers of groups run on the threads kept in w (the backend's workspace) between calls.
int ps_cpu_forward_groups_ws(const ps_model *m, ps_row *rows, int64_t n_rows, const int64_t *ends, int64_t n_groups,
                             ps_cpu_workspace *w, ps_error *e);

// Small building blocks the CUDA kernels are tested against (same arithmetic, fp32).
void ps_cpu_layernorm(float *out, float *scale, const float *x, const float *w, const float *b, int64_t N, int64_t C, float eps);
void ps_cpu_rmsnorm(float *out, float *scale, const float *x, const float *w, int64_t N, int64_t C, float eps);
// rot_dim: only each head's first rot_dim (even) dims rotate, rotate-half within them (GPT-NeoX's partial rotary;
// D for Llama); the rest pass through.
void ps_cpu_rotary(float *x, int64_t T, int64_t n_heads, int64_t D, int64_t rot_dim, const int64_t *pos, float theta);
float ps_cpu_act(ps_act act, float x);
// y (N, out) = x (N, in) @ W (in, out) [+ bias], the backend's GEMM: one block per OpenMP thread (ps_sgemm_par),
// each a single-threaded BLAS call (it sets the BLAS to one thread).
void ps_cpu_linear(float *y, const float *x, const float *W, const float *bias, int64_t N, int64_t in, int64_t out);

#endif
