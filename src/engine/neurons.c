// A small Neuroscope: chosen MLP neurons' activations (hook_mlp_post) at every position of every prompt, and
// each neuron's top-k (prompt, position) pairs with their token and context as labels (ps_analysis.h).
#include "ps_analysis.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int neuron_labels(const ps_model_config *mc, const int64_t *layer, const int64_t *index, int64_t n, int64_t *val, char **lab,
                         const char *name, ps_error *e) {
    for (int64_t i = 0; i < n; i++) {
        if (layer[i] < 0 || layer[i] >= mc->n_layers || index[i] < 0 || index[i] >= mc->d_mlp)
            return ps_fail(e, PS_EXIT_BADINPUT, "neurons[%lld]: %lld.%lld is not in the model (%lld layers x %lld neurons)", (long long)i, (long long)layer[i], (long long)index[i], (long long)mc->n_layers, (long long)mc->d_mlp);
        char buf[48];
        snprintf(buf, sizeof buf, "%lld.%lld", (long long)layer[i], (long long)index[i]);
        val[i] = layer[i] * mc->d_mlp + index[i];
        if (!(lab[i] = strdup(buf))) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", name);
    }
    return 0;
}

int ps_neurons_table_init(ps_table *t, const char *name, const ps_model_config *mc, int64_t n_rows, const int64_t *layer,
                          const int64_t *index, int64_t n, int64_t T_max, ps_error *e) {
    int64_t *val = malloc((size_t)(n + T_max) * sizeof *val);
    char **lab = calloc((size_t)(n > 0 ? n : 1), sizeof *lab);
    int rc = val && lab ? neuron_labels(mc, layer, index, n, val, lab, name, e) : ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", name);
    if (rc == 0) {
        for (int64_t p = 0; p < T_max; p++) val[n + p] = p;
        ps_axis axes[2] = {{.name = "neuron", .len = n, .value = val, .label = lab}, {.name = "pos", .len = T_max, .value = val + n}};
        rc = ps_table_init(t, name, "neurons", 1, n_rows, 2, axes, 0, e);
        if (rc == 0 && (ps_table_attr_str(t, "site", "blocks.l.mlp.hook_post (Llama: act(gate) * up, TransformerLens's)", e) ||
                        ps_table_attr_str(t, "neuron_value", "layer * d_mlp + neuron", e)))
            rc = -1;
        if (rc != 0) ps_table_free(t);
    }
    ps_labels_free(lab, n);
    free(val);
    return rc;
}

void ps_neurons_prompt(const ps_model_config *mc, const ps_cache *c, const int64_t *layer, const int64_t *index, int64_t n,
                       int64_t T_prompt, int64_t T_max, float *out) {
    const int64_t M = mc->d_mlp, T = c->T;
    for (int64_t i = 0; i < n; i++)
        for (int64_t p = 0; p < T_max; p++)
            out[i * T_max + p] = p < T_prompt && p < T ? c->mlp_post[(layer[i] * T + p) * M + index[i]] : NAN;
}

// Higher activation first; ties: the lower prompt, then the lower position.
typedef struct { float a; int64_t prompt, pos; } cand;
static int before(const cand *x, const cand *y) {
    if (x->a != y->a) return x->a > y->a;
    if (x->prompt != y->prompt) return x->prompt < y->prompt;
    return x->pos < y->pos;
}

int ps_neuron_top_rank(const float *acts, int64_t n_prompts, int64_t n, int64_t T_max, int64_t i, int64_t k, int64_t *prompt,
                       int64_t *pos, float *act) {
    cand *best = malloc((size_t)(k > 0 ? k : 1) * sizeof *best);
    if (!best) return -1;
    int64_t have = 0;
    // Insertion into the k best so far: O(cells x k), no buffer of every cell.
    for (int64_t r = 0; r < n_prompts; r++)
        for (int64_t p = 0; p < T_max; p++) {
            const float a = acts[(r * n + i) * T_max + p];
            if (isnan(a)) continue;
            cand c = {a, r, p};
            if (have == k && !before(&c, &best[k - 1])) continue;
            int64_t j = have < k ? have++ : k - 1;
            while (j > 0 && before(&c, &best[j - 1])) { best[j] = best[j - 1]; j--; }
            best[j] = c;
        }
    for (int64_t j = 0; j < k; j++) {
        prompt[j] = j < have ? best[j].prompt : -1;
        pos[j] = j < have ? best[j].pos : -1;
        act[j] = j < have ? best[j].a : NAN;
    }
    free(best);
    return 0;
}

static const char *const top_fields[PS_NEURON_TOP_FIELDS] = {"layer", "neuron", "rank", "activation", "prompt", "pos", "token"};

int ps_neuron_top_table_init(ps_table *t, const char *name, const ps_model_config *mc, const int64_t *layer, const int64_t *index,
                             int64_t n, int64_t k, ps_error *e) {
    int64_t *val = malloc((size_t)(n * k + PS_NEURON_TOP_FIELDS + n) * sizeof *val);
    char **nlab = calloc((size_t)(n > 0 ? n : 1), sizeof *nlab);
    int rc = val && nlab ? neuron_labels(mc, layer, index, n, val + n * k + PS_NEURON_TOP_FIELDS, nlab, name, e)
                         : ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", name);
    ps_labels_free(nlab, n);
    if (rc == 0) {
        for (int64_t j = 0; j < n * k; j++) val[j] = j;
        for (int64_t f = 0; f < PS_NEURON_TOP_FIELDS; f++) val[n * k + f] = f;
        ps_axis axes[2] = {{.name = "entry", .len = n * k, .value = val},
                           {.name = "field", .len = PS_NEURON_TOP_FIELDS, .value = val + n * k, .label = (char **)top_fields}};
        rc = ps_table_init(t, name, "neuron_top", 0, 1, 2, axes, 0, e);
        if (rc == 0 && (ps_table_attr_i64(t, "top_k", k, e) ||
                        ps_table_attr_str(t, "entry", "neuron i's rank r at i * top_k + r; label: the context, the token in [[ ]]", e) ||
                        ps_table_attr_str(t, "order", "activation descending; ties: the lower prompt, then the lower position", e)))
            rc = -1;
        if (rc != 0) ps_table_free(t);
    }
    free(val);
    return rc;
}

// Appends a token's text to buf, control bytes and bytes outside printable ASCII and valid UTF-8 as \xNN (a label
// is one line of valid UTF-8 whatever the token).
static void put_token(char *buf, size_t cap, size_t *o, const char *s, size_t len) {
    for (size_t i = 0; i < len && *o + 8 < cap;) {
        unsigned char b = (unsigned char)s[i];
        size_t n = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
        int ok = n > 0 && i + n <= len && !(n == 1 && (b < 0x20 || b == 0x7f));
        for (size_t j = 1; ok && j < n; j++) ok = ((unsigned char)s[i + j] >> 6) == 2;
        if (ok && n == 2) ok = b >= 0xc2;
        if (ok) {
            memcpy(buf + *o, s + i, n);
            *o += n;
            i += n;
        } else {
            *o += (size_t)snprintf(buf + *o, cap - *o, b == '\n' ? "\\n" : "\\x%02x", b);
            i++;
        }
    }
    buf[*o] = 0;
}

int ps_neuron_top_fill(ps_table *t, const ps_tokenizer *tok, const int32_t *const *tokens, const int64_t *T_prompt, int64_t n_prompts,
                       const float *acts, int64_t n, int64_t T_max, const int64_t *layer, const int64_t *index, int64_t window,
                       ps_error *e) {
    const int64_t k = t->axes[0].len / (n > 0 ? n : 1), F = PS_NEURON_TOP_FIELDS;
    int64_t *prompt = malloc((size_t)k * sizeof *prompt), *pos = malloc((size_t)k * sizeof *pos);
    float *act = malloc((size_t)k * sizeof *act);
    ps_axis *ax = &t->axes[0];
    if (!ax->label) ax->label = calloc((size_t)ax->len, sizeof *ax->label);
    if (!prompt || !pos || !act || !ax->label) {
        free(prompt); free(pos); free(act);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", t->name);
    }
    int rc = 0;
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        if (ps_neuron_top_rank(acts, n_prompts, n, T_max, i, k, prompt, pos, act) != 0) { rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", t->name); break; }
        for (int64_t r = 0; r < k; r++) {
            float *row = t->values + (i * k + r) * F;
            const int64_t q = prompt[r], p = pos[r];
            row[0] = (float)layer[i]; row[1] = (float)index[i]; row[2] = (float)r; row[3] = act[r];
            row[4] = q >= 0 ? (float)q : NAN; row[5] = q >= 0 ? (float)p : NAN; row[6] = q >= 0 ? (float)tokens[q][p] : NAN;
            free(ax->label[i * k + r]);
            ax->label[i * k + r] = NULL;
            if (q < 0) continue;
            char buf[2048];
            size_t o = 0;
            buf[0] = 0;
            const int64_t a = p - window > 0 ? p - window : 0, b = p + window < T_prompt[q] - 1 ? p + window : T_prompt[q] - 1;
            for (int64_t s = a; s <= b; s++) {
                size_t len = 0;
                const char *txt = tok ? ps_tokenizer_token_bytes(tok, tokens[q][s], &len) : NULL;
                char id[24];
                if (!txt) { snprintf(id, sizeof id, "<%d>", tokens[q][s]); txt = id; len = strlen(id); }
                if (s == p) put_token(buf, sizeof buf, &o, "[[", 2);
                put_token(buf, sizeof buf, &o, txt, len);
                if (s == p) put_token(buf, sizeof buf, &o, "]]", 2);
            }
            if (!(ax->label[i * k + r] = strdup(buf))) { rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", t->name); break; }
        }
    }
    free(prompt); free(pos); free(act);
    return rc;
}
