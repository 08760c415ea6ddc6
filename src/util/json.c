// Small JSON helpers shared by every module that reads a JSON file (config, datasets, config.json,
// safetensors indexes): one syntax-error format with line, column and the text near the mistake.
#include "ps_json.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ps_text_escape(const char *s, char *buf, size_t n, size_t max_chars) {
    // Messages are one line, so control characters and quotes are written as escapes.
    size_t o = 0, used = 0;
    if (n == 0) return;
    for (; *s && o + 8 < n; s++) {
        if (used++ >= max_chars) { memcpy(buf + o, "...", 3); o += 3; break; }
        unsigned char c = (unsigned char)*s;
        if (c == '\n') { buf[o++] = '\\'; buf[o++] = 'n'; }
        else if (c == '\t') { buf[o++] = '\\'; buf[o++] = 't'; }
        else if (c == '\r') { buf[o++] = '\\'; buf[o++] = 'r'; }
        else if (c == '"' || c == '\\') { buf[o++] = '\\'; buf[o++] = (char)c; }
        else if (c < 0x20 || c == 0x7f) o += (size_t)snprintf(buf + o, n - o, "\\x%02x", c);
        else buf[o++] = (char)c;
    }
    buf[o] = 0;
}

void ps_json_describe(const struct cJSON *v, char *buf, size_t n) {
    if (!v) snprintf(buf, n, "nothing");
    else if (cJSON_IsString(v)) {
        char esc[160];
        ps_text_escape(v->valuestring, esc, sizeof esc, 40);
        snprintf(buf, n, "\"%s\"", esc);
    } else if (cJSON_IsNumber(v)) snprintf(buf, n, "%.15g", v->valuedouble);
    else if (cJSON_IsTrue(v)) snprintf(buf, n, "true");
    else if (cJSON_IsFalse(v)) snprintf(buf, n, "false");
    else if (cJSON_IsNull(v)) snprintf(buf, n, "null");
    else if (cJSON_IsArray(v)) snprintf(buf, n, "an array");
    else if (cJSON_IsObject(v)) snprintf(buf, n, "an object");
    else snprintf(buf, n, "an invalid value");
}

// Offset of the first \u0000 escape inside a string of text[0..n), or -1 (outside strings there is none).
static long find_nul_escape(const char *t, size_t n) {
    int in_string = 0;
    for (size_t i = 0; i < n; i++) {
        if (!in_string) { in_string = t[i] == '"'; continue; }
        if (t[i] == '"') in_string = 0;
        else if (t[i] == '\\') {
            if (i + 5 < n && t[i + 1] == 'u' && !memcmp(t + i + 2, "0000", 4)) return (long)i;
            i++; // the escaped character, whatever it is
        }
    }
    return -1;
}

// U+FDD0, a noncharacter no real text holds: what the \u0000 becomes so the walk below can find its string.
#define NUL_MARK "\xEF\xB7\x90"

// A key for the path, escaped, with the mark shown as the \u0000 the file has.
static void key_shown(const char *k, char *out, size_t cap) {
    char esc[160];
    ps_text_escape(k, esc, sizeof esc, 60);
    size_t o = 0;
    for (const char *p = esc; *p && o + 7 < cap; p++) {
        if (!strncmp(p, NUL_MARK, 3)) { memcpy(out + o, "\\u0000", 6); o += 6; p += 2; }
        else out[o++] = *p;
    }
    out[o] = 0;
}

// The JSON path (a.b[2].c) of the first key or string holding NUL_MARK; 0 when found.
static int mark_path(const cJSON *v, char *path, size_t cap) {
    size_t len = strlen(path);
    int i = 0;
    if (cJSON_IsString(v)) return v->valuestring && strstr(v->valuestring, NUL_MARK) ? 0 : -1;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        if (cJSON_IsObject(v)) {
            char key[160];
            key_shown(c->string ? c->string : "", key, sizeof key);
            snprintf(path + len, cap - len, "%s%s", len ? "." : "", key);
            if (c->string && strstr(c->string, NUL_MARK)) return 0;
        } else {
            snprintf(path + len, cap - len, "[%d]", i);
        }
        if (mark_path(c, path, cap) == 0) return 0;
        path[len] = 0;
    }
    return -1;
}

int ps_json_check_nul(const char *text, size_t n, const char *file, int64_t first_line, ps_error *e) {
    long off = find_nul_escape(text, n);
    if (off < 0) return 0;
    int line, col;
    ps_line_col(text, (size_t)off, &line, &col);
    char path[512] = "";
    char *copy = malloc(n + 1);
    if (copy) {
        memcpy(copy, text, n);
        copy[n] = 0;
        memcpy(copy + off, "\\uFDD0", 6);
        cJSON *j = cJSON_ParseWithLength(copy, n);
        if (!j || mark_path(j, path, sizeof path) != 0) path[0] = 0;
        cJSON_Delete(j);
        free(copy);
    }
    return ps_fail(e, PS_EXIT_BADINPUT, "%s: line %lld, column %d: %s%s\\u0000 (a NUL character) is not allowed in a string",
                   file, (long long)(first_line + line - 1), col, path, path[0] ? ": " : "");
}

struct cJSON *ps_json_parse(const char *text, size_t n, const char *file, ps_error *e) {
    // text[n] must be the NUL ps_read_file adds: cJSON then checks nothing but whitespace follows the value.
    if (ps_json_check_nul(text, n, file, 1, e) != 0) return NULL;
    const char *end = NULL;
    cJSON *j = cJSON_ParseWithLengthOpts(text, n + 1, &end, 1);
    if (j) return j;
    size_t off = end && end >= text ? (size_t)(end - text) : 0;
    if (off > n) off = n;
    int line, col;
    ps_line_col(text, off, &line, &col);
    // cJSON often stops one byte past the culprit (after the quote it expected), so the snippet starts a byte early.
    size_t from = off > 0 && text[off - 1] != '\n' ? off - 1 : off;
    char near[128];
    ps_text_escape(text + from, near, sizeof near, 24);
    if (off >= n || !near[0])
        ps_fail(e, PS_EXIT_BADINPUT, "%s: line %d, column %d: JSON syntax error at the end of the text", file, line, col);
    else
        ps_fail(e, PS_EXIT_BADINPUT, "%s: line %d, column %d: JSON syntax error near \"%s\"", file, line, col, near);
    return NULL;
}


struct cJSON *ps_json_parse_file(const char *path, ps_error *e) {
    size_t len;
    char *text = ps_read_file(path, &len, e);
    if (!text) return NULL;
    cJSON *j = ps_json_parse(text, len, path, e);
    free(text);
    return j;
}

// Canonical form: objects' keys sorted (byte order), no whitespace, numbers and strings as cJSON prints them.
static int canon_cmp(const void *a, const void *b) {
    return strcmp((*(const cJSON *const *)a)->string, (*(const cJSON *const *)b)->string);
}

static int canon_put(char **buf, size_t *len, size_t *cap, const char *s) {
    const size_t n = strlen(s);
    if (*len + n + 1 > *cap) {
        size_t nc = (*cap ? *cap * 2 : 256) + n;
        char *nb = realloc(*buf, nc);
        if (!nb) return -1;
        *buf = nb;
        *cap = nc;
    }
    memcpy(*buf + *len, s, n + 1);
    *len += n;
    return 0;
}

static int canon_value(const cJSON *v, char **buf, size_t *len, size_t *cap) {
    if (cJSON_IsObject(v) || cJSON_IsArray(v)) {
        const int obj = cJSON_IsObject(v);
        size_t n = 0;
        for (const cJSON *c = v->child; c; c = c->next) n++;
        const cJSON **kids = malloc((n ? n : 1) * sizeof *kids);
        if (!kids) return -1;
        n = 0;
        for (const cJSON *c = v->child; c; c = c->next) kids[n++] = c;
        if (obj) qsort(kids, n, sizeof *kids, canon_cmp);
        int rc = canon_put(buf, len, cap, obj ? "{" : "[");
        for (size_t i = 0; rc == 0 && i < n; i++) {
            if (i) rc = canon_put(buf, len, cap, ",");
            if (rc == 0 && obj) {
                cJSON *k = cJSON_CreateString(kids[i]->string);
                char *ks = k ? cJSON_PrintUnformatted(k) : NULL;
                rc = ks ? canon_put(buf, len, cap, ks) : -1;
                if (rc == 0) rc = canon_put(buf, len, cap, ":");
                free(ks);
                cJSON_Delete(k);
            }
            if (rc == 0) rc = canon_value(kids[i], buf, len, cap);
        }
        free(kids);
        return rc == 0 ? canon_put(buf, len, cap, obj ? "}" : "]") : -1;
    }
    // A scalar printed alone: detach a copy so cJSON prints just this value.
    cJSON *d = cJSON_Duplicate(v, 0);
    char *s = d ? cJSON_PrintUnformatted(d) : NULL;
    const int rc = s ? canon_put(buf, len, cap, s) : -1;
    free(s);
    cJSON_Delete(d);
    return rc;
}

char *ps_json_canonical(const struct cJSON *v) {
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (canon_value(v, &buf, &len, &cap) != 0) {
        free(buf);
        return NULL;
    }
    return buf;
}
