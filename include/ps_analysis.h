// Analyses that read a prompt's activation cache (and the weights) rather than patch it: direct logit
// attribution, the logit lens, attention patterns, OV copy/next scores, neuron activations. Each lays out its result table
// (ps_table.h) and fills one prompt's row of it; the engine's producers call these per chunk of prompts.
#ifndef PS_ANALYSIS_H
#define PS_ANALYSIS_H

#include "ps_ablation.h"
#include "ps_cache.h"
#include "ps_table.h"
#include "ps_tokenizer.h"

// ---- Direct logit attribution (dla.c) ------------------------------------------------------------------
// The logit difference answer - wrong at one position, split over what writes the final residual stream
// there. Table axes after the prompt: variant (2) x component (K).
//   variant 0 "tl":    TransformerLens's logit_attrs(apply_ln_to_stack): each part centred (LayerNorm only)
//                      and divided by the cached final-norm scale, dotted with W_U[answer] - W_U[wrong];
//                      the final norm's weight and bias are not applied (with unfolded weights or RMSNorm
//                      the parts do not sum to the logit difference: TransformerLens #523).
//   variant 1 "exact": the same with the final norm's weight, so with the scale fixed at its cached value
//                      the final norm is linear and the parts, with "final_bias" (norm bias and b_U), sum to
//                      the model's logit difference.
// Components, in order (labels as TransformerLens's, plus the biases):
//   "embed", "pos_embed" (GPT-2), "<l>_attn_out", "<l>_mlp_out" for each layer l   (sum: resid_post of the last layer)
//   "L<l>H<h>" for each layer and head: z . W_O of that head (TransformerLens's stack_head_results)
//   "L<l>_b_O" for each layer (GPT-2): the attention output bias; heads + b_O = attn_out
//   "final_bias": final-norm bias . direction + b_U[answer] - b_U[wrong] (exact only; NaN for tl)
//   with neurons: "L<l>N<n>" for each layer and neuron (mlp_post . W_out row) and "L<l>_b_out" (GPT-2)
int64_t ps_dla_n_components(const ps_model_config *mc, int neurons);
// Labels of the components (K malloc'd strings in a malloc'd array; free with ps_labels_free). NULL on OOM.
char **ps_dla_labels(const ps_model_config *mc, int neurons);
void ps_labels_free(char **labels, int64_t n);
// A table of kind "dla" for n_rows prompts (values NaN until filled).
int ps_dla_table_init(ps_table *t, const char *name, const ps_model_config *mc, int64_t n_rows, int neurons, int answer_only,
                      ps_error *e);
// One prompt: c is its run (resid, attn_out, mlp_out, z, mlp_post and lnf_scale are read), pos the metric
// position; wrong = -1 decomposes the answer's logit alone (kind dla's "answer_only"). out: (2, K) as in the table. Streamed models are fine (layers are fetched with ps_model_layer).
int ps_dla_prompt(const ps_model *m, const ps_cache *c, int64_t pos, int32_t answer, int32_t wrong, int neurons, float *out,
                  ps_error *e);
// The same, keeping each (answer, wrong) pair's directions and their projections through W_O and W_out (which cost
// more than the prompt's own dot products) in memo for the next prompt with that pair. A prompt's numbers are the
// same with or without the memo and whatever it holds; memo NULL: ps_dla_prompt. The memo keeps pairs up to
// max_bytes (then computes the others each time); it belongs to one model. NULL on OOM; free with ps_dla_memo_free.
typedef struct ps_dla_memo ps_dla_memo;
ps_dla_memo *ps_dla_memo_new(const ps_model_config *mc, size_t max_bytes);
void ps_dla_memo_free(ps_dla_memo *memo);
int ps_dla_prompt_memo(const ps_model *m, ps_dla_memo *memo, const ps_cache *c, int64_t pos, int32_t answer, int32_t wrong,
                       int neurons, float *out, ps_error *e);
// The same for every prompt of a->ps (an initialised ablator, ps_ablation.h) run with `set` ablated, each at its
// metric position (answer_only: the answer's logit alone): out (a->ps->n, 2, K). The parts are those of the ablated
// run, with its own final-norm scale (TransformerLens's logit_attrs on the ablated cache; the IOI backup name movers).
int ps_dla_ablated(const ps_ablator *a, const ps_abl_set *set, int neurons, int answer_only, float *out, ps_error *e);

// ---- Logit lens (lens.c) -------------------------------------------------------------------------------
// The accumulated residual stream at one position, stage by stage: "<l>_pre", "<l>_mid" for each layer,
// then "final_post" (2L+1 stages, TransformerLens's accumulated_resid(incl_mid=True) labels), unembedded.
//   variant 0 "recompute": the final norm recomputed on each stage (TransformerLens >= 2.18,
//                          accumulated_resid(apply_ln=True)), then W_U and b_U: the last stage is the logits.
//   variant 1 "cached":    centred (LayerNorm) and divided by the final norm's cached scale, then its weight
//                          and bias, W_U and b_U (older TransformerLens, which on folded weights amounts to this).
// Table axes after the prompt: variant (2) x stage (2L+1) x quantity (4 + top_k):
//   "logit_diff", "answer_logit", "wrong_logit", "answer_rank" (0 = top), then "top1".."top<k>": token ids.
#define PS_LENS_QUANTITIES 4
int64_t ps_lens_n_stages(const ps_model_config *mc);
int ps_lens_table_init(ps_table *t, const char *name, const ps_model_config *mc, int64_t n_rows, int64_t top_k, ps_error *e);
// Logits of every stage at pos: logits (2, 2L+1, V) (variant, stage, vocabulary).
int ps_lens_logits(const ps_model *m, const ps_cache *c, int64_t pos, float *logits, ps_error *e);
// One prompt's row of the table: out (2, 2L+1, 4 + top_k).
int ps_lens_prompt(const ps_model *m, const ps_cache *c, int64_t pos, int32_t answer, int32_t wrong, int64_t top_k,
                   float *out, ps_error *e);

// ---- Attention patterns (attention.c) ------------------------------------------------------------------
// Patterns of chosen layers x heads at chosen query positions, over every key position up to the longest
// prompt. Table axes after the prompt: layer x head x query x key (keys beyond a prompt's length, or after
// the query, are NaN / 0 as the pattern has them; NaN past the prompt).
// layers/heads: the lists (NULL = all); queries: the positions as the config gives them (NULL = every
// position up to T_max), with query_label (NULL, or per query a role name or NULL) as the axis's labels.
int ps_attention_table_init(ps_table *t, const char *name, const ps_model_config *mc, int64_t n_rows,
                            const int64_t *layers, int64_t n_layers, const int64_t *heads, int64_t n_heads,
                            const int64_t *queries, char *const *query_label, int64_t n_queries, int64_t T_max, ps_error *e);
// One prompt's row from c->pattern: query_pos (the query axis's length) holds each query's resolved position in
// this prompt (-1 or past the prompt: its cells stay NaN). out: the table's cells for one prompt.
void ps_attention_prompt(const ps_table *t, const ps_model_config *mc, const ps_cache *c, const int64_t *query_pos, float *out);
// Head detectors as ARENA computes them, on sequences [BOS, x_1..x_N, x_1..x_N] of random tokens (2N+1 tokens):
// per layer and head the mean of a diagonal of the pattern: "current" (the query itself), "previous" (q-1),
// "first" (key 0, over every query), "duplicate" (q-N: the same token earlier), "induction" (q-N+1: the token
// after the query's previous occurrence). A table of kind "head_scores", not per prompt: layer x head x score.
#define PS_HEAD_SCORES 5
int ps_head_scores_table_init(ps_table *t, const char *name, const ps_model_config *mc, ps_error *e);
// Adds one sequence's scores to acc (L, H, PS_HEAD_SCORES); the caller divides by the number of sequences.
void ps_head_scores_add(const ps_model_config *mc, const ps_cache *c, int64_t N, double *acc);

// ---- OV copy and next scores (ov.c) --------------------------------------------------------------------
// Member tokens in order (a sequence: " 1", " 2", ...; January, February, ...), each one's first-layer residual
// (blocks.0.hook_resid_post at the token) through a head's OV circuit: the head's ln1 (weight, bias), W_V + b_V of
// its key/value head, sign x W_O, the final norm recomputed on the head's output, W_U + b_U (the IOI paper's
// copy-score code; sign -1 for negative heads). Copy hit: the member itself in the top k; next hit: the
// following member (seqcont's "next" score). NOTES.md lists the definitions in use.
// logits (n, V) for n residual rows resid (n, C) through head (l, h).
int ps_ov_logits(const ps_model *m, const float *resid, int64_t n, int64_t l, int64_t h, float sign, float *logits, ps_error *e);
// A table of kind "ov_scores", not per prompt: layer x head x token (the n members, value = token id, label =
// token_label[i] if given; then "score", value -1) x quantity: "copy_hit", "next_hit" (1/0; next NaN for the
// last member), "copy_rank", "next_rank" (0 = top), "top1".."top<k>" (token ids). The "score" row holds the
// copy and next hit rates in percent. layers/heads NULL: all. The residuals are the members run alone (after
// the BOS: "input": "isolated") or every occurrence of a member in the clean prompts ("input": "prompts", the
// IOI paper's code).
#define PS_OV_QUANTITIES 4
int ps_ov_table_init(ps_table *t, const char *name, const ps_model_config *mc, const int64_t *layers, int64_t n_layers,
                     const int64_t *heads, int64_t n_heads, const int32_t *tokens, char *const *token_label, int64_t n_tokens,
                     int64_t top_k, ps_error *e);
// Fills the table from n_rows first-layer residuals resid (n_rows, C): row r is an occurrence of member
// member_of[r] (an index into the token axis); member_of NULL: row i is member i (n_rows = the members). With
// several occurrences a member's hits are the fraction of its occurrences hit, its ranks the mean rank, its top
// tokens those of its mean OV logits; the "score" row's rates are over every occurrence (the IOI paper counts
// each name position of each prompt). A member that never occurs is NaN. A layer's heads run on the OpenMP threads
// (resident models): the same numbers as on one.
int ps_ov_fill(const ps_model *m, ps_table *t, const float *resid, int64_t n_rows, const int64_t *member_of, float sign, ps_error *e);

// ---- Neurons: a small Neuroscope (neurons.c) -----------------------------------------------------------
// Chosen MLP neurons (layer[i], index[i]) at blocks.l.mlp.hook_post (TransformerLens's hook_mlp_post; for Llama
// the gated act(gate) * up that W_out reads). A table of kind "neurons" per prompt: neuron (n; value
// layer * d_mlp + index, label "9.934") x pos (T_max): every position of the prompt (BOS included, not the
// teacher-forced answer tokens), NaN past it.
int ps_neurons_table_init(ps_table *t, const char *name, const ps_model_config *mc, int64_t n_rows, const int64_t *layer,
                          const int64_t *index, int64_t n, int64_t T_max, ps_error *e);
// One prompt's row (n, T_max) from its run c (c->mlp_post), positions below T_prompt.
void ps_neurons_prompt(const ps_model_config *mc, const ps_cache *c, const int64_t *layer, const int64_t *index, int64_t n,
                       int64_t T_prompt, int64_t T_max, float *out);
// Neuron i's k highest activations in acts (n_prompts, n, T_max; NaN cells skipped), in order: activation
// descending, ties to the lower prompt, then the lower position. Fewer cells than k: prompt/pos -1, act NaN.
// -1 only when out of memory.
int ps_neuron_top_rank(const float *acts, int64_t n_prompts, int64_t n, int64_t T_max, int64_t i, int64_t k, int64_t *prompt,
                       int64_t *pos, float *act);
// The table "NAME.top" of kind "neuron_top" (not per prompt): entry (n * k: neuron i's rank r at i * k + r) x
// field ("layer", "neuron", "rank", "activation", "prompt", "pos", "token": the token id). Each entry's label is
// its context: tokens pos - window .. pos + window of the prompt, the top token in [[ ]].
#define PS_NEURON_TOP_FIELDS 7
int ps_neuron_top_table_init(ps_table *t, const char *name, const ps_model_config *mc, const int64_t *layer, const int64_t *index,
                             int64_t n, int64_t k, ps_error *e);
// Fills it from acts (as above) and the prompts' tokens (tokens[q], T_prompt[q]); tok NULL: labels of token ids.
int ps_neuron_top_fill(ps_table *t, const ps_tokenizer *tok, const int32_t *const *tokens, const int64_t *T_prompt, int64_t n_prompts,
                       const float *acts, int64_t n, int64_t T_max, const int64_t *layer, const int64_t *index, int64_t window,
                       ps_error *e);

#endif
