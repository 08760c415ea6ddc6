// Experiment kinds ("producers"): each kind lays out the result table of every experiment of its kind and
// computes its values. The engine runs them all from one loop. Per-prompt producers run chunk by chunk, from the
// chunk's clean and corrupted runs (full activation caches of the runs some experiment reads: ps_producer.reads),
// after the chunk's baselines; the journal, resume
// and shards then apply to their tables with no per-kind code. Producers whose values are not per prompt (a
// circuit search, copy scores from the weights) run once, after the last chunk.
//
// Adding a kind: its keys in the config (src/inputs/config.c, its name in the config's kind list), one
// ps_producer in src/engine/, and its line in the registry (src/engine/producer.c).
#ifndef PS_PRODUCER_H
#define PS_PRODUCER_H

#include "ps_engine.h"

// What a producer may use during a run (borrowed). rr->base holds the baselines of every prompt done so far,
// the current chunk's included, when chunk() is called.
typedef struct ps_producer_ctx {
    const ps_model *m;
    ps_backend *be;
    const ps_prompt_set *ps;
    ps_metric_kind metric;
    const ps_engine_opts *o;     // naive, batch_rows, dry_run (plan and count, run no rows), stop
    ps_run_results *rr;
    int64_t done, total;         // progress in cells of per-prompt tables; a producer may advance done
    double t_start, t_last;
} ps_producer_ctx;

// One chunk of prompts, their baselines run with every activation cached (a run no experiment reads: zeroed caches).
typedef struct {
    const int64_t *prompts; int64_t n;   // indices into ps
    const ps_cache *clean, *corrupted;   // (n)
    const float *clean_logprobs;         // (n, V) the clean run's log-softmax at score_pos (metric kl), else NULL
    // keep() only (NULL in chunk()): the same caches as clean, which it may move into its own ps_cache for its once()
    // (this slot then zeroed); the engine releases and frees what is left after the chunk.
    ps_cache *clean_to_take;
} ps_chunk;

struct ps_producer;

// One experiment and what its producer keeps for it.
typedef struct ps_product {
    const ps_experiment *ex;
    int64_t idx;                 // its index in the config (messages name experiments[idx])
    ps_table *t;                 // its table (ps_run_results.tables[idx])
    void *state;                 // the producer's, made by init, freed by free_state
    const struct ps_producer *pr;
} ps_product;

typedef struct ps_producer {
    const char *kind;            // the config's experiment "kind" and the table's kind attribute
    int derived;                 // 1: only the config makes it, beside another experiment (NAME.reference_means);
                                 // never a "kind" a user names (tests/test_table.c checks both lists agree)
    int per_prompt;              // 1: chunk() fills the chunk's prompts' rows; 0: once() fills one row
    // Checks p->ex against the model and the prompts (bad input: exit status 2 naming experiments[idx] and the
    // field), lays out p->t (ps_table_init: NaN values) and may set p->state. Runs without a backend: resume
    // and merge lay out tables this way.
    int (*init)(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e);
    // Per-prompt producers: every experiment of this kind at once (n items), for one chunk. A producer that is not
    // per prompt may also read each chunk's runs here (NULL: none), for its once(); the prompts a chunk skips
    // (resumed, another shard's) are then its own to run.
    int (*chunk)(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e);
    // The others: after the last chunk.
    int (*once)(ps_producer_ctx *cx, ps_product *const *items, int64_t n, ps_error *e);
    void (*free_state)(void *state);
    // Which of a chunk's baseline caches an experiment's chunk() reads: PS_READS_CLEAN | PS_READS_CORRUPTED.
    // NULL: both. When no experiment of the run reads one, that run's baselines are computed without a cache
    // (their logits and metrics only): the analyses read the clean run alone.
    unsigned (*reads)(const ps_experiment *ex);
    // Optional, for a producer that is not per prompt: after every producer's chunk() has read the chunk, may take its
    // clean runs (ps_chunk.clean_to_take) for its once(). Its reads() says PS_READS_CLEAN for the engine to cache them.
    int (*keep)(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e);
} ps_producer;

// PS_READS_CLEAN_AS_BASE (with PS_READS_CLEAN): the clean runs serve only as bases of rows without captures and
// without patches at the pattern or mlp_post; when every reader of the clean runs says so and the backend can
// (PS_CAP_LEAN_BASE), the engine holds them lean (PS_CACHE_LEAN): half the memory, and half the pages to fault in.
enum { PS_READS_CLEAN = 1, PS_READS_CORRUPTED = 2, PS_READS_CLEAN_AS_BASE = 4 };

// The producer of a kind; NULL when there is none.
const ps_producer *ps_producer_for(const char *kind);
// The registry's i-th producer, in run order; NULL past the end.
const ps_producer *ps_producer_at(size_t i);

// Progress on stderr when o->progress (at most twice a second; final: the closing line).
void ps_producer_progress(ps_producer_ctx *cx, int final);
// -1 with "interrupted" (PS_EXIT_RUNTIME) once a stop was requested (signals), else 0.
int ps_producer_stopped(const ps_producer_ctx *cx, ps_error *e);

// The patching sweeps (src/engine/sweep_run.c).
extern const ps_producer ps_patch_sweep_producer;
// Path patching (src/engine/path_patch.c, ps_path_patch.h).
extern const ps_producer ps_path_patch_producer;
// The analyses (src/engine/analysis_run.c, ps_analysis.h).
extern const ps_producer ps_dla_producer, ps_logit_lens_producer, ps_attention_producer, ps_ov_scores_producer,
    ps_head_scores_producer;
// Neuron activations per prompt and each experiment's NAME.top ranking, once (src/engine/analysis_run.c).
extern const ps_producer ps_neurons_producer, ps_neuron_top_producer;
// Attribution patching: the sweeps' cells from one backward pass per prompt (src/engine/attribution.c).
extern const ps_producer ps_attribution_producer;
// Edge attribution patching (EAP) on EAP-IG's graph (src/engine/edge_attribution.c).
extern const ps_producer ps_edge_attribution_producer;
// Ablations per prompt and seqcont's circuit search, once (src/engine/ablation_run.c, ps_ablation.h).
extern const ps_producer ps_ablation_producer;
extern const ps_producer ps_circuit_search_producer;
// The reference means a mean-ablating experiment used (its "NAME.reference_means" table, src/engine/ablation_run.c).
extern const ps_producer ps_reference_means_producer;
// Completeness and minimality of an ablation's kept circuit ("NAME.completeness", "NAME.minimality", ablation_run.c).
extern const ps_producer ps_circuit_scores_producer;

#endif
