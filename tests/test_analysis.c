// The analyses against TransformerLens (tests/data/*/golden_analysis.safetensors, tests/golden/make_analysis_goldens.py)
// on every tiny model: direct logit attribution in TransformerLens's convention (logit_attrs of decompose_resid,
// stack_head_results and stack_neuron_results), the exact variant summing to the model's logit difference, the
// logit lens in both conventions, the attention table's layout, the neurons' activations and top-k, and DLA of a run
// with heads ablated.
#include "golden_util.h"
#include "ps_analysis.h"
#include "ps_backend.h"
#include "ps_forward.h"
#include "testutil.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

static float sum_range(const float *x, int64_t a, int64_t b) {
    double s = 0;
    for (int64_t i = a; i < b; i++) s += x[i];
    return (float)s;
}

static void test_dla(const char *name, const ps_model *m, const ps_cache *c, const ps_safetensors *g, int p, const int32_t *meta) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads, M = mc->d_mlp, K = ps_dla_n_components(mc, 1);
    const int bias = mc->arch != PS_ARCH_LLAMA, pos = mc->arch == PS_ARCH_GPT2;   // biases: GPT-2, GPT-NeoX; pos_embed: GPT-2
    ps_error e = {0};
    float *out = malloc((size_t)(2 * K) * sizeof *out);
    if (ps_dla_prompt(m, c, meta[0], meta[1], meta[2], 1, out, &e) != 0) { TU_CHECK(0, "%s: dla: %s", name, e.msg); free(out); return; }
    char key[64], nm[160];
    int64_t n_resid = 0, n_heads = 0, n_neur = 0;
    snprintf(key, sizeof key, "p%d.dla_resid", p);
    float *want_resid = gu_f32(g, key, &n_resid);
    snprintf(key, sizeof key, "p%d.dla_heads", p);
    float *want_heads = gu_f32(g, key, &n_heads);
    snprintf(key, sizeof key, "p%d.dla_neurons", p);
    float *want_neur = gu_f32(g, key, &n_neur);
    snprintf(key, sizeof key, "p%d.logits", p);
    int64_t nv = 0;
    float *logits = gu_f32(g, key, &nv);
    int64_t k_heads = 1 + pos + 2 * L, k_bo = k_heads + L * H, k_fb = k_bo + bias * L, k_neur = k_fb + 1, k_bout = k_neur + L * M;
    if (!want_resid || !want_heads || !want_neur || !logits || n_resid != k_heads || n_heads != L * H || n_neur != L * M) {
        TU_CHECK(0, "%s p%d: dla goldens missing or misshapen", name, p);
    } else {
        snprintf(nm, sizeof nm, "%s p%d dla tl embed/attn_out/mlp_out vs TL decompose_resid", name, p);
        tu_close(nm, out, want_resid, n_resid, 1e-4f, 1e-4f);
        snprintf(nm, sizeof nm, "%s p%d dla tl heads vs TL stack_head_results", name, p);
        tu_close(nm, out + k_heads, want_heads, n_heads, 1e-4f, 1e-4f);
        snprintf(nm, sizeof nm, "%s p%d dla tl neurons vs TL stack_neuron_results", name, p);
        tu_close(nm, out + k_neur, want_neur, n_neur, 1e-4f, 1e-4f);
        TU_CHECK(isnan(out[k_fb]), "%s p%d: the tl variant's final_bias should be NaN", name, p);
        // Exact: the parts and the final bias sum to the model's (TransformerLens's) logit difference.
        const float *x = out + K;
        float got = sum_range(x, 0, k_heads) + x[k_fb], want = logits[meta[1]] - logits[meta[2]];
        snprintf(nm, sizeof nm, "%s p%d dla exact sum vs TL logit diff", name, p);
        tu_close(nm, &got, &want, 1, 1e-4f, 1e-4f);
        // Heads (+ b_O) sum to the layer's attention output, neurons (+ b_out) to its MLP output, in both variants.
        for (int v = 0; v < 2; v++) {
            const float *o = out + v * K;
            for (int64_t l = 0; l < L; l++) {
                float hs = sum_range(o, k_heads + l * H, k_heads + (l + 1) * H) + (bias ? o[k_bo + l] : 0.0f);
                float ns = sum_range(o, k_neur + l * M, k_neur + (l + 1) * M) + (bias ? o[k_bout + l] : 0.0f);
                snprintf(nm, sizeof nm, "%s p%d dla %s L%lld heads sum = attn_out", name, p, v ? "exact" : "tl", (long long)l);
                tu_close(nm, &hs, &o[1 + pos + 2 * l], 1, 1e-4f, 1e-4f);
                snprintf(nm, sizeof nm, "%s p%d dla %s L%lld neurons sum = mlp_out", name, p, v ? "exact" : "tl", (long long)l);
                tu_close(nm, &ns, &o[2 + pos + 2 * l], 1, 1e-4f, 1e-4f);
            }
        }
    }
    free(want_resid);
    free(want_heads);
    free(want_neur);
    free(logits);
    free(out);
}

static void test_lens(const char *name, const ps_model *m, const ps_cache *c, const ps_safetensors *g, int p, const int32_t *meta) {
    const ps_model_config *mc = &m->cfg;
    const int64_t S = ps_lens_n_stages(mc), V = mc->d_vocab, top_k = 3, Q = PS_LENS_QUANTITIES + top_k;
    ps_error e = {0};
    float *lg = malloc((size_t)(2 * S * V) * sizeof *lg), *row = malloc((size_t)(2 * S * Q) * sizeof *row);
    char key[64], nm[160];
    if (ps_lens_logits(m, c, meta[0], lg, &e) != 0 || ps_lens_prompt(m, c, meta[0], meta[1], meta[2], top_k, row, &e) != 0) {
        TU_CHECK(0, "%s: lens: %s", name, e.msg);
        goto done;
    }
    static const char *variant[2] = {"recompute", "cached"};
    for (int v = 0; v < 2; v++) {
        int64_t n = 0;
        snprintf(key, sizeof key, "p%d.lens_%s", p, variant[v]);
        float *want = gu_f32(g, key, &n);
        if (!want || n != S * V) { TU_CHECK(0, "%s p%d: golden %s missing or misshapen", name, p, key); free(want); continue; }
        snprintf(nm, sizeof nm, "%s p%d logit lens %s vs TL accumulated_resid", name, p, variant[v]);
        tu_close(nm, lg + v * S * V, want, n, 1e-4f, 1e-4f);
        // The row: the metric and the top tokens of each stage, from the golden logits.
        for (int64_t s = 0; s < S; s++) {
            const float *w = want + s * V, *o = row + (v * S + s) * Q;
            float d = w[meta[1]] - w[meta[2]];
            int64_t best = 0, rank = 0;
            for (int64_t t = 0; t < V; t++) { if (w[t] > w[best]) best = t; rank += w[t] > w[meta[1]]; }
            TU_CHECK(fabsf(o[0] - d) <= 1e-4f + 1e-4f * fabsf(d), "%s p%d %s stage %lld: logit diff %g, TL %g", name, p, variant[v], (long long)s, o[0], d);
            TU_CHECK(o[3] == (float)rank, "%s p%d %s stage %lld: answer rank %g, TL %lld", name, p, variant[v], (long long)s, o[3], (long long)rank);
            TU_CHECK(o[PS_LENS_QUANTITIES] == (float)best, "%s p%d %s stage %lld: top1 %g, TL %lld", name, p, variant[v], (long long)s, o[PS_LENS_QUANTITIES], (long long)best);
            TU_CHECK(w[(int64_t)o[PS_LENS_QUANTITIES]] >= w[(int64_t)o[PS_LENS_QUANTITIES + 1]] &&
                     w[(int64_t)o[PS_LENS_QUANTITIES + 1]] >= w[(int64_t)o[PS_LENS_QUANTITIES + 2]], "%s p%d: top-k not in order", name, p);
        }
        free(want);
    }
done:
    free(lg);
    free(row);
}

static void test_attention(const char *name, const ps_model *m, const ps_cache *c) {
    const ps_model_config *mc = &m->cfg;
    ps_error e = {0};
    ps_table t = {0};
    int64_t layers[1] = {mc->n_layers - 1}, heads[2] = {mc->n_heads - 1, 0}, queries[2] = {-1, 1};
    int64_t T_max = c->T + 2;
    if (ps_attention_table_init(&t, "pat", mc, 1, layers, 1, heads, 2, queries, NULL, 2, T_max, &e) != 0) { TU_CHECK(0, "%s: attention: %s", name, e.msg); return; }
    int64_t qpos[2] = {c->T - 1, 1};   // queries -1 and 1 resolved
    ps_attention_prompt(&t, mc, c, qpos, t.values);
    const int64_t T = c->T, H = mc->n_heads;
    int bad = 0;
    for (int64_t hi = 0; hi < 2; hi++)
        for (int64_t qi = 0; qi < 2; qi++) {
            int64_t q = qi == 0 ? T - 1 : 1;
            for (int64_t k = 0; k < T_max; k++) {
                float got = t.values[(hi * 2 + qi) * T_max + k];
                float want = k < T ? c->pattern[((layers[0] * H + heads[hi]) * T + q) * T + k] : NAN;
                bad += k < T ? got != want : !isnan(got);
            }
        }
    TU_CHECK(bad == 0, "%s: %d attention table cells differ from the cache's pattern", name, bad);
    ps_table bad_t = {0};
    int64_t bad_layer[1] = {mc->n_layers};
    TU_CHECK(ps_attention_table_init(&bad_t, "pat", mc, 1, bad_layer, 1, NULL, 0, NULL, NULL, 0, 4, &e) != 0 && e.code == PS_EXIT_BADINPUT,
             "%s: a layer outside the model was accepted", name);
    ps_table_free(&bad_t);
    ps_table_free(&t);
}

// OV circuits: our first-layer residuals of the members, each run after the same BOS-like token, and every
// head's OV logits against the torch script's (on TransformerLens's weights); the table's hits and scores
// against the golden logits' top-k.
static void test_ov(const char *name, const ps_model *m, const ps_safetensors *g) {
    const ps_model_config *mc = &m->cfg;
    const int64_t C = mc->d_model, V = mc->d_vocab, L = mc->n_layers, H = mc->n_heads, top_k = 5;
    int64_t n = 0, nb = 0, nr = 0, nl = 0;
    int32_t *tok = gu_i32(g, "ov.tokens", &n), *bos = gu_i32(g, "ov.bos", &nb);
    float *want_resid = gu_f32(g, "ov.resid", &nr), *want = gu_f32(g, "ov.logits", &nl);
    float *resid = malloc((size_t)(n * C) * sizeof *resid), *lg = malloc((size_t)(n * V) * sizeof *lg);
    ps_error e = {0};
    ps_table t = {0};
    char nm[160];
    if (!tok || !bos || !want_resid || !want || nr != n * C || nl != L * H * n * V) { TU_CHECK(0, "%s: ov goldens missing or misshapen", name); goto done; }
    for (int64_t i = 0; i < n; i++) {
        int32_t seq[2] = {bos[0], tok[i]};
        ps_cache c = {0};
        ps_row row = {.tokens = seq, .T = 2, .cache = &c};
        if (ps_cache_init(&c, mc, 2, 0, &e) != 0 || ps_cpu_forward(m, &row, 1, &e) != 0) { TU_CHECK(0, "%s: ov forward: %s", name, e.msg); ps_cache_free(&c); goto done; }
        memcpy(resid + i * C, c.resid_post + 1 * C, (size_t)C * sizeof(float));   // layer 0, position 1
        ps_cache_free(&c);
    }
    snprintf(nm, sizeof nm, "%s ov first-layer residuals vs TL", name);
    tu_close(nm, resid, want_resid, n * C, 1e-4f, 1e-4f);
    float max_err = 0;
    for (int64_t l = 0; l < L; l++)
        for (int64_t h = 0; h < H; h++) {
            if (ps_ov_logits(m, want_resid, n, l, h, 1.0f, lg, &e) != 0) { TU_CHECK(0, "%s: ov: %s", name, e.msg); goto done; }
            snprintf(nm, sizeof nm, "%s ov logits L%lldH%lld vs torch on TL weights", name, (long long)l, (long long)h);
            if (tu_close(nm, lg, want + (l * H + h) * n * V, n * V, 1e-4f, 1e-4f) == 0)
                for (int64_t i = 0; i < n * V; i++) max_err = fmaxf(max_err, fabsf(lg[i] - want[(l * H + h) * n * V + i]));
        }
    if (ps_ov_table_init(&t, "ov", mc, NULL, 0, NULL, 0, tok, NULL, n, top_k, &e) != 0 || ps_ov_fill(m, &t, want_resid, n, NULL, 1.0f, &e) != 0) {
        TU_CHECK(0, "%s: ov table: %s", name, e.msg);
        goto done;
    }
    const int64_t Q = PS_OV_QUANTITIES + top_k;
    int bad = 0;
    for (int64_t l = 0; l < L; l++)
        for (int64_t h = 0; h < H; h++) {
            const float *cell = t.values + (l * H + h) * (n + 1) * Q;
            int64_t copy = 0, next = 0;
            for (int64_t i = 0; i < n; i++) {
                const float *w = want + ((l * H + h) * n + i) * V;
                int64_t rs = 0, rn = 0;
                for (int64_t v = 0; v < V; v++) { rs += w[v] > w[tok[i]]; if (i + 1 < n) rn += w[v] > w[tok[i + 1]]; }
                copy += rs < top_k;
                next += i + 1 < n && rn < top_k;
                bad += cell[i * Q + 2] != (float)rs || cell[i * Q + 0] != (float)(rs < top_k);
                bad += i + 1 < n ? cell[i * Q + 3] != (float)rn : !isnan(cell[i * Q + 1]);
            }
            bad += fabsf(cell[n * Q] - 100.0f * (float)copy / (float)n) > 1e-4f || fabsf(cell[n * Q + 1] - 100.0f * (float)next / (float)(n - 1)) > 1e-4f;
        }
    TU_CHECK(bad == 0, "%s: %d ov table entries differ from the golden logits' ranks and hit rates", name, bad);
    {   // The heads filled on 3 threads: the same table, bitwise.
        ps_table t3 = {0};
        const int nt = omp_get_max_threads();
        omp_set_num_threads(3);
        if (ps_ov_table_init(&t3, "ov", mc, NULL, 0, NULL, 0, tok, NULL, n, top_k, &e) != 0 || ps_ov_fill(m, &t3, want_resid, n, NULL, 1.0f, &e) != 0) {
            TU_CHECK(0, "%s: ov table on 3 threads: %s", name, e.msg);
        } else {
            int64_t diff = 0, first = -1;
            for (int64_t i = 0; i < t.n_cells; i++)
                if (memcmp(&t.values[i], &t3.values[i], sizeof(float)) != 0) { diff++; if (first < 0) first = i; }
            TU_CHECK(diff == 0, "%s: ov table on 3 threads: %lld of %lld cells differ from 1 thread's (first: cell %lld, %g vs %g)", name,
                     (long long)diff, (long long)t.n_cells, (long long)first, first >= 0 ? t.values[first] : 0.0, first >= 0 ? t3.values[first] : 0.0);
        }
        omp_set_num_threads(nt);
        ps_table_free(&t3);
    }
    printf("%s ov scores: %lld heads x %lld members, logits max_abs_err=%.3g vs torch on TL weights, hits and rates ok\n", name,
           (long long)(L * H), (long long)n, max_err);
done:
    ps_table_free(&t);
    free(tok); free(bos); free(want_resid); free(want); free(resid); free(lg);
}

// The IOI paper's input: every occurrence of a member in two prompts; our residuals there, and the table's
// per-member hit fractions and occurrence-weighted rates against the golden OV logits of those occurrences.
static void test_ov_prompts(const char *name, const ps_model *m, const ps_safetensors *g) {
    const ps_model_config *mc = &m->cfg;
    const int64_t C = mc->d_model, V = mc->d_vocab, L = mc->n_layers, H = mc->n_heads, top_k = 5;
    int64_t n = 0, no = 0, nr = 0, nl = 0;
    int32_t *tok = gu_i32(g, "ov.tokens", &n), *member = gu_i32(g, "ov.prompt_member", &no);
    float *want_resid = gu_f32(g, "ov.prompt_resid", &nr), *want = gu_f32(g, "ov.prompt_logits", &nl);
    float *resid = malloc((size_t)((no > 0 ? no : 1) * C) * sizeof *resid);
    int64_t *member_of = malloc((size_t)(no > 0 ? no : 1) * sizeof *member_of), got_occ = 0;
    ps_error e = {0};
    ps_table t = {0};
    char nm[160];
    if (!tok || !member || !want_resid || !want || nr != no * C || nl != L * H * no * V) { TU_CHECK(0, "%s: ov prompt goldens missing", name); goto done; }
    for (int j = 0;; j++) {
        char key[32];
        int64_t T = 0;
        snprintf(key, sizeof key, "ov.prompt%d", j);
        int32_t *seq = gu_i32(g, key, &T);
        if (!seq) break;
        ps_cache c = {0};
        ps_row row = {.tokens = seq, .T = T, .cache = &c};
        if (ps_cache_init(&c, mc, T, 0, &e) == 0 && ps_cpu_forward(m, &row, 1, &e) == 0)
            for (int64_t p = 0; p < T; p++)
                for (int64_t i = 0; i < n; i++)
                    if (seq[p] == tok[i] && got_occ < no) {
                        memcpy(resid + got_occ * C, c.resid_post + p * C, (size_t)C * sizeof(float));   // layer 0
                        member_of[got_occ++] = i;
                    }
        ps_cache_free(&c);
        free(seq);
    }
    TU_CHECK(got_occ == no, "%s: %lld member occurrences found, golden %lld", name, (long long)got_occ, (long long)no);
    for (int64_t r = 0; r < got_occ; r++) TU_CHECK(member_of[r] == member[r], "%s: occurrence %lld is member %lld, golden %d", name, (long long)r, (long long)member_of[r], member[r]);
    snprintf(nm, sizeof nm, "%s ov residuals at the prompts' member positions vs TL", name);
    tu_close(nm, resid, want_resid, no * C, 1e-4f, 1e-4f);
    if (ps_ov_table_init(&t, "ovp", mc, NULL, 0, NULL, 0, tok, NULL, n, top_k, &e) != 0 || ps_ov_fill(m, &t, want_resid, no, member_of, 1.0f, &e) != 0) {
        TU_CHECK(0, "%s: ov prompt table: %s", name, e.msg);
        goto done;
    }
    const int64_t Q = PS_OV_QUANTITIES + top_k;
    int bad = 0;
    for (int64_t l = 0; l < L; l++)
        for (int64_t h = 0; h < H; h++) {
            const float *cell = t.values + (l * H + h) * (n + 1) * Q;
            double hits[16] = {0}, cnt[16] = {0}, copy = 0, next = 0, occ_next = 0;
            for (int64_t r = 0; r < no; r++) {
                const float *w = want + ((l * H + h) * no + r) * V;
                int64_t i = member[r], rs = 0, rn = 0;
                for (int64_t v = 0; v < V; v++) { rs += w[v] > w[tok[i]]; if (i + 1 < n) rn += w[v] > w[tok[i + 1]]; }
                hits[i] += rs < top_k;
                cnt[i] += 1;
                copy += rs < top_k;
                if (i + 1 < n) { occ_next += 1; next += rn < top_k; }
            }
            for (int64_t i = 0; i < n && i < 16; i++)
                bad += cnt[i] ? fabsf(cell[i * Q] - (float)(hits[i] / cnt[i])) > 1e-6f : !isnan(cell[i * Q]);
            bad += fabsf(cell[n * Q] - (float)(100.0 * copy / (double)no)) > 1e-4f;
            bad += fabsf(cell[n * Q + 1] - (float)(100.0 * next / occ_next)) > 1e-4f;
        }
    TU_CHECK(bad == 0, "%s: %d ov prompt-input entries differ from the golden logits' hits", name, bad);
    printf("%s ov scores over %lld occurrences in prompts: per-member fractions and rates ok\n", name, (long long)no);
done:
    ps_table_free(&t);
    free(tok); free(member); free(want_resid); free(want); free(resid); free(member_of);
}

// ARENA's head detectors on the golden's repeated random tokens, against the diagonals of TransformerLens's patterns.
static void test_head_scores(const char *name, const ps_model *m, const ps_safetensors *g) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads;
    int64_t nt = 0, ns = 0;
    int32_t *tok = gu_i32(g, "hs.tokens", &nt);
    float *want = gu_f32(g, "hs.scores", &ns);
    double *acc = calloc((size_t)(L * H * PS_HEAD_SCORES), sizeof *acc);
    float *got = malloc((size_t)(L * H * PS_HEAD_SCORES) * sizeof *got);
    const int64_t B = 3, T = nt / B, N = (T - 1) / 2;
    ps_error e = {0};
    if (!tok || !want || ns != L * H * PS_HEAD_SCORES || nt != B * T) { TU_CHECK(0, "%s: head-score goldens missing", name); goto done; }
    for (int64_t b = 0; b < B; b++) {
        ps_cache c = {0};
        ps_row row = {.tokens = tok + b * T, .T = T, .cache = &c};
        if (ps_cache_init(&c, mc, T, 0, &e) != 0 || ps_cpu_forward(m, &row, 1, &e) != 0) TU_CHECK(0, "%s: %s", name, e.msg);
        else ps_head_scores_add(mc, &c, N, acc);
        ps_cache_free(&c);
    }
    for (int64_t i = 0; i < L * H * PS_HEAD_SCORES; i++) got[i] = (float)(acc[i] / (double)B);
    char nm[128];
    snprintf(nm, sizeof nm, "%s head scores (current/previous/first/duplicate/induction) vs ARENA on TL", name);
    tu_close(nm, got, want, L * H * PS_HEAD_SCORES, 1e-5f, 1e-4f);
done:
    free(tok); free(want); free(acc); free(got);
}

// The small Neuroscope: chosen neurons' hook_mlp_post at every position of each golden prompt against
// TransformerLens's, the ranking on TL's own activations equal to the golden's exactly (its ties included), and
// the ranking on ours the same up to near-ties (activations within the tolerance may swap).
static void test_neurons(const char *name, const ps_model *m, const ps_safetensors *g) {
    const ps_model_config *mc = &m->cfg;
    int64_t nn = 0, na = 0, nt = 0, nta = 0;
    int32_t *nrn = gu_i32(g, "nrn.neurons", &nn), *top = gu_i32(g, "nrn.top", &nt);
    float *want = gu_f32(g, "nrn.acts", &na), *want_act = gu_f32(g, "nrn.top_act", &nta);
    int32_t *seq[8] = {0};
    int64_t len[8] = {0}, P = 0, T_max = 0, n = nn / 2, layer[8], index[8];
    for (; P < 8; P++) {
        char key[32];
        snprintf(key, sizeof key, "nrn.prompt%lld", (long long)P);
        if (!(seq[P] = gu_i32(g, key, &len[P]))) break;
        if (len[P] > T_max) T_max = len[P];
    }
    const int64_t K = n > 0 ? nt / (2 * n) : 0;
    float *got = malloc((size_t)((P * n * T_max) > 0 ? P * n * T_max : 1) * sizeof *got);
    ps_error e = {0};
    ps_table t = {0}, tt = {0};
    char nm[160];
    if (!nrn || !top || !want || !want_act || P < 2 || n < 1 || n > 8 || na != P * n * T_max || nta != n * K || !got) {
        TU_CHECK(0, "%s: neuron goldens missing or misshapen", name);
        goto done;
    }
    for (int64_t i = 0; i < n; i++) { layer[i] = nrn[2 * i]; index[i] = nrn[2 * i + 1]; }
    if (ps_neurons_table_init(&t, "nrn", mc, P, layer, index, n, T_max, &e) != 0) { TU_CHECK(0, "%s: neurons table: %s", name, e.msg); goto done; }
    for (int64_t j = 0; j < P; j++) {
        ps_cache c = {0};
        ps_row row = {.tokens = seq[j], .T = len[j], .cache = &c};
        if (ps_cache_init(&c, mc, len[j], 0, &e) != 0 || ps_cpu_forward(m, &row, 1, &e) != 0) { TU_CHECK(0, "%s: neurons forward: %s", name, e.msg); ps_cache_free(&c); goto done; }
        ps_neurons_prompt(mc, &c, layer, index, n, len[j], T_max, t.values + j * t.n_cells);
        ps_cache_free(&c);
    }
    memcpy(got, t.values, (size_t)(P * n * T_max) * sizeof *got);
    snprintf(nm, sizeof nm, "%s neurons hook_mlp_post vs TL (NaN past each prompt)", name);
    tu_close(nm, got, want, P * n * T_max, 1e-4f, 1e-4f);
    int64_t pr[16], po[16];
    float ac[16];
    int bad_tl = 0, bad_ours = 0;
    for (int64_t i = 0; i < n && K <= 16; i++) {
        ps_neuron_top_rank(want, P, n, T_max, i, K, pr, po, ac);
        for (int64_t r = 0; r < K; r++) bad_tl += pr[r] != top[(i * K + r) * 2] || po[r] != top[(i * K + r) * 2 + 1] || ac[r] != want_act[i * K + r];
        ps_neuron_top_rank(got, P, n, T_max, i, K, pr, po, ac);
        for (int64_t r = 0; r < K; r++) {
            const float w = want_act[i * K + r];
            if (fabsf(ac[r] - w) > 1e-4f + 1e-4f * fabsf(w)) { bad_ours++; continue; }
            if (pr[r] == top[(i * K + r) * 2] && po[r] == top[(i * K + r) * 2 + 1]) continue;
            // A different cell: allowed only where the golden itself has a near-tie at this activation.
            const float tw = want[(pr[r] * n + i) * T_max + po[r]];
            bad_ours += isnan(tw) || fabsf(tw - w) > 1e-4f + 1e-4f * fabsf(w);
        }
    }
    TU_CHECK(bad_tl == 0, "%s: %d top-k entries ranked from TL's activations differ from the golden's order", name, bad_tl);
    TU_CHECK(bad_ours == 0, "%s: %d top-k entries from our activations differ from TL's (beyond near-ties)", name, bad_ours);
    // The top table: fields and labels (token ids: no tokenizer here), window 1.
    const int32_t *toks[8];
    int64_t Tp[8];
    for (int64_t j = 0; j < P; j++) { toks[j] = seq[j]; Tp[j] = len[j]; }
    if (ps_neuron_top_table_init(&tt, "nrn.top", mc, layer, index, n, K, &e) != 0 || ps_neuron_top_fill(&tt, NULL, toks, Tp, P, want, n, T_max, layer, index, 1, &e) != 0) {
        TU_CHECK(0, "%s: top table: %s", name, e.msg);
        goto done;
    }
    const float *r0 = tt.values;   // neuron 0, rank 0
    const int64_t q = top[0], p = top[1];
    char lab[128];
    if (p > 0) snprintf(lab, sizeof lab, "<%d>[[<%d>]]", seq[q][p - 1], seq[q][p]);
    else snprintf(lab, sizeof lab, "[[<%d>]]", seq[q][p]);
    if (p + 1 < len[q]) snprintf(lab + strlen(lab), sizeof lab - strlen(lab), "<%d>", seq[q][p + 1]);
    TU_CHECK(r0[0] == (float)layer[0] && r0[1] == (float)index[0] && r0[2] == 0 && r0[3] == want_act[0] && r0[4] == (float)q &&
             r0[5] == (float)p && r0[6] == (float)seq[q][p], "%s: the top table's first entry holds the wrong fields", name);
    TU_CHECK(tt.axes[0].label && tt.axes[0].label[0] && !strcmp(tt.axes[0].label[0], lab), "%s: top label \"%s\", want \"%s\"", name,
             tt.axes[0].label && tt.axes[0].label[0] ? tt.axes[0].label[0] : "(none)", lab);
    // A neuron outside the model is refused.
    ps_table bt = {0};
    int64_t bl[1] = {0}, bi[1] = {mc->d_mlp};
    e = (ps_error){0};
    TU_CHECK(ps_neurons_table_init(&bt, "nrn", mc, 1, bl, bi, 1, 4, &e) != 0 && e.code == PS_EXIT_BADINPUT, "%s: neuron %lld of a %lld-neuron MLP accepted", name, (long long)bi[0], (long long)mc->d_mlp);
    ps_table_free(&bt);
    printf("%s neurons: %lld neurons x %lld prompts vs TL, top-%lld order exact on TL's activations\n", name, (long long)n, (long long)P, (long long)K);
done:
    ps_table_free(&t);
    ps_table_free(&tt);
    for (int64_t j = 0; j < 8; j++) free(seq[j]);
    free(nrn); free(top); free(want); free(want_act); free(got);
}

// DLA of an ablated run (the IOI backup name movers): each golden prompt run through the ablation library's rows
// with head (L-1, 0) zeroed at the last position and head (0, H-1) at every position, then decomposed; against
// TransformerLens's logit_attrs on the cache of the same run with hooks on hook_z, and the exact parts' sum against
// that run's logit difference.
static void test_dla_ablated(const char *name, const ps_model *m, const ps_safetensors *g) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads, K = ps_dla_n_components(mc, 0);
    const int pos = mc->arch == PS_ARCH_GPT2, k_heads = 1 + pos + 2 * (int)L;
    ps_backend be;
    ps_error e = {0};
    if (ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, 1, m, &e) != 0) { TU_CHECK(0, "%s: backend: %s", name, e.msg); return; }
    ps_component comps[2];
    char c0[32], c1[32];
    snprintf(c0, sizeof c0, "h%lld.0", (long long)(L - 1));
    snprintf(c1, sizeof c1, "h0.%lld", (long long)(H - 1));
    const int64_t last[1] = {-1};
    TU_CHECK(ps_component_parse(c0, &comps[0]) == 0 && ps_component_parse(c1, &comps[1]) == 0, "%s: components", name);
    comps[0].pos = last;
    comps[0].n_pos = 1;
    const ps_abl_set set = {.c = comps, .n = 2};
    float worst = 0;
    int tested = 0;
    for (int p = 0;; p++) {
        char key[64], nm[160];
        int64_t T = 0, n3 = 0, nr = 0, nh = 0, nv = 0;
        snprintf(key, sizeof key, "p%d.tokens", p);
        int32_t *tok = gu_i32(g, key, &T);
        if (!tok) break;
        snprintf(key, sizeof key, "p%d.meta", p);
        int32_t *meta = gu_i32(g, key, &n3);
        snprintf(key, sizeof key, "abl.p%d.dla_resid", p);
        float *wr = gu_f32(g, key, &nr);
        snprintf(key, sizeof key, "abl.p%d.dla_heads", p);
        float *wh = gu_f32(g, key, &nh);
        snprintf(key, sizeof key, "abl.p%d.logits", p);
        float *lg = gu_f32(g, key, &nv);
        float *out = malloc((size_t)(2 * K) * sizeof *out);
        if (!meta || !wr || !wh || !lg || nr != k_heads || nh != L * H || !out) {
            TU_CHECK(0, "%s p%d: ablated dla goldens missing or misshapen", name, p);
        } else {
            ps_prompt pr = {.clean = tok, .corrupted = tok, .T = T, .T_prompt = T, .score_pos = meta[0], .answer_id = meta[1], .wrong_id = meta[2]};
            ps_prompt_set ps = {.p = &pr, .n = 1, .T_max = T, .bos = -1};
            ps_ablator a = {.m = m, .be = &be, .ps = &ps, .metric = PS_METRIC_LOGIT_DIFF, .method = PS_ABL_ZERO};
            if (ps_ablator_init(&a, "test", &e) != 0 || ps_dla_ablated(&a, &set, 0, 0, out, &e) != 0) {
                TU_CHECK(0, "%s p%d: ablated dla: %s", name, p, e.msg);
            } else {
                snprintf(nm, sizeof nm, "%s p%d ablated-run dla tl embed/attn_out/mlp_out vs TL with hooks", name, p);
                tu_close(nm, out, wr, nr, 1e-4f, 1e-4f);
                snprintf(nm, sizeof nm, "%s p%d ablated-run dla tl heads vs TL with hooks", name, p);
                tu_close(nm, out + k_heads, wh, nh, 1e-4f, 1e-4f);
                for (int64_t i = 0; i < nh; i++) worst = fmaxf(worst, fabsf(out[k_heads + i] - wh[i]));
                // Head (0, H-1) is zero everywhere, (L-1, 0) where the metric is read at the last position.
                TU_CHECK(out[k_heads + H - 1] == 0 && (meta[0] != T - 1 || out[k_heads + (L - 1) * H] == 0), "%s p%d: an ablated head has a nonzero attribution", name, p);
                const int64_t k_fb = k_heads + L * H + (mc->arch != PS_ARCH_LLAMA) * L;
                float got = sum_range(out + K, 0, k_heads) + out[K + k_fb], want = lg[meta[1]] - lg[meta[2]];
                snprintf(nm, sizeof nm, "%s p%d ablated-run dla exact sum vs TL's ablated logit diff", name, p);
                tu_close(nm, &got, &want, 1, 1e-4f, 1e-4f);
                tested++;
            }
            ps_ablator_free(&a);
        }
        free(out); free(tok); free(meta); free(wr); free(wh); free(lg);
    }
    TU_CHECK(tested == 3, "%s: %d ablated-run prompts tested, want 3", name, tested);
    printf("%s dla of the ablated run: %d prompts, heads max_abs_err=%.3g vs TL with hooks\n", name, tested, worst);
    ps_backend_free(&be);
}

static void test_model(const char *name) {
    char dir[512], gpath[600];
    snprintf(dir, sizeof dir, "%s/%s", tu_src("tests/data"), name);
    snprintf(gpath, sizeof gpath, "%s/golden_analysis.safetensors", dir);
    ps_error e = {0};
    ps_model m, ms;
    ps_safetensors g;
    if (ps_model_load(&m, dir, &e) != 0) { TU_CHECK(0, "%s: load: %s", name, e.msg); return; }
    if (ps_model_load_mode(&ms, dir, PS_WEIGHTS_STREAMED, &e) != 0) { TU_CHECK(0, "%s: streamed load: %s", name, e.msg); ps_model_free(&m); return; }
    if (ps_safetensors_open(&g, gpath, &e) != 0) { TU_CHECK(0, "%s: goldens: %s", name, e.msg); ps_model_free(&m); ps_model_free(&ms); return; }
    for (int p = 0;; p++) {
        char key[64];
        int64_t T = 0, nm = 0;
        snprintf(key, sizeof key, "p%d.tokens", p);
        int32_t *tok = gu_i32(&g, key, &T);
        if (!tok) { TU_CHECK(p > 0, "%s: no prompts in the analysis goldens", name); break; }
        snprintf(key, sizeof key, "p%d.meta", p);
        int32_t *meta = gu_i32(&g, key, &nm);
        ps_cache c = {0};
        if (!meta || nm != 3 || ps_cache_init(&c, &m.cfg, T, PS_CACHE_ALL, &e) != 0) {
            TU_CHECK(0, "%s p%d: meta or cache: %s", name, p, e.msg);
        } else {
            ps_row row = {.tokens = tok, .T = T, .cache = &c};
            if (ps_cpu_forward(&m, &row, 1, &e) != 0) {
                TU_CHECK(0, "%s: forward: %s", name, e.msg);
            } else {
                test_dla(name, &m, &c, &g, p, meta);
                test_lens(name, &m, &c, &g, p, meta);
                if (p == 0) test_attention(name, &m, &c);
                // Streamed weights give the resident model's attributions exactly.
                int64_t K = ps_dla_n_components(&m.cfg, 1);
                float *a = malloc((size_t)(4 * K) * sizeof *a);
                if (ps_dla_prompt(&m, &c, meta[0], meta[1], meta[2], 1, a, &e) != 0 ||
                    ps_dla_prompt(&ms, &c, meta[0], meta[1], meta[2], 1, a + 2 * K, &e) != 0) {
                    TU_CHECK(0, "%s: dla: %s", name, e.msg);
                } else if (memcmp(a, a + 2 * K, (size_t)(2 * K) * sizeof *a) != 0) {
                    TU_CHECK(0, "%s p%d: streamed dla differs from resident", name, p);
                }
                free(a);
            }
        }
        ps_cache_free(&c);
        free(meta);
        free(tok);
    }
    test_ov(name, &m, &g);
    test_ov_prompts(name, &m, &g);
    test_head_scores(name, &m, &g);
    test_neurons(name, &m, &g);
    test_dla_ablated(name, &m, &g);
    // Bad input is refused with the reason.
    ps_cache c = {0};
    int32_t tok[3] = {1, 2, 3};
    ps_cache_init(&c, &m.cfg, 3, PS_CACHE_ALL, &e);
    ps_row row = {.tokens = tok, .T = 3, .cache = &c};
    ps_cpu_forward(&m, &row, 1, &e);
    float buf[4096];
    e = (ps_error){0};
    TU_CHECK(ps_dla_prompt(&m, &c, 3, 1, 2, 0, buf, &e) != 0 && e.code == PS_EXIT_BADINPUT, "%s: dla at a position past the prompt was accepted", name);
    e = (ps_error){0};
    TU_CHECK(ps_lens_prompt(&m, &c, 0, (int32_t)m.cfg.d_vocab, 2, 1, buf, &e) != 0 && e.code == PS_EXIT_BADINPUT, "%s: lens with an answer outside the vocabulary was accepted", name);
    ps_cache_free(&c);
    ps_safetensors_free(&g);
    ps_model_free(&ms);
    ps_model_free(&m);
}

int main(void) {
    int tested = gu_for_each_model(test_model);
    printf("%d models' analyses compared with TransformerLens\n", tested);
    return tu_done("analysis");
}
