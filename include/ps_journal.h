// The resume journal (OUT.h5.journal): finished chunks of prompts appended as checksummed records and
// fsync'd, so a run killed at any moment (SIGKILL included) loses at most the chunks in flight.
// A torn last record is detected by its length and checksum and dropped. The HDF5 file itself is
// written only once every prompt is done; then the journal is removed.
#ifndef PS_JOURNAL_H
#define PS_JOURNAL_H

#include "ps_results.h"

typedef struct ps_journal ps_journal; // opaque: file descriptor, shape, counters already committed

// Opens path, creating it (with a header naming identity and the shape of every table: name, kind,
// per_prompt, n_cells) when absent. When it exists: a different identity or shape is an error (exit 2) unless
// force, which starts afresh; the same identity restores every complete record into base and the per-prompt
// tables (values, counters) and sets done[p] = 1 for its prompts. base and tables must be freshly initialised
// (NaN values, zero counters) with the run's shapes; base->n is the number of prompts.
int ps_journal_open(ps_journal **j, const char *path, const char identity[65], int force, ps_baseline *base,
                    ps_table *tables, int64_t n_tables, uint8_t *done, int64_t *n_done, ps_error *e);
// The same with the run-wide identity apart (base_identity: what a finished output's reused tables share with this
// run): a journal of the same base_identity but another identity (another list of experiments to compute) starts
// afresh, saying so on stderr, instead of failing; another base_identity fails as above. The header records each
// table's attribute "identity".
int ps_journal_open_base(ps_journal **j, const char *path, const char identity[65], const char base_identity[65], int force,
                         ps_baseline *base, ps_table *tables, int64_t n_tables, uint8_t *done, int64_t *n_done, ps_error *e);
// Appends the results of these prompts (their baseline and the row of every per-prompt table) and the
// counters the tables accumulated since the last append (the tables passed here start from zero: a run's
// own, not the restored ones). The record is built now and written and fsync'd by the journal's writer
// thread while the caller goes on (it waits only for the previous record); a failed write is reported by
// the next append or by ps_journal_sync. tables: the n_tables of ps_journal_open's shapes.
int ps_journal_append(ps_journal *j, const int64_t *prompts, int64_t n, const ps_baseline *base, const ps_table *tables,
                      ps_error *e);
// Waits until every appended record is on disk; 0, or the first write error.
int ps_journal_sync(ps_journal *j, ps_error *e);
// Finishes writing what was appended, then closes.
void ps_journal_close(ps_journal *j);

#endif
