// The device-shaped test backend (device_shaped.h): the CPU computes, the handle contract is checked the way a
// device with copies of caches would depend on it (kernels/cuda_memory.cu: bound by handle, trusted until released).
#include "device_shaped.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t handle;
    const float *memory;   // the host arrays the copy was taken of, and their size and length (a copy is trusted only
    size_t n_floats;       // while its cache still has them, as cuda_memory.cu's entry_matches)
    int64_t T;
    float *copy;           // (n_floats) the "device" copy
} ds_entry;

typedef struct {
    ps_backend cpu;        // computes
    ds_entry *ent;
    int64_t n_ent, cap;
    uint64_t next_handle;
    ds_stats st;
} ds_impl;

static int64_t entry_of(const ds_impl *d, const ps_cache *c) {
    for (int64_t i = 0; c->handle && i < d->n_ent; i++)
        if (d->ent[i].handle == c->handle) return i;
    return -1;
}

static int entry_matches(const ds_entry *en, const ps_cache *c) {
    return en->memory == c->memory && en->n_floats == c->n_floats && en->T == c->T;
}

static void entry_remove(ds_impl *d, int64_t i) {
    free(d->ent[i].copy);
    memmove(d->ent + i, d->ent + i + 1, (size_t)(d->n_ent - i - 1) * sizeof *d->ent);
    d->n_ent--;
}

// A copy of c's host arrays bound to a new handle (the handle written through the row's const pointer, as CUDA does).
static int bind(ds_impl *d, const ps_cache *c, ps_error *e) {
    int64_t i = entry_of(d, c);
    if (i >= 0) entry_remove(d, i);
    if (d->n_ent == d->cap) {
        const int64_t nc = d->cap ? 2 * d->cap : 64;
        ds_entry *p = realloc(d->ent, (size_t)nc * sizeof *p);
        if (!p) return ps_fail(e, PS_EXIT_RUNTIME, "device_shaped: out of memory");
        d->ent = p;
        d->cap = nc;
    }
    ds_entry *en = &d->ent[d->n_ent];
    *en = (ds_entry){.handle = ++d->next_handle, .memory = c->memory, .n_floats = c->n_floats, .T = c->T,
                     .copy = malloc(c->n_floats * sizeof(float))};
    if (!en->copy) return ps_fail(e, PS_EXIT_RUNTIME, "device_shaped: out of memory");
    memcpy(en->copy, c->memory, c->n_floats * sizeof(float));
    d->n_ent++;
    ((ps_cache *)c)->handle = en->handle;
    return 0;
}

// A cache a call reads: through its copy when one is bound to it (which must still equal the host arrays),
// else uploaded.
static int read_input(ds_impl *d, const ps_cache *c, const char *what, int64_t row, ps_error *e) {
    if (!c || !c->memory || !c->n_floats) return ps_fail(e, PS_EXIT_RUNTIME, "forward: a cache the rows refer to is empty");
    const int64_t i = entry_of(d, c);
    if (i >= 0 && entry_matches(&d->ent[i], c)) {
        d->st.reads_of_copies++;
        if (memcmp(d->ent[i].copy, c->memory, c->n_floats * sizeof(float)) != 0) {
            if (!d->st.stale_reads++)
                snprintf(d->st.first_stale, sizeof d->st.first_stale,
                         "row %lld's %s (T=%lld, handle %llu): its host arrays were rewritten after the backend read or made "
                         "it, without release_cache", (long long)row, what, (long long)c->T, (unsigned long long)c->handle);
        }
        return 0;
    }
    d->st.uploads++;
    return bind(d, c, e);
}

static int ds_forward(ps_backend *b, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    ds_impl *d = b->impl;
    // As kernels/cuda_batch.cu's check_rows: a caller that bypasses the engine must not get a plain row's numbers.
    for (int64_t r = 0; r < n_rows; r++)
        if (ps_row_check(&m->cfg, &rows[r], b->caps, b->name, e) != 0) return -1;
    if (ps_rows_check_aliasing(rows, n_rows, e) != 0) return -1;
    for (int64_t r = 0; r < n_rows; r++) {
        const ps_row *row = &rows[r];
        if ((row->start_layer > 0 || row->start_pos > 0) && read_input(d, row->base, "base", r, e) != 0) return -1;
        for (int64_t p = 0; p < row->n_patches; p++)
            if (ps_patch_reads_src(&row->patches[p]) && read_input(d, row->patches[p].src, "patch source", r, e) != 0) return -1;
    }
    if (d->cpu.forward(&d->cpu, m, rows, n_rows, e) != 0) return -1;
    for (int64_t r = 0; r < n_rows; r++)   // a cache row's copy is the one the device computed
        if (rows[r].cache) {
            d->st.outputs++;
            if (bind(d, rows[r].cache, e) != 0) return -1;
        }
    return 0;
}

static int ds_backward(ps_backend *b, const ps_model *m, const ps_cache *fwd, const ps_logit_grad *lg, ps_cache *grad, ps_error *e) {
    if (read_input(b->impl, fwd, "forward cache (backward)", 0, e) != 0) return -1;
    return ps_cpu_backward(m, fwd, lg, grad, e);
}

static void ds_release(ps_backend *b, ps_cache *c) {
    ds_impl *d = b->impl;
    const int64_t i = entry_of(d, c);
    if (i < 0) return;
    entry_remove(d, i);
    c->handle = 0;
    d->st.releases++;
}

static void ds_free(ps_backend *b) {
    ds_impl *d = b->impl;
    if (!d) return;
    while (d->n_ent) entry_remove(d, d->n_ent - 1);
    free(d->ent);
    ps_backend_free(&d->cpu);
    free(d);
    b->impl = NULL;
}

int ds_backend_init(ps_backend *b, const ps_model *m, ps_error *e) {
    memset(b, 0, sizeof *b);
    ds_impl *d = calloc(1, sizeof *d);
    if (!d) return ps_fail(e, PS_EXIT_RUNTIME, "device_shaped: out of memory");
    if (ps_backend_init(&d->cpu, PS_BACKEND_CPU, PS_PREC_FP32, 1, m, e) != 0) { free(d); return -1; }
    b->kind = PS_BACKEND_CPU;   // (the engine never asks; only the contract is a device's)
    b->precision = PS_PREC_FP32;
    b->name = "device-shaped";
    b->threads = 1;
    snprintf(b->device, sizeof b->device, "the CPU behind a device's interface (tests/device_shaped.c)");
    b->caps = PS_CAPS_CUDA;
    b->forward = ds_forward;
    b->backward = ds_backward;
    b->release_cache = ds_release;
    b->free = ds_free;
    b->impl = d;
    return 0;
}

const ds_stats *ds_backend_stats(const ps_backend *b) { return &((const ds_impl *)b->impl)->st; }
