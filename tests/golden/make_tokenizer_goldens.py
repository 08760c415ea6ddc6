#!/usr/bin/env python3
# Goldens for src/tokenizer.c, made by the reference implementations (Hugging Face tokenizers/transformers), never by our code.
# Run: ~/.cache/ps-venv/bin/python tests/golden/make_tokenizer_goldens.py [--shared ../shared/data] [--out tests/data/tokenizer]
"""Writes, under tests/data/tokenizer/:

gpt2_golden.jsonl    ids of the real GPT-2 tokenizer (tokenizers.Tokenizer.from_file(gpt2-tokenizer/tokenizer.json)).
llama2_golden.jsonl  ids of the real Llama-2 tokenizer as transformers' LlamaTokenizerFast(legacy=True) encodes it,
                     without special tokens (no BOS).
llama2/tokenizer.json  that Llama-2 fast tokenizer saved by tokenizers (compact JSON), so the C code's tokenizer.json
                     path is tested on a SentencePiece-style BPE too.
variants_golden.jsonl  the same two tokenizers with their normalizer / pre-tokenizer / decoder swapped for other
                     settings HF supports (ByteLevel add_prefix_space / use_regex, Metaspace prepend schemes and split).
                     A line {"variant": {"name", "base", "normalizer", "pre_tokenizer", "decoder"[, "added_tokens"]}}
                     (the parts as HF serializes them) starts each variant; the test patches them into the base
                     tokenizer.json.

Each golden line is {"text": str, "ids": [int], "decoded": str (only when HF's decode(ids) != text)} or, for decoding
of partial sequences, {"ids": [int], "decoded": str} without "text".

About the Llama-2 reference. transformers 5.x builds LlamaTokenizerFast from a bare tokenizer.model differently from
the tokenizer.json that ships with every Llama-2 checkpoint: its merges are ordered by piece id instead of piece score
(the whitespace pieces "▁▁", "▁▁▁▁" ... have score -1e9 but low ids), it uses a Metaspace pre-tokenizer that does not
prepend "▁" when the text already starts with a space, and its LlamaConverter fails outright (extract() is called
with the wrong arguments). Those differ from SentencePiece on texts with leading or repeated spaces. So this script
rebuilds what transformers 4.x's LlamaConverter(legacy=True) made (and what meta-llama/Llama-2-7b-hf's tokenizer.json
holds): vocab and merges from transformers.tokenization_utils_base.generate_merges(vocab, vocab_scores) (score order),
normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, BPE with byte_fallback and fuse_unk, control pieces as
special added tokens; it is wrapped in LlamaTokenizerFast(tokenizer_object=..., legacy=True) and encoded with
add_special_tokens=False. The script compares it with sentencepiece itself and with transformers 5's own build and
prints the differences (sentencepiece never splits "<s>" / "</s>" / "<unk>" out of the text; HF does).
"""
import argparse
import hashlib
import json
import os
import random
import sys


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


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


# ---------------------------------------------------------------- corpus

EDGE = [
    "", " ", "  ", "   ", "\t", "\n", "\r\n", " \n", "\n ", "\n\n\n", " \t \n ", "a", " a", "a ", " a ", "  a  ",
    "5", " 5", "  5", "5 ", "13", " 13", "1 2 3 4", "1 2 3 4 5", " 1 2 3 4", "1, 2, 3, 4,", "1,2,3,4",
    "January February March", " January February March April", "Monday Tuesday Wednesday",
    "one two three four", "two four six eight", "10 20 30 40", "100 200 300", "1999 2000 2001 2002",
    "Hello world", "Hello, world!", "hello world ", "Hello  world", "Hello\tworld", "Hello\nworld",
    "The quick brown fox jumps over the lazy dog.", "THE QUICK BROWN FOX", "tHe QuIcK",
    "don't", "Don't", "DON'T", "I'm", "I'M", "you're", "YOU'RE", "we've", "WE'VE", "she'll", "SHE'LL", "he'd",
    "HE'D", "it's", "IT'S", "John's", "JOHN'S", "the dog's bone", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d",
    "''s", "'ss", "'S", "'T", "'Re", "'LL", "'x", "'", "''", "'''", " '", "' ", "rock 'n' roll", "y'all'd've",
    "can't won't shan't", "o'clock", "it’s", "don’t",  # typographic apostrophe
    "<|endoftext|>", " <|endoftext|>", "<|endoftext|> ", "a<|endoftext|>b", "a <|endoftext|> b",
    "<|endoftext|><|endoftext|>", "Hello<|endoftext|>World", "<|endoftext|>\n5", "<|endoftext", "endoftext|>",
    "<|endoftext|>The", "<|endoftext |>", "<| endoftext|>", "<|ENDOFTEXT|>",
    "<s>", "</s>", "<unk>", "<s>Hello", "Hello</s>", "a <s> b", "<s> </s>", "<s><s>", "<unk>x", " <s>", "<pad>",
    "café", "naïve", "résumé", "Ångström", "e\u0301", "a\u0308o\u0308u\u0308", "\u0301", " \u0301", "\u0301a",
    "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319\u0324\u031e\u0349\u035a\u032f\u031e\u0320\u034d",
    "日本語のテキスト", "中文字符", "你好，世界！", "한국어 텍스트", "Ελληνικά", "русский язык", "עברית", "العربية",
    "हिन्दी", "ไทย", "ትግርኛ", "ᚠᛇᚻ", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟙𝟚𝟛", "ＡＢＣ１２３", "ｶﾀｶﾅ",
    "🙂", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🇫🇷🇩🇪", "😀😃😄", " 🙂", "🙂 ", "a🙂b", "🤖 robots", "❤️", "☃",
    "\u200b", "a\u200bb", "\u200d", "\ufeff", "\ufeffBOM", "\u00ad", "\u2060", "\ue000", "\U000f0000", "\ufffd",
    "\u00a0", "a\u00a0b", "\u3000", "a\u3000b", "\u3000!", "a \u3000b", "\u2003", "x\u2003\u2003y", "\u2028", "\u2029",
    "\u0085", "a\u0085b", "\u0085!", " \u0085", "\u000b", "\u000c", "a\u000bb", "\u001c", "a\u001cb", "\u001f",
    "\u180e", "a\u180eb", "\u1680", "\u202f", "\u205f", "\u0001", "\u007f", "\u0080", "\u009f",
    "½", "²³", "Ⅻ", "٣٤٥", "१२३", "〇", "𝟘", "1½", " ½", "x²", "3.14159", "2,718", "1e10", "-5", "+5", "$5", "5%",
    "1234567890", "12345678901234567890", "0000000000000", "3.141592653589793238462643383279502884197",
    "2024-06-01", "12:30:45", "+1 (555) 123-4567", "192.168.0.1", "0x1F", "#ff00aa", "v1.2.3",
    "a" * 50, "ab" * 40, " " * 40, "\n" * 20, "\t" * 10, "!" * 30, "." * 25, "-" * 60, "=" * 30, "_" * 20,
    "foo_bar_baz", "fooBarBaz", "FooBarBaz", "FOO_BAR", "foo-bar", "foo.bar", "foo/bar", "foo\\bar",
    "def f(x):\n    return x + 1\n", "int main(void) { return 0; }", "if (a < b && c > d) {}", "x = [1, 2, 3]",
    "<html><body>Hi</body></html>", "http://example.com/path?q=1&b=2", "user@example.com", "@user #tag",
    "\"quoted\"", "'single'", "«guillemets»", "„German“", "—em dash—", "–en–", "…", "•", "©®™", "€£¥₹", "°C",
    "trailing space ", "trailing spaces   ", "trailing tab\t", "trailing newline\n", " leading", "   leading",
    "▁", "▁▁", "▁x", "x▁y", " ▁ ", "Ġ", "Ġ5", "ĠĠ",
    "Sun done in", "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in",
    "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in ",
    "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in 5",
]

WORDS = ("the of and to in is was that for it with as his on be at by had are but from not have all were one "
         "when we there can an your which their said if do will each about how up out them then she many some so "
         "these would other into has more her two like him see time could no make than first been its who now "
         "people my made over did down only way find use may water long little very after words called just where "
         "most know get through back much before go good new write our used me man too any day same right look "
         "think also around another came come work three word must because does part even place well such here "
         "take why things help put years different away again off went old number great tell men say small every "
         "found still between name should home big give air line set own under read last never us left end along "
         "while might next sound below saw something thought both few those always looked show large often "
         "together asked house don't world going want school important until form food keep children feet land "
         "side without boy once animals life enough took sometimes four head above kind began almost live page "
         "got earth need far hand high year mother light parts country father let night following picture being "
         "study second eyes soon times story boys since white days ever paper hard near sentence better best "
         "across during today others however sure means knew it's try told young miles sun ways thing whole hear "
         "example heard several change answer room sea against top turned learn point city play toward five using "
         "himself usually interpretability activation patching transformer attention residual stream circuit "
         "logit tokenizer embedding GPT Llama SentencePiece").split()
UNI = ["café", "naïve", "über", "straße", "Ærø", "ﬁ", "œuvre", "Ελλάδα", "Москва", "Київ", "東京", "北京", "서울",
       "שלום", "مرحبا", "नमस्ते", "สวัสดี", "ሰላም", "Γειά", "ñandú", "İstanbul", "ǅ", "ǈ", "Ⓐ", "ꙮ", "𐍈", "𓂀",
       "e\u0301", "n\u0303", "\u0301", "\u0308\u0308", "🙂", "👍🏽", "🚀", "🇯🇵", "👩\u200d💻", "✨", "🎉🎉", "💯",
       "日本", "漢字", "한", "中", "ｱ", "Ａ", "ℕ", "∑", "∞", "√2", "≠", "→", "←", "↔", "™", "§", "¶", "†", "‰", "¿",
       "¡", "\u200b", "\u200d", "\ufeff", "\u00a0", "\u3000", "\u2003", "\u0085", "\u2028", "\u00ad", "\ue000"]
PUNCT = list(".,;:!?()[]{}<>\"'`~@#$%^&*-_=+/\\|") + ["...", "?!", "--", "->", "=>", "::", "''", "\"\"", "''s", "'S",
                                                      "'ll", "'ve", "'re", "'d", "'m", "'t", "'s", "n't", "’s"]
WS = [" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n", "\n ", " \t", "\u00a0", "\u3000", "\u0085", "\u000b",
      "\u000c", "\u2028", "\u001c", "        "]
SPECIAL = ["<|endoftext|>", "<s>", "</s>", "<unk>", "<|endoftext", "<|", "|>"]


def rand_number(rng):
    kind = rng.randrange(8)
    if kind == 0:
        return str(rng.randrange(10))
    if kind == 1:
        return str(rng.randrange(100))
    if kind == 2:
        return str(rng.randrange(10 ** rng.randint(3, 25)))
    if kind == 3:
        return f"{rng.uniform(-1000, 1000):.{rng.randint(1, 6)}f}"
    if kind == 4:
        return f"{rng.randrange(1, 1000000):,}"
    if kind == 5:
        return " ".join(str(rng.randrange(1, 30) + i) for i in range(rng.randint(2, 6)))
    if kind == 6:
        return rng.choice(["٣", "१", "½", "²", "Ⅻ", "〇", "𝟘", "①"]) * rng.randint(1, 3)
    return f"{rng.randrange(1, 13)}/{rng.randrange(1, 29)}/{rng.randrange(1900, 2100)}"


def rand_word(rng):
    w = rng.choice(WORDS)
    r = rng.random()
    if r < 0.15:
        w = w.capitalize()
    elif r < 0.2:
        w = w.upper()
    elif r < 0.3:
        w = w + rng.choice(["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "'S", "'LL", "’s", "s", "ing", "ed"])
    return w


def rand_text(rng):
    parts = []
    for _ in range(rng.randint(1, 14)):
        r = rng.random()
        if r < 0.45:
            parts.append(rand_word(rng))
        elif r < 0.6:
            parts.append(rand_number(rng))
        elif r < 0.72:
            parts.append(rng.choice(PUNCT))
        elif r < 0.87:
            parts.append(rng.choice(UNI))
        elif r < 0.97:
            parts.append(rng.choice(WS))
        else:
            parts.append(rng.choice(SPECIAL))
        parts.append(rng.choice(["", " ", " ", " ", " ", " ", "  ", "\t", "\n"]))
    s = "".join(parts)
    r = rng.random()
    if r < 0.1:
        s = " " + s
    elif r < 0.2:
        s = s.rstrip() + " "
    elif r < 0.25:
        s = s.strip()
    return s


def seqcont_texts(shared):
    out = []
    base = os.path.join(shared, "seqcont", "data")
    for task in ("numerals", "numwords", "months"):
        for name in (f"{task}_prompts_done", f"{task}_prompts_lost", f"{task}_prompts_names", f"randDS_{task}"):
            rel = os.path.join("seqcont", "data", task, name + ".jsonl")
            check_hashes(shared, [rel])
            with open(os.path.join(shared, rel), encoding="utf-8") as f:
                for i, line in enumerate(f):
                    if i >= 12:
                        break
                    d = json.loads(line)
                    out += [d["text"], d["text"] + d["corr"], d["text"] + d["incorr"], d["corr"], d["incorr"],
                            d["corr"].strip(), " ".join(str(d[k]) for k in ("S1", "S2", "S3", "S4"))]
    return out


def corpus(shared):
    rng = random.Random(20240611)
    texts = list(EDGE) + seqcont_texts(shared)
    paragraph = ("In 1957, the 2nd edition sold 1,234,567 copies; it's now worth $3.50 (about €3.20). "
                 "Naïve café-goers didn't mind — they'd seen it all!\n\n\tNew paragraph:   spaced   out.  ")
    texts += [paragraph, paragraph * 3, paragraph.upper()]
    seen, uniq = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    while len(uniq) < 3000:
        t = rand_text(rng)
        if t not in seen:
            seen.add(t)
            uniq.append(t)
    return uniq


# ---------------------------------------------------------------- references


def gpt2_reference(shared):
    from tokenizers import Tokenizer
    from tokenizers.models import BPE
    from tokenizers import pre_tokenizers, decoders
    d = os.path.join(shared, "gpt2-tokenizer")
    tok = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    # The vocab.json + merges.txt route of the same tokenizer, as the reference reads it: it must agree.
    alt = Tokenizer(BPE.from_file(os.path.join(d, "vocab.json"), os.path.join(d, "merges.txt")))
    alt.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alt.decoder = decoders.ByteLevel()
    alt.add_special_tokens(["<|endoftext|>"])
    return tok, alt


def llama_reference(shared, out_dir):
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import LlamaTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    path = os.path.join(shared, "llama2-tokenizer", "tokenizer.model")
    m = pb.ModelProto()
    with open(path, "rb") as f:
        m.ParseFromString(f.read())
    vocab_scores = [(p.piece, p.score) for p in m.pieces]
    vocab = {w: i for i, (w, _) in enumerate(vocab_scores)}
    merges = generate_merges(vocab, vocab_scores)
    t = Tokenizer(BPE(vocab, merges, unk_token=m.trainer_spec.unk_piece, fuse_unk=True, byte_fallback=True,
                      dropout=None))
    t.add_tokens([AddedToken(p.piece, normalized=False, special=(p.type == 3)) for p in m.pieces if p.type in (3, 4)])
    t.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    t.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    fast = LlamaTokenizerFast(tokenizer_object=t, legacy=True)
    assert fast.bos_token_id == 1 and fast.eos_token_id == 2 and fast.unk_token_id == 0
    os.makedirs(os.path.join(out_dir, "llama2"), exist_ok=True)
    tj = os.path.join(out_dir, "llama2", "tokenizer.json")
    fast.backend_tokenizer.save(tj, pretty=False)
    return path, fast


def compare(name, texts, want, got_fn):
    diffs = []
    for t, w in zip(texts, want):
        try:
            g = got_fn(t)
        except Exception as ex:  # noqa: BLE001 - a reference that crashes is reported, not fatal
            g = f"error: {ex}"
        if g != w:
            diffs.append((t, w, g))
    print(f"{name}: {len(texts) - len(diffs)}/{len(texts)} identical to the golden")
    for t, w, g in diffs[:8]:
        print(f"    {t!r}\n      golden {w}\n      {name} {g}")
    return diffs


def decode_cases(texts, ids_list, decode, rng):
    """Prefixes and slices of id lists, so partial UTF-8 sequences and lone byte pieces are decoded too."""
    cases = []
    for t, ids in zip(texts, ids_list):
        if len(ids) < 2 or all(ord(c) < 128 for c in t):
            continue
        k = rng.randrange(1, len(ids))
        j = rng.randrange(0, k)
        for sub in (ids[:k], ids[j:k], ids[k:]):
            if sub:
                cases.append(sub)
    rng.shuffle(cases)
    out, seen = [], set()
    for sub in cases:
        if tuple(sub) not in seen:
            seen.add(tuple(sub))
            out.append({"ids": sub, "decoded": decode(sub)})
        if len(out) >= 150:
            break
    return out


def write_jsonl(path, texts, ids_list, decode, extra):
    with open(path, "w", encoding="utf-8") as f:
        for t, ids in zip(texts, ids_list):
            d = {"text": t, "ids": ids}
            dec = decode(ids)
            if dec != t:
                d["decoded"] = dec
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
        for d in extra:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    print(f"wrote {path}: {len(texts)} texts + {len(extra)} decode cases, {os.path.getsize(path)} bytes")


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "..", "shared", "data"))
    ap.add_argument("--out", default=os.path.join(here, "..", "data", "tokenizer"))
    args = ap.parse_args()
    shared, out = os.path.abspath(args.shared), os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    check_hashes(shared, ["gpt2-tokenizer/tokenizer.json", "gpt2-tokenizer/vocab.json", "gpt2-tokenizer/merges.txt",
                          "llama2-tokenizer/tokenizer.model"])

    texts = corpus(shared)
    print(f"corpus: {len(texts)} texts, {sum(len(t) for t in texts)} characters")

    # GPT-2
    gpt2, gpt2_alt = gpt2_reference(shared)
    g_ids = [gpt2.encode(t).ids for t in texts]
    assert gpt2.encode(" 5").ids == [642] and gpt2.encode("5").ids == [20]
    compare("gpt2 vocab.json+merges.txt", texts, g_ids, lambda t: gpt2_alt.encode(t).ids)
    g_dec = lambda ids: gpt2.decode(ids, skip_special_tokens=False)  # noqa: E731
    write_jsonl(os.path.join(out, "gpt2_golden.jsonl"), texts, g_ids, g_dec,
                decode_cases(texts, g_ids, g_dec, random.Random(7)))

    # Llama-2
    model_path, fast = llama_reference(shared, out)
    l_ids = [fast.encode(t, add_special_tokens=False) for t in texts]
    l_dec = lambda ids: fast.decode(ids, skip_special_tokens=False)  # noqa: E731
    write_jsonl(os.path.join(out, "llama2_golden.jsonl"), texts, l_ids, l_dec,
                decode_cases(texts, l_ids, l_dec, random.Random(8)))
    from tokenizers import Tokenizer
    saved = Tokenizer.from_file(os.path.join(out, "llama2", "tokenizer.json"))
    compare("llama2 saved tokenizer.json", texts, l_ids, lambda t: saved.encode(t, add_special_tokens=False).ids)
    print(f"llama2/tokenizer.json: {os.path.getsize(os.path.join(out, 'llama2', 'tokenizer.json'))} bytes")

    # Variants: the same vocabularies with other pipeline settings.
    from tokenizers import decoders, normalizers, pre_tokenizers
    gpt2_json = os.path.join(shared, "gpt2-tokenizer", "tokenizer.json")
    llama_json = os.path.join(out, "llama2", "tokenizer.json")
    rng = random.Random(9)
    sample = texts[:250] + rng.sample(texts[250:], 150)
    variants = [
        ("gpt2_prefix_space", "gpt2", None, pre_tokenizers.ByteLevel(add_prefix_space=True), decoders.ByteLevel()),
        ("gpt2_no_regex", "gpt2", None, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
         decoders.ByteLevel()),
        ("llama_metaspace_first", "llama2", None,
         pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False),
         decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                            decoders.Strip(" ", 1, 0)])),
        ("llama_metaspace_always_split", "llama2", None,
         pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
         decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)),
        ("llama_metaspace_never_split", "llama2", normalizers.Replace("a", "▁a"),
         pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=True),
         decoders.Metaspace(replacement="▁", prepend_scheme="never", split=True)),
    ]
    # Added tokens with lstrip/rstrip, one holding a space, one beyond the vocabulary, one equal to a vocab entry.
    from tokenizers import AddedToken
    added_texts = ["a <mask> b", "a<mask>b", "  <mask>  ", "\t<mask>\n", "x\u3000<mask>\u3000y", "<mask><mask>",
                   " hello world!", "hello world", "say hello worlds", "Ġ5 and 5", "ĠĠ5", "<|endoftext|> <mask>",
                   "<mask|endoftext|>", "<|endoftext|><mask>"]
    variants.append(("gpt2_added_tokens", "gpt2", None, pre_tokenizers.ByteLevel(add_prefix_space=False),
                     decoders.ByteLevel()))
    vpath = os.path.join(out, "variants_golden.jsonl")
    with open(vpath, "w", encoding="utf-8") as f:
        for name, base, norm, pre, dec in variants:
            t = Tokenizer.from_file(gpt2_json if base == "gpt2" else llama_json)
            t.normalizer = norm
            t.pre_tokenizer = pre
            t.decoder = dec
            parts = ["normalizer", "pre_tokenizer", "decoder"]
            texts_v = sample
            if name == "gpt2_added_tokens":
                t.add_special_tokens([AddedToken("<mask>", lstrip=True, rstrip=True)])
                t.add_tokens([AddedToken(" hello world", normalized=False), AddedToken("Ġ5", normalized=False)])
                parts.append("added_tokens")
                texts_v = added_texts + sample[:100]
            d = json.loads(t.to_str())
            header = {"name": name, "base": base}
            header.update({k: d[k] for k in parts})
            f.write(json.dumps({"variant": header}, ensure_ascii=False) + "\n")
            for text in texts_v:
                ids = t.encode(text, add_special_tokens=False).ids
                line = {"text": text, "ids": ids}
                dec_text = t.decode(ids, skip_special_tokens=False)
                if dec_text != text:
                    line["decoded"] = dec_text
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
    print(f"wrote {vpath}: {len(variants)} variants, {os.path.getsize(vpath)} bytes")

    # How the other Llama references differ (reported, not written).
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_path)
    d = compare("sentencepiece", texts, l_ids, lambda t: sp.encode(t))
    specials = ("<s>", "</s>", "<unk>")
    print(f"    of these, {sum(1 for t, _, _ in d if not any(s in t for s in specials))} texts hold no <s>, </s>, <unk>")
    import tempfile
    from transformers import LlamaTokenizerFast
    with tempfile.TemporaryDirectory() as tmp:
        os.symlink(model_path, os.path.join(tmp, "tokenizer.model"))
        v5 = LlamaTokenizerFast.from_pretrained(tmp, legacy=True)
        compare("transformers LlamaTokenizerFast.from_pretrained(tokenizer.model)", texts, l_ids,
                lambda t: v5.encode(t, add_special_tokens=False))


if __name__ == "__main__":
    main()
