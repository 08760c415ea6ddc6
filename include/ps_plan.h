// The row plan: the engine's contract with every backend. What a row computes at each layer under the
// narrowing rules of ps_row (shared by the CPU forward and the FLOP count), which units a patch selects,
// and the capability bits that say which row features a backend honours.
#ifndef PS_PLAN_H
#define PS_PLAN_H

#include "ps_forward.h"

// Row features beyond a plain replace patch. A backend sets the bits it implements (ps_backend.caps);
// the engine refuses to send a row that needs a bit the backend lacks (ps_row_check), except NARROW,
// which only lets the engine ask for less work.
enum {
    PS_CAP_NARROW = 1,       // ps_row.narrow / entry / dirty_end
    PS_CAP_REPLACE = 1 << 1, // PS_OP_REPLACE
    PS_CAP_ZERO = 1 << 2,
    PS_CAP_MEAN = 1 << 3,
    PS_CAP_ADD = 1 << 4,
    PS_CAP_SCALE = 1 << 5,
    PS_CAP_FREEZE = 1 << 6,
    PS_CAP_HEAD_MASK = 1 << 7,  // ps_patch.head_mask
    PS_CAP_CAPTURE = 1 << 8,    // ps_row.captures
    PS_CAP_RESULT = 1 << 9,     // patches or captures at PS_SITE_RESULT (per-head outputs after W_O)
    PS_CAP_CACHE_LATE = 1 << 10, // cache rows with start_layer > 0 (ps_backend.h: a run rewritten from a layer on)
    PS_CAP_HEAD_DELTA = 1 << 11, // ps_row.head_delta (ps_backend.h: a row entering at W_O as base's attn_out + its heads' change)
    PS_CAP_LEAN_BASE = 1 << 12,  // bases held PS_CACHE_LEAN (ps_cache.h)
    PS_CAP_ALL = (1 << 13) - 1,
};

// What a row computes at one layer.
typedef struct {
    int attn;          // attention recomputed at this layer (at the positions W_O runs at)
    int64_t qkv_end;   // LN1 and the Q/K/V GEMMs at positions [start_pos, qkv_end); the others are base's
    int outs_only;     // queries and everything after attention only at out_pos
    int64_t post_end;  // W_O and the MLP at positions [start_pos, post_end) (only out_pos among them if outs_only)
    int late;          // 0, or how many hooks after z the row enters at (1 attn_out ... 5 resid_post)
    int delta;         // head_delta at this layer: attn_out = base's + (z - base's z) @ W_O of the changed heads, W_O
                       // not run; late is then 1 (the MLP reads resid_mid) or, with a parallel residual, 4 (the MLP
                       // reads resid_pre, so its output is base's)
} ps_layer_plan;

// dirty: positions [start_pos, dirty) of the residual stream entering layer l differ from base.
ps_layer_plan ps_plan_layer(const ps_model_config *cfg, const ps_row *row, int64_t l, int64_t dirty);
// 1 when position t is recomputed after attention under plan p.
int ps_post_at(const ps_row *row, const ps_layer_plan *p, int64_t t);
// 1 when layer l is the last and the row keeps no cache and captures nothing there: it then needs that layer's
// queries, W_O and the MLP only at its out_pos (keys and values still at every position), as a narrowed row's plan
// already says; each position's arithmetic is unchanged. The CPU forward applies it only in a batch without a cache
// row (cache rows store whole layers from the uncompacted buffers); ps_row_flops counts one row as if so.
int ps_row_last_layer_outs_only(const ps_model_config *cfg, const ps_row *row, int64_t l);
// 1 when the row patches or captures hook_result at layer l (the CPU backend then runs W_O per head too).
int ps_row_at_result(const ps_row *row, int64_t l);
// 1 when the row's hook_mlp_out at layer l is overwritten at every position, whatever the MLP computed (a replace,
// freeze, zero or mean patch over all positions: a mean- or zero-ablated MLP), and nothing reads the MLP's inner
// activations (no capture at mlp_post or mlp_out there, no cache that stores them). A backend may then skip
// that layer's MLP for the row: the numbers are the same, bit for bit (the CPU skips it for a batch whose rows that
// run the MLP all have this). ps_row_flops counts such a row without it.
int ps_row_mlp_replaced(const ps_row *row, int64_t l);

// FLOPs (2 x multiply-adds) a row costs on the reference backend: every GEMM, attention and the
// unembedding it asks for, following the narrowing above.
double ps_row_flops(const ps_model_config *mc, const ps_row *row);

// 1 when patch pt selects unit u (a head of q/k/v/z/pattern, a neuron of mlp_post; 0 for one-unit sites).
int ps_patch_selects(const ps_patch *pt, int64_t u);
// The first run [*u0, *u1) of consecutive units (of the site's `units`) the patch selects at or after
// unit `from`; 0 when there is none. Runs are what backends copy and the engine compares in one go:
// `for (u = 0; ps_patch_run(pt, units, u, &u0, &u1); u = u1)`.
int ps_patch_run(const ps_patch *pt, int64_t units, int64_t from, int64_t *u0, int64_t *u1);
// The reference row a mean/add patch reads at position t, or -1 when it leaves t alone.
int64_t ps_view_row(const ps_view *v, int64_t t);

// Fills every capture of a row that has a base with base's values at every position and layer: what a
// backend then overwrites where the row recomputes the hook (ps_capture). A row without base: nothing.
void ps_captures_from_base(const ps_model_config *cfg, const ps_row *row);

// The capability bits a row needs.
unsigned ps_row_caps(const ps_row *row);
// Checks a row's patches and captures against the model (sites, layers, units, sources, reference
// views, 64-head masks) and against a backend's caps; bad input: PS_EXIT_BADINPUT naming the patch.
int ps_row_check(const ps_model_config *mc, const ps_row *row, unsigned caps, const char *backend, ps_error *e);

// 1 when the patch reads its source cache (replace, freeze; the other operations' src, if set, is ignored): the
// caches a backend with device copies uploads.
int ps_patch_reads_src(const ps_patch *pt);
// A backend that keeps device copies of caches refuses a batch whose one row's cache is also read (as a base or a
// patch source) or written by another row (ps_backend.h): its copy is recomputed while the others would read it.
// PS_EXIT_RUNTIME naming both rows. (Cache rows are few, so pairs are cheap.)
int ps_rows_check_aliasing(const ps_row *rows, int64_t n_rows, ps_error *e);

#endif
