// Helpers for tests that read the TransformerLens goldens (safetensors files under tests/data/<model>/).
#ifndef PS_GOLDEN_UTIL_H
#define PS_GOLDEN_UTIL_H

#include "ps_backend.h"
#include "ps_graph.h"
#include "ps_safetensors.h"

struct cJSON;

// The tiny models with goldens, in order; gu_model_present says whether its folder exists.
extern const char *const gu_models[];
extern const int gu_n_models;
int gu_model_present(const char *name);
// Runs fn on every tiny model present; a missing GPT-2 model is a failure (they are committed).
// Returns how many ran.
int gu_for_each_model(void (*fn)(const char *name));

// fp32 copy of a golden tensor (malloc'd) or NULL when absent; *n gets its element count.
float *gu_f32(const ps_safetensors *st, const char *key, int64_t *n);
// int32 copy of a golden tensor (malloc'd) or NULL when absent.
int32_t *gu_i32(const ps_safetensors *st, const char *key, int64_t *n);

// Loads tests/data/<model>/<golden_json> (the caller frees *doc with cJSON_Delete), the model and a 1-thread CPU
// backend; on failure reports it (TU_CHECK), frees what it made and returns -1.
int gu_load_json_case(const char *model, const char *golden_json, struct cJSON **doc, ps_model *m, ps_backend *be);

// Edge i of graph g (source i / n_dests, destination i % n_dests) as a config names it, "src->dst"; the caller
// frees it (NULL when out of memory).
char *gu_edge_name(const ps_graph *g, int64_t i);

#endif
