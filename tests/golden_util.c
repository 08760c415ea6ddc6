// Reading golden tensors for the tests: copies out of the mapped safetensors file, with dtype checks.
#include "golden_util.h"

#include "testutil.h"
#include "ps_json.h"

#include <cjson/cJSON.h>

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char *const gu_models[] = {"gpt2-tiny-a", "gpt2-tiny-b", "gpt2-tiny-c", "llama-tiny-a", "llama-tiny-b", "llama-tiny-c",
                                 "neox-tiny-a", "neox-tiny-b", "neox-tiny-c"};
const int gu_n_models = 9;

int gu_model_present(const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "tests/data/%s/model.safetensors", name);
    struct stat st;
    return stat(tu_src(rel), &st) == 0;
}

float *gu_f32(const ps_safetensors *st, const char *key, int64_t *n) {
    const ps_tensor *t = ps_safetensors_find(st, key);
    if (!t) return NULL;
    float *out = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
    ps_error e = {0};
    if (ps_tensor_to_f32(t, out, &e) != 0) {
        fprintf(stderr, "golden %s: %s\n", key, e.msg);
        free(out);
        return NULL;
    }
    *n = t->numel;
    return out;
}

int32_t *gu_i32(const ps_safetensors *st, const char *key, int64_t *n) {
    const ps_tensor *t = ps_safetensors_find(st, key);
    if (!t || t->dtype != PS_DT_I32) return NULL;
    int32_t *out = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(int32_t));
    memcpy(out, t->data, (size_t)t->numel * sizeof(int32_t));
    *n = t->numel;
    return out;
}

int gu_for_each_model(void (*fn)(const char *name)) {
    int ran = 0;
    for (int i = 0; i < gu_n_models; i++) {
        if (!gu_model_present(gu_models[i])) {
            TU_CHECK(strncmp(gu_models[i], "gpt2", 4) != 0, "%s: tiny model missing", gu_models[i]);
            continue;
        }
        fn(gu_models[i]);
        ran++;
    }
    return ran;
}

int gu_load_json_case(const char *model, const char *golden_json, cJSON **doc, ps_model *m, ps_backend *be) {
    char path[600], dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tu_src("tests/data"), model);
    snprintf(path, sizeof path, "%s/%s", dir, golden_json);
    ps_error e = {0};
    if (!(*doc = ps_json_parse_file(path, &e))) { TU_CHECK(0, "%s", e.msg); return -1; }
    if (ps_model_load(m, dir, &e) != 0) { TU_CHECK(0, "%s", e.msg); cJSON_Delete(*doc); return -1; }
    if (ps_backend_init(be, PS_BACKEND_CPU, PS_PREC_FP32, 1, m, &e) != 0) {
        TU_CHECK(0, "%s", e.msg);
        ps_model_free(m);
        cJSON_Delete(*doc);
        return -1;
    }
    return 0;
}

char *gu_edge_name(const ps_graph *g, int64_t i) {
    char a[64], b[64], buf[140];
    ps_graph_source_name(g, i / g->n_dests, a, sizeof a);
    ps_graph_dest_name(g, i % g->n_dests, b, sizeof b);
    snprintf(buf, sizeof buf, "%s->%s", a, b);
    return strdup(buf);
}
