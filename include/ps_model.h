// A transformer's configuration (GPT-2, Llama, GPT-NeoX/Pythia) and its fp32 weights in the layout the
// CPU backend computes with. Weights live in one allocation whose size comes from the tensor-spec table in model.c.
#ifndef PS_MODEL_H
#define PS_MODEL_H

#include "ps_common.h"

typedef enum { PS_ARCH_GPT2 = 0, PS_ARCH_LLAMA = 1, PS_ARCH_NEOX = 2, PS_ARCH_COUNT } ps_arch;
typedef enum { PS_ACT_GELU_NEW = 0, PS_ACT_GELU = 1, PS_ACT_RELU = 2, PS_ACT_SILU = 3 } ps_act;

typedef struct {
    ps_arch arch;
    int64_t n_layers;   // L
    int64_t d_model;    // C
    int64_t n_heads;    // H
    int64_t n_kv_heads; // Hkv (== H for GPT-2)
    int64_t d_head;     // D = C / H
    int64_t d_mlp;      // M
    int64_t d_vocab;    // V
    int64_t n_ctx;      // longest sequence
    float eps;          // layer_norm_epsilon / rms_norm_eps / layer_norm_eps (GPT-NeoX)
    ps_act act;
    float rope_theta;   // Llama and GPT-NeoX (rotary_emb_base)
    int64_t rotary_dim; // dims of each head that rotate (the first ones): D for Llama, D * rotary_pct for GPT-NeoX; 0 for GPT-2
    int parallel_residual; // GPT-NeoX use_parallel_residual: x + attn(ln1(x)) + mlp(ln2(x)); no resid_mid
    int64_t bos_id, eos_id; // -1 when unknown or outside the vocabulary (HF only warns about that)
    int tie_word_embeddings; // config.json's flag (default: 1 for GPT-2, 0 for Llama and GPT-NeoX)
    char dtype[16];     // config.json's "dtype"/"torch_dtype" ("float32", ...); "" when it names none
} ps_model_config;

// All matrices are row-major with the input dimension first, so y = x @ W (x: (T, in)).
typedef struct {
    float *wte;     // (V, C) token embedding
    float *wpe;     // (n_ctx, C) learned positions, GPT-2 only
    float *ln1_w;   // (L, C)
    float *ln1_b;   // (L, C) GPT-2, GPT-NeoX
    float *w_q;     // (L, C, H*D)   head h = columns [h*D, (h+1)*D); rotary models keep HF's rotate-half order within a head
    float *w_k;     // (L, C, Hkv*D)
    float *w_v;     // (L, C, Hkv*D)
    float *b_q;     // (L, H*D)   GPT-2, GPT-NeoX
    float *b_k;     // (L, Hkv*D) GPT-2, GPT-NeoX
    float *b_v;     // (L, Hkv*D) GPT-2, GPT-NeoX
    float *w_o;     // (L, H*D, C)
    float *b_o;     // (L, C) GPT-2, GPT-NeoX
    float *ln2_w;   // (L, C)
    float *ln2_b;   // (L, C) GPT-2, GPT-NeoX
    float *w_in;    // (L, C, M) GPT-2 c_fc; Llama gate_proj; GPT-NeoX dense_h_to_4h
    float *w_up;    // (L, C, M) Llama up_proj only
    float *b_in;    // (L, M) GPT-2, GPT-NeoX
    float *w_out;   // (L, M, C)
    float *b_out;   // (L, C) GPT-2, GPT-NeoX
    float *lnf_w;   // (C)
    float *lnf_b;   // (C) GPT-2, GPT-NeoX
    float *w_u;     // (V, C) unembedding rows; == wte when tied
    float *b_u;     // (V) zeros for GPT-2 and GPT-NeoX (TransformerLens's b_U)
} ps_weights;

// One layer's matrices, (in, out) like ps_weights: either views into the resident weights or, for a
// streamed model, into a buffer converted from the mapped checkpoint when the layer is asked for.
typedef struct {
    const float *w_q, *w_k, *w_v, *w_o, *w_in, *w_up, *w_out;
} ps_layer_weights;

typedef struct ps_weight_stream ps_weight_stream; // opaque (model.c): mapped checkpoint + converted layers (owned)

typedef struct {
    ps_model_config cfg;
    ps_weights w;             // streamed: w_q, w_k, w_v, w_o, w_in, w_up, w_out are NULL; use ps_model_layer
    float *memory;            // owns every resident weight above
    size_t n_floats;
    ps_weight_stream *stream; // non-NULL when the layer matrices stay in the file (streamed)
    char *dir;                // checkpoint directory (owned)
    char weights_sha256[65];  // "" from the loader; `run` sets it (model.safetensors's, or over the index and every shard)
    char file_dtype[16];      // dtype of the checkpoint's tensors, e.g. "float32"; "mixed" when they differ
} ps_model;

// Reads dir/config.json (every size comes from it) and the safetensors weights.
// GPT-2: names with or without "transformer.", Conv1D (in, out) layout, tied unembedding.
// Llama: names with or without "model."; HF Linear (out, in) weights are transposed to (in, out).
// GPT-NeoX: "gpt_neox." names, untied embed_out; the fused query_key_value (rows per head: q, k, v) is
// split into w_q/w_k/w_v and transposed.
// Errors (missing or extra tensors, shapes or dtypes that disagree with config.json, lm_head.weight
// differing from the embedding while tie_word_embeddings is set) name the file and the tensor.
// On failure m is left zeroed; on success the caller frees it with ps_model_free.
int ps_model_load(ps_model *m, const char *dir, ps_error *e);

// How the per-layer matrices are held: resident fp32 (fast; 4 bytes a parameter), streamed (the checkpoint
// stays memory-mapped in its own dtype and one layer at a time is converted to fp32: a Llama-2-7B-shaped
// sweep measured 14.9 GiB peak RSS, which counts the mapped file's pages; of its own memory, fp32 embedding and
// unembedding 1 GB and one 0.8 GB layer buffer, instead of ~28 GB), or auto: streamed when resident fp32
// would take more than half the RAM.
// The choice is the caller's (patchsweep run --weights); nothing reads the environment.
typedef enum { PS_WEIGHTS_AUTO = 0, PS_WEIGHTS_RESIDENT = 1, PS_WEIGHTS_STREAMED = 2 } ps_weights_mode;
int ps_model_load_mode(ps_model *m, const char *dir, ps_weights_mode mode, ps_error *e);

// Layer l's matrices. Streamed models convert a layer when it is first asked for and keep the fp32 copy
// while the weights cache's byte budget allows and a later pass is expected (ps_model_stream_expect; later
// calls for it then convert nothing); any other layer goes to one scratch buffer, allocated at load. The views
// stay valid until the next call for another layer (the forward asks for layers in order). Conversion is
// exact, so a kept layer and a reconverted one hold the same bits. Not safe to call from two threads at once.
int ps_model_layer(const ps_model *m, int64_t l, ps_layer_weights *lw, ps_error *e);

// The byte budget for kept converted layers (streamed models; nothing for resident ones). Default: half the
// RAM less the resident fp32 weights. Drops the layers kept so far (the caller holds no views across it) and
// forgets which layers were converted (ps_model_stream_expect's "asked for again").
void ps_model_set_weights_cache(ps_model *m, size_t bytes);

// Whether the layers asked for from now on will be asked for again in this run (streamed models; a no-op for
// resident ones). again = 1 (the default): a layer the budget allows is kept at its first conversion. again = 0
// (the caller knows of no later pass, e.g. the engine's last chunk with the sweeps fused into the baselines'
// single pass): a first conversion goes to the scratch buffer and a layer is kept only when asked for a second
// time, so a single pass allocates no kept layer at all.
void ps_model_stream_expect(const ps_model *m, int again);

// What streaming costs: filled, and 1 returned, for a streamed model; zeroed, and 0, for a resident one.
typedef struct {
    size_t layer_bytes;          // fp32 bytes of one converted layer (its matrices)
    size_t file_bytes_per_layer; // the same matrices in the checkpoint's dtype
    size_t budget, kept_bytes;   // the weights cache's budget and what the kept layers take now
    int64_t layers_kept;         // layers the budget keeps (of n_layers)
    int64_t conversions, hits;   // layer conversions so far, and calls served without converting
    double convert_seconds;      // the time those conversions took
} ps_stream_info;
int ps_model_stream_info(const ps_model *m, ps_stream_info *info);
void ps_model_free(ps_model *m);

// "GPT-2", "Llama", "GPT-NeoX": the family as the plan, the logs and the results file name it.
const char *ps_arch_name(ps_arch a);

// Parses only config.json (used by the loader and by dry runs). Sizes are required; other fields take
// the HF defaults. Settings the engine cannot compute (rope scaling, attention/MLP biases for Llama,
// other activations) are errors naming the field rather than silently different results.
int ps_model_config_load(ps_model_config *cfg, const char *config_json_path, ps_error *e);

#endif
