// Circuits as sets of edges of EAP-IG's graph (ps_graph.h, kv_native): choosing them from edge scores (top-n,
// threshold), pruning them as EAP-IG's Graph.prune does, and evaluating them with EAP-IG's evaluate_graph
// semantics (every missing edge's source contributes its corrupted output to its destination's input).
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
// The route (why it is exact) is in edge_circuit.c. Needs a sequential-residual model (no parallel blocks).
int ps_circuit_eval(const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *in_graph, const ps_prompt *p,
                    const ps_cache *clean, const ps_cache *corr, const ps_metric_request *rq, float *logits, ps_error *e);

// K circuits of one prompt at once, their rows batched in each pass: in_graph (K) masks, logits (K, n_out, width).
int ps_circuit_eval_many(const ps_model *m, ps_backend *be, const ps_graph *g, const uint8_t *const *in_graph, int64_t K,
                         const ps_prompt *p, const ps_cache *clean, const ps_cache *corr, const ps_metric_request *rq, float *logits,
                         ps_error *e);

// Kind "edge_circuit" (src/engine/edge_circuit.c).
extern const ps_producer ps_edge_circuit_producer;

#endif
