// Kind edge_circuit's keys (ps_config.h): "edges" (a list of EAP-IG edge names), or "scores_from" (an
// edge_attribution experiment of the same run) with "top_n" or "greedy" (a count or a list) or "threshold", and
// "absolute", or "scores_file" (EAP-IG's graph JSON, read here: ps_edge_scores_read); "with" (corrupted, zero,
// mean), "reference" and "grouping" (mean). The names are checked against the
// model's graph when the run starts (the producer's init).
#include "config_internal.h"
#include "ps_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ps_cfg_load_edge_circuit(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex) {
    static const char *const keys[] = {"name", "kind", "edges", "scores_from", "top_n", "greedy", "threshold", "absolute",
                                       "with", "reference", "grouping", "scores_file"};
    // "with": the missing edges' values, EAP-IG's interventions patching, zero, mean.
    static const char *const with_names[] = {"corrupted", "zero", "mean"}, *const group_names[] = {"per_position", "all_positions"};
    if (ps_cfg_check_keys(x, obj, p, keys, COUNT(keys))) return -1;
    char kp[PATH_MAX_LEN], got[200];
    int with = 0;
    if (ps_cfg_get_enum(x, obj, "with", p, with_names, COUNT(with_names), &with) ||
        ps_cfg_get_enum(x, obj, "grouping", p, group_names, COUNT(group_names), &ex->abl_group))
        return -1;
    ex->edge_with = with;
    const cJSON *ref = ps_cfg_member(obj, "reference");
    ps_cfg_key_path(kp, p, "reference");
    if (ref && !cJSON_IsObject(ref)) {
        ps_json_describe(ref, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected a dataset block {\"path\": ..., \"fields\": {\"clean\": ...}, \"limit\": ...}, got %s", got);
    }
    if (!ref && with == 2) return ps_cfg_bad(x, kp, "required with \"with\": \"mean\" (the prompts the means are taken over)");
    if (ref && with != 2) return ps_cfg_bad(x, kp, "only used with \"with\": \"mean\"");
    if (ps_cfg_member(obj, "grouping") && with != 2) {
        ps_cfg_key_path(kp, p, "grouping");
        return ps_cfg_bad(x, kp, "only used with \"with\": \"mean\"");
    }
    if (ref && ps_cfg_load_dataset(x, ref, kp, 1, &ex->ref_items, &ex->n_ref_items, &ex->ref_path, &(char *){NULL}, NULL)) return -1;
    const cJSON *ev = ps_cfg_member(obj, "edges");
    int absolute = 1;
    if (ps_cfg_get_str(x, obj, "scores_from", p, 0, &ex->scores_from) || ps_cfg_get_path(x, obj, "scores_file", p, 0, &ex->scores_path) ||
        ps_cfg_get_bool(x, obj, "absolute", p, &absolute))
        return -1;
    ps_cfg_key_path(kp, p, "scores_file");
    if (ex->scores_from && ex->scores_path) return ps_cfg_bad(x, kp, "give one of scores_from and scores_file");
    if (ex->scores_path) { // read now, so a bad file is refused before the model loads
        ps_edge_scores es;
        ps_error fe = {0};
        if (ps_edge_scores_read(ex->scores_path, &es, &fe) != 0) return ps_cfg_bad(x, kp, "%s", fe.msg);
        ps_edge_scores_free(&es);
    }
    const int scored = ex->scores_from || ex->scores_path;
    // top_n or greedy: a count, or a list of counts (one circuit each).
    const cJSON *tn = ps_cfg_member(obj, "top_n"), *gv = ps_cfg_member(obj, "greedy"), *nv = tn ? tn : gv;
    ps_cfg_key_path(kp, p, "greedy");
    if (tn && gv) return ps_cfg_bad(x, kp, "give one of top_n and greedy");
    ex->greedy = gv != NULL;
    ps_cfg_key_path(kp, p, gv ? "greedy" : "top_n");
    const int n_list = nv && cJSON_IsArray(nv) ? cJSON_GetArraySize(nv) : nv ? 1 : 0;
    if (nv && cJSON_IsArray(nv) && n_list < 1) return ps_cfg_bad(x, kp, "expected a count of edges or a non-empty list of counts");
    if (n_list && !(ex->top_ns = malloc((size_t)n_list * sizeof *ex->top_ns))) return ps_cfg_nomem(x);
    for (int i = 0; i < n_list; i++) {
        const cJSON *it = cJSON_IsArray(nv) ? cJSON_GetArrayItem(nv, i) : nv;
        char ip[PATH_MAX_LEN];
        if (cJSON_IsArray(nv)) ps_cfg_index_path(ip, kp, i);
        else snprintf(ip, sizeof ip, "%s", kp);
        if (ps_cfg_as_int(it, &ex->top_ns[i]) || ex->top_ns[i] < 0) {
            ps_json_describe(it, got, sizeof got);
            return ps_cfg_bad(x, ip, "expected an integer >= 0, got %s", got);
        }
    }
    ex->n_top_ns = n_list;
    if (n_list) ex->top_n = ex->top_ns[0];
    ex->signed_scores = !absolute;
    const cJSON *tv = ps_cfg_member(obj, "threshold");
    ps_cfg_key_path(kp, p, "threshold");
    if (tv && (!cJSON_IsNumber(tv) || !isfinite(tv->valuedouble))) {
        ps_json_describe(tv, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected a number, got %s", got);
    }
    if (tv) {
        ex->has_threshold = 1;
        ex->threshold = tv->valuedouble;
    }
    ps_cfg_key_path(kp, p, "edges");
    if (!ev == !scored)
        return ps_cfg_bad(x, ev ? kp : p, "give either edges (a list of edge names), scores_from (an edge_attribution experiment) or "
                                          "scores_file (EAP-IG's graph JSON)");
    if (ev) {
        if (nv || tv || ps_cfg_member(obj, "absolute"))
            return ps_cfg_bad(x, kp, "top_n, greedy, threshold and absolute choose edges from scores; a listed circuit takes none");
        if (!cJSON_IsArray(ev) || cJSON_GetArraySize(ev) < 1) return ps_cfg_bad(x, kp, "expected a non-empty list of edge names");
        if (!(ex->edge_names = calloc((size_t)cJSON_GetArraySize(ev), sizeof *ex->edge_names))) return ps_cfg_nomem(x);
        for (const cJSON *it = ev->child; it; it = it->next) {
            char ip[PATH_MAX_LEN];
            ps_cfg_index_path(ip, kp, ex->n_edge_names);
            ps_json_describe(it, got, sizeof got);
            if (!cJSON_IsString(it) || !strstr(it->valuestring, "->"))
                return ps_cfg_bad(x, ip, "expected an edge name such as \"a0.h1->a1.h0<q>\", got %s", got);
            if (!(ex->edge_names[ex->n_edge_names++] = strdup(it->valuestring))) return ps_cfg_nomem(x);
        }
        return 0;
    }
    ps_cfg_key_path(kp, p, gv ? "greedy" : "top_n");
    if (!nv == !tv) return ps_cfg_bad(x, tv ? kp : p, "with scores give one of top_n, greedy or threshold");
    return 0;
}

int ps_cfg_check_circuits(ps_cfg_ctx *x, const ps_config *c) {
    for (int64_t i = 0; i < c->n_experiments; i++) {
        const ps_experiment *ex = &c->experiments[i];
        if (!ex->scores_from) continue;
        int64_t j = 0;
        while (j < c->n_experiments && strcmp(c->experiments[j].name, ex->scores_from) != 0) j++;
        if (j < c->n_experiments && !strcmp(c->experiments[j].kind, "edge_attribution")) continue;
        char ip[PATH_MAX_LEN], kp[PATH_MAX_LEN];
        ps_cfg_index_path(ip, "experiments", i);
        ps_cfg_key_path(kp, ip, "scores_from");
        if (j == c->n_experiments) return ps_cfg_bad(x, kp, "no experiment is named \"%s\"", ex->scores_from);
        return ps_cfg_bad(x, kp, "\"%s\" is a %s experiment; scores come from an edge_attribution one", ex->scores_from,
                          c->experiments[j].kind);
    }
    return 0;
}

void ps_edge_scores_free(ps_edge_scores *s) {
    for (int64_t i = 0; s->names && i < s->n; i++) free(s->names[i]);
    free(s->names);
    free(s->score);
    memset(s, 0, sizeof *s);
}

// An optional non-negative integer of the cfg object: -1 when absent; -2 when it is not one.
static int64_t cfg_int(const cJSON *cfg, const char *key) {
    const cJSON *v = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, key) : NULL;
    int64_t n;
    if (!v) return -1;
    return ps_cfg_as_int(v, &n) == 0 && n >= 0 ? n : -2;
}

int ps_edge_scores_read(const char *path, ps_edge_scores *out, ps_error *e) {
    memset(out, 0, sizeof *out);
    cJSON *doc = ps_json_parse_file(path, e);
    if (!doc) return -1;
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(doc, "cfg"), *edges = cJSON_GetObjectItemCaseSensitive(doc, "edges");
    int rc = -1;
    if (!cJSON_IsObject(doc) || !cJSON_IsObject(edges)) {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: edges: expected an object of edge scores (EAP-IG's Graph.to_json)", path);
        goto done;
    }
    out->n_layers = cfg_int(cfg, "n_layers");
    out->n_heads = cfg_int(cfg, "n_heads");
    if (out->n_layers == -2 || out->n_heads == -2) {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: cfg.%s: expected an integer >= 0", path, out->n_layers == -2 ? "n_layers" : "n_heads");
        goto done;
    }
    // EAP-IG's graph of a model with parallel attention and MLP (TransformerLens's cfg.parallel_attn_mlp) has no
    // edge from a layer's heads to its own MLP; the run checks it against the model's blocks.
    const cJSON *pv = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "parallel_attn_mlp") : NULL;
    out->parallel = pv ? cJSON_IsTrue(pv) : -1;
    if (pv && !cJSON_IsBool(pv)) {
        char got[200];
        ps_json_describe(pv, got, sizeof got);
        ps_fail(e, PS_EXIT_BADINPUT, "%s: cfg.parallel_attn_mlp: expected true or false, got %s", path, got);
        goto done;
    }
    const int64_t n = cJSON_GetArraySize(edges);
    out->names = calloc((size_t)(n ? n : 1), sizeof *out->names);
    out->score = malloc((size_t)(n ? n : 1) * sizeof *out->score);
    if (!out->names || !out->score) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory for %lld edge scores", path, (long long)n); goto done; }
    for (const cJSON *it = edges->child; it; it = it->next) {
        const cJSON *sv = cJSON_IsObject(it) ? cJSON_GetObjectItemCaseSensitive(it, "score") : it;
        char name[120], got[200];
        ps_text_escape(it->string ? it->string : "", name, sizeof name, 80);
        if (!it->string || !strstr(it->string, "->")) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: edges: \"%s\" is no edge name such as \"a0.h1->a1.h0<q>\"", path, name);
            goto done;
        }
        if (!cJSON_IsNumber(sv) || !isfinite(sv->valuedouble)) {
            ps_json_describe(sv, got, sizeof got);
            ps_fail(e, PS_EXIT_BADINPUT, "%s: edges.%s.score: expected a finite number, got %s", path, name, sv ? got : "nothing");
            goto done;
        }
        if (!(out->names[out->n] = strdup(it->string))) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path); goto done; }
        out->score[out->n++] = sv->valuedouble;
    }
    rc = 0;
done:
    cJSON_Delete(doc);
    if (rc != 0) ps_edge_scores_free(out);
    return rc;
}
