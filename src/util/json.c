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

struct cJSON *ps_json_parse(const char *text, size_t n, const char *file, ps_error *e) {
    // text[n] must be the NUL ps_read_file adds: cJSON then checks nothing but whitespace follows the value.
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
