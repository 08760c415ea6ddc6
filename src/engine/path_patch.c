// Path patching (ps_path_patch.h): ARENA's two passes per sender as rows of freezes, replaces and captures,
// every sender of a block and every prompt of a chunk in one ps_engine_rows call per pass; the table they fill.
#include "ps_path_patch.h"
#include "ps_producer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const RECV_NAMES[PS_RECV_COUNT] = {"resid_post", "q", "k", "v", "mlp"};

const char *ps_recv_input_name(ps_recv_input r) { return r >= 0 && r < PS_RECV_COUNT ? RECV_NAMES[r] : "?"; }

// The hook a receiver kind is captured at in pass 1 and patched at in pass 2.
static ps_site recv_site(ps_recv_input r) {
    switch (r) {
    case PS_RECV_Q: return PS_SITE_Q;
    case PS_RECV_K: return PS_SITE_K;
    case PS_RECV_V: return PS_SITE_V;
    default: return PS_SITE_MLP_POST;
    }
}

int ps_path_check(const ps_model_config *mc, const ps_path_spec *sp, const char *what, ps_error *e) {
    const int64_t L = mc->n_layers, H = mc->n_heads;
    if (sp->n_senders < 1) return ps_fail(e, PS_EXIT_BADINPUT, "%s: no senders", what);
    for (int64_t i = 0; i < sp->n_senders; i++) {
        const ps_node *s = &sp->senders[i];
        if (s->layer < 0 || s->layer >= L)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: senders[%lld]: layer %lld is outside the model's %lld layers", what, (long long)i,
                           (long long)s->layer, (long long)L);
        if (s->head < -1 || s->head >= H)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: senders[%lld]: head %lld is outside the model's %lld heads", what, (long long)i,
                           (long long)s->head, (long long)H);
    }
    if (sp->input < 0 || sp->input >= PS_RECV_COUNT) return ps_fail(e, PS_EXIT_BADINPUT, "%s: unknown receiver input", what);
    if (sp->input == PS_RECV_RESID_POST) {
        if (sp->n_receivers) return ps_fail(e, PS_EXIT_BADINPUT, "%s: the final resid_post takes no receiver list", what);
    } else if (sp->n_receivers < 1) {
        return ps_fail(e, PS_EXIT_BADINPUT, "%s: receivers of %s: the list is empty", what, ps_recv_input_name(sp->input));
    }
    const int64_t Hr = sp->input == PS_RECV_K || sp->input == PS_RECV_V ? mc->n_kv_heads : H;
    for (int64_t i = 0; i < sp->n_receivers; i++) {
        const ps_node *r = &sp->receivers[i];
        if (r->layer < 0 || r->layer >= L)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: receivers[%lld]: layer %lld is outside the model's %lld layers", what, (long long)i,
                           (long long)r->layer, (long long)L);
        if (sp->input == PS_RECV_MLP ? r->head != -1 : (r->head < 0 || r->head >= Hr))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: receivers[%lld]: head %lld is not one of the %lld %s of %s", what, (long long)i,
                           (long long)r->head, (long long)(sp->input == PS_RECV_MLP ? 0 : Hr),
                           Hr < H ? "key/value heads" : "heads", ps_recv_input_name(sp->input));
    }
    return 0;
}

// The sender positions of prompt p (resolved as a sweep resolves an experiment's positions); -1 = every
// position (no list). Returns how many were written to pos (at most sp->n_positions, or 1).
static int64_t sender_positions(const ps_path_spec *sp, const ps_prompt *p, int64_t *pos) {
    if (!sp->positions) { pos[0] = -1; return 1; }
    int64_t n = 0;
    for (int64_t k = 0; k < sp->n_positions; k++) {
        int64_t t = sp->positions[k];
        if (sp->position_role && sp->position_role[k]) t = ps_prompt_role(p, sp->position_role[k]);
        else if (t < 0) t += p->T_prompt;
        if (t < 0 || t >= p->T) continue;
        int dup = 0;
        for (int64_t j = 0; j < n; j++) dup |= pos[j] == t;
        if (!dup) pos[n++] = t;
    }
    return n;
}

static ps_patch mkpatch(ps_op op, ps_site s, int64_t layer, int64_t head, int64_t pos, const ps_cache *src) {
    return (ps_patch){.site = s, .layer = layer, .head = head, .pos = pos, .neuron = -1, .op = op, .src = src, .factor = 1.0f};
}

// Pass 1's patches for sender s: its output from new at its positions, every later head's z (and, with
// freeze_mlps, every MLP's output from the sender's own layer on) frozen at orig. Layers before the sender
// (and the heads of its own layer) cannot see it, so freezes there would change nothing. Returns the count.
static int64_t pass1_patches(const ps_model_config *mc, const ps_path_spec *sp, const ps_node *s, const int64_t *pos, int64_t n_pos,
                             const ps_cache *orig, const ps_cache *new_, ps_patch *out) {
    const int64_t L = mc->n_layers;
    const int mlp = s->head < 0;
    int64_t n = 0;
    for (int64_t k = 0; k < n_pos; k++)
        out[n++] = mkpatch(PS_OP_REPLACE, mlp ? PS_SITE_MLP_OUT : PS_SITE_Z, s->layer, mlp ? -1 : s->head, pos[k], new_);
    for (int64_t l = s->layer + 1; l < L; l++) out[n++] = mkpatch(PS_OP_FREEZE, PS_SITE_Z, l, -1, -1, orig);
    if (sp->freeze_mlps)
        for (int64_t l = s->layer + mlp; l < L; l++) out[n++] = mkpatch(PS_OP_FREEZE, PS_SITE_MLP_OUT, l, -1, -1, orig);
    return n;
}

// One block of rows: senders [s0, s1) for every prompt, laid out prompt-major.
typedef struct {
    ps_row *p1, *p2;
    ps_patch *pt1, *pt2;
    ps_capture *caps;
    float *cap_data, *logits;
    ps_metric_request *rq;
} block;

static void block_free(block *b) {
    free(b->p1); free(b->p2); free(b->pt1); free(b->pt2); free(b->caps); free(b->cap_data); free(b->logits); free(b->rq);
    memset(b, 0, sizeof *b);
}

static void add_stats(ps_rows_stats *dst, const ps_rows_stats *s) {
    dst->rows_run += s->rows_run;
    dst->rows_unchanged += s->rows_unchanged;
    dst->rows_narrowed += s->rows_narrowed;
    dst->flops += s->flops;
}

int ps_path_patch_chunk(const ps_model *m, ps_backend *be, const ps_path_spec *sp, const ps_path_item *items, int64_t n,
                        ps_metric_kind metric, const ps_rows_opts *o, size_t budget_bytes, float *values, ps_rows_stats *st,
                        ps_error *e) {
    const ps_model_config *mc = &m->cfg;
    const int64_t L = mc->n_layers, V = mc->d_vocab, S = sp->n_senders;
    if (ps_path_check(mc, sp, "path patching", e) != 0) return -1;
    if (st) memset(st, 0, sizeof *st);
    if (n == 0) return 0;
    const int two_pass = sp->input != PS_RECV_RESID_POST;
    const ps_site rsite = recv_site(sp->input);
    // Distinct receiver layers: one capture each (a layer's q/k/v or hook_post holds all its receivers).
    int64_t rl[64], n_rl = 0;
    for (int64_t i = 0; two_pass && i < sp->n_receivers; i++) {
        int dup = 0;
        for (int64_t j = 0; j < n_rl; j++) dup |= rl[j] == sp->receivers[i].layer;
        if (!dup) {
            if (n_rl == 64) return ps_fail(e, PS_EXIT_BADINPUT, "path patching: receivers at more than 64 layers");
            rl[n_rl++] = sp->receivers[i].layer;
        }
    }
    int64_t T_max = 1, max_pos = sp->positions ? sp->n_positions : 1;
    for (int64_t i = 0; i < n; i++) T_max = items[i].p->T > T_max ? items[i].p->T : T_max;
    const int64_t cap_w = two_pass ? ps_site_width(mc, rsite, T_max) : 0;
    const size_t per_row_caps = (size_t)(n_rl * T_max * cap_w), per_row_logits = (size_t)PS_MAX_OUT_POS * (size_t)V;
    const size_t row_bytes = (per_row_caps + 2 * per_row_logits) * sizeof(float) + 2 * sizeof(ps_row);
    const size_t budget = budget_bytes ? budget_bytes : (size_t)256 << 20;
    int64_t nb = (int64_t)(budget / (row_bytes * (size_t)n));
    nb = nb < 1 ? 1 : nb > S ? S : nb;
    const int64_t P1 = max_pos + 2 * L, P2 = sp->n_receivers;
    int64_t *pos = malloc((size_t)(n * (max_pos ? max_pos : 1)) * sizeof(int64_t)), *n_pos = malloc((size_t)n * sizeof(int64_t));
    block b = {0};
    const size_t R = (size_t)(n * nb);
    b.p1 = calloc(R, sizeof *b.p1);
    b.p2 = calloc(R, sizeof *b.p2);
    b.pt1 = calloc(R * (size_t)P1, sizeof *b.pt1);
    b.pt2 = calloc(R * (size_t)(P2 ? P2 : 1), sizeof *b.pt2);
    b.caps = calloc(R * (size_t)(n_rl ? n_rl : 1), sizeof *b.caps);
    b.cap_data = malloc((R * per_row_caps + 1) * sizeof(float));
    b.logits = malloc(R * 2 * per_row_logits * sizeof(float));
    b.rq = calloc((size_t)n, sizeof *b.rq);
    if (!pos || !n_pos || !b.p1 || !b.p2 || !b.pt1 || !b.pt2 || !b.caps || !b.cap_data || !b.logits || !b.rq) {
        free(pos); free(n_pos); block_free(&b);
        return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for path patching rows (%lld prompts x %lld senders)", (long long)n, (long long)nb);
    }
    for (int64_t i = 0; i < n; i++) {
        ps_metric_request_for(metric, items[i].p, &b.rq[i]);
        n_pos[i] = sender_positions(sp, items[i].p, pos + i * max_pos);
    }
    const int noise = sp->direction == PS_DIR_NOISE;
    int rc = 0;
    for (int64_t s0 = 0; rc == 0 && s0 < S; s0 += nb) {
        const int64_t s1 = s0 + nb < S ? s0 + nb : S;
        int64_t nr = 0;
        for (int64_t i = 0; i < n; i++) {
            const ps_prompt *p = items[i].p;
            const ps_cache *orig = noise ? items[i].clean : items[i].corrupted, *new_ = noise ? items[i].corrupted : items[i].clean;
            const ps_metric_request *rq = &b.rq[i];
            for (int64_t s = s0; s < s1; s++, nr++) {
                ps_patch *pt1 = b.pt1 + nr * P1, *pt2 = b.pt2 + nr * P2;
                ps_capture *cp = b.caps + nr * n_rl;
                float *cd = b.cap_data + (size_t)nr * per_row_caps;
                const int64_t np1 = n_pos[i] ? pass1_patches(mc, sp, &sp->senders[s], pos + i * max_pos, n_pos[i], orig, new_, pt1) : 0;
                for (int64_t k = 0; k < n_rl; k++)
                    cp[k] = (ps_capture){rsite, rl[k], cd + (size_t)(k * p->T * ps_site_width(mc, rsite, p->T))};
                b.p1[nr] = (ps_row){.tokens = noise ? p->clean : p->corrupted, .T = p->T, .base = orig, .patches = pt1,
                                    .n_patches = np1, .captures = cp, .n_captures = n_rl, .out_pos = rq->out_pos,
                                    .n_out = rq->n_out, .cols = rq->n_cols ? rq->cols : NULL, .n_cols = rq->n_cols,
                                    .logits = b.logits + (size_t)nr * 2 * per_row_logits};
                // Pass 2: the receivers' values from pass 1's captures. A (T, width) buffer is a T-row view, so
                // the copy is PS_OP_MEAN's (x = row t), the same arithmetic as a replace from a cache.
                for (int64_t k = 0; k < P2; k++) {
                    const ps_node *r = &sp->receivers[k];
                    int64_t ci = 0;
                    while (rl[ci] != r->layer) ci++;
                    pt2[k] = mkpatch(PS_OP_MEAN, rsite, r->layer, r->head, -1, NULL);
                    pt2[k].ref = (ps_view){cp[ci].out, p->T, NULL};
                }
                b.p2[nr] = b.p1[nr];
                b.p2[nr].patches = pt2;
                b.p2[nr].n_patches = P2;
                b.p2[nr].captures = NULL;
                b.p2[nr].n_captures = 0;
                b.p2[nr].logits = b.p1[nr].logits + per_row_logits;
            }
        }
        ps_rows_stats s1st = {0}, s2st = {0};
        if (ps_engine_rows(m, be, b.p1, nr, o, &s1st, e) != 0) { rc = -1; break; }
        if (two_pass && ps_engine_rows(m, be, b.p2, nr, o, &s2st, e) != 0) { rc = -1; break; }
        if (st) { add_stats(st, &s1st); add_stats(st, &s2st); }
        nr = 0;
        for (int64_t i = 0; i < n; i++)
            for (int64_t s = s0; s < s1; s++, nr++) {
                const ps_row *r = two_pass ? &b.p2[nr] : &b.p1[nr];
                values[i * S + s] = (float)ps_metric_value(metric, items[i].p, &b.rq[i], r->logits, V, items[i].clean_logprobs);
            }
    }
    free(pos); free(n_pos); block_free(&b);
    return rc;
}

// ---------------------------------------------------------------------------------------------
// The table

// 1 when the senders are every head of some layers, layer by layer, heads in order.
static int is_head_grid(const ps_path_spec *sp, int64_t H, int64_t *n_layers) {
    if (sp->n_senders % H) return 0;
    *n_layers = sp->n_senders / H;
    for (int64_t i = 0; i < sp->n_senders; i++) {
        const ps_node *s = &sp->senders[i];
        if (s->head != i % H || s->layer != sp->senders[i - i % H].layer) return 0;
    }
    return 1;
}

static void node_label(char *buf, size_t cap, const ps_node *nd) {
    if (nd->head < 0) snprintf(buf, cap, "m%lld", (long long)nd->layer);
    else snprintf(buf, cap, "a%lld.h%lld", (long long)nd->layer, (long long)nd->head);
}

int ps_path_table_init(ps_table *t, const char *name, const ps_model_config *mc, const ps_path_spec *sp, int64_t n_prompts,
                       ps_error *e) {
    memset(t, 0, sizeof *t);
    const int64_t H = mc->n_heads, S = sp->n_senders;
    int64_t nl = 0;
    ps_axis axes[2];
    int n_axes;
    int64_t *v0 = malloc((size_t)(S ? S : 1) * sizeof(int64_t)), *v1 = malloc((size_t)H * sizeof(int64_t));
    char **labels = calloc((size_t)(S ? S : 1), sizeof(char *));
    // Receivers as one string: "resid_post", or "a3.h0.q a3.h2.q", "m2.mlp".
    const size_t rcap = 24 * (size_t)(sp->n_receivers + 1);
    char *recv = malloc(rcap);
    int rc = 0;
    if (!v0 || !v1 || !labels || !recv) { rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the table of %s", name); goto done; }
    if (is_head_grid(sp, H, &nl)) {
        for (int64_t l = 0; l < nl; l++) v0[l] = sp->senders[l * H].layer;
        for (int64_t h = 0; h < H; h++) v1[h] = h;
        axes[0] = (ps_axis){.name = "layer", .len = nl, .value = v0};
        axes[1] = (ps_axis){.name = "head", .len = H, .value = v1};
        n_axes = 2;
    } else {
        for (int64_t i = 0; i < S; i++) {
            char buf[48];
            node_label(buf, sizeof buf, &sp->senders[i]);
            v0[i] = i;
            labels[i] = strdup(buf);
            if (!labels[i]) { rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for the table of %s", name); goto done; }
        }
        axes[0] = (ps_axis){.name = "sender", .len = S, .value = v0, .label = labels};
        n_axes = 1;
    }
    size_t used = 0;
    recv[0] = 0;
    if (sp->input == PS_RECV_RESID_POST) snprintf(recv, rcap, "resid_post");
    for (int64_t i = 0; i < sp->n_receivers; i++) {
        char buf[48];
        node_label(buf, sizeof buf, &sp->receivers[i]);
        used += (size_t)snprintf(recv + used, rcap - used, "%s%s%s%s", i ? " " : "", buf, sp->input == PS_RECV_MLP ? "" : ".",
                                 sp->input == PS_RECV_MLP ? "" : ps_recv_input_name(sp->input));
    }
    if (ps_table_init(t, name, "path_patch", 1, n_prompts, n_axes, axes, 1, e) != 0 ||
        ps_table_attr_str(t, "direction", ps_direction_name(sp->direction), e) != 0 ||
        ps_table_attr_str(t, "receivers", recv, e) != 0 ||
        ps_table_attr_str(t, "input", ps_recv_input_name(sp->input), e) != 0 ||
        ps_table_attr_i64(t, "freeze_mlps", sp->freeze_mlps ? 1 : 0, e) != 0 ||
        // ARENA's IOI metric, (x - orig) / (orig - new): 0 unharmed, -1 destroyed, from the file's normalized.
        ps_table_attr_str(t, "arena_normalized", sp->direction == PS_DIR_NOISE ? "normalized - 1" : "-normalized", e) != 0) {
        ps_table_free(t);
        rc = -1;
    }
done:
    for (int64_t i = 0; labels && i < S; i++) free(labels[i]);
    free(labels); free(v0); free(v1); free(recv);
    return rc;
}

void ps_path_arena_normalized(const float *values, const float *clean, const float *corrupted, int64_t n_rows, int64_t n_cells,
                              ps_direction dir, float *out) {
    for (int64_t i = 0; i < n_rows; i++) {
        const double orig = dir == PS_DIR_NOISE ? clean[i] : corrupted[i], new_ = dir == PS_DIR_NOISE ? corrupted[i] : clean[i];
        for (int64_t c = 0; c < n_cells; c++) out[i * n_cells + c] = (float)(((double)values[i * n_cells + c] - orig) / (orig - new_));
    }
}

// ---------------------------------------------------------------------------------------------
// The producer (kind "path_patch"): an experiment's senders from its config, its rows per chunk.

typedef struct {
    ps_node *senders;
    ps_path_spec sp;
} pp_state;

static void pp_free(void *state) {
    pp_state *s = state;
    if (!s) return;
    free(s->senders);
    free(s);
}

// The senders of a grid: every (listed) head and/or MLP of the (listed) layers, layer by layer, heads before
// the layer's MLP. Without a layer list, the layers that can reach a receiver (ARENA's grid for heads).
static int pp_senders(const ps_model_config *mc, const ps_experiment *ex, pp_state *s, ps_error *e) {
    if (ex->senders == PS_SENDERS_LIST) {
        s->senders = malloc((size_t)ex->n_sender_list * sizeof *s->senders);
        if (!s->senders) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
        memcpy(s->senders, ex->sender_list, (size_t)ex->n_sender_list * sizeof *s->senders);
        s->sp.n_senders = ex->n_sender_list;
        return 0;
    }
    const int64_t L = mc->n_layers, H = mc->n_heads;
    int64_t last = L - 1; // the last layer a receiver reads from
    if (ex->input != PS_RECV_RESID_POST) {
        last = 0;
        for (int64_t i = 0; i < ex->n_receivers; i++) last = ex->receivers[i].layer > last ? ex->receivers[i].layer : last;
    }
    // Heads reach the residual stream of their own layer's MLP; anything reaches a head's q/k/v only from below.
    const int64_t head_end = ex->input == PS_RECV_RESID_POST ? L : ex->input == PS_RECV_MLP ? last + 1 : last;
    const int64_t mlp_end = ex->input == PS_RECV_RESID_POST ? L : last;
    const int heads = ex->senders != PS_SENDERS_MLPS, mlps = ex->senders != PS_SENDERS_HEADS;
    const int64_t nh = ex->heads ? ex->n_heads : H;
    s->senders = malloc((size_t)(L * (nh + 1)) * sizeof *s->senders);
    if (!s->senders) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
    int64_t n = 0;
    for (int64_t li = 0; li < (ex->layers ? ex->n_layers : L); li++) {
        const int64_t l = ex->layers ? ex->layers[li] : li;
        if (heads && (ex->layers || l < head_end))
            for (int64_t k = 0; k < nh; k++) s->senders[n++] = (ps_node){l, ex->heads ? ex->heads[k] : k};
        if (mlps && (ex->layers || l < mlp_end)) s->senders[n++] = (ps_node){l, -1};
    }
    s->sp.n_senders = n;
    if (n == 0) return ps_fail(e, PS_EXIT_BADINPUT, "%s: no sender can reach the receivers (give \"layers\")", ex->name);
    return 0;
}

static int pp_init(const ps_model_config *mc, const ps_prompt_set *ps, ps_product *p, ps_error *e) {
    const ps_experiment *ex = p->ex;
    pp_state *s = calloc(1, sizeof *s);
    if (!s) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", ex->name);
    p->state = s;
    char what[200];
    snprintf(what, sizeof what, "experiments[%lld] (%s)", (long long)p->idx, ex->name);
    for (int64_t i = 0; ex->layers && i < ex->n_layers; i++)
        if (ex->layers[i] >= mc->n_layers)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: layers[%lld] = %lld is outside the model's %lld layers", what, (long long)i,
                           (long long)ex->layers[i], (long long)mc->n_layers);
    for (int64_t i = 0; ex->heads && i < ex->n_heads; i++)
        if (ex->heads[i] >= mc->n_heads)
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: heads[%lld] = %lld is outside the model's %lld heads", what, (long long)i,
                           (long long)ex->heads[i], (long long)mc->n_heads);
    for (int64_t i = 0; ex->positions && i < ex->n_positions; i++) {
        const char *role = ex->position_role ? ex->position_role[i] : NULL;
        for (int64_t k = 0; role && k < ps->n; k++)
            if (ps_prompt_role(&ps->p[k], role) < 0)
                return ps_fail(e, PS_EXIT_BADINPUT, "%s: positions[%lld] = \"%s\": dataset item %lld has no such role", what, (long long)i,
                               role, (long long)k);
        if (!role && (ex->positions[i] >= ps->T_max || ex->positions[i] < -ps->T_max))
            return ps_fail(e, PS_EXIT_BADINPUT, "%s: positions[%lld] = %lld is outside every prompt (longest: %lld tokens)", what,
                           (long long)i, (long long)ex->positions[i], (long long)ps->T_max);
    }
    if (pp_senders(mc, ex, s, e) != 0) return -1;
    s->sp = (ps_path_spec){.senders = s->senders, .n_senders = s->sp.n_senders, .input = ex->input, .receivers = ex->receivers,
                           .n_receivers = ex->input == PS_RECV_RESID_POST ? 0 : ex->n_receivers, .freeze_mlps = ex->freeze_mlps,
                           .direction = ex->direction, .positions = ex->positions, .position_role = ex->position_role,
                           .n_positions = ex->n_positions};
    if (ps_path_check(mc, &s->sp, what, e) != 0) return -1;
    return ps_path_table_init(p->t, ex->name, mc, &s->sp, ps->n, e);
}

static int pp_chunk(ps_producer_ctx *cx, ps_product *const *prods, int64_t n_prods, const ps_chunk *ch, ps_error *e) {
    const int64_t V = cx->m->cfg.d_vocab;
    ps_path_item *items = calloc((size_t)ch->n, sizeof *items);
    if (!items) return ps_fail(e, PS_EXIT_RUNTIME, "out of memory for a chunk of %lld prompts", (long long)ch->n);
    for (int64_t i = 0; i < ch->n; i++)
        items[i] = (ps_path_item){.p = &cx->ps->p[ch->prompts[i]], .clean = &ch->clean[i], .corrupted = &ch->corrupted[i],
                                  .clean_logprobs = ch->clean_logprobs ? ch->clean_logprobs + i * V : NULL};
    int rc = 0;
    for (int64_t k = 0; rc == 0 && k < n_prods; k++) {
        const pp_state *s = prods[k]->state;
        ps_table *t = prods[k]->t;
        const int64_t S = s->sp.n_senders, passes = s->sp.input == PS_RECV_RESID_POST ? 1 : 2;
        if (cx->o->dry_run) {
            cx->rr->rows_planned += ch->n * S * passes;
            cx->done += ch->n * S;
            continue;
        }
        if ((rc = ps_producer_stopped(cx, e)) != 0) break;
        float *vals = malloc((size_t)(ch->n * S) * sizeof(float));
        if (!vals) { rc = ps_fail(e, PS_EXIT_RUNTIME, "out of memory for %s", t->name); break; }
        ps_rows_opts ro = {.naive = cx->o->naive, .batch_rows = cx->o->batch_rows};
        ps_rows_stats st = {0};
        rc = ps_path_patch_chunk(cx->m, cx->be, &s->sp, items, ch->n, cx->metric, &ro, 0, vals, &st, e);
        for (int64_t i = 0; rc == 0 && i < ch->n; i++)
            memcpy(t->values + ch->prompts[i] * t->n_cells, vals + i * S, (size_t)S * sizeof(float));
        t->patches_run += ch->n * S;
        t->flops += st.flops;
        cx->rr->rows_planned += st.rows_run;
        cx->done += ch->n * S;
        ps_producer_progress(cx, 0);
        free(vals);
    }
    free(items);
    return rc;
}

const ps_producer ps_path_patch_producer = {
    .kind = "path_patch", .per_prompt = 1, .init = pp_init, .chunk = pp_chunk, .free_state = pp_free,
};
