// Private to the tokenizer's three files (tokenizer.c: the byte-level BPE core, encoding and decoding;
// tokenizer_hf.c: loading, tokenizer.json and vocab.json + merges.txt; tokenizer_sp.c: tokenizer.model).
#ifndef PS_TOKENIZER_INTERNAL_H
#define PS_TOKENIZER_INTERNAL_H

#include "ps_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

// ------------------------------------------------------------------------------------------------ small helpers

typedef struct {
    char *p;
    size_t n, cap;
} sbuf;

static inline bool sbuf_put(sbuf *b, const void *s, size_t n) {
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

static inline int oom(ps_error *e) { return ps_fail(e, PS_EXIT_RUNTIME, "out of memory in the tokenizer"); }

// Length of the UTF-8 sequence led by c (input already validated).
static inline size_t u8len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }

static inline size_t u8count(const char *s, size_t n) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++) k += ((unsigned char)s[i] & 0xC0) != 0x80;
    return k;
}

static inline uint32_t hash_bytes(const char *s, size_t n) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < n; i++) { h ^= (unsigned char)s[i]; h *= 16777619u; }
    return h;
}

static inline uint64_t mix64(uint64_t x) {
    x ^= x >> 33; x *= 0xff51afd7ed558ccdULL; x ^= x >> 33; x *= 0xc4ceb9fe1a85ec53ULL; x ^= x >> 33;
    return x;
}

static inline size_t pow2_at_least(size_t n) {
    size_t c = 16;
    while (c < n) c *= 2;
    return c;
}

// ------------------------------------------------------------------------------------------------ the tokenizer

enum { F_MODEL = 1, F_ADDED = 2, F_SPECIAL = 4 };
enum { PRE_NONE, PRE_BYTE_LEVEL, PRE_METASPACE };
enum { SCHEME_ALWAYS, SCHEME_FIRST, SCHEME_NEVER };
enum { NORM_PREPEND, NORM_REPLACE, NORM_NFC };
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

static inline const char *piece_of(const ps_tokenizer *t, int32_t id) { return t->arena.p + t->piece_off[id]; }

static inline bool valid_id(const ps_tokenizer *t, int64_t id) { return id >= 0 && id < t->n && t->piece_off[id] >= 0; }

// ------------------------------------------------------------------------------------------------ shared between the files

// tokenizer.c: the id of a model-vocabulary spelling, or -1.
int32_t ps_tok_vocab_find(const ps_tokenizer *t, const char *s, size_t n);
// tokenizer.c: the tables that need the whole vocabulary (byte tokens, decoded texts, the regex, the cache).
int ps_tok_finish(ps_tokenizer *t, ps_error *e);

// tokenizer_hf.c: the id tables and merge map every loader fills, and the normalizer/decoder/added-token lists.
int ps_tok_vocab_alloc(ps_tokenizer *t, int64_t n, ps_error *e);
int ps_tok_vocab_set(ps_tokenizer *t, int32_t id, const char *s, size_t len, uint8_t flags, ps_error *e);
int ps_tok_vocab_index(ps_tokenizer *t, const char *where, ps_error *e);
int ps_tok_merges_alloc(ps_tokenizer *t, int64_t n, ps_error *e);
void ps_tok_merge_put(ps_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t new_id);
int ps_tok_add_norm(ps_tokenizer *t, int kind, const char *a, const char *b, ps_error *e);
int ps_tok_add_dec(ps_tokenizer *t, dec_op op, ps_error *e);
int ps_tok_add_added(ps_tokenizer *t, int32_t id, const char *content, bool special, bool normalized, bool lstrip,
                     bool rstrip, ps_error *e);

// tokenizer_sp.c: a SentencePiece tokenizer.model's bytes into t.
int ps_tok_load_sentencepiece(ps_tokenizer *t, const char *data, size_t len, ps_error *e);

#endif
