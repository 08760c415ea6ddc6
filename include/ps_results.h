// What the results side holds for a run: the unpatched baseline metrics per prompt and the producers' tables
// (ps_table.h). The store, the journal, merge and inspect depend only on these, never on the engine.
#ifndef PS_RESULTS_H
#define PS_RESULTS_H

#include "ps_table.h"

// Baseline metrics, per prompt: the metric and the scored tokens' logits of the clean and corrupted runs.
#define PS_BASELINE_COLS 6
typedef struct {
    int64_t n;
    float *clean, *corrupted;                       // (n); clean owns one block of all six columns
    float *clean_answer_logit, *clean_wrong_logit;  // (n)
    float *corrupted_answer_logit, *corrupted_wrong_logit; // (n)
} ps_baseline;

// Allocates the six columns (NaN) for n prompts; -1 (out of memory) with b zeroed.
int ps_baseline_init(ps_baseline *b, int64_t n, ps_error *e);
void ps_baseline_free(ps_baseline *b);
// The columns in file order, and their dataset names under /baseline ("clean_metric", ...): the journal,
// the store and merge walk these instead of naming each column.
void ps_baseline_columns(const ps_baseline *b, float *col[PS_BASELINE_COLS]);
extern const char *const ps_baseline_names[PS_BASELINE_COLS];

// The layout version the store writes as /run attribute schema_version (experiments/README.md). Files
// without it were written before result tables existed.
#define PS_SCHEMA_VERSION 2

#endif
