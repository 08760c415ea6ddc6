// `run`'s results file: the run's metadata, the prompts as tokenized, the baselines and every experiment's
// results, written through the store (src/results/).
#include "cli.h"

#include "ps_backend.h"
#include "ps_blas.h"
#include "ps_config.h"
#include "ps_engine.h"
#include "ps_journal.h"
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
    for (int64_t i = 0; i < n; i++)
        for (int64_t t = 0; t < T; t++) {
            const ps_prompt *p = &ps->p[i];
            s[i * T + t] = t < p->T ? ps_tokenizer_token_text(tok, corrupted ? p->corrupted[t] : p->clean[t]) : strdup("");
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
        .blas = be->kind == PS_BACKEND_CPU ? ps_blas_describe() : NULL,
        .threads = threads, .prepend_bos = cfg->prepend_bos,
        .bos_id = cfg->prepend_bos ? (ps_tokenizer_bos_id(tok) >= 0 ? ps_tokenizer_bos_id(tok) : m->cfg.bos_id) : -1,
        .metric = ps_metric_name(cfg->metric), .identity = sh->identity, .run_identity = sh->run_identity,
        .shard_index = sh->index, .shard_count = sh->count,
    };
    int rc = ps_store_write_run(st, &ri, e);

    int64_t *len = calloc((size_t)n, sizeof(int64_t)), *plen = calloc((size_t)n, sizeof(int64_t));
    int32_t *cid = malloc((size_t)(n * T) * sizeof(int32_t)), *xid = malloc((size_t)(n * T) * sizeof(int32_t));
    int32_t *aid = malloc((size_t)n * sizeof(int32_t)), *wid = malloc((size_t)n * sizeof(int32_t));
    const char **ct = malloc((size_t)n * sizeof(char *)), **xt = malloc((size_t)n * sizeof(char *));
    const char **at = malloc((size_t)n * sizeof(char *)), **wt = malloc((size_t)n * sizeof(char *));
    for (int64_t i = 0; i < n; i++) {
        const ps_prompt *p = &ps->p[i];
        len[i] = p->T;
        plen[i] = p->T_prompt;
        for (int64_t t = 0; t < T; t++) {
            cid[i * T + t] = t < p->T ? p->clean[t] : -1;
            xid[i * T + t] = t < p->T ? p->corrupted[t] : -1;
        }
        aid[i] = p->answer_id;
        wid[i] = p->wrong_id;
        ct[i] = cfg->items[i].clean; xt[i] = cfg->items[i].corrupted;
        at[i] = cfg->items[i].answer; wt[i] = cfg->items[i].wrong;
    }
    char **cs = token_strings(tok, ps, 0), **xs = token_strings(tok, ps, 1);
    ps_prompts_info pi = {
        .n_prompts = n, .T_max = T, .length = len, .prompt_length = plen, .clean_ids = cid, .corrupted_ids = xid,
        .clean_str = (const char *const *)cs, .corrupted_str = (const char *const *)xs, .clean_text = ct,
        .corrupted_text = xt, .answer_text = at, .wrong_text = wt, .answer_id = aid, .wrong_id = wid,
        .in_run = sh->in_run,
    };
    if (rc == 0) rc = ps_store_write_prompts(st, &pi, e);
    ps_baseline_info bi = {
        .n_prompts = n, .clean = rr->base.clean, .corrupted = rr->base.corrupted,
        .clean_answer_logit = rr->base.clean_answer_logit, .clean_wrong_logit = rr->base.clean_wrong_logit,
        .corrupted_answer_logit = rr->base.corrupted_answer_logit, .corrupted_wrong_logit = rr->base.corrupted_wrong_logit,
    };
    if (rc == 0) rc = ps_store_write_baseline(st, &bi, e);
    for (int64_t s = 0; rc == 0 && s < rr->n_sweeps; s++) {
        const ps_sweep *sw = &rr->sweeps[s];
        ps_result_info r = {
            .name = sw->ex->name, .site = ps_site_name(sw->ex->site), .layout = ps_layout_name(sw->ex->layout),
            .direction = ps_direction_name(sw->ex->direction), .metric = ps_metric_name(cfg->metric),
            .n_axes = sw->n_axes, .pos_tokens = (const char *const *)cs, .values = sw->values, .normalized = sw->normalized,
            .mean = sw->mean, .mean_normalized = sw->mean_normalized, .n_prompts = n, .patches_run = sw->patches_run,
            .patches_skipped = sw->patches_skipped,
        };
        // Position labels: the tokens of prompt 0, indexed by position (negative positions count from each prompt's end);
        // a role position is labelled by its name, with prompt 0's index as its value.
        int64_t *pos_vals = NULL;
        const char **labels = NULL;
        for (int a = 0; a < sw->n_axes; a++) {
            r.axis_name[a] = sw->axis_name[a];
            r.axis_len[a] = sw->axis_len[a];
            r.axis_value[a] = sw->axis_value[a];
            if (!strcmp(sw->axis_name[a], "pos") && sw->ex->position_role) {
                pos_vals = malloc((size_t)sw->axis_len[a] * sizeof(int64_t));
                labels = calloc((size_t)sw->axis_len[a], sizeof(char *));
                for (int64_t k = 0; k < sw->axis_len[a]; k++) {
                    const char *role = sw->ex->position_role[k];
                    pos_vals[k] = role ? ps_prompt_role(&ps->p[0], role) : sw->axis_value[a][k];
                    labels[k] = role;
                }
                r.axis_value[a] = pos_vals;
                r.pos_labels = labels;
            }
        }
        rc = ps_store_write_result(st, &r, e);
        free(pos_vals);
        free(labels);
    }
    free_strings(cs, n * T);
    free_strings(xs, n * T);
    free(len); free(plen); free(cid); free(xid); free(aid); free(wid);
    free(ct); free(xt); free(at); free(wt);
    ps_error ce = {0};
    if (ps_store_close(st, rc == 0, rc == 0 ? e : &ce) != 0) rc = -1;
    return rc;
}
