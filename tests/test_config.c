// Tests for the config loader and dataset files: valid configs and defaults, then bad input, each with the exact message.
// Bad configs are written to a temporary directory so the text and the line:column it should report sit side by side.
#include "config_fixture.h"
#include "ps_dataset.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_full(void) {
    ps_config c;
    const char *path = tu_src("tests/data/configs/full.json");
    if (load_ok(&c, path)) return;
    char want[1024];
    snprintf(want, sizeof want, "%s", tu_src("tests/data/configs/../models/tiny-gpt2"));
    STREQ(c.model, want);
    STREQ(c.tokenizer, "/abs/tokenizer.json");
    STREQ(c.path, path);
    TU_CHECK(c.text && strstr(c.text, "\"batch_rows\": 128"), "text kept verbatim");
    INTEQ(c.backend, PS_BACKEND_AUTO);
    INTEQ(c.precision, PS_PREC_BF16);
    INTEQ(c.threads, 3);
    INTEQ(c.prepend_bos, 0);
    STREQ(c.output, "out/full_results.h5");   // relative to the current directory: stored as written
    INTEQ(c.metric, PS_METRIC_KL);
    INTEQ(c.multitoken, PS_SCORE_SUM_LOGPROB);
    INTEQ(c.align, PS_ALIGN_ERROR);
    INTEQ(c.batch_rows, 128);
    TU_CHECK(c.dataset_path == NULL && c.corrupted_path == NULL, "inline dataset has no paths");
    INTEQ(c.n_items, 2);
    if (c.n_items == 2) {
        STREQ(c.items[0].clean, "When Mary and John went to the store, John gave a drink to");
        STREQ(c.items[0].corrupted, "When Mary and John went to the store, Paul gave a drink to");
        STREQ(c.items[0].answer, " Mary");
        STREQ(c.items[0].wrong, " John");
        STREQ(c.items[1].clean, "\xC3\x9Cn\xC3\xAF" "c\xC3\xB6" "d\xC3\xA9 prompt \xE2\x86\x92 \xE2\x80\x9Cquoted\xE2\x80\x9D");
        STREQ(c.items[1].corrupted, "Other prompt \xE2\x86\x92 x");
        STREQ(c.items[1].answer, " \xC3\xA9");
        STREQ(c.items[1].wrong, "\n");
    }
    INTEQ(c.n_experiments, 5);
    if (c.n_experiments == 5) {
        ps_experiment *x = c.experiments;
        STREQ(x[0].name, "resid");
        INTEQ(x[0].site, PS_SITE_RESID_PRE);
        INTEQ(x[0].layout, PS_BY_LAYER_POS);
        INTEQ(x[0].direction, PS_DIR_DENOISE);
        INTEQ(x[0].n_layers, 2);
        if (x[0].n_layers == 2) { INTEQ(x[0].layers[0], 0); INTEQ(x[0].layers[1], 2); }
        TU_CHECK(x[0].heads == NULL && x[0].neurons == NULL, "resid: no heads/neurons");
        INTEQ(x[0].n_positions, 3);
        if (x[0].n_positions == 3) {
            INTEQ(x[0].positions[0], 0);
            INTEQ(x[0].positions[1], -2);
            INTEQ(x[0].positions[2], -1);   // "end"
        }
        STREQ(x[1].name, "heads.z-1");
        INTEQ(x[1].site, PS_SITE_Z);
        INTEQ(x[1].layout, PS_BY_LAYER_POS_HEAD);
        INTEQ(x[1].direction, PS_DIR_NOISE);
        TU_CHECK(x[1].layers == NULL && x[1].n_layers == 0, "z: all layers");
        INTEQ(x[1].n_heads, 2);
        if (x[1].n_heads == 2) { INTEQ(x[1].heads[0], 1); INTEQ(x[1].heads[1], 0); }
        INTEQ(x[1].n_positions, 1);
        INTEQ(x[2].site, PS_SITE_MLP_POST);
        INTEQ(x[2].layout, PS_BY_LAYER_NEURON);
        INTEQ(x[2].n_neurons, 3);
        if (x[2].n_neurons == 3) INTEQ(x[2].neurons[2], 9);
        INTEQ(x[3].site, PS_SITE_PATTERN);
        INTEQ(x[3].layout, PS_BY_LAYER_HEAD);
        INTEQ(x[4].site, PS_SITE_MLP_OUT);
        INTEQ(x[4].layout, PS_BY_LAYER);
    }
    ps_config_free(&c);
    TU_CHECK(is_zeroed(&c), "free zeroes the config");
    ps_config_free(&c);   // twice is fine
}

static void test_minimal_defaults(void) {
    ps_config c;
    if (load_ok(&c, tu_src("tests/data/configs/minimal.json"))) return;
    STREQ(c.model, tu_src("tests/data/configs/model-dir"));
    TU_CHECK(c.tokenizer == NULL, "tokenizer default NULL (model dir)");
    INTEQ(c.backend, PS_BACKEND_CPU);
    INTEQ(c.precision, PS_PREC_FP32);
    INTEQ(c.threads, 0);
    INTEQ(c.prepend_bos, 1);
    STREQ(c.output, "results/minimal.h5");
    INTEQ(c.metric, PS_METRIC_LOGIT_DIFF);
    INTEQ(c.multitoken, PS_SCORE_FIRST_DIFF);
    INTEQ(c.align, PS_ALIGN_ERROR);
    INTEQ(c.batch_rows, 0);
    INTEQ(c.n_items, 1);
    INTEQ(c.n_experiments, 3);
    if (c.n_experiments == 3) {
        INTEQ(c.experiments[0].layout, PS_BY_LAYER_HEAD);     // q
        INTEQ(c.experiments[1].layout, PS_BY_LAYER_POS);      // attn_out
        INTEQ(c.experiments[2].layout, PS_BY_LAYER_NEURON);   // mlp_post
        for (int i = 0; i < 3; i++) {
            ps_experiment *x = &c.experiments[i];
            INTEQ(x->direction, PS_DIR_DENOISE);
            TU_CHECK(!x->layers && !x->heads && !x->neurons && !x->positions && !x->n_layers && !x->n_heads &&
                         !x->n_neurons && !x->n_positions, "experiment %d: all lists NULL (all)", i);
        }
    }
    ps_config_free(&c);

    // A config without a directory part and without experiments; output is named after the basename.
    char cwd[1024];
    TU_CHECK(getcwd(cwd, sizeof cwd) != NULL, "getcwd");
    TU_CHECK(chdir(tmpdir) == 0, "chdir");
    const char *text = "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}]}";
    FILE *f = fopen("exp.v2.json", "w");
    fputs(text, f);
    fclose(f);
    if (load_ok(&c, "exp.v2.json") == 0) {
        STREQ(c.model, "m");
        STREQ(c.output, "results/exp.v2.h5");
        INTEQ(c.n_experiments, 0);
        TU_CHECK(c.experiments == NULL, "no experiments");
        ps_config_free(&c);
    }
    TU_CHECK(chdir(cwd) == 0, "chdir back");
}

static void test_jsonl_corrupted(void) {
    ps_config c;
    if (load_ok(&c, tu_src("tests/data/configs/jsonl_corrupted.json"))) return;
    STREQ(c.model, "/models/m");
    STREQ(c.dataset_path, tu_src("tests/data/configs/../datasets/small.jsonl"));
    STREQ(c.corrupted_path, tu_src("tests/data/configs/../datasets/small_corrupted.jsonl"));
    // offset 1, limit 2: records 1 and 2 (record 2 is on line 4, after a blank line); corrupted offset 1 skips
    // the corrupted file's first record, so record r pairs with corrupted record r + 1.
    INTEQ(c.n_items, 2);
    if (c.n_items == 2) {
        STREQ(c.items[0].clean, "When Tom and Anna went to the park, Anna gave a ball to");
        STREQ(c.items[0].corrupted, "When Tom and Anna went to the park, Rose gave a ball to");
        STREQ(c.items[0].answer, " Tom");
        STREQ(c.items[0].wrong, " Anna");
        STREQ(c.items[1].clean, "When Lisa and Mark went to the cafe, Mark handed a cup to");
        STREQ(c.items[1].corrupted, "When Lisa and Mark went to the cafe, Eric handed a cup to");
        STREQ(c.items[1].answer, " Lisa");
        STREQ(c.items[1].wrong, " Mark");
    }
    ps_config_free(&c);
}

static void test_csv(void) {
    ps_config c;
    if (load_ok(&c, tu_src("tests/data/configs/csv.json"))) return;
    INTEQ(c.n_items, 3);
    INTEQ(c.n_experiments, 0);
    if (c.n_items == 3) {
        STREQ(c.items[0].clean, "Alice said \"hi\", then left. Bob said");
        STREQ(c.items[0].corrupted, "Carol said \"bye\", then left. Bob said");
        STREQ(c.items[0].answer, " hi");    // leading spaces are part of the field
        STREQ(c.items[0].wrong, " bye");
        STREQ(c.items[1].clean, "Line one\nline two, with comma");
        STREQ(c.items[1].corrupted, "Other prompt");
        STREQ(c.items[1].answer, " A");
        STREQ(c.items[2].clean, "Simple prompt");   // after an empty CRLF line, no newline at the end
        STREQ(c.items[2].wrong, " no");
    }
    ps_config_free(&c);
}

static void test_json_items(void) {
    ps_config c;
    if (load_ok(&c, tu_src("tests/data/configs/json_items.json"))) return;
    INTEQ(c.n_items, 2);   // limit 5 > 2 records: all
    if (c.n_items == 2) {
        STREQ(c.items[1].clean, "The capital of Spain is");
        STREQ(c.items[1].corrupted, "The capital of Japan is");
        STREQ(c.items[1].answer, " Madrid");
        STREQ(c.items[1].wrong, " Tokyo");
    }
    ps_config_free(&c);
}

// The data README asks tests to check SHA256SUMS before trusting a shared file.
static void check_sha(const char *rel) {
    const char *sums = tu_shared("SHA256SUMS");
    ps_error e = {0};
    char *text = ps_read_file(sums, NULL, &e);
    TU_CHECK(text != NULL, "%s", e.msg);
    if (!text) return;
    char hex[65];
    TU_CHECK(ps_sha256_file(tu_shared(rel), hex, &e) == 0, "%s", e.msg);
    int found = 0;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        char *sp = strchr(line, ' ');
        if (!sp) continue;
        char *name = sp;
        while (*name == ' ' || *name == '*') name++;
        if (strncmp(name, "./", 2) == 0) name += 2;
        if (strcmp(name, rel) == 0) {
            found = 1;
            TU_CHECK((size_t)(sp - line) == 64 && strncmp(line, hex, 64) == 0, "%s: sha256 %s does not match SHA256SUMS", rel, hex);
        }
    }
    TU_CHECK(found, "%s not listed in SHA256SUMS", rel);
    free(text);
}

static void test_seqcont(void) {
    const char *done = "seqcont/data/numerals/numerals_prompts_done.jsonl";
    const char *lost = "seqcont/data/numerals/numerals_prompts_lost.jsonl";
    const char *rand = "seqcont/data/numerals/randDS_numerals.jsonl";
    check_sha(done);
    check_sha(lost);
    check_sha(rand);

    // Straight through the dataset API: records 5..7 of done pair with randDS records 5..7.
    ps_dataset_spec s = {0};
    char p1[1024], p2[1024], p3[1024];
    snprintf(p1, sizeof p1, "%s", tu_shared(done));
    snprintf(p2, sizeof p2, "%s", tu_shared(rand));
    snprintf(p3, sizeof p3, "%s", tu_shared(lost));
    s.path = p1;
    s.clean = "text";
    s.answer = "corr";
    s.wrong = "incorr";
    s.corrupted_path = p2;   // field defaults to the clean field, "text"
    s.offset = 0;
    s.limit = 8;
    ps_item *it = NULL;
    int64_t n = 0;
    ps_error e = {0};
    int rc = ps_dataset_load(&s, &it, &n, &e);
    TU_CHECK(rc == 0, "%s", e.msg);
    INTEQ(n, 8);
    if (rc == 0 && n == 8) {
        STREQ(it[0].clean, "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in");
        STREQ(it[0].answer, " 5");
        STREQ(it[0].wrong, " 4");
        STREQ(it[0].corrupted, "Van done in 11. Hat done in 1. Ring done in 11. Desk done in 3. Sun done in");
        STREQ(it[1].clean, "Ice done in 2. Snow done in 3. Watch done in 4. Sun done in 5. Table done in");
        STREQ(it[1].corrupted, "Ice done in 12. Snow done in 9. Watch done in 10. Sun done in 8. Table done in");
    }
    ps_items_free(it, n);

    // The paper's file alone, as a search over it reads it: no corrupted prompts.
    s.corrupted_path = NULL;
    s.limit = 0;
    int none = -1;
    s.no_corrupted = &none;
    rc = ps_dataset_load(&s, &it, &n, &e);
    TU_CHECK(rc == 0, "%s", e.msg);
    INTEQ(n, 1024);   // every record of numerals_prompts_done.jsonl
    INTEQ(none, 1);
    if (rc == 0 && n > 0) STREQ(it[0].corrupted, it[0].clean);
    ps_items_free(it, n);
    s.no_corrupted = NULL;
    s.corrupted_path = p2;

    // lost lines up with randDS[512:1024]: corrupted offset 512, and dataset offset keeps the pairing by record.
    s.path = p3;
    s.corrupted_offset = 512;
    s.offset = 510;
    s.limit = 2;
    rc = ps_dataset_load(&s, &it, &n, &e);
    TU_CHECK(rc == 0, "%s", e.msg);
    INTEQ(n, 2);
    ps_items_free(it, n);
    s.offset = 511;   // through the end of lost: records 511..1023 read randDS 1023..1535, its last record
    s.limit = 0;
    rc = ps_dataset_load(&s, &it, &n, &e);
    TU_CHECK(rc == 0, "%s", e.msg);
    INTEQ(n, 513);
    ps_items_free(it, n);
    s.corrupted_offset = 513;   // one too far: record 1023 needs randDS record 1536 of 1536
    rc = ps_dataset_load(&s, &it, &n, &e);
    TU_CHECK(rc == -1 && e.code == 2, "short corrupted file must fail");
    char want[4096];
    snprintf(want, sizeof want, "%s: has 1536 records, but record 1023 of %s pairs with record 1536 here (corrupted offset 513)", p2, p3);
    STREQ(e.msg, want);
    TU_CHECK(it == NULL && n == 0, "outputs cleared on failure");

    // The example config in configs/ loads as written (paths relative to configs/).
    ps_config c;
    if (load_ok(&c, tu_src("configs/seqcont_numerals.json")) == 0) {
        INTEQ(c.n_items, 64);
        if (c.n_items == 64) {
            STREQ(c.items[63].answer, " 12");
            TU_CHECK(strstr(c.corrupted_path, "randDS_numerals.jsonl") != NULL, "corrupted path");
        }
        INTEQ(c.n_experiments, 5);
        TU_CHECK(strstr(c.model, "configs/../models/demo") != NULL, "model path %s", c.model);
        ps_config_free(&c);
    }
}

static void test_examples(void) {
    ps_config c;
    if (load_ok(&c, tu_src("configs/ioi_example.json")) == 0) {
        INTEQ(c.n_items, 6);
        INTEQ(c.n_experiments, 7);
        STREQ(c.output, "results/ioi_example.h5");
        ps_config_free(&c);
    }
}

static void test_names(void) {
    STREQ(ps_site_name(PS_SITE_RESID_PRE), "resid_pre");
    STREQ(ps_site_name(PS_SITE_Z), "z");
    STREQ(ps_site_name(PS_SITE_PATTERN), "pattern");
    STREQ(ps_site_name(PS_SITE_MLP_POST), "mlp_post");
    STREQ(ps_site_name(PS_SITE_COUNT), "?");
    STREQ(ps_layout_name(PS_BY_LAYER_POS_HEAD), "layer_pos_head");
    STREQ(ps_layout_name(PS_BY_LAYER), "layer");
    STREQ(ps_metric_name(PS_METRIC_PROB_DIFF), "prob_diff");
    STREQ(ps_metric_name(PS_METRIC_KL), "kl");
    STREQ(ps_direction_name(PS_DIR_NOISE), "noise");
    STREQ(ps_backend_name(PS_BACKEND_CUDA), "cuda");
    STREQ(ps_precision_name(PS_PREC_FP16), "fp16");
    STREQ(ps_multitoken_name(PS_SCORE_SUM_LOGPROB), "sum_logprob");
    STREQ(ps_align_name(PS_ALIGN_ERROR), "error");
    STREQ(ps_data_format_name(PS_DATA_CSV), "csv");
    INTEQ(ps_layout_fits(PS_SITE_PATTERN, PS_BY_LAYER_POS), 0);
    INTEQ(ps_layout_fits(PS_SITE_V, PS_BY_LAYER_POS), 1);
    INTEQ(ps_layout_fits(PS_SITE_MLP_POST, PS_BY_LAYER), 0);
}

#define ITEM "{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}"

// The analyses' kinds: their own keys, defaults, and the patching keys refused with the reason.
static void test_analyses(void) {
    const char *text =
        "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}],\n"
        " \"experiments\": [{\"name\": \"d\", \"kind\": \"dla\", \"per_neuron\": true},\n"
        "  {\"name\": \"l\", \"kind\": \"logit_lens\", \"run\": \"corrupted\"},\n"
        "  {\"name\": \"l3\", \"kind\": \"logit_lens\", \"top_k\": 3},\n"
        "  {\"name\": \"a\", \"kind\": \"attention\", \"layers\": [1], \"heads\": [0, 2], \"positions\": [\"end\", 3]},\n"
        "  {\"name\": \"o\", \"kind\": \"ov_scores\", \"tokens\": [\" 1\", \" 2\"], \"negative\": true, \"heads\": [1], \"input\": \"prompts\"}]}";
    ps_config c;
    if (load_ok(&c, write_tmp("analyses.json", text, strlen(text))) == 0) {
        INTEQ(c.n_experiments, 5);
        INTEQ(c.experiments[4].n_tokens, 2);
        STREQ(c.experiments[4].tokens[1], " 2");
        INTEQ(c.experiments[4].negative, 1);
        INTEQ(c.experiments[4].top_k, 5);
        INTEQ(c.experiments[4].ov_prompts, 1);
        INTEQ(c.experiments[1].ov_prompts, 0);
        STREQ(c.experiments[0].kind, "dla");
        INTEQ(c.experiments[0].per_neuron, 1);
        INTEQ(c.experiments[0].run_corrupted, 0);
        INTEQ(c.experiments[1].run_corrupted, 1);
        INTEQ(c.experiments[1].top_k, 5);
        INTEQ(c.experiments[2].top_k, 3);
        INTEQ(c.experiments[3].n_layers, 1);
        INTEQ(c.experiments[3].n_heads, 2);
        INTEQ(c.experiments[3].n_positions, 2);
        INTEQ(c.experiments[3].positions[0], -1);
        ps_config_free(&c);
    }
    expect_exp_fail("an1.json", "{\"name\": \"x\", \"kind\": \"dla\", \"site\": \"z\"}",
                    "experiments[1].site: only used with kind patch_sweep (this experiment is dla)");
    expect_exp_fail("an2.json", "{\"name\": \"x\", \"kind\": \"logit_lens\", \"heads\": [0]}",
                    "experiments[1].heads: only used with kind attention or ov_scores (this experiment is logit_lens)");
    expect_exp_fail("an3.json", "{\"name\": \"x\", \"kind\": \"dla\", \"top_k\": 2}",
                    "experiments[1].top_k: only used with kind logit_lens, ov_scores or neurons (this experiment is dla)");
    expect_exp_fail("an4.json", "{\"name\": \"x\", \"site\": \"z\", \"run\": \"clean\"}",
                    "experiments[1].run: unknown key 'run' (valid keys: name, kind, site, by, direction, layers, heads, neurons, positions)");
    expect_exp_fail("an5.json", "{\"name\": \"x\", \"kind\": \"logit_lens\", \"top_k\": -1}",
                    "experiments[1].top_k: expected an integer from 0 to 1000, got -1");
    expect_exp_fail("an6.json", "{\"name\": \"x\", \"kind\": \"attention\", \"run\": \"dirty\"}",
                    "experiments[1].run: expected one of clean, corrupted, got \"dirty\"");
    expect_exp_fail("an8.json", "{\"name\": \"x\", \"kind\": \"ov_scores\"}",
                    "experiments[1].tokens: required key missing (the member tokens in order, e.g. [\" 1\", \" 2\", \" 3\"])");
    expect_exp_fail("an9.json", "{\"name\": \"x\", \"kind\": \"ov_scores\", \"tokens\": [\" 1\", 2]}",
                    "experiments[1].tokens[1]: expected a non-empty token string, got 2");
    expect_exp_fail("an10.json", "{\"name\": \"x\", \"kind\": \"ov_scores\", \"tokens\": [\" 1\"], \"run\": \"clean\"}",
                    "experiments[1].run: only used with kind dla, logit_lens, attention or neurons (this experiment is ov_scores)");
    expect_exp_fail("an11.json", "{\"name\": \"x\", \"kind\": \"head_scores\", \"layers\": [0]}",
                    "experiments[1].layers: only used with kind attention or ov_scores (this experiment is head_scores)");
    expect_exp_fail("an7.json", "{\"name\": \"x\", \"kind\": \"dlaa\"}",
                    "experiments[1].kind: unknown kind \"dlaa\" (did you mean \"dla\"?)");
}

static void test_bad(void) {
    char buf[4096];
    // Unknown keys, with and without a suggestion.
    expect_fail("unknown.json", "{\"modle\": \"m\", \"dataset\": [" ITEM "]}", 0,
                "modle: unknown key 'modle' (did you mean 'model'?)");
    expect_fail("unknown2.json", "{\"model\": \"m\", \"multitoken\": \"first_diff\", \"dataset\": [" ITEM "]}", 0,
                "multitoken: unknown key 'multitoken' (did you mean 'multi_token'?)");
    expect_fail("unknown3.json", "{\"model\": \"m\", \"colour\": 1}", 0,
                "colour: unknown key 'colour' (valid keys: model, tokenizer, backend, precision, threads, prepend_bos, "
                "output, metric, multi_token, align, batch_rows, batch_prompts, dataset, experiments)");
    expect_exp_fail("unknown4.json", "{\"name\": \"x\", \"site\": \"z\", \"lyers\": [0]}",
                    "experiments[1].lyers: unknown key 'lyers' (did you mean 'layers'?)");
    expect_fail("unknown5.json", "{\"model\": \"m\", \"dataset\": [" ITEM ", {\"clean\": \"a\", \"corupted\": \"b\"}]}", 0,
                "dataset[1].corupted: unknown key 'corupted' (did you mean 'corrupted'?)");
    expect_fail("unknown6.json", "{\"model\": \"m\", \"dataset\": {\"path\": \"x.jsonl\", \"fields\": {\"answr\": \"corr\"}}}", 0,
                "dataset.fields.answr: unknown key 'answr' (did you mean 'answer'?)");
    expect_fail("dupkey.json", "{\"model\": \"m\",\n \"model\": \"n\", \"dataset\": [" ITEM "]}", 0, "model: key 'model' appears twice");

    // Wrong types.
    expect_fail("type1.json", "{\"model\": \"m\", \"threads\": \"4\", \"dataset\": [" ITEM "]}", 0,
                "threads: expected an integer from 0 to 65536, got \"4\"");
    expect_fail("type2.json", "{\"model\": \"m\", \"threads\": -1, \"dataset\": [" ITEM "]}", 0,
                "threads: expected an integer from 0 to 65536, got -1");
    expect_fail("type3.json", "{\"model\": \"m\", \"batch_rows\": 2.5, \"dataset\": [" ITEM "]}", 0,
                "batch_rows: expected an integer >= 0, got 2.5");
    expect_fail("type4.json", "{\"model\": \"m\", \"prepend_bos\": 1, \"dataset\": [" ITEM "]}", 0,
                "prepend_bos: expected true or false, got 1");
    expect_fail("type5.json", "{\"model\": [\"m\"], \"dataset\": [" ITEM "]}", 0, "model: expected a string, got an array");
    expect_fail("type6.json", "{\"model\": \"m\", \"dataset\": 3}", 0,
                "dataset: expected an array of items or an object with a \"path\", got 3");
    expect_fail("type7.json", "[1, 2]", 0, "expected a JSON object at the top level, got an array");
    expect_fail("type8.json", "{\"model\": \"m\", \"dataset\": [" ITEM "], \"experiments\": {}}", 0,
                "experiments: expected an array of experiments, got an object");
    expect_fail("type9.json", "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": 5, \"wrong\": \"d\"}]}", 0,
                "dataset[0].answer: expected a string, got 5");
    expect_fail("type10.json", "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"\", \"wrong\": \"d\"}]}", 0,
                "dataset[0].answer: empty string");
    expect_fail("type11.json", "{\"model\": \"m\", \"dataset\": [" ITEM ", {\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\"}]}", 0,
                "dataset[1].wrong: required key missing");
    expect_fail("type12.json", "{\"dataset\": [" ITEM "]}", 0, "model: required key missing");
    expect_fail("type13.json", "{\"model\": \"m\"}", 0, "dataset: required key missing");
    expect_exp_fail("type14.json", "{\"name\": \"x\", \"site\": \"z\", \"layers\": [0, -1]}",
                    "experiments[1].layers[1]: expected a non-negative integer, got -1");
    expect_exp_fail("type15.json", "{\"name\": \"x\", \"site\": \"resid_pre\", \"positions\": [1.5]}",
                    "experiments[1].positions[0]: expected an integer, \"end\" or a role name, got 1.5");
    expect_exp_fail("type16.json", "{\"name\": \"x\", \"site\": \"resid_pre\", \"positions\": [\"S2\", \"S2\"]}",
                    "experiments[1].positions[1]: \"S2\" appears twice in the list");
    expect_exp_fail("type16.json", "{\"name\": \"x\", \"site\": \"z\", \"heads\": 3}",
                    "experiments[1].heads: expected an array of non-negative integers, got 3");
    expect_exp_fail("type17.json", "{\"name\": \"x\", \"site\": \"z\", \"layers\": []}",
                    "experiments[1].layers: empty list (leave the key out to sweep all)");
    expect_exp_fail("type18.json", "{\"name\": \"x\", \"site\": \"z\", \"layers\": [1, 2, 1]}",
                    "experiments[1].layers[2]: 1 appears twice in the list");
    expect_exp_fail("type19.json", "{\"name\": \"x\", \"site\": \"resid_pre\", \"positions\": [-1, \"end\"]}",
                    "experiments[1].positions[1]: -1 appears twice in the list");

    // Enums.
    expect_exp_fail("enum1.json", "{\"name\": \"x\", \"site\": \"resid\"}",
                    "experiments[1].site: expected one of resid_pre, resid_mid, resid_post, attn_out, mlp_out, z, q, k, v, "
                    "pattern, mlp_post, result, got \"resid\"");
    expect_fail("enum2.json", "{\"model\": \"m\", \"metric\": \"logitdiff\", \"dataset\": [" ITEM "]}", 0,
                "metric: expected one of logit_diff, prob_diff, logprob, kl, got \"logitdiff\"");
    expect_fail("enum3.json", "{\"model\": \"m\", \"backend\": true, \"dataset\": [" ITEM "]}", 0,
                "backend: expected one of cpu, cuda, auto, got true");
    expect_exp_fail("enum4.json", "{\"name\": \"x\", \"site\": \"z\", \"direction\": \"denoising\"}",
                    "experiments[1].direction: expected one of denoise, noise, got \"denoising\"");
    expect_fail("enum5.json", "{\"model\": \"m\", \"dataset\": {\"path\": \"x.txt\", \"format\": \"tsv\"}}", 0,
                "dataset.format: expected one of jsonl, csv, json, got \"tsv\"");

    // Experiments: names, site/by.
    expect_exp_fail("exp1.json", "{\"name\": \"ok\", \"site\": \"z\"}",
                    "experiments[1].name: \"ok\" is already the name of experiments[0]");
    expect_exp_fail("exp2.json", "{\"name\": \"a/b\", \"site\": \"z\"}",
                    "experiments[1].name: \"a/b\": names use only A-Z a-z 0-9 _ . - (they become HDF5 group names)");
    expect_exp_fail("exp3.json", "{\"site\": \"z\"}", "experiments[1].name: required key missing");
    expect_exp_fail("exp4.json", "{\"name\": \"x\"}", "experiments[1].site: required key missing");
    expect_exp_fail("exp5.json", "{\"name\": \"x\", \"site\": \"resid_pre\", \"by\": \"layer_neuron\"}",
                    "experiments[1].by: layer_neuron does not fit site resid_pre (use layer_pos or layer)");
    expect_exp_fail("exp6.json", "{\"name\": \"x\", \"site\": \"mlp_post\", \"by\": \"layer_pos\"}",
                    "experiments[1].by: layer_pos does not fit site mlp_post (use layer_neuron)");
    expect_exp_fail("exp7.json", "{\"name\": \"x\", \"site\": \"pattern\", \"by\": \"layer_pos\"}",
                    "experiments[1].by: layer_pos does not fit site pattern (use layer_head or layer_pos_head)");
    expect_exp_fail("exp8.json", "{\"name\": \"x\", \"site\": \"attn_out\", \"by\": \"layer_head\"}",
                    "experiments[1].by: layer_head does not fit site attn_out (use layer_pos or layer)");
    expect_exp_fail("exp9.json", "{\"name\": \"x\", \"site\": \"resid_pre\", \"heads\": [0]}",
                    "experiments[1].heads: only used with by layer_head or layer_pos_head (this sweep is layer_pos)");
    expect_exp_fail("exp10.json", "{\"name\": \"x\", \"site\": \"z\", \"positions\": [0]}",
                    "experiments[1].positions: only used with by layer_pos or layer_pos_head (this sweep is layer_head, over all positions)");
    expect_exp_fail("exp11.json", "{\"name\": \"x\", \"site\": \"z\", \"neurons\": [0]}",
                    "experiments[1].neurons: only used with by layer_neuron (this sweep is layer_head)");
    expect_exp_fail("exp12.json", "\"resid_pre\"", "experiments[1]: expected an experiment object, got \"resid_pre\"");

    // JSON syntax errors with line:column.
    expect_fail("syntax1.json", "{\n  \"model\": \"m\"\n  \"dataset\": []\n}", 0,
                "line 3, column 3: JSON syntax error near \" \\\"dataset\\\": []\\n}\"");
    expect_fail("syntax2.json", "{\n  \"model\": \"m\",\n  \"threads\": 4,\n}\n", 0, "line 4, column 2: JSON syntax error near \"}\\n\"");
    expect_fail("syntax3.json", "{\"model\": \"m\"", 0, "line 1, column 14: JSON syntax error at the end of the text");
    expect_fail("syntax4.json", "{\"model\": \"m\"}\n{}", 0, "line 2, column 1: JSON syntax error near \"{}\"");
    expect_fail("syntax5.json", "", 0, "line 1, column 1: JSON syntax error at the end of the text");

    // Invalid UTF-8: byte offset (and line/column) of the first bad byte.
    expect_fail("utf8.json", "{\"model\": \"m\",\n \"output\": \"r\xC3\xA9s\xFF.h5\"}", 0,
                "byte 31 (line 2, column 17): invalid UTF-8");
    expect_fail("utf8b.json", "{\"model\": \"\xED\xA0\x80\"}", 0, "byte 11 (line 1, column 12): invalid UTF-8");   // surrogate
    expect_fail("nul.json", "{\"model\": \"m\0\"}", 15, "byte 12 (line 1, column 13): NUL byte in the config");

    // Empty datasets.
    expect_fail("empty1.json", "{\"model\": \"m\", \"dataset\": []}", 0, "dataset: empty dataset (no items)");
    const char *small = tu_src("tests/data/datasets/small.jsonl");
    snprintf(buf, sizeof buf, "{\"model\": \"m\", \"dataset\": {\"path\": \"%s\", \"offset\": 4}}", small);
    char want[2048];
    snprintf(want, sizeof want, "=%s: empty dataset: 0 items (the file has 4 records; offset 4, limit 0)", small);
    expect_fail("empty2.json", buf, 0, want);

    // Dataset files: missing field on line N, bad CSV, missing file, corrupted pairing.
    const char *mf = tu_src("tests/data/datasets/bad_missing_field.jsonl");
    snprintf(buf, sizeof buf,
             "{\"model\": \"m\", \"dataset\": {\"path\": \"%s\", \"fields\": {\"clean\": \"text\", \"answer\": \"corr\", "
             "\"wrong\": \"incorr\", \"corrupted\": \"text\"}}}", mf);
    snprintf(want, sizeof want, "=%s:line 3: field 'incorr' missing", mf);
    expect_fail("field.json", buf, 0, want);
    snprintf(buf, sizeof buf, "{\"model\": \"m\", \"dataset\": {\"path\": \"%s\", \"fields\": {\"clean\": \"text\", \"answer\": \"corr\", "
             "\"wrong\": \"incorr\"}}, \"experiments\": [{\"name\": \"s\", \"site\": \"resid_pre\"}]}", small);
    snprintf(want, sizeof want, "experiments[0]: \"s\" (kind patch_sweep) runs the corrupted prompts, but the records of %s have "
             "no field 'corrupted'; name it in dataset.fields.corrupted, or give dataset.corrupted.path", small);
    expect_fail("field2.json", buf, 0, want);
    const char *bq = tu_src("tests/data/datasets/bad_quote.csv");
    snprintf(buf, sizeof buf, "{\"model\": \"m\", \"dataset\": {\"path\": \"%s\"}}", bq);
    snprintf(want, sizeof want, "=%s:line 3: unterminated quoted field (no closing \")", bq);
    expect_fail("csvquote.json", buf, 0, want);
    snprintf(want, sizeof want, "dataset.path: cannot open '%s': No such file or directory", tmp_path("nope/data.jsonl"));
    expect_fail("missing.json", "{\"model\": \"m\", \"dataset\": {\"path\": \"nope/data.jsonl\"}}", 0, want);
    snprintf(buf, sizeof buf, "{\"model\": \"m\", \"dataset\": {\"path\": \"%s\", \"corrupted\": {\"path\": \"gone.csv\"}}}", small);
    snprintf(want, sizeof want, "dataset.corrupted.path: cannot open '%s': No such file or directory", tmp_path("gone.csv"));
    expect_fail("missing2.json", buf, 0, want);
    snprintf(want, sizeof want,
             "dataset.path: cannot tell the format of '%s' from its extension; set format to jsonl, csv or json", tmp_path("data.txt"));
    expect_fail("fmt.json", "{\"model\": \"m\", \"dataset\": {\"path\": \"data.txt\"}}", 0, want);
    snprintf(buf, sizeof buf,
             "{\"model\": \"m\", \"dataset\": {\"path\": \"%s\", \"fields\": {\"corrupted\": \"x\"}, \"corrupted\": {\"path\": \"%s\"}}}",
             small, small);
    expect_fail("both.json", buf, 0,
                "dataset.fields.corrupted: corrupted prompts come from dataset.corrupted.path; drop one of the two");
    snprintf(buf, sizeof buf, "{\"model\": \"m\", \"dataset\": {\"path\": \"%s\", \"offset\": -3}}", small);
    expect_fail("neg.json", buf, 0, "dataset.offset: expected an integer >= 0, got -3");
    snprintf(buf, sizeof buf, "{\"model\": \"m\", \"dataset\": {\"path\": \"%s\", \"corrupted\": {\"path\": \"%s\", \"feld\": \"t\"}}}", small, small);
    expect_fail("cfield.json", buf, 0, "dataset.corrupted.feld: unknown key 'feld' (did you mean 'field'?)");

    // Missing config file.
    const char *nofile = tmp_path("does-not-exist.json");
    ps_config c;
    ps_error e = {0};
    TU_CHECK(ps_config_load(&c, nofile, &e) == -1 && e.code == 2, "missing config must fail with code 2");
    snprintf(want, sizeof want, "%s: cannot open: No such file or directory", nofile);
    STREQ(e.msg, want);
    TU_CHECK(is_zeroed(&c), "zeroed");
}

// Dataset files on their own: CSV and JSONL corner cases.
static void expect_data_fail(const char *name, const char *text, const char *want_rest) {
    const char *p = write_tmp(name, text, strlen(text));
    ps_dataset_spec s = {0};
    s.path = p;
    ps_item *it = (ps_item *)1;
    int64_t n = 7;
    ps_error e = {0};
    int rc = ps_dataset_load(&s, &it, &n, &e);
    char want[1024];
    snprintf(want, sizeof want, "%s%s", p, want_rest);
    TU_CHECK(rc == -1 && e.code == PS_EXIT_BADINPUT && it == NULL && n == 0, "%s: must fail cleanly", name);
    TU_CHECK(strcmp(e.msg, want) == 0, "%s:\n  got  [%s]\n  want [%s]", name, e.msg, want);
}

static void test_data_files(void) {
    expect_data_fail("d1.csv", "clean,corrupted,answer,wrong\na,b,c\n", ":line 2: 3 fields, but the header (line 1) has 4");
    expect_data_fail("d2.csv", "clean,corrupted,answer,wrong\na,\"b\"x,c,d\n",
                     ":line 2: text after a closing quote (write a quote inside a quoted field as \"\")");
    expect_data_fail("d3.csv", "clean,corrupted,answer,wrong\na,b\"c,c,d\n",
                     ":line 2: quote inside an unquoted field (quote the whole field and write \"\" for a quote)");
    expect_data_fail("d4.csv", "clean,corrupted,answer,wrong\n\"a\nb\nc\",b,,d\n", ":line 2: field 'answer' is empty");
    expect_data_fail("d5.csv", "clean,corrupted,answer\na,b,c\n", ":line 1: no column 'wrong' in the header (columns: clean, corrupted, answer)");
    expect_data_fail("d6.csv", "clean,clean,answer\na,b,c\n", ":line 1: column 'clean' appears twice in the header");
    expect_data_fail("d7.csv", "", ": empty CSV file (no header row)");
    expect_data_fail("d8.csv", "clean,corrupted,answer,wrong\n", ": empty dataset: 0 items (the file has 0 records; offset 0, limit 0)");
    expect_data_fail("d9.jsonl", "\n{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}\n{\"clean\": \"a\",, }\n",
                     ":line 3, column 16: JSON syntax error");
    expect_data_fail("d10.jsonl", "{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"} {}\n",
                     ":line 1, column 63: text after the JSON object (one object per line)");
    expect_data_fail("d11.jsonl", "[1]\n", ":line 1: expected a JSON object, got an array");
    expect_data_fail("d12.jsonl", "{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": [\"c\"], \"wrong\": \"d\"}\n",
                     ":line 1: field 'answer': expected a string, got an array");
    expect_data_fail("d13.json", "[{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}, {\"clean\": \"a\"}]",
                     ": [1]: field 'corrupted' missing");
    expect_data_fail("d14.json", "{\"items\": []}", ": expected a JSON array of objects, got an object");
    expect_data_fail("d15.json", "[\n1,\n]", ": line 3, column 1: JSON syntax error near \"]\"");
    expect_data_fail("d16.jsonl", "{\"clean\": \"a\xC0\xAF\"}\n", ": byte 12 (line 1): invalid UTF-8");

    // Good corner cases: BOM, CRLF JSONL, single column file + quoted empty lines inside a field.
    const char *ok = "\xEF\xBB\xBF{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}\r\n  \r\n"
                     "{\"clean\": \"e\", \"corrupted\": \"f\", \"answer\": \"g\", \"wrong\": \"h\"}\r\n";
    const char *p = write_tmp("ok.jsonl", ok, strlen(ok));
    ps_dataset_spec s = {0};
    s.path = p;
    ps_item *it = NULL;
    int64_t n = 0;
    ps_error e = {0};
    TU_CHECK(ps_dataset_load(&s, &it, &n, &e) == 0, "%s", e.msg);
    INTEQ(n, 2);
    if (n == 2) { STREQ(it[0].clean, "a"); STREQ(it[1].wrong, "h"); }
    ps_items_free(it, n);
    const char *csv = "\xEF\xBB\xBF" "wrong,answer,corrupted,clean\r\n\"x\n\ny\",\"\"\"q\"\"\",c,\"d,e\"\n";
    p = write_tmp("ok.csv", csv, strlen(csv));
    s.path = p;
    TU_CHECK(ps_dataset_load(&s, &it, &n, &e) == 0, "%s", e.msg);
    INTEQ(n, 1);
    if (n == 1) {
        STREQ(it[0].wrong, "x\n\ny");
        STREQ(it[0].answer, "\"q\"");
        STREQ(it[0].corrupted, "c");
        STREQ(it[0].clean, "d,e");
    }
    ps_items_free(it, n);
}

// Path-patching experiments: their own keys, senders and receivers by name, defaults (noise, every head,
// the final resid_post), and the errors.
static void test_path_patch(void) {
    const char *text =
        "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}],\n"
        " \"experiments\": [{\"name\": \"pp\", \"kind\": \"path_patch\"},\n"
        "  {\"name\": \"pq\", \"kind\": \"path_patch\", \"receivers\": [\"a9.h6.q\", \"a9.h9.q\"], \"freeze_mlps\": true,\n"
        "   \"layers\": [7, 8], \"heads\": [3], \"positions\": [\"end\", \"S2\"], \"direction\": \"denoise\"},\n"
        "  {\"name\": \"pm\", \"kind\": \"path_patch\", \"senders\": [\"a0.h1\", \"m2\"], \"receivers\": [\"m5\", \"m6\"]},\n"
        "  {\"name\": \"pa\", \"kind\": \"path_patch\", \"senders\": \"all\", \"receivers\": \"resid_post\"}]}";
    ps_config c;
    if (load_ok(&c, write_tmp("pp.json", text, strlen(text)))) return;
    INTEQ(c.n_experiments, 4);
    if (c.n_experiments == 4) {
        const ps_experiment *a = &c.experiments[0], *b = &c.experiments[1], *m = &c.experiments[2], *d = &c.experiments[3];
        STREQ(a->kind, "path_patch");
        INTEQ(a->direction, PS_DIR_NOISE);
        INTEQ(a->senders, PS_SENDERS_HEADS);
        INTEQ(a->input, PS_RECV_RESID_POST);
        INTEQ(a->n_receivers, 0);
        INTEQ(a->freeze_mlps, 0);
        INTEQ(b->input, PS_RECV_Q);
        INTEQ(b->n_receivers, 2);
        TU_CHECK(b->n_receivers == 2 && b->receivers[1].layer == 9 && b->receivers[1].head == 9, "receivers[1] = a9.h9");
        INTEQ(b->freeze_mlps, 1);
        INTEQ(b->direction, PS_DIR_DENOISE);
        INTEQ(b->n_layers, 2);
        INTEQ(b->n_heads, 1);
        INTEQ(b->n_positions, 2);
        TU_CHECK(b->position_role && b->position_role[1] && !strcmp(b->position_role[1], "S2"), "positions[1] is the role S2");
        INTEQ(m->senders, PS_SENDERS_LIST);
        INTEQ(m->n_sender_list, 2);
        TU_CHECK(m->n_sender_list == 2 && m->sender_list[0].layer == 0 && m->sender_list[0].head == 1 && m->sender_list[1].layer == 2 &&
                     m->sender_list[1].head == -1, "senders a0.h1, m2");
        INTEQ(m->input, PS_RECV_MLP);
        INTEQ(m->n_receivers, 2);
        INTEQ(d->senders, PS_SENDERS_ALL);
        INTEQ(d->input, PS_RECV_RESID_POST);
    }
    ps_config_free(&c);
    const char *pre = "experiments[1].";
    char want[400];
    snprintf(want, sizeof want, "%sreceivers[1]: every receiver reads the same input (a3.h1.k here, q before): run one experiment per input", pre);
    expect_exp_fail("pp mixed inputs", "{\"name\": \"x\", \"kind\": \"path_patch\", \"receivers\": [\"a3.h0.q\", \"a3.h1.k\"]}", want);
    snprintf(want, sizeof want, "%sreceivers[0]: expected a head's input (\"a3.h0.q\", .k, .v) or an MLP (\"m2\"), got \"a3.h0\"", pre);
    expect_exp_fail("pp receiver without input", "{\"name\": \"x\", \"kind\": \"path_patch\", \"receivers\": [\"a3.h0\"]}", want);
    snprintf(want, sizeof want, "%ssenders: expected \"heads\", \"mlps\", \"all\" or a list such as [\"a0.h1\", \"m2\"], got \"head\"", pre);
    expect_exp_fail("pp bad senders", "{\"name\": \"x\", \"kind\": \"path_patch\", \"senders\": \"head\"}", want);
    snprintf(want, sizeof want, "%slayers: filters a grid of senders (\"heads\", \"mlps\", \"all\"); this experiment lists its senders", pre);
    expect_exp_fail("pp list and layers", "{\"name\": \"x\", \"kind\": \"path_patch\", \"senders\": [\"m1\"], \"layers\": [1]}", want);
    // A patch_sweep key on a path_patch experiment names the valid ones.
    const char *t2 = "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}],"
                     " \"experiments\": [{\"name\": \"x\", \"kind\": \"path_patch\", \"site\": \"z\"}]}";
    ps_error e = {0};
    TU_CHECK(ps_config_load(&c, write_tmp("pp2.json", t2, strlen(t2)), &e) == -1 && strstr(e.msg, "unknown key 'site'") &&
                 strstr(e.msg, "senders, receivers"),
             "site on a path_patch experiment: %s", e.msg);
    ps_config_free(&c);
    printf("path_patch experiments: ok\n");
}

// Experiment kind "attribution" takes a sweep's keys (site, by, direction, lists) and their checks.
static void test_attribution_kind(void) {
    const char *text =
        "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}],\n"
        " \"experiments\": [{\"name\": \"attr_z\", \"kind\": \"attribution\", \"site\": \"z\", \"by\": \"layer_pos_head\",\n"
        "                   \"direction\": \"noise\", \"heads\": [0, 2], \"positions\": [-1]},\n"
        "                  {\"name\": \"attr_neurons\", \"kind\": \"attribution\", \"site\": \"mlp_post\"},\n"
        "                  {\"name\": \"patch_z\", \"site\": \"z\"}]}";
    ps_config c;
    if (load_ok(&c, write_tmp("attribution.json", text, strlen(text)))) return;
    INTEQ(c.n_experiments, 3);
    if (c.n_experiments == 3) {
        const ps_experiment *x = &c.experiments[0];
        STREQ(x->kind, "attribution");
        INTEQ(x->site, PS_SITE_Z);
        INTEQ(x->layout, PS_BY_LAYER_POS_HEAD);
        INTEQ(x->direction, PS_DIR_NOISE);
        INTEQ(x->n_heads, 2);
        INTEQ(x->n_positions, 1);
        STREQ(c.experiments[1].kind, "attribution");
        INTEQ(c.experiments[1].layout, PS_BY_LAYER_NEURON);
        INTEQ(c.experiments[1].direction, PS_DIR_DENOISE);
        STREQ(c.experiments[2].kind, "patch_sweep");
    }
    ps_config_free(&c);
    expect_exp_fail("attr1.json", "{\"name\": \"x\", \"kind\": \"atribution\", \"site\": \"z\"}",
                    "experiments[1].kind: unknown kind \"atribution\" (did you mean \"attribution\"?)");
    expect_exp_fail("attr2.json", "{\"name\": \"x\", \"kind\": \"attribution\", \"site\": \"pattern\", \"by\": \"layer_pos\"}",
                    "experiments[1].by: layer_pos does not fit site pattern (use layer_head or layer_pos_head)");

    // edge_attribution: the whole graph, scored by a method; sweep keys are refused, method elsewhere too.
    const char *edges = "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}],\n"
                        " \"experiments\": [{\"name\": \"eap\", \"kind\": \"edge_attribution\"},\n"
                        "                  {\"name\": \"eap2\", \"kind\": \"edge_attribution\", \"method\": \"EAP\"},\n"
                        "                  {\"name\": \"ig\", \"kind\": \"edge_attribution\", \"method\": \"EAP-IG-inputs\", \"steps\": 7},\n"
                        "                  {\"name\": \"cc\", \"kind\": \"edge_attribution\", \"method\": \"clean-corrupted\"}]}";
    if (load_ok(&c, write_tmp("edges.json", edges, strlen(edges))) == 0) {
        INTEQ(c.n_experiments, 4);
        STREQ(c.experiments[0].kind, "edge_attribution");
        INTEQ(c.experiments[0].method, PS_EDGE_EAP);
        INTEQ(c.experiments[1].method, PS_EDGE_EAP);
        INTEQ(c.experiments[2].method, PS_EDGE_EAP_IG_INPUTS);
        INTEQ(c.experiments[2].steps, 7);
        INTEQ(c.experiments[3].method, PS_EDGE_CLEAN_CORRUPTED);
        ps_config_free(&c);
    }
    expect_exp_fail("edges1.json", "{\"name\": \"x\", \"kind\": \"edge_attribution\", \"site\": \"z\"}",
                    "experiments[1].site: only used with kind patch_sweep (this experiment is edge_attribution)");
    expect_exp_fail("edges2.json", "{\"name\": \"x\", \"kind\": \"edge_attribution\", \"method\": \"EAP-IG\"}",
                    "experiments[1].method: expected one of EAP, EAP-IG-inputs, clean-corrupted, got \"EAP-IG\"");
    expect_exp_fail("edges4.json", "{\"name\": \"x\", \"kind\": \"edge_attribution\", \"steps\": 3}",
                    "experiments[1].steps: only used with method EAP-IG-inputs");
    expect_exp_fail("edges5.json", "{\"name\": \"x\", \"kind\": \"edge_attribution\", \"method\": \"EAP-IG-inputs\", \"steps\": 0}",
                    "experiments[1].steps: expected an integer from 1 to 1000, got 0");
    expect_exp_fail("edges3.json", "{\"name\": \"x\", \"site\": \"z\", \"method\": \"EAP\"}",
                    "experiments[1].method: unknown key 'method' (valid keys: name, kind, site, by, direction, layers, heads, neurons, positions)");

    // edge_circuit: listed edges, or chosen from an edge_attribution experiment's scores by top_n or threshold.
    const char *circ = "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}],\n"
                       " \"experiments\": [{\"name\": \"eap\", \"kind\": \"edge_attribution\"},\n"
                       "   {\"name\": \"c1\", \"kind\": \"edge_circuit\", \"edges\": [\"input->logits\", \"a0.h1->a1.h0<q>\"]},\n"
                       "   {\"name\": \"c2\", \"kind\": \"edge_circuit\", \"scores_from\": \"eap\", \"top_n\": [100, 5]},\n"
                       "   {\"name\": \"c3\", \"kind\": \"edge_circuit\", \"scores_from\": \"eap\", \"threshold\": 0.25, \"absolute\": false}]}";
    if (load_ok(&c, write_tmp("circ.json", circ, strlen(circ))) == 0) {
        INTEQ(c.n_experiments, 4);
        INTEQ(c.experiments[1].n_edge_names, 2);
        STREQ(c.experiments[1].edge_names[1], "a0.h1->a1.h0<q>");
        STREQ(c.experiments[2].scores_from, "eap");
        INTEQ(c.experiments[2].top_n, 100);
        INTEQ(c.experiments[2].n_top_ns, 2);
        INTEQ(c.experiments[2].top_ns[1], 5);
        INTEQ(c.experiments[2].signed_scores, 0);
        INTEQ(c.experiments[3].has_threshold, 1);
        TU_CHECK(c.experiments[3].threshold == 0.25, "threshold %g", c.experiments[3].threshold);
        INTEQ(c.experiments[3].signed_scores, 1);
        ps_config_free(&c);
    }
    expect_exp_fail("circ1.json", "{\"name\": \"x\", \"kind\": \"edge_circuit\"}",
                    "experiments[1]: give either edges (a list of edge names), scores_from (an edge_attribution experiment) or scores_file "
                    "(EAP-IG's graph JSON)");
    expect_exp_fail("circ2.json", "{\"name\": \"x\", \"kind\": \"edge_circuit\", \"scores_from\": \"e\"}",
                    "experiments[1]: with scores give one of top_n, greedy or threshold");
    expect_exp_fail("circ3.json", "{\"name\": \"x\", \"kind\": \"edge_circuit\", \"edges\": [\"m0\"]}",
                    "experiments[1].edges[0]: expected an edge name such as \"a0.h1->a1.h0<q>\", got \"m0\"");
    expect_exp_fail("circ4.json", "{\"name\": \"x\", \"kind\": \"edge_circuit\", \"edges\": [\"m0->logits\"], \"top_n\": 3}",
                    "experiments[1].edges: top_n, greedy, threshold and absolute choose edges from scores; a listed circuit takes none");
    expect_exp_fail("circ5.json", "{\"name\": \"x\", \"kind\": \"edge_circuit\", \"scores_from\": \"e\", \"top_n\": [3, -1]}",
                    "experiments[1].top_n[1]: expected an integer >= 0, got -1");
    expect_exp_fail("circ6.json", "{\"name\": \"x\", \"kind\": \"edge_circuit\", \"scores_from\": \"e\", \"top_n\": 5}",
                    "experiments[1].scores_from: no experiment is named \"e\"");
    expect_exp_fail("circ7.json", "{\"name\": \"x\", \"kind\": \"edge_circuit\", \"scores_from\": \"e\", \"top_n\": 5, \"greedy\": 5}",
                    "experiments[1].greedy: give one of top_n and greedy");
    expect_exp_fail("circ8.json", "{\"name\": \"x\", \"kind\": \"edge_circuit\", \"edges\": [\"m0->logits\"], \"with\": \"mean\"}",
                    "experiments[1].reference: required with \"with\": \"mean\" (the prompts the means are taken over)");
}

// Corrupted prompts are optional where the loader says so (spec.no_corrupted): the first record decides, for JSONL, JSON
// and CSV alike; without the option, or once the first record has them, every record needs them.
static void put_tmp(const char *name, const char *text) { write_tmp(name, text, strlen(text)); }

// A spec reading <tmpdir>/name (written with text; its path copied into path) with corrupted prompts optional.
static ps_dataset_spec optional_spec(const char *name, const char *text, char *path, size_t cap, int *none) {
    put_tmp(name, text);
    snprintf(path, cap, "%s", tmp_path(name));
    *none = -1;
    return (ps_dataset_spec){.path = path, .no_corrupted = none};
}

static void test_no_corrupted(void) {
    static const char *const files[][2] = {
        {"nc.jsonl", "{\"clean\": \"a b\", \"answer\": \" c\", \"wrong\": \" d\"}\n{\"clean\": \"e f\", \"answer\": \" g\", \"wrong\": \" h\", \"corrupted\": \"x\"}\n"},
        {"nc.json", "[{\"clean\": \"a b\", \"answer\": \" c\", \"wrong\": \" d\"}, {\"clean\": \"e f\", \"answer\": \" g\", \"wrong\": \" h\"}]"},
        {"nc.csv", "clean,answer,wrong\na b, c, d\ne f, g, h\n"},
    };
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++) {
        char path[512];
        int none;
        ps_dataset_spec s = optional_spec(files[k][0], files[k][1], path, sizeof path, &none);
        ps_item *it = NULL;
        int64_t n = 0;
        ps_error e = {0};
        int rc = ps_dataset_load(&s, &it, &n, &e);
        TU_CHECK(rc == 0, "%s: %s", files[k][0], e.msg);
        INTEQ(n, 2);
        INTEQ(none, 1);
        if (rc == 0 && n == 2) {
            STREQ(it[0].corrupted, "a b");   // a copy of the clean prompt: a later record's field is not read
            STREQ(it[1].corrupted, "e f");
            STREQ(it[1].answer, " g");
        }
        ps_items_free(it, n);
        s.no_corrupted = NULL;   // not optional: the first record without the field is an error
        e = (ps_error){0};
        rc = ps_dataset_load(&s, &it, &n, &e);
        TU_CHECK(rc == -1 && e.code == 2, "%s without the option must fail", files[k][0]);
        TU_CHECK(strstr(e.msg, k == 2 ? "no column 'corrupted' in the header" : "field 'corrupted' missing") != NULL, "%s: %s",
                 files[k][0], e.msg);
    }
    // The first record has the field: every record needs it, and the flag says so.
    char path[512];
    int none;
    ps_dataset_spec s = optional_spec("nc2.jsonl",
                                      "{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \" c\", \"wrong\": \" d\"}\n"
                                      "{\"clean\": \"e\", \"answer\": \" g\", \"wrong\": \" h\"}\n",
                                      path, sizeof path, &none);
    ps_item *it = NULL;
    int64_t n = 0;
    ps_error e = {0};
    int rc = ps_dataset_load(&s, &it, &n, &e);
    TU_CHECK(rc == -1 && e.code == 2, "a second record without the first's corrupted field must fail");
    char want[600];
    snprintf(want, sizeof want, "%s:line 2: field 'corrupted' missing", path);
    STREQ(e.msg, want);
    INTEQ(none, 0);
    s.limit = 1;
    e = (ps_error){0};
    rc = ps_dataset_load(&s, &it, &n, &e);
    TU_CHECK(rc == 0 && n == 1, "%s", e.msg);
    if (rc == 0 && n == 1) STREQ(it[0].corrupted, "b");
    ps_items_free(it, n);

    // Through the config: allowed for a zero ablation, refused (naming the experiment) for a sweep.
    put_tmp("nc_abl.json", "{\"model\": \"/m\", \"dataset\": {\"path\": \"nc.csv\"}, \"experiments\": "
                             "[{\"name\": \"z\", \"kind\": \"ablation\", \"components\": [\"h0.1\"], \"with\": \"zero\"}]}");
    ps_config c;
    e = (ps_error){0};
    rc = ps_config_load(&c, tmp_path("nc_abl.json"), &e);
    TU_CHECK(rc == 0, "%s", e.msg);
    if (rc == 0) {
        INTEQ(c.no_corrupted, 1);
        INTEQ(c.n_items, 2);
        ps_config_free(&c);
    }
    put_tmp("nc_sw.json", "{\"model\": \"/m\", \"dataset\": {\"path\": \"nc.csv\"}, \"experiments\": "
                            "[{\"name\": \"z\", \"kind\": \"ablation\", \"components\": [\"h0.1\"], \"with\": \"zero\"}, "
                            "{\"name\": \"s\", \"site\": \"resid_pre\"}]}");
    e = (ps_error){0};
    rc = ps_config_load(&c, tmp_path("nc_sw.json"), &e);
    TU_CHECK(rc == -1 && e.code == 2, "a sweep over a dataset without corrupted prompts must fail");
    snprintf(want, sizeof want, "%s: experiments[1]: \"s\" (kind patch_sweep) runs the corrupted prompts, but the records of "
             "%s have no field 'corrupted'; name it in dataset.fields.corrupted, or give dataset.corrupted.path",
             tmp_path("nc_sw.json"), tmp_path("nc.csv"));
    STREQ(e.msg, want);
    // Naming the field makes it required, as before.
    put_tmp("nc_named.json", "{\"model\": \"/m\", \"dataset\": {\"path\": \"nc.csv\", \"fields\": {\"corrupted\": \"corrupted\"}}}");
    e = (ps_error){0};
    rc = ps_config_load(&c, tmp_path("nc_named.json"), &e);
    TU_CHECK(rc == -1 && e.code == 2 && strstr(e.msg, "no column 'corrupted'") != NULL, "a named corrupted field must be required: %s", e.msg);
}

int main(void) {
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/ps_test_config.XXXXXX", base && base[0] ? base : "/tmp");
    if (!mkdtemp(tmpdir)) { perror("mkdtemp"); return 1; }

    test_names();
    test_full();
    test_minimal_defaults();
    test_jsonl_corrupted();
    test_csv();
    test_json_items();
    test_examples();
    test_bad();
    test_analyses();
    test_data_files();
    test_path_patch();
    test_attribution_kind();
    test_no_corrupted();
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);

    if (tu_failures) return tu_done("config");   // a skip below must not hide these
    test_seqcont();   // last: exits 77 when the shared data is missing outside CI
    return tu_done("config");
}
