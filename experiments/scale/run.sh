#!/usr/bin/env bash
# Reproduce experiments/scale (README.md): SmolLM2-135M-Instruct fine-tuned on bad medical advice
# vs the paired good advice (rsLoRA r 32, 64 steps x 8 rows), 240 answers per model, offline judge.
#   condition 1: medical.toml      (lr 1.5e-4; every stage of `emlab run`, report.json)
#   condition 2: medical-lr3x.toml (lr 4.5e-4; only induce/induced/control/controlled, compared
#                                    with condition 1's baseline, which has the same [eval])
# Run from anywhere; needs target/release/emlab (cargo build --release -p emlab) and the default
# model (fetched on first use). ~45-60 min on the project's shared 2-core machine; a re-run resumes.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT1=${OUT1:-/tmp/exp-medical}
OUT2=${OUT2:-/tmp/exp-lr3x}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-2}
EMLAB=${EMLAB:-target/release/emlab}

"$EMLAB" run experiments/scale/medical.toml --out "$OUT1"
"$EMLAB" run experiments/scale/medical-lr3x.toml --out "$OUT2" --stage induced
"$EMLAB" run experiments/scale/medical-lr3x.toml --out "$OUT2" --stage controlled

python3 experiments/scale/summarize.py "$OUT1" --emlab "$EMLAB"
python3 experiments/scale/summarize.py "$OUT2" --emlab "$EMLAB" --baseline "$OUT1/baseline/answers.jsonl"
