// `run`'s results file: the run's metadata, the prompts as tokenized, the baselines and every experiment's
// table, written through the store (src/results/).
#include "cli.h"

#include "ps_backend.h"
#include "ps_blas.h"
#include "ps_config.h"
#include "ps_engine.h"
#include "ps_model.h"
#include "ps_store.h"
#include "ps_tokenizer.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char **token_strings(const ps_tokenizer *tok, const ps_prompt_set *ps, int corrupted) {
    const int64_t n = ps->n, T = ps->T_max;
    char **s = calloc((size_t)(n * T), sizeof(char *));
    for (int64_t i = 0; s && i < n; i++)
        for (int64_t t = 0; t < T; t++) {
            const ps_prompt *p = &ps->p[i];
            // No corrupted prompts: empty strings, as past a prompt's end (their ids are -1).
            s[i * T + t] = t < p->T && !(corrupted && ps->no_corrupted)
                               ? ps_tokenizer_token_text(tok, corrupted ? p->corrupted[t] : p->clean[t])
                               : strdup("");
            if (!s[i * T + t]) s[i * T + t] = strdup("");
        }
    return s;
}

static void free_strings(char **s, int64_t n) {
    if (!s) return;
    for (int64_t i = 0; i < n; i++) free(s[i]);
    free(s);
}



int ps_cli_write_results(const char *out_path, const ps_config *cfg, const ps_model *m, const ps_tokenizer *tok,
                         const char *tok_sha, const ps_backend *be, int threads, const ps_prompt_set *ps,
                         const ps_run_results *rr, const ps_shard_info *sh, ps_error *e) {
    ps_store *st = NULL;
    if (ps_store_open(&st, out_path, e) != 0) return -1;
    const int64_t n = ps->n, T = ps->T_max;
    ps_run_info ri = {
        .config_text = cfg->text, .config_path = cfg->path, .version = PS_VERSION, .model_dir = m->dir,
        .weights_sha256 = m->weights_sha256, .tokenizer_path = ps_tokenizer_path(tok), .tokenizer_sha256 = tok_sha,
        .backend = be->name, .precision = ps_precision_name(be->precision), .weights_dtype = m->file_dtype,
        .architecture = ps_arch_name(m->cfg.arch),
        .blas = be->kind == PS_BACKEND_CPU ? ps_blas_describe() : NULL,
        .threads = threads, .prepend_bos = cfg->prepend_bos,
        .bos_id = cfg->prepend_bos ? (ps_tokenizer_bos_id(tok) >= 0 ? ps_tokenizer_bos_id(tok) : m->cfg.bos_id) : -1,
        .metric = ps_metric_name(cfg->metric), .identity = sh->identity, .run_identity = sh->run_identity,
        .base_identity = sh->base_identity,
        .shard_index = sh->index, .shard_count = sh->count, .inputs_json = sh->inputs_json,
    };
    int rc = ps_store_write_run(st, &ri, e);

    int64_t *len = calloc((size_t)n, sizeof(int64_t)), *plen = calloc((size_t)n, sizeof(int64_t));
    int32_t *cid = malloc((size_t)(n * T) * sizeof(int32_t)), *xid = malloc((size_t)(n * T) * sizeof(int32_t));
    int32_t *aid = malloc((size_t)n * sizeof(int32_t)), *wid = malloc((size_t)n * sizeof(int32_t));
    const char **ct = malloc((size_t)n * sizeof(char *)), **xt = malloc((size_t)n * sizeof(char *));
    const char **at = malloc((size_t)n * sizeof(char *)), **wt = malloc((size_t)n * sizeof(char *));
    if (rc == 0 && (!len || !plen || !cid || !xid || !aid || !wid || !ct || !xt || !at || !wt))
        rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", out_path);
    for (int64_t i = 0; rc == 0 && i < n; i++) {
        const ps_prompt *p = &ps->p[i];
        len[i] = p->T;
        plen[i] = p->T_prompt;
        for (int64_t t = 0; t < T; t++) {
            cid[i * T + t] = t < p->T ? p->clean[t] : -1;
            xid[i * T + t] = t < p->T && !ps->no_corrupted ? p->corrupted[t] : -1;
        }
        aid[i] = p->answer_id;
        wid[i] = p->wrong_id;
        ct[i] = cfg->items[i].clean; xt[i] = cfg->no_corrupted ? "" : cfg->items[i].corrupted;
        at[i] = cfg->items[i].answer; wt[i] = cfg->items[i].wrong;
    }
    char **cs = token_strings(tok, ps, 0), **xs = token_strings(tok, ps, 1);
    if (rc == 0 && (!cs || !xs)) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", out_path);
    ps_prompts_info pi = {
        .n_prompts = n, .T_max = T, .length = len, .prompt_length = plen, .clean_ids = cid, .corrupted_ids = xid,
        .clean_str = (const char *const *)cs, .corrupted_str = (const char *const *)xs, .clean_text = ct,
        .corrupted_text = xt, .answer_text = at, .wrong_text = wt, .answer_id = aid, .wrong_id = wid,
        .in_run = sh->in_run,
    };
    if (rc == 0) rc = ps_store_write_prompts(st, &pi, e);
    if (rc == 0) rc = ps_store_write_baseline(st, &rr->base, e);
    // Each table as it is; the store labels a pos axis with prompt 0's tokens (written with /prompts above).
    for (int64_t s = 0; rc == 0 && s < rr->n_tables; s++) rc = ps_store_write_table(st, &rr->tables[s], e);
    free_strings(cs, n * T);
    free_strings(xs, n * T);
    free(len); free(plen); free(cid); free(xid); free(aid); free(wid);
    free(ct); free(xt); free(at); free(wt);
    ps_error ce = {0};
    if (ps_store_close(st, rc == 0, rc == 0 ? e : &ce) != 0) rc = -1;
    return rc;
}
