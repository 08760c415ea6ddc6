// Reading Hugging Face safetensors checkpoints: single files or sharded (model.safetensors.index.json), memory-mapped.
// Tensors are views into the mapping; nothing is copied until ps_tensor_to_f32.
#ifndef PS_SAFETENSORS_H
#define PS_SAFETENSORS_H

#include "ps_common.h"

typedef enum { PS_DT_F32, PS_DT_F16, PS_DT_BF16, PS_DT_F64, PS_DT_I64, PS_DT_I32, PS_DT_I16, PS_DT_I8, PS_DT_U8, PS_DT_BOOL } ps_dtype;

const char *ps_dtype_name(ps_dtype dt);        // safetensors' spelling: "F32", "F16", "BF16", ...
const char *ps_dtype_torch_name(ps_dtype dt);  // PyTorch's spelling: "float32", "float16", "bfloat16", ...
size_t ps_dtype_size(ps_dtype dt);

#define PS_MAX_DIMS 8
typedef struct {
    char *name;                  // owned
    ps_dtype dtype;
    int ndim;
    int64_t shape[PS_MAX_DIMS];
    int64_t numel;
    const void *data;            // points into the owning file's mapping
    size_t nbytes;
    int file;                    // index into ps_safetensors.files
} ps_tensor;

typedef struct {
    char *path;                  // owned
    void *map; size_t map_len;   // whole-file mmap
} ps_st_file;

typedef struct {
    ps_st_file *files; int n_files;     // owned
    ps_tensor *tensors; int64_t n_tensors; // owned, sorted by name
} ps_safetensors;

// path: a .safetensors file, or a checkpoint directory holding model.safetensors or
// model.safetensors.index.json + shards. Validates every header: offsets inside the file,
// sizes equal to dtype x shape, no overlaps. Errors name the file and the byte offset or tensor.
int ps_safetensors_open(ps_safetensors *st, const char *path, ps_error *e);
void ps_safetensors_free(ps_safetensors *st);

// NULL when absent.
const ps_tensor *ps_safetensors_find(const ps_safetensors *st, const char *name);

// Converts any float dtype (f32, f16, bf16, f64) to fp32; out holds t->numel floats.
// Tensor data is read as little-endian (the format's byte order; this reader assumes a little-endian host).
int ps_tensor_to_f32(const ps_tensor *t, float *out, ps_error *e);
// Same for elements [start, start + count) of the flattened tensor; out holds count floats.
// Lets callers convert a big matrix a few rows at a time (e.g. while transposing it).
int ps_tensor_to_f32_range(const ps_tensor *t, int64_t start, int64_t count, float *out, ps_error *e);

#endif
