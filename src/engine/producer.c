// The registry of experiment kinds (ps_producer.h) and what every producer shares: progress and stop requests.
#include "ps_producer.h"
#include "ps_circuit.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

// Every kind, in the order the engine runs them within a chunk.
static const ps_producer *const producers[] = {
    &ps_patch_sweep_producer,
    &ps_path_patch_producer,
    &ps_dla_producer,
    &ps_logit_lens_producer,
    &ps_attention_producer,
    &ps_ov_scores_producer,
    &ps_head_scores_producer,
    &ps_neurons_producer,
    &ps_neuron_top_producer,
    &ps_attribution_producer,
    &ps_edge_attribution_producer,
    &ps_ablation_producer,
    &ps_circuit_search_producer,
    &ps_edge_circuit_producer,
    &ps_circuit_scores_producer,    // after the ablations whose rows it scores
    &ps_reference_means_producer,   // last: after the experiments whose means it records
};

const ps_producer *ps_producer_at(size_t i) { return i < sizeof producers / sizeof producers[0] ? producers[i] : NULL; }

const ps_producer *ps_producer_for(const char *kind) {
    for (size_t i = 0; i < sizeof producers / sizeof producers[0]; i++)
        if (!strcmp(producers[i]->kind, kind)) return producers[i];
    return NULL;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void ps_producer_progress(ps_producer_ctx *cx, int final) {
    if (!cx->o->progress) return;
    double t = now_s();
    if (cx->t_start == 0) cx->t_start = cx->t_last = t;
    if (!final && t - cx->t_last < 0.5) return;
    cx->t_last = t;
    double el = t - cx->t_start, rate = el > 0 ? (double)cx->done / el : 0;
    double eta = rate > 0 ? (double)(cx->total - cx->done) / rate : 0;
    fprintf(stderr, "\r  cells %lld/%lld  %.1f/s  elapsed %.0fs  eta %.0fs   %s", (long long)cx->done, (long long)cx->total, rate,
            el, eta, final ? "\n" : "");
    fflush(stderr);
}

int ps_producer_stopped(const ps_producer_ctx *cx, ps_error *e) {
    if (cx->o->stop && *cx->o->stop) return ps_fail(e, PS_EXIT_RUNTIME, "interrupted");
    return 0;
}
