// The "ablation" and "circuit_search" kinds end to end from a config (tests/data/seqcont/ablation.json: the
// demo model, the seqcont numerals prompts and randDS reference prompts the library goldens use), through
// ps_config_load, ps_prompts_build and ps_engine_run in chunks of 5 prompts: every golden case
// (tests/data/demo/golden_ablation.json, make_ablation_goldens.py) per prompt at 1e-4, its circuit score, and
// the search trace step for step.
#include "ps_ablation.h"
#include "ps_json.h"
#include "ps_model.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4f

static const cJSON *get(const cJSON *o, const char *k) { return cJSON_GetObjectItemCaseSensitive(o, k); }

static const ps_table *table_named(const ps_run_results *rr, const char *name) {
    for (int64_t i = 0; i < rr->n_tables; i++)
        if (!strcmp(rr->tables[i].name, name)) return &rr->tables[i];
    return NULL;
}

// The golden's case -> the config's experiment and cell.
static int locate(const cJSON *c, char *exp, size_t n, int64_t *cell) {
    static const char *const sets[6] = {"h0.1", "mlp1", "n0.5", "h1.2@end+h0.0", "keep h0.0 h1.1 mlp0", "keep h1.1@end mlp1"};
    const char *set = get(c, "set")->valuestring, *method = get(c, "method")->valuestring, *group = get(c, "group")->valuestring;
    int k = 0;
    while (k < 6 && strcmp(sets[k], set)) k++;
    if (k == 6) return -1;
    snprintf(exp, n, "%s%s%s_%s", method, group[0] ? "_" : "", group, k < 4 ? "sets" : k == 4 ? "keep1" : "keep2");
    *cell = k < 4 ? k : 0;
    return 0;
}

static void check_cases(const cJSON *doc, const ps_prompt_set *ps, const ps_run_results *rr) {
    const int64_t N = ps->n;
    // The config's tokens are the golden's.
    int same = N == cJSON_GetArraySize(get(doc, "prompts"));
    for (int64_t i = 0; same && i < N; i++) {
        const cJSON *t = cJSON_GetArrayItem(get(doc, "prompts"), (int)i);
        same = ps->p[i].T == cJSON_GetArraySize(t);
        for (int64_t k = 0; same && k < ps->p[i].T; k++) same = ps->p[i].clean[k] == (int32_t)cJSON_GetArrayItem(t, (int)k)->valuedouble;
    }
    TU_CHECK(same, "the config's prompts tokenize differently from the golden's");
    double clean_mean = 0;
    for (int64_t i = 0; i < N; i++) clean_mean += rr->base.clean[i] / (double)N;
    float *got = calloc((size_t)N, sizeof(float)), *want = calloc((size_t)N, sizeof(float));
    int64_t n_cases = 0;
    double max_score_err = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, get(doc, "cases")) {
        char exp[128], lab[300];
        int64_t cell;
        if (locate(c, exp, sizeof exp, &cell) != 0) { TU_CHECK(0, "unknown golden case %s", get(c, "set")->valuestring); continue; }
        const ps_table *t = table_named(rr, exp);
        if (!t) { TU_CHECK(0, "no table %s", exp); continue; }
        for (int64_t i = 0; i < N; i++) {
            got[i] = t->values[i * t->n_cells + cell];
            want[i] = (float)cJSON_GetArrayItem(get(c, "values"), (int)i)->valuedouble;
        }
        snprintf(lab, sizeof lab, "run: %s cell %lld ('%s')", exp, (long long)cell, get(c, "set")->valuestring);
        if (tu_close(lab, got, want, N, TOL, TOL) != 0) TU_CHECK(0, "%s", lab);
        // seqcont's circuit score from the table's mean and the baseline.
        const double score = 100.0 * t->mean[cell] / clean_mean, ws = get(c, "circuit_score")->valuedouble;
        const double err = fabs(score - ws) / fmax(1.0, fabs(ws));
        if (err > max_score_err) max_score_err = err;
        TU_CHECK(err <= 1e-4, "%s: circuit score %.6f, TransformerLens %.6f", lab, score, ws);
        n_cases++;
    }
    TU_CHECK(n_cases == 36, "%lld golden cases checked, 36 expected", (long long)n_cases);
    printf("run: %lld golden cases through ps_engine_run, circuit scores max rel err %.3g\n", (long long)n_cases, max_score_err);
    free(got);
    free(want);
}

static void check_search(const cJSON *golden, const ps_run_results *rr) {
    const ps_table *t = table_named(rr, "search");
    if (!t) { TU_CHECK(0, "no search table"); return; }
    const cJSON *steps = get(golden, "steps");
    const int64_t n_want = cJSON_GetArraySize(steps);
    TU_CHECK(!t->per_prompt && t->n_axes == 2 && t->axes[0].len == n_want, "search table: %lld steps, reference %lld",
             (long long)t->axes[0].len, (long long)n_want);
    int64_t same = 0;
    double max_err = 0;
    for (int64_t i = 0; i < t->axes[0].len && i < n_want; i++) {
        const cJSON *w = cJSON_GetArrayItem(steps, (int)i);
        const float *v = t->values + i * 4;
        const double err = fabs(v[2] - get(w, "score")->valuedouble);
        if (err > max_err) max_err = err;
        const int ok = !strcmp(t->axes[0].label[i], get(w, "cand")->valuestring) && (int)v[3] == cJSON_IsTrue(get(w, "removed")) &&
                       (int64_t)v[0] == (int64_t)get(w, "pass")->valuedouble && err <= 1e-3;
        TU_CHECK(ok, "step %lld: %s score %.5f removed %d; reference %s %.5f", (long long)i, t->axes[0].label[i], v[2], (int)v[3],
                 get(w, "cand")->valuestring, get(w, "score")->valuedouble);
        same += ok;
    }
    const ps_attr *circ = ps_table_attr(t, "circuit"), *fs = ps_table_attr(t, "final_score");
    char want[512] = "";
    const cJSON *x;
    cJSON_ArrayForEach(x, get(golden, "heads")) snprintf(want + strlen(want), sizeof want - strlen(want), "%s%s", want[0] ? " " : "", x->valuestring);
    cJSON_ArrayForEach(x, get(golden, "mlps")) snprintf(want + strlen(want), sizeof want - strlen(want), " mlp%d", (int)x->valuedouble);
    TU_CHECK(circ && !strcmp(circ->s, want), "final circuit \"%s\", reference \"%s\"", circ ? circ->s : "?", want);
    const double fe = fs ? fabs(fs->f - get(golden, "final_score")->valuedouble) : 1e9;
    TU_CHECK(fe <= 1e-3, "final score err %.3g", fe);
    printf("run: search %lld/%lld steps equal to the reference, max score err %.3g points, circuit \"%s\", final score err %.3g\n",
           (long long)same, (long long)n_want, max_err, circ ? circ->s : "?", fe);
}

// The reference_means table of an experiment equals the library's means over its reference prompts.
static void check_means(const ps_model *m, ps_backend *be, const ps_prompt_set *ps, const ps_run_results *rr, const ps_config *cfg) {
    ps_error e = {0};
    int64_t checked = 0;
    for (int64_t x = 0; x < cfg->n_experiments; x++) {
        const ps_experiment *ex = &cfg->experiments[x];
        if (strcmp(ex->kind, "reference_means")) continue;
        const ps_experiment *of = &cfg->experiments[ex->means_of];
        if (of->abl_group == PS_GROUP_PER_TEMPLATE_POSITION) continue;   // grouped: checked through the ablation values
        const ps_table *t = table_named(rr, ex->name);
        ps_ref_means rm;
        if (!t || ps_ref_means_compute(m, be, &ps->ref[ex->means_of], (ps_mean_group)of->abl_group, NULL, 1, "ref", &rm, &e) != 0) {
            TU_CHECK(0, "%s: %s", ex->name, t ? e.msg : "no table");
            continue;
        }
        const int64_t U = t->axes[3].len, R = rm.rows, L = m->cfg.n_layers;
        float *want = malloc((size_t)t->n_cells * sizeof(float));
        for (int64_t l = 0; want && l < L; l++)
            for (int64_t r = 0; r < R; r++) {
                float *d = want + (l * R + r) * U;
                for (int s = 0; s < PS_MS_COUNT; s++) {
                    if (!rm.site[s]) continue;   // hook_result: only for heads ablated there
                    memcpy(d, rm.site[s] + (l * R + r) * rm.width[s], (size_t)rm.width[s] * sizeof(float));
                    d += rm.width[s];
                }
            }
        char lab[200];
        snprintf(lab, sizeof lab, "run: %s (layer x group x pos x unit)", ex->name);
        TU_CHECK(want && t->n_cells == L * R * U && tu_close(lab, t->values, want, t->n_cells, 0, 0) == 0, "%s", lab);
        checked++;
        free(want);
        ps_ref_means_free(&rm);
    }
    TU_CHECK(checked == 7, "%lld reference_means tables checked, 7 expected", (long long)checked);
}

int main(void) {
    ps_error e = {0};
    ps_config cfg;
    ps_model m;
    ps_backend be;
    ps_tokenizer *tok = NULL;
    ps_prompt_set ps = {0};
    ps_run_results rr = {0};
    char path[700];
    snprintf(path, sizeof path, "%s", tu_src("tests/data/demo/golden_ablation.json"));
    cJSON *doc = ps_json_parse_file(path, &e);
    if (!doc) { TU_CHECK(0, "%s", e.msg); return tu_done("ablation_run"); }
    snprintf(path, sizeof path, "%s", tu_src("tests/data/seqcont/ablation.json"));
    if (ps_config_load(&cfg, path, &e) != 0) { TU_CHECK(0, "%s", e.msg); cJSON_Delete(doc); return tu_done("ablation_run"); }
    int rc = ps_model_load(&m, cfg.model, &e);
    if (rc == 0) rc = ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, 1, &m, &e);
    if (rc == 0) rc = ps_tokenizer_load(&tok, cfg.model, &e);
    if (rc == 0) rc = ps_prompts_build(&ps, &cfg, tok, &m.cfg, &e);
    ps_engine_opts o = {.chunk_prompts = 5};   // 3 chunks: draws and means must not depend on them
    if (rc == 0) rc = ps_engine_run(&m, &be, &ps, cfg.experiments, cfg.n_experiments, cfg.metric, &o, &rr, &e);
    TU_CHECK(rc == 0, "%s", e.msg);
    if (rc == 0) {
        check_cases(doc, &ps, &rr);
        check_search(get(doc, "search"), &rr);
        check_means(&m, &be, &ps, &rr, &cfg);
        // --dry-run's memory: the same accounting as the run, the search's kept baselines included (at least every
        // prompt's lean run; before, a dry run counted one chunk's caches and left them out).
        ps_run_results dry = {0};
        ps_engine_opts od = o;
        od.dry_run = 1;
        size_t kept = 0;
        for (int64_t i = 0; i < ps.n; i++) kept += ps_cache_floats(&m.cfg, ps.p[i].T, PS_CACHE_LEAN) * sizeof(float);
        TU_CHECK(ps_engine_run(&m, &be, &ps, cfg.experiments, cfg.n_experiments, cfg.metric, &od, &dry, &e) == 0, "dry run: %s", e.msg);
        TU_CHECK(dry.peak_cache_bytes == rr.peak_cache_bytes && rr.peak_cache_bytes >= kept,
                 "caches at once: dry run %zu bytes, run %zu, the kept runs at least %zu", dry.peak_cache_bytes, rr.peak_cache_bytes, kept);
        printf("run: caches at once %zu bytes (dry run %zu), the prompts' lean runs %zu\n", rr.peak_cache_bytes, dry.peak_cache_bytes, kept);
        ps_run_results_free(&dry);
    }
    ps_run_results_free(&rr);
    ps_prompt_set_free(&ps);
    ps_tokenizer_free(tok);
    ps_backend_free(&be);
    ps_model_free(&m);
    ps_config_free(&cfg);
    cJSON_Delete(doc);
    return tu_done("ablation_run");
}
