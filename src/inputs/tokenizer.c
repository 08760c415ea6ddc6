// The tokenizer's core: GPT-2 byte-level BPE and SentencePiece-style BPE with byte fallback, encode and decode
// mirroring HF tokenizers' code, and the tables built once the vocabulary is loaded (loaders: tokenizer_hf.c,
// tokenizer_sp.c).
#include "tokenizer_internal.h"
#include "unicode_nfc.h"

#include <stdio.h>

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

// ------------------------------------------------------------------------------------------------ vocabulary lookups

int32_t ps_tok_vocab_find(const ps_tokenizer *t, const char *s, size_t n) {
    if (!t->map_cap) return -1;
    uint32_t h = hash_bytes(s, n);
    size_t mask = t->map_cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        int32_t id = t->map[i];
        if (id < 0) return -1;
        if (t->map_hash[i] == h && (size_t)t->piece_len[id] == n && memcmp(piece_of(t, id), s, n) == 0) return id;
    }
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
            int32_t id = ps_tok_vocab_find(t, w + i, cl);
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
        } else if (op->kind == NORM_NFC) {
            size_t len = 0;
            nx.p = ps_utf8_nfc(cur.p, cur.n, &len);
            nx.n = len;
            nx.cap = len + 1;
            ok = nx.p != NULL;
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
    return ps_tok_vocab_find(t, piece, n);
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

// ------------------------------------------------------------------------------------------------ tables

// Tables that need the whole vocabulary: byte tokens, decoded texts, the regex, the cache.
int ps_tok_finish(ps_tokenizer *t, ps_error *e) {
    byte_level_tables(t->b2u, t->u2b);
    t->kind = t->pre == PRE_BYTE_LEVEL ? PS_TOK_BYTE_LEVEL : PS_TOK_SENTENCEPIECE;
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        t->byte_piece[b] = ps_tok_vocab_find(t, name, 6);
        char u[4];
        size_t ul = u8encode(t->b2u[b], u);
        t->byte_id[b] = ps_tok_vocab_find(t, u, ul);
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
