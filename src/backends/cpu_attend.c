// Causal attention of one head of one row, the CPU forward's inner loop (cpu_forward.c calls it per (row, head)
// on its threads): scores, softmax, the pattern hook and z, in a fixed summation order any vector width reproduces.
#include "cpu_internal.h"

#include <math.h>
#include <string.h>

// acc[0, W) += p[j] v[j * ld + (0, W)] for j in [0, n), in order of j. W is a constant at the call site,
// so the compiler keeps acc in vector registers.
static inline __attribute__((always_inline)) void weighted_rows(float *acc, const float *p, const float *v, int64_t ld, int64_t n,
                                                                const int W) {
    for (int64_t j = 0; j < n; j++)
        for (int i = 0; i < W; i++) acc[i] += p[j] * v[j * ld + i];
}



// Causal attention of one head of one row at the row's query positions: keys before start_pos come from
// the base run's cache; pattern patches replace a query's probabilities. sc: (T) scratch.
PS_CLONES void ps_cpu_attend_head(const ps_cpu_attn_layer *a, const ps_cpu_slot *rs, int64_t h, float *sc) {
    const ps_row *row = rs->row;
    const int64_t l = a->l, H = a->H, D = a->D, QD = a->QD, KD = a->KD;
    const int64_t T = row->T, s = row->start_pos, g = h / a->group;
    const float *kbase = NULL, *vbase = NULL;
    if (s > 0) {
        kbase = (a->rotary ? row->base->rot_k : row->base->k) + l * T * KD;
        vbase = row->base->v + l * T * KD;
    }
    ps_cache *cc = row->cache;
    for (int64_t t = s; t < T; t++) {
        if (!ps_post_at(row, &rs->plan, t)) continue;
        const float *qt = a->q + (rs->off + t - s) * QD + h * D;
        for (int64_t j = 0; j <= t; j++) {
            const float *kj = j < s ? kbase + j * KD + g * D : a->k + (rs->off + j - s) * KD + g * D;
            sc[j] = ps_cpu_dot(qt, kj, D) * a->inv_sqrt_d;
        }
        if (cc && cc->attn_scores) {
            float *dst = cc->attn_scores + ((l * H + h) * T + t) * T;
            for (int64_t j = 0; j < T; j++) dst[j] = j <= t ? sc[j] : -INFINITY;
        }
        float mx = sc[0];
        for (int64_t j = 1; j <= t; j++) mx = sc[j] > mx ? sc[j] : mx;
        double sum = 0;
        for (int64_t j = 0; j <= t; j++) { sc[j] = expf(sc[j] - mx); sum += sc[j]; }
        for (int64_t j = 0; j <= t; j++) sc[j] = (float)(sc[j] / sum);
        ps_cpu_pattern_hook(a->cfg, row, l, h, t, sc);
        if (cc) {
            float *dst = cc->pattern + ((l * H + h) * T + t) * T;
            for (int64_t j = 0; j < T; j++) dst[j] = j <= t ? sc[j] : 0.0f;
        }
        // z_t = sum_j p_j v_j, 16 dims at a time where D allows: the 16 partial sums stay in registers
        // instead of a load and a store of z per key. Each dim still sums over j in order from 0: the same
        // bits as the plain loop.
        float *zt = a->z + (rs->off + t - s) * QD + h * D;
        const float *vnew = a->v + rs->off * KD + g * D; // key j >= s: row j - s
        const int64_t n_old = t < s ? t + 1 : s, n_new = t + 1 - n_old;
        if (D % 16 == 0) {
            for (int64_t d0 = 0; d0 < D; d0 += 16) {
                float acc[16] = {0};
                if (n_old) weighted_rows(acc, sc, vbase + g * D + d0, KD, n_old, 16);
                weighted_rows(acc, sc + n_old, vnew + d0, KD, n_new, 16);
                memcpy(zt + d0, acc, sizeof acc);
            }
        } else {
            for (int64_t d = 0; d < D; d++) zt[d] = 0;
            for (int64_t j = 0; j <= t; j++) {
                const float *vj = j < s ? vbase + j * KD + g * D : a->v + (rs->off + j - s) * KD + g * D;
                const float pj = sc[j];
                for (int64_t d = 0; d < D; d++) zt[d] += pj * vj[d];
            }
        }
    }
}
