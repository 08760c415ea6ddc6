// The HDF5 results file (schema: experiments/README.md): run metadata, prompts, baseline metrics and one
// group per result table, with axes labelled by HDF5 dimension scales. Written to OUT.h5.partial and renamed
// on success, and /run has attribute status = "running" until ps_store_close(..., complete=1). Also `inspect`
// (inspect.c) and `merge` (merge.c), which read any table without knowing its producer.
#ifndef PS_STORE_H
#define PS_STORE_H

#include "ps_results.h"

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
    const char *architecture;    // ps_arch_name: "GPT-2", "Llama", "GPT-NeoX"; NULL: not written
    const char *blas;            // the CPU backend's BLAS and kernel (ps_blas_describe); NULL: not written (cuda)
    int threads;
    int prepend_bos;
    int64_t bos_id;              // -1 when none prepended
    const char *metric;          // "logit_diff", ...
    const char *identity;        // sha256 of version, weights, tokenizer, config text and shard: what resume checks
    const char *run_identity;    // the same without the shard: what merge requires all shards to share
    const char *base_identity;   // the run-wide identity with the shard, experiments aside: what reusing a table needs
    const char *inputs_json;     // every input file: JSON [{"kind", "path", "sha256", "bytes"}]; NULL: not written
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

// All functions copy what they need; the caller keeps ownership of every array it passes.
// Axis names must be distinct, not "prompt", "values", "normalized", "mean", "mean_normalized", "pos_token",
// and not end in "_label". Write prompts before tables so a pos axis is labelled with prompt 0's tokens.
// Errors are PS_EXIT_RUNTIME with one line naming PATH.partial and the HDF5 object.
// Serial HDF5 is not thread-safe: call these from one thread (not inside OpenMP regions).
int ps_store_open(ps_store **s, const char *path, ps_error *e);   // creates path.partial (and missing parent dirs)
int ps_store_write_run(ps_store *s, const ps_run_info *r, ps_error *e);
int ps_store_write_prompts(ps_store *s, const ps_prompts_info *p, ps_error *e);
int ps_store_write_baseline(ps_store *s, const ps_baseline *b, ps_error *e); // NULL columns are not written
// /results/<name>: values (prompt axis first when per prompt), the derived datasets present (mean computed
// here when NULL), a scale per axis plus its string labels, attribute kind, every ps_attr and the counters.
int ps_store_write_table(ps_store *s, const ps_table *t, ps_error *e);
// complete=1: sets /run status "complete", closes, renames path.partial -> path.
// complete=0: closes and leaves path.partial with status "running" (never mistaken for complete).
// Always frees s, also when it fails.
int ps_store_close(ps_store *s, int complete, ps_error *e);

// `patchsweep inspect FILE`: prints a summary of a results file to stdout (an unfinished file is flagged
// "INCOMPLETE"; one of the layout before schema_version is read with a note). A missing file, or one that is
// not HDF5 or has no /run group: PS_EXIT_BADINPUT naming it.
// Built in a child process: a file that crashes libhdf5 is PS_EXIT_BADINPUT "PATH: corrupt: libhdf5 crashed ...".
int ps_store_inspect(const char *path, ps_error *e);
int ps_store_inspect_in_process(const char *path, ps_error *e); // the same without the child (the fuzz target)

// Checks the sha256 of every dataset of a complete results file (what ps_store_close wrote as attribute sha256):
// 0, or PS_EXIT_BADINPUT "PATH: /DATASET: checksum mismatch ..." (or: no checksums, unreadable: corrupt).
int ps_store_verify(const char *path, ps_error *e);

// The /run identity attribute of a complete results file (status "complete") of this schema; -1 otherwise.
int ps_store_read_identity(const char *path, char identity[65], ps_error *e);

// A complete results file read back (readback.c) for reusing its tables: verified (seal and every dataset's
// sha256) and read in a child process, so a crafted file that crashes libhdf5 is one line, PS_EXIT_BADINPUT.
typedef struct {
    char base_identity[65];          // /run base_identity; "" when absent (written before per-experiment identities)
    ps_baseline base;                // the baseline columns
    ps_table *tables; int64_t n_tables; // every /results table, in file order: axes, labels, values, counters and its
                                     // attributes (identity and config among them); derived datasets are not read
} ps_stored_run;
int ps_store_read_run(const char *path, ps_stored_run *s, ps_error *e);
// Its two halves apart (for the fuzz target): what the child reads (the file's tables as a byte stream, *out
// malloc'd; libhdf5 in this process), and the parse of such a stream with bounds checks (s owns nothing on failure).
int ps_store_run_stream(const char *path, unsigned char **out, size_t *out_len, ps_error *e);
int ps_store_parse_run(const unsigned char *bytes, size_t n, const char *path, ps_stored_run *s, ps_error *e);
void ps_stored_run_free(ps_stored_run *s);

// `patchsweep merge OUT SHARD...`: combines shard files of one run into the file a single run writes.
// Refuses (exit 2) shards of different runs, a missing or duplicated shard, an incomplete shard file, a file of
// the layout before schema_version, or a table whose values are not per prompt.
// libhdf5 reads the shards only in a child process (their checksums verified there first), which builds the merged
// file in memory and sends its bytes back; this process writes them (OUT.partial, fsync, rename). A shard that crashes
// libhdf5 anywhere in the merge is PS_EXIT_BADINPUT, one line, nothing written.
int ps_store_merge(const char *out, const char *const *shards, int n_shards, ps_error *e);
int ps_store_merge_in_process(const char *out, const char *const *shards, int n_shards, ps_error *e); // no child (fuzz target)

#endif
