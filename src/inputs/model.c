// Loading a GPT-2, Llama or GPT-NeoX checkpoint (config.json is model_config.c's): one table of tensor specs
// that sizes the single fp32 weight block and says how each safetensors tensor lands in it.
#include "ps_model.h"
#include "ps_safetensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

// ---- the tensor-spec table ----

typedef enum {
    OP_COPY,    // file tensor has the destination's shape
    OP_T,       // HF Linear (out, in) -> (in, out)
    OP_SPLIT3,  // GPT-2 c_attn: columns [part*cols, (part+1)*cols) of a (rows, 3*cols) tensor
    OP_QKV_HEADS, // GPT-NeoX query_key_value, HF Linear (3*cols, rows) with rows per head h: q, k, v (head D each);
                  // part's rows [(3h + part)*D, (3h + part + 1)*D) of every head, transposed (a bias: the same entries)
    OP_ZERO,    // no file tensor (b_u)
    OP_ALIAS,   // shares another slot's memory (tied unembedding)
} spec_op;

typedef struct {
    float **slot;
    const char *pattern;  // tensor name after the prefix; "%d" stands for the layer
    int top;              // name lives outside the "transformer."/"model."/"gpt_neox." prefix (lm_head, embed_out)
    int layered;          // one file tensor per layer, stacked along the slot's first axis
    spec_op op;
    int part;             // OP_SPLIT3's / OP_QKV_HEADS's third
    int64_t head;         // OP_QKV_HEADS: D, the rows of one head's q (k, v)
    int vec;              // destination per layer is 1-D (rows == 1)
    int64_t rows, cols;   // destination matrix per layer
    float **alias_of;     // OP_ALIAS
} tspec;

#define MAX_SPECS 32

// head_name: the untied unembedding's tensor (lm_head.weight; GPT-NeoX's embed_out.weight).
static int build_specs(ps_model *m, int tied, const char *head_name, tspec *s) {
    const ps_model_config *c = &m->cfg;
    ps_weights *w = &m->w;
    int64_t C = c->d_model, V = c->d_vocab, M = c->d_mlp, QD = c->n_heads * c->d_head, KD = c->n_kv_heads * c->d_head;
    int n = 0;
#define MAT(sl, pat, lay, op_, pt, r, cc) s[n++] = (tspec){.slot = (sl), .pattern = (pat), .layered = (lay), .op = (op_), .part = (pt), .rows = (r), .cols = (cc)}
#define VEC(sl, pat, lay, op_, pt, cc) s[n++] = (tspec){.slot = (sl), .pattern = (pat), .layered = (lay), .op = (op_), .part = (pt), .vec = 1, .rows = 1, .cols = (cc)}
    if (c->arch == PS_ARCH_GPT2) {
        MAT(&w->wte, "wte.weight", 0, OP_COPY, 0, V, C);
        MAT(&w->wpe, "wpe.weight", 0, OP_COPY, 0, c->n_ctx, C);
        VEC(&w->ln1_w, "h.%d.ln_1.weight", 1, OP_COPY, 0, C);
        VEC(&w->ln1_b, "h.%d.ln_1.bias", 1, OP_COPY, 0, C);
        MAT(&w->w_q, "h.%d.attn.c_attn.weight", 1, OP_SPLIT3, 0, C, C);
        MAT(&w->w_k, "h.%d.attn.c_attn.weight", 1, OP_SPLIT3, 1, C, C);
        MAT(&w->w_v, "h.%d.attn.c_attn.weight", 1, OP_SPLIT3, 2, C, C);
        VEC(&w->b_q, "h.%d.attn.c_attn.bias", 1, OP_SPLIT3, 0, C);
        VEC(&w->b_k, "h.%d.attn.c_attn.bias", 1, OP_SPLIT3, 1, C);
        VEC(&w->b_v, "h.%d.attn.c_attn.bias", 1, OP_SPLIT3, 2, C);
        MAT(&w->w_o, "h.%d.attn.c_proj.weight", 1, OP_COPY, 0, C, C);
        VEC(&w->b_o, "h.%d.attn.c_proj.bias", 1, OP_COPY, 0, C);
        VEC(&w->ln2_w, "h.%d.ln_2.weight", 1, OP_COPY, 0, C);
        VEC(&w->ln2_b, "h.%d.ln_2.bias", 1, OP_COPY, 0, C);
        MAT(&w->w_in, "h.%d.mlp.c_fc.weight", 1, OP_COPY, 0, C, M);
        VEC(&w->b_in, "h.%d.mlp.c_fc.bias", 1, OP_COPY, 0, M);
        MAT(&w->w_out, "h.%d.mlp.c_proj.weight", 1, OP_COPY, 0, M, C);
        VEC(&w->b_out, "h.%d.mlp.c_proj.bias", 1, OP_COPY, 0, C);
        VEC(&w->lnf_w, "ln_f.weight", 0, OP_COPY, 0, C);
        VEC(&w->lnf_b, "ln_f.bias", 0, OP_COPY, 0, C);
    } else if (c->arch == PS_ARCH_NEOX) {
        const int64_t D = c->d_head;
        MAT(&w->wte, "embed_in.weight", 0, OP_COPY, 0, V, C);
        VEC(&w->ln1_w, "layers.%d.input_layernorm.weight", 1, OP_COPY, 0, C);
        VEC(&w->ln1_b, "layers.%d.input_layernorm.bias", 1, OP_COPY, 0, C);
        float **qkv[3] = {&w->w_q, &w->w_k, &w->w_v}, **bqkv[3] = {&w->b_q, &w->b_k, &w->b_v};
        for (int part = 0; part < 3; part++) {
            MAT(qkv[part], "layers.%d.attention.query_key_value.weight", 1, OP_QKV_HEADS, part, C, QD);
            s[n - 1].head = D;
        }
        for (int part = 0; part < 3; part++) {
            VEC(bqkv[part], "layers.%d.attention.query_key_value.bias", 1, OP_QKV_HEADS, part, QD);
            s[n - 1].head = D;
        }
        MAT(&w->w_o, "layers.%d.attention.dense.weight", 1, OP_T, 0, QD, C);
        VEC(&w->b_o, "layers.%d.attention.dense.bias", 1, OP_COPY, 0, C);
        VEC(&w->ln2_w, "layers.%d.post_attention_layernorm.weight", 1, OP_COPY, 0, C);
        VEC(&w->ln2_b, "layers.%d.post_attention_layernorm.bias", 1, OP_COPY, 0, C);
        MAT(&w->w_in, "layers.%d.mlp.dense_h_to_4h.weight", 1, OP_T, 0, C, M);
        VEC(&w->b_in, "layers.%d.mlp.dense_h_to_4h.bias", 1, OP_COPY, 0, M);
        MAT(&w->w_out, "layers.%d.mlp.dense_4h_to_h.weight", 1, OP_T, 0, M, C);
        VEC(&w->b_out, "layers.%d.mlp.dense_4h_to_h.bias", 1, OP_COPY, 0, C);
        VEC(&w->lnf_w, "final_layer_norm.weight", 0, OP_COPY, 0, C);
        VEC(&w->lnf_b, "final_layer_norm.bias", 0, OP_COPY, 0, C);
    } else {
        MAT(&w->wte, "embed_tokens.weight", 0, OP_COPY, 0, V, C);
        VEC(&w->ln1_w, "layers.%d.input_layernorm.weight", 1, OP_COPY, 0, C);
        MAT(&w->w_q, "layers.%d.self_attn.q_proj.weight", 1, OP_T, 0, C, QD);
        MAT(&w->w_k, "layers.%d.self_attn.k_proj.weight", 1, OP_T, 0, C, KD);
        MAT(&w->w_v, "layers.%d.self_attn.v_proj.weight", 1, OP_T, 0, C, KD);
        MAT(&w->w_o, "layers.%d.self_attn.o_proj.weight", 1, OP_T, 0, QD, C);
        VEC(&w->ln2_w, "layers.%d.post_attention_layernorm.weight", 1, OP_COPY, 0, C);
        MAT(&w->w_in, "layers.%d.mlp.gate_proj.weight", 1, OP_T, 0, C, M);
        MAT(&w->w_up, "layers.%d.mlp.up_proj.weight", 1, OP_T, 0, C, M);
        MAT(&w->w_out, "layers.%d.mlp.down_proj.weight", 1, OP_T, 0, M, C);
        VEC(&w->lnf_w, "norm.weight", 0, OP_COPY, 0, C);
    }
    if (tied) s[n++] = (tspec){.slot = &w->w_u, .op = OP_ALIAS, .alias_of = &w->wte, .rows = V, .cols = C};
    else {
        MAT(&w->w_u, head_name, 0, OP_COPY, 0, V, C);
        s[n - 1].top = 1;
    }
    if (c->arch != PS_ARCH_LLAMA) VEC(&w->b_u, NULL, 0, OP_ZERO, 0, V);
#undef MAT
#undef VEC
    return n;
}

// The shape the file tensor must have for spec s.
static int file_shape(const tspec *s, int64_t *shape) {
    int64_t cols = s->op == OP_SPLIT3 || s->op == OP_QKV_HEADS ? 3 * s->cols : s->cols;
    if (s->vec) { shape[0] = cols; return 1; }
    if (s->op == OP_T) { shape[0] = s->cols; shape[1] = s->rows; }
    else if (s->op == OP_QKV_HEADS) { shape[0] = cols; shape[1] = s->rows; }
    else { shape[0] = s->rows; shape[1] = cols; }
    return 2;
}

static void shape_str(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

static void tensor_name(char *buf, size_t cap, const char *prefix, const tspec *s, int64_t layer) {
    char tmp[256];
    snprintf(tmp, sizeof tmp, s->pattern, (int)layer);
    snprintf(buf, cap, "%s%s", s->top ? "" : prefix, tmp);
}

// Buffers that checkpoints carry but that are no weights (GPT-2's and old GPT-NeoX's causal masks, rotary caches).
static int ignorable(const char *name) {
    static const char *suffixes[] = {".attn.bias", ".attn.masked_bias", ".attention.bias", ".attention.masked_bias", ".rotary_emb.inv_freq"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof suffixes / sizeof *suffixes; i++) {
        size_t k = strlen(suffixes[i]);
        if (n >= k && strcmp(name + n - k, suffixes[i]) == 0) return 1;
    }
    return 0;
}

static int same_bytes(const ps_tensor *a, const ps_tensor *b) {
    if (a->dtype != b->dtype || a->ndim != b->ndim || a->nbytes != b->nbytes) return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i]) return 0;
    return memcmp(a->data, b->data, a->nbytes) == 0;
}

// A big weights buffer: 2 MiB-aligned and advised as transparent huge pages, so its first writes fault 512
// times less often (with 4 KiB pages, faults were a fifth of a streamed layer's conversion). Freed by free().
static float *weights_alloc(size_t bytes) {
    const size_t huge = (size_t)2 << 20, n = (bytes + huge - 1) / huge * huge;
    float *p = aligned_alloc(huge, n ? n : huge);
    if (p) (void)madvise(p, n ? n : huge, MADV_HUGEPAGE); // only advice: without THP nothing changes
    return p;
}

// x86-64: AVX-512 and AVX2 copies of the bf16 transpose besides the baseline one, chosen at load time (the
// same bits: it only moves and widens).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define MODEL_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MODEL_CLONES
#endif

// File rows [o0, o0 + nb) of a bf16 (Cc, R) tensor at src become columns [o0, o0 + nb) of dst (R, Cc) in fp32.
// 16 x 16 blocks: 16 rows' 16 elements widened into a block that is written out transposed, one 64-byte
// line of a dst row at a time (the tiles through ps_tensor_to_f32_range managed about a third of this rate).
MODEL_CLONES static void bf16_transposed(const unsigned char *src, int64_t R, int64_t Cc, int64_t o0, int64_t nb, float *dst) {
    enum { B = 16 };
    for (int64_t ob = o0; ob < o0 + nb; ob += B) {
        const int64_t no = o0 + nb - ob < B ? o0 + nb - ob : B;
        for (int64_t i0 = 0; i0 < R; i0 += B) {
            const int64_t ni = R - i0 < B ? R - i0 : B;
            uint32_t blk[B][B];
            if (no == B && ni == B) { // sizes known here, so the copies compile to vector moves
                for (int o = 0; o < B; o++) {
                    uint16_t h[B];
                    memcpy(h, src + 2 * (size_t)((ob + o) * R + i0), sizeof h); // the data need not be aligned
                    for (int i = 0; i < B; i++) blk[i][o] = (uint32_t)h[i] << 16;
                }
                for (int i = 0; i < B; i++) memcpy(dst + (i0 + i) * Cc + ob, blk[i], sizeof blk[i]);
                continue;
            }
            for (int64_t o = 0; o < no; o++) {
                uint16_t h[B] = {0};
                memcpy(h, src + 2 * (size_t)((ob + o) * R + i0), (size_t)ni * 2);
                for (int i = 0; i < B; i++) blk[i][o] = (uint32_t)h[i] << 16;
            }
            for (int64_t i = 0; i < ni; i++) memcpy(dst + (i0 + i) * Cc + ob, blk[i], (size_t)no * sizeof(float));
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#include <immintrin.h>
#define MODEL_AVX512 1
// The 16 x 16 block of 32-bit lanes in r transposed in registers (unpacks, then 128-bit lane shuffles).
__attribute__((target("avx512f"))) static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
        r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
        r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
        r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
    }
    for (int i = 0; i < 16; i += 8)
        for (int j = 0; j < 4; j++) {
            t[i + j] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0x88);
            t[i + j + 4] = _mm512_shuffle_i32x4(r[i + j], r[i + j + 4], 0xdd);
        }
    for (int j = 0; j < 8; j++) {
        r[j] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0x88);
        r[j + 8] = _mm512_shuffle_i32x4(t[j], t[j + 8], 0xdd);
    }
}

// bf16_transposed with AVX-512: each 16 x 16 block widened and transposed in registers and written with
// non-temporal stores (a converted layer is far larger than the caches, and the GEMMs read it after: the
// stores then skip reading every destination line first). Llama-2-7B-shaped layer, one thread, warm file:
// 0.09 s of CPU instead of 0.28 (the L1 blocks above), the same bits (it only moves and widens).
// The rows and columns beyond the last whole block of 16 go through bf16_transposed.
__attribute__((target("avx512f"))) static void bf16_transposed_avx512(const unsigned char *src, int64_t R, int64_t Cc, int64_t o0,
                                                                      int64_t nb, float *dst) {
    const int64_t nb16 = nb & ~(int64_t)15, R16 = R & ~(int64_t)15;
    const int stream = (uintptr_t)dst % 64 == 0 && Cc % 16 == 0; // every row's block then starts a 64-byte line
    for (int64_t i0 = 0; i0 < R16; i0 += 16)
        for (int64_t ob = o0; ob < o0 + nb16; ob += 16) {
            __m512i r[16];
            for (int o = 0; o < 16; o++)
                r[o] = _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(src + 2 * (size_t)((ob + o) * R + i0)))), 16);
            transpose16(r);
            if (stream)
                for (int i = 0; i < 16; i++) _mm512_stream_si512((void *)(dst + (i0 + i) * Cc + ob), r[i]);
            else
                for (int i = 0; i < 16; i++) _mm512_storeu_si512((void *)(dst + (i0 + i) * Cc + ob), r[i]);
        }
    _mm_sfence(); // the non-temporal stores are seen by the other threads (the GEMMs) after this
    for (int64_t i = R16; i < R; i++) // the last R % 16 destination rows of these columns
        for (int64_t o = o0; o < o0 + nb16; o++) {
            uint16_t h;
            memcpy(&h, src + 2 * (size_t)(o * R + i), 2);
            const uint32_t bits = (uint32_t)h << 16;
            memcpy(dst + i * Cc + o, &bits, 4);
        }
    if (nb16 < nb) bf16_transposed(src, R, Cc, o0 + nb16, nb - nb16, dst);
}
#endif

// Converts one layer's file tensor t into dst per spec s.
static int convert(const tspec *s, const ps_tensor *t, float *dst, float *tmp, int64_t tmp_len, ps_error *e) {
    int64_t R = s->rows, Cc = s->cols;
    switch (s->op) {
    case OP_COPY:
        return ps_tensor_to_f32(t, dst, e);
    case OP_SPLIT3:
        for (int64_t r = 0; r < R; r++)
            if (ps_tensor_to_f32_range(t, r * 3 * Cc + s->part * Cc, Cc, dst + r * Cc, e)) return -1;
        return 0;
    case OP_QKV_HEADS: {
        const int64_t D = s->head, H = Cc / D;
        if (s->vec) {
            for (int64_t h = 0; h < H; h++)
                if (ps_tensor_to_f32_range(t, (3 * h + s->part) * D, D, dst + h * D, e)) return -1;
            return 0;
        }
        // Head h's D file rows (of R floats each) become columns [h*D, (h+1)*D) of dst; a block of rows at a time.
        const int64_t blk = tmp_len / R;
        for (int64_t h = 0; h < H; h++)
            for (int64_t o0 = 0; o0 < D; o0 += blk) {
                const int64_t nb = D - o0 < blk ? D - o0 : blk, row0 = (3 * h + s->part) * D + o0;
                if (ps_tensor_to_f32_range(t, row0 * R, nb * R, tmp, e)) return -1;
                for (int64_t i = 0; i < R; i++) {
                    float *d = dst + i * Cc + h * D + o0;
                    for (int64_t o = 0; o < nb; o++) d[o] = tmp[o * R + i];
                }
            }
        return 0;
    }
    case OP_T: {
        // The file holds Cc rows of R; dst is (R, Cc). Tiles of 64 file rows x 256 columns of them: a tile's
        // rows are converted into a 64 KiB buffer and written out transposed, each write a contiguous piece of
        // a dst row (whole-row blocks were 1 MiB, and the transpose was a quarter of a streamed layer's time).
        // Tiles are independent: the threads share them (the conversion runs between layers' GEMMs, with
        // every core otherwise idle). Only the dtype can fail, and the first element finds that.
        enum { TILE = 64, TILE_I = 256 };
        if (R > 0 && Cc > 0 && ps_tensor_to_f32_range(t, 0, 1, dst, e)) return -1;
        const int64_t n_o = (Cc + TILE - 1) / TILE;
        int failed = 0;
#ifdef MODEL_AVX512
        const int avx512 = t->dtype == PS_DT_BF16 && __builtin_cpu_supports("avx512f");
#endif
#pragma omp parallel for schedule(dynamic, 4) reduction(| : failed) if (R * Cc >= (int64_t)1 << 20)
        for (int64_t ob = 0; ob < n_o; ob++) {
            float tile[TILE][TILE_I];
            const int64_t o0 = ob * TILE, nb = Cc - o0 < TILE ? Cc - o0 : TILE;
#ifdef MODEL_AVX512
            if (avx512) {
                bf16_transposed_avx512(t->data, R, Cc, o0, nb, dst);
                continue;
            }
#endif
            if (t->dtype == PS_DT_BF16) {
                bf16_transposed(t->data, R, Cc, o0, nb, dst);
                continue;
            }
            ps_error te = {0};
            for (int64_t i0 = 0; i0 < R && !failed; i0 += TILE_I) {
                const int64_t ni = R - i0 < TILE_I ? R - i0 : TILE_I;
                for (int64_t o = 0; o < nb; o++)
                    if (ps_tensor_to_f32_range(t, (o0 + o) * R + i0, ni, tile[o], &te)) { failed = 1; break; }
                for (int64_t i = 0; i < ni && !failed; i++) {
                    float *d = dst + (i0 + i) * Cc + o0;
                    for (int64_t o = 0; o < nb; o++) d[o] = tile[o][i];
                }
            }
        }
        if (failed) return ps_fail(e, PS_EXIT_RUNTIME, "tensor \"%s\": conversion failed", t->name);
        return 0;
    }
    default:
        return 0;
    }
}

struct ps_weight_stream {
    ps_safetensors st;        // the mapped checkpoint
    tspec specs[MAX_SPECS];
    int n_specs;
    const ps_tensor **found;  // (n_specs, L) file tensor per spec and layer
    size_t layer_floats;      // one converted layer of every streamed matrix (each on a 64-byte boundary)
    size_t slot_off[MAX_SPECS]; // each streamed matrix's offset in a layer buffer
    float **kept;             // (L) converted layers kept for later calls; NULL where not kept
    unsigned char *seen;      // (L) 1 once the layer was converted (into scratch or kept)
    int lazy;                 // keep a layer only when it is asked for again (ps_model_stream_expect)
    size_t budget, kept_bytes; // byte budget of the kept layers, and what they take
    float *scratch;           // the last converted layer that is not kept (allocated and faulted in at load)
    int64_t scratch_layer;    // layer now in scratch; -1 none
    int64_t conversions, hits;
    double convert_seconds;   // spent converting, all conversions together
    float *tmp; int64_t tmp_len;
    int which[7];             // spec index of w_q, w_k, w_v, w_o, w_in, w_up, w_out; -1 when absent
};

// The matrices a streamed model leaves in the file: every per-layer matrix (vectors stay resident).
static int streamable(const tspec *s) { return s->layered && !s->vec && s->op != OP_ZERO && s->op != OP_ALIAS; }

static size_t physical_ram(void) {
    long pages = sysconf(_SC_PHYS_PAGES), sz = sysconf(_SC_PAGE_SIZE);
    return pages > 0 && sz > 0 ? (size_t)pages * (size_t)sz : 0;
}

int ps_model_load(ps_model *m, const char *dir, ps_error *e) { return ps_model_load_mode(m, dir, PS_WEIGHTS_AUTO, e); }

int ps_model_load_mode(ps_model *m, const char *dir, ps_weights_mode mode, ps_error *e) {
    memset(m, 0, sizeof *m);
    ps_safetensors st = {0};
    tspec specs[MAX_SPECS];
    const ps_tensor **found = NULL;  // per spec and layer
    unsigned char *used = NULL;      // per checkpoint tensor
    float *tmp = NULL;
    char *cfg_path = ps_path_join(dir, "config.json");
    char *single = ps_path_join(dir, "model.safetensors");
    char *index = ps_path_join(dir, "model.safetensors.index.json");
    int rc = -1;
    m->dir = strdup(dir);
    if (!cfg_path || !single || !index || !m->dir) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir); goto out; }
    if (ps_model_config_load(&m->cfg, cfg_path, e) != 0) goto out;
    if (ps_safetensors_open(&st, dir, e) != 0) goto out;
    struct stat sb;
    const char *weights_path = stat(single, &sb) == 0 ? single : index;  // what ps_safetensors_open chose
    const ps_model_config *c = &m->cfg;
    int64_t L = c->n_layers;

    const char *prefix;
    if (c->arch == PS_ARCH_GPT2) prefix = ps_safetensors_find(&st, "transformer.wte.weight") ? "transformer." : "";
    else if (c->arch == PS_ARCH_NEOX) prefix = ps_safetensors_find(&st, "gpt_neox.embed_in.weight") || !ps_safetensors_find(&st, "embed_in.weight") ? "gpt_neox." : "";
    else prefix = ps_safetensors_find(&st, "model.embed_tokens.weight") || !ps_safetensors_find(&st, "embed_tokens.weight") ? "model." : "";

    used = calloc((size_t)(st.n_tensors ? st.n_tensors : 1), 1);
    if (!used) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir); goto out; }

    // Tied unembedding: HF ignores lm_head.weight when tie_word_embeddings is set, so a differing one is an error, not a choice.
    char name[512];
    static const char *emb_names[PS_ARCH_COUNT] = {"wte.weight", "embed_tokens.weight", "embed_in.weight"};
    snprintf(name, sizeof name, "%s%s", prefix, emb_names[c->arch]);
    // GPT-NeoX calls its unembedding embed_out (lm_head since transformers 5.14's renaming, so either).
    const char *head_name = c->arch == PS_ARCH_NEOX && !ps_safetensors_find(&st, "lm_head.weight") ? "embed_out.weight" : "lm_head.weight";
    const ps_tensor *emb = ps_safetensors_find(&st, name), *head = ps_safetensors_find(&st, head_name);
    int tied = c->tie_word_embeddings;
    if (tied && head) {
        if (emb && !same_bytes(head, emb)) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": differs from \"%s\" but %s sets tie_word_embeddings (HF would ignore it)",
                    st.files[head->file].path, head_name, name, cfg_path);
            goto out;
        }
        used[head - st.tensors] = 1;
    }
    int n_specs = build_specs(m, tied, head_name, specs);

    // Pass 1: every tensor present with the shape config.json implies and a float dtype, before allocating anything.
    found = calloc((size_t)n_specs * (size_t)L, sizeof *found);
    if (!found) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir); goto out; }
    int first_dtype = -1, mixed = 0;
    int64_t max_rows_T = 0;
    for (int i = 0; i < n_specs; i++) {
        const tspec *s = &specs[i];
        if (s->op == OP_ZERO || s->op == OP_ALIAS) continue;
        if ((s->op == OP_T || (s->op == OP_QKV_HEADS && !s->vec)) && s->rows > max_rows_T) max_rows_T = s->rows;
        for (int64_t l = 0; l < (s->layered ? L : 1); l++) {
            tensor_name(name, sizeof name, prefix, s, l);
            int64_t want[2];
            int nd = file_shape(s, want);
            char ws[96], gs[256];
            shape_str(ws, sizeof ws, want, nd);
            const ps_tensor *t = ps_safetensors_find(&st, name);
            if (!t) {
                ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": missing (%s implies shape %s)%s", weights_path, name, cfg_path, ws,
                        s->top && !tied ? "; set tie_word_embeddings to true if the unembedding is the embedding" : "");
                goto out;
            }
            const char *tpath = st.files[t->file].path;
            int ok = t->ndim == nd;
            for (int k = 0; ok && k < nd; k++) ok = t->shape[k] == want[k];
            if (!ok) {
                shape_str(gs, sizeof gs, t->shape, t->ndim);
                ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": shape %s in the file, but %s implies %s", tpath, name, gs, cfg_path, ws);
                goto out;
            }
            if (t->dtype != PS_DT_F32 && t->dtype != PS_DT_F16 && t->dtype != PS_DT_BF16 && t->dtype != PS_DT_F64) {
                ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": dtype %s is not a floating-point type", tpath, name, ps_dtype_name(t->dtype));
                goto out;
            }
            if (c->dtype[0] && strcmp(c->dtype, ps_dtype_torch_name(t->dtype)) != 0) {
                ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": dtype %s (%s) in the file, but %s says dtype \"%s\"", tpath, name,
                        ps_dtype_name(t->dtype), ps_dtype_torch_name(t->dtype), cfg_path, c->dtype);
                goto out;
            }
            if (first_dtype < 0) first_dtype = (int)t->dtype;
            else if ((int)t->dtype != first_dtype) mixed = 1;
            found[(size_t)i * (size_t)L + (size_t)l] = t;
            used[t - st.tensors] = 1;
        }
    }
    for (int64_t i = 0; i < st.n_tensors; i++)
        if (!used[i] && !ignorable(st.tensors[i].name)) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": not part of a %s model as %s describes it", st.files[st.tensors[i].file].path,
                    st.tensors[i].name, c->arch == PS_ARCH_GPT2 ? "GPT-2" : c->arch == PS_ARCH_LLAMA ? "Llama" : "GPT-NeoX", cfg_path);
            goto out;
        }
    snprintf(m->file_dtype, sizeof m->file_dtype, "%s", mixed ? "mixed" : ps_dtype_torch_name((ps_dtype)first_dtype));

    // Resident or streamed: resident fp32 unless it would take more than half the machine's memory.
    size_t all_floats = 0;
    for (int i = 0; i < n_specs; i++)
        if (specs[i].op != OP_ALIAS) all_floats += (size_t)specs[i].rows * (size_t)specs[i].cols * (size_t)(specs[i].layered ? L : 1);
    int streamed = mode == PS_WEIGHTS_STREAMED;
    if (mode == PS_WEIGHTS_AUTO) streamed = physical_ram() && all_floats * sizeof(float) > physical_ram() / 2;

    // One block; every slot starts on a 64-byte boundary.
    size_t total = 0;
    for (int i = 0; i < n_specs; i++) {
        if (specs[i].op == OP_ALIAS || (streamed && streamable(&specs[i]))) continue;
        size_t per = (size_t)specs[i].rows * (size_t)specs[i].cols * (size_t)(specs[i].layered ? L : 1);
        total += (per + 15) & ~(size_t)15;
    }
    if (total > SIZE_MAX / sizeof(float) - 64) { ps_fail(e, PS_EXIT_RUNTIME, "%s: model too large", cfg_path); goto out; }
    m->memory = weights_alloc(total * sizeof(float));
    if (!m->memory) {
        ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory allocating %.2f GiB of fp32 weights", dir, (double)total * 4 / (1u << 30));
        goto out;
    }
    m->n_floats = total;
    size_t off = 0;
    for (int i = 0; i < n_specs; i++) {
        if (specs[i].op == OP_ALIAS) continue;
        if (streamed && streamable(&specs[i])) { *specs[i].slot = NULL; continue; }
        *specs[i].slot = m->memory + off;
        size_t per = (size_t)specs[i].rows * (size_t)specs[i].cols * (size_t)(specs[i].layered ? L : 1);
        if (specs[i].op == OP_ZERO) memset(*specs[i].slot, 0, per * sizeof(float));
        off += (per + 15) & ~(size_t)15;
    }
    for (int i = 0; i < n_specs; i++)
        if (specs[i].op == OP_ALIAS) *specs[i].slot = *specs[i].alias_of;

    // Pass 2: convert. The transpose buffer holds a block of 64 file rows at most.
    int64_t tmp_len = 64 * (max_rows_T ? max_rows_T : 1);
    tmp = malloc((size_t)tmp_len * sizeof(float));
    if (!tmp) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir); goto out; }
    for (int i = 0; i < n_specs; i++) {
        const tspec *s = &specs[i];
        if (s->op == OP_ZERO || s->op == OP_ALIAS || (streamed && streamable(s))) continue;
        int64_t per = s->rows * s->cols;
        for (int64_t l = 0; l < (s->layered ? L : 1); l++)
            if (convert(s, found[(size_t)i * (size_t)L + (size_t)l], *s->slot + l * per, tmp, tmp_len, e) != 0) goto out;
    }
    // weights_sha256 stays empty: `run` hashes every weights file through its cache (a 13.5 GB checkpoint, once).
    if (streamed) {
        // Keep the mapping, the table and the tensors found; one buffer holds a layer of every streamed matrix.
        ps_weight_stream *ws = calloc(1, sizeof *ws);
        if (!ws) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir); goto out; }
        ws->kept = calloc((size_t)(L ? L : 1), sizeof *ws->kept);
        ws->seen = calloc((size_t)(L ? L : 1), 1);
        if (!ws->kept || !ws->seen) { free(ws->kept); free(ws->seen); free(ws); ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir); goto out; }
        for (int i = 0; i < n_specs; i++)
            if (streamable(&specs[i])) {
                ws->slot_off[i] = ws->layer_floats;
                ws->layer_floats += ((size_t)specs[i].rows * (size_t)specs[i].cols + 15) & ~(size_t)15;
            }
        if (!ws->layer_floats) ws->layer_floats = 16;
        ws->scratch_layer = -1;
        // Default: converted layers are kept in what is left of half the RAM after the resident weights, and
        // no more than leaves the mapped checkpoint room in the page cache beside them within 3/4 of the RAM:
        // a Llama-2-7B-shaped run on 24 GB kept 14 layers (10.8 GB) under half the RAM, and the checkpoint's
        // pages were then read from disk again on every pass (compute 28-35 s; with none kept 19 s).
        size_t ram = physical_ram(), resident = m->n_floats * sizeof(float), file = 0;
        for (int f = 0; f < st.n_files; f++) file += st.files[f].map_len;
        const size_t half = ram / 2, room = ram / 4 * 3;
        ws->budget = half > resident ? half - resident : 0;
        if (ws->budget > 0 && room < resident + file + ws->budget) ws->budget = room > resident + file ? room - resident - file : 0;
        // The scratch buffer, faulted in now: fresh pages cost the kernel's zeroing (on this project's VMs ~1 s
        // for a 7B layer's 810 MB, a tenth of its whole compute), which belongs to loading, as resident weights'
        // pages do. Zeroed by both threads. Allocated even when the budget would keep every layer: a pass that
        // no later pass follows (ps_model_stream_expect) converts into it.
        const size_t lbytes = ws->layer_floats * sizeof(float);
        {
            ws->scratch = weights_alloc(lbytes);
            if (!ws->scratch) {
                free(ws->kept); free(ws->seen); free(ws);
                ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory for a layer buffer (%.1f MiB)", dir, (double)lbytes / 1048576.0);
                goto out;
            }
            const int64_t n2 = (int64_t)((lbytes + ((size_t)2 << 20) - 1) >> 21); // 2 MiB pieces
#pragma omp parallel for schedule(static)
            for (int64_t k = 0; k < n2; k++) {
                const size_t a = (size_t)k << 21, b = a + ((size_t)2 << 20) < lbytes ? a + ((size_t)2 << 20) : lbytes;
                memset((char *)ws->scratch + a, 0, b - a);
            }
        }
        ws->st = st;
        memset(&st, 0, sizeof st);
        memcpy(ws->specs, specs, sizeof specs);
        ws->n_specs = n_specs;
        ws->found = found;
        found = NULL;
        ws->tmp = tmp;
        ws->tmp_len = tmp_len;
        tmp = NULL;
        float **fields[] = {&m->w.w_q, &m->w.w_k, &m->w.w_v, &m->w.w_o, &m->w.w_in, &m->w.w_up, &m->w.w_out};
        for (int k = 0; k < 7; k++) {
            ws->which[k] = -1;
            for (int i = 0; i < n_specs; i++)
                if (specs[i].slot == fields[k] && streamable(&specs[i])) ws->which[k] = i;
        }
        m->stream = ws;
    }
    rc = 0;
out:
    free(tmp);
    free(found);
    free(used);
    free(cfg_path);
    free(single);
    free(index);
    ps_safetensors_free(&st);
    if (rc != 0) ps_model_free(m);
    return rc;
}

// madvise over the file pages of layer l's streamed tensors (whole pages inside each tensor); only advice.
static void advise_layer(const ps_weight_stream *ws, int64_t L, int64_t l, int advice) {
    const long pg = sysconf(_SC_PAGE_SIZE);
    for (int i = 0; pg > 0 && i < ws->n_specs; i++) {
        if (!streamable(&ws->specs[i])) continue;
        const ps_tensor *t = ws->found[(size_t)i * (size_t)L + (size_t)l];
        uintptr_t lo = ((uintptr_t)t->data + (uintptr_t)pg - 1) / (uintptr_t)pg * (uintptr_t)pg;
        uintptr_t hi = ((uintptr_t)t->data + t->nbytes) / (uintptr_t)pg * (uintptr_t)pg;
        if (hi > lo) (void)madvise((void *)lo, hi - lo, advice); // a failure changes nothing
    }
}

int ps_model_layer(const ps_model *m, int64_t l, ps_layer_weights *lw, ps_error *e) {
    const ps_model_config *c = &m->cfg;
    const ps_weights *w = &m->w;
    const int64_t C = c->d_model, M = c->d_mlp, QD = c->n_heads * c->d_head, KD = c->n_kv_heads * c->d_head;
    ps_weight_stream *ws = m->stream;
    if (!ws) {
        lw->w_q = w->w_q + l * C * QD;
        lw->w_k = w->w_k + l * C * KD;
        lw->w_v = w->w_v + l * C * KD;
        lw->w_o = w->w_o + l * QD * C;
        lw->w_in = w->w_in + l * C * M;
        lw->w_up = w->w_up ? w->w_up + l * C * M : NULL;
        lw->w_out = w->w_out + l * M * C;
        return 0;
    }
    float *base;
    if (ws->kept[l]) base = ws->kept[l], ws->hits++;
    else if (ws->scratch_layer == l) base = ws->scratch, ws->hits++;
    else {
        // Keep the layer if it is one of the last budget / layer-size layers, else convert it into the scratch
        // buffer. Kept layers are never evicted: the forward walks the layers in a cycle, which an LRU smaller
        // than the model would miss on every call, whereas a fixed set of kept layers hits on each of them every
        // pass. The last ones, because every row runs from its start layer to the end: a patch at layer l
        // visits the layers from l on, so a late layer is visited at least as often as any earlier one.
        const size_t bytes = ws->layer_floats * sizeof(float);
        // Lazy (nothing is known to ask for the layer again, e.g. a chunk's single fused pass): a first conversion
        // goes to the scratch buffer, which is faulted in once; keeping it would only pay for fresh pages
        // (zeroed by the kernel: 28% of a Llama-2-7B-shaped single-pass run's samples).
        const int64_t keepable = bytes ? (int64_t)(ws->budget / bytes) : 0;
        const int want_keep = l >= c->n_layers - keepable && ws->kept_bytes + bytes <= ws->budget && (!ws->lazy || ws->seen[l]);
        float *dst = want_keep ? weights_alloc(bytes) : NULL;
        const int keep = dst != NULL; // a refused allocation only means the layer is not kept
        if (!keep) {
            if (!ws->scratch && !(ws->scratch = weights_alloc(bytes)))
                return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory for a layer buffer (%.1f MiB)", m->dir, (double)bytes / 1048576.0);
            dst = ws->scratch;
            ws->scratch_layer = -1;
        }
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int i = 0; i < ws->n_specs; i++) {
            if (!streamable(&ws->specs[i])) continue;
            if (convert(&ws->specs[i], ws->found[(size_t)i * (size_t)c->n_layers + (size_t)l], dst + ws->slot_off[i], ws->tmp,
                        ws->tmp_len, e) != 0) {
                if (keep) free(dst);
                return -1;
            }
        }
        // The next layer's file pages, read ahead by the kernel while this layer's GEMMs run: with the
        // checkpoint not in the page cache the conversion otherwise waits for the disk (0.87 s a Llama-2-7B layer).
        if (l + 1 < c->n_layers && !ws->kept[l + 1]) advise_layer(ws, c->n_layers, l + 1, MADV_WILLNEED);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ws->convert_seconds += (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
        ws->conversions++;
        ws->seen[l] = 1;
        if (keep) {
            ws->kept[l] = dst;
            ws->kept_bytes += bytes;
            // The file's pages of a kept layer are not read again: let them leave this process's resident memory.
            advise_layer(ws, c->n_layers, l, MADV_DONTNEED);
        } else {
            ws->scratch_layer = l;
        }
        base = dst;
    }
    const float **outs[] = {&lw->w_q, &lw->w_k, &lw->w_v, &lw->w_o, &lw->w_in, &lw->w_up, &lw->w_out};
    for (int k = 0; k < 7; k++) *outs[k] = ws->which[k] >= 0 ? base + ws->slot_off[ws->which[k]] : NULL;
    return 0;
}

static void drop_kept(ps_weight_stream *ws, int64_t L) {
    for (int64_t l = 0; l < L; l++) {
        free(ws->kept[l]);
        ws->kept[l] = NULL;
    }
    ws->kept_bytes = 0;
}

void ps_model_set_weights_cache(ps_model *m, size_t bytes) {
    if (!m->stream) return;
    drop_kept(m->stream, m->cfg.n_layers);
    m->stream->scratch_layer = -1; // converted again, and kept if the new budget allows
    memset(m->stream->seen, 0, (size_t)(m->cfg.n_layers ? m->cfg.n_layers : 1)); // no layer asked for again yet
    m->stream->budget = bytes;
}

void ps_model_stream_expect(const ps_model *m, int again) {
    if (m->stream) m->stream->lazy = !again;
}

int ps_model_stream_info(const ps_model *m, ps_stream_info *info) {
    memset(info, 0, sizeof *info);
    const ps_weight_stream *ws = m->stream;
    if (!ws) return 0;
    info->layer_bytes = ws->layer_floats * sizeof(float);
    info->budget = ws->budget;
    info->kept_bytes = ws->kept_bytes;
    int64_t fit = (int64_t)(ws->budget / info->layer_bytes);
    info->layers_kept = fit < m->cfg.n_layers ? fit : m->cfg.n_layers;
    for (int i = 0; i < ws->n_specs; i++)
        if (streamable(&ws->specs[i])) info->file_bytes_per_layer += ws->found[(size_t)i * (size_t)m->cfg.n_layers]->nbytes;
    info->conversions = ws->conversions;
    info->hits = ws->hits;
    info->convert_seconds = ws->convert_seconds;
    return 1;
}

void ps_model_free(ps_model *m) {
    if (!m) return;
    if (m->stream) {
        ps_weight_stream *ws = m->stream;
        ps_safetensors_free(&ws->st);
        free(ws->found);
        if (ws->kept) drop_kept(ws, m->cfg.n_layers);
        free(ws->kept);
        free(ws->seen);
        free(ws->scratch);
        free(ws->tmp);
        free(ws);
    }
    free(m->memory);
    free(m->dir);
    memset(m, 0, sizeof *m);
}
