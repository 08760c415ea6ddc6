// A rerun whose run-wide inputs match a finished output reuses that file's tables of the experiments whose own
// identity still matches (values copied exactly), computes the new and the changed ones (and what they read), and
// drops the tables of experiments no longer in the config, saying on stderr which and why, one line each.
// Works on result tables alone (ps_table.h): no producer's kind is named here.
#include "cli.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *table_str(const ps_table *t, const char *key) {
    const ps_attr *a = ps_table_attr(t, key);
    return a && a->type == PS_ATTR_STR ? a->s : NULL;
}

const char *ps_cli_experiment_spec(const ps_experiment *x) { return x->canonical ? x->canonical : "null"; }

void ps_cli_reuse_free(ps_reuse_plan *p) {
    free(p->stored_of);
    free(p->sub);
    free(p->sub_of);
    free(p->ps_sub.ref);
    ps_stored_run_free(&p->stored);
    memset(p, 0, sizeof *p);
}

int ps_cli_reuse_plan(ps_reuse_plan *p, const ps_config *cfg, const ps_prompt_set *ps, const ps_cli_ident *ci,
                      ps_stored_run *stored, const char *out, ps_error *e) {
    memset(p, 0, sizeof *p);
    const int64_t n = cfg->n_experiments;
    if (stored) { p->stored = *stored; memset(stored, 0, sizeof *stored); }
    const ps_stored_run *sr = &p->stored;
    p->stored_of = malloc((size_t)(n ? n : 1) * sizeof *p->stored_of);
    p->sub = calloc((size_t)(n ? n : 1), sizeof *p->sub);
    p->sub_of = malloc((size_t)(n ? n : 1) * sizeof *p->sub_of);
    char (*why)[300] = calloc((size_t)(n ? n : 1), sizeof *why);
    if (!p->stored_of || !p->sub || !p->sub_of || !why) {
        free(why);
        ps_cli_reuse_free(p);
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    }
    // The table of the same name whose identity (the run-wide one, its config, its own files, what it reads) matches.
    for (int64_t i = 0; i < n; i++) {
        const ps_experiment *x = &cfg->experiments[i];
        p->stored_of[i] = -1;
        const ps_table *st = NULL;
        int64_t k = 0;
        for (; k < sr->n_tables && !st; k++)
            if (!strcmp(sr->tables[k].name, x->name)) st = &sr->tables[k];
        if (!st) { snprintf(why[i], sizeof why[i], "new, computing"); continue; }
        const char *sid = table_str(st, "identity"), *scfg = table_str(st, "config");
        if (sid && !strcmp(sid, ci->exp[i])) { p->stored_of[i] = k - 1; continue; }
        char field[200];
        const int64_t d = ps_cli_experiment_dependency(cfg, i);
        if (scfg && ps_canonical_first_diff(scfg, ps_cli_experiment_spec(x), field, sizeof field) == 0)
            snprintf(why[i], sizeof why[i], "config changed (field \"%s\"), recomputing", field);
        else if (scfg && strcmp(scfg, ps_cli_experiment_spec(x)))
            snprintf(why[i], sizeof why[i], "config changed, recomputing");
        else if (d >= 0)
            snprintf(why[i], sizeof why[i], "the experiment it reads (\"%s\") changed, recomputing", cfg->experiments[d].name);
        else
            snprintf(why[i], sizeof why[i], "%s, recomputing", scfg ? "its own input files changed" : "its table has no identity");
    }
    // What a computed experiment reads while it runs is computed with it.
    for (int changed = 1; changed;) {
        changed = 0;
        for (int64_t i = 0; i < n; i++) {
            const int64_t d = ps_cli_experiment_dependency(cfg, i);
            if (p->stored_of[i] >= 0 || d < 0 || p->stored_of[d] < 0) continue;
            p->stored_of[d] = -1;
            snprintf(why[d], sizeof why[d], "unchanged, but experiment \"%.200s\" reads it while it runs, recomputing", cfg->experiments[i].name);
            changed = 1;
        }
    }
    for (int64_t i = 0; i < n; i++) {
        if (p->stored_of[i] >= 0) continue;
        p->sub_of[p->n_sub] = i;
        p->sub[p->n_sub++] = cfg->experiments[i]; // (a shallow copy: cfg owns its members)
    }
    // Indices between experiments point into the computed list (its order is the config's).
    for (int64_t k = 0; k < p->n_sub; k++) {
        ps_experiment *x = &p->sub[k];
        if (!x->kind || strcmp(x->kind, "reference_means")) continue;
        for (int64_t j = 0; j < p->n_sub; j++)
            if (p->sub_of[j] == x->means_of) { x->means_of = j; break; }
    }
    p->ps_sub = *ps;
    p->ps_sub.ref = NULL;
    p->ps_sub.n_ref = 0;
    if (ps->ref && p->n_sub > 0) {
        if (!(p->ps_sub.ref = calloc((size_t)p->n_sub, sizeof *p->ps_sub.ref))) {
            free(why);
            ps_cli_reuse_free(p);
            return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
        }
        for (int64_t k = 0; k < p->n_sub; k++)
            if (p->sub_of[k] < ps->n_ref) p->ps_sub.ref[k] = ps->ref[p->sub_of[k]]; // borrowed entries
        p->ps_sub.n_ref = p->n_sub;
    }
    // The journal holds the computed experiments' tables: its identity is the run-wide one and theirs.
    size_t len = 80 + (size_t)p->n_sub * 65, at;
    char *buf = malloc(len);
    if (!buf) { free(why); ps_cli_reuse_free(p); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); }
    at = (size_t)snprintf(buf, len, "journal\n%s\n", ci->base);
    for (int64_t k = 0; k < p->n_sub; k++) at += (size_t)snprintf(buf + at, len - at, "%s\n", ci->exp[p->sub_of[k]]);
    ps_sha256_hex(buf, at, p->jident);
    free(buf);
    if (sr->n_tables > 0 || stored) {
        char eo[512], en[512];
        ps_escape(out, eo, sizeof eo);
        for (int64_t i = 0; i < n; i++) {
            ps_escape(cfg->experiments[i].name, en, sizeof en);
            if (p->stored_of[i] >= 0) fprintf(stderr, "patchsweep: experiment \"%s\": unchanged, reused from %s\n", en, eo);
            else fprintf(stderr, "patchsweep: experiment \"%s\": %s\n", en, why[i]);
        }
        for (int64_t k = 0; k < sr->n_tables; k++) {
            int kept = 0;
            for (int64_t i = 0; i < n && !kept; i++) kept = !strcmp(cfg->experiments[i].name, sr->tables[k].name);
            if (!kept)
                fprintf(stderr, "patchsweep: experiment \"%s\": no longer in the config, dropped\n",
                        ps_escape(sr->tables[k].name, en, sizeof en));
        }
    }
    free(why);
    return 0;
}

int ps_cli_tag_tables(ps_table *tables, int64_t n_tables, const ps_reuse_plan *p, const ps_config *cfg, const ps_cli_ident *ci,
                      ps_error *e) {
    for (int64_t k = 0; k < n_tables && k < p->n_sub; k++) {
        const int64_t i = p->sub_of[k];
        if (ps_table_attr_str(&tables[k], "identity", ci->exp[i], e) != 0 ||
            ps_table_attr_str(&tables[k], "config", ps_cli_experiment_spec(&cfg->experiments[i]), e) != 0)
            return -1;
    }
    return 0;
}

int ps_cli_reuse_assemble(ps_reuse_plan *p, const ps_config *cfg, ps_run_results *computed, ps_run_results *all, ps_error *e) {
    memset(all, 0, sizeof *all);
    const int64_t n = cfg->n_experiments;
    if (!(all->tables = calloc((size_t)(n ? n : 1), sizeof *all->tables))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    // The baselines: this run's where it computed anything (the same numbers: the run-wide identity matched), else the file's.
    if (computed->base.n > 0) { all->base = computed->base; memset(&computed->base, 0, sizeof computed->base); }
    else { all->base = p->stored.base; memset(&p->stored.base, 0, sizeof p->stored.base); }
    for (int64_t i = 0, k = 0; i < n; i++) {
        ps_table *src = p->stored_of[i] >= 0 ? &p->stored.tables[p->stored_of[i]] : &computed->tables[k++];
        all->tables[i] = *src; // moved: the source is left zeroed (freeing it frees nothing)
        memset(src, 0, sizeof *src);
        all->n_tables = i + 1;
    }
    all->seconds = computed->seconds;
    all->baseline_flops = computed->baseline_flops;
    return 0;
}
