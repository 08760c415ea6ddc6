// Shared by the safetensors and checkpoint tests: files written byte by byte, tiny GPT-2/Llama checkpoints
// built in memory, float bit helpers and the expected-failure check. Everything lives under stf_tmp_root.
#ifndef ST_FIXTURE_H
#define ST_FIXTURE_H

#include "ps_model.h"
#include "ps_safetensors.h"
#include "testutil.h"

#include <ftw.h>
#include <stdint.h>
#include <sys/stat.h>

extern char stf_tmp_root[256];

// The shapes of the tiny checkpoints built here (GPT-2 and Llama).
enum { G_L = 2, G_H = 2, G_C = 4, G_P = 5, G_V = 7, G_M = 16 };
enum { LL_L = 2, LL_C = 8, LL_H = 2, LL_KV = 1, LL_D = 4, LL_M = 12, LL_V = 10, LL_P = 16 };

typedef struct {
    char name[128];
    const char *dtype;   // "F32", "F16", "BF16", "F64", "I64", ...
    int ndim;
    int64_t shape[4];
    void *data;          // owned
    size_t nbytes;
} tdesc;

typedef struct {
    tdesc t[64];
    float *src[64];  // the values written, as floats (exact in every dtype used)
    int n;
    float counter;
    const char *dtype;
} ckpt;

void stf_write_bytes(const char *path, const void *p, size_t n);
void stf_write_text(const char *path, const char *s);
void stf_write_raw(const char *path, uint64_t hlen, const char *header, const void *data, size_t n);
void stf_write_st(const char *path, const tdesc *ts, int n, int pad8);
const char *stf_path_in(const char *dir, const char *name);
const char *stf_new_dir(const char *name);
int stf_rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw);
uint32_t stf_f32_bits(float f);
uint16_t stf_f32_to_bf16_exact(float f);
uint16_t stf_f32_to_f16_exact(float f);
int stf_same_float(float a, float b);
void stf_expect_fail(const char *what, int rc, const ps_error *e, const char *frag1, const char *frag2);
void stf_add(ckpt *k, const char *name, int ndim, int64_t d0, int64_t d1);
const float *stf_src_of(const ckpt *k, const char *name);
void stf_ckpt_free(ckpt *k);
void stf_drop(ckpt *k, const char *name);
void stf_gpt2_tensors(ckpt *k, const char *prefix, const char *dtype);
void stf_gpt2_config(const char *dir, const char *extra);
void stf_check_slot(const char *what, const float *got, const float *want, int64_t n);
void stf_llama_tensors(ckpt *k, int with_head);
void stf_transpose(const float *src, int64_t rows, int64_t cols, float *dst);
int stf_try_open(const char *path, ps_error *e);
int stf_try_load(const char *dir, ps_error *e);

#endif
