// `patchsweep run CONFIG`: load, plan, resume from the journal, run the engine, write the results file.
// Signals stop it at the next batch; shards run a slice of the prompts.
#include "cli.h"
#include "guard.h"

#include "ps_backend.h"
#include "ps_blas.h"
#include "ps_config.h"
#include "ps_engine.h"
#include "ps_identity.h"
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

// Set by SIGINT/SIGTERM (what Slurm sends before the time limit): the engine stops at the next batch.
static volatile int stop_requested = 0;
static volatile int stop_signal = 0;
static void on_signal(int sig) {
    stop_requested = 1;
    stop_signal = sig;
}

// Each finished chunk goes to the journal, then to the progress lines (patches: this run's, never the resumed).
typedef struct {
    ps_journal *jr;
    ps_cli_progress prog;
} chunk_ctx;

static int journal_chunk(void *ctx, const int64_t *prompts, int64_t n, const ps_run_results *rr, ps_error *e) {
    chunk_ctx *c = ctx;
    if (ps_journal_append(c->jr, prompts, n, &rr->base, rr->tables, e) != 0) return -1;
    int64_t patches = 0;
    for (int64_t s = 0; s < rr->n_tables; s++) patches += rr->tables[s].patches_run;
    ps_cli_progress_chunk(&c->prog, n, patches);
    return 0;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0;
}

// Path of a file beside the output (OUT + suffix), malloc'd; NULL: out of memory.
static char *beside(const char *out, const char *suffix) {
    size_t n = strlen(out) + strlen(suffix) + 1;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s%s", out, suffix);
    return p;
}

// A refusal naming what changed since what (the journal or the results file) was written, when the hash cache
// recorded the parts of that run; else the generic one-line refusal.
static int refuse_changed(const ps_hash_cache *c, const char *old_ident, const ps_identity *id, const char *what,
                          const char *generic, ps_error *e) {
    char why[1536];
    if (ps_hash_cache_explain(c, old_ident, id, why, sizeof why) == 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s since %s was written; --force recomputes", why, what);
    return ps_fail(e, PS_EXIT_BADINPUT, "%s", generic);
}

// Nothing meaningful (every value NaN, or clean == corrupted everywhere) fails the run instead of writing a
// file of NaNs that looks complete. Reads the results as plain per-prompt arrays.
static int check_meaningful(const ps_run_results *rr, const uint8_t *in_run, const ps_config *cfg, ps_error *e) {
    const float **values = calloc((size_t)rr->n_tables + 1, sizeof *values);
    int64_t *n_values = calloc((size_t)rr->n_tables + 1, sizeof *n_values), n = 0;
    if (!values || !n_values) { free(values); free(n_values); return ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); }
    for (int64_t s = 0; s < rr->n_tables; s++) {
        if (!rr->tables[s].per_prompt) continue;
        values[n] = rr->tables[s].values;
        n_values[n++] = rr->tables[s].n_cells;
    }
    int rc = ps_cli_check_meaningful(rr->base.clean, cfg->no_corrupted ? NULL : rr->base.corrupted, rr->base.n, in_run, values, n_values, n,
                                     cfg->path, cfg->model, e);
    free(values);
    free(n_values);
    return rc;
}

// Sums over the tables: FLOPs (baselines included), patches run and patches known without running.
static void run_totals(const ps_run_results *rr, double *flops, int64_t *run, int64_t *skipped) {
    *flops = rr->baseline_flops;
    *run = *skipped = 0;
    for (int64_t s = 0; s < rr->n_tables; s++) {
        *flops += rr->tables[s].flops;
        *run += rr->tables[s].patches_run;
        *skipped += rr->tables[s].patches_skipped;
    }
}

// Results of earlier (interrupted) runs of this command, from the journal: the prompts in done, every
// per-prompt table's rows and the counters.
static void restore_done(ps_run_results *rr, const ps_run_results *restored, const uint8_t *done) {
    float *to[PS_BASELINE_COLS], *from[PS_BASELINE_COLS];
    ps_baseline_columns(&rr->base, to);
    ps_baseline_columns(&restored->base, from);
    for (int64_t i = 0; i < rr->base.n; i++) {
        if (!done[i]) continue;
        for (int k = 0; k < PS_BASELINE_COLS; k++) to[k][i] = from[k][i];
        for (int64_t s = 0; s < rr->n_tables; s++) {
            ps_table *t = &rr->tables[s];
            if (t->per_prompt)
                memcpy(t->values + i * t->n_cells, restored->tables[s].values + i * t->n_cells, (size_t)t->n_cells * sizeof(float));
        }
    }
    for (int64_t s = 0; s < rr->n_tables; s++) ps_table_add_counters(&rr->tables[s], &restored->tables[s]);
}

// The streamed weights' part of the plan: what the cache keeps, and what converting the rest costs on every pass
// over the layers, at the rate the dry run's baselines converted layers (or, when they converted none, timed here).
// rows: the sweep rows planned; fused_rows: how many of a chunk's the baselines' pass takes (PS_FUSED_BATCHES batches);
// chunks: the chunks of prompts (at most chunk_prompts each).
static void print_stream_plan(const ps_model *m, const ps_stream_info *si, int64_t rows, int64_t fused_rows, int64_t chunks) {
    const int64_t L = m->cfg.n_layers;
    double per = si->conversions ? si->convert_seconds / (double)si->conversions : 0;
    if (!si->conversions) {
        ps_layer_weights lw;
        ps_error e = {0};
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        if (ps_model_layer(m, L - 1, &lw, &e) != 0) per = -1;
        clock_gettime(CLOCK_MONOTONIC, &t1);
        if (per == 0) per = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    }
    printf("  streamed weights   %lld layers x %.1f MiB fp32 (%.1f MiB %s in the file); cache %.0f MiB keeps %lld of %lld layers\n",
           (long long)L, (double)si->layer_bytes / 1048576.0, (double)si->file_bytes_per_layer / 1048576.0, m->file_dtype,
           (double)si->budget / 1048576.0, (long long)si->layers_kept, (long long)L);
    if (per >= 0)
        printf("                     conversion %.3f s a layer (measured here): %.1f s once for the kept layers + %.1f s on every\n"
               "                     pass over the layers for the %lld others%s\n",
               per, per * (double)si->layers_kept, per * (double)(L - si->layers_kept), (long long)(L - si->layers_kept),
               si->layers_kept < L ? " (--weights-cache-mb raises the budget; --weights resident keeps all)" : "");
    // The sweeps' rows join the baselines' call (the fused pass), up to fused_rows of them a chunk; each batch
    // beyond is a pass of its own.
    const int64_t passes = 1 + (rows > fused_rows ? (rows - fused_rows + fused_rows / PS_FUSED_BATCHES - 1) / (fused_rows / PS_FUSED_BATCHES) : 0);
    printf("  passes             %lld over the layers for one chunk of prompts (the baselines with up to %lld sweep rows fused, %lld\n"
           "                     rows planned)%s",
           (long long)passes, (long long)fused_rows, (long long)rows, per >= 0 ? "" : "\n");
    if (per >= 0)
        printf(": estimated conversion %.1f s\n", per * (double)si->layers_kept + per * (double)(L - si->layers_kept) * (double)passes);
    // Layers are kept only when a later pass asks for them (ps_model_stream_expect): one chunk whose sweeps all
    // fuse into the baselines' pass converts each layer once and keeps none.
    if (si->layers_kept > 0)
        printf("                     layers are kept only for a later pass (another chunk, another experiment kind, sweep rows\n"
               "                     beyond the fused pass)%s\n",
               chunks <= 1 && passes == 1 ? ": with one chunk and one pass, a sweep-only run keeps none" : "");
}

int ps_cli_run(int argc, char **argv) {
    const char *cfg_path = NULL, *out = NULL;
    int prog = isatty(2), naive = 0, dry = 0, force = 0, shard_i = 0, shard_n = 1;
    int64_t chunk_prompts = 16, cuda_cache_mb = 0, weights_cache_mb = -1; // -1: the loader's default
    double progress_every = 60; // seconds between progress lines when stderr is a log, not a terminal
    uint64_t u;
    ps_error ae = {0};
    ps_weights_mode weights = PS_WEIGHTS_AUTO;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "-o") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--progress")) prog = 1;
        else if (!strcmp(argv[i], "--quiet")) prog = 0, progress_every = -1;
        else if (!strcmp(argv[i], "--naive")) naive = 1;
        else if (!strcmp(argv[i], "--dry-run")) dry = 1;
        else if (!strcmp(argv[i], "--force")) force = 1;
        else if (!strcmp(argv[i], "--shard") && i + 1 < argc) {
            if (ps_cli_parse_shard(argv[++i], &shard_i, &shard_n, &ae) != 0) return ps_cli_die(&ae);
        } else if (!strcmp(argv[i], "--chunk-prompts") && i + 1 < argc) {
            if (ps_cli_parse_u64(argv[++i], 1 << 30, &u) != 0 || u < 1)
                return ps_cli_bad_usage("--chunk-prompts takes a count from 1 to 1073741824");
            chunk_prompts = (int64_t)u;
        } else if (!strcmp(argv[i], "--progress-every") && i + 1 < argc) {
            if (ps_cli_parse_u64(argv[++i], 86400, &u) != 0)
                return ps_cli_bad_usage("--progress-every takes whole seconds from 0 (every chunk) to 86400");
            progress_every = (double)u;
        } else if (!strcmp(argv[i], "--cuda-cache-mb") && i + 1 < argc) { // this machine's, not the run's: no identity
            if (ps_cli_parse_u64(argv[++i], (uint64_t)1 << 30, &u) != 0 || u < 1)
                return ps_cli_bad_usage("--cuda-cache-mb takes a number of MiB from 1 to 1073741824");
            cuda_cache_mb = (int64_t)u;
        } else if (!strcmp(argv[i], "--weights-cache-mb") && i + 1 < argc) { // this machine's too: no identity
            if (ps_cli_parse_u64(argv[++i], (uint64_t)1 << 30, &u) != 0)
                return ps_cli_bad_usage("--weights-cache-mb takes a number of MiB from 0 (keep none) to 1073741824");
            weights_cache_mb = (int64_t)u;
        } else if (!strcmp(argv[i], "--weights") && i + 1 < argc) {
            const char *w = argv[++i];
            if (!strcmp(w, "auto")) weights = PS_WEIGHTS_AUTO;
            else if (!strcmp(w, "resident")) weights = PS_WEIGHTS_RESIDENT;
            else if (!strcmp(w, "streamed")) weights = PS_WEIGHTS_STREAMED;
            else return ps_cli_bad_usage("--weights takes auto, resident or streamed");
        } else if (argv[i][0] == '-') return ps_cli_bad_usage("run: unknown option");
        else if (!cfg_path) cfg_path = argv[i];
        else return ps_cli_bad_usage("run takes one CONFIG");
    }
    if (!cfg_path) return ps_cli_bad_usage("run needs CONFIG.json");
    // From here a SIGINT/SIGTERM (Slurm's) only asks to stop: loading and hashing finish, the engine stops at its
    // first check, and the run exits 130/143 saying how to resume (never killed by the default action mid-setup).
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    ps_error e = {0};
    ps_config cfg;
    if (ps_config_load(&cfg, cfg_path, &e) != 0) return ps_cli_die(&e);
    if (!out) out = cfg.output;
    // Before anything is loaded or computed: an output that cannot be written, or one another run is writing.
    ps_cli_lock lock = {-1, NULL};
    if (!dry && (ps_cli_check_output(out, &e) != 0 || ps_cli_lock_output(out, &lock, &e) != 0)) {
        ps_cli_unlock_output(&lock);
        ps_config_free(&cfg);
        return ps_cli_die(&e);
    }

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
    char tok_sha[65] = "";
    char *jpath = NULL, *hpath = NULL;
    ps_hash_cache *hc = NULL;
    ps_cli_ident ci;
    memset(&ci, 0, sizeof ci);
    ps_reuse_plan plan;      // which experiments this run computes; the rest come from the finished output
    memset(&plan, 0, sizeof plan);
    ps_stored_run stored;    // that output's tables, read back in a child process
    memset(&stored, 0, sizeof stored);
    ps_run_results all;      // the run's results in config order: reused and computed tables
    memset(&all, 0, sizeof all);
    int rc = 0, interrupted = 0, already = 0, have_stored = 0;
    double this_flops = 0;
    int64_t this_run = 0, this_skipped = 0;
    struct stat msb;
    if (stat(cfg.model, &msb) != 0 || !S_ISDIR(msb.st_mode))
        rc = ps_fail(&e, PS_EXIT_BADINPUT, "%s: model: \"%s\" is not a directory (a Hugging Face checkpoint: config.json + model.safetensors)",
                     cfg.path, cfg.model);
    if (rc == 0 && ps_tokenizer_load(&tok, cfg.tokenizer ? cfg.tokenizer : cfg.model, &e) != 0) rc = -1;
    if (rc == 0 && ps_model_load_mode(&m, cfg.model, weights, &e) != 0) rc = -1;
    if (rc == 0 && weights_cache_mb >= 0) ps_model_set_weights_cache(&m, (size_t)weights_cache_mb << 20);
    // A dry run plans even where the configured device is absent (the backend stands in with the CPU).
    const ps_backend_opts bo = {.kind = cfg.backend, .precision = cfg.precision, .threads = cfg.threads,
                                .cuda_cache_mb = cuda_cache_mb, .plan_only = dry};
    if (rc == 0 && ps_backend_init_opts(&be, &bo, &m, &e) != 0) rc = -1;
    const char *elsewhere = be.stand_in_for; // non-NULL: planned on the CPU for that backend
    if (rc == 0 && ps_prompts_build(&ps, &cfg, tok, &m.cfg, &e) != 0) rc = -1;
    // The identity (a dry run writes nothing and checks nothing, so it hashes nothing).
    if (rc == 0 && !dry) {
        if (!(hpath = beside(out, ".hashes")) || !(jpath = beside(out, ".journal")))
            rc = ps_fail(&e, PS_EXIT_RUNTIME, "out of memory");
        if (rc == 0 && (ps_hash_cache_load(&hc, hpath, &e) != 0 ||
                        ps_cli_identity(&ci, hc, &cfg, tok, &be, shard_i, shard_n, &e) != 0))
            rc = -1;
        if (rc == 0) {
            // /run's weights_sha256 and tokenizer_sha256: one file's own hash, or the hash over all of them.
            ps_identity_digest_kind(&ci.id, "weights file", m.weights_sha256);
            ps_identity_digest_kind(&ci.id, "tokenizer file", tok_sha);
        }
    }
    if (rc == 0 && !dry) {
        // An existing complete output: the same run is done already; another run's is not overwritten silently.
        if (file_exists(out) && !force) {
            char old[65] = "";
            ps_error re = {0};
            int complete = ps_store_read_identity(out, old, &re) == 0;
            if ((!complete && re.code == PS_EXIT_BADINPUT && strstr(re.msg, ": corrupt: ")) ||
                (complete && !strcmp(old, ci.ident) && ps_store_verify(out, &re) != 0)) {
                // The same run, but its bytes are not what was written: not "complete", and not silently redone.
                rc = ps_fail(&e, PS_EXIT_BADINPUT, "%s; --force recomputes it", re.msg);
            } else if (complete && !strcmp(old, ci.ident)) {
                char eo[1024];
                fprintf(stderr, "patchsweep: %s is complete for this config, model and version; nothing to do (--force recomputes)\n",
                        ps_escape(out, eo, sizeof eo));
                already = 1;
            } else if (complete && ps_store_read_run(out, &stored, &re) != 0) {
                rc = ps_fail(&e, PS_EXIT_BADINPUT, "%s; --force recomputes it", re.msg);
            } else if (complete && !strcmp(stored.base_identity, ci.base)) {
                have_stored = 1; // the same run-wide inputs: its experiments that still match are reused
            } else {
                ps_stored_run_free(&stored);
                char generic[PS_ERR_MAX];
                snprintf(generic, sizeof generic, "%s: exists and holds another run (config, model, tokenizer, version or shard differ); use --force to overwrite",
                         out);
                rc = refuse_changed(hc, complete ? old : "-", &ci.id, out, generic, &e);
            }
        }
        if (rc == 0 && !already && file_exists(jpath) && !force) {
            // The journal's header holds only the identity; the cache recorded the parts of the run that wrote it
            // (nothing recorded, or the same parts: ps_journal_open compares the header itself).
            char why[1536];
            if (ps_hash_cache_explain(hc, NULL, &ci.id, why, sizeof why) == 0)
                rc = ps_fail(&e, PS_EXIT_BADINPUT, "%s since the journal %s was written; --force recomputes", why, jpath);
        }
    }
    if (rc == 0 && already && ps_hash_cache_record(hc, &ci.id, ci.ident, &e) != 0) rc = -1;
    // What this run computes: everything in a dry run or without a finished output to reuse from.
    if (rc == 0 && !already && !dry && ps_cli_reuse_plan(&plan, &cfg, &ps, &ci, have_stored ? &stored : NULL, out, &e) != 0) rc = -1;
    if (rc == 0 && !already && !dry && ps_hash_cache_record(hc, &ci.id, ci.ident, &e) != 0) rc = -1; // what OUT will hold
    const ps_experiment *exps = dry ? cfg.experiments : plan.sub;
    const int64_t n_exps = dry ? cfg.n_experiments : plan.n_sub;
    const ps_prompt_set *psx = dry ? &ps : &plan.ps_sub;
    // Nothing to compute when every table is reused (or dropped); without a finished output the baselines always run.
    const int compute = dry || plan.n_sub > 0 || !have_stored;
    if (rc == 0 && !already) {
        // Which prompts this run owns (its shard), minus those a journal already holds.
        done = calloc((size_t)ps.n, 1);
        todo = malloc((size_t)ps.n * sizeof(int64_t));
        if (!done || !todo) rc = ps_fail(&e, PS_EXIT_RUNTIME, "out of memory");
        // The tables' shapes: the journal's header, and what --shard can split.
        if (rc == 0 && ps_run_results_init(&restored, &m.cfg, psx, exps, n_exps, &e) != 0) rc = -1;
        if (rc == 0 && !dry && ps_cli_tag_tables(restored.tables, restored.n_tables, &plan, &cfg, &ci, &e) != 0) rc = -1;
        if (rc == 0 && shard_n > 1 && ps_tables_check_shardable(restored.tables, restored.n_tables, &e) != 0) {
            char orig[PS_ERR_MAX];
            memcpy(orig, e.msg, sizeof orig);
            snprintf(e.msg, sizeof e.msg, "%s: --shard: %.1900s", cfg_path, orig);
            rc = -1;
        }
        if (rc == 0 && !dry && compute) { // (the output's directory exists: ps_cli_lock_output made it)
            if (ps_journal_open_base(&jr, jpath, plan.jident, ci.base, force, &restored.base, restored.tables, restored.n_tables, done,
                                     &n_done, &e) != 0 ||
                ps_hash_cache_record(hc, &ci.id, ci.ident, &e) != 0) // what the journal holds now
                rc = -1;
            ps_hash_cache_save(hc); // now, not at the end: a killed run's resume finds the hashes
            if (rc == 0 && n_done > 0) {
                char ej[1024];
                fprintf(stderr, "patchsweep: resuming: %lld of %lld prompts already done (%s)\n", (long long)n_done,
                        (long long)ps.n, ps_escape(jpath, ej, sizeof ej));
            }
        }
        for (int64_t i = 0; rc == 0 && i < ps.n; i++)
            if (ps_shard_owns(i, cfg.batch_prompts, shard_i, shard_n)) todo[n_todo++] = i;
    }
    if (rc == 0 && !already && compute) {
        char em[1024];
        if (prog || dry)
            fprintf(stderr, "patchsweep: %lld prompts (%lld to run%s), %lld experiments, model %s (%s, %lld layers), backend %s\n",
                    (long long)ps.n, (long long)(n_todo - n_done), shard_n > 1 ? " in this shard" : "", (long long)n_exps,
                    ps_escape(cfg.model, em, sizeof em), ps_arch_name(m.cfg.arch), (long long)m.cfg.n_layers, be.device);
        // A terminal gets the engine's own updating line; a log (Slurm's) gets a plain line every progress_every s.
        chunk_ctx cc = {.jr = jr};
        ps_cli_progress_start(&cc.prog, !isatty(2) && !dry ? progress_every : -1, n_todo - n_done);
        ps_engine_opts o = {.naive = naive, .batch_rows = cfg.batch_rows, .batch_prompts = cfg.batch_prompts, .progress = prog && isatty(2) && !dry, .todo = todo,
                            .n_todo = n_todo, .skip = done, .dry_run = dry, .stop = &stop_requested, .chunk_prompts = chunk_prompts,
                            .on_chunk = journal_chunk, .chunk_ctx = &cc};
        if (ps_engine_run(&m, &be, psx, exps, n_exps, cfg.metric, &o, &rr, &e) != 0) {
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
        const ps_precision prec = elsewhere ? cfg.precision : be.precision;
        const size_t weights = m.n_floats * (prec == PS_PREC_FP32 ? sizeof(float) : 2);
        if (elsewhere) printf("plan for %s (%s backend; no device here: planned on the CPU)\n", cfg_path, elsewhere);
        else printf("plan for %s (%s backend, %s)\n", cfg_path, be.name, be.device);
        if (be.kind == PS_BACKEND_CPU) printf("  blas               %s\n", ps_blas_describe());
        printf("  prompts            %lld (%lld in this run)\n", (long long)ps.n, (long long)n_todo);
        for (int64_t s = 0; s < rr.n_tables; s++) {
            const ps_table *t = &rr.tables[s];
            char shape[160] = "";
            for (int a = 0; a < t->n_axes; a++)
                snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%s%s %lld", a ? " x " : "", t->axes[a].name,
                         (long long)t->axes[a].len);
            const ps_attr *site = ps_table_attr(t, "site");
            printf("  %-18s %s%s%s (%s): %lld cells x %lld %s: %lld rows, %lld known without running, %.3f GFLOP\n", t->name, t->kind,
                   site ? " at " : "", site ? site->s : "", shape, (long long)t->n_cells, (long long)(t->per_prompt ? n_todo : 1),
                   t->per_prompt ? "prompts" : "row", (long long)t->patches_run, (long long)t->patches_skipped, t->flops * 1e-9);
        }
        printf("  patches            %lld (%lld forward rows, %lld known without running)\n", (long long)(run + skipped),
               (long long)run, (long long)skipped);
        printf("  compute            %.3f GFLOP for the sweeps + %.3f GFLOP for the baselines\n", fl * 1e-9, rr.baseline_flops * 1e-9);
        printf("  memory             %.1f MiB weights (%s) + %.1f MiB activation caches at once, %s (%lld layers x d_model %lld)\n",
               (double)weights / 1048576.0, ps_precision_name(prec), (double)rr.peak_cache_bytes / 1048576.0, ps_arch_name(m.cfg.arch),
               (long long)m.cfg.n_layers, (long long)m.cfg.d_model);
        ps_stream_info si;
        if (be.kind == PS_BACKEND_CPU && ps_model_stream_info(&m, &si))
            print_stream_plan(&m, &si, rr.rows_planned, PS_FUSED_BATCHES * (cfg.batch_rows > 0 ? cfg.batch_rows : 512),
                              chunk_prompts > 0 ? (n_todo + chunk_prompts - 1) / chunk_prompts : 1);
        if (rate > 0) {
            printf("  estimated time     %.1f s at this machine's measured %.1f GFLOP/s (%s GEMM; attention and overheads not counted)\n",
                   (fl + rr.baseline_flops) * 1e-9 / rate, rate, ps_precision_name(prec));
            printf("                     (a lower bound: the sweeps run at most this GEMM rate; `run` prints the real one)\n");
        } else {
            printf("  estimated time     unknown (%s)\n", elsewhere ? "no device here to measure" : "the backend's GEMM rate could not be measured");
        }
    } else if (rc == 0 && !already) {
        if (compute) {
            run_totals(&rr, &this_flops, &this_run, &this_skipped); // this run's compute, before the journal's is added
            restore_done(&rr, &restored, done);
            if (ps_cli_tag_tables(rr.tables, rr.n_tables, &plan, &cfg, &ci, &e) != 0) rc = -1;
        }
        if (rc == 0 && ps_cli_reuse_assemble(&plan, &cfg, &rr, &all, &e) != 0) rc = -1;
        // Every table here scores the run's metric (patching sweeps); the file says which.
        for (int64_t s = 0; rc == 0 && s < all.n_tables; s++)
            if (all.tables[s].metric_valued && ps_table_attr_str(&all.tables[s], "metric", ps_metric_name(cfg.metric), &e) != 0) rc = -1;
        ps_engine_finish(&all);
        uint8_t *in_run = calloc((size_t)ps.n, 1);
        if (!in_run) rc = ps_fail(&e, PS_EXIT_RUNTIME, "out of memory");
        for (int64_t i = 0; rc == 0 && i < ps.n; i++) in_run[i] = (uint8_t)ps_shard_owns(i, cfg.batch_prompts, shard_i, shard_n);
        if (rc == 0 && (rc = check_meaningful(&all, in_run, &cfg, &e)) != 0 && jpath) unlink(jpath); // nothing worth resuming
        ps_shard_info sh = {.index = shard_i, .count = shard_n, .identity = ci.ident, .run_identity = ci.run_id,
                           .base_identity = ci.base, .in_run = in_run, .inputs_json = ci.inputs_json};
        if (rc == 0 && ps_cli_write_results(out, &cfg, &m, tok, tok_sha, &be, be.threads, &ps, &all, &sh, &e) != 0) rc = -1;
        free(in_run);
        if (rc == 0 && jpath) unlink(jpath); // everything is in the results file now
    }
    if (rc == 0 && !dry && !already) {
        double mc = 0, mx = 0;
        int64_t cnt = 0;
        char eo[1024];
        for (int64_t i = 0; i < ps.n; i++)
            if (!isnan(all.base.clean[i])) { mc += all.base.clean[i]; mx += all.base.corrupted[i]; cnt++; }
        char corr[64] = "; no corrupted prompts";
        if (!cfg.no_corrupted) snprintf(corr, sizeof corr, ", corrupted %.4f", cnt ? mx / (double)cnt : NAN);
        fprintf(stderr, "patchsweep: wrote %s (%lld prompts; mean %s clean %.4f%s)\n", ps_escape(out, eo, sizeof eo),
                (long long)cnt, ps_metric_name(cfg.metric), cnt ? mc / (double)cnt : NAN, corr);
        // This run's compute only: the journal's chunks were computed (and timed) by an earlier run.
        fprintf(stderr, "patchsweep: compute %.3f s, %.3f GFLOP (%.2f GFLOP/s), %lld patches run, %lld known without running%s\n",
                rr.seconds, this_flops * 1e-9, rr.seconds > 0 ? this_flops * 1e-9 / rr.seconds : 0.0, (long long)this_run,
                (long long)this_skipped,
                n_done > 0 ? " (this run; the resumed prompts' compute is not counted)"
                : plan.n_sub < cfg.n_experiments ? " (this run; the reused tables' compute is not counted)" : "");
        ps_stream_info si;
        if (be.kind == PS_BACKEND_CPU && ps_model_stream_info(&m, &si))
            fprintf(stderr, "patchsweep: streamed weights: %lld layer conversions (%.2f s, %.3f s a layer), %lld calls served by kept layers "
                    "(%lld of %lld kept, %.0f MiB); %lld rows fused into the baselines' pass, %lld planned otherwise and run again\n",
                    (long long)si.conversions, si.convert_seconds, si.conversions ? si.convert_seconds / (double)si.conversions : 0.0,
                    (long long)si.hits, (long long)(si.kept_bytes / si.layer_bytes), (long long)m.cfg.n_layers,
                    (double)si.kept_bytes / 1048576.0, (long long)rr.rows_fused, (long long)rr.rows_fused_wasted);
    }
    ps_journal_close(jr);
    ps_cli_unlock_output(&lock);
    // The cache serves the journal and output beside it: with neither left (a failed run), nothing stays behind.
    if (hc && rc != 0 && !file_exists(out) && !file_exists(jpath)) unlink(hpath);
    else ps_hash_cache_save(hc); // a refused run's fresh hashes too (nothing is recorded for it)
    ps_hash_cache_free(hc);
    ps_cli_ident_free(&ci);
    free(hpath);
    ps_run_results_free(&all);
    ps_cli_reuse_free(&plan);
    ps_stored_run_free(&stored);
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
        char ej[1024];
        fprintf(stderr, "patchsweep: interrupted by signal %d; finished chunks are kept in %s; run the same command again to resume\n",
                stop_signal, jpath ? ps_escape(jpath, ej, sizeof ej) : "(none)");
        free(jpath);
        return 128 + stop_signal;
    }
    free(jpath);
    if (rc != 0 && !strncmp(e.msg, "experiments[", 12)) { // the engine checks indices against the model: name the file
        char orig[PS_ERR_MAX];
        memcpy(orig, e.msg, sizeof orig);
        snprintf(e.msg, sizeof e.msg, "%s: %.1900s", cfg_path, orig);
    }
    return rc == 0 ? 0 : ps_cli_die(&e);
}
