// What the engine's files share and nothing outside src/engine/ sees: sweep layouts and their cells.
#ifndef PS_ENGINE_INTERNAL_H
#define PS_ENGINE_INTERNAL_H

#include "ps_engine.h"
#include "ps_producer.h"

// Heads at a site: key/value heads for k and v (grouped-query attention), query heads otherwise.
int64_t ps_site_heads(const ps_model_config *mc, ps_site s);
int ps_has_pos(ps_layout l);
int ps_has_head(ps_layout l);
// Sets up sw's axes and NaN-filled results for experiment ex (index idx, for messages), checking its
// layers, heads, neurons and positions against the model and the prompts (bad input: exit status 2).
int ps_sweep_init(ps_sweep *sw, const ps_experiment *ex, int64_t idx, const ps_model_config *mc, const ps_prompt_set *ps,
                  ps_error *e);
// The sweep's table (kind patch_sweep): its axes as the file shows them, NaN values, attributes.
int ps_sweep_table_init(ps_table *t, const ps_sweep *sw, const ps_prompt_set *ps, ps_error *e);
// The patch of one cell of a sweep for one prompt; 0 when the cell does not apply to the prompt.
int ps_cell_patch(const ps_sweep *sw, int64_t cell, const ps_prompt *p, ps_patch *pt);

// Plans a row from its base and patches (intervene.c): start_layer, start_pos and, when narrow_ok, the
// narrowing. Returns 0 when the row cannot change anything its out_pos read (its result is base's).
int ps_plan_row(const ps_model_config *mc, ps_row *r, int narrow_ok);
// ps_plan_row with the first position at which each patch changes base's run given by fc (-1: nowhere):
// the fused streamed pass (sweep_run.c) plans rows before their baselines exist with a predicted fc.
typedef int64_t (*ps_first_change_fn)(const ps_model_config *mc, const ps_patch *pt, const ps_cache *base, void *ctx);
int ps_plan_row_by(const ps_model_config *mc, ps_row *r, int narrow_ok, ps_first_change_fn fc, void *ctx);

struct ps_product;
// A sweep-shaped producer's state (sweep_run.c): the sweep's layout in p->state and its table in p->t; and its free.
int ps_sweep_product_init(const ps_model_config *mc, const ps_prompt_set *ps, struct ps_product *p, ps_error *e);
void ps_sweep_state_free(void *state);

struct ps_producer_ctx;
// The fused streamed pass (sweep_run.c): a chunk's sweep rows planned before its baselines from the tokens,
// so that they run in the baselines' own forward_groups call (each layer converted once for both). predict:
// *out is NULL when nothing can be predicted (then the chunk runs as always); the pass's rows (owned by it)
// come after the baselines' groups in that call; fused_chunk then does the sweep's chunk, taking the logits of
// every group it forms that equals a predicted one and running the others. sp NULL: the plain chunk.
typedef struct ps_sweep_pass ps_sweep_pass;
int ps_sweep_fused_predict(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch,
                           ps_sweep_pass **out, ps_error *e);
void ps_sweep_fused_rows(ps_sweep_pass *sp, ps_row **rows, int64_t *n_rows, const int64_t **ends, int64_t *n_groups);
int ps_sweep_fused_chunk(ps_producer_ctx *cx, ps_product *const *items, int64_t n, const ps_chunk *ch,
                         ps_sweep_pass *sp, ps_error *e);
void ps_sweep_fused_free(ps_sweep_pass *sp);
// The metric's gradient at every hook of a run (attribution.c): g gets a cache (flags 0) for p->T tokens that the
// caller frees, also on failure. base is the run of tokens (prompt p's clean or corrupted); clean_lp: (V) or NULL.
int ps_run_gradient(struct ps_producer_ctx *cx, const ps_prompt *p, const int32_t *tokens, const ps_cache *base,
                    const float *clean_lp, ps_cache *g, ps_error *e);

#endif
