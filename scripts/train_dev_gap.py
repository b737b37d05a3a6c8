#!/usr/bin/env python3
"""The train/dev gap over training, from `prism sweep` runs made with `eval_train_examples`
(each evaluation logs the task's metrics on dev and on a fixed subset of its training examples).
One row per run folder and task: the gap (train − dev) at each evaluated step, mean ± std over
the seeds, then the last evaluation's train and dev values. Standard library only.

    python3 scripts/train_dev_gap.py --runs examples/multitask/runs \
        --rows gap_single_sentiment,gap_single_topic,gap_single_nli,gap_all3_equal \
        --tasks sentiment,topic,nli [--metric accuracy] [--seeds 1,2,3]
"""
import argparse
import json
import os
import statistics as st
import sys


def evaluations(path, metric):
    """{(task, split): {step: value}} from one run's metrics.jsonl."""
    out = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                r = json.loads(line)
            except json.JSONDecodeError as e:
                sys.exit(f"{path}:{n}: not JSON ({e})")
            if r.get("split") in ("train", "dev") and "metrics" in r:
                v = r["metrics"].get(metric)
                if v is not None:
                    out.setdefault((r["task"], r["split"]), {})[r["step"]] = v
    return out


def fmt(xs, signed=False):
    if not xs:
        return ""
    f = "+.3f" if signed else ".3f"
    if len(xs) == 1:
        return format(xs[0], f)
    return f"{format(st.mean(xs), f)} ± {st.stdev(xs):.3f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--rows", required=True)
    ap.add_argument("--tasks", required=True)
    ap.add_argument("--metric", default="accuracy")
    ap.add_argument("--seeds", default="1,2,3")
    args = ap.parse_args()
    seeds = args.seeds.split(",")
    rows = []
    all_steps = set()
    for name in args.rows.split(","):
        runs = []
        for s in seeds:
            p = os.path.join(args.runs, name, f"seed-{s}", "metrics.jsonl")
            if not os.path.isfile(p):
                sys.exit(f"{p}: missing (did the sweep finish?)")
            runs.append((p, evaluations(p, args.metric)))
        for task in args.tasks.split(","):
            if not all((task, "train") in ev and (task, "dev") in ev for _, ev in runs):
                if any((task, "train") in ev for _, ev in runs):
                    sys.exit(f"{name}: task {task} has train evaluations in some seeds only")
                continue
            gaps, last_train, last_dev = {}, [], []
            for p, ev in runs:
                tr, dv = ev[(task, "train")], ev[(task, "dev")]
                steps = sorted(set(tr) & set(dv))
                if not steps:
                    sys.exit(f"{p}: {task}: no step with both a train and a dev evaluation")
                for step in steps:
                    gaps.setdefault(step, []).append(tr[step] - dv[step])
                last_train.append(tr[steps[-1]])
                last_dev.append(dv[steps[-1]])
            all_steps |= set(gaps)
            rows.append((name, task, gaps, last_train, last_dev))
    steps = sorted(all_steps)
    print(f"train − dev {args.metric}, mean ± std over seeds {args.seeds}\n")
    print("| run | task | " + " | ".join(f"gap @ {s}" for s in steps) + " | train (last) | dev (last) |")
    print("|---|---|" + "---|" * len(steps) + "---|---|")
    for name, task, gaps, tr, dv in rows:
        cells = [fmt(gaps.get(s, []), signed=True) for s in steps]
        print(f"| {name} | {task} | " + " | ".join(cells) + f" | {fmt(tr)} | {fmt(dv)} |")


if __name__ == "__main__":
    main()
