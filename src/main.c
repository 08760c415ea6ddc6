// patchsweep's command line: run an experiment config, tokenize text, inspect a results file, generate text.
// Every failure prints one line and exits 1 (runtime) or 2 (bad input).
#include "ps_backend.h"
#include "ps_config.h"
#include "ps_engine.h"
#include "ps_journal.h"
#include "ps_model.h"
#include "ps_store.h"
#include "ps_tokenizer.h"

#include <cblas.h>
#include <math.h>
#include <signal.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void usage(FILE *f) {
    fprintf(f,
            "patchsweep %s: batch activation patching for transformer interpretability\n"
            "\n"
            "usage:\n"
            "  patchsweep run CONFIG.json [-o OUT.h5] [--progress|--quiet] [--dry-run] [--shard I/N] [--force] [--naive]\n"
            "  patchsweep merge OUT.h5 SHARD.h5...\n"
            "  patchsweep tokenize (--model DIR | --tokenizer FILE) [--ids] [--bos] TEXT\n"
            "  patchsweep inspect RESULTS.h5\n"
            "  patchsweep generate --model DIR [--max-new-tokens N] [--no-bos] [PROMPT]\n"
            "  patchsweep bench-gemm [M K N]\n"
            "  patchsweep version\n"
            "\n"
            "run:       runs the config's baseline and sweeps and writes one HDF5 file (default: the config's \"output\").\n"
            "           Finished chunks of prompts are journaled in OUT.h5.journal: after a kill (or SIGINT/SIGTERM),\n"
            "           the same command resumes. An existing OUT.h5 of another config is refused unless --force.\n"
            "           --dry-run prints the plan (patches, rows, FLOPs, memory, estimated time) without running the sweeps.\n"
            "           --shard I/N runs prompts i with i %% N == I; merge combines the N shard files.\n"
            "           --naive runs every patch as a full forward pass (the slow oracle the fast engine is tested against).\n"
            "tokenize:  shows each token's id and string (why \" 5\" and \"5\" differ); --ids prints only the ids.\n"
            "           No BOS is prepended unless --bos (TransformerLens prepends one by default).\n"
            "Exit status: 0 ok, 1 runtime failure, 2 bad input (the message names the file and the field or byte offset).\n",
            PS_VERSION);
}


static int die(const ps_error *e) {
    fprintf(stderr, "patchsweep: %s\n", e->msg[0] ? e->msg : "unknown error");
    return e->code ? e->code : PS_EXIT_RUNTIME;
}

static int bad_usage(const char *msg) {
    fprintf(stderr, "patchsweep: %s (see patchsweep --help)\n", msg);
    return PS_EXIT_BADINPUT;
}


// ---------------------------------------------------------------------------------------------

static int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *tokfile = NULL, *text = NULL;
    int ids_only = 0, bos = 0;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--tokenizer") && i + 1 < argc) tokfile = argv[++i];
        else if (!strcmp(argv[i], "--ids")) ids_only = 1;
        else if (!strcmp(argv[i], "--bos")) bos = 1;
        else if (!strcmp(argv[i], "--")) { if (i + 1 < argc) text = argv[i + 1]; break; }
        else if (argv[i][0] == '-' && argv[i][1] == '-') return bad_usage("tokenize: unknown option");
        else text = argv[i];
    }
    if (!model && !tokfile) return bad_usage("tokenize needs --model DIR or --tokenizer FILE");
    if (!text) return bad_usage("tokenize needs TEXT");
    ps_error e = {0};
    ps_tokenizer *tok = NULL;
    if (ps_tokenizer_load(&tok, tokfile ? tokfile : model, &e) != 0) return die(&e);
    int32_t *ids = NULL;
    int64_t n = 0;
    if (ps_tokenizer_encode(tok, text, &ids, &n, &e) != 0) {
        ps_tokenizer_free(tok);
        return die(&e);
    }
    int32_t b = bos ? ps_tokenizer_bos_id(tok) : -1;
    if (bos && b < 0) fprintf(stderr, "patchsweep: this tokenizer has no BOS token; none prepended\n");
    if (ids_only) {
        int first = 1;
        if (b >= 0) { printf("%d", b); first = 0; }
        for (int64_t i = 0; i < n; i++) printf(first && i == 0 ? "%d" : " %d", ids[i]);
        printf("\n");
    } else {
        int64_t pos = 0;
        printf("%-5s %-7s %s\n", "pos", "id", "token");
        if (b >= 0) {
            char *s = ps_tokenizer_token_text(tok, b);
            printf("%-5lld %-7d \"%s\"  (BOS)\n", (long long)pos++, b, s ? s : "");
            free(s);
        }
        for (int64_t i = 0; i < n; i++) {
            char *s = ps_tokenizer_token_text(tok, ids[i]);
            printf("%-5lld %-7d \"", (long long)pos++, ids[i]);
            for (const char *c = s ? s : ""; *c; c++) {
                if (*c == '\n') fputs("\\n", stdout);
                else if (*c == '\t') fputs("\\t", stdout);
                else if (*c == '"') fputs("\\\"", stdout);
                else putchar(*c);
            }
            printf("\"\n");
            free(s);
        }
        printf("%lld tokens%s\n", (long long)(n + (b >= 0)), b >= 0 ? " (BOS included)" : "");
    }
    free(ids);
    ps_tokenizer_free(tok);
    return 0;
}

// ---------------------------------------------------------------------------------------------

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

// Which part of the run a results file holds (shards), and the identities resume and merge check.
typedef struct {
    int index, count;
    const char *identity, *run_identity;
    const uint8_t *in_run;   // (n_prompts)
} ps_shard_info;

static int write_results(const char *out_path, const ps_config *cfg, const ps_model *m, const ps_tokenizer *tok,
                         const char *tok_sha, const ps_backend *be, int threads, const ps_prompt_set *ps,
                         const ps_run_results *rr, const ps_shard_info *sh, ps_error *e) {
    ps_store *st = NULL;
    if (ps_store_open(&st, out_path, e) != 0) return -1;
    const int64_t n = ps->n, T = ps->T_max;
    ps_run_info ri = {
        .config_text = cfg->text, .config_path = cfg->path, .version = PS_VERSION, .model_dir = m->dir,
        .weights_sha256 = m->weights_sha256, .tokenizer_path = ps_tokenizer_path(tok), .tokenizer_sha256 = tok_sha,
        .backend = be->name, .precision = ps_precision_name(be->precision), .weights_dtype = m->file_dtype,
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

// Set by SIGINT/SIGTERM (what Slurm sends before the time limit): the engine stops at the next batch.
static volatile int stop_requested = 0;
static volatile int stop_signal = 0;
static void on_signal(int sig) {
    stop_requested = 1;
    stop_signal = sig;
}

static int journal_chunk(void *ctx, const int64_t *prompts, int64_t n, const ps_run_results *rr, ps_error *e) {
    return ps_journal_append((ps_journal *)ctx, prompts, n, rr, e);
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

// The run's identity: what must be equal for a journal, an existing output or a shard to belong to it.
static void run_identity(const ps_config *cfg, const ps_model *m, const char *tok_sha, int shard_i, int shard_n,
                         char out[65], char run_id[65]) {
    size_t n = strlen(cfg->text) + 512;
    char *buf = malloc(n);
    snprintf(buf, n, "patchsweep %s\nweights %s\ntokenizer %s\nconfig\n%s", PS_VERSION, m->weights_sha256, tok_sha, cfg->text);
    ps_sha256_hex(buf, strlen(buf), run_id);
    snprintf(buf, n, "%s\nshard %d/%d", run_id, shard_i, shard_n);
    ps_sha256_hex(buf, strlen(buf), out);
    free(buf);
}

static int parse_shard(const char *s, int *i, int *n) {
    char *end;
    long a = strtol(s, &end, 10);
    if (*end != '/') return -1;
    long b = strtol(end + 1, &end, 10);
    if (*end || b < 1 || a < 0 || a >= b) return -1;
    *i = (int)a;
    *n = (int)b;
    return 0;
}

// Sums over the sweeps: FLOPs (baselines included), patches run and patches known without running.
static void run_totals(const ps_run_results *rr, double *flops, int64_t *run, int64_t *skipped) {
    *flops = rr->baseline_flops;
    *run = *skipped = 0;
    for (int64_t s = 0; s < rr->n_sweeps; s++) {
        *flops += rr->sweeps[s].flops;
        *run += rr->sweeps[s].patches_run;
        *skipped += rr->sweeps[s].patches_skipped;
    }
}

static int cmd_run(int argc, char **argv) {
    const char *cfg_path = NULL, *out = NULL;
    int prog = isatty(2), naive = 0, dry = 0, force = 0, shard_i = 0, shard_n = 1;
    int64_t chunk_prompts = 16;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--progress")) prog = 1;
        else if (!strcmp(argv[i], "--quiet")) prog = 0;
        else if (!strcmp(argv[i], "--naive")) naive = 1;
        else if (!strcmp(argv[i], "--dry-run")) dry = 1;
        else if (!strcmp(argv[i], "--force")) force = 1;
        else if (!strcmp(argv[i], "--shard") && i + 1 < argc) {
            if (parse_shard(argv[++i], &shard_i, &shard_n) != 0) return bad_usage("--shard takes I/N with 0 <= I < N");
        } else if (!strcmp(argv[i], "--chunk-prompts") && i + 1 < argc) {
            chunk_prompts = atoll(argv[++i]);
            if (chunk_prompts < 1) return bad_usage("--chunk-prompts takes a positive count");
        } else if (argv[i][0] == '-') return bad_usage("run: unknown option");
        else if (!cfg_path) cfg_path = argv[i];
        else return bad_usage("run takes one CONFIG");
    }
    if (!cfg_path) return bad_usage("run needs CONFIG.json");
    ps_error e = {0};
    ps_config cfg;
    if (ps_config_load(&cfg, cfg_path, &e) != 0) return die(&e);
    if (!out) out = cfg.output;

    ps_model m;
    memset(&m, 0, sizeof m);
    ps_tokenizer *tok = NULL;
    ps_backend be;
    memset(&be, 0, sizeof be);
    ps_prompt_set ps;
    memset(&ps, 0, sizeof ps);
    ps_run_results rr, restored;
    memset(&rr, 0, sizeof rr);
    memset(&restored, 0, sizeof restored);
    ps_journal *jr = NULL;
    uint8_t *done = NULL;
    int64_t *todo = NULL, n_todo = 0, n_done = 0;
    char tok_sha[65] = "", ident[65] = "", run_id[65] = "";
    char *jpath = NULL;
    int rc = 0, interrupted = 0, already = 0;
    struct stat msb;
    if (stat(cfg.model, &msb) != 0 || !S_ISDIR(msb.st_mode))
        rc = ps_fail(&e, PS_EXIT_BADINPUT, "%s: model: \"%s\" is not a directory (a Hugging Face checkpoint: config.json + model.safetensors)",
                     cfg.path, cfg.model);
    if (rc == 0 && ps_tokenizer_load(&tok, cfg.tokenizer ? cfg.tokenizer : cfg.model, &e) != 0) rc = -1;
    if (rc == 0 && ps_sha256_file(ps_tokenizer_path(tok), tok_sha, &e) != 0) rc = -1;
    if (rc == 0 && ps_model_load(&m, cfg.model, &e) != 0) rc = -1;
    // --dry-run of a cuda config where there is no GPU (a login node): the plan does not need one. The CPU
    // computes the baselines and rows are planned as the cuda backend runs them (not narrowed); only the
    // time estimate needs the device.
    char why[256] = "";
    const int cuda_elsewhere = rc == 0 && dry && cfg.backend == PS_BACKEND_CUDA && ps_cuda_device_count(why, sizeof why) <= 0;
    if (cuda_elsewhere) {
        fprintf(stderr, "patchsweep: --dry-run: no GPU here (%s); planning on the CPU for the cuda backend\n", why);
        if (ps_backend_init(&be, PS_BACKEND_CPU, PS_PREC_FP32, cfg.threads, &m, &e) != 0) rc = -1;
        be.caps = 0;
        be.gemm_rate = NULL;
    } else if (rc == 0 && ps_backend_init(&be, cfg.backend, cfg.precision, cfg.threads, &m, &e) != 0) {
        rc = -1;
    }
    if (rc == 0 && ps_prompts_build(&ps, &cfg, tok, &m.cfg, &e) != 0) rc = -1;
    if (rc == 0) {
        run_identity(&cfg, &m, tok_sha, shard_i, shard_n, ident, run_id);
        // An existing complete output: the same run is done already; another run's is not overwritten silently.
        if (!dry && file_exists(out) && !force) {
            char old[65] = "";
            ps_error re = {0};
            if (ps_store_read_identity(out, old, &re) == 0 && !strcmp(old, ident)) {
                fprintf(stderr, "patchsweep: %s is complete for this config, model and version; nothing to do (--force recomputes)\n", out);
                already = 1;
            } else {
                rc = ps_fail(&e, PS_EXIT_BADINPUT, "%s: exists and holds another run (config, model, tokenizer, version or shard differ); use --force to overwrite",
                             out);
            }
        }
    }
    if (rc == 0 && !already) {
        // Which prompts this run owns (its shard), minus those a journal already holds.
        done = calloc((size_t)ps.n, 1);
        todo = malloc((size_t)ps.n * sizeof(int64_t));
        if (!dry) {
            size_t jl = strlen(out) + 16;
            jpath = malloc(jl);
            snprintf(jpath, jl, "%s.journal", out);
            char *dir = ps_dirname(out);
            char cmd_dir[4096];
            snprintf(cmd_dir, sizeof cmd_dir, "%s", dir);
            free(dir);
            for (char *q = cmd_dir + 1; *q; q++) // mkdir -p of the output's directory
                if (*q == '/') { *q = 0; mkdir(cmd_dir, 0755); *q = '/'; }
            mkdir(cmd_dir, 0755);
            if (ps_run_results_init(&restored, &m.cfg, &ps, cfg.experiments, cfg.n_experiments, &e) != 0 ||
                ps_journal_open(&jr, jpath, ident, force, &restored, done, &n_done, &e) != 0)
                rc = -1;
            if (rc == 0 && n_done > 0)
                fprintf(stderr, "patchsweep: resuming: %lld of %lld prompts already done (%s)\n", (long long)n_done,
                        (long long)ps.n, jpath);
        }
        for (int64_t i = 0; i < ps.n; i++)
            if (i % shard_n == shard_i) todo[n_todo++] = i;
    }
    if (rc == 0 && !already) {
        if (prog || dry)
            fprintf(stderr, "patchsweep: %lld prompts (%lld to run%s), %lld experiments, model %s (%lld layers), backend %s\n",
                    (long long)ps.n, (long long)(n_todo - n_done), shard_n > 1 ? " in this shard" : "", (long long)cfg.n_experiments,
                    cfg.model, (long long)m.cfg.n_layers, be.device);
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
        ps_engine_opts o = {.naive = naive, .batch_rows = cfg.batch_rows, .progress = prog && !dry, .todo = todo,
                            .n_todo = n_todo, .skip = done, .dry_run = dry, .stop = &stop_requested, .chunk_prompts = chunk_prompts,
                            .on_chunk = journal_chunk, .chunk_ctx = jr};
        if (ps_engine_run(&m, &be, &ps, cfg.experiments, cfg.n_experiments, cfg.metric, &o, &rr, &e) != 0) {
            rc = -1;
            interrupted = stop_requested;
        } else if (ps_journal_sync(jr, &e) != 0) { // the last chunk's record, written while nothing else ran
            rc = -1;
        }
        signal(SIGINT, SIG_DFL);
        signal(SIGTERM, SIG_DFL);
    }
    if (rc == 0 && dry) {
        double fl;
        int64_t run, skipped;
        run_totals(&rr, &fl, &run, &skipped);
        fl -= rr.baseline_flops; // the plan prints the sweeps and the baselines apart
        // The rate at this model's own MLP shape: small models run far below a big GEMM's rate.
        double rate = be.gemm_rate ? be.gemm_rate(&be, 256, m.cfg.d_model, m.cfg.d_mlp, 0.3) : 0;
        // Weights as the backend holds them: fp32 on the CPU, the configured precision on a GPU.
        const ps_precision prec = cuda_elsewhere ? cfg.precision : be.precision;
        const size_t weights = m.n_floats * (prec == PS_PREC_FP32 ? sizeof(float) : 2);
        if (cuda_elsewhere) printf("plan for %s (cuda backend; no GPU here: planned on the CPU)\n", cfg_path);
        else printf("plan for %s (%s backend, %s)\n", cfg_path, be.name, be.device);
        printf("  prompts            %lld (%lld in this run)\n", (long long)ps.n, (long long)n_todo);
        for (int64_t s = 0; s < rr.n_sweeps; s++) {
            const ps_sweep *sw = &rr.sweeps[s];
            printf("  %-18s %s by %s, %s: %lld cells x %lld prompts: %lld rows, %lld known without running, %.3f GFLOP\n",
                   sw->ex->name, ps_site_name(sw->ex->site), ps_layout_name(sw->ex->layout), ps_direction_name(sw->ex->direction),
                   (long long)sw->n_cells, (long long)n_todo, (long long)sw->patches_run, (long long)sw->patches_skipped,
                   sw->flops * 1e-9);
        }
        printf("  patches            %lld (%lld forward rows, %lld known without running)\n", (long long)(run + skipped),
               (long long)run, (long long)skipped);
        printf("  compute            %.3f GFLOP for the sweeps + %.3f GFLOP for the baselines\n", fl * 1e-9, rr.baseline_flops * 1e-9);
        printf("  memory             %.1f MiB weights (%s) + %.1f MiB activation caches at once\n", (double)weights / 1048576.0,
               ps_precision_name(prec),
               (double)rr.peak_cache_bytes / 1048576.0);
        if (rate > 0) {
            printf("  estimated time     %.1f s at this machine's measured %.1f GFLOP/s (%s GEMM; attention and overheads not counted)\n",
                   (fl + rr.baseline_flops) * 1e-9 / rate, rate, ps_precision_name(prec));
            printf("                     (a lower bound: the sweeps run at most this GEMM rate; `run` prints the real one)\n");
        } else {
            printf("  estimated time     unknown (%s)\n", cuda_elsewhere ? "no GPU here to measure" : "the backend's GEMM rate could not be measured");
        }
    } else if (rc == 0 && !already) {
        // Results of earlier (interrupted) runs of this command come from the journal.
        for (int64_t i = 0; i < ps.n; i++) {
            if (!done[i]) continue;
            ps_baseline *a = &rr.base, *b = &restored.base;
            a->clean[i] = b->clean[i]; a->corrupted[i] = b->corrupted[i];
            a->clean_answer_logit[i] = b->clean_answer_logit[i]; a->clean_wrong_logit[i] = b->clean_wrong_logit[i];
            a->corrupted_answer_logit[i] = b->corrupted_answer_logit[i]; a->corrupted_wrong_logit[i] = b->corrupted_wrong_logit[i];
            for (int64_t s = 0; s < rr.n_sweeps; s++)
                memcpy(rr.sweeps[s].values + i * rr.sweeps[s].n_cells, restored.sweeps[s].values + i * rr.sweeps[s].n_cells,
                       (size_t)rr.sweeps[s].n_cells * sizeof(float));
        }
        for (int64_t s = 0; s < rr.n_sweeps; s++) {
            rr.sweeps[s].patches_run += restored.sweeps[s].patches_run;
            rr.sweeps[s].patches_skipped += restored.sweeps[s].patches_skipped;
            rr.sweeps[s].flops += restored.sweeps[s].flops;
        }
        ps_engine_finish(&rr);
        int threads = 1;
        const char *paren = strchr(be.device, '(');
        if (paren) threads = atoi(paren + 1);
        uint8_t *in_run = calloc((size_t)ps.n, 1);
        for (int64_t i = 0; i < ps.n; i++) in_run[i] = (uint8_t)(i % shard_n == shard_i);
        ps_shard_info sh = {.index = shard_i, .count = shard_n, .identity = ident, .run_identity = run_id, .in_run = in_run};
        if (write_results(out, &cfg, &m, tok, tok_sha, &be, threads, &ps, &rr, &sh, &e) != 0) rc = -1;
        free(in_run);
        if (rc == 0 && jpath) unlink(jpath); // everything is in the results file now
    }
    if (rc == 0 && !dry && !already) {
        double mc = 0, mx = 0, fl;
        int64_t cnt = 0, run, skipped;
        for (int64_t i = 0; i < ps.n; i++)
            if (!isnan(rr.base.clean[i])) { mc += rr.base.clean[i]; mx += rr.base.corrupted[i]; cnt++; }
        run_totals(&rr, &fl, &run, &skipped);
        fprintf(stderr, "patchsweep: wrote %s (%lld prompts; mean %s clean %.4f, corrupted %.4f)\n", out, (long long)cnt,
                ps_metric_name(cfg.metric), cnt ? mc / (double)cnt : NAN, cnt ? mx / (double)cnt : NAN);
        fprintf(stderr, "patchsweep: compute %.3f s, %.3f GFLOP (%.2f GFLOP/s), %lld patches run, %lld known without running\n",
                rr.seconds, fl * 1e-9, rr.seconds > 0 ? fl * 1e-9 / rr.seconds : 0.0, (long long)run, (long long)skipped);
    }
    ps_journal_close(jr);
    ps_run_results_free(&rr);
    ps_run_results_free(&restored);
    ps_prompt_set_free(&ps);
    ps_backend_free(&be);
    ps_model_free(&m);
    ps_tokenizer_free(tok);
    ps_config_free(&cfg);
    free(done);
    free(todo);
    if (interrupted) {
        fprintf(stderr, "patchsweep: interrupted by signal %d; finished chunks are kept in %s; run the same command again to resume\n",
                stop_signal, jpath ? jpath : "(none)");
        free(jpath);
        return 128 + stop_signal;
    }
    free(jpath);
    if (rc != 0 && !strncmp(e.msg, "experiments[", 12)) { // the engine checks indices against the model: name the file
        char orig[PS_ERR_MAX];
        memcpy(orig, e.msg, sizeof orig);
        snprintf(e.msg, sizeof e.msg, "%s: %.1900s", cfg_path, orig);
    }
    return rc == 0 ? 0 : die(&e);
}

// ---------------------------------------------------------------------------------------------

static int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *prompt = "";
    int64_t max_new = 64;
    int bos = 1;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--max-new-tokens") && i + 1 < argc) max_new = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--no-bos")) bos = 0;
        else if (argv[i][0] == '-' && argv[i][1] == '-') return bad_usage("generate: unknown option");
        else prompt = argv[i];
    }
    if (!model) return bad_usage("generate needs --model DIR");
    ps_error e = {0};
    ps_tokenizer *tok = NULL;
    ps_model m;
    memset(&m, 0, sizeof m);
    if (ps_tokenizer_load(&tok, model, &e) != 0) return die(&e);
    if (ps_model_load(&m, model, &e) != 0) { ps_tokenizer_free(tok); return die(&e); }
    int32_t *ids = NULL;
    int64_t n = 0;
    if (ps_tokenizer_encode(tok, prompt, &ids, &n, &e) != 0) { ps_model_free(&m); ps_tokenizer_free(tok); return die(&e); }
    const int64_t cap = m.cfg.n_ctx;
    int32_t *seq = malloc((size_t)cap * sizeof(int32_t));
    int64_t T = 0;
    int32_t b = bos ? ps_tokenizer_bos_id(tok) : -1;
    if (b < 0 && bos) b = (int32_t)m.cfg.bos_id;
    if (b >= 0) seq[T++] = b;
    for (int64_t i = 0; i < n && T < cap; i++) seq[T++] = ids[i];
    free(ids);
    if (T == 0) { free(seq); ps_model_free(&m); ps_tokenizer_free(tok); return bad_usage("generate: empty prompt and no BOS"); }
    float *logits = malloc((size_t)m.cfg.d_vocab * sizeof(float));
    int64_t start = T;
    int rc = 0;
    // Greedy decoding, one full forward per token: a checking tool, not a fast path.
    for (int64_t step = 0; step < max_new && T < cap; step++) {
        int64_t last = T - 1;
        ps_row row = {.tokens = seq, .T = T, .out_pos = &last, .n_out = 1, .logits = logits};
        if (ps_cpu_forward(&m, &row, 1, &e) != 0) { rc = -1; break; }
        int32_t best = 0;
        for (int64_t j = 1; j < m.cfg.d_vocab; j++)
            if (logits[j] > logits[best]) best = (int32_t)j;
        if (best == m.cfg.eos_id && best != b) break;
        if (best == b && b >= 0 && m.cfg.arch == PS_ARCH_LLAMA) break;
        seq[T++] = best;
    }
    if (rc == 0) {
        char *all = ps_tokenizer_decode(tok, seq + (b >= 0 ? 1 : 0), T - (b >= 0 ? 1 : 0));
        printf("%s\n", all ? all : "");
        free(all);
        fprintf(stderr, "patchsweep: %lld tokens generated\n", (long long)(T - start));
    }
    free(logits);
    free(seq);
    ps_model_free(&m);
    ps_tokenizer_free(tok);
    return rc == 0 ? 0 : die(&e);
}

// The machine's fp32 GEMM rate through the same OpenBLAS the CPU backend uses: the floor of benchmarks.
static int cmd_bench_gemm(int argc, char **argv) {
    int64_t M = argc > 0 ? atoll(argv[0]) : 512, K = argc > 1 ? atoll(argv[1]) : 768, N = argc > 2 ? atoll(argv[2]) : 3072;
    if (M <= 0 || K <= 0 || N <= 0) return bad_usage("bench-gemm M K N: positive sizes");
    // The better of the two ways to thread it is the machine's rate (the benchmarks' floor).
    const double own = ps_cpu_gemm_rate(M, K, N, 1.0, 0), blocks = ps_cpu_gemm_rate(M, K, N, 1.0, 1);
    printf("gemm %lldx%lldx%lld: %.2f GFLOP/s (OpenBLAS's threads %.2f, the CPU backend's row blocks %.2f)\n", (long long)M,
           (long long)K, (long long)N, own > blocks ? own : blocks, own, blocks);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? PS_EXIT_BADINPUT : 0;
    }
    const char *cmd = argv[1];
    if (!strcmp(cmd, "run")) return cmd_run(argc - 2, argv + 2);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "merge")) {
        if (argc < 4) return bad_usage("merge takes OUT.h5 SHARD.h5...");
        ps_error e = {0};
        if (ps_store_merge(argv[2], (const char *const *)(argv + 3), argc - 3, &e) != 0) return die(&e);
        fprintf(stderr, "patchsweep: merged %d shards into %s\n", argc - 3, argv[2]);
        return 0;
    }
    if (!strcmp(cmd, "inspect")) {
        if (argc != 3) return bad_usage("inspect takes one RESULTS.h5");
        ps_error e = {0};
        return ps_store_inspect(argv[2], &e) == 0 ? 0 : die(&e);
    }
    if (!strcmp(cmd, "bench-gemm")) return cmd_bench_gemm(argc - 2, argv + 2);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("patchsweep %s\n", PS_VERSION);
        return 0;
    }
    fprintf(stderr, "patchsweep: unknown command '%s' (see patchsweep --help)\n", cmd);
    return PS_EXIT_BADINPUT;
}
