#!/usr/bin/env python3
"""Summarise several `bench/reference.py --compare --json` runs as one Markdown table.

Shared machines drift by 10-30 % between minutes, so one side-by-side run can flatter either
side; this prints, per size and workload, the median over the runs of prism's and PyTorch's
throughput and the median, min and max of the per-run ratio prism / PyTorch.

    python bench/summarize.py run1.json run2.json run3.json
"""
import json
import statistics
import sys

# bf16 workloads and the f32 workload each is also compared with (as bench/reference.py).
F32_OF = {"infer-bf16": "infer", "ig-bf16": "ig"}


def main(paths):
    runs = [json.load(open(p)) for p in paths]
    rows = {}
    order = []
    for run in runs:
        theirs = {(r["size"], r["workload"]): r for r in run["pytorch"]["results"]}
        for r in run["prism"]["results"]:
            key = (r["size"], r["workload"])
            t = theirs.get(key)
            if t is None:
                continue
            if key not in rows:
                rows[key] = []
                order.append(key)
            p, q = r["throughput"]["median"], t["throughput"]["median"]
            f32 = theirs.get((r["size"], F32_OF[r["workload"]])) if r["workload"] in F32_OF else None
            rows[key].append((p, q, p / q, p / f32["throughput"]["median"] if f32 else None, r["unit"]))
    print(f"{len(runs)} runs; throughput medians; ratio prism / PyTorch: median (min-max)\n")
    print("| size | workload | unit | prism | PyTorch | ratio | range |")
    print("|---|---|---|---|---|---|---|")
    for key in order:
        v = rows[key]
        ratios = [x[2] for x in v]
        line = (f"| {key[0]} | {key[1]} | {v[0][4]} | {statistics.median(x[0] for x in v):,.4g} | "
                f"{statistics.median(x[1] for x in v):,.4g} | {statistics.median(ratios):.2f}× | "
                f"{min(ratios):.2f}-{max(ratios):.2f}× |")
        vs = [x[3] for x in v if x[3] is not None]
        if vs:
            line += f" vs PyTorch fp32: {statistics.median(vs):.2f}× ({min(vs):.2f}-{max(vs):.2f}) |"
        print(line)
    sg = [(r["prism"]["sgemm"]["gflops"], r["pytorch"]["sgemm"]["gflops"]) for r in runs]
    print(f"\nsgemm 2048^3 GFLOP/s per run (prism, PyTorch): "
          + ", ".join(f"{a:.0f} / {b:.0f}" for a, b in sg))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
