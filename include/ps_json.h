// Small JSON helpers shared by the modules that read JSON files (cJSON stays an implementation detail:
// only the parsers include it; the rest of the program sees plain C structs).
#ifndef PS_JSON_H
#define PS_JSON_H

#include "ps_common.h"

struct cJSON;
// Parses text[0..n) (text[n] must be NUL, as ps_read_file leaves it) as one JSON value with nothing but
// whitespace after it. On a syntax error: NULL, e = "FILE: line L, column C: JSON syntax error near \"...\"".
// The caller frees the result with cJSON_Delete.
struct cJSON *ps_json_parse(const char *text, size_t n, const char *file, ps_error *e);
// A "\u0000" escape in any string of text[0..n) (cJSON would cut the string there): -1 with e = "FILE: line L,
// column C: PATH: \u0000 (a NUL character) is not allowed in a string", as a raw NUL is refused; else 0.
// first_line: the file's line where text starts (1 for a whole file, the record's line in a JSONL file).
// ps_json_parse checks this itself.
int ps_json_check_nul(const char *text, size_t n, const char *file, int64_t first_line, ps_error *e);
// Reads and parses a whole file the same way (errors name the file: missing, unreadable, syntax).
struct cJSON *ps_json_parse_file(const char *path, ps_error *e);
// One-line description of a value for "expected X, got Y": "\"resid\"", "1.5", "true", "null", "an array".
void ps_json_describe(const struct cJSON *v, char *buf, size_t n);
// v as canonical JSON (object keys sorted, no whitespace), so values that mean the same print the same; the
// caller frees it. NULL when out of memory.
char *ps_json_canonical(const struct cJSON *v);
// Copies s into buf with control characters, quotes and backslashes escaped, cut after max_chars with "...".
void ps_text_escape(const char *s, char *buf, size_t n, size_t max_chars);

#endif
