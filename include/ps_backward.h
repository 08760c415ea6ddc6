// The reverse-mode pass through the CPU reference forward: d metric / d (every TransformerLens hook) of one
// prompt's run, from that run's forward cache and d metric / d logits at the metric's positions. Attribution
// patching (src/engine/attribution.c) reads it; the CUDA kernels will be tested against it.
#ifndef PS_BACKWARD_H
#define PS_BACKWARD_H

#include "ps_cache.h"

// d metric / d logits where the metric reads them: logits[pos[o], :] for o < n_out. Borrowed.
typedef struct {
    int64_t n_out;
    const int64_t *pos;     // (n_out) positions, each < T
    const float *dlogits;   // (n_out, V)
} ps_logit_grad;

// Fills grad (made by the caller with ps_cache_init for this model and fwd->T, any flags; overwritten) with the
// metric's gradient at every array grad holds, in the forward cache's layout: attn_scores with PS_CACHE_SCORES,
// result with PS_CACHE_RESULT, logits with PS_CACHE_LOGITS (lg's rows, zero elsewhere). fwd is the run's cache,
// any flags: the backward reads the residual stream, the norm scales, q/k/v (rot_q/rot_k for Llama and GPT-NeoX),
// pattern and the MLP's activations, never scores, result or logits. Each hook is its own node, as TransformerLens
// hooks are: ln*.hook_scale's gradient is the metric's through x / scale alone, resid_mid's is the total over both
// of its uses (a parallel-residual GPT-NeoX block has none: there resid_pre's sums the residual, ln1 and ln2
// paths), pattern's is nonzero above the diagonal too (z sums over every key) while attn_scores' is zero there.
// Working memory beyond the two caches: one (T, C) buffer. Streamed models convert each layer
// once (ps_model_layer), last layer first.
int ps_cpu_backward(const ps_model *m, const ps_cache *fwd, const ps_logit_grad *lg, ps_cache *grad, ps_error *e);

// The building blocks' backward passes (cpu_ops.c, beside their forwards). Norms: dx (N, C) += the gradient
// through out = norm(x) given dout (N, C); dscale (N) (may be NULL) = the gradient at the scale as its own node;
// x and scale are the forward's input and its cached scale.
void ps_cpu_layernorm_backward(float *dx, float *dscale, const float *dout, const float *x, const float *scale, const float *w,
                               int64_t N, int64_t C);
void ps_cpu_rmsnorm_backward(float *dx, float *dscale, const float *dout, const float *x, const float *scale, const float *w,
                             int64_t N, int64_t C);
// In place: the gradient at rotary's input from the gradient at its output (the transposed rotation).
void ps_cpu_rotary_backward(float *dx, int64_t T, int64_t n_heads, int64_t D, int64_t rot_dim, const int64_t *pos, float theta);
// d act(x) / dx.
float ps_cpu_act_backward(ps_act act, float x);

#endif
