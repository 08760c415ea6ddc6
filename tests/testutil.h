// Small test harness shared by the C tests: tolerance comparisons that print max error and first mismatches.
#ifndef PS_TESTUTIL_H
#define PS_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>

extern int tu_failures;

// Compares got with want elementwise: |got - want| <= atol + rtol * |want|.
// Prints "name: max_abs_err=.. max_rel_err=.. n=.." and up to 5 mismatches; returns 0 when all match.
int tu_close(const char *name, const float *got, const float *want, int64_t n, float atol, float rtol);

// Records a failure with a message when cond is false.
#define TU_CHECK(cond, ...) do { if (!(cond)) { tu_failures++; \
    fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__); fprintf(stderr, __VA_ARGS__); fputc('\n', stderr); } } while (0)

// Path under $PS_SRC (or "."); returns a static buffer slot (8 rotating).
const char *tu_src(const char *rel);
// Path under $PS_SHARED; when missing: exits 77 (skip) unless CI=true, where it fails.
const char *tu_shared(const char *rel);

// 1 when /usr/bin/python3 imports these modules ("h5py, numpy"), the interpreter the tests use.
int tu_have_python(const char *modules);
// Exit status of a shell command (-1 when it did not exit normally).
int tu_sh_status(const char *cmd);

// Exit code for main: prints a summary line.
int tu_done(const char *suite);

#endif
