// libFuzzer target: the results-file reader, inspect's path in this process (ps_store_inspect_in_process: seal,
// checksums of every dataset, /run, /prompts, /baseline, every table). The input is the file's bytes. (run's and
// merge's checks are the same seal and checksum code, run in a child process.) Seeds include files with no seal
// and no /run checksums (as an older patchsweep's files are) so that mutations reach libhdf5 and the readers.
#include "fuzz_util.h"
#include "ps_store.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc; (void)argv;
    if (!freopen("/dev/null", "w", stdout)) abort(); // inspect prints its summary on stdout
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *p = fuzz_write(0, "r.h5", data, size);
    ps_error e = {0};
    int rc = ps_store_inspect_in_process(p, &e);
    fuzz_note("inspect", rc, e.msg);
    if (rc != 0) FUZZ_FAIL_IF(fuzz_bad_error(&e) || strchr(e.msg, '\n'));
    return 0;
}
