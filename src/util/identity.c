// A run's identity as a list of hashed parts, the sha256 cache of input files (OUT.h5.hashes) that lets a run
// skip rehashing a checkpoint whose size, mtime, inode and device are unchanged, and canonical JSON text.
#include "ps_identity.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    char *path;
    char sha256[65];
    int64_t size, mtime_s, mtime_ns, ino, dev;
} cache_entry;

struct ps_hash_cache {
    char *path;
    cache_entry *f;
    int64_t n_f, cap_f;
    char rec_identity[65];   // the recorded run ("" when none)
    ps_identity rec;
    int dirty;
};

static int oom(ps_error *e) { return ps_fail(e, PS_EXIT_RUNTIME, "out of memory"); }

static int grow(void **p, int64_t *cap, int64_t need, size_t elem) {
    if (need <= *cap) return 0;
    int64_t nc = *cap ? *cap * 2 : 16;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, (size_t)nc * elem);
    if (!q) return -1;
    *p = q;
    *cap = nc;
    return 0;
}

static int is_hex64(const char *s) {
    if (strlen(s) != 64) return 0;
    for (const char *q = s; *q; q++)
        if (!((*q >= '0' && *q <= '9') || (*q >= 'a' && *q <= 'f'))) return 0;
    return 1;
}

// Appends a part, copying kind and name. Names with a newline cannot be written to the cache file; they still count.
static int add_part(ps_identity *id, const char *kind, const char *name, const char sha[65], int64_t bytes) {
    if (grow((void **)&id->p, &id->cap, id->n + 1, sizeof *id->p)) return -1;
    ps_id_part *p = &id->p[id->n];
    p->kind = strdup(kind);
    p->name = strdup(name);
    if (!p->kind || !p->name) { free(p->kind); free(p->name); return -1; }
    memcpy(p->sha256, sha, 65);
    p->bytes = bytes;
    id->n++;
    return 0;
}

void ps_identity_free(ps_identity *id) {
    for (int64_t i = 0; i < id->n; i++) { free(id->p[i].kind); free(id->p[i].name); }
    free(id->p);
    memset(id, 0, sizeof *id);
}

// ---- the cache file ----

// One line, already cut at its newline. Unreadable lines are skipped (a cache never fails a run).
static void parse_line(ps_hash_cache *c, char *line) {
    if (line[0] == 'F' && line[1] == ' ') {
        cache_entry ce = {0};
        char sha[65];
        int off = 0;
        if (sscanf(line + 2, "%64s %" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64 " %" SCNd64 " %n", sha, &ce.size,
                   &ce.mtime_s, &ce.mtime_ns, &ce.ino, &ce.dev, &off) != 6 || !off || !is_hex64(sha) || line[2 + off] != '/')
            return;
        if (grow((void **)&c->f, &c->cap_f, c->n_f + 1, sizeof *c->f) || !(ce.path = strdup(line + 2 + off))) return;
        memcpy(ce.sha256, sha, 65);
        c->f[c->n_f++] = ce;
    } else if (line[0] == 'R' && line[1] == ' ') {
        char ident[65], kind[64], sha[65];
        int64_t bytes;
        int off = 0;
        if (sscanf(line + 2, "%64s %63s %64s %" SCNd64 " %n", ident, kind, sha, &bytes, &off) != 4 || !off ||
            !is_hex64(ident) || !is_hex64(sha))
            return;
        if (c->rec_identity[0] && strcmp(c->rec_identity, ident)) return; // one recorded run only
        memcpy(c->rec_identity, ident, 65);
        for (char *q = kind; *q; q++) if (*q == '_') *q = ' ';
        add_part(&c->rec, kind, line + 2 + off, sha, bytes);
    }
}

int ps_hash_cache_load(ps_hash_cache **out, const char *path, ps_error *e) {
    *out = NULL;
    ps_hash_cache *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) { free(c); return oom(e); }
    FILE *f = fopen(path, "r");
    struct stat st;
    if (f && (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode))) { fclose(f); f = NULL; } // never block on a FIFO
    if (f) {
        char *line = NULL;
        size_t cap = 0;
        ssize_t len;
        int first = 1;
        while ((len = getline(&line, &cap, f)) > 0) {
            if (line[len - 1] == '\n') line[--len] = 0;
            if (first && strcmp(line, "patchsweep-hashes 1") != 0) break; // another format: start afresh
            if (!first) parse_line(c, line);
            first = 0;
        }
        free(line);
        fclose(f);
    }
    *out = c;
    return 0;
}

void ps_hash_cache_free(ps_hash_cache *c) {
    if (!c) return;
    for (int64_t i = 0; i < c->n_f; i++) free(c->f[i].path);
    free(c->f);
    ps_identity_free(&c->rec);
    free(c->path);
    free(c);
}

const char *ps_hash_cache_path(const ps_hash_cache *c) { return c->path; }

static void human_size(int64_t b, char *out, size_t cap) {
    if (b >= (int64_t)1 << 30) snprintf(out, cap, "%.1f GB", (double)b / 1e9);
    else snprintf(out, cap, "%.1f MB", (double)b / 1e6);
}

int ps_hash_cache_file(ps_hash_cache *c, const char *path, int64_t big_bytes, char hex[65], int64_t *bytes,
                       int *cached, ps_error *e) {
    *cached = 0;
    struct stat st;
    if (stat(path, &st) != 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode)) return ps_check_regular(path, NULL, e);
    *bytes = (int64_t)st.st_size;
    cache_entry key = {.size = (int64_t)st.st_size, .mtime_s = (int64_t)st.st_mtim.tv_sec,
                       .mtime_ns = (int64_t)st.st_mtim.tv_nsec, .ino = (int64_t)st.st_ino, .dev = (int64_t)st.st_dev};
    cache_entry *hit = NULL;
    for (int64_t i = 0; c && i < c->n_f && !hit; i++)
        if (!strcmp(c->f[i].path, path)) hit = &c->f[i];
    if (hit && hit->size == key.size && hit->mtime_s == key.mtime_s && hit->mtime_ns == key.mtime_ns &&
        hit->ino == key.ino && hit->dev == key.dev) {
        memcpy(hex, hit->sha256, 65);
        *cached = 1;
        return 0;
    }
    if (big_bytes >= 0 && *bytes >= big_bytes) {
        const char *base = strrchr(path, '/');
        char hs[32], eb[512], ec[1024];
        human_size(*bytes, hs, sizeof hs);
        fprintf(stderr, "patchsweep: hashing %s (%s) once; cached in %s\n", ps_escape(base ? base + 1 : path, eb, sizeof eb),
                hs, c ? ps_escape(c->path, ec, sizeof ec) : "(no cache)");
    }
    if (ps_sha256_file(path, hex, e) != 0) return -1;
    // A file changed while it was hashed would be cached under its new stat with its old bytes' hash.
    struct stat after;
    if (!c || stat(path, &after) != 0 || after.st_mtim.tv_sec != st.st_mtim.tv_sec ||
        after.st_mtim.tv_nsec != st.st_mtim.tv_nsec || after.st_size != st.st_size || strchr(path, '\n'))
        return 0;
    if (!hit) {
        if (grow((void **)&c->f, &c->cap_f, c->n_f + 1, sizeof *c->f) || !(key.path = strdup(path))) return 0;
        hit = &c->f[c->n_f++];
    } else {
        key.path = hit->path;
    }
    memcpy(key.sha256, hex, 65);
    *hit = key;
    c->dirty = 1;
    return 0;
}

int ps_hash_cache_record(ps_hash_cache *c, const ps_identity *id, const char hex[65], ps_error *e) {
    if (!strcmp(c->rec_identity, hex) && c->rec.n == id->n) return 0;
    ps_identity_free(&c->rec);
    c->rec_identity[0] = 0;
    for (int64_t i = 0; i < id->n; i++)
        if (add_part(&c->rec, id->p[i].kind, id->p[i].name, id->p[i].sha256, id->p[i].bytes)) return oom(e);
    memcpy(c->rec_identity, hex, 65);
    c->dirty = 1;
    return 0;
}

void ps_hash_cache_save(ps_hash_cache *c) {
    if (!c || !c->dirty) return;
    size_t tl = strlen(c->path) + 32;
    char *tmp = malloc(tl);
    if (!tmp) return;
    snprintf(tmp, tl, "%s.tmp%ld", c->path, (long)getpid());
    FILE *f = fopen(tmp, "w");
    if (!f) { free(tmp); return; }
    fprintf(f, "patchsweep-hashes 1\n");
    for (int64_t i = 0; i < c->n_f; i++) {
        const cache_entry *x = &c->f[i];
        fprintf(f, "F %s %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %" PRId64 " %s\n", x->sha256, x->size,
                x->mtime_s, x->mtime_ns, x->ino, x->dev, x->path);
    }
    for (int64_t i = 0; c->rec_identity[0] && i < c->rec.n; i++) {
        const ps_id_part *p = &c->rec.p[i];
        if (strchr(p->name, '\n')) continue;
        fprintf(f, "R %s ", c->rec_identity);
        for (const char *q = p->kind; *q; q++) fputc(*q == ' ' ? '_' : *q, f); // the kind is one word on the line
        fprintf(f, " %s %" PRId64 " %s\n", p->sha256, p->bytes, p->name);
    }
    int bad = ferror(f);
    bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
    bad |= fclose(f) != 0;
    if (bad || rename(tmp, c->path) != 0) unlink(tmp);
    else c->dirty = 0;
    free(tmp);
}

// ---- the identity ----

int ps_identity_add_file(ps_identity *id, ps_hash_cache *c, const char *kind, const char *path, int64_t big_bytes,
                         ps_error *e) {
    char abs[PATH_MAX];
    if (!realpath(path, abs)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
    char hex[65];
    int64_t bytes = 0;
    int cached;
    if (ps_hash_cache_file(c, abs, big_bytes, hex, &bytes, &cached, e) != 0) return -1;
    for (int64_t i = 0; i < id->n; i++) // a file named twice (index and shard lists) counts once
        if (id->p[i].bytes >= 0 && !strcmp(id->p[i].name, abs) && !strcmp(id->p[i].kind, kind)) return 0;
    return add_part(id, kind, abs, hex, bytes) ? oom(e) : 0;
}

int ps_identity_add_text(ps_identity *id, const char *kind, const char *name, const char *text, ps_error *e) {
    char hex[65];
    ps_sha256_hex(text, strlen(text), hex);
    return add_part(id, kind, name, hex, -1) ? oom(e) : 0;
}

// sha256 of "kind\tname\tsha\n" lines of the parts matching kind (NULL: all).
static void digest_parts(const ps_identity *id, const char *kind, char hex[65]) {
    size_t n = 1;
    for (int64_t i = 0; i < id->n; i++)
        if (!kind || !strcmp(id->p[i].kind, kind)) n += strlen(id->p[i].kind) + strlen(id->p[i].name) + 68;
    char *buf = malloc(n), *q = buf;
    if (!buf) { hex[0] = 0; return; }
    for (int64_t i = 0; i < id->n; i++)
        if (!kind || !strcmp(id->p[i].kind, kind))
            q += sprintf(q, "%s\t%s\t%s\n", id->p[i].kind, id->p[i].name, id->p[i].sha256);
    ps_sha256_hex(buf, (size_t)(q - buf), hex);
    free(buf);
}

void ps_identity_digest(const ps_identity *id, char hex[65]) { digest_parts(id, NULL, hex); }

void ps_identity_digest_kind(const ps_identity *id, const char *kind, char hex[65]) {
    int64_t count = 0, last = -1;
    for (int64_t i = 0; i < id->n; i++)
        if (!strcmp(id->p[i].kind, kind)) { count++; last = i; }
    if (count == 0) hex[0] = 0;
    else if (count == 1) memcpy(hex, id->p[last].sha256, 65);
    else digest_parts(id, kind, hex);
}

char *ps_identity_inputs_json(const ps_identity *id, const ps_identity *more) {
    ps_jbuf b = {0};
    ps_jbuf_raw(&b, "[");
    int first = 1;
    for (int64_t j = 0; j < id->n + (more ? more->n : 0); j++) {
        const ps_id_part *p = j < id->n ? &id->p[j] : &more->p[j - id->n];
        if (p->bytes < 0) continue;
        ps_jbuf_raw(&b, first ? "{" : ",{");
        ps_jbuf_key(&b, "kind", 1); ps_jbuf_str(&b, p->kind);
        ps_jbuf_key(&b, "path", 0); ps_jbuf_str(&b, p->name);
        ps_jbuf_key(&b, "sha256", 0); ps_jbuf_str(&b, p->sha256);
        ps_jbuf_key(&b, "bytes", 0); ps_jbuf_int(&b, p->bytes);
        ps_jbuf_raw(&b, "}");
        first = 0;
    }
    ps_jbuf_raw(&b, "]");
    if (b.oom) { free(b.s); return NULL; }
    return b.s;
}

int ps_hash_cache_explain(const ps_hash_cache *c, const char *old_hex, const ps_identity *id, char *msg, size_t cap) {
    if (!c || !c->rec_identity[0] || (old_hex && strcmp(old_hex, c->rec_identity))) return -1;
    const ps_identity *r = &c->rec;
    // Files first (the most specific answer), by path; then the other parts by kind.
    for (int pass = 0; pass < 2; pass++)
        for (int64_t i = 0; i < id->n; i++) {
            const ps_id_part *p = &id->p[i];
            if ((p->bytes >= 0) != (pass == 0)) continue;
            const ps_id_part *q = NULL;
            for (int64_t k = 0; k < r->n && !q; k++)
                if (!strcmp(r->p[k].kind, p->kind) && (p->bytes < 0 || !strcmp(r->p[k].name, p->name))) q = &r->p[k];
            if (q && !strcmp(q->sha256, p->sha256) && !strcmp(q->name, p->name)) continue;
            if (!q && p->bytes >= 0) snprintf(msg, cap, "%s %s is new", p->kind, p->name);
            else if (!q) snprintf(msg, cap, "%s is new (%s)", p->kind, p->name);
            else if (p->bytes >= 0) snprintf(msg, cap, "%s %s changed", p->kind, p->name);
            else if (strcmp(q->name, p->name)) snprintf(msg, cap, "%s changed (%s, was %s)", p->kind, p->name, q->name);
            else snprintf(msg, cap, "%s changed (%s)", p->kind, p->name);
            return 0;
        }
    for (int64_t k = 0; k < r->n; k++) { // something the recorded run used and this one does not
        const ps_id_part *q = &r->p[k];
        int found = 0;
        for (int64_t i = 0; i < id->n && !found; i++)
            found = !strcmp(id->p[i].kind, q->kind) && (q->bytes < 0 || !strcmp(id->p[i].name, q->name));
        if (!found) { snprintf(msg, cap, "%s %s is no longer used", q->kind, q->name); return 0; }
    }
    return -1;
}

// ---- canonical JSON text ----

static void jbuf_put(ps_jbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 256;
        while (nc < b->n + n + 1) nc *= 2;
        char *q = realloc(b->s, nc);
        if (!q) { b->oom = 1; return; }
        b->s = q;
        b->cap = nc;
    }
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = 0;
}

void ps_jbuf_raw(ps_jbuf *b, const char *text) { jbuf_put(b, text, strlen(text)); }

void ps_jbuf_str(ps_jbuf *b, const char *s) {
    if (!s) { ps_jbuf_raw(b, "null"); return; }
    jbuf_put(b, "\"", 1);
    for (const unsigned char *q = (const unsigned char *)s; *q; q++) {
        char esc[8];
        if (*q == '"' || *q == '\\') { esc[0] = '\\'; esc[1] = (char)*q; jbuf_put(b, esc, 2); }
        else if (*q < 0x20) { snprintf(esc, sizeof esc, "\\u%04x", *q); jbuf_put(b, esc, 6); }
        else jbuf_put(b, (const char *)q, 1);
    }
    jbuf_put(b, "\"", 1);
}

void ps_jbuf_key(ps_jbuf *b, const char *key, int first) {
    if (!first) jbuf_put(b, ",", 1);
    ps_jbuf_str(b, key);
    jbuf_put(b, ":", 1);
}

void ps_jbuf_int(ps_jbuf *b, int64_t v) {
    char t[32];
    snprintf(t, sizeof t, "%" PRId64, v);
    ps_jbuf_raw(b, t);
}

void ps_jbuf_ints(ps_jbuf *b, const int64_t *v, int64_t n) {
    if (!v) { ps_jbuf_raw(b, "null"); return; }
    jbuf_put(b, "[", 1);
    for (int64_t i = 0; i < n; i++) {
        if (i) jbuf_put(b, ",", 1);
        ps_jbuf_int(b, v[i]);
    }
    jbuf_put(b, "]", 1);
}

// ---- what differs between two canonical JSON objects ----

typedef struct { const char *key, *val; size_t key_n, val_n; } jmember;

// The top-level members of a canonical object (no whitespace); -1 when s is not one. *m: malloc'd.
static int split_object(const char *s, jmember **m, int64_t *n) {
    *m = NULL;
    *n = 0;
    int64_t cap = 0;
    if (!s || *s != '{') return -1;
    const char *q = s + 1;
    if (*q == '}') return 0;
    for (;;) {
        if (*q != '"') return -1;
        const char *k = ++q;
        while (*q && *q != '"') q += *q == '\\' && q[1] ? 2 : 1;
        if (*q != '"' || q[1] != ':') return -1;
        jmember x = {.key = k, .key_n = (size_t)(q - k)};
        q += 2;
        x.val = q;
        int depth = 0, in_str = 0;
        for (; *q; q++) {
            if (in_str) { if (*q == '\\' && q[1]) q++; else if (*q == '"') in_str = 0; continue; }
            if (*q == '"') in_str = 1;
            else if (*q == '{' || *q == '[') depth++;
            else if (*q == '}' || *q == ']') { if (depth == 0) break; depth--; }
            else if (*q == ',' && depth == 0) break;
        }
        if (!*q) return -1;
        x.val_n = (size_t)(q - x.val);
        if (grow((void **)m, &cap, *n + 1, sizeof **m)) return -1;
        (*m)[(*n)++] = x;
        if (*q == '}') return 0;
        q++;
    }
}

int ps_canonical_first_diff(const char *a, const char *b, char *field, size_t cap) {
    jmember *ma = NULL, *mb = NULL;
    int64_t na = 0, nb = 0;
    int rc = -1;
    if (split_object(a, &ma, &na) == 0 && split_object(b, &mb, &nb) == 0) {
        for (int pass = 0; pass < 2 && rc; pass++) {
            const jmember *x = pass ? mb : ma, *y = pass ? ma : mb;
            const int64_t nx = pass ? nb : na, ny = pass ? na : nb;
            for (int64_t i = 0; i < nx && rc; i++) {
                const jmember *hit = NULL;
                for (int64_t j = 0; j < ny && !hit; j++)
                    if (y[j].key_n == x[i].key_n && !memcmp(y[j].key, x[i].key, x[i].key_n)) hit = &y[j];
                if (!hit || hit->val_n != x[i].val_n || memcmp(hit->val, x[i].val, x[i].val_n)) {
                    snprintf(field, cap, "%.*s", (int)x[i].key_n, x[i].key);
                    rc = 0;
                }
            }
        }
    }
    free(ma);
    free(mb);
    return rc;
}
