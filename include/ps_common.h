// Shared basics for every patchsweep module: error reporting, file reading, hashing.
// Errors travel up as a ps_error filled once at the point of failure; main() prints it and exits with its code.
#ifndef PS_COMMON_H
#define PS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define PS_VERSION "0.1.0"

enum {
    PS_EXIT_OK = 0,
    PS_EXIT_RUNTIME = 1,   // something failed that is not the user's input (I/O, out of memory)
    PS_EXIT_BADINPUT = 2,  // the input (config, weights, tokenizer, dataset) is malformed
};

#define PS_ERR_MAX 2048
typedef struct {
    int code;               // PS_EXIT_BADINPUT or PS_EXIT_RUNTIME; 0 while no error
    char msg[PS_ERR_MAX];   // one line: "FILE: field or byte offset: what is wrong"
} ps_error;

// Fills e (if non-NULL and still empty) and returns -1, so callers write `return ps_fail(e, 2, ...)`.
int ps_fail(ps_error *e, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

// The first failure of a parallel loop by index, the one the serial loop would report: each failing iteration i
// notes its error (thread-safe), the lowest i's is kept; then take it. (src/util/parallel.c)
typedef struct {
    int64_t at;   // INT64_MAX while no iteration failed
    ps_error e;
} ps_first_error;
#define PS_FIRST_ERROR_NONE {INT64_MAX, {0, {0}}}
void ps_first_error_note(ps_first_error *f, int64_t i, const ps_error *e);
// 0 when none failed; else -1 with the first failure's error copied into e (when non-NULL).
int ps_first_error_take(const ps_first_error *f, ps_error *e);

// Copies s into out (cap bytes, always NUL-terminated) with what could break a one-line message or drive a
// terminal escaped: newline, tab and CR as \n \t \r, other control bytes, DEL, C1 controls and bytes that are
// not valid UTF-8 as \xNN. Cut at a whole character when out is full. Returns out. ps_fail applies it to
// every error message; anything else that prints user text (paths, values) passes it through this too.
const char *ps_escape(const char *s, char *out, size_t cap);

// 0 when path is a regular file; else -1 with e = "PATH: not a regular file (a FIFO)" or "PATH: cannot open: ..."
// (with label: "LABEL: 'PATH' is not a regular file (...)", for a path named by a field of another file).
int ps_check_regular(const char *path, const char *label, ps_error *e);

// Opens a regular file for reading without ever blocking (a FIFO, directory or device is refused as in
// ps_check_regular); returns the descriptor and *size (if non-NULL), or -1 with e filled.
int ps_open_regular(const char *path, int64_t *size, ps_error *e);

// Reads a whole regular file into a malloc'd, NUL-terminated buffer; the caller frees it.
char *ps_read_file(const char *path, size_t *len, ps_error *e);

// Hex sha256 of a file's bytes (hex must hold 65 chars).
int ps_sha256_file(const char *path, char hex[65], ps_error *e);

// Hex sha256 of a buffer (hex must hold 65 chars).
void ps_sha256_hex(const void *data, size_t n, char hex[65]);

// 0 when s[0..n) is valid UTF-8; else -1 and *bad_offset = offset of the first invalid byte.
int ps_utf8_check(const char *s, size_t n, size_t *bad_offset);

// Line and column (1-based) of byte offset off in text, for JSON syntax errors.
void ps_line_col(const char *text, size_t off, int *line, int *col);

// Levenshtein distance, for "did you mean" suggestions on unknown keys.
int ps_edit_distance(const char *a, const char *b);

// Joins a and b with '/' unless b is absolute; result is malloc'd.
char *ps_path_join(const char *a, const char *b);

// 1 when something (a file of any kind) is at path: reading it then says what is wrong with it, if anything.
int ps_path_exists(const char *path);

// 1 when s ends with suffix.
int ps_ends_with(const char *s, const char *suffix);

// Directory part of a path (malloc'd; "." when there is none).
char *ps_dirname(const char *path);

#endif
