// libFuzzer target: readback.c, a finished results file read back as tables for reuse (ps_store_read_run), both
// halves in this process (ps_store_read_run runs the first in a child, which would hide findings):
// - input starting with "PSSTREAM": the rest is a reading child's reply, parsed alone (ps_store_parse_run): the parse
//   is this process's only defence against a child that went wrong, so every byte of it is untrusted;
// - otherwise the input is a results file, sealed here (as a crafted file would be, so mutations get past the seal to
//   the checksums and the readers; fuzz_results covers the seal), read by ps_store_run_stream and then parsed: a
//   stream the child wrote must parse (the writer and the parser agree on the format).
// With PS_FUZZ_STREAM_OUT=FILE (by hand), a file input's stream is written to FILE with the "PSSTREAM" prefix: that is
// how the stream seeds in corpus/fuzz_readback/ are made from the results seeds.
#include "fuzz_util.h"
#include "ps_store.h"

#include <math.h>

static const char MARK[8] = {'P', 'S', 'S', 'T', 'R', 'E', 'A', 'M'};

// The contracts reuse relies on (src/cli/reuse.c): baselines for n prompts, each table the shape of its axes.
static void check_run(const ps_stored_run *s) {
    FUZZ_FAIL_IF(s->base.n <= 0 || !s->base.clean || !s->base.corrupted_wrong_logit);
    FUZZ_FAIL_IF(s->n_tables < 0 || (s->n_tables && !s->tables));
    FUZZ_FAIL_IF(s->base_identity[0] && strlen(s->base_identity) != 64);
    for (int64_t t = 0; t < s->n_tables; t++) {
        const ps_table *tb = &s->tables[t];
        FUZZ_FAIL_IF(!tb->name || !tb->kind || !tb->values);
        FUZZ_FAIL_IF(tb->n_rows != (tb->per_prompt ? s->base.n : 1));
        FUZZ_FAIL_IF(tb->n_axes < 0 || tb->n_axes > PS_TABLE_MAX_AXES || tb->n_attrs < 0 || tb->n_attrs > PS_TABLE_MAX_ATTRS);
        int64_t cells = 1;
        for (int a = 0; a < tb->n_axes; a++) {
            FUZZ_FAIL_IF(!tb->axes[a].name || tb->axes[a].len <= 0 || !tb->axes[a].value);
            cells *= tb->axes[a].len;
        }
        FUZZ_FAIL_IF(cells != tb->n_cells);
        volatile float sum = 0; // every value readable (ASan sees an array shorter than its shape)
        for (int64_t i = 0; i < tb->n_rows * tb->n_cells; i++) sum += tb->values[i];
        (void)sum;
    }
}

static void check_failure(int rc, const ps_error *e, const ps_stored_run *s) {
    FUZZ_FAIL_IF(rc != -1);
    FUZZ_FAIL_IF(fuzz_bad_error(e) || strchr(e->msg, '\n'));
    FUZZ_FAIL_IF(s->tables || s->n_tables || s->base.clean || s->base.n); // nothing left owned
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    ps_stored_run s;
    ps_error e = {0};
    if (size >= 8 && memcmp(data, MARK, 8) == 0) {
        int rc = ps_store_parse_run(data + 8, size - 8, "r.h5", &s, &e);
        fuzz_note("parse", rc, e.msg);
        if (rc == 0) check_run(&s);
        else check_failure(rc, &e, &s);
        ps_stored_run_free(&s);
        return 0;
    }
    uint8_t *c = fuzz_sealed(data, size);
    const char *p = fuzz_write(0, "r.h5", c, size);
    free(c);
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = ps_store_run_stream(p, &buf, &len, &e);
    fuzz_note("stream", rc, e.msg);
    if (rc != 0) {
        FUZZ_FAIL_IF(buf || fuzz_bad_error(&e));
        return 0;
    }
    const char *dump = getenv("PS_FUZZ_STREAM_OUT");
    if (dump) {
        FILE *f = fopen(dump, "wb");
        if (!f || fwrite(MARK, 1, 8, f) != 8 || fwrite(buf, 1, len, f) != len || fclose(f) != 0) abort();
    }
    ps_error pe = {0};
    rc = ps_store_parse_run(buf, len, p, &s, &pe);
    fuzz_note("parse", rc, pe.msg);
    FUZZ_FAIL_IF(rc != 0 && pe.code == PS_EXIT_BADINPUT); // (out of memory aside) what the child writes parses
    if (rc == 0) check_run(&s);
    ps_stored_run_free(&s);
    free(buf);
    return 0;
}
