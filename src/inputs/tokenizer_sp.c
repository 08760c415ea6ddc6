// SentencePiece's tokenizer.model (Llama): a hand-written protobuf reader for the fields used, and the vocabulary,
// merges, normalizer and decoder Hugging Face's LlamaConverter derives from it.
#include "tokenizer_internal.h"

#include <stdio.h>

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
            int32_t l = ps_tok_vocab_find(t, p, i), r = ps_tok_vocab_find(t, p + i, len - i);
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
    int rc = ps_tok_merges_alloc(t, (int64_t)n, e);
    for (size_t k = 0; rc == 0 && k < n; k++) ps_tok_merge_put(t, all[k].l, all[k].r, (int32_t)k, all[k].merged);
    free(all);
    return rc;
}

int ps_tok_load_sentencepiece(ps_tokenizer *t, const char *data, size_t len, ps_error *e) {
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
    if (rc == 0) rc = ps_tok_vocab_alloc(t, m.n, e);
    for (int64_t id = 0; rc == 0 && id < m.n; id++) {
        const sp_piece *p = &m.pieces[id];
        // Control, unknown and user-defined pieces are added tokens in HF (split out of the text first).
        uint8_t fl = F_MODEL | (p->type == 2 || p->type == 3 || p->type == 4 ? F_ADDED : 0) |
                     (p->type == 2 || p->type == 3 ? F_SPECIAL : 0);
        rc = ps_tok_vocab_set(t, (int32_t)id, p->s, p->len, fl, e);
    }
    if (rc == 0) rc = ps_tok_vocab_index(t, "pieces", e);
    for (int64_t id = 0; rc == 0 && id < m.n; id++) {
        if (!(t->flags[id] & F_ADDED)) continue;
        char *s = strndup(m.pieces[id].s, m.pieces[id].len);
        if (!s) { rc = oom(e); break; }
        rc = ps_tok_add_added(t, (int32_t)id, s, (t->flags[id] & F_SPECIAL) != 0, false, false, false, e);
        free(s);
    }
    if (rc == 0) rc = sp_build_merges(t, &m, e);
    if (rc == 0) {
        t->byte_fallback = m.byte_fallback;
        t->fuse_unk = true;
        t->unk_id = ps_tok_vocab_find(t, m.unk_piece, m.unk_piece_len);
        if (t->unk_id < 0 && m.unk_id >= 0 && m.unk_id < m.n) t->unk_id = m.unk_id;
        t->bos_id = m.bos_id >= 0 && m.bos_id < m.n ? m.bos_id : -1;
        t->eos_id = m.eos_id >= 0 && m.eos_id < m.n ? m.eos_id : -1;
        t->pre = PRE_NONE;
        if (m.add_dummy_prefix) rc = ps_tok_add_norm(t, NORM_PREPEND, "\xE2\x96\x81", NULL, e);
        if (rc == 0) rc = ps_tok_add_norm(t, NORM_REPLACE, " ", "\xE2\x96\x81", e);
        // LlamaConverter's decoder: Replace("▁", " "), ByteFallback, Fuse, Strip(" ", 1, 0).
        t->has_decoder = true;
        dec_op ops[4] = {{DEC_REPLACE, strdup("\xE2\x96\x81"), strdup(" "), 0, 0, 0},
                         {DEC_BYTE_FALLBACK, NULL, NULL, 0, 0, 0},
                         {DEC_FUSE, NULL, NULL, 0, 0, 0},
                         {DEC_STRIP, strdup(" "), NULL, 1, 0, 0}};
        int nops = m.add_dummy_prefix ? 4 : 3;
        if (!ops[0].a || !ops[0].b || !ops[3].a) rc = oom(e);
        for (int k = 0; k < 4; k++) {
            if (rc == 0 && k < nops) rc = ps_tok_add_dec(t, ops[k], e);
            else { free(ops[k].a); free(ops[k].b); }
        }
    }
    free(m.pieces);
    return rc;
}

