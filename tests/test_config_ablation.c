// Config tests of the ablation kinds ("ablation", "circuit_search", and the "reference_means" tables the loader adds):
// keys, defaults, the reference dataset block with its template field, keep from a seqcont circuit file, and bad
// input with the exact message (test_config.c's helpers, config_fixture.h; that file is at its size limit).
#include "config_fixture.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

// Kinds ablation and circuit_search: their keys, defaults, the reference block with a template field, and
// bad input naming the path.
static void test_ablation(void) {
    ps_config c;
    if (load_ok(&c, tu_src("tests/data/seqcont/ablation.json")) == 0) {
        INTEQ(c.n_experiments, 29);   // 19 and a reference_means table per mean-ablating one, after them
        TU_CHECK(c.n_experiments == 29 && !strcmp(c.experiments[19].name, "mean_per_position_sets.reference_means") &&
                     !strcmp(c.experiments[19].kind, "reference_means") && c.experiments[19].means_of == 3 &&
                     c.experiments[28].means_of == 18, "reference_means experiments");
        const ps_experiment *s = &c.experiments[0], *k2 = &c.experiments[5], *t = &c.experiments[9], *r = &c.experiments[12];
        const ps_experiment *q = &c.experiments[18];
        TU_CHECK(!strcmp(s->kind, "ablation") && s->abl_with == 0 && s->n_cells == 4 && !s->keep && s->cells[3].n == 2 &&
                     !strcmp(s->cells[3].label, "h1.2@pos+h0.0") && s->cells[3].c[0].n_positions == 1 &&
                     s->cells[3].c[0].positions[0] == -1 && !s->cells[3].c[1].positions, "components: h0.1, mlp1, n0.5, h1.2 at end with h0.0");
        TU_CHECK(k2->keep && k2->abl_with == 1 && k2->abl_group == 0 && k2->n_ref_items == 12 && k2->n_cells == 1 && k2->cells[0].n == 2 &&
                     !strcmp(k2->cells[0].label, "keep"), "keep2: mean per_position, one cell of 2, 12 reference prompts");
        TU_CHECK(t->abl_group == 2 && t->n_ref_items == 12 && t->ref_items[4].group && !strcmp(t->ref_items[4].group, "lost") &&
                     c.items[11].group && !strcmp(c.items[11].group, "names"), "per_template_position and the templates");
        TU_CHECK(r->abl_with == 2 && r->seed == 11, "resample with seed 11");
        TU_CHECK(!strcmp(q->kind, "circuit_search") && q->mlp_means_under == 1 && q->threshold == 20 && q->one_pass == 0 && q->ref_path &&
                     strstr(q->ref_path, "randDS.jsonl"), "search settings");
        ps_config_free(&c);
    }
    // keep from a file in seqcont's results format.
    const char *circ = "{\"heads\": [[0, 1], [2, 3]], \"mlps\": [0, 1]}";
    write_tmp("circ.json", circ, strlen(circ));
    const char *text = "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\", \"template\": \"t\"}],\n"
                       " \"experiments\": [{\"name\": \"k\", \"kind\": \"ablation\", \"keep\": {\"path\": \"circ.json\"}, \"with\": \"zero\"},\n"
                       "  {\"name\": \"s\", \"kind\": \"circuit_search\", \"with\": \"zero\", \"threshold\": 2.5, \"passes\": \"one_each\", \"speculate\": 4,\n"
                       "   \"head_site\": \"result\"}]}";
    if (load_ok(&c, write_tmp("abl.json", text, strlen(text))) == 0) {
        const ps_experiment *k = &c.experiments[0], *s = &c.experiments[1];
        TU_CHECK(k->keep && k->n_cells == 1 && k->cells[0].n == 4 && !strcmp(k->cells[0].c[1].name, "h2.3") &&
                     !strcmp(k->cells[0].c[3].name, "mlp1") && k->keep_path, "keep from circ.json");
        STREQ(c.items[0].group, "t");
        TU_CHECK(s->threshold == 2.5 && s->one_pass == 1 && s->speculate == 4, "search settings");
        TU_CHECK(s->heads_at_result == 1 && k->heads_at_result == 0, "head_site: result (search), z by default (ablation)");
        ps_config_free(&c);
    }
    const char *pre = "experiments[1].";
    char want[600];
    snprintf(want, sizeof want, "%swith: expected one of zero, mean, resample, corrupted, got \"means\"", pre);
    expect_exp_fail("abl bad with", "{\"name\": \"x\", \"kind\": \"ablation\", \"components\": [\"h0.1\"], \"with\": \"means\"}", want);
    snprintf(want, sizeof want, "%scomponents[1][0]: expected a component (\"h9.1\": head 1 of layer 9, \"mlp3\", \"n2.17\": neuron 17 of layer 2, "
             "or {\"name\": \"h9.1\", \"positions\": [\"end\"]}), got \"a0.h1\"", pre);
    expect_exp_fail("abl bad component", "{\"name\": \"x\", \"kind\": \"ablation\", \"components\": [\"h0.1\", [\"a0.h1\"]], \"with\": \"zero\"}", want);
    snprintf(want, sizeof want, "%scomponents: required key missing (or \"keep\": a circuit to keep, everything else ablated)", pre);
    expect_exp_fail("abl nothing", "{\"name\": \"x\", \"kind\": \"ablation\", \"with\": \"zero\"}", want);
    snprintf(want, sizeof want, "%sreference: required with \"with\": \"resample\" (the prompts the resampled activations are taken from)", pre);
    expect_exp_fail("abl resample without reference", "{\"name\": \"x\", \"kind\": \"ablation\", \"keep\": [\"h0.1\"], \"with\": \"resample\"}", want);
    write_tmp("ref.jsonl", "{\"text\": \"a\"}\n", 14);
    snprintf(want, sizeof want, "%sreference.fields.template: required with \"grouping\": \"per_template_position\" (the field naming each prompt's template)", pre);
    expect_exp_fail("abl template missing",
                    "{\"name\": \"x\", \"kind\": \"ablation\", \"keep\": [\"h0.1\"], \"grouping\": \"per_template_position\", "
                    "\"reference\": {\"path\": \"ref.jsonl\", \"fields\": {\"clean\": \"text\"}}}", want);
    snprintf(want, sizeof want, "%sthreshold: expected a number of points from 0 to 100, got \"20\"", pre);
    expect_exp_fail("search threshold", "{\"name\": \"x\", \"kind\": \"circuit_search\", \"with\": \"zero\", \"threshold\": \"20\"}", want);
    snprintf(want, sizeof want, "%sreference.fields.answer: unknown key 'answer' (valid keys: clean, template)", pre);
    expect_exp_fail("reference answer field",
                    "{\"name\": \"x\", \"kind\": \"circuit_search\", \"reference\": {\"path\": \"ref.jsonl\", \"fields\": {\"answer\": \"a\"}}}", want);
    snprintf(want, sizeof want, "%scomponents: unknown key 'components' (valid keys: name, kind, with, grouping, reference, seed, mlp_means, threshold, passes, speculate, head_site)", pre);
    expect_exp_fail("search components", "{\"name\": \"x\", \"kind\": \"circuit_search\", \"components\": [\"h0.1\"]}", want);
    snprintf(want, sizeof want, "%shead_site: expected one of z, result, got \"hook_result\"", pre);
    expect_exp_fail("abl head_site", "{\"name\": \"x\", \"kind\": \"ablation\", \"components\": [\"h0.1\"], \"with\": \"zero\", \"head_site\": \"hook_result\"}", want);
    printf("ablation and circuit_search experiments: ok\n");
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/ps_test_config_ablation.XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }
    test_ablation();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
    return tu_done("config_ablation");
}
