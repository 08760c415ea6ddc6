// The MLP activation's backward pass (cpu_backward.c's mlp_step_backward): d pre = d post * act'(pre), and for
// Llama's SwiGLU (post = act(gate) * up) d gate = d post * up * act'(gate), d up = d post * act(gate).
// act' is ps_cpu_act_backward's formula. Unrun: no GPU has executed this file yet.
#include "ps_cuda_internal.h"

static __device__ __forceinline__ float act_grad(ps_act act, float x) {
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

// n elements; lin/dlin NULL for an ungated MLP.
static __global__ void mlp_act_backward_kernel(float *dpre, float *dlin, const float *dpost, const float *pre,
                                               const float *lin, int64_t n, ps_act act) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x) {
        const float p = pre[i];
        if (lin) {
            dpre[i] = dpost[i] * lin[i] * act_grad(act, p);
            dlin[i] = dpost[i] * ps_cu_act_f(act, p);
        } else {
            dpre[i] = dpost[i] * act_grad(act, p);
        }
    }
}

int ps_cu_mlp_act_backward_launch(cudaStream_t st, float *dpre, float *dlin, const float *dpost, const float *pre,
                                  const float *lin, int64_t n, ps_act act, ps_error *e) {
    PS_REQUIRE(e, n >= 0);
    PS_REQUIRE(e, act == PS_ACT_GELU_NEW || act == PS_ACT_GELU || act == PS_ACT_RELU || act == PS_ACT_SILU);
    PS_REQUIRE(e, !lin == !dlin);
    if (n == 0) return 0;
    PS_REQUIRE(e, dpre && dpost && pre);
    mlp_act_backward_kernel<<<ps_cu_blocks(n, 256), 256, 0, st>>>(dpre, dlin, dpost, pre, lin, n, act);
    LAUNCH_CHECK(e);
    return 0;
}

int ps_cu_op_mlp_act_backward(ps_cu_ctx *c, float *dpre, float *dlin, const float *dpost, const float *pre,
                              const float *lin, int64_t T, ps_error *e) {
    return ps_cu_mlp_act_backward_launch(c->stream, dpre, dlin, dpost, pre, lin, T * c->cfg.d_mlp, c->cfg.act, e);
}
