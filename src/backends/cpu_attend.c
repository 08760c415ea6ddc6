// Causal attention of one head of one row, the CPU forward's inner loop (cpu_forward.c calls it per (row, head)
// on its threads): scores, softmax, the pattern hook and z, in a fixed summation order any vector width reproduces.
// Short sequences (the sweeps' 12 tokens, seqcont's 23) made a loop of one dot product a score, each ending in a
// horizontal sum, and a serial expf a probability, about a sixth of a circuit search's time; here the keys are
// transposed once per (row, head) and 16 scores come out of one vector pass, the exponentials are vectorized, and z
// sums all of a head's dims side by side (one chain of adds a 16 dims), each score and each z element in the order
// it had before.
#include "cpu_internal.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

enum {
    KW = 16, // keys a vector pass scores (the scratch rows are padded to it)
};

static int64_t pad16(int64_t n) { return (n + KW - 1) / KW * KW; }

size_t ps_cpu_attend_scratch(int64_t T_max, int64_t D) {
    const int64_t Tp = pad16(T_max > 0 ? T_max : 1);
    return (size_t)((D + 1) * Tp);
}

// 16 lanes in GCC's generic vectors: one AVX-512 register, two AVX2 or four SSE ones in the clones, each lane its own
// sum in the order written (auto-vectorization had packed these loops into 4-wide pieces and shuffles).
// (Their helpers are always inlined: the warning that a 64-byte vector argument's ABI depends on AVX-512 cannot apply.)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v16 __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
static inline __attribute__((always_inline)) v16 ld16(const float *p) { v16 v; memcpy(&v, p, sizeof v); return v; }
static inline __attribute__((always_inline)) void st16(float *p, v16 v) { memcpy(p, &v, sizeof v); }

// e^x for x <= 0 (softmax's x - max), 16 at a time: Cephes' expf (x = n ln 2 + r, |r| <= ln 2 / 2, a degree-7
// polynomial in r, times 2^n built in the exponent bits), within 2 ulp of expf. Below -87.34 (where expf's results
// turn subnormal) it gives 0; NaN stays NaN.
static inline __attribute__((always_inline)) v16 exp_nonpos(v16 x) {
    const v16i small = x < -87.33654f; // all ones where x < -87.34 (false for NaN)
    const v16 lo = (v16){0} - 87.33654f;
    const v16 xc = (v16)(((v16i)x & ~small) | ((v16i)lo & small));
    const v16 t = xc * 1.44269504088896341f + 12582912.0f; // 1.5 * 2^23: round to nearest in the low bits
    const v16 n = t - 12582912.0f;
    const v16 r = (xc - n * 0.693359375f) - n * -2.12194440e-4f;
    v16 p = r * 1.9875691500e-4f + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const v16i e = (__builtin_convertvector(n, v16i) + 127) << 23;
    return (v16)((v16i)(p * (v16)e) & ~small);
}

// sc[j] = q . k_j / sqrt(D) for j in [0, n) rounded up to 16 (lanes past n: whatever the padding gives):
// ps_cpu_dot's eight interleaved partial sums (d mod 8) and its tree, kept per key lane, over the transposed
// keys kt (D, Tp).
static inline __attribute__((always_inline)) void scores(float *sc, const float *q, const float *kt, int64_t Tp, int64_t D,
                                                           int64_t n, float inv_sqrt_d) {
    for (int64_t j0 = 0; j0 < n; j0 += KW) {
        const float *k = kt + j0;
        v16 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
        int64_t d = 0;
        for (; d + 8 <= D; d += 8) {
            a0 += q[d] * ld16(k + d * Tp);
            a1 += q[d + 1] * ld16(k + (d + 1) * Tp);
            a2 += q[d + 2] * ld16(k + (d + 2) * Tp);
            a3 += q[d + 3] * ld16(k + (d + 3) * Tp);
            a4 += q[d + 4] * ld16(k + (d + 4) * Tp);
            a5 += q[d + 5] * ld16(k + (d + 5) * Tp);
            a6 += q[d + 6] * ld16(k + (d + 6) * Tp);
            a7 += q[d + 7] * ld16(k + (d + 7) * Tp);
        }
        // D mod 8 more dims go to a0, a1, ... as in ps_cpu_dot
        if (d < D) a0 += q[d] * ld16(k + d * Tp), d++;
        if (d < D) a1 += q[d] * ld16(k + d * Tp), d++;
        if (d < D) a2 += q[d] * ld16(k + d * Tp), d++;
        if (d < D) a3 += q[d] * ld16(k + d * Tp), d++;
        if (d < D) a4 += q[d] * ld16(k + d * Tp), d++;
        if (d < D) a5 += q[d] * ld16(k + d * Tp), d++;
        if (d < D) a6 += q[d] * ld16(k + d * Tp), d++;
        st16(sc + j0, (((a0 + a4) + (a1 + a5)) + ((a2 + a6) + (a3 + a7))) * inv_sqrt_d);
    }
}

// p[0, n) = softmax(p[0, n)) (the row padded to 16): the max, e^(x - max), their sum in double with eight
// interleaved partial sums (j mod 8) and sum8's tree (cpu_ops.c), each divided by it in double.
static inline __attribute__((always_inline)) void softmax(float *p, int64_t n) {
    float mx = p[0];
    for (int64_t j = 1; j < n; j++) mx = p[j] > mx ? p[j] : mx;
    for (int64_t j = 0; j < n; j += KW) st16(p + j, exp_nonpos(ld16(p + j) - mx));
    double acc[8] = {0};
    int64_t j = 0;
    for (; j + 8 <= n; j += 8)
        for (int i = 0; i < 8; i++) acc[i] += p[j + i];
    for (int i = 0; j < n; j++, i++) acc[i] += p[j];
    const double sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (j = 0; j < n; j++) p[j] = (float)(p[j] / sum);
}

// z[0, D) = sum_j p_j v_j over j = 0..t in order from 0 (keys before s: vbase + j ld, the rest vnew + (j - s) ld), the
// NC = D / 16 chunks of 16 dims side by side: NC independent chains of adds, v_j read whole. NC is a constant at
// the call site (acc then lives in registers).
static inline __attribute__((always_inline)) void z_row(float *z, const float *p, int64_t t, const float *vbase, const float *vnew,
                                                        int64_t ld, int64_t s, const int NC) {
    v16 acc[8] = {{0}};
    for (int64_t j = 0; j <= t; j++) {
        const float *vj = j < s ? vbase + j * ld : vnew + (j - s) * ld;
        const float pj = p[j];
        for (int c = 0; c < NC; c++) acc[c] += pj * ld16(vj + 16 * c);
    }
    for (int c = 0; c < NC; c++) st16(z + 16 * c, acc[c]);
}

// The same sums for any D, a dim at a time.
static inline __attribute__((always_inline)) void z_row_any(float *z, const float *p, int64_t t, const float *vbase, const float *vnew, int64_t ld, int64_t s, int64_t D) {
    for (int64_t d = 0; d < D; d++) z[d] = 0;
    for (int64_t j = 0; j <= t; j++) {
        const float *vj = j < s ? vbase + j * ld : vnew + (j - s) * ld;
        const float pj = p[j];
        for (int64_t d = 0; d < D; d++) z[d] += pj * vj[d];
    }
}

// The 16 x 16 block r transposed in place: four stages of two-input shuffles, stage h exchanging the h x h
// off-diagonal sub-blocks of every 2h x 2h block (rows i and i + h). Lane L of the first output takes row i's
// lane (L / 2h) 2h + L mod 2h where L mod 2h < h, else row i + h's lane h lower; the second output likewise h higher.
#define PS_TR_LO(h, L) ((L) % (2 * (h)) < (h) ? (L) / (2 * (h)) * 2 * (h) + (L) % (2 * (h)) : 16 + (L) / (2 * (h)) * 2 * (h) + (L) % (2 * (h)) - (h))
#define PS_TR_HI(h, L) ((L) % (2 * (h)) < (h) ? (L) / (2 * (h)) * 2 * (h) + (h) + (L) % (2 * (h)) : 16 + (L) / (2 * (h)) * 2 * (h) + (L) % (2 * (h)))
#define PS_TR_IDX(F, h) \
    F(h, 0), F(h, 1), F(h, 2), F(h, 3), F(h, 4), F(h, 5), F(h, 6), F(h, 7), F(h, 8), F(h, 9), F(h, 10), F(h, 11), F(h, 12), F(h, 13), \
        F(h, 14), F(h, 15)
#if defined(__clang__)
#define PS_TR_SHUFFLE(a, b, F, h) __builtin_shufflevector(a, b, PS_TR_IDX(F, h))
#else
#define PS_TR_SHUFFLE(a, b, F, h) __builtin_shuffle(a, b, (v16i){PS_TR_IDX(F, h)})
#endif
#define PS_TR_STAGE(r, h)                                                                                                        \
    for (int i_ = 0; i_ < 16; i_++)                                                                                              \
        if (!(i_ & (h))) {                                                                                                       \
            const v16 a_ = r[i_], b_ = r[i_ + (h)];                                                                              \
            r[i_] = PS_TR_SHUFFLE(a_, b_, PS_TR_LO, h);                                                          \
            r[i_ + (h)] = PS_TR_SHUFFLE(a_, b_, PS_TR_HI, h);                                                    \
        }

// kt[d * Tp + j] = k_j[d] for j in [0, T) (key j: kbase + j ld below s, knew + (j - s) ld from s on), zeros for
// j in [T, Tp): 16 x 16 blocks through registers, the dims past a multiple of 16 one by one.
static inline __attribute__((always_inline)) void transpose_keys(float *kt, int64_t Tp, const float *kbase, const float *knew,
                                                                 int64_t ld, int64_t s, int64_t T, int64_t D) {
    for (int64_t j0 = 0; j0 < Tp; j0 += 16) {
        const int64_t nj = T - j0 < 16 ? T - j0 : 16;
        const float *kj[16];
        for (int i = 0; i < 16; i++) kj[i] = i >= nj ? NULL : j0 + i < s ? kbase + (j0 + i) * ld : knew + (j0 + i - s) * ld;
        int64_t d0 = 0;
        for (; d0 + 16 <= D; d0 += 16) {
            v16 r[16];
            for (int i = 0; i < 16; i++) r[i] = kj[i] ? ld16(kj[i] + d0) : (v16){0};
            PS_TR_STAGE(r, 8)
            PS_TR_STAGE(r, 4)
            PS_TR_STAGE(r, 2)
            PS_TR_STAGE(r, 1)
            for (int i = 0; i < 16; i++) st16(kt + (d0 + i) * Tp + j0, r[i]);
        }
        for (int64_t d = d0; d < D; d++)
            for (int i = 0; i < 16; i++) kt[d * Tp + j0 + i] = kj[i] ? kj[i][d] : 0.0f;
    }
}

// Causal attention of one head of one row at the row's query positions: keys before start_pos come from
// the base run's cache; pattern patches replace a query's probabilities. sc: ps_cpu_attend_scratch(T, D) floats.
PS_CLONES void ps_cpu_attend_head(const ps_cpu_attn_layer *a, const ps_cpu_slot *rs, int64_t h, float *sc) {
    const ps_row *row = rs->row;
    const int64_t l = a->l, H = a->H, D = a->D, QD = a->QD, KD = a->KD;
    const int64_t T = row->T, s = row->start_pos, g = h / a->group, Tp = pad16(T);
    const float *kbase = NULL, *vbase = NULL;
    if (s > 0) {
        kbase = (a->rotary ? row->base->rot_k : row->base->k) + l * T * KD + g * D;
        vbase = row->base->v + l * T * KD + g * D;
    }
    const float *knew = a->k + rs->off * KD + g * D, *vnew = a->v + rs->off * KD + g * D; // key j >= s: row j - s
    // The keys transposed, kt (D, Tp): kt[d][j] = k_j[d]; zeros past T.
    float *kt = sc, *pr = sc + D * Tp; // pr: a query's scores, then its probabilities (Tp)
    // The values are first read by the first queries' z, one row after another: ask for them all now, while the
    // keys are transposed and scored (their loads had been a third of this function's time), when they fit in a
    // fraction of L1 (the short sequences this is for).
    if (T * D <= 4096)
        for (int64_t j = 0; j < T; j++)
            for (int64_t d = 0; d < D; d += 16) __builtin_prefetch((j < s ? vbase + j * KD : vnew + (j - s) * KD) + d);
    transpose_keys(kt, Tp, kbase, knew, KD, s, T, D);
    ps_cache *cc = row->cache;
    for (int64_t t = s; t < T; t++) {
        if (!ps_post_at(row, &rs->plan, t)) continue;
        scores(pr, a->q + (rs->off + t - s) * QD + h * D, kt, Tp, D, t + 1, a->inv_sqrt_d);
        if (cc && cc->attn_scores) {
            float *dst = cc->attn_scores + ((l * H + h) * T + t) * T;
            for (int64_t j = 0; j < T; j++) dst[j] = j <= t ? pr[j] : -INFINITY;
        }
        softmax(pr, t + 1);
        ps_cpu_pattern_hook(a->cfg, row, l, h, t, pr);
        if (cc && cc->pattern) {
            float *dst = cc->pattern + ((l * H + h) * T + t) * T;
            for (int64_t j = 0; j < T; j++) dst[j] = j <= t ? pr[j] : 0.0f;
        }
        float *zt = a->z + (rs->off + t - s) * QD + h * D;
        switch (D) {
        case 16: z_row(zt, pr, t, vbase, vnew, KD, s, 1); break;
        case 32: z_row(zt, pr, t, vbase, vnew, KD, s, 2); break;
        case 64: z_row(zt, pr, t, vbase, vnew, KD, s, 4); break;
        case 80: z_row(zt, pr, t, vbase, vnew, KD, s, 5); break;
        case 128: z_row(zt, pr, t, vbase, vnew, KD, s, 8); break;
        default: z_row_any(zt, pr, t, vbase, vnew, KD, s, D);
        }
    }
}
