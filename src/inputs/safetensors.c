// Reading Hugging Face safetensors checkpoints: mmap each file, validate its JSON header completely,
// expose tensors as views into the mappings; sharded checkpoints go through model.safetensors.index.json.
#include "ps_safetensors.h"
#include "ps_json.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// Safetensors' own reader refuses headers above 100 MB; a larger length is a corrupt file, not a big model.
#define ST_MAX_HEADER (100u * 1000u * 1000u)

static const struct { const char *st_name, *torch_name; size_t size; } dtype_info[] = {
    [PS_DT_F32] = {"F32", "float32", 4},   [PS_DT_F16] = {"F16", "float16", 2}, [PS_DT_BF16] = {"BF16", "bfloat16", 2},
    [PS_DT_F64] = {"F64", "float64", 8},   [PS_DT_I64] = {"I64", "int64", 8},   [PS_DT_I32] = {"I32", "int32", 4},
    [PS_DT_I16] = {"I16", "int16", 2},     [PS_DT_I8] = {"I8", "int8", 1},      [PS_DT_U8] = {"U8", "uint8", 1},
    [PS_DT_BOOL] = {"BOOL", "bool", 1},
};
#define N_DTYPES ((int)(sizeof dtype_info / sizeof dtype_info[0]))

const char *ps_dtype_name(ps_dtype dt) { return (int)dt >= 0 && (int)dt < N_DTYPES ? dtype_info[dt].st_name : "?"; }
const char *ps_dtype_torch_name(ps_dtype dt) { return (int)dt >= 0 && (int)dt < N_DTYPES ? dtype_info[dt].torch_name : "?"; }
size_t ps_dtype_size(ps_dtype dt) { return (int)dt >= 0 && (int)dt < N_DTYPES ? dtype_info[dt].size : 0; }

static int dtype_parse(const char *s, ps_dtype *dt) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(s, dtype_info[i].st_name) == 0) { *dt = (ps_dtype)i; return 0; }
    return -1;
}

// ---- one file ----

static int map_file(ps_st_file *f, const char *path, ps_error *e) {
    f->path = strdup(path);
    f->map = NULL;
    f->map_len = 0;
    if (!f->path) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    int64_t size = 0;
    int fd = ps_open_regular(path, &size, e);
    if (fd < 0) return -1;
    struct stat sb = {.st_size = (off_t)size};
    if (sb.st_size < 8) {
        close(fd);
        if (sb.st_size == 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte 0: empty file (a safetensors file starts with an 8-byte header length)", path);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte 0: file is %lld bytes, too short for the 8-byte header length",
                       path, (long long)sb.st_size);
    }
    void *p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int err = errno;
    close(fd);
    if (p == MAP_FAILED) return ps_fail(e, PS_EXIT_RUNTIME, "%s: mmap failed: %s", path, strerror(err));
    f->map = p;
    f->map_len = (size_t)sb.st_size;
    return 0;
}

static void unmap_file(ps_st_file *f) {
    if (f->map) munmap(f->map, f->map_len);
    free(f->path);
    f->map = NULL;
    f->path = NULL;
}

// A JSON number that is an exact non-negative integer small enough for a double to hold exactly.
static int json_uint(const cJSON *j, uint64_t *v) {
    if (!cJSON_IsNumber(j)) return -1;
    double d = j->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || d != floor(d)) return -1;
    *v = (uint64_t)d;
    return 0;
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const ps_tensor *)a)->name, ((const ps_tensor *)b)->name);
}

static int cmp_tensor_data(const void *a, const void *b) {
    const ps_tensor *x = *(const ps_tensor *const *)a, *y = *(const ps_tensor *const *)b;
    uintptr_t px = (uintptr_t)x->data, py = (uintptr_t)y->data;
    return px < py ? -1 : px > py;
}

static void free_tensor_list(ps_tensor *t, int64_t n) {
    for (int64_t i = 0; i < n; i++) free(t[i].name);
    free(t);
}

static void describe_shape(char *buf, size_t cap, const int64_t *shape, int ndim) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++) n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
}

// Parses and validates the header of the mapped file f (index file_idx); returns its tensors sorted by name.
static int parse_header(const ps_st_file *f, int file_idx, ps_tensor **out, int64_t *n_out, ps_error *e) {
    const unsigned char *b = f->map;
    const char *path = f->path;
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | b[i];
    if (hlen > f->map_len - 8)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte 0: header length %llu runs past the end of the file (%zu bytes, so at most %zu)",
                       path, (unsigned long long)hlen, f->map_len, f->map_len - 8);
    if (hlen > ST_MAX_HEADER)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte 0: header length %llu is over the 100 MB limit", path, (unsigned long long)hlen);
    if (hlen < 2) return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte 8: header of %llu bytes cannot hold a JSON object", path, (unsigned long long)hlen);
    const char *h = (const char *)b + 8;
    size_t bad;
    if (ps_utf8_check(h, (size_t)hlen, &bad) != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: header is not valid UTF-8", path, 8 + bad);

    if (ps_json_check_nul(h, (size_t)hlen, path, 1, e) != 0) return -1; // cJSON would cut such a name short
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(h, (size_t)hlen, &end, 0);
    if (!root) {
        size_t off = end && end >= h && end <= h + hlen ? (size_t)(end - h) : 0;
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: JSON syntax error in header (at or just before this byte)", path, 8 + off);
    }
    // Writers pad the header with spaces so the data section is aligned; anything else is corruption.
    for (const char *p = end; p < h + hlen; p++) {
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte %zu: unexpected bytes after the JSON header", path, 8 + (size_t)(p - h));
        }
    }
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: byte 8: header must be a JSON object", path);
    }

    const unsigned char *data = b + 8 + hlen;
    uint64_t data_len = f->map_len - 8 - hlen;
    int64_t cap = cJSON_GetArraySize(root), n = 0;
    ps_tensor *ts = calloc(cap ? (size_t)cap : 1, sizeof *ts);
    if (!ts) { cJSON_Delete(root); return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path); }
    char shp[256];
    int rc = -1;

    for (const cJSON *it = root->child; it; it = it->next) {
        const char *name = it->string;
        if (strcmp(name, "__metadata__") == 0) {
            if (!cJSON_IsObject(it)) { ps_fail(e, PS_EXIT_BADINPUT, "%s: __metadata__: must be an object", path); goto out; }
            continue;
        }
        if (!cJSON_IsObject(it)) { ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": header entry must be an object", path, name); goto out; }
        ps_tensor *t = &ts[n];
        const cJSON *jd = cJSON_GetObjectItemCaseSensitive(it, "dtype");
        const cJSON *js = cJSON_GetObjectItemCaseSensitive(it, "shape");
        const cJSON *jo = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
        if (!cJSON_IsString(jd)) { ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": dtype: missing or not a string", path, name); goto out; }
        if (dtype_parse(jd->valuestring, &t->dtype) != 0) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": unknown dtype \"%s\" (known: F32 F16 BF16 F64 I64 I32 I16 I8 U8 BOOL)",
                    path, name, jd->valuestring);
            goto out;
        }
        if (!cJSON_IsArray(js)) { ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": shape: missing or not an array", path, name); goto out; }
        int nd = cJSON_GetArraySize(js);
        if (nd > PS_MAX_DIMS) { ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": shape has %d dimensions, at most %d supported", path, name, nd, PS_MAX_DIMS); goto out; }
        t->ndim = nd;
        uint64_t numel = 1;
        int k = 0, overflow = 0;
        for (const cJSON *d = js->child; d; d = d->next, k++) {
            uint64_t v;
            if (json_uint(d, &v) != 0) {
                ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": shape[%d]: must be a non-negative integer", path, name, k);
                goto out;
            }
            t->shape[k] = (int64_t)v;
            if (__builtin_mul_overflow(numel, v, &numel)) overflow = 1;
        }
        size_t es = ps_dtype_size(t->dtype);
        uint64_t want;
        if (overflow || __builtin_mul_overflow(numel, (uint64_t)es, &want) || want > INT64_MAX) {
            describe_shape(shp, sizeof shp, t->shape, nd);
            ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": shape %s is too large", path, name, shp);
            goto out;
        }
        uint64_t beg, fin;
        if (!cJSON_IsArray(jo) || cJSON_GetArraySize(jo) != 2 || json_uint(jo->child, &beg) != 0 ||
            json_uint(jo->child->next, &fin) != 0) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": data_offsets: must be two non-negative integers [begin, end]", path, name);
            goto out;
        }
        if (fin < beg) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": data_offsets [%llu, %llu]: end before begin", path, name,
                    (unsigned long long)beg, (unsigned long long)fin);
            goto out;
        }
        if (fin > data_len) {
            ps_fail(e, PS_EXIT_BADINPUT,
                    "%s: tensor \"%s\": data_offsets [%llu, %llu] end at byte %llu, past the end of the file (%zu bytes; data section %llu bytes from byte %llu)",
                    path, name, (unsigned long long)beg, (unsigned long long)fin, (unsigned long long)(8 + hlen + fin), f->map_len,
                    (unsigned long long)data_len, (unsigned long long)(8 + hlen));
            goto out;
        }
        if (fin - beg != want) {
            describe_shape(shp, sizeof shp, t->shape, nd);
            ps_fail(e, PS_EXIT_BADINPUT,
                    "%s: tensor \"%s\": data_offsets [%llu, %llu] (byte %llu) hold %llu bytes but shape %s x %s needs %llu",
                    path, name, (unsigned long long)beg, (unsigned long long)fin, (unsigned long long)(8 + hlen + beg),
                    (unsigned long long)(fin - beg), shp, ps_dtype_name(t->dtype), (unsigned long long)want);
            goto out;
        }
        t->name = strdup(name);
        if (!t->name) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path); goto out; }
        t->numel = (int64_t)numel;
        t->data = data + beg;
        t->nbytes = (size_t)want;
        t->file = file_idx;
        n++;
    }

    // Duplicate keys are legal JSON but ambiguous here.
    qsort(ts, (size_t)n, sizeof *ts, cmp_tensor_name);
    for (int64_t i = 1; i < n; i++)
        if (strcmp(ts[i - 1].name, ts[i].name) == 0) { ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": appears twice in the header", path, ts[i].name); goto out; }

    // Overlaps: sort the non-empty tensors by start; each must begin at or after the previous one's end.
    {
        const ps_tensor **by = malloc((size_t)(n ? n : 1) * sizeof *by);
        if (!by) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path); goto out; }
        int64_t m = 0;
        for (int64_t i = 0; i < n; i++)
            if (ts[i].nbytes) by[m++] = &ts[i];
        qsort(by, (size_t)m, sizeof *by, cmp_tensor_data);
        for (int64_t i = 1; i < m; i++) {
            const unsigned char *prev_end = (const unsigned char *)by[i - 1]->data + by[i - 1]->nbytes;
            if ((const unsigned char *)by[i]->data < prev_end) {
                ps_fail(e, PS_EXIT_BADINPUT, "%s: tensor \"%s\": data at byte %zu overlaps tensor \"%s\" (bytes %zu..%zu)", path,
                        by[i]->name, (size_t)((const unsigned char *)by[i]->data - b), by[i - 1]->name,
                        (size_t)((const unsigned char *)by[i - 1]->data - b), (size_t)(prev_end - b));
                free(by);
                goto out;
            }
        }
        free(by);
    }
    rc = 0;
out:
    cJSON_Delete(root);
    if (rc != 0) { free_tensor_list(ts, n); return -1; }
    *out = ts;
    *n_out = n;
    return 0;
}

// ---- checkpoints ----


static int open_single(ps_safetensors *st, const char *path, ps_error *e) {
    st->files = calloc(1, sizeof *st->files);
    if (!st->files) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    st->n_files = 1;
    if (map_file(&st->files[0], path, e) != 0) return -1;
    return parse_header(&st->files[0], 0, &st->tensors, &st->n_tensors, e);
}

// Loads the shards the index names; the index's weight_map decides which tensors exist and where.
static int open_sharded(ps_safetensors *st, const char *index_path, ps_error *e) {
    cJSON *root = ps_json_parse_file(index_path, e);
    if (!root) return -1;
    int rc = -1;
    char *dir = ps_dirname(index_path);
    ps_tensor **lists = NULL;   // per shard, sorted by name
    int64_t *counts = NULL;
    const cJSON *wm = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(wm)) { ps_fail(e, PS_EXIT_BADINPUT, "%s: weight_map: missing or not an object", index_path); goto out; }
    int n_entries = cJSON_GetArraySize(wm);
    if (n_entries == 0) { ps_fail(e, PS_EXIT_BADINPUT, "%s: weight_map: empty", index_path); goto out; }

    // Distinct shard names in order of first appearance.
    st->files = calloc((size_t)n_entries, sizeof *st->files);
    lists = calloc((size_t)n_entries, sizeof *lists);
    counts = calloc((size_t)n_entries, sizeof *counts);
    st->tensors = calloc((size_t)n_entries, sizeof *st->tensors);
    if (!st->files || !lists || !counts || !st->tensors) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", index_path); goto out; }
    for (const cJSON *it = wm->child; it; it = it->next) {
        if (!cJSON_IsString(it) || !it->valuestring[0]) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: weight_map[\"%s\"]: must be a shard file name", index_path, it->string);
            goto out;
        }
        char *p = ps_path_join(dir, it->valuestring);
        if (!p) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", index_path); goto out; }
        int k;
        for (k = 0; k < st->n_files; k++)
            if (strcmp(st->files[k].path, p) == 0) break;
        if (k == st->n_files) {
            if (!ps_path_exists(p)) {
                ps_fail(e, PS_EXIT_BADINPUT, "%s: weight_map[\"%s\"]: shard %s is missing: %s", index_path, it->string, p, strerror(errno));
                free(p);
                goto out;
            }
            st->n_files++;
            int r = map_file(&st->files[k], p, e);
            free(p);
            if (r != 0 || parse_header(&st->files[k], k, &lists[k], &counts[k], e) != 0) goto out;
        } else {
            free(p);
        }
        ps_tensor key = {.name = it->string};
        const ps_tensor *t = bsearch(&key, lists[k], (size_t)counts[k], sizeof key, cmp_tensor_name);
        if (!t) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: weight_map[\"%s\"]: tensor not found in shard %s", index_path, it->string, st->files[k].path);
            goto out;
        }
        ps_tensor *dst = &st->tensors[st->n_tensors];
        *dst = *t;
        dst->name = strdup(t->name);
        if (!dst->name) { ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", index_path); goto out; }
        st->n_tensors++;
    }
    qsort(st->tensors, (size_t)st->n_tensors, sizeof *st->tensors, cmp_tensor_name);
    for (int64_t i = 1; i < st->n_tensors; i++)
        if (strcmp(st->tensors[i - 1].name, st->tensors[i].name) == 0) {
            ps_fail(e, PS_EXIT_BADINPUT, "%s: weight_map[\"%s\"]: listed twice", index_path, st->tensors[i].name);
            goto out;
        }
    rc = 0;
out:
    if (lists)
        for (int k = 0; k < st->n_files; k++) free_tensor_list(lists[k], counts[k]);
    free(lists);
    free(counts);
    free(dir);
    cJSON_Delete(root);
    return rc;
}

int ps_safetensors_open(ps_safetensors *st, const char *path, ps_error *e) {
    memset(st, 0, sizeof *st);
    struct stat sb;
    if (stat(path, &sb) != 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, strerror(errno));
    int rc;
    if (S_ISDIR(sb.st_mode)) {
        char *single = ps_path_join(path, "model.safetensors");
        char *index = ps_path_join(path, "model.safetensors.index.json");
        if (!single || !index) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
        else if (ps_path_exists(single)) rc = open_single(st, single, e);
        else if (ps_path_exists(index)) rc = open_sharded(st, index, e);
        else rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: no model.safetensors or model.safetensors.index.json in this directory", path);
        free(single);
        free(index);
    } else if (ps_ends_with(path, ".index.json")) {
        rc = open_sharded(st, path, e);
    } else {
        rc = open_single(st, path, e);
    }
    if (rc != 0) ps_safetensors_free(st);
    return rc;
}

void ps_safetensors_free(ps_safetensors *st) {
    if (!st) return;
    if (st->tensors) free_tensor_list(st->tensors, st->n_tensors);
    for (int i = 0; i < st->n_files; i++) unmap_file(&st->files[i]);
    free(st->files);
    memset(st, 0, sizeof *st);
}

const ps_tensor *ps_safetensors_find(const ps_safetensors *st, const char *name) {
    ps_tensor key = {.name = (char *)name};
    return bsearch(&key, st->tensors, (size_t)st->n_tensors, sizeof key, cmp_tensor_name);
}

// ---- conversion ----

// Exact: every f16 value (subnormals, infinities, NaN payloads) has an f32 with the same value.
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: renormalise into f32's wider exponent range
            exp = 127 - 15 + 1;
            while (!(mant & 0x400)) { mant <<= 1; exp--; }
            bits = sign | (exp << 23) | ((mant & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

int ps_tensor_to_f32_range(const ps_tensor *t, int64_t start, int64_t count, float *out, ps_error *e) {
    if (start < 0 || count < 0 || start + count > t->numel)
        return ps_fail(e, PS_EXIT_RUNTIME, "tensor \"%s\": element range [%lld, %lld) outside its %lld elements", t->name,
                       (long long)start, (long long)(start + count), (long long)t->numel);
    // Data may be unaligned (headers need not be padded), so every load goes through memcpy.
    const unsigned char *src = (const unsigned char *)t->data + (size_t)start * ps_dtype_size(t->dtype);
    switch (t->dtype) {
    case PS_DT_F32:
        if (count) memcpy(out, src, (size_t)count * 4);
        return 0;
    case PS_DT_F16:
        for (int64_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = f16_to_f32(h);
        }
        return 0;
    case PS_DT_BF16:
        // Through aligned blocks in L1: the widening loop then vectorizes (an element-wise memcpy did not, and
        // was most of a streamed layer's conversion time).
        for (int64_t i0 = 0; i0 < count; i0 += 1024) {
            uint16_t h[1024];
            uint32_t bits[1024];
            const int64_t n = count - i0 < 1024 ? count - i0 : 1024;
            memcpy(h, src + 2 * (size_t)i0, (size_t)n * 2);
            for (int64_t i = 0; i < n; i++) bits[i] = (uint32_t)h[i] << 16;
            memcpy(out + i0, bits, (size_t)n * 4);
        }
        return 0;
    case PS_DT_F64:
        for (int64_t i = 0; i < count; i++) {
            double d;
            memcpy(&d, src + 8 * i, 8);
            out[i] = (float)d;
        }
        return 0;
    default:
        return ps_fail(e, PS_EXIT_BADINPUT, "tensor \"%s\": dtype %s is not a floating-point type", t->name, ps_dtype_name(t->dtype));
    }
}

int ps_tensor_to_f32(const ps_tensor *t, float *out, ps_error *e) {
    return ps_tensor_to_f32_range(t, 0, t->numel, out, e);
}
