#!/usr/bin/env python3
# A GPT-NeoX-format tokenizer.json and its goldens, made by Hugging Face tokenizers (never by our code).
# Run: ~/.cache/ps-venv/bin/python tests/golden/make_neox_tokenizer_goldens.py [--out tests/data/tokenizer]
"""No Pythia tokenizer is at hand (no Hub access), so this trains one in the GPT-NeoX layout with
`tokenizers` on a small synthetic corpus (make_tokenizer_goldens.py's edge cases and random texts, no shared
data): normalizer NFC, byte-level BPE, pre_tokenizer ByteLevel(add_prefix_space=False), ByteLevel
post-processor and decoder, special tokens <|endoftext|> = 0 (Pythia's BOS/EOS) and <|padding|> = 1, 2000 ids.
The same tokenizer without its NFC normalizer is checked to give the same ids on every text below U+0300 (where
NFC changes nothing; patchsweep implements NFC only there and refuses other text).

Writes tests/data/tokenizer/neox/tokenizer.json and tests/data/tokenizer/neox_golden.jsonl: the ids
tokenizers.Tokenizer.from_file(that file).encode(text) gives for every text of the corpus (held-out texts
too), in make_tokenizer_goldens.py's jsonl format; transformers' PreTrainedTokenizerFast over the same file
is checked to agree id for id.
"""
import argparse
import os
import random
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tokenizer_goldens as mtg  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "data", "tokenizer"))
    out = os.path.abspath(ap.parse_args().out)
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    import tokenizers
    rng = random.Random(20260116)
    texts = list(dict.fromkeys(list(mtg.EDGE) + [mtg.rand_text(rng) for _ in range(1500)]))
    train = texts[: len(texts) * 2 // 3]

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train, trainer)
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|padding|>") == 1
    d = os.path.join(out, "neox")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "tokenizer.json")
    tok.save(path, pretty=False)

    ref = Tokenizer.from_file(path)
    ids = [ref.encode(t).ids for t in texts]
    from transformers import PreTrainedTokenizerFast
    fast = PreTrainedTokenizerFast(tokenizer_file=path)
    diffs = mtg.compare("transformers PreTrainedTokenizerFast", texts, ids,
                        lambda t: fast.encode(t, add_special_tokens=False))
    if diffs:
        sys.exit("transformers and tokenizers disagree")
    bare = Tokenizer.from_file(path)
    bare.normalizer = None
    low = [t for t in texts if all(ord(ch) < 0x300 for ch in t)]
    if mtg.compare("without NFC, texts below U+0300", low, [ref.encode(t).ids for t in low],
                   lambda t: bare.encode(t).ids):
        sys.exit("NFC changed a text below U+0300")
    print(f"{len(low)} of {len(texts)} texts lie below U+0300")
    dec = lambda x: ref.decode(x, skip_special_tokens=False)  # noqa: E731
    mtg.write_jsonl(os.path.join(out, "neox_golden.jsonl"), texts, ids, dec,
                    mtg.decode_cases(texts, ids, dec, random.Random(10)))
    print(f"tokenizers {tokenizers.__version__}; {path}: {os.path.getsize(path)} bytes, "
          f"{ref.get_vocab_size()} ids, trained on {len(train)} of {len(texts)} texts")


if __name__ == "__main__":
    main()
