// The activation cache: the site table (ps_cache.h) and the one allocation it sizes. Everything that
// indexes a cache (the engine's slice comparisons, the backends' patches and stores) goes through here.
#include "ps_cache.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define F(x) offsetof(ps_cache, x)
#define ROTARY (PS_ARCH_BIT(PS_ARCH_LLAMA) | PS_ARCH_BIT(PS_ARCH_NEOX))
const ps_array_info ps_arrays[PS_ARR_COUNT] = {
    [PS_ARR_EMBED] = {"hook_embed", F(embed), PS_UNITS_ONE, PS_DIM_C, 0, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_POS_EMBED] = {"hook_pos_embed", F(pos_embed), PS_UNITS_ONE, PS_DIM_C, 0, 0, 0, PS_ARCH_BIT(PS_ARCH_GPT2), 0},
    [PS_ARR_RESID_PRE] = {"blocks.%d.hook_resid_pre", F(resid_pre), PS_UNITS_ONE, PS_DIM_C, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_LN1_SCALE] = {"blocks.%d.ln1.hook_scale", F(ln1_scale), PS_UNITS_ONE, PS_DIM_1, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_Q] = {"blocks.%d.attn.hook_q", F(q), PS_UNITS_HEADS, PS_DIM_D, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_K] = {"blocks.%d.attn.hook_k", F(k), PS_UNITS_KV_HEADS, PS_DIM_D, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_V] = {"blocks.%d.attn.hook_v", F(v), PS_UNITS_KV_HEADS, PS_DIM_D, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_ROT_Q] = {"blocks.%d.attn.hook_rot_q", F(rot_q), PS_UNITS_HEADS, PS_DIM_D, 1, 0, 0, ROTARY, 0},
    [PS_ARR_ROT_K] = {"blocks.%d.attn.hook_rot_k", F(rot_k), PS_UNITS_KV_HEADS, PS_DIM_D, 1, 0, 0, ROTARY, 0},
    [PS_ARR_SCORES] = {"blocks.%d.attn.hook_attn_scores", F(attn_scores), PS_UNITS_HEADS, PS_DIM_T, 1, 1, PS_CACHE_SCORES, PS_ARCHS_ALL, 0},
    [PS_ARR_PATTERN] = {"blocks.%d.attn.hook_pattern", F(pattern), PS_UNITS_HEADS, PS_DIM_T, 1, 1, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_Z] = {"blocks.%d.attn.hook_z", F(z), PS_UNITS_HEADS, PS_DIM_D, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_RESULT] = {"blocks.%d.attn.hook_result", F(result), PS_UNITS_HEADS, PS_DIM_C, 1, 0, PS_CACHE_RESULT, PS_ARCHS_ALL, 0},
    [PS_ARR_ATTN_OUT] = {"blocks.%d.hook_attn_out", F(attn_out), PS_UNITS_ONE, PS_DIM_C, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_RESID_MID] = {"blocks.%d.hook_resid_mid", F(resid_mid), PS_UNITS_ONE, PS_DIM_C, 1, 0, 0, PS_ARCHS_ALL, 1},
    [PS_ARR_LN2_SCALE] = {"blocks.%d.ln2.hook_scale", F(ln2_scale), PS_UNITS_ONE, PS_DIM_1, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_MLP_PRE] = {"blocks.%d.mlp.hook_pre", F(mlp_pre), PS_UNITS_NEURONS, PS_DIM_1, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_MLP_PRE_LINEAR] = {"blocks.%d.mlp.hook_pre_linear", F(mlp_pre_linear), PS_UNITS_NEURONS, PS_DIM_1, 1, 0, 0, PS_ARCH_BIT(PS_ARCH_LLAMA), 0},
    [PS_ARR_MLP_POST] = {"blocks.%d.mlp.hook_post", F(mlp_post), PS_UNITS_NEURONS, PS_DIM_1, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_MLP_OUT] = {"blocks.%d.hook_mlp_out", F(mlp_out), PS_UNITS_ONE, PS_DIM_C, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_RESID_POST] = {"blocks.%d.hook_resid_post", F(resid_post), PS_UNITS_ONE, PS_DIM_C, 1, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_LNF_SCALE] = {"ln_final.hook_scale", F(lnf_scale), PS_UNITS_ONE, PS_DIM_1, 0, 0, 0, PS_ARCHS_ALL, 0},
    [PS_ARR_LOGITS] = {"logits", F(logits), PS_UNITS_ONE, PS_DIM_V, 0, 0, PS_CACHE_LOGITS, PS_ARCHS_ALL, 0},
};
#undef ROTARY
#undef F

static const ps_array SITE_ARRAY[PS_SITE_COUNT] = {
    [PS_SITE_RESID_PRE] = PS_ARR_RESID_PRE, [PS_SITE_RESID_MID] = PS_ARR_RESID_MID, [PS_SITE_RESID_POST] = PS_ARR_RESID_POST,
    [PS_SITE_ATTN_OUT] = PS_ARR_ATTN_OUT,   [PS_SITE_MLP_OUT] = PS_ARR_MLP_OUT,     [PS_SITE_Q] = PS_ARR_Q,
    [PS_SITE_K] = PS_ARR_K,                 [PS_SITE_V] = PS_ARR_V,                 [PS_SITE_PATTERN] = PS_ARR_PATTERN,
    [PS_SITE_Z] = PS_ARR_Z,                 [PS_SITE_MLP_POST] = PS_ARR_MLP_POST,   [PS_SITE_RESULT] = PS_ARR_RESULT,
};

ps_array ps_site_array(ps_site s) { return (int)s >= 0 && s < PS_SITE_COUNT ? SITE_ARRAY[s] : PS_ARR_COUNT; }

const char *ps_site_hook(ps_site s) {
    const ps_array a = ps_site_array(s);
    return a < PS_ARR_COUNT ? ps_arrays[a].hook : "?";
}

int64_t ps_array_units(const ps_model_config *mc, ps_array a) {
    switch (ps_arrays[a].units) {
    case PS_UNITS_HEADS: return mc->n_heads;
    case PS_UNITS_KV_HEADS: return mc->n_kv_heads;
    case PS_UNITS_NEURONS: return mc->d_mlp;
    default: return 1;
    }
}

int64_t ps_array_unit(const ps_model_config *mc, ps_array a, int64_t T) {
    switch (ps_arrays[a].unit) {
    case PS_DIM_C: return mc->d_model;
    case PS_DIM_D: return mc->d_head;
    case PS_DIM_M: return mc->d_mlp;
    case PS_DIM_T: return T;
    case PS_DIM_V: return mc->d_vocab;
    default: return 1;
    }
}

int64_t ps_array_width(const ps_model_config *mc, ps_array a, int64_t T) { return ps_array_units(mc, a) * ps_array_unit(mc, a, T); }

int ps_array_in_model(const ps_model_config *mc, ps_array a) {
    const ps_array_info *ai = &ps_arrays[a];
    return (ai->archs & PS_ARCH_BIT(mc->arch)) && !(ai->sequential && mc->parallel_residual);
}

const char *ps_site_absent_why(const ps_model_config *mc, ps_site s) {
    if (ps_array_in_model(mc, ps_site_array(s))) return "present";
    if (ps_arrays[ps_site_array(s)].sequential && mc->parallel_residual)
        return "this model runs attention and the MLP in parallel (use_parallel_residual), so it has no resid_mid "
               "(TransformerLens has no hook_resid_mid there either); use resid_pre, attn_out or resid_post";
    return "this model's architecture has no such hook";
}

size_t ps_array_floats(const ps_model_config *mc, ps_array a, int64_t T, unsigned flags) {
    const ps_array_info *ai = &ps_arrays[a];
    if (ai->flag && !(flags & ai->flag)) return 0;
    if ((flags & PS_CACHE_LEAN) && (a == PS_ARR_PATTERN || a == PS_ARR_MLP_PRE || a == PS_ARR_MLP_POST)) return 0;
    if (!ps_array_in_model(mc, a)) return 0;
    return (size_t)((ai->per_layer ? mc->n_layers : 1) * T * ps_array_width(mc, a, T));
}

size_t ps_cache_floats(const ps_model_config *mc, int64_t T, unsigned flags) {
    size_t n = 0;
    for (int a = 0; a < PS_ARR_COUNT; a++) n += ps_array_floats(mc, (ps_array)a, T, flags);
    return n;
}

size_t ps_array_at(const ps_model_config *mc, ps_array a, int64_t T, int64_t l, int64_t t, int64_t u) {
    const ps_array_info *ai = &ps_arrays[a];
    const int64_t units = ps_array_units(mc, a), unit = ps_array_unit(mc, a, T), ll = ai->per_layer ? l : 0;
    if (ai->head_major) return (size_t)((((ll * units + u) * T) + t) * unit);
    return (size_t)(((ll * T + t) * units + u) * unit);
}

float *ps_cache_array(const ps_cache *c, ps_array a) { return *(float *const *)((const char *)c + ps_arrays[a].field); }

// The arrays of a cache of T tokens laid out from memory (total floats).
static void lay_out(ps_cache *c, const ps_model_config *cfg, int64_t T, unsigned flags, float *memory, size_t total) {
    c->memory = memory;
    c->T = T;
    c->n_floats = total;
    c->flags = flags;
    size_t at = 0;
    for (int a = 0; a < PS_ARR_COUNT; a++) {
        const size_t n = ps_array_floats(cfg, (ps_array)a, T, flags);
        *(float **)((char *)c + ps_arrays[a].field) = n ? memory + at : NULL;
        at += n;
    }
}

int ps_cache_init(ps_cache *c, const ps_model_config *cfg, int64_t T, unsigned flags, ps_error *e) {
    memset(c, 0, sizeof *c);
    const size_t total = ps_cache_floats(cfg, T, flags);
    float *memory = calloc(total ? total : 1, sizeof(float));
    if (!memory) return ps_fail(e, PS_EXIT_RUNTIME, "activation cache: out of memory (%zu floats, T=%lld)", total, (long long)T);
    lay_out(c, cfg, T, flags, memory, total);
    return 0;
}

// A block's head: how many caches still refer to it. The caches' floats follow, each cache 64-byte aligned.
typedef struct { int64_t refs; } cache_block;
enum { BLOCK_HEAD = 64, BLOCK_ALIGN = 16 /* floats */ };
#define HUGE_PAGE ((size_t)2 << 20)

int ps_cache_init_block(ps_cache *c, int64_t n, const ps_model_config *cfg, const int64_t *T, unsigned flags, ps_error *e) {
    if (n <= 0) return 0;
    memset(c, 0, (size_t)n * sizeof *c);
    size_t floats = 0;
    for (int64_t i = 0; i < n; i++) floats += (ps_cache_floats(cfg, T[i], flags) + BLOCK_ALIGN - 1) / BLOCK_ALIGN * BLOCK_ALIGN;
    size_t bytes = BLOCK_HEAD + (floats ? floats : 1) * sizeof(float);
    // Huge pages only for blocks of a few of them (a tiny model's few KiB stay small).
    const int huge = bytes >= 4 * HUGE_PAGE;
    const size_t align = huge ? HUGE_PAGE : BLOCK_HEAD; // every cache 64-byte aligned, as the head is 64 bytes
    bytes = (bytes + align - 1) / align * align;
    unsigned char *mem = aligned_alloc(align, bytes);
    if (!mem) return ps_fail(e, PS_EXIT_RUNTIME, "activation caches: out of memory (%lld caches, %.1f MiB)", (long long)n, (double)bytes / 1048576.0);
    if (huge) (void)madvise(mem, bytes, MADV_HUGEPAGE); // only advice: without THP nothing changes
    const int64_t pieces = (int64_t)((bytes + HUGE_PAGE - 1) / HUGE_PAGE);
#pragma omp parallel for schedule(static) if (pieces > 2)
    for (int64_t k = 0; k < pieces; k++) {
        const size_t a = (size_t)k * HUGE_PAGE, b = a + HUGE_PAGE < bytes ? a + HUGE_PAGE : bytes;
        memset(mem + a, 0, b - a);
    }
    ((cache_block *)mem)->refs = n;
    float *at = (float *)(mem + BLOCK_HEAD);
    for (int64_t i = 0; i < n; i++) {
        const size_t total = ps_cache_floats(cfg, T[i], flags);
        lay_out(&c[i], cfg, T[i], flags, at, total);
        c[i].block = mem;
        at += (total + BLOCK_ALIGN - 1) / BLOCK_ALIGN * BLOCK_ALIGN;
    }
    return 0;
}

void ps_cache_free(ps_cache *c) {
    if (!c) return;
    if (c->block) {
        if (--((cache_block *)c->block)->refs == 0) free(c->block);
    } else {
        free(c->memory);
    }
    memset(c, 0, sizeof *c);
}
