// Cache rows that start past layer 0 (PS_CAP_CACHE_LATE, ps_backend.h): a run rewritten in place from layer s
// with patches that equal the old run's below s must be, array by array, the run of the new patches from the
// embedding. On every tiny model, at every start layer, alone and in a batch beside a row from the embedding;
// and a backend without the bit (CUDA's caps) has the row refused by ps_row_check, naming the feature.
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_forward.h"
#include "ps_plan.h"
#include "ps_backend.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

// Whole caches (one allocation each) compared float by float: bitwise with this machine's BLAS (the mismatch count
// printed), within 1e-6 abs + 1e-6 rel allowed (a kernel may round a row by where it falls in a GEMM, ps_forward.h).
static void same_cache(const char *what, const ps_cache *got, const ps_cache *want) {
    TU_CHECK(got->n_floats == want->n_floats, "%s: caches of %zu and %zu floats", what, got->n_floats, want->n_floats);
    int64_t bad = 0, diff_bits = 0;
    float mx = 0;
    for (size_t i = 0; i < got->n_floats && got->n_floats == want->n_floats; i++) {
        const float g = got->memory[i], w = want->memory[i];
        if (memcmp(&g, &w, sizeof g) == 0) continue;   // equal bits (masked scores are -inf in both)
        diff_bits++;
        const float d = g > w ? g - w : w - g, aw = w < 0 ? -w : w;
        if (!(d <= 1e-6f + 1e-6f * aw)) {
            if (bad++ < 5) fprintf(stderr, "  %s: float %zu: %.9g vs %.9g\n", what, i, g, w);
        }
        if (d > mx) mx = d;
    }
    printf("%s: n=%zu max_abs_err=%g bitwise_mismatches=%lld out_of_tolerance=%lld\n", what, got->n_floats, mx, (long long)diff_bits,
           (long long)bad);
    TU_CHECK(bad == 0, "%s: %lld of %zu floats differ from the run from the embedding (max %g)", what, (long long)bad, got->n_floats, mx);
}

static void test_model(const char *model) {
    pf_fixture f;
    if (pf_load_or_fail(&f, model) != 0) return;
    const ps_model_config *mc = &f.m.cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads;
    ps_error e = {0};
    for (int64_t i = 0; i < f.ps.n && i < 2; i++) {
        const ps_prompt *p = &f.ps.p[i];
        const int64_t T = p->T;
        for (int64_t s = 1; s < L; s++) {
            // Old run: head 0 zeroed at layer 0 and the MLP halved at layer 0. New run: the same, and at layer s
            // head H-1's z zeroed, the MLP's output zeroed at the last position, a neuron scaled.
            ps_patch pt[5];
            int64_t n_old = 0;
            pt[n_old++] = (ps_patch){.site = PS_SITE_Z, .layer = 0, .head = 0, .pos = -1, .neuron = -1, .op = PS_OP_ZERO};
            pt[n_old++] = (ps_patch){.site = PS_SITE_MLP_OUT, .layer = 0, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_SCALE, .factor = 0.5f};
            int64_t n_new = n_old;
            pt[n_new++] = (ps_patch){.site = PS_SITE_Z, .layer = s, .head = H - 1, .pos = -1, .neuron = -1, .op = PS_OP_ZERO};
            pt[n_new++] = (ps_patch){.site = PS_SITE_MLP_OUT, .layer = s, .head = -1, .pos = T - 1, .neuron = -1, .op = PS_OP_ZERO};
            pt[n_new++] = (ps_patch){.site = PS_SITE_MLP_POST, .layer = s, .head = -1, .pos = -1, .neuron = 1, .op = PS_OP_SCALE, .factor = 3.0f};
            ps_cache run = {0}, want = {0}, other = {0}, other_want = {0};
            const unsigned fl = PS_CACHE_LOGITS | PS_CACHE_RESULT | PS_CACHE_SCORES;
            TU_CHECK(ps_cache_init(&run, mc, T, fl, &e) == 0 && ps_cache_init(&want, mc, T, fl, &e) == 0 &&
                     ps_cache_init(&other, mc, T, fl, &e) == 0 && ps_cache_init(&other_want, mc, T, fl, &e) == 0, "%s: cache: %s", model, e.msg);
            ps_row r = {.tokens = p->clean, .T = T, .patches = pt, .n_patches = n_new, .cache = &want};
            TU_CHECK(ps_cpu_forward(&f.m, &r, 1, &e) == 0, "%s: new run from the embedding: %s", model, e.msg);
            r = (ps_row){.tokens = p->corrupted, .T = T, .patches = pt, .n_patches = n_old, .cache = &other_want};
            TU_CHECK(ps_cpu_forward(&f.m, &r, 1, &e) == 0, "%s: other run: %s", model, e.msg);
            for (int batch = 0; batch < 2; batch++) {
                // The old run, then rewritten in place from layer s (batch 1: beside a row from the embedding).
                r = (ps_row){.tokens = p->clean, .T = T, .patches = pt, .n_patches = n_old, .cache = &run};
                TU_CHECK(ps_cpu_forward(&f.m, &r, 1, &e) == 0, "%s: old run: %s", model, e.msg);
                ps_row rows[2] = {
                    {.tokens = p->corrupted, .T = T, .patches = pt, .n_patches = n_old, .cache = &other},
                    {.tokens = p->clean, .T = T, .patches = pt, .n_patches = n_new, .cache = &run, .base = &run, .start_layer = s},
                };
                TU_CHECK((ps_row_caps(&rows[1]) & PS_CAP_CACHE_LATE) != 0, "%s: the row does not ask for PS_CAP_CACHE_LATE", model);
                TU_CHECK(ps_row_check(mc, &rows[1], PS_CAPS_CPU, "cpu", &e) == 0, "%s: the cpu backend refuses the row: %s", model, e.msg);
                // The contract: nothing below s is written. A marker in the embedding (which a run from the embedding would
                // overwrite) must survive; then the true values go back for the comparison.
                const float mark = 12345.0f, keep = run.embed[0];
                run.embed[0] = mark;
                TU_CHECK(ps_cpu_forward(&f.m, batch ? rows : rows + 1, batch ? 2 : 1, &e) == 0, "%s: rewrite from layer %lld: %s", model,
                         (long long)s, e.msg);
                TU_CHECK(run.embed[0] == mark, "%s: the rewrite from layer %lld wrote the embedding", model, (long long)s);
                run.embed[0] = keep;
                char what[160];
                snprintf(what, sizeof what, "%s prompt %lld rewritten from layer %lld%s", model, (long long)i, (long long)s,
                         batch ? " (beside a row from the embedding)" : "");
                same_cache(what, &run, &want);
                if (batch) {
                    snprintf(what, sizeof what, "%s prompt %lld the row beside it", model, (long long)i);
                    same_cache(what, &other, &other_want);
                }
                // A backend without the bit: refused with the feature's name, exit status 2.
                ps_error e2 = {0};
                TU_CHECK(ps_row_check(mc, &rows[1], PS_CAPS_CUDA, "cuda", &e2) != 0 && e2.code == PS_EXIT_BADINPUT &&
                         strstr(e2.msg, "cache rows that start past layer 0"), "%s: CUDA's caps do not refuse the row (%s)", model, e2.msg);
            }
            ps_cache_free(&run);
            ps_cache_free(&want);
            ps_cache_free(&other);
            ps_cache_free(&other_want);
        }
    }
    pf_free(&f);
}

int main(void) {
    int tested = gu_for_each_model(test_model);
    printf("%d models' late cache rows compared\n", tested);
    TU_CHECK(tested > 0, "no model tested");
    return tu_done("cache_late");
}
