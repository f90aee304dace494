#!/usr/bin/env bash
# TopK SAE training-step benchmark: emlab (Rust) vs plain PyTorch on CPU, same
# shapes, same machine, same run, 2 threads each. Runs the implementations in
# alternation (ROUNDS times) so that load from other processes hits both alike.
#
#   bench/sae/bench_sae.sh                 # d 576, 16384 latents, k 32, batch 4096
#   STEPS=3 ROUNDS=1 bench/sae/bench_sae.sh
#
# Needs bench/.venv with torch (python -m venv bench/.venv && bench/.venv/bin/pip install torch).
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${D:-576} M=${M:-16384} K=${K:-32} BATCH=${BATCH:-4096}
STEPS=${STEPS:-5} WARMUP=${WARMUP:-1} ROUNDS=${ROUNDS:-2} THREADS=${THREADS:-2}
PY=${PY:-bench/.venv/bin/python}
OUT=bench/out/sae
mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
RES="$OUT/results-$STAMP.jsonl"

"$PY" -c "import torch" || { echo "error: $PY cannot import torch" >&2; exit 1; }
cargo build --release -q -p emlab-sae --example bench_sae
BIN=target/release/examples/bench_sae

echo "# $(date -u) | $(lscpu | sed -n 's/^Model name: *//p' | head -1) | nproc $(nproc) | load $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/env-$STAMP.txt"
ARGS=(--d "$D" --m "$M" --k "$K" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --json)
for r in $(seq 1 "$ROUNDS"); do
  RAYON_NUM_THREADS=$THREADS "$BIN" "${ARGS[@]}" | tee -a "$RES"
  OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" bench/sae/torch_sae.py "${ARGS[@]}" --threads "$THREADS" --variant dense | tee -a "$RES"
  OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS "$PY" bench/sae/torch_sae.py "${ARGS[@]}" --threads "$THREADS" --variant sparse | tee -a "$RES"
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env-$STAMP.txt"

"$PY" - "$RES" <<'PYEOF'
import json, sys, collections
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = collections.defaultdict(list)
for r in rows:
    by[r["impl"]].append(r)
best = {k: max(v, key=lambda r: r["tokens_per_s"]) for k, v in by.items()}
print(f"{'impl':14} {'tokens/s (best of rounds)':>26} {'all rounds':>24} {'MFLOP/tok':>10} {'GFLOP/s':>8} {'gemm GFLOP/s':>13}")
for k, r in best.items():
    allr = ", ".join(f"{x['tokens_per_s']:.0f}" for x in by[k])
    print(f"{k:14} {r['tokens_per_s']:26.0f} {allr:>24} {r['flops_per_token']/1e6:10.1f} {r['achieved_gflops']:8.1f} {r['gemm_gflops_encoder_shape']:13.1f}")
if "emlab" in best:
    for k in best:
        if k != "emlab":
            print(f"emlab / {k}: {best['emlab']['tokens_per_s'] / best[k]['tokens_per_s']:.2f}x")
PYEOF
echo "results: $RES"
