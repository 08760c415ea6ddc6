// The CUDA backend's interventions against ps_cpu_forward (cpu_patch.c is the reference): zero, scale, add, mean
// with a positional map and with one broadcast row, freeze, head masks (q/k/v/z/pattern), several operations at
// one hook in order, and captures (every kind of site, from base before start_pos and below start_layer, a row
// past the last layer, the same hook twice), all rows in one mixed batch, on random GPT-2 and Llama (GQA) models
// and on the tiny checkpoints of tests/data when present, in fp32 and fp16/bf16. SKIP without a GPU.
#include "gpu_common.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define MAX_P 3
#define MAX_C 6

typedef struct {
    const char *what;
    int64_t start_layer, start_pos;
    int n_p, n_c;
    ps_patch p[MAX_P];
    int src_clean[MAX_P];   // replace/freeze: 1 clean, 0 corrupted
    int ref_kind[MAX_P];    // mean/add: 0 one broadcast row, 1 a row per position (map with holes)
    ps_capture c[MAX_C];
} op_spec;

static ps_patch P(ps_op op, ps_site site, int64_t l, int64_t head, int64_t pos, int64_t neuron) {
    ps_patch p;
    memset(&p, 0, sizeof p);
    p.op = op; p.site = site; p.layer = l; p.head = head; p.pos = pos; p.neuron = neuron; p.factor = 1.0f;
    return p;
}

static int make_specs(op_spec *sp, const ps_model_config *cfg, int64_t T) {
    const int64_t L = cfg->n_layers, H = cfg->n_heads, Hkv = cfg->n_kv_heads, M = cfg->d_mlp, l1 = L > 1 ? 1 : 0;
    // A parallel-residual GPT-NeoX has no resid_mid: its rows use resid_post at the same layer instead.
    const ps_site MID = ps_array_in_model(cfg, PS_ARR_RESID_MID) ? PS_SITE_RESID_MID : PS_SITE_RESID_POST;
    int n = 0;
    op_spec *s;
#define NEW(name) (s = &sp[n++], memset(s, 0, sizeof *s), s->what = (name))
    NEW("zero z head 0");
    s->p[s->n_p++] = P(PS_OP_ZERO, PS_SITE_Z, L - 1, 0, -1, -1);
    s->start_layer = L - 1;
    NEW("zero pattern, head mask {0, H-1}");
    s->p[s->n_p] = P(PS_OP_ZERO, PS_SITE_PATTERN, 0, -1, -1, -1);
    s->p[s->n_p++].head_mask = ((uint64_t)1 << (H - 1)) | 1u;
    NEW("scale mlp_post at T-1");
    s->p[s->n_p] = P(PS_OP_SCALE, PS_SITE_MLP_POST, 0, -1, T - 1, -1);
    s->p[s->n_p++].factor = 0.5f;
    s->start_pos = T - 1;
    NEW("scale pattern head 1, one neuron scale");
    s->p[s->n_p] = P(PS_OP_SCALE, PS_SITE_PATTERN, L - 1, 1 % H, -1, -1);
    s->p[s->n_p++].factor = 2.0f;
    s->p[s->n_p] = P(PS_OP_SCALE, PS_SITE_MLP_POST, L - 1, -1, -1, (7 * T) % M);
    s->p[s->n_p++].factor = -3.0f;
    s->start_layer = L - 1;
    NEW("add a direction to resid_pre");
    s->p[s->n_p] = P(PS_OP_ADD, PS_SITE_RESID_PRE, l1, -1, -1, -1);
    s->ref_kind[s->n_p++] = 0;
    s->start_layer = l1;
    NEW("mean z, positional map, head mask");
    s->p[s->n_p] = P(PS_OP_MEAN, PS_SITE_Z, 0, -1, -1, -1);
    s->p[s->n_p].head_mask = ps_heads_except(H, 0);
    s->ref_kind[s->n_p++] = 1;
    NEW("mean k broadcast, kv head 0");
    s->p[s->n_p] = P(PS_OP_MEAN, PS_SITE_K, 0, 0, -1, -1);
    s->ref_kind[s->n_p++] = 0;
    NEW("freeze q, then zero z");
    s->p[s->n_p] = P(PS_OP_FREEZE, PS_SITE_Q, 0, -1, -1, -1);
    s->src_clean[s->n_p++] = 1;
    s->p[s->n_p++] = P(PS_OP_ZERO, PS_SITE_Z, 0, H - 1, -1, -1);
    NEW("replace, scale, add at one hook");
    s->p[s->n_p] = P(PS_OP_REPLACE, MID, l1, -1, -1, -1);
    s->src_clean[s->n_p++] = 1;
    s->p[s->n_p] = P(PS_OP_SCALE, MID, l1, -1, T - 1, -1);
    s->p[s->n_p++].factor = 0.25f;
    s->p[s->n_p] = P(PS_OP_ADD, MID, l1, -1, -1, -1);
    s->ref_kind[s->n_p++] = 1;
    s->start_layer = l1;
    NEW("freeze v, kv head mask");
    s->p[s->n_p] = P(PS_OP_FREEZE, PS_SITE_V, L - 1, -1, -1, -1);
    s->p[s->n_p].head_mask = Hkv > 1 ? ((uint64_t)1 << (Hkv - 1)) : 1u;
    s->src_clean[s->n_p++] = 0;
    s->start_layer = L - 1;
    s->start_pos = T / 2;
    NEW("freeze pattern at one query");
    s->p[s->n_p] = P(PS_OP_FREEZE, PS_SITE_PATTERN, 0, 0, T - 1, -1);
    s->src_clean[s->n_p++] = 1;
    NEW("captures, from scratch");
    s->p[s->n_p++] = P(PS_OP_ZERO, PS_SITE_Z, 0, 0, -1, -1);
    s->c[s->n_c++] = (ps_capture){PS_SITE_Z, 0, NULL};
    s->c[s->n_c++] = (ps_capture){PS_SITE_PATTERN, 0, NULL};
    s->c[s->n_c++] = (ps_capture){PS_SITE_MLP_POST, 0, NULL};
    s->c[s->n_c++] = (ps_capture){PS_SITE_RESID_POST, L - 1, NULL};
    s->c[s->n_c++] = (ps_capture){PS_SITE_K, l1, NULL};
    s->c[s->n_c++] = (ps_capture){PS_SITE_Z, 0, NULL};  // the same hook twice
    NEW("captures, from base");
    s->p[s->n_p++] = P(PS_OP_ZERO, PS_SITE_ATTN_OUT, l1, -1, -1, -1);
    s->start_layer = l1;
    s->start_pos = T / 2;
    s->c[s->n_c++] = (ps_capture){PS_SITE_Q, 0, NULL};            // below start_layer: all base's
    s->c[s->n_c++] = (ps_capture){PS_SITE_PATTERN, L - 1, NULL};
    s->c[s->n_c++] = (ps_capture){PS_SITE_ATTN_OUT, l1, NULL};    // after the zero
    s->c[s->n_c++] = (ps_capture){PS_SITE_V, L - 1, NULL};
    s->c[s->n_c++] = (ps_capture){PS_SITE_MLP_OUT, L - 1, NULL};
    NEW("past the last layer: add, capture resid_post");
    s->p[s->n_p] = P(PS_OP_ADD, PS_SITE_RESID_POST, L - 1, -1, T - 1, -1);
    s->ref_kind[s->n_p++] = 0;
    s->start_layer = L;
    s->start_pos = T - 1;
    s->c[s->n_c++] = (ps_capture){PS_SITE_RESID_POST, L - 1, NULL};
    s->c[s->n_c++] = (ps_capture){MID, L - 1, NULL};
#undef NEW
    return n;
}

// One backend's copy of the rows: logits and capture buffers of its own.
typedef struct {
    ps_row *rows;
    ps_patch *patches;
    ps_capture *caps;
    int64_t *out_pos;
    float *logits, *capmem;
    size_t n_logits, n_cap;
} op_set;

static void free_set(op_set *s) {
    free(s->rows); free(s->patches); free(s->caps); free(s->out_pos); free(s->logits); free(s->capmem);
    memset(s, 0, sizeof *s);
}

typedef struct {
    const float *ref1, *refT;   // (1, width) and (T, width) of the widest site, reused at every site
    const int64_t *mapT;        // (T): t -> t, but -1 at position 1 and the last row reused at T-1
} op_refs;

static int make_set(op_set *s, const op_spec *sp, int n, const ps_model_config *cfg, const int32_t *tokens, int64_t T,
                    const ps_cache *clean, const ps_cache *corr, const op_refs *rf) {
    memset(s, 0, sizeof *s);
    const int64_t V = cfg->d_vocab;
    s->rows = calloc((size_t)n, sizeof *s->rows);
    s->patches = calloc((size_t)n * MAX_P, sizeof *s->patches);
    s->caps = calloc((size_t)n * MAX_C, sizeof *s->caps);
    s->out_pos = calloc((size_t)(n * T), sizeof *s->out_pos);
    for (int i = 0; i < n; i++) {
        s->n_logits += (size_t)((T - sp[i].start_pos) * V);
        for (int k = 0; k < sp[i].n_c; k++) s->n_cap += (size_t)(T * ps_site_width(cfg, sp[i].c[k].site, T));
    }
    s->logits = calloc(s->n_logits, sizeof(float));
    s->capmem = calloc(s->n_cap ? s->n_cap : 1, sizeof(float));
    if (!s->rows || !s->patches || !s->caps || !s->out_pos || !s->logits || !s->capmem) return -1;
    size_t lg = 0, cm = 0;
    for (int i = 0; i < n; i++) {
        s->rows[i] = (ps_row){.tokens = tokens, .T = T, .base = corr, .start_layer = sp[i].start_layer, .start_pos = sp[i].start_pos};
        ps_row *r = &s->rows[i];
        ps_patch *pp = s->patches + i * MAX_P;
        for (int p = 0; p < sp[i].n_p; p++) {
            pp[p] = sp[i].p[p];
            if (pp[p].op == PS_OP_REPLACE || pp[p].op == PS_OP_FREEZE) pp[p].src = sp[i].src_clean[p] ? clean : corr;
            if (pp[p].op == PS_OP_MEAN || pp[p].op == PS_OP_ADD) {
                pp[p].ref = sp[i].ref_kind[p] ? (ps_view){rf->refT, T, rf->mapT} : (ps_view){rf->ref1, 1, NULL};
            }
        }
        r->patches = pp;
        r->n_patches = sp[i].n_p;
        ps_capture *cc = s->caps + i * MAX_C;
        for (int k = 0; k < sp[i].n_c; k++) {
            cc[k] = sp[i].c[k];
            cc[k].out = s->capmem + cm;
            cm += (size_t)(T * ps_site_width(cfg, cc[k].site, T));
        }
        r->captures = sp[i].n_c ? cc : NULL;
        r->n_captures = sp[i].n_c;
        r->n_out = T - sp[i].start_pos;
        r->out_pos = s->out_pos + i * T;
        for (int64_t o = 0; o < r->n_out; o++) s->out_pos[i * T + o] = sp[i].start_pos + o;
        r->logits = s->logits + lg;
        lg += (size_t)(r->n_out * V);
    }
    return 0;
}

static void compare_T(ps_backend *b, const ps_model *m, const char *label, int64_t T, gpu_tol tol, uint64_t seed) {
    const ps_model_config *cfg = &m->cfg;
    const int64_t V = cfg->d_vocab, C = cfg->d_model, widest = cfg->d_mlp > C * 4 ? cfg->d_mlp : C * 4;
    char what[192];
    snprintf(what, sizeof what, "%s %s T=%lld", label, ps_precision_name(b->precision), (long long)T);
    int32_t *clean = malloc((size_t)T * sizeof *clean), *corr = malloc((size_t)T * sizeof *corr);
    float *ref1 = malloc((size_t)widest * sizeof(float)), *refT = malloc((size_t)(T * widest) * sizeof(float));
    int64_t *mapT = malloc((size_t)T * sizeof(int64_t));
    ps_cache cc, cr;
    memset(&cc, 0, sizeof cc);
    memset(&cr, 0, sizeof cr);
    ps_error e = {0};
    if (!clean || !corr || !ref1 || !refT || !mapT || ps_cache_init(&cc, cfg, T, 0, &e) || ps_cache_init(&cr, cfg, T, 0, &e)) {
        TU_CHECK(0, "%s: out of memory", what);
        goto out;
    }
    uint64_t s = seed;
    for (int64_t i = 0; i < T; i++) {
        clean[i] = (int32_t)(gpu_rand_u64(&s) % (uint64_t)V);
        corr[i] = i % 3 == 2 ? (int32_t)(gpu_rand_u64(&s) % (uint64_t)V) : clean[i];
    }
    // Reference rows: row r of a site of width w is refT[r * w ...] (rows * w <= T * widest for every site used).
    for (int64_t i = 0; i < widest; i++) ref1[i] = gpu_rand_uniform(&s);
    for (int64_t i = 0; i < T * widest; i++) refT[i] = gpu_rand_uniform(&s);
    for (int64_t t = 0; t < T; t++) mapT[t] = t == 1 ? -1 : (t == T - 1 && T > 2 ? T - 2 : t);
    {
        ps_row rc[2] = {{.tokens = clean, .T = T, .cache = &cc}, {.tokens = corr, .T = T, .cache = &cr}};
        TU_CHECK(ps_cpu_forward(m, rc, 2, &e) == 0, "%s: cpu caches: %s", what, e.msg);
    }
    op_spec sp[24];
    const int n = make_specs(sp, cfg, T);
    const op_refs rf = {ref1, refT, mapT};
    op_set sc, sg;
    if (make_set(&sc, sp, n, cfg, corr, T, &cc, &cr, &rf) || make_set(&sg, sp, n, cfg, corr, T, &cc, &cr, &rf)) {
        TU_CHECK(0, "%s: out of memory", what);
    } else {
        int rc_cpu = ps_cpu_forward(m, sc.rows, n, &e);
        TU_CHECK(rc_cpu == 0, "%s: cpu forward: %s", what, e.msg);
        int rc_gpu = b->forward(b, m, sg.rows, n, &e);
        TU_CHECK(rc_gpu == 0, "%s: cuda forward: %s", what, e.msg);
        if (rc_cpu == 0 && rc_gpu == 0)
            for (int i = 0; i < n; i++) {
                char name[256];
                snprintf(name, sizeof name, "%s row %d (%s) logits", what, i, sp[i].what);
                gpu_close(name, sg.rows[i].logits, sc.rows[i].logits, sc.rows[i].n_out * V, tol);
                for (int k = 0; k < sp[i].n_c; k++) {
                    snprintf(name, sizeof name, "%s row %d (%s) capture %s L%lld", what, i, sp[i].what,
                             ps_site_name(sp[i].c[k].site), (long long)sp[i].c[k].layer);
                    gpu_close(name, sg.rows[i].captures[k].out, sc.rows[i].captures[k].out,
                              T * ps_site_width(cfg, sp[i].c[k].site, T), tol);
                }
            }
    }
    free_set(&sc);
    free_set(&sg);
out:
    ps_cache_free(&cc);
    ps_cache_free(&cr);
    free(clean); free(corr); free(ref1); free(refT); free(mapT);
}

static void run_model(const ps_model *m, const char *label) {
    const ps_precision precs[] = {PS_PREC_FP32, PS_PREC_FP16, PS_PREC_BF16};
    for (int p = 0; p < 3; p++) {
        ps_backend b;
        ps_error e = {0};
        const ps_backend_opts o = {.kind = PS_BACKEND_CUDA, .precision = precs[p]};
        if (ps_cuda_backend_init(&b, &o, m, &e) != 0) {
            TU_CHECK(0, "%s: ps_cuda_backend_init(%s): %s", label, ps_precision_name(precs[p]), e.msg);
            continue;
        }
        const unsigned want = PS_CAP_REPLACE | PS_CAP_ZERO | PS_CAP_MEAN | PS_CAP_ADD | PS_CAP_SCALE | PS_CAP_FREEZE |
                              PS_CAP_HEAD_MASK | PS_CAP_CAPTURE;
        TU_CHECK(b.caps == want, "%s: caps %#x, want %#x (every op, head masks, captures; no narrowing)", label, b.caps, want);
        const int64_t Ts[] = {3, 20};
        for (int i = 0; i < 2; i++) {
            const int64_t T = Ts[i] < m->cfg.n_ctx ? Ts[i] : m->cfg.n_ctx;
            compare_T(&b, m, label, T, gpu_tol_for(precs[p]), 0x0b5u + (uint64_t)T);
        }
        ps_backend_free(&b);
    }
}

int main(void) {
    gpu_require_device();
    ps_model m;
    if (gpu_random_model(&m, PS_ARCH_GPT2, 2, 4, 4, 8, 48, 37, 24, 11) == 0) {
        run_model(&m, "random gpt2");
        gpu_free_model(&m);
    }
    if (gpu_random_model(&m, PS_ARCH_LLAMA, 2, 4, 2, 8, 40, 37, 24, 12) == 0) {
        run_model(&m, "random llama (GQA)");
        gpu_free_model(&m);
    }
    // GPT-NeoX: partial rotary (2 of 8 dims), an odd head count, parallel and then sequential residual.
    if (gpu_random_model(&m, PS_ARCH_NEOX, 2, 3, 3, 8, 40, 37, 24, 13) == 0) {
        run_model(&m, "random neox (parallel)");
        m.cfg.parallel_residual = 0;
        run_model(&m, "random neox (sequential)");
        gpu_free_model(&m);
    }
    const char *data = tu_src("tests/data");
    DIR *dir = opendir(data);
    struct dirent *de;
    while (dir && (de = readdir(dir))) {
        if (strncmp(de->d_name, "gpt2-tiny-", 10) && strncmp(de->d_name, "llama-tiny-", 11) &&
            strncmp(de->d_name, "neox-tiny-", 10))
            continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", data, de->d_name);
        ps_error e = {0};
        if (ps_model_load(&m, path, &e) != 0) continue;  // incomplete checkpoints are test_gpu_forward's concern
        run_model(&m, de->d_name);
        ps_model_free(&m);
    }
    if (dir) closedir(dir);
    return tu_done("gpu interventions");
}
