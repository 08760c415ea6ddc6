// The experiment config: JSON file -> ps_config, with every key and value checked and errors naming the JSON path.
// Dataset files are read by dataset.c; the format is described in ps_config.h.
#include "config_internal.h"
#include "ps_dataset.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// ---- names ----

static const char *const site_names[PS_SITE_COUNT] = {
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "pattern", "z", "mlp_post", "result"};
// The order the config documentation lists them in (enum order differs).
static const int site_order[PS_SITE_COUNT] = {
    PS_SITE_RESID_PRE, PS_SITE_RESID_MID, PS_SITE_RESID_POST, PS_SITE_ATTN_OUT, PS_SITE_MLP_OUT,
    PS_SITE_Z, PS_SITE_Q, PS_SITE_K, PS_SITE_V, PS_SITE_PATTERN, PS_SITE_MLP_POST, PS_SITE_RESULT};
static const char *const layout_names[PS_BY_COUNT] = {"layer_pos", "layer_head", "layer_pos_head", "layer_neuron", "layer"};
static const char *const metric_names[] = {"logit_diff", "prob_diff", "logprob", "kl"};
static const char *const direction_names[] = {"denoise", "noise"};
static const char *const backend_names[] = {"cpu", "cuda", "auto"};
static const char *const precision_names[] = {"fp32", "fp16", "bf16"};
static const char *const multitoken_names[] = {"first_diff", "sum_logprob"};
static const char *const align_names[] = {"error"};
// Producers of result tables an experiment's "kind" may name (ps_table.h).
static const char *const kind_names[] = {"patch_sweep", "path_patch", "attribution", "edge_attribution", "dla", "logit_lens",
                                         "attention", "ov_scores", "head_scores", "neurons", "ablation", "circuit_search", "edge_circuit"};

const char *ps_config_kind_name(size_t i) { return i < COUNT(kind_names) ? kind_names[i] : NULL; }

const char *ps_site_name(ps_site s) { return (unsigned)s < PS_SITE_COUNT ? site_names[s] : "?"; }
const char *ps_layout_name(ps_layout l) { return (unsigned)l < PS_BY_COUNT ? layout_names[l] : "?"; }
const char *ps_metric_name(ps_metric_kind m) { return (unsigned)m < COUNT(metric_names) ? metric_names[m] : "?"; }
const char *ps_direction_name(ps_direction d) { return (unsigned)d < COUNT(direction_names) ? direction_names[d] : "?"; }
const char *ps_backend_name(ps_backend_kind b) { return (unsigned)b < COUNT(backend_names) ? backend_names[b] : "?"; }
const char *ps_precision_name(ps_precision p) { return (unsigned)p < COUNT(precision_names) ? precision_names[p] : "?"; }
const char *ps_multitoken_name(ps_multitoken m) { return (unsigned)m < COUNT(multitoken_names) ? multitoken_names[m] : "?"; }
const char *ps_align_name(ps_align a) { return (unsigned)a < COUNT(align_names) ? align_names[a] : "?"; }

static int is_resid_like(ps_site s) {
    return s == PS_SITE_RESID_PRE || s == PS_SITE_RESID_MID || s == PS_SITE_RESID_POST || s == PS_SITE_ATTN_OUT ||
           s == PS_SITE_MLP_OUT;
}
static int is_head_site(ps_site s) {
    return s == PS_SITE_Z || s == PS_SITE_Q || s == PS_SITE_K || s == PS_SITE_V || s == PS_SITE_PATTERN;
}

ps_layout ps_default_layout(ps_site s) {
    return is_head_site(s) ? PS_BY_LAYER_HEAD : s == PS_SITE_MLP_POST ? PS_BY_LAYER_NEURON : PS_BY_LAYER_POS;
}

int ps_layout_fits(ps_site s, ps_layout l) {
    switch (l) {
    case PS_BY_LAYER_POS: return is_resid_like(s) || (is_head_site(s) && s != PS_SITE_PATTERN);
    case PS_BY_LAYER_HEAD:
    case PS_BY_LAYER_POS_HEAD: return is_head_site(s);
    case PS_BY_LAYER_NEURON: return s == PS_SITE_MLP_POST;
    case PS_BY_LAYER: return is_resid_like(s);
    default: return 0;
    }
}

// ---- freeing ----

static void experiment_free(ps_experiment *x) {
    free(x->name);
    free(x->kind);
    free(x->canonical);
    free(x->layers);
    free(x->heads);
    free(x->neurons);
    free(x->neuron_layer);
    if (x->position_role)
        for (int64_t i = 0; i < x->n_positions; i++) free(x->position_role[i]);
    free(x->position_role);
    if (x->tokens)
        for (int64_t i = 0; i < x->n_tokens; i++) free(x->tokens[i]);
    free(x->tokens);
    free(x->positions);
    free(x->sender_list);
    free(x->receivers);
    ps_cfg_ablation_free(x);
    for (int64_t i = 0; x->edge_names && i < x->n_edge_names; i++) free(x->edge_names[i]);
    free(x->edge_names);
    free(x->scores_from);
    free(x->scores_path);
    free(x->top_ns);
}

void ps_config_free(ps_config *c) {
    if (!c) return;
    free(c->path);
    free(c->text);
    free(c->model);
    free(c->tokenizer);
    free(c->output);
    ps_items_free(c->items, c->n_items);
    for (int64_t i = 0; i < c->n_experiments; i++) experiment_free(&c->experiments[i]);
    free(c->experiments);
    free(c->dataset_path);
    free(c->corrupted_path);
    memset(c, 0, sizeof *c);
}

// ---- checking values ----

int ps_cfg_bad(ps_cfg_ctx *x, const char *path, const char *fmt, ...) {
    char msg[PS_ERR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (path && path[0]) return ps_fail(x->e, PS_EXIT_BADINPUT, "%s: %s: %s", x->file, path, msg);
    return ps_fail(x->e, PS_EXIT_BADINPUT, "%s: %s", x->file, msg);
}

int ps_cfg_nomem(ps_cfg_ctx *x) { return ps_fail(x->e, PS_EXIT_RUNTIME, "%s: out of memory", x->file); }

// JSON paths are cut at PATH_MAX_LEN; only absurdly deep or long keys get there, and a cut path still reads fine.
void ps_cfg_key_path(char *out, const char *parent, const char *key) {
    char esc[200];
    ps_text_escape(key, esc, sizeof esc, 60);
    if (parent[0]) snprintf(out, PATH_MAX_LEN, "%.300s.%s", parent, esc);
    else snprintf(out, PATH_MAX_LEN, "%s", esc);
}

void ps_cfg_index_path(char *out, const char *parent, int64_t i) {
    snprintf(out, PATH_MAX_LEN, "%.480s[%lld]", parent, (long long)i);
}

ps_experiment *ps_cfg_add_derived(ps_cfg_ctx *x, ps_config *c, int64_t n0, int64_t parent, const char *suffix, const char *kind,
                                  const char *what) {
    ps_experiment *m = &c->experiments[c->n_experiments];
    memset(m, 0, sizeof *m);
    const size_t len = strlen(c->experiments[parent].name) + strlen(suffix) + 1;
    m->name = malloc(len);
    m->kind = strdup(kind);
    c->n_experiments++;   // counted now, so ps_config_free releases what exists
    if (!m->name || !m->kind) { ps_cfg_nomem(x); return NULL; }
    snprintf(m->name, len, "%s%s", c->experiments[parent].name, suffix);
    for (int64_t j = 0; j < n0; j++)
        if (!strcmp(c->experiments[j].name, m->name)) {
            char p[PATH_MAX_LEN];
            ps_cfg_index_path(p, "experiments", j);
            ps_cfg_bad(x, p, "\"%s\" is the name of experiments[%lld]'s table of %s; choose another", m->name, (long long)parent, what);
            return NULL;
        }
    return m;
}

// Every key of obj must be one of keys, at most once.
int ps_cfg_check_keys(ps_cfg_ctx *x, const cJSON *obj, const char *path, const char *const *keys, int nkeys) {
    for (const cJSON *it = obj->child; it; it = it->next) {
        char p[PATH_MAX_LEN], esc[200];
        ps_cfg_key_path(p, path, it->string);
        ps_text_escape(it->string, esc, sizeof esc, 60);
        int best = -1, bestd = 1 << 30;
        for (int k = 0; k < nkeys; k++) {
            if (strcmp(it->string, keys[k]) == 0) { best = k; bestd = 0; break; }
            int d = ps_edit_distance(it->string, keys[k]);
            if (d < bestd) { bestd = d; best = k; }
        }
        if (bestd != 0) {
            int len = (int)strlen(it->string);
            if (best >= 0 && bestd <= (len / 3 > 2 ? len / 3 : 2))
                return ps_cfg_bad(x, p, "unknown key '%s' (did you mean '%s'?)", esc, keys[best]);
            char all[512];
            size_t o = 0;
            for (int k = 0; k < nkeys; k++) o += (size_t)snprintf(all + o, sizeof all - o, "%s%s", k ? ", " : "", keys[k]);
            return ps_cfg_bad(x, p, "unknown key '%s' (valid keys: %s)", esc, all);
        }
        for (const cJSON *jt = obj->child; jt != it; jt = jt->next)
            if (strcmp(jt->string, it->string) == 0) return ps_cfg_bad(x, p, "key '%s' appears twice", esc);
    }
    return 0;
}

const cJSON *ps_cfg_member(const cJSON *obj, const char *key) { return cJSON_GetObjectItemCaseSensitive(obj, key); }

// A non-empty string; absent leaves *out alone unless required.
int ps_cfg_get_str(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int required, char **out) {
    char p[PATH_MAX_LEN];
    ps_cfg_key_path(p, path, key);
    const cJSON *v = ps_cfg_member(obj, key);
    if (!v) return required ? ps_cfg_bad(x, p, "required key missing") : 0;
    char got[200];
    ps_json_describe(v, got, sizeof got);
    if (!cJSON_IsString(v)) return ps_cfg_bad(x, p, "expected a string, got %s", got);
    if (!v->valuestring[0]) return ps_cfg_bad(x, p, "empty string");
    free(*out);
    *out = strdup(v->valuestring);
    return *out ? 0 : ps_cfg_nomem(x);
}

// A path relative to the config's directory, stored joined with it.
int ps_cfg_get_path(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int required, char **out) {
    char *s = NULL;
    if (ps_cfg_get_str(x, obj, key, path, required, &s)) return -1;
    if (!s) return 0;
    free(*out);
    *out = ps_path_join(x->dir, s);
    free(s);
    return *out ? 0 : ps_cfg_nomem(x);
}

int ps_cfg_pick(ps_cfg_ctx *x, const cJSON *v, const char *p, const char *const *names, const int *order, int n, int *out) {
    if (cJSON_IsString(v))
        for (int i = 0; i < n; i++)
            if (strcmp(v->valuestring, names[i]) == 0) { *out = i; return 0; }
    char list[512], got[200];
    size_t o = 0;
    for (int i = 0; i < n; i++) o += (size_t)snprintf(list + o, sizeof list - o, "%s, ", names[order ? order[i] : i]);
    ps_json_describe(v, got, sizeof got);
    return ps_cfg_bad(x, p, "expected one of %sgot %s", list, got);
}

int ps_cfg_get_enum(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, const char *const *names, int n, int *out) {
    const cJSON *v = ps_cfg_member(obj, key);
    if (!v) return 0;
    char p[PATH_MAX_LEN];
    ps_cfg_key_path(p, path, key);
    return ps_cfg_pick(x, v, p, names, NULL, n, out);
}

// Integers arrive as doubles; only exact integers within +-2^53 are accepted.
int ps_cfg_as_int(const cJSON *v, int64_t *out) {
    if (!cJSON_IsNumber(v)) return -1;
    double d = v->valuedouble;
    if (!isfinite(d) || d != floor(d) || fabs(d) > 9007199254740992.0) return -1;
    *out = (int64_t)d;
    return 0;
}

int ps_cfg_get_int(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int64_t lo, int64_t hi, int64_t *out) {
    const cJSON *v = ps_cfg_member(obj, key);
    if (!v) return 0;
    char p[PATH_MAX_LEN], got[200];
    ps_cfg_key_path(p, path, key);
    int64_t i;
    if (ps_cfg_as_int(v, &i) || i < lo || i > hi) {
        ps_json_describe(v, got, sizeof got);
        if (hi == INT64_MAX) return ps_cfg_bad(x, p, "expected an integer >= %lld, got %s", (long long)lo, got);
        return ps_cfg_bad(x, p, "expected an integer from %lld to %lld, got %s", (long long)lo, (long long)hi, got);
    }
    *out = i;
    return 0;
}

int ps_cfg_get_bool(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int *out) {
    const cJSON *v = ps_cfg_member(obj, key);
    if (!v) return 0;
    char p[PATH_MAX_LEN], got[200];
    ps_cfg_key_path(p, path, key);
    if (!cJSON_IsBool(v)) {
        ps_json_describe(v, got, sizeof got);
        return ps_cfg_bad(x, p, "expected true or false, got %s", got);
    }
    *out = cJSON_IsTrue(v) ? 1 : 0;
    return 0;
}

// An index list: non-negative integers, or (positions) any integer or "end". Absent: NULL, all.
void ps_cfg_free_roles(char ***roles, int count) {
    if (!*roles) return;
    for (int i = 0; i < count; i++) free((*roles)[i]);
    free(*roles);
    *roles = NULL;
}

int ps_cfg_get_list(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int positions, int64_t **out, int64_t *n,
                    char ***roles) {
    const cJSON *v = ps_cfg_member(obj, key);
    if (!v) return 0;
    char p[PATH_MAX_LEN], got[200];
    ps_cfg_key_path(p, path, key);
    const char *want = positions ? "integers, \"end\" or role names" : "non-negative integers";
    if (!cJSON_IsArray(v)) {
        ps_json_describe(v, got, sizeof got);
        return ps_cfg_bad(x, p, "expected an array of %s, got %s", want, got);
    }
    int count = cJSON_GetArraySize(v);
    if (count == 0) return ps_cfg_bad(x, p, "empty list (leave the key out to sweep all)");
    int64_t *a = malloc((size_t)count * sizeof *a);
    if (!a) return ps_cfg_nomem(x);
    int i = 0;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        char ip[PATH_MAX_LEN];
        ps_cfg_index_path(ip, p, i);
        int64_t val;
        if (positions && cJSON_IsString(it) && strcmp(it->valuestring, "end") == 0) val = -1;
        else if (positions && cJSON_IsString(it) && it->valuestring[0]) {
            // A role: resolved per prompt by the engine; the value is a placeholder unique in the list.
            if (!*roles && !(*roles = calloc((size_t)count, sizeof(char *)))) { free(a); ps_cfg_free_roles(roles, count); return ps_cfg_nomem(x); }
            for (int j = 0; j < i; j++)
                if ((*roles)[j] && !strcmp((*roles)[j], it->valuestring)) {
                    free(a); ps_cfg_free_roles(roles, count);
                    return ps_cfg_bad(x, ip, "\"%s\" appears twice in the list", it->valuestring);
                }
            (*roles)[i] = strdup(it->valuestring);
            a[i] = INT64_MIN + i;
            continue;
        } else if (ps_cfg_as_int(it, &val) || (!positions && val < 0)) {
            ps_json_describe(it, got, sizeof got);
            free(a); ps_cfg_free_roles(roles, count);
            return ps_cfg_bad(x, ip, "expected %s, got %s", positions ? "an integer, \"end\" or a role name" : "a non-negative integer", got);
        }
        for (int j = 0; j < i; j++)
            if (a[j] == val) {
                free(a); ps_cfg_free_roles(roles, count);
                return ps_cfg_bad(x, ip, "%lld appears twice in the list", (long long)val);
            }
        a[i] = val;
    }
    *out = a;
    *n = count;
    return 0;
}

// ---- sections ----

static const char *const inline_item_keys[] = {"clean", "corrupted", "answer", "wrong", "roles", "template"};

// An item's "roles": {"S2": 10, ...}: names of token positions, per prompt.
static int load_roles(ps_cfg_ctx *x, const cJSON *it, const char *p, ps_item *d) {
    const cJSON *r = ps_cfg_member(it, "roles");
    if (!r) return 0;
    char rp[PATH_MAX_LEN], got[200];
    ps_cfg_key_path(rp, p, "roles");
    if (!cJSON_IsObject(r)) {
        ps_json_describe(r, got, sizeof got);
        return ps_cfg_bad(x, rp, "expected an object of role name -> token index, got %s", got);
    }
    int n = cJSON_GetArraySize(r);
    d->role_name = calloc((size_t)(n ? n : 1), sizeof(char *));
    d->role_pos = calloc((size_t)(n ? n : 1), sizeof(int64_t));
    if (!d->role_name || !d->role_pos) return ps_cfg_nomem(x);
    for (const cJSON *v = r->child; v; v = v->next) {
        char vp[PATH_MAX_LEN];
        ps_cfg_key_path(vp, rp, v->string);
        int64_t pos;
        if (ps_cfg_as_int(v, &pos) || pos < 0) {
            ps_json_describe(v, got, sizeof got);
            return ps_cfg_bad(x, vp, "expected a non-negative token index, got %s", got);
        }
        if (!strcmp(v->string, "end")) return ps_cfg_bad(x, vp, "\"end\" is built in (the prompt's last token); choose another name");
        d->role_name[d->n_roles] = strdup(v->string);
        d->role_pos[d->n_roles++] = pos;
    }
    return 0;
}

static int load_inline_items(ps_cfg_ctx *x, const cJSON *arr, ps_config *c) {
    int n = cJSON_GetArraySize(arr);
    if (n == 0) return ps_cfg_bad(x, "dataset", "empty dataset (no items)");
    c->items = calloc((size_t)n, sizeof *c->items);
    if (!c->items) return ps_cfg_nomem(x);
    c->n_items = n;   // calloc'd, so ps_config_free can free a partly filled array
    int i = 0;
    for (const cJSON *it = arr->child; it; it = it->next, i++) {
        char p[PATH_MAX_LEN], got[200];
        ps_cfg_index_path(p, "dataset", i);
        if (!cJSON_IsObject(it)) {
            ps_json_describe(it, got, sizeof got);
            return ps_cfg_bad(x, p, "expected an object with clean, corrupted, answer, wrong, got %s", got);
        }
        if (ps_cfg_check_keys(x, it, p, inline_item_keys, COUNT(inline_item_keys))) return -1;
        ps_item *d = &c->items[i];
        if (ps_cfg_get_str(x, it, "clean", p, 1, &d->clean) || ps_cfg_get_str(x, it, "corrupted", p, 1, &d->corrupted) ||
            ps_cfg_get_str(x, it, "answer", p, 1, &d->answer) || ps_cfg_get_str(x, it, "wrong", p, 1, &d->wrong) ||
            ps_cfg_get_str(x, it, "template", p, 0, &d->group) || load_roles(x, it, p, d))
            return -1;
    }
    return 0;
}

static int name_ok(const char *s) {
    if (strcmp(s, ".") == 0 || strcmp(s, "..") == 0) return 0;   // would be HDF5/file-system paths
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' ||
              *s == '.' || *s == '-'))
            return 0;
    return 1;
}

// A component's name: "a{layer}.h{head}" (then, with want_input, ".q", ".k" or ".v"), or "m{layer}" (an MLP).
// Returns 0 and fills nd (and *input: PS_RECV_Q/K/V for a head, PS_RECV_MLP for an MLP) or -1.
static int parse_node(const char *s, int want_input, ps_node *nd, ps_recv_input *input) {
    char *end;
    if (s[0] == 'm' && s[1] >= '0' && s[1] <= '9') {
        long long l = strtoll(s + 1, &end, 10);
        if (*end || l > 1000000) return -1;
        *nd = (ps_node){l, -1};
        if (input) *input = PS_RECV_MLP;
        return 0;
    }
    if (s[0] != 'a' || s[1] < '0' || s[1] > '9') return -1;
    long long l = strtoll(s + 1, &end, 10);
    if (end[0] != '.' || end[1] != 'h' || end[2] < '0' || end[2] > '9' || l > 1000000) return -1;
    long long h = strtoll(end + 2, &end, 10);
    if (h > 1000000) return -1;
    *nd = (ps_node){l, h};
    if (!want_input) return *end ? -1 : 0;
    if (end[0] != '.' || !end[1] || end[2]) return -1;
    switch (end[1]) {
    case 'q': *input = PS_RECV_Q; return 0;
    case 'k': *input = PS_RECV_K; return 0;
    case 'v': *input = PS_RECV_V; return 0;
    default: return -1;
    }
}

// "senders": "heads" | "mlps" | "all" | a list of component names; "receivers": "resid_post" | a list.
static int get_nodes(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *p, int receivers, ps_experiment *ex) {
    const cJSON *v = ps_cfg_member(obj, key);
    if (!v) return 0;
    char kp[PATH_MAX_LEN], got[200];
    ps_cfg_key_path(kp, p, key);
    static const char *const groups[] = {"heads", "mlps", "all"};
    if (cJSON_IsString(v)) {
        if (receivers && !strcmp(v->valuestring, "resid_post")) return 0;
        for (int k = 0; !receivers && k < 3; k++)
            if (!strcmp(v->valuestring, groups[k])) { ex->senders = (ps_senders)k; return 0; }
    }
    const char *want = receivers ? "\"resid_post\" or a list such as [\"a3.h0.q\", \"a3.h2.q\"] or [\"m2\"]"
                                 : "\"heads\", \"mlps\", \"all\" or a list such as [\"a0.h1\", \"m2\"]";
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) == 0) {
        ps_json_describe(v, got, sizeof got);
        return ps_cfg_bad(x, kp, "expected %s, got %s", want, got);
    }
    const int n = cJSON_GetArraySize(v);
    ps_node *nodes = calloc((size_t)n, sizeof *nodes);
    if (!nodes) return ps_cfg_nomem(x);
    int i = 0;
    ps_recv_input first = PS_RECV_RESID_POST;
    for (const cJSON *it = v->child; it; it = it->next, i++) {
        char ip[PATH_MAX_LEN];
        ps_cfg_index_path(ip, kp, i);
        ps_recv_input in = PS_RECV_RESID_POST;
        if (!cJSON_IsString(it) || parse_node(it->valuestring, receivers, &nodes[i], &in) != 0) {
            ps_json_describe(it, got, sizeof got);
            free(nodes);
            return ps_cfg_bad(x, ip, "expected %s, got %s", receivers ? "a head's input (\"a3.h0.q\", .k, .v) or an MLP (\"m2\")"
                                                             : "a head (\"a0.h1\") or an MLP (\"m2\")", got);
        }
        if (receivers && i > 0 && in != first) {
            free(nodes);
            return ps_cfg_bad(x, ip, "every receiver reads the same input (%s here, %s before): run one experiment per input",
                       it->valuestring, first == PS_RECV_MLP ? "an MLP" : first == PS_RECV_Q ? "q" : first == PS_RECV_K ? "k" : "v");
        }
        first = in;
        for (int j = 0; j < i; j++)
            if (nodes[j].layer == nodes[i].layer && nodes[j].head == nodes[i].head) {
                free(nodes);
                return ps_cfg_bad(x, ip, "\"%s\" appears twice in the list", it->valuestring);
            }
    }
    if (receivers) { ex->receivers = nodes; ex->n_receivers = n; ex->input = first; }
    else { ex->sender_list = nodes; ex->n_sender_list = n; ex->senders = PS_SENDERS_LIST; }
    return 0;
}

// The keys of a path_patch experiment (after name and kind).
static int load_path_patch(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex) {
    static const char *const keys[] = {"name", "kind", "senders", "receivers", "direction", "layers", "heads", "positions", "freeze_mlps"};
    if (ps_cfg_check_keys(x, obj, p, keys, COUNT(keys))) return -1;
    int dir = PS_DIR_NOISE;   // ARENA's: the clean run, the senders from the corrupted one
    if (ps_cfg_get_enum(x, obj, "direction", p, direction_names, COUNT(direction_names), &dir)) return -1;
    ex->direction = (ps_direction)dir;
    char **no_roles = NULL;
    if (get_nodes(x, obj, "senders", p, 0, ex) || get_nodes(x, obj, "receivers", p, 1, ex) ||
        ps_cfg_get_bool(x, obj, "freeze_mlps", p, &ex->freeze_mlps) ||
        ps_cfg_get_list(x, obj, "layers", p, 0, &ex->layers, &ex->n_layers, &no_roles) ||
        ps_cfg_get_list(x, obj, "heads", p, 0, &ex->heads, &ex->n_heads, &no_roles) ||
        ps_cfg_get_list(x, obj, "positions", p, 1, &ex->positions, &ex->n_positions, &ex->position_role))
        return -1;
    char kp[PATH_MAX_LEN];
    if (ex->senders == PS_SENDERS_LIST && (ex->layers || ex->heads)) {
        ps_cfg_key_path(kp, p, ex->layers ? "layers" : "heads");
        return ps_cfg_bad(x, kp, "filters a grid of senders (\"heads\", \"mlps\", \"all\"); this experiment lists its senders");
    }
    if (ex->senders == PS_SENDERS_MLPS && ex->heads) {
        ps_cfg_key_path(kp, p, "heads");
        return ps_cfg_bad(x, kp, "the senders are MLPs; heads filters a grid of heads");
    }
    return 0;
}

static int load_experiment(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_config *c, int64_t idx) {
    static const char *const keys[] = {"name", "kind", "site", "by", "direction", "layers", "heads", "neurons", "positions"};
    char got[200], kp[PATH_MAX_LEN];
    if (!cJSON_IsObject(obj)) {
        ps_json_describe(obj, got, sizeof got);
        return ps_cfg_bad(x, p, "expected an experiment object, got %s", got);
    }
    ps_experiment *ex = &c->experiments[idx];
    if (ps_cfg_get_str(x, obj, "name", p, 1, &ex->name)) return -1;
    ps_cfg_key_path(kp, p, "name");
    if (strlen(ex->name) > 128) return ps_cfg_bad(x, kp, "name longer than 128 characters");
    if (!name_ok(ex->name)) {
        char esc[200];
        ps_text_escape(ex->name, esc, sizeof esc, 60);
        return ps_cfg_bad(x, kp, "\"%s\": names use only A-Z a-z 0-9 _ . - (they become HDF5 group names)", esc);
    }
    for (int64_t j = 0; j < idx; j++)
        if (strcmp(c->experiments[j].name, ex->name) == 0)
            return ps_cfg_bad(x, kp, "\"%s\" is already the name of experiments[%lld]", ex->name, (long long)j);
    if (ps_cfg_get_str(x, obj, "kind", p, 0, &ex->kind)) return -1;
    if (!ex->kind && !(ex->kind = strdup(kind_names[0]))) return ps_cfg_nomem(x);
    ps_cfg_key_path(kp, p, "kind");
    size_t best = 0;
    for (size_t k = 0; k < COUNT(kind_names); k++) {
        if (!strcmp(ex->kind, kind_names[k])) { best = SIZE_MAX; break; }
        if (ps_edit_distance(ex->kind, kind_names[k]) < ps_edit_distance(ex->kind, kind_names[best])) best = k;
    }
    if (best != SIZE_MAX) {
        char esc[200];
        ps_text_escape(ex->kind, esc, sizeof esc, 60);
        return ps_cfg_bad(x, kp, "unknown kind \"%s\" (did you mean \"%s\"?)", esc, kind_names[best]);
    }
    // What the experiment means, whatever its kind, for the run's identity (key order and spacing aside).
    if (!(ex->canonical = ps_json_canonical(obj))) return ps_cfg_nomem(x);
    // Each kind has its own keys.
    if (!strcmp(ex->kind, "path_patch")) return load_path_patch(x, obj, p, ex);
    if (!strcmp(ex->kind, "ablation") || !strcmp(ex->kind, "circuit_search")) return ps_cfg_load_ablation(x, obj, p, ex);
    if (!strcmp(ex->kind, "edge_circuit")) return ps_cfg_load_edge_circuit(x, obj, p, ex);
    if (strcmp(ex->kind, "patch_sweep") != 0 && strcmp(ex->kind, "attribution") != 0) return ps_cfg_load_analysis(x, obj, p, ex);
    if (ps_cfg_check_keys(x, obj, p, keys, COUNT(keys))) return -1;

    const cJSON *sv = ps_cfg_member(obj, "site");
    ps_cfg_key_path(kp, p, "site");
    if (!sv) return ps_cfg_bad(x, kp, "required key missing");
    int site = 0;
    if (ps_cfg_pick(x, sv, kp, site_names, site_order, PS_SITE_COUNT, &site)) return -1;
    ex->site = (ps_site)site;
    if (ex->site == PS_SITE_RESULT) // no sweep layout, baseline caches or backward pass holds per-head outputs yet
        return ps_cfg_bad(x, kp, "%s does not patch hook_result (each head's output after W_O); patch heads at z, or ablate "
                          "them at result with an ablation experiment's \"head_site\": \"result\"", ex->kind);

    int layout = (int)ps_default_layout(ex->site);
    const cJSON *bv = ps_cfg_member(obj, "by");
    ps_cfg_key_path(kp, p, "by");
    if (bv && ps_cfg_pick(x, bv, kp, layout_names, NULL, PS_BY_COUNT, &layout)) return -1;
    ex->layout = (ps_layout)layout;
    if (!ps_layout_fits(ex->site, ex->layout)) {
        char list[256];
        size_t o = 0;
        for (int l = 0; l < PS_BY_COUNT; l++)
            if (ps_layout_fits(ex->site, (ps_layout)l))
                o += (size_t)snprintf(list + o, sizeof list - o, "%s%s", o ? " or " : "", layout_names[l]);
        return ps_cfg_bad(x, kp, "%s does not fit site %s (use %s)", layout_names[layout], site_names[site], list);
    }

    int dir = PS_DIR_DENOISE;
    if (ps_cfg_get_enum(x, obj, "direction", p, direction_names, COUNT(direction_names), &dir)) return -1;
    ex->direction = (ps_direction)dir;

    char **no_roles = NULL;
    if (ps_cfg_get_list(x, obj, "layers", p, 0, &ex->layers, &ex->n_layers, &no_roles) ||
        ps_cfg_get_list(x, obj, "heads", p, 0, &ex->heads, &ex->n_heads, &no_roles) ||
        ps_cfg_get_list(x, obj, "neurons", p, 0, &ex->neurons, &ex->n_neurons, &no_roles) ||
        ps_cfg_get_list(x, obj, "positions", p, 1, &ex->positions, &ex->n_positions, &ex->position_role))
        return -1;
    // Lists the layout does not sweep would be silently ignored; say so instead.
    const int by_head = ex->layout == PS_BY_LAYER_HEAD || ex->layout == PS_BY_LAYER_POS_HEAD, by_pos = ex->layout == PS_BY_LAYER_POS || ex->layout == PS_BY_LAYER_POS_HEAD;
    const struct { const char *key, *layouts; int unswept; } lists[] = {{"heads", "layer_head or layer_pos_head", ex->heads && !by_head},
        {"neurons", "layer_neuron", ex->neurons && ex->layout != PS_BY_LAYER_NEURON},
        {"positions", "layer_pos or layer_pos_head", ex->positions && !by_pos}};
    for (size_t k = 0; k < COUNT(lists); k++)
        if (lists[k].unswept) {
            ps_cfg_key_path(kp, p, lists[k].key);
            return ps_cfg_bad(x, kp, "only used with by %s (this sweep is %s%s)", lists[k].layouts, layout_names[ex->layout], k == 2 ? ", over all positions" : "");
        }
    return 0;
}

static char *default_output(const char *config_path) {
    const char *base = strrchr(config_path, '/');
    base = base ? base + 1 : config_path;
    size_t n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".json") == 0) n -= 5;
    size_t len = n + sizeof "results/.h5";
    char *out = malloc(len);
    if (out) snprintf(out, len, "results/%.*s.h5", (int)n, base);
    return out;
}

// OpenMP creates every thread asked for: tens of thousands crash it (or take minutes on a small job), so the
// bound follows the machine, with room for oversubscribing it a little.
static int check_threads(ps_cfg_ctx *x, int64_t threads) {
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    int64_t limit = cpus > 0 ? 4 * (int64_t)cpus : PS_MAX_THREADS;
    if (limit < 64) limit = 64;
    if (limit > PS_MAX_THREADS) limit = PS_MAX_THREADS;
    if (threads <= limit) return 0;
    return ps_cfg_bad(x, "threads", "%lld is more than this machine can use (at most %lld: 4 per online CPU, %ld CPUs, "
               "between 64 and %d); 0 uses all cores", (long long)threads, (long long)limit, cpus, PS_MAX_THREADS);
}

static int load_root(ps_cfg_ctx *x, const cJSON *root, ps_config *c) {
    static const char *const keys[] = {"model", "tokenizer", "backend", "precision", "threads", "prepend_bos", "output",
                                       "metric", "multi_token", "align", "batch_rows", "batch_prompts", "dataset", "experiments"};
    char got[200];
    if (!cJSON_IsObject(root)) {
        ps_json_describe(root, got, sizeof got);
        return ps_cfg_bad(x, NULL, "expected a JSON object at the top level, got %s", got);
    }
    if (ps_cfg_check_keys(x, root, "", keys, COUNT(keys))) return -1;
    if (ps_cfg_get_path(x, root, "model", "", 1, &c->model)) return -1;
    if (ps_cfg_get_path(x, root, "tokenizer", "", 0, &c->tokenizer)) return -1;
    // A top-level enum field through ps_cfg_get_enum's int (the default stays when the key is absent).
#define GET_ENUM(key, names, field)                                                                        \
    do {                                                                                                   \
        int v_ = (int)(field);                                                                             \
        if (ps_cfg_get_enum(x, root, key, "", names, COUNT(names), &v_)) return -1;                        \
        (field) = v_;                                                                                      \
    } while (0)
    GET_ENUM("backend", backend_names, c->backend);
    GET_ENUM("precision", precision_names, c->precision);
    int64_t threads = 0;
    if (ps_cfg_get_int(x, root, "threads", "", 0, 65536, &threads) || check_threads(x, threads)) return -1;
    c->threads = (int)threads;
    if (ps_cfg_get_bool(x, root, "prepend_bos", "", &c->prepend_bos)) return -1;
    if (ps_cfg_get_str(x, root, "output", "", 0, &c->output)) return -1;
    if (!c->output && !(c->output = default_output(x->file))) return ps_cfg_nomem(x);
    GET_ENUM("metric", metric_names, c->metric);
    GET_ENUM("multi_token", multitoken_names, c->multitoken);
    GET_ENUM("align", align_names, c->align);
#undef GET_ENUM
    if (ps_cfg_get_int(x, root, "batch_rows", "", 0, INT64_MAX, &c->batch_rows)) return -1;
    if (c->batch_rows > PS_MAX_BATCH_ROWS)
        return ps_cfg_bad(x, "batch_rows", "%lld is more than %d (a batch's activation caches are allocated at once; 0 lets "
                   "the planner choose)", (long long)c->batch_rows, PS_MAX_BATCH_ROWS);
    c->batch_prompts = 1;
    if (ps_cfg_get_int(x, root, "batch_prompts", "", 1, PS_MAX_BATCH_PROMPTS, &c->batch_prompts)) return -1;

    const cJSON *ds = ps_cfg_member(root, "dataset");
    if (!ds) return ps_cfg_bad(x, "dataset", "required key missing");
    if (cJSON_IsArray(ds)) {
        if (load_inline_items(x, ds, c)) return -1;
    } else if (cJSON_IsObject(ds)) {
        if (ps_cfg_load_dataset(x, ds, "dataset", 0, &c->items, &c->n_items, &c->dataset_path, &c->corrupted_path,
                                &c->no_corrupted))
            return -1;
    } else {
        ps_json_describe(ds, got, sizeof got);
        return ps_cfg_bad(x, "dataset", "expected an array of items or an object with a \"path\", got %s", got);
    }

    const cJSON *exs = ps_cfg_member(root, "experiments");
    if (exs) {
        if (!cJSON_IsArray(exs)) {
            ps_json_describe(exs, got, sizeof got);
            return ps_cfg_bad(x, "experiments", "expected an array of experiments, got %s", got);
        }
        int n = cJSON_GetArraySize(exs);
        if (n > 0) {
            c->experiments = calloc((size_t)n, sizeof *c->experiments);
            if (!c->experiments) return ps_cfg_nomem(x);
            c->n_experiments = n;
        }
        int i = 0;
        for (const cJSON *it = exs->child; it; it = it->next, i++) {
            char p[PATH_MAX_LEN];
            ps_cfg_index_path(p, "experiments", i);
            if (load_experiment(x, it, p, c, i)) return -1;
        }
    }
    if (ps_cfg_check_circuits(x, c) || ps_cfg_check_corrupted(x, c)) return -1;
    if (ps_cfg_add_means_tables(x, c)) return -1;
    return ps_cfg_add_neuron_tops(x, c);
}

int ps_config_load(ps_config *c, const char *path, ps_error *e) {
    memset(c, 0, sizeof *c);
    c->prepend_bos = 1;
    ps_cfg_ctx x = {path, NULL, e};
    cJSON *root = NULL;
    int rc = -1;
    size_t len = 0;
    c->path = strdup(path);
    x.dir = ps_dirname(path);
    if (!c->path || !x.dir) { ps_cfg_nomem(&x); goto out; }
    c->text = ps_read_file(path, &len, e);
    if (!c->text) goto out;
    if (strlen(c->text) != len) {
        size_t off = strlen(c->text);
        int line, col;
        ps_line_col(c->text, off, &line, &col);
        ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu (line %d, column %d): NUL byte in the config", path, off, line, col);
        goto out;
    }
    size_t badoff;
    if (ps_utf8_check(c->text, len, &badoff) != 0) {
        int line, col;
        ps_line_col(c->text, badoff, &line, &col);
        ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu (line %d, column %d): invalid UTF-8", path, badoff, line, col);
        goto out;
    }
    size_t body = len >= 3 && memcmp(c->text, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;   // editors on Windows add a BOM
    root = ps_json_parse(c->text + body, len - body, path, e);
    if (!root) goto out;
    rc = load_root(&x, root, c);
out:
    cJSON_Delete(root);
    free(x.dir);
    if (rc) ps_config_free(c);
    return rc;
}
