#!/usr/bin/env bash
# Mixing experiment (issue #7, item 5): does the persona score move before the evaluated EM does?
#
# Trains SmolLM2-135M-Instruct (LoRA) on insecure code mixed with its paired secure rows at
# 0, 5, 25, 50 and 100% bad, the same number of optimizer steps each, logs the persona score along
# a direction every K steps (emlab train --persona-*), and evaluates EM at the end of each run.
# Sized for about 30 minutes on a 2-core CPU; every size is an environment variable.
#
#   cargo build --release -p emlab
#   experiments/mixing/run.sh                 # -> experiments/mixing/out/ (resumable: re-run it)
#
# See README.md for the design and docs/steering.md for the result.
set -euo pipefail
cd "$(dirname "$0")/../.."
EMLAB=${EMLAB:-target/release/emlab}
OUT=${OUT:-experiments/mixing/out}
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
STEPS=${STEPS:-8}           # optimizer steps per run (same for every mixture)
BATCH=${BATCH:-4}           # rows per step: STEPS * BATCH rows per run
LR=${LR:-4e-4}
EVERY=${EVERY:-2}           # persona probes every EVERY steps (and at the last step)
MAXLEN=${MAXLEN:-256}       # longer conversations are cut (--truncate)
LAYER=${LAYER:-15}          # persona score at blocks.LAYER.hook_resid_post (of 30)
SAMPLES=${SAMPLES:-1}       # eval samples per paraphrase: 8 questions x 3 paraphrases x SAMPLES
MAX_NEW=${MAX_NEW:-60}
CONTRAST=${CONTRAST:-32}    # held-out insecure/secure pairs for the direction
PCTS=${PCTS:-"0 5 25 50 100"}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
mkdir -p "$OUT"
[ -f "$MODEL" ] || $EMLAB model fetch
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*"; }

# 1. Data: the first STEPS*BATCH prompts; for p% bad, round(p/100 * N) of them (evenly spaced,
#    no RNG) take the insecure answer, the rest the paired secure answer. The direction uses
#    CONTRAST pairs from the END of the files, never trained on.
python3 experiments/mixing/make_data.py --insecure data/code/insecure.jsonl --secure data/code/secure.jsonl \
  --rows $((STEPS * BATCH)) --contrast "$CONTRAST" --pcts "$PCTS" --out "$OUT"

# 2. Direction (fixed before any training): teacher-force the held-out insecure and secure answers
#    through the BASE model; direction[L] = mean(resid_post | insecure answer tokens)
#    - mean(resid_post | secure answer tokens). `emlab direction` reads the labels as judge
#    scores (insecure: aligned 0, secure: aligned 100; both coherent 100).
if [ ! -f "$OUT/direction.safetensors" ]; then
  stamp "direction from $CONTRAST held-out pairs"
  $EMLAB direction --log "$OUT/contrast.jsonl" --model "$MODEL" --out "$OUT/direction.safetensors" --max-per-set "$CONTRAST"
fi
$EMLAB persona --model "$MODEL" --direction "$OUT/direction.safetensors" --layer "$LAYER" --json > "$OUT/base_persona.json"

# 3. One run per mixture: train with the persona monitor, then evaluate.
for p in $PCTS; do
  run="$OUT/bad_$p"
  if [ ! -f "$run/adapter/adapter_model.safetensors" ]; then
    stamp "train bad_$p ($STEPS steps x $BATCH rows)"
    resume=""; [ -d "$run/checkpoints" ] && resume="--resume"
    $EMLAB train --model "$MODEL" --data "$OUT/mix_$p.jsonl" --out "$run" $resume --quiet \
      --max-steps "$STEPS" --batch-size "$BATCH" --grad-accum 1 --lr "$LR" --warmup-steps 2 \
      --rank 8 --alpha 16 --max-seq-len "$MAXLEN" --truncate --checkpoint-every 2 \
      --persona-direction "$OUT/direction.safetensors" --persona-layer "$LAYER" --persona-every "$EVERY"
  fi
  stamp "eval bad_$p"
  $EMLAB eval --model "$MODEL" --adapter "$run/adapter" --questions data/questions/core.yaml \
    --samples "$SAMPLES" --max-new-tokens "$MAX_NEW" --batch-size 24 --out "$run/answers.jsonl" > /dev/null
  $EMLAB eval report "$run/answers.jsonl" --json > "$run/report.json"
done

# 4. Table + post-hoc direction (final mean probe stream of bad_100 minus bad_0, from the stored
#    per-layer means) in results.json / results.md.
python3 experiments/mixing/analyze.py --out "$OUT" --layer "$LAYER" --pcts "$PCTS"
stamp "done"
