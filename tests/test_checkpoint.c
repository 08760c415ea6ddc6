// Tests for the model loader: tiny GPT-2 and Llama checkpoints written at runtime (prefixes, f16, a separate
// lm_head, shards, tied and untied unembeddings), the Hugging Face tiny models, and broken checkpoints.
#include "st_fixture.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void test_gpt2(const char *prefix, const char *dtype) {
    char dname[64];
    snprintf(dname, sizeof dname, "gpt2_%s%s", prefix[0] ? "tf_" : "", dtype);
    const char *dir = stf_new_dir(dname);
    ckpt k;
    stf_gpt2_tensors(&k, prefix, dtype);
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    stf_gpt2_config(dir, NULL);

    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "gpt2 load (%s): %s", dname, e.msg);
    if (rc) { stf_ckpt_free(&k); return; }
    const ps_model_config *c = &m.cfg;
    TU_CHECK(c->arch == PS_ARCH_GPT2 && c->n_layers == G_L && c->n_heads == G_H && c->n_kv_heads == G_H && c->d_model == G_C &&
                 c->d_head == G_C / G_H && c->d_mlp == G_M && c->d_vocab == G_V && c->n_ctx == G_P && c->act == PS_ACT_GELU_NEW &&
                 fabsf(c->eps - 1e-5f) < 1e-12f && c->bos_id == 3 && c->eos_id == -1 && c->tie_word_embeddings == 1,
             "gpt2 config fields");
    char want_dt[16];
    snprintf(want_dt, sizeof want_dt, "%s", strcmp(dtype, "F32") == 0 ? "float32" : "float16");
    TU_CHECK(strcmp(m.file_dtype, want_dt) == 0, "file_dtype %s, want %s", m.file_dtype, want_dt);
    TU_CHECK(m.weights_sha256[0] == 0, "weights_sha256 %s: hashing is the caller's (through its cache)", m.weights_sha256);
    TU_CHECK(m.dir && strcmp(m.dir, dir) == 0, "m.dir");

    char nm[160];
#define SRC(fmt, ...) (snprintf(nm, sizeof nm, "%s" fmt, prefix, __VA_ARGS__), stf_src_of(&k, nm))
    const int C = G_C, M = G_M;
    float buf[3 * G_C * G_M];
    stf_check_slot("gpt2 wte", m.w.wte, SRC("%s", "wte.weight"), G_V * C);
    stf_check_slot("gpt2 wpe", m.w.wpe, SRC("%s", "wpe.weight"), G_P * C);
    TU_CHECK(m.w.w_u == m.w.wte, "tied: w_u must alias wte");
    float zeros[G_V] = {0};
    stf_check_slot("gpt2 b_u zeros", m.w.b_u, zeros, G_V);
    for (int l = 0; l < G_L; l++) {
        const float *ca = SRC("h.%d.attn.c_attn.weight", l);
        const float *cb = SRC("h.%d.attn.c_attn.bias", l);
        float *dst[3] = {m.w.w_q, m.w.w_k, m.w.w_v};
        float *bdst[3] = {m.w.b_q, m.w.b_k, m.w.b_v};
        const char *qkv = "qkv";
        for (int p = 0; p < 3; p++) {
            // Conv1D (in, out): q is columns [0, C), k [C, 2C), v [2C, 3C)
            for (int r = 0; r < C; r++)
                for (int j = 0; j < C; j++) buf[r * C + j] = ca[r * 3 * C + p * C + j];
            char what[64];
            snprintf(what, sizeof what, "gpt2 L%d w_%c from c_attn cols", l, qkv[p]);
            stf_check_slot(what, dst[p] ? dst[p] + (size_t)l * C * C : NULL, buf, C * C);
            snprintf(what, sizeof what, "gpt2 L%d b_%c from c_attn bias", l, qkv[p]);
            stf_check_slot(what, bdst[p] ? bdst[p] + (size_t)l * C : NULL, cb + p * C, C);
        }
        stf_check_slot("gpt2 w_o", m.w.w_o + (size_t)l * C * C, SRC("h.%d.attn.c_proj.weight", l), C * C);
        stf_check_slot("gpt2 b_o", m.w.b_o + (size_t)l * C, SRC("h.%d.attn.c_proj.bias", l), C);
        stf_check_slot("gpt2 ln1_w", m.w.ln1_w + (size_t)l * C, SRC("h.%d.ln_1.weight", l), C);
        stf_check_slot("gpt2 ln1_b", m.w.ln1_b + (size_t)l * C, SRC("h.%d.ln_1.bias", l), C);
        stf_check_slot("gpt2 ln2_w", m.w.ln2_w + (size_t)l * C, SRC("h.%d.ln_2.weight", l), C);
        stf_check_slot("gpt2 ln2_b", m.w.ln2_b + (size_t)l * C, SRC("h.%d.ln_2.bias", l), C);
        stf_check_slot("gpt2 w_in (c_fc)", m.w.w_in + (size_t)l * C * M, SRC("h.%d.mlp.c_fc.weight", l), C * M);
        stf_check_slot("gpt2 b_in", m.w.b_in + (size_t)l * M, SRC("h.%d.mlp.c_fc.bias", l), M);
        stf_check_slot("gpt2 w_out (c_proj)", m.w.w_out + (size_t)l * M * C, SRC("h.%d.mlp.c_proj.weight", l), M * C);
        stf_check_slot("gpt2 b_out", m.w.b_out + (size_t)l * C, SRC("h.%d.mlp.c_proj.bias", l), C);
    }
    stf_check_slot("gpt2 lnf_w", m.w.lnf_w, SRC("%s", "ln_f.weight"), C);
    stf_check_slot("gpt2 lnf_b", m.w.lnf_b, SRC("%s", "ln_f.bias"), C);
#undef SRC
    TU_CHECK(m.w.w_up == NULL, "gpt2: w_up must stay NULL");
    ps_model_free(&m);
    stf_ckpt_free(&k);
}

// GPT-2 with an lm_head: identical bytes keep the tie; untied config gets its own copy.
static void test_gpt2_lm_head(void) {
    const char *dir = stf_new_dir("gpt2_head");
    ckpt k;
    stf_gpt2_tensors(&k, "", "F32");
    stf_add(&k, "lm_head.weight", 2, G_V, G_C);
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    stf_gpt2_config(dir, ", \"tie_word_embeddings\": false");
    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "gpt2 untied load: %s", e.msg);
    if (rc == 0) {
        TU_CHECK(m.w.w_u != m.w.wte, "untied: w_u must be its own slot");
        stf_check_slot("gpt2 untied w_u = lm_head", m.w.w_u, stf_src_of(&k, "lm_head.weight"), G_V * G_C);
        ps_model_free(&m);
    }
    // tied + a different lm_head is ambiguous
    stf_gpt2_config(dir, NULL);
    e = (ps_error){0};
    rc = ps_model_load(&m, dir, &e);
    stf_expect_fail("tied but lm_head differs", rc, &e, "lm_head.weight", "model.safetensors");
    // tied + an identical lm_head: fine, aliased
    memcpy(k.t[k.n - 1].data, k.t[0].data, k.t[0].nbytes);
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    e = (ps_error){0};
    rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "gpt2 tied with identical lm_head: %s", e.msg);
    if (rc == 0) { TU_CHECK(m.w.w_u == m.w.wte, "identical lm_head stays tied"); ps_model_free(&m); }
    stf_ckpt_free(&k);
}


static void test_llama(int tied) {
    const char *dir = stf_new_dir(tied ? "llama_tied" : "llama");
    ckpt k;
    stf_llama_tensors(&k, !tied);
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, \"num_hidden_layers\": %d,\n"
             " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, \"intermediate_size\": %d, \"vocab_size\": %d,\n"
             " \"max_position_embeddings\": %d, \"rms_norm_eps\": 1e-06, \"hidden_act\": \"silu\", \"dtype\": \"bfloat16\",\n"
             " \"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"default\"}, \"bos_token_id\": 1, \"eos_token_id\": [2, 9],\n"
             " \"tie_word_embeddings\": %s, \"attention_bias\": false, \"mlp_bias\": false, \"pad_token_id\": null}\n",
             LL_C, LL_L, LL_H, LL_KV, LL_D, LL_M, LL_V, LL_P, tied ? "true" : "false");
    stf_write_text(stf_path_in(dir, "config.json"), cfg);
    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "llama load: %s", e.msg);
    if (rc) { stf_ckpt_free(&k); return; }
    const ps_model_config *c = &m.cfg;
    TU_CHECK(c->arch == PS_ARCH_LLAMA && c->n_layers == LL_L && c->n_heads == LL_H && c->n_kv_heads == LL_KV && c->d_head == LL_D &&
                 c->d_model == LL_C && c->d_mlp == LL_M && c->d_vocab == LL_V && c->n_ctx == LL_P && c->act == PS_ACT_SILU &&
                 c->rope_theta == 500000.0f && c->bos_id == 1 && c->eos_id == 2 && c->tie_word_embeddings == tied,
             "llama config fields");
    TU_CHECK(strcmp(m.file_dtype, "bfloat16") == 0, "llama file_dtype %s", m.file_dtype);
    char nm[128];
    float buf[LL_M * LL_C];
    stf_check_slot("llama wte", m.w.wte, stf_src_of(&k, "model.embed_tokens.weight"), LL_V * LL_C);
    stf_check_slot("llama lnf_w", m.w.lnf_w, stf_src_of(&k, "model.norm.weight"), LL_C);
    if (tied) TU_CHECK(m.w.w_u == m.w.wte, "llama tied: w_u aliases wte");
    else stf_check_slot("llama w_u = lm_head (V, C)", m.w.w_u, stf_src_of(&k, "lm_head.weight"), LL_V * LL_C);
    struct { const char *name; float *slot; int64_t out, in; } lin[] = {
        {"self_attn.q_proj.weight", m.w.w_q, LL_H * LL_D, LL_C},  {"self_attn.k_proj.weight", m.w.w_k, LL_KV * LL_D, LL_C},
        {"self_attn.v_proj.weight", m.w.w_v, LL_KV * LL_D, LL_C}, {"self_attn.o_proj.weight", m.w.w_o, LL_C, LL_H * LL_D},
        {"mlp.gate_proj.weight", m.w.w_in, LL_M, LL_C},           {"mlp.up_proj.weight", m.w.w_up, LL_M, LL_C},
        {"mlp.down_proj.weight", m.w.w_out, LL_C, LL_M},
    };
    for (int l = 0; l < LL_L; l++) {
        for (size_t i = 0; i < sizeof lin / sizeof lin[0]; i++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s", l, lin[i].name);
            stf_transpose(stf_src_of(&k, nm), lin[i].out, lin[i].in, buf);
            char what[96];
            snprintf(what, sizeof what, "llama L%d %s transposed", l, lin[i].name);
            stf_check_slot(what, lin[i].slot ? lin[i].slot + (size_t)l * lin[i].out * lin[i].in : NULL, buf, lin[i].out * lin[i].in);
        }
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        stf_check_slot("llama ln1_w", m.w.ln1_w + l * LL_C, stf_src_of(&k, nm), LL_C);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        stf_check_slot("llama ln2_w", m.w.ln2_w + l * LL_C, stf_src_of(&k, nm), LL_C);
    }
    TU_CHECK(!m.w.wpe && !m.w.ln1_b && !m.w.b_q && !m.w.b_k && !m.w.b_v && !m.w.b_o && !m.w.ln2_b && !m.w.b_in && !m.w.b_out &&
                 !m.w.lnf_b && !m.w.b_u,
             "llama: GPT-2-only pointers must stay NULL");
    ps_model_free(&m);
    stf_ckpt_free(&k);
}

// bf16 Llama matrices whose sides are not multiples of 16 (40 and 52: whole 16 x 16 blocks of the conversion's
// transpose, its AVX-512 path where the CPU has one, and the rows and columns past them), resident and streamed,
// each against the file's values transposed by a plain loop.
static void test_llama_odd_shapes(void) {
    enum { OC = 40, OH = 5, OD = 8, OM = 52, OV = 10, OP = 16 };
    const char *dir = stf_new_dir("llama_odd");
    ckpt k;
    memset(&k, 0, sizeof k);
    k.dtype = "BF16";
    stf_add(&k, "model.embed_tokens.weight", 2, OV, OC);
    stf_add(&k, "model.layers.0.input_layernorm.weight", 1, OC, 0);
    stf_add(&k, "model.layers.0.self_attn.q_proj.weight", 2, OH * OD, OC);
    stf_add(&k, "model.layers.0.self_attn.k_proj.weight", 2, OH * OD, OC);
    stf_add(&k, "model.layers.0.self_attn.v_proj.weight", 2, OH * OD, OC);
    stf_add(&k, "model.layers.0.self_attn.o_proj.weight", 2, OC, OH * OD);
    stf_add(&k, "model.layers.0.post_attention_layernorm.weight", 1, OC, 0);
    stf_add(&k, "model.layers.0.mlp.gate_proj.weight", 2, OM, OC);
    stf_add(&k, "model.layers.0.mlp.up_proj.weight", 2, OM, OC);
    stf_add(&k, "model.layers.0.mlp.down_proj.weight", 2, OC, OM);
    stf_add(&k, "model.norm.weight", 1, OC, 0);
    stf_add(&k, "lm_head.weight", 2, OV, OC);
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, \"num_hidden_layers\": 1,\n"
             " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, \"intermediate_size\": %d, \"vocab_size\": %d,\n"
             " \"max_position_embeddings\": %d, \"rms_norm_eps\": 1e-06, \"hidden_act\": \"silu\", \"dtype\": \"bfloat16\",\n"
             " \"rope_theta\": 10000.0, \"bos_token_id\": 1, \"eos_token_id\": 2, \"tie_word_embeddings\": false}\n",
             OC, OH, OH, OD, OM, OV, OP);
    stf_write_text(stf_path_in(dir, "config.json"), cfg);
    static float want[OM * OC];
    for (int mode = 0; mode < 2; mode++) {
        ps_model m;
        ps_error e = {0};
        int rc = ps_model_load_mode(&m, dir, mode ? PS_WEIGHTS_STREAMED : PS_WEIGHTS_RESIDENT, &e);
        TU_CHECK(rc == 0, "llama odd shapes load (%s): %s", mode ? "streamed" : "resident", e.msg);
        if (rc) continue;
        ps_layer_weights lw;
        rc = ps_model_layer(&m, 0, &lw, &e);
        TU_CHECK(rc == 0, "llama odd shapes layer 0: %s", e.msg);
        struct { const char *name; const float *got; int64_t out, in; } lin[] = {
            {"self_attn.q_proj.weight", lw.w_q, OH * OD, OC}, {"self_attn.k_proj.weight", lw.w_k, OH * OD, OC},
            {"self_attn.v_proj.weight", lw.w_v, OH * OD, OC}, {"self_attn.o_proj.weight", lw.w_o, OC, OH * OD},
            {"mlp.gate_proj.weight", lw.w_in, OM, OC},        {"mlp.up_proj.weight", lw.w_up, OM, OC},
            {"mlp.down_proj.weight", lw.w_out, OC, OM},
        };
        for (size_t i = 0; rc == 0 && i < sizeof lin / sizeof lin[0]; i++) {
            char nm[128], what[160];
            snprintf(nm, sizeof nm, "model.layers.0.%s", lin[i].name);
            stf_transpose(stf_src_of(&k, nm), lin[i].out, lin[i].in, want);
            snprintf(what, sizeof what, "llama odd shapes %s %s (%lld x %lld) transposed", mode ? "streamed" : "resident", lin[i].name,
                     (long long)lin[i].out, (long long)lin[i].in);
            stf_check_slot(what, lin[i].got, want, lin[i].out * lin[i].in);
        }
        ps_model_free(&m);
    }
    stf_ckpt_free(&k);
}

// A GPT-2 checkpoint split into two shards; the hash is the index file's.
static void test_gpt2_sharded(void) {
    const char *dir = stf_new_dir("gpt2_sharded");
    ckpt k;
    stf_gpt2_tensors(&k, "transformer.", "F32");
    int half = k.n / 2;
    stf_write_st(stf_path_in(dir, "model-00001-of-00002.safetensors"), k.t, half, 1);
    stf_write_st(stf_path_in(dir, "model-00002-of-00002.safetensors"), k.t + half, k.n - half, 1);
    size_t cap = 16384, len = 0;
    char *idx = malloc(cap);
    len += (size_t)snprintf(idx + len, cap - len, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < k.n; i++)
        len += (size_t)snprintf(idx + len, cap - len, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "", k.t[i].name,
                                i < half ? 1 : 2);
    snprintf(idx + len, cap - len, "}}");
    stf_write_text(stf_path_in(dir, "model.safetensors.index.json"), idx);
    stf_gpt2_config(dir, NULL);
    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "sharded gpt2 load: %s", e.msg);
    if (rc == 0) {
        TU_CHECK(m.weights_sha256[0] == 0, "sharded: not hashed by the loader");
        stf_check_slot("sharded gpt2 lnf_b (2nd shard)", m.w.lnf_b, stf_src_of(&k, "transformer.ln_f.bias"), G_C);
        stf_check_slot("sharded gpt2 wte (1st shard)", m.w.wte, stf_src_of(&k, "transformer.wte.weight"), G_V * G_C);
        ps_model_free(&m);
    }
    // missing shard
    remove(stf_path_in(dir, "model-00002-of-00002.safetensors"));
    e = (ps_error){0};
    rc = ps_model_load(&m, dir, &e);
    stf_expect_fail("missing shard", rc, &e, "model-00002-of-00002.safetensors", "model.safetensors.index.json");
    // the index names a tensor that the shard lacks
    stf_write_st(stf_path_in(dir, "model-00002-of-00002.safetensors"), k.t + half, k.n - half - 1, 1);
    e = (ps_error){0};
    rc = ps_model_load(&m, dir, &e);
    stf_expect_fail("tensor missing from its shard", rc, &e, k.t[k.n - 1].name, "model-00002-of-00002.safetensors");
    free(idx);
    stf_ckpt_free(&k);
}

static void test_bad_models(void) {
    ps_error e;
    int rc;
    ckpt k;

    const char *dir = stf_new_dir("bad_gpt2_shape");
    stf_gpt2_tensors(&k, "transformer.", "F32");
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    stf_gpt2_config(dir, NULL);
    stf_write_text(stf_path_in(dir, "config.json"),
               "{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 4, \"n_positions\": 6, \"vocab_size\": 7}");
    rc = stf_try_load(dir, &e);
    stf_expect_fail("shape disagrees with config.json", rc, &e, "\"transformer.wpe.weight\": shape [5, 4]", "implies [6, 4]");
    TU_CHECK(strstr(e.msg, "model.safetensors") && strstr(e.msg, "config.json"), "shape message names both files: %s", e.msg);

    // dtype disagreeing with config.json
    stf_gpt2_config(dir, ", \"dtype\": \"float16\"");
    rc = stf_try_load(dir, &e);
    stf_expect_fail("dtype disagrees with config.json", rc, &e, "\"transformer.wte.weight\": dtype F32", "float16");
    stf_gpt2_config(dir, ", \"torch_dtype\": \"float32\"");
    TU_CHECK(stf_try_load(dir, &e) == 0, "torch_dtype float32 matches F32 tensors: %s", e.msg);

    // too few layers in the file for config.json
    stf_gpt2_config(dir, NULL);
    stf_write_text(stf_path_in(dir, "config.json"),
               "{\"model_type\": \"gpt2\", \"n_layer\": 3, \"n_head\": 2, \"n_embd\": 4, \"n_positions\": 5, \"vocab_size\": 7}");
    rc = stf_try_load(dir, &e);
    stf_expect_fail("config has more layers than file", rc, &e, "\"transformer.h.2.ln_1.weight\": missing", "model.safetensors");

    // missing tensor
    stf_gpt2_config(dir, NULL);
    stf_drop(&k, "transformer.ln_f.bias");
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    rc = stf_try_load(dir, &e);
    stf_expect_fail("missing tensor", rc, &e, "\"transformer.ln_f.bias\": missing", "model.safetensors");
    TU_CHECK(strstr(e.msg, "[4]") != NULL, "missing tensor message gives the expected shape: %s", e.msg);

    // a tensor the model would not use (a Llama bias, a typo) must not be ignored silently
    stf_add(&k, "transformer.ln_f.bias", 1, G_C, 0);
    stf_add(&k, "transformer.h.0.attn.c_attn.lora", 1, G_C, 0);
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    rc = stf_try_load(dir, &e);
    stf_expect_fail("unexpected tensor", rc, &e, "\"transformer.h.0.attn.c_attn.lora\"", "model.safetensors");
    stf_drop(&k, "transformer.h.0.attn.c_attn.lora");
    // the causal-mask buffers of old GPT-2 checkpoints are fine
    stf_add(&k, "transformer.h.0.attn.bias", 2, G_P, G_P);
    stf_add(&k, "transformer.h.0.attn.masked_bias", 1, 1, 0);
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    TU_CHECK(stf_try_load(dir, &e) == 0, "attn.bias / masked_bias buffers are ignored: %s", e.msg);

    // a non-float tensor
    k.t[0].dtype = "I32";
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    rc = stf_try_load(dir, &e);
    stf_expect_fail("integer weight tensor", rc, &e, "\"transformer.wte.weight\": dtype I32", "model.safetensors");
    k.t[0].dtype = "F32";
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);

    // config.json problems name config.json and the field
    struct { const char *json, *frag; } bad_cfg[] = {
        {"{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_head\": 2, \"n_positions\": 5, \"vocab_size\": 7}", "n_embd: missing"},
        {"{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 4, \"vocab_size\": 7}", "n_positions: missing"},
        {"{\"model_type\": \"gpt2\", \"n_layer\": 2.5, \"n_head\": 2, \"n_embd\": 4, \"n_positions\": 5, \"vocab_size\": 7}", "n_layer: expected"},
        {"{\"model_type\": \"gpt2\", \"n_layer\": -2, \"n_head\": 2, \"n_embd\": 4, \"n_positions\": 5, \"vocab_size\": 7}", "n_layer: expected"},
        {"{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_head\": 3, \"n_embd\": 4, \"n_positions\": 5, \"vocab_size\": 7}", "n_embd: 4 is not divisible"},
        {"{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 4, \"n_positions\": 5, \"vocab_size\": 7, \"activation_function\": \"swish\"}",
         "activation_function: \"swish\""},
        {"{\"model_type\": \"bert\"}", "model_type: \"bert\""},
        {"{\"n_layer\": 2}", "model_type: missing"},
        {"{\"model_type\": \"gpt2\",\n \"n_layer\": 2,, }", "line 2, column"},
        {"{\"model_type\": \"llama\", \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"intermediate_size\": 12, "
         "\"vocab_size\": 10, \"max_position_embeddings\": 16, \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0}}",
         "rope_scaling.rope_type"},
        {"{\"model_type\": \"llama\", \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"num_key_value_heads\": 3, "
         "\"intermediate_size\": 12, \"vocab_size\": 10, \"max_position_embeddings\": 16}",
         "num_key_value_heads: 3"},
        {"{\"model_type\": \"llama\", \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"vocab_size\": 10, "
         "\"max_position_embeddings\": 16}",
         "intermediate_size: missing"},
    };
    for (size_t i = 0; i < sizeof bad_cfg / sizeof bad_cfg[0]; i++) {
        stf_write_text(stf_path_in(dir, "config.json"), bad_cfg[i].json);
        rc = stf_try_load(dir, &e);
        char what[64];
        snprintf(what, sizeof what, "config.json case %zu", i);
        stf_expect_fail(what, rc, &e, "config.json: ", bad_cfg[i].frag);
    }
    remove(stf_path_in(dir, "config.json"));
    rc = stf_try_load(dir, &e);
    stf_expect_fail("no config.json", rc, &e, "config.json", NULL);
    stf_ckpt_free(&k);

    // Llama without lm_head and without tying
    dir = stf_new_dir("bad_llama_head");
    stf_llama_tensors(&k, 0);
    stf_write_st(stf_path_in(dir, "model.safetensors"), k.t, k.n, 1);
    stf_write_text(stf_path_in(dir, "config.json"),
               "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
               "\"num_key_value_heads\": 1, \"intermediate_size\": 12, \"vocab_size\": 10, \"max_position_embeddings\": 16}");
    rc = stf_try_load(dir, &e);
    stf_expect_fail("llama untied without lm_head", rc, &e, "\"lm_head.weight\": missing", "model.safetensors");
    // wrong GQA: config says 2 kv heads, file has 1
    stf_write_text(stf_path_in(dir, "config.json"),
               "{\"model_type\": \"llama\", \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
               "\"intermediate_size\": 12, \"vocab_size\": 10, \"max_position_embeddings\": 16, \"tie_word_embeddings\": true}");
    rc = stf_try_load(dir, &e);
    stf_expect_fail("llama kv heads disagree", rc, &e, "\"model.layers.0.self_attn.k_proj.weight\": shape [4, 8]", "implies [8, 8]");
    stf_ckpt_free(&k);
}

// ---- 5. checkpoints made by Hugging Face (tests/data/{gpt2,llama}-tiny-{a,b,c}, from another engineer; skipped while absent) ----

static void test_hf_tiny(const char *name, ps_arch arch) {
    char rel[128];
    snprintf(rel, sizeof rel, "tests/data/%s", name);
    const char *dir = tu_src(rel);
    struct stat sb;
    if (stat(dir, &sb) != 0) return;
    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "load %s: %s", dir, e.msg);
    if (rc) return;
    const ps_model_config *c = &m.cfg;
    TU_CHECK(c->arch == arch, "%s: arch %d", name, c->arch);
    int finite = 1;
    for (size_t i = 0; i < m.n_floats; i++) finite &= isfinite(m.memory[i]) != 0;
    TU_CHECK(finite, "%s: weights finite", name);
    TU_CHECK(m.weights_sha256[0] == 0, "%s: not hashed by the loader", name);
    // GPT-2: the last layer's v block is the last C columns of c_attn (HF Conv1D (in, out)).
    // Llama: the last layer's w_v is v_proj (out, in) transposed.
    ps_safetensors st;
    if (ps_safetensors_open(&st, dir, &e) == 0) {
        int64_t C = c->d_model, KD = c->n_kv_heads * c->d_head, l = c->n_layers - 1;
        char nm[128];
        if (arch == PS_ARCH_GPT2) snprintf(nm, sizeof nm, "transformer.h.%lld.attn.c_attn.weight", (long long)l);
        else snprintf(nm, sizeof nm, "model.layers.%lld.self_attn.v_proj.weight", (long long)l);
        const ps_tensor *t = ps_safetensors_find(&st, nm);
        if (!t && arch == PS_ARCH_GPT2) t = ps_safetensors_find(&st, nm + strlen("transformer."));
        TU_CHECK(t != NULL, "%s: %s", name, nm);
        if (t) {
            float *all = malloc((size_t)t->numel * sizeof(float)), *want = malloc((size_t)(C * KD) * sizeof(float));
            ps_tensor_to_f32(t, all, &e);
            for (int64_t r = 0; r < C; r++)
                for (int64_t j = 0; j < KD; j++) want[r * KD + j] = arch == PS_ARCH_GPT2 ? all[r * 3 * C + 2 * C + j] : all[j * C + r];
            char what[96];
            snprintf(what, sizeof what, "%s last-layer w_v %s", name, arch == PS_ARCH_GPT2 ? "= c_attn[:, 2C:3C]" : "= v_proj.T");
            tu_close(what, m.w.w_v + l * C * KD, want, C * KD, 0, 0);
            free(all);
            free(want);
        }
        ps_safetensors_free(&st);
    }
    printf("%-48s L=%lld C=%lld H=%lld Hkv=%lld V=%lld dtype=%s tied=%d floats=%zu ok\n", name, (long long)c->n_layers,
           (long long)c->d_model, (long long)c->n_heads, (long long)c->n_kv_heads, (long long)c->d_vocab, m.file_dtype,
           m.w.w_u == m.w.wte, m.n_floats);
    ps_model_free(&m);
}

// The real GPT-2 small config.json (both n_ctx and n_positions): the sizes TransformerLens uses.
static void test_gpt2_small_config(void) {
    const char *root = getenv("PS_SHARED");
    char path[1024];
    snprintf(path, sizeof path, "%s/gpt2-tokenizer/config.json", root ? root : "../shared/data");
    struct stat sb;
    if (stat(path, &sb) != 0) {
        const char *ci = getenv("CI");
        TU_CHECK(!(ci && strcmp(ci, "true") == 0), "shared data %s missing with CI=true", path);
        return;
    }
    ps_model_config c;
    ps_error e = {0};
    int rc = ps_model_config_load(&c, path, &e);
    TU_CHECK(rc == 0, "gpt2 small config: %s", e.msg);
    TU_CHECK(rc == 0 && c.arch == PS_ARCH_GPT2 && c.n_layers == 12 && c.d_model == 768 && c.n_heads == 12 && c.d_head == 64 &&
                 c.d_mlp == 3072 && c.d_vocab == 50257 && c.n_ctx == 1024 && c.act == PS_ACT_GELU_NEW && c.bos_id == 50256 &&
                 c.eos_id == 50256 && c.tie_word_embeddings,
             "gpt2 small config values");
    printf("%-48s ok\n", "gpt2 small config.json");
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(stf_tmp_root, sizeof stf_tmp_root, "%s/ps_test_ck_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(stf_tmp_root)) { perror("mkdtemp"); return 1; }

    test_gpt2("", "F32");
    test_gpt2("transformer.", "F32");
    test_gpt2("transformer.", "F16");
    test_gpt2_lm_head();
    test_gpt2_sharded();
    test_llama(0);
    test_llama(1);
    test_llama_odd_shapes();
    test_bad_models();
    test_gpt2_small_config();
    const char *abc[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++) {
        char nm[32];
        snprintf(nm, sizeof nm, "gpt2-tiny-%s", abc[i]);
        test_hf_tiny(nm, PS_ARCH_GPT2);
        snprintf(nm, sizeof nm, "llama-tiny-%s", abc[i]);
        test_hf_tiny(nm, PS_ARCH_LLAMA);
    }

    nftw(stf_tmp_root, stf_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return tu_done("checkpoint");
}
