// The first failure of a parallel loop (ps_common.h): what the serial loop would have reported, whichever thread
// failed first in time.
#include "ps_common.h"

void ps_first_error_note(ps_first_error *f, int64_t i, const ps_error *e) {
#pragma omp critical(ps_first_error)
    if (i < f->at) {
        f->at = i;
        f->e = *e;
    }
}

int ps_first_error_take(const ps_first_error *f, ps_error *e) {
    if (f->at == INT64_MAX) return 0;
    if (e) *e = f->e;
    return -1;
}
