// Heads at hook_result on the CPU (TransformerLens's use_attn_result path): for the rows that patch or capture
// blocks.l.attn.hook_result, each head's output z_h @ W_O[h] is computed on its own, the hook applied, and
// attn_out recomputed as the sum over heads + b_O. Every other row keeps cpu_forward.c's fused W_O GEMM.
#include "cpu_internal.h"

#include <cblas.h>

#include <stdlib.h>
#include <string.h>

int ps_cpu_result_step(const ps_model_config *cfg, const float *w_o, const float *b_o, int64_t l, const float *zp, float *y,
                       int64_t n_wo, const int64_t *pmap, int64_t NA, const ps_cpu_slot *slots, int64_t n_active) {
    const int64_t H = cfg->n_heads, D = cfg->d_head, C = cfg->d_model, QD = H * D, HC = H * C;
    int64_t n = 0;
    for (int64_t r = 0; r < n_active; r++)
        if (ps_row_at_result(slots[r].row, l)) n += slots[r].n;
    if (n == 0) return 0;
    // The W_O rows (k of zp and y) of those rows' recomputed tokens, gathered: zg (n, QD) -> res (n, H, C).
    int64_t *rmap = malloc((size_t)NA * sizeof *rmap), *krow = malloc((size_t)n * sizeof *krow);
    float *zg = malloc((size_t)(n * QD) * sizeof(float)), *res = malloc((size_t)(n * HC) * sizeof(float));
    if (!rmap || !krow || !zg || !res) {
        free(rmap); free(krow); free(zg); free(res);
        return -1;
    }
    for (int64_t i = 0; i < NA; i++) rmap[i] = -1;
    n = 0;
    for (int64_t r = 0; r < n_active; r++) {
        const ps_cpu_slot *rs = &slots[r];
        if (!ps_row_at_result(rs->row, l)) continue;
        for (int64_t i = rs->off; i < rs->off + rs->n; i++) {
            const int64_t k = pmap ? pmap[i] : i;
            if (k < 0 || k >= n_wo) continue; // not recomputed at W_O here: attn_out stays base's
            memcpy(zg + n * QD, zp + k * QD, (size_t)QD * sizeof(float));
            krow[n] = k;
            rmap[i] = n++;
        }
    }
    // result[j, h, :] = z[j, h, :] @ W_O[h]  (W_O[h]: rows h*D .. h*D + D of the (H*D, C) matrix)
#pragma omp parallel for schedule(static) if (n * QD * C >= PS_SGEMM_PAR_MIN)
    for (int64_t h = 0; h < H; h++)
        ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)C, (int)D, 1.0f, zg + h * D, (int)QD, w_o + h * D * C,
                 (int)C, 0.0f, res + h * C, (int)HC);
    ps_cpu_hook(cfg, PS_SITE_RESULT, l, res, HC, rmap, slots, n_active);
    // Cache rows record the result after the hook (attention_step stored it before).
    for (int64_t r = 0; r < n_active; r++) {
        const ps_cpu_slot *rs = &slots[r];
        ps_cache *cc = rs->row->cache;
        if (!cc || !cc->result) continue;
        for (int64_t i = rs->off; i < rs->off + rs->n; i++)
            if (rmap[i] >= 0)
                memcpy(cc->result + (l * rs->row->T + rs->row->start_pos + i - rs->off) * HC, res + rmap[i] * HC,
                       (size_t)HC * sizeof(float));
    }
    // attn_out = sum over heads (in head order) + b_O
#pragma omp parallel for schedule(static) if (n * HC >= PS_PAR_MIN)
    for (int64_t j = 0; j < n; j++) {
        float *yk = y + krow[j] * C;
        const float *rj = res + j * HC;
        for (int64_t c = 0; c < C; c++) yk[c] = rj[c];
        for (int64_t h = 1; h < H; h++)
            for (int64_t c = 0; c < C; c++) yk[c] += rj[h * C + c];
        if (b_o)
            for (int64_t c = 0; c < C; c++) yk[c] += b_o[c];
    }
    free(rmap); free(krow); free(zg); free(res);
    return 0;
}
