// libFuzzer target: the resume journal's reader (ps_journal_open on an existing file): header, records, checksums,
// a torn tail, records written twice. The run's shape is fixed: 4 prompts, a per-prompt table of 3 cells ("t",
// kind "k") and one that is not per prompt ("u"); identity 64 x 'a'. The input is the journal file's bytes.
#include "fuzz_util.h"
#include "ps_journal.h"

#include <math.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_write(0, "j.journal", data, size);
    char ident[65];
    memset(ident, 'a', 64);
    ident[64] = 0;
    ps_error e = {0};
    ps_baseline base;
    ps_table t[2];
    memset(t, 0, sizeof t);
    int64_t v3[3] = {0, 1, 2}, v1[1] = {0};
    ps_axis a3 = {.name = "cell", .len = 3, .value = v3}, a1 = {.name = "one", .len = 1, .value = v1};
    if (ps_baseline_init(&base, 4, &e) != 0 || ps_table_init(&t[0], "t", "k", 1, 4, 1, &a3, 0, &e) != 0 ||
        ps_table_init(&t[1], "u", "k", 0, 1, 1, &a1, 0, &e) != 0)
        abort();
    uint8_t done[4] = {0};
    int64_t n_done = -1;
    ps_journal *j = NULL;
    int rc = ps_journal_open(&j, p, ident, 0, &base, t, 2, done, &n_done, &e);
    fuzz_note("journal", rc, e.msg);
    if (rc != 0) {
        FUZZ_FAIL_IF(j || fuzz_bad_error(&e));
    } else {
        int64_t k = 0;
        for (int i = 0; i < 4; i++) {
            FUZZ_FAIL_IF(done[i] > 1);
            k += done[i];
            if (!done[i]) FUZZ_FAIL_IF(!isnan(base.clean[i]) || !isnan(t[0].values[3 * i])); // only restored rows set
        }
        FUZZ_FAIL_IF(k != n_done || t[1].patches_run != 0);
        ps_journal_close(j);
    }
    ps_baseline_free(&base);
    ps_table_free(&t[0]);
    ps_table_free(&t[1]);
    return 0;
}
