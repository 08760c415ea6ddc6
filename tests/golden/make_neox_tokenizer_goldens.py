#!/usr/bin/env python3
# A GPT-NeoX-format tokenizer.json and its goldens, and NFC goldens, made by Hugging Face tokenizers and Python's
# unicodedata (never by our code).
# Run: ~/.cache/ps-venv/bin/python tests/golden/make_neox_tokenizer_goldens.py [--out tests/data/tokenizer]
"""No Pythia tokenizer is at hand (no Hub access), so this trains one in the GPT-NeoX layout with
`tokenizers` on a small synthetic corpus (make_tokenizer_goldens.py's edge cases and random texts, no shared
data): normalizer NFC, byte-level BPE, pre_tokenizer ByteLevel(add_prefix_space=False), ByteLevel
post-processor and decoder, special tokens <|endoftext|> = 0 (Pythia's BOS/EOS) and <|padding|> = 1, 2000 ids,
then, like GPT-NeoX-20B's whitespace tokens (its id 50276 is two spaces, "normalized": true; the exact set was
not at hand), 23 non-special added tokens of 24 down to 2 spaces with "normalized": true (ids 2000..2022), which
HF matches in the NFC-normalized text.

Writes, under --out:
- neox/tokenizer.json, and neox_golden.jsonl: the ids tokenizers.Tokenizer.from_file(that file).encode(text)
  gives for every text of the corpus (held-out texts too, among them NFC_TEXTS: accents precomposed and
  decomposed, Vietnamese, Greek, Hangul syllables and jamo, Devanagari with nukta), in make_tokenizer_goldens.py's
  jsonl format; transformers' PreTrainedTokenizerFast over the same file is checked to agree id for id.
- nfc_golden.jsonl: {"text", "nfc", "group"} per line, "nfc" = tokenizers.normalizers.NFC().normalize_str(text),
  the normalizer the tokenizer runs. tokenizers normalizes with Unicode 9.0 data (tools/gen_unicode_nfc.py);
  every text is also normalized by unicodedata.normalize('NFC') (Unicode 14.0 here), and the two must agree
  except in the group "after-9.0" (characters assigned after Unicode 9.0, which tokenizers leaves alone), where
  the line also carries "unicodedata". Groups: the hand-written cases below, every character with a canonical
  decomposition or a combining class and its NFD, a sample of Hangul syllables and their jamo, random sequences.
"""
import argparse
import json
import os
import random
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_tokenizer_goldens as mtg  # noqa: E402

D = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731

# Hand-written NFC cases, by what they exercise.
NFC_CASES = {
    "ascii": ["", "a", "Hello, world!", "\t\n", "<|endoftext|>"],
    "latin": ["é", "e\u0301", "Å", "A\u030a", "ñ", "n\u0303", "ǖ", "u\u0308\u0304", "ü\u0304", "café", D("café"),
              "naïve", D("naïve"), "Ǻ", D("Ǻ"), "ḉ", "c\u0327\u0301", "c\u0301\u0327", "ṩ", "s\u0307\u0323",
              "s\u0323\u0307", "ȫ", "o\u0308\u0304", "ǭ", "o\u0328\u0304", "o\u0304\u0328", "Ç\u0301"],
    "out-of-order": ["a\u0301\u0323", "a\u0323\u0301", "e\u0302\u0323", "e\u0323\u0302", "q\u0307\u0323",
                     "q\u0323\u0307", "a\u0308\u0301\u0323\u0327", "x\u0301\u0316\u0300\u0317", "a\u0315\u0300\u05ae",
                     "a\u05ae\u0300\u0315", "\u0301\u0323a", "\u0323\u0301", "a\u0360\u0323\u031b\u0301",
                     "a\u0345\u0301\u0313", "u\u031b\u0323\u0301", "u\u0301\u0323\u031b"],
    "blocked": ["a\u0305\u0301", "a\u0301\u0301", "e\u0300\u0300", "a\u0334\u0301", "a\u0301\u0334",
                "\u0041\u030a\u030a", "o\u0338\u0301", "\u0915\u094d\u093c", "a\u200d\u0301", "a\u034f\u0301"],
    "vietnamese": ["Tiếng Việt", D("Tiếng Việt"), "Việt Nam", "người", D("người"), "ệ", "ậ", "ữ", "ở", "ỡ",
                   "Nguyễn Trãi", D("Nguyễn Trãi"), "đường phố", "u\u031b\u0303", "o\u0302\u0301", "o\u0301\u0302"],
    "greek": ["Ελλάδα", D("Ελλάδα"), "ά", "\u1f71", "ᾄ", "\u03b1\u0313\u0301\u0345", "\u03b1\u0345\u0313\u0301",
              "\u03b1\u0301\u0313", "ἄνθρωπος", D("ἄνθρωπος"), "ᾷ", "\u03b1\u0342\u0345", "ΐ", "\u03b9\u0308\u0301",
              "\u0344", "\u0374", "\u037e", "\u0387", "\u1fee", "\u1ffd", "ῼ", "\u03c9\u0345\u0314\u0342"],
    "hangul": ["한국어", D("한국어"), "서울", D("서울"), "\u1112\u1161\u11ab", "\ud558\u11ab", "\u1100\u1161",
               "\u1100\u1161\u11a8", "\u1100\u1161\u11a7", "\uac00\u11a7", "\uac00\u11a8", "\uac01\u11a8",
               "\u1100\u1100\u1161", "\u1100\u1161\u1161", "\u1159\u1161", "\u1100\u1176", "\u1100\u1175\u11c2",
               "\u1100\u1175\u11c3", "\ud7a3", D("\ud7a3"), "\u3131\u314f", "\u1100\u0301\u1161", "\u1100\u1161\u0301\u11a8",
               "\uac00\u0301\u11a8", "\ud7a4", "\u115f\u1160"],
    "exclusions": ["\u0958", "\u0915\u093c", "\u095c", "\u0929", "\u0928\u093c", "\u2adc", "\u2add\u0338", "\ufb1d",
                   "\ufb2a", "\u05e9\u05c1", "\u0f43", "\u0f42\u0fb7", "\u0f73", "\u0f71\u0f72", "\u0f75", "\u0f81",
                   "\u1d15e", "\U0001d15e", "\U0001d160", "\u0340", "\u0341", "\u0343", "a\u0340", "a\u0343",
                   "\u2000", "\u2126", "\u212a", "\u212b", "\u2329", "\u232a", "\u0e33", "\ufb4f"],
    "singletons": ["\u212b", "\u2126", "\u212a", "\u212b\u0323", "\u212bx", "\u1fbe", "\u1f71\u0345", "\uf900",
                   "\ufa10", "\U0002f800", "\U0002fa1d", "\u2000\u2001", "\u0340\u0341"],
    "starter-pairs": ["\u0b47\u0b3e", "\u0b47\u0b56", "\u0b47\u0b57", "\u0dd9\u0dcf", "\u0dd9\u0dca", "\u0dd9\u0ddf",
                      "\u1025\u102e", "\u0cc6\u0cd5", "\u0cc6\u0cc2\u0cd5", "\u0bc6\u0bbe", "\u0d46\u0d3e",
                      "\u09c7\u09be", "\U00011099\U000110ba", "\U00011131\U00011127", "\u1b05\u1b35",
                      "\U000114b9\U000114ba", "\u0b47\u0b3c\u0b3e"],
    "devanagari": ["नमस्ते", "हिन्दी", "क़लम", "\u0958लम", "ज़्यादा", "\u095bयादा", "ड़", "\u095c", "ऩ",
                   "\u0928\u093c", "फ़िल्म", "\u095eिल्म", "\u0915\u093c\u094d", "\u093c\u0915"],
    "mixed": ["Å vs Å vs Å", "Ω ≠ Ω", "ﬁ ligature ﬁ", "x\u0301y\u0302z\u0303", "日本語テキスト", "ｶﾞ",
              "\u30ab\u3099", "\u304b\u3099", "\u306f\u309a", "🙂\u0301", "1\u20e3", "\u00a0\u0301"],
    "long-runs": ["a" + "\u0301\u0323" * 40, "a" + "".join(chr(0x300 + (k * 7) % 0x70) for k in range(120)),
                  "\u0323" * 50 + "a", "e" + "\u0302" * 10 + "\u0323"],
}

# Texts for the tokenizer goldens with characters above U+0300 (NFC changes many of them).
NFC_TEXTS = [
    "Tiếng Việt có dấu.", D("Tiếng Việt có dấu."), "Nguyễn Trãi sống ở Hà Nội.", D("Nguyễn Trãi sống ở Hà Nội."),
    "ἄνθρωπος καὶ ᾄδω", D("ἄνθρωπος καὶ ᾄδω"), "\u03b1\u0345\u0313\u0301 and \u1f71", "Ελλάδα, Ελλάδα",
    "한국어 텍스트입니다", D("한국어 텍스트입니다"), "\u1112\u1161\u11ab\u1100\u116e\u11a8", "서울 \uac00\u11a8",
    "हिन्दी में क़लम", "\u0958\u0932\u092e and \u0915\u093c\u0932\u092e", "ज़्यादा फ़िल्म", "\u095c\u095d\u095e",
    "Å Å Å", "\u212b\u2126\u212a", "café café", "naïve  naïve", "a\u0301\u0323 a\u0323\u0301", "e\u0302\u0323 ệ",
    "  e\u0301  ", "\ufb1d\u05e9\u05c1\ufb2a", "\u0f43\u0f73\u0f75", "\u0b47\u0b3e \u0dd9\u0dcf", "\uf900\u2adc",
    "Hello  world", "a   b    c", " " * 25 + "x", "\t  \t", "x" + " " * 24 + "y" + " " * 2 + "z",
]


def nfc_goldens():
    from tokenizers import normalizers
    hf = normalizers.NFC().normalize_str
    cases = [(g, t) for g, ts in NFC_CASES.items() for t in ts]
    later = []
    for c in range(0x110000):
        if 0xD800 <= c < 0xE000:
            continue
        ch = chr(c)
        dec = unicodedata.decomposition(ch)
        if unicodedata.combining(ch) or (dec and not dec.startswith("<")):
            probe = "a" + ch + "\u0334" + D(ch)
            if any(hf(t) != unicodedata.normalize("NFC", t) for t in (ch, D(ch), probe)):
                later.append(ch)
                cases += [("after-9.0", ch), ("after-9.0", D(ch)), ("after-9.0", probe)]
            else:
                cases += [("every-character", ch), ("every-character", D(ch))]
    for c in range(0xAC00, 0xD7A4, 97):
        cases += [("hangul-sample", chr(c)), ("hangul-sample", D(chr(c)))]
    pool = sorted({ord(x) for _, t in cases if _ != "after-9.0" for x in t})
    rng = random.Random(20260116)
    cases += [("random", "".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 8)))) for _ in range(3000)]
    lines, seen = [], set()
    for g, t in cases:
        if (g, t) in seen:
            continue
        seen.add((g, t))
        d = {"group": g, "text": t, "nfc": hf(t)}
        u = unicodedata.normalize("NFC", t)
        if u != d["nfc"]:
            if g != "after-9.0":
                sys.exit(f"tokenizers and unicodedata disagree on {t!r} ({g})")
            d["unicodedata"] = u
        lines.append(d)
    return lines, len(later)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "..", "data", "tokenizer"))
    out = os.path.abspath(ap.parse_args().out)
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    import tokenizers
    rng = random.Random(20260116)
    texts = list(dict.fromkeys(list(mtg.EDGE) + [mtg.rand_text(rng) for _ in range(1500)]))
    train = texts[: len(texts) * 2 // 3]
    texts = list(dict.fromkeys(texts + NFC_TEXTS + [t for ts in NFC_CASES.values() for t in ts]))

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=2000, special_tokens=["<|endoftext|>", "<|padding|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(train, trainer)
    assert tok.token_to_id("<|endoftext|>") == 0 and tok.token_to_id("<|padding|>") == 1
    tok.add_tokens([AddedToken(" " * k, normalized=True, special=False) for k in range(24, 1, -1)])
    assert tok.token_to_id(" " * 24) == 2000 and tok.token_to_id("  ") == 2022
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
    changed = sum(unicodedata.normalize("NFC", t) != t for t in texts)
    print(f"{sum(any(ord(ch) >= 0x300 for ch in t) for t in texts)} of {len(texts)} texts have characters at or above "
          f"U+0300; NFC changes {changed}; {sum(any(i >= 2000 for i in x) for x in ids)} use a space token")
    dec = lambda x: ref.decode(x, skip_special_tokens=False)  # noqa: E731
    mtg.write_jsonl(os.path.join(out, "neox_golden.jsonl"), texts, ids, dec,
                    mtg.decode_cases(texts, ids, dec, random.Random(10)))
    print(f"tokenizers {tokenizers.__version__}; {path}: {os.path.getsize(path)} bytes, "
          f"{ref.get_vocab_size()} ids, trained on {len(train)} of {len(texts)} texts")

    lines, n_later = nfc_goldens()
    npath = os.path.join(out, "nfc_golden.jsonl")
    with open(npath, "w", encoding="utf-8") as f:
        for x in lines:
            f.write(json.dumps(x, ensure_ascii=False) + "\n")
    print(f"wrote {npath}: {len(lines)} texts, NFC changes {sum(x['nfc'] != x['text'] for x in lines)}; "
          f"{n_later} characters after Unicode 9.0 that tokenizers leaves alone; {os.path.getsize(npath)} bytes")


if __name__ == "__main__":
    main()
