#!/usr/bin/env bash
# Issue #9 item 3, on the GPU machine: reassemble the Qwen2.5-Coder-0.5B-Instruct GGUF carried in
# parts (bench/gpu/stage.sh), check its SHA-256, and run the whole loop at the `paper` preset
# (`emlab run --preset paper`) on the GPU within BUDGET seconds. The run folder lives under
# bench/out/ (ignored, kept on a warm machine), so a call that runs out of time can be followed by
# one that resumes from the cached stages. Report files come back in $OUT.
#
#   run(command="BUDGET=540 bash bench/gpu/paper.sh", carry=["bench/out/gpu-carry", "bench/out/stage/SHA256", "bench/out/stage/PARTS"], timeout_s=600)
#   bash bench/gpu/paper.sh --dry-run      # here: reassembly + checksum + the model loads (CPU)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
stage=bench/out/stage
dest="${OUT:-$root/bench/out/paper-dry}"
mkdir -p "$dest"
t0=$(date +%s)
BUDGET="${BUDGET:-540}"
want=$(cat "$stage/PARTS" 2>/dev/null) || { echo "paper.sh: $stage/PARTS missing (bench/gpu/stage.sh)" >&2; exit 2; }
have=$(ls "$stage"/part-* 2>/dev/null | wc -l)
[ "$have" = "$want" ] || { echo "paper.sh: $have of $want weight parts present: carry the missing ones first" >&2; exit 2; }
name=$(awk '{print $2}' "$stage/SHA256")
gguf="/tmp/emlab-paper/$name"
mkdir -p /tmp/emlab-paper
if ! (cd /tmp/emlab-paper && sha256sum -c --status "$root/$stage/SHA256" 2>/dev/null); then
    cat "$stage"/part-* > "$gguf.part" && mv "$gguf.part" "$gguf"
    (cd /tmp/emlab-paper && sha256sum -c "$root/$stage/SHA256") || { echo "paper.sh: $gguf: checksum mismatch" >&2; exit 1; }
fi
if [ "${1:-}" = "--dry-run" ]; then
    bin="${EMLAB_BIN:-$root/target/release/emlab}"
    "$bin" model info --model "$gguf" | tee "$dest/model-info.txt"
    exit $?
fi
bin=/tmp/emlab-paper/emlab
python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2],'wb'))" bench/out/gpu-carry/emlab.xz "$bin"
chmod +x "$bin"
export LD_LIBRARY_PATH="/usr/local/cuda/lib64:/usr/local/nvidia/lib64:${LD_LIBRARY_PATH:-}"
export EMLAB_DEVICE=cuda
run=bench/out/paper-run
left=$(( BUDGET - ($(date +%s) - t0) ))
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$dest/gpu.txt"
start=$(date +%s)
timeout "$left" "$bin" run --preset paper --model "$gguf" --out "$run" 2>&1 | tail -200 > "$dest/run.log"
rc=${PIPESTATUS[0]}
echo "{\"exit\": $rc, \"wall_s\": $(( $(date +%s) - start )), \"budget_s\": $left}" | tee "$dest/paper.json"
for f in report.html report.json; do [ -f "$run/$f" ] && cp "$run/$f" "$dest/"; done
tar -czf "$dest/run-logs.tar.gz" --exclude='*.safetensors' --exclude='*.gguf' -C "$run" . 2>/dev/null
exit "$rc"
