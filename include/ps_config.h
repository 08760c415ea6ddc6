// The experiment config: a JSON file read once, every field type-checked, into the plain structs below.
// Nothing outside config.c sees cJSON. Errors name the file and the JSON path (e.g. experiments[2].site).
#ifndef PS_CONFIG_H
#define PS_CONFIG_H

#include "ps_common.h"

typedef enum { PS_BACKEND_CPU = 0, PS_BACKEND_CUDA = 1, PS_BACKEND_AUTO = 2 } ps_backend_kind;
typedef enum { PS_PREC_FP32 = 0, PS_PREC_FP16 = 1, PS_PREC_BF16 = 2 } ps_precision;
typedef enum { PS_METRIC_LOGIT_DIFF = 0, PS_METRIC_PROB_DIFF, PS_METRIC_LOGPROB, PS_METRIC_KL } ps_metric_kind;
typedef enum { PS_DIR_DENOISE = 0, PS_DIR_NOISE = 1 } ps_direction;

// Hook sites, with TransformerLens's names (see ps_site_name in forward.c).
typedef enum {
    PS_SITE_RESID_PRE = 0, PS_SITE_RESID_MID, PS_SITE_RESID_POST,
    PS_SITE_ATTN_OUT, PS_SITE_MLP_OUT,
    PS_SITE_Q, PS_SITE_K, PS_SITE_V, PS_SITE_PATTERN, PS_SITE_Z,
    PS_SITE_MLP_POST,   // neurons
    PS_SITE_COUNT
} ps_site;

// How a sweep is laid out: which axes it runs over (layer always first).
typedef enum {
    PS_BY_LAYER_POS = 0,      // resid_*, attn_out, mlp_out; z/q/k/v: every head at once
    PS_BY_LAYER_HEAD,         // z, q, k, v, pattern over all positions
    PS_BY_LAYER_POS_HEAD,     // z, q, k, v by position
    PS_BY_LAYER_NEURON,       // mlp_post over all positions
    PS_BY_LAYER,              // resid_*, attn_out, mlp_out over all positions
} ps_layout;

// How positions of clean and corrupted prompts that tokenize to different lengths line up.
typedef enum { PS_ALIGN_ERROR = 0 } ps_align;

typedef enum { PS_SCORE_FIRST_DIFF = 0, PS_SCORE_SUM_LOGPROB = 1 } ps_multitoken;

typedef struct {
    char *clean, *corrupted, *answer, *wrong;   // UTF-8 text, owned
} ps_item;

typedef struct {
    char *name;                  // unique; becomes /results/<name>
    ps_site site;
    ps_layout layout;
    ps_direction direction;
    int64_t *layers;  int64_t n_layers;    // NULL: all
    int64_t *heads;   int64_t n_heads;     // NULL: all
    int64_t *neurons; int64_t n_neurons;   // NULL: all
    int64_t *positions; int64_t n_positions; // NULL: all; negative counts from the end (-1 = last prompt token)
} ps_experiment;

typedef struct {
    char *path;              // the config file (owned)
    char *text;              // the config verbatim (owned), stored in the results file
    char *model;             // checkpoint directory, resolved relative to the config file's directory
    char *tokenizer;         // NULL: the model directory's tokenizer.json / vocab.json
    ps_backend_kind backend;
    ps_precision precision;
    int threads;             // 0: all cores
    int prepend_bos;         // 1: prepend the tokenizer's BOS (TransformerLens's default)
    char *output;            // results path, resolved like model; -o overrides
    ps_metric_kind metric;
    ps_multitoken multitoken;
    ps_align align;
    int64_t batch_rows;      // 0: planner's choice
    ps_item *items; int64_t n_items;       // the dataset, however it was given
    ps_experiment *experiments; int64_t n_experiments;
} ps_config;

// Reads and validates path. Unknown keys are errors that suggest the nearest valid key.
int ps_config_load(ps_config *c, const char *path, ps_error *e);
void ps_config_free(ps_config *c);

const char *ps_site_name(ps_site s);          // "resid_pre", ..., "mlp_post"
const char *ps_layout_name(ps_layout l);      // "layer_pos", "layer_head", ...
const char *ps_metric_name(ps_metric_kind m); // "logit_diff", ...
const char *ps_direction_name(ps_direction d);
const char *ps_backend_name(ps_backend_kind b);
const char *ps_precision_name(ps_precision p);

#endif
