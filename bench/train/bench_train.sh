#!/usr/bin/env bash
# Training throughput and peak memory, emlab vs PyTorch + PEFT, in one go on this machine.
#
#   bash bench/train/bench_train.sh [MODEL.gguf]     # default: the default model (SmolLM2-135M Q4_1)
#
# Same job on both sides: SmolLM2-135M dequantized to f32, rsLoRA r32 alpha 64 on q,k,v,o,gate,up,
# down of all 30 layers, batch 8 x 128 tokens, loss on every position, AdamW, THREADS threads
# (default 2), STEPS timed steps after 1 warm-up step (default 3). Also measures the machine's f32
# GEMM rate (PyTorch and candle) for the compute bound, and the load average around every run
# (the machine is shared: compare only runs taken under similar load).
# Runs, in this order: emlab with activation checkpointing (the default) and PyTorch + PEFT back
# to back, then emlab checkpointed with tuned glibc malloc, then emlab without checkpointing
# (the plain autograd path), then PEFT again. Peak RSS from /usr/bin/time (%M) for every run.
# Needs bench/.venv (bash bench/setup-python.sh). Results: JSON lines on stdout and in
# bench/train/results-<date>.jsonl; docs/benchmarks.md records them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
threads="${THREADS:-2}"
steps="${STEPS:-3}"
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
# Other crates have an example of the same name that lands on the same path: take a private
# copy at once and check it is ours (its --gemm mode prints "impl": "candle").
bin="$(mktemp /tmp/emlab-bench-train.XXXXXX)"
trap 'rm -f "$bin" /tmp/emlab-bench-rss.$$' EXIT
cp "$root/target/release/examples/bench_train" "$bin" && chmod +x "$bin"
"$bin" --gemm --n 64 | grep -q '"impl":"candle"' || { echo "bench_train.sh: target/release/examples/bench_train is not emlab-train's (rebuilt by another crate?); rerun" >&2; exit 1; }

load() { echo "{\"load\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"at\": \"$(date -u +%H:%M:%SZ)\", \"what\": \"$1\"}"; }
# Peak RSS from /usr/bin/time (max resident set, KB) for both sides, so they are measured alike.
rss() { /usr/bin/time -f "%M" -o /tmp/emlab-bench-rss.$$ "$@" ; echo "{\"maxrss_mb_time\": $(( $(cat /tmp/emlab-bench-rss.$$) / 1024 ))}"; }
emlab() { rss "$bin" "$model" --batch 8 --seq 128 --steps "$steps" --warmup 1 "$@"; }
peft() { rss "$py" bench/train/bench_peft.py "$model" --batch 8 --seq 128 --steps "$steps" --warmup 1; }
tuned=(env MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4294967296 MALLOC_TOP_PAD_=1073741824)

{
    echo "{\"date\": \"$(date -Iseconds)\", \"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"nproc\": $(nproc), \"threads\": $threads, \"steps\": $steps, \"model\": \"$model\"}"
    load "gemm before"
    "$py" bench/train/matmul_gflops.py 2048
    "$bin" --gemm --n 2048
    load "emlab, checkpointed, default malloc"
    emlab
    load "pytorch + peft"
    peft
    load "emlab, checkpointed, tuned malloc (MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=4G MALLOC_TOP_PAD_=1G)"
    rss "${tuned[@]}" "$bin" "$model" --batch 8 --seq 128 --steps "$steps" --warmup 1
    load "emlab, no checkpointing (--no-checkpoint), tuned malloc"
    rss "${tuned[@]}" "$bin" "$model" --batch 8 --seq 128 --steps "$steps" --warmup 1 --no-checkpoint
    load "pytorch + peft (again)"
    peft
    load "gemm after"
    "$py" bench/train/matmul_gflops.py 2048
    "$bin" --gemm --n 2048
    load "end"
} 2> >(grep -v -E "Warning|warn\(|^\s*$|it/s\]|Converting|Loading weights" >&2) | tee "$out"
echo "results: $out" >&2
