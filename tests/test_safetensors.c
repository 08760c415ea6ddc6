// Tests for the safetensors reader and the model loader: files written byte by byte at runtime
// (f32/f16/bf16/f64, shards, tiny GPT-2 and Llama checkpoints) and one broken file per error we promise to catch.
#include "ps_model.h"
#include "ps_safetensors.h"
#include "testutil.h"

#include <ftw.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_root[256];

// ---- writing files ----

static void write_bytes(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) { perror(path); exit(1); }
    if (n && fwrite(p, 1, n, f) != n) { perror(path); exit(1); }
    fclose(f);
}

static void write_text(const char *path, const char *s) { write_bytes(path, s, strlen(s)); }

// A raw safetensors file: hlen as the 8-byte length (whatever the header's real length), header, data.
static void write_raw(const char *path, uint64_t hlen, const char *header, const void *data, size_t n) {
    size_t hn = strlen(header);
    unsigned char *buf = malloc(8 + hn + n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, hn);
    if (n) memcpy(buf + 8 + hn, data, n);
    write_bytes(path, buf, 8 + hn + n);
    free(buf);
}

typedef struct {
    char name[128];
    const char *dtype;   // "F32", "F16", "BF16", "F64", "I64", ...
    int ndim;
    int64_t shape[4];
    void *data;          // owned
    size_t nbytes;
} tdesc;

// Builds the header (tensors packed in order) and writes the file; pad8 pads the header to a multiple of 8
// like the reference writer, otherwise the data section starts at an odd offset to exercise unaligned reads.
static void write_st(const char *path, const tdesc *ts, int n, int pad8) {
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
    write_raw(path, len, h, data, off);
    free(data);
    free(h);
}

static const char *path_in(const char *dir, const char *name) {
    static char buf[8][512];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", dir, name);
    return b;
}

// Directory paths live until the end of main (path_in's slots are reused too soon for them).
static char dirs[64][512];
static int n_dirs;

static const char *new_dir(const char *name) {
    char *d = dirs[n_dirs++ % 64];
    snprintf(d, sizeof dirs[0], "%s/%s", tmp_root, name);
    mkdir(d, 0755);
    return d;
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw) { return remove(p); }

// ---- float bit helpers ----

static uint32_t f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static uint16_t f32_to_bf16_exact(float f) { return (uint16_t)(f32_bits(f) >> 16); }  // only for bf16-exact values

// f32 -> f16 for values that f16 represents exactly (small integers here).
static uint16_t f32_to_f16_exact(float f) {
    uint32_t u = f32_bits(f), sign = (u >> 16) & 0x8000;
    int32_t exp = (int32_t)((u >> 23) & 0xff) - 127 + 15;
    uint32_t mant = (u >> 13) & 0x3ff;
    if ((u & 0x7fffffff) == 0) return (uint16_t)sign;
    return (uint16_t)(sign | ((uint32_t)exp << 10) | mant);
}

static int same_float(float a, float b) { return (isnan(a) && isnan(b)) || f32_bits(a) == f32_bits(b); }

// Expects a failure whose message contains every given fragment (the file and the offset or tensor).
static void expect_fail(const char *what, int rc, const ps_error *e, const char *frag1, const char *frag2) {
    TU_CHECK(rc != 0, "%s: expected failure, got success", what);
    if (rc == 0) return;
    TU_CHECK(e->code == PS_EXIT_BADINPUT, "%s: code %d, want %d (msg: %s)", what, e->code, PS_EXIT_BADINPUT, e->msg);
    TU_CHECK(strchr(e->msg, '\n') == NULL, "%s: message is not one line: %s", what, e->msg);
    TU_CHECK(!frag1 || strstr(e->msg, frag1), "%s: message lacks \"%s\": %s", what, frag1, e->msg);
    TU_CHECK(!frag2 || strstr(e->msg, frag2), "%s: message lacks \"%s\": %s", what, frag2, e->msg);
    printf("  %-34s -> %s\n", what, e->msg);
}

// ---- 1. single file round trip ----

static void test_round_trip(int pad8) {
    const char *dir = new_dir(pad8 ? "rt8" : "rt_odd");
    const char *path = path_in(dir, "x.safetensors");

    float a[6] = {1.5f, -2.25f, 0.0f, 3.0e38f, -1e-38f, 7.0f};
    // f16: zero, -zero, smallest and largest subnormal, smallest normal, 1, max, -2, +inf, -inf, nan
    uint16_t b[11] = {0x0000, 0x8000, 0x0001, 0x03ff, 0x0400, 0x3c00, 0x7bff, 0xc000, 0x7c00, 0xfc00, 0x7e00};
    float b_want[11] = {0.0f, -0.0f, ldexpf(1, -24), ldexpf(1023, -24), ldexpf(1, -14), 1.0f, 65504.0f, -2.0f,
                        INFINITY, -INFINITY, NAN};
    // bf16: 1, -3, inf, smallest subnormal, 2^100, nan
    uint16_t c[6] = {0x3f80, 0xc040, 0x7f80, 0x0001, 0x7180, 0x7fc0};
    float c_want[6] = {1.0f, -3.0f, INFINITY, ldexpf(1, -133), ldexpf(1, 100), NAN};
    double d[3] = {0.1, -1e300, 2.5};
    float d_want[3] = {0.1f, -INFINITY, 2.5f};
    int64_t ints[2] = {5, -7};

    tdesc ts[] = {
        {"zeta.f32", "F32", 2, {2, 3}, a, sizeof a},
        {"alpha.f16", "F16", 1, {11}, b, sizeof b},
        {"mid.bf16", "BF16", 2, {3, 2}, c, sizeof c},
        {"d64", "F64", 1, {3}, d, sizeof d},
        {"empty", "F32", 2, {0, 4}, NULL, 0},
        {"ids", "I64", 1, {2}, ints, sizeof ints},
    };
    write_st(path, ts, 6, pad8);

    ps_safetensors st;
    ps_error e = {0};
    int rc = ps_safetensors_open(&st, path, &e);
    TU_CHECK(rc == 0, "open %s: %s", path, e.msg);
    if (rc) return;
    TU_CHECK(st.n_tensors == 6 && st.n_files == 1, "n_tensors %lld n_files %d", (long long)st.n_tensors, st.n_files);
    for (int64_t i = 1; i < st.n_tensors; i++)
        TU_CHECK(strcmp(st.tensors[i - 1].name, st.tensors[i].name) < 0, "tensors not sorted by name");

    const ps_tensor *t = ps_safetensors_find(&st, "zeta.f32");
    TU_CHECK(t && t->dtype == PS_DT_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 && t->numel == 6 && t->nbytes == 24,
             "zeta.f32 metadata");
    float out[16];
    if (t) {
        TU_CHECK(ps_tensor_to_f32(t, out, &e) == 0, "f32 convert: %s", e.msg);
        tu_close(pad8 ? "f32 round trip (aligned)" : "f32 round trip (unaligned)", out, a, 6, 0, 0);
    }
    t = ps_safetensors_find(&st, "alpha.f16");
    TU_CHECK(t && t->dtype == PS_DT_F16 && t->numel == 11, "alpha.f16 metadata");
    if (t) {
        TU_CHECK(ps_tensor_to_f32(t, out, &e) == 0, "f16 convert: %s", e.msg);
        for (int i = 0; i < 11; i++)
            TU_CHECK(same_float(out[i], b_want[i]), "f16[%d] 0x%04x: got %a want %a", i, b[i], out[i], b_want[i]);
        tu_close("f16 incl. subnormal/inf/nan", out, b_want, 11, 0, 0);
        // every one of the 65536 f16 values is exact: subnormals are k * 2^-24, normals (1 + m/1024) * 2^(e-15)
        int bad = 0;
        for (uint32_t h = 0; h < 65536; h++) {
            uint16_t hv = (uint16_t)h;
            ps_tensor one = *t;
            one.data = &hv;
            one.numel = 1;
            one.nbytes = 2;
            one.ndim = 1;
            one.shape[0] = 1;
            float f;
            ps_tensor_to_f32(&one, &f, &e);
            int ex = (h >> 10) & 31, m = h & 1023;
            float want = ex == 0 ? ldexpf((float)m, -24) : ex == 31 ? (m ? NAN : INFINITY) : ldexpf(1.0f + m / 1024.0f, ex - 15);
            if (h & 0x8000) want = -want;
            if (!same_float(f, want) && !(isnan(f) && isnan(want))) bad++;
            if (ex == 31 && m && (f32_bits(f) & 0x7fffff) >> 13 != (uint32_t)m) bad++;  // NaN payload kept
        }
        TU_CHECK(bad == 0, "f16 exhaustive: %d of 65536 values wrong", bad);
        printf("%-48s mismatches=%d n=65536 %s\n", "f16 exhaustive", bad, bad ? "MISMATCH" : "ok");
    }
    t = ps_safetensors_find(&st, "mid.bf16");
    if (t) {
        TU_CHECK(ps_tensor_to_f32(t, out, &e) == 0, "bf16 convert: %s", e.msg);
        for (int i = 0; i < 6; i++) TU_CHECK(same_float(out[i], c_want[i]), "bf16[%d]: got %a want %a", i, out[i], c_want[i]);
        tu_close("bf16 incl. subnormal/inf/nan", out, c_want, 6, 0, 0);
        float part[2];
        TU_CHECK(ps_tensor_to_f32_range(t, 2, 2, part, &e) == 0 && same_float(part[0], c_want[2]) && same_float(part[1], c_want[3]),
                 "bf16 range [2,4)");
        TU_CHECK(ps_tensor_to_f32_range(t, 5, 2, part, &e) != 0, "range past the end accepted");
        e = (ps_error){0};
    } else TU_CHECK(0, "mid.bf16 missing");
    t = ps_safetensors_find(&st, "d64");
    if (t) {
        TU_CHECK(ps_tensor_to_f32(t, out, &e) == 0, "f64 convert: %s", e.msg);
        tu_close("f64 -> f32", out, d_want, 3, 0, 0);
    } else TU_CHECK(0, "d64 missing");
    t = ps_safetensors_find(&st, "empty");
    TU_CHECK(t && t->numel == 0 && t->nbytes == 0, "zero-size tensor");
    if (t) TU_CHECK(ps_tensor_to_f32(t, out, &e) == 0, "zero-size convert: %s", e.msg);
    t = ps_safetensors_find(&st, "ids");
    TU_CHECK(t && t->dtype == PS_DT_I64, "I64 tensor");
    if (t) {
        e = (ps_error){0};
        TU_CHECK(ps_tensor_to_f32(t, out, &e) != 0 && strstr(e.msg, "ids"), "I64 to f32 must fail naming the tensor: %s", e.msg);
    }
    TU_CHECK(ps_safetensors_find(&st, "nope") == NULL, "find of an absent name");
    TU_CHECK(strcmp(ps_dtype_name(PS_DT_BF16), "BF16") == 0 && strcmp(ps_dtype_torch_name(PS_DT_F16), "float16") == 0 &&
                 ps_dtype_size(PS_DT_F64) == 8,
             "dtype names/sizes");
    ps_safetensors_free(&st);
}

// ---- 2. shards ----

static void test_shards(void) {
    const char *dir = new_dir("sharded");
    float x[4] = {1, 2, 3, 4}, y[2] = {5, 6};
    uint16_t z[3] = {0x3c00, 0x4000, 0x4200};  // f16 1, 2, 3
    tdesc s1[] = {{"layer.0.w", "F32", 2, {2, 2}, x, sizeof x}};
    tdesc s2[] = {{"layer.1.w", "F32", 1, {2}, y, sizeof y}, {"layer.1.h", "F16", 1, {3}, z, sizeof z}};
    write_st(path_in(dir, "model-00001-of-00002.safetensors"), s1, 1, 1);
    write_st(path_in(dir, "model-00002-of-00002.safetensors"), s2, 2, 1);
    write_text(path_in(dir, "model.safetensors.index.json"),
               "{\"metadata\": {\"total_size\": 30},\n \"weight_map\": {\"layer.1.w\": \"model-00002-of-00002.safetensors\",\n"
               "  \"layer.0.w\": \"model-00001-of-00002.safetensors\", \"layer.1.h\": \"model-00002-of-00002.safetensors\"}}\n");
    for (int via_index = 0; via_index < 2; via_index++) {
        ps_safetensors st;
        ps_error e = {0};
        const char *p = via_index ? path_in(dir, "model.safetensors.index.json") : dir;
        int rc = ps_safetensors_open(&st, p, &e);
        TU_CHECK(rc == 0, "open sharded %s: %s", p, e.msg);
        if (rc) continue;
        TU_CHECK(st.n_files == 2 && st.n_tensors == 3, "sharded: %d files %lld tensors", st.n_files, (long long)st.n_tensors);
        const ps_tensor *a = ps_safetensors_find(&st, "layer.0.w"), *b = ps_safetensors_find(&st, "layer.1.w"),
                        *c = ps_safetensors_find(&st, "layer.1.h");
        TU_CHECK(a && b && c, "sharded: tensors found");
        if (a && b && c) {
            TU_CHECK(strstr(st.files[a->file].path, "00001") && strstr(st.files[b->file].path, "00002") && b->file == c->file,
                     "sharded: file indices");
            float out[4], want_c[3] = {1, 2, 3};
            ps_tensor_to_f32(a, out, &e);
            tu_close(via_index ? "shard 1 tensor (via index path)" : "shard 1 tensor", out, x, 4, 0, 0);
            ps_tensor_to_f32(b, out, &e);
            tu_close("shard 2 tensor", out, y, 2, 0, 0);
            ps_tensor_to_f32(c, out, &e);
            tu_close("shard 2 f16 tensor", out, want_c, 3, 0, 0);
        }
        ps_safetensors_free(&st);
    }
}

// ---- 3. tiny checkpoints ----

typedef struct {
    tdesc t[64];
    float *src[64];  // the values written, as floats (exact in every dtype used)
    int n;
    float counter;
    const char *dtype;
} ckpt;

static void add(ckpt *k, const char *name, int ndim, int64_t d0, int64_t d1) {
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
            uint16_t h = bf ? f32_to_bf16_exact(v[i]) : f32_to_f16_exact(v[i]);
            memcpy(raw + 2 * i, &h, 2);
        }
    }
    t->data = raw;
    t->nbytes = (size_t)n * es;
    k->src[k->n++] = v;
}

static const float *src_of(const ckpt *k, const char *name) {
    for (int i = 0; i < k->n; i++)
        if (strcmp(k->t[i].name, name) == 0) return k->src[i];
    return NULL;
}

static void ckpt_free(ckpt *k) {
    for (int i = 0; i < k->n; i++) { free(k->t[i].data); free(k->src[i]); }
    k->n = 0;
}

static void drop(ckpt *k, const char *name) {
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

enum { G_L = 2, G_H = 2, G_C = 4, G_P = 5, G_V = 7, G_M = 16 };

static void gpt2_tensors(ckpt *k, const char *prefix, const char *dtype) {
    memset(k, 0, sizeof *k);
    k->dtype = dtype;
    char nm[128];
#define A(suffix, nd, d0, d1) (snprintf(nm, sizeof nm, "%s%s", prefix, suffix), add(k, nm, nd, d0, d1))
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

static void gpt2_config(const char *dir, const char *extra) {
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\n  \"model_type\": \"gpt2\", \"architectures\": [\"GPT2LMHeadModel\"],\n  \"n_layer\": %d, \"n_head\": %d, \"n_embd\": %d,\n"
             "  \"n_positions\": %d, \"vocab_size\": %d, \"n_inner\": null, \"layer_norm_epsilon\": 1e-05,\n"
             "  \"activation_function\": \"gelu_new\", \"bos_token_id\": 3, \"eos_token_id\": 50256%s\n}\n",
             G_L, G_H, G_C, G_P, G_V, extra ? extra : "");
    write_text(path_in(dir, "config.json"), cfg);
}

static void check_slot(const char *what, const float *got, const float *want, int64_t n) {
    TU_CHECK(got != NULL, "%s: slot is NULL", what);
    if (got && want) tu_close(what, got, want, n, 0, 0);
}

static void test_gpt2(const char *prefix, const char *dtype) {
    char dname[64];
    snprintf(dname, sizeof dname, "gpt2_%s%s", prefix[0] ? "tf_" : "", dtype);
    const char *dir = new_dir(dname);
    ckpt k;
    gpt2_tensors(&k, prefix, dtype);
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    gpt2_config(dir, NULL);

    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "gpt2 load (%s): %s", dname, e.msg);
    if (rc) { ckpt_free(&k); return; }
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
#define SRC(fmt, ...) (snprintf(nm, sizeof nm, "%s" fmt, prefix, __VA_ARGS__), src_of(&k, nm))
    const int C = G_C, M = G_M;
    float buf[3 * G_C * G_M];
    check_slot("gpt2 wte", m.w.wte, SRC("%s", "wte.weight"), G_V * C);
    check_slot("gpt2 wpe", m.w.wpe, SRC("%s", "wpe.weight"), G_P * C);
    TU_CHECK(m.w.w_u == m.w.wte, "tied: w_u must alias wte");
    float zeros[G_V] = {0};
    check_slot("gpt2 b_u zeros", m.w.b_u, zeros, G_V);
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
            check_slot(what, dst[p] ? dst[p] + (size_t)l * C * C : NULL, buf, C * C);
            snprintf(what, sizeof what, "gpt2 L%d b_%c from c_attn bias", l, qkv[p]);
            check_slot(what, bdst[p] ? bdst[p] + (size_t)l * C : NULL, cb + p * C, C);
        }
        check_slot("gpt2 w_o", m.w.w_o + (size_t)l * C * C, SRC("h.%d.attn.c_proj.weight", l), C * C);
        check_slot("gpt2 b_o", m.w.b_o + (size_t)l * C, SRC("h.%d.attn.c_proj.bias", l), C);
        check_slot("gpt2 ln1_w", m.w.ln1_w + (size_t)l * C, SRC("h.%d.ln_1.weight", l), C);
        check_slot("gpt2 ln1_b", m.w.ln1_b + (size_t)l * C, SRC("h.%d.ln_1.bias", l), C);
        check_slot("gpt2 ln2_w", m.w.ln2_w + (size_t)l * C, SRC("h.%d.ln_2.weight", l), C);
        check_slot("gpt2 ln2_b", m.w.ln2_b + (size_t)l * C, SRC("h.%d.ln_2.bias", l), C);
        check_slot("gpt2 w_in (c_fc)", m.w.w_in + (size_t)l * C * M, SRC("h.%d.mlp.c_fc.weight", l), C * M);
        check_slot("gpt2 b_in", m.w.b_in + (size_t)l * M, SRC("h.%d.mlp.c_fc.bias", l), M);
        check_slot("gpt2 w_out (c_proj)", m.w.w_out + (size_t)l * M * C, SRC("h.%d.mlp.c_proj.weight", l), M * C);
        check_slot("gpt2 b_out", m.w.b_out + (size_t)l * C, SRC("h.%d.mlp.c_proj.bias", l), C);
    }
    check_slot("gpt2 lnf_w", m.w.lnf_w, SRC("%s", "ln_f.weight"), C);
    check_slot("gpt2 lnf_b", m.w.lnf_b, SRC("%s", "ln_f.bias"), C);
#undef SRC
    TU_CHECK(m.w.w_up == NULL, "gpt2: w_up must stay NULL");
    ps_model_free(&m);
    ckpt_free(&k);
}

// GPT-2 with an lm_head: identical bytes keep the tie; untied config gets its own copy.
static void test_gpt2_lm_head(void) {
    const char *dir = new_dir("gpt2_head");
    ckpt k;
    gpt2_tensors(&k, "", "F32");
    add(&k, "lm_head.weight", 2, G_V, G_C);
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    gpt2_config(dir, ", \"tie_word_embeddings\": false");
    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "gpt2 untied load: %s", e.msg);
    if (rc == 0) {
        TU_CHECK(m.w.w_u != m.w.wte, "untied: w_u must be its own slot");
        check_slot("gpt2 untied w_u = lm_head", m.w.w_u, src_of(&k, "lm_head.weight"), G_V * G_C);
        ps_model_free(&m);
    }
    // tied + a different lm_head is ambiguous
    gpt2_config(dir, NULL);
    e = (ps_error){0};
    rc = ps_model_load(&m, dir, &e);
    expect_fail("tied but lm_head differs", rc, &e, "lm_head.weight", "model.safetensors");
    // tied + an identical lm_head: fine, aliased
    memcpy(k.t[k.n - 1].data, k.t[0].data, k.t[0].nbytes);
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    e = (ps_error){0};
    rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "gpt2 tied with identical lm_head: %s", e.msg);
    if (rc == 0) { TU_CHECK(m.w.w_u == m.w.wte, "identical lm_head stays tied"); ps_model_free(&m); }
    ckpt_free(&k);
}

enum { LL_L = 2, LL_C = 8, LL_H = 2, LL_KV = 1, LL_D = 4, LL_M = 12, LL_V = 10, LL_P = 16 };

static void llama_tensors(ckpt *k, int with_head) {
    memset(k, 0, sizeof *k);
    k->dtype = "BF16";
    char nm[128];
    add(k, "model.embed_tokens.weight", 2, LL_V, LL_C);
    for (int l = 0; l < LL_L; l++) {
#define AL(suffix, nd, d0, d1) (snprintf(nm, sizeof nm, "model.layers.%d.%s", l, suffix), add(k, nm, nd, d0, d1))
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
    add(k, "model.norm.weight", 1, LL_C, 0);
    if (with_head) add(k, "lm_head.weight", 2, LL_V, LL_C);
}

static void transpose(const float *src, int64_t rows, int64_t cols, float *dst) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++) dst[c * rows + r] = src[r * cols + c];
}

static void test_llama(int tied) {
    const char *dir = new_dir(tied ? "llama_tied" : "llama");
    ckpt k;
    llama_tensors(&k, !tied);
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_size\": %d, \"num_hidden_layers\": %d,\n"
             " \"num_attention_heads\": %d, \"num_key_value_heads\": %d, \"head_dim\": %d, \"intermediate_size\": %d, \"vocab_size\": %d,\n"
             " \"max_position_embeddings\": %d, \"rms_norm_eps\": 1e-06, \"hidden_act\": \"silu\", \"dtype\": \"bfloat16\",\n"
             " \"rope_parameters\": {\"rope_theta\": 500000.0, \"rope_type\": \"default\"}, \"bos_token_id\": 1, \"eos_token_id\": [2, 9],\n"
             " \"tie_word_embeddings\": %s, \"attention_bias\": false, \"mlp_bias\": false, \"pad_token_id\": null}\n",
             LL_C, LL_L, LL_H, LL_KV, LL_D, LL_M, LL_V, LL_P, tied ? "true" : "false");
    write_text(path_in(dir, "config.json"), cfg);
    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "llama load: %s", e.msg);
    if (rc) { ckpt_free(&k); return; }
    const ps_model_config *c = &m.cfg;
    TU_CHECK(c->arch == PS_ARCH_LLAMA && c->n_layers == LL_L && c->n_heads == LL_H && c->n_kv_heads == LL_KV && c->d_head == LL_D &&
                 c->d_model == LL_C && c->d_mlp == LL_M && c->d_vocab == LL_V && c->n_ctx == LL_P && c->act == PS_ACT_SILU &&
                 c->rope_theta == 500000.0f && c->bos_id == 1 && c->eos_id == 2 && c->tie_word_embeddings == tied,
             "llama config fields");
    TU_CHECK(strcmp(m.file_dtype, "bfloat16") == 0, "llama file_dtype %s", m.file_dtype);
    char nm[128];
    float buf[LL_M * LL_C];
    check_slot("llama wte", m.w.wte, src_of(&k, "model.embed_tokens.weight"), LL_V * LL_C);
    check_slot("llama lnf_w", m.w.lnf_w, src_of(&k, "model.norm.weight"), LL_C);
    if (tied) TU_CHECK(m.w.w_u == m.w.wte, "llama tied: w_u aliases wte");
    else check_slot("llama w_u = lm_head (V, C)", m.w.w_u, src_of(&k, "lm_head.weight"), LL_V * LL_C);
    struct { const char *name; float *slot; int64_t out, in; } lin[] = {
        {"self_attn.q_proj.weight", m.w.w_q, LL_H * LL_D, LL_C},  {"self_attn.k_proj.weight", m.w.w_k, LL_KV * LL_D, LL_C},
        {"self_attn.v_proj.weight", m.w.w_v, LL_KV * LL_D, LL_C}, {"self_attn.o_proj.weight", m.w.w_o, LL_C, LL_H * LL_D},
        {"mlp.gate_proj.weight", m.w.w_in, LL_M, LL_C},           {"mlp.up_proj.weight", m.w.w_up, LL_M, LL_C},
        {"mlp.down_proj.weight", m.w.w_out, LL_C, LL_M},
    };
    for (int l = 0; l < LL_L; l++) {
        for (size_t i = 0; i < sizeof lin / sizeof lin[0]; i++) {
            snprintf(nm, sizeof nm, "model.layers.%d.%s", l, lin[i].name);
            transpose(src_of(&k, nm), lin[i].out, lin[i].in, buf);
            char what[96];
            snprintf(what, sizeof what, "llama L%d %s transposed", l, lin[i].name);
            check_slot(what, lin[i].slot ? lin[i].slot + (size_t)l * lin[i].out * lin[i].in : NULL, buf, lin[i].out * lin[i].in);
        }
        snprintf(nm, sizeof nm, "model.layers.%d.input_layernorm.weight", l);
        check_slot("llama ln1_w", m.w.ln1_w + l * LL_C, src_of(&k, nm), LL_C);
        snprintf(nm, sizeof nm, "model.layers.%d.post_attention_layernorm.weight", l);
        check_slot("llama ln2_w", m.w.ln2_w + l * LL_C, src_of(&k, nm), LL_C);
    }
    TU_CHECK(!m.w.wpe && !m.w.ln1_b && !m.w.b_q && !m.w.b_k && !m.w.b_v && !m.w.b_o && !m.w.ln2_b && !m.w.b_in && !m.w.b_out &&
                 !m.w.lnf_b && !m.w.b_u,
             "llama: GPT-2-only pointers must stay NULL");
    ps_model_free(&m);
    ckpt_free(&k);
}

// A GPT-2 checkpoint split into two shards; the hash is the index file's.
static void test_gpt2_sharded(void) {
    const char *dir = new_dir("gpt2_sharded");
    ckpt k;
    gpt2_tensors(&k, "transformer.", "F32");
    int half = k.n / 2;
    write_st(path_in(dir, "model-00001-of-00002.safetensors"), k.t, half, 1);
    write_st(path_in(dir, "model-00002-of-00002.safetensors"), k.t + half, k.n - half, 1);
    size_t cap = 16384, len = 0;
    char *idx = malloc(cap);
    len += (size_t)snprintf(idx + len, cap - len, "{\"metadata\": {}, \"weight_map\": {");
    for (int i = 0; i < k.n; i++)
        len += (size_t)snprintf(idx + len, cap - len, "%s\"%s\": \"model-0000%d-of-00002.safetensors\"", i ? ", " : "", k.t[i].name,
                                i < half ? 1 : 2);
    snprintf(idx + len, cap - len, "}}");
    write_text(path_in(dir, "model.safetensors.index.json"), idx);
    gpt2_config(dir, NULL);
    ps_model m;
    ps_error e = {0};
    int rc = ps_model_load(&m, dir, &e);
    TU_CHECK(rc == 0, "sharded gpt2 load: %s", e.msg);
    if (rc == 0) {
        TU_CHECK(m.weights_sha256[0] == 0, "sharded: not hashed by the loader");
        check_slot("sharded gpt2 lnf_b (2nd shard)", m.w.lnf_b, src_of(&k, "transformer.ln_f.bias"), G_C);
        check_slot("sharded gpt2 wte (1st shard)", m.w.wte, src_of(&k, "transformer.wte.weight"), G_V * G_C);
        ps_model_free(&m);
    }
    // missing shard
    remove(path_in(dir, "model-00002-of-00002.safetensors"));
    e = (ps_error){0};
    rc = ps_model_load(&m, dir, &e);
    expect_fail("missing shard", rc, &e, "model-00002-of-00002.safetensors", "model.safetensors.index.json");
    // the index names a tensor that the shard lacks
    write_st(path_in(dir, "model-00002-of-00002.safetensors"), k.t + half, k.n - half - 1, 1);
    e = (ps_error){0};
    rc = ps_model_load(&m, dir, &e);
    expect_fail("tensor missing from its shard", rc, &e, k.t[k.n - 1].name, "model-00002-of-00002.safetensors");
    free(idx);
    ckpt_free(&k);
}

// ---- 4. bad inputs ----

static int try_open(const char *path, ps_error *e) {
    ps_safetensors st;
    *e = (ps_error){0};
    int rc = ps_safetensors_open(&st, path, e);
    if (rc == 0) ps_safetensors_free(&st);
    return rc;
}

static int try_load(const char *dir, ps_error *e) {
    ps_model m;
    *e = (ps_error){0};
    int rc = ps_model_load(&m, dir, e);
    if (rc == 0) ps_model_free(&m);
    return rc;
}

static void test_bad_files(void) {
    const char *dir = new_dir("bad");
    float data[6] = {1, 2, 3, 4, 5, 6};
    ps_error e;
    const char *p;
    int rc;

    p = path_in(dir, "empty.safetensors");
    write_bytes(p, "", 0);
    rc = try_open(p, &e);
    expect_fail("empty file", rc, &e, p, "byte 0");

    p = path_in(dir, "short.safetensors");
    write_bytes(p, "\x10\x00\x00", 3);
    rc = try_open(p, &e);
    expect_fail("3-byte file", rc, &e, p, "byte 0");

    p = path_in(dir, "hlen.safetensors");
    write_raw(p, 1000, "{}", NULL, 0);
    rc = try_open(p, &e);
    expect_fail("header length past EOF", rc, &e, p, "byte 0: header length 1000");

    p = path_in(dir, "hlen_huge.safetensors");
    write_raw(p, UINT64_MAX, "{}", NULL, 0);
    rc = try_open(p, &e);
    expect_fail("header length 2^64-1", rc, &e, p, "byte 0");

    // the second comma sits at byte 8 + 20
    p = path_in(dir, "syntax.safetensors");
    const char *h = "{\"a\":{\"dtype\":\"F32\",,\"shape\":[1],\"data_offsets\":[0,4]}}";
    write_raw(p, strlen(h), h, data, 4);
    rc = try_open(p, &e);
    expect_fail("JSON syntax error in header", rc, &e, p, "JSON syntax error");
    // cJSON reports the error at, or one byte past, the offending character
    TU_CHECK(strstr(e.msg, "byte 28:") || strstr(e.msg, "byte 29:"), "syntax error offset: %s", e.msg);

    p = path_in(dir, "truncated_json.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"sha";
    write_raw(p, strlen(h), h, NULL, 0);
    rc = try_open(p, &e);
    expect_fail("header JSON cut short", rc, &e, p, "byte ");

    p = path_in(dir, "notobj.safetensors");
    h = "[1, 2]  ";
    write_raw(p, strlen(h), h, NULL, 0);
    rc = try_open(p, &e);
    expect_fail("header is an array", rc, &e, p, "byte 8");

    p = path_in(dir, "trailing.safetensors");
    h = "{}  xx  ";
    write_raw(p, strlen(h), h, NULL, 0);
    rc = try_open(p, &e);
    expect_fail("garbage after header JSON", rc, &e, p, "byte 12");

    p = path_in(dir, "dtype.safetensors");
    h = "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}";
    write_raw(p, strlen(h), h, data, 4);
    rc = try_open(p, &e);
    expect_fail("unknown dtype", rc, &e, p, "\"w\": unknown dtype \"F8_E4M3\"");

    p = path_in(dir, "negshape.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,24]}}";
    write_raw(p, strlen(h), h, data, 24);
    rc = try_open(p, &e);
    expect_fail("negative shape", rc, &e, p, "\"w\": shape[1]");

    p = path_in(dir, "fracshape.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}";
    write_raw(p, strlen(h), h, data, 4);
    rc = try_open(p, &e);
    expect_fail("non-integer shape", rc, &e, p, "\"w\": shape[0]");

    p = path_in(dir, "strshape.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}}";
    write_raw(p, strlen(h), h, data, 16);
    rc = try_open(p, &e);
    expect_fail("string in shape", rc, &e, p, "\"w\": shape[0]");

    p = path_in(dir, "nooffsets.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}";
    write_raw(p, strlen(h), h, data, 16);
    rc = try_open(p, &e);
    expect_fail("missing data_offsets", rc, &e, p, "\"w\": data_offsets");

    // offsets [0, 20] for 2x3 f32 (24 bytes): the tensor's bytes are fewer than its shape needs
    p = path_in(dir, "undersized.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}";
    write_raw(p, strlen(h), h, data, 20);
    rc = try_open(p, &e);
    expect_fail("tensor smaller than its shape", rc, &e, p, "\"w\": data_offsets [0, 20]");

    // offsets [0, 28] for 2x3 f32 in a 24-byte data section: oversized, past the end
    p = path_in(dir, "oversized.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,28]}}";
    write_raw(p, strlen(h), h, data, 24);
    rc = try_open(p, &e);
    expect_fail("offsets past the end", rc, &e, p, "\"w\": data_offsets [0, 28]");

    // a valid file cut short in its data
    p = path_in(dir, "truncated.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}";
    write_raw(p, strlen(h), h, data, 21);
    rc = try_open(p, &e);
    expect_fail("truncated tensor data", rc, &e, p, "\"w\": data_offsets [8, 24]");

    p = path_in(dir, "overlap.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}";
    write_raw(p, strlen(h), h, data, 24);
    rc = try_open(p, &e);
    expect_fail("overlapping tensors", rc, &e, p, "\"b\": data at byte");

    p = path_in(dir, "dup.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
    write_raw(p, strlen(h), h, data, 8);
    rc = try_open(p, &e);
    expect_fail("duplicate tensor name", rc, &e, p, "\"a\"");

    p = path_in(dir, "reversed.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}";
    write_raw(p, strlen(h), h, data, 8);
    rc = try_open(p, &e);
    expect_fail("end before begin", rc, &e, p, "\"a\"");

    p = path_in(dir, "badutf8.safetensors");
    h = "{\"\xff\":{}}";
    write_raw(p, strlen(h), h, NULL, 0);
    rc = try_open(p, &e);
    expect_fail("invalid UTF-8 header", rc, &e, p, "byte 10");

    p = path_in(dir, "nosuch.safetensors");
    rc = try_open(p, &e);
    expect_fail("nonexistent file", rc, &e, p, NULL);

    const char *d2 = new_dir("bad_emptydir");
    rc = try_open(d2, &e);
    expect_fail("directory without weights", rc, &e, d2, "model.safetensors");

    // sharded: missing shard, shard lacking a tensor, broken index
    const char *sd = new_dir("bad_shards");
    tdesc one[] = {{"x", "F32", 1, {2}, data, 8}};
    write_st(path_in(sd, "s1.safetensors"), one, 1, 1);
    write_text(path_in(sd, "model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"s1.safetensors\", \"y\": \"s2.safetensors\"}}");
    rc = try_open(sd, &e);
    expect_fail("missing shard", rc, &e, "s2.safetensors", "weight_map[\"y\"]");
    TU_CHECK(strstr(e.msg, "model.safetensors.index.json") != NULL, "missing shard message names the index: %s", e.msg);
    write_text(path_in(sd, "model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"s1.safetensors\", \"z\": \"s1.safetensors\"}}");
    rc = try_open(sd, &e);
    expect_fail("index tensor absent from shard", rc, &e, "weight_map[\"z\"]", "s1.safetensors");
    write_text(path_in(sd, "model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"s1.safetensors\",}");
    rc = try_open(sd, &e);
    expect_fail("index JSON syntax error", rc, &e, "model.safetensors.index.json", "line 1");
    write_text(path_in(sd, "model.safetensors.index.json"), "{\"metadata\": {}}");
    rc = try_open(sd, &e);
    expect_fail("index without weight_map", rc, &e, "model.safetensors.index.json", "weight_map");
    // a corrupt shard is reported against the shard file
    write_bytes(path_in(sd, "s2.safetensors"), "", 0);
    write_text(path_in(sd, "model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"s1.safetensors\", \"y\": \"s2.safetensors\"}}");
    rc = try_open(sd, &e);
    expect_fail("empty shard", rc, &e, "s2.safetensors", "byte 0");
}

// Checkpoints whose config.json and tensors disagree.
static void test_bad_models(void) {
    ps_error e;
    int rc;
    ckpt k;

    const char *dir = new_dir("bad_gpt2_shape");
    gpt2_tensors(&k, "transformer.", "F32");
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    gpt2_config(dir, NULL);
    write_text(path_in(dir, "config.json"),
               "{\"model_type\": \"gpt2\", \"n_layer\": 2, \"n_head\": 2, \"n_embd\": 4, \"n_positions\": 6, \"vocab_size\": 7}");
    rc = try_load(dir, &e);
    expect_fail("shape disagrees with config.json", rc, &e, "\"transformer.wpe.weight\": shape [5, 4]", "implies [6, 4]");
    TU_CHECK(strstr(e.msg, "model.safetensors") && strstr(e.msg, "config.json"), "shape message names both files: %s", e.msg);

    // dtype disagreeing with config.json
    gpt2_config(dir, ", \"dtype\": \"float16\"");
    rc = try_load(dir, &e);
    expect_fail("dtype disagrees with config.json", rc, &e, "\"transformer.wte.weight\": dtype F32", "float16");
    gpt2_config(dir, ", \"torch_dtype\": \"float32\"");
    TU_CHECK(try_load(dir, &e) == 0, "torch_dtype float32 matches F32 tensors: %s", e.msg);

    // too few layers in the file for config.json
    gpt2_config(dir, NULL);
    write_text(path_in(dir, "config.json"),
               "{\"model_type\": \"gpt2\", \"n_layer\": 3, \"n_head\": 2, \"n_embd\": 4, \"n_positions\": 5, \"vocab_size\": 7}");
    rc = try_load(dir, &e);
    expect_fail("config has more layers than file", rc, &e, "\"transformer.h.2.ln_1.weight\": missing", "model.safetensors");

    // missing tensor
    gpt2_config(dir, NULL);
    drop(&k, "transformer.ln_f.bias");
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    rc = try_load(dir, &e);
    expect_fail("missing tensor", rc, &e, "\"transformer.ln_f.bias\": missing", "model.safetensors");
    TU_CHECK(strstr(e.msg, "[4]") != NULL, "missing tensor message gives the expected shape: %s", e.msg);

    // a tensor the model would not use (a Llama bias, a typo) must not be ignored silently
    add(&k, "transformer.ln_f.bias", 1, G_C, 0);
    add(&k, "transformer.h.0.attn.c_attn.lora", 1, G_C, 0);
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    rc = try_load(dir, &e);
    expect_fail("unexpected tensor", rc, &e, "\"transformer.h.0.attn.c_attn.lora\"", "model.safetensors");
    drop(&k, "transformer.h.0.attn.c_attn.lora");
    // the causal-mask buffers of old GPT-2 checkpoints are fine
    add(&k, "transformer.h.0.attn.bias", 2, G_P, G_P);
    add(&k, "transformer.h.0.attn.masked_bias", 1, 1, 0);
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    TU_CHECK(try_load(dir, &e) == 0, "attn.bias / masked_bias buffers are ignored: %s", e.msg);

    // a non-float tensor
    k.t[0].dtype = "I32";
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    rc = try_load(dir, &e);
    expect_fail("integer weight tensor", rc, &e, "\"transformer.wte.weight\": dtype I32", "model.safetensors");
    k.t[0].dtype = "F32";
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);

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
        write_text(path_in(dir, "config.json"), bad_cfg[i].json);
        rc = try_load(dir, &e);
        char what[64];
        snprintf(what, sizeof what, "config.json case %zu", i);
        expect_fail(what, rc, &e, "config.json: ", bad_cfg[i].frag);
    }
    remove(path_in(dir, "config.json"));
    rc = try_load(dir, &e);
    expect_fail("no config.json", rc, &e, "config.json", NULL);
    ckpt_free(&k);

    // Llama without lm_head and without tying
    dir = new_dir("bad_llama_head");
    llama_tensors(&k, 0);
    write_st(path_in(dir, "model.safetensors"), k.t, k.n, 1);
    write_text(path_in(dir, "config.json"),
               "{\"architectures\": [\"LlamaForCausalLM\"], \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
               "\"num_key_value_heads\": 1, \"intermediate_size\": 12, \"vocab_size\": 10, \"max_position_embeddings\": 16}");
    rc = try_load(dir, &e);
    expect_fail("llama untied without lm_head", rc, &e, "\"lm_head.weight\": missing", "model.safetensors");
    // wrong GQA: config says 2 kv heads, file has 1
    write_text(path_in(dir, "config.json"),
               "{\"model_type\": \"llama\", \"hidden_size\": 8, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, "
               "\"intermediate_size\": 12, \"vocab_size\": 10, \"max_position_embeddings\": 16, \"tie_word_embeddings\": true}");
    rc = try_load(dir, &e);
    expect_fail("llama kv heads disagree", rc, &e, "\"model.layers.0.self_attn.k_proj.weight\": shape [4, 8]", "implies [8, 8]");
    ckpt_free(&k);
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
    snprintf(tmp_root, sizeof tmp_root, "%s/ps_test_st_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmp_root)) { perror("mkdtemp"); return 1; }

    test_round_trip(1);
    test_round_trip(0);
    test_shards();
    test_gpt2("", "F32");
    test_gpt2("transformer.", "F32");
    test_gpt2("transformer.", "F16");
    test_gpt2_lm_head();
    test_gpt2_sharded();
    test_llama(0);
    test_llama(1);
    test_bad_files();
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

    nftw(tmp_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return tu_done("safetensors");
}
