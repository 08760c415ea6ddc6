// libFuzzer target: `merge`'s reading path (ps_store_merge_in_process, what ps_store_merge runs in its child: shard
// checks, per-prompt rows, means, counters) on two shard files. The input is shard 0's bytes, the 8 bytes "PSSHARD1", shard 1's bytes (no marker: one shard file).
// Each file is sealed here (the userblock's sha256 recomputed over the mutated bytes, as a crafted file would be), so
// mutations get past the seal to the checksums and the merge itself; fuzz_results covers the seal check.
// A successful merge's output must pass ps_store_verify (it is sealed and checksummed as written).
#include "fuzz_util.h"
#include "ps_store.h"

static const char MARK[8] = {'P', 'S', 'S', 'H', 'A', 'R', 'D', '1'};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *m = NULL;
    for (size_t i = 0; i + 8 <= size; i++)
        if (data[i] == 'P' && memcmp(data + i, MARK, 8) == 0) { m = data + i; break; }
    const size_t n0 = m ? (size_t)(m - data) : size;
    const char *s[2];
    uint8_t *c0 = fuzz_sealed(data, n0), *c1 = m ? fuzz_sealed(m + 8, size - n0 - 8) : NULL;
    s[0] = fuzz_write(0, "s0.h5", c0, n0);
    int n = 1;
    if (m) {
        s[1] = fuzz_write(1, "s1.h5", c1, size - n0 - 8);
        n = 2;
    }
    free(c0);
    free(c1);
    char out[600];
    snprintf(out, sizeof out, "%s/m.h5", fuzz_tmpdir());
    ps_error e = {0};
    int rc = ps_store_merge_in_process(out, s, n, &e); // (ps_store_merge runs this in a child, which would hide findings)
    fuzz_note("merge", rc, e.msg);
    if (rc != 0) {
        FUZZ_FAIL_IF(fuzz_bad_error(&e));
        FUZZ_FAIL_IF(access(out, F_OK) == 0); // nothing left that looks complete
        return 0;
    }
    ps_error ve = {0};
    FUZZ_FAIL_IF(ps_store_verify(out, &ve) != 0);
    fuzz_remove("m.h5");
    return 0;
}
