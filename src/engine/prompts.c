// Prompts: the dataset tokenized as the model sees it (BOS, answers in context, teacher-forced answer tokens),
// with the errors a researcher needs when clean and corrupted prompts do not line up.
#include "engine_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---------------------------------------------------------------------------------------------
// Prompts

static void append_tokens(char *buf, size_t cap, const ps_tokenizer *tok, const int32_t *ids, int64_t n) {
    size_t len = strlen(buf);
    for (int64_t i = 0; i < n && len + 32 < cap; i++) {
        char *s = ps_tokenizer_token_text(tok, ids[i]);
        len += (size_t)snprintf(buf + len, cap - len, "%s%d'%s'", i ? " " : "", ids[i], s ? s : "?");
        free(s);
    }
}

// An answer's tokens as the model sees them after the prompt: encode(prompt + answer) minus encode(prompt).
// Encoding the answer alone differs for SentencePiece (Llama's " Lily" alone is [▁, ▁Lily], after a prompt
// it is [▁Lily]); when the prompt's own tokens change at the seam the item is refused, showing both.
static int answer_in_context(const ps_tokenizer *tok, const char *prompt, const char *answer, int32_t **out, int64_t *n_out,
                             ps_error *e) {
    int32_t *p = NULL, *pa = NULL;
    int64_t np = 0, npa = 0;
    size_t lp = strlen(prompt), la = strlen(answer);
    char *joined = malloc(lp + la + 1);
    memcpy(joined, prompt, lp);
    memcpy(joined + lp, answer, la + 1);
    int rc = ps_tokenizer_encode(tok, prompt, &p, &np, e);
    if (rc == 0) rc = ps_tokenizer_encode(tok, joined, &pa, &npa, e);
    free(joined);
    if (rc == 0) {
        int64_t k = 0;
        while (k < np && k < npa && p[k] == pa[k]) k++;
        if (k < np) {
            char buf[PS_ERR_MAX / 2] = "prompt ends [";
            append_tokens(buf, sizeof buf / 2, tok, p + (np > 3 ? np - 3 : 0), np > 3 ? 3 : np);
            strncat(buf, "] but prompt+answer has [", sizeof buf - strlen(buf) - 1);
            int64_t from = np > 3 ? np - 3 : 0;
            append_tokens(buf, sizeof buf - 64, tok, pa + from, npa - from);
            strncat(buf, "]", sizeof buf - strlen(buf) - 1);
            rc = ps_fail(e, PS_EXIT_BADINPUT, "\"%s\" merges with the end of the prompt: %s", answer, buf);
        } else {
            *n_out = npa - np;
            *out = malloc((size_t)(*n_out ? *n_out : 1) * sizeof(int32_t));
            memcpy(*out, pa + np, (size_t)*n_out * sizeof(int32_t));
        }
    }
    free(p);
    free(pa);
    return rc;
}

// Experiment x's reference prompts: the clean text alone (the metric is never read on them); corrupted = clean.
static int build_ref(ps_prompt_set *rs, const ps_config *cfg, int64_t x, const ps_tokenizer *tok, const ps_model_config *mc,
                     int32_t bos, ps_error *e) {
    const ps_experiment *ex = &cfg->experiments[x];
    if (!(rs->p = calloc((size_t)ex->n_ref_items, sizeof *rs->p))) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    rs->n = ex->n_ref_items;
    const int64_t off = bos >= 0 ? 1 : 0;
    for (int64_t i = 0; i < rs->n; i++) {
        const ps_item *it = &ex->ref_items[i];
        int32_t *ids = NULL;
        int64_t n = 0;
        ps_error te = {0};
        if (ps_tokenizer_encode(tok, it->clean, &ids, &n, &te) != 0)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: experiments[%lld].reference item %lld: %s", cfg->path, (long long)x, (long long)i, te.msg);
        ps_prompt *p = &rs->p[i];
        p->T = p->T_prompt = n + off;
        int rc = 0;
        if (n == 0) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: experiments[%lld].reference item %lld tokenizes to nothing", cfg->path, (long long)x, (long long)i);
        else if (p->T > mc->n_ctx)
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: experiments[%lld].reference item %lld: %lld tokens exceed the model's context of %lld",
                         cfg->path, (long long)x, (long long)i, (long long)p->T, (long long)mc->n_ctx);
        for (int64_t j = 0; rc == 0 && j < n; j++)
            if (ids[j] < 0 || ids[j] >= mc->d_vocab)
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: experiments[%lld].reference item %lld: token id %d is out of range for the vocabulary",
                             cfg->path, (long long)x, (long long)i, ids[j]);
        if (rc == 0) {
            p->clean = malloc((size_t)p->T * sizeof(int32_t));
            p->corrupted = malloc((size_t)p->T * sizeof(int32_t));
            if (!p->clean || !p->corrupted) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the reference prompts");
        }
        if (rc == 0) {
            if (off) p->clean[0] = bos;
            memcpy(p->clean + off, ids, (size_t)n * sizeof(int32_t));
            memcpy(p->corrupted, p->clean, (size_t)p->T * sizeof(int32_t));
            p->score_pos = p->T - 1;
            p->group = it->group;
            if (p->T > rs->T_max) rs->T_max = p->T;
        }
        free(ids);
        if (rc != 0) return -1;
    }
    return 0;
}

int ps_prompts_build(ps_prompt_set *ps, const ps_config *cfg, const ps_tokenizer *tok, const ps_model_config *mc, ps_error *e) {
    memset(ps, 0, sizeof *ps);
    if (cfg->n_items <= 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset: empty dataset", cfg->path);
    // Summing the answer tokens' log-probabilities is the logprob metric; the difference metrics read the
    // first token where answer and wrong answer differ.
    if (cfg->multitoken == PS_SCORE_SUM_LOGPROB && cfg->metric != PS_METRIC_LOGPROB)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: multi_token: \"sum_logprob\" scores with \"metric\": \"logprob\" (%s compares the first differing token)",
                       cfg->path, ps_metric_name(cfg->metric));
    ps->p = calloc((size_t)cfg->n_items, sizeof *ps->p);
    if (!ps->p) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    ps->n = cfg->n_items;
    ps->tok = tok;
    int32_t bos = -1;
    if (cfg->prepend_bos) {
        bos = ps_tokenizer_bos_id(tok);
        if (bos < 0) bos = (int32_t)mc->bos_id;
        if (bos < 0) {
            ps_prompt_set_free(ps);
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: prepend_bos: the tokenizer has no BOS token; set \"prepend_bos\": false",
                           cfg->path);
        }
    }
    ps->bos = bos;
    ps->no_corrupted = cfg->no_corrupted;
    for (int64_t i = 0; i < cfg->n_items; i++) {
        const ps_item *it = &cfg->items[i];
        int32_t *ids[4] = {0};
        int64_t n[4] = {0};
        const char *texts[4] = {it->clean, it->corrupted, it->answer, it->wrong};
        const char *names[4] = {"clean", "corrupted", "answer", "wrong"};
        int rc = 0;
        for (int k = 0; k < 4 && rc == 0; k++) {
            ps_error te = {0};
            if (k >= 2 && answer_in_context(tok, it->clean, texts[k], &ids[k], &n[k], &te) != 0) {
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %s: %s", cfg->path, (long long)i, names[k], te.msg);
            } else if (k < 2 && ps_tokenizer_encode(tok, texts[k], &ids[k], &n[k], &te) != 0) {
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %s: %s", cfg->path, (long long)i, names[k], te.msg);
            } else if (n[k] == 0) {
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %s tokenizes to nothing", cfg->path, (long long)i, names[k]);
            }
            for (int64_t j = 0; rc == 0 && j < n[k]; j++)
                if (ids[k][j] < 0 || ids[k][j] >= mc->d_vocab)
                    rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %s: token id %d is out of range for the model's vocabulary of %lld",
                                 cfg->path, (long long)i, names[k], ids[k][j], (long long)mc->d_vocab);
        }
        if (rc == 0 && n[0] != n[1]) {
            char buf[PS_ERR_MAX];
            snprintf(buf, sizeof buf, "clean: [");
            append_tokens(buf, sizeof buf / 2, tok, ids[0], n[0]);
            strncat(buf, "]; corrupted: [", sizeof buf - strlen(buf) - 1);
            append_tokens(buf, sizeof buf - 64, tok, ids[1], n[1]);
            strncat(buf, "]", sizeof buf - strlen(buf) - 1);
            rc = ps_fail(e, PS_EXIT_BADINPUT,
                         "%s: dataset item %lld: clean and corrupted prompts tokenize to different lengths (%lld vs %lld): %s",
                         cfg->path, (long long)i, (long long)n[0], (long long)n[1], buf);
        }
        // First token where answer and wrong differ: the metric compares them there (teacher forcing before it).
        int64_t d = 0;
        if (rc == 0) {
            while (d < n[2] && d < n[3] && ids[2][d] == ids[3][d]) d++;
            if (d == n[2] || d == n[3])
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: answer \"%s\" and wrong \"%s\" do not differ in any token they both have",
                             cfg->path, (long long)i, it->answer, it->wrong);
        }
        if (rc == 0) {
            ps_prompt *p = &ps->p[i];
            const int64_t off = bos >= 0 ? 1 : 0;
            const int64_t n_ext = cfg->metric == PS_METRIC_LOGPROB ? n[2] - 1 : d;
            p->T_prompt = n[0] + off;
            p->T = p->T_prompt + n_ext;
            if (p->T > mc->n_ctx) {
                rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset item %lld: %lld tokens exceed the model's context of %lld",
                             cfg->path, (long long)i, (long long)p->T, (long long)mc->n_ctx);
            } else {
                p->clean = malloc((size_t)p->T * sizeof(int32_t));
                p->corrupted = malloc((size_t)p->T * sizeof(int32_t));
                if (off) p->clean[0] = p->corrupted[0] = bos;
                memcpy(p->clean + off, ids[0], (size_t)n[0] * sizeof(int32_t));
                memcpy(p->corrupted + off, ids[1], (size_t)n[1] * sizeof(int32_t));
                for (int64_t j = 0; j < n_ext; j++) p->clean[p->T_prompt + j] = p->corrupted[p->T_prompt + j] = ids[2][j];
                p->score_pos = p->T_prompt - 1 + d;
                p->n_roles = it->n_roles;
                p->role_name = it->role_name;
                p->role_pos = it->role_pos;
                p->group = it->group;
                for (int64_t r = 0; rc == 0 && r < it->n_roles; r++)
                    if (it->role_pos[r] >= p->T_prompt)
                        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset[%lld].roles.%s: token index %lld is past the prompt's %lld tokens%s",
                                     cfg->path, (long long)i, it->role_name[r], (long long)it->role_pos[r], (long long)p->T_prompt,
                                     bos >= 0 ? " (BOS included)" : "");
                p->answer_id = ids[2][d];
                p->wrong_id = ids[3][d];
                // The logprob metric reads every answer token's logits: one output position each.
                if (cfg->metric == PS_METRIC_LOGPROB && n[2] > PS_MAX_OUT_POS && rc == 0)
                    rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: dataset[%lld]: the answer is %lld tokens; the logprob metric reads at most %d (PS_MAX_OUT_POS)",
                                 cfg->path, (long long)i, (long long)n[2], PS_MAX_OUT_POS);
                p->n_lp = n[2] < PS_MAX_OUT_POS ? n[2] : PS_MAX_OUT_POS;
                p->lp_pos = malloc((size_t)(p->n_lp ? p->n_lp : 1) * sizeof(int64_t));
                p->lp_tok = malloc((size_t)(p->n_lp ? p->n_lp : 1) * sizeof(int32_t));
                if ((!p->lp_pos || !p->lp_tok) && rc == 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the prompts");
                for (int64_t j = 0; rc == 0 && j < p->n_lp; j++) {
                    p->lp_pos[j] = p->T_prompt - 1 + j;
                    p->lp_tok[j] = ids[2][j];
                }
                if (p->T > ps->T_max) ps->T_max = p->T;
            }
        }
        for (int k = 0; k < 4; k++) free(ids[k]);
        if (rc != 0) {
            ps_prompt_set_free(ps);
            return -1;
        }
    }
    for (int64_t x = 0; x < cfg->n_experiments; x++)
        if (cfg->experiments[x].ref_items) {
            if (!ps->ref && !(ps->ref = calloc((size_t)cfg->n_experiments, sizeof *ps->ref))) {
                ps_prompt_set_free(ps);
                return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the reference prompts");
            }
            ps->n_ref = cfg->n_experiments;
            if (build_ref(&ps->ref[x], cfg, x, tok, mc, bos, e) != 0) {
                ps_prompt_set_free(ps);
                return -1;
            }
        }
    return 0;
}

void ps_prompt_set_free(ps_prompt_set *ps) {
    if (!ps) return;
    for (int64_t x = 0; ps->ref && x < ps->n_ref; x++) ps_prompt_set_free(&ps->ref[x]);
    free(ps->ref);
    ps->ref = NULL;
    if (!ps->p) return;
    for (int64_t i = 0; i < ps->n; i++) {
        free(ps->p[i].clean);
        free(ps->p[i].corrupted);
        free(ps->p[i].lp_pos);
        free(ps->p[i].lp_tok);
    }
    free(ps->p);
    memset(ps, 0, sizeof *ps);
}

