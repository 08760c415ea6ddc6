// Choosing an edge set from scores and pruning it, with hannamw/EAP-IG's Graph semantics (apply_topn,
// apply_threshold, apply_greedy, prune) on the graph of ps_graph.h (ps_circuit.h).
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

// apply_greedy's candidates: a max-heap of edges by key, then by the order their destination joined (EAP-IG's
// heapq.merge keeps the earlier stream first on ties), then by index (EAP-IG sorts a node's parent edges from a
// Python set, whose order is not defined).
typedef struct { float key; int64_t group, idx; } cand;

static int cand_before(const cand *a, const cand *b) {
    if (a->key != b->key) return a->key > b->key;
    if (a->group != b->group) return a->group < b->group;
    return a->idx < b->idx;
}

static void heap_push(cand *h, int64_t *n, cand c) {
    int64_t i = (*n)++;
    while (i > 0 && cand_before(&c, &h[(i - 1) / 2])) {
        h[i] = h[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    h[i] = c;
}

static cand heap_pop(cand *h, int64_t *n) {
    const cand top = h[0], last = h[--*n];
    int64_t i = 0;
    for (;;) {
        int64_t c = 2 * i + 1;
        if (c >= *n) break;
        if (c + 1 < *n && cand_before(&h[c + 1], &h[c])) c++;
        if (!cand_before(&h[c], &last)) break;
        h[i] = h[c];
        i = c;
    }
    if (*n > 0) h[i] = last;
    return top;
}

// Destination d joins the candidates: every real edge into it, in one group.
static void push_dest(const ps_graph *g, const float *scores, int absolute, int64_t d, int64_t group, uint8_t *active, cand *h,
                      int64_t *n) {
    if (active[d]) return;
    active[d] = 1;
    for (int64_t s = 0; s < g->n_sources; s++)
        if (ps_graph_edge(g, s, d)) {
            float v = scores[s * g->n_dests + d];
            if (isnan(v)) v = -INFINITY;
            heap_push(h, n, (cand){absolute ? fabsf(v) : v, group, s * g->n_dests + d});
        }
}

int ps_circuit_greedy(const ps_graph *g, const float *scores, int64_t n, int absolute, uint8_t *in_graph) {
    const int64_t S = g->n_sources, Dn = g->n_dests, H = g->n_heads, Hkv = g->n_kv_heads;
    memset(in_graph, 0, (size_t)(S * Dn));
    cand *h = malloc((size_t)g->n_edges * sizeof *h);
    uint8_t *node = calloc((size_t)S, 1), *active = calloc((size_t)Dn, 1);
    int64_t nh = 0, group = 0;
    if (!h || !node || !active) {
        free(h);
        free(node);
        free(active);
        return -1;
    }
    push_dest(g, scores, absolute, Dn - 1, group++, active, h, &nh);  // the logits are always in the graph
    for (int64_t k = 0; k < n && nh > 0; k++) {
        const cand c = heap_pop(h, &nh);
        const int64_t s = c.idx / Dn;
        in_graph[c.idx] = 1;
        if (node[s] || s == 0) { node[s] = 1; continue; }  // the input node reads nothing
        node[s] = 1;
        // The new node's inputs: a head's q, k and v (k and v of its key/value head), or an MLP's input.
        const int64_t l = (s - 1) / (H + 1), hh = (s - 1) % (H + 1), gr = group++;
        if (hh == H) {
            push_dest(g, scores, absolute, ps_graph_dest(g, PS_DEST_MLP, l, -1), gr, active, h, &nh);
        } else {
            const int64_t j = hh / (H / Hkv);
            push_dest(g, scores, absolute, ps_graph_dest(g, PS_DEST_Q, l, hh), gr, active, h, &nh);
            push_dest(g, scores, absolute, ps_graph_dest(g, PS_DEST_K, l, j), gr, active, h, &nh);
            push_dest(g, scores, absolute, ps_graph_dest(g, PS_DEST_V, l, j), gr, active, h, &nh);
        }
    }
    free(h);
    free(node);
    free(active);
    return 0;
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

// A non-negative decimal at *p (no sign, no leading '+'), advancing *p; -1 when there is none.
static int64_t number(const char **p) {
    int64_t v = 0;
    if (**p < '0' || **p > '9') return -1;
    while (**p >= '0' && **p <= '9') {
        v = v * 10 + (**p - '0');
        if (v > (int64_t)1 << 40) return -1;
        (*p)++;
    }
    return v;
}

// "a3.h2" (kind 'a'), "m3" ('m') or "input"/"logits" at *p, advancing it: kind, layer, head.
static char node_name(const char **p, int64_t *l, int64_t *h) {
    *l = *h = -1;
    if (!strncmp(*p, "input", 5)) { *p += 5; return 'i'; }
    if (!strncmp(*p, "logits", 6)) { *p += 6; return 'o'; }
    const char k = **p;
    if (k != 'a' && k != 'm') return 0;
    (*p)++;
    if ((*l = number(p)) < 0) return 0;
    if (k == 'a') {
        if (strncmp(*p, ".h", 2)) return 0;
        *p += 2;
        if ((*h = number(p)) < 0) return 0;
    }
    return k;
}

// Parsed, not searched: a 7B graph's 1.6M edges are looked up one by one when read from a scores file.
int ps_circuit_edge_by_name(const ps_graph *g, const char *name, int64_t *s, int64_t *d) {
    const char *p = name;
    int64_t l, h;
    *s = *d = -1;
    const char ks = node_name(&p, &l, &h);
    if (!ks || ks == 'o' || strncmp(p, "->", 2)) return -1;
    p += 2;
    if (ks == 'i') *s = 0;
    else if (l < g->n_layers && (ks == 'm' || h < g->n_heads)) *s = ps_graph_source(g, l, ks == 'm' ? -1 : h);
    const char kd = node_name(&p, &l, &h);
    if (kd == 'o' && !*p) *d = g->n_dests - 1;
    else if (kd == 'm' && !*p && l < g->n_layers) *d = ps_graph_dest(g, PS_DEST_MLP, l, -1);
    else if (kd == 'a' && l < g->n_layers && p[0] == '<' && p[1] && p[2] == '>' && !p[3]) {
        const char q = p[1];
        const int64_t nh = q == 'q' ? g->n_heads : g->n_kv_heads;
        if ((q == 'q' || q == 'k' || q == 'v') && h < nh)
            *d = ps_graph_dest(g, q == 'q' ? PS_DEST_Q : q == 'k' ? PS_DEST_K : PS_DEST_V, l, h);
    }
    return *s >= 0 && *d >= 0 && ps_graph_edge(g, *s, *d) ? 0 : -1;
}
