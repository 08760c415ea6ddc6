// Metrics read from the logits at the positions they need: logit and probability differences,
// the teacher-forced log-probability of the answer, and KL divergence from the clean distribution;
// and each metric's gradient with respect to those logits (attribution patching's backward pass starts there).
#include "ps_engine.h"

#include <math.h>
#include <string.h>

void ps_metric_request_for(ps_metric_kind kind, const ps_prompt *p, ps_metric_request *rq) {
    rq->n_cols = 0;
    if (kind == PS_METRIC_LOGPROB) {
        rq->n_out = p->n_lp < PS_MAX_OUT_POS ? p->n_lp : PS_MAX_OUT_POS;
        for (int64_t i = 0; i < rq->n_out; i++) rq->out_pos[i] = p->lp_pos[i];
        return;
    }
    rq->n_out = 1;
    rq->out_pos[0] = p->score_pos;
    if (kind == PS_METRIC_LOGIT_DIFF) {
        // Only two columns of the unembedding are needed.
        rq->n_cols = 2;
        rq->cols[0] = p->answer_id;
        rq->cols[1] = p->wrong_id;
    }
}

// log-sum-exp of a row, in double.
static double logsumexp(const float *x, int64_t n) {
    double mx = x[0];
    for (int64_t i = 1; i < n; i++) mx = x[i] > mx ? x[i] : mx;
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += exp((double)x[i] - mx);
    return mx + log(s);
}

double ps_metric_value(ps_metric_kind kind, const ps_prompt *p, const ps_metric_request *rq, const float *logits,
                       int64_t V, const float *clean_logprobs) {
    switch (kind) {
    case PS_METRIC_LOGIT_DIFF:
        if (rq->n_cols == 2) return (double)logits[0] - (double)logits[1];
        return (double)logits[p->answer_id] - (double)logits[p->wrong_id];
    case PS_METRIC_PROB_DIFF: {
        double lse = logsumexp(logits, V);
        return exp(logits[p->answer_id] - lse) - exp(logits[p->wrong_id] - lse);
    }
    case PS_METRIC_LOGPROB: {
        double s = 0;
        for (int64_t i = 0; i < rq->n_out; i++) {
            const float *row = logits + i * V;
            s += row[p->lp_tok[i]] - logsumexp(row, V);
        }
        return s;
    }
    case PS_METRIC_KL: {
        if (!clean_logprobs) return NAN;
        double lse = logsumexp(logits, V), kl = 0;
        for (int64_t j = 0; j < V; j++) {
            double lc = clean_logprobs[j];
            kl += exp(lc) * (lc - ((double)logits[j] - lse));
        }
        return kl;
    }
    }
    return NAN;
}

// d metric / d logits: the backward pass's input (ps_metric_grad in ps_engine.h).
void ps_metric_grad(ps_metric_kind kind, const ps_prompt *p, const ps_metric_request *rq, const float *logits, int64_t V,
                    const float *clean_lp, float *dl) {
    memset(dl, 0, (size_t)(rq->n_out * V) * sizeof(float));
    for (int64_t o = 0; o < rq->n_out; o++) {
        const float *x = logits + o * V;
        float *d = dl + o * V;
        if (kind == PS_METRIC_LOGIT_DIFF) {
            d[p->answer_id] += 1.0f;
            d[p->wrong_id] -= 1.0f;
            continue;
        }
        // softmax of the row, in double
        double mx = x[0], s = 0;
        for (int64_t j = 1; j < V; j++) mx = x[j] > mx ? x[j] : mx;
        for (int64_t j = 0; j < V; j++) s += exp((double)x[j] - mx);
        for (int64_t j = 0; j < V; j++) {
            const double q = exp((double)x[j] - mx) / s;
            if (kind == PS_METRIC_PROB_DIFF) {
                // p_a - p_w: d p_a / d x_j = p_a (delta_aj - p_j)
                const double pa = exp((double)x[p->answer_id] - mx) / s, pw = exp((double)x[p->wrong_id] - mx) / s;
                d[j] = (float)(pa * ((j == p->answer_id) - q) - pw * ((j == p->wrong_id) - q));
            } else if (kind == PS_METRIC_LOGPROB) {
                d[j] = (float)((j == p->lp_tok[o]) - q);   // sum of log-softmax at each answer token
            } else {
                d[j] = clean_lp ? (float)(q - exp((double)clean_lp[j])) : NAN; // KL(clean || run)
            }
        }
    }
}
