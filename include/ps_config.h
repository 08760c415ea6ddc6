// The experiment config: a JSON file read once, every field type-checked, into the plain structs below.
// Nothing outside config.c and dataset.c sees cJSON. Errors name the file and the JSON path (e.g. experiments[2].site).
//
// Format (keys exactly these; any other key is an error that suggests the nearest valid one):
//   {
//     "model": "dir",               required; Hugging Face checkpoint directory
//     "tokenizer": "file-or-dir",   optional; default: the model directory's tokenizer
//     "backend": "cpu",             cpu | cuda | auto                       (default cpu)
//     "precision": "fp32",          fp32 | fp16 | bf16                      (default fp32)
//     "threads": 0,                 >= 0; 0 = all cores; at most 4 per online CPU (64..1024)  (default 0)
//     "prepend_bos": true,          TransformerLens's default               (default true)
//     "output": "results/x.h5",     default results/<config basename without .json>.h5
//     "metric": "logit_diff",       logit_diff | prob_diff | logprob | kl   (default logit_diff)
//     "multi_token": "first_diff",  first_diff | sum_logprob                (default first_diff)
//     "align": "error",             error                                   (default error)
//     "batch_rows": 0,              0..PS_MAX_BATCH_ROWS; planner hint, 0 = planner's choice
//     "batch_prompts": 1,           1..PS_MAX_BATCH_PROMPTS; baselines and sweeps: blocks of this many consecutive prompts (by
//                                   index) whose rows share backend calls; chunks and shards take whole blocks
//     "dataset": <dataset>,         required (see ps_dataset.h for the file formats)
//     "experiments": [ ... ]        optional, may be empty (baseline only)
//   }
//   <dataset> is either an array of {"clean", "corrupted", "answer", "wrong"} (all non-empty strings), or
//     {"path": "f.jsonl|f.csv|f.json", "format": "jsonl|csv|json" (default: from the extension),
//      "fields": {"clean": "text", "answer": "corr", "template": "kind", ...}   (names in the file; default: the item keys),
//      "corrupted": {"path": "g.jsonl", "field": "text", "format": ..., "offset": 0},  (optional)
//         Corrupted prompts are optional where no experiment runs them (ablation and circuit_search with zero,
//         mean or resample; analyses of the clean run): a file whose records have no "corrupted" field, with
//         neither fields.corrupted nor a corrupted file named, has none (seqcont's own prompt files); its
//         baselines' corrupted values are NaN and nothing is normalized by them.
//      "offset": 0, "limit": 0}                              (records [offset, offset+limit); limit 0 = all)
//   <experiment> is {"name": "[A-Za-z0-9_.-]+" (required, unique), "kind": "patch_sweep" (the producer of its
//      results table; default), "path_patch" (below), "attribution" (the same cells estimated by attribution
//      patching: one backward pass per prompt, same keys), "edge_attribution" (below), or an analysis: dla,
//      logit_lens, attention, "site": see ps_site (required),
//      "by": see ps_layout (default from the site), "direction": "denoise|noise" (default denoise),
//      "layers": [..], "heads": [..], "neurons": [..] (non-negative ints; absent = all),
//      "positions": [ints, "end", or role names] (negative counts from the end; "end" = -1; a role name
//      such as "S2" is looked up in each item's "roles"; absent = all)}.
//   A "path_patch" experiment (ps_path_patch.h, ARENA's path patching) takes instead of site/by:
//      "senders": "heads" (default) | "mlps" | "all" | ["a0.h1", "m2", ...]  (a grid is filtered by layers/heads;
//         the default layers: those that can reach a receiver, e.g. below the last receiver head's, as ARENA),
//      "receivers": "resid_post" (default: the final residual stream) | ["a3.h0.q", "a3.h2.q"] (one of q/k/v
//         for all; k/v heads are key/value heads) | ["m2", ...] (MLPs' inputs),
//      "positions": the senders' positions (absent: all), "freeze_mlps": false, "direction" (default noise:
//         the clean run with the senders from the corrupted one, ARENA's IOI vs ABC).
//   Analyses (kind "dla", "logit_lens" or "attention", ps_analysis.h) take no site/by/direction/neurons; they
//   read the baseline run named by "run": "clean" (default) or "corrupted", at the metric position (dla,
//   logit_lens: "top_k", default 5; dla: "per_neuron": false, "answer_only": false:
//   the answer's logit alone, e.g. a head's output on the answer's unembedding) or at "positions" as queries over "layers" x
//   "heads" (attention; absent = all). ov_scores (weights and first-layer residuals, one row for the run):
//   "tokens": ["Monday", ...] (required; each one token as the tokenizer reads it), "layers", "heads",
//   "top_k" (default 5), "negative": false, "input": "isolated" (default) | "prompts".
//   head_scores (ARENA's current/previous/first/duplicate/induction detectors on repeated random tokens) takes
//   no keys beyond name and kind.
//   neurons (a small Neuroscope: MLP neurons' hook_mlp_post over every prompt position, ps_analysis.h):
//   "neurons": ["9.934", "10.1721"] (LAYER.NEURON, required), "top_k": activations kept per neuron (default 10),
//   "window": context tokens each side of the top token in its label (default 4, 0..64), "run". The loader
//   appends {"name": "NAME.top", "kind": "neuron_top"}: the top-k (prompt, position) pairs of each neuron.
//   dla's "ablate": an ablation block {"components": ["h9.9", {"name": "h9.6", "positions": ["end"]}], "with":
//   "zero" | "mean" | "resample" | "corrupted", "reference", "grouping" (per_position, all_positions), "seed",
//   "positions"} (or "keep"): the clean prompts run with every listed component ablated at once, then decomposed
//   (the IOI backup name movers: compare with a dla experiment without it). Stored in cells like an ablation's.
//   An "edge_attribution" experiment (EAP-IG's graph: every head's q/k/v inputs and output, MLPs, input,
//      logits) takes only "method": "EAP" (default) | "EAP-IG-inputs" (with "steps": 1..1000, default 5) |
//      "clean-corrupted".
//   "ablation" and "circuit_search" experiments (ps_ablation.h; components are "h9.1" = head 1 of layer 9 at
//   hook_z, "mlp3" = hook_mlp_out, "n2.17" = neuron 17 of layer 2 at hook_mlp_post):
//      "components": ["h0.1", "mlp1", {"name": "h1.2", "positions": ["end"]}, ["h1.2", "h0.0"]]: one table
//         cell per entry, each ablated alone, a list ablated together (ablation only), or
//      "keep": ["h0.0", {"name": "h1.1", "positions": ["S2"]}, "mlp0"] | {"path": "circuit.json"} (seqcont's
//         {"heads": [[layer, head], ...], "mlps": [layer, ...]}): one cell, every head and MLP outside it ablated,
//         each kept component kept only at its positions (ablation only; exactly one of components and keep),
//      "positions": the default positions of every component (absent: all),
//      "with": "zero" | "mean" (default) | "resample" | "corrupted" (the prompt's own corrupted run: noising),
//      "reference": a dataset block {"path", "format", "fields": {"clean": "text", "template": "tmpl"}, "offset",
//         "limit"} of the prompts means (and resampled activations) are taken over, e.g. seqcont's randDS files;
//         required by mean and resample; only the clean text is read,
//      "grouping": "per_position" (default; seqcont) | "all_positions" | "per_template_position" (IOI/ARENA: one
//         mean per template and position; templates come from the "template" field of the dataset and of the
//         reference, named in their "fields"; every prompt's template needs reference prompts),
//      "seed": resample's draws (default 0), "mlp_means": "reference" (default) | "under_head_ablation" (seqcont's
//         code: MLP means over the reference run with the heads outside the circuit mean-ablated),
//      "head_site": "z" (default: heads ablated before W_O, as seqcont and ARENA) | "result" (at hook_result, each
//         head's output after W_O; means, resampled and corrupted values of hook_result; CPU backend only);
//      circuit_search only: "threshold": points (default 20: remove when 100 - score < 20), "passes":
//         "until_stable" (default) | "one_each", "speculate": candidates scored per batch (the result does not
//         depend on it). circuit_search takes no components, keep or positions.
//   Datasets (the main one and references) may name a "template" field: the item's template group.
//   For every ablation or circuit_search experiment with "with": "mean", the loader appends an experiment
//   {"name": "NAME.reference_means", "kind": "reference_means"}: the table of the means the run used.
//   An "edge_circuit" experiment (ps_circuit.h) takes "edges": ["input->a0.h1<v>", ...] (EAP-IG's edge names),
//      or "scores_from": the name of an edge_attribution experiment with "top_n": n (or a list of n: one circuit
//      each, evaluated as rows of one batch), or "scores_file": a graph JSON of EAP-IG's Graph.to_json with the same
//      choices (its cfg's n_layers, n_heads and parallel_attn_mlp must be the model's); "greedy": n (or a list; EAP-IG's apply_greedy: from the logits up)
//      or "threshold": t, and "absolute": true (default: rank |score|).
//   An inline item may carry "roles": {"S2": 10, "IO": 2}: token indices in its clean prompt as
//   `patchsweep tokenize` shows them (BOS included when prepended), like ARENA's word_idx.
//   heads is accepted only by layer_head/layer_pos_head, neurons only by layer_neuron, positions only by
//   layer_pos/layer_pos_head; lists may not be empty or repeat a value. Indices are checked against the
//   model by the engine, not here.
//
// Relative paths: model, tokenizer, dataset.path and dataset.corrupted.path are relative to the directory
// of the config file (so a config and its data move together); output is relative to the current working
// directory (results land where the run was started, like -o). The loader stores model/tokenizer already
// joined with the config's directory; output is stored as written.
#ifndef PS_CONFIG_H
#define PS_CONFIG_H

#include "ps_common.h"

// Bounds on config values that would otherwise fail late (threads: OpenMP's thread creation; batch_rows: the
// caches of one batch allocated at once).
#define PS_MAX_THREADS 1024
#define PS_MAX_BATCH_ROWS 1048576
#define PS_MAX_BATCH_PROMPTS 65536

typedef enum { PS_BACKEND_CPU = 0, PS_BACKEND_CUDA = 1, PS_BACKEND_AUTO = 2 } ps_backend_kind;
typedef enum { PS_PREC_FP32 = 0, PS_PREC_FP16 = 1, PS_PREC_BF16 = 2 } ps_precision;
typedef enum { PS_METRIC_LOGIT_DIFF = 0, PS_METRIC_PROB_DIFF, PS_METRIC_LOGPROB, PS_METRIC_KL } ps_metric_kind;
typedef enum { PS_DIR_DENOISE = 0, PS_DIR_NOISE = 1 } ps_direction;
// How kind edge_attribution scores edges (EAP-IG's methods): the gradient on the clean run (EAP), averaged over
// runs whose input embeddings go from corrupted to clean (EAP-IG-inputs), or over the clean and corrupted runs.
typedef enum { PS_EDGE_EAP = 0, PS_EDGE_EAP_IG_INPUTS, PS_EDGE_CLEAN_CORRUPTED } ps_edge_method;
#define PS_MAX_IG_STEPS 1000

// Hook sites, with TransformerLens's names (see ps_site_name).
typedef enum {
    PS_SITE_RESID_PRE = 0, PS_SITE_RESID_MID, PS_SITE_RESID_POST,
    PS_SITE_ATTN_OUT, PS_SITE_MLP_OUT,
    PS_SITE_Q, PS_SITE_K, PS_SITE_V, PS_SITE_PATTERN, PS_SITE_Z,
    PS_SITE_MLP_POST,   // neurons
    PS_SITE_RESULT,     // blocks.l.attn.hook_result: each head's output after W_O (T, H, C); attn_out = sum_h + b_O.
                        // Read by ablations ("head_site": "result") on the CPU backend; sweeps refuse it
    PS_SITE_COUNT
} ps_site;

// How a sweep is laid out: which axes it runs over (layer always first).
// The default for a site: layer_pos for resid_*/attn_out/mlp_out, layer_head for z/q/k/v/pattern,
// layer_neuron for mlp_post.
typedef enum {
    PS_BY_LAYER_POS = 0,      // resid_*, attn_out, mlp_out; z/q/k/v: every head at once
    PS_BY_LAYER_HEAD,         // z, q, k, v, pattern over all positions
    PS_BY_LAYER_POS_HEAD,     // z, q, k, v, pattern by position (pattern: destination position)
    PS_BY_LAYER_NEURON,       // mlp_post over all positions
    PS_BY_LAYER,              // resid_*, attn_out, mlp_out over all positions
    PS_BY_COUNT
} ps_layout;

// How positions of clean and corrupted prompts that tokenize to different lengths line up.
typedef enum { PS_ALIGN_ERROR = 0 } ps_align;

typedef enum { PS_SCORE_FIRST_DIFF = 0, PS_SCORE_SUM_LOGPROB = 1 } ps_multitoken;

typedef struct {
    char *clean, *corrupted, *answer, *wrong;   // UTF-8 text, owned, never NULL or empty
    int64_t n_roles;
    char **role_name;     // (n_roles) e.g. "S2", "IO" (owned)
    int64_t *role_pos;    // (n_roles) token index in the clean prompt as `patchsweep tokenize` shows it (BOS included)
    char *group;          // NULL, or its template group (the dataset's "fields": {"template": ...}), owned
} ps_item;

// A model component named in a config: head `head` of layer `layer` ("a3.h0"), or (head -1) its MLP ("m3").
typedef struct { int64_t layer, head; } ps_node;

// What path patching's receivers read (ps_path_patch.h).
typedef enum { PS_RECV_RESID_POST = 0, PS_RECV_Q, PS_RECV_K, PS_RECV_V, PS_RECV_MLP, PS_RECV_COUNT } ps_recv_input;
// Which senders a path_patch experiment runs when it lists none: every head, every MLP, or both.
typedef enum { PS_SENDERS_HEADS = 0, PS_SENDERS_MLPS, PS_SENDERS_ALL, PS_SENDERS_LIST } ps_senders;

// A component an ablation names: "h9.1" (head 1 of layer 9, at hook_z), "mlp3" (hook_mlp_out), "n2.17" (neuron 17
// of layer 2, hook_mlp_post); optionally only at some positions (integers, "end", role names).
typedef struct {
    char *name;                               // owned, as written (syntax checked; the engine checks the model has it)
    int64_t *positions; int64_t n_positions;  // NULL: the experiment's "positions" (or every position)
    char **position_role;                     // NULL or (n_positions): the role where positions[k] names one
} ps_abl_comp;
// One cell of an ablation experiment: components ablated together (or, keep, the circuit kept).
typedef struct { ps_abl_comp *c; int64_t n; char *label; } ps_abl_cell;

typedef struct {
    char *name;                  // unique; becomes /results/<name>
    char *kind;                  // owned; the producer of its table: "patch_sweep" (default), "path_patch", "attribution",
                                 // "edge_attribution", "edge_circuit", "dla", "logit_lens", "attention", "ov_scores", "head_scores",
                                 // "neurons" (and the loader's "reference_means", "neuron_top")
    char *canonical;             // owned: its config object as canonical JSON (keys sorted): what the run identity hashes
    ps_site site;
    ps_layout layout;
    ps_direction direction;
    int64_t *layers;  int64_t n_layers;    // NULL: all
    int64_t *heads;   int64_t n_heads;     // NULL: all
    int64_t *neurons; int64_t n_neurons;   // NULL: all
    int64_t *positions; int64_t n_positions; // NULL: all; negative counts from the end (-1 = last prompt token)
    char **position_role; // NULL, or (n_positions): a role name where positions[k] names a role, else NULL
    // kind "path_patch" (site and by unused; layers/heads filter the sender grid, positions are the senders')
    ps_senders senders;          // PS_SENDERS_LIST: sender_list
    ps_node *sender_list; int64_t n_sender_list;   // owned
    ps_recv_input input;         // from the receivers' names; PS_RECV_RESID_POST when none are listed
    ps_node *receivers; int64_t n_receivers;       // owned; k/v heads are key/value heads
    int freeze_mlps;
    // The analyses (kinds dla, logit_lens, attention; ps_analysis.h): which baseline run they read and their options.
    int run_corrupted;    // "run": "clean" (0, default) | "corrupted"
    int64_t top_k;        // logit_lens: top tokens stored per stage (default 5, 0..1000)
    int per_neuron;       // dla: also every neuron (default false)
    int answer_only;      // dla: decompose the answer's logit alone, not answer - wrong (default false)
    char **tokens; int64_t n_tokens; // ov_scores: the member tokens in order (owned), each one token
    int negative;         // ov_scores: -W_O (negative copying heads)
    int ov_prompts;       // ov_scores "input": "isolated" (0, default: each member after the BOS) | "prompts" (every
                          // occurrence in the clean prompts, the IOI paper's code)
    // kind "edge_attribution" (no other key: it scores every edge of the graph)
    ps_edge_method method;
    int64_t steps;               // EAP-IG-inputs: interpolation steps (default 5)
    // kinds "ablation" and "circuit_search" (ps_ablation.h); positions above are every component's default
    ps_abl_cell *cells; int64_t n_cells;   // owned; ablation: one cell per "components" entry, or one "keep" cell
    int keep;                              // 1: cells[0] is a circuit kept, everything else ablated
    char *keep_path;                       // "keep": {"path": f}: the circuit file read (seqcont's {"heads", "mlps"}), owned
    int abl_with;                          // ps_abl_method: zero, mean (default), resample, corrupted
    int abl_group;                         // ps_mean_group: per_position (default), all_positions, per_template_position
    ps_item *ref_items; int64_t n_ref_items; // "reference": the prompts means and resamples are taken over (owned)
    char *ref_path;                        // its resolved file (owned)
    int64_t seed;                          // resample draws (default 0)
    int mlp_means_under;                   // "mlp_means": "under_head_ablation" (1; seqcont) or "reference" (0, default)
    int heads_at_result;                   // "head_site": "result" (1: heads ablated at hook_result, after W_O) or "z" (0, default)
    double threshold;                      // circuit_search: points (default 20); edge_circuit: a score threshold
    int one_pass;                          // circuit_search: "passes": "one_each" (1) or "until_stable" (0, default)
    int64_t speculate;                     // circuit_search: candidates per batch (0: the library's default)
    // "ablation" with "keep": completeness and minimality (ps_ablation.h). The K's as lists of the circuit's
    // component names (the loader expands "classes"); each cell's label is the K's as written.
    ps_abl_cell *compl_k; int64_t n_compl_k; // owned: "completeness": [K, ...]
    int minimality;                        // "minimality": true, or an object of K's per component
    ps_abl_cell *min_k; int64_t n_min_k;   // owned: (n_min_k) K_v of the components named (label: v), others empty
    int64_t scores_of;                     // kind "circuit_scores" (added by the loader, "NAME.completeness" and
    int scores_minimality;                 // "NAME.minimality"): that experiment's index; 1: the minimality table
    int64_t *neuron_layer;       // kind neurons: (n_neurons) each neuron's layer (owned); neurons[] holds its index
    int64_t window;              // kind neurons: context tokens each side in the top table's labels (default 4)
    int64_t top_of;              // kind "neuron_top" (added by the loader, "NAME.top"): the neurons experiment's index
    int64_t means_of;                      // kind "reference_means" (added by the loader after the experiments, one per
                                           // mean-ablating experiment, named "NAME.reference_means"): that experiment's index
    // kind "edge_circuit" (ps_circuit.h): the edges by name, or chosen from an edge_attribution experiment's
    // mean scores by top_n or threshold; pruned either way, as EAP-IG's evaluate_graph does
    char **edge_names; int64_t n_edge_names;   // owned; "a0.h1->a1.h0<q>"
    char *scores_from;           // owned: the name of an edge_attribution experiment of the same run, or NULL
    int64_t top_n;               // with scores_from and no threshold: the n edges of highest score
    int64_t *top_ns; int64_t n_top_ns;     // owned: "top_n": [n, ...], one circuit each (NULL: top_n alone)
    int has_threshold;           // with scores_from: the edges whose score is >= threshold (the field above)
    int signed_scores;           // 0 (default): rank |score|, EAP-IG's absolute=True
    char *scores_path;           // owned: "scores_file": EAP-IG's Graph.to_json file whose edge scores choose the edges
    int greedy;                  // "greedy": n (or a list): top_n/top_ns are counts of EAP-IG's apply_greedy
    int edge_with;               // "with": the missing edges' values: 0 corrupted (default), 1 zero, 2 mean (over "reference"
                                 // above, "grouping" abl_group: per_position or all_positions)
} ps_experiment;

typedef struct {
    char *path;              // the config file (owned)
    char *text;              // the config verbatim (owned), stored in the results file
    char *model;             // checkpoint directory, resolved relative to the config file's directory
    char *tokenizer;         // NULL: the model directory's tokenizer.json / vocab.json; else resolved like model
    ps_backend_kind backend;
    ps_precision precision;
    int threads;             // 0: all cores
    int prepend_bos;         // 1: prepend the tokenizer's BOS (TransformerLens's default)
    char *output;            // results path as written (relative to the current directory) or the default; -o overrides
    ps_metric_kind metric;
    ps_multitoken multitoken;
    ps_align align;
    int64_t batch_rows;      // 0: planner's choice
    int64_t batch_prompts;   // >= 1: the baselines and a sweep batch hold the rows of one block of this many prompts (ps_prompt_block)
    ps_item *items; int64_t n_items;       // the dataset, however it was given (>= 1 item)
    ps_experiment *experiments; int64_t n_experiments;
    char *dataset_path;      // resolved dataset file, NULL when the items were inline (for the results file)
    char *corrupted_path;    // resolved file of corrupted prompts, NULL when they came with the items
    int no_corrupted;        // 1: the dataset file has no corrupted prompts (items' corrupted = clean; no experiment runs them)
} ps_config;

// Reads and validates path into c (which needs no initialisation). On error returns -1 with e filled
// (PS_EXIT_BADINPUT for bad input) and c zeroed, owning nothing. ps_config_free may be called on a
// zeroed or loaded config, and twice.
int ps_config_load(ps_config *c, const char *path, ps_error *e);
void ps_config_free(ps_config *c);

// The edge scores of a file written by hannamw/EAP-IG's Graph.to_json ({"cfg": {"n_layers", "n_heads", ...},
// "edges": {"input->a0.h0<q>": {"score": s, "in_graph": b}, ...}}; a bare number for {"score": s} is accepted):
// names[i] and score[i] (owned; free with ps_edge_scores_free); n_layers/n_heads from its cfg, -1 when absent;
// parallel: its cfg.parallel_attn_mlp (1 true, 0 false, -1 absent). Errors (exit 2) name the file and the key.
typedef struct { char **names; double *score; int64_t n, n_layers, n_heads; int parallel; } ps_edge_scores;
int ps_edge_scores_read(const char *path, ps_edge_scores *out, ps_error *e);
void ps_edge_scores_free(ps_edge_scores *s);

// Frees n items and the array (NULL is fine).
void ps_items_free(ps_item *items, int64_t n);

// Names as written in the config (static strings; "?" for out-of-range values).
const char *ps_site_name(ps_site s);          // "resid_pre", ..., "mlp_post"
const char *ps_config_kind_name(size_t i);    // the i-th experiment "kind" a config may name; NULL past the end
const char *ps_layout_name(ps_layout l);      // "layer_pos", "layer_head", ...
const char *ps_metric_name(ps_metric_kind m); // "logit_diff", ...
const char *ps_direction_name(ps_direction d);
const char *ps_backend_name(ps_backend_kind b);
const char *ps_precision_name(ps_precision p);
const char *ps_multitoken_name(ps_multitoken m);   // "first_diff", "sum_logprob"
const char *ps_align_name(ps_align a);             // "error"

// The layout used when an experiment gives no "by".
ps_layout ps_default_layout(ps_site s);
// 1 when a sweep of layout l can be run at site s.
int ps_layout_fits(ps_site s, ps_layout l);

#endif
