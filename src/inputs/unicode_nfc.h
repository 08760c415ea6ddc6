// Unicode NFC (canonical decomposition, canonical ordering, canonical composition) of UTF-8 text, for the
// tokenizer's NFC normalizer (GPT-NeoX / Pythia). The data tables are Unicode 9.0's, as in Hugging Face
// tokenizers, generated into unicode_nfc_table.c by tools/gen_unicode_nfc.py.
#ifndef PS_UNICODE_NFC_H
#define PS_UNICODE_NFC_H

#include <stddef.h>
#include <stdint.h>

// The NFC form of s[0..n), which must be valid UTF-8 (callers check it), as a new NUL-terminated string the
// caller frees; its length in *out_n. NULL only when out of memory.
char *ps_utf8_nfc(const char *s, size_t n, size_t *out_n);

// ------------------------------------------------------------------------------------------------ the tables (generated)

typedef struct {
    uint32_t first, last; // code points with this class, inclusive
    uint8_t ccc;          // canonical combining class, 1..254
} ps_nfc_ccc_run;

typedef struct {
    uint32_t cp, first, second; // cp -> first second; second 0 for a singleton
} ps_nfc_decomp;

extern const ps_nfc_ccc_run ps_nfc_ccc[];   // sorted, disjoint
extern const size_t ps_nfc_n_ccc;
extern const ps_nfc_decomp ps_nfc_decomps[]; // sorted by cp; no Hangul syllables
extern const size_t ps_nfc_n_decomps;
extern const uint16_t ps_nfc_comp[];         // indices into ps_nfc_decomps, sorted by (first, second)
extern const size_t ps_nfc_n_comp;

#endif
