// Loading a tokenizer: ps_tokenizer_load finds the file and picks its reader; Hugging Face's tokenizer.json and
// vocab.json + merges.txt are read here (tokenizer.model: tokenizer_sp.c), with the tables both readers fill.
#include "tokenizer_internal.h"

#include "ps_json.h"
#include "unicode_nfc.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <sys/stat.h>

// ------------------------------------------------------------------------------------------------ the tables every loader fills

int ps_tok_vocab_alloc(ps_tokenizer *t, int64_t n, ps_error *e) {
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

int ps_tok_vocab_set(ps_tokenizer *t, int32_t id, const char *s, size_t len, uint8_t flags, ps_error *e) {
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
int ps_tok_vocab_index(ps_tokenizer *t, const char *where, ps_error *e) {
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

int ps_tok_merges_alloc(ps_tokenizer *t, int64_t n, ps_error *e) {
    t->merge_cap = pow2_at_least((size_t)n * 2 + 1);
    t->merges = malloc(t->merge_cap * sizeof *t->merges);
    if (!t->merges) return oom(e);
    for (size_t i = 0; i < t->merge_cap; i++) t->merges[i].rank = -1;
    return 0;
}

// Later duplicates replace earlier ones, as HF's merge map does.
void ps_tok_merge_put(ps_tokenizer *t, int32_t a, int32_t b, int32_t rank, int32_t new_id) {
    uint64_t key = ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
    size_t mask = t->merge_cap - 1;
    size_t i = mix64(key) & mask;
    while (t->merges[i].rank >= 0 && t->merges[i].key != key) i = (i + 1) & mask;
    if (t->merges[i].rank < 0) t->n_merges++;
    t->merges[i].key = key;
    t->merges[i].rank = rank;
    t->merges[i].new_id = new_id;
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
    // A token spelled "\u0000" would be cut to "" by cJSON (a wrong vocabulary, not an error): refuse it.
    if (ps_json_check_nul(text, len, path, 1, e) != 0) return NULL;
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

int ps_tok_add_norm(ps_tokenizer *t, int kind, const char *a, const char *b, ps_error *e) {
    norm_op *n = realloc(t->norm, (size_t)(t->n_norm + 1) * sizeof *n);
    if (!n) return oom(e);
    t->norm = n;
    n[t->n_norm] = (norm_op){kind, strdup(a), b ? strdup(b) : NULL};
    if (!n[t->n_norm].a || (b && !n[t->n_norm].b)) return oom(e);
    t->n_norm++;
    return 0;
}

int ps_tok_add_dec(ps_tokenizer *t, dec_op op, ps_error *e) {
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

// A {"type": "Sequence", KEY: [...]} of normalizers or decoders: each item through parse at WHERE.KEY[i].
typedef int (*parse_fn)(ps_tokenizer *t, const cJSON *o, const char *where, ps_error *e);
static int parse_sequence(ps_tokenizer *t, const cJSON *o, const char *where, const char *key, parse_fn parse, ps_error *e) {
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!cJSON_IsArray(list)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.%s: expected an array", t->path, where, key);
    char sub[256];
    int i = 0;
    for (const cJSON *c = list->child; c; c = c->next, i++) {
        snprintf(sub, sizeof sub, "%s.%s[%d]", where, key, i);
        if (parse(t, c, sub, e)) return -1;
    }
    return 0;
}

static int parse_normalizer(ps_tokenizer *t, const cJSON *o, const char *where, ps_error *e) {
    if (!o || cJSON_IsNull(o)) return 0;
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(o, "type");
    const char *ty = cJSON_IsString(type) ? type->valuestring : "";
    if (strcmp(ty, "Sequence") == 0) return parse_sequence(t, o, where, "normalizers", parse_normalizer, e);
    // GPT-NeoX's (Pythia's) normalizer: Unicode 9.0 NFC, as HF tokenizers has it (unicode_nfc.c).
    if (strcmp(ty, "NFC") == 0) return ps_tok_add_norm(t, NORM_NFC, "", NULL, e);
    if (strcmp(ty, "Prepend") == 0) {
        const char *p;
        if (json_str(t, o, "prepend", where, &p, e)) return -1;
        if (!p) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.prepend: missing", t->path, where);
        return ps_tok_add_norm(t, NORM_PREPEND, p, NULL, e);
    }
    if (strcmp(ty, "Replace") == 0) {
        const char *pat, *content;
        if (replace_pattern(t, o, where, &pat, e) || json_str(t, o, "content", where, &content, e)) return -1;
        if (!content) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s.content: missing", t->path, where);
        return ps_tok_add_norm(t, NORM_REPLACE, pat, content, e);
    }
    return ps_fail(e, PS_EXIT_BADINPUT,
                   "%s: %s.type: \"%s\" is not supported (supported: NFC, Prepend, Replace with a String pattern, Sequence)",
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
    if (strcmp(ty, "Sequence") == 0) return parse_sequence(t, o, where, "decoders", parse_decoder, e);
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
    return ps_tok_add_dec(t, op, e);
}

int ps_tok_add_added(ps_tokenizer *t, int32_t id, const char *content, bool special, bool normalized, bool lstrip,
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
    if (ps_tok_vocab_alloc(t, max_id + 1, e)) return -1;
    for (const cJSON *c = vocab->child; c; c = c->next) {
        int64_t id = 0;
        json_id(c, &id);
        if (t->piece_off[id] >= 0)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s[\"%s\"]: id %lld is already \"%s\"", t->path, where, c->string,
                           (long long)id, piece_of(t, (int32_t)id));
        if (ps_tok_vocab_set(t, (int32_t)id, c->string, strlen(c->string), F_MODEL, e)) return -1;
    }
    return ps_tok_vocab_index(t, where, e);
}

// Registers one merge "a" + "b"; where names it for errors.
static int add_merge(ps_tokenizer *t, const char *a, size_t al, const char *b, size_t bl, int32_t rank, const char *file,
                     const char *where, ps_error *e) {
    int32_t ia = ps_tok_vocab_find(t, a, al), ib = ps_tok_vocab_find(t, b, bl);
    char joined[1024];
    if (ia < 0 || ib < 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: \"%.*s\" is not in the vocabulary", file, where,
                       ia < 0 ? (int)al : (int)bl, ia < 0 ? a : b);
    if (al + bl >= sizeof joined) return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: merged token is too long", file, where);
    memcpy(joined, a, al);
    memcpy(joined + al, b, bl);
    int32_t in = ps_tok_vocab_find(t, joined, al + bl);
    if (in < 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s: the merged token \"%.*s\" is not in the vocabulary", file, where,
                       (int)(al + bl), joined);
    ps_tok_merge_put(t, ia, ib, rank, in);
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
    bool nfc_only = true;
    for (int k = 0; k < t->n_norm; k++) nfc_only = nfc_only && t->norm[k].kind == NORM_NFC;
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
        // HF matches such tokens in the normalized text by their content normalized: done here for NFC alone
        // (Pythia's whitespace tokens); other normalizers' effect on a token is not reproduced.
        if (t->n_norm && !nfc_only && json_bool(c, "normalized", !json_bool(c, "special", false)))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: added_tokens[%d].normalized: true together with a normalizer other "
                           "than NFC is not supported", t->path, i);
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
        } else if (ps_tok_vocab_set(t, (int32_t)id, content, strlen(content), F_ADDED | (special ? F_SPECIAL : 0), e)) {
            return -1;
        }
        bool normalized = json_bool(c, "normalized", !special);
        char *match = NULL; // what the token matches: its content, NFC'd when it is matched in normalized text
        size_t match_len;
        if (normalized && t->n_norm && !(match = ps_utf8_nfc(content, strlen(content), &match_len))) return oom(e);
        int rc = ps_tok_add_added(t, (int32_t)id, match ? match : content, special, normalized,
                                  json_bool(c, "lstrip", false), json_bool(c, "rstrip", false), e);
        free(match);
        if (rc) return -1;
    }

    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: model.merges: missing or not an array", t->path);
    if (ps_tok_merges_alloc(t, cJSON_GetArraySize(merges), e)) return -1;
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
        t->unk_id = ps_tok_vocab_find(t, unk, strlen(unk));
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
    int rc = ps_tok_merges_alloc(t, lines, e);
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
    if (ps_tok_add_dec(t, (dec_op){DEC_BYTE_LEVEL, NULL, NULL, 0, 0, 0}, e)) return -1;
    int32_t eot = ps_tok_vocab_find(t, "<|endoftext|>", 13);
    if (eot >= 0) {
        t->flags[eot] |= F_ADDED | F_SPECIAL;
        if (ps_tok_add_added(t, eot, "<|endoftext|>", true, false, false, false, e)) return -1;
    }
    return 0;
}

// ------------------------------------------------------------------------------------------------ loading


// bos/eos from tokenizer_config.json beside the file ("bos_token": "<s>" or {"content": "<s>"}), else by name.
static int find_special_ids(ps_tokenizer *t, ps_error *e) {
    static const char *bos_names[] = {"<s>", "<|endoftext|>", "<|begin_of_text|>"};
    static const char *eos_names[] = {"</s>", "<|endoftext|>", "<|end_of_text|>"};
    char *dir = ps_dirname(t->path);
    char *cfg = dir ? ps_path_join(dir, "tokenizer_config.json") : NULL;
    free(dir);
    if (!cfg) return oom(e);
    if (ps_path_exists(cfg)) {
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

int ps_tokenizer_load(ps_tokenizer **out, const char *path, ps_error *e) {
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
    char *file = NULL;
    if (S_ISDIR(st.st_mode)) {
        static const char *names[] = {"tokenizer.json", "vocab.json", "tokenizer.model"};
        for (int k = 0; k < 3 && !file; k++) {
            char *p = ps_path_join(path, names[k]);
            if (p && ps_path_exists(p)) file = p;
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
        bool json = ps_ends_with(file, ".json") || (!ps_ends_with(file, ".model") && k < len && data[k] == '{');
        if (json) {
            cJSON *root = parse_json(file, data, len, e);
            if (!root) rc = -1;
            else if (!cJSON_IsObject(root)) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: expected a JSON object", file);
            // A vocab.json can hold the token "model" too; a tokenizer.json's model is an object.
            else if (cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(root, "model"))) rc = load_tokenizer_json(t, root, e);
            else rc = load_vocab_json(t, root, e);
            cJSON_Delete(root);
        } else {
            rc = ps_tok_load_sentencepiece(t, data, len, e);
        }
    }
    free(data);
    if (rc == 0 && t->bos_id < 0) rc = find_special_ids(t, e);
    if (rc == 0) rc = ps_tok_finish(t, e);
    if (rc) { ps_tokenizer_free(t); return -1; }
    *out = t;
    return 0;
}
