"""Synthetic corpus for the embedded demo model, and the held-out prompts eval.py scores it on.

Documents are one line each, without the leading <|endoftext|>: train.py prepends it (BOS) when it
tokenizes, the same way TransformerLens prepends BOS at inference.

What is held out, so that eval.py measures generalisation and not recall:
  * bare sequences ("3 4 5 6"): no training document starts at a start in HELDOUT_STARTS
    (e.g. "3 ...", "March ...", "C ...").  The items themselves still occur after other starts.
    The flagship prompts ("1 2 3 4", "January February March", "A B C") are deliberately NOT
    held out: the demo must get them right, so they are trained on like any other start.
  * seqcont-style sentences ("Van done in 1. Hat done in 2. ..."): the verbs "done", "lost" and
    "born" never appear in that template during training (they do appear in other sentences), so
    every prompt of /work/shared/data/seqcont is unseen.
  * IOI: the templates in IOI_HELDOUT never occur in training, and the exact canonical sentence
    "When Mary and John went to the store, John gave a drink to Mary" is filtered out.

Usage: make_corpus.py --out DIR [--docs N] [--seed S]   (writes DIR/train.txt)
"""
import argparse
import os
import random
import re

NUMBERS = [str(i) for i in range(0, 101)]
NUMWORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
            "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
            "eighteen", "nineteen", "twenty"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
UPPER = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
LOWER = [chr(c) for c in range(ord("a"), ord("z") + 1)]
ROMAN = ["I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII", "XIV",
         "XV", "XVI", "XVII", "XVIII", "XIX", "XX"]

# name -> (items, cyclic)
SEQS = {
    "numbers": (NUMBERS, False),
    "numwords": (NUMWORDS, False),
    "months": (MONTHS, True),
    "days": (DAYS, True),
    "upper": (UPPER, False),
    "lower": (LOWER, False),
    "roman": (ROMAN, False),
}
# Bare sequences never start here in training; eval.py starts its bare prompts here.
HELDOUT_STARTS = {
    "numbers": {i for i in range(101) if i % 10 == 3},   # 3, 13, 23, ... 93
    "numwords": {3, 9},                                   # three, nine
    "months": {2, 8},                                     # March, September
    "days": {2, 5},                                       # Wednesday, Saturday
    "upper": {2, 10, 17},                                 # C, K, R
    "lower": {2, 12, 21},                                 # c, m, v
    "roman": {2, 7},                                      # III, VIII
}

# Subjects of the seqcont-style sentences (the seqcont filler words plus a few more).
NOUNS = ["Ant", "Apple", "Arm", "Ax", "Ball", "Bird", "Book", "Box", "Bug", "Camera", "Car", "Cat",
         "Chair", "Clock", "Corn", "Cow", "Desk", "Dog", "Ear", "Eye", "Fan", "Fire", "Fish", "Flag",
         "Gate", "Glass", "Gold", "Hand", "Hat", "Hill", "House", "Ice", "Iron", "Jam", "Jar", "Key",
         "King", "Lake", "Light", "Map", "Moon", "Mouse", "Night", "Nut", "Ocean", "Oil", "Orange",
         "Pear", "Pen", "Queen", "Rain", "Rat", "Ring", "Road", "Rose", "Sand", "Snake", "Snow",
         "Star", "Sun", "Table", "Train", "Tree", "Van", "Wall", "Wallet", "Watch", "Wheel", "Wind",
         "Window", "Wolf", "Year", "Zip", "Boat", "Cake", "Door", "Duck", "Egg", "Frog", "Grape",
         "Horse", "Jeep", "Kite", "Lamp", "Leaf", "Lion", "Milk", "Nest", "Owl", "Pig", "Piano",
         "Shoe", "Spoon", "Tent", "Tiger", "Vase", "Whale", "Yard", "Zebra", "Drum", "Fork", "Cup",
         "Bell", "Coat", "Sock", "Rope", "Bread", "Coin", "Stone", "Shell", "Bowl", "Bag", "Bed"]
NAMES = ["Aaron", "Adam", "Alan", "Albert", "Alex", "Allen", "Andre", "Ann", "Anna", "Anne",
         "Anthony", "Arthur", "Bill", "Brandon", "Bruce", "Carl", "Charles", "Chelsea", "Chris",
         "Christian", "Christopher", "Connor", "Craig", "Danny", "David", "Donald", "Edward",
         "Elizabeth", "Eric", "Gary", "Gene", "George", "Gordon", "Greg", "Henry", "Howard",
         "Hunter", "Ian", "Jack", "Jacob", "James", "Jamie", "Jay", "Jeff", "Jennifer", "Jeremy",
         "Jessica", "Jim", "Jimmy", "Jo", "John", "Jon", "Jose", "Joseph", "Joshua", "Justin",
         "Keith", "Kelly", "Kevin", "Kim", "Kyle", "Larry", "Laura", "Lee", "Lisa", "Luke",
         "Madison", "Marc", "Marcus", "Maria", "Mark", "Mary", "Matthew", "Michael", "Mike",
         "Morgan", "Paul", "Peter", "Rachel", "Richard", "Rick", "Robert", "Roger", "Roy", "Ryan",
         "Scott", "Sean", "Stephen", "Steve", "Steven", "Taylor", "Terry", "Thomas", "Tom", "Tyler",
         "Victoria", "William", "Sarah", "Emma", "Kate", "Sam", "Ben", "Dan", "Max", "Amy"]
# Verbs of the training template "W <verb> in S."; "done", "lost", "born" are held out.
NOUN_VERBS = ["made", "seen", "found", "sold", "built", "bought", "kept", "left", "moved", "fixed",
              "painted", "washed", "cleaned", "opened", "closed", "used", "hidden", "shown", "given",
              "taken", "held", "packed", "sent", "won", "broken", "placed", "stored", "marked",
              "named", "listed", "noted", "saved", "printed", "filed", "signed", "checked", "lit",
              "dropped", "found", "tested"]
NAME_VERBS = ["arrived", "married", "hired", "retired", "promoted", "moved", "left", "joined",
              "graduated", "travelled", "started", "finished", "returned", "visited", "called",
              "trained", "elected", "settled", "landed", "paid"]
HELDOUT_VERBS = ["done", "lost", "born"]
PREPS = ["in"] * 8 + ["on", "at"]

PLACES = ["store", "park", "school", "garden", "office", "station", "hospital", "restaurant",
          "house", "beach", "library", "market", "cafe", "museum", "bank", "farm", "zoo", "church"]
OBJECTS = ["drink", "book", "ring", "bone", "kiss", "snack", "ball", "necklace", "computer",
           "apple", "flower", "letter", "gift", "basket", "key", "hat", "cake", "pen"]

# IOI templates ({A} {B}: the two names in first-mention order; {S} the repeated subject,
# {IO} the indirect object = the answer).  The prompt is everything before the final {IO}.
IOI_TRAIN = [
    "When {A} and {B} went to the {P}, {S} gave a {O} to {IO}",
    "Then, {A} and {B} went to the {P}. {S} gave a {O} to {IO}",
    "Then, {A} and {B} had a lot of fun at the {P}. {S} gave a {O} to {IO}",
    "Then, {A} and {B} were working at the {P}. {S} decided to give a {O} to {IO}",
    "Then, {A} and {B} had a long argument, and afterwards {S} said to {IO}",
    "After {A} and {B} went to the {P}, {S} gave a {O} to {IO}",
    "When {A} and {B} got a {O} at the {P}, {S} decided to give it to {IO}",
    "While {A} and {B} were working at the {P}, {S} gave a {O} to {IO}",
    "After the lunch, {A} and {B} went to the {P}. {S} gave a {O} to {IO}",
    "Afterwards, {A} and {B} went to the {P}. {S} gave a {O} to {IO}",
    "The {P} {A} and {B} went to had a {O}. {S} gave it to {IO}",
    "Friends {A} and {B} found a {O} at the {P}. {S} gave it to {IO}",
    "When {A} and {B} arrived at the {P}, {S} handed a {O} to {IO}",
    "After {A} and {B} left the {P}, {S} sent a {O} to {IO}",
]
IOI_HELDOUT = [
    "While {A} and {B} were commuting to the {P}, {S} gave a {O} to {IO}",
    "Then, {A} and {B} were thinking about going to the {P}. {S} wanted to give a {O} to {IO}",
    "When {A} and {B} got a {O} at the {P}, {S} decided to give the {O} to {IO}",
    "Yesterday {A} and {B} walked to the {P}, and {S} passed a {O} to {IO}",
]
CANONICAL_IOI = "When Mary and John went to the store, John gave a drink to Mary"

# Plain sentences: give the held-out verbs (and the rest of the vocabulary) trained embeddings
# outside the seqcont template.
MISC = [
    "{N} lost the {o} at the {p}.", "The {o} was lost.", "{N} was born in a small town.",
    "The work on the {o} is done.", "{N} has done the work.", "{N} and {M} went to the {p}.",
    "The {o} is on the table.", "{N} likes the {p}.", "{N} read a book about the {p}.",
    "It was a cold day at the {p}.", "{N} was born near the {p}.", "{N} had lost a {o}.",
    "Everything was done by {N}.", "{N} gave {M} a {o}.", "The {p} was closed, so {N} went home.",
]

# Everyday words for the plain sentences, so the vocabulary is not only list items.
ADJECTIVES = ["big", "small", "red", "blue", "green", "old", "new", "warm", "cold", "happy", "sad",
              "quiet", "loud", "bright", "dark", "soft", "hard", "fast", "slow", "tall", "short",
              "long", "round", "heavy", "light", "clean", "dirty", "sweet", "empty", "full", "young",
              "strange", "simple", "busy", "lazy", "brave", "kind", "wild", "calm", "rich", "poor",
              "yellow", "white", "black", "brown", "pink", "golden", "tiny", "huge", "wooden"]
THINGS = ["cat", "dog", "bird", "fish", "horse", "cow", "table", "chair", "window", "door", "car",
          "bus", "train", "boat", "river", "mountain", "forest", "city", "village", "road", "bridge",
          "tower", "garden", "flower", "tree", "stone", "box", "bag", "bottle", "glass", "cup",
          "plate", "spoon", "knife", "shirt", "coat", "shoe", "hat", "song", "story", "picture",
          "letter", "phone", "clock", "lamp", "bed", "room", "kitchen", "window", "teacher",
          "doctor", "child", "friend", "farmer", "king", "queen", "soldier", "student", "baby",
          "mother", "father", "sister", "brother", "neighbor", "captain", "singer", "driver"]
PAST_VERBS = ["saw", "found", "took", "made", "liked", "wanted", "needed", "carried", "opened",
              "closed", "painted", "watched", "heard", "moved", "pushed", "pulled", "cleaned",
              "bought", "sold", "brought", "dropped", "kept", "left", "helped", "called", "followed",
              "visited", "built", "broke", "fixed", "lifted", "touched", "washed", "drew", "loved",
              "missed", "chose", "hid", "showed", "threw"]
ADVERBS = ["slowly", "quickly", "quietly", "happily", "again", "today", "yesterday", "later",
           "early", "carefully", "suddenly", "often", "never", "always", "once", "together"]
PLAIN = [
    "The {a} {t} {v} the {a2} {t2}.", "A {a} {t} {v} a {t2} {d}.", "The {t} was very {a}.",
    "{N} {v} the {a} {t} {d}.", "My {t} is {a} and {a2}.", "The {t} and the {t2} were {a}.",
    "{N} said that the {t} was {a}.", "Every {t} {v} a {t2}.", "There is a {a} {t} near the {t2}.",
    "{N} {v} a {t} and {M} {v2} a {t2}.", "The {a} {t} sat by the {t2}.",
    "{X} was written on the {t}.", "{X} is on the list.", "{X} was the answer.",
    "{X} came first, then nothing.", "{N} wrote {X} on the {t}.",
]


def plain_doc(rng):
    """One to three everyday sentences; {X} is a lone list item (any, held-out starts included)."""
    parts = []
    for _ in range(rng.randint(1, 3)):
        n, m = rng.sample(NAMES, 2)
        items, _ = SEQS[pick_seq_name(rng)]
        a, a2 = rng.sample(ADJECTIVES, 2)
        t, t2 = rng.sample(THINGS, 2)
        v, v2 = rng.sample(PAST_VERBS, 2)
        parts.append(rng.choice(PLAIN).format(a=a, a2=a2, t=t, t2=t2, v=v, v2=v2, N=n, M=m,
                                              d=rng.choice(ADVERBS), X=rng.choice(items)))
    return " ".join(parts)


def sequence(rng, name, start, n, step=1):
    """n items of SEQS[name] from index start (stepping by step), or None if it runs off the end."""
    items, cyclic = SEQS[name]
    out = []
    for k in range(n):
        i = start + k * step
        if cyclic:
            i %= len(items)
        elif i < 0 or i >= len(items):
            return None
        out.append(items[i])
    return out


def pick_seq_name(rng):
    return rng.choices(list(SEQS), weights=[30, 14, 14, 12, 10, 10, 10])[0]


def bare_doc(rng):
    """A bare list such as "7 8 9 10 11" (mostly counting up; some down, some shuffled)."""
    name = pick_seq_name(rng)
    items, _ = SEQS[name]
    sep = " " if rng.random() < 0.8 else ", "
    r = rng.random()
    if r < 0.06:  # shuffled: teaches that a list need not continue (like seqcont's randDS)
        first = rng.choice([i for i in range(len(items)) if i not in HELDOUT_STARTS[name]])
        rest = [rng.choice(items) for _ in range(rng.randint(2, 8))]
        return sep.join([items[first]] + rest)
    step = -1 if r < 0.14 else 1
    while True:
        n = rng.randint(3, 12)
        start = rng.randrange(len(items))
        if start in HELDOUT_STARTS[name]:
            continue
        s = sequence(rng, name, start, n, step)
        if s is not None:
            return sep.join(s)


def template_doc(rng, verbs=None):
    """ "Van made in 1. Hat made in 2. ..." with 3 to 6 sentences, the last one completed."""
    name = pick_seq_name(rng)
    items, _ = SEQS[name]
    if rng.random() < 0.7:
        subjects, verb = NOUNS, rng.choice(verbs or NOUN_VERBS)
    else:
        subjects, verb = NAMES, rng.choice(verbs or NAME_VERBS)
    prep = rng.choice(PREPS)
    n = rng.randint(3, 6)
    if rng.random() < 0.08:
        s = [rng.choice(items) for _ in range(n)]
    else:
        while True:
            s = sequence(rng, name, rng.randrange(len(items)), n)
            if s is not None:
                break
    return " ".join(f"{rng.choice(subjects)} {verb} {prep} {x}." for x in s)


def ioi_fill(rng, template, a=None, b=None):
    """Fills an IOI template; returns (prompt, answer, wrong)."""
    if a is None:
        a, b = rng.sample(NAMES, 2)
    # ABBA: the indirect object is named first; BABA: the subject is named first.
    io, s = (a, b) if rng.random() < 0.5 else (b, a)
    o = rng.choice(OBJECTS)
    text = template.format(A=a, B=b, S=s, IO=io, P=rng.choice(PLACES), O=o)
    prompt = text[: text.rfind(" ")]
    return prompt, " " + io, " " + s


def ioi_doc(rng):
    while True:
        prompt, answer, _ = ioi_fill(rng, rng.choice(IOI_TRAIN))
        doc = prompt + answer
        if doc != CANONICAL_IOI:
            return doc + rng.choice([".", ".", "", " at the end."])


def misc_doc(rng):
    k = rng.randint(1, 3)
    parts = []
    for _ in range(k):
        n, m = rng.sample(NAMES, 2)
        parts.append(rng.choice(MISC).format(N=n, M=m, o=rng.choice(OBJECTS), p=rng.choice(PLACES)))
    return " ".join(parts)


def make_doc(rng):
    r = rng.random()
    if r < 0.30:
        return bare_doc(rng)
    if r < 0.60:
        return template_doc(rng)
    if r < 0.90:
        return ioi_doc(rng)
    if r < 0.94:
        return misc_doc(rng)
    return plain_doc(rng)


def make_docs(n, seed):
    rng = random.Random(seed)
    return [make_doc(rng) for _ in range(n)]


# ---------- held-out evaluation prompts (used by eval.py) ----------

def heldout_bare(name, max_shown=6, sep=" "):
    """Every bare ascending prompt that starts at a held-out start: (prompt, answer, wrong).
    With sep ", " the prompt ends in a comma ("1, 2, 3," -> " 4")."""
    items, cyclic = SEQS[name]
    out = []
    for start in sorted(HELDOUT_STARTS[name]):
        for n in range(3, max_shown + 1):
            s = sequence(None, name, start, n + 1)
            if s is None:
                continue
            tail = "," if sep == ", " else ""
            out.append((sep.join(s[:-1]) + tail, " " + s[-1], " " + s[-2]))
    return out


def heldout_template(rng, name, count):
    """seqcont-style prompts with held-out verbs, 4 shown items, as in the paper's prompts."""
    items, _ = SEQS[name]
    out = []
    while len(out) < count:
        verb = rng.choice(HELDOUT_VERBS)
        subjects = NAMES if verb == "born" else NOUNS
        s = sequence(None, name, rng.randrange(len(items)), 5)
        if s is None:
            continue
        words = [rng.choice(subjects) for _ in range(5)]
        text = " ".join(f"{w} {verb} in {x}." for w, x in zip(words, s[:4]))
        out.append((text + f" {words[4]} {verb} in", " " + s[4], " " + s[3]))
    return out


def heldout_ioi(rng, count):
    out = []
    for k in range(count):
        out.append(ioi_fill(rng, IOI_HELDOUT[k % len(IOI_HELDOUT)]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="directory for train.txt")
    ap.add_argument("--docs", type=int, default=400000)
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    docs = make_docs(args.docs, args.seed)
    # Guard the held-out split: no training document may begin with a held-out bare prompt or
    # contain a held-out template/IOI prompt.
    bare = [p for name in SEQS for p, _, _ in heldout_bare(name)]
    bare_set = set(bare)
    starts = tuple(p + " " for p in bare)
    rng = random.Random(7)
    inner = [p for name in SEQS for p, _, _ in heldout_template(rng, name, 20)]
    inner += [p for p, _, _ in heldout_ioi(rng, 40)] + [CANONICAL_IOI]
    heldout_template_re = re.compile(r"\b(done|lost|born) (in|on|at) [^ .]+\.")
    for d in docs:
        flat = d.replace(", ", " ")
        assert not (flat in bare_set or flat.startswith(starts)), d
        assert not heldout_template_re.search(d), d
        for p in inner:
            assert p not in d, (p, d)
    path = os.path.join(args.out, "train.txt")
    with open(path, "w") as f:
        for d in docs:
            f.write(d + "\n")
    print(f"wrote {len(docs)} documents to {path}")
    for d in docs[:12]:
        print("  ", d)


if __name__ == "__main__":
    main()
