// libFuzzer target: GPT-2's vocab.json + merges.txt pair. The input is vocab.json, a NUL byte, then merges.txt
// (no NUL: merges.txt is empty).
#include "fuzz_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const uint8_t *nul = memchr(data, 0, size);
    size_t vn = nul ? (size_t)(nul - data) : size;
    fuzz_write(1, "merges.txt", nul ? nul + 1 : data, nul ? size - vn - 1 : 0);
    fuzz_tokenizer_file(fuzz_write(0, "vocab.json", data, vn), nul ? nul + 1 : data, nul ? size - vn - 1 : 0);
    return 0;
}
