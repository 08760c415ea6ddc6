// A layer's MLP skipped where every row that runs it has hook_mlp_out overwritten at every position (a mean- or
// zero-ablated MLP: ps_row_mlp_replaced in ps_plan.h): on every tiny model, at every layer, the row's logits must
// equal bit for bit those of the same row with a capture at mlp_post (which makes the MLP run), alone and in a batch
// beside a row whose MLP runs; which patches count as overwriting (a mean leaving a position alone does not, nor a
// patch at one position), and what ps_row_flops counts.
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_backend.h"
#include "ps_forward.h"
#include "ps_plan.h"
#include "testutil.h"

#include <stdlib.h>
#include <string.h>

static int64_t compared = 0;

// got and want equal bit for bit (NaN nowhere): the skipped MLP's output was overwritten in either case.
static void same_bits(const char *what, const float *got, const float *want, int64_t n) {
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0 && bad++ < 5)
            fprintf(stderr, "  %s: logit %lld: %.9g vs %.9g\n", what, (long long)i, got[i], want[i]);
    compared += n;
    TU_CHECK(bad == 0, "%s: %lld of %lld logits differ", what, (long long)bad, (long long)n);
}

// Logits within 1e-5 abs + rel: a row's other layers round by where it falls in a batch's GEMMs.
static void close_logits(const char *what, const float *got, const float *want, int64_t n) {
    int64_t bad = 0;
    float mx = 0;
    for (int64_t i = 0; i < n; i++) {
        const float d = got[i] > want[i] ? got[i] - want[i] : want[i] - got[i], aw = want[i] < 0 ? -want[i] : want[i];
        if (!(d <= 1e-5f + 1e-5f * aw) && bad++ < 5) fprintf(stderr, "  %s: logit %lld: %.9g vs %.9g\n", what, (long long)i, got[i], want[i]);
        if (d > mx) mx = d;
    }
    compared += n;
    TU_CHECK(bad == 0, "%s: %lld of %lld logits outside 1e-5 abs + rel (max %g)", what, (long long)bad, (long long)n, mx);
}

static void test_model(const char *model) {
    pf_fixture f;
    ps_backend be;
    if (pf_load_cpu_or_fail(&f, model, 1, &be) != 0) return;
    const ps_model_config *mc = &f.m.cfg;
    const int64_t L = mc->n_layers, V = mc->d_vocab, C = mc->d_model, M = mc->d_mlp;
    const double mats = mc->arch == PS_ARCH_LLAMA ? 3 : 2;
    ps_error e = {0};
    const ps_prompt *p = &f.ps.p[0];
    const int64_t T = p->T, out_pos[1] = {T - 1};
    float *mean = calloc((size_t)C, sizeof(float)), *post = malloc((size_t)(T * M) * sizeof(float));
    float *lg = malloc((size_t)(5 * V) * sizeof(float));
    int64_t *map = malloc((size_t)T * sizeof *map);
    ps_cache src = {0};
    TU_CHECK(mean && post && lg && map && ps_cache_init(&src, mc, T, 0, &e) == 0, "%s: out of memory or cache: %s", model, e.msg);
    if (!mean || !post || !lg || !map || !src.resid_pre) goto out;
    for (int64_t c = 0; c < C; c++) mean[c] = 0.01f * (float)(c % 7) - 0.03f;
    {
        ps_row r = {.tokens = p->corrupted, .T = T, .cache = &src};   // a source run for replace
        TU_CHECK(ps_cpu_forward(&f.m, &r, 1, &e) == 0, "%s: source run: %s", model, e.msg);
    }
    for (int64_t l = 0; l < L; l++)
        for (int op = 0; op < 3; op++) {   // mean (one row broadcast), zero, replace from another run
            char what[200];
            snprintf(what, sizeof what, "%s layer %lld %s", model, (long long)l, op == 0 ? "mean" : op == 1 ? "zero" : "replace");
            ps_patch pt = {.site = PS_SITE_MLP_OUT, .layer = l, .head = -1, .pos = -1, .neuron = -1};
            if (op == 0) pt.op = PS_OP_MEAN, pt.ref = (ps_view){.data = mean, .rows = 1};
            else if (op == 1) pt.op = PS_OP_ZERO;
            else pt.op = PS_OP_REPLACE, pt.src = &src;
            const ps_capture cap = {.site = PS_SITE_MLP_POST, .layer = l, .out = post};
            // rows[0]: the MLP skipped; rows[1]: the same with a capture (it runs); rows[2]: unpatched (runs).
            ps_row rows[3];
            for (int k = 0; k < 3; k++)
                rows[k] = (ps_row){.tokens = p->clean, .T = T, .patches = &pt, .n_patches = k < 2, .captures = &cap, .n_captures = k == 1,
                                   .out_pos = out_pos, .n_out = 1, .logits = lg + k * V};
            TU_CHECK(ps_row_mlp_replaced(&rows[0], l) && !ps_row_mlp_replaced(&rows[1], l) && !ps_row_mlp_replaced(&rows[2], l),
                     "%s: which rows overwrite the MLP", what);
            TU_CHECK(!ps_row_mlp_replaced(&rows[0], l == 0 ? 1 % L : 0) || L == 1, "%s: another layer's MLP counted as overwritten", what);
            TU_CHECK(ps_cpu_forward(&f.m, &rows[0], 1, &e) == 0 && ps_cpu_forward(&f.m, &rows[1], 1, &e) == 0, "%s: %s", what, e.msg);
            same_bits(what, lg, lg + V, V);
            // In a batch beside a row whose MLP runs: that layer's MLP runs for the batch, the row's output still overwritten.
            ps_row pair[2] = {rows[0], rows[2]};
            pair[0].logits = lg + 3 * V;
            pair[1].logits = lg + 4 * V;
            TU_CHECK(ps_cpu_forward(&f.m, pair, 2, &e) == 0, "%s: batch: %s", what, e.msg);
            char w2[240];
            snprintf(w2, sizeof w2, "%s, beside a row whose MLP runs", what);
            close_logits(w2, lg + 3 * V, lg, V);
            TU_CHECK(ps_cpu_forward(&f.m, &rows[2], 1, &e) == 0, "%s: unpatched: %s", what, e.msg);
            snprintf(w2, sizeof w2, "%s, the unpatched row beside it", what);
            close_logits(w2, lg + 4 * V, lg + 2 * V, V);
            // FLOPs: the MLP's matrices at every position (a row from the embedding; the last layer's only at out_pos).
            const double saved = ps_row_flops(mc, &rows[2]) - ps_row_flops(mc, &rows[0]);
            const double want = 2.0 * (double)(l == L - 1 ? 1 : T) * mats * (double)C * (double)M;
            TU_CHECK(saved == want, "%s: ps_row_flops counts %.0f fewer FLOPs, want %.0f", what, saved, want);
        }
    // Not overwriting: one position only, a mean leaving a position alone (map -1), a replace without a source, an
    // add, a non-lean cache row (it stores mlp_pre and mlp_post).
    {
        ps_patch pt = {.site = PS_SITE_MLP_OUT, .layer = 0, .head = -1, .pos = 1, .neuron = -1, .op = PS_OP_ZERO};
        ps_row r = {.tokens = p->clean, .T = T, .patches = &pt, .n_patches = 1};
        TU_CHECK(!ps_row_mlp_replaced(&r, 0), "%s: a zero at one position counted as overwriting", model);
        for (int64_t t = 0; t < T; t++) map[t] = t == 0 ? -1 : 0;
        pt = (ps_patch){.site = PS_SITE_MLP_OUT, .layer = 0, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_MEAN,
                        .ref = {.data = mean, .rows = 1, .map = map}};
        TU_CHECK(!ps_row_mlp_replaced(&r, 0), "%s: a mean leaving position 0 alone counted as overwriting", model);
        map[0] = 0;
        TU_CHECK(ps_row_mlp_replaced(&r, 0), "%s: a mean over every position (mapped) not counted", model);
        pt.op = PS_OP_ADD;
        TU_CHECK(!ps_row_mlp_replaced(&r, 0), "%s: an add counted as overwriting", model);
        pt = (ps_patch){.site = PS_SITE_MLP_OUT, .layer = 0, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_REPLACE};
        TU_CHECK(!ps_row_mlp_replaced(&r, 0), "%s: a replace without a source counted as overwriting", model);
        pt.op = PS_OP_ZERO;
        r.cache = &src;
        TU_CHECK(!ps_row_mlp_replaced(&r, 0), "%s: a full cache row counted (its mlp_post is stored)", model);
    }
out:
    ps_cache_free(&src);
    free(mean);
    free(post);
    free(lg);
    free(map);
    ps_backend_free(&be);
    pf_free(&f);
}

int main(void) {
    int tested = gu_for_each_model(test_model);
    printf("%d models: %lld logits compared with the MLP skipped and run\n", tested, (long long)compared);
    TU_CHECK(tested > 0, "no model tested");
    return tu_done("mlp_skip");
}
