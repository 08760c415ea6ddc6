// The analyses' producers (ps_producer.h): kinds dla, logit_lens and attention read each prompt's baseline run
// (clean, or corrupted with "run": "corrupted"; dla with "ablate": the clean prompts run again with components
// ablated, by the ablation library) from the chunk's caches and fill its row of their table with the
// functions of dla.c, lens.c and attention.c, with no forward pass of their own; ov_scores (ov.c) runs its member
// tokens once and fills one row; neurons (neurons.c) reads each prompt's run and ranks them all at the end.
#include "ps_analysis.h"
#include "ps_producer.h"
#include "ps_tokenizer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const ps_cache *run_of(const ps_product *p, const ps_chunk *ch, int64_t i) {
    return p->ex->run_corrupted ? &ch->corrupted[i] : &ch->clean[i];
}

// The baseline cache a read-out reads: its run's ("run": "corrupted" or the clean one).
static unsigned reads_run(const ps_experiment *ex) { return ex->run_corrupted ? PS_READS_CORRUPTED : PS_READS_CLEAN; }

static int note_run(ps_product *p, ps_error *e) {
    return ps_table_attr_str(p->t, "run", p->ex->run_corrupted ? "corrupted" : "clean", e);
}

// Prompt pi's baseline pair run again as the engine runs it (engine.c, run_baselines: its clean and corrupted rows
// as one batch of their own, the metric's output positions), the clean or the corrupted one (which) with every
// activation cached in c (the caller frees it, also on failure). So a row this process did not compute (restored
// from the journal, another shard's) is read from the same numbers bitwise, on the CPU.
static int rerun_baseline(ps_producer_ctx *cx, int64_t pi, int corrupted, ps_cache *c, ps_error *e) {
    const ps_prompt *p = &cx->ps->p[pi];
    const int64_t V = cx->m->cfg.d_vocab;
    ps_metric_request rq;
    ps_metric_request_for(cx->metric, p, &rq);
    float *lg = malloc((size_t)(2 * rq.n_out * V + 1) * sizeof *lg);
    if (!lg) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a prompt's run");
    int rc = ps_cache_init(c, &cx->m->cfg, p->T, 0, e);
    ps_row rows[2];
    for (int k = 0; k < 2; k++)
        rows[k] = (ps_row){.tokens = k == 0 ? p->clean : p->corrupted, .T = p->T, .cache = k == corrupted ? c : NULL,
                           .out_pos = rq.out_pos, .n_out = rq.n_out, .logits = lg + k * rq.n_out * V};
    if (rc == 0) rc = cx->be->forward(cx->be, cx->m, rows, 2, e);
    free(lg);
    return rc;
}

// ---- dla and logit_lens: one prompt's row at its metric position ---------------------------------------

// Fills one prompt's row of an experiment's table from its run c.
typedef int (*at_metric_fn)(const ps_model *m, const ps_cache *c, const ps_prompt *pr, const ps_product *p, float *row,
                            ps_error *e);

// par: the prompts on the run's threads (fn keeps no shared state; resident models only, a streamed layer is fetched
// into one shared buffer). Each prompt's row is computed alone either way: the same numbers.
static int metric_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, at_metric_fn fn, int par,
                        ps_error *e) {
    if (cx->o->dry_run) return 0;
    par = par && !cx->m->stream && ch->n > 1;
    ps_first_error failed = PS_FIRST_ERROR_NONE;   // by prompt
    for (int64_t k = 0; k < n && failed.at == INT64_MAX; k++) {
        ps_table *t = items[k]->t;
#pragma omp parallel for schedule(dynamic, 1) if (par)
        for (int64_t i = 0; i < ch->n; i++) {
            ps_error e_own = {0};
            if (fn(cx->m, run_of(items[k], ch, i), &cx->ps->p[ch->prompts[i]], items[k], t->values + ch->prompts[i] * t->n_cells, &e_own) != 0)
                ps_first_error_note(&failed, ch->prompts[i], &e_own);
        }
    }
    return ps_first_error_take(&failed, e);
}

// A dla experiment's state: its pairs' directions (ps_dla_memo) and, with "ablate", the config's components as one
// ablated set, the means (computed on first use) or resample draws.
typedef struct {
    ps_dla_memo *memo;
    char what[200];              // "experiments[i] (name)"
    ps_component *comps;         // (set.n) owned; positions borrowed from the config
    ps_abl_set set;
    int64_t *draws;              // (ps->n) resample: drawn once over every prompt
    ps_ref_means means;
    int means_ready;
} dla_abl;

static void dla_free(void *v) {
    dla_abl *s = v;
    if (!s) return;
    ps_dla_memo_free(s->memo);
    free(s->comps);
    free(s->draws);
    ps_ref_means_free(&s->means);
    free(s);
}

static const ps_prompt_set *dla_ref(const ps_prompt_set *ps, const ps_product *p) {
    return ps->ref && p->idx < ps->n_ref && ps->ref[p->idx].n > 0 ? &ps->ref[p->idx] : NULL;
}

static int dla_abl_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    dla_abl *s = p->state;
    snprintf(s->what, sizeof s->what, "experiments[%lld] (%s): ablate", (long long)p->idx, ex->name);
    int64_t n = 0;
    for (int64_t c = 0; c < ex->n_cells; c++) n += ex->cells[c].n;
    if (!(s->comps = calloc((size_t)(n ? n : 1), sizeof *s->comps))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
    s->set = (ps_abl_set){.c = s->comps, .n = n, .keep = ex->keep};
    for (int64_t c = 0, k = 0; c < ex->n_cells; c++)
        for (int64_t j = 0; j < ex->cells[c].n; j++, k++) {
            const ps_abl_comp *ac = &ex->cells[c].c[j];
            char where[300];
            snprintf(where, sizeof where, "%s.%s[%lld]", s->what, ex->keep ? "keep" : "components", (long long)(ex->keep ? j : c));
            if (ps_component_parse(ac->name, &s->comps[k]) != 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: \"%s\" is not a component", where, ac->name);
            if (ps_component_check(mc, &s->comps[k], where, e) != 0) return -1;
            if (ex->keep && s->comps[k].kind == PS_COMP_NEURON)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: a kept circuit holds heads and MLPs; neurons can only be ablated", where, ac->name);
            const int own = ac->positions != NULL;
            s->comps[k].pos = own ? ac->positions : ex->positions;
            s->comps[k].n_pos = own ? ac->n_positions : ex->n_positions;
            s->comps[k].pos_role = own ? ac->position_role : ex->position_role;
        }
    const ps_prompt_set *ref = dla_ref(ps, p);
    if ((ex->abl_with == PS_ABL_MEAN || ex->abl_with == PS_ABL_RESAMPLE) && !ref)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s.reference: required with \"with\": \"%s\"", s->what, ps_abl_method_name(ex->abl_with));
    if (ex->abl_with == PS_ABL_RESAMPLE) {
        if (!(s->draws = malloc((size_t)(ps->n ? ps->n : 1) * sizeof *s->draws))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
        char where[260];
        snprintf(where, sizeof where, "%s.reference", s->what);
        if (ps_abl_resample_draws(ps, ref, (uint64_t)ex->seed, where, s->draws, e) != 0) return -1;
    }
    char list[1024] = "";
    for (int64_t k = 0; k < n && strlen(list) + 40 < sizeof list; k++) {
        char c[64];
        ps_component_label(&s->comps[k], c, sizeof c);
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", k ? " " : "", c);
    }
    return ps_table_attr_str(p->t, ex->keep ? "ablated_outside" : "ablated", list, e) ||
           ps_table_attr_str(p->t, "ablation_method", ps_abl_method_name(ex->abl_with), e) ||
           (ex->abl_with == PS_ABL_MEAN && ps_table_attr_str(p->t, "ablation_group", ps_mean_group_name(ex->abl_group), e)) ? -1 : 0;
}

static int dla_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    if (ps_dla_table_init(p->t, p->ex->name, mc, ps->n, p->ex->per_neuron, p->ex->answer_only, e) != 0) return -1;
    if (note_run(p, e) != 0) return -1;
    dla_abl *s = calloc(1, sizeof *s);
    if (!s) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", p->ex->name);
    p->state = s;
    if (!p->ex->n_cells && !(s->memo = ps_dla_memo_new(mc, (size_t)64 << 20))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", p->ex->name);
    return p->ex->n_cells > 0 ? dla_abl_init(mc, ps, p, e) : 0;
}

static int dla_row(const ps_model *m, const ps_cache *c, const ps_prompt *pr, const ps_product *p, float *row, ps_error *e) {
    const ps_experiment *ex = p->ex;
    const dla_abl *s = p->state;
    if (!ex->answer_only && pr->wrong_id < 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "dla %s: a prompt has no wrong answer (\"answer_only\": true decomposes the answer's logit)", ex->name);
    return ps_dla_prompt_memo(m, s->memo, c, pr->score_pos, pr->answer_id, ex->answer_only ? -1 : pr->wrong_id, ex->per_neuron, row, e);
}

// The chunk's prompts run with the set ablated, through the ablation library's rows.
static int dla_abl_chunk(ps_producer_ctx *cx, ps_product *p, const ps_chunk *ch, ps_error *e) {
    const ps_experiment *ex = p->ex;
    dla_abl *s = p->state;
    ps_table *t = p->t;
    if (!ex->answer_only)
        for (int64_t i = 0; i < ch->n; i++)
            if (cx->ps->p[ch->prompts[i]].wrong_id < 0)
                return ps_fail(e, PS_EXIT_BADINPUT, "dla %s: a prompt has no wrong answer (\"answer_only\": true decomposes the answer's logit)", ex->name);
    if (ex->abl_with == PS_ABL_MEAN && !s->means_ready) {
        char where[260];
        snprintf(where, sizeof where, "%s.reference", s->what);
        if (ps_ref_means_compute(cx->m, cx->be, dla_ref(cx->ps, p), (ps_mean_group)ex->abl_group, NULL, 1, where, &s->means, e) != 0) return -1;
        s->means_ready = 1;
    }
    ps_prompt_set sub = {.n = ch->n};
    sub.p = malloc((size_t)(ch->n ? ch->n : 1) * sizeof *sub.p);
    int64_t *draws = malloc((size_t)(ch->n ? ch->n : 1) * sizeof *draws), *groups = calloc((size_t)(ch->n ? ch->n : 1), sizeof *groups);
    const int64_t K = t->n_cells / 2;
    float *vals = malloc((size_t)(ch->n * 2 * K) * sizeof *vals);
    int rc = sub.p && draws && groups && vals ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a chunk of %lld prompts", (long long)ch->n);
    for (int64_t i = 0; rc == 0 && i < ch->n; i++) {
        sub.p[i] = cx->ps->p[ch->prompts[i]];
        if (sub.p[i].T > sub.T_max) sub.T_max = sub.p[i].T;
        draws[i] = s->draws ? s->draws[ch->prompts[i]] : 0;
    }
    ps_ablator a = {.m = cx->m, .be = cx->be, .ps = &sub, .metric = cx->metric, .method = (ps_abl_method)ex->abl_with,
                    .means = s->means_ready ? &s->means : NULL, .group_of = groups, .ref = dla_ref(cx->ps, p),
                    .seed = (uint64_t)ex->seed, .draws = s->draws ? draws : NULL, .batch_rows = cx->o->batch_rows,
                    .base = cx->o->naive ? NULL : ch->clean};
    if (rc == 0 && (rc = ps_ablator_init(&a, s->what, e)) == 0) {
        rc = ps_dla_ablated(&a, &s->set, ex->per_neuron, ex->answer_only, vals, e);
        for (int64_t i = 0; rc == 0 && i < ch->n; i++) memcpy(t->values + ch->prompts[i] * t->n_cells, vals + i * 2 * K, (size_t)(2 * K) * sizeof *vals);
        t->patches_run += a.stats.rows_run;
        t->flops += a.stats.flops;
        cx->rr->rows_planned += a.stats.rows_run;
        ps_ablator_free(&a);
    }
    free(sub.p); free(draws); free(groups); free(vals);
    return rc;
}

static int dla_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    for (int64_t k = 0; k < n; k++) {
        if (cx->o->dry_run) {
            if (items[k]->ex->n_cells > 0) cx->rr->rows_planned += 2 * ch->n;
            continue;
        }
        if (items[k]->ex->n_cells > 0) {
            if (ps_producer_stopped(cx, e) != 0 || dla_abl_chunk(cx, items[k], ch, e) != 0) return -1;
        } else if (metric_chunk(cx, items + k, 1, ch, dla_row, 0, e) != 0) {   // serial: the memo grows
            return -1;
        }
    }
    return 0;
}

// With "ablate" the ablated runs start from the clean baseline's cache (ps_ablator.base).
static unsigned dla_reads(const ps_experiment *ex) { return ex->n_cells > 0 ? PS_READS_CLEAN : reads_run(ex); }

const ps_producer ps_dla_producer = {.kind = "dla", .per_prompt = 1, .init = dla_init, .chunk = dla_chunk, .free_state = dla_free,
                                     .reads = dla_reads};

static int lens_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    if (ps_lens_table_init(p->t, p->ex->name, mc, ps->n, p->ex->top_k, e) != 0) return -1;
    return note_run(p, e);
}

static int lens_row(const ps_model *m, const ps_cache *c, const ps_prompt *pr, const ps_product *p, float *row, ps_error *e) {
    return ps_lens_prompt(m, c, pr->score_pos, pr->answer_id, pr->wrong_id, p->ex->top_k, row, e);
}

static int lens_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    return metric_chunk(cx, items, n, ch, lens_row, 1, e);
}

const ps_producer ps_logit_lens_producer = {.kind = "logit_lens", .per_prompt = 1, .init = lens_init, .chunk = lens_chunk, .reads = reads_run};

// ---- attention -------------------------------------------------------------------------------------------

static int att_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    for (int64_t i = 0; ex->positions && i < ex->n_positions; i++) {
        if (ex->position_role && ex->position_role[i]) {
            for (int64_t k = 0; k < ps->n; k++)
                if (ps_prompt_role(&ps->p[k], ex->position_role[i]) < 0)
                    return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): positions[%lld] = \"%s\": dataset item %lld has no such role (give it \"roles\": {\"%s\": TOKEN_INDEX})",
                                   (long long)p->idx, ex->name, (long long)i, ex->position_role[i], (long long)k, ex->position_role[i]);
        } else if (ex->positions[i] >= ps->T_max || ex->positions[i] < -ps->T_max) {
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): positions[%lld] = %lld is outside every prompt (longest: %lld tokens)",
                           (long long)p->idx, ex->name, (long long)i, (long long)ex->positions[i], (long long)ps->T_max);
        }
    }
    // A query named by role is listed as prompt 0's index of it (labelled with the role), as patch sweeps list theirs.
    int64_t *qv = ex->positions ? malloc((size_t)ex->n_positions * sizeof *qv) : NULL;
    if (ex->positions && !qv) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
    for (int64_t i = 0; qv && i < ex->n_positions; i++)
        qv[i] = ex->position_role && ex->position_role[i] ? ps_prompt_role(&ps->p[0], ex->position_role[i]) : ex->positions[i];
    ps_error e2 = {0};
    int rc = ps_attention_table_init(p->t, ex->name, mc, ps->n, ex->layers, ex->n_layers, ex->heads, ex->n_heads, qv,
                                     ex->position_role, ex->n_positions, ps->T_max, &e2);
    free(qv);
    if (rc != 0) return ps_fail(e, e2.code, "experiments[%lld] (%s): %s", (long long)p->idx, ex->name, e2.msg);
    return note_run(p, e);
}

static int att_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    if (cx->o->dry_run) return 0;
    for (int64_t k = 0; k < n; k++) {
        ps_table *t = items[k]->t;
        const ps_experiment *ex = items[k]->ex;
        const ps_axis *aq = &t->axes[ps_table_axis(t, "query")];
        int64_t *qpos = malloc((size_t)aq->len * sizeof *qpos);
        if (!qpos) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
        for (int64_t i = 0; i < ch->n; i++) {
            const ps_prompt *pr = &cx->ps->p[ch->prompts[i]];
            // Each query's position in this prompt: a role looked up, negative counted from the prompt's end.
            for (int64_t q = 0; q < aq->len; q++) {
                int64_t v = aq->value[q];
                if (ex->position_role && ex->position_role[q]) v = ps_prompt_role(pr, ex->position_role[q]);
                else if (v < 0) v = pr->T_prompt + v;
                qpos[q] = v < 0 || v >= pr->T ? -1 : v;
            }
            ps_attention_prompt(t, &cx->m->cfg, run_of(items[k], ch, i), qpos, t->values + ch->prompts[i] * t->n_cells);
        }
        free(qpos);
    }
    return 0;
}

const ps_producer ps_attention_producer = {.kind = "attention", .per_prompt = 1, .init = att_init, .chunk = att_chunk, .reads = reads_run};

// ---- ov_scores -------------------------------------------------------------------------------------------
// Not per prompt: each member token is run alone (after the prompts' BOS when they have one), or the clean
// prompts are run again and every member there taken, and its residual after the first layer goes through
// every chosen head's OV circuit.

typedef struct {
    int32_t *tok;    // (n) member token ids
    int64_t n;
    // "input": "prompts": each prompt's occurrences, gathered from the chunks' clean runs: rows[q] (cnt[q], C)
    // first-layer residuals, member[q] (cnt[q]) which member each is; got[q] once gathered.
    int64_t n_prompts;
    float **rows;
    int64_t **member, *cnt;
    uint8_t *got;
} ov_state;

static void ov_free(void *state) {
    ov_state *s = state;
    if (!s) return;
    for (int64_t q = 0; s->got && q < s->n_prompts; q++) {
        free(s->rows[q]);
        free(s->member[q]);
    }
    free(s->rows); free(s->member); free(s->cnt); free(s->got);
    free(s->tok);
    free(s);
}

// Prompt q's occurrences of members (positions before T_prompt, in order) from its clean run c.
static int ov_gather(ov_state *s, const ps_prompt *pr, const ps_cache *c, int64_t q, int64_t C, ps_error *e) {
    int64_t n = 0;
    for (int64_t t = 0; t < pr->T_prompt; t++)
        for (int64_t k = 0; k < s->n; k++)
            if (pr->clean[t] == s->tok[k]) { n++; break; }
    free(s->rows[q]);
    free(s->member[q]);
    s->rows[q] = malloc((size_t)(n ? n * C : 1) * sizeof(float));
    s->member[q] = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    if (!s->rows[q] || !s->member[q]) return ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    n = 0;
    for (int64_t t = 0; t < pr->T_prompt; t++)
        for (int64_t k = 0; k < s->n; k++)
            if (pr->clean[t] == s->tok[k]) {
                memcpy(s->rows[q] + n * C, c->resid_post + t * C, (size_t)C * sizeof(float));   // layer 0
                s->member[q][n++] = k;
                break;
            }
    s->cnt[q] = n;
    s->got[q] = 1;
    return 0;
}

// The chunk's clean runs, for the experiments that read the prompts.
static int ov_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    if (cx->o->dry_run) return 0;
    for (int64_t k = 0; k < n; k++) {
        if (!items[k]->ex->ov_prompts) continue;
        for (int64_t i = 0; i < ch->n; i++)
            if (ov_gather(items[k]->state, &cx->ps->p[ch->prompts[i]], &ch->clean[i], ch->prompts[i], cx->m->cfg.d_model, e) != 0) return -1;
    }
    return 0;
}

static unsigned ov_reads(const ps_experiment *ex) { return ex->ov_prompts ? PS_READS_CLEAN : 0; }

static int ov_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    if (!ps->tok) return ps_fail(e, PS_EXIT_RUNTIME, "experiments[%lld] (%s): ov_scores needs the run's tokenizer", (long long)p->idx, ex->name);
    ov_state *s = calloc(1, sizeof *s);
    if (!s || !(s->tok = malloc((size_t)ex->n_tokens * sizeof *s->tok))) {
        free(s);
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
    }
    p->state = s;
    s->n = ex->n_tokens;
    if (ex->ov_prompts) {
        const size_t np = (size_t)(ps->n ? ps->n : 1);
        s->n_prompts = ps->n;
        s->rows = calloc(np, sizeof *s->rows);
        s->member = calloc(np, sizeof *s->member);
        s->cnt = calloc(np, sizeof *s->cnt);
        s->got = calloc(np, 1);
        if (!s->rows || !s->member || !s->cnt || !s->got) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
    }
    for (int64_t i = 0; i < ex->n_tokens; i++) {
        int32_t *ids = NULL;
        int64_t n = 0;
        if (ps_tokenizer_encode(ps->tok, ex->tokens[i], &ids, &n, e) != 0) return -1;
        if (n != 1) {
            char shown[512] = "";
            size_t o = 0;
            for (int64_t k = 0; k < n && o + 64 < sizeof shown; k++) {
                char *t = ps_tokenizer_token_text(ps->tok, ids[k]);
                o += (size_t)snprintf(shown + o, sizeof shown - o, "%s'%s'", k ? " " : "", t ? t : "?");
                free(t);
            }
            free(ids);
            return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): tokens[%lld] = \"%s\" is %lld tokens (%s), not one", (long long)p->idx,
                           ex->name, (long long)i, ex->tokens[i], (long long)n, shown);
        }
        s->tok[i] = ids[0];
        free(ids);
    }
    ps_error e2 = {0};
    if (ps_ov_table_init(p->t, ex->name, mc, ex->layers, ex->n_layers, ex->heads, ex->n_heads, s->tok, ex->tokens, s->n, ex->top_k, &e2) != 0)
        return ps_fail(e, e2.code, "experiments[%lld] (%s): %s", (long long)p->idx, ex->name, e2.msg);
    if (ps_table_attr_str(p->t, "sign", ex->negative ? "negative (-W_O)" : "positive", e) ||
        ps_table_attr_str(p->t, "input", ex->ov_prompts ? "blocks.0.hook_resid_post at every member in the clean prompts"
                                         : ps->bos >= 0 ? "blocks.0.hook_resid_post of [BOS, token]" : "blocks.0.hook_resid_post of [token]", e))
        return -1;
    return 0;
}

// Full runs of n token sequences (seq[i], len[i]) with caches, through the engine's row planner and the backend.
static int run_cached(ps_producer_ctx *cx, const int32_t *const *seq, const int64_t *len, int64_t n, ps_cache *caches, ps_error *e) {
    const int64_t V = cx->m->cfg.d_vocab;
    ps_row *rows = calloc((size_t)n, sizeof *rows);
    int64_t *out_pos = malloc((size_t)n * sizeof *out_pos);
    float *logits = malloc((size_t)(n * V) * sizeof *logits);
    int rc = rows && out_pos && logits ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        out_pos[i] = len[i] - 1;
        if ((rc = ps_cache_init(&caches[i], &cx->m->cfg, len[i], 0, e)) != 0) break;
        rows[i] = (ps_row){.tokens = seq[i], .T = len[i], .cache = &caches[i], .out_pos = &out_pos[i], .n_out = 1, .logits = logits + i * V};
    }
    const ps_rows_opts ro = {.batch_rows = cx->o->batch_rows};
    ps_rows_stats st = {0};
    if (rc == 0) rc = ps_engine_rows(cx->m, cx->be, rows, n, &ro, &st, e);
    free(rows); free(out_pos); free(logits);
    return rc;
}

// Full runs of n token sequences (seq[i], len[i]) that record blocks.0.hook_resid_post alone: out[i] (len[i], C)
// each, caller-owned. Every layer still runs (a row has no last layer of its own), but nothing else is stored.
static int run_resid0(ps_producer_ctx *cx, const int32_t *const *seq, const int64_t *len, int64_t n, float *const *out, ps_error *e) {
    const int64_t V = cx->m->cfg.d_vocab;
    ps_row *rows = calloc((size_t)n, sizeof *rows);
    ps_capture *cap = calloc((size_t)n, sizeof *cap);
    int64_t *out_pos = malloc((size_t)n * sizeof *out_pos);
    float *logits = malloc((size_t)(n * V) * sizeof *logits);
    int rc = rows && cap && out_pos && logits ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        out_pos[i] = len[i] - 1;
        cap[i] = (ps_capture){.site = PS_SITE_RESID_POST, .layer = 0, .out = out[i]};
        rows[i] = (ps_row){.tokens = seq[i], .T = len[i], .captures = &cap[i], .n_captures = 1, .out_pos = &out_pos[i], .n_out = 1,
                           .logits = logits + i * V};
    }
    const ps_rows_opts ro = {.naive = 1, .batch_rows = cx->o->batch_rows};
    ps_rows_stats st = {0};
    if (rc == 0) rc = ps_engine_rows(cx->m, cx->be, rows, n, &ro, &st, e);
    free(rows); free(cap); free(out_pos); free(logits);
    return rc;
}

// The first-layer residuals of the members run alone after the BOS ("input": "isolated"): row i is member i. Caller frees.
static int ov_inputs(ps_producer_ctx *cx, const ov_state *s, float **resid, int64_t **member_of, int64_t *n_rows, ps_error *e) {
    const int64_t C = cx->m->cfg.d_model, n = s->n, T = cx->ps->bos >= 0 ? 2 : 1;
    int32_t *pair = malloc((size_t)(2 * n) * sizeof *pair);
    const int32_t **seq = malloc((size_t)n * sizeof *seq);
    int64_t *len = malloc((size_t)n * sizeof *len);
    float **r0 = calloc((size_t)n, sizeof *r0);   // (n) blocks.0.hook_resid_post of each sequence, (T, C) each
    *resid = malloc((size_t)(n * C) * sizeof **resid);
    *member_of = malloc((size_t)n * sizeof **member_of);
    *n_rows = 0;
    int rc = pair && seq && len && r0 && *resid && *member_of ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        pair[2 * i] = cx->ps->bos;
        pair[2 * i + T - 1] = s->tok[i];
        seq[i] = pair + 2 * i;
        len[i] = T;
        if (!(r0[i] = malloc((size_t)(T * C) * sizeof(float)))) rc = ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    }
    // In batches of 8 sequences (as before the prompts' residuals came from the chunks: the same numbers).
    for (int64_t b0 = 0; rc == 0 && b0 < n; b0 += 8) {
        const int64_t nb = n - b0 < 8 ? n - b0 : 8;
        if ((rc = ps_producer_stopped(cx, e)) != 0 || (rc = run_resid0(cx, seq + b0, len + b0, nb, r0 + b0, e)) != 0) break;
    }
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        memcpy(*resid + i * C, r0[i] + (T - 1) * C, (size_t)C * sizeof(float));
        (*member_of)[i] = i;
    }
    *n_rows = rc == 0 ? n : 0;
    for (int64_t i = 0; r0 && i < n; i++) free(r0[i]);
    free(pair); free(seq); free(len); free(r0);
    return rc;
}

// "input": "prompts": every prompt's occurrences in prompt order, from the chunks' clean runs; a prompt this process did
// not run (its rows restored from a journal, another shard's) is run again as its baseline was. Caller frees.
static int ov_prompt_inputs(ps_producer_ctx *cx, ov_state *s, float **resid, int64_t **member_of, int64_t *n_rows, ps_error *e) {
    const int64_t C = cx->m->cfg.d_model;
    int rc = 0;
    for (int64_t q = 0; rc == 0 && q < s->n_prompts; q++) {
        if (s->got[q]) continue;
        ps_cache c = {0};
        if ((rc = ps_producer_stopped(cx, e)) == 0 && (rc = rerun_baseline(cx, q, 0, &c, e)) == 0) rc = ov_gather(s, &cx->ps->p[q], &c, q, C, e);
        ps_backend_drop_caches(cx->be, &c, 1);
    }
    int64_t total = 0;
    for (int64_t q = 0; q < s->n_prompts; q++) total += s->cnt[q];
    *n_rows = 0;
    *resid = malloc((size_t)(total ? total * C : 1) * sizeof **resid);
    *member_of = malloc((size_t)(total ? total : 1) * sizeof **member_of);
    if (rc == 0 && (!*resid || !*member_of)) rc = ps_fail(e, PS_EXIT_RUNTIME, "ov_scores: out of memory");
    for (int64_t q = 0; rc == 0 && q < s->n_prompts; q++) {
        memcpy(*resid + *n_rows * C, s->rows[q], (size_t)(s->cnt[q] * C) * sizeof(float));
        memcpy(*member_of + *n_rows, s->member[q], (size_t)s->cnt[q] * sizeof(int64_t));
        *n_rows += s->cnt[q];
    }
    return rc;
}

static int ov_once(ps_producer_ctx *cx, ps_product *const *items, int64_t n, ps_error *e) {
    if (cx->o->dry_run) return 0;
    for (int64_t k = 0; k < n; k++) {
        const ps_experiment *ex = items[k]->ex;
        float *resid = NULL;
        int64_t *member_of = NULL, n_rows = 0;
        int rc = ex->ov_prompts ? ov_prompt_inputs(cx, items[k]->state, &resid, &member_of, &n_rows, e)
                                : ov_inputs(cx, items[k]->state, &resid, &member_of, &n_rows, e);
        if (rc == 0) rc = ps_ov_fill(cx->m, items[k]->t, resid, n_rows, member_of, ex->negative ? -1.0f : 1.0f, e);
        if (rc == 0) rc = ps_table_attr_i64(items[k]->t, "occurrences", n_rows, e);
        free(resid);
        free(member_of);
        if (rc != 0) return -1;
    }
    return 0;
}

const ps_producer ps_ov_scores_producer = {.kind = "ov_scores", .per_prompt = 0, .init = ov_init, .chunk = ov_chunk, .once = ov_once,
                                           .free_state = ov_free, .reads = ov_reads};

// ---- head_scores -------------------------------------------------------------------------------------
// ARENA's setting: 10 sequences of N = 50 uniform random tokens (fewer where the context is shorter), each
// repeated once after the BOS; a fixed generator (splitmix64, seed below), so a rerun draws the same tokens.
enum { HS_SEQS = 10, HS_LEN = 50 };
static const uint64_t HS_SEED = 14;

static uint64_t splitmix64(uint64_t *s) {
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int hs_len(const ps_model_config *mc, int32_t bos) {
    int64_t room = (mc->n_ctx - (bos >= 0)) / 2;
    return (int)(room < HS_LEN ? room : HS_LEN);
}

static int hs_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const int N = hs_len(mc, ps->bos);
    if (N < 2) return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): the context (%lld tokens) is too short for repeated sequences",
                              (long long)p->idx, p->ex->name, (long long)mc->n_ctx);
    if (ps_head_scores_table_init(p->t, p->ex->name, mc, e) != 0) return -1;
    return ps_table_attr_i64(p->t, "seq_len", N, e) || ps_table_attr_i64(p->t, "n_seqs", HS_SEQS, e) ||
           ps_table_attr_i64(p->t, "seed", (int64_t)HS_SEED, e) ||
           ps_table_attr_str(p->t, "input", ps->bos >= 0 ? "[BOS, x_1..x_N, x_1..x_N], x uniform over the vocabulary" : "[x_1..x_N, x_1..x_N]", e)
               ? -1 : 0;
}

static int hs_once(ps_producer_ctx *cx, ps_product *const *items, int64_t n, ps_error *e) {
    if (cx->o->dry_run) return 0;
    const ps_model_config *mc = &cx->m->cfg;
    const int32_t bos = cx->ps->bos;
    const int64_t N = hs_len(mc, bos), T = 2 * N + (bos >= 0), L = mc->n_layers, H = mc->n_heads;
    int32_t *tok = malloc((size_t)(HS_SEQS * T) * sizeof *tok);
    const int32_t *seq[HS_SEQS];
    int64_t len[HS_SEQS];
    ps_cache caches[HS_SEQS];
    double *acc = calloc((size_t)(L * H * PS_HEAD_SCORES), sizeof *acc);
    memset(caches, 0, sizeof caches);
    int rc = tok && acc ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "head_scores: out of memory");
    uint64_t st = HS_SEED;
    for (int64_t b = 0; rc == 0 && b < HS_SEQS; b++) {
        int32_t *s = tok + b * T;
        if (bos >= 0) *s++ = bos;
        for (int64_t i = 0; i < N; i++) s[i] = s[N + i] = (int32_t)(splitmix64(&st) % (uint64_t)mc->d_vocab);
        seq[b] = tok + b * T;
        len[b] = T;
    }
    if (rc == 0) rc = run_cached(cx, seq, len, HS_SEQS, caches, e);
    for (int64_t b = 0; rc == 0 && b < HS_SEQS; b++) ps_head_scores_add(mc, &caches[b], N, acc);
    for (int64_t k = 0; rc == 0 && k < n; k++)
        for (int64_t i = 0; i < L * H * PS_HEAD_SCORES; i++) items[k]->t->values[i] = (float)(acc[i] / HS_SEQS);
    ps_backend_drop_caches(cx->be, caches, HS_SEQS); // (cache rows: a device copy each on a backend that keeps them)
    free(tok);
    free(acc);
    return rc;
}

const ps_producer ps_head_scores_producer = {.kind = "head_scores", .per_prompt = 0, .init = hs_init, .once = hs_once};

// ---- neurons and NAME.top ------------------------------------------------------------------------------
// neurons fills each prompt's row from the chunk's run; NAME.top ranks every prompt's row once at the end. A
// prompt this run did not compute (its row restored from the journal after the run) is run again here, so the
// ranking covers the whole dataset on a resumed run too.

static const ps_experiment *top_parent(const ps_product *p) { return p->ex - (p->idx - p->ex->top_of); }   // experiments are one array

static int nrn_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    ps_error e2 = {0};
    if (ps_neurons_table_init(p->t, ex->name, mc, ps->n, ex->neuron_layer, ex->neurons, ex->n_neurons, ps->T_max, &e2) != 0)
        return ps_fail(e, e2.code, "experiments[%lld]%s%s", (long long)p->idx, e2.code == PS_EXIT_BADINPUT ? "." : ": ", e2.msg);
    return note_run(p, e);
}

static int nrn_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    (void)e;
    if (cx->o->dry_run) return 0;
    for (int64_t k = 0; k < n; k++) {
        const ps_experiment *ex = items[k]->ex;
        ps_table *t = items[k]->t;
        for (int64_t i = 0; i < ch->n; i++)
            ps_neurons_prompt(&cx->m->cfg, run_of(items[k], ch, i), ex->neuron_layer, ex->neurons, ex->n_neurons,
                              cx->ps->p[ch->prompts[i]].T_prompt, cx->ps->T_max, t->values + ch->prompts[i] * t->n_cells);
    }
    return 0;
}

const ps_producer ps_neurons_producer = {.kind = "neurons", .per_prompt = 1, .init = nrn_init, .chunk = nrn_chunk, .reads = reads_run};

static int top_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    (void)ps;
    const ps_experiment *par = top_parent(p);
    ps_error e2 = {0};
    if (ps_neuron_top_table_init(p->t, p->ex->name, mc, par->neuron_layer, par->neurons, par->n_neurons, par->top_k, &e2) != 0)
        return ps_fail(e, e2.code, "experiments[%lld] (%s): %s", (long long)p->ex->top_of, par->name, e2.msg);
    return ps_table_attr_str(p->t, "of", par->name, e) || ps_table_attr_i64(p->t, "window", par->window, e) ||
           ps_table_attr_str(p->t, "run", par->run_corrupted ? "corrupted" : "clean", e) ? -1 : 0;
}

static int top_once(ps_producer_ctx *cx, ps_product *const *items, int64_t n_items, ps_error *e) {
    if (cx->o->dry_run) return 0;
    const ps_prompt_set *ps = cx->ps;
    for (int64_t k = 0; k < n_items; k++) {
        const ps_experiment *par = top_parent(items[k]);
        // The neurons table itself: its rows this run did not compute (NaN until the journal's are restored after
        // the run) are filled here with the same numbers, so no copy of a possibly large table is made.
        ps_table *src = &cx->rr->tables[items[k]->ex->top_of];
        const int64_t n = par->n_neurons, T_max = ps->T_max, W = src->n_cells;
        float *acts = src->values;
        const int32_t **tokens = malloc((size_t)ps->n * sizeof *tokens);
        int64_t *T_prompt = malloc((size_t)ps->n * sizeof *T_prompt), *redo = malloc((size_t)ps->n * sizeof *redo), n_redo = 0;
        int rc = acts && tokens && T_prompt && redo ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", items[k]->ex->name);
        for (int64_t i = 0; rc == 0 && i < ps->n; i++) {
            tokens[i] = par->run_corrupted ? ps->p[i].corrupted : ps->p[i].clean;
            T_prompt[i] = ps->p[i].T_prompt;
            if (isnan(acts[i * W])) redo[n_redo++] = i;   // position 0 exists in every prompt: a row not computed here
        }
        // The prompts not run in this process, again as their baselines ran (so the ranking's numbers are those of an
        // uninterrupted run's rows).
        for (int64_t j = 0; rc == 0 && j < n_redo; j++) {
            ps_cache c = {0};
            if ((rc = ps_producer_stopped(cx, e)) == 0 && (rc = rerun_baseline(cx, redo[j], par->run_corrupted, &c, e)) == 0)
                ps_neurons_prompt(&cx->m->cfg, &c, par->neuron_layer, par->neurons, n, T_prompt[redo[j]], T_max, acts + redo[j] * W);
            ps_backend_drop_caches(cx->be, &c, 1);
        }
        if (rc == 0) rc = ps_neuron_top_fill(items[k]->t, ps->tok, tokens, T_prompt, ps->n, acts, n, T_max, par->neuron_layer,
                                             par->neurons, par->window, e);
        free(tokens); free(T_prompt); free(redo);
        if (rc != 0) return -1;
    }
    return 0;
}

const ps_producer ps_neuron_top_producer = {.kind = "neuron_top", .derived = 1, .per_prompt = 0, .init = top_init, .once = top_once};
