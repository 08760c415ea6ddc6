// A second producer through the results side's one code path: a synthetic table of kind "test_synthetic"
// (axes "token" and "step" with string labels, values a deterministic function of prompt and cell) is
// written by the store, journaled chunk by chunk by a process that is SIGKILLed mid-way and resumed from
// the journal, run as 2 shards and merged; each file equals the uninterrupted one exactly. inspect names
// its kind and axes, plot.py draws it, and a table that is not per prompt is refused by the shard paths.
#include "ps_journal.h"
#include "ps_producer.h"
#include "ps_store.h"
#include "testutil.h"

#include <hdf5.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define NP 10      // prompts
#define T 4        // tokens per prompt
#define CHUNK 2    // prompts per journal record
#define N_TOKEN 3
#define N_STEP 4

static const char *const token_label[N_TOKEN] = {"alpha", "beta", "gamma"};
static const char *const step_label[N_STEP] = {"s0", "s1", "s2", "s3"};
static const int64_t token_value[N_TOKEN] = {10, 20, 30};

// The producer: value(p, cell), NaN for one cell of every third prompt (a cell that does not apply).
static float synth_value(int64_t p, int64_t cell) {
    if (p % 3 == 0 && cell == 5) return NAN;
    return (float)(sin(0.7 * (double)p + 0.3 * (double)cell) + 0.01 * (double)(p * 100 + cell));
}

static int synth_init(ps_table *t, ps_baseline *b, int per_prompt, const char *name, ps_error *e) {
    ps_axis axes[2] = {
        {.name = "token", .len = N_TOKEN, .value = (int64_t *)token_value, .label = (char **)token_label},
        {.name = "step", .len = N_STEP, .value = NULL, .label = (char **)step_label},
    };
    if (b && ps_baseline_init(b, NP, e) != 0) return -1;
    if (ps_table_init(t, name, "test_synthetic", per_prompt, NP, 2, axes, 0, e) != 0) return -1;
    return ps_table_attr_str(t, "units", "synthetic", e) || ps_table_attr_i64(t, "seed", 7, e) ? -1 : 0;
}

// Computes these prompts' rows (and baselines), counting one "patch" per cell as a producer would.
static void synth_compute(ps_table *t, ps_baseline *b, const int64_t *prompts, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        const int64_t p = prompts[i];
        float *col[PS_BASELINE_COLS];
        ps_baseline_columns(b, col);
        for (int k = 0; k < PS_BASELINE_COLS; k++) col[k][p] = (float)(k + 1) * 0.5f + (float)p;
        for (int64_t c = 0; c < t->n_cells; c++) {
            t->values[p * t->n_cells + c] = synth_value(p, c);
            if (isnan(t->values[p * t->n_cells + c])) t->patches_skipped++;
            else t->patches_run++;
        }
        t->flops += 1000.0 * (double)t->n_cells;
    }
}

// Writes a results file holding tables[0..n_tables) of the prompts of shard k/n (n = 1: the whole run).
static int write_file(const char *path, int k, int n, ps_table *tables, int n_tables, ps_baseline *b, ps_error *e) {
    static int32_t ids[NP * T];
    static const char *tok[NP * T];
    static int64_t len[NP], plen[NP];
    static const char *const words[T] = {"<bos>", " one", " two", " three"};
    uint8_t in_run[NP];
    for (int i = 0; i < NP; i++) {
        len[i] = T;
        plen[i] = T - 1;
        in_run[i] = (uint8_t)(i % n == k);
        for (int t = 0; t < T; t++) {
            ids[i * T + t] = 100 * i + t;
            tok[i * T + t] = words[t];
        }
    }
    char ident[65], run_id[65], buf[128];
    ps_sha256_hex("test_synthetic run", 18, run_id);
    snprintf(buf, sizeof buf, "%s\nshard %d/%d", run_id, k, n);
    ps_sha256_hex(buf, strlen(buf), ident);
    ps_run_info ri = {.config_text = "{}", .config_path = "synthetic.json", .version = PS_VERSION, .backend = "cpu",
                      .precision = "fp32", .metric = "logit_diff", .bos_id = -1, .identity = ident,
                      .run_identity = run_id, .shard_index = k, .shard_count = n};
    ps_prompts_info pi = {.n_prompts = NP, .T_max = T, .length = len, .prompt_length = plen, .clean_ids = ids,
                          .corrupted_ids = ids, .clean_str = tok, .corrupted_str = tok, .in_run = in_run};
    for (int i = 0; i < n_tables; i++) ps_table_finish(&tables[i], b->clean, b->corrupted);
    ps_store *s = NULL;
    if (ps_store_open(&s, path, e) != 0) return -1;
    int rc = ps_store_write_run(s, &ri, e);
    if (rc == 0) rc = ps_store_write_prompts(s, &pi, e);
    if (rc == 0) rc = ps_store_write_baseline(s, b, e);
    for (int i = 0; rc == 0 && i < n_tables; i++) rc = ps_store_write_table(s, &tables[i], e);
    ps_error ce = {0};
    if (ps_store_close(s, rc == 0, rc == 0 ? e : &ce) != 0) rc = -1;
    return rc;
}

static float *read_all(hid_t f, const char *name, int64_t *n) {
    hid_t d = H5Dopen2(f, name, H5P_DEFAULT);
    if (d < 0) return NULL;
    hid_t sp = H5Dget_space(d);
    *n = (int64_t)H5Sget_simple_extent_npoints(sp);
    H5Sclose(sp);
    float *x = malloc((size_t)(*n ? *n : 1) * sizeof *x);
    if (x && H5Dread(d, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, x) < 0) { free(x); x = NULL; }
    H5Dclose(d);
    return x;
}

static int64_t attr_i(hid_t f, const char *obj, const char *name) {
    int64_t v = -1;
    hid_t a = H5Aopen_by_name(f, obj, name, H5P_DEFAULT, H5P_DEFAULT);
    if (a >= 0) {
        H5Aread(a, H5T_NATIVE_INT64, &v);
        H5Aclose(a);
    }
    return v;
}

// The datasets and counters a single run's file holds, compared exactly (NaN where NaN).
static void same_file(const char *what, const char *got_path, const char *want_path) {
    static const char *const dsets[] = {"results/synth/values", "results/synth/mean", "baseline/clean_metric",
                                        "baseline/corrupted_wrong_logit"};
    hid_t a = H5Fopen(got_path, H5F_ACC_RDONLY, H5P_DEFAULT), b = H5Fopen(want_path, H5F_ACC_RDONLY, H5P_DEFAULT);
    TU_CHECK(a >= 0 && b >= 0, "%s: cannot open %s or %s", what, got_path, want_path);
    if (a < 0 || b < 0) return;
    for (size_t i = 0; i < sizeof dsets / sizeof dsets[0]; i++) {
        int64_t n = 0, m = 0;
        float *x = read_all(a, dsets[i], &n), *y = read_all(b, dsets[i], &m);
        char nm[256];
        snprintf(nm, sizeof nm, "%s /%s", what, dsets[i]);
        TU_CHECK(x && y && n == m && n > 0, "%s: missing or of another size (%lld vs %lld)", nm, (long long)n, (long long)m);
        if (x && y && n == m) tu_close(nm, x, y, n, 0, 0);
        free(x);
        free(y);
    }
    const char *counters[] = {"patches_run", "patches_skipped"};
    for (int c = 0; c < 2; c++) {
        int64_t x = attr_i(a, "results/synth", counters[c]), y = attr_i(b, "results/synth", counters[c]);
        TU_CHECK(x == y && x >= 0, "%s: %s %lld, want %lld", what, counters[c], (long long)x, (long long)y);
    }
    H5Fclose(a);
    H5Fclose(b);
}

// The writer process: journals chunk after chunk, telling the parent after each and waiting for its go-ahead;
// the parent SIGKILLs it after the second chunk, so exactly 2 chunks are in the journal.
static void journal_child(const char *jpath, const char ident[65], int tell, int go) {
    ps_error e = {0};
    ps_table t, restored;
    ps_baseline b, rb;
    uint8_t done[NP] = {0};
    int64_t n_done = 0;
    ps_journal *j = NULL;
    if (synth_init(&t, &b, 1, "synth", &e) || synth_init(&restored, &rb, 1, "synth", &e) ||
        ps_journal_open(&j, jpath, ident, 1, &rb, &restored, 1, done, &n_done, &e))
        _exit(3);
    for (int64_t c0 = 0; c0 < NP; c0 += CHUNK) {
        int64_t prompts[CHUNK] = {c0, c0 + 1};
        synth_compute(&t, &b, prompts, CHUNK);
        if (ps_journal_append(j, prompts, CHUNK, &b, &t, &e) || ps_journal_sync(j, &e)) _exit(4);
        char x = 'c';
        if (write(tell, &x, 1) != 1 || read(go, &x, 1) != 1) _exit(5);
    }
    _exit(0);
}

// The kinds a config accepts (src/inputs/config.c) and the producers registered (src/engine/producer.c) are
// two lists: every accepted kind must have a producer, and every producer a user may not name must be one
// the config makes itself (derived), else a kind would parse and then fail at run time, or never be reachable.
static void test_kind_lists(void) {
    size_t n_cfg = 0, n_prod = 0;
    for (const char *k; (k = ps_config_kind_name(n_cfg)); n_cfg++) {
        const ps_producer *pr = ps_producer_for(k);
        TU_CHECK(pr != NULL, "config kind \"%s\" has no producer", k);
        TU_CHECK(!pr || !pr->derived, "config kind \"%s\" is a derived producer", k);
    }
    for (const ps_producer *pr; (pr = ps_producer_at(n_prod)); n_prod++) {
        int named = 0;
        for (size_t i = 0; i < n_cfg; i++) named |= !strcmp(ps_config_kind_name(i), pr->kind);
        TU_CHECK(named != pr->derived, "producer \"%s\": %s", pr->kind,
                 pr->derived ? "derived, yet a config may name it" : "not derived, yet no config may name it");
        TU_CHECK(pr->per_prompt ? pr->chunk != NULL : pr->once != NULL, "producer \"%s\" lacks its compute step", pr->kind);
    }
    printf("kinds: %zu a config may name, %zu producers\n", n_cfg, n_prod);
    TU_CHECK(n_cfg >= 12 && n_prod > n_cfg, "kind lists too short: %zu, %zu", n_cfg, n_prod);
}

int main(void) {
    test_kind_lists();
    H5open();
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char dir[] = "/tmp/ps_test_table_XXXXXX";
    if (!mkdtemp(dir)) { perror("mkdtemp"); return 1; }
    char ref[1100], resumed[1100], jpath[1100], shard[2][1100], merged[1100];
    snprintf(ref, sizeof ref, "%s/ref.h5", dir);
    snprintf(resumed, sizeof resumed, "%s/resumed.h5", dir);
    snprintf(jpath, sizeof jpath, "%s/resumed.h5.journal", dir);
    snprintf(merged, sizeof merged, "%s/merged.h5", dir);
    for (int k = 0; k < 2; k++) snprintf(shard[k], sizeof shard[k], "%s/shard%d.h5", dir, k);
    int64_t all[NP];
    for (int i = 0; i < NP; i++) all[i] = i;
    ps_error e = {0};

    // 1. The uninterrupted, unsharded run.
    ps_table t;
    ps_baseline b;
    int rc = synth_init(&t, &b, 1, "synth", &e);
    if (rc == 0) {
        synth_compute(&t, &b, all, NP);
        rc = write_file(ref, 0, 1, &t, 1, &b, &e);
    }
    TU_CHECK(rc == 0, "reference file: %s", e.msg);
    printf("reference: %lld cells x %d prompts, %lld run, %lld skipped\n", (long long)t.n_cells, NP,
           (long long)t.patches_run, (long long)t.patches_skipped);
    ps_table_free(&t);
    ps_baseline_free(&b);

    // 2. Journaled chunk by chunk, the writer SIGKILLed after 2 chunks, resumed from the journal.
    char ident[65];
    ps_sha256_hex("test_synthetic resumed", 22, ident);
    int tell[2], go[2];
    if (pipe(tell) != 0 || pipe(go) != 0) { perror("pipe"); return 1; }
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        close(tell[0]);
        close(go[1]);
        journal_child(jpath, ident, tell[1], go[0]);
    }
    close(tell[1]);
    close(go[0]);
    char x;
    int chunks = 0;
    while (chunks < 2 && read(tell[0], &x, 1) == 1)
        if (++chunks < 2 && write(go[1], &x, 1) != 1) break; // go on to the next chunk
    kill(pid, SIGKILL);
    int wst = 0;
    waitpid(pid, &wst, 0);
    close(tell[0]);
    close(go[1]);
    TU_CHECK(chunks == 2 && WIFSIGNALED(wst) && WTERMSIG(wst) == SIGKILL, "writer: %d chunks, status %d", chunks, wst);

    ps_table run, restored;
    ps_baseline rb, restored_b;
    uint8_t done[NP] = {0};
    int64_t n_done = 0;
    ps_journal *j = NULL;
    rc = synth_init(&run, &rb, 1, "synth", &e) || synth_init(&restored, &restored_b, 1, "synth", &e) ||
         ps_journal_open(&j, jpath, ident, 0, &restored_b, &restored, 1, done, &n_done, &e);
    TU_CHECK(rc == 0, "resume: %s", e.msg);
    printf("killed after %d chunks; the journal restores %lld of %d prompts\n", chunks, (long long)n_done, NP);
    TU_CHECK(n_done == 2 * CHUNK, "journal restored %lld prompts, want %d", (long long)n_done, 2 * CHUNK);
    // Another table shape is another run: the journal refuses it (exit 2).
    {
        ps_table other;
        ps_baseline ob;
        uint8_t od[NP] = {0};
        int64_t on = 0;
        ps_journal *oj = NULL;
        ps_error oe = {0};
        int orc = synth_init(&other, &ob, 1, "synth_other", &oe) ||
                  ps_journal_open(&oj, jpath, ident, 0, &ob, &other, 1, od, &on, &oe);
        TU_CHECK(orc != 0 && oe.code == PS_EXIT_BADINPUT && strstr(oe.msg, "different run"),
                 "journal of another table shape: code %d: %s", oe.code, oe.msg);
        ps_journal_close(oj);
        ps_table_free(&other);
        ps_baseline_free(&ob);
    }
    for (int64_t c0 = 0; rc == 0 && c0 < NP; c0 += CHUNK) {
        int64_t prompts[CHUNK], n = 0;
        for (int64_t p = c0; p < c0 + CHUNK; p++)
            if (!done[p]) prompts[n++] = p;
        if (n == 0) continue;
        synth_compute(&run, &rb, prompts, n);
        rc = ps_journal_append(j, prompts, n, &rb, &run, &e);
    }
    if (rc == 0) rc = ps_journal_sync(j, &e);
    ps_journal_close(j);
    // What the journal held joins what this run computed, as cmd_run does.
    float *to[PS_BASELINE_COLS], *from[PS_BASELINE_COLS];
    ps_baseline_columns(&rb, to);
    ps_baseline_columns(&restored_b, from);
    for (int p = 0; rc == 0 && p < NP; p++) {
        if (!done[p]) continue;
        for (int k = 0; k < PS_BASELINE_COLS; k++) to[k][p] = from[k][p];
        memcpy(run.values + p * run.n_cells, restored.values + p * run.n_cells, (size_t)run.n_cells * sizeof(float));
    }
    ps_table_add_counters(&run, &restored);
    if (rc == 0) rc = write_file(resumed, 0, 1, &run, 1, &rb, &e);
    TU_CHECK(rc == 0, "resumed run: %s", e.msg);
    if (rc == 0) same_file("killed + resumed", resumed, ref);
    ps_table_free(&run);
    ps_table_free(&restored);
    ps_baseline_free(&rb);
    ps_baseline_free(&restored_b);

    // 3. Two shards, merged.
    for (int k = 0; k < 2; k++) {
        ps_table st;
        ps_baseline sb;
        int64_t mine[NP], n = 0;
        for (int i = 0; i < NP; i++)
            if (i % 2 == k) mine[n++] = i;
        rc = synth_init(&st, &sb, 1, "synth", &e);
        if (rc == 0) {
            synth_compute(&st, &sb, mine, n);
            rc = write_file(shard[k], k, 2, &st, 1, &sb, &e);
        }
        TU_CHECK(rc == 0, "shard %d: %s", k, e.msg);
        ps_table_free(&st);
        ps_baseline_free(&sb);
    }
    const char *shards[2] = {shard[1], shard[0]};
    rc = ps_store_merge(merged, shards, 2, &e);
    TU_CHECK(rc == 0, "merge: %s", e.msg);
    if (rc == 0) same_file("2 shards merged", merged, ref);

    // 4. inspect (through the binary, as a user runs it) names the kind, the axes and their labels.
    const char *bin = getenv("PS_BIN");
    char cmd[8192], path[1200];
    if (bin) {
        snprintf(path, sizeof path, "%s/inspect.txt", dir);
        snprintf(cmd, sizeof cmd, "'%s' inspect '%s' > '%s' 2>&1", bin, merged, path);
        int st = tu_sh_status(cmd);
        char *out = ps_read_file(path, NULL, NULL);
        TU_CHECK(st == 0 && out, "inspect: exit %d", st);
        if (out) {
            const char *line = strstr(out, "  synth:");
            printf("inspect: %.*s\n", line ? (int)(strchr(line, '\n') - line) : 0, line ? line : "");
            TU_CHECK(strstr(out, "synth: test_synthetic (seed 7, units synthetic)"), "inspect: kind and attributes");
            TU_CHECK(strstr(out, "shape: prompt 10 x token 3 x step 4"), "inspect: axes");
            TU_CHECK(strstr(out, "token 20 'beta' step 2 's2':"), "inspect: axis values and labels in the top entries");
            if (tu_failures) printf("%s", out);
        }
        free(out);
    } else {
        TU_CHECK(0, "PS_BIN is not set: cannot run inspect");
    }

    // 5. plot.py draws it from its axes (a heatmap token x step with the labels).
    if (tu_have_python("h5py, numpy, matplotlib")) {
        snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s' '%s' -o '%s/plots' > '%s/plot.log' 2>&1",
                 tu_src("experiments/plot.py"), merged, dir, dir);
        int st = tu_sh_status(cmd);
        snprintf(path, sizeof path, "%s/plots/synth.png", dir);
        struct stat sb;
        TU_CHECK(st == 0 && stat(path, &sb) == 0 && sb.st_size > 1000, "plot.py: exit %d, %s (log %s/plot.log)", st, path, dir);
        printf("plot.py: %s (%lld bytes)\n", path, st == 0 && stat(path, &sb) == 0 ? (long long)sb.st_size : -1LL);
    } else {
        printf("SKIP plot.py check: /usr/bin/python3 lacks h5py/numpy/matplotlib\n");
    }

    // 6. A table that is not per prompt: refused by the shard check, and by merge if a shard file had one.
    ps_table once;
    rc = synth_init(&once, NULL, 0, "copy_scores", &e);
    TU_CHECK(rc == 0 && once.n_rows == 1 && !once.mean, "per_prompt = 0 table: %s", e.msg);
    ps_error se = {0};
    rc = ps_tables_check_shardable(&once, 1, &se);
    printf("shard check: %s\n", se.msg);
    TU_CHECK(rc != 0 && se.code == PS_EXIT_BADINPUT && strstr(se.msg, "copy_scores") && strstr(se.msg, "test_synthetic") &&
                 !strchr(se.msg, '\n'),
             "shard check of a per_prompt = 0 table: code %d: %s", se.code, se.msg);
    for (int k = 0; k < 2; k++) {
        ps_table two[2];
        ps_baseline sb;
        rc = synth_init(&two[0], &sb, 1, "synth", &e) || synth_init(&two[1], NULL, 0, "copy_scores", &e);
        for (int64_t c = 0; rc == 0 && c < two[1].n_cells; c++) two[1].values[c] = (float)c;
        if (rc == 0) synth_compute(&two[0], &sb, all + k, 1);
        if (rc == 0) rc = write_file(shard[k], k, 2, two, 2, &sb, &e);
        TU_CHECK(rc == 0, "shard %d with a per_prompt = 0 table: %s", k, e.msg);
        ps_table_free(&two[0]);
        ps_table_free(&two[1]);
        ps_baseline_free(&sb);
    }
    se = (ps_error){0};
    snprintf(path, sizeof path, "%s/refused.h5", dir);
    rc = ps_store_merge(path, shards, 2, &se);
    printf("merge refusal: %s\n", se.msg);
    struct stat sb;
    TU_CHECK(rc != 0 && se.code == PS_EXIT_BADINPUT && strstr(se.msg, "copy_scores") && strstr(se.msg, "not per prompt") &&
                 stat(path, &sb) != 0,
             "merge of shards with a per_prompt = 0 table: code %d: %s", se.code, se.msg);
    ps_table_free(&once);

    // 7. A file of the layout before schema_version (the old binary's): merge refuses it with one line saying how
    // to regenerate it; inspect reads it with a note.
    char old[1100];
    snprintf(old, sizeof old, "%s/old.h5", dir);
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", ref, old);
    hid_t of = tu_sh_status(cmd) == 0 ? H5Fopen(old, H5F_ACC_RDWR, H5P_DEFAULT) : -1;
    TU_CHECK(of >= 0 && H5Adelete_by_name(of, "run", "schema_version", H5P_DEFAULT) >= 0 &&
                 H5Adelete_by_name(of, "run", "checksums", H5P_DEFAULT) >= 0, "cannot make an old-layout file");
    if (of >= 0) H5Fclose(of);
    // The old binary wrote no checksums and no seal (the userblock's sha256 of the file): an edited file with one is corrupt.
    FILE *oldf = fopen(old, "r+b");
    static const char zeros[512];
    TU_CHECK(oldf && fwrite(zeros, 1, sizeof zeros, oldf) == sizeof zeros && fclose(oldf) == 0, "cannot clear the seal of %s", old);
    se = (ps_error){0};
    const char *olds[1] = {old};
    rc = ps_store_merge(merged, olds, 1, &se);
    printf("merge of an old-layout file: %s\n", se.msg);
    TU_CHECK(rc != 0 && se.code == PS_EXIT_BADINPUT && strstr(se.msg, old) && strstr(se.msg, "patchsweep run CONFIG --force"),
             "merge of an old-layout file: code %d: %s", se.code, se.msg);
    if (bin) {
        snprintf(cmd, sizeof cmd, "'%s' inspect '%s' 2>&1 | grep -q 'schema:    1 (the layout before result tables'", bin, old);
        TU_CHECK(tu_sh_status(cmd) == 0, "inspect of an old-layout file: no schema note");
    }

    if (getenv("PS_KEEP_TMP")) printf("kept %s\n", dir);
    else {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    H5close();
    return tu_done("table");
}
