#!/usr/bin/env python3
"""Make the path-patching goldens (tests/data/<model>/golden_path.json): ARENA's path patching
(chapter 1.4, IOI: `get_path_patch_head_to_final_resid_post`, `get_path_patch_head_to_heads`,
`patch_or_freeze_head_vectors`, `patch_head_input`) run as written, with hooks, on TransformerLens
(4.x TransformerBridge in compatibility mode: the same hook names and hook API), on the committed
tiny models. Extensions beyond ARENA's two functions, written the same way: freeze_mlps (the IOI
code's option: every hook_mlp_out frozen at orig in the first pass too), senders at one position,
MLP senders (hook_mlp_out from new) and MLP receivers (the MLP's input, blocks.l.mlp.hook_in,
captured in the first pass, where every MLP's output is frozen under freeze_mlps, receivers included,
and patched in the second).

ARENA's orig is the clean (IOI) run and new the corrupted (ABC) one: this project's direction
"noise". direction "denoise" swaps them.

Regenerate (from the repo root; needs the reference venv, offline is fine):
    ~/.cache/ps-venv/bin/python tests/golden/make_path_goldens.py              # default models
    ~/.cache/ps-venv/bin/python tests/golden/make_path_goldens.py gpt2-tiny-b  # just some
Option: --out DIR (default tests/data). The models are read, never rebuilt (make_goldens.py owns them).
"""
import argparse
import itertools
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import REPO, load_bridge, pkg_version, torch, transformers  # noqa: E402

DEFAULT_MODELS = ["gpt2-tiny-a", "gpt2-tiny-b", "llama-tiny-b"]
N = 3          # prompts, run as one batch as ARENA does (no padding: one length)
T = 7          # prompt length
SEED = 13


def rounded(t):
    return [float(f"{x:.9g}") for x in t.reshape(-1).tolist()]


def z_name_filter(name):
    return name.endswith("attn.hook_z")


def mlp_out_filter(name):
    return name.endswith("hook_mlp_out")


def layer_of(name):
    return int(name.split(".")[1])


# ARENA's patch_or_freeze_head_vectors, with a position selection for the sender (None: all, ARENA's).
def patch_or_freeze_head_vectors(orig_head_vector, hook, new_cache, orig_cache, head_to_patch, pos=None):
    orig_head_vector[...] = orig_cache[hook.name][...]
    if head_to_patch is not None and head_to_patch[0] == layer_of(hook.name):
        sel = slice(None) if pos is None else [pos]
        orig_head_vector[:, sel, head_to_patch[1]] = new_cache[hook.name][:, sel, head_to_patch[1]]
    return orig_head_vector


# The same for MLPs (freeze_mlps, and MLP senders).
def patch_or_freeze_mlp(orig_mlp_out, hook, new_cache, orig_cache, mlp_to_patch, freeze):
    L = layer_of(hook.name)
    if freeze:
        orig_mlp_out[...] = orig_cache[hook.name][...]
    if mlp_to_patch == L:
        orig_mlp_out[...] = new_cache[hook.name][...]
    return orig_mlp_out


def patch_head_input(orig_activation, hook, patched_cache, head_list):
    heads_to_patch = [head for layer, head in head_list if layer == layer_of(hook.name)]
    orig_activation[:, :, heads_to_patch] = patched_cache[hook.name][:, :, heads_to_patch]
    return orig_activation


def patch_mlp_input(orig_activation, hook, patched_cache):
    orig_activation[...] = patched_cache[hook.name][...]
    return orig_activation


def pass1_hooks(model, sender, pos, new_cache, orig_cache, freeze_mlps):
    kind, sl, sh = sender
    model.reset_hooks()
    head = (sl, sh) if kind == "head" else None
    model.add_hook(z_name_filter, lambda a, hook: patch_or_freeze_head_vectors(
        a, hook, new_cache, orig_cache, head, pos))
    if freeze_mlps or kind == "mlp":
        model.add_hook(mlp_out_filter, lambda a, hook: patch_or_freeze_mlp(
            a, hook, new_cache, orig_cache, sl if kind == "mlp" else None, freeze_mlps))


def path_patch(model, case, orig_toks, new_toks):
    """One case: last-position logits (N, senders, V) of ARENA's algorithm for each sender."""
    with torch.no_grad():
        _, new_cache = model.run_with_cache(new_toks, names_filter=lambda n: z_name_filter(n) or mlp_out_filter(n),
                                            return_type=None)
        _, orig_cache = model.run_with_cache(orig_toks, names_filter=lambda n: z_name_filter(n) or mlp_out_filter(n),
                                             return_type=None)
        out = []
        recv = case["receivers"]
        for sender in case["senders"]:
            if recv == "resid_post":
                # get_path_patch_head_to_final_resid_post: one pass, unembed(ln_final(resid_post)).
                pass1_hooks(model, sender, case["sender_pos"], new_cache, orig_cache, case["freeze_mlps"])
                last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
                _, pc = model.run_with_cache(orig_toks, names_filter=lambda n: n == last, return_type=None)
                model.reset_hooks()
                logits = model.unembed(model.ln_final(pc[last]))
            elif case["input"] == "mlp":
                names = [f"blocks.{L}.mlp.hook_in" for L in recv]
                pass1_hooks(model, sender, case["sender_pos"], new_cache, orig_cache, case["freeze_mlps"])
                _, pc = model.run_with_cache(orig_toks, names_filter=lambda n: n in names, return_type=None)
                model.reset_hooks()
                logits = model.run_with_hooks(orig_toks, return_type="logits", fwd_hooks=[
                    (lambda n: n in names, lambda a, hook: patch_mlp_input(a, hook, pc))])
            else:
                # get_path_patch_head_to_heads: pass 1 records the receivers' hook_q/k/v, pass 2 patches them.
                layers = sorted({L for L, _ in recv})
                names = [f"blocks.{L}.attn.hook_{case['input']}" for L in layers]
                pass1_hooks(model, sender, case["sender_pos"], new_cache, orig_cache, case["freeze_mlps"])
                _, pc = model.run_with_cache(orig_toks, names_filter=lambda n: n in names, return_type=None)
                model.reset_hooks()
                logits = model.run_with_hooks(orig_toks, return_type="logits", fwd_hooks=[
                    (lambda n: n in names, lambda a, hook: patch_head_input(a, hook, pc, recv))])
            out.append(logits[:, -1])
        model.reset_hooks()
    return torch.stack(out, 1)   # (N, senders, V)


def make(name, out_root):
    folder = os.path.join(REPO, "tests", "data", name)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    vocab = cfg["vocab_size"]
    br = load_bridge(folder, vocab)
    L, H = br.cfg.n_layers, br.cfg.n_heads
    Hkv = cfg.get("num_key_value_heads") or H
    g = torch.Generator().manual_seed(SEED + sum(map(ord, name)))
    clean = torch.randint(0, vocab, (N, T), generator=g)
    corrupted = clean.clone()
    for p in (2, 4):
        corrupted[:, p] = (corrupted[:, p] + 1 + torch.randint(0, vocab - 1, (N,), generator=g)) % vocab
    answer = torch.randint(0, vocab, (N,), generator=g)
    wrong = (answer + 1 + torch.randint(0, vocab - 1, (N,), generator=g)) % vocab

    heads = lambda layers: [("head", l, h) for l, h in itertools.product(layers, range(H))]  # noqa: E731
    mlps = [("mlp", l, -1) for l in range(L)]
    last = L - 1
    cases = []
    for fm in (False, True):
        cases.append(dict(receivers="resid_post", input="resid_post", senders=heads(range(L)), freeze_mlps=fm))
        cases.append(dict(receivers=[(last, 0), (last, H - 1)], input="q", senders=heads(range(last)), freeze_mlps=fm))
        cases.append(dict(receivers=[(last, 1 % Hkv)], input="v", senders=heads(range(last)), freeze_mlps=fm))
    cases.append(dict(receivers=[(last, 0)], input="k", senders=heads(range(last)), freeze_mlps=False))
    if L >= 3:   # receivers at two layers: layer-1 senders reach only the later ones
        cases.append(dict(receivers=[(1, 0), (last, 1)], input="q", senders=heads(range(last)), freeze_mlps=True))
    cases.append(dict(receivers="resid_post", input="resid_post", senders=heads(range(L)), freeze_mlps=False, sender_pos=T - 1))
    # Elsewhere than the last position a sender reaches the final residual only through other heads,
    # which are frozen: its value is orig's. Into keys it arrives at that position.
    cases.append(dict(receivers=[(last, 0)], input="k", senders=heads(range(last)), freeze_mlps=True, sender_pos=4))
    cases.append(dict(receivers="resid_post", input="resid_post", senders=mlps, freeze_mlps=True))
    cases.append(dict(receivers=[last], input="mlp", senders=heads(range(L)), freeze_mlps=False))
    # Receiver MLPs are frozen in pass 1 like the others (their input is what is captured).
    cases.append(dict(receivers=list(range(L - 2, L)), input="mlp", senders=heads(range(L)) + mlps, freeze_mlps=True))
    cases.append(dict(receivers=[(last, 0)], input="v", senders=heads(range(last)) + mlps[:last], freeze_mlps=True,
                      direction="denoise"))
    docs = []
    for c in cases:
        c.setdefault("sender_pos", None)
        c.setdefault("direction", "noise")
        orig, new = (clean, corrupted) if c["direction"] == "noise" else (corrupted, clean)
        lg = path_patch(br, c, orig, new)
        ld = lg.gather(2, answer.view(N, 1, 1).expand(N, lg.shape[1], 1))[..., 0] - \
            lg.gather(2, wrong.view(N, 1, 1).expand(N, lg.shape[1], 1))[..., 0]
        docs.append({"receivers": c["receivers"], "input": c["input"], "freeze_mlps": c["freeze_mlps"],
                     "direction": c["direction"], "sender_pos": -1 if c["sender_pos"] is None else c["sender_pos"],
                     "senders": [[k, l, h] for k, l, h in c["senders"]],
                     "logits_last": rounded(lg), "logit_diff": rounded(ld)})
    with torch.no_grad():
        base = {k: br(t, return_type="logits")[:, -1] for k, t in (("clean", clean), ("corrupted", corrupted))}
    doc = {
        "generator": "tests/golden/make_path_goldens.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "transformer_lens": pkg_version("transformer_lens"), "python": sys.version.split()[0]},
        "tl_loading": "make_goldens.load_bridge: TransformerBridge.boot_transformers + "
                      "enable_compatibility_mode(no_processing=True); one batch of N prompts, no BOS",
        "seed": SEED, "N": N, "T": T,
        "clean": clean.tolist(), "corrupted": corrupted.tolist(), "answer": answer.tolist(), "wrong": wrong.tolist(),
        "clean_logits_last": rounded(base["clean"]), "corrupted_logits_last": rounded(base["corrupted"]),
        "notes": [
            "orig = clean, new = corrupted for direction noise (ARENA's IOI vs ABC); swapped for denoise",
            "logits_last: (N, senders, V) logits[:, -1]; logit_diff: (N, senders) answer - wrong at the last position",
            "senders: [kind, layer, head]; kind mlp has head -1 (its hook_mlp_out from new)",
            "receivers: resid_post (final), or [[layer, head], ...] of input q/k/v (k/v heads are key/value heads, "
            "TL's hook_k/hook_v head axis), or [layer, ...] of input mlp (blocks.l.mlp.hook_in)",
            "sender_pos -1: every position (ARENA); else only that position of the sender comes from new",
        ],
        "cases": docs,
    }
    os.makedirs(os.path.join(out_root, name), exist_ok=True)
    path = os.path.join(out_root, name, "golden_path.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{name}: {len(docs)} cases -> {path}", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="*", default=DEFAULT_MODELS)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    a = ap.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
          f"transformer_lens {pkg_version('transformer_lens')}", flush=True)
    for m in a.models:
        make(m, a.out)


if __name__ == "__main__":
    main()
