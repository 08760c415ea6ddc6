// The config keys of the analyses (dla, logit_lens, attention, ov_scores, head_scores, neurons) and of
// edge_attribution (ps_config.h documents them), and the "NAME.top" table the loader adds per neurons experiment.
#include "config_internal.h"
#include "ps_json.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Kind neurons' "neurons": ["9.934", "10.1721"] (layer.neuron, seqcont's and Neuroscope's notation); a neuron
// listed twice is refused. The model's sizes are checked by the producer.
static int load_neurons(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex) {
    char kp[PATH_MAX_LEN], got[200];
    const cJSON *nv = ps_cfg_member(obj, "neurons");
    ps_cfg_key_path(kp, p, "neurons");
    if (!nv) return ps_cfg_bad(x, kp, "required key missing (the neurons as \"LAYER.NEURON\" strings, e.g. [\"9.934\"])");
    if (!cJSON_IsArray(nv) || cJSON_GetArraySize(nv) < 1 || cJSON_GetArraySize(nv) > 4096) {
        ps_json_describe(nv, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected a list of 1 to 4096 \"LAYER.NEURON\" strings, got %s", got);
    }
    const int n = cJSON_GetArraySize(nv);
    if (!(ex->neurons = malloc((size_t)n * sizeof *ex->neurons)) || !(ex->neuron_layer = malloc((size_t)n * sizeof *ex->neuron_layer)))
        return ps_cfg_nomem(x);
    ex->n_neurons = 0;
    for (const cJSON *it = nv->child; it; it = it->next) {
        char ip[PATH_MAX_LEN + 24];
        snprintf(ip, sizeof ip, "%s[%lld]", kp, (long long)ex->n_neurons);
        ps_json_describe(it, got, sizeof got);
        long long l = -1, k = -1;
        int used = 0;
        if (!cJSON_IsString(it) || strlen(it->valuestring) > 24 || sscanf(it->valuestring, "%7lld.%7lld%n", &l, &k, &used) != 2 ||
            used != (int)strlen(it->valuestring) || l < 0 || k < 0 || it->valuestring[0] < '0' || it->valuestring[0] > '9' ||
            strchr(it->valuestring, '+') || strchr(it->valuestring, ' '))
            return ps_cfg_bad(x, ip, "expected \"LAYER.NEURON\" (e.g. \"9.934\"), got %s", got);
        for (int64_t j = 0; j < ex->n_neurons; j++)
            if (ex->neuron_layer[j] == l && ex->neurons[j] == k)
                return ps_cfg_bad(x, ip, "neuron %lld.%lld is already neurons[%lld]", l, k, (long long)j);
        ex->neuron_layer[ex->n_neurons] = l;
        ex->neurons[ex->n_neurons++] = k;
    }
    return 0;
}

// Keys of the analyses (dla, logit_lens, attention, ov_scores, head_scores) and edge_attribution: each kind its own.
// dla's "ablate": the run decomposed is the clean one with these components ablated (the IOI backup name movers):
// the ablation kind's block, read by its loader, every component listed ablated at once.
static int load_dla_ablate(ps_cfg_ctx *x, const cJSON *ab, const char *p, ps_experiment *ex) {
    static const char *const keys[] = {"components", "keep", "positions", "with", "grouping", "reference", "seed"};
    char kp[PATH_MAX_LEN], sub[PATH_MAX_LEN];
    ps_cfg_key_path(kp, p, "ablate");
    if (!cJSON_IsObject(ab)) {
        char got[200];
        ps_json_describe(ab, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected an ablation block {\"components\": [\"h9.9\", ...], \"with\": \"zero\"}, got %s", got);
    }
    if (ps_cfg_check_keys(x, ab, kp, keys, COUNT(keys)) || ps_cfg_load_ablation(x, ab, kp, ex)) return -1;
    if (ex->run_corrupted) {
        ps_cfg_key_path(sub, p, "run");
        return ps_cfg_bad(x, sub, "with \"ablate\" the run decomposed is the clean prompts' ablated run");
    }
    if (ex->abl_group == 2) {   // PS_GROUP_PER_TEMPLATE_POSITION
        ps_cfg_key_path(sub, kp, "grouping");
        return ps_cfg_bad(x, sub, "dla's ablate takes per_position or all_positions means");
    }
    return 0;
}

int ps_cfg_load_analysis(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex) {
    static const char *const keys[] = {"name", "kind", "site", "by", "direction", "neurons", "layers", "heads", "positions",
                                       "run", "top_k", "per_neuron", "answer_only", "tokens", "negative", "input", "method", "steps", "window", "ablate"};
    if (ps_cfg_check_keys(x, obj, p, keys, COUNT(keys))) return -1;
    char kp[PATH_MAX_LEN];
    ex->top_k = ex->steps = 5;
    ex->window = 4;
    int is_att = !strcmp(ex->kind, "attention"), is_lens = !strcmp(ex->kind, "logit_lens"), is_dla = !strcmp(ex->kind, "dla");
    int is_ov = !strcmp(ex->kind, "ov_scores"), is_edge = !strcmp(ex->kind, "edge_attribution"), is_nrn = !strcmp(ex->kind, "neurons");
    if (is_nrn) ex->top_k = 10;
    const struct { const char *key, *kinds; int ok; } own[] = {   // each key and the kinds that take it
        {"site", "patch_sweep", 0}, {"by", "patch_sweep", 0}, {"direction", "patch_sweep", 0}, {"neurons", "patch_sweep or neurons", is_nrn}, {"ablate", "dla", is_dla}, {"window", "neurons", is_nrn},
        {"layers", "attention or ov_scores", is_att || is_ov}, {"heads", "attention or ov_scores", is_att || is_ov},
        {"positions", "attention", is_att}, {"top_k", "logit_lens, ov_scores or neurons", is_lens || is_ov || is_nrn}, {"per_neuron", "dla", is_dla}, {"answer_only", "dla", is_dla},
        {"tokens", "ov_scores", is_ov}, {"negative", "ov_scores", is_ov}, {"input", "ov_scores", is_ov}, {"run", "dla, logit_lens, attention or neurons", is_att || is_lens || is_dla || is_nrn},
        {"method", "edge_attribution", is_edge}, {"steps", "edge_attribution", is_edge}};
    for (size_t k = 0; k < COUNT(own); k++)
        if (!own[k].ok && ps_cfg_member(obj, own[k].key)) {
            ps_cfg_key_path(kp, p, own[k].key);
            return ps_cfg_bad(x, kp, "only used with kind %s (this experiment is %s)", own[k].kinds, ex->kind);
        }
    const cJSON *tv = ps_cfg_member(obj, "tokens");
    ps_cfg_key_path(kp, p, "tokens");
    if (is_ov && !tv) return ps_cfg_bad(x, kp, "required key missing (the member tokens in order, e.g. [\" 1\", \" 2\", \" 3\"])");
    if (tv && (!cJSON_IsArray(tv) || cJSON_GetArraySize(tv) < 1)) return ps_cfg_bad(x, kp, "expected a non-empty list of token strings");
    if (tv && !(ex->tokens = calloc((size_t)cJSON_GetArraySize(tv), sizeof *ex->tokens))) return ps_cfg_nomem(x);
    for (const cJSON *it = tv ? tv->child : NULL; it; it = it->next) {
        char ip[PATH_MAX_LEN + 24], got[200];
        snprintf(ip, sizeof ip, "%s[%lld]", kp, (long long)ex->n_tokens);
        ps_json_describe(it, got, sizeof got);
        if (!cJSON_IsString(it) || !it->valuestring[0]) return ps_cfg_bad(x, ip, "expected a non-empty token string, got %s", got);
        if (!(ex->tokens[ex->n_tokens++] = strdup(it->valuestring))) return ps_cfg_nomem(x);
    }
    static const char *const runs[] = {"clean", "corrupted"}, *const inputs[] = {"isolated", "prompts"};
    static const char *const methods[] = {"EAP", "EAP-IG-inputs", "clean-corrupted"};   // edge_attribution
    char **no_roles = NULL;
    int method = PS_EDGE_EAP;
    if (ps_cfg_get_enum(x, obj, "run", p, runs, 2, &ex->run_corrupted) || ps_cfg_get_enum(x, obj, "input", p, inputs, 2, &ex->ov_prompts) ||
        ps_cfg_get_int(x, obj, "top_k", p, 0, 1000, &ex->top_k) || ps_cfg_get_bool(x, obj, "per_neuron", p, &ex->per_neuron) ||
        ps_cfg_get_bool(x, obj, "answer_only", p, &ex->answer_only) ||
        ps_cfg_get_bool(x, obj, "negative", p, &ex->negative) || ps_cfg_get_enum(x, obj, "method", p, methods, 3, &method) ||
        ps_cfg_get_int(x, obj, "steps", p, 1, PS_MAX_IG_STEPS, &ex->steps) ||
        ps_cfg_get_list(x, obj, "layers", p, 0, &ex->layers, &ex->n_layers, &no_roles) ||
        ps_cfg_get_list(x, obj, "heads", p, 0, &ex->heads, &ex->n_heads, &no_roles) ||
        ps_cfg_get_list(x, obj, "positions", p, 1, &ex->positions, &ex->n_positions, &ex->position_role) ||
        ps_cfg_get_int(x, obj, "window", p, 0, 64, &ex->window) || (is_nrn && load_neurons(x, obj, p, ex)))
        return -1;
    if (is_nrn && ps_cfg_member(obj, "top_k") && ex->top_k < 1) {
        ps_cfg_key_path(kp, p, "top_k");
        return ps_cfg_bad(x, kp, "expected at least 1 (the activations stored per neuron)");
    }
    if (ps_cfg_member(obj, "ablate") && load_dla_ablate(x, ps_cfg_member(obj, "ablate"), p, ex)) return -1;
    ex->method = (ps_edge_method)method;
    ps_cfg_key_path(kp, p, "steps");
    return ps_cfg_member(obj, "steps") && method != PS_EDGE_EAP_IG_INPUTS ? ps_cfg_bad(x, kp, "only used with method EAP-IG-inputs") : 0;
}

int ps_cfg_add_neuron_tops(ps_cfg_ctx *x, ps_config *c) {
    int64_t n_add = 0;
    for (int64_t i = 0; i < c->n_experiments; i++) n_add += c->experiments[i].kind && !strcmp(c->experiments[i].kind, "neurons");
    if (!n_add) return 0;
    ps_experiment *all = realloc(c->experiments, (size_t)(c->n_experiments + n_add) * sizeof *all);
    if (!all) return ps_cfg_nomem(x);
    c->experiments = all;
    const int64_t n0 = c->n_experiments;
    for (int64_t i = 0; i < n0; i++) {
        const ps_experiment *ex = &all[i];
        if (!ex->kind || strcmp(ex->kind, "neurons")) continue;
        ps_experiment *t = ps_cfg_add_derived(x, c, n0, i, ".top", "neuron_top", "top activations");
        if (!t) return -1;
        t->top_of = i;
    }
    return 0;
}
