#!/usr/bin/env python3
"""Compare the training-loss curves of two sets of runs (e.g. bf16 against f32, one run per
seed): the moving mean of the loss over a window of updates, per run, then

  same-seed gap   max over updates of |curve(B, seed s) - curve(A, seed s)|, per seed
  seed spread     max over updates of |curve(A, seed s) - curve(A, seed t)|, per pair s < t

A mixed-precision run trains the same model when its same-seed gap stays inside the seed
spread of the reference runs. Reads each run's metrics.jsonl (training rows carry "loss" and
no "split"). Standard library only.

    python3 scripts/compare_curves.py --a runs/precision/f32 --b runs/precision/bf16 \
        --seeds 1,2,3 [--window 30]
"""
import argparse
import itertools
import json
import os
import sys


def losses(run):
    path = os.path.join(run, "metrics.jsonl")
    by_step = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON: {e}")
            if "split" in r or "loss" not in r:
                continue
            by_step[int(r["step"])] = float(r["loss"])
    if not by_step:
        sys.exit(f"{path}: no training rows (with a loss)")
    return [by_step[s] for s in sorted(by_step)]


def curve(xs, w):
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= w:
            acc -= xs[i - w]
        out.append(acc / min(i + 1, w))
    return out[w - 1:]


def gap(a, b):
    n = min(len(a), len(b))
    return max(abs(x - y) for x, y in zip(a[:n], b[:n]))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="reference sweep folder (holding seed-N/)")
    ap.add_argument("--b", required=True, help="compared sweep folder")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--window", type=int, default=30)
    args = ap.parse_args()
    seeds = args.seeds.split(",")
    ca = {s: curve(losses(os.path.join(args.a, f"seed-{s}")), args.window) for s in seeds}
    cb = {s: curve(losses(os.path.join(args.b, f"seed-{s}")), args.window) for s in seeds}
    print(f"moving mean of the training loss over {args.window} updates")
    for s in seeds:
        print(f"same-seed gap, seed {s}: {gap(ca[s], cb[s]):.4f}   final: A {ca[s][-1]:.4f}, B {cb[s][-1]:.4f}")
    for s, t in itertools.combinations(seeds, 2):
        print(f"seed spread of A, seeds {s}/{t}: {gap(ca[s], ca[t]):.4f}")
    for s, t in itertools.combinations(seeds, 2):
        print(f"seed spread of B, seeds {s}/{t}: {gap(cb[s], cb[t]):.4f}")


if __name__ == "__main__":
    main()
