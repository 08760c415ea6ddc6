// ps_row_flops (plan.c) against a count written here from the forward's arithmetic, for rows that are not narrowed:
// whole forwards and rows starting at a later layer and position, with and without a cache, a capture in the last
// layer or elsewhere, one or several out_pos, all or some vocabulary columns, GPT-2 and Llama shapes. A row without a
// cache that captures nothing in the last layer computes that layer's queries, W_O and MLP only at its out_pos (keys
// and values at every position; ps_row_last_layer_outs_only), which tests/test_last_layer.c checks gives
// the same logits.
#include "ps_plan.h"
#include "testutil.h"

#include <math.h>
#include <string.h>

// 2 x multiply-adds of one row, layer by layer and position by position: K/V at every recomputed position, Q at each
// query; scores
// and the weighted sum over keys 0..t for each query t; W_O and the MLP at each query. In the last layer the queries
// are the out_pos unless the row is "full" there (a cache, or a capture in that layer).
static double count(const ps_model_config *mc, int64_t T, int64_t start_layer, int64_t start_pos, const int64_t *out,
                    int64_t n_out, int64_t n_cols, int full_last) {
    const double C = (double)mc->d_model, QD = (double)(mc->n_heads * mc->d_head), KD = (double)(mc->n_kv_heads * mc->d_head),
                 M = (double)mc->d_mlp;
    const double mlp = mc->arch == PS_ARCH_LLAMA ? 3 * C * M : 2 * C * M; // gate, up, down / fc, proj
    double f = 0;
    for (int64_t l = start_layer; l < mc->n_layers; l++) {
        for (int64_t t = start_pos; t < T; t++) {
            int query = 1;
            if (l == mc->n_layers - 1 && !full_last) {
                query = 0;
                for (int64_t o = 0; o < n_out; o++) query |= out[o] == t;
            }
            f += 2 * C * 2 * KD + (query ? 2 * C * QD : 0);   // keys and values everywhere, queries where attention runs
            if (query) f += 2 * (double)(t + 1) * QD * 2 + 2 * QD * C + 2 * mlp;
        }
    }
    return f + 2 * (double)n_out * C * (double)(n_cols ? n_cols : mc->d_vocab);
}

static void check(const char *what, const ps_model_config *mc, const ps_row *row, int full_last) {
    const double got = ps_row_flops(mc, row),
                 want = count(mc, row->T, row->start_layer, row->start_pos, row->out_pos, row->n_out, row->cols ? row->n_cols : 0, full_last);
    const double err = fabs(got - want);
    printf("%s: ps_row_flops %.6g, counted %.6g, abs err %g\n", what, got, want, err);
    TU_CHECK(err <= 1e-9 * want, "%s: ps_row_flops gives %.17g FLOPs, the count %.17g (diff %g)", what, got, want, err);
}

static void shape(const char *name, const ps_model_config *mc) {
    const int64_t T = 11, last = T - 1, two[2] = {4, T - 1};
    static const int32_t cols[2] = {5, 9};
    ps_cache cache;
    memset(&cache, 0, sizeof cache);
    float buf[1];
    ps_capture cap_last = {.site = PS_SITE_RESID_PRE, .layer = mc->n_layers - 1, .out = buf},
               cap_first = {.site = PS_SITE_RESID_PRE, .layer = 0, .out = buf};
    char what[160];
    struct {
        const char *what;
        int64_t start_layer, start_pos;
        const int64_t *out;
        int64_t n_out;
        int with_cols, with_cache;
        const ps_capture *cap;
        int full_last;
    } cases[] = {
        {"whole forward, last position", 0, 0, &last, 1, 0, 0, NULL, 0},
        {"whole forward, two out_pos, two columns", 0, 0, two, 2, 1, 0, NULL, 0},
        {"whole forward, no out_pos", 0, 0, NULL, 0, 0, 0, NULL, 0},
        {"from layer 1 position 3", 1, 3, &last, 1, 1, 0, NULL, 0},
        {"capture in layer 0", 0, 0, &last, 1, 0, 0, &cap_first, 0},
        {"with a cache (every position)", 0, 0, &last, 1, 0, 1, NULL, 1},
        {"capture in the last layer (every position)", 0, 0, two, 2, 0, 0, &cap_last, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        ps_row row;
        memset(&row, 0, sizeof row);
        row.T = T;
        row.start_layer = cases[c].start_layer;
        row.start_pos = cases[c].start_pos;
        row.out_pos = cases[c].out;
        row.n_out = cases[c].n_out;
        if (cases[c].with_cols) { row.cols = cols; row.n_cols = 2; }
        if (cases[c].with_cache) row.cache = &cache;
        if (cases[c].cap) { row.captures = cases[c].cap; row.n_captures = 1; }
        snprintf(what, sizeof what, "%s: %s", name, cases[c].what);
        check(what, mc, &row, cases[c].full_last);
    }
}

int main(void) {
    ps_model_config gpt2;
    memset(&gpt2, 0, sizeof gpt2);
    gpt2.arch = PS_ARCH_GPT2;
    gpt2.n_layers = 3;
    gpt2.d_model = 64;
    gpt2.n_heads = 4;
    gpt2.n_kv_heads = 4;
    gpt2.d_head = 16;
    gpt2.d_mlp = 256;
    gpt2.d_vocab = 100;
    gpt2.n_ctx = 32;
    shape("gpt2 shape", &gpt2);
    ps_model_config llama = gpt2;
    llama.arch = PS_ARCH_LLAMA;
    llama.n_kv_heads = 2;
    llama.d_mlp = 172;
    shape("llama shape (grouped K/V)", &llama);
    return tu_done("flops");
}
