// config.json -> ps_model_config for each architecture (GPT-2, Llama/Mistral, GPT-NeoX): every size, the
// HF defaults, and a one-line error naming the file and the field for settings the engine cannot compute.
#include "ps_model.h"
#include "ps_json.h"

#include <cjson/cJSON.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- config.json ----

const char *ps_arch_name(ps_arch a) {
    static const char *names[PS_ARCH_COUNT] = {"GPT-2", "Llama", "GPT-NeoX"};
    return (int)a >= 0 && a < PS_ARCH_COUNT ? names[a] : "?";
}

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
    c->rotary_dim = c->d_head;
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

// rotary_pct (transformers 4) or rope_parameters.partial_rotary_factor (5): the share of each head that rotates.
static int neox_rotary(ps_model_config *c, const cJSON *r, const char *p, ps_error *e) {
    const cJSON *rp = field(r, "rope_parameters");
    if (check_rope_type(rp, p, "rope_parameters", e) || check_rope_type(field(r, "rope_scaling"), p, "rope_scaling", e)) return -1;
    const char *pct_key = "rotary_pct", *base_key = "rotary_emb_base";
    const cJSON *pct = field(r, pct_key), *base = field(r, base_key);
    if (!pct && rp) { pct = field(rp, "partial_rotary_factor"); pct_key = "rope_parameters.partial_rotary_factor"; }
    if (!base && rp) { base = field(rp, "rope_theta"); base_key = "rope_parameters.rope_theta"; }
    double frac = 1.0, theta = 10000.0;
    if (pct) {
        if (!cJSON_IsNumber(pct) || !(pct->valuedouble > 0 && pct->valuedouble <= 1)) return bad_value(p, pct_key, pct, "a number in (0, 1]", e);
        frac = pct->valuedouble;
    }
    if (base) {
        if (!cJSON_IsNumber(base) || !(base->valuedouble >= FLT_MIN && base->valuedouble <= FLT_MAX))
            return bad_value(p, base_key, base, "a positive number in float range", e);
        theta = base->valuedouble;
    }
    // HF: rotary_ndims = int(head_size * rotary_pct), rotated in halves, so it must be even and not 0.
    c->rotary_dim = (int64_t)((double)c->d_head * frac);
    if (c->rotary_dim < 2 || c->rotary_dim % 2 != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: %g of a %lld-wide head gives %lld rotary dimensions (need an even number, at least 2)", p,
                       pct_key, frac, (long long)c->d_head, (long long)c->rotary_dim);
    c->rope_theta = (float)theta;
    return 0;
}

static int load_neox(ps_model_config *c, const cJSON *r, const char *p, ps_error *e) {
    if (get_size(r, p, "hidden_size", 1, 0, &c->d_model, e) || get_size(r, p, "num_hidden_layers", 1, 0, &c->n_layers, e) ||
        get_size(r, p, "num_attention_heads", 1, 0, &c->n_heads, e) || get_size(r, p, "intermediate_size", 1, 0, &c->d_mlp, e) ||
        get_size(r, p, "vocab_size", 1, 0, &c->d_vocab, e) || get_size(r, p, "max_position_embeddings", 1, 0, &c->n_ctx, e))
        return -1;
    if (c->d_model % c->n_heads != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: hidden_size: %lld is not divisible by num_attention_heads (%lld)", p, (long long)c->d_model,
                       (long long)c->n_heads);
    c->n_kv_heads = c->n_heads;
    c->d_head = c->d_model / c->n_heads;
    if (neox_rotary(c, r, p, e)) return -1;
    double eps;
    if (get_pos_float(r, p, "layer_norm_eps", 1e-5, &eps, e)) return -1;
    c->eps = (float)eps;
    const cJSON *act = field(r, "hidden_act");
    if (!act) c->act = PS_ACT_GELU;
    else if (!cJSON_IsString(act)) return bad_value(p, "hidden_act", act, "a string", e);
    else if (!strcmp(act->valuestring, "gelu")) c->act = PS_ACT_GELU;
    else if (!strcmp(act->valuestring, "gelu_new") || !strcmp(act->valuestring, "gelu_pytorch_tanh")) c->act = PS_ACT_GELU_NEW;
    else if (!strcmp(act->valuestring, "relu")) c->act = PS_ACT_RELU;
    else
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: hidden_act: \"%s\" is not supported (gelu, gelu_new, gelu_pytorch_tanh, relu)", p,
                       act->valuestring);
    if (get_bool(r, p, "use_parallel_residual", 1, &c->parallel_residual, e)) return -1;
    int b;
    if (get_bool(r, p, "attention_bias", 1, &b, e)) return -1;
    if (!b) return ps_fail(e, PS_EXIT_BADINPUT, "%s: attention_bias: false is not supported", p);
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
    else if (mt && strcmp(mt->valuestring, "gpt_neox") == 0) cfg->arch = PS_ARCH_NEOX;
    else if (mt) {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: model_type: \"%s\" is not supported (gpt2, llama, mistral, gpt_neox)", path, mt->valuestring);
        goto out;
    } else if (has_architecture(root, "GPT2LMHeadModel")) cfg->arch = PS_ARCH_GPT2;
    else if (has_architecture(root, "LlamaForCausalLM") || has_architecture(root, "MistralForCausalLM")) cfg->arch = PS_ARCH_LLAMA;
    else if (has_architecture(root, "GPTNeoXForCausalLM")) cfg->arch = PS_ARCH_NEOX;
    else {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: model_type: missing, and architectures names no supported model (GPT2LMHeadModel, LlamaForCausalLM, MistralForCausalLM, GPTNeoXForCausalLM)", path);
        goto out;
    }
    int (*load)(ps_model_config *, const cJSON *, const char *, ps_error *) =
        cfg->arch == PS_ARCH_GPT2 ? load_gpt2 : cfg->arch == PS_ARCH_LLAMA ? load_llama : load_neox;
    if (load(cfg, root, path, e) != 0) goto out;
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

