#!/usr/bin/env bash
# Builds `prism` with the `cuda` feature (candle's CUDA backend) on a machine without a
# system CUDA toolkit: nvcc, the CUDA runtime headers/library and CCCL come from NVIDIA's
# PyPI wheels into a private virtual environment (.cuda-toolkit/, git-ignored).
#
#   scripts/build-cuda.sh            # -> target/cuda/release/prism
#   CUDA_COMPUTE_CAP=80 scripts/build-cuda.sh   # for an A100 instead of the default H100/H200
#
# No GPU is needed to build; running needs an NVIDIA driver (libcuda.so) on the machine.
# The binary loads the CUDA libraries at run time (cudarc's dynamic linking), so it runs
# where the driver and CUDA 13 runtime libraries are found (LD_LIBRARY_PATH).
set -euo pipefail
cd "$(dirname "$0")/.."

# CUDA 13.4 is the newest release cudarc 0.19 (candle 0.11's CUDA bindings) knows.
CUDA_VERSION=13.4.92
CCCL_VERSION=13.3.5.0.6
env_dir=.cuda-toolkit
if [ ! -x "$env_dir/bin/python" ]; then
  python3 -m venv "$env_dir"
fi
"$env_dir/bin/python" -m pip install -q \
  "nvidia-cuda-nvcc==$CUDA_VERSION" "nvidia-cuda-runtime==$CUDA_VERSION" \
  "nvidia-cuda-crt==$CUDA_VERSION" "nvidia-nvvm==$CUDA_VERSION" "nvidia-cuda-cccl==$CCCL_VERSION"
cuda_home=$("$env_dir/bin/python" -c 'import nvidia, os; print(os.path.join(nvidia.__path__[0], "cu13"))')
# The linker wants the unversioned name (candle-kernels links -lcudart).
ln -sf libcudart.so.13 "$cuda_home/lib/libcudart.so"
# cudarc looks for lib64/ under CUDA_HOME.
[ -e "$cuda_home/lib64" ] || ln -s lib "$cuda_home/lib64"

export CUDA_HOME="$cuda_home" CUDA_PATH="$cuda_home"
export PATH="$cuda_home/bin:$PATH"
export CPATH="$cuda_home/include:$cuda_home/include/cccl${CPATH:+:$CPATH}"
export LIBRARY_PATH="$cuda_home/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
cargo build --release -p prism-cli --features cuda --target-dir target/cuda "$@"
echo "built target/cuda/release/prism (compute capability $CUDA_COMPUTE_CAP, CUDA $CUDA_VERSION)"
echo "run with: LD_LIBRARY_PATH=$cuda_home/lib:\$LD_LIBRARY_PATH target/cuda/release/prism ... --device cuda"
