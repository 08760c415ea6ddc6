// Helpers of the config tests (test_config.c, test_config_ablation.c): configs written to a temporary directory
// and loaded, with the exact message expected of bad ones.
#ifndef PS_CONFIG_FIXTURE_H
#define PS_CONFIG_FIXTURE_H

#include "ps_config.h"
#include "testutil.h"

#include <string.h>

#define STREQ(got, want) do { const char *g_ = (got), *w_ = (want); \
    TU_CHECK(g_ && w_ && strcmp(g_, w_) == 0, "%s: got [%s] want [%s]", #got, g_ ? g_ : "(null)", w_ ? w_ : "(null)"); } while (0)
#define INTEQ(got, want) do { long long g_ = (long long)(got), w_ = (long long)(want); \
    TU_CHECK(g_ == w_, "%s: got %lld want %lld", #got, g_, w_); } while (0)

extern char tmpdir[256];   // made by the test's main (mkdtemp)
const char *tmp_path(const char *name);                              // <tmpdir>/name (4 rotating buffers)
const char *write_tmp(const char *name, const char *text, size_t n); // writes it, returns its path
// Loads text as <tmpdir>/name and expects failure with exactly "<path>: want" (or, when want starts with '=',
// exactly the rest of want), exit status 2 and the config zeroed.
void expect_fail(const char *name, const char *text, size_t n, const char *want);
// A config around one experiment (after experiments[0], a patch sweep), for the experiment checks.
void expect_exp_fail(const char *name, const char *exp, const char *want);
int load_ok(ps_config *c, const char *path);   // 0, or a recorded failure naming the message
int is_zeroed(const ps_config *c);             // 1 when every byte of c is 0 (a failed or freed load)

#endif
