// Tokenizers as Hugging Face ships them: GPT-2 byte-level BPE (tokenizer.json, or vocab.json + merges.txt).
// Encoding and decoding match Hugging Face tokenizers id for id.
#ifndef PS_TOKENIZER_H
#define PS_TOKENIZER_H

#include "ps_common.h"

typedef struct ps_tokenizer ps_tokenizer; // opaque; see tokenizer.c

// path: a tokenizer.json, a vocab.json (merges.txt beside it), or a directory holding either.
int ps_tokenizer_load(ps_tokenizer **tok, const char *path, ps_error *e);
void ps_tokenizer_free(ps_tokenizer *tok);

// Encodes UTF-8 text (special tokens such as <|endoftext|> inside the text become their ids).
// *ids is malloc'd and owned by the caller. Invalid UTF-8 is an error naming the byte offset.
int ps_tokenizer_encode(const ps_tokenizer *tok, const char *text, int32_t **ids, int64_t *n, ps_error *e);

// The token's string as the vocabulary spells it, decoded to text (e.g. " 5" for "Ġ5"); malloc'd.
char *ps_tokenizer_token_text(const ps_tokenizer *tok, int32_t id);
// Decodes a sequence of ids to UTF-8 text; malloc'd.
char *ps_tokenizer_decode(const ps_tokenizer *tok, const int32_t *ids, int64_t n);

int64_t ps_tokenizer_vocab_size(const ps_tokenizer *tok);
int32_t ps_tokenizer_bos_id(const ps_tokenizer *tok);  // <|endoftext|> for GPT-2; -1 if none
const char *ps_tokenizer_path(const ps_tokenizer *tok); // the file the vocabulary came from

#endif
