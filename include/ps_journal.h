// The resume journal (OUT.h5.journal): finished chunks of prompts appended as checksummed records and
// fsync'd, so a run killed at any moment (SIGKILL included) loses at most the chunks in flight.
// A torn last record is detected by its length and checksum and dropped. The HDF5 file itself is
// written only once every prompt is done; then the journal is removed.
#ifndef PS_JOURNAL_H
#define PS_JOURNAL_H

#include "ps_engine.h"

typedef struct ps_journal ps_journal; // opaque: file descriptor, shape, counters already committed

// Opens path, creating it (with a header naming identity and the results' shape) when absent.
// When it exists: a different identity or shape is an error (exit 2) unless force, which starts afresh;
// the same identity restores every complete record into rr (baseline, values, counters) and sets
// done[p] = 1 for its prompts. rr must come from ps_run_results_init for the same experiments.
int ps_journal_open(ps_journal **j, const char *path, const char identity[65], int force, ps_run_results *rr,
                    uint8_t *done, int64_t *n_done, ps_error *e);
// Appends the results of these prompts (their baseline and every sweep's values) and the counters
// accumulated since the last append. The record is built now and written and fsync'd by the journal's
// writer thread while the caller goes on (it waits only for the previous record); a failed write is
// reported by the next append or by ps_journal_sync. Matches ps_chunk_fn's shape through an adapter.
int ps_journal_append(ps_journal *j, const int64_t *prompts, int64_t n, const ps_run_results *rr, ps_error *e);
// Waits until every appended record is on disk; 0, or the first write error.
int ps_journal_sync(ps_journal *j, ps_error *e);
// Finishes writing what was appended, then closes.
void ps_journal_close(ps_journal *j);

#endif
