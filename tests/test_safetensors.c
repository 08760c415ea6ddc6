// Tests for the safetensors reader: files written byte by byte at runtime (f32/f16/bf16/f64, padding, shards)
// and one broken file per error we promise to catch. The model loader's tests are in test_checkpoint.c.
#include "st_fixture.h"

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// ---- 1. single file round trip ----

static void test_round_trip(int pad8) {
    const char *dir = stf_new_dir(pad8 ? "rt8" : "rt_odd");
    const char *path = stf_path_in(dir, "x.safetensors");

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
    stf_write_st(path, ts, 6, pad8);

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
            TU_CHECK(stf_same_float(out[i], b_want[i]), "f16[%d] 0x%04x: got %a want %a", i, b[i], out[i], b_want[i]);
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
            if (!stf_same_float(f, want) && !(isnan(f) && isnan(want))) bad++;
            if (ex == 31 && m && (stf_f32_bits(f) & 0x7fffff) >> 13 != (uint32_t)m) bad++;  // NaN payload kept
        }
        TU_CHECK(bad == 0, "f16 exhaustive: %d of 65536 values wrong", bad);
        printf("%-48s mismatches=%d n=65536 %s\n", "f16 exhaustive", bad, bad ? "MISMATCH" : "ok");
    }
    t = ps_safetensors_find(&st, "mid.bf16");
    if (t) {
        TU_CHECK(ps_tensor_to_f32(t, out, &e) == 0, "bf16 convert: %s", e.msg);
        for (int i = 0; i < 6; i++) TU_CHECK(stf_same_float(out[i], c_want[i]), "bf16[%d]: got %a want %a", i, out[i], c_want[i]);
        tu_close("bf16 incl. subnormal/inf/nan", out, c_want, 6, 0, 0);
        float part[2];
        TU_CHECK(ps_tensor_to_f32_range(t, 2, 2, part, &e) == 0 && stf_same_float(part[0], c_want[2]) && stf_same_float(part[1], c_want[3]),
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
    const char *dir = stf_new_dir("sharded");
    float x[4] = {1, 2, 3, 4}, y[2] = {5, 6};
    uint16_t z[3] = {0x3c00, 0x4000, 0x4200};  // f16 1, 2, 3
    tdesc s1[] = {{"layer.0.w", "F32", 2, {2, 2}, x, sizeof x}};
    tdesc s2[] = {{"layer.1.w", "F32", 1, {2}, y, sizeof y}, {"layer.1.h", "F16", 1, {3}, z, sizeof z}};
    stf_write_st(stf_path_in(dir, "model-00001-of-00002.safetensors"), s1, 1, 1);
    stf_write_st(stf_path_in(dir, "model-00002-of-00002.safetensors"), s2, 2, 1);
    stf_write_text(stf_path_in(dir, "model.safetensors.index.json"),
               "{\"metadata\": {\"total_size\": 30},\n \"weight_map\": {\"layer.1.w\": \"model-00002-of-00002.safetensors\",\n"
               "  \"layer.0.w\": \"model-00001-of-00002.safetensors\", \"layer.1.h\": \"model-00002-of-00002.safetensors\"}}\n");
    for (int via_index = 0; via_index < 2; via_index++) {
        ps_safetensors st;
        ps_error e = {0};
        const char *p = via_index ? stf_path_in(dir, "model.safetensors.index.json") : dir;
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

static void test_bad_files(void) {
    const char *dir = stf_new_dir("bad");
    float data[6] = {1, 2, 3, 4, 5, 6};
    ps_error e;
    const char *p;
    int rc;

    p = stf_path_in(dir, "empty.safetensors");
    stf_write_bytes(p, "", 0);
    rc = stf_try_open(p, &e);
    stf_expect_fail("empty file", rc, &e, p, "byte 0");

    p = stf_path_in(dir, "short.safetensors");
    stf_write_bytes(p, "\x10\x00\x00", 3);
    rc = stf_try_open(p, &e);
    stf_expect_fail("3-byte file", rc, &e, p, "byte 0");

    p = stf_path_in(dir, "hlen.safetensors");
    stf_write_raw(p, 1000, "{}", NULL, 0);
    rc = stf_try_open(p, &e);
    stf_expect_fail("header length past EOF", rc, &e, p, "byte 0: header length 1000");

    p = stf_path_in(dir, "hlen_huge.safetensors");
    stf_write_raw(p, UINT64_MAX, "{}", NULL, 0);
    rc = stf_try_open(p, &e);
    stf_expect_fail("header length 2^64-1", rc, &e, p, "byte 0");

    // the second comma sits at byte 8 + 20
    p = stf_path_in(dir, "syntax.safetensors");
    const char *h = "{\"a\":{\"dtype\":\"F32\",,\"shape\":[1],\"data_offsets\":[0,4]}}";
    stf_write_raw(p, strlen(h), h, data, 4);
    rc = stf_try_open(p, &e);
    stf_expect_fail("JSON syntax error in header", rc, &e, p, "JSON syntax error");
    // cJSON reports the error at, or one byte past, the offending character
    TU_CHECK(strstr(e.msg, "byte 28:") || strstr(e.msg, "byte 29:"), "syntax error offset: %s", e.msg);

    p = stf_path_in(dir, "truncated_json.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"sha";
    stf_write_raw(p, strlen(h), h, NULL, 0);
    rc = stf_try_open(p, &e);
    stf_expect_fail("header JSON cut short", rc, &e, p, "byte ");

    p = stf_path_in(dir, "notobj.safetensors");
    h = "[1, 2]  ";
    stf_write_raw(p, strlen(h), h, NULL, 0);
    rc = stf_try_open(p, &e);
    stf_expect_fail("header is an array", rc, &e, p, "byte 8");

    p = stf_path_in(dir, "trailing.safetensors");
    h = "{}  xx  ";
    stf_write_raw(p, strlen(h), h, NULL, 0);
    rc = stf_try_open(p, &e);
    stf_expect_fail("garbage after header JSON", rc, &e, p, "byte 12");

    p = stf_path_in(dir, "dtype.safetensors");
    h = "{\"w\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}";
    stf_write_raw(p, strlen(h), h, data, 4);
    rc = stf_try_open(p, &e);
    stf_expect_fail("unknown dtype", rc, &e, p, "\"w\": unknown dtype \"F8_E4M3\"");

    p = stf_path_in(dir, "negshape.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-3],\"data_offsets\":[0,24]}}";
    stf_write_raw(p, strlen(h), h, data, 24);
    rc = stf_try_open(p, &e);
    stf_expect_fail("negative shape", rc, &e, p, "\"w\": shape[1]");

    p = stf_path_in(dir, "fracshape.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}";
    stf_write_raw(p, strlen(h), h, data, 4);
    rc = stf_try_open(p, &e);
    stf_expect_fail("non-integer shape", rc, &e, p, "\"w\": shape[0]");

    p = stf_path_in(dir, "strshape.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[\"4\"],\"data_offsets\":[0,16]}}";
    stf_write_raw(p, strlen(h), h, data, 16);
    rc = stf_try_open(p, &e);
    stf_expect_fail("string in shape", rc, &e, p, "\"w\": shape[0]");

    p = stf_path_in(dir, "nooffsets.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4]}}";
    stf_write_raw(p, strlen(h), h, data, 16);
    rc = stf_try_open(p, &e);
    stf_expect_fail("missing data_offsets", rc, &e, p, "\"w\": data_offsets");

    // offsets [0, 20] for 2x3 f32 (24 bytes): the tensor's bytes are fewer than its shape needs
    p = stf_path_in(dir, "undersized.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,20]}}";
    stf_write_raw(p, strlen(h), h, data, 20);
    rc = stf_try_open(p, &e);
    stf_expect_fail("tensor smaller than its shape", rc, &e, p, "\"w\": data_offsets [0, 20]");

    // offsets [0, 28] for 2x3 f32 in a 24-byte data section: oversized, past the end
    p = stf_path_in(dir, "oversized.safetensors");
    h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[0,28]}}";
    stf_write_raw(p, strlen(h), h, data, 24);
    rc = stf_try_open(p, &e);
    stf_expect_fail("offsets past the end", rc, &e, p, "\"w\": data_offsets [0, 28]");

    // a valid file cut short in its data
    p = stf_path_in(dir, "truncated.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},\"w\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[8,24]}}";
    stf_write_raw(p, strlen(h), h, data, 21);
    rc = stf_try_open(p, &e);
    stf_expect_fail("truncated tensor data", rc, &e, p, "\"w\": data_offsets [8, 24]");

    p = stf_path_in(dir, "overlap.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}";
    stf_write_raw(p, strlen(h), h, data, 24);
    rc = stf_try_open(p, &e);
    stf_expect_fail("overlapping tensors", rc, &e, p, "\"b\": data at byte");

    p = stf_path_in(dir, "dup.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}";
    stf_write_raw(p, strlen(h), h, data, 8);
    rc = stf_try_open(p, &e);
    stf_expect_fail("duplicate tensor name", rc, &e, p, "\"a\"");

    p = stf_path_in(dir, "reversed.safetensors");
    h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}";
    stf_write_raw(p, strlen(h), h, data, 8);
    rc = stf_try_open(p, &e);
    stf_expect_fail("end before begin", rc, &e, p, "\"a\"");

    p = stf_path_in(dir, "badutf8.safetensors");
    h = "{\"\xff\":{}}";
    stf_write_raw(p, strlen(h), h, NULL, 0);
    rc = stf_try_open(p, &e);
    stf_expect_fail("invalid UTF-8 header", rc, &e, p, "byte 10");

    p = stf_path_in(dir, "nosuch.safetensors");
    rc = stf_try_open(p, &e);
    stf_expect_fail("nonexistent file", rc, &e, p, NULL);

    const char *d2 = stf_new_dir("bad_emptydir");
    rc = stf_try_open(d2, &e);
    stf_expect_fail("directory without weights", rc, &e, d2, "model.safetensors");

    // sharded: missing shard, shard lacking a tensor, broken index
    const char *sd = stf_new_dir("bad_shards");
    tdesc one[] = {{"x", "F32", 1, {2}, data, 8}};
    stf_write_st(stf_path_in(sd, "s1.safetensors"), one, 1, 1);
    stf_write_text(stf_path_in(sd, "model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"s1.safetensors\", \"y\": \"s2.safetensors\"}}");
    rc = stf_try_open(sd, &e);
    stf_expect_fail("missing shard", rc, &e, "s2.safetensors", "weight_map[\"y\"]");
    TU_CHECK(strstr(e.msg, "model.safetensors.index.json") != NULL, "missing shard message names the index: %s", e.msg);
    stf_write_text(stf_path_in(sd, "model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"s1.safetensors\", \"z\": \"s1.safetensors\"}}");
    rc = stf_try_open(sd, &e);
    stf_expect_fail("index tensor absent from shard", rc, &e, "weight_map[\"z\"]", "s1.safetensors");
    stf_write_text(stf_path_in(sd, "model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"s1.safetensors\",}");
    rc = stf_try_open(sd, &e);
    stf_expect_fail("index JSON syntax error", rc, &e, "model.safetensors.index.json", "line 1");
    stf_write_text(stf_path_in(sd, "model.safetensors.index.json"), "{\"metadata\": {}}");
    rc = stf_try_open(sd, &e);
    stf_expect_fail("index without weight_map", rc, &e, "model.safetensors.index.json", "weight_map");
    // a corrupt shard is reported against the shard file
    stf_write_bytes(stf_path_in(sd, "s2.safetensors"), "", 0);
    stf_write_text(stf_path_in(sd, "model.safetensors.index.json"), "{\"weight_map\": {\"x\": \"s1.safetensors\", \"y\": \"s2.safetensors\"}}");
    rc = stf_try_open(sd, &e);
    stf_expect_fail("empty shard", rc, &e, "s2.safetensors", "byte 0");
}

// Checkpoints whose config.json and tensors disagree.

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(stf_tmp_root, sizeof stf_tmp_root, "%s/ps_test_st_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(stf_tmp_root)) { perror("mkdtemp"); return 1; }

    test_round_trip(1);
    test_round_trip(0);
    test_shards();
    test_bad_files();

    nftw(stf_tmp_root, stf_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return tu_done("safetensors");
}
