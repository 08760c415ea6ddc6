// Unicode NFC of UTF-8 text (UAX #15): full canonical decomposition, canonical ordering by combining class, then
// canonical composition, Hangul syllables computed; the data tables are in unicode_nfc_table.c (generated).
#include "unicode_nfc.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum {
    S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
    L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT, S_COUNT = L_COUNT * N_COUNT,
    MAX_DECOMP = 4, // longest full canonical decomposition of one code point (tools/gen_unicode_nfc.py asserts it)
};

static uint8_t ccc_of(uint32_t c) {
    if (c < 0x300) return 0;
    size_t lo = 0, hi = ps_nfc_n_ccc;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < ps_nfc_ccc[mid].first) hi = mid;
        else if (c > ps_nfc_ccc[mid].last) lo = mid + 1;
        else return ps_nfc_ccc[mid].ccc;
    }
    return 0;
}

static const ps_nfc_decomp *decomp_of(uint32_t c) {
    if (c < 0xC0) return NULL;
    size_t lo = 0, hi = ps_nfc_n_decomps;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (c < ps_nfc_decomps[mid].cp) hi = mid;
        else if (c > ps_nfc_decomps[mid].cp) lo = mid + 1;
        else return &ps_nfc_decomps[mid];
    }
    return NULL;
}

// The primary composite of a + b, or 0.
static uint32_t compose(uint32_t a, uint32_t b) {
    if (a - L_BASE < L_COUNT && b - V_BASE < V_COUNT) return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
    if (a - S_BASE < S_COUNT && (a - S_BASE) % T_COUNT == 0 && b - T_BASE - 1 < T_COUNT - 1) return a + (b - T_BASE);
    size_t lo = 0, hi = ps_nfc_n_comp;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const ps_nfc_decomp *d = &ps_nfc_decomps[ps_nfc_comp[mid]];
        if (a < d->first || (a == d->first && b < d->second)) hi = mid;
        else if (a > d->first || b > d->second) lo = mid + 1;
        else return d->cp;
    }
    return 0;
}

// Appends the full canonical decomposition of c to out[*m...].
static void decompose(uint32_t c, uint32_t *out, size_t *m) {
    if (c - S_BASE < S_COUNT) {
        uint32_t i = c - S_BASE;
        out[(*m)++] = L_BASE + i / N_COUNT;
        out[(*m)++] = V_BASE + i % N_COUNT / T_COUNT;
        if (i % T_COUNT) out[(*m)++] = T_BASE + i % T_COUNT;
        return;
    }
    const ps_nfc_decomp *d = decomp_of(c);
    if (!d) { out[(*m)++] = c; return; }
    decompose(d->first, out, m);
    if (d->second) decompose(d->second, out, m);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

// Stable sort of cp[0..n) by class (all non-zero): insertion sort for the usual short runs, a keyed qsort (class,
// position) for long ones so that a text of many combining marks stays n log n.
static bool sort_run(uint32_t *cp, uint8_t *cc, size_t n) {
    if (n <= 32) {
        for (size_t i = 1; i < n; i++) {
            uint32_t c = cp[i];
            uint8_t k = cc[i];
            size_t j = i;
            for (; j > 0 && cc[j - 1] > k; j--) { cp[j] = cp[j - 1]; cc[j] = cc[j - 1]; }
            cp[j] = c;
            cc[j] = k;
        }
        return true;
    }
    uint64_t *key = malloc(n * sizeof *key);
    if (!key) return false;
    for (size_t i = 0; i < n; i++) key[i] = (uint64_t)cc[i] << 56 | (uint64_t)i << 21 | cp[i]; // i < 2^35
    qsort(key, n, sizeof *key, cmp_u64);
    for (size_t i = 0; i < n; i++) { cp[i] = (uint32_t)(key[i] & 0x1FFFFF); cc[i] = (uint8_t)(key[i] >> 56); }
    free(key);
    return true;
}

static size_t put_utf8(char *o, uint32_t c) {
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | c >> 6); o[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | c >> 12); o[1] = (char)(0x80 | (c >> 6 & 0x3F)); o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | c >> 18); o[1] = (char)(0x80 | (c >> 12 & 0x3F)); o[2] = (char)(0x80 | (c >> 6 & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

char *ps_utf8_nfc(const char *s, size_t n, size_t *out_n) {
    // Below U+0300 every character is its own NFC and none composes with a following one below U+0300.
    size_t i = 0;
    while (i < n && (unsigned char)s[i] < 0xCC) i++;
    if (i == n) {
        char *o = malloc(n + 1);
        if (!o) return NULL;
        memcpy(o, s, n);
        o[n] = 0;
        *out_n = n;
        return o;
    }
    size_t ncp = 0;
    for (i = 0; i < n; i++) ncp += ((unsigned char)s[i] & 0xC0) != 0x80;
    uint32_t *cp = malloc((ncp * MAX_DECOMP + 1) * sizeof *cp);
    uint8_t *cc = malloc(ncp * MAX_DECOMP + 1);
    if (!cp || !cc) { free(cp); free(cc); return NULL; }
    size_t m = 0;
    for (i = 0; i < n;) {
        unsigned char b = (unsigned char)s[i];
        size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
        uint32_t c = len == 1 ? b : b & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
        for (size_t k = 1; k < len && i + k < n; k++) c = c << 6 | ((unsigned char)s[i + k] & 0x3F);
        i += len;
        decompose(c, cp, &m);
    }
    for (size_t k = 0; k < m; k++) cc[k] = ccc_of(cp[k]);
    for (size_t a = 0; a < m;) {
        if (!cc[a]) { a++; continue; }
        size_t z = a;
        while (z < m && cc[z]) z++;
        if (!sort_run(cp + a, cc + a, z - a)) { free(cp); free(cc); return NULL; }
        a = z;
    }
    // Composition: a character joins the last starter unless blocked (a character between them of class 0 or of
    // a class not below its own; after ordering, the last one kept is the highest).
    size_t w = 0, starter = 0;
    bool have_starter = false;
    uint8_t last = 0;
    for (size_t r = 0; r < m; r++) {
        uint32_t c = cp[r];
        uint8_t k = cc[r];
        if (have_starter && (last == 0 || last < k)) {
            uint32_t comp = compose(cp[starter], c);
            if (comp) { cp[starter] = comp; continue; }
        }
        if (k == 0) { starter = w; have_starter = true; }
        last = k;
        cp[w++] = c;
    }
    free(cc);
    char *o = malloc(w * 4 + 1);
    if (!o) { free(cp); return NULL; }
    size_t on = 0;
    for (size_t k = 0; k < w; k++) on += put_utf8(o + on, cp[k]);
    o[on] = 0;
    free(cp);
    *out_n = on;
    return o;
}
