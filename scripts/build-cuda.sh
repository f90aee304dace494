#!/usr/bin/env bash
# Builds emlab with candle's CUDA backend on a machine with no system CUDA toolkit and no GPU, into
# a binary that can be carried to the GPU machine (docs/gpu.md).
#
#   scripts/build-cuda.sh [OUT_BINARY]          # default: target-cuda/emlab-cuda (stripped)
#
# Env: CUDA_TOOLKIT (default ../cuda-toolkit beside the repo; assembled once from pip wheels by
# ../shared/tools/cuda/assemble-toolkit.sh, ~20 s, 1.2 GB), CARGO_TARGET_DIR (default target-cuda/
# in the repo, kept apart from the CPU build so the two never fight over one lock), NICE (default 10).
# Time on 2 shared cores: ~18 min clean (candle-kernels' nvcc pass is most of it), ~2 min after a
# change to emlab's own crates. The binary targets sm_90a (Hopper: H100/H200) and needs at run time
# libcuda.so.1 (the driver), libcublas.so.13, libcublasLt.so.13, libcurand.so.10, libcudart.so.13:
# on the GPU machine LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
tk="${CUDA_TOOLKIT:-$(cd "$root/.." && pwd)/cuda-toolkit}"
assemble="$(cd "$root/.." && pwd)/shared/tools/cuda/assemble-toolkit.sh"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$root/target-cuda}"
out="${1:-$CARGO_TARGET_DIR/emlab-cuda}"

if [ ! -x "$tk/bin/nvcc" ] || [ ! -e "$tk/lib64/stubs/libcuda.so" ]; then
    [ -x "$assemble" ] || { echo "build-cuda.sh: no toolkit at $tk and no $assemble to make one" >&2; exit 2; }
    cargo fetch   # the libcuda link stub is generated from cudarc's sources
    "$assemble" "$tk"
fi
# The exports the toolkit script documents: sm_90 (built as sm_90a), CUDA 13.0 bindings.
export CUDA_HOME="$tk" CUDA_PATH="$tk" PATH="$tk/bin:$PATH"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}" CUDARC_CUDA_VERSION=13000 CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-2}"
nice -n "${NICE:-10}" cargo build --release -p emlab --features cuda
mkdir -p "$(dirname "$out")"
cp "$CARGO_TARGET_DIR/release/emlab" "$out"
strip "$out"
# The SAE benchmark (emlab-sae's device trainer), for bench/gpu/run.sh. Its feature set differs
# from the binary's, so the first build compiles candle once more (~15 min), later ones are quick.
if [ "${WITH_SAE_BENCH:-1}" = 1 ]; then
    nice -n "${NICE:-10}" cargo build --release -p emlab-sae --features cuda --example bench_sae
    cp "$CARGO_TARGET_DIR/release/examples/bench_sae" "$(dirname "$out")/bench_sae-cuda"
    strip "$(dirname "$out")/bench_sae-cuda"
fi
echo "build-cuda.sh: $out ($(du -m "$out" | cut -f1) MiB stripped); needs at run time:" >&2
ldd "$out" | grep "not found" | awk '{print "  " $1}' >&2 || true
