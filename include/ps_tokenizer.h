// Tokenizers as Hugging Face ships them: GPT-2 byte-level BPE (tokenizer.json, or vocab.json + merges.txt) and
// Llama SentencePiece BPE with byte fallback (tokenizer.model, or a Llama-style tokenizer.json).
// Encoding and decoding match Hugging Face tokenizers id for id (Llama: LlamaTokenizerFast, legacy=True).
#ifndef PS_TOKENIZER_H
#define PS_TOKENIZER_H

#include "ps_common.h"

typedef struct ps_tokenizer ps_tokenizer; // opaque; see tokenizer.c

typedef enum {
    PS_TOK_BYTE_LEVEL = 1,    // GPT-2 style: regex pre-tokenizer, bytes mapped to printable characters ("Ġ" = space)
    PS_TOK_SENTENCEPIECE = 2, // Llama style: spaces become "▁", a "▁" is prepended, unknown characters become <0xXX>
} ps_tokenizer_kind;

// path: a tokenizer.json, a vocab.json (merges.txt beside it), a SentencePiece tokenizer.model, or a directory
// holding one of them (looked for in that order). Supported: BPE models; normalizers Prepend/Replace(string);
// pre-tokenizers ByteLevel/Metaspace/none; decoders ByteLevel/Replace/ByteFallback/Fuse/Strip/Metaspace. Anything
// else is an error naming the field, never a silent approximation. truncation/padding/post_processor are ignored:
// encoding never adds BOS/EOS (the caller decides; see ps_tokenizer_bos_id).
// On success *tok is owned by the caller (ps_tokenizer_free). Errors: PS_EXIT_BADINPUT with
// "FILE: field-or-byte-offset: what is wrong" (JSON syntax errors give line and column).
int ps_tokenizer_load(ps_tokenizer **tok, const char *path, ps_error *e);
void ps_tokenizer_free(ps_tokenizer *tok);

// Encodes UTF-8 text (special tokens such as <|endoftext|> inside the text become their ids; no BOS is added).
// *ids is malloc'd and owned by the caller. Invalid UTF-8 is an error naming the byte offset.
// Safe to call from several threads on one tokenizer (its word cache is locked).
int ps_tokenizer_encode(const ps_tokenizer *tok, const char *text, int32_t **ids, int64_t *n, ps_error *e);
// The same for text of len bytes that may hold NUL bytes.
int ps_tokenizer_encode_n(const ps_tokenizer *tok, const char *text, size_t len, int32_t **ids, int64_t *n,
                          ps_error *e);

// The token decoded to text on its own: " 5" for GPT-2's "Ġ5" and Llama's "▁5", the raw byte for Llama's <0x0A>,
// "<|endoftext|>" for a special token. A GPT-2 token can be part of a UTF-8 sequence: then these are its raw bytes
// (not valid UTF-8 by themselves). malloc'd, NUL-terminated; NULL when id is not in the vocabulary.
char *ps_tokenizer_token_text(const ps_tokenizer *tok, int32_t id);
// The same bytes without a copy (owned by tok; *len set, since a token can be the byte 0). NULL for unknown ids.
const char *ps_tokenizer_token_bytes(const ps_tokenizer *tok, int32_t id, size_t *len);
// The token as the vocabulary spells it ("Ġ5", "▁5", "<0x0A>"); owned by tok; NULL for unknown ids.
const char *ps_tokenizer_token_piece(const ps_tokenizer *tok, int32_t id);
// The id of a vocabulary spelling or added token ("Ġ5" -> 642, "<|endoftext|>" -> 50256); -1 when absent.
int32_t ps_tokenizer_token_id(const ps_tokenizer *tok, const char *piece);
// 1 for added special tokens (<|endoftext|>, <s>, </s>, <unk>), else 0.
int ps_tokenizer_is_special(const ps_tokenizer *tok, int32_t id);

// Decodes ids to UTF-8 text exactly as Hugging Face's decode(ids, skip_special_tokens=False): byte sequences that
// are not valid UTF-8 become U+FFFD; Llama drops the "▁" it prepended. Ids outside the vocabulary are skipped.
// malloc'd, NUL-terminated. ps_tokenizer_decode_n also gives the length (the text can hold NUL bytes).
char *ps_tokenizer_decode(const ps_tokenizer *tok, const int32_t *ids, int64_t n);
char *ps_tokenizer_decode_n(const ps_tokenizer *tok, const int32_t *ids, int64_t n, size_t *len);

int64_t ps_tokenizer_vocab_size(const ps_tokenizer *tok); // largest id + 1, added tokens included
// BOS: tokenizer_config.json's bos_token when beside the file, else <s> / <|endoftext|> / <|begin_of_text|>
// (GPT-2: 50256), tokenizer.model: trainer_spec.bos_id (Llama: 1). -1 if none. EOS likewise (GPT-2: 50256, Llama: 2).
int32_t ps_tokenizer_bos_id(const ps_tokenizer *tok);
int32_t ps_tokenizer_eos_id(const ps_tokenizer *tok);
ps_tokenizer_kind ps_tokenizer_kind_of(const ps_tokenizer *tok);
const char *ps_tokenizer_path(const ps_tokenizer *tok); // the file the vocabulary came from

#endif
