// Rows that start a layer at base's attn_out plus their changed heads' part of W_O (ps_row.head_delta,
// PS_CAP_HEAD_DELTA in ps_backend.h) against the path without it (W_O over every head) and against a run from the
// embedding: on every tiny model (GPT-NeoX's parallel block: the MLP's output stays base's), at every layer, one head
// changed at every position and two heads at one position, alone and in a batch beside a row without the delta; the
// engine plans the rows (ps_engine_rows). A backend without the bit has the row refused, naming the feature.
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_backend.h"
#include "ps_forward.h"
#include "ps_plan.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

// The sum (z - base z) @ W_O[h] + base's attn_out rounds differently from z @ W_O over every head + b_O: abs + rel.
#define TOL_ABS 1e-5f
#define TOL_REL 1e-5f

static float worst = 0;

static void same_logits(const char *what, const float *got, const float *want, int64_t n) {
    int64_t bad = 0;
    float mx = 0;
    for (int64_t i = 0; i < n; i++) {
        const float d = got[i] > want[i] ? got[i] - want[i] : want[i] - got[i], aw = want[i] < 0 ? -want[i] : want[i];
        if (!(d <= TOL_ABS + TOL_REL * aw) && bad++ < 5) fprintf(stderr, "  %s: logit %lld: %.9g vs %.9g\n", what, (long long)i, got[i], want[i]);
        if (d > mx) mx = d;
    }
    if (mx > worst) worst = mx;
    printf("%s: n=%lld max_abs_err=%g out_of_tolerance=%lld\n", what, (long long)n, mx, (long long)bad);
    TU_CHECK(bad == 0, "%s: %lld of %lld logits outside %g abs + %g rel (max %g)", what, (long long)bad, (long long)n, TOL_ABS, TOL_REL, mx);
}

static void test_model(const char *model) {
    pf_fixture f;
    ps_backend be;
    if (pf_load_cpu_or_fail(&f, model, 1, &be) != 0) return;
    const ps_model_config *mc = &f.m.cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads, V = mc->d_vocab;
    ps_error e = {0};
    TU_CHECK(H >= 2, "%s: the test needs two heads a layer", model);
    TU_CHECK((be.caps & PS_CAP_HEAD_DELTA) && !(PS_CAPS_CUDA & PS_CAP_HEAD_DELTA), "%s: the cpu backend lacks the bit or CUDA claims it", model);
    for (int64_t i = 0; i < f.ps.n && i < 2 && H >= 2; i++) {
        const ps_prompt *p = &f.ps.p[i];
        const int64_t T = p->T, out_pos[2] = {T - 2, T - 1};
        ps_cache base = {0};
        TU_CHECK(ps_cache_init(&base, mc, T, 0, &e) == 0, "%s: cache: %s", model, e.msg);
        for (int64_t l = 0; l < L; l++)
            for (int variant = 0; variant < 2; variant++) {
                // Base: head 1 zeroed at every layer, layer 0's MLP output zeroed at position 1 (patches that leave base's run
                // as it is, so the row is narrowed). The row: also, at layer l, head H-1 (head 0 with two heads) zeroed
                // everywhere (variant 0) or heads 0 and H-1 scaled by 0.5 at position T-2 (variant 1).
                ps_patch pt[8];
                int64_t n_old = 0;
                for (int64_t k = 0; k < L; k++)
                    pt[n_old++] = (ps_patch){.site = PS_SITE_Z, .layer = k, .head = 1, .pos = -1, .neuron = -1, .op = PS_OP_ZERO};
                pt[n_old++] = (ps_patch){.site = PS_SITE_MLP_OUT, .layer = 0, .head = -1, .pos = 1, .neuron = -1, .op = PS_OP_ZERO};
                int64_t n_new = n_old;
                if (variant == 0)
                    pt[n_new++] = (ps_patch){.site = PS_SITE_Z, .layer = l, .head = H > 2 ? H - 1 : 0, .pos = -1, .neuron = -1, .op = PS_OP_ZERO};
                else
                    pt[n_new++] = (ps_patch){.site = PS_SITE_Z, .layer = l, .head = -1, .pos = T - 2, .neuron = -1, .op = PS_OP_SCALE,
                                             .factor = 0.5f, .head_mask = 1ull | (1ull << (H - 1))};
                ps_row r = {.tokens = p->clean, .T = T, .patches = pt, .n_patches = n_old, .cache = &base};
                TU_CHECK(ps_cpu_forward(&f.m, &r, 1, &e) == 0, "%s: base run: %s", model, e.msg);
                float *lg = malloc((size_t)(4 * 2 * V) * sizeof(float));
                TU_CHECK(lg != NULL, "out of memory");
                if (!lg) break;
                // rows[0]: with the delta, rows[1]: without, rows[2]: from the embedding.
                ps_row rows[3];
                for (int k = 0; k < 3; k++)
                    rows[k] = (ps_row){.tokens = p->clean, .T = T, .patches = pt, .n_patches = n_new, .base = k < 2 ? &base : NULL,
                                       .out_pos = out_pos, .n_out = 2, .logits = lg + k * 2 * V, .head_delta = k == 0};
                const ps_rows_opts o = {0};
                ps_rows_stats st = {0};
                TU_CHECK(ps_engine_rows(&f.m, &be, rows, 2, &o, &st, &e) == 0, "%s: rows: %s", model, e.msg);
                TU_CHECK(st.rows_narrowed == 2 && rows[0].start_layer == l && rows[0].entry == PS_ENTER_WO, "%s layer %lld: the rows were not narrowed at W_O",
                         model, (long long)l);
                TU_CHECK((ps_row_caps(&rows[0]) & PS_CAP_HEAD_DELTA) && !(ps_row_caps(&rows[1]) & PS_CAP_HEAD_DELTA),
                         "%s: the rows' caps do not say head_delta", model);
                TU_CHECK(ps_row_flops(mc, &rows[0]) < ps_row_flops(mc, &rows[1]), "%s: the delta row counts no fewer FLOPs", model);
                TU_CHECK(ps_cpu_forward(&f.m, rows + 2, 1, &e) == 0, "%s: run from the embedding: %s", model, e.msg);
                // The delta row alone.
                ps_row alone = rows[0];
                alone.logits = lg + 3 * 2 * V;
                TU_CHECK(ps_engine_rows(&f.m, &be, &alone, 1, &o, NULL, &e) == 0, "%s: row alone: %s", model, e.msg);
                char what[200];
                snprintf(what, sizeof what, "%s prompt %lld layer %lld %s: delta vs W_O over every head", model, (long long)i, (long long)l,
                         variant ? "two heads at T-2" : "one head everywhere");
                same_logits(what, rows[0].logits, rows[1].logits, 2 * V);
                snprintf(what, sizeof what, "%s prompt %lld layer %lld %s: delta vs from the embedding", model, (long long)i, (long long)l,
                         variant ? "two heads at T-2" : "one head everywhere");
                same_logits(what, rows[0].logits, rows[2].logits, 2 * V);
                snprintf(what, sizeof what, "%s prompt %lld layer %lld %s: delta alone vs in a batch", model, (long long)i, (long long)l,
                         variant ? "two heads at T-2" : "one head everywhere");
                same_logits(what, alone.logits, rows[0].logits, 2 * V);
                // A backend without the bit: refused with the feature's name, exit status 2.
                ps_error e2 = {0};
                TU_CHECK(ps_row_check(mc, &rows[0], PS_CAP_ALL & ~(unsigned)PS_CAP_HEAD_DELTA, "nodelta", &e2) != 0 && e2.code == PS_EXIT_BADINPUT &&
                         strstr(e2.msg, "head_delta"), "%s: a backend without the bit does not refuse the row (%s)", model, e2.msg);
                free(lg);
            }
        ps_cache_free(&base);
    }
    ps_backend_free(&be);
    pf_free(&f);
}

int main(void) {
    int tested = gu_for_each_model(test_model);
    printf("%d models' head-delta rows compared; worst max_abs_err %g (tolerance %g abs + %g rel)\n", tested, worst, TOL_ABS, TOL_REL);
    TU_CHECK(tested > 0, "no model tested");
    return tu_done("head_delta");
}
