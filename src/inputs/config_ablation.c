// The config keys of the "ablation" and "circuit_search" experiment kinds (ps_config.h documents them): the
// components or the circuit kept, the method, the reference dataset block and the search's settings.
#include "config_internal.h"
#include "ps_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const with_names[] = {"zero", "mean", "resample", "corrupted"};          // ps_abl_method order
static const char *const group_names[] = {"per_position", "all_positions", "per_template_position"};  // ps_mean_group
static const char *const mlp_means_names[] = {"reference", "under_head_ablation"};
static const char *const passes_names[] = {"until_stable", "one_each"};
static const char *const head_site_names[] = {"z", "result"};   // heads_at_result 0, 1

static void comp_free(ps_abl_comp *c) {
    free(c->name);
    free(c->positions);
    if (c->position_role)
        for (int64_t k = 0; k < c->n_positions; k++) free(c->position_role[k]);
    free(c->position_role);
}

void ps_cfg_ablation_free(ps_experiment *ex) {
    for (int64_t i = 0; ex->cells && i < ex->n_cells; i++) {
        for (int64_t k = 0; k < ex->cells[i].n; k++) comp_free(&ex->cells[i].c[k]);
        free(ex->cells[i].c);
        free(ex->cells[i].label);
    }
    free(ex->cells);
    for (int k = 0; k < 2; k++) {
        ps_abl_cell *cl = k ? ex->min_k : ex->compl_k;
        const int64_t n = k ? ex->n_min_k : ex->n_compl_k;
        for (int64_t i = 0; cl && i < n; i++) {
            for (int64_t j = 0; j < cl[i].n; j++) comp_free(&cl[i].c[j]);
            free(cl[i].c);
            free(cl[i].label);
        }
        free(cl);
    }
    free(ex->keep_path);
    ps_items_free(ex->ref_items, ex->n_ref_items);
    free(ex->ref_path);
}

// "h9.1", "mlp3", "n2.17": digits where the grammar has them, nothing after.
static int digits(const char **s) {
    const char *p = *s;
    while (**s >= '0' && **s <= '9') (*s)++;
    return *s > p && *s - p <= 7;
}
static int comp_name_ok(const char *s) {
    if (!strncmp(s, "mlp", 3)) { s += 3; return digits(&s) && !*s; }
    if (*s != 'h' && *s != 'n') return 0;
    s++;
    if (!digits(&s) || *s++ != '.') return 0;
    return digits(&s) && !*s;
}

// One component: "h9.1" or {"name": "h9.1", "positions": ["end"]}.
static int load_comp(ps_cfg_ctx *x, const cJSON *v, const char *p, ps_abl_comp *c) {
    static const char *const keys[] = {"name", "positions"};
    char got[200];
    const char *name = NULL;
    if (cJSON_IsString(v)) name = v->valuestring;
    else if (cJSON_IsObject(v)) {
        if (ps_cfg_check_keys(x, v, p, keys, COUNT(keys))) return -1;
        const cJSON *n = ps_cfg_member(v, "name");
        char np[PATH_MAX_LEN];
        ps_cfg_key_path(np, p, "name");
        if (!n) return ps_cfg_bad(x, np, "required key missing");
        if (cJSON_IsString(n)) name = n->valuestring;
        else {
            ps_json_describe(n, got, sizeof got);
            return ps_cfg_bad(x, np, "expected a component name such as \"h9.1\", \"mlp3\" or \"n2.17\", got %s", got);
        }
        if (ps_cfg_get_list(x, v, "positions", p, 1, &c->positions, &c->n_positions, &c->position_role)) return -1;
    }
    if (!name || !comp_name_ok(name)) {
        ps_json_describe(v, got, sizeof got);
        return ps_cfg_bad(x, p, "expected a component (\"h9.1\": head 1 of layer 9, \"mlp3\", \"n2.17\": neuron 17 of layer 2, "
                          "or {\"name\": \"h9.1\", \"positions\": [\"end\"]}), got %s", got);
    }
    return (c->name = strdup(name)) ? 0 : ps_cfg_nomem(x);
}

// A cell's components from a JSON array (ablated together), or one component.
static int load_cell(ps_cfg_ctx *x, const cJSON *v, const char *p, ps_abl_cell *cell) {
    const int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 1;
    if (n == 0) return ps_cfg_bad(x, p, "empty list of components");
    if (!(cell->c = calloc((size_t)n, sizeof *cell->c))) return ps_cfg_nomem(x);
    cell->n = n;
    size_t len = 1;
    for (int k = 0; k < n; k++) {
        char ip[PATH_MAX_LEN];
        const cJSON *it = v;
        if (cJSON_IsArray(v)) { ps_cfg_index_path(ip, p, k); it = cJSON_GetArrayItem(v, k); }
        else snprintf(ip, sizeof ip, "%s", p);
        if (load_comp(x, it, ip, &cell->c[k])) return -1;
        for (int j = 0; j < k; j++)
            if (!strcmp(cell->c[j].name, cell->c[k].name)) return ps_cfg_bad(x, ip, "\"%s\" appears twice", cell->c[k].name);
        len += strlen(cell->c[k].name) + 8;
    }
    // The cell's label: names joined by "+", "@" marking components ablated only at some positions.
    if (!(cell->label = calloc(len, 1))) return ps_cfg_nomem(x);
    for (int k = 0; k < n; k++) {
        if (k) strcat(cell->label, "+");
        strcat(cell->label, cell->c[k].name);
        if (cell->c[k].positions) strcat(cell->label, "@pos");
    }
    return 0;
}

// "keep": a list of components, or {"path": "circuit.json"} in seqcont's results format
// {"heads": [[layer, head], ...], "mlps": [layer, ...]}.
static int load_keep(ps_cfg_ctx *x, const cJSON *v, const char *p, ps_experiment *ex) {
    if (!(ex->cells = calloc(1, sizeof *ex->cells))) return ps_cfg_nomem(x);
    ex->n_cells = 1;
    ex->keep = 1;
    if (!cJSON_IsObject(v)) {
        if (!cJSON_IsArray(v)) {
            char got[200];
            ps_json_describe(v, got, sizeof got);
            return ps_cfg_bad(x, p, "expected a list of components or {\"path\": \"circuit.json\"}, got %s", got);
        }
        if (load_cell(x, v, p, &ex->cells[0])) return -1;
        free(ex->cells[0].label);
        return (ex->cells[0].label = strdup("keep")) ? 0 : ps_cfg_nomem(x);
    }
    static const char *const keys[] = {"path"};
    if (ps_cfg_check_keys(x, v, p, keys, 1) || ps_cfg_get_path(x, v, "path", p, 1, &ex->keep_path)) return -1;
    char pp[PATH_MAX_LEN];
    ps_cfg_key_path(pp, p, "path");
    ps_error je = {0};
    cJSON *doc = ps_json_parse_file(ex->keep_path, &je);
    if (!doc) return ps_cfg_bad(x, pp, "%s", je.msg);
    const cJSON *heads = cJSON_GetObjectItemCaseSensitive(doc, "heads"), *mlps = cJSON_GetObjectItemCaseSensitive(doc, "mlps");
    int rc = 0;
    const int nh = cJSON_IsArray(heads) ? cJSON_GetArraySize(heads) : -1, nm = cJSON_IsArray(mlps) ? cJSON_GetArraySize(mlps) : -1;
    if (nh < 0 || nm < 0 || nh + nm == 0) rc = ps_cfg_bad(x, pp, "%s: expected {\"heads\": [[layer, head], ...], \"mlps\": [layer, ...]}", ex->keep_path);
    ps_abl_cell *cell = &ex->cells[0];
    if (rc == 0 && !(cell->c = calloc((size_t)(nh + nm), sizeof *cell->c))) rc = ps_cfg_nomem(x);
    for (int i = 0; rc == 0 && i < nh + nm; i++) {
        char name[64];
        int64_t l = -1, h = 0;
        const cJSON *it = i < nh ? cJSON_GetArrayItem(heads, i) : cJSON_GetArrayItem(mlps, i - nh);
        if (i < nh ? cJSON_GetArraySize(it) != 2 || ps_cfg_as_int(cJSON_GetArrayItem(it, 0), &l) || ps_cfg_as_int(cJSON_GetArrayItem(it, 1), &h)
                   : ps_cfg_as_int(it, &l))
            l = -1;
        if (l < 0 || h < 0 || l > 1000000 || h > 1000000) {
            rc = ps_cfg_bad(x, pp, "%s: %s[%d]: expected %s", ex->keep_path, i < nh ? "heads" : "mlps", i < nh ? i : i - nh,
                            i < nh ? "[layer, head]" : "a layer");
            break;
        }
        if (i < nh) snprintf(name, sizeof name, "h%lld.%lld", (long long)l, (long long)h);
        else snprintf(name, sizeof name, "mlp%lld", (long long)l);
        if (!(cell->c[i].name = strdup(name))) rc = ps_cfg_nomem(x);
        cell->n = i + 1;
    }
    if (rc == 0 && !(cell->label = strdup("keep"))) rc = ps_cfg_nomem(x);
    cJSON_Delete(doc);
    return rc;
}

// One set K of completeness or minimality: a component or class name, or a list of them (classes: the
// experiment's "classes" object, {"name movers": ["h9.9", ...], ...}); expanded to component names in cell.
static int load_k(ps_cfg_ctx *x, const cJSON *v, const char *p, const cJSON *classes, const char *label, ps_abl_cell *cell) {
    const int n = cJSON_IsArray(v) ? cJSON_GetArraySize(v) : 1;
    char got[200];
    int64_t total = 0;
    for (int k = 0; k < n; k++) {
        const cJSON *it = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, k) : v;
        char ip[PATH_MAX_LEN];
        if (cJSON_IsArray(v)) ps_cfg_index_path(ip, p, k); else snprintf(ip, sizeof ip, "%s", p);
        const cJSON *cls = cJSON_IsString(it) ? cJSON_GetObjectItemCaseSensitive(classes, it->valuestring) : NULL;
        if (!cJSON_IsString(it) || (!cls && !comp_name_ok(it->valuestring))) {
            ps_json_describe(it, got, sizeof got);
            return ps_cfg_bad(x, ip, "expected a component of the circuit (\"h9.1\", \"mlp3\"), a name in \"classes\", "
                              "or a list of them, got %s", got);
        }
        total += cls ? cJSON_GetArraySize(cls) : 1;
    }
    if (!(cell->c = calloc((size_t)(total ? total : 1), sizeof *cell->c))) return ps_cfg_nomem(x);
    for (int k = 0; k < n; k++) {
        const cJSON *it = cJSON_IsArray(v) ? cJSON_GetArrayItem(v, k) : v;
        const cJSON *cls = cJSON_GetObjectItemCaseSensitive(classes, it->valuestring);
        const int m = cls ? cJSON_GetArraySize(cls) : 1;
        for (int j = 0; j < m; j++) {
            const char *name = cls ? cJSON_GetArrayItem(cls, j)->valuestring : it->valuestring;
            for (int64_t q = 0; q < cell->n; q++)
                if (!strcmp(cell->c[q].name, name)) {
                    char ip[PATH_MAX_LEN];
                    if (cJSON_IsArray(v)) ps_cfg_index_path(ip, p, k); else snprintf(ip, sizeof ip, "%s", p);
                    return ps_cfg_bad(x, ip, "\"%s\" is in this set twice", name);
                }
            if (!(cell->c[cell->n].name = strdup(name))) return ps_cfg_nomem(x);
            cell->n++;
        }
    }
    if (label) return (cell->label = strdup(label)) ? 0 : ps_cfg_nomem(x);
    // The label as written: names joined by "+".
    size_t len = 1;
    for (int k = 0; k < n; k++) len += strlen((cJSON_IsArray(v) ? cJSON_GetArrayItem(v, k) : v)->valuestring) + 1;
    if (!(cell->label = calloc(len, 1))) return ps_cfg_nomem(x);
    for (int k = 0; k < n; k++) {
        if (k) strcat(cell->label, "+");
        strcat(cell->label, (cJSON_IsArray(v) ? cJSON_GetArrayItem(v, k) : v)->valuestring);
    }
    return 0;
}

// "classes", "completeness" and "minimality" of a kept circuit.
static int load_circuit_scores(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex) {
    const cJSON *classes = ps_cfg_member(obj, "classes"), *compl = ps_cfg_member(obj, "completeness"),
                *mini = ps_cfg_member(obj, "minimality");
    char kp[PATH_MAX_LEN], got[200];
    if ((classes || compl || mini) && !ex->keep) {
        ps_cfg_key_path(kp, p, classes ? "classes" : compl ? "completeness" : "minimality");
        return ps_cfg_bad(x, kp, "scores a kept circuit: needs \"keep\"");
    }
    if ((compl || mini) && ex->mlp_means_under) {
        ps_cfg_key_path(kp, p, compl ? "completeness" : "minimality");
        return ps_cfg_bad(x, kp, "takes MLP means over the reference run (\"mlp_means\": \"reference\"), not under_head_ablation");
    }
    ps_cfg_key_path(kp, p, "classes");
    if (classes && !cJSON_IsObject(classes)) {
        ps_json_describe(classes, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected {\"class name\": [\"h9.9\", ...], ...}, got %s", got);
    }
    const cJSON *cl;
    cJSON_ArrayForEach(cl, classes) {
        char cp[PATH_MAX_LEN];
        ps_cfg_key_path(cp, kp, cl->string);
        if (comp_name_ok(cl->string)) return ps_cfg_bad(x, cp, "a class name cannot be a component's name");
        if (!cJSON_IsArray(cl) || cJSON_GetArraySize(cl) == 0) {
            ps_json_describe(cl, got, sizeof got);
            return ps_cfg_bad(x, cp, "expected a non-empty list of the circuit's components, got %s", got);
        }
        for (int k = 0; k < cJSON_GetArraySize(cl); k++) {
            const cJSON *it = cJSON_GetArrayItem(cl, k);
            if (!cJSON_IsString(it) || !comp_name_ok(it->valuestring)) {
                char ip[PATH_MAX_LEN];
                ps_cfg_index_path(ip, cp, k);
                ps_json_describe(it, got, sizeof got);
                return ps_cfg_bad(x, ip, "expected a component of the circuit (\"h9.1\", \"mlp3\"), got %s", got);
            }
        }
    }
    if (compl) {
        ps_cfg_key_path(kp, p, "completeness");
        const int n = cJSON_IsArray(compl) ? cJSON_GetArraySize(compl) : 0;
        if (n == 0) {
            ps_json_describe(compl, got, sizeof got);
            return ps_cfg_bad(x, kp, "expected a non-empty list of sets K (each a component, a class, or a list of them), got %s", got);
        }
        if (!(ex->compl_k = calloc((size_t)n, sizeof *ex->compl_k))) return ps_cfg_nomem(x);
        for (int i = 0; i < n; i++) {
            char ip[PATH_MAX_LEN];
            ps_cfg_index_path(ip, kp, i);
            ex->n_compl_k = i + 1;
            if (load_k(x, cJSON_GetArrayItem(compl, i), ip, classes, NULL, &ex->compl_k[i])) return -1;
        }
    }
    if (mini) {
        ps_cfg_key_path(kp, p, "minimality");
        if (cJSON_IsBool(mini)) { ex->minimality = cJSON_IsTrue(mini); return 0; }
        if (!cJSON_IsObject(mini)) {
            ps_json_describe(mini, got, sizeof got);
            return ps_cfg_bad(x, kp, "expected true, or {\"h9.9\": K, ...}: the set K each component's score starts from "
                              "(default empty), got %s", got);
        }
        ex->minimality = 1;
        const int n = cJSON_GetArraySize(mini);
        if (!(ex->min_k = calloc((size_t)(n ? n : 1), sizeof *ex->min_k))) return ps_cfg_nomem(x);
        int i = 0;
        const cJSON *it;
        cJSON_ArrayForEach(it, mini) {
            char ip[PATH_MAX_LEN];
            ps_cfg_key_path(ip, kp, it->string);
            if (!comp_name_ok(it->string)) return ps_cfg_bad(x, ip, "expected a component of the circuit as the key (\"h9.1\", \"mlp3\")");
            ex->n_min_k = i + 1;
            if (cJSON_IsArray(it) && cJSON_GetArraySize(it) == 0) {   // K empty
                if (!(ex->min_k[i].label = strdup(it->string)) || !(ex->min_k[i].c = calloc(1, sizeof *ex->min_k[i].c))) return ps_cfg_nomem(x);
            } else if (load_k(x, it, ip, classes, it->string, &ex->min_k[i])) return -1;
            i++;
        }
    }
    return 0;
}

int ps_cfg_load_ablation(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex) {
    static const char *const abl_keys[] = {"name", "kind", "components", "keep", "positions", "with", "grouping", "reference",
                                           "seed", "mlp_means", "classes", "completeness", "minimality", "head_site"};
    static const char *const search_keys[] = {"name", "kind", "with", "grouping", "reference", "seed", "mlp_means", "threshold",
                                              "passes", "speculate", "head_site"};
    const int search = !strcmp(ex->kind, "circuit_search");
    if (search ? ps_cfg_check_keys(x, obj, p, search_keys, COUNT(search_keys)) : ps_cfg_check_keys(x, obj, p, abl_keys, COUNT(abl_keys)))
        return -1;
    char kp[PATH_MAX_LEN], got[200];
    ex->abl_with = 1;   // mean
    int v = 0;
    if (ps_cfg_get_enum(x, obj, "with", p, with_names, COUNT(with_names), &ex->abl_with) ||
        ps_cfg_get_enum(x, obj, "grouping", p, group_names, COUNT(group_names), &ex->abl_group) ||
        ps_cfg_get_enum(x, obj, "mlp_means", p, mlp_means_names, COUNT(mlp_means_names), &ex->mlp_means_under) ||
        ps_cfg_get_enum(x, obj, "passes", p, passes_names, COUNT(passes_names), &v) ||
        ps_cfg_get_enum(x, obj, "head_site", p, head_site_names, COUNT(head_site_names), &ex->heads_at_result) ||
        ps_cfg_get_int(x, obj, "seed", p, 0, INT64_MAX, &ex->seed) ||
        ps_cfg_get_int(x, obj, "speculate", p, 1, 4096, &ex->speculate))
        return -1;
    ex->one_pass = v;
    ex->threshold = 20;   // seqcont's default, in points of the circuit score
    const cJSON *th = ps_cfg_member(obj, "threshold");
    ps_cfg_key_path(kp, p, "threshold");
    if (th && (!cJSON_IsNumber(th) || !(th->valuedouble >= 0 && th->valuedouble <= 100))) {
        ps_json_describe(th, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected a number of points from 0 to 100, got %s", got);
    }
    if (th) ex->threshold = th->valuedouble;

    // The reference prompts: needed by means and resamples; a template field by per_template_position.
    const cJSON *ref = ps_cfg_member(obj, "reference");
    ps_cfg_key_path(kp, p, "reference");
    const int needs_ref = ex->abl_with == 1 || ex->abl_with == 2;
    if (ref && !cJSON_IsObject(ref)) {
        ps_json_describe(ref, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected a dataset block {\"path\": ..., \"fields\": {\"clean\": ...}, \"limit\": ...}, got %s", got);
    }
    if (!ref && needs_ref) return ps_cfg_bad(x, kp, "required with \"with\": \"%s\" (the prompts the %s are taken from)",
                                             with_names[ex->abl_with], ex->abl_with == 1 ? "means" : "resampled activations");
    if (ref && !needs_ref) return ps_cfg_bad(x, kp, "only used with \"with\": \"mean\" or \"resample\"");
    if (ref && ps_cfg_load_dataset(x, ref, kp, 1, &ex->ref_items, &ex->n_ref_items, &ex->ref_path, &(char *){NULL}, NULL)) return -1;
    if (ps_cfg_member(obj, "grouping") && ex->abl_with != 1) {
        ps_cfg_key_path(kp, p, "grouping");
        return ps_cfg_bad(x, kp, "only used with \"with\": \"mean\"");
    }
    if (ex->abl_group == 2 && !ex->ref_items[0].group) {
        ps_cfg_key_path(kp, p, "reference.fields.template");
        return ps_cfg_bad(x, kp, "required with \"grouping\": \"per_template_position\" (the field naming each prompt's template)");
    }
    if (ex->mlp_means_under && ex->abl_with != 1) {
        ps_cfg_key_path(kp, p, "mlp_means");
        return ps_cfg_bad(x, kp, "\"under_head_ablation\" takes MLP means with heads mean-ablated: needs \"with\": \"mean\"");
    }
    if (search) return 0;

    const cJSON *comps = ps_cfg_member(obj, "components"), *keep = ps_cfg_member(obj, "keep");
    if (!comps == !keep) {
        ps_cfg_key_path(kp, p, comps ? "keep" : "components");
        return ps_cfg_bad(x, kp, comps ? "give either components (ablated) or keep (a circuit kept), not both"
                                       : "required key missing (or \"keep\": a circuit to keep, everything else ablated)");
    }
    if (ps_cfg_get_list(x, obj, "positions", p, 1, &ex->positions, &ex->n_positions, &ex->position_role)) return -1;
    if (keep) {
        ps_cfg_key_path(kp, p, "keep");
        if (load_keep(x, keep, kp, ex)) return -1;
    }
    if (load_circuit_scores(x, obj, p, ex)) return -1;
    if (keep) return 0;
    ps_cfg_key_path(kp, p, "components");
    const int n = cJSON_IsArray(comps) ? cJSON_GetArraySize(comps) : 0;
    if (n == 0) {
        ps_json_describe(comps, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected a non-empty list: each entry a component ablated alone, or a list of components "
                          "ablated together, got %s", got);
    }
    if (!(ex->cells = calloc((size_t)n, sizeof *ex->cells))) return ps_cfg_nomem(x);
    ex->n_cells = n;
    for (int i = 0; i < n; i++) {
        char ip[PATH_MAX_LEN];
        ps_cfg_index_path(ip, kp, i);
        if (load_cell(x, cJSON_GetArrayItem(comps, i), ip, &ex->cells[i])) return -1;
        for (int j = 0; j < i; j++)
            if (!strcmp(ex->cells[j].label, ex->cells[i].label))
                return ps_cfg_bad(x, ip, "\"%s\" is already components[%d]", ex->cells[i].label, j);
    }
    return 0;
}

// A table the loader adds after the experiments: name "PARENT.suffix" of the given kind, unless a configured
// experiment already has the name.
int ps_cfg_add_means_tables(ps_cfg_ctx *x, ps_config *c) {
    int64_t n_add = 0;
    for (int64_t i = 0; i < c->n_experiments; i++) {
        const ps_experiment *ex = &c->experiments[i];
        n_add += ex->kind && (!strcmp(ex->kind, "ablation") || !strcmp(ex->kind, "circuit_search")) && ex->abl_with == 1;
        n_add += (ex->n_compl_k > 0) + (ex->minimality != 0);
    }
    if (!n_add) return 0;
    ps_experiment *all = realloc(c->experiments, (size_t)(c->n_experiments + n_add) * sizeof *all);
    if (!all) return ps_cfg_nomem(x);
    c->experiments = all;
    const int64_t n0 = c->n_experiments;
    // Completeness and minimality: tables over every prompt's rows of the parent (kind "circuit_scores").
    for (int64_t i = 0; i < n0; i++)
        for (int k = 0; k < 2; k++) {
            if (!(k ? all[i].minimality : all[i].n_compl_k > 0)) continue;
            ps_experiment *m = ps_cfg_add_derived(x, c, n0, i, k ? ".minimality" : ".completeness", "circuit_scores", "circuit_scores");
            if (!m) return -1;
            m->scores_of = i;
            m->scores_minimality = k;
        }
    for (int64_t i = 0; i < n0; i++) {
        const ps_experiment *ex = &all[i];
        if (!ex->kind || (strcmp(ex->kind, "ablation") && strcmp(ex->kind, "circuit_search")) || ex->abl_with != 1) continue;
        ps_experiment *m = ps_cfg_add_derived(x, c, n0, i, ".reference_means", "reference_means", "reference means");
        if (!m) return -1;
        m->means_of = i;
    }
    return 0;
}
