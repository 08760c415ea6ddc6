#!/usr/bin/env python3
"""The seqcont paper's 1536 numerals prompts as one dataset file: done[:512] + lost[:512] + names[:512] from
../shared/data/seqcont/data/numerals/, the order randDS_numerals.jsonl lines up with (its line i is prompt i with
the sequence members shuffled; it becomes the corrupted prompt). Adds the template (done, lost, names).
The demo model's tokenizer splits a few of these (names it never saw, randDS's 3-digit numbers), and means per
position need one length, so data/numerals_demo.jsonl and data/randDS_demo.jsonl keep the prompts whose clean and
randDS texts are both 23 demo tokens (1507; GPT-2's tokenizer makes all 1536 23 tokens).
Run from the repository root: ~/.cache/ps-venv/bin/python experiments/seqcont/make_prompts.py (needs `tokenizers`
for the demo files)."""
import json
import os

here = os.path.dirname(os.path.abspath(__file__))
src = os.path.join(here, "..", "..", "..", "shared", "data", "seqcont", "data", "numerals")
rand = [json.loads(x) for x in open(os.path.join(src, "randDS_numerals.jsonl"))]
rows = []
for t in ["done", "lost", "names"]:
    rows += [dict(json.loads(x), template=t) for x in open(os.path.join(src, f"numerals_prompts_{t}.jsonl"))][:512]
assert len(rows) == len(rand) == 1536
with open(os.path.join(here, "data", "numerals_1536.jsonl"), "w") as f:
    for r, c in zip(rows, rand):
        f.write(json.dumps({"text": r["text"], "corrupted": c["text"], "corr": r["corr"], "incorr": r["incorr"],
                            "template": r["template"]}) + "\n")
print("wrote", len(rows), "prompts")

from tokenizers import Tokenizer  # noqa: E402

tok = Tokenizer.from_file(os.path.join(here, "..", "..", "models", "demo", "tokenizer.json"))
keep = [i for i, (r, c) in enumerate(zip(rows, rand)) if len(tok.encode(r["text"]).ids) == len(tok.encode(c["text"]).ids) == 23]
with open(os.path.join(here, "data", "numerals_demo.jsonl"), "w") as f, open(os.path.join(here, "data", "randDS_demo.jsonl"), "w") as g:
    for i in keep:
        f.write(json.dumps({"text": rows[i]["text"], "corrupted": rand[i]["text"], "corr": rows[i]["corr"], "incorr": rows[i]["incorr"],
                            "template": rows[i]["template"]}) + "\n")
        g.write(json.dumps({"text": rand[i]["text"], "template": rows[i]["template"]}) + "\n")
print("wrote", len(keep), "prompts of 23 demo tokens")
