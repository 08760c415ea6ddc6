// Internal to src/results/: the HDF5 helpers store.c, inspect.c, merge.c and readback.c share (written once here).
// Strings go in as variable-length UTF-8 with invalid bytes replaced by U+FFFD; reads return malloc'd copies.
#ifndef PS_H5UTIL_H
#define PS_H5UTIL_H

#include "ps_common.h"

#include <hdf5.h>
#include <hdf5_hl.h>

#if H5_VERSION_GE(1, 12, 0)
#define ps_h5_vlen_reclaim H5Treclaim
#else
#define ps_h5_vlen_reclaim H5Dvlen_reclaim
#endif

// Errors: HDF5's innermost message (buf must hold 256), and a PS_EXIT_RUNTIME failure "FILE: what (detail)".
const char *ps_h5_detail(char buf[256]);
int ps_h5_fail(ps_error *e, const char *file, const char *what, ...) __attribute__((format(printf, 3, 4)));
void ps_h5_quiet(void); // no HDF5 error stacks on stderr: our one line says it

// Strings.
hid_t ps_h5_vlstr_type(void);                 // caller closes
char *ps_h5_sanitize(const char *s);          // malloc'd copy, invalid UTF-8 bytes -> U+FFFD; NULL: out of memory
char **ps_h5_sanitize_all(const char *const *in, size_t n); // NULL array or entries count as ""
void ps_h5_free_strs(char **v, size_t n);

// Attributes (replacing an existing one); 0 or -1.
int ps_h5_attr_write(hid_t obj, const char *name, hid_t type, const void *val);
int ps_h5_attr_str(hid_t obj, const char *name, const char *val);
int ps_h5_attr_i64(hid_t obj, const char *name, int64_t v);
int ps_h5_attr_f64(hid_t obj, const char *name, double v);
int ps_h5_read_attr_str(hid_t obj, const char *name, char *buf, size_t n); // numbers as text; "" and -1 when missing
char *ps_h5_read_attr_alloc(hid_t obj, const char *name);                 // a whole string attribute; NULL when missing
int ps_h5_read_attr_f64(hid_t obj, const char *name, double *v);           // NaN and -1 when missing

// Datasets. ps_h5_write returns the open dataset (caller closes) or -1; large float arrays are chunked and
// compressed. ps_h5_scale_write: a 1-D int64 dimension scale (values NULL: 0..n-1). ps_h5_attach: attaches
// scale (unless < 0) to dim of d and labels the dim.
hid_t ps_h5_write(hid_t loc, const char *name, hid_t ftype, hid_t mtype, int rank, const hsize_t *dims, const void *data);
hid_t ps_h5_write_strs(hid_t loc, const char *name, int rank, const hsize_t *dims, const char *const *in);
int ps_h5_close_ok(hid_t d); // closes d when it is open: 0, or -1 when it never opened
hid_t ps_h5_scale_write(hid_t loc, const char *name, int64_t n, const int64_t *values);
int ps_h5_attach(hid_t d, hid_t scale, unsigned dim, const char *label);
int ps_h5_dim_label(hid_t d, unsigned dim, char *buf, size_t n); // dim's label; -1 when none (bounded, unlike H5DSget_label)
// Whole dataset converted to mtype (malloc'd; NULL when absent or unreadable), its rank, dims and element count.
void *ps_h5_read(hid_t loc, const char *name, hid_t mtype, int *rank, hsize_t dims[H5S_MAX_RANK], int64_t *count);
char **ps_h5_read_strs(hid_t loc, const char *name, int64_t *count); // free with ps_h5_free_strs
int ps_h5_overwrite_floats(hid_t loc, const char *name, const float *buf); // an existing dataset's whole contents

// The members of a group, in creation order when the file tracks it (ours do), else by name: malloc'd names
// (free with ps_h5_free_strs), *n their count; NULL when the group cannot be listed.
char **ps_h5_list(hid_t g, int64_t *n);
// /run's schema_version; 0 when absent (a file of the layout before result tables).
int64_t ps_h5_schema_version(hid_t file);

double ps_h5_nanmean(const float *x, int64_t n);

// A result table as stored (store.c writes it; readback.c, merge.c and inspect.c read it): group /results/<name>
// with dataset values (dims labelled "prompt" first when per prompt, then the axes' names), per axis an int64 scale
// of its name and optional string labels, attribute kind, the work counters and the free attributes (ps_attr).
int ps_h5_table_own_attr(const char *name);   // 1: kind or a counter, not a free attribute
void ps_h5_axis_strs_name(const char *axis, char *buf, size_t n); // its string labels: pos_token for pos, else <axis>_label
int64_t ps_h5_read_counter(hid_t g, const char *name);            // patches_run, patches_skipped; 0 when absent
int ps_h5_values_per_prompt(hid_t values);    // 1: dim 0 of the (open) values dataset is the prompt axis
int64_t *ps_h5_axis_scale(hid_t g, const char *axis, int64_t len); // the axis's scale (malloc'd); NULL unless 1-D of len

// In-memory files (h5file.c): libhdf5 cannot recover from a failed write, so results files are core-driver images
// written out by ps_h5_save with plain write()/fsync() (a full disk is one errno line, path removed).
hid_t ps_h5_mem_create(const char *name, hid_t fcpl);  // a new empty file in memory (fcpl may be H5P_DEFAULT)
hid_t ps_h5_mem_open(const char *path);                // path's bytes read into memory; changes stay there
int64_t ps_h5_image_size(hid_t f);                     // bytes the image takes; -1 on failure
int ps_h5_save(hid_t f, const char *path, int seal, ps_error *e); // PS_EXIT_RUNTIME "PATH: cannot write results file: ..."
// The two halves of ps_h5_save: the file's bytes (userblock with the seal, then the image; *out malloc'd), and
// bytes written to path with write()/fsync() (removed when that fails).
int ps_h5_file_bytes(hid_t f, const char *path, int seal, unsigned char **out, size_t *out_len, ps_error *e);
int ps_h5_write_bytes(const char *path, const unsigned char *bytes, size_t n, ps_error *e);
// A complete file's seal: its userblock (PS_H5_USERBLOCK bytes, set in the store's fcpl) holds the sha256 of every
// byte after it. ps_h5_check_seal: 1 no seal, 0 it matches, -1 it does not (PS_EXIT_BADINPUT, before libhdf5 reads).
#define PS_H5_USERBLOCK 512
int ps_h5_check_seal(const char *path, ps_error *e);
// Runs fn(arg, result, e) in a child process; result (result_len bytes) and e come back. A crash there (libhdf5 on a
// corrupt file) is PS_EXIT_BADINPUT "PATH: corrupt: libhdf5 crashed reading it (signal N)".
unsigned ps_h5_child_seconds(const char *path);                       // a reading child's time limit (SIGALRM)
int ps_h5_child_died(ps_error *e, const char *path, int sig, unsigned limit); // its one line: crashed, or too slow
int ps_h5_guarded(const char *path, int (*fn)(void *arg, void *result, ps_error *e), void *arg, void *result, size_t result_len,
                  ps_error *e);
// The same for a reply of any length: fn sets *out (malloc'd) and *out_len; the caller gets them (free *out) when
// it succeeds. A reply over max_len bytes is PS_EXIT_BADINPUT. The child is stopped after seconds (SIGALRM).
int ps_h5_guarded_buf(const char *path, unsigned seconds, int (*fn)(void *arg, unsigned char **out, size_t *out_len, ps_error *e),
                      void *arg, unsigned char **out, size_t *out_len, size_t max_len, ps_error *e);
// The most bytes a dataset in loc's file can plausibly expand to (its size times gzip's ratio, capped): readers
// refuse to allocate more for a size read from the file.
int64_t ps_h5_max_bytes(hid_t loc);
int64_t ps_h5_expand_bound(int64_t file_bytes); // the same for files of file_bytes (a reading child's reply is bounded so)
// Checksums: ps_h5_seal writes attribute sha256 on every dataset and /run checksums = "sha256"; ps_h5_verify
// checks them all (PS_EXIT_BADINPUT naming the file and the dataset on a mismatch, a missing or unreadable one).
int ps_h5_seal(hid_t f, const char *file, ps_error *e);
int ps_h5_verify(hid_t f, const char *file, int sealed, int64_t *n_checked, ps_error *e); // sealed: check_seal gave 0
// The seal, then every dataset's sha256, of the file at path (merge.c): to be called only in a child (libhdf5).
int ps_h5_verify_path(const char *path, ps_error *e);
// A complete results file of this schema opened read-only (caller closes), in a reading child: the seal checked first
// (verify: then every dataset's sha256 too); /run's string attribute `attr` into val (n bytes; "" when absent), which
// must then be id_len characters long unless id_len is 0. -1 otherwise (PS_EXIT_BADINPUT naming the file).
hid_t ps_h5_open_complete(const char *path, int verify, const char *attr, char *val, size_t n, size_t id_len, ps_error *e);

#endif
