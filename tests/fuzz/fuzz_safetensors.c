// libFuzzer target: ps_safetensors_open + ps_tensor_to_f32 of every tensor.
// Input starting with '{' is a model.safetensors.index.json naming the two fixed shards a/b.safetensors beside it;
// anything else is a single model.safetensors file.
#include "fuzz_util.h"
#include "ps_safetensors.h"

// Builds a tiny valid shard: one F32 tensor "name" of 2 elements.
static void write_shard(const char *file, const char *name) {
    char hdr[128];
    int n = snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", name);
    uint8_t buf[256];
    uint64_t len = (uint64_t)n;
    for (int i = 0; i < 8; i++) buf[i] = (uint8_t)(len >> (8 * i));
    memcpy(buf + 8, hdr, (size_t)n);
    memset(buf + 8 + n, 0x3f, 8);
    fuzz_write(1, file, buf, 8 + (size_t)n + 8);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        write_shard("a.safetensors", "wte");
        write_shard("b.safetensors", "h.0.w");
        ready = 1;
    }
    int index = size > 0 && data[0] == '{';
    fuzz_remove(index ? "model.safetensors" : "model.safetensors.index.json");   // an index must not see the last input
    const char *path = fuzz_write(0, index ? "model.safetensors.index.json" : "model.safetensors", data, size);
    ps_safetensors st;
    ps_error e = {0};
    int rc = ps_safetensors_open(&st, path, &e);
    fuzz_note("safetensors", rc, e.msg);
    if (rc != 0) {
        FUZZ_FAIL_IF(fuzz_bad_error(&e));
        FUZZ_FAIL_IF(st.files || st.tensors);
        return 0;
    }
    for (int64_t i = 0; i < st.n_tensors; i++) {
        const ps_tensor *t = &st.tensors[i];
        FUZZ_FAIL_IF(t->file < 0 || t->file >= st.n_files);
        const ps_st_file *f = &st.files[t->file];
        const uint8_t *lo = f->map, *p = t->data;
        FUZZ_FAIL_IF(p < lo || t->nbytes > f->map_len || (size_t)(p - lo) > f->map_len - t->nbytes);
        FUZZ_FAIL_IF((uint64_t)t->numel * ps_dtype_size(t->dtype) != t->nbytes);
        FUZZ_FAIL_IF(ps_safetensors_find(&st, t->name) == NULL);
        FUZZ_FAIL_IF(i > 0 && strcmp(st.tensors[i - 1].name, t->name) >= 0);
        float *out = malloc((size_t)(t->numel ? t->numel : 1) * sizeof *out);
        FUZZ_FAIL_IF(!out);
        ps_error e2 = {0};
        int rc2 = ps_tensor_to_f32(t, out, &e2);
        int is_float = t->dtype == PS_DT_F32 || t->dtype == PS_DT_F16 || t->dtype == PS_DT_BF16 || t->dtype == PS_DT_F64;
        FUZZ_FAIL_IF((rc2 == 0) != is_float);
        if (t->numel > 1) {
            ps_error e3 = {0};
            FUZZ_FAIL_IF(ps_tensor_to_f32_range(t, t->numel / 2, t->numel - t->numel / 2, out, &e3) != 0 && is_float);
        }
        ps_error e4 = {0};
        FUZZ_FAIL_IF(ps_tensor_to_f32_range(t, t->numel, 1, out, &e4) == 0);   // one past the end must be refused
        free(out);
    }
    ps_safetensors_free(&st);
    return 0;
}
