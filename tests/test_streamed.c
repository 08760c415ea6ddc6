// Streamed weights through the whole engine: the fused pass (the sweeps' rows in the baselines' own call, one
// pass over the layers a chunk) against the two-call path and against resident weights, bitwise, on every tiny
// model as it is (fp32, fp16) and converted to bf16; and the fp32 models' sweeps against TransformerLens's goldens.
#include "golden_util.h"
#include "patch_fixture.h"
#include "ps_engine.h"
#include "st_fixture.h"
#include "testutil.h"

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// A bf16 copy of checkpoint dir in a fresh directory: every float tensor rounded to bf16 (truncated), config.json's
// dtype "float32" or "float16" renamed. Returns the directory, or NULL (a failure is recorded).
static const char *bf16_copy(const char *model, const char *dir) {
    char path[700];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    ps_safetensors st;
    ps_error e = {0};
    if (ps_safetensors_open(&st, path, &e) != 0) { TU_CHECK(0, "%s: %s", model, e.msg); return NULL; }
    tdesc *ts = calloc((size_t)st.n_tensors, sizeof *ts);
    int ok = ts != NULL;
    for (int64_t i = 0; ok && i < st.n_tensors; i++) {
        const ps_tensor *t = &st.tensors[i];
        tdesc *d = &ts[i];
        snprintf(d->name, sizeof d->name, "%s", t->name);
        d->ndim = t->ndim;
        for (int k = 0; k < t->ndim; k++) d->shape[k] = t->shape[k];
        d->dtype = "BF16";
        d->nbytes = (size_t)t->numel * 2;
        float *f = malloc((size_t)(t->numel ? t->numel : 1) * sizeof(float));
        uint16_t *h = malloc(d->nbytes ? d->nbytes : 2);
        ok = f && h && ps_tensor_to_f32(t, f, &e) == 0;
        for (int64_t j = 0; ok && j < t->numel; j++) h[j] = (uint16_t)(stf_f32_bits(f[j]) >> 16);
        d->data = h;
        free(f);
    }
    const char *out = NULL;
    if (ok) {
        char name[128];
        snprintf(name, sizeof name, "%s-bf16", model);
        out = stf_new_dir(name);
        stf_write_st(stf_path_in(out, "model.safetensors"), ts, (int)st.n_tensors, 1);
        snprintf(path, sizeof path, "%s/config.json", dir);
        FILE *fp = fopen(path, "r");
        char cfg[8192];
        size_t n = fp ? fread(cfg, 1, sizeof cfg - 1, fp) : 0;
        if (fp) fclose(fp);
        cfg[n] = 0;
        char fixed[8300], *w = fixed;
        for (const char *r = cfg; *r;) {
            if (!strncmp(r, "\"float32\"", 9) || !strncmp(r, "\"float16\"", 9)) { w += sprintf(w, "\"bfloat16\""); r += 9; }
            else *w++ = *r++;
        }
        *w = 0;
        stf_write_text(stf_path_in(out, "config.json"), fixed);
    } else {
        TU_CHECK(0, "%s: bf16 copy: %s", model, e.msg[0] ? e.msg : "out of memory");
    }
    for (int64_t i = 0; ts && i < st.n_tensors; i++) free(ts[i].data);
    free(ts);
    ps_safetensors_free(&st);
    return out;
}

// Runs f's experiments on m; 0 on success (else a failure is recorded).
static int run(const char *what, const ps_model *m, pf_fixture *f, const ps_engine_opts *o, ps_metric_kind metric, ps_run_results *r) {
    ps_error e = {0};
    ps_backend be;
    if (ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, 1, m, &e) != 0) { TU_CHECK(0, "%s: %s", what, e.msg); return -1; }
    const int rc = ps_engine_run(m, &be, &f->ps, f->ex, f->n_ex, metric, o, r, &e);
    ps_backend_free(&be);
    TU_CHECK(rc == 0, "%s: %s", what, e.msg);
    return rc;
}

// Streamed (fused, and not) against resident weights on the checkpoint in dir, bitwise, for the default batches
// and for batches of 7 rows in chunks of one prompt (groups that close mid-prompt, fused passes that fill), and
// for the whole-vocabulary metrics (kl reads the clean baseline's log-probabilities, computed after the call).
static void check_dir(const char *label, const char *dir, pf_fixture *f, int goldens) {
    ps_model res, str;
    ps_error e = {0};
    if (ps_model_load_mode(&res, dir, PS_WEIGHTS_RESIDENT, &e) != 0) { TU_CHECK(0, "%s: %s", label, e.msg); return; }
    if (ps_model_load_mode(&str, dir, PS_WEIGHTS_STREAMED, &e) != 0) {
        TU_CHECK(0, "%s: %s", label, e.msg);
        ps_model_free(&res);
        return;
    }
    const int64_t L = str.cfg.n_layers;
    ps_model_set_weights_cache(&str, 0); // every pass over the layers converts them all
    const ps_engine_opts variants[4] = {{0}, {.batch_rows = 7, .cache_budget = 1}, {0}, {0}};
    const ps_metric_kind metrics[4] = {PS_METRIC_LOGIT_DIFF, PS_METRIC_LOGIT_DIFF, PS_METRIC_KL, PS_METRIC_LOGPROB};
    for (int v = 0; v < 4; v++) {
        ps_engine_opts o = variants[v], two = variants[v];
        two.no_fuse = 1;
        ps_run_results rr, rf, r2;
        char what[200];
        static const char *vname[4] = {"", " batch_rows=7, one prompt a chunk", " kl", " logprob"};
        snprintf(what, sizeof what, "%s%s", label, vname[v]);
        if (run(what, &res, f, &o, metrics[v], &rr) != 0) { ps_model_free(&res); ps_model_free(&str); return; }
        ps_stream_info s0, s1, s2;
        ps_model_stream_info(&str, &s0);
        if (run(what, &str, f, &o, metrics[v], &rf) == 0) {
            ps_model_stream_info(&str, &s1);
            if (run(what, &str, f, &two, metrics[v], &r2) == 0) {
                ps_model_stream_info(&str, &s2);
                char nm[320];
                snprintf(nm, sizeof nm, "%s: streamed fused vs the two-call path (bitwise)", what);
                pf_compare_runs(nm, &rf, &r2, f->ps.n, 0.0f);
                snprintf(nm, sizeof nm, "%s: streamed fused vs resident (bitwise)", what);
                pf_compare_runs(nm, &rf, &rr, f->ps.n, 0.0f);
                if (goldens && v == 0) pf_compare_with_goldens(label, f, &rf, "streamed fused", 1e-4f);
                const int64_t chunks = v == 1 ? f->ps.n : 1, c_fused = s1.conversions - s0.conversions, c_two = s2.conversions - s1.conversions;
                printf("%s: %lld of %lld rows fused (%lld run again); %lld layer conversions fused, %lld in two calls\n", what,
                       (long long)rf.rows_fused, (long long)rf.rows_planned, (long long)rf.rows_fused_wasted, (long long)c_fused,
                       (long long)c_two);
                TU_CHECK(rf.rows_fused > 0, "%s: no row was fused into the baselines' call", what);
                TU_CHECK(r2.rows_fused == 0, "%s: no_fuse fused %lld rows", what, (long long)r2.rows_fused);
                // Everything fused (and nothing run again): one pass over the layers a chunk.
                if (rf.rows_fused == rf.rows_planned && rf.rows_fused_wasted == 0)
                    TU_CHECK(c_fused == chunks * L, "%s: %lld conversions for %lld chunks of %lld layers", what, (long long)c_fused,
                             (long long)chunks, (long long)L);
                TU_CHECK(c_fused < c_two, "%s: fused %lld conversions, not fewer than the two-call path's %lld", what,
                         (long long)c_fused, (long long)c_two);
                ps_run_results_free(&r2);
            }
            ps_run_results_free(&rf);
        }
        ps_run_results_free(&rr);
    }
    // The kept-layer policy (ps_model_stream_expect), with a budget for every layer: the one chunk's single fused
    // pass keeps none (each layer converted once, into the scratch buffer); chunks of one prompt keep each layer
    // the first chunk converts and convert nothing after. Both bitwise resident's.
    ps_stream_info si;
    ps_model_stream_info(&str, &si);
    ps_model_set_weights_cache(&str, (size_t)L * si.layer_bytes);
    const ps_engine_opts policy[2] = {{0}, {.cache_budget = 1}};
    for (int v = 0; v < 2; v++) {
        char what[200];
        snprintf(what, sizeof what, "%s budget for all layers,%s", label, v ? " one prompt a chunk" : " one chunk");
        ps_run_results rr, rf;
        if (run(what, &res, f, &policy[v], PS_METRIC_LOGIT_DIFF, &rr) != 0) break;
        ps_stream_info s0, s1;
        ps_model_stream_info(&str, &s0);
        if (run(what, &str, f, &policy[v], PS_METRIC_LOGIT_DIFF, &rf) == 0) {
            ps_model_stream_info(&str, &s1);
            char nm[320];
            snprintf(nm, sizeof nm, "%s: streamed vs resident (bitwise)", what);
            pf_compare_runs(nm, &rf, &rr, f->ps.n, 0.0f);
            const int64_t conv = s1.conversions - s0.conversions, kept = (int64_t)(s1.kept_bytes / s1.layer_bytes);
            printf("%s: %lld layer conversions, %lld of %lld layers kept\n", what, (long long)conv, (long long)kept, (long long)L);
            if (v == 0 && rf.rows_fused == rf.rows_planned && rf.rows_fused_wasted == 0)
                TU_CHECK(conv == L && kept == 0, "%s: one fused pass made %lld conversions and kept %lld layers (want %lld, 0)", what,
                         (long long)conv, (long long)kept, (long long)L);
            // (the last layer may still be in the scratch buffer from the run before: served from there, not converted)
            if (v == 1)
                TU_CHECK(conv == kept && kept >= L - 1, "%s: %lld conversions, %lld layers kept (want each conversion kept, %lld or %lld)",
                         what, (long long)conv, (long long)kept, (long long)L - 1, (long long)L);
            ps_run_results_free(&rf);
        }
        ps_run_results_free(&rr);
    }
    ps_model_free(&res);
    ps_model_free(&str);
}

// The bf16 copy's layer matrices, as streamed layers convert them (bf16 blocks transposed), against the fp32
// model's own (converted by the generic path), with their low 16 bits cleared: exactly equal.
static void check_bf16_layers(const char *model, const ps_model *f32, const char *bdir) {
    ps_model b;
    ps_error e = {0};
    if (ps_model_load_mode(&b, bdir, PS_WEIGHTS_STREAMED, &e) != 0) { TU_CHECK(0, "%s: %s", model, e.msg); return; }
    const ps_model_config *c = &f32->cfg;
    const int64_t C = c->d_model, M = c->d_mlp, QD = c->n_heads * c->d_head, KD = c->n_kv_heads * c->d_head;
    const int64_t n[7] = {C * QD, C * KD, C * KD, QD * C, C * M, C * M, M * C};
    int64_t checked = 0, bad = 0;
    for (int64_t l = 0; l < c->n_layers; l++) {
        ps_layer_weights want, got;
        if (ps_model_layer(f32, l, &want, &e) != 0 || ps_model_layer(&b, l, &got, &e) != 0) { TU_CHECK(0, "%s: %s", model, e.msg); break; }
        const float *w[7] = {want.w_q, want.w_k, want.w_v, want.w_o, want.w_in, want.w_up, want.w_out};
        const float *g[7] = {got.w_q, got.w_k, got.w_v, got.w_o, got.w_in, got.w_up, got.w_out};
        for (int k = 0; k < 7; k++) {
            if (!w[k] || !g[k]) { TU_CHECK(!w[k] && !g[k], "%s layer %lld: matrix %d present in one model only", model, (long long)l, k); continue; }
            for (int64_t i = 0; i < n[k]; i++, checked++)
                if ((stf_f32_bits(w[k][i]) & 0xffff0000u) != stf_f32_bits(g[k][i]) && bad++ < 3)
                    printf("%s layer %lld matrix %d [%lld]: bf16 %g, fp32 %g\n", model, (long long)l, k, (long long)i, g[k][i], w[k][i]);
        }
    }
    printf("%s: %lld bf16 weights of the streamed layers checked against the fp32 file's, %lld differ\n", model, (long long)checked,
           (long long)bad);
    TU_CHECK(checked > 0 && bad == 0, "%s: %lld of %lld bf16 weights differ from the fp32 ones truncated", model, (long long)bad,
             (long long)checked);
    ps_model_free(&b);
}

static void test_model(const char *model) {
    pf_fixture f;
    if (pf_load_or_fail(&f, model) != 0) return;
    char dir[512];
    snprintf(dir, sizeof dir, "%s/%s", tu_src("tests/data"), model);
    // The goldens are TransformerLens's on the checkpoint's own values (fp32 files; a half file's goldens
    // were computed in its dtype, which the fp32 engine only approximates).
    check_dir(model, dir, &f, strcmp(f.m.file_dtype, "float32") == 0);
    const char *bdir = bf16_copy(model, dir);
    if (bdir && !strcmp(f.m.file_dtype, "float32")) check_bf16_layers(model, &f.m, bdir);
    if (bdir) {
        char label[128];
        snprintf(label, sizeof label, "%s as bf16", model);
        check_dir(label, bdir, &f, 0);
    }
    pf_free(&f);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(stf_tmp_root, sizeof stf_tmp_root, "%s/ps_test_streamed_XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(stf_tmp_root)) { perror("mkdtemp"); return 1; }
    int tested = gu_for_each_model(test_model);
    printf("%d models streamed, fused and not, against resident weights\n", tested);
    nftw(stf_tmp_root, stf_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return tu_done("streamed");
}
