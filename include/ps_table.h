// One result table: what every producer (patching sweeps, ablations, circuit searches, path patching,
// attributions, analyses) hands to the results side. The store, the journal, resume, shards, merge, inspect
// and plot.py read only this: axes, values, derived datasets, attributes. No per-producer code below here.
#ifndef PS_TABLE_H
#define PS_TABLE_H

#include "ps_common.h"

#define PS_TABLE_MAX_AXES 6
#define PS_TABLE_MAX_ATTRS 24

// One labelled axis after the prompt axis: "layer", "pos", "head", "neuron", "component", "edge", "token",
// "step", ... Every axis has integer labels (HDF5 dimension scale /results/<name>/<axis>); string labels
// (role names, component names, token strings) are optional (/results/<name>/<axis>_label; for "pos",
// pos_token, where an entry without a label gets prompt 0's token at that position).
typedef struct {
    char *name;          // owned
    int64_t len;
    int64_t *value;      // (len) owned: layer index, position, head, ...
    char **label;        // NULL or (len) owned strings; an entry may be NULL (no label)
} ps_axis;
// Frees what a owns (name, value, label and its strings) and zeroes it: also on a zeroed axis, and twice. An
// axis a caller builds for ps_table_init (which copies it) stays the caller's; ps_table_free frees the table's own.
void ps_axis_free(ps_axis *a);

typedef enum { PS_ATTR_STR = 0, PS_ATTR_I64, PS_ATTR_F64 } ps_attr_type;
typedef struct {
    char *key;           // owned
    ps_attr_type type;
    char *s;             // owned (PS_ATTR_STR)
    int64_t i;
    double f;
} ps_attr;

typedef struct {
    char *name;          // owned; /results/<name>
    char *kind;          // owned; the producer: "patch_sweep", "ablation", ... (the config's experiment "kind")
    int per_prompt;      // 1: values have a leading prompt axis (journal, resume and shards apply); 0: one row
    int64_t n_rows;      // n_prompts when per_prompt, else 1
    int n_axes;
    ps_axis axes[PS_TABLE_MAX_AXES];
    int64_t n_cells;     // product of the axes' lengths
    float *values;       // (n_rows, n_cells) owned; NaN where nothing was computed
    // Derived datasets (ps_table_finish). mean exists for every per-prompt table; normalized and
    // mean_normalized only when the values are the run's metric (they need the baseline).
    int metric_valued;   // 1: normalized and mean_normalized are derived from the baseline metrics
    float *normalized;   // NULL or (n_rows, n_cells): (x - corrupted)/(clean - corrupted) per prompt
    float *mean;         // NULL or (n_cells): mean over prompts with values (NaN ignored); NULL: the store computes it
    float *mean_normalized; // NULL or (n_cells): (mean x - mean corrupted)/(mean clean - mean corrupted)
    int n_attrs;
    ps_attr attrs[PS_TABLE_MAX_ATTRS]; // free attributes, written on the table's group (site, direction, ...)
    // Work counters: summed over chunks, resumes and shards (the journal and merge add them up).
    int64_t patches_run, patches_skipped; // interventions run, and known without running
    double flops;        // 2 x multiply-adds of the rows run (not stored in the file)
} ps_table;

// Allocates values (NaN) for n_rows x the axes' cells, mean when per_prompt, and with metric_valued the
// normalized arrays. axes: n_axes entries whose name/value/label are copied (label may be NULL).
// Returns -1 (out of memory, PS_EXIT_RUNTIME; too many axes, PS_EXIT_RUNTIME) with t owning nothing.
int ps_table_init(ps_table *t, const char *name, const char *kind, int per_prompt, int64_t n_rows, int n_axes,
                  const ps_axis *axes, int metric_valued, ps_error *e);
void ps_table_free(ps_table *t); // also on a zeroed table, and twice
// Attributes (copied; a key given again replaces its value); -1 when PS_TABLE_MAX_ATTRS are used or out of memory.
int ps_table_attr_str(ps_table *t, const char *key, const char *val, ps_error *e);
int ps_table_attr_i64(ps_table *t, const char *key, int64_t val, ps_error *e);
int ps_table_attr_f64(ps_table *t, const char *key, double val, ps_error *e);
const ps_attr *ps_table_attr(const ps_table *t, const char *key); // NULL when absent
// Index of axis `name`, or -1.
int ps_table_axis(const ps_table *t, const char *name);
// Derived datasets from the values: mean, and for a metric-valued table normalized and mean_normalized from
// the baseline metrics (clean, corrupted: (n_rows)). Nothing for a table that is not per prompt.
void ps_table_finish(ps_table *t, const float *clean, const float *corrupted);
// Adds src's counters to dst's (a resume adds what the journal held).
void ps_table_add_counters(ps_table *dst, const ps_table *src);

// The arithmetic of the derived datasets, shared by a run (ps_table_finish), the store and a shard merge so a
// merged file is computed exactly as a single run's. values: (n_rows, n_cells), NaN where a row lacks the cell.
// mean[cell] = mean over the rows that have the cell; with clean/corrupted ((n_rows) baselines) and
// mean_normalized non-NULL, mean_normalized[cell] = (mean x - mean corrupted) / (mean clean - mean corrupted)
// over the same rows (ARENA's normalized metric on batch means). NaN where no row has the cell.
void ps_cell_means(const float *values, const float *clean, const float *corrupted, int64_t n_rows, int64_t n_cells,
                   float *mean, float *mean_normalized);

// The shard path's check: a table that is not per prompt (a circuit search, scores read from weights) cannot be
// split by prompt. -1 with PS_EXIT_BADINPUT naming the table and its kind.
int ps_tables_check_shardable(const ps_table *tables, int64_t n_tables, ps_error *e);

#endif
