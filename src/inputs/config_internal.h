// The config loader's checking helpers, shared by config.c and the files that load one experiment kind's keys
// (config_ablation.c, config_circuit.c). Every error names the config file and the JSON path, exit status 2
// (PS_EXIT_BADINPUT).
#ifndef PS_CONFIG_INTERNAL_H
#define PS_CONFIG_INTERNAL_H

#include "ps_config.h"

#include <cjson/cJSON.h>

typedef struct {
    const char *file;   // the config path, as given
    char *dir;          // its directory, for relative paths (owned)
    ps_error *e;
} ps_cfg_ctx;

// JSON paths are cut at this length.
#define PATH_MAX_LEN 512
#define COUNT(a) ((int)(sizeof(a) / sizeof((a)[0])))

// -1 with "FILE: PATH: message" (PS_EXIT_BADINPUT); ps_cfg_nomem: "FILE: out of memory" (PS_EXIT_RUNTIME).
int ps_cfg_bad(ps_cfg_ctx *x, const char *path, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int ps_cfg_nomem(ps_cfg_ctx *x);
void ps_cfg_key_path(char *out, const char *parent, const char *key);   // out: PATH_MAX_LEN bytes, "parent.key"
void ps_cfg_index_path(char *out, const char *parent, int64_t i);       // "parent[i]"
// Every key of obj one of keys, at most once (the nearest valid key suggested).
int ps_cfg_check_keys(ps_cfg_ctx *x, const cJSON *obj, const char *path, const char *const *keys, int nkeys);
const cJSON *ps_cfg_member(const cJSON *obj, const char *key);
// Absent keys leave *out alone (an error when required).
int ps_cfg_get_str(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int required, char **out);
int ps_cfg_get_path(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int required, char **out);
int ps_cfg_pick(ps_cfg_ctx *x, const cJSON *v, const char *p, const char *const *names, const int *order, int n, int *out);
int ps_cfg_get_enum(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, const char *const *names, int n, int *out);
int ps_cfg_as_int(const cJSON *v, int64_t *out);
int ps_cfg_get_int(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int64_t lo, int64_t hi, int64_t *out);
int ps_cfg_get_bool(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int *out);
// An index list (positions: integers, "end" or role names, roles set where an entry is a role).
int ps_cfg_get_list(ps_cfg_ctx *x, const cJSON *obj, const char *key, const char *path, int positions, int64_t **out, int64_t *n,
                    char ***roles);
void ps_cfg_free_roles(char ***roles, int count);
// A dataset block {"path", "format", "fields", "offset", "limit"} (and, unless reference, "corrupted") at `where`:
// items and the resolved file paths (owned by the caller). A reference block needs only the clean text (and
// the template field when it names one). no_corrupted (not for a reference block; may be NULL): where the block
// names no corrupted field and no corrupted file, records without the default "corrupted" field mean a dataset
// without corrupted prompts (*no_corrupted = 1; ps_dataset_spec).
int ps_cfg_load_dataset(ps_cfg_ctx *x, const cJSON *obj, const char *where, int reference, ps_item **items, int64_t *n_items,
                        char **path, char **corrupted_path, int *no_corrupted);
// With a dataset without corrupted prompts: an error naming the first experiment that runs them.
int ps_cfg_check_corrupted(ps_cfg_ctx *x, const ps_config *c);

// Kinds "ablation" and "circuit_search" (config_ablation.c): the keys after name and kind.
int ps_cfg_load_ablation(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex);
void ps_cfg_ablation_free(ps_experiment *ex);
// Appends one "reference_means" experiment per mean-ablating experiment (after all of them, so the indices in
// messages stay the config's).
// A table the loader adds beside experiments[parent] (room for it already allocated in c->experiments): named
// parent's name + suffix, of kind `kind`, zeroed otherwise; NULL with x's error set when out of memory or when
// one of the first n0 experiments already has that name (the message calls the table one "of <what>").
ps_experiment *ps_cfg_add_derived(ps_cfg_ctx *x, ps_config *c, int64_t n0, int64_t parent, const char *suffix, const char *kind,
                                  const char *what);
int ps_cfg_add_means_tables(ps_cfg_ctx *x, ps_config *c);

// The analyses' kinds and edge_attribution (config_analysis.c): the keys after name and kind.
int ps_cfg_load_analysis(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex);
// Appends one "neuron_top" experiment "NAME.top" per neurons experiment (after every other, like the means tables).
int ps_cfg_add_neuron_tops(ps_cfg_ctx *x, ps_config *c);

// Kind "edge_circuit" (config_circuit.c): its keys after name and kind; once every experiment is loaded, each
// scores_from must name an edge_attribution experiment of the config.
int ps_cfg_load_edge_circuit(ps_cfg_ctx *x, const cJSON *obj, const char *p, ps_experiment *ex);
int ps_cfg_check_circuits(ps_cfg_ctx *x, const ps_config *c);

#endif
