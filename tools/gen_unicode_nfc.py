#!/usr/bin/env python3
# Writes src/inputs/unicode_nfc_table.c, the canonical normalization data NFC needs (src/inputs/unicode_nfc.c).
# Run: python3 tools/gen_unicode_nfc.py [--unicode 9.0] [--ucd /usr/share/unicode] [--out src/inputs/unicode_nfc_table.c]
"""The data comes from Python's `unicodedata` (combining classes, canonical decompositions; a character with a
canonical decomposition is a primary composite iff unicodedata's NFC leaves it unchanged). Hangul syllables are
not in the tables: unicode_nfc.c computes them.

--unicode picks the Unicode version of the tables. The default, 9.0, is what Hugging Face `tokenizers` (0.23.3,
the reference venv's) normalizes with: its NFC reorders and composes characters assigned up to Unicode 9.0 and
leaves later ones alone (ccc 0, no decomposition); with --check-tokenizers this script confirms it. Characters'
normalization properties never change once assigned (Unicode's stability policy), so the tables of an older
version are the newer data restricted to the characters assigned by then: DerivedAge.txt gives that (Debian's
unicode-data package, /usr/share/unicode). A version equal to unicodedata.unidata_version needs no such file.

Checks before writing (any failure stops the script, nothing written):
- a Python model of unicode_nfc.c's algorithm over the tables equals unicodedata.normalize('NFC') on every
  character of the version, on each one's NFD, and on random sequences of the characters normalization touches;
- the derived composition exclusions equal Full_Composition_Exclusion of DerivedNormalizationProps.txt, and the
  model passes every line of NormalizationTest.txt (its NFC columns) whose characters the version has, where
  those files are in --ucd;
- with --check-tokenizers, tokenizers' NFC equals the model on the random sequences and leaves every later
  character that has a combining class or a decomposition unchanged.
"""
import argparse
import bz2
import os
import random
import sys
import unicodedata

HERE = os.path.dirname(os.path.abspath(__file__))
S_BASE, L_BASE, V_BASE, T_BASE, L_COUNT, V_COUNT, T_COUNT = 0xAC00, 0x1100, 0x1161, 0x11A7, 19, 21, 28
N_COUNT = V_COUNT * T_COUNT
S_COUNT = L_COUNT * N_COUNT


def ver(s):
    return tuple(int(x) for x in s.split("."))


def ucd_lines(path):
    op = bz2.open if path.endswith(".bz2") else open
    with op(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.split("#")[0].strip()
            if line:
                yield [x.strip() for x in line.split(";")]


def cp_range(s):
    a, _, b = s.partition("..")
    return range(int(a, 16), int(b or a, 16) + 1)


def assigned_set(args):
    """Code points assigned in args.unicode, or None for unicodedata's own version (all it knows)."""
    if ver(args.unicode) == ver(unicodedata.unidata_version):
        return None
    if ver(args.unicode) > ver(unicodedata.unidata_version):
        sys.exit(f"--unicode {args.unicode} is newer than unicodedata's {unicodedata.unidata_version}")
    path = os.path.join(args.ucd, "DerivedAge.txt")
    if not os.path.exists(path):
        sys.exit(f"{path}: needed for Unicode {args.unicode} (apt-get install unicode-data)")
    keep = set()
    for f in ucd_lines(path):
        if ver(f[1]) <= ver(args.unicode):
            keep.update(cp_range(f[0]))
    return keep


def build(keep):
    ok = (lambda c: True) if keep is None else keep.__contains__
    ccc, decomp = {}, {}
    for c in range(0x110000):
        if not ok(c) or S_BASE <= c < S_BASE + S_COUNT:
            continue
        ch = chr(c)
        k = unicodedata.combining(ch)
        if k:
            ccc[c] = k
        d = unicodedata.decomposition(ch)
        if d and not d.startswith("<"):
            parts = [int(x, 16) for x in d.split()]
            assert len(parts) in (1, 2) and all(ok(p) for p in parts), hex(c)
            decomp[c] = parts
    composes = {c for c, d in decomp.items() if len(d) == 2 and unicodedata.normalize("NFC", chr(c)) == chr(c)}
    # unicode_nfc.c sizes its buffer by the longest full decomposition (Hangul: 3).
    assert max(len(unicodedata.normalize("NFD", chr(c))) for c in decomp) <= 4
    return ccc, decomp, composes


class Model:
    """unicode_nfc.c's algorithm in Python, over the tables only."""

    def __init__(self, ccc, decomp, composes):
        self.ccc, self.decomp = ccc, decomp
        self.pairs = {tuple(decomp[c]): c for c in composes}

    def decompose(self, c, out):
        if S_BASE <= c < S_BASE + S_COUNT:
            i = c - S_BASE
            out += [L_BASE + i // N_COUNT, V_BASE + i % N_COUNT // T_COUNT] + ([T_BASE + i % T_COUNT] if i % T_COUNT else [])
        elif c in self.decomp:
            for p in self.decomp[c]:
                self.decompose(p, out)
        else:
            out.append(c)

    def compose(self, a, b):
        if L_BASE <= a < L_BASE + L_COUNT and V_BASE <= b < V_BASE + V_COUNT:
            return S_BASE + ((a - L_BASE) * V_COUNT + b - V_BASE) * T_COUNT
        if S_BASE <= a < S_BASE + S_COUNT and (a - S_BASE) % T_COUNT == 0 and T_BASE < b < T_BASE + T_COUNT:
            return a + b - T_BASE
        return self.pairs.get((a, b))

    def nfc(self, s):
        d = []
        for ch in s:
            self.decompose(ord(ch), d)
        i = 0
        while i < len(d):  # canonical ordering: stable sort of each run of non-starters
            j = i
            while j < len(d) and self.ccc.get(d[j], 0):
                j += 1
            d[i:j] = sorted(d[i:j], key=lambda c: self.ccc[c])
            i = j + 1
        out, starter, last = [], -1, 0
        for c in d:
            k = self.ccc.get(c, 0)
            if starter >= 0 and (last < k or (last == 0 and starter == len(out) - 1)):
                comp = self.compose(out[starter], c)
                if comp is not None:
                    out[starter] = comp
                    continue
            if k == 0:
                starter = len(out)
            last = k
            out.append(c)
        return "".join(map(chr, out))


def touched(keep, ccc, decomp):
    ok = (lambda c: True) if keep is None else keep.__contains__
    pool = set(ccc) | set(decomp) | {p for d in decomp.values() for p in d}
    pool |= set(range(L_BASE, L_BASE + L_COUNT)) | set(range(V_BASE, V_BASE + V_COUNT)) | set(range(T_BASE, T_BASE + T_COUNT))
    pool |= {S_BASE, S_BASE + 1, S_BASE + 28, S_BASE + S_COUNT - 1, 0x41, 0x61, 0x20}
    return sorted(c for c in pool if ok(c) or S_BASE <= c < S_BASE + S_COUNT)


def check(args, keep, model, ccc, decomp, composes):
    ok = (lambda c: True) if keep is None else keep.__contains__
    n = 0
    for c in range(0x110000):
        if (0xD800 <= c < 0xE000) or not (ok(c) or S_BASE <= c < S_BASE + S_COUNT):
            continue
        for s in (chr(c), unicodedata.normalize("NFD", chr(c))):
            if model.nfc(s) != unicodedata.normalize("NFC", s):
                sys.exit(f"model != unicodedata on {[hex(ord(x)) for x in s]}")
            n += 1
    pool = touched(keep, ccc, decomp)
    rng = random.Random(9)
    rand = ["".join(chr(rng.choice(pool)) for _ in range(rng.randint(1, 8))) for _ in range(100000)]
    for s in rand:
        if model.nfc(s) != unicodedata.normalize("NFC", s):
            sys.exit(f"model != unicodedata on {[hex(ord(x)) for x in s]}")
    print(f"model = unicodedata.normalize('NFC') on {n} characters and NFDs and {len(rand)} random sequences")

    props = os.path.join(args.ucd, "DerivedNormalizationProps.txt")
    if os.path.exists(props):
        fce = {c for f in ucd_lines(props) if f[1] == "Full_Composition_Exclusion" for c in cp_range(f[0]) if ok(c)}
        mine = {c for c in decomp if c not in composes}
        if fce != mine:
            sys.exit(f"composition exclusions differ from {props}: {sorted(map(hex, fce ^ mine))[:10]}")
        print(f"{len(mine)} composition exclusions = Full_Composition_Exclusion of {props}")
    for name in ("NormalizationTest.txt", "NormalizationTest.txt.bz2"):
        path = os.path.join(args.ucd, name)
        if not os.path.exists(path):
            continue
        used = skipped = 0
        for f in ucd_lines(path):
            if f[0].startswith("@"):
                continue
            cols = ["".join(chr(int(x, 16)) for x in col.split()) for col in f[:5]]
            if not all(ok(ord(x)) or S_BASE <= ord(x) < S_BASE + S_COUNT for col in cols for x in col):
                skipped += 1
                continue
            want = [cols[1], cols[1], cols[1], cols[3], cols[3]]
            if [model.nfc(x) for x in cols] != want:
                sys.exit(f"{path}: fails on {f[:5]}")
            used += 1
        print(f"{path}: the NFC columns of {used} lines pass ({skipped} lines with later characters skipped)")
        break
    if args.check_tokenizers:
        from tokenizers import normalizers
        import tokenizers
        hf = normalizers.NFC().normalize_str
        for s in rand:
            if hf(s) != model.nfc(s):
                sys.exit(f"tokenizers {tokenizers.__version__} != model on {[hex(ord(x)) for x in s]}")
        later = [c for c in range(0x110000) if not ok(c) and not (0xD800 <= c < 0xE000) and
                 (unicodedata.combining(chr(c)) or unicodedata.decomposition(chr(c)))]
        for c in later:
            for s in (chr(c), "a" + chr(c) + "\u0334", unicodedata.normalize("NFD", chr(c))):
                if hf(s) != s:
                    sys.exit(f"tokenizers changes U+{c:04X}, which Unicode {args.unicode} does not have")
        print(f"tokenizers {tokenizers.__version__}: = model on the random sequences; leaves all {len(later)} later "
              "characters with a class or decomposition alone")


def hex_rows(items, per_line, indent="    "):
    lines, cur = [], []
    for it in items:
        cur.append(it)
        if len(cur) == per_line:
            lines.append(indent + " ".join(cur))
            cur = []
    if cur:
        lines.append(indent + " ".join(cur))
    return "\n".join(lines)


def write(args, ccc, decomp, composes):
    runs = []
    for c in sorted(ccc):
        if runs and runs[-1][1] == c - 1 and runs[-1][2] == ccc[c]:
            runs[-1][1] = c
        else:
            runs.append([c, c, ccc[c]])
    dec = sorted(decomp)
    index = {c: i for i, c in enumerate(dec)}
    comp = sorted((decomp[c] for c in composes), key=tuple)
    comp_idx = [index[c] for c in sorted(composes, key=lambda c: tuple(decomp[c]))]
    assert len(dec) < 65536
    src = f"""// Unicode {args.unicode} canonical normalization data for NFC (src/inputs/unicode_nfc.c): combining classes,
// canonical decompositions, primary composites. GENERATED by tools/gen_unicode_nfc.py --unicode {args.unicode} from
// Python {sys.version.split()[0]}'s unicodedata (Unicode {unicodedata.unidata_version}) restricted to the characters of Unicode {args.unicode},
// the version Hugging Face tokenizers' NFC uses; do not edit. This file is long data by design.
#include "unicode_nfc.h"

// Runs of consecutive code points with one non-zero canonical combining class: {{first, last, class}}.
const ps_nfc_ccc_run ps_nfc_ccc[] = {{
{hex_rows([f"{{0x{a:X},0x{b:X},{k}}}," for a, b, k in runs], 5)}
}};
const size_t ps_nfc_n_ccc = {len(runs)};

// Canonical decomposition mappings, sorted by code point: {{code point, first, second (0: a singleton)}}.
// Hangul syllables are computed, not listed.
const ps_nfc_decomp ps_nfc_decomps[] = {{
{hex_rows([f"{{0x{c:X},0x{decomp[c][0]:X},0x{decomp[c][1] if len(decomp[c]) > 1 else 0:X}}}," for c in dec], 5)}
}};
const size_t ps_nfc_n_decomps = {len(dec)};

// The primary composites (two-character decompositions not excluded from composition), as indices into
// ps_nfc_decomps sorted by (first, second).
const uint16_t ps_nfc_comp[] = {{
{hex_rows([f"{i}," for i in comp_idx], 20)}
}};
const size_t ps_nfc_n_comp = {len(comp_idx)};
"""
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(src)
    print(f"wrote {args.out}: {len(runs)} class runs ({len(ccc)} characters), {len(dec)} decompositions, "
          f"{len(comp)} primary composites, {src.count(chr(10))} lines")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--unicode", default="9.0")
    ap.add_argument("--ucd", default="/usr/share/unicode")
    ap.add_argument("--out", default=os.path.join(HERE, "..", "src", "inputs", "unicode_nfc_table.c"))
    ap.add_argument("--check-tokenizers", action="store_true")
    args = ap.parse_args()
    keep = assigned_set(args)
    ccc, decomp, composes = build(keep)
    model = Model(ccc, decomp, composes)
    check(args, keep, model, ccc, decomp, composes)
    write(args, ccc, decomp, composes)


if __name__ == "__main__":
    main()
