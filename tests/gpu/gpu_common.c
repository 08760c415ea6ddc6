// Helpers shared by the GPU tests: skip rule, random in-memory models, and the CUDA-vs-CPU forward comparison.
#include "gpu_common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// SKIP only where there is no NVIDIA GPU at all. Where the driver's device nodes exist, a runtime that
// finds no device (a driver older than the CUDA 13 runtime, a broken install) is a failure, not a skip:
// otherwise the suite would pass on the very machine it is meant for.
void gpu_require_device(void) {
    char why[256] = "";
    if (ps_cuda_device_count(why, sizeof why) <= 0) {
        if (access("/dev/nvidiactl", F_OK) == 0 || access("/dev/nvidia0", F_OK) == 0 ||
            access("/proc/driver/nvidia/version", F_OK) == 0) {
            printf("FAIL: this machine has an NVIDIA driver but CUDA finds no usable device (%s)\n", why);
            exit(1);
        }
        printf("SKIP: no CUDA device (%s)\n", why);
        exit(77);
    }
}

uint64_t gpu_rand_u64(uint64_t *s) {
    uint64_t x = *s += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

float gpu_rand_uniform(uint64_t *s) { return (float)((double)(gpu_rand_u64(s) >> 11) / 9007199254740992.0 * 2.0 - 1.0); }

int gpu_random_model(ps_model *m, ps_arch arch, int64_t L, int64_t H, int64_t Hkv, int64_t D, int64_t M, int64_t V,
                     int64_t n_ctx, uint64_t seed) {
    memset(m, 0, sizeof *m);
    ps_model_config *c = &m->cfg;
    const int gpt2 = arch == PS_ARCH_GPT2, neox = arch == PS_ARCH_NEOX, llama = arch == PS_ARCH_LLAMA;
    const int biased = gpt2 || neox;  // LayerNorm biases and linear biases (GPT-2, GPT-NeoX)
    c->arch = arch;
    c->n_layers = L;
    c->d_model = H * D;
    c->n_heads = H;
    c->n_kv_heads = Hkv;
    c->d_head = D;
    c->d_mlp = M;
    c->d_vocab = V;
    c->n_ctx = n_ctx;
    c->eps = 1e-5f;
    c->act = gpt2 ? PS_ACT_GELU_NEW : neox ? PS_ACT_GELU : PS_ACT_SILU;
    c->rope_theta = 10000.0f;
    // GPT-NeoX: partial rotary (a quarter of each head, even) and a parallel residual; a caller may turn the
    // latter off (cfg.parallel_residual = 0) for the sequential layout.
    c->rotary_dim = gpt2 ? 0 : neox ? (D / 4 >= 2 ? D / 4 / 2 * 2 : 2) : D;
    c->parallel_residual = neox;
    c->bos_id = c->eos_id = -1;
    c->tie_word_embeddings = gpt2;
    strcpy(c->dtype, "float32");
    const int64_t C = H * D, QD = H * D, KD = Hkv * D;
    ps_weights *w = &m->w;
    // (slot, size, kind): kind 0 = matrix with fan-in `fan`, 1 = norm weight (near 1), 2 = bias (small).
    struct { float **slot; int64_t n, fan; int kind; } spec[] = {
        {&w->wte, V * C, 1, 0},
        {&w->wpe, gpt2 ? n_ctx * C : 0, 1, 0},
        {&w->ln1_w, L * C, 0, 1},
        {&w->ln1_b, biased ? L * C : 0, 0, 2},
        {&w->w_q, L * C * QD, C, 0},
        {&w->w_k, L * C * KD, C, 0},
        {&w->w_v, L * C * KD, C, 0},
        {&w->b_q, biased ? L * QD : 0, 0, 2},
        {&w->b_k, biased ? L * KD : 0, 0, 2},
        {&w->b_v, biased ? L * KD : 0, 0, 2},
        {&w->w_o, L * QD * C, QD, 0},
        {&w->b_o, biased ? L * C : 0, 0, 2},
        {&w->ln2_w, L * C, 0, 1},
        {&w->ln2_b, biased ? L * C : 0, 0, 2},
        {&w->w_in, L * C * M, C, 0},
        {&w->w_up, llama ? L * C * M : 0, C, 0},
        {&w->b_in, biased ? L * M : 0, 0, 2},
        {&w->w_out, L * M * C, M, 0},
        {&w->b_out, biased ? L * C : 0, 0, 2},
        {&w->lnf_w, C, 0, 1},
        {&w->lnf_b, biased ? C : 0, 0, 2},
        {&w->w_u, gpt2 ? 0 : V * C, C, 0},
        {&w->b_u, biased ? V : 0, 0, 2},
    };
    const size_t n_spec = sizeof spec / sizeof spec[0];
    size_t total = 0;
    for (size_t i = 0; i < n_spec; i++) total += (size_t)spec[i].n;
    m->memory = calloc(total, sizeof(float));
    if (!m->memory) return -1;
    m->n_floats = total;
    uint64_t s = seed;
    size_t at = 0;
    for (size_t i = 0; i < n_spec; i++) {
        *spec[i].slot = spec[i].n ? m->memory + at : NULL;
        const float scale = spec[i].kind == 0 ? 1.7f / sqrtf((float)spec[i].fan) : 0.1f;
        for (int64_t j = 0; j < spec[i].n; j++) {
            float r = gpu_rand_uniform(&s) * scale;
            m->memory[at + j] = spec[i].kind == 1 ? 1.0f + r : r;
        }
        at += (size_t)spec[i].n;
    }
    if (gpt2) w->w_u = w->wte;
    strcpy(m->file_dtype, "float32");
    return 0;
}

void gpu_free_model(ps_model *m) {
    free(m->memory);
    memset(m, 0, sizeof *m);
}

gpu_tol gpu_tol_for(ps_precision prec) {
    // fp32: the brief's 1e-4. fp16/bf16 round every GEMM input (weights and activations) to 11/8 significant
    // bits while the CPU stays fp32, so errors scale with each array's magnitude; these bounds are generous
    // guesses (about 10x/30x the unit roundoff) that have not been calibrated on hardware yet.
    gpu_tol t = {1e-4f, 0.0f, 1e-4f};
    if (prec == PS_PREC_FP16) t = (gpu_tol){1e-3f, 1e-2f, 1e-2f};
    if (prec == PS_PREC_BF16) t = (gpu_tol){1e-2f, 6e-2f, 6e-2f};
    return t;
}

int gpu_close(const char *name, const float *got, const float *want, int64_t n, gpu_tol t) {
    float mx = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(want[i]) && fabsf(want[i]) > mx) mx = fabsf(want[i]);
    return tu_close(name, got, want, n, t.abs_floor + t.rel * mx, t.rtol);
}

// Every array of two caches of the same shape, by name.
static void compare_caches(const char *what, const ps_cache *got, const ps_cache *want, const ps_model_config *cfg,
                           gpu_tol t) {
    const int64_t T = want->T, L = cfg->n_layers, C = cfg->d_model, H = cfg->n_heads, Hkv = cfg->n_kv_heads,
                  D = cfg->d_head, M = cfg->d_mlp, V = cfg->d_vocab;
    struct { const char *name; const float *g, *w; int64_t n; } a[] = {
        {"embed", got->embed, want->embed, T * C},
        {"pos_embed", got->pos_embed, want->pos_embed, T * C},
        {"resid_pre", got->resid_pre, want->resid_pre, L * T * C},
        {"ln1_scale", got->ln1_scale, want->ln1_scale, L * T},
        {"q", got->q, want->q, L * T * H * D},
        {"k", got->k, want->k, L * T * Hkv * D},
        {"v", got->v, want->v, L * T * Hkv * D},
        {"rot_q", got->rot_q, want->rot_q, L * T * H * D},
        {"rot_k", got->rot_k, want->rot_k, L * T * Hkv * D},
        {"attn_scores", got->attn_scores, want->attn_scores, L * H * T * T},
        {"pattern", got->pattern, want->pattern, L * H * T * T},
        {"z", got->z, want->z, L * T * H * D},
        {"result", got->result, want->result, L * T * H * C},
        {"attn_out", got->attn_out, want->attn_out, L * T * C},
        {"resid_mid", got->resid_mid, want->resid_mid, L * T * C},
        {"ln2_scale", got->ln2_scale, want->ln2_scale, L * T},
        {"mlp_pre", got->mlp_pre, want->mlp_pre, L * T * M},
        {"mlp_pre_linear", got->mlp_pre_linear, want->mlp_pre_linear, L * T * M},
        {"mlp_post", got->mlp_post, want->mlp_post, L * T * M},
        {"mlp_out", got->mlp_out, want->mlp_out, L * T * C},
        {"resid_post", got->resid_post, want->resid_post, L * T * C},
        {"lnf_scale", got->lnf_scale, want->lnf_scale, T},
        {"logits", got->logits, want->logits, T * V},
    };
    for (size_t i = 0; i < sizeof a / sizeof a[0]; i++) {
        TU_CHECK(!a[i].g == !a[i].w, "%s: cache.%s present on one side only", what, a[i].name);
        if (!a[i].g || !a[i].w) continue;
        char name[256];
        snprintf(name, sizeof name, "%s cache.%s", what, a[i].name);
        gpu_close(name, a[i].g, a[i].w, a[i].n, t);
    }
}

// One patched row as the test describes it; the sources are picked when the row is made for a backend.
typedef struct {
    char what[64];
    int64_t start_layer, start_pos;
    int n_p;
    ps_patch p[2];
    int src_clean[2];   // 1: the clean cache, 0: the corrupted one
    int use_cols;
} row_spec;

static int make_specs(row_spec *sp, const ps_model_config *cfg, int64_t T) {
    const int64_t L = cfg->n_layers, H = cfg->n_heads, Hkv = cfg->n_kv_heads, M = cfg->d_mlp;
    int n = 0;
    for (int s = 0; s < PS_SITE_COUNT; s++) {
        // A parallel-residual GPT-NeoX has no resid_mid (ps_row_check refuses its site).
        if (!ps_array_in_model(cfg, ps_site_array((ps_site)s))) continue;
        if (s == PS_SITE_RESULT) continue;   // not in PS_CAPS_CUDA: the engine refuses such rows on CUDA
        row_spec *r = &sp[n++];
        memset(r, 0, sizeof *r);
        const int64_t l = s % L;
        int64_t pos = (s % 3 == 1 || T == 1) ? -1 : T - 1 - (s % T);
        int64_t nh = (s == PS_SITE_K || s == PS_SITE_V) ? Hkv : H;
        r->n_p = 1;
        r->p[0] = (ps_patch){.site = (ps_site)s, .layer = l, .head = s % 2 ? -1 : (s / 2) % nh, .pos = pos, .neuron = s % 3 == 0 ? -1 : (s * 37 + 5) % M};
        r->src_clean[0] = 1;
        r->start_layer = l;
        r->start_pos = pos >= 0 ? pos : 0;
        r->use_cols = s % 2;
        snprintf(r->what, sizeof r->what, "%s L%lld h%lld p%lld", ps_site_name((ps_site)s), (long long)l,
                 (long long)r->p[0].head, (long long)pos);
    }
    row_spec *r;
    // Past the last layer: only the final resid_post is patched.
    r = &sp[n++];
    memset(r, 0, sizeof *r);
    r->n_p = 1;
    r->p[0] = (ps_patch){.site = PS_SITE_RESID_POST, .layer = L - 1, .head = -1, .pos = T - 1, .neuron = -1};
    r->src_clean[0] = 1;
    r->start_layer = L;
    r->start_pos = T - 1;
    snprintf(r->what, sizeof r->what, "tail resid_post");
    // Overlapping patches: the later one wins where they overlap.
    r = &sp[n++];
    memset(r, 0, sizeof *r);
    r->n_p = 2;
    r->p[0] = (ps_patch){.site = PS_SITE_Z, .layer = L - 1, .head = -1, .pos = -1, .neuron = -1};
    r->p[1] = (ps_patch){.site = PS_SITE_Z, .layer = L - 1, .head = 0, .pos = -1, .neuron = -1};
    r->src_clean[0] = 1;
    r->src_clean[1] = 0;
    r->start_layer = L - 1;
    snprintf(r->what, sizeof r->what, "overlapping z");
    r = &sp[n++];
    memset(r, 0, sizeof *r);
    r->n_p = 2;
    r->p[0] = (ps_patch){.site = PS_SITE_PATTERN, .layer = 0, .head = -1, .pos = -1, .neuron = -1};
    r->p[1] = (ps_patch){.site = PS_SITE_PATTERN, .layer = 0, .head = H - 1, .pos = T - 1, .neuron = -1};
    r->src_clean[0] = 1;
    r->src_clean[1] = 0;
    r->use_cols = 1;
    snprintf(r->what, sizeof r->what, "overlapping pattern");
    // No patches: from scratch, and from the middle of the corrupted run (must give its logits back).
    r = &sp[n++];
    memset(r, 0, sizeof *r);
    snprintf(r->what, sizeof r->what, "plain");
    r = &sp[n++];
    memset(r, 0, sizeof *r);
    r->start_pos = T / 2;
    r->start_layer = L > 1 ? 1 : 0;
    snprintf(r->what, sizeof r->what, "resume at pos %lld", (long long)(T / 2));
    return n;
}

typedef struct {
    ps_row *rows;
    ps_patch *patches;
    int64_t *out_pos;
    int32_t *cols;
    float *logits;
    int64_t *logit_off, *logit_n;
    int n;
} row_set;

static void free_set(row_set *s) {
    free(s->rows); free(s->patches); free(s->out_pos); free(s->cols); free(s->logits); free(s->logit_off); free(s->logit_n);
    memset(s, 0, sizeof *s);
}

static int make_set(row_set *s, const row_spec *sp, int n, const int32_t *tokens, int64_t T, const ps_cache *base,
                    const ps_cache *clean, const ps_cache *corr, int64_t V) {
    memset(s, 0, sizeof *s);
    s->n = n;
    s->rows = calloc((size_t)n, sizeof *s->rows);
    s->patches = calloc((size_t)n * 2, sizeof *s->patches);
    s->out_pos = calloc((size_t)(n * T), sizeof *s->out_pos);
    s->cols = calloc(5, sizeof *s->cols);
    s->logit_off = calloc((size_t)n, sizeof *s->logit_off);
    s->logit_n = calloc((size_t)n, sizeof *s->logit_n);
    if (!s->rows || !s->patches || !s->out_pos || !s->cols || !s->logit_off || !s->logit_n) return -1;
    const int32_t cols[5] = {0, (int32_t)(V - 1), (int32_t)(V / 2), 3 % (int32_t)V, (int32_t)(V - 1)};
    memcpy(s->cols, cols, sizeof cols);
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        const int64_t n_out = T - sp[i].start_pos;
        s->logit_off[i] = total;
        s->logit_n[i] = n_out * (sp[i].use_cols ? 5 : V);
        total += s->logit_n[i];
    }
    s->logits = calloc((size_t)total, sizeof(float));
    if (!s->logits) return -1;
    for (int i = 0; i < n; i++) {
        ps_row *r = &s->rows[i];
        r->tokens = tokens;
        r->T = T;
        r->base = base;
        r->start_layer = sp[i].start_layer;
        r->start_pos = sp[i].start_pos;
        for (int p = 0; p < sp[i].n_p; p++) {
            s->patches[2 * i + p] = sp[i].p[p];
            s->patches[2 * i + p].src = sp[i].src_clean[p] ? clean : corr;
        }
        r->patches = s->patches + 2 * i;
        r->n_patches = sp[i].n_p;
        r->n_out = T - sp[i].start_pos;
        r->out_pos = s->out_pos + i * T;
        for (int64_t o = 0; o < r->n_out; o++) s->out_pos[i * T + o] = sp[i].start_pos + o;
        if (sp[i].use_cols) {
            r->cols = s->cols;
            r->n_cols = 5;
        }
        r->logits = s->logits + s->logit_off[i];
    }
    return 0;
}

static void compare_sets(const char *what, const row_set *got, const row_set *want, const row_spec *sp, gpu_tol t) {
    for (int i = 0; i < want->n; i++) {
        char name[256];
        snprintf(name, sizeof name, "%s row %d (%s) logits", what, i, sp[i].what);
        gpu_close(name, got->logits + got->logit_off[i], want->logits + want->logit_off[i], want->logit_n[i], t);
    }
}

static void run_or_fail(const char *what, int rc, const ps_error *e) {
    TU_CHECK(rc == 0, "%s: forward failed: %s", what, e->msg);
}

static void compare_T(ps_backend *b, const ps_model *m, const char *label, int64_t T, gpu_tol t, uint64_t seed) {
    const ps_model_config *cfg = &m->cfg;
    const int64_t V = cfg->d_vocab;
    char what[192];
    snprintf(what, sizeof what, "%s %s T=%lld", label, ps_precision_name(b->precision), (long long)T);
    int32_t *clean = malloc((size_t)T * sizeof *clean), *corr = malloc((size_t)T * sizeof *corr);
    if (!clean || !corr) { TU_CHECK(0, "out of memory"); free(clean); free(corr); return; }
    uint64_t s = seed;
    for (int64_t i = 0; i < T; i++) {
        clean[i] = (int32_t)(gpu_rand_u64(&s) % (uint64_t)V);
        corr[i] = i % 3 == 2 ? (int32_t)(gpu_rand_u64(&s) % (uint64_t)V) : clean[i];
    }
    ps_error e = {0};
    ps_cache cc_clean, cc_corr, gc_clean, gc_corr, cc_pat, gc_pat;
    int ok = ps_cache_init(&cc_clean, cfg, T, PS_CACHE_ALL, &e) == 0 && ps_cache_init(&cc_corr, cfg, T, PS_CACHE_ALL, &e) == 0 &&
             ps_cache_init(&gc_clean, cfg, T, PS_CACHE_ALL, &e) == 0 && ps_cache_init(&gc_corr, cfg, T, PS_CACHE_ALL, &e) == 0 &&
             ps_cache_init(&cc_pat, cfg, T, PS_CACHE_ALL, &e) == 0 && ps_cache_init(&gc_pat, cfg, T, PS_CACHE_ALL, &e) == 0;
    TU_CHECK(ok, "%s: cache init: %s", what, e.msg);

    // 1. Cache rows: clean and corrupted, plus a patched cache row (v of layer 0 from the clean run), and the
    //    last position's logits on the side.
    float lg_cpu[2 * 5], lg_gpu[2 * 5];
    const int64_t last = T - 1;
    const int32_t cols[5] = {1 % (int32_t)V, 0, (int32_t)(V - 1), (int32_t)(V / 3), 2 % (int32_t)V};
    ps_patch pv = {.site = PS_SITE_V, .layer = 0, .head = -1, .pos = -1, .neuron = -1};
    ps_row rc[3], rg[3];
    if (ok) {
        memset(rc, 0, sizeof rc);
        rc[0] = (ps_row){.tokens = clean, .T = T, .cache = &cc_clean, .out_pos = &last, .n_out = 1, .cols = cols, .n_cols = 5, .logits = lg_cpu};
        rc[1] = (ps_row){.tokens = corr, .T = T, .cache = &cc_corr, .out_pos = &last, .n_out = 1, .cols = cols, .n_cols = 5, .logits = lg_cpu + 5};
        memcpy(rg, rc, sizeof rc);
        rg[0].cache = &gc_clean; rg[0].logits = lg_gpu;
        rg[1].cache = &gc_corr; rg[1].logits = lg_gpu + 5;
        run_or_fail(what, ps_cpu_forward(m, rc, 2, &e), &e);
        run_or_fail(what, b->forward(b, m, rg, 2, &e), &e);
        char name[256];
        snprintf(name, sizeof name, "%s clean", what);
        compare_caches(name, &gc_clean, &cc_clean, cfg, t);
        snprintf(name, sizeof name, "%s corrupted", what);
        compare_caches(name, &gc_corr, &cc_corr, cfg, t);
        snprintf(name, sizeof name, "%s cache-row cols logits", what);
        gpu_close(name, lg_gpu, lg_cpu, 10, t);

        pv.src = &cc_clean;
        rc[2] = (ps_row){.tokens = corr, .T = T, .cache = &cc_pat, .patches = &pv, .n_patches = 1};
        rg[2] = rc[2];
        rg[2].cache = &gc_pat;
        run_or_fail(what, ps_cpu_forward(m, &rc[2], 1, &e), &e);
        run_or_fail(what, b->forward(b, m, &rg[2], 1, &e), &e);
        snprintf(name, sizeof name, "%s patched cache row", what);
        compare_caches(name, &gc_pat, &cc_pat, cfg, t);

        // The handle contract (ps_backend.h): a cache the backend read or produced carries its handle; a batch
        // that writes a cache another of its rows reads is refused; release_cache drops the copy (handle 0).
        TU_CHECK(gc_clean.handle && cc_clean.handle && gc_pat.handle, "%s: caches the backend used have no handle", what);
        ps_row alias = rg[2];
        alias.patches = &pv;
        pv.src = &gc_pat;  // reads the cache the same row writes
        ps_error ae = {0};
        TU_CHECK(b->forward(b, m, &alias, 1, &ae) != 0 && strstr(ae.msg, "also read"),
                 "%s: a row reading its own output cache: want a refusal, got \"%s\"", what, ae.msg);
        pv.src = &cc_clean;
        b->release_cache(b, &gc_pat);
        TU_CHECK(gc_pat.handle == 0, "%s: release_cache left the handle set", what);
        b->release_cache(b, &gc_pat);  // twice: a no-op
    }

    // 2. One batch of patched rows with mixed start layers/positions, on the CPU's caches.
    row_spec sp[PS_SITE_COUNT + 8];
    const int n = ok ? make_specs(sp, cfg, T) : 0;
    row_set sc, sg, sg2, sg3;
    memset(&sc, 0, sizeof sc); memset(&sg, 0, sizeof sg); memset(&sg2, 0, sizeof sg2); memset(&sg3, 0, sizeof sg3);
    if (ok && make_set(&sc, sp, n, corr, T, &cc_corr, &cc_clean, &cc_corr, V) == 0 &&
        make_set(&sg, sp, n, corr, T, &cc_corr, &cc_clean, &cc_corr, V) == 0 &&
        make_set(&sg2, sp, n, corr, T, &gc_corr, &gc_clean, &gc_corr, V) == 0 &&
        make_set(&sg3, sp, n, corr, T, &cc_corr, &cc_clean, &cc_corr, V) == 0) {
        char name[256];
        run_or_fail(what, ps_cpu_forward(m, sc.rows, n, &e), &e);
        run_or_fail(what, b->forward(b, m, sg.rows, n, &e), &e);
        snprintf(name, sizeof name, "%s patched", what);
        compare_sets(name, &sg, &sc, sp, t);
        // 3. The same rows reading the caches the GPU made (already on the device).
        run_or_fail(what, b->forward(b, m, sg2.rows, n, &e), &e);
        snprintf(name, sizeof name, "%s patched, GPU caches", what);
        compare_sets(name, &sg2, &sc, sp, t);
        // 4. Again on the CPU's caches, now resident on the device: same numbers as the first GPU run.
        run_or_fail(what, b->forward(b, m, sg3.rows, n, &e), &e);
        snprintf(name, sizeof name, "%s patched, repeat", what);
        gpu_tol exact = {1e-6f, 0.0f, 1e-6f};
        compare_sets(name, &sg3, &sg, sp, exact);
        // 5. The clean cache rewritten in place (now the corrupted run's numbers): after release_cache (the
        //    contract for a rewrite) the device copy follows.
        memcpy(cc_clean.memory, cc_corr.memory, cc_clean.n_floats * sizeof(float));
        b->release_cache(b, &cc_clean);
        run_or_fail(what, ps_cpu_forward(m, sc.rows, n, &e), &e);
        run_or_fail(what, b->forward(b, m, sg.rows, n, &e), &e);
        snprintf(name, sizeof name, "%s patched, rewritten source", what);
        compare_sets(name, &sg, &sc, sp, t);
    } else if (ok) {
        TU_CHECK(0, "%s: out of memory", what);
    }
    free_set(&sc); free_set(&sg); free_set(&sg2); free_set(&sg3);
    ps_cache_free(&cc_clean); ps_cache_free(&cc_corr); ps_cache_free(&gc_clean); ps_cache_free(&gc_corr);
    ps_cache_free(&cc_pat); ps_cache_free(&gc_pat);
    free(clean);
    free(corr);
}

void gpu_compare_model(const ps_model *m, const char *label, ps_precision prec, const int64_t *Ts, int n_T) {
    ps_backend b;
    ps_error e = {0};
    memset(&b, 0, sizeof b);
    const ps_backend_opts o = {.kind = PS_BACKEND_CUDA, .precision = prec};
    if (ps_cuda_backend_init(&b, &o, m, &e) != 0) {
        TU_CHECK(0, "%s: ps_cuda_backend_init(%s): %s", label, ps_precision_name(prec), e.msg);
        return;
    }
    printf("%s on %s (%s)\n", label, b.device, ps_precision_name(prec));
    const gpu_tol t = gpu_tol_for(prec);
    int64_t done[16];
    int n_done = 0;
    for (int i = 0; i < n_T; i++) {
        int64_t T = Ts[i] < m->cfg.n_ctx ? Ts[i] : m->cfg.n_ctx;
        int seen = 0;
        for (int j = 0; j < n_done; j++) seen |= done[j] == T;
        if (seen || T <= 0) continue;
        if (n_done < 16) done[n_done++] = T;
        compare_T(&b, m, label, T, t, 0x5eed0000u + (uint64_t)T);
    }
    ps_backend_free(&b);
}
