// What the CPU backend's files share and nothing outside src/backends/ sees: threading thresholds, the
// vectorized clones, a batch's row slots, and the hooks where interventions act (cpu_patch.c).
#ifndef PS_CPU_INTERNAL_H
#define PS_CPU_INTERNAL_H

#include "ps_plan.h"

// Loops smaller than this run on one thread: a parallel region's start and barrier cost more than the
// work, and on a busy machine a barrier waits for whichever thread was descheduled.
#define PS_PAR_MIN ((int64_t)1 << 16)

// BLAS (ps_blas.h: the library chosen at run time); the CPU backend runs it single-threaded and
// parallelizes around it with OpenMP.
#include "ps_blas.h"

// x86-64 builds carry AVX-512 and AVX2 copies of the hottest loops besides the baseline one, chosen at
// load time (the binary stays portable). None uses FMA (ISO C mode: no contraction), and the sums' order
// is written out, so all give the same bits.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define PS_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define PS_CLONES
#endif

// One batch of rows through every layer and the unembedding, each step's loops on the threads of
// omp_get_max_threads() (cpu_forward.c); ps_cpu_forward_ws cuts big batches into such batches, one a thread.
int ps_cpu_forward_batch(const ps_model *m, ps_row *rows, int64_t n_rows, ps_cpu_workspace *wsp, ps_error *e);

// Rows [ends[p-1], ends[p]) for p < n, each a batch of its own (ps_cpu_forward_batch) run whole by one thread with
// that thread's workspace of wsp->pieces (cpu_pieces.c); its numbers are those of its own call on one thread.
int ps_cpu_forward_pieces(const ps_model *m, ps_row *rows, const int64_t *ends, int64_t n, ps_cpu_workspace *wsp, ps_error *e);
// 1 when ps_cpu_forward_groups runs its G groups that way, one a thread at a time: resident weights, more than one
// thread, at least two groups a thread and every group smaller than a piece (its steps' loops would hardly use a
// second thread); else the groups go through each layer in turn.
int ps_cpu_groups_on_threads(const ps_model *m, const ps_row *rows, const int64_t *ends, int64_t G);

// ps_sgemm_par (ps_blas.h) on GEMMs of the forward pass, timed when profiling (by rows: all share M and K).
void ps_cpu_linear_n(const ps_gemm *g, int n);

// in[i] += bias[i] (bias NULL: none), then out[i] = gelu_new(in[i]) (cpu_ops.c), for one token's MLP pre-activation:
// the bias added in the activation's pass, not copied under the GEMM's output first (the copies were a quarter of
// the circuit search's memmove). A fifth of a GPT-2 sweep's non-GEMM time, so vectorized.
void ps_cpu_bias_gelu_new_n(float *out, float *in, const float *bias, int64_t n);

// One row of a batch in the workspace buffers.
typedef struct {
    ps_row *row;
    int64_t off;   // first token of this row in the workspace buffers
    int64_t n;     // tokens held: T - start_pos
    int64_t dirty; // positions [start_pos, dirty) of the residual stream entering the current layer differ from base
    ps_layer_plan plan; // this layer's
} ps_cpu_slot;

// The hook (site, layer l) of every active row: its patches, in order, on the hook's value in buf
// (per-token stride ld; map NULL or workspace token -> row of a compacted buffer, -1 when not computed),
// then its captures. Not for pattern (ps_cpu_pattern_hook).
void ps_cpu_hook(const ps_model_config *cfg, ps_site site, int64_t l, float *buf, int64_t ld, const int64_t *map,
                 const ps_cpu_slot *slots, int64_t n_active);
// hook_result at layer l (cpu_result.c): for every row with patches or captures there, the per-head outputs
// z_h @ W_O[h] of its tokens among the n_wo rows of zp (the W_O input, (.., H*D); pmap: workspace token -> row
// of zp, or NULL for the identity; NA workspace tokens), the hook, and attn_out's rows of y rewritten as their
// sum + b_O (b_o NULL: none). Rows without such patches are left as the fused GEMM made them. -1: out of memory.
int ps_cpu_result_step(const ps_model_config *cfg, const float *w_o, const float *b_o, int64_t l, const float *zp, float *y,
                       int64_t n_wo, const int64_t *pmap, int64_t NA, const ps_cpu_slot *slots, int64_t n_active);
// The pattern hook of one (row, layer l, head h, query t): probs holds the t + 1 probabilities.
void ps_cpu_pattern_hook(const ps_model_config *cfg, const ps_row *row, int64_t l, int64_t h, int64_t t, float *probs);
// Fills every capture of the rows from their base caches (the positions and layers a row does not
// recompute); the forward then overwrites what it computes.
void ps_cpu_captures_from_base(const ps_model_config *cfg, const ps_cpu_slot *slots, int64_t n_rows);

// Per-step CPU-time counters of the forward pass, for profiling only: compiled in with -DPS_CPU_PROFILE
// (never by default), printed to stderr at exit. Single-threaded runs (threads 1) give exact shares.
#ifdef PS_CPU_PROFILE
enum { PS_PROF_GEMM, PS_PROF_ATTN, PS_PROF_NORM, PS_PROF_ACT, PS_PROF_COPY, PS_PROF_HOOK, PS_PROF_UNEMBED, PS_PROF_BASELINE,
       PS_PROF_FORWARD, PS_PROF_N };
double ps_prof_now(void);
void ps_prof_add(int step, double t0);
void ps_prof_gemm(int64_t n, int64_t in, int64_t out, double t0);
#define PS_PROF(step, stmt) do { const double ps_prof_t0 = ps_prof_now(); stmt; ps_prof_add(step, ps_prof_t0); } while (0)
#else
#define PS_PROF(step, stmt) do { stmt; } while (0)
#endif

// a . b with eight interleaved partial sums (a fixed order any vector width reproduces).
static inline float ps_cpu_dot(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t d = 0;
    for (; d + 8 <= n; d += 8)
        for (int i = 0; i < 8; i++) acc[i] += a[d + i] * b[d + i];
    for (int i = 0; d < n; d++, i++) acc[i] += a[d] * b[d];
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// One layer's attention inputs and outputs, for ps_cpu_attend_head.
typedef struct {
    const ps_model_config *cfg;
    const float *q, *k, *v; // (N, QD), (N, KD), (N, KD) this batch's tokens (rotated for Llama and GPT-NeoX)
    float *z;               // (N, QD)
    int64_t l, H, D, QD, KD, group;
    int rotary;             // keys before start_pos are base's rot_k rather than k
    float inv_sqrt_d;
} ps_cpu_attn_layer;

// Causal attention of one head h of one row at the row's query positions (cpu_attend.c): keys before start_pos
// come from the base run's cache; pattern patches replace a query's probabilities. sc: scratch of
// ps_cpu_attend_scratch(T, D) floats (a thread's, reused across rows of up to T tokens).
void ps_cpu_attend_head(const ps_cpu_attn_layer *a, const ps_cpu_slot *rs, int64_t h, float *sc);
size_t ps_cpu_attend_scratch(int64_t T_max, int64_t D);

#endif
