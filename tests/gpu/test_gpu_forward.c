// The CUDA backend against ps_cpu_forward on the tiny checkpoints in tests/data/ (gpt2-tiny-*, llama-tiny-*,
// neox-tiny-*: partial rotary, parallel and sequential residual):
// full cache rows and batches of patched rows with start_layer/start_pos > 0, in fp32 (1e-4) and fp16/bf16
// (gpu_tol_for). Without a GPU it first checks that asking for CUDA fails cleanly (and "auto" falls back to
// the CPU), then skips.
#include "gpu_common.h"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// No device: "cuda" must fail with a clear error, "auto" must fall back to the CPU backend, and a dry run
// of "cuda" gets the CPU standing in with the cuda backend's capabilities.
static void check_no_device_paths(void) {
    ps_model m;
    if (gpu_random_model(&m, PS_ARCH_GPT2, 1, 2, 2, 8, 32, 11, 8, 1) != 0) return;
    ps_backend b;
    ps_error e = {0};
    const ps_backend_opts co = {.kind = PS_BACKEND_CUDA, .precision = PS_PREC_FP32};
    TU_CHECK(ps_cuda_backend_init(&b, &co, &m, &e) != 0 && strstr(e.msg, "no CUDA device found"),
             "ps_cuda_backend_init without a device: want \"no CUDA device found\", got rc with \"%s\"", e.msg);
    memset(&e, 0, sizeof e);
    TU_CHECK(ps_backend_init(&b, PS_BACKEND_CUDA, PS_PREC_FP32, 1, &m, &e) != 0 && strstr(e.msg, "no CUDA device found"),
             "backend cuda without a device: got \"%s\"", e.msg);
    memset(&e, 0, sizeof e);
    int rc = ps_backend_init(&b, PS_BACKEND_AUTO, PS_PREC_FP32, 1, &m, &e);
    TU_CHECK(rc == 0 && b.kind == PS_BACKEND_CPU, "backend auto without a device: rc=%d kind=%d (%s)", rc, (int)b.kind, e.msg);
    TU_CHECK(rc != 0 || (b.caps == PS_CAPS_CPU && b.threads > 0 && !b.stand_in_for && !b.release_cache),
             "backend auto without a device: the CPU backend's caps %u, threads %d", b.caps, b.threads);
    if (rc == 0) ps_backend_free(&b);
    memset(&e, 0, sizeof e);
    const ps_backend_opts plan = {.kind = PS_BACKEND_CUDA, .precision = PS_PREC_BF16, .plan_only = 1};
    rc = ps_backend_init_opts(&b, &plan, &m, &e);
    TU_CHECK(rc == 0 && b.kind == PS_BACKEND_CPU && b.stand_in_for && !strcmp(b.stand_in_for, "cuda") &&
                 b.caps == PS_CAPS_CUDA && !b.gemm_rate,
             "dry-run stand-in for cuda: rc=%d kind=%d caps=%u (%s)", rc, (int)b.kind, b.caps, e.msg);
    if (rc == 0) ps_backend_free(&b);
    gpu_free_model(&m);
}

static int is_model_dir(const char *name) {
    return strncmp(name, "gpt2-tiny-", 10) == 0 || strncmp(name, "llama-tiny-", 11) == 0 || strncmp(name, "neox-tiny-", 10) == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(void) {
    char why[256] = "";
    if (ps_cuda_device_count(why, sizeof why) <= 0) {
        check_no_device_paths();
        if (tu_failures) return tu_done("gpu forward (no-device paths)");
        printf("SKIP: no CUDA device (%s)\n", why);
        return 77;
    }
    const char *data = tu_src("tests/data");
    DIR *dir = opendir(data);
    char *names[64];
    int n = 0;
    if (dir) {
        struct dirent *de;
        while ((de = readdir(dir)) && n < 64)
            if (is_model_dir(de->d_name)) names[n++] = strdup(de->d_name);
        closedir(dir);
    }
    qsort(names, (size_t)n, sizeof names[0], cmp_str);
    int tested = 0;
    for (int i = 0; i < n; i++) {
        char path[4096], cfg[4200], st[4200];
        snprintf(path, sizeof path, "%s/%s", data, names[i]);
        snprintf(cfg, sizeof cfg, "%s/config.json", path);
        snprintf(st, sizeof st, "%s/model.safetensors", path);
        struct stat sb;
        if (stat(cfg, &sb) != 0 || stat(st, &sb) != 0) {
            printf("%s: absent or incomplete, skipped\n", names[i]);
            free(names[i]);
            continue;
        }
        ps_model m;
        ps_error e = {0};
        if (ps_model_load(&m, path, &e) != 0) {
            TU_CHECK(0, "%s: %s", names[i], e.msg);
            free(names[i]);
            continue;
        }
        const int64_t Ts[] = {1, 7, 129, m.cfg.n_ctx};
        gpu_compare_model(&m, names[i], PS_PREC_FP32, Ts, 4);
        gpu_compare_model(&m, names[i], PS_PREC_FP16, Ts, 4);
        gpu_compare_model(&m, names[i], PS_PREC_BF16, Ts, 4);
        ps_model_free(&m);
        free(names[i]);
        tested++;
    }
    if (!tested && !tu_failures) {
        printf("SKIP: no tiny models under %s\n", data);
        return 77;
    }
    return tu_done("gpu forward");
}
