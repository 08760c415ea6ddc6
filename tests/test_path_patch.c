// Path patching (ps_path_patch.h) against ARENA's algorithm on TransformerLens (tests/data/<model>/golden_path.json,
// tests/golden/make_path_goldens.py: head -> final resid_post, head -> heads' q/k/v, MLP senders and receivers,
// freeze_mlps both ways, a sender position, both directions) and against a naive implementation written from
// ARENA's text: per prompt and sender, pass 1 a full forward with every head of every layer frozen but the
// sender, pass 2 a full forward replacing the receivers from pass 1's whole cache (no captures, no views, no
// skipped layers). Also the batched rows through the naive engine, ARENA's normalized metric and the table.
#include "golden_util.h"
#include "ps_json.h"
#include "ps_path_patch.h"
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TOL 1e-4f

static void *xcalloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size);
    if (!p) { fprintf(stderr, "test_path_patch: out of memory\n"); exit(1); }
    return p;
}

static double num(const cJSON *o, const char *k) { return cJSON_GetObjectItem(o, k)->valuedouble; }

static int full_run(const ps_model *m, ps_backend *be, const int32_t *tok, int64_t T, const ps_patch *pt, int64_t np, ps_cache *c,
                    float *logits_last) {
    ps_error e = {0};
    if (ps_cache_init(c, &m->cfg, T, 0, &e) != 0) { TU_CHECK(0, "%s", e.msg); return -1; }
    int64_t out = T - 1;
    float scratch[1];
    ps_row r = {.tokens = tok, .T = T, .cache = c, .patches = pt, .n_patches = np, .out_pos = &out, .n_out = logits_last ? 1 : 0,
                .logits = logits_last ? logits_last : scratch};
    ps_rows_opts o = {.naive = 1};
    if (ps_engine_rows(m, be, &r, 1, &o, NULL, &e) != 0) { TU_CHECK(0, "full run: %s", e.msg); ps_cache_free(c); return -1; }
    return 0;
}

// ARENA, literally: returns the logit difference of one prompt with sender s path-patched.
static double naive_one(const ps_model *m, ps_backend *be, const ps_path_spec *sp, const ps_prompt *p, const ps_cache *orig,
                        const ps_cache *new_, const ps_node *s) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, H = mc->n_heads, V = mc->d_vocab, T = p->T;
    const int32_t *tok = sp->direction == PS_DIR_NOISE ? p->clean : p->corrupted;
    ps_patch pt[80];
    int64_t np = 0;
    for (int64_t l = 0; l < L; l++) {
        // patch_or_freeze_head_vectors: every head at orig, then the sender's (positions) from new.
        pt[np++] = (ps_patch){.site = PS_SITE_Z, .layer = l, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_FREEZE, .src = orig};
        if (s->head >= 0 && s->layer == l)
            pt[np++] = (ps_patch){.site = PS_SITE_Z, .layer = l, .head = s->head, .pos = sp->positions ? sp->positions[0] : -1,
                                  .neuron = -1, .op = PS_OP_REPLACE, .src = new_};
        if (sp->freeze_mlps)
            pt[np++] = (ps_patch){.site = PS_SITE_MLP_OUT, .layer = l, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_FREEZE, .src = orig};
        if (s->head < 0 && s->layer == l)
            pt[np++] = (ps_patch){.site = PS_SITE_MLP_OUT, .layer = l, .head = -1, .pos = -1, .neuron = -1, .op = PS_OP_REPLACE, .src = new_};
    }
    (void)H;
    float *lg = xcalloc((size_t)V, sizeof(float));
    ps_cache c1;
    double ld = NAN;
    if (full_run(m, be, tok, T, pt, np, &c1, lg) != 0) { free(lg); return NAN; }
    if (sp->input != PS_RECV_RESID_POST) {
        const ps_site site = sp->input == PS_RECV_Q ? PS_SITE_Q : sp->input == PS_RECV_K ? PS_SITE_K
                           : sp->input == PS_RECV_V ? PS_SITE_V : PS_SITE_MLP_POST;
        ps_patch p2[64];
        for (int64_t k = 0; k < sp->n_receivers; k++)
            p2[k] = (ps_patch){.site = site, .layer = sp->receivers[k].layer, .head = sp->receivers[k].head, .pos = -1, .neuron = -1,
                               .op = PS_OP_REPLACE, .src = &c1};
        ps_cache c2;
        if (full_run(m, be, tok, T, p2, sp->n_receivers, &c2, lg) == 0) ps_cache_free(&c2);
    }
    ld = (double)lg[p->answer_id] - (double)lg[p->wrong_id];
    ps_cache_free(&c1);
    free(lg);
    return ld;
}

static int32_t *row_i32(const cJSON *arr, int64_t *n) {
    *n = cJSON_GetArraySize(arr);
    int32_t *v = xcalloc((size_t)*n, sizeof(int32_t));
    for (int64_t i = 0; i < *n; i++) v[i] = (int32_t)cJSON_GetArrayItem(arr, (int)i)->valuedouble;
    return v;
}

// The producer (kind "path_patch") through ps_engine_run, in chunks of 2 prompts: every golden case whose
// senders are the default grid for its receivers (every head below the last receiver layer, ARENA's; all
// heads for resid_post) and that uses every position, configured as an experiment would be.
static void through_engine(const char *model, const ps_model *m, ps_backend *be, ps_prompt *pr, int64_t N, const cJSON *cases) {
    const int nc = cJSON_GetArraySize(cases);
    ps_prompt_set ps = {.p = pr, .n = N, .T_max = pr[0].T};
    ps_experiment *ex = xcalloc((size_t)nc, sizeof *ex);
    int *which = xcalloc((size_t)nc, sizeof(int));
    char (*names)[32] = xcalloc((size_t)nc, 32);
    ps_node (*recv)[16] = xcalloc((size_t)nc, sizeof *recv);
    int nx = 0;
    for (int ci = 0; ci < nc; ci++) {
        const cJSON *c = cJSON_GetArrayItem(cases, ci), *rcv = cJSON_GetObjectItem(c, "receivers"), *snd = cJSON_GetObjectItem(c, "senders");
        const char *input = cJSON_GetObjectItem(c, "input")->valuestring;
        if (num(c, "sender_pos") >= 0 || !strcmp(input, "mlp")) continue;
        const cJSON *s0 = cJSON_GetArrayItem(snd, 0);
        if (strcmp(cJSON_GetArrayItem(s0, 0)->valuestring, "head") != 0) continue;
        ps_experiment *x = &ex[nx];
        snprintf(names[nx], 32, "pp%d", ci);
        x->name = names[nx];
        x->kind = "path_patch";
        x->freeze_mlps = cJSON_IsTrue(cJSON_GetObjectItem(c, "freeze_mlps"));
        x->direction = strcmp(cJSON_GetObjectItem(c, "direction")->valuestring, "noise") ? PS_DIR_DENOISE : PS_DIR_NOISE;
        x->senders = PS_SENDERS_HEADS;
        for (int k = 0; k < PS_RECV_COUNT; k++)
            if (!strcmp(input, ps_recv_input_name((ps_recv_input)k))) x->input = (ps_recv_input)k;
        for (int k = 0; cJSON_IsArray(rcv) && k < cJSON_GetArraySize(rcv) && k < 16; k++) {
            const cJSON *r = cJSON_GetArrayItem(rcv, k);
            recv[nx][k] = (ps_node){(int64_t)cJSON_GetArrayItem(r, 0)->valuedouble, (int64_t)cJSON_GetArrayItem(r, 1)->valuedouble};
            x->n_receivers = k + 1;
        }
        x->receivers = recv[nx];
        // Only cases whose senders are exactly that grid (the mixed head+MLP one is not).
        const int64_t H = m->cfg.n_heads;
        int64_t last = x->input == PS_RECV_RESID_POST ? m->cfg.n_layers : 0;
        for (int64_t k = 0; k < x->n_receivers; k++) last = recv[nx][k].layer > last ? recv[nx][k].layer : last;
        if (cJSON_GetArraySize(snd) != last * H) continue;
        which[nx++] = ci;
    }
    ps_engine_opts o = {.chunk_prompts = 2};
    ps_run_results rr;
    ps_error e = {0};
    if (ps_engine_run(m, be, &ps, ex, nx, PS_METRIC_LOGIT_DIFF, &o, &rr, &e) != 0) {
        TU_CHECK(0, "%s engine: %s", model, e.msg);
    } else {
        int64_t n = 0, cells = 0;
        float *got = xcalloc((size_t)(N * 64 * nx), sizeof(float)), *want = xcalloc((size_t)(N * 64 * nx), sizeof(float));
        for (int k = 0; k < nx; k++) {
            const ps_table *t = &rr.tables[k];
            const cJSON *ld = cJSON_GetObjectItem(cJSON_GetArrayItem(cases, which[k]), "logit_diff");
            TU_CHECK(t->n_axes == 2 && !strcmp(t->axes[0].name, "layer") && !strcmp(t->kind, "path_patch"), "%s %s: a (layer, head) grid", model, t->name);
            TU_CHECK(t->n_cells * N == cJSON_GetArraySize(ld), "%s %s: %lld cells, golden %d", model, t->name, (long long)t->n_cells,
                     cJSON_GetArraySize(ld) / (int)N);
            for (int64_t i = 0; t->n_cells * N == cJSON_GetArraySize(ld) && i < N * t->n_cells && n < N * 64 * nx; i++, n++) {
                got[n] = t->values[i];
                want[n] = (float)cJSON_GetArrayItem(ld, (int)i)->valuedouble;
            }
            cells += t->n_cells;
        }
        char nm[160];
        snprintf(nm, sizeof nm, "%s engine, %d path_patch experiments vs TL", model, nx);
        tu_close(nm, got, want, n, TOL, TOL);
        TU_CHECK(nx >= 5 && n == N * cells, "%s: %d experiments, %lld values", model, nx, (long long)n);
        free(got); free(want);
        ps_run_results_free(&rr);
    }
    free(ex); free(which); free(names); free(recv);
}

static void one_model(const char *model) {
    cJSON *doc;
    ps_model m;
    ps_backend be;
    if (gu_load_json_case(model, "golden_path.json", &doc, &m, &be) != 0) return;
    ps_error e = {0};
    const ps_model_config *mc = &m.cfg;
    const int64_t N = (int64_t)num(doc, "N"), V = mc->d_vocab;
    ps_prompt *pr = xcalloc((size_t)N, sizeof *pr);
    ps_cache *cc = xcalloc((size_t)N, sizeof *cc), *xc = xcalloc((size_t)N, sizeof *xc);
    ps_path_item *items = xcalloc((size_t)N, sizeof *items);
    float *bl_clean = xcalloc((size_t)N, sizeof(float)), *bl_corr = xcalloc((size_t)N, sizeof(float));
    float *lg = xcalloc((size_t)V, sizeof(float));
    for (int64_t i = 0; i < N; i++) {
        int64_t T, T2;
        pr[i].clean = row_i32(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "clean"), (int)i), &T);
        pr[i].corrupted = row_i32(cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "corrupted"), (int)i), &T2);
        pr[i].T = pr[i].T_prompt = T;
        pr[i].score_pos = T - 1;
        pr[i].answer_id = (int32_t)cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "answer"), (int)i)->valuedouble;
        pr[i].wrong_id = (int32_t)cJSON_GetArrayItem(cJSON_GetObjectItem(doc, "wrong"), (int)i)->valuedouble;
        full_run(&m, &be, pr[i].clean, T, NULL, 0, &cc[i], lg);
        bl_clean[i] = lg[pr[i].answer_id] - lg[pr[i].wrong_id];
        full_run(&m, &be, pr[i].corrupted, T, NULL, 0, &xc[i], lg);
        bl_corr[i] = lg[pr[i].answer_id] - lg[pr[i].wrong_id];
        items[i] = (ps_path_item){.p = &pr[i], .clean = &cc[i], .corrupted = &xc[i]};
    }
    // Baselines against TL's: the prompts are the golden's.
    {
        const cJSON *gc = cJSON_GetObjectItem(doc, "clean_logits_last"), *gx = cJSON_GetObjectItem(doc, "corrupted_logits_last");
        float want[2][16];
        for (int64_t i = 0; i < N && i < 16; i++) {
            want[0][i] = (float)(cJSON_GetArrayItem(gc, (int)(i * V + pr[i].answer_id))->valuedouble - cJSON_GetArrayItem(gc, (int)(i * V + pr[i].wrong_id))->valuedouble);
            want[1][i] = (float)(cJSON_GetArrayItem(gx, (int)(i * V + pr[i].answer_id))->valuedouble - cJSON_GetArrayItem(gx, (int)(i * V + pr[i].wrong_id))->valuedouble);
        }
        char nm[128];
        snprintf(nm, sizeof nm, "%s baselines vs TL", model);
        tu_close(nm, bl_clean, want[0], N, TOL, TOL);
        tu_close(nm, bl_corr, want[1], N, TOL, TOL);
    }
    const cJSON *cases = cJSON_GetObjectItem(doc, "cases");
    const int nc = cJSON_GetArraySize(cases);
    for (int ci = 0; ci < nc; ci++) {
        const cJSON *c = cJSON_GetArrayItem(cases, ci);
        const char *input = cJSON_GetObjectItem(c, "input")->valuestring;
        ps_path_spec sp = {.freeze_mlps = cJSON_IsTrue(cJSON_GetObjectItem(c, "freeze_mlps")),
                           .direction = strcmp(cJSON_GetObjectItem(c, "direction")->valuestring, "noise") ? PS_DIR_DENOISE : PS_DIR_NOISE};
        for (int k = 0; k < PS_RECV_COUNT; k++)
            if (!strcmp(input, ps_recv_input_name((ps_recv_input)k))) sp.input = (ps_recv_input)k;
        const cJSON *snd = cJSON_GetObjectItem(c, "senders"), *rcv = cJSON_GetObjectItem(c, "receivers");
        const int64_t S = cJSON_GetArraySize(snd);
        ps_node *senders = xcalloc((size_t)S, sizeof *senders), receivers[64];
        for (int64_t s = 0; s < S; s++) {
            const cJSON *x = cJSON_GetArrayItem(snd, (int)s);
            senders[s] = (ps_node){(int64_t)cJSON_GetArrayItem(x, 1)->valuedouble, (int64_t)cJSON_GetArrayItem(x, 2)->valuedouble};
        }
        if (cJSON_IsArray(rcv))
            for (int k = 0; k < cJSON_GetArraySize(rcv); k++) {
                const cJSON *x = cJSON_GetArrayItem(rcv, k);
                receivers[sp.n_receivers++] = cJSON_IsArray(x) ? (ps_node){(int64_t)cJSON_GetArrayItem(x, 0)->valuedouble,
                                                                           (int64_t)cJSON_GetArrayItem(x, 1)->valuedouble}
                                                               : (ps_node){(int64_t)x->valuedouble, -1};
            }
        int64_t spos = (int64_t)num(c, "sender_pos");
        sp.senders = senders;
        sp.n_senders = S;
        sp.receivers = receivers;
        if (spos >= 0) { sp.positions = &spos; sp.n_positions = 1; }
        float *want = xcalloc((size_t)(N * S), sizeof(float)), *got = xcalloc((size_t)(N * S), sizeof(float)),
              *got_naive_rows = xcalloc((size_t)(N * S), sizeof(float)), *naive = xcalloc((size_t)(N * S), sizeof(float));
        const cJSON *ld = cJSON_GetObjectItem(c, "logit_diff");
        for (int64_t i = 0; i < N * S; i++) want[i] = (float)cJSON_GetArrayItem(ld, (int)i)->valuedouble;
        ps_rows_opts planned = {0}, nv = {.naive = 1};
        ps_rows_stats st = {0};
        // A small budget in the planned run: blocks of a few senders, as a big model's grid would be.
        if (ps_path_patch_chunk(&m, &be, &sp, items, N, PS_METRIC_LOGIT_DIFF, &planned, 40000, got, &st, &e) != 0 ||
            ps_path_patch_chunk(&m, &be, &sp, items, N, PS_METRIC_LOGIT_DIFF, &nv, 0, got_naive_rows, NULL, &e) != 0) {
            TU_CHECK(0, "%s case %d: %s", model, ci, e.msg);
        } else {
            for (int64_t i = 0; i < N; i++)
                for (int64_t s = 0; s < S; s++) {
                    const int noise = sp.direction == PS_DIR_NOISE;
                    naive[i * S + s] = (float)naive_one(&m, &be, &sp, &pr[i], noise ? &cc[i] : &xc[i], noise ? &xc[i] : &cc[i], &senders[s]);
                }
            char nm[200], what[120];
            snprintf(what, sizeof what, "%s %s%s%s %s%s", model, input, cJSON_IsArray(rcv) ? "" : "", sp.freeze_mlps ? " freeze_mlps" : "",
                     ps_direction_name(sp.direction), spos >= 0 ? " sender_pos" : "");
            snprintf(nm, sizeof nm, "%-44s vs TL (ARENA)", what);
            tu_close(nm, got, want, N * S, TOL, TOL);
            snprintf(nm, sizeof nm, "%-44s vs naive ARENA", what);
            tu_close(nm, got, naive, N * S, TOL, TOL);
            snprintf(nm, sizeof nm, "%-44s rows naive", what);
            tu_close(nm, got_naive_rows, naive, N * S, TOL, TOL);
            printf("  %lld rows: %lld known unchanged, %lld narrowed\n", (long long)st.rows_run, (long long)st.rows_unchanged,
                   (long long)st.rows_narrowed);
            // ARENA's normalized metric: (x - orig) / (orig - new) from TL's own logit differences.
            float *an = xcalloc((size_t)(N * S), sizeof(float)), *aw = xcalloc((size_t)(N * S), sizeof(float));
            ps_path_arena_normalized(got, bl_clean, bl_corr, N, S, sp.direction, an);
            for (int64_t i = 0; i < N; i++) {
                const double o = sp.direction == PS_DIR_NOISE ? bl_clean[i] : bl_corr[i], nw = sp.direction == PS_DIR_NOISE ? bl_corr[i] : bl_clean[i];
                for (int64_t s = 0; s < S; s++) aw[i * S + s] = (float)((want[i * S + s] - o) / (o - nw));
            }
            snprintf(nm, sizeof nm, "%-44s ARENA normalized", what);
            tu_close(nm, an, aw, N * S, 1e-3f, 1e-3f);
            free(an); free(aw);
        }
        free(want); free(got); free(got_naive_rows); free(naive); free(senders);
    }
    through_engine(model, &m, &be, pr, N, cases);
    for (int64_t i = 0; i < N; i++) {
        free(pr[i].clean); free(pr[i].corrupted);
        ps_cache_free(&cc[i]); ps_cache_free(&xc[i]);
    }
    free(pr); free(cc); free(xc); free(items); free(bl_clean); free(bl_corr); free(lg);
    ps_backend_free(&be);
    ps_model_free(&m);
    cJSON_Delete(doc);
}

// The table's layout: a head grid as (layer, head); anything else as one labelled sender axis.
static void table_layout(void) {
    ps_model_config mc = {0};
    mc.n_layers = 3; mc.n_heads = 2; mc.n_kv_heads = 2; mc.d_vocab = 10;
    ps_node grid[4] = {{0, 0}, {0, 1}, {1, 0}, {1, 1}}, mixed[3] = {{0, 1}, {1, -1}, {2, 0}}, recv[2] = {{2, 0}, {2, 1}};
    ps_path_spec sp = {.senders = grid, .n_senders = 4, .input = PS_RECV_Q, .receivers = recv, .n_receivers = 2, .direction = PS_DIR_NOISE};
    ps_table t;
    ps_error e = {0};
    TU_CHECK(ps_path_table_init(&t, "pp", &mc, &sp, 5, &e) == 0, "%s", e.msg);
    TU_CHECK(t.n_axes == 2 && !strcmp(t.axes[0].name, "layer") && t.axes[0].len == 2 && !strcmp(t.axes[1].name, "head") && t.n_cells == 4,
             "a head grid is laid out (layer, head)");
    const ps_attr *a = ps_table_attr(&t, "receivers");
    TU_CHECK(a && !strcmp(a->s, "a2.h0.q a2.h1.q"), "receivers attribute: %s", a ? a->s : "(none)");
    TU_CHECK(!strcmp(t.kind, "path_patch") && t.metric_valued && t.n_rows == 5, "kind path_patch, per prompt, metric-valued");
    ps_table_free(&t);
    sp.senders = mixed;
    sp.n_senders = 3;
    TU_CHECK(ps_path_table_init(&t, "pp", &mc, &sp, 5, &e) == 0, "%s", e.msg);
    TU_CHECK(t.n_axes == 1 && !strcmp(t.axes[0].name, "sender") && t.axes[0].label && !strcmp(t.axes[0].label[1], "m1") &&
                 !strcmp(t.axes[0].label[2], "a2.h0"),
             "mixed senders are one labelled axis");
    ps_table_free(&t);
    // Bad input names the field.
    ps_node bad = {1, 2};
    sp.receivers = &bad;
    sp.n_receivers = 1;
    sp.input = PS_RECV_K;
    TU_CHECK(ps_path_check(&mc, &sp, "pp", &e) != 0 && strstr(e.msg, "receivers[0]") && e.code == PS_EXIT_BADINPUT, "bad receiver: %s", e.msg);
    printf("table layout and checks: ok\n");
}

int main(void) {
    table_layout();
    const char *models[] = {"gpt2-tiny-a", "gpt2-tiny-b", "llama-tiny-b"};
    for (int i = 0; i < 3; i++) one_model(models[i]);
    return tu_done("path_patch");
}
