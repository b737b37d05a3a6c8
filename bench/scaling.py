#!/usr/bin/env python3
"""Data-parallel scaling MODEL (not a measurement) built on two measurements of this machine.

Inputs, both `prism bench --json` reports:
  --compute  F   one process: `prism bench --workloads train --sizes mini,minilm,base --json F`
                 (a fine-tuning step of `--batch` sequences: forward, backward, optimiser)
  --allreduce F  `mpirun -np 2 prism-mpi bench --workloads allreduce --sizes ... --json F`
                 (the model's whole f32 gradient summed over 2 ranks in the loop's 25 MiB
                 buckets, as one data-parallel update does)

The model of one update on N nodes (one rank per node, k micro-batches per rank):
  compute = k * (forward + backward) + optimiser           (measured, per node)
  comm    = 2 (N - 1) / N * G / B                           (ring all-reduce: each rank sends and
          + 2 (N - 1) * buckets * latency                    receives 2 (N-1)/N of the gradient
          + pack                                             bytes G over its link of B bytes/s)
  efficiency = compute / (compute + comm)
prism's loop all-reduces after the last backward of the update (no overlap of communication with
backward, unlike DDP's bucket hooks), so the model adds the two. `pack` is the measured 2-rank
all-reduce on this one machine (packing the buckets, shared-memory transport, unpacking): it
bounds the per-update work that does not shrink with a faster network. `latency` is an assumed
per-message cost (--latency-us, default 30 us for TCP on a data-centre network). The global
grad_accum is k * N; the table gives the smallest k that keeps efficiency at or above --target.

Prints a Markdown table (the README's "Scaling model"), with the measurements it used.
"""
import argparse
import json
import math
import subprocess

LINKS_GBIT = [10, 25, 100]
NODES = [2, 4, 8, 16, 32, 64]
BUCKET = 25 << 20


def rows(path, workload):
    with open(path) as f:
        rep = json.load(f)
    return rep, {r["size"]: r for r in rep["results"] if r["workload"] == workload}


def cpu():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return "unknown CPU"
    name = next((l.split(":", 1)[1].strip() for l in out.splitlines() if l.startswith("Model name")), "unknown CPU")
    flags = next((l.split(":", 1)[1].split() for l in out.splitlines() if l.startswith("Flags")), [])
    have = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(have) or 'no avx512_bf16/amx_bf16'})"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compute", required=True)
    ap.add_argument("--allreduce", required=True)
    ap.add_argument("--latency-us", type=float, default=30.0)
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--k", type=int, default=1, help="micro-batches per rank per update in the efficiency columns")
    a = ap.parse_args()
    crep, compute = rows(a.compute, "train")
    arep, allreduce = rows(a.allreduce, "allreduce")
    sizes = [s for s in compute if s in allreduce]
    if not sizes:
        raise SystemExit("no size has both a train row and an allreduce row")

    print(f"Measured on {cpu()}: a fine-tuning step of {crep['batch']} x {crep['seq']} tokens on "
          f"{crep['threads']} threads; the all-reduce on {arep['ranks']} ranks ({arep['engine']}) of one machine.\n")
    print("| size | gradient | forward + backward | optimiser | 2-rank all-reduce here (pack) |")
    print("|---|---|---|---|---|")
    meas = {}
    for s in sizes:
        c, r = compute[s], allreduce[s]
        ph = c.get("phases") or {}
        fb = ph.get("forward", 0) + ph.get("backward", 0) or c["seconds"]["median"]
        opt = ph.get("optimizer", 0.0)
        gbytes = r["throughput"]["median"] * r["seconds"]["median"] * 1e9
        pack = r["seconds"]["median"]
        meas[s] = (fb, opt, gbytes, pack)
        print(f"| {s} | {gbytes / 2**20:.1f} MiB | {fb * 1e3:.0f} ms | {opt * 1e3:.0f} ms | "
              f"{pack * 1e3:.1f} ms ({r['throughput']['median']:.2f} GB/s) |")

    def comm(s, n, gbit):
        _, _, g, pack = meas[s]
        bw = gbit * 1e9 / 8
        buckets = math.ceil(g / BUCKET)
        return 2 * (n - 1) / n * g / bw + 2 * (n - 1) * buckets * a.latency_us * 1e-6 + pack

    def eff(s, n, gbit, k):
        fb, opt, _, _ = meas[s]
        work = k * fb + opt
        return work / (work + comm(s, n, gbit))

    def k_for(s, n, gbit):
        for k in range(1, 4097):
            if eff(s, n, gbit, k) >= a.target:
                return k
        return None

    print(f"\nMODEL (not measured): scaling efficiency with {a.k} micro-batch(es) of {crep['batch']} sequences "
          f"per rank per update, and in brackets the micro-batches per rank (global grad_accum = that x nodes) "
          f"that keep it at or above {a.target:.0%}.\n")
    head = "| size | link | " + " | ".join(f"{n} nodes" for n in NODES) + " |"
    print(head)
    print("|" + "---|" * (2 + len(NODES)))
    for s in sizes:
        for gbit in LINKS_GBIT:
            cells = []
            for n in NODES:
                k = k_for(s, n, gbit)
                cells.append(f"{eff(s, n, gbit, a.k):.0%} ({k if k else '>4096'})")
            print(f"| {s} | {gbit} Gb/s | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
