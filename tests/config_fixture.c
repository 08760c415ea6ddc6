// Helpers of the config tests (config_fixture.h).
#include "config_fixture.h"

#include <stdio.h>
#include <stdlib.h>

char tmpdir[256];


const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int slot = 0;
    char *b = buf[slot++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", tmpdir, name);
    return b;
}

const char *write_tmp(const char *name, const char *text, size_t n) {
    const char *p = tmp_path(name);
    FILE *f = fopen(p, "wb");
    if (!f) { fprintf(stderr, "cannot write %s\n", p); exit(1); }
    fwrite(text, 1, n, f);
    fclose(f);
    return p;
}

int is_zeroed(const ps_config *c) {
    static const ps_config zero;
    return memcmp(c, &zero, sizeof zero) == 0;
}

// Loads text as <tmpdir>/name and expects failure with exactly "<path>: want" (or, when want starts with '=',
// exactly the rest of want).
void expect_fail(const char *name, const char *text, size_t n, const char *want) {
    const char *p = write_tmp(name, text, n ? n : strlen(text));
    ps_config c;
    ps_error e = {0};
    int rc = ps_config_load(&c, p, &e);
    char full[PS_ERR_MAX + 600];
    if (want[0] == '=') snprintf(full, sizeof full, "%s", want + 1);
    else snprintf(full, sizeof full, "%s: %s", p, want);
    TU_CHECK(rc == -1, "%s: loaded but should fail", name);
    TU_CHECK(e.code == PS_EXIT_BADINPUT, "%s: code %d, want 2 (msg %s)", name, e.code, e.msg);
    TU_CHECK(strcmp(e.msg, full) == 0, "%s:\n  got  [%s]\n  want [%s]", name, e.msg, full);
    TU_CHECK(is_zeroed(&c), "%s: config not zeroed after failure", name);
    ps_config_free(&c);
}

// A config around one experiment, for the experiment checks.
void expect_exp_fail(const char *name, const char *exp, const char *want) {
    char text[2048];
    snprintf(text, sizeof text,
             "{\"model\": \"m\", \"dataset\": [{\"clean\": \"a\", \"corrupted\": \"b\", \"answer\": \"c\", \"wrong\": \"d\"}],\n"
             " \"experiments\": [{\"name\": \"ok\", \"site\": \"resid_pre\"}, %s]}",
             exp);
    expect_fail(name, text, 0, want);
}

int load_ok(ps_config *c, const char *path) {
    ps_error e = {0};
    int rc = ps_config_load(c, path, &e);
    TU_CHECK(rc == 0, "%s: %s", path, e.msg);
    return rc;
}

