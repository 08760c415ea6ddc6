// Tokenizer tests: GPT-2, Llama-2 and GPT-NeoX goldens from Hugging Face (tests/golden/make_tokenizer_goldens.py), id for id,
// decoding, token texts, and the error messages for broken inputs and broken tokenizer files.
#include "ps_tokenizer.h"
#include "testutil.h"
// ps_utf8_nfc is internal to the tokenizer; its unit test reads its header.
#include "../src/inputs/unicode_nfc.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char *text; // NULL for decode-only cases
    int32_t *ids;
    int64_t n;
    char *decoded; // HF's decode(ids) when it differs from text
    char *variant; // variants_golden.jsonl: the header {"name", "base", "normalizer", "pre_tokenizer", "decoder"}
} golden;

static char tmpdir[256];

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// Prints s with control and non-ASCII bytes escaped, for mismatch reports.
static void print_escaped(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

static void print_ids(FILE *f, const char *label, const int32_t *ids, int64_t n) {
    fprintf(f, "      %s [", label);
    for (int64_t i = 0; i < n; i++) fprintf(f, "%s%d", i ? ", " : "", ids[i]);
    fprintf(f, "]\n");
}

static golden *load_golden(const char *path, int64_t *count) {
    ps_error e = {0};
    size_t len;
    char *text = ps_read_file(path, &len, &e);
    if (!text) {
        fprintf(stderr, "FAIL: %s\n", e.msg);
        exit(1);
    }
    int64_t cap = 1024, n = 0;
    golden *g = malloc(cap * sizeof *g);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        if (!o) {
            fprintf(stderr, "FAIL: %s: line %lld is not JSON\n", path, (long long)n + 1);
            exit(1);
        }
        if (n == cap) g = realloc(g, (cap *= 2) * sizeof *g);
        const cJSON *t = cJSON_GetObjectItem(o, "text"), *ids = cJSON_GetObjectItem(o, "ids"),
                    *dec = cJSON_GetObjectItem(o, "decoded"), *var = cJSON_GetObjectItem(o, "variant");
        g[n].variant = var ? cJSON_PrintUnformatted(var) : NULL;
        g[n].text = cJSON_IsString(t) ? strdup(t->valuestring) : NULL;
        g[n].decoded = cJSON_IsString(dec) ? strdup(dec->valuestring) : NULL;
        g[n].n = cJSON_GetArraySize(ids);
        g[n].ids = malloc((g[n].n + 1) * sizeof(int32_t));
        int64_t k = 0;
        for (const cJSON *c = ids ? ids->child : NULL; c; c = c->next) g[n].ids[k++] = c->valueint;
        cJSON_Delete(o);
        n++;
    }
    free(text);
    *count = n;
    return g;
}

static void free_golden(golden *g, int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        free(g[i].text);
        free(g[i].ids);
        free(g[i].decoded);
        free(g[i].variant);
    }
    free(g);
}

// Every golden text id for id and every golden decode; returns the encode time in seconds.
static double check_golden(const char *name, const ps_tokenizer *tok, const golden *g, int64_t ng) {
    int64_t texts = 0, enc_ok = 0, decs = 0, dec_ok = 0, shown = 0;
    double t0 = now_s(), enc_time = 0;
    for (int64_t i = 0; i < ng; i++) {
        if (g[i].variant) continue;
        if (g[i].text) {
            texts++;
            int32_t *ids = NULL;
            int64_t n = 0;
            ps_error e = {0};
            double a = now_s();
            int rc = ps_tokenizer_encode(tok, g[i].text, &ids, &n, &e);
            enc_time += now_s() - a;
            bool same = rc == 0 && n == g[i].n && memcmp(ids, g[i].ids, (size_t)n * sizeof *ids) == 0;
            if (same) enc_ok++;
            else if (shown++ < 5) {
                fprintf(stderr, "  %s: mismatch for ", name);
                print_escaped(stderr, g[i].text, strlen(g[i].text));
                fprintf(stderr, "%s%s\n", rc ? ": error: " : "", rc ? e.msg : "");
                print_ids(stderr, "want", g[i].ids, g[i].n);
                print_ids(stderr, "got ", ids, n);
            }
            free(ids);
        }
        const char *want = g[i].decoded ? g[i].decoded : g[i].text;
        decs++;
        size_t dl = 0;
        char *d = ps_tokenizer_decode_n(tok, g[i].ids, g[i].n, &dl);
        if (d && dl == strlen(want) && memcmp(d, want, dl) == 0) dec_ok++;
        else if (shown++ < 5) {
            fprintf(stderr, "  %s: decode mismatch for", name);
            print_ids(stderr, "", g[i].ids, g[i].n);
            fprintf(stderr, "      want ");
            print_escaped(stderr, want, strlen(want));
            fprintf(stderr, "\n      got  ");
            print_escaped(stderr, d ? d : "", dl);
            fputc('\n', stderr);
        }
        free(d);
    }
    printf("%-40s encode %lld/%lld texts id-for-id, decode %lld/%lld, %.1f ms encoding (%.1f ms total)\n", name,
           (long long)enc_ok, (long long)texts, (long long)dec_ok, (long long)decs, enc_time * 1e3,
           (now_s() - t0) * 1e3);
    TU_CHECK(enc_ok == texts && texts > 0, "%s: %lld of %lld golden texts encode differently", name,
             (long long)(texts - enc_ok), (long long)texts);
    TU_CHECK(dec_ok == decs, "%s: %lld of %lld golden decodes differ", name, (long long)(decs - dec_ok), (long long)decs);
    return enc_time;
}

// The concatenated token texts rebuild the text (byte-level exactly; SentencePiece with its prepended space).
static void check_token_texts(const char *name, const ps_tokenizer *tok, const golden *g, int64_t ng, bool sp) {
    int64_t checked = 0, ok = 0;
    for (int64_t i = 0; i < ng; i++) {
        if (!g[i].text || !g[i].text[0]) continue;
        // Llama: the specials split out of the text keep their spelling, and a literal "▁" reads back as a space.
        if (sp && (strstr(g[i].text, "<s>") || strstr(g[i].text, "</s>") || strstr(g[i].text, "<unk>") ||
                   strstr(g[i].text, "\xE2\x96\x81")))
            continue;
        char *buf = malloc(strlen(g[i].text) * 4 + 16);
        size_t n = 0;
        for (int64_t k = 0; k < g[i].n; k++) {
            size_t l;
            const char *p = ps_tokenizer_token_bytes(tok, g[i].ids[k], &l);
            if (p) { memcpy(buf + n, p, l); n += l; }
        }
        const char *want = g[i].text;
        size_t off = 0;
        if (sp) {
            if (n > 0 && buf[0] == ' ') off = 1;
            else off = n + 1; // forces a mismatch
        }
        checked++;
        if (off <= n && n - off == strlen(want) && memcmp(buf + off, want, n - off) == 0) ok++;
        else if (checked - ok <= 3) {
            fprintf(stderr, "  %s: token texts of ", name);
            print_escaped(stderr, want, strlen(want));
            fprintf(stderr, " join to ");
            print_escaped(stderr, buf, n);
            fputc('\n', stderr);
        }
        free(buf);
    }
    printf("%-40s token texts rebuild %lld/%lld texts\n", name, (long long)ok, (long long)checked);
    TU_CHECK(ok == checked, "%s: token texts do not rebuild the text", name);
}

static void check_ids(const ps_tokenizer *tok, const char *text, const int32_t *want, int64_t nw) {
    int32_t *ids = NULL;
    int64_t n = 0;
    ps_error e = {0};
    int rc = ps_tokenizer_encode(tok, text, &ids, &n, &e);
    bool same = rc == 0 && n == nw && (n == 0 || memcmp(ids, want, (size_t)n * sizeof *ids) == 0);
    if (!same) {
        fprintf(stderr, "  encode(");
        print_escaped(stderr, text, strlen(text));
        fprintf(stderr, ") %s\n", rc ? e.msg : "");
        print_ids(stderr, "want", want, nw);
        print_ids(stderr, "got ", ids, n);
    }
    TU_CHECK(same, "encode of \"%s\" differs", text);
    free(ids);
}

static void check_text(const ps_tokenizer *tok, int32_t id, const char *want_text, const char *want_piece) {
    char *t = ps_tokenizer_token_text(tok, id);
    const char *p = ps_tokenizer_token_piece(tok, id);
    TU_CHECK(t && strcmp(t, want_text) == 0, "token_text(%d) = \"%s\", want \"%s\"", id, t ? t : "(null)", want_text);
    TU_CHECK(p && strcmp(p, want_piece) == 0, "token_piece(%d) = \"%s\", want \"%s\"", id, p ? p : "(null)", want_piece);
    TU_CHECK(ps_tokenizer_token_id(tok, want_piece) == id, "token_id(\"%s\") != %d", want_piece, id);
    free(t);
}

// Verifies a shared file against /work/shared/data/SHA256SUMS before the tests trust it.
static const char *verified_shared(const char *rel) {
    static char path[4096];
    snprintf(path, sizeof path, "%s", tu_shared(rel));
    ps_error e = {0};
    size_t len;
    char *sums = ps_read_file(tu_shared("SHA256SUMS"), &len, &e);
    char hex[65];
    TU_CHECK(sums != NULL, "cannot read SHA256SUMS: %s", e.msg);
    if (!sums) return path;
    char key[512];
    snprintf(key, sizeof key, "  ./%s\n", rel);
    char *at = strstr(sums, key);
    TU_CHECK(at != NULL && at - sums >= 64, "%s is not listed in SHA256SUMS", rel);
    if (at && at - sums >= 64 && ps_sha256_file(path, hex, &e) == 0)
        TU_CHECK(strncmp(at - 64, hex, 64) == 0, "%s: sha256 %s does not match SHA256SUMS", rel, hex);
    free(sums);
    return path;
}

static char *write_tmp(const char *name, const void *data, size_t n) {
    char *path = ps_path_join(tmpdir, name);
    FILE *f = fopen(path, "wb");
    fwrite(data, 1, n, f);
    fclose(f);
    return path;
}

// Loading path must fail with PS_EXIT_BADINPUT and a message holding each of the wanted fragments.
static void expect_load_error(const char *label, const char *path, const char *want1, const char *want2) {
    ps_tokenizer *tok = NULL;
    ps_error e = {0};
    int rc = ps_tokenizer_load(&tok, path, &e);
    printf("  %-34s -> %s\n", label, rc ? e.msg : "(loaded!)");
    TU_CHECK(rc == -1 && tok == NULL && e.code == PS_EXIT_BADINPUT, "%s: expected a load error", label);
    TU_CHECK(!want1 || strstr(e.msg, want1), "%s: message lacks \"%s\": %s", label, want1, e.msg);
    TU_CHECK(!want2 || strstr(e.msg, want2), "%s: message lacks \"%s\": %s", label, want2, e.msg);
    TU_CHECK(strchr(e.msg, '\n') == NULL, "%s: message is not one line", label);
    ps_tokenizer_free(tok);
}

static ps_tokenizer *load_ok(const char *path) {
    ps_tokenizer *tok = NULL;
    ps_error e = {0};
    double t0 = now_s();
    if (ps_tokenizer_load(&tok, path, &e) != 0) {
        fprintf(stderr, "FAIL: loading %s: %s\n", path, e.msg);
        tu_failures++;
        return NULL;
    }
    printf("loaded %s in %.0f ms (vocab %lld)\n", path, (now_s() - t0) * 1e3, (long long)ps_tokenizer_vocab_size(tok));
    return tok;
}

static void test_bad_text(const ps_tokenizer *tok) {
    struct { const char *s; size_t n; size_t off; } cases[] = {
        {"abc\xff", 4, 3}, {"\xe2\x82", 2, 0}, {"ok \xc0\xaf", 5, 3}, {"x\xed\xa0\x80y", 5, 1}, {"\x80", 1, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        int32_t *ids = NULL;
        int64_t n = 0;
        ps_error e = {0};
        int rc = ps_tokenizer_encode_n(tok, cases[k].s, cases[k].n, &ids, &n, &e);
        char want[64];
        snprintf(want, sizeof want, "byte %zu:", cases[k].off);
        TU_CHECK(rc == -1 && e.code == PS_EXIT_BADINPUT && strstr(e.msg, want), "invalid UTF-8 case %zu: rc %d, %s", k,
                 rc, e.msg);
        free(ids);
    }
    ps_error e = {0};
    int32_t *ids = NULL;
    int64_t n = 0;
    ps_tokenizer_encode_n(tok, "abc\xff", 4, &ids, &n, &e);
    printf("  invalid UTF-8 text                 -> %s\n", e.msg);
    // Text holding a NUL byte goes through encode_n.
    TU_CHECK(ps_tokenizer_encode_n(tok, "a\0b", 3, &ids, &n, &e) == 0 && n >= 2, "text with a NUL byte");
    free(ids);
}

// A long text (a whole Llama segment is one BPE word) encodes fast and decodes back to itself.
static void check_long_text(const char *name, const ps_tokenizer *tok) {
    const char *para = "In 1957, the 2nd edition sold 1,234,567 copies; it's now worth $3.50 (about \xE2\x82\xAC" "3.20). "
                       "Na\xC3\xAFve caf\xC3\xA9-goers didn't mind \xE2\x80\x94 they'd seen it all! \xF0\x9F\x99\x82\n\n";
    size_t pl = strlen(para), reps = 2000;
    char *text = malloc(pl * reps + 1);
    for (size_t k = 0; k < reps; k++) memcpy(text + k * pl, para, pl);
    text[pl * reps] = 0;
    int32_t *ids = NULL;
    int64_t n = 0;
    ps_error e = {0};
    double t0 = now_s();
    int rc = ps_tokenizer_encode(tok, text, &ids, &n, &e);
    double dt = now_s() - t0;
    char *back = rc == 0 ? ps_tokenizer_decode(tok, ids, n) : NULL;
    printf("%-40s %zu-byte text -> %lld tokens in %.1f ms, decodes back: %s\n", name, pl * reps, (long long)n, dt * 1e3,
           back && strcmp(back, text) == 0 ? "yes" : "NO");
    TU_CHECK(rc == 0 && back && strcmp(back, text) == 0, "%s: long text round trip", name);
    TU_CHECK(dt < 1.0, "%s: long text took %.3f s", name, dt);
    free(back);
    free(ids);
    free(text);
}

static void test_gpt2(void) {
    const char *tj = verified_shared("gpt2-tokenizer/tokenizer.json");
    char tj_path[4096];
    snprintf(tj_path, sizeof tj_path, "%s", tj);
    const char *vj = verified_shared("gpt2-tokenizer/vocab.json");
    char vj_path[4096];
    snprintf(vj_path, sizeof vj_path, "%s", vj);
    verified_shared("gpt2-tokenizer/merges.txt");
    int64_t ng;
    golden *g = load_golden(tu_src("tests/data/tokenizer/gpt2_golden.jsonl"), &ng);

    ps_tokenizer *a = load_ok(tj_path), *b = load_ok(vj_path);
    if (!a || !b) { ps_tokenizer_free(a); ps_tokenizer_free(b); free_golden(g, ng); return; }
    check_golden("gpt2 tokenizer.json", a, g, ng);
    check_golden("gpt2 vocab.json+merges.txt", b, g, ng);
    check_token_texts("gpt2 tokenizer.json", a, g, ng, false);
    for (int k = 0; k < 2; k++) {
        ps_tokenizer *t = k ? b : a;
        check_ids(t, " 5", (int32_t[]){642}, 1);
        check_ids(t, "5", (int32_t[]){20}, 1);
        check_ids(t, "<|endoftext|>", (int32_t[]){50256}, 1);
        check_ids(t, "", NULL, 0);
        check_text(t, 642, " 5", "\xC4\xA0" "5");
        check_text(t, 50256, "<|endoftext|>", "<|endoftext|>");
        TU_CHECK(ps_tokenizer_bos_id(t) == 50256 && ps_tokenizer_eos_id(t) == 50256, "gpt2 bos/eos %d/%d",
                 ps_tokenizer_bos_id(t), ps_tokenizer_eos_id(t));
        TU_CHECK(ps_tokenizer_vocab_size(t) == 50257, "gpt2 vocab size %lld", (long long)ps_tokenizer_vocab_size(t));
        TU_CHECK(ps_tokenizer_kind_of(t) == PS_TOK_BYTE_LEVEL, "gpt2 kind");
        TU_CHECK(ps_tokenizer_is_special(t, 50256) && !ps_tokenizer_is_special(t, 642), "gpt2 special flags");
    }
    // A token that is part of a UTF-8 sequence: its text is the raw byte; "Ā" (id 188) is the byte 0.
    int32_t *ids = NULL;
    int64_t n = 0;
    ps_error e = {0};
    TU_CHECK(ps_tokenizer_encode(a, "\xF0\x9F\x99\x82", &ids, &n, &e) == 0 && n >= 2, "emoji encodes to bytes");
    if (n >= 2) {
        size_t l;
        const char *p = ps_tokenizer_token_bytes(a, ids[0], &l);
        TU_CHECK(p && l >= 1 && (unsigned char)p[0] == 0xF0, "emoji's first token starts with byte 0xF0");
    }
    free(ids);
    size_t l = 99;
    const char *p = ps_tokenizer_token_bytes(a, 188, &l);
    TU_CHECK(p && l == 1 && p[0] == 0, "token 188 is the byte 0 (len %zu)", l);
    TU_CHECK(ps_tokenizer_token_text(a, 50257) == NULL && ps_tokenizer_token_text(a, -1) == NULL, "unknown ids");
    test_bad_text(a);
    check_long_text("gpt2 tokenizer.json", a);

    // Directory: tokenizer.json is found.
    char *dir = ps_dirname(tj_path);
    ps_tokenizer *d = load_ok(dir);
    if (d) TU_CHECK(strstr(ps_tokenizer_path(d), "tokenizer.json") != NULL, "directory load picks tokenizer.json");
    ps_tokenizer_free(d);
    free(dir);

    // Several threads on one tokenizer (the word cache is shared): same ids as the golden.
    int64_t bad = 0;
    #pragma omp parallel for reduction(+ : bad) schedule(dynamic, 16)
    for (int64_t i = 0; i < ng; i++) {
        if (!g[i].text) continue;
        int32_t *v = NULL;
        int64_t m = 0;
        ps_error te = {0};
        if (ps_tokenizer_encode(b, g[i].text, &v, &m, &te) != 0 || m != g[i].n ||
            memcmp(v, g[i].ids, (size_t)m * sizeof *v) != 0)
            bad++;
        free(v);
    }
    TU_CHECK(bad == 0, "parallel encoding: %lld mismatches", (long long)bad);

    // Performance: a few thousand seqcont-style prompts, cold cache.
    ps_tokenizer *cold = load_ok(tj_path);
    if (cold) {
        double t0 = now_s();
        int64_t total = 0, texts = 0;
        for (int64_t i = 0; i < ng; i++) {
            if (!g[i].text) continue;
            texts++;
            int32_t *v = NULL;
            int64_t m = 0;
            ps_error te = {0};
            ps_tokenizer_encode(cold, g[i].text, &v, &m, &te);
            total += m;
            free(v);
        }
        double dt = now_s() - t0;
        printf("gpt2: %lld golden texts -> %lld tokens in %.1f ms from a cold cache\n", (long long)texts,
               (long long)total, dt * 1e3);
        TU_CHECK(dt < 1.0, "gpt2 encoding too slow: %.3f s", dt);
        ps_tokenizer_free(cold);
    }
    ps_tokenizer_free(a);
    ps_tokenizer_free(b);
    free_golden(g, ng);
}

static void test_llama(void) {
    const char *model = verified_shared("llama2-tokenizer/tokenizer.model");
    char model_path[4096];
    snprintf(model_path, sizeof model_path, "%s", model);
    int64_t ng;
    golden *g = load_golden(tu_src("tests/data/tokenizer/llama2_golden.jsonl"), &ng);
    ps_tokenizer *a = load_ok(model_path), *b = load_ok(tu_src("tests/data/tokenizer/llama2/tokenizer.json"));
    if (a) check_golden("llama2 tokenizer.model", a, g, ng);
    if (b) check_golden("llama2 tokenizer.json", b, g, ng);
    if (a) check_token_texts("llama2 tokenizer.model", a, g, ng, true);
    for (int k = 0; k < 2; k++) {
        ps_tokenizer *t = k ? b : a;
        if (!t) continue;
        TU_CHECK(ps_tokenizer_bos_id(t) == 1 && ps_tokenizer_eos_id(t) == 2, "llama bos/eos %d/%d",
                 ps_tokenizer_bos_id(t), ps_tokenizer_eos_id(t));
        TU_CHECK(ps_tokenizer_vocab_size(t) == 32000, "llama vocab size %lld", (long long)ps_tokenizer_vocab_size(t));
        TU_CHECK(ps_tokenizer_kind_of(t) == PS_TOK_SENTENCEPIECE, "llama kind");
        // Digits split one by one; a trailing space is its own token "▁" (29871).
        check_ids(t, "13", (int32_t[]){29871, 29896, 29941}, 3);
        check_ids(t, "Hello world", (int32_t[]){15043, 3186}, 2);
        check_ids(t, "trailing ", (int32_t[]){25053, 29871}, 2);
        check_ids(t, "<s>", (int32_t[]){1}, 1);
        check_text(t, 29871, " ", "\xE2\x96\x81");
        check_text(t, 13, "\n", "<0x0A>");
        check_text(t, 1, "<s>", "<s>");
        TU_CHECK(ps_tokenizer_is_special(t, 1) && ps_tokenizer_is_special(t, 2) && !ps_tokenizer_is_special(t, 29871),
                 "llama special flags");
        int32_t hello[] = {1, 15043, 3186};
        char *d = ps_tokenizer_decode(t, hello, 3);
        TU_CHECK(d && strcmp(d, "<s> Hello world") == 0, "decode([1, 15043, 3186]) = \"%s\"", d ? d : "(null)");
        free(d);
        test_bad_text(t);
        check_long_text(k ? "llama2 tokenizer.json" : "llama2 tokenizer.model", t);
    }
    ps_tokenizer_free(a);
    ps_tokenizer_free(b);
    free_golden(g, ng);
}

// NFC (src/inputs/unicode_nfc.c) of every text of tests/data/tokenizer/nfc_golden.jsonl against HF tokenizers'
// NFC, which unicodedata confirms outside the group "after-9.0" (tests/golden/make_neox_tokenizer_goldens.py).
static void test_nfc(void) {
    const char *path = tu_src("tests/data/tokenizer/nfc_golden.jsonl");
    ps_error e = {0};
    size_t len;
    char *text = ps_read_file(path, &len, &e);
    TU_CHECK(text != NULL, "%s", e.msg);
    if (!text) return;
    int64_t n = 0, ok = 0, changed = 0, shown = 0;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        cJSON *o = cJSON_Parse(line);
        const cJSON *t = cJSON_GetObjectItem(o, "text"), *want = cJSON_GetObjectItem(o, "nfc"),
                    *group = cJSON_GetObjectItem(o, "group");
        TU_CHECK(cJSON_IsString(t) && cJSON_IsString(want) && cJSON_IsString(group), "%s: line %lld", path, (long long)n + 1);
        if (!cJSON_IsString(t) || !cJSON_IsString(want) || !cJSON_IsString(group)) { cJSON_Delete(o); break; }
        n++;
        size_t m = 0;
        char *got = ps_utf8_nfc(t->valuestring, strlen(t->valuestring), &m);
        changed += strcmp(t->valuestring, want->valuestring) != 0;
        if (got && m == strlen(want->valuestring) && memcmp(got, want->valuestring, m) == 0) ok++;
        else if (shown++ < 5) {
            fprintf(stderr, "  NFC mismatch (%s) for ", group->valuestring);
            print_escaped(stderr, t->valuestring, strlen(t->valuestring));
            fprintf(stderr, "\n      want ");
            print_escaped(stderr, want->valuestring, strlen(want->valuestring));
            fprintf(stderr, "\n      got  ");
            print_escaped(stderr, got ? got : "", got ? m : 0);
            fputc('\n', stderr);
        }
        free(got);
        cJSON_Delete(o);
    }
    free(text);
    printf("%-40s %lld/%lld texts as HF tokenizers (%lld of them changed by NFC)\n", "NFC", (long long)ok, (long long)n,
           (long long)changed);
    TU_CHECK(ok == n && n > 8000 && changed > 4000, "NFC: %lld of %lld golden texts differ", (long long)(n - ok), (long long)n);
}

// A GPT-NeoX-format tokenizer.json (NFC, byte-level BPE, <|endoftext|> = 0, added whitespace tokens normalized:
// Pythia's layout), trained by tests/golden/make_neox_tokenizer_goldens.py with HF tokenizers, which also made the
// goldens (1212 of 1994 texts with characters at or above U+0300, 190 that NFC changes).
static void test_neox(void) {
    int64_t ng;
    golden *g = load_golden(tu_src("tests/data/tokenizer/neox_golden.jsonl"), &ng);
    ps_tokenizer *t = load_ok(tu_src("tests/data/tokenizer/neox/tokenizer.json"));
    if (t) {
        check_golden("neox tokenizer.json (NFC)", t, g, ng);
        // The token texts rebuild the text where NFC leaves it unchanged.
        golden *same = malloc((size_t)(ng ? ng : 1) * sizeof *same);
        int64_t ns = 0;
        for (int64_t i = 0; same && i < ng; i++) {
            size_t m = 0;
            char *nf = g[i].text ? ps_utf8_nfc(g[i].text, strlen(g[i].text), &m) : NULL;
            if (nf && strcmp(nf, g[i].text) == 0) same[ns++] = g[i];
            free(nf);
        }
        TU_CHECK(ns > 1700, "neox: only %lld texts are NFC-invariant", (long long)ns);
        check_token_texts("neox tokenizer.json", t, same, ns, false);
        free(same);
        TU_CHECK(ps_tokenizer_bos_id(t) == 0 && ps_tokenizer_eos_id(t) == 0, "neox bos/eos %d/%d (want <|endoftext|> = 0)",
                 ps_tokenizer_bos_id(t), ps_tokenizer_eos_id(t));
        TU_CHECK(ps_tokenizer_vocab_size(t) == 2023, "neox vocab size %lld", (long long)ps_tokenizer_vocab_size(t));
        check_ids(t, "<|endoftext|>", (int32_t[]){0}, 1);
        check_ids(t, "<|padding|>", (int32_t[]){1}, 1);
        check_ids(t, "  ", (int32_t[]){2022}, 1);
        check_ids(t, "                        ", (int32_t[]){2000}, 1);
        test_bad_text(t);
        check_long_text("neox tokenizer.json", t);
    }
    ps_tokenizer_free(t);
    free_golden(g, ng);
}

// Variants of the committed tokenizer.json files (pre-tokenizer/normalizer/decoder swapped), with goldens from HF.
static void test_variants(void) {
    int64_t ng;
    golden *g = load_golden(tu_src("tests/data/tokenizer/variants_golden.jsonl"), &ng);
    for (int64_t i = 0; i < ng;) {
        if (!g[i].variant) { i++; continue; }
        cJSON *hdr = cJSON_Parse(g[i].variant);
        const cJSON *name = cJSON_GetObjectItem(hdr, "name"), *base = cJSON_GetObjectItem(hdr, "base");
        const char *basefile = strcmp(base->valuestring, "gpt2") == 0 ? tu_shared("gpt2-tokenizer/tokenizer.json")
                                                                      : tu_src("tests/data/tokenizer/llama2/tokenizer.json");
        ps_error e = {0};
        size_t len;
        char *text = ps_read_file(basefile, &len, &e);
        cJSON *root = cJSON_Parse(text);
        free(text);
        const char *parts[] = {"normalizer", "pre_tokenizer", "decoder", "added_tokens"};
        for (int k = 0; k < 4; k++) {
            cJSON *v = cJSON_GetObjectItem(hdr, parts[k]);
            if (v) cJSON_ReplaceItemInObjectCaseSensitive(root, parts[k], cJSON_Duplicate(v, 1));
        }
        char *out = cJSON_PrintUnformatted(root);
        char fname[128];
        snprintf(fname, sizeof fname, "variant_%s.json", name->valuestring);
        char *path = write_tmp(fname, out, strlen(out));
        free(out);
        cJSON_Delete(root);
        int64_t j = i + 1;
        while (j < ng && !g[j].variant) j++;
        ps_tokenizer *t = load_ok(path);
        char label[160];
        snprintf(label, sizeof label, "variant %s", name->valuestring);
        if (t) check_golden(label, t, g + i + 1, j - i - 1);
        ps_tokenizer_free(t);
        unlink(path);
        free(path);
        cJSON_Delete(hdr);
        i = j;
    }
    free_golden(g, ng);
}

static void test_bad_files(void) {
    printf("broken tokenizer files:\n");
    // Truncated real tokenizer.json: the JSON ends too early.
    ps_error e = {0};
    size_t len;
    char *gj = ps_read_file(tu_shared("gpt2-tokenizer/tokenizer.json"), &len, &e);
    char *p = write_tmp("tokenizer.json", gj, len / 2);
    expect_load_error("truncated tokenizer.json", p, "tokenizer.json: line 1, column", "at the end of the file");
    free(p);
    free(gj);
    p = write_tmp("garbage.json", "\x01\x02garbage", 9);
    // cJSON counts bytes below 0x20 as whitespace, so the error is at the "g".
    expect_load_error("garbage tokenizer.json", p, "garbage.json: line 1, column 3: JSON syntax error", NULL);
    free(p);
    const char *syntax = "{\n  \"model\": {\n    \"vocab\": {\"a\": 0,, \"b\": 1},\n    \"merges\": []\n  }\n}\n";
    p = write_tmp("syntax.json", syntax, strlen(syntax));
    // The second comma is at column 22; cJSON's error pointer is one past it.
    expect_load_error("JSON syntax error", p, "syntax.json: line 3, column 23: JSON syntax error", NULL);
    free(p);

    // Structurally wrong tokenizer.json files: each names the field.
    struct { const char *label, *json, *want; } cases[] = {
        {"merge of unknown token", "{\"model\":{\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\",\"a c\"]}}",
         "model.merges[1]: \"c\" is not in the vocabulary"},
        {"merge result not in vocab", "{\"model\":{\"vocab\":{\"a\":0,\"b\":1},\"merges\":[[\"a\",\"b\"]]}}",
         "model.merges[0]: the merged token \"ab\" is not in the vocabulary"},
        {"malformed merge", "{\"model\":{\"vocab\":{\"a\":0,\"b\":1,\"ab\":2},\"merges\":[\"a b\",\"ab\"]}}",
         "model.merges[1]: \"ab\" is not two tokens"},
        {"merge of wrong type", "{\"model\":{\"vocab\":{\"a\":0},\"merges\":[7]}}", "model.merges[0]: expected"},
        {"vocab id not an integer", "{\"model\":{\"vocab\":{\"a\":0,\"b\":1.5},\"merges\":[]}}", "model.vocab[\"b\"]"},
        {"duplicate vocab id", "{\"model\":{\"vocab\":{\"a\":0,\"b\":0},\"merges\":[]}}", "id 0 is already \"a\""},
        {"missing merges", "{\"model\":{\"vocab\":{\"a\":0}}}", "model.merges: missing"},
        {"missing vocab", "{\"model\":{\"merges\":[]}}", "model.vocab: expected an object"},
        {"model not BPE", "{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "model.type: \"Unigram\" is not supported"},
        {"unsupported normalizer",
         "{\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"}]},\"model\":{\"vocab\":{\"a\":0},"
         "\"merges\":[]}}", "normalizer.normalizers[0].type: \"NFKC\" is not supported"},
        {"unsupported pre-tokenizer", "{\"pre_tokenizer\":{\"type\":\"Whitespace\"},\"model\":{\"vocab\":{\"a\":0},"
         "\"merges\":[]}}", "pre_tokenizer.type: \"Whitespace\" is not supported"},
        {"added token without id", "{\"added_tokens\":[{\"content\":\"<x>\"}],\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}",
         "added_tokens[0].id"},
        {"byte-level vocab lacks bytes", "{\"pre_tokenizer\":{\"type\":\"ByteLevel\"},\"model\":{\"vocab\":{\"!\":0},"
         "\"merges\":[]}}", "no token for byte 0x00"},
        {"normalized added token", "{\"normalizer\":{\"type\":\"Prepend\",\"prepend\":\"_\"},\"added_tokens\":[{\"id\":1,"
         "\"content\":\"<x>\",\"normalized\":true}],\"model\":{\"vocab\":{\"a\":0},\"merges\":[]}}",
         "added_tokens[0].normalized: true together with a normalizer other than NFC is not supported"},
        {"added token clashes with vocab", "{\"added_tokens\":[{\"id\":0,\"content\":\"<x>\"}],\"model\":{\"vocab\":"
         "{\"a\":0},\"merges\":[]}}", "added_tokens[0]: id 0 is \"a\" in model.vocab, not \"<x>\""},
        {"ignore_merges", "{\"model\":{\"ignore_merges\":true,\"vocab\":{\"a\":0},\"merges\":[]}}",
         "model.ignore_merges: true is not supported"},
        {"unk_token not in vocab", "{\"model\":{\"unk_token\":\"<unk>\",\"vocab\":{\"a\":0},\"merges\":[]}}",
         "model.unk_token: \"<unk>\" is not in model.vocab"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        p = write_tmp("tokenizer.json", cases[k].json, strlen(cases[k].json));
        expect_load_error(cases[k].label, p, "tokenizer.json: ", cases[k].want);
        unlink(p);
        free(p);
    }

    // vocab.json + merges.txt.
    const char *vocab = "{\"a\": 0, \"b\": 1, \"ab\": 2}";
    p = write_tmp("vocab.json", vocab, strlen(vocab));
    expect_load_error("vocab.json without merges.txt", p, "merges.txt: cannot open", NULL);
    const char *merges = "#version: 0.2\na b\nab\n";
    char *m = write_tmp("merges.txt", merges, strlen(merges));
    expect_load_error("bad merges.txt line", p, "merges.txt: line 3: \"ab\" is not two tokens", NULL);
    const char *merges2 = "#version: 0.2\na b\nb q\n";
    free(m);
    m = write_tmp("merges.txt", merges2, strlen(merges2));
    expect_load_error("merges.txt unknown token", p, "merges.txt: line 3: \"q\" is not in the vocabulary", NULL);
    unlink(m);
    unlink(p);
    free(m);
    free(p);

    // tokenizer.model: truncated, garbage, not BPE.
    char *model = ps_read_file(tu_shared("llama2-tokenizer/tokenizer.model"), &len, &e);
    size_t cuts[] = {len / 2, 1000, 3, len - 1};
    for (size_t k = 0; k < sizeof cuts / sizeof cuts[0]; k++) {
        p = write_tmp("tokenizer.model", model, cuts[k]);
        char label[64];
        snprintf(label, sizeof label, "tokenizer.model cut at %zu", cuts[k]);
        expect_load_error(label, p, "tokenizer.model: byte ", NULL);
        free(p);
    }
    unsigned char garbage[64];
    for (int k = 0; k < 64; k++) garbage[k] = (unsigned char)(k * 37 + 11);
    p = write_tmp("tokenizer.model", garbage, sizeof garbage);
    expect_load_error("garbage tokenizer.model", p, "tokenizer.model: ", NULL);
    free(p);
    // The real model with trainer_spec.model_type patched to UNIGRAM (field 3 inside trainer_spec).
    // trainer_spec is field 2 of ModelProto; find its model_type tag (0x18) and set the value to 1.
    char *copy = malloc(len);
    memcpy(copy, model, len);
    size_t pos = 0;
    bool patched = false;
    while (pos < len) { // skip the pieces (field 1) to reach trainer_spec
        unsigned char tag = (unsigned char)copy[pos];
        uint64_t l = 0;
        int shift = 0;
        size_t q = pos + 1;
        while (q < len) {
            unsigned char c = (unsigned char)copy[q++];
            l |= (uint64_t)(c & 0x7F) << shift;
            shift += 7;
            if (!(c & 0x80)) break;
        }
        if (tag == 0x12) { // trainer_spec
            for (size_t r = q; r + 1 < q + l; r++) {
                if ((unsigned char)copy[r] == 0x18 && (unsigned char)copy[r + 1] == 2) { copy[r + 1] = 1; patched = true; break; }
            }
            break;
        }
        pos = q + l;
    }
    TU_CHECK(patched, "could not patch model_type");
    p = write_tmp("tokenizer.model", copy, len);
    expect_load_error("tokenizer.model not BPE", p, "trainer_spec.model_type: 1 (UNIGRAM) is not supported", NULL);
    unlink(p);
    free(p);
    free(copy);
    free(model);
    expect_load_error("missing file", "/nonexistent/tokenizer.json", "/nonexistent/tokenizer.json: cannot open", NULL);
    expect_load_error("empty directory", tmpdir, "no tokenizer.json, vocab.json or tokenizer.model", NULL);
}

int main(void) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/ps_test_tokenizer_XXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 1;
    }
    test_gpt2();
    test_llama();
    test_nfc();
    test_neox();
    test_variants();
    test_bad_files();
    char *leftover[] = {"tokenizer.json", "garbage.json", "syntax.json", "tokenizer.model", "vocab.json", "merges.txt"};
    for (size_t k = 0; k < sizeof leftover / sizeof leftover[0]; k++) {
        char *p = ps_path_join(tmpdir, leftover[k]);
        unlink(p);
        free(p);
    }
    rmdir(tmpdir);
    return tu_done("tokenizer");
}
