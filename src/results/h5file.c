// Results files built in memory and written to disk by us, and their checksums. libhdf5 cannot recover from a
// failed write (a full disk leaves the file id open after a failed close and crashes at exit), so every file is an
// HDF5 core-driver image in memory and reaches the disk through plain write()/fsync() with errno-based errors.
// Every dataset carries a sha256 of its bytes (attribute "sha256"), checked before a file is called complete.
#include "h5util.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

// A core-driver file access list: in memory, grown 1 MiB at a time, never written back by libhdf5.
static hid_t mem_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0) return -1;
    if (H5Pset_fapl_core(fapl, (size_t)1 << 20, 0) < 0) {
        H5Pclose(fapl);
        return -1;
    }
    return fapl;
}

hid_t ps_h5_mem_create(const char *name, hid_t fcpl) {
    hid_t fapl = mem_fapl();
    if (fapl < 0) return -1;
    hid_t f = H5Fcreate(name, H5F_ACC_TRUNC, fcpl, fapl);
    H5Pclose(fapl);
    return f;
}

// The bytes are read here and handed to libhdf5 as an image: no lock on path (merge also opens it read-only), no
// write permission needed, nothing written back.
hid_t ps_h5_mem_open(const char *path) {
    size_t n = 0;
    ps_error e = {0};
    char *buf = ps_read_file(path, &n, &e);
    if (!buf) return -1;
    hid_t f = H5LTopen_file_image(buf, n, H5LT_FILE_IMAGE_OPEN_RW);
    free(buf); // (copied by libhdf5 without H5LT_FILE_IMAGE_DONT_COPY)
    return f;
}

int64_t ps_h5_image_size(hid_t f) {
    if (H5Fflush(f, H5F_SCOPE_GLOBAL) < 0) return -1;
    ssize_t n = H5Fget_file_image(f, NULL, 0);
    return n < 0 ? -1 : (int64_t)n;
}

static int write_all(int fd, const unsigned char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

// The seal in the userblock (PS_H5_USERBLOCK bytes before HDF5's superblock, which libhdf5 and h5py skip):
// "PSRESULT sha256 <hex of every byte after the userblock>\n". It is checked before libhdf5 parses anything, since
// libhdf5 crashes on some corrupt object headers (a flipped byte in an attribute message, seen in H5Aexists).
static const char SEAL_MAGIC[] = "PSRESULT sha256 ";

// The file's bytes as they go to disk: our userblock (with seal: the image's sha256) and the image from its superblock.
int ps_h5_file_bytes(hid_t f, const char *path, int seal, unsigned char **out, size_t *out_len, ps_error *e) {
    *out = NULL;
    *out_len = 0;
    int64_t n = ps_h5_image_size(f);
    if (n <= 0) return ps_h5_fail(e, path, "cannot build the file image");
    unsigned char *img = malloc((size_t)n + PS_H5_USERBLOCK);
    if (!img) return ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory (%lld bytes)", path, (long long)n);
    unsigned char *body = img + PS_H5_USERBLOCK;
    if (H5Fget_file_image(f, body, (size_t)n) != (ssize_t)n) {
        free(img);
        return ps_h5_fail(e, path, "cannot build the file image");
    }
    // The HDF5 part starts at its superblock (0, or 512, 1024, ... in a file read with its userblock); the file
    // gets our own userblock in front (libhdf5 finds the superblock at 512 and takes addresses from there).
    static const unsigned char sig[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    int64_t at = 0;
    while (at + 8 <= n && memcmp(body + at, sig, 8) != 0) at = at ? 2 * at : 512;
    if (at + 8 > n) {
        free(img);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: the file image has no HDF5 superblock", path);
    }
    if (at) memmove(body, body + at, (size_t)(n - at));
    memset(img, 0, PS_H5_USERBLOCK);
    if (seal) {
        char hex[65];
        ps_sha256_hex(body, (size_t)(n - at), hex);
        snprintf((char *)img, PS_H5_USERBLOCK, "%s%s\n", SEAL_MAGIC, hex);
    }
    *out = img;
    *out_len = (size_t)(PS_H5_USERBLOCK + n - at);
    return 0;
}

// bytes to path (truncated), then fsync: a full disk is ENOSPC/EFBIG here, and path is removed so no half-written
// file is left behind.
int ps_h5_write_bytes(const char *path, const unsigned char *bytes, size_t n, ps_error *e) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644), rc = 0;
    if (fd < 0 || write_all(fd, bytes, n) != 0 || fsync(fd) != 0) {
        int err = errno;
        rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write results file: %s", path, strerror(err));
    }
    if (fd >= 0 && close(fd) != 0 && rc == 0) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot write results file: %s", path, strerror(errno));
    if (rc != 0) unlink(path);
    return rc;
}

// seal: the userblock gets the image's sha256 (every file the store or merge writes, a .partial too, so inspect
// reads none of ours unchecked).
int ps_h5_save(hid_t f, const char *path, int seal, ps_error *e) {
    unsigned char *b = NULL;
    size_t n = 0;
    if (ps_h5_file_bytes(f, path, seal, &b, &n, e) != 0) return -1;
    int rc = ps_h5_write_bytes(path, b, n, e);
    free(b);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// Checksums. A dataset's bytes: numbers as stored (read with the file's own type, so the same on every host);
// variable-length strings as each string's length (8 bytes, little-endian) then its bytes.

int64_t ps_h5_max_bytes(hid_t loc) {
    hid_t fid = H5Iget_file_id(loc);
    hsize_t size = 0;
    if (fid >= 0) {
        H5Fget_filesize(fid, &size);
        H5Fclose(fid);
    }
    return ps_h5_expand_bound((int64_t)size);
}

int64_t ps_h5_expand_bound(int64_t file_bytes) {
    // Our largest expansion is gzip's (at most ~1032:1) on chunked float arrays; a file that claims more is corrupt.
    const int64_t cap = (int64_t)1 << 36;
    if (file_bytes < 0 || file_bytes > cap / 1100) return cap;
    const int64_t b = file_bytes * 1100 + ((int64_t)1 << 20);
    return b < cap ? b : cap;
}

static int hash_dataset(hid_t d, unsigned char md[32]) {
    hid_t ft = H5Dget_type(d), sp = H5Dget_space(d);
    int rc = -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    hssize_t n = sp >= 0 ? H5Sget_simple_extent_npoints(sp) : -1;
    if (ft < 0 || sp < 0 || !ctx || n < 0 || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) goto out;
    const int is_vlstr = H5Tget_class(ft) == H5T_STRING && H5Tis_variable_str(ft) > 0;
    const size_t esz = is_vlstr ? sizeof(char *) : H5Tget_size(ft);
    if (esz == 0 || (int64_t)n > ps_h5_max_bytes(d) / (int64_t)esz) goto out; // a size the file cannot hold
    if (n > 0) {
        void *buf = calloc((size_t)n, esz);
        if (!buf) goto out;
        hid_t mt = is_vlstr ? ps_h5_vlstr_type() : H5Tcopy(ft);
        if (mt >= 0 && H5Dread(d, mt, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0) {
            rc = 0;
            if (is_vlstr) {
                char **s = buf;
                for (hssize_t i = 0; i < n; i++) {
                    const uint64_t len = s[i] ? strlen(s[i]) : 0;
                    unsigned char le[8];
                    for (int k = 0; k < 8; k++) le[k] = (unsigned char)(len >> (8 * k));
                    EVP_DigestUpdate(ctx, le, 8);
                    if (len) EVP_DigestUpdate(ctx, s[i], len);
                }
                ps_h5_vlen_reclaim(mt, sp, H5P_DEFAULT, buf);
            } else {
                EVP_DigestUpdate(ctx, buf, (size_t)n * esz);
            }
        }
        if (mt >= 0) H5Tclose(mt);
        free(buf);
        if (rc != 0) goto out;
    }
    rc = EVP_DigestFinal_ex(ctx, md, NULL) == 1 ? 0 : -1;
out:
    EVP_MD_CTX_free(ctx);
    if (ft >= 0) H5Tclose(ft);
    if (sp >= 0) H5Sclose(sp);
    return rc;
}

static void to_hex(const unsigned char md[32], char hex[65]) {
    for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

typedef struct {
    int verify;           // 0: write the attribute; 1: check it
    const char *file;     // for messages
    ps_error *e;
    int64_t n;            // datasets sealed or checked
    int rc;
} seal_ctx;

static herr_t seal_cb(hid_t root, const char *name, const H5O_info_t *info, void *data) {
    seal_ctx *c = data;
    if (info->type != H5O_TYPE_DATASET) return 0;
    hid_t d = H5Dopen2(root, name, H5P_DEFAULT);
    unsigned char md[32];
    char hex[65], want[128];
    if (d < 0 || hash_dataset(d, md) != 0) {
        char det[256];
        c->rc = ps_fail(c->e, PS_EXIT_BADINPUT, "%s: /%s: cannot read (the file is corrupt: %s)", c->file, name, ps_h5_detail(det));
        if (d >= 0) H5Dclose(d);
        return -1;
    }
    to_hex(md, hex);
    if (!c->verify) {
        if (ps_h5_attr_str(d, "sha256", hex) != 0) c->rc = ps_h5_fail(c->e, c->file, "/%s: cannot write sha256", name);
    } else if (ps_h5_read_attr_str(d, "sha256", want, sizeof want) != 0) {
        c->rc = ps_fail(c->e, PS_EXIT_BADINPUT, "%s: /%s: no sha256 attribute (the file is corrupt or was edited)", c->file, name);
    } else if (strcmp(want, hex) != 0) {
        c->rc = ps_fail(c->e, PS_EXIT_BADINPUT, "%s: /%s: checksum mismatch (the file is corrupt or was changed after it was written)",
                        c->file, name);
    }
    H5Dclose(d);
    c->n++;
    return c->rc == 0 ? 0 : -1;
}

// Walks every dataset of the file (/run/config, /prompts, /baseline, /results).
static int walk(hid_t f, seal_ctx *c) {
    herr_t r = H5Ovisit(f, H5_INDEX_NAME, H5_ITER_INC, seal_cb, c);
    if (c->rc != 0) return -1;
    if (r < 0) {
        char det[256];
        return ps_fail(c->e, PS_EXIT_BADINPUT, "%s: cannot list the datasets (the file is corrupt: %s)", c->file, ps_h5_detail(det));
    }
    return 0;
}

int ps_h5_seal(hid_t f, const char *file, ps_error *e) {
    seal_ctx c = {0, file, e, 0, 0};
    if (walk(f, &c) != 0) {
        if (e) e->code = PS_EXIT_RUNTIME; // our own file in memory: not bad input
        return -1;
    }
    hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
    int rc = run >= 0 && ps_h5_attr_str(run, "checksums", "sha256") == 0 ? 0 : ps_h5_fail(e, file, "/run: cannot write checksums");
    if (run >= 0) H5Gclose(run);
    return rc;
}

int ps_h5_verify(hid_t f, const char *file, int sealed, int64_t *n_checked, ps_error *e) {
    if (n_checked) *n_checked = 0;
    char kind[64] = "";
    hid_t run = H5Gopen2(f, "run", H5P_DEFAULT);
    if (run >= 0) {
        ps_h5_read_attr_str(run, "checksums", kind, sizeof kind);
        H5Gclose(run);
    }
    if (strcmp(kind, "sha256") != 0)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: /run: no checksums (written by an older patchsweep, or corrupt): cannot be trusted as complete", file);
    // Every file written with checksums is sealed too: a seal gone (its first bytes changed) is corruption.
    if (!sealed) return ps_fail(e, PS_EXIT_BADINPUT, "%s: userblock: the seal is missing (the file is corrupt or was edited)", file);
    seal_ctx c = {1, file, e, 0, 0};
    if (walk(f, &c) != 0) return -1;
    if (n_checked) *n_checked = c.n;
    return 0;
}

// 1: path carries no seal (written before seals, or not ours); 0: the seal matches; -1: it does not (e filled).
int ps_h5_check_seal(const char *path, ps_error *e) {
    int64_t size = 0;
    ps_error oe = {0};
    int fd = ps_open_regular(path, &size, &oe);
    if (fd < 0) return 1; // unreadable: the caller's own open says why
    char head[PS_H5_USERBLOCK];
    int rc = 1;
    if (size > PS_H5_USERBLOCK && pread(fd, head, sizeof head, 0) == (ssize_t)sizeof head &&
        memcmp(head, SEAL_MAGIC, sizeof SEAL_MAGIC - 1) == 0) {
        const size_t n = (size_t)(size - PS_H5_USERBLOCK);
        unsigned char *buf = malloc(n);
        char hex[65];
        if (!buf) {
            rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory (%lld bytes)", path, (long long)size);
        } else if (pread(fd, buf, n, PS_H5_USERBLOCK) != (ssize_t)n) {
            rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: cannot read: %s", path, strerror(errno));
        } else {
            ps_sha256_hex(buf, n, hex);
            const char *want = head + sizeof SEAL_MAGIC - 1;
            rc = strncmp(want, hex, 64) == 0 && want[64] == '\n' ? 0 : -1;
            if (rc) ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: its bytes do not match the sha256 written with it (userblock), so it is not read", path);
        }
        free(buf);
    }
    close(fd);
    return rc;
}

// ---------------------------------------------------------------------------------------------------------------
// How long a reading child may take before it is stopped (SIGALRM): libhdf5 can also loop forever on a crafted
// file. 30 s, plus 1 s per 50 MB of file (hashing every dataset runs at several hundred MB/s).
unsigned ps_h5_child_seconds(const char *path) {
    struct stat st;
    const int64_t size = stat(path, &st) == 0 ? (int64_t)st.st_size : 0;
    return 30u + (unsigned)(size / (50 << 20));
}

// The one line for a reading child killed by a signal.
int ps_h5_child_died(ps_error *e, const char *path, int sig, unsigned limit) {
    if (sig == SIGALRM)
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: libhdf5 did not finish reading it in %u s", path, limit);
    return ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: libhdf5 crashed reading it (signal %d)", path, sig);
}

// fn in a child process (libhdf5 can crash on a corrupt or crafted file; see inspect.c): its ps_error and the bytes
// it returns come back through a pipe, and a child killed by a signal is PS_EXIT_BADINPUT "PATH: corrupt: ...".
// The reply: rc, ps_error, then (rc == 0) a uint64 length and that many bytes.
int ps_h5_guarded_buf(const char *path, unsigned seconds, int (*fn)(void *arg, unsigned char **out, size_t *out_len, ps_error *e),
                      void *arg, unsigned char **out, size_t *out_len, size_t max_len, ps_error *e) {
    *out = NULL;
    *out_len = 0;
    int p[2];
    if (pipe(p) != 0) return ps_fail(e, PS_EXIT_RUNTIME, "%s: pipe: %s", path, strerror(errno));
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        close(p[0]);
        close(p[1]);
        return ps_fail(e, PS_EXIT_RUNTIME, "%s: fork: %s", path, strerror(errno));
    }
    if (pid == 0) {
        close(p[0]);
        // glibc's and libhdf5's own complaints ("free(): invalid pointer") would break the one-line promise.
        int devnull = open("/dev/null", O_WRONLY);
        if (devnull >= 0) dup2(devnull, 2);
        signal(SIGALRM, SIG_DFL);
        alarm(seconds);
        ps_error ce = {0};
        unsigned char *buf = NULL;
        size_t len = 0;
        int rc = fn(arg, &buf, &len, &ce);
        const uint64_t l64 = rc == 0 ? (uint64_t)len : 0;
        int ok = write_all(p[1], (const unsigned char *)&rc, sizeof rc) == 0 && write_all(p[1], (const unsigned char *)&ce, sizeof ce) == 0 &&
                 write_all(p[1], (const unsigned char *)&l64, sizeof l64) == 0 && (!l64 || write_all(p[1], buf, len) == 0);
        _exit(ok ? 0 : 1);
    }
    close(p[1]);
    int rc = -1;
    ps_error ce = {0};
    uint64_t l64 = 0;
    unsigned char head[sizeof rc + sizeof ce + sizeof l64];
    size_t got = 0, want = sizeof head;
    unsigned char *buf = NULL;
    int complete = 0, too_big = 0;
    while (got < want) {
        ssize_t r = read(p[0], head + got, want - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    if (got == want) {
        memcpy(&l64, head + sizeof rc + sizeof ce, sizeof l64);
        if (l64 > max_len) too_big = 1;
        else if (!(buf = malloc(l64 ? (size_t)l64 : 1))) too_big = 2;
        size_t g = 0;
        while (buf && g < l64) {
            ssize_t r = read(p[0], buf + g, (size_t)l64 - g);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            g += (size_t)r;
        }
        complete = buf && g == l64;
    }
    close(p[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {}
    if (WIFSIGNALED(st)) {
        rc = ps_h5_child_died(e, path, WTERMSIG(st), seconds);
    } else if (too_big == 2) {
        rc = ps_fail(e, PS_EXIT_RUNTIME, "%s: out of memory", path);
    } else if (too_big) {
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: reading it gave %llu bytes, more than it can hold", path, (unsigned long long)l64);
    } else if (!complete) { // died without a word: a crash a sanitizer (or an allocator) turned into an exit status
        rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: libhdf5 crashed reading it (exit %d)", path, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    } else {
        memcpy(&rc, head, sizeof rc);
        memcpy(&ce, head + sizeof rc, sizeof ce);
        if (rc != 0) {
            ce.msg[PS_ERR_MAX - 1] = 0;
            ps_fail(e, ce.code ? ce.code : PS_EXIT_RUNTIME, "%s", ce.msg);
        } else {
            *out = buf;
            *out_len = (size_t)l64;
            buf = NULL;
        }
    }
    free(buf);
    return rc;
}

// The fixed-size form: fn fills result_len bytes.
typedef struct {
    int (*fn)(void *arg, void *result, ps_error *e);
    void *arg;
    size_t result_len;
} fixed_call;

static int fixed_cb(void *arg, unsigned char **out, size_t *out_len, ps_error *e) {
    fixed_call *c = arg;
    unsigned char *r = calloc(1, c->result_len ? c->result_len : 1);
    if (!r) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory");
    int rc = c->fn(c->arg, r, e);
    *out = r;
    *out_len = c->result_len;
    return rc;
}

int ps_h5_guarded(const char *path, int (*fn)(void *arg, void *result, ps_error *e), void *arg, void *result, size_t result_len,
                  ps_error *e) {
    fixed_call c = {fn, arg, result_len};
    unsigned char *buf = NULL;
    size_t len = 0;
    int rc = ps_h5_guarded_buf(path, ps_h5_child_seconds(path), fixed_cb, &c, &buf, &len, result_len, e);
    if (rc == 0 && len != result_len) rc = ps_fail(e, PS_EXIT_BADINPUT, "%s: corrupt: libhdf5 crashed reading it (short reply)", path);
    if (rc == 0 && result_len) memcpy(result, buf, result_len);
    free(buf);
    return rc;
}
