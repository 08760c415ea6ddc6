// Dataset files (JSONL, CSV, JSON) into ps_item arrays, plus the small JSON helpers config.c shares.
// Every file is read whole, checked as UTF-8, and indexed into records; only the selected records are extracted.
#include "ps_dataset.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

// ---- helpers shared with config.c (declared in ps_dataset.h) ----

const char *ps_data_format_name(ps_data_format f) {
    switch (f) {
    case PS_DATA_AUTO: return "auto";
    case PS_DATA_JSONL: return "jsonl";
    case PS_DATA_CSV: return "csv";
    case PS_DATA_JSON: return "json";
    }
    return "?";
}

void ps_items_free(ps_item *items, int64_t n) {
    if (!items) return;
    for (int64_t i = 0; i < n; i++) {
        free(items[i].clean);
        free(items[i].corrupted);
        free(items[i].answer);
        free(items[i].wrong);
        free(items[i].group);
        for (int64_t r = 0; r < items[i].n_roles; r++) free(items[i].role_name[r]);
        free(items[i].role_name);
        free(items[i].role_pos);
    }
    free(items);
}

// ---- one dataset file as records ----

typedef struct {
    const char *path;
    ps_data_format fmt;
    char *buf;                 // whole file, NUL-terminated (owned)
    size_t len, body;          // body: offset past a byte-order mark
    int64_t n;                 // records
    int64_t *line;             // first line of each record (1-based)
    size_t *start, *end;       // jsonl: byte range of each record's line
    cJSON *root;               // json
    char **cols; int ncols;    // csv header (owned)
    int64_t header_line;
    char **cells;              // csv: n * ncols strings (owned)
    int64_t cap;
} table;

static void table_free(table *t) {
    free(t->buf);
    free(t->line);
    free(t->start);
    free(t->end);
    cJSON_Delete(t->root);
    for (int i = 0; i < t->ncols; i++) free(t->cols[i]);
    free(t->cols);
    if (t->cells)
        for (int64_t i = 0; i < t->n * t->ncols; i++) free(t->cells[i]);
    free(t->cells);
    memset(t, 0, sizeof *t);
}

static int oom(ps_error *e, const char *path) {
    return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
}

// Grows the per-record arrays so record t->n fits.
static int table_grow(table *t, ps_error *e) {
    if (t->n < t->cap) return 0;
    int64_t cap = t->cap ? t->cap * 2 : 256;
    int64_t *line = realloc(t->line, (size_t)cap * sizeof *line);
    if (!line) return oom(e, t->path);
    t->line = line;
    if (t->fmt == PS_DATA_JSONL) {
        size_t *s = realloc(t->start, (size_t)cap * sizeof *s);
        if (!s) return oom(e, t->path);
        t->start = s;
        size_t *en = realloc(t->end, (size_t)cap * sizeof *en);
        if (!en) return oom(e, t->path);
        t->end = en;
    }
    if (t->fmt == PS_DATA_CSV) {
        char **c = realloc(t->cells, (size_t)(cap * t->ncols) * sizeof *c);
        if (!c) return oom(e, t->path);
        t->cells = c;
    }
    t->cap = cap;
    return 0;
}

static int read_text(table *t, const char *origin, const char *what, ps_error *e) {
    char label[1024];
    if (origin) snprintf(label, sizeof label, "%s.%s", origin, what);
    if (ps_check_regular(t->path, origin ? label : NULL, e)) return -1;
    t->buf = ps_read_file(t->path, &t->len, e);
    if (!t->buf) return -1;
    if (strlen(t->buf) != t->len) {
        size_t off = strlen(t->buf);
        int line, col;
        ps_line_col(t->buf, off, &line, &col);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu (line %d): NUL byte in a text file", t->path, off, line);
    }
    size_t bad;
    if (ps_utf8_check(t->buf, t->len, &bad) != 0) {
        int line, col;
        ps_line_col(t->buf, bad, &line, &col);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu (line %d): invalid UTF-8", t->path, bad, line);
    }
    if (t->len >= 3 && memcmp(t->buf, "\xEF\xBB\xBF", 3) == 0) t->body = 3;
    return 0;
}

static int load_jsonl(table *t, ps_error *e) {
    size_t p = t->body;
    int64_t line = 1;
    while (p < t->len) {
        size_t ls = p, le = p;
        while (le < t->len && t->buf[le] != '\n') le++;
        p = le < t->len ? le + 1 : le;
        size_t end = le;
        if (end > ls && t->buf[end - 1] == '\r') end--;
        int blank = 1;
        for (size_t i = ls; i < end; i++)
            if (t->buf[i] != ' ' && t->buf[i] != '\t') { blank = 0; break; }
        if (!blank) {
            if (table_grow(t, e)) return -1;
            t->start[t->n] = ls;
            t->end[t->n] = end;
            t->line[t->n] = line;
            t->n++;
        }
        line++;
    }
    return 0;
}

static int load_json(table *t, ps_error *e) {
    t->root = ps_json_parse(t->buf + t->body, t->len - t->body, t->path, e);
    if (!t->root) return -1;
    if (!cJSON_IsArray(t->root)) {
        char got[200];
        ps_json_describe(t->root, got, sizeof got);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: expected a JSON array of objects, got %s", t->path, got);
    }
    t->n = cJSON_GetArraySize(t->root);
    return 0;
}

// A growable string for CSV fields.
typedef struct { char *s; size_t n, cap; } sbuf;

static int sb_put(sbuf *b, char c) {
    if (b->n + 1 >= b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        char *s = realloc(b->s, cap);
        if (!s) return -1;
        b->s = s;
        b->cap = cap;
    }
    b->s[b->n++] = c;
    b->s[b->n] = 0;
    return 0;
}

static int sb_clear(sbuf *b) {
    if (!b->s && sb_put(b, 'x')) return -1;   // first use: allocate
    b->n = 0;
    b->s[0] = 0;
    return 0;
}

// RFC 4180 with LF or CRLF line ends; fields are collected per record, the first record is the header.
static int load_csv(table *t, ps_error *e) {
    const char *s = t->buf;
    size_t n = t->len, p = t->body;
    int64_t line = 1;
    char **fields = NULL;
    int nf = 0, capf = 0;
    sbuf b = {0};
    int rc = -1;
    int header_done = 0;
    for (;;) {
        // Skip empty lines between records.
        while (p < n && (s[p] == '\n' || (s[p] == '\r' && p + 1 < n && s[p + 1] == '\n'))) {
            p += s[p] == '\r' ? 2 : 1;
            line++;
        }
        if (p >= n) break;
        int64_t rec_line = line;
        nf = 0;
        for (;;) {   // one field per pass
            if (sb_clear(&b)) goto nomem;
            if (s[p] == '"') {
                int64_t qline = line;
                p++;
                for (;;) {
                    if (p >= n) {
                        ps_fail(e, PS_EXIT_BADINPUT, "%s:line %lld: unterminated quoted field (no closing \")",
                                t->path, (long long)qline);
                        goto done;
                    }
                    if (s[p] == '"') {
                        if (p + 1 < n && s[p + 1] == '"') { if (sb_put(&b, '"')) goto nomem; p += 2; continue; }
                        p++;
                        break;
                    }
                    if (s[p] == '\n') line++;
                    if (sb_put(&b, s[p])) goto nomem;
                    p++;
                }
                if (p < n && s[p] != ',' && s[p] != '\n' && !(s[p] == '\r' && p + 1 < n && s[p + 1] == '\n')) {
                    ps_fail(e, PS_EXIT_BADINPUT,
                            "%s:line %lld: text after a closing quote (write a quote inside a quoted field as \"\")",
                            t->path, (long long)line);
                    goto done;
                }
            } else {
                while (p < n && s[p] != ',' && s[p] != '\n' && !(s[p] == '\r' && p + 1 < n && s[p + 1] == '\n')) {
                    if (s[p] == '"') {
                        ps_fail(e, PS_EXIT_BADINPUT,
                                "%s:line %lld: quote inside an unquoted field (quote the whole field and write \"\" for a quote)",
                                t->path, (long long)line);
                        goto done;
                    }
                    if (sb_put(&b, s[p])) goto nomem;
                    p++;
                }
            }
            if (nf == capf) {
                int cap = capf ? capf * 2 : 8;
                char **f = realloc(fields, (size_t)cap * sizeof *f);
                if (!f) goto nomem;
                fields = f;
                capf = cap;
            }
            fields[nf] = strdup(b.s);
            if (!fields[nf]) goto nomem;
            nf++;
            if (p < n && s[p] == ',') { p++; continue; }
            if (p < n) { p += s[p] == '\r' ? 2 : 1; line++; }
            break;
        }
        if (!header_done) {
            for (int i = 0; i < nf; i++)
                for (int j = 0; j < i; j++)
                    if (strcmp(fields[i], fields[j]) == 0) {
                        char esc[160];
                        ps_text_escape(fields[i], esc, sizeof esc, 60);
                        ps_fail(e, PS_EXIT_BADINPUT, "%s:line %lld: column '%s' appears twice in the header", t->path,
                                (long long)rec_line, esc);
                        goto done;
                    }
            t->cols = fields;
            t->ncols = nf;
            t->header_line = rec_line;
            fields = NULL;
            capf = nf = 0;
            header_done = 1;
            continue;
        }
        if (nf != t->ncols) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s:line %lld: %d field%s, but the header (line %lld) has %d", t->path,
                    (long long)rec_line, nf, nf == 1 ? "" : "s", (long long)t->header_line, t->ncols);
            goto done;
        }
        if (table_grow(t, e)) goto done;
        memcpy(t->cells + t->n * t->ncols, fields, (size_t)nf * sizeof *fields);
        nf = 0;
        t->line[t->n++] = rec_line;
    }
    if (!header_done) {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: empty CSV file (no header row)", t->path);
        goto done;
    }
    rc = 0;
    goto done;
nomem:
    oom(e, t->path);
done:
    for (int i = 0; i < nf; i++) free(fields[i]);
    free(fields);
    free(b.s);
    return rc;
}

static ps_data_format format_of(const char *path) {
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash)) return PS_DATA_AUTO;
    if (strcasecmp(dot, ".jsonl") == 0 || strcasecmp(dot, ".ndjson") == 0) return PS_DATA_JSONL;
    if (strcasecmp(dot, ".csv") == 0) return PS_DATA_CSV;
    if (strcasecmp(dot, ".json") == 0) return PS_DATA_JSON;
    return PS_DATA_AUTO;
}

static int table_load(table *t, const char *path, ps_data_format fmt, const char *origin, const char *what, ps_error *e) {
    memset(t, 0, sizeof *t);
    t->path = path;
    if (fmt == PS_DATA_AUTO) fmt = format_of(path);
    if (fmt == PS_DATA_AUTO) {
        if (origin)
            return ps_fail(e, PS_EXIT_BADINPUT,
                           "%s.%s: cannot tell the format of '%s' from its extension; set format to jsonl, csv or json",
                           origin, what, path);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot tell the format from the extension (.jsonl, .csv or .json)", path);
    }
    t->fmt = fmt;
    int rc = read_text(t, origin, what, e);
    if (rc == 0) {
        if (fmt == PS_DATA_JSONL) rc = load_jsonl(t, e);
        else if (fmt == PS_DATA_CSV) rc = load_csv(t, e);
        else rc = load_json(t, e);
    }
    if (rc) table_free(t);
    return rc;
}

// Copies the named fields of record r into out[k] (malloc'd); names[k] NULL leaves out[k] alone.
static int table_get(const table *t, int64_t r, const char *const *names, char **out, int k, ps_error *e) {
    char where[64];
    if (t->fmt == PS_DATA_JSON) snprintf(where, sizeof where, ": [%lld]", (long long)r);
    else snprintf(where, sizeof where, ":line %lld", (long long)t->line[r]);
    cJSON *obj = NULL, *parsed = NULL;
    if (t->fmt == PS_DATA_JSONL) {
        const char *ls = t->buf + t->start[r];
        size_t ln = t->end[r] - t->start[r];
        if (ps_json_check_nul(ls, ln, t->path, t->line[r], e) != 0) return -1;
        const char *end = NULL;
        parsed = cJSON_ParseWithLengthOpts(ls, ln, &end, 0);
        size_t off = end && end >= ls ? (size_t)(end - ls) : 0;
        if (parsed) {
            while (off < ln && (ls[off] == ' ' || ls[off] == '\t')) off++;
            if (off < ln) {
                cJSON_Delete(parsed);
                return ps_fail(e, PS_EXIT_BADINPUT, "%s%s, column %zu: text after the JSON object (one object per line)",
                               t->path, where, off + 1);
            }
        } else {
            if (off > ln) off = ln;
            return ps_fail(e, PS_EXIT_BADINPUT, "%s%s, column %zu: JSON syntax error", t->path, where, off + 1);
        }
        obj = parsed;
    } else if (t->fmt == PS_DATA_JSON) {
        obj = cJSON_GetArrayItem(t->root, (int)r);
    }
    if (obj && !cJSON_IsObject(obj)) {
        char got[200];
        ps_json_describe(obj, got, sizeof got);
        cJSON_Delete(parsed);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s%s: expected a JSON object, got %s", t->path, where, got);
    }
    for (int i = 0; i < k; i++) {
        if (!names[i]) continue;
        char nm[160];
        ps_text_escape(names[i], nm, sizeof nm, 60);
        const char *val = NULL;
        if (obj) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, names[i]);
            if (!v) {
                cJSON_Delete(parsed);
                return ps_fail(e, PS_EXIT_BADINPUT, "%s%s: field '%s' missing", t->path, where, nm);
            }
            if (!cJSON_IsString(v)) {
                char got[200];
                ps_json_describe(v, got, sizeof got);
                cJSON_Delete(parsed);
                return ps_fail(e, PS_EXIT_BADINPUT, "%s%s: field '%s': expected a string, got %s", t->path, where, nm, got);
            }
            val = v->valuestring;
        } else {
            int c = 0;
            while (c < t->ncols && strcmp(t->cols[c], names[i]) != 0) c++;
            if (c == t->ncols) {
                char cols[512] = "";
                size_t o = 0;
                for (int j = 0; j < t->ncols && o + 4 < sizeof cols; j++) {
                    char esc[160];
                    ps_text_escape(t->cols[j], esc, sizeof esc, 40);
                    o += (size_t)snprintf(cols + o, sizeof cols - o, "%s%s", j ? ", " : "", esc);
                }
                return ps_fail(e, PS_EXIT_BADINPUT, "%s:line %lld: no column '%s' in the header (columns: %s)", t->path,
                               (long long)t->header_line, nm, cols);
            }
            val = t->cells[r * t->ncols + c];
        }
        if (!val[0]) {
            cJSON_Delete(parsed);
            return ps_fail(e, PS_EXIT_BADINPUT, "%s%s: field '%s' is empty", t->path, where, nm);
        }
        out[i] = strdup(val);
        if (!out[i]) { cJSON_Delete(parsed); return oom(e, t->path); }
    }
    cJSON_Delete(parsed);
    return 0;
}

// 1 when record r has field `name` (a CSV: a column of that name); a record that cannot be read counts as having
// it, so table_get reports what is wrong with it.
static int table_has(const table *t, int64_t r, const char *name) {
    if (t->fmt == PS_DATA_CSV) {
        for (int c = 0; c < t->ncols; c++)
            if (!strcmp(t->cols[c], name)) return 1;
        return 0;
    }
    if (t->fmt == PS_DATA_JSON) {
        const cJSON *obj = cJSON_GetArrayItem(t->root, (int)r);
        return !cJSON_IsObject(obj) || cJSON_GetObjectItemCaseSensitive(obj, name) != NULL;
    }
    cJSON *obj = cJSON_ParseWithLength(t->buf + t->start[r], t->end[r] - t->start[r]);
    const int has = !cJSON_IsObject(obj) || cJSON_GetObjectItemCaseSensitive(obj, name) != NULL;
    cJSON_Delete(obj);
    return has;
}

int ps_dataset_load(const ps_dataset_spec *spec, ps_item **items_out, int64_t *n_out, ps_error *e) {
    *items_out = NULL;
    *n_out = 0;
    if (spec->offset < 0 || spec->limit < 0 || spec->corrupted_offset < 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: offset and limit must be >= 0", spec->path);
    const char *clean = spec->clean ? spec->clean : "clean";
    const char *answer = spec->answer ? spec->answer : "answer";
    const char *wrong = spec->wrong ? spec->wrong : "wrong";
    const char *corrupted = spec->corrupted ? spec->corrupted : "corrupted";
    const char *cfield = spec->corrupted_field ? spec->corrupted_field : clean;
    table t, ct;
    memset(&ct, 0, sizeof ct);
    if (table_load(&t, spec->path, spec->format, spec->origin, "path", e)) return -1;
    ps_item *items = NULL;
    int64_t count = 0;
    int rc = -1;
    if (spec->offset >= t.n) {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: empty dataset: 0 items (the file has %lld record%s; offset %lld, limit %lld)",
                t.path, (long long)t.n, t.n == 1 ? "" : "s", (long long)spec->offset, (long long)spec->limit);
        goto out;
    }
    count = t.n - spec->offset;
    if (spec->limit > 0 && spec->limit < count) count = spec->limit;
    if (spec->corrupted_path) {
        if (table_load(&ct, spec->corrupted_path, spec->corrupted_format, spec->origin, "corrupted.path", e)) goto out;
        int64_t need = spec->offset + count - 1 + spec->corrupted_offset;   // last record read from ct
        if (need >= ct.n) {
            ps_fail(e, PS_EXIT_BADINPUT,
                    "%s: has %lld record%s, but record %lld of %s pairs with record %lld here (corrupted offset %lld)",
                    ct.path, (long long)ct.n, ct.n == 1 ? "" : "s", (long long)(spec->offset + count - 1), t.path,
                    (long long)need, (long long)spec->corrupted_offset);
            goto out;
        }
    }
    const int none = spec->no_corrupted && !spec->corrupted_path && !table_has(&t, spec->offset, corrupted);
    if (spec->no_corrupted) *spec->no_corrupted = none;
    items = calloc((size_t)count, sizeof *items);
    if (!items) { oom(e, t.path); goto out; }
    for (int64_t done = 0; done < count; done++) {
        int64_t r = spec->offset + done;
        ps_item *it = &items[done];
        const char *names[5] = {clean, spec->corrupted_path || none ? NULL : corrupted, answer, wrong, spec->group};
        char *vals[5] = {0};
        if (table_get(&t, r, names, vals, 5, e)) {
            for (int k = 0; k < 5; k++) free(vals[k]);
            goto out;
        }
        it->clean = vals[0];
        it->corrupted = vals[1];
        it->answer = vals[2];
        it->wrong = vals[3];
        it->group = vals[4];
        if (none && !(it->corrupted = strdup(it->clean))) { oom(e, t.path); goto out; }
        if (spec->corrupted_path && table_get(&ct, r + spec->corrupted_offset, &cfield, &it->corrupted, 1, e)) goto out;
    }
    rc = 0;
out:
    if (rc) {
        ps_items_free(items, count);   // calloc'd, so items not reached hold NULLs
    } else {
        *items_out = items;
        *n_out = count;
    }
    table_free(&t);
    table_free(&ct);
    return rc;
}
