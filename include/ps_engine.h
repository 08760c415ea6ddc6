// The experiment engine: tokenized prompts, baseline runs, every experiment run by its kind's producer
// (ps_producer.h), patch sweeps planned as batches of rows.
// A sweep reuses the base run's cache below the patched layer and before the first position the patch
// changes, skips patches that change nothing, and unembeds only what the metric reads.
#ifndef PS_ENGINE_H
#define PS_ENGINE_H

#include "ps_backend.h"
#include "ps_config.h"
#include "ps_results.h"
#include "ps_tokenizer.h"

// One dataset item, tokenized. Sequences hold the prompt and the teacher-forced answer prefix.
typedef struct {
    int32_t *clean, *corrupted;  // (T)
    int64_t T;                   // sequence length (prompt + teacher-forced answer tokens)
    int64_t T_prompt;            // tokens of the prompt alone (BOS included)
    int64_t score_pos;           // position whose next-token distribution the metric reads
    int32_t answer_id, wrong_id; // tokens compared at score_pos (first tokens where answer and wrong differ)
    int64_t n_lp;                // logprob metric: the answer tokens, teacher-forced
    int64_t *lp_pos;             // (n_lp) positions
    int32_t *lp_tok;             // (n_lp) target tokens
    int64_t n_roles;             // named positions ("S2", "IO"), borrowed from the dataset item
    char *const *role_name;
    const int64_t *role_pos;
    const char *group;           // its template group (dataset field "template"), borrowed; NULL when none
} ps_prompt;

typedef struct ps_prompt_set {
    ps_prompt *p; int64_t n;     // owned
    int64_t T_max;
    const ps_tokenizer *tok;     // borrowed: the tokenizer the prompts came from (producers tokenize their own lists)
    int32_t bos;                 // the BOS prepended to every prompt, or -1 (prepend_bos false)
    int no_corrupted;            // 1: the dataset has no corrupted prompts (corrupted = clean; never run, baselines NaN)
    // The experiments' reference sets (kinds ablation, circuit_search): ref[i] is experiments[i]'s, n 0 when it
    // has none; only clean tokens (corrupted = clean), no answers. NULL when no experiment has one. Owned.
    struct ps_prompt_set *ref; int64_t n_ref;
} ps_prompt_set;

// Tokenizes the config's dataset and each experiment's reference set (BOS per cfg->prepend_bos). Prompts whose
// clean and corrupted versions differ in length are an error that shows both tokenizations.
int ps_prompts_build(ps_prompt_set *ps, const ps_config *cfg, const ps_tokenizer *tok, const ps_model_config *mc, ps_error *e);
void ps_prompt_set_free(ps_prompt_set *ps);

// Metric-side view of a row's logits.
typedef struct {
    int64_t n_out; int64_t out_pos[PS_MAX_OUT_POS];
    int64_t n_cols; int32_t cols[2];   // n_cols 0 = all V columns
} ps_metric_request;

void ps_metric_request_for(ps_metric_kind kind, const ps_prompt *p, ps_metric_request *rq);
// logits laid out as the request asked; clean_logprobs: (V) log-softmax of the clean run at score_pos (KL only).
double ps_metric_value(ps_metric_kind kind, const ps_prompt *p, const ps_metric_request *rq, const float *logits,
                       int64_t V, const float *clean_logprobs);
// d ps_metric_value / d logits, laid out (rq->n_out, V) (rq must ask for all V columns: n_cols 0; logits likewise).
// NaN for kl without clean_logprobs.
void ps_metric_grad(ps_metric_kind kind, const ps_prompt *p, const ps_metric_request *rq, const float *logits, int64_t V,
                    const float *clean_logprobs, float *dlogits);

struct ps_run_results;

// Prompt i's block: the prompts whose baseline and sweep rows may share a backend call (blocks of `per` consecutive prompts by
// index, per <= 1: each prompt its own). A row's numbers depend on the other rows of its call, so a block is never
// split by chunks, shards or resuming, and its numbers are the same however the run is cut.
static inline int64_t ps_prompt_block(int64_t i, int64_t per) { return per > 1 ? i / per : i; }
// Shard `index` of `count` runs the prompts of every count-th block, from block `index`.
static inline int ps_shard_owns(int64_t i, int64_t per, int index, int count) {
    return ps_prompt_block(i, per) % count == index;
}

// Called after each chunk of prompts is complete (its baseline and every sweep's values are final),
// so the caller can commit them; a non-zero return stops the run with that error.
typedef int (*ps_chunk_fn)(void *ctx, const int64_t *prompts, int64_t n, const struct ps_run_results *rr, ps_error *e);

typedef struct {
    int naive;           // oracle mode: every patch a full forward from the embedding, nothing skipped or reused
    int64_t batch_rows;  // rows per backend call (0: 512)
    int64_t batch_prompts; // baselines and sweeps: a call's group holds the rows of one block of prompts (ps_prompt_block; 0 or 1: of one
                           // prompt); chunks end at blocks' ends, and todo must hold whole blocks (ps_shard_owns)
    int progress;        // 1: progress lines on stderr
    size_t cache_budget; // bytes of activation caches held at once (0: 2 GiB)
    int64_t chunk_prompts; // at most this many prompts per chunk (0: as many as the cache budget allows)
    const int64_t *todo; int64_t n_todo; // prompts this run owns (NULL: all); the others stay NaN
    const uint8_t *skip; // (n_prompts) or NULL: owned prompts already done (resume); chunks are still formed over
                         // todo, so a resumed run computes exactly the batches an uninterrupted one does
    int dry_run;         // run the baselines, plan every sweep row, count FLOPs, but run no sweep row
    int no_fuse;         // streamed weights: the sweeps' rows in calls after the baselines' call, not in it (tests)
    volatile int *stop;  // when it becomes non-zero the run stops at the next batch (signals)
    ps_chunk_fn on_chunk; void *chunk_ctx;
} ps_engine_opts;

// One patching sweep: how the engine lays out an experiment's cells (layer, [pos], [head|neuron]) and the
// table (ps_table.h, kind "patch_sweep") its values go to.
typedef struct {
    const ps_experiment *ex;
    int n_axes;
    const char *axis_name[3];
    int64_t axis_len[3];
    int64_t *axis_value[3];     // owned: the config's values (negative positions and roles unresolved)
    int64_t n_cells;            // product of axis_len
    ps_table *t;                // the run's table of this experiment (borrowed from ps_run_results.tables)
} ps_sweep;

// A run's results: the baseline, one table per experiment (tables[i] is experiments[i]'s) and what the
// experiment's producer (ps_producer.h) keeps for it (products[i]; a patching sweep's state is its ps_sweep).
struct ps_product;
// Batches of a chunk's sweep rows that streamed weights run in the baselines' own call (the fused pass).
#define PS_FUSED_BATCHES 16
typedef struct ps_run_results {
    ps_baseline base;
    ps_table *tables; int64_t n_tables;         // owned
    struct ps_product *products; int64_t n_products; // owned; products[i].t == &tables[i]
    int64_t rows_planned;       // rows the producers ran (or, in a dry run, would run)
    int64_t rows_fused;         // streamed weights: sweep rows whose logits came from the baselines' call (fused pass:
                                // up to PS_FUSED_BATCHES batches of a chunk's rows)
    int64_t rows_fused_wasted;  // rows computed in that call whose plan turned out otherwise (run again)
    size_t peak_cache_bytes;    // activation caches held at once (a dry run's estimate: the same accounting)
    size_t held_cache_bytes;    // of them, caches producers keep across chunks (a search's baselines for its first circuit)
    double baseline_flops;      // the clean and corrupted runs
    double seconds;             // wall time of ps_engine_run
} ps_run_results;

// Runs the baseline and every experiment over the prompts in o->todo (all by default), each by its kind's
// producer (ps_producer.h), then computes the normalized values and the means (ps_engine_finish). The
// producers check their experiments against the model (bad input: exit status 2, naming the experiment and field).
// A stop request returns -1 with e->code = PS_EXIT_RUNTIME and "interrupted" in the message.
int ps_engine_run(const ps_model *m, ps_backend *be, const ps_prompt_set *ps, const ps_experiment *exps, int64_t n_exps,
                  ps_metric_kind metric, const ps_engine_opts *o, ps_run_results *out, ps_error *e);

// Allocates out for these experiments (values NaN, laid out by their producers) without running anything:
// resume fills it.
int ps_run_results_init(ps_run_results *out, const ps_model_config *mc, const ps_prompt_set *ps, const ps_experiment *exps,
                        int64_t n_exps, ps_error *e);
// Every table's derived datasets (normalized values per prompt, means over the prompts that have values).
void ps_engine_finish(ps_run_results *out);
void ps_run_results_free(ps_run_results *r);

// Rows with interventions (ps_patch: replace, freeze, zero, mean, add, scale; ps_capture), planned the way
// sweeps plan theirs. The caller sets each row's tokens, T, base (the unpatched run of the same tokens),
// patches, captures, out_pos/n_out, cols and logits; the engine sets start_layer, start_pos and the
// narrowing from what the patches can change, checks every row against the model and the backend's
// capabilities (bad input, naming the row and what the backend lacks: never a silently different number)
// and runs them in batches. A row no patch can change runs only its unembedding, from base's final state
// (its captures are base's). Cache rows (row.cache) run as full forwards.
typedef struct {
    int naive;           // every row a full forward from the embedding, nothing skipped or narrowed (base cleared)
    int64_t batch_rows;  // rows per backend call (0: 512)
    // > 0: each call's rows in groups of this many consecutive rows, each group's numbers those of a call of its
    // own (ps_backend.forward_groups, where the backend has it; the CPU runs small groups whole, one a thread, in
    // turn): a row's numbers then depend on its group's rows only, not on the threads or the call.
    int64_t group_rows;
} ps_rows_opts;

typedef struct {
    int64_t rows_run;        // rows sent to the backend
    int64_t rows_unchanged;  // of which known to equal base (only the unembedding ran)
    int64_t rows_narrowed;
    double flops;
} ps_rows_stats;

int ps_engine_rows(const ps_model *m, ps_backend *be, ps_row *rows, int64_t n_rows, const ps_rows_opts *o, ps_rows_stats *st,
                   ps_error *e);

// Position of role `name` in prompt p, or -1 when the prompt does not name it.
int64_t ps_prompt_role(const ps_prompt *p, const char *name);

#endif
