// Choosing an edge set from scores and pruning it, with hannamw/EAP-IG's Graph semantics (apply_topn,
// apply_threshold, prune) on the graph of ps_graph.h (ps_circuit.h).
#include "ps_circuit.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int64_t dests_per_layer(const ps_graph *g) { return g->n_heads + 2 * g->n_kv_heads + 1; }

typedef struct { float key; int64_t idx; } ranked;

// Descending by key, then ascending by index.
static int by_key_desc(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->key != y->key) return x->key > y->key ? -1 : 1;
    return x->idx < y->idx ? -1 : x->idx > y->idx;
}

int ps_circuit_topn(const ps_graph *g, const float *scores, int64_t n, int absolute, uint8_t *in_graph) {
    const int64_t N = g->n_sources * g->n_dests;
    memset(in_graph, 0, (size_t)N);
    ranked *r = malloc((size_t)g->n_edges * sizeof *r);
    int64_t k = 0;
    if (!r) return -1;
    for (int64_t i = 0; i < N; i++)
        if (ps_graph_edge(g, i / g->n_dests, i % g->n_dests)) {
            float s = scores[i];
            if (isnan(s)) s = -INFINITY;
            r[k++] = (ranked){absolute ? fabsf(s) : s, i};
        }
    qsort(r, (size_t)k, sizeof *r, by_key_desc);
    for (int64_t i = 0; i < n && i < k; i++) in_graph[r[i].idx] = 1;
    free(r);
    return 0;
}

void ps_circuit_threshold(const ps_graph *g, const float *scores, float threshold, int absolute, uint8_t *in_graph) {
    for (int64_t i = 0; i < g->n_sources * g->n_dests; i++) {
        const float s = absolute ? fabsf(scores[i]) : scores[i];
        in_graph[i] = ps_graph_edge(g, i / g->n_dests, i % g->n_dests) && s >= threshold;
    }
}

int64_t ps_circuit_count(const ps_graph *g, const uint8_t *in_graph) {
    int64_t n = 0;
    for (int64_t i = 0; i < g->n_sources * g->n_dests; i++) n += in_graph[i] != 0;
    return n;
}

// Whether destination d's node is in the graph: its head (any head of its key/value group for k and v), its MLP;
// the logits always. node: (n_sources).
static int dest_node_in(const ps_graph *g, const uint8_t *node, int64_t d) {
    const int64_t per = dests_per_layer(g), l = d / per, r = d % per, H = g->n_heads, Hkv = g->n_kv_heads;
    if (d == g->n_dests - 1) return 1;
    if (r == per - 1) return node[ps_graph_source(g, l, -1)];
    if (r < H) return node[ps_graph_source(g, l, r)];
    const int64_t j = r < H + Hkv ? r - H : r - H - Hkv, group = H / Hkv;
    for (int64_t h = j * group; h < (j + 1) * group; h++)
        if (node[ps_graph_source(g, l, h)]) return 1;
    return 0;
}

// Whether node s (a source) has an incoming edge: any edge into one of its destinations (input: always).
static int node_has_input(const ps_graph *g, const uint8_t *dest_used, int64_t s) {
    if (s == 0) return 1;
    const int64_t H = g->n_heads, Hkv = g->n_kv_heads, l = (s - 1) / (H + 1), h = (s - 1) % (H + 1);
    if (h == H) return dest_used[ps_graph_dest(g, PS_DEST_MLP, l, -1)];
    const int64_t j = h / (H / Hkv);
    return dest_used[ps_graph_dest(g, PS_DEST_Q, l, h)] || dest_used[ps_graph_dest(g, PS_DEST_K, l, j)] ||
           dest_used[ps_graph_dest(g, PS_DEST_V, l, j)];
}

int64_t ps_circuit_prune(const ps_graph *g, uint8_t *in_graph) {
    const int64_t S = g->n_sources, Dn = g->n_dests;
    uint8_t *node = calloc((size_t)S, 1), *used = calloc((size_t)Dn, 1);
    if (!node || !used) {
        free(node);
        free(used);
        return -1;
    }
    for (int changed = 1; changed;) {
        changed = 0;
        memset(used, 0, (size_t)Dn);
        for (int64_t s = 0; s < S; s++)
            for (int64_t d = 0; d < Dn; d++)
                if (in_graph[s * Dn + d]) used[d] = 1;
        for (int64_t s = 0; s < S; s++) {
            int out = 0;
            for (int64_t d = 0; d < Dn && !out; d++) out = in_graph[s * Dn + d];
            const uint8_t v = out && node_has_input(g, used, s);
            changed |= v != node[s];
            node[s] = v;
        }
        for (int64_t s = 0; s < S; s++)
            for (int64_t d = 0; d < Dn; d++)
                if (in_graph[s * Dn + d] && !(node[s] && dest_node_in(g, node, d))) {
                    in_graph[s * Dn + d] = 0;
                    changed = 1;
                }
    }
    free(node);
    free(used);
    return ps_circuit_count(g, in_graph);
}

int ps_circuit_edge_by_name(const ps_graph *g, const char *name, int64_t *s, int64_t *d) {
    const char *arrow = strstr(name, "->");
    if (!arrow) return -1;
    char buf[64];
    const size_t n_src = (size_t)(arrow - name);
    *s = *d = -1;
    for (int64_t i = 0; i < g->n_sources && *s < 0; i++) {
        ps_graph_source_name(g, i, buf, sizeof buf);
        if (strlen(buf) == n_src && !strncmp(buf, name, n_src)) *s = i;
    }
    for (int64_t i = 0; i < g->n_dests && *d < 0; i++) {
        ps_graph_dest_name(g, i, buf, sizeof buf);
        if (!strcmp(buf, arrow + 2)) *d = i;
    }
    return *s >= 0 && *d >= 0 && ps_graph_edge(g, *s, *d) ? 0 : -1;
}
