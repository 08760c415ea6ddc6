// Caches in one block (ps_cache_init_block) against caches of their own (ps_cache_init): on every tiny model's
// config, for a few lengths and flags, both the small (malloc) and the huge-page path, each cache of a block must
// have the same arrays at the same offsets as its own-allocation twin, start 64-byte aligned, be zeroed, not
// overlap its neighbours; freed in a shuffled order (ASan, in the sanitizer suite, sees a leak or a double free).
#include "golden_util.h"
#include "ps_cache.h"
#include "testutil.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_block(const char *model, const ps_model_config *mc, int64_t n, const int64_t *T, unsigned flags) {
    ps_error e = {0};
    ps_cache *c = calloc((size_t)n, sizeof *c);
    TU_CHECK(c != NULL, "out of memory");
    if (!c) return;
    if (ps_cache_init_block(c, n, mc, T, flags, &e) != 0) {
        TU_CHECK(0, "%s: ps_cache_init_block(%lld caches): %s", model, (long long)n, e.msg);
        free(c);
        return;
    }
    int64_t bad_layout = 0, nonzero = 0, overlap = 0, misaligned = 0;
    size_t floats = 0;
    for (int64_t i = 0; i < n; i++) {
        ps_cache own;
        if (ps_cache_init(&own, mc, T[i], flags, &e) != 0) { TU_CHECK(0, "ps_cache_init: %s", e.msg); break; }
        if (own.n_floats != c[i].n_floats || own.T != c[i].T) bad_layout++;
        for (int a = 0; a < PS_ARR_COUNT; a++) {
            const float *g = ps_cache_array(&c[i], (ps_array)a), *w = ps_cache_array(&own, (ps_array)a);
            if ((g == NULL) != (w == NULL) || (g && g - c[i].memory != w - own.memory)) bad_layout++;
        }
        ps_cache_free(&own);
        if ((uintptr_t)c[i].memory % 64) misaligned++;
        for (size_t k = 0; k < c[i].n_floats; k++) nonzero += c[i].memory[k] != 0.0f;
        if (i + 1 < n && c[i].memory + c[i].n_floats > c[i + 1].memory) overlap++;
        for (size_t k = 0; k < c[i].n_floats; k++) c[i].memory[k] = (float)i; // every float writable
        floats += c[i].n_floats;
    }
    for (int64_t i = 0; i + 1 < n; i++) // a cache's floats survive its neighbours' writes
        if (c[i].n_floats && c[i].memory[c[i].n_floats - 1] != (float)i) overlap++;
    printf("%s: block of %lld caches (T %lld..%lld, flags %u, %.1f MiB): layout mismatches %lld, nonzero %lld, overlaps %lld, "
           "misaligned %lld\n", model, (long long)n, (long long)T[0], (long long)T[n - 1], flags, (double)floats * 4 / 1048576.0,
           (long long)bad_layout, (long long)nonzero, (long long)overlap, (long long)misaligned);
    TU_CHECK(bad_layout == 0 && nonzero == 0 && overlap == 0 && misaligned == 0,
             "%s: block of %lld caches: %lld layout mismatches, %lld nonzero floats, %lld overlaps, %lld misaligned", model,
             (long long)n, (long long)bad_layout, (long long)nonzero, (long long)overlap, (long long)misaligned);
    // Free in a shuffled order, one moved elsewhere first (as the circuit search takes the engine's clean runs).
    ps_cache moved = c[n / 2];
    memset(&c[n / 2], 0, sizeof c[n / 2]);
    uint64_t s = 12345;
    for (int64_t i = n - 1; i > 0; i--) {
        s = s * 6364136223846793005ull + 1442695040888963407ull;
        const int64_t j = (int64_t)((s >> 33) % (uint64_t)(i + 1));
        const ps_cache t = c[i];
        c[i] = c[j];
        c[j] = t;
    }
    for (int64_t i = 0; i < n; i++) ps_cache_free(&c[i]);
    TU_CHECK(moved.block != NULL && ((float *)moved.memory)[0] == (float)(n / 2), "%s: the moved cache lost its floats", model);
    ps_cache_free(&moved);
    free(c);
}

static void test_model(const char *model) {
    char path[512];
    snprintf(path, sizeof path, "tests/data/%s/config.json", model);
    ps_model_config mc;
    ps_error e = {0};
    if (ps_model_config_load(&mc, tu_src(path), &e) != 0) { TU_CHECK(0, "%s: %s", model, e.msg); return; }
    const int64_t lens[5] = {1, 2, 7, 23, 40};
    for (unsigned flags = 0; flags <= PS_CACHE_ALL; flags += 3) { // 0, PS_CACHE_SCORES | PS_CACHE_RESULT, ...
        check_block(model, &mc, 5, lens, flags);
        // Enough caches for the huge-page path (blocks of 8 MiB and more).
        const size_t per = ps_cache_floats(&mc, 40, flags) * sizeof(float);
        const int64_t n = (int64_t)(((size_t)9 << 20) / (per ? per : 1)) + 1;
        int64_t *T = malloc((size_t)n * sizeof *T);
        if (!T) { TU_CHECK(0, "out of memory"); return; }
        for (int64_t i = 0; i < n; i++) T[i] = 40 - (i % 3);
        check_block(model, &mc, n, T, flags);
        free(T);
    }
}

int main(void) {
    gu_for_each_model(test_model);
    return tu_done("cache_block");
}
