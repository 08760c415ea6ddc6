// A run's identity: the named parts a result depends on (every input file's sha256, the normalized config, the
// version and the settings that change numbers), hashed into one hex digest, plus the hash cache that keeps a
// 13.5 GB checkpoint from being hashed on every run. Nothing here reads the environment.
#ifndef PS_IDENTITY_H
#define PS_IDENTITY_H

#include "ps_common.h"

// ---- the hash cache: sha256 of files keyed by (absolute path, size, mtime with ns, inode, device) ----
//
// File format (text, one entry a line, rewritten whole through a temporary file and rename):
//   patchsweep-hashes 1
//   F <sha256> <size> <mtime_s> <mtime_ns> <inode> <device> <absolute path>
//   R <identity> <kind> <sha256> <bytes or -1> <name>
// F lines are the cache; R lines name the parts of the identity recorded in the journal or results file
// beside it, so that a refusal can say what changed. Lines it cannot read are dropped: it is only a cache.
typedef struct ps_hash_cache ps_hash_cache;

// Reads path (absent: an empty cache). Fails only for out of memory.
int ps_hash_cache_load(ps_hash_cache **c, const char *path, ps_error *e);
void ps_hash_cache_free(ps_hash_cache *c);
const char *ps_hash_cache_path(const ps_hash_cache *c);
// The sha256 of path's bytes: from the cache when path's size, mtime, inode and device still match, else read
// (and then stored). *bytes is the file's size, *cached 1 when no byte was read. Files of at least big_bytes
// that are hashed print one line to stderr saying so (big_bytes < 0: never).
int ps_hash_cache_file(ps_hash_cache *c, const char *path, int64_t big_bytes, char hex[65], int64_t *bytes,
                       int *cached, ps_error *e);
// Writes the cache (atomically) when anything in it changed; the parts recorded are kept unless replaced by
// ps_hash_cache_record. A cache that cannot be written is not an error (e gets nothing): the next run rehashes.
void ps_hash_cache_save(ps_hash_cache *c);

// ---- the identity ----
typedef struct {
    char *kind;       // what it is, for messages: "dataset file", "tokenizer file", "weights shard", "config", ...
    char *name;       // the file's absolute path, or the part's name ("patchsweep version")
    char sha256[65];  // of the file's bytes, or of the part's text
    int64_t bytes;    // the file's size; -1 for a part that is not a file
} ps_id_part;

typedef struct {
    ps_id_part *p;
    int64_t n, cap;
} ps_identity;

void ps_identity_free(ps_identity *id);
// Adds a file (path made absolute), hashed through the cache c (NULL: always read).
int ps_identity_add_file(ps_identity *id, ps_hash_cache *c, const char *kind, const char *path, int64_t big_bytes,
                         ps_error *e);
// Adds a part that is not a file: its sha256 is that of text.
int ps_identity_add_text(ps_identity *id, const char *kind, const char *name, const char *text, ps_error *e);
// The hex sha256 over every part (kind, name, sha256, in order): the identity.
void ps_identity_digest(const ps_identity *id, char hex[65]);
// sha256 over the parts of one kind (one part: its own sha256, so a single weights file keeps its plain hash);
// "" when there is none.
void ps_identity_digest_kind(const ps_identity *id, const char *kind, char hex[65]);
// The inputs as a JSON list, [{"kind", "path", "sha256", "bytes"}, ...] for files only, id's then more's (NULL:
// none) (malloc'd; NULL: out of memory).
char *ps_identity_inputs_json(const ps_identity *id, const ps_identity *more);
// The first top-level key whose value differs between two canonical JSON objects (keys sorted, no whitespace, as
// ps_json_canonical writes them), present in one only included, into field; 0 when one was found, -1 when none
// (equal, or not both objects).
int ps_canonical_first_diff(const char *a, const char *b, char *field, size_t cap);

// Records id (as identity hex) in the cache as what the journal or results file beside it holds.
int ps_hash_cache_record(ps_hash_cache *c, const ps_identity *id, const char hex[65], ps_error *e);
// What differs between the recorded identity and id, as a phrase for "... changed since X was written"
// ("dataset file d.jsonl changed", "weights shard m-00001.safetensors changed", "config changed: ..."), in
// msg; 0 when the cache records the identity old_hex (NULL: whatever it records) and a difference was
// found, else -1 (nothing recorded: the caller says what it can).
int ps_hash_cache_explain(const ps_hash_cache *c, const char *old_hex, const ps_identity *id, char *msg, size_t cap);

// ---- canonical JSON text, for the normalized config ----
typedef struct {
    char *s;
    size_t n, cap;
    int oom;   // set once an append failed; s then holds what fit
} ps_jbuf;
void ps_jbuf_raw(ps_jbuf *b, const char *text);            // appends text as is
void ps_jbuf_str(ps_jbuf *b, const char *s);               // appends s as a JSON string (NULL: null)
void ps_jbuf_key(ps_jbuf *b, const char *key, int first);  // appends [,]"key":
void ps_jbuf_int(ps_jbuf *b, int64_t v);
void ps_jbuf_ints(ps_jbuf *b, const int64_t *v, int64_t n); // a JSON list (NULL: null)

#endif
