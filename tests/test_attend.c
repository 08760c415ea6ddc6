// The CPU attention kernel (ps_cpu_attend_head, cpu_attend.c) against plain loops: head sizes with and without a
// multiple of 8 or 16 dims, sequences shorter and longer than a 16-key block, keys from the base cache (start_pos > 0),
// queries skipped (outs_only), grouped key/value heads. Scores must equal ps_cpu_dot's sums bit for bit, z the
// sequential sum over keys of the probabilities the kernel recorded bit for bit, and the probabilities a softmax in
// double within 2e-7 relative (the vectorized exponential).
#include "../src/backends/cpu_internal.h"
#include "ps_cache.h"
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static float frand(uint32_t *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)(*s >> 8) / 16777216.0f * 4.0f - 2.0f;
}

// One case: H query heads over Hkv key/value heads of D dims, T tokens, the row starting at s; out: the only
// position computed after attention when >= 0 (outs_only), else all. scale_q spreads the scores (softmax near one-hot).
static void run_case(int64_t H, int64_t Hkv, int64_t D, int64_t T, int64_t s, int64_t out, float scale_q) {
    const int64_t QD = H * D, KD = Hkv * D, n = T - s;
    uint32_t seed = (uint32_t)(H * 1000003 + D * 1009 + T * 31 + s * 7 + (out + 1));
    float *q = malloc((size_t)(n * QD) * sizeof(float)), *k = malloc((size_t)(n * KD) * sizeof(float)),
          *v = malloc((size_t)(n * KD) * sizeof(float)), *z = malloc((size_t)(n * QD) * sizeof(float));
    float *bk = malloc((size_t)(T * KD) * sizeof(float)), *bv = malloc((size_t)(T * KD) * sizeof(float));
    float *scores = malloc((size_t)(H * T * T) * sizeof(float)), *pattern = malloc((size_t)(H * T * T) * sizeof(float));
    float *sc = malloc(ps_cpu_attend_scratch(T, D) * sizeof(float));
    if (!q || !k || !v || !z || !bk || !bv || !scores || !pattern || !sc) {
        TU_CHECK(0, "out of memory");
        return;
    }
    for (int64_t i = 0; i < n * QD; i++) q[i] = frand(&seed) * scale_q;
    for (int64_t i = 0; i < n * KD; i++) k[i] = frand(&seed), v[i] = frand(&seed);
    for (int64_t i = 0; i < T * KD; i++) bk[i] = frand(&seed), bv[i] = frand(&seed);
    for (int64_t i = 0; i < n * QD; i++) z[i] = NAN;
    for (int64_t i = 0; i < H * T * T; i++) scores[i] = pattern[i] = NAN;

    ps_model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.n_heads = H;
    cfg.n_kv_heads = Hkv;
    cfg.d_head = D;
    ps_cache base, cache;
    memset(&base, 0, sizeof base);
    memset(&cache, 0, sizeof cache);
    base.k = bk;
    base.v = bv;
    cache.attn_scores = scores;
    cache.pattern = pattern;
    int32_t tok[64] = {0};
    ps_row row;
    memset(&row, 0, sizeof row);
    row.tokens = tok;
    row.T = T;
    row.start_pos = s;
    row.base = s > 0 ? &base : NULL;
    row.cache = &cache; // (layer 0: the kernel writes rows [0, H T T) of both arrays)
    if (out >= 0) {
        row.out_pos = &out;
        row.n_out = 1;
    }
    ps_cpu_slot slot;
    memset(&slot, 0, sizeof slot);
    slot.row = &row;
    slot.off = 0;
    slot.n = n;
    slot.plan.attn = 1;
    slot.plan.qkv_end = T;
    slot.plan.post_end = T;
    slot.plan.outs_only = out >= 0;
    const ps_cpu_attn_layer al = {.cfg = &cfg, .q = q, .k = k, .v = v, .z = z, .l = 0, .H = H, .D = D, .QD = QD, .KD = KD,
                                  .group = H / Hkv, .rotary = 0, .inv_sqrt_d = 1.0f / sqrtf((float)D)};
    for (int64_t h = 0; h < H; h++) ps_cpu_attend_head(&al, &slot, h, sc);

    char name[160];
    snprintf(name, sizeof name, "attend H=%lld Hkv=%lld D=%lld T=%lld start=%lld out=%lld", (long long)H, (long long)Hkv, (long long)D,
             (long long)T, (long long)s, (long long)out);
    int64_t bad_scores = 0, bad_z = 0, n_q = 0;
    double worst_p = 0;
    // every computed query's probabilities, flat: one comparison a case
    float *want_p = malloc((size_t)(H * T * T) * sizeof(float)), *got_p = malloc((size_t)(H * T * T) * sizeof(float));
    int64_t np = 0;
    for (int64_t h = 0; h < H; h++) {
        const int64_t g = h / (H / Hkv);
        for (int64_t t = s; t < T; t++) {
            if (out >= 0 && t != out) continue;
            n_q++;
            const float *qt = q + (t - s) * QD + h * D;
            const float *srow = scores + (h * T + t) * T, *prow = pattern + (h * T + t) * T;
            double mx = -INFINITY, sum = 0;
            double e[64];
            for (int64_t j = 0; j <= t; j++) {
                const float *kj = j < s ? bk + j * KD + g * D : k + (j - s) * KD + g * D;
                const float want = ps_cpu_dot(qt, kj, D) * al.inv_sqrt_d;
                if (memcmp(&want, &srow[j], sizeof want) != 0 && bad_scores++ < 3)
                    fprintf(stderr, "%s: head %lld query %lld key %lld: score %.9g, ps_cpu_dot gives %.9g\n", name, (long long)h,
                            (long long)t, (long long)j, (double)srow[j], (double)want);
                mx = want > mx ? want : mx;
            }
            for (int64_t j = t + 1; j < T; j++) TU_CHECK(isinf(srow[j]) && srow[j] < 0, "%s: masked score not -inf", name);
            // x - max in float, as the kernel (and torch's fp32 softmax) round it; then e^x and the sum in double
            for (int64_t j = 0; j <= t; j++) sum += e[j] = exp((double)(srow[j] - (float)mx));
            for (int64_t j = 0; j <= t; j++) {
                want_p[np] = (float)(e[j] / sum);
                got_p[np++] = prow[j];
                const double rel = fabs((double)prow[j] - e[j] / sum) / (e[j] / sum > 1e-30 ? e[j] / sum : 1e-30);
                if (e[j] / sum > 1e-30 && rel > worst_p) worst_p = rel;
            }
            for (int64_t j = t + 1; j < T; j++) TU_CHECK(prow[j] == 0.0f, "%s: masked probability not 0", name);
            // z: the sequential sum from key 0 of the recorded probabilities, bit for bit
            for (int64_t d = 0; d < D; d++) {
                float acc = 0;
                for (int64_t j = 0; j <= t; j++) acc += prow[j] * (j < s ? bv[j * KD + g * D + d] : v[(j - s) * KD + g * D + d]);
                const float got = z[(t - s) * QD + h * D + d];
                if (memcmp(&acc, &got, sizeof acc) != 0 && bad_z++ < 3)
                    fprintf(stderr, "%s: head %lld query %lld dim %lld: z %.9g, sequential sum %.9g\n", name, (long long)h, (long long)t,
                            (long long)d, (double)got, (double)acc);
            }
        }
    }
    char pn[200];
    snprintf(pn, sizeof pn, "%s pattern", name);
    tu_close(pn, got_p, want_p, np, 1e-12f, 2.5e-7f);
    printf("%s: %lld queries, scores %s, z %s, max rel error of the probabilities %.3g\n", name, (long long)n_q,
           bad_scores ? "DIFFER" : "bitwise", bad_z ? "DIFFERS" : "bitwise", worst_p);
    TU_CHECK(bad_scores == 0, "%s: %lld scores differ from ps_cpu_dot", name, (long long)bad_scores);
    TU_CHECK(bad_z == 0, "%s: %lld z values differ from the sequential sum", name, (long long)bad_z);
    free(want_p); free(got_p);
    free(q); free(k); free(v); free(z); free(bk); free(bv); free(scores); free(pattern); free(sc);
}

int main(void) {
    // D: under 8, a multiple of 8 but not 16, a multiple of 16, 16 + 4 (tail dims), 32 (the demo model), 64 (GPT-2)
    const int64_t Ds[] = {4, 8, 20, 24, 32, 64};
    const int64_t Ts[] = {1, 5, 16, 17, 23, 40};
    for (size_t a = 0; a < sizeof Ds / sizeof Ds[0]; a++)
        for (size_t b = 0; b < sizeof Ts / sizeof Ts[0]; b++) {
            const int64_t D = Ds[a], T = Ts[b];
            run_case(2, 2, D, T, 0, -1, 1.0f);
            if (T > 3) {
                run_case(4, 2, D, T, T / 3, -1, 1.0f);  // keys before start from the base cache; grouped k/v heads
                run_case(2, 1, D, T, T / 2, T - 2, 1.0f); // one query only
            }
        }
    run_case(2, 2, 32, 23, 0, -1, 8.0f); // near one-hot probabilities: exponentials down to e^-87 and below
    run_case(2, 2, 64, 12, 5, -1, 20.0f);
    return tu_done("attend");
}
