// Shared by the libFuzzer targets: the loaders read files, so each process writes inputs into its own temp dir.
// The directory is made on first use, reused for every input, and removed at exit.
#ifndef PS_FUZZ_UTIL_H
#define PS_FUZZ_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ps_common.h"

// A broken invariant: say which one (the reproducer then reads well in the log), then crash like a sanitizer would.
#define FUZZ_FAIL_IF(cond)                                                                                  \
    do {                                                                                                    \
        if (cond) {                                                                                         \
            fprintf(stderr, "FUZZ INVARIANT BROKEN: %s (%s:%d)\n", #cond, __FILE__, __LINE__);              \
            abort();                                                                                        \
        }                                                                                                   \
    } while (0)

// The error contract of every reader: a failure fills its ps_error with PS_EXIT_BADINPUT or PS_EXIT_RUNTIME and a
// message. 1 when e breaks it.
static int fuzz_bad_error(const ps_error *e) {
    return (e->code != PS_EXIT_BADINPUT && e->code != PS_EXIT_RUNTIME) || !e->msg[0];
}

static char fuzz_dir[256];

static void fuzz_cleanup(void) {
    if (!fuzz_dir[0]) return;
    DIR *d = opendir(fuzz_dir);
    if (d) {
        struct dirent *de;
        char p[512];
        while ((de = readdir(d))) {
            if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
            snprintf(p, sizeof p, "%s/%s", fuzz_dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(fuzz_dir);
}

// The per-process directory (created on first call); aborts if it cannot be made, since nothing can be tested then.
static const char *fuzz_tmpdir(void) {
    if (!fuzz_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(fuzz_dir, sizeof fuzz_dir, "%s/psfuzz.XXXXXX", base && base[0] ? base : "/tmp");
        if (!mkdtemp(fuzz_dir)) { perror("mkdtemp"); abort(); }
        atexit(fuzz_cleanup);
    }
    return fuzz_dir;
}

// Writes data to <tmpdir>/name (truncating) and returns the path in a static buffer per slot (0..3).
static const char *fuzz_write(int slot, const char *name, const uint8_t *data, size_t size) {
    static char paths[4][512];
    char *p = paths[slot & 3];
    snprintf(p, 512, "%s/%s", fuzz_tmpdir(), name);
    FILE *f = fopen(p, "wb");
    if (!f) { perror(p); abort(); }
    if (size && fwrite(data, 1, size, f) != size) { perror(p); abort(); }
    if (fclose(f) != 0) { perror(p); abort(); }
    return p;
}

// Removes <tmpdir>/name if it is there (so files from an earlier input cannot leak into the next one).
static void fuzz_remove(const char *name) {
    char p[512];
    snprintf(p, sizeof p, "%s/%s", fuzz_tmpdir(), name);
    unlink(p);
}

// A malloc'd copy of n bytes of a results file with a valid seal in its first 512 (when it is long enough to have
// one; h5file.c's userblock line), as a crafted file would have: mutations then get past the seal to the checksums.
static uint8_t *fuzz_sealed(const uint8_t *d, size_t n) {
    uint8_t *c = malloc(n ? n : 1);
    if (!c) abort();
    memcpy(c, d, n);
    if (n > 512) {
        char hex[65];
        ps_sha256_hex(c + 512, n - 512, hex);
        memset(c, 0, 512);
        snprintf((char *)c, 512, "PSRESULT sha256 %s\n", hex);
    }
    return c;
}

// With PS_FUZZ_VERBOSE set (when replaying files by hand), prints each loader's outcome to stderr.
static void fuzz_note(const char *what, int rc, const char *msg) {
    static int verbose = -1;
    if (verbose < 0) verbose = getenv("PS_FUZZ_VERBOSE") != NULL;
    if (verbose) fprintf(stderr, "%s: %s\n", what, rc == 0 ? "ok" : msg);
}

#endif
