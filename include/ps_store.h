// The HDF5 results file: run metadata, prompts, baseline metrics and one group per experiment,
// with axes labelled by HDF5 dimension scales. Written to OUT.h5.partial and renamed on success,
// and /run has attribute status = "running" until ps_store_close(..., complete=1).
#ifndef PS_STORE_H
#define PS_STORE_H

#include "ps_common.h"

typedef struct ps_store ps_store; // opaque (holds the HDF5 file id)

typedef struct {
    const char *config_text;     // the config verbatim
    const char *config_path;
    const char *version;         // PS_VERSION
    const char *model_dir;
    const char *weights_sha256;
    const char *tokenizer_path;
    const char *tokenizer_sha256;
    const char *backend;         // "cpu", "cuda"
    const char *precision;       // "fp32", ...
    const char *weights_dtype;   // dtype in the checkpoint file
    const char *blas;            // the CPU backend's BLAS and kernel (ps_blas_describe); NULL: not written (cuda)
    int threads;
    int prepend_bos;
    int64_t bos_id;              // -1 when none prepended
    const char *metric;          // "logit_diff", ...
    const char *identity;        // sha256 of version, weights, tokenizer, config text and shard: what resume checks
    const char *run_identity;    // the same without the shard: what merge requires all shards to share
    int64_t shard_index, shard_count; // this file holds the prompts i with i % shard_count == shard_index
} ps_run_info;

// Per prompt: tokens of the clean and the corrupted prompt (teacher-forced answer tokens included),
// padded to T_max with -1 (ids) and "" (strings).
typedef struct {
    int64_t n_prompts, T_max;
    const int64_t *length;            // (n_prompts) tokens per prompt
    const int64_t *prompt_length;     // (n_prompts) tokens before the answer begins
    const int32_t *clean_ids;         // (n_prompts, T_max)
    const int32_t *corrupted_ids;     // (n_prompts, T_max)
    const char *const *clean_str;     // (n_prompts * T_max) token strings
    const char *const *corrupted_str; // (n_prompts * T_max)
    const char *const *clean_text, *const *corrupted_text, *const *answer_text, *const *wrong_text; // (n_prompts)
    const int32_t *answer_id, *wrong_id; // (n_prompts) the scored token of each (first differing)
    const uint8_t *in_run;            // (n_prompts) 1 where this file holds the prompt's results (shards)
} ps_prompts_info;
// Any array left NULL is simply not written (ps_store_write_prompts). Strings are stored as variable-length UTF-8;
// bytes that are not valid UTF-8 (half a character in a byte-level BPE token) become U+FFFD, the ids stay exact.

typedef struct {
    int64_t n_prompts;
    const float *clean, *corrupted;               // (n_prompts) metric on the unpatched runs
    const float *clean_answer_logit, *clean_wrong_logit;         // (n_prompts)
    const float *corrupted_answer_logit, *corrupted_wrong_logit; // (n_prompts)
} ps_baseline_info;

#define PS_STORE_MAX_AXES 4
typedef struct {
    const char *name;            // group /results/<name>
    const char *site, *layout, *direction, *metric;
    int n_axes;                  // axes after the prompt axis, e.g. 2: layer, pos
    const char *axis_name[PS_STORE_MAX_AXES];   // "layer", "pos", "head", "neuron"
    int64_t axis_len[PS_STORE_MAX_AXES];
    const int64_t *axis_value[PS_STORE_MAX_AXES]; // the labels: layer indices, head indices, ...; NULL: 0..len-1
    const char *const *pos_labels;  // NULL, or (pos axis length): a label overriding the token string (role names)
    const char *const *pos_tokens;  // when an axis is "pos": token strings of prompt 0 at each position (T_max),
                                    // indexed by position (pos_tokens[axis_value[i]]); NULL: taken from /prompts
    const float *values;          // (n_prompts, axes...) raw metric; NaN where a prompt has no such position
    const float *normalized;      // (n_prompts, axes...) (x - corrupted)/(clean - corrupted) per prompt; NULL: omitted
    const float *mean;            // (axes...) mean over prompts of values (NaN ignored); NULL: computed here
    const float *mean_normalized; // (axes...) (mean x - mean corrupted)/(mean clean - mean corrupted); NULL: omitted
    int64_t n_prompts;
    int64_t patches_run, patches_skipped; // what the engine ran and what it knew without running
} ps_result_info;

// All functions copy what they need; the caller keeps ownership of every array it passes.
// Axis names must be distinct and not "prompt", "values", "normalized", "mean", "mean_normalized", "pos_token".
// Write prompts before results so pos labels can be checked against T_max.
// Errors are PS_EXIT_RUNTIME with one line naming PATH.partial and the HDF5 object.
// Serial HDF5 is not thread-safe: call these from one thread (not inside OpenMP regions).
int ps_store_open(ps_store **s, const char *path, ps_error *e);   // creates path.partial (and missing parent dirs)
int ps_store_write_run(ps_store *s, const ps_run_info *r, ps_error *e);
int ps_store_write_prompts(ps_store *s, const ps_prompts_info *p, ps_error *e);
int ps_store_write_baseline(ps_store *s, const ps_baseline_info *b, ps_error *e);
int ps_store_write_result(ps_store *s, const ps_result_info *r, ps_error *e);
// complete=1: sets /run status "complete", closes, renames path.partial -> path.
// complete=0: closes and leaves path.partial with status "running" (never mistaken for complete).
// Always frees s, also when it fails.
int ps_store_close(ps_store *s, int complete, ps_error *e);

// `patchsweep inspect FILE`: prints a summary of a results file to stdout (an unfinished file is flagged
// "INCOMPLETE"). A missing file, or one that is not HDF5 or has no /run group: PS_EXIT_BADINPUT naming it.
int ps_store_inspect(const char *path, ps_error *e);

// The /run identity attribute of a complete results file (status "complete"); -1 otherwise.
int ps_store_read_identity(const char *path, char identity[65], ps_error *e);

// `patchsweep merge OUT SHARD...`: combines shard files of one run into the file a single run writes.
// Refuses (exit 2) shards of different runs, a missing or duplicated shard, or an incomplete shard file.
int ps_store_merge(const char *out, const char *const *shards, int n_shards, ps_error *e);

#endif
