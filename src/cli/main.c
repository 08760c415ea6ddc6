// patchsweep's command line: run an experiment config, tokenize text, inspect a results file, generate text.
// Every failure prints one line and exits 1 (runtime) or 2 (bad input).
#include "cli.h"

#include "ps_backend.h"
#include "ps_blas.h"
#include "ps_config.h"
#include "ps_engine.h"
#include "ps_journal.h"
#include "ps_model.h"
#include "ps_store.h"
#include "ps_tokenizer.h"

#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
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
            "  patchsweep run CONFIG.json [-o OUT.h5] [--progress|--quiet] [--progress-every SEC] [--dry-run] [--shard I/N]\n"
            "                 [--force] [--naive] [--chunk-prompts N] [--weights auto|resident|streamed]\n"
            "                 [--weights-cache-mb N] [--cuda-cache-mb N]\n"
            "  patchsweep merge OUT.h5 SHARD.h5...\n"
            "  patchsweep tokenize (--model DIR | --tokenizer FILE) [--ids] [--bos] TEXT\n"
            "  patchsweep inspect RESULTS.h5\n"
            "  patchsweep generate --model DIR [--max-new-tokens N] [--no-bos] [PROMPT]\n"
            "  patchsweep bench-gemm [--blas NAME] [M K N]\n"
            "  patchsweep version\n"
            "\n"
            "run:       runs the config's baseline and sweeps and writes one HDF5 file (default: the config's \"output\").\n"
            "           Finished chunks of prompts are journaled in OUT.h5.journal: after a kill (or SIGINT/SIGTERM),\n"
            "           the same command resumes. An existing OUT.h5 of another config is refused unless --force.\n"
            "           --dry-run prints the plan (patches, rows, FLOPs, memory, estimated time) without running the sweeps.\n"
            "           --shard I/N runs prompts i with i %% N == I; merge combines the N shard files.\n"
            "           --naive runs every patch as a full forward pass (the slow oracle the fast engine is tested against).\n"
            "           --weights: layer matrices resident in fp32, or streamed from the mapped checkpoint one layer at a\n"
            "           time (auto, the default: streamed when resident fp32 would take more than half the RAM).\n"
            "           --weights-cache-mb N: RAM (MiB) for streamed layers kept converted for later calls (default:\n"
            "           half the RAM less the resident weights; 0 converts every layer on every call).\n"
            "           --cuda-cache-mb N: device memory (MiB) for copies of activation caches on the CUDA backend\n"
            "           (default: half the memory free after the weights; least recently used copies are dropped).\n"
            "           Progress: on a terminal one updating line; in a log (stderr not a terminal) a line every SEC\n"
            "           seconds (default 60; 0: after every chunk of prompts). A second run on the same OUT.h5 refuses\n"
            "           while the first holds OUT.h5.lock.\n"
            "tokenize:  shows each token's id and string (why \" 5\" and \"5\" differ); --ids prints only the ids.\n"
            "           No BOS is prepended unless --bos (TransformerLens prepends one by default).\n"
            "bench-gemm: the fp32 GEMM rate of every BLAS candidate for this CPU (each in its own process), the one a run\n"
            "           chooses (from cpuid features, self-checked) and the best; --blas NAME times only that candidate.\n"
            "Exit status: 0 ok, 1 runtime failure, 2 bad input (the message names the file and the field or byte offset).\n",
            PS_VERSION);
}


int ps_cli_die(const ps_error *e) {
    fprintf(stderr, "patchsweep: %s\n", e->msg[0] ? e->msg : "unknown error");
    return e->code ? e->code : PS_EXIT_RUNTIME;
}

int ps_cli_bad_usage(const char *msg) {
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
        else if (argv[i][0] == '-' && argv[i][1] == '-') return ps_cli_bad_usage("tokenize: unknown option");
        else text = argv[i];
    }
    if (!model && !tokfile) return ps_cli_bad_usage("tokenize needs --model DIR or --tokenizer FILE");
    if (!text) return ps_cli_bad_usage("tokenize needs TEXT");
    ps_error e = {0};
    ps_tokenizer *tok = NULL;
    if (ps_tokenizer_load(&tok, tokfile ? tokfile : model, &e) != 0) return ps_cli_die(&e);
    int32_t *ids = NULL;
    int64_t n = 0;
    if (ps_tokenizer_encode(tok, text, &ids, &n, &e) != 0) {
        ps_tokenizer_free(tok);
        return ps_cli_die(&e);
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

static int cmd_generate(int argc, char **argv) {
    const char *model = NULL, *prompt = "";
    int64_t max_new = 64;
    int bos = 1;
    for (int i = 0; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "--max-new-tokens") && i + 1 < argc) max_new = atoll(argv[++i]);
        else if (!strcmp(argv[i], "--no-bos")) bos = 0;
        else if (argv[i][0] == '-' && argv[i][1] == '-') return ps_cli_bad_usage("generate: unknown option");
        else prompt = argv[i];
    }
    if (!model) return ps_cli_bad_usage("generate needs --model DIR");
    ps_error e = {0};
    ps_tokenizer *tok = NULL;
    ps_model m;
    memset(&m, 0, sizeof m);
    if (ps_tokenizer_load(&tok, model, &e) != 0) return ps_cli_die(&e);
    if (ps_model_load(&m, model, &e) != 0) { ps_tokenizer_free(tok); return ps_cli_die(&e); }
    int32_t *ids = NULL;
    int64_t n = 0;
    if (ps_tokenizer_encode(tok, prompt, &ids, &n, &e) != 0) { ps_model_free(&m); ps_tokenizer_free(tok); return ps_cli_die(&e); }
    const int64_t cap = m.cfg.n_ctx;
    int32_t *seq = malloc((size_t)cap * sizeof(int32_t));
    int64_t T = 0;
    int32_t b = bos ? ps_tokenizer_bos_id(tok) : -1;
    if (b < 0 && bos) b = (int32_t)m.cfg.bos_id;
    if (b >= 0) seq[T++] = b;
    for (int64_t i = 0; i < n && T < cap; i++) seq[T++] = ids[i];
    free(ids);
    if (T == 0) { free(seq); ps_model_free(&m); ps_tokenizer_free(tok); return ps_cli_bad_usage("generate: empty prompt and no BOS"); }
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
    return rc == 0 ? 0 : ps_cli_die(&e);
}

// The machine's fp32 GEMM rate through the same OpenBLAS the CPU backend uses: the floor of benchmarks.
// One BLAS in this process: the best of its own threads, the CPU backend's blocks of one GEMM and one GEMM a thread
// (the CPU forward's pieces): the benchmarks' floor.
static int bench_one(const char *blas, int64_t M, int64_t K, int64_t N, double *rate) {
    ps_error e = {0};
    if (ps_blas_init(blas, &e) != 0) return ps_cli_die(&e);
    const double own = ps_cpu_gemm_rate(M, K, N, 1.0, 0), blocks = ps_cpu_gemm_rate(M, K, N, 1.0, 1),
                 each = ps_cpu_gemm_rate(M, K, N, 1.0, 2);
    *rate = own > blocks ? own : blocks;
    if (each > *rate) *rate = each;
    printf("candidate %s: %.2f GFLOP/s (its threads %.2f, the CPU backend's blocks of one GEMM %.2f, one GEMM a thread "
           "%.2f)\n", ps_blas_describe(), *rate, own, blocks, each);
    fflush(stdout);
    return 0;
}

// Runs `patchsweep bench-gemm --blas CAND M K N` as a child (OpenBLAS's core type is fixed when it loads, so
// each candidate needs a fresh process) and passes its output on; the candidate's rate, or 0 if it failed.
static double bench_child(const char *self, const char *cand, int64_t M, int64_t K, int64_t N) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "'%s' bench-gemm --blas %s %lld %lld %lld 2>&1", self, cand, (long long)M, (long long)K,
             (long long)N);
    FILE *p = popen(cmd, "r");
    if (!p) {
        fprintf(stderr, "patchsweep: bench-gemm: cannot run %s: %s\n", self, strerror(errno));
        return 0;
    }
    char line[1024];
    double rate = 0;
    int said = 0;
    while (fgets(line, sizeof line, p)) {
        const char *r = strstr(line, "candidate ") == line ? strstr(line, ": ") : NULL;
        if (r) rate = atof(r + 2);
        if (r || strncmp(line, "gemm ", 5) != 0) { // its own summary line is repeated by the parent
            if (!r) printf("candidate %s: ", cand);
            fputs(line, stdout);
            said = 1;
        }
    }
    const int st = pclose(p);
    if (st != 0 && !said) printf("candidate %s: failed (exit status %d)\n", cand, st);
    return st == 0 ? rate : 0;
}

static int cmd_bench_gemm(int argc, char **argv) {
    const char *blas = NULL;
    if (argc >= 2 && !strcmp(argv[0], "--blas")) {
        blas = argv[1];
        argc -= 2;
        argv += 2;
    }
    int64_t M = argc > 0 ? atoll(argv[0]) : 512, K = argc > 1 ? atoll(argv[1]) : 768, N = argc > 2 ? atoll(argv[2]) : 3072;
    if (M <= 0 || K <= 0 || N <= 0 || argc > 3) return ps_cli_bad_usage("bench-gemm [--blas NAME] [M K N]: positive sizes");
    char fs[256];
    ps_cpu_features f;
    ps_cpu_features_detect(&f);
    ps_cpu_features_str(&f, fs, sizeof fs);
    if (blas) { // one candidate, here
        double rate;
        const int rc = bench_one(blas, M, K, N, &rate);
        if (rc != 0) return rc;
        printf("gemm %lldx%lldx%lld: best %.2f GFLOP/s (%s), chosen %.2f GFLOP/s (%s)\n", (long long)M, (long long)K,
               (long long)N, rate, ps_blas_choice(), rate, ps_blas_choice());
        return 0;
    }
    printf("cpu features: %s\n", fs);
    fflush(stdout);
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0 || memchr(self, '\'', (size_t)n)) {
        fprintf(stderr, "patchsweep: bench-gemm: cannot find its own executable (/proc/self/exe)\n");
        return PS_EXIT_RUNTIME;
    }
    self[n] = '\0';
    const char *cands[16];
    double rates[16];
    const int nc = ps_blas_candidates(&f, cands, 16);
    int best = 0;
    for (int i = 0; i < nc; i++) {
        rates[i] = bench_child(self, cands[i], M, K, N);
        if (rates[i] > rates[best]) best = i;
    }
    ps_error e = {0};
    if (ps_blas_init(NULL, &e) != 0) return ps_cli_die(&e); // the choice a run makes here
    double chosen = 0;
    for (int i = 0; i < nc; i++)
        if (!strcmp(cands[i], ps_blas_choice())) chosen = rates[i];
    printf("chosen: %s\n", ps_blas_describe());
    printf("gemm %lldx%lldx%lld: best %.2f GFLOP/s (%s), chosen %.2f GFLOP/s (%s)\n", (long long)M, (long long)K,
           (long long)N, rates[best], cands[best], chosen, ps_blas_choice());
    return 0;
}

int main(int argc, char **argv) {
#ifdef __GLIBC__
    // Each chunk's activation caches (hundreds of KiB to MiB each) are freed before the next chunk allocates
    // its own; by default glibc maps such blocks afresh and returns the heap's top to the system, so every
    // chunk page-faults its caches in again (a third of the seqcont analyses' time on the demo model). Keep
    // the freed memory in the heap for the next chunk instead; the peak is the same.
    mallopt(M_MMAP_THRESHOLD, 64 << 20);
    mallopt(M_TRIM_THRESHOLD, 1 << 30);
#endif
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? PS_EXIT_BADINPUT : 0;
    }
    const char *cmd = argv[1];
    // A file over the size limit (ulimit -f, a quota) is then a write error (EFBIG) with our one-line message and a
    // clean exit, as a full disk (ENOSPC) is, instead of a signal that kills the run mid-write.
    signal(SIGXFSZ, SIG_IGN);
    if (!strcmp(cmd, "run")) return ps_cli_run(argc - 2, argv + 2);
    if (!strcmp(cmd, "tokenize")) return cmd_tokenize(argc - 2, argv + 2);
    if (!strcmp(cmd, "generate")) return cmd_generate(argc - 2, argv + 2);
    if (!strcmp(cmd, "merge")) {
        if (argc < 4) return ps_cli_bad_usage("merge takes OUT.h5 SHARD.h5...");
        ps_error e = {0};
        if (ps_store_merge(argv[2], (const char *const *)(argv + 3), argc - 3, &e) != 0) return ps_cli_die(&e);
        char eo[1024];
        fprintf(stderr, "patchsweep: merged %d shards into %s\n", argc - 3, ps_escape(argv[2], eo, sizeof eo));
        return 0;
    }
    if (!strcmp(cmd, "inspect")) {
        if (argc != 3) return ps_cli_bad_usage("inspect takes one RESULTS.h5");
        ps_error e = {0};
        return ps_store_inspect(argv[2], &e) == 0 ? 0 : ps_cli_die(&e);
    }
    if (!strcmp(cmd, "bench-gemm")) return cmd_bench_gemm(argc - 2, argv + 2);
    if (!strcmp(cmd, "version") || !strcmp(cmd, "--version")) {
        printf("patchsweep %s\n", PS_VERSION);
        return 0;
    }
    char ec[256];
    fprintf(stderr, "patchsweep: unknown command '%s' (see patchsweep --help)\n", ps_escape(cmd, ec, sizeof ec));
    return PS_EXIT_BADINPUT;
}
