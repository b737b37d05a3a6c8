#!/usr/bin/env python3
"""How far two `prism explain --json` runs over the same inputs agree, method by method: e.g.
f32 against `--bf16`, to see what reduced precision changes in the explanations.

    prism explain --model M --input data.jsonl --limit 100 --method ig --json > f32.json
    prism explain --model M --input data.jsonl --limit 100 --method ig --json --bf16 > bf16.json
    python bench/attribution_agreement.py f32.json bf16.json

Per method, over the examples: Pearson and Spearman correlation of the token scores (median and
minimum), agreement of the top-3 tokens by |score|, agreement of the sign of every score that
is at least 1 % of the example's largest |score|, the largest change of the explained output,
and the median |convergence delta| of each run (integrated gradients' completeness error).
Standard library only.
"""
import json
import statistics
import sys


def pearson(a, b):
    ma, mb = statistics.fmean(a), statistics.fmean(b)
    da = [x - ma for x in a]
    db = [y - mb for y in b]
    num = sum(x * y for x, y in zip(da, db))
    den = (sum(x * x for x in da) * sum(y * y for y in db)) ** 0.5
    return num / den if den > 0 else float("nan")


def ranks(v):
    order = sorted(range(len(v)), key=lambda i: v[i])
    r = [0.0] * len(v)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
            j += 1
        for k in range(i, j + 1):
            r[order[k]] = (i + j) / 2
        i = j + 1
    return r


def top(v, k):
    return set(sorted(range(len(v)), key=lambda i: -abs(v[i]))[:k])


def main(path_a, path_b):
    a, b = json.load(open(path_a)), json.load(open(path_b))
    if len(a["examples"]) != len(b["examples"]):
        sys.exit(f"{path_a} has {len(a['examples'])} examples, {path_b} {len(b['examples'])}")
    by_method = {}
    for i, (ea, eb) in enumerate(zip(a["examples"], b["examples"])):
        for ma, mb in zip(ea, eb):
            if ma["method"] != mb["method"] or ma["tokens"] != mb["tokens"]:
                sys.exit(f"example {i}: the runs explain different methods or tokens")
            by_method.setdefault(ma["method"], []).append((ma, mb))
    print(f"{len(a['examples'])} examples: {path_a} vs {path_b}\n")
    print("| method | Pearson median (min) | Spearman median (min) | top-3 same | sign agreement "
          "| max output change | median abs delta (a / b) |")
    print("|---|---|---|---|---|---|---|")
    for method, pairs in by_method.items():
        pr, sr, top3, signs, outs, da, db = [], [], [], [], [], [], []
        for ma, mb in pairs:
            sa, sb = ma["scores"], mb["scores"]
            pr.append(pearson(sa, sb))
            sr.append(pearson(ranks(sa), ranks(sb)))
            k = min(3, len(sa))
            top3.append(len(top(sa, k) & top(sb, k)) / k)
            big = max(abs(x) for x in sa) * 0.01
            kept = [(x, y) for x, y in zip(sa, sb) if abs(x) >= big]
            signs.append(sum((x > 0) == (y > 0) for x, y in kept) / max(1, len(kept)))
            outs.append(abs(ma["output"] - mb["output"]))
            if ma.get("delta") is not None and mb.get("delta") is not None:
                da.append(abs(ma["delta"]))
                db.append(abs(mb["delta"]))
        delta = f"{statistics.median(da):.2g} / {statistics.median(db):.2g}" if da else "-"
        print(f"| {method} | {statistics.median(pr):.4f} ({min(pr):.4f}) | "
              f"{statistics.median(sr):.4f} ({min(sr):.4f}) | {100 * statistics.fmean(top3):.1f} % | "
              f"{100 * statistics.fmean(signs):.1f} % | {max(outs):.2g} | {delta} |")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
