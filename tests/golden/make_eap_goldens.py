#!/usr/bin/env python3
"""Make the edge attribution patching (EAP) goldens of the tiny models (tests/data/<model>/
golden_eap.{safetensors,json}) with torch autograd, on EAP-IG's graph and score definition.

Graph (hannamw/EAP-IG): source nodes input, a<l>.h<h> (head h's output z_h @ W_O[h]), m<l> (MLP
output); destination nodes a<l>.h<h><q>, a<l>.h<g><k>, a<l>.h<g><v> (a head's separate query, key
and value inputs; for grouped-query attention k and v per key/value head g), m<l> (the MLP's input),
logits (the final norm's input). Every input is the residual stream before the norm: the sum of the
upstream sources' outputs (plus biases). An edge u -> v exists when u comes before v: input feeds
everything, heads of layer l feed layer l's MLP and every later layer, MLPs feed later layers, every
source feeds logits.

Score (EAP-IG's EAP): score(u, v) = sum over positions of (corrupted - clean output of u) .
d metric / d (input of v), the gradient on the clean run; metric = logits[-1, answer] -
logits[-1, wrong]. The input gradient is taken by autograd at a zero tap added to the input of v
alone, in a plain-torch forward written out with those split inputs (checked: its logits equal
Hugging Face's at 1e-4, its logits-node gradient equals TransformerLens's ln_final input gradient
and its MLP-node gradients TL 4.3 bridge's hook_resid_mid backward hooks, which sit on ln2's input).
EAP-IG-inputs: the gradient averaged over runs of the clean tokens whose input embeddings are
corrupted + k/steps (clean - corrupted), k = 0..steps-1 (steps = 3); clean-corrupted: averaged over
the clean and the corrupted run; the activation difference is EAP's in all three.
GPT-NeoX (SplitNeox): the fused query_key_value split per head, partial rotary, exact GELU; with a
parallel residual the MLP's input is the stream entering the layer, so a layer's heads do not feed its
MLP (EAP-IG's graph does the same under TransformerLens's parallel_attn_mlp), and the cross-check is
TL's hook_resid_pre gradient = hook_resid_post's + the sum of the layer's split input gradients.
Keys: e<pair>.scores (EAP), e<pair>.ig_inputs, e<pair>.clean_corrupted: [n_src, n_dst] float32, NaN
where no edge; one per golden_patch.safetensors pair.

hannamw/EAP-IG's own functions are run by run_eap_ig.py (golden_eap_ig.safetensors); they agree with these
scores to 9e-7 where EAP-IG's graph can hold the model (not under grouped-query attention).

Regenerate (repo root, reference venv, offline is fine):
    ~/.cache/ps-venv/bin/python tests/golden/make_eap_goldens.py              # all models
    ~/.cache/ps-venv/bin/python tests/golden/make_eap_goldens.py llama-tiny-b
"""
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_goldens as mg  # noqa: E402
import make_gradient_goldens as gg  # noqa: E402  (versions, json, command line)
import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402


IG_STEPS = 3


def node_names(L, H, KV):
    src = ["input"]
    dst = []
    for l in range(L):
        src += [f"a{l}.h{h}" for h in range(H)] + [f"m{l}"]
        dst += [f"a{l}.h{h}<q>" for h in range(H)] + [f"a{l}.h{g}<k>" for g in range(KV)] + \
               [f"a{l}.h{g}<v>" for g in range(KV)] + [f"m{l}"]
    return src, dst + ["logits"]


def src_layer(n):  # (layer, 0 for heads / 1 for the MLP); input is (-1, 1)
    if n == "input":
        return (-1, 1)
    return (int(n[1:].split(".")[0]), 0 if n[0] == "a" else 1)


def dst_layer(n, L, parallel=False):  # the position its input is read at
    if n == "logits":
        return (L, 0)
    # a parallel block's MLP reads the stream entering the layer, as its heads do: no edge from its own heads
    return (int(n[1:].split(".")[0]), 0 if n[0] == "a" or parallel else 1)


class Split:
    """Plain-torch GPT-2 / Llama forward from the HF weights with EAP-IG's split node inputs."""

    parallel = False

    def __init__(self, hf, arch):
        self.arch, c = arch, hf.config
        self.sd = {k: v.detach().clone() for k, v in hf.state_dict().items()}
        if arch == "gpt2":
            self.L, self.C, self.H = c.n_layer, c.n_embd, c.n_head
            self.KV, self.D, self.eps = self.H, self.C // self.H, c.layer_norm_epsilon
        else:
            self.L, self.C, self.H = c.num_hidden_layers, c.hidden_size, c.num_attention_heads
            self.KV = c.num_key_value_heads
            self.D = getattr(c, "head_dim", None) or self.C // self.H
            self.eps, self.theta = c.rms_norm_eps, c.rope_parameters["rope_theta"]
        self.c = c

    def norm(self, x, w, b=None):
        if self.arch == "gpt2":
            x = x - x.mean(-1, keepdim=True)
            return x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt() * w + b
        return x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt() * w

    def forward(self, tok, taps, embeds=None):
        """logits [T, V] and each source node's output [T, C]; taps[v] is added to v's input; embeds, when
        given, replaces the input node's output (embeddings + positions)."""
        sd, C, H, KV, D, T = self.sd, self.C, self.H, self.KV, self.D, tok.shape[0]
        gpt2 = self.arch == "gpt2"
        out = {}
        if gpt2:
            resid = sd["transformer.wte.weight"][tok] + sd["transformer.wpe.weight"][:T]
        else:
            resid = sd["model.embed_tokens.weight"][tok]
            inv = 1.0 / (self.theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
            ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]
            cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

            def rot(x):
                return x * cos + torch.cat([-x[:, D // 2:], x[:, :D // 2]], -1) * sin
        if embeds is not None:
            resid = embeds
        out["input"] = resid
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        for l in range(self.L):
            if gpt2:
                p = f"transformer.h.{l}."
                W = sd[p + "attn.c_attn.weight"]
                Bq = sd[p + "attn.c_attn.bias"]
                Wq, Wk, Wv = W[:, :C], W[:, C:2 * C], W[:, 2 * C:]
                bq, bk, bv = Bq[:C], Bq[C:2 * C], Bq[2 * C:]
                WO, bO = sd[p + "attn.c_proj.weight"], sd[p + "attn.c_proj.bias"]
                ln1 = (sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
                ln2 = (sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
            else:
                p = f"model.layers.{l}."
                Wq, Wk, Wv = (sd[p + f"self_attn.{n}_proj.weight"].T for n in "qkv")
                bq = bk = bv = None
                WO, bO = sd[p + "self_attn.o_proj.weight"].T, None
                ln1 = (sd[p + "input_layernorm.weight"],)
                ln2 = (sd[p + "post_attention_layernorm.weight"],)

            def proj(name, W, b, j):
                x = self.norm(resid + taps.get(name, 0), *ln1)
                y = x @ W[:, j * D:(j + 1) * D]
                return y + b[j * D:(j + 1) * D] if b is not None else y
            ks = [proj(f"a{l}.h{g}<k>", Wk, bk, g) for g in range(KV)]
            vs = [proj(f"a{l}.h{g}<v>", Wv, bv, g) for g in range(KV)]
            if not gpt2:
                ks = [rot(k) for k in ks]
            attn_out = 0
            for h in range(H):
                q = proj(f"a{l}.h{h}<q>", Wq, bq, h)
                if not gpt2:
                    q = rot(q)
                g = h // (H // KV)
                s = (q @ ks[g].T / math.sqrt(D)).masked_fill(mask, float("-inf"))
                z = s.softmax(-1) @ vs[g]
                out[f"a{l}.h{h}"] = z @ WO[h * D:(h + 1) * D]
                attn_out = attn_out + out[f"a{l}.h{h}"]
            resid = resid + attn_out + (bO if bO is not None else 0)
            x = self.norm(resid + taps.get(f"m{l}", 0), *ln2)
            if gpt2:
                pre = x @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"]
                act = "tanh" if self.c.activation_function == "gelu_new" else "none"
                mlp = torch.nn.functional.gelu(pre, approximate=act) @ sd[p + "mlp.c_proj.weight"] + \
                    sd[p + "mlp.c_proj.bias"]
            else:
                gate = x @ sd[p + "mlp.gate_proj.weight"].T
                up = x @ sd[p + "mlp.up_proj.weight"].T
                mlp = (torch.nn.functional.silu(gate) * up) @ sd[p + "mlp.down_proj.weight"].T
            out[f"m{l}"] = mlp
            resid = resid + mlp
        x = resid + taps.get("logits", 0)
        if gpt2:
            x = self.norm(x, sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
            return x @ sd["transformer.wte.weight"].T, out
        return self.norm(x, sd["model.norm.weight"]) @ sd["lm_head.weight"].T, out


class SplitNeox:
    """Plain-torch GPT-NeoX forward from the checkpoint's tensors with EAP-IG's split node inputs: the fused
    query_key_value split per head (interleaved: head h's rows [3hD, 3hD + D) are q, then k, then v),
    rotate-half rotary on each head's first rotary_dim dims, exact GELU, LayerNorm, untied embed_out; with
    use_parallel_residual the MLP reads ln2 of the stream entering the layer (its m<l> tap is there) and
    resid_post = resid_pre + attn_out + mlp_out."""

    def __init__(self, hf, folder):
        c = self.c = hf.config
        self.sd = {k: v.float() for k, v in load_file(os.path.join(folder, "model.safetensors")).items()}
        self.L, self.C, self.H = c.num_hidden_layers, c.hidden_size, c.num_attention_heads
        self.KV, self.D, self.eps = self.H, self.C // self.H, c.layer_norm_eps
        self.parallel = bool(c.use_parallel_residual)
        rp = c.rope_parameters
        self.R, self.theta = int(self.D * rp["partial_rotary_factor"]), float(rp["rope_theta"])

    def norm(self, x, w, b):
        x = x - x.mean(-1, keepdim=True)
        return x / (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt() * w + b

    def forward(self, tok, taps, embeds=None):
        sd, H, D, R, T = self.sd, self.H, self.D, self.R, tok.shape[0]
        inv = 1.0 / (self.theta ** (torch.arange(0, R, 2, dtype=torch.int64).float() / R))
        ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None]
        cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()

        def rot(x):
            xr = x[:, :R]
            return torch.cat([xr * cos + torch.cat([-xr[:, R // 2:], xr[:, :R // 2]], -1) * sin, x[:, R:]], -1)
        out = {}
        resid = sd["gpt_neox.embed_in.weight"][tok] if embeds is None else embeds
        out["input"] = resid
        mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
        for l in range(self.L):
            p = f"gpt_neox.layers.{l}."
            W, B = sd[p + "attention.query_key_value.weight"], sd[p + "attention.query_key_value.bias"]
            WO, bO = sd[p + "attention.dense.weight"].T, sd[p + "attention.dense.bias"]
            ln1 = (sd[p + "input_layernorm.weight"], sd[p + "input_layernorm.bias"])
            ln2 = (sd[p + "post_attention_layernorm.weight"], sd[p + "post_attention_layernorm.bias"])

            def proj(name, h, j):  # j: 0 q, 1 k, 2 v of head h
                x = self.norm(resid + taps.get(name, 0), *ln1)
                r0 = (3 * h + j) * D
                return x @ W[r0:r0 + D].T + B[r0:r0 + D]
            attn_out = 0
            for h in range(H):
                q, k, v = rot(proj(f"a{l}.h{h}<q>", h, 0)), rot(proj(f"a{l}.h{h}<k>", h, 1)), proj(f"a{l}.h{h}<v>", h, 2)
                s_ = (q @ k.T / math.sqrt(D)).masked_fill(mask, float("-inf"))
                out[f"a{l}.h{h}"] = (s_.softmax(-1) @ v) @ WO[h * D:(h + 1) * D]
                attn_out = attn_out + out[f"a{l}.h{h}"]
            mid = resid + attn_out + bO
            x = self.norm((resid if self.parallel else mid) + taps.get(f"m{l}", 0), *ln2)
            pre = x @ sd[p + "mlp.dense_h_to_4h.weight"].T + sd[p + "mlp.dense_h_to_4h.bias"]
            out[f"m{l}"] = torch.nn.functional.gelu(pre) @ sd[p + "mlp.dense_4h_to_h.weight"].T + \
                sd[p + "mlp.dense_4h_to_h.bias"]
            resid = mid + out[f"m{l}"]
        x = self.norm(resid + taps.get("logits", 0), sd["gpt_neox.final_layer_norm.weight"],
                      sd["gpt_neox.final_layer_norm.bias"])
        return x @ sd["embed_out.weight"].T, out


def input_grads(sp, tok, a, w, embeds=None):
    """d metric / d input of every destination node on one run (autograd at zero taps)."""
    taps = {v: torch.zeros(tok.shape[0], sp.C, requires_grad=True) for v in sp.dst}
    logits, _ = sp.forward(tok, taps, embeds)
    (logits[-1, a] - logits[-1, w]).backward()
    return {v: t.grad for v, t in taps.items()}, logits.detach()


def scores_of(sp, grads, clean_out, corr_out, src, dst):
    S = torch.full((len(src), len(dst)), float("nan"))
    for i, u in enumerate(src):
        d = corr_out[u] - clean_out[u]
        for j, v in enumerate(dst):
            if src_layer(u) < dst_layer(v, sp.L, sp.parallel):
                S[i, j] = (d * grads[v]).sum()
    return S


def eap_scores(sp, clean, corrupted, a, w, src, dst, ig_steps):
    """EAP-IG's three methods: EAP (clean run's gradient), EAP-IG-inputs (the gradient averaged over runs of the
    clean tokens whose input embeddings are corrupted + k/steps (clean - corrupted), k = 0..steps-1) and
    clean-corrupted (averaged over the clean and the corrupted run)."""
    with torch.no_grad():
        _, clean_out = sp.forward(clean, {})
        _, corr_out = sp.forward(corrupted, {})
    g_clean, logits = input_grads(sp, clean, a, w)
    g_corr, _ = input_grads(sp, corrupted, a, w)
    g_ig = {v: 0 for v in dst}
    for k in range(ig_steps):
        emb = corr_out["input"] + (k / ig_steps) * (clean_out["input"] - corr_out["input"])
        g, _ = input_grads(sp, clean, a, w, emb)
        for v in dst:
            g_ig[v] = g_ig[v] + g[v] / ig_steps
    eap = scores_of(sp, g_clean, clean_out, corr_out, src, dst)
    ig = scores_of(sp, g_ig, clean_out, corr_out, src, dst)
    cc = scores_of(sp, {v: (g_clean[v] + g_corr[v]) / 2 for v in dst}, clean_out, corr_out, src, dst)
    return eap, ig, cc, logits, g_clean


def make(name, out_root):
    spec = next(s for s in mg.MODELS if s["name"] == name)
    arch, folder = spec["arch"], os.path.join(out_root, name)
    print(f"== {name}", flush=True)
    hf = mg.HF_CLASSES[arch][1].from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    br = mg.load_bridge(folder, hf.config.vocab_size)
    sp = SplitNeox(hf, folder) if arch == "neox" else Split(hf, arch)
    src, dst = node_names(sp.L, sp.H, sp.KV)
    sp.dst = dst
    pat = load_file(os.path.join(folder, "golden_patch.safetensors"))
    n_pairs = sum(1 for k in pat if k.endswith(".clean_tokens"))
    out, worst = {}, 0.0
    for i in range(n_pairs):
        P = f"p{i}."
        clean, corr = pat[P + "clean_tokens"].long(), pat[P + "corrupted_tokens"].long()
        a, w = int(pat[P + "answer"][0]), int(pat[P + "wrong"][0])
        S, ig, cc, logits, g_clean = eap_scores(sp, clean, corr, a, w, src, dst, IG_STEPS)
        # Cross-checks of the split forward against Hugging Face and TransformerLens.
        with torch.no_grad():
            d = (logits - hf(clean[None]).logits[0]).abs().max().item()
        if d > 1e-4:
            raise SystemExit(f"{name} {P}: split forward logits differ from HF by {d}")
        tl = {}
        br.reset_hooks()
        mid = "hook_resid_pre" if sp.parallel else "hook_resid_mid"
        for n in [f"blocks.{l}.{h}" for l in range(sp.L) for h in ("hook_resid_post", mid)]:
            br.add_hook(n, lambda g, hook, n=n: tl.__setitem__(n, g.detach()[0]), "bwd")
        lg = br(clean[None])
        (lg[0, -1, a] - lg[0, -1, w]).backward()
        br.reset_hooks()
        pairs = [("logits", f"blocks.{sp.L - 1}.hook_resid_post")]
        if sp.parallel:
            # No resid_mid: resid_pre's total gradient is the residual path's (resid_post's) plus every one of
            # the layer's split inputs' (q, k, v of each head and the MLP all read it).
            for l in range(sp.L):
                tot = tl[f"blocks.{l}.hook_resid_post"] + sum(g_clean[v] for v in dst if v != "logits" and
                                                              int(v[1:].split(".")[0]) == l)
                g_clean[f"pre{l}"] = tot
                pairs.append((f"pre{l}", f"blocks.{l}.hook_resid_pre"))
        else:
            pairs += [(f"m{l}", f"blocks.{l}.hook_resid_mid") for l in range(sp.L)]
        for v, h in pairs:
            d = (g_clean[v] - tl[h]).abs().max().item()
            if d > 1e-4 + 1e-4 * tl[h].abs().max().item():
                raise SystemExit(f"{name} {P}: input gradient of {v} differs from TL's {h} by {d}")
            worst = max(worst, d)
        out[f"e{i}.scores"] = S.to(torch.float32).contiguous()
        out[f"e{i}.ig_inputs"] = ig.to(torch.float32).contiguous()
        out[f"e{i}.clean_corrupted"] = cc.to(torch.float32).contiguous()
        print(f"  pair {i}: {int(torch.isfinite(S).sum())} edges, max |score| {S.nan_to_num().abs().max():.4g}", flush=True)
    print(f"  split-input gradients vs TL backward hooks max|diff| = {worst:.3g}", flush=True)
    mg.save_st(out, os.path.join(folder, "golden_eap.safetensors"))
    desc = {
        "versions": gg.versions(),
        "generator": "tests/golden/make_eap_goldens.py",
        "method": "EAP (EAP-IG's score definition): sum_pos (corrupted - clean output of src) . "
                  "d metric / d input of dst, gradient on the clean run, metric = logit diff at the last position",
        "src_nodes": src, "dst_nodes": dst,
        "keys": "e<pair>.scores (EAP), e<pair>.ig_inputs (EAP-IG-inputs, steps 3), e<pair>.clean_corrupted "
                "(clean-corrupted): [n_src, n_dst], NaN where src does not precede dst",
        "ig_steps": IG_STEPS,
        "cross_check_tl_max_abs_diff": worst,
    }
    gg.write_json(desc, os.path.join(folder, "golden_eap.json"))


def main():
    gg.run_models(make, __doc__)


if __name__ == "__main__":
    main()
