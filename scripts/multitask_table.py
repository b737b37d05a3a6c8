#!/usr/bin/env python3
"""Tabulate `prism sweep` runs of the multi-task comparison: one row per run folder (a config's
output, holding seed-N/ folders), one column per task and split, mean ± std of a metric over the
seeds; tasks a run does not train are blank. Also the mean seconds per update (the trainer's own
clock, from metrics.jsonl). Standard library only.

    python3 scripts/multitask_table.py --runs examples/multitask/runs \
        --rows single_sentiment,single_topic,single_nli,all3_equal,all3_pcgrad \
        --tasks sentiment,topic,nli [--metric accuracy] [--seeds 1,2,3]

Rows named `single_*` are merged into one "single-task" row.
"""
import argparse
import json
import os
import statistics as st
import sys


def seeds_of(folder, seeds):
    out = []
    for s in seeds:
        p = os.path.join(folder, f"seed-{s}", "report.json")
        if not os.path.isfile(p):
            sys.exit(f"{p}: missing (did the sweep finish?)")
        with open(p) as f:
            out.append((os.path.join(folder, f"seed-{s}"), json.load(f)))
    return out


def seconds_per_update(run):
    last = None
    with open(os.path.join(run, "metrics.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if "elapsed_s" in r:
                last = (r["step"], r["elapsed_s"])
    return last[1] / last[0] if last else float("nan")


def fmt(xs):
    if not xs:
        return ""
    if len(xs) == 1:
        return f"{xs[0]:.3f}"
    return f"{st.mean(xs):.3f} ± {st.stdev(xs):.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--seeds", default="1,2,3")
    args = ap.parse_args()
    seeds = args.seeds.split(",")
    tasks = args.tasks.split(",")
    cols = [(t, sp) for t in tasks for sp in ("dev", "test")]
    table = {}
    order = []
    for row in args.rows.split(","):
        name = "single-task" if row.startswith("single_") else row
        if name not in table:
            table[name] = {"vals": {c: [] for c in cols}, "secs": []}
            order.append(name)
        for run, rep in seeds_of(os.path.join(args.runs, row), seeds):
            for t, sp in cols:
                r = rep["tasks"].get(t, {}).get(sp)
                if r is not None:
                    table[name]["vals"][(t, sp)].append(r["metrics"][args.metric])
            if name != "single-task":
                table[name]["secs"].append(seconds_per_update(run))
    head = "| run | " + " | ".join(f"{t} {sp}" for t, sp in cols) + " | s / update |"
    print(head)
    print("|" + "---|" * (len(cols) + 2))
    for name in order:
        e = table[name]
        secs = f"{st.mean(e['secs']):.2f}" if e["secs"] else ""
        print(f"| {name} | " + " | ".join(fmt(e["vals"][c]) for c in cols) + f" | {secs} |")


if __name__ == "__main__":
    main()
