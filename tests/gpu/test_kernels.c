// Each CUDA kernel against the CPU building block of the same arithmetic, on random inputs of odd sizes;
// attention and patching through whole forwards of small random models (head sizes 48, 64, 80, 128;
// sequence lengths 1, 7, 129; GPT-2, Llama with grouped-query attention, GPT-NeoX with partial rotary and
// both residual layouts); the backward pass's norm and rotary kernels.
// Tolerances: 1e-4 (absolute + relative) in fp32. GEMMs with fp16/bf16 weights are checked against a double
// reference computed from inputs rounded the same way, so the bound there is fp32 accumulation (1e-4 relative
// to the row's scale); whole forwards in fp16/bf16 use gpu_tol_for (documented there).
#include "gpu_common.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t seed = 12345;

static float *rand_array(int64_t n, float scale, float offset) {
    float *a = malloc((size_t)(n ? n : 1) * sizeof(float));
    for (int64_t i = 0; i < n; i++) a[i] = offset + scale * gpu_rand_uniform(&seed);
    return a;
}

static void test_norms(void) {
    const int64_t Ns[] = {1, 7, 129}, Cs[] = {48, 64, 80, 128, 777};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 5; b++) {
            const int64_t N = Ns[a], C = Cs[b];
            float *x = rand_array(N * C, 3.0f, 0.5f), *w = rand_array(C, 0.5f, 1.0f), *bias = rand_array(C, 0.2f, 0.0f);
            float *oc = malloc((size_t)(N * C) * 4), *og = malloc((size_t)(N * C) * 4);
            float *sc = malloc((size_t)N * 4), *sg = malloc((size_t)N * 4);
            ps_error e = {0};
            char name[128];
            ps_cpu_layernorm(oc, sc, x, w, bias, N, C, 1e-5f);
            TU_CHECK(ps_cuda_test_layernorm(og, sg, x, w, bias, N, C, 1e-5f, &e) == 0, "layernorm: %s", e.msg);
            snprintf(name, sizeof name, "layernorm N=%lld C=%lld out", (long long)N, (long long)C);
            tu_close(name, og, oc, N * C, 1e-4f, 1e-4f);
            snprintf(name, sizeof name, "layernorm N=%lld C=%lld scale", (long long)N, (long long)C);
            tu_close(name, sg, sc, N, 1e-4f, 1e-4f);
            ps_cpu_rmsnorm(oc, sc, x, w, N, C, 1e-6f);
            TU_CHECK(ps_cuda_test_rmsnorm(og, sg, x, w, N, C, 1e-6f, &e) == 0, "rmsnorm: %s", e.msg);
            snprintf(name, sizeof name, "rmsnorm N=%lld C=%lld out", (long long)N, (long long)C);
            tu_close(name, og, oc, N * C, 1e-4f, 1e-4f);
            snprintf(name, sizeof name, "rmsnorm N=%lld C=%lld scale", (long long)N, (long long)C);
            tu_close(name, sg, sc, N, 1e-4f, 1e-4f);
            free(x); free(w); free(bias); free(oc); free(og); free(sc); free(sg);
        }
}

static void test_rotary(void) {
    const int64_t Ts[] = {1, 7, 129}, Ds[] = {48, 64, 80, 128};
    const float thetas[] = {10000.0f, 500000.0f};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 4; b++)
            for (size_t c = 0; c < 2; c++) {
                const int64_t T = Ts[a], D = Ds[b], nh = 3;
                float *xc = rand_array(T * nh * D, 2.0f, 0.0f), *xg = malloc((size_t)(T * nh * D) * 4);
                memcpy(xg, xc, (size_t)(T * nh * D) * 4);
                int64_t *pos = malloc((size_t)T * sizeof *pos);
                for (int64_t i = 0; i < T; i++) pos[i] = 3 + 2 * i;  // not 0..T-1: rows that start mid-sequence
                ps_error e = {0};
                ps_cpu_rotary(xc, T, nh, D, D, pos, thetas[c]);
                TU_CHECK(ps_cuda_test_rotary(xg, T, nh, D, pos, thetas[c], &e) == 0, "rotary: %s", e.msg);
                char name[128];
                snprintf(name, sizeof name, "rotary T=%lld D=%lld theta=%g", (long long)T, (long long)D, thetas[c]);
                tu_close(name, xg, xc, T * nh * D, 1e-4f, 1e-4f);
                free(xc); free(xg); free(pos);
            }
}

// GPT-NeoX's partial rotary (the first rot_dim dims of a head) and the transposed rotation (the backward).
static void test_rotary_dims(void) {
    const int64_t Ts[] = {1, 7, 129}, Ds[] = {48, 64, 80, 128};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 4; b++)
            for (int k = 0; k < 3; k++)
                for (int bwd = 0; bwd < 2; bwd++) {
                    const int64_t T = Ts[a], D = Ds[b], nh = 5, R = k == 0 ? D / 4 / 2 * 2 : k == 1 ? D / 2 : D;
                    float *xc = rand_array(T * nh * D, 2.0f, 0.0f), *xg = malloc((size_t)(T * nh * D) * 4);
                    memcpy(xg, xc, (size_t)(T * nh * D) * 4);
                    int64_t *pos = malloc((size_t)T * sizeof *pos);
                    for (int64_t i = 0; i < T; i++) pos[i] = 1 + 3 * i;
                    ps_error e = {0};
                    if (bwd) ps_cpu_rotary_backward(xc, T, nh, D, R, pos, 10000.0f);
                    else ps_cpu_rotary(xc, T, nh, D, R, pos, 10000.0f);
                    TU_CHECK(ps_cuda_test_rotary_dims(xg, T, nh, D, R, pos, 10000.0f, bwd, &e) == 0, "rotary: %s", e.msg);
                    char name[128];
                    snprintf(name, sizeof name, "rotary%s T=%lld D=%lld rot_dim=%lld", bwd ? " backward" : "", (long long)T,
                             (long long)D, (long long)R);
                    tu_close(name, xg, xc, T * nh * D, 1e-4f, 1e-4f);
                    free(xc); free(xg); free(pos);
                }
}

// LayerNorm's and RMSNorm's backward (dx accumulated onto a nonzero start, the scale's own gradient).
static void test_norm_backward(void) {
    const int64_t Ns[] = {1, 7, 129}, Cs[] = {48, 64, 80, 128, 777};
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 5; b++)
            for (int rms = 0; rms < 2; rms++) {
                const int64_t N = Ns[a], C = Cs[b];
                float *x = rand_array(N * C, 3.0f, 0.5f), *w = rand_array(C, 0.5f, 1.0f), *bias = rand_array(C, 0.2f, 0.0f);
                float *dout = rand_array(N * C, 1.0f, 0.0f), *dxc = rand_array(N * C, 0.5f, 0.0f);
                float *dxg = malloc((size_t)(N * C) * 4), *out = malloc((size_t)(N * C) * 4), *sc = malloc((size_t)N * 4);
                float *dsc = malloc((size_t)N * 4), *dsg = malloc((size_t)N * 4);
                memcpy(dxg, dxc, (size_t)(N * C) * 4);
                if (rms) ps_cpu_rmsnorm(out, sc, x, w, N, C, 1e-6f);
                else ps_cpu_layernorm(out, sc, x, w, bias, N, C, 1e-5f);
                if (rms) ps_cpu_rmsnorm_backward(dxc, dsc, dout, x, sc, w, N, C);
                else ps_cpu_layernorm_backward(dxc, dsc, dout, x, sc, w, N, C);
                ps_error e = {0};
                TU_CHECK(ps_cuda_test_norm_backward(rms, dxg, dsg, dout, x, sc, w, N, C, &e) == 0, "norm backward: %s", e.msg);
                char name[128];
                snprintf(name, sizeof name, "%s backward N=%lld C=%lld dx", rms ? "rmsnorm" : "layernorm", (long long)N, (long long)C);
                tu_close(name, dxg, dxc, N * C, 1e-4f, 1e-4f);
                snprintf(name, sizeof name, "%s backward N=%lld C=%lld dscale", rms ? "rmsnorm" : "layernorm", (long long)N,
                         (long long)C);
                tu_close(name, dsg, dsc, N, 1e-4f, 1e-4f);
                free(x); free(w); free(bias); free(dout); free(dxc); free(dxg); free(out); free(sc); free(dsc); free(dsg);
            }
}

static void test_act(void) {
    const int64_t n = 1001;
    float *x = rand_array(n, 8.0f, 0.0f), *oc = malloc(n * 4), *og = malloc(n * 4);
    const char *names[] = {"gelu_new", "gelu", "relu", "silu"};
    for (int a = 0; a < 4; a++) {
        ps_error e = {0};
        for (int64_t i = 0; i < n; i++) oc[i] = ps_cpu_act((ps_act)a, x[i]);
        TU_CHECK(ps_cuda_test_act(og, x, n, (ps_act)a, &e) == 0, "act: %s", e.msg);
        char name[64];
        snprintf(name, sizeof name, "act %s", names[a]);
        tu_close(name, og, oc, n, 1e-4f, 1e-4f);
    }
    // Fused: bias, activation, SwiGLU gate.
    const int64_t N = 7, M = 129;
    float *h1 = rand_array(N * M, 4.0f, 0.0f), *h3 = rand_array(N * M, 2.0f, 0.0f), *bias = rand_array(M, 0.5f, 0.0f);
    float *h1c = malloc((size_t)(N * M) * 4), *h1g = malloc((size_t)(N * M) * 4);
    float *h2c = malloc((size_t)(N * M) * 4), *h2g = malloc((size_t)(N * M) * 4);
    for (int gate = 0; gate < 2; gate++) {
        const ps_act act = gate ? PS_ACT_SILU : PS_ACT_GELU_NEW;
        for (int64_t i = 0; i < N * M; i++) {
            h1c[i] = h1[i] + bias[i % M];
            float a = ps_cpu_act(act, h1c[i]);
            h2c[i] = gate ? a * h3[i] : a;
        }
        memcpy(h1g, h1, (size_t)(N * M) * 4);
        ps_error e = {0};
        TU_CHECK(ps_cuda_test_mlp_act(h2g, h1g, gate ? h3 : NULL, bias, N, M, act, &e) == 0, "mlp_act: %s", e.msg);
        tu_close(gate ? "mlp_act swiglu pre" : "mlp_act gelu_new pre", h1g, h1c, N * M, 1e-4f, 1e-4f);
        tu_close(gate ? "mlp_act swiglu post" : "mlp_act gelu_new post", h2g, h2c, N * M, 1e-4f, 1e-4f);
    }
    free(x); free(oc); free(og); free(h1); free(h3); free(bias); free(h1c); free(h1g); free(h2c); free(h2g);
}

// x rounded to fp16 (11 significant bits, subnormals below 2^-14) or bf16 (8 bits), ties to even.
static double round_to(double x, ps_precision p) {
    if (p == PS_PREC_FP32 || x == 0) return (double)(float)x;
    int ex;
    frexp(x, &ex);  // |x| in [2^(ex-1), 2^ex)
    double q;
    if (p == PS_PREC_FP16) q = ldexp(1.0, (ex - 1 < -14 ? -14 : ex - 1) - 10);
    else q = ldexp(1.0, ex - 1 - 7);
    return nearbyint(x / q) * q;
}

static void test_gemm(void) {
    const int64_t Ns[] = {1, 7, 129};
    const int64_t in = 77, out = 131;
    const ps_precision precs[] = {PS_PREC_FP32, PS_PREC_FP16, PS_PREC_BF16};
    for (size_t a = 0; a < 3; a++)
        for (size_t p = 0; p < 3; p++)
            for (int trans = 0; trans < 2; trans++) {
                const int64_t N = Ns[a];
                float *x = rand_array(N * in, 2.0f, 0.0f), *W = rand_array(in * out, 0.3f, 0.0f);
                float *bias = rand_array(out, 1.0f, 0.0f);
                float *yc = malloc((size_t)(N * out) * 4), *yg = malloc((size_t)(N * out) * 4);
                float scale = 0;
                for (int64_t i = 0; i < N; i++)
                    for (int64_t j = 0; j < out; j++) {
                        double acc = 0, mag = 0;
                        for (int64_t k = 0; k < in; k++) {
                            const double wv = trans ? W[j * in + k] : W[k * out + j];
                            const double prod = round_to(x[i * in + k], precs[p]) * round_to(wv, precs[p]);
                            acc += prod;
                            mag += fabs(prod);
                        }
                        yc[i * out + j] = (float)(acc + bias[j]);
                        if (mag > scale) scale = (float)mag;
                    }
                ps_error e = {0};
                TU_CHECK(ps_cuda_test_gemm(yg, x, W, bias, N, in, out, trans, precs[p], &e) == 0, "gemm: %s", e.msg);
                char name[128];
                snprintf(name, sizeof name, "gemm %s N=%lld %s", ps_precision_name(precs[p]), (long long)N,
                         trans ? "x@W^T" : "x@W");
                // fp32 accumulation over `in` terms: error well below 1e-4 of the sum of |products|.
                tu_close(name, yg, yc, N * out, 1e-4f * (scale > 1 ? scale : 1), 1e-4f);
                free(x); free(W); free(bias); free(yc); free(yg);
            }
}

static void test_residual(void) {
    const int64_t n = 129 * 77;
    float *x = rand_array(n, 1.0f, 0.0f), *y = rand_array(n, 1.0f, 0.0f), *want = malloc((size_t)n * 4);
    for (int64_t i = 0; i < n; i++) want[i] = x[i] + y[i];
    ps_error e = {0};
    TU_CHECK(ps_cuda_test_residual(x, y, n, &e) == 0, "residual: %s", e.msg);
    tu_close("residual add", x, want, n, 0.0f, 0.0f);
    free(x); free(y); free(want);
}

// Attention (with prefix keys from a base cache, GQA, pattern patches) and every patch site, via forwards.
static void test_forward_random(void) {
    const int64_t Ds[] = {48, 64, 80, 128};
    const int64_t Ts[] = {1, 7, 129};
    for (size_t d = 0; d < 4; d++)
        for (int arch = 0; arch < 3; arch++) {
            // GPT-2 (3 heads), Llama (4 heads, 2 kv heads), GPT-NeoX (5 heads, partial rotary; parallel residual
            // for D = 48 and 80, sequential for 64 and 128).
            const int64_t D = Ds[d], H = arch == 1 ? 4 : arch == 2 ? 5 : 3, Hkv = arch == 1 ? 2 : H, C = H * D;
            ps_model m;
            if (gpu_random_model(&m, (ps_arch)arch, 2, H, Hkv, D, 2 * C + 3, 101, 160, 777 + d) != 0) {
                TU_CHECK(0, "random model: out of memory");
                continue;
            }
            if (arch == PS_ARCH_NEOX) m.cfg.parallel_residual = d % 2 == 0;
            char label[64];
            snprintf(label, sizeof label, "random %s D=%lld", arch == 1 ? "llama" : arch == 2 ? "neox" : "gpt2", (long long)D);
            gpu_compare_model(&m, label, PS_PREC_FP32, Ts, 3);
            if (D == 64) {
                gpu_compare_model(&m, label, PS_PREC_FP16, Ts, 3);
                gpu_compare_model(&m, label, PS_PREC_BF16, Ts, 3);
            }
            gpu_free_model(&m);
        }
}

int main(void) {
    gpu_require_device();
    test_norms();
    test_rotary();
    test_rotary_dims();
    test_norm_backward();
    test_act();
    test_gemm();
    test_residual();
    test_forward_random();
    return tu_done("gpu kernels");
}
