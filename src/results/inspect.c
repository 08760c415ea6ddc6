// `patchsweep inspect FILE`: a summary of a results file on stdout: provenance, prompts, baseline, and per
// table its kind, attributes, shape and top entries, read from the axes' scales and labels (no per-kind code).
#include "ps_store.h"
#include "h5util.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

// Same as ps_h5_read_attr_str, but "-" when missing or empty: for display.
static const char *attr_or_dash(hid_t obj, const char *name, char *buf, size_t n) {
    if (ps_h5_read_attr_str(obj, name, buf, n) != 0 || !buf[0]) snprintf(buf, n, "-");
    return buf;
}

// Prints a token as a quoted, escaped string so whitespace tokens (' ', '\n') stay visible.
static void print_token(FILE *o, const char *t) {
    fputc('\'', o);
    for (const unsigned char *c = (const unsigned char *)t; *c; c++) {
        if (*c == '\n') fputs("\\n", o);
        else if (*c == '\t') fputs("\\t", o);
        else if (*c == '\r') fputs("\\r", o);
        else if (*c == '\'' || *c == '\\') fprintf(o, "\\%c", *c);
        else if (*c < 0x20 || *c == 0x7f) fprintf(o, "\\x%02x", *c);
        else fputc(*c, o);
    }
    fputc('\'', o);
}

typedef struct {
    FILE *o;
    int n;
} attr_ctx;

// Prints a table's free attributes as "key value, ..." (kind and the counters are printed apart).
static herr_t print_attr(hid_t g, const char *name, const H5A_info_t *info, void *data) {
    (void)info;
    attr_ctx *c = data;
    if (ps_h5_table_own_attr(name)) return 0;
    char v[256];
    ps_h5_read_attr_str(g, name, v, sizeof v);
    fprintf(c->o, "%s%s %s", c->n++ ? ", " : " (", name, v);
    return 0;
}

// The string labels of a table's axis; NULL when it has none.
static char **axis_strings(hid_t g, const char *axis, int64_t *n) {
    char name[300];
    ps_h5_axis_strs_name(axis, name, sizeof name);
    return ps_h5_read_strs(g, name, n);
}

// /run's inputs (every input file with its sha256 and size), one line each; nothing when the file has none.
static void print_inputs(FILE *o, hid_t run) {
    char *json = ps_h5_read_attr_alloc(run, "inputs");
    if (!json) return;
    cJSON *a = cJSON_Parse(json);
    free(json);
    if (!cJSON_IsArray(a)) {
        fprintf(o, "  inputs:    (unreadable)\n");
        cJSON_Delete(a);
        return;
    }
    fprintf(o, "  inputs:    %d files\n", cJSON_GetArraySize(a));
    const cJSON *it;
    cJSON_ArrayForEach(it, a) {
        const cJSON *kind = cJSON_GetObjectItemCaseSensitive(it, "kind"), *p = cJSON_GetObjectItemCaseSensitive(it, "path");
        const cJSON *sha = cJSON_GetObjectItemCaseSensitive(it, "sha256"), *b = cJSON_GetObjectItemCaseSensitive(it, "bytes");
        char ep[1024], ek[128];
        fprintf(o, "    %-16s %s (sha256 %.16s..., %.0f bytes)\n", ps_escape(cJSON_IsString(kind) ? kind->valuestring : "?", ek, sizeof ek),
                ps_escape(cJSON_IsString(p) ? p->valuestring : "?", ep, sizeof ep), cJSON_IsString(sha) ? sha->valuestring : "?",
                cJSON_IsNumber(b) ? b->valuedouble : -1.0);
    }
    cJSON_Delete(a);
}

static void inspect_result(FILE *o, hid_t res, const char *name) {
    hid_t g = H5Gopen2(res, name, H5P_DEFAULT);
    if (g < 0) {
        fprintf(o, "  %s: (cannot open)\n", name);
        return;
    }
    char kind[128], run[64], skipped[64];
    // A file of the layout before result tables has no kind: every group there was a patching sweep.
    if (ps_h5_read_attr_str(g, "kind", kind, sizeof kind) != 0) snprintf(kind, sizeof kind, "patch_sweep");
    ps_h5_read_attr_str(g, "patches_run", run, sizeof run);
    ps_h5_read_attr_str(g, "patches_skipped", skipped, sizeof skipped);
    fprintf(o, "  %s: %s", name, kind);
    attr_ctx ac = {o, 0};
    hsize_t aidx = 0;
    H5Aiterate2(g, H5_INDEX_NAME, H5_ITER_INC, &aidx, print_attr, &ac);
    fprintf(o, "%s\n", ac.n ? ")" : "");

    int rank = 0;
    hsize_t dims[H5S_MAX_RANK];
    int64_t n = 0;
    float *v = ps_h5_read(g, "values", H5T_NATIVE_FLOAT, &rank, dims, &n);
    if (!v) {
        fprintf(o, "    (no values dataset)\n");
        H5Gclose(g);
        return;
    }
    // Axis labels come from the dimension labels, their values from the scale datasets of the same name.
    char labels[H5S_MAX_RANK][64];
    hid_t vd = H5Dopen2(g, "values", H5P_DEFAULT);
    fprintf(o, "    shape:");
    for (int d = 0; d < rank; d++) {
        labels[d][0] = 0;
        if (vd < 0 || ps_h5_dim_label(vd, (unsigned)d, labels[d], sizeof labels[d]) != 0)
            snprintf(labels[d], sizeof labels[d], "dim%d", d);
        fprintf(o, "%s %s %llu", d ? " x" : "", labels[d], (unsigned long long)dims[d]);
    }
    const int per_prompt = rank > 0 && ps_h5_values_per_prompt(vd);
    if (vd >= 0) H5Dclose(vd);
    int64_t nan_count = 0;
    for (int64_t i = 0; i < n; i++) nan_count += isnan(v[i]) != 0;
    fprintf(o, "; patches run %s, skipped %s; %lld of %lld entries not applicable (NaN)\n", run[0] ? run : "?",
            skipped[0] ? skipped : "?", (long long)nan_count, (long long)n);

    int nr = 0;
    hsize_t nd[H5S_MAX_RANK];
    int64_t nn = 0;
    float *norm = ps_h5_read(g, "normalized", H5T_NATIVE_FLOAT, &nr, nd, &nn);
    fprintf(o, "    mean over everything: %.4g", ps_h5_nanmean(v, n));
    if (norm) fprintf(o, " (normalized %.4g)", ps_h5_nanmean(norm, nn));
    fputc('\n', o);
    free(norm);

    // The top entries of the mean over prompts; a table without a prompt axis ranks its values themselves.
    const char *which = "mean_normalized";
    int mr = 0;
    hsize_t md[H5S_MAX_RANK];
    int64_t mn = 0;
    float *m = ps_h5_read(g, which, H5T_NATIVE_FLOAT, &mr, md, &mn);
    if (!m) {
        which = "mean";
        m = ps_h5_read(g, which, H5T_NATIVE_FLOAT, &mr, md, &mn);
    }
    if (!m && !per_prompt) {
        which = "values";
        m = v;
        v = NULL;
        mr = rank;
        mn = n;
        memcpy(md, dims, sizeof md);
    }
    free(v);
    const int off = per_prompt ? 1 : 0; // dim d of m is dim d + off of values
    if (m && mr == rank - off) {
        int64_t *axv[H5S_MAX_RANK] = {0};
        char **axs[H5S_MAX_RANK] = {0};
        int64_t axs_n[H5S_MAX_RANK] = {0};
        for (int a = 0; a < mr; a++) {
            axv[a] = ps_h5_axis_scale(g, labels[a + off], (int64_t)md[a]);
            axs[a] = axis_strings(g, labels[a + off], &axs_n[a]);
        }
        int64_t top[5];
        int nt = 0;
        for (int64_t i = 0; i < mn; i++) {
            if (isnan(m[i])) continue;
            int j = nt < 5 ? nt++ : 5;
            if (j == 5) {
                if (fabsf(m[i]) <= fabsf(m[top[4]])) continue;
                j = 4;
            }
            while (j > 0 && fabsf(m[i]) > fabsf(m[top[j - 1]])) { top[j] = top[j - 1]; j--; }
            top[j] = i;
        }
        fprintf(o, "    top %d by |%s|:\n", nt, which);
        for (int t = 0; t < nt; t++) {
            int64_t rem = top[t], idx[H5S_MAX_RANK];
            for (int a = mr - 1; a >= 0; a--) {
                idx[a] = rem % (int64_t)md[a];
                rem /= (int64_t)md[a];
            }
            fprintf(o, "     ");
            for (int a = 0; a < mr; a++) {
                fprintf(o, " %s %lld", labels[a + off], (long long)(axv[a] ? axv[a][idx[a]] : idx[a]));
                if (axs[a] && idx[a] < axs_n[a]) {
                    fputc(' ', o);
                    print_token(o, axs[a][idx[a]]);
                }
            }
            fprintf(o, ": %.4g\n", m[top[t]]);
        }
        for (int a = 0; a < mr; a++) {
            free(axv[a]);
            ps_h5_free_strs(axs[a], (size_t)axs_n[a]);
        }
    }
    free(m);
    H5Gclose(g);
}

int ps_store_inspect_in_process(const char *path, ps_error *e) {
    ps_h5_quiet();
    struct stat st;
    if (stat(path, &st) != 0) {
        int err = errno;
        char partial[4096];
        snprintf(partial, sizeof partial, "%s.partial", path);
        if (stat(partial, &st) == 0)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s; %s exists: that run was interrupted or is still going",
                           path, strerror(err), partial);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: %s", path, strerror(err));
    }
    if (S_ISDIR(st.st_mode)) return ps_fail(e, PS_EXIT_BADINPUT, "%s: is a directory, not a results file", path);
    const int seal = ps_h5_check_seal(path, e); // before libhdf5 parses a byte of it
    if (seal < 0) return -1;
    if (H5Fis_hdf5(path) <= 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: not an HDF5 file", path);
    hid_t f = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (f < 0) {
        char det[256];
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: cannot open: %s", path, ps_h5_detail(det));
    }
    if (H5Lexists(f, "run", H5P_DEFAULT) <= 0) {
        H5Fclose(f);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: /run: missing (not a patchsweep results file)", path);
    }
    FILE *o = stdout;
    hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
    if (run < 0) {
        H5Fclose(f);
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: /run: cannot open (the file is corrupt)", path);
    }
    char status[64], buf[1024], buf2[1024];
    ps_h5_read_attr_str(run, "status", status, sizeof status);
    int complete = strcmp(status, "complete") == 0;
    // A complete file's checksums are checked before anything is printed: a corrupt one is one line, exit 2.
    int64_t n_checked = -1;
    if (complete && ps_h5_read_attr_str(run, "checksums", buf, sizeof buf) == 0 && ps_h5_verify(f, path, seal == 0, &n_checked, e) != 0) {
        H5Gclose(run);
        H5Fclose(f);
        return -1;
    }
    fprintf(o, "%s\n", path);
    if (!complete)
        fprintf(o, "  *** INCOMPLETE (status=%s): the run was interrupted; results below may be missing ***\n",
                status[0] ? status : "missing");
    attr_or_dash(run, "patchsweep_version", buf, sizeof buf);
    attr_or_dash(run, "created", buf2, sizeof buf2);
    fprintf(o, "  patchsweep %s, created %s, status %s\n", buf, buf2, status[0] ? status : "(missing)");
    const int64_t schema = ps_h5_schema_version(f);
    if (schema == 0)
        fprintf(o, "  schema:    1 (the layout before result tables; `patchsweep run CONFIG --force` rewrites it as schema %d)\n",
                PS_SCHEMA_VERSION);
    else
        fprintf(o, "  schema:    %lld\n", (long long)schema);
    fprintf(o, "  config:    %s\n", attr_or_dash(run, "config_path", buf, sizeof buf));
    attr_or_dash(run, "model_dir", buf, sizeof buf);
    attr_or_dash(run, "weights_dtype", buf2, sizeof buf2);
    fprintf(o, "  model:     %s (", buf);
    if (H5Aexists(run, "architecture") > 0) fprintf(o, "%s, ", attr_or_dash(run, "architecture", buf, sizeof buf));
    fprintf(o, "weights %s", buf2);
    attr_or_dash(run, "weights_sha256", buf, sizeof buf);
    fprintf(o, ", sha256 %.16s%s)\n", buf, strlen(buf) > 16 ? "..." : "");
    fprintf(o, "  tokenizer: %s\n", attr_or_dash(run, "tokenizer_path", buf, sizeof buf));
    attr_or_dash(run, "backend", buf, sizeof buf);
    attr_or_dash(run, "precision", buf2, sizeof buf2);
    char threads[64], pbos[64], bos[64];
    attr_or_dash(run, "threads", threads, sizeof threads);
    ps_h5_read_attr_str(run, "prepend_bos", pbos, sizeof pbos);
    ps_h5_read_attr_str(run, "bos_id", bos, sizeof bos);
    fprintf(o, "  backend:   %s, precision %s, %s threads\n", buf, buf2, threads);
    if (strcmp(pbos, "1") == 0) fprintf(o, "  bos:       prepended (id %s)\n", bos);
    else fprintf(o, "  bos:       not prepended\n");
    char metric[128];
    attr_or_dash(run, "metric", metric, sizeof metric);
    fprintf(o, "  metric:    %s\n", metric);
    if (n_checked >= 0) fprintf(o, "  checksums: sha256 of %lld datasets verified\n", (long long)n_checked);
    else if (complete) fprintf(o, "  checksums: none (written by an older patchsweep: not verified)\n");
    print_inputs(o, run);
    H5Gclose(run);

    if (H5Lexists(f, "prompts", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "prompts", H5P_DEFAULT);
        int rank = 0;
        hsize_t dims[H5S_MAX_RANK];
        int64_t n = 0, nt = 0;
        int64_t nct = 0;
        int64_t *len = ps_h5_read(g, "length", H5T_NATIVE_INT64, &rank, dims, &n);
        char **tok = ps_h5_read_strs(g, "clean_tokens", &nt);
        char **ctok = ps_h5_read_strs(g, "corrupted_tokens", &nct);
        int64_t na = 0, nw = 0;
        char **ans = ps_h5_read_strs(g, "answer_text", &na), **wr = ps_h5_read_strs(g, "wrong_text", &nw);
        hsize_t tdims[H5S_MAX_RANK] = {0, 0};
        if (H5Lexists(g, "clean_tokens", H5P_DEFAULT) > 0) {
            hid_t d = H5Dopen2(g, "clean_tokens", H5P_DEFAULT);
            hid_t sp = d >= 0 ? H5Dget_space(d) : -1;
            if (sp >= 0 && H5Sget_simple_extent_ndims(sp) == 2) H5Sget_simple_extent_dims(sp, tdims, NULL);
            if (sp >= 0) H5Sclose(sp);
            if (d >= 0) H5Dclose(d);
        }
        int64_t T = (int64_t)tdims[1];
        int64_t lmin = 0, lmax = 0;
        for (int64_t i = 0; len && i < n; i++) {
            if (i == 0 || len[i] < lmin) lmin = len[i];
            if (i == 0 || len[i] > lmax) lmax = len[i];
        }
        fprintf(o, "prompts: %lld (tokens per prompt %lld..%lld)\n", (long long)n, (long long)lmin, (long long)lmax);
        int64_t L0 = len && n ? len[0] : T;
        for (int which = 0; which < 2; which++) {
            char **t = which ? ctok : tok;
            const int64_t have = which ? nct : nt; // each array's own count: a corrupt file's may not be T_max
            if (!t || T <= 0) continue;
            fprintf(o, "  prompt 0 %-10s", which ? "corrupted:" : "clean:");
            for (int64_t j = 0; j < L0 && j < T && j < have; j++) {
                fputc(' ', o);
                print_token(o, t[j]);
            }
            fputc('\n', o);
        }
        if (ans && na) {
            fprintf(o, "  prompt 0 answer ");
            print_token(o, ans[0]);
            if (wr && nw) {
                fprintf(o, " vs wrong ");
                print_token(o, wr[0]);
            }
            fputc('\n', o);
        }
        free(len);
        ps_h5_free_strs(tok, (size_t)nt);
        ps_h5_free_strs(ctok, (size_t)nct);
        ps_h5_free_strs(ans, (size_t)na);
        ps_h5_free_strs(wr, (size_t)nw);
        H5Gclose(g);
    } else {
        fprintf(o, "prompts: (missing)\n");
    }

    if (H5Lexists(f, "baseline", H5P_DEFAULT) > 0) {
        hid_t g = H5Gopen2(f, "baseline", H5P_DEFAULT);
        double mc, mx;
        ps_h5_read_attr_f64(g, "mean_clean", &mc);
        ps_h5_read_attr_f64(g, "mean_corrupted", &mx);
        fprintf(o, "baseline: mean %s clean %.4g, corrupted %.4g (difference %.4g)\n", metric, mc, mx, mc - mx);
        H5Gclose(g);
    } else {
        fprintf(o, "baseline: (missing)\n");
    }

    int64_t n_res = 0;
    char **names = NULL;
    if (H5Lexists(f, "results", H5P_DEFAULT) > 0) {
        hid_t res = H5Gopen2(f, "results", H5P_DEFAULT);
        names = ps_h5_list(res, &n_res);
        fprintf(o, "experiments: %lld\n", (long long)n_res);
        for (int64_t i = 0; names && i < n_res; i++) inspect_result(o, res, names[i]);
        ps_h5_free_strs(names, (size_t)n_res);
        H5Gclose(res);
    } else {
        fprintf(o, "experiments: 0\n");
    }
    if (!complete)
        fprintf(o, "*** INCOMPLETE (status=%s): the run was interrupted ***\n", status[0] ? status : "missing");
    fflush(o);
    H5Fclose(f);
    return 0;
}

// ---------------------------------------------------------------------------------------------------------------
// libhdf5 (1.10) crashes on some corrupt files (the global heap of variable-length strings, attribute messages): the
// seal catches every changed byte of a file patchsweep wrote, but an unsealed file (an older patchsweep's, or any
// other) or a crafted one reaches it. So the summary is built in a child process and printed only when the child
// finished: a crash there is one line, exit 2, never a signal.

static int read_all(int fd, char **buf, size_t *len) {
    size_t cap = 1 << 14;
    *len = 0;
    *buf = malloc(cap);
    if (!*buf) return -1;
    for (;;) {
        if (*len == cap) {
            char *nb = realloc(*buf, cap *= 2);
            if (!nb) return -1;
            *buf = nb;
        }
        ssize_t r = read(fd, *buf + *len, cap - *len);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return r < 0 ? -1 : 0;
        *len += (size_t)r;
    }
}

int ps_store_inspect(const char *path, ps_error *e) {
    int out[2], err[2];
    if (pipe(out) != 0) return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot inspect: pipe: %s", path, strerror(errno));
    if (pipe(err) != 0) {
        close(out[0]); close(out[1]);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot inspect: pipe: %s", path, strerror(errno));
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        close(out[0]); close(out[1]); close(err[0]); close(err[1]);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot inspect: fork: %s", path, strerror(errno));
    }
    if (pid == 0) {
        close(out[0]);
        close(err[0]);
        if (dup2(out[1], 1) < 0) _exit(PS_EXIT_RUNTIME);
        // glibc's and libhdf5's own complaints ("free(): invalid pointer") would break the one-line promise.
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        signal(SIGALRM, SIG_DFL);
        alarm(ps_h5_child_seconds(path)); // libhdf5 can loop forever on a crafted file
        ps_error ce = {0};
        int rc = ps_store_inspect_in_process(path, &ce);
        fflush(stdout);
        if (rc != 0 && write(err[1], &ce, sizeof ce) != (ssize_t)sizeof ce) _exit(PS_EXIT_RUNTIME);
        _exit(rc == 0 ? 0 : PS_EXIT_BADINPUT);
    }
    close(out[1]);
    close(err[1]);
    char *text = NULL;
    size_t n = 0;
    int rd = read_all(out[0], &text, &n);
    close(out[0]);
    ps_error ce = {0};
    ssize_t got = read(err[0], &ce, sizeof ce);
    close(err[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    int rc = 0;
    if (WIFSIGNALED(st))
        rc = ps_h5_child_died(e, path, WTERMSIG(st), ps_h5_child_seconds(path));
    else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (got == (ssize_t)sizeof ce && ce.code) {
            ce.msg[PS_ERR_MAX - 1] = 0;
            rc = ps_fail(e, ce.code, "%s", ce.msg);
        } else { // died without a word: a crash a sanitizer (or an allocator) turned into an exit status
            rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: libhdf5 crashed reading it (exit %d); nothing of it is shown", path,
                         WIFEXITED(st) ? WEXITSTATUS(st) : -1);
        }
    } else if (rd != 0) {
        rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot inspect: out of memory", path);
    } else if (n && fwrite(text, 1, n, stdout) != n) {
        rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write the summary: %s", path, strerror(errno));
    }
    fflush(stdout);
    free(text);
    return rc;
}
