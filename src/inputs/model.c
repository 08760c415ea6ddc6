// Loading a GPT-2 or Llama checkpoint: config.json -> ps_model_config, then one table of tensor specs
// that sizes the single fp32 weight block and says how each safetensors tensor lands in it.
#include "ps_model.h"
#include "ps_json.h"
#include "ps_safetensors.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>

// ---- config.json ----

// A key whose value is JSON null counts as absent (HF writes "n_inner": null, "head_dim": null).
static const cJSON *field(const cJSON *root, const char *key) {
    const cJSON *j = cJSON_GetObjectItemCaseSensitive(root, key);
    return j && !cJSON_IsNull(j) ? j : NULL;
}

static int bad_value(const char *path, const char *key, const cJSON *j, const char *want, ps_error *e) {
    char *txt = cJSON_PrintUnformatted(j);
    int r = ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: expected %s, got %.60s", path, key, want, txt ? txt : "?");
    free(txt);
    return r;
}

static int json_int(const cJSON *j, int64_t *v) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(fabs(d) <= 9007199254740992.0) || d != floor(d)) return -1;
    *v = (int64_t)d;
    return 0;
}

// The largest value each size may take: far above any released model, low enough that a typo (n_layer: 1e9) is
// refused here instead of by an allocation much later.
static int64_t size_limit(const char *key, const char **why) {
    static const struct { const char *key; int64_t max; const char *why; } limits[] = {
        {"n_layer", 4096, "layers"}, {"num_hidden_layers", 4096, "layers"},
        {"n_head", 4096, "heads"}, {"num_attention_heads", 4096, "heads"}, {"num_key_value_heads", 4096, "heads"},
        {"n_embd", 1 << 18, "the residual width"}, {"hidden_size", 1 << 18, "the residual width"},
        {"head_dim", 1 << 16, "a head's width"},
        {"n_inner", 1 << 22, "the MLP width"}, {"intermediate_size", 1 << 22, "the MLP width"},
        {"vocab_size", 1 << 24, "token ids (the tokenizer's limit)"},
    };
    for (size_t k = 0; k < sizeof limits / sizeof limits[0]; k++)
        if (!strcmp(limits[k].key, key)) { *why = limits[k].why; return limits[k].max; }
    *why = NULL;
    return INT32_MAX;
}

// Sizes: a positive integer below 2^31 (and size_limit), so products of three stay far from int64 overflow.
static int get_size(const cJSON *root, const char *path, const char *key, int required, int64_t dflt, int64_t *out, ps_error *e) {
    const cJSON *j = field(root, key);
    if (!j) {
        if (required) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: missing (required)", path, key);
        *out = dflt;
        return 0;
    }
    int64_t v;
    if (json_int(j, &v) != 0 || v < 1 || v > INT32_MAX) return bad_value(path, key, j, "a positive integer", e);
    const char *why;
    int64_t max = size_limit(key, &why);
    if (v > max)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: %lld is more than %lld (%s; no real model comes near)", path, key,
                       (long long)v, (long long)max, why);
    *out = v;
    return 0;
}

static int get_pos_float(const cJSON *root, const char *path, const char *key, double dflt, double *out, ps_error *e) {
    const cJSON *j = field(root, key);
    if (!j) { *out = dflt; return 0; }
    // Stored as a float: values a float cannot hold (1e-50 -> 0, 1e39 -> inf) would silently change the model.
    if (!cJSON_IsNumber(j) || !(j->valuedouble >= FLT_MIN && j->valuedouble <= FLT_MAX))
        return bad_value(path, key, j, "a positive number in float range", e);
    *out = j->valuedouble;
    return 0;
}

static int get_bool(const cJSON *root, const char *path, const char *key, int dflt, int *out, ps_error *e) {
    const cJSON *j = field(root, key);
    if (!j) { *out = dflt; return 0; }
    if (!cJSON_IsBool(j)) return bad_value(path, key, j, "true or false", e);
    *out = cJSON_IsTrue(j);
    return 0;
}

// bos/eos: an integer, null, or a list (Llama 3 lists several eos ids; the first is the canonical one).
static int get_token_id(const cJSON *root, const char *path, const char *key, int64_t vocab, int64_t *out, ps_error *e) {
    const cJSON *j = field(root, key);
    *out = -1;
    if (!j) return 0;
    const cJSON *v = cJSON_IsArray(j) ? j->child : j;
    if (!v) return 0;
    int64_t id;
    if (json_int(v, &id) != 0) return bad_value(path, key, j, "an integer token id, a list of them, or null", e);
    // Random tiny models keep GPT-2's 50256 with a 20-token vocabulary; HF only warns, so do we: unknown.
    *out = id >= 0 && id < vocab ? id : -1;
    return 0;
}

static int has_architecture(const cJSON *root, const char *name) {
    const cJSON *a = field(root, "architectures");
    if (!cJSON_IsArray(a)) return 0;
    for (const cJSON *it = a->child; it; it = it->next)
        if (cJSON_IsString(it) && strcmp(it->valuestring, name) == 0) return 1;
    return 0;
}

// Rope variants (linear, dynamic, yarn, llama3) change the computation; refuse them rather than run them wrong.
static int check_rope_type(const cJSON *obj, const char *path, const char *key, ps_error *e) {
    if (!obj) return 0;
    if (!cJSON_IsObject(obj)) return bad_value(path, key, obj, "an object or null", e);
    const cJSON *t = field(obj, "rope_type");
    if (!t) t = field(obj, "type");
    if (t && !(cJSON_IsString(t) && strcmp(t->valuestring, "default") == 0)) {
        char *txt = cJSON_PrintUnformatted(t);
        int r = ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.rope_type: %s is not supported (only \"default\" rotary embeddings)", path, key, txt ? txt : "?");
        free(txt);
        return r;
    }
    return 0;
}

static int load_gpt2(ps_model_config *c, const cJSON *r, const char *p, ps_error *e) {
    int64_t n_pos;
    if (get_size(r, p, "n_layer", 1, 0, &c->n_layers, e) || get_size(r, p, "n_head", 1, 0, &c->n_heads, e) ||
        get_size(r, p, "n_embd", 1, 0, &c->d_model, e) || get_size(r, p, "vocab_size", 1, 0, &c->d_vocab, e))
        return -1;
    if (field(r, "n_positions")) {
        if (get_size(r, p, "n_positions", 1, 0, &n_pos, e)) return -1;
    } else if (field(r, "n_ctx")) {
        if (get_size(r, p, "n_ctx", 1, 0, &n_pos, e)) return -1;
    } else {
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: n_positions: missing (required; n_ctx is accepted too)", p);
    }
    c->n_ctx = n_pos;
    if (c->d_model % c->n_heads != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: n_embd: %lld is not divisible by n_head (%lld)", p, (long long)c->d_model, (long long)c->n_heads);
    c->n_kv_heads = c->n_heads;
    c->d_head = c->d_model / c->n_heads;
    if (get_size(r, p, "n_inner", 0, 4 * c->d_model, &c->d_mlp, e)) return -1;
    double eps = 0;
    if (get_pos_float(r, p, "layer_norm_epsilon", 1e-5, &eps, e)) return -1;
    c->eps = (float)eps;
    const cJSON *act = field(r, "activation_function");
    if (!act) c->act = PS_ACT_GELU_NEW;
    else if (!cJSON_IsString(act)) return bad_value(p, "activation_function", act, "a string", e);
    else if (!strcmp(act->valuestring, "gelu_new") || !strcmp(act->valuestring, "gelu_pytorch_tanh")) c->act = PS_ACT_GELU_NEW;
    else if (!strcmp(act->valuestring, "gelu")) c->act = PS_ACT_GELU;
    else if (!strcmp(act->valuestring, "relu")) c->act = PS_ACT_RELU;
    else
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: activation_function: \"%s\" is not supported (gelu_new, gelu_pytorch_tanh, gelu, relu)", p,
                       act->valuestring);
    int b;
    if (get_bool(r, p, "scale_attn_weights", 1, &b, e)) return -1;
    if (!b) return ps_fail(e, PS_EXIT_BADINPUT, "%s: scale_attn_weights: false is not supported", p);
    if (get_bool(r, p, "scale_attn_by_inverse_layer_idx", 0, &b, e)) return -1;
    if (b) return ps_fail(e, PS_EXIT_BADINPUT, "%s: scale_attn_by_inverse_layer_idx: true is not supported", p);
    if (get_bool(r, p, "add_cross_attention", 0, &b, e)) return -1;
    if (b) return ps_fail(e, PS_EXIT_BADINPUT, "%s: add_cross_attention: true is not supported", p);
    if (get_bool(r, p, "tie_word_embeddings", 1, &c->tie_word_embeddings, e)) return -1;
    c->rope_theta = 0;
    return 0;
}

static int load_llama(ps_model_config *c, const cJSON *r, const char *p, ps_error *e) {
    if (get_size(r, p, "hidden_size", 1, 0, &c->d_model, e) || get_size(r, p, "num_hidden_layers", 1, 0, &c->n_layers, e) ||
        get_size(r, p, "num_attention_heads", 1, 0, &c->n_heads, e) || get_size(r, p, "intermediate_size", 1, 0, &c->d_mlp, e) ||
        get_size(r, p, "vocab_size", 1, 0, &c->d_vocab, e) || get_size(r, p, "max_position_embeddings", 1, 0, &c->n_ctx, e) ||
        get_size(r, p, "num_key_value_heads", 0, c->n_heads, &c->n_kv_heads, e))
        return -1;
    if (c->n_heads % c->n_kv_heads != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: num_key_value_heads: %lld does not divide num_attention_heads (%lld)", p,
                       (long long)c->n_kv_heads, (long long)c->n_heads);
    if (field(r, "head_dim")) {
        if (get_size(r, p, "head_dim", 1, 0, &c->d_head, e)) return -1;
    } else {
        if (c->d_model % c->n_heads != 0)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: hidden_size: %lld is not divisible by num_attention_heads (%lld) and head_dim is not given", p,
                           (long long)c->d_model, (long long)c->n_heads);
        c->d_head = c->d_model / c->n_heads;
    }
    // Within its window sliding-window attention equals full causal attention, so cap the context there.
    const cJSON *sw = field(r, "sliding_window");
    if (sw) {
        int64_t w;
        if (json_int(sw, &w) != 0 || w < 1) return bad_value(p, "sliding_window", sw, "a positive integer or null", e);
        if (w < c->n_ctx) c->n_ctx = w;
    }
    double eps, theta = 10000.0;
    if (get_pos_float(r, p, "rms_norm_eps", 1e-6, &eps, e)) return -1;
    c->eps = (float)eps;
    const cJSON *rp = field(r, "rope_parameters");  // transformers >= 5 keeps rope_theta in here
    if (check_rope_type(rp, p, "rope_parameters", e) || check_rope_type(field(r, "rope_scaling"), p, "rope_scaling", e)) return -1;
    if (field(r, "rope_theta")) {
        if (get_pos_float(r, p, "rope_theta", 10000.0, &theta, e)) return -1;
    } else if (rp && field(rp, "rope_theta")) {
        const cJSON *t = field(rp, "rope_theta");
        if (!cJSON_IsNumber(t) || !(t->valuedouble >= FLT_MIN && t->valuedouble <= FLT_MAX))
            return bad_value(p, "rope_parameters.rope_theta", t, "a positive number in float range", e);
        theta = t->valuedouble;
    }
    c->rope_theta = (float)theta;
    const cJSON *act = field(r, "hidden_act");
    if (act && !cJSON_IsString(act)) return bad_value(p, "hidden_act", act, "a string", e);
    if (act && strcmp(act->valuestring, "silu") != 0 && strcmp(act->valuestring, "swish") != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: hidden_act: \"%s\" is not supported (silu)", p, act->valuestring);
    c->act = PS_ACT_SILU;
    int b;
    if (get_bool(r, p, "attention_bias", 0, &b, e)) return -1;
    if (b) return ps_fail(e, PS_EXIT_BADINPUT, "%s: attention_bias: true is not supported", p);
    if (get_bool(r, p, "mlp_bias", 0, &b, e)) return -1;
    if (b) return ps_fail(e, PS_EXIT_BADINPUT, "%s: mlp_bias: true is not supported", p);
    if (get_bool(r, p, "tie_word_embeddings", 0, &c->tie_word_embeddings, e)) return -1;
    return 0;
}

int ps_model_config_load(ps_model_config *cfg, const char *path, ps_error *e) {
    memset(cfg, 0, sizeof *cfg);
    cfg->bos_id = cfg->eos_id = -1;
    cJSON *root = ps_json_parse_file(path, e);
    if (!root) return -1;
    int rc = -1;
    if (!cJSON_IsObject(root)) { ps_fail(e, PS_EXIT_BADINPUT, "%s: top level must be a JSON object", path); goto out; }

    const cJSON *mt = field(root, "model_type");
    if (mt && !cJSON_IsString(mt)) { bad_value(path, "model_type", mt, "a string", e); goto out; }
    if (mt && strcmp(mt->valuestring, "gpt2") == 0) cfg->arch = PS_ARCH_GPT2;
    else if (mt && (strcmp(mt->valuestring, "llama") == 0 || strcmp(mt->valuestring, "mistral") == 0)) cfg->arch = PS_ARCH_LLAMA;
    else if (mt) {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: model_type: \"%s\" is not supported (gpt2, llama, mistral)", path, mt->valuestring);
        goto out;
    } else if (has_architecture(root, "GPT2LMHeadModel")) cfg->arch = PS_ARCH_GPT2;
    else if (has_architecture(root, "LlamaForCausalLM") || has_architecture(root, "MistralForCausalLM")) cfg->arch = PS_ARCH_LLAMA;
    else {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: model_type: missing, and architectures names no supported model (GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM)", path);
        goto out;
    }
    if ((cfg->arch == PS_ARCH_GPT2 ? load_gpt2 : load_llama)(cfg, root, path, e) != 0) goto out;
    if (get_token_id(root, path, "bos_token_id", cfg->d_vocab, &cfg->bos_id, e) ||
        get_token_id(root, path, "eos_token_id", cfg->d_vocab, &cfg->eos_id, e))
        goto out;
    const cJSON *dt = field(root, "dtype");  // transformers 5; older versions wrote torch_dtype
    if (!dt) dt = field(root, "torch_dtype");
    if (cJSON_IsString(dt) && (!strcmp(dt->valuestring, "float32") || !strcmp(dt->valuestring, "float16") ||
                               !strcmp(dt->valuestring, "bfloat16") || !strcmp(dt->valuestring, "float64")))
        snprintf(cfg->dtype, sizeof cfg->dtype, "%s", dt->valuestring);
    rc = 0;
out:
    cJSON_Delete(root);
    return rc;
}

// ---- the tensor-spec table ----

typedef enum {
    OP_COPY,    // file tensor has the destination's shape
    OP_T,       // HF Linear (out, in) -> (in, out)
    OP_SPLIT3,  // GPT-2 c_attn: columns [part*cols, (part+1)*cols) of a (rows, 3*cols) tensor
    OP_ZERO,    // no file tensor (b_u)
    OP_ALIAS,   // shares another slot's memory (tied unembedding)
} spec_op;

typedef struct {
    float **slot;
    const char *pattern;  // tensor name after the prefix; "%d" stands for the layer
    int top;              // name lives outside the "transformer."/"model." prefix (lm_head)
    int layered;          // one file tensor per layer, stacked along the slot's first axis
    spec_op op;
    int part;             // OP_SPLIT3's third
    int vec;              // destination per layer is 1-D (rows == 1)
    int64_t rows, cols;   // destination matrix per layer
    float **alias_of;     // OP_ALIAS
} tspec;

#define MAX_SPECS 32

static int build_specs(ps_model *m, int tied, tspec *s) {
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
        MAT(&w->w_u, "lm_head.weight", 0, OP_COPY, 0, V, C);
        s[n - 1].top = 1;
    }
    if (c->arch == PS_ARCH_GPT2) VEC(&w->b_u, NULL, 0, OP_ZERO, 0, V);
#undef MAT
#undef VEC
    return n;
}

// The shape the file tensor must have for spec s.
static int file_shape(const tspec *s, int64_t *shape) {
    int64_t cols = s->op == OP_SPLIT3 ? 3 * s->cols : s->cols;
    if (s->vec) { shape[0] = cols; return 1; }
    if (s->op == OP_T) { shape[0] = s->cols; shape[1] = s->rows; }
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

// Buffers that checkpoints carry but that are no weights (GPT-2's causal mask, old Llama rotary caches).
static int ignorable(const char *name) {
    static const char *suffixes[] = {".attn.bias", ".attn.masked_bias", ".rotary_emb.inv_freq"};
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
    case OP_T: {
        // The file holds Cc rows of R; convert a block of them at a time and scatter into columns.
        int64_t blk = tmp_len / R;
        for (int64_t o0 = 0; o0 < Cc; o0 += blk) {
            int64_t nb = Cc - o0 < blk ? Cc - o0 : blk;
            if (ps_tensor_to_f32_range(t, o0 * R, nb * R, tmp, e)) return -1;
            for (int64_t i = 0; i < R; i++) {
                float *d = dst + i * Cc + o0;
                for (int64_t o = 0; o < nb; o++) d[o] = tmp[o * R + i];
            }
        }
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
    float *buf;               // one layer of every streamed matrix
    float *tmp; int64_t tmp_len;
    int64_t loaded;           // layer now in buf; -1 none
    float *slot_buf[MAX_SPECS];
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
    else prefix = ps_safetensors_find(&st, "model.embed_tokens.weight") || !ps_safetensors_find(&st, "embed_tokens.weight") ? "model." : "";

    used = calloc((size_t)(st.n_tensors ? st.n_tensors : 1), 1);
    if (!used) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir); goto out; }

    // Tied unembedding: HF ignores lm_head.weight when tie_word_embeddings is set, so a differing one is an error, not a choice.
    char name[512];
    snprintf(name, sizeof name, "%s%s", prefix, c->arch == PS_ARCH_GPT2 ? "wte.weight" : "embed_tokens.weight");
    const ps_tensor *emb = ps_safetensors_find(&st, name), *head = ps_safetensors_find(&st, "lm_head.weight");
    int tied = c->tie_word_embeddings;
    if (tied && head) {
        if (emb && !same_bytes(head, emb)) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"lm_head.weight\": differs from \"%s\" but %s sets tie_word_embeddings (HF would ignore it)",
                    st.files[head->file].path, name, cfg_path);
            goto out;
        }
        used[head - st.tensors] = 1;
    }
    int n_specs = build_specs(m, tied, specs);

    // Pass 1: every tensor present with the shape config.json implies and a float dtype, before allocating anything.
    found = calloc((size_t)n_specs * (size_t)L, sizeof *found);
    if (!found) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir); goto out; }
    int first_dtype = -1, mixed = 0;
    int64_t max_rows_T = 0;
    for (int i = 0; i < n_specs; i++) {
        const tspec *s = &specs[i];
        if (s->op == OP_ZERO || s->op == OP_ALIAS) continue;
        if (s->op == OP_T && s->rows > max_rows_T) max_rows_T = s->rows;
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
                    st.tensors[i].name, c->arch == PS_ARCH_GPT2 ? "GPT-2" : "Llama", cfg_path);
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
    m->memory = aligned_alloc(64, total * sizeof(float));
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
        size_t per_layer = 0;
        for (int i = 0; i < n_specs; i++)
            if (streamable(&specs[i])) per_layer += ((size_t)specs[i].rows * (size_t)specs[i].cols + 15) & ~(size_t)15;
        ws->buf = aligned_alloc(64, (per_layer ? per_layer : 16) * sizeof(float));
        if (!ws->buf) { free(ws); ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory for a layer buffer", dir); goto out; }
        size_t at = 0;
        for (int i = 0; i < n_specs; i++)
            if (streamable(&specs[i])) {
                ws->slot_buf[i] = ws->buf + at;
                at += ((size_t)specs[i].rows * (size_t)specs[i].cols + 15) & ~(size_t)15;
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
        ws->loaded = -1;
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
    if (ws->loaded != l) {
        ws->loaded = -1;
        for (int i = 0; i < ws->n_specs; i++) {
            const tspec *s = &ws->specs[i];
            if (!streamable(s)) continue;
            if (convert(s, ws->found[(size_t)i * (size_t)c->n_layers + (size_t)l], ws->slot_buf[i], ws->tmp, ws->tmp_len, e) != 0)
                return -1;
        }
        ws->loaded = l;
    }
    const float **outs[] = {&lw->w_q, &lw->w_k, &lw->w_v, &lw->w_o, &lw->w_in, &lw->w_up, &lw->w_out};
    for (int k = 0; k < 7; k++) *outs[k] = ws->which[k] >= 0 ? ws->slot_buf[ws->which[k]] : NULL;
    return 0;
}

void ps_model_free(ps_model *m) {
    if (!m) return;
    if (m->stream) {
        ps_weight_stream *ws = m->stream;
        ps_safetensors_free(&ws->st);
        free(ws->found);
        free(ws->buf);
        free(ws->tmp);
        free(ws);
    }
    free(m->memory);
    free(m->dir);
    memset(m, 0, sizeof *m);
}
