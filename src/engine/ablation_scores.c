// Completeness and minimality of a kept circuit (the IOI paper, Wang et al. 2022, section 4; ARENA's IOI
// exercises): the ablation sets whose mean metrics they compare, laid out as rows of one batch, and the scores
// from those means. F(X) is the mean metric over the prompts with everything outside X ablated (ps_ablator).
#include "ps_ablation.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static int in_subset(const ps_comp_subset *k, int64_t i) {
    for (int64_t j = 0; k && j < k->n; j++)
        if (k->idx[j] == i) return 1;
    return 0;
}

// The circuit without k (and without component `also`, -1: none): a kept set into comps.
static ps_abl_set circuit_without(const ps_abl_set *C, const ps_comp_subset *k, int64_t also, ps_component *comps) {
    int64_t n = 0;
    for (int64_t i = 0; i < C->n; i++)
        if (!in_subset(k, i) && i != also) comps[n++] = C->c[i];
    return (ps_abl_set){.c = comps, .n = n, .keep = 1};
}

int ps_circuit_rows_init(const ps_abl_set *C, const ps_comp_subset *ks, int64_t n_k, const ps_comp_subset *kv, ps_circuit_rows *r,
                         ps_error *e) {
    memset(r, 0, sizeof *r);
    if (!C->keep) return ps_fail(e, PS_EXIT_BADINPUT, "completeness and minimality score a kept circuit (\"keep\")");
    for (int64_t j = 0; j < n_k + (kv ? C->n : 0); j++) {
        const ps_comp_subset *k = j < n_k ? &ks[j] : &kv[j - n_k];
        for (int64_t a = 0; a < k->n; a++) {
            if (k->idx[a] < 0 || k->idx[a] >= C->n) return ps_fail(e, PS_EXIT_BADINPUT, "a set K names a component outside the circuit");
            for (int64_t b = 0; b < a; b++)
                if (k->idx[a] == k->idx[b]) return ps_fail(e, PS_EXIT_BADINPUT, "a set K names a component twice");
        }
        if (j >= n_k && in_subset(k, j - n_k)) return ps_fail(e, PS_EXIT_BADINPUT, "minimality: a component's K holds the component itself");
    }
    r->n_k = n_k;
    r->n_v = kv ? C->n : 0;
    r->n_sets = 2 + 2 * r->n_k + 2 * r->n_v;
    // Storage: every set is at most the circuit's components.
    r->sets = calloc((size_t)r->n_sets, sizeof *r->sets);
    r->comps = calloc((size_t)(r->n_sets * (C->n ? C->n : 1)), sizeof *r->comps);
    if (!r->sets || !r->comps) { ps_circuit_rows_free(r); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for circuit scores"); }
    ps_component *cs = r->comps;
    r->sets[PS_CR_C] = *C;
    r->sets[PS_CR_M] = (ps_abl_set){.keep = 0};   // nothing ablated: F(M)
    for (int64_t j = 0; j < n_k; j++) {
        ps_abl_set *cm = &r->sets[ps_cr_c_minus_k(j)], *mm = &r->sets[ps_cr_m_minus_k(j)];
        *cm = circuit_without(C, &ks[j], -1, cs);
        cs += C->n;
        // M\K: K's components ablated where the circuit holds them (its positions), the rest of the model intact.
        for (int64_t a = 0; a < ks[j].n; a++) cs[a] = C->c[ks[j].idx[a]];
        *mm = (ps_abl_set){.c = cs, .n = ks[j].n, .keep = 0};
        cs += C->n;
    }
    for (int64_t v = 0; v < r->n_v; v++) {
        r->sets[ps_cr_c_minus_kv(r, v)] = circuit_without(C, &kv[v], -1, cs);
        cs += C->n;
        r->sets[ps_cr_c_minus_kv(r, v) + 1] = circuit_without(C, &kv[v], v, cs);
        cs += C->n;
    }
    for (int64_t s = 0; s < r->n_sets; s++) r->sets[s].mlp_means = C->mlp_means;
    return 0;
}

void ps_circuit_rows_free(ps_circuit_rows *r) {
    free(r->sets);
    free(r->comps);
    memset(r, 0, sizeof *r);
}

void ps_circuit_scores(const ps_circuit_rows *r, const double *F, double *completeness, double *minimality) {
    for (int64_t j = 0; j < r->n_k; j++) completeness[j] = fabs(F[ps_cr_c_minus_k(j)] - F[ps_cr_m_minus_k(j)]);
    for (int64_t v = 0; v < r->n_v; v++) {
        const int64_t s = ps_cr_c_minus_kv(r, v);
        minimality[2 * v] = fabs(F[s + 1] - F[s]);
        minimality[2 * v + 1] = minimality[2 * v] / F[PS_CR_M];
    }
}
