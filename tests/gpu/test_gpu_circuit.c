// Kind edge_circuit on the CUDA backend (fp32): the circuits of EAP-IG's graph file (top 80, 25, 0) and top 25's kept
// edges by name, on the sequential models and on GPT-NeoX's parallel blocks (neox-tiny-a, -c), against
// hannamw/EAP-IG's evaluate_graph (tests/golden/run_eap_ig_circuits.py) at 1e-4 and against the CPU backend's run.
// Without a GPU it reports itself skipped.
#include "gpu_common.h"
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_circuit.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double rel_err(double got, double want) { return fabs(got - want) / (1.0 + fabs(want)); }

static void test_model(const char *name) {
    pf_fixture f;
    if (pf_load_or_fail(&f, name) != 0) return;
    char rel[256], graph_json[512];
    ps_safetensors gs;
    ps_error e = {0};
    snprintf(rel, sizeof rel, "tests/data/%s/golden_eap_ig_circuits.safetensors", name);
    if (ps_safetensors_open(&gs, tu_src(rel), &e) != 0) { TU_CHECK(0, "%s: %s", name, e.msg); pf_free(&f); return; }
    snprintf(rel, sizeof rel, "tests/data/%s/golden_eap_ig_graph.json", name);
    snprintf(graph_json, sizeof graph_json, "%s", tu_src(rel));
    ps_graph g;
    ps_graph_init(&g, &f.m.cfg, 1);
    const int64_t N = g.n_sources * g.n_dests;
    int64_t n = 0, n_names = 0;
    float *mask = gu_f32(&gs, "top25.in_graph", &n);
    char **names = calloc((size_t)N, sizeof *names);
    for (int64_t i = 0; mask && names && n == N && i < N; i++)
        if (mask[i] != 0) names[n_names++] = gu_edge_name(&g, i);
    int64_t tops[3] = {80, 25, 0};
    ps_experiment ex[2] = {{.name = "file", .kind = "edge_circuit", .scores_path = graph_json, .top_ns = tops, .n_top_ns = 3},
                           {.name = "listed", .kind = "edge_circuit", .edge_names = names, .n_edge_names = n_names}};
    ps_engine_opts o = {0};
    ps_backend be[2];
    ps_run_results rr[2];
    int ok[2] = {0, 0};
    for (int k = 0; k < 2; k++) {
        const ps_backend_opts bo = {.kind = k ? PS_BACKEND_CUDA : PS_BACKEND_CPU, .precision = PS_PREC_FP32};
        if (ps_backend_init_opts(&be[k], &bo, &f.m, &e) != 0) { TU_CHECK(0, "%s: backend %d: %s", name, k, e.msg); continue; }
        ok[k] = ps_engine_run(&f.m, &be[k], &f.ps, ex, 2, PS_METRIC_LOGIT_DIFF, &o, &rr[k], &e) == 0;
        TU_CHECK(ok[k], "%s: %s engine: %s", name, k ? "cuda" : "cpu", e.msg);
        ps_backend_free(&be[k]);
    }
    static const char *const keys[4] = {"top80", "top25", "none", "top25"};
    double worst = 0, worst_cpu = 0;
    for (int c = 0; ok[0] && ok[1] && c < 4; c++) {
        char key[64];
        snprintf(key, sizeof key, "%s.metric", keys[c]);
        float *want = gu_f32(&gs, key, &n);
        const ps_table *tg = &rr[1].tables[c < 3 ? 0 : 1], *tc = &rr[0].tables[c < 3 ? 0 : 1];
        const int64_t row = c < 3 ? c : 0;
        for (int64_t i = 0; want && n == f.ps.n && i < f.ps.n; i++) {
            const double got = tg->values[(row * f.ps.n + i) * 3], cpu = tc->values[(row * f.ps.n + i) * 3];
            const double err = rel_err(got, want[i]), errc = rel_err(got, cpu);
            if (err > worst) worst = err;
            if (errc > worst_cpu) worst_cpu = errc;
            TU_CHECK(err <= 1e-4 && errc <= 1e-4, "%s %s %s pair %lld: cuda %.7g, EAP-IG %.7g, cpu %.7g", name, ex[c < 3 ? 0 : 1].name, keys[c],
                     (long long)i, got, want[i], cpu);
        }
        TU_CHECK(want && n == f.ps.n, "%s: %s", name, key);
        free(want);
    }
    printf("%s: edge_circuit on cuda fp32: max rel err %.2e vs EAP-IG's evaluate_graph, %.2e vs the cpu backend\n", name, worst, worst_cpu);
    for (int k = 0; k < 2; k++)
        if (ok[k]) ps_run_results_free(&rr[k]);
    for (int64_t i = 0; names && i < n_names; i++) free(names[i]);
    free(names);
    free(mask);
    ps_safetensors_free(&gs);
    pf_free(&f);
}

int main(void) {
    gpu_require_device();
    const char *models[] = {"gpt2-tiny-a", "llama-tiny-a", "neox-tiny-a", "neox-tiny-c"};
    for (int i = 0; i < 4; i++) test_model(models[i]);
    return tu_done("gpu circuit");
}
