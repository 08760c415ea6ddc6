// The edge graph of EAP-IG's conventions (ps_graph.h): node and edge indexing, which edges exist, names.
#include "ps_graph.h"

#include <stdio.h>

// Destinations of one layer: H q, Hkv k, Hkv v, one MLP.
static int64_t dests_per_layer(const ps_graph *g) { return g->n_heads + 2 * g->n_kv_heads + 1; }

void ps_graph_init(ps_graph *g, const ps_model_config *mc, int kv_native) {
    const int64_t L = mc->n_layers, H = mc->n_heads;
    g->n_layers = L;
    g->n_heads = H;
    g->n_kv_heads = kv_native ? mc->n_kv_heads : H;
    g->n_nodes = 1 + L * (H + 1) + 1;
    g->n_sources = 1 + L * (H + 1);
    g->n_dests = L * dests_per_layer(g) + 1;
    g->n_edges = 0;
    g->parallel = mc->parallel_residual;
    // Per layer: a head input reads input and every earlier layer's heads and MLP; the MLP also its own heads
    // unless the block is parallel (attention and MLP both read the stream entering the layer).
    for (int64_t l = 0; l < L; l++) {
        const int64_t before = 1 + l * (H + 1);
        g->n_edges += (H + 2 * g->n_kv_heads) * before + (before + (g->parallel ? 0 : H));
    }
    g->n_edges += g->n_sources; // logits
}

int64_t ps_graph_source(const ps_graph *g, int64_t layer, int64_t head) {
    return 1 + layer * (g->n_heads + 1) + (head < 0 ? g->n_heads : head);
}

int64_t ps_graph_dest(const ps_graph *g, ps_dest_kind kind, int64_t layer, int64_t head) {
    const int64_t base = layer * dests_per_layer(g), H = g->n_heads, Hkv = g->n_kv_heads;
    switch (kind) {
    case PS_DEST_Q: return base + head;
    case PS_DEST_K: return base + H + head;
    case PS_DEST_V: return base + H + Hkv + head;
    case PS_DEST_MLP: return base + H + 2 * Hkv;
    default: return g->n_layers * dests_per_layer(g);
    }
}

// Layer of a source (-1: input) and whether it is an MLP.
static int64_t source_layer(const ps_graph *g, int64_t s, int *mlp) {
    *mlp = 0;
    if (s == 0) return -1;
    const int64_t l = (s - 1) / (g->n_heads + 1);
    *mlp = (s - 1) % (g->n_heads + 1) == g->n_heads;
    return l;
}

int ps_graph_edge(const ps_graph *g, int64_t s, int64_t d) {
    if (s < 0 || s >= g->n_sources || d < 0 || d >= g->n_dests) return 0;
    if (d == g->n_dests - 1) return 1; // the logits read everything
    int mlp;
    const int64_t sl = source_layer(g, s, &mlp), dl = d / dests_per_layer(g);
    const int d_mlp = d % dests_per_layer(g) == dests_per_layer(g) - 1;
    if (sl < dl) return 1;
    return d_mlp && sl == dl && !mlp && !g->parallel; // a layer's heads write before its MLP reads (sequential blocks)
}

void ps_graph_source_name(const ps_graph *g, int64_t s, char *buf, size_t cap) {
    int mlp;
    const int64_t l = source_layer(g, s, &mlp);
    if (l < 0) snprintf(buf, cap, "input");
    else if (mlp) snprintf(buf, cap, "m%lld", (long long)l);
    else snprintf(buf, cap, "a%lld.h%lld", (long long)l, (long long)((s - 1) % (g->n_heads + 1)));
}

void ps_graph_dest_name(const ps_graph *g, int64_t d, char *buf, size_t cap) {
    const int64_t per = dests_per_layer(g), l = d / per, r = d % per, H = g->n_heads, Hkv = g->n_kv_heads;
    if (d == g->n_dests - 1) snprintf(buf, cap, "logits");
    else if (r == per - 1) snprintf(buf, cap, "m%lld", (long long)l);
    else if (r < H) snprintf(buf, cap, "a%lld.h%lld<q>", (long long)l, (long long)r);
    else if (r < H + Hkv) snprintf(buf, cap, "a%lld.h%lld<k>", (long long)l, (long long)(r - H));
    else snprintf(buf, cap, "a%lld.h%lld<v>", (long long)l, (long long)(r - H - Hkv));
}
