#!/usr/bin/env bash
# The GPU benchmark of issue #9, in ONE device call (<= 10 min): emlab built with `--features cuda`
# against PyTorch + PEFT / HF generate (static cache) / a PyTorch TopK SAE, on the SmolLM2-135M and
# Qwen2.5-0.5B shapes, same machine, same run. Results: JSON lines in $OUT/results.jsonl, logs beside.
#
#   bash bench/gpu/prepare.sh                 # here: builds + packs bench/out/gpu-carry/ (~30 MiB)
#   run(command="bash bench/gpu/run.sh", carry=["bench/out/gpu-carry"], timeout_s=600)   # device call
#   bash bench/gpu/run.sh --dry-run           # here, CPU, tiny shapes: checks this script's logic
#
# Models: the GGUF files cannot travel (93 MB and 470 MB against a 64 MiB carry), so each shape is
# built on the GPU machine with random weights from the real config + tokenizer (carried, small).
# Throughput depends on shapes, not weights; every sequence decodes the full token budget on both
# sides (random models rarely emit EOS; the emlab side counts the tokens it actually produced).
# `emlab run --preset paper` needs the real Qwen2.5-Coder-0.5B GGUF: it runs only if
# bench/out/gpu-carry/qwen-coder.gguf is present on the machine (docs/gpu.md: carrying it in parts).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
carry="$root/bench/out/gpu-carry"
out="${OUT:-$root/bench/out/gpu-dry}"
mkdir -p "$out"
res="$out/results.jsonl"
: > "$res"
work="$(mktemp -d /tmp/emlab-gpu.XXXXXX)"
t_start=$(date +%s)

if [ $dry = 1 ]; then
    py="${PY:-$root/bench/.venv/bin/python}"
    bin="${EMLAB_BIN:-$root/target/release/emlab}"
    export EMLAB_DEVICE=cpu RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2
    tiny=--tiny; mdtype=f32
    TRAIN_B=2 TRAIN_T=32 TRAIN_STEPS=3 GEN_B=4 GEN_NEW=8 SAE_M=1024 SAE_B=512 SAE_STEPS=3
else
    py=python3
    bin="$work/emlab"
    # The binary travels xz-compressed (78 MiB stripped -> ~15 MiB); python's lzma needs no xz binary.
    python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$carry/emlab.xz" "$bin"
    chmod +x "$bin"
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
    export EMLAB_DEVICE=cuda EMLAB_DTYPE=bf16
    tiny=; mdtype=bf16
    TRAIN_B=16 TRAIN_T=256 TRAIN_STEPS=12 GEN_B=64 GEN_NEW=128 SAE_M=16384 SAE_B=4096 SAE_STEPS=20
fi
[ -x "$bin" ] || { echo "run.sh: no emlab binary at $bin" >&2; exit 2; }
tar -xJf "$carry/tokenizers.tar.xz" -C "$work" || { echo "run.sh: $carry/tokenizers.tar.xz missing (bench/gpu/prepare.sh)" >&2; exit 2; }

emit() { echo "$1" | tee -a "$res"; }
# Runs a step; its stdout JSON lines go to results, its log to $out/<name>.log; failures are
# recorded and the script goes on (one broken step must not cost the other measurements).
step() {
    local name="$1"; shift
    local t0=$(date +%s.%N)
    if "$@" > "$out/$name.out" 2> "$out/$name.log"; then
        grep -h '^{' "$out/$name.out" | sed "s/^{/{\"step\": \"$name\", /" | tee -a "$res"
    else
        emit "{\"step\": \"$name\", \"error\": \"exit $?\", \"log\": \"$name.log\"}"
        tail -5 "$out/$name.log" >&2
    fi
    echo "  [$name: $(echo "$(date +%s.%N) - $t0" | bc) s, total $(( $(date +%s) - t_start )) s]" >&2
}

gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
emit "{\"date\": \"$(date -Iseconds)\", \"dry_run\": $dry, \"gpu\": \"${gpu:-none}\", \"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"nproc\": $(nproc), \"emlab\": \"$("$bin" --version)\", \"torch\": \"$("$py" -c 'import torch; print(torch.__version__)')\"}"

# Chat JSONL whose rows all tokenize to about $TRAIN_T tokens (fixed word count), for `emlab train`.
make_data() {
    "$py" - "$1" "$2" "$3" <<'PY'
import json, random, sys
path, rows, words = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
vocab = "alpha beta gamma delta river stone light paper garden window number market sound field".split()
r = random.Random(0)
with open(path, "w") as f:
    for i in range(rows):
        a = " ".join(r.choice(vocab) for _ in range(words))
        f.write(json.dumps({"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": a}]}) + "\n")
PY
}

for shape in smollm2 qwen; do
    m="$work/model-$shape"
    step "make-$shape" "$py" bench/gpu/torch_bench.py make --tok "$work/tok-$shape" --out "$m" $tiny --dtype $mdtype

    # --- LoRA training: rsLoRA r32 alpha 64 on all 7 projections, batch TRAIN_B x ~TRAIN_T tokens.
    make_data "$work/train-$shape.jsonl" $(( TRAIN_B * (TRAIN_STEPS + 2) )) $(( TRAIN_T * 9 / 10 ))
    step "emlab-train-$shape" "$bin" train --model "$m" --data "$work/train-$shape.jsonl" --out "$work/run-train-$shape" \
        --batch-size $TRAIN_B --grad-accum 1 --max-steps $TRAIN_STEPS --max-seq-len $(( TRAIN_T * 2 )) --truncate \
        --rank 32 --alpha 64 --lora-dropout 0 --eval-fraction 0 --checkpoint-every 1000000 --quiet
    # tokens/s of the steps after the first two (warm-up), from the trainer's own metrics.
    "$py" - "$work/run-train-$shape/metrics.jsonl" "$shape" <<'PY' | tee -a "$res"
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
except OSError:
    rows = []
rows = [r for r in rows if "tokens_per_s" in r]
timed = rows[2:] or rows
tok = sum(r["tokens"] for r in timed); sec = sum(r["tokens"] / r["tokens_per_s"] for r in timed if r["tokens_per_s"] > 0)
print(json.dumps({"step": f"emlab-train-{sys.argv[2]}", "impl": "emlab", "task": "train", "timed_steps": len(timed),
                  "tokens_per_s": tok / sec if sec else None, "losses": [r["loss"] for r in rows]}))
PY
    step "torch-train-$shape" "$py" bench/gpu/torch_bench.py train --model "$m" --batch $TRAIN_B --seq $TRAIN_T --steps $(( TRAIN_STEPS - 2 )) --warmup 2

    # --- Batched generation: GEN_B sequences x GEN_NEW new tokens, temperature 1.
    "$py" -c "
import random; r = random.Random(1); w = 'alpha beta gamma delta river stone light paper'.split()
print('\n'.join(' '.join(r.choice(w) for _ in range(24)) for _ in range($GEN_B)))" > "$work/prompts-$shape.txt"
    gen() { "$bin" generate --model "$m" --prompts "$work/prompts-$shape.txt" --raw --out "$1" --batch-size $GEN_B --max-new-tokens "$2" --temperature 1; }
    # emlab's wall time includes loading the model: time a 1-token run too and subtract it.
    t0=$(date +%s.%N); gen "$work/gen1-$shape.jsonl" 1 2>> "$out/emlab-gen-$shape.log"; t1=$(date +%s.%N)
    gen "$work/gen-$shape.jsonl" $GEN_NEW 2>> "$out/emlab-gen-$shape.log"; rc=$?; t2=$(date +%s.%N)
    "$py" - "$work/gen-$shape.jsonl" "$shape" "$t0" "$t1" "$t2" "$rc" <<'PY' | tee -a "$res"
import json, sys
path, shape, t0, t1, t2, rc = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:6]), int(sys.argv[6])
try:
    rows = [json.loads(l) for l in open(path)]
except OSError:
    rows = []
new = sum(r["n_tokens"] for r in rows)
net = (t2 - t1) - (t1 - t0)
print(json.dumps({"step": f"emlab-generate-{shape}", "impl": "emlab", "task": "generate", "exit": rc, "sequences": len(rows),
                  "new_tokens": new, "wall_s": t2 - t1, "load_and_first_token_s": t1 - t0,
                  "tokens_per_s": new / net if net > 0 else None,
                  "tokens_per_s_incl_load": new / (t2 - t1) if t2 > t1 else None}))
PY
    step "torch-generate-$shape" "$py" bench/gpu/torch_bench.py generate --model "$m" --batch $GEN_B --new $GEN_NEW --cache static
done

# --- SAE training (d 576 / 896, 16k latents, k 32): emlab's SAE trainer is CPU code (emlab-sae),
# so its side runs on the host cores; the PyTorch loop runs on the GPU.
for d in 576 896; do
    if [ -x "$carry/bench_sae" ] || [ $dry = 1 ]; then
        sbin="$carry/bench_sae"; [ $dry = 1 ] && sbin="${SAE_BIN:-$root/target/release/examples/bench_sae}"
        [ -x "$sbin" ] && step "emlab-sae-$d" env RAYON_NUM_THREADS=$(nproc) "$sbin" --d $d --m $SAE_M --k 32 --batch $SAE_B --steps $SAE_STEPS --warmup 1 --json
    fi
    step "torch-sae-$d" "$py" bench/gpu/torch_bench.py sae --d $d --m $SAE_M --k 32 --batch $SAE_B --steps $SAE_STEPS
done

# --- The whole loop at the paper preset on the real Qwen2.5-Coder-0.5B, if it was carried.
if [ -f "$carry/qwen-coder.gguf" ] && [ $dry = 0 ]; then
    left=$(( 560 - ($(date +%s) - t_start) ))
    if [ $left -gt 60 ]; then
        step "emlab-run-paper" timeout $left "$bin" run --preset paper -m "$carry/qwen-coder.gguf" --out "$work/run-paper" --json
    else
        emit "{\"step\": \"emlab-run-paper\", \"skipped\": \"only ${left}s left\"}"
    fi
else
    emit "{\"step\": \"emlab-run-paper\", \"skipped\": \"no real model carried (docs/gpu.md)\"}"
fi
emit "{\"done\": true, \"seconds\": $(( $(date +%s) - t_start ))}"
rm -rf "$work"
