// The CUDA backend's weights: every tensor of the model uploaded once into one device allocation, the
// matrices rounded to fp16/bf16 on the device when the backend runs in half precision (vectors stay fp32);
// a streamed (memory-mapped) checkpoint goes up layer by layer. Unrun: no GPU has executed this file yet.
#include "ps_cuda_internal.h"

// One entry of the weight table: a host tensor, where it goes, and whether it is a matrix (stored in the
// chosen precision) or a vector (kept fp32).
typedef struct {
    const float *host;
    size_t n;
    int matrix;
    ps_cu_mat *mat;
    const float **vec;
    int layer_field;   // streamed models: which ps_layer_weights matrix (0..6) comes layer by layer; -1 none
} wspec;

// n floats of host h into dst: a vector (matrix = 0) or an fp32 matrix as they are; an fp16/bf16 matrix in
// chunks through the fp32 stage, rounded on the device.
static int upload(ps_cu_backend *im, char *dst, const float *h, size_t n, int matrix, float *stage, size_t chunk,
                  ps_error *e) {
    const ps_precision prec = im->ctx.prec;
    if (!matrix || prec == PS_PREC_FP32) {
        CUDA_CHECK(e, cudaMemcpy(dst, h, n * sizeof(float), cudaMemcpyHostToDevice));
        return 0;
    }
    PS_REQUIRE(e, stage && chunk > 0);
    for (size_t o = 0; o < n; o += chunk) {
        const size_t k = n - o < chunk ? n - o : chunk;
        CUDA_CHECK(e, cudaMemcpy(stage, h + o, k * sizeof(float), cudaMemcpyHostToDevice));
        PS_TRY(ps_cu_cast_launch(0, dst + o * 2, prec, stage, (int64_t)k, im->ctx.overflow, e));
        CUDA_CHECK(e, cudaDeviceSynchronize());  // the stage buffer is reused by the next chunk
    }
    return 0;
}

int ps_cu_upload_weights(ps_cu_backend *im, const ps_model *m, ps_error *e) {
    const ps_model_config *cfg = &m->cfg;
    const ps_weights *w = &m->w;
    ps_cu_weights *d = &im->ctx.w;
    const size_t L = (size_t)cfg->n_layers, C = (size_t)cfg->d_model, QD = (size_t)(cfg->n_heads * cfg->d_head),
                 KD = (size_t)(cfg->n_kv_heads * cfg->d_head), M = (size_t)cfg->d_mlp, V = (size_t)cfg->d_vocab,
                 P = (size_t)cfg->n_ctx;
    const int tied = w->w_u == w->wte;
    wspec spec[] = {
        {w->wte, V * C, 1, &d->wte, NULL, -1},          {w->wpe, P * C, 1, &d->wpe, NULL, -1},
        {w->ln1_w, L * C, 0, NULL, &d->ln1_w, -1},      {w->ln1_b, L * C, 0, NULL, &d->ln1_b, -1},
        {w->w_q, L * C * QD, 1, &d->w_q, NULL, 0},      {w->w_k, L * C * KD, 1, &d->w_k, NULL, 1},
        {w->w_v, L * C * KD, 1, &d->w_v, NULL, 2},      {w->b_q, L * QD, 0, NULL, &d->b_q, -1},
        {w->b_k, L * KD, 0, NULL, &d->b_k, -1},         {w->b_v, L * KD, 0, NULL, &d->b_v, -1},
        {w->w_o, L * QD * C, 1, &d->w_o, NULL, 3},      {w->b_o, L * C, 0, NULL, &d->b_o, -1},
        {w->ln2_w, L * C, 0, NULL, &d->ln2_w, -1},      {w->ln2_b, L * C, 0, NULL, &d->ln2_b, -1},
        {w->w_in, L * C * M, 1, &d->w_in, NULL, 4},     {w->w_up, L * C * M, 1, &d->w_up, NULL, 5},
        {w->b_in, L * M, 0, NULL, &d->b_in, -1},        {w->w_out, L * M * C, 1, &d->w_out, NULL, 6},
        {w->b_out, L * C, 0, NULL, &d->b_out, -1},      {w->lnf_w, C, 0, NULL, &d->lnf_w, -1},
        {w->lnf_b, C, 0, NULL, &d->lnf_b, -1},          {tied ? NULL : w->w_u, V * C, 1, &d->w_u, NULL, -1},
        {w->b_u, V, 0, NULL, &d->b_u, -1},
    };
    // A streamed model keeps its layer matrices in the mapped file: mark them present; they go up layer by layer.
    static const float stream_marker = 0;
    const int llama_up = cfg->arch == PS_ARCH_LLAMA;
    if (m->stream)
        for (size_t i = 0; i < sizeof spec / sizeof spec[0]; i++)
            if (spec[i].layer_field >= 0 && !spec[i].host && (spec[i].layer_field != 5 || llama_up)) spec[i].host = &stream_marker;
    const size_t n_spec = sizeof spec / sizeof spec[0];
    const ps_precision prec = im->ctx.prec;
    // Places: every tensor 256-byte aligned in one allocation, in the table's order.
    size_t total = 0, biggest = 0, place[sizeof spec / sizeof spec[0]];
    int streamed = 0;
    for (size_t i = 0; i < n_spec; i++) {
        place[i] = 0;
        if (!spec[i].host) continue;
        place[i] = total = ps_cu_align_up(total, 256);
        total += spec[i].n * (spec[i].matrix ? ps_cu_dt_size(prec) : 4);
        if (spec[i].matrix && spec[i].n > biggest) biggest = spec[i].n;
        streamed |= spec[i].host == &stream_marker;
    }
    CUDA_CHECK(e, cudaMalloc(&im->wmem, total ? total : 1));
    im->wbytes = total;
    for (size_t i = 0; i < n_spec; i++) {
        char *dst = spec[i].host ? (char *)im->wmem + place[i] : NULL;
        if (spec[i].mat) { spec[i].mat->p = dst; spec[i].mat->dt = prec; }
        if (spec[i].vec) *spec[i].vec = (const float *)dst;
    }
    // fp16/bf16: each matrix goes up in fp32 chunks and is rounded on the device.
    float *stage = NULL;
    const size_t chunk = biggest < ((size_t)16 << 20) ? biggest : ((size_t)16 << 20);
    if (prec != PS_PREC_FP32 && chunk) CUDA_CHECK(e, cudaMalloc((void **)&stage, chunk * sizeof(float)));
    int rc = 0;
    for (size_t i = 0; i < n_spec && !rc; i++)
        if (spec[i].host && spec[i].host != &stream_marker)
            rc = upload(im, (char *)im->wmem + place[i], spec[i].host, spec[i].n, spec[i].matrix, stage, chunk, e);
    // Streamed layer matrices: each layer is read (converted from the file's dtype on the host) once, and all
    // of its matrices go up from that one buffer.
    for (size_t l = 0; l < L && streamed && !rc; l++) {
        ps_layer_weights lw;
        if (ps_model_layer(m, (int64_t)l, &lw, e) != 0) { rc = -1; break; }
        const float *src[] = {lw.w_q, lw.w_k, lw.w_v, lw.w_o, lw.w_in, lw.w_up, lw.w_out};
        for (size_t i = 0; i < n_spec && !rc; i++) {
            if (spec[i].host != &stream_marker) continue;
            const float *h = src[spec[i].layer_field];
            const size_t per = spec[i].n / L;
            if (!h) rc = ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: layer %zu of the streamed model has no matrix %d", l, spec[i].layer_field);
            else rc = upload(im, (char *)im->wmem + place[i] + l * per * ps_cu_dt_size(prec), h, per, 1, stage, chunk, e);
        }
    }
    if (!rc) {
        cudaError_t err = cudaDeviceSynchronize();
        if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "CUDA backend: uploading weights: %s", cudaGetErrorString(err));
    }
    if (!rc && im->ctx.overflow) {
        // A weight beyond fp16's range would be inf in every product that uses it.
        int flag = 0;
        cudaError_t err = cudaMemcpy(&flag, im->ctx.overflow, sizeof flag, cudaMemcpyDeviceToHost);
        if (err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: cudaMemcpy: %s", __FILE__, __LINE__, cudaGetErrorString(err));
        else if (flag) rc = ps_fail(e, PS_EXIT_BADINPUT, "CUDA backend: a weight of this model exceeds fp16's range (65504); use precision bf16 or fp32");
    }
    {
        const cudaError_t err = cudaFree(stage);
        if (!rc && err != cudaSuccess) rc = ps_fail(e, PS_EXIT_RUNTIME, "%s:%d: cudaFree(stage): %s", __FILE__, __LINE__, cudaGetErrorString(err));
    }
    if (rc) return rc;
    if (tied) d->w_u = d->wte;
    return 0;
}
