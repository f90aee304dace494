#!/usr/bin/env bash
# Training throughput and peak memory, emlab vs PyTorch + PEFT, in one go on this machine.
#
#   bash bench/train/bench_train.sh [MODEL.gguf]     # default: the default model (SmolLM2-135M Q4_1)
#
# Same job on both sides: SmolLM2-135M dequantized to f32, rsLoRA r32 alpha 64 on q,k,v,o,gate,up,
# down of all 30 layers, batch 8 x 128 tokens, loss on every position, AdamW, THREADS threads
# (default 2). Also measures the machine's f32 GEMM rate (PyTorch and candle) for the compute bound.
# Needs bench/.venv (bash bench/setup-python.sh). Results: JSON lines on stdout and in
# bench/train/results-<date>.jsonl; docs/benchmarks.md records them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
threads="${THREADS:-2}"
steps="${STEPS:-6}"
py="$root/bench/.venv/bin/python"
model="${1:-}"
if [ -z "$model" ]; then
    for c in "${EMLAB_MODELS:-$HOME/.cache/emlab/models}/SmolLM2-135M-Instruct.Q4_1.gguf" "$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"; do
        [ -f "$c" ] && model="$c" && break
    done
fi
[ -n "$model" ] && [ -f "$model" ] || { echo "bench_train.sh: give the SmolLM2 GGUF path (or fetch the default model first)" >&2; exit 2; }
export RAYON_NUM_THREADS="$threads" OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads"
out="$root/bench/train/results-$(date +%Y%m%d-%H%M%S).jsonl"

cargo build --release -q -p emlab-train --example bench_train
bin="$root/target/release/examples/bench_train"

{
    echo "{\"date\": \"$(date -Iseconds)\", \"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"nproc\": $(nproc), \"threads\": $threads, \"model\": \"$model\"}"
    "$py" bench/train/matmul_gflops.py 2048
    "$bin" --gemm --n 2048
    # Peak RSS from /usr/bin/time (max resident set, KB) for both sides, so they are measured alike.
    rss() { /usr/bin/time -f "%M" -o /tmp/emlab-bench-rss.$$ "$@" ; echo "{\"maxrss_mb_time\": $(( $(cat /tmp/emlab-bench-rss.$$) / 1024 ))}"; }
    echo '{"run": "emlab, default malloc"}'
    rss "$bin" "$model" --batch 8 --seq 128 --steps "$steps" --warmup 1
    echo '{"run": "emlab, glibc malloc tuned (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4G MALLOC_TOP_PAD_=1G)"}'
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824 \
        rss "$bin" "$model" --batch 8 --seq 128 --steps "$steps" --warmup 1
    echo '{"run": "pytorch + peft"}'
    rss "$py" bench/train/bench_peft.py "$model" --batch 8 --seq 128 --steps "$steps" --warmup 1
} 2> >(grep -v -E "Warning|warn\(|^\s*$" >&2) | tee "$out"
echo "results: $out" >&2
