// Tokenizers as Hugging Face ships them: GPT-2 byte-level BPE and Llama SentencePiece BPE with byte fallback.
// Loaders for tokenizer.json, vocab.json + merges.txt and tokenizer.model; encode/decode mirror HF tokenizers' code.
#include "ps_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cjson/cJSON.h>
#include <errno.h>
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// ------------------------------------------------------------------------------------------------ small helpers

typedef struct {
    int32_t *v;
    int64_t n, cap;
} idvec;

static bool idvec_push(idvec *a, int32_t x) {
    if (a->n == a->cap) {
        int64_t cap = a->cap ? 2 * a->cap : 64;
        int32_t *v = realloc(a->v, (size_t)cap * sizeof *v);
        if (!v) return false;
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return true;
}

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static bool sbuf_put(sbuf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) return false;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return true;
}

static int oom(ps_error *e) { return ps_fail(e, PS_EXIT_RUNTIME, "out of memory in the tokenizer"); }

// Length of the UTF-8 sequence led by c (input already validated).
static size_t u8len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

static uint32_t u8decode(const char *s, size_t *len) {
    const unsigned char *u = (const unsigned char *)s;
    size_t n = u8len(u[0]);
    uint32_t c = n == 1 ? u[0] : n == 2 ? (u[0] & 0x1Fu) : n == 3 ? (u[0] & 0x0Fu) : (u[0] & 0x07u);
    for (size_t k = 1; k < n; k++) c = (c << 6) | (u[k] & 0x3Fu);
    *len = n;
    return c;
}

static size_t u8encode(uint32_t c, char out[4]) {
    if (c < 0x80) { out[0] = (char)c; return 1; }
    if (c < 0x800) { out[0] = (char)(0xC0 | (c >> 6)); out[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        out[0] = (char)(0xE0 | (c >> 12)); out[1] = (char)(0x80 | ((c >> 6) & 0x3F)); out[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (c >> 18)); out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((c >> 6) & 0x3F)); out[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

static size_t u8count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

// Unicode White_Space, which is what Rust's char::is_whitespace and Oniguruma's \s test.
static bool is_white_space(uint32_t c) {
    return (c >= 9 && c <= 13) || c == 32 || c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) ||
           c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

// Rust's String::from_utf8_lossy: each maximal invalid subpart becomes one U+FFFD (HF's ByteLevel decoder uses it).
static bool append_lossy(sbuf *out, const unsigned char *s, size_t n) {
    static const char repl[] = "\xEF\xBF\xBD";
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { if (!sbuf_put(out, s + i, 1)) return false; i++; continue; }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; if (c == 0xE0) lo = 0xA0; if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; if (c == 0xF0) lo = 0x90; if (c == 0xF4) hi = 0x8F; }
        else { if (!sbuf_put(out, repl, 3)) return false; i++; continue; }
        size_t j = i + 1, k = 0;
        for (; k < need && j < n; k++, j++) {
            unsigned d = s[j];
            if (k == 0 ? (d < lo || d > hi) : (d < 0x80 || d > 0xBF)) break;
        }
        if (k == need) { if (!sbuf_put(out, s + i, need + 1)) return false; }
        else if (!sbuf_put(out, repl, 3)) return false;
        i = j;
    }
    return true;
}

// Every occurrence of a replaced by b (a non-empty), appended to out.
static bool replace_all(sbuf *out, const char *x, size_t n, const char *a, const char *b) {
    size_t al = strlen(a), bl = strlen(b);
    if (!sbuf_put(out, "", 0)) return false;
    for (size_t i = 0; i < n;) {
        if (al && i + al <= n && memcmp(x + i, a, al) == 0) {
            if (!sbuf_put(out, b, bl)) return false;
            i += al;
        } else {
            if (!sbuf_put(out, x + i, 1)) return false;
            i++;
        }
    }
    return true;
}

static uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 16777619u; }
    return h;
}

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

static size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

// GPT-2's bytes_to_unicode(): printable bytes stand for themselves, the other 68 map to U+0100.. in byte order.
static void byte_level_tables(uint32_t b2u[256], int16_t u2b[324]) {
    int extra = 0;
    for (int i = 0; i < 324; i++) u2b[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
        b2u[b] = keep ? (uint32_t)b : (uint32_t)(256 + extra++);
        u2b[b2u[b]] = (int16_t)b;
    }
}

// ------------------------------------------------------------------------------------------------ the tokenizer

enum { F_MODEL = 1, F_ADDED = 2, F_SPECIAL = 4 };
enum { PRE_NONE, PRE_BYTE_LEVEL, PRE_METASPACE };
enum { SCHEME_ALWAYS, SCHEME_FIRST, SCHEME_NEVER };
enum { NORM_PREPEND, NORM_REPLACE };
enum { DEC_BYTE_LEVEL, DEC_REPLACE, DEC_BYTE_FALLBACK, DEC_FUSE, DEC_STRIP, DEC_METASPACE };

typedef struct {
    int kind;
    char *a, *b; // prepend a / replace a with b
} norm_op;

typedef struct {
    int kind;
    char *a, *b;            // Replace a -> b; Strip content a; Metaspace replacement a
    int start, stop, scheme; // Strip counts; Metaspace prepend scheme
} dec_op;

typedef struct {
    int32_t id;
    char *content;
    size_t len;
    bool lstrip, rstrip, normalized, special;
} added_token;

typedef struct {
    uint64_t key; // (left id << 32) | right id
    int32_t rank, new_id; // rank -1: empty slot
} merge_slot;

typedef struct {
    char *key;
    size_t klen;
    uint32_t hash;
    int32_t *ids;
    int32_t n;
} cache_slot;

#define CACHE_SLOTS 32768
#define CACHE_MAX_ENTRIES 10000 // HF's default BPE cache capacity
#define CACHE_MAX_WORD 256

struct ps_tokenizer {
    char *path;
    ps_tokenizer_kind kind;
    int64_t n;           // table size: largest id + 1
    sbuf arena;          // spellings and decoded texts
    int64_t *piece_off;  // -1: no token with this id
    int32_t *piece_len;
    int64_t *text_off;
    int32_t *text_len;
    uint8_t *flags;
    int32_t *map;        // open addressing over model-vocabulary spellings -> id
    uint32_t *map_hash;
    size_t map_cap;
    merge_slot *merges;
    size_t merge_cap;
    int64_t n_merges;
    added_token *added;
    int n_added;
    norm_op *norm;
    int n_norm;
    int pre;
    bool bl_prefix_space, bl_regex;
    char *ms_repl;
    int ms_scheme;
    bool ms_split;
    dec_op *dec;
    int n_dec;
    bool has_decoder;
    bool byte_fallback, fuse_unk;
    int32_t unk_id, bos_id, eos_id;
    int32_t byte_id[256];    // byte-level: the one-character token of each byte
    int32_t byte_piece[256]; // byte fallback: <0xXX>
    uint32_t b2u[256];
    int16_t u2b[324];
    pcre2_code *re;
    pthread_mutex_t cache_mu;
    cache_slot *cache;
    size_t cache_count;
};

static const char *piece_of(const ps_tokenizer *t, int32_t id) { return t->arena.p + t->piece_off[id]; }

static bool valid_id(const ps_tokenizer *t, int64_t id) { return id >= 0 && id < t->n && t->piece_off[id] >= 0; }

static int32_t vocab_find(const ps_tokenizer *t, const char *s, size_t n) {
    if (!t->map_cap) return -1;
    uint32_t h = hash_bytes(s, n);
    size_t mask = t->map_cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        int32_t id = t->map[i];
        if (id < 0) return -1;
        if (t->map_hash[i] == h && (size_t)t->piece_len[id] == n && memcmp(piece_of(t, id), s, n) == 0) return id;
    }
}

static int vocab_alloc(ps_tokenizer *t, int64_t n, ps_error *e) {
    t->n = n;
    t->piece_off = malloc((size_t)n * sizeof *t->piece_off);
    t->piece_len = calloc((size_t)n, sizeof *t->piece_len);
    t->text_off = malloc((size_t)n * sizeof *t->text_off);
    t->text_len = calloc((size_t)n, sizeof *t->text_len);
    t->flags = calloc((size_t)n, 1);
    if (!t->piece_off || !t->piece_len || !t->text_off || !t->text_len || !t->flags) return oom(e);
    for (int64_t i = 0; i < n; i++) t->piece_off[i] = t->text_off[i] = -1;
    return 0;
}

static int vocab_set(ps_tokenizer *t, int32_t id, const char *s, size_t len, uint8_t flags, ps_error *e) {
    size_t bad;
    if (ps_utf8_check(s, len, &bad) != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: token %d: invalid UTF-8 at byte %zu of its spelling", t->path, id, bad);
    t->piece_off[id] = (int64_t)t->arena.n;
    t->piece_len[id] = (int32_t)len;
    t->flags[id] = flags;
    if (!sbuf_put(&t->arena, s, len) || !sbuf_put(&t->arena, "", 1)) return oom(e);
    return 0;
}

// Builds the spelling -> id map over the model vocabulary; where names the field for the duplicate error.
static int vocab_index(ps_tokenizer *t, const char *where, ps_error *e) {
    t->map_cap = pow2_at_least((size_t)t->n * 2 + 1);
    t->map = malloc(t->map_cap * sizeof *t->map);
    t->map_hash = malloc(t->map_cap * sizeof *t->map_hash);
    if (!t->map || !t->map_hash) return oom(e);
    for (size_t i = 0; i < t->map_cap; i++) t->map[i] = -1;
    size_t mask = t->map_cap - 1;
    for (int64_t id = 0; id < t->n; id++) {
        if (t->piece_off[id] < 0 || !(t->flags[id] & F_MODEL)) continue;
        const char *s = piece_of(t, (int32_t)id);
        size_t n = (size_t)t->piece_len[id];
        uint32_t h = hash_bytes(s, n);
        size_t i = h & mask;
        for (; t->map[i] >= 0; i = (i + 1) & mask) {
            int32_t o = t->map[i];
            if (t->map_hash[i] == h && (size_t)t->piece_len[o] == n && memcmp(piece_of(t, o), s, n) == 0)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: \"%s\" appears twice (ids %d and %lld)", t->path, where, s,
                               o, (long long)id);
        }
        t->map[i] = (int32_t)id;
        t->map_hash[i] = h;
    }
    return 0;
}

static int merges_alloc(ps_tokenizer *t, int64_t n, ps_error *e) {
    t->merge_cap = pow2_at_least((size_t)n * 2 + 1);
    t->merges = malloc(t->merge_cap * sizeof *t->merges);
    if (!t->merges) return oom(e);
    for (size_t i = 0; i < t->merge_cap; i++) t->merges[i].rank = -1;
    return 0;
}

// Later duplicates replace earlier ones, as HF's merge map does.
static void merge_put(ps_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->merge_cap - 1;
    size_t i = mix64(key) & mask;
    while (t->merges[i].rank >= 0 && t->merges[i].key != key) i = (i + 1) & mask;
    if (t->merges[i].rank < 0) t->n_merges++;
    t->merges[i].key = key;
    t->merges[i].rank = rank;
    t->merges[i].new_id = new_id;
}

static const merge_slot *merge_get(const ps_tokenizer *t, int32_t a, int32_t b) {
    if (!t->merge_cap) return NULL;
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->merge_cap - 1;
    for (size_t i = mix64(key) & mask;; i = (i + 1) & mask) {
        if (t->merges[i].rank < 0) return NULL;
        if (t->merges[i].key == key) return &t->merges[i];
    }
}

// ------------------------------------------------------------------------------------------------ BPE

typedef struct {
    int32_t id, prev, next, len;
} bpe_sym;

typedef struct {
    int32_t rank, pos, new_id;
} bpe_cand;

typedef struct {
    bpe_sym *sym;
    size_t sym_cap;
    bpe_cand *heap;
    size_t heap_cap;
    pcre2_match_data *md;
} scratch;

static bool cand_before(bpe_cand a, bpe_cand b) { return a.rank != b.rank ? a.rank < b.rank : a.pos < b.pos; }

static void heap_push(bpe_cand *h, size_t *n, bpe_cand c) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_before(c, h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = c;
}

static bpe_cand heap_pop(bpe_cand *h, size_t *n) {
    bpe_cand top = h[0], last = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        bpe_cand best = last;
        if (l < *n && cand_before(h[l], best)) { m = l; best = h[l]; }
        if (r < *n && cand_before(h[r], best)) m = r;
        if (m == i) break;
        h[i] = h[m];
        i = m;
    }
    if (*n) h[i] = last;
    return top;
}

static void push_pair(const ps_tokenizer *t, scratch *s, size_t *hn, int32_t pos) {
    int32_t nx = s->sym[pos].next;
    if (nx < 0) return;
    const merge_slot *m = merge_get(t, s->sym[pos].id, s->sym[nx].id);
    if (m) heap_push(s->heap, hn, (bpe_cand){m->rank, pos, m->new_id});
}

// Word::merge_all of HF tokenizers: repeatedly merge the pair of lowest rank (leftmost first), skipping stale entries.
static void bpe_merge_all(const ps_tokenizer *t, scratch *s, int32_t n) {
    size_t hn = 0;
    for (int32_t i = 0; i + 1 < n; i++) push_pair(t, s, &hn, i);
    while (hn) {
        bpe_cand top = heap_pop(s->heap, &hn);
        bpe_sym *cur = &s->sym[top.pos];
        if (cur->len == 0 || cur->next < 0) continue;
        int32_t nx = cur->next;
        const merge_slot *m = merge_get(t, cur->id, s->sym[nx].id);
        if (!m || m->new_id != top.new_id) continue;
        cur->id = top.new_id;
        cur->len += s->sym[nx].len;
        cur->next = s->sym[nx].next;
        s->sym[nx].len = 0;
        if (cur->next >= 0) s->sym[cur->next].prev = top.pos;
        if (cur->prev >= 0) push_pair(t, s, &hn, cur->prev);
        push_pair(t, s, &hn, top.pos);
    }
}

static bool sym_reserve(scratch *s, size_t n) {
    if (n > s->sym_cap) {
        size_t cap = pow2_at_least(n);
        bpe_sym *p = realloc(s->sym, cap * sizeof *p);
        if (!p) return false;
        s->sym = p;
        s->sym_cap = cap;
    }
    if (3 * n + 4 > s->heap_cap) {
        size_t cap = pow2_at_least(3 * n + 4);
        bpe_cand *h = realloc(s->heap, cap * sizeof *h);
        if (!h) return false;
        s->heap = h;
        s->heap_cap = cap;
    }
    return true;
}

static void sym_add(scratch *s, int32_t *n, int32_t id, int32_t len) {
    s->sym[*n] = (bpe_sym){id, *n - 1, -1, len};
    if (*n > 0) s->sym[*n - 1].next = *n;
    (*n)++;
}

static bool cache_get(const ps_tokenizer *t, const char *w, size_t n, idvec *out, bool *hit) {
    *hit = false;
    if (!t->cache || n > CACHE_MAX_WORD) return true;
    ps_tokenizer *mt = (ps_tokenizer *)t; // the cache is the one mutable part, guarded by its lock
    uint32_t h = hash_bytes(w, n);
    bool ok = true;
    pthread_mutex_lock(&mt->cache_mu);
    for (size_t i = h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        cache_slot *c = &mt->cache[i];
        if (!c->key) break;
        if (c->hash == h && c->klen == n && memcmp(c->key, w, n) == 0) {
            for (int32_t k = 0; k < c->n && ok; k++) ok = idvec_push(out, c->ids[k]);
            *hit = true;
            break;
        }
    }
    pthread_mutex_unlock(&mt->cache_mu);
    return ok;
}

static void cache_put(const ps_tokenizer *t, const char *w, size_t n, const int32_t *ids, int32_t k) {
    if (!t->cache || n > CACHE_MAX_WORD) return;
    ps_tokenizer *mt = (ps_tokenizer *)t;
    uint32_t h = hash_bytes(w, n);
    pthread_mutex_lock(&mt->cache_mu);
    if (mt->cache_count < CACHE_MAX_ENTRIES) {
        size_t i = h & (CACHE_SLOTS - 1);
        for (; mt->cache[i].key; i = (i + 1) & (CACHE_SLOTS - 1))
            if (mt->cache[i].hash == h && mt->cache[i].klen == n && memcmp(mt->cache[i].key, w, n) == 0) break;
        if (!mt->cache[i].key) {
            char *key = malloc(n + 1);
            int32_t *v = malloc((size_t)(k ? k : 1) * sizeof *v);
            if (key && v) {
                memcpy(key, w, n);
                memcpy(v, ids, (size_t)k * sizeof *v);
                mt->cache[i] = (cache_slot){key, n, h, v, k};
                mt->cache_count++;
            } else {
                free(key);
                free(v);
            }
        }
    }
    pthread_mutex_unlock(&mt->cache_mu);
}

// BPE::tokenize of one pre-tokenized word. Byte-level words are raw bytes (each maps to its one-character token);
// other words are split into characters looked up in the vocabulary, with byte fallback and (fused) unk as HF does.
static int bpe_word(const ps_tokenizer *t, scratch *s, const char *w, size_t n, idvec *out, ps_error *e) {
    if (n == 0) return 0;
    bool hit;
    if (!cache_get(t, w, n, out, &hit)) return oom(e);
    if (hit) return 0;
    int64_t first = out->n;
    bool byte_level = t->pre == PRE_BYTE_LEVEL;
    if (!sym_reserve(s, n)) return oom(e);
    int32_t k = 0;
    if (byte_level) {
        for (size_t i = 0; i < n; i++) sym_add(s, &k, t->byte_id[(unsigned char)w[i]], 1);
    } else {
        int32_t unk_len = 0; // pending (possibly fused) unknown run, in bytes
        for (size_t i = 0; i < n;) {
            size_t cl = u8len((unsigned char)w[i]);
            int32_t id = vocab_find(t, w + i, cl);
            if (id >= 0) {
                if (unk_len) { sym_add(s, &k, t->unk_id, unk_len); unk_len = 0; }
                sym_add(s, &k, id, (int32_t)cl);
            } else {
                bool all = t->byte_fallback;
                for (size_t b = 0; b < cl && all; b++) all = t->byte_piece[(unsigned char)w[i + b]] >= 0;
                if (all) {
                    for (size_t b = 0; b < cl; b++) sym_add(s, &k, t->byte_piece[(unsigned char)w[i + b]], 1);
                } else if (t->unk_id >= 0) {
                    if (unk_len && !t->fuse_unk) { sym_add(s, &k, t->unk_id, unk_len); unk_len = 0; }
                    unk_len += (int32_t)cl;
                } else {
                    return ps_fail(e, PS_EXIT_BADINPUT,
                                   "text: \"%.*s\": character not in the vocabulary of %s, which has no unk token",
                                   (int)cl, w + i, t->path);
                }
            }
            i += cl;
        }
        if (unk_len) sym_add(s, &k, t->unk_id, unk_len);
    }
    bpe_merge_all(t, s, k);
    for (int32_t i = 0; i >= 0; i = s->sym[i].next)
        if (!idvec_push(out, s->sym[i].id)) return oom(e);
    cache_put(t, w, n, out->v + first, (int32_t)(out->n - first));
    return 0;
}

// ------------------------------------------------------------------------------------------------ encoding

// HF's ByteLevel regex. \s is spelled out as Unicode White_Space, which is what Oniguruma's \s (used by HF) means,
// so the split does not hang on how a PCRE2 version defines \s under PCRE2_UCP.
#define WS "\\t\\n\\x{0B}\\f\\r\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"
static const char GPT2_PATTERN[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^" WS "\\p{L}\\p{N}]+|[" WS
                                   "]+(?![^" WS "])|[" WS "]+";

// Pre-tokenizes one normalized piece of text and runs BPE on each word.
static int encode_normalized(const ps_tokenizer *t, scratch *s, const char *x, size_t n, bool at_start, idvec *out,
                             ps_error *e) {
    if (n == 0) return 0;
    if (t->pre == PRE_BYTE_LEVEL) {
        sbuf pref = {0};
        if (t->bl_prefix_space && x[0] != ' ') {
            if (!sbuf_put(&pref, " ", 1) || !sbuf_put(&pref, x, n)) { free(pref.p); return oom(e); }
            x = pref.p;
            n = pref.n;
        }
        int rc = 0;
        if (!t->bl_regex) {
            rc = bpe_word(t, s, x, n, out, e);
        } else {
            size_t pos = 0;
            while (pos < n && rc == 0) {
                int m = pcre2_match(t->re, (PCRE2_SPTR)x, n, pos, PCRE2_NO_UTF_CHECK, s->md, NULL);
                if (m == PCRE2_ERROR_NOMATCH) { rc = bpe_word(t, s, x + pos, n - pos, out, e); break; }
                if (m < 0) { rc = ps_fail(e, PS_EXIT_RUNTIME, "pre-tokenizer regex failed (PCRE2 error %d)", m); break; }
                PCRE2_SIZE *ov = pcre2_get_ovector_pointer(s->md);
                if (ov[0] > pos) rc = bpe_word(t, s, x + pos, ov[0] - pos, out, e);
                if (rc == 0) rc = bpe_word(t, s, x + ov[0], ov[1] - ov[0], out, e);
                pos = ov[1] > ov[0] ? ov[1] : ov[1] + u8len((unsigned char)x[ov[1]]);
            }
        }
        free(pref.p);
        return rc;
    }
    if (t->pre == PRE_METASPACE) {
        // Metaspace: spaces become the replacement, which is prepended per the scheme, then optionally split before
        // each replacement (the replacement stays with the word that follows it).
        sbuf m = {0};
        size_t rl = strlen(t->ms_repl);
        bool prepend = (t->ms_scheme == SCHEME_ALWAYS || (t->ms_scheme == SCHEME_FIRST && at_start));
        bool ok = true;
        for (size_t i = 0; i < n && ok; i++) ok = x[i] == ' ' ? sbuf_put(&m, t->ms_repl, rl) : sbuf_put(&m, x + i, 1);
        if (ok && prepend && !(m.n >= rl && memcmp(m.p, t->ms_repl, rl) == 0)) {
            sbuf p2 = {0};
            ok = sbuf_put(&p2, t->ms_repl, rl) && sbuf_put(&p2, m.p, m.n);
            free(m.p);
            m = p2;
        }
        if (!ok) { free(m.p); return oom(e); }
        int rc = 0;
        if (!t->ms_split) {
            rc = bpe_word(t, s, m.p, m.n, out, e);
        } else {
            size_t start = 0;
            for (size_t i = 1; i + rl <= m.n && rc == 0; i++) {
                if (memcmp(m.p + i, t->ms_repl, rl) == 0) {
                    rc = bpe_word(t, s, m.p + start, i - start, out, e);
                    start = i;
                }
            }
            if (rc == 0) rc = bpe_word(t, s, m.p + start, m.n - start, out, e);
        }
        free(m.p);
        return rc;
    }
    return bpe_word(t, s, x, n, out, e);
}

static int encode_raw(const ps_tokenizer *t, scratch *s, const char *x, size_t n, bool at_start, idvec *out,
                      ps_error *e);

// AddedVocabulary's split: leftmost-longest matches of the added tokens of one kind (normalized or not), lstrip and
// rstrip taking the whitespace beside them. The text between matches goes on to normalization (raw pass) or to
// pre-tokenization and BPE (normalized pass).
static int split_added(const ps_tokenizer *t, scratch *s, const char *x, size_t n, bool normalized, bool at_start,
                       idvec *out, ps_error *e) {
    size_t seg = 0, pos = 0;
    while (pos < n) {
        int best = -1;
        for (int k = 0; k < t->n_added; k++) {
            const added_token *a = &t->added[k];
            if (a->normalized != normalized || a->len > n - pos || (best >= 0 && a->len <= t->added[best].len)) continue;
            if (memcmp(x + pos, a->content, a->len) == 0) best = k;
        }
        if (best < 0) { pos++; continue; }
        const added_token *a = &t->added[best];
        size_t start = pos, stop = pos + a->len;
        if (a->lstrip) {
            while (start > seg) {
                size_t b = start - 1;
                while (b > seg && ((unsigned char)x[b] & 0xC0) == 0x80) b--;
                size_t cl;
                if (!is_white_space(u8decode(x + b, &cl))) break;
                start = b;
            }
        }
        if (a->rstrip) {
            while (stop < n) {
                size_t cl;
                if (!is_white_space(u8decode(x + stop, &cl))) break;
                stop += cl;
            }
        }
        int rc = normalized ? encode_normalized(t, s, x + seg, start - seg, at_start && seg == 0, out, e)
                            : encode_raw(t, s, x + seg, start - seg, at_start && seg == 0, out, e);
        if (rc) return rc;
        if (!idvec_push(out, a->id)) return oom(e);
        seg = pos = stop;
    }
    return normalized ? encode_normalized(t, s, x + seg, n - seg, at_start && seg == 0, out, e)
                      : encode_raw(t, s, x + seg, n - seg, at_start && seg == 0, out, e);
}

// A piece of the original text between non-normalized added tokens: normalize it, then split the normalized
// added tokens out of it.
static int encode_raw(const ps_tokenizer *t, scratch *s, const char *x, size_t n, bool at_start, idvec *out,
                      ps_error *e) {
    if (n == 0) return 0;
    if (!t->n_norm) return split_added(t, s, x, n, true, at_start, out, e);
    sbuf cur = {0};
    if (!sbuf_put(&cur, x, n)) return oom(e);
    for (int k = 0; k < t->n_norm; k++) {
        const norm_op *op = &t->norm[k];
        sbuf nx = {0};
        bool ok = true;
        if (op->kind == NORM_PREPEND) { // HF prepends only to non-empty text
            ok = sbuf_put(&nx, op->a, cur.n ? strlen(op->a) : 0) && sbuf_put(&nx, cur.p, cur.n);
        } else {
            ok = replace_all(&nx, cur.p, cur.n, op->a, op->b);
        }
        free(cur.p);
        cur = nx;
        if (!ok) { free(cur.p); return oom(e); }
    }
    int rc = split_added(t, s, cur.p, cur.n, true, at_start, out, e);
    free(cur.p);
    return rc;
}

int ps_tokenizer_encode_n(const ps_tokenizer *t, const char *text, size_t len, int32_t **ids, int64_t *n,
                          ps_error *e) {
    *ids = NULL;
    *n = 0;
    size_t bad;
    if (ps_utf8_check(text, len, &bad) != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "text: byte %zu: invalid UTF-8 (byte 0x%02X) in text to tokenize", bad,
                       (unsigned char)text[bad]);
    scratch s = {0};
    idvec out = {0};
    int rc = 0;
    if (t->re) {
        s.md = pcre2_match_data_create_from_pattern(t->re, NULL);
        if (!s.md) rc = oom(e);
    }
    if (rc == 0) rc = split_added(t, &s, text, len, false, true, &out, e);
    free(s.sym);
    free(s.heap);
    if (s.md) pcre2_match_data_free(s.md);
    if (rc) { free(out.v); return rc; }
    if (!out.v) out.v = malloc(sizeof(int32_t)); // a valid pointer even for empty text
    if (!out.v) return oom(e);
    *ids = out.v;
    *n = out.n;
    return 0;
}

int ps_tokenizer_encode(const ps_tokenizer *t, const char *text, int32_t **ids, int64_t *n, ps_error *e) {
    return ps_tokenizer_encode_n(t, text, strlen(text), ids, n, e);
}

// ------------------------------------------------------------------------------------------------ decoding

typedef struct {
    sbuf *v;
    size_t n;
} toklist;

static void toklist_free(toklist *l) {
    for (size_t i = 0; i < l->n; i++) free(l->v[i].p);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

// "<0xXX>" as HF's ByteFallback decoder recognises it; -1 otherwise.
static int byte_piece_value(const char *p, size_t n) {
    if (n != 6 || memcmp(p, "<0x", 3) != 0 || p[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
        if (d < 0) return -1;
        v = v * 16 + d;
    }
    return v;
}

// A token in the byte-level alphabet back to its bytes; false if some character is outside it.
static bool byte_level_bytes(const ps_tokenizer *t, const char *p, size_t n, sbuf *out) {
    for (size_t i = 0; i < n;) {
        size_t cl;
        uint32_t c = u8decode(p + i, &cl);
        if (c >= 324 || t->u2b[c] < 0) return false;
        char b = (char)t->u2b[c];
        if (!sbuf_put(out, &b, 1)) return false;
        i += cl;
    }
    return true;
}

// One decoder step over the token list (HF's Decoder::decode_chain).
static bool decode_step(const ps_tokenizer *t, const dec_op *op, toklist *l) {
    toklist r = {calloc(l->n ? l->n : 1, sizeof(sbuf)), 0};
    if (!r.v) return false;
    bool ok = true;
    if (op->kind == DEC_BYTE_LEVEL || op->kind == DEC_FUSE) {
        sbuf all = {0}, one = {0};
        ok = sbuf_put(&all, "", 0);
        for (size_t i = 0; i < l->n && ok; i++) {
            if (op->kind == DEC_FUSE) { ok = sbuf_put(&all, l->v[i].p, l->v[i].n); continue; }
            one.n = 0;
            if (!byte_level_bytes(t, l->v[i].p, l->v[i].n, &one)) { one.n = 0; ok = sbuf_put(&one, l->v[i].p, l->v[i].n); }
            if (ok) ok = sbuf_put(&all, one.p, one.n);
        }
        free(one.p);
        if (ok && op->kind == DEC_BYTE_LEVEL) {
            sbuf lossy = {0};
            ok = sbuf_put(&lossy, "", 0) && append_lossy(&lossy, (const unsigned char *)all.p, all.n);
            free(all.p);
            all = lossy;
        }
        r.v[r.n++] = all;
    } else if (op->kind == DEC_BYTE_FALLBACK) {
        // Runs of <0xXX> tokens become their bytes when those are valid UTF-8, else one U+FFFD token per byte.
        sbuf bytes = {0};
        size_t run = 0;
        for (size_t i = 0; i <= l->n && ok; i++) {
            int b = i < l->n ? byte_piece_value(l->v[i].p, l->v[i].n) : -1;
            if (b >= 0) {
                char c = (char)b;
                ok = sbuf_put(&bytes, &c, 1);
                run++;
                continue;
            }
            if (run && ps_utf8_check(bytes.p, bytes.n, NULL) == 0) {
                sbuf tok = {0};
                ok = sbuf_put(&tok, bytes.p, bytes.n);
                r.v[r.n++] = tok;
            } else {
                for (size_t k = 0; k < run && ok; k++) {
                    sbuf tok = {0};
                    ok = sbuf_put(&tok, "\xEF\xBF\xBD", 3);
                    r.v[r.n++] = tok;
                }
            }
            bytes.n = 0;
            run = 0;
            if (i < l->n && ok) {
                sbuf tok = {0};
                ok = sbuf_put(&tok, l->v[i].p, l->v[i].n);
                r.v[r.n++] = tok;
            }
        }
        free(bytes.p);
    } else {
        for (size_t i = 0; i < l->n && ok; i++) {
            sbuf tok = {0};
            const char *x = l->v[i].p;
            size_t n = l->v[i].n;
            if (op->kind == DEC_REPLACE) {
                ok = replace_all(&tok, x, n, op->a, op->b);
            } else if (op->kind == DEC_STRIP) {
                size_t cl = strlen(op->a), a = 0, z = n;
                for (int k = 0; k < op->start && cl && a + cl <= z && memcmp(x + a, op->a, cl) == 0; k++) a += cl;
                for (int k = 0; k < op->stop && cl && z >= a + cl && memcmp(x + z - cl, op->a, cl) == 0; k++) z -= cl;
                ok = sbuf_put(&tok, x + a, z - a);
            } else { // Metaspace: the first token loses its replacements (the prepended one), the others become spaces
                ok = (i == 0 && op->scheme != SCHEME_NEVER) ? replace_all(&tok, x, n, op->a, "")
                                                           : replace_all(&tok, x, n, op->a, " ");
            }
            r.v[r.n++] = tok;
        }
    }
    toklist_free(l);
    *l = r;
    return ok;
}

char *ps_tokenizer_decode_n(const ps_tokenizer *t, const int32_t *ids, int64_t n, size_t *len) {
    toklist l = {calloc(n > 0 ? (size_t)n : 1, sizeof(sbuf)), 0};
    if (!l.v) return NULL;
    bool ok = true;
    for (int64_t i = 0; i < n && ok; i++) {
        if (!valid_id(t, ids[i])) continue;
        sbuf tok = {0};
        ok = sbuf_put(&tok, piece_of(t, ids[i]), (size_t)t->piece_len[ids[i]]);
        l.v[l.n++] = tok;
    }
    for (int k = 0; k < t->n_dec && ok; k++) ok = decode_step(t, &t->dec[k], &l);
    sbuf out = {0};
    ok = ok && sbuf_put(&out, "", 0);
    for (size_t i = 0; i < l.n && ok; i++) {
        if (!t->has_decoder && i > 0) ok = sbuf_put(&out, " ", 1); // no decoder: HF joins with spaces
        if (ok) ok = sbuf_put(&out, l.v[i].p, l.v[i].n);
    }
    toklist_free(&l);
    if (!ok) { free(out.p); return NULL; }
    if (len) *len = out.n;
    return out.p;
}

char *ps_tokenizer_decode(const ps_tokenizer *t, const int32_t *ids, int64_t n) {
    return ps_tokenizer_decode_n(t, ids, n, NULL);
}

const char *ps_tokenizer_token_bytes(const ps_tokenizer *t, int32_t id, size_t *len) {
    if (!valid_id(t, id)) return NULL;
    if (len) *len = (size_t)t->text_len[id];
    return t->arena.p + t->text_off[id];
}

char *ps_tokenizer_token_text(const ps_tokenizer *t, int32_t id) {
    size_t n;
    const char *p = ps_tokenizer_token_bytes(t, id, &n);
    if (!p) return NULL;
    char *r = malloc(n + 1);
    if (!r) return NULL;
    memcpy(r, p, n);
    r[n] = 0;
    return r;
}

const char *ps_tokenizer_token_piece(const ps_tokenizer *t, int32_t id) { return valid_id(t, id) ? piece_of(t, id) : NULL; }

int32_t ps_tokenizer_token_id(const ps_tokenizer *t, const char *piece) {
    size_t n = strlen(piece);
    for (int k = 0; k < t->n_added; k++)
        if (t->added[k].len == n && memcmp(t->added[k].content, piece, n) == 0) return t->added[k].id;
    return vocab_find(t, piece, n);
}

int ps_tokenizer_is_special(const ps_tokenizer *t, int32_t id) { return valid_id(t, id) && (t->flags[id] & F_SPECIAL); }
int64_t ps_tokenizer_vocab_size(const ps_tokenizer *t) { return t->n; }
int32_t ps_tokenizer_bos_id(const ps_tokenizer *t) { return t->bos_id; }
int32_t ps_tokenizer_eos_id(const ps_tokenizer *t) { return t->eos_id; }
ps_tokenizer_kind ps_tokenizer_kind_of(const ps_tokenizer *t) { return t->kind; }
const char *ps_tokenizer_path(const ps_tokenizer *t) { return t->path; }

void ps_tokenizer_free(ps_tokenizer *t) {
    if (!t) return;
    free(t->path);
    free(t->arena.p);
    free(t->piece_off);
    free(t->piece_len);
    free(t->text_off);
    free(t->text_len);
    free(t->flags);
    free(t->map);
    free(t->map_hash);
    free(t->merges);
    for (int k = 0; k < t->n_added; k++) free(t->added[k].content);
    free(t->added);
    for (int k = 0; k < t->n_norm; k++) { free(t->norm[k].a); free(t->norm[k].b); }
    free(t->norm);
    for (int k = 0; k < t->n_dec; k++) { free(t->dec[k].a); free(t->dec[k].b); }
    free(t->dec);
    free(t->ms_repl);
    if (t->re) pcre2_code_free(t->re);
    if (t->cache) {
        for (size_t i = 0; i < CACHE_SLOTS; i++) { free(t->cache[i].key); free(t->cache[i].ids); }
        free(t->cache);
        pthread_mutex_destroy(&t->cache_mu);
    }
    free(t);
}

// ------------------------------------------------------------------------------------------------ JSON loading

static cJSON *parse_json(const char *path, const char *text, size_t len, ps_error *e) {
    // Encoding assumes valid UTF-8 in every string from the file (vocabulary, normalizer, pre-tokenizer and decoder
    // strings); Hugging Face refuses such files too (serde reads a str).
    size_t bad;
    if (ps_utf8_check(text, len, &bad) != 0) {
        int line, col;
        ps_line_col(text, bad, &line, &col);
        ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu (line %d, column %d): invalid UTF-8", path, bad, line, col);
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    size_t off = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
    const char *what = "JSON syntax error";
    if (root) {
        while (off < len && (text[off] == ' ' || text[off] == '\t' || text[off] == '\n' || text[off] == '\r')) off++;
        if (off == len) return root;
        cJSON_Delete(root);
        root = NULL;
        what = "unexpected text after the JSON value";
    }
    int line, col;
    ps_line_col(text, off, &line, &col);
    // cJSON stops at the last byte when the text runs out, as in a truncated file.
    ps_fail(e, PS_EXIT_BADINPUT, "%s: line %d, column %d: %s%s", path, line, col, what,
            !root && off + 1 >= len ? " at the end of the file (truncated?)" : "");
    return NULL;
}

static bool json_bool(const cJSON *o, const char *key, bool dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsBool(v) ? cJSON_IsTrue(v) : dflt;
}

// An integer id in [0, 2^24) from a JSON number; false otherwise.
static bool json_id(const cJSON *v, int64_t *id) {
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d < (double)(1 << 24)) || d != (double)(int64_t)d) return false;
    *id = (int64_t)d;
    return true;
}

// String member or NULL (missing or null); error when present with another type.
static int json_str(const ps_tokenizer *t, const cJSON *o, const char *key, const char *where, const char **out,
                    ps_error *e) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    *out = NULL;
    if (!v || cJSON_IsNull(v)) return 0;
    if (!cJSON_IsString(v)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.%s: expected a string", t->path, where, key);
    *out = v->valuestring;
    return 0;
}

static int add_norm(ps_tokenizer *t, int kind, const char *a, const char *b, ps_error *e) {
    norm_op *n = realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *n);
    if (!n) return oom(e);
    t->norm = n;
    n[t->n_norm] = (norm_op){kind, strdup(a), b ? strdup(b) : NULL};
    if (!n[t->n_norm].a || (b && !n[t->n_norm].b)) return oom(e);
    t->n_norm++;
    return 0;
}

static int add_dec(ps_tokenizer *t, dec_op op, ps_error *e) {
    dec_op *d = realloc(t->dec, (size_t)(t->n_dec + 1) * sizeof *d);
    if (!d) { free(op.a); free(op.b); return oom(e); }
    t->dec = d;
    d[t->n_dec++] = op;
    return 0;
}

// Replace's pattern is {"String": "..."} (supported) or {"Regex": "..."} (not).
static int replace_pattern(const ps_tokenizer *t, const cJSON *o, const char *where, const char **pat, ps_error *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "pattern");
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(p, "String");
    if (cJSON_IsString(s) && s->valuestring[0]) { *pat = s->valuestring; return 0; }
    if (cJSON_GetObjectItemCaseSensitive(p, "Regex"))
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.pattern: a Regex pattern is not supported (only String)", t->path, where);
    return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.pattern: expected {\"String\": \"...\"}", t->path, where);
}

static int parse_normalizer(ps_tokenizer *t, const cJSON *o, const char *where, ps_error *e) {
    if (!o || cJSON_IsNull(o)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    char sub[256];
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "normalizers");
        if (!cJSON_IsArray(list)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.normalizers: expected an array", t->path, where);
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            snprintf(sub, sizeof sub, "%s.normalizers[%d]", where, i);
            if (parse_normalizer(t, c, sub, e)) return -1;
        }
        return 0;
    }
    if (strcmp(ty, "Prepend") == 0) {
        const char *p;
        if (json_str(t, o, "prepend", where, &p, e)) return -1;
        if (!p) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.prepend: missing", t->path, where);
        return add_norm(t, NORM_PREPEND, p, NULL, e);
    }
    if (strcmp(ty, "Replace") == 0) {
        const char *pat, *content;
        if (replace_pattern(t, o, where, &pat, e) || json_str(t, o, "content", where, &content, e)) return -1;
        if (!content) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.content: missing", t->path, where);
        return add_norm(t, NORM_REPLACE, pat, content, e);
    }
    return ps_fail(e, PS_EXIT_BADINPUT,
                   "%s: %s.type: \"%s\" is not supported (supported: Prepend, Replace with a String pattern, Sequence)",
                   t->path, where, ty);
}

static int parse_scheme(const ps_tokenizer *t, const cJSON *o, const char *where, int *scheme, ps_error *e) {
    const char *s;
    if (json_str(t, o, "prepend_scheme", where, &s, e)) return -1;
    if (!s) { *scheme = json_bool(o, "add_prefix_space", true) ? SCHEME_ALWAYS : SCHEME_NEVER; return 0; }
    if (strcmp(s, "always") == 0) *scheme = SCHEME_ALWAYS;
    else if (strcmp(s, "first") == 0) *scheme = SCHEME_FIRST;
    else if (strcmp(s, "never") == 0) *scheme = SCHEME_NEVER;
    else return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.prepend_scheme: \"%s\" is not always, first or never", t->path, where, s);
    return 0;
}

static int parse_pre_tokenizer(ps_tokenizer *t, const cJSON *o, ps_error *e) {
    t->pre = PRE_NONE;
    if (!o || cJSON_IsNull(o)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    if (strcmp(ty, "ByteLevel") == 0) {
        t->pre = PRE_BYTE_LEVEL;
        t->bl_prefix_space = json_bool(o, "add_prefix_space", true);
        t->bl_regex = json_bool(o, "use_regex", true);
        return 0;
    }
    if (strcmp(ty, "Metaspace") == 0) {
        const char *r;
        if (json_str(t, o, "replacement", "pre_tokenizer", &r, e)) return -1;
        t->pre = PRE_METASPACE;
        t->ms_repl = strdup(r && r[0] ? r : "\xE2\x96\x81");
        if (!t->ms_repl) return oom(e);
        t->ms_split = json_bool(o, "split", true);
        return parse_scheme(t, o, "pre_tokenizer", &t->ms_scheme, e);
    }
    return ps_fail(e, PS_EXIT_BADINPUT, "%s: pre_tokenizer.type: \"%s\" is not supported (supported: ByteLevel, Metaspace)",
                   t->path, ty);
}

static int parse_decoder(ps_tokenizer *t, const cJSON *o, const char *where, ps_error *e) {
    if (!o || cJSON_IsNull(o)) return 0;
    t->has_decoder = true;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    char sub[256];
    if (strcmp(ty, "Sequence") == 0) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, "decoders");
        if (!cJSON_IsArray(list)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.decoders: expected an array", t->path, where);
        int i = 0;
        for (const cJSON *c = list->child; c; c = c->next, i++) {
            snprintf(sub, sizeof sub, "%s.decoders[%d]", where, i);
            if (parse_decoder(t, c, sub, e)) return -1;
        }
        return 0;
    }
    dec_op op = {0};
    if (strcmp(ty, "ByteLevel") == 0) op.kind = DEC_BYTE_LEVEL;
    else if (strcmp(ty, "ByteFallback") == 0) op.kind = DEC_BYTE_FALLBACK;
    else if (strcmp(ty, "Fuse") == 0) op.kind = DEC_FUSE;
    else if (strcmp(ty, "Replace") == 0) {
        const char *pat, *content;
        if (replace_pattern(t, o, where, &pat, e) || json_str(t, o, "content", where, &content, e)) return -1;
        op = (dec_op){DEC_REPLACE, strdup(pat), strdup(content ? content : ""), 0, 0, 0};
    } else if (strcmp(ty, "Strip") == 0) {
        const char *c;
        if (json_str(t, o, "content", where, &c, e)) return -1;
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(o, "start"), *z = cJSON_GetObjectItemCaseSensitive(o, "stop");
        op = (dec_op){DEC_STRIP, strdup(c ? c : " "), NULL, cJSON_IsNumber(a) ? a->valueint : 0,
                      cJSON_IsNumber(z) ? z->valueint : 0, 0};
    } else if (strcmp(ty, "Metaspace") == 0) {
        const char *r;
        if (json_str(t, o, "replacement", where, &r, e)) return -1;
        op = (dec_op){DEC_METASPACE, strdup(r && r[0] ? r : "\xE2\x96\x81"), NULL, 0, 0, 0};
        if (parse_scheme(t, o, where, &op.scheme, e)) { free(op.a); return -1; }
    } else {
        return ps_fail(e, PS_EXIT_BADINPUT,
                       "%s: %s.type: \"%s\" is not supported (supported: ByteLevel, Replace, ByteFallback, Fuse, Strip, "
                       "Metaspace, Sequence)", t->path, where, ty);
    }
    if ((op.kind == DEC_REPLACE && (!op.a || !op.b)) || ((op.kind == DEC_STRIP || op.kind == DEC_METASPACE) && !op.a)) {
        free(op.a);
        free(op.b);
        return oom(e);
    }
    return add_dec(t, op, e);
}

static int add_added(ps_tokenizer *t, int32_t id, const char *content, bool special, bool normalized, bool lstrip,
                     bool rstrip, ps_error *e) {
    added_token *a = realloc(t->added, (size_t)(t->n_added + 1) * sizeof *a);
    if (!a) return oom(e);
    t->added = a;
    a[t->n_added] = (added_token){id, strdup(content), strlen(content), lstrip, rstrip, normalized, special};
    if (!a[t->n_added].content) return oom(e);
    t->n_added++;
    return 0;
}

// Reads model.vocab (or a vocab.json) into the id tables; extra_max is the largest id used by added tokens.
static int load_vocab_object(ps_tokenizer *t, const cJSON *vocab, const char *where, int64_t extra_max, ps_error *e) {
    if (!cJSON_IsObject(vocab)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: expected an object of token: id", t->path, where);
    int64_t max_id = extra_max, count = 0;
    for (const cJSON *c = vocab->child; c; c = c->next, count++) {
        int64_t id;
        if (!json_id(c, &id))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s[\"%s\"]: the id must be an integer in [0, 16777216)", t->path, where,
                           c->string);
        if (id > max_id) max_id = id;
    }
    if (count == 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: the vocabulary is empty", t->path, where);
    // Ids index a table: a handful of tokens with an id in the millions would allocate hundreds of MB.
    if (max_id >= 2 * (count + t->n_added) + 1024)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: id %lld for a vocabulary of %lld tokens: ids must be (nearly) dense", t->path,
                       where, (long long)max_id, (long long)count);
    if (vocab_alloc(t, max_id + 1, e)) return -1;
    for (const cJSON *c = vocab->child; c; c = c->next) {
        int64_t id = 0;
        json_id(c, &id);
        if (t->piece_off[id] >= 0)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s[\"%s\"]: id %lld is already \"%s\"", t->path, where, c->string,
                           (long long)id, piece_of(t, (int32_t)id));
        if (vocab_set(t, (int32_t)id, c->string, strlen(c->string), F_MODEL, e)) return -1;
    }
    return vocab_index(t, where, e);
}

// Registers one merge "a" + "b"; where names it for errors.
static int add_merge(ps_tokenizer *t, const char *a, size_t al, const char *b, size_t bl, int32_t rank, const char *file,
                     const char *where, ps_error *e) {
    int32_t ia = vocab_find(t, a, al), ib = vocab_find(t, b, bl);
    char joined[1024];
    if (ia < 0 || ib < 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: \"%.*s\" is not in the vocabulary", file, where,
                       ia < 0 ? (int)al : (int)bl, ia < 0 ? a : b);
    if (al + bl >= sizeof joined) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: merged token is too long", file, where);
    memcpy(joined, a, al);
    memcpy(joined + al, b, bl);
    int32_t in = vocab_find(t, joined, al + bl);
    if (in < 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: the merged token \"%.*s\" is not in the vocabulary", file, where,
                       (int)(al + bl), joined);
    merge_put(t, ia, ib, rank, in);
    return 0;
}

static int load_tokenizer_json(ps_tokenizer *t, const cJSON *root, ps_error *e) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(root, "model");
    if (!cJSON_IsObject(model)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: model: missing or not an object", t->path);
    const char *type, *s;
    if (json_str(t, model, "type", "model", &type, e)) return -1;
    if (type && strcmp(type, "BPE") != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: model.type: \"%s\" is not supported (only BPE)", t->path, type);
    const char *empty_fields[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int k = 0; k < 2; k++) {
        if (json_str(t, model, empty_fields[k], "model", &s, e)) return -1;
        if (s && s[0])
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: model.%s: \"%s\" is not supported (only empty)", t->path,
                           empty_fields[k], s);
    }
    const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
    if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: model.dropout: BPE dropout is not supported (must be null)", t->path);
    t->byte_fallback = json_bool(model, "byte_fallback", false);
    t->fuse_unk = json_bool(model, "fuse_unk", false);
    // ignore_merges (Llama-3) changes nothing for GPT-2 or Llama-2 vocabularies, so nothing here could test it.
    if (json_bool(model, "ignore_merges", false))
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: model.ignore_merges: true is not supported", t->path);

    if (parse_normalizer(t, cJSON_GetObjectItemCaseSensitive(root, "normalizer"), "normalizer", e)) return -1;

    // Added tokens first: their ids may extend the table beyond model.vocab.
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
    if (added && !cJSON_IsNull(added) && !cJSON_IsArray(added))
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: added_tokens: expected an array", t->path);
    int64_t max_added = -1;
    int i = 0;
    for (const cJSON *c = added ? added->child : NULL; c; c = c->next, i++) {
        int64_t id;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(c, "content");
        if (!json_id(cJSON_GetObjectItemCaseSensitive(c, "id"), &id))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: added_tokens[%d].id: expected an integer in [0, 16777216)", t->path, i);
        if (!cJSON_IsString(content) || !content->valuestring[0])
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: added_tokens[%d].content: expected a non-empty string", t->path, i);
        if (json_bool(c, "single_word", false))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: added_tokens[%d].single_word: true is not supported", t->path, i);
        // HF matches such tokens in normalized text by patterns it derives in ways not reproduced here.
        if (t->n_norm && json_bool(c, "normalized", !json_bool(c, "special", false)))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: added_tokens[%d].normalized: true together with a normalizer is "
                           "not supported", t->path, i);
        if (id > max_added) max_added = id;
    }
    if (load_vocab_object(t, cJSON_GetObjectItemCaseSensitive(model, "vocab"), "model.vocab", max_added, e)) return -1;
    i = 0;
    for (const cJSON *c = added ? added->child : NULL; c; c = c->next, i++) {
        int64_t id = 0;
        json_id(cJSON_GetObjectItemCaseSensitive(c, "id"), &id);
        const char *content = cJSON_GetObjectItemCaseSensitive(c, "content")->valuestring;
        bool special = json_bool(c, "special", false);
        if (t->piece_off[id] >= 0) {
            if (strcmp(piece_of(t, (int32_t)id), content) != 0)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: added_tokens[%d]: id %lld is \"%s\" in model.vocab, not \"%s\"",
                               t->path, i, (long long)id, piece_of(t, (int32_t)id), content);
            t->flags[id] |= F_ADDED | (special ? F_SPECIAL : 0);
        } else if (vocab_set(t, (int32_t)id, content, strlen(content), F_ADDED | (special ? F_SPECIAL : 0), e)) {
            return -1;
        }
        if (add_added(t, (int32_t)id, content, special, json_bool(c, "normalized", !special),
                      json_bool(c, "lstrip", false), json_bool(c, "rstrip", false), e))
            return -1;
    }

    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: model.merges: missing or not an array", t->path);
    if (merges_alloc(t, cJSON_GetArraySize(merges), e)) return -1;
    i = 0;
    for (const cJSON *c = merges->child; c; c = c->next, i++) {
        char where[64];
        snprintf(where, sizeof where, "model.merges[%d]", i);
        if (cJSON_IsString(c)) {
            const char *sp = strchr(c->valuestring, ' ');
            if (!sp || strchr(sp + 1, ' ') || sp == c->valuestring || !sp[1])
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: \"%s\" is not two tokens separated by one space", t->path,
                               where, c->valuestring);
            if (add_merge(t, c->valuestring, (size_t)(sp - c->valuestring), sp + 1, strlen(sp + 1), i, t->path, where, e))
                return -1;
        } else if (cJSON_IsArray(c) && cJSON_GetArraySize(c) == 2 && cJSON_IsString(c->child) &&
                   cJSON_IsString(c->child->next)) {
            const char *a = c->child->valuestring, *b = c->child->next->valuestring;
            if (add_merge(t, a, strlen(a), b, strlen(b), i, t->path, where, e)) return -1;
        } else {
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: expected \"a b\" or [\"a\", \"b\"]", t->path, where);
        }
    }

    const char *unk;
    if (json_str(t, model, "unk_token", "model", &unk, e)) return -1;
    t->unk_id = -1;
    if (unk) {
        t->unk_id = vocab_find(t, unk, strlen(unk));
        if (t->unk_id < 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: model.unk_token: \"%s\" is not in model.vocab", t->path, unk);
    }
    if (parse_pre_tokenizer(t, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), e)) return -1;
    return parse_decoder(t, cJSON_GetObjectItemCaseSensitive(root, "decoder"), "decoder", e);
}

// vocab.json + merges.txt: GPT-2's byte-level BPE as transformers' GPT2Tokenizer sets it up.
static int load_vocab_json(ps_tokenizer *t, const cJSON *root, ps_error *e) {
    if (load_vocab_object(t, root, "vocab", -1, e)) return -1;
    char *dir = ps_dirname(t->path);
    char *mpath = dir ? ps_path_join(dir, "merges.txt") : NULL;
    free(dir);
    if (!mpath) return oom(e);
    size_t len;
    char *text = ps_read_file(mpath, &len, e);
    if (!text) { free(mpath); return -1; }
    int64_t lines = 1;
    for (size_t k = 0; k < len; k++) lines += text[k] == '\n';
    int rc = merges_alloc(t, lines, e);
    int32_t rank = 0;
    size_t pos = 0;
    for (int64_t line = 1; rc == 0 && pos < len; line++) {
        const char *l = text + pos;
        const char *nl = memchr(l, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - l) : len - pos;
        pos += ll + (nl ? 1 : 0);
        if (ll && l[ll - 1] == '\r') ll--;
        if (ll >= 8 && memcmp(l, "#version", 8) == 0) continue;
        const char *sp = memchr(l, ' ', ll);
        char where[64];
        snprintf(where, sizeof where, "line %lld", (long long)line);
        if (!sp || sp == l || sp + 1 == l + ll || memchr(sp + 1, ' ', (size_t)(l + ll - sp - 1))) {
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: \"%.*s\" is not two tokens separated by one space", mpath, where,
                         (int)(ll > 80 ? 80 : ll), l);
            break;
        }
        rc = add_merge(t, l, (size_t)(sp - l), sp + 1, (size_t)(l + ll - sp - 1), rank++, mpath, where, e);
    }
    free(text);
    free(mpath);
    if (rc) return rc;
    t->unk_id = -1;
    t->pre = PRE_BYTE_LEVEL;
    t->bl_prefix_space = false;
    t->bl_regex = true;
    t->has_decoder = true;
    if (add_dec(t, (dec_op){DEC_BYTE_LEVEL, NULL, NULL, 0, 0, 0}, e)) return -1;
    int32_t eot = vocab_find(t, "<|endoftext|>", 13);
    if (eot >= 0) {
        t->flags[eot] |= F_ADDED | F_SPECIAL;
        if (add_added(t, eot, "<|endoftext|>", true, false, false, false, e)) return -1;
    }
    return 0;
}

// ------------------------------------------------------------------------------------------------ tokenizer.model

// SentencePiece's ModelProto, read with a hand-written protobuf reader: only the fields used here.
typedef struct {
    const uint8_t *b;
    size_t pos, end;
} pbr;

typedef struct {
    uint32_t field;
    int wt;
    uint64_t val;        // varint / fixed value
    const uint8_t *data; // length-delimited payload
    size_t len;
    size_t at;           // byte offset of the field's tag
} pb_field;

static int pb_varint(pbr *r, uint64_t *v) {
    uint64_t x = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (r->pos >= r->end) return -1;
        uint8_t c = r->b[r->pos++];
        x |= (uint64_t)(c & 0x7F) << shift;
        if (!(c & 0x80)) { *v = x; return 0; }
    }
    return -2;
}

// Reads one field; r walks the whole file, so r->pos is the byte offset errors report.
static int pb_next(const ps_tokenizer *t, pbr *r, const char *ctx, pb_field *f, ps_error *e) {
    f->at = r->pos;
    uint64_t tag;
    int rc = pb_varint(r, &tag);
    if (rc)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s: %s field tag", t->path, f->at, ctx,
                       rc == -1 ? "truncated" : "overlong");
    f->field = (uint32_t)(tag >> 3);
    f->wt = (int)(tag & 7);
    size_t at = r->pos;
    switch (f->wt) {
    case 0:
        if ((rc = pb_varint(r, &f->val)))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s: field %u: %s varint", t->path, at, ctx, f->field,
                           rc == -1 ? "truncated" : "overlong");
        return 0;
    case 1:
    case 5: {
        size_t n = f->wt == 1 ? 8 : 4;
        if (r->end - r->pos < n)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s: field %u: truncated %zu-byte value", t->path, at, ctx,
                           f->field, n);
        f->val = 0;
        for (size_t k = 0; k < n; k++) f->val |= (uint64_t)r->b[r->pos + k] << (8 * k);
        r->pos += n;
        return 0;
    }
    case 2: {
        uint64_t len;
        if ((rc = pb_varint(r, &len)))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s: field %u: %s length", t->path, at, ctx, f->field,
                           rc == -1 ? "truncated" : "overlong");
        if (len > r->end - r->pos)
            return ps_fail(e, PS_EXIT_BADINPUT,
                           "%s: byte %zu: %s: field %u: length %llu runs past the end of its message (byte %zu)", t->path,
                           at, ctx, f->field, (unsigned long long)len, r->end);
        f->data = r->b + r->pos;
        f->len = (size_t)len;
        r->pos += (size_t)len;
        return 0;
    }
    default:
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s: field %u has wire type %d, which is not supported", t->path,
                       f->at, ctx, f->field, f->wt);
    }
}

static int pb_expect(const ps_tokenizer *t, const pb_field *f, int wt, const char *ctx, const char *name, ps_error *e) {
    if (f->wt == wt) return 0;
    return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s.%s (field %u): wire type %d, expected %d", t->path, f->at, ctx,
                   name, f->field, f->wt, wt);
}

typedef struct {
    const char *s;
    size_t len;
    float score;
    int type;
} sp_piece;

typedef struct {
    sp_piece *pieces;
    int64_t n;
    int model_type;
    bool byte_fallback, treat_ws_suffix;
    int32_t unk_id, bos_id, eos_id;
    const char *unk_piece;
    size_t unk_piece_len;
    bool add_dummy_prefix, remove_extra_ws, escape_ws;
    const char *norm_name;
    size_t norm_name_len, charsmap_len;
} sp_model;

static int parse_sp_piece(const ps_tokenizer *t, const uint8_t *base, const pb_field *outer, int64_t idx, sp_piece *p,
                          ps_error *e) {
    char ctx[64];
    snprintf(ctx, sizeof ctx, "pieces[%lld]", (long long)idx);
    size_t off = (size_t)(outer->data - base);
    pbr r = {base, off, off + outer->len};
    *p = (sp_piece){NULL, 0, 0.0f, 1};
    while (r.pos < r.end) {
        pb_field f;
        if (pb_next(t, &r, ctx, &f, e)) return -1;
        if (f.field == 1) {
            if (pb_expect(t, &f, 2, ctx, "piece", e)) return -1;
            size_t bad;
            if (ps_utf8_check((const char *)f.data, f.len, &bad) != 0)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s.piece: invalid UTF-8", t->path,
                               (size_t)(f.data - base) + bad, ctx);
            p->s = (const char *)f.data;
            p->len = f.len;
        } else if (f.field == 2) {
            if (pb_expect(t, &f, 5, ctx, "score", e)) return -1;
            uint32_t u = (uint32_t)f.val;
            memcpy(&p->score, &u, 4);
        } else if (f.field == 3) {
            if (pb_expect(t, &f, 0, ctx, "type", e)) return -1;
            if (f.val < 1 || f.val > 6)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s.type: %llu is not a piece type (1..6)", t->path,
                               f.at, ctx, (unsigned long long)f.val);
            p->type = (int)f.val;
        }
    }
    if (!p->s || p->len == 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s.piece: missing or empty", t->path, outer->at, ctx);
    if (memchr(p->s, 0, p->len))
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: %s.piece: holds a NUL byte", t->path, outer->at, ctx);
    return 0;
}

static int parse_sp_spec(const ps_tokenizer *t, const uint8_t *base, pb_field *outer, bool trainer, sp_model *m,
                         ps_error *e) {
    const char *ctx = trainer ? "trainer_spec" : "normalizer_spec";
    size_t off = (size_t)(outer->data - base);
    pbr r = {base, off, off + outer->len};
    while (r.pos < r.end) {
        pb_field f;
        if (pb_next(t, &r, ctx, &f, e)) return -1;
        int32_t v32 = (int32_t)(int64_t)f.val; // int32 varints are sign-extended to 64 bits
        if (trainer) {
            switch (f.field) {
            case 3: if (pb_expect(t, &f, 0, ctx, "model_type", e)) return -1; m->model_type = v32; break;
            case 24: if (pb_expect(t, &f, 0, ctx, "treat_whitespace_as_suffix", e)) return -1; m->treat_ws_suffix = f.val != 0; break;
            case 35: if (pb_expect(t, &f, 0, ctx, "byte_fallback", e)) return -1; m->byte_fallback = f.val != 0; break;
            case 40: if (pb_expect(t, &f, 0, ctx, "unk_id", e)) return -1; m->unk_id = v32; break;
            case 41: if (pb_expect(t, &f, 0, ctx, "bos_id", e)) return -1; m->bos_id = v32; break;
            case 42: if (pb_expect(t, &f, 0, ctx, "eos_id", e)) return -1; m->eos_id = v32; break;
            case 45:
                if (pb_expect(t, &f, 2, ctx, "unk_piece", e)) return -1;
                m->unk_piece = (const char *)f.data;
                m->unk_piece_len = f.len;
                break;
            default: break;
            }
        } else {
            switch (f.field) {
            case 1: if (pb_expect(t, &f, 2, ctx, "name", e)) return -1; m->norm_name = (const char *)f.data; m->norm_name_len = f.len; break;
            case 2: if (pb_expect(t, &f, 2, ctx, "precompiled_charsmap", e)) return -1; m->charsmap_len = f.len; break;
            case 3: if (pb_expect(t, &f, 0, ctx, "add_dummy_prefix", e)) return -1; m->add_dummy_prefix = f.val != 0; break;
            case 4: if (pb_expect(t, &f, 0, ctx, "remove_extra_whitespaces", e)) return -1; m->remove_extra_ws = f.val != 0; break;
            case 5: if (pb_expect(t, &f, 0, ctx, "escape_whitespaces", e)) return -1; m->escape_ws = f.val != 0; break;
            default: break;
            }
        }
    }
    return 0;
}

typedef struct {
    float score;
    int32_t len_l, len_r; // in characters, as Python's len()
    int64_t seq;          // order before sorting: by piece id, then left id, then right id
    int32_t l, r, merged;
} sp_merge;

static int cmp_local(const void *a, const void *b) {
    const sp_merge *x = a, *y = b;
    if (x->l != y->l) return x->l < y->l ? -1 : 1;
    return (x->r > y->r) - (x->r < y->r);
}

// transformers' generate_merges(vocab, vocab_scores): sorted by (score, len(left), len(right)) descending, stable.
static int cmp_merge(const void *a, const void *b) {
    const sp_merge *x = a, *y = b;
    if (x->score != y->score) return x->score > y->score ? -1 : 1;
    if (x->len_l != y->len_l) return x->len_l > y->len_l ? -1 : 1;
    if (x->len_r != y->len_r) return x->len_r > y->len_r ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

// The merges HF derives from a SentencePiece BPE model: every split of every piece into two pieces.
static int sp_build_merges(ps_tokenizer *t, const sp_model *m, ps_error *e) {
    size_t cap = 1024, n = 0;
    sp_merge *all = malloc(cap * sizeof *all);
    if (!all) return oom(e);
    for (int64_t id = 0; id < m->n; id++) {
        const char *p = m->pieces[id].s;
        size_t len = m->pieces[id].len, first = n;
        for (size_t i = u8len((unsigned char)p[0]); i < len; i += u8len((unsigned char)p[i])) {
            int32_t l = vocab_find(t, p, i), r = vocab_find(t, p + i, len - i);
            if (l < 0 || r < 0) continue;
            if (n == cap) {
                sp_merge *g = realloc(all, 2 * cap * sizeof *g);
                if (!g) { free(all); return oom(e); }
                all = g;
                cap *= 2;
            }
            all[n++] = (sp_merge){m->pieces[id].score, (int32_t)u8count(p, i), (int32_t)u8count(p + i, len - i), 0, l, r,
                                  (int32_t)id};
        }
        qsort(all + first, n - first, sizeof *all, cmp_local);
    }
    for (size_t k = 0; k < n; k++) all[k].seq = (int64_t)k;
    qsort(all, n, sizeof *all, cmp_merge);
    int rc = merges_alloc(t, (int64_t)n, e);
    for (size_t k = 0; rc == 0 && k < n; k++) merge_put(t, all[k].l, all[k].r, (int32_t)k, all[k].merged);
    free(all);
    return rc;
}

static int load_sentencepiece(ps_tokenizer *t, const char *data, size_t len, ps_error *e) {
    const uint8_t *base = (const uint8_t *)data;
    sp_model m = {0};
    m.model_type = 1; // proto defaults
    m.unk_id = 0;
    m.bos_id = 1;
    m.eos_id = 2;
    m.add_dummy_prefix = m.remove_extra_ws = m.escape_ws = true;
    m.unk_piece = "<unk>";
    m.unk_piece_len = 5;
    size_t cap = 0;
    pbr r = {base, 0, len};
    int rc = 0;
    bool have_trainer = false;
    while (r.pos < r.end && rc == 0) {
        pb_field f;
        if ((rc = pb_next(t, &r, "ModelProto", &f, e))) break;
        if (f.field == 1) {
            if ((rc = pb_expect(t, &f, 2, "ModelProto", "pieces", e))) break;
            if ((size_t)m.n == cap) {
                cap = cap ? 2 * cap : 1024;
                sp_piece *p = realloc(m.pieces, cap * sizeof *p);
                if (!p) { rc = oom(e); break; }
                m.pieces = p;
            }
            rc = parse_sp_piece(t, base, &f, m.n, &m.pieces[m.n], e);
            m.n++;
        } else if (f.field == 2 || f.field == 3) {
            if ((rc = pb_expect(t, &f, 2, "ModelProto", f.field == 2 ? "trainer_spec" : "normalizer_spec", e))) break;
            have_trainer |= f.field == 2;
            rc = parse_sp_spec(t, base, &f, f.field == 2, &m, e);
        }
    }
    if (rc == 0 && m.n == 0) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: pieces: none (not a SentencePiece model?)", t->path);
    if (rc == 0 && !have_trainer) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: trainer_spec: missing", t->path);
    if (rc == 0 && m.model_type != 2)
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: trainer_spec.model_type: %d (%s) is not supported (only BPE = 2)", t->path,
                     m.model_type, m.model_type == 1 ? "UNIGRAM" : m.model_type == 3 ? "WORD" : m.model_type == 4 ? "CHAR" : "?");
    if (rc == 0 && m.charsmap_len)
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: normalizer_spec: normalizer \"%.*s\" (a precompiled_charsmap) is not "
                     "supported (only identity)", t->path, (int)m.norm_name_len, m.norm_name ? m.norm_name : "");
    if (rc == 0 && m.remove_extra_ws)
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: normalizer_spec.remove_extra_whitespaces: true is not supported", t->path);
    if (rc == 0 && !m.escape_ws)
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: normalizer_spec.escape_whitespaces: false is not supported", t->path);
    if (rc == 0 && m.treat_ws_suffix)
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: trainer_spec.treat_whitespace_as_suffix: true is not supported", t->path);
    if (rc == 0) rc = vocab_alloc(t, m.n, e);
    for (int64_t id = 0; rc == 0 && id < m.n; id++) {
        const sp_piece *p = &m.pieces[id];
        // Control, unknown and user-defined pieces are added tokens in HF (split out of the text first).
        uint8_t fl = F_MODEL | (p->type == 2 || p->type == 3 || p->type == 4 ? F_ADDED : 0) |
                     (p->type == 2 || p->type == 3 ? F_SPECIAL : 0);
        rc = vocab_set(t, (int32_t)id, p->s, p->len, fl, e);
    }
    if (rc == 0) rc = vocab_index(t, "pieces", e);
    for (int64_t id = 0; rc == 0 && id < m.n; id++) {
        if (!(t->flags[id] & F_ADDED)) continue;
        char *s = strndup(m.pieces[id].s, m.pieces[id].len);
        if (!s) { rc = oom(e); break; }
        rc = add_added(t, (int32_t)id, s, (t->flags[id] & F_SPECIAL) != 0, false, false, false, e);
        free(s);
    }
    if (rc == 0) rc = sp_build_merges(t, &m, e);
    if (rc == 0) {
        t->byte_fallback = m.byte_fallback;
        t->fuse_unk = true;
        t->unk_id = vocab_find(t, m.unk_piece, m.unk_piece_len);
        if (t->unk_id < 0 && m.unk_id >= 0 && m.unk_id < m.n) t->unk_id = m.unk_id;
        t->bos_id = m.bos_id >= 0 && m.bos_id < m.n ? m.bos_id : -1;
        t->eos_id = m.eos_id >= 0 && m.eos_id < m.n ? m.eos_id : -1;
        t->pre = PRE_NONE;
        if (m.add_dummy_prefix) rc = add_norm(t, NORM_PREPEND, "\xE2\x96\x81", NULL, e);
        if (rc == 0) rc = add_norm(t, NORM_REPLACE, " ", "\xE2\x96\x81", e);
        // LlamaConverter's decoder: Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0).
        t->has_decoder = true;
        dec_op ops[4] = {{DEC_REPLACE, strdup("\xE2\x96\x81"), strdup(" "), 0, 0, 0},
                         {DEC_BYTE_FALLBACK, NULL, NULL, 0, 0, 0},
                         {DEC_FUSE, NULL, NULL, 0, 0, 0},
                         {DEC_STRIP, strdup(" "), NULL, 1, 0, 0}};
        int nops = m.add_dummy_prefix ? 4 : 3;
        if (!ops[0].a || !ops[0].b || !ops[3].a) rc = oom(e);
        for (int k = 0; k < 4; k++) {
            if (rc == 0 && k < nops) rc = add_dec(t, ops[k], e);
            else { free(ops[k].a); free(ops[k].b); }
        }
    }
    free(m.pieces);
    return rc;
}

// ------------------------------------------------------------------------------------------------ loading

static bool file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

// bos/eos from tokenizer_config.json beside the file ("bos_token": "<s>" or {"content": "<s>"}), else by name.
static int find_special_ids(ps_tokenizer *t, ps_error *e) {
    static const char *bos_names[] = {"<s>", "<|endoftext|>", "<|begin_of_text|>"};
    static const char *eos_names[] = {"</s>", "<|endoftext|>", "<|end_of_text|>"};
    char *dir = ps_dirname(t->path);
    char *cfg = dir ? ps_path_join(dir, "tokenizer_config.json") : NULL;
    free(dir);
    if (!cfg) return oom(e);
    if (file_exists(cfg)) {
        size_t len;
        char *text = ps_read_file(cfg, &len, e);
        cJSON *root = text ? parse_json(cfg, text, len, e) : NULL;
        free(text);
        if (!root) { free(cfg); return -1; }
        const char *keys[2] = {"bos_token", "eos_token"};
        int32_t *dst[2] = {&t->bos_id, &t->eos_id};
        for (int k = 0; k < 2; k++) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(root, keys[k]);
            if (cJSON_IsObject(v)) v = cJSON_GetObjectItemCaseSensitive(v, "content");
            if (!cJSON_IsString(v)) continue;
            int32_t id = ps_tokenizer_token_id(t, v->valuestring);
            if (id < 0) {
                ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: \"%s\" is not in the vocabulary of %s", cfg, keys[k],
                        v->valuestring, t->path);
                cJSON_Delete(root);
                free(cfg);
                return -1;
            }
            *dst[k] = id;
        }
        cJSON_Delete(root);
    }
    free(cfg);
    for (int k = 0; k < 3 && t->bos_id < 0; k++) t->bos_id = ps_tokenizer_token_id(t, bos_names[k]);
    for (int k = 0; k < 3 && t->eos_id < 0; k++) t->eos_id = ps_tokenizer_token_id(t, eos_names[k]);
    return 0;
}

// Tables that need the whole vocabulary: byte tokens, decoded texts, the regex, the cache.
static int finish(ps_tokenizer *t, ps_error *e) {
    byte_level_tables(t->b2u, t->u2b);
    t->kind = t->pre == PRE_BYTE_LEVEL ? PS_TOK_BYTE_LEVEL : PS_TOK_SENTENCEPIECE;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_piece[b] = vocab_find(t, name, 6);
        char u[4];
        size_t ul = u8encode(t->b2u[b], u);
        t->byte_id[b] = vocab_find(t, u, ul);
        if (t->pre == PRE_BYTE_LEVEL && t->byte_id[b] < 0)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: vocabulary: no token for byte 0x%02X (\"%.*s\"); a byte-level BPE "
                           "vocabulary holds all 256", t->path, b, (int)ul, u);
    }
    // Each token's own text: byte-level tokens back to bytes; SentencePiece "▁" to space and <0xXX> to its byte.
    sbuf one = {0};
    for (int64_t id = 0; id < t->n; id++) {
        if (t->piece_off[id] < 0) continue;
        const char *p = piece_of(t, (int32_t)id);
        size_t n = (size_t)t->piece_len[id];
        one.n = 0;
        bool ok;
        int bv = byte_piece_value(p, n);
        if (t->flags[id] & F_ADDED) ok = sbuf_put(&one, p, n);
        else if (t->kind == PS_TOK_BYTE_LEVEL) ok = byte_level_bytes(t, p, n, &one) || (one.n = 0, sbuf_put(&one, p, n));
        else if (bv >= 0 && t->byte_fallback) { char c = (char)bv; ok = sbuf_put(&one, &c, 1); }
        else ok = replace_all(&one, p, n, t->pre == PRE_METASPACE ? t->ms_repl : "\xE2\x96\x81", " ");
        int64_t off = (int64_t)t->arena.n;
        if (!ok || !sbuf_put(&t->arena, one.p, one.n) || !sbuf_put(&t->arena, "", 1)) { free(one.p); return oom(e); }
        t->text_off[id] = off;
        t->text_len[id] = (int32_t)one.n;
    }
    free(one.p);
    if (t->pre == PRE_BYTE_LEVEL && t->bl_regex) {
        int err;
        PCRE2_SIZE erroff;
        t->re = pcre2_compile((PCRE2_SPTR)GPT2_PATTERN, PCRE2_ZERO_TERMINATED, PCRE2_UTF | PCRE2_UCP, &err, &erroff, NULL);
        if (!t->re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            return ps_fail(e, PS_EXIT_RUNTIME, "pre-tokenizer regex: offset %zu: %s", (size_t)erroff, (char *)msg);
        }
        pcre2_jit_compile(t->re, PCRE2_JIT_COMPLETE); // falls back to the interpreter where JIT is unavailable
    }
    t->cache = calloc(CACHE_SLOTS, sizeof *t->cache);
    if (!t->cache) return oom(e);
    pthread_mutex_init(&t->cache_mu, NULL);
    return 0;
}

int ps_tokenizer_load(ps_tokenizer **out, const char *path, ps_error *e) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
    char *file = NULL;
    if (S_ISDIR(st.st_mode)) {
        static const char *names[] = {"tokenizer.json", "vocab.json", "tokenizer.model"};
        for (int k = 0; k < 3 && !file; k++) {
            char *p = ps_path_join(path, names[k]);
            if (p && file_exists(p)) file = p;
            else free(p);
        }
        if (!file)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: no tokenizer.json, vocab.json or tokenizer.model in this directory", path);
    } else {
        file = strdup(path);
        if (!file) return oom(e);
    }
    ps_tokenizer *t = calloc(1, sizeof *t);
    if (!t) { free(file); return oom(e); }
    t->path = file;
    t->unk_id = t->bos_id = t->eos_id = -1;
    size_t len;
    char *data = ps_read_file(file, &len, e);
    int rc = data ? 0 : -1;
    if (rc == 0) {
        size_t k = 0;
        while (k < len && (data[k] == ' ' || data[k] == '\n' || data[k] == '\r' || data[k] == '\t')) k++;
        bool json = ends_with(file, ".json") || (!ends_with(file, ".model") && k < len && data[k] == '{');
        if (json) {
            cJSON *root = parse_json(file, data, len, e);
            if (!root) rc = -1;
            else if (!cJSON_IsObject(root)) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: expected a JSON object", file);
            // A vocab.json can hold the token "model" too; a tokenizer.json's model is an object.
            else if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "model"))) rc = load_tokenizer_json(t, root, e);
            else rc = load_vocab_json(t, root, e);
            cJSON_Delete(root);
        } else {
            rc = load_sentencepiece(t, data, len, e);
        }
    }
    free(data);
    if (rc == 0 && t->bos_id < 0) rc = find_special_ids(t, e);
    if (rc == 0) rc = finish(t, e);
    if (rc) { ps_tokenizer_free(t); return -1; }
    *out = t;
    return 0;
}
