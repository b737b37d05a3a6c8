#!/usr/bin/env bash
# The GPU benchmark of issue 7 as one prepared run, for a session lent a GPU machine (the
# `device` tool). Build the CUDA binary on the CPU machine first (scripts/build-cuda.sh), then
# run this there, carrying the binary (33 MB; it links no CUDA library, `ldd` shows none):
#
#   command: bench/gpu-check.sh        carry: ["target/cuda/release/prism"]
#
# It writes into $OUT (default /tmp/prism-gpu): nvidia-smi's report, a smoke run, prism's CUDA
# bench (`prism --device cuda bench`, JSON) and, where torch with CUDA, transformers and captum
# are installed on that machine, the same work in PyTorch (`bench/reference.py --device cuda`).
# prism opens the driver, cuBLAS, cuRAND and NVRTC at run time (vendor/README.md): they must be
# on the library path there (a CUDA install, or pip's nvidia-* wheels, which this script adds).
# The kernels are PTX from CUDA 13.4, so the driver must support CUDA 13.4 or later.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/prism-gpu}
BIN=${PRISM_BIN:-target/cuda/release/prism}
mkdir -p "$OUT"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
py_libs=$(python3 -c 'import glob, os, site
for d in site.getsitepackages():
    print("\n".join(glob.glob(os.path.join(d, "nvidia", "*", "lib"))))' 2>/dev/null)
for d in .cuda-toolkit/lib/python3*/site-packages/nvidia/cu13/lib /usr/local/cuda/lib64 $py_libs; do
  [ -d "$d" ] && LD_LIBRARY_PATH="$(cd "$d" && pwd)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
export LD_LIBRARY_PATH
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" > "$OUT/env.txt"
set -x
"$BIN" --device cuda bench --sizes tiny --workloads infer,train --reps 1 --warmup 0 --sgemm 256 \
  > "$OUT/smoke.txt" 2>&1 || { cat "$OUT/smoke.txt"; exit 1; }
"$BIN" --device cuda bench --sizes mini,base --workloads infer,train,ig,mlm --reps 5 \
  --json "$OUT/prism-cuda.json" 2>&1 | tee "$OUT/prism-cuda.txt"
if python3 -c 'import torch, transformers, captum; assert torch.cuda.is_available()' 2>/dev/null; then
  python3 bench/reference.py --device cuda --sizes mini,base --workloads infer,train,ig,mlm --reps 5 \
    --json "$OUT/pytorch-cuda.json" 2>&1 | tee "$OUT/pytorch-cuda.txt"
else
  echo "no torch with CUDA (+ transformers, captum) on this machine: PyTorch side not run" | tee "$OUT/pytorch-cuda.txt"
fi
