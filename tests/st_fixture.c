// Shared by the safetensors and checkpoint tests (st_fixture.h).
#include "st_fixture.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char stf_tmp_root[256];

// ---- writing files ----

void stf_write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    if (n && fwrite(p, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

void stf_write_text(const char *path, const char *s) { stf_write_bytes(path, s, strlen(s)); }

// A raw safetensors file: hlen as the 8-byte length (whatever the header's real length), header, data.
void stf_write_raw(const char *path, uint64_t hlen, const char *header, const void *data, size_t n) {
    size_t hn = strlen(header);
    unsigned char *buf = malloc(8 + hn + n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, hn);
    if (n) memcpy(buf + 8 + hn, data, n);
    stf_write_bytes(path, buf, 8 + hn + n);
    free(buf);
}


// Builds the header (tensors packed in order) and writes the file; pad8 pads the header to a multiple of 8
// like the reference writer, otherwise the data section starts at an odd offset to exercise unaligned reads.
void stf_write_st(const char *path, const tdesc *ts, int n, int pad8) {
    size_t cap = 4096 + (size_t)n * 256, len = 0, off = 0;
    char *h = malloc(cap);
    len += (size_t)snprintf(h + len, cap - len, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (int i = 0; i < n; i++) {
        len += (size_t)snprintf(h + len, cap - len, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", ts[i].name, ts[i].dtype);
        for (int k = 0; k < ts[i].ndim; k++) len += (size_t)snprintf(h + len, cap - len, "%s%lld", k ? "," : "", (long long)ts[i].shape[k]);
        len += (size_t)snprintf(h + len, cap - len, "],\"data_offsets\":[%zu,%zu]}", off, off + ts[i].nbytes);
        off += ts[i].nbytes;
    }
    len += (size_t)snprintf(h + len, cap - len, "}");
    if (pad8) while (len % 8) h[len++] = ' ';
    else if (len % 2 == 0) h[len++] = ' ';
    h[len] = 0;
    unsigned char *data = malloc(off ? off : 1);
    off = 0;
    for (int i = 0; i < n; i++) { if (ts[i].nbytes) memcpy(data + off, ts[i].data, ts[i].nbytes); off += ts[i].nbytes; }
    stf_write_raw(path, len, h, data, off);
    free(data);
    free(h);
}

const char *stf_path_in(const char *dir, const char *name) {
    static char buf[8][512];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", dir, name);
    return b;
}

// Directory paths live until the end of main (path_in's slots are reused too soon for them).
static char dirs[64][512];
static int n_dirs;

const char *stf_new_dir(const char *name) {
    char *d = dirs[n_dirs++ % 64];
    snprintf(d, sizeof dirs[0], "%s/%s", stf_tmp_root, name);
    mkdir(d, 0755);
    return d;
}

int stf_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }

// ---- float bit helpers ----

uint32_t stf_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
uint16_t stf_f32_to_bf16_exact(float f) { return (uint16_t)(stf_f32_bits(f) >> 16); }  // only for bf16-exact values

// f32 -> f16 for values that f16 represents exactly (small integers here).
uint16_t stf_f32_to_f16_exact(float f) {
    uint32_t u = stf_f32_bits(f), sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = (u >> 13) & 0x3ff;
    if ((u & 0x7fffffff) == 0) return (uint16_t)sign;
    return (uint16_t)(sign | ((uint32_t)exp << 10) | mant);
}

int stf_same_float(float a, float b) { return (isnan(a) && isnan(b)) || stf_f32_bits(a) == stf_f32_bits(b); }

// Expects a failure whose message contains every given fragment (the file and the offset or tensor).
void stf_expect_fail(const char *what, int rc, const ps_error *e, const char *frag1, const char *frag2) {
    TU_CHECK(rc != 0, "%s: expected failure, got success", what);
    if (rc == 0) return;
    TU_CHECK(e->code == PS_EXIT_BADINPUT, "%s: code %d, want %d (msg: %s)", what, e->code, PS_EXIT_BADINPUT, e->msg);
    TU_CHECK(strchr(e->msg, '\n') == NULL, "%s: message is not one line: %s", what, e->msg);
    TU_CHECK(!frag1 || strstr(e->msg, frag1), "%s: message lacks \"%s\": %s", what, frag1, e->msg);
    TU_CHECK(!frag2 || strstr(e->msg, frag2), "%s: message lacks \"%s\": %s", what, frag2, e->msg);
    printf("  %-34s -> %s\n", what, e->msg);
}

// ---- 3. tiny checkpoints ----


void stf_add(ckpt *k, const char *name, int ndim, int64_t d0, int64_t d1) {
    tdesc *t = &k->t[k->n];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = k->dtype;
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = d1;
    int64_t n = ndim == 1 ? d0 : d0 * d1;
    float *v = malloc((size_t)n * sizeof(float));
    int is16 = strcmp(k->dtype, "F32") != 0;
    int bf = strcmp(k->dtype, "BF16") == 0;
    size_t es = is16 ? 2 : 4;
    unsigned char *raw = malloc((size_t)n * es + 1);
    for (int64_t i = 0; i < n; i++) {
        // unique small integers, kept bf16-exact (below 256) when the file is bf16
        v[i] = bf ? fmodf(k->counter++, 256.0f) - 128.0f : k->counter++ - 1000.0f;
        if (!is16) memcpy(raw + 4 * i, &v[i], 4);
        else {
            uint16_t h = bf ? stf_f32_to_bf16_exact(v[i]) : stf_f32_to_f16_exact(v[i]);
            memcpy(raw + 2 * i, &h, 2);
        }
    }
    t->data = raw;
    t->nbytes = (size_t)n * es;
    k->src[k->n++] = v;
}

const float *stf_src_of(const ckpt *k, const char *name) {
    for (int i = 0; i < k->n; i++)
        if (strcmp(k->t[i].name, name) == 0) return k->src[i];
    return NULL;
}

void stf_ckpt_free(ckpt *k) {
    for (int i = 0; i < k->n; i++) { free(k->t[i].data); free(k->src[i]); }
    k->n = 0;
}

void stf_drop(ckpt *k, const char *name) {
    for (int i = 0; i < k->n; i++)
        if (strcmp(k->t[i].name, name) == 0) {
            free(k->t[i].data);
            free(k->src[i]);
            k->t[i] = k->t[k->n - 1];
            k->src[i] = k->src[k->n - 1];
            k->n--;
            return;
        }
}


void stf_gpt2_tensors(ckpt *k, const char *prefix, const char *dtype) {
    memset(k, 0, sizeof *k);
    k->dtype = dtype;
    char nm[128];
#define A(suffix, nd, d0, d1) (snprintf(nm, sizeof nm, "%s%s", prefix, suffix), stf_add(k, nm, nd, d0, d1))
    A("wte.weight", 2, G_V, G_C);
    A("wpe.weight", 2, G_P, G_C);
    for (int l = 0; l < G_L; l++) {
        char s[96];
#define AL(suffix, nd, d0, d1) (snprintf(s, sizeof s, "h.%d.%s", l, suffix), A(s, nd, d0, d1))
        AL("ln_1.weight", 1, G_C, 0);
        AL("ln_1.bias", 1, G_C, 0);
        AL("attn.c_attn.weight", 2, G_C, 3 * G_C);
        AL("attn.c_attn.bias", 1, 3 * G_C, 0);
        AL("attn.c_proj.weight", 2, G_C, G_C);
        AL("attn.c_proj.bias", 1, G_C, 0);
        AL("ln_2.weight", 1, G_C, 0);
        AL("ln_2.bias", 1, G_C, 0);
        AL("mlp.c_fc.weight", 2, G_C, G_M);
        AL("mlp.c_fc.bias", 1, G_M, 0);
        AL("mlp.c_proj.weight", 2, G_M, G_C);
        AL("mlp.c_proj.bias", 1, G_C, 0);
#undef AL
    }
    A("ln_f.weight", 1, G_C, 0);
    A("ln_f.bias", 1, G_C, 0);
#undef A
}

void stf_gpt2_config(const char *dir, const char *extra) {
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\n  \"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"],\n  \"n_layer\": %d, \"n_head\": %d, \"n_embd\": %d,\n"
             "  \"n_positions\": %d, \"vocab_size\": %d, \"n_inner\": null, \"layer_norm_epsilon\": 1e-05,\n"
             "  \"activation_function\": \"gelu_new\", \"bos_token_id\": 3, \"eos_token_id\": 50256%s\n}\n",
             G_L, G_H, G_C, G_P, G_V, extra ? extra : "");
    stf_write_text(stf_path_in(dir, "config.json"), cfg);
}

void stf_check_slot(const char *what, const float *got, const float *want, int64_t n) {
    TU_CHECK(got != NULL, "%s: slot is NULL", what);
    if (got && want) tu_close(what, got, want, n, 0, 0);
}

void stf_llama_tensors(ckpt *k, int with_head) {
    memset(k, 0, sizeof *k);
    k->dtype = "BF16";
    char nm[128];
    stf_add(k, "model.embed_tokens.weight", 2, LL_V, LL_C);
    for (int l = 0; l < LL_L; l++) {
#define AL(suffix, nd, d0, d1) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), stf_add(k, nm, nd, d0, d1))
        AL("input_layernorm.weight", 1, LL_C, 0);
        AL("self_attn.q_proj.weight", 2, LL_H * LL_D, LL_C);
        AL("self_attn.k_proj.weight", 2, LL_KV * LL_D, LL_C);
        AL("self_attn.v_proj.weight", 2, LL_KV * LL_D, LL_C);
        AL("self_attn.o_proj.weight", 2, LL_C, LL_H * LL_D);
        AL("post_attention_layernorm.weight", 1, LL_C, 0);
        AL("mlp.gate_proj.weight", 2, LL_M, LL_C);
        AL("mlp.up_proj.weight", 2, LL_M, LL_C);
        AL("mlp.down_proj.weight", 2, LL_C, LL_M);
#undef AL
    }
    stf_add(k, "model.norm.weight", 1, LL_C, 0);
    if (with_head) stf_add(k, "lm_head.weight", 2, LL_V, LL_C);
}

void stf_transpose(const float *src, int64_t rows, int64_t cols, float *dst) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

// ---- 4. bad inputs ----

int stf_try_open(const char *path, ps_error *e) {
    ps_safetensors st;
    *e = (ps_error){0};
    int rc = ps_safetensors_open(&st, path, e);
    if (rc == 0) ps_safetensors_free(&st);
    return rc;
}

int stf_try_load(const char *dir, ps_error *e) {
    ps_model m;
    *e = (ps_error){0};
    int rc = ps_model_load(&m, dir, e);
    if (rc == 0) ps_model_free(&m);
    return rc;
}
