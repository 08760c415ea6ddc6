// The CPU forward pass against TransformerLens: every hooked activation and the logits of every tiny model
// (tests/data/*/golden_forward.safetensors, made by tests/golden/make_goldens.py), at 1e-4.
// Also: a ragged batch of all prompts gives each prompt the numbers it gets alone.
#include "golden_util.h"
#include "ps_forward.h"
#include "../src/backends/cpu_internal.h"
#include "testutil.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *hook;              // TransformerLens name after "blocks.<l>." (or the whole name, per_layer = 0)
    size_t field;                  // offsetof the array in ps_cache
    int per_layer;
} hook_map;

#define F(x) offsetof(ps_cache, x)
static const hook_map HOOKS[] = {
    {"hook_embed", F(embed), 0},
    {"hook_pos_embed", F(pos_embed), 0},
    {"hook_resid_pre", F(resid_pre), 1},
    {"ln1.hook_scale", F(ln1_scale), 1},
    {"attn.hook_q", F(q), 1},
    {"attn.hook_k", F(k), 1},
    {"attn.hook_v", F(v), 1},
    {"attn.hook_rot_q", F(rot_q), 1},
    {"attn.hook_rot_k", F(rot_k), 1},
    {"attn.hook_attn_scores", F(attn_scores), 1},
    {"attn.hook_pattern", F(pattern), 1},
    {"attn.hook_z", F(z), 1},
    {"attn.hook_result", F(result), 1},
    {"hook_attn_out", F(attn_out), 1},
    {"hook_resid_mid", F(resid_mid), 1},
    {"ln2.hook_scale", F(ln2_scale), 1},
    {"mlp.hook_pre", F(mlp_pre), 1},
    {"mlp.hook_pre_linear", F(mlp_pre_linear), 1},
    {"mlp.hook_post", F(mlp_post), 1},
    {"hook_mlp_out", F(mlp_out), 1},
    {"hook_resid_post", F(resid_post), 1},
    {"ln_final.hook_scale", F(lnf_scale), 0},
    {"logits", F(logits), 0},
};
#undef F

static float *field(ps_cache *c, size_t off) { return *(float **)((char *)c + off); }

// Compares every golden activation of one prompt; returns how many hooks were compared.
static int compare_prompt(const char *model, int p, const ps_safetensors *g, ps_cache *c, const ps_model_config *cfg) {
    int compared = 0;
    for (size_t h = 0; h < sizeof HOOKS / sizeof HOOKS[0]; h++) {
        int64_t layers = HOOKS[h].per_layer ? cfg->n_layers : 1;
        for (int64_t l = 0; l < layers; l++) {
            char key[256], name[320];
            if (HOOKS[h].per_layer) snprintf(key, sizeof key, "p%d.blocks.%lld.%s", p, (long long)l, HOOKS[h].hook);
            else snprintf(key, sizeof key, "p%d.%s", p, HOOKS[h].hook);
            int64_t n = 0;
            float *want = gu_f32(g, key, &n);
            if (!want) continue;
            float *arr = field(c, HOOKS[h].field);
            snprintf(name, sizeof name, "%s %s", model, key);
            if (!arr) {
                TU_CHECK(0, "%s: golden exists but the cache has no such array", name);
            } else {
                tu_close(name, arr + l * n, want, n, 1e-4f, 1e-4f);
                compared++;
            }
            free(want);
        }
    }
    return compared;
}

static void test_model(const char *name) {
    char dir[512], gpath[600];
    snprintf(dir, sizeof dir, "%s", tu_src("tests/data"));
    strncat(dir, "/", sizeof dir - strlen(dir) - 1);
    strncat(dir, name, sizeof dir - strlen(dir) - 1);
    snprintf(gpath, sizeof gpath, "%s/golden_forward.safetensors", dir);
    ps_error e = {0};
    ps_model m;
    if (ps_model_load(&m, dir, &e) != 0) { TU_CHECK(0, "%s: load: %s", name, e.msg); return; }
    ps_safetensors g;
    if (ps_safetensors_open(&g, gpath, &e) != 0) { TU_CHECK(0, "%s: goldens: %s", name, e.msg); ps_model_free(&m); return; }

    enum { MAXP = 16 };
    int32_t *tok[MAXP] = {0};
    int64_t T[MAXP] = {0};
    ps_cache solo[MAXP], batched[MAXP];
    int np = 0;
    for (; np < MAXP; np++) {
        char key[64];
        snprintf(key, sizeof key, "p%d.tokens", np);
        if (!(tok[np] = gu_i32(&g, key, &T[np]))) break;
    }
    TU_CHECK(np > 0, "%s: no prompts in the goldens", name);
    int hooks = 0;
    for (int p = 0; p < np; p++) {
        ps_cache_init(&solo[p], &m.cfg, T[p], PS_CACHE_ALL, &e);
        ps_row row = {.tokens = tok[p], .T = T[p], .cache = &solo[p]};
        if (ps_cpu_forward(&m, &row, 1, &e) != 0) { TU_CHECK(0, "%s: forward: %s", name, e.msg); continue; }
        hooks += compare_prompt(name, p, &g, &solo[p], &m.cfg);
    }
    TU_CHECK(hooks >= np * (int)m.cfg.n_layers * 14, "%s: only %d hooks compared", name, hooks);

    // All prompts in one ragged batch: each must get exactly its solo numbers (no padding artefacts).
    ps_row rows[MAXP];
    memset(rows, 0, sizeof rows);
    for (int p = 0; p < np; p++) {
        ps_cache_init(&batched[p], &m.cfg, T[p], PS_CACHE_ALL, &e);
        rows[p] = (ps_row){.tokens = tok[p], .T = T[p], .cache = &batched[p]};
    }
    if (ps_cpu_forward(&m, rows, np, &e) != 0) TU_CHECK(0, "%s: batched forward: %s", name, e.msg);
    for (int p = 0; p < np; p++) {
        char nm[128];
        snprintf(nm, sizeof nm, "%s p%d batched vs alone (all activations)", name, p);
        tu_close(nm, batched[p].memory, solo[p].memory, (int64_t)solo[p].n_floats, 1e-5f, 1e-5f);
    }
    // Groups on the threads (resident weights, two threads, one prompt a group and at least two groups a thread):
    // each group whole on one thread, so bitwise its own call on one thread, whichever thread took it.
    if (np >= 4) {
        const int nt0 = omp_get_max_threads();
        ps_cache one[MAXP], par[MAXP];
        ps_row prow[MAXP];
        int64_t pends[MAXP];
        memset(prow, 0, sizeof prow);
        omp_set_num_threads(1);
        for (int p = 0; p < np; p++) {
            ps_cache_init(&one[p], &m.cfg, T[p], PS_CACHE_ALL, &e);
            ps_cache_init(&par[p], &m.cfg, T[p], PS_CACHE_ALL, &e);
            ps_row row = {.tokens = tok[p], .T = T[p], .cache = &one[p]};
            if (ps_cpu_forward(&m, &row, 1, &e) != 0) TU_CHECK(0, "%s: one-thread forward: %s", name, e.msg);
            prow[p] = (ps_row){.tokens = tok[p], .T = T[p], .cache = &par[p]};
            pends[p] = p + 1;
        }
        omp_set_num_threads(2);
        TU_CHECK(ps_cpu_groups_on_threads(&m, prow, pends, np), "%s: %d one-prompt groups at two threads not run on the threads", name, np);
        if (ps_cpu_forward_groups(&m, prow, np, pends, np, &e) != 0) TU_CHECK(0, "%s: groups on the threads: %s", name, e.msg);
        for (int p = 0; p < np; p++) {
            TU_CHECK(memcmp(par[p].memory, one[p].memory, one[p].n_floats * sizeof(float)) == 0,
                     "%s p%d: group on a thread differs from its own one-thread call (bitwise)", name, p);
            ps_cache_free(&one[p]);
            ps_cache_free(&par[p]);
        }
        omp_set_num_threads(nt0);
    }
    // Streamed weights (the checkpoint stays mapped, one layer converted at a time) give the same numbers.
    ps_model ms;
    if (ps_model_load_mode(&ms, dir, PS_WEIGHTS_STREAMED, &e) != 0) {
        TU_CHECK(0, "%s: streamed load: %s", name, e.msg);
    } else {
        TU_CHECK(ms.stream != NULL && ms.w.w_q == NULL, "%s: streamed load kept the layer matrices resident", name);
        TU_CHECK(ms.n_floats < m.n_floats, "%s: streamed model holds %zu floats, resident %zu", name, ms.n_floats, m.n_floats);
        for (int p = 0; p < np; p++) {
            ps_cache sc;
            ps_cache_init(&sc, &ms.cfg, T[p], PS_CACHE_ALL, &e);
            ps_row row = {.tokens = tok[p], .T = T[p], .cache = &sc};
            if (ps_cpu_forward(&ms, &row, 1, &e) != 0) TU_CHECK(0, "%s: streamed forward: %s", name, e.msg);
            char nm[128];
            snprintf(nm, sizeof nm, "%s p%d streamed vs resident weights", name, p);
            tu_close(nm, sc.memory, solo[p].memory, (int64_t)solo[p].n_floats, 0.0f, 0.0f);
            ps_cache_free(&sc);
        }
        // The weights cache: none kept, one layer kept, all kept. Every prompt's activations stay bitwise the
        // resident ones, and a layer kept is converted once however many calls use it.
        ps_stream_info si;
        TU_CHECK(ps_model_stream_info(&ms, &si) == 1 && si.layer_bytes > 0, "%s: no stream info", name);
        const int64_t L = ms.cfg.n_layers;
        const size_t budgets[3] = {0, si.layer_bytes, (size_t)L * si.layer_bytes};
        const int64_t kept[3] = {0, 1, L};
        for (int b = 0; b < 3; b++) {
            ps_model_set_weights_cache(&ms, budgets[b]);
            ps_model_stream_info(&ms, &si);
            const int64_t conv0 = si.conversions;
            for (int p = 0; p < np; p++) {
                ps_cache sc;
                ps_cache_init(&sc, &ms.cfg, T[p], PS_CACHE_ALL, &e);
                ps_row row = {.tokens = tok[p], .T = T[p], .cache = &sc};
                if (ps_cpu_forward(&ms, &row, 1, &e) != 0) TU_CHECK(0, "%s: streamed forward: %s", name, e.msg);
                TU_CHECK(memcmp(sc.memory, solo[p].memory, solo[p].n_floats * sizeof(float)) == 0,
                         "%s p%d: streamed with %lld layers kept differs from resident (bitwise)", name, p, (long long)kept[b]);
                ps_cache_free(&sc);
            }
            ps_model_stream_info(&ms, &si);
            TU_CHECK(si.layers_kept == kept[b] && (int64_t)(si.kept_bytes / si.layer_bytes) == kept[b],
                     "%s: budget %zu keeps %lld layers, want %lld", name, budgets[b], (long long)si.layers_kept, (long long)kept[b]);
            // The last layer is the one kept with a one-layer budget; the others convert again on every call,
            // unless only one is left out (it stays in the scratch buffer).
            const int64_t want = kept[b] + (L - kept[b] > 1 ? (int64_t)np * (L - kept[b]) : L - kept[b]);
            TU_CHECK(si.conversions - conv0 == want, "%s: %lld layers kept: %lld conversions for %d prompts, want %lld", name,
                     (long long)kept[b], (long long)(si.conversions - conv0), np, (long long)want);
        }
        // Grouped rows (the baselines' call): each prompt a group of its own is bitwise its solo call, with each
        // layer converted once for all of them (nothing kept).
        ps_model_set_weights_cache(&ms, 0);
        ps_model_stream_info(&ms, &si);
        const int64_t conv_before = si.conversions;
        ps_cache gc[MAXP];
        ps_row grow[MAXP];
        memset(grow, 0, sizeof grow);
        for (int p = 0; p < np; p++) {
            ps_cache_init(&gc[p], &ms.cfg, T[p], PS_CACHE_ALL, &e);
            grow[p] = (ps_row){.tokens = tok[p], .T = T[p], .cache = &gc[p]};
        }
        int64_t gends[MAXP];
        for (int p = 0; p < np; p++) gends[p] = p + 1;
        if (ps_cpu_forward_groups(&ms, grow, np, gends, np, &e) != 0) TU_CHECK(0, "%s: grouped forward: %s", name, e.msg);
        ps_model_stream_info(&ms, &si);
        TU_CHECK(si.conversions - conv_before == L, "%s: grouped forward of %d prompts converted %lld layers, want %lld", name, np,
                 (long long)(si.conversions - conv_before), (long long)L);
        for (int p = 0; p < np; p++) {
            TU_CHECK(memcmp(gc[p].memory, solo[p].memory, solo[p].n_floats * sizeof(float)) == 0,
                     "%s p%d: grouped forward differs from the prompt's own call (bitwise)", name, p);
            ps_cache_free(&gc[p]);
        }
        ps_model_free(&ms);
    }
    for (int p = 0; p < np; p++) {
        ps_cache_free(&solo[p]);
        ps_cache_free(&batched[p]);
        free(tok[p]);
    }
    ps_safetensors_free(&g);
    ps_model_free(&m);
}

// The real pretrained stories260K (converted from llama2.c): logits against Hugging Face transformers running
// the same converted checkpoint (models/stories260K/golden_logits.safetensors, tests/golden/make_stories260k_goldens.py).
static void test_stories(void) {
    char dir[512], gp[600];
    snprintf(dir, sizeof dir, "%s", tu_src("models/stories260K"));
    snprintf(gp, sizeof gp, "%s/golden_logits.safetensors", dir);
    ps_error e = {0};
    ps_model m;
    ps_safetensors g;
    if (ps_model_load(&m, dir, &e) != 0) { TU_CHECK(0, "stories260K: %s", e.msg); return; }
    if (ps_safetensors_open(&g, gp, &e) != 0) { TU_CHECK(0, "stories260K goldens: %s", e.msg); ps_model_free(&m); return; }
    const char *sets[2][2] = {{"tokens", "logits"}, {"prompt_tokens", "prompt_logits"}};
    for (int k = 0; k < 2; k++) {
        int64_t T = 0, n = 0;
        int32_t *tok = gu_i32(&g, sets[k][0], &T);
        float *want = gu_f32(&g, sets[k][1], &n);
        if (!tok || !want || n != T * m.cfg.d_vocab) {
            TU_CHECK(0, "stories260K: golden %s/%s missing or misshapen", sets[k][0], sets[k][1]);
        } else {
            ps_cache c;
            ps_cache_init(&c, &m.cfg, T, PS_CACHE_LOGITS, &e);
            ps_row row = {.tokens = tok, .T = T, .cache = &c};
            if (ps_cpu_forward(&m, &row, 1, &e) != 0) TU_CHECK(0, "stories260K forward: %s", e.msg);
            char nm[96];
            snprintf(nm, sizeof nm, "stories260K %s vs HF transformers", sets[k][1]);
            tu_close(nm, c.logits, want, n, 1e-4f, 1e-4f);
            ps_cache_free(&c);
        }
        free(tok);
        free(want);
    }
    ps_safetensors_free(&g);
    ps_model_free(&m);
}

int main(void) {
    test_stories();
    int tested = gu_for_each_model(test_model);
    printf("%d models compared with TransformerLens\n", tested);
    return tu_done("forward");
}
