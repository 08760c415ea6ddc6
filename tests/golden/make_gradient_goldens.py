#!/usr/bin/env python3
"""Make the gradient and attribution-patching goldens of the tiny models (tests/data/<model>/
golden_gradients.{safetensors,json}) with torch autograd through TransformerLens's hooks.

Gradients: torch autograd (retain_grad) at every TransformerLens hook of make_goldens.py's
plain-torch legacy-TL forward (itself checked against TL's activations there), of the metric
logits[-1, answer] - logits[-1, wrong], two runs per model. Cross-checked at 1e-4 against
TransformerLens's own backward hooks (TransformerBridge.add_hook(name, fn, "bwd"), as TL's
attribution-patching demo collects them) at every hook but one: TL 4.3's bridge fires
hook_resid_mid's backward hook on the ln2 branch only, so there the check is
bridge resid_mid + bridge resid_post of the same layer (the residual branch) = autograd's total.

GPT-NeoX (no plain-torch forward in make_goldens.py): NeoxRef below, a plain-torch legacy-TL GPT-NeoX
forward (fused query_key_value split per head, partial rotate-half rotary of the first rotary_dim dims
of each head, exact GELU, parallel or sequential residual, untied embed_out), checked here against
TransformerLens's activations at every hook (1e-4) before its autograd gradients are used, and its
gradients against the bridge's backward hooks as above; hook_rot_q/k are not TL 4.3 hooks, so their
gradients are checked against TL's own rotation (make_goldens.neox_rot_qk's _apply_rotary_pos_emb) of
the bridge's hook_q/k gradients (the rotation is orthogonal: d rot_q = R d q). A parallel block has no
hook_resid_mid (as in TL).

Attribution patching (TransformerLens demo conventions): for each pair of golden_patch.safetensors
and each direction, attr = (source act - base act) . d(normalized metric)/d(act) of the base run,
normalized metric = (m - corrupted_metric) / (clean_metric - corrupted_metric);
denoise: base = corrupted run, source = clean run; noise: base = clean, source = corrupted.
Summed into patchsweep's sweep cells (site x layout, axes in ps_sweep order: layer, [pos], [head|neuron]).

Regenerate (repo root, reference venv, offline is fine; golden_patch.safetensors must exist):
    ~/.cache/ps-venv/bin/python tests/golden/make_gradient_goldens.py              # all models
    ~/.cache/ps-venv/bin/python tests/golden/make_gradient_goldens.py gpt2-tiny-a  # some
"""
import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_goldens as mg  # noqa: E402  (model zoo, bridge loading, plain-torch reference)
import torch  # noqa: E402
import transformers  # noqa: E402
from importlib.metadata import version as pkg_version  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

MODELS = [m["name"] for m in mg.MODELS]
# Gradient runs: (pair of golden_patch, which tokens). The corrupted run is denoising's base.
GRAD_RUNS = [(0, "corrupted"), (1, "clean")]

SITES = {  # site -> (TL hook suffix, layouts); sweep layouts as ps_layout_fits allows them
    "resid_pre": ("hook_resid_pre", ["layer_pos", "layer"]),
    "resid_mid": ("hook_resid_mid", ["layer_pos", "layer"]),
    "resid_post": ("hook_resid_post", ["layer_pos", "layer"]),
    "attn_out": ("hook_attn_out", ["layer_pos", "layer"]),
    "mlp_out": ("hook_mlp_out", ["layer_pos", "layer"]),
    "q": ("attn.hook_q", ["layer_pos", "layer_head", "layer_pos_head"]),
    "k": ("attn.hook_k", ["layer_pos", "layer_head", "layer_pos_head"]),
    "v": ("attn.hook_v", ["layer_pos", "layer_head", "layer_pos_head"]),
    "z": ("attn.hook_z", ["layer_pos", "layer_head", "layer_pos_head"]),
    "pattern": ("attn.hook_pattern", ["layer_head", "layer_pos_head"]),
    "mlp_post": ("mlp.hook_post", ["layer_neuron"]),
}


def grad_hooks(arch, n_layers, parallel=False):
    names = mg.forward_hook_names(arch, n_layers, parallel)
    if arch == "neox":  # legacy TL's hook_rot_q/k, after hook_k (make_goldens leaves them out: not TL 4.3 hooks)
        names = [x for n in names for x in ([n, n.replace("hook_k", "hook_rot_q"), n.replace("hook_k", "hook_rot_k")]
                                             if n.endswith("attn.hook_k") else [n])]
    return [h for h in names if not h.endswith("hook_normalized")]


class NeoxRef:
    """Plain-torch GPT-NeoX forward with legacy HookedTransformer hook semantics (raw HF weights)."""

    def __init__(self, hf_model, folder):
        self.c = hf_model.config
        # the checkpoint's own tensors (fp16 ones computed in fp32, as patchsweep does)
        self.sd = {k: v.float() for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}

    def forward(self, tokens, hooks=None, cache=None):
        hooks = hooks or {}
        c, sd = self.c, self.sd

        def h(name, x):
            if name in hooks:
                x = hooks[name](x.clone())
            if cache is not None:
                cache[name] = x
            return x

        C, H = c.hidden_size, c.num_attention_heads
        dh = C // H
        rp = c.rope_parameters
        rot, theta = int(dh * rp["partial_rotary_factor"]), float(rp["rope_theta"])
        n = tokens.shape[0]

        def ln(x, pre, w):
            x = x - x.mean(-1, keepdim=True)
            scale = h(pre + ".hook_scale", (x.pow(2).mean(-1, keepdim=True) + c.layer_norm_eps).sqrt())
            return h(pre + ".hook_normalized", x / scale) * sd[w + ".weight"] + sd[w + ".bias"]

        inv = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
        ang = torch.arange(n, dtype=torch.float32)[:, None] * inv[None]
        cos, sin = torch.cat([ang, ang], -1).cos()[:, None], torch.cat([ang, ang], -1).sin()[:, None]

        def rotate(x):  # rotate-half on the first rot dims of each head, the rest passed through
            xr, xp = x[..., :rot], x[..., rot:]
            x1, x2 = xr[..., : rot // 2], xr[..., rot // 2:]
            return torch.cat([xr * cos + torch.cat([-x2, x1], -1) * sin, xp], -1)

        resid = h("hook_embed", sd["gpt_neox.embed_in.weight"][tokens])
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        for L in range(c.num_hidden_layers):
            b, p = f"blocks.{L}.", f"gpt_neox.layers.{L}."
            resid = h(b + "hook_resid_pre", resid)
            x = ln(resid, b + "ln1", p + "input_layernorm")
            qkv = (x @ sd[p + "attention.query_key_value.weight"].T + sd[p + "attention.query_key_value.bias"])
            qkv = qkv.reshape(n, H, 3 * dh)  # interleaved per head: head 0's q, k, v, then head 1's ...
            q = h(b + "attn.hook_q", qkv[..., :dh])
            k = h(b + "attn.hook_k", qkv[..., dh:2 * dh])
            v = h(b + "attn.hook_v", qkv[..., 2 * dh:])
            q, k = h(b + "attn.hook_rot_q", rotate(q)), h(b + "attn.hook_rot_k", rotate(k))
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(dh)
            scores = h(b + "attn.hook_attn_scores", scores.masked_fill(mask, float("-inf")))
            pattern = h(b + "attn.hook_pattern", scores.softmax(-1))
            z = h(b + "attn.hook_z", torch.einsum("hqk,khd->qhd", pattern, v))
            W_O = sd[p + "attention.dense.weight"].T.reshape(H, dh, C)
            result = h(b + "attn.hook_result", torch.einsum("qhd,hdm->qhm", z, W_O))
            attn_out = h(b + "hook_attn_out", result.sum(1) + sd[p + "attention.dense.bias"])
            if c.use_parallel_residual:
                x2 = ln(resid, b + "ln2", p + "post_attention_layernorm")
            else:
                resid = h(b + "hook_resid_mid", resid + attn_out)
                x2 = ln(resid, b + "ln2", p + "post_attention_layernorm")
            pre = h(b + "mlp.hook_pre", x2 @ sd[p + "mlp.dense_h_to_4h.weight"].T + sd[p + "mlp.dense_h_to_4h.bias"])
            post = h(b + "mlp.hook_post", torch.nn.functional.gelu(pre))
            mlp_out = h(b + "hook_mlp_out", post @ sd[p + "mlp.dense_4h_to_h.weight"].T + sd[p + "mlp.dense_4h_to_h.bias"])
            resid = h(b + "hook_resid_post", resid + attn_out + mlp_out if c.use_parallel_residual else resid + mlp_out)
        x = ln(resid, "ln_final", "gpt_neox.final_layer_norm")
        return x @ sd["embed_out.weight"].T


def check_neox_forward(name, br, ref, names, toks):
    """NeoxRef's activations against TransformerLens's at every hook (rot_q/k: TL's own rotation)."""
    acts = {}
    with torch.no_grad():
        lg = ref.forward(toks[0], cache=acts)
        tl_lg, cache = br.run_with_cache(toks)
    want = {n: cache[n][0] for n in names if n in cache}
    for L in range(br.cfg.n_layers):
        want[f"blocks.{L}.attn.hook_rot_q"], want[f"blocks.{L}.attn.hook_rot_k"] = mg.neox_rot_qk(br, cache, L)
    want["logits"], acts["logits"] = tl_lg[0], lg
    worst = 0.0
    for n, w in want.items():
        d = mg.maxdiff(acts[n], w)
        if d > 1e-4 + 1e-4 * w[torch.isfinite(w)].abs().max().item():
            raise SystemExit(f"{name}: NeoxRef {n} differs from TL by {d}")
        worst = max(worst, d)
    if set(names) - set(want):
        raise SystemExit(f"{name}: TL has no {sorted(set(names) - set(want))}")
    return worst


def bridge_grads_neox(br, names, toks, metric):
    """bridge_grads, with hook_rot_q/k's gradients from the bridge's hook_q/k gradients by TL's own rotation
    (orthogonal R: rot_q = R q gives d q = R^T d rot_q, so d rot_q = R d q), TL's cos/sin of the layer."""
    g = bridge_grads(br, [n for n in names if "hook_rot_" not in n], toks, metric)
    with torch.no_grad():
        _, cache = br.run_with_cache(toks)
    for L in range(br.cfg.n_layers):
        b = f"blocks.{L}.attn."
        c = {b + "hook_q": g[b + "hook_q"][None], b + "hook_k": g[b + "hook_k"][None],
             b + "hook_cos": cache[b + "hook_cos"], b + "hook_sin": cache[b + "hook_sin"]}
        g[b + "hook_rot_q"], g[b + "hook_rot_k"] = mg.neox_rot_qk(br, c, L)
    return g


def bridge_grads(br, names, toks, metric):
    """TL's backward hooks at every hook in names (the cross-check)."""
    grads = {}
    br.reset_hooks()
    for n in names:
        br.add_hook(n, lambda g, hook, n=n: grads.__setitem__(n, g.detach()[0].clone()), "bwd")
    metric(br(toks)).backward()
    br.reset_hooks()
    return grads


def ref_run(ref, names, toks, metric):
    """Metric, gradients and activations at every hook by autograd through the plain-torch forward."""
    acts = {}

    def keep(x):
        if not x.requires_grad:
            x.requires_grad_(True)
        else:
            x.retain_grad()
        return x
    logits = ref.forward(toks[0], hooks={n: keep for n in names}, cache=acts)
    m = metric(logits.unsqueeze(0))
    m.backward()
    return m.item(), {n: acts[n].grad for n in names}, {n: acts[n].detach() for n in names}


def check_against_tl(name, key, g, rg):
    """Largest |TL - autograd| over the hooks; stops where they differ beyond 1e-4 abs+rel."""
    worst = 0.0
    for n, want in rg.items():
        got = g[n]
        if n.endswith("hook_resid_mid"):  # bridge: ln2 branch only (see the docstring)
            got = got + g[n.replace("hook_resid_mid", "hook_resid_post")]
        diff = (got - want).abs().max().item()
        if diff > 1e-4 + 1e-4 * want.abs().max().item():
            raise SystemExit(f"{name} {key} {n}: TL and autograd gradients differ by {diff}")
        worst = max(worst, diff)
    return worst


def cells(site, layout, d, n_layers, hs):
    """Sum attr = d (per-hook product, [L, ...]) into the sweep's cells."""
    if site == "pattern":  # [L, H, dest, src]
        return d.sum((2, 3)) if layout == "layer_head" else d.sum(3).transpose(1, 2)  # [L, dest, H]
    if site == "mlp_post":  # [L, T, M]
        return d.sum(1)
    if d.dim() == 3:  # resid-like [L, T, C]
        return d.sum(2) if layout == "layer_pos" else d.sum((1, 2))
    # heads [L, T, Hs, D]
    return {"layer_pos": d.sum((2, 3)), "layer_head": d.sum((1, 3)), "layer_pos_head": d.sum(3)}[layout]


def make(name, out_root):
    spec = next(s for s in mg.MODELS if s["name"] == name)
    arch = spec["arch"]
    folder = os.path.join(out_root, name)
    pat = load_file(os.path.join(folder, "golden_patch.safetensors"))
    print(f"== {name}", flush=True)
    hf = mg.HF_CLASSES[arch][1].from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    br = mg.load_bridge(folder, hf.config.vocab_size)
    L = br.cfg.n_layers
    parallel = arch == "neox" and hf.config.use_parallel_residual
    names = grad_hooks(arch, L, parallel)
    ref, tl_grads = mg.Ref(hf, arch), bridge_grads
    if arch == "neox":
        ref, tl_grads = NeoxRef(hf, folder), bridge_grads_neox
        fw = max(check_neox_forward(name, br, ref, names, pat[f"p{i}.{w}_tokens"].long()[None])
                 for i, w in GRAD_RUNS)
        print(f"  NeoxRef vs TL activations max|diff| = {fw:.3g}", flush=True)
    n_pairs = sum(1 for k in pat if k.endswith(".clean_tokens"))
    out, worst_ref = {}, 0.0

    def metric_of(a, w):
        return lambda lg: lg[0, -1, a] - lg[0, -1, w]

    # ---- gradients of the raw logit difference at every hook
    for r, (i, which) in enumerate(GRAD_RUNS):
        P = f"p{i}."
        toks = pat[P + which + "_tokens"].long()[None]
        a, w = int(pat[P + "answer"][0]), int(pat[P + "wrong"][0])
        m, rg, _ = ref_run(ref, names, toks, metric_of(a, w))
        worst_ref = max(worst_ref, check_against_tl(name, f"g{r}", tl_grads(br, names, toks, metric_of(a, w)), rg))
        for n in names:
            out[f"g{r}.{n}"] = rg[n].to(torch.float32).contiguous()
        out[f"g{r}.tokens"] = toks[0].to(torch.int32)
        out[f"g{r}.answer"] = torch.tensor([a], dtype=torch.int32)
        out[f"g{r}.wrong"] = torch.tensor([w], dtype=torch.int32)
        out[f"g{r}.metric"] = torch.tensor([m], dtype=torch.float32)

    # ---- attribution patching on every site and layout
    n_kv = br.cfg.n_key_value_heads or br.cfg.n_heads
    for i in range(n_pairs):
        P = f"p{i}."
        a, w = int(pat[P + "answer"][0]), int(pat[P + "wrong"][0])
        cm, km = float(pat[P + "clean_metric"][0]), float(pat[P + "corrupted_metric"][0])

        def norm_metric(lg, a=a, w=w, cm=cm, km=km):
            return (lg[0, -1, a] - lg[0, -1, w] - km) / (cm - km)
        runs = {}
        for which in ("clean", "corrupted"):
            toks = pat[P + which + "_tokens"].long()[None]
            _, g, act = ref_run(ref, names, toks, norm_metric)
            worst_ref = max(worst_ref, check_against_tl(name, P + which, tl_grads(br, names, toks, norm_metric), g))
            runs[which] = (g, act)
        for direction, base, src in (("denoise", "corrupted", "clean"), ("noise", "clean", "corrupted")):
            g, act = runs[base]
            _, src_act = runs[src]
            for site, (suffix, layouts) in SITES.items():
                if parallel and site == "resid_mid":
                    continue  # no hook_resid_mid in a parallel block
                hk = [f"blocks.{l}.{suffix}" for l in range(L)]
                d = torch.stack([(src_act[h] - act[h]) * g[h] for h in hk])
                hs = n_kv if site in ("k", "v") else br.cfg.n_heads
                for layout in layouts:
                    out[f"a{i}.{direction}.{site}.{layout}"] = \
                        cells(site, layout, d, L, hs).to(torch.float32).contiguous()
    print(f"  TL backward hooks vs autograd max|diff| = {worst_ref:.3g}", flush=True)
    mg.save_st(out, os.path.join(folder, "golden_gradients.safetensors"))
    desc = {
        "versions": versions(),
        "generator": "tests/golden/make_gradient_goldens.py",
        "gradient_runs": [{"key": f"g{r}", "pair": i, "tokens": which} for r, (i, which) in enumerate(GRAD_RUNS)],
        "gradient_metric": "logits[-1, answer] - logits[-1, wrong] (raw, not normalized)",
        "gradient_keys": "g<r>.<TL hook name>: d metric / d hook output (batch squeezed), "
                         "torch autograd through the plain-torch legacy-TL forward, checked against TransformerBridge "
                         "backward hooks; g<r>.tokens/answer/wrong/metric",
        "attribution_keys": "a<pair>.<denoise|noise>.<site>.<layout>: sum over the cell of "
                            "(source - base activation) * d normalized metric / d activation of the base run",
        "cross_check_tl_bwd_hooks_vs_autograd_max_abs_diff": worst_ref,
        "notes": [
            "TL 4.3's bridge fires blocks.l.hook_resid_mid's backward hook on the ln2 branch only (it is ln2's "
            "input hook); the golden is the total gradient (legacy TL: the hook's output feeds ln2 and the "
            "residual), which equals the bridge's resid_mid + resid_post gradients",
            "pattern gradients are nonzero above the diagonal (z sums every key; masked probabilities are 0); "
            "attn_scores gradients are 0 there",
            "ln*.hook_scale: the gradient treats the scale as its own node (TL hooks it before x / scale)",
            "attribution cells: layer_pos pattern does not exist; pattern layer_pos_head is (layer, dest, head)",
        ],
    }
    write_json(desc, os.path.join(folder, "golden_gradients.json"))


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "transformer_lens": pkg_version("transformer_lens"), "python": sys.version.split()[0]}


def write_json(desc, path):
    with open(path, "w") as f:
        json.dump(desc, f, indent=1)
        f.write("\n")


def run_models(make, doc):
    """The scripts' command line: model names (default all nine), --out DIR."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("models", nargs="*")
    ap.add_argument("--out", default=os.path.join(mg.REPO, "tests", "data"))
    a = ap.parse_args()
    for n in a.models or MODELS:
        if n not in MODELS:
            raise SystemExit(f"unknown model {n}")
        make(n, a.out)


def main():
    run_models(make, __doc__)


if __name__ == "__main__":
    main()
