// What a run's results depend on, gathered into its identity (ps_identity.h): the version, the settings that
// change numbers, the config's parsed values (never its whitespace or key order) and the bytes of every input
// file: datasets, every tokenizer file read, the model's config.json and every weights file or shard.
#include "cli.h"

#include "ps_identity.h"
#include "ps_safetensors.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// Files at least this big say on stderr that they are being hashed (and only once: the cache keeps it).
#define BIG_FILE_BYTES ((int64_t)256 << 20)

// An absolute path for the canonical config (NULL stays null): moving a path's target is a different input.
static void jbuf_path(ps_jbuf *b, const char *p) {
    char abs[PATH_MAX];
    ps_jbuf_str(b, !p ? NULL : realpath(p, abs) ? abs : p);
}

// The items as parsed, whatever file, format, fields, offset or limit they came from.
static void items_digest(const ps_config *cfg, char hex[65], int *oom) {
    ps_jbuf b = {0};
    ps_jbuf_raw(&b, "[");
    for (int64_t i = 0; i < cfg->n_items; i++) {
        const ps_item *it = &cfg->items[i];
        ps_jbuf_raw(&b, i ? ",[" : "[");
        ps_jbuf_str(&b, it->clean); ps_jbuf_raw(&b, ",");
        ps_jbuf_str(&b, it->corrupted); ps_jbuf_raw(&b, ",");
        ps_jbuf_str(&b, it->answer); ps_jbuf_raw(&b, ",");
        ps_jbuf_str(&b, it->wrong); ps_jbuf_raw(&b, ",{");
        // A template only where an item has one, so datasets without them keep their digest.
        if (it->group) { ps_jbuf_key(&b, "template:", 1); ps_jbuf_str(&b, it->group); }
        for (int64_t r = 0; r < it->n_roles; r++) {
            ps_jbuf_key(&b, it->role_name[r], r == 0 && !it->group);
            ps_jbuf_int(&b, it->role_pos[r]);
        }
        ps_jbuf_raw(&b, "}]");
    }
    ps_jbuf_raw(&b, "]");
    *oom = b.oom;
    ps_sha256_hex(b.s ? b.s : "", b.n, hex);
    free(b.s);
}

// The run-wide part of the config's meaning as canonical JSON (keys sorted, defaults filled in, paths absolute).
// Not in it: output (where results go, not what they are), the dataset's own spelling (its items are, by digest)
// and the experiments, each of which has its own identity (experiment_ids).
static char *canonical_config(const ps_config *cfg) {
    char items[65];
    int oom = 0;
    items_digest(cfg, items, &oom);
    ps_jbuf b = {0};
    ps_jbuf_raw(&b, "{");
    ps_jbuf_key(&b, "align", 1); ps_jbuf_str(&b, ps_align_name(cfg->align));
    ps_jbuf_key(&b, "backend", 0); ps_jbuf_str(&b, ps_backend_name(cfg->backend));
    // Only where set: the identities of configs without it stay what they were.
    if (cfg->batch_prompts > 1) { ps_jbuf_key(&b, "batch_prompts", 0); ps_jbuf_int(&b, cfg->batch_prompts); }
    // Only when set, so every identity written before it stays: without corrupted prompts their baselines are NaN.
    if (cfg->no_corrupted) { ps_jbuf_key(&b, "no_corrupted", 0); ps_jbuf_int(&b, 1); }
    ps_jbuf_key(&b, "batch_rows", 0); ps_jbuf_int(&b, cfg->batch_rows);
    ps_jbuf_key(&b, "corrupted_path", 0); jbuf_path(&b, cfg->corrupted_path);
    ps_jbuf_key(&b, "dataset_path", 0); jbuf_path(&b, cfg->dataset_path);
    ps_jbuf_key(&b, "items_sha256", 0); ps_jbuf_str(&b, items);
    ps_jbuf_key(&b, "metric", 0); ps_jbuf_str(&b, ps_metric_name(cfg->metric));
    ps_jbuf_key(&b, "model", 0); jbuf_path(&b, cfg->model);
    ps_jbuf_key(&b, "multi_token", 0); ps_jbuf_str(&b, ps_multitoken_name(cfg->multitoken));
    ps_jbuf_key(&b, "precision", 0); ps_jbuf_str(&b, ps_precision_name(cfg->precision));
    ps_jbuf_key(&b, "prepend_bos", 0); ps_jbuf_raw(&b, cfg->prepend_bos ? "true" : "false");
    ps_jbuf_key(&b, "threads", 0); ps_jbuf_int(&b, cfg->threads);
    ps_jbuf_key(&b, "tokenizer", 0); jbuf_path(&b, cfg->tokenizer);
    ps_jbuf_raw(&b, "}");
    if (b.oom || oom) { free(b.s); return NULL; }
    return b.s;
}

// Every file the tokenizer read: its main file, merges.txt beside a vocab.json, tokenizer_config.json beside it.
static int add_tokenizer_files(ps_identity *id, ps_hash_cache *c, const ps_tokenizer *tok, ps_error *e) {
    const char *main_file = ps_tokenizer_path(tok);
    if (ps_identity_add_file(id, c, "tokenizer file", main_file, BIG_FILE_BYTES, e)) return -1;
    char *dir = ps_dirname(main_file);
    char *merges = dir ? ps_path_join(dir, "merges.txt") : NULL;
    char *tcfg = dir ? ps_path_join(dir, "tokenizer_config.json") : NULL;
    int rc = 0;
    if (!merges || !tcfg) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", main_file);
    if (rc == 0 && ps_ends_with(main_file, "vocab.json"))
        rc = ps_identity_add_file(id, c, "tokenizer file", merges, BIG_FILE_BYTES, e);
    if (rc == 0 && ps_path_exists(tcfg)) rc = ps_identity_add_file(id, c, "tokenizer file", tcfg, BIG_FILE_BYTES, e);
    free(dir);
    free(merges);
    free(tcfg);
    return rc;
}

// config.json and the weights as the loader chose them: model.safetensors, or the index and every shard it names.
static int add_model_files(ps_identity *id, ps_hash_cache *c, const char *dir, ps_error *e) {
    char *cj = ps_path_join(dir, "config.json");
    char *single = ps_path_join(dir, "model.safetensors");
    char *index = ps_path_join(dir, "model.safetensors.index.json");
    int rc = 0;
    if (!cj || !single || !index) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", dir);
    if (rc == 0) rc = ps_identity_add_file(id, c, "model config", cj, BIG_FILE_BYTES, e);
    if (rc == 0 && ps_path_exists(single)) {
        rc = ps_identity_add_file(id, c, "weights file", single, BIG_FILE_BYTES, e);
    } else if (rc == 0) {
        rc = ps_identity_add_file(id, c, "weights file", index, BIG_FILE_BYTES, e);
        ps_safetensors st;
        if (rc == 0 && ps_safetensors_open(&st, index, e) == 0) { // the shards the index names, in its order
            for (int k = 0; rc == 0 && k < st.n_files; k++)
                rc = ps_identity_add_file(id, c, "weights file", st.files[k].path, BIG_FILE_BYTES, e);
            ps_safetensors_free(&st);
        } else {
            rc = -1;
        }
    }
    free(cj);
    free(single);
    free(index);
    return rc;
}

// One experiment's own identity: the run-wide identity, its kind, its config object as canonical JSON and the
// files only it reads (reference set, circuit file, edge scores file).
static int experiment_own(const ps_experiment *x, ps_hash_cache *c, const char run_wide[65], ps_identity *files,
                          char hex[65], ps_error *e) {
    ps_identity own = {0};
    int rc = ps_identity_add_text(&own, "run", "run-wide identity", run_wide, e);
    if (rc == 0) rc = ps_identity_add_text(&own, "kind", x->kind ? x->kind : "patch_sweep", x->kind ? x->kind : "patch_sweep", e);
    if (rc == 0) rc = ps_identity_add_text(&own, "spec", x->name, x->canonical ? x->canonical : "null", e);
    struct { const char *kind, *path; } f[3] = {
        {"reference dataset file", x->ref_path}, {"circuit file", x->keep_path}, {"edge scores file", x->scores_path}};
    for (int k = 0; rc == 0 && k < 3; k++) {
        if (!f[k].path) continue;
        rc = ps_identity_add_file(&own, c, f[k].kind, f[k].path, BIG_FILE_BYTES, e);
        if (rc == 0) rc = ps_identity_add_file(files, c, f[k].kind, f[k].path, BIG_FILE_BYTES, e);
    }
    if (rc == 0) ps_identity_digest(&own, hex);
    ps_identity_free(&own);
    return rc;
}

// The experiment another one reads while it runs (its index), or -1: a table of reference means records its
// parent's means; an edge circuit chosen from scores reads that edge_attribution experiment.
int64_t ps_cli_experiment_dependency(const ps_config *cfg, int64_t i) {
    const ps_experiment *x = &cfg->experiments[i];
    if (x->kind && !strcmp(x->kind, "reference_means")) return x->means_of;
    for (int64_t j = 0; x->scores_from && j < cfg->n_experiments; j++)
        if (j != i && !strcmp(cfg->experiments[j].name, x->scores_from)) return j;
    return -1;
}

void ps_cli_ident_free(ps_cli_ident *ci) {
    ps_identity_free(&ci->id);
    free(ci->exp);
    free(ci->inputs_json);
    memset(ci, 0, sizeof *ci);
}

int ps_cli_identity(ps_cli_ident *ci, ps_hash_cache *c, const ps_config *cfg, const ps_tokenizer *tok, const ps_backend *be,
                    int shard_i, int shard_n, ps_error *e) {
    memset(ci, 0, sizeof *ci);
    ps_identity *id = &ci->id, files = {0};
    char numerics[128], shard[64], run_wide[65];
    // The settings that change numbers as the backend resolved them (auto, 0 threads = all cores).
    snprintf(numerics, sizeof numerics, "backend %s, precision %s, threads %d", be->name, ps_precision_name(be->precision),
             be->threads);
    char *canon = canonical_config(cfg);
    int rc = canon ? 0 : ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", cfg->path);
    if (rc == 0) rc = ps_identity_add_text(id, "patchsweep version", PS_VERSION, PS_VERSION, e);
    if (rc == 0) rc = ps_identity_add_text(id, "numerics", numerics, numerics, e);
    if (rc == 0) rc = ps_identity_add_text(id, "config", "its parsed values; output, experiments, whitespace and key order aside", canon, e);
    if (rc == 0 && cfg->dataset_path) rc = ps_identity_add_file(id, c, "dataset file", cfg->dataset_path, BIG_FILE_BYTES, e);
    if (rc == 0 && cfg->corrupted_path)
        rc = ps_identity_add_file(id, c, "dataset file", cfg->corrupted_path, BIG_FILE_BYTES, e);
    if (rc == 0) rc = add_tokenizer_files(id, c, tok, e);
    if (rc == 0) rc = add_model_files(id, c, cfg->model, e);
    free(canon);
    if (rc == 0) ps_identity_digest(id, run_wide);
    // Each experiment: its own parts, then (one level) the own identity of the experiment it reads.
    const int64_t n = cfg->n_experiments;
    char (*own)[65] = calloc((size_t)(n ? n : 1), 65);
    ci->exp = calloc((size_t)(n ? n : 1), 65);
    ci->n_exp = n;
    if (rc == 0 && (!own || !ci->exp)) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", cfg->path);
    for (int64_t i = 0; rc == 0 && i < n; i++) rc = experiment_own(&cfg->experiments[i], c, run_wide, &files, own[i], e);
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        const int64_t d = ps_cli_experiment_dependency(cfg, i);
        char buf[200];
        snprintf(buf, sizeof buf, "%s\nreads %s", own[i], d >= 0 ? own[d] : "-");
        ps_sha256_hex(buf, strlen(buf), ci->exp[i]);
    }
    // The inputs /run lists: the run-wide files, then the experiments' own.
    if (rc == 0 && !(ci->inputs_json = ps_identity_inputs_json(id, &files))) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    free(own);
    ps_identity_free(&files);
    if (rc != 0) { ps_cli_ident_free(ci); return -1; }
    snprintf(shard, sizeof shard, "%d/%d", shard_i, shard_n);
    if (ps_identity_add_text(id, "shard", shard, shard, e)) { ps_cli_ident_free(ci); return -1; }
    ps_identity_digest(id, ci->base);
    // run_id (merge: every shard's) and ident (a finished output: "nothing to do") add every experiment's identity.
    size_t len = 80 + (size_t)n * 65;
    char *buf = malloc(len);
    if (!buf) { ps_cli_ident_free(ci); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); }
    for (int with_shard = 0; with_shard < 2; with_shard++) {
        size_t k = (size_t)snprintf(buf, len, "%s\n", with_shard ? ci->base : run_wide);
        for (int64_t i = 0; i < n; i++) k += (size_t)snprintf(buf + k, len - k, "%s\n", ci->exp[i]);
        ps_sha256_hex(buf, k, with_shard ? ci->ident : ci->run_id);
    }
    free(buf);
    return 0;
}
