#!/usr/bin/env python3
"""Make the ablation goldens (tests/data/<model>/golden_ablation.json) from TransformerLens hooks, the way
apartresearch/seqcont_circuits' src/iter_node_pruning/ does it: means of hook_z / hook_mlp_out over the
reference prompts per position (one group; per template group and position; over all positions),
`torch.where(keep_mask, act, mean)` hooks, the mean logit difference at the last position, and
seqcont's pruning loop (find_circuit_backw / find_circuit_forw / run_node_ablation.py's while loop, with
the MLP means taken while the candidate's z hook is on, as add_ablation_hook_MLP_head does).

Cases per model: component sets ablated (heads, MLP layers, neurons; all positions or listed ones) and kept
circuits (everything else ablated; heads kept only at the end position), with zero / mean (three groupings)
/ resample / corrupted values. The demo model (models/demo) gets a subset of the seqcont numerals prompts
and randDS prompts and the full pruning trace at threshold 20.

Also golden_circuit_scores.json: completeness |F(C\\K) - F(M\\K)| and ARENA's minimality |F(C\\(K+v)) - F(C\\K)| / F(M)
of one kept circuit (with a named class), mean (per position) and zero ablation, the same hooks.

Regenerate (from the repo root; needs the reference venv, offline):
    ~/.cache/ps-venv/bin/python tests/golden/make_ablation_goldens.py          # everything
    ~/.cache/ps-venv/bin/python tests/golden/make_ablation_goldens.py scores   # only golden_circuit_scores.json
    ~/.cache/ps-venv/bin/python tests/golden/make_ablation_goldens.py result   # only golden_ablation_result.json (heads at hook_result)
Needs PS_SHARED (default ../shared/data) for the seqcont prompts.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_goldens import REPO, load_bridge, pkg_version, torch, transformers  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402

SEED = 11
MASK64 = (1 << 64) - 1


def rounded(xs):
    return [float(f"{float(x):.9g}") for x in xs]


def resample_draws(prompt_T, ref_T, seed):
    """The documented draw (ps_ablation.h): xorshift64* from seed, one per prompt, among the reference
    prompts of the prompt's length. Only the choice of prompt is ours; the ablation is TL's."""
    s = seed if seed else 0x9E3779B97F4A7C15
    out = []
    for T in prompt_T:
        s ^= s >> 12; s ^= (s << 25) & MASK64; s ^= s >> 27
        r = (s * 0x2545F4914F6CDD1D) & MASK64
        same = [j for j, t in enumerate(ref_T) if t == T]
        out.append(same[r % len(same)])
    return out


class Model:
    def __init__(self, folder, vocab):
        self.br = load_bridge(folder, vocab)
        c = self.br.cfg
        self.L, self.H, self.D, self.C, self.M = c.n_layers, c.n_heads, c.d_head, c.d_model, c.d_mlp

    def cache(self, toks, names):
        with torch.no_grad():
            _, c = self.br.run_with_cache(toks, names_filter=lambda n: n in names)
        return c

    def logits(self, toks, hooks):
        with torch.no_grad():
            return self.br.run_with_hooks(toks, fwd_hooks=hooks)


def hz(l): return f"blocks.{l}.attn.hook_z"
def hr(l): return f"blocks.{l}.attn.hook_result"  # per-head outputs after W_O (load_bridge sets use_attn_result)
def hmo(l): return f"blocks.{l}.hook_mlp_out"
def hmp(l): return f"blocks.{l}.mlp.hook_post"


def means_of(mdl, ref, groups, n_groups, how, hooks=(), head=hz):
    """means[name]: (n_groups, T or 1, ...) of every z (or result: head=hr) / mlp_out / mlp_post, seqcont's
    einops.reduce over the batch of each template group (per position), or also over positions."""
    names = [f(l) for l in range(mdl.L) for f in (head, hmo, hmp)]
    # TransformerBridge.run_with_cache ignores fwd_hooks (checked: TL 4.3); br.hooks() applies them, as
    # seqcont's permanent z hook is on while get_MLPs_actv_mean runs.
    with torch.no_grad(), mdl.br.hooks(fwd_hooks=list(hooks)):
        _, c = mdl.br.run_with_cache(ref, names_filter=lambda n: n in names)
    out = {}
    for n in names:
        a = c[n]
        per = []
        for g in range(n_groups):
            sel = a[[i for i in range(len(groups)) if groups[i] == g]]
            per.append(sel.mean(0, keepdim=False) if how != "all_positions" else sel.mean((0, 1)).unsqueeze(0))
        out[n] = torch.stack(per)
    return out


def resolve(pos, T):
    return [p + T if p < 0 else p for p in pos]


def masks(mdl, comps, keep, T):
    """Per layer: which heads (T, H) and whether the MLP (T) is ablated; neurons (layer -> [(n, pos list)])."""
    hm = {l: torch.full((T, mdl.H), keep) for l in range(mdl.L)}
    mm = {l: torch.full((T,), keep) for l in range(mdl.L)}
    neu = {}
    for c in comps:
        pos = resolve(c["pos"], T) if c.get("pos") else list(range(T))
        k, l, i = c["kind"], c["layer"], c["index"]
        if k == "head":
            hm[l][pos, i] = not keep
        elif k == "mlp":
            mm[l][pos] = not keep
        else:
            neu.setdefault(l, []).append((i, pos))
    return hm, mm, neu


def run_case(mdl, toks, groups, method, means, src_caches, comps, keep, mlp_means=None, head=hz):
    """Logit diffs (per prompt) with the set ablated: a torch.where hook per z (or result) / mlp_out / mlp_post."""
    N, T = toks.shape
    hm, mm, neu = masks(mdl, comps, keep, T)
    mlp_means = mlp_means or means

    def value(name, l, table):
        if method == "zero":
            return None
        if method == "mean":
            return table[name][groups]  # (N, T or 1, ...): each prompt its group's mean
        return src_caches[name]        # resample / corrupted: the source runs' activations

    hooks = []
    for l in range(mdl.L):
        def fz(a, hook, l=l):
            v = value(head(l), l, means)
            m = hm[l].unsqueeze(0).unsqueeze(-1)
            return torch.where(m, torch.zeros_like(a) if v is None else v.expand_as(a), a)
        def fm(a, hook, l=l):
            v = value(hmo(l), l, mlp_means)
            m = mm[l].unsqueeze(0).unsqueeze(-1)
            return torch.where(m, torch.zeros_like(a) if v is None else v.expand_as(a), a)
        hooks += [(head(l), fz), (hmo(l), fm)]
        if l in neu:
            def fn(a, hook, l=l):
                v = value(hmp(l), l, mlp_means)
                v = torch.zeros_like(a) if v is None else v.expand_as(a)
                a = a.clone()
                for (i, pos) in neu[l]:
                    a[:, pos, i] = v[:, pos, i]
                return a
            hooks.append((hmp(l), fn))
    return hooks


def logit_diff(logits, ans, wrong):
    n = logits.shape[0]
    return (logits[range(n), -1, ans] - logits[range(n), -1, wrong]).tolist()


def seqcont_search(mdl, toks, ans, wrong, ref, threshold, head=hz, one_iter=False):
    """find_circuit_backw / find_circuit_forw / the while loop of run_node_ablation.py, generalised from
    12 x 12 to the model's layers and heads; scores are 100 * mean logit diff / the full model's."""
    L, H = mdl.L, mdl.H
    N = toks.shape[0]
    zeros = [0] * N
    head_means = means_of(mdl, ref, [0] * ref.shape[0], 1, "per_position", head=head)
    orig = torch.tensor(logit_diff(mdl.logits(toks, []), ans, wrong)).mean().item()

    def score(heads, mlps):
        comps = [{"kind": "head", "layer": l, "index": h} for (l, h) in heads] + \
                [{"kind": "mlp", "layer": l, "index": -1} for l in mlps]
        # add_ablation_hook_MLP_head: the z hook first, then the MLP means taken with it on.
        zhooks = [hk for hk in run_case(mdl, ref, [0] * ref.shape[0], "mean", head_means, None,
                                        [c for c in comps if c["kind"] == "head"], True, head=head)
                  if hk[0].endswith(head(0).split(".")[-1])]
        mm = means_of(mdl, ref, [0] * ref.shape[0], 1, "per_position", hooks=zhooks, head=head)
        hooks = run_case(mdl, toks, zeros, "mean", head_means, None, comps, True, mlp_means=mm, head=head)
        new = torch.tensor(logit_diff(mdl.logits(toks, hooks), ans, wrong)).mean().item()
        return 100 * new / orig

    heads, mlps, steps = [], [], []
    cur = 100.0

    def step(p, cand, lst, heads_, mlps_):
        nonlocal cur
        s = score(heads_, mlps_)
        removed = (100 - s) < threshold
        steps.append({"pass": p, "cand": cand, "score_before": cur, "score": s, "removed": removed})
        if removed:
            cur = s
        return removed

    def backw(p, heads, mlps):
        if not heads: heads = [(l, h) for l in range(L) for h in range(H)]
        if not mlps: mlps = list(range(L))
        for l in range(L - 1, -1, -1):
            if l in mlps and step(p, f"mlp{l}", mlps, heads, [m for m in mlps if m != l]):
                mlps.remove(l)
            for h in range(H):
                if (l, h) in heads and step(p, f"h{l}.{h}", heads, [x for x in heads if x != (l, h)], mlps):
                    heads.remove((l, h))
        return heads, mlps

    def forw(p, heads, mlps):
        if not heads: heads = [(l, h) for l in range(L) for h in range(H)]
        if not mlps: mlps = list(range(L))
        for l in range(L):
            for h in range(H):
                if (l, h) in heads and step(p, f"h{l}.{h}", heads, [x for x in heads if x != (l, h)], mlps):
                    heads.remove((l, h))
            if l in mlps and step(p, f"mlp{l}", mlps, heads, [m for m in mlps if m != l]):
                mlps.remove(l)
        return heads, mlps

    p = 0
    while True:
        old = (list(heads), list(mlps))
        heads, mlps = backw(p, list(heads), list(mlps)); p += 1
        if (heads, mlps) == old: break
        old = (list(heads), list(mlps))
        heads, mlps = forw(p, list(heads), list(mlps)); p += 1
        if (heads, mlps) == old or one_iter: break
    return {"threshold": threshold, "one_iter": one_iter, "orig_score": orig, "steps": steps, "passes": p,
            "heads": [f"h{l}.{h}" for (l, h) in sorted(heads)], "mlps": sorted(mlps),
            "final_score": score(heads, mlps)}


def cases_for(mdl, toks, corr, ans, wrong, ref, groups, ref_groups, comps_sets, head=hz):
    N, T = toks.shape
    out = []
    full = logit_diff(mdl.logits(toks, []), ans, wrong)
    names = [f(l) for l in range(mdl.L) for f in (head, hmo, hmp)]
    grouped = {
        "per_position": means_of(mdl, ref, [0] * ref.shape[0], 1, "per_position", head=head),
        "all_positions": means_of(mdl, ref, [0] * ref.shape[0], 1, "all_positions", head=head),
        "per_template_position": means_of(mdl, ref, ref_groups, max(ref_groups) + 1, "per_position", head=head),
    }
    draws = resample_draws([T] * N, [ref.shape[1]] * ref.shape[0], SEED)
    rc = mdl.cache(ref, names)
    res_src = {n: rc[n][draws] for n in names}
    cc = mdl.cache(corr, names)
    cor_src = {n: cc[n] for n in names}
    for label, comps, keep in comps_sets:
        for method, grp in [("zero", ""), ("mean", "per_position"), ("mean", "all_positions"),
                            ("mean", "per_template_position"), ("resample", ""), ("corrupted", "")]:
            g = torch.tensor(groups if grp == "per_template_position" else [0] * N)
            means = grouped.get(grp)
            src = res_src if method == "resample" else cor_src
            hooks = run_case(mdl, toks, g, method, means, src, comps, keep, head=head)
            vals = logit_diff(mdl.logits(toks, hooks), ans, wrong)
            out.append({"set": label, "keep": keep, "components": comps, "method": method, "group": grp,
                        "values": rounded(vals),
                        "circuit_score": 100 * (sum(vals) / N) / (sum(full) / N)})
    return full, draws, out


SETS = [
    ("h0.1", [{"kind": "head", "layer": 0, "index": 1}], False),
    ("mlp1", [{"kind": "mlp", "layer": 1, "index": -1}], False),
    ("n0.5", [{"kind": "neuron", "layer": 0, "index": 5}], False),
    ("h1.2@end+h0.0", [{"kind": "head", "layer": 1, "index": 2, "pos": [-1]}, {"kind": "head", "layer": 0, "index": 0}], False),
    ("keep h0.0 h1.1 mlp0", [{"kind": "head", "layer": 0, "index": 0}, {"kind": "head", "layer": 1, "index": 1},
                             {"kind": "mlp", "layer": 0, "index": -1}], True),
    ("keep h1.1@end mlp1", [{"kind": "head", "layer": 1, "index": 1, "pos": [-1]}, {"kind": "mlp", "layer": 1, "index": -1}], True),
]


def versions():
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "transformer_lens": pkg_version("transformer_lens"), "python": sys.version.split()[0]}


def dump(name, file, doc):
    """doc as tests/data/<name>/<file> (one space of indent, a final newline); its path."""
    path = os.path.join(REPO, "tests", "data", name, file)
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    return path


def load_model(folder):
    vocab = json.load(open(os.path.join(folder, "config.json")))["vocab_size"]
    return Model(folder, vocab), vocab


def tiny_prompts(name, vocab, N, N_REF, T, scores):
    """A tiny model's random prompts, drawn in this order from one generator seeded by its name: those of
    golden_ablation.json (clean, corrupted, reference, answers) or, with scores, of golden_circuit_scores.json
    (another seed; no corrupted prompts: None). The wrong answer of prompt i is answer + 1 + i."""
    g = torch.Generator().manual_seed(SEED + (1 if scores else 0) + sum(map(ord, name)))
    toks = torch.randint(0, vocab, (N, T), generator=g)
    corr = None if scores else torch.randint(0, vocab, (N, T), generator=g)
    ref = torch.randint(0, vocab, (N_REF, T), generator=g)
    ans = torch.randint(0, vocab, (N,), generator=g).tolist()
    wrong = [(a + 1 + i) % vocab for i, a in enumerate(ans)]
    return toks, corr, ref, ans, wrong


def write(name, doc):
    path = dump(name, "golden_ablation.json", doc)
    print(f"{name}: {len(doc['cases'])} cases -> {path}", flush=True)


def tiny(name, N=6, N_REF=8, T=8):
    mdl, vocab = load_model(os.path.join(REPO, "tests", "data", name))
    toks, corr, ref, ans, wrong = tiny_prompts(name, vocab, N, N_REF, T, scores=False)
    groups = [i % 2 for i in range(N)]
    ref_groups = [i % 2 for i in range(N_REF)]
    full, draws, cases = cases_for(mdl, toks, corr, ans, wrong, ref, groups, ref_groups, SETS)
    write(name, {"generator": "tests/golden/make_ablation_goldens.py", "versions": versions(), "seed": SEED,
                 "prompts": toks.tolist(), "corrupted": corr.tolist(), "answer": ans, "wrong": wrong, "ref": ref.tolist(),
                 "groups": groups, "ref_groups": ref_groups, "full": rounded(full), "resample_from": draws, "cases": cases})


def demo(n_per=4, n_ref=12, threshold=20):
    folder = os.path.join(REPO, "models", "demo")
    shared = os.environ.get("PS_SHARED", os.path.join(REPO, "..", "shared", "data"))
    d = os.path.join(shared, "seqcont", "data", "numerals")
    tok = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    bos = 1976  # EVAL.md: the demo model's prompts start with <|endoftext|>, as TransformerLens prepends it
    rows = []
    for kind in ["done", "lost", "names"]:
        rows += [json.loads(x) for x in open(os.path.join(d, f"numerals_prompts_{kind}.jsonl"))][:n_per]
    refs = [json.loads(x) for x in open(os.path.join(d, "randDS_numerals.jsonl"))][:n_ref]
    enc = lambda s: [bos] + tok.encode(s).ids
    toks = torch.tensor([enc(r["text"]) for r in rows])
    ref = torch.tensor([enc(r["text"]) for r in refs])
    ans = [tok.encode(r["corr"]).ids[0] for r in rows]
    wrong = [tok.encode(r["incorr"]).ids[0] for r in rows]
    mdl, _ = load_model(folder)
    groups = [i // n_per for i in range(len(rows))]
    ref_groups = [i % 3 for i in range(n_ref)]
    full, draws, cases = cases_for(mdl, toks, ref, ans, wrong, ref, groups, ref_groups, SETS)
    search = seqcont_search(mdl, toks, ans, wrong, ref, threshold)
    write("demo", {"generator": "tests/golden/make_ablation_goldens.py", "versions": versions(), "seed": SEED,
                   "source": "seqcont numerals_prompts_{done,lost,names}.jsonl[:%d], randDS_numerals.jsonl[:%d]" % (n_per, n_ref),
                   "bos": bos, "prompts": toks.tolist(), "corrupted": ref.tolist(), "answer": ans, "wrong": wrong,
                   "ref": ref.tolist(), "groups": groups, "ref_groups": ref_groups, "full": rounded(full),
                   "resample_from": draws, "cases": cases, "search": search})


# Completeness and minimality (the IOI paper, Wang et al. 2022; ARENA's IOI exercises, get_score and
# get_minimality_score): F(X) = the mean logit diff with everything outside X ablated (add_mean_ablation_hook on
# C minus K), F(M\K) = the model with only K ablated, where C holds it (h1.1 only at the end position).
CIRCUIT = {"h0.0": {"kind": "head", "layer": 0, "index": 0}, "h1.1": {"kind": "head", "layer": 1, "index": 1, "pos": [-1]},
           "h1.0": {"kind": "head", "layer": 1, "index": 0}, "mlp0": {"kind": "mlp", "layer": 0, "index": -1}}
CLASSES = {"movers": ["h1.1", "h1.0"]}
COMPLETENESS = [["h0.0"], ["movers"], ["mlp0", "h1.1"]]
MINIMALITY = {"h1.1": ["h0.0"], "mlp0": ["movers"]}   # K_v; the others' empty


def expand(k):
    out = []
    for x in k:
        out += CLASSES.get(x, [x])
    return out


def circuit_scores(mdl, toks, ans, wrong, ref, method, head=hz):
    N = toks.shape[0]
    means = means_of(mdl, ref, [0] * ref.shape[0], 1, "per_position", head=head) if method == "mean" else None
    g = torch.zeros(N, dtype=torch.long)

    def F(names, keep):
        hooks = run_case(mdl, toks, g, method, means, None, [CIRCUIT[n] for n in names], keep, head=head)
        return sum(logit_diff(mdl.logits(toks, hooks), ans, wrong)) / N

    C = list(CIRCUIT)
    f_m, f_c = F([], False), F(C, True)
    compl = []
    for k in COMPLETENESS:
        K = expand(k)
        a, b = F([c for c in C if c not in K], True), F(K, False)
        compl.append({"K": "+".join(k), "names": K, "F_C_minus_K": a, "F_M_minus_K": b, "completeness": abs(a - b)})
    mini = []
    for v in C:
        K = expand(MINIMALITY.get(v, []))
        assert v not in K
        a, b = F([c for c in C if c not in K], True), F([c for c in C if c not in K and c != v], True)
        mini.append({"v": v, "K": K, "F_C_minus_K": a, "F_C_minus_K_v": b, "abs_change": abs(a - b), "minimality": abs(a - b) / f_m})
    return {"method": method, "group": "per_position" if method == "mean" else "", "F_M": f_m, "F_C": f_c,
            "completeness": compl, "minimality": mini}


def scores_doc(mdl, toks, ans, wrong, ref, head=hz):
    return {"generator": "tests/golden/make_ablation_goldens.py", "versions": versions(), "seed": SEED,
           "prompts": toks.tolist(), "answer": ans, "wrong": wrong, "ref": ref.tolist(),
           "groups": [0] * toks.shape[0], "ref_groups": [0] * ref.shape[0],
           "circuit": CIRCUIT, "classes": CLASSES, "completeness": COMPLETENESS, "minimality": MINIMALITY,
           "cases": [circuit_scores(mdl, toks, ans, wrong, ref, m, head=head) for m in ["mean", "zero"]]}


def write_scores(name, mdl, toks, ans, wrong, ref):
    path = dump(name, "golden_circuit_scores.json", scores_doc(mdl, toks, ans, wrong, ref))
    print(f"{name}: circuit scores -> {path}", flush=True)


def tiny_scores(name, N=6, N_REF=8, T=8):
    mdl, vocab = load_model(os.path.join(REPO, "tests", "data", name))
    toks, _, ref, ans, wrong = tiny_prompts(name, vocab, N, N_REF, T, scores=True)
    write_scores(name, mdl, toks, ans, wrong, ref)


def demo_scores():
    """The demo golden's prompts and reference prompts (those tests/data/seqcont/ablation.json runs)."""
    folder = os.path.join(REPO, "models", "demo")
    d = json.load(open(os.path.join(REPO, "tests", "data", "demo", "golden_ablation.json")))
    write_scores("demo", load_model(folder)[0], torch.tensor(d["prompts"]), d["answer"], d["wrong"], torch.tensor(d["ref"]))


# Heads ablated at hook_result (TransformerLens's blocks.l.attn.hook_result with use_attn_result, set by
# load_bridge: each head's output after W_O, (pos, head, d_model); attn_out = their sum + b_O). The same hooks
# on hook_result instead of hook_z, with means / resampled / corrupted values of hook_result (TL's cache). The
# TransformerBridge's hook_result propagates to attn_out (checked: zero, scale and a random add on it change the
# logits; a constant add cancels in GPT-2's LayerNorm). Cases: the component sets with heads, every method;
# the kept circuit's completeness / minimality (the golden_circuit_scores prompts); seqcont's search.
# z_max_diff records the largest |logit diff at result - at z| over the cases (the same linear map: a record;
# the C test checks its own agreement; TL at result is the golden).
HEAD_SETS = [x for x in SETS if any(c["kind"] == "head" for c in x[1])]


def tiny_result(name, N=6, N_REF=8, T=8, threshold=20):
    mdl, vocab = load_model(os.path.join(REPO, "tests", "data", name))
    toks, corr, ref, ans, wrong = tiny_prompts(name, vocab, N, N_REF, T, scores=False)
    groups = [i % 2 for i in range(N)]
    ref_groups = [i % 2 for i in range(N_REF)]
    full, draws, cases = cases_for(mdl, toks, corr, ans, wrong, ref, groups, ref_groups, HEAD_SETS, head=hr)
    _, _, zcases = cases_for(mdl, toks, corr, ans, wrong, ref, groups, ref_groups, HEAD_SETS, head=hz)
    zdiff = max(abs(a - b) for c, z in zip(cases, zcases) for a, b in zip(c["values"], z["values"]))
    s_toks, _, s_ref, s_ans, s_wrong = tiny_prompts(name, vocab, N, N_REF, T, scores=True)
    doc = {"generator": "tests/golden/make_ablation_goldens.py (tiny_result)", "versions": versions(), "seed": SEED,
           "head_site": "result", "hook": "blocks.L.attn.hook_result", "z_max_diff": zdiff,
           "prompts": toks.tolist(), "corrupted": corr.tolist(), "answer": ans, "wrong": wrong, "ref": ref.tolist(),
           "groups": groups, "ref_groups": ref_groups, "full": rounded(full), "resample_from": draws, "cases": cases,
           # One backward and one forward pass ("passes": "one_each"): on these random models seqcont's loop need not
           # end (a pass that empties the head list starts the next from the full model, as its code does).
           "search": seqcont_search(mdl, toks, ans, wrong, ref, threshold, head=hr, one_iter=True),
           "scores": scores_doc(mdl, s_toks, s_ans, s_wrong, s_ref, head=hr)}
    path = dump(name, "golden_ablation_result.json", doc)
    print(f"{name}: {len(cases)} hook_result cases (max |result - z| {zdiff:.3g}), search of {len(doc['search']['steps'])} steps -> {path}",
          flush=True)


RESULT_MODELS = ["gpt2-tiny-a", "llama-tiny-a", "neox-tiny-a"]

if __name__ == "__main__" and sys.argv[1:] == ["result"]:
    for m in RESULT_MODELS:
        tiny_result(m)
elif __name__ == "__main__" and sys.argv[1:] == ["scores"]:
    for m in ["gpt2-tiny-a", "llama-tiny-a"]:
        tiny_scores(m)
    demo_scores()
elif __name__ == "__main__":
    print(f"torch {torch.__version__}, transformer_lens {pkg_version('transformer_lens')}", flush=True)
    for m in ["gpt2-tiny-a", "llama-tiny-a"]:
        tiny(m)
    os.makedirs(os.path.join(REPO, "tests", "data", "demo"), exist_ok=True)
    demo()
    for m in ["gpt2-tiny-a", "llama-tiny-a"]:
        tiny_scores(m)
    demo_scores()
    for m in RESULT_MODELS:
        tiny_result(m)
