#!/usr/bin/env python3
"""A corpus where every token is predictable from its neighbour: 200 made-up words w0..w199,
each line 8 consecutive words (w_k .. w_k+7) and a full stop, 30 lines per document; 200 train
and 10 dev documents under ./corpus. Used to check that prism's MLM and transformers' learn at
the same pace on a task where context decides the answer (see EXPERIMENTS.md)."""
import os
import random

random.seed(0)
words = ["w%d" % i for i in range(200)]
for split, n in (("train", 200), ("dev", 10)):
    os.makedirs(f"corpus/{split}", exist_ok=True)
    for i in range(n):
        lines = []
        for _ in range(30):
            s = random.randrange(0, 190)
            lines.append(" ".join(words[s:s + 8]) + " .")
        with open(f"corpus/{split}/d{i:03d}.txt", "w") as f:
            f.write("\n".join(lines) + "\n")
