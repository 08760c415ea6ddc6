#!/usr/bin/env python3
"""Writes experiments/ioi/prompts.jsonl: IOI prompts on the demo model's four held-out templates
(tools/demo_model/make_corpus.py's IOI_HELDOUT), each with its ABC corruption (the three name slots filled with
three other names, ARENA's "ABC" dataset), the indirect object as the answer and the subject as the wrong one.

Usage: python3 experiments/ioi/make_prompts.py [-n 32] [--seed 0] [-o experiments/ioi/prompts.jsonl]
"""
import argparse
import json
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools", "demo_model"))
import make_corpus as mc  # noqa: E402


def item(rng, template):
    a, b, c, d, e = rng.sample(mc.NAMES, 5)
    io, s = (a, b) if rng.random() < 0.5 else (b, a)     # ABBA or BABA
    place, obj = rng.choice(mc.PLACES), rng.choice(mc.OBJECTS)
    fill = lambda A, B, S: template.format(A=A, B=B, S=S, IO="", P=place, O=obj).rstrip()
    return {"clean": fill(a, b, s), "corrupted": fill(c, d, e), "answer": " " + io, "wrong": " " + s}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("-o", "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "prompts.jsonl"))
    a = ap.parse_args()
    rng = random.Random(a.seed)
    with open(a.out, "w") as f:
        for k in range(a.n):
            f.write(json.dumps(item(rng, mc.IOI_HELDOUT[k % len(mc.IOI_HELDOUT)])) + "\n")


if __name__ == "__main__":
    main()
