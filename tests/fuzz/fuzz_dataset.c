// libFuzzer target: ps_dataset_load (JSONL, CSV, JSON readers).
// Byte 0 picks the spec: bits 0-1 the format (jsonl, csv, json, or auto from a .ndjson name), bit 2 a second file of
// corrupted prompts, bits 3-4 offset, bits 5-6 limit, bit 7 the field names text/corr/incorr instead of the defaults.
// With bit 2 set, byte 1 picks that file's format (bits 0-1), offset (bits 2-3) and field (bit 4: "clean"), and the
// rest of the input is split at its first NUL byte: dataset file, then corrupted file.
#include "fuzz_util.h"
#include "ps_dataset.h"

static const char *const ext[4] = {"d.jsonl", "d.csv", "d.json", "d.ndjson"};
static const char *const cext[4] = {"c.jsonl", "c.csv", "c.json", "c.ndjson"};
static const ps_data_format fmt[4] = {PS_DATA_JSONL, PS_DATA_CSV, PS_DATA_JSON, PS_DATA_AUTO};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    uint8_t ctl = data[0], ctl2 = 0;
    data++, size--;
    int corrupted = (ctl >> 2) & 1;
    if (corrupted) {
        if (size < 1) return 0;
        ctl2 = data[0];
        data++, size--;
    }
    const uint8_t *nul = corrupted ? memchr(data, 0, size) : NULL;
    size_t n1 = nul ? (size_t)(nul - data) : size;
    ps_dataset_spec s;
    memset(&s, 0, sizeof s);
    s.format = fmt[ctl & 3];
    s.path = fuzz_write(0, ext[ctl & 3], data, n1);
    s.offset = (ctl >> 3) & 3;
    s.limit = (ctl >> 5) & 3;
    if (ctl & 0x80) {
        s.clean = "text";
        s.answer = "corr";
        s.wrong = "incorr";
    }
    if (corrupted) {
        s.corrupted_format = fmt[ctl2 & 3];
        s.corrupted_path = fuzz_write(1, cext[ctl2 & 3], nul ? nul + 1 : data, nul ? size - n1 - 1 : 0);
        s.corrupted_offset = (ctl2 >> 2) & 3;
        s.corrupted_field = (ctl2 & 0x10) ? "clean" : NULL;
    }
    s.origin = (ctl2 & 0x20) ? "fuzz.json: dataset" : NULL;
    ps_item *items = NULL;
    int64_t n = -1;
    ps_error e = {0};
    int rc = ps_dataset_load(&s, &items, &n, &e);
    fuzz_note("dataset", rc, e.msg);
    if (rc != 0) {
        FUZZ_FAIL_IF(fuzz_bad_error(&e) || items || n != 0);
        return 0;
    }
    FUZZ_FAIL_IF(n < 1 || !items || (s.limit && n > s.limit));
    for (int64_t i = 0; i < n; i++) {
        const ps_item *it = &items[i];
        FUZZ_FAIL_IF(!it->clean || !it->corrupted || !it->answer || !it->wrong);
        FUZZ_FAIL_IF(!it->clean[0] || !it->corrupted[0] || !it->answer[0] || !it->wrong[0]);
    }
    ps_items_free(items, n);
    return 0;
}
