// Path patching with ARENA's semantics (IOI chapter: get_path_patch_head_to_final_resid_post and
// get_path_patch_head_to_heads): the effect of a sender's output on receivers through the direct path only.
// Every sender of a chunk of prompts becomes batched rows planned by ps_engine_rows.
//
// For one prompt, with orig the base run and new the other (direction noise: orig = clean, new = corrupted,
// ARENA's IOI vs ABC; denoise swaps them):
//   pass 1: orig's tokens, the sender's output (hook_z of its head, or hook_mlp_out of its MLP) from new at
//           its positions, every other head's hook_z frozen at orig's value; MLPs recompute unless freeze_mlps
//           (every hook_mlp_out but the receivers' frozen at orig). The receivers' inputs are captured.
//   pass 2: orig's tokens, the receivers' inputs patched with the captures, everything else recomputed.
// Receivers: the final residual stream (one pass: pass 1's logits, ln_final recomputed, as ARENA unembeds
// ln_final(resid_post)), heads' q, k or v (TransformerLens's hook_q/hook_k/hook_v, what ARENA patches; for
// k/v the head index is a key/value head under grouped-query attention, TL's hook_k head axis), or MLPs.
// An MLP's input is not a hook of its own here (TL: blocks.l.mlp.hook_in, after ln2); its activations
// (hook_post) are a function of that input alone and everything after them is linear, so pass 1 captures the
// receiver MLP's hook_post and pass 2 patches it: the same numbers as patching the input (as hook_q is the
// head's input after W_Q). Its hook_mlp_out may then be frozen in pass 1 like every other MLP's.
#ifndef PS_PATH_PATCH_H
#define PS_PATH_PATCH_H

#include "ps_engine.h"

// Components (ps_node: a head, or head -1 an MLP) and receiver inputs (ps_recv_input) are in ps_config.h.
const char *ps_recv_input_name(ps_recv_input r);   // "resid_post", "q", "k", "v", "mlp"

typedef struct {
    const ps_node *senders; int64_t n_senders;       // heads and/or MLPs (borrowed)
    ps_recv_input input;                             // what the receivers read
    const ps_node *receivers; int64_t n_receivers;   // heads (q/k/v) or MLPs (head -1); none for resid_post
    int freeze_mlps;
    ps_direction direction;                          // noise: orig = clean (ARENA's default)
    // Sender positions, as an experiment's "positions": NULL = every position (ARENA); negative counts from
    // the prompt's end; position_role[k] non-NULL names a role looked up per prompt. Borrowed.
    const int64_t *positions; char *const *position_role; int64_t n_positions;
} ps_path_spec;

// Checks a spec against the model (layers, heads, key/value heads, receivers of one kind); bad input
// (PS_EXIT_BADINPUT) names `what` (e.g. "experiments[2] (pp)") and the field.
int ps_path_check(const ps_model_config *mc, const ps_path_spec *sp, const char *what, ps_error *e);

// One prompt of a chunk with its baseline runs (every activation cached).
typedef struct {
    const ps_prompt *p;
    const ps_cache *clean, *corrupted;
    const float *clean_logprobs;   // (V) at score_pos, KL only (else NULL)
} ps_path_item;

// values (n, n_senders): the metric of each prompt with each sender path-patched (a prompt none of whose
// sender positions exists gets orig's metric for that sender). Rows are built per block of senders (the
// captures of a block bounded by budget_bytes, 0: 256 MiB) and run through ps_engine_rows with o (naive:
// every row a full forward). st, when non-NULL, receives the summed counters of every call.
int ps_path_patch_chunk(const ps_model *m, ps_backend *be, const ps_path_spec *sp, const ps_path_item *items, int64_t n,
                        ps_metric_kind metric, const ps_rows_opts *o, size_t budget_bytes, float *values, ps_rows_stats *st,
                        ps_error *e);

// The table of a path-patching experiment (kind "path_patch", per prompt, metric-valued): axes (layer, head)
// when the senders are every head of a list of layers in order, else one axis "sender" labelled "a{l}.h{h}"
// or "m{l}"; attributes direction, receivers ("resid_post" or e.g. "a3.h0.q a3.h2.q"), input, freeze_mlps.
int ps_path_table_init(ps_table *t, const char *name, const ps_model_config *mc, const ps_path_spec *sp, int64_t n_prompts,
                       ps_error *e);

// ARENA's normalized metric (0 = orig's value, -1 = new's: unharmed / destroyed for noising) per prompt:
// (x - orig) / (orig - new), with orig the clean metric for noise and the corrupted for denoise.
// values, out: (n_rows, n_cells); clean, corrupted: (n_rows).
void ps_path_arena_normalized(const float *values, const float *clean, const float *corrupted, int64_t n_rows, int64_t n_cells,
                              ps_direction dir, float *out);

#endif
