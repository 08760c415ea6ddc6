#!/usr/bin/env python3
"""The seqcont paper's 1536 numerals prompts as one dataset file: done[:512] + lost[:512] + names[:512] from
../shared/data/seqcont/data/numerals/, the order randDS_numerals.jsonl lines up with (its line i is prompt i with
the sequence members shuffled; it becomes the corrupted prompt). Adds the template (done, lost, names).
Run from the repository root: python3 experiments/seqcont/make_prompts.py (writes data/numerals_1536.jsonl)."""
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
