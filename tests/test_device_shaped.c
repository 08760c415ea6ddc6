// The engine's paths for a device backend, on the CPU: every experiment kind run through the device-shaped backend
// (device_shaped.h: CUDA's capability bits, no groups, device copies of caches emulated and checked) against the
// CPU backend. Each table must match at 1e-5 + 1e-4 relative (the batches differ, so GEMMs may round differently)
// and no cache may be read through a copy its host arrays no longer equal (ps_backend.h's handle contract: on a
// GPU that read would use stale values, which only a GPU run would otherwise show). A first case checks that the
// checker itself sees a breach.
#include "config_fixture.h"
#include "device_shaped.h"
#include "ps_engine.h"
#include "ps_tokenizer.h"

#include <stdlib.h>
#include <unistd.h>


// The checker must see a cache rewritten without release_cache, and must not after a release.
static void test_checker(void) {
    ps_model m;
    ps_backend be;
    ps_error e = {0};
    if (ps_model_load(&m, tu_src("models/demo"), &e) != 0) { TU_CHECK(0, "%s", e.msg); return; }
    if (ds_backend_init(&be, &m, &e) != 0) { TU_CHECK(0, "%s", e.msg); ps_model_free(&m); return; }
    const int32_t tok[4] = {1, 2, 3, 4};
    ps_cache base;
    float lg[2];
    const int64_t pos = 3;
    const int32_t cols[2] = {5, 6};
    int rc = ps_cache_init(&base, &m.cfg, 4, 0, &e);
    ps_row r0 = {.tokens = tok, .T = 4, .cache = &base, .out_pos = &pos, .n_out = 1, .cols = cols, .n_cols = 2, .logits = lg};
    if (rc == 0) rc = be.forward(&be, &m, &r0, 1, &e);
    ps_row r1 = {.tokens = tok, .T = 4, .base = &base, .start_layer = 1, .out_pos = &pos, .n_out = 1, .cols = cols, .n_cols = 2, .logits = lg};
    if (rc == 0) rc = be.forward(&be, &m, &r1, 1, &e);
    const int64_t clean_reads = ds_backend_stats(&be)->stale_reads;
    if (rc == 0) base.resid_pre[0] += 1.0f;   // a rewrite the backend is not told of
    if (rc == 0) rc = be.forward(&be, &m, &r1, 1, &e);
    const int64_t after_rewrite = ds_backend_stats(&be)->stale_reads;
    ps_backend_release_caches(&be, &base, 1);
    if (rc == 0) rc = be.forward(&be, &m, &r1, 1, &e);
    TU_CHECK(rc == 0, "checker: %s", e.msg);
    TU_CHECK(clean_reads == 0 && after_rewrite == 1 && ds_backend_stats(&be)->stale_reads == 1,
             "checker: stale reads %lld before the rewrite, %lld after, %lld after release (want 0, 1, 1)", (long long)clean_reads,
             (long long)after_rewrite, (long long)ds_backend_stats(&be)->stale_reads);
    ps_row both[2] = {r0, r1};   // one cache both a row's output and another row's base: refused
    both[1].start_layer = 1;
    ps_error e2 = {0};
    TU_CHECK(be.forward(&be, &m, both, 2, &e2) != 0 && strstr(e2.msg, "also read or written"), "checker: aliasing not refused (%s)", e2.msg);
    ps_backend_drop_caches(&be, &base, 1);
    ps_backend_free(&be);
    ps_model_free(&m);
}

// One config through both backends; every table compared, the contract checked.
static void run_both(const char *path, int64_t chunk_prompts) {
    ps_error e = {0};
    ps_config cfg;
    ps_model m;
    ps_tokenizer *tok = NULL;
    ps_prompt_set ps = {0};
    if (ps_config_load(&cfg, path, &e) != 0) { TU_CHECK(0, "%s", e.msg); return; }
    int rc = ps_model_load(&m, cfg.model, &e);
    const int model_ok = rc == 0;
    if (rc == 0) rc = ps_tokenizer_load(&tok, cfg.model, &e);
    if (rc == 0) rc = ps_prompts_build(&ps, &cfg, tok, &m.cfg, &e);
    ps_backend be[2];
    ps_run_results rr[2];
    memset(rr, 0, sizeof rr);
    int ok[2] = {0, 0};
    ps_engine_opts o = {.chunk_prompts = chunk_prompts, .batch_prompts = cfg.batch_prompts};
    for (int k = 0; rc == 0 && k < 2; k++) {
        if ((k ? ds_backend_init(&be[k], &m, &e) : ps_backend_init(&be[k], PS_BACKEND_CPU, PS_PREC_FP32, 1, &m, &e)) != 0) {
            TU_CHECK(0, "%s: %s", path, e.msg);
            break;
        }
        ok[k] = ps_engine_run(&m, &be[k], &ps, cfg.experiments, cfg.n_experiments, cfg.metric, &o, &rr[k], &e) == 0;
        TU_CHECK(ok[k], "%s on %s: %s", path, be[k].name, e.msg);
        if (k == 1) {
            const ds_stats *s = ds_backend_stats(&be[1]);
            TU_CHECK(s->stale_reads == 0, "%s: %lld stale reads, the first: %s", path, (long long)s->stale_reads, s->first_stale);
            printf("%s: device-shaped: %lld uploads, %lld reads of copies, %lld cache rows, %lld releases, %lld stale reads\n", path,
                   (long long)s->uploads, (long long)s->reads_of_copies, (long long)s->outputs, (long long)s->releases,
                   (long long)s->stale_reads);
        }
        ps_backend_free(&be[k]);
    }
    if (ok[0] && ok[1]) {
        TU_CHECK(rr[0].n_tables == rr[1].n_tables, "%s: %lld tables on the cpu, %lld device-shaped", path, (long long)rr[0].n_tables,
                 (long long)rr[1].n_tables);
        char lab[300];
        snprintf(lab, sizeof lab, "%s: baseline", path);
        TU_CHECK(tu_close(lab, rr[1].base.clean, rr[0].base.clean, rr[0].base.n, 1e-5f, 1e-4f) == 0 &&
                 tu_close(lab, rr[1].base.corrupted, rr[0].base.corrupted, rr[0].base.n, 1e-5f, 1e-4f) == 0, "%s", lab);
        for (int64_t t = 0; t < rr[0].n_tables && t < rr[1].n_tables; t++) {
            const ps_table *a = &rr[0].tables[t], *b = &rr[1].tables[t];
            snprintf(lab, sizeof lab, "%s: %s (%s)", path, a->name, a->kind);
            TU_CHECK(!strcmp(a->name, b->name) && a->n_rows == b->n_rows && a->n_cells == b->n_cells &&
                     tu_close(lab, b->values, a->values, a->n_rows * a->n_cells, 1e-5f, 1e-4f) == 0, "%s", lab);
        }
    }
    for (int k = 0; k < 2; k++)
        if (ok[k]) ps_run_results_free(&rr[k]);
    ps_prompt_set_free(&ps);
    ps_tokenizer_free(tok);
    if (model_ok) ps_model_free(&m);
    ps_config_free(&cfg);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "%s/ps_device_shaped_XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_checker();
    // Sweeps at every site kind, gradient attribution, EAP and the circuits it scores (the edge circuit's passes
    // rewrite their state caches), on six demo prompts in chunks of 4.
    char cfg[2048];
    snprintf(cfg, sizeof cfg,
             "{\"model\": \"%s\", \"metric\": \"logit_diff\",\n"
             " \"dataset\": [{\"clean\": \"1 2 3 4\", \"corrupted\": \"1 2 2 4\", \"answer\": \" 5\", \"wrong\": \" 3\"},\n"
             "  {\"clean\": \"A B C D\", \"corrupted\": \"A B B D\", \"answer\": \" E\", \"wrong\": \" C\"},\n"
             "  {\"clean\": \"5 6 7 8\", \"corrupted\": \"5 6 6 8\", \"answer\": \" 9\", \"wrong\": \" 7\"},\n"
             "  {\"clean\": \"Mon Tue Wed\", \"corrupted\": \"Mon Tue Tue\", \"answer\": \" Thu\", \"wrong\": \" Wed\"},\n"
             "  {\"clean\": \"2 3 4 5\", \"corrupted\": \"2 3 3 5\", \"answer\": \" 6\", \"wrong\": \" 4\"},\n"
             "  {\"clean\": \"a b c d\", \"corrupted\": \"a b b d\", \"answer\": \" e\", \"wrong\": \" c\"}],\n"
             " \"experiments\": [{\"name\": \"resid\", \"site\": \"resid_pre\", \"by\": \"layer_pos\"},\n"
             "  {\"name\": \"heads\", \"site\": \"z\", \"by\": \"layer_head\"},\n"
             "  {\"name\": \"heads_noise\", \"site\": \"z\", \"by\": \"layer_pos_head\", \"direction\": \"noise\"},\n"
             "  {\"name\": \"mlp\", \"site\": \"mlp_out\", \"by\": \"layer_pos\"},\n"
             "  {\"name\": \"neurons\", \"site\": \"mlp_post\", \"by\": \"layer_neuron\", \"layers\": [1]},\n"
             "  {\"name\": \"attr_z\", \"kind\": \"attribution\", \"site\": \"z\"},\n"
             "  {\"name\": \"eap\", \"kind\": \"edge_attribution\"},\n"
             "  {\"name\": \"circ\", \"kind\": \"edge_circuit\", \"scores_from\": \"eap\", \"top_n\": [50, 10]},\n"
             "  {\"name\": \"circ_listed\", \"kind\": \"edge_circuit\", \"edges\": [\"input->logits\"]}]}\n",
             tu_src("models/demo"));
    run_both(write_tmp("mixed.json", cfg, strlen(cfg)), 4);
    // The same in blocks of 3 prompts: the baselines' and sweeps' blocks through forward (no groups) and the CPU's groups.
    char bcfg[2100];
    snprintf(bcfg, sizeof bcfg, "{\"batch_prompts\": 3, %s", cfg + 1);
    run_both(write_tmp("mixed_blocks.json", bcfg, strlen(bcfg)), 4);
    run_both(tu_src("tests/data/seqcont/ablation.json"), 5);   // ablations, reference means, circuit scores and search
    // Ablations from per-position means with a kept circuit, searches from zero (until stable, and one pass each), edge
    // circuits with zero and mean values. (Heads ablated at hook_result need PS_CAP_RESULT, which CUDA lacks: refused.)
    const char *sc = tu_src("tests/data/seqcont");
    snprintf(cfg, sizeof cfg,
             "{\"model\": \"%s\", \"metric\": \"logit_diff\",\n"
             " \"dataset\": {\"path\": \"%s/prompts.jsonl\", \"fields\": {\"clean\": \"text\", \"corrupted\": \"corrupted\",\n"
             "   \"answer\": \"corr\", \"wrong\": \"incorr\", \"template\": \"template\"}},\n"
             " \"experiments\": [\n"
             "  {\"name\": \"zero\", \"kind\": \"ablation\", \"components\": [\"h0.1\", \"h1.2\"], \"with\": \"zero\"},\n"
             "  {\"name\": \"keep\", \"kind\": \"ablation\", \"keep\": [\"h0.0\", \"mlp1\"], \"with\": \"mean\", \"grouping\": \"per_position\",\n"
             "   \"reference\": {\"path\": \"%s/randDS.jsonl\", \"fields\": {\"clean\": \"text\"}}},\n"
             "  {\"name\": \"search_zero\", \"kind\": \"circuit_search\", \"with\": \"zero\", \"threshold\": 20},\n"
             "  {\"name\": \"search_once\", \"kind\": \"circuit_search\", \"with\": \"zero\", \"threshold\": 30, \"passes\": \"one_each\"},\n"
             "  {\"name\": \"eap\", \"kind\": \"edge_attribution\"},\n"
             "  {\"name\": \"circ_zero\", \"kind\": \"edge_circuit\", \"scores_from\": \"eap\", \"top_n\": [30], \"with\": \"zero\"},\n"
             "  {\"name\": \"circ_mean\", \"kind\": \"edge_circuit\", \"scores_from\": \"eap\", \"top_n\": [30], \"with\": \"mean\",\n"
             "   \"reference\": {\"path\": \"%s/randDS.jsonl\", \"fields\": {\"clean\": \"text\"}}}]}\n",
             tu_src("models/demo"), sc, sc, sc);
    run_both(write_tmp("zero_mean.json", cfg, strlen(cfg)), 4);
    run_both(tu_src("experiments/ioi/demo.json"), 0);          // path patching, ablations, read-outs
    run_both(tu_src("experiments/seqcont/demo.json"), 0);      // read-outs: DLA, logit lens, attention, OV and head scores
    run_both(tu_src("experiments/one_is_1/numerals.json"), 0); // search, neurons
    char rm[300];
    snprintf(rm, sizeof rm, "rm -rf '%s'", tmpdir);
    if (system(rm) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return tu_done("device_shaped");
}
