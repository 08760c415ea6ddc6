// libFuzzer target: the results-file readers, inspect's path (ps_store_inspect: seal, checksums, /run, /prompts,
// /baseline, every table) and run's (ps_store_read_identity, ps_store_verify). The input is the file's bytes.
// Seeds are written with no seal and no /run checksums (as an older patchsweep's files are) so libhdf5 parses them.
#include "fuzz_util.h"
#include "ps_store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    if (!freopen("/dev/null", "w", stdout)) abort(); // inspect prints its summary on stdout
    return 0;
}

static void check_error(int rc, const ps_error *e) {
    if (rc == 0) return;
    FUZZ_FAIL_IF((e->code != PS_EXIT_BADINPUT && e->code != PS_EXIT_RUNTIME) || !e->msg[0] || strchr(e->msg, '\n'));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_write(0, "r.h5", data, size);
    ps_error e = {0};
    int rc = ps_store_inspect(p, &e);
    fuzz_note("inspect", rc, e.msg);
    check_error(rc, &e);
    char id[65];
    e = (ps_error){0};
    rc = ps_store_read_identity(p, id, &e);
    fuzz_note("read_identity", rc, e.msg);
    check_error(rc, &e);
    FUZZ_FAIL_IF(rc == 0 && strlen(id) != 64);
    e = (ps_error){0};
    rc = ps_store_verify(p, &e);
    fuzz_note("verify", rc, e.msg);
    check_error(rc, &e);
    return 0;
}
