// Reference means for mean ablation: hook_z (or hook_result), hook_mlp_out and hook_mlp_post averaged over a reference
// prompt set, per position (seqcont), over all positions, or per template group and position (IOI/ARENA),
// computed once per run (optionally under other ablations: seqcont's MLP means).
#include "ablation_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const ps_site ms_site[PS_MS_COUNT] = {PS_SITE_Z, PS_SITE_MLP_OUT, PS_SITE_MLP_POST, PS_SITE_RESULT};

const char *ps_mean_group_name(ps_mean_group g) {
    static const char *const names[] = {"per_position", "all_positions", "per_template_position"};
    return (unsigned)g < 3 ? names[g] : "?";
}

ps_view ps_ref_means_view(const ps_ref_means *rm, int s, int64_t l, int64_t g) {
    ps_view v = {0};
    v.rows = rm->rows;
    v.data = rm->site[s] + ((l * rm->n_groups + g) * rm->rows) * rm->width[s];
    return v;
}

void ps_ref_means_free(ps_ref_means *rm) {
    if (!rm) return;
    for (int s = 0; s < PS_MS_COUNT; s++) free(rm->site[s]);
    free(rm->group_count);
    memset(rm, 0, sizeof *rm);
}

int ps_means_accumulate(const ps_model *m, ps_backend *be, const ps_prompt_set *ref, const int64_t *group_of,
                        unsigned sites, ps_means_patch_fn patch_fn, void *ctx, int64_t patch_cap, const ps_means_base *mb,
                        int64_t batch, const char *where, ps_ref_means *out, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, G = out->n_groups > 0 ? out->n_groups : 1;
    const int per_pos = out->group != PS_GROUP_ALL_POSITIONS;
    out->n_groups = G;
    out->n_ref = ref->n;
    if (ref->n < 1) return ps_fail(e, PS_EXIT_BADINPUT, "%s: the reference set is empty", where);
    // Every prompt of a group must have the group's length when means are taken per position.
    int64_t *glen = calloc((size_t)G, sizeof *glen);
    out->group_count = calloc((size_t)G, sizeof *out->group_count);
    if (!glen || !out->group_count) { free(glen); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for reference means"); }
    for (int64_t i = 0; i < ref->n; i++) {
        const int64_t g = group_of ? group_of[i] : 0, T = ref->p[i].T;
        if (g < 0 || g >= G) { free(glen); return ps_fail(e, PS_EXIT_BADINPUT, "%s: reference prompt %lld has no group", where, (long long)i); }
        if (per_pos && glen[g] && glen[g] != T) {
            int64_t first = 0;
            while (group_of && group_of[first] != g) first++;
            free(glen);
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s means need one length per group: reference prompt %lld has %lld tokens, prompt %lld has %lld",
                           where, ps_mean_group_name(out->group), (long long)first, (long long)ref->p[first].T, (long long)i, (long long)T);
        }
        glen[g] = T;
        out->group_count[g]++;
    }
    int64_t rows = 1;
    if (per_pos) {
        rows = glen[0];
        for (int64_t g = 1; g < G; g++)
            if (glen[g] != rows) {
                free(glen);
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: per_template_position means need one length for every group: group 0 has %lld tokens, group %lld has %lld",
                               where, (long long)rows, (long long)g, (long long)glen[g]);
            }
    }
    free(glen);
    out->rows = rows;
    out->width[PS_MS_Z] = mc->n_heads * mc->d_head;
    out->width[PS_MS_MLP_OUT] = mc->d_model;
    out->width[PS_MS_MLP_POST] = mc->d_mlp;
    out->width[PS_MS_RESULT] = sites & (1u << PS_MS_RESULT) ? mc->n_heads * mc->d_model : 0;
    double *sum[PS_MS_COUNT] = {0};
    for (int s = 0; s < PS_MS_COUNT; s++) {
        if (!(sites & (1u << s))) continue;
        const size_t n = (size_t)(L * G * rows * out->width[s]);
        sum[s] = calloc(n, sizeof(double));
        out->site[s] = malloc(n * sizeof(float));
        if (!sum[s] || !out->site[s]) {
            for (int k = 0; k <= s; k++) free(sum[k]);
            return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for reference means");
        }
    }
    // Rows in small batches capturing only the sites wanted at layers >= from (no whole activation caches: the
    // search takes these means once per candidate). From a base, rows start where their patches first change
    // the base run; without one they are full forwards.
    const int64_t BATCH = batch > 0 ? batch : 32;
    const int64_t from = mb ? mb->from_layer : 0;
    int n_sites = 0;
    for (int s = 0; s < PS_MS_COUNT; s++) n_sites += (sites >> s) & 1;
    const int64_t n_cap = (L - from) * n_sites;
    size_t cap_floats = 0;
    for (int s = 0; s < PS_MS_COUNT; s++)
        if (sites & (1u << s)) cap_floats += (size_t)((L - from) * ref->T_max * out->width[s]);
    // Several blocks a backend call, each block a group of its own (its numbers its own call's, on one thread), so
    // that small blocks run on the threads side by side; as many as 64 MiB of captures hold, at most 8. The sums
    // then run in prompt order, as with one block a call.
    int64_t blocks = (int64_t)(((size_t)64 << 20) / ((size_t)BATCH * (cap_floats ? cap_floats : 1) * sizeof(float)));
    if (blocks < 1) blocks = 1;
    if (blocks > 8) blocks = 8;
    if (!be->forward_groups) blocks = 1; // (without groups, a block a call as before)
    const int64_t PER = BATCH * blocks;
    ps_row *rows_ = malloc((size_t)PER * sizeof *rows_);
    ps_patch *patches = patch_cap > 0 ? malloc((size_t)(PER * patch_cap) * sizeof *patches) : NULL;
    ps_capture *caps = malloc((size_t)(PER * (n_cap ? n_cap : 1)) * sizeof *caps);
    float *cap_buf = malloc((size_t)PER * (cap_floats ? cap_floats : 1) * sizeof(float));
    int rc = 0;
    if ((patch_cap > 0 && !patches) || !caps || !cap_buf || !rows_) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for reference means");
    for (int64_t i0 = 0; rc == 0 && i0 < ref->n; i0 += PER) {
        const int64_t nb = ref->n - i0 < PER ? ref->n - i0 : PER;
        for (int64_t b = 0; b < nb && rc == 0; b++) {
            const ps_prompt *p = &ref->p[i0 + b];
            // caps[b * n_cap + (l - from) * n_sites + k]: site k (in PS_MS order) of layer l
            float *buf = cap_buf + (size_t)b * cap_floats;
            int64_t c = 0;
            for (int64_t l = from; l < L; l++)
                for (int s = 0; s < PS_MS_COUNT; s++)
                    if (sites & (1u << s)) {
                        caps[b * n_cap + c++] = (ps_capture){.site = ms_site[s], .layer = l, .out = buf};
                        buf += p->T * out->width[s];
                    }
            rows_[b] = (ps_row){.tokens = p->clean, .T = p->T, .base = mb ? &mb->base[i0 + b] : NULL, .captures = caps + b * n_cap,
                                .n_captures = n_cap};
            if (patch_fn) {
                const int64_t np = patch_fn(ctx, i0 + b, p, patches + b * patch_cap, patch_cap);
                if (np < 0) { rc = -1; break; }
                rows_[b].patches = patches + b * patch_cap;
                rows_[b].n_patches = np;
            }
        }
        const ps_rows_opts ro = {.naive = mb ? 0 : 1, .batch_rows = PER, .group_rows = BATCH};
        if (rc == 0) rc = ps_engine_rows(m, be, rows_, nb, &ro, NULL, e);
        // The sums: each (site, layer) on a thread, its prompts in order (so each element's sum is in prompt order,
        // whatever the threads).
        const int64_t nl = L - from;
#pragma omp parallel for schedule(dynamic, 1) if (rc == 0 && nb * nl >= 64)
        for (int64_t sl = 0; sl < PS_MS_COUNT * nl; sl++) {
            const int s = (int)(sl / nl);
            const int64_t l = from + sl % nl;
            if (rc != 0 || !sum[s]) continue;
            int k = 0; // site s's place among the captured sites (the captures' order)
            for (int q = 0; q < s; q++) k += sum[q] != NULL;
            const int64_t w = out->width[s];
            for (int64_t b = 0; b < nb; b++) {
                const int64_t g = group_of ? group_of[i0 + b] : 0, T = ref->p[i0 + b].T;
                double *dst = sum[s] + (l * G + g) * rows * w;
                const float *capd = caps[b * n_cap + (l - from) * n_sites + k].out;
                for (int64_t t = 0; t < T; t++) {
                    const float *x = capd + t * w;
                    double *d = dst + (per_pos ? t : 0) * w;
                    for (int64_t j = 0; j < w; j++) d[j] += x[j];
                }
            }
        }
    }
    free(rows_);
    free(patches);
    free(caps);
    free(cap_buf);
    for (int s = 0; s < PS_MS_COUNT; s++) {
        if (!sum[s]) continue;
        const int64_t w = out->width[s];
        // Layers below `from` are the base run's: its means, as they are.
        const size_t below = (size_t)(from * G * rows * w);
        if (rc == 0 && below) memcpy(out->site[s], mb->below->site[s], below * sizeof(float));
        for (int64_t l = from; rc == 0 && l < L; l++)
            for (int64_t g = 0; g < G; g++) {
                // Per position: the group's prompts; all positions: every token of them.
                double n = (double)out->group_count[g];
                if (!per_pos) {
                    n = 0;
                    for (int64_t i = 0; i < ref->n; i++)
                        if ((group_of ? group_of[i] : 0) == g) n += (double)ref->p[i].T;
                }
                const size_t off = (size_t)((l * G + g) * rows * w);
                for (int64_t j = 0; j < rows * w; j++) out->site[s][off + j] = n > 0 ? (float)(sum[s][off + j] / n) : 0.0f;
            }
        free(sum[s]);
    }
    return rc;
}

int ps_ref_means_compute_heads(const ps_model *m, ps_backend *be, const ps_prompt_set *ref, ps_mean_group group,
                               const int64_t *group_of, int64_t n_groups, int heads_at_result, const char *where, ps_ref_means *out,
                               ps_error *e) {
    memset(out, 0, sizeof *out);
    out->group = group;
    out->n_groups = group == PS_GROUP_PER_TEMPLATE_POSITION ? n_groups : 1;
    if (group != PS_GROUP_PER_TEMPLATE_POSITION) group_of = NULL;
    const unsigned all = (1u << (heads_at_result ? PS_MS_RESULT : PS_MS_Z)) | (1u << PS_MS_MLP_OUT) | (1u << PS_MS_MLP_POST);
    if (ps_means_accumulate(m, be, ref, group_of, all, NULL, NULL, 0, NULL, 0, where, out, e) != 0) {
        ps_ref_means_free(out);
        return -1;
    }
    return 0;
}

int ps_ref_means_compute(const ps_model *m, ps_backend *be, const ps_prompt_set *ref, ps_mean_group group,
                         const int64_t *group_of, int64_t n_groups, const char *where, ps_ref_means *out, ps_error *e) {
    return ps_ref_means_compute_heads(m, be, ref, group, group_of, n_groups, 0, where, out, e);
}
