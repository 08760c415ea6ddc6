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
    const uint8_t *in_run;   // (n_prompts)
    // Every input file with its sha256, a JSON list [{"kind", "path", "sha256", "bytes"}] (ps_identity_inputs_json):
    // ready for a /run attribute "inputs" once the store has one; NULL when not built.
    const char *inputs_json;
} ps_shard_info;

// The run's identity (src/cli/identity.c): every input file hashed through the cache c, the config's parsed
// values, the version, backend, precision and threads; run_id without the shard (what merge compares), ident
// with it (what resume and a finished output compare). id is filled (ps_identity_free) and lists the parts.
int ps_cli_identity(ps_identity *id, ps_hash_cache *c, const ps_config *cfg, const ps_tokenizer *tok, const ps_backend *be,
                    int shard_i, int shard_n, char ident[65], char run_id[65], ps_error *e);

// `patchsweep run` (argv after "run").
int ps_cli_run(int argc, char **argv);
// Writes OUT (as OUT.partial, renamed when complete) from a run's results.
int ps_cli_write_results(const char *out_path, const ps_config *cfg, const ps_model *m, const ps_tokenizer *tok,
                         const char *tok_sha, const ps_backend *be, int threads, const ps_prompt_set *ps,
                         const ps_run_results *rr, const ps_shard_info *sh, ps_error *e);

#endif
