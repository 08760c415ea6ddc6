// Means over prompts of a sweep's cells, shared by a run (ps_engine_finish) and a shard merge, so a
// merged file is computed by the same arithmetic as a single run's.
#ifndef PS_METRICS_H
#define PS_METRICS_H

#include <stdint.h>

// values: (n_prompts, n_cells), NaN where a prompt lacks the cell; clean, corrupted: (n_prompts) baselines.
// mean[cell] = mean over prompts that have the cell; mean_normalized[cell] = (mean x - mean corrupted) /
// (mean clean - mean corrupted) over the same prompts (ARENA's normalized metric on batch means), NaN when none.
void ps_cell_means(const float *values, const float *clean, const float *corrupted, int64_t n_prompts, int64_t n_cells,
                   float *mean, float *mean_normalized);

#endif
