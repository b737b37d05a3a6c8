#!/usr/bin/env bash
# The GPU benchmark of issue 7 as one prepared run, for a session lent a GPU machine (the
# `device` tool). Build the CUDA binary on the CPU machine first (scripts/build-cuda.sh), then
# run this there, carrying the binary (33 MB; it links no CUDA library, `ldd` shows none):
#
#   command: bench/gpu-check.sh        carry: ["target/cuda/release/prism"]
#
# Data-parallel checks (issue 26), when the binary was built with `scripts/build-cuda.sh
# --features nccl` (which also makes target/cuda/release/prism-mpi, the same program; carry it
# instead of prism, as PRISM_BIN, to stay under the 64 MiB limit): a world-size-1 NCCL smoke run
# (NCCL opens, the communicator is made from a unique id broadcast over MPI, a model's gradient
# is all-reduced in place on the GPU), and 2 MPI ranks of the CUDA binary on one GPU (gradients
# summed by MPI on the host: NCCL refuses two ranks on one GPU) pre-training to the same weights
# as one process. NCCL comes from NVIDIA's wheel (nvidia-nccl-cu13, whose lib/ the library path
# below picks up; cudarc opens the unversioned libnccl.so, linked here). Open MPI is used from
# the machine's PATH, else from Debian packages carried in .mpi/ (made here, once:
#   echo /.mpi/ >> .git/info/exclude; mkdir -p .mpi && (cd .mpi && apt-get download openmpi-bin \
#     libopenmpi3 openmpi-common libpmix2 libhwloc15 libevent-core-2.1-7 libevent-pthreads-2.1-7 \
#     libfabric1 libucx0 libpsm2-2 libpsm-infinipath1 libibverbs1 librdmacm1 libnl-3-200 \
#     libnl-route-3-200 libmunge2 libxnvctrl0 libnuma1 libltdl7)
# and carried: ["target/cuda/release/prism-mpi", ".mpi"]); without either, those checks say so.
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

# ---- data-parallel: NCCL at world size 1, and 2 MPI ranks of the CUDA binary on one GPU ----
set +x
MPI_BIN=${PRISM_MPI_BIN:-target/cuda/release/prism-mpi}
[ -x "$MPI_BIN" ] || MPI_BIN="$BIN"
if ! command -v mpirun >/dev/null 2>&1 && [ -d .mpi ]; then
  mkdir -p /tmp/prism-mpi-root
  for f in .mpi/*.deb; do dpkg -x "$f" /tmp/prism-mpi-root; done
  export OPAL_PREFIX=/tmp/prism-mpi-root/usr PATH="/tmp/prism-mpi-root/usr/bin:$PATH"
  export LD_LIBRARY_PATH="/tmp/prism-mpi-root/usr/lib/x86_64-linux-gnu:/tmp/prism-mpi-root/usr/lib/x86_64-linux-gnu/openmpi/lib:$LD_LIBRARY_PATH"
fi
nccl_so=$(for d in ${LD_LIBRARY_PATH//:/ }; do ls "$d"/libnccl.so* 2>/dev/null; done | head -1)
if [ -n "$nccl_so" ]; then
  mkdir -p /tmp/prism-nccl && ln -sf "$nccl_so" /tmp/prism-nccl/libnccl.so
  export LD_LIBRARY_PATH="/tmp/prism-nccl:$LD_LIBRARY_PATH"
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN="mpirun --oversubscribe --bind-to none --mca btl self,vader,tcp --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo"
if ! command -v mpirun >/dev/null 2>&1; then
  echo "no mpirun (and no .mpi/ carried): the data-parallel GPU checks were not run" | tee "$OUT/distributed.txt"
elif ! ldd "$MPI_BIN" | grep -q libmpi; then
  echo "$MPI_BIN is not an MPI build (scripts/build-cuda.sh --features nccl): the data-parallel GPU checks were not run" | tee "$OUT/distributed.txt"
else
  {
    echo "== NCCL, world size 1: communicator + in-place all-reduce of each model's gradient (${nccl_so:-no libnccl found})"
    $MPIRUN -np 1 "$MPI_BIN" --device cuda --collectives nccl bench --sizes mini,base --workloads allreduce --reps 5 --sgemm 256
    echo "nccl-smoke rc=$?"
    echo "== 2 MPI ranks of the CUDA binary on one GPU vs one process (MLM pre-training, same global micro-batches)"
    work=$(mktemp -d)
    for n in one two; do
      mkdir -p "$work/$n"
      printf 'output = "run"\nsteps = 8\nbatch_size = 4\ngrad_accum = 2\nlr = 2e-3\neval_every = 4\ncheckpoint_every = 4\n\n[model]\ntokenizer = "%s"\nhidden_size = 32\nnum_hidden_layers = 2\nnum_attention_heads = 2\n\n[corpus]\ntrain = ["%s"]\nmax_length = 32\n' \
        "$PWD/tests/fixtures/tiny-bert" "$PWD/tests/fixtures/data/corpus" > "$work/$n/pt.toml"
    done
    "$MPI_BIN" --device cuda pretrain --config "$work/one/pt.toml" --quiet; echo "one-process rc=$?"
    $MPIRUN -np 2 "$MPI_BIN" --device cuda --collectives mpi pretrain --config "$work/two/pt.toml" --quiet; echo "two-ranks rc=$?"
    python3 - "$work/one/run/model/model.safetensors" "$work/two/run/model/model.safetensors" <<'PY'
import json, struct, sys
def load(p):
    b = open(p, "rb").read(); n = struct.unpack("<Q", b[:8])[0]; h = json.loads(b[8:8 + n]); d = b[8 + n:]
    return {k: struct.unpack(f"<{(v['data_offsets'][1] - v['data_offsets'][0]) // 4}f", d[v["data_offsets"][0]:v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__" and v["dtype"] == "F32"}
a, b = load(sys.argv[1]), load(sys.argv[2])
diff = max(abs(x - y) for k in a for x, y in zip(a[k], b[k]))
print(f"largest weight difference, 1 process vs 2 ranks on one GPU: {diff:.3e} ({'PASS' if diff <= 1e-6 else 'FAIL'})")
PY
  } 2>&1 | tee "$OUT/distributed.txt"
fi
