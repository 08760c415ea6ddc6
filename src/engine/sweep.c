// Patching sweeps: an experiment's axes (layer, pos, head, neuron), the patch of each cell for each prompt,
// and the table (kind "patch_sweep") each sweep's values go to.
#include "engine_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
// ---------------------------------------------------------------------------------------------
// Sweep layout

int64_t ps_prompt_role(const ps_prompt *p, const char *name) {
    for (int64_t r = 0; r < p->n_roles; r++)
        if (!strcmp(p->role_name[r], name)) return p->role_pos[r];
    return -1;
}

int64_t ps_site_heads(const ps_model_config *mc, ps_site s) {
    return (s == PS_SITE_K || s == PS_SITE_V) ? mc->n_kv_heads : mc->n_heads;
}

int ps_has_pos(ps_layout l) { return l == PS_BY_LAYER_POS || l == PS_BY_LAYER_POS_HEAD; }
int ps_has_head(ps_layout l) { return l == PS_BY_LAYER_HEAD || l == PS_BY_LAYER_POS_HEAD; }

static int64_t *range_or_list(const int64_t *list, int64_t n_list, int64_t n_all, int64_t *n_out) {
    int64_t n = list ? n_list : n_all;
    int64_t *v = malloc((size_t)(n ? n : 1) * sizeof(int64_t));
    for (int64_t i = 0; v && i < n; i++) v[i] = list ? list[i] : i;
    *n_out = n;
    return v;
}

int ps_sweep_init(ps_sweep *sw, const ps_experiment *ex, int64_t idx, const ps_model_config *mc, const ps_prompt_set *ps,
                      ps_error *e) {
    memset(sw, 0, sizeof *sw);
    sw->ex = ex;
    const int64_t L = mc->n_layers, Hs = ps_site_heads(mc, ex->site), M = mc->d_mlp;
    if (!ps_array_in_model(mc, ps_site_array(ex->site)))
        return ps_fail(e, PS_EXIT_BADINPUT, "experiments[%lld] (%s): site %s: %s", (long long)idx, ex->name, ps_site_name(ex->site),
                       ps_site_absent_why(mc, ex->site));
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
    if (ps_has_pos(ex->layout)) {
        sw->axis_name[a] = "pos";
        sw->axis_value[a] = range_or_list(ex->positions, ex->n_positions, ps->T_max, &sw->axis_len[a]);
        a++;
    }
    if (ps_has_head(ex->layout)) {
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
    for (int i = 0; i < a; i++) {
        if (!sw->axis_value[i]) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the axes of %s", ex->name);
        sw->n_cells *= sw->axis_len[i];
    }
    return 0;
}

// The table of a sweep: its axes as the file shows them. A position named by role is labelled with the role's
// name and valued with prompt 0's index of it; other positions are labelled by the store (prompt 0's tokens).
int ps_sweep_table_init(ps_table *t, const ps_sweep *sw, const ps_prompt_set *ps, ps_error *e) {
    const ps_experiment *ex = sw->ex;
    ps_axis axes[3];
    int64_t *pos_vals = NULL;
    int rc = 0;
    for (int a = 0; a < sw->n_axes; a++) {
        axes[a] = (ps_axis){.name = (char *)sw->axis_name[a], .len = sw->axis_len[a], .value = sw->axis_value[a]};
        if (strcmp(sw->axis_name[a], "pos") != 0 || !ex->position_role) continue;
        pos_vals = malloc((size_t)sw->axis_len[a] * sizeof(int64_t));
        if (!pos_vals) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the axes of %s", ex->name);
        for (int64_t k = 0; k < sw->axis_len[a]; k++) {
            const char *role = ex->position_role[k];
            pos_vals[k] = role ? ps_prompt_role(&ps->p[0], role) : sw->axis_value[a][k];
        }
        axes[a].value = pos_vals;
        axes[a].label = ex->position_role;
    }
    if (ps_table_init(t, ex->name, ex->kind ? ex->kind : "patch_sweep", 1, ps->n, sw->n_axes, axes, 1, e) != 0 ||
        ps_table_attr_str(t, "site", ps_site_name(ex->site), e) != 0 ||
        ps_table_attr_str(t, "layout", ps_layout_name(ex->layout), e) != 0 ||
        ps_table_attr_str(t, "direction", ps_direction_name(ex->direction), e) != 0)
        rc = -1;
    free(pos_vals);
    return rc;
}

// The patch of one cell of a sweep for one prompt; returns 0 when the cell does not apply to the prompt.
int ps_cell_patch(const ps_sweep *sw, int64_t cell, const ps_prompt *p, ps_patch *pt) {
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
    if (ps_has_pos(ex->layout)) {
        int64_t pos = sw->axis_value[a][idx[a]];
        if (ex->position_role && ex->position_role[idx[a]]) pos = ps_prompt_role(p, ex->position_role[idx[a]]);
        else if (ex->positions && pos < 0) pos += p->T_prompt; // negative positions count from the prompt's end
        if (pos < 0 || pos >= p->T) return 0;
        pt->pos = pos;
        a++;
    }
    if (ps_has_head(ex->layout)) { pt->head = sw->axis_value[a][idx[a]]; a++; }
    if (ex->layout == PS_BY_LAYER_NEURON) { pt->neuron = sw->axis_value[a][idx[a]]; a++; }
    return 1;
}
