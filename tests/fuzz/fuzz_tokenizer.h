// What the tokenizer targets do with a tokenizer that loaded: encode fixed and fuzzed text, decode, look tokens up,
// and check the invariants callers rely on (ids inside the vocabulary, decode of any ids succeeds).
#ifndef PS_FUZZ_TOKENIZER_H
#define PS_FUZZ_TOKENIZER_H

#include "fuzz_util.h"
#include "ps_tokenizer.h"

static void fuzz_encode_decode(const ps_tokenizer *tok, const char *text, size_t len) {
    int32_t *ids = NULL;
    int64_t n = -1;
    ps_error e = {0};
    int64_t V = ps_tokenizer_vocab_size(tok);
    int rc = ps_tokenizer_encode_n(tok, text, len, &ids, &n, &e);
    fuzz_note("  encode", rc, e.msg);
    if (rc != 0) {
        FUZZ_FAIL_IF(fuzz_bad_error(&e) || ids);
        return;
    }
    FUZZ_FAIL_IF(!ids || n < 0);
    for (int64_t i = 0; i < n; i++)
        FUZZ_FAIL_IF(ids[i] < 0 || ids[i] >= V || !ps_tokenizer_token_piece(tok, ids[i]));
    size_t dlen = 0;
    char *d = ps_tokenizer_decode_n(tok, ids, n, &dlen);
    FUZZ_FAIL_IF(!d || d[dlen] != 0);
    free(d);
    free(ids);
}

static void fuzz_tokenizer(const ps_tokenizer *tok, const uint8_t *data, size_t size) {
    int64_t V = ps_tokenizer_vocab_size(tok);
    FUZZ_FAIL_IF(V < 1);
    int32_t bos = ps_tokenizer_bos_id(tok), eos = ps_tokenizer_eos_id(tok);
    FUZZ_FAIL_IF(bos < -1 || bos >= V || eos < -1 || eos >= V);
    ps_tokenizer_kind k = ps_tokenizer_kind_of(tok);
    FUZZ_FAIL_IF(k != PS_TOK_BYTE_LEVEL && k != PS_TOK_SENTENCEPIECE);
    FUZZ_FAIL_IF(!ps_tokenizer_path(tok));

    static const char fixed[] = "Hello world!  The answer is 42.\n\tCaf\xC3\xA9 \xE2\x86\x92 \xF0\x9F\x98\x80 <|endoftext|><s></s> "
                                "<unk> x\xE2\x96\x81y \xE2\x96\x81 ";
    fuzz_encode_decode(tok, fixed, sizeof fixed - 1);
    fuzz_encode_decode(tok, "", 0);
    fuzz_encode_decode(tok, " ", 1);
    // A slice of the input as text (often invalid UTF-8, which must be an error, not a crash).
    fuzz_encode_decode(tok, (const char *)data, size < 300 ? size : 300);
    if (size > 300) fuzz_encode_decode(tok, (const char *)data + size - 100, 100);

    // Every token (up to a bound) on its own: text, piece, id round trip, decode.
    int64_t lim = V < 2048 ? V : 2048;
    for (int32_t id = 0; id < lim; id++) {
        const char *piece = ps_tokenizer_token_piece(tok, id);
        size_t bl = 0;
        const char *bytes = ps_tokenizer_token_bytes(tok, id, &bl);
        char *txt = ps_tokenizer_token_text(tok, id);
        FUZZ_FAIL_IF((piece == NULL) != (bytes == NULL) || (piece == NULL) != (txt == NULL));
        FUZZ_FAIL_IF(txt && memcmp(txt, bytes, bl) != 0);
        free(txt);
        FUZZ_FAIL_IF(piece && ps_tokenizer_token_id(tok, piece) < 0);
        (void)ps_tokenizer_is_special(tok, id);
        char *d = ps_tokenizer_decode(tok, &id, 1);
        FUZZ_FAIL_IF(!d);
        free(d);
    }
    // Unknown ids are skipped, never read.
    int32_t odd[] = {-1, (int32_t)V, INT32_MAX, INT32_MIN, 0, (int32_t)(V - 1), bos, eos};
    char *d = ps_tokenizer_decode(tok, odd, (int64_t)(sizeof odd / sizeof odd[0]));
    FUZZ_FAIL_IF(!d);
    free(d);
    FUZZ_FAIL_IF(ps_tokenizer_token_bytes(tok, -1, NULL) || ps_tokenizer_token_text(tok, (int32_t)V) ||
        ps_tokenizer_token_piece(tok, INT32_MIN) || ps_tokenizer_is_special(tok, -5));
    (void)ps_tokenizer_token_id(tok, "");
    (void)ps_tokenizer_token_id(tok, "<|endoftext|>");
}

// Loads path, exercises it, frees it; checks the error contract on failure.
static void fuzz_tokenizer_file(const char *path, const uint8_t *data, size_t size) {
    ps_tokenizer *tok = NULL;
    ps_error e = {0};
    int rc = ps_tokenizer_load(&tok, path, &e);
    fuzz_note("tokenizer", rc, e.msg);
    if (rc != 0) {
        FUZZ_FAIL_IF(fuzz_bad_error(&e) || tok);
        return;
    }
    fuzz_tokenizer(tok, data, size);
    ps_tokenizer_free(tok);
}

#endif
