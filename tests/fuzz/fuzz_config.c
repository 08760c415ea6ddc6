// libFuzzer target: ps_config_load on arbitrary bytes as the experiment config (config.json in a per-process temp dir).
// Small dataset files sit beside it so configs that name d.jsonl, d.csv, d.json or c.jsonl reach the dataset readers too.
#include "fuzz_util.h"
#include "ps_config.h"

static const char d_jsonl[] =
    "{\"clean\": \"a b\", \"corrupted\": \"a c\", \"answer\": \" b\", \"wrong\": \" c\", \"text\": \"x y\", \"corr\": \" y\", \"incorr\": \" z\"}\n"
    "\n"
    "{\"clean\": \"d e\", \"corrupted\": \"d f\", \"answer\": \" e\", \"wrong\": \" f\", \"text\": \"u v\", \"corr\": \" v\", \"incorr\": \" w\"}\n";
static const char c_jsonl[] = "{\"text\": \"unused\", \"clean\": \"x\"}\n{\"text\": \"p q\", \"clean\": \"r s\"}\n{\"text\": \"t u\", \"clean\": \"v w\"}\n";
static const char d_csv[] = "clean,corrupted,answer,wrong,text\n\"a, b\",\"a \"\"c\"\"\", b, c,x\r\nd,e,f,g,y\n";
static const char d_json[] = "[{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"},"
                             " {\"clean\": \"e\", \"corrupted\": \"f\", \"answer\": \"g\", \"wrong\": \"h\"}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int ready;
    if (!ready) {
        fuzz_write(1, "d.jsonl", (const uint8_t *)d_jsonl, sizeof d_jsonl - 1);
        fuzz_write(1, "c.jsonl", (const uint8_t *)c_jsonl, sizeof c_jsonl - 1);
        fuzz_write(1, "d.csv", (const uint8_t *)d_csv, sizeof d_csv - 1);
        fuzz_write(1, "d.json", (const uint8_t *)d_json, sizeof d_json - 1);
        ready = 1;
    }
    const char *path = fuzz_write(0, "config.json", data, size);
    ps_config c;
    ps_error e = {0};
    int rc = ps_config_load(&c, path, &e);
    fuzz_note("config", rc, e.msg);
    if (rc != 0) {
        // The contract: an error is filled and the config owns nothing.
        FUZZ_FAIL_IF(fuzz_bad_error(&e));
        FUZZ_FAIL_IF(c.items || c.experiments || c.text || c.path);
    } else {
        FUZZ_FAIL_IF(e.code != 0 || c.n_items < 1 || !c.items || !c.model || !c.output);
        for (int64_t i = 0; i < c.n_items; i++) {
            const ps_item *it = &c.items[i];
            FUZZ_FAIL_IF(!it->clean || !it->corrupted || !it->answer || !it->wrong);
            FUZZ_FAIL_IF(!it->clean[0] || !it->corrupted[0] || !it->answer[0] || !it->wrong[0]);
            FUZZ_FAIL_IF(it->n_roles < 0 || (it->n_roles && (!it->role_name || !it->role_pos)));
            for (int64_t r = 0; r < it->n_roles; r++) FUZZ_FAIL_IF(!it->role_name[r] || it->role_pos[r] < 0);
        }
        for (int64_t i = 0; i < c.n_experiments; i++) {
            const ps_experiment *x = &c.experiments[i];
            FUZZ_FAIL_IF(!x->name || !ps_layout_fits(x->site, x->layout));
            FUZZ_FAIL_IF(ps_site_name(x->site)[0] == '?' || ps_layout_name(x->layout)[0] == '?' ||
                ps_direction_name(x->direction)[0] == '?');
            FUZZ_FAIL_IF((x->layers == NULL) != (x->n_layers == 0) || (x->positions == NULL) != (x->n_positions == 0));
            for (int64_t k = 0; k < x->n_layers; k++) FUZZ_FAIL_IF(x->layers[k] < 0);
            for (int64_t k = 0; k < x->n_heads; k++) FUZZ_FAIL_IF(x->heads[k] < 0);
            for (int64_t k = 0; k < x->n_neurons; k++) FUZZ_FAIL_IF(x->neurons[k] < 0);
            // A position naming a role holds a placeholder and the role's name; every other position has no name.
            for (int64_t k = 0; k < x->n_positions && x->position_role; k++)
                FUZZ_FAIL_IF(x->position_role[k] && (!x->position_role[k][0] || x->positions[k] != INT64_MIN + k));
        }
        FUZZ_FAIL_IF(ps_metric_name(c.metric)[0] == '?' || ps_backend_name(c.backend)[0] == '?' ||
            ps_precision_name(c.precision)[0] == '?' || ps_multitoken_name(c.multitoken)[0] == '?');
    }
    ps_config_free(&c);
    ps_config_free(&c);   // documented as safe twice
    return 0;
}
