// Ablation circuits as library functions: mean activations over a reference prompt set (means.c), rows
// that ablate a set of components or everything outside a kept circuit, scored per prompt (ablation.c),
// and seqcont's iterative node pruning with speculative batches (circuit_search.c). Results are plain
// arrays here; ablation_table.c turns them into result tables (ps_table.h).
#ifndef PS_ABLATION_H
#define PS_ABLATION_H

#include "ps_engine.h"
#include "ps_table.h"

typedef enum { PS_COMP_HEAD = 0, PS_COMP_MLP, PS_COMP_NEURON } ps_comp_kind;

// One component, optionally only at some positions (borrowed arrays).
typedef struct {
    ps_comp_kind kind;
    int64_t layer;
    int64_t index;              // head (at hook_z, or hook_result: ps_ablator.heads_at_result) or neuron (at hook_mlp_post);
                                // -1 for an MLP layer (hook_mlp_out)
    const int64_t *pos;         // NULL: every position; else (n_pos), negative counts from the end of the prompt
    int64_t n_pos;
    char *const *pos_role;      // NULL or (n_pos): a role name where pos[k] names one ("end" is pos -1)
} ps_component;

// "h9.1", "mlp3", "n2.17" (head 1 of layer 9, MLP of layer 3, neuron 17 of layer 2). Parse: 0, or -1 when
// s is none of these (c->pos etc. are cleared).
int ps_component_parse(const char *s, ps_component *c);
void ps_component_label(const ps_component *c, char *buf, size_t n);
// 0, or -1 (PS_EXIT_BADINPUT) when the model lacks the component's layer, head or neuron; `where` prefixes
// the message (e.g. "cfg.json: experiments[1].keep[3]").
int ps_component_check(const ps_model_config *mc, const ps_component *c, const char *where, ps_error *e);

typedef enum { PS_ABL_ZERO = 0, PS_ABL_MEAN, PS_ABL_RESAMPLE, PS_ABL_CORRUPTED } ps_abl_method;
typedef enum { PS_GROUP_PER_POSITION = 0, PS_GROUP_ALL_POSITIONS, PS_GROUP_PER_TEMPLATE_POSITION } ps_mean_group;
const char *ps_abl_method_name(ps_abl_method m);   // "zero", "mean", "resample", "corrupted"
const char *ps_mean_group_name(ps_mean_group g);   // "per_position", "all_positions", "per_template_position"

// The sites means are kept for (hook_result only for heads ablated there).
enum { PS_MS_Z = 0, PS_MS_MLP_OUT, PS_MS_MLP_POST, PS_MS_RESULT, PS_MS_COUNT };

// Mean activations over a reference prompt set, per group and position (computed once per run).
typedef struct {
    ps_mean_group group;
    int64_t n_groups;           // 1 unless per_template_position
    int64_t rows;               // positions per group: the reference prompts' length, or 1 (all_positions)
    int64_t n_ref;
    int64_t width[PS_MS_COUNT]; // H*D, C, M, H*C (result: 0 when not computed)
    float *site[PS_MS_COUNT];   // owned: (L, n_groups, rows, width[s]); NULL for a site not computed
    int64_t *group_count;       // owned: (n_groups) reference prompts in each group
} ps_ref_means;

// The view a mean patch of site s (PS_MS_*) at layer l reads for a prompt of group g.
ps_view ps_ref_means_view(const ps_ref_means *rm, int s, int64_t l, int64_t g);

// Means of hook_z, hook_mlp_out and hook_mlp_post at every layer over the reference prompts' clean
// sequences. group_of: (ref->n) group index of each prompt for per_template_position (NULL otherwise),
// n_groups groups. per_position and per_template_position need every prompt of a group to have one length
// (bad input otherwise, naming `where`). Sums in double, in prompt order.
int ps_ref_means_compute(const ps_model *m, ps_backend *be, const ps_prompt_set *ref, ps_mean_group group,
                         const int64_t *group_of, int64_t n_groups, const char *where, ps_ref_means *out, ps_error *e);
// The same with heads_at_result: hook_result (L, G, rows, H*C) in place of hook_z (CPU backend: PS_CAP_RESULT).
int ps_ref_means_compute_heads(const ps_model *m, ps_backend *be, const ps_prompt_set *ref, ps_mean_group group,
                               const int64_t *group_of, int64_t n_groups, int heads_at_result, const char *where, ps_ref_means *out,
                               ps_error *e);
void ps_ref_means_free(ps_ref_means *rm);

// A set of components to ablate, or (keep = 1) a circuit to keep: then every head and MLP layer of the
// model is ablated except the set's, each of those kept only at its positions (all when it lists none).
// Neurons may only be ablated, not kept.
typedef struct {
    const ps_component *c; int64_t n;
    int keep;
    // Means under other ablations (option "mlp_means": "under_head_ablation", seqcont's code): NULL = the
    // ablator's means for MLP sites too; else these MLP means (from ps_ablator_mlp_means_under).
    const ps_ref_means *mlp_means;
} ps_abl_set;

// Everything shared by the ablation rows of one run: the prompts, the unablated metric, the method.
typedef struct {
    const ps_model *m;
    ps_backend *be;
    const ps_prompt_set *ps;      // the prompts scored (borrowed)
    ps_metric_kind metric;        // logit_diff, prob_diff or logprob (KL is refused)
    ps_abl_method method;
    int heads_at_result;          // 1: heads ablated at hook_result (after W_O; means need PS_MS_RESULT), 0: at hook_z
    const ps_ref_means *means;    // mean (borrowed)
    const int64_t *group_of;      // (ps->n) per_template_position: each prompt's group (borrowed)
    const ps_prompt_set *ref;     // resample: the prompts taken from (borrowed)
    uint64_t seed;                // resample
    const int64_t *draws;         // resample: NULL, draw from seed; else (ps->n) each prompt's reference prompt (borrowed:
                                  // a run scoring its prompts chunk by chunk draws once over all of them)
    int64_t batch_rows;           // rows per backend call, one batch each (0: up to 1024 scored rows a call, in groups)
    int64_t group_rows;           // with batch_rows 0: scored rows a group (0: 32), each group's numbers its own call's on
                                  // one thread, whatever the thread count (ps_rows_opts.group_rows)
    const ps_cache *base;         // NULL, or (ps->n) runs of the prompts the rows may start from: a row's patches that
                                  // leave base's values as they are do not make it recompute (the circuit search's
                                  // current circuit, so a candidate's row starts at its own layer). Borrowed.
    int full_later;               // 1: ps_ablator_init leaves full unset; the caller calls ps_ablator_full, e.g. once it
                                  // holds base runs of the unablated model (the search's first circuit: then cheap)
    // Set by ps_ablator_init (owned):
    int64_t *resample_from;       // (ps->n) resample: the reference prompt each prompt takes activations from
    ps_cache *src;                // (ps->n) resample: that prompt's run; corrupted: the prompt's corrupted run
    float *full;                  // (ps->n) the metric of the unablated model
    double full_mean;
    ps_rows_stats stats;          // summed over every call
} ps_ablator;

// The resample draws of prompts ps from ref: from (ps->n), the reference prompts of the same length, xorshift64*
// from seed, one draw per prompt in order. Bad input (naming `where`) when a prompt's length has none.
int ps_abl_resample_draws(const ps_prompt_set *ps, const ps_prompt_set *ref, uint64_t seed, const char *where, int64_t *from,
                          ps_error *e);

// Fills the owned fields (resample sources: the reference prompts of the same length, xorshift64* from seed,
// one draw per prompt in order); checks lengths (bad input naming `where`). On error owns nothing.
int ps_ablator_init(ps_ablator *a, const char *where, ps_error *e);
// The unablated metric (full, full_mean): ps_ablator_init's last step, from a->base's runs when set.
int ps_ablator_full(ps_ablator *a, ps_error *e);
void ps_ablator_free(ps_ablator *a);

// The metric per prompt with each set ablated: values (n_sets, ps->n).
// (With a->base, rows start where their patches first differ from it; the numbers are the same.)
int ps_ablator_score(ps_ablator *a, const ps_abl_set *sets, int64_t n_sets, float *values, ps_error *e);

// Every prompt run with `set` ablated, each activation recorded: caches (ps->n), initialised here (free them with
// ps_backend_drop_caches(a->be, ...), their device copies with them; on error none is held); with heads_at_result
// they hold hook_result too (PS_CACHE_RESULT).
int ps_ablator_runs(const ps_ablator *a, const ps_abl_set *set, ps_cache *caches, ps_error *e);

// seqcont's MLP means: hook_mlp_out / hook_mlp_post means over the reference prompts run with every head
// outside `keep` (heads only; MLPs untouched) mean-ablated with rm's z means. out: a ps_ref_means with only
// the MLP sites (free with ps_ref_means_free).
int ps_ablator_mlp_means_under(const ps_ablator *a, const ps_prompt_set *ref, const ps_abl_set *keep, ps_ref_means *out,
                               ps_error *e);
// The same from ref_base (ref->n): the reference prompts run under another set's head ablation that agrees with
// keep's below from_layer, and below, that run's means (from this function): the MLP means of layers below
// from_layer are below's, the rest from rows that start where keep's patches first differ (the same numbers).
int ps_ablator_mlp_means_under_from(const ps_ablator *a, const ps_prompt_set *ref, const ps_abl_set *keep, const ps_cache *ref_base,
                                    int64_t from_layer, const ps_ref_means *below, ps_ref_means *out, ps_error *e);
// The reference prompts run under keep's head ablation (the runs those means are taken over): caches (ref->n),
// initialised here (free each with ps_cache_free; on error none is held).
int ps_ablator_ref_runs(const ps_ablator *a, const ps_prompt_set *ref, const ps_abl_set *keep, ps_cache *caches, ps_error *e);

// Scores of one ablated set from its per-prompt values (n): mean metric, seqcont's 100 x mean / mean(full),
// faithfulness mean / mean(full) (IOI's F(C)/F(M)).
typedef struct { double mean, circuit_score, faithfulness; } ps_abl_scores;
ps_abl_scores ps_abl_scores_of(const ps_ablator *a, const float *values);

// Completeness and minimality of a kept circuit C (ablation_scores.c; the IOI paper, Wang et al. 2022, and ARENA's
// IOI exercises). F(X) = the mean metric over the prompts with X kept (everything outside X ablated with the
// ablator's method); F(M) the unablated model's; F(M\K) the model with only K's components ablated (where C holds
// them: a component C keeps only at some positions is ablated only there).
//   completeness(K) = |F(C\K) - F(M\K)|                     (the paper's, for each listed K subset of C)
//   minimality(v)   = |F(C\(K_v + {v})) - F(C\K_v)| / F(M)  (ARENA's plot: a fraction of the full model's metric;
//                     abs_change is the paper's unnormalised |...|), for every v in C, K_v per v (default empty)
// A subset of C's components by index (borrowed).
typedef struct { const int64_t *idx; int64_t n; } ps_comp_subset;
// The rows: sets[PS_CR_C] = C, sets[PS_CR_M] = nothing ablated, then C\K_j and M\K_j for each K_j, then
// C\K_v and C\(K_v + v) for each v of C (when minimality). Every set's MLP means are C's (mlp_means).
typedef struct {
    ps_abl_set *sets; int64_t n_sets;   // owned
    ps_component *comps;                // owned: the sets' components (copies of C's, positions borrowed from C)
    int64_t n_k, n_v;                   // n_v: C->n with minimality, else 0
} ps_circuit_rows;
enum { PS_CR_C = 0, PS_CR_M = 1 };
static inline int64_t ps_cr_c_minus_k(int64_t j) { return 2 + 2 * j; }
static inline int64_t ps_cr_m_minus_k(int64_t j) { return 3 + 2 * j; }
static inline int64_t ps_cr_c_minus_kv(const ps_circuit_rows *r, int64_t v) { return 2 + 2 * r->n_k + 2 * v; }   // + 1: C\(K_v+v)
// ks: (n_k) the K's of completeness; kv: NULL (no minimality) or (C->n) each component's K. Bad input when a K
// holds an index twice or outside C, or K_v holds v. r is initialised here (ps_circuit_rows_free).
int ps_circuit_rows_init(const ps_abl_set *C, const ps_comp_subset *ks, int64_t n_k, const ps_comp_subset *kv, ps_circuit_rows *r,
                         ps_error *e);
void ps_circuit_rows_free(ps_circuit_rows *r);
// From F (n_sets): the mean metric of each row's set: completeness (n_k); minimality (n_v, 2): abs_change, minimality.
void ps_circuit_scores(const ps_circuit_rows *r, const double *F, double *completeness, double *minimality);

// seqcont's iterative node pruning (apartresearch/seqcont_circuits, src/iter_node_pruning/).
typedef struct {
    double threshold;            // a component goes when 100 - score < threshold (points)
    int one_iter;                // 1: one backward and one forward pass
    int mlp_means_under_heads;   // 1: seqcont's MLP means, under the candidate's head ablation
    int64_t speculate;           // candidates scored per batch (0: about 32 prompt rows a batch, 1..8 candidates);
                                 // the result does not depend on it
    size_t base_budget;          // bytes of the current circuit's runs held to start rows at their layer (0: 2 GiB)
    const ps_prompt_set *ref;    // the reference prompts (for mlp_means_under_heads)
    int naive;                   // 1: every row and reference run from the embedding, every set's MLP means afresh (no base runs,
                                 // nothing reused or skipped; the oracle)
    // NULL, or (ps->n) runs of the unablated model on every prompt's clean tokens (cache flags 0: the engine's clean
    // baselines), which become the first circuit's runs instead of running them again. Their caches are the search's
    // from the call on, used or not (it frees them); the array stays the caller's.
    ps_cache *full_runs;
} ps_search_opts;

typedef struct {
    int64_t pass;                // 0, 1, ...: even = backward, odd = forward
    ps_component cand;           // head or MLP layer (no positions)
    double score_before;         // the circuit's score before this step
    double score;                // 100 x metric(circuit without cand) / metric(full)
    int removed;
} ps_search_step;

typedef struct {
    ps_search_step *steps; int64_t n_steps;   // owned
    uint8_t *head_kept;          // (L, H) owned: the final circuit
    uint8_t *mlp_kept;           // (L) owned
    double final_score;          // the final circuit's score
    int64_t n_passes;
    int64_t candidates_scored;   // including speculative ones discarded
    int64_t candidates_reused;   // steps whose score was known: scored before for the same circuit (not counted above)
    int64_t cycle_from;          // -1; else pass n_passes would start from the circuit pass cycle_from started from (same
                                 // direction): seqcont's loop would repeat passes cycle_from .. n_passes-1 for ever, so it stopped
} ps_search_result;

// Runs the search from the full model with the ablator's method and means.
int ps_circuit_search(ps_ablator *a, const ps_search_opts *o, ps_search_result *out, ps_error *e);
// The runs the search holds through its steps, in bytes of whole caches: every prompt's (*base_bytes) and the reference
// prompts' for MLP means under head ablation (*ref_bytes), each 0 where o->base_budget leaves it out. (Baselines handed
// over in o->full_runs are held as they are: lean ones in less.)
void ps_search_run_bytes(const ps_ablator *a, const ps_search_opts *o, size_t *base_bytes, size_t *ref_bytes);
void ps_search_result_free(ps_search_result *r);

// Result tables (ablation_table.c); t is initialised here and owned by the caller (ps_table_free).
// Ablation values: kind "ablation", per prompt over a "component" axis (one cell per set, labelled
// labels[s], e.g. "h9.1" or "keep:seqcont"), values[s * n + i] the metric of prompt i; attributes: method,
// group, the score definitions. Its scores: "NAME.scores", one row, axes component x score ("mean",
// "circuit_score" = 100 x mean / mean(full), "faithfulness" = mean / mean(full)), full_mean attribute.
int ps_ablation_tables(const ps_ablator *a, const char *name, const char *const *labels, int64_t n_sets, const float *values,
                       ps_table *values_t, ps_table *scores_t, ps_error *e);
// The search trace: kind "circuit_search", one row, axes step (labelled by the candidate) x field ("pass",
// "score_before", "score", "removed"); attributes threshold, final circuit ("h0.1 h2.3 mlp0 ..."),
// final_score, passes, candidates_scored, candidates_reused.
int ps_search_table(const ps_search_result *r, const ps_search_opts *o, const ps_model_config *mc, const char *name, ps_table *t,
                    ps_error *e);

#endif
