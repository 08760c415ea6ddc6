// The CPU forward's last layer at out_pos only (rows that keep no cache and capture nothing there): each
// row's logits must be those of the same row computed at every position (to rounding), which the forward
// still does when a cache row shares the batch. Rows from the embedding and from a base run at the last
// layer, with patches at every hook of the last layer, whole-vocabulary and column logits.
// Also: a batch cut into pieces on the threads (cpu_forward.c) gives each row its numbers alone, to rounding.
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_forward.h"
#include "testutil.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

enum { NR = 5 };

// Each position's arithmetic is unchanged, so the logits agree to rounding: bitwise with this machine's BLAS
// kernel (the mismatch count printed), but a kernel may round a row differently by where it falls in a GEMM
// (ps_forward.h), so the test allows 1e-6 abs + 1e-6 rel. Prints the max error and the first mismatches.
static void same_bits(const char *what, const float *got, const float *want, int64_t n) {
    int64_t bad = 0, diff_bits = 0;
    float mx = 0;
    for (int64_t i = 0; i < n; i++) {
        const float d = got[i] > want[i] ? got[i] - want[i] : want[i] - got[i];
        const float aw = want[i] < 0 ? -want[i] : want[i];
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0) diff_bits++;
        if (!(d <= 1e-6f + 1e-6f * aw)) {
            if (bad++ < 5) fprintf(stderr, "  %s[%lld]: %.9g vs %.9g\n", what, (long long)i, got[i], want[i]);
        }
        if (d > mx) mx = d;
    }
    printf("%s: n=%lld max_abs_err=%g bitwise_mismatches=%lld out_of_tolerance=%lld\n", what, (long long)n, mx,
           (long long)diff_bits, (long long)bad);
    TU_CHECK(bad == 0, "%s: %lld of %lld logits differ from every-position rows (max %g)", what, (long long)bad, (long long)n, mx);
}

// Rows with column logits (the sweeps' rows): from the embedding, from base at every layer, and narrowed ones (a
// z head or mlp_out scaled at one position). One batch on 2 threads, cut into pieces (the workspace's threshold
// lowered so these tiny models' batches cut), against each row alone.
static void test_pieces(const char *model, const pf_fixture *f, const ps_prompt *p, const ps_cache *base, const ps_patch *pt, int64_t np) {
    const ps_model_config *mc = &f->m.cfg;
    const int64_t L = mc->n_layers, T = p->T;
    enum { NP = 12 };
    const int64_t out[2] = {T - 1, T / 2};
    const int32_t cols[2] = {p->answer_id, p->wrong_id};
    ps_patch one[NP];
    float got[NP * 4], want[NP * 4];
    ps_row rows[NP];
    for (int64_t r = 0; r < NP; r++) {
        const int64_t k = r % L, s = (r / 2) % T;
        ps_row *row = &rows[r];
        *row = (ps_row){.tokens = r % 2 ? p->corrupted : p->clean, .T = T, .patches = pt, .n_patches = np, .out_pos = out,
                        .n_out = 2, .cols = cols, .n_cols = 2};
        if (r % 3 == 1) { // from base at layer k, the last layer's patches
            row->base = base;
            row->start_layer = k;
        } else if (r % 3 == 2) { // narrowed: one position of one layer changes, entering at z or mlp_out
            one[r] = (ps_patch){.site = r % 2 ? PS_SITE_Z : PS_SITE_MLP_OUT, .layer = k, .head = r % 2 ? 0 : -1, .pos = s,
                                .neuron = -1, .op = PS_OP_SCALE, .factor = 0.5f};
            *row = (ps_row){.tokens = p->clean, .T = T, .base = base, .start_layer = k, .start_pos = s, .patches = &one[r],
                            .n_patches = 1, .out_pos = out, .n_out = 2, .cols = cols, .n_cols = 2, .narrow = 1,
                            .entry = r % 2 ? PS_ENTER_WO : PS_ENTER_MLP_OUT, .dirty_end = s + 1};
            if (out[1] < s) row->n_out = 1; // out_pos at or after start_pos
        }
    }
    ps_error e = {0};
    for (int64_t r = 0; r < NP; r++) {
        ps_row alone = rows[r];
        alone.logits = want + 4 * r;
        TU_CHECK(ps_cpu_forward(&f->m, &alone, 1, &e) == 0, "pieces: row %lld alone: %s", (long long)r, e.msg);
        rows[r].logits = got + 4 * r;
    }
    memset(got, 0, sizeof got);
    for (int64_t r = 0; r < NP; r++)
        if (rows[r].n_out < 2) got[4 * r + 2] = got[4 * r + 3] = want[4 * r + 2] = want[4 * r + 3] = 0;
    ps_cpu_workspace ws = {.piece_min_flop = 1};
    const int nt = omp_get_max_threads();
    omp_set_num_threads(2);
    TU_CHECK(ps_cpu_forward_ws(&f->m, rows, NP, &ws, &e) == 0, "pieces: batch: %s", e.msg);
    omp_set_num_threads(nt);
    TU_CHECK(ws.n_pieces >= 2, "pieces: the batch was not cut (%d pieces)", ws.n_pieces);
    ps_cpu_workspace_free(&ws);
    char what[96];
    snprintf(what, sizeof what, "%s prompt 0: a batch cut into pieces vs each row alone", model);
    same_bits(what, got, want, NP * 4);
}

static void test_model(const char *model) {
    pf_fixture f;
    if (pf_load_or_fail(&f, model) != 0) return;
    const ps_model_config *mc = &f.m.cfg;
    const int64_t L = mc->n_layers, V = mc->d_vocab, l = L - 1;
    ps_error e = {0};
    for (int64_t i = 0; i < f.ps.n && i < 3; i++) {
        const ps_prompt *p = &f.ps.p[i];
        const int64_t T = p->T;
        ps_cache base = {0}, extra = {0};
        TU_CHECK(ps_cache_init(&base, mc, T, PS_CACHE_LOGITS, &e) == 0 && ps_cache_init(&extra, mc, T, 0, &e) == 0, "%s: cache: %s", model, e.msg);
        ps_row br = {.tokens = p->clean, .T = T, .cache = &base};
        TU_CHECK(ps_cpu_forward(&f.m, &br, 1, &e) == 0, "%s: base run: %s", model, e.msg);
        // Patches at the last layer (and one below it): zeroed and scaled heads, MLP neurons, attn_out and
        // mlp_out, replaced resid_mid from the corrupted run where the model has one.
        ps_patch pt[6];
        int64_t np = 0;
        pt[np++] = (ps_patch){.site = PS_SITE_Z, .layer = l, .head = 0, .pos = -1, .neuron = -1, .op = PS_OP_ZERO};
        pt[np++] = (ps_patch){.site = PS_SITE_ATTN_OUT, .layer = l, .head = -1, .pos = T - 1, .neuron = -1, .op = PS_OP_SCALE, .factor = 0.5f};
        pt[np++] = (ps_patch){.site = PS_SITE_MLP_POST, .layer = l, .head = -1, .pos = -1, .neuron = 3, .op = PS_OP_ZERO};
        pt[np++] = (ps_patch){.site = PS_SITE_MLP_OUT, .layer = l, .head = -1, .pos = 0, .neuron = -1, .op = PS_OP_SCALE, .factor = 2.0f};
        pt[np++] = (ps_patch){.site = PS_SITE_PATTERN, .layer = l, .head = 1 % mc->n_heads, .pos = -1, .neuron = -1, .op = PS_OP_SCALE,
                              .factor = 0.25f};
        const ps_patch below = {.site = PS_SITE_MLP_OUT, .layer = L > 1 ? l - 1 : l, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_ZERO};
        ps_patch pt_full[7];
        memcpy(pt_full, pt, sizeof pt[0] * (size_t)np);
        pt_full[np] = below;
        const int64_t out[3] = {T - 1, 0, T / 2}, out1[1] = {T - 2};
        const int32_t cols[2] = {p->answer_id, p->wrong_id};
        float *got = calloc((size_t)(NR * 3 * V), sizeof(float)), *want = calloc((size_t)(NR * 3 * V), sizeof(float));
        ps_row rows[NR + 1];
        for (int pass = 0; pass < 2; pass++) {
            float *lg = pass ? want : got;
            // 0: from the embedding, whole vocabulary; 1: columns; 2: unpatched; 3: from base at the last layer;
            // 4: one out position, patches below the last layer too.
            rows[0] = (ps_row){.tokens = p->clean, .T = T, .patches = pt, .n_patches = np, .out_pos = out, .n_out = 3, .logits = lg};
            rows[1] = (ps_row){.tokens = p->corrupted, .T = T, .patches = pt, .n_patches = np, .out_pos = out, .n_out = 3, .cols = cols,
                               .n_cols = 2, .logits = lg + 3 * V};
            rows[2] = (ps_row){.tokens = p->clean, .T = T, .out_pos = out, .n_out = 2, .logits = lg + 6 * V};
            rows[3] = (ps_row){.tokens = p->clean, .T = T, .base = &base, .start_layer = l, .patches = pt, .n_patches = np,
                               .out_pos = out, .n_out = 3, .logits = lg + 9 * V};
            rows[4] = (ps_row){.tokens = p->clean, .T = T, .patches = pt_full, .n_patches = np + 1, .out_pos = out1, .n_out = 1,
                               .logits = lg + 12 * V};
            // pass 1: a cache row in the batch, so every row runs the last layer at every position.
            rows[NR] = (ps_row){.tokens = p->corrupted, .T = T, .cache = &extra};
            TU_CHECK(ps_cpu_forward(&f.m, rows, pass ? NR + 1 : NR, &e) == 0, "%s: forward: %s", model, e.msg);
        }
        char what[96];
        snprintf(what, sizeof what, "%s prompt %lld out_pos-only last layer vs every position", model, (long long)i);
        same_bits(what, got, want, NR * 3 * V);
        // The logits are the model's: the unpatched row against the cache row's full logits (a GEMM over every
        // position rather than one dot product a column, so to rounding).
        if (i == 0) test_pieces(model, &f, p, &base, pt, np);
        snprintf(what, sizeof what, "%s prompt %lld unpatched vs base logits at T-1", model, (long long)i);
        tu_close(what, got + 6 * V, base.logits + (T - 1) * V, V, 1e-4f, 1e-4f);
        free(got);
        free(want);
        ps_cache_free(&base);
        ps_cache_free(&extra);
    }
    pf_free(&f);
}

int main(void) {
    int tested = gu_for_each_model(test_model);
    printf("%d models' last layers compared\n", tested);
    return tu_done("last_layer");
}
