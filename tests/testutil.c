// Shared test harness: tolerance comparisons, paths to test data, pass/fail summary.
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

int tu_failures = 0;

int tu_close(const char *name, const float *got, const float *want, int64_t n, float atol, float rtol) {
    double max_abs = 0, max_rel = 0;
    int64_t bad = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = got[i], w = want[i];
        double d = fabs(g - w);
        int nan_mismatch = (isnan(g) != isnan(w));
        if (isnan(g) && isnan(w)) d = 0;
        if (d > max_abs || nan_mismatch) max_abs = nan_mismatch ? INFINITY : d;
        double r = d / (fabs(w) > 1e-12 ? fabs(w) : 1e-12);
        if (r > max_rel && fabs(w) > atol) max_rel = r;
        if (nan_mismatch || d > atol + rtol * fabs(w)) {
            if (bad < 5) fprintf(stderr, "  %s[%lld]: got %.8g want %.8g (diff %.3g)\n", name, (long long)i, g, w, d);
            bad++;
        }
    }
    printf("%-48s max_abs_err=%.3g max_rel_err=%.3g n=%lld %s\n", name, max_abs, max_rel, (long long)n,
           bad ? "MISMATCH" : "ok");
    if (bad) {
        fprintf(stderr, "FAIL %s: %lld of %lld elements outside atol=%g rtol=%g\n", name, (long long)bad, (long long)n,
                atol, rtol);
        tu_failures++;
        return -1;
    }
    return 0;
}

static char tu_buf[8][4096];
static int tu_slot = 0;

const char *tu_src(const char *rel) {
    const char *root = getenv("PS_SRC");
    char *b = tu_buf[tu_slot++ % 8];
    snprintf(b, sizeof tu_buf[0], "%s/%s", root ? root : ".", rel);
    return b;
}

const char *tu_shared(const char *rel) {
    const char *root = getenv("PS_SHARED");
    char *b = tu_buf[tu_slot++ % 8];
    snprintf(b, sizeof tu_buf[0], "%s/%s", root ? root : "../shared/data", rel);
    struct stat st;
    if (stat(b, &st) != 0) {
        const char *ci = getenv("CI");
        if (ci && strcmp(ci, "true") == 0) {
            fprintf(stderr, "FAIL: shared data %s is missing and CI=true\n", b);
            exit(1);
        }
        fprintf(stderr, "SKIP: shared data %s is missing\n", b);
        exit(77);
    }
    return b;
}

int tu_done(const char *suite) {
    if (tu_failures) {
        printf("%s: %d failure(s)\n", suite, tu_failures);
        return 1;
    }
    printf("%s: all passed\n", suite);
    return 0;
}

int tu_have_python(const char *modules) {
    char cmd[512];
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 -c 'import %s' >/dev/null 2>&1", modules);
    return access("/usr/bin/python3", X_OK) == 0 && system(cmd) == 0;
}

int tu_sh_status(const char *cmd) {
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}
