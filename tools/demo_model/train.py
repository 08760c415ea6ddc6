"""Trains the embedded demo model: a byte-level BPE tokenizer, then a 4-layer GPT-2 on the corpus
that make_corpus.py wrote.  CPU only, one thread by default; checkpoints as it goes and resumes.

Usage: train.py --corpus /tmp/ps-demo/train.txt --work /tmp/ps-demo --out models/demo [--resume]
Writes OUT/tokenizer.json, OUT/config.json, OUT/model.safetensors and WORK/train_log.json.
"""
import argparse
import json
import math
import os
import random
import sys
import time

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_corpus as mc  # noqa: E402

BOS = "<|endoftext|>"


def train_tokenizer(docs, vocab_size, path):
    """Byte-level BPE with GPT-2's pre-tokenizer; <|endoftext|> is added last, as in GPT-2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[])
    tok.train_from_iterator(docs, trainer)
    tok.add_special_tokens([BOS])
    # Lay the file out like openai-community/gpt2's tokenizer.json (merges as "a b" strings, the
    # same pre-tokenizer/post-processor/decoder objects), so anything that reads GPT-2's file
    # reads this one.  Byte-level tokens never contain a plain space, so "a b" is unambiguous.
    d = json.loads(tok.to_str())
    d["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    d["post_processor"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False}
    d["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True}
    d["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in d["model"]["merges"]]
    d["model"]["continuing_subword_prefix"] = ""  # GPT-2's file spells "none" as ""
    d["model"]["end_of_word_suffix"] = ""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(d, f, ensure_ascii=False, indent=1)
    back = Tokenizer.from_file(path)
    sample = docs[:5000] + ["1 2 3 4", " 5", "Hello,  world!\n\tx", "café 東京 🙂"]
    a = [e.ids for e in tok.encode_batch(sample)]
    b = [e.ids for e in back.encode_batch(sample)]
    assert a == b, "tokenizer.json does not reproduce the trained tokenizer"
    return back


def check_vocab(tok):
    """Every list item must be one token, with and without its leading space."""
    bad = []
    for name, (items, _) in mc.SEQS.items():
        for it in items:
            for w in (" " + it, it):
                if len(tok.encode(w).ids) != 1:
                    bad.append(w)
    if bad:
        raise SystemExit(f"tokenizer: these are not single tokens: {bad}")
    names = [" " + n for n in mc.NAMES]
    split = [n for n in names if len(tok.encode(n).ids) != 1]
    print(f"tokenizer: vocab {tok.get_vocab_size()}, BOS id {tok.token_to_id(BOS)}, all list items "
          f"single tokens; names split: {split}", flush=True)


def lr_at(step, args):
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    p = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.lr_min + 0.5 * (args.lr - args.lr_min) * (1 + math.cos(math.pi * p))


def make_batch(buckets, weights, batch, rng):
    """Documents of one length bucket, right-padded; pad labels are -100 (no loss)."""
    b = rng.choices(range(len(buckets)), weights=weights)[0]
    docs = [buckets[b][rng.randrange(len(buckets[b]))] for _ in range(batch)]
    t = max(len(d) for d in docs)
    x = torch.zeros(batch, t, dtype=torch.long)
    y = torch.full((batch, t), -100, dtype=torch.long)
    for i, d in enumerate(docs):
        x[i, : len(d)] = torch.tensor(d)
        y[i, : len(d)] = x[i, : len(d)]
    return x, y


def loss_of(model, x, y):
    logits = model(input_ids=x).logits[:, :-1]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)),
                                             y[:, 1:].reshape(-1), ignore_index=-100)


@torch.no_grad()
def probe(model, tok, bos):
    """Greedy next token on a few canonical prompts (progress only)."""
    model.eval()
    out = []
    for p in ["1 2 3 4", "January February March", "Van done in 1. Hat done in 2. Ring done in 3. "
              "Desk done in 4. Sun done in", "When Mary and John went to the store, John gave a drink to"]:
        ids = torch.tensor([[bos] + tok.encode(p).ids])
        nxt = int(model(input_ids=ids).logits[0, -1].argmax())
        out.append(repr(tok.decode([nxt])))
    model.train()
    return " ".join(out)


def atomic_save(obj, path):
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--work", required=True, help="checkpoints and train_log.json go here")
    ap.add_argument("--out", required=True, help="model directory to write")
    ap.add_argument("--vocab", type=int, default=4096, help="upper bound; BPE stops when no pair repeats")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--n-positions", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=48, help="tokens per document, BOS included")
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lr-min", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--resume", action="store_true", help="continue from WORK/ckpt.pt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path = os.path.join(args.work, "ckpt.pt")
    tok_path = os.path.join(args.out, "tokenizer.json")

    with open(args.corpus, encoding="utf-8") as f:
        docs = [line.rstrip("\n") for line in f]
    t0 = time.time()
    if args.resume and os.path.exists(ckpt_path) and os.path.exists(tok_path):
        tok = Tokenizer.from_file(tok_path)
    else:
        tok = train_tokenizer(docs, args.vocab, tok_path)
    check_vocab(tok)
    bos = tok.token_to_id(BOS)
    vocab = tok.get_vocab_size()

    enc = [[bos] + e.ids for e in tok.encode_batch(docs)]
    too_long = sum(len(d) > args.max_len for d in enc)
    enc = [d for d in enc if len(d) <= args.max_len]
    val, train = enc[-2000:], enc[:-2000]
    n_tok = sum(len(d) for d in train)
    print(f"corpus: {len(train)} training docs ({n_tok} tokens), {len(val)} validation docs, "
          f"{too_long} dropped as longer than {args.max_len}; tokenizing took {time.time() - t0:.1f}s",
          flush=True)
    by_len = {}
    for d in train:
        by_len.setdefault((len(d) + 3) // 4, []).append(d)
    buckets = [by_len[k] for k in sorted(by_len)]
    weights = [len(b) for b in buckets]

    cfg = GPT2Config(vocab_size=vocab, n_positions=args.n_positions, n_embd=args.d_model,
                     n_layer=args.layers, n_head=args.heads, n_inner=4 * args.d_model,
                     activation_function="gelu_new", layer_norm_epsilon=1e-5,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=bos, eos_token_id=bos, tie_word_embeddings=True)
    model = GPT2LMHeadModel(cfg).float()
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8)
    step, elapsed, history = 0, 0.0, []
    if args.resume and os.path.exists(ckpt_path):
        ck = torch.load(ckpt_path, weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step, elapsed, history = ck["step"], ck["elapsed"], ck["history"]
        rng.setstate(ck["rng"])
        torch.set_rng_state(ck["torch_rng"])
        print(f"resumed at step {step} ({elapsed / 60:.1f} min already spent)", flush=True)
    print(f"model: {n_params} parameters ({4 * n_params / 2**20:.2f} MiB fp32), "
          f"{args.steps} steps of {args.batch} docs, {torch.get_num_threads()} thread(s)", flush=True)

    model.train()
    t_start = time.time() - elapsed
    run_loss, run_n = 0.0, 0
    while step < args.steps:
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        x, y = make_batch(buckets, weights, args.batch, rng)
        loss = loss_of(model, x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss += loss.item()
        run_n += 1
        if step % 50 == 0 or step == args.steps:
            el = time.time() - t_start
            history.append({"step": step, "loss": run_loss / run_n, "minutes": el / 60})
            print(f"step {step:5d}  loss {run_loss / run_n:.4f}  lr {lr_at(step - 1, args):.2e}  "
                  f"{el / 60:5.1f} min  {el / step:.3f} s/step", flush=True)
            run_loss, run_n = 0.0, 0
        if step % 500 == 0 or step == args.steps:
            print(f"      greedy: {probe(model, tok, bos)}", flush=True)
        if step % args.ckpt_every == 0 or step == args.steps:
            atomic_save({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                         "elapsed": time.time() - t_start, "history": history,
                         "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}, ckpt_path)

    elapsed = time.time() - t_start
    model.eval()
    with torch.no_grad():
        vl, vn = 0.0, 0
        for i in range(0, len(val), 100):
            chunk = val[i:i + 100]
            t = max(len(d) for d in chunk)
            x = torch.zeros(len(chunk), t, dtype=torch.long)
            y = torch.full((len(chunk), t), -100, dtype=torch.long)
            for j, d in enumerate(chunk):
                x[j, : len(d)] = torch.tensor(d)
                y[j, : len(d)] = x[j, : len(d)]
            n = int((y[:, 1:] != -100).sum())
            vl += loss_of(model, x, y).item() * n
            vn += n
    model.save_pretrained(args.out, safe_serialization=True)
    # The brief ships exactly config.json + model.safetensors + tokenizer.json (+ EVAL.md).
    gen = os.path.join(args.out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    os.chmod(os.path.join(args.out, "model.safetensors"), 0o644)  # the writer leaves it 0600
    log = {"steps": step, "batch_docs": args.batch, "lr": args.lr, "lr_min": args.lr_min,
           "warmup": args.warmup, "weight_decay": args.weight_decay, "max_len": args.max_len,
           "train_docs": len(train), "train_tokens": n_tok, "val_docs": len(val),
           "final_train_loss": sum(h["loss"] for h in history[-4:]) / len(history[-4:]),
           "val_loss": vl / vn, "minutes": elapsed / 60, "threads": args.threads,
           "parameters": n_params, "vocab": vocab, "bos_id": bos, "seed": args.seed,
           "torch": torch.__version__, "history": history}
    with open(os.path.join(args.work, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"done: {step} steps in {elapsed / 60:.1f} min, train loss {log['final_train_loss']:.4f}, "
          f"val loss {log['val_loss']:.4f}; wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
