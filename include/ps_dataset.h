// Loading prompt datasets from files (JSONL, CSV, JSON), with optional corrupted prompts from a second file.
// Called by config.c for a "dataset": {"path": ...} object; usable on its own (tools, tests).
//
// Formats (all UTF-8; a leading byte-order mark is skipped):
//   jsonl  one JSON object per line; blank lines are skipped; other keys in the objects are ignored.
//   csv    RFC 4180: a header row of column names, then one record per row; fields may be quoted with ",
//          "" inside quotes is a quote, quoted fields may hold commas and newlines; LF or CRLF line ends;
//          empty lines are skipped; spaces are kept (" 5" is a different answer from "5").
//   json   an array of objects.
// A record is one object (jsonl/json) or one data row (csv), counted from 0 in file order.
// Records [offset, offset + limit) become items (limit 0 = through the end); zero items is an error.
// With a corrupted file, item from record r takes its corrupted prompt from record r + corrupted_offset
// of that file (record numbers in the dataset file, so offset/limit do not shift the pairing).
// Corrupted prompts may be optional (spec.no_corrupted: the ablation kinds do not run them).
// Errors: "FILE:line N: field 'corr' missing", "FILE:line N: unterminated quoted field", "FILE: [3].corr: ..."
#ifndef PS_DATASET_H
#define PS_DATASET_H

#include "ps_config.h"
#include "ps_json.h"

typedef enum { PS_DATA_AUTO = 0, PS_DATA_JSONL, PS_DATA_CSV, PS_DATA_JSON } ps_data_format;

typedef struct {
    const char *path;              // dataset file, used as given (resolve it first)
    ps_data_format format;         // PS_DATA_AUTO: from the extension (.jsonl, .csv, .json)
    const char *clean, *corrupted, *answer, *wrong;   // field or column names; NULL: "clean", "corrupted", ...
    const char *corrupted_path;    // NULL: corrupted prompts are the `corrupted` field of path
    ps_data_format corrupted_format;
    const char *corrupted_field;   // NULL: the same name as the clean field (such files share a layout)
    int64_t corrupted_offset;      // >= 0
    int64_t offset, limit;         // >= 0
    const char *group;             // NULL, or the field naming each record's template group (every record needs it)
    const char *origin;            // prefix for errors about the spec itself, e.g. "configs/x.json: dataset"; may be NULL
    // Non-NULL: corrupted prompts are optional (only without corrupted_path). When the first record read has no
    // corrupted field, the dataset has none: *no_corrupted = 1, no record's corrupted field is read, and each item's
    // corrupted is a copy of its clean (so every item stays whole); else *no_corrupted = 0 and every record needs it.
    int *no_corrupted;
} ps_dataset_spec;

// Fills *items (malloc'd; free with ps_items_free) and *n_items >= 1. On error: -1, e filled, nothing owned.
int ps_dataset_load(const ps_dataset_spec *spec, ps_item **items, int64_t *n_items, ps_error *e);

const char *ps_data_format_name(ps_data_format f);   // "auto", "jsonl", "csv", "json"

#endif
