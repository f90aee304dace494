#!/usr/bin/env bash
# Issue #9 item 3: the real Qwen2.5-Coder-0.5B-Instruct weights (491 MB) on the GPU machine, which
# accepts 64 MiB per device call (working tree included) and keeps ignored files between calls
# while it stays warm (it is given back 30 s after a call). Here: split the GGUF into parts under
# bench/out/stage/ (ignored), write its SHA-256, and print the device calls that carry one part
# each and then run the paper preset (bench/gpu/paper.sh).
#
#   bash bench/gpu/stage.sh [GGUF]          # default: $EMLAB_MODELS or ~/.cache/emlab/models
#   bash bench/gpu/stage.sh --check         # on the GPU machine: which parts have arrived
#
# Budget (not yet tried on a device): ~12 calls of ~58 MiB on a warm machine, then one call of up
# to 10 minutes; a session has 15 device minutes in all, so the paper run needs a session of its
# own. Each call must follow the previous one within 30 s or the machine (and the parts) is gone.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
stage=bench/out/stage
if [ "${1:-}" = "--check" ]; then
    have=$(ls "$stage"/part-* 2>/dev/null | wc -l)
    want=$(cat "$stage/PARTS" 2>/dev/null || echo "?")
    echo "stage.sh: $have of $want parts present ($(du -cb "$stage"/part-* 2>/dev/null | tail -1 | cut -f1) bytes)"
    exit 0
fi
gguf="${1:-${EMLAB_MODELS:-$HOME/.cache/emlab/models}/qwen2.5-coder-0.5b-instruct.gguf}"
[ -f "$gguf" ] || { echo "stage.sh: $gguf: no such file (emlab model fetch qwen2.5-coder-0.5b)" >&2; exit 2; }
# Part size: what a call can carry beside the working tree (tracked + untracked files).
tracked=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
untracked=$(git ls-files -z -o --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
tree_mib=$(( ( ${tracked:-0} + ${untracked:-0} ) / 1048576 + 1 ))
part_mib=$(( 62 - tree_mib ))
[ "$part_mib" -ge 8 ] || { echo "stage.sh: the working tree (~$tree_mib MiB) leaves no room for parts" >&2; exit 1; }
rm -rf "$stage"
mkdir -p "$stage"
split -b "${part_mib}M" -d -a 2 "$gguf" "$stage/part-"
n=$(ls "$stage"/part-* | wc -l)
echo "$n" > "$stage/PARTS"
(cd "$(dirname "$gguf")" && sha256sum "$(basename "$gguf")") > "$stage/SHA256"
echo "stage.sh: $n parts of <= $part_mib MiB (working tree ~$tree_mib MiB) in $stage; SHA-256 in $stage/SHA256"
echo "device calls, back to back (each within 30 s of the last):"
for p in "$stage"/part-*; do
    echo "  run(command=\"bash bench/gpu/stage.sh --check\", carry=[\"$p\", \"$stage/PARTS\"], timeout_s=60)"
done
echo "  run(command=\"BUDGET=540 bash bench/gpu/paper.sh\", carry=[\"bench/out/gpu-carry\", \"$stage/SHA256\", \"$stage/PARTS\"], timeout_s=600)"
