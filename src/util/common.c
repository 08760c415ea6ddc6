// Shared basics: error formatting, whole-file reads, sha256 (OpenSSL), UTF-8 checks, path helpers.
#include "ps_common.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

// Length of the valid UTF-8 sequence at s[0..n) that is not a C1 control (U+0080..U+009F), or 0.
static size_t printable_utf8(const unsigned char *s, size_t n) {
    size_t bad, len = s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : 2;
    if (len > n || ps_utf8_check((const char *)s, len, &bad) != 0) return 0;
    if (s[0] == 0xC2 && s[1] < 0xA0) return 0;
    return len;
}

const char *ps_escape(const char *s, char *out, size_t cap) {
    const unsigned char *u = (const unsigned char *)(s ? s : "");
    size_t n = strlen((const char *)u), o = 0;
    if (cap == 0) return out;
    for (size_t i = 0; i < n;) {
        char esc[8];
        size_t k = 0, take = 1;
        if (u[i] == '\n') k = (size_t)snprintf(esc, sizeof esc, "\\n");
        else if (u[i] == '\t') k = (size_t)snprintf(esc, sizeof esc, "\\t");
        else if (u[i] == '\r') k = (size_t)snprintf(esc, sizeof esc, "\\r");
        else if (u[i] < 0x20 || u[i] == 0x7F) k = (size_t)snprintf(esc, sizeof esc, "\\x%02x", u[i]);
        else if (u[i] >= 0x80 && (take = printable_utf8(u + i, n - i)) == 0) {
            k = (size_t)snprintf(esc, sizeof esc, "\\x%02x", u[i]);
            take = 1;
        }
        const char *src = k ? esc : (const char *)u + i;
        size_t len = k ? k : take;
        if (o + len + 1 > cap) break; // cut at a whole character or escape
        memcpy(out + o, src, len);
        o += len;
        i += take;
    }
    out[o] = 0;
    return out;
}

int ps_fail(ps_error *e, int code, const char *fmt, ...) {
    if (e && e->code == 0) {
        // Formatted first, then escaped: file names and values from the input can hold newlines or terminal
        // escapes, and every message must stay one harmless line.
        char raw[PS_ERR_MAX];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(raw, sizeof raw, fmt, ap);
        va_end(ap);
        ps_escape(raw, e->msg, sizeof e->msg);
        e->code = code;
    }
    return -1;
}

static const char *file_kind(mode_t m) {
    return S_ISDIR(m) ? "a directory" : S_ISFIFO(m) ? "a FIFO" : S_ISCHR(m) ? "a character device"
           : S_ISBLK(m) ? "a block device" : S_ISSOCK(m) ? "a socket" : "not a plain file";
}

static int not_regular(const char *path, const char *label, mode_t m, ps_error *e) {
    if (label) return ps_fail(e, PS_EXIT_BADINPUT, "%s: '%s' is not a regular file (%s)", label, path, file_kind(m));
    return ps_fail(e, PS_EXIT_BADINPUT, "%s: not a regular file (%s)", path, file_kind(m));
}

int ps_check_regular(const char *path, const char *label, ps_error *e) {
    struct stat st;
    if (stat(path, &st) != 0) {
        if (label) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open '%s': %s", label, path, strerror(errno));
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
    }
    return S_ISREG(st.st_mode) ? 0 : not_regular(path, label, st.st_mode, e);
}

int ps_open_regular(const char *path, int64_t *size, ps_error *e) {
    // O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever. It is cleared again
    // once fstat has shown a regular file (where it changes nothing anyway).
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot stat: %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return not_regular(path, NULL, st.st_mode, e);
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    if (size) *size = (int64_t)st.st_size;
    return fd;
}

char *ps_read_file(const char *path, size_t *len, ps_error *e) {
    int64_t n = 0;
    int fd = ps_open_regular(path, &n, e);
    if (fd < 0) return NULL;
    char *buf = (uint64_t)n < SIZE_MAX ? malloc((size_t)n + 1) : NULL;
    if (!buf) {
        close(fd);
        ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory reading %lld bytes", path, (long long)n);
        return NULL;
    }
    size_t got = 0;
    while (got < (size_t)n) {
        ssize_t r = read(fd, buf + got, (size_t)n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            int err = r < 0 ? errno : 0;
            close(fd);
            free(buf);
            ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: short read%s%s", path, got, err ? ": " : " (the file shrank)",
                    err ? strerror(err) : "");
            return NULL;
        }
        got += (size_t)r;
    }
    close(fd);
    buf[n] = 0;
    if (len) *len = (size_t)n;
    return buf;
}

int ps_sha256_file(const char *path, char hex[65], ps_error *e) {
    int fd = ps_open_regular(path, NULL, e);
    if (fd < 0) return -1;
    FILE *f = fdopen(fd, "rb");
    static const size_t chunk = 1 << 20;
    unsigned char *buf = malloc(chunk);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!f || !buf || !ctx) {
        if (f) fclose(f);
        else close(fd);
        free(buf);
        EVP_MD_CTX_free(ctx);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory hashing the file", path);
    }
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    size_t n;
    while ((n = fread(buf, 1, chunk, f)) > 0) EVP_DigestUpdate(ctx, buf, n);
    int err = ferror(f);
    free(buf);
    fclose(f);
    if (err) { EVP_MD_CTX_free(ctx); return ps_fail(e, PS_EXIT_RUNTIME, "%s: read error while hashing", path); }
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

int ps_path_exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

int ps_ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

char *ps_dirname(const char *path) {
    const char *slash = strrchr(path, '/');
    if (!slash) return strdup(".");
    if (slash == path) return strdup("/");
    return strndup(path, (size_t)(slash - path));
}
