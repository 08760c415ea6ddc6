// Dataset blocks of the config: the "dataset" and the reference prompts of the ablation kinds ("reference"),
// checked key by key and read by dataset.c (the format is described in ps_config.h).
#include "config_internal.h"
#include "ps_ablation.h"
#include "ps_dataset.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const format_names[] = {"jsonl", "csv", "json"};
static const char *const item_keys[] = {"clean", "corrupted", "answer", "wrong", "template"};

static int format_value(ps_cfg_ctx *x, const cJSON *obj, const char *path, ps_data_format *out) {
    int f = -1;
    if (ps_cfg_get_enum(x, obj, "format", path, format_names, COUNT(format_names), &f)) return -1;
    if (f >= 0) *out = (ps_data_format)(PS_DATA_JSONL + f);
    return 0;
}

int ps_cfg_load_dataset(ps_cfg_ctx *x, const cJSON *obj, const char *where, int reference, ps_item **items, int64_t *n_items,
                        char **path, char **corrupted_path, int *no_corrupted) {
    static const char *const keys[] = {"path", "format", "fields", "corrupted", "offset", "limit"};
    static const char *const corrupted_keys[] = {"path", "field", "format", "offset"};
    static const char *const ref_keys[] = {"path", "format", "fields", "offset", "limit"};
    static const char *const ref_field_keys[] = {"clean", "template"};
    // A reference set only runs clean prompts: no corrupted prompts, answers or wrong answers.
    if (reference ? ps_cfg_check_keys(x, obj, where, ref_keys, COUNT(ref_keys)) : ps_cfg_check_keys(x, obj, where, keys, COUNT(keys)))
        return -1;
    char wf[PATH_MAX_LEN], wc[PATH_MAX_LEN], kp[PATH_MAX_LEN];
    ps_cfg_key_path(wf, where, "fields");
    ps_cfg_key_path(wc, where, "corrupted");
    ps_dataset_spec s;
    memset(&s, 0, sizeof s);
    char *names[5] = {0}, *cfield = NULL;
    int rc = -1;
    if (ps_cfg_get_path(x, obj, "path", where, 1, path)) goto out;
    s.path = *path;
    if (format_value(x, obj, where, &s.format)) goto out;
    if (ps_cfg_get_int(x, obj, "offset", where, 0, INT64_MAX, &s.offset)) goto out;
    if (ps_cfg_get_int(x, obj, "limit", where, 0, INT64_MAX, &s.limit)) goto out;
    const cJSON *f = ps_cfg_member(obj, "fields");
    if (f) {
        char got[200];
        if (!cJSON_IsObject(f)) {
            ps_json_describe(f, got, sizeof got);
            ps_cfg_bad(x, wf, "expected an object mapping %s to names in the file, got %s",
                       reference ? "clean, template" : "clean, corrupted, answer, wrong, template", got);
            goto out;
        }
        if (reference ? ps_cfg_check_keys(x, f, wf, ref_field_keys, COUNT(ref_field_keys))
                      : ps_cfg_check_keys(x, f, wf, item_keys, COUNT(item_keys)))
            goto out;
        for (int k = 0; k < 5; k++)
            if ((!reference || k == 0 || k == 4) && ps_cfg_get_str(x, f, item_keys[k], wf, 0, &names[k])) goto out;
    }
    s.clean = names[0];
    // A reference record's text stands in for the fields it has no use for (they are never tokenized).
    s.corrupted = reference ? (names[0] ? names[0] : "clean") : names[1];
    s.answer = reference ? s.corrupted : names[2];
    s.wrong = reference ? s.corrupted : names[3];
    s.group = names[4];
    const cJSON *cor = ps_cfg_member(obj, "corrupted");
    if (cor) {
        char got[200];
        if (!cJSON_IsObject(cor)) {
            ps_json_describe(cor, got, sizeof got);
            ps_cfg_bad(x, wc, "expected an object {\"path\", \"field\", \"offset\"}, got %s", got);
            goto out;
        }
        if (names[1]) {
            ps_cfg_key_path(kp, wf, "corrupted");
            ps_cfg_bad(x, kp, "corrupted prompts come from %s.corrupted.path; drop one of the two", where);
            goto out;
        }
        if (ps_cfg_check_keys(x, cor, wc, corrupted_keys, COUNT(corrupted_keys))) goto out;
        if (ps_cfg_get_path(x, cor, "path", wc, 1, corrupted_path)) goto out;
        if (ps_cfg_get_str(x, cor, "field", wc, 0, &cfield)) goto out;
        if (format_value(x, cor, wc, &s.corrupted_format)) goto out;
        if (ps_cfg_get_int(x, cor, "offset", wc, 0, INT64_MAX, &s.corrupted_offset)) goto out;
        s.corrupted_path = *corrupted_path;
        s.corrupted_field = cfield;
    }
    if (!reference && !names[1] && !cor) s.no_corrupted = no_corrupted;
    char origin[PATH_MAX_LEN + 16];
    snprintf(origin, sizeof origin, "%s: %s", x->file, where);
    s.origin = origin;
    rc = ps_dataset_load(&s, items, n_items, x->e);
    if (rc != 0 && reference && strncmp(x->e->msg, x->file, strlen(x->file)) != 0) {
        // The file's own message (FILE:line N: ...) with the config key it came from.
        char orig[PS_ERR_MAX];
        memcpy(orig, x->e->msg, sizeof orig);
        snprintf(x->e->msg, sizeof x->e->msg, "%s: %s: %.1800s", x->file, where, orig);
    }
out:
    for (int k = 0; k < 5; k++) free(names[k]);
    free(cfield);
    return rc;
}


// Experiments that never run the corrupted prompts nor read their baseline: the ablation kinds with zero, mean or
// resample values, the analyses of the clean run, the weight-only scores, and the tables the loader derives.
static int runs_corrupted(const ps_experiment *ex) {
    const char *k = ex->kind ? ex->kind : "patch_sweep";
    if (!strcmp(k, "ablation") || !strcmp(k, "circuit_search")) return ex->abl_with == PS_ABL_CORRUPTED;
    if (!strcmp(k, "dla") || !strcmp(k, "logit_lens") || !strcmp(k, "attention") || !strcmp(k, "neurons")) return ex->run_corrupted;
    static const char *const never[] = {"ov_scores", "head_scores", "circuit_scores", "reference_means", "neuron_top"};
    for (size_t i = 0; i < COUNT(never); i++)
        if (!strcmp(k, never[i])) return 0;
    return 1;
}

int ps_cfg_check_corrupted(ps_cfg_ctx *x, const ps_config *c) {
    if (!c->no_corrupted) return 0;
    for (int64_t i = 0; i < c->n_experiments; i++) {
        const ps_experiment *ex = &c->experiments[i];
        if (!runs_corrupted(ex)) continue;
        char p[PATH_MAX_LEN];
        ps_cfg_index_path(p, "experiments", i);
        return ps_cfg_bad(x, p, "\"%s\" (kind %s) runs the corrupted prompts, but the records of %s have no field "
                          "'corrupted'; name it in dataset.fields.corrupted, or give dataset.corrupted.path",
                          ex->name, ex->kind ? ex->kind : "patch_sweep", c->dataset_path ? c->dataset_path : "the dataset");
    }
    return 0;
}
