// The analyses' producers (ps_producer.h): kinds dla, logit_lens and attention read each prompt's baseline run
// (clean, or corrupted with "run": "corrupted") from the chunk's caches and fill its row of their table with the
// functions of dla.c, lens.c and attention.c. No forward pass of their own.
#include "ps_analysis.h"
#include "ps_producer.h"

#include <stdlib.h>
#include <string.h>

static const ps_cache *run_of(const ps_product *p, const ps_chunk *ch, int64_t i) {
    return p->ex->run_corrupted ? &ch->corrupted[i] : &ch->clean[i];
}

static int note_run(ps_product *p, ps_error *e) {
    return ps_table_attr_str(p->t, "run", p->ex->run_corrupted ? "corrupted" : "clean", e);
}

// ---- dla -------------------------------------------------------------------------------------------------

static int dla_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    if (ps_dla_table_init(p->t, p->ex->name, mc, ps->n, p->ex->per_neuron, e) != 0) return -1;
    return note_run(p, e);
}

static int dla_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    if (cx->o->dry_run) return 0;
    for (int64_t k = 0; k < n; k++) {
        ps_table *t = items[k]->t;
        for (int64_t i = 0; i < ch->n; i++) {
            const ps_prompt *pr = &cx->ps->p[ch->prompts[i]];
            float *row = t->values + ch->prompts[i] * t->n_cells;
            if (ps_dla_prompt(cx->m, run_of(items[k], ch, i), pr->score_pos, pr->answer_id, pr->wrong_id, items[k]->ex->per_neuron,
                              row, e) != 0)
                return -1;
        }
    }
    return 0;
}

const ps_producer ps_dla_producer = {.kind = "dla", .per_prompt = 1, .init = dla_init, .chunk = dla_chunk};

// ---- logit_lens ------------------------------------------------------------------------------------------

static int lens_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    if (ps_lens_table_init(p->t, p->ex->name, mc, ps->n, p->ex->top_k, e) != 0) return -1;
    return note_run(p, e);
}

static int lens_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch, ps_error *e) {
    if (cx->o->dry_run) return 0;
    for (int64_t k = 0; k < n; k++) {
        ps_table *t = items[k]->t;
        for (int64_t i = 0; i < ch->n; i++) {
            const ps_prompt *pr = &cx->ps->p[ch->prompts[i]];
            float *row = t->values + ch->prompts[i] * t->n_cells;
            if (ps_lens_prompt(cx->m, run_of(items[k], ch, i), pr->score_pos, pr->answer_id, pr->wrong_id, items[k]->ex->top_k,
                               row, e) != 0)
                return -1;
        }
    }
    return 0;
}

const ps_producer ps_logit_lens_producer = {.kind = "logit_lens", .per_prompt = 1, .init = lens_init, .chunk = lens_chunk};

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
    ps_error e2 = {0};
    if (ps_attention_table_init(p->t, ex->name, mc, ps->n, ex->layers, ex->n_layers, ex->heads, ex->n_heads, ex->positions,
                                ex->position_role, ex->n_positions, ps->T_max, &e2) != 0)
        return ps_fail(e, e2.code, "experiments[%lld] (%s): %s", (long long)p->idx, ex->name, e2.msg);
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

const ps_producer ps_attention_producer = {.kind = "attention", .per_prompt = 1, .init = att_init, .chunk = att_chunk};
