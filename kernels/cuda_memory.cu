// The CUDA backend's device memory: the arena of device copies of activation caches (bound to each cache by
// its handle, ps_backend.h's contract), the batch workspace and pinned staging, and the out-of-memory
// fallback (evict the arena, then split the batch; see "Out of memory" below). Unrun: no GPU has executed this file yet (see README, "unverified").
#include "ps_cuda_internal.h"

#include <stdio.h>

// ---------------------------------------------------------------------------------------------
// The cache arena

// Handles are unique in the process (not per backend): a cache read by two backends in turn carries the
// last one's handle, which the other then finds in none of its entries and so never mistakes for its own.
static uint64_t ps_cu_next_handle = 0;

static uint64_t new_handle(void) { return __atomic_add_fetch(&ps_cu_next_handle, 1, __ATOMIC_RELAXED); }

// The entry bound to c; -1 when c has none here.
static int64_t entry_of(const ps_cu_backend *im, const ps_cache *c) {
    if (!c->handle) return -1;
    for (int64_t i = 0; i < im->n_ent; i++)
        if (im->ent[i].handle == c->handle) return i;
    return -1;
}

// A handle is trusted only while its cache is still the one it was bound to (a struct copied and then
// given other memory, say): the contract is kept by callers, this catches the cheap-to-see breaches.
static int entry_matches(const ps_cu_entry *en, const ps_cache *c) {
    return en->memory == c->memory && en->n_floats == c->n_floats && en->T == c->T;
}

static void entry_remove(ps_cu_backend *im, int64_t i) {
    memmove(im->ent + i, im->ent + i + 1, (size_t)(im->n_ent - i - 1) * sizeof *im->ent);
    im->n_ent--;
}

static size_t arena_used(const ps_cu_backend *im) {
    size_t s = 0;
    for (int64_t i = 0; i < im->n_ent; i++) s += im->ent[i].bytes;
    return s;
}

// Least recently used entry that the current forward call has not touched; -1 when none.
static int64_t arena_victim(const ps_cu_backend *im) {
    int64_t best = -1;
    for (int64_t i = 0; i < im->n_ent; i++)
        if (im->ent[i].used < im->clock && (best < 0 || im->ent[i].used < im->ent[best].used)) best = i;
    return best;
}

// First fit between the entries; returns the insertion index, or -1.
static int64_t arena_gap(const ps_cu_backend *im, size_t bytes, size_t *off) {
    size_t prev = 0;
    for (int64_t i = 0; i < im->n_ent; i++) {
        if (im->ent[i].off - prev >= bytes) {
            *off = prev;
            return i;
        }
        prev = im->ent[i].off + im->ent[i].bytes;
    }
    if (im->arena_cap >= prev && im->arena_cap - prev >= bytes) {
        *off = prev;
        return im->n_ent;
    }
    return -1;
}

// Replaces the arena by one of want bytes holding the first `high` bytes of the old one (offsets are kept,
// so entries stay valid). PS_CUDA_OOM when the device has no room.
static int arena_grow(ps_cu_backend *im, size_t want, size_t need, size_t high, ps_error *e) {
    char *p = NULL;
    if (cudaMalloc((void **)&p, want) != cudaSuccess) {
        (void)cudaGetLastError();  // not sticky: the smaller request below starts clean
        p = NULL;
        want = need;
        if (cudaMalloc((void **)&p, want) != cudaSuccess) {
            (void)cudaGetLastError();
            ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: out of device memory for the batch's activation caches (%zu MiB)",
                    need >> 20);
            return PS_CUDA_OOM;
        }
    }
    // Nothing queued may still use the old arena when it is copied and freed.
    cudaError_t err = high ? cudaMemcpyAsync(p, im->arena, high, cudaMemcpyDeviceToDevice, im->ctx.stream) : cudaSuccess;
    if (err == cudaSuccess) err = cudaStreamSynchronize(im->ctx.stream);
    if (err != cudaSuccess) {
        cudaFree(p);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: CUDA backend: growing the cache arena: %s", __FILE__, __LINE__,
                       cudaGetErrorString(err));
    }
    err = cudaFree(im->arena);
    im->arena = p;  // kept either way: the old arena is gone or unusable
    im->arena_cap = want;
    if (err != cudaSuccess)
        return ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: cudaFree(arena): %s", __FILE__, __LINE__, cudaGetErrorString(err));
    return 0;
}

// A new entry for c (contents not copied, not valid, bound to no handle yet); evicts least recently used
// entries beyond the budget, grows the arena when nothing fits, and evicts when the device is full.
static int arena_alloc(ps_cu_backend *im, const ps_cache *c, int64_t *idx, ps_error *e) {
    const size_t bytes = ps_cu_align_up(c->n_floats * sizeof(float), 256);
    for (;;) {
        size_t off = 0;
        const int64_t at = arena_gap(im, bytes, &off);
        if (at >= 0) {
            if (im->n_ent == im->cap_ent) {
                int64_t cap = im->cap_ent ? 2 * im->cap_ent : 64;
                ps_cu_entry *p = (ps_cu_entry *)realloc(im->ent, (size_t)cap * sizeof *p);
                if (!p) return ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: out of host memory");
                im->ent = p;
                im->cap_ent = cap;
            }
            memmove(im->ent + at + 1, im->ent + at, (size_t)(im->n_ent - at) * sizeof *im->ent);
            ps_cu_entry en = {0, c->memory, c->n_floats, c->T, off, bytes, im->clock, 0};
            im->ent[at] = en;
            im->n_ent++;
            *idx = at;
            return 0;
        }
        const int64_t victim = arena_victim(im);
        if (victim >= 0 && arena_used(im) + bytes > im->budget) {
            entry_remove(im, victim);
            continue;
        }
        const size_t high = im->n_ent ? im->ent[im->n_ent - 1].off + im->ent[im->n_ent - 1].bytes : 0;
        const size_t need = ps_cu_align_up(high + bytes, 1 << 20);
        const size_t want = im->arena_cap * 2 > need ? ps_cu_align_up(im->arena_cap * 2, 1 << 20) : need;
        const int rc = arena_grow(im, want, need, high, e);
        if (rc == PS_CUDA_OOM && victim >= 0) {
            entry_remove(im, victim);  // the device is full: make room among the idle entries instead
            continue;
        }
        if (rc) return rc;
    }
}

int ps_cu_cache_place(ps_cu_backend *im, const ps_cache *c, ps_cu_cache_role role, size_t *off, ps_error *e) {
    if (!c->memory || !c->n_floats) return ps_fail(e, PS_EXIT_RUNTIME, "forward: a cache the rows refer to is empty");
    int64_t i = entry_of(im, c);
    if (i >= 0 && !entry_matches(&im->ent[i], c)) {
        entry_remove(im, i);  // bound to another cache's memory or shape: never read it
        i = -1;
    }
    if (i < 0) {
        PS_TRY(arena_alloc(im, c, &i, e));
        im->ent[i].handle = new_handle();
        // The handle is the one field of an input cache the backend writes (ps_backend.h); the caches rows
        // point at are never const objects, only const through the row.
        ((ps_cache *)c)->handle = im->ent[i].handle;
    }
    ps_cu_entry *en = &im->ent[i];
    if (role == PS_CU_CACHE_OUTPUT) {
        en->valid = 0;  // about to be recomputed: trusted again only once copied back (ps_cu_cache_commit)
    } else if (!en->valid) {
        CUDA_CHECK(e, cudaMemcpyAsync(im->arena + en->off, c->memory, c->n_floats * sizeof(float), cudaMemcpyHostToDevice,
                                      im->ctx.stream));
        en->valid = 1;  // stream order: every kernel of this call runs after the copy
    }
    en->used = im->clock;
    *off = en->off;
    return 0;
}

void ps_cu_cache_commit(ps_cu_backend *im, const ps_cache *c) {
    const int64_t i = entry_of(im, c);
    if (i >= 0 && entry_matches(&im->ent[i], c)) im->ent[i].valid = 1;
}

// Copies this call uploaded or was computing may be incomplete or wrong after a failure (an asynchronous
// fault, a copy that never ran): each is uploaded afresh when next read.
void ps_cu_cache_fail_call(ps_cu_backend *im) {
    for (int64_t i = 0; i < im->n_ent; i++)
        if (im->ent[i].used == im->clock) im->ent[i].valid = 0;
}

void ps_cu_cache_release(ps_cu_backend *im, ps_cache *c) {
    const int64_t i = entry_of(im, c);
    if (i < 0) return;  // not ours (0, evicted, or another backend's): left alone
    entry_remove(im, i);
    c->handle = 0;
}

void ps_cu_cache_free_all(ps_cu_backend *im) {
    cudaFree(im->arena);  // teardown: nothing to report a failure to
    im->arena = NULL;
    im->arena_cap = 0;
    free(im->ent);
    im->ent = NULL;
    im->n_ent = im->cap_ent = 0;
}

// ---------------------------------------------------------------------------------------------
// Workspace

int ps_cu_ensure_ws(ps_cu_backend *im, size_t bytes, ps_error *e) {
    if (bytes <= im->ws_cap) return 0;
    PS_TRY(ps_cu_release_ws(im, e));
    size_t want = ps_cu_align_up(bytes + bytes / 4, 1 << 20);
    if (cudaMalloc((void **)&im->ws, want) != cudaSuccess) {
        (void)cudaGetLastError();  // not sticky: retry with the exact size
        want = bytes;
        if (cudaMalloc((void **)&im->ws, want) != cudaSuccess) {
            (void)cudaGetLastError();
            im->ws = NULL;
            ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: out of device memory for a batch workspace of %zu MiB", bytes >> 20);
            return PS_CUDA_OOM;
        }
    }
    im->ws_cap = want;
    return 0;
}

int ps_cu_ensure_host(ps_cu_backend *im, size_t bytes, ps_error *e) {
    if (bytes <= im->host_cap) return 0;
    // The staging may be the source or target of a queued copy until the stream drains.
    CUDA_CHECK(e, cudaStreamSynchronize(im->ctx.stream));
    char *old = im->host;
    im->host = NULL;
    im->host_cap = 0;
    CUDA_CHECK(e, cudaFreeHost(old));
    const size_t want = ps_cu_align_up(bytes + bytes / 4, 1 << 16);
    CUDA_CHECK(e, cudaMallocHost((void **)&im->host, want));
    im->host_cap = want;
    return 0;
}

int ps_cu_release_ws(ps_cu_backend *im, ps_error *e) {
    // Queued kernels may still use it. A failed sync is an asynchronous fault (the context is lost): reported,
    // since retrying a smaller batch on a lost context would only fail again with a less useful message.
    const cudaError_t err = cudaStreamSynchronize(im->ctx.stream);
    if (err != cudaSuccess) {
        (void)cudaGetLastError();
        return ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: CUDA backend: the stream failed: %s", __FILE__, __LINE__, cudaGetErrorString(err));
    }
    const cudaError_t ferr = cudaFree(im->ws);
    im->ws = NULL;
    im->ws_cap = 0;
    if (ferr != cudaSuccess) return ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: cudaFree(workspace): %s", __FILE__, __LINE__, cudaGetErrorString(ferr));
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Out of memory: evict, then split
//
// When a batch does not fit, the arena's copies of caches (a cache: every one can be uploaded again from its
// host cache) and the workspace are freed first and the batch is retried once whole; only if it still does not
// fit is it split in halves, recursively. The token count of the halves that fit becomes tok_cap, and every later
// call is split into runs of rows of at most tok_cap tokens up front instead of failing at full size again.
//
// Bitwise equality: a row's numbers do not depend on the other rows of its batch beyond rounding, but cuBLAS
// picks its kernels by the GEMM's shape, so a row run in a split batch can differ in the last bits (fp32: about
// 1e-7 relative) from the same row in a whole one. Splits depend on the device's free memory, so a resumed or
// sharded run on another GPU (or with another cuda_cache_mb) may split differently; its values then agree within
// that rounding, not bitwise. On one GPU with one budget the split points are deterministic (tok_cap).

static int64_t tokens_of(const ps_row *rows, int64_t n) {
    int64_t t = 0;
    for (int64_t i = 0; i < n; i++) t += rows[i].T - rows[i].start_pos;
    return t;
}

// Drops every copy of a cache and frees the arena (after the failed call's sync); 1 when it freed memory.
static int evict_all(ps_cu_backend *im) {
    if (!im->arena) return 0;
    ps_cu_cache_free_all(im);
    return 1;
}

static int run_split(ps_cu_backend *im, const ps_model *m, ps_row *rows, int64_t n_rows, int may_evict, ps_error *e) {
    ps_error le;
    memset(&le, 0, sizeof le);
    int rc = ps_cu_run_batch(im, m, rows, n_rows, &le);
    if (rc == 0) return 0;
    if (rc != PS_CUDA_OOM) return ps_fail(e, le.code ? le.code : PS_EXIT_RUNTIME, "%s", le.msg);
    (void)cudaGetLastError();
    PS_TRY(ps_cu_release_ws(im, e));
    if (may_evict && evict_all(im)) {
        memset(&le, 0, sizeof le);
        rc = ps_cu_run_batch(im, m, rows, n_rows, &le);
        if (rc == 0) return 0;
        if (rc != PS_CUDA_OOM) return ps_fail(e, le.code ? le.code : PS_EXIT_RUNTIME, "%s", le.msg);
        (void)cudaGetLastError();
        PS_TRY(ps_cu_release_ws(im, e));
    }
    if (n_rows == 1) return ps_fail(e, le.code ? le.code : PS_EXIT_RUNTIME, "%s", le.msg);
    const int64_t h = n_rows / 2, th = tokens_of(rows, h);
    if (!im->tok_cap || th < im->tok_cap) im->tok_cap = th > 0 ? th : 1;
    // The halves: the arena was just emptied, so they evict nothing more (their own copies are in use).
    PS_TRY(run_split(im, m, rows, h, 0, e));
    return run_split(im, m, rows + h, n_rows - h, 0, e);
}

int ps_cu_forward_rows(ps_cu_backend *im, const ps_model *m, ps_row *rows, int64_t n_rows, ps_error *e) {
    if (n_rows <= 0) return 0;
    if (!im->tok_cap) return run_split(im, m, rows, n_rows, 1, e);
    // Since an earlier batch ran out of memory: runs of consecutive rows of at most tok_cap tokens (one row
    // at least), in order.
    for (int64_t r = 0; r < n_rows;) {
        int64_t n = 0, tok = 0;
        while (r + n < n_rows && (n == 0 || tok + rows[r + n].T - rows[r + n].start_pos <= im->tok_cap)) {
            tok += rows[r + n].T - rows[r + n].start_pos;
            n++;
        }
        PS_TRY(run_split(im, m, rows + r, n, 1, e));
        r += n;
    }
    return 0;
}
