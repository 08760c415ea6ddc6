// The engine: what to run, what to skip, what to patch. Tokenizes the dataset, runs the clean and corrupted
// baselines with caches, turns every patch of every sweep into a row that starts from the base run's cached
// state, and batches the rows through the backend.
#include "ps_engine.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// ---------------------------------------------------------------------------------------------
// Prompts

static void append_tokens(char *buf, size_t cap, const ps_tokenizer *tok, const int32_t *ids, int64_t n) {
    size_t len = strlen(buf);
    for (int64_t i = 0; i < n && len + 32 < cap; i++) {
        char *s = ps_tokenizer_token_text(tok, ids[i]);
        len += (size_t)snprintf(buf + len, cap - len, "%s%d'%s'", i ? " " : "", ids[i], s ? s : "?");
        free(s);
    }
}

// An answer's tokens as the model sees them after the prompt: encode(prompt + answer) minus encode(prompt).
// Encoding the answer alone differs for SentencePiece (Llama's " Lily" alone is [▁, ▁Lily], after a prompt
// it is [▁Lily]); when the prompt's own tokens change at the seam the item is refused, showing both.
static int answer_in_context(const ps_tokenizer *tok, const char *prompt, const char *answer, int32_t **out, int64_t *n_out,
                             ps_error *e) {
    int32_t *p = NULL, *pa = NULL;
    int64_t np = 0, npa = 0;
    size_t lp = strlen(prompt), la = strlen(answer);
    char *joined = malloc(lp + la + 1);
    memcpy(joined, prompt, lp);
    memcpy(joined + lp, answer, la + 1);
    int rc = ps_tokenizer_encode(tok, prompt, &p, &np, e);
    if (rc == 0) rc = ps_tokenizer_encode(tok, joined, &pa, &npa, e);
    free(joined);
    if (rc == 0) {
        int64_t k = 0;
        while (k < np && k < npa && p[k] == pa[k]) k++;
        if (k < np) {
            char buf[PS_ERR_MAX / 2] = "prompt ends [";
            append_tokens(buf, sizeof buf / 2, tok, p + (np > 3 ? np - 3 : 0), np > 3 ? 3 : np);
            strncat(buf, "] but prompt+answer has [", sizeof buf - strlen(buf) - 1);
            int64_t from = np > 3 ? np - 3 : 0;
            append_tokens(buf, sizeof buf - 64, tok, pa + from, npa - from);
            strncat(buf, "]", sizeof buf - strlen(buf) - 1);
            rc = ps_fail(e, PS_EXIT_BADINPUT, "\"%s\" merges with the end of the prompt: %s", answer, buf);
        } else {
            *n_out = npa - np;
            *out = malloc((size_t)(*n_out ? *n_out : 1) * sizeof(int32_t));
            memcpy(*out, pa + np, (size_t)*n_out * sizeof(int32_t));
        }
    }
    free(p);
    free(pa);
    return rc;
}

int ps_prompts_build(ps_prompt_set *ps, const ps_config *cfg, const ps_tokenizer *tok, const ps_model_config *mc, ps_error *e) {
    memset(ps, 0, sizeof *ps);
    if (cfg->n_items <= 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset: empty dataset", cfg->path);
    // Summing the answer tokens' log-probabilities is the logprob metric; the difference metrics read the
    // first token where answer and wrong answer differ.
    if (cfg->multitoken == PS_SCORE_SUM_LOGPROB && cfg->metric != PS_METRIC_LOGPROB)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: multi_token: \"sum_logprob\" scores with \"metric\": \"logprob\" (%s compares the first differing token)",
                       cfg->path, ps_metric_name(cfg->metric));
    ps->p = calloc((size_t)cfg->n_items, sizeof *ps->p);
    if (!ps->p) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    ps->n = cfg->n_items;
    int32_t bos = -1;
    if (cfg->prepend_bos) {
        bos = ps_tokenizer_bos_id(tok);
        if (bos < 0) bos = (int32_t)mc->bos_id;
        if (bos < 0) {
            ps_prompt_set_free(ps);
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: prepend_bos: the tokenizer has no BOS token; set \"prepend_bos\": false",
                           cfg->path);
        }
    }
    for (int64_t i = 0; i < cfg->n_items; i++) {
        const ps_item *it = &cfg->items[i];
        int32_t *ids[4] = {0};
        int64_t n[4] = {0};
        const char *texts[4] = {it->clean, it->corrupted, it->answer, it->wrong};
        const char *names[4] = {"clean", "corrupted", "answer", "wrong"};
        int rc = 0;
        for (int k = 0; k < 4 && rc == 0; k++) {
            ps_error te = {0};
            if (k >= 2 && answer_in_context(tok, it->clean, texts[k], &ids[k], &n[k], &te) != 0) {
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %s: %s", cfg->path, (long long)i, names[k], te.msg);
            } else if (k < 2 && ps_tokenizer_encode(tok, texts[k], &ids[k], &n[k], &te) != 0) {
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %s: %s", cfg->path, (long long)i, names[k], te.msg);
            } else if (n[k] == 0) {
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %s tokenizes to nothing", cfg->path, (long long)i, names[k]);
            }
            for (int64_t j = 0; rc == 0 && j < n[k]; j++)
                if (ids[k][j] < 0 || ids[k][j] >= mc->d_vocab)
                    rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %s: token id %d is out of range for the model's vocabulary of %lld",
                                 cfg->path, (long long)i, names[k], ids[k][j], (long long)mc->d_vocab);
        }
        if (rc == 0 && n[0] != n[1]) {
            char buf[PS_ERR_MAX];
            snprintf(buf, sizeof buf, "clean: [");
            append_tokens(buf, sizeof buf / 2, tok, ids[0], n[0]);
            strncat(buf, "]; corrupted: [", sizeof buf - strlen(buf) - 1);
            append_tokens(buf, sizeof buf - 64, tok, ids[1], n[1]);
            strncat(buf, "]", sizeof buf - strlen(buf) - 1);
            rc = ps_fail(e, PS_EXIT_BADINPUT,
                         "%s: dataset item %lld: clean and corrupted prompts tokenize to different lengths (%lld vs %lld): %s",
                         cfg->path, (long long)i, (long long)n[0], (long long)n[1], buf);
        }
        // First token where answer and wrong differ: the metric compares them there (teacher forcing before it).
        int64_t d = 0;
        if (rc == 0) {
            while (d < n[2] && d < n[3] && ids[2][d] == ids[3][d]) d++;
            if (d == n[2] || d == n[3])
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: answer \"%s\" and wrong \"%s\" do not differ in any token they both have",
                             cfg->path, (long long)i, it->answer, it->wrong);
        }
        if (rc == 0) {
            ps_prompt *p = &ps->p[i];
            const int64_t off = bos >= 0 ? 1 : 0;
            const int64_t n_ext = cfg->metric == PS_METRIC_LOGPROB ? n[2] - 1 : d;
            p->T_prompt = n[0] + off;
            p->T = p->T_prompt + n_ext;
            if (p->T > mc->n_ctx) {
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %lld tokens exceed the model's context of %lld",
                             cfg->path, (long long)i, (long long)p->T, (long long)mc->n_ctx);
            } else {
                p->clean = malloc((size_t)p->T * sizeof(int32_t));
                p->corrupted = malloc((size_t)p->T * sizeof(int32_t));
                if (off) p->clean[0] = p->corrupted[0] = bos;
                memcpy(p->clean + off, ids[0], (size_t)n[0] * sizeof(int32_t));
                memcpy(p->corrupted + off, ids[1], (size_t)n[1] * sizeof(int32_t));
                for (int64_t j = 0; j < n_ext; j++) p->clean[p->T_prompt + j] = p->corrupted[p->T_prompt + j] = ids[2][j];
                p->score_pos = p->T_prompt - 1 + d;
                p->n_roles = it->n_roles;
                p->role_name = it->role_name;
                p->role_pos = it->role_pos;
                for (int64_t r = 0; rc == 0 && r < it->n_roles; r++)
                    if (it->role_pos[r] >= p->T_prompt)
                        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset[%lld].roles.%s: token index %lld is past the prompt's %lld tokens%s",
                                     cfg->path, (long long)i, it->role_name[r], (long long)it->role_pos[r], (long long)p->T_prompt,
                                     bos >= 0 ? " (BOS included)" : "");
                p->answer_id = ids[2][d];
                p->wrong_id = ids[3][d];
                p->n_lp = n[2] < 64 ? n[2] : 64;
                p->lp_pos = malloc((size_t)p->n_lp * sizeof(int64_t));
                p->lp_tok = malloc((size_t)p->n_lp * sizeof(int32_t));
                for (int64_t j = 0; j < p->n_lp; j++) {
                    p->lp_pos[j] = p->T_prompt - 1 + j;
                    p->lp_tok[j] = ids[2][j];
                }
                if (p->T > ps->T_max) ps->T_max = p->T;
            }
        }
        for (int k = 0; k < 4; k++) free(ids[k]);
        if (rc != 0) {
            ps_prompt_set_free(ps);
            return -1;
        }
    }
    return 0;
}

void ps_prompt_set_free(ps_prompt_set *ps) {
    if (!ps || !ps->p) return;
    for (int64_t i = 0; i < ps->n; i++) {
        free(ps->p[i].clean);
        free(ps->p[i].corrupted);
        free(ps->p[i].lp_pos);
        free(ps->p[i].lp_tok);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

// ---------------------------------------------------------------------------------------------
// Sweep layout

int64_t ps_prompt_role(const ps_prompt *p, const char *name) {
    for (int64_t r = 0; r < p->n_roles; r++)
        if (!strcmp(p->role_name[r], name)) return p->role_pos[r];
    return -1;
}

static int64_t site_heads(const ps_model_config *mc, ps_site s) {
    return (s == PS_SITE_K || s == PS_SITE_V) ? mc->n_kv_heads : mc->n_heads;
}

static int has_pos(ps_layout l) { return l == PS_BY_LAYER_POS || l == PS_BY_LAYER_POS_HEAD; }
static int has_head(ps_layout l) { return l == PS_BY_LAYER_HEAD || l == PS_BY_LAYER_POS_HEAD; }

static int64_t *range_or_list(const int64_t *list, int64_t n_list, int64_t n_all, int64_t *n_out) {
    int64_t n = list ? n_list : n_all;
    int64_t *v = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n; i++) v[i] = list ? list[i] : i;
    *n_out = n;
    return v;
}

static int sweep_init(ps_sweep *sw, const ps_experiment *ex, int64_t idx, const ps_model_config *mc, const ps_prompt_set *ps,
                      ps_error *e) {
    memset(sw, 0, sizeof *sw);
    sw->ex = ex;
    const int64_t L = mc->n_layers, Hs = site_heads(mc, ex->site), M = mc->d_mlp;
    for (int64_t i = 0; ex->layers && i < ex->n_layers; i++)
        if (ex->layers[i] < 0 || ex->layers[i] >= L)
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): layers[%lld] = %lld is outside the model's %lld layers",
                           (long long)idx, ex->name, (long long)i, (long long)ex->layers[i], (long long)L);
    for (int64_t i = 0; ex->heads && i < ex->n_heads; i++)
        if (ex->heads[i] < 0 || ex->heads[i] >= Hs)
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): heads[%lld] = %lld is outside the %lld heads of %s",
                           (long long)idx, ex->name, (long long)i, (long long)ex->heads[i], (long long)Hs, ps_site_name(ex->site));
    for (int64_t i = 0; ex->neurons && i < ex->n_neurons; i++)
        if (ex->neurons[i] < 0 || ex->neurons[i] >= M)
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): neurons[%lld] = %lld is outside the model's %lld neurons",
                           (long long)idx, ex->name, (long long)i, (long long)ex->neurons[i], (long long)M);
    for (int64_t i = 0; ex->positions && i < ex->n_positions; i++) {
        if (ex->position_role && ex->position_role[i]) {
            for (int64_t k = 0; k < ps->n; k++)
                if (ps_prompt_role(&ps->p[k], ex->position_role[i]) < 0)
                    return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): positions[%lld] = \"%s\": dataset item %lld has no such role (give it \"roles\": {\"%s\": TOKEN_INDEX})",
                                   (long long)idx, ex->name, (long long)i, ex->position_role[i], (long long)k, ex->position_role[i]);
            continue;
        }
        if (ex->positions[i] >= ps->T_max || ex->positions[i] < -ps->T_max)
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): positions[%lld] = %lld is outside every prompt (longest: %lld tokens)",
                           (long long)idx, ex->name, (long long)i, (long long)ex->positions[i], (long long)ps->T_max);
    }
    int a = 0;
    sw->axis_name[a] = "layer";
    sw->axis_value[a] = range_or_list(ex->layers, ex->n_layers, L, &sw->axis_len[a]);
    a++;
    if (has_pos(ex->layout)) {
        sw->axis_name[a] = "pos";
        sw->axis_value[a] = range_or_list(ex->positions, ex->n_positions, ps->T_max, &sw->axis_len[a]);
        a++;
    }
    if (has_head(ex->layout)) {
        sw->axis_name[a] = "head";
        sw->axis_value[a] = range_or_list(ex->heads, ex->n_heads, Hs, &sw->axis_len[a]);
        a++;
    }
    if (ex->layout == PS_BY_LAYER_NEURON) {
        sw->axis_name[a] = "neuron";
        sw->axis_value[a] = range_or_list(ex->neurons, ex->n_neurons, M, &sw->axis_len[a]);
        a++;
    }
    sw->n_axes = a;
    sw->n_cells = 1;
    for (int i = 0; i < a; i++) sw->n_cells *= sw->axis_len[i];
    size_t n = (size_t)(ps->n * sw->n_cells);
    sw->values = malloc((n ? n : 1) * sizeof(float));
    sw->normalized = malloc((n ? n : 1) * sizeof(float));
    sw->mean = malloc((size_t)(sw->n_cells ? sw->n_cells : 1) * sizeof(float));
    sw->mean_normalized = malloc((size_t)(sw->n_cells ? sw->n_cells : 1) * sizeof(float));
    if (!sw->values || !sw->normalized || !sw->mean || !sw->mean_normalized)
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for results of %s", ex->name);
    for (size_t i = 0; i < n; i++) sw->values[i] = sw->normalized[i] = NAN;
    return 0;
}

// The patch of one cell of a sweep for one prompt; returns 0 when the cell does not apply to the prompt.
static int cell_patch(const ps_sweep *sw, int64_t cell, const ps_prompt *p, ps_patch *pt) {
    const ps_experiment *ex = sw->ex;
    int64_t idx[3] = {0};
    int64_t rem = cell;
    for (int a = sw->n_axes - 1; a >= 0; a--) {
        idx[a] = rem % sw->axis_len[a];
        rem /= sw->axis_len[a];
    }
    memset(pt, 0, sizeof *pt);
    pt->site = ex->site;
    pt->head = pt->pos = pt->neuron = -1;
    int a = 0;
    pt->layer = sw->axis_value[a][idx[a]];
    a++;
    if (has_pos(ex->layout)) {
        int64_t pos = sw->axis_value[a][idx[a]];
        if (ex->position_role && ex->position_role[idx[a]]) pos = ps_prompt_role(p, ex->position_role[idx[a]]);
        else if (ex->positions && pos < 0) pos += p->T_prompt; // negative positions count from the prompt's end
        if (pos < 0 || pos >= p->T) return 0;
        pt->pos = pos;
        a++;
    }
    if (has_head(ex->layout)) { pt->head = sw->axis_value[a][idx[a]]; a++; }
    if (ex->layout == PS_BY_LAYER_NEURON) { pt->neuron = sw->axis_value[a][idx[a]]; a++; }
    return 1;
}

// The slice a patch replaces at position t, as (pointer, count) pairs into a cache; pattern slices are per head.
static int slice_differs(const ps_model_config *mc, const ps_patch *pt, const ps_cache *a, const ps_cache *b, int64_t t) {
    const int64_t T = a->T, l = pt->layer, C = mc->d_model, H = mc->n_heads, D = mc->d_head, M = mc->d_mlp;
    const int64_t Hs = site_heads(mc, pt->site);
    const float *pa = NULL, *pb = NULL;
    int64_t off = 0, n = 0;
    switch (pt->site) {
    case PS_SITE_RESID_PRE: pa = a->resid_pre; pb = b->resid_pre; off = (l * T + t) * C; n = C; break;
    case PS_SITE_RESID_MID: pa = a->resid_mid; pb = b->resid_mid; off = (l * T + t) * C; n = C; break;
    case PS_SITE_RESID_POST: pa = a->resid_post; pb = b->resid_post; off = (l * T + t) * C; n = C; break;
    case PS_SITE_ATTN_OUT: pa = a->attn_out; pb = b->attn_out; off = (l * T + t) * C; n = C; break;
    case PS_SITE_MLP_OUT: pa = a->mlp_out; pb = b->mlp_out; off = (l * T + t) * C; n = C; break;
    case PS_SITE_Q: pa = a->q; pb = b->q; break;
    case PS_SITE_K: pa = a->k; pb = b->k; break;
    case PS_SITE_V: pa = a->v; pb = b->v; break;
    case PS_SITE_Z: pa = a->z; pb = b->z; break;
    case PS_SITE_MLP_POST:
        pa = a->mlp_post; pb = b->mlp_post;
        off = (l * T + t) * M + (pt->neuron < 0 ? 0 : pt->neuron);
        n = pt->neuron < 0 ? M : 1;
        break;
    case PS_SITE_PATTERN:
        for (int64_t h = 0; h < H; h++) {
            if (pt->head >= 0 && pt->head != h) continue;
            int64_t o = ((l * H + h) * T + t) * T;
            if (memcmp(a->pattern + o, b->pattern + o, (size_t)(t + 1) * sizeof(float))) return 1;
        }
        return 0;
    default: return 1;
    }
    if (pt->site == PS_SITE_Q || pt->site == PS_SITE_K || pt->site == PS_SITE_V || pt->site == PS_SITE_Z) {
        off = (l * T + t) * Hs * D + (pt->head < 0 ? 0 : pt->head * D);
        n = pt->head < 0 ? Hs * D : D;
    }
    return memcmp(pa + off, pb + off, (size_t)n * sizeof(float)) != 0;
}

// Where a patch's changes begin in its layer (ps_entry). From a query's attention on, a patch changes only
// its own positions in that layer; resid_pre changes the input of every later position's attention, and
// k/v the keys and values every later query reads.
static ps_entry site_entry(ps_site s) {
    switch (s) {
    case PS_SITE_Q: case PS_SITE_PATTERN: return PS_ENTER_QUERIES;
    case PS_SITE_Z: return PS_ENTER_WO;
    case PS_SITE_ATTN_OUT: return PS_ENTER_ATTN_OUT;
    case PS_SITE_RESID_MID: return PS_ENTER_RESID_MID;
    case PS_SITE_MLP_POST: return PS_ENTER_MLP_POST;
    case PS_SITE_MLP_OUT: return PS_ENTER_MLP_OUT;
    case PS_SITE_RESID_POST: return PS_ENTER_RESID_POST;
    default: return PS_ENTER_LAYER;
    }
}

// First position at which the patched run can differ from the base run; -1 when it cannot differ at all.
static int64_t first_change(const ps_model_config *mc, const ps_patch *pt, const ps_cache *base, const ps_cache *src) {
    int64_t t0 = pt->pos < 0 ? 0 : pt->pos, t1 = pt->pos < 0 ? base->T : pt->pos + 1;
    for (int64_t t = t0; t < t1; t++)
        if (slice_differs(mc, pt, base, src, t)) return t;
    return -1;
}

// ---------------------------------------------------------------------------------------------
// Batches

typedef struct {
    int64_t sweep, prompt, local, cell;  // local: index of the prompt within the chunk
    ps_metric_request rq;
    size_t logit_off;
} row_tag;

typedef struct {
    ps_row *rows; ps_patch *patches; row_tag *tags;
    int64_t n, cap;
    float *logits; size_t logits_cap, logits_used;
} batch;

static int batch_init(batch *b, int64_t cap, size_t logits_cap, ps_error *e) {
    memset(b, 0, sizeof *b);
    b->cap = cap;
    b->rows = calloc((size_t)cap, sizeof *b->rows);
    b->patches = calloc((size_t)cap, sizeof *b->patches);
    b->tags = calloc((size_t)cap, sizeof *b->tags);
    b->logits_cap = logits_cap;
    b->logits = malloc(logits_cap * sizeof(float));
    if (!b->rows || !b->patches || !b->tags || !b->logits) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a batch");
    return 0;
}

static void batch_free(batch *b) {
    free(b->rows); free(b->patches); free(b->tags); free(b->logits);
}

typedef struct {
    const ps_model *m;
    ps_backend *be;
    const ps_prompt_set *ps;
    ps_metric_kind metric;
    ps_run_results *out;
    const float *clean_lp;  // (chunk prompts, V) clean log-probs at score_pos, KL only
    const ps_engine_opts *o;
    int64_t done, total;
    double t_start, t_last;
} run_ctx;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress(run_ctx *c, int final) {
    if (!c->o->progress) return;
    double t = now_s();
    if (!final && t - c->t_last < 0.5) return;
    c->t_last = t;
    double el = t - c->t_start, rate = el > 0 ? (double)c->done / el : 0;
    double eta = rate > 0 ? (double)(c->total - c->done) / rate : 0;
    fprintf(stderr, "\r  patches %lld/%lld  %.1f/s  elapsed %.0fs  eta %.0fs   %s", (long long)c->done, (long long)c->total, rate,
            el, eta, final ? "\n" : "");
    fflush(stderr);
}

static int stopped(const run_ctx *c, ps_error *e) {
    if (c->o->stop && *c->o->stop) return ps_fail(e, PS_EXIT_RUNTIME, "interrupted");
    return 0;
}

static int batch_flush(run_ctx *c, batch *b, ps_error *e) {
    if (b->n == 0) return 0;
    for (int64_t r = 0; r < b->n; r++) c->out->sweeps[b->tags[r].sweep].flops += ps_row_flops(&c->m->cfg, &b->rows[r]);
    c->out->rows_planned += b->n;
    if (!c->o->dry_run) {
        if (stopped(c, e)) return -1;
        if (c->be->forward(c->be, c->m, b->rows, b->n, e) != 0) return -1;
        const int64_t V = c->m->cfg.d_vocab;
        for (int64_t r = 0; r < b->n; r++) {
            const row_tag *tg = &b->tags[r];
            const ps_prompt *p = &c->ps->p[tg->prompt];
            const float *lp = c->clean_lp ? c->clean_lp + tg->local * V : NULL;
            double v = ps_metric_value(c->metric, p, &tg->rq, b->logits + tg->logit_off, V, lp);
            ps_sweep *sw = &c->out->sweeps[tg->sweep];
            sw->values[tg->prompt * sw->n_cells + tg->cell] = (float)v;
        }
    }
    c->done += b->n;
    progress(c, 0);
    b->n = 0;
    b->logits_used = 0;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// The run

static size_t cache_floats(const ps_model_config *mc, int64_t T) {
    const int64_t L = mc->n_layers, C = mc->d_model, H = mc->n_heads, Hkv = mc->n_kv_heads, D = mc->d_head, M = mc->d_mlp;
    const int llama = mc->arch == PS_ARCH_LLAMA;
    return (size_t)(T * C * 2 + L * T * (6 * C + 2 + 2 * H * D + 2 * Hkv * D + H * T + (2 + llama) * M) +
                    (llama ? L * T * (H + Hkv) * D : 0) + T);
}

int ps_run_results_init(ps_run_results *out, const ps_model_config *mc, const ps_prompt_set *ps, const ps_experiment *exps,
                        int64_t n_exps, ps_error *e) {
    const int64_t n = ps->n;
    memset(out, 0, sizeof *out);
    ps_baseline *bl = &out->base;
    bl->n = n;
    float *blk = malloc((size_t)(6 * n) * sizeof(float));
    out->sweeps = calloc((size_t)(n_exps ? n_exps : 1), sizeof *out->sweeps);
    if (!blk || !out->sweeps) { free(blk); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); }
    for (int64_t i = 0; i < 6 * n; i++) blk[i] = NAN;
    bl->clean = blk; bl->corrupted = blk + n;
    bl->clean_answer_logit = blk + 2 * n; bl->clean_wrong_logit = blk + 3 * n;
    bl->corrupted_answer_logit = blk + 4 * n; bl->corrupted_wrong_logit = blk + 5 * n;
    out->n_sweeps = n_exps;
    for (int64_t i = 0; i < n_exps; i++)
        if (sweep_init(&out->sweeps[i], &exps[i], i, mc, ps, e) != 0) return -1;
    return 0;
}

// Runs the clean and corrupted baselines of a chunk with every activation cached.
static int run_baselines(run_ctx *c, const int64_t *chunk, int64_t nc, ps_cache *clean, ps_cache *corr, float *clean_lp,
                         ps_error *e) {
    const ps_model_config *mc = &c->m->cfg;
    const int64_t V = mc->d_vocab;
    const ps_prompt_set *ps = c->ps;
    ps_baseline *bl = &c->out->base;
    const int64_t max_out = 64;
    float *bl_logits = malloc((size_t)(2 * nc * max_out * V) * sizeof(float));
    ps_row *brow = calloc((size_t)(2 * nc), sizeof *brow);
    ps_metric_request *brq = calloc((size_t)nc, sizeof *brq);
    int rc = 0;
    if (!bl_logits || !brow || !brq) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld prompts' baselines", (long long)nc);
    for (int64_t i = 0; rc == 0 && i < nc; i++) {
        const ps_prompt *p = &ps->p[chunk[i]];
        if (ps_cache_init(&clean[i], mc, p->T, 0, e) || ps_cache_init(&corr[i], mc, p->T, 0, e)) { rc = -1; break; }
        ps_metric_request_for(c->metric, p, &brq[i]);
        brq[i].n_cols = 0;
        for (int k = 0; k < 2; k++) {
            ps_row *r = &brow[2 * i + k];
            r->tokens = k == 0 ? p->clean : p->corrupted;
            r->T = p->T;
            r->cache = k == 0 ? &clean[i] : &corr[i];
            r->out_pos = brq[i].out_pos;
            r->n_out = brq[i].n_out;
            r->logits = bl_logits + (2 * i + k) * max_out * V;
        }
    }
    for (int64_t i = 0; rc == 0 && i < 2 * nc; i++) c->out->baseline_flops += ps_row_flops(mc, &brow[i]);
    // One prompt's clean and corrupted runs per call, so their numbers do not depend on the chunk.
    for (int64_t i = 0; rc == 0 && i < nc; i++) rc = c->be->forward(c->be, c->m, brow + 2 * i, 2, e);
    for (int64_t i = 0; rc == 0 && i < nc; i++) {
        const int64_t pi = chunk[i];
        const ps_prompt *p = &ps->p[pi];
        int64_t si = 0;
        for (int64_t k = 0; k < brq[i].n_out; k++)
            if (brq[i].out_pos[k] == p->score_pos) si = k;
        const float *lc = brow[2 * i].logits, *lx = brow[2 * i + 1].logits;
        if (clean_lp) {
            const float *row = lc + si * V;
            double mx = row[0], sum = 0;
            for (int64_t j = 1; j < V; j++) mx = row[j] > mx ? row[j] : mx;
            for (int64_t j = 0; j < V; j++) sum += exp(row[j] - mx);
            double lse = mx + log(sum);
            for (int64_t j = 0; j < V; j++) clean_lp[i * V + j] = (float)(row[j] - lse);
        }
        const float *lpi = clean_lp ? clean_lp + i * V : NULL;
        bl->clean[pi] = (float)ps_metric_value(c->metric, p, &brq[i], lc, V, lpi);
        bl->corrupted[pi] = (float)ps_metric_value(c->metric, p, &brq[i], lx, V, lpi);
        bl->clean_answer_logit[pi] = lc[si * V + p->answer_id];
        bl->clean_wrong_logit[pi] = lc[si * V + p->wrong_id];
        bl->corrupted_answer_logit[pi] = lx[si * V + p->answer_id];
        bl->corrupted_wrong_logit[pi] = lx[si * V + p->wrong_id];
    }
    free(bl_logits);
    free(brow);
    free(brq);
    return rc;
}

// Turns every (sweep, prompt, cell) of a chunk into a row that starts from the base run's cached state.
static int run_sweeps(run_ctx *c, batch *b, const int64_t *chunk, int64_t nc, const ps_cache *clean, const ps_cache *corr,
                      ps_error *e) {
    const ps_model_config *mc = &c->m->cfg;
    const int64_t V = mc->d_vocab;
    const ps_engine_opts *o = c->o;
    ps_run_results *out = c->out;
    const ps_baseline *bl = &out->base;
    // Rows say which positions their patch can change when the backend can use it (never in the oracle).
    const int narrow = !o->naive && (c->be->caps & PS_CAP_NARROW);
    // Prompt-major, and a batch never mixes prompts: a prompt's rows form the same batches whatever the
    // chunking, sharding or resuming, so its numbers are bitwise reproducible.
    for (int64_t i = 0; i < nc; i++) {
        const int64_t pi = chunk[i];
        const ps_prompt *p = &c->ps->p[pi];
        ps_metric_request rq;
        ps_metric_request_for(c->metric, p, &rq);
        const size_t need = (size_t)rq.n_out * (size_t)(rq.n_cols ? rq.n_cols : V);
        for (int64_t s = 0; s < out->n_sweeps; s++) {
            ps_sweep *sw = &out->sweeps[s];
            const int noise = sw->ex->direction == PS_DIR_NOISE;
            const ps_cache *base = noise ? &clean[i] : &corr[i], *src = noise ? &corr[i] : &clean[i];
            const float base_metric = noise ? bl->clean[pi] : bl->corrupted[pi];
            for (int64_t cell = 0; cell < sw->n_cells; cell++) {
                ps_patch pt;
                if (!cell_patch(sw, cell, p, &pt)) { c->done++; continue; }
                pt.src = src;
                int64_t start_pos = 0, start_layer = 0, dirty_end = 0;
                const ps_entry entry = site_entry(pt.site);
                const int local = entry >= PS_ENTER_QUERIES; // changes only its own positions in its layer
                if (!o->naive) {
                    start_pos = first_change(mc, &pt, base, src);
                    // Positions the patch can change: [start_pos, dirty_end) in its layer, entering it, in its
                    // attention (q, pattern) or after it; k/v patches leave the layer's input unchanged.
                    dirty_end = pt.site == PS_SITE_RESID_PRE || local ? (pt.pos < 0 ? p->T : pt.pos + 1) : -1;
                    int reaches = start_pos >= 0;
                    if (reaches && local && pt.layer == mc->n_layers - 1) {
                        // From a query's attention on, in the last layer, a position only reaches its own logits.
                        reaches = 0;
                        for (int64_t k = 0; k < rq.n_out; k++)
                            if (rq.out_pos[k] >= start_pos && rq.out_pos[k] < dirty_end) reaches = 1;
                    }
                    if (!reaches) {
                        // The patch writes the value the base run already has, or changes nothing the metric
                        // reads: its result is the base metric.
                        sw->values[pi * sw->n_cells + cell] = base_metric;
                        sw->patches_skipped++;
                        c->done++;
                        continue;
                    }
                    start_layer = pt.layer;
                    for (int64_t k = 0; k < rq.n_out; k++) // the row must still reach the metric's positions
                        if (rq.out_pos[k] < start_pos) start_pos = rq.out_pos[k];
                    if (dirty_end < start_pos) dirty_end = start_pos; // k/v: nothing entering the layer differs
                }
                sw->patches_run++;
                if (b->n == b->cap || b->logits_used + need > b->logits_cap)
                    if (batch_flush(c, b, e) != 0) return -1;
                int64_t k = b->n++;
                row_tag *tg = &b->tags[k];
                tg->sweep = s; tg->prompt = pi; tg->local = i; tg->cell = cell;
                tg->rq = rq;
                tg->logit_off = b->logits_used;
                b->logits_used += need;
                b->patches[k] = pt;
                ps_row *r = &b->rows[k];
                memset(r, 0, sizeof *r);
                r->tokens = noise ? p->clean : p->corrupted;
                r->T = p->T;
                r->base = o->naive ? NULL : base;
                r->start_layer = start_layer;
                r->start_pos = start_pos;
                r->patches = &b->patches[k];
                r->n_patches = 1;
                r->out_pos = tg->rq.out_pos;
                r->n_out = tg->rq.n_out;
                r->cols = tg->rq.n_cols ? tg->rq.cols : NULL;
                r->n_cols = tg->rq.n_cols;
                r->logits = b->logits + tg->logit_off;
                if (narrow) {
                    r->narrow = 1;
                    r->entry = entry;
                    r->dirty_end = dirty_end;
                }
            }
        }
        if (batch_flush(c, b, e) != 0) return -1;
    }
    return batch_flush(c, b, e);
}

int ps_engine_run(const ps_model *m, ps_backend *be, const ps_prompt_set *ps, const ps_experiment *exps, int64_t n_exps,
                  ps_metric_kind metric, const ps_engine_opts *o, ps_run_results *out, ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t V = mc->d_vocab;
    if (ps_run_results_init(out, mc, ps, exps, n_exps, e) != 0) return -1;
    const double t0 = now_s();
    int64_t n_todo = o->todo ? o->n_todo : ps->n;
    int64_t *todo = malloc((size_t)(n_todo ? n_todo : 1) * sizeof(int64_t));
    for (int64_t i = 0; i < n_todo; i++) todo[i] = o->todo ? o->todo[i] : i;

    run_ctx c = {.m = m, .be = be, .ps = ps, .metric = metric, .out = out, .o = o};
    int64_t per_prompt_cells = 0;
    for (int64_t s = 0; s < n_exps; s++) per_prompt_cells += out->sweeps[s].n_cells;
    c.total = per_prompt_cells * n_todo;
    c.t_start = c.t_last = now_s();

    const int64_t brows = o->batch_rows > 0 ? o->batch_rows : 512;
    const size_t budget = o->cache_budget ? o->cache_budget : ((size_t)2 << 30);
    const size_t per_row_logits = (metric == PS_METRIC_LOGIT_DIFF) ? 2 : (size_t)V * (metric == PS_METRIC_LOGPROB ? 64 : 1);
    size_t logits_cap = per_row_logits * (size_t)brows;
    if (logits_cap > ((size_t)64 << 20)) logits_cap = per_row_logits > ((size_t)64 << 20) ? per_row_logits : ((size_t)64 << 20);
    batch b;
    int rc = batch_init(&b, brows, logits_cap, e);

    for (int64_t c0 = 0; c0 < n_todo && rc == 0;) {
        // A chunk of prompts whose clean and corrupted caches fit the budget together.
        int64_t c1 = c0;
        size_t bytes = 0;
        while (c1 < n_todo && (o->chunk_prompts <= 0 || c1 - c0 < o->chunk_prompts)) {
            size_t nb = 2 * cache_floats(mc, ps->p[todo[c1]].T) * sizeof(float);
            if (c1 > c0 && bytes + nb > budget) break;
            bytes += nb;
            c1++;
        }
        if (bytes > out->peak_cache_bytes) out->peak_cache_bytes = bytes;
        // Prompts of this chunk a previous (interrupted) run already committed are not run again.
        int64_t *chunk = malloc((size_t)(c1 - c0) * sizeof(int64_t)), nc = 0;
        for (int64_t k = c0; k < c1; k++)
            if (!o->skip || !o->skip[todo[k]]) chunk[nc++] = todo[k];
            else c.done += per_prompt_cells;
        ps_cache *clean = calloc((size_t)(nc ? nc : 1), sizeof *clean), *corr = calloc((size_t)(nc ? nc : 1), sizeof *corr);
        float *clean_lp = metric == PS_METRIC_KL ? malloc((size_t)((nc ? nc : 1) * V) * sizeof(float)) : NULL;
        if (!clean || !corr || (metric == PS_METRIC_KL && !clean_lp))
            rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %lld prompts' caches", (long long)nc);
        if (rc == 0 && nc > 0) {
            rc = stopped(&c, e);
            if (rc == 0) rc = run_baselines(&c, chunk, nc, clean, corr, clean_lp, e);
            c.clean_lp = clean_lp;
            if (rc == 0) rc = run_sweeps(&c, &b, chunk, nc, clean, corr, e);
        }
        for (int64_t i = 0; i < nc; i++) {
            if (be->release_cache && clean) be->release_cache(be, &clean[i]);
            if (be->release_cache && corr) be->release_cache(be, &corr[i]);
            if (clean) ps_cache_free(&clean[i]);
            if (corr) ps_cache_free(&corr[i]);
        }
        free(clean);
        free(corr);
        free(clean_lp);
        c.clean_lp = NULL;
        if (rc == 0 && nc > 0 && o->on_chunk && !o->dry_run) rc = o->on_chunk(o->chunk_ctx, chunk, nc, out, e);
        free(chunk);
        c0 = c1;
    }
    batch_free(&b);
    free(todo);
    progress(&c, 1);
    out->seconds = now_s() - t0;
    if (rc != 0) return -1;
    ps_engine_finish(out);
    return 0;
}

void ps_engine_finish(ps_run_results *out) {
    // Normalized values: (x - corrupted) / (clean - corrupted), per prompt and from the means.
    const ps_baseline *bl = &out->base;
    const int64_t n = bl->n;
    for (int64_t s = 0; s < out->n_sweeps; s++) {
        ps_sweep *sw = &out->sweeps[s];
        for (int64_t i = 0; i < n; i++)
            for (int64_t cell = 0; cell < sw->n_cells; cell++) {
                const float v = sw->values[i * sw->n_cells + cell];
                const double den = (double)bl->clean[i] - (double)bl->corrupted[i];
                sw->normalized[i * sw->n_cells + cell] = isnan(v) ? NAN : (float)((v - bl->corrupted[i]) / den);
            }
        ps_cell_means(sw->values, bl->clean, bl->corrupted, n, sw->n_cells, sw->mean, sw->mean_normalized);
    }
}

void ps_run_results_free(ps_run_results *r) {
    if (!r) return;
    free(r->base.clean);
    for (int64_t s = 0; s < r->n_sweeps; s++) {
        ps_sweep *sw = &r->sweeps[s];
        for (int a = 0; a < 3; a++) free(sw->axis_value[a]);
        free(sw->values); free(sw->normalized); free(sw->mean); free(sw->mean_normalized);
    }
    free(r->sweeps);
    memset(r, 0, sizeof *r);
}
