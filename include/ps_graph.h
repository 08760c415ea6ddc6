// The computational graph of edge-level circuits, with EAP-IG's conventions (hannamw/EAP-IG graph.py): nodes
// `input`, every head `a{l}.h{h}`, every MLP `m{l}`, and `logits`; sources (residual writers) are input, the
// heads and the MLPs; destinations (residual readers) are each head's q, k and v inputs, each MLP's input and
// the logits. An edge joins a source to every destination that reads the residual stream after it: a head
// of layer l reads input and everything of layers < l; an MLP of layer l also its own layer's heads; the
// logits read everything. GPT-2 small: 158 nodes, 32,491 edges, a 157 x 445 score matrix.
// Under grouped-query attention EAP-IG keeps q, k and v per query head (and fails on the shapes); with
// kv_native the k and v destinations are per key/value head instead, as the model computes them.
#ifndef PS_GRAPH_H
#define PS_GRAPH_H

#include "ps_model.h"

typedef struct {
    int64_t n_layers, n_heads, n_kv_heads;  // n_kv_heads: heads per layer of the k and v destinations
    int64_t n_nodes;                        // input + heads + MLPs + logits
    int64_t n_sources, n_dests;             // the score matrix is (n_sources, n_dests)
    int64_t n_edges;                        // (source, destination) pairs that exist
    int parallel;                           // GPT-NeoX's parallel residual: a layer's MLP does not read its own heads
} ps_graph;

typedef enum { PS_DEST_Q = 0, PS_DEST_K, PS_DEST_V, PS_DEST_MLP, PS_DEST_LOGITS } ps_dest_kind;

void ps_graph_init(ps_graph *g, const ps_model_config *mc, int kv_native);

// Source index: input 0, then per layer its heads and its MLP (EAP-IG's forward index). head -1: the MLP.
int64_t ps_graph_source(const ps_graph *g, int64_t layer, int64_t head);
// Destination index: per layer the heads' q, then k, then v, then the MLP; the logits last (EAP-IG's
// backward index). head is a key/value head for k/v when kv_native; ignored for MLP and logits.
int64_t ps_graph_dest(const ps_graph *g, ps_dest_kind kind, int64_t layer, int64_t head);
// 1 when source s writes the residual stream before destination d reads it.
int ps_graph_edge(const ps_graph *g, int64_t s, int64_t d);
// EAP-IG's names: "input", "a3.h2", "m3"; destinations "a3.h2<q>", "m3", "logits".
void ps_graph_source_name(const ps_graph *g, int64_t s, char *buf, size_t cap);
void ps_graph_dest_name(const ps_graph *g, int64_t d, char *buf, size_t cap);

#endif
