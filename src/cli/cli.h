// What the command line's files share: the commands, their one-line failure, the results writer.
#ifndef PS_CLI_H
#define PS_CLI_H

#include "ps_backend.h"
#include "ps_config.h"
#include "ps_engine.h"
#include "ps_identity.h"
#include "ps_model.h"
#include "ps_tokenizer.h"

// Prints e's one line and returns its exit status.
int ps_cli_die(const ps_error *e);
// Prints a usage error and returns PS_EXIT_BADINPUT.
int ps_cli_bad_usage(const char *msg);

// Which part of the run a results file holds (shards), and the identities resume and merge check.
typedef struct {
    int index, count;
    const char *identity, *run_identity;
    const char *base_identity; // the run-wide identity with the shard (/run base_identity): what reuse requires
    const uint8_t *in_run;   // (n_prompts)
    // Every input file with its sha256, a JSON list [{"kind", "path", "sha256", "bytes"}] (ps_identity_inputs_json):
    // ready for a /run attribute "inputs" once the store has one; NULL when not built.
    const char *inputs_json;
} ps_shard_info;

// The run's identity (src/cli/identity.c). The run-wide parts (id: every input file but the experiments' own,
// hashed through the cache c, the config's parsed values without the experiments, the version, backend, precision
// and threads, the shard) must match for anything finished to be reused; on top, each experiment has its own
// identity (exp[i]: the run-wide one without the shard, its canonical JSON, its own files and the own identity of
// the experiment it reads), so a changed experiment list recomputes only what changed.
typedef struct {
    ps_identity id;       // the run-wide parts, the shard last (recorded in the hash cache: refusals say what changed)
    char base[65];        // digest of id: what reuse of finished tables and a journal require
    char ident[65];       // base + every experiment's identity: what a finished output's "nothing to do" compares
    char run_id[65];      // the same without the shard: what merge requires every shard to share
    int64_t n_exp;
    char (*exp)[65];      // (n_exp) each experiment's identity, recorded on its table (attribute "identity")
    char *inputs_json;    // every input file, for /run inputs
} ps_cli_ident;
int ps_cli_identity(ps_cli_ident *ci, ps_hash_cache *c, const ps_config *cfg, const ps_tokenizer *tok, const ps_backend *be,
                    int shard_i, int shard_n, ps_error *e);
void ps_cli_ident_free(ps_cli_ident *ci);
// The index of the experiment experiments[i] reads while it runs (reference means: its parent; an edge circuit:
// its scores_from), or -1.
int64_t ps_cli_experiment_dependency(const ps_config *cfg, int64_t i);

// Per-experiment reuse (src/cli/reuse.c): which experiments a rerun takes from a finished output's tables.
#include "ps_store.h"
typedef struct {
    int64_t *stored_of;     // (n_experiments) the index in stored.tables of experiments[i]'s reused table, -1: computed
    ps_experiment *sub;     // (n_sub) the experiments computed, in config order: shallow copies (cfg owns their
                            // members), their indices between experiments (means_of) pointing into sub
    int64_t *sub_of;        // (n_sub) their index in cfg->experiments
    int64_t n_sub;
    ps_prompt_set ps_sub;   // ps with its reference sets in sub's order (the ref array owned, its entries borrowed)
    ps_stored_run stored;   // the finished output's tables (empty when there is none); reused ones move out
    char jident[65];        // the journal's identity: the run-wide one and the computed experiments'
} ps_reuse_plan;
// stored: the finished output read back (ps_store_read_run), whose base identity matches (moved into p), or NULL:
// every experiment is computed. With stored, one line per experiment on stderr: reused, computed (why) or dropped.
int ps_cli_reuse_plan(ps_reuse_plan *p, const ps_config *cfg, const ps_prompt_set *ps, const ps_cli_ident *ci,
                      ps_stored_run *stored, const char *out, ps_error *e);
void ps_cli_reuse_free(ps_reuse_plan *p);
// An experiment's config object as its table records it (attribute "config"): canonical JSON, "null" for one the
// loader added.
const char *ps_cli_experiment_spec(const ps_experiment *x);
// Attributes identity and config on the computed experiments' tables (tables[k] is sub[k]'s).
int ps_cli_tag_tables(ps_table *tables, int64_t n_tables, const ps_reuse_plan *p, const ps_config *cfg, const ps_cli_ident *ci,
                      ps_error *e);
// The run's results in config order: each reused table moved from p->stored, each computed one from computed (whose
// tables and baselines are left empty). all owns what it holds (ps_run_results_free).
int ps_cli_reuse_assemble(ps_reuse_plan *p, const ps_config *cfg, ps_run_results *computed, ps_run_results *all, ps_error *e);

// `patchsweep run` (argv after "run").
int ps_cli_run(int argc, char **argv);
// Writes OUT (as OUT.partial, renamed when complete) from a run's results.
int ps_cli_write_results(const char *out_path, const ps_config *cfg, const ps_model *m, const ps_tokenizer *tok,
                         const char *tok_sha, const ps_backend *be, int threads, const ps_prompt_set *ps,
                         const ps_run_results *rr, const ps_shard_info *sh, ps_error *e);

#endif
