#!/usr/bin/env python3
# Goldens for models/stories260K (llama2.c's stories260K converted by tools/llama2c_to_hf.py), made by the reference
# implementations: llama2.c's run.c for the story, Hugging Face transformers/tokenizers for logits and token ids.
"""Run (downloads nothing):
    gcc -O2 -o /tmp/run run.c -lm        # run.c: karpathy/llama2.c at bd182289c596fa6059eb7b3b7c8ccd04b5c90fc3,
                                         # patched as below; it is not part of this repository
    ~/.cache/ps-venv/bin/python tests/golden/make_stories260k_goldens.py --run /tmp/run [--shared ../shared/data]

The patch to run.c (output only; nothing in the computation changes):
    after bpe_encode(...) of the prompt:
        for (int i = 0; i < num_prompt_tokens; i++) fprintf(stderr, "PROMPT_ID %d\\n", prompt_tokens[i]);
    after `int pos = 0;` before the main loop:
        FILE *logits_out = getenv("RUNC_LOGITS") ? fopen(getenv("RUNC_LOGITS"), "wb") : NULL;
    after transformer(token, pos, &config, &state, &weights); in the loop:
        if (logits_out) fwrite(state.logits, sizeof(float), config.vocab_size, logits_out);
    after `pos++;` in the loop (before the BOS check, so the final BOS is printed too):
        fprintf(stderr, "ID %d\\n", next);
    after the loop's closing printf("\\n"):
        if (logits_out) fclose(logits_out);
That version has grouped-query attention (n_kv_heads < n_heads), which stories260K needs; older run.c does not.

What it does, failing loudly on any mismatch:
 1. Checks the shared files against SHA256SUMS, converts them again into a temporary directory with
    tools/llama2c_to_hf.py and requires the result byte-identical to models/stories260K.
 2. Runs run.c greedily from BOS (-t 0 -n 0: up to seq_len; run.c stops when the model emits BOS) and records the
    story's ids, its printed text and its per-position logits.
 3. Loads models/stories260K with transformers' LlamaForCausalLM (fp32, eager attention) and requires: the same ids
    from greedy model.generate (stopping at BOS as run.c does), the same argmax at every teacher-forced position,
    logits within 1e-4 of run.c's, and a numpy re-implementation of llama2.c's forward on the ORIGINAL .bin
    (adjacent-pair RoPE) within 1e-4 too (a check of the q/k row permutation that needs no compiled code).
 4. Tokenizer: for a set of texts, Hugging Face tokenizers on models/stories260K/tokenizer.json,
    transformers' AutoTokenizer (add_special_tokens=False) and run.c's own encoder (its PROMPT_IDs) must agree
    (a Python port of run.c's bpe_encode is checked too); merges must equal transformers' generate_merges; HF's
    decode of the story ids must equal run.c's printed text.
 5. Writes models/stories260K/golden_generate.json (story ids and text, tokenizer cases) and
    models/stories260K/golden_logits.safetensors (HF logits; see REFERENCE.md for the names).
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "tools"))
import llama2c_to_hf as conv  # noqa: E402

N_LOGIT_TOKENS = 64   # story tokens after BOS whose logits are stored
TOL = 1e-4

# Texts whose ids must agree between run.c's encoder and HF tokenizers (stored as tokenizer goldens).
TOKENIZE = [
    "Once upon a time",
    "Once upon a time, there was a little girl named Lily.",
    "Lily and Tim went to the park. Tim gave the ball to",
    "Lily and Tim went to the park. Lily gave the ball to",
    "One day, Tim went to the park with",
    "Tim saw a big, red ball. He said, \"I want to play!\"",
    "The cat was happy and the dog was sad.",
    "his", "her", "Lily", "Tim", " Lily", " Tom",
    "She loved to play outside in the sun",
    "1 2 3 4 5",
    "Mom said: don't go!",
    "x  y", "hello world", "Timmy's toy",
    "a\nb", "caf\u00e9", "\u00a1Hola!", "\U0001F642 smile",
]


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def check_hashes(shared, rels):
    sums = {}
    with open(os.path.join(shared, "SHA256SUMS")) as f:
        for line in f:
            digest, name = line.split()
            sums[os.path.normpath(name)] = digest
    for rel in rels:
        got = sha256(os.path.join(shared, rel))
        if sums.get(os.path.normpath(rel)) != got:
            sys.exit(f"{rel}: sha256 {got} does not match SHA256SUMS")


# ---------------------------------------------------------------------------------------------- run.c

def run_c(binary, ckpt, tok, prompt=None, logits_path=None):
    args = [binary, ckpt, "-z", tok, "-t", "0", "-n", "0"]
    if prompt is not None:
        args += ["-i", prompt]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if logits_path:
        env["RUNC_LOGITS"] = logits_path
    r = subprocess.run(args, capture_output=True, env=env, check=True)
    ids = [int(l.split()[1]) for l in r.stderr.decode().splitlines() if l.startswith("ID ")]
    pids = [int(l.split()[1]) for l in r.stderr.decode().splitlines() if l.startswith("PROMPT_ID ")]
    if prompt is not None and not pids:
        sys.exit(f"{binary}: printed no PROMPT_ID lines: is it the patched run.c?")
    if not ids:
        sys.exit(f"{binary}: printed no ID lines: is it the patched run.c?")
    return ids, pids, r.stdout.decode("utf-8")


def runc_encode_py(text, pieces, scores):
    """run.c (bd18228) bpe_encode in Python: a dummy " " token, one token per code point (byte fallback +3), then
    repeatedly merge the adjacent pair whose concatenation is in the vocab with the highest score (leftmost on ties)."""
    sp = [p.replace("\u2581", " ") for p in pieces]
    sp[1], sp[2] = "\n<s>\n", "\n</s>\n"
    index = {}
    for i, p in enumerate(sp):
        index.setdefault(p, i)
    toks = [index[" "]]
    for ch in text:
        if ch in index:
            toks.append(index[ch])
        else:
            toks.extend(b + 3 for b in ch.encode("utf-8"))
    while True:
        best, best_i, best_id = -1e10, -1, -1
        for i in range(len(toks) - 1):
            j = index.get(sp[toks[i]] + sp[toks[i + 1]], -1)
            if j != -1 and scores[j] > best:
                best, best_i, best_id = scores[j], i, j
        if best_i < 0:
            return toks
        toks[best_i:best_i + 2] = [best_id]


# ---------------------------------------------------------------------------------------------- numpy llama2.c

def llama2c_forward(cfg, w, tokens):
    """llama2.c's forward over a whole sequence, in float64, on the weights as the .bin stores them."""
    dim, H, KV = cfg["dim"], cfg["n_heads"], cfg["n_kv_heads"]
    hs = dim // H
    T = len(tokens)
    f = lambda a: a.astype(np.float64)
    x = f(w["tok"])[tokens]
    ang = np.arange(T)[:, None] * (1.0 / 10000.0 ** (np.arange(0, hs, 2) / hs))[None]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rms(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + 1e-5) * f(g)

    def rope(v, nh):  # adjacent pairs (2i, 2i+1) rotated by frequency i
        v = v.reshape(T, nh, hs // 2, 2)
        a, b = v[..., 0], v[..., 1]
        return np.stack([a * cos - b * sin, a * sin + b * cos], -1).reshape(T, nh, hs)

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(cfg["n_layers"]):
        xb = rms(x, w["att_norm"][l])
        q = rope(xb @ f(w["wq"][l]).T, H)
        k = rope(xb @ f(w["wk"][l]).T, KV)
        v = (xb @ f(w["wv"][l]).T).reshape(T, KV, hs)
        out = np.empty((T, H, hs))
        for h in range(H):
            g = h // (H // KV)
            s = q[:, h] @ k[:, g].T / np.sqrt(hs) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, h] = (s / s.sum(-1, keepdims=True)) @ v[:, g]
        x = x + out.reshape(T, dim) @ f(w["wo"][l]).T
        xb = rms(x, w["ffn_norm"][l])
        a = xb @ f(w["w1"][l]).T
        x = x + ((a / (1 + np.exp(-a))) * (xb @ f(w["w3"][l]).T)) @ f(w["w2"][l]).T
    x = rms(x, w["final_norm"])
    return x @ f(w["tok"] if "cls" not in w else w["cls"]).T


# ---------------------------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="compiled, patched llama2.c run.c (see the docstring)")
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared", "data"))
    ap.add_argument("--model", default=os.path.join(REPO, "models", "stories260K"))
    a = ap.parse_args()

    import torch
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, LlamaForCausalLM
    from transformers.tokenization_utils_base import generate_merges

    torch.set_num_threads(1)
    rel_ckpt, rel_tok = "llama2c-stories260K/stories260K.bin", "llama2c-stories260K/tok512.bin"
    check_hashes(a.shared, [rel_ckpt, rel_tok])
    ckpt, tokbin = os.path.join(a.shared, rel_ckpt), os.path.join(a.shared, rel_tok)

    # 1. the committed conversion is what the converter makes
    with tempfile.TemporaryDirectory() as tmp:
        conv.convert(ckpt, tokbin, tmp)
        for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
            if sha256(os.path.join(tmp, name)) != sha256(os.path.join(a.model, name)):
                sys.exit(f"{a.model}/{name}: differs from a fresh tools/llama2c_to_hf.py conversion")
    cfg, w, tied = conv.read_checkpoint(ckpt)
    for key, nh in (("wq", cfg["n_heads"]), ("wk", cfg["n_kv_heads"])):
        for l in range(cfg["n_layers"]):
            assert np.array_equal(conv.to_llama2c_rows(conv.to_hf_rows(w[key][l], nh), nh), w[key][l])
    pieces, scores = conv.read_llama2c_tokenizer(tokbin, cfg["vocab_size"])
    V = cfg["vocab_size"]

    # 2. the reference story
    with tempfile.TemporaryDirectory() as tmp:
        lp = os.path.join(tmp, "logits.bin")
        ids, _, runc_text = run_c(a.run, ckpt, tokbin, logits_path=lp)
        runc_logits = np.fromfile(lp, dtype="<f4").reshape(-1, V)
    stop = "BOS" if ids[-1] == 1 else "seq_len"
    story = ids[:-1] if ids[-1] == 1 else ids
    seq = [1] + story
    runc_text = runc_text[:-1] if runc_text.endswith("\n") else runc_text
    print(f"run.c: {len(story)} tokens from BOS, stopped by {stop}")

    # 3. transformers on the converted checkpoint
    model = LlamaForCausalLM.from_pretrained(a.model, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        hf_logits = model(torch.tensor([seq])).logits[0].numpy()          # [len(seq), V]
        gen = model.generate(torch.tensor([[1]]), do_sample=False, max_new_tokens=cfg["seq_len"] - 1,
                             eos_token_id=1, pad_token_id=0)[0].tolist()[1:]
    gen = gen[:-1] if gen and gen[-1] == 1 else gen
    if gen != story:
        n = next((i for i in range(min(len(gen), len(story))) if gen[i] != story[i]), min(len(gen), len(story)))
        sys.exit(f"HF greedy generate differs from run.c at new token {n}: {gen[n:n + 5]} vs {story[n:n + 5]}")
    argmax = hf_logits.argmax(-1)
    assert list(argmax[:len(story)]) == story and (stop != "BOS" or argmax[len(story)] == 1)
    m = min(len(runc_logits), len(hf_logits))
    d_runc = float(np.abs(runc_logits[:m] - hf_logits[:m]).max())
    ref = llama2c_forward(cfg, w, seq)
    d_np = float(np.abs(ref - hf_logits).max())
    srt = np.sort(hf_logits, -1)
    margin = float((srt[:, -1] - srt[:, -2]).min())
    print(f"HF generate = run.c story ({len(story)} tokens); max |HF - run.c| logits {d_runc:.2e} over {m} positions; "
          f"max |HF - numpy llama2.c fp64| {d_np:.2e}; smallest top-1/top-2 logit gap on the story {margin:.4f}")
    if d_runc > TOL or d_np > TOL:
        sys.exit("logits differ by more than 1e-4: the conversion is wrong")

    # 4. tokenizer
    tj = json.load(open(os.path.join(a.model, "tokenizer.json"), encoding="utf-8"))
    vocab = tj["model"]["vocab"]
    want = [list(x) for x in generate_merges(vocab, list(zip(pieces, scores)))]
    if tj["model"]["merges"] != want:
        sys.exit("tokenizer.json merges differ from transformers' generate_merges")
    tk = Tokenizer.from_file(os.path.join(a.model, "tokenizer.json"))
    at = AutoTokenizer.from_pretrained(a.model)
    assert at.bos_token_id == 1 and at.eos_token_id == 2 and at("a")["input_ids"][0] == 1
    cases = []
    for text in TOKENIZE:
        hf = tk.encode(text, add_special_tokens=False).ids
        auto = at(text, add_special_tokens=False)["input_ids"]
        _, pids, _ = run_c(a.run, ckpt, tokbin, prompt=text)
        py = runc_encode_py(text, pieces, scores)
        if not (hf == auto == pids == py):
            sys.exit(f"tokenize {text!r}: HF {hf}, AutoTokenizer {auto}, run.c {pids}, python port {py}")
        cases.append({"text": text, "ids": hf, "pieces": [tk.id_to_token(i) for i in hf]})
    print(f"tokenizer: {len(cases)} texts agree between HF tokenizers, AutoTokenizer and run.c's encoder")
    hf_text = tk.decode(story, skip_special_tokens=False)
    if hf_text != runc_text:
        sys.exit(f"HF decode of the story differs from run.c's text:\n{hf_text!r}\n{runc_text!r}")

    # 5. goldens
    golden = {
        "about": "stories260K greedy from BOS. ids/text: karpathy/llama2.c run.c (bd18228) -t 0 -n 0 on "
                 "../shared/data/llama2c-stories260K/stories260K.bin with -z tok512.bin; the same ids from "
                 "transformers LlamaForCausalLM greedy generate on this directory. text = tokenizers decode(ids) "
                 "= run.c's printed story. Made by tests/golden/make_stories260k_goldens.py.",
        "bos_id": 1,
        "stop": stop,
        "n_new_tokens": len(story),
        "ids": story,
        "text": hf_text,
        "min_top2_logit_gap": round(margin, 6),
        "tokenize": cases,
    }
    text = json.dumps(golden, indent=1, ensure_ascii=False)
    # lists of ids on one line each, so the file reads (and diffs) as text
    text = re.sub(r"\[\n\s*(-?\d+(?:,\n\s*-?\d+)*)\n\s*\]", lambda m: "[" + ", ".join(m.group(1).replace(",", " ").split()) + "]", text)
    text = re.sub(r"\[\n\s*(\"[^\"\n]*\"(?:,\n\s*\"[^\"\n]*\")*)\n\s*\]", lambda m: "[" + ", ".join(x.strip() for x in m.group(1).split(",\n")) + "]", text)
    assert json.loads(text) == golden
    with open(os.path.join(a.model, "golden_generate.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")

    tok = AutoTokenizer.from_pretrained(a.model)
    prompt = "Lily and Tim went to the park. Tim gave the ball to"
    pids = tok(prompt)["input_ids"]  # BOS + prompt
    with torch.no_grad():
        p_logits = model(torch.tensor([pids])).logits[0].numpy()
    n = min(N_LOGIT_TOKENS + 1, len(seq))
    out = {
        "tokens": np.array(seq[:n], dtype=np.int32),
        "logits": np.ascontiguousarray(hf_logits[:n], dtype=np.float32),
        "prompt_tokens": np.array(pids, dtype=np.int32),
        "prompt_logits": np.ascontiguousarray(p_logits, dtype=np.float32),
    }
    save_file(out, os.path.join(a.model, "golden_logits.safetensors"),
              metadata={"about": "transformers LlamaForCausalLM fp32 eager logits on models/stories260K; "
                                 "tokens = BOS + first story tokens; prompt_tokens = BOS + '" + prompt + "'"})
    os.chmod(os.path.join(a.model, "golden_logits.safetensors"), 0o644)
    print(f"wrote {a.model}/golden_generate.json and golden_logits.safetensors "
          f"(tokens {n}, prompt_tokens {len(pids)})")


if __name__ == "__main__":
    main()
