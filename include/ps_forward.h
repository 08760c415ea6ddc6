// The forward pass as the engine sees it: activation caches, patches as masks, and batches of rows.
// A row is one prompt run from a cached state (start layer, start position) with a list of patches;
// the backend computes only what the row asks for. The CPU backend (forward_cpu.c) is the reference.
#ifndef PS_FORWARD_H
#define PS_FORWARD_H

#include "ps_config.h"
#include "ps_model.h"

// Every activation of one run of one prompt, with TransformerLens's names and shapes (batch dim dropped).
// One allocation (memory); arrays not requested by the flags are NULL.
typedef struct {
    int64_t T;           // tokens in the sequence
    float *embed;        // (T, C)          hook_embed
    float *pos_embed;    // (T, C)          hook_pos_embed (GPT-2)
    float *resid_pre;    // (L, T, C)       blocks.l.hook_resid_pre
    float *ln1_scale;    // (L, T)          blocks.l.ln1.hook_scale
    float *q;            // (L, T, H, D)    blocks.l.attn.hook_q (before rotary)
    float *k;            // (L, T, Hkv, D)  blocks.l.attn.hook_k
    float *v;            // (L, T, Hkv, D)  blocks.l.attn.hook_v
    float *rot_q;        // (L, T, H, D)    blocks.l.attn.hook_rot_q (Llama)
    float *rot_k;        // (L, T, Hkv, D)  blocks.l.attn.hook_rot_k (Llama)
    float *attn_scores;  // (L, H, T, T)    blocks.l.attn.hook_attn_scores (masked: -inf)   [PS_CACHE_SCORES]
    float *pattern;      // (L, H, T, T)    blocks.l.attn.hook_pattern
    float *z;            // (L, T, H, D)    blocks.l.attn.hook_z
    float *result;       // (L, T, H, C)    blocks.l.attn.hook_result                         [PS_CACHE_RESULT]
    float *attn_out;     // (L, T, C)       blocks.l.hook_attn_out
    float *resid_mid;    // (L, T, C)       blocks.l.hook_resid_mid
    float *ln2_scale;    // (L, T)          blocks.l.ln2.hook_scale
    float *mlp_pre;      // (L, T, M)       blocks.l.mlp.hook_pre
    float *mlp_pre_linear; // (L, T, M)     blocks.l.mlp.hook_pre_linear (Llama)
    float *mlp_post;     // (L, T, M)       blocks.l.mlp.hook_post
    float *mlp_out;      // (L, T, C)       blocks.l.hook_mlp_out
    float *resid_post;   // (L, T, C)       blocks.l.hook_resid_post
    float *lnf_scale;    // (T)             ln_final.hook_scale
    float *logits;       // (T, V)                                                            [PS_CACHE_LOGITS]
    float *memory;       // owns all of the above
    size_t n_floats;
    uint64_t handle;     // a backend's device copy of this cache (ps_backend.h: release_cache); 0 = none
} ps_cache;

enum { PS_CACHE_SCORES = 1, PS_CACHE_RESULT = 2, PS_CACHE_LOGITS = 4, PS_CACHE_ALL = 7 };

int ps_cache_init(ps_cache *c, const ps_model_config *cfg, int64_t T, unsigned flags, ps_error *e);
void ps_cache_free(ps_cache *c);

// One patch: at hook (site, layer), the selected slice takes its value from src (same T as the row).
// head/pos/neuron -1 = all. For resid_*/attn_out/mlp_out head and neuron are ignored.
typedef struct {
    ps_site site;
    int64_t layer, head, pos, neuron;
    const ps_cache *src;
} ps_patch;

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
    const ps_patch *patches; int64_t n_patches;
    ps_cache *cache;               // optional: receives every activation (needs start_layer = start_pos = 0)
    const int64_t *out_pos; int64_t n_out;   // positions whose logits are wanted (each >= start_pos)
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
} ps_row;

// FLOPs (2 x multiply-adds) a row costs on the reference backend: every GEMM, attention and the
// unembedding it asks for, following the narrowing above.
double ps_row_flops(const ps_model_config *mc, const ps_row *row);

// The reference forward pass: fp32, OpenBLAS GEMMs over all rows' tokens at once, OpenMP attention.
// A row's numbers do not depend on the other rows of the batch beyond rounding: no padding, but a BLAS
// kernel may round a row differently by where it falls in the GEMM's tiles (seen: 2e-6 on an AVX-512 Zen).
int ps_cpu_forward(const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e);

// The same with buffers kept between calls (one workspace per backend lifetime, grown as batches need).
typedef struct {
    void *part[4];   // row slots, per-token activations, positions, final-norm rows
    size_t cap[4];
} ps_cpu_workspace;
int ps_cpu_forward_ws(const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *w, ps_error *e);
void ps_cpu_workspace_free(ps_cpu_workspace *w);

// Small building blocks the CUDA kernels are tested against (same arithmetic, fp32).
void ps_cpu_layernorm(float *out, float *scale, const float *x, const float *w, const float *b, int64_t N, int64_t C, float eps);
void ps_cpu_rmsnorm(float *out, float *scale, const float *x, const float *w, int64_t N, int64_t C, float eps);
void ps_cpu_rotary(float *x, int64_t T, int64_t n_heads, int64_t D, const int64_t *pos, float theta);
float ps_cpu_act(ps_act act, float x);
// y (N, out) = x (N, in) @ W (in, out) [+ bias], the backend's GEMM: blocks of rows over the OpenMP threads,
// each a single-threaded OpenBLAS call (it sets OpenBLAS to one thread).
void ps_cpu_linear(float *y, const float *x, const float *W, const float *bias, int64_t N, int64_t in, int64_t out);

#endif
