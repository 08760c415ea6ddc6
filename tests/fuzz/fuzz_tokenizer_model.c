// libFuzzer target: ps_tokenizer_load on a SentencePiece tokenizer.model (protobuf), then encode and decode.
#include "fuzz_tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_tokenizer_file(fuzz_write(0, "tokenizer.model", data, size), data, size);
    return 0;
}
