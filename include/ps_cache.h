// The activation cache and its one site table: every array of a run's cache (TransformerLens hook name,
// shape per position, whether it is per layer), from which the cache's single allocation, the engine's
// slice comparisons and size estimate, and every backend's patch application take their layout.
#ifndef PS_CACHE_H
#define PS_CACHE_H

#include "ps_config.h"
#include "ps_model.h"

// Longest list of output positions a row may ask logits for (ps_row.out_pos, a metric's answer tokens,
// the baselines' logit buffers). Where it binds the error names it.
#define PS_MAX_OUT_POS 64

// Every activation of one run of one prompt, with TransformerLens's names and shapes (batch dim dropped).
// One allocation (memory); arrays not requested by the flags, or not in the architecture, are NULL.
// The order of the fields is the order of PS_ARR_* (and of the allocation).
typedef struct {
    int64_t T;           // tokens in the sequence
    float *embed;        // (T, C)          hook_embed
    float *pos_embed;    // (T, C)          hook_pos_embed (GPT-2)
    float *resid_pre;    // (L, T, C)       blocks.l.hook_resid_pre
    float *ln1_scale;    // (L, T)          blocks.l.ln1.hook_scale
    float *q;            // (L, T, H, D)    blocks.l.attn.hook_q (before rotary)
    float *k;            // (L, T, Hkv, D)  blocks.l.attn.hook_k
    float *v;            // (L, T, Hkv, D)  blocks.l.attn.hook_v
    float *rot_q;        // (L, T, H, D)    blocks.l.attn.hook_rot_q (Llama, GPT-NeoX)
    float *rot_k;        // (L, T, Hkv, D)  blocks.l.attn.hook_rot_k (Llama, GPT-NeoX)
    float *attn_scores;  // (L, H, T, T)    blocks.l.attn.hook_attn_scores (masked: -inf)   [PS_CACHE_SCORES]
    float *pattern;      // (L, H, T, T)    blocks.l.attn.hook_pattern
    float *z;            // (L, T, H, D)    blocks.l.attn.hook_z
    float *result;       // (L, T, H, C)    blocks.l.attn.hook_result                         [PS_CACHE_RESULT]
    float *attn_out;     // (L, T, C)       blocks.l.hook_attn_out
    float *resid_mid;    // (L, T, C)       blocks.l.hook_resid_mid (not with a parallel residual, as in TL)
    float *ln2_scale;    // (L, T)          blocks.l.ln2.hook_scale
    float *mlp_pre;      // (L, T, M)       blocks.l.mlp.hook_pre
    float *mlp_pre_linear; // (L, T, M)     blocks.l.mlp.hook_pre_linear (Llama)
    float *mlp_post;     // (L, T, M)       blocks.l.mlp.hook_post
    float *mlp_out;      // (L, T, C)       blocks.l.hook_mlp_out
    float *resid_post;   // (L, T, C)       blocks.l.hook_resid_post
    float *lnf_scale;    // (T)             ln_final.hook_scale
    float *logits;       // (T, V)                                                            [PS_CACHE_LOGITS]
    float *memory;       // owns all of the above (unless block is set)
    void *block;         // the shared allocation memory lies in (ps_cache_init_block; counted), or NULL
    size_t n_floats;
    unsigned flags;      // the PS_CACHE_* it was made with
    uint64_t handle;       // a backend's device copy of this cache (ps_backend.h: release_cache); 0 = none
} ps_cache;

// PS_CACHE_LEAN leaves out pattern, mlp_pre and mlp_post, which no row reads from its base unless it patches the
// pattern or mlp_post or captures (ps_row_check refuses such a row on a lean base): a base for the circuit search's
// rows (patches at z, hook_result and mlp_out) in half the memory. A backend reads lean bases only with
// PS_CAP_LEAN_BASE (ps_plan.h). Not part of PS_CACHE_ALL, which asks for every optional array.
enum { PS_CACHE_SCORES = 1, PS_CACHE_RESULT = 2, PS_CACHE_LOGITS = 4, PS_CACHE_ALL = 7, PS_CACHE_LEAN = 8 };

// The arrays of a cache, in ps_cache's field order.
typedef enum {
    PS_ARR_EMBED = 0, PS_ARR_POS_EMBED, PS_ARR_RESID_PRE, PS_ARR_LN1_SCALE, PS_ARR_Q, PS_ARR_K, PS_ARR_V, PS_ARR_ROT_Q,
    PS_ARR_ROT_K, PS_ARR_SCORES, PS_ARR_PATTERN, PS_ARR_Z, PS_ARR_RESULT, PS_ARR_ATTN_OUT, PS_ARR_RESID_MID,
    PS_ARR_LN2_SCALE, PS_ARR_MLP_PRE, PS_ARR_MLP_PRE_LINEAR, PS_ARR_MLP_POST, PS_ARR_MLP_OUT, PS_ARR_RESID_POST,
    PS_ARR_LNF_SCALE, PS_ARR_LOGITS, PS_ARR_COUNT
} ps_array;

// How many units a position holds, and how wide each is.
typedef enum { PS_UNITS_ONE = 0, PS_UNITS_HEADS, PS_UNITS_KV_HEADS, PS_UNITS_NEURONS } ps_units;
typedef enum { PS_DIM_1 = 0, PS_DIM_C, PS_DIM_D, PS_DIM_M, PS_DIM_T, PS_DIM_V } ps_dim;

// One row of the site table.
typedef struct {
    const char *hook;     // TransformerLens name; "%d" stands for the layer where per_layer
    size_t field;         // offsetof(ps_cache, array)
    ps_units units;
    ps_dim unit;          // floats per unit
    int per_layer;        // (L, ...) rather than one array for the run
    int head_major;       // (L, H, T, T): a head's rows before the next head's (pattern, scores)
    unsigned flag;        // 0: always held; else the PS_CACHE_* flag that asks for it
    unsigned archs;       // the architectures that have it: PS_ARCHS_ALL, or PS_ARCH_BIT(a) | ...
    int sequential;       // only where the MLP reads the residual stream after attention (absent with a parallel residual)
} ps_array_info;

#define PS_ARCH_BIT(a) (1u << (a))
#define PS_ARCHS_ALL ((1u << PS_ARCH_COUNT) - 1)

extern const ps_array_info ps_arrays[PS_ARR_COUNT];

// The array each hook site reads and writes.
ps_array ps_site_array(ps_site s);
const char *ps_site_hook(ps_site s);   // e.g. "blocks.%d.attn.hook_z"

// Sizes, for a sequence of T tokens. Units: 1, n_heads, n_kv_heads or d_mlp; width = units x unit floats
// per position (pattern: n_heads x T, a query's probabilities for every head).
int64_t ps_array_units(const ps_model_config *mc, ps_array a);
int64_t ps_array_unit(const ps_model_config *mc, ps_array a, int64_t T);
int64_t ps_array_width(const ps_model_config *mc, ps_array a, int64_t T);
// 1 when the model has the array at all (its architecture and residual layout; flags aside).
int ps_array_in_model(const ps_model_config *mc, ps_array a);
// Floats the array holds in a cache made with these flags (0 when absent).
size_t ps_array_floats(const ps_model_config *mc, ps_array a, int64_t T, unsigned flags);
// Floats of a whole cache; the engine's memory estimate and ps_cache_init's allocation.
size_t ps_cache_floats(const ps_model_config *mc, int64_t T, unsigned flags);
// Float offset of unit u (0 for units-one sites) at layer l, position t within the array: the unit's
// ps_array_unit floats are contiguous there. The one place the layout is written; backends index with it.
size_t ps_array_at(const ps_model_config *mc, ps_array a, int64_t T, int64_t l, int64_t t, int64_t u);
// The array's pointer in c (NULL when c does not hold it).
float *ps_cache_array(const ps_cache *c, ps_array a);

// Same for sites.
static inline int64_t ps_site_units(const ps_model_config *mc, ps_site s) { return ps_array_units(mc, ps_site_array(s)); }
static inline int64_t ps_site_unit(const ps_model_config *mc, ps_site s, int64_t T) { return ps_array_unit(mc, ps_site_array(s), T); }
static inline int64_t ps_site_width(const ps_model_config *mc, ps_site s, int64_t T) { return ps_array_width(mc, ps_site_array(s), T); }
static inline size_t ps_site_at(const ps_model_config *mc, ps_site s, int64_t T, int64_t l, int64_t t, int64_t u) {
    return ps_array_at(mc, ps_site_array(s), T, l, t, u);
}
// Why a model lacks a site's hook (only resid_mid can be absent: a parallel-residual GPT-NeoX has none, as in TL).
const char *ps_site_absent_why(const ps_model_config *mc, ps_site s);
static inline float *ps_cache_site(const ps_cache *c, ps_site s) { return ps_cache_array(c, ps_site_array(s)); }

// Allocates every array of a run of T tokens (zeroed); flags ask for the optional ones. On failure c
// owns nothing. ps_cache_free may be called on a zeroed or freed cache.
int ps_cache_init(ps_cache *c, const ps_model_config *cfg, int64_t T, unsigned flags, ps_error *e);
// The same for caches c[0..n) of T[i] tokens each, in one zeroed allocation (huge pages advised, faulted in by the
// OpenMP threads at once): many caches' fresh pages, faulted one 4 KiB page at a time by one thread while the
// other waited, were a fifth of a 1455-prompt circuit search's main thread. Each cache holds a reference to the
// block: ps_cache_free on each (in any order, after moving some elsewhere by struct copy) frees it with the last.
// On failure no cache owns anything.
int ps_cache_init_block(ps_cache *c, int64_t n, const ps_model_config *cfg, const int64_t *T, unsigned flags, ps_error *e);
void ps_cache_free(ps_cache *c);

#endif
