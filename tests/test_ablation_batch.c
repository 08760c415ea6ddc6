// The circuit search batched equals it unbatched: on the demo model (tests/data/demo/golden_ablation.json's
// prompts and reference prompts), seqcont's pruning with MLP means under the head ablation, run as the oracle
// (--naive: every row and reference run from the embedding, no base runs), with one prompt per backend call
// (batch_rows 1), in blocks of 5 and 32 prompts (the default) and with only the scored prompts' base runs held,
// at thresholds that keep every MLP (the golden's 20) and that remove MLPs (so the MLP means a head candidate
// reads are taken from its layer on). Every configuration's trace must equal the oracle's step for step
// (candidate, pass, removed) and its scores within 1e-5 points; and plain mean and zero ablation the same.
// The fast modes read a step's score from an earlier one for the same circuit (no removal between): exactly those
// steps the oracle's trace allows, counted from it.
#include "ps_ablation.h"
#include "ps_json.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SCORE_TOL 1e-5

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) { fprintf(stderr, "test_ablation_batch: out of memory\n"); exit(1); }
    return p;
}

// Prompts from token lists (the metric at the last position).
static void build_set(ps_prompt_set *ps, const cJSON *toks, const cJSON *ans, const cJSON *wrong) {
    ps->n = cJSON_GetArraySize(toks);
    ps->p = xcalloc((size_t)ps->n, sizeof *ps->p);
    for (int i = 0; i < ps->n; i++) {
        const cJSON *t = cJSON_GetArrayItem(toks, i);
        ps_prompt *p = &ps->p[i];
        p->T = p->T_prompt = cJSON_GetArraySize(t);
        p->clean = xcalloc((size_t)p->T, sizeof(int32_t));
        p->corrupted = xcalloc((size_t)p->T, sizeof(int32_t));
        for (int k = 0; k < p->T; k++) p->clean[k] = p->corrupted[k] = (int32_t)cJSON_GetArrayItem(t, k)->valuedouble;
        p->score_pos = p->T - 1;
        p->answer_id = ans ? (int32_t)cJSON_GetArrayItem(ans, i)->valuedouble : 0;
        p->wrong_id = wrong ? (int32_t)cJSON_GetArrayItem(wrong, i)->valuedouble : 1;
        if (p->T > ps->T_max) ps->T_max = p->T;
    }
}

typedef struct { const char *name; int naive; int64_t batch_rows; int small_budget; int64_t group_rows; int threads; } mode;

static int run(ps_model *m, ps_backend *be, const ps_prompt_set *ps, const ps_prompt_set *ref, const ps_ref_means *means,
               ps_abl_method method, int under, double threshold, const mode *md, ps_search_result *r) {
    ps_error e = {0};
    ps_ablator a = {.m = m, .be = be, .ps = ps, .metric = PS_METRIC_LOGIT_DIFF, .method = method, .means = method == PS_ABL_MEAN ? means : NULL,
                    .batch_rows = md->batch_rows, .group_rows = md->group_rows};
    const int nt0 = omp_get_max_threads();
    if (md->threads) omp_set_num_threads(md->threads);
    if (ps_ablator_init(&a, "demo", &e) != 0) { TU_CHECK(0, "%s: %s", md->name, e.msg); return -1; }
    size_t ps_bytes = 0;
    for (int64_t i = 0; i < ps->n; i++) ps_bytes += ps_cache_floats(&m->cfg, ps->p[i].T, 0) * sizeof(float);
    const ps_search_opts o = {.threshold = threshold, .mlp_means_under_heads = under, .ref = ref, .naive = md->naive,
                              .base_budget = md->small_budget ? ps_bytes : 0};
    const int rc = ps_circuit_search(&a, &o, r, &e);
    if (rc != 0) TU_CHECK(0, "%s: search: %s", md->name, e.msg);
    ps_ablator_free(&a);
    omp_set_num_threads(nt0);
    return rc;
}

static void circuit_of(const ps_model_config *mc, const ps_search_result *r, char *buf, size_t n) {
    buf[0] = 0;
    for (int64_t l = 0; l < mc->n_layers; l++)
        for (int64_t h = 0; h < mc->n_heads; h++)
            if (r->head_kept[l * mc->n_heads + h]) snprintf(buf + strlen(buf), n - strlen(buf), "h%lld.%lld ", (long long)l, (long long)h);
    for (int64_t l = 0; l < mc->n_layers; l++)
        if (r->mlp_kept[l]) snprintf(buf + strlen(buf), n - strlen(buf), "mlp%lld ", (long long)l);
}

int main(void) {
    char path[700];
    snprintf(path, sizeof path, "%s/demo/golden_ablation.json", tu_src("tests/data"));
    ps_error e = {0};
    cJSON *doc = ps_json_parse_file(path, &e);
    if (!doc) { TU_CHECK(0, "%s", e.msg); return tu_done("ablation_batch"); }
    ps_model m;
    ps_backend be;
    if (ps_model_load(&m, tu_src("models/demo"), &e) != 0 || ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, 1, &m, &e) != 0) {
        TU_CHECK(0, "%s", e.msg);
        return tu_done("ablation_batch");
    }
    ps_prompt_set ps = {0}, ref = {0};
    build_set(&ps, get(doc, "prompts"), get(doc, "answer"), get(doc, "wrong"));
    build_set(&ref, get(doc, "ref"), NULL, NULL);
    ps_ref_means means;
    if (ps_ref_means_compute(&m, &be, &ref, PS_GROUP_PER_POSITION, NULL, 1, "reference", &means, &e) != 0) {
        TU_CHECK(0, "means: %s", e.msg);
        return tu_done("ablation_batch");
    }
    // Groups of 3 rows (the default is 32): at two threads enough groups a call that they run on the threads, each
    // whole on one (ps_cpu_groups_on_threads); their scores must then be bitwise those of the same groups on one.
    enum { N_MODES = 7, ONE_THREAD = 5, TWO_THREADS = 6 };
    const mode modes[N_MODES] = {{"oracle (naive)", 1, 0, 0, 0, 0}, {"1 prompt a call", 0, 1, 0, 0, 0}, {"blocks of 5", 0, 5, 0, 0, 0},
                                 {"default blocks", 0, 0, 0, 0, 0}, {"default, scored prompts' runs only", 0, 0, 1, 0, 0},
                                 {"groups of 3, one thread", 0, 0, 0, 3, 1}, {"groups of 3, two threads", 0, 0, 0, 3, 2}};
    // (method, MLP means under the heads, threshold): 20 keeps every MLP; 60 and 90 remove some.
    const struct { ps_abl_method method; int under; double threshold; } cases[5] = {
        {PS_ABL_MEAN, 1, 20}, {PS_ABL_MEAN, 1, 60}, {PS_ABL_MEAN, 1, 90}, {PS_ABL_MEAN, 0, 60}, {PS_ABL_ZERO, 0, 60}};
    int mlp_removed = 0, any_reusable = 0;
    for (int c = 0; c < 5; c++) {
        ps_search_result want;
        if (run(&m, &be, &ps, &ref, &means, cases[c].method, cases[c].under, cases[c].threshold, &modes[0], &want) != 0) continue;
        char wc[512];
        circuit_of(&m.cfg, &want, wc, sizeof wc);
        for (int64_t l = 0; l < m.cfg.n_layers; l++) mlp_removed |= cases[c].under && !want.mlp_kept[l];
        // Steps whose candidate was scored before for the same circuit (no removal since): from the oracle's trace,
        // which scores every step afresh. The fast modes must read exactly these from what they scored.
        int64_t reusable = 0;
        {
            const int64_t n_comp = m.cfg.n_layers * m.cfg.n_heads + m.cfg.n_layers;
            uint8_t *seen = calloc((size_t)n_comp, 1);
            for (int64_t i = 0; seen && i < want.n_steps; i++) {
                const ps_component *cd = &want.steps[i].cand;
                const int64_t slot = cd->kind == PS_COMP_HEAD ? cd->layer * m.cfg.n_heads + cd->index : m.cfg.n_layers * m.cfg.n_heads + cd->layer;
                reusable += seen[slot];
                seen[slot] = 1;
                if (want.steps[i].removed) memset(seen, 0, (size_t)n_comp);
            }
            free(seen);
        }
        any_reusable |= reusable > 0;
        ps_search_result one = {0};
        for (int k = 1; k < N_MODES; k++) {
            ps_search_result got;
            if (run(&m, &be, &ps, &ref, &means, cases[c].method, cases[c].under, cases[c].threshold, &modes[k], &got) != 0) continue;
            int64_t same = 0, first_bad = -1;
            double max_err = 0;
            for (int64_t i = 0; i < got.n_steps && i < want.n_steps; i++) {
                const ps_search_step *g = &got.steps[i], *w = &want.steps[i];
                const double err = fabs(g->score - w->score);
                if (err > max_err) max_err = err;
                const int ok = g->cand.kind == w->cand.kind && g->cand.layer == w->cand.layer && g->cand.index == w->cand.index &&
                               g->pass == w->pass && g->removed == w->removed && err <= SCORE_TOL * (1 + fabs(w->score)) &&
                               fabs(g->score_before - w->score_before) <= SCORE_TOL * (1 + fabs(w->score_before));
                if (!ok && first_bad < 0) first_bad = i;
                same += ok;
            }
            char gc[512];
            circuit_of(&m.cfg, &got, gc, sizeof gc);
            const double fe = fabs(got.final_score - want.final_score);
            printf("%s under=%d threshold %g, %s: %lld/%lld steps equal to the oracle's, max score diff %.3g points, final %s(diff %.3g), "
                   "%lld steps read from earlier scores (%lld expected)\n",
                   ps_abl_method_name(cases[c].method), cases[c].under, cases[c].threshold, modes[k].name, (long long)same,
                   (long long)want.n_steps, max_err, gc, fe, (long long)got.candidates_reused, (long long)reusable);
            TU_CHECK(got.candidates_reused == reusable, "%s threshold %g, %s: %lld steps read from earlier scores, the trace allows %lld",
                     ps_abl_method_name(cases[c].method), cases[c].threshold, modes[k].name, (long long)got.candidates_reused,
                     (long long)reusable);
            TU_CHECK(got.n_steps == want.n_steps && same == want.n_steps && !strcmp(gc, wc) && fe <= SCORE_TOL * (1 + fabs(want.final_score)),
                     "%s threshold %g, %s: %lld steps (oracle %lld), first mismatch at step %lld, circuit %s vs %s",
                     ps_abl_method_name(cases[c].method), cases[c].threshold, modes[k].name, (long long)got.n_steps,
                     (long long)want.n_steps, (long long)first_bad, gc, wc);
            if (k == ONE_THREAD) {
                one = got;
                continue;
            }
            if (k == TWO_THREADS) {
                int64_t differ = 0, first = -1;
                for (int64_t i = 0; i < got.n_steps && i < one.n_steps; i++)
                    if (got.steps[i].score != one.steps[i].score) { differ++; if (first < 0) first = i; }
                TU_CHECK(got.n_steps == one.n_steps && differ == 0 && got.final_score == one.final_score,
                         "%s threshold %g: groups on two threads: %lld of %lld steps' scores differ from one thread's (first %lld)",
                         ps_abl_method_name(cases[c].method), cases[c].threshold, (long long)differ, (long long)got.n_steps, (long long)first);
            }
            ps_search_result_free(&got);
        }
        ps_search_result_free(&one);
        ps_search_result_free(&want);
    }
    // Otherwise the MLP means from a head candidate's layer on would go untested.
    TU_CHECK(mlp_removed, "no case with MLP means under the heads removes an MLP: pick higher thresholds");
    TU_CHECK(any_reusable, "no case has a step scored before for the same circuit: the reuse goes untested");
    ps_ref_means_free(&means);
    ps_prompt_set_free(&ps);
    ps_prompt_set_free(&ref);
    ps_backend_free(&be);
    ps_model_free(&m);
    cJSON_Delete(doc);
    return tu_done("ablation_batch");
}
