// A big batch of rows cut into pieces, each run whole by one thread (ps_cpu_forward_ws): the CPU forward's threading
// for the sweeps' batches, without a barrier per step. Smaller batches share every step's loops (cpu_forward.c).
#include "cpu_internal.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>

// A batch of at least this many FLOPs a thread (ps_row_flops: about 0.1 s of a core's GEMMs) is cut into pieces of
// rows, each piece a batch of its own run whole by one thread, single-threaded: no barrier per GEMM, norm, copy
// or attention loop (a layer had a dozen, each one a wait for the slower thread and, on a busy machine, for a
// descheduled one), and no serial stretch of the main thread between them. One piece a thread: on the idle 2-core
// VM, z by layer x pos x head (bench/sweeps) took 27.7 s with one, 30.5-33.2 s with two (smaller GEMMs, each
// packing its whole weight matrix), 27.3-28.5 s with no pieces; on a loaded machine two had been best. Smaller batches (a prompt's last rows) keep
// the GEMMs of all their rows, each cut between the threads (ps_sgemm_par): more rows a GEMM there.
#define PS_PIECE_MIN_FLOP 2e10
enum { PS_PIECES_PER_THREAD = 1 };
// And each piece must hold at least this many tokens a layer on average (its FLOPs over a layer's 2 x weights):
// a GEMM of M rows does M/2 FLOPs a byte of its weight matrix, and a piece reads all of every matrix alone. With
// few tokens (a 7B model's sweep over 2 prompts: ~30 a piece) the pieces are bound by reading the weights twice,
// once a thread, where the per-step GEMMs split the columns and read them once: 87 against 110 GFLOP/s measured on
// a 4-layer Llama-2-7B-shaped sweep (bench/streamed --llama7b's resident run). GPT-2 small's sweep batches hold
// hundreds of tokens a piece.
#define PS_PIECE_MIN_TOKENS 128.0

// Cuts rows [0, n_rows) into consecutive pieces of near-equal FLOPs (ends[p]: the end of piece p), at most max of
// them; returns how many (1: not worth cutting, or rows a piece cannot take). The cut depends on the rows and the
// thread count only, so a batch's numbers are reproducible (each piece is a batch of its own: its rows' numbers
// are those of ps_cpu_forward on that piece).
static int64_t cut_pieces(const ps_model *m, const ps_row *rows, int64_t n_rows, double min_flop, double min_tokens, int64_t *ends,
                          int64_t max) {
    double total = 0;
    for (int64_t r = 0; r < n_rows; r++) {
        const ps_row *row = &rows[r];
        // Cache rows store whole layers of a batch that must not mix them with narrowed rows; whole-vocabulary
        // rows share one logits GEMM whose rows' bits depend on its size: both stay in one batch, as do streamed
        // layers (converted once per batch; ps_cpu_forward_groups is their way).
        if (row->cache || (row->n_out && !row->cols) || m->stream) return 1;
        total += ps_row_flops(&m->cfg, row);
    }
    const ps_model_config *c = &m->cfg;
    const double QD = (double)(c->n_heads * c->d_head), KD = (double)(c->n_kv_heads * c->d_head), C = (double)c->d_model;
    const double layer_weights = C * (QD + 2 * KD) + QD * C + (c->arch == PS_ARCH_LLAMA ? 3.0 : 2.0) * C * (double)c->d_mlp;
    const double by_tokens = total / (min_tokens * 2 * layer_weights * (double)(c->n_layers > 0 ? c->n_layers : 1));
    int64_t n = (int64_t)(total / min_flop);
    if (min_tokens > 0 && n > (int64_t)by_tokens) n = (int64_t)by_tokens;
    if (n > max) n = max;
    if (n > n_rows) n = n_rows;
    if (n < 2) return 1;
    double at = 0;
    int64_t p = 0;
    for (int64_t r = 0; r < n_rows && p < n - 1; r++) {
        at += ps_row_flops(&m->cfg, &rows[r]);
        if (at >= total * (double)(p + 1) / (double)n) ends[p++] = r + 1;
    }
    while (p < n - 1) ends[p++] = n_rows; // (rounding: empty pieces at the end are skipped)
    ends[n - 1] = n_rows;
    return n;
}

// Pieces [ends[p-1], ends[p]) of rows, in turn on the threads, each a batch of its own run whole by one thread
// (nested regions: one thread), with that thread's workspace (wsp->pieces[t], kept between calls): any number
// of pieces. The first piece that failed reports its error.
int ps_cpu_forward_pieces(const ps_model *m, ps_row *rows, const int64_t *ends, int64_t n, ps_cpu_workspace *wsp, ps_error *e) {
    const int nt = omp_get_max_threads();
    if (wsp->n_pieces < nt) {
        ps_cpu_workspace *more = realloc(wsp->pieces, (size_t)nt * sizeof *more);
        if (!more) return ps_fail(e, PS_EXIT_RUNTIME, "forward: out of memory");
        memset(more + wsp->n_pieces, 0, (size_t)(nt - wsp->n_pieces) * sizeof *more);
        wsp->pieces = more;
        wsp->n_pieces = nt;
    }
    ps_cpu_workspace *ws = wsp->pieces;
    ps_first_error failed = PS_FIRST_ERROR_NONE;   // by piece
#pragma omp parallel num_threads(nt)
    {
        omp_set_num_threads(1); // this thread's regions inside a piece: one thread (this task's setting only)
        ps_cpu_workspace *mine = &ws[omp_get_thread_num()];
        ps_error pe = {0};
#pragma omp for schedule(dynamic, 1)
        for (int64_t p = 0; p < n; p++) {
            const int64_t r0 = p ? ends[p - 1] : 0;
            if (r0 < ends[p] && ps_cpu_forward_batch(m, rows + r0, ends[p] - r0, mine, &pe) != 0) {
                ps_first_error_note(&failed, p, &pe);
                pe = (ps_error){0};
            }
        }
    }
    return ps_first_error_take(&failed, e);
}

int ps_cpu_groups_on_threads(const ps_model *m, const ps_row *rows, const int64_t *ends, int64_t G) {
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (m->stream || nt < 2 || G < 2 * (int64_t)nt) return 0;
    for (int64_t g = 0, r = 0; g < G; g++) {
        double f = 0;
        for (; r < ends[g]; r++) f += ps_row_flops(&m->cfg, &rows[r]);
        if (f >= PS_PIECE_MIN_FLOP) return 0;
    }
    return 1;
}

#ifdef PS_CPU_PROFILE
static int forward_ws(const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *wsp, ps_error *e);
int ps_cpu_forward_ws(const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *wsp, ps_error *e) {
    const double t0 = ps_prof_now();
    const int rc = forward_ws(m, rows, n_rows, wsp, e);
    ps_prof_add(PS_PROF_FORWARD, t0);
    if (n_rows > 0 && rows[0].cache) ps_prof_add(PS_PROF_BASELINE, t0);
    return rc;
}
static int forward_ws(const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *wsp, ps_error *e) {
#else
int ps_cpu_forward_ws(const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *wsp, ps_error *e) {
#endif
    if (n_rows <= 0) return 0;
    ps_blas_set_num_threads(1);
    const int nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    int64_t ends[64];
    const int64_t max = (int64_t)nt * PS_PIECES_PER_THREAD;
    const double min_flop = wsp->piece_min_flop > 0 ? wsp->piece_min_flop : PS_PIECE_MIN_FLOP;
    const double min_tokens = wsp->piece_min_flop > 0 ? 0 : PS_PIECE_MIN_TOKENS; // a test's tiny batches: no token floor
    const int64_t n = nt > 1 ? cut_pieces(m, rows, n_rows, min_flop, min_tokens, ends, max < 64 ? max : 64) : 1;
    return n > 1 ? ps_cpu_forward_pieces(m, rows, ends, n, wsp, e) : ps_cpu_forward_batch(m, rows, n_rows, wsp, e);
}

