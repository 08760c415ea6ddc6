// One result table: what every producer (patching sweeps, ablations, circuit searches, path patching,
// attributions, analyses) hands to the results side. The store, the journal, resume, shards, merge, inspect
// and plot.py read only this: axes, values, derived datasets, attributes. No per-producer code below here.
#ifndef PS_TABLE_H
#define PS_TABLE_H

#include "ps_common.h"

#define PS_TABLE_MAX_AXES 6
#define PS_TABLE_MAX_ATTRS 16

// One labelled axis after the prompt axis: "layer", "pos", "head", "neuron", "component", "edge", "token",
// "step", ... Every axis has integer labels (HDF5 dimension scale /results/<name>/<axis>); string labels
// (role names, component names, token strings) are optional.
typedef struct {
    char *name;          // owned
    int64_t len;
    int64_t *value;      // (len) owned: layer index, position, head, ...
    char **label;        // NULL or (len) owned strings; an entry may be NULL (no label)
} ps_axis;

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
    // Derived datasets (ps_table_finish), present when the values are the run's metric.
    int metric_valued;   // 1: normalized and the means are derived from the baseline metrics
    float *normalized;   // NULL or (n_rows, n_cells): (x - corrupted)/(clean - corrupted) per prompt
    float *mean;         // NULL or (n_cells): mean over prompts with values (NaN ignored)
    float *mean_normalized; // NULL or (n_cells): (mean x - mean corrupted)/(mean clean - mean corrupted)
    int n_attrs;
    ps_attr attrs[PS_TABLE_MAX_ATTRS]; // free attributes, written on the table's group (site, direction, ...)
    // Work counters: summed over chunks, resumes and shards (the journal and merge add them up).
    int64_t patches_run, patches_skipped; // interventions run, and known without running
    double flops;        // 2 x multiply-adds of the rows run
} ps_table;

// Allocates values (NaN) for n_rows x the axes' cells and, with metric_valued, the derived arrays.
// axes: n_axes entries whose name/value/label are copied (label may be NULL). Returns -1 (out of memory,
// PS_EXIT_RUNTIME) with t zeroed.
int ps_table_init(ps_table *t, const char *name, const char *kind, int per_prompt, int64_t n_rows, int n_axes,
                  const ps_axis *axes, int metric_valued, ps_error *e);
void ps_table_free(ps_table *t);
// Attributes (copied); -1 when PS_TABLE_MAX_ATTRS are used or out of memory.
int ps_table_attr_str(ps_table *t, const char *key, const char *val, ps_error *e);
int ps_table_attr_i64(ps_table *t, const char *key, int64_t val, ps_error *e);
int ps_table_attr_f64(ps_table *t, const char *key, double val, ps_error *e);
const ps_attr *ps_table_attr(const ps_table *t, const char *key); // NULL when absent
// Index of axis `name`, or -1.
int ps_table_axis(const ps_table *t, const char *name);
// Derived datasets of a metric-valued table from the baseline metrics (clean, corrupted: (n_rows)).
void ps_table_finish(ps_table *t, const float *clean, const float *corrupted);

#endif
