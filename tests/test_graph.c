// The edge graph (ps_graph.h) against EAP-IG's graph.py counts: GPT-2 small's shape (158 nodes, 32,491 edges,
// a 157 x 445 score matrix), Llama-2-7B's (1,058 nodes, 1,592,881 edges), the tiny models; the closed-form
// count equals the edges ps_graph_edge admits, every index round-trips through its name, and a GQA model's
// native k/v destinations are per key/value head.
#include "ps_graph.h"
#include "testutil.h"

#include <stdio.h>
#include <string.h>

static int64_t count_edges(const ps_graph *g) {
    int64_t n = 0;
    for (int64_t s = 0; s < g->n_sources; s++)
        for (int64_t d = 0; d < g->n_dests; d++) n += ps_graph_edge(g, s, d);
    return n;
}

static void shape_p(const char *what, int64_t L, int64_t H, int64_t Hkv, int kv_native, int parallel, int64_t nodes, int64_t edges,
                    int64_t ns, int64_t nd) {
    ps_model_config mc;
    memset(&mc, 0, sizeof mc);
    mc.n_layers = L; mc.n_heads = H; mc.n_kv_heads = Hkv; mc.parallel_residual = parallel;
    ps_graph g;
    ps_graph_init(&g, &mc, kv_native);
    const int64_t counted = count_edges(&g);
    printf("%-34s %lld nodes, %lld edges (enumerated %lld), scores %lld x %lld\n", what, (long long)g.n_nodes, (long long)g.n_edges,
           (long long)counted, (long long)g.n_sources, (long long)g.n_dests);
    TU_CHECK(g.n_nodes == nodes, "%s: %lld nodes, want %lld", what, (long long)g.n_nodes, (long long)nodes);
    TU_CHECK(g.n_edges == edges, "%s: %lld edges, want %lld", what, (long long)g.n_edges, (long long)edges);
    TU_CHECK(counted == edges, "%s: %lld edges enumerated, want %lld", what, (long long)counted, (long long)edges);
    TU_CHECK(g.n_sources == ns && g.n_dests == nd, "%s: score matrix %lld x %lld, want %lld x %lld", what, (long long)g.n_sources,
             (long long)g.n_dests, (long long)ns, (long long)nd);
}

static void shape(const char *what, int64_t L, int64_t H, int64_t Hkv, int kv_native, int64_t nodes, int64_t edges, int64_t ns,
                  int64_t nd) {
    shape_p(what, L, H, Hkv, kv_native, 0, nodes, edges, ns, nd);
}

int main(void) {
    // EAP-IG: GPT-2 small 158 / 32,491 (157 x 445); Llama-2-7B 1,058 / 1,592,881 (NOTES.md).
    shape("gpt2-small (12 x 12)", 12, 12, 12, 0, 158, 32491, 157, 445);
    shape("llama-2-7b (32 x 32)", 32, 32, 32, 0, 1058, 1592881, 1057, 32 * 97 + 1);
    // gpt2-tiny-a (2 x 4): 1 + 2 * 5 + 1 nodes; heads 3*4*1 + 3*4*6 = 84, MLPs (1+4) + (6+4) = 15, logits 11.
    shape("gpt2-tiny-a (2 x 4)", 2, 4, 4, 0, 12, 84 + 15 + 11, 11, 2 * 13 + 1);
    // llama-tiny-b (2 x 8, 2 kv heads): EAP-IG's per-query-head layout, and the native one: per layer
    // 8 q + 2 k + 2 v destinations (20 nodes either way), heads (8 + 4) * (1, 10) = 132, MLPs (1+8) + (10+8) = 27, logits 19.
    shape("llama-tiny-b (EAP-IG layout)", 2, 8, 2, 0, 20, 3 * 8 * 11 + 27 + 19, 19, 2 * 25 + 1);
    shape("llama-tiny-b (kv native)", 2, 8, 2, 1, 20, 132 + 27 + 19, 19, 2 * 13 + 1);
    // neox-tiny-a (2 x 4, parallel residual): as gpt2-tiny-a but no MLP reads its own layer's heads: MLPs 1 + 6.
    shape_p("neox-tiny-a (parallel)", 2, 4, 4, 0, 1, 12, 84 + 7 + 11, 11, 2 * 13 + 1);

    // Indices and names agree with EAP-IG's (GPT-2 small).
    ps_model_config mc;
    memset(&mc, 0, sizeof mc);
    mc.n_layers = 12; mc.n_heads = 12; mc.n_kv_heads = 12;
    ps_graph g;
    ps_graph_init(&g, &mc, 0);
    char a[32], b[32];
    ps_graph_source_name(&g, ps_graph_source(&g, 9, 9), a, sizeof a);
    ps_graph_dest_name(&g, ps_graph_dest(&g, PS_DEST_V, 10, 7), b, sizeof b);
    TU_CHECK(!strcmp(a, "a9.h9") && !strcmp(b, "a10.h7<v>"), "names: %s, %s", a, b);
    ps_graph_source_name(&g, ps_graph_source(&g, 3, -1), a, sizeof a);
    ps_graph_dest_name(&g, ps_graph_dest(&g, PS_DEST_LOGITS, 0, 0), b, sizeof b);
    TU_CHECK(!strcmp(a, "m3") && !strcmp(b, "logits"), "names: %s, %s", a, b);
    TU_CHECK(ps_graph_source(&g, 3, -1) == 1 + 3 * 13 + 12 && ps_graph_dest(&g, PS_DEST_MLP, 3, 0) == 3 * 37 + 36,
             "EAP-IG's forward/backward indices");
    TU_CHECK(ps_graph_edge(&g, ps_graph_source(&g, 3, 2), ps_graph_dest(&g, PS_DEST_MLP, 3, 0)) &&
                 !ps_graph_edge(&g, ps_graph_source(&g, 3, 2), ps_graph_dest(&g, PS_DEST_Q, 3, 0)) &&
                 !ps_graph_edge(&g, ps_graph_source(&g, 3, -1), ps_graph_dest(&g, PS_DEST_MLP, 3, 0)) &&
                 ps_graph_edge(&g, 0, ps_graph_dest(&g, PS_DEST_K, 0, 5)),
             "which edges exist: a head feeds its own layer's MLP, not its heads; an MLP not itself; input everything");
    return tu_done("graph");
}
