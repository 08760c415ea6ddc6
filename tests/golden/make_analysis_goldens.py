#!/usr/bin/env python3
"""Make the analysis goldens (tests/data/<model>/golden_analysis.safetensors + .json) from TransformerLens's
ActivationCache methods on the committed tiny models: direct logit attribution (decompose_resid,
stack_head_results, stack_neuron_results, each through logit_attrs, i.e. apply_ln_to_stack's centring and
cached final-norm scale, no norm weight) and the logit lens (accumulated_resid(incl_mid=True, apply_ln=True),
which recomputes the final norm per stage, TL >= 2.18; and the cached-scale variant, apply_ln_to_stack with
recompute_ln=False, then the final norm's weight and bias, which is what older TL gave on folded weights), and
the OV-circuit logits the copy/next scores are read from (plain torch on TL's weights and norm modules), and chosen
neurons' blocks.l.mlp.hook_post over a few prompts with each neuron's top activations (sorted in Python: activation
descending, ties to the lower prompt, then the lower position), and the DLA of each prompt run with two heads zero-ablated
(hooks on hook_z, the IOI backup-name-mover experiment).

Regenerate (from the repo root; needs the reference venv, offline is fine; ~20 s):
    ~/.cache/ps-venv/bin/python tests/golden/make_analysis_goldens.py              # all nine models
    ~/.cache/ps-venv/bin/python tests/golden/make_analysis_goldens.py gpt2-tiny-a  # just some
Option: --out DIR (default tests/data). The models are read, never rebuilt (make_goldens.py owns them).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import REPO, load_bridge, pkg_version, save_st, torch, transformers  # noqa: E402

MODELS = ["gpt2-tiny-a", "gpt2-tiny-b", "gpt2-tiny-c", "llama-tiny-a", "llama-tiny-b", "llama-tiny-c",
          "neox-tiny-a", "neox-tiny-b", "neox-tiny-c"]
# (length, metric position): the last position, and one in the middle (a metric read before the end).
PROMPTS = [(6, 5), (9, 4), (8, 7)]
SEED = 14
OV_FIRST, OV_N, OV_BOS = 10, 8, 3   # OV scores: members 10..17 (a "sequence": next of 10 is 11), each after token 3
HS_BATCH, HS_N = 3, 7                # head detectors: 3 sequences, each 7 random tokens repeated after a BOS
OV_PROMPTS = [[3, 10, 11, 12, 13, 40], [3, 14, 15, 16, 40, 10, 17, 11]]   # prompts with members at known positions
# Neurons (the small Neuroscope): prompts after token 3 as BOS, of different lengths, the second repeated as the
# fourth (exact ties across prompts; so is position 0 everywhere), and the top NRN_K of each neuron.
NRN_PROMPTS = [[3, 20, 21, 22, 23, 24, 25], [3, 30, 31, 32], [3, 40, 41, 42, 43, 44, 45, 46, 47], [3, 30, 31, 32], [3, 50, 51]]
NRN_K = 6


def make(name, out_root):
    folder = os.path.join(REPO, "tests", "data", name)
    cfg = json.load(open(os.path.join(folder, "config.json")))
    vocab = cfg["vocab_size"]
    br = load_bridge(folder, vocab)
    L = br.cfg.n_layers
    mid = not cfg.get("use_parallel_residual", False)   # a parallel block (GPT-NeoX) has no resid_mid
    W_U = br.W_U.detach()                                   # (C, V)
    b_U = getattr(br, "b_U", None)
    b_U = torch.zeros(vocab) if b_U is None else b_U.detach()
    lnf_w = br.ln_final.weight.detach() if hasattr(br.ln_final, "weight") else None
    lnf_b = getattr(br.ln_final, "bias", None)
    lnf_b = None if lnf_b is None else lnf_b.detach()
    g = torch.Generator().manual_seed(SEED + sum(map(ord, name)))
    out, meta = {}, {"prompts": [], "labels": {}}
    for i, (T, pos) in enumerate(PROMPTS):
        tokens = torch.randint(0, vocab, (1, T), generator=g)
        with torch.no_grad():
            logits, cache = br.run_with_cache(tokens)
            top2 = torch.topk(logits[0, pos], 2).indices
            answer, wrong = int(top2[0]), int(top2[1])
            if i == 1:   # one prompt whose "answer" is not the model's top token: negative parts and sums
                answer, wrong = wrong, answer
            resid, rlabels = cache.decompose_resid(layer=-1, pos_slice=pos, return_labels=True)
            heads, hlabels = cache.stack_head_results(layer=-1, pos_slice=pos, return_labels=True)
            neurons, nlabels = cache.stack_neuron_results(layer=L, pos_slice=pos, return_labels=True)
            a, w = torch.tensor([answer]), torch.tensor([wrong])
            kw = dict(tokens=a, incorrect_tokens=w, pos_slice=pos)
            out[f"p{i}.dla_resid"] = cache.logit_attrs(resid, **kw).reshape(-1).float()
            out[f"p{i}.dla_heads"] = cache.logit_attrs(heads, **kw).reshape(-1).float()
            out[f"p{i}.dla_neurons"] = cache.logit_attrs(neurons, **kw).reshape(-1).float()
            acc, alabels = cache.accumulated_resid(incl_mid=mid, apply_ln=True, pos_slice=pos, return_labels=True)
            out[f"p{i}.lens_recompute"] = (acc[:, 0] @ W_U + b_U).float()              # (stages, V)
            raw = cache.accumulated_resid(incl_mid=mid, apply_ln=False, pos_slice=pos)
            scaled = cache.apply_ln_to_stack(raw, layer=-1, pos_slice=pos, recompute_ln=False)[:, 0]
            if lnf_w is not None:
                scaled = scaled * lnf_w
            if lnf_b is not None:
                scaled = scaled + lnf_b
            out[f"p{i}.lens_cached"] = (scaled @ W_U + b_U).float()
            out[f"p{i}.logits"] = logits[0, pos].float()
            # DLA of an ablated run (the IOI backup name movers, as TransformerLens's Exploratory Analysis demo and
            # ARENA do it): head (L-1, 0) zeroed at the last position and head (0, H-1) at every position, through
            # hooks on hook_z held by br.hooks() while run_with_cache records (the bridge's run_with_cache ignores
            # fwd_hooks); then the same logit_attrs on the ablated cache (its own final-norm scale).
            H = br.cfg.n_heads
            def zero_last(z, hook):
                z[:, -1, 0] = 0
                return z
            def zero_all(z, hook):
                z[:, :, H - 1] = 0
                return z
            with br.hooks(fwd_hooks=[(f"blocks.{L - 1}.attn.hook_z", zero_last), ("blocks.0.attn.hook_z", zero_all)]):
                alogits, acache = br.run_with_cache(tokens)
            if acache[f"blocks.{L - 1}.attn.hook_z"][0, -1, 0].abs().max() != 0 or acache["blocks.0.attn.hook_z"][0, :, H - 1].abs().max() != 0:
                sys.exit(f"{name}: the ablated cache does not hold the zeroed z")
            aresid = acache.decompose_resid(layer=-1, pos_slice=pos)
            aheads = acache.stack_head_results(layer=-1, pos_slice=pos)
            out[f"abl.p{i}.dla_resid"] = acache.logit_attrs(aresid, **kw).reshape(-1).float()
            out[f"abl.p{i}.dla_heads"] = acache.logit_attrs(aheads, **kw).reshape(-1).float()
            out[f"abl.p{i}.logits"] = alogits[0, pos].float()
        out[f"p{i}.tokens"] = tokens[0].to(torch.int32)
        out[f"p{i}.meta"] = torch.tensor([pos, answer, wrong], dtype=torch.int32)   # metric position, answer, wrong
        meta["prompts"].append(dict(tokens=tokens[0].tolist(), pos=pos, answer=answer, wrong=wrong))
        meta["labels"] = dict(resid=rlabels, heads=hlabels, neurons=len(nlabels), lens=alabels)
    # The final stage of the recomputed lens is the model's own logits: a check of the reference itself.
    for i in range(len(PROMPTS)):
        d = (out[f"p{i}.lens_recompute"][-1] - out[f"p{i}.logits"]).abs().max().item()
        if d > 1e-4:
            sys.exit(f"{name}: TL's final lens stage differs from its logits by {d}")
    # OV circuits (the IOI paper's copy score, seqcont's copy/next scores): each member token's first-layer
    # residual (blocks.0.hook_resid_post at the token, run after one fixed token as BOS) through every head's
    # ln1, W_V + b_V, W_O, then ln_final recomputed and the unembedding. Plain torch on TransformerLens's
    # weights and modules; query head h reads key/value head h // (n_heads / n_kv_heads) (GQA).
    members = torch.arange(OV_FIRST, OV_FIRST + OV_N)
    seqs = torch.stack([torch.full((OV_N,), OV_BOS), members], 1)                     # (n, 2)
    with torch.no_grad():
        _, cache = br.run_with_cache(seqs)
        resid = cache["blocks.0.hook_resid_post"][:, -1]                               # (n, C)
        H = br.cfg.n_heads
        group = H // br.W_V.shape[1]
        ov = torch.empty(L, H, OV_N, vocab)
        for l in range(L):
            x = br.blocks[l].ln1(resid[None])[0]
            for h in range(H):
                v = x @ br.W_V[l, h // group]
                b_V = getattr(br, "b_V", None)
                if b_V is not None:
                    v = v + b_V[l, h // group]
                o = v @ br.W_O[l, h]
                ov[l, h] = br.ln_final(o[None])[0] @ W_U + b_U
        # The IOI paper's input: every occurrence of a member in real prompts, at its position (prompt-major,
        # positions in order), blocks.0.hook_resid_post there.
        occ_resid, occ_member = [], []
        for j, seq in enumerate(OV_PROMPTS):
            toks = torch.tensor([seq])
            _, pc = br.run_with_cache(toks)
            out[f"ov.prompt{j}"] = toks[0].to(torch.int32)
            for t, tok in enumerate(seq):
                if OV_FIRST <= tok < OV_FIRST + OV_N:
                    occ_resid.append(pc["blocks.0.hook_resid_post"][0, t])
                    occ_member.append(tok - OV_FIRST)
        occ_resid = torch.stack(occ_resid)
        ovp = torch.empty(L, H, len(occ_member), vocab)
        for l in range(L):
            x = br.blocks[l].ln1(occ_resid[None])[0]
            for h in range(H):
                v = x @ br.W_V[l, h // group]
                if getattr(br, "b_V", None) is not None:
                    v = v + br.b_V[l, h // group]
                ovp[l, h] = br.ln_final((v @ br.W_O[l, h])[None])[0] @ W_U + b_U
    out["ov.prompt_resid"] = occ_resid.float().contiguous()
    out["ov.prompt_member"] = torch.tensor(occ_member, dtype=torch.int32)
    out["ov.prompt_logits"] = ovp.float()
    # Head detectors on repeated random tokens, as ARENA computes them (pattern.diagonal(offset).mean() per head,
    # averaged over the batch): [BOS, x_1..x_N, x_1..x_N]; current (0), previous (-1), first (column 0),
    # duplicate (-N: the same token N back), induction (1-N: the token after its previous occurrence).
    half = torch.randint(0, vocab, (HS_BATCH, HS_N), generator=g)
    rep = torch.cat([torch.full((HS_BATCH, 1), OV_BOS), half, half], 1)
    with torch.no_grad():
        _, hc = br.run_with_cache(rep)
    scores = torch.empty(L, br.cfg.n_heads, 5)
    for l in range(L):
        pat = hc[f"blocks.{l}.attn.hook_pattern"]                                    # (batch, H, T, T)
        diag = lambda off: pat.diagonal(offset=off, dim1=-2, dim2=-1).mean((0, -1))   # noqa: E731
        scores[l] = torch.stack([diag(0), diag(-1), pat[..., 0].mean((0, -1)), diag(-HS_N), diag(1 - HS_N)], -1)
    # Neurons: blocks.l.mlp.hook_post (for Llama TL's act(gate) * up) at every position of each prompt, run one by one;
    # one neuron of layer 0 with the highest activation at the BOS (so ties at position 0 reach its top), two others.
    nrn_caches = []
    with torch.no_grad():
        for j, seq in enumerate(NRN_PROMPTS):
            _, pc = br.run_with_cache(torch.tensor([seq]))
            nrn_caches.append({l: pc[f"blocks.{l}.mlp.hook_post"][0].float() for l in range(L)})
            out[f"nrn.prompt{j}"] = torch.tensor(seq, dtype=torch.int32)
    M = nrn_caches[0][0].shape[-1]
    neurons = [(0, int(nrn_caches[0][0][0].argmax())), (L - 1, 1), (L - 1, M - 1)]
    T_max = max(map(len, NRN_PROMPTS))
    acts = torch.full((len(NRN_PROMPTS), len(neurons), T_max), float("nan"))
    for j, seq in enumerate(NRN_PROMPTS):
        for i, (l, n) in enumerate(neurons):
            acts[j, i, :len(seq)] = nrn_caches[j][l][:, n]
    top = torch.empty(len(neurons), NRN_K, 2, dtype=torch.int32)
    top_act = torch.empty(len(neurons), NRN_K)
    for i in range(len(neurons)):
        cells = [(-float(acts[j, i, t]), j, t) for j, seq in enumerate(NRN_PROMPTS) for t in range(len(seq))]
        for r, (a, j, t) in enumerate(sorted(cells)[:NRN_K]):   # activation descending; ties: lower prompt, then position
            top[i, r] = torch.tensor([j, t])
            top_act[i, r] = -a
    out["nrn.neurons"] = torch.tensor(neurons, dtype=torch.int32)
    out["nrn.acts"] = acts
    out["nrn.top"] = top
    out["nrn.top_act"] = top_act
    out["hs.tokens"] = rep.to(torch.int32)
    out["hs.scores"] = scores.float()
    out["ov.tokens"] = members.to(torch.int32)
    out["ov.bos"] = torch.tensor([OV_BOS], dtype=torch.int32)
    out["ov.resid"] = resid.float().contiguous()
    out["ov.logits"] = ov.float()
    meta["normalization_type"] = br.cfg.normalization_type
    meta["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                        "transformer_lens": pkg_version("transformer_lens"), "python": sys.version.split()[0]}
    meta["generator"] = "tests/golden/make_analysis_goldens.py"
    dst = os.path.join(out_root, name)
    os.makedirs(dst, exist_ok=True)
    save_st({k: v.contiguous() for k, v in out.items()}, os.path.join(dst, "golden_analysis.safetensors"))
    with open(os.path.join(dst, "golden_analysis.json"), "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"{name}: {len(PROMPTS)} prompts, {len(out)} tensors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=MODELS)
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "data"))
    a = ap.parse_args()
    for m in a.models:
        make(m, a.out)


if __name__ == "__main__":
    main()
