// A test backend shaped like a device backend (kernels/'s CUDA one) that computes on the CPU: CUDA's capability
// bits, no forward_groups, a backward that reads its forward through a device copy, and device copies of caches
// emulated by host snapshots bound by handle (ps_backend.h's contract). The engine's paths for a device run here,
// on machines without one, and every breach of the handle contract is counted: a cache read while its host arrays
// differ from the copy bound to its handle (rewritten without release_cache: a device would read stale values),
// and a batch that uses one cache both as a row's output and as an input (CUDA refuses it: an error here too).
// Copies are never evicted (a device evicts under pressure, which would hide a stale read only sometimes).
#ifndef PS_DEVICE_SHAPED_H
#define PS_DEVICE_SHAPED_H

#include "ps_backend.h"

typedef struct {
    int64_t stale_reads;     // caches read through a copy their host arrays no longer equal (each a contract breach)
    char first_stale[256];   // the first of them, in words
    int64_t uploads, reads_of_copies, releases, outputs;
} ds_stats;

// A CPU backend of one thread behind the device-shaped interface; ps_backend_free frees it.
int ds_backend_init(ps_backend *b, const ps_model *m, ps_error *e);
const ds_stats *ds_backend_stats(const ps_backend *b);

#endif
