// GPT-NeoX (Pythia) loading: the config.json keys of both transformers generations (pythia-160m's real
// transformers-4 file and the tiny models' transformers-5 ones), and the per-head split of the fused
// query_key_value into w_q/w_k/w_v checked entry by entry against the checkpoint (fp32 and fp16).
#include "golden_util.h"
#include "ps_model.h"
#include "ps_safetensors.h"
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// EleutherAI/pythia-160m's config.json as transformers 4.24 wrote it (transcribed: no Hub access here).
static const char PYTHIA_160M[] =
    "{\"architectures\": [\"GPTNeoXForCausalLM\"], \"bos_token_id\": 0, \"eos_token_id\": 0, \"hidden_act\": \"gelu\",\n"
    " \"hidden_size\": 768, \"initializer_range\": 0.02, \"intermediate_size\": 3072, \"layer_norm_eps\": 1e-05,\n"
    " \"max_position_embeddings\": 2048, \"model_type\": \"gpt_neox\", \"num_attention_heads\": 12, \"num_hidden_layers\": 12,\n"
    " \"rotary_emb_base\": 10000, \"rotary_pct\": 0.25, \"tie_word_embeddings\": false, \"torch_dtype\": \"float16\",\n"
    " \"transformers_version\": \"4.24.0\", \"use_cache\": true, \"use_parallel_residual\": true, \"vocab_size\": 50304}\n";

static void test_pythia_160m_config(void) {
    char path[1024];
    const char *base = getenv("TMPDIR");
    snprintf(path, sizeof path, "%s/ps_test_neox_%d.json", base && base[0] ? base : "/tmp", (int)getpid());
    FILE *f = fopen(path, "w");
    TU_CHECK(f != NULL, "cannot write %s", path);
    if (!f) return;
    fputs(PYTHIA_160M, f);
    fclose(f);
    ps_model_config c;
    ps_error e = {0};
    int rc = ps_model_config_load(&c, path, &e);
    remove(path);
    TU_CHECK(rc == 0, "pythia-160m config: %s", e.msg);
    TU_CHECK(rc == 0 && c.arch == PS_ARCH_NEOX && c.n_layers == 12 && c.d_model == 768 && c.n_heads == 12 && c.n_kv_heads == 12 &&
                 c.d_head == 64 && c.rotary_dim == 16 && c.rope_theta == 10000.0f && c.parallel_residual && c.d_mlp == 3072 &&
                 c.d_vocab == 50304 && c.n_ctx == 2048 && c.act == PS_ACT_GELU && c.eps == 1e-5f && c.bos_id == 0 && c.eos_id == 0 &&
                 !c.tie_word_embeddings && strcmp(c.dtype, "float16") == 0,
             "pythia-160m config values (rotary_dim %lld, parallel %d)", (long long)c.rotary_dim, c.parallel_residual);
    printf("%-48s ok\n", "pythia-160m config.json");
}

// w_q[c, h*D + d] = query_key_value.weight[(3h + part)*D + d, c] (HF Linear rows, interleaved per head), and the bias.
static void test_qkv_split(const char *name) {
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tu_src("tests/data"), name);
    ps_model m;
    ps_safetensors st = {0};
    ps_error e = {0};
    if (ps_model_load_mode(&m, dir, PS_WEIGHTS_RESIDENT, &e) != 0) { TU_CHECK(0, "%s: %s", name, e.msg); return; }
    if (ps_safetensors_open(&st, dir, &e) != 0) { TU_CHECK(0, "%s: %s", name, e.msg); ps_model_free(&m); return; }
    const ps_model_config *c = &m.cfg;
    const int64_t C = c->d_model, H = c->n_heads, D = c->d_head, QD = H * D;
    int64_t bad = 0, checked = 0;
    for (int64_t l = 0; l < c->n_layers; l++) {
        char wn[128], bn[128];
        snprintf(wn, sizeof wn, "gpt_neox.layers.%lld.attention.query_key_value.weight", (long long)l);
        snprintf(bn, sizeof bn, "gpt_neox.layers.%lld.attention.query_key_value.bias", (long long)l);
        const ps_tensor *tw = ps_safetensors_find(&st, wn), *tb = ps_safetensors_find(&st, bn);
        float *w = malloc((size_t)(3 * QD * C) * sizeof(float)), *b = malloc((size_t)(3 * QD) * sizeof(float));
        if (!tw || !tb || !w || !b || ps_tensor_to_f32(tw, w, &e) || ps_tensor_to_f32(tb, b, &e)) {
            TU_CHECK(0, "%s: layer %lld query_key_value: %s", name, (long long)l, e.msg);
            free(w); free(b);
            continue;
        }
        const float *mats[3] = {m.w.w_q + l * C * QD, m.w.w_k + l * C * QD, m.w.w_v + l * C * QD};
        const float *bias[3] = {m.w.b_q + l * QD, m.w.b_k + l * QD, m.w.b_v + l * QD};
        for (int part = 0; part < 3; part++)
            for (int64_t h = 0; h < H; h++)
                for (int64_t d = 0; d < D; d++) {
                    const int64_t row = (3 * h + part) * D + d;
                    for (int64_t i = 0; i < C; i++, checked++) bad += mats[part][i * QD + h * D + d] != w[row * C + i];
                    bad += bias[part][h * D + d] != b[row];
                }
        free(w);
        free(b);
    }
    TU_CHECK(bad == 0 && checked > 0, "%s: %lld of %lld w_q/w_k/w_v entries differ from query_key_value", name, (long long)bad,
             (long long)checked);
    printf("%-48s %lld entries, file dtype %s, ok\n", name, (long long)checked, m.file_dtype);
    ps_safetensors_free(&st);
    ps_model_free(&m);
}

int main(void) {
    test_pythia_160m_config();
    test_qkv_split("neox-tiny-a");
    test_qkv_split("neox-tiny-b");
    test_qkv_split("neox-tiny-c");
    return tu_done("neox");
}
