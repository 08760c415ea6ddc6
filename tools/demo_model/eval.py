"""Scores the demo model with Hugging Face transformers + tokenizers on held-out prompts and writes
EVAL.md: greedy next-token accuracy per task, logit differences on canonical prompts, and the
seqcont clean-vs-randDS logit difference that patching experiments recover.

Usage: eval.py [--model models/demo] [--shared /work/shared/data] [--train-log /tmp/ps-demo/train_log.json]
Every prompt gets <|endoftext|> (BOS) prepended, as TransformerLens and the demo config do.
"""
import argparse
import json
import os
import platform
import random
import re
import sys

import torch
from tokenizers import Tokenizer
from transformers import GPT2LMHeadModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_corpus as mc  # noqa: E402

CANONICAL = [
    ("1 2 3 4", " 5", " 4"),
    ("January February March", " April", " March"),
    ("one two three four", " five", " four"),
    ("Monday Tuesday Wednesday", " Thursday", " Wednesday"),
    ("A B C", " D", " C"),
    ("a b c d", " e", " d"),
    ("I II III", " IV", " III"),
    ("10 11 12", " 13", " 12"),
    ("Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in", " 5", " 4"),
    ("Van done in one. Hat done in two. Ring done in three. Desk done in four. Sun done in", " five", " four"),
    ("Van done in January. Hat done in February. Ring done in March. Desk done in April. Sun done in",
     " May", " April"),
    ("When Mary and John went to the store, John gave a drink to", " Mary", " John"),
]


class Scorer:
    def __init__(self, model_dir, threads):
        torch.set_num_threads(threads)
        self.model = GPT2LMHeadModel.from_pretrained(model_dir).float().eval()
        self.tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        self.bos = self.model.config.bos_token_id
        assert self.tok.id_to_token(self.bos) == "<|endoftext|>"

    def ids(self, text):
        return self.tok.encode(text).ids

    @torch.no_grad()
    def last_logits(self, prompts):
        """Logits at the last position of each BOS+prompt; prompts of one length share a batch."""
        enc = [[self.bos] + self.ids(p) for p in prompts]
        out = [None] * len(enc)
        by_len = {}
        for i, e in enumerate(enc):
            by_len.setdefault(len(e), []).append(i)
        for _, idx in by_len.items():
            for k in range(0, len(idx), 256):
                chunk = idx[k:k + 256]
                x = torch.tensor([enc[i] for i in chunk])
                logits = self.model(input_ids=x).logits[:, -1]
                for j, i in enumerate(chunk):
                    out[i] = logits[j]
        return out

    @torch.no_grad()
    def score(self, items):
        """items: (prompt, answer, wrong).  Returns (accuracy, mean logit diff, n)."""
        logits = self.last_logits([p for p, _, _ in items])
        correct, lds = 0, []
        for (p, a, w), lg in zip(items, logits):
            a_ids, w_ids = self.ids(a), self.ids(w)
            ok = int(lg.argmax()) == a_ids[0]
            if ok and len(a_ids) > 1:  # a multi-token answer must be generated whole, greedily
                seq = [self.bos] + self.ids(p) + a_ids
                lg2 = self.model(input_ids=torch.tensor([seq])).logits[0]
                n0 = len(seq) - len(a_ids)
                ok = all(int(lg2[n0 - 1 + k].argmax()) == a_ids[k] for k in range(len(a_ids)))
            correct += ok
            lds.append(float(lg[a_ids[0]] - lg[w_ids[0]]))
        return correct / len(items), sum(lds) / len(lds), len(items)


def ioi_order(prompt, io, s):
    """ABBA when the indirect object is named before the subject, BABA otherwise."""
    pos = {name: re.search(r"\b" + name.strip() + r"\b", prompt).start() for name in (io, s)}
    return "ABBA" if pos[io] < pos[s] else "BABA"


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/demo")
    ap.add_argument("--shared", default=os.environ.get("PS_SHARED", "/work/shared/data"))
    ap.add_argument("--train-log", default="/tmp/ps-demo/train_log.json")
    ap.add_argument("--out", default=None, help="default: MODEL/EVAL.md")
    ap.add_argument("--seed", type=int, default=99)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    out_path = args.out or os.path.join(args.model, "EVAL.md")
    sc = Scorer(args.model, args.threads)
    rng = random.Random(args.seed)

    rows = []  # (task, how it is held out, acc, mean ld, n)

    def add(task, held, items):
        acc, ld, n = sc.score(items)
        rows.append((task, held, acc, ld, n))
        print(f"{task:44s} n={n:5d}  acc={acc:.3f}  mean logit diff={ld:6.2f}", flush=True)

    start_note = "bare list from a start no training document starts at"
    nums = mc.heldout_bare("numbers", 8)
    add("digits: \"3 4 5\" (answers 0-9)", start_note, [t for t in nums if int(t[1]) <= 9])
    add("numbers: \"13 14 15\" (answers 10-100)", start_note, [t for t in nums if int(t[1]) >= 10])
    add("numbers, comma-separated: \"13, 14, 15,\"", start_note, mc.heldout_bare("numbers", 8, ", "))
    for name, label in [("numwords", "number words: \"three four five\""),
                        ("months", "months: \"March April May\""),
                        ("days", "days: \"Wednesday Thursday Friday\""),
                        ("upper", "letters: \"C D E\""), ("lower", "letters: \"c d e\""),
                        ("roman", "roman: \"III IV V\"")]:
        add(label, start_note, mc.heldout_bare(name))

    seq_dir = os.path.join(args.shared, "seqcont", "data")
    have_seqcont = os.path.isdir(seq_dir)
    ld_rows = []
    if have_seqcont:
        for task in ["numerals", "numwords", "months"]:
            clean = []
            for tmpl in ["done", "lost", "names"]:
                recs = read_jsonl(os.path.join(seq_dir, task, f"{task}_prompts_{tmpl}.jsonl"))
                items = [(r["text"], r["corr"], r["incorr"]) for r in recs]
                add(f"seqcont {task}_prompts_{tmpl} (all prompts)", "template verb never seen in training",
                    items)
                clean += items[:512]
            rand = read_jsonl(os.path.join(seq_dir, task, f"randDS_{task}.jsonl"))
            _, ld_clean, n_clean = sc.score(clean)
            _, ld_rand, n_rand = sc.score([(r["text"], r["corr"], r["incorr"]) for r in rand])
            ld_rows.append((task, ld_clean, n_clean, ld_rand, n_rand))
    else:
        print(f"note: {seq_dir} missing; seqcont rows skipped")
    held_tmpl = "seqcont format, verb done/lost/born (never in this template in training)"
    add("template numbers 0-100", held_tmpl, mc.heldout_template(rng, "numbers", 300))
    for name in ["days", "upper", "lower", "roman"]:
        add(f"template {name}", held_tmpl, mc.heldout_template(rng, name, 200))
    ioi = mc.heldout_ioi(rng, 400)
    add("IOI, all 4 held-out templates", "templates never seen in training", ioi)
    nt = len(mc.IOI_HELDOUT)
    ioi_split = []
    for k, tmpl in enumerate(mc.IOI_HELDOUT):
        items = ioi[k::nt]
        shown = tmpl.replace("{IO}", "").strip().replace("{", "").replace("}", "")
        add(f"IOI T{k + 1} `{shown}`", "template never seen in training", items)
        for order in ("ABBA", "BABA"):
            sub = [t for t in items if ioi_order(*t) == order]
            acc, ld, n = sc.score(sub)
            ioi_split.append((k, order, acc, ld, n))
    add("IOI, training template `When A and B went to the P, S gave a O to` (reference)",
        "not held out: random names/places/objects", [mc.ioi_fill(rng, mc.IOI_TRAIN[0]) for _ in range(200)])

    canon = []
    logits = sc.last_logits([p for p, _, _ in CANONICAL])
    for (p, a, w), lg in zip(CANONICAL, logits):
        probs = torch.softmax(lg, -1)
        top = int(lg.argmax())
        a_id, w_id = sc.ids(a)[0], sc.ids(w)[0]
        canon.append((p, a, w, sc.tok.decode([top]), float(probs[top]), float(probs[a_id]),
                      float(lg[a_id] - lg[w_id]), [sc.bos] + sc.ids(p), a_id, w_id))
        print(f"{p!r:100.100s} top {sc.tok.decode([top])!r} p={float(probs[top]):.3f} "
              f"ld={float(lg[a_id] - lg[w_id]):.2f}")

    log = None
    if os.path.exists(args.train_log):
        with open(args.train_log) as f:
            log = json.load(f)
    cfg = sc.model.config
    n_params = sum(p.numel() for p in sc.model.parameters())
    st_size = os.path.getsize(os.path.join(args.model, "model.safetensors"))
    cmd = " ".join(["~/.cache/ps-venv/bin/python", "tools/demo_model/eval.py"] + sys.argv[1:])

    L = []
    L.append("# Demo model: evaluation\n")
    L.append("A small GPT-2 that patchsweep trains itself (tools/demo_model/) on synthetic text full of "
             "sequences (numbers, number words, months, days, letters, Roman numerals), seqcont-style "
             "sentences and IOI sentences, so that sequence-continuation and IOI patching runs have a "
             "model to work on without downloading one.\n")
    L.append("## Model\n")
    L.append(f"- `GPT2LMHeadModel`: {cfg.n_layer} layers, d_model {cfg.n_embd}, {cfg.n_head} heads "
             f"(d_head {cfg.n_embd // cfg.n_head}), d_mlp {cfg.n_inner}, n_positions {cfg.n_positions}, "
             f"`{cfg.activation_function}`, LayerNorm eps {cfg.layer_norm_epsilon}, tied unembedding; "
             f"{n_params} parameters, float32, model.safetensors {st_size} bytes.")
    L.append(f"- Tokenizer: byte-level BPE trained with Hugging Face `tokenizers` on the corpus, GPT-2's "
             f"pre-tokenizer (add_prefix_space false), {cfg.vocab_size} tokens; `<|endoftext|>` is the "
             f"last id ({cfg.bos_token_id}), the BOS and EOS (config bos_token_id = eos_token_id = "
             f"{cfg.bos_token_id}). tokenizer.json is laid out like openai-community/gpt2's "
             f"(merges as \"a b\" strings).")
    L.append("- Every number 0-100, number word zero-twenty, month, day, letter A-Z/a-z and Roman "
             "numeral I-XX is one token both with and without its leading space (`\" 5\"` and `\"5\"` "
             "differ, as in GPT-2); every name in the corpus is one token with its leading space.")
    L.append("- **BOS policy: every training document and every prompt below starts with "
             f"`<|endoftext|>` (id {cfg.bos_token_id}), as TransformerLens prepends it.**\n")
    L.append("## Training\n")
    if log:
        L.append(f"- Corpus: `python3 tools/demo_model/make_corpus.py --out /tmp/ps-demo` "
                 f"(400000 generated documents, seed 1234); {log['train_docs']} training documents, "
                 f"{log['train_tokens']} tokens (BOS included), each at most {log['max_len']} tokens.")
        L.append(f"- Command: `~/.cache/ps-venv/bin/python tools/demo_model/train.py --corpus "
                 f"/tmp/ps-demo/train.txt --work /tmp/ps-demo --out models/demo`")
        L.append(f"- {log['steps']} steps of {log['batch_docs']} documents (batched by length), AdamW "
                 f"(betas 0.9/0.98, weight decay {log['weight_decay']} on matrices), lr {log['lr']} with "
                 f"{log['warmup']} warm-up steps and cosine decay to {log['lr_min']}, grad-norm clip 1.0, "
                 f"no dropout, seed {log['seed']}.")
        L.append(f"- Final training loss {log['final_train_loss']:.4f} (mean of the last 200 steps), "
                 f"validation loss {log['val_loss']:.4f} on {log['val_docs']} held-back documents "
                 f"(per token, nats). Much of the remaining loss is irreducible: first list items, "
                 f"names, filler words and shuffled lists are random.")
        L.append(f"- Wall time {log['minutes']:.1f} min (training loop; tokenizer training and tokenizing add about a minute) on a shared 2-core CPU ({platform.processor() or 'x86_64'}, "
                 f"AMD EPYC), {log['threads']} torch thread, torch {log['torch']}.\n")
    else:
        L.append(f"(no training log at {args.train_log})\n")
    L.append("## Held-out accuracy\n")
    L.append(f"Command: `{cmd}` (from the repository root; HF transformers "
             f"`GPT2LMHeadModel.from_pretrained` + `tokenizers.Tokenizer.from_file`).\n")
    L.append("Accuracy = greedy next token equals the correct continuation (with its leading space) at the "
             "last position. Logit diff = logit(correct) - logit(incorrect); the incorrect answer is the "
             "last item of the prompt (seqcont's `incorr`) or, for IOI, the repeated subject.\n")
    L.append("What is held out: bare lists start where no training document starts (numbers 3, 13, "
             "23, ... 93; three, nine; March, September; Wednesday, Saturday; C, K, R; c, m, v; III, "
             "VIII), though the items occur after other starts; the seqcont-style template never has "
             "the verbs done, "
             "lost or born in training, so every seqcont prompt is unseen; IOI rows use 4 templates "
             "absent from training (random names, places, objects).\n")
    L.append("| task | held out by | n | accuracy | mean logit diff |")
    L.append("|---|---|---:|---:|---:|")
    for task, held, acc, ld, n in rows:
        L.append(f"| {task} | {held} | {n} | {acc:.3f} | {ld:.2f} |")
    L.append("")
    L.append("IOI by name order (held-out templates, in the order above): " + "; ".join(
        f"T{k + 1} {order} {acc:.2f} (n={n})" for k, order, acc, ld, n in ioi_split) + ".\n")
    L.append("Weak spots, read off the rows above: (1) bare lists from a held-out start lean on the "
             "first item, which is a token without a leading space (`\"13\"`, not `\" 13\"`) that "
             "training never shows at the head of a list; space-separated numbers mostly survive this, "
             "comma-separated ones do not, and the short word lists miss some. Inside sentences, where "
             "every item has its leading space, held-out prompts are near perfect. (2) IOI generalises "
             "to new templates mainly when the subject is named second (ABBA); with the subject named "
             "first (BABA) two of the four held-out templates mostly give the subject.\n")
    L.append("## Canonical prompts\n")
    L.append("The bare lists here start at trained starts (the demo must get these right), so training "
             "documents begin with these very prompts; the three seqcont prompts are unseen (held-out "
             "verb); the IOI template is a training template, but this exact sentence is filtered out "
             "of the corpus.\n")
    L.append("| prompt (BOS prepended) | correct | incorrect | greedy | p(greedy) | p(correct) | logit diff | token ids |")
    L.append("|---|---|---|---|---:|---:|---:|---|")
    for p, a, w, top, ptop, pa, ld, ids, a_id, w_id in canon:
        L.append(f"| `{p}` | `{a!r}` ({a_id}) | `{w!r}` ({w_id}) | `{top!r}` | {ptop:.3f} | {pa:.3f} | "
                 f"{ld:.2f} | {' '.join(map(str, ids))} |")
    L.append("")
    if ld_rows:
        L.append("## seqcont: clean vs corrupted (randDS)\n")
        L.append("Mean logit diff (corr - incorr) at the last position over the paper's 1536 clean prompts "
                 "(done[:512] + lost[:512] + names[:512]) and over the 1536 `randDS` prompts, the "
                 "gap an activation-patching run recovers.\n")
        L.append("| task | clean mean logit diff | n | randDS mean logit diff | n |")
        L.append("|---|---:|---:|---:|---:|")
        for task, lc, nc, lr_, nr in ld_rows:
            L.append(f"| {task} | {lc:.2f} | {nc} | {lr_:.2f} | {nr} |")
        L.append("")
    with open(out_path, "w") as f:
        f.write("\n".join(L))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
