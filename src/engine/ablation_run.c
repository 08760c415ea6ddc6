// The "ablation" and "circuit_search" experiment kinds (ps_producer.h) on the ablation library (ps_ablation.h):
// ablation scores each chunk's prompts (per prompt, so the journal, resume and shards apply); circuit_search runs
// seqcont's pruning once over every prompt, after the last chunk. Reference means are computed once per run.
#include "ablation_internal.h"
#include "ps_producer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char what[200];              // "experiments[i] (name)", the prefix of its messages
    ps_component *comps;         // (n_comps) owned; pos/pos_role borrowed from the config
    int64_t n_comps;
    ps_abl_set *sets;            // (n_sets) one per table cell, into comps
    int64_t n_sets;
    int64_t *prompt_group;       // (ps->n) per_template_position: each prompt's group in the reference's numbering
    int64_t *ref_group;          // (ref->n) each reference prompt's group
    int64_t n_groups;
    int64_t *draws;              // (ps->n) resample: drawn once over every prompt
    ps_ref_means means;          // computed on first use
    int means_ready;
    ps_ref_means mlp_means;      // mlp_means under_head_ablation of a kept circuit
    int mlp_means_ready;
    ps_circuit_rows rows;        // completeness / minimality: sets is rows.sets (owned there), labels owned here
    int has_rows;
    char **labels;               // (n_sets) with has_rows
    ps_cache *full_runs;         // circuit_search: (full_len = ps->n) the clean baselines taken from the chunks (n_full of
    int64_t full_len, n_full;    // them; the others zeroed), or NULL
    int no_full_runs;            // every prompt's would not fit the search's budget: none taken
} abl_state;

// The clean baselines a search took and did not hand on, released on be (their device copies) and freed. be is
// NULL when the state is freed with the run's results, after the backend may be gone (a device arena evicts
// entries no cache holds any more).
static void free_full_runs(ps_backend *be, abl_state *s) {
    if (s->full_runs) ps_backend_drop_caches(be, s->full_runs, s->full_len);
    free(s->full_runs);
    s->full_runs = NULL;
    s->full_len = s->n_full = 0;
}

static void abl_free(void *v) {
    abl_state *s = v;
    if (!s) return;
    free(s->comps);
    if (s->has_rows) ps_circuit_rows_free(&s->rows);
    else free(s->sets);
    for (int64_t i = 0; s->labels && i < s->n_sets; i++) free(s->labels[i]);
    free(s->labels);
    free(s->prompt_group);
    free(s->ref_group);
    free(s->draws);
    ps_ref_means_free(&s->means);
    ps_ref_means_free(&s->mlp_means);
    free_full_runs(NULL, s);
    free(s);
}

static const ps_prompt_set *ref_of(const ps_prompt_set *ps, const ps_product *p) {
    return ps->ref && p->idx < ps->n_ref && ps->ref[p->idx].n > 0 ? &ps->ref[p->idx] : NULL;
}

// per_template_position: groups numbered in the order the reference set first names them; every prompt's
// template needs reference prompts.
static int template_groups(const ps_prompt_set *ps, const ps_prompt_set *ref, abl_state *s, ps_error *e) {
    s->ref_group = malloc((size_t)ref->n * sizeof(int64_t));
    s->prompt_group = malloc((size_t)ps->n * sizeof(int64_t));
    if (!s->ref_group || !s->prompt_group) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", s->what);
    for (int64_t i = 0; i < ref->n; i++) {
        int64_t g = 0;
        while (g < i && strcmp(ref->p[g].group, ref->p[i].group)) g++;
        s->ref_group[i] = g < i ? s->ref_group[g] : s->n_groups++;
    }
    for (int64_t i = 0; i < ps->n; i++) {
        if (!ps->p[i].group)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: grouping per_template_position: dataset item %lld has no template "
                           "(name the field in dataset.fields.template)", s->what, (long long)i);
        int64_t j = 0;
        while (j < ref->n && strcmp(ref->p[j].group, ps->p[i].group)) j++;
        if (j == ref->n)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: reference: no reference prompt has template \"%s\" (dataset item %lld's)", s->what,
                           ps->p[i].group, (long long)i);
        s->prompt_group[i] = s->ref_group[j];
    }
    return 0;
}

// The config's components as the library's, checked against the model; one set per cell.
static int build_sets(const ps_model_config *mc, const ps_experiment *ex, abl_state *s, ps_error *e) {
    for (int64_t c = 0; c < ex->n_cells; c++) s->n_comps += ex->cells[c].n;
    s->comps = calloc((size_t)(s->n_comps ? s->n_comps : 1), sizeof *s->comps);
    s->sets = calloc((size_t)(ex->n_cells ? ex->n_cells : 1), sizeof *s->sets);
    if (!s->comps || !s->sets) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", s->what);
    s->n_sets = ex->n_cells;
    int64_t k = 0;
    for (int64_t c = 0; c < ex->n_cells; c++) {
        s->sets[c] = (ps_abl_set){.c = s->comps + k, .n = ex->cells[c].n, .keep = ex->keep};
        for (int64_t j = 0; j < ex->cells[c].n; j++, k++) {
            const ps_abl_comp *ac = &ex->cells[c].c[j];
            char where[300];
            if (ex->keep) snprintf(where, sizeof where, "%s: keep[%lld]", s->what, (long long)j);
            else if (ex->cells[c].n > 1) snprintf(where, sizeof where, "%s: components[%lld][%lld]", s->what, (long long)c, (long long)j);
            else snprintf(where, sizeof where, "%s: components[%lld]", s->what, (long long)c);
            if (ps_component_parse(ac->name, &s->comps[k]) != 0)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: \"%s\" is not a component", where, ac->name);
            if (ps_component_check(mc, &s->comps[k], where, e) != 0) return -1;
            if (ex->keep && s->comps[k].kind == PS_COMP_NEURON)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: a kept circuit holds heads and MLPs; neurons can only be ablated", where, ac->name);
            const int own = ac->positions != NULL;
            s->comps[k].pos = own ? ac->positions : ex->positions;
            s->comps[k].n_pos = own ? ac->n_positions : ex->n_positions;
            s->comps[k].pos_role = own ? ac->position_role : ex->position_role;
        }
    }
    return 0;
}

// A K of completeness or minimality (component names) as indices into the kept circuit C (sets[0]).
static int k_indices(const abl_state *s, const ps_abl_cell *k, const char *where, int64_t *idx, ps_error *e) {
    const ps_abl_set *C = &s->sets[0];
    for (int64_t j = 0; j < k->n; j++) {
        ps_component c;
        int64_t i = -1;
        if (ps_component_parse(k->c[j].name, &c) == 0)
            for (i = 0; i < C->n; i++)
                if (C->c[i].kind == c.kind && C->c[i].layer == c.layer && C->c[i].index == c.index) break;
        if (i < 0 || i == C->n) return ps_fail(e, PS_EXIT_BADINPUT, "%s: \"%s\" is not a component of the kept circuit", where, k->c[j].name);
        idx[j] = i;
    }
    return 0;
}

static char *label_of(const char *fmt, const char *arg) {
    const size_t n = strlen(fmt) + strlen(arg) + 1;
    char *l = malloc(n);
    if (l) snprintf(l, n, fmt, arg);
    return l;
}

// Completeness and minimality: the kept circuit's rows (ps_circuit_rows) replace the one keep cell.
static int build_score_rows(const ps_experiment *ex, abl_state *s, ps_error *e) {
    const ps_abl_set *C = &s->sets[0];   // (its components live in s->comps)
    const int64_t nv = ex->minimality ? C->n : 0;
    int64_t n_idx = 0;
    for (int64_t j = 0; j < ex->n_compl_k; j++) n_idx += ex->compl_k[j].n;
    for (int64_t j = 0; j < ex->n_min_k; j++) n_idx += ex->min_k[j].n;
    int64_t *idx = malloc((size_t)(n_idx ? n_idx : 1) * sizeof *idx);
    ps_comp_subset *ks = calloc((size_t)(ex->n_compl_k + nv + 1), sizeof *ks), *kv = ks + ex->n_compl_k;
    int rc = idx && ks ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", s->what);
    int64_t at = 0;
    for (int64_t j = 0; rc == 0 && j < ex->n_compl_k; j++) {
        char where[300];
        snprintf(where, sizeof where, "%s: completeness[%lld]", s->what, (long long)j);
        ks[j] = (ps_comp_subset){.idx = idx + at, .n = ex->compl_k[j].n};
        rc = k_indices(s, &ex->compl_k[j], where, idx + at, e);
        at += ex->compl_k[j].n;
    }
    for (int64_t j = 0; rc == 0 && j < ex->n_min_k; j++) {
        // The component whose K this is, then the K.
        char where[300];
        snprintf(where, sizeof where, "%s: minimality.%s", s->what, ex->min_k[j].label);
        const ps_abl_cell one = {.c = &(ps_abl_comp){.name = ex->min_k[j].label}, .n = 1};
        int64_t v = -1;
        if ((rc = k_indices(s, &one, where, &v, e)) != 0) break;
        kv[v] = (ps_comp_subset){.idx = idx + at, .n = ex->min_k[j].n};
        if ((rc = k_indices(s, &ex->min_k[j], where, idx + at, e)) != 0) break;
        for (int64_t q = 0; q < ex->min_k[j].n; q++)
            if (idx[at + q] == v) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: K holds %s itself", where, ex->min_k[j].label);
        at += ex->min_k[j].n;
    }
    if (rc == 0 && ps_circuit_rows_init(C, ks, ex->n_compl_k, ex->minimality ? kv : NULL, &s->rows, e) != 0) {
        char msg[sizeof e->msg];
        snprintf(msg, sizeof msg, "%s", e->msg);
        ps_fail(e, PS_EXIT_BADINPUT, "%s: %s", s->what, msg);
        rc = -1;
    }
    free(idx);
    free(ks);
    if (rc != 0) return -1;
    free(s->sets);   // C pointed here: the circuit is rows.sets[PS_CR_C] from now on
    C = &s->rows.sets[PS_CR_C];
    s->sets = s->rows.sets;
    s->n_sets = s->rows.n_sets;
    s->has_rows = 1;
    if (!(s->labels = calloc((size_t)s->n_sets, sizeof *s->labels))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", s->what);
    s->labels[PS_CR_C] = label_of("%s", "keep");
    s->labels[PS_CR_M] = label_of("%s", "M");
    for (int64_t j = 0; j < ex->n_compl_k; j++) {
        char lab[300];
        snprintf(lab, sizeof lab, "[%s]", ex->compl_k[j].label);
        s->labels[ps_cr_c_minus_k(j)] = label_of("C\\K%s", lab);
        s->labels[ps_cr_m_minus_k(j)] = label_of("M\\K%s", lab);
    }
    for (int64_t v = 0; v < nv; v++) {
        char lab[64];
        ps_component_label(&C->c[v], lab, sizeof lab);
        s->labels[ps_cr_c_minus_kv(&s->rows, v)] = label_of("C\\K_v[%s]", lab);
        s->labels[ps_cr_c_minus_kv(&s->rows, v) + 1] = label_of("C\\(K_v+v)[%s]", lab);
    }
    for (int64_t i = 0; i < s->n_sets; i++)
        if (!s->labels[i]) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", s->what);
    return 0;
}

static int abl_init_common(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    abl_state *s = calloc(1, sizeof *s);
    if (!s) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
    p->state = s;
    snprintf(s->what, sizeof s->what, "experiments[%lld] (%s)", (long long)p->idx, ex->name);
    const ps_prompt_set *ref = ref_of(ps, p);
    if ((ex->abl_with == PS_ABL_MEAN || ex->abl_with == PS_ABL_RESAMPLE) && !ref)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: reference: required with \"with\": \"%s\"", s->what, ps_abl_method_name(ex->abl_with));
    if (ex->abl_with == PS_ABL_MEAN && ex->abl_group == PS_GROUP_PER_TEMPLATE_POSITION && template_groups(ps, ref, s, e) != 0) return -1;
    // Means per position need the prompts and the reference prompts of one length (checked here, before any run).
    if (ex->abl_with == PS_ABL_MEAN && ex->abl_group != PS_GROUP_ALL_POSITIONS)
        for (int64_t i = 0; i < ps->n; i++)
            if (ps->p[i].T != ref->p[0].T)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: reference: %s means need the reference prompts' length: they have %lld tokens, "
                               "dataset item %lld has %lld", s->what, ps_mean_group_name(ex->abl_group), (long long)ref->p[0].T,
                               (long long)i, (long long)ps->p[i].T);
    if (ex->abl_with == PS_ABL_RESAMPLE) {
        if (!(s->draws = malloc((size_t)(ps->n ? ps->n : 1) * sizeof *s->draws))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
        char where[260];
        snprintf(where, sizeof where, "%s: reference", s->what);
        if (ps_abl_resample_draws(ps, ref, (uint64_t)ex->seed, where, s->draws, e) != 0) return -1;
    }
    if (ex->mlp_means_under && ex->abl_group == PS_GROUP_PER_TEMPLATE_POSITION)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: mlp_means: under_head_ablation takes per_position or all_positions means", s->what);
    (void)mc;
    return 0;
}

// The reference means, computed the first time a chunk (or the search) needs them.
static int need_means(ps_producer_ctx *cx, const ps_product *p, abl_state *s, ps_error *e) {
    const ps_experiment *ex = p->ex;
    if (ex->abl_with != PS_ABL_MEAN || s->means_ready) return 0;
    char where[260];
    snprintf(where, sizeof where, "%s: reference", s->what);
    if (ps_ref_means_compute_heads(cx->m, cx->be, ref_of(cx->ps, p), (ps_mean_group)ex->abl_group, s->ref_group, s->n_groups ? s->n_groups : 1,
                                   ex->heads_at_result, where, &s->means, e) != 0)
        return -1;
    s->means_ready = 1;
    return 0;
}

static int set_attrs(ps_table *t, const ps_experiment *ex, const ps_prompt_set *ref, ps_error *e) {
    int rc = ps_table_attr_str(t, "method", ps_abl_method_name(ex->abl_with), e) ||
             ps_table_attr_str(t, "group", ex->abl_with == PS_ABL_MEAN ? ps_mean_group_name(ex->abl_group) : "", e) ||
             ps_table_attr_str(t, "mlp_means", ex->mlp_means_under ? "under_head_ablation" : "reference", e);
    if (rc == 0 && ref) rc = ps_table_attr_str(t, "reference", ex->ref_path ? ex->ref_path : "", e) ||
                             ps_table_attr_i64(t, "reference_prompts", ref->n, e);
    if (rc == 0 && ex->abl_with == PS_ABL_RESAMPLE) rc = ps_table_attr_i64(t, "seed", ex->seed, e);
    if (rc == 0 && ex->heads_at_result) rc = ps_table_attr_str(t, "head_site", "result", e);
    return rc ? -1 : 0;
}

// ---- ablation: per prompt ----

static int abl_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    if (abl_init_common(mc, ps, p, e) != 0) return -1;
    abl_state *s = p->state;
    const ps_experiment *ex = p->ex;
    if (build_sets(mc, ex, s, e) != 0) return -1;
    if (ex->mlp_means_under && !ex->keep)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: mlp_means: under_head_ablation is the MLP means of a kept circuit (\"keep\")", s->what);
    if ((ex->n_compl_k > 0 || ex->minimality) && build_score_rows(ex, s, e) != 0) return -1;
    ps_axis ax = {.name = "component", .len = s->n_sets};
    ax.value = malloc((size_t)s->n_sets * sizeof(int64_t));
    ax.label = malloc((size_t)s->n_sets * sizeof(char *));
    int rc = ax.value && ax.label ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    for (int64_t c = 0; rc == 0 && c < s->n_sets; c++) { ax.value[c] = c; ax.label[c] = s->has_rows ? s->labels[c] : ex->cells[c].label; }
    if (rc == 0) rc = ps_table_init(p->t, ex->name, "ablation", 1, ps->n, 1, &ax, 1, e);
    free(ax.value);
    free(ax.label);
    if (rc == 0) rc = set_attrs(p->t, ex, ref_of(ps, p), e);
    // The scores follow from the means, so they need no table of their own (which --shard could not split).
    if (rc == 0 && (ps_table_attr_str(p->t, "circuit_score", "100 x mean / mean(baseline clean)", e) ||
                    ps_table_attr_str(p->t, "faithfulness", "mean / mean(baseline clean)", e)))
        rc = -1;
    return rc;
}

static int abl_chunk(ps_producer_ctx *cx, ps_product *const *prods, int64_t n_prods, const ps_chunk *ch, ps_error *e) {
    // The chunk's prompts as a prompt set of their own (borrowed prompts).
    ps_prompt_set sub = {.n = ch->n};
    sub.p = malloc((size_t)(ch->n ? ch->n : 1) * sizeof *sub.p);
    int64_t *groups = malloc((size_t)(ch->n ? ch->n : 1) * sizeof *groups), *draws = malloc((size_t)(ch->n ? ch->n : 1) * sizeof *draws);
    int rc = sub.p && groups && draws ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a chunk of %lld prompts", (long long)ch->n);
    for (int64_t i = 0; rc == 0 && i < ch->n; i++) {
        sub.p[i] = cx->ps->p[ch->prompts[i]];
        if (sub.p[i].T > sub.T_max) sub.T_max = sub.p[i].T;
    }
    for (int64_t k = 0; rc == 0 && k < n_prods; k++) {
        const ps_product *p = prods[k];
        const ps_experiment *ex = p->ex;
        abl_state *s = p->state;
        ps_table *t = p->t;
        if (cx->o->dry_run) {
            cx->rr->rows_planned += ch->n * (s->n_sets + 1);
            continue;
        }
        if ((rc = ps_producer_stopped(cx, e)) != 0 || (rc = need_means(cx, p, s, e)) != 0) break;
        for (int64_t i = 0; i < ch->n; i++) {
            groups[i] = s->prompt_group ? s->prompt_group[ch->prompts[i]] : 0;
            draws[i] = s->draws ? s->draws[ch->prompts[i]] : 0;
        }
        ps_ablator a = {.m = cx->m, .be = cx->be, .ps = &sub, .metric = cx->metric, .method = (ps_abl_method)ex->abl_with,
                        .heads_at_result = ex->heads_at_result, .means = s->means_ready ? &s->means : NULL, .group_of = groups, .ref = ref_of(cx->ps, p),
                        .seed = (uint64_t)ex->seed, .draws = s->draws ? draws : NULL, .batch_rows = cx->o->batch_rows,
                        // The chunk's clean runs: a row starts at its first ablation (the unablated metric is then
                        // only an unembedding); --naive runs every row from the embedding.
                        .base = cx->o->naive ? NULL : ch->clean};
        if ((rc = ps_ablator_init(&a, s->what, e)) != 0) break;
        // seqcont's MLP means under the kept circuit's head ablation: one circuit, so computed once per run.
        if (ex->mlp_means_under && ex->keep && !s->mlp_means_ready) {
            if ((rc = ps_ablator_mlp_means_under(&a, a.ref, &s->sets[0], &s->mlp_means, e)) != 0) { ps_ablator_free(&a); break; }
            s->mlp_means_ready = 1;
        }
        for (int64_t c = 0; c < s->n_sets; c++) s->sets[c].mlp_means = s->mlp_means_ready ? &s->mlp_means : NULL;
        float *vals = malloc((size_t)(s->n_sets * ch->n) * sizeof(float));
        if (!vals) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", t->name);
        if (rc == 0) rc = ps_ablator_score(&a, s->sets, s->n_sets, vals, e);
        for (int64_t c = 0; rc == 0 && c < s->n_sets; c++)
            for (int64_t i = 0; i < ch->n; i++) t->values[ch->prompts[i] * t->n_cells + c] = vals[c * ch->n + i];
        t->patches_run += a.stats.rows_run;
        t->flops += a.stats.flops;
        cx->rr->rows_planned += a.stats.rows_run;
        cx->done += ch->n * s->n_sets;
        ps_producer_progress(cx, 0);
        free(vals);
        ps_ablator_free(&a);
    }
    free(sub.p);
    free(groups);
    free(draws);
    return rc;
}

// Rows start from the chunk's clean runs; resample and corrupted sources are the ablator's own runs.
static unsigned abl_reads(const ps_experiment *ex) {
    (void)ex;
    return PS_READS_CLEAN;
}

const ps_producer ps_ablation_producer = {
    .kind = "ablation", .per_prompt = 1, .init = abl_init, .chunk = abl_chunk, .free_state = abl_free, .reads = abl_reads,
};

// ---- circuit_search: once, over every prompt ----

static int search_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    if (abl_init_common(mc, ps, p, e) != 0) return -1;
    const ps_experiment *ex = p->ex;
    if (ex->abl_with != PS_ABL_MEAN && ex->abl_with != PS_ABL_ZERO && ex->abl_with != PS_ABL_RESAMPLE)
        return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): with: the search ablates with zero, mean or resample", (long long)p->idx,
                       ex->name);
    // The trace's length is known once the search ran: a one-step placeholder until then (the journal holds no
    // rows of a table that is not per prompt, so once() lays it out again).
    static const char *const fields[4] = {"pass", "score_before", "score", "removed"};
    int64_t v1 = 0, v4[4] = {0, 1, 2, 3};
    ps_axis ax[2] = {{.name = "step", .len = 1, .value = &v1}, {.name = "field", .len = 4, .value = v4, .label = (char **)fields}};
    if (ps_table_init(p->t, ex->name, "circuit_search", 0, 1, 2, ax, 0, e) != 0) return -1;
    return set_attrs(p->t, ex, ref_of(ps, p), e);
}

// The chunk's clean baselines (the unablated model's runs: every search's first circuit) kept for the run's first
// search, when every prompt's fit the search's budget for runs. A resumed or sharded run leaves some prompts to no
// chunk: the search then runs its first circuit itself.
static int search_keep(ps_producer_ctx *cx, ps_product *const *prods, int64_t n_prods, const ps_chunk *ch, ps_error *e) {
    abl_state *s = n_prods > 0 ? prods[0]->state : NULL;
    const ps_prompt_set *ps = cx->ps;
    if (!s || s->no_full_runs || cx->o->naive || !ch->clean_to_take || prods[0]->ex->heads_at_result) return 0;
    if (!s->full_runs) {
        size_t bytes = 0;
        for (int64_t i = 0; i < ps->n; i++) bytes += ps_cache_floats(&cx->m->cfg, ps->p[i].T, 0) * sizeof(float);
        if (bytes > (cx->o->cache_budget ? cx->o->cache_budget : PS_SEARCH_BASE_BUDGET)) { s->no_full_runs = 1; return 0; }
        if (!(s->full_runs = calloc((size_t)(ps->n ? ps->n : 1), sizeof *s->full_runs))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
        s->full_len = ps->n;
    }
    for (int64_t i = 0; i < ch->n; i++) {
        const int64_t pi = ch->prompts[i];
        if (s->full_runs[pi].memory || !ch->clean_to_take[i].memory) continue;
        cx->rr->held_cache_bytes += ch->clean_to_take[i].n_floats * sizeof(float);
        s->n_full++;
        if (cx->o->dry_run) continue;   // counted as a real run would hold it, not taken
        s->full_runs[pi] = ch->clean_to_take[i];
        memset(&ch->clean_to_take[i], 0, sizeof ch->clean_to_take[i]);
    }
    return 0;
}

// The search's first circuit starts from the clean baselines' runs (search_keep), unless --naive or hook_result heads.
// Its rows patch z and mlp_out (heads_at_result: its own runs instead), and capture nothing.
static unsigned search_reads(const ps_experiment *ex) { return ex->heads_at_result ? 0 : PS_READS_CLEAN | PS_READS_CLEAN_AS_BASE; }

static int search_once(ps_producer_ctx *cx, ps_product *const *prods, int64_t n_prods, ps_error *e) {
    int rc = 0;
    for (int64_t k = 0; rc == 0 && k < n_prods; k++) {
        const ps_product *p = prods[k];
        const ps_experiment *ex = p->ex;
        abl_state *s = p->state;
        ps_search_opts o = {.threshold = ex->threshold, .one_iter = ex->one_pass, .mlp_means_under_heads = ex->mlp_means_under,
                            .speculate = ex->speculate, .ref = ref_of(cx->ps, p), .naive = cx->o->naive, .base_budget = cx->o->cache_budget};
        // The runs the search holds through its steps, counted in a dry run as in a real one: the kept baselines
        // when every prompt's was kept (they become its first circuit's runs), else its own.
        const ps_ablator sized = {.m = cx->m, .ps = cx->ps, .heads_at_result = ex->heads_at_result};
        size_t base_bytes, ref_bytes;
        ps_search_run_bytes(&sized, &o, &base_bytes, &ref_bytes);
        if (base_bytes && s->n_full == cx->ps->n) base_bytes = cx->rr->held_cache_bytes;
        if (base_bytes + ref_bytes > cx->rr->peak_cache_bytes) cx->rr->peak_cache_bytes = base_bytes + ref_bytes;
        cx->rr->held_cache_bytes = 0;
        if (cx->o->dry_run) continue;
        if ((rc = ps_producer_stopped(cx, e)) != 0 || (rc = need_means(cx, p, s, e)) != 0) break;
        ps_ablator a = {.m = cx->m, .be = cx->be, .ps = cx->ps, .metric = cx->metric, .method = (ps_abl_method)ex->abl_with,
                        .heads_at_result = ex->heads_at_result, .means = s->means_ready ? &s->means : NULL, .group_of = s->prompt_group, .ref = o.ref,
                        .seed = (uint64_t)ex->seed, .draws = s->draws, .batch_rows = cx->o->batch_rows, .full_later = 1};
        if ((rc = ps_ablator_init(&a, s->what, e)) != 0) break;
        // The clean baselines taken from the chunks, when every prompt's is there (the search owns them from the call on).
        ps_cache *full = s->full_runs && s->n_full == cx->ps->n ? s->full_runs : NULL;
        o.full_runs = full;
        if (full) {
            s->full_runs = NULL;   // the caches are the search's now; the array is freed after the call
            s->full_len = s->n_full = 0;
        } else {
            free_full_runs(cx->be, s);   // some prompts came from no chunk: the search runs its first circuit itself
        }
        ps_search_result r;
        ps_table t;
        rc = ps_circuit_search(&a, &o, &r, e);
        free(full);
        if (rc == 0) {
            rc = ps_search_table(&r, &o, &cx->m->cfg, ex->name, &t, e);
            if (rc == 0 && (set_attrs(&t, ex, a.ref, e) != 0 || ps_table_attr_f64(&t, "full_mean", a.full_mean, e) != 0)) {
                ps_table_free(&t);
                rc = -1;
            }
            if (rc == 0) {
                t.patches_run = a.stats.rows_run;
                t.flops = a.stats.flops;
                cx->rr->rows_planned += a.stats.rows_run;
                ps_table_free(p->t);
                *p->t = t;
            }
            ps_search_result_free(&r);
        }
        ps_ablator_free(&a);
    }
    return rc;
}

const ps_producer ps_circuit_search_producer = {
    .kind = "circuit_search", .per_prompt = 0, .init = search_init, .keep = search_keep, .once = search_once, .free_state = abl_free,
    .reads = search_reads,
};

// ---- reference_means: the means a mean-ablating experiment used (not per prompt; alike in every shard) ----

// Axes: layer x group x pos (the reference prompts' positions, or 1 for all_positions) x unit, the units the
// three sites laid end to end: z (head h, dim d at h * d_head + d), then mlp_out (d_model), then mlp_post (d_mlp).
static int means_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    const ps_prompt_set *ref = ps->ref && ex->means_of < ps->n_ref ? &ps->ref[ex->means_of] : NULL;
    if (!ref || ref->n < 1) return ps_fail(e, PS_EXIT_RUNTIME, "%s: no reference prompts", ex->name);
    int64_t G = 1;
    for (int64_t i = 1; i < ref->n; i++) {
        int64_t j = 0;
        while (j < i && ref->p[j].group && ref->p[i].group && strcmp(ref->p[j].group, ref->p[i].group)) j++;
        G += j == i;
    }
    const ps_experiment *parent = p->ex - (p->idx - ex->means_of);   // experiments are one array
    if (parent->abl_group != PS_GROUP_PER_TEMPLATE_POSITION) G = 1;
    const int64_t rows = parent->abl_group == PS_GROUP_ALL_POSITIONS ? 1 : ref->p[0].T;
    const int64_t hw = parent->heads_at_result ? mc->n_heads * mc->d_model : mc->n_heads * mc->d_head;   // hook_result or hook_z
    const int64_t units = hw + mc->d_model + mc->d_mlp, lens[4] = {mc->n_layers, G, rows, units};
    static const char *const names[4] = {"layer", "group", "pos", "unit"};
    ps_axis ax[4] = {{0}};
    int rc = 0;
    for (int k = 0; k < 4 && rc == 0; k++) {
        ax[k] = (ps_axis){.name = (char *)names[k], .len = lens[k], .value = malloc((size_t)lens[k] * sizeof(int64_t))};
        if (!ax[k].value) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
        for (int64_t i = 0; rc == 0 && i < lens[k]; i++) ax[k].value[i] = i;
    }
    if (rc == 0) rc = ps_table_init(p->t, ex->name, "reference_means", 0, 1, 4, ax, 0, e);
    for (int k = 0; k < 4; k++) free(ax[k].value);
    char units_doc[200];
    snprintf(units_doc, sizeof units_doc, "%s [0, %lld) (head h, dim d at h*%lld+d), hook_mlp_out [%lld, %lld), mlp hook_post [%lld, %lld)",
             parent->heads_at_result ? "hook_result" : "hook_z", (long long)hw, (long long)(hw / mc->n_heads), (long long)hw,
             (long long)(hw + mc->d_model), (long long)(hw + mc->d_model), (long long)units);
    if (rc == 0 && (ps_table_attr_str(p->t, "of", parent->name, e) || ps_table_attr_str(p->t, "units", units_doc, e) ||
                    set_attrs(p->t, parent, ref, e) ||
                    ps_table_attr_str(p->t, "note", "plain means over the reference run; mlp_means under_head_ablation ones depend on the circuit and are not stored", e)))
        rc = -1;
    return rc;
}

static int means_once(ps_producer_ctx *cx, ps_product *const *prods, int64_t n_prods, ps_error *e) {
    for (int64_t k = 0; k < n_prods; k++) {
        const ps_product *p = prods[k];
        ps_product *parent = &cx->rr->products[p->ex->means_of];
        abl_state *s = parent->state;
        if (cx->o->dry_run) continue;
        // The parent's means when it computed them (once per run), else now (e.g. every chunk was resumed).
        if (need_means(cx, parent, s, e) != 0) return -1;
        ps_table *t = p->t;
        const ps_ref_means *rm = &s->means;
        const int64_t L = t->axes[0].len, G = t->axes[1].len, R = t->axes[2].len, U = t->axes[3].len;
        if (rm->n_groups != G || rm->rows != R) return ps_fail(e, PS_EXIT_RUNTIME, "%s: means of another shape", t->name);
        for (int64_t l = 0; l < L; l++)
            for (int64_t g = 0; g < G; g++)
                for (int64_t r = 0; r < R; r++) {
                    float *dst = t->values + ((l * G + g) * R + r) * U;
                    // The heads' site first (hook_result or hook_z: the other is not computed), then the MLP's.
                    static const int order[PS_MS_COUNT] = {PS_MS_RESULT, PS_MS_Z, PS_MS_MLP_OUT, PS_MS_MLP_POST};
                    for (int o = 0; o < PS_MS_COUNT; o++) {
                        const int ms = order[o];
                        if (!rm->site[ms]) continue;
                        const int64_t w = rm->width[ms];
                        memcpy(dst, rm->site[ms] + ((l * G + g) * R + r) * w, (size_t)w * sizeof(float));
                        dst += w;
                    }
                }
    }
    return 0;
}

const ps_producer ps_reference_means_producer = {
    .kind = "reference_means", .derived = 1, .per_prompt = 0, .init = means_init, .once = means_once, .free_state = NULL,
};

// ---- circuit_scores: completeness and minimality from an ablation's rows over every prompt (not per prompt) ----

// Completeness: axes K x field; minimality: component (each v of the circuit) x field.
static const char *const compl_fields[3] = {"F_C_minus_K", "F_M_minus_K", "completeness"};
static const char *const min_fields[4] = {"F_C_minus_K", "F_C_minus_K_v", "abs_change", "minimality"};

static int scores_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    (void)mc; (void)ps;
    const ps_experiment *ex = p->ex, *parent = p->ex - (p->idx - ex->scores_of);   // experiments are one array
    const int mini = ex->scores_minimality;
    const int64_t n = mini ? parent->cells[0].n : parent->n_compl_k, nf = mini ? 4 : 3;
    ps_axis ax[2] = {{.name = mini ? "component" : "K", .len = n}, {.name = "field", .len = nf, .label = (char **)(mini ? min_fields : compl_fields)}};
    int64_t *vals = malloc((size_t)(n + nf) * sizeof *vals);
    char **labels = calloc((size_t)(n ? n : 1), sizeof *labels);
    int rc = vals && labels ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    for (int64_t i = 0; rc == 0 && i < n + nf; i++) vals[i] = i < n ? i : i - n;
    for (int64_t i = 0; rc == 0 && i < n; i++) labels[i] = mini ? parent->cells[0].c[i].name : parent->compl_k[i].label;
    ax[0].value = vals;
    ax[0].label = labels;
    ax[1].value = vals + n;
    if (rc == 0) rc = ps_table_init(p->t, ex->name, "circuit_scores", 0, 1, 2, ax, 0, e);
    // Minimality's K per component, as one attribute ("h1.1: h0.0+mlp0; ..."; empty K's left out).
    size_t klen = 1;
    for (int64_t j = 0; j < parent->n_min_k; j++) {
        klen += strlen(parent->min_k[j].label) + 4;
        for (int64_t q = 0; q < parent->min_k[j].n; q++) klen += strlen(parent->min_k[j].c[q].name) + 1;
    }
    char *kattr = rc == 0 ? calloc(klen, 1) : NULL;
    for (int64_t j = 0, at = 0; kattr && j < parent->n_min_k; j++) {
        at += snprintf(kattr + at, klen - (size_t)at, "%s%s:", j ? "; " : "", parent->min_k[j].label);
        for (int64_t q = 0; q < parent->min_k[j].n; q++)
            at += snprintf(kattr + at, klen - (size_t)at, "%s%s", q ? "+" : " ", parent->min_k[j].c[q].name);
    }
    if (rc == 0 && !kattr) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    if (rc == 0 && (ps_table_attr_str(p->t, "of", parent->name, e) || set_attrs(p->t, parent, NULL, e) ||
                    ps_table_attr_str(p->t, "F", "mean metric over the prompts, everything outside the set kept ablated (of's rows)", e) ||
                    ps_table_attr_str(p->t, mini ? "minimality" : "completeness",
                                      mini ? "|F(C\\(K_v+{v})) - F(C\\K_v)| / F(M) (ARENA); abs_change: the same without / F(M) (Wang et al. 2022)"
                                           : "|F(C\\K) - F(M\\K)| (Wang et al. 2022); M\\K: K ablated where C holds it, nothing else", e) ||
                    (mini && ps_table_attr_str(p->t, "K_v", kattr[0] ? kattr : "(every K_v empty)", e))))
        rc = -1;
    free(kattr);
    free(vals);
    free(labels);
    return rc;
}

static int scores_once(ps_producer_ctx *cx, ps_product *const *prods, int64_t n_prods, ps_error *e) {
    for (int64_t k = 0; k < n_prods; k++) {
        const ps_product *p = prods[k];
        if (cx->o->dry_run) continue;
        const ps_product *parent = &cx->rr->products[p->ex->scores_of];
        const abl_state *s = parent->state;
        const ps_table *pt = parent->t;
        if (!s || !s->has_rows || pt->n_cells != s->n_sets) return ps_fail(e, PS_EXIT_RUNTIME, "%s: its rows are missing", p->t->name);
        // F of every row's set: the mean over the prompts that have it.
        double *F = malloc((size_t)s->n_sets * sizeof *F), *out = malloc((size_t)(2 * (s->rows.n_k + 2 * s->rows.n_v) + 2) * sizeof *out);
        if (!F || !out) { free(F); free(out); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); }
        for (int64_t c = 0; c < s->n_sets; c++) {
            double sum = 0;
            int64_t cnt = 0;
            for (int64_t i = 0; i < pt->n_rows; i++) {
                const float v = pt->values[i * pt->n_cells + c];
                if (v == v) { sum += v; cnt++; }
            }
            F[c] = cnt ? sum / (double)cnt : NAN;
        }
        ps_table *t = p->t;
        double *compl = out, *mini = out + s->rows.n_k;
        ps_circuit_scores(&s->rows, F, compl, mini);
        if (!p->ex->scores_minimality)
            for (int64_t j = 0; j < s->rows.n_k; j++) {
                t->values[j * 3 + 0] = (float)F[ps_cr_c_minus_k(j)];
                t->values[j * 3 + 1] = (float)F[ps_cr_m_minus_k(j)];
                t->values[j * 3 + 2] = (float)compl[j];
            }
        else
            for (int64_t v = 0; v < s->rows.n_v; v++) {
                t->values[v * 4 + 0] = (float)F[ps_cr_c_minus_kv(&s->rows, v)];
                t->values[v * 4 + 1] = (float)F[ps_cr_c_minus_kv(&s->rows, v) + 1];
                t->values[v * 4 + 2] = (float)mini[2 * v];
                t->values[v * 4 + 3] = (float)mini[2 * v + 1];
            }
        const int rc = ps_table_attr_f64(t, "F_C", F[PS_CR_C], e) || ps_table_attr_f64(t, "F_M", F[PS_CR_M], e);
        free(F);
        free(out);
        if (rc) return -1;
    }
    return 0;
}

const ps_producer ps_circuit_scores_producer = {
    .kind = "circuit_scores", .derived = 1, .per_prompt = 0, .init = scores_init, .once = scores_once, .free_state = NULL,
};
