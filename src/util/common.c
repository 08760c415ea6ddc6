// Shared basics: error formatting, whole-file reads, sha256 (OpenSSL), UTF-8 checks, path helpers.
#include "ps_common.h"

#include <errno.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int ps_fail(ps_error *e, int code, const char *fmt, ...) {
    if (e && e->code == 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->msg, sizeof e->msg, fmt, ap);
        va_end(ap);
        e->code = code;
    }
    return -1;
}

char *ps_read_file(const char *path, size_t *len, ps_error *e) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    if (fseek(f, 0, SEEK_END) != 0) { fclose(f); ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot seek", path); return NULL; }
    long n = ftell(f);
    if (n < 0) { fclose(f); ps_fail(e, PS_EXIT_BADINPUT, "%s: not a regular file", path); return NULL; }
    rewind(f);
    char *buf = malloc((size_t)n + 1);
    if (!buf) { fclose(f); ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory reading %ld bytes", path, n); return NULL; }
    if (fread(buf, 1, (size_t)n, f) != (size_t)n) {
        fclose(f);
        free(buf);
        ps_fail(e, PS_EXIT_BADINPUT, "%s: short read", path);
        return NULL;
    }
    fclose(f);
    buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

int ps_sha256_file(const char *path, char hex[65], ps_error *e) {
    FILE *f = fopen(path, "rb");
    if (!f) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    static const size_t chunk = 1 << 20;
    unsigned char *buf = malloc(chunk);
    size_t n;
    while ((n = fread(buf, 1, chunk, f)) > 0) EVP_DigestUpdate(ctx, buf, n);
    free(buf);
    fclose(f);
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_DigestFinal_ex(ctx, md, &mdlen);
    EVP_MD_CTX_free(ctx);
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", md[i]);
    hex[64] = 0;
    return 0;
}

void ps_sha256_hex(const void *data, size_t n, char hex[65]) {
    unsigned char md[32];
    unsigned int mdlen = 0;
    EVP_Digest(data, n, md, &mdlen, EVP_sha256(), NULL);
    for (int i = 0; i < 32; i++) sprintf(hex + 2 * i, "%02x", md[i]);
    hex[64] = 0;
}

int ps_utf8_check(const char *s, size_t n, size_t *bad_offset) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        size_t len;
        unsigned min;
        if (c < 0x80) { i++; continue; }
        else if ((c & 0xE0) == 0xC0) { len = 2; min = 0x80; c &= 0x1F; }
        else if ((c & 0xF0) == 0xE0) { len = 3; min = 0x800; c &= 0x0F; }
        else if ((c & 0xF8) == 0xF0) { len = 4; min = 0x10000; c &= 0x07; }
        else goto bad;
        if (i + len > n) goto bad;
        for (size_t k = 1; k < len; k++) {
            if ((u[i + k] & 0xC0) != 0x80) goto bad;
            c = (c << 6) | (u[i + k] & 0x3F);
        }
        if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) goto bad;
        i += len;
    }
    return 0;
bad:
    if (bad_offset) *bad_offset = i;
    return -1;
}

void ps_line_col(const char *text, size_t off, int *line, int *col) {
    int l = 1, c = 1;
    for (size_t i = 0; i < off && text[i]; i++) {
        if (text[i] == '\n') { l++; c = 1; }
        else c++;
    }
    *line = l;
    *col = c;
}

int ps_edit_distance(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    int *prev = malloc((nb + 1) * sizeof(int)), *cur = malloc((nb + 1) * sizeof(int));
    for (size_t j = 0; j <= nb; j++) prev[j] = (int)j;
    for (size_t i = 1; i <= na; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= nb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        int *t = prev; prev = cur; cur = t;
    }
    int d = prev[nb];
    free(prev);
    free(cur);
    return d;
}

char *ps_path_join(const char *a, const char *b) {
    if (b[0] == '/' || !a || !a[0] || strcmp(a, ".") == 0) return strdup(b);
    size_t n = strlen(a) + strlen(b) + 2;
    char *r = malloc(n);
    snprintf(r, n, "%s/%s", a, b);
    return r;
}

char *ps_dirname(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}
