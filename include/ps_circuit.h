// Circuits as sets of edges of EAP-IG's graph (ps_graph.h, kv_native): choosing them from edge scores (top-n,
// threshold), pruning them as EAP-IG's Graph.prune does, and evaluating them with EAP-IG's evaluate_graph
// semantics (every missing edge's source contributes its corrupted output, zero or a mean to its destination's input).
// An edge set is a mask in_graph (n_sources, n_dests) of 0/1 bytes, EAP-IG's in_graph matrix.
#ifndef PS_CIRCUIT_H
#define PS_CIRCUIT_H

#include "ps_backend.h"
#include "ps_engine.h"
#include "ps_graph.h"
#include "ps_producer.h"

// EAP-IG's apply_topn(n, absolute, level='edge', prune=False): the n real edges of highest score (|score| when
// absolute; ties by lower index first, where torch's argsort is unspecified). scores: (n_sources, n_dests), non-edges
// ignored (NaN allowed there). n above the edge count takes every edge. 0, or -1 when out of memory.
int ps_circuit_topn(const ps_graph *g, const float *scores, int64_t n, int absolute, uint8_t *in_graph);
// apply_threshold(t, absolute, prune=False): the real edges whose (absolute) score is >= t.
void ps_circuit_threshold(const ps_graph *g, const float *scores, float threshold, int absolute, uint8_t *in_graph);
// apply_greedy(n, absolute, prune=False): from the logits up, n times the edge of highest (|score| when absolute)
// among the edges into nodes already in the graph (the logits at first), its source joining the graph. n above
// the edge count takes every edge. 0, or -1 when out of memory.
int ps_circuit_greedy(const ps_graph *g, const float *scores, int64_t n, int absolute, uint8_t *in_graph);
// Graph.prune(): repeatedly drops nodes without an incoming edge (input excepted) or an outgoing one, and the edges
// of dropped nodes, until nothing changes (so what is left lies on paths from input to logits). Returns the edges kept
// (-1: out of memory).
// A k/v destination under grouped-query attention belongs to every query head of its group.
int64_t ps_circuit_prune(const ps_graph *g, uint8_t *in_graph);
int64_t ps_circuit_count(const ps_graph *g, const uint8_t *in_graph);
// The edge "src->dst" by EAP-IG's names ("a0.h1->a2.h0<q>", "m1->logits"): its (s, d), or -1 when there is none.
int ps_circuit_edge_by_name(const ps_graph *g, const char *name, int64_t *s, int64_t *d);

// Runs prompt p (clean tokens) with the circuit: every destination's input is its input in this run plus the sum
// over its missing edges (in_graph 0) of (corrupted - this run's) source output, as evaluate_graph's input
// construction hooks. clean, corr: the prompt's unpatched caches. logits: (rq->n_out, rq->n_cols or V).
// The route (why it is exact) is in edge_circuit.c; sequential and parallel (GPT-NeoX) blocks.
int ps_circuit_eval(const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *in_graph, const ps_prompt *p,
                    const ps_cache *clean, const ps_cache *corr, const ps_metric_request *rq, float *logits, ps_error *e);

// K circuits of one prompt at once, their rows batched in each pass: in_graph (K) masks, logits (K, n_out, width).
int ps_circuit_eval_many(const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *const *in_graph, int64_t K,
                         const ps_prompt *p, const ps_cache *clean, const ps_cache *corr, const ps_metric_request *rq, float *logits,
                         ps_error *e);

// The missing edges' values (ps_experiment.edge_with).
enum { PS_EDGE_CORRUPTED = 0, PS_EDGE_ZERO, PS_EDGE_MEAN };
// What the missing edges' sources contribute: values (n_sources, T, C) in place of their outputs in this run. The
// graph's source outputs are the input's token embeddings (EAP-IG's hook_embed: GPT-2's position embeddings, like
// the biases, are no source's), each head's z_h W_O[h] (hook_result) and each MLP's mlp_out.
// values = a corrupted run's outputs (ps_circuit_source_values: EAP-IG's 'patching'), zeros ('zero'), or reference
// means (ps_circuit_mean_values, broadcast or per position: 'mean', 'mean-positional'). Otherwise as eval_many.
int ps_circuit_eval_values(const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *const *in_graph, int64_t K,
                           const ps_prompt *p, const ps_cache *clean, const float *values, const ps_metric_request *rq, float *logits,
                           ps_error *e);
// The source outputs of a run of `tokens` (p->T of them) with cache run: out (n_sources, T, C).
int ps_circuit_source_values(const ps_model *m, const ps_graph *g, const ps_prompt *p, const int32_t *tokens, const ps_cache *run,
                             float *out, ps_error *e);
// Mean source outputs over the reference prompts ref (their clean tokens): *out (n_sources, *rows, C), owned by the
// caller (free); *rows = the reference prompts' length (they need one: bad input naming `where` otherwise), or 1
// with all_positions (the mean over every token). Sums in double, in prompt order (ps_ref_means_compute).
int ps_circuit_mean_values(const ps_model *m, ps_backend *be, const ps_graph *g, const struct ps_prompt_set *ref, int all_positions,
                           const char *where, float **out, int64_t *rows, ps_error *e);

// Kind "edge_circuit" (src/engine/edge_circuit.c).
extern const ps_producer ps_edge_circuit_producer;

#endif
