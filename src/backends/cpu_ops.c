// The CPU backend's building blocks: norms, rotary, activations and the row-blocked GEMM (also the
// references the CUDA kernels are tested against), and beside each its backward pass (ps_backward.h).
#include "cpu_internal.h"
#include "ps_backward.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

// The norms' sums, in double with eight interleaved partial sums: a fixed order that any vector width
// reproduces, so the compiler vectorizes them (a single running sum cannot be reordered, and was half a
// sweep's norm time). sum of (x[c] - shift)^p for p = 1 or 2.
static inline double sum8(const float *x, int64_t n, double shift, int p) {
    double acc[8] = {0};
    int64_t c = 0;
    for (; c + 8 <= n; c += 8)
        for (int k = 0; k < 8; k++) {
            const double d = (double)x[c + k] - shift;
            acc[k] += p == 1 ? d : d * d;
        }
    for (int k = 0; c < n; c++, k++) {
        const double d = (double)x[c] - shift;
        acc[k] += p == 1 ? d : d * d;
    }
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// One row of each norm (cloned for AVX2 / AVX-512: no FMA, the same bits as the baseline code).
PS_CLONES static void layernorm_row(float *out, float *scale, const float *xi, const float *w, const float *b, int64_t C, float eps) {
    const double mean = sum8(xi, C, 0.0, 1) / (double)C;
    const double var = sum8(xi, C, mean, 2) / (double)C;
    const float s = (float)sqrt(var + eps);
    if (scale) *scale = s;
    // fp32 from here, as TransformerLens normalizes ((x - mean) / scale); the double division this loop was
    // spent half the time of a norm converting and dividing.
    const float m = (float)mean;
    for (int64_t c = 0; c < C; c++) out[c] = (xi[c] - m) / s * w[c] + b[c];
}

PS_CLONES static void rmsnorm_row(float *out, float *scale, const float *xi, const float *w, int64_t C, float eps) {
    const float s = (float)sqrt(sum8(xi, C, 0.0, 2) / (double)C + eps);
    if (scale) *scale = s;
    for (int64_t c = 0; c < C; c++) out[c] = (xi[c] / s) * w[c];
}

void ps_cpu_layernorm(float *out, float *scale, const float *x, const float *w, const float *b, int64_t N, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (N * C >= PS_PAR_MIN)
    for (int64_t i = 0; i < N; i++) layernorm_row(out + i * C, scale ? scale + i : NULL, x + i * C, w, b, C, eps);
}

void ps_cpu_rmsnorm(float *out, float *scale, const float *x, const float *w, int64_t N, int64_t C, float eps) {
#pragma omp parallel for schedule(static) if (N * C >= PS_PAR_MIN)
    for (int64_t i = 0; i < N; i++) rmsnorm_row(out + i * C, scale ? scale + i : NULL, x + i * C, w, C, eps);
}

// Hugging Face's rotate_half layout: pairs (i, i + R/2) of each head's first R = rot_dim dims, angle
// pos * theta^(-2i/R); dims [R, D) pass through (GPT-NeoX's partial rotary; R = D for Llama). sign -1 rotates
// by the negated angles: the transpose, rotary's backward.
static void rotate(float *x, int64_t T, int64_t n_heads, int64_t D, int64_t rot_dim, const int64_t *pos, float theta, float sign) {
    const int64_t half = rot_dim / 2;
    for (int64_t t = 0; t < T; t++) {
        for (int64_t i = 0; i < half; i++) {
            double inv_freq = pow((double)theta, -(double)(2 * i) / (double)rot_dim);
            double ang = (double)pos[t] * (double)(float)inv_freq;
            float cs = (float)cos(ang), sn = sign * (float)sin(ang);
            for (int64_t h = 0; h < n_heads; h++) {
                float *xh = x + (t * n_heads + h) * D;
                float a = xh[i], b = xh[i + half];
                xh[i] = a * cs - b * sn;
                xh[i + half] = b * cs + a * sn;
            }
        }
    }
}

void ps_cpu_rotary(float *x, int64_t T, int64_t n_heads, int64_t D, int64_t rot_dim, const int64_t *pos, float theta) {
    rotate(x, T, n_heads, D, rot_dim, pos, theta, 1.0f);
}

// tanh as Eigen's rational approximation: within 4e-7 of tanh over all floats (tanhf: 1e-7), and, being
// plain arithmetic without branches, vectorized by the compiler; tanhf was a fifth of a GPT-2 sweep's time.
// (Eigen returns x itself below |x| < 4e-4; the rational form differs there by 1.3e-7 relative, and the
// branch kept the loop from vectorizing.)
static inline float tanh_rational(float x) {
    const float clamp = 7.90531110763549805f;
    const float xc = x > clamp ? clamp : (x < -clamp ? -clamp : x), x2 = xc * xc;
    float p = -2.76076847742355e-16f;
    p = p * x2 + 2.00018790482477e-13f;
    p = p * x2 - 8.60467152213735e-11f;
    p = p * x2 + 5.12229709037114e-08f;
    p = p * x2 + 1.48572235717979e-05f;
    p = p * x2 + 6.37261928875436e-04f;
    p = p * x2 + 4.89352455891786e-03f;
    float q = 1.19825839466702e-06f;
    q = q * x2 + 1.18534705686654e-04f;
    q = q * x2 + 2.26843463243900e-03f;
    q = q * x2 + 4.89352518554385e-03f;
    return p * xc / q;
}

static inline float gelu_new(float x) {
    return 0.5f * x * (1.0f + tanh_rational(0.7978845608028654f * (x + 0.044715f * x * x * x)));
}

float ps_cpu_act(ps_act act, float x) {
    switch (act) {
    case PS_ACT_GELU_NEW: return gelu_new(x);
    case PS_ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.7071067811865476f));
    case PS_ACT_RELU: return x > 0 ? x : 0;
    case PS_ACT_SILU: return x / (1.0f + expf(-x));
    }
    return x;
}

#ifdef PS_CPU_PROFILE
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static double prof_s[PS_PROF_N], gemm_s[5], gemm_gflop[5];
static const char *const prof_name[PS_PROF_N] = {"gemm", "attention", "norm", "activation", "copies", "hooks", "unembed",
                                                 "baselines (cache rows)", "forward total"};
double ps_prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
// Atomic: the forward's pieces (cpu_forward.c) add from every thread.
void ps_prof_add(int step, double t0) {
    const double dt = ps_prof_now() - t0;
#pragma omp atomic
    prof_s[step] += dt;
}
void ps_prof_gemm(int64_t n, int64_t in, int64_t out, double t0) {
    const int b = n < 8 ? 0 : n < 32 ? 1 : n < 128 ? 2 : n < 512 ? 3 : 4;
    const double dt = ps_prof_now() - t0, gflop = 2e-9 * (double)n * (double)in * (double)out;
#pragma omp atomic
    gemm_s[b] += dt;
#pragma omp atomic
    gemm_gflop[b] += gflop;
}
// The floor's GEMM rate in CPU time: the best of bench/sweeps' three shapes on this BLAS, one thread.
static double gemm_rate_cpu(void) {
    static const int shapes[3][3] = {{256, 768, 3072}, {256, 3072, 768}, {256, 768, 2304}};
    double best = 0;
    for (int sh = 0; sh < 3; sh++) {
        const int M = shapes[sh][0], K = shapes[sh][1], N = shapes[sh][2];
        float *a = malloc((size_t)M * K * sizeof(float)), *b = malloc((size_t)K * N * sizeof(float)), *c = malloc((size_t)M * N * sizeof(float));
        if (!a || !b || !c) { free(a); free(b); free(c); continue; }
        for (int64_t i = 0; i < (int64_t)M * K; i++) a[i] = (float)(i % 7) * 0.1f;
        for (int64_t i = 0; i < (int64_t)K * N; i++) b[i] = (float)(i % 5) * 0.1f;
        for (int rep = 0; rep < 3; rep++) {
            const double t0 = ps_prof_now();
            int64_t it = 0;
            do {
                ps_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
                it++;
            } while (ps_prof_now() - t0 < 0.3);
            const double r = 2e-9 * M * (double)K * N * (double)it / (ps_prof_now() - t0);
            if (r > best) best = r;
        }
        free(a); free(b); free(c);
    }
    return best;
}

__attribute__((destructor)) static void prof_print(void) {
    if (prof_s[PS_PROF_FORWARD] <= 0) return;
    for (int i = 0; i < PS_PROF_N; i++) fprintf(stderr, "profile: %-24s %8.3f s cpu\n", prof_name[i], prof_s[i]);
    static const char *const bucket[5] = {"<8", "8-31", "32-127", "128-511", ">=512"};
    for (int b = 0; b < 5; b++)
        fprintf(stderr, "profile: linear rows %-8s %8.3f s %10.2f GFLOP %7.1f GFLOP/s\n", bucket[b], gemm_s[b], gemm_gflop[b],
                gemm_s[b] > 0 ? gemm_gflop[b] / gemm_s[b] : 0.0);
    ps_blas_set_num_threads(1);
    fprintf(stderr, "profile: gemm rate %.1f GFLOP/s cpu (best of 256x768x3072, 256x3072x768, 256x768x2304, one thread)\n",
            gemm_rate_cpu());
}
#endif

// y (N, out) = x (N, in) @ W (in, out) [+ bias]: ps_sgemm_par, one block per OpenMP thread, each a
// single-threaded BLAS call (OpenBLAS's own thread pool and OpenMP's workers, each spinning while the other
// ran, left a third of the CPU idle). Blocks of columns where N < out: by rows, each thread packed all of W,
// and rows rounded to 16 left the threads uneven (64 + 36 of 100 rows): in CPU time inside the GEMMs
// (loaded machine) 137 -> 169 GFLOP/s a core at 100 x 768 x 3072, 176 -> 202 at 256 x 768 x 3072; the
// baselines' 12-token GEMMs, one block before, now use both threads.
void ps_cpu_linear(float *y, const float *x, const float *W, const float *bias, int64_t N, int64_t in, int64_t out) {
    const ps_gemm g = {.C = y, .A = x, .B = W, .bias = bias, .M = N, .N = out, .K = in, .lda = in, .ldb = out, .ldc = out};
    ps_cpu_linear_n(&g, 1);
}

void ps_cpu_linear_n(const ps_gemm *g, int n) {
    if (n <= 0) return;
#ifdef PS_CPU_PROFILE
    const double prof_t0 = ps_prof_now();
    int64_t out = 0;
    for (int i = 0; i < n; i++) out += g[i].N;
#endif
    ps_sgemm_par(g, n);
#ifdef PS_CPU_PROFILE
    ps_prof_gemm(g[0].M, g[0].K, out, prof_t0); // the calls share M and K (Q, K and V)
    ps_prof_add(PS_PROF_GEMM, prof_t0);
#endif
}

PS_CLONES void ps_cpu_bias_gelu_new_n(float *out, float *in, const float *bias, int64_t n) {
    if (bias)
        for (int64_t i = 0; i < n; i++) in[i] += bias[i];
    for (int64_t i = 0; i < n; i++) out[i] = gelu_new(in[i]);
}

// ---------------------------------------------------------------------------------------------
// Backward passes of the blocks above (ps_backward.h), each the transpose of its forward's arithmetic.

// LayerNorm: xhat = (x - mean) / s, out = xhat * w + b, s = sqrt(var + eps). With dxhat = dout * w, the
// scale's own gradient is -sum(dxhat xhat) / s, and the total gradient at x is
// (dxhat - mean(dxhat) - xhat mean(dxhat xhat)) / s.
void ps_cpu_layernorm_backward(float *dx, float *dscale, const float *dout, const float *x, const float *scale, const float *w,
                               int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (N * C >= PS_PAR_MIN)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C, *di = dout + i * C;
        const float s = scale[i];
        double mean = 0;
        for (int64_t c = 0; c < C; c++) mean += xi[c];
        mean /= (double)C;
        double a = 0, bsum = 0;
        for (int64_t c = 0; c < C; c++) {
            const double dxh = (double)di[c] * w[c];
            a += dxh;
            bsum += dxh * ((xi[c] - mean) / s);
        }
        if (dscale) dscale[i] = (float)(-bsum / s);
        a /= (double)C;
        bsum /= (double)C;
        for (int64_t c = 0; c < C; c++) {
            const double xh = (xi[c] - mean) / s;
            dx[i * C + c] += (float)(((double)di[c] * w[c] - a - xh * bsum) / s);
        }
    }
}

// RMSNorm: xhat = x / s, out = xhat * w: dx = (dxhat - xhat mean(dxhat xhat)) / s.
void ps_cpu_rmsnorm_backward(float *dx, float *dscale, const float *dout, const float *x, const float *scale, const float *w,
                             int64_t N, int64_t C) {
#pragma omp parallel for schedule(static) if (N * C >= PS_PAR_MIN)
    for (int64_t i = 0; i < N; i++) {
        const float *xi = x + i * C, *di = dout + i * C;
        const float s = scale[i];
        double bsum = 0;
        for (int64_t c = 0; c < C; c++) bsum += (double)di[c] * w[c] * ((double)xi[c] / s);
        if (dscale) dscale[i] = (float)(-bsum / s);
        bsum /= (double)C;
        for (int64_t c = 0; c < C; c++)
            dx[i * C + c] += (float)(((double)di[c] * w[c] - ((double)xi[c] / s) * bsum) / s);
    }
}

// The forward's rotation, transposed: the same angles, negated.
void ps_cpu_rotary_backward(float *dx, int64_t T, int64_t n_heads, int64_t D, int64_t rot_dim, const int64_t *pos, float theta) {
    rotate(dx, T, n_heads, D, rot_dim, pos, theta, -1.0f);
}

float ps_cpu_act_backward(ps_act act, float x) {
    switch (act) {
    case PS_ACT_GELU_NEW: {
        const float k = 0.7978845608028654f, t = tanhf(k * (x + 0.044715f * x * x * x));
        return 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * k * (1.0f + 3.0f * 0.044715f * x * x);
    }
    case PS_ACT_GELU: return 0.5f * (1.0f + erff(x * 0.7071067811865476f)) + x * expf(-0.5f * x * x) * 0.3989422804014327f;
    case PS_ACT_RELU: return x > 0 ? 1.0f : 0.0f;
    case PS_ACT_SILU: {
        const float s = 1.0f / (1.0f + expf(-x));
        return s * (1.0f + x * (1.0f - s));
    }
    }
    return 1.0f;
}
