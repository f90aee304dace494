#!/usr/bin/env bash
# The GPU benchmark of issue #9, in ONE device call: emlab built with `--features cuda` against
# PyTorch + PEFT / HF generate (static cache) / a PyTorch TopK SAE, on the SmolLM2-135M and
# Qwen2.5-0.5B shapes, same machine, same run. Results: JSON lines in $OUT/results.jsonl, the
# per-step logs in $OUT/logs.tar.gz (a device call brings back at most 8 files).
#
#   bash bench/gpu/prepare.sh                 # here: builds + packs bench/out/gpu-carry/ (~17 MiB)
#   run(command="BUDGET=330 bash bench/gpu/run.sh", carry=["bench/out/gpu-carry"], timeout_s=380)
#   bash bench/gpu/run.sh --dry-run           # here, CPU, tiny shapes: checks this script's logic
#
# Steps run in priority order (correctness, then generation, SAE, training) and each is skipped
# when less than its estimate is left of BUDGET seconds, so the call ends inside its limit with
# whatever it could measure. PLAN (default: all) picks steps: parity gen sae torchgen train ckpt
# profile; also genab (generation with and without CUDA graphs and with the composed decode
# attention) and trainab (training pairs alternated), not in the default plan.
#
# Models: the GGUF files cannot travel (93 MB and 470 MB against a 64 MiB carry), so each shape is
# built on the GPU machine with random weights from the real config + tokenizer (carried, small).
# Throughput depends on shapes, not weights; every sequence decodes the full token budget on both
# sides (random models rarely emit EOS; the emlab side counts the tokens it actually produced).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
dry=0
[ "${1:-}" = "--dry-run" ] && dry=1
carry="$root/bench/out/gpu-carry"
dest="${OUT:-$root/bench/out/gpu-dry}"
mkdir -p "$dest"
res="$dest/results.jsonl"
: > "$res"
out="$(mktemp -d /tmp/emlab-gpu-logs.XXXXXX)"
work="$(mktemp -d /tmp/emlab-gpu.XXXXXX)"
trap 'tar -czf "$dest/logs.tar.gz" -C "$out" . 2>/dev/null; rm -rf "$work"' EXIT
t_start=$(date +%s)
BUDGET="${BUDGET:-540}"
PLAN=" ${PLAN:-parity gen sae torchgen train ckpt profile} "

if [ $dry = 1 ]; then
    py="${PY:-$root/bench/.venv/bin/python}"
    bin="${EMLAB_BIN:-$root/target/release/emlab}"
    sbin="${SAE_BIN:-$root/target/release/examples/bench_sae}"
    export EMLAB_DEVICE=cpu RAYON_NUM_THREADS=2 OMP_NUM_THREADS=2
    tiny=--tiny; mdtype=f32; sdev=cpu
    TRAIN_B=2 TRAIN_T=32 TRAIN_STEPS=3 GEN_B=4 GEN_NEW=8 SAE_M=1024 SAE_B=512 SAE_STEPS=3
else
    py=python3
    bin="$work/emlab"
    sbin="$work/bench_sae"
    # The binaries travel xz-compressed (78 MiB stripped -> ~15 MiB); python's lzma needs no xz binary.
    for pair in "emlab.xz:$bin" "bench_sae.xz:$sbin"; do
        python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" "$carry/${pair%%:*}" "${pair#*:}"
        chmod +x "${pair#*:}"
    done
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
    export EMLAB_DEVICE=cuda EMLAB_DTYPE=bf16
    tiny=; mdtype=bf16; sdev=cuda
    TRAIN_B=16 TRAIN_T=256 TRAIN_STEPS=12 GEN_B=64 GEN_NEW=128 SAE_M=16384 SAE_B=4096 SAE_STEPS=20
fi
[ -x "$bin" ] || { echo "run.sh: no emlab binary at $bin" >&2; exit 2; }
tar -xJf "$carry/tokenizers.tar.xz" -C "$work" || { echo "run.sh: $carry/tokenizers.tar.xz missing (bench/gpu/prepare.sh)" >&2; exit 2; }

now_ms() { date +%s%3N; }
left() { echo $(( BUDGET - ($(date +%s) - t_start) )); }
want() { case "$PLAN" in *" $1 "*) return 0;; *) return 1;; esac; }
emit() { echo "$1" | tee -a "$res"; }
# Runs a step if at least $2 seconds of the budget are left; its stdout JSON lines go to results,
# its log to $out/<name>.log; failures are recorded and the script goes on (one broken step must
# not cost the other measurements). Each step is bounded by what is left of the budget.
step() {
    local name="$1" need="$2"; shift 2
    local l; l=$(left)
    if [ "$l" -lt "$need" ]; then emit "{\"step\": \"$name\", \"skipped\": \"${l}s left, needs ~${need}s\"}"; return 1; fi
    local t0; t0=$(now_ms)
    if timeout "$l" "$@" > "$out/$name.out" 2> "$out/$name.log"; then
        grep -h '^{' "$out/$name.out" | sed "s/^{/{\"step\": \"$name\", /" | tee -a "$res"
    else
        emit "{\"step\": \"$name\", \"error\": \"exit $?\", \"log\": \"$name.log\"}"
        tail -5 "$out/$name.log" >&2
    fi
    echo "  [$name: $(( $(now_ms) - t0 )) ms, total $(( $(date +%s) - t_start )) s]" >&2
}

gpu="$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -1)"
emit "{\"date\": \"$(date -Iseconds)\", \"dry_run\": $dry, \"gpu\": \"${gpu:-none}\", \"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"nproc\": $(nproc), \"emlab\": \"$("$bin" --version)\", \"torch\": \"$("$py" -c 'import torch; print(torch.__version__)')\", \"plan\": \"$PLAN\"}"

# Chat JSONL whose rows all tokenize to about $3 words, for `emlab train`.
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
# metrics.jsonl -> one JSON line: tokens/s of the steps after the first two (warm-up).
train_rate() {
    "$py" - "$1" "$2" <<'PY' | tee -a "$res"
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
except OSError:
    rows = []
rows = [r for r in rows if "tokens_per_s" in r]
timed = rows[2:] or rows
tok = sum(r["tokens"] for r in timed); sec = sum(r["tokens"] / r["tokens_per_s"] for r in timed if r["tokens_per_s"] > 0)
prof = [r["profile_s"] for r in timed if "profile_s" in r]
prof = {k: sum(p[k] for p in prof) / len(prof) for k in prof[0]} if prof else None
print(json.dumps({"step": sys.argv[2], "impl": "emlab", "task": "train", "timed_steps": len(timed),
                  "tokens_per_s": tok / sec if sec else None, "losses": [r["loss"] for r in rows],
                  "grad_norm": [r.get("grad_norm") for r in rows], "profile_s_per_step": prof}))
PY
}
emlab_train() { # shape, name, extra args...
    local shape="$1" name="$2"; shift 2
    step "$name" 25 "$bin" train --model "$work/model-$shape" --data "$work/train-$shape.jsonl" --out "$work/run-$name" \
        --batch-size $TRAIN_B --grad-accum 1 --max-steps $TRAIN_STEPS --max-seq-len $(( TRAIN_T * 2 )) --truncate \
        --rank 32 --alpha 64 --lora-dropout 0 --eval-fraction 0 --checkpoint-every 1000000 --quiet "$@" \
        && train_rate "$work/run-$name/metrics.jsonl" "$name"
}

# --- Models (random weights, real shapes), both at once.
for shape in smollm2 qwen; do
    "$py" bench/gpu/torch_bench.py make --tok "$work/tok-$shape" --out "$work/model-$shape" $tiny --dtype $mdtype \
        > "$out/make-$shape.out" 2> "$out/make-$shape.log" &
done
wait
cat "$out"/make-*.out | tee -a "$res"
for shape in smollm2 qwen; do
    make_data "$work/train-$shape.jsonl" $(( TRAIN_B * (TRAIN_STEPS + 2) )) $(( TRAIN_T * 9 / 10 ))
done
printf 'checkpoint_activations = false\n' > "$work/no-ckpt.toml"

# --- Correctness first. Training: 3 steps on the CPU (f32, the path tested against HF) and on the
# GPU (f32 with the fused kernels and the in-place CUDA AdamW, f32 composed, bf16 fused): step-1
# loss (LoRA B = 0: the base forward), gradient norms (backward) and the losses after one and two
# updates (B, then A moved: the optimizer) must agree (f32 ~1e-5 relative), checkpointed and not.
# Generation: greedy tokens, CPU f32 vs GPU f32 (batched device cache vs CPU kernels), 4 x 12.
if want parity; then
    make_data "$work/parity.jsonl" 8 40
    # d:dtype:ckpt|plain:fused|composed (EMLAB_CUDA_FUSED: the fused CUDA training kernels or
    # candle's composed ops; the CPU runs its own kernels either way).
    for pd in cpu:f32:ckpt:fused cuda:f32:ckpt:fused cuda:f32:plain:fused cuda:f32:plain:composed cuda:bf16:plain:fused; do
        IFS=: read -r d t c f <<< "$pd"
        [ $dry = 1 ] && [ "$d" = cuda ] && continue
        extra=(); [ "$c" = plain ] && extra=(--config "$work/no-ckpt.toml")
        fz=1; [ "$f" = composed ] && fz=0
        name="parity-train-$d-$t-$c-$f"
        step "$name" 20 env EMLAB_DEVICE=$d EMLAB_DTYPE=$t EMLAB_CUDA_FUSED=$fz "$bin" train --model "$work/model-smollm2" \
            --data "$work/parity.jsonl" --out "$work/$name" --batch-size 4 --grad-accum 1 --max-steps 3 \
            --rank 8 --alpha 16 --lora-dropout 0 --eval-fraction 0 --checkpoint-every 1000000 --quiet "${extra[@]}" \
            && train_rate "$work/$name/metrics.jsonl" "$name"
    done
    "$py" -c "
import random; r = random.Random(3); w = 'alpha beta gamma delta river stone light paper'.split()
print('\n'.join(' '.join(r.choice(w) for _ in range(4 + 5 * i)) for i in range(4)))" > "$work/parity-prompts.txt"
    # Greedy text: the CPU kernels vs the GPU (f32) decoding from CUDA graphs (the default), vs
    # the GPU without graphs, vs the composed decode attention; then bf16 with and without graphs
    # (the same kernels: must be identical). 4 prompts of 4-19 words, 12 new tokens, one wave.
    for v in cpu:cpu:f32:1:1 cuda:cuda:f32:1:1 cuda-eager:cuda:f32:0:1 cuda-composed:cuda:f32:0:0 \
             bf16:cuda:bf16:1:1 bf16-eager:cuda:bf16:0:1; do
        IFS=: read -r name d t g k <<< "$v"
        [ $dry = 1 ] && [ "$d" = cuda ] && continue
        step "parity-gen-$name" 15 env EMLAB_DEVICE=$d EMLAB_DTYPE=$t EMLAB_CUDA_GRAPH=$g EMLAB_DECODE_KERNEL=$k \
            "$bin" generate --model "$work/model-smollm2" --prompts "$work/parity-prompts.txt" --raw \
            --out "$work/parity-gen-$name.jsonl" --batch-size 4 --max-new-tokens 12 --temperature 0
    done
    "$py" - "$work" <<'PY' | tee -a "$res"
import json, sys
def rows(name):
    try:
        return [json.loads(l) for l in open(f"{sys.argv[1]}/parity-gen-{name}.jsonl")]
    except OSError:
        return []
for a, b in [("cpu", "cuda"), ("cpu", "cuda-eager"), ("cpu", "cuda-composed"), ("bf16", "bf16-eager")]:
    x, y = rows(a), rows(b)
    same = sum(p.get("completion") == q.get("completion") for p, q in zip(x, y))
    print(json.dumps({"step": f"parity-gen-{a}-vs-{b}", "rows": len(x), "rows_other": len(y), "identical_greedy_rows": same}))
PY
fi

# --- Batched generation: GEN_B sequences x GEN_NEW new tokens, temperature 1.
for shape in smollm2 qwen; do
    "$py" -c "
import random; r = random.Random(1); w = 'alpha beta gamma delta river stone light paper'.split()
print('\n'.join(' '.join(r.choice(w) for _ in range(24)) for _ in range($GEN_B)))" > "$work/prompts-$shape.txt"
done
# Variants (GEN_VARIANTS, default: the default build's path only; PLAN "genab": all three, in
# turn per shape): graph = decode steps replayed from CUDA graphs, eager = the same ops without
# graphs (EMLAB_CUDA_GRAPH=0), composed = the composed decode attention (EMLAB_DECODE_KERNEL=0).
GEN_VARIANTS="${GEN_VARIANTS:-graph}"
case "$PLAN" in *" genab "*) GEN_VARIANTS="graph eager composed"; PLAN="$PLAN gen " ;; esac
if want gen; then
    for shape in smollm2 qwen; do
      for variant in $GEN_VARIANTS; do
        case $variant in graph) g=1 k=1 ;; eager) g=0 k=1 ;; *) g=0 k=0 ;; esac
        name="emlab-generate-$shape$([ "$variant" = graph ] || echo "-$variant")"
        # emlab's wall time includes loading the model: time a 1-token run too and subtract it.
        [ "$(left)" -lt 30 ] && { emit "{\"step\": \"$name\", \"skipped\": \"budget\"}"; continue; }
        gen() { timeout "$(left)" env EMLAB_CUDA_GRAPH=$g EMLAB_DECODE_KERNEL=$k "$bin" generate --model "$work/model-$shape" \
            --prompts "$work/prompts-$shape.txt" --raw --out "$1" --batch-size $GEN_B --max-new-tokens "$2" --temperature 1 \
            2>> "$out/$name.log"; }
        rm -f "$work/gen1-$shape.jsonl" "$work/gen-$shape.jsonl"
        t0=$(now_ms); gen "$work/gen1-$shape.jsonl" 1; t1=$(now_ms)
        gen "$work/gen-$shape.jsonl" $GEN_NEW; rc=$?; t2=$(now_ms)
        "$py" - "$work/gen-$shape.jsonl" "$name" "$t0" "$t1" "$t2" "$rc" <<'PY' | tee -a "$res"
import json, sys
path, shape, t0, t1, t2, rc = sys.argv[1], sys.argv[2], *(float(x) / 1000 for x in sys.argv[3:6]), int(sys.argv[6])
try:
    rows = [json.loads(l) for l in open(path)]
except OSError:
    rows = []
new = sum(r["n_tokens"] for r in rows)
net = (t2 - t1) - (t1 - t0)
print(json.dumps({"step": shape, "impl": "emlab", "task": "generate", "exit": rc, "sequences": len(rows),
                  "new_tokens": new, "wall_s": t2 - t1, "load_and_first_token_s": t1 - t0,
                  "tokens_per_s": new / net if net > 0 else None,
                  "tokens_per_s_incl_load": new / (t2 - t1) if t2 > t1 else None}))
PY
      done
    done
fi

# --- HF generate with the static cache (compiled by transformers at the first call: slow start).
if want torchgen; then
    for shape in smollm2 qwen; do
        step "torch-generate-$shape" 80 "$py" bench/gpu/torch_bench.py generate --model "$work/model-$shape" --batch $GEN_B --new $GEN_NEW --cache static
    done
fi

# --- SAE training (d 576 / 896, 16k latents, k 32, batch 4096): emlab-sae's device trainer on
# the GPU (the CPU kernels in a dry run) vs the PyTorch loop of bench/sae/torch_sae.py both ways
# (dense scatter + GEMM decode, and embedding_bag): the faster of the two is the baseline.
if want sae; then
    for d in 576 896; do
        [ -x "$sbin" ] && step "emlab-sae-$d" 15 "$sbin" --device $sdev --d $d --m $SAE_M --k 32 --batch $SAE_B --steps $SAE_STEPS --warmup 2 --json
    done
    step "torch-sae" 40 "$py" bench/gpu/torch_bench.py sae --d 576,896 --variants dense,sparse --m $SAE_M --k 32 --batch $SAE_B --steps $SAE_STEPS
fi

# --- LoRA training: rsLoRA r32 alpha 64 on all 7 projections, batch TRAIN_B x ~TRAIN_T tokens.
if want train; then
    for shape in smollm2 qwen; do
        emlab_train $shape "emlab-train-$shape-plain" --config "$work/no-ckpt.toml"
        # A/B: the same run on candle's composed ops instead of the fused CUDA kernels.
        [ $shape = smollm2 ] && EMLAB_CUDA_FUSED=0 emlab_train $shape "emlab-train-$shape-plain-composed" --config "$work/no-ckpt.toml"
        step "torch-train-$shape" 35 "$py" bench/gpu/torch_bench.py train --model "$work/model-$shape" --batch $TRAIN_B --seq $TRAIN_T --steps $(( TRAIN_STEPS - 2 )) --warmup 2
    done
fi
# The same training pair measured alternately (emlab, PEFT, emlab, PEFT) per shape: PEFT's rate
# moved by up to 1.8x between calls on the same kind of machine, so a ratio is best taken from
# pairs run back to back (PLAN=trainab; not in the default plan).
if want trainab; then
    for shape in smollm2 qwen; do
        for rep in 1 2; do
            emlab_train $shape "ab$rep-emlab-train-$shape" --config "$work/no-ckpt.toml"
            # A/B: LoRA layers and attention as separate nodes instead of one each
            # (`ops::lora_linear`, `attention::causal_attention`).
            EMLAB_LINEAR_OP=0 EMLAB_ATTN_OP=0 emlab_train $shape "ab$rep-emlab-train-$shape-parts" --config "$work/no-ckpt.toml"
            step "ab$rep-torch-train-$shape" 35 "$py" bench/gpu/torch_bench.py train --model "$work/model-$shape" --batch $TRAIN_B --seq $TRAIN_T --steps $(( TRAIN_STEPS - 2 )) --warmup 2
        done
    done
fi
# Where a training step's time goes (device synchronised at each phase boundary).
if want profile; then
    for shape in smollm2 qwen; do
        EMLAB_PROFILE=1 emlab_train $shape "emlab-train-$shape-profile" --config "$work/no-ckpt.toml"
    done
fi
if want ckpt; then
    for shape in smollm2 qwen; do
        emlab_train $shape "emlab-train-$shape-ckpt"
    done
fi
emit "{\"done\": true, \"seconds\": $(( $(date +%s) - t_start ))}"
