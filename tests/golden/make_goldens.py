#!/usr/bin/env python3
"""Make the tiny-model forward and activation-patching goldens under tests/data/ from the
reference implementations (HF transformers builds/saves the models, TransformerLens computes
every golden number); a plain-torch re-derivation only cross-checks TransformerLens.

Regenerate (from the repo root; needs the reference venv, offline is fine):
    ~/.cache/ps-venv/bin/python tests/golden/make_goldens.py            # all nine models
    ~/.cache/ps-venv/bin/python tests/golden/make_goldens.py gpt2-tiny-a  # just some
Options: --out DIR (default tests/data), --no-check (skip the plain-torch cross-check).

TransformerLens 4.x removed HookedTransformer/HookedTransformerConfig; its replacement is
TransformerBridge.boot_transformers(...) + enable_compatibility_mode(no_processing=True),
which keeps raw weights (no fold_ln, no centring: the legacy fold_ln=False,
center_writing_weights=False, center_unembed=False) and the legacy hook names.
"""
import argparse
import json
import math
import os
import sys
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402

torch.set_num_threads(1)

import transformers  # noqa: E402
import transformer_lens  # noqa: E402
from importlib.metadata import version as pkg_version  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from tokenizers import Tokenizer, models as tok_models  # noqa: E402
from transformers import (  # noqa: E402
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)
from transformer_lens import patching  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# ---------------------------------------------------------------------------------------------
# Model zoo. Seeds are fixed per model so each folder regenerates byte-identically.

MODELS = [
    dict(name="gpt2-tiny-a", arch="gpt2", seed=101,
         hf=dict(n_layer=2, n_embd=64, n_head=4, vocab_size=97, n_positions=32,
                 activation_function="gelu_new", bos_token_id=96, eos_token_id=96)),
    dict(name="gpt2-tiny-b", arch="gpt2", seed=102,
         hf=dict(n_layer=3, n_embd=48, n_head=3, vocab_size=97, n_positions=32,
                 activation_function="gelu_new", bos_token_id=96, eos_token_id=96)),
    dict(name="gpt2-tiny-c", arch="gpt2", seed=103,
         hf=dict(n_layer=2, n_embd=80, n_head=2, vocab_size=97, n_positions=32,
                 activation_function="gelu", bos_token_id=96, eos_token_id=96)),
    dict(name="llama-tiny-a", arch="llama", seed=201,
         hf=dict(hidden_size=64, intermediate_size=96, num_attention_heads=4,
                 num_key_value_heads=4, num_hidden_layers=2, vocab_size=101,
                 max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
                 tie_word_embeddings=False)),
    dict(name="llama-tiny-b", arch="llama", seed=202,
         hf=dict(hidden_size=64, intermediate_size=96, num_attention_heads=8,
                 num_key_value_heads=2, head_dim=8, num_hidden_layers=2, vocab_size=101,
                 max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=10000.0,
                 tie_word_embeddings=False)),
    dict(name="llama-tiny-c", arch="llama", seed=203,
         hf=dict(hidden_size=48, intermediate_size=96, num_attention_heads=3,
                 num_key_value_heads=3, num_hidden_layers=2, vocab_size=101,
                 max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=500.0,
                 tie_word_embeddings=False)),
    # GPT-NeoX (Pythia's family): the fused query_key_value is interleaved per head; bos/eos 0 as in
    # Pythia's <|endoftext|>. c is saved in fp16 (Pythia ships fp16); its goldens come from the fp16 file.
    dict(name="neox-tiny-a", arch="neox", seed=301,
         hf=dict(hidden_size=64, num_attention_heads=4, num_hidden_layers=2, intermediate_size=256,
                 vocab_size=101, max_position_embeddings=64, rotary_pct=0.25, rotary_emb_base=10000,
                 use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-5,
                 tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    dict(name="neox-tiny-b", arch="neox", seed=302,
         hf=dict(hidden_size=48, num_attention_heads=3, num_hidden_layers=3, intermediate_size=192,
                 vocab_size=101, max_position_embeddings=64, rotary_pct=1.0, rotary_emb_base=10000,
                 use_parallel_residual=False, hidden_act="gelu", layer_norm_eps=1e-5,
                 tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
    dict(name="neox-tiny-c", arch="neox", seed=303, dtype="float16",
         hf=dict(hidden_size=80, num_attention_heads=5, num_hidden_layers=2, intermediate_size=160,
                 vocab_size=101, max_position_embeddings=64, rotary_pct=0.5, rotary_emb_base=500,
                 use_parallel_residual=True, hidden_act="gelu", layer_norm_eps=1e-6,
                 tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)),
]
HF_CLASSES = {"gpt2": (GPT2Config, GPT2LMHeadModel), "llama": (LlamaConfig, LlamaForCausalLM),
              "neox": (GPTNeoXConfig, GPTNeoXForCausalLM)}

FORWARD_LENGTHS = [7, 12, 1, 5]
PATCH_LENGTHS = [6, 7, 8]
WEIGHT_STD = 0.15   # big enough that attention is far from uniform and bugs move numbers
BIAS_STD = 0.1


def build_hf_model(spec):
    """Random HF model: normal weights, random biases, norm gains in [0.5, 1.5]."""
    torch.manual_seed(spec["seed"])
    cfg_cls, model_cls = HF_CLASSES[spec["arch"]]
    model = model_cls(cfg_cls(**spec["hf"]))
    gen = torch.Generator().manual_seed(spec["seed"])
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = any(s in name for s in ("ln_", "layernorm", "model.norm", "layer_norm"))
            if is_norm and name.endswith("weight"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * BIAS_STD)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * WEIGHT_STD)
    if spec.get("dtype") == "float16":
        model = model.half()
    return model.eval()


def save_hf_model(model, folder):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    for f in os.listdir(folder):
        if f not in ("config.json", "model.safetensors"):
            os.remove(os.path.join(folder, f))
    os.chmod(os.path.join(folder, "model.safetensors"), 0o644)


def save_st(tensors, path):
    save_file(tensors, path, metadata={"generator": "tests/golden/make_goldens.py"})
    os.chmod(path, 0o644)


def dummy_tokenizer(vocab_size, tmpdir):
    """The bridge insists on a tokenizer; we only ever feed token ids, so a word-level stub
    with add_bos_token=True (so TL does not try to re-load one from the Hub) is enough."""
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(tok_models.WordLevel(vocab, unk_token="t0")),
        bos_token="t1", eos_token="t2", unk_token="t0", add_bos_token=True)
    tok.save_pretrained(tmpdir)
    tok = PreTrainedTokenizerFast.from_pretrained(tmpdir, add_bos_token=True)
    tok.init_kwargs.setdefault("name_or_path", tmpdir)
    return tok


def load_bridge(folder, vocab_size):
    with tempfile.TemporaryDirectory() as td:
        tok = dummy_tokenizer(vocab_size, td)
        br = TransformerBridge.boot_transformers(folder, tokenizer=tok, device="cpu",
                                                 dtype=torch.float32)
    br.enable_compatibility_mode(no_processing=True, disable_warnings=True)
    br.set_use_attn_result(True)
    br.eval()
    return br


# ---------------------------------------------------------------------------------------------
# Hook names saved in the forward goldens (TransformerLens legacy names).

def forward_hook_names(arch, n_layers, parallel=False):
    """parallel: a parallel-residual block, where TL (like legacy HookedTransformer) has no
    hook_resid_mid. GPT-NeoX's hook_rot_q/k are not TL hooks in 4.3 (see neox_rot_qk)."""
    names = ["hook_embed"] + (["hook_pos_embed"] if arch == "gpt2" else [])
    for L in range(n_layers):
        b = f"blocks.{L}."
        names += [b + "hook_resid_pre", b + "ln1.hook_scale", b + "ln1.hook_normalized",
                  b + "attn.hook_q", b + "attn.hook_k", b + "attn.hook_v"]
        if arch == "llama":
            names += [b + "attn.hook_rot_q", b + "attn.hook_rot_k"]
        names += [b + "attn.hook_attn_scores", b + "attn.hook_pattern", b + "attn.hook_z",
                  b + "attn.hook_result", b + "hook_attn_out"]
        names += [] if parallel else [b + "hook_resid_mid"]
        names += [b + "ln2.hook_scale", b + "ln2.hook_normalized", b + "mlp.hook_pre"]
        if arch == "llama":
            names += [b + "mlp.hook_pre_linear"]
        names += [b + "mlp.hook_post", b + "hook_mlp_out", b + "hook_resid_post"]
    names += ["ln_final.hook_scale", "ln_final.hook_normalized"]
    return names


# ---------------------------------------------------------------------------------------------
# Independent plain-torch forward with the legacy HookedTransformer semantics (raw weights).
# Only used to cross-check that the v4 bridge hooks sit where legacy TL put them and that
# patching them changes the computation the way legacy TL did. Never the source of a golden.

class Ref:
    def __init__(self, hf_model, arch):
        self.arch = arch
        self.c = hf_model.config
        self.sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}

    def forward(self, tokens, hooks=None, cache=None):
        hooks = hooks or {}

        def h(name, x):
            if name in hooks:
                x = hooks[name](x.clone())
            if cache is not None:
                cache[name] = x
            return x
        return self._gpt2(tokens, h) if self.arch == "gpt2" else self._llama(tokens, h)

    def _gpt2(self, tok, h):
        c, sd = self.c, self.sd
        D, H = c.n_embd, c.n_head
        dh = D // H
        n = tok.shape[0]

        def ln(x, pre):
            x = x - x.mean(-1, keepdim=True)
            scale = h(pre + ".hook_scale", (x.pow(2).mean(-1, keepdim=True)
                                            + c.layer_norm_epsilon).sqrt())
            # TL 4.x bridge: hook_normalized is x/scale BEFORE the affine (legacy
            # HookedTransformer's LayerNorm hooked it after w, b; its RMSNorm before w).
            return h(pre + ".hook_normalized", x / scale) * sd[pre_map[pre] + ".weight"] \
                + sd[pre_map[pre] + ".bias"]
        pre_map = {"ln_final": "transformer.ln_f"}
        for L in range(c.n_layer):
            pre_map[f"blocks.{L}.ln1"] = f"transformer.h.{L}.ln_1"
            pre_map[f"blocks.{L}.ln2"] = f"transformer.h.{L}.ln_2"
        resid = h("hook_embed", sd["transformer.wte.weight"][tok]) + \
            h("hook_pos_embed", sd["transformer.wpe.weight"][:n])
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        for L in range(c.n_layer):
            b, p = f"blocks.{L}.", f"transformer.h.{L}."
            resid = h(b + "hook_resid_pre", resid)
            x = ln(resid, b + "ln1")
            qkv = x @ sd[p + "attn.c_attn.weight"] + sd[p + "attn.c_attn.bias"]
            q, k, v = [t.reshape(n, H, dh) for t in qkv.split(D, -1)]
            q, k, v = h(b + "attn.hook_q", q), h(b + "attn.hook_k", k), h(b + "attn.hook_v", v)
            scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(dh)
            scores = h(b + "attn.hook_attn_scores", scores.masked_fill(mask, float("-inf")))
            pattern = h(b + "attn.hook_pattern", scores.softmax(-1))
            z = h(b + "attn.hook_z", torch.einsum("hqk,khd->qhd", pattern, v))
            W_O = sd[p + "attn.c_proj.weight"].reshape(H, dh, D)
            result = h(b + "attn.hook_result", torch.einsum("qhd,hdm->qhm", z, W_O))
            attn_out = h(b + "hook_attn_out", result.sum(1) + sd[p + "attn.c_proj.bias"])
            resid = h(b + "hook_resid_mid", resid + attn_out)
            x = ln(resid, b + "ln2")
            pre = h(b + "mlp.hook_pre", x @ sd[p + "mlp.c_fc.weight"] + sd[p + "mlp.c_fc.bias"])
            approx = "tanh" if c.activation_function == "gelu_new" else "none"
            post = h(b + "mlp.hook_post", torch.nn.functional.gelu(pre, approximate=approx))
            mlp_out = h(b + "hook_mlp_out", post @ sd[p + "mlp.c_proj.weight"]
                        + sd[p + "mlp.c_proj.bias"])
            resid = h(b + "hook_resid_post", resid + mlp_out)
        x = ln(resid, "ln_final")
        return x @ sd["transformer.wte.weight"].T

    def _llama(self, tok, h):
        c, sd = self.c, self.sd
        D, H, KV = c.hidden_size, c.num_attention_heads, c.num_key_value_heads
        dh = getattr(c, "head_dim", None) or D // H
        theta = c.rope_parameters["rope_theta"]
        n = tok.shape[0]

        def rms(x, pre, w):
            scale = h(pre + ".hook_scale", (x.pow(2).mean(-1, keepdim=True)
                                            + c.rms_norm_eps).sqrt())
            return h(pre + ".hook_normalized", x / scale) * sd[w]

        inv = 1.0 / (theta ** (torch.arange(0, dh, 2, dtype=torch.float32) / dh))
        ang = torch.arange(n, dtype=torch.float32)[:, None] * inv[None]
        cos = torch.cat([ang, ang], -1).cos()[:, None]
        sin = torch.cat([ang, ang], -1).sin()[:, None]

        def rot(x):  # HF rotate_half: pairs (i, i + dh/2)
            x1, x2 = x[..., : dh // 2], x[..., dh // 2:]
            return x * cos + torch.cat([-x2, x1], -1) * sin

        resid = h("hook_embed", sd["model.embed_tokens.weight"][tok])
        mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        grp = H // KV
        for L in range(c.num_hidden_layers):
            b, p = f"blocks.{L}.", f"model.layers.{L}."
            resid = h(b + "hook_resid_pre", resid)
            x = rms(resid, b + "ln1", p + "input_layernorm.weight")
            q = h(b + "attn.hook_q", (x @ sd[p + "self_attn.q_proj.weight"].T).reshape(n, H, dh))
            k = h(b + "attn.hook_k", (x @ sd[p + "self_attn.k_proj.weight"].T).reshape(n, KV, dh))
            v = h(b + "attn.hook_v", (x @ sd[p + "self_attn.v_proj.weight"].T).reshape(n, KV, dh))
            q = h(b + "attn.hook_rot_q", rot(q))
            k = h(b + "attn.hook_rot_k", rot(k))
            kx, vx = k.repeat_interleave(grp, 1), v.repeat_interleave(grp, 1)
            scores = torch.einsum("qhd,khd->hqk", q, kx) / math.sqrt(dh)
            scores = h(b + "attn.hook_attn_scores", scores.masked_fill(mask, float("-inf")))
            pattern = h(b + "attn.hook_pattern", scores.softmax(-1))
            z = h(b + "attn.hook_z", torch.einsum("hqk,khd->qhd", pattern, vx))
            W_O = sd[p + "self_attn.o_proj.weight"].T.reshape(H, dh, D)
            result = h(b + "attn.hook_result", torch.einsum("qhd,hdm->qhm", z, W_O))
            attn_out = h(b + "hook_attn_out", result.sum(1))
            resid = h(b + "hook_resid_mid", resid + attn_out)
            x = rms(resid, b + "ln2", p + "post_attention_layernorm.weight")
            pre = h(b + "mlp.hook_pre", x @ sd[p + "mlp.gate_proj.weight"].T)
            lin = h(b + "mlp.hook_pre_linear", x @ sd[p + "mlp.up_proj.weight"].T)
            post = h(b + "mlp.hook_post", torch.nn.functional.silu(pre) * lin)
            mlp_out = h(b + "hook_mlp_out", post @ sd[p + "mlp.down_proj.weight"].T)
            resid = h(b + "hook_resid_post", resid + mlp_out)
        x = rms(resid, "ln_final", "model.norm.weight")
        return x @ sd["lm_head.weight"].T


def maxdiff(a, b):
    a, b = a.double(), b.double()
    fin = torch.isfinite(a) & torch.isfinite(b)
    if not torch.equal(torch.isfinite(a), torch.isfinite(b)) or \
            not torch.equal(a[~fin], b[~fin]):
        return float("inf")
    return (a[fin] - b[fin]).abs().max().item() if fin.any() else 0.0


# ---------------------------------------------------------------------------------------------
# Patching sweeps: key suffix -> (TL function name, axes). All take (model, tokens, cache, metric).

SWEEPS = [
    ("resid_pre", "get_act_patch_resid_pre", ["layer", "pos"]),
    ("resid_mid", "get_act_patch_resid_mid", ["layer", "pos"]),
    ("attn_out", "get_act_patch_attn_out", ["layer", "pos"]),
    ("mlp_out", "get_act_patch_mlp_out", ["layer", "pos"]),
    ("z_all_pos", "get_act_patch_attn_head_out_all_pos", ["layer", "head"]),
    ("q_all_pos", "get_act_patch_attn_head_q_all_pos", ["layer", "head"]),
    ("k_all_pos", "get_act_patch_attn_head_k_all_pos", ["layer", "kv_head"]),
    ("v_all_pos", "get_act_patch_attn_head_v_all_pos", ["layer", "kv_head"]),
    ("pattern_all_pos", "get_act_patch_attn_head_pattern_all_pos", ["layer", "head"]),
    ("z_by_pos", "get_act_patch_attn_head_out_by_pos", ["layer", "pos", "head"]),
    ("q_by_pos", "get_act_patch_attn_head_q_by_pos", ["layer", "pos", "head"]),
    ("k_by_pos", "get_act_patch_attn_head_k_by_pos", ["layer", "pos", "kv_head"]),
    ("v_by_pos", "get_act_patch_attn_head_v_by_pos", ["layer", "pos", "kv_head"]),
    ("pattern_by_pos", "get_act_patch_attn_head_pattern_by_pos", ["layer", "head", "dest_pos"]),
    ("pattern_dest_src", "get_act_patch_attn_head_pattern_dest_src_pos",
     ["layer", "head", "dest_pos", "src_pos"]),
]

# What each sweep overwrites, for the cross-check: (hook suffix, index -> slice of [pos,...]
# or [head, dest, src] activation with batch squeezed).
REF_SWEEP = {
    "resid_pre": ("hook_resid_pre", lambda i: (i[0],)),
    "resid_mid": ("hook_resid_mid", lambda i: (i[0],)),
    "attn_out": ("hook_attn_out", lambda i: (i[0],)),
    "mlp_out": ("hook_mlp_out", lambda i: (i[0],)),
    "z_all_pos": ("attn.hook_z", lambda i: (slice(None), i[0])),
    "q_all_pos": ("attn.hook_q", lambda i: (slice(None), i[0])),
    "k_all_pos": ("attn.hook_k", lambda i: (slice(None), i[0])),
    "v_all_pos": ("attn.hook_v", lambda i: (slice(None), i[0])),
    "pattern_all_pos": ("attn.hook_pattern", lambda i: (i[0],)),
    "z_by_pos": ("attn.hook_z", lambda i: (i[0], i[1])),
    "q_by_pos": ("attn.hook_q", lambda i: (i[0], i[1])),
    "k_by_pos": ("attn.hook_k", lambda i: (i[0], i[1])),
    "v_by_pos": ("attn.hook_v", lambda i: (i[0], i[1])),
    "pattern_by_pos": ("attn.hook_pattern", lambda i: (i[0], i[1])),
    "pattern_dest_src": ("attn.hook_pattern", lambda i: (i[0], i[1], i[2])),
    "neuron": ("mlp.hook_post", lambda i: (slice(None), i[0])),
}


def neuron_sweep(br, tokens, src_cache, metric, n_layers, d_mlp):
    """Layer x neuron: column n of blocks.L.mlp.hook_post replaced at every position by the
    source run's value, one batch-1 forward per (L, n). TL has no built-in for this."""
    out = torch.zeros(n_layers, d_mlp)
    for L in range(n_layers):
        name = f"blocks.{L}.mlp.hook_post"
        src = src_cache[name]
        for nidx in range(d_mlp):
            def hook(act, hook, nidx=nidx, src=src):
                act = act.clone()
                act[:, :, nidx] = src[:, :, nidx]
                return act
            with torch.no_grad():
                logits = br.run_with_hooks(tokens, fwd_hooks=[(name, hook)])
            out[L, nidx] = metric(logits)
    return out


def ref_sweep(ref, key, shape, tokens, src_cache, metric):
    suffix, sel = REF_SWEEP[key]
    out = torch.zeros(shape)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in shape]).reshape(-1, len(shape)):
        idx = idx.tolist()
        name = f"blocks.{idx[0]}.{suffix}"
        s = sel(idx[1:])

        def hook(x, name=name, s=s):
            x[s] = src_cache[name][s]
            return x
        out[tuple(idx)] = metric(ref.forward(tokens, {name: hook}).unsqueeze(0))
    return out


# ---------------------------------------------------------------------------------------------

def check_shape(key, axes, res, axis_len, n):
    """Assert TL returned the documented axes; give the shape with 'pos' for prompt length."""
    sym = [axis_len.get(a, "pos") for a in axes]
    want = [n if s == "pos" else s for s in sym]
    if list(res.shape) != want:
        raise SystemExit(f"{key}: TL returned {list(res.shape)}, expected {want} ({axes})")
    return sym


def neox_rot_qk(br, cache, L):
    """GPT-NeoX's rotated q and k ([pos, heads, d_head]: the first rotary_dim dims rotated, the rest
    passed through). TL 4.3's bridge computes them but hooks neither (legacy HookedTransformer had
    hook_rot_q/k), so take them from TL's own rotation (_apply_rotary_pos_emb, HF's formula) applied to
    TL's hook_q/hook_k with TL's hook_cos/hook_sin of that layer."""
    b = f"blocks.{L}.attn."
    q = cache[b + "hook_q"].transpose(1, 2)   # [batch, heads, pos, d_head]
    k = cache[b + "hook_k"].transpose(1, 2)
    rq, rk = br.blocks[L].attn._apply_rotary_pos_emb(q, k, cache[b + "hook_cos"], cache[b + "hook_sin"])
    return rq.transpose(1, 2)[0], rk.transpose(1, 2)[0]


def tensor_info(t):
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}


def make_model(spec, out_root, check):
    name, arch = spec["name"], spec["arch"]
    folder = os.path.join(out_root, name)
    print(f"== {name}", flush=True)
    hf_model = build_hf_model(spec)
    save_hf_model(hf_model, folder)

    # Reload what is on disk so the goldens belong to the committed file, not to memory.
    # float32 even for an fp16 file: the goldens are the fp16 weights computed in fp32, as patchsweep does.
    hf = HF_CLASSES[arch][1].from_pretrained(folder, attn_implementation="eager",
                                             dtype=torch.float32).eval()
    cfg = hf.config
    parallel = arch == "neox" and cfg.use_parallel_residual
    if arch == "neox" and check:
        print("  (no plain-torch cross-check for GPT-NeoX: TL vs HF logits is checked)", flush=True)
        check = False
    vocab = cfg.vocab_size
    br = load_bridge(folder, vocab)
    n_layers = br.cfg.n_layers
    n_heads = br.cfg.n_heads
    n_kv = br.cfg.n_key_value_heads or n_heads
    d_mlp = br.cfg.d_mlp
    ref = Ref(hf, arch) if check else None

    axis_len = {"layer": n_layers, "head": n_heads, "kv_head": n_kv, "neuron": d_mlp}
    gen = torch.Generator().manual_seed(spec["seed"] * 1000 + 7)
    checks = {}

    # ---- forward goldens
    fwd = {}
    fwd_prompts = []
    hook_names = forward_hook_names(arch, n_layers, parallel)
    worst_hf = worst_ref = 0.0
    for i, n in enumerate(FORWARD_LENGTHS):
        toks = torch.randint(0, vocab, (1, n), generator=gen)
        fwd_prompts.append(toks[0].tolist())
        with torch.no_grad():
            logits, cache = br.run_with_cache(toks)
            hf_logits = hf(toks).logits
        d = (logits - hf_logits).abs().max().item()
        worst_hf = max(worst_hf, d)
        fwd[f"p{i}.tokens"] = toks[0].to(torch.int32)
        for hn in hook_names:
            if hn not in cache:
                raise SystemExit(f"{name}: TL cache has no {hn}")
            fwd[f"p{i}.{hn}"] = cache[hn][0].to(torch.float32).clone().contiguous()
        fwd[f"p{i}.logits"] = logits[0].to(torch.float32).clone().contiguous()
        for L in range(n_layers if arch == "neox" else 0):
            rq, rk = neox_rot_qk(br, cache, L)
            fwd[f"p{i}.blocks.{L}.attn.hook_rot_q"] = rq.to(torch.float32).clone().contiguous()
            fwd[f"p{i}.blocks.{L}.attn.hook_rot_k"] = rk.to(torch.float32).clone().contiguous()
        if check:
            rc = {}
            with torch.no_grad():
                rl = ref.forward(toks[0], cache=rc)
            worst_ref = max(worst_ref, maxdiff(rl, logits[0]))
            for hn in hook_names:
                md = maxdiff(rc[hn], cache[hn][0])
                if md > 1e-4:
                    raise SystemExit(f"{name}: plain-torch {hn} differs from TL by {md}")
                worst_ref = max(worst_ref, md)
    print(f"  TL vs HF logits max|diff| = {worst_hf:.3g}", flush=True)
    if worst_hf > 1e-4:
        raise SystemExit(f"{name}: TL and HF logits disagree ({worst_hf})")
    checks["tl_vs_hf_logits_maxdiff"] = worst_hf
    if check:
        print(f"  plain-torch vs TL forward activations max|diff| = {worst_ref:.3g}", flush=True)
        checks["plain_torch_vs_tl_forward_maxdiff"] = worst_ref
    save_st(fwd, os.path.join(folder, "golden_forward.safetensors"))

    # ---- patching goldens
    pat = {}
    pairs = []
    worst_patch_ref = 0.0
    sweep_shapes = {}
    for i, n in enumerate(PATCH_LENGTHS):
        clean = torch.randint(0, vocab, (1, n), generator=gen)
        n_changed = 1 + i % 2
        # Like a real dataset, the corruption should flip the prediction; draw corruptions
        # (deterministically) until the last-position top-1 differs, at most 50 tries.
        for _try in range(50):
            corrupted = clean.clone()
            where = (torch.randperm(n - 1, generator=gen)[:n_changed] + 1).sort().values
            for pos in where.tolist():
                new = int(torch.randint(0, vocab - 1, (1,), generator=gen))
                corrupted[0, pos] = new if new < clean[0, pos] else new + 1  # always different
            with torch.no_grad():
                clean_logits, clean_cache = br.run_with_cache(clean)
                corr_logits, corr_cache = br.run_with_cache(corrupted)
            if clean_logits[0, -1].argmax() != corr_logits[0, -1].argmax():
                break
        # answer = clean top-1; wrong = corrupted top-1 (or clean's runner-up if equal)
        answer = int(clean_logits[0, -1].argmax())
        wrong = int(corr_logits[0, -1].argmax())
        if wrong == answer:
            wrong = int(clean_logits[0, -1].topk(2).indices[1])

        def metric(logits, a=answer, w=wrong):
            return logits[0, -1, a] - logits[0, -1, w]
        clean_m, corr_m = float(metric(clean_logits)), float(metric(corr_logits))
        pairs.append(dict(clean_tokens=clean[0].tolist(), corrupted_tokens=corrupted[0].tolist(),
                          changed_positions=where.tolist(), answer=answer, wrong=wrong,
                          clean_metric=clean_m, corrupted_metric=corr_m))
        P = f"p{i}."
        pat[P + "clean_tokens"] = clean[0].to(torch.int32)
        pat[P + "corrupted_tokens"] = corrupted[0].to(torch.int32)
        pat[P + "answer"] = torch.tensor([answer], dtype=torch.int32)
        pat[P + "wrong"] = torch.tensor([wrong], dtype=torch.int32)
        pat[P + "clean_metric"] = torch.tensor([clean_m], dtype=torch.float32)
        pat[P + "corrupted_metric"] = torch.tensor([corr_m], dtype=torch.float32)
        directions = {
            # TL's convention: run the corrupted tokens, patch in clean activations.
            "denoise": (corrupted, clean_cache, clean),
            # and the reverse: run clean tokens, patch in corrupted activations.
            "noise": (clean, corr_cache, corrupted),
        }
        for dname, (run_toks, src_cache, src_toks) in directions.items():
            ref_src = {}
            if check:
                with torch.no_grad():
                    ref.forward(src_toks[0], cache=ref_src)
            for key, fn_name, _axes in SWEEPS:
                if parallel and key == "resid_mid":
                    continue  # no hook_resid_mid in a parallel block
                fn = getattr(patching, fn_name)
                with torch.no_grad():
                    res = fn(br, run_toks, src_cache, metric)
                res = res.detach().to(torch.float32).contiguous()
                pat[f"{P}{dname}.{key}"] = res
                sweep_shapes[key] = check_shape(key, _axes, res, axis_len, n)
                if check:
                    with torch.no_grad():
                        r = ref_sweep(ref, key, tuple(res.shape), run_toks[0], ref_src,
                                      lambda lg: metric(lg))
                    md = maxdiff(r, res)
                    if md > 1e-4:
                        raise SystemExit(f"{name} {P}{dname}.{key}: plain torch differs by {md}")
                    worst_patch_ref = max(worst_patch_ref, md)
            res = neuron_sweep(br, run_toks, src_cache, metric, n_layers, d_mlp)
            pat[f"{P}{dname}.neuron"] = res
            sweep_shapes["neuron"] = check_shape("neuron", ["layer", "neuron"], res, axis_len, n)
            if check:
                with torch.no_grad():
                    r = ref_sweep(ref, "neuron", tuple(res.shape), run_toks[0], ref_src, metric)
                md = maxdiff(r, res)
                if md > 1e-4:
                    raise SystemExit(f"{name} {P}{dname}.neuron: plain torch differs by {md}")
                worst_patch_ref = max(worst_patch_ref, md)
        print(f"  pair {i}: len {n}, changed {where.tolist()}, answer {answer} wrong {wrong}, "
              f"clean {clean_m:.4f} corrupted {corr_m:.4f}", flush=True)
    if check:
        print(f"  plain-torch vs TL patching max|diff| = {worst_patch_ref:.3g}", flush=True)
        checks["plain_torch_vs_tl_patching_maxdiff"] = worst_patch_ref
    save_st(pat, os.path.join(folder, "golden_patch.safetensors"))

    # ---- descriptions
    versions = {"torch": torch.__version__, "transformers": transformers.__version__,
                "transformer_lens": pkg_version("transformer_lens"),
                "python": sys.version.split()[0]}
    model_desc = {
        "arch": arch, "hf_config": {k: v for k, v in spec["hf"].items()},
        "seed": spec["seed"], "n_layers": n_layers, "n_heads": n_heads,
        "n_key_value_heads": n_kv, "d_model": br.cfg.d_model, "d_head": br.cfg.d_head,
        "d_mlp": d_mlp, "d_vocab": vocab,
        "init": f"weights N(0,{WEIGHT_STD}), biases N(0,{BIAS_STD}), norm gains U(0.5,1.5)",
    }
    tl_loading = ("TransformerBridge.boot_transformers(<this folder>, device='cpu', "
                  "dtype=float32) + enable_compatibility_mode(no_processing=True) "
                  "(raw weights: no fold_ln, no centring) + set_use_attn_result(True); "
                  "HookedTransformer no longer exists in TL 4.x")
    fwd_desc = {
        "versions": versions, "model": model_desc, "tl_loading": tl_loading, "checks": checks,
        "bos": "none added: token ids are fed as given (no BOS prepended)",
        "prompts": fwd_prompts,
        "key_format": "p<i>.<TL hook name> (batch dim squeezed), p<i>.tokens (int32), "
                      "p<i>.logits [pos, d_vocab]",
        "notes": [
            "hook_attn_scores: already divided by sqrt(d_head); masked (future) entries are -inf",
            "ln*.hook_scale: [pos, 1] = sqrt(mean(x^2) + eps) (LayerNorm: of centred x)",
            ("ln*.hook_normalized: TL 4.x gives x_centred/scale BEFORE the gain/bias for both "
             "LayerNorm and RMSNorm (legacy HookedTransformer's LayerNorm hooked it after "
             "w, b; this file follows the installed TL 4.x)"),
            "hook_q/k/v: [pos, heads, d_head] before rotary; hook_rot_q/k after (HF rotate_half)",
            "GQA: hook_k, hook_v, hook_rot_k have n_key_value_heads heads (not repeated)",
            "hook_result: [pos, n_heads, d_model] = z_h @ W_O[h]; hook_attn_out = sum_h + b_O",
            "llama mlp: hook_pre = x @ W_gate, hook_pre_linear = x @ W_up, "
            "hook_post = silu(hook_pre) * hook_pre_linear",
            "gpt-neox: hook_rot_q/k are not TL 4.3 hooks; they are TL's _apply_rotary_pos_emb of "
            "hook_q/hook_k with the layer's hook_cos/hook_sin (only the first rotary_dim dims "
            "rotate). With use_parallel_residual there is no hook_resid_mid (TL has none).",
        ],
        "keys": {k: tensor_info(v) for k, v in fwd.items()},
    }
    sweep_desc = {}
    for key, fn_name, axes in SWEEPS:
        if key not in sweep_shapes:
            continue  # resid_mid of a parallel block
        sweep_desc[key] = {"tl_function": f"transformer_lens.patching.{fn_name}", "axes": axes,
                           "shape": sweep_shapes[key]}
    sweep_desc["neuron"] = {
        "tl_function": None,
        "how": "own hook on blocks.L.mlp.hook_post: act[:, :, n] = source[:, :, n] (all "
               "positions), one batch-1 forward per (L, n) via TransformerBridge.run_with_hooks",
        "axes": ["layer", "neuron"], "shape": sweep_shapes["neuron"]}
    patch_desc = {
        "versions": versions, "model": model_desc, "tl_loading": tl_loading, "checks": checks,
        "bos": "none added: token ids are fed as given (no BOS prepended)",
        "metric": "logit difference logits[-1, answer] - logits[-1, wrong], batch 1 per prompt",
        "answer_choice": "answer = argmax of clean logits at the last position; wrong = argmax "
                         "of corrupted logits there (clean runner-up if they coincide)",
        "directions": {
            "denoise": "patching_fn(model, corrupted_tokens, clean_cache, metric): run corrupted, "
                       "patch in clean activations (TL's convention)",
            "noise": "patching_fn(model, clean_tokens, corrupted_cache, metric): run clean, "
                     "patch in corrupted activations",
        },
        "key_format": "p<i>.<direction>.<sweep>; p<i>.clean_tokens, p<i>.corrupted_tokens "
                      "(int32 [pos]), p<i>.answer, p<i>.wrong (int32 [1]), p<i>.clean_metric, "
                      "p<i>.corrupted_metric (float32 [1])",
        "sweeps": sweep_desc,
        "notes": [
            "Every value is float32 metric of one patched forward; shapes are exactly TL's return "
            "shapes for a batch-1 call (pos = that prompt's length).",
            "get_act_patch_attn_head_pattern_by_pos returns [n_layers, n_heads, dest_pos] "
            "(head before position, unlike the *_by_pos vector sweeps which are "
            "[n_layers, pos, n_heads]); each cell overwrites pattern[head, dest, :].",
            "k/v sweeps iterate over n_key_value_heads (TL: generic_activation_patch uses "
            "cfg.n_key_value_heads for activation_name k and v) and patch hook_k/hook_v, which "
            "have n_key_value_heads heads; patching kv head g changes every query head h with "
            "h // (n_heads / n_key_value_heads) == g. q/z/pattern sweeps use n_heads.",
            "q/k sweeps patch hook_q/hook_k, i.e. before rotary; the rotation is applied to the "
            "patched values.",
            "pattern sweeps overwrite post-softmax hook_pattern; masked entries are 0 in both "
            "runs, so pattern_dest_src cells with src_pos > dest_pos equal the unpatched run.",
        ],
        "pairs": pairs,
        "keys": {k: tensor_info(v) for k, v in pat.items()},
    }
    for fname, desc in (("golden_forward.json", fwd_desc), ("golden_patch.json", patch_desc)):
        with open(os.path.join(folder, fname), "w") as f:
            json.dump(desc, f, indent=1)
            f.write("\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", help="names to (re)make; default all")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    ap.add_argument("--no-check", action="store_true",
                    help="skip the plain-torch cross-check of TL's activations and sweeps")
    a = ap.parse_args()
    specs = [m for m in MODELS if not a.models or m["name"] in a.models]
    unknown = set(a.models) - {m["name"] for m in MODELS}
    if unknown:
        raise SystemExit(f"unknown model(s): {sorted(unknown)}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"transformer_lens {pkg_version('transformer_lens')}", flush=True)
    for spec in specs:
        make_model(spec, a.out, not a.no_check)


if __name__ == "__main__":
    main()
